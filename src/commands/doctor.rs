//! `nfslurm doctor`: checks everything a study needs, one line each.
//!
//! Doctor reads and probes; it never changes the study: no state database is
//! created or migrated, no folder is made (a writable check creates and
//! removes one empty file). The cluster is asked once (`sinfo`), with a
//! timeout, so doctor is safe to run on a struggling controller.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use super::{Settings, cron};
use crate::config::{Config, ContainerRuntime, ExecutorKind};
use crate::model::{Label, UnitKey};
use crate::output;
use crate::render::{Renderer, ScriptInput, SessionInfo};

/// How long the one call to the cluster may take.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(15);
/// The Slurm tools nfslurm calls.
const SLURM_TOOLS: &[&str] = &["sbatch", "squeue", "sacct", "scancel"];
/// Image references the container runtime fetches itself.
const IMAGE_URI_SCHEMES: &[&str] = &[
    "docker://",
    "docker-archive:",
    "oras://",
    "library://",
    "shub://",
    "https://",
    "http://",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub message: String,
    pub hint: Option<String>,
}

impl Check {
    fn new(name: &str, status: Status, message: impl Into<String>, hint: Option<String>) -> Check {
        Check {
            name: name.to_string(),
            status,
            message: message.into(),
            hint,
        }
    }
    fn ok(name: &str, message: impl Into<String>) -> Check {
        Check::new(name, Status::Ok, message, None)
    }
    fn warn(name: &str, message: impl Into<String>, hint: impl Into<String>) -> Check {
        Check::new(name, Status::Warn, message, Some(hint.into()))
    }
    fn fail(name: &str, message: impl Into<String>, hint: impl Into<String>) -> Check {
        Check::new(name, Status::Fail, message, Some(hint.into()))
    }
}

pub fn run(settings: &Settings) -> anyhow::Result<i32> {
    let checks = match super::load_config(settings) {
        Ok(config) => check_study(&config),
        Err(err) => {
            let hint = err
                .downcast_ref::<super::Failure>()
                .and_then(|f| f.hint.clone())
                .unwrap_or_else(|| "fix the config, then run `nfslurm doctor` again".into());
            let mut checks = vec![Check::fail("config", format!("{err:#}"), hint)];
            // The tools can be checked without a config.
            let executor = settings.executor.unwrap_or(ExecutorKind::Slurm);
            checks.push(check_slurm_tools(executor));
            checks
        }
    };
    print(settings, &checks);
    Ok(if checks.iter().any(|c| c.status == Status::Fail) {
        1
    } else {
        0
    })
}

/// Every check, in the order a person would fix things.
pub fn check_study(config: &Config) -> Vec<Check> {
    let mut checks = vec![Check::ok(
        "config",
        format!(
            "`{}` loads: {}, site `{}`, executor `{}`",
            super::display_path(&config.file),
            plural(config.pipelines.len(), "pipeline"),
            config.site.name,
            match config.executor {
                ExecutorKind::Slurm => "slurm",
                ExecutorKind::Local => "local",
            }
        ),
    )];
    checks.push(check_templates(config));
    checks.push(check_slurm_tools(config.executor));
    if config.executor == ExecutorKind::Slurm && which::which("sinfo").is_ok() {
        // Each cluster the pipelines use, once.
        let mut clusters: Vec<Option<&str>> = Vec::new();
        for p in &config.pipelines {
            let c = p.scheduler.cluster.as_deref();
            if !clusters.contains(&c) {
                clusters.push(c);
            }
        }
        if clusters.is_empty() {
            clusters.push(config.site.scheduler.cluster.as_deref());
        }
        for cluster in clusters {
            checks.push(check_cluster(config, cluster));
        }
    }
    if let Some(c) = check_runtime(config) {
        checks.push(c);
    }
    if let Some(c) = check_images(config) {
        checks.push(c);
    }
    if let Some(c) = check_commands(config) {
        checks.push(c);
    }
    checks.push(check_readable_dir("dicom_root", &config.paths.dicom_root));
    checks.push(check_mapping(config));
    for (name, path) in [
        ("bids_root", &config.paths.bids_root),
        ("derivatives", &config.paths.derivatives),
        ("work_dir", &config.paths.work_dir),
        ("state_dir", &config.paths.state_dir),
    ] {
        checks.push(check_writable_dir(name, path));
    }
    checks.push(check_state(&config.paths.state_dir));
    checks.push(check_cron(config));
    if let Some(c) = check_notifications(config) {
        checks.push(c);
    }
    checks
}

