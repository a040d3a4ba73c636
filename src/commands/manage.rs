//! `cancel` and `retry`: settings in, one engine call, the report out.

use serde_json::json;

use super::{Failure, SelectionSpec, Settings};
use crate::engine::{self, manage::RetryRequest};
use crate::output;

pub fn cancel(
    settings: &Settings,
    runs: &[String],
    spec: &SelectionSpec,
    all: bool,
) -> anyhow::Result<i32> {
    let config = super::load_config(settings)?;
    let selection = super::resolve_selection(&config, spec)?;
    if runs.is_empty() && selection.is_all() && !all {
        return Err(Failure::user(
            "say what to cancel: job IDs, or selection flags",
            Some("`nfslurm cancel --all` cancels every unit of the study that is not done"),
        ));
    }
    let lock = engine::lock::acquire(&config)?;
    let mut store = super::open_store(&config)?;
    let sel = (!selection.is_all() || all).then_some(&selection);
    let report = engine::manage::cancel(&config, &mut store, &lock, runs, sel)?;
    drop(lock);
    settings.printer().result(
        || json!({ "cancelled": crate::views::cancel_json(&report) }),
        || {
            let mut out = String::new();
            for r in &report.runs {
                let job = r.job_id.as_deref().unwrap_or("-");
                out.push_str(&format!("cancelled {} (job {job})\n", r.key));
            }
            for (key, state) in &report.idle {
                out.push_str(&format!("cancelled {key} (was {})\n", state.as_str()));
            }
            if report.runs.is_empty() && report.idle.is_empty() {
                out.push_str("nothing to cancel\n");
            }
            out
        },
    );
    Ok(0)
}

/// `all`: every failed, cancelled or retrying unit (`--all`), as a
/// selection flag says; `failed`: only the failed ones.
pub fn retry(
    settings: &Settings,
    runs: &[String],
    spec: &SelectionSpec,
    all: bool,
    failed: bool,
) -> anyhow::Result<i32> {
    let config = super::load_config(settings)?;
    let selection = super::resolve_selection(&config, spec)?;
    if runs.is_empty() && selection.is_all() && !failed && !all {
        return Err(Failure::user(
            "say what to retry: job IDs, selection flags, `--failed` or `--all`",
            Some("`nfslurm retry --all` retries every failed or cancelled unit"),
        ));
    }
    let lock = engine::lock::acquire(&config)?;
    let mut store = super::open_store(&config)?;
    let request = RetryRequest {
        runs: runs.to_vec(),
        selection,
        all,
        failed,
    };
    let report = engine::manage::retry(&config, &mut store, lock, &request)?;
    settings.printer().result(
        || crate::views::retry_json(&report),
        || {
            if report.retried.is_empty() {
                return "nothing to retry\n".to_string();
            }
            let mut out = String::new();
            for k in &report.retried {
                out.push_str(&format!("retrying {k}\n"));
            }
            let n = output::count(report.submitted.rows.len(), "run", "runs");
            out.push_str(&format!("{n} submitted\n"));
            out
        },
    );
    if report.retried.is_empty() {
        return Ok(0);
    }
    super::submit::report_problems(settings, &report.submitted);
    if let Some(err) = report
        .submitted
        .failure("the budgets are reset: `nfslurm sync` submits them once the cluster answers")
    {
        return Err(err);
    }
    Ok(0)
}
