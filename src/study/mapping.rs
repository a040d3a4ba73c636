//! The mapping table: scanner scan IDs -> BIDS subject (and session) labels.
//!
//! The CSV is edited by hand, often in a spreadsheet, so it is read leniently
//! (BOM, stray whitespace, blank rows, short rows) but judged strictly: a label
//! that is not BIDS-safe or a scan ID claimed by two subjects is reported with
//! its file and line, and that scan ID stays unmapped. A bad row never stops
//! the other sessions of the study from being processed; only a file that
//! cannot be read at all (missing, or missing a column) is an error.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;

use crate::config::MappingConfig;
use crate::model::Label;

use super::StudyError;

/// Scan ID -> its mapping row. Scan IDs with a problem are absent (see
/// [`Mapping::is_rejected`]).
#[derive(Debug, Clone, Default)]
pub struct Mapping {
    rows: HashMap<String, MappingRow>,
    rejected: HashSet<String>,
}

/// One accepted row of the mapping CSV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingRow {
    pub scan_id: String,
    pub subject: Label,
    /// From the session column, when there is one and the cell is not empty.
    pub session: Option<Label>,
    /// 1-based line of the CSV file, the header being line 1.
    pub row: usize,
}

/// A row that could not be used, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingProblem {
    pub file: PathBuf,
    pub row: usize,
    pub message: String,
}

impl fmt::Display for MappingProblem {
    /// `mapping.csv:7: subject ...`: the file name only, as editors and
    /// spreadsheets show it; the full path is in [`MappingProblem::file`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self
            .file
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_else(|| self.file.to_string_lossy());
        // Cells come from a spreadsheet: no raw control character reaches a terminal.
        write!(
            f,
            "{}:{}: {}",
            crate::output::escape_controls(&name),
            self.row,
            crate::output::escape_controls(&self.message)
        )
    }
}

impl Mapping {
    pub fn get(&self, scan_id: &str) -> Option<&MappingRow> {
        self.rows.get(scan_id)
    }

    /// The scan ID appears in the CSV but only in rows with a problem (bad
    /// label, conflicting duplicate): it is deliberately left unmapped.
    pub fn is_rejected(&self, scan_id: &str) -> bool {
        self.rejected.contains(scan_id)
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Accepted rows, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &MappingRow> {
        self.rows.values()
    }
}

/// Reads and checks the mapping CSV.
///
/// A missing file, an unreadable file or a missing column is a
/// [`StudyError`]; anything wrong with a row is a [`MappingProblem`], and the
/// scan IDs concerned are left out of the returned [`Mapping`].
pub fn load_mapping(cfg: &MappingConfig) -> Result<(Mapping, Vec<MappingProblem>), StudyError> {
    let bytes = std::fs::read(&cfg.file).map_err(|source| StudyError::MappingRead {
        file: cfg.file.clone(),
        source,
    })?;
    parse_mapping(&bytes, cfg)
}

/// The pure part of [`load_mapping`], on the file's bytes.
pub fn parse_mapping(
    bytes: &[u8],
    cfg: &MappingConfig,
) -> Result<(Mapping, Vec<MappingProblem>), StudyError> {
    let file = &cfg.file;
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let csv_error = |source: csv::Error| StudyError::MappingCsv {
        file: file.clone(),
        source,
    };

    let headers: Vec<String> = reader
        .headers()
        .map_err(csv_error)?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    // Two columns with one name: which one holds the labels is a guess, and
    // a wrong guess maps sessions to the wrong subjects.
    for (i, h) in headers.iter().enumerate() {
        if h.is_empty() {
            continue;
        }
        if let Some(j) = headers[i + 1..].iter().position(|o| o == h) {
            return Err(StudyError::DuplicateColumn {
                file: file.clone(),
                column: h.clone(),
                first: i + 1,
                second: i + j + 2,
            });
        }
    }
    let column = |name: &str| -> Result<usize, StudyError> {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| StudyError::MissingColumn {
                file: file.clone(),
                column: name.to_string(),
                found: headers.clone(),
            })
    };
    let scan_col = column(&cfg.scan_id_column)?;
    let subject_col = column(&cfg.subject_column)?;
    let session_col = match &cfg.session_column {
        Some(name) => Some(column(name)?),
        None => None,
    };

    let mut problems = Vec::new();
    // Every accepted row per scan ID, in file order, to judge duplicates.
    let mut candidates: BTreeMap<String, Vec<MappingRow>> = BTreeMap::new();
    let mut rejected: HashSet<String> = HashSet::new();

