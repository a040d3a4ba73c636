//! `nfslurm serve` from outside: the real binary on a free port, driven over
//! HTTP and WebSockets as a browser or a script would, on the local executor
//! and on the real Slurm test cluster.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest as _};

use crate::common::{Study, chain_study, chain_study_named};

/// A running `nfslurm serve` on a port of its own; killed when dropped.
pub(crate) struct Server {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    pub token: String,
    /// What the server printed on stderr is kept here for failures.
    stderr_path: std::path::PathBuf,
}

/// An HTTP answer: status, headers (lower-case names), body.
pub(crate) struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Server {
    pub fn start(study: &Study, extra: &[&str]) -> Server {
        Server::start_at(study, "127.0.0.1:0", extra)
    }

    /// On `listen` (a port of the test's choosing).
    pub fn start_at(study: &Study, listen: &str, extra: &[&str]) -> Server {
        let stderr_path = study.path().join("serve.stderr");
        let mut child = Command::new(assert_cmd::cargo::cargo_bin("nfslurm"))
            .current_dir(study.path())
            .env_remove("NFSLURM_CONFIG")
            .env("NO_COLOR", "1")
            .args(["--json", "serve", "--listen", listen])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let started: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!(
                "serve did not start ({e}): {line}\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            )
        });
        let token_file = started["token_file"].as_str().unwrap().to_string();
        Server {
            child,
            addr: started["listen"].as_str().unwrap().to_string(),
            token: std::fs::read_to_string(token_file)
                .unwrap()
                .trim()
                .to_string(),
            stderr_path,
        }
    }

    /// One HTTP/1.1 request written by hand, so nothing (a client library's
    /// path normalisation, its default headers) stands between the test
    /// and the server.
    pub fn raw(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        // A server may answer (413) before reading a large body, and close.
        let _ = stream.write_all(body);
        let mut bytes = Vec::new();
        let _ = stream.read_to_end(&mut bytes);
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let status: u16 = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {text:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let chunked = headers
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
        let body = if chunked {
            dechunk(rest)
        } else {
            rest.to_string()
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    pub fn get(&self, path: &str) -> Answer {
        let auth = format!("Bearer {}", self.token);
        self.raw("GET", path, &[("Authorization", &auth)], b"")
    }

    pub fn post(&self, path: &str, body: &Value) -> Answer {
        let auth = format!("Bearer {}", self.token);
        self.raw(
            "POST",
            path,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body.to_string().as_bytes(),
        )
    }

    /// A WebSocket to `path` with the token.
    pub async fn ws(
        &self,
        path: &str,
    ) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>
    {
        let mut request = format!("ws://{}{path}", self.addr)
            .into_client_request()
            .unwrap();
        request.headers_mut().insert(
            "Authorization",
            format!("Bearer {}", self.token).parse().unwrap(),
        );
        let (socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        socket
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dechunk(mut text: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = text.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        text = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The next text message as JSON, within `timeout`.
pub(crate) async fn next_json<S>(socket: &mut S, timeout: Duration) -> Option<Value>
where
    S: futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let msg = tokio::time::timeout_at(deadline, socket.next())
            .await
            .ok()??
            .ok()?;
        match msg {
            Message::Text(text) => return Some(serde_json::from_str(&text).unwrap()),
            Message::Close(_) => return None,
            _ => {}
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Follows `/ws/jobs/{id}` to its end: the types of the messages, and the last message.
fn follow_job(server: &Server, id: i64, timeout: Duration) -> (Vec<String>, Value) {
    runtime().block_on(async {
        let mut socket = server.ws(&format!("/ws/jobs/{id}")).await;
        let mut types = Vec::new();
        let mut last = Value::Null;
        while let Some(msg) = next_json(&mut socket, timeout).await {
            types.push(msg["type"].as_str().unwrap().to_string());
            last = msg;
        }
        (types, last)
    })
}

/// Units of `status --json` as key → state.
fn unit_states(doc: &Value) -> std::collections::BTreeMap<String, String> {
    doc["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                format!("{}/{}/{}", u["pipeline"], u["subject"], u["session"]),
                u["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn api_contract_on_the_local_executor() {
    let study = chain_study("local", 2, 2, "");
    study.ok(&["discover"]);
    let server = Server::start(&study, &[]);

    // Health needs no token; everything else does.
    let health = server.raw("GET", "/api/v1/health", &[], b"");
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");
    assert_eq!(health.json()["version"], env!("CARGO_PKG_VERSION"));

    // The status document is `status --json`'s.
    let status = server.get("/api/v1/status");
    assert_eq!(status.status, 200);
    assert_eq!(
        unit_states(&status.json()),
        unit_states(&study.json(&["status"]))
    );
    assert_eq!(status.json()["counts"], study.json(&["status"])["counts"]);

    // No job yet.
    assert_eq!(server.get("/api/v1/jobs").json(), json!({"jobs": []}));

    // Create jobs: the `submit` use case.
    let created = server.post(
        "/api/v1/jobs",
        &json!({"pipeline": ["bids"], "participant": ["01"], "session": [], "force": false}),
    );
    assert_eq!(created.status, 202, "{}", created.body);
    let jobs = created.json()["jobs"].as_array().unwrap().clone();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    for job in &jobs {
        assert!(
            job["unit"]
                .as_str()
                .unwrap()
                .starts_with("bids/sub-01/ses-")
        );
        assert!(job["state"].is_string());
    }
    let ids: Vec<i64> = jobs.iter().map(|j| j["id"].as_i64().unwrap()).collect();

    // They are runs of `status runs --json`, and jobs of the API.
    let runs: Vec<i64> = study
        .runs()
        .iter()
        .map(|r| r["run_id"].as_i64().unwrap())
        .collect();
    for id in &ids {
        assert!(runs.contains(id), "{id} not in {runs:?}");
    }
    let (types, last) = follow_job(&server, ids[0], Duration::from_secs(60));
    assert_eq!(
        types.first().map(String::as_str),
        Some("status"),
        "{types:?}"
    );
    assert_eq!(
        types.last().map(String::as_str),
        Some("complete"),
        "{types:?}"
    );
    assert_eq!(last["run_id"], ids[0]);
    assert_eq!(last["state"], "succeeded");
    let deadline = Instant::now() + Duration::from_secs(30);
    let listed = loop {
        let listed = server
            .get("/api/v1/jobs?pipeline=bids&state=succeeded")
            .json();
        if listed["jobs"].as_array().unwrap().len() == 2 || Instant::now() > deadline {
            break listed;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let listed_ids: Vec<i64> = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["run_id"].as_i64().unwrap())
        .collect();
    let mut newest_first = ids.clone();
    newest_first.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(listed_ids, newest_first);
    // The items are those of `status runs --json`.
    let runs_doc = study.runs();
    let same = runs_doc
        .iter()
        .find(|r| r["run_id"] == ids[0])
        .unwrap()
        .clone();
    let from_api = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["run_id"] == ids[0])
        .unwrap()
        .clone();
    assert_eq!(from_api, same);
    // Paging and filters.
    let page = server.get(&format!("/api/v1/jobs?limit=1&after={}", newest_first[0]));
    assert_eq!(page.json()["jobs"][0]["run_id"], newest_first[1]);
    assert_eq!(
        server.get("/api/v1/jobs?subject=sub-02").json()["jobs"],
        json!([])
    );
    assert_eq!(
        server.get("/api/v1/jobs?session=ses-1").json()["jobs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // One job, its log, its result.
    let one = server.get(&format!("/api/v1/jobs/{}", ids[0]));
    assert_eq!(one.status, 200);
    let one = one.json();
    assert_eq!(one["run_id"], ids[0]);
    assert!(one["script_path"].as_str().unwrap().ends_with(".sbatch"));
    assert!(one["log_path"].as_str().unwrap().ends_with(".out"));
    assert!(!one["audit"].as_array().unwrap().is_empty(), "{one:#}");
    let log = server.get(&format!("/api/v1/jobs/{}/log?tail=5", ids[0]));
    assert_eq!(log.status, 200);
    assert!(
        log.header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    assert!(log.body.lines().count() <= 5, "{}", log.body);
    let result = server
        .get(&format!("/api/v1/jobs/{}/result", ids[0]))
        .json();
    assert_eq!(result["exit_code"], 0);
    assert_eq!(result["state"], "succeeded");
    assert!(result["elapsed_s"].is_i64());
    assert_eq!(result["provenance"]["run_id"], ids[0]);
    assert!(
        result["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["kind"] == "log")
    );

    // Errors, each as JSON.
    for (path, code) in [
        ("/api/v1/nothing", 404),
        ("/api/v1/jobs/999999", 404),
        ("/api/v1/jobs/abc", 404),
        ("/api/v1/jobs/999999/log", 404),
        ("/api/v1/jobs?limit=0", 422),
        ("/api/v1/jobs?state=finished", 422),
        ("/api/v1/jobs?colour=red", 422),
    ] {
        let answer = server.get(path);
        assert_eq!(answer.status, code, "{path}: {}", answer.body);
        assert!(answer.json()["error"].is_string(), "{path}");
    }
    let unknown = server.post("/api/v1/jobs", &json!({"pipelines": ["bids"]}));
    assert_eq!(unknown.status, 422, "{}", unknown.body);
    assert!(
        unknown.json()["error"]
            .as_str()
            .unwrap()
            .contains("pipelines")
    );
    let bad_pipeline = server.post("/api/v1/jobs", &json!({"pipeline": ["bidz"]}));
    assert_eq!(bad_pipeline.status, 422, "{}", bad_pipeline.body);
    assert!(
        bad_pipeline.body.contains("bids"),
        "a suggestion: {}",
        bad_pipeline.body
    );

    // Retry of a unit, cancel of a job, one sync.
    let retry = server.post("/api/v1/units/bids/sub-01/ses-1/retry", &json!({}));
    assert_eq!(retry.status, 200, "{}", retry.body);
    assert_eq!(
        retry.json()["retried"],
        json!([]),
        "a done unit is not retried"
    );
    assert_eq!(
        server
            .post("/api/v1/units/qsiprep/01/ses-1/retry", &json!({}))
            .status,
        404,
        "qsiprep is per subject"
    );
    assert_eq!(
        server
            .post("/api/v1/units/nope/01/retry", &json!({}))
            .status,
        404
    );
    let cancel = server.post(&format!("/api/v1/jobs/{}/cancel", ids[1]), &json!({}));
    assert_eq!(cancel.status, 200, "{}", cancel.body);
    assert_eq!(cancel.json()["cancelled"][0]["run_id"], ids[1]);
    assert_eq!(
        server.post("/api/v1/jobs/999999/cancel", &json!({})).status,
        404
    );
    let sync = server.post("/api/v1/sync", &json!({}));
    assert_eq!(sync.status, 200, "{}", sync.body);
    let sync = sync.json();
    assert!(
        sync["changes"].is_array() && sync["submitted"].is_u64(),
        "{sync}"
    );
}

#[test]
fn a_job_that_fails_ends_its_websocket_with_an_error() {
    let study = chain_study("local", 1, 1, "echo 'dcm2niix: no DICOM found' >&2; exit 3");
    study.ok(&["discover"]);
    let server = Server::start(&study, &[]);
    let created = server.post("/api/v1/jobs", &json!({"pipeline": ["bids"]}));
    assert_eq!(created.status, 202, "{}", created.body);
    let id = created.json()["jobs"][0]["id"].as_i64().unwrap();
    let (types, last) = follow_job(&server, id, Duration::from_secs(60));
    assert_eq!(types.first().map(String::as_str), Some("status"));
    assert_eq!(types.last().map(String::as_str), Some("error"), "{types:?}");
    assert!(
        last["message"].as_str().unwrap().contains("exit code 3"),
        "{last}"
    );
    let log = server.get(&format!("/api/v1/jobs/{id}/log?tail=20"));
    assert!(log.body.contains("no DICOM found"), "{}", log.body);
    // Its unit, once its retries are spent, is retried through the API.
    let deadline = Instant::now() + Duration::from_secs(60);
    while study.unit_states()["bids/sub-01/ses-1"] != "failed" {
        assert!(Instant::now() < deadline, "{:?}", study.unit_states());
        study.ok(&["sync"]);
        std::thread::sleep(Duration::from_millis(500));
    }
    let retry = server.post("/api/v1/units/bids/01/1/retry", &json!({}));
    assert_eq!(retry.status, 200, "{}", retry.body);
    let retry = retry.json();
    assert_eq!(
        retry["retried"],
        json!([{"pipeline": "bids", "subject": "01", "session": "1"}])
    );
    assert_eq!(retry["submitted"][0]["pipeline"], "bids", "{retry}");
}

#[test]
fn the_lock_held_past_10_s_is_409_and_job_creation_is_rate_limited() {
    let study = chain_study("local", 1, 1, "");
    study.ok(&["discover"]);
    let server = Server::start(&study, &["--jobs-per-minute", "2"]);
    // Another command holds the plan lock for longer than the server waits.
    let lock = study.path().join(".nfslurm/plan.lock");
    let mut holder = Command::new("flock")
        .arg(&lock)
        .args(["sleep", "14"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let busy = server.post("/api/v1/jobs", &json!({"pipeline": ["bids"]}));
    assert_eq!(busy.status, 409, "{}", busy.body);
    assert!(started.elapsed() >= Duration::from_secs(9), "waited 10 s");
    assert!(busy.json()["error"].as_str().unwrap().contains("lock"));
    holder.kill().unwrap();
    holder.wait().unwrap();
    // The bucket held 2: the 409 spent one, this one the other.
    assert_eq!(
        server
            .post("/api/v1/jobs", &json!({"pipeline": ["bids"]}))
            .status,
        202
    );
    let limited = server.post("/api/v1/jobs", &json!({"pipeline": ["bids"]}));
    assert_eq!(limited.status, 429, "{}", limited.body);
    let wait: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=30).contains(&wait), "{wait}");
}

#[test]
fn events_see_a_change_made_by_a_cron_sync_within_2_s() {
    let study = chain_study("local", 1, 1, "");
    let server = Server::start(&study, &[]);
    runtime().block_on(async {
        let mut events = server.ws("/ws/events").await;
        let mut sync = study.cmd();
        let out = sync.arg("sync").output().unwrap();
        assert!(out.status.success());
        let synced = Instant::now();
        let first = next_json(&mut events, Duration::from_secs(5))
            .await
            .expect("an event");
        let lag = synced.elapsed();
        assert!(lag <= Duration::from_secs(2), "{lag:?}");
        assert!(
            matches!(first["type"].as_str(), Some("unit" | "run")),
            "{first}"
        );
        assert!(first["seq"].is_u64());
        // Every change the sync made comes, each once, in order.
        let mut seqs = vec![first["seq"].as_u64().unwrap()];
        let mut saw_run = first["type"] == "run";
        while let Some(msg) = next_json(&mut events, Duration::from_secs(3)).await {
            seqs.push(msg["seq"].as_u64().unwrap());
            saw_run |= msg["type"] == "run";
        }
        assert!(saw_run, "a run event");
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    });
}

#[test]
fn security_cases_are_refused_and_reveal_nothing() {
    let study = chain_study("local", 1, 1, "");
    study.ok(&["discover"]);
    let server = Server::start(&study, &[]);
    let secret_words = [
        study.path().to_str().unwrap(),
        "bids",
        "qsiprep",
        "SCAN",
        &server.token,
    ];
    let refused = |answer: &Answer, code: u16, what: &str| {
        assert_eq!(answer.status, code, "{what}: {}", answer.body);
        for word in secret_words {
            assert!(
                !answer.body.contains(word),
                "{what} revealed {word}: {}",
                answer.body
            );
        }
    };

    // The token file is the user's alone.
    let token_file = study.path().join(".nfslurm/serve.token");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&token_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    assert!(server.token.len() >= 32, "at least 128 bits");

    let wrong = format!("Bearer {}", "0".repeat(64));
    refused(
        &server.raw("GET", "/api/v1/status", &[], b""),
        401,
        "no token",
    );
    refused(
        &server.raw("GET", "/api/v1/status", &[("Authorization", &wrong)], b""),
        401,
        "wrong token",
    );
    for (name, value) in [
        ("X-Token", server.token.clone()),
        ("Authorization", server.token.clone()),
        ("Authorization", format!("Basic {}", server.token)),
        ("Cookie", format!("token={}", server.token)),
    ] {
        refused(
            &server.raw("GET", "/api/v1/jobs", &[(name, &value)], b""),
            401,
            &format!("token in {name}: {value}"),
        );
    }
    // Paths that climb out, with and without the token.
    for path in [
        "/api/v1/jobs/../../etc/passwd",
        "/api/v1/jobs/..%2F..%2Fetc%2Fpasswd",
        "/../../etc/passwd",
        "/api/v1/jobs/1/../../../etc",
    ] {
        refused(&server.raw("GET", path, &[], b""), 401, path);
        let answer = server.get(path);
        assert!(
            answer.status == 404 || answer.status == 400,
            "{path}: {}",
            answer.status
        );
        assert!(!answer.body.contains("root:"), "{path}: {}", answer.body);
    }
    // A cross-site POST: the browser sends no cookie (SameSite=Strict), or
    // it comes from another origin.
    refused(
        &server.raw(
            "POST",
            "/api/v1/jobs",
            &[
                ("Origin", "http://evil.example"),
                ("Content-Type", "application/json"),
            ],
            b"{}",
        ),
        401,
        "cross-site POST without the token",
    );
    let cookie = format!("nfslurm_token={}", server.token);
    refused(
        &server.raw(
            "POST",
            "/api/v1/jobs",
            &[("Origin", "http://evil.example"), ("Cookie", &cookie)],
            b"{}",
        ),
        403,
        "cross-site POST with the cookie",
    );
    refused(
        &server.raw("POST", "/api/v1/sync", &[("Cookie", &cookie)], b"{}"),
        403,
        "POST with the cookie and no Origin",
    );
    // The cookie works for reads, and the browser's ?token= sets it.
    assert_eq!(
        server
            .raw("GET", "/api/v1/status", &[("Cookie", &cookie)], b"")
            .status,
        200
    );
    let login = server.raw("GET", &format!("/?token={}", server.token), &[], b"");
    assert_eq!(login.status, 303);
    assert_eq!(login.header("location"), Some("/"));
    let set = login.header("set-cookie").unwrap();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    // A body over the limit, with the token.
    let auth = format!("Bearer {}", server.token);
    let big = vec![b' '; 64 * 1024];
    let answer = server.raw(
        "POST",
        "/api/v1/jobs",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        &big,
    );
    assert_eq!(answer.status, 413, "{}", answer.body);
    // Nothing was submitted by any of this.
    assert!(study.runs().is_empty());

    // Loopback by default; anything else warns.
    let help = study.ok(&["serve", "--help"]);
    assert!(help.contains("[default: 127.0.0.1:8765]"), "{help}");
    let mut open = Command::new(assert_cmd::cargo::cargo_bin("nfslurm"))
        .current_dir(study.path())
        .args(["serve", "--listen", "0.0.0.0:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(open.stderr.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    open.kill().unwrap();
    open.wait().unwrap();
    assert!(
        first.starts_with("warning: listening on 0.0.0.0"),
        "{first}"
    );
}

#[test]
fn the_server_survives_killed_syncs_a_locked_database_and_clients_that_leave() {
    let study = chain_study("local", 3, 2, "sleep 0.3");
    study.ok(&["discover"]);
    let mut server = Server::start(&study, &[]);
    runtime().block_on(async {
        let mut stay = server.ws("/ws/events").await;
        // Clients that leave mid-stream: one closes its TCP connection
        // without a close frame, one stops reading.
        let rude = server.ws("/ws/events").await;
        let _silent = server.ws("/ws/events").await;
        drop(rude);

        // Syncs killed at random moments, and the worker with them.
        for delay_ms in [5u64, 40, 120, 15, 80] {
            let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("nfslurm"))
                .current_dir(study.path())
                .env("NO_COLOR", "1")
                .arg("sync")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(delay_ms));
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("pkill")
            .args(["-KILL", "-f", &format!("worker.*{}", study.path().display())])
            .status();
        // The database locked for 5 s by another writer.
        let db = study.path().join(".nfslurm/state.db");
        let mut locker = Command::new("python3")
            .args([
                "-c",
                "import sqlite3,sys,time; c=sqlite3.connect(sys.argv[1], isolation_level=None); \
                 c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(5); c.execute('COMMIT')",
                db.to_str().unwrap(),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(locker.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked");
        // The server answers from what it has while the database is locked.
        let started = Instant::now();
        let status = server.get("/api/v1/status");
        assert_eq!(status.status, 200);
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        assert!(locker.wait().unwrap().success());

        // Then syncs to the end: every unit done.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            study.ok(&["sync"]);
            let states = study.unit_states();
            if states.values().all(|s| s == "done") {
                break;
            }
            assert!(Instant::now() < deadline, "{states:?}");
            std::thread::sleep(Duration::from_millis(500));
        }
        // The client that stayed got every change, in order, none twice,
        // and ends with what the study says.
        let mut seqs = Vec::new();
        let mut unit_last = std::collections::BTreeMap::new();
        while let Some(msg) = next_json(&mut stay, Duration::from_secs(3)).await {
            seqs.push(msg["seq"].as_u64().unwrap());
            if msg["type"] == "unit" {
                unit_last.insert(msg["unit"].as_str().unwrap().to_string(), msg["state"].clone());
            }
        }
        assert!(!seqs.is_empty());
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
        assert_eq!(seqs[0], 1, "the first change of the study is the first sent");
        let states = study.unit_states();
        for (unit, state) in &states {
            assert_eq!(
                unit_last.get(unit).and_then(Value::as_str),
                Some(state.as_str()),
                "{unit}: {unit_last:?}"
            );
        }
        stay.close(None).await.ok();
    });
    assert!(server.is_running(), "{}", server.stderr());
    assert_eq!(server.raw("GET", "/api/v1/health", &[], b"").status, 200);
}

#[test]
#[ignore = "needs the Slurm test cluster: scripts/test.sh runs it"]
fn api_contract_on_the_slurm_cluster() {
    let Some(_cluster) = crate::slurm::cluster() else {
        return;
    };
    let study = chain_study_named("slurm", "srv", 1, 2, "sleep 2");
    study.ok(&["discover"]);
    let server = Server::start(&study, &[]);
    let created = server.post("/api/v1/jobs", &json!({"pipeline": ["bids"]}));
    assert_eq!(created.status, 202, "{}", created.body);
    let jobs = created.json()["jobs"].as_array().unwrap().clone();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    // Slurm's job IDs.
    for job in &jobs {
        let job_id = job["job_id"].as_str().unwrap();
        assert!(
            job_id.chars().all(|c| c.is_ascii_digit() || c == '_'),
            "{job_id}"
        );
    }
    let (kept, cancelled) = (
        jobs[0]["id"].as_i64().unwrap(),
        jobs[1]["id"].as_i64().unwrap(),
    );
    // A job cancelled through the API is cancelled in Slurm.
    let cancel = server.post(&format!("/api/v1/jobs/{cancelled}/cancel"), &json!({}));
    assert_eq!(cancel.status, 200, "{}", cancel.body);
    assert_eq!(cancel.json()["cancelled"][0]["run_id"], cancelled);
    // The server reconciles nothing by itself: cron's sync does. Sync in
    // the background as cron would while the WebSockets follow the jobs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let syncer = {
        let stop = stop.clone();
        let dir = study.path().to_path_buf();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = Command::new(assert_cmd::cargo::cargo_bin("nfslurm"))
                    .current_dir(&dir)
                    .env("NO_COLOR", "1")
                    .arg("sync")
                    .output();
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };
    let (types, last) = follow_job(&server, kept, Duration::from_secs(120));
    assert_eq!(
        types.last().map(String::as_str),
        Some("complete"),
        "{types:?} {last}"
    );
    assert!(
        types.iter().filter(|t| *t == "status").count() >= 2,
        "{types:?}"
    );
    let (types, last) = follow_job(&server, cancelled, Duration::from_secs(60));
    assert_eq!(types.last().map(String::as_str), Some("error"), "{types:?}");
    assert_eq!(last["state"], "cancelled", "{last}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    syncer.join().unwrap();
    let result = server.get(&format!("/api/v1/jobs/{kept}/result")).json();
    assert_eq!(result["slurm_state"], "COMPLETED", "{result:#}");
    assert_eq!(result["exit_code"], 0);
    assert!(result["max_rss_mb"].is_number(), "{result:#}");
    assert_eq!(result["ended"], true);
    let status = server.get("/api/v1/status").json();
    let states = unit_states(&status);
    assert_eq!(
        states.get("\"bids\"/\"srv01\"/\"1\"").map(String::as_str),
        Some("done"),
        "{states:?}"
    );
}
