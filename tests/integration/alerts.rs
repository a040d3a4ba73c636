//! Why it failed, at a glance: `alert_patterns` found in failed runs' logs
//! and tallied by `status`.

use crate::common::{chain_config, chain_study};

const FAIL_02: &str = r#"if [ "$SLURM_JOB_NAME" = nf-bids-02-1 ]; then echo "cp: error writing 'lh.white': No space left on device" >&2; exit 1; fi"#;

fn with_patterns(patterns: &str) -> String {
    chain_config("local", FAIL_02).replace(
        "  bids:\n    level: session\n",
        &format!("  bids:\n    level: session\n    alert_patterns: {patterns}\n"),
    )
}

#[test]
fn alert_patterns_found_in_failed_logs_are_tallied_in_status() {
    let study = chain_study("local", 2, 1, FAIL_02);
    study.write(
        "nfslurm.yaml",
        &with_patterns(r#"["No space left", "(?i)excessive topologic defect"]"#),
    );
    study.ok(&["discover"]);
    let out = study.run(&["submit", "--all", "--wait"]);
    assert_eq!(out.status.code(), Some(3));
    let json = study.json(&["status"]);
    assert_eq!(
        json["alerts"],
        serde_json::json!([{
            "pipeline": "bids",
            "pattern": "No space left",
            "units": ["bids/sub-02/ses-1"],
        }]),
        "{json}"
    );
    let text = study.ok(&["status"]);
    assert!(
        text.contains(
            "alerts in the logs of failed runs:\n  bids: `No space left` in 1 unit\n    bids/sub-02/ses-1\n"
        ),
        "{text}"
    );
    // A selection that leaves the unit out leaves its alert out.
    let json = study.json(&["status", "--participant", "01"]);
    assert_eq!(json["alerts"], serde_json::json!([]), "{json}");
    // Once it succeeds, the alert is gone: only the last run counts.
    study.write(
        "nfslurm.yaml",
        &with_patterns(r#"["No space left"]"#).replace(FAIL_02, ""),
    );
    study.ok(&["retry", "--failed"]);
    study.ok(&["submit", "--all", "--wait"]);
    assert_eq!(study.json(&["status"])["alerts"], serde_json::json!([]));
}

#[test]
fn a_bad_alert_pattern_is_a_config_error_with_its_place() {
    let study = chain_study("local", 1, 1, "");
    study.write("nfslurm.yaml", &with_patterns(r#"["No space (left"]"#));
    let out = study.run(&["plan"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`pipelines.bids.alert_patterns[0]` is not a valid regular expression"),
        "{err}"
    );
    assert!(err.contains("nfslurm.yaml:"), "{err}");
}
