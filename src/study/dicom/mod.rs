//! DICOM-aware discovery: what a session's headers say.
//!
//! Folder names are a guess; headers are the truth. A session folder is
//! summarised by reading every file's header ([`read`]) and grouping the
//! files into series by SeriesInstanceUID, whatever the folder layout (flat
//! folders of `IM0001` files included). The [`HeaderSummary`] is what the
//! rest of nfslurm uses: validation (`required_series` on SeriesDescription
//! and ProtocolName), the mapping key (`scan_id_from: header:PatientID`),
//! `show sub-01/ses-1`. It is stored in the state keyed by the folder's
//! fingerprint (paths, sizes and mtimes of its files, which the walk stats
//! anyway), so a session is read once and a `sync` with nothing new reads no
//! DICOM file.

pub mod read;
pub mod synth;
mod text;
pub mod validate;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

pub use read::{FileHeader, HEADER_LIMIT, Instance, read_file, transfer_syntax_name};
pub use text::clean;

/// Files whose header was read, since the process started: lets a test (and
/// `-v` output) tell that a sync read nothing.
static FILES_READ: AtomicU64 = AtomicU64::new(0);

/// How many files' headers this process has read so far.
pub fn files_read() -> u64 {
    FILES_READ.load(Ordering::Relaxed)
}

/// At most this many corrupt files are named in a summary (all are counted).
const NAMED_PROBLEMS: usize = 5;
/// At most this many distinct values are kept per identifying attribute.
const KEPT_VALUES: usize = 5;

/// One series of a session, as its headers describe it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SeriesSummary {
    pub uid: String,
    pub number: Option<i64>,
    pub description: String,
    pub protocol: String,
    pub image_type: Vec<String>,
    pub modality: String,
    /// DICOM files (instances) of the series.
    pub instances: u64,
    /// Images: the sum of NumberOfFrames (an enhanced multi-frame file
    /// holds a whole series in one instance).
    pub frames: u64,
    /// AcquisitionDate (else SeriesDate, else StudyDate), `YYYYMMDD`.
    pub date: Option<String>,
    /// The subfolders (relative to the session; `.` for its top) holding the
    /// series' files, at most three.
    pub folders: Vec<String>,
    /// Transfer syntax UIDs met in the series.
    pub transfer_syntaxes: Vec<String>,
}

impl SeriesSummary {
    /// `5 DWI_64dir`, or the protocol name when there is no description.
    pub fn label(&self) -> String {
        let name = if !self.description.is_empty() {
            &self.description
        } else if !self.protocol.is_empty() {
            &self.protocol
        } else {
            "(no description)"
        };
        match self.number {
            Some(n) => format!("{n} `{name}`"),
            None => format!("`{name}`"),
        }
    }
}

/// A corrupt file: its path relative to the session folder, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileProblem {
    pub file: String,
    pub why: String,
}

/// The distinct values of one identifying attribute, with their file counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Values(pub Vec<(String, u64)>);

impl Values {
    fn add(&mut self, value: &str) {
        if let Some(v) = self.0.iter_mut().find(|(v, _)| v == value) {
            v.1 += 1;
        } else if self.0.len() < KEPT_VALUES {
            self.0.push((value.to_string(), 1));
        }
    }

    /// The values other than the empty one.
    pub fn present(&self) -> impl Iterator<Item = &(String, u64)> {
        self.0.iter().filter(|(v, _)| !v.is_empty())
    }
}

/// What reading every file of a session folder found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct HeaderSummary {
    /// Files with a usable DICOM header.
    pub dicom_files: u64,
    /// Files without the `DICM` magic code: ignored, counted.
    pub not_dicom: u64,
    /// DICOMDIR index files: ignored, counted.
    pub dicomdirs: u64,
    /// Sorted by series number, then description.
    pub series: Vec<SeriesSummary>,
    /// Corrupt DICOM files, the first few by path; `corrupt` counts them all.
    pub problems: Vec<FileProblem>,
    pub corrupt: u64,
    pub patient_ids: Values,
    pub patient_names: Values,
    pub accession_numbers: Values,
    pub study_ids: Values,
    /// The folder could not be listed completely: why.
    pub unreadable: Option<String>,
}

