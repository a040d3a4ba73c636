//! The failure policy (docs/user-guide.md, "what happens on failure") on the real Slurm test cluster: backoff between
//! cron runs, dead letters, OOM and TIMEOUT escalation, infrastructure retries.

use std::time::Duration;

use crate::common::Study;
use crate::slurm::{cluster, sh, slurm_now, sync_until_settled};

/// A one- or two-pipeline study on Slurm with the given retry block.
fn study(prefix: &str, subjects: usize, pipelines: &str, retry: &str) -> Study {
    let study = Study::new();
    study.write(
        "nfslurm.yaml",
        &format!(
            "version: 1\nsite: local\nexecutor: slurm\npaths:\n  dicom_root: dicom\ndiscovery:\n  mapping: {{ file: mapping.csv }}\n  settle: 0s\npipelines:\n{pipelines}\nretry:\n{retry}\n"
        ),
    );
    let mut mapping = String::from("ScanID,SubjectCode,SessionID\n");
    for s in 1..=subjects {
        let scan = format!("S{prefix}{s}");
        study.session_folder(&scan, 1);
        mapping.push_str(&format!("{scan},{prefix}{s},1\n"));
    }
    study.write("mapping.csv", &mapping);
    study.ok(&["discover"]);
    study
}

fn ts(v: &serde_json::Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .timestamp()
}

