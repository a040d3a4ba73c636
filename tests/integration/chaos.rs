//! Exactly once, from outside: `scripts/chaos.sh` kills `submit`, `sync` and
//! the local worker with SIGKILL at random moments, recovers with plain
//! `sync`, and counts what the jobs themselves recorded (each takes a lock
//! named after its unit and appends a completion).

use std::process::Command;

use crate::slurm::cluster;

const TRIALS: u32 = 20;

/// Runs the chaos script on `targets` and checks every row of its table.
fn chaos(targets: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/chaos.sh");
    let out = Command::new(script)
        .arg("-n")
        .arg(TRIALS.to_string())
        .args(targets)
        .env("NFSLURM_BIN", env!("CARGO_BIN_EXE_nfslurm"))
        .output()
        .expect("run scripts/chaos.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "chaos failed:\n{stdout}\n{stderr}");
    for target in targets {
        let row: Vec<u64> = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(target))
            .unwrap_or_else(|| panic!("no row for {target}:\n{stdout}"))
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap())
            .collect();
        let [kills, units, completions, doubles, overlaps, lost] = row[..] else {
            panic!("bad row for {target}: {row:?}");
        };
        // Each trial adds a subject with two sessions: 2 + 1 units.
        assert_eq!(units, 3 * TRIALS as u64, "{target}");
        assert_eq!(completions, units, "{target}: one completion per unit");
        assert_eq!((doubles, overlaps, lost), (0, 0, 0), "{target}");
        // The kills must have landed, or nothing was tested.
        assert!(
            kills >= (TRIALS / 4) as u64,
            "{target}: only {kills} kills landed"
        );
    }
}

#[test]
fn killed_submit_sync_and_worker_never_run_a_local_unit_twice() {
    chaos(&["local-submit", "local-sync", "local-worker"]);
}

#[test]
fn concurrent_syncs_beside_a_busy_worker_and_a_watch_give_no_error() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/chaos.sh");
    let out = Command::new(script)
        .args(["-d", "60", "concurrency"])
        .env("NFSLURM_BIN", env!("CARGO_BIN_EXE_nfslurm"))
        .output()
        .expect("run scripts/chaos.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let row: Vec<&str> = stdout
        .lines()
        .find(|l| l.starts_with("concurrency"))
        .expect("a concurrency row")
        .split_whitespace()
        .collect();
    // errors, then units, completions, doubles, overlaps, lost.
    assert_eq!(row[1], "e=0", "{stdout}");
    assert!(
        row[2].parse::<u32>().unwrap() >= 3 * 10,
        "subjects kept arriving"
    );
    assert_eq!(row[2], row[3], "one completion per unit");
    assert_eq!(&row[4..], ["0", "0", "0"], "{stdout}");
    let rounds: u32 = stderr
        .split("concurrency: ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the rounds line");
    assert!(rounds >= 20, "only {rounds} rounds of 25 syncs");
}

#[test]
fn killed_submit_and_sync_never_run_a_slurm_unit_twice() {
    let Some(_cluster) = cluster() else { return };
    chaos(&["slurm-jobs", "slurm-arrays"]);
}
