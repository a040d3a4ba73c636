//! Planner tests: one per reason a unit runs and per level rule between pipelines.

use std::path::Path;

use super::*;
use crate::state::{RunRow, UnitRow};

const CONFIG: &str = r#"
version: 1
site: local
paths:
  dicom_root: dicom
pipelines:
  bids:
    level: session
    command: echo bids {{ subject.label }} {{ session.label }}
  qsiprep:
    level: subject
    depends_on: [bids]
    command: echo qsiprep {{ subject.label }}
  qsirecon:
    level: session
    depends_on: [qsiprep]
    command: echo qsirecon
  qsiparc:
    level: session
    depends_on: [qsirecon]
    command: echo qsiparc
retry:
  max_attempts: 3
"#;

fn config() -> Config {
    crate::config::load_str(CONFIG, Path::new("/study/nfslurm.yaml")).expect("test config loads")
}

fn l(s: &str) -> Label {
    Label::new(s).unwrap()
}

fn session(subject: &str, ses: &str, valid: bool) -> SessionRow {
    SessionRow {
        scan_id: format!("S{subject}{ses}"),
        subject: l(subject),
        session: l(ses),
        dicom_dir: format!("/dicom/S{subject}{ses}").into(),
        valid,
        problem: (!valid).then(|| "too few files".to_string()),
        n_files: 10,
    }
}

fn key(pipeline: &str, subject: &str, ses: Option<&str>) -> UnitKey {
    UnitKey::new(pipeline, &l(subject), ses.map(l).as_ref())
}

/// A snapshot builder that records runs the way the store would.
struct World {
    config: Config,
    snap: Snapshot,
    next_id: i64,
}

impl World {
    fn new(sessions: &[(&str, &str)]) -> World {
        World {
            config: config(),
            snap: Snapshot {
                sessions: sessions.iter().map(|(s, e)| session(s, e, true)).collect(),
                ..Default::default()
            },
            next_id: 1,
        }
    }

    fn add_run(&mut self, key: &UnitKey, state: RunState, inputs: Vec<i64>) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        let hash = self
            .config
            .pipeline(&key.pipeline)
            .unwrap()
            .config_hash
            .clone();
        let run = RunRow {
            id,
            unit_id: 0,
            key: key.clone(),
            attempt: 1,
            token: format!("t{id}"),
            executor: crate::config::ExecutorKind::Local,
            job_id: Some(format!("{}", 1000 + id)),
            state,
            slurm_state: None,
            exit_code: (state == RunState::Failed).then_some(1),
            reason: None,
            plan_reason: crate::model::Reason::New,
            node: None,
            created_at: 0,
            submitted_at: None,
            started_at: None,
            ended_at: None,
            elapsed_s: None,
            max_rss_mb: None,
            cpus: 1,
            mem_mb: 1024,
            time_limit_s: 3600,
            gpus: 0,
            config_hash: hash,
            inputs,
            depends_on: vec![],
            script_path: "s".into(),
            log_path: "l".into(),
            unseen_since: None,
            pid: None,
            cluster: None,
        };
        self.snap.runs.insert(id, run.into());
        let unit = self
            .snap
            .units
            .entry(key.clone())
            .or_insert_with(|| UnitRow {
                id: id * 100,
                ..Default::default()
            });
        unit.last_run_id = Some(id);
        if state == RunState::Succeeded {
            unit.success_run_id = Some(id);
        }
        id
    }

    /// Runs the plan for everything and marks every action succeeded.
    fn complete_all(&mut self) {
        let plan = self.plan(&Request::default());
        let mut ids: Vec<i64> = Vec::new();
        for action in &plan.actions {
            let inputs = action
                .inputs
                .iter()
                .map(|d| match d {
                    Dependency::Planned(i) => ids[*i],
                    Dependency::InFlight { run_id, .. } => *run_id,
                })
                .collect();
            ids.push(self.add_run(&action.key, RunState::Succeeded, inputs));
        }
    }

    fn plan(&self, request: &Request) -> Plan {
        plan(&self.config, &self.snap, 1_000_000, request)
    }
}

