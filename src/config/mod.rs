//! Configuration: YAML file -> validated [`Config`] (docs/config-reference.md).
//!
//! Loading is strict because a config is usually read by cron, with nobody
//! watching: an unknown key, an undefined `$VAR`, a dependency on a pipeline
//! that does not exist or a command that is not valid Tera stops the load with
//! the file, line, column, key path and a hint, instead of silently doing
//! nothing. Everything past [`load`] holds a [`Config`] that needs no checks.
//!
//! - `yaml`: a located YAML tree and a typed reader (unknown keys, types);
//! - `units`: durations and memory sizes in Slurm's conventions;
//! - `expand`: `$VAR` expansion (not in commands);
//! - `site`: bundled and user site configs, scheduler keys;
//! - `load`: the study config, pipelines, the DAG, config hashes;
//! - `template`: Tera syntax checks with nfslurm's delimiters.
//!
//! The reference for users is `docs/config-reference.md`.

mod dag;
mod dicom;
mod error;
mod expand;
mod load;
pub mod schema;
mod site;
mod template;
mod types;
mod units;
mod yaml;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use error::{ConfigError, Diagnostic};
pub use load::{CONFIG_VERSION, DEFAULT_PATTERN, config_hash};
pub use site::{BUNDLED_SITES, BUNDLED_TEMPLATE_NAME, bundled_site};
pub use types::*;
pub use units::{
    DURATION_FORMS, MEMORY_FORMS, format_memory, format_slurm_time, parse_duration, parse_memory,
};

use yaml::{Ctx, Val};

/// The bundled sbatch template (overridable by a site's or a pipeline's `template:`).
pub const BUNDLED_TEMPLATE: &str = include_str!("../../templates/sbatch.sh.tera");

/// Earlier releases' bundled templates. A unit done under one of them is not
/// stale for that reason alone: upgrading nfslurm never reruns a study (a
/// site's own template, changed, still does). Append the current template
/// here whenever it changes.
pub const BUNDLED_TEMPLATE_HISTORY: &[&str] =
    &[include_str!("../../templates/history/sbatch-0.1-a.sh.tera")];

/// The config file name searched for upward from the working directory.
pub const CONFIG_FILE_NAME: &str = "nfslurm.yaml";

/// The environment variable naming the config file.
pub const CONFIG_ENV: &str = "NFSLURM_CONFIG";

/// Reads, parses and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    load_str(&text, path)
}

/// Parses and validates config text; `file` is used for messages and as the
/// anchor of relative paths. `$VAR`s come from the process environment.
pub fn load_str(text: &str, file: &Path) -> Result<Config, ConfigError> {
    load_str_with_env(text, file, &|name| std::env::var(name).ok())
}

/// As [`load_str`], with `$VAR`s looked up through `env` (for tests and for
/// callers that control the environment).
pub fn load_str_with_env(
    text: &str,
    file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    load::load_config(text, file, env)
}

/// Finds the config file: `explicit` (`--config`), else `$NFSLURM_CONFIG`,
/// else `nfslurm.yaml` in `cwd` or the nearest parent folder that has one.
///
/// A relative path is relative to `cwd`; a folder means its `nfslurm.yaml`.
pub fn find_config(explicit: Option<&Path>, cwd: &Path) -> Result<PathBuf, ConfigError> {
    let env = std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty());
    find_config_with(explicit, env.as_deref().map(Path::new), cwd)
}

fn find_config_with(
    explicit: Option<&Path>,
    env: Option<&Path>,
    cwd: &Path,
) -> Result<PathBuf, ConfigError> {
    let named = |path: &Path, how: &str| -> Result<PathBuf, ConfigError> {
        let mut full = cwd.join(path);
        if full.is_dir() {
            full = full.join(CONFIG_FILE_NAME);
        }
        if full.is_file() {
            Ok(full)
        } else {
            Err(ConfigError::NotFound {
                tried: vec![format!("{how} `{}`", full.display())],
            })
        }
    };
    if let Some(path) = explicit {
        return named(path, "`--config`");
    }
    if let Some(path) = env {
        return named(path, &format!("`{CONFIG_ENV}`"));
    }
    for dir in cwd.ancestors() {
        let candidate = dir.join(CONFIG_FILE_NAME);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(ConfigError::NotFound {
        tried: vec![
            "`--config` (not given)".to_string(),
            format!("`{CONFIG_ENV}` (not set)"),
            format!(
                "`{CONFIG_FILE_NAME}` in `{}` and its parent folders",
                cwd.display()
            ),
        ],
    })
}

/// How a file is named in messages: relative to the working directory when
/// inside it, else as given.
pub(crate) fn display_name(path: &Path) -> String {
    if path.is_absolute()
        && let Ok(cwd) = std::env::current_dir()
        && cwd.parent().is_some()
        && let Ok(rel) = path.strip_prefix(&cwd)
    {
        return rel.display().to_string();
    }
    path.display().to_string()
}

/// A path value: `$VAR`s expanded, a leading `~` made `$HOME`, and a relative
/// path joined to `base` (the folder of the file it was written in).
pub(crate) fn resolve_path(ctx: &Ctx, val: Val, base: &Path) -> Result<PathBuf, ConfigError> {
    let raw = val.raw_str(ctx)?;
    let raw = if raw == "~" || raw.starts_with("~/") {
        format!("${{HOME}}{}", &raw[1..])
    } else {
        raw.to_string()
    };
    let text = val.expand(ctx, &raw)?;
    if text.trim().is_empty() {
        return Err(ctx.src.at(
            val.loc(),
            val.path,
            format!("`{}` is an empty path", val.path),
            Some("write a path, or omit the key for its default".to_string()),
        ));
    }
    let path = Path::new(&text);
    Ok(load::clean(&if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }))
}