/// Which channels notifications go to. Nothing is sent; the webhook URL is a
/// secret and shown as scheme and host only.
fn check_notifications(config: &Config) -> Option<Check> {
    let n = &config.notifications;
    let mut channels = Vec::new();
    if let Some(url) = &n.webhook {
        channels.push(format!("webhook `{}`", crate::notify::redact_url(url)));
    }
    if n.command.is_some() {
        channels.push("`notifications.command`".to_string());
    }
    if channels.is_empty() {
        return None;
    }
    Some(Check::ok(
        "notify",
        format!("notifications by {}", channels.join(" and ")),
    ))
}

fn print(settings: &Settings, checks: &[Check]) {
    let failures = checks.iter().filter(|c| c.status == Status::Fail).count();
    let warnings = checks.iter().filter(|c| c.status == Status::Warn).count();
    if settings.json {
        let list: Vec<_> = checks
            .iter()
            .map(|c| {
                json!({"check": c.name, "status": c.status.as_str(),
                       "message": c.message, "hint": c.hint})
            })
            .collect();
        output::print_json(&json!({
            "checks": list, "failures": failures, "warnings": warnings,
        }));
        return;
    }
    for c in checks {
        let word = format!("{:<4}", c.status.as_str());
        let word = match c.status {
            Status::Ok => output::green(&word),
            Status::Warn => output::yellow(&word),
            Status::Fail => output::red(&word),
        };
        println!("{word}  {:<11} {}", c.name, c.message);
        if let Some(hint) = &c.hint {
            println!("{:<18}{} {hint}", "", output::dim("hint:"));
        }
    }
    println!();
    match (failures, warnings) {
        (0, 0) => println!("all {} checks passed", checks.len()),
        (0, w) => println!("no failures, {}", plural(w, "warning")),
        (f, w) => println!("{}, {}", plural(f, "failure"), plural(w, "warning")),
    }
}

fn plural(n: usize, word: &str) -> String {
    match (n, word) {
        (1, _) => format!("1 {word}"),
        (_, "folder or file") => format!("{n} folders or files"),
        _ => format!("{n} {word}s"),
    }
}

