//! Config errors that point at the fix: file, line, column, key path, hint.
//!
//! A config is read by cron on a login node as often as by a person, so every
//! message must say where (`nfslurm.yaml:14:5`), what (`pipelines.bids.resorces`)
//! and how to fix it, in one place, readable without colour.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why a config could not be found, read or accepted.
///
/// `Display` gives the message (`nfslurm.yaml:14:5: unknown key …`) without
/// the hint; [`ConfigError::hint`] gives the hint, for the caller's `hint:`
/// line, and [`ConfigError::report`] both, as a user should read them.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file exists (or was named) but could not be read. The
    /// I/O error is part of the message (callers print the message alone).
    #[error("cannot read `{}`: {error}", path.display())]
    Read { path: PathBuf, error: io::Error },
    /// No config file was named and none was found.
    #[error("{}", not_found_message(tried))]
    NotFound {
        /// What was looked at, in order, for the message.
        tried: Vec<String>,
    },
    /// The file was read but is not a valid config.
    #[error("{0}")]
    Invalid(Box<Diagnostic>),
}

fn not_found_message(tried: &[String]) -> String {
    format!("no config file found (tried {})", tried.join(", "))
}

const NOT_FOUND_HINT: &str = "run `nfslurm init` to write a starter `nfslurm.yaml`, \
     or point to one with `--config PATH` or `NFSLURM_CONFIG`";

impl ConfigError {
    /// The hint alone, where there is one.
    pub fn hint(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::NotFound { .. } => Some(NOT_FOUND_HINT),
            ConfigError::Invalid(d) => d.hint.as_deref(),
        }
    }

    /// The message, then `hint: …` on its own line when there is a hint.
    pub fn report(&self) -> String {
        match self.hint() {
            Some(hint) => format!("{self}\nhint: {hint}"),
            None => self.to_string(),
        }
    }

    /// The structured diagnostic of an invalid config.
    pub fn diagnostic(&self) -> Option<&Diagnostic> {
        match self {
            ConfigError::Invalid(d) => Some(d),
            _ => None,
        }
    }
}

/// Where a config error is and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file, as it should be shown (the config or a site config).
    pub file: String,
    /// 1-based line, where known.
    pub line: Option<u64>,
    /// 1-based column, where known.
    pub column: Option<u64>,
    /// The key path, e.g. `pipelines.qsiprep.resources.mem`, where one applies.
    pub key: Option<String>,
    /// What is wrong: no trailing period, values in backticks.
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

/// A position in a YAML source: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Loc {
    pub line: u64,
    pub column: u64,
}

/// Builds diagnostics for one source file.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    /// As shown in messages.
    pub name: String,
}

impl Source {
    pub fn error(
        &self,
        loc: Option<Loc>,
        key: Option<&str>,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> ConfigError {
        ConfigError::Invalid(Box::new(Diagnostic {
            file: self.name.clone(),
            line: loc.map(|l| l.line),
            column: loc.map(|l| l.column),
            key: key.map(str::to_string),
            message: message.into(),
            hint,
        }))
    }

    /// An error at a key's position.
    pub fn at(
        &self,
        loc: Loc,
        key: &str,
        message: impl Into<String>,
        hint: impl Into<Option<String>>,
    ) -> ConfigError {
        self.error(Some(loc), Some(key), message, hint.into())
    }
}

/// The candidate closest to `word`, if close enough to be a likely typo.
pub(crate) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (strsim::levenshtein(&lower, c), *c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(1) || (*d <= 2 && c.len() > 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// `` `a`, `b`, `c` ``
pub(crate) fn backticked<S: AsRef<str>>(items: &[S]) -> String {
    items
        .iter()
        .map(|s| format!("`{}`", s.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_are_close_only() {
        let keys = ["resources", "level", "command", "depends_on", "cpus", "mem"];
        assert_eq!(closest("resorces", &keys), Some("resources"));
        assert_eq!(closest("dependson", &keys), Some("depends_on"));
        assert_eq!(closest("Level", &keys), Some("level"));
        assert_eq!(closest("memory", &keys), None);
        assert_eq!(closest("xyz", &keys), None);
        assert_eq!(closest("cpu", &keys), Some("cpus"));
    }

    #[test]
    fn display_has_location_and_hint() {
        let src = Source {
            name: "nfslurm.yaml".into(),
        };
        let err = src.at(
            Loc { line: 3, column: 5 },
            "a.b",
            "bad `x`",
            Some("do `y`".to_string()),
        );
        assert_eq!(err.to_string(), "nfslurm.yaml:3:5: bad `x`");
        assert_eq!(err.hint(), Some("do `y`"));
        assert_eq!(err.report(), "nfslurm.yaml:3:5: bad `x`\nhint: do `y`");
    }
}
