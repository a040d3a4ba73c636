//! Validation on what the headers say: corrupt files, one subject per
//! session, `min_files` over DICOM instances, and `required_series` matched
//! on SeriesDescription or ProtocolName (and ImageType), counted in
//! instances, so that a missing or short series is named by its description.

use crate::config::{MatchOn, SeriesRule, Validation};

use super::{HeaderSummary, SeriesSummary};

/// At most this many series are named when saying what was found instead.
const LISTED: usize = 6;

/// Every problem of a session summarised by its headers, as sentences.
/// `folder_rule` checks a `match_on: folder` rule on folder names (it is the
/// folder-name validation, passed in to keep this module about headers).
pub fn problems(
    summary: &HeaderSummary,
    validation: &Validation,
    folder_rule: &dyn Fn(&SeriesRule) -> Option<String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(why) = &summary.unreadable {
        problems.push(why.clone());
    }
    if summary.corrupt > 0 {
        let named: Vec<String> = summary
            .problems
            .iter()
            .take(3)
            .map(|p| format!("`{}`: {}", p.file, p.why))
            .collect();
        let more = summary.corrupt.saturating_sub(named.len() as u64);
        problems.push(format!(
            "{} corrupt DICOM {}: {}{}",
            summary.corrupt,
            plural(summary.corrupt, "file", "files"),
            named.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ));
    }
    let patients: Vec<&(String, u64)> = summary.patient_ids.present().collect();
    if patients.len() > 1 {
        let listed: Vec<String> = patients
            .iter()
            .map(|(id, n)| format!("`{id}` ({n} {})", plural(*n, "file", "files")))
            .collect();
        problems.push(format!(
            "two subjects in one session: PatientID {}",
            listed.join(", ")
        ));
    }
    if summary.dicom_files < validation.min_files {
        let ignored = if summary.not_dicom > 0 {
            format!(
                " ({} other {} ignored)",
                summary.not_dicom,
                plural(summary.not_dicom, "file", "files")
            )
        } else {
            String::new()
        };
        problems.push(format!(
            "{} DICOM {}, fewer than min_files {}{ignored}",
            summary.dicom_files,
            plural(summary.dicom_files, "file", "files"),
            validation.min_files
        ));
    }
    for rule in &validation.required_series {
        let problem = match rule.match_on {
            MatchOn::Folder => folder_rule(rule),
            MatchOn::Header => series_rule(&summary.series, rule),
        };
        problems.extend(problem);
    }
    problems
}

/// Whether a series answers a rule's `match` and `image_type`.
pub fn matches(series: &SeriesSummary, rule: &SeriesRule) -> bool {
    let named =
        rule.pattern.is_match(&series.description) || rule.pattern.is_match(&series.protocol);
    named
        && rule.image_type.iter().all(|wanted| {
            series
                .image_type
                .iter()
                .any(|t| t.eq_ignore_ascii_case(wanted))
        })
}

fn series_rule(series: &[SeriesSummary], rule: &SeriesRule) -> Option<String> {
    let matching: Vec<&SeriesSummary> = series.iter().filter(|s| matches(s, rule)).collect();
    let image_type = if rule.image_type.is_empty() {
        String::new()
    } else {
        format!(" with ImageType {}", rule.image_type.join("\\"))
    };
    if matching.is_empty() {
        let found: Vec<String> = series.iter().take(LISTED).map(|s| s.label()).collect();
        let found = match (found.is_empty(), series.len() > LISTED) {
            (true, _) => "no series found".to_string(),
            (false, false) => format!("series found: {}", found.join(", ")),
            (false, true) => format!(
                "series found: {} and {} more",
                found.join(", "),
                series.len() - LISTED
            ),
        };
        return Some(format!(
            "series `{}` missing: no SeriesDescription or ProtocolName matches `{}`{image_type} ({found})",
            rule.name,
            rule.pattern.as_str()
        ));
    }
    if let Some(max) = rule.max_series
        && matching.len() as u64 > max
    {
        let labels: Vec<String> = matching.iter().map(|s| s.label()).collect();
        return Some(format!(
            "series `{}`: {} series match ({}), more than max_series {max}",
            rule.name,
            matching.len(),
            labels.join(", ")
        ));
    }
    let best = matching
        .iter()
        .max_by(|a, b| {
            (a.instances, a.frames)
                .cmp(&(b.instances, b.frames))
                .then_with(|| b.number.cmp(&a.number))
        })
        .expect("matching is not empty");
    if best.instances < rule.min_files {
        return Some(format!(
            "series `{}`: {} {} in series {}, fewer than {}",
            rule.name,
            best.instances,
            plural(best.instances, "instance", "instances"),
            best.label(),
            rule.min_files
        ));
    }
    if let Some(min) = rule.min_instances
        && best.frames < min
    {
        return Some(format!(
            "series `{}`: {} {} in series {}, fewer than min_instances {min}",
            rule.name,
            best.frames,
            plural(best.frames, "image", "images"),
            best.label()
        ));
    }
    None
}

