//! Discovery: scan `dicom_root`, map scan IDs through the CSV, validate sessions.
//!
//! [`discover`] is what `nfslurm discover` and every `sync` run first. It
//! reads the file system and the mapping CSV and returns a
//! [`DiscoveryReport`]; it writes nothing, so registering the sessions (and
//! deciding which are new) is the caller's business.
//!
//! The order of the checks is chosen for a cron job over a big, slow tree:
//!
//! 1. list the direct children of `dicom_root` whose name matches the
//!    pattern (one `read_dir`, one regex match per name);
//! 2. map each scan ID through the CSV: an unmapped folder is reported as
//!    unmapped at once, without walking it, so the mapping can be fixed while
//!    the data are still being copied, and an unmapped phantom scan costs
//!    nothing on every sync;
//! 3. walk each mapped folder once (a few threads), stopping as soon as an
//!    entry modified within `settle` shows that it is still being copied;
//! 4. validate file counts and required series;
//! 5. give each session its label and reject duplicate labels.
//!
//! A scan ID identifies one session: two folders giving the same
//! scan ID (through a pattern capture) are both reported invalid, as are two
//! sessions ending up with the same (subject, session) labels.
//!
//! Session labels, in order of precedence: the mapping's session column (when
//! configured and the cell is not empty); the pattern's `session` capture;
//! else the folder's ordinal within its subject, counting every mapped folder
//! of that subject (settling and invalid ones too, so that labels do not shift
//! while a folder is being copied), ordered by scan ID as plain strings.

pub mod dicom;
mod fingerprint;
mod mapping;
mod scan;
mod validate;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use regex::Regex;

use crate::config::{DicomMode, Discovery, ScanIdFrom};
use crate::model::Label;

pub use fingerprint::study_fingerprint;
pub use mapping::{Mapping, MappingProblem, MappingRow, load_mapping, parse_mapping};

use dicom::{HeaderKey, HeaderSummary, KnownHeaders};
use scan::Walk;

/// Why a session folder name is refused (a control character, or a
/// character a shell reads as code), or `None` when it is safe in a script.
pub fn unsafe_folder_name(name: &str) -> Option<String> {
    scan::unsafe_name(name)
}

#[derive(Debug, thiserror::Error)]
pub enum StudyError {
    #[error("cannot read the mapping file `{}`", file.display())]
    MappingRead {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse the mapping file `{}` as CSV", file.display())]
    MappingCsv {
        file: PathBuf,
        #[source]
        source: csv::Error,
    },
    #[error(
        "the mapping file `{}` has no column `{column}` ({})",
        file.display(),
        describe_columns(found)
    )]
    MissingColumn {
        file: PathBuf,
        column: String,
        found: Vec<String>,
    },
    #[error(
        "the mapping file `{}` has two columns named `{column}` (columns {first} and {second} of line 1)",
        file.display()
    )]
    DuplicateColumn {
        file: PathBuf,
        column: String,
        first: usize,
        second: usize,
    },
    #[error("cannot list the DICOM folder `{}`", path.display())]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StudyError {
    /// What to do about it, for the `hint:` line.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            StudyError::DuplicateColumn { .. } => {
                Some("rename or delete one of the two columns, so that each name is used once")
            }
            StudyError::MissingColumn { .. } => Some(
                "name the columns in `discovery.mapping` (`scan_id_column`, `subject_column`, `session_column`) as the header row spells them",
            ),
            _ => None,
        }
    }
}

fn describe_columns(found: &[String]) -> String {
    if found.iter().all(|c| c.is_empty()) {
        "the file has no header row".to_string()
    } else {
        let names: Vec<String> = found
            .iter()
            .map(|c| format!("`{}`", crate::output::escape_controls(c)))
            .collect();
        format!("columns found: {}", names.join(", "))
    }
}

/// A mapped session folder that was walked: valid when `problem` is `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundSession {
    pub scan_id: String,
    pub folder: PathBuf,
    pub subject: Label,
    pub session: Label,
    /// Regular files, recursively, dot-files excluded.
    pub n_files: u64,
    /// Immediate subfolders and their recursive file counts, by name.
    pub series: Vec<(String, u64)>,
    /// `None` = valid; else what is wrong, as a sentence
    /// (`12 files, fewer than min_files 60`).
    pub problem: Option<String>,
    /// Newest mtime of the folder and everything in it.
    pub mtime: SystemTime,
    /// What the DICOM headers say, when the session was judged on them.
    pub headers: Option<Arc<HeaderSummary>>,
}

impl FoundSession {
    pub fn is_valid(&self) -> bool {
        self.problem.is_none()
    }
}

/// A session folder whose scan ID is not in the mapping CSV (or only in rows
/// with a problem, see [`DiscoveryReport::problems`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmapped {
    pub scan_id: String,
    pub folder: PathBuf,
}

