//! "Why did it fail?" at a glance: each pipeline's `alert_patterns` (e.g.
//! `No space left`, `Excessive topologic defect`) searched for in the log
//! of every unit whose last run failed, and tallied per pipeline.
//!
//! Only the end of a log is read ([`SCAN_BYTES`]): the cause of a failure
//! is near where the job stopped, and a multi-gigabyte log must not make
//! `status` slow. Matching is separate from reading: [`matches`] is pure.

use std::path::Path;

use serde::Serialize;

use crate::config::Config;
use crate::model::UnitKey;
use crate::plan::Plan;
use crate::state::SnapshotRun;

/// How much of the end of a log is searched.
pub const SCAN_BYTES: u64 = 256 * 1024;

/// One pattern of one pipeline, and the units whose last failed run's log
/// matched it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tally {
    pub pipeline: String,
    pub pattern: String,
    pub units: Vec<String>,
}

/// The indices of the patterns found in `text`.
pub fn matches(text: &str, patterns: &[regex::Regex]) -> Vec<usize> {
    patterns
        .iter()
        .enumerate()
        .filter(|(_, p)| p.is_match(text))
        .map(|(i, _)| i)
        .collect()
}

/// The last [`SCAN_BYTES`] of a log, lossily decoded; `None` if unreadable.
pub fn read_end(path: &Path) -> Option<String> {
    crate::output::file_end(path, SCAN_BYTES).map(|(text, _)| text)
}

/// Tallies the patterns over the units of `plan` kept by `keep` whose last
/// run (looked up by `last_run`) failed. Patterns that matched nothing are
/// left out; the order is the config's.
pub fn tally<'a>(
    config: &Config,
    plan: &Plan,
    keep: impl Fn(&UnitKey) -> bool,
    last_run: impl Fn(i64) -> Option<&'a SnapshotRun>,
) -> Vec<Tally> {
    let mut out = Vec::new();
    for pipeline in config
        .pipelines
        .iter()
        .filter(|p| !p.alert_patterns.is_empty())
    {
        let mut hits: Vec<Vec<String>> = vec![Vec::new(); pipeline.alert_patterns.len()];
        for unit in plan
            .units
            .iter()
            .filter(|u| u.key.pipeline == pipeline.name && keep(&u.key))
        {
            let Some(run) = unit.last_run_id.and_then(&last_run) else {
                continue;
            };
            if !run.state.is_failure() {
                continue;
            }
            let Some(text) = read_end(&run.log_path) else {
                continue;
            };
            for i in matches(&text, &pipeline.alert_patterns) {
                hits[i].push(unit.key.to_string());
            }
        }
        for (pattern, units) in pipeline.alert_patterns.iter().zip(hits) {
            if !units.is_empty() {
                out.push(Tally {
                    pipeline: pipeline.name.clone(),
                    pattern: pattern.as_str().to_string(),
                    units,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_found_anywhere_in_the_text_and_case_matters_unless_asked() {
        let patterns = vec![
            regex::Regex::new("No space left").unwrap(),
            regex::Regex::new("(?i)excessive topologic defect").unwrap(),
            regex::Regex::new("Segmentation fault").unwrap(),
        ];
        // The tail of a recon-all log that ran out of disk.
        let log = "mri_convert: writing to /scratch/sub-01/orig.mgz\n\
                   ERROR: Excessive topologic defect encountered\n\
                   cp: error writing 'lh.white': No space left on device\n";
        assert_eq!(matches(log, &patterns), vec![0, 1]);
        assert_eq!(matches("no space LEFT", &patterns), Vec::<usize>::new());
    }

    #[test]
    fn only_the_end_of_a_long_log_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attempt-1.out");
        let mut text = String::from("No space left (early, long gone)\n");
        text.push_str(&"x".repeat(SCAN_BYTES as usize + 10));
        text.push_str("\nSegmentation fault\n");
        std::fs::write(&path, text).unwrap();
        let end = read_end(&path).unwrap();
        assert!(end.contains("Segmentation fault"));
        assert!(!end.contains("No space left"));
        assert_eq!(read_end(&dir.path().join("missing")), None);
    }
}
