//! Job arrays on the real Slurm test cluster (docs/arrays.md).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use crate::common::{Study, chain_study_named};
use crate::slurm::{cluster, sh, slurm_now, sync_until_settled};

/// sacct rows (job ID, comment) of every job that started since `since`.
fn sacct_rows(since: &str) -> Vec<(String, String, String)> {
    three_columns(&sh(&format!(
        "sacct -X -n -P -a -S {since} -E now --format=JobID,Comment,JobName"
    )))
}

/// `a|b|c` lines as triples.
fn three_columns(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut p = l.split('|');
            Some((
                p.next()?.to_string(),
                p.next()?.to_string(),
                p.next()?.to_string(),
            ))
        })
        .collect()
}

/// Every run's job in sacct exactly once, found by its token (array tasks:
/// `<array comment>_<task>`), and no other job carrying one of our tokens.
fn assert_one_task_per_run(study: &Study, since: &str) {
    let runs = study.runs();
    let tokens: HashSet<String> = runs
        .iter()
        .map(|r| r["token"].as_str().unwrap().to_string())
        .collect();
    let prefixes: HashSet<String> = tokens
        .iter()
        .map(|t| {
            t.rsplit_once('_')
                .map(|(a, _)| a.to_string())
                .unwrap_or_else(|| t.clone())
        })
        .chain(tokens.iter().cloned())
        .collect();
    let start = Instant::now();
    loop {
        let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
        // Jobs by ID (tasks cancelled before they started are not in a time
        // window), and every job since the test began (jobs nobody recorded).
        let ids: HashSet<String> = runs
            .iter()
            .filter_map(|r| r["job_id"].as_str())
            .map(|j| j.split('_').next().unwrap().to_string())
            .collect();
        let ids: Vec<String> = ids.into_iter().collect();
        let by_id = sh(&format!(
            "sacct -X -n -P -j {} --format=JobID,Comment,JobName",
            ids.join(",")
        ));
        let mut rows = three_columns(&by_id);
        rows.extend(sacct_rows(since));
        rows.sort();
        rows.dedup();
        for (job, comment, _) in rows {
            if !prefixes.contains(&comment) {
                continue;
            }
            let token = match job.split_once('_') {
                Some((_, task)) => format!("{comment}_{task}"),
                None => comment.clone(),
            };
            seen.entry(token).or_default().push(job);
        }
        let complete = tokens.iter().all(|t| seen.contains_key(t));
        if complete || start.elapsed() > Duration::from_secs(20) {
            for t in &tokens {
                assert_eq!(
                    seen.get(t).map(Vec::len),
                    Some(1),
                    "run token {t}: {seen:?}"
                );
            }
            assert_eq!(
                seen.len(),
                tokens.len(),
                "jobs not recorded by nfslurm: {seen:?}"
            );
            return;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn arrays_study(prefix: &str, subjects: usize, extra_bids: &str, scheduler: &str) -> Study {
    let study = chain_study_named("slurm", prefix, subjects, 2, extra_bids);
    let config = std::fs::read_to_string(study.config_path()).unwrap();
    study.write(
        "nfslurm.yaml",
        &format!("{config}scheduler:\n  submission: arrays\n{scheduler}"),
    );
    study.ok(&["discover"]);
    study
}

#[test]
#[ignore = "needs the Slurm test cluster: scripts/test.sh runs it"]
fn bulk_import_in_arrays_ends_done_with_one_task_per_unit() {
    let Some(_cluster) = cluster() else { return };
    let since = slurm_now();
    let study = arrays_study("ar", 4, "", "");
    let out = study.run(&["-v", "submit", "--all"]);
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    // 2 bids arrays, 1 qsiprep, 2 qsirecon, 2 qsiparc: 7 sbatch calls for 28 units.
    assert!(log.contains("sbatch=7"), "{log}");
    let queue = sh("squeue -h -u root -o '%j|%E'");
    assert!(queue.contains("aftercorr:"), "{queue}");
    let states = sync_until_settled(&study, Duration::from_secs(240));
    assert_eq!(states.len(), 8 + 4 + 8 + 8);
    assert!(states.values().all(|s| s == "done"), "{states:?}");
    let runs = study.runs();
    let singles: Vec<_> = runs
        .iter()
        .filter(|r| !r["job_id"].as_str().unwrap().contains('_'))
        .collect();
    assert!(
        singles.is_empty(),
        "every run an array task: {singles:#?}\n{}",
        study.ok(&["status", "runs"])
    );
    assert_one_task_per_run(&study, &since);
    // Per-task logs in the units' own log files.
    let log = study.ok(&["logs", "qsiprep/sub-ar03"]);
    assert!(log.contains("done"), "{log}");
}

#[test]
#[ignore = "needs the Slurm test cluster: scripts/test.sh runs it"]
fn one_failing_session_in_an_array_delays_nobody_else_and_its_retry_is_a_single_job() {
    let Some(_cluster) = cluster() else { return };
    let since = slurm_now();
    let study = arrays_study(
        "af",
        3,
        "if [ {{ subject.label }} = af02 ] && [ {{ session.label }} = 2 ] && [ ! -f {{ paths.state_dir }}/../fixed ]; then exit 5; fi",
        "",
    );
    // A backoff long enough to write the fix before the retry is due.
    let config = std::fs::read_to_string(study.config_path()).unwrap();
    study.write(
        "nfslurm.yaml",
        &config.replace(
            "initial_delay: 1s\n  max_delay: 2s",
            "initial_delay: 12s\n  max_delay: 20s",
        ),
    );
    study.ok(&["submit", "--all"]);
    // Let the first attempt fail and its chain be cancelled by Slurm.
    let start = Instant::now();
    loop {
        study.ok(&["sync"]);
        let runs = study.runs();
        let failed = runs.iter().any(|r| r["state"] == "failed");
        let others_done = runs
            .iter()
            .filter(|r| r["subject"] != "af02")
            .all(|r| r["state"] == "succeeded");
        if failed && others_done {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(180), "{runs:#?}");
        std::thread::sleep(Duration::from_secs(2));
    }
    let runs = study.runs();
    let q = runs
        .iter()
        .find(|r| r["pipeline"] == "qsiprep" && r["subject"] == "af02")
        .unwrap();
    assert_eq!(q["state"], "upstream_failed", "{runs:#?}");
    // Subject af02's first session went on as far as it could.
    let b1 = runs
        .iter()
        .find(|r| r["pipeline"] == "bids" && r["subject"] == "af02" && r["session"] == "1")
        .unwrap();
    assert_eq!(b1["state"], "succeeded");
    study.write("fixed", "");
    let states = sync_until_settled(&study, Duration::from_secs(240));
    assert!(states.values().all(|s| s == "done"), "{states:?}");
    // The retry went as a single job (no `_task` in its ID).
    let runs = study.runs();
    let retried: Vec<_> = runs
        .iter()
        .filter(|r| r["pipeline"] == "bids" && r["subject"] == "af02" && r["session"] == "2")
        .collect();
    assert_eq!(retried.len(), 2);
    assert!(retried[0]["job_id"].as_str().unwrap().contains('_'));
    assert!(
        !retried[1]["job_id"].as_str().unwrap().contains('_'),
        "{retried:?}"
    );
    assert_eq!(retried[1]["state"], "succeeded");
    assert_one_task_per_run(&study, &since);
}

#[test]
#[ignore = "needs the Slurm test cluster: scripts/test.sh runs it"]
fn max_submitted_is_never_exceeded() {
    let Some(_cluster) = cluster() else { return };
    let study = arrays_study("ms", 3, "sleep 1", "  max_submitted: 5\n");
    let mut peak = 0;
    let start = Instant::now();
    loop {
        study.ok(&["sync"]);
        // Count our queued and running jobs, array tasks one by one.
        let mut count = 0;
        for line in sh("squeue -h -u root -r -t PD,R,CG,CF -o '%i|%k'").lines() {
            let comment = line.split('|').nth(1).unwrap_or_default();
            if !comment.starts_with("nfslurm-") {
                continue;
            }
            let tokens: HashSet<String> = study
                .runs()
                .iter()
                .map(|r| r["token"].as_str().unwrap().to_string())
                .collect();
            let ours = tokens.iter().any(|t| t.starts_with(comment));
            if ours {
                count += 1;
            }
        }
        peak = peak.max(count);
        assert!(
            count <= 5,
            "{count} jobs of the study in the queue, max_submitted is 5"
        );
        let states = study.unit_states();
        if states.values().all(|s| s == "done") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(300), "{states:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(peak >= 3, "the limit was used: peak {peak}");
    assert_eq!(study.runs().len(), 6 + 3 + 6 + 6);
}