fn action_keys(plan: &Plan) -> Vec<String> {
    plan.actions.iter().map(|a| a.key.to_string()).collect()
}

fn state_of(plan: &Plan, k: &UnitKey) -> UnitState {
    plan.unit(k).unwrap().state
}

#[test]
fn new_study_plans_every_unit_with_reason_new_in_dependency_order() {
    let world = World::new(&[("01", "1"), ("01", "2"), ("02", "1")]);
    let plan = world.plan(&Request::default());
    assert_eq!(plan.units.len(), 3 + 2 + 3 + 3);
    assert_eq!(plan.actions.len(), 11);
    assert!(plan.actions.iter().all(|a| a.reason == Reason::New));
    let qsiprep = plan
        .actions
        .iter()
        .find(|a| a.key == key("qsiprep", "01", None))
        .unwrap();
    // A subject-level unit waits for every session of its subject.
    assert_eq!(qsiprep.depends_on.len(), 2);
    for dep in &qsiprep.depends_on {
        let Dependency::Planned(i) = dep else {
            panic!("expected planned dependency")
        };
        assert_eq!(plan.actions[*i].key.pipeline, "bids");
        assert_eq!(plan.actions[*i].key.subject, l("01"));
    }
    // Session-level after subject-level: waits for the subject's unit.
    let recon = plan
        .actions
        .iter()
        .position(|a| a.key == key("qsirecon", "01", Some("2")))
        .unwrap();
    let Dependency::Planned(up) = plan.actions[recon].depends_on[0] else {
        panic!()
    };
    assert_eq!(plan.actions[up].key, key("qsiprep", "01", None));
    assert!(up < recon);
}

#[test]
fn finished_study_has_nothing_to_do() {
    let mut world = World::new(&[("01", "1"), ("02", "1")]);
    world.complete_all();
    let plan = world.plan(&Request::default());
    assert!(plan.actions.is_empty(), "{:?}", action_keys(&plan));
    assert!(plan.units.iter().all(|u| u.state == UnitState::Done));
}

#[test]
fn new_session_reruns_only_its_subjects_subject_level_chain() {
    let mut world = World::new(&[("01", "1"), ("02", "1"), ("02", "2")]);
    world.complete_all();
    world.snap.sessions.push(session("01", "2", true));
    let plan = world.plan(&Request::default());
    let mut keys = action_keys(&plan);
    keys.sort();
    assert_eq!(
        keys,
        vec![
            "bids/sub-01/ses-2",
            "qsiparc/sub-01/ses-1",
            "qsiparc/sub-01/ses-2",
            "qsiprep/sub-01",
            "qsirecon/sub-01/ses-1",
            "qsirecon/sub-01/ses-2",
        ]
    );
    let reason = |k: UnitKey| plan.actions.iter().find(|a| a.key == k).unwrap().reason;
    assert_eq!(reason(key("bids", "01", Some("2"))), Reason::New);
    assert_eq!(reason(key("qsiprep", "01", None)), Reason::UpstreamChanged);
    assert_eq!(
        reason(key("qsirecon", "01", Some("1"))),
        Reason::UpstreamChanged
    );
    assert_eq!(reason(key("qsirecon", "01", Some("2"))), Reason::New);
    assert_eq!(
        state_of(&plan, &key("qsiprep", "01", None)),
        UnitState::Stale
    );
    assert_eq!(
        state_of(&plan, &key("qsiprep", "02", None)),
        UnitState::Done
    );
    assert_eq!(
        state_of(&plan, &key("bids", "01", Some("1"))),
        UnitState::Done
    );
}

