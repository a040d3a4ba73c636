//! The validated configuration: what the rest of nfslurm sees after loading.
//!
//! Everything here is already checked: paths are absolute, regexes compiled,
//! durations and memory parsed, the pipeline DAG acyclic and in topological
//! order. Code that holds a `Config` never re-validates.

use std::collections::BTreeMap;
use std::path::PathBuf;

use regex::Regex;

use crate::model::Level;

/// Which backend runs the units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    Slurm,
    Local,
}

impl ExecutorKind {
    /// The word in the config, on the command line and in `state.db`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutorKind::Slurm => "slurm",
            ExecutorKind::Local => "local",
        }
    }

    pub fn parse(text: &str) -> Option<ExecutorKind> {
        match text {
            "slurm" => Some(ExecutorKind::Slurm),
            "local" => Some(ExecutorKind::Local),
            _ => None,
        }
    }
}

impl std::fmt::Display for ExecutorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The config file, absolute.
    pub file: PathBuf,
    /// Its folder: relative paths in the config are relative to it.
    pub dir: PathBuf,
    pub version: u32,
    pub executor: ExecutorKind,
    pub site: SiteConfig,
    pub paths: Paths,
    pub discovery: Discovery,
    /// In topological order (every pipeline after the ones it depends on),
    /// ties broken by the order of the config file.
    pub pipelines: Vec<Pipeline>,
    pub retry: RetryPolicy,
    /// Local executor limits (`local:` block); defaults to this machine.
    pub local: LocalLimits,
    /// Where `sync` reports failures, finished pipelines and an unreachable
    /// cluster (`notifications:` block); no channel when the block is absent.
    pub notifications: Notifications,
    /// What `nfslurm clean` keeps (`housekeeping:` block).
    pub housekeeping: Housekeeping,
}

/// `housekeeping:`: how long run rows are kept one by one.
#[derive(Debug, Clone, PartialEq)]
pub struct Housekeeping {
    /// `clean` folds runs that ended longer ago than this into per-unit
    /// summaries (never the runs the planner reads); `None`: never.
    pub summarise_runs_after_s: Option<u64>,
}

impl Default for Housekeeping {
    fn default() -> Housekeeping {
        Housekeeping {
            summarise_runs_after_s: Some(180 * 86_400),
        }
    }
}

impl Config {
    pub fn pipeline(&self, name: &str) -> Option<&Pipeline> {
        self.pipelines.iter().find(|p| p.name == name)
    }
}

#[derive(Debug, Clone)]
pub struct Paths {
    pub dicom_root: PathBuf,
    pub bids_root: PathBuf,
    pub derivatives: PathBuf,
    pub work_dir: PathBuf,
    /// Default `.nfslurm` beside the config file.
    pub state_dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Discovery {
    /// Over session folder names; must have a `scan_id` named group, or the
    /// whole match is the scan ID.
    pub pattern: Regex,
    pub mapping: MappingConfig,
    pub validation: Validation,
    /// Folders modified more recently than this are skipped (still copying).
    pub settle_s: u64,
    /// Whether discovery reads DICOM headers (`discovery.dicom`).
    pub dicom: DicomMode,
}

/// `discovery.dicom`: read the sessions' DICOM headers or only count files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DicomMode {
    /// Headers when a session holds DICOM files; folder names otherwise.
    #[default]
    Auto,
    /// Headers always: a session without a DICOM file is invalid.
    Headers,
    /// Never open a file: count files, match folder names.
    Off,
}

/// `discovery.mapping.scan_id_from`: where a session's mapping key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScanIdFrom {
    /// The folder name (through `discovery.pattern`).
    #[default]
    Folder,
    /// One attribute of the session's DICOM headers, matched against
    /// `discovery.pattern` as a folder name would be.
    Header(crate::study::dicom::HeaderKey),
}

/// `required_series[].match_on`: what `match` is tried on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MatchOn {
    /// SeriesDescription or ProtocolName (folder names for sessions with no
    /// DICOM file under `dicom: auto`).
    #[default]
    Header,
    /// The names of the session's immediate subfolders.
    Folder,
}

#[derive(Debug, Clone)]
pub struct MappingConfig {
    pub file: PathBuf,
    pub scan_id_column: String,
    pub subject_column: String,
    /// When absent, the session label is the scan ID's capture `session`
    /// from the pattern if there is one, else the session's ordinal (1, 2, …)
    /// within the subject, ordered by scan ID.
    pub session_column: Option<String>,
    pub scan_id_from: ScanIdFrom,
}

#[derive(Debug, Clone)]
pub struct Validation {
    pub min_files: u64,
    pub required_series: Vec<SeriesRule>,
}

