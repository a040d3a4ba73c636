//! Reference material generated from the CLI itself: the manual page.

use crate::common::Study;

#[test]
fn man_prints_a_roff_page_of_every_command_and_one_per_command() {
    let study = Study::new();
    let page = study.ok(&["man"]);
    assert!(page.contains(".TH nfslurm 1"), "{page}");
    for command in [
        "submit", "sync", "status", "report", "show", "log", "clean", "worker", "cron", "site",
        "doctor",
    ] {
        assert!(
            page.contains(&format!("nfslurm\\-{command}(1)")),
            "{command}: {page}"
        );
    }
    let submit = study.ok(&["man", "submit"]);
    assert!(
        submit.contains(".TH nfslurm-submit 1  \"nfslurm 0.1.0\""),
        "{submit}"
    );
    assert!(submit.contains("\\-\\-force"), "{submit}");
    assert!(submit.contains("\\-\\-participant\\-file"), "{submit}");
    let out = study.run(&["man", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("commands: demo, init"));
}

/// Enough of JSON Schema for `nfslurm schema`: `type`, `const`, `enum`,
/// `properties`, `additionalProperties`, `patternProperties`, `items`.
fn validate(
    schema: &serde_json::Value,
    value: &serde_json::Value,
    at: &str,
    errors: &mut Vec<String>,
) {
    use serde_json::Value;
    if let Some(types) = schema.get("type") {
        let types: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(|t| t.as_str()).collect(),
            _ => vec![],
        };
        let ok = types.iter().any(|t| match *t {
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "object" => value.is_object(),
            "array" => value.is_array(),
            "null" => value.is_null(),
            _ => false,
        });
        if !ok {
            errors.push(format!("{at}: {value} is not {types:?}"));
            return;
        }
    }
    if let Some(c) = schema.get("const")
        && c != value
    {
        errors.push(format!("{at}: {value} is not {c}"));
    }
    if let Some(Value::Array(options)) = schema.get("enum")
        && !options.contains(value)
    {
        errors.push(format!("{at}: {value} is not one of {options:?}"));
    }
    if let Value::Object(map) = value {
        for (key, v) in map {
            let path = format!("{at}.{key}");
            if let Some(s) = schema.get("properties").and_then(|p| p.get(key)) {
                validate(s, v, &path, errors);
                continue;
            }
            let patterned = schema
                .get("patternProperties")
                .and_then(|p| p.as_object())
                .is_some_and(|p| {
                    p.keys()
                        .any(|re| regex::Regex::new(re).unwrap().is_match(key))
                });
            if patterned {
                continue;
            }
            match schema.get("additionalProperties") {
                Some(Value::Bool(false)) => errors.push(format!("{path}: unknown key")),
                Some(s @ Value::Object(_)) => validate(s, v, &path, errors),
                _ => {}
            }
        }
    }
    if let (Value::Array(items), Some(s)) = (value, schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            validate(s, item, &format!("{at}[{i}]"), errors);
        }
    }
}

