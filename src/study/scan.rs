//! Walking the DICOM tree: which folders are sessions, are they still being
//! copied, and how many files each series holds.
//!
//! Discovery runs from cron on a login node, often over NFS or Lustre, and a
//! study can hold 100,000 session folders, so the walk is frugal: the entry
//! type comes from `read_dir` itself (`d_type`), each entry is stat'ed at most
//! once (for its mtime, which the settle rule needs), a folder that turns out
//! to be recent stops being walked at once, and folders are walked by a few
//! threads because stat on a network file system is latency-bound.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use regex::Regex;

use super::{Skipped, StudyError};

/// A direct child of `dicom_root` whose name matched the discovery pattern.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub folder: PathBuf,
    pub scan_id: String,
    /// The pattern's `session` capture, when the pattern has one.
    pub session: Option<String>,
}

/// Lists session folders: direct child directories of `root` (or symlinks to
/// directories) whose name matches `pattern`. Dot-folders (`.snapshot`,
/// `.Trash`) are ignored without a word; other non-matching names are
/// reported as skipped.
pub(crate) fn list_candidates(
    root: &Path,
    pattern: &Regex,
) -> Result<(Vec<Candidate>, Vec<Skipped>), StudyError> {
    let read_error = |source: io::Error| StudyError::ReadDir {
        path: root.to_path_buf(),
        source,
    };
    let has_scan_id = pattern.capture_names().any(|n| n == Some("scan_id"));
    let has_session = pattern.capture_names().any(|n| n == Some("session"));
    let mut locations = pattern.capture_locations();
    let scan_idx = group_index(pattern, "scan_id");
    let session_idx = group_index(pattern, "session");

    let mut candidates = Vec::new();
    let mut skipped = Vec::new();
    for entry in fs::read_dir(root).map_err(read_error)? {
        let entry = entry.map_err(read_error)?;
        let os_name = entry.file_name();
        let folder = entry.path();
        // Dot entries (`.snapshot`, `.Trash`, rsync's temporary files) are
        // not sessions, and not worth a word.
        if os_name.as_encoded_bytes().starts_with(b".") {
            continue;
        }
        if let Some(why) = not_a_folder(&entry) {
            skipped.push(Skipped { folder, why });
            continue;
        }
        let Some(name) = os_name.to_str() else {
            skipped.push(Skipped {
                folder,
                why: "name is not valid UTF-8: rename the folder".to_string(),
            });
            continue;
        };
        if let Some(why) = unsafe_name(name) {
            skipped.push(Skipped { folder, why });
            continue;
        }
        let Some(whole) = pattern.captures_read(&mut locations, name) else {
            skipped.push(Skipped {
                folder,
                why: format!("name does not match the pattern `{}`", pattern.as_str()),
            });
            continue;
        };
        let group = |idx: Option<usize>| {
            idx.and_then(|i| locations.get(i))
                .map(|(start, end)| name[start..end].to_string())
        };
        let scan_id = if has_scan_id {
            group(scan_idx)
        } else {
            Some(whole.as_str().to_string())
        };
        let Some(scan_id) = scan_id.filter(|s| !s.is_empty()) else {
            skipped.push(Skipped {
                folder,
                why: format!(
                    "the pattern `{}` matched but captured no scan ID",
                    pattern.as_str()
                ),
            });
            continue;
        };
        let session = if has_session {
            group(session_idx)
        } else {
            None
        };
        candidates.push(Candidate {
            folder,
            scan_id,
            session,
        });
    }
    candidates.sort_by(|a, b| a.folder.cmp(&b.folder));
    skipped.sort_by(|a, b| a.folder.cmp(&b.folder));
    Ok((candidates, skipped))
}

