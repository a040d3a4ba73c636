//! What is new to report: a pure function of the plan, the sync's health and
//! what was already reported, so it is tested without a database or a server.

use std::collections::{BTreeMap, HashMap};

use crate::config::{Config, NotifyEvent};
use crate::model::UnitState;
use crate::plan::{Plan, UnitPlan};

/// One notification: `subject` is one line (an email subject), `body` the
/// whole message, its first line the subject.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub event: NotifyEvent,
    pub subject: String,
    pub body: String,
}

/// What was reported before, by key (`failed:<unit>`, `finished:<pipeline>`,
/// `unreachable`, `baseline`).
#[derive(Debug, Clone, Default)]
pub struct Reported(pub HashMap<String, String>);

impl Reported {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

/// How this sync went with the cluster.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncHealth {
    /// Syncs in a row that could not reach it, this one included (0: it answered).
    pub unreachable_count: u32,
    pub error: Option<String>,
}

/// The states a unit can stay in without anything more to run.
fn settled(state: UnitState) -> bool {
    matches!(
        state,
        UnitState::Done
            | UnitState::Failed
            | UnitState::Blocked
            | UnitState::Cancelled
            | UnitState::Invalid
            | UnitState::Disabled
    )
}

/// At most this many units are listed in one message.
const LIST_MAX: usize = 20;

/// The messages to send now, and the `(key, value)` marks that record them
/// (`None` deletes a key). Events found on the first call (no `baseline`
/// mark) are recorded without being sent: turning notifications on in a
/// study with a past does not report its past.
pub fn new_events(
    config: &Config,
    plan: &Plan,
    health: &SyncHealth,
    reported: &Reported,
) -> (Vec<Message>, Vec<(String, Option<String>)>) {
    new_events_with(config, plan, health, reported, &|_| None)
}

/// As [`new_events`], quoting for each failed unit the last lines of its
/// failed attempt's log that `log_tail` gives.
pub fn new_events_with(
    config: &Config,
    plan: &Plan,
    health: &SyncHealth,
    reported: &Reported,
    log_tail: &dyn Fn(&UnitPlan) -> Option<Vec<String>>,
) -> (Vec<Message>, Vec<(String, Option<String>)>) {
    let n = &config.notifications;
    let baseline = reported.get("baseline").is_none();
    let study = study_name(config);
    let mut marks: Vec<(String, Option<String>)> = Vec::new();
    let mut messages = Vec::new();

    // Units that reached `failed`, each once per failed run.
    let mut failed = Vec::new();
    for u in &plan.units {
        if u.state != UnitState::Failed {
            continue;
        }
        let run = u.last_run_id.map(|r| r.to_string()).unwrap_or_default();
        let key = format!("failed:{}", u.key);
        if reported.get(&key) != Some(run.as_str()) {
            marks.push((key, Some(run)));
            failed.push(u);
        }
    }
    if !failed.is_empty() && !baseline && n.wants(NotifyEvent::Failed) {
        let subject = match failed.len() {
            1 => format!("nfslurm: {} failed in {study}", failed[0].key),
            k => format!("nfslurm: {k} units failed in {study}"),
        };
        let mut body = format!("{subject}\n");
        for u in failed.iter().take(LIST_MAX) {
            let detail = u.detail.as_deref().unwrap_or("attempts exhausted");
            body.push_str(&format!("- {}: {detail}\n", u.key));
            for line in log_tail(u).unwrap_or_default() {
                body.push_str(&format!("    | {line}\n"));
            }
        }
        if failed.len() > LIST_MAX {
            body.push_str(&format!(
                "… and {} more: `nfslurm status --state failed`\n",
                failed.len() - LIST_MAX
            ));
        }
        let first = &failed[0].key;
        body.push_str(&format!(
            "Their attempts are used up. `nfslurm show {first}` tells why; \
             `nfslurm retry --failed` runs them again."
        ));
        messages.push(Message {
            event: NotifyEvent::Failed,
            subject,
            body,
        });
    }

    // Pipelines with nothing left to run, once per newest run.
    let mut finished = Vec::new();
    for p in &config.pipelines {
        let units: Vec<_> = plan
            .units
            .iter()
            .filter(|u| u.key.pipeline == p.name)
            .collect();
        let Some(newest) = units.iter().filter_map(|u| u.last_run_id).max() else {
            continue;
        };
        if !units.iter().all(|u| settled(u.state)) {
            continue;
        }
        let key = format!("finished:{}", p.name);
        let value = newest.to_string();
        if reported.get(&key) == Some(value.as_str()) {
            continue;
        }
        marks.push((key, Some(value)));
        let mut counts: BTreeMap<UnitState, usize> = BTreeMap::new();
        for u in &units {
            *counts.entry(u.state).or_default() += 1;
        }
        let counts = counts
            .iter()
            .map(|(s, k)| format!("{k} {s}"))
            .collect::<Vec<_>>()
            .join(", ");
        finished.push((p.name.as_str(), counts));
    }
    if !finished.is_empty() && !baseline && n.wants(NotifyEvent::Finished) {
        let subject = match finished.as_slice() {
            [(name, counts)] => {
                format!("nfslurm: pipeline `{name}` finished in {study}: {counts}")
            }
            _ => format!("nfslurm: {} pipelines finished in {study}", finished.len()),
        };
        let mut body = format!("{subject}\n");
        if finished.len() > 1 {
            for (name, counts) in &finished {
                body.push_str(&format!("- `{name}`: {counts}\n"));
            }
        }
        body.push_str(
            "Nothing more to run until new sessions arrive. `nfslurm status` shows the study.",
        );
        messages.push(Message {
            event: NotifyEvent::Finished,
            subject,
            body,
        });
    }

    // The cluster: once when it stops answering for long enough, once when it is back.
    let was_reported = reported.get("unreachable").is_some();
    if health.unreachable_count >= n.unreachable_after && !was_reported {
        marks.push((
            "unreachable".into(),
            Some(health.unreachable_count.to_string()),
        ));
        if n.wants(NotifyEvent::Unreachable) {
            let subject = format!(
                "nfslurm: the cluster has not answered for {} syncs ({study})",
                health.unreachable_count
            );
            let why = health.error.as_deref().unwrap_or("no answer");
            messages.push(Message {
                event: NotifyEvent::Unreachable,
                subject: subject.clone(),
                body: format!(
                    "{subject}\nLast error: {why}\nNothing is lost: runs stay recorded and \
                     the next sync that reaches the cluster catches up. `nfslurm doctor` checks the setup."
                ),
            });
        }
    } else if health.unreachable_count == 0 && was_reported {
        marks.push(("unreachable".into(), None));
        if n.wants(NotifyEvent::Unreachable) {
            let subject = format!("nfslurm: the cluster answers again ({study})");
            messages.push(Message {
                event: NotifyEvent::Unreachable,
                subject: subject.clone(),
                body: format!("{subject}\nThis sync reached it and caught up."),
            });
        }
    }

    if baseline {
        marks.push(("baseline".into(), Some("1".into())));
    }
    (messages, marks)
}

