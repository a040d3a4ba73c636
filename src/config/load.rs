//! The study config: from the YAML tree to a validated [`Config`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use regex::Regex;
use sha2::{Digest, Sha256};

use super::dag::topo_order;
use super::error::{ConfigError, Loc, Source, backticked, closest};
use super::site::{PIPELINE_SCHEDULER_KEYS, SCHEDULER_KEYS, apply_scheduler_keys, load_site};
use super::template::check_tera;
use super::types::*;
use super::units::{MAX_CPUS, MAX_GPUS};
use super::yaml::{self, Ctx, EnvLookup, Map, Val};
use super::{display_name, resolve_path, site::read_template};
use crate::model::Level;

pub(super) const TOP_KEYS: &[&str] = &[
    "version",
    "site",
    "executor",
    "scheduler",
    "paths",
    "discovery",
    "pipelines",
    "retry",
    "local",
    "notifications",
    "housekeeping",
];
pub(super) const HOUSEKEEPING_KEYS: &[&str] = &["summarise_runs_after"];
pub(super) const PATHS_KEYS: &[&str] = &[
    "dicom_root",
    "bids_root",
    "derivatives",
    "work_dir",
    "state_dir",
];
pub(super) const DISCOVERY_KEYS: &[&str] = &["pattern", "mapping", "validation", "settle", "dicom"];
pub(super) const MAPPING_KEYS: &[&str] = &[
    "file",
    "scan_id_column",
    "subject_column",
    "session_column",
    "scan_id_from",
];
pub(super) const VALIDATION_KEYS: &[&str] = &["min_files", "required_series"];
pub(super) const SERIES_KEYS: &[&str] = &[
    "name",
    "match",
    "min_files",
    "match_on",
    "min_instances",
    "image_type",
    "max_series",
];
pub(super) const RETRY_KEYS: &[&str] = &[
    "max_attempts",
    "initial_delay",
    "max_delay",
    "factor",
    "jitter",
    "on_oom",
    "on_timeout",
    "infra_max",
    "lost_after",
];
pub(super) const OOM_KEYS: &[&str] = &["mem_factor", "max_mem"];
pub(super) const TIMEOUT_KEYS: &[&str] = &["time_factor", "max_time"];
pub(super) const LOCAL_KEYS: &[&str] = &["cpus", "mem", "slots"];
pub(super) const NOTIFICATIONS_KEYS: &[&str] =
    &["webhook", "command", "events", "unreachable_after"];
pub(super) const RESOURCE_KEYS: &[&str] = &["cpus", "mem", "time", "gpus"];
pub(super) const PIPELINE_OWN_KEYS: &[&str] = &[
    "level",
    "depends_on",
    "command",
    "container",
    "binds",
    "env",
    "modules",
    "resources",
    "max_concurrent",
    "max_attempts",
    "template",
    "enabled",
    "alert_patterns",
];

/// The supported config format.
pub const CONFIG_VERSION: u64 = 1;

/// The default discovery pattern: the whole folder name is the scan ID.
pub const DEFAULT_PATTERN: &str = "^(?P<scan_id>[A-Za-z0-9_]+)$";

pub(crate) fn load_config(text: &str, file: &Path, env: EnvLookup) -> Result<Config, ConfigError> {
    let file_abs = absolute(file);
    let dir = file_abs
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let ctx = Ctx {
        src: Source {
            name: display_name(file),
        },
        env,
        text,
    };

    let Some(root) = yaml::parse(text, &ctx.src)? else {
        return Err(ctx.src.error(
            None,
            None,
            "the config file is empty",
            Some("run `nfslurm init` for a commented starter config".to_string()),
        ));
    };
    // `x-…` keys are ignored at the top level: a place for YAML anchors.
    let top = Map::open_filtered(&ctx, &root, "", TOP_KEYS, |k| k.starts_with("x-"))?;

    let version = read_version(&ctx, &top)?;

    let executor = match top.get("executor") {
        None => ExecutorKind::Slurm,
        Some(v) => match v.raw_str(&ctx)? {
            "slurm" => ExecutorKind::Slurm,
            "local" => ExecutorKind::Local,
            other => {
                return Err(ctx.src.at(
                    v.loc(),
                    v.path,
                    format!("`executor` must be `slurm` or `local`, found `{other}`"),
                    Some(
                        "`local` runs jobs on this machine; `--executor` overrides it".to_string(),
                    ),
                ));
            }
        },
    };

    let mut site = load_site(&ctx, top.get("site"), &dir)?;
    if let Some(v) = top.get("scheduler") {
        let m = Map::open(&ctx, v.node, v.path, SCHEDULER_KEYS)?;
        apply_scheduler_keys(&ctx, &m, SCHEDULER_KEYS, &mut site.scheduler)?;
    }

    let paths = read_paths(&ctx, &top, &dir)?;
    let discovery = read_discovery(&ctx, top.get("discovery"), &dir)?;
    let retry = read_retry(&ctx, top.get("retry"))?;
    let local = read_local(&ctx, top.get("local"))?;
    let notifications = read_notifications(&ctx, top.get("notifications"))?;
    let housekeeping = read_housekeeping(&ctx, top.get("housekeeping"))?;
    let pipelines = read_pipelines(&ctx, top.get("pipelines"), &dir, &site, &retry)?;

    Ok(Config {
        file: file_abs,
        dir,
        version,
        executor,
        site,
        paths,
        discovery,
        pipelines,
        retry,
        local,
        notifications,
        housekeeping,
    })
}

