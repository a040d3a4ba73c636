//! The study model shared by every layer: labels, unit keys, levels and states.
//!
//! States use Slurm's own words where it has them, so what the user reads in `status`, in
//! `--json` and in the audit log is the same vocabulary everywhere.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A BIDS label (`01`, not `sub-01`): ASCII letters and digits only.
///
/// Labels come from outside the config (mapping CSV, folder names), so they are
/// validated here, before any of them can reach a template or a shell.
///
/// Shared (`Arc<str>`): a label is cloned into every unit key, upstream list
/// and action of a plan, and a clone is then a reference count, not a copy.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label(Arc<str>);

impl Serialize for Label {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Label {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Label, D::Error> {
        let text = String::deserialize(deserializer)?;
        Label::new(&text).map_err(serde::de::Error::custom)
    }
}

/// The most characters a label may have: file names and Slurm job names are
/// built from labels, and no scanner writes a longer subject code.
pub const MAX_LABEL_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{}` {}{}", self.shown(), self.reason(), if self.too_long { "" } else { " (for example `01` or `sub-01`)" })]
pub struct LabelError {
    pub value: String,
    /// Longer than [`MAX_LABEL_LEN`] (else: empty, or not letters and digits).
    pub too_long: bool,
}

impl LabelError {
    /// What is wrong, after the value: `is too long: …` or `is not a valid
    /// BIDS label: …`.
    pub fn reason(&self) -> String {
        if self.too_long {
            format!(
                "is too long for a label: {} characters, at most {MAX_LABEL_LEN}",
                self.value.chars().count()
            )
        } else {
            "is not a valid BIDS label: use letters and digits only".to_string()
        }
    }

    /// The value as shown in a message: control characters escaped, and cut
    /// after 40 characters (a whole spreadsheet cell may be pasted there).
    pub fn shown(&self) -> String {
        let escaped = crate::output::escape_controls(&self.value);
        if escaped.chars().count() > 40 {
            let head: String = escaped.chars().take(40).collect();
            format!("{head}…")
        } else {
            escaped.into_owned()
        }
    }
}

impl Label {
    /// Parses a label, accepting the BIDS prefix (`sub-01` and `01` both give `01`).
    pub fn parse_with_prefix(value: &str, prefix: &str) -> Result<Label, LabelError> {
        let trimmed = value.trim();
        let bare = trimmed.strip_prefix(prefix).unwrap_or(trimmed);
        Label::new(bare).map_err(|e| LabelError {
            value: value.to_string(),
            too_long: e.too_long,
        })
    }

    pub fn subject(value: &str) -> Result<Label, LabelError> {
        Label::parse_with_prefix(value, "sub-")
    }

    pub fn session(value: &str) -> Result<Label, LabelError> {
        Label::parse_with_prefix(value, "ses-")
    }

    /// A bare label: non-empty, ASCII alphanumeric, at most
    /// [`MAX_LABEL_LEN`] characters.
    pub fn new(value: &str) -> Result<Label, LabelError> {
        if !value.is_empty()
            && value.len() <= MAX_LABEL_LEN
            && value.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            Ok(Label(Arc::from(value)))
        } else {
            Err(LabelError {
                value: value.to_string(),
                too_long: value.len() > MAX_LABEL_LEN,
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A label is looked up by its text (the store's interned labels).
impl std::borrow::Borrow<str> for Label {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The level of a pipeline: one unit per session or one per subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Session,
    Subject,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Session => "session",
            Level::Subject => "subject",
        })
    }
}

/// A unit of work: (pipeline, subject) or (pipeline, subject, session).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct UnitKey {
    pub pipeline: String,
    pub subject: Label,
    pub session: Option<Label>,
}

impl UnitKey {
    pub fn new(pipeline: &str, subject: &Label, session: Option<&Label>) -> UnitKey {
        UnitKey {
            pipeline: pipeline.to_string(),
            subject: subject.clone(),
            session: session.cloned(),
        }
    }

