//! Provenance: which nfslurm, config, template, script and image produced a
//! run's output, with its job, nodes, resources and attempt chain.
//!
//! The part fixed at submission ([`Submitted`]) is computed once per run,
//! before the executor is called, and kept in the state (`run_provenance`);
//! the rest (job ID, nodes, resources used, the attempt chain) is read from
//! the run rows whenever provenance is shown. Each run's provenance is also
//! a file beside its script, `attempt-<n>.provenance.json`: written at
//! submission and written again when the run ends.
//!
//! An image's sha256 is the costly part (images are gigabytes): it is
//! computed once per (path, size, mtime) and kept in `image_digests`, so a
//! submission of 3,000 units over one image reads the image at most once.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use std::collections::HashMap;

use crate::config::Config;
use crate::state::{NewRun, RunRow, StateError, Store};

/// What is fixed when a run is submitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submitted {
    pub nfslurm_version: String,
    pub config_file: PathBuf,
    /// sha256 of the config file's bytes.
    pub config_sha256: String,
    /// The pipeline's own fingerprint (command, container, template): a
    /// change of it makes done units stale.
    pub pipeline_fingerprint: String,
    pub template: String,
    pub template_sha256: String,
    pub script_sha256: String,
    pub image: Option<Image>,
    pub executor: String,
    pub resources_asked: Asked,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Asked {
    pub cpus: u32,
    pub mem_mb: u64,
    pub time_limit_s: u64,
    pub gpus: u32,
}

/// The pipeline's container image as submitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    pub path: String,
    /// `None` when the image is not a readable file here (a registry URI,
    /// a path only the compute nodes see): `note` says why.
    pub sha256: Option<String>,
    pub size: Option<u64>,
    pub mtime: Option<i64>,
    pub note: Option<String>,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The config file's sha256 (of its bytes as they are now).
pub fn config_sha256(config: &Config) -> String {
    match fs::read(&config.file) {
        Ok(bytes) => sha256_hex(&bytes),
        Err(e) => format!("unreadable: {e}"),
    }
}

/// The image's digest, from `image_digests` when its size and mtime are
/// those it was hashed at, else hashed now and kept.
pub fn image(store: &mut Store, path: &str) -> Result<Image, StateError> {
    let file = Path::new(path);
    let meta = match fs::metadata(file) {
        Ok(m) if m.is_file() => m,
        Ok(_) => return Ok(unhashed(path, "not a regular file")),
        Err(_) => return Ok(unhashed(path, "not a file on this machine")),
    };
    let size = meta.len();
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i64);
    let cached = store.image_digest(path, size, mtime_ns)?;
    let sha256 = match cached {
        Some(s) => s,
        None => {
            let Some(digest) = hash_file(file) else {
                return Ok(unhashed(path, "cannot be read"));
            };
            store.save_image_digest(path, size, mtime_ns, &digest)?;
            digest
        }
    };
    Ok(Image {
        path: path.to_string(),
        sha256: Some(sha256),
        size: Some(size),
        mtime: Some(mtime_ns / 1_000_000_000),
        note: None,
    })
}

fn unhashed(path: &str, why: &str) -> Image {
    Image {
        path: path.to_string(),
        sha256: None,
        size: None,
        mtime: None,
        note: Some(why.to_string()),
    }
}

fn hash_file(path: &Path) -> Option<String> {
    let mut file = File::open(path).ok()?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Some(hex(&hasher.finalize()))
}

/// Records the provenance of the runs a submission just created (`ids` in
/// the order of `runs`, `scripts` their rendered text): called by the
/// engine after the intents are written, before the executor runs.
pub fn record_submission(
    config: &Config,
    store: &mut Store,
    runs: &[NewRun],
    ids: &[i64],
    scripts: &[String],
) -> Result<(), StateError> {
    let config_sha = config_sha256(config);
    let mut images: HashMap<String, Image> = HashMap::new();
    // Hashed once per pipeline, not once per run.
    let mut template_shas: HashMap<&str, String> = HashMap::new();
    let mut out = Vec::with_capacity(runs.len());
    for ((run, &id), script) in runs.iter().zip(ids).zip(scripts) {
        let Some(pipeline) = config.pipeline(&run.key.pipeline) else {
            continue;
        };
        let image = match &pipeline.container {
            None => None,
            Some(path) => Some(match images.get(path) {
                Some(i) => i.clone(),
                None => {
                    // A relative image path is the config's, as every path
                    // of the config is.
                    let local = Path::new(path);
                    let i = if local.is_relative() && !path.contains("://") {
                        let mut i = image(store, &config.dir.join(local).to_string_lossy())?;
                        i.path = path.clone();
                        i
                    } else {
                        image(store, path)?
                    };
                    images.insert(path.clone(), i.clone());
                    i
                }
            }),
        };
        let asked = Asked {
            cpus: run.cpus,
            mem_mb: run.mem_mb,
            time_limit_s: run.time_limit_s,
            gpus: run.gpus,
        };
        out.push((
            id,
            run.script_path.as_path(),
            Submitted {
                nfslurm_version: env!("CARGO_PKG_VERSION").to_string(),
                config_file: config.file.clone(),
                config_sha256: config_sha.clone(),
                pipeline_fingerprint: pipeline.config_hash.clone(),
                template: pipeline.template_name.clone(),
                template_sha256: template_shas
                    .entry(pipeline.name.as_str())
                    .or_insert_with(|| sha256_hex(pipeline.template.as_bytes()))
                    .clone(),
                script_sha256: sha256_hex(script.as_bytes()),
                image,
                executor: run.executor.as_str().to_string(),
                resources_asked: asked,
            },
        ));
    }
    record(store, &out)
}

