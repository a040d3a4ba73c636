//! Job arrays (`scheduler.submission: arrays`): the shape of a submission.
//!
//! Units of one pipeline whose scripts carry the same `#SBATCH` directives
//! (all but the per-task ones, see [`super::directives`]) and the same
//! resources are submitted as one array job, indexed by subject, one array per (pipeline, session ordinal), linked
//! with `aftercorr` (task i after task i). What was verified on Slurm 22.05
//! (docs/arrays.md): with `aftercorr:A`, task i of the child waits for A's
//! task i only, and a failed A_i cancels only the child's task i; but a child
//! task whose index A does not have is tied to the whole of A (cancelled when
//! any task of A fails). So a child array is only ever linked to upstream
//! arrays that hold every one of its indices: children are split by the set
//! of upstream arrays they need. A unit whose dependencies cannot be said
//! that way (an upstream in flight from an earlier submission, an upstream
//! submitted as a single job, a retry) is submitted as a single job, with
//! `afterok` on exact job or task IDs.
//!
//! Everything here is pure: the executor writes files and calls sbatch.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use crate::executor::Prepared;
use crate::model::UnitKey;
use crate::render::shell_quote;

/// One sbatch call of a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submission {
    /// A single job for `batch[index]`.
    Single(usize),
    /// An array: its members (`batch` index, task index), and the arrays
    /// (indices into the submissions list) it follows task by task.
    Array {
        members: Vec<(usize, u32)>,
        after: Vec<usize>,
    },
}

/// An array member: index into the batch, task index.
type Member = (usize, u32);

/// What makes units share an array: pipeline, session ordinal, resources,
/// and the index chunk (indices stay below `max_index`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct GroupKey {
    stage: usize,
    pipeline: String,
    ordinal: usize,
    cpus: u32,
    mem_mb: u64,
    time_s: u64,
    gpus: u32,
    /// The members' shared `#SBATCH` directives, interned for this batch.
    directives: usize,
    chunk: u32,
}

/// Plans the sbatch calls for `batch` (in dependency order). `max_index` is
/// the largest array index the cluster accepts (`MaxArraySize - 1`).
pub fn shape(batch: &[Prepared], max_index: u32) -> Vec<Submission> {
    let max_index = max_index.max(1);
    // Subject index: 1.. in label order, the same in every array of this submission.
    let subjects: BTreeSet<&str> = batch.iter().map(|p| p.key.subject.as_str()).collect();
    let subject_index: HashMap<&str, u32> = subjects
        .iter()
        .enumerate()
        .map(|(i, s)| (*s, i as u32 + 1))
        .collect();
    // Session ordinal of each session-level unit within its subject and pipeline.
    let mut sessions: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for p in batch {
        if let Some(ses) = &p.key.session {
            sessions
                .entry((p.key.pipeline.as_str(), p.key.subject.as_str()))
                .or_default()
                .push(ses.as_str());
        }
    }
    for list in sessions.values_mut() {
        list.sort_unstable();
    }
    // Stages: pipelines in the order they first appear (the batch is topological).
    let mut stages: Vec<&str> = Vec::new();
    for p in batch {
        if !stages.contains(&p.key.pipeline.as_str()) {
            stages.push(&p.key.pipeline);
        }
    }
    let by_run: HashMap<i64, usize> = batch
        .iter()
        .enumerate()
        .map(|(i, p)| (p.run_id, i))
        .collect();

    // Identical directive lists share one number.
    let mut directive_sets: HashMap<&[String], usize> = HashMap::new();
    let mut out: Vec<Submission> = Vec::new();
    // Where each batch entry went: (submission index, task index if an array member).
    let mut placed: HashMap<usize, (usize, Option<u32>)> = HashMap::new();
    for (stage, pipeline) in stages.iter().enumerate() {
        let members: Vec<usize> = (0..batch.len())
            .filter(|&i| batch[i].key.pipeline == *pipeline)
            .collect();
        let mut groups: BTreeMap<(GroupKey, Vec<usize>), Vec<Member>> = BTreeMap::new();
        let mut singles: Vec<usize> = Vec::new();
        for &i in &members {
            let p = &batch[i];
            let raw = subject_index[p.key.subject.as_str()];
            let (chunk, task) = ((raw - 1) / max_index, (raw - 1) % max_index + 1);
            // Every dependency must be a task of an array of this batch with the same index.
            let mut after: Vec<usize> = Vec::new();
            let mut expressible = !p.retry;
            for d in &p.depends_on {
                match by_run.get(d).and_then(|j| placed.get(j)) {
                    Some(&(sub, Some(t))) if t == task => after.push(sub),
                    _ => expressible = false,
                }
            }
            if !expressible {
                singles.push(i);
                continue;
            }
            after.sort_unstable();
            after.dedup();
            let ordinal = p
                .key
                .session
                .as_ref()
                .and_then(|s| {
                    sessions
                        .get(&(p.key.pipeline.as_str(), p.key.subject.as_str()))
                        .and_then(|l| l.iter().position(|x| *x == s.as_str()))
                })
                .map(|o| o + 1)
                .unwrap_or(0);
            let key = GroupKey {
                stage,
                pipeline: p.key.pipeline.clone(),
                ordinal,
                cpus: p.cpus,
                mem_mb: p.mem_mb,
                time_s: p.time_limit_s,
                gpus: p.gpus,
                directives: {
                    let next = directive_sets.len();
                    *directive_sets.entry(&p.directives).or_insert(next)
                },
                chunk,
            };
            groups.entry((key, after)).or_default().push((i, task));
        }
        for ((_, after), members) in groups {
            if members.len() == 1 {
                // An array of one is a job: say it plainly.
                singles.push(members[0].0);
                continue;
            }
            let sub = out.len();
            for &(i, task) in &members {
                placed.insert(i, (sub, Some(task)));
            }
            out.push(Submission::Array { members, after });
        }
        singles.sort_unstable();
        for i in singles {
            placed.insert(i, (out.len(), None));
            out.push(Submission::Single(i));
        }
    }
    out
}

