//! `nfslurm report -o FILE.html`: the dashboard as one static file, with the
//! study in it, for cron to refresh and for places where no server may run.
//!
//! It only reads the state (no lock, no cluster call), so a cron line can
//! run it as often as `sync`. The file is replaced atomically: a browser or
//! a web server reading it never sees half a page.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::{Failure, Settings, display_path, json_path};
use crate::dashboard;
use crate::state::Store;

pub fn run(settings: &Settings, out: &Path) -> anyhow::Result<i32> {
    let config = super::load_config(settings)?;
    let store = Store::open_existing(&config.paths.state_dir)?;
    let data = dashboard::report_data(&config, store.as_ref())?;
    let page = dashboard::page(Some(&data));
    let path = absolute(out)?;
    write_atomically(&path, page.as_bytes())?;
    settings.printer().result(
        || json!({ "report": json_path(&path) }),
        || format!("{}\n", display_path(&path)),
    );
    Ok(0)
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    if path.as_os_str().is_empty() {
        return Err(Failure::user(
            "`-o` needs a file name",
            Some("e.g. `nfslurm report -o study.html`"),
        ));
    }
    Ok(std::path::absolute(path)?)
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over
/// `path`. A new report is private to its owner (it names subjects and
/// shows their logs, as the state does); a report written again keeps the
/// permissions it was given.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let name = path.file_name().ok_or_else(|| {
        Failure::user(
            format!("`{}` is a folder, not a file name", display_path(path)),
            Some("e.g. `nfslurm report -o study.html`"),
        )
    })?;
    if path.is_dir() {
        return Err(Failure::user(
            format!("`{}` is a folder, not a file name", display_path(path)),
            Some("name the report file, e.g. `-o report/study.html`"),
        ));
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    let mode = fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o600);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let written = (|| -> std::io::Result<()> {
        let mut file = fs::File::create(&tmp)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(err) = written {
        let _ = fs::remove_file(&tmp);
        return Err(Failure::user(
            format!("cannot write the report `{}`: {err}", display_path(path)),
            Some("check that its folder exists and is writable, or choose another with `-o`"),
        ));
    }
    Ok(())
}