#[derive(Debug, Clone)]
pub struct SeriesRule {
    pub name: String,
    pub pattern: Regex,
    pub min_files: u64,
    pub match_on: MatchOn,
    /// Images (frames) the best matching series must hold.
    pub min_instances: Option<u64>,
    /// Values ImageType must contain (`ORIGINAL`, `PRIMARY`), any case.
    pub image_type: Vec<String>,
    /// At most this many series may match (a repeated acquisition is refused).
    pub max_series: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Resources {
    pub cpus: u32,
    pub mem_mb: u64,
    pub time_s: u64,
    pub gpus: u32,
}

/// Scheduler settings: the site's, possibly overridden per pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Scheduler {
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    /// `sbatch -M`: a named cluster (multi-cluster sites).
    pub cluster: Option<String>,
    pub extra_directives: Vec<String>,
    pub max_submitted: u32,
    pub poll_interval_s: u64,
    /// Slurm's own requeue; off by default (nfslurm owns retries).
    pub requeue: bool,
    /// sacct IDs per call.
    pub sacct_chunk: usize,
    /// `arrays` (the default) or `jobs`.
    pub submission: SubmissionMode,
    /// Tera template of an array job's name (`study`, `pipeline`).
    pub array_job_name: String,
    /// How long one call of a Slurm tool may take before it is killed and
    /// the cluster counted as unreachable (exit 2).
    pub tool_timeout_s: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmissionMode {
    Jobs,
    Arrays,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerRuntime {
    Apptainer,
    Singularity,
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSettings {
    pub runtime: ContainerRuntime,
    pub options: Vec<String>,
    pub binds: Vec<String>,
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct SiteConfig {
    pub name: String,
    /// Where it came from: `bundled:generic` or a path.
    pub source: String,
    pub scheduler: Scheduler,
    pub container: ContainerSettings,
    pub modules: Vec<String>,
    /// The template's name (for messages) and its text.
    pub template_name: String,
    pub template: String,
}

#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    pub level: Level,
    /// `enabled: false`: planned as `disabled`, never submitted.
    pub enabled: bool,
    /// `alert_patterns`: searched for in failed runs' logs, tallied by `status`.
    pub alert_patterns: Vec<regex::Regex>,
    pub depends_on: Vec<String>,
    /// Image path or URI; `None` runs the command on the host.
    pub container: Option<String>,
    /// Tera source of the command.
    pub command: String,
    /// Site binds plus the pipeline's own.
    pub binds: Vec<String>,
    /// Site env plus the pipeline's own.
    pub env: BTreeMap<String, String>,
    pub resources: Resources,
    pub max_concurrent: Option<u32>,
    /// The site's scheduler keys with this pipeline's overrides applied.
    pub scheduler: Scheduler,
    pub modules: Vec<String>,
    pub max_attempts: u32,
    /// Template text for this pipeline (the site's unless overridden).
    pub template_name: String,
    pub template: String,
    /// Hash of command, container and template: a change makes done units stale.
    pub config_hash: String,
    /// The hashes the same command and container had under earlier
    /// releases' bundled templates (empty for a site's own template).
    pub config_hash_aliases: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_delay_s: u64,
    pub max_delay_s: u64,
    pub factor: f64,
    /// Fraction of the delay added or removed at random (0.1 = ±10%).
    pub jitter: f64,
    pub mem_factor: f64,
    pub max_mem_mb: u64,
    pub time_factor: f64,
    pub max_time_s: u64,
    pub infra_max: u32,
    /// A run in neither squeue nor sacct for this long is `lost`.
    pub lost_after_s: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LocalLimits {
    pub cpus: u32,
    pub mem_mb: u64,
    /// Jobs at once (`local.slots`, `worker start -j N`); defaults to `cpus`.
    pub slots: u32,
}

/// What `sync` tells people about, and how (`notifications:` block).
/// `Debug` shows the webhook redacted: it is a secret.
#[derive(Clone, PartialEq)]
pub struct Notifications {
    /// Slack-style incoming webhook: a JSON POST `{"text": "..."}`.
    pub webhook: Option<String>,
    /// A shell command (run by `sh -c`): the subject is `$1`, the message is
    /// on its standard input.
    pub command: Option<String>,
    /// The events to report; all of them unless the config narrows it.
    pub events: Vec<NotifyEvent>,
    /// Consecutive syncs that could not reach the cluster before saying so.
    pub unreachable_after: u32,
}

impl Default for Notifications {
    fn default() -> Notifications {
        Notifications {
            webhook: None,
            command: None,
            events: NotifyEvent::ALL.to_vec(),
            unreachable_after: 3,
        }
    }
}

impl std::fmt::Debug for Notifications {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifications")
            .field(
                "webhook",
                &self.webhook.as_deref().map(crate::notify::redact_url),
            )
            .field("command", &self.command.as_ref().map(|_| "…"))
            .field("events", &self.events)
            .field("unreachable_after", &self.unreachable_after)
            .finish()
    }
}

impl Notifications {
    /// True when at least one channel (webhook or command) is set.
    pub fn enabled(&self) -> bool {
        self.webhook.is_some() || self.command.is_some()
    }

    pub fn wants(&self, event: NotifyEvent) -> bool {
        self.events.contains(&event)
    }
}

/// A kind of notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotifyEvent {
    /// A unit reached `failed`: its attempts are exhausted.
    Failed,
    /// A pipeline has nothing left to run: every unit is done, failed,
    /// blocked, cancelled or invalid.
    Finished,
    /// The cluster did not answer for `unreachable_after` syncs in a row (and
    /// answers again).
    Unreachable,
}

impl NotifyEvent {
    pub const ALL: [NotifyEvent; 3] = [
        NotifyEvent::Failed,
        NotifyEvent::Finished,
        NotifyEvent::Unreachable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::Failed => "failed",
            NotifyEvent::Finished => "finished",
            NotifyEvent::Unreachable => "unreachable",
        }
    }

    pub fn parse(text: &str) -> Option<NotifyEvent> {
        NotifyEvent::ALL.into_iter().find(|e| e.as_str() == text)
    }
}

impl Default for SeriesRule {
    /// A rule matching every series name, one file, on headers: a base for
    /// `..SeriesRule::default()`.
    fn default() -> Self {
        SeriesRule {
            name: String::new(),
            pattern: Regex::new("").expect("the empty regex is valid"),
            min_files: 1,
            match_on: MatchOn::Header,
            min_instances: None,
            image_type: Vec::new(),
            max_series: None,
        }
    }
}
