//! Output for people and for scripts: tables, colour, times, JSON.
//!
//! Colour only on a terminal and never with `NO_COLOR` or `--no-color`;
//! stdout is data, logs and progress go to stderr.

mod printer;

pub use printer::{Mode, Printer};

use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use comfy_table::{ContentArrangement, Table, presets};

use crate::model::{RunState, UnitState};

static COLOR: AtomicBool = AtomicBool::new(false);

/// Decides once whether to colour output.
pub fn init_color(no_color_flag: bool) {
    let env_off = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let on = !no_color_flag && !env_off && std::io::stdout().is_terminal();
    COLOR.store(on, Ordering::Relaxed);
}

pub fn color_enabled() -> bool {
    COLOR.load(Ordering::Relaxed)
}

fn paint(code: &str, text: &str) -> String {
    if color_enabled() {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

pub fn bold(text: &str) -> String {
    paint("1", text)
}

pub fn dim(text: &str) -> String {
    paint("2", text)
}

pub fn green(text: &str) -> String {
    paint("32", text)
}

pub fn yellow(text: &str) -> String {
    paint("33", text)
}

pub fn red(text: &str) -> String {
    paint("31;1", text)
}

/// ANSI colour code of a unit state.
fn unit_color(state: UnitState) -> &'static str {
    match state {
        UnitState::Done => "32",
        UnitState::Running => "36",
        UnitState::Queued => "34",
        UnitState::Retrying => "33",
        UnitState::Failed => "31;1",
        UnitState::Blocked => "35",
        UnitState::Cancelled => "2",
        UnitState::Stale => "33",
        UnitState::Invalid => "2",
        UnitState::Disabled => "2",
        UnitState::Waiting => "0",
    }
}

pub fn unit_state(state: UnitState) -> String {
    paint(unit_color(state), state.as_str())
}

pub fn run_state(state: RunState) -> String {
    let code = match state {
        RunState::Succeeded => "32",
        RunState::Running => "36",
        RunState::Pending | RunState::Submitting => "34",
        RunState::Failed | RunState::Oom | RunState::Timeout => "31",
        RunState::InfraFailed | RunState::Lost => "33",
        RunState::UpstreamFailed => "35",
        RunState::Cancelled => "2",
    };
    paint(code, state.as_str())
}

/// One symbol per unit state, for the matrix.
pub fn unit_symbol(state: UnitState) -> String {
    let symbol = match state {
        UnitState::Done => "✓",
        UnitState::Running => "▶",
        UnitState::Queued => "…",
        UnitState::Retrying => "↻",
        UnitState::Failed => "✗",
        UnitState::Blocked => "■",
        UnitState::Cancelled => "⊘",
        UnitState::Stale => "~",
        UnitState::Invalid => "!",
        UnitState::Disabled => "-",
        UnitState::Waiting => "·",
    };
    paint(unit_color(state), symbol)
}

/// A plain table: no borders, readable in a cron log.
pub fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().map(|h| bold(h)));
    table
}

/// Prints a table with its rows left-trimmed of comfy-table's padding.
pub fn print_table(table: &Table) {
    print!("{}", table_text(table));
}

/// A table as text, each line right-trimmed and without the one space of
/// padding before the first column.
pub fn table_text(table: &Table) -> String {
    let mut out = String::new();
    for line in table.lines() {
        let line = line.trim_end();
        out.push_str(line.strip_prefix(' ').unwrap_or(line));
        out.push('\n');
    }
    out
}

/// The widest line of a table as [`table_text`] prints it, in columns.
pub fn table_width(table: &Table) -> usize {
    table_text(table).lines().map(text_width).max().unwrap_or(0)
}

/// How many terminal columns `text` takes: colour codes take none, and
/// wide characters two.
pub fn text_width(text: &str) -> usize {
    console::measure_text_width(text)
}

/// The width of the terminal stdout is, or `None` off a terminal (a pipe,
/// a cron log), where nothing is cut to fit.
pub fn terminal_width() -> Option<usize> {
    console::Term::stdout()
        .size_checked()
        .map(|(_, cols)| usize::from(cols))
        .filter(|&cols| cols > 0)
}

/// The width views fit into: the terminal's, else 80.
pub fn width() -> usize {
    terminal_width().unwrap_or(80)
}

