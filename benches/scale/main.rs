//! `cargo bench --bench scale`: the figures of the Scale issue, measured on
//! synthetic studies generated under a temporary folder (deleted at the end).
//!
//! Benchmarks print figures; they assert nothing. Each figure with a target
//! is marked `met` or `not met`. `docs/performance.md` explains the
//! scenarios, the figures on the project's machine and where the time goes;
//! `scripts/bench.sh` runs this and the real-Slurm benchmark together.
//!
//! ```text
//! cargo bench --bench scale -- [--only plan,discover,sync,submit,sync-dicom,dicom] [--reps N] [--tsv FILE]
//! cargo bench --bench scale -- --setup SCENARIO DIR   # generate a study and keep it
//! ```
//!
//! Library figures whose memory matters run in a child process of this
//! benchmark (`--child …`), so that the peak RSS is theirs alone; commands are
//! the release `nfslurm` binary, timed with `wait4`.

mod dicom;
mod measure;
mod study;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime};

use measure::{median, median_run, ms};
use nfslurm::engine;
use nfslurm::plan::{self, Request};
use nfslurm::render::Renderer;
use nfslurm::state::Store;
use study::{RecordingExecutor, Study};

const NFSLURM: &str = env!("CARGO_BIN_EXE_nfslurm");

/// One line of the table.
struct Figure {
    name: String,
    value: f64,
    unit: &'static str,
    /// The value must stay at or below this (at or above when `at_least`).
    target: Option<f64>,
    at_least: bool,
}

impl Figure {
    fn status(&self) -> &'static str {
        match self.target {
            Some(min) if self.at_least && self.value >= min => "met",
            Some(max) if !self.at_least && self.value <= max => "met",
            Some(_) => "not met",
            None => "",
        }
    }
}

struct Report {
    figures: Vec<Figure>,
}

impl Report {
    /// A figure that must reach `min` (a speed-up, a rate).
    fn add_min(&mut self, name: &str, value: f64, unit: &'static str, min: f64) {
        self.push(name, value, unit, Some(min), true);
    }

    fn add(&mut self, name: &str, value: f64, unit: &'static str, target: Option<f64>) {
        self.push(name, value, unit, target, false);
    }

    fn push(
        &mut self,
        name: &str,
        value: f64,
        unit: &'static str,
        target: Option<f64>,
        at_least: bool,
    ) {
        let figure = Figure {
            name: name.to_string(),
            value,
            unit,
            target,
            at_least,
        };
        eprintln!(
            "  {:<58} {:>10.1} {:<3} {}",
            figure.name,
            figure.value,
            figure.unit,
            figure.status()
        );
        self.figures.push(figure);
    }

    fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<60} {:>12} {:>12}  status",
            "figure", "value", "target"
        );
        for f in &self.figures {
            let target = f
                .target
                .map(|t| format!("{} {t} {}", if f.at_least { ">=" } else { "<=" }, f.unit))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "{:<60} {:>8.1} {:<3} {:>12}  {}",
                f.name,
                f.value,
                f.unit,
                target,
                f.status()
            );
        }
        out
    }

    fn tsv(&self) -> String {
        let mut out = String::new();
        for f in &self.figures {
            let target = f
                .target
                .map(|t| format!("{}{t}", if f.at_least { ">=" } else { "<=" }))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "{}\t{:.1}\t{}\t{}\t{}",
                f.name,
                f.value,
                f.unit,
                target,
                f.status()
            );
        }
        out
    }
}

struct Options {
    only: Vec<String>,
    reps: usize,
    tsv: Option<PathBuf>,
}

