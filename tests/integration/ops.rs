//! Operations: the crontab line, `sync` under cron (lock, log, kill),
//! `doctor`, the status views people read, and notifications.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::common::{Study, chain_config};

// ---------------------------------------------------------------------------
// cron

/// Tests that write the real crontab take turns.
static CRONTAB: Mutex<()> = Mutex::new(());

/// Saves this user's real crontab and puts it back when dropped, even when
/// the test fails.
struct SavedCrontab {
    saved: Option<String>,
    _turn: MutexGuard<'static, ()>,
}

fn crontab_l() -> Option<String> {
    let out = Command::new("crontab").arg("-l").output().unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn crontab_set(text: &str) {
    let mut child = Command::new("crontab")
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

impl SavedCrontab {
    fn new() -> SavedCrontab {
        let turn = CRONTAB.lock().unwrap_or_else(|e| e.into_inner());
        SavedCrontab {
            saved: crontab_l(),
            _turn: turn,
        }
    }
}

impl Drop for SavedCrontab {
    fn drop(&mut self) {
        match &self.saved {
            Some(text) => crontab_set(text),
            None => {
                let _ = Command::new("crontab").arg("-r").output();
            }
        }
    }
}

/// `nfslurm` as a plain process (to spawn and kill), set up as `Study::cmd`.
fn std_cmd(study: &Study) -> Command {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("nfslurm"));
    cmd.current_dir(study.path())
        .env_remove("NFSLURM_CONFIG")
        .env("NO_COLOR", "1")
        .env("NFSLURM_TRANSIENT_ATTEMPTS", "1");
    cmd
}

fn local_study() -> Study {
    let study = Study::new();
    study.write(
        "nfslurm.yaml",
        "version: 1\nsite: local\nexecutor: local\npaths:\n  dicom_root: dicom\ndiscovery:\n  settle: 0s\npipelines:\n  bids:\n    command: echo ok\n",
    );
    study.write("mapping.csv", "ScanID,SubjectCode,SessionID\nS1,01,1\n");
    study.session_folder("S1", 2);
    study
}

#[test]
fn cron_install_show_remove_keep_every_other_crontab_line() {
    let _saved = SavedCrontab::new();
    let study = local_study();
    let config = fs::canonicalize(study.config_path()).unwrap();
    let others = "MAILTO=ada@example.org\n# a comment about backups\n17 3 * * * /usr/local/bin/backup --all\n*/5 * * * * /opt/nfslurm --config /elsewhere/nfslurm.yaml sync # nfslurm: /elsewhere/nfslurm.yaml\n";
    crontab_set(others);

    let out = study.ok(&["cron", "install"]);
    assert!(out.starts_with("installed: "), "{out}");
    let after = crontab_l().unwrap();
    assert!(after.starts_with(others), "other lines changed:\n{after}");
    let ours: Vec<&str> = after.lines().skip(others.lines().count()).collect();
    assert_eq!(ours.len(), 1, "{after}");
    let line = ours[0];
    let marker = format!("# nfslurm: {}", config.display());
    assert!(line.ends_with(&marker), "{line}");
    assert!(line.contains(" sync --log "), "{line}");
    assert!(
        line.contains(&format!("--config {}", config.display())),
        "{line}"
    );
    assert!(
        line.contains(&format!(
            "{}/.nfslurm/cron.log",
            config.parent().unwrap().display()
        )),
        "{line}"
    );
    let exe = line
        .split_whitespace()
        .find(|w| w.ends_with("/nfslurm"))
        .unwrap();
    assert!(
        Path::new(exe).is_absolute() && Path::new(exe).exists(),
        "{line}"
    );
    // Every 15 minutes, spread: `M-59/15` or `*/15`.
    let minute = line.split_whitespace().next().unwrap();
    assert!(minute.ends_with("/15"), "{line}");

    // Idempotent.
    let out = study.ok(&["cron", "install"]);
    assert!(out.starts_with("unchanged: "), "{out}");
    assert_eq!(crontab_l().unwrap(), after);

    // A new schedule replaces the line in place.
    let out = study.ok(&["cron", "install", "--every", "1h"]);
    assert!(out.starts_with("updated: "), "{out}");
    let hourly = crontab_l().unwrap();
    assert!(hourly.starts_with(others));
    assert_eq!(hourly.lines().filter(|l| l.ends_with(&marker)).count(), 1);
    let fields: Vec<&str> = hourly.lines().last().unwrap().split_whitespace().collect();
    assert!(
        fields[0].parse::<u32>().unwrap() < 60 && fields[1] == "*",
        "{hourly}"
    );

    let show = study.ok(&["cron", "show"]);
    assert!(show.starts_with(hourly.lines().last().unwrap()), "{show}");
    assert!(show.contains("cron.log` (not written yet)"), "{show}");
    assert!(
        show.contains("other nfslurm lines in this crontab: 1"),
        "{show}"
    );
    let json = study.json(&["cron", "show"]);
    assert_eq!(json["installed"], true);

    // Bad schedules are refused with the forms that work.
    let out = study.run(&["cron", "install", "--every", "45m"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("error: `--every 45m` cannot be written as a crontab schedule"),
        "{err}"
    );
    assert!(
        err.contains("hint: write whole minutes that divide an hour"),
        "{err}"
    );

    let out = study.ok(&["cron", "remove"]);
    assert!(out.starts_with("removed: "), "{out}");
    assert_eq!(crontab_l().unwrap(), others);
    let out = study.ok(&["cron", "remove"]);
    assert!(out.starts_with("nothing to remove"), "{out}");
    assert_eq!(crontab_l().unwrap(), others);
    let show = study.ok(&["cron", "show"]);
    assert!(show.contains("no crontab line for"), "{show}");
}

#[test]
fn cron_install_schedule_keeps_the_fields_and_names_a_bad_field() {
    let _saved = SavedCrontab::new();
    crontab_set("17 3 * * * /usr/local/bin/backup\n");
    let study = local_study();
    // A bad schedule is refused before the crontab is touched.
    let out = study.run(&["cron", "install", "--schedule", "0 2 */0 * *"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "error: `--schedule 0 2 */0 * *`: the day-of-month field `*/0` has the step `/0`"
        ),
        "{err}"
    );
    assert!(err.contains("hint: five fields: minute hour"), "{err}");
    let out = study.run(&["cron", "install", "--schedule", "0 25 * * *"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the hour field `25` has `25`, outside 0-23"),
        "{err}"
    );
    assert_eq!(crontab_l().unwrap(), "17 3 * * * /usr/local/bin/backup\n");
    // `--every` and `--schedule` are one choice.
    let out = study.run(&[
        "cron",
        "install",
        "--every",
        "1h",
        "--schedule",
        "0 2 * * *",
    ]);
    assert_eq!(out.status.code(), Some(1));

    let out = study.ok(&["cron", "install", "--schedule", "0 2 */3 * *"]);
    assert!(out.starts_with("installed: 0 2 */3 * * "), "{out}");
    assert!(out.contains("on the schedule `0 2 */3 * *`"), "{out}");
    let after = crontab_l().unwrap();
    let ours = after.lines().last().unwrap();
    assert!(ours.starts_with("0 2 */3 * * "), "{after}");
    assert!(
        after.starts_with("17 3 * * * /usr/local/bin/backup\n"),
        "{after}"
    );
    // Back to `--every`: the same line, replaced in place.
    let out = study.ok(&["cron", "install", "--every", "1h"]);
    assert!(out.starts_with("updated: "), "{out}");
    assert_eq!(crontab_l().unwrap().lines().count(), 2);
}

#[test]
fn the_installed_line_runs_sync_under_a_cron_environment() {
    let _saved = SavedCrontab::new();
    let study = local_study();
    // A config that reads a variable cron does not set.
    let text = fs::read_to_string(study.config_path()).unwrap();
    study.write(
        "nfslurm.yaml",
        &text.replace(
            "dicom_root: dicom",
            "dicom_root: dicom\n  work_dir: /tmp/$NFSLURM_OPS_VAR/work",
        ),
    );
    let out = study
        .cmd()
        .env("NFSLURM_OPS_VAR", "ops-test")
        .args(["cron", "install"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("`NFSLURM_OPS_VAR`"));
    let line = crontab_l()
        .unwrap()
        .lines()
        .find(|l| l.contains("# nfslurm: "))
        .unwrap()
        .to_string();
    // The command part, as cron hands it to `sh` (no `%` in these paths).
    let command: String = line
        .split_whitespace()
        .skip(5)
        .collect::<Vec<_>>()
        .join(" ");
    let run = || {
        Command::new("sh")
            .args(["-c", &command])
            .env_clear()
            .env("HOME", "/root")
            .env("LOGNAME", "root")
            .env("SHELL", "/bin/sh")
            .env("PATH", "/usr/bin:/bin")
            .output()
            .unwrap()
    };
    let out = run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Everything went to the log, time-stamped.
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
    let log = study.path().join(".nfslurm/cron.log");
    let text = fs::read_to_string(&log).unwrap();
    let stamp = regex::Regex::new(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[\d+\] ").unwrap();
    assert!(text.lines().count() >= 2, "{text}");
    assert!(text.lines().all(|l| stamp.is_match(l)), "{text}");
    assert!(
        text.contains("bids/sub-01/ses-1: - -> submitting"),
        "{text}"
    );
    let _ = fs::remove_dir_all("/tmp/ops-test");
}

#[test]
fn sync_log_is_quiet_when_nothing_changed_and_rotates_past_1_mib() {
    let study = local_study();
    let log = study.path().join(".nfslurm/cron.log");
    let log_arg = log.display().to_string();
    let out = study.run(&["sync", "--log", &log_arg]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
    wait_settled(&study, Duration::from_secs(60));
    // Nothing changed since: nothing written.
    study.ok(&["sync"]);
    let before = fs::read_to_string(&log).unwrap();
    study.ok(&["sync", "--log", &log_arg]);
    assert_eq!(fs::read_to_string(&log).unwrap(), before);

    // Past 1 MiB the log becomes cron.log.1 (and older ones shift, 3 kept).
    let big = "x".repeat(1024 * 1024 + 10);
    for i in 1..=4 {
        fs::write(&log, format!("{i}{big}")).unwrap();
        study.ok(&["sync", "--log", &log_arg]);
    }
    let first_char = |n: u32| {
        fs::read_to_string(format!("{log_arg}.{n}"))
            .unwrap()
            .chars()
            .next()
            .unwrap()
    };
    assert_eq!(first_char(1), '4');
    assert_eq!(first_char(2), '3');
    assert_eq!(first_char(3), '2');
    assert!(!Path::new(&format!("{log_arg}.4")).exists());
    assert_eq!(fs::metadata(&log).unwrap().len(), 0);

    // An error goes to the log too, and the exit code says so.
    study.write(
        "nfslurm.yaml",
        "version: 1\npaths:\n  dicom_root: dicom\n  bogus: 1\n",
    );
    let out = study.run(&["sync", "--log", &log_arg]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("] error: nfslurm.yaml:4:3: unknown key `bogus`"),
        "{text}"
    );
}

/// Syncs until no unit is queued, running, waiting or retrying.
fn wait_settled(study: &Study, timeout: Duration) {
    let start = Instant::now();
    loop {
        let states = study.unit_states();
        if !states.is_empty()
            && states.values().all(|s| {
                matches!(
                    s.as_str(),
                    "done" | "failed" | "blocked" | "invalid" | "cancelled"
                )
            })
        {
            return;
        }
        assert!(start.elapsed() < timeout, "not settled: {states:?}");
        std::thread::sleep(Duration::from_millis(300));
        let _ = study.run(&["sync"]);
    }
}

/// A folder of stand-ins for the Slurm tools: `sbatch` takes `secs` seconds
/// (touching `started` first), `squeue` and `sacct` know no job.
fn fake_slurm(dir: &Path, started: &Path, secs: u32) -> PathBuf {
    let bin = dir.join("fake-slurm-bin");
    fs::create_dir_all(&bin).unwrap();
    let write = |name: &str, body: &str| {
        let p = bin.join(name);
        fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    };
    write(
        "sbatch",
        &format!("touch '{}'\nsleep {secs}\necho 4242", started.display()),
    );
    write("squeue", "exit 0");
    write("sacct", "exit 0");
    write("scancel", "exit 0");
    bin
}

#[test]
fn a_second_sync_prints_one_line_and_a_killed_sync_leaves_a_state_the_next_repairs() {
    let study = local_study();
    let text = fs::read_to_string(study.config_path()).unwrap();
    study.write(
        "nfslurm.yaml",
        &text.replace("executor: local", "executor: slurm"),
    );
    let started = study.path().join("sbatch-started");
    let bin = fake_slurm(study.path(), &started, 20);
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());

    // The first sync stops inside `sbatch`, holding the plan lock.
    let mut first = std_cmd(&study)
        .env("PATH", &path)
        .arg("sync")
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !started.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "sbatch never called"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = study.cmd().env("PATH", &path).arg("sync").output().unwrap();
    assert_eq!(second.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&second.stdout),
        "another sync holds the lock; leaving this one to it\n"
    );
    assert!(second.stderr.is_empty());

    // Killed between `sbatch` and recording its answer: the next sync takes
    // the lock, and the run waits to be adopted instead of being submitted twice.
    first.kill().unwrap();
    first.wait().unwrap();
    let third = study.cmd().env("PATH", &path).arg("sync").output().unwrap();
    let stdout = String::from_utf8_lossy(&third.stdout);
    assert_eq!(
        third.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&third.stderr)
    );
    assert!(!stdout.contains("another sync holds the lock"), "{stdout}");
    let runs = study.json(&["status", "runs"])["runs"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["state"], "submitting");
}

// ---------------------------------------------------------------------------
// doctor

#[test]
#[ignore = "needs the Slurm test cluster: scripts/test.sh runs it"]
fn doctor_on_the_healthy_test_cluster_has_no_failure() {
    let Some(_cluster) = crate::slurm::cluster() else {
        return;
    };
    let study = Study::new();
    study.write(
        "nfslurm.yaml",
        "version: 1\nsite: generic\nscheduler: { partition: debug }\npaths:\n  dicom_root: dicom\npipelines:\n  bids:\n    container: docker://nipy/heudiconv:1.3.2\n    command: heudiconv -s {{ subject.label }}\n  qsiprep:\n    level: subject\n    depends_on: [bids]\n    container: library://qsiprep\n    command: qsiprep {{ subject.label }}\n",
    );
    study.write("mapping.csv", "ScanID,SubjectCode\nS1,01\n");
    study.session_folder("S1", 2);
    study.ok(&["discover"]); // a state database to check
    let out = study.run(&["doctor"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(!stdout.contains("fail "), "{stdout}");
    for name in [
        "config",
        "templates",
        "slurm",
        "cluster",
        "images",
        "dicom_root",
        "mapping",
        "bids_root",
        "state",
        "cron",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("ok ") && l[6..].starts_with(name))
                || stdout
                    .lines()
                    .any(|l| l.starts_with("warn") && l[6..].starts_with(name)),
            "{name}:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("the controller answers; partitions `debug`"),
        "{stdout}"
    );
    // Apptainer cannot be installed here: a warning, not a failure.
    assert!(
        stdout.contains("warn  runtime     `apptainer` is not on PATH"),
        "{stdout}"
    );
    let json = study.json(&["doctor"]);
    assert_eq!(json["failures"], 0);
    assert!(
        json["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["check"] == "cluster" && c["status"] == "ok")
    );
}

/// A folder of links to every program on PATH but `without`.
fn path_without(dir: &Path, without: &str) -> PathBuf {
    let bin = dir.join("path-without");
    fs::create_dir_all(&bin).unwrap();
    for d in std::env::split_paths(&std::env::var_os("PATH").unwrap()) {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let link = bin.join(&name);
            if name != without && !link.exists() {
                let _ = std::os::unix::fs::symlink(e.path(), link);
            }
        }
    }
    bin
}

#[test]
fn doctor_without_sbatch_fails_with_a_hint() {
    let study = Study::new();
    study.write(
        "nfslurm.yaml",
        "version: 1\nsite: local\nexecutor: slurm\npaths:\n  dicom_root: dicom\npipelines:\n  bids:\n    command: echo {{ subject.label }}\n",
    );
    study.write("mapping.csv", "ScanID,SubjectCode\n");
    fs::create_dir_all(study.path().join("dicom")).unwrap();
    let bin = path_without(study.path(), "sbatch");
    let out = study
        .cmd()
        .env("PATH", &bin)
        .arg("doctor")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    let i = lines
        .iter()
        .position(|l| l.starts_with("fail  slurm"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(lines[i], "fail  slurm       `sbatch` is not on PATH");
    assert!(
        lines[i + 1]
            .trim_start()
            .starts_with("hint: load your site's Slurm module"),
        "{stdout}"
    );
    assert!(
        stdout
            .trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with("1 failure"),
        "{stdout}"
    );
    // With the local executor the same gap is only a warning.
    let out = study
        .cmd()
        .env("PATH", &bin)
        .args(["--executor", "local", "doctor"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("warn  slurm       `sbatch` is not on PATH"),
        "{stdout}"
    );
}

#[test]
fn doctor_names_missing_folders_images_and_a_broken_config() {
    let study = Study::new();
    study.write(
        "nfslurm.yaml",
        "version: 1\nsite: generic\nexecutor: local\npaths:\n  dicom_root: incoming\npipelines:\n  bids:\n    container: /nonexistent/heudiconv.sif\n    command: echo {{ subject.label }}\n",
    );
    let out = study.run(&["--json", "doctor"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let status = |name: &str| {
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == name)
            .map(|c| c["status"].as_str().unwrap().to_string())
    };
    assert_eq!(status("dicom_root").as_deref(), Some("fail"));
    assert_eq!(status("mapping").as_deref(), Some("fail"));
    assert_eq!(status("images").as_deref(), Some("fail"));
    assert_eq!(status("bids_root").as_deref(), Some("ok"));
    assert_eq!(status("state").as_deref(), Some("ok"));
    // Doctor changes nothing: no state folder appeared.
    assert!(!study.path().join(".nfslurm").exists());

    study.write(
        "nfslurm.yaml",
        "version: 1\npaths:\n  dicom_root: d\n  bogus: 1\n",
    );
    let out = study.run(&["doctor"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("fail  config      nfslurm.yaml:4:3: unknown key `bogus` at `paths`"),
        "{stdout}"
    );
}

// ---------------------------------------------------------------------------
// status views

/// Two subjects of two sessions through the four-pipeline chain; `bids` fails
/// for sub-02/ses-2 (one attempt), and sub-03's only session is invalid.
fn status_study() -> Study {
    let study = Study::new();
    let extra = r#"{% if subject.label == "02" and session.label == "2" %}exit 1{% endif %}"#;
    study.write(
        "nfslurm.yaml",
        &chain_config("local", extra).replace("max_attempts: 2", "max_attempts: 1"),
    );
    let mut mapping = String::from("ScanID,SubjectCode,SessionID\n");
    for s in 1..=2 {
        for e in 1..=2 {
            let scan = format!("SCAN{s:02}{e}");
            study.session_folder(&scan, 4);
            mapping.push_str(&format!("{scan},{s:02},{e}\n"));
        }
    }
    study.session_folder("SCAN031", 1);
    mapping.push_str("SCAN031,03,1\n");
    study.write("mapping.csv", &mapping);
    study
}

fn filtered(study: &Study) -> Vec<(String, String)> {
    vec![
        (
            regex::escape(&study.path().display().to_string()),
            "[STUDY]".into(),
        ),
        (r"\d{4}-\d\d-\d\d \d\d:\d\d(:\d\d)?".into(), "[TIME]".into()),
        (r"\((just now|[0-9hms]+ ago)\)".into(), "([AGO])".into()),
    ]
}

#[test]
fn status_views_for_people() {
    let study = status_study();
    study.ok(&["discover"]);
    let out = study.run(&["submit", "--all", "--wait"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    study.ok(&["sync"]);

    let summary = study.ok(&["status"]);
    let matrix = study.ok(&["status", "matrix"]);
    let runs = study.ok(&["status", "runs"]);
    for text in [&summary, &matrix] {
        for line in text.lines() {
            assert!(line.chars().count() <= 80, "wider than 80: {line}");
        }
    }
    let filters = filtered(&study);
    let filters: Vec<(&str, &str)> = filters
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    insta::with_settings!({ filters => filters.clone() }, {
        insta::assert_snapshot!("status_summary", summary);
        insta::assert_snapshot!("status_matrix", matrix);
    });
    // Runs: elapsed times and memory use vary, and so do column widths.
    let mut run_filters = filters.clone();
    run_filters.extend([
        (r"\b\d+(h\d\dm|m\d\ds|s)\b", "[DUR]"),
        (r"\b\d+(\.\d)?[MG]/", "[RSS]/"),
        (r"\b\d+%", "[EFF]%"),
        (r" {2,}", "  "),
    ]);
    insta::with_settings!({ filters => run_filters }, {
        insta::assert_snapshot!("status_runs", runs);
    });

    // Selection and --state narrow every view.
    let failed = study.ok(&["status", "--state", "failed"]);
    assert!(
        failed.contains("bids      session       1      1"),
        "{failed}"
    );
    let matrix_02 = study.ok(&["status", "matrix", "--participant", "sub-02"]);
    assert!(
        !matrix_02.contains("sub-01") && matrix_02.contains("sub-02"),
        "{matrix_02}"
    );
    let runs_failed = study.ok(&["status", "runs", "--state", "failed"]);
    assert_eq!(
        runs_failed.lines().filter(|l| l.contains("/sub-")).count(),
        1,
        "{runs_failed}"
    );
    let err = study.run(&["status", "--state", "finished"]);
    assert_eq!(err.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&err.stderr).contains("hint: unit states: waiting, queued"));

    // The JSON contract (docs/json.md) is unchanged.
    let v = study.json(&["status"]);
    let unit = &v["units"][0];
    for key in [
        "pipeline",
        "subject",
        "session",
        "state",
        "reason",
        "attempts",
        "job_id",
        "next_attempt_at",
    ] {
        assert!(unit.get(key).is_some(), "{key}: {unit}");
    }
    assert_eq!(v["counts"]["bids"]["failed"], 1);
    let v = study.json(&["status", "runs"]);
    let run = &v["runs"][0];
    for key in [
        "run_id",
        "pipeline",
        "subject",
        "session",
        "attempt",
        "job_id",
        "state",
        "slurm_state",
        "exit_code",
        "submitted_at",
        "started_at",
        "ended_at",
        "elapsed_s",
        "max_rss_mb",
        "mem_mb",
        "time_limit_s",
        "reason",
    ] {
        assert!(run.get(key).is_some(), "{key}: {run}");
    }
}

#[test]
fn status_watch_redraws_until_stopped() {
    let study = status_study();
    study.ok(&["discover"]);
    let mut child = std_cmd(&study)
        .args(["status", "--watch", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    child.kill().unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child.wait().unwrap();
    // Off a terminal: frames one after another, no escape codes.
    assert!(
        out.matches("every 1s: nfslurm status").count() >= 2,
        "{out}"
    );
    assert!(!out.contains('\x1b'), "{out:?}");
}

// ---------------------------------------------------------------------------
// notifications

/// A webhook receiver on loopback: records request bodies, answers `status`.
/// It stops when dropped, after 300 requests, or after two minutes.
struct Receiver {
    url: String,
    bodies: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn receiver(status: u16) -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}/hook/secret", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (b, s) = (bodies.clone(), stop.clone());
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut served = 0;
        while !s.load(Ordering::Relaxed)
            && served < 300
            && start.elapsed() < Duration::from_secs(120)
        {
            let Ok((mut stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            served += 1;
            stream.set_nonblocking(false).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut data = Vec::new();
            let mut buf = [0u8; 4096];
            // Headers, then Content-Length bytes of body.
            let body = loop {
                let Ok(n) = stream.read(&mut buf) else {
                    break None;
                };
                if n == 0 {
                    break None;
                }
                data.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&data).into_owned();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if data.len() >= end + 4 + len {
                        break Some(format!(
                            "{}\n{}",
                            text.lines().next().unwrap_or(""),
                            &text[end + 4..end + 4 + len]
                        ));
                    }
                }
            };
            if let Some(body) = body {
                b.lock().unwrap().push(body);
            }
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            );
        }
    });
    Receiver { url, bodies, stop }
}

/// `bids` fails for sub-02 (one attempt); `prep` runs per subject after it.
fn notify_study(webhook: &str) -> Study {
    let study = Study::new();
    study.write(
        "nfslurm.yaml",
        &format!(
            r#"version: 1
site: local
executor: local
paths:
  dicom_root: dicom
discovery:
  settle: 0s
pipelines:
  bids:
    command: |
      {{% if subject.label == "02" %}}exit 1{{% endif %}}
      echo ok
  prep:
    level: subject
    depends_on: [bids]
    command: echo prep
retry:
  max_attempts: 1
notifications:
  webhook: {webhook}
  command: 'printf "%s\n" "$1" >> notified.txt; cat > /dev/null'
"#
        ),
    );
    study.write(
        "mapping.csv",
        "ScanID,SubjectCode,SessionID\nS1,01,1\nS2,02,1\n",
    );
    study.session_folder("S1", 2);
    study.session_folder("S2", 2);
    study
}

#[test]
fn a_failed_unit_is_notified_exactly_once_across_syncs() {
    let hook = receiver(200);
    let study = notify_study(&hook.url);
    study.ok(&["sync"]);
    wait_settled(&study, Duration::from_secs(60));
    for _ in 0..3 {
        study.ok(&["sync"]);
    }
    let states = study.unit_states();
    assert_eq!(states["bids/sub-02/ses-1"], "failed");
    assert_eq!(states["prep/sub-02"], "blocked");

    let bodies = hook.bodies.lock().unwrap().clone();
    let texts: Vec<String> = bodies
        .iter()
        .map(|b| {
            let (request, json) = b.split_once('\n').unwrap();
            assert_eq!(request, "POST /hook/secret HTTP/1.1");
            let v: serde_json::Value = serde_json::from_str(json).unwrap();
            v["text"].as_str().unwrap().to_string()
        })
        .collect();
    let failures: Vec<&String> = texts.iter().filter(|t| t.contains(" failed in ")).collect();
    assert_eq!(failures.len(), 1, "{texts:#?}");
    assert!(
        failures[0].starts_with("nfslurm: bids/sub-02/ses-1 failed in `"),
        "{}",
        failures[0]
    );
    assert!(
        failures[0].contains("nfslurm retry --failed"),
        "{}",
        failures[0]
    );
    // Each pipeline's end is reported once too (`prep`: one done, one blocked).
    let finished = texts.iter().filter(|t| t.contains("finished")).count();
    assert!((1..=2).contains(&finished), "{texts:#?}");
    assert!(
        texts
            .iter()
            .all(|t| texts.iter().filter(|u| *u == t).count() == 1),
        "{texts:#?}"
    );

    // The command got the same messages, subject as `$1`.
    let notified = fs::read_to_string(study.path().join("notified.txt")).unwrap();
    assert_eq!(notified.lines().count(), texts.len(), "{notified}");
    assert_eq!(
        notified
            .lines()
            .filter(|l| l.contains(" failed in "))
            .count(),
        1
    );

    // A retry that fails again is a new event.
    study.ok(&["retry", "--failed"]);
    wait_settled(&study, Duration::from_secs(60));
    study.ok(&["sync"]);
    let bodies = hook.bodies.lock().unwrap().clone();
    let failures = bodies.iter().filter(|b| b.contains(" failed in ")).count();
    assert_eq!(failures, 2, "{bodies:#?}");
}

#[test]
fn a_failing_webhook_never_fails_the_sync() {
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hook", l.local_addr().unwrap())
    };
    let broken = receiver(500);
    for url in [broken.url.clone(), closed] {
        let study = notify_study(&url);
        let out = study.run(&["sync"]);
        assert!(out.status.success());
        let start = Instant::now();
        let mut warned = String::new();
        while warned.is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no warning for {url}"
            );
            std::thread::sleep(Duration::from_millis(300));
            let out = study.run(&["sync"]);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let stderr = String::from_utf8_lossy(&out.stderr);
            if let Some(line) = stderr
                .lines()
                .find(|l| l.contains("notification by webhook failed"))
            {
                warned = line.to_string();
            }
        }
        // The URL's path (a secret) is not written out.
        assert!(!warned.contains("/hook"), "{warned}");
        assert!(warned.contains("POST to `http://127.0.0.1:"), "{warned}");
        // The command still ran.
        assert!(study.path().join("notified.txt").exists());
    }
    assert!(!broken.bodies.lock().unwrap().is_empty());
}

/// A `Command::output` could hang a cron `sync` forever on a stuck tool.
#[test]
fn a_hung_slurm_tool_is_killed_at_its_deadline_and_the_command_exits_2() {
    let study = local_study();
    let text = fs::read_to_string(study.config_path()).unwrap();
    study.write(
        "nfslurm.yaml",
        &text.replace(
            "executor: local",
            "executor: slurm\nscheduler:\n  tool_timeout: 2s",
        ),
    );
    let started = study.path().join("sbatch-started");
    let bin = fake_slurm(study.path(), &started, 60);
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    study.ok(&["discover"]);
    // Several attempts allowed: a hung sbatch must not be called again (it
    // may have queued the job), it is left for adoption.
    let start = Instant::now();
    let out = std_cmd(&study)
        .env("PATH", &path)
        .env("NFSLURM_TRANSIENT_ATTEMPTS", "3")
        .args(["submit", "--all"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    assert!(
        err.contains("`sbatch` did not answer within 2s: killed"),
        "{err}"
    );
    let runs = study.json(&["status", "runs"])["runs"].clone();
    assert_eq!(runs[0]["state"], "submitting", "left for adoption: {runs}");
    // A hung squeue: sync exits 2 as well, after its retries, and the lock is free.
    fs::write(bin.join("squeue"), "#!/bin/sh\nsleep 60\n").unwrap();
    let start = Instant::now();
    let out = std_cmd(&study)
        .env("PATH", &path)
        .env("NFSLURM_TRANSIENT_ATTEMPTS", "2")
        .arg("sync")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    assert!(err.contains("`squeue` did not answer within 2s"), "{err}");
    // No stand-in is left running.
    let left = std::process::Command::new("pgrep")
        .args(["-f", &format!("{}/", bin.display())])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&left.stdout)
    );
}