/// What is worth saying about a valid session's files without making it
/// invalid: files ignored, compressed pixel data.
pub fn notes(summary: &HeaderSummary) -> Vec<String> {
    let mut notes = Vec::new();
    if summary.not_dicom > 0 {
        notes.push(format!(
            "{} {} not DICOM, ignored",
            summary.not_dicom,
            plural(summary.not_dicom, "file is", "files are")
        ));
    }
    if summary.dicomdirs > 0 {
        notes.push(format!(
            "{} DICOMDIR index {} ignored",
            summary.dicomdirs,
            plural(summary.dicomdirs, "file", "files")
        ));
    }
    for s in &summary.series {
        let compressed: Vec<String> = s
            .transfer_syntaxes
            .iter()
            .filter(|ts| super::read::is_compressed(ts))
            .map(|ts| super::transfer_syntax_name(ts))
            .collect();
        if !compressed.is_empty() {
            notes.push(format!(
                "series {} has compressed pixel data ({}): the converter must decode it",
                s.label(),
                compressed.join(", ")
            ));
        }
    }
    notes
}

fn plural<'a>(n: u64, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}

#[cfg(test)]
mod tests {
    use regex::Regex;

    use super::*;
    use crate::study::dicom::Values;

    fn series(
        number: i64,
        description: &str,
        instances: u64,
        image_type: &[&str],
    ) -> SeriesSummary {
        SeriesSummary {
            uid: format!("1.2.3.{number}"),
            number: Some(number),
            description: description.to_string(),
            protocol: String::new(),
            image_type: image_type.iter().map(|s| s.to_string()).collect(),
            instances,
            frames: instances,
            ..SeriesSummary::default()
        }
    }

    fn summary(series: Vec<SeriesSummary>) -> HeaderSummary {
        HeaderSummary {
            dicom_files: series.iter().map(|s| s.instances).sum(),
            series,
            patient_ids: Values(vec![("P1".to_string(), 1)]),
            ..HeaderSummary::default()
        }
    }

    fn dwi_rule() -> SeriesRule {
        SeriesRule {
            name: "dwi".to_string(),
            pattern: Regex::new("(?i)dwi|dmri").unwrap(),
            min_files: 60,
            ..SeriesRule::default()
        }
    }

    fn check(s: &HeaderSummary, rules: Vec<SeriesRule>) -> Vec<String> {
        let validation = Validation {
            min_files: 1,
            required_series: rules,
        };
        problems(s, &validation, &|_| Some("folder rule".to_string()))
    }

    #[test]
    fn a_short_series_is_named_by_its_description() {
        let s = summary(vec![
            series(2, "T1_MPRAGE", 176, &[]),
            series(5, "DWI_64dir", 12, &[]),
        ]);
        assert_eq!(
            check(&s, vec![dwi_rule()]),
            vec!["series `dwi`: 12 instances in series 5 `DWI_64dir`, fewer than 60"]
        );
    }

    #[test]
    fn a_missing_series_lists_what_was_found() {
        let s = summary(vec![
            series(1, "localizer", 3, &[]),
            series(2, "T1_MPRAGE", 176, &[]),
        ]);
        assert_eq!(
            check(&s, vec![dwi_rule()]),
            vec![
                "series `dwi` missing: no SeriesDescription or ProtocolName matches `(?i)dwi|dmri` \
                 (series found: 1 `localizer`, 2 `T1_MPRAGE`)"
            ]
        );
    }

    #[test]
    fn protocol_name_matches_too() {
        let mut dwi = series(5, "ep2d_diff", 64, &[]);
        dwi.protocol = "dMRI_AP".to_string();
        let s = summary(vec![dwi]);
        assert!(check(&s, vec![dwi_rule()]).is_empty());
    }

    #[test]
    fn image_type_excludes_derived_maps() {
        let s = summary(vec![
            series(5, "DWI_64dir", 64, &["ORIGINAL", "PRIMARY", "DIFFUSION"]),
            series(6, "DWI_64dir_ADC", 64, &["DERIVED", "PRIMARY", "ADC"]),
        ]);
        let mut rule = dwi_rule();
        rule.max_series = Some(1);
        assert_eq!(
            check(&s, vec![rule.clone()]),
            vec![
                "series `dwi`: 2 series match (5 `DWI_64dir`, 6 `DWI_64dir_ADC`), more than max_series 1"
            ]
        );
        rule.image_type = vec!["ORIGINAL".to_string()];
        assert!(check(&s, vec![rule]).is_empty());
    }

    #[test]
    fn min_instances_counts_frames() {
        let mut enhanced = series(5, "DWI", 1, &[]);
        enhanced.frames = 40;
        let s = summary(vec![enhanced]);
        let mut rule = dwi_rule();
        rule.min_files = 1;
        rule.min_instances = Some(65);
        assert_eq!(
            check(&s, vec![rule]),
            vec!["series `dwi`: 40 images in series 5 `DWI`, fewer than min_instances 65"]
        );
    }

    #[test]
    fn two_patients_corrupt_files_and_folder_rules() {
        let mut s = summary(vec![series(5, "DWI", 64, &[])]);
        s.patient_ids = Values(vec![("P1".to_string(), 40), ("P2".to_string(), 24)]);
        s.corrupt = 4;
        s.problems = vec![super::super::FileProblem {
            file: "IM0003".to_string(),
            why: "truncated: the file ends inside its header".to_string(),
        }];
        let mut folder = dwi_rule();
        folder.match_on = MatchOn::Folder;
        assert_eq!(
            check(&s, vec![folder]),
            vec![
                "4 corrupt DICOM files: `IM0003`: truncated: the file ends inside its header and 3 more",
                "two subjects in one session: PatientID `P1` (40 files), `P2` (24 files)",
                "folder rule",
            ]
        );
    }
}
