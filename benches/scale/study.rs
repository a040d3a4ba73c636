//! Synthetic studies for the benchmarks, generated under a temporary folder.
//!
//! Subjects are `000001`…, sessions `1` and `2`, scan IDs `S<subject><session>`;
//! the four pipelines are the usual chain (session, subject, session,
//! session) with one-line commands. Nothing here is checked in: every study
//! lives in a `tempfile` folder that is deleted when the benchmark ends.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use nfslurm::config::{self, Config, ExecutorKind};
use nfslurm::engine;
use nfslurm::executor::{ExecError, Executor, Prepared, SubmitOutcome};
use nfslurm::model::{Label, RunState};
use nfslurm::plan::{self, Dependency, Request};
use nfslurm::state::{NewRun, RunRow, RunUpdate, SessionRow, Store};

/// One benchmark study: its folder, config and size.
pub struct Study {
    pub dir: PathBuf,
    pub subjects: usize,
    pub sessions_per_subject: usize,
}

/// The study config: site `local` (no container runtime), executor `slurm`
/// (a sync with no open run calls no Slurm tool), no submit cap a benchmark
/// could hit.
const CONFIG: &str = r#"version: 1
site: local
executor: slurm
scheduler:
  max_submitted: 1000000
  submission: jobs
paths:
  dicom_root: dicom
discovery:
  mapping:
    file: mapping.csv
    scan_id_column: ScanID
    subject_column: SubjectCode
    session_column: SessionID
  validation:
    min_files: 2
  settle: 0s
pipelines:
  bids:
    level: session
    command: echo bids {{ subject.label }} {{ session.label }} {{ session.dicom_dir }}
    resources: { cpus: 1, mem: 100M, time: "00:05:00" }
  qsiprep:
    level: subject
    depends_on: [bids]
    command: echo qsiprep {{ subject.label }}{% for s in sessions %} {{ s.label }}{% endfor %}
    resources: { cpus: 1, mem: 100M, time: "00:05:00" }
  qsirecon:
    level: session
    depends_on: [qsiprep]
    command: echo qsirecon {{ subject.label }} {{ session.label }}
    resources: { cpus: 1, mem: 100M, time: "00:05:00" }
  qsiparc:
    level: session
    depends_on: [qsirecon]
    command: echo qsiparc {{ subject.label }} {{ session.label }}
    resources: { cpus: 1, mem: 100M, time: "00:05:00" }
"#;

pub fn subject_label(i: usize) -> String {
    format!("{i:06}")
}

pub fn scan_id(subject: usize, session: usize) -> String {
    format!("S{subject:06}{session}")
}