fn parse_options(args: &[String]) -> Options {
    let mut options = Options {
        only: Vec::new(),
        reps: 5,
        tsv: None,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            // `cargo bench` passes `--bench` to harness-less benchmarks.
            "--bench" => {}
            "--only" => {
                let list = it.next().expect("--only takes a list");
                options.only = list.split(',').map(str::to_string).collect();
            }
            "--reps" => {
                options.reps = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--reps takes a number");
            }
            "--tsv" => options.tsv = Some(PathBuf::from(it.next().expect("--tsv takes a file"))),
            other => panic!("unknown argument `{other}`"),
        }
    }
    options
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        child(&args[1], Path::new(&args[2]));
        return;
    }
    if args.first().map(String::as_str) == Some("--setup") {
        // Generate a scenario's study and keep it, to profile a command by hand.
        let dir = Path::new(&args[2]);
        match args[1].as_str() {
            "plan" => setup_plan(dir),
            "discover" => setup_discover(dir),
            "sync" => setup_sync(dir),
            "submit" => setup_submit(dir),
            "dicom" => dicom::setup_dicom(dir),
            "sync-dicom" => dicom::setup_sync_dicom(dir),
            other => panic!("unknown scenario `{other}`"),
        };
        println!("{}", dir.join("nfslurm.yaml").display());
        return;
    }
    let options = parse_options(&args);
    let wanted = |name: &str| options.only.is_empty() || options.only.iter().any(|o| o == name);
    let root = tempfile::Builder::new()
        .prefix("nfslurm-bench-")
        .tempdir()
        .expect("a temporary folder");
    let mut report = Report {
        figures: Vec::new(),
    };
    eprintln!(
        "nfslurm scale benchmarks (release build, data in {})",
        root.path().display()
    );
    // Discovery last: creating and deleting its 300,000 files and folders
    // slows the inode allocation of whatever writes files after it.
    if wanted("submit") {
        bench_submit(&mut report, &root.path().join("submit"), options.reps);
    }
    if wanted("sync") {
        bench_sync(&mut report, &root.path().join("sync"), options.reps);
    }
    if wanted("plan") {
        bench_plan(&mut report, &root.path().join("plan"), options.reps.min(3));
    }
    if wanted("sync-dicom") {
        dicom::bench_sync_dicom(&mut report, &root.path().join("sync-dicom"), options.reps);
    }
    if wanted("dicom") {
        dicom::bench_dicom(&mut report, &root.path().join("dicom"), options.reps.min(3));
    }
    if wanted("discover") {
        bench_discover(
            &mut report,
            &root.path().join("discover"),
            options.reps.min(3),
        );
    }
    println!();
    print!("{}", report.table());
    if let Some(path) = options.tsv {
        std::fs::write(&path, report.tsv()).expect("write the TSV file");
    }
}

fn nfslurm(study: &Study, args: &[&str]) -> Command {
    let mut cmd = Command::new(NFSLURM);
    cmd.arg("--config")
        .arg(study.config_path())
        .args(args)
        .env("NO_COLOR", "1");
    cmd
}

/// Library work run in a child process; figures on stderr as `key=value` words.
fn child(what: &str, config_path: &Path) {
    let mut words = Vec::new();
    let mut lap = Instant::now();
    let mut mark = |words: &mut Vec<String>, name: &str| {
        words.push(format!("{name}={:.1}", ms(lap.elapsed())));
        words.push(format!("rss_mb={:.0}", measure::own_rss_mb()));
        lap = Instant::now();
    };
    let start = Instant::now();
    let config = nfslurm::config::load(config_path).expect("config");
    mark(&mut words, "config_ms");
    let mut store = Store::open(&config.paths.state_dir).expect("open");
    mark(&mut words, "open_ms");
    let snapshot = store.snapshot().expect("snapshot");
    mark(&mut words, "snapshot_ms");
    let now = engine::now();
    let plan = plan::plan(&config, &snapshot, now, &Request::default());
    mark(&mut words, "plan_ms");
    words.push(format!("units={}", plan.units.len()));
    words.push(format!("actions={}", plan.actions.len()));
    if what == "submit" {
        let renderer = Renderer::new(&config).expect("renderer");
        mark(&mut words, "renderer_ms");
        let mut executor = RecordingExecutor::new();
        let (rows, _) = engine::submit_actions(
            &config,
            &mut store,
            &mut executor,
            &plan,
            &snapshot,
            &renderer,
            now,
        )
        .expect("submit");
        mark(&mut words, "submit_actions_ms");
        words.push(format!("submitted={}", rows.len()));
        words.push(format!("calls={}", executor.calls.len()));
    }
    words.push(format!("total_ms={:.1}", ms(start.elapsed())));
    words.push(format!("peak_rss_mb={:.1}", measure::own_peak_rss_mb()));
    let (user, sys) = measure::own_cpu();
    words.push(format!("user_ms={:.0} sys_ms={:.0}", ms(user), ms(sys)));
    eprintln!("{}", words.join(" "));
}