    let mut record = csv::StringRecord::new();
    let (mut line, mut counted) = (1usize, 0usize);
    loop {
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(source) => return Err(csv_error(source)),
        }
        // csv's own line counter skips blank lines; count newlines up to the
        // record's byte offset instead, so the number matches an editor's.
        // The position may point at blank lines skipped before the record.
        let mut offset = record.position().map_or(0, |p| p.byte() as usize);
        while matches!(bytes.get(offset), Some(b'\n' | b'\r')) {
            offset += 1;
        }
        line += bytes[counted..offset.max(counted)]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        counted = offset.max(counted);
        let row = line;
        if record.iter().all(|field| field.trim().is_empty()) {
            continue;
        }
        let cell = |i: usize| record.get(i).unwrap_or("").trim();
        let problem = |message: String| MappingProblem {
            file: file.clone(),
            row,
            message,
        };
        // A ragged row: a cell with an unquoted comma (`Doe, Jane`) shifts
        // every cell after it, so no cell of it can be trusted. Extra cells
        // that are all empty (trailing commas of a spreadsheet export) are fine.
        let cells = record.len();
        let extra_empty = record.iter().skip(headers.len()).all(str::is_empty);
        if cells < headers.len() || !extra_empty {
            let scan_id = cell(scan_col);
            problems.push(problem(format!(
                "the row has {cells} cell{}, the header {}: put a cell that holds a comma in double quotes, and give every row one cell per column (an empty one as `,,`)",
                if cells == 1 { "" } else { "s" },
                headers.len()
            )));
            if !scan_id.is_empty() {
                rejected.insert(scan_id.to_string());
            }
            continue;
        }

        let scan_id = cell(scan_col);
        if scan_id.is_empty() {
            problems.push(problem(format!(
                "no scan ID in column `{}`",
                cfg.scan_id_column
            )));
            continue;
        }
        let subject_text = cell(subject_col);
        let subject = if subject_text.is_empty() {
            Err(format!(
                "scan `{scan_id}` has no subject in column `{}`",
                cfg.subject_column
            ))
        } else {
            Label::subject(subject_text)
                .map_err(|e| format!("subject `{}` {}", e.shown(), e.reason()))
        };
        let session = match session_col.map(cell) {
            None | Some("") => Ok(None),
            Some(text) => Label::session(text)
                .map(Some)
                .map_err(|e| format!("session `{}` {}", e.shown(), e.reason())),
        };
        match (subject, session) {
            (Ok(subject), Ok(session)) => {
                candidates
                    .entry(scan_id.to_string())
                    .or_default()
                    .push(MappingRow {
                        scan_id: scan_id.to_string(),
                        subject,
                        session,
                        row,
                    });
            }
            (subject, session) => {
                for message in [subject.err(), session.err()].into_iter().flatten() {
                    problems.push(problem(message));
                }
                rejected.insert(scan_id.to_string());
            }
        }
    }

    let mut rows = HashMap::with_capacity(candidates.len());
    for (scan_id, list) in candidates {
        if rejected.contains(&scan_id) {
            continue;
        }
        let first = &list[0];
        let conflicting = list
            .iter()
            .any(|r| r.subject != first.subject || r.session != first.session);
        if conflicting {
            let claims: Vec<String> = list
                .iter()
                .map(|r| format!("{} (line {})", describe(r), r.row))
                .collect();
            for r in &list {
                problems.push(MappingProblem {
                    file: file.clone(),
                    row: r.row,
                    message: format!(
                        "scan ID `{scan_id}` is mapped more than once with different labels: {}; \
                         left unmapped until only one remains",
                        claims.join(", ")
                    ),
                });
            }
            rejected.insert(scan_id);
        } else {
            // Identical duplicates are harmless: keep the first row.
            let first = list
                .into_iter()
                .next()
                .expect("a candidate list is never empty");
            rows.insert(scan_id, first);
        }
    }
    problems.sort_by_key(|p| p.row);
    Ok((Mapping { rows, rejected }, problems))
}