impl Study {
    /// Writes `nfslurm.yaml` and a mapping CSV for `subjects` × `sessions_per_subject`.
    pub fn create(dir: &Path, subjects: usize, sessions_per_subject: usize) -> Study {
        fs::create_dir_all(dir.join("dicom")).expect("create the study folder");
        fs::write(dir.join("nfslurm.yaml"), CONFIG).expect("write config");
        let mut csv = String::from("ScanID,SubjectCode,SessionID\n");
        for sub in 1..=subjects {
            for ses in 1..=sessions_per_subject {
                let _ = writeln!(csv, "{},{},{ses}", scan_id(sub, ses), subject_label(sub));
            }
        }
        fs::write(dir.join("mapping.csv"), csv).expect("write mapping");
        Study {
            dir: dir.to_path_buf(),
            subjects,
            sessions_per_subject,
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("nfslurm.yaml")
    }

    pub fn config(&self) -> Config {
        config::load(&self.config_path()).expect("the benchmark config loads")
    }

    pub fn sessions(&self) -> usize {
        self.subjects * self.sessions_per_subject
    }

    /// One folder per session, each with two small files in one series.
    pub fn make_folders(&self) {
        for sub in 1..=self.subjects {
            for ses in 1..=self.sessions_per_subject {
                let series = self.dir.join("dicom").join(scan_id(sub, ses)).join("DWI");
                fs::create_dir_all(&series).expect("create a session folder");
                for f in 0..2 {
                    fs::write(series.join(format!("IM{f:04}.dcm")), b"DICM\n")
                        .expect("write a DICOM stand-in");
                }
            }
        }
    }

    /// The session rows discovery would register for these folders.
    pub fn session_rows(&self) -> Vec<SessionRow> {
        let root = self.config().paths.dicom_root;
        let mut rows = Vec::with_capacity(self.sessions());
        for sub in 1..=self.subjects {
            for ses in 1..=self.sessions_per_subject {
                let scan = scan_id(sub, ses);
                rows.push(SessionRow {
                    dicom_dir: root.join(&scan),
                    scan_id: scan,
                    subject: Label::new(&subject_label(sub)).expect("digits are a label"),
                    session: Label::new(&ses.to_string()).expect("digits are a label"),
                    valid: true,
                    problem: None,
                    n_files: 2,
                });
            }
        }
        rows
    }

    /// Registers every session through `Store::register_sessions`.
    pub fn register(&self) {
        let config = self.config();
        let mut store = Store::open(&config.paths.state_dir).expect("open the state");
        store
            .register_sessions(&self.session_rows(), engine::now() - 3600)
            .expect("register sessions");
    }

    /// Runs every unit once and marks every run succeeded, with the unit
    /// updates the failure policy writes (`engine::apply_updates`): the state
    /// of a study whose work is all done.
    pub fn complete_all(&self) {
        let config = self.config();
        let mut store = Store::open(&config.paths.state_dir).expect("open the state");
        let snapshot = store.snapshot().expect("snapshot");
        let now = engine::now() - 600;
        let plan = plan::plan(&config, &snapshot, now, &Request::default());
        let to_ref = |d: &Dependency| match d {
            Dependency::Planned(i) => -1 - *i as i64,
            Dependency::InFlight { run_id, .. } => *run_id,
        };
        let new_runs: Vec<NewRun> = plan
            .actions
            .iter()
            .map(|a| {
                let pipeline = config.pipeline(&a.key.pipeline).expect("planned pipeline");
                NewRun {
                    key: a.key.clone(),
                    token: engine::new_token(),
                    executor: ExecutorKind::Slurm,
                    state: RunState::Submitting,
                    plan_reason: a.reason,
                    cpus: pipeline.resources.cpus,
                    mem_mb: pipeline.resources.mem_mb,
                    time_limit_s: pipeline.resources.time_s,
                    gpus: 0,
                    config_hash: pipeline.config_hash.clone(),
                    inputs: a.inputs.iter().map(to_ref).collect(),
                    depends_on: a.depends_on.iter().map(to_ref).collect(),
                    script_path: engine::scripts_dir(&config, &a.key).join("attempt-1.sbatch"),
                    log_path: engine::logs_dir(&config, &a.key).join("attempt-1.out"),
                    cluster: None,
                }
            })
            .collect();
        let ids = store.create_runs(&new_runs, now).expect("create runs");
        let updates: Vec<RunUpdate> = ids
            .iter()
            .enumerate()
            .map(|(i, &run_id)| RunUpdate {
                run_id,
                state: Some(RunState::Succeeded),
                job_id: Some((1_000_000 + i).to_string()),
                slurm_state: Some("COMPLETED".into()),
                exit_code: Some(0),
                node: Some("node1".into()),
                submitted_at: Some(now),
                started_at: Some(now + 1),
                ended_at: Some(now + 2),
                elapsed_s: Some(1),
                max_rss_mb: Some(5),
                ..Default::default()
            })
            .collect();
        engine::apply_updates(&config, &mut store, &updates, now + 2).expect("apply updates");
    }
}

/// An executor that calls nothing: it answers every "sbatch" with a fake job
/// ID and records job IDs in the store exactly as the Slurm executor does in
/// `jobs` mode (one update per run, recorded in the engine's journal 100 at
/// a time), so that timing `engine::submit_actions` with it
/// is the client's own time, outside sbatch.
pub struct RecordingExecutor {
    next_job: u64,
    /// (job name, dependency) of every call, as sbatch would have been given.
    pub calls: Vec<(String, Option<String>)>,
}

impl RecordingExecutor {
    pub fn new() -> RecordingExecutor {
        RecordingExecutor {
            next_job: 5_000_000,
            calls: Vec::new(),
        }
    }
}

impl Executor for RecordingExecutor {
    fn kind(&self) -> ExecutorKind {
        ExecutorKind::Slurm
    }

    fn reconcile(
        &mut self,
        _store: &Store,
        _open: &[RunRow],
        _now: i64,
    ) -> Result<Vec<RunUpdate>, ExecError> {
        Ok(Vec::new())
    }

    fn submit(
        &mut self,
        journal: &mut dyn nfslurm::executor::Journal,
        batch: &[Prepared],
        now: i64,
    ) -> Result<SubmitOutcome, ExecError> {
        let mut outcome = SubmitOutcome::default();
        let mut job_of = std::collections::HashMap::new();
        let mut pending = Vec::new();
        for p in batch {
            let deps: Vec<&String> = p.depends_on.iter().filter_map(|d| job_of.get(d)).collect();
            let dependency = (!deps.is_empty()).then(|| {
                let ids: Vec<&str> = deps.iter().map(|s| s.as_str()).collect();
                format!("afterok:{}", ids.join(":"))
            });
            self.calls.push((p.key.job_name(), dependency));
            let job = self.next_job.to_string();
            self.next_job += 1;
            job_of.insert(p.run_id, job.clone());
            outcome.submitted.push((p.run_id, job.clone()));
            pending.push(RunUpdate {
                run_id: p.run_id,
                state: Some(RunState::Pending),
                job_id: Some(job),
                submitted_at: Some(now),
                ..Default::default()
            });
            if pending.len() >= 100 {
                journal.record(&pending)?;
                pending.clear();
            }
        }
        journal.record(&pending)?;
        Ok(outcome)
    }

    fn cancel(
        &mut self,
        _store: &Store,
        _runs: &[RunRow],
        _now: i64,
    ) -> Result<Vec<RunUpdate>, ExecError> {
        Ok(Vec::new())
    }
}
