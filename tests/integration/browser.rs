//! The dashboard in a real browser: headless Chromium driven through
//! chromedriver (Debian's `chromium` and `chromium-driver`, which
//! `scripts/test-deps.sh` installs). Without them these tests fail, saying
//! what to install: a dashboard nobody looked at is not tested.
//!
//! [`Browser`] is shared: start it, `goto` a page, wait for elements, and
//! save screenshots under `target/screenshots/` (their paths are printed).

use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::common::{Study, chain_config};

pub(crate) const CHROMIUM: &str = "/usr/bin/chromium";
pub(crate) const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long an element may take to appear.
pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// A runtime for a test's browser session (the tests themselves are plain
/// `#[test]`s that run `nfslurm` first).
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Headless Chromium under its own chromedriver, with a fresh profile.
/// chromedriver and the browser end when this is dropped, even when the
/// test panics.
pub(crate) struct Browser {
    pub(crate) client: Client,
    _driver: Driver,
    _profile: tempfile::TempDir,
    /// One browser at a time: two Chromiums starting at once on a 2-core
    /// machine under a busy test run can miss chromedriver's start deadline.
    _one: tokio::sync::MutexGuard<'static, ()>,
}

static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// chromedriver, leading a process group of its own that the browsers it
/// starts join: killed together when dropped, so that a failed test
/// leaves no browser behind.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let group = -(self.0.id() as i32);
        // SAFETY: kill(2) with a process group ID: no memory is involved.
        unsafe {
            libc::kill(group, libc::SIGKILL);
        }
        let _ = self.0.wait();
    }
}

impl Browser {
    /// Starts chromedriver on a free port and opens a session; panics, saying
    /// what to install, when Chromium or chromedriver is missing.
    pub(crate) async fn start() -> Browser {
        let one = ONE_BROWSER.lock().await;
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(path).exists(),
                "the browser tests need `{path}`: install Debian's `chromium` and \
                 `chromium-driver` (`apt-get install -y chromium chromium-driver`, or run \
                 `scripts/test-deps.sh`); `{package}` is missing"
            );
        }
        let profile = tempfile::Builder::new()
            .prefix("nfslurm-chromium-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let log = profile.path().join("chromedriver.log");
        let mut driver = Driver(
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start `{CHROMEDRIVER}`: {e}")),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = driver.0.try_wait() {
                panic!(
                    "`{CHROMEDRIVER}` exited ({status}) before listening on port {port}:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                panic!("`{CHROMEDRIVER}` did not listen on port {port} within 30s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            // /dev/shm is small in containers: Chromium crashes there without it.
            "--disable-dev-shm-usage".into(),
            "--window-size=1280,900".into(),
            format!(
                "--user-data-dir={}",
                profile.path().join("profile").display()
            ),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({ "args": args, "binary": CHROMIUM }),
        );
        // Plain HTTP to the driver on loopback: no TLS (and no choice of
        // TLS provider to make) in the way.
        // Starting the browser is the harness, not what is tested: on a
        // loaded machine it is given a second and third chance, each said.
        let mut attempt = 0;
        let client = loop {
            attempt += 1;
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(e) if attempt < 3 => {
                    eprintln!("chromedriver could not start `{CHROMIUM}` (attempt {attempt}): {e}");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                Err(e) => panic!(
                    "chromedriver could not start `{CHROMIUM}`: {e}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ),
            }
        };
        Browser {
            client,
            _driver: driver,
            _profile: profile,
            _one: one,
        }
    }

    pub(crate) async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("cannot open `{url}`: {e}"));
    }

    /// The first element matching `css`, once there is one (at most [`WAIT`]).
    pub(crate) async fn wait_for(&self, css: &str) -> Element {
        match self
            .client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
        {
            Ok(element) => element,
            Err(e) => {
                let shot = self.screenshot("timeout").await;
                panic!(
                    "no `{css}` on the page after {}s: {e} (the page: {})",
                    WAIT.as_secs(),
                    shot.display()
                )
            }
        }
    }

    /// Every element matching `css` now.
    pub(crate) async fn all(&self, css: &str) -> Vec<Element> {
        self.client
            .find_all(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("`{css}`: {e}"))
    }

    /// The visible text of the first element matching `css` (waited for).
    pub(crate) async fn text(&self, css: &str) -> String {
        self.wait_for(css).await.text().await.unwrap()
    }

    /// Runs `script` in the page and returns its value.
    pub(crate) async fn eval(&self, script: &str) -> serde_json::Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("`{script}`: {e}"))
    }

    /// Resizes the browser window.
    pub(crate) async fn resize(&self, width: u32, height: u32) {
        self.client
            .set_window_size(width, height)
            .await
            .unwrap_or_else(|e| panic!("cannot resize the window to {width}x{height}: {e}"));
    }

    /// Saves what the window shows as `target/screenshots/<name>.png` and
    /// prints its absolute path.
    pub(crate) async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.unwrap();
        let path = screenshot_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        println!("screenshot: {}", path.display());
        path
    }

    /// Ends the session (chromedriver quits the browser), then chromedriver.
    pub(crate) async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

