//! Site configs: what belongs to a cluster rather than a study.
//!
//! Bundled ones are embedded in the binary, so `site: generic` works from a
//! bare `nfslurm` on any login node; a path names the user's own copy.

use std::path::{Path, PathBuf};

use super::error::{ConfigError, Loc, Source, backticked, closest};
use super::template::check_tera;
use super::types::{ContainerRuntime, ContainerSettings, Scheduler, SiteConfig, SubmissionMode};
use super::yaml::{self, Ctx, Map, Val};
use super::{BUNDLED_TEMPLATE, resolve_path};

/// Names of the bundled site configs (`site-configs/<name>.yaml`).
pub const BUNDLED_SITES: &[&str] = &["generic", "local"];

/// The text of a bundled site config.
pub fn bundled_site(name: &str) -> Option<&'static str> {
    match name {
        "generic" => Some(include_str!("../../site-configs/generic.yaml")),
        "local" => Some(include_str!("../../site-configs/local.yaml")),
        _ => None,
    }
}

/// The name shown for the bundled template.
pub const BUNDLED_TEMPLATE_NAME: &str = "bundled:sbatch.sh.tera";

pub(super) const SITE_KEYS: &[&str] = &["name", "scheduler", "container", "modules", "template"];
pub(super) const CONTAINER_KEYS: &[&str] = &["runtime", "options", "binds", "env"];

/// Every scheduler key, as written in a site's `scheduler:` block (and the
/// study's own `scheduler:` block).
pub(crate) const SCHEDULER_KEYS: &[&str] = &[
    "partition",
    "account",
    "qos",
    "cluster",
    "extra_directives",
    "max_submitted",
    "poll_interval",
    "requeue",
    "sacct_chunk",
    "submission",
    "array_job_name",
    "tool_timeout",
];

/// The scheduler keys a pipeline may override (they apply per job).
pub(crate) const PIPELINE_SCHEDULER_KEYS: &[&str] = &[
    "partition",
    "account",
    "qos",
    "cluster",
    "extra_directives",
    "requeue",
];

pub(crate) fn default_scheduler() -> Scheduler {
    Scheduler {
        partition: None,
        account: None,
        qos: None,
        cluster: None,
        extra_directives: Vec::new(),
        max_submitted: 2000,
        poll_interval_s: 30,
        requeue: false,
        sacct_chunk: 200,
        submission: SubmissionMode::Arrays,
        array_job_name: crate::templating::DEFAULT_ARRAY_JOB_NAME.to_string(),
        tool_timeout_s: 120,
    }
}

/// Applies the scheduler keys present in `map` (among `keys`) to `sched`.
///
/// `partition`, `account`, `qos` and `cluster` may be set to `null` to unset
/// a value inherited from the site.
pub(crate) fn apply_scheduler_keys(
    ctx: &Ctx,
    map: &Map,
    keys: &[&str],
    sched: &mut Scheduler,
) -> Result<(), ConfigError> {
    for &key in keys {
        let Some(val) = map.get_raw(key) else {
            continue;
        };
        let is_null = matches!(val.node.kind, yaml::Kind::Null);
        match key {
            "partition" | "account" | "qos" | "cluster" => {
                let value = if is_null {
                    None
                } else {
                    Some(val.string(ctx)?).filter(|s| !s.trim().is_empty())
                };
                match key {
                    "partition" => sched.partition = value,
                    "account" => sched.account = value,
                    "qos" => sched.qos = value,
                    _ => sched.cluster = value,
                }
            }
            "extra_directives" => {
                sched.extra_directives = val.string_list(ctx)?;
            }
            _ if is_null => {}
            "max_submitted" => sched.max_submitted = val.u32_min(ctx, 1)?,
            "poll_interval" => {
                sched.poll_interval_s = val.duration(ctx)?.max(1);
            }
            "requeue" => sched.requeue = val.bool(ctx)?,
            "sacct_chunk" => sched.sacct_chunk = val.u32_min(ctx, 1)? as usize,
            "tool_timeout" => {
                let secs = val.duration(ctx)?;
                if !(1..=3600).contains(&secs) {
                    return Err(ctx.src.at(
                        val.loc(),
                        val.path,
                        format!("`{}` must be between 1s and 1h, found {secs}s", val.path),
                        Some("the default, 2m, suits most controllers".to_string()),
                    ));
                }
                sched.tool_timeout_s = secs;
            }
            "submission" => {
                sched.submission = match val.raw_str(ctx)? {
                    "jobs" => SubmissionMode::Jobs,
                    "arrays" => SubmissionMode::Arrays,
                    other => {
                        return Err(ctx.src.at(
                            val.loc(),
                            val.path,
                            format!("`{}` must be `jobs` or `arrays`, found `{other}`", val.path),
                            Some("`jobs` submits one sbatch per unit".to_string()),
                        ));
                    }
                }
            }
            "array_job_name" => {
                let text = val.raw_str(ctx)?;
                crate::templating::array_job_name(text, "study", "pipeline").map_err(|e| {
                    ctx.src.at(
                        val.loc(),
                        val.path,
                        format!("`{}` is not a usable job name template: {e}", val.path),
                        Some(
                            "a Tera template over `study` and `pipeline`, such as `nf-{{ study }}-{{ pipeline }}`"
                                .to_string(),
                        ),
                    )
                })?;
                sched.array_job_name = text.to_string();
            }
            _ => unreachable!("scheduler key lists and this match agree"),
        }
    }
    Ok(())
}

