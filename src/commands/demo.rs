//! `nfslurm demo [DIR]`: a small synthetic study, run end to end on this machine.
//!
//! Three subjects with two sessions each, plus one session folder missing from
//! the mapping sheet and one with too few files. The four pipelines are shell
//! stand-ins for BIDS conversion, QSIPrep, QSIRecon and QSIParc: each reads its
//! upstream's output and writes its own, so running them out of order fails.

use std::fs;
use std::path::{Path, PathBuf};

use super::{SelectionSpec, Settings};
use crate::config::ExecutorKind;

const CONFIG: &str = r#"# The nfslurm demo study: shell stand-ins for the usual diffusion chain.
version: 1
site: local
executor: local

paths:
  dicom_root: dicom
  bids_root: bids
  derivatives: derivatives

discovery:
  mapping:
    file: mapping.csv
    scan_id_column: ScanID
    subject_column: SubjectCode
    session_column: SessionID
  validation:
    min_files: 5
    required_series:
      - { name: dwi, match: '(?i)dwi', min_files: 3 }
  settle: 0s

pipelines:
  bids:
    level: session
    command: |
      out={{ paths.bids_root }}/sub-{{ subject.label }}/ses-{{ session.label }}/dwi
      mkdir -p "$out"
      dicom={{ session.dicom_dir }}
      files=( $(find "$dicom" -type f) )
      echo "sub-{{ subject.label }} ses-{{ session.label }}: ${#files[@]} DICOM files" > "$out/sub-{{ subject.label }}_ses-{{ session.label }}_dwi.txt"
      sleep 1
    resources: { cpus: 1, mem: 256M, time: "00:05:00" }
  qsiprep:
    level: subject
    depends_on: [bids]
    command: |
      out={{ paths.derivatives }}/qsiprep/sub-{{ subject.label }}
      mkdir -p "$out"
      {% for s in sessions %}cat {{ paths.bids_root }}/sub-{{ subject.label }}/ses-{{ s.label }}/dwi/*_dwi.txt >> "$out/preproc.tmp"
      {% endfor %}mv "$out/preproc.tmp" "$out/sub-{{ subject.label }}_preproc.txt"
      echo "preprocessed with {{ resources.cpus }} CPUs, {{ resources.mem_mb }} MB" >> "$out/sub-{{ subject.label }}_preproc.txt"
      sleep 2
    resources: { cpus: 2, mem: 512M, time: "00:10:00" }
  qsirecon:
    level: session
    depends_on: [qsiprep]
    command: |
      in={{ paths.derivatives }}/qsiprep/sub-{{ subject.label }}/sub-{{ subject.label }}_preproc.txt
      out={{ paths.derivatives }}/qsirecon/sub-{{ subject.label }}/ses-{{ session.label }}
      mkdir -p "$out"
      grep "ses-{{ session.label }}" "$in" > "$out/recon.txt"
      sleep 1
    resources: { cpus: 1, mem: 256M, time: "00:05:00" }
  qsiparc:
    level: session
    depends_on: [qsirecon]
    command: |
      in={{ paths.derivatives }}/qsirecon/sub-{{ subject.label }}/ses-{{ session.label }}/recon.txt
      out={{ paths.derivatives }}/qsiparc/sub-{{ subject.label }}/ses-{{ session.label }}
      mkdir -p "$out"
      wc -l < "$in" > "$out/parcellated.txt"
    resources: { cpus: 1, mem: 256M, time: "00:05:00" }

retry:
  max_attempts: 2
  initial_delay: 5s
"#;

/// (scan ID, subject, session, DICOM files, in mapping)
const SESSIONS: &[(&str, &str, &str, usize, bool)] = &[
    ("SCAN1001", "01", "1", 8, true),
    ("SCAN1002", "01", "2", 8, true),
    ("SCAN2001", "02", "1", 8, true),
    ("SCAN2002", "02", "2", 8, true),
    ("SCAN3001", "03", "1", 8, true),
    ("SCAN3002", "03", "2", 2, true),
    ("SCAN9001", "", "", 8, false),
];

/// Writes the demo study into `dir`; returns its config path.
pub fn write_study(dir: &Path) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(dir.join("dicom"))?;
    let mut mapping = String::from("ScanID,SubjectCode,SessionID\n");
    for &(scan, subject, session, files, mapped) in SESSIONS {
        let folder = dir.join("dicom").join(scan);
        let dwi = folder.join("DWI_64dir");
        let t1 = folder.join("T1w_MPRAGE");
        fs::create_dir_all(&dwi)?;
        fs::create_dir_all(&t1)?;
        for i in 0..files {
            let series = if i % 2 == 0 { &dwi } else { &t1 };
            fs::write(
                series.join(format!("IM{i:04}.dcm")),
                format!("DICM {scan} {i}\n"),
            )?;
        }
        if mapped {
            mapping.push_str(&format!("{scan},sub-{subject},ses-{session}\n"));
        }
    }
    fs::write(dir.join("mapping.csv"), mapping)?;
    let config = dir.join("nfslurm.yaml");
    fs::write(&config, CONFIG)?;
    Ok(config)
}

pub fn run(settings: &Settings, dir: Option<&Path>) -> anyhow::Result<i32> {
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => std::env::current_dir()?.join("nfslurm-demo"),
    };
    if dir.join("nfslurm.yaml").exists() {
        println!("using the demo study already in `{}`", dir.display());
    } else {
        write_study(&dir)?;
        println!("wrote a demo study to `{}`", dir.display());
    }
    let settings = Settings {
        config: Some(dir.join("nfslurm.yaml")),
        executor: Some(ExecutorKind::Local),
        ..settings.clone()
    };
    println!("\n$ nfslurm discover");
    super::discover::run(&settings)?;
    println!("\n$ nfslurm submit --all --wait --executor local");
    let code = super::submit::run_submit(&settings, &SelectionSpec::default(), false, false, true)?;
    println!("\n$ nfslurm status");
    super::status::run(
        &settings,
        super::status::View::Summary,
        &SelectionSpec::default(),
        &[],
        None,
    )?;
    println!("\n$ nfslurm status matrix");
    super::status::run(
        &settings,
        super::status::View::Matrix,
        &SelectionSpec::default(),
        &[],
        None,
    )?;
    println!(
        "\nnext: `cd {}` and try `nfslurm status runs`, `nfslurm show qsiprep/sub-01`, `nfslurm sync`",
        dir.display()
    );
    Ok(code)
}
