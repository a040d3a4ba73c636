//! Two real clusters registered in one slurmdbd (`scripts/slurm-test-cluster.sh
//! start --clusters 2`): `nfslurm-test` (the default) and `nfslurm-test2`
//! (job IDs from 1000000). A pipeline may run on either; Slurm dependencies do
//! not cross clusters, so nfslurm holds a unit whose upstream runs on the
//! other cluster until that upstream is done.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use crate::common::{Study, chain_study_named};
use crate::slurm::{cluster, sh, slurm_now, sync_until_settled};

const SECOND: &str = "nfslurm-test2";

/// The second cluster up too (idempotent: a few ms when it already is).
fn second_cluster() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/slurm-test-cluster.sh");
    let out = Command::new(script)
        .args(["start", "--clusters", "2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "start --clusters 2:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A chain study whose `pipeline` runs on the second cluster.
fn study_with(prefix: &str, subjects: usize, extra_bids: &str, on_second: &[&str]) -> Study {
    let study = chain_study_named("slurm", prefix, subjects, 1, extra_bids);
    let mut config = std::fs::read_to_string(study.config_path()).unwrap();
    for pipeline in on_second {
        let at = format!("  {pipeline}:\n");
        config = config.replacen(&at, &format!("{at}    cluster: {SECOND}\n"), 1);
    }
    study.write("nfslurm.yaml", &config);
    study
}

/// This study's jobs and array tasks on `cluster` as sacct has them: job
/// name -> job IDs. Single jobs are `nf-<pipeline>-<subject>…`, arrays
/// `nf-<study folder>-<pipeline>`.
fn jobs_on(
    cluster: &str,
    study: &Study,
    prefix: &str,
    since: &str,
) -> BTreeMap<String, Vec<String>> {
    let folder = study
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let text = sh(&format!(
        "sacct -M {cluster} -X -n -P -a -S {since} -E now --format=JobName,JobID"
    ));
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let Some((name, id)) = line.split_once('|') else {
            continue;
        };
        let single = name.starts_with("nf-")
            && name
                .split('-')
                .nth(2)
                .is_some_and(|s| s.starts_with(prefix));
        let array = name.starts_with(&format!("nf-{folder}-"));
        if single || array {
            out.entry(name.to_string())
                .or_default()
                .push(id.to_string());
        }
    }
    out
}

/// sacct lags a few seconds: wait until it lists `n` jobs or tasks there.
fn wait_jobs_on(
    cluster: &str,
    study: &Study,
    prefix: &str,
    since: &str,
    n: usize,
) -> BTreeMap<String, Vec<String>> {
    let start = std::time::Instant::now();
    loop {
        let jobs = jobs_on(cluster, study, prefix, since);
        if jobs.values().map(Vec::len).sum::<usize>() >= n
            || start.elapsed() > Duration::from_secs(20)
        {
            return jobs;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Job and task counts of a sacct listing.
fn tasks(jobs: &BTreeMap<String, Vec<String>>) -> usize {
    jobs.values().map(Vec::len).sum()
}

#[test]
#[ignore = "needs the Slurm test cluster: scripts/test.sh runs it"]
fn a_chain_with_qsirecon_on_a_second_cluster_finishes_one_job_per_unit() {
    let Some(_cluster) = cluster() else { return };
    second_cluster();
    let since = slurm_now();
    let study = study_with("mc", 2, "", &["qsirecon"]);
    study.ok(&["discover"]);
    let out = study.ok(&["submit", "--all"]);
    // bids and qsiprep go now; qsirecon and qsiparc wait for their upstream
    // on the other cluster (no Slurm dependency crosses clusters).
    assert!(!out.contains("qsirecon"), "{out}");
    let held = "qsirecon/sub-mc01/ses-1 waiting: waits for qsiprep/sub-mc01 on the default cluster";
    let plan = study.ok(&["plan"]);
    assert!(plan.contains(held), "{plan}");
    let status = study.ok(&["status"]);
    assert!(
        status.contains("waits for qsiprep/sub-mc01 on the default cluster"),
        "{status}"
    );
    let show = study.json(&["show", "qsirecon/sub-mc01/ses-1"]);
    assert_eq!(
        show["detail"], "waits for qsiprep/sub-mc01 on the default cluster",
        "{show}"
    );
    let states = sync_until_settled(&study, Duration::from_secs(240));
    assert!(states.values().all(|s| s == "done"), "{states:?}");
    // One job (or array task) per unit, each on its own cluster: every
    // qsirecon run has a job ID of the second cluster (from 1000000), the
    // others of the first, and sacct lists no more than one per unit.
    let runs = study.runs();
    assert_eq!(runs.len(), 8, "{runs:?}");
    for r in &runs {
        let id = r["job_id"].as_str().unwrap();
        let base: u64 = id.split('_').next().unwrap().parse().unwrap();
        assert_eq!(
            base >= 1_000_000,
            r["pipeline"] == "qsirecon",
            "{r}: job {id} is on the wrong cluster"
        );
    }
    let second = wait_jobs_on(SECOND, &study, "mc", &since, 2);
    assert_eq!(tasks(&second), 2, "{second:?}");
    assert!(second.keys().all(|n| n.contains("qsirecon")), "{second:?}");
    let first = wait_jobs_on("nfslurm-test", &study, "mc", &since, 6);
    assert_eq!(tasks(&first), 6, "{first:?}");
    assert!(first.keys().all(|n| !n.contains("qsirecon")), "{first:?}");
    // A no-op sync asks no cluster anything.
    let out = study.run(&["-v", "sync"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("squeue=0") && err.contains("sacct=0"), "{err}");
}

#[test]
#[ignore = "needs the Slurm test cluster: scripts/test.sh runs it"]
fn a_failure_upstream_blocks_the_unit_on_the_second_cluster() {
    let Some(_cluster) = cluster() else { return };
    second_cluster();
    let since = slurm_now();
    let study = study_with(
        "mf",
        2,
        "if [ {{ subject.label }} = mf02 ]; then exit 4; fi",
        &["qsirecon"],
    );
    study.ok(&["discover"]);
    study.ok(&["submit", "--all"]);
    let states = sync_until_settled(&study, Duration::from_secs(240));
    assert_eq!(states["qsiparc/sub-mf01/ses-1"], "done", "{states:?}");
    assert_eq!(states["bids/sub-mf02/ses-1"], "failed");
    assert_eq!(states["qsirecon/sub-mf02/ses-1"], "blocked", "{states:?}");
    // Never submitted on the second cluster for the failed subject.
    let second = wait_jobs_on(SECOND, &study, "mf", &since, 1);
    assert_eq!(
        second.keys().collect::<Vec<_>>(),
        vec!["nf-qsirecon-mf01-1"]
    );
}

#[test]
#[ignore = "needs the Slurm test cluster: scripts/test.sh runs it"]
fn a_crash_between_sbatch_and_the_database_write_on_the_second_cluster_is_adopted() {
    let Some(_cluster) = cluster() else { return };
    second_cluster();
    let since = slurm_now();
    // The whole chain on the second cluster: the first sbatch goes there.
    let study = study_with("mx", 1, "", &["bids", "qsiprep", "qsirecon", "qsiparc"]);
    study.ok(&["discover"]);
    let out = study
        .cmd()
        .args(["submit", "--all"])
        .env("NFSLURM_FAULT", "crash-after-sbatch")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the fault point aborts the process");
    let runs = study.runs();
    assert!(runs.iter().all(|r| r["job_id"].is_null()), "{runs:?}");
    let queued = sh(&format!("squeue -M {SECOND} -h -u root -o '%j' -t all"));
    assert!(
        queued
            .lines()
            .any(|l| l.starts_with("nf-") && l.contains("mx01")),
        "{queued}"
    );
    let states = sync_until_settled(&study, Duration::from_secs(240));
    assert!(states.values().all(|s| s == "done"), "{states:?}");
    let second = wait_jobs_on(SECOND, &study, "mx", &since, 4);
    assert_eq!(second.len(), 4, "{second:?}");
    assert!(
        second.values().all(|ids| ids.len() == 1),
        "no duplicate: {second:?}"
    );
    assert!(jobs_on("nfslurm-test", &study, "mx", &since).is_empty());
    let show = study.ok(&["show", "bids/sub-mx01/ses-1"]);
    assert!(show.contains("adopted job"), "{show}");
}

#[test]
#[ignore = "needs the Slurm test cluster: scripts/test.sh runs it"]
fn submit_wait_submits_the_held_units_when_their_upstream_is_done() {
    let Some(_cluster) = cluster() else { return };
    second_cluster();
    let study = study_with("mw", 1, "", &["qsirecon"]);
    study.ok(&["discover"]);
    let out = study
        .cmd()
        .args(["submit", "--all", "--wait"])
        .timeout(Duration::from_secs(240))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let states = study.unit_states();
    assert!(states.values().all(|s| s == "done"), "{states:?}");
    assert_eq!(study.runs().len(), 4);
}
