//! A selection as a user writes it (flags, a request body), checked against
//! the config: unknown pipelines and labels are errors with a suggestion.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::error::Failure;
use crate::model::Label;
use crate::plan::Selection;

/// The selection flags after validation against the config.
#[derive(Debug, Clone, Default)]
pub struct SelectionSpec {
    pub pipelines: Vec<String>,
    pub participants: Vec<String>,
    /// `--participant-file`: more participants, read from a file.
    pub participant_file: Option<PathBuf>,
    pub sessions: Vec<String>,
}

pub fn resolve_selection(config: &Config, spec: &SelectionSpec) -> anyhow::Result<Selection> {
    for p in &spec.pipelines {
        if config.pipeline(p).is_none() {
            let names: Vec<&str> = config.pipelines.iter().map(|p| p.name.as_str()).collect();
            return Err(Failure::user(
                format!(
                    "`--pipeline {p}`: no such pipeline in `{}`",
                    config.file.display()
                ),
                Some(&format!("pipelines: {}", names.join(", "))),
            ));
        }
    }
    let mut subjects = spec
        .participants
        .iter()
        .map(|s| {
            Label::subject(s).map_err(|e| Failure::user(format!("`--participant`: {e}"), None))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(file) = &spec.participant_file {
        subjects.extend(read_participant_file(file)?);
    }
    let sessions = spec
        .sessions
        .iter()
        .map(|s| Label::session(s).map_err(|e| Failure::user(format!("`--session`: {e}"), None)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Selection {
        pipelines: spec.pipelines.clone(),
        subjects,
        sessions,
    })
}

/// `--participant-file FILE`: labels one per line, or separated by spaces or
/// commas; `#` starts a comment. A bad label names its line.
pub fn read_participant_file(file: &Path) -> anyhow::Result<Vec<Label>> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        Failure::user(
            format!(
                "`--participant-file {}`: {e}",
                crate::output::display_path(file)
            ),
            Some("a text file with one participant label per line"),
        )
    })?;
    let mut labels = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default();
        for word in line.split(|c: char| c == ',' || c.is_whitespace()) {
            if word.is_empty() {
                continue;
            }
            labels.push(Label::subject(word).map_err(|e| {
                Failure::user(
                    format!(
                        "`{}` line {}: {e}",
                        crate::output::display_path(file),
                        n + 1
                    ),
                    Some("labels are alphanumeric, as BIDS requires: `01` or `sub-01`"),
                )
            })?);
        }
    }
    if labels.is_empty() {
        return Err(Failure::user(
            format!(
                "`{}` lists no participant",
                crate::output::display_path(file)
            ),
            Some("one label per line, e.g. `01` or `sub-01`"),
        ));
    }
    Ok(labels)
}
