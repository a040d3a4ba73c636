//! One local job, run exactly once, whoever is killed when.
//!
//! The worker does not run a job's script itself: it starts
//! `nfslurm worker job`, a small wrapper in its own process group that
//! outlives the worker. The wrapper
//!
//! 1. takes the job's lock (`attempt-N.lock`, next to its log) or exits: a
//!    lock held by someone else means the job is running;
//! 2. refuses to run when the job's status file (`attempt-N.status`) exists:
//!    the job already started once (or `nfslurm cancel` fenced it);
//! 3. writes the status file (`started`), then runs the script with `bash` in
//!    a process group of its own that inherits the lock, so the lock is held
//!    for as long as any process of the job lives;
//! 4. enforces the time limit, and at the end kills what is left of the
//!    group and writes the outcome (exit code, signal, MaxRSS, times) to the
//!    status file, atomically.
//!
//! A restarted worker therefore learns everything from two files: the lock
//! says whether the job still runs, the status file how it ended. A job is
//! never started twice, and a new attempt never starts while an old one
//! still runs.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The wrapper's exit code when another process holds the job's lock.
pub const EXIT_LOCKED: i32 = 75;
/// The wrapper's exit code when the job already started once (or was fenced).
pub const EXIT_ALREADY: i32 = 76;
/// Grace between SIGTERM and SIGKILL at the time limit.
const KILL_GRACE: Duration = Duration::from_secs(10);

/// What the status file says of a job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    /// Set by `nfslurm cancel` on a job that had not started: never run it.
    #[serde(default)]
    pub fenced: bool,
    pub started_at: Option<i64>,
    /// The job's process group (the PID of its `bash`).
    pub pgid: Option<i32>,
    pub ended_at: Option<i64>,
    pub exit_code: Option<i32>,
    /// The signal that ended the script, if one did.
    pub signal: Option<i32>,
    pub max_rss_mb: Option<i64>,
    #[serde(default)]
    pub timed_out: bool,
}

/// Where a job's lock and status file live, from its log path.
#[derive(Debug, Clone)]
pub struct JobFiles {
    pub lock: PathBuf,
    pub status: PathBuf,
}

impl JobFiles {
    pub fn of_log(log: &Path) -> JobFiles {
        JobFiles {
            lock: log.with_extension("lock"),
            status: log.with_extension("status"),
        }
    }

    pub fn read_status(&self) -> Option<JobStatus> {
        let text = fs::read(&self.status).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Writes the status file atomically (a temporary file, synced, renamed).
    pub fn write_status(&self, status: &JobStatus) -> std::io::Result<()> {
        let tmp = self.status.with_extension("status.tmp");
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(status).map_err(std::io::Error::other)?)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &self.status)?;
        if let Some(dir) = self.status.parent()
            && let Ok(d) = File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Takes the job's lock without waiting; `None` when it is held.
    pub fn try_lock(&self) -> std::io::Result<Option<File>> {
        if let Some(dir) = self.lock.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }

    /// What the files say of the job now.
    pub fn probe(&self) -> std::io::Result<Probe> {
        let Some(_lock) = self.try_lock()? else {
            return Ok(Probe::Running(
                self.read_status().and_then(|s| s.pgid).unwrap_or(0),
            ));
        };
        Ok(match self.read_status() {
            None => Probe::NotStarted,
            Some(s) if s.ended_at.is_some() => Probe::Ended(s),
            Some(s) if s.fenced => Probe::Fenced,
            Some(s) => Probe::Abandoned(s),
        })
    }

    /// Makes sure the job never starts (for `cancel`): true when it had not
    /// started and is now fenced, false when it runs or already ran.
    pub fn fence(&self) -> std::io::Result<bool> {
        let Some(_lock) = self.try_lock()? else {
            return Ok(false);
        };
        if self.read_status().is_some() {
            return Ok(false);
        }
        self.write_status(&JobStatus {
            fenced: true,
            ..Default::default()
        })?;
        Ok(true)
    }
}

/// A job's state as its files tell it.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// Its lock is held: it runs (process group, 0 if not yet known).
    Running(i32),
    /// It ended, with this outcome.
    Ended(JobStatus),
    /// It started but nothing holds its lock and no outcome was written: its
    /// wrapper was killed and its processes are gone.
    Abandoned(JobStatus),
    /// Fenced by `cancel` before it started.
    Fenced,
    /// It never started.
    NotStarted,
}

/// What the wrapper needs to run one job.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub script: PathBuf,
    pub log: PathBuf,
    pub time_limit: Duration,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// `nfslurm worker job`: runs one job exactly once; returns the wrapper's