/// Where the site config comes from, as written in `site:`.
pub(crate) enum SiteSpec {
    Bundled(&'static str),
    /// The path, and where `site:` names it.
    File(PathBuf, Loc),
}

/// Resolves `site:` (default `generic`) relative to the config's folder.
pub(crate) fn resolve_site_spec(
    ctx: &Ctx,
    site: Option<Val>,
    config_dir: &Path,
) -> Result<SiteSpec, ConfigError> {
    let Some(val) = site else {
        return Ok(SiteSpec::Bundled("generic"));
    };
    let raw = val.raw_str(ctx)?;
    if let Some(name) = BUNDLED_SITES.iter().find(|n| **n == raw) {
        return Ok(SiteSpec::Bundled(name));
    }
    let looks_like_name = !raw.contains('/') && !raw.contains('.') && !raw.contains('$');
    let path = resolve_path(ctx, val, config_dir)?;
    if looks_like_name && !path.exists() {
        let hint = match closest(raw, BUNDLED_SITES) {
            Some(near) => format!("did you mean `{near}`?"),
            None => format!(
                "the bundled sites are {}; for your own, write a path such as `./{raw}.yaml`",
                backticked(BUNDLED_SITES)
            ),
        };
        return Err(ctx.src.at(
            val.loc(),
            "site",
            format!("`site` names `{raw}`, which is not a bundled site"),
            Some(hint),
        ));
    }
    Ok(SiteSpec::File(path, val.loc()))
}

/// Reads and validates a site config.
pub(crate) fn load_site(
    ctx: &Ctx,
    site: Option<Val>,
    config_dir: &Path,
) -> Result<SiteConfig, ConfigError> {
    let spec = resolve_site_spec(ctx, site, config_dir)?;
    let (text, source, name_default, site_dir, src): (String, String, String, PathBuf, Source) =
        match &spec {
            SiteSpec::Bundled(name) => (
                bundled_site(name).unwrap_or_default().to_string(),
                format!("bundled:{name}"),
                name.to_string(),
                config_dir.to_path_buf(),
                Source {
                    name: format!("bundled:site-configs/{name}.yaml"),
                },
            ),
            SiteSpec::File(path, loc) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ctx.src.at(
                        *loc,
                        "site",
                        format!("cannot read the site config `{}`: {e}", path.display()),
                        Some(format!(
                            "a relative `site` path is relative to the config's folder; \
                             the bundled sites are {}",
                            backticked(BUNDLED_SITES)
                        )),
                    )
                })?;
                let name_default = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "site".to_string());
                let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
                (
                    text,
                    path.display().to_string(),
                    name_default,
                    dir,
                    Source {
                        name: super::display_name(path),
                    },
                )
            }
        };
    let site_ctx = Ctx {
        src,
        env: ctx.env,
        text: &text,
    };
    parse_site(&site_ctx, source, name_default, &site_dir)
}