fn read_housekeeping(ctx: &Ctx, v: Option<Val>) -> Result<Housekeeping, ConfigError> {
    let mut h = Housekeeping::default();
    let Some(v) = v else {
        return Ok(h);
    };
    let m = Map::open(ctx, v.node, v.path, HOUSEKEEPING_KEYS)?;
    if let Some(v) = m.get("summarise_runs_after") {
        h.summarise_runs_after_s = if v.raw_str(ctx).is_ok_and(|t| t.trim() == "never") {
            None
        } else {
            Some(v.duration(ctx)?)
        };
    }
    Ok(h)
}

fn absolute(file: &Path) -> PathBuf {
    if file.is_absolute() {
        return clean(file);
    }
    match std::env::current_dir() {
        Ok(cwd) => clean(&cwd.join(file)),
        Err(_) => file.to_path_buf(),
    }
}

/// Drops `.` components (`/a/./b` -> `/a/b`); `..` is kept, since resolving
/// it lexically is wrong across symlinks.
pub(crate) fn clean(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

fn read_version(ctx: &Ctx, top: &Map) -> Result<u32, ConfigError> {
    let hint = Some(format!(
        "add `version: {CONFIG_VERSION}` at the top of the file"
    ));
    let Some(v) = top.get("version") else {
        return Err(ctx
            .src
            .error(None, Some("version"), "missing `version`", hint));
    };
    let found = v.raw_str(ctx).unwrap_or("");
    if found.trim() != CONFIG_VERSION.to_string() {
        return Err(ctx.src.at(
            v.loc(),
            "version",
            format!("`version` is `{found}`, but this nfslurm reads version `{CONFIG_VERSION}`"),
            Some(format!(
                "write `version: {CONFIG_VERSION}`; a newer config format needs a newer nfslurm"
            )),
        ));
    }
    Ok(CONFIG_VERSION as u32)
}

fn read_paths(ctx: &Ctx, top: &Map, dir: &Path) -> Result<Paths, ConfigError> {
    let Some(v) = top.get("paths") else {
        return Err(ctx.src.error(
            None,
            Some("paths"),
            "missing `paths`",
            Some("add `paths:` with at least `dicom_root: /path/to/incoming/dicom`".to_string()),
        ));
    };
    let m = Map::open(ctx, v.node, v.path, PATHS_KEYS)?;
    let dicom_root = resolve_path(ctx, m.require(ctx, "dicom_root", "/path/to/dicom")?, dir)?;
    let path_or = |key: &str, default: &str| -> Result<PathBuf, ConfigError> {
        match m.get(key) {
            Some(v) => resolve_path(ctx, v, dir),
            None => Ok(dir.join(default)),
        }
    };
    let bids_root = path_or("bids_root", "bids")?;
    let derivatives = path_or("derivatives", "derivatives")?;
    let state_dir = path_or("state_dir", ".nfslurm")?;
    let work_dir = match m.get("work_dir") {
        Some(v) => resolve_path(ctx, v, dir)?,
        None => state_dir.join("work"),
    };
    Ok(Paths {
        dicom_root,
        bids_root,
        derivatives,
        work_dir,
        state_dir,
    })
}

fn read_regex(ctx: &Ctx, v: Val) -> Result<Regex, ConfigError> {
    let text = v.raw_str(ctx)?;
    Regex::new(text).map_err(|e| {
        ctx.src.at(
            v.loc(),
            v.path,
            format!(
                "`{}` is not a valid regular expression: {}",
                v.path,
                regex_error(&e)
            ),
            Some(
                "patterns use Rust regex syntax (https://docs.rs/regex/#syntax); \
                 in YAML, single quotes keep backslashes as typed: `'^sub\\d+$'`"
                    .to_string(),
            ),
        )
    })
}

/// The regex crate's error, on one line: its last line says what is wrong.
fn regex_error(e: &regex::Error) -> String {
    match e {
        regex::Error::Syntax(text) => {
            let what = text
                .lines()
                .rev()
                .find(|l| l.starts_with("error:"))
                .map(|l| l.trim_start_matches("error:").trim().to_string())
                .unwrap_or_else(|| text.lines().last().unwrap_or("").trim().to_string());
            // The caret line points at the column within the regex.
            // (The pattern line itself may start with `^`: the caret line is
            // the last one made only of spaces and carets.)
            let column = text
                .lines()
                .rfind(|l| !l.trim().is_empty() && l.chars().all(|c| c == ' ' || c == '^'))
                .and_then(|l| l.find('^'))
                .map(|c| c.saturating_sub(4) + 1);
            match column {
                Some(c) => format!("{what} (at character {c})"),
                None => what,
            }
        }
        other => other.to_string(),
    }
}

fn read_discovery(ctx: &Ctx, v: Option<Val>, dir: &Path) -> Result<Discovery, ConfigError> {
    let empty = yaml::Node {
        kind: yaml::Kind::Null,
        loc: Loc::default(),
    };
    let (node, path) = match v {
        Some(v) => (v.node, v.path),
        None => (&empty, "discovery"),
    };
    let m = Map::open(ctx, node, path, DISCOVERY_KEYS)?;

    let pattern = match m.get("pattern") {
        Some(v) => read_regex(ctx, v)?,
        None => Regex::new(DEFAULT_PATTERN).expect("the default pattern is a valid regex"),
    };

    let mut mapping = MappingConfig {
        file: dir.join("mapping.csv"),
        scan_id_column: "ScanID".to_string(),
        subject_column: "SubjectCode".to_string(),
        session_column: None,
        scan_id_from: ScanIdFrom::Folder,
    };
    if let Some(v) = m.get("mapping") {
        let mm = Map::open(ctx, v.node, v.path, MAPPING_KEYS)?;
        if let Some(f) = mm.get("file") {
            mapping.file = resolve_path(ctx, f, dir)?;
        }
        if let Some(c) = mm.get("scan_id_column") {
            mapping.scan_id_column = c.raw_str(ctx)?.to_string();
        }
        if let Some(c) = mm.get("subject_column") {
            mapping.subject_column = c.raw_str(ctx)?.to_string();
        }
        if let Some(c) = mm.get("session_column") {
            mapping.session_column = Some(c.raw_str(ctx)?.to_string());
        }
        if let Some(c) = mm.get("scan_id_from") {
            mapping.scan_id_from = super::dicom::read_scan_id_from(ctx, &c)?;
        }
    }

    let mut validation = Validation {
        min_files: 1,
        required_series: Vec::new(),
    };
    if let Some(v) = m.get("validation") {
        let vm = Map::open(ctx, v.node, v.path, VALIDATION_KEYS)?;
        if let Some(n) = vm.get("min_files") {
            validation.min_files = n.uint(ctx)?;
        }
        if let Some(list) = vm.get("required_series") {
            let Some(items) = list.as_seq() else {
                return Err(ctx.src.at(
                    list.loc(),
                    list.path,
                    format!("`{}` must be a list, found {}", list.path, list.describe()),
                    Some(
                        "write `- { name: dwi, match: '(?i)dwi', min_files: 60 }` items"
                            .to_string(),
                    ),
                ));
            };
            for (i, item) in items.iter().enumerate() {
                let path = format!("{}[{i}]", list.path);
                let sm = Map::open(ctx, item, &path, SERIES_KEYS)?;
                let name = sm.require(ctx, "name", "dwi")?.raw_str(ctx)?.to_string();
                if validation
                    .required_series
                    .iter()
                    .any(|s: &SeriesRule| s.name == name)
                {
                    let at = sm.get("name").map_or(item.loc, |v| v.loc());
                    return Err(ctx.src.at(
                        at,
                        &format!("{path}.name"),
                        format!("`{path}.name` repeats `{name}`"),
                        Some("give each required series its own name".to_string()),
                    ));
                }
                let pattern = read_regex(ctx, sm.require(ctx, "match", "'(?i)dwi'")?)?;
                let min_files = match sm.get("min_files") {
                    Some(n) => n.uint(ctx)?,
                    None => 1,
                };
                let keys = super::dicom::read_series_keys(ctx, &sm)?;
                validation.required_series.push(SeriesRule {
                    name,
                    pattern,
                    min_files,
                    match_on: keys.match_on,
                    min_instances: keys.min_instances,
                    image_type: keys.image_type,
                    max_series: keys.max_series,
                });
            }
        }
    }

    let settle_s = match m.get("settle") {
        Some(v) => v.duration(ctx)?,
        None => 30 * 60,
    };

    let dicom = match m.get("dicom") {
        Some(v) => super::dicom::read_mode(ctx, &v)?,
        None => DicomMode::Auto,
    };

    Ok(Discovery {
        pattern,
        mapping,
        validation,
        settle_s,
        dicom,
    })
}

fn read_retry(ctx: &Ctx, v: Option<Val>) -> Result<RetryPolicy, ConfigError> {
    let mut r = RetryPolicy {
        max_attempts: 3,
        initial_delay_s: 5 * 60,
        max_delay_s: 3600,
        factor: 2.0,
        jitter: 0.1,
        mem_factor: 1.5,
        max_mem_mb: 256 * 1024,
        time_factor: 1.5,
        max_time_s: 72 * 3600,
        infra_max: 5,
        lost_after_s: 10 * 60,
    };
    let Some(v) = v else {
        return Ok(r);
    };
    let m = Map::open(ctx, v.node, v.path, RETRY_KEYS)?;
    if let Some(v) = m.get("max_attempts") {
        r.max_attempts = v.u32_min(ctx, 1)?;
    }
    if let Some(v) = m.get("initial_delay") {
        r.initial_delay_s = v.duration(ctx)?;
    }
    if let Some(v) = m.get("max_delay") {
        r.max_delay_s = v.duration(ctx)?;
        if r.max_delay_s < r.initial_delay_s {
            return Err(ctx.src.at(
                v.loc(),
                v.path,
                "`retry.max_delay` is shorter than `retry.initial_delay`",
                Some("raise `max_delay` or lower `initial_delay`".to_string()),
            ));
        }
    }
    if let Some(v) = m.get("factor") {
        r.factor = v.float_in(ctx, 1.0, None, "at least 1")?;
    }
    if let Some(v) = m.get("jitter") {
        r.jitter = v.float_in(ctx, 0.0, Some(1.0), "between 0 and 1")?;
    }
    if let Some(v) = m.get("on_oom") {
        let om = Map::open(ctx, v.node, v.path, OOM_KEYS)?;
        if let Some(v) = om.get("mem_factor") {
            r.mem_factor = v.float_in(ctx, 1.0, None, "at least 1")?;
        }
        if let Some(v) = om.get("max_mem") {
            r.max_mem_mb = v.memory(ctx)?;
        }
    }
    if let Some(v) = m.get("on_timeout") {
        let tm = Map::open(ctx, v.node, v.path, TIMEOUT_KEYS)?;
        if let Some(v) = tm.get("time_factor") {
            r.time_factor = v.float_in(ctx, 1.0, None, "at least 1")?;
        }
        if let Some(v) = tm.get("max_time") {
            r.max_time_s = v.time_limit(ctx)?;
        }
    }
    if let Some(v) = m.get("infra_max") {
        r.infra_max = v.u32(ctx)?;
    }
    if let Some(v) = m.get("lost_after") {
        r.lost_after_s = v.duration(ctx)?;
    }
    Ok(r)
}

fn read_local(ctx: &Ctx, v: Option<Val>) -> Result<LocalLimits, ConfigError> {
    let mut limits = LocalLimits {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        mem_mb: machine_mem_mb().unwrap_or(4096),
        slots: 0,
    };
    let mut slots = None;
    if let Some(v) = v {
        let m = Map::open(ctx, v.node, v.path, LOCAL_KEYS)?;
        if let Some(v) = m.get("cpus") {
            limits.cpus = v.u32_range(ctx, 1, MAX_CPUS, "CPUs")?;
        }
        if let Some(v) = m.get("mem") {
            limits.mem_mb = positive_memory(ctx, v)?;
        }
        if let Some(v) = m.get("slots") {
            slots = Some(v.u32_range(ctx, 1, MAX_CPUS, "jobs")?);
        }
    }
    limits.slots = slots.unwrap_or(limits.cpus);
    Ok(limits)
}

fn read_notifications(ctx: &Ctx, v: Option<Val>) -> Result<Notifications, ConfigError> {
    let mut n = Notifications::default();
    let Some(v) = v else {
        return Ok(n);
    };
    let m = Map::open(ctx, v.node, v.path, NOTIFICATIONS_KEYS)?;
    if let Some(v) = m.get("webhook") {
        // `$VAR` is expanded, so the URL (a secret) can live in the environment.
        let url = v.string(ctx)?;
        let url = url.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ctx.src.at(
                v.loc(),
                v.path,
                format!(
                    "`{}` must be an `http://` or `https://` URL, found `{}`",
                    v.path,
                    // The URL is a secret: never echo its path or credentials.
                    crate::notify::redact_url(url)
                ),
                Some(
                    "write the incoming-webhook URL, e.g. `https://hooks.slack.com/services/…`"
                        .to_string(),
                ),
            ));
        }
        n.webhook = Some(url.to_string());
    }
    if let Some(v) = m.get("command") {
        // A shell command: `$1` and `$VAR` belong to the shell, as in pipeline commands.
        let command = v.raw_str(ctx)?.trim().to_string();
        if command.is_empty() {
            return Err(ctx.src.at(
                v.loc(),
                v.path,
                format!("`{}` is empty", v.path),
                Some(
                    "write a command such as `mail -s \"$1\" you@example.org` \
                     (the subject is `$1`, the message comes on standard input), or omit the key"
                        .to_string(),
                ),
            ));
        }
        n.command = Some(command);
    }
    if let Some(v) = m.get("events") {
        let mut events = Vec::new();
        for (text, loc, path) in v.raw_list(ctx)? {
            let Some(event) = NotifyEvent::parse(text.trim()) else {
                let names: Vec<&str> = NotifyEvent::ALL.iter().map(|e| e.as_str()).collect();
                let hint = match closest(text.trim(), &names) {
                    Some(near) => format!(
                        "did you mean `{near}`? the events are {}",
                        backticked(&names)
                    ),
                    None => format!("the events are {}", backticked(&names)),
                };
                return Err(ctx.src.at(
                    loc,
                    &path,
                    format!("`{path}` is not an event: `{text}`"),
                    Some(hint),
                ));
            };
            if !events.contains(&event) {
                events.push(event);
            }
        }
        n.events = events;
    }
    if let Some(v) = m.get("unreachable_after") {
        n.unreachable_after = v.u32_min(ctx, 1)?;
    }
    Ok(n)
}