impl HeaderSummary {
    /// The distinct values of the attribute named in `scan_id_from`.
    pub fn values_of(&self, attribute: HeaderKey) -> &Values {
        match attribute {
            HeaderKey::PatientId => &self.patient_ids,
            HeaderKey::PatientName => &self.patient_names,
            HeaderKey::AccessionNumber => &self.accession_numbers,
            HeaderKey::StudyId => &self.study_ids,
        }
    }

    fn add(&mut self, relative: &str, header: FileHeader) {
        match header {
            FileHeader::NotDicom => self.not_dicom += 1,
            FileHeader::Dicomdir => self.dicomdirs += 1,
            FileHeader::Corrupt(why) => {
                self.corrupt += 1;
                self.problems.push(FileProblem {
                    file: clean(relative),
                    why,
                });
                self.problems.sort_by(|a, b| a.file.cmp(&b.file));
                self.problems.truncate(NAMED_PROBLEMS);
            }
            FileHeader::Dicom(instance) => self.add_instance(relative, *instance),
        }
    }

    fn add_instance(&mut self, relative: &str, i: Instance) {
        self.dicom_files += 1;
        self.patient_ids.add(&i.patient_id);
        self.patient_names.add(&i.patient_name);
        self.accession_numbers.add(&i.accession_number);
        self.study_ids.add(&i.study_id);
        let folder = match relative.rfind('/') {
            Some(slash) => relative[..slash].to_string(),
            None => ".".to_string(),
        };
        let series = match self.series.iter_mut().position(|s| s.uid == i.series_uid) {
            Some(pos) => &mut self.series[pos],
            None => {
                self.series.push(SeriesSummary {
                    uid: i.series_uid.clone(),
                    number: i.series_number,
                    description: i.description.clone(),
                    protocol: i.protocol.clone(),
                    image_type: i.image_type.clone(),
                    modality: i.modality.clone(),
                    ..SeriesSummary::default()
                });
                self.series.last_mut().expect("just pushed")
            }
        };
        series.instances += 1;
        series.frames += i.frames;
        if let Some(d) = i.date
            && series.date.as_ref().is_none_or(|old| d < *old)
        {
            series.date = Some(d);
        }
        if series.folders.len() < 3 && !series.folders.contains(&folder) {
            series.folders.push(folder);
        }
        if !series.transfer_syntaxes.contains(&i.transfer_syntax) {
            series.transfer_syntaxes.push(i.transfer_syntax);
        }
    }

    fn finish(&mut self) {
        self.series.sort_by(|a, b| {
            (a.number.unwrap_or(i64::MAX), &a.description, &a.uid).cmp(&(
                b.number.unwrap_or(i64::MAX),
                &b.description,
                &b.uid,
            ))
        });
        for s in &mut self.series {
            s.folders.sort();
        }
    }
}

/// The identifying attributes `mapping.scan_id_from` may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderKey {
    PatientId,
    PatientName,
    AccessionNumber,
    StudyId,
}

