//! The jobs API: thin handlers over the cached documents (reads) and the
//! engine's use cases (writes). A "job" is a run; its ID is the run ID.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use crate::config::Config;
use crate::engine;
use crate::engine::selection::{SelectionSpec, resolve_selection};
use crate::error::Failure;
use crate::model::Level;
use crate::plan::Request;
use crate::state::Store;

/// How long a request that must act waits for the plan lock (then 409).
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

/// An error as JSON, `{"error": …, "hint": …}`, with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    hint: Option<String>,
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>, hint: Option<&str>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            hint: hint.map(str::to_string),
            retry_after: None,
        }
    }

    fn not_found(what: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, format!("no {what}"), None)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(json!({"error": self.message, "hint": self.hint})),
        )
            .into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        response
    }
}

/// An engine error as the API says it: the user's mistakes are 422, an
/// unreachable cluster 503, anything else 500 (the detail goes to the log).
impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> ApiError {
        match err.downcast_ref::<Failure>() {
            Some(f) if f.code == 2 => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                f.message.clone(),
                f.hint.as_deref(),
            ),
            Some(f) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                f.message.clone(),
                f.hint.as_deref(),
            ),
            None => {
                tracing::error!("serve: {err:#}");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error: see the server's log",
                    None,
                )
            }
        }
    }
}

type ApiResult = Result<Response, ApiError>;

/// Runs blocking engine work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        tracing::error!("serve: a request's work panicked: {e}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error: see the server's log",
            None,
        )
    })?
}

/// A JSON body, read within the size limit, every field known.
fn body<T: for<'de> Deserialize<'de>>(bytes: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = bytes.map_err(|e| {
        ApiError::new(
            e.status(),
            format!("the request body could not be read: {}", e.body_text()),
            Some("bodies are at most 16 KiB of JSON"),
        )
    })?;
    let bytes = if bytes.is_empty() {
        Bytes::from_static(b"{}")
    } else {
        bytes
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the request body is not what this path takes: {e}"),
            Some("see docs/serve.md for the fields of each request"),
        )
    })
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("bad query: {}", e.body_text()),
            Some("see docs/serve.md for the parameters of each path"),
        )
    })
}

pub(super) fn job_id(id: &str) -> Result<i64, ApiError> {
    id.parse::<i64>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| ApiError::not_found("such job"))
}

/// Takes the plan lock within [`LOCK_WAIT`], or says 409.
fn lock(config: &Config) -> Result<crate::state::LockGuard, ApiError> {
    engine::lock::plan_lock_within(config, LOCK_WAIT)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "another nfslurm command holds the study's lock",
            Some("a sync or submit is running: try again in a moment"),
        )
    })
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    (status, Json(value)).into_response()
}

pub async fn health() -> Response {
    Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")})).into_response()
}

pub async fn status(State(state): State<Arc<AppState>>) -> Response {
    let body = state.cache().status.clone();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsQuery {
    state: Option<String>,
    pipeline: Option<String>,
    subject: Option<String>,
    session: Option<String>,
    limit: Option<usize>,
    after: Option<i64>,
}

/// The largest page of `GET /api/v1/jobs`.
const MAX_LIMIT: usize = 1000;

fn bare<'a>(label: &'a str, prefix: &str) -> &'a str {
    label.strip_prefix(prefix).unwrap_or(label)
}

pub async fn list_jobs(
    State(state): State<Arc<AppState>>,
    q: Result<Query<JobsQuery>, QueryRejection>,
) -> ApiResult {
    let q = query(q)?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("`limit={limit}` is out of range"),
            Some("limit is 1 to 1000 (default 100); page with `after=<last run_id>`"),
        ));
    }
    let states: Vec<&str> = q
        .state
        .as_deref()
        .map(|s| s.split(',').collect())
        .unwrap_or_default();
    for s in &states {
        if crate::model::RunState::parse(s).is_none() {
            let words: Vec<&str> = crate::model::RunState::ALL
                .iter()
                .map(|s| s.as_str())
                .collect();
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("`state={s}` is not a run state"),
                Some(&format!("run states: {}", words.join(", "))),
            ));
        }
    }
    let subject = q.subject.as_deref().map(|s| bare(s, "sub-"));
    let session = q.session.as_deref().map(|s| bare(s, "ses-"));
    let cache = state.cache();
    let jobs: Vec<Value> = cache
        .jobs
        .iter()
        .filter(|j| q.after.is_none_or(|a| j.run_id < a))
        .filter(|j| states.is_empty() || states.contains(&j.state.as_str()))
        .filter(|j| q.pipeline.as_deref().is_none_or(|p| *j.pipeline == *p))
        .filter(|j| subject.is_none_or(|s| j.subject() == s))
        .filter(|j| session.is_none_or(|s| j.session() == Some(s)))
        .take(limit)
        .map(|j| j.value())
        .collect();
    Ok(json_response(StatusCode::OK, &json!({ "jobs": jobs })))
}

