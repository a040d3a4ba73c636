//! The two WebSockets: `/ws/events` (every change in the study) and
//! `/ws/jobs/{id}` (one job's status, then how it ended).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::AppState;
use super::api::ApiError;

/// A client that does not take a message within this long is dropped (the
/// others are not held up by it).
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Each socket's read and write buffers: the messages are small (a client
/// sends nothing but pings), and 200 clients with tungstenite's 128 KiB
/// defaults would hold tens of MB.
const BUFFER: usize = 4096;

async fn send(socket: &mut WebSocket, text: &str) -> bool {
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(text.into()))).await,
        Ok(Ok(()))
    )
}

pub async fn events(State(state): State<Arc<AppState>>, ws: WebSocketUpgrade) -> Response {
    ws.max_message_size(4096)
        .read_buffer_size(BUFFER)
        .write_buffer_size(BUFFER)
        .on_upgrade(move |socket| events_loop(state, socket))
}

async fn events_loop(state: Arc<AppState>, mut socket: WebSocket) {
    let mut rx = state.events.subscribe();
    loop {
        tokio::select! {
            event = rx.recv() => match event {
                Ok(event) => {
                    if !send(&mut socket, &event.text).await {
                        return;
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    // Said, never hidden: the client refetches the documents.
                    let text = json!({"type": "lagged", "missed": missed}).to_string();
                    if !send(&mut socket, &text).await {
                        return;
                    }
                }
                Err(RecvError::Closed) => return,
            },
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

pub async fn job(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    ws: WebSocketUpgrade,
) -> Response {
    let id = match super::api::job_id(&id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    if state.job(id).await.is_none() {
        return ApiError::new(axum::http::StatusCode::NOT_FOUND, "no such job", None)
            .into_response();
    }
    ws.max_message_size(4096)
        .read_buffer_size(BUFFER)
        .write_buffer_size(BUFFER)
        .on_upgrade(move |socket| job_loop(state, id, socket))
}

/// `{"type": kind, …job}`.
fn message(kind: &str, job: &Value) -> String {
    let mut msg = job.clone();
    msg["type"] = json!(kind);
    msg.to_string()
}

/// The last message of a job that ended: `complete` for a success,
/// `error` with what went wrong otherwise.
fn ending(job: &Value) -> Option<String> {
    let state = job["state"].as_str()?;
    if matches!(state, "submitting" | "pending" | "running") {
        return None;
    }
    if state == "succeeded" {
        return Some(message("complete", job));
    }
    let mut msg = job.clone();
    msg["type"] = json!("error");
    let reason = job["reason"].as_str().unwrap_or("");
    msg["message"] = json!(if reason.is_empty() {
        state.to_string()
    } else {
        format!("{state}: {reason}")
    });
    Some(msg.to_string())
}

/// Sends the job's `status`, then, when it has ended, its last message and
/// the close. `false` when the socket is done with (the job ended, or the
/// client left).
async fn send_job(socket: &mut WebSocket, job: &Value) -> bool {
    if !send(socket, &message("status", job)).await {
        return false;
    }
    match ending(job) {
        Some(end) => {
            send(socket, &end).await;
            let _ = socket.send(Message::Close(None)).await;
            false
        }
        None => true,
    }
}

async fn job_loop(state: Arc<AppState>, id: i64, mut socket: WebSocket) {
    // Subscribe before reading the job: no change falls in between.
    let mut rx = state.events.subscribe();
    let Some(job) = state.job(id).await else {
        return;
    };
    if !send_job(&mut socket, &job).await {
        return;
    }
    loop {
        tokio::select! {
            event = rx.recv() => match event {
                Ok(event) if event.run_id == Some(id) => {
                    let Some(job) = &event.run else { continue };
                    if !send_job(&mut socket, job).await {
                        return;
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => {
                    // Missed changes: the job as it is now.
                    let Some(job) = state.cache().job(id) else { return };
                    if !send_job(&mut socket, &job).await {
                        return;
                    }
                }
                Err(RecvError::Closed) => return,
            },
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}
