//! `nfslurm cron install|show|remove`: the login-node crontab line for `sync`,
//! and `sync --log`, the rotated, time-stamped log that line writes.
//!
//! The crontab is edited through `crontab -l` / `crontab -` (the user's own,
//! no root), one line per config file, found again by its trailing marker
//! `# nfslurm: /abs/nfslurm.yaml` (a shell comment: cron hands the whole
//! command to `sh`). Every other line is kept byte for byte.
//!
//! Cron starts commands with a minimal environment (`PATH=/usr/bin:/bin`,
//! `HOME`, `LOGNAME`, `SHELL`), so the line carries what `sync` needs from the
//! shell that installed it: a `PATH` that reaches `sbatch`, and the variables
//! the config expands (`$SCRATCH`, …). Its minute is spread by a hash of the
//! config path so that many studies do not all poll the controller at :00.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;

use super::{Failure, Settings};
use crate::config::Config;
use crate::output;
use crate::render::shell_quote;

/// What `nfslurm cron` was asked to do (resolved from the CLI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CronSettings {
    /// `schedule` (five crontab fields) wins over `every` when given.
    Install {
        every: String,
        schedule: Option<String>,
    },
    Show,
    Remove,
}

/// The log is rotated when it grows past this many bytes…
pub const LOG_MAX_BYTES: u64 = 1024 * 1024;
/// …keeping this many old generations (`cron.log.1` … `cron.log.3`).
pub const LOG_KEEP: u32 = 3;
/// The log's file name in the state directory.
pub const LOG_NAME: &str = "cron.log";

/// What cron itself puts in a job's environment (Debian's and cronie's).
const CRON_ENV: &[&str] = &["HOME", "LOGNAME", "USER", "SHELL", "PATH"];
/// The Slurm tools `sync` calls.
const SLURM_TOOLS: &[&str] = &["sbatch", "squeue", "sacct", "scancel"];

pub fn run(settings: &Settings, action: CronSettings) -> anyhow::Result<i32> {
    match action {
        CronSettings::Install { every, schedule } => {
            let config = super::load_config(settings)?;
            install(settings, &config, &every, schedule.as_deref())
        }
        // These work from the config's path alone, so that a config that no
        // longer loads can still have its line shown and removed.
        CronSettings::Show => {
            let file = config_path(settings)?;
            let config = super::load_config(settings).ok();
            show(settings, &file, config.as_ref())
        }
        CronSettings::Remove => remove(settings, &config_path(settings)?),
    }
}

/// The config file as cron should name it: absolute, symlinks resolved.
fn config_path(settings: &Settings) -> anyhow::Result<PathBuf> {
    let cwd = std::env::current_dir().context("cannot read the working directory")?;
    let file = crate::config::find_config(settings.config.as_deref(), &cwd)
        .map_err(|e| Failure::user(e.to_string(), e.hint()))?;
    Ok(fs::canonicalize(&file).unwrap_or(file))
}

// ---------------------------------------------------------------------------
// The schedule

/// How often cron runs `sync`, as crontab's five fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub fields: String,
    /// For people: `every 15 minutes`.
    pub text: String,
}

const EVERY_HINT: &str = "write whole minutes that divide an hour (1m, 2m, 5m, 10m, 15m, 20m, 30m) \
     or whole hours that divide a day (1h, 2h, 3h, 4h, 6h, 8h, 12h, 24h)";

