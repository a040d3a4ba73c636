//! Submit limits: `scheduler.max_submitted` (queued and running jobs of the
//! study, array tasks included) and a pipeline's `max_concurrent`. Pure: the
//! caller counts what is in flight.
//!
//! Whole subject chains go first, oldest subject first (by when its first
//! session was discovered); a chain that does not fit is cut after a prefix
//! that is closed under dependencies. What is left waits for a later sync.

use std::collections::HashMap;

use super::{Action, Dependency, Plan};
use crate::model::Label;

/// What may be submitted now.
#[derive(Debug, Clone, Default)]
pub struct Budget {
    /// `max_submitted` minus the runs in flight.
    pub total: usize,
    /// Per pipeline: `max_concurrent` minus its runs in flight (absent: no limit).
    pub per_pipeline: HashMap<String, usize>,
}

/// Keeps the actions that fit the budget; returns the smaller plan and how
/// many actions were deferred.
pub fn limit(plan: &Plan, budget: &Budget, age: &HashMap<Label, i64>) -> (Plan, usize) {
    let n = plan.actions.len();
    if n <= budget.total && budget.per_pipeline.is_empty() {
        return (plan.clone(), 0);
    }
    // Subjects, oldest first; then each subject's actions in plan (dependency) order.
    let mut subjects: Vec<&Label> = plan.actions.iter().map(|a| &a.key.subject).collect();
    subjects.sort_by_key(|s| (age.get(*s).copied().unwrap_or(i64::MAX), (*s).clone()));
    subjects.dedup();
    let mut by_subject: HashMap<&Label, Vec<usize>> = HashMap::new();
    for (i, a) in plan.actions.iter().enumerate() {
        by_subject.entry(&a.key.subject).or_default().push(i);
    }
    let mut keep = vec![false; n];
    let mut left = budget.total;
    let mut per_pipeline = budget.per_pipeline.clone();
    for subject in subjects {
        for &i in &by_subject[subject] {
            let action = &plan.actions[i];
            let upstream_kept = action.depends_on.iter().all(|d| match d {
                Dependency::Planned(j) => keep[*j],
                Dependency::InFlight { .. } => true,
            });
            let pipeline_ok = per_pipeline
                .get(&action.key.pipeline)
                .is_none_or(|&n| n > 0);
            if left > 0 && upstream_kept && pipeline_ok {
                keep[i] = true;
                left -= 1;
                if let Some(n) = per_pipeline.get_mut(&action.key.pipeline) {
                    *n -= 1;
                }
            }
        }
    }
    let kept = keep.iter().filter(|k| **k).count();
    (restrict(plan, &keep), n - kept)
}

/// The plan with only the kept actions, dependencies renumbered.
fn restrict(plan: &Plan, keep: &[bool]) -> Plan {
    let mut new_index = vec![usize::MAX; keep.len()];
    let mut actions: Vec<Action> = Vec::new();
    for (i, action) in plan.actions.iter().enumerate() {
        if !keep[i] {
            continue;
        }
        new_index[i] = actions.len();
        let remap = |d: &Dependency| match d {
            Dependency::Planned(j) => Dependency::Planned(new_index[*j]),
            other => other.clone(),
        };
        let mut a = action.clone();
        a.depends_on = action.depends_on.iter().map(remap).collect();
        a.inputs = action.inputs.iter().map(remap).collect();
        actions.push(a);
    }
    Plan {
        units: plan.units.clone(),
        actions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Reason, UnitKey};

    fn action(pipeline: &str, subject: &str, deps: &[usize]) -> Action {
        Action {
            key: UnitKey::new(pipeline, &Label::new(subject).unwrap(), None),
            reason: Reason::New,
            unit: 0,
            depends_on: deps.iter().map(|&d| Dependency::Planned(d)).collect(),
            inputs: deps.iter().map(|&d| Dependency::Planned(d)).collect(),
        }
    }

    fn plan() -> Plan {
        Plan {
            units: vec![],
            actions: vec![
                action("a", "01", &[]),
                action("a", "02", &[]),
                action("a", "03", &[]),
                action("b", "01", &[0]),
                action("b", "02", &[1]),
                action("b", "03", &[2]),
            ],
        }
    }

    fn keys(p: &Plan) -> Vec<String> {
        p.actions.iter().map(|a| a.key.to_string()).collect()
    }

    #[test]
    fn whole_chains_oldest_subject_first() {
        let age: HashMap<Label, i64> = [("01", 30), ("02", 10), ("03", 20)]
            .into_iter()
            .map(|(s, t)| (Label::new(s).unwrap(), t))
            .collect();
        let budget = Budget {
            total: 5,
            per_pipeline: HashMap::new(),
        };
        let (p, deferred) = limit(&plan(), &budget, &age);
        assert_eq!(deferred, 1);
        assert_eq!(
            keys(&p),
            vec!["a/sub-01", "a/sub-02", "a/sub-03", "b/sub-02", "b/sub-03"]
        );
        // Dependencies renumbered into the smaller plan.
        assert_eq!(p.actions[3].depends_on, vec![Dependency::Planned(1)]);
        assert_eq!(p.actions[4].depends_on, vec![Dependency::Planned(2)]);
    }

    #[test]
    fn pipeline_limit_drops_dependants_too() {
        let budget = Budget {
            total: 100,
            per_pipeline: [("a".to_string(), 1)].into_iter().collect(),
        };
        let (p, deferred) = limit(&plan(), &budget, &HashMap::new());
        assert_eq!(keys(&p), vec!["a/sub-01", "b/sub-01"]);
        assert_eq!(deferred, 4);
    }
}
