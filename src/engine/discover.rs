//! Discovery as a use case: scan, map, validate, and register what was found.

use std::time::SystemTime;

use crate::config::Config;
use crate::error::Failure;
use crate::state::{SessionChanges, SessionRow, Store};
use crate::study::{self, DiscoveryReport};

/// Runs discovery and registers what it found. Shared with `sync`.
pub fn discover_and_register(
    config: &Config,
    store: &mut Store,
    now: i64,
) -> anyhow::Result<(DiscoveryReport, SessionChanges)> {
    let known = match config.discovery.dicom {
        crate::config::DicomMode::Off => Default::default(),
        _ => store.known_headers(
            &study::dicom::verdict_key(&config.discovery),
            matches!(
                config.discovery.mapping.scan_id_from,
                crate::config::ScanIdFrom::Header(_)
            ),
        )?,
    };
    let report = study::discover_known(
        &config.discovery,
        &config.paths.dicom_root,
        SystemTime::now(),
        known,
    )
    .map_err(|e| Failure::user(crate::error::error_chain(&e), e.hint()))?;
    store.save_headers(&report.headers_read, now)?;
    store.save_verdicts(&report.verdicts)?;
    let rows: Vec<SessionRow> = report
        .sessions
        .iter()
        .map(|s| SessionRow {
            scan_id: s.scan_id.clone(),
            subject: s.subject.clone(),
            session: s.session.clone(),
            dicom_dir: s.folder.clone(),
            valid: s.problem.is_none(),
            problem: s.problem.clone(),
            n_files: s.n_files,
        })
        .collect();
    let changes = store.register_sessions(&rows, now)?;
    Ok((report, changes))
}
