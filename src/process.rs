//! Running an external tool with a deadline.
//!
//! A `sync` started by cron must end: a `sacct` stuck on a slow slurmdbd, or
//! an `sbatch` that never answers, would otherwise hold the study's lock
//! forever and every later sync would quietly step aside. Every tool nfslurm
//! calls runs here, in a process group of its own that is killed whole
//! (SIGKILL) when the deadline passes.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What a tool printed, and how it ended.
#[derive(Debug)]
pub struct ToolOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// It could not be started (not on PATH, not executable).
    #[error("cannot run `{program}`: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// It did not end before the deadline, and was killed.
    #[error("`{program}` did not answer within {}: killed", crate::output::duration(timeout.as_secs() as i64))]
    Timeout { program: String, timeout: Duration },
}

/// Runs `program args…` with no input, collecting its output, and kills its
/// whole process group if it is still running after `timeout`.
pub fn run(program: &str, args: &[String], timeout: Duration) -> Result<ToolOutput, ToolError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|source| ToolError::Spawn {
            program: program.to_string(),
            source,
        })?;
    // Read in threads: a full pipe must not stall the child past the deadline.
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut bytes);
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() >= timeout => {
                // SAFETY: kill(2) of the group the child leads (process_group(0)).
                unsafe {
                    libc::kill(-(child.id() as i32), libc::SIGKILL);
                }
                let _ = child.wait();
                // The readers end when the last writer of the pipes is gone;
                // the group is killed, so they do.
                let _ = out.join();
                let _ = err.join();
                return Err(ToolError::Timeout {
                    program: program.to_string(),
                    timeout,
                });
            }
            Ok(None) => {
                std::thread::sleep(pause);
                // Quick tools answer in a few ms: look often at first.
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(source) => {
                return Err(ToolError::Spawn {
                    program: program.to_string(),
                    source,
                });
            }
        }
    };
    Ok(ToolOutput {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn output_and_status_are_collected() {
        let out = run(
            "sh",
            &args(&["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
        assert_eq!(out.status.code(), Some(3));
    }

    #[test]
    fn a_hung_tool_and_its_children_are_killed_at_the_deadline() {
        let start = Instant::now();
        // The grandchild keeps the pipes open: it must die with the group.
        let err = run(
            "sh",
            &args(&["-c", "sleep 30 & sleep 30"]),
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(matches!(err, ToolError::Timeout { .. }), "{err}");
        assert!(err.to_string().contains("did not answer within"), "{err}");
    }

    #[test]
    fn a_missing_tool_is_a_spawn_error() {
        let err = run("nfslurm-no-such-tool", &[], Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, ToolError::Spawn { .. }), "{err}");
    }
}
