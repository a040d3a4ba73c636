//! The one output layer of the commands: what goes to stdout under each of
//! the three modes a user picks.
//!
//! - default (for people): the command's result, with its notes (`N runs
//!   submitted`, `next: …`, hints);
//! - `--json`: one JSON document and nothing else on stdout;
//! - `-q`: a data view (`status`, `show`, `logs`, …) still prints the data
//!   it was asked for; an action (`sync`, `submit`, `cancel`, `retry`,
//!   `discover`, …) prints nothing on success. Errors and warnings go to
//!   stderr in every mode.

use serde_json::Value;

/// How a command's output is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Human,
    Json,
    Quiet,
}

/// Prints a command's output as its mode says.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    pub mode: Mode,
}

impl Printer {
    /// `--json` wins over `-q`: a script asked for a document.
    pub fn new(json: bool, quiet: bool) -> Printer {
        let mode = if json {
            Mode::Json
        } else if quiet {
            Mode::Quiet
        } else {
            Mode::Human
        };
        Printer { mode }
    }

    pub fn json(&self) -> bool {
        self.mode == Mode::Json
    }

    /// Whether notes for people are shown (not with `--json` or `-q`).
    pub fn chatty(&self) -> bool {
        self.mode == Mode::Human
    }

    /// The result of an action: its document with `--json`, its text for
    /// people, nothing with `-q`. Each is built only when it is printed.
    pub fn result(&self, json: impl FnOnce() -> Value, text: impl FnOnce() -> String) {
        match self.mode {
            Mode::Json => super::print_json(&json()),
            Mode::Human => print!("{}", text()),
            Mode::Quiet => {}
        }
    }

    /// The data a view was asked for: its document with `--json`, its text
    /// otherwise (`-q` included).
    pub fn data(&self, json: impl FnOnce() -> Value, text: impl FnOnce() -> String) {
        match self.mode {
            Mode::Json => super::print_json(&json()),
            Mode::Human | Mode::Quiet => print!("{}", text()),
        }
    }

    /// A line for people: shown only by default.
    pub fn note(&self, line: impl std::fmt::Display) {
        if self.chatty() {
            println!("{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_wins_over_quiet() {
        assert_eq!(Printer::new(true, true).mode, Mode::Json);
        assert_eq!(Printer::new(false, true).mode, Mode::Quiet);
        assert_eq!(Printer::new(false, false).mode, Mode::Human);
        assert!(!Printer::new(false, true).chatty());
        assert!(Printer::new(false, false).chatty());
    }
}
