//! `cargo bench --bench serve_load`: `nfslurm serve` under load, on loopback.
//!
//! 200 WebSocket clients on `/ws/events` and 100 requests/s of
//! `GET /api/v1/status` for 60 s on a 10,000-session study, while
//! `nfslurm sync` runs every 10 s as a separate process (as cron would),
//! each time after the study gained a new subject with two sessions (folders
//! and mapping rows), so that discovery registers them and the local
//! executor runs their units. The targets: every client receives every
//! change, p99 of the status latency <= 50 ms, server RSS <= 100 MB, and no
//! sync waits more than 1 s on the server (its time under load minus its
//! time alone, measured first on the same study with the same change).
//!
//! The status load is open-loop: request i is due at start + i / rate and
//! its latency is counted from that time, so a slow answer does not lower
//! the offered rate. Keep-alive connections are reused; a new one is opened
//! when all are busy.
//!
//! A benchmark: it prints figures, marks them `met` or `not met`, and
//! asserts nothing; it exits non-zero only when it could not run.
//!
//! ```text
//! cargo bench --bench scale -- --setup sync DIR    # the 10,000-session study
//! cargo bench --bench serve_load -- --study DIR [--nfslurm BIN] [--duration 60]
//!     [--clients 200] [--rate 100] [--sync-every 10] [--alone-rounds 3] [--tsv FILE]
//! ```
//!
//! The study's config is switched to `executor: local` (no Slurm tool is
//! called; the new units run their one-line commands on this machine).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest as _};

struct Options {
    nfslurm: PathBuf,
    study: PathBuf,
    duration: Duration,
    clients: usize,
    rate: u32,
    sync_every: Duration,
    alone_rounds: usize,
    tsv: Option<PathBuf>,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        nfslurm: PathBuf::from(env!("CARGO_BIN_EXE_nfslurm")),
        study: PathBuf::new(),
        duration: Duration::from_secs(60),
        clients: 200,
        rate: 100,
        sync_every: Duration::from_secs(10),
        alone_rounds: 3,
        tsv: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    let mut study = None;
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{arg} takes a value"))
        };
        let number = |v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{arg} takes a number, not `{v}`"))
        };
        match arg.as_str() {
            // `cargo bench` passes `--bench` to harness-less benchmarks.
            "--bench" => {}
            "--nfslurm" => options.nfslurm = PathBuf::from(value()?),
            "--study" => study = Some(PathBuf::from(value()?)),
            "--duration" => options.duration = Duration::from_secs(number(value()?)?),
            "--clients" => options.clients = number(value()?)? as usize,
            "--rate" => options.rate = number(value()?)?.max(1) as u32,
            "--sync-every" => options.sync_every = Duration::from_secs(number(value()?)?.max(1)),
            "--alone-rounds" => options.alone_rounds = number(value()?)?.max(1) as usize,
            "--tsv" => options.tsv = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    options.study = study.ok_or(
        "--study DIR is required (cargo bench --bench scale -- --setup sync DIR makes one)",
    )?;
    Ok(options)
}

/// One line of the table.
struct Figure {
    name: String,
    value: f64,
    unit: &'static str,
    /// `(bound, at_least)`: the value must stay at or below the bound (at or
    /// above when `at_least`).
    target: Option<(f64, bool)>,
}

impl Figure {
    fn status(&self) -> &'static str {
        match self.target {
            Some((t, true)) if self.value >= t => "met",
            Some((t, false)) if self.value <= t => "met",
            Some(_) => "not met",
            None => "",
        }
    }

    fn target_text(&self) -> String {
        self.target
            .map(|(t, at_least)| format!("{}{t}", if at_least { ">=" } else { "<=" }))
            .unwrap_or_default()
    }
}

#[derive(Default)]
struct Report {
    figures: Vec<Figure>,
}

impl Report {
    fn add(&mut self, name: &str, value: f64, unit: &'static str, target: Option<(f64, bool)>) {
        self.figures.push(Figure {
            name: format!("serve load: {name}"),
            value,
            unit,
            target,
        });
    }

    fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<62} {:>10} {:<3} {:>10}  status",
            "figure", "value", "", "target"
        );
        for f in &self.figures {
            let _ = writeln!(
                out,
                "{:<62} {:>10.1} {:<3} {:>10}  {}",
                f.name,
                f.value,
                f.unit,
                f.target_text(),
                f.status()
            );
        }
        out
    }

    /// The rows as `scripts/bench.sh` collects them.
    fn tsv(&self) -> String {
        let mut out = String::new();
        for f in &self.figures {
            let _ = writeln!(
                out,
                "{}\t{:.1}\t{}\t{}\t{}",
                f.name,
                f.value,
                f.unit,
                f.target_text(),
                f.status()
            );
        }
        out
    }
}

fn main() {
    let options = match parse_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("serve_load: {e}");
            std::process::exit(2);
        }
    };
    match run(&options) {
        Ok(report) => {
            println!("{}", report.table());
            if let Some(path) = &options.tsv
                && let Err(e) = std::fs::write(path, report.tsv())
            {
                eprintln!("serve_load: cannot write {}: {e}", path.display());
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("serve_load: the benchmark could not run: {e}");
            std::process::exit(1);
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The value at quantile `q` of sorted values (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    quantile(&v, 0.5)
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::max)
}

/// The study, switched to the local executor, and the change made before
/// each sync.
struct Study {
    dir: PathBuf,
    config: PathBuf,
    /// The next new subject's number.
    next_subject: usize,
}

impl Study {
    fn open(dir: &Path) -> Result<Study, String> {
        let config = dir.join("nfslurm.yaml");
        let text = std::fs::read_to_string(&config)
            .map_err(|e| format!("cannot read {}: {e}", config.display()))?;
        if !text.contains("\nexecutor: ") {
            return Err(format!("{} names no executor", config.display()));
        }
        let local: Vec<String> = text
            .lines()
            .map(|l| {
                if l.starts_with("executor: ") {
                    "executor: local".to_string()
                } else {
                    l.to_string()
                }
            })
            .collect();
        std::fs::write(&config, local.join("\n") + "\n")
            .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
        Ok(Study {
            dir: dir.to_path_buf(),
            config,
            next_subject: 900_001,
        })
    }

    /// A new subject with two sessions: their folders (two files each) and
    /// mapping rows, named as `benches/scale/study.rs` names them.
    fn add_subject(&mut self) -> Result<(), String> {
        let sub = self.next_subject;
        self.next_subject += 1;
        let mut rows = String::new();
        for ses in 1..=2 {
            let scan = format!("S{sub:06}{ses}");
            let series = self.dir.join("dicom").join(&scan).join("DWI");
            std::fs::create_dir_all(&series).map_err(|e| e.to_string())?;
            for f in 0..2 {
                std::fs::write(series.join(format!("IM{f:04}.dcm")), b"DICM\n")
                    .map_err(|e| e.to_string())?;
            }
            let _ = writeln!(rows, "{scan},{sub:06},{ses}");
        }
        use std::io::Write as _;
        let mut mapping = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("mapping.csv"))
            .map_err(|e| format!("cannot open mapping.csv: {e}"))?;
        mapping
            .write_all(rows.as_bytes())
            .map_err(|e| format!("cannot append to mapping.csv: {e}"))
    }

    /// One `nfslurm sync`, as cron runs it: its wall time, or why it failed.
    fn sync(&self, nfslurm: &Path) -> Result<Duration, String> {
        let start = Instant::now();
        let out = Command::new(nfslurm)
            .arg("--config")
            .arg(&self.config)
            .arg("sync")
            .env_remove("NFSLURM_CONFIG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", nfslurm.display()))?;
        let took = start.elapsed();
        if out.status.success() {
            Ok(took)
        } else {
            Err(format!(
                "sync failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Units not in a final state, from `status --json`.
    fn unsettled(&self, nfslurm: &Path) -> usize {
        let Ok(out) = Command::new(nfslurm)
            .arg("--config")
            .arg(&self.config)
            .args(["status", "--json"])
            .env_remove("NFSLURM_CONFIG")
            .output()
        else {
            return usize::MAX;
        };
        let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            return usize::MAX;
        };
        doc["units"]
            .as_array()
            .map(|units| {
                units
                    .iter()
                    .filter(|u| {
                        matches!(
                            u["state"].as_str(),
                            Some("waiting" | "queued" | "running" | "retrying" | "stale")
                        )
                    })
                    .count()
            })
            .unwrap_or(usize::MAX)
    }

    /// Waits (up to `limit`) until the local worker has run every new unit.
    fn wait_settled(&self, nfslurm: &Path, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.unsettled(nfslurm) == 0 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        false
    }
}

/// The running server.
struct Server {
    child: Child,
    addr: String,
    token: String,
}

impl Server {
    fn start(nfslurm: &Path, study: &Study) -> Result<Server, String> {
        use std::io::BufRead as _;
        let stderr =
            std::fs::File::create(study.dir.join("serve.stderr")).map_err(|e| e.to_string())?;
        let mut child = Command::new(nfslurm)
            .arg("--config")
            .arg(&study.config)
            .args(["--json", "serve", "--listen", "127.0.0.1:0"])
            .env_remove("NFSLURM_CONFIG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot start serve: {e}"))?;
        let mut line = String::new();
        let _ = std::io::BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line);
        let started: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let err =
                    std::fs::read_to_string(study.dir.join("serve.stderr")).unwrap_or_default();
                return Err(format!("serve did not start ({e}): {line}{err}"));
            }
        };
        let addr = started["listen"].as_str().unwrap_or_default().to_string();
        let token_file = started["token_file"].as_str().unwrap_or_default();
        let token = std::fs::read_to_string(token_file)
            .map_err(|e| format!("cannot read the token file {token_file}: {e}"))?
            .trim()
            .to_string();
        Ok(Server { child, addr, token })
    }

    /// (peak, current) resident set size in MB, from /proc.
    fn rss_mb(&self) -> Option<(f64, f64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kb = |key: &str| -> Option<f64> {
            status
                .lines()
                .find(|l| l.starts_with(key))?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        };
        Some((kb("VmHWM:")? / 1024.0, kb("VmRSS:")? / 1024.0))
    }

    /// Samples the resident set size every 100 ms until `stop`: its
    /// highest value in MB, the memory under load (VmHWM also counts the
    /// first look at the study, before the server answers).
    fn sample_rss(&self, stop: Arc<std::sync::atomic::AtomicBool>) -> std::thread::JoinHandle<f64> {
        let path = format!("/proc/{}/status", self.child.id());
        std::thread::spawn(move || {
            let mut highest: f64 = 0.0;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(status) = std::fs::read_to_string(&path)
                    && let Some(kb) = status
                        .lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|v| v.parse::<f64>().ok())
                {
                    highest = highest.max(kb / 1024.0);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            highest
        })
    }

    /// SIGTERM, then SIGKILL if it has not ended within 5 s.
    fn stop(mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: a signal to our own child, which has not been waited for.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one WebSocket client saw.
#[derive(Default)]
struct ClientLog {
    seqs: Vec<u64>,
    lagged: u64,
    missed_by_lag: u64,
    other_errors: u64,
}

async fn ws_client(
    addr: String,
    token: String,
    connected: Arc<AtomicUsize>,
    last_event_ms: Arc<AtomicU64>,
    epoch: Instant,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<ClientLog, String> {
    let mut request = format!("ws://{addr}/ws/events")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    request.headers_mut().insert(
        "Authorization",
        format!("Bearer {token}")
            .parse()
            .map_err(|e| format!("{e}"))?,
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    connected.fetch_add(1, Ordering::SeqCst);
    let mut log = ClientLog::default();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            message = socket.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    last_event_ms.fetch_max(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
                        log.other_errors += 1;
                        continue;
                    };
                    match v["type"].as_str() {
                        Some("lagged") => {
                            log.lagged += 1;
                            log.missed_by_lag += v["missed"].as_u64().unwrap_or(0);
                        }
                        _ => match v["seq"].as_u64() {
                            Some(seq) => log.seqs.push(seq),
                            None => log.other_errors += 1,
                        },
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    log.other_errors += 1;
                    break;
                }
            },
        }
    }
    let _ = socket.close(None).await;
    Ok(log)
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    stream: BufReader<TcpStream>,
    body: Vec<u8>,
}