#[test]
fn upstream_that_succeeded_again_makes_downstream_stale() {
    let mut world = World::new(&[("01", "1")]);
    world.complete_all();
    // bids reran on its own (e.g. forced) and succeeded.
    world.add_run(&key("bids", "01", Some("1")), RunState::Succeeded, vec![]);
    let plan = world.plan(&Request::default());
    assert_eq!(
        action_keys(&plan),
        vec![
            "qsiprep/sub-01",
            "qsirecon/sub-01/ses-1",
            "qsiparc/sub-01/ses-1"
        ]
    );
    assert!(
        plan.actions
            .iter()
            .all(|a| a.reason == Reason::UpstreamChanged)
    );
}

#[test]
fn config_change_makes_done_units_stale_but_resources_do_not() {
    let mut world = World::new(&[("01", "1")]);
    world.complete_all();
    let mut changed = world.config.clone();
    changed.pipelines[3].resources.mem_mb *= 2;
    assert!(
        plan(&changed, &world.snap, 0, &Request::default())
            .actions
            .is_empty()
    );
    changed.pipelines[3].config_hash = "different".into();
    let p = plan(&changed, &world.snap, 0, &Request::default());
    assert_eq!(action_keys(&p), vec!["qsiparc/sub-01/ses-1"]);
    assert_eq!(p.actions[0].reason, Reason::ConfigChanged);
}

#[test]
fn forced_units_rerun_and_only_the_selected_ones() {
    let mut world = World::new(&[("01", "1"), ("02", "1")]);
    world.complete_all();
    let request = Request {
        selection: Selection {
            pipelines: vec!["qsiprep".into()],
            subjects: vec![l("02")],
            sessions: vec![],
        },
        force: true,
    };
    let plan = world.plan(&request);
    assert_eq!(action_keys(&plan), vec!["qsiprep/sub-02"]);
    assert_eq!(plan.actions[0].reason, Reason::Forced);
}

#[test]
fn failed_run_waits_for_backoff_then_retries() {
    let mut world = World::new(&[("01", "1")]);
    let k = key("bids", "01", Some("1"));
    world.add_run(&k, RunState::Failed, vec![]);
    let unit = world.snap.units.get_mut(&k).unwrap();
    unit.attempts = 1;
    unit.next_attempt_at = Some(2_000_000);
    let plan = world.plan(&Request::default());
    assert!(plan.actions.is_empty());
    let u = plan.unit(&k).unwrap();
    assert_eq!(u.state, UnitState::Retrying);
    assert_eq!(u.next_attempt_at, Some(2_000_000));
    // Downstream waits for it, naming it.
    let q = plan.unit(&key("qsiprep", "01", None)).unwrap();
    assert_eq!(q.state, UnitState::Waiting);
    assert_eq!(q.blocked_by.as_ref(), Some(&k));

    world.snap.units.get_mut(&k).unwrap().next_attempt_at = Some(500);
    let plan = world.plan(&Request::default());
    assert_eq!(plan.actions.len(), 4, "retry brings its downstream chain");
    assert_eq!(plan.actions[0].reason, Reason::Retry);
    assert_eq!(plan.actions[1].reason, Reason::New);
}

#[test]
fn exhausted_unit_is_failed_and_blocks_downstream_not_other_subjects() {
    let mut world = World::new(&[("01", "1"), ("02", "1")]);
    let k = key("qsiprep", "01", None);
    world.complete_all();
    world.add_run(&k, RunState::Failed, vec![]);
    world.snap.units.get_mut(&k).unwrap().success_run_id = None;
    world.snap.units.get_mut(&k).unwrap().attempts = 3;
    let plan = world.plan(&Request::default());
    assert!(plan.actions.is_empty());
    assert_eq!(state_of(&plan, &k), UnitState::Failed);
    let recon = plan.unit(&key("qsirecon", "01", Some("1"))).unwrap();
    assert_eq!(recon.state, UnitState::Blocked);
    assert_eq!(recon.blocked_by.as_ref(), Some(&k));
    let parc = plan.unit(&key("qsiparc", "01", Some("1"))).unwrap();
    assert_eq!(parc.state, UnitState::Blocked);
    assert_eq!(parc.blocked_by.as_ref(), Some(&k), "blocked names the root");
    assert_eq!(
        state_of(&plan, &key("qsiparc", "02", Some("1"))),
        UnitState::Done
    );
}