#[test]
#[ignore = "needs the Slurm test cluster: scripts/test.sh runs it"]
fn fails_once_then_succeeds_after_the_backoff_delay() {
    let Some(_cluster) = cluster() else { return };
    let study = study(
        "bo",
        1,
        "  flaky:\n    command: |\n      if [ ! -f {{ paths.state_dir }}/../tried ]; then touch {{ paths.state_dir }}/../tried; exit 7; fi\n",
        "  max_attempts: 3\n  initial_delay: 8s\n  jitter: 0\n",
    );
    study.ok(&["submit", "--all"]);
    // Wait for the failure to be recorded.
    let start = std::time::Instant::now();
    loop {
        study.ok(&["sync"]);
        let s = study.unit_states();
        if s["flaky/sub-bo1/ses-1"] == "retrying" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{s:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let v = study.json(&["status"]);
    let unit = &v["units"][0];
    assert_eq!(unit["attempts"], 1);
    let next = ts(&unit["next_attempt_at"]);
    // A sync before the delay submits nothing.
    study.ok(&["sync"]);
    assert_eq!(study.runs().len(), 1);
    let states = sync_until_settled(&study, Duration::from_secs(120));
    assert_eq!(states["flaky/sub-bo1/ses-1"], "done");
    let runs = study.runs();
    eprintln!("{}", study.ok(&["status", "runs"]));
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["state"], "failed");
    assert_eq!(runs[0]["exit_code"], 7);
    assert_eq!(runs[1]["state"], "succeeded");
    let ended = ts(&runs[0]["ended_at"]);
    assert_eq!(next - ended, 8, "next attempt = end + initial_delay");
    assert!(
        ts(&runs[1]["submitted_at"]) >= next,
        "the backoff was honoured: {runs:?}"
    );
}

#[test]
#[ignore = "needs the Slurm test cluster: scripts/test.sh runs it"]
fn always_failing_unit_is_a_dead_letter_blocks_downstream_and_retry_revives_it() {
    let Some(_cluster) = cluster() else { return };
    let study = study(
        "dl",
        2,
        "  first:\n    command: |\n      if [ {{ subject.label }} = dl2 ] && [ ! -f {{ paths.state_dir }}/../fixed ]; then echo 'no dwi series' >&2; exit 4; fi\n  second:\n    depends_on: [first]\n    command: echo ok\n",
        "  max_attempts: 2\n  initial_delay: 2s\n",
    );
    study.ok(&["submit", "--all"]);
    let states = sync_until_settled(&study, Duration::from_secs(180));
    assert_eq!(states["first/sub-dl2/ses-1"], "failed");
    assert_eq!(states["second/sub-dl2/ses-1"], "blocked");
    assert_eq!(states["second/sub-dl1/ses-1"], "done");
    let failed = study.json(&["status", "--state", "failed"]);
    let units = failed["units"].as_array().unwrap();
    assert_eq!(units.len(), 1);
    assert_eq!(units[0]["attempts"], 2);
    let detail = units[0]["detail"].as_str().unwrap();
    assert!(detail.contains("exit 4"), "{detail}");
    let blocked = study.json(&["status", "--state", "blocked"]);
    assert!(
        blocked["units"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("first/sub-dl2/ses-1")
    );
    // The log tail is in `show`.
    let show = study.ok(&["show", "first/sub-dl2/ses-1"]);
    assert!(show.contains("attempt 2"), "{show}");
    let log = study.ok(&["logs", "first/sub-dl2/ses-1"]);
    assert!(log.contains("no dwi series"), "{log}");

    study.write("fixed", "");
    study.ok(&["retry", "--failed"]);
    let states = sync_until_settled(&study, Duration::from_secs(180));
    assert!(states.values().all(|s| s == "done"), "{states:?}");
}

#[test]
#[ignore = "needs the Slurm test cluster: scripts/test.sh runs it"]
fn real_oom_gets_more_memory_on_the_next_attempt() {
    let Some(_cluster) = cluster() else { return };
    let study = study(
        "om",
        1,
        "  hungry:\n    resources: { mem: 100M }\n    command: |\n      python3 -c 'import time\n      b = bytearray(200 * 1024 * 1024)\n      for i in range(0, len(b), 4096): b[i] = 1\n      time.sleep(3)'\n",
        "  max_attempts: 3\n  initial_delay: 1s\n  on_oom: { mem_factor: 3, max_mem: 2G }\n",
    );
    study.ok(&["submit", "--all"]);
    let states = sync_until_settled(&study, Duration::from_secs(180));
    assert_eq!(states["hungry/sub-om1/ses-1"], "done");
    let runs = study.runs();
    eprintln!("{}", study.ok(&["status", "runs"]));
    assert_eq!(runs[0]["state"], "oom", "{runs:?}");
    assert_eq!(runs[0]["slurm_state"], "OUT_OF_MEMORY");
    assert_eq!(runs[0]["mem_mb"], 100);
    let last = runs.last().unwrap();
    assert_eq!(last["state"], "succeeded");
    assert!(last["mem_mb"].as_u64().unwrap() >= 300, "{runs:?}");
    let script = std::fs::read_to_string(last["script"].as_str().unwrap()).unwrap();
    assert!(
        script.contains(&format!("--mem={}M", last["mem_mb"])),
        "{script}"
    );
    let table = study.ok(&["status", "runs"]);
    assert!(table.contains("oom"), "{table}");
}

#[test]
#[ignore = "needs the Slurm test cluster: scripts/test.sh runs it"]
fn real_timeout_gets_more_time_on_the_next_attempt() {
    let Some(_cluster) = cluster() else { return };
    let study = study(
        "tm",
        1,
        "  slow:\n    resources: { time: \"00:01:00\" }\n    command: |\n      if [ {{ attempt }} -eq 1 ]; then sleep 150; fi\n      echo finished\n",
        "  max_attempts: 3\n  initial_delay: 1s\n  on_timeout: { time_factor: 2, max_time: \"00:05:00\" }\n",
    );
    study.ok(&["submit", "--all"]);
    let states = sync_until_settled(&study, Duration::from_secs(300));
    assert_eq!(states["slow/sub-tm1/ses-1"], "done");
    let runs = study.runs();
    eprintln!("{}", study.ok(&["status", "runs"]));
    assert_eq!(runs[0]["state"], "timeout", "{runs:?}");
    assert_eq!(runs[0]["time_limit_s"], 60);
    assert_eq!(runs[1]["time_limit_s"], 120);
    let script = std::fs::read_to_string(runs[1]["script"].as_str().unwrap()).unwrap();
    assert!(script.contains("--time=00:02:00"), "{script}");
}

#[test]
#[ignore = "needs the Slurm test cluster: scripts/test.sh runs it"]
fn node_failure_is_retried_without_spending_an_attempt() {
    let Some(_cluster) = cluster() else { return };
    let study = study(
        "nf",
        1,
        "  long:\n    command: |\n      if [ {{ attempt }} -eq 1 ]; then sleep 120; fi\n      echo ok\n",
        "  max_attempts: 1\n  infra_max: 2\n",
    );
    let since = slurm_now();
    study.ok(&["submit", "--all"]);
    let node = sh("hostname -s").trim().to_string();
    // Wait until it runs, then take the node down under it.
    let start = std::time::Instant::now();
    while !sh("squeue -h -u root -t R -o '%j'")
        .lines()
        .any(|l| l == "nf-long-nf1-1")
    {
        assert!(start.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(300));
    }
    sh(&format!(
        "scontrol update nodename={node} state=down reason=nfslurm-test"
    ));
    std::thread::sleep(Duration::from_secs(3));
    sh(&format!("scontrol update nodename={node} state=resume"));
    let states = sync_until_settled(&study, Duration::from_secs(180));
    assert_eq!(
        states["long/sub-nf1/ses-1"], "done",
        "max_attempts 1 and still done"
    );
    let runs = study.runs();
    eprintln!("{}", study.ok(&["status", "runs"]));
    assert_eq!(runs[0]["state"], "infra_failed", "{runs:?}");
    assert_eq!(runs[0]["slurm_state"], "NODE_FAIL");
    assert_eq!(runs[1]["state"], "succeeded");
    let _ = since;
}
