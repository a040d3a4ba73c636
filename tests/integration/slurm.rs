//! Against the real Slurm test cluster (see docs/slurm-test-cluster.md).
//!
//! They are `#[ignore]`d, so a plain `cargo test` says it did not run them;
//! `scripts/test.sh` starts the cluster and runs them with
//! `--include-ignored`. Run that way without a cluster, they fail: they
//! never pass by skipping. The tests share one cluster and some stop its
//! daemons, so they run one at a time.

use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::common::{Study, chain_study_named};

static CLUSTER: Mutex<()> = Mutex::new(());

/// The cluster, held for the whole test (always `Some`: a cluster that does
/// not start fails the test).
pub(crate) fn cluster() -> Option<MutexGuard<'static, ()>> {
    let guard = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/slurm-test-cluster.sh");
    let out = Command::new(script)
        .arg("start")
        .output()
        .expect("run the cluster script");
    assert!(
        out.status.success(),
        "the Slurm test cluster is not up:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(guard)
}

pub(crate) fn cluster_script(action: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/slurm-test-cluster.sh");
    let out = Command::new(script).arg(action).output().unwrap();
    assert!(
        out.status.success(),
        "slurm-test-cluster.sh {action}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub(crate) fn sh(cmd: &str) -> String {
    let out = Command::new("bash").args(["-c", cmd]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Syncs until every unit is in a final state (done, failed, blocked, invalid).
pub(crate) fn sync_until_settled(study: &Study, timeout: Duration) -> BTreeMap<String, String> {
    let start = Instant::now();
    loop {
        let out = study.run(&["sync"]);
        assert!(
            out.status.success(),
            "sync failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let states = study.unit_states();
        let settled = states.values().all(|s| {
            matches!(
                s.as_str(),
                "done" | "failed" | "blocked" | "invalid" | "cancelled"
            )
        });
        if settled {
            return states;
        }
        assert!(
            start.elapsed() < timeout,
            "not settled after {timeout:?}: {states:?}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Syncs until settled; every unit done, with exactly one job each.
fn settle_all_done(study: &Study, prefix: &str, since: &str, units: usize) {
    let states = sync_until_settled(study, Duration::from_secs(180));
    assert!(states.values().all(|s| s == "done"), "{states:?}");
    assert_one_job_per_unit(study, prefix, since, units);
}

/// sacct's jobs (job rows) whose name is one of this study's, by name.
fn sacct_jobs_by_name(prefix: &str, since: &str) -> BTreeMap<String, Vec<String>> {
    let text = sh(&format!(
        "sacct -X -n -P -a -S {since} -E now --format=JobName,JobID,State"
    ));
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let mut parts = line.split('|');
        let (Some(name), Some(id)) = (parts.next(), parts.next()) else {
            continue;
        };
        let ours = name
            .split('-')
            .nth(2)
            .is_some_and(|subject| subject.starts_with(prefix));
        if name.starts_with("nf-") && ours {
            out.entry(name.to_string())
                .or_default()
                .push(id.to_string());
        }
    }
    out
}

/// The cluster's idea of now, for sacct windows that leave out earlier test runs.
pub(crate) fn slurm_now() -> String {
    sh("date +%Y-%m-%dT%H:%M:%S").trim().to_string()
}

pub(crate) fn assert_one_job_per_unit(study: &Study, prefix: &str, since: &str, units: usize) {
    // sacct lags a few seconds behind.
    let start = Instant::now();
    let jobs = loop {
        let jobs = sacct_jobs_by_name(prefix, since);
        if jobs.len() >= units || start.elapsed() > Duration::from_secs(20) {
            break jobs;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    assert_eq!(jobs.len(), units, "{jobs:?}");
    for (name, ids) in &jobs {
        assert_eq!(ids.len(), 1, "{name} has jobs {ids:?}");
    }
    let runs = study.runs();
    let ours: HashSet<String> = runs
        .iter()
        .filter_map(|r| r["job_id"].as_str().map(String::from))
        .collect();
    for ids in jobs.values() {
        assert!(
            ours.contains(&ids[0]),
            "job {} is not recorded by nfslurm",
            ids[0]
        );
    }
}

#[test]
#[ignore = "needs the Slurm test cluster: scripts/test.sh runs it"]
fn whole_chain_is_submitted_at_once_with_afterok_edges_and_finishes() {
    let Some(_cluster) = cluster() else { return };
    let since = slurm_now();
    let study = chain_study_named("slurm", "ch", 3, 2, "sleep 2");
    // One job per unit here; arrays have tests of their own.
    let config = std::fs::read_to_string(study.config_path()).unwrap();
    study.write(
        "nfslurm.yaml",
        &format!("{config}scheduler:\n  submission: jobs\n"),
    );
    study.ok(&["discover"]);
    let out = study.ok(&["--json", "submit", "--all"]);
    let submitted: serde_json::Value = serde_json::from_str(&out).unwrap();
    let runs = submitted["submitted"].as_array().unwrap();
    assert_eq!(runs.len(), 6 + 3 + 6 + 6);

    // Every job is in Slurm at once, held by afterok on exactly its upstream jobs.
    let queue = sh("squeue -h -u root -t all -o '%i|%j|%E'");
    let deps: BTreeMap<String, (String, String)> = queue
        .lines()
        .filter_map(|l| {
            let mut p = l.splitn(3, '|');
            Some((
                p.next()?.to_string(),
                (p.next()?.to_string(), p.next()?.to_string()),
            ))
        })
        .collect();
    let job_of = |unit: &str| -> String {
        runs.iter()
            .find(|r| {
                let key = format!(
                    "{}/{}/{}",
                    r["pipeline"].as_str().unwrap(),
                    r["subject"].as_str().unwrap(),
                    r["session"].as_str().unwrap_or("-")
                );
                key == unit
            })
            .and_then(|r| r["job_id"].as_str())
            .unwrap()
            .to_string()
    };
    for r in runs {
        let id = r["job_id"].as_str().unwrap();
        assert!(deps.contains_key(id), "job {id} is not in squeue: {queue}");
    }
    let (_, qsiprep_dep) = &deps[&job_of("qsiprep/ch01/-")];
    // Either still waiting (both listed) or one parent already done.
    let b1 = job_of("bids/ch01/1");
    let b2 = job_of("bids/ch01/2");
    assert!(
        qsiprep_dep.contains(&b1) || qsiprep_dep.contains(&b2) || qsiprep_dep == "(null)",
        "qsiprep dependency `{qsiprep_dep}` names neither {b1} nor {b2}"
    );
    let (_, recon_dep) = &deps[&job_of("qsirecon/ch02/2")];
    assert!(recon_dep.contains(&job_of("qsiprep/ch02/-")), "{recon_dep}");
    let (_, parc_dep) = &deps[&job_of("qsiparc/ch03/1")];
    assert!(parc_dep.starts_with("afterok:"), "{parc_dep}");
    assert!(parc_dep.contains(&job_of("qsirecon/ch03/1")), "{parc_dep}");

    let states = sync_until_settled(&study, Duration::from_secs(240));
    assert!(states.values().all(|s| s == "done"), "{states:?}");
    assert_one_job_per_unit(&study, "ch", &since, 21);
    // MaxRSS, node and times are recorded from sacct.
    let runs = study.runs();
    assert!(
        runs.iter()
            .all(|r| r["state"] == "succeeded" && r["slurm_state"] == "COMPLETED")
    );
    let incomplete: Vec<_> = runs
        .iter()
        .filter(|r| !(r["node"].is_string() && r["ended_at"].is_string()))
        .collect();
    assert!(incomplete.is_empty(), "{incomplete:#?}");
    assert!(runs.iter().all(|r| r["elapsed_s"].is_number()));
    // A sync with nothing to do submits nothing and prints nothing.
    let out = study.ok(&["sync"]);
    assert_eq!(out, "", "a no-op sync is quiet");
}

#[test]
#[ignore = "needs the Slurm test cluster: scripts/test.sh runs it"]
fn failure_for_one_subject_cancels_its_downstream_and_others_finish() {
    let Some(_cluster) = cluster() else { return };
    let study = chain_study_named(
        "slurm",
        "fa",
        2,
        1,
        "if [ {{ subject.label }} = fa02 ] && [ ! -f {{ paths.bids_root }}/../fixed ]; then echo 'conversion failed' >&2; exit 3; fi",
    );
    let config = std::fs::read_to_string(study.config_path()).unwrap();
    study.write(
        "nfslurm.yaml",
        &config.replace("max_attempts: 2", "max_attempts: 1"),
    );
    study.ok(&["discover"]);
    study.ok(&["submit", "--all"]);
    let states = sync_until_settled(&study, Duration::from_secs(180));
    assert_eq!(states["bids/sub-fa02/ses-1"], "failed");
    assert_eq!(states["qsiprep/sub-fa02"], "blocked");
    assert_eq!(states["qsiparc/sub-fa02/ses-1"], "blocked");
    assert_eq!(states["qsiparc/sub-fa01/ses-1"], "done");
    let runs = study.runs();
    let state_of = |p: &str| {
        runs.iter()
            .find(|r| r["pipeline"] == p && r["subject"] == "fa02")
            .map(|r| {
                (
                    r["state"].as_str().unwrap().to_string(),
                    r["exit_code"].clone(),
                )
            })
            .unwrap()
    };
    assert_eq!(state_of("bids").0, "failed");
    assert_eq!(state_of("bids").1, 3);
    // Slurm cancelled the dependants (--kill-on-invalid-dep): upstream_failed, not failed.
    assert_eq!(state_of("qsiprep").0, "upstream_failed");
    assert_eq!(state_of("qsirecon").0, "upstream_failed");
    assert_eq!(state_of("qsiparc").0, "upstream_failed");
    let show = study.ok(&["show", "bids/sub-fa02/ses-1"]);
    assert!(show.contains("FAILED"), "{show}");

    // Once the upstream succeeds, the upstream_failed units are resubmitted.
    study.write("fixed", "");
    let out = study.ok(&["retry", "--failed"]);
    assert!(out.contains("retrying bids/sub-fa02/ses-1"), "{out}");
    let states = sync_until_settled(&study, Duration::from_secs(180));
    assert!(states.values().all(|s| s == "done"), "{states:?}");
}

#[test]
#[ignore = "needs the Slurm test cluster: scripts/test.sh runs it"]
fn crash_between_sbatch_and_the_database_write_is_adopted_not_duplicated() {
    let Some(_cluster) = cluster() else { return };
    let since = slurm_now();
    let study = chain_study_named("slurm", "cr", 1, 1, "");
    study.ok(&["discover"]);
    let out = study
        .cmd()
        .args(["submit", "--all"])
        .env("NFSLURM_FAULT", "crash-after-sbatch")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the fault point aborts the process");
    let runs = study.runs();
    assert!(runs.iter().all(|r| r["state"] == "submitting"), "{runs:?}");
    assert!(runs.iter().all(|r| r["job_id"].is_null()));
    // The first job is in Slurm, unknown to the database.
    let queued = sh("squeue -h -u root -o '%j' -t all");
    assert!(queued.lines().any(|l| l == "nf-bids-cr01-1"), "{queued}");

    settle_all_done(&study, "cr", &since, 4);
    let show = study.ok(&["show", "bids/sub-cr01/ses-1"]);
    assert!(show.contains("adopted job"), "{show}");
}

#[test]
#[ignore = "needs the Slurm test cluster: scripts/test.sh runs it"]
fn sbatch_that_times_out_after_queuing_is_adopted_not_duplicated() {
    let Some(_cluster) = cluster() else { return };
    let since = slurm_now();
    let study = chain_study_named("slurm", "to", 1, 1, "");
    study.ok(&["discover"]);
    let out = study
        .cmd()
        .args(["submit", "--all"])
        .env("NFSLURM_FAULT", "sbatch-timeout")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("error:").count(), 1, "{err}");
    let runs = study.runs();
    assert_eq!(runs.len(), 1, "only the uncertain run is kept: {runs:?}");
    assert_eq!(runs[0]["state"], "submitting");

    settle_all_done(&study, "to", &since, 4);
}

#[test]
#[ignore = "needs the Slurm test cluster: scripts/test.sh runs it"]
fn controller_down_exits_2_and_nothing_is_left_in_a_false_state() {
    let Some(_cluster) = cluster() else { return };
    let since = slurm_now();
    let study = chain_study_named("slurm", "cd", 1, 1, "");
    study.ok(&["discover"]);
    cluster_script("stop-ctld");
    let out = study.run(&["submit", "--all"]);
    let sync = study.run(&["sync"]);
    cluster_script("start-ctld");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Unable to contact slurm controller"), "{err}");
    assert_eq!(err.matches("error:").count(), 1, "{err}");
    // The sbatch that failed may or may not have queued its job: that run
    // stays `submitting` for the next sync; the rest never reached Slurm.
    let runs = study.runs();
    assert!(runs.len() <= 1, "{runs:?}");
    assert!(runs.iter().all(|r| r["state"] == "submitting"));
    assert_eq!(
        sync.status.code(),
        Some(2),
        "sync with the controller down exits 2"
    );

    settle_all_done(&study, "cd", &since, 4);
}

#[test]
#[ignore = "needs the Slurm test cluster: scripts/test.sh runs it"]
fn slurmdbd_down_keeps_finished_runs_open_until_sacct_answers() {
    let Some(_cluster) = cluster() else { return };
    let since = slurm_now();
    let study = chain_study_named("slurm", "db", 1, 1, "");
    study.ok(&["discover"]);
    study.ok(&["submit", "--pipeline", "bids"]);
    cluster_script("stop-dbd");
    // Wait until Slurm says the job is no longer running.
    let start = Instant::now();
    while !sh("squeue -h -u root -t PD,R,CG -o '%j'")
        .lines()
        .any(|l| l == "nf-bids-db01-1")
    {
        if start.elapsed() > Duration::from_secs(5) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    while sh("squeue -h -u root -t PD,R,CG -o '%j'")
        .lines()
        .any(|l| l == "nf-bids-db01-1")
    {
        assert!(start.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = study.run(&["sync"]);
    let states = study.unit_states();
    cluster_script("start-dbd");
    assert!(
        out.status.success(),
        "sync works from squeue alone: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        matches!(states["bids/sub-db01/ses-1"].as_str(), "queued" | "running"),
        "finished but unconfirmed runs stay open: {states:?}"
    );
    settle_all_done(&study, "db", &since, 4);
}

#[test]
#[ignore = "needs the Slurm test cluster: scripts/test.sh runs it"]
fn cancel_stops_a_run_and_sync_leaves_it_alone_until_retry() {
    let Some(_cluster) = cluster() else { return };
    let since = slurm_now();
    let study = chain_study_named("slurm", "ca", 1, 1, "sleep 300");
    study.ok(&["discover"]);
    study.ok(&["submit", "--pipeline", "bids"]);
    study.ok(&["cancel", "--pipeline", "bids"]);
    study.ok(&["sync"]);
    let states = study.unit_states();
    assert_eq!(states["bids/sub-ca01/ses-1"], "cancelled");
    assert_eq!(states["qsiprep/sub-ca01"], "blocked");
    let queued = sh("squeue -h -u root -t PD,R -o '%j'");
    assert!(!queued.lines().any(|l| l.contains("ca01")), "{queued}");
    assert_eq!(
        study.runs().len(),
        1,
        "sync does not resubmit a cancelled unit"
    );
    assert_one_job_per_unit(&study, "ca", &since, 1);
}