/// How a study is named in messages: its folder, and the host (cron runs on
/// one login node of several).
fn study_name(config: &Config) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    if host.is_empty() {
        format!("`{}`", config.dir.display())
    } else {
        format!("`{}` on {host}", config.dir.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Label, UnitKey};
    use crate::plan::UnitPlan;

    fn config() -> Config {
        let text = "version: 1\nsite: local\npaths:\n  dicom_root: /d\nnotifications:\n  command: cat\n  unreachable_after: 2\npipelines:\n  bids:\n    command: x\n  prep:\n    level: subject\n    depends_on: bids\n    command: y\n";
        crate::config::load_str_with_env(text, std::path::Path::new("/s/nfslurm.yaml"), &|_| None)
            .unwrap()
    }

    fn unit(pipeline: &str, sub: &str, state: UnitState, run: Option<i64>) -> UnitPlan {
        let subject = Label::new(sub).unwrap();
        let session = Label::new("1").unwrap();
        let (level, ses) = if pipeline == "bids" {
            (crate::model::Level::Session, Some(&session))
        } else {
            (crate::model::Level::Subject, None)
        };
        UnitPlan {
            key: UnitKey::new(pipeline, &subject, ses),
            level,
            state,
            reason: None,
            detail: (state == UnitState::Failed).then(|| "attempt 1 failed (exit 1)".into()),
            blocked_by: None,
            attempts: 0,
            job_id: None,
            next_attempt_at: None,
            last_run_id: run,
            due: false,
            held: false,
        }
    }

    /// Applies marks as the store would.
    fn apply(reported: &mut Reported, marks: Vec<(String, Option<String>)>) {
        for (k, v) in marks {
            match v {
                Some(v) => reported.0.insert(k, v),
                None => reported.0.remove(&k),
            };
        }
    }

    fn baseline() -> Reported {
        Reported(HashMap::from([("baseline".to_string(), "1".to_string())]))
    }

    #[test]
    fn a_failed_unit_is_reported_once_per_failed_run() {
        let c = config();
        let healthy = SyncHealth::default();
        let mut reported = baseline();
        let plan = Plan {
            units: vec![
                unit("bids", "01", UnitState::Failed, Some(3)),
                unit("bids", "02", UnitState::Running, Some(4)),
            ],
            actions: vec![],
        };
        let (msgs, marks) = new_events(&c, &plan, &healthy, &reported);
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].event, NotifyEvent::Failed);
        assert!(
            msgs[0]
                .subject
                .starts_with("nfslurm: bids/sub-01/ses-1 failed in `/s`")
        );
        assert!(
            msgs[0]
                .body
                .contains("- bids/sub-01/ses-1: attempt 1 failed (exit 1)")
        );
        apply(&mut reported, marks);
        // The next sync sees the same failure: nothing new.
        let (msgs, _) = new_events(&c, &plan, &healthy, &reported);
        assert!(msgs.is_empty());
        // Retried and failed again: a new run, a new message.
        let plan = Plan {
            units: vec![
                unit("bids", "01", UnitState::Failed, Some(9)),
                unit("bids", "02", UnitState::Running, Some(4)),
            ],
            actions: vec![],
        };
        let (msgs, _) = new_events(&c, &plan, &healthy, &reported);
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].event, NotifyEvent::Failed);
    }

    #[test]
    fn a_failure_message_quotes_the_end_of_the_failed_log() {
        let plan = Plan {
            units: vec![unit("bids", "01", UnitState::Failed, Some(3))],
            actions: vec![],
        };
        let tail = |u: &UnitPlan| {
            (u.last_run_id == Some(3)).then(|| vec!["bash: dcm2nix: command not found".to_string()])
        };
        let (msgs, _) =
            new_events_with(&config(), &plan, &SyncHealth::default(), &baseline(), &tail);
        assert!(
            msgs[0]
                .body
                .contains("    | bash: dcm2nix: command not found\n"),
            "{}",
            msgs[0].body
        );
    }

    #[test]
    fn the_first_look_records_the_past_without_sending_it() {
        let c = config();
        let plan = Plan {
            units: vec![unit("bids", "01", UnitState::Failed, Some(3))],
            actions: vec![],
        };
        let mut reported = Reported::default();
        let (msgs, marks) = new_events(&c, &plan, &SyncHealth::default(), &reported);
        assert!(msgs.is_empty());
        apply(&mut reported, marks);
        assert_eq!(reported.get("baseline"), Some("1"));
        let (msgs, _) = new_events(&c, &plan, &SyncHealth::default(), &reported);
        assert!(msgs.is_empty());
    }

    #[test]
    fn a_pipeline_is_finished_when_nothing_is_left_to_run() {
        let c = config();
        let mut reported = baseline();
        let busy = Plan {
            units: vec![
                unit("bids", "01", UnitState::Done, Some(1)),
                unit("bids", "02", UnitState::Running, Some(2)),
                unit("prep", "01", UnitState::Waiting, None),
            ],
            actions: vec![],
        };
        let (msgs, marks) = new_events(&c, &busy, &SyncHealth::default(), &reported);
        assert!(msgs.is_empty());
        apply(&mut reported, marks);
        let done = Plan {
            units: vec![
                unit("bids", "01", UnitState::Done, Some(1)),
                unit("bids", "02", UnitState::Failed, Some(2)),
                unit("prep", "01", UnitState::Blocked, None),
            ],
            actions: vec![],
        };
        let (msgs, marks) = new_events(&c, &done, &SyncHealth::default(), &reported);
        // One failure, and `bids` finished; `prep` never ran, so it did not "finish".
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        assert_eq!(msgs[1].event, NotifyEvent::Finished);
        assert!(
            msgs[1].subject.contains("pipeline `bids` finished in `/s`"),
            "{}",
            msgs[1].subject
        );
        assert!(msgs[1].subject.ends_with(": 1 done, 1 failed"));
        apply(&mut reported, marks);
        let (msgs, _) = new_events(&c, &done, &SyncHealth::default(), &reported);
        assert!(msgs.is_empty());
    }

    #[test]
    fn unreachable_after_n_syncs_then_back_once() {
        let c = config(); // unreachable_after: 2
        let plan = Plan::default();
        let mut reported = baseline();
        let down = |k| SyncHealth {
            unreachable_count: k,
            error: Some("`squeue` failed: Unable to contact slurm controller".into()),
        };
        let (msgs, marks) = new_events(&c, &plan, &down(1), &reported);
        assert!(msgs.is_empty());
        apply(&mut reported, marks);
        let (msgs, marks) = new_events(&c, &plan, &down(2), &reported);
        assert_eq!(msgs.len(), 1);
        assert!(msgs[0].body.contains("Unable to contact slurm controller"));
        apply(&mut reported, marks);
        let (msgs, marks) = new_events(&c, &plan, &down(3), &reported);
        assert!(msgs.is_empty());
        apply(&mut reported, marks);
        let (msgs, marks) = new_events(&c, &plan, &SyncHealth::default(), &reported);
        assert_eq!(msgs.len(), 1);
        assert!(msgs[0].subject.contains("answers again"));
        apply(&mut reported, marks);
        let (msgs, _) = new_events(&c, &plan, &SyncHealth::default(), &reported);
        assert!(msgs.is_empty());
    }
}
