//! The docs' examples against what the commands print, so that they stop
//! drifting: every JSON example of `docs/json.md` has exactly the keys of
//! the real document (recursively; for arrays, the keys of their items), the
//! `status runs` examples have the real header, the demo's last line is the
//! real one, and the documented exit code of a usage error is the real one.
//!
//! Everything runs on the demo study (the local executor), which is what
//! the docs' examples come from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value;

use super::common::{Study, chain_study};

fn doc(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The keys of a JSON value: an object's keys with their values' shapes; an
/// array, the merged shape of its items (`None` when empty); anything else
/// is a leaf (so `null` matches whatever the other side has).
#[derive(Debug, Clone)]
enum Shape {
    Leaf,
    Object(BTreeMap<String, Shape>),
    Array(Option<Box<Shape>>),
}

fn shape(value: &Value) -> Shape {
    match value {
        Value::Object(map) => {
            Shape::Object(map.iter().map(|(k, v)| (k.clone(), shape(v))).collect())
        }
        Value::Array(items) => Shape::Array(items.iter().map(shape).reduce(merge).map(Box::new)),
        _ => Shape::Leaf,
    }
}

fn merge(a: Shape, b: Shape) -> Shape {
    match (a, b) {
        (Shape::Leaf, other) | (other, Shape::Leaf) => other,
        (Shape::Object(mut a), Shape::Object(b)) => {
            for (k, v) in b {
                let merged = match a.remove(&k) {
                    Some(old) => merge(old, v),
                    None => v,
                };
                a.insert(k, merged);
            }
            Shape::Object(a)
        }
        (Shape::Array(a), Shape::Array(b)) => Shape::Array(match (a, b) {
            (Some(a), Some(b)) => Some(Box::new(merge(*a, *b))),
            (a, b) => a.or(b),
        }),
        (a, _) => a,
    }
}

/// Where the documented shape differs from the real one.
fn differences(documented: &Shape, real: &Shape, path: &str, out: &mut Vec<String>) {
    match (documented, real) {
        (Shape::Object(d), Shape::Object(r)) => {
            for k in d.keys().filter(|k| !r.contains_key(*k)) {
                out.push(format!("`{path}/{k}` is documented but not printed"));
            }
            for k in r.keys().filter(|k| !d.contains_key(*k)) {
                out.push(format!("`{path}/{k}` is printed but not documented"));
            }
            for (k, dv) in d {
                if let Some(rv) = r.get(k) {
                    differences(dv, rv, &format!("{path}/{k}"), out);
                }
            }
        }
        (Shape::Array(Some(d)), Shape::Array(Some(r))) => {
            differences(d, r, &format!("{path}[]"), out)
        }
        // An example with items needs real items to be checked against.
        (Shape::Array(Some(d)), Shape::Array(None)) if matches!(**d, Shape::Object(_)) => out.push(
            format!("`{path}[]` has no real item to check the example's against"),
        ),
        (Shape::Array(_), Shape::Array(_)) | (Shape::Leaf, _) | (_, Shape::Leaf) => {}
        (d, r) => out.push(format!("`{path}` is {d:?} in the docs but {r:?} for real")),
    }
}

/// The ```json blocks of a Markdown text, each with the `## ` heading it
/// is under, `…` elisions removed.
fn json_blocks(markdown: &str) -> Vec<(String, Value)> {
    let trailing_comma = regex::Regex::new(r",(\s*[\]}])").unwrap();
    let mut blocks = Vec::new();
    let mut heading = String::new();
    let mut block: Option<String> = None;
    for line in markdown.lines() {
        if let Some(text) = block.as_mut() {
            if line.starts_with("```") {
                let cleaned = trailing_comma.replace_all(text, "$1").into_owned();
                let value = serde_json::from_str(&cleaned).unwrap_or_else(|e| {
                    panic!("a JSON example under `{heading}` does not parse: {e}\n{cleaned}")
                });
                blocks.push((heading.clone(), value));
                block = None;
            } else if line.trim() != "…" && line.trim() != "…," {
                text.push_str(line);
                text.push('\n');
            }
        } else if let Some(h) = line.strip_prefix("## ") {
            heading = h.to_string();
        } else if line.starts_with("```json") {
            block = Some(String::new());
        }
    }
    blocks
}

/// Runs `nfslurm --json ARGS` and returns its document, whatever the exit
/// code (`doctor` exits 1 on a warning).
fn real(study: &Study, args: &[&str]) -> Value {
    let out = study.cmd().arg("--json").args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "nfslurm --json {args:?}: {e}\nstdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Waits until no run of the study is in flight (the local worker runs them).
fn settle(study: &Study) {
    for _ in 0..600 {
        let runs = study.runs();
        if runs.iter().all(|r| {
            !matches!(
                r["state"].as_str(),
                Some("submitting" | "pending" | "running")
            )
        }) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("runs still in flight after a minute");
}

/// The demo, then a new session (`SCAN1003`: sub-01 ses-3) for the plan and
/// sync examples. Returns the study and the demo's output.
fn demo_study() -> (Study, String) {
    let study = Study::new();
    let out = study.ok(&["demo", study.path().to_str().unwrap()]);
    let src = study.path().join("dicom/SCAN1001");
    let dst = study.path().join("dicom/SCAN1003");
    copy_dir(&src, &dst);
    let sheet = study.path().join("mapping.csv");
    let mut text = std::fs::read_to_string(&sheet).unwrap();
    text.push_str("SCAN1003,sub-01,ses-3\n");
    std::fs::write(&sheet, text).unwrap();
    // A file where session folders are: discovery skips it, with why.
    std::fs::write(
        study.path().join("dicom/README.txt"),
        "exported by the scanner\n",
    )
    .unwrap();
    (study, out)
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), &to).unwrap();
        }
    }
}