/// Why a direct child of `dicom_root` is not a session folder, or `None`
/// when it is a folder (or a symlink to one).
fn not_a_folder(entry: &fs::DirEntry) -> Option<String> {
    let file_type = match entry.file_type() {
        Ok(t) => t,
        Err(e) => return Some(format!("cannot read its type: {e}")),
    };
    if file_type.is_dir() {
        return None;
    }
    if file_type.is_symlink() {
        let target = fs::read_link(entry.path())
            .map(|t| {
                format!(
                    " `{}`",
                    crate::output::escape_controls(&t.to_string_lossy())
                )
            })
            .unwrap_or_default();
        return match fs::metadata(entry.path()) {
            Ok(m) if m.is_dir() => None,
            Ok(_) => Some(format!("a symlink to{target}, which is not a folder")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Some(format!(
                "a dangling symlink: its target{target} does not exist"
            )),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Some(format!(
                "a symlink loop: its target{target} leads back to itself"
            )),
            Err(e) => Some(format!(
                "a symlink whose target{target} cannot be read: {e}"
            )),
        };
    }
    Some(if file_type.is_file() {
        "a file, not a folder: session folders only".to_string()
    } else {
        "not a folder (a device, socket or pipe): session folders only".to_string()
    })
}

/// Characters that mean something to a shell in some quoting context.
/// Folder names reach job scripts; one holding these is refused, so that no
/// way of writing a command can make a folder name run as code.
const SHELL_SPECIAL: &[char] = &[
    '$', '`', '"', '\'', '\\', ';', '&', '|', '<', '>', '(', ')', '{', '}', '[', ']', '*', '?',
    '!', '~', '#',
];

/// Why a session folder name is refused, or `None` when it is safe to put in
/// a script: no control characters, no [`SHELL_SPECIAL`] characters.
pub(crate) fn unsafe_name(name: &str) -> Option<String> {
    // Almost every name is safe: one pass over it says so (every sessions
    // read checks each registered folder again), before the slower search
    // for what to report.
    if !name
        .chars()
        .any(|c| c.is_control() || SHELL_SPECIAL.contains(&c))
    {
        return None;
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Some(format!(
            "name contains the control character `{}`: rename the folder",
            c.escape_default()
        ));
    }
    let special: Vec<String> = SHELL_SPECIAL
        .iter()
        .filter(|c| name.contains(**c))
        .map(|c| format!("`{c}`"))
        .collect();
    // Not empty: the pass above found a special character.
    Some(format!(
        "name contains {}, which a shell could run as code: rename the folder \
         (letters, digits, spaces and `_ - . + , = @ % :` are fine)",
        special.join(" ")
    ))
}

fn group_index(pattern: &Regex, name: &str) -> Option<usize> {
    pattern.capture_names().position(|n| n == Some(name))
}

/// What walking one session folder found.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Walk {
    /// Something inside was modified after the settle cut-off: still copying.
    /// `modified` is the time of the first recent entry met (the walk stops
    /// there), or `None` when an entry vanished under our feet.
    Settling {
        modified: Option<SystemTime>,
    },
    Done(FolderStats),
    /// The folder itself disappeared between listing and walking.
    Vanished,
    /// It could not be read (permissions, I/O error): a sentence for the user.
    Unreadable(String),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FolderStats {
    /// Regular files, recursively, dot-files excluded.
    pub n_files: u64,
    /// Immediate non-hidden subfolders with their recursive file counts, by name.
    pub series: Vec<(String, u64)>,
    /// Newest mtime of the folder and everything in it (hidden entries included:
    /// rsync writes into hidden temporary files).
    pub newest: SystemTime,
    /// The counted files' paths, sizes and mtimes, hashed: what the header
    /// summary of the folder is kept under (see [`super::dicom`]).
    pub fingerprint: u64,
}

/// Walks one session folder. An entry whose mtime is after `cutoff` makes the
/// folder [`Walk::Settling`] and ends the walk.
pub(crate) fn walk_session(folder: &Path, cutoff: SystemTime) -> Walk {
    let own = match fs::metadata(folder) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Walk::Vanished,
        Err(e) => return Walk::Unreadable(format!("cannot read `{}`: {e}", folder.display())),
    };
    let mut newest = own.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    if newest > cutoff {
        return Walk::Settling {
            modified: Some(newest),
        };
    }

    let mut n_files = 0u64;
    let mut fingerprint = 0u64;
    let mut series: Vec<(String, u64)> = Vec::new();
    // (directory, index into `series` of the series it belongs to)
    let mut stack: Vec<(PathBuf, Option<usize>)> = vec![(folder.to_path_buf(), None)];
    while let Some((dir, series_idx)) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if dir == folder {
                    return Walk::Vanished;
                }
                // A subfolder removed while we walk: something is moving files.
                return Walk::Settling { modified: None };
            }
            Err(e) => {
                return Walk::Unreadable(format!("cannot read `{}`: {e}", dir.display()));
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    return Walk::Unreadable(format!("cannot read `{}`: {e}", dir.display()));
                }
            };
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            // One stat per entry, for its mtime. `DirEntry::metadata` does not
            // follow symlinks; a symlink is followed once: a link to a file
            // counts as a file, a link to a folder only for its mtime (never
            // recursed, so a link cycle cannot trap the walk).
            let (meta, kind) = if file_type.is_symlink() {
                match fs::metadata(entry.path()) {
                    Ok(m) if m.is_file() => (m, Kind::File),
                    Ok(m) => (m, Kind::Other),
                    // A dangling link: nothing to count.
                    Err(_) => continue,
                }
            } else {
                let kind = if file_type.is_file() {
                    Kind::File
                } else if file_type.is_dir() {
                    Kind::Dir
                } else {
                    Kind::Other
                };
                match entry.metadata() {
                    Ok(m) => (m, kind),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        // Renamed or deleted under our feet (rsync's temporary
                        // files do this): the folder is still being written.
                        return Walk::Settling { modified: None };
                    }
                    Err(e) => {
                        return Walk::Unreadable(format!(
                            "cannot read `{}`: {e}",
                            entry.path().display()
                        ));
                    }
                }
            };
            if let Ok(modified) = meta.modified() {
                if modified > cutoff {
                    return Walk::Settling {
                        modified: Some(modified),
                    };
                }
                newest = newest.max(modified);
            }
            let name = entry.file_name();
            let hidden = name.as_encoded_bytes().first() == Some(&b'.');
            if hidden {
                continue;
            }
            if kind == Kind::File {
                n_files += 1;
                fingerprint = fingerprint.wrapping_add(file_hash(&dir, &name, &meta));
                if let Some(i) = series_idx {
                    series[i].1 += 1;
                }
            } else if kind == Kind::Dir {
                let idx = match series_idx {
                    Some(i) => Some(i),
                    None => {
                        series.push((name.to_string_lossy().into_owned(), 0));
                        Some(series.len() - 1)
                    }
                };
                stack.push((entry.path(), idx));
            }
        }
    }
    series.sort();
    Walk::Done(FolderStats {
        n_files,
        series,
        newest,
        fingerprint,
    })
}