fn describe(row: &MappingRow) -> String {
    match &row.session {
        Some(ses) => format!("sub-{} ses-{}", row.subject, ses),
        None => format!("sub-{}", row.subject),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn cfg(file: &Path, session: bool) -> MappingConfig {
        MappingConfig {
            file: file.to_path_buf(),
            scan_id_column: "ScanID".to_string(),
            subject_column: "SubjectCode".to_string(),
            session_column: session.then(|| "SessionID".to_string()),
            scan_id_from: Default::default(),
        }
    }

    fn load(text: &str, session: bool) -> Result<(Mapping, Vec<MappingProblem>), StudyError> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mapping.csv");
        std::fs::write(&file, text).unwrap();
        load_mapping(&cfg(&file, session))
    }

    #[test]
    fn missing_column_names_the_columns_found() {
        let err = load("Scan,SubjectCode\nA1,01\n", false).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("mapping.csv"), "{text}");
        assert!(text.contains("`ScanID`"), "{text}");
        assert!(text.contains("`Scan`, `SubjectCode`"), "{text}");
    }

    #[test]
    fn missing_session_column_is_an_error_only_when_configured() {
        assert!(load("ScanID,SubjectCode\nA1,01\n", false).is_ok());
        let err = load("ScanID,SubjectCode\nA1,01\n", true).unwrap_err();
        assert!(err.to_string().contains("`SessionID`"));
    }

    #[test]
    fn missing_file_is_an_error_naming_it() {
        let err = load_mapping(&cfg(Path::new("/nonexistent/mapping.csv"), false)).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/mapping.csv"));
    }

    #[test]
    fn shell_injection_in_subject_is_rejected_with_file_and_row() {
        let text = "ScanID,SubjectCode\nA1,01\nA2,02\n\nA3,\"01; rm -rf ~\"\n";
        let (mapping, problems) = load(text, false).unwrap();
        assert_eq!(problems.len(), 1);
        assert_eq!(
            problems[0].to_string(),
            "mapping.csv:5: subject `01; rm -rf ~` is not a valid BIDS label: use letters and digits only"
        );
        assert!(mapping.get("A3").is_none());
        assert!(mapping.is_rejected("A3"));
        assert_eq!(mapping.len(), 2);
    }

    #[test]
    fn bids_prefixes_bom_whitespace_and_blank_rows_are_accepted() {
        let text = "\u{feff}ScanID , SubjectCode,SessionID\n A1 , sub-01 , ses-2 \n,,\n\nA2,02,\n";
        let (mapping, problems) = load(text, true).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        let a1 = mapping.get("A1").unwrap();
        assert_eq!(a1.subject.as_str(), "01");
        assert_eq!(a1.session.as_ref().unwrap().as_str(), "2");
        assert_eq!(a1.row, 2);
        let a2 = mapping.get("A2").unwrap();
        assert_eq!(a2.session, None);
        assert_eq!(a2.row, 5);
    }

    #[test]
    fn identical_duplicates_are_fine() {
        let (mapping, problems) = load("ScanID,SubjectCode\nA1,01\nA1,sub-01\n", false).unwrap();
        assert!(problems.is_empty());
        assert_eq!(mapping.get("A1").unwrap().row, 2);
    }

    #[test]
    fn conflicting_duplicates_are_reported_on_every_row_and_left_unmapped() {
        let text = "ScanID,SubjectCode\nA1,01\nB1,03\nA1,02\n";
        let (mapping, problems) = load(text, false).unwrap();
        assert!(mapping.get("A1").is_none());
        assert!(mapping.get("B1").is_some());
        let rows: Vec<usize> = problems.iter().map(|p| p.row).collect();
        assert_eq!(rows, vec![2, 4]);
        assert!(
            problems[0]
                .message
                .contains("sub-01 (line 2), sub-02 (line 4)")
        );
    }

    #[test]
    fn conflicting_sessions_are_duplicates_too() {
        let text = "ScanID,SubjectCode,SessionID\nA1,01,1\nA1,01,2\n";
        let (mapping, problems) = load(text, true).unwrap();
        assert!(mapping.get("A1").is_none());
        assert_eq!(problems.len(), 2);
    }

    #[test]
    fn empty_cells_and_short_rows_are_problems() {
        let text = "ScanID,SubjectCode\nA1\n,05\n";
        let (mapping, problems) = load(text, false).unwrap();
        assert!(mapping.is_empty());
        assert_eq!(problems.len(), 2);
        assert_eq!(
            problems[0].to_string(),
            "mapping.csv:2: the row has 1 cell, the header 2: put a cell that holds a comma in double quotes, and give every row one cell per column (an empty one as `,,`)"
        );
        assert!(
            problems[1]
                .to_string()
                .starts_with("mapping.csv:3: no scan ID")
        );
    }

    #[test]
    fn a_row_with_an_unquoted_comma_is_refused_naming_its_line() {
        let text = "ScanID,SubjectCode,SessionID\nA1,01,1\nA2,Doe, Jane,1\nA3,03,1,,\n\"A4\",\"04\",\"1\"\nA2,02,1\n";
        let (mapping, problems) = load(text, true).unwrap();
        assert_eq!(
            problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            [
                "mapping.csv:3: the row has 4 cells, the header 3: put a cell that holds a comma in double quotes, and give every row one cell per column (an empty one as `,,`)"
            ]
        );
        // The ragged row's scan ID stays unmapped, even with a good row elsewhere.
        assert!(mapping.get("A2").is_none());
        assert!(mapping.is_rejected("A2"));
        // Trailing empty cells (a spreadsheet export) are fine.
        assert_eq!(mapping.get("A3").unwrap().subject.as_str(), "03");
        assert_eq!(mapping.get("A4").unwrap().subject.as_str(), "04");
    }

    #[test]
    fn a_duplicate_column_refuses_the_sheet() {
        let err = load("ScanID,SubjectCode,ScanID\nA1,01,A2\n", false).unwrap_err();
        assert!(
            err.to_string().ends_with(
                "mapping.csv` has two columns named `ScanID` (columns 1 and 3 of line 1)"
            ),
            "{err}"
        );
        assert!(err.hint().unwrap().contains("rename or delete one"));
        // Empty header cells (trailing commas) are not names.
        assert!(load("ScanID,SubjectCode,,\nA1,01,,\n", false).is_ok());
    }

    #[test]
    fn bad_session_label_is_a_problem() {
        let (mapping, problems) = load("ScanID,SubjectCode,SessionID\nA1,01,a b\n", true).unwrap();
        assert!(mapping.get("A1").is_none());
        assert_eq!(
            problems[0].to_string(),
            "mapping.csv:2: session `a b` is not a valid BIDS label: use letters and digits only"
        );
    }
}

