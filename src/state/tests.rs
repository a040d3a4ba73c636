use super::runs::{ids_from_json, ids_to_json};
use super::*;
use crate::model::RunState;

fn label(s: &str) -> Label {
    Label::new(s).unwrap()
}

fn new_run(key: &UnitKey, token: &str) -> NewRun {
    NewRun {
        mem_mb: 1024,
        time_limit_s: 3600,
        ..NewRun::example(key, token)
    }
}

#[test]
fn state_dir_is_private_and_schema_migrates_once() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("st");
    let store = Store::open(&state).unwrap();
    let mode = fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    let version = store.schema_version().unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let journal = store.journal_mode().unwrap();
    assert_eq!(journal, "delete");
    drop(store);
    Store::open(&state).unwrap();
}

#[test]
fn runs_are_created_with_batch_dependencies_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let a = UnitKey::new("bids", &label("01"), Some(&label("1")));
    let b = UnitKey::new("qsiprep", &label("01"), None);
    let mut second = new_run(&b, "t2");
    second.depends_on = vec![-1];
    second.inputs = vec![-1];
    let ids = store
        .create_runs(&[new_run(&a, "t1"), second], 100)
        .unwrap();
    let runs = store.runs_by_ids(&ids).unwrap();
    assert_eq!(runs[1].depends_on, vec![ids[0]]);
    assert_eq!(runs[0].attempt, 1);
    store
        .apply(
            &[RunUpdate {
                run_id: ids[0],
                state: Some(RunState::Succeeded),
                exit_code: Some(0),
                ..Default::default()
            }],
            &[],
            101,
        )
        .unwrap();
    let unit = store.unit_id(&a).unwrap().unwrap();
    let audit = store.audit_of_unit(unit).unwrap();
    assert_eq!(audit.len(), 2);
    assert_eq!(audit[1].old_state.as_deref(), Some("submitting"));
    assert_eq!(audit[1].new_state, "succeeded");
    let snap = store.snapshot().unwrap();
    assert_eq!(snap.last_run(&a).unwrap().state, RunState::Succeeded);
    // A second run of the same unit is attempt 2.
    let ids2 = store.create_runs(&[new_run(&a, "t3")], 102).unwrap();
    assert_eq!(store.run(ids2[0]).unwrap().attempt, 2);
    // Its provenance is recorded with the intent: withdrawn with it (a
    // refused or never-sent sbatch failed on the foreign key before).
    store
        .save_provenance(&[(ids2[0], "{}".to_string())])
        .unwrap();
    store.withdraw_runs(&ids2, "test", 103).unwrap();
    assert_eq!(store.provenance_of(ids2[0]).unwrap(), None);
    let snap = store.snapshot().unwrap();
    assert_eq!(snap.last_run(&a).unwrap().id, ids[0]);
}

/// Issue 9: a folder named like a command, registered by an older
/// nfslurm, is never rendered into a script.
#[test]
fn a_session_registered_with_an_unsafe_folder_name_reads_as_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let row = |scan: &str, sub: &str| SessionRow {
        scan_id: scan.into(),
        subject: label(sub),
        session: label("1"),
        dicom_dir: format!("/d/{scan}").into(),
        valid: true,
        problem: None,
        n_files: 9,
    };
    store
        .register_sessions(&[row("X$(touch PWNED)", "01"), row("B", "02")], 1)
        .unwrap();
    let sessions = store.snapshot().unwrap().sessions;
    let bad = sessions
        .iter()
        .find(|s| s.subject.as_str() == "01")
        .unwrap();
    assert!(!bad.valid);
    assert!(
        bad.problem
            .as_deref()
            .unwrap()
            .starts_with("the folder's name contains `$` `(` `)`, which a shell could run as code"),
        "{:?}",
        bad.problem
    );
    assert!(
        sessions
            .iter()
            .find(|s| s.subject.as_str() == "02")
            .unwrap()
            .valid
    );
}

#[test]
fn a_session_re_maps_only_while_nothing_ran_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let row = |scan: &str, sub: &str| SessionRow {
        scan_id: scan.into(),
        subject: label(sub),
        session: label("1"),
        dicom_dir: format!("/d/{scan}").into(),
        valid: true,
        problem: None,
        n_files: 9,
    };
    store
        .register_sessions(&[row("A", "01"), row("B", "02")], 1)
        .unwrap();
    // A never ran: the new labels are taken.
    let c = store.register_sessions(&[row("A", "07")], 2).unwrap();
    assert_eq!(c.remapped.len(), 1);
    assert_eq!(
        store
            .sessions()
            .unwrap()
            .iter()
            .find(|s| s.scan_id == "A")
            .unwrap()
            .subject,
        label("07")
    );
    // B ran: it keeps its labels and the conflict is reported.
    let key = UnitKey::new("bids", &label("02"), Some(&label("1")));
    store.create_runs(&[new_run(&key, "tb")], 3).unwrap();
    let c = store.register_sessions(&[row("B", "08")], 4).unwrap();
    assert_eq!(c.conflicts.len(), 1);
    assert!(c.remapped.is_empty());
    assert_eq!(
        store
            .sessions()
            .unwrap()
            .iter()
            .find(|s| s.scan_id == "B")
            .unwrap()
            .subject,
        label("02")
    );
}