impl HeaderKey {
    pub fn parse(name: &str) -> Option<HeaderKey> {
        Some(match name {
            "PatientID" => HeaderKey::PatientId,
            "PatientName" => HeaderKey::PatientName,
            "AccessionNumber" => HeaderKey::AccessionNumber,
            "StudyID" => HeaderKey::StudyId,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            HeaderKey::PatientId => "PatientID",
            HeaderKey::PatientName => "PatientName",
            HeaderKey::AccessionNumber => "AccessionNumber",
            HeaderKey::StudyId => "StudyID",
        }
    }
}

/// Reads the header of every file in `folder` (recursively; dot-files and
/// dot-folders skipped, symlinks to files followed, symlinks to folders not,
/// as the walk counts them) and summarises them.
pub fn summarize(folder: &Path) -> HeaderSummary {
    let mut summary = HeaderSummary::default();
    let mut stack: Vec<(PathBuf, String)> = vec![(folder.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                summary.unreadable = Some(format!("cannot read `{}`: {e}", dir.display()));
                continue;
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.as_encoded_bytes().first() == Some(&b'.') {
                continue;
            }
            let name = name.to_string_lossy();
            let relative = if prefix.is_empty() {
                name.into_owned()
            } else {
                format!("{prefix}/{name}")
            };
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            let path = entry.path();
            if file_type.is_dir() {
                stack.push((path, relative));
                continue;
            }
            let size = if file_type.is_symlink() {
                match fs::metadata(&path) {
                    Ok(m) if m.is_file() => m.len(),
                    _ => continue,
                }
            } else if file_type.is_file() {
                entry.metadata().map_or(0, |m| m.len())
            } else {
                continue;
            };
            FILES_READ.fetch_add(1, Ordering::Relaxed);
            summary.add(&relative, read_guarded(&path, size));
        }
    }
    summary.finish();
    summary
}

/// [`read_file`], with a panic of the parser (a bug on some odd file) turned
/// into a corrupt file instead of the end of the whole discovery.
fn read_guarded(path: &Path, size: u64) -> FileHeader {
    std::panic::catch_unwind(|| read_file(path, size))
        .unwrap_or_else(|_| FileHeader::Corrupt("the DICOM reader failed on this file".to_string()))
}

/// [`summarize`] over many folders on a few threads; in the order of `folders`.
pub fn summarize_all(folders: &[&Path]) -> Vec<HeaderSummary> {
    crate::study::scan::par_map(folders, 2, |f| summarize(f))
}

/// What is known of a folder from an earlier discovery.
#[derive(Debug, Clone, Default)]
pub struct Known {
    /// The fingerprint its headers were read under.
    pub fingerprint: String,
    /// The validation verdict kept for that fingerprint, when it was reached
    /// under the rules of [`verdict_key`] `key`: (key, judged on headers,
    /// problem).
    pub verdict: Option<(String, bool, Option<String>)>,
    /// The header summary; `None` when the kept verdict makes it unneeded
    /// (a `sync` with nothing new parses no summary either).
    pub summary: Option<HeaderSummary>,
}

/// Known folders, by path.
pub type KnownHeaders = HashMap<PathBuf, Known>;

/// What a kept verdict depends on besides the folder's files: the
/// validation rules and the `dicom` mode, hashed.
pub fn verdict_key(discovery: &crate::config::Discovery) -> String {
    use sha2::{Digest, Sha256};
    let v = &discovery.validation;
    let mut text = format!("{:?}|{}|", discovery.dicom, v.min_files);
    for r in &v.required_series {
        text.push_str(&format!(
            "{}\u{0}{}\u{0}{}\u{0}{:?}\u{0}{:?}\u{0}{:?}\u{0}{:?}|",
            r.name,
            r.pattern.as_str(),
            r.min_files,
            r.match_on,
            r.min_instances,
            r.image_type,
            r.max_series
        ));
    }
    let digest = Sha256::digest(text.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every prefix of a real file, and thousands of random bodies after the
    /// magic code: each is DICOM or corrupt, never a panic.
    #[test]
    fn cut_and_random_files_never_panic() {
        let dir = tempfile::tempdir().unwrap();
        let spec = synth::SessionSpec::t1_and_dwi("P1", 1, 1, synth::Layout::Flat);
        let files = synth::write_session(&dir.path().join("s"), &spec).unwrap();
        let whole = fs::read(&files[0]).unwrap();
        let path = dir.path().join("probe");
        let mut corrupt = 0;
        for len in 132..whole.len() {
            fs::write(&path, &whole[..len]).unwrap();
            match read_file(&path, len as u64) {
                // Cut at an element boundary, the header may read as whole
                // but lack what an image needs.
                FileHeader::Corrupt(why) => {
                    corrupt += 1;
                    assert!(
                        why.starts_with("truncated")
                            || why.starts_with("header")
                            || why == "no SeriesInstanceUID",
                        "{len}: {why}"
                    );
                }
                FileHeader::Dicom(_) => {}
                other => panic!("{len}: {other:?}"),
            }
        }
        assert!(corrupt > 1000, "{corrupt}");
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for round in 0..2000 {
            let mut bytes = vec![0u8; 128];
            bytes.extend_from_slice(b"DICM");
            // Half start with a plausible meta group header, half pure noise.
            if round % 2 == 0 {
                bytes.extend_from_slice(&[0x02, 0x00, 0x00, 0x00, b'U', b'L', 4, 0]);
            }
            for _ in 0..(round % 300) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                bytes.push(state as u8);
            }
            fs::write(&path, &bytes).unwrap();
            assert!(
                matches!(read_file(&path, bytes.len() as u64), FileHeader::Corrupt(_)),
                "round {round}"
            );
        }
    }

    #[test]
    fn file_names_in_problems_are_cleaned() {
        let mut summary = HeaderSummary::default();
        summary.add("a\x1b[2Jb", FileHeader::Corrupt("x".to_string()));
        assert_eq!(summary.problems[0].file, "a?[2Jb");
    }
}
