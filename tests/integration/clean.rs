//! `nfslurm clean`: work dirs of done units, old attempts' files, and old
//! run rows folded into summaries, never what is still needed.

use std::fs;
use std::time::Duration;

use crate::common::{chain_config, chain_study};

/// `bids` fails its first attempt, then succeeds; every unit leaves a file
/// in its work dir.
const FLAKY: &str = r#"echo scratch > {{ work_dir }}/scratch.dat
      if [ ! -f first-try-done ]; then touch first-try-done; exit 1; fi"#;

#[test]
fn clean_removes_old_attempts_and_work_dirs_and_summarises_runs_but_keeps_what_is_needed() {
    let study = chain_study("local", 1, 1, FLAKY);
    study.ok(&["discover"]);
    study.ok(&["submit", "--all", "--wait"]);
    assert!(study.unit_states().values().all(|s| s == "done"));
    let state = study.path().join(".nfslurm");
    let first_log = state.join("logs/bids/sub-01_ses-1/attempt-1.out");
    let first_script = state.join("scripts/bids/sub-01_ses-1/attempt-1.sbatch");
    let last_log = state.join("logs/bids/sub-01_ses-1/attempt-2.out");
    assert!(first_log.exists() && first_script.exists() && last_log.exists());
    let work = state.join("work/bids/sub-01/ses-1");
    assert!(work.join("scratch.dat").exists(), "{work:?}");

    // By default only what ended 30 days ago: nothing yet.
    let out = study.ok(&["clean", "--dry-run"]);
    assert!(out.contains("0 work dirs, 0 files"), "{out}");
    std::thread::sleep(Duration::from_millis(1100));
    let db_before = fs::read(state.join("state.db")).unwrap();
    let out = study.ok(&["clean", "--older-than", "0", "--dry-run"]);
    assert!(out.starts_with("would remove:\n"), "{out}");
    assert!(out.contains("  attempt 1 of bids/sub-01/ses-1\n"), "{out}");
    // bids' failed attempt (script, log, the local job's lock and status,
    // provenance) and the three downstream runs it made `upstream_failed`
    // (script and provenance only: they never ran).
    assert!(out.contains("4 work dirs, 11 files"), "{out}");
    assert!(!out.contains("attempt-2"), "{out}");
    assert!(!out.contains("folded"), "runs are kept 180 days: {out}");
    assert_eq!(fs::read(state.join("state.db")).unwrap(), db_before);
    assert!(first_log.exists() && work.exists());

    let json = study.json(&["clean", "--older-than", "0"]);
    assert_eq!(json["summarised_runs"], 0, "{json}");
    assert!(json["freed_bytes"].as_u64().unwrap() > 0, "{json}");
    assert!(!first_log.exists() && !first_script.exists() && !work.exists());
    assert_eq!(study.runs().len(), 8);

    // Runs kept row by row for 0s: the four first attempts are folded.
    let config = chain_config("local", FLAKY).replace(
        "retry:",
        "housekeeping:\n  summarise_runs_after: 0s\nretry:",
    );
    study.write("nfslurm.yaml", &config);
    let out = study.ok(&["clean"]);
    assert!(out.contains("4 runs older than 0s folded"), "{out}");
    // The last attempt stays, with its files; the study is still done.
    assert!(last_log.exists());
    assert!(study.unit_states().values().all(|s| s == "done"));
    let plan = study.ok(&["plan"]);
    assert!(plan.contains("nothing to do"), "{plan}");
    let runs = study.runs();
    assert_eq!(runs.len(), 4, "{runs:?}");
    let show = study.ok(&["show", "bids/sub-01/ses-1"]);
    assert!(
        show.contains("older runs, summarised by `nfslurm clean`"),
        "{show}"
    );
    assert!(show.contains("  1 failed · "), "{show}");
    let show = study.ok(&["show", "qsiprep/sub-01"]);
    assert!(show.contains("  1 upstream_failed · "), "{show}");
    let shown = study.json(&["show", "bids/sub-01/ses-1"]);
    assert_eq!(shown["summarised_runs"][0]["runs"], 1, "{shown}");

    // Forced again, the unit runs as attempt 3: numbering goes on.
    study.ok(&["submit", "--pipeline", "bids", "--force", "--wait"]);
    assert!(state.join("logs/bids/sub-01_ses-1/attempt-3.out").exists());
}

#[test]
fn clean_never_touches_a_running_unit() {
    let study = chain_study("local", 1, 1, "sleep 4");
    study.ok(&["discover"]);
    study.ok(&["submit", "--all"]);
    let start = std::time::Instant::now();
    while study.unit_states()["bids/sub-01/ses-1"] != "running" {
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = study.ok(&["clean", "--older-than", "0"]);
    assert!(out.contains("0 work dirs, 0 files"), "{out}");
    assert!(
        study
            .path()
            .join(".nfslurm/work/bids/sub-01/ses-1")
            .exists()
    );
    study.ok(&["submit", "--all", "--wait"]);
    assert!(study.unit_states().values().all(|s| s == "done"));
}