fn word(text: &str, key: &str) -> f64 {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

fn run_child(what: &str, study: &Study, reps: usize) -> (measure::Usage, String) {
    let exe = std::env::current_exe().expect("this benchmark's path");
    median_run(reps, || {
        let mut cmd = Command::new(&exe);
        cmd.arg("--child").arg(what).arg(study.config_path());
        cmd
    })
}

/// 100,000 sessions registered, no run.
fn setup_plan(dir: &Path) -> Study {
    let study = Study::create(dir, 50_000, 2);
    study.register();
    study
}

/// 100,000 session folders and their mapping, nothing registered.
fn setup_discover(dir: &Path) -> Study {
    let study = Study::create(dir, 50_000, 2);
    study.make_folders();
    study
}

/// 10,000 session folders, registered, every unit done.
fn setup_sync(dir: &Path) -> Study {
    let study = Study::create(dir, 5_000, 2);
    study.make_folders();
    study.register();
    study.complete_all();
    study
}

/// 1,000 sessions registered, no run.
fn setup_submit(dir: &Path) -> Study {
    let study = Study::create(dir, 500, 2);
    study.register();
    study
}

/// `plan` for 100,000 sessions × 4 pipelines, all new.
fn bench_plan(report: &mut Report, dir: &Path, reps: usize) {
    eprintln!("plan: 50,000 subjects x 2 sessions x 4 pipelines, all new");
    let start = Instant::now();
    let study = setup_plan(dir);
    eprintln!(
        "    100,000 sessions registered in {:.0} ms",
        ms(start.elapsed())
    );
    let (_, text) = run_child("plan", &study, reps);
    eprintln!("    {}", text.trim());
    report.add(
        "plan 100k: library snapshot (state load)",
        word(&text, "snapshot_ms"),
        "ms",
        None,
    );
    report.add(
        "plan 100k: library plan()",
        word(&text, "plan_ms"),
        "ms",
        None,
    );
    report.add(
        "plan 100k: library open + snapshot + plan",
        word(&text, "open_ms") + word(&text, "snapshot_ms") + word(&text, "plan_ms"),
        "ms",
        Some(2000.0),
    );
    report.add(
        "plan 100k: library peak RSS",
        word(&text, "peak_rss_mb"),
        "MB",
        Some(300.0),
    );
    let (usage, _) = median_run(reps, || nfslurm(&study, &["plan", "--json"]));
    report.add(
        "plan 100k: `nfslurm plan --json > /dev/null` wall",
        ms(usage.wall),
        "ms",
        Some(2000.0),
    );
    report.add(
        "plan 100k: `nfslurm plan --json` CPU",
        ms(usage.cpu()),
        "ms",
        None,
    );
    report.add(
        "plan 100k: `nfslurm plan --json` peak RSS",
        usage.max_rss_mb,
        "MB",
        Some(300.0),
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// `discover` over 100,000 session folders (warm file-system cache).
fn bench_discover(report: &mut Report, dir: &Path, reps: usize) {
    eprintln!("discover: 100,000 session folders with 2 files each");
    let start = Instant::now();
    let study = setup_discover(dir);
    eprintln!("    folders written in {:.0} ms", ms(start.elapsed()));
    let config = study.config();
    let (time, found) = median(reps, || {
        nfslurm::study::discover(
            &config.discovery,
            &config.paths.dicom_root,
            SystemTime::now(),
        )
        .expect("discover")
    });
    eprintln!(
        "    {} sessions, {} valid",
        found.sessions.len(),
        found.valid().count()
    );
    report.add(
        "discover 100k: library study::discover",
        ms(time),
        "ms",
        None,
    );
    let state = config.paths.state_dir.clone();
    let mut first = Vec::new();
    for _ in 0..reps {
        let _ = std::fs::remove_dir_all(&state);
        first.push(measure::run(&mut nfslurm(&study, &["discover"])).0);
    }
    first.sort_by_key(|u| u.wall);
    let usage = first[first.len() / 2];
    report.add(
        "discover 100k: `nfslurm discover`, all new (registers)",
        ms(usage.wall),
        "ms",
        None,
    );
    report.add(
        "discover 100k: `nfslurm discover`, all new, peak RSS",
        usage.max_rss_mb,
        "MB",
        None,
    );
    let (usage, _) = median_run(reps, || nfslurm(&study, &["discover"]));
    report.add(
        "discover 100k: `nfslurm discover`, nothing new",
        ms(usage.wall),
        "ms",
        None,
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A `sync` with nothing to do, and `status`, on 10,000 sessions whose 35,000 units are done.
fn bench_sync(report: &mut Report, dir: &Path, reps: usize) {
    eprintln!("sync/status: 5,000 subjects x 2 sessions, 35,000 units all done");
    let start = Instant::now();
    let study = setup_sync(dir);
    eprintln!(
        "    folders written, sessions registered, 35,000 runs created and marked succeeded in {:.0} ms",
        ms(start.elapsed())
    );
    // Sanity: a no-op sync prints nothing, and no unit is left to run.
    let out = nfslurm(&study, &["sync"]).output().expect("sync");
    let printed = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !printed.trim().is_empty() {
        eprintln!(
            "    warning: the sync is not a no-op: {printed}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let config = study.config();
    let store = Store::open(&config.paths.state_dir).expect("open");
    let (time, snapshot) = median(reps, || store.snapshot().expect("snapshot"));
    report.add(
        "sync 10k: library snapshot (state load)",
        ms(time),
        "ms",
        None,
    );
    let (time, plan) = median(reps, || {
        plan::plan(&config, &snapshot, engine::now(), &Request::default())
    });
    let done = plan
        .units
        .iter()
        .filter(|u| u.state == nfslurm::model::UnitState::Done)
        .count();
    eprintln!(
        "    {} units, {done} done, {} actions",
        plan.units.len(),
        plan.actions.len()
    );
    report.add("sync 10k: library plan()", ms(time), "ms", None);
    // As a sync does: with the header summaries kept by the first sync.
    let known = store
        .known_headers(
            &nfslurm::study::dicom::verdict_key(&config.discovery),
            false,
        )
        .expect("known headers");
    let (time, _) = median(reps, || {
        nfslurm::study::discover_known(
            &config.discovery,
            &config.paths.dicom_root,
            SystemTime::now(),
            known.clone(),
        )
        .expect("discover")
    });
    report.add("sync 10k: library study::discover", ms(time), "ms", None);
    drop(store);
    let (usage, stderr) = median_run(reps, || nfslurm(&study, &["-v", "sync"]));
    if let Some(line) = stderr.lines().find(|l| l.contains("slurm calls")) {
        eprintln!("    {}", line.trim());
    }
    report.add(
        "sync 10k: `nfslurm sync`, nothing to do",
        ms(usage.wall),
        "ms",
        Some(100.0),
    );
    report.add(
        "sync 10k: `nfslurm sync` peak RSS",
        usage.max_rss_mb,
        "MB",
        None,
    );
    let (usage, _) = median_run(reps, || nfslurm(&study, &["status"]));
    report.add(
        "sync 10k: `nfslurm status`",
        ms(usage.wall),
        "ms",
        Some(100.0),
    );
    let (usage, _) = median_run(reps, || nfslurm(&study, &["status", "--json"]));
    report.add(
        "sync 10k: `nfslurm status --json`",
        ms(usage.wall),
        "ms",
        Some(100.0),
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Submitting 1,000 new sessions (3,500 units) through the library, with an
/// executor that records the sbatch calls instead of making them.
fn bench_submit(report: &mut Report, dir: &Path, reps: usize) {
    eprintln!("submit: 500 subjects x 2 sessions, 3,500 new units, recorded sbatch calls");
    let exe = std::env::current_exe().expect("this benchmark's path");
    // A fresh study for every repetition, in a new folder: deleting the
    // scripts of the last one and writing them again in the same place
    // measures ext4's handling of freed inodes, not nfslurm (see
    // docs/performance.md).
    let mut runs: Vec<String> = (1..=reps.max(1))
        .map(|rep| {
            let study = setup_submit(&dir.join(format!("rep-{rep}")));
            let mut cmd = Command::new(&exe);
            cmd.arg("--child").arg("submit").arg(study.config_path());
            measure::run(&mut cmd).1
        })
        .collect();
    runs.sort_by(|a, b| word(a, "total_ms").total_cmp(&word(b, "total_ms")));
    let best = word(&runs[0], "total_ms");
    let text = runs.swap_remove(runs.len() / 2);
    eprintln!("    {}", text.trim());
    report.add(
        "submit 1k sessions: render + write scripts + intents + job IDs",
        word(&text, "submit_actions_ms"),
        "ms",
        None,
    );
    report.add(
        "submit 1k sessions: client time outside sbatch (all)",
        word(&text, "total_ms"),
        "ms",
        Some(1000.0),
    );
    report.add(
        "submit 1k sessions: client time outside sbatch, best run",
        best,
        "ms",
        None,
    );
    // The kernel's share is mostly creating 7,000 folders and 3,500 files:
    // it depends on the file system (and its recent history) more than on nfslurm.
    report.add(
        "submit 1k sessions: of which CPU in nfslurm (user)",
        word(&text, "user_ms"),
        "ms",
        None,
    );
    report.add(
        "submit 1k sessions: of which CPU in the kernel (sys)",
        word(&text, "sys_ms"),
        "ms",
        None,
    );
    report.add(
        "submit 1k sessions: peak RSS",
        word(&text, "peak_rss_mb"),
        "MB",
        None,
    );
    let _ = std::fs::remove_dir_all(dir);
}
