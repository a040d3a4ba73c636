//! Helpers shared by the integration tests: a study in a temp dir, and
//! running the real `nfslurm` binary on it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;

pub struct Study {
    pub dir: tempfile::TempDir,
}

impl Study {
    pub fn new() -> Study {
        Study {
            dir: tempfile::Builder::new()
                .prefix("nfslurm-test-")
                .tempdir()
                .unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.path().join("nfslurm.yaml")
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.path().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    /// A session folder with `files` DICOM files in a `dwi` series.
    pub fn session_folder(&self, scan_id: &str, files: usize) {
        let dir = self.path().join("dicom").join(scan_id).join("dwi");
        fs::create_dir_all(&dir).unwrap();
        for i in 0..files {
            fs::write(dir.join(format!("IM{i:03}.dcm")), "DICM").unwrap();
        }
    }

    pub fn cmd(&self) -> Command {
        let mut cmd = Command::cargo_bin("nfslurm").unwrap();
        cmd.current_dir(self.path())
            .env_remove("NFSLURM_CONFIG")
            .env("NO_COLOR", "1")
            .env("NFSLURM_TRANSIENT_ATTEMPTS", "1");
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Runs and checks the exit code, printing output on failure.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "nfslurm {args:?} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    /// Unit states by key (`pipeline/sub-01[/ses-1]`).
    pub fn unit_states(&self) -> std::collections::BTreeMap<String, String> {
        let v = self.json(&["status"]);
        v["units"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| {
                let mut key = format!(
                    "{}/sub-{}",
                    u["pipeline"].as_str().unwrap(),
                    u["subject"].as_str().unwrap()
                );
                if let Some(s) = u["session"].as_str() {
                    key.push_str(&format!("/ses-{s}"));
                }
                (key, u["state"].as_str().unwrap().to_string())
            })
            .collect()
    }

    pub fn runs(&self) -> Vec<serde_json::Value> {
        self.json(&["status", "runs"])["runs"]
            .as_array()
            .unwrap()
            .clone()
    }
}

/// The four-pipeline chain (bids, qsiprep, qsirecon, qsiparc) with shell stand-ins that read their
/// upstream's output, so an order mistake fails.
pub fn chain_config(executor: &str, extra_bids: &str) -> String {
    format!(
        r#"version: 1
site: local
executor: {executor}
paths:
  dicom_root: dicom
discovery:
  mapping: {{ file: mapping.csv }}
  validation: {{ min_files: 3 }}
  settle: 0s
pipelines:
  bids:
    level: session
    command: |
      {extra_bids}
      mkdir -p {{{{ paths.bids_root }}}}/sub-{{{{ subject.label }}}}/ses-{{{{ session.label }}}}
      echo done > {{{{ paths.bids_root }}}}/sub-{{{{ subject.label }}}}/ses-{{{{ session.label }}}}/bids.txt
  qsiprep:
    level: subject
    depends_on: [bids]
    command: |
      mkdir -p {{{{ paths.derivatives }}}}/qsiprep/sub-{{{{ subject.label }}}}
      {{% for s in sessions %}}cat {{{{ paths.bids_root }}}}/sub-{{{{ subject.label }}}}/ses-{{{{ s.label }}}}/bids.txt
      {{% endfor %}}echo "$SLURM_JOB_ID" >> {{{{ paths.derivatives }}}}/qsiprep/sub-{{{{ subject.label }}}}/runs.txt
  qsirecon:
    level: session
    depends_on: [qsiprep]
    command: |
      test -f {{{{ paths.derivatives }}}}/qsiprep/sub-{{{{ subject.label }}}}/runs.txt
      mkdir -p {{{{ paths.derivatives }}}}/qsirecon/sub-{{{{ subject.label }}}}/ses-{{{{ session.label }}}}
      echo "$SLURM_JOB_ID" >> {{{{ paths.derivatives }}}}/qsirecon/sub-{{{{ subject.label }}}}/ses-{{{{ session.label }}}}/runs.txt
  qsiparc:
    level: session
    depends_on: [qsirecon]
    command: |
      test -f {{{{ paths.derivatives }}}}/qsirecon/sub-{{{{ subject.label }}}}/ses-{{{{ session.label }}}}/runs.txt
      echo ok
retry:
  max_attempts: 2
  initial_delay: 1s
  max_delay: 2s
"#
    )
}

/// A study of `subjects` × `sessions` session folders, all mapped.
pub fn chain_study(executor: &str, subjects: usize, sessions: usize, extra_bids: &str) -> Study {
    chain_study_named(executor, "", subjects, sessions, extra_bids)
}

/// As [`chain_study`], with subject labels `<prefix>01`, `<prefix>02`, … so
/// that job names are unique to one test on a shared cluster.
pub fn chain_study_named(
    executor: &str,
    prefix: &str,
    subjects: usize,
    sessions: usize,
    extra_bids: &str,
) -> Study {
    let study = Study::new();
    study.write("nfslurm.yaml", &chain_config(executor, extra_bids));
    let mut mapping = String::from("ScanID,SubjectCode,SessionID\n");
    for s in 1..=subjects {
        for e in 1..=sessions {
            let scan = format!("SCAN{prefix}{s:02}{e}");
            study.session_folder(&scan, 4);
            mapping.push_str(&format!("{scan},{prefix}{s:02},{e}\n"));
        }
    }
    study.write("mapping.csv", &mapping);
    study
}
