//! The study's token: made once, kept 0600 beside the state, compared in
//! constant time; and the layer that asks every request for it.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq as _;

use super::{AppState, api::ApiError};
use crate::error::Failure;

/// The name of the cookie a browser keeps the token in.
pub const COOKIE: &str = "nfslurm_token";

/// Where the token lives.
pub fn token_path(state_dir: &Path) -> PathBuf {
    state_dir.join("serve.token")
}

/// Reads the study's token, or makes one (256 random bits, hex) on first
/// start, written with mode 0600 before any byte of it. A token file that
/// others can read is refused: the secret may have leaked.
pub fn load_or_create(state_dir: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(state_dir)?;
    let path = token_path(state_dir);
    match std::fs::metadata(&path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(Failure::user(
                    format!(
                        "`{}` can be read by other users (mode {mode:o})",
                        path.display()
                    ),
                    Some(
                        "delete it (a new token is made at the next start), or `chmod 600` it if no one else can have read it",
                    ),
                ));
            }
            let text = std::fs::read_to_string(&path)?;
            let token = text.trim().to_string();
            if token.len() < 32 || !token.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(Failure::user(
                    format!("`{}` does not hold a token nfslurm made", path.display()),
                    Some("delete it: a new token is made at the next start"),
                ));
            }
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let bytes: [u8; 32] = rand::random();
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            file.write_all(token.as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            Ok(token)
        }
        Err(e) => Err(e.into()),
    }
}

fn same(given: &str, token: &str) -> bool {
    given.len() == token.len() && bool::from(given.as_bytes().ct_eq(token.as_bytes()))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(str::trim)
}

fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// `token=` of a query string, and the query without it.
fn query_token(query: &str) -> (Option<String>, String) {
    let mut token = None;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.strip_prefix("token=") {
            Some(value) => token = Some(value.to_string()),
            None => rest.push(pair),
        }
    }
    (token, rest.join("&"))
}

/// How a request proved it holds the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proof {
    Bearer,
    Cookie,
    Query,
}

/// Every request but the health check needs the token: a bearer header, the
/// cookie, or `?token=` (a page asked so is redirected to itself with the
/// cookie set, so the token leaves the address bar and the history).
/// A request that changes something and is not from the server's own page
/// (its `Origin` differs) is refused even with the cookie.
pub async fn require(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if request.uri().path() == "/api/v1/health" {
        return next.run(request).await;
    }
    let headers = request.headers();
    let token = state.token.as_str();
    let (query_given, rest) = query_token(request.uri().query().unwrap_or(""));
    let proof = if bearer(headers).is_some_and(|t| same(t, token)) {
        Some(Proof::Bearer)
    } else if cookie(headers).is_some_and(|t| same(t, token)) {
        Some(Proof::Cookie)
    } else if query_given.as_deref().is_some_and(|t| same(t, token)) {
        Some(Proof::Query)
    } else {
        None
    };
    let Some(proof) = proof else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong token",
            Some("send `Authorization: Bearer <token>`; the token is in `serve.token` in the study's state folder"),
        )
        .into_response();
    };
    if request.method() != Method::GET && proof != Proof::Bearer && !same_origin(headers) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "a request from another site",
            Some("changes are accepted from the dashboard itself or with `Authorization: Bearer <token>`"),
        )
        .into_response();
    }
    let is_ws = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if proof == Proof::Query && request.method() == Method::GET && !is_ws {
        // Into the cookie, out of the address bar.
        let path = request.uri().path();
        let location = if rest.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{rest}")
        };
        return Response::builder()
            .status(StatusCode::SEE_OTHER)
            .header(header::LOCATION, location)
            .header(
                header::SET_COOKIE,
                format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"),
            )
            .header(header::CACHE_CONTROL, "no-store")
            .body(Body::empty())
            .unwrap_or_default();
    }
    next.run(request).await
}

/// Whether a browser said the request comes from this server's own page:
/// `Origin` (browsers send it on every POST) names the `Host` asked.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|o| o == host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_file_is_made_0600_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let token = load_or_create(dir.path()).unwrap();
        assert_eq!(token.len(), 64);
        let mode = std::fs::metadata(token_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create(dir.path()).unwrap(), token);
    }

    #[test]
    fn a_token_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        let path = token_path(dir.path());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(dir.path()).unwrap_err();
        assert!(err.to_string().contains("other users"), "{err}");
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same("abc", "abc"));
        assert!(!same("abd", "abc"));
        assert!(!same("ab", "abc"));
        assert!(!same("", "abc"));
    }

    #[test]
    fn the_query_token_is_taken_out() {
        assert_eq!(
            query_token("a=1&token=xyz&b=2"),
            (Some("xyz".into()), "a=1&b=2".into())
        );
        assert_eq!(query_token(""), (None, String::new()));
    }

    #[test]
    fn only_the_own_origin_is_same_origin() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:8765".parse().unwrap());
        assert!(!same_origin(&h));
        h.insert(header::ORIGIN, "http://127.0.0.1:8765".parse().unwrap());
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(!same_origin(&h));
    }
}