/// `MemTotal` from `/proc/meminfo`, in MB.
fn machine_mem_mb() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo(&text)
}

fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

fn positive_memory(ctx: &Ctx, v: Val) -> Result<u64, ConfigError> {
    let mb = v.memory(ctx)?;
    if mb == 0 {
        return Err(ctx.src.at(
            v.loc(),
            v.path,
            format!("`{}` must be more than 0", v.path),
            Some("Slurm reads `--mem=0` as all of a node's memory: ask for an amount".to_string()),
        ));
    }
    Ok(mb)
}

/// A pipeline as read, before the DAG is checked.
struct Draft {
    pipeline: Pipeline,
    key_loc: Loc,
    /// `depends_on` entries with their positions and paths.
    deps: Vec<(String, Loc, String)>,
}

fn valid_pipeline_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn read_pipelines(
    ctx: &Ctx,
    v: Option<Val>,
    dir: &Path,
    site: &SiteConfig,
    retry: &RetryPolicy,
) -> Result<Vec<Pipeline>, ConfigError> {
    let Some(v) = v else {
        return Ok(Vec::new());
    };
    let keys: Vec<&str> = PIPELINE_OWN_KEYS
        .iter()
        .chain(PIPELINE_SCHEDULER_KEYS)
        .copied()
        .collect();
    let all = match &v.node.kind {
        yaml::Kind::Map(_) | yaml::Kind::Null => {
            Map::open_filtered(ctx, v.node, v.path, &[], |_| true)?
        }
        _ => {
            return Err(ctx.src.at(
                v.loc(),
                v.path,
                format!(
                    "`pipelines` must be a mapping of pipeline names, found {}",
                    v.describe()
                ),
                Some("write `pipelines:` then one `name:` block per pipeline".to_string()),
            ));
        }
    };
    let mut drafts: Vec<Draft> = Vec::new();
    for (entry, val) in all.entries() {
        let name = entry.key.as_str();
        if !valid_pipeline_name(name) {
            return Err(ctx.src.at(
                entry.key_loc,
                val.path,
                format!("`{name}` is not a valid pipeline name"),
                Some(
                    "use lowercase letters, digits, `_` and `-`, starting with a letter or digit"
                        .to_string(),
                ),
            ));
        }
        let mut m = Map::open(ctx, val.node, val.path, &keys)?;
        if matches!(val.node.kind, yaml::Kind::Null) {
            m.loc = entry.key_loc; // `name:` with nothing under it
        }
        drafts.push(read_pipeline(
            ctx,
            &m,
            name,
            entry.key_loc,
            dir,
            site,
            retry,
        )?);
    }

    // The DAG: names, no self-dependency, no cycle.
    let names: Vec<&str> = drafts.iter().map(|d| d.pipeline.name.as_str()).collect();
    let mut deps: Vec<Vec<usize>> = Vec::with_capacity(drafts.len());
    for d in &drafts {
        let mut idx = Vec::new();
        for (dep, loc, path) in &d.deps {
            if *dep == d.pipeline.name {
                return Err(ctx.src.at(
                    *loc,
                    path,
                    format!(
                        "`pipelines.{0}.depends_on` names `{0}` itself",
                        d.pipeline.name
                    ),
                    Some(format!("remove `{dep}` from its own `depends_on`")),
                ));
            }
            match names.iter().position(|n| n == dep) {
                Some(i) => idx.push(i),
                None => {
                    let list = format!("the pipelines are {}", backticked(&names));
                    let hint = match closest(dep, &names) {
                        Some(near) => format!("did you mean `{near}`? {list}"),
                        None => list,
                    };
                    return Err(ctx.src.at(
                        *loc,
                        path,
                        format!(
                            "`pipelines.{}.depends_on` names `{dep}`, which is not a pipeline",
                            d.pipeline.name
                        ),
                        Some(hint),
                    ));
                }
            }
        }
        deps.push(idx);
    }
    let order = topo_order(&deps).map_err(|cycle| {
        let chain: Vec<&str> = cycle.iter().map(|&i| names[i]).collect();
        // Point at the first pipeline's dependency on the last one before it.
        let first = &drafts[cycle[0]];
        let upstream = names[cycle[cycle.len() - 2]];
        let (loc, path) = first
            .deps
            .iter()
            .find(|(n, _, _)| n == upstream)
            .map(|(_, l, p)| (*l, p.clone()))
            .unwrap_or((first.key_loc, format!("pipelines.{}", first.pipeline.name)));
        ctx.src.at(
            loc,
            &path,
            format!("pipelines form a cycle: {}", chain.join(" -> ")),
            Some("remove one of these `depends_on` entries".to_string()),
        )
    })?;

    let mut slots: Vec<Option<Pipeline>> = drafts.into_iter().map(|d| Some(d.pipeline)).collect();
    Ok(order.into_iter().filter_map(|i| slots[i].take()).collect())
}