/// Parses `--every` (`15m`, `1h`, `90` = minutes, as everywhere in nfslurm)
/// into crontab fields, offset by `seed` (a hash of the config path).
pub fn parse_every(every: &str, seed: u64) -> Result<Schedule, String> {
    let secs = crate::config::parse_duration(every)
        .map_err(|e| format!("`--every {every}` is not a duration: {e}"))?;
    let bad = || format!("`--every {every}` cannot be written as a crontab schedule");
    if secs == 0 || secs % 60 != 0 {
        return Err(bad());
    }
    let minutes = secs / 60;
    if minutes < 60 {
        if 60 % minutes != 0 {
            return Err(bad());
        }
        let offset = seed % minutes;
        let fields = match (minutes, offset) {
            (1, _) => "* * * * *".to_string(),
            (n, 0) => format!("*/{n} * * * *"),
            (n, o) => format!("{o}-59/{n} * * * *"),
        };
        let text = if minutes == 1 {
            "every minute".to_string()
        } else {
            let at: Vec<String> = (0..60 / minutes)
                .map(|i| format!(":{:02}", offset + i * minutes))
                .collect();
            format!("every {minutes} minutes ({})", at.join(", "))
        };
        return Ok(Schedule { fields, text });
    }
    if minutes % 60 != 0 {
        return Err(bad());
    }
    let hours = minutes / 60;
    if hours > 24 || 24 % hours != 0 {
        return Err(bad());
    }
    let minute = seed % 60;
    let hour_offset = (seed / 60) % hours;
    let (fields, text) = match hours {
        1 => (
            format!("{minute} * * * *"),
            format!("every hour (at :{minute:02})"),
        ),
        24 => (
            format!("{minute} {hour_offset} * * *"),
            format!("every day (at {hour_offset:02}:{minute:02})"),
        ),
        n => (
            format!("{minute} {hour_offset}-23/{n} * * *"),
            format!("every {n} hours (from {hour_offset:02}:{minute:02})"),
        ),
    };
    Ok(Schedule { fields, text })
}

/// The five crontab fields, their names and bounds, and the names cron
/// accepts in place of numbers.
const CRON_FIELDS: [(&str, u32, u32, &[&str]); 5] = [
    ("minute", 0, 59, &[]),
    ("hour", 0, 23, &[]),
    ("day-of-month", 1, 31, &[]),
    (
        "month",
        1,
        12,
        &[
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ],
    ),
    (
        "day-of-week",
        0,
        7,
        &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
    ),
];

const SCHEDULE_HINT: &str = "five fields: minute hour day-of-month month day-of-week, \
     each `*`, a number, a range `a-b`, a step `*/n` or `a-b/n`, or a list of these \
     (`0 2 */3 * *` is 02:00 every third day)";

/// Checks `--schedule`, five crontab fields as Vixie cron and cronie read
/// them, and says which field is wrong and why.
pub fn parse_schedule(expr: &str) -> Result<Schedule, String> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "`--schedule {expr}` has {} fields; crontab needs 5",
            fields.len()
        ));
    }
    for (text, (name, min, max, names)) in fields.iter().zip(CRON_FIELDS) {
        check_cron_field(text, min, max, names)
            .map_err(|why| format!("`--schedule {expr}`: the {name} field `{text}` {why}"))?;
    }
    Ok(Schedule {
        fields: fields.join(" "),
        text: format!("on the schedule `{}`", fields.join(" ")),
    })
}

fn check_cron_field(text: &str, min: u32, max: u32, names: &[&str]) -> Result<(), String> {
    let value = |v: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(v)) {
            // Month names count from 1, day names from 0: as the field does.
            return Ok(i as u32 + min);
        }
        let n: u32 = v
            .parse()
            .map_err(|_| format!("has `{v}`, which is not a number"))?;
        if n < min || n > max {
            return Err(format!("has `{n}`, outside {min}-{max}"));
        }
        Ok(n)
    };
    for item in text.split(',') {
        if item.is_empty() {
            return Err("has an empty list item".into());
        }
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (item, None),
        };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (value(a)?, value(b)?);
            if a > b {
                return Err(format!("has the range `{range}`, which runs backwards"));
            }
            (a, b)
        } else {
            if step.is_some() {
                return Err(format!(
                    "has the step `{item}` on a single value: write `{range}-{max}/…` or `*/…`"
                ));
            }
            let v = value(range)?;
            (v, v)
        };
        if let Some(step) = step {
            let n: u32 = step
                .parse()
                .map_err(|_| format!("has the step `/{step}`, which is not a number"))?;
            if n == 0 || n > hi - lo + 1 {
                return Err(format!(
                    "has the step `/{step}`: it must be 1 to {}",
                    hi - lo + 1
                ));
            }
        }
    }
    Ok(())
}