/// The ```yaml blocks of a Markdown file, with their first line number.
fn yaml_blocks(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        match &mut current {
            None if line.trim_start() == "```yaml" => current = Some((n + 2, String::new())),
            Some(_) if line.trim_start() == "```" => out.extend(current.take()),
            Some((_, block)) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    out
}

#[test]
fn every_example_config_in_the_docs_and_every_site_file_fits_the_schema() {
    let study = Study::new();
    let config_schema: serde_json::Value = serde_json::from_str(&study.ok(&["schema"])).unwrap();
    let site_schema: serde_json::Value =
        serde_json::from_str(&study.ok(&["schema", "--site"])).unwrap();
    let pipeline_schema = &config_schema["properties"]["pipelines"]["additionalProperties"];
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut errors = Vec::new();
    let mut checked = (0, 0);
    let mut docs: Vec<_> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.push(root.join("README.md"));
    for doc in docs {
        let text = std::fs::read_to_string(&doc).unwrap();
        for (line, block) in yaml_blocks(&text) {
            let at = format!("{}:{line}", doc.file_name().unwrap().to_string_lossy());
            let value: serde_json::Value = match serde_saphyr::from_str(&block) {
                Ok(v) => v,
                Err(e) => {
                    errors.push(format!("{at}: not YAML: {e}"));
                    continue;
                }
            };
            let keys: Vec<&String> = value
                .as_object()
                .map(|m| m.keys().collect())
                .unwrap_or_default();
            let in_schema = |schema: &serde_json::Value| {
                keys.iter()
                    .all(|k| schema["properties"].get(k.as_str()).is_some() || k.starts_with("x-"))
            };
            if in_schema(&config_schema) {
                validate(&config_schema, &value, &at, &mut errors);
                checked.0 += 1;
            } else if in_schema(&site_schema) {
                validate(&site_schema, &value, &at, &mut errors);
                checked.1 += 1;
            } else if in_schema(pipeline_schema) {
                // A snippet of one pipeline's keys (`templates.md`).
                validate(pipeline_schema, &value, &at, &mut errors);
                checked.0 += 1;
            } else {
                errors.push(format!(
                    "{at}: keys {keys:?} are neither a config's nor a site file's"
                ));
            }
        }
    }
    for entry in std::fs::read_dir(root.join("site-configs"))
        .unwrap()
        .flatten()
    {
        let text = std::fs::read_to_string(entry.path()).unwrap();
        let value: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        validate(
            &site_schema,
            &value,
            &entry.path().display().to_string(),
            &mut errors,
        );
        checked.1 += 1;
    }
    for starter in ["starter.yaml", "starter-local.yaml"] {
        let text = std::fs::read_to_string(root.join("src/commands/assets").join(starter))
            .unwrap()
            .replace("{{SITE}}", "generic");
        let value: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        validate(&config_schema, &value, starter, &mut errors);
        checked.0 += 1;
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    assert!(checked.0 >= 8 && checked.1 >= 3, "{checked:?}");

    // The validator itself catches what the schema forbids.
    let mut errs = Vec::new();
    let bad = serde_json::json!({"version": 1, "pipelines": {"bids": {"enabled": "yes", "levle": "session"}}});
    validate(&config_schema, &bad, "bad", &mut errs);
    assert_eq!(errs.len(), 2, "{errs:?}");
}

/// What the shell gets back for `words` (the last is the one completed),
/// through clap's fish protocol: one `value<TAB>help` per line.
fn complete(study: &Study, words: &[&str]) -> Vec<String> {
    let out = study
        .cmd()
        .env("COMPLETE", "fish")
        .arg("--")
        .args(words)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.to_string())
        .collect()
}

#[test]
fn shell_completion_offers_the_studys_units_subjects_and_runs_and_writes_nothing() {
    let study = crate::common::chain_study("local", 2, 1, "");
    study.ok(&["discover"]);
    study.ok(&["submit", "--all", "--wait"]);
    let db = study.path().join(".nfslurm/state.db");
    let before = std::fs::read(&db).unwrap();
    let units = complete(&study, &["nfslurm", "show", "qsiprep/"]);
    assert_eq!(
        units,
        vec![
            "qsiprep/sub-01\tunit, last run succeeded",
            "qsiprep/sub-02\tunit, last run succeeded"
        ]
    );
    let subjects = complete(&study, &["nfslurm", "show", "sub-"]);
    assert_eq!(subjects, vec!["sub-01\tsubject", "sub-02\tsubject"]);
    let runs = complete(&study, &["nfslurm", "retry", "run:"]);
    assert_eq!(runs.len(), 8, "{runs:?}");
    assert!(runs[0].starts_with("run:8\tqsiparc/sub-0"), "{runs:?}");
    let logs = complete(&study, &["nfslurm", "logs", "bids/sub-02"]);
    assert_eq!(logs, vec!["bids/sub-02/ses-1\tunit, last run succeeded"]);
    assert_eq!(std::fs::read(&db).unwrap(), before);
    // Outside a study: nothing, and no error.
    assert!(complete(&Study::new(), &["nfslurm", "show", "sub-"]).is_empty());
    // The registration script for bash.
    let out = study.cmd().env("COMPLETE", "bash").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("_clap_complete_nfslurm"));
}
