//! The study model shared by every layer: labels, unit keys, levels and states.
//!
//! States use the words of SPEC §3, so what the user reads in `status`, in
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

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{value}` is not a valid BIDS label: use letters and digits only (for example `01` or `sub-01`)"
)]
pub struct LabelError {
    pub value: String,
}

impl Label {
    /// Parses a label, accepting the BIDS prefix (`sub-01` and `01` both give `01`).
    pub fn parse_with_prefix(value: &str, prefix: &str) -> Result<Label, LabelError> {
        let trimmed = value.trim();
        let bare = trimmed.strip_prefix(prefix).unwrap_or(trimmed);
        Label::new(bare).map_err(|_| LabelError {
            value: value.to_string(),
        })
    }

    pub fn subject(value: &str) -> Result<Label, LabelError> {
        Label::parse_with_prefix(value, "sub-")
    }

    pub fn session(value: &str) -> Result<Label, LabelError> {
        Label::parse_with_prefix(value, "ses-")
    }

    /// A bare label: non-empty, ASCII alphanumeric, at most 64 characters.
    pub fn new(value: &str) -> Result<Label, LabelError> {
        if !value.is_empty()
            && value.len() <= 64
            && value.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            Ok(Label(Arc::from(value)))
        } else {
            Err(LabelError {
                value: value.to_string(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
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

/// What one attempt did (SPEC §3).
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

/// What a user reads for a unit (SPEC §3).
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
}

impl UnitState {
    pub const ALL: [UnitState; 10] = [
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

/// Why a unit needs a run (SPEC §2).
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