/// FNV-1a: a hash that stays the same across Rust versions and machines.
fn stable_hash(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

// ---------------------------------------------------------------------------
// The line, and editing the crontab text (pure)

/// The marker that ends this config's line.
pub fn marker(config_file: &Path) -> String {
    format!(
        "# nfslurm: {}",
        cron_escape(&config_file.display().to_string())
    )
}

/// In a crontab command `%` means a newline: escape it.
fn cron_escape(text: &str) -> String {
    text.replace('%', "\\%")
}

/// Is `line` the line of the config whose marker is `marker`?
pub fn is_our_line(line: &str, marker: &str) -> bool {
    let line = line.trim_end();
    !line.trim_start().starts_with('#') && line.ends_with(marker)
}

/// Every nfslurm line of the crontab (any config).
pub fn nfslurm_lines(crontab: &str) -> Vec<&str> {
    crontab
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains(" # nfslurm: "))
        .collect()
}

/// The crontab line for `sync`.
pub fn cron_line(
    schedule: &Schedule,
    env: &[(String, String)],
    exe: &Path,
    config_file: &Path,
    log: &Path,
) -> String {
    let mut words: Vec<String> = env
        .iter()
        .map(|(k, v)| format!("{k}={}", shell_quote(v)))
        .collect();
    words.push(shell_quote(&exe.display().to_string()));
    words.push("--config".into());
    words.push(shell_quote(&config_file.display().to_string()));
    words.push("sync".into());
    words.push("--log".into());
    words.push(shell_quote(&log.display().to_string()));
    format!(
        "{} {} {}",
        schedule.fields,
        cron_escape(&words.join(" ")),
        marker(config_file)
    )
}

/// The crontab with this config's line set to `line` (replacing any older
/// one, in place), every other line kept.
pub fn with_line(crontab: &str, marker: &str, line: &str) -> String {
    let mut out = Vec::new();
    let mut placed = false;
    for l in crontab.lines() {
        if is_our_line(l, marker) {
            if !placed {
                out.push(line.to_string());
                placed = true;
            }
        } else {
            out.push(l.to_string());
        }
    }
    if !placed {
        out.push(line.to_string());
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

/// The crontab without this config's line(s).
pub fn without_line(crontab: &str, marker: &str) -> String {
    let kept: Vec<&str> = crontab
        .lines()
        .filter(|l| !is_our_line(l, marker))
        .collect();
    if kept.is_empty() {
        String::new()
    } else {
        let mut text = kept.join("\n");
        text.push('\n');
        text
    }
}

// ---------------------------------------------------------------------------
// crontab(1)

const CRONTAB_HINT: &str = "install cron (`apt-get install cron` on Debian) or ask your admins; \
     where login nodes forbid cron, Slurm's `scrontab` can run the same line (see docs/cron.md)";

/// The user's crontab (empty when there is none).
pub fn read_crontab() -> anyhow::Result<String> {
    let out = Command::new("crontab")
        .arg("-l")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            Failure::unreachable(format!("cannot run `crontab -l`: {e}"), Some(CRONTAB_HINT))
        })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if stderr.starts_with("no crontab for") {
        return Ok(String::new());
    }
    Err(Failure::unreachable(
        format!("`crontab -l` failed: {stderr}"),
        Some(CRONTAB_HINT),
    ))
}