/// Parses a site config's text; `dir` anchors its relative paths.
pub(crate) fn parse_site(
    ctx: &Ctx,
    source: String,
    name_default: String,
    dir: &Path,
) -> Result<SiteConfig, ConfigError> {
    let root = yaml::parse(ctx.text, &ctx.src)?;
    let empty = yaml::Node {
        kind: yaml::Kind::Null,
        loc: Default::default(),
    };
    let root = root.unwrap_or(empty);
    let top = Map::open(ctx, &root, "", SITE_KEYS)?;

    let name = match top.get("name") {
        Some(v) => v.string(ctx)?,
        None => name_default,
    };

    let mut scheduler = default_scheduler();
    if let Some(v) = top.get("scheduler") {
        let m = Map::open(ctx, v.node, v.path, SCHEDULER_KEYS)?;
        apply_scheduler_keys(ctx, &m, SCHEDULER_KEYS, &mut scheduler)?;
    }

    let mut container = ContainerSettings {
        runtime: ContainerRuntime::Apptainer,
        options: Vec::new(),
        binds: Vec::new(),
        env: Default::default(),
    };
    if let Some(v) = top.get("container") {
        let m = Map::open(ctx, v.node, v.path, CONTAINER_KEYS)?;
        if let Some(r) = m.get("runtime") {
            container.runtime = match r.raw_str(ctx)? {
                "apptainer" => ContainerRuntime::Apptainer,
                "singularity" => ContainerRuntime::Singularity,
                "none" => ContainerRuntime::None,
                other => {
                    return Err(ctx.src.at(
                        r.loc(),
                        r.path,
                        format!(
                            "`{}` must be `apptainer`, `singularity` or `none`, found `{other}`",
                            r.path
                        ),
                        Some("`none` runs pipeline commands on the host".to_string()),
                    ));
                }
            };
        }
        if let Some(o) = m.get("options") {
            container.options = o.string_list(ctx)?;
        }
        if let Some(b) = m.get("binds") {
            container.binds = b.string_list(ctx)?;
        }
        if let Some(e) = m.get("env") {
            container.env = e.env_map(ctx)?;
        }
    }

    let modules = match top.get("modules") {
        Some(v) => v.string_list(ctx)?,
        None => Vec::new(),
    };

    let (template_name, template) = match top.get("template") {
        None => (
            BUNDLED_TEMPLATE_NAME.to_string(),
            BUNDLED_TEMPLATE.to_string(),
        ),
        Some(v) => read_template(ctx, v, dir)?,
    };

    Ok(SiteConfig {
        name,
        source,
        scheduler,
        container,
        modules,
        template_name,
        template,
    })
}

/// Reads a template named by a `template:` key (relative to `dir`) and checks
/// its Tera syntax.
pub(crate) fn read_template(
    ctx: &Ctx,
    val: Val,
    dir: &Path,
) -> Result<(String, String), ConfigError> {
    let path = resolve_path(ctx, val, dir)?;
    let text = std::fs::read_to_string(&path).map_err(|e| {
        ctx.src.at(
            val.loc(),
            val.path,
            format!(
                "`{}` names `{}`, which cannot be read: {e}",
                val.path,
                path.display()
            ),
            Some(format!(
                "a relative template path is relative to `{}`",
                ctx.src.name
            )),
        )
    })?;
    let name = path.display().to_string();
    check_tera(&name, &text).map_err(|e| {
        let place = match (e.line, e.column) {
            (Some(l), Some(c)) => format!(" at {name}:{l}:{c}"),
            _ => String::new(),
        };
        ctx.src.at(
            val.loc(),
            val.path,
            format!(
                "the template `{name}` is not valid Tera{place}: {}",
                e.message
            ),
            Some(
                "templates use Tera syntax with `<# … #>` comments; see docs/config-reference.md"
                    .to_string(),
            ),
        )
    })?;
    if let Some(p) =
        crate::templating::outside_value_placements(&text, crate::templating::TemplateKind::Script)
            .into_iter()
            .next()
    {
        return Err(ctx.src.at(
            val.loc(),
            val.path,
            format!(
                "the template `{name}` puts `{}` {} at {name}:{}, where a folder name could run as code: `{}`",
                p.expr, p.inside, p.line, p.excerpt
            ),
            Some(format!(
                "{} (in a script template, `{{{{ command | shell_quote }}}}` is one word)",
                super::load::OUTSIDE_VALUE_HINT
            )),
        ));
    }
    Ok((name, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse_bundled(name: &str) -> SiteConfig {
        let ctx = Ctx {
            src: Source {
                name: format!("bundled:{name}"),
            },
            env: &no_env,
            text: bundled_site(name).unwrap(),
        };
        parse_site(
            &ctx,
            format!("bundled:{name}"),
            name.to_string(),
            Path::new("/"),
        )
        .unwrap()
    }

    #[test]
    fn bundled_sites_parse() {
        for name in BUNDLED_SITES {
            assert!(bundled_site(name).is_some());
            parse_bundled(name);
        }
        assert!(bundled_site("nope").is_none());
    }

    #[test]
    fn generic_site_values() {
        let site = parse_bundled("generic");
        assert_eq!(site.name, "generic");
        assert_eq!(site.scheduler.partition.as_deref(), Some("normal"));
        assert_eq!(site.scheduler.max_submitted, 2000);
        assert_eq!(site.scheduler.poll_interval_s, 30);
        assert!(!site.scheduler.requeue);
        assert_eq!(site.container.runtime, ContainerRuntime::Apptainer);
        assert_eq!(site.container.options, ["--cleanenv", "--containall"]);
        assert!(site.container.binds.is_empty());
        assert_eq!(site.template_name, BUNDLED_TEMPLATE_NAME);
        assert_eq!(site.template, BUNDLED_TEMPLATE);
    }

    #[test]
    fn local_site_values() {
        let site = parse_bundled("local");
        assert_eq!(site.scheduler.partition, None);
        assert_eq!(site.scheduler.poll_interval_s, 2);
        assert_eq!(site.container.runtime, ContainerRuntime::None);
    }
}
