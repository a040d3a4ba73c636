//! What a scheduled `sync` would do (`--dry-run`), and pipelines switched off
//! with `enabled: false`.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use crate::common::{chain_config, chain_study};

/// Every file under `dir` with its bytes (for "nothing changed" checks).
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().display().to_string(),
                    fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

#[test]
fn sync_dry_run_says_what_it_would_do_and_changes_nothing() {
    let study = chain_study("local", 1, 1, "");
    study.ok(&["discover"]);
    study.ok(&["submit", "--all", "--wait"]);
    // The worker may still be on its way out (its pid file, its log): wait
    // for it, so that only the dry run could change the state folder.
    study.ok(&["worker", "stop"]);
    // A new session arrives.
    study.session_folder("SCAN012", 4);
    study.write(
        "mapping.csv",
        "ScanID,SubjectCode,SessionID\nSCAN011,01,1\nSCAN012,01,2\n",
    );
    let state = study.path().join(".nfslurm");
    let before = tree(&state);
    let mtime = fs::metadata(state.join("state.db"))
        .unwrap()
        .modified()
        .unwrap();

    let out = study.ok(&["sync", "--dry-run"]);
    assert!(out.starts_with("dry run: nothing is written"), "{out}");
    assert!(out.contains("session `SCAN012`"), "{out}");
    assert!(out.contains("would submit:"), "{out}");
    assert!(out.contains("bids/sub-01/ses-2"), "{out}");
    assert!(out.contains("qsiprep/sub-01"), "{out}");
    assert!(!out.contains("bids/sub-01/ses-1 "), "{out}");
    let json = study.json(&["sync", "--dry-run"]);
    assert_eq!(json["dry_run"], true);
    let would: Vec<String> = json["would_submit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}:{}", a["pipeline"].as_str().unwrap(), a["reason"]))
        .collect();
    assert_eq!(would.len(), 6, "{would:?}");
    assert!(would.contains(&"bids:\"new\"".to_string()), "{would:?}");
    assert!(
        would.contains(&"qsiprep:\"upstream changed\"".to_string()),
        "{would:?}"
    );

    // Nothing under the state directory changed, byte for byte.
    assert_eq!(tree(&state), before);
    assert_eq!(
        fs::metadata(state.join("state.db"))
            .unwrap()
            .modified()
            .unwrap(),
        mtime
    );
    assert!(study.unit_states().values().all(|s| s == "done"));

    // The real sync does what the dry run said.
    let out = study.ok(&["sync"]);
    assert!(out.contains("6 runs submitted"), "{out}");
}

#[test]
fn sync_dry_run_on_a_study_that_never_ran_creates_no_state() {
    let study = chain_study("local", 1, 1, "");
    let out = study.ok(&["sync", "--dry-run"]);
    assert!(out.contains("would submit:"), "{out}");
    assert!(out.contains("4 units"), "{out}");
    assert!(!study.path().join(".nfslurm").exists());
}

#[test]
fn a_disabled_pipeline_is_shown_disabled_and_never_submitted() {
    let study = chain_study("local", 1, 1, "");
    let text = chain_config("local", "").replace(
        "  qsiparc:\n    level: session\n",
        "  qsiparc:\n    level: session\n    enabled: false\n",
    );
    study.write("nfslurm.yaml", &text);
    study.ok(&["discover"]);
    let plan = study.ok(&["plan"]);
    assert!(plan.contains("3 units to run"), "{plan}");
    assert!(
        plan.contains("disabled: `qsiparc` (`enabled: false`): 1 unit never submitted"),
        "{plan}"
    );
    study.ok(&["submit", "--all", "--wait"]);
    // Even forced, it is never submitted.
    let out = study.ok(&["submit", "--pipeline", "qsiparc", "--force"]);
    assert!(!out.contains("qsiparc/"), "{out}");
    let states = study.unit_states();
    assert_eq!(states["qsiparc/sub-01/ses-1"], "disabled", "{states:?}");
    assert_eq!(states["qsirecon/sub-01/ses-1"], "done", "{states:?}");
    assert!(study.runs().iter().all(|r| r["pipeline"] != "qsiparc"));
    let status = study.json(&["status"]);
    assert_eq!(status["counts"]["qsiparc"]["disabled"], 1, "{status}");
    let text = study.ok(&["status"]);
    assert!(text.contains("disabled"), "{text}");
    let show = study.ok(&["show", "qsiparc/sub-01/ses-1"]);
    assert!(show.contains("enabled: false"), "{show}");
}

/// Against the real cluster: the dry run reconciles with `squeue`/`sacct`
/// (read-only) and says what the real sync then records.
#[test]
#[ignore = "needs the Slurm test cluster: scripts/test.sh runs it"]
fn sync_dry_run_reconciles_slurm_read_only_and_the_real_sync_agrees() {
    let Some(_cluster) = crate::slurm::cluster() else {
        return;
    };
    let study = crate::common::chain_study_named("slurm", "dry13x", 1, 1, "");
    study.ok(&["discover"]);
    study.ok(&["submit", "--all"]);
    let db = study.path().join(".nfslurm/state.db");
    let before = fs::read(&db).unwrap();
    let start = std::time::Instant::now();
    // Until Slurm has finished the first job, as the dry run sees it.
    let seen = loop {
        let v = study.json(&["sync", "--dry-run"]);
        assert_eq!(fs::read(&db).unwrap(), before, "the dry run wrote state.db");
        let done: Vec<String> = v["changes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["new_state"] == "succeeded")
            .map(|c| c["unit"].as_str().unwrap().to_string())
            .collect();
        if !done.is_empty() {
            break done;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(120),
            "no job finished: {v}"
        );
        std::thread::sleep(std::time::Duration::from_secs(2));
    };
    let out = study.ok(&["sync"]);
    for unit in &seen {
        assert!(out.contains(&format!("{unit}: ")), "{unit}: {out}");
    }
    assert!(out.contains("-> succeeded"), "{out}");
    let states = crate::slurm::sync_until_settled(&study, std::time::Duration::from_secs(300));
    assert!(states.values().all(|s| s == "done"), "{states:?}");
}
