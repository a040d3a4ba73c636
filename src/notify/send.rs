//! Delivery: a Slack-style webhook POST and a shell command, each bounded
//! by [`DELIVERY_TIMEOUT`]. A failure is a warning, never an error: the sync
//! that found the event has done its work whatever the messenger says.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::Message;
use crate::config::{Config, Notifications};

/// How long one delivery may take (connect, send, answer; or the command).
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends `message` through every configured channel; logs what fails.
pub fn deliver(n: &Notifications, config: &Config, message: &Message) {
    if let Some(url) = &n.webhook {
        match post_webhook(url, &message.body, DELIVERY_TIMEOUT) {
            Ok(()) => tracing::info!(event = message.event.as_str(), "webhook notified"),
            Err(e) => tracing::warn!("notification by webhook failed: {e}"),
        }
    }
    if let Some(command) = &n.command {
        match run_command(command, message, config, DELIVERY_TIMEOUT) {
            Ok(()) => tracing::info!(event = message.event.as_str(), "command notified"),
            Err(e) => tracing::warn!("notification by `notifications.command` failed: {e}"),
        }
    }
}

/// POSTs `{"text": text}` as JSON; any answer but 2xx is an error. The
/// error never holds the URL's secret parts (see [`redact_url`]).
pub fn post_webhook(url: &str, text: &str, timeout: Duration) -> Result<(), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .user_agent(concat!("nfslurm/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let body = serde_json::json!({ "text": text }).to_string();
    let response = agent
        .post(url)
        .content_type("application/json")
        .send(body.as_bytes())
        .map_err(|e| {
            format!(
                "POST to `{}`: {}",
                redact_url(url),
                scrub(&e.to_string(), url)
            )
        })?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!(
            "POST to `{}` answered {}",
            redact_url(url),
            status.as_u16()
        ))
    }
}

/// A webhook URL is a secret: whoever has it can post, and it may carry a
/// user and password (`https://user:pass@host/…`), a token in its path
/// (Slack's `/services/T…/B…/secret`) or in its query (`?token=…`). Messages,
/// logs and JSON show its scheme, host and port only: `https://host/…`.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    // The userinfo ends at the last `@` of the authority.
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let more = if end < rest.len() || host.len() < authority.len() {
        "/…"
    } else {
        ""
    };
    format!("{scheme}{host}{more}")
}

/// `text` (an HTTP library's error) with every secret part of `url` removed:
/// libraries quote the URL they were given.
fn scrub(text: &str, url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let mut secrets: Vec<&str> = vec![url];
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        secrets.push(userinfo);
        secrets.extend(userinfo.split(':'));
    }
    if tail.len() > 1 {
        secrets.push(tail);
        secrets.extend(
            tail.split(['/', '?', '&', '=', '#'])
                .filter(|p| p.len() >= 3),
        );
    }
    // Longest first, so that a part of a secret does not leave the rest.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_string();
    for secret in secrets.into_iter().filter(|s| !s.is_empty()) {
        out = out.replace(secret, "…");
    }
    out
}