/// A folder left alone this time, and why: still being copied, name not
/// matching the pattern, vanished during the scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub folder: PathBuf,
    pub why: String,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct DiscoveryReport {
    /// Valid and invalid sessions, sorted by (subject, session).
    pub sessions: Vec<FoundSession>,
    /// Sorted by scan ID.
    pub unmapped: Vec<Unmapped>,
    /// Sorted by folder.
    pub skipped: Vec<Skipped>,
    /// Rows of the mapping CSV that could not be used, by line.
    pub problems: Vec<MappingProblem>,
    /// Header summaries read this time (the folder changed or was new):
    /// (folder, fingerprint, summary), to be kept for the next discovery.
    pub headers_read: Vec<(PathBuf, String, HeaderSummary)>,
    /// Validation verdicts reached this time, to keep beside the summaries:
    /// (folder, verdict key, judged on headers, problem).
    pub verdicts: Vec<(PathBuf, String, bool, Option<String>)>,
}

impl DiscoveryReport {
    pub fn valid(&self) -> impl Iterator<Item = &FoundSession> {
        self.sessions.iter().filter(|s| s.is_valid())
    }

    pub fn invalid(&self) -> impl Iterator<Item = &FoundSession> {
        self.sessions.iter().filter(|s| !s.is_valid())
    }
}

/// Scans `dicom_root`, maps and validates its session folders (see the module
/// documentation for the rules). `now` is a parameter so that the settle rule
/// can be tested. Reads the DICOM headers of every session (see
/// [`discover_known`] to skip those already read).
pub fn discover(
    discovery: &Discovery,
    dicom_root: &Path,
    now: SystemTime,
) -> Result<DiscoveryReport, StudyError> {
    discover_known(discovery, dicom_root, now, KnownHeaders::new())
}

/// [`discover`], with the header summaries already read: a folder whose
/// fingerprint is that of its entry in `known` is not read again.
pub fn discover_known(
    discovery: &Discovery,
    dicom_root: &Path,
    now: SystemTime,
    known: KnownHeaders,
) -> Result<DiscoveryReport, StudyError> {
    let (mapping, problems) = load_mapping(&discovery.mapping)?;
    discover_with_mapping(discovery, &mapping, problems, dicom_root, now, known)
}

/// A walked folder on its way to becoming a session.
struct Walked<'m> {
    candidate: scan::Candidate,
    row: Option<&'m MappingRow>,
    /// The walk's figures, or why the folder cannot be read.
    stats: Result<scan::FolderStats, String>,
    headers: Option<Arc<HeaderSummary>>,
    /// A kept verdict for these files under these rules: (on headers, problem).
    verdict: Option<(bool, Option<String>)>,
}

impl Walked<'_> {
    /// Whether this session is judged on its headers.
    fn on_headers(&self, mode: DicomMode) -> bool {
        match (mode, &self.headers) {
            (DicomMode::Off, _) | (_, None) => false,
            (DicomMode::Headers, Some(_)) => true,
            (DicomMode::Auto, Some(h)) => h.dicom_files + h.corrupt + h.dicomdirs > 0,
        }
    }
}