/// Opens the state for one read (a study that never ran has no job).
fn read_store(config: &Config) -> Result<Store, ApiError> {
    if !config.paths.state_dir.join("state.db").exists() {
        return Err(ApiError::not_found("such job"));
    }
    Ok(Store::open_read_only(&config.paths.state_dir).map_err(anyhow::Error::from)?)
}

pub async fn get_job(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult {
    let id = job_id(&id)?;
    let config = state.config.clone();
    let value = blocking(move || {
        let store = read_store(&config)?;
        let run = store.run(id).map_err(|_| ApiError::not_found("such job"))?;
        let audit: Vec<Value> = store
            .audit_of_unit(run.unit_id)
            .map_err(anyhow::Error::from)?
            .into_iter()
            .filter(|a| a.run_id.is_none_or(|r| r == id))
            .map(|a| {
                json!({"at": crate::output::rfc3339(Some(a.at)), "old_state": a.old_state,
                       "new_state": a.new_state, "reason": a.reason, "run_id": a.run_id})
            })
            .collect();
        let mut job = crate::views::run_json(&run);
        job["script_path"] = json!(run.script_path);
        job["log_path"] = json!(run.log_path);
        job["audit"] = json!(audit);
        Ok(job)
    })
    .await?;
    Ok(json_response(StatusCode::OK, &value))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    tail: Option<usize>,
}

/// The most lines `log?tail=` returns.
const MAX_TAIL: usize = 10_000;

pub async fn job_log(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    q: Result<Query<LogQuery>, QueryRejection>,
) -> ApiResult {
    let id = job_id(&id)?;
    let tail = query(q)?.tail.unwrap_or(100).clamp(1, MAX_TAIL);
    let config = state.config.clone();
    let text = blocking(move || {
        let store = read_store(&config)?;
        let run = store.run(id).map_err(|_| ApiError::not_found("such job"))?;
        read_tail(&run.log_path, tail).ok_or_else(|| ApiError::not_found("log for this job yet"))
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

/// The last `lines` lines of a file, read from its end (a log can be large).
fn read_tail(path: &std::path::Path, lines: usize) -> Option<String> {
    // 256 bytes a line is generous for a pipeline's log; capped at 4 MiB.
    let window = (lines as u64 * 256).clamp(16 * 1024, 4 * 1024 * 1024);
    let (text, _) = crate::output::file_end(path, window)?;
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    let mut out = all[from..].join("\n");
    out.push('\n');
    Some(out)
}

pub async fn job_result(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult {
    let id = job_id(&id)?;
    let config = state.config.clone();
    let value = blocking(move || {
        let store = read_store(&config)?;
        let run = store.run(id).map_err(|_| ApiError::not_found("such job"))?;
        let provenance = crate::provenance::document(&store, &run).map_err(anyhow::Error::from)?;
        let prov_file = crate::provenance::file_of(&run.script_path);
        let outputs: Vec<Value> = [
            ("log", run.log_path.clone()),
            ("script", run.script_path.clone()),
            ("provenance", prov_file),
        ]
        .into_iter()
        .filter(|(_, p)| p.exists())
        .map(|(kind, p)| json!({"kind": kind, "path": p}))
        .collect();
        Ok(json!({
            "run_id": run.id,
            "unit": run.key.to_string(),
            "state": run.state.as_str(),
            "ended": !run.state.in_flight(),
            "exit_code": run.exit_code,
            "slurm_state": run.slurm_state,
            "max_rss_mb": run.max_rss_mb,
            "elapsed_s": run.elapsed_s,
            "reason": run.reason,
            "outputs": outputs,
            "provenance": provenance,
        }))
    })
    .await?;
    Ok(json_response(StatusCode::OK, &value))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsBody {
    #[serde(default)]
    pipeline: Vec<String>,
    #[serde(default)]
    participant: Vec<String>,
    #[serde(default)]
    session: Vec<String>,
    #[serde(default)]
    force: bool,
}

/// The hint of a submission's problem (what reached the cluster is kept).
const PROBLEM_HINT: &str =
    "the runs that reached the cluster are recorded; the next sync submits the rest";

/// A submission's problem ([`engine::Submitted::failure`]) as the `problem`
/// of an answer.
fn problem_json(err: &anyhow::Error) -> Value {
    match err.downcast_ref::<Failure>() {
        Some(f) => json!({"error": f.message, "hint": f.hint, "unreachable": f.code == 2}),
        None => json!({"error": err.to_string(), "hint": null, "unreachable": false}),
    }
}

pub async fn create_jobs(
    State(state): State<Arc<AppState>>,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let req: JobsBody = body(bytes)?;
    if let Some(wait) = state.rate_limited() {
        let mut err = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many job creations",
            Some("wait for the time in Retry-After"),
        );
        err.retry_after = Some(wait);
        return Err(err);
    }
    let config = state.config.clone();
    let value = blocking(move || {
        let spec = SelectionSpec {
            pipelines: req.pipeline,
            participants: req.participant,
            sessions: req.session,
            ..Default::default()
        };
        let selection = resolve_selection(&config, &spec)?;
        let request = Request {
            selection,
            force: req.force,
        };
        let lock = lock(&config)?;
        let mut store = engine::open_store(&config)?;
        let report = engine::submit::submit(&config, &mut store, &request, lock)?;
        let rows = &report.submitted.rows;
        let ids: Vec<i64> = rows.iter().map(|r| r.run_id).collect();
        let states: std::collections::HashMap<i64, String> = store
            .runs_by_ids(&ids)
            .map_err(anyhow::Error::from)?
            .into_iter()
            .map(|r| (r.id, r.state.as_str().to_string()))
            .collect();
        let jobs: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({"id": r.run_id, "unit": r.key.to_string(), "job_id": r.job_id,
                       "state": states.get(&r.run_id)})
            })
            .collect();
        let problem = report.submitted.failure(PROBLEM_HINT);
        if jobs.is_empty()
            && let Some(err) = problem
        {
            // Nothing reached the cluster: the problem is the answer (422
            // for a refusal, 503 for an unreachable cluster).
            return Err(err.into());
        }
        Ok(json!({
            "jobs": jobs,
            "deferred": report.submitted.deferred,
            "made_stale": report.made_stale.iter().map(|k| k.to_string()).collect::<Vec<_>>(),
            "problem": problem.as_ref().map(problem_json),
        }))
    })
    .await?;
    Ok(json_response(StatusCode::ACCEPTED, &value))
}

pub async fn cancel_job(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let id = job_id(&id)?;
    let _: Empty = body(bytes)?;
    let config = state.config.clone();
    let value = blocking(move || {
        read_store(&config)?
            .run(id)
            .map_err(|_| ApiError::not_found("such job"))?;
        let lock = lock(&config)?;
        let mut store = engine::open_store(&config)?;
        let report =
            engine::manage::cancel(&config, &mut store, &lock, &[format!("run:{id}")], None)?;
        Ok(json!({ "cancelled": crate::views::cancel_json(&report) }))
    })
    .await?;
    Ok(json_response(StatusCode::OK, &value))
}

/// A body that must be empty or `{}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

pub async fn retry_subject_unit(
    State(state): State<Arc<AppState>>,
    Path((pipeline, subject)): Path<(String, String)>,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult {
    retry(state, pipeline, subject, None, bytes).await
}

pub async fn retry_session_unit(
    State(state): State<Arc<AppState>>,
    Path((pipeline, subject, session)): Path<(String, String, String)>,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult {
    retry(state, pipeline, subject, Some(session), bytes).await
}

async fn retry(
    state: Arc<AppState>,
    pipeline: String,
    subject: String,
    session: Option<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let _: Empty = body(bytes)?;
    let config = state.config.clone();
    let value = blocking(move || {
        let Some(p) = config.pipelines.iter().find(|p| p.name == pipeline) else {
            return Err(ApiError::not_found("such pipeline"));
        };
        if (p.level == Level::Session) != session.is_some() {
            return Err(ApiError::not_found("such unit"));
        }
        let spec = SelectionSpec {
            pipelines: vec![pipeline],
            participants: vec![subject],
            sessions: session.into_iter().collect(),
            ..Default::default()
        };
        let selection =
            resolve_selection(&config, &spec).map_err(|_| ApiError::not_found("such unit"))?;
        let lock = lock(&config)?;
        let mut store = engine::open_store(&config)?;
        let request = engine::manage::RetryRequest {
            selection,
            all: true,
            ..Default::default()
        };
        let report = engine::manage::retry(&config, &mut store, lock, &request)?;
        let mut doc = crate::views::retry_json(&report);
        doc["problem"] = json!(
            report
                .submitted
                .failure(PROBLEM_HINT)
                .as_ref()
                .map(problem_json)
        );
        Ok(doc)
    })
    .await?;
    Ok(json_response(StatusCode::OK, &value))
}

pub async fn sync(
    State(state): State<Arc<AppState>>,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let _: Empty = body(bytes)?;
    let config = state.config.clone();
    let value = blocking(move || {
        let lock = lock(&config)?;
        let mut store = engine::open_store(&config)?;
        let report = engine::sync::sync(&config, &mut store, lock)?;
        Ok(crate::views::sync_json(&report))
    })
    .await?;
    Ok(json_response(StatusCode::OK, &value))
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("such path")
}