/// Runs `sh -c COMMAND nfslurm SUBJECT` with the body on standard input and
/// `NFSLURM_EVENT`, `NFSLURM_CONFIG` set, in its own process group, killed
/// (group and all) when it outlives `timeout`.
pub fn run_command(
    command: &str,
    message: &Message,
    config: &Config,
    timeout: Duration,
) -> Result<(), String> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .arg("nfslurm")
        .arg(&message.subject)
        .env("NFSLURM_EVENT", message.event.as_str())
        .env("NFSLURM_CONFIG", &config.file)
        .current_dir(&config.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run `sh`: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input is fine.
        let _ = stdin.write_all(message.body.as_bytes());
        let _ = stdin.write_all(b"\n");
    }
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() >= timeout => {
                // SAFETY: kill(2) on the child's own process group, which it leads.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                return Err(format!(
                    "still running after {}s: killed",
                    timeout.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e.to_string()),
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    let stderr = stderr.trim();
    Err(match status.code() {
        Some(code) if stderr.is_empty() => format!("exit {code}"),
        Some(code) => format!("exit {code}: {stderr}"),
        None => "killed by a signal".to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NotifyEvent;

    #[test]
    fn webhook_urls_are_redacted_in_messages() {
        assert_eq!(
            redact_url("https://hooks.slack.com/services/T0/B0/secret"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(redact_url("http://127.0.0.1:9"), "http://127.0.0.1:9");
        // Issue 9: the password was printed in the WARN line.
        assert_eq!(
            redact_url("http://user:PASS@host/hook?token=Q"),
            "http://host/…"
        );
        assert_eq!(redact_url("https://u:p@w@host:8443"), "https://host:8443/…");
        assert_eq!(redact_url("https://host?token=Q"), "https://host/…");
        assert_eq!(redact_url("hooks.example.org/x"), "hooks.example.org/…");
    }

    #[test]
    fn library_errors_are_scrubbed_of_every_secret_part() {
        let url = "http://user:PASS@host:9/hooks/SECRETPATH?token=SECRETQUERY";
        let text = format!(
            "bad uri {url}; user:PASS; /hooks/SECRETPATH?token=SECRETQUERY; SECRETQUERY PASS"
        );
        let out = scrub(&text, url);
        for secret in ["PASS", "SECRETPATH", "SECRETQUERY", "user"] {
            assert!(!out.contains(secret), "{out}");
        }
    }

    fn config(dir: &std::path::Path) -> Config {
        crate::config::load_str_with_env(
            "version: 1\nsite: local\npaths:\n  dicom_root: d\n",
            &dir.join("nfslurm.yaml"),
            &|_| None,
        )
        .unwrap()
    }

    fn message() -> Message {
        Message {
            event: NotifyEvent::Failed,
            subject: "nfslurm: bids/sub-01/ses-1 failed".into(),
            body: "nfslurm: bids/sub-01/ses-1 failed\n- details".into(),
        }
    }

    #[test]
    fn the_command_gets_the_subject_as_1_and_the_body_on_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        run_command(
            r#"printf '%s\n' "$1" > subject.txt; cat > body.txt; echo "$NFSLURM_EVENT" > event.txt"#,
            &message(),
            &c,
            DELIVERY_TIMEOUT,
        )
        .unwrap();
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
        assert_eq!(read("subject.txt"), "nfslurm: bids/sub-01/ses-1 failed\n");
        assert_eq!(
            read("body.txt"),
            "nfslurm: bids/sub-01/ses-1 failed\n- details\n"
        );
        assert_eq!(read("event.txt"), "failed\n");
    }

    #[test]
    fn a_failing_or_hanging_command_is_an_error_within_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        let err = run_command(
            "echo no mail here >&2; exit 3",
            &message(),
            &c,
            DELIVERY_TIMEOUT,
        )
        .unwrap_err();
        assert_eq!(err, "exit 3: no mail here");
        let start = Instant::now();
        let err = run_command("sleep 30", &message(), &c, Duration::from_millis(300)).unwrap_err();
        assert!(err.contains("killed"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_closed_port_is_an_error_not_a_hang() {
        // Bind then drop: the port is very likely closed now.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let start = Instant::now();
        let err = post_webhook(
            &format!("http://127.0.0.1:{port}/hook"),
            "x",
            Duration::from_secs(2),
        )
        .unwrap_err();
        assert!(err.starts_with("POST to `http://127.0.0.1:"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(3));
    }
}

#[cfg(test)]
mod debug_tests {
    use crate::config::Notifications;

    #[test]
    fn the_config_debug_form_hides_the_webhook() {
        let n = Notifications {
            webhook: Some("https://u:PASS@hooks.example.org/services/SECRET?t=Q".into()),
            ..Notifications::default()
        };
        let text = format!("{n:?}");
        assert!(text.contains("https://hooks.example.org/…"), "{text}");
        for secret in ["PASS", "SECRET", "t=Q"] {
            assert!(!text.contains(secret), "{text}");
        }
    }
}