/// `GET path` on a keep-alive connection: the status code and whether the
/// connection can be reused.
async fn get(conn: &mut Conn, request: &[u8]) -> std::io::Result<(u16, bool)> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    conn.stream.get_mut().write_all(request).await?;
    let mut line = String::new();
    if conn.stream.read_line(&mut line).await? == 0 {
        return Err(bad("connection closed"));
    }
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let mut length = None;
    let mut chunked = false;
    let mut keep = true;
    loop {
        line.clear();
        if conn.stream.read_line(&mut line).await? == 0 {
            return Err(bad("connection closed in the headers"));
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            match name.as_str() {
                "content-length" => length = value.parse::<usize>().ok(),
                "transfer-encoding" => chunked = value.contains("chunked"),
                "connection" => keep = !value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
    }
    if chunked {
        loop {
            line.clear();
            conn.stream.read_line(&mut line).await?;
            let size = usize::from_str_radix(line.trim(), 16).map_err(|_| bad("chunk size"))?;
            conn.body.resize(size + 2, 0);
            conn.stream.read_exact(&mut conn.body).await?;
            if size == 0 {
                break;
            }
        }
    } else if let Some(n) = length {
        conn.body.resize(n, 0);
        conn.stream.read_exact(&mut conn.body).await?;
    } else {
        conn.body.clear();
        conn.stream.read_to_end(&mut conn.body).await?;
        keep = false;
    }
    Ok((code, keep))
}

/// One status request's outcome.
struct Sample {
    latency: Duration,
    ok: bool,
}

/// Sends `rate` requests per second for `duration`, each at its scheduled
/// time whatever the earlier ones are doing.
async fn status_load(addr: String, token: String, rate: u32, duration: Duration) -> Vec<Sample> {
    let request: Arc<[u8]> = format!(
        "GET /api/v1/status HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .into_bytes()
    .into();
    let pool: Arc<Mutex<Vec<Conn>>> = Arc::new(Mutex::new(Vec::new()));
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let total = (duration.as_secs_f64() * rate as f64).round() as u64;
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = start + period * i as u32;
        tokio::time::sleep_until(due).await;
        let (pool, request, addr) = (pool.clone(), request.clone(), addr.clone());
        tasks.push(tokio::spawn(async move {
            let attempt = async {
                let conn = pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
                let mut conn = match conn {
                    Some(c) => c,
                    None => {
                        let stream = TcpStream::connect(&addr).await?;
                        stream.set_nodelay(true)?;
                        Conn {
                            stream: BufReader::with_capacity(64 * 1024, stream),
                            body: Vec::new(),
                        }
                    }
                };
                let (code, keep) = get(&mut conn, &request).await?;
                if keep {
                    pool.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
                }
                std::io::Result::Ok(code)
            };
            let outcome = tokio::time::timeout(Duration::from_secs(10), attempt).await;
            Sample {
                latency: due.elapsed(),
                ok: matches!(outcome, Ok(Ok(200))),
            }
        }));
    }
    let mut samples = Vec::with_capacity(tasks.len());
    for task in tasks {
        if let Ok(sample) = task.await {
            samples.push(sample);
        }
    }
    samples
}

/// The syncs run during the load: one every `every` from `every / 2` on,
/// each after a change to the study; their wall times or failures.
fn cron_syncs(
    nfslurm: PathBuf,
    mut study: Study,
    every: Duration,
    duration: Duration,
) -> (Study, Vec<Result<Duration, String>>) {
    let start = Instant::now();
    let mut results = Vec::new();
    let mut due = every / 2;
    while due < duration {
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        let result = study.add_subject().and_then(|()| study.sync(&nfslurm));
        match &result {
            Ok(d) => eprintln!("    sync under load: {:.0} ms", ms(*d)),
            Err(e) => eprintln!("    sync under load: {e}"),
        }
        results.push(result);
        due += every;
    }
    (study, results)
}

fn run(options: &Options) -> Result<Report, String> {
    let nfslurm = &options.nfslurm;
    let mut study = Study::open(&options.study)?;
    let mut report = Report::default();

    // A first sync, not counted: the study as generated, caches warm.
    study.sync(nfslurm)?;
    eprintln!(
        "sync alone: {} rounds, one every {} s, each after adding a subject with 2 sessions",
        options.alone_rounds,
        options.sync_every.as_secs()
    );
    let mut alone = Vec::new();
    for round in 0..options.alone_rounds {
        let start = Instant::now();
        study.add_subject()?;
        let took = study.sync(nfslurm)?;
        eprintln!("    sync alone: {:.0} ms", ms(took));
        alone.push(ms(took));
        if round + 1 < options.alone_rounds
            && let Some(rest) = options.sync_every.checked_sub(start.elapsed())
        {
            std::thread::sleep(rest);
        }
    }
    // The server's seq starts at its first look: nothing may change between
    // it and the clients' connections.
    if !study.wait_settled(nfslurm, Duration::from_secs(60)) {
        return Err("the units of the new sessions did not finish within 60 s".into());
    }

    eprintln!("starting nfslurm serve");
    let server = Server::start(nfslurm, &study)?;
    let (addr, token) = (server.addr.clone(), server.token.clone());
    let rss_before_load = server.rss_mb();
    let stop_sampling = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = server.sample_rss(stop_sampling.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let outcome = runtime.block_on(async {
        let epoch = Instant::now();
        let connected = Arc::new(AtomicUsize::new(0));
        let last_event_ms = Arc::new(AtomicU64::new(0));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let clients: Vec<_> = (0..options.clients)
            .map(|_| {
                tokio::spawn(ws_client(
                    addr.clone(),
                    token.clone(),
                    connected.clone(),
                    last_event_ms.clone(),
                    epoch,
                    stop_rx.clone(),
                ))
            })
            .collect();
        let wait_start = Instant::now();
        while connected.load(Ordering::SeqCst) < options.clients
            && wait_start.elapsed() < Duration::from_secs(30)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!(
            "{} of {} WebSocket clients connected in {:.0} ms; load for {} s",
            connected.load(Ordering::SeqCst),
            options.clients,
            ms(wait_start.elapsed()),
            options.duration.as_secs()
        );

        let syncs = {
            let (nfslurm, every, duration) =
                (nfslurm.clone(), options.sync_every, options.duration);
            let study = std::mem::replace(
                &mut study,
                Study {
                    dir: PathBuf::new(),
                    config: PathBuf::new(),
                    next_subject: 0,
                },
            );
            tokio::task::spawn_blocking(move || cron_syncs(nfslurm, study, every, duration))
        };
        let samples =
            status_load(addr.clone(), token.clone(), options.rate, options.duration).await;
        let (back, syncs) = syncs.await.map_err(|e| e.to_string())?;
        study = back;

        // The last events: until 3 s pass without one (at most 60 s).
        let quiet_start = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let last = Duration::from_millis(last_event_ms.load(Ordering::Relaxed));
            let quiet = epoch.elapsed().saturating_sub(last);
            if (quiet >= Duration::from_secs(3) && study.unsettled(nfslurm) == 0)
                || quiet_start.elapsed() > Duration::from_secs(60)
            {
                break;
            }
        }
        let _ = stop_tx.send(true);
        let mut logs = Vec::new();
        let mut failed_clients = 0;
        for client in clients {
            match client.await {
                Ok(Ok(log)) => logs.push(log),
                _ => failed_clients += 1,
            }
        }
        Ok::<_, String>((samples, syncs, logs, failed_clients))
    });
    let rss = server.rss_mb();
    stop_sampling.store(true, Ordering::Relaxed);
    let sampled = sampler.join().unwrap_or(f64::NAN);
    server.stop();
    drop(runtime);
    let (samples, syncs, logs, failed_clients) = outcome?;

    // The status requests.
    let sent = samples.len();
    let answered = samples.iter().filter(|s| s.ok).count();
    let mut latencies: Vec<f64> = samples
        .iter()
        .filter(|s| s.ok)
        .map(|s| ms(s.latency))
        .collect();
    latencies.sort_by(f64::total_cmp);
    report.add("GET /api/v1/status sent", sent as f64, "", None);
    report.add(
        "GET /api/v1/status answered 200",
        answered as f64,
        "",
        Some((sent as f64, true)),
    );
    report.add(
        "GET /api/v1/status errors and timeouts (10 s)",
        (sent - answered) as f64,
        "",
        Some((0.0, false)),
    );
    report.add(
        "GET /api/v1/status offered rate",
        sent as f64 / options.duration.as_secs_f64(),
        "/s",
        None,
    );
    for (name, q) in [("p50", 0.5), ("p95", 0.95)] {
        report.add(
            &format!("GET /api/v1/status latency {name}"),
            quantile(&latencies, q),
            "ms",
            None,
        );
    }
    report.add(
        "GET /api/v1/status latency p99",
        quantile(&latencies, 0.99),
        "ms",
        Some((50.0, false)),
    );
    report.add(
        "GET /api/v1/status latency max",
        latencies.last().copied().unwrap_or(f64::NAN),
        "ms",
        None,
    );

    // The WebSocket clients.
    let n = logs
        .iter()
        .flat_map(|l| l.seqs.iter().copied())
        .max()
        .unwrap_or(0);
    let complete = logs
        .iter()
        .filter(|l| n > 0 && l.seqs.len() as u64 == n && l.seqs.iter().copied().eq(1..=n))
        .count();
    let lagged: u64 = logs.iter().map(|l| l.lagged).sum();
    let missed: u64 = logs.iter().map(|l| l.missed_by_lag).sum();
    let errors: u64 = logs.iter().map(|l| l.other_errors).sum();
    report.add(
        "WebSocket clients connected",
        logs.len() as f64,
        "",
        Some((options.clients as f64, true)),
    );
    if failed_clients > 0 {
        eprintln!("{failed_clients} clients could not connect");
    }
    report.add(
        "changes sent (highest seq seen)",
        n as f64,
        "",
        Some((1.0, true)),
    );
    report.add(
        "clients that got seq 1..N, each once, in order",
        complete as f64,
        "",
        Some((options.clients as f64, true)),
    );
    report.add("lagged messages", lagged as f64, "", Some((0.0, false)));
    report.add(
        "changes missed per lagged messages",
        missed as f64,
        "",
        None,
    );
    report.add(
        "WebSocket errors (bad message, closed)",
        errors as f64,
        "",
        Some((0.0, false)),
    );

    // The server's memory.
    let (peak, now) = rss.ok_or("cannot read the server's /proc status")?;
    report.add(
        "server RSS peak (VmHWM, with the first look)",
        peak,
        "MB",
        Some((100.0, false)),
    );
    if let Some((_, at_start)) = rss_before_load {
        report.add("server RSS after the first look", at_start, "MB", None);
    }
    report.add(
        "server RSS, highest sample under load (100 ms)",
        sampled,
        "MB",
        Some((100.0, false)),
    );
    report.add("server RSS at the end", now, "MB", None);

    // The syncs.
    let under: Vec<f64> = syncs
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|d| ms(*d))
        .collect();
    let failed = syncs.iter().filter(|r| r.is_err()).count();
    report.add("syncs under load", syncs.len() as f64, "", None);
    report.add(
        "syncs under load failed",
        failed as f64,
        "",
        Some((0.0, false)),
    );
    report.add("sync alone, median", median(&alone), "ms", None);
    report.add("sync alone, max", max(&alone), "ms", None);
    report.add("sync under load, median", median(&under), "ms", None);
    report.add("sync under load, max", max(&under), "ms", None);
    report.add(
        "sync: max extra wait under load (max - median alone)",
        (max(&under) - median(&alone)).max(0.0),
        "ms",
        Some((1000.0, false)),
    );
    Ok(report)
}