#[test]
fn infra_failures_retry_at_once_on_their_own_budget() {
    let mut world = World::new(&[("01", "1")]);
    let k = key("bids", "01", Some("1"));
    world.add_run(&k, RunState::InfraFailed, vec![]);
    world.snap.units.get_mut(&k).unwrap().infra_attempts = 1;
    let plan = world.plan(&Request::default());
    assert_eq!(plan.actions[0].reason, Reason::Retry);
    world.snap.units.get_mut(&k).unwrap().infra_attempts = 6;
    let plan = world.plan(&Request::default());
    assert_eq!(state_of(&plan, &k), UnitState::Failed);
}

#[test]
fn in_flight_upstream_is_a_dependency_on_its_job() {
    let mut world = World::new(&[("01", "1")]);
    let k = key("bids", "01", Some("1"));
    let run = world.add_run(&k, RunState::Running, vec![]);
    let plan = world.plan(&Request::default());
    assert_eq!(state_of(&plan, &k), UnitState::Running);
    assert_eq!(plan.actions.len(), 3);
    assert_eq!(
        plan.actions[0].depends_on,
        vec![Dependency::InFlight {
            run_id: run,
            job_id: Some("1001".into())
        }]
    );
}

#[test]
fn selection_brings_upstream_units_not_yet_done() {
    let world = World::new(&[("01", "1"), ("02", "1")]);
    let request = Request {
        selection: Selection {
            pipelines: vec!["qsiprep".into()],
            subjects: vec![l("sub-01".trim_start_matches("sub-"))],
            sessions: vec![],
        },
        force: false,
    };
    let plan = world.plan(&request);
    assert_eq!(
        action_keys(&plan),
        vec!["bids/sub-01/ses-1", "qsiprep/sub-01"]
    );
}

#[test]
fn invalid_sessions_are_invalid_units_and_left_out_of_subject_units() {
    let mut world = World::new(&[("01", "1")]);
    world.snap.sessions.push(session("01", "2", false));
    let plan = world.plan(&Request::default());
    assert_eq!(
        state_of(&plan, &key("bids", "01", Some("2"))),
        UnitState::Invalid
    );
    assert_eq!(
        state_of(&plan, &key("qsirecon", "01", Some("2"))),
        UnitState::Invalid
    );
    let q = plan
        .actions
        .iter()
        .find(|a| a.key.pipeline == "qsiprep")
        .unwrap();
    assert_eq!(q.depends_on.len(), 1);
    assert!(!action_keys(&plan).iter().any(|k| k.ends_with("ses-2")));
}

#[test]
fn cancelled_unit_stays_cancelled_and_blocks_downstream() {
    let mut world = World::new(&[("01", "1")]);
    let k = key("bids", "01", Some("1"));
    world.add_run(&k, RunState::Cancelled, vec![]);
    world.snap.units.get_mut(&k).unwrap().cancelled = true;
    let plan = world.plan(&Request::default());
    assert!(plan.actions.is_empty());
    assert_eq!(state_of(&plan, &k), UnitState::Cancelled);
    assert_eq!(
        state_of(&plan, &key("qsiprep", "01", None)),
        UnitState::Blocked
    );
}