#[cfg(test)]
mod fuzz {
    //! The mapping sheet comes from a spreadsheet: no bytes make it panic.

    use std::path::PathBuf;

    use proptest::prelude::*;

    use super::*;

    fn cfg(session: bool) -> MappingConfig {
        MappingConfig {
            file: PathBuf::from("/study/mapping.csv"),
            scan_id_column: "ScanID".to_string(),
            subject_column: "SubjectCode".to_string(),
            session_column: session.then(|| "SessionID".to_string()),
            scan_id_from: Default::default(),
        }
    }

    /// One cell: empty, huge, quoted, with commas, newlines, BOMs, bytes.
    fn cell() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(Vec::new()),
            Just(b"01".to_vec()),
            Just(vec![b'9'; 10_000]),
            Just(b"\"a,b\"".to_vec()),
            Just(b"\"unclosed".to_vec()),
            Just(b"\xEF\xBB\xBF".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\xff\xfe".to_vec()),
            "[A-Za-z0-9 ;$-]{0,12}".prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..16),
        ]
    }

    fn sheet() -> impl Strategy<Value = Vec<u8>> {
        let header = prop_oneof![
            Just(b"ScanID,SubjectCode,SessionID".to_vec()),
            Just(b"ScanID,SubjectCode".to_vec()),
            Just(b"\xEF\xBB\xBFScanID, SubjectCode ,SessionID,".to_vec()),
            Just(b"ScanID,ScanID,SubjectCode".to_vec()),
            Just(Vec::new()),
        ];
        let row = proptest::collection::vec(cell(), 0..5).prop_map(|cells| cells.join(&b","[..]));
        (header, proptest::collection::vec(row, 0..12)).prop_map(|(header, rows)| {
            let mut out = header;
            for row in rows {
                out.push(b'\n');
                out.extend(row);
            }
            out
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_bytes_parse_or_error(bytes in proptest::collection::vec(any::<u8>(), 0..600), session: bool) {
            let _ = parse_mapping(&bytes, &cfg(session));
        }

        #[test]
        fn odd_sheets_give_labels_that_are_bids_labels(sheet in sheet(), session: bool) {
            if let Ok((mapping, problems)) = parse_mapping(&sheet, &cfg(session)) {
                for row in mapping.iter() {
                    prop_assert!(row.subject.as_str().chars().all(|c| c.is_ascii_alphanumeric()));
                    prop_assert!(!row.scan_id.is_empty());
                }
                for p in problems {
                    prop_assert!(p.row >= 2, "{}", p);
                    prop_assert!(!p.to_string().chars().any(char::is_control), "{:?}", p.to_string());
                }
            }
        }
    }
}
