//! End to end on the local executor.

use std::fs;

use crate::common::{Study, chain_study};

/// `plan --json` actions as sorted `pipeline/subject/session:reason` strings.
fn plan_actions(plan: &serde_json::Value) -> Vec<String> {
    let mut actions: Vec<String> = plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            format!(
                "{}/{}/{}:{}",
                a["pipeline"].as_str().unwrap(),
                a["subject"].as_str().unwrap(),
                a["session"].as_str().unwrap_or("-"),
                a["reason"].as_str().unwrap()
            )
        })
        .collect();
    actions.sort();
    actions
}

fn done_count(study: &Study) -> usize {
    study
        .unit_states()
        .values()
        .filter(|s| *s == "done")
        .count()
}

#[test]
fn local_study_runs_then_a_new_session_reruns_only_its_subject_chain() {
    let study = chain_study("local", 2, 1, "");
    study.ok(&["discover"]);
    study.ok(&["submit", "--all", "--wait"]);
    let states = study.unit_states();
    assert_eq!(states.len(), 2 + 2 + 2 + 2);
    assert!(states.values().all(|s| s == "done"), "{states:?}");
    let before = study.runs().len();
    assert_eq!(before, 8);

    // A no-op sync submits nothing.
    let out = study.ok(&["sync"]);
    assert!(!out.contains("submitted"), "{out}");
    assert_eq!(study.runs().len(), before);

    // Subject 01 gets a second session.
    study.session_folder("SCAN012", 4);
    let mut mapping = fs::read_to_string(study.path().join("mapping.csv")).unwrap();
    mapping.push_str("SCAN012,01,2\n");
    study.write("mapping.csv", &mapping);
    let plan = study.json(&["plan"]);
    let actions = plan_actions(&plan);
    // The plan before discovery knows nothing of the new session.
    assert!(actions.is_empty(), "{actions:?}");
    study.ok(&["discover"]);
    let plan = study.json(&["plan"]);
    let actions = plan_actions(&plan);
    assert_eq!(
        actions,
        vec![
            "bids/01/2:new",
            "qsiparc/01/1:upstream changed",
            "qsiparc/01/2:new",
            "qsiprep/01/-:upstream changed",
            "qsirecon/01/1:upstream changed",
            "qsirecon/01/2:new",
        ]
    );
    study.ok(&["submit", "--all", "--wait"]);
    assert_eq!(study.runs().len(), before + 6);
    assert_eq!(done_count(&study), 11);
    // Subject 02 ran exactly once per unit.
    let runs = study.runs();
    assert_eq!(runs.iter().filter(|r| r["subject"] == "02").count(), 4);
    // QSIPrep of subject 01 read both sessions on its second run.
    let q = fs::read_to_string(study.path().join("derivatives/qsiprep/sub-01/runs.txt")).unwrap();
    assert_eq!(q.lines().count(), 2);
}

#[test]
fn failing_unit_blocks_its_downstream_and_others_finish() {
    let study = chain_study(
        "local",
        2,
        1,
        "if [ {{ subject.label }} = 02 ]; then echo 'no DICOMs' >&2; exit 3; fi",
    );
    study.ok(&["discover"]);
    // --wait follows the retry too (initial_delay 1s): both attempts fail.
    let out = study.run(&["submit", "--all", "--wait"]);
    assert_eq!(out.status.code(), Some(3), "runs failed: exit 3");
    let states = study.unit_states();
    assert_eq!(states["qsiparc/sub-01/ses-1"], "done");
    assert_eq!(states["bids/sub-02/ses-1"], "failed");
    assert_eq!(states["qsiprep/sub-02"], "blocked");
    let runs = study.runs();
    let bids2: Vec<_> = runs
        .iter()
        .filter(|r| r["pipeline"] == "bids" && r["subject"] == "02")
        .collect();
    assert_eq!(bids2.len(), 2, "two attempts");
    let q2: Vec<_> = runs
        .iter()
        .filter(|r| r["pipeline"] == "qsiprep" && r["subject"] == "02")
        .collect();
    assert!(q2.iter().all(|r| r["state"] == "upstream_failed"), "{q2:?}");
    let failed = study.json(&["status", "--state", "failed"]);
    assert_eq!(failed["units"].as_array().unwrap().len(), 1);
    let log = study.ok(&["logs", "bids/sub-02/ses-1"]);
    assert!(log.contains("no DICOMs"), "{log}");
}