#[test]
fn upstream_failed_run_is_resubmitted_with_its_upstream_without_an_attempt() {
    let mut world = World::new(&[("01", "1")]);
    let b = key("bids", "01", Some("1"));
    world.add_run(&b, RunState::Failed, vec![]);
    world.snap.units.get_mut(&b).unwrap().attempts = 1;
    world.add_run(
        &key("qsiprep", "01", None),
        RunState::UpstreamFailed,
        vec![],
    );
    let plan = world.plan(&Request::default());
    assert_eq!(plan.actions.len(), 4);
    let q = plan.unit(&key("qsiprep", "01", None)).unwrap();
    assert_eq!(q.reason, Some(Reason::New));
    assert_eq!(q.attempts, 0);
}

#[test]
fn subject_level_after_subject_level_waits_for_the_same_subject() {
    let text = CONFIG.replace(
        "retry:\n",
        "  report:\n    level: subject\n    depends_on: [qsiprep]\n    command: echo report\nretry:\n",
    );
    let config = crate::config::load_str(&text, Path::new("/study/nfslurm.yaml")).unwrap();
    let snap = Snapshot {
        sessions: vec![session("01", "1", true), session("02", "1", true)],
        ..Default::default()
    };
    let plan = plan(&config, &snap, 0, &Request::default());
    let report = plan
        .actions
        .iter()
        .find(|a| a.key == key("report", "02", None))
        .unwrap();
    assert_eq!(report.depends_on.len(), 1);
    let Dependency::Planned(up) = report.depends_on[0] else {
        panic!()
    };
    assert_eq!(plan.actions[up].key, key("qsiprep", "02", None));
}

/// Found by `scripts/chaos.sh`: a sync that saw a downstream job end before
/// the upstream job it ran after (sacct lag) took the upstream as rerunning
/// and ran the downstream unit a second time.
#[test]
fn downstream_end_seen_before_its_upstream_end_is_not_stale() {
    let mut world = World::new(&[("01", "1"), ("01", "2")]);
    let b1 = world.add_run(&key("bids", "01", Some("1")), RunState::Succeeded, vec![]);
    // bids ses-2 ended too, but this sync still has it running.
    let b2 = world.add_run(&key("bids", "01", Some("2")), RunState::Running, vec![]);
    world.add_run(
        &key("qsiprep", "01", None),
        RunState::Succeeded,
        vec![b1, b2],
    );
    let plan = world.plan(&Request::default());
    assert!(
        !action_keys(&plan).contains(&"qsiprep/sub-01".to_string()),
        "{:?}",
        action_keys(&plan)
    );
    assert_eq!(
        state_of(&plan, &key("qsiprep", "01", None)),
        UnitState::Done
    );
    // When it is recorded, nothing changes either.
    world.snap.runs.get_mut(&b2).unwrap().state = RunState::Succeeded;
    let unit = world
        .snap
        .units
        .get_mut(&key("bids", "01", Some("2")))
        .unwrap();
    unit.success_run_id = Some(b2);
    let plan = world.plan(&Request::default());
    assert_eq!(
        state_of(&plan, &key("qsiprep", "01", None)),
        UnitState::Done
    );
    // A rerun of that upstream (a new run, not the one consumed) still makes
    // the downstream stale.
    world.add_run(&key("bids", "01", Some("2")), RunState::Running, vec![]);
    let plan = world.plan(&Request::default());
    assert_ne!(
        state_of(&plan, &key("qsiprep", "01", None)),
        UnitState::Done
    );
}

/// Upgrading nfslurm changes its bundled template; a study done under the
/// previous one must not rerun for that alone.
#[test]
fn units_done_under_an_earlier_bundled_template_are_not_stale() {
    let mut world = World::new(&[("01", "1")]);
    world.complete_all();
    let p = &world.config.pipelines[0];
    let old = crate::config::config_hash(
        &p.command,
        p.container.as_deref(),
        crate::config::BUNDLED_TEMPLATE_HISTORY[0],
    );
    assert_ne!(old, p.config_hash, "the bundled template changed since");
    assert!(p.config_hash_aliases.contains(&old));
    // The runs the planner reads for `bids` units: their last and last
    // successful runs.
    let bids: Vec<i64> = world
        .snap
        .units
        .iter()
        .filter(|(k, _)| k.pipeline == "bids")
        .flat_map(|(_, u)| u.last_run_id.into_iter().chain(u.success_run_id))
        .collect();
    for id in &bids {
        world.snap.runs.get_mut(id).unwrap().config_hash = old.as_str().into();
    }
    assert!(world.plan(&Request::default()).actions.is_empty());
    // A hash no template of nfslurm ever gave is a config change.
    for id in &bids {
        world.snap.runs.get_mut(id).unwrap().config_hash = "a site's older template".into();
    }
    let plan = world.plan(&Request::default());
    assert_eq!(plan.actions[0].reason, Reason::ConfigChanged);
}