/// Fits a table to `width` columns by wrapping the text of column
/// `wrapped` (at word boundaries) over several lines; every other column
/// keeps its content's width. Nothing is cut. Off a terminal (`None`) the
/// table is left as wide as its content.
pub fn wrap_to_width(table: &mut Table, wrapped: usize, width: Option<usize>) {
    let Some(width) = width else { return };
    let columns = table.column_count();
    for i in 0..columns {
        if i != wrapped
            && let Some(col) = table.column_mut(i)
        {
            col.set_constraint(comfy_table::ColumnConstraint::ContentWidth);
        }
    }
    // comfy-table counts the padding space before the first column, which
    // `table_text` removes.
    table
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_width(u16::try_from(width + 1).unwrap_or(u16::MAX));
}

/// `text` in lines of at most `width` columns, broken between words (a
/// word longer than a line is a line of its own, not cut).
pub fn wrap_words(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && text_width(&line) + 1 + text_width(word) > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// A Unix time as local `YYYY-MM-DD HH:MM:SS`.
pub fn local_time(ts: i64) -> String {
    chrono::DateTime::from_timestamp(ts, 0)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_default()
}

/// A Unix time as RFC 3339 UTC, for JSON.
pub fn rfc3339(ts: Option<i64>) -> Option<String> {
    ts.and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// Seconds for people, everywhere: the two largest units, the second
/// zero-padded and left out when zero: `12s`, `3m05s`, `3m`, `1h02m`, `1h`,
/// `2d03h`.
pub fn duration(secs: i64) -> String {
    let s = secs.max(0);
    let (big, big_unit, small, small_unit) = if s >= 86_400 {
        (s / 86_400, "d", (s % 86_400) / 3600, "h")
    } else if s >= 3600 {
        (s / 3600, "h", (s % 3600) / 60, "m")
    } else if s >= 60 {
        (s / 60, "m", s % 60, "s")
    } else {
        return format!("{s}s");
    };
    if small == 0 {
        format!("{big}{big_unit}")
    } else {
        format!("{big}{big_unit}{small:02}{small_unit}")
    }
}

/// A file size for people: `512 B`, `3.6 KiB`, `1.2 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `1 run`, `3 runs`.
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A short wait as `750ms` or `1.9s`.
pub fn duration_ms(d: std::time::Duration) -> String {
    if d.as_millis() < 1000 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// Megabytes as `512M` or `8.0G`.
pub fn megabytes(mb: i64) -> String {
    if mb >= 1024 {
        format!("{:.1}G", mb as f64 / 1024.0)
    } else {
        format!("{mb}M")
    }
}

/// Whether this process printed its JSON document already: an error after
/// it (`sync --json` that lost the cluster) is then not a second document.
static JSON_PRINTED: AtomicBool = AtomicBool::new(false);

pub fn mark_json_printed() {
    JSON_PRINTED.store(true, Ordering::Relaxed);
}

pub fn json_printed() -> bool {
    JSON_PRINTED.load(Ordering::Relaxed)
}

/// How many lines of a failed run's log `show`, the `--wait` summary and
/// notifications quote.
pub const LOG_TAIL_LINES: usize = 5;

/// The last `lines` non-empty lines of a log, from its last 16 KiB, with
/// control characters shown as escapes (a job's output never reaches the
/// terminal raw); `None` when the file cannot be read.
pub fn log_tail(path: &std::path::Path, lines: usize) -> Option<Vec<String>> {
    let (text, cut) = file_end(path, 16 * 1024)?;
    let mut all: Vec<&str> = text.lines().collect();
    if cut && !all.is_empty() {
        // The first line read may be cut.
        all.remove(0);
    }
    let kept: Vec<String> = all
        .iter()
        .rev()
        .filter(|l| !l.trim().is_empty())
        .take(lines)
        .map(|l| escape_controls(l).into_owned())
        .collect();
    Some(kept.into_iter().rev().collect())
}

/// The last `bytes` bytes of a file (all of it when it is shorter), lossily
/// decoded, and whether the read began inside the file (so its first line
/// may be cut); `None` when the file cannot be read. A log can be large:
/// only its end is read.
pub fn file_end(path: &std::path::Path, bytes: u64) -> Option<(String, bool)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let from = len.saturating_sub(bytes);
    file.seek(SeekFrom::Start(from)).ok()?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf).ok()?;
    Some((String::from_utf8_lossy(&buf).into_owned(), from > 0))
}

pub fn print_json(value: &serde_json::Value) {
    mark_json_printed();
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_read_naturally() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(5), "5s");
        assert_eq!(duration(180), "3m");
        assert_eq!(duration(185), "3m05s");
        assert_eq!(duration(1800), "30m");
        assert_eq!(duration(3600), "1h");
        assert_eq!(duration(3720), "1h02m");
        assert_eq!(duration(3600 + 300 + 7), "1h05m");
        assert_eq!(duration(90_000), "1d01h");
        assert_eq!(duration(86_400 + 7), "1d");
        assert_eq!(duration(-3), "0s");
        assert_eq!(megabytes(512), "512M");
        assert_eq!(megabytes(8192), "8.0G");
        assert_eq!(bytes(7), "7 B");
        assert_eq!(bytes(3735), "3.6 KiB");
        assert_eq!(bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
    }

    #[test]
    fn words_wrap_between_words_and_are_never_cut() {
        assert_eq!(
            wrap_words("exit code 127: command not found", 14),
            vec!["exit code 127:", "command not", "found"]
        );
        assert_eq!(
            wrap_words("a-very-long-word b", 5),
            vec!["a-very-long-word", "b"]
        );
        assert!(wrap_words("  ", 10).is_empty());
    }

    #[test]
    fn widths_ignore_colour_and_count_wide_characters() {
        assert_eq!(text_width("\x1b[32mdone\x1b[0m"), 4);
        assert_eq!(text_width("✓ done"), 6);
    }

    #[test]
    fn a_wrapped_table_fits_and_keeps_every_word() {
        let mut t = table(&["job", "unit", "reason"]);
        t.add_row(vec![
            "103",
            "qsiprep/sub-0001",
            "exit code 127: bash: line 3: qsiprpe: command not found",
        ]);
        wrap_to_width(&mut t, 2, Some(40));
        let text = table_text(&t);
        assert!(table_width(&t) <= 40, "{text}");
        let words: Vec<&str> = text.split_whitespace().collect();
        for w in ["127:", "qsiprpe:", "found", "qsiprep/sub-0001"] {
            assert!(words.contains(&w), "{w} in {text}");
        }
        let mut t = table(&["job", "reason"]);
        t.add_row(vec!["1", "exit code 127: command not found"]);
        wrap_to_width(&mut t, 1, None);
        assert_eq!(table_text(&t).lines().count(), 2, "no limit off a terminal");
    }

    #[test]
    fn a_log_tail_is_its_last_lines_with_control_characters_escaped() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("attempt-1.out");
        let mut text = String::new();
        for i in 0..5000 {
            text.push_str(&format!("line {i}\n"));
        }
        text.push_str("bash: line 3: qsiprpe: command not found\n\n\x1b[31mred\x07\n");
        std::fs::write(&log, text).unwrap();
        let tail = log_tail(&log, 3).unwrap();
        assert_eq!(
            tail,
            vec![
                "line 4999",
                "bash: line 3: qsiprpe: command not found",
                "\\u{1b}[31mred\\u{7}"
            ]
        );
        assert_eq!(log_tail(&dir.path().join("gone.out"), 3), None);
    }
}

/// `text` with control characters written as escapes (`\n`, `\u{1b}`), so
/// that a folder name or log line from outside never reaches a terminal raw
/// (an escape sequence in a name could rewrite the screen).
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod escape_tests {
    use super::escape_controls;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_controls("sub-01 ünï"), "sub-01 ünï");
        assert_eq!(
            escape_controls("a\x1b[2Jb\nc\u{9b}"),
            "a\\u{1b}[2Jb\\nc\\u{9b}"
        );
    }
}

/// A path for people: relative to the working directory when inside it,
/// with control characters escaped (folder names come from outside).
pub fn display_path(path: &Path) -> String {
    let cwd = std::env::current_dir().unwrap_or_default();
    let shown = if cwd.parent().is_none() {
        // At `/` every absolute path would lose its leading slash.
        path.display().to_string()
    } else {
        path.strip_prefix(&cwd)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| path.display().to_string())
    };
    escape_controls(&shown).into_owned()
}

/// A path as a JSON string: lossy for a name that is not UTF-8 (serde
/// refuses those, and `--json` output must always be JSON).
pub fn json_path(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}