/// exit code (the job's own outcome is in the status file).
pub fn run_job(spec: &JobSpec) -> std::io::Result<i32> {
    let files = JobFiles::of_log(&spec.log);
    let Some(lock) = files.try_lock()? else {
        eprintln!(
            "nfslurm: `{}` is held: the job runs elsewhere",
            files.lock.display()
        );
        return Ok(EXIT_LOCKED);
    };
    if files.status.exists() {
        eprintln!(
            "nfslurm: `{}` exists: the job already started once, not starting it again",
            files.status.display()
        );
        return Ok(EXIT_ALREADY);
    }
    let started_at = now();
    let mut status = JobStatus {
        started_at: Some(started_at),
        ..Default::default()
    };
    files.write_status(&status)?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)?;
    let log2 = log.try_clone()?;
    // The job's processes inherit the lock: it is held while any of them
    // lives. Close-on-exec is cleared in the child only (between fork and
    // exec), so no other process this one starts meanwhile inherits it.
    let fd = lock.as_raw_fd();
    let mut command = Command::new("bash");
    command
        .arg(&spec.script)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0);
    // SAFETY: fcntl is async-signal-safe, and `fd` stays open in the parent
    // until the child has exec'd (`spawn` returns after exec).
    unsafe {
        command.pre_exec(move || {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawned = command.spawn();
    let child = match spawned {
        Ok(child) => child,
        Err(e) => {
            // bash itself cannot start: the command cannot run.
            status.ended_at = Some(now());
            status.exit_code = Some(127);
            files.write_status(&status)?;
            eprintln!("nfslurm: cannot start bash: {e}");
            return Ok(0);
        }
    };
    let pid = child.id() as i32;
    status.pgid = Some(pid);
    files.write_status(&status)?;
    let started = Instant::now();
    let mut term_sent: Option<Instant> = None;
    let (code, signal, rss) = loop {
        if let Some(done) = reap(pid) {
            break done;
        }
        let overdue = started.elapsed() > spec.time_limit;
        match term_sent {
            None if overdue => {
                status.timed_out = true;
                kill_group(pid, libc::SIGTERM);
                term_sent = Some(Instant::now());
            }
            Some(at) if at.elapsed() > KILL_GRACE => kill_group(pid, libc::SIGKILL),
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // As Slurm does at a job's end: nothing of the job outlives it. Wait
    // (briefly) for the group to be gone, so that when the wrapper exits the
    // job's lock is free.
    kill_group(pid, libc::SIGKILL);
    let killed = Instant::now();
    // SAFETY: kill(2) with signal 0 only tests whether the group exists.
    while unsafe { libc::kill(-pid, 0) } == 0 && killed.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
    }
    status.ended_at = Some(now());
    status.exit_code = Some(code);
    status.signal = signal;
    status.max_rss_mb = Some(rss);
    files.write_status(&status)?;
    drop(lock);
    Ok(0)
}

fn kill_group(pgid: i32, signal: libc::c_int) {
    if pgid > 0 {
        // SAFETY: kill(2) of the job's own process group.
        unsafe {
            libc::kill(-pgid, signal);
        }
    }
}

/// Outcome of a finished child: (exit code, signal, max RSS in MB).
fn reap(pid: i32) -> Option<(i32, Option<i32>, i64)> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
    if r != pid {
        return None;
    }
    let (code, signal) = if libc::WIFEXITED(status) {
        (libc::WEXITSTATUS(status), None)
    } else if libc::WIFSIGNALED(status) {
        (128 + libc::WTERMSIG(status), Some(libc::WTERMSIG(status)))
    } else {
        (1, None)
    };
    // ru_maxrss is in kilobytes on Linux.
    Some((code, signal, usage.ru_maxrss / 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path, body: &str, limit: u64) -> JobSpec {
        let script = dir.join("attempt-1.sbatch");
        fs::write(&script, body).unwrap();
        JobSpec {
            script,
            log: dir.join("attempt-1.out"),
            time_limit: Duration::from_secs(limit),
        }
    }

    #[test]
    fn a_job_runs_once_and_its_outcome_is_kept_beside_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("count");
        let spec = spec(
            dir.path(),
            &format!("echo hi; echo x >> {}; exit 7\n", count.display()),
            60,
        );
        assert_eq!(run_job(&spec).unwrap(), 0);
        let files = JobFiles::of_log(&spec.log);
        let Probe::Ended(status) = files.probe().unwrap() else {
            panic!("not ended");
        };
        assert_eq!(status.exit_code, Some(7));
        assert!(status.pgid.is_some() && status.started_at.is_some());
        // A second wrapper for the same job refuses to run it.
        assert_eq!(run_job(&spec).unwrap(), EXIT_ALREADY);
        assert_eq!(fs::read_to_string(&count).unwrap(), "x\n");
        assert_eq!(fs::read_to_string(&spec.log).unwrap(), "hi\n");
    }

    #[test]
    fn a_held_lock_means_running_and_a_second_wrapper_stays_out() {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec(dir.path(), "exit 0\n", 60);
        let files = JobFiles::of_log(&spec.log);
        let held = files.try_lock().unwrap().unwrap();
        assert_eq!(files.probe().unwrap(), Probe::Running(0));
        assert_eq!(run_job(&spec).unwrap(), EXIT_LOCKED);
        drop(held);
        assert_eq!(files.probe().unwrap(), Probe::NotStarted);
    }

    #[test]
    fn a_fenced_job_never_starts() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let spec = spec(dir.path(), &format!("touch {}\n", marker.display()), 60);
        let files = JobFiles::of_log(&spec.log);
        assert!(files.fence().unwrap());
        assert_eq!(run_job(&spec).unwrap(), EXIT_ALREADY);
        assert!(!marker.exists());
        assert_eq!(files.probe().unwrap(), Probe::Fenced);
    }

    #[test]
    fn a_started_job_without_an_outcome_is_abandoned() {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec(dir.path(), "exit 0\n", 60);
        let files = JobFiles::of_log(&spec.log);
        files
            .write_status(&JobStatus {
                started_at: Some(1),
                pgid: Some(999_999),
                ..Default::default()
            })
            .unwrap();
        assert!(matches!(files.probe().unwrap(), Probe::Abandoned(_)));
        assert!(!files.fence().unwrap(), "it started: no fence");
    }

    #[test]
    fn the_time_limit_ends_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec(dir.path(), "sleep 30 & sleep 30\n", 1);
        let start = Instant::now();
        run_job(&spec).unwrap();
        assert!(start.elapsed() < Duration::from_secs(8));
        let status = JobFiles::of_log(&spec.log).read_status().unwrap();
        assert!(status.timed_out);
        assert_eq!(status.signal, Some(libc::SIGTERM));
        // Nothing of the group is left holding the lock.
        assert!(matches!(
            JobFiles::of_log(&spec.log).probe().unwrap(),
            Probe::Ended(_)
        ));
    }
}