/// Keeps the fixed parts of new runs, in one transaction, and writes each
/// run's provenance file.
pub fn record(store: &mut Store, runs: &[(i64, &Path, Submitted)]) -> Result<(), StateError> {
    let rows: Vec<(i64, String)> = runs
        .iter()
        .map(|(id, _, s)| {
            (
                *id,
                serde_json::to_string(s).expect("provenance serialises"),
            )
        })
        .collect();
    store.save_provenance(&rows)?;
    let ids: Vec<i64> = runs.iter().map(|(id, _, _)| *id).collect();
    let _ = refresh_files(store, &ids);
    Ok(())
}

/// The fixed part kept for a run, if any (runs from before provenance have none).
pub fn submitted_of(store: &Store, run_id: i64) -> Result<Option<Submitted>, StateError> {
    let text = store.provenance_of(run_id)?;
    Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
}

/// The provenance file of the run whose script is `script`.
pub fn file_of(script: &Path) -> PathBuf {
    script.with_extension("provenance.json")
}

/// The whole provenance of a run: the fixed part and what the run rows say.
pub fn document(store: &Store, run: &RunRow) -> Result<serde_json::Value, StateError> {
    let submitted = submitted_of(store, run.id)?;
    Ok(document_of(
        run,
        submitted,
        &store.runs_of_unit(run.unit_id)?,
    ))
}

/// [`document`] from what was read already: the run, what was fixed at its
/// submission, and every run of its unit (oldest first).
fn document_of(
    run: &RunRow,
    submitted: Option<Submitted>,
    unit_runs: &[RunRow],
) -> serde_json::Value {
    let chain: Vec<serde_json::Value> = unit_runs
        .iter()
        .map(|r| {
            json!({"run_id": r.id, "attempt": r.attempt, "job_id": r.job_id,
                   "state": r.state.as_str(), "reason": r.reason,
                   "mem_mb": r.mem_mb, "time_limit_s": r.time_limit_s,
                   "this": r.id == run.id})
        })
        .collect();
    json!({
        "run_id": run.id,
        "unit": run.key.to_string(),
        "attempt": run.attempt,
        "submitted": submitted,
        "job": {
            "executor": run.executor, "job_id": run.job_id, "nodes": run.node,
            "state": run.state.as_str(), "slurm_state": run.slurm_state,
            "exit_code": run.exit_code,
            "submitted_at": crate::output::rfc3339(run.submitted_at),
            "started_at": crate::output::rfc3339(run.started_at),
            "ended_at": crate::output::rfc3339(run.ended_at),
        },
        "resources_asked": {"cpus": run.cpus, "mem_mb": run.mem_mb,
            "time_limit_s": run.time_limit_s, "gpus": run.gpus},
        "resources_used": {"elapsed_s": run.elapsed_s, "max_rss_mb": run.max_rss_mb},
        "script": run.script_path,
        "log": run.log_path,
        "attempt_chain": chain,
    })
}

/// Writes again the provenance files of runs that ended, reading their
/// units and every run of those units (the runs themselves among them) in
/// two queries for all of them.
pub fn refresh_files(store: &Store, run_ids: &[i64]) -> Result<(), StateError> {
    let unit_ids = store.unit_ids_of_runs(run_ids)?;
    let mut by_unit: std::collections::HashMap<i64, Vec<RunRow>> = Default::default();
    for r in store.runs_of_units(&unit_ids)? {
        by_unit.entry(r.unit_id).or_default().push(r);
    }
    // The runs themselves are among their units' runs: not read twice.
    let wanted: std::collections::HashSet<i64> = run_ids.iter().copied().collect();
    let runs = by_unit
        .values()
        .flatten()
        .filter(|r| wanted.contains(&r.id));
    for run in runs {
        let submitted = submitted_of(store, run.id)?;
        let chain = by_unit.get(&run.unit_id).map(Vec::as_slice).unwrap_or(&[]);
        let doc = document_of(run, submitted, chain);
        let text = serde_json::to_string_pretty(&doc).expect("provenance serialises");
        let _ = fs::write(file_of(&run.script_path), text + "\n");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provenance_file_sits_beside_the_script() {
        assert_eq!(
            file_of(Path::new("/s/scripts/bids/sub-01_ses-1/attempt-2.sbatch")),
            PathBuf::from("/s/scripts/bids/sub-01_ses-1/attempt-2.provenance.json")
        );
    }

    #[test]
    fn image_digests_are_cached_by_path_size_and_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("state")).unwrap();
        let image_path = dir.path().join("image.sif");
        fs::write(&image_path, b"first image").unwrap();
        let path = image_path.to_str().unwrap();
        let first = image(&mut store, path).unwrap();
        assert_eq!(
            first.sha256.as_deref(),
            Some(sha256_hex(b"first image").as_str())
        );
        // Same size and mtime: the kept digest, even though the bytes changed.
        let mtime = fs::metadata(&image_path).unwrap().modified().unwrap();
        fs::write(&image_path, b"other image").unwrap();
        File::options()
            .write(true)
            .open(&image_path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert_eq!(image(&mut store, path).unwrap().sha256, first.sha256);
        // A new mtime: hashed again.
        File::options()
            .write(true)
            .open(&image_path)
            .unwrap()
            .set_modified(mtime + std::time::Duration::from_secs(10))
            .unwrap();
        assert_eq!(
            image(&mut store, path).unwrap().sha256.as_deref(),
            Some(sha256_hex(b"other image").as_str())
        );
        let remote = image(&mut store, "docker://pennlinc/qsiprep:1.0.1").unwrap();
        assert_eq!(remote.sha256, None);
        assert_eq!(remote.note.as_deref(), Some("not a file on this machine"));
    }
}