/// Replaces the user's crontab with `text`.
pub fn write_crontab(text: &str) -> anyhow::Result<()> {
    let mut child = Command::new("crontab")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            Failure::unreachable(format!("cannot run `crontab -`: {e}"), Some(CRONTAB_HINT))
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .context("cannot write to `crontab -`")?;
    }
    let out = child.wait_with_output().context("cannot run `crontab -`")?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(Failure::unreachable(
            format!("`crontab -` refused the new crontab: {stderr}"),
            Some("the crontab was left as it was; `crontab -l` shows it"),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The commands

fn config_file(config: &Config) -> PathBuf {
    fs::canonicalize(&config.file).unwrap_or_else(|_| config.file.clone())
}

pub fn log_path(config: &Config) -> PathBuf {
    config.paths.state_dir.join(LOG_NAME)
}

fn host() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "this host".into())
}

/// The user whose crontab `crontab` edits: the real user, not `$USER`.
fn user() -> String {
    // SAFETY: getpwuid returns a pointer into static storage or null; the
    // name is copied out at once, before any other call could reuse it.
    let name = unsafe {
        let pw = libc::getpwuid(libc::getuid());
        if pw.is_null() || (*pw).pw_name.is_null() {
            None
        } else {
            Some(
                std::ffi::CStr::from_ptr((*pw).pw_name)
                    .to_string_lossy()
                    .into_owned(),
            )
        }
    };
    name.or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "you".into())
}

/// The variables the config (and its site file) read from the environment.
fn config_vars(config: &Config) -> BTreeSet<String> {
    let asked = std::cell::RefCell::new(BTreeSet::new());
    if let Ok(text) = fs::read_to_string(&config.file) {
        let _ = crate::config::load_str_with_env(&text, &config.file, &|name| {
            asked.borrow_mut().insert(name.to_string());
            std::env::var(name).ok()
        });
    }
    asked.into_inner()
}

/// What the crontab line sets before running nfslurm: a `PATH` that reaches
/// the Slurm tools, `SLURM_CONF` when set, and the config's variables that
/// cron would not provide.
fn line_env(config: &Config) -> Vec<(String, String)> {
    let mut dirs: Vec<String> = Vec::new();
    for tool in SLURM_TOOLS {
        if let Ok(path) = which::which(tool)
            && let Some(dir) = path.parent()
        {
            dirs.push(dir.display().to_string());
        }
    }
    dirs.extend(["/usr/local/bin", "/usr/bin", "/bin"].map(String::from));
    let mut seen = BTreeSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    let mut env = vec![("PATH".to_string(), dirs.join(":"))];
    let mut names = config_vars(config);
    names.insert("SLURM_CONF".into());
    for name in names {
        if CRON_ENV.contains(&name.as_str()) {
            continue;
        }
        if let Ok(value) = std::env::var(&name) {
            env.push((name, value));
        }
    }
    env
}

/// Variables the config reads that neither cron nor `line` provide.
pub fn missing_under_cron(config: &Config, line: Option<&str>) -> Vec<String> {
    config_vars(config)
        .into_iter()
        .filter(|name| !CRON_ENV.contains(&name.as_str()))
        .filter(|name| !line.is_some_and(|l| l.contains(&format!(" {name}="))))
        .filter(|name| {
            // `${VAR:-default}` works without it: only names that break the load count.
            let text = fs::read_to_string(&config.file).unwrap_or_default();
            crate::config::load_str_with_env(&text, &config.file, &|n| {
                if n == name {
                    None
                } else {
                    std::env::var(n).ok()
                }
            })
            .is_err()
        })
        .collect()
}