#[test]
fn lock_is_exclusive() {
    let dir = tempfile::tempdir().unwrap();
    let first = try_lock(dir.path(), "plan.lock").unwrap();
    assert!(first.is_some());
    assert!(try_lock(dir.path(), "plan.lock").unwrap().is_none());
    drop(first);
    assert!(try_lock(dir.path(), "plan.lock").unwrap().is_some());
}

#[test]
fn sessions_register_once_and_track_validity() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let mut s = SessionRow {
        scan_id: "SCAN1".into(),
        subject: label("01"),
        session: label("1"),
        dicom_dir: "/d/SCAN1".into(),
        valid: false,
        problem: Some("3 files".into()),
        n_files: 3,
    };
    let c = store
        .register_sessions(std::slice::from_ref(&s), 1)
        .unwrap();
    assert_eq!(c.new.len(), 1);
    let c = store
        .register_sessions(std::slice::from_ref(&s), 2)
        .unwrap();
    assert!(c.new.is_empty() && c.changed.is_empty());
    s.valid = true;
    s.problem = None;
    let c = store.register_sessions(&[s], 3).unwrap();
    assert_eq!(c.changed.len(), 1);
    assert!(store.sessions().unwrap()[0].valid);
}

#[test]
fn run_id_lists_read_fast_and_fall_back_to_json() {
    assert_eq!(ids_from_json("[]"), Vec::<i64>::new());
    assert_eq!(ids_from_json("[7]"), vec![7]);
    assert_eq!(ids_from_json("[1,22,-3]"), vec![1, 22, -3]);
    assert_eq!(ids_from_json(&ids_to_json(&[4, 5])), vec![4, 5]);
    assert_eq!(ids_from_json("[ 1, 2 ]"), vec![1, 2]);
    assert_eq!(ids_from_json("not json"), Vec::<i64>::new());
}

#[test]
fn snapshot_holds_the_last_success_when_a_later_run_failed() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let a = UnitKey::new("bids", &label("01"), Some(&label("1")));
    let b = UnitKey::new("qsiprep", &label("01"), None);
    let ids = store
        .create_runs(&[new_run(&a, "t1"), new_run(&b, "t2")], 100)
        .unwrap();
    let done = |id| RunUpdate {
        run_id: id,
        state: Some(RunState::Succeeded),
        ..Default::default()
    };
    let unit_a = store.unit_id(&a).unwrap().unwrap();
    store
        .apply(
            &[done(ids[0])],
            &[UnitUpdate {
                unit_id: unit_a,
                success_run_id: Some(ids[0]),
                ..Default::default()
            }],
            101,
        )
        .unwrap();
    let again = store.create_runs(&[new_run(&a, "t3")], 102).unwrap();
    let snap = store.snapshot().unwrap();
    assert_eq!(snap.last_run(&a).unwrap().id, again[0]);
    assert_eq!(store.run(snap.last_run(&a).unwrap().id).unwrap().key, a);
    assert_eq!(snap.success_run(&a).unwrap().id, ids[0]);
    assert_eq!(store.run(snap.success_run(&a).unwrap().id).unwrap().key, a);
    assert_eq!(store.run(snap.last_run(&b).unwrap().id).unwrap().key, b);
    assert!(snap.success_run(&b).is_none());
    assert_eq!(snap.runs.len(), 3);
    assert_eq!(snap.units.len(), 2);
    // The snapshot's runs are the rows `run` reads, cut to what it keeps.
    for run in snap.runs.values() {
        assert_eq!(
            &crate::state::SnapshotRun::from(store.run(run.id).unwrap()),
            run
        );
    }
}

#[test]
fn batched_reads_agree_with_one_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let a = UnitKey::new("bids", &label("01"), Some(&label("1")));
    let b = UnitKey::new("qsiprep", &label("01"), None);
    let never = UnitKey::new("qsiparc", &label("02"), Some(&label("1")));
    store
        .create_runs(&[new_run(&a, "t1"), new_run(&b, "t2")], 100)
        .unwrap();
    store.create_runs(&[new_run(&a, "t3")], 101).unwrap();
    let attempts = store.next_attempts(&[&a, &b, &never]).unwrap();
    assert_eq!((attempts[&a], attempts[&b], attempts[&never]), (3, 2, 1));
    let ids = [
        store.unit_id(&a).unwrap().unwrap(),
        store.unit_id(&b).unwrap().unwrap(),
    ];
    let rows = store.unit_rows(&[ids[0], ids[1], 999]).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[&ids[0]], store.unit_row(ids[0]).unwrap());
    let keys = store.unit_keys_of(&[ids[1], 999]).unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[&ids[1]], b);
}