/// One task of an array script.
#[derive(Debug, Clone, Copy)]
pub struct Task<'a> {
    pub index: u32,
    pub unit: &'a UnitKey,
    pub script: &'a Path,
    pub log: &'a Path,
}

/// How an array is handed to sbatch: the values nfslurm sets per array.
#[derive(Debug, Clone)]
pub struct ArrayHeader<'a> {
    pub pipeline: &'a str,
    /// The template the members' scripts were rendered from (for readers).
    pub template: &'a str,
    /// The members' shared `#SBATCH` directives, the same for every task.
    pub directives: &'a [String],
    /// `--array` value (indices and throttle).
    pub spec: String,
    /// Folder of the tasks' Slurm output (`%A_%a.out`).
    pub logs: &'a Path,
    /// The sbatch command line, for the script's header.
    pub command_line: String,
}

/// The array's script: its directives (nfslurm's per-array ones, then the
/// members' shared ones, as their template wrote them) and a `case` on the
/// task index that runs each unit's own script into its own log. Written once
/// at submit time and never rewritten, it is the array's manifest.
pub fn array_script(header: &ArrayHeader, tasks: &[Task]) -> String {
    let mut text = String::from("#!/bin/bash\n");
    text.push_str(&format!("#SBATCH --array={}\n", header.spec));
    text.push_str(&format!(
        "#SBATCH --output={}\n",
        shell_quote(&format!("{}/%A_%a.out", header.logs.display()))
    ));
    text.push_str(&format!(
        "# The directives of the units' scripts (template `{}`), the same for every task:\n",
        header.template
    ));
    for d in header.directives {
        text.push_str(&format!("#SBATCH {d}\n"));
    }
    text.push_str(&format!(
        "# nfslurm array of {} {} of `{}`: task index = subject. Submitted as\n#   {}\n",
        tasks.len(),
        if tasks.len() == 1 { "unit" } else { "units" },
        header.pipeline,
        header.command_line
    ));
    text.push_str("set -euo pipefail\ncase \"$SLURM_ARRAY_TASK_ID\" in\n");
    for t in tasks {
        text.push_str(&format!(
            "  {}) unit={} script={} log={} ;;\n",
            t.index,
            shell_quote(&t.unit.to_string()),
            shell_quote(&t.script.to_string_lossy()),
            shell_quote(&t.log.to_string_lossy()),
        ));
    }
    text.push_str(
        "  *) echo \"nfslurm: no unit for task $SLURM_ARRAY_TASK_ID\" >&2; exit 2 ;;\nesac\n",
    );
    text.push_str("echo \"[nfslurm] array task $SLURM_ARRAY_TASK_ID runs $unit\"\nexec bash \"$script\" > \"$log\" 2>&1\n");
    text
}