fn install(
    settings: &Settings,
    config: &Config,
    every: &str,
    schedule: Option<&str>,
) -> anyhow::Result<i32> {
    let file = config_file(config);
    let schedule = match schedule {
        Some(expr) => parse_schedule(expr).map_err(|e| Failure::user(e, Some(SCHEDULE_HINT)))?,
        None => parse_every(every, stable_hash(&file.display().to_string()))
            .map_err(|e| Failure::user(e, Some(EVERY_HINT)))?,
    };
    let exe = std::env::current_exe()
        .and_then(fs::canonicalize)
        .context("cannot find the path of the nfslurm binary")?;
    let log = log_path(config);
    let env = line_env(config);
    let line = cron_line(&schedule, &env, &exe, &file, &log);
    let mark = marker(&file);
    let before = read_crontab()?;
    let after = with_line(&before, &mark, &line);
    let action = if before == after {
        "unchanged"
    } else if before.lines().any(|l| is_our_line(l, &mark)) {
        "updated"
    } else {
        "installed"
    };
    if action != "unchanged" {
        write_crontab(&after)?;
    }
    let carried: Vec<&str> = env
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| *k != "PATH")
        .collect();
    if settings.json {
        output::print_json(&json!({
            "action": action, "line": redact_urls(&line), "schedule": schedule.text,
            "log": log, "host": host(), "user": user(), "carried": carried,
        }));
        return Ok(0);
    }
    if settings.quiet {
        return Ok(0);
    }
    println!("{action}: {}", redact_urls(&line));
    println!(
        "  runs `nfslurm sync` {} from the crontab of `{}` on `{}`",
        schedule.text,
        user(),
        host()
    );
    println!(
        "  log: `{}` (rotated past 1 MiB, {LOG_KEEP} old files kept)",
        log.display()
    );
    if !carried.is_empty() {
        println!(
            "  from this shell: `PATH` and {}",
            carried
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if exe.components().any(|c| c.as_os_str() == "target") {
        eprintln!(
            "warning: the line runs `{}`, a build output that `cargo` may replace or remove",
            exe.display()
        );
        eprintln!("hint: `cargo install --path .` and run `nfslurm cron install` from there");
    }
    Ok(0)
}

fn show(settings: &Settings, file: &Path, config: Option<&Config>) -> anyhow::Result<i32> {
    let mark = marker(file);
    let crontab = read_crontab()?;
    let line = crontab
        .lines()
        .find(|l| is_our_line(l, &mark))
        .map(str::to_string);
    let others: Vec<String> = nfslurm_lines(&crontab)
        .into_iter()
        .filter(|l| !is_our_line(l, &mark))
        .map(redact_urls)
        .collect();
    let log = config.map(log_path);
    let log_meta = log.as_ref().and_then(|l| fs::metadata(l).ok());
    let last_sync = config
        .and_then(|c| super::read_snapshot(c).ok())
        .and_then(|(store, _)| store)
        .and_then(|s| crate::notify::last_sync(&s).at);
    let missing = match (config, &line) {
        (Some(c), Some(l)) => missing_under_cron(c, Some(l)),
        _ => Vec::new(),
    };
    if settings.json {
        output::print_json(&json!({
            "installed": line.is_some(), "line": line.as_deref().map(redact_urls), "log": log,
            "log_bytes": log_meta.as_ref().map(|m| m.len()),
            "last_sync_at": output::rfc3339(last_sync),
            "host": host(), "user": user(), "other_nfslurm_lines": others,
            "missing_under_cron": missing,
        }));
        return Ok(0);
    }
    match &line {
        Some(l) => println!("{}", redact_urls(l)),
        None => {
            println!("no crontab line for `{}` on `{}`", file.display(), host());
            println!("hint: `nfslurm cron install --every 15m` adds one");
        }
    }
    match (&log, &log_meta) {
        (Some(log), Some(m)) => println!(
            "log: `{}` ({}, rotated past 1 MiB)",
            log.display(),
            output::bytes(m.len())
        ),
        (Some(log), None) => println!("log: `{}` (not written yet)", log.display()),
        (None, _) => println!("log: unknown: the config does not load here"),
    }
    match last_sync {
        Some(at) => println!("last sync: {}", output::local_time(at)),
        None => println!("last sync: never"),
    }
    for name in &missing {
        println!(
            "warning: the config reads `${name}`, which cron does not set and the line does not carry"
        );
        println!(
            "hint: `{name}=… nfslurm cron install` again, or write `${{{name}:-default}}` in the config"
        );
    }
    if !others.is_empty() {
        println!("other nfslurm lines in this crontab: {}", others.len());
        for l in others {
            println!("  {l}");
        }
    }
    Ok(0)
}

/// A crontab line as it may be shown: the line carries the values of the
/// variables the config expands, and one may be a webhook URL (a secret).
/// Every URL in it is shown as scheme, host and port only; the crontab
/// itself keeps the real value (only its owner and root can read it).
pub fn redact_urls(line: &str) -> String {
    static URL: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\x22]+")
            .expect("a constant, valid regex")
    });
    URL.replace_all(line, |c: &regex::Captures| crate::notify::redact_url(&c[0]))
        .into_owned()
}