/// [`discover`] with a mapping already loaded; `problems` are passed through
/// to the report.
pub fn discover_with_mapping(
    discovery: &Discovery,
    mapping: &Mapping,
    problems: Vec<MappingProblem>,
    dicom_root: &Path,
    now: SystemTime,
    mut known: KnownHeaders,
) -> Result<DiscoveryReport, StudyError> {
    let header_key = match discovery.mapping.scan_id_from {
        ScanIdFrom::Header(key) => Some(key),
        ScanIdFrom::Folder => None,
    };
    // With the scan ID in the headers, any folder may be a session: the
    // pattern is applied to the header value instead.
    let any_name = Regex::new("(?s)^.+$").expect("a valid regex");
    let listing_pattern = if header_key.is_some() {
        &any_name
    } else {
        &discovery.pattern
    };
    let (candidates, mut skipped) = scan::list_candidates(dicom_root, listing_pattern)?;

    let mut unmapped = Vec::new();
    let mut to_walk = Vec::new();
    for candidate in candidates {
        if header_key.is_some() {
            to_walk.push((candidate, None));
            continue;
        }
        match mapping.get(&candidate.scan_id) {
            Some(row) => to_walk.push((candidate, Some(row))),
            None => unmapped.push(Unmapped {
                scan_id: candidate.scan_id,
                folder: candidate.folder,
            }),
        }
    }

    let cutoff = now
        .checked_sub(Duration::from_secs(discovery.settle_s))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let folders: Vec<&Path> = to_walk.iter().map(|(c, _)| c.folder.as_path()).collect();
    let walks = scan::walk_all(&folders, cutoff);

    let mut walked: Vec<Walked> = Vec::new();
    for ((candidate, row), walk) in to_walk.into_iter().zip(walks) {
        let stats = match walk {
            Walk::Settling { modified } => {
                skipped.push(Skipped {
                    folder: candidate.folder,
                    why: settling_reason(modified, now, discovery.settle_s),
                });
                continue;
            }
            Walk::Vanished => {
                skipped.push(Skipped {
                    folder: candidate.folder,
                    why: "folder disappeared during the scan".to_string(),
                });
                continue;
            }
            Walk::Unreadable(why) => Err(why),
            Walk::Done(stats) => Ok(stats),
        };
        walked.push(Walked {
            candidate,
            row,
            stats,
            headers: None,
            verdict: None,
        });
    }

    // Headers: from `known` when the folder is unchanged, else read now.
    let mut headers_read = Vec::new();
    let verdict_key = dicom::verdict_key(discovery);
    if discovery.dicom != DicomMode::Off {
        let mut to_read = Vec::new();
        for (i, w) in walked.iter_mut().enumerate() {
            let Ok(stats) = &w.stats else { continue };
            let fingerprint = fingerprint_text(stats.fingerprint);
            match known.remove(&w.candidate.folder) {
                Some(k) if k.fingerprint == fingerprint => match (k.verdict, k.summary) {
                    (Some((key, on_headers, problem)), _)
                        if key == verdict_key && header_key.is_none() =>
                    {
                        w.verdict = Some((on_headers, problem));
                    }
                    (_, Some(summary)) => w.headers = Some(Arc::new(summary)),
                    (_, None) => to_read.push((i, fingerprint)),
                },
                _ => to_read.push((i, fingerprint)),
            }
        }
        let paths: Vec<&Path> = to_read
            .iter()
            .map(|(i, _)| walked[*i].candidate.folder.as_path())
            .collect();
        let summaries = dicom::summarize_all(&paths);
        for ((i, fingerprint), summary) in to_read.into_iter().zip(summaries) {
            headers_read.push((
                walked[i].candidate.folder.clone(),
                fingerprint,
                summary.clone(),
            ));
            walked[i].headers = Some(Arc::new(summary));
        }
    }

    // The scan ID from the headers, and the mapping row it leads to.
    if let Some(key) = header_key {
        let mut kept = Vec::new();
        for mut w in walked {
            match scan_id_from_headers(&w, key, discovery) {
                Err(why) => skipped.push(Skipped {
                    folder: w.candidate.folder,
                    why,
                }),
                Ok((scan_id, session)) => match mapping.get(&scan_id) {
                    Some(row) => {
                        w.candidate.scan_id = scan_id;
                        w.candidate.session = session;
                        w.row = Some(row);
                        kept.push(w);
                    }
                    None => unmapped.push(Unmapped {
                        scan_id,
                        folder: w.candidate.folder,
                    }),
                },
            }
        }
        walked = kept;
    }

    let mapped: Vec<(scan::Candidate, &MappingRow)> = walked
        .iter()
        .map(|w| {
            (
                w.candidate.clone(),
                w.row.expect("every kept folder is mapped"),
            )
        })
        .collect();
    let ordinals = ordinals(&mapped);

    let mut sessions = Vec::new();
    let mut verdicts = Vec::new();
    for (w, ordinal) in walked.into_iter().zip(ordinals) {
        let on_headers = match &w.verdict {
            Some((on_headers, _)) => *on_headers,
            None => w.on_headers(discovery.dicom),
        };
        let row = w.row.expect("every kept folder is mapped");
        let candidate = w.candidate;
        let (stats, mut problems) = match w.stats {
            Err(why) => (None, vec![why]),
            Ok(stats) if w.verdict.is_some() => {
                let problem = w.verdict.and_then(|(_, p)| p);
                (Some(stats), problem.into_iter().collect())
            }
            Ok(stats) => {
                let problems = match (&w.headers, on_headers) {
                    (Some(headers), true) => {
                        dicom::validate::problems(headers, &discovery.validation, &|rule| {
                            validate::folder_rule(&stats, rule)
                        })
                    }
                    _ if discovery.dicom == DicomMode::Headers => {
                        vec!["no DICOM file (`discovery.dicom: headers`)".to_string()]
                    }
                    _ => validate::validate(&stats, &discovery.validation)
                        .into_iter()
                        .collect(),
                };
                if discovery.dicom != DicomMode::Off {
                    verdicts.push((
                        candidate.folder.clone(),
                        verdict_key.clone(),
                        on_headers,
                        (!problems.is_empty()).then(|| problems.join("; ")),
                    ));
                }
                (Some(stats), problems)
            }
        };

        let session = match (&row.session, &candidate.session) {
            (Some(label), _) => label.clone(),
            (None, Some(text)) => match Label::session(text) {
                Ok(label) => label,
                Err(e) => {
                    problems.push(format!(
                        "session `{}` from the folder name {}",
                        e.shown(),
                        e.reason()
                    ));
                    ordinal_label(ordinal)
                }
            },
            (None, None) => ordinal_label(ordinal),
        };

        let (n_files, series, mtime) = match stats {
            Some(s) => (s.n_files, s.series, s.newest),
            None => (0, Vec::new(), SystemTime::UNIX_EPOCH),
        };
        sessions.push(FoundSession {
            scan_id: candidate.scan_id,
            folder: candidate.folder,
            subject: row.subject.clone(),
            session,
            n_files,
            series,
            problem: (!problems.is_empty()).then(|| problems.join("; ")),
            mtime,
            headers: if on_headers { w.headers } else { None },
        });
    }

    reject_duplicates(&mut sessions);

    sessions.sort_by(|a, b| {
        (&a.subject, &a.session, &a.scan_id, &a.folder)
            .cmp(&(&b.subject, &b.session, &b.scan_id, &b.folder))
    });
    unmapped.sort_by(|a, b| (&a.scan_id, &a.folder).cmp(&(&b.scan_id, &b.folder)));
    skipped.sort_by(|a, b| a.folder.cmp(&b.folder));
    // Problems quote names from the disk (series folders, paths): stored and
    // shown, they never carry a raw control character.
    for s in &mut sessions {
        if let Some(p) = &mut s.problem {
            *p = crate::output::escape_controls(p).into_owned();
        }
    }
    for k in &mut skipped {
        k.why = crate::output::escape_controls(&k.why).into_owned();
    }
    headers_read.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(DiscoveryReport {
        sessions,
        unmapped,
        skipped,
        problems,
        headers_read,
        verdicts,
    })
}

