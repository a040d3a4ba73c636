//! Issue 9: no input runs as code, nothing panics, no secret is printed, the
//! state is never silently reset. Each test is named after what it pins.

use std::fs;
use std::os::unix::ffi::OsStrExt;

use crate::common::Study;

/// A one-pipeline local study whose folder pattern takes any name.
fn any_name_study(command: &str) -> Study {
    let study = Study::new();
    study.write(
        "nfslurm.yaml",
        &format!(
            "version: 1\nsite: local\nexecutor: local\npaths:\n  dicom_root: dicom\ndiscovery:\n  pattern: '^(?P<scan_id>.+)$'\n  mapping: {{ file: mapping.csv }}\n  validation: {{ min_files: 3 }}\n  settle: 0s\npipelines:\n  bids:\n    level: session\n    command: |\n      {command}\n"
        ),
    );
    study.write(
        "mapping.csv",
        "ScanID,SubjectCode,SessionID\nX$(touch PWNED),01,1\nS1,02,1\n",
    );
    study.session_folder("X$(touch PWNED)", 3);
    study.session_folder("S1", 3);
    study
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn pwned_anywhere(study: &Study) -> bool {
    fn walk(dir: &std::path::Path) -> bool {
        fs::read_dir(dir).unwrap().any(|e| {
            let e = e.unwrap();
            e.file_name() == "PWNED" || (e.file_type().unwrap().is_dir() && walk(&e.path()))
        })
    }
    walk(study.path())
}

#[test]
fn a_folder_name_in_double_quotes_is_refused_by_the_loader_and_doctor() {
    let study = any_name_study(r#"ls "{{ session.dicom_dir }}""#);
    let out = study.run(&["discover"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("nfslurm.yaml:15:7: `pipelines.bids.command` puts `{{ session.dicom_dir }}` inside double quotes"),
        "{err}"
    );
    assert!(err.contains("hint: write it as a word of its own"), "{err}");
    let doctor = study.run(&["doctor"]);
    assert_eq!(doctor.status.code(), Some(1));
    assert!(
        stdout(&doctor).contains("fail  config")
            && stdout(&doctor).contains("inside double quotes"),
        "{}",
        stdout(&doctor)
    );
    assert!(!study.path().join(".nfslurm/state.db").exists());
    assert!(!pwned_anywhere(&study));
}

#[test]
fn a_folder_named_like_a_command_is_skipped_and_never_runs() {
    let study = any_name_study("ls {{ session.dicom_dir }}");
    let out = study.ok(&["discover"]);
    assert!(
        out.contains("skipped: dicom/X$(touch PWNED): name contains `$` `(` `)`, which a shell could run as code"),
        "{out}"
    );
    let v = study.json(&["discover"]);
    assert_eq!(
        v["skipped"][0]["folder"].as_str().unwrap(),
        study.path().join("dicom/X$(touch PWNED)").to_str().unwrap()
    );
    study.ok(&["submit", "--all", "--wait"]);
    assert_eq!(study.unit_states().len(), 1);
    assert!(!pwned_anywhere(&study));
}

#[test]
fn json_discover_with_a_non_utf8_folder_prints_json_not_a_panic() {
    let study = any_name_study("ls {{ session.dicom_dir }}");
    let dicom = study.path().join("dicom");
    fs::create_dir(dicom.join(std::ffi::OsStr::from_bytes(b"S\xff\x1b[2J"))).unwrap();
    fs::write(dicom.join("README.txt"), "x").unwrap();
    std::os::unix::fs::symlink("/nowhere", dicom.join("S9")).unwrap();
    std::os::unix::fs::symlink(dicom.join("S8"), dicom.join("S8")).unwrap();
    let out = study.run(&["--json", "discover"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let whys: Vec<&str> = v["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["why"].as_str().unwrap())
        .collect();
    for why in [
        "name is not valid UTF-8: rename the folder",
        "a file, not a folder: session folders only",
        "a dangling symlink: its target `/nowhere` does not exist",
    ] {
        assert!(whys.contains(&why), "{why}: {whys:?}");
    }
    assert!(
        whys.iter().any(|w| w.starts_with("a symlink loop")),
        "{whys:?}"
    );
    // And for people: no raw escape character reaches the terminal.
    let text = study.ok(&["discover"]);
    assert!(!text.contains('\x1b'), "{text:?}");
    assert!(text.contains("S\u{fffd}\\u{1b}[2J"), "{text}");
}

#[test]
fn with_json_an_error_is_json_on_stdout_with_the_same_exit_code() {
    let study = Study::new();
    study.write(
        "nfslurm.yaml",
        "version: 1\npaths:\n  dicom_root: dicom\nbogus: 1\n",
    );
    for args in [
        &["--json", "status"][..],
        &["--json", "discover"],
        &["--json", "show", "nope"],
    ] {
        let out = study.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", stdout(&out)));
        assert!(v["error"].as_str().unwrap().contains("bogus"), "{v}");
        assert!(v.get("hint").is_some(), "{v}");
    }
    let out = study.run(&["--json", "status", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("--no-such-flag"),
        "{v}"
    );
}

fn record(outputs: &mut Vec<(String, String)>, name: &str, out: std::process::Output) {
    outputs.push((
        name.to_string(),
        format!("{}\n{}", stdout(&out), stderr(&out)),
    ));
}

/// Issue 9: `http://user:PASS@host/...` was printed in the WARN line (and so
/// in cron.log) when the webhook failed.
#[test]
fn a_failing_webhook_never_prints_its_secrets() {
    // A closed port: bind, then drop.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url =
        format!("http://hookuser:PASSWORD9@127.0.0.1:{port}/hooks/SECRETPATH?token=SECRETQUERY");
    let secrets = ["hookuser", "PASSWORD9", "SECRETPATH", "SECRETQUERY"];
    let study = Study::new();
    study.write(
        "nfslurm.yaml",
        &format!(
            "version: 1\nsite: local\nexecutor: local\npaths:\n  dicom_root: dicom\ndiscovery:\n  mapping: {{ file: mapping.csv }}\n  settle: 0s\npipelines:\n  bids:\n    command: exit 3\nretry:\n  max_attempts: 1\nnotifications:\n  webhook: {url}\n"
        ),
    );
    study.write("mapping.csv", "ScanID,SubjectCode,SessionID\nS1,01,1\n");
    fs::create_dir(study.path().join("dicom")).unwrap();
    let mut outputs: Vec<(String, String)> = Vec::new();
    // The first sync sets the notification baseline, then a unit fails.
    record(&mut outputs, "first sync", study.run(&["sync"]));
    study.session_folder("S1", 3);
    record(&mut outputs, "discover", study.run(&["discover"]));
    record(
        &mut outputs,
        "submit",
        study.run(&["submit", "--all", "--wait"]),
    );
    record(
        &mut outputs,
        "sync --log",
        study.run(&["-v", "sync", "--log", "cron.log"]),
    );
    let log = fs::read_to_string(study.path().join("cron.log")).unwrap();
    assert!(
        log.contains(&format!(
            "notification by webhook failed: POST to `http://127.0.0.1:{port}/…`"
        )),
        "the webhook was tried and its failure logged: {log}"
    );
    outputs.push(("cron.log".into(), log));
    for args in [
        &["-vv", "sync"][..],
        &["--json", "sync"],
        &["status"],
        &["--json", "status"],
        &["status", "runs"],
        &["show", "bids/sub-01/ses-1"],
        &["--json", "show", "bids/sub-01/ses-1"],
        &["doctor"],
        &["--json", "doctor"],
        &["cron", "show"],
        &["--json", "cron", "show"],
    ] {
        record(&mut outputs, &args.join(" "), study.run(args));
    }
    let doctor = &outputs.iter().find(|(n, _)| n == "doctor").unwrap().1;
    assert!(
        doctor.contains(&format!(
            "notifications by webhook `http://127.0.0.1:{port}/…`"
        )),
        "{doctor}"
    );
    // A config error about the URL does not echo it either.
    study.write(
        "nfslurm.yaml",
        "version: 1\npaths:\n  dicom_root: dicom\nnotifications:\n  webhook: hookuser:PASSWORD9@example.org/SECRETPATH?token=SECRETQUERY\n",
    );
    let out = study.run(&["--json", "status"]);
    assert_eq!(out.status.code(), Some(1));
    record(&mut outputs, "config error", out);
    for (name, text) in &outputs {
        for secret in secrets {
            assert!(
                !text.contains(secret),
                "`{name}` printed `{secret}`:\n{text}"
            );
        }
    }
}

/// A local study that ran once: a database, a script, a log.
fn study_that_ran() -> Study {
    let study = Study::new();
    study.write(
        "nfslurm.yaml",
        "version: 1\nsite: local\nexecutor: local\npaths:\n  dicom_root: dicom\ndiscovery:\n  mapping: { file: mapping.csv }\n  settle: 0s\npipelines:\n  bids:\n    command: echo converted\n",
    );
    study.write("mapping.csv", "ScanID,SubjectCode,SessionID\nS1,01,1\n");
    study.session_folder("S1", 3);
    study.ok(&["discover"]);
    study.ok(&["submit", "--all", "--wait"]);
    assert!(
        study
            .path()
            .join(".nfslurm/scripts/bids/sub-01_ses-1/attempt-1.sbatch")
            .exists()
    );
    study
}

fn snapshot_of(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".lock") {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                files.insert(e.path().display().to_string(), fs::read(e.path()).unwrap());
            }
        }
    }
    files
}

/// Issue 9: an emptied `state.db` was taken for a new study, and `sync`
/// reran every unit, overwriting `attempt-1.sbatch`.
#[test]
fn a_bad_state_is_refused_and_changes_nothing() {
    type Damage = fn(&std::path::Path);
    let cases: [(&str, Damage, &str); 4] = [
        (
            "emptied",
            |db| fs::write(db, "").unwrap(),
            "is empty (0 bytes): it was emptied, it is not a new study",
        ),
        (
            "truncated",
            |db| {
                let bytes = fs::read(db).unwrap();
                fs::write(db, &bytes[..bytes.len() / 2]).unwrap();
            },
            "is truncated:",
        ),
        (
            "foreign",
            |db| fs::write(db, "SQLite format 2 (or so a CSV says)\n").unwrap(),
            "is not an SQLite database",
        ),
        (
            "deleted",
            |db| fs::remove_file(db).unwrap(),
            "has job scripts but no `state.db`",
        ),
    ];
    for (name, damage, says) in cases {
        let study = study_that_ran();
        let state = study.path().join(".nfslurm");
        damage(&state.join("state.db"));
        let before = snapshot_of(&state);
        for args in [
            &["sync"][..],
            &["status"],
            &["discover"],
            &["submit", "--all"],
        ] {
            let out = study.run(args);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{name}: {args:?}: {}{}",
                stdout(&out),
                stderr(&out)
            );
            let err = stderr(&out);
            assert!(err.contains(says), "{name}: {args:?}: {err}");
            assert!(
                err.contains("hint: restore `state.db` from a backup"),
                "{name}: {err}"
            );
            assert!(err.contains("`--reset-state`"), "{name}: {err}");
        }
        let out = study.run(&["--json", "sync"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(v["error"].as_str().unwrap().contains(says), "{name}: {v}");
        let doctor = study.run(&["doctor"]);
        assert!(
            stdout(&doctor).contains(says),
            "{name}: {}",
            stdout(&doctor)
        );
        assert_eq!(
            snapshot_of(&state),
            before,
            "{name}: the state dir is byte-identical"
        );
    }
}

#[test]
fn reset_state_backs_the_bad_state_up_says_where_and_starts_afresh() {
    let study = study_that_ran();
    let state = study.path().join(".nfslurm");
    let script = "scripts/bids/sub-01_ses-1/attempt-1.sbatch";
    let old_script = fs::read(state.join(script)).unwrap();
    // Healthy: nothing to reset, nothing touched.
    let out = study.run(&["sync", "--reset-state"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is healthy"), "{}", stderr(&out));
    fs::write(state.join("state.db"), "").unwrap();
    let out = study.run(&["sync", "--reset-state"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    let backups: Vec<_> = fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("backup-"))
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert!(
        err.contains(&format!(
            "moved the refused state to `.nfslurm/{}`",
            backups[0]
        )),
        "{err}"
    );
    let backup = state.join(&backups[0]);
    assert_eq!(fs::read(backup.join("state.db")).unwrap(), b"");
    assert_eq!(
        fs::read(backup.join(script)).unwrap(),
        old_script,
        "the old script is kept"
    );
    // The fresh study is healthy again.
    assert_eq!(study.run(&["status"]).status.code(), Some(0));
}

/// Two sessions, two pipelines, registered and never run.
fn registered_study() -> Study {
    let study = Study::new();
    study.write(
        "nfslurm.yaml",
        "version: 1\nsite: local\nexecutor: local\npaths:\n  dicom_root: dicom\ndiscovery:\n  mapping: { file: mapping.csv }\n  settle: 0s\npipelines:\n  bids:\n    command: echo converted\n  qsiprep:\n    level: subject\n    depends_on: [bids]\n    command: echo prep\n",
    );
    study.write(
        "mapping.csv",
        "ScanID,SubjectCode,SessionID\nS1,01,1\nS2,02,1\n",
    );
    study.session_folder("S1", 3);
    study.session_folder("S2", 3);
    study.ok(&["discover"]);
    study
}

#[test]
fn show_and_logs_of_a_registered_unit_that_never_ran_show_the_unit() {
    let study = registered_study();
    let out = study.ok(&["show", "bids/sub-01/ses-1"]);
    assert!(
        out.starts_with("bids/sub-01/ses-1\nstate: waiting (new)\nno run yet"),
        "{out}"
    );
    let v = study.json(&["show", "qsiprep/sub-01"]);
    assert_eq!(
        (v["state"].as_str(), v["runs"].as_array().unwrap().len()),
        (Some("waiting"), 0)
    );
    let out = study.run(&["logs", "bids/sub-01/ses-1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        "`bids/sub-01/ses-1` has not run yet (waiting, new): no log to show\n"
    );
    // An unknown unit is still an error.
    assert_eq!(
        study.run(&["show", "bids/sub-09/ses-1"]).status.code(),
        Some(1)
    );
}

#[test]
fn logs_of_a_run_whose_log_was_deleted_says_so() {
    let study = study_that_ran();
    fs::remove_file(
        study
            .path()
            .join(".nfslurm/logs/bids/sub-01_ses-1/attempt-1.out"),
    )
    .unwrap();
    for args in [
        &["logs", "bids/sub-01/ses-1"][..],
        &["logs", "run:1"],
        &["logs", "--follow", "run:1"],
    ] {
        let out = study.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains("error: the log of run 1 (`bids/sub-01/ses-1`, attempt 1, succeeded) was deleted or moved: `.nfslurm/logs/bids/sub-01_ses-1/attempt-1.out` does not exist"),
            "{args:?}: {err}"
        );
        assert!(
            err.contains(
                "hint: its state, exit code and times are in `nfslurm show bids/sub-01/ses-1`"
            ),
            "{err}"
        );
    }
    // A run that ended before it started never had a log.
    let db = rusqlite::Connection::open(study.path().join(".nfslurm/state.db")).unwrap();
    db.execute(
        "UPDATE runs SET started_at = NULL, state = 'cancelled' WHERE id = 1",
        [],
    )
    .unwrap();
    drop(db);
    let out = study.run(&["logs", "run:1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(
            "error: run 1 (`bids/sub-01/ses-1`, attempt 1) ended `cancelled` before it started: it has no log"
        ),
        "{}",
        stderr(&out)
    );
}

#[test]
fn sync_log_to_a_plain_file_name_works() {
    let study = registered_study();
    let out = study.run(&["sync", "--log", "plain.log"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let log = fs::read_to_string(study.path().join("plain.log")).unwrap();
    assert!(log.contains("4 runs submitted"), "{log}");
    study.ok(&["worker", "stop"]);
}

#[test]
fn cancel_all_stops_every_unit_and_retry_all_resumes_them() {
    let study = registered_study();
    let out = study.ok(&["cancel", "--all"]);
    assert_eq!(
        out,
        "cancelled bids/sub-01/ses-1 (was waiting)\ncancelled bids/sub-02/ses-1 (was waiting)\ncancelled qsiprep/sub-01 (was waiting)\ncancelled qsiprep/sub-02 (was waiting)\n"
    );
    // The next sync submits nothing.
    study.ok(&["sync"]);
    assert!(study.runs().is_empty());
    assert!(
        study.unit_states().values().all(|s| s == "cancelled"),
        "{:?}",
        study.unit_states()
    );
    let out = study.ok(&["retry", "--all"]);
    assert!(
        out.contains("retrying qsiprep/sub-02\n4 runs submitted"),
        "{out}"
    );
    study.ok(&["worker", "stop"]);
    assert_eq!(study.runs().len(), 4);
    // Without `--all` or another choice, retry still asks what to retry.
    let out = study.run(&["retry"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("hint: `nfslurm retry --all` retries every failed or cancelled unit")
    );
}

#[test]
fn a_mapping_sheet_with_a_duplicate_column_is_refused_and_changes_nothing() {
    let study = registered_study();
    let db = study.path().join(".nfslurm/state.db");
    let before = fs::read(&db).unwrap();
    study.write(
        "mapping.csv",
        "ScanID,SubjectCode,SessionID,SubjectCode\nS1,01,1,02\n",
    );
    let out = study.run(&["sync"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("has two columns named `SubjectCode` (columns 2 and 4 of line 1)")
            && err.contains("hint: rename or delete one of the two columns"),
        "{err}"
    );
    assert_eq!(fs::read(&db).unwrap(), before, "state.db is byte-identical");
}

/// The crontab line carries `$HOOK_URL`'s value; `cron install` and `cron
/// show` print the line without it. A fake `crontab` keeps the real one safe.
#[test]
fn a_webhook_url_carried_into_the_crontab_is_not_printed() {
    use std::os::unix::fs::PermissionsExt;
    let study = Study::new();
    study.write(
        "nfslurm.yaml",
        "version: 1\nsite: local\nexecutor: local\npaths:\n  dicom_root: dicom\nnotifications:\n  webhook: ${HOOK_URL}\n",
    );
    let bin = study.path().join("bin");
    fs::create_dir(&bin).unwrap();
    let fake = bin.join("crontab");
    fs::write(
        &fake,
        "#!/bin/sh\ncase \"$1\" in\n  -l) [ -f \"$FAKE_CRONTAB\" ] && exec cat \"$FAKE_CRONTAB\"; echo \"no crontab for $USER\" >&2; exit 1;;\n  -) exec cat > \"$FAKE_CRONTAB\";;\n  -r) rm -f \"$FAKE_CRONTAB\";;\nesac\n",
    )
    .unwrap();
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
    let tab = study.path().join("crontab.txt");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let url = "https://hookuser:PASSWORD9@hooks.example.org/services/SECRETPATH?token=SECRETQUERY";
    let run = |args: &[&str]| {
        let out = study
            .cmd()
            .args(args)
            .env("PATH", &path)
            .env("FAKE_CRONTAB", &tab)
            .env("HOOK_URL", url)
            .output()
            .unwrap();
        if args.contains(&"cron") {
            assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        }
        format!("{}\n{}", stdout(&out), stderr(&out))
    };
    let mut outputs = vec![
        run(&["cron", "install"]),
        run(&["cron", "show"]),
        run(&["--json", "cron", "show"]),
        run(&["--json", "cron", "install"]),
        run(&["doctor"]),
    ];
    // The crontab itself has the real value: cron needs it.
    assert!(fs::read_to_string(&tab).unwrap().contains(url));
    assert!(
        outputs[1].contains("HOOK_URL='https://hooks.example.org/…'")
            || outputs[1].contains("HOOK_URL=https://hooks.example.org/…"),
        "{}",
        outputs[1]
    );
    outputs.push(run(&["cron", "remove"]));
    for text in &outputs {
        for secret in ["hookuser", "PASSWORD9", "SECRETPATH", "SECRETQUERY"] {
            assert!(!text.contains(secret), "printed `{secret}`:\n{text}");
        }
    }
}

/// Every command has `--json`: cancel and retry too.
#[test]
fn cancel_and_retry_speak_json() {
    let study = registered_study();
    let v = study.json(&["cancel", "--all"]);
    let cancelled = v["cancelled"].as_array().unwrap();
    assert_eq!(cancelled.len(), 4, "{v}");
    assert!(cancelled.iter().all(|c| c["was"] == "waiting"), "{v}");
    assert_eq!(cancelled[0]["pipeline"], "bids");
    let v = study.json(&["retry", "--all"]);
    assert_eq!(v["retried"].as_array().unwrap().len(), 4, "{v}");
    assert_eq!(v["submitted"].as_array().unwrap().len(), 4, "{v}");
    study.ok(&["worker", "stop"]);
    let v = study.json(&["retry", "--all"]);
    assert_eq!(v, serde_json::json!({"retried": [], "submitted": []}));
}