#[test]
fn the_docs_examples_match_the_real_output() {
    let (study, demo_out) = demo_study();
    let mut found: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    let mut add =
        |section: &'static str, value: Value| found.entry(section).or_default().push(value);

    // The new session: registered, planned, submitted.
    add("`sync`", real(&study, &["sync", "--dry-run"]));
    add("`discover`", real(&study, &["discover"]));
    add("`plan` and `submit --dry-run`", real(&study, &["plan"]));
    add("`sync`", real(&study, &["sync"]));
    settle(&study);
    add("`sync`", real(&study, &["sync"]));
    add("`status`", real(&study, &["status"]));
    add("`status runs`", real(&study, &["status", "runs"]));
    add("`status matrix`", real(&study, &["status", "matrix"]));
    add(
        "`show` of a session",
        real(&study, &["show", "sub-01/ses-1"]),
    );
    add("`show`", real(&study, &["show", "qsiprep/sub-01"]));
    add("`show sub-01`", real(&study, &["show", "sub-01"]));
    add("`log`", real(&study, &["log"]));
    let report = study.path().join("report.html");
    add(
        "`report`",
        real(&study, &["report", "-o", report.to_str().unwrap()]),
    );
    add(
        "`submit`",
        real(
            &study,
            &[
                "submit",
                "--force",
                "--pipeline",
                "qsiparc",
                "--participant",
                "01",
            ],
        ),
    );
    settle(&study);
    add(
        "`cancel`",
        real(&study, &["cancel", "qsiparc/sub-01/ses-2"]),
    );
    add(
        "`clean`",
        real(&study, &["clean", "--dry-run", "--older-than", "0"]),
    );
    add("`doctor --json`", real(&study, &["doctor"]));
    add("`cron show --json`", real(&study, &["cron", "show"]));
    // A unit that failed, retried: `retry` submits it again.
    let failing = chain_study("local", 1, 1, "exit 3");
    for _ in 0..120 {
        let _ = failing.run(&["sync"]);
        if failing.unit_states()["bids/sub-01/ses-1"] == "failed" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    add("`retry`", real(&failing, &["retry", "bids/sub-01/ses-1"]));
    settle(&failing);
    // The worker with a job running.
    let slow = chain_study("local", 1, 1, "sleep 30");
    slow.ok(&["sync"]);
    let mut worker = Value::Null;
    for _ in 0..300 {
        worker = real(&slow, &["worker", "status"]);
        if worker["jobs"].as_array().is_some_and(|j| !j.is_empty()) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    add("`worker status`", worker);
    slow.ok(&["cancel", "--all"]);

    let mut problems = Vec::new();
    for (heading, example) in json_blocks(&doc("docs/json.md")) {
        let Some(docs) = found.get(heading.as_str()) else {
            problems.push(format!(
                "no real output is checked for the examples under `{heading}`"
            ));
            continue;
        };
        let documented = shape(&example);
        // An example is a whole document of its section, or one item of an
        // array in one (a single unit, run or action).
        let mut candidates: Vec<Shape> = Vec::new();
        for d in docs {
            let whole = shape(d);
            if let Shape::Object(map) = &whole {
                for v in map.values() {
                    if let Shape::Array(Some(item)) = v {
                        candidates.push((**item).clone());
                    }
                }
            }
            candidates.push(whole);
        }
        let reports: Vec<Vec<String>> = candidates
            .iter()
            .map(|real| {
                let mut out = Vec::new();
                differences(&documented, real, "", &mut out);
                out
            })
            .collect();
        if !reports.iter().any(Vec::is_empty) {
            // The closest candidate: the one whose top-level keys overlap most.
            let best = reports.iter().min_by_key(|r| r.len()).unwrap();
            problems.push(format!(
                "docs/json.md, the example under `{heading}`:\n  {}",
                best.join("\n  ")
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The demo's last line, as the user guide shows it.
    let guide = doc("docs/user-guide.md");
    let demo_block = console_block(&guide, "$ nfslurm demo /tmp/docdemo");
    let real_last = demo_out
        .trim_end()
        .lines()
        .last()
        .unwrap()
        .replace(study.path().to_str().unwrap(), "/tmp/docdemo");
    assert_eq!(
        demo_block.last().map(String::as_str),
        Some(real_last.as_str())
    );
    let done = regex::Regex::new(r"^\d+ of \d+ units done$").unwrap();
    assert!(demo_out.lines().any(|l| done.is_match(l)), "{demo_out}");
    assert!(
        demo_block.iter().any(|l| done.is_match(l)),
        "the demo's summary line in the user guide: {demo_block:?}"
    );

    // The `status runs` header (off a terminal: every column).
    let real_header = header_words(study.ok(&["status", "runs"]).lines().next().unwrap());
    let mut examples = 0;
    for text in [&guide, &doc("README.md"), &doc("docs/troubleshooting.md")] {
        for (i, line) in text.lines().enumerate() {
            if line.starts_with("$ nfslurm status runs") {
                let header = text.lines().nth(i + 1).unwrap();
                assert_eq!(header_words(header), real_header, "after `{line}`");
                examples += 1;
            }
        }
    }
    assert!(examples > 0, "no `status runs` example found");
}

fn header_words(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_string).collect()
}

/// The lines of the ```console block that starts with `first`.
fn console_block(markdown: &str, first: &str) -> Vec<String> {
    let mut lines = markdown.lines().skip_while(|l| *l != first);
    let mut out: Vec<String> = Vec::new();
    for line in lines.by_ref() {
        if line.starts_with("```") {
            break;
        }
        out.push(line.to_string());
    }
    while out.last().is_some_and(|l| l.trim().is_empty()) {
        out.pop();
    }
    assert!(!out.is_empty(), "no console block starting with `{first}`");
    out
}

#[test]
fn the_documented_exit_code_of_a_usage_error_is_the_real_one() {
    let guide = doc("docs/user-guide.md");
    let sentence =
        regex::Regex::new(r"(?s)usage errors \(an unknown flag\)[^.]*?exit (\d+)").unwrap();
    let documented: i32 = sentence
        .captures(&guide)
        .expect("the user guide says how a usage error exits")[1]
        .parse()
        .unwrap();
    for args in [
        &["--no-such-flag"][..],
        &["status", "--no-such-flag"],
        &["--json", "status", "--no-such-flag"],
    ] {
        let out = Command::cargo_bin("nfslurm")
            .unwrap()
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(documented), "nfslurm {args:?}");
    }
}

#[test]
fn status_watch_json_is_one_document_per_line_as_documented() {
    let json_md = doc("docs/json.md");
    assert!(
        json_md.contains("one document per line"),
        "docs/json.md says what `status --watch --json` prints"
    );
    let study = chain_study("local", 1, 1, "");
    study.ok(&["discover"]);
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    let once = keys(&real(&study, &["status"]));
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("nfslurm"))
        .current_dir(study.path())
        .args(["--json", "status", "--watch", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 2, "{text}");
    for line in lines {
        let value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(keys(&value), once);
    }
}
