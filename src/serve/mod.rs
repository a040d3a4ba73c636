//! `nfslurm serve`: the jobs API, live updates and the dashboard, over one
//! study. A reader of the state like `status`; when asked to act it calls
//! the engine's use cases, under the plan lock, as the CLI does. Async on
//! tokio with axum; the blocking work (SQLite, Slurm's tools) runs on
//! tokio's blocking threads and in the watcher's own thread.

pub mod api;
mod auth;
mod watch;
mod ws;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tokio::sync::broadcast;

use crate::config::Config;

pub use auth::token_path;
pub use watch::Cache;

/// The largest request body accepted (413 beyond).
pub const BODY_LIMIT: usize = 16 * 1024;

/// The server's shared state.
pub struct AppState {
    pub config: Arc<Config>,
    token: String,
    cache: RwLock<Arc<Cache>>,
    events: broadcast::Sender<Arc<watch::Event>>,
    rate: Mutex<TokenBucket>,
}

impl AppState {
    /// The documents of the last look at the study.
    pub fn cache(&self) -> Arc<Cache> {
        self.cache.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// One job as it is now: from the cache, else (created since the
    /// watcher's last look) from the state.
    pub async fn job(&self, id: i64) -> Option<Arc<serde_json::Value>> {
        if let Some(job) = self.cache().job(id) {
            return Some(job);
        }
        let dir = self.config.paths.state_dir.clone();
        tokio::task::spawn_blocking(move || {
            let store = crate::state::Store::open_read_only(&dir).ok()?;
            let run = store.run(id).ok()?;
            Some(Arc::new(crate::views::run_json(&run)))
        })
        .await
        .ok()
        .flatten()
    }

    /// `Some(seconds to wait)` when job creation is over its rate.
    fn rate_limited(&self) -> Option<u64> {
        self.rate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(Instant::now())
    }
}

/// Job creations allowed: `per_minute` at once, refilled at that rate.
struct TokenBucket {
    per_minute: u32,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(per_minute: u32) -> TokenBucket {
        TokenBucket {
            per_minute: per_minute.max(1),
            tokens: per_minute.max(1) as f64,
            at: Instant::now(),
        }
    }

    /// Takes one; `Some(seconds)` until one is free when none is.
    fn take(&mut self, now: Instant) -> Option<u64> {
        let rate = self.per_minute as f64 / 60.0;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(self.per_minute as f64);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            None
        } else {
            Some(((1.0 - self.tokens) / rate).ceil().max(1.0) as u64)
        }
    }
}

/// How `serve` is asked to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub listen: SocketAddr,
    /// Job creations (`POST /api/v1/jobs`) allowed per minute.
    pub jobs_per_minute: u32,
}

/// The router, every path behind the token but the health check.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/api/v1/health", get(api::health))
        .route("/api/v1/status", get(api::status))
        .route("/api/v1/jobs", get(api::list_jobs).post(api::create_jobs))
        .route("/api/v1/jobs/{id}", get(api::get_job))
        .route("/api/v1/jobs/{id}/log", get(api::job_log))
        .route("/api/v1/jobs/{id}/result", get(api::job_result))
        .route("/api/v1/jobs/{id}/cancel", post(api::cancel_job))
        .route(
            "/api/v1/units/{pipeline}/{subject}/retry",
            post(api::retry_subject_unit),
        )
        .route(
            "/api/v1/units/{pipeline}/{subject}/{session}/retry",
            post(api::retry_session_unit),
        )
        .route("/api/v1/sync", post(api::sync))
        .route("/ws/jobs/{id}", get(ws::job))
        .route("/ws/events", get(ws::events))
        .fallback(api::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require,
        ))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// The dashboard: the page of `nfslurm report`, reading the API live.
async fn dashboard() -> axum::response::Response {
    use axum::response::IntoResponse as _;
    (
        [
            (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (axum::http::header::CACHE_CONTROL, "no-store"),
        ],
        crate::dashboard::page(None),
    )
        .into_response()
}

/// What the server says at start, for the user and a script.
pub struct Started {
    pub url: String,
    pub token_file: std::path::PathBuf,
    pub addr: SocketAddr,
}

/// Serves the study until SIGINT or SIGTERM. `started` is called once the
/// port is bound (it prints the URL).
pub fn run(
    config: Config,
    options: &Options,
    started: impl FnOnce(&Started),
) -> anyhow::Result<()> {
    watch::map_large_blocks_apart();
    let token = auth::load_or_create(&config.paths.state_dir)?;
    let (cache, start) = watch::first_look(&config)?;
    let (events, _) = broadcast::channel(16 * 1024);
    let state = Arc::new(AppState {
        config: Arc::new(config),
        token,
        cache: RwLock::new(Arc::new(cache)),
        events,
        rate: Mutex::new(TokenBucket::new(options.jobs_per_minute)),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|e| {
                crate::error::Failure::user(
                    format!("cannot listen on {}: {e}", options.listen),
                    Some("choose another port with `--listen 127.0.0.1:PORT`"),
                )
            })?;
        let addr = listener.local_addr()?;
        let watcher_state = state.clone();
        std::thread::Builder::new()
            .name("nfslurm-watch".into())
            .spawn(move || watch::watch(watcher_state, start))?;
        started(&Started {
            url: format!("http://{addr}/?token={}", state.token),
            token_file: auth::token_path(&state.config.paths.state_dir),
            addr,
        });
        let app = router(state.clone());
        tokio::select! {
            served = axum::serve(listener, app) => served?,
            _ = shutdown() => {}
        }
        anyhow::Ok(())
    })?;
    // WebSocket tasks and blocking reads are not waited for.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}

async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_bucket_allows_its_rate_then_says_how_long_to_wait() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(3);
        bucket.at = t0;
        assert_eq!(bucket.take(t0), None);
        assert_eq!(bucket.take(t0), None);
        assert_eq!(bucket.take(t0), None);
        assert_eq!(bucket.take(t0), Some(20));
        // One comes back after 20 s.
        assert_eq!(bucket.take(t0 + Duration::from_secs(20)), None);
        assert!(bucket.take(t0 + Duration::from_secs(20)).is_some());
    }
}