    /// Path-safe form used for script and log folders: `sub-01` or `sub-01_ses-1`.
    pub fn dir_name(&self) -> String {
        match &self.session {
            Some(ses) => format!("sub-{}_ses-{}", self.subject, ses),
            None => format!("sub-{}", self.subject),
        }
    }

    /// Slurm job name: `nf-<pipeline>-<subject>[-<session>]`.
    pub fn job_name(&self) -> String {
        match &self.session {
            Some(ses) => format!("nf-{}-{}-{}", self.pipeline, self.subject, ses),
            None => format!("nf-{}-{}", self.pipeline, self.subject),
        }
    }

    /// Parses the display form `pipeline/sub-01[/ses-1]` (prefixes optional).
    pub fn parse(text: &str) -> Option<UnitKey> {
        let mut parts = text.split('/');
        let pipeline = parts.next()?.to_string();
        let subject = Label::subject(parts.next()?).ok()?;
        let session = match parts.next() {
            Some(s) => Some(Label::session(s).ok()?),
            None => None,
        };
        if parts.next().is_some() || pipeline.is_empty() {
            return None;
        }
        Some(UnitKey {
            pipeline,
            subject,
            session,
        })
    }
}

impl fmt::Display for UnitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.session {
            Some(ses) => write!(f, "{}/sub-{}/ses-{}", self.pipeline, self.subject, ses),
            None => write!(f, "{}/sub-{}", self.pipeline, self.subject),
        }
    }
}

/// What one attempt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Submitting,
    Pending,
    Running,
    Succeeded,
    Failed,
    Timeout,
    Oom,
    InfraFailed,
    UpstreamFailed,
    Cancelled,
    Lost,
}

impl RunState {
    pub const ALL: [RunState; 11] = [
        RunState::Submitting,
        RunState::Pending,
        RunState::Running,
        RunState::Succeeded,
        RunState::Failed,
        RunState::Timeout,
        RunState::Oom,
        RunState::InfraFailed,
        RunState::UpstreamFailed,
        RunState::Cancelled,
        RunState::Lost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Submitting => "submitting",
            RunState::Pending => "pending",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Timeout => "timeout",
            RunState::Oom => "oom",
            RunState::InfraFailed => "infra_failed",
            RunState::UpstreamFailed => "upstream_failed",
            RunState::Cancelled => "cancelled",
            RunState::Lost => "lost",
        }
    }

    pub fn parse(text: &str) -> Option<RunState> {
        RunState::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Still owned by the executor: submitting, pending or running.
    /// An attempt that ended badly: worth showing the end of its log.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            RunState::Failed
                | RunState::Timeout
                | RunState::Oom
                | RunState::InfraFailed
                | RunState::Lost
        )
    }

    pub fn in_flight(self) -> bool {
        matches!(
            self,
            RunState::Submitting | RunState::Pending | RunState::Running
        )
    }

    /// A failure that spends one of the unit's attempts.
    pub fn counts_attempt(self) -> bool {
        matches!(self, RunState::Failed | RunState::Timeout | RunState::Oom)
    }

    /// A failure of the infrastructure: retried at once, on its own budget.
    pub fn is_infra(self) -> bool {
        matches!(self, RunState::InfraFailed | RunState::Lost)
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state a unit's audit line says it came from: a unit state, or the
/// state of the run that moved it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditFrom {
    Unit(UnitState),
    Run(RunState),
}

impl fmt::Display for AuditFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuditFrom::Unit(s) => s.fmt(f),
            AuditFrom::Run(s) => s.fmt(f),
        }
    }
}

/// One line of a unit's audit trail: from, to and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitAudit {
    /// `None`: not known (written `-`).
    pub from: Option<AuditFrom>,
    pub to: UnitState,
    pub why: String,
}

