//! The Tera contexts: what a command and a script template can use.
//!
//! The variable reference lives in `docs/templates.md`; keep the two in step.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tera::{Context, Value};

use crate::config::{Config, ExecutorKind};
use crate::model::{Label, UnitKey};

use super::container::{Runtime, container_argv, container_prefix};
use super::{RenderError, ScriptInput, SessionInfo};
use crate::templating::shell_quote;

/// The unit's work dir: `<paths.work_dir>/<pipeline>/sub-<label>` for a
/// subject-level unit, `…/sub-<label>/ses-<label>` for a session-level one.
///
/// One per unit, stable across attempts so a retry reuses what the failed
/// attempt computed (the fMRIPrep/QSIPrep convention: work dir on scratch,
/// per subject, reused on retry). Session-level units get their own folder
/// inside the subject's, because two sessions of a subject may run at once
/// and must not share a Nipype work dir.
pub fn work_dir_for(config: &Config, unit: &UnitKey) -> PathBuf {
    let mut dir = config
        .paths
        .work_dir
        .join(&unit.pipeline)
        .join(format!("sub-{}", unit.subject));
    if let Some(session) = &unit.session {
        dir.push(format!("ses-{session}"));
    }
    dir
}

/// Slurm's time format: `HH:MM:SS`, or `D-HH:MM:SS` from one day on.
pub fn slurm_time(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rest / 3600, rest % 3600 / 60, rest % 60);
    if days > 0 {
        format!("{days}-{h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

/// A string for the command context: quoted, and marked safe.
fn word(s: &str) -> Value {
    Value::safe_string(&shell_quote(s))
}

fn path_str(path: &Path) -> Result<&str, RenderError> {
    path.to_str()
        .ok_or_else(|| RenderError::NonUtf8Path(path.to_path_buf()))
}

fn map(entries: Vec<(&'static str, Value)>) -> Value {
    Value::from(
        entries
            .into_iter()
            .collect::<BTreeMap<&'static str, Value>>(),
    )
}

fn label_map(label: &Label, prefix: &str) -> Vec<(&'static str, Value)> {
    vec![
        ("label", word(label.as_str())),
        ("bids", word(&format!("{prefix}{label}"))),
    ]
}

fn session_value(info: &SessionInfo) -> Result<Value, RenderError> {
    let mut entries = label_map(&info.label, "ses-");
    entries.push(("dicom_dir", word(path_str(&info.dicom_dir)?)));
    entries.push(("scan_id", word(&info.scan_id)));
    Ok(map(entries))
}

fn executor_word(kind: ExecutorKind) -> &'static str {
    match kind {
        ExecutorKind::Slurm => "slurm",
        ExecutorKind::Local => "local",
    }
}

/// The command's context. Every string is a ready shell word (see the module
/// documentation of `render`).
pub(crate) fn command_context(input: &ScriptInput) -> Result<Context, RenderError> {
    let mut ctx = Context::new();
    ctx.insert_value("subject", map(label_map(&input.unit.subject, "sub-")));
    if input.unit.session.is_some()
        && let Some(info) = input.session
    {
        ctx.insert_value("session", session_value(info)?);
    }
    let sessions = input
        .subject_sessions
        .iter()
        .map(session_value)
        .collect::<Result<Vec<Value>, RenderError>>()?;
    ctx.insert_value("sessions", Value::from(sessions));

    let paths = &input.config.paths;
    ctx.insert_value(
        "paths",
        map(vec![
            ("dicom_root", word(path_str(&paths.dicom_root)?)),
            ("bids_root", word(path_str(&paths.bids_root)?)),
            ("derivatives", word(path_str(&paths.derivatives)?)),
            ("work_dir", word(path_str(&paths.work_dir)?)),
            ("state_dir", word(path_str(&paths.state_dir)?)),
        ]),
    );
    ctx.insert_value("work_dir", word(path_str(input.work_dir)?));

    let r = input.resources;
    ctx.insert_value(
        "resources",
        map(vec![
            ("cpus", Value::from(r.cpus)),
            ("mem_mb", Value::from(r.mem_mb)),
            ("mem_gb", Value::from(mem_gb(r.mem_mb))),
            ("time_s", Value::from(r.time_s)),
            ("time", word(&slurm_time(r.time_s))),
            ("gpus", Value::from(r.gpus)),
        ]),
    );
    ctx.insert_value("attempt", Value::from(input.attempt));
    ctx.insert_value("pipeline", word(&input.pipeline.name));
    ctx.insert_value("unit", word(&input.unit.to_string()));
    ctx.insert_value("executor", word(executor_word(input.executor)));
    Ok(ctx)
}

/// Whole GiB, rounded down, at least 1 (tools take `--mem 0` badly).
fn mem_gb(mem_mb: u64) -> u64 {
    if mem_mb == 0 {
        0
    } else {
        (mem_mb / 1024).max(1)
    }
}

/// The script template's context. Strings are raw; the template quotes them.
pub(crate) fn script_context(input: &ScriptInput, command: &str) -> Result<Context, RenderError> {
    let p = input.pipeline;
    let sched = &p.scheduler;
    let r = input.resources;
    let raw = |s: &str| Value::from(s);
    let opt = |s: &Option<String>| match s {
        Some(s) if !s.trim().is_empty() => Value::from(s.as_str()),
        _ => Value::none(),
    };
    let list = |items: &[String]| Value::from(items.iter().map(|s| raw(s)).collect::<Vec<_>>());

    let mut ctx = Context::new();
    ctx.insert_value("job_name", raw(&input.unit.job_name()));
    ctx.insert_value("output", raw(path_str(input.output_path)?));
    ctx.insert_value("cpus", Value::from(r.cpus));
    ctx.insert_value("mem_mb", Value::from(r.mem_mb));
    ctx.insert_value("time", raw(&slurm_time(r.time_s)));
    ctx.insert_value("time_s", Value::from(r.time_s));
    ctx.insert_value("gpus", Value::from(r.gpus));
    ctx.insert_value("partition", opt(&sched.partition));
    ctx.insert_value("account", opt(&sched.account));
    ctx.insert_value("qos", opt(&sched.qos));
    ctx.insert_value("cluster", opt(&sched.cluster));
    ctx.insert_value("extra_directives", list(&sched.extra_directives));
    ctx.insert_value("requeue", Value::from(sched.requeue));
    ctx.insert_value("token", raw(input.token));
    ctx.insert_value("modules", list(&p.modules));

    let runtime = Runtime::of(input);
    let argv = container_argv(input);
    let settings = &input.config.site.container;
    let env: Vec<Value> = p
        .env
        .iter()
        .map(|(name, value)| map(vec![("name", raw(name)), ("value", raw(value))]))
        .collect();
    ctx.insert_value(
        "container",
        map(vec![
            ("runtime", raw(runtime.as_str())),
            ("image", opt(&p.container)),
            // A file the job checks before it starts the container (not a
            // `docker://` or `library://` URI), so a missing image ends the
            // job at once with exit 126: "the command cannot run".
            (
                "image_file",
                opt(&p.container.as_ref().filter(|i| !i.contains("://")).cloned()),
            ),
            ("options", list(&settings.options)),
            ("binds", list(&p.binds)),
            ("env", Value::from(env)),
            ("argv", list(&argv)),
            ("prefix", raw(&container_prefix(&argv))),
        ]),
    );
    ctx.insert_value("command", raw(command));
    ctx.insert_value("work_dir", raw(path_str(input.work_dir)?));
    ctx.insert_value("unit", raw(&input.unit.to_string()));
    ctx.insert_value("pipeline", raw(&p.name));
    ctx.insert_value("subject", raw(input.unit.subject.as_str()));
    ctx.insert_value(
        "session",
        match &input.unit.session {
            Some(s) => raw(s.as_str()),
            None => Value::none(),
        },
    );
    ctx.insert_value("attempt", Value::from(input.attempt));
    ctx.insert_value("executor", raw(executor_word(input.executor)));
    Ok(ctx)
}
