//! The local worker's own commands: start, stop (with a timeout), restart,
//! status, slots, the foreground mode and its rotated log.

use std::fs;
use std::time::{Duration, Instant};

use crate::common::{Study, chain_config, chain_study};

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn running_count(study: &Study) -> usize {
    study
        .unit_states()
        .values()
        .filter(|s| *s == "running")
        .count()
}

/// A chain study whose `bids` step runs `bids_cmd` and whose `local:` block
/// is `local` (one line of YAML, or empty).
fn study_with(subjects: usize, bids_cmd: &str, local: &str) -> Study {
    let study = chain_study("local", subjects, 1, bids_cmd);
    if !local.is_empty() {
        let text = chain_config("local", bids_cmd).replace("retry:", &format!("{local}\nretry:"));
        study.write("nfslurm.yaml", &text);
    }
    study.ok(&["discover"]);
    study
}

#[test]
fn worker_start_with_nothing_queued_says_so_and_starts_nothing() {
    let study = study_with(1, "", "");
    let out = study.ok(&["worker", "start"]);
    assert!(out.contains("nothing queued"), "{out}");
    assert!(out.contains("nfslurm submit --executor local"), "{out}");
    assert_eq!(study.json(&["worker", "status"])["running"], false);
}

#[test]
fn worker_status_shows_the_worker_and_its_jobs_within_the_slots() {
    // Two sessions' `bids` could run together; `local.slots: 1` allows one.
    let study = study_with(2, "sleep 3", "local: { slots: 1 }");
    study.ok(&["submit", "--all"]);
    wait_for("a running job", Duration::from_secs(10), || {
        running_count(&study) == 1
    });
    let status = study.json(&["worker", "status"]);
    assert_eq!(status["running"], true, "{status}");
    assert!(status["pid"].as_i64().unwrap() > 0, "{status}");
    assert!(status["uptime_s"].as_i64().unwrap() >= 0, "{status}");
    assert!(status["cpu_s"].as_f64().is_some(), "{status}");
    assert!(status["rss_mb"].as_u64().unwrap() > 0, "{status}");
    assert_eq!(status["slots_total"], 1, "{status}");
    assert_eq!(status["slots_used"], 1, "{status}");
    assert!(status["queued"].as_u64().unwrap() >= 1, "{status}");
    let job = &status["jobs"][0];
    assert!(job["unit"].as_str().unwrap().starts_with("bids/"), "{job}");
    assert!(job["pgid"].as_i64().unwrap() > 0, "{job}");
    assert!(job["processes"].as_u64().unwrap() >= 1, "{job}");
    assert!(status["state_dir"].as_str().unwrap().ends_with(".nfslurm"));
    assert!(status["log"].as_str().unwrap().ends_with("worker.log"));
    let text = study.ok(&["worker", "status"]);
    assert!(text.contains("slots: 1 of 1 used"), "{text}");
    assert!(text.contains("worker.log"), "{text}");
    for line in text.lines() {
        assert!(line.chars().count() <= 80, "too wide: {line}");
    }
    // Never two jobs at once while the chain runs.
    let start = Instant::now();
    while study.json(&["worker", "status"])["running"] == true {
        assert!(running_count(&study) <= 1);
        assert!(start.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(study.unit_states().values().all(|s| s == "done"));
}

#[test]
fn worker_stop_timeout_ends_a_job_that_ignores_sigterm_without_losing_its_run() {
    // The job ignores SIGTERM (so does its `sleep`): only SIGKILL ends it.
    let study = study_with(1, "trap '' TERM; sleep 120", "");
    study.ok(&["submit", "--all"]);
    wait_for("bids to run", Duration::from_secs(10), || {
        running_count(&study) == 1
    });
    let start = Instant::now();
    let out = study.ok(&["worker", "stop", "--timeout", "1"]);
    let took = start.elapsed();
    assert!(out.contains("have 1s to finish"), "{out}");
    assert!(out.contains("1 ended"), "{out}");
    assert!(out.contains("runs stay queued"), "{out}");
    // 1 s, then SIGTERM (ignored), then SIGKILL 10 s later.
    assert!(took >= Duration::from_secs(10), "{took:?}");
    assert!(took < Duration::from_secs(40), "{took:?}");
    let runs = study.runs();
    let bids = runs.iter().find(|r| r["pipeline"] == "bids").unwrap();
    assert_eq!(bids["state"], "infra_failed", "{runs:?}");
    assert!(
        bids["reason"]
            .as_str()
            .unwrap()
            .contains("worker was stopped"),
        "{bids}"
    );
    // Downstream runs never started: still queued, or (the direct one)
    // `upstream_failed`, which is resubmitted once `bids` runs again.
    assert!(
        runs.iter()
            .filter(|r| r["pipeline"] != "bids")
            .all(|r| r["state"] == "pending" || r["state"] == "upstream_failed"),
        "{runs:?}"
    );
    let plan = study.json(&["plan"]);
    assert!(
        plan["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["pipeline"] == "bids"),
        "{plan}"
    );
    assert_eq!(study.json(&["worker", "status"])["running"], false);
}

#[test]
fn worker_restart_takes_a_new_slot_count_and_the_foreground_mode_finishes_the_queue() {
    let study = study_with(2, "sleep 1", "");
    study.ok(&["submit", "--all"]);
    let first = study.json(&["worker", "status"])["pid"].as_i64().unwrap();
    let out = study.ok(&["worker", "restart", "-j", "3"]);
    assert!(out.contains(&format!("worker {first} stopped")), "{out}");
    assert!(out.contains("3 at once"), "{out}");
    let status = study.json(&["worker", "status"]);
    assert_ne!(status["pid"].as_i64().unwrap(), first);
    assert_eq!(status["slots_total"], 3, "{status}");
    // Drain it again, then let the foreground worker run what is left.
    study.ok(&["worker", "stop"]);
    let out = study.run(&["-v", "worker", "run", "-j", "1"]);
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("local worker started"), "{log}");
    assert!(study.unit_states().values().all(|s| s == "done"));
}

#[test]
fn the_worker_log_is_rotated_like_the_cron_log() {
    let study = study_with(1, "", "");
    let log = study.path().join(".nfslurm/worker.log");
    fs::create_dir_all(log.parent().unwrap()).unwrap();
    fs::write(&log, "x".repeat(1024 * 1024 + 10)).unwrap();
    study.ok(&["submit", "--all", "--wait"]);
    let old = study.path().join(".nfslurm/worker.log.1");
    assert_eq!(fs::metadata(&old).unwrap().len(), 1024 * 1024 + 10);
    assert!(fs::metadata(&log).unwrap().len() < 1024 * 1024);
}

#[test]
fn worker_jobs_zero_is_refused_with_a_usage_error() {
    let study = study_with(1, "", "");
    let out = study.run(&["worker", "start", "-j", "0"]);
    assert_eq!(out.status.code(), Some(1));
}
