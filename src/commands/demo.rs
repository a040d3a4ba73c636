//! `nfslurm demo [DIR]`: a small synthetic study, run end to end on this machine.
//!
//! Three subjects with two sessions each, plus one session folder missing from
//! the mapping sheet and one whose diffusion series was cut short. The
//! sessions are real DICOM files (a T1 series and a diffusion series with
//! b-values, some folders flat, some nested), so discovery reads their
//! headers as it would a scanner's. BIDS conversion runs the real `dcm2niix`
//! when it is on PATH, a stand-in otherwise (the demo says which); QSIPrep,
//! QSIRecon and QSIParc are shell stand-ins: each reads its upstream's output
//! and writes its own, so running them out of order fails.

use std::fs;
use std::path::{Path, PathBuf};

use super::{SelectionSpec, Settings};
use crate::config::ExecutorKind;
use crate::study::dicom::synth::{Layout, SessionSpec, write_session};

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
      - { name: dwi, match: '(?i)dwi', min_files: 12, image_type: ORIGINAL }
      - { name: t1w, match: '(?i)t1|mprage' }
  settle: 0s

pipelines:
  bids:
    level: session
    command: |
      out={{ paths.bids_root }}/sub-{{ subject.label }}/ses-{{ session.label }}
      name=sub-{{ subject.label }}_ses-{{ session.label }}
      mkdir -p "$out/anat" "$out/dwi"
      if command -v dcm2niix >/dev/null 2>&1; then
        tmp=$(mktemp -d)
        dcm2niix -b y -z n -f '%d' -o "$tmp" {{ session.dicom_dir }}
        for f in "$tmp"/T1_MPRAGE.*; do mv "$f" "$out/anat/${name}_T1w.${f##*.}"; done
        for f in "$tmp"/DWI_*.*; do mv "$f" "$out/dwi/${name}_dwi.${f##*.}"; done
        rm -rf "$tmp"
      else
        # Stand-in: no dcm2niix on this machine; list the DICOM files instead.
        find {{ session.dicom_dir }} -type f > "$out/dwi/${name}_dwi.txt"
      fi
    resources: { cpus: 1, mem: 256M, time: "00:05:00" }
  qsiprep:
    level: subject
    depends_on: [bids]
    command: |
      out={{ paths.derivatives }}/qsiprep/sub-{{ subject.label }}
      mkdir -p "$out"
      {% for s in sessions %}ls {{ paths.bids_root }}/sub-{{ subject.label }}/ses-{{ s.label }}/dwi >> "$out/preproc.tmp"
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

/// (scan ID, subject, session, diffusion directions, flat layout, in mapping)
const SESSIONS: &[(&str, &str, &str, usize, bool, bool)] = &[
    ("SCAN1001", "01", "1", 3, true, true),
    ("SCAN1002", "01", "2", 3, false, true),
    ("SCAN2001", "02", "1", 3, true, true),
    ("SCAN2002", "02", "2", 3, false, true),
    ("SCAN3001", "03", "1", 3, true, true),
    // The export stopped early: two diffusion volumes instead of four.
    ("SCAN3002", "03", "2", 1, true, true),
    ("SCAN9001", "", "", 3, false, false),
];

/// Writes the demo study into `dir`; returns its config path.
pub fn write_study(dir: &Path) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(dir.join("dicom"))?;
    let mut mapping = String::from("ScanID,SubjectCode,SessionID\n");
    for &(scan, subject, session, directions, flat, mapped) in SESSIONS {
        let layout = if flat { Layout::Flat } else { Layout::Nested };
        let spec = SessionSpec::t1_and_dwi(&format!("P{scan}"), 4, directions, layout);
        write_session(&dir.join("dicom").join(scan), &spec)?;
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
    match which::which("dcm2niix") {
        Ok(path) => println!(
            "BIDS conversion runs the real `dcm2niix` ({})",
            path.display()
        ),
        Err(_) => println!(
            "`dcm2niix` is not on PATH: BIDS conversion is a stand-in that lists the DICOM files \
             (install dcm2niix, e.g. `apt-get install dcm2niix`, to convert for real)"
        ),
    }
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
        "\nnext: `cd {}` and try `nfslurm show sub-01/ses-1`, `nfslurm status runs`, `nfslurm show qsiprep/sub-01`, `nfslurm sync`",
        dir.display()
    );
    Ok(code)
}