/// Renders a sample unit of every pipeline with the real renderer.
fn check_templates(config: &Config) -> Check {
    if config.pipelines.is_empty() {
        return Check::warn(
            "templates",
            "no pipelines: nothing will run",
            "add a `pipelines:` block (`nfslurm init` writes an example)",
        );
    }
    let renderer = match Renderer::new(config) {
        Ok(r) => r,
        Err(e) => {
            return Check::fail(
                "templates",
                e.to_string(),
                "fix the template; `nfslurm render` shows the script once it compiles",
            );
        }
    };
    // Sample labels: they only have to be valid BIDS labels.
    let subject = Label::new("01").expect("`01` is a valid label");
    let session = SessionInfo {
        label: Label::new("1").expect("`1` is a valid label"),
        scan_id: "SAMPLE".into(),
        dicom_dir: config.paths.dicom_root.join("SAMPLE"),
    };
    let sessions = vec![session.clone()];
    for p in &config.pipelines {
        let ses = match p.level {
            crate::model::Level::Session => Some(&session.label),
            crate::model::Level::Subject => None,
        };
        let key = UnitKey::new(&p.name, &subject, ses);
        let log = crate::engine::logs_dir(config, &key).join("attempt-1.out");
        let work_dir = crate::render::work_dir_for(config, &key);
        let input = ScriptInput {
            config,
            pipeline: p,
            unit: &key,
            session: ses.map(|_| &session),
            subject_sessions: &sessions,
            resources: &p.resources,
            attempt: 1,
            token: "nfslurm-doctor",
            output_path: &log,
            work_dir: &work_dir,
            executor: config.executor,
        };
        if let Err(e) = renderer.render_script(&input) {
            let args = match ses {
                Some(_) => format!("--pipeline {} --participant 01 --session 1", p.name),
                None => format!("--pipeline {} --participant 01", p.name),
            };
            return Check::fail(
                "templates",
                format!("{e:#}"),
                format!("`nfslurm render {args}` shows the same error in place"),
            );
        }
    }
    Check::ok(
        "templates",
        format!(
            "a sample unit of every pipeline renders ({})",
            config
                .pipelines
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
}

fn check_slurm_tools(executor: ExecutorKind) -> Check {
    let mut found: Vec<PathBuf> = Vec::new();
    let mut missing = Vec::new();
    for tool in SLURM_TOOLS {
        match which::which(tool) {
            Ok(p) => found.push(p),
            Err(_) => missing.push(format!("`{tool}`")),
        }
    }
    if missing.is_empty() {
        let mut dirs: Vec<String> = found
            .iter()
            .filter_map(|p| p.parent().map(|d| d.display().to_string()))
            .collect();
        dirs.dedup();
        return Check::ok(
            "slurm",
            format!(
                "`sbatch`, `squeue`, `sacct`, `scancel` in `{}`",
                dirs.join("`, `")
            ),
        );
    }
    let message = format!(
        "{} not on PATH",
        if missing.len() == 1 {
            format!("{} is", missing[0])
        } else {
            format!("{} are", missing.join(", "))
        }
    );
    match executor {
        ExecutorKind::Slurm => Check::fail(
            "slurm",
            message,
            "load your site's Slurm module (`module load slurm`) or add the folder that holds \
             `sbatch` to PATH, then `nfslurm cron install` again so cron gets it too; \
             on a laptop, use `--executor local`",
        ),
        ExecutorKind::Local => Check::warn(
            "slurm",
            message,
            "only needed with `executor: slurm`; the local executor runs jobs on this machine",
        ),
    }
}

/// Runs `program args` with a timeout; stdout is returned, stderr is the error.
fn run_with_timeout(program: &str, args: &[&str], timeout: Duration) -> Result<String, String> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = crate::process::run(program, &args, timeout).map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(out.stderr.trim().to_string())
    }
}

/// One cheap call per cluster in use: `sinfo` lists its partitions, which
/// also checks the ones the pipelines on it name.
fn check_cluster(config: &Config, cluster: Option<&str>) -> Check {
    let mut args = vec!["-h", "-o", "%R"];
    if let Some(c) = cluster {
        args.extend(["-M", c]);
    }
    let named = cluster
        .map(|c| format!("cluster `{c}`: "))
        .unwrap_or_default();
    let out = match run_with_timeout("sinfo", &args, CLUSTER_TIMEOUT) {
        Ok(out) => out,
        Err(e) => {
            return Check::fail(
                "cluster",
                format!("{named}`sinfo` did not answer: {e}"),
                "is the controller up (`scontrol ping`)? nothing is lost meanwhile: \
                 `nfslurm sync` catches up once it answers",
            );
        }
    };
    let partitions: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("CLUSTER:"))
        .collect();
    let mut wanted: Vec<(&str, Vec<&str>)> = Vec::new();
    for p in config
        .pipelines
        .iter()
        .filter(|p| p.scheduler.cluster.as_deref() == cluster)
    {
        if let Some(part) = &p.scheduler.partition {
            // `sbatch -p a,b` accepts a list.
            for one in part.split(',') {
                match wanted.iter_mut().find(|(w, _)| *w == one) {
                    Some((_, users)) => users.push(&p.name),
                    None => wanted.push((one, vec![&p.name])),
                }
            }
        }
    }
    let unknown: Vec<String> = wanted
        .iter()
        .filter(|(w, _)| !partitions.contains(w))
        .map(|(w, users)| format!("`{w}` (pipelines {})", users.join(", ")))
        .collect();
    let list = partitions
        .iter()
        .map(|p| format!("`{p}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if !unknown.is_empty() {
        return Check::fail(
            "cluster",
            format!(
                "{named}the cluster answers, but has no partition {}",
                unknown.join(", ")
            ),
            format!(
                "its partitions are {list}: set `scheduler.partition` in the config or the site file"
            ),
        );
    }
    Check::ok(
        "cluster",
        format!("{named}the controller answers; partitions {list}"),
    )
}

