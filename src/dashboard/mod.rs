//! The dashboard: one self-contained HTML page (its CSS and JavaScript
//! inlined, nothing fetched from elsewhere) that shows a study at a glance.
//!
//! The same page serves two uses. Served by `nfslurm serve`, it carries no
//! data and reads the server's API, then follows its event socket. Written
//! by `nfslurm report`, it carries the study as a JSON island and opens no
//! connection, so it can be copied anywhere and opened from a file.
//!
//! Folder names and log lines come from outside: the JSON island is escaped
//! so that no value can close its `<script>` element, and the page's script
//! puts every value into the page as text, never as HTML.

use serde_json::{Value, json};

use crate::config::Config;
use crate::engine;
use crate::output;
use crate::plan::Selection;
use crate::state::Store;
use crate::views;

const HTML: &str = include_str!("assets/dashboard.html");
const CSS: &str = include_str!("assets/dashboard.css");
const JS: &str = include_str!("assets/dashboard.js");

const CSS_MARK: &str = "/*NFSLURM:CSS*/";
const JS_MARK: &str = "/*NFSLURM:JS*/";
const DATA_MARK: &str = "<!--NFSLURM:DATA-->";

/// Lines kept from the end of each failed run's log.
pub const LOG_LINES: usize = 20;
/// Bytes kept from the end of each failed run's log, at most.
pub const LOG_BYTES: usize = 8 * 1024;
/// Failed runs whose logs are kept, newest first (the page shows as many).
pub const LOGGED_FAILURES: usize = 50;

/// The dashboard page. With `Some(data)` (the shape of [`report_data`]) the
/// data is embedded and the page renders it without any connection; with
/// `None` the page reads `api/v1/status`, `api/v1/jobs` and the jobs' logs
/// from the server that serves it, and follows `ws/events`.
pub fn page(embedded: Option<&Value>) -> String {
    let island = match embedded {
        Some(data) => format!(
            "<script type=\"application/json\" id=\"nfslurm-data\">{}</script>",
            script_json(data)
        ),
        None => String::new(),
    };
    // Each mark is in the template once, and the data goes in last: nothing
    // inserted is searched for a mark again.
    HTML.replacen(CSS_MARK, CSS, 1)
        .replacen(JS_MARK, JS, 1)
        .replacen(DATA_MARK, &island, 1)
}

/// JSON safe inside a `<script>` element: `<`, `>` and `&` (which can only
/// occur inside strings) written as `\u` escapes, so a value can never end
/// the element or start a comment.
fn script_json(value: &Value) -> String {
    let text = value.to_string();
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            c => out.push(c),
        }
    }
    out
}

/// What the page shows, read from the study's config and state (read-only):
/// `{"study", "generated_at", "status", "jobs", "logs"}`: the document of
/// `status --json`, the runs of `status runs --json` newest first, and the
/// end of each failed run's log by run ID. `store` is the study's open
/// state, if the caller holds one; a study that never ran has no runs.
pub fn report_data(config: &Config, store: Option<&Store>) -> anyhow::Result<Value> {
    let all = Selection::default();
    let status = views::status_document(config, &all, &[])?;
    let mut runs = views::select_runs(config, store, &all, &[])?;
    runs.reverse();
    let mut logs = serde_json::Map::new();
    for run in runs
        .iter()
        .filter(|r| r.state.is_failure())
        .take(LOGGED_FAILURES)
    {
        logs.insert(run.id.to_string(), Value::String(log_end(&run.log_path)));
    }
    Ok(json!({
        "study": config.dir.to_string_lossy(),
        "generated_at": output::rfc3339(Some(engine::now())),
        "status": status,
        "jobs": runs.iter().map(views::run_json).collect::<Vec<_>>(),
        "logs": logs,
    }))
}

/// The last [`LOG_LINES`] lines of a log, at most [`LOG_BYTES`] of them,
/// or a note saying why there are none.
fn log_end(path: &std::path::Path) -> String {
    match output::log_tail(path, LOG_LINES) {
        None => format!("(no log at `{}`)", path.display()),
        Some(lines) if lines.is_empty() => "(the log is empty)".to_string(),
        Some(lines) => {
            let text = lines.join("\n");
            if text.len() <= LOG_BYTES {
                return text;
            }
            let mut from = text.len() - LOG_BYTES;
            while !text.is_char_boundary(from) {
                from += 1;
            }
            // Start at a whole line when one begins within the kept part.
            let kept = &text[from..];
            match kept.find('\n') {
                Some(i) if i + 1 < kept.len() => kept[i + 1..].to_string(),
                _ => kept.to_string(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mark_is_in_the_template_once_and_in_no_asset() {
        for mark in [CSS_MARK, JS_MARK, DATA_MARK] {
            assert_eq!(HTML.matches(mark).count(), 1, "{mark}");
            assert!(!CSS.contains(mark) && !JS.contains(mark), "{mark}");
        }
        // Inlined, the script must not end its element or open a comment.
        assert!(!JS.to_ascii_lowercase().contains("</script"));
        assert!(!JS.contains("<!--"));
        assert!(!CSS.to_ascii_lowercase().contains("</style"));
    }

    #[test]
    fn a_live_page_has_no_data_and_reads_the_api() {
        let page = page(None);
        assert!(!page.contains("id=\"nfslurm-data\""));
        assert!(page.contains("api/v1/status") && page.contains("ws/events"));
        assert!(!page.contains("NFSLURM:"), "a mark was left in the page");
        // No asset from elsewhere: the page works with no network.
        assert!(!page.contains("http://") && !page.contains("https://"));
    }

    #[test]
    fn embedded_values_that_look_like_markup_stay_data() {
        let evil = "</script><script>alert(1)</script>";
        let data = json!({
            "study": format!("/data/{evil}"),
            "generated_at": "2026-12-02T10:00:00Z",
            "status": {"units": [{"pipeline": "bids", "subject": evil, "session": "1",
                "state": "failed"}], "counts": {}, "alerts": []},
            "jobs": [],
            "logs": {"1": format!("<!-- {evil} & more")},
        });
        let page = page(Some(&data));
        // The only `</script>` are the page's own: the island's and the script's.
        assert_eq!(page.matches("</script>").count(), 2, "{page}");
        assert!(!page.contains("<script>alert"));
        assert!(!page.contains("<!-- </"));
        let start = page.find("id=\"nfslurm-data\">").unwrap() + "id=\"nfslurm-data\">".len();
        let end = start + page[start..].find("</script>").unwrap();
        let island = &page[start..end];
        assert!(!island.contains('<') && !island.contains('>') && !island.contains('&'));
        // What the browser's JSON.parse reads back is the data, unchanged.
        let back: Value = serde_json::from_str(island).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn a_long_log_keeps_its_last_lines_within_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("job.log");
        let line = "é".repeat(300);
        let text: String = (0..40).map(|i| format!("{i:02} {line}\n")).collect();
        std::fs::write(&log, text).unwrap();
        let end = log_end(&log);
        assert!(end.len() <= LOG_BYTES, "{}", end.len());
        assert!(end.ends_with(&format!("39 {line}")));
        assert!(end.starts_with(char::is_numeric), "a whole line first");
        let short = dir.path().join("short.log");
        std::fs::write(&short, "one\ntwo\n").unwrap();
        assert_eq!(log_end(&short), "one\ntwo");
        let missing = dir.path().join("none.log");
        assert_eq!(
            log_end(&missing),
            format!("(no log at `{}`)", missing.display())
        );
    }
}
