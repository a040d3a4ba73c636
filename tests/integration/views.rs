//! The views people read: a subject (`show sub-01`), the study's history
//! (`log`), and what `submit` says at its end.

use crate::common::chain_study;

fn narrow(text: &str) {
    for line in text.lines() {
        assert!(line.chars().count() <= 80, "wider than 80: {line}");
    }
}

#[test]
fn show_subject_lists_its_sessions_units_states_and_last_change() {
    let study = chain_study("local", 2, 2, "");
    study.ok(&["discover"]);
    study.ok(&["submit", "--all", "--wait"]);
    let out = study.ok(&["show", "sub-01"]);
    narrow(&out);
    assert!(
        out.starts_with("sub-01\n2 sessions, 2 valid; last change "),
        "{out}"
    );
    assert!(out.contains("SCAN011") && out.contains("SCAN012"), "{out}");
    assert!(!out.contains("sub-02"), "{out}");
    for unit in [
        "bids/sub-01/ses-1",
        "bids/sub-01/ses-2",
        "qsiprep/sub-01",
        "qsirecon/sub-01/ses-2",
        "qsiparc/sub-01/ses-1",
    ] {
        let line = out.lines().find(|l| l.trim_start().starts_with(unit));
        assert!(line.is_some_and(|l| l.contains("done")), "{unit}: {out}");
    }
    let json = study.json(&["show", "sub-01"]);
    assert_eq!(json["subject"], "01");
    assert_eq!(json["sessions"].as_array().unwrap().len(), 2);
    let units = json["units"].as_array().unwrap();
    assert_eq!(units.len(), 7, "{json}");
    assert!(units.iter().all(|u| u["state"] == "done"));
    assert_eq!(units[0]["last_change"]["new_state"], "succeeded", "{json}");
    assert!(json["last_change_at"].as_str().unwrap().ends_with('Z'));
    // An unknown subject names the known ones.
    let out = study.run(&["show", "sub-09"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no subject `sub-09`"), "{err}");
    assert!(err.contains("subjects: sub-01, sub-02"), "{err}");
}

#[test]
fn log_lists_every_state_change_with_its_cause_filtered_by_selection_and_time() {
    let study = chain_study("local", 2, 1, "");
    study.ok(&["discover"]);
    study.ok(&["submit", "--all", "--wait"]);
    let all = study.json(&["log"]);
    let changes = all["changes"].as_array().unwrap();
    // Sessions registered, then each run: pending -> running -> succeeded.
    assert!(
        changes
            .iter()
            .any(|c| c["scan_id"] == "SCAN011" && c["reason"] == "discovered"),
        "{all}"
    );
    let bids: Vec<_> = changes
        .iter()
        .filter(|c| c["unit"] == "bids/sub-01/ses-1")
        .map(|c| c["new_state"].as_str().unwrap())
        .collect();
    assert_eq!(bids.last(), Some(&"succeeded"), "{bids:?}");
    assert!(bids.contains(&"running"), "{bids:?}");
    let ids: Vec<i64> = changes.iter().map(|c| c["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "oldest first");

    let sel = study.json(&["log", "--participant", "02", "--pipeline", "qsiprep"]);
    let sel = sel["changes"].as_array().unwrap();
    assert!(!sel.is_empty());
    assert!(sel.iter().all(|c| c["unit"] == "qsiprep/sub-02"), "{sel:?}");

    let last = study.json(&["log", "-n", "2"]);
    assert_eq!(last["changes"].as_array().unwrap().len(), 2);
    assert_eq!(
        last["changes"][1]["id"],
        changes.last().unwrap()["id"],
        "the last two"
    );
    // Nothing in the future; everything in the last hour.
    let none = study.json(&["log", "--since", "2999-01-01"]);
    assert!(none["changes"].as_array().unwrap().is_empty());
    let hour = study.json(&["log", "--since", "1h"]);
    assert_eq!(hour["changes"].as_array().unwrap().len(), changes.len());
    let text = study.ok(&["log", "--participant", "01"]);
    assert!(
        text.contains("bids/sub-01/ses-1: running -> succeeded"),
        "{text}"
    );
    assert!(text.contains("session `SCAN011`: - -> valid"), "{text}");
    assert!(!text.contains("sub-02"), "{text}");
    narrow(&text);
    let out = study.run(&["log", "--since", "yesterday"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("hint: `--since 1d`"));
}

#[test]
fn submit_on_a_study_with_nothing_registered_says_to_discover_or_sync() {
    let study = chain_study("local", 1, 1, "");
    let out = study.run(&["submit", "--all"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no session is registered"), "{err}");
    assert!(err.contains("hint: run `nfslurm discover`"), "{err}");
    assert!(err.contains("`nfslurm sync`"), "{err}");
}

#[test]
fn submit_ends_with_the_queue_and_a_forced_upstream_says_what_it_made_stale() {
    let study = chain_study("local", 1, 2, "");
    study.ok(&["discover"]);
    study.ok(&["submit", "--all", "--wait"]);
    let out = study.ok(&["submit", "--pipeline", "bids", "--session", "1", "--force"]);
    narrow(&out);
    assert!(out.contains("bids/sub-01/ses-1  forced"), "{out}");
    // The subject's qsiprep takes every session's bids, and both sessions'
    // recon and parc take that qsiprep.
    assert!(out.contains("made stale downstream: 5 units"), "{out}");
    for unit in [
        "qsiprep/sub-01",
        "qsirecon/sub-01/ses-1",
        "qsirecon/sub-01/ses-2",
        "qsiparc/sub-01/ses-1",
        "qsiparc/sub-01/ses-2",
    ] {
        assert!(out.contains(&format!("\n  {unit}\n")), "{unit}: {out}");
    }
    assert!(!out.contains("\n  bids/sub-01/ses-2\n"), "{out}");
    assert!(out.contains("queue: "), "{out}");
    assert!(out.contains("follow: `nfslurm status --watch`"), "{out}");
    study.ok(&["submit", "--all", "--wait"]);
    let json = study.json(&["submit", "--pipeline", "bids", "--session", "2", "--force"]);
    assert_eq!(json["made_stale"].as_array().unwrap().len(), 5, "{json}");
    let queue = &json["queue"];
    let open = queue["pending"].as_u64().unwrap() + queue["running"].as_u64().unwrap();
    assert!(open <= 1, "{json}");
}

#[test]
fn report_of_a_study_that_never_ran_is_written_without_creating_its_state() {
    let study = chain_study("local", 1, 1, "");
    let json = study.json(&["report", "-o", "report.html"]);
    let path = study.path().join("report.html");
    assert_eq!(
        json["report"].as_str().map(std::path::PathBuf::from),
        Some(path.canonicalize().unwrap()),
        "{json}"
    );
    let page = std::fs::read_to_string(&path).unwrap();
    assert!(page.starts_with("<!doctype html>"), "{page}");
    assert!(page.contains(r#"<script type="application/json" id="nfslurm-data">"#));
    assert!(page.contains(r#""units":[]"#) && page.contains(r#""jobs":[]"#));
    // A report only reads: it leaves no state and no temporary file behind.
    assert!(!study.path().join(".nfslurm").join("state.db").exists());
    let names: Vec<String> = std::fs::read_dir(study.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("report"))
        .collect();
    assert_eq!(names, ["report.html"]);
    // Written again, it keeps the permissions it was given.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    study.ok(&["report", "-o", "report.html"]);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o644
    );

    // A folder that does not exist: the error names the file and the fix.
    let out = study.run(&["report", "-o", "nowhere/report.html"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot write the report `nowhere/report.html`"),
        "{err}"
    );
    assert!(err.contains("hint: check that its folder exists"), "{err}");
}

/// The three output modes read the same for every command: `-q` keeps a
/// view's data and silences an action; `--json` is one document.
#[test]
fn quiet_silences_actions_and_keeps_views() {
    let study = crate::common::chain_study("local", 1, 1, "");
    let quiet = |args: &[&str]| {
        let mut all = vec!["-q"];
        all.extend_from_slice(args);
        study.ok(&all)
    };
    assert_eq!(quiet(&["discover"]), "");
    assert_eq!(quiet(&["sync"]), "", "sync -q prints nothing but errors");
    // Wait for the local worker, then every action is quiet.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while study.unit_states().values().any(|s| s != "done") {
        assert!(std::time::Instant::now() < deadline);
        study.ok(&["sync"]);
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert_eq!(quiet(&["sync"]), "");
    assert_eq!(quiet(&["retry", "--all"]), "");
    assert_eq!(quiet(&["cancel", "--all"]), "");
    assert_eq!(quiet(&["retry", "--all"]), "");
    let report = study.path().join("r.html");
    assert_eq!(quiet(&["report", "-o", report.to_str().unwrap()]), "");
    assert_eq!(quiet(&["clean", "--dry-run"]), "");
    // Views still show their data.
    assert!(quiet(&["status"]).contains("bids"));
    assert!(quiet(&["status", "runs"]).contains("bids/sub-01/ses-1"));
    assert!(quiet(&["show", "bids/sub-01/ses-1"]).contains("bids/sub-01/ses-1"));
    // --json wins over -q: one document.
    let out = study.ok(&["-q", "--json", "sync"]);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(doc["changes"].is_array(), "{out}");
}