/// Task indices of a squeue summary row such as `123_[1,4,7-9%2]`; `None`
/// when `job_id` is not a summary of `array_id`.
pub fn summary_indices(job_id: &str, array_id: &str) -> Option<Vec<u32>> {
    let rest = job_id
        .strip_prefix(array_id)?
        .strip_prefix("_[")?
        .strip_suffix(']')?;
    let list = rest.split('%').next()?;
    let mut out = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

/// Slurm's `--array` value for these indices: ranges folded, throttle appended.
pub fn array_spec(indices: &[u32], throttle: Option<u32>) -> String {
    let mut sorted = indices.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        parts.push(if end == start {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    let mut spec = parts.join(",");
    if let Some(t) = throttle {
        spec.push_str(&format!("%{t}"));
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Label, UnitKey};

    fn prep(
        id: i64,
        pipeline: &str,
        subject: &str,
        session: Option<&str>,
        deps: &[i64],
    ) -> Prepared {
        Prepared {
            run_id: id,
            key: UnitKey::new(
                pipeline,
                &Label::new(subject).unwrap(),
                session.map(|s| Label::new(s).unwrap()).as_ref(),
            ),
            token: format!("t{id}"),
            script_path: "s".into(),
            log_path: "l".into(),
            cpus: 1,
            mem_mb: 1024,
            time_limit_s: 3600,
            gpus: 0,
            directives: vec!["--mem=1024M".into()],
            retry: false,
            depends_on: deps.to_vec(),
        }
    }

    /// Subject 01 with two sessions, 02 with one: bids -> qsiprep -> qsirecon.
    fn study() -> Vec<Prepared> {
        vec![
            prep(1, "bids", "01", Some("1"), &[]),
            prep(2, "bids", "01", Some("2"), &[]),
            prep(3, "bids", "02", Some("1"), &[]),
            prep(4, "bids", "03", Some("1"), &[]),
            prep(5, "bids", "03", Some("2"), &[]),
            prep(6, "qsiprep", "01", None, &[1, 2]),
            prep(7, "qsiprep", "02", None, &[3]),
            prep(8, "qsiprep", "03", None, &[4, 5]),
            prep(9, "qsirecon", "01", Some("1"), &[6]),
            prep(10, "qsirecon", "01", Some("2"), &[6]),
            prep(11, "qsirecon", "02", Some("1"), &[7]),
            prep(12, "qsirecon", "03", Some("1"), &[8]),
            prep(13, "qsirecon", "03", Some("2"), &[8]),
        ]
    }

    #[test]
    fn arrays_per_session_ordinal_split_by_upstream_arrays() {
        let shape = shape(&study(), 1000);
        assert_eq!(
            shape,
            vec![
                // bids ses ordinal 1: subjects 1, 2, 3; ordinal 2: subjects 1, 3.
                Submission::Array {
                    members: vec![(0, 1), (2, 2), (3, 3)],
                    after: vec![]
                },
                Submission::Array {
                    members: vec![(1, 1), (4, 3)],
                    after: vec![]
                },
                // qsiprep of 01 and 03 follow both bids arrays; 02 has no task in
                // the second one, so it cannot share their array.
                Submission::Array {
                    members: vec![(5, 1), (7, 3)],
                    after: vec![0, 1]
                },
                Submission::Single(6),
                // qsirecon ses 1: 01 and 03 follow array 2; 02 follows a single job.
                Submission::Array {
                    members: vec![(8, 1), (11, 3)],
                    after: vec![2]
                },
                Submission::Array {
                    members: vec![(9, 1), (12, 3)],
                    after: vec![2]
                },
                Submission::Single(10),
            ]
        );
    }

    #[test]
    fn in_flight_upstreams_and_retries_make_single_jobs() {
        let mut batch = vec![
            prep(20, "qsiprep", "01", None, &[5]),
            prep(21, "qsiprep", "02", None, &[6]),
            prep(22, "qsiprep", "03", None, &[]),
            prep(23, "qsiprep", "04", None, &[]),
        ];
        batch[3].retry = true;
        let shape = shape(&batch, 1000);
        assert_eq!(
            shape,
            vec![
                Submission::Single(0),
                Submission::Single(1),
                Submission::Single(2),
                Submission::Single(3)
            ]
        );
    }

    #[test]
    fn different_resources_split_arrays_and_indices_chunk() {
        let mut batch = vec![
            prep(1, "bids", "01", Some("1"), &[]),
            prep(2, "bids", "02", Some("1"), &[]),
            prep(3, "bids", "03", Some("1"), &[]),
            prep(4, "bids", "04", Some("1"), &[]),
        ];
        batch[3].mem_mb = 4096;
        let s = shape(&batch, 2);
        // Indices 1, 2 | 1 (chunk 2) | escalated memory alone.
        assert_eq!(
            s,
            vec![
                Submission::Array {
                    members: vec![(0, 1), (1, 2)],
                    after: vec![]
                },
                Submission::Single(2),
                Submission::Single(3),
            ]
        );
    }

    /// A site template's directive that differs between units (here a
    /// `--constraint` a pipeline override gave one of them) splits the array.
    #[test]
    fn units_whose_directives_differ_never_share_an_array() {
        let mut batch = vec![
            prep(1, "bids", "01", Some("1"), &[]),
            prep(2, "bids", "02", Some("1"), &[]),
            prep(3, "bids", "03", Some("1"), &[]),
            prep(4, "bids", "04", Some("1"), &[]),
        ];
        for p in &mut batch[2..] {
            p.directives.push("--constraint=avx2".into());
        }
        assert_eq!(
            shape(&batch, 1000),
            vec![
                Submission::Array {
                    members: vec![(0, 1), (1, 2)],
                    after: vec![]
                },
                Submission::Array {
                    members: vec![(2, 3), (3, 4)],
                    after: vec![]
                },
            ]
        );
    }

    /// The array's script: nfslurm's per-array lines, then the members'
    /// shared directives verbatim, then the task table.
    #[test]
    fn array_scripts_carry_the_members_directives() {
        let a = UnitKey::new("bids", &Label::new("01").unwrap(), None);
        let b = UnitKey::new("bids", &Label::new("03").unwrap(), None);
        let directives = vec![
            "--mem=1024M".to_string(),
            "--nice=77".into(),
            "-x node7".into(),
            "--clusters=other".into(),
        ];
        let header = ArrayHeader {
            pipeline: "bids",
            template: "/site/sbatch.sh.tera",
            directives: &directives,
            spec: array_spec(&[1, 3], Some(2)),
            logs: Path::new("/s/logs/arrays/bids"),
            command_line: "sbatch --parsable --job-name=nf-study-bids /s/a.sbatch".into(),
        };
        let tasks = [
            Task {
                index: 1,
                unit: &a,
                script: Path::new("/s/scripts/a.sbatch"),
                log: Path::new("/s/logs/a b.out"),
            },
            Task {
                index: 3,
                unit: &b,
                script: Path::new("/s/scripts/b.sbatch"),
                log: Path::new("/s/logs/b.out"),
            },
        ];
        let text = array_script(&header, &tasks);
        let expected = "#!/bin/bash
#SBATCH --array=1,3%2
#SBATCH --output=/s/logs/arrays/bids/%A_%a.out
# The directives of the units' scripts (template `/site/sbatch.sh.tera`), the same for every task:
#SBATCH --mem=1024M
#SBATCH --nice=77
#SBATCH -x node7
#SBATCH --clusters=other
# nfslurm array of 2 units of `bids`: task index = subject. Submitted as
#   sbatch --parsable --job-name=nf-study-bids /s/a.sbatch
set -euo pipefail
case \"$SLURM_ARRAY_TASK_ID\" in
  1) unit=bids/sub-01 script=/s/scripts/a.sbatch log='/s/logs/a b.out' ;;
  3) unit=bids/sub-03 script=/s/scripts/b.sbatch log=/s/logs/b.out ;;
  *) echo \"nfslurm: no unit for task $SLURM_ARRAY_TASK_ID\" >&2; exit 2 ;;
esac
echo \"[nfslurm] array task $SLURM_ARRAY_TASK_ID runs $unit\"
exec bash \"$script\" > \"$log\" 2>&1
";
        assert_eq!(text, expected);
        // What sbatch reads from it: the members' directives, none lost.
        let read: Vec<String> = crate::executor::slurm::directives::parse(&text)
            .into_iter()
            .map(|d| d.text)
            .collect();
        assert_eq!(
            read[..2],
            ["--array=1,3%2", "--output=/s/logs/arrays/bids/%A_%a.out"]
        );
        assert_eq!(read[2..], directives[..]);
    }

    #[test]
    fn summary_rows_and_array_specs() {
        assert_eq!(
            summary_indices("123_[1,4,7-9%2]", "123"),
            Some(vec![1, 4, 7, 8, 9])
        );
        assert_eq!(summary_indices("123_[2]", "123"), Some(vec![2]));
        assert_eq!(summary_indices("1234_[2]", "123"), None);
        assert_eq!(summary_indices("123_4", "123"), None);
        assert_eq!(array_spec(&[7, 1, 2, 3, 5], Some(4)), "1-3,5,7%4");
        assert_eq!(array_spec(&[1, 4, 7], None), "1,4,7");
    }
}