fn disable(world: &mut World, pipeline: &str) {
    world
        .config
        .pipelines
        .iter_mut()
        .find(|p| p.name == pipeline)
        .unwrap()
        .enabled = false;
}

#[test]
fn a_disabled_pipeline_is_never_planned_even_forced_and_its_downstream_waits() {
    let mut world = World::new(&[("01", "1")]);
    disable(&mut world, "qsirecon");
    let forced = Request {
        force: true,
        ..Default::default()
    };
    for request in [Request::default(), forced] {
        let plan = world.plan(&request);
        assert_eq!(
            action_keys(&plan),
            vec!["bids/sub-01/ses-1", "qsiprep/sub-01"]
        );
        let recon = plan.unit(&key("qsirecon", "01", Some("1"))).unwrap();
        assert_eq!(recon.state, UnitState::Disabled);
        assert!(recon.detail.as_deref().unwrap().contains("enabled: false"));
        let parc = plan.unit(&key("qsiparc", "01", Some("1"))).unwrap();
        assert_eq!(parc.state, UnitState::Waiting, "{:?}", parc.detail);
        assert!(!parc.due);
    }
}

#[test]
fn a_disabled_pipeline_that_succeeded_before_still_feeds_its_downstream() {
    let mut world = World::new(&[("01", "1")]);
    world.complete_all();
    disable(&mut world, "bids");
    let plan = world.plan(&Request::default());
    assert!(plan.actions.is_empty(), "{:?}", action_keys(&plan));
    assert_eq!(
        state_of(&plan, &key("bids", "01", Some("1"))),
        UnitState::Disabled
    );
    assert_eq!(
        state_of(&plan, &key("qsirecon", "01", Some("1"))),
        UnitState::Done
    );
    // Forcing qsiprep reruns it on the output bids left.
    let plan = world.plan(&Request {
        selection: Selection {
            pipelines: vec!["qsiprep".into()],
            ..Default::default()
        },
        force: true,
    });
    assert_eq!(action_keys(&plan), vec!["qsiprep/sub-01"]);
    // A new session: its bids unit is never submitted, and the subject's
    // qsiprep waits for it, saying why.
    world.snap.sessions.push(session("01", "2", true));
    let plan = world.plan(&Request::default());
    assert!(plan.actions.is_empty(), "{:?}", action_keys(&plan));
    let prep = plan.unit(&key("qsiprep", "01", None)).unwrap();
    assert_eq!(prep.state, UnitState::Waiting);
    assert_eq!(
        prep.detail.as_deref(),
        Some("waiting for bids/sub-01/ses-2 (disabled)")
    );
}

/// Run IDs compare as sets: order and repeats do not matter, a missing or
/// extra ID does.
#[test]
fn same_set_ignores_order_and_repeats() {
    assert!(same_set([1, 2].into_iter(), &[2, 1]));
    assert!(same_set([1, 1, 2].into_iter(), &[2, 1, 2]));
    assert!(same_set([].into_iter(), &[]));
    assert!(!same_set([1].into_iter(), &[1, 2]));
    assert!(!same_set([1, 2].into_iter(), &[1]));
    assert!(!same_set([1, 3].into_iter(), &[1, 2]));
}