/// FNV-1a over a file's path (its folder and name, hashed in place rather
/// than joined: no allocation per file), size and mtime, finished with a
/// mixer so that summing the hashes of a folder's files (in any order) stays
/// well spread.
fn file_hash(dir: &Path, name: &std::ffi::OsStr, meta: &fs::Metadata) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    for b in dir
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .copied()
        .chain([b'/'])
        .chain(name.as_encoded_bytes().iter().copied())
        .chain(meta.len().to_le_bytes())
        .chain(mtime.to_le_bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    // splitmix64's finaliser
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Other,
}

/// Walks every folder, on a few threads; results are in the order of `folders`.
pub(crate) fn walk_all(folders: &[&Path], cutoff: SystemTime) -> Vec<Walk> {
    par_map(folders, 16, |f| walk_session(f, cutoff))
}

/// `f` over every item on a few threads (serially below `serial_below`
/// items); results are in the order of `items`. Reading folders waits on the
/// disk (or NFS) more than on the CPU, hence twice the cores, at most 8.
pub(crate) fn par_map<T: Sync, R: Send>(
    items: &[T],
    serial_below: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    const MAX_THREADS: usize = 8;
    if items.len() < serial_below.max(2) {
        return items.iter().map(&f).collect();
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .saturating_mul(2)
        .clamp(1, MAX_THREADS)
        .min(items.len());
    let next = AtomicUsize::new(0);
    let mut results: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        done.push((i, f(item)));
                    }
                    done
                })
            })
            .collect();
        for handle in handles {
            match handle.join() {
                Ok(done) => {
                    for (i, r) in done {
                        results[i] = Some(r);
                    }
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    });
    results
        .into_iter()
        .map(|r| r.expect("every index is taken by exactly one thread"))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn touch(path: &Path) {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(path, b"x").unwrap();
    }

    fn later() -> SystemTime {
        SystemTime::now() + Duration::from_secs(3600)
    }

    #[test]
    fn counts_files_and_series_ignoring_dot_files() {
        let dir = tempfile::tempdir().unwrap();
        let s = dir.path();
        touch(&s.join("top.dcm"));
        touch(&s.join(".DS_Store"));
        touch(&s.join("DTI_64dir/a.dcm"));
        touch(&s.join("DTI_64dir/b.dcm"));
        touch(&s.join("DTI_64dir/deeper/c.dcm"));
        touch(&s.join("T1_MPRAGE/a.dcm"));
        touch(&s.join(".hidden/a.dcm"));
        let Walk::Done(stats) = walk_session(s, later()) else {
            panic!("expected a finished walk");
        };
        assert_eq!(stats.n_files, 5);
        assert_eq!(
            stats.series,
            vec![("DTI_64dir".to_string(), 3), ("T1_MPRAGE".to_string(), 1)]
        );
    }

    #[test]
    fn a_recent_file_makes_the_folder_settling() {
        let dir = tempfile::tempdir().unwrap();
        touch(&dir.path().join("a/b.dcm"));
        let cutoff = SystemTime::now() - Duration::from_secs(1800);
        assert!(matches!(
            walk_session(dir.path(), cutoff),
            Walk::Settling { modified: Some(_) }
        ));
    }

    #[test]
    fn a_missing_folder_vanished() {
        assert_eq!(
            walk_session(Path::new("/nonexistent/nfslurm/x"), later()),
            Walk::Vanished
        );
    }

    #[test]
    fn walk_all_keeps_order_on_many_threads() {
        let dir = tempfile::tempdir().unwrap();
        let mut folders = Vec::new();
        for i in 0..40 {
            let f = dir.path().join(format!("S{i:02}"));
            for j in 0..i % 5 {
                touch(&f.join(format!("{j}.dcm")));
            }
            fs::create_dir_all(&f).unwrap();
            folders.push(f);
        }
        let refs: Vec<&Path> = folders.iter().map(|f| f.as_path()).collect();
        let walks = walk_all(&refs, later());
        for (i, walk) in walks.iter().enumerate() {
            let Walk::Done(stats) = walk else {
                panic!("{walk:?}")
            };
            assert_eq!(stats.n_files, (i % 5) as u64);
        }
    }
}