/// `target/screenshots`, created if needed.
pub(crate) fn screenshot_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is `<target>/tmp`, wherever the target folder is.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target folder")
        .to_path_buf();
    let dir = target.join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir.canonicalize().unwrap()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// What the failing unit writes last, with markup that must stay text.
const LAST_LOG_LINE: &str = "dcm2niix: <b>no usable series</b> & nothing converted";

/// Two subjects of two sessions through the four-pipeline chain, run on
/// this machine; `bids` fails for sub-02/ses-2 (one attempt, a known last
/// log line), so its downstream units are blocked.
fn failing_study() -> Study {
    let study = Study::new();
    let extra = format!(
        r#"{{% if subject.label == "02" and session.label == "2" %}}echo '{LAST_LOG_LINE}'; exit 1{{% endif %}}"#
    );
    study.write(
        "nfslurm.yaml",
        &chain_config("local", &extra).replace("max_attempts: 2", "max_attempts: 1"),
    );
    let mut mapping = String::from("ScanID,SubjectCode,SessionID\n");
    for s in 1..=2 {
        for e in 1..=2 {
            let scan = format!("SCAN{s:02}{e}");
            study.session_folder(&scan, 4);
            mapping.push_str(&format!("{scan},{s:02},{e}\n"));
        }
    }
    study.write("mapping.csv", &mapping);
    study.ok(&["discover"]);
    let out = study.run(&["submit", "--all", "--wait"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "a failed unit makes `submit --wait` exit 3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    study
}

#[test]
fn the_report_shows_the_matrix_failures_with_their_logs_and_a_units_history() {
    let study = failing_study();
    let report = study.path().join("out").join("report.html");
    std::fs::create_dir_all(report.parent().unwrap()).unwrap();
    let printed = study.ok(&["report", "-o", "out/report.html"]);
    assert_eq!(
        printed.trim(),
        "out/report.html",
        "the path, relative to here"
    );
    let url = format!("file://{}", report.display());

    runtime().block_on(async {
        let browser = Browser::start().await;
        browser.goto(&url).await;
        browser.wait_for("#matrix button.cell").await;
        assert_eq!(browser.text("#indicator").await, "static report");

        // The matrix: BIDS labels in rows, the pipelines in config order.
        let heads: Vec<String> = {
            let mut v = Vec::new();
            for th in browser.all("#matrix thead th").await {
                v.push(th.text().await.unwrap());
            }
            v
        };
        assert_eq!(heads, ["session", "bids", "qsiprep", "qsirecon", "qsiparc"]);
        let matrix = browser.text("#matrix").await;
        for label in ["sub-01", "sub-02", "ses-1", "ses-2"] {
            assert!(matrix.contains(label), "{label} in {matrix}");
        }
        let failed = browser
            .wait_for(r#"#matrix button.cell[data-unit="bids/sub-02/ses-2"]"#)
            .await;
        assert_eq!(failed.attr("data-state").await.unwrap().as_deref(), Some("failed"));
        assert_eq!(failed.text().await.unwrap(), "failed");
        let failed_cells = browser.all(r#"#matrix [data-state="failed"]"#).await;
        assert_eq!(failed_cells.len(), 1, "only bids/sub-02/ses-2 failed");
        // A subject-level unit repeats on each of its subject's sessions.
        let qsiprep = browser
            .all(r#"#matrix button.cell[data-unit="qsiprep/sub-01"]"#)
            .await;
        assert_eq!(qsiprep.len(), 2);
        let done = browser.all(r#"#matrix button.cell[data-state="done"]"#).await;
        assert!(done.len() >= 8, "sub-01's units and sub-02/ses-1's bids are done");

        // The failure, with the end of its log, as text.
        let failure = browser.text("#failures .failure").await;
        assert!(failure.contains("bids/sub-02/ses-2"), "{failure}");
        let log = browser.text("#failures .failure pre.log").await;
        assert_eq!(log.lines().last(), Some(LAST_LOG_LINE), "{log}");
        assert!(browser.all("#failures b").await.is_empty(), "log text parsed as HTML");

        browser.screenshot("report").await;

        // A cell's history: its runs, attempt, state and job ID.
        failed.click().await.unwrap();
        let panel = browser.text("#unit-panel:not([hidden])").await;
        assert!(panel.contains("bids/sub-02/ses-2"), "{panel}");
        let row = browser.text("#unit-panel tbody tr").await;
        assert!(row.starts_with("1 failed "), "attempt 1, failed: {row}");
        assert!(panel.contains(LAST_LOG_LINE), "{panel}");
        browser.screenshot("report-history").await;

        let done = browser
            .wait_for(r#"#matrix button.cell[data-unit="qsiprep/sub-02"]"#)
            .await;
        done.click().await.unwrap();
        let panel = browser.text("#unit-panel:not([hidden])").await;
        assert!(panel.contains("qsiprep/sub-02"), "{panel}");
        // Submitted in the same chain, its run ended when its upstream failed.
        let row = browser.text("#unit-panel tbody tr").await;
        assert!(panel.contains("blocked by bids/sub-02/ses-2"), "{panel}");
        assert!(row.starts_with("1 upstream_failed "), "{row}");

        // The runs table filters by state and subject.
        browser
            .wait_for("#filter-state")
            .await
            .select_by_value("failed")
            .await
            .unwrap();
        let rows = browser.all("#runs tbody tr").await;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].attr("data-state").await.unwrap().as_deref(), Some("failed"));
        browser
            .wait_for("#filter-state")
            .await
            .select_by_value("")
            .await
            .unwrap();
        browser
            .wait_for("#filter-subject")
            .await
            .send_keys("sub-01")
            .await
            .unwrap();
        let rows = browser.all("#runs tbody tr").await;
        assert_eq!(rows.len(), 7, "sub-01: 2 bids, 1 qsiprep, 2 qsirecon, 2 qsiparc");
        for row in &rows {
            assert!(row.text().await.unwrap().contains("/sub-01"));
        }

        // The timeline has a lane per pipeline that ran; memory a row per pipeline.
        assert_eq!(browser.all("#timeline .lane").await.len(), 4);
        assert_eq!(browser.all("#memory .mem-row").await.len(), 4);

        // The whole page, then a phone: nothing wider than the screen but
        // the matrix and the tables, which scroll.
        let height = browser
            .eval("return document.documentElement.scrollHeight")
            .await
            .as_u64()
            .unwrap();
        browser.resize(1280, height.min(5000) as u32 + 140).await;
        browser.screenshot("report-full").await;
        browser.resize(390, 844).await;
        browser.goto(&url).await;
        browser.wait_for("#matrix button.cell").await;
        let overflow = browser
            .eval("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
            .await;
        assert_eq!(overflow, json!(0), "the page is wider than a phone");
        browser.screenshot("report-phone").await;
        browser.close().await;
    });
}

/// A study whose bids jobs take a moment, discovered and not yet run.
fn slow_study() -> Study {
    let study = crate::common::chain_study("local", 2, 2, "sleep 1");
    study.ok(&["discover"]);
    study
}

#[test]
fn the_live_dashboard_changes_a_cell_when_a_run_ends_without_a_reload() {
    let study = slow_study();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let server = crate::serve::Server::start_at(&study, &listen, &[]);
    runtime().block_on(async {
        let browser = Browser::start().await;
        // Opened as `nfslurm serve` prints it: with the token, which the
        // server moves into a cookie and out of the address bar.
        let home = format!("http://{listen}/");
        browser
            .goto(&format!("{home}?token={}", server.token))
            .await;
        browser.wait_for(r#"#indicator[data-mode="live"]"#).await;
        let url = browser.client.current_url().await.unwrap();
        assert_eq!(url.as_str(), home);
        // The matrix with the study's labels and pipelines.
        let cell = r#"#matrix button.cell[data-unit="bids/sub-02/ses-2"]"#;
        browser.wait_for(cell).await;
        let matrix = browser.text("#matrix").await;
        for label in [
            "sub-01", "sub-02", "ses-1", "ses-2", "bids", "qsiprep", "qsiparc",
        ] {
            assert!(matrix.contains(label), "{label} in {matrix}");
        }
        browser
            .wait_for(r#"#matrix button.cell[data-unit="bids/sub-01/ses-1"][data-state="waiting"]"#)
            .await;
        // A mark the page would lose on a reload.
        browser
            .eval("window.__not_reloaded = true; return true;")
            .await;
        browser.screenshot("live-before").await;

        // A cron-style submission in another process; the runs end.
        let out = study.run(&["submit", "--pipeline", "bids"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        browser
            .wait_for(r#"#matrix button.cell[data-unit="bids/sub-01/ses-1"][data-state="done"]"#)
            .await;
        browser
            .wait_for(r#"#matrix button.cell[data-unit="bids/sub-02/ses-2"][data-state="done"]"#)
            .await;
        assert_eq!(
            browser.eval("return window.__not_reloaded === true;").await,
            json!(true),
            "the page changed without a reload"
        );
        let shot = browser.screenshot("live").await;
        assert!(shot.exists());
        browser.close().await;
    });
    drop(server);
}

#[test]
fn the_live_dashboard_says_when_the_server_is_gone_and_reconnects() {
    let study = slow_study();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let server = crate::serve::Server::start_at(&study, &listen, &[]);
    runtime().block_on(async {
        let browser = Browser::start().await;
        browser
            .goto(&format!("http://{listen}/?token={}", server.token))
            .await;
        browser.wait_for(r#"#indicator[data-mode="live"]"#).await;
        drop(server);
        browser
            .wait_for(r#"#indicator[data-mode="reconnecting"]"#)
            .await;
        // The same study served again on the same port: the cookie still
        // holds, the page connects by itself.
        let _again = crate::serve::Server::start_at(&study, &listen, &[]);
        browser.wait_for(r#"#indicator[data-mode="live"]"#).await;
        browser.close().await;
    });
}
