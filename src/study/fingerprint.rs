//! A fingerprint of everything a sync reads outside the state: the config
//! (as loaded: commands, templates, resolved variables, site settings), the
//! nfslurm binary, the mapping sheet, and every folder discovery lists,
//! mapped or not (each file's path, size and mtime, its series; the entries
//! the listing skipped and why).
//!
//! Two equal fingerprints mean discovery would report the same sessions and
//! the planner would read the same config, so a sync that changed nothing
//! in the state has nothing to do (see `crate::state::fingerprint`). It costs
//! what discovery's walk costs (a `stat` per entry), without the mapping,
//! the validation, the DICOM headers, the state and the planner.

use std::path::Path;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::StudyError;
use super::scan::{self, Walk};
use crate::config::{Config, ScanIdFrom};

/// The fingerprint (hex sha256), or `None` when a session folder is still
/// settling or vanished during the walk: what discovery reports then depends
/// on the time, not only on the files, so nothing may be taken as unchanged.
pub fn study_fingerprint(config: &Config, now: SystemTime) -> Result<Option<String>, StudyError> {
    let discovery = &config.discovery;
    let mut h = Sha256::new();
    let mut part = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    part(b"nfslurm study fingerprint 1");
    // Another nfslurm may plan otherwise: its version and its file.
    part(env!("CARGO_PKG_VERSION").as_bytes());
    if let Ok(meta) = std::env::current_exe().and_then(std::fs::metadata) {
        part(&meta.len().to_le_bytes());
        part(&nanos(meta.modified().ok()).to_le_bytes());
    }
    part(format!("{config:?}").as_bytes());
    let sheet =
        std::fs::read(&discovery.mapping.file).map_err(|source| StudyError::MappingRead {
            file: discovery.mapping.file.clone(),
            source,
        })?;
    part(&sheet);

    // The folders discovery walks, as it lists and maps them.
    let by_header = matches!(discovery.mapping.scan_id_from, ScanIdFrom::Header(_));
    let any_name = regex::Regex::new("(?s)^.+$").expect("a valid regex");
    let pattern = if by_header {
        &any_name
    } else {
        &discovery.pattern
    };
    let (candidates, skipped) = scan::list_candidates(&config.paths.dicom_root, pattern)?;
    for s in &skipped {
        part(s.folder.as_os_str().as_encoded_bytes());
        part(s.why.as_bytes());
    }
    // Every candidate is walked, mapped or not (discovery walks only the
    // mapped ones): parsing the sheet would cost more than the few unmapped
    // folders a study has, and a change in one of them only makes the sync
    // run in full.
    let folders: Vec<&Path> = candidates.iter().map(|c| c.folder.as_path()).collect();
    let cutoff = now
        .checked_sub(Duration::from_secs(discovery.settle_s))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    for (folder, walk) in folders.iter().zip(scan::walk_all(&folders, cutoff)) {
        part(folder.as_os_str().as_encoded_bytes());
        match walk {
            Walk::Settling { .. } | Walk::Vanished => return Ok(None),
            Walk::Unreadable(why) => part(why.as_bytes()),
            Walk::Done(stats) => {
                part(&stats.n_files.to_le_bytes());
                part(&stats.fingerprint.to_le_bytes());
                part(&nanos(Some(stats.newest)).to_le_bytes());
                for (name, n) in &stats.series {
                    part(name.as_bytes());
                    part(&n.to_le_bytes());
                }
            }
        }
    }
    Ok(Some(
        h.finalize().iter().map(|b| format!("{b:02x}")).collect(),
    ))
}

fn nanos(t: Option<SystemTime>) -> u128 {
    t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}