/// A folder's fingerprint as stored.
pub fn fingerprint_text(fingerprint: u64) -> String {
    format!("{fingerprint:016x}")
}

/// The scan ID (and the pattern's `session` capture) from one header
/// attribute, which must have a single value in the session and pass the
/// discovery pattern as a folder name would; else why not.
fn scan_id_from_headers(
    w: &Walked,
    key: HeaderKey,
    discovery: &Discovery,
) -> Result<(String, Option<String>), String> {
    let attribute = key.as_str();
    if let Err(why) = &w.stats {
        return Err(why.clone());
    }
    let Some(headers) = w
        .headers
        .as_deref()
        .filter(|_| w.on_headers(discovery.dicom))
    else {
        return Err(format!(
            "no DICOM file to take the scan ID from (`scan_id_from: header:{attribute}`)"
        ));
    };
    let values: Vec<&(String, u64)> = headers.values_of(key).present().collect();
    let value = match values.as_slice() {
        [] => {
            return Err(format!(
                "no {attribute} in the DICOM headers, so no scan ID"
            ));
        }
        [(value, _)] => value.as_str(),
        many => {
            let listed: Vec<String> = many
                .iter()
                .map(|(v, n)| format!("`{v}` ({n} files)"))
                .collect();
            return Err(format!(
                "two subjects in one session: {attribute} {}",
                listed.join(", ")
            ));
        }
    };
    let pattern = &discovery.pattern;
    let Some(captures) = pattern.captures(value) else {
        return Err(format!(
            "{attribute} `{value}` does not match the pattern `{}`",
            pattern.as_str()
        ));
    };
    let scan_id = captures
        .name("scan_id")
        .or_else(|| captures.get(0))
        .map(|m| m.as_str().to_string())
        .filter(|s| !s.is_empty());
    let Some(scan_id) = scan_id else {
        return Err(format!(
            "the pattern `{}` matched {attribute} `{value}` but captured no scan ID",
            pattern.as_str()
        ));
    };
    let session = captures.name("session").map(|m| m.as_str().to_string());
    Ok((scan_id, session))
}

/// Each mapped folder's 1-based ordinal among the mapped folders of its
/// subject, ordered by scan ID (then folder), in the order of `mapped`.
fn ordinals(mapped: &[(scan::Candidate, &MappingRow)]) -> Vec<usize> {
    let mut by_subject: HashMap<&Label, Vec<usize>> = HashMap::new();
    for (i, (_, row)) in mapped.iter().enumerate() {
        by_subject.entry(&row.subject).or_default().push(i);
    }
    let mut ordinals = vec![0; mapped.len()];
    for indices in by_subject.values_mut() {
        indices.sort_by(|&a, &b| {
            let (ca, cb) = (&mapped[a].0, &mapped[b].0);
            (&ca.scan_id, &ca.folder).cmp(&(&cb.scan_id, &cb.folder))
        });
        for (n, &i) in indices.iter().enumerate() {
            ordinals[i] = n + 1;
        }
    }
    ordinals
}

fn ordinal_label(ordinal: usize) -> Label {
    Label::new(&ordinal.to_string()).expect("a positive integer is a valid BIDS label")
}

/// Two folders with the same scan ID, or two sessions with the same (subject,
/// session) labels: a problem for each of them, so neither is registered until
/// the mapping or the folders are fixed.
fn reject_duplicates(sessions: &mut [FoundSession]) {
    let mut by_scan: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut by_label: BTreeMap<(&Label, &Label), Vec<usize>> = BTreeMap::new();
    for (i, s) in sessions.iter().enumerate() {
        by_scan.entry(&s.scan_id).or_default().push(i);
        by_label
            .entry((&s.subject, &s.session))
            .or_default()
            .push(i);
    }
    let mut extra: Vec<(usize, String)> = Vec::new();
    for indices in by_scan.values().filter(|v| v.len() > 1) {
        for &i in indices {
            let others = other_folders(sessions, indices, i);
            extra.push((
                i,
                format!(
                    "scan ID `{}` is also the scan ID of {others}",
                    sessions[i].scan_id
                ),
            ));
        }
    }
    for ((subject, session), indices) in by_label.iter().filter(|(_, v)| v.len() > 1) {
        for &i in indices {
            let others = other_folders(sessions, indices, i);
            extra.push((
                i,
                format!("sub-{subject} ses-{session} is also the label of {others}"),
            ));
        }
    }
    for (i, message) in extra {
        let problem = &mut sessions[i].problem;
        *problem = Some(match problem.take() {
            Some(previous) => format!("{previous}; {message}"),
            None => message,
        });
    }
}