fn read_pipeline(
    ctx: &Ctx,
    m: &Map,
    name: &str,
    key_loc: Loc,
    dir: &Path,
    site: &SiteConfig,
    retry: &RetryPolicy,
) -> Result<Draft, ConfigError> {
    let level = match m.get("level") {
        None => Level::Session,
        Some(v) => match v.raw_str(ctx)? {
            "session" => Level::Session,
            "subject" => Level::Subject,
            other => {
                let hint = if other == "participant" {
                    "BIDS apps' `participant` level is `subject` here".to_string()
                } else {
                    "`session`: one unit per session; `subject`: one unit per subject, \
                     over all its sessions"
                        .to_string()
                };
                return Err(ctx.src.at(
                    v.loc(),
                    v.path,
                    format!(
                        "`{}` must be `session` or `subject`, found `{other}`",
                        v.path
                    ),
                    Some(hint),
                ));
            }
        },
    };

    let mut deps: Vec<(String, Loc, String)> = Vec::new();
    if let Some(v) = m.get("depends_on") {
        for (dep, loc, path) in v.raw_list(ctx)? {
            if !deps.iter().any(|(d, _, _)| d == dep) {
                deps.push((dep.to_string(), loc, path));
            }
        }
    }

    // Commands are Tera and bash: no `$VAR` expansion here.
    let command_val = m.require(ctx, "command", "echo {{ subject.label }}")?;
    let command = command_val.raw_str(ctx)?.trim_end().to_string();
    if command.trim().is_empty() {
        return Err(ctx.src.at(
            command_val.loc(),
            command_val.path,
            format!("`{}` is empty", command_val.path),
            Some("write the command that processes one unit".to_string()),
        ));
    }
    check_tera(&format!("pipelines.{name}.command"), &command).map_err(|e| {
        let excerpt = e.excerpt.filter(|x| !x.is_empty());
        // Point at the offending line of a multi-line command when it is in
        // the file as written (a `|` block); else at the command itself.
        let loc = excerpt
            .as_deref()
            .and_then(|x| find_line(ctx.text, command_val.loc().line, x))
            .unwrap_or(command_val.loc());
        let near = excerpt.map(|x| format!(" in `{x}`")).unwrap_or_default();
        ctx.src.at(
            loc,
            command_val.path,
            format!(
                "`{}` is not a valid Tera template: {}{near}",
                command_val.path, e.message
            ),
            Some(
                "commands are Tera: `{{ value }}` and `{% tag %}`; comments are `<# … #>`; \
                 wrap literal `{{` or `{%` in `{% raw %}…{% endraw %}`"
                    .to_string(),
            ),
        )
    })?;

    if let Some(p) = crate::templating::outside_value_placements(
        &command,
        crate::templating::TemplateKind::Command,
    )
    .into_iter()
    .next()
    {
        let loc =
            find_line(ctx.text, command_val.loc().line, &p.excerpt).unwrap_or(command_val.loc());
        return Err(ctx.src.at(
            loc,
            command_val.path,
            format!(
                "`{}` puts `{}` {}, where a folder name could run as code: `{}`",
                command_val.path, p.expr, p.inside, p.excerpt
            ),
            Some(OUTSIDE_VALUE_HINT.to_string()),
        ));
    }

    let container = match m.get("container") {
        None => None,
        Some(v) => {
            let c = v.string(ctx)?;
            if c.trim().is_empty() {
                return Err(ctx.src.at(
                    v.loc(),
                    v.path,
                    format!("`{}` is empty", v.path),
                    Some("omit `container` to run the command on the host".to_string()),
                ));
            }
            // With `runtime: none` the image is kept (it still counts in the
            // config hash) but not used: the command runs on the host, so a
            // study's config can be tried with the `local` site as it is.
            Some(c)
        }
    };

    let mut binds = site.container.binds.clone();
    if let Some(v) = m.get("binds") {
        for b in v.string_list(ctx)? {
            if !binds.contains(&b) {
                binds.push(b);
            }
        }
    }
    let mut env: BTreeMap<String, String> = site.container.env.clone();
    if let Some(v) = m.get("env") {
        env.extend(v.env_map(ctx)?);
    }
    let mut modules = site.modules.clone();
    if let Some(v) = m.get("modules") {
        modules.extend(v.string_list(ctx)?);
    }

    let mut resources = Resources {
        cpus: 1,
        mem_mb: 1024,
        time_s: 3600,
        gpus: 0,
    };
    if let Some(v) = m.get("resources") {
        let rm = Map::open(ctx, v.node, v.path, RESOURCE_KEYS)?;
        if let Some(v) = rm.get("cpus") {
            resources.cpus = v.u32_range(ctx, 1, MAX_CPUS, "CPUs per job")?;
        }
        if let Some(v) = rm.get("mem") {
            resources.mem_mb = positive_memory(ctx, v)?;
        }
        if let Some(v) = rm.get("time") {
            resources.time_s = v.time_limit(ctx)?;
            if resources.time_s == 0 {
                return Err(ctx.src.at(
                    v.loc(),
                    v.path,
                    format!("`{}` must be more than 0", v.path),
                    Some("write a time limit such as `\"02:00:00\"` or `2h`".to_string()),
                ));
            }
        }
        if let Some(v) = rm.get("gpus") {
            resources.gpus = v.u32_range(ctx, 0, MAX_GPUS, "GPUs per job")?;
        }
    }

    let max_concurrent = match m.get("max_concurrent") {
        Some(v) => Some(v.u32_min(ctx, 1)?),
        None => None,
    };
    let max_attempts = match m.get("max_attempts") {
        Some(v) => v.u32_min(ctx, 1)?,
        None => retry.max_attempts,
    };
    let enabled = match m.get("enabled") {
        Some(v) => v.bool(ctx)?,
        None => true,
    };
    let alert_patterns = match m.get("alert_patterns") {
        Some(v) => v
            .raw_list(ctx)?
            .into_iter()
            .map(|(text, loc, path)| {
                Regex::new(text).map_err(|e| {
                    ctx.src.at(
                        loc,
                        &path,
                        format!(
                            "`{path}` is not a valid regular expression: {}",
                            regex_error(&e)
                        ),
                        Some(
                            "plain text works as written unless it holds `. * + ? ( ) [ ] { } | \\ ^ $`; \
                             escape those with `\\`, or write `(?i)` first to ignore case"
                                .to_string(),
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };

    let mut scheduler = site.scheduler.clone();
    apply_scheduler_keys(ctx, m, PIPELINE_SCHEDULER_KEYS, &mut scheduler)?;

    let (template_name, template) = match m.get("template") {
        None => (site.template_name.clone(), site.template.clone()),
        Some(v) => read_template(ctx, v, dir)?,
    };

    let config_hash = config_hash(&command, container.as_deref(), &template);
    let config_hash_aliases = if template == super::BUNDLED_TEMPLATE {
        super::BUNDLED_TEMPLATE_HISTORY
            .iter()
            .map(|old| self::config_hash(&command, container.as_deref(), old))
            .collect()
    } else {
        Vec::new()
    };
    Ok(Draft {
        pipeline: Pipeline {
            name: name.to_string(),
            level,
            enabled,
            alert_patterns,
            depends_on: deps.iter().map(|(d, _, _)| d.clone()).collect(),
            container,
            command,
            binds,
            env,
            resources,
            max_concurrent,
            scheduler,
            modules,
            max_attempts,
            template_name,
            template,
            config_hash,
            config_hash_aliases,
        },
        key_loc,
        deps,
    })
}

/// How to write a folder name or scan ID in a command or template so that
/// the shell reads it as one word and nothing else.
pub(crate) const OUTSIDE_VALUE_HINT: &str = "write it as a word of its own, outside any quotes \
     (`ls {{ session.dicom_dir }}`: nfslurm quotes it); to use it in a string, `$(...)` or a \
     heredoc, set a variable first (`dir={{ session.dicom_dir }}`) and write `\"$dir\"` there";

/// The first line from `from` (1-based) whose content is `wanted`, as a location.
fn find_line(text: &str, from: u64, wanted: &str) -> Option<Loc> {
    text.lines()
        .enumerate()
        .skip(from.saturating_sub(1) as usize)
        .find(|(_, l)| l.trim() == wanted)
        .map(|(i, l)| Loc {
            line: i as u64 + 1,
            column: (l.len() - l.trim_start().len()) as u64 + 1,
        })
}

/// sha256 (hex) of what makes a done unit stale: command, container and
/// template text. Resources are left out on purpose: more memory after an OOM must not rerun a done unit.
pub fn config_hash(command: &str, container: Option<&str>, template: &str) -> String {
    let mut h = Sha256::new();
    // Length-prefixed, so moving text from one field to another changes the hash.
    for part in [Some(command), container, Some(template)] {
        match part {
            Some(text) => {
                h.update((text.len() as u64).to_le_bytes());
                h.update(text.as_bytes());
            }
            // No container: a length no text can have.
            None => h.update(u64::MAX.to_le_bytes()),
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_total_in_mb() {
        let text = "MemTotal:       16318452 kB\nMemFree:         1234 kB\n";
        assert_eq!(parse_meminfo(text), Some(15935));
        assert_eq!(parse_meminfo("nothing"), None);
    }

    #[test]
    fn pipeline_names() {
        for ok in ["bids", "qsiprep", "a", "0x", "fs_7-2"] {
            assert!(valid_pipeline_name(ok), "{ok}");
        }
        for bad in ["", "Bids", "_x", "-x", "a b", "a.b", "a/b"] {
            assert!(!valid_pipeline_name(bad), "{bad}");
        }
    }

    #[test]
    fn clean_drops_cur_dir_only() {
        assert_eq!(clean(Path::new("/a/./b/../c")), PathBuf::from("/a/b/../c"));
    }
}