fn remove(settings: &Settings, file: &Path) -> anyhow::Result<i32> {
    let mark = marker(file);
    let before = read_crontab()?;
    let removed: Vec<String> = before
        .lines()
        .filter(|l| is_our_line(l, &mark))
        .map(str::to_string)
        .collect();
    if !removed.is_empty() {
        write_crontab(&without_line(&before, &mark))?;
    }
    if settings.json {
        output::print_json(&json!({
            "action": if removed.is_empty() { "absent" } else { "removed" },
            "lines": removed.iter().map(|l| redact_urls(l)).collect::<Vec<_>>(),
        }));
    } else if settings.quiet {
    } else if removed.is_empty() {
        println!(
            "nothing to remove: no crontab line for `{}`",
            file.display()
        );
    } else {
        for l in &removed {
            println!("removed: {}", redact_urls(l));
        }
    }
    Ok(0)
}

// ---------------------------------------------------------------------------
// `sync --log FILE`

/// Renames `path` to `path.1` (and `.1` to `.2`, …, dropping the oldest past
/// `keep`) when it is larger than `max_bytes`. Returns whether it rotated.
pub fn rotate(path: &Path, max_bytes: u64, keep: u32) -> io::Result<bool> {
    match fs::metadata(path) {
        Ok(m) if m.len() > max_bytes => {}
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    let generation = |i: u32| {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{i}"));
        PathBuf::from(name)
    };
    for i in (1..keep.max(1)).rev() {
        match fs::rename(generation(i), generation(i + 1)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    fs::rename(path, generation(1))?;
    Ok(true)
}

/// While alive, this process's stdout and stderr go to a log file, each line
/// stamped with the local time and the pid. Children that nfslurm starts
/// with their own output (Slurm tools, the local worker) are not affected.
pub struct SyncLog {
    done: mpsc::Receiver<()>,
}

impl SyncLog {
    /// Rotates `path` if it is too large, then sends stdout and stderr to it.
    pub fn start(path: &Path) -> io::Result<SyncLog> {
        // `--log plain.log` has the parent `""`: the working directory.
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        if !dir.exists() {
            crate::state::ensure_state_dir(dir).map_err(io::Error::other)?;
        }
        {
            // Two syncs starting together must not both rotate.
            let _guard =
                crate::state::lock_with_timeout(dir, "cron.log.lock", Duration::from_secs(2))
                    .map_err(io::Error::other)?;
            rotate(path, LOG_MAX_BYTES, LOG_KEEP)?;
        }
        let mut file = OpenOptions::new().create(true).append(true).open(path)?;
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into `fds`; errors are checked.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let (read_fd, write_fd) = (fds[0], fds[1]);
        io::stdout().flush()?;
        // SAFETY: dup2 onto the standard descriptors; `write_fd` is ours to close.
        unsafe {
            if libc::dup2(write_fd, 1) < 0 || libc::dup2(write_fd, 2) < 0 {
                return Err(io::Error::last_os_error());
            }
            libc::close(write_fd);
        }
        // SAFETY: `read_fd` is a fresh descriptor that nothing else owns.
        let reader = unsafe { File::from_raw_fd(read_fd) };
        let (tx, done) = mpsc::channel();
        let pid = std::process::id();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if buf.last() != Some(&b'\n') {
                            buf.push(b'\n');
                        }
                        let stamp = chrono::Local::now().format("%Y-%m-%d %H:%M:%S");
                        let mut line = format!("{stamp} [{pid}] ").into_bytes();
                        line.extend_from_slice(&buf);
                        let _ = file.write_all(&line);
                    }
                }
            }
            let _ = tx.send(());
        });
        Ok(SyncLog { done })
    }

    /// Closes this process's end of the log and waits (briefly) until every
    /// line is written.
    pub fn finish(self) {
        let _ = io::stdout().flush();
        if let Ok(null) = File::open("/dev/null") {
            use std::os::fd::AsRawFd;
            // SAFETY: dup2 of an open descriptor onto 1 and 2, closing the pipe's write ends.
            unsafe {
                libc::dup2(null.as_raw_fd(), 1);
                libc::dup2(null.as_raw_fd(), 2);
            }
        }
        // A child that kept the pipe open (none should) must not hold cron up.
        let _ = self.done.recv_timeout(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    /// Issue 9: a webhook URL carried in the crontab line is not printed.
    #[test]
    fn urls_in_a_shown_crontab_line_are_redacted() {
        let line = "*/15 * * * * PATH=/usr/bin SLACK_WEBHOOK='https://u:PASS@hooks.example.org/services/T/B/SECRET?x=Q' HOOK2=http://h:8/p /bin/nfslurm --config /s/nfslurm.yaml sync --log /s/.nfslurm/cron.log # nfslurm: /s/nfslurm.yaml";
        assert_eq!(
            redact_urls(line),
            "*/15 * * * * PATH=/usr/bin SLACK_WEBHOOK='https://hooks.example.org/…' HOOK2=http://h:8/… /bin/nfslurm --config /s/nfslurm.yaml sync --log /s/.nfslurm/cron.log # nfslurm: /s/nfslurm.yaml"
        );
    }

    use super::*;

    fn sched(fields: &str) -> Schedule {
        Schedule {
            fields: fields.into(),
            text: String::new(),
        }
    }

    #[test]
    fn every_gives_spread_crontab_fields() {
        let f = |e: &str, seed: u64| parse_every(e, seed).map(|s| s.fields);
        assert_eq!(f("15m", 0).unwrap(), "*/15 * * * *");
        assert_eq!(f("15m", 18).unwrap(), "3-59/15 * * * *");
        assert_eq!(f("1m", 7).unwrap(), "* * * * *");
        assert_eq!(f("5", 2).unwrap(), "2-59/5 * * * *"); // plain numbers are minutes
        assert_eq!(f("60m", 125).unwrap(), "5 * * * *");
        assert_eq!(f("1h", 125).unwrap(), "5 * * * *");
        assert_eq!(f("6h", 125).unwrap(), "5 2-23/6 * * *");
        assert_eq!(f("24h", 125).unwrap(), "5 2 * * *");
        assert_eq!(
            parse_every("15m", 18).unwrap().text,
            "every 15 minutes (:03, :18, :33, :48)"
        );
        for bad in ["7m", "45m", "90m", "5h", "30s", "0", "2d", "soon"] {
            assert!(parse_every(bad, 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_line_quotes_paths_and_escapes_percent() {
        let line = cron_line(
            &sched("*/15 * * * *"),
            &[("PATH".into(), "/opt/slurm/bin:/usr/bin:/bin".into())],
            Path::new("/home/ada/.cargo/bin/nfslurm"),
            Path::new("/data/my study/100%/nfslurm.yaml"),
            Path::new("/data/my study/100%/.nfslurm/cron.log"),
        );
        assert_eq!(
            line,
            "*/15 * * * * PATH=/opt/slurm/bin:/usr/bin:/bin /home/ada/.cargo/bin/nfslurm \
             --config '/data/my study/100\\%/nfslurm.yaml' sync \
             --log '/data/my study/100\\%/.nfslurm/cron.log' \
             # nfslurm: /data/my study/100\\%/nfslurm.yaml"
        );
        assert!(is_our_line(
            &line,
            &marker(Path::new("/data/my study/100%/nfslurm.yaml"))
        ));
    }

    #[test]
    fn editing_keeps_every_other_line() {
        let mark = marker(Path::new("/s/nfslurm.yaml"));
        let other = marker(Path::new("/t/nfslurm.yaml"));
        let before =
            format!("MAILTO=ada\n# a comment {mark}\n0 3 * * * backup.sh\n*/5 * * * * x {other}\n");
        let line = format!("*/15 * * * * nfslurm sync {mark}");
        let after = with_line(&before, &mark, &line);
        assert_eq!(after, format!("{before}{line}\n"));
        // Idempotent, and an update replaces in place.
        assert_eq!(with_line(&after, &mark, &line), after);
        let newer = format!("*/5 * * * * nfslurm sync {mark}");
        assert_eq!(
            with_line(&after, &mark, &newer),
            format!("{before}{newer}\n")
        );
        assert_eq!(without_line(&after, &mark), before);
        assert_eq!(without_line(&format!("{line}\n"), &mark), "");
        assert_eq!(nfslurm_lines(&after).len(), 2);
    }

    #[test]
    fn a_schedule_of_five_valid_fields_is_kept_as_written() {
        for expr in [
            "0 2 */3 * *",
            "*/15 * * * *",
            "30 1-5/2 1,15 jan-jun mon-fri",
            "0 0 * * 7",
            "5 4 * DEC sun",
        ] {
            let s = parse_schedule(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
            assert_eq!(s.fields, expr);
        }
        assert_eq!(parse_schedule("  0  2 * * * ").unwrap().fields, "0 2 * * *");
    }

    #[test]
    fn a_bad_schedule_names_the_field_and_the_problem() {
        let err = |e: &str| parse_schedule(e).unwrap_err();
        assert!(
            err("0 2 * *").contains("has 4 fields"),
            "{}",
            err("0 2 * *")
        );
        assert!(err("60 * * * *").contains("minute field `60` has `60`, outside 0-59"));
        assert!(err("0 24 * * *").contains("hour field"));
        assert!(err("0 2 0 * *").contains("day-of-month field `0`"));
        assert!(err("0 2 * 13 *").contains("month field"));
        assert!(err("0 2 * * 8").contains("day-of-week field"));
        assert!(err("0 2 */0 * *").contains("step `/0`"));
        assert!(err("0 2 5-1 * *").contains("runs backwards"));
        assert!(err("0 2 x * *").contains("`x`, which is not a number"));
        assert!(err("0,,5 2 * * *").contains("empty list item"));
        assert!(err("5/10 * * * *").contains("single value"));
        assert!(err("0 2 * foo *").contains("month field `foo`"));
    }

    #[test]
    fn rotation_keeps_three_generations() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("cron.log");
        assert!(!rotate(&log, 10, 3).unwrap());
        for i in 1..=5 {
            fs::write(&log, format!("generation {i} is long enough")).unwrap();
            assert!(rotate(&log, 10, 3).unwrap());
        }
        fs::write(&log, "short").unwrap();
        assert!(!rotate(&log, 10, 3).unwrap());
        let read = |n: &str| fs::read_to_string(dir.path().join(n)).unwrap();
        assert_eq!(read("cron.log.1"), "generation 5 is long enough");
        assert_eq!(read("cron.log.2"), "generation 4 is long enough");
        assert_eq!(read("cron.log.3"), "generation 3 is long enough");
        assert!(!dir.path().join("cron.log.4").exists());
        assert_eq!(read("cron.log"), "short");
    }
}