fn other_folders(sessions: &[FoundSession], indices: &[usize], me: usize) -> String {
    let names: Vec<String> = indices
        .iter()
        .filter(|&&j| j != me)
        .map(|&j| format!("`{}`", sessions[j].folder.display()))
        .collect();
    names.join(", ")
}

fn settling_reason(modified: Option<SystemTime>, now: SystemTime, settle_s: u64) -> String {
    let settle = crate::output::duration(settle_s as i64);
    match modified {
        Some(t) => match now.duration_since(t) {
            Ok(ago) => format!(
                "settling (modified {} ago, settle {settle})",
                crate::output::duration(ago.as_secs() as i64)
            ),
            Err(_) => format!("settling (modified in the future: clock skew?, settle {settle})"),
        },
        None => format!("settling (files changed during the scan, settle {settle})"),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use regex::Regex;

    use super::*;
    use crate::config::{MappingConfig, SeriesRule, Validation};

    struct Study {
        _dir: tempfile::TempDir,
        root: PathBuf,
        discovery: Discovery,
    }

    /// A study in a temp dir with a mapping CSV and the given pattern.
    fn study(pattern: &str, csv: &str, session_column: bool) -> Study {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("dicom");
        fs::create_dir_all(&root).unwrap();
        let file = dir.path().join("mapping.csv");
        fs::write(&file, csv).unwrap();
        let discovery = Discovery {
            pattern: Regex::new(pattern).unwrap(),
            mapping: MappingConfig {
                file,
                scan_id_column: "ScanID".to_string(),
                subject_column: "SubjectCode".to_string(),
                session_column: session_column.then(|| "SessionID".to_string()),
                scan_id_from: Default::default(),
            },
            validation: Validation {
                min_files: 2,
                required_series: vec![],
            },
            settle_s: 1800,
            dicom: Default::default(),
        };
        Study {
            _dir: dir,
            root,
            discovery,
        }
    }

    fn add_session(root: &Path, name: &str, series: &[(&str, usize)]) -> PathBuf {
        let folder = root.join(name);
        fs::create_dir_all(&folder).unwrap();
        for (s, n) in series {
            fs::create_dir_all(folder.join(s)).unwrap();
            for i in 0..*n {
                fs::write(folder.join(s).join(format!("IM{i:04}.dcm")), b"dicom").unwrap();
            }
        }
        folder
    }

    /// Long after every file was written: nothing is settling.
    fn later() -> SystemTime {
        SystemTime::now() + Duration::from_secs(86_400)
    }

    fn labels(report: &DiscoveryReport) -> Vec<(String, String, String)> {
        report
            .sessions
            .iter()
            .map(|s| {
                (
                    s.scan_id.clone(),
                    s.subject.to_string(),
                    s.session.to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn ordinal_sessions_follow_scan_id_order_within_a_subject() {
        let s = study(
            "^(?P<scan_id>[A-Za-z0-9_]+)$",
            "ScanID,SubjectCode\nS200,01\nS100,01\nS300,02\n",
            false,
        );
        for name in ["S200", "S100", "S300"] {
            add_session(&s.root, name, &[("T1", 3)]);
        }
        let report = discover(&s.discovery, &s.root, later()).unwrap();
        assert_eq!(
            labels(&report),
            vec![
                ("S100".into(), "01".into(), "1".into()),
                ("S200".into(), "01".into(), "2".into()),
                ("S300".into(), "02".into(), "1".into()),
            ]
        );
        assert!(report.sessions.iter().all(|s| s.is_valid()));
        assert_eq!(report.sessions[0].n_files, 3);
        assert_eq!(report.sessions[0].series, vec![("T1".to_string(), 3)]);
    }

    #[test]
    fn session_column_wins_over_ordinals() {
        let s = study(
            "^(?P<scan_id>[A-Za-z0-9_]+)$",
            "ScanID,SubjectCode,SessionID\nS1,sub-01,ses-pre\nS2,01,post\nS3,02,\n",
            true,
        );
        for name in ["S1", "S2", "S3"] {
            add_session(&s.root, name, &[("T1", 3)]);
        }
        let report = discover(&s.discovery, &s.root, later()).unwrap();
        assert_eq!(
            labels(&report),
            vec![
                ("S2".into(), "01".into(), "post".into()),
                ("S1".into(), "01".into(), "pre".into()),
                ("S3".into(), "02".into(), "1".into()),
            ]
        );
    }

    #[test]
    fn pattern_groups_give_scan_id_and_session() {
        let s = study(
            r"^(?P<scan_id>P\d+_V(?P<session>\d+))(_.*)?$",
            "ScanID,SubjectCode\nP7_V1,07\nP7_V2,07\nP8_V1,08\n",
            false,
        );
        add_session(&s.root, "P7_V1", &[("T1", 3)]);
        add_session(&s.root, "P7_V2", &[("T1", 3)]);
        add_session(&s.root, "P8_V1", &[("T1", 3)]);
        add_session(&s.root, "P8_V1_redo", &[("T1", 3)]);
        add_session(&s.root, "notes", &[]);
        let report = discover(&s.discovery, &s.root, later()).unwrap();
        assert_eq!(
            labels(&report),
            vec![
                ("P7_V1".into(), "07".into(), "1".into()),
                ("P7_V2".into(), "07".into(), "2".into()),
                ("P8_V1".into(), "08".into(), "1".into()),
                ("P8_V1".into(), "08".into(), "1".into()),
            ]
        );
        assert!(report.sessions[0].is_valid() && report.sessions[1].is_valid());
        // A scan ID identifies one session: two folders giving `P8_V1` are
        // both rejected.
        let problem = report.sessions[2].problem.as_deref().unwrap();
        assert!(
            problem.starts_with("scan ID `P8_V1` is also the scan ID of `")
                && problem.contains("P8_V1_redo"),
            "{problem}"
        );
        assert!(!report.sessions[3].is_valid());
        assert_eq!(report.skipped.len(), 1);
        assert!(report.skipped[0].why.contains("does not match the pattern"));
    }

    #[test]
    fn whole_match_is_the_scan_id_without_a_named_group() {
        let s = study(r"\d+", "ScanID,SubjectCode\n123,01\n", false);
        add_session(&s.root, "scan123", &[("T1", 3)]);
        let report = discover(&s.discovery, &s.root, later()).unwrap();
        assert_eq!(report.sessions[0].scan_id, "123");
    }

    #[test]
    fn unmapped_folders_are_listed_and_not_registered() {
        let s = study(
            "^S\\d+$",
            "ScanID,SubjectCode\nS1,01\nS2,\"01; rm -rf ~\"\n",
            false,
        );
        add_session(&s.root, "S1", &[("T1", 3)]);
        add_session(&s.root, "S2", &[("T1", 3)]);
        add_session(&s.root, "S3", &[("T1", 3)]);
        let report = discover(&s.discovery, &s.root, later()).unwrap();
        assert_eq!(report.sessions.len(), 1);
        let unmapped: Vec<&str> = report.unmapped.iter().map(|u| u.scan_id.as_str()).collect();
        assert_eq!(unmapped, vec!["S2", "S3"]);
        assert_eq!(report.problems.len(), 1);
        assert!(
            report.problems[0]
                .to_string()
                .starts_with("mapping.csv:3: subject")
        );
    }

    #[test]
    fn recent_folders_are_skipped_while_settling() {
        let s = study("^S\\d+$", "ScanID,SubjectCode\nS1,01\nS2,02\n", false);
        let old = add_session(&s.root, "S1", &[("T1", 3)]);
        add_session(&s.root, "S2", &[("T1", 3)]);
        // S1 was copied two hours ago; S2 just now.
        let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
        for path in [
            old.join("T1/IM0000.dcm"),
            old.join("T1/IM0001.dcm"),
            old.join("T1/IM0002.dcm"),
            old.join("T1"),
            old.clone(),
        ] {
            fs::File::open(&path)
                .unwrap()
                .set_modified(two_hours_ago)
                .unwrap();
        }
        let report = discover(&s.discovery, &s.root, SystemTime::now()).unwrap();
        assert_eq!(
            labels(&report),
            vec![("S1".into(), "01".into(), "1".into())]
        );
        assert_eq!(report.skipped.len(), 1);
        assert!(report.skipped[0].folder.ends_with("S2"));
        assert!(
            report.skipped[0].why.starts_with("settling (modified ")
                && report.skipped[0].why.ends_with(" ago, settle 30m)"),
            "{}",
            report.skipped[0].why
        );
    }

    #[test]
    fn min_files_and_required_series_make_a_session_invalid() {
        let mut s = study(
            "^S\\d+$",
            "ScanID,SubjectCode\nS1,01\nS2,02\nS3,03\n",
            false,
        );
        s.discovery.validation = Validation {
            min_files: 10,
            required_series: vec![SeriesRule {
                name: "dwi".to_string(),
                pattern: Regex::new("(?i)dmri|dwi").unwrap(),
                min_files: 60,
                ..SeriesRule::default()
            }],
        };
        add_session(&s.root, "S1", &[("DWI_64dir", 64), ("T1", 5)]);
        add_session(&s.root, "S2", &[("DTI_64dir", 12)]);
        add_session(&s.root, "S3", &[("dwi", 12), ("T1", 1)]);
        let report = discover(&s.discovery, &s.root, later()).unwrap();
        let problems: Vec<Option<&str>> = report
            .sessions
            .iter()
            .map(|s| s.problem.as_deref())
            .collect();
        assert_eq!(
            problems,
            vec![
                None,
                Some("series `dwi` missing: no subfolder matches `(?i)dmri|dwi`"),
                Some("series `dwi`: 12 files in `dwi`, fewer than 60"),
            ]
        );
        assert_eq!(report.valid().count(), 1);
        assert_eq!(report.invalid().count(), 2);

        s.discovery.validation.min_files = 100;
        let report = discover(&s.discovery, &s.root, later()).unwrap();
        assert_eq!(
            report.sessions[0].problem.as_deref(),
            Some("69 files, fewer than min_files 100")
        );
    }

    #[test]
    fn two_sessions_with_the_same_labels_are_both_rejected() {
        let s = study(
            "^S\\d+$",
            "ScanID,SubjectCode,SessionID\nS1,01,1\nS2,01,1\nS3,01,2\n",
            true,
        );
        for name in ["S1", "S2", "S3"] {
            add_session(&s.root, name, &[("T1", 3)]);
        }
        let report = discover(&s.discovery, &s.root, later()).unwrap();
        let invalid: Vec<&str> = report.invalid().map(|s| s.scan_id.as_str()).collect();
        assert_eq!(invalid, vec!["S1", "S2"]);
        assert!(
            report.sessions[0]
                .problem
                .as_deref()
                .unwrap()
                .starts_with("sub-01 ses-1 is also the label of `")
        );
        assert!(report.sessions[2].is_valid());
    }

    #[test]
    fn a_missing_mapping_column_fails_the_whole_discovery() {
        let s = study("^S\\d+$", "Scan,Subject\nS1,01\n", false);
        let err = discover(&s.discovery, &s.root, later()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "the mapping file `{}` has no column `ScanID` (columns found: `Scan`, `Subject`)",
                s.discovery.mapping.file.display()
            )
        );
    }

    #[test]
    fn a_missing_dicom_root_is_an_error() {
        let s = study("^S\\d+$", "ScanID,SubjectCode\n", false);
        let err = discover(&s.discovery, &s.root.join("nope"), later()).unwrap_err();
        assert!(matches!(err, StudyError::ReadDir { .. }));
    }

    /// Issue 9: a folder named `X$(touch PWNED)` must never reach a script.
    #[test]
    fn shell_special_and_control_characters_in_folder_names_are_skipped() {
        let s = study(
            "^(?P<scan_id>.+)$",
            "ScanID,SubjectCode\nX$(touch PWNED),01\nS1,02\nesc\x1b[2J,03\n",
            false,
        );
        add_session(&s.root, "X$(touch PWNED)", &[("dwi", 3)]);
        add_session(&s.root, "esc\x1b[2J", &[("dwi", 3)]);
        add_session(&s.root, "S1", &[("dwi", 3)]);
        let report = discover(&s.discovery, &s.root, later()).unwrap();
        assert_eq!(labels(&report), [("S1".into(), "02".into(), "1".into())]);
        let whys: Vec<&str> = report.skipped.iter().map(|k| k.why.as_str()).collect();
        assert_eq!(
            whys,
            [
                "name contains `$` `(` `)`, which a shell could run as code: rename the folder \
                 (letters, digits, spaces and `_ - . + , = @ % :` are fine)",
                "name contains the control character `\\u{1b}`: rename the folder",
            ]
        );
        for name in ["a b", "S_01.2-x", "ünï", "k=v,w@x%y+z:1"] {
            assert_eq!(scan::unsafe_name(name), None, "{name}");
        }
        for name in [
            "a\"b", "a'b", "a`b", "a\\b", "a;b", "a|b", "a\nb", "a\u{9b}b",
        ] {
            assert!(scan::unsafe_name(name).is_some(), "{name:?}");
        }
    }

    #[test]
    fn files_dangling_links_loops_and_non_utf8_names_are_skipped_with_a_reason() {
        use std::os::unix::ffi::OsStrExt;
        let s = study("^S\\d+$", "ScanID,SubjectCode\nS1,01\n", false);
        add_session(&s.root, "S1", &[("dwi", 3)]);
        fs::write(s.root.join("notes.txt"), "x").unwrap();
        std::os::unix::fs::symlink("nowhere", s.root.join("S2")).unwrap();
        std::os::unix::fs::symlink("S3", s.root.join("S3")).unwrap();
        std::os::unix::fs::symlink("notes.txt", s.root.join("S4")).unwrap();
        fs::create_dir(s.root.join(std::ffi::OsStr::from_bytes(b"S\xff"))).unwrap();
        fs::create_dir(s.root.join(".snapshot")).unwrap();
        let report = discover(&s.discovery, &s.root, later()).unwrap();
        assert_eq!(report.sessions.len(), 1);
        let skipped: Vec<(String, &str)> = report
            .skipped
            .iter()
            .map(|k| {
                let name = k.folder.file_name().unwrap().to_string_lossy().into_owned();
                (name, k.why.as_str())
            })
            .collect();
        assert_eq!(
            skipped,
            [
                (
                    "S2".to_string(),
                    "a dangling symlink: its target `nowhere` does not exist"
                ),
                (
                    "S3".to_string(),
                    "a symlink loop: its target `S3` leads back to itself"
                ),
                (
                    "S4".to_string(),
                    "a symlink to `notes.txt`, which is not a folder"
                ),
                (
                    "S\u{fffd}".to_string(),
                    "name is not valid UTF-8: rename the folder"
                ),
                (
                    "notes.txt".to_string(),
                    "a file, not a folder: session folders only"
                ),
            ]
        );
    }
}

#[cfg(test)]
mod fuzz {
    //! Discovery over odd `dicom_root` entries: names that are not UTF-8,
    //! control characters, shell code, files, dangling links, loops, empty
    //! and huge names. Nothing panics, and every entry is accounted for.

    use std::ffi::OsStr;
    use std::fs;
    use std::os::unix::ffi::OsStrExt;

    use proptest::prelude::*;
    use regex::Regex;

    use super::*;
    use crate::config::{MappingConfig, Validation};

    #[derive(Debug, Clone)]
    enum Kind {
        Folder(u8),
        File,
        Dangling,
        Loop,
        LinkToFolder,
    }

    fn name() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            "[A-Za-z0-9_]{1,12}".prop_map(String::into_bytes),
            Just(b"X$(touch PWNED)".to_vec()),
            Just(b"a\x1b[2Jb".to_vec()),
            Just(vec![b'S'; 255]),
            proptest::collection::vec(1u8..=255, 1..24),
        ]
        .prop_map(|mut n| {
            // What a file system accepts as one name.
            n.retain(|&b| b != b'/' && b != 0);
            n.truncate(255);
            if n.is_empty() || n == b"." || n == b".." {
                n = b"x".to_vec();
            }
            n
        })
    }

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![
            (0u8..4).prop_map(Kind::Folder),
            Just(Kind::File),
            Just(Kind::Dangling),
            Just(Kind::Loop),
            Just(Kind::LinkToFolder),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn odd_root_entries_never_panic_and_are_all_accounted_for(
            entries in proptest::collection::vec((name(), kind()), 0..10),
            pattern in prop_oneof![Just("^(?P<scan_id>.+)$"), Just("^(?P<scan_id>[A-Za-z0-9_]+)$"), Just("^(?P<scan_id>.*?)(?P<session>[0-9]*)$")],
            mapping in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("dicom");
            fs::create_dir(&root).unwrap();
            fs::create_dir(dir.path().join("target")).unwrap();
            let file = dir.path().join("mapping.csv");
            let mut sheet = b"ScanID,SubjectCode\n".to_vec();
            for (n, _) in &entries {
                sheet.extend_from_slice(n);
                sheet.extend_from_slice(b",01\n");
            }
            sheet.extend(mapping);
            fs::write(&file, sheet).unwrap();
            let mut expected = std::collections::BTreeSet::new();
            for (n, kind) in &entries {
                let path = root.join(OsStr::from_bytes(n));
                if path.symlink_metadata().is_ok() {
                    continue;
                }
                match kind {
                    Kind::Folder(files) => {
                        fs::create_dir(&path).unwrap();
                        for i in 0..*files {
                            fs::write(path.join(format!("IM{i}")), b"x").unwrap();
                        }
                    }
                    Kind::File => fs::write(&path, b"x").unwrap(),
                    Kind::Dangling => std::os::unix::fs::symlink("nowhere", &path).unwrap(),
                    Kind::Loop => std::os::unix::fs::symlink(&path, &path).unwrap(),
                    Kind::LinkToFolder => std::os::unix::fs::symlink(dir.path().join("target"), &path).unwrap(),
                }
                if !n.starts_with(b".") {
                    expected.insert(path);
                }
            }
            let discovery = Discovery {
                pattern: Regex::new(pattern).unwrap(),
                mapping: MappingConfig {
                    file,
                    scan_id_column: "ScanID".to_string(),
                    subject_column: "SubjectCode".to_string(),
                    session_column: None,
                    scan_id_from: Default::default(),
                },
                validation: Validation { min_files: 1, required_series: vec![] },
                settle_s: 0,
                dicom: Default::default(),
            };
            let later = SystemTime::now() + Duration::from_secs(86_400);
            let Ok(report) = discover(&discovery, &root, later) else {
                // Only a sheet that cannot be read as CSV stops discovery.
                return Ok(());
            };
            let mut seen = std::collections::BTreeSet::new();
            for s in &report.sessions {
                prop_assert!(scan::unsafe_name(&s.scan_id).is_none(), "{:?}", s.scan_id);
                prop_assert!(!s.problem.as_deref().unwrap_or("").chars().any(char::is_control));
                seen.insert(s.folder.clone());
            }
            for u in &report.unmapped {
                seen.insert(u.folder.clone());
            }
            for k in &report.skipped {
                prop_assert!(!k.why.chars().any(char::is_control), "{:?}", k.why);
                seen.insert(k.folder.clone());
            }
            prop_assert_eq!(seen, expected);
        }
    }
}