fn check_runtime(config: &Config) -> Option<Check> {
    let users: Vec<&str> = config
        .pipelines
        .iter()
        .filter(|p| p.container.is_some())
        .map(|p| p.name.as_str())
        .collect();
    if users.is_empty() {
        return None;
    }
    let tool = match config.site.container.runtime {
        ContainerRuntime::Apptainer => "apptainer",
        ContainerRuntime::Singularity => "singularity",
        ContainerRuntime::None => {
            return Some(Check::ok(
                "runtime",
                "`container.runtime` is `none`: pipelines run on the host, images unused",
            ));
        }
    };
    Some(match which::which(tool) {
        Ok(p) => Check::ok("runtime", format!("`{tool}` is `{}`", p.display())),
        // A warning: the jobs need it on the compute nodes, where it usually
        // is, and many login nodes do not have it.
        Err(_) => Check::warn(
            "runtime",
            format!(
                "`{tool}` is not on PATH here (pipelines {})",
                users.join(", ")
            ),
            format!(
                "the jobs need it on the compute nodes: check with `srun {tool} --version`, \
                 or add its module to the site's `modules`"
            ),
        ),
    })
}

fn check_images(config: &Config) -> Option<Check> {
    if config.site.container.runtime == ContainerRuntime::None {
        return None;
    }
    let images: Vec<(&str, &str)> = config
        .pipelines
        .iter()
        .filter_map(|p| p.container.as_deref().map(|c| (p.name.as_str(), c)))
        .collect();
    if images.is_empty() {
        return None;
    }
    let missing: Vec<String> = images
        .iter()
        .filter(|(_, image)| !IMAGE_URI_SCHEMES.iter().any(|s| image.starts_with(s)))
        .filter(|(_, image)| !Path::new(image).exists())
        .map(|(p, image)| format!("`{image}` ({p})"))
        .collect();
    Some(if missing.is_empty() {
        Check::ok(
            "images",
            format!("{} container images present or pulled by URI", images.len()),
        )
    } else {
        Check::fail(
            "images",
            format!("missing: {}", missing.join(", ")),
            "build or pull the image there (`apptainer pull FILE.sif docker://…`), \
             or fix the pipeline's `container`",
        )
    })
}

/// Shell words that are not programs to look for on `PATH`.
const SHELL_WORDS: &[&str] = &[
    "if", "then", "else", "elif", "fi", "for", "while", "until", "do", "done", "case", "esac",
    "in", "function", "{", "}", "(", ")", "!", "[", "[[", "test", "echo", "printf", "cd", "export",
    "set", "unset", "local", "source", ".", "exec", "eval", "true", "false", "read", "shift",
    "exit", "return", "trap", "wait", "ulimit", "umask", "declare", "time", "command", "builtin",
    ":", "module", "ml",
];

