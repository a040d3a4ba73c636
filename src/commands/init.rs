//! `nfslurm init`: a commented starter config and mapping sheet.

use std::fs;
use std::path::Path;

use super::{Failure, Settings};

const STARTER: &str = include_str!("assets/starter.yaml");
/// `init --site local`: a study that runs on this machine as written.
const STARTER_LOCAL: &str = include_str!("assets/starter-local.yaml");
const MAPPING: &str = "ScanID,SubjectCode,SessionID\n# one row per scanning session, e.g.:\n";

/// The starter config for a site (a bundled name or a path).
pub fn starter_config(site: &str) -> String {
    if site == "local" {
        return STARTER_LOCAL.to_string();
    }
    STARTER.replace("{{SITE}}", site)
}

pub fn run(settings: &Settings, dir: &Path, site: &str, force: bool) -> anyhow::Result<i32> {
    if crate::config::bundled_site(site).is_none()
        && !dir.join(site).exists()
        && !Path::new(site).exists()
    {
        return Err(Failure::user(
            format!("`--site {site}` is neither a bundled site config nor a file"),
            Some(&format!(
                "bundled: {}",
                crate::config::BUNDLED_SITES.join(", ")
            )),
        ));
    }
    fs::create_dir_all(dir)?;
    let config = dir.join("nfslurm.yaml");
    let mapping = dir.join("mapping.csv");
    for path in [&config, &mapping] {
        if path.exists() && !force {
            return Err(Failure::user(
                format!("`{}` already exists", path.display()),
                Some("use `--force` to overwrite it"),
            ));
        }
    }
    fs::write(&config, starter_config(site))?;
    fs::write(
        &mapping,
        MAPPING.lines().next().unwrap_or_default().to_string() + "\n",
    )?;
    fs::create_dir_all(dir.join("dicom"))?;
    if !settings.quiet {
        println!("wrote `{}` and `{}`", config.display(), mapping.display());
        println!("next:");
        let here = dir.canonicalize().ok() == std::env::current_dir().ok();
        if !here {
            println!(
                "  cd {}",
                crate::render::shell_quote(&dir.display().to_string())
            );
        }
        if site == "local" {
            println!("  put session folders in `dicom/` and a row per folder in `mapping.csv`");
            println!(
                "  nfslurm sync                  discovers them and runs the stand-in chain here"
            );
            println!("  nfslurm status");
        } else {
            println!("  edit `nfslurm.yaml` (commands, containers, paths) and `mapping.csv`");
            println!("  nfslurm doctor                checks them");
            println!("  nfslurm discover && nfslurm plan");
        }
    }
    Ok(0)
}
