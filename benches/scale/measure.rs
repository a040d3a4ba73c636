//! Timing in-process code and whole commands (wall, CPU, peak RSS).
//!
//! A command runs under GNU `time` (`/usr/bin/time -o FILE -f '%U %S %M'`)
//! for its CPU time and peak RSS: `wait4` on a child of this benchmark would
//! report the benchmark's own RSS, which the child inherits at `fork` and
//! Linux keeps in `ru_maxrss` across `exec`. `time` is small, so the command
//! it forks starts small. Wall time is measured here. Library calls whose
//! peak RSS matters run in a child process of this benchmark, which reports
//! its own `VmHWM` (reset by `exec`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What one process cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub wall: Duration,
    pub user: Duration,
    pub sys: Duration,
    pub max_rss_mb: f64,
}

impl Usage {
    pub fn cpu(&self) -> Duration {
        self.user + self.sys
    }
}

/// Runs `cmd` with stdout to /dev/null; panics if it fails (a benchmark of a
/// failing command measures nothing). Returns its usage and its stderr.
pub fn run(cmd: &mut Command) -> (Usage, String) {
    let stderr = tempfile::NamedTempFile::new().expect("a temporary file");
    let times = tempfile::NamedTempFile::new().expect("a temporary file");
    let mut timed = Command::new("/usr/bin/time");
    timed
        .arg("-o")
        .arg(times.path())
        .args(["-f", "%U %S %M", "--"])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(v) => timed.env(key, v),
            None => timed.env_remove(key),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        timed.current_dir(dir);
    }
    timed
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr.reopen().expect("reopen the temporary file"));
    let start = Instant::now();
    let status = timed.status().expect("run /usr/bin/time");
    let wall = start.elapsed();
    let text = std::fs::read_to_string(stderr.path()).unwrap_or_default();
    assert!(status.success(), "{cmd:?} failed ({status}): {text}");
    let figures = std::fs::read_to_string(times.path()).unwrap_or_default();
    // The last line: GNU time writes "Command exited…" lines before it on failure.
    let words: Vec<f64> = figures
        .lines()
        .last()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let [user, sys, rss_kb] = words[..] else {
        panic!("unreadable /usr/bin/time output: {figures}");
    };
    (
        Usage {
            wall,
            user: Duration::from_secs_f64(user),
            sys: Duration::from_secs_f64(sys),
            max_rss_mb: rss_kb / 1024.0,
        },
        text,
    )
}

/// This process's peak RSS in MB (`VmHWM`), for library figures run in a child.
pub fn own_peak_rss_mb() -> f64 {
    proc_status_mb("VmHWM:")
}

/// This process's user and system CPU time so far.
pub fn own_cpu() -> (Duration, Duration) {
    // SAFETY: an all-zero rusage is a valid value; getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer cannot fail.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let time = |tv: libc::timeval| {
        Duration::from_secs(tv.tv_sec as u64) + Duration::from_micros(tv.tv_usec as u64)
    };
    (time(usage.ru_utime), time(usage.ru_stime))
}

/// This process's RSS now, in MB.
pub fn own_rss_mb() -> f64 {
    proc_status_mb("VmRSS:")
}

fn proc_status_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Runs `make()` `n` times and keeps the run with the median wall time.
pub fn median_run(n: usize, mut make: impl FnMut() -> Command) -> (Usage, String) {
    let mut runs: Vec<(Usage, String)> = (0..n.max(1)).map(|_| run(&mut make())).collect();
    runs.sort_by_key(|(u, _)| u.wall);
    runs.swap_remove(runs.len() / 2)
}

/// Times `f` `n` times; returns the median duration and the last result.
pub fn median<T>(n: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..n.max(1) {
        let start = Instant::now();
        let out = f();
        times.push(start.elapsed());
        last = Some(out);
    }
    times.sort();
    (times[times.len() / 2], last.expect("at least one run"))
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