/// The first program a command runs: its first word that is not a shell
/// keyword or builtin, a variable assignment, a Tera tag or a comment;
/// `None` when it cannot be known without rendering (it starts with `{{`).
pub fn first_program(command: &str) -> Option<String> {
    // Tera expressions become one opaque character, tags nothing, so that
    // `out={{ paths.bids_root }}/x` stays one word (an assignment).
    const EXPR: char = '\u{1}';
    let tags = regex::Regex::new(r"(?s)\{%.*?%\}").ok()?;
    let exprs = regex::Regex::new(r"(?s)\{\{.*?\}\}").ok()?;
    let text = tags.replace_all(command, "");
    let text = exprs.replace_all(&text, EXPR.to_string().as_str());
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        for word in line.split_whitespace() {
            if word.starts_with(EXPR) || word.starts_with('$') || word.starts_with('"') {
                return None;
            }
            let is_assignment = word.split_once('=').is_some_and(|(name, _)| {
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            });
            if is_assignment {
                continue;
            }
            if SHELL_WORDS.contains(&word) {
                // A keyword: the program, if any, comes after it.
                if matches!(
                    word,
                    "if" | "then" | "else" | "do" | "!" | "time" | "exec" | "command"
                ) {
                    continue;
                }
                break;
            }
            return Some(word.trim_end_matches(';').to_string());
        }
    }
    None
}

