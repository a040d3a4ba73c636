//! Is a session complete enough to process? `min_files` and `required_series`.
//!
//! A failed check is a sentence for the user, naming what is missing, because
//! the fix is usually on the scanner side (a series not exported, an export
//! cut short) and the person reading it is not the one who wrote the config.

use crate::config::{SeriesRule, Validation};

use super::scan::FolderStats;

/// `None` when the session is valid, else every problem found, joined by `; `.
pub(crate) fn validate(stats: &FolderStats, validation: &Validation) -> Option<String> {
    let mut problems = Vec::new();
    if stats.n_files < validation.min_files {
        problems.push(format!(
            "{} {}, fewer than min_files {}",
            stats.n_files,
            plural(stats.n_files, "file", "files"),
            validation.min_files
        ));
    }
    for rule in &validation.required_series {
        problems.extend(folder_rule(stats, rule));
    }
    if problems.is_empty() {
        None
    } else {
        Some(problems.join("; "))
    }
}

/// One `required_series` rule on the session's subfolder names.
pub(crate) fn folder_rule(stats: &FolderStats, rule: &SeriesRule) -> Option<String> {
    let best = stats
        .series
        .iter()
        .filter(|(name, _)| rule.pattern.is_match(name))
        .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)));
    match best {
        None => Some(format!(
            "series `{}` missing: no subfolder matches `{}`",
            rule.name,
            rule.pattern.as_str()
        )),
        Some((folder, n)) if *n < rule.min_files => Some(format!(
            "series `{}`: {} {} in `{}`, fewer than {}",
            rule.name,
            n,
            plural(*n, "file", "files"),
            folder,
            rule.min_files
        )),
        Some(_) => None,
    }
}

fn plural<'a>(n: u64, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use regex::Regex;

    use super::*;

    fn stats(n_files: u64, series: &[(&str, u64)]) -> FolderStats {
        FolderStats {
            n_files,
            series: series.iter().map(|(n, c)| (n.to_string(), *c)).collect(),
            newest: SystemTime::UNIX_EPOCH,
            fingerprint: 0,
        }
    }

    fn rules(min_files: u64) -> Validation {
        Validation {
            min_files,
            required_series: vec![
                SeriesRule {
                    name: "dwi".to_string(),
                    pattern: Regex::new("(?i)dmri|dwi").unwrap(),
                    min_files: 60,
                    ..SeriesRule::default()
                },
                SeriesRule {
                    name: "t1w".to_string(),
                    pattern: Regex::new("(?i)t1|mprage").unwrap(),
                    min_files: 1,
                    ..SeriesRule::default()
                },
            ],
        }
    }

    #[test]
    fn a_complete_session_is_valid() {
        let s = stats(300, &[("DWI_64dir", 64), ("dwi_b0", 2), ("T1_MPRAGE", 176)]);
        assert_eq!(validate(&s, &rules(10)), None);
    }

    #[test]
    fn too_few_files() {
        let s = stats(12, &[("DWI", 64), ("T1", 1)]);
        assert_eq!(
            validate(&s, &rules(60)).unwrap(),
            "12 files, fewer than min_files 60"
        );
    }

    #[test]
    fn missing_series_names_the_pattern() {
        let s = stats(300, &[("DTI_64dir", 64), ("T1", 1)]);
        assert_eq!(
            validate(&s, &rules(10)).unwrap(),
            "series `dwi` missing: no subfolder matches `(?i)dmri|dwi`"
        );
    }

    #[test]
    fn short_series_names_the_best_folder() {
        let s = stats(300, &[("dwi_b0", 2), ("DWI_64dir", 12), ("T1", 1)]);
        assert_eq!(
            validate(&s, &rules(10)).unwrap(),
            "series `dwi`: 12 files in `DWI_64dir`, fewer than 60"
        );
    }

    #[test]
    fn every_problem_is_listed() {
        let s = stats(1, &[]);
        let text = validate(&s, &rules(10)).unwrap();
        assert_eq!(text.matches("; ").count(), 2, "{text}");
        assert!(text.starts_with("1 file, fewer than min_files 10"));
    }
}