#[test]
fn unsafe_label_in_mapping_is_rejected_and_never_reaches_a_script() {
    let study = chain_study("local", 1, 1, "");
    study.session_folder("EVIL1", 4);
    let mut mapping = fs::read_to_string(study.path().join("mapping.csv")).unwrap();
    mapping.push_str("EVIL1,01; rm -rf ~,1\n");
    study.write("mapping.csv", &mapping);
    let out = study.ok(&["discover"]);
    assert!(out.contains("mapping.csv:3"), "{out}");
    assert!(out.contains("not a valid BIDS label"), "{out}");
    study.ok(&["submit", "--all", "--wait"]);
    for entry in walk(&study.path().join(".nfslurm/scripts")) {
        let text = fs::read_to_string(entry).unwrap();
        assert!(!text.contains("rm -rf"), "{text}");
    }
    assert_eq!(study.runs().len(), 4);
}

#[test]
fn broken_config_is_one_clear_error_and_changes_nothing() {
    let study = chain_study("local", 1, 1, "");
    study.ok(&["discover"]);
    let db = fs::read(study.path().join(".nfslurm/state.db")).unwrap();
    let good = fs::read_to_string(study.config_path()).unwrap();
    study.write(
        "nfslurm.yaml",
        &good.replace("depends_on: [bids]", "depends_on: [bidz]"),
    );
    let out = study.run(&["sync"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nfslurm.yaml"), "{err}");
    assert!(err.contains("bidz"), "{err}");
    assert_eq!(err.matches("error:").count(), 1, "{err}");
    assert_eq!(
        fs::read(study.path().join(".nfslurm/state.db")).unwrap(),
        db
    );
    study.write(
        "nfslurm.yaml",
        &good.replace("level: session\n    command", "level: session\n    comand"),
    );
    let out = study.run(&["plan"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("comand"), "{err}");
}

#[test]
fn demo_runs_every_valid_unit_to_done() {
    let study = Study::new();
    let out = study.ok(&["demo", "demo"]);
    assert!(out.contains("qsiparc"), "{out}");
    let mut cmd = study.cmd();
    let v: serde_json::Value = serde_json::from_slice(
        &cmd.args(["--json", "--config", "demo/nfslurm.yaml", "status"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let units = v["units"].as_array().unwrap();
    let valid: Vec<_> = units.iter().filter(|u| u["state"] != "invalid").collect();
    assert_eq!(valid.len(), 5 + 3 + 5 + 5);
    assert!(valid.iter().all(|u| u["state"] == "done"), "{v}");
}

#[test]
fn selection_flags_accept_bids_prefixes_and_reject_unknown_pipelines() {
    let study = chain_study("local", 2, 1, "");
    study.ok(&["discover"]);
    let a = study.json(&["plan", "--pipeline", "qsiprep", "--participant", "sub-01"]);
    let b = study.json(&["plan", "--pipeline", "qsiprep", "--participant", "01"]);
    assert_eq!(a, b);
    assert_eq!(a["actions"].as_array().unwrap().len(), 2);
    let out = study.run(&["plan", "--pipeline", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such pipeline"));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The reference config of docs/config-reference.md, key for key, with `site: local` and commands that
/// print what the real tools would be called with.
const SPEC_CONFIG: &str = r#"
version: 1
site: local
executor: local

paths:
  dicom_root: $STUDY/incoming/dicom
  bids_root: bids
  derivatives: derivatives
  work_dir: work
  state_dir: .nfslurm

discovery:
  pattern: '^(?P<scan_id>[A-Za-z0-9_]+)$'
  mapping:
    file: mapping.csv
    scan_id_column: ScanID
    subject_column: SubjectCode
    session_column: SessionID
  validation:
    min_files: 10
    required_series:
      - { name: dwi, match: '(?i)dmri|dwi', min_files: 6 }
      - { name: t1w, match: '(?i)t1|mprage' }
  settle: 30m

pipelines:
  bids:
    level: session
    container: /containers/heudiconv_1.3.2.sif
    command: >
      echo heudiconv --files {{ session.dicom_dir }} -s {{ subject.label }}
      -ss {{ session.label }} -f /heuristics/heuristic.py -c dcm2niix -b
      -o {{ paths.bids_root }} --overwrite
    binds: ["/data/heuristics:/heuristics:ro"]
    resources: { cpus: 1, mem: 1G, time: "02:00:00" }
  qsiprep:
    level: subject
    depends_on: [bids]
    container: /containers/qsiprep_1.0.1.sif
    command: >
      echo qsiprep {{ paths.bids_root }} {{ paths.derivatives }}/qsiprep participant
      --participant-label {{ subject.label }} --nthreads {{ resources.cpus }}
      --mem {{ resources.mem_mb }} -w {{ work_dir }}
    resources: { cpus: 1, mem: 2G, time: "24:00:00" }
    max_concurrent: 4
    partition: bigmem
  qsirecon:
    level: session
    depends_on: [qsiprep]
    command: echo qsirecon {{ subject.label }} {{ session.label }}
  qsiparc:
    level: session
    depends_on: [qsirecon]
    command: echo qsiparc {{ subject.label }} {{ session.label }}

retry:
  max_attempts: 3
  initial_delay: 5m
  max_delay: 1h
  factor: 2
  on_oom:     { mem_factor: 1.5, max_mem: 256G }
  on_timeout: { time_factor: 1.5, max_time: "72:00:00" }
  infra_max: 5
"#;

#[test]
fn a_study_written_from_the_spec_runs_on_the_local_executor() {
    let study = Study::new();
    study.write("nfslurm.yaml", SPEC_CONFIG);
    study.write(
        "mapping.csv",
        "ScanID,SubjectCode,SessionID\nP001A,sub-001,ses-A\nP001B,001,B\nP002A,002,A\n",
    );
    for scan in ["P001A", "P001B", "P002A"] {
        for (series, n) in [("DMRI_dir64", 8), ("T1_MPRAGE", 4)] {
            let dir = study.path().join("incoming/dicom").join(scan).join(series);
            fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                fs::write(dir.join(format!("{i}.dcm")), "DICM").unwrap();
            }
        }
    }
    // Folders settle for 30 minutes: backdate them.
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for path in walk(&study.path().join("incoming")) {
        let f = fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(old).unwrap();
    }
    for dir in [
        "incoming/dicom/P001A",
        "incoming/dicom/P001B",
        "incoming/dicom/P002A",
    ] {
        for entry in fs::read_dir(study.path().join(dir)).unwrap() {
            let e = entry.unwrap();
            fs::File::open(e.path()).unwrap().set_modified(old).unwrap();
        }
        fs::File::open(study.path().join(dir))
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    let out = study
        .cmd()
        .env("STUDY", study.path())
        .args(["submit", "--all", "--wait"])
        .output()
        .unwrap();
    // Nothing discovered yet: submit does not discover, sync does, and
    // submit says so instead of a silent "nothing to submit" (issue 13).
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no session is registered"), "{err}");
    assert!(
        err.contains("`nfslurm discover`") && err.contains("`nfslurm sync`"),
        "{err}"
    );
    let out = study
        .cmd()
        .env("STUDY", study.path())
        .args(["sync"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = study
        .cmd()
        .env("STUDY", study.path())
        .args(["submit", "--all", "--wait"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(
        &study
            .cmd()
            .env("STUDY", study.path())
            .args(["--json", "status"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let units = v["units"].as_array().unwrap();
    assert_eq!(units.len(), 3 + 2 + 3 + 3);
    assert!(units.iter().all(|u| u["state"] == "done"), "{v}");
    let log = fs::read_to_string(
        study
            .path()
            .join(".nfslurm/logs/qsiprep/sub-001/attempt-1.out"),
    )
    .unwrap();
    assert!(
        log.contains("--participant-label 001 --nthreads 1 --mem 2048"),
        "{log}"
    );
    let script = fs::read_to_string(
        study
            .path()
            .join(".nfslurm/scripts/qsiprep/sub-001/attempt-1.sbatch"),
    )
    .unwrap();
    assert!(script.contains("#SBATCH --partition=bigmem"), "{script}");
}

#[test]
fn submit_hands_runs_to_the_worker_and_stop_lets_running_jobs_finish() {
    let study = chain_study("local", 1, 1, "sleep 2");
    study.ok(&["discover"]);
    // Without --wait: returns with the runs queued or running, the worker on it.
    study.ok(&["submit", "--all"]);
    let states = study.unit_states();
    assert!(
        matches!(states["bids/sub-01/ses-1"].as_str(), "queued" | "running"),
        "{states:?}"
    );
    let status = study.json(&["worker", "status"]);
    assert_eq!(status["running"], true, "{status}");
    let start = std::time::Instant::now();
    while study.unit_states()["bids/sub-01/ses-1"] != "running" {
        assert!(start.elapsed() < std::time::Duration::from_secs(10));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(status["pid"].is_number());
    // Stop: the running job finishes, nothing new starts, nothing is lost.
    let out = study.ok(&["worker", "stop"]);
    assert!(out.contains("stopped"), "{out}");
    let runs = study.runs();
    let bids = runs.iter().find(|r| r["pipeline"] == "bids").unwrap();
    assert_eq!(bids["state"], "succeeded", "{runs:?}");
    assert!(
        runs.iter()
            .filter(|r| r["pipeline"] != "bids")
            .all(|r| r["state"] == "pending")
    );
    assert_eq!(study.json(&["worker", "status"])["running"], false);
    // The next sync starts a worker again and the chain completes.
    study.ok(&["sync"]);
    study.ok(&["submit", "--all", "--wait"]);
    assert!(study.unit_states().values().all(|s| s == "done"));
}

/// A typo in a command was retried with the full backoff, silently, and the
/// log line saying why was never shown.
#[test]
fn a_command_that_cannot_run_fails_at_once_and_its_log_is_shown() {
    let study = chain_study("local", 1, 1, "dcm2niixx --version");
    study.ok(&["discover"]);
    let out = study.run(&["submit", "--all", "--wait"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    // One attempt, not max_attempts: retrying cannot fix a missing command.
    let runs = study.runs();
    let bids: Vec<_> = runs.iter().filter(|r| r["pipeline"] == "bids").collect();
    assert_eq!(bids.len(), 1, "{runs:?}");
    assert_eq!(bids[0]["exit_code"], 127);
    let reason = bids[0]["reason"].as_str().unwrap();
    assert!(reason.contains("the command cannot run"), "{reason}");
    let states = study.unit_states();
    assert_eq!(states["bids/sub-01/ses-1"], "failed");
    assert_eq!(states["qsiprep/sub-01"], "blocked");
    // The --wait summary quotes the log; off a terminal, a line per change.
    assert!(stdout.contains("| "), "{stdout}");
    assert!(stdout.contains("dcm2niixx: command not found"), "{stdout}");
    assert!(
        stderr
            .lines()
            .filter(|l| l.starts_with("bids/sub-01/ses-1: "))
            .count()
            >= 2
            && stderr.contains("bids/sub-01/ses-1: failed (job 1): the command cannot run"),
        "{stderr}"
    );
    // show says it too, as text and JSON.
    let show = study.ok(&["show", "bids/sub-01/ses-1"]);
    assert!(show.contains("last lines of attempt 1's log"), "{show}");
    assert!(show.contains("dcm2niixx: command not found"), "{show}");
    let json = study.json(&["show", "bids/sub-01/ses-1"]);
    let tail = json["log_tail"].as_array().unwrap();
    assert!(
        tail.iter()
            .any(|l| l.as_str().unwrap().contains("command not found")),
        "{json}"
    );
    // `retry` resets the budget: it runs once more (and fails at once again).
    study.ok(&["retry", "--failed"]);
    let out = study.run(&["submit", "--all", "--wait"]);
    assert_eq!(out.status.code(), Some(3));
    let runs = study.runs();
    assert_eq!(runs.iter().filter(|r| r["pipeline"] == "bids").count(), 2);
}

#[test]
fn a_missing_container_image_fails_the_unit_at_once() {
    let study = crate::common::Study::new();
    study.write(
        "site.yaml",
        "name: lab\nscheduler: { partition: null }\ncontainer: { runtime: apptainer, options: [], binds: [] }\n",
    );
    study.write(
        "nfslurm.yaml",
        r#"version: 1
site: site.yaml
executor: local
paths: { dicom_root: dicom }
discovery:
  mapping: { file: mapping.csv }
  validation: { min_files: 1 }
  settle: 0s
pipelines:
  bids:
    level: session
    container: /nonexistent/heudiconv.sif
    command: heudiconv --version
"#,
    );
    study.session_folder("S1", 1);
    study.write("mapping.csv", "ScanID,SubjectCode,SessionID\nS1,01,1\n");
    study.ok(&["discover"]);
    let out = study.run(&["submit", "--all", "--wait"]);
    assert_eq!(out.status.code(), Some(3));
    let runs = study.runs();
    assert_eq!(runs.len(), 1, "not retried: {runs:?}");
    assert_eq!(runs[0]["exit_code"], 126);
    let show = study.ok(&["show", "bids/sub-01/ses-1"]);
    assert!(
        show.contains("container image /nonexistent/heudiconv.sif not found"),
        "{show}"
    );
}

/// `submit --force --wait` re-planned with the same forced request each time
/// the followed runs ended, and submitted the forced units without end.
#[test]
fn a_forced_request_is_consumed_once_and_wait_ends() {
    let study = chain_study("local", 2, 1, "");
    study.ok(&["discover"]);
    study.ok(&["submit", "--all", "--wait"]);
    assert_eq!(study.runs().len(), 8);
    let out = study
        .cmd()
        .args(["submit", "--force", "--pipeline", "qsiparc", "--wait"])
        .timeout(std::time::Duration::from_secs(60))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let runs = study.runs();
    assert_eq!(runs.len(), 10, "one forced run per qsiparc unit: {runs:?}");
    assert_eq!(
        runs.iter()
            .filter(|r| r["reason"] == "forced" || r["plan_reason"] == "forced")
            .count(),
        2,
        "{runs:?}"
    );
}