/// Each pipeline that runs on the host (no container, or runtime `none`):
/// does the first program of its command exist? On a cluster the compute
/// nodes' `PATH` (and `module load`) may differ from this shell's, so a
/// missing program is a warning there and a failure for the local executor.
fn check_commands(config: &Config) -> Option<Check> {
    let on_host: Vec<_> = config
        .pipelines
        .iter()
        .filter(|p| {
            p.container.is_none() || config.site.container.runtime == ContainerRuntime::None
        })
        .collect();
    if on_host.is_empty() {
        return None;
    }
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for p in &on_host {
        let Some(program) = first_program(&p.command) else {
            continue;
        };
        let exists = if program.contains('/') {
            let path = if Path::new(&program).is_absolute() {
                PathBuf::from(&program)
            } else {
                config.dir.join(&program)
            };
            path.is_file()
        } else {
            which::which(&program).is_ok()
        };
        if exists {
            found.push(program);
        } else {
            missing.push(format!("`{program}` ({})", p.name));
        }
    }
    if missing.is_empty() {
        found.sort();
        found.dedup();
        return Some(Check::ok(
            "commands",
            if found.is_empty() {
                "every host command starts with shell built-ins".to_string()
            } else {
                format!(
                    "found: {}",
                    found
                        .iter()
                        .map(|f| format!("`{f}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
        ));
    }
    let message = format!("not found on `PATH`: {}", missing.join(", "));
    let modules = !config.site.modules.is_empty() || on_host.iter().any(|p| !p.modules.is_empty());
    Some(if config.executor == ExecutorKind::Local && !modules {
        Check::fail(
            "commands",
            message,
            "install it, fix the pipeline's `command`, or run it in a `container`",
        )
    } else {
        Check::warn(
            "commands",
            message,
            "jobs run with the compute nodes' `PATH` and `modules`: check it there \
             (`srun which PROGRAM`), or give the pipeline a `container`",
        )
    })
}

fn check_readable_dir(name: &str, path: &Path) -> Check {
    let shown = super::display_path(path);
    match fs::read_dir(path) {
        Ok(entries) => Check::ok(
            name,
            format!(
                "`{shown}` readable ({})",
                plural(entries.count(), "folder or file")
            ),
        ),
        Err(e) => Check::fail(
            name,
            format!("`{shown}` cannot be read: {e}"),
            format!("create it or fix `paths.{name}`; new sessions arrive there"),
        ),
    }
}

/// Creates and removes an empty file in `dir`: `access(2)` says yes too
/// easily on NFS and for root.
fn can_write_in(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".nfslurm-doctor-{}", std::process::id()));
    fs::File::create(&probe)?;
    fs::remove_file(&probe)
}

fn check_writable_dir(name: &str, path: &Path) -> Check {
    let shown = super::display_path(path);
    let hint = format!("fix its permissions, or point `paths.{name}` elsewhere");
    if path.exists() {
        if !path.is_dir() {
            return Check::fail(name, format!("`{shown}` is not a folder"), hint);
        }
        return match can_write_in(path) {
            Ok(()) => Check::ok(name, format!("`{shown}` writable")),
            Err(e) => Check::fail(name, format!("`{shown}` is not writable: {e}"), hint),
        };
    }
    let Some(parent) = path.ancestors().skip(1).find(|a| a.exists()) else {
        return Check::fail(name, format!("`{shown}` cannot be created"), hint);
    };
    match can_write_in(parent) {
        Ok(()) => Check::ok(name, format!("`{shown}` will be created")),
        Err(e) => Check::fail(
            name,
            format!(
                "`{shown}` does not exist and `{}` is not writable: {e}",
                parent.display()
            ),
            hint,
        ),
    }
}

fn check_mapping(config: &Config) -> Check {
    let file = &config.discovery.mapping.file;
    match crate::study::load_mapping(&config.discovery.mapping) {
        Ok((mapping, problems)) if problems.is_empty() => Check::ok(
            "mapping",
            format!(
                "`{}`: {}",
                super::display_path(file),
                plural(mapping.len(), "row")
            ),
        ),
        Ok((mapping, problems)) => Check::warn(
            "mapping",
            format!(
                "`{}`: {}, {} with problems (first: {})",
                super::display_path(file),
                plural(mapping.len(), "row"),
                problems.len(),
                problems[0]
            ),
            "fix those rows; their sessions are left out until then (`nfslurm discover` lists them)",
        ),
        Err(e) => Check::fail(
            "mapping",
            super::error_chain(&e),
            e.hint().unwrap_or(
                "write the CSV that maps scan IDs to subjects, or fix `discovery.mapping`",
            ),
        ),
    }
}

/// When `sync` last ended, read without opening the store for writing
/// (which would migrate it).
fn last_sync_read_only(dir: &Path) -> Option<i64> {
    if !dir.join("state.db").exists() {
        return None;
    }
    crate::state::Store::open_read_only(dir)
        .ok()?
        .meta(crate::notify::META_LAST_SYNC)
        .ok()??
        .parse()
        .ok()
}

/// The state database, opened read-only: integrity and schema version.
fn check_state(dir: &Path) -> Check {
    let db = dir.join("state.db");
    if let Some(why) = crate::state::health::problem(dir) {
        let hint = crate::state::StateError::Refused {
            dir: dir.to_path_buf(),
            why: why.clone(),
        }
        .hint()
        .unwrap_or_default();
        return Check::fail("state", why, hint);
    }
    if !db.exists() {
        return Check::ok("state", "no state yet: the first `nfslurm sync` creates it");
    }
    let shown = super::display_path(&db);
    let store = match crate::state::Store::open_read_only(dir) {
        Ok(s) => s,
        Err(e) => {
            return Check::fail(
                "state",
                format!("cannot open `{shown}`: {e}"),
                "check its permissions (it belongs to whoever runs `sync`)",
            );
        }
    };
    let integrity = store.integrity_check();
    let version = store.schema_version();
    let (integrity, version) = match (integrity, version) {
        (Ok(i), Ok(v)) => (i, v),
        (Err(e), _) | (_, Err(e)) => {
            return Check::fail(
                "state",
                format!("`{shown}` cannot be read: {e}"),
                "restore it from a backup; the job logs and scripts in the state folder stay",
            );
        }
    };
    if integrity != "ok" {
        return Check::fail(
            "state",
            format!("`{shown}` is damaged: {integrity}"),
            "stop cron (`nfslurm cron remove`), restore the file from a backup, then install it again",
        );
    }
    let current = crate::state::SCHEMA_VERSION;
    let mode = fs::metadata(dir)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap_or(0o700);
    if version > current {
        Check::fail(
            "state",
            format!("`{shown}` has schema version {version}, newer than this nfslurm ({current})"),
            "use the nfslurm that wrote it (check `nfslurm cron show` for the binary cron runs)",
        )
    } else if version < current {
        Check::warn(
            "state",
            format!("`{shown}` has schema version {version}; this nfslurm writes {current}"),
            "the next command that writes (e.g. `nfslurm sync`) migrates it",
        )
    } else if mode & 0o077 != 0 {
        Check::warn(
            "state",
            format!("`{shown}` is healthy, but its folder is readable by others (mode {mode:o})"),
            format!(
                "`chmod 700 {}`: scan IDs and logs can carry personal data",
                super::display_path(dir)
            ),
        )
    } else {
        Check::ok(
            "state",
            format!("`{shown}` passes its integrity check (schema version {version})"),
        )
    }
}

fn check_cron(config: &Config) -> Check {
    let crontab = match cron::read_crontab() {
        Ok(text) => text,
        Err(e) => {
            let hint = e
                .downcast_ref::<super::Failure>()
                .and_then(|f| f.hint.clone())
                .unwrap_or_default();
            return Check::warn("cron", format!("{e:#}"), hint);
        }
    };
    let file = fs::canonicalize(&config.file).unwrap_or_else(|_| config.file.clone());
    let mark = cron::marker(&file);
    let Some(line) = crontab.lines().find(|l| cron::is_our_line(l, &mark)) else {
        return Check::warn(
            "cron",
            "no crontab line runs `nfslurm sync` for this config on this host",
            "`nfslurm cron install` adds one (nothing runs unattended until then)",
        );
    };
    let missing = cron::missing_under_cron(config, Some(line));
    if !missing.is_empty() {
        let names: Vec<String> = missing.iter().map(|n| format!("`${n}`")).collect();
        return Check::fail(
            "cron",
            format!(
                "the crontab line is there, but under cron the config misses {}",
                names.join(", ")
            ),
            "set them and `nfslurm cron install` again (it carries them into the line), \
             or give defaults: `${VAR:-value}`",
        );
    }
    let last = last_sync_read_only(&config.paths.state_dir);
    let fields: Vec<&str> = line.split_whitespace().take(5).collect();
    Check::ok(
        "cron",
        format!(
            "`{}`, last sync {}",
            fields.join(" "),
            last.map(output::local_time)
                .unwrap_or_else(|| "never".into())
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::first_program;

    #[test]
    fn the_first_program_skips_assignments_keywords_and_tera_tags() {
        let p = |c: &str| first_program(c);
        assert_eq!(p("heudiconv --files x -o y").as_deref(), Some("heudiconv"));
        assert_eq!(
            p("out={{ paths.bids_root }}/x\nmkdir -p \"$out\"").as_deref(),
            Some("mkdir")
        );
        assert_eq!(
            p("# a comment\nFOO=1 qsiprep a b").as_deref(),
            Some("qsiprep")
        );
        assert_eq!(p("{% for s in sessions %}cat x\n").as_deref(), Some("cat"));
        assert_eq!(
            p("if recon-all -s x; then echo ok; fi").as_deref(),
            Some("recon-all")
        );
        assert_eq!(
            p("./run.sh {{ subject.label }}").as_deref(),
            Some("./run.sh")
        );
        // Not knowable without rendering.
        assert_eq!(p("{{ tool }} --run"), None);
        assert_eq!(p("$TOOL --run"), None);
        // Built-ins only: nothing to look for on the first line; the next one counts.
        assert_eq!(p("echo start\ntrue").as_deref(), None);
        assert_eq!(p("cd /tmp; ls").as_deref(), None);
    }
}