impl UnitAudit {
    pub fn new(from: Option<AuditFrom>, to: UnitState, why: impl Into<String>) -> UnitAudit {
        UnitAudit {
            from,
            to,
            why: why.into(),
        }
    }
}

/// What a user reads for a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitState {
    Waiting,
    Queued,
    Running,
    Done,
    Retrying,
    Failed,
    Blocked,
    Cancelled,
    Stale,
    Invalid,
    /// Its pipeline has `enabled: false`: never submitted.
    Disabled,
}

impl UnitState {
    pub const ALL: [UnitState; 11] = [
        UnitState::Waiting,
        UnitState::Queued,
        UnitState::Running,
        UnitState::Done,
        UnitState::Retrying,
        UnitState::Failed,
        UnitState::Blocked,
        UnitState::Cancelled,
        UnitState::Stale,
        UnitState::Invalid,
        UnitState::Disabled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UnitState::Waiting => "waiting",
            UnitState::Queued => "queued",
            UnitState::Running => "running",
            UnitState::Done => "done",
            UnitState::Retrying => "retrying",
            UnitState::Failed => "failed",
            UnitState::Blocked => "blocked",
            UnitState::Cancelled => "cancelled",
            UnitState::Stale => "stale",
            UnitState::Invalid => "invalid",
            UnitState::Disabled => "disabled",
        }
    }

    pub fn parse(text: &str) -> Option<UnitState> {
        UnitState::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl fmt::Display for UnitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a unit needs a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    New,
    Retry,
    UpstreamChanged,
    ConfigChanged,
    Forced,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::New => "new",
            Reason::Retry => "retry",
            Reason::UpstreamChanged => "upstream changed",
            Reason::ConfigChanged => "config changed",
            Reason::Forced => "forced",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Exit codes with which the shell says a command cannot run at all: 126 (found
/// but not executable) and 127 (not found). Retrying cannot help.
pub fn cannot_run(exit_code: i32) -> bool {
    matches!(exit_code, 126 | 127)
}

/// The reason recorded on a run that ended with a non-zero exit code.
pub fn exit_reason(exit_code: i32) -> String {
    match exit_code {
        127 => "the command cannot run (exit code 127: command not found)".to_string(),
        126 => "the command cannot run (exit code 126: not executable)".to_string(),
        code => format!("exit code {code}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_accept_bids_prefix_and_reject_shell() {
        assert_eq!(Label::subject("sub-01").unwrap().as_str(), "01");
        assert_eq!(Label::subject("01").unwrap().as_str(), "01");
        assert!(Label::subject("01; rm -rf ~").is_err());
        assert!(Label::subject("").is_err());
        assert!(Label::subject("sub-").is_err());
        assert!(Label::session("ses-1a").is_ok());
        assert!(Label::new("a_b").is_err());
    }

    #[test]
    fn unit_key_round_trips_through_display() {
        let key = UnitKey::new(
            "bids",
            &Label::new("01").unwrap(),
            Some(&Label::new("2").unwrap()),
        );
        assert_eq!(key.to_string(), "bids/sub-01/ses-2");
        assert_eq!(UnitKey::parse("bids/sub-01/ses-2"), Some(key.clone()));
        assert_eq!(UnitKey::parse("bids/01/2"), Some(key));
        assert_eq!(UnitKey::parse("bids/01; rm/2"), None);
    }
}

#[cfg(test)]
mod label_length_tests {
    use super::*;

    #[test]
    fn a_label_over_64_characters_is_too_long() {
        assert!(Label::new(&"a".repeat(64)).is_ok());
        let e = Label::subject(&format!("sub-{}", "a".repeat(65))).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "`sub-{}…` is too long for a label: 69 characters, at most 64",
                "a".repeat(36)
            )
        );
        let e = Label::subject("01; rm -rf ~").unwrap_err();
        assert_eq!(
            e.to_string(),
            "`01; rm -rf ~` is not a valid BIDS label: use letters and digits only (for example `01` or `sub-01`)"
        );
    }
}
