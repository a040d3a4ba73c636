//! DICOM-aware discovery on real DICOM files: sessions written with
//! dicom-rs (pixel data, geometry, b-values), real scanner files shipped
//! with pydicom, the bad files a study meets, the header cache, and a real
//! BIDS conversion with `dcm2niix`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::SystemTime;

use nfslurm::study::dicom::synth::{Layout, SessionSpec, write_session};

use crate::common::Study;

/// A study whose sessions must hold a DWI series of at least 12 original
/// instances and a T1 series; `bids` runs `bids_command`.
fn dicom_study(validation: &str, bids_command: &str, extra_mapping: &str) -> Study {
    let study = Study::new();
    study.write(
        "nfslurm.yaml",
        &format!(
            r#"version: 1
site: local
executor: local
paths:
  dicom_root: dicom
discovery:
  mapping: {{ file: mapping.csv{extra_mapping} }}
  validation:
{validation}
  settle: 0s
pipelines:
  bids:
    level: session
    command: {bids_command}
"#
        ),
    );
    study
}

const REQUIRED: &str = r#"    min_files: 3
    required_series:
      - { name: dwi, match: '(?i)dwi', min_files: 12, image_type: ORIGINAL }
      - { name: t1w, match: '(?i)t1|mprage' }"#;

fn dicom_root(study: &Study) -> PathBuf {
    study.path().join("dicom")
}

fn write(study: &Study, folder: &str, spec: &SessionSpec) -> Vec<PathBuf> {
    write_session(&dicom_root(study).join(folder), spec).unwrap()
}

/// The folder of pydicom's test files: the real scanner files of these
/// tests. `scripts/test.sh` installs pydicom; without it the test fails.
fn pydicom_files() -> PathBuf {
    let out = Process::new("python3")
        .args([
            "-c",
            "import os, pydicom; print(os.path.join(os.path.dirname(pydicom.__file__), 'data', 'test_files'))",
        ])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "pydicom is not installed (scripts/test.sh installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn problem_of(discovered: &serde_json::Value, scan_id: &str) -> Option<String> {
    discovered["invalid"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["scan_id"] == scan_id)
        .map(|s| s["problem"].as_str().unwrap().to_string())
}

fn notes_of(discovered: &serde_json::Value, scan_id: &str) -> Vec<String> {
    discovered["notes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["scan_id"] == scan_id)
        .map(|n| n["note"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn flat_and_nested_sessions_are_described_by_their_headers() {
    let study = dicom_study(REQUIRED, "'true'", "");
    write(
        &study,
        "S1",
        &SessionSpec::t1_and_dwi("P1", 4, 3, Layout::Flat),
    );
    write(
        &study,
        "S2",
        &SessionSpec::t1_and_dwi("P2", 4, 3, Layout::Nested),
    );
    // A DWI series cut short: 2 volumes of 4 slices.
    write(
        &study,
        "S3",
        &SessionSpec::t1_and_dwi("P3", 4, 1, Layout::Flat),
    );
    // No DWI series at all.
    let mut t1_only = SessionSpec::t1_and_dwi("P4", 4, 3, Layout::Nested);
    t1_only.series.truncate(1);
    write(&study, "S4", &t1_only);
    study.write(
        "mapping.csv",
        "ScanID,SubjectCode,SessionID\nS1,01,1\nS2,02,1\nS3,03,1\nS4,04,1\n",
    );

    let discovered = study.json(&["discover"]);
    assert_eq!(discovered["sessions"], 4);
    assert_eq!(discovered["headers_read"], 4);
    assert_eq!(problem_of(&discovered, "S1"), None);
    assert_eq!(problem_of(&discovered, "S2"), None);
    assert_eq!(
        problem_of(&discovered, "S3").as_deref(),
        Some("series `dwi`: 8 instances in series 5 `DWI_dir1`, fewer than 12")
    );
    assert_eq!(
        problem_of(&discovered, "S4").as_deref(),
        Some(
            "series `dwi` missing: no SeriesDescription or ProtocolName matches `(?i)dwi` \
             with ImageType ORIGINAL (series found: 2 `T1_MPRAGE`)"
        )
    );

    // `show` lists the series of a flat folder, known only from the headers.
    let shown = study.ok(&["show", "sub-01/ses-1"]);
    assert!(shown.contains("scan ID  S1"), "{shown}");
    assert!(shown.contains("valid    yes"), "{shown}");
    assert!(shown.contains("files    20: 20 DICOM"), "{shown}");
    let rows: Vec<Vec<&str>> = shown
        .lines()
        .skip_while(|l| l.trim() != "series")
        .skip(2)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        vec![
            vec![
                "2",
                "T1_MPRAGE",
                "t1_mprage_sag",
                "ORIGINAL\\PRIMARY\\M\\ND",
                "4",
                "2026-03-15",
                "."
            ],
            vec![
                "5",
                "DWI_dir3",
                "ep2d_diff_AP",
                "ORIGINAL\\PRIMARY\\DIFFUSION\\NONE",
                "16",
                "2026-03-15",
                "."
            ],
        ],
        "{shown}"
    );
    assert!(shown.contains("bids/sub-01/ses-1"), "{shown}");
    let nested = study.json(&["show", "sub-02/ses-1"]);
    let series = nested["headers"]["series"].as_array().unwrap();
    assert_eq!(series[1]["folders"][0], "005_DWI_dir3");
    assert_eq!(series[1]["instances"], 16);

    let text = study.ok(&["discover"]);
    assert!(
        text.contains("invalid: `S3` (sub-03 ses-1): series `dwi`: 8 instances in series 5 `DWI_dir1`, fewer than 12"),
        "{text}"
    );
}

/// Overwrites `file` with `bytes` and gives it back its old mtime.
fn replace_keeping_mtime(file: &Path, bytes: &[u8]) {
    let mtime = fs::metadata(file).unwrap().modified().unwrap();
    fs::write(file, bytes).unwrap();
    fs::File::options()
        .write(true)
        .open(file)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

#[test]
fn an_unchanged_folder_is_never_read_again() {
    let study = dicom_study(REQUIRED, "'true'", "");
    let files = write(
        &study,
        "S1",
        &SessionSpec::t1_and_dwi("P1", 4, 3, Layout::Flat),
    );
    study.write("mapping.csv", "ScanID,SubjectCode,SessionID\nS1,01,1\n");
    let first = study.json(&["discover"]);
    assert_eq!(first["headers_read"], 1);
    assert_eq!(problem_of(&first, "S1"), None);

    // Every file becomes garbage of the same size, with its old mtime: a
    // discovery that opened one would find it corrupt.
    for f in &files {
        let size = fs::metadata(f).unwrap().len() as usize;
        let mut garbage = vec![0u8; 128];
        garbage.extend_from_slice(b"DICM");
        garbage.resize(size, 0xAB);
        replace_keeping_mtime(f, &garbage);
    }
    let second = study.json(&["discover"]);
    assert_eq!(second["headers_read"], 0);
    assert_eq!(problem_of(&second, "S1"), None);
    let out = study.ok(&["sync"]);
    assert!(!out.contains("invalid"), "{out}");
    let shown = study.json(&["show", "sub-01/ses-1"]);
    assert_eq!(shown["valid"], true);
    assert_eq!(shown["headers"]["series"].as_array().unwrap().len(), 2);

    // New rules are checked against the kept summary, not the files.
    let config = fs::read_to_string(study.config_path()).unwrap();
    study.write(
        "nfslurm.yaml",
        &config.replace("min_files: 3", "min_files: 100"),
    );
    let stricter = study.json(&["discover"]);
    assert_eq!(stricter["headers_read"], 0);
    assert_eq!(
        problem_of(&stricter, "S1").as_deref(),
        Some("20 DICOM files, fewer than min_files 100")
    );
    study.write("nfslurm.yaml", &config);
    assert_eq!(problem_of(&study.json(&["discover"]), "S1"), None);

    // A changed file changes the fingerprint: the folder is read again, and
    // the garbage is found.
    fs::File::options()
        .write(true)
        .open(&files[0])
        .unwrap()
        .set_modified(SystemTime::now() - std::time::Duration::from_secs(5))
        .unwrap();
    let third = study.json(&["discover"]);
    assert_eq!(third["headers_read"], 1);
    let problem = problem_of(&third, "S1").expect("the garbage is seen");
    assert!(
        problem.starts_with("20 corrupt DICOM files: `IM00001`: header cannot be parsed"),
        "{problem}"
    );
}

#[test]
fn bad_dicom_files_each_give_a_clear_reason_on_their_session() {
    let study = dicom_study("    min_files: 1", "'true'", "");
    let real = pydicom_files();
    let base = |folder: &str, patient: &str| {
        write(
            &study,
            folder,
            &SessionSpec::t1_and_dwi(patient, 2, 1, Layout::Flat),
        )
    };
    let root = dicom_root(&study);

    // Cut inside its header.
    let files = base("TRUNC", "P01");
    let bytes = fs::read(&files[0]).unwrap();
    fs::write(&files[0], &bytes[..400]).unwrap();
    // A real file cut short inside its pixel data.
    fs::create_dir_all(root.join("CUT")).unwrap();
    fs::copy(
        real.join("MR_truncated.dcm"),
        root.join("CUT/MR_truncated.dcm"),
    )
    .unwrap();
    // The magic code, then garbage.
    base("GARBAGE", "P03");
    let mut garbage = vec![0u8; 128];
    garbage.extend_from_slice(b"DICM");
    garbage.extend((0..4000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    fs::write(root.join("GARBAGE/IM99999"), garbage).unwrap();
    // Not DICOM at all: ignored and counted.
    base("NOTES", "P04");
    fs::write(root.join("NOTES/export-notes.txt"), "exported by hand\n").unwrap();
    // A DICOMDIR beside the images: ignored and counted.
    base("INDEXED", "P05");
    fs::copy(
        real.join("dicomdirtests/DICOMDIR"),
        root.join("INDEXED/DICOMDIR"),
    )
    .unwrap();
    // Real scanner files, compressed (JPEG-LS, RLE, JPEG 2000) and not.
    fs::create_dir_all(root.join("REAL")).unwrap();
    for name in [
        "MR_small.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
    ] {
        fs::copy(real.join(name), root.join("REAL").join(name)).unwrap();
    }
    // A transfer syntax the reader cannot parse (deflated data set).
    fs::create_dir_all(root.join("DEFLATED")).unwrap();
    fs::copy(
        real.join("image_dfl.dcm"),
        root.join("DEFLATED/image_dfl.dcm"),
    )
    .unwrap();
    // A 2 GB file (sparse): its header is read, never the rest.
    let files = base("HUGE", "P08");
    let huge = root.join("HUGE/IM_HUGE");
    fs::copy(&files[0], &huge).unwrap();
    fs::File::options()
        .write(true)
        .open(&huge)
        .unwrap()
        .set_len(2_200_000_000)
        .unwrap();
    // Two patients in one folder.
    base("TWO", "P09");
    write(
        &study,
        "TWO/more",
        &SessionSpec::t1_and_dwi("P10", 2, 1, Layout::Flat),
    );

    let scans = [
        "TRUNC", "CUT", "GARBAGE", "NOTES", "INDEXED", "REAL", "DEFLATED", "HUGE", "TWO",
    ];
    let mut mapping = String::from("ScanID,SubjectCode,SessionID\n");
    for (i, s) in scans.iter().enumerate() {
        mapping.push_str(&format!("{s},{:02},1\n", i + 1));
    }
    study.write("mapping.csv", &mapping);

    let started = std::time::Instant::now();
    let d = study.json(&["discover"]);
    assert!(started.elapsed().as_secs() < 60, "the 2 GB file was read");
    assert_eq!(d["sessions"], scans.len());

    let trunc = problem_of(&d, "TRUNC").unwrap();
    assert_eq!(
        trunc,
        "1 corrupt DICOM file: `IM00001`: truncated: the file ends inside its header"
    );
    let cut = problem_of(&d, "CUT").unwrap();
    assert!(
        cut.starts_with("1 corrupt DICOM file: `MR_truncated.dcm`: truncated: ")
            && cut.contains("9630 bytes long, but its pixel data end at byte 9692"),
        "{cut}"
    );
    let garbage = problem_of(&d, "GARBAGE").unwrap();
    assert!(
        garbage.starts_with("1 corrupt DICOM file: `IM99999`: header cannot be parsed ("),
        "{garbage}"
    );
    assert_eq!(problem_of(&d, "NOTES"), None);
    assert_eq!(notes_of(&d, "NOTES"), vec!["1 file is not DICOM, ignored"]);
    assert_eq!(problem_of(&d, "INDEXED"), None);
    assert_eq!(
        notes_of(&d, "INDEXED"),
        vec!["1 DICOMDIR index file ignored"]
    );
    assert_eq!(problem_of(&d, "REAL"), None);
    let real_notes = notes_of(&d, "REAL");
    assert_eq!(real_notes.len(), 1, "{real_notes:?}");
    for ts in ["JPEG-LS Lossless", "RLE Lossless", "JPEG 2000 Lossless"] {
        assert!(real_notes[0].contains(ts), "{real_notes:?}");
    }
    let deflated = problem_of(&d, "DEFLATED").unwrap();
    assert!(
        deflated.starts_with("1 corrupt DICOM file: `image_dfl.dcm`: header cannot be parsed (")
            && deflated.contains("Deflated"),
        "{deflated}"
    );
    assert_eq!(problem_of(&d, "HUGE"), None);
    assert_eq!(
        problem_of(&d, "TWO").as_deref(),
        Some("two subjects in one session: PatientID `P09` (6 files), `P10` (6 files)")
    );

    let shown = study.ok(&["show", "sub-06/ses-1"]);
    assert!(shown.contains("files    4: 4 DICOM"), "{shown}");
    assert!(
        shown.contains("DERIVED\\SECONDARY\\OTHER (JPEG-LS Lossless, RLE Lossless, JPEG 2000 Lossless)  4          2004-08-26"),
        "{shown}"
    );
}

#[test]
fn the_scan_id_can_come_from_a_header_and_is_checked_like_a_folder_name() {
    let study = dicom_study(
        "    min_files: 1",
        "'true'",
        ", scan_id_from: 'header:PatientID'",
    );
    write(
        &study,
        "export_a",
        &SessionSpec::t1_and_dwi("P001", 2, 1, Layout::Flat),
    );
    write(
        &study,
        "export_b",
        &SessionSpec::t1_and_dwi("P0;rm -rf", 2, 1, Layout::Flat),
    );
    write(
        &study,
        "export_c",
        &SessionSpec::t1_and_dwi("P003", 2, 1, Layout::Flat),
    );
    write(
        &study,
        "export_c/x",
        &SessionSpec::t1_and_dwi("P004", 2, 1, Layout::Flat),
    );
    write(
        &study,
        "export_d",
        &SessionSpec::t1_and_dwi("P005", 2, 1, Layout::Nested),
    );
    study.write("mapping.csv", "ScanID,SubjectCode\nP001,01\n");
    let d = study.json(&["discover"]);
    assert_eq!(d["sessions"], 1);
    assert_eq!(d["new"][0]["scan_id"], "P001");
    assert!(
        d["new"][0]["dicom_dir"]
            .as_str()
            .unwrap()
            .ends_with("export_a")
    );
    let skipped: Vec<String> = d["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["why"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        skipped,
        vec![
            "PatientID `P0;rm -rf` does not match the pattern `^(?P<scan_id>[A-Za-z0-9_]+)$`",
            "two subjects in one session: PatientID `P003` (6 files), `P004` (6 files)",
        ]
    );
    assert_eq!(d["unmapped"][0]["scan_id"], "P005");
}

/// The script the `bids` pipeline runs: `dcm2niix`, then BIDS names.
const BIDS_SH: &str = r#"#!/usr/bin/env bash
set -euo pipefail
dicom=$1 out=$2 sub=$3 ses=$4
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dcm2niix -b y -z n -f '%d' -o "$tmp" "$dicom"
dest=$out/sub-$sub/ses-$ses
mkdir -p "$dest/anat" "$dest/dwi"
for f in "$tmp"/T1_MPRAGE.*; do mv "$f" "$dest/anat/sub-${sub}_ses-${ses}_T1w.${f##*.}"; done
for f in "$tmp"/DWI_*.*; do mv "$f" "$dest/dwi/sub-${sub}_ses-${ses}_dwi.${f##*.}"; done
"#;

/// A study whose `bids` pipeline runs the real `dcm2niix` on real sessions,
/// one flat and one nested; `prefix` keeps subject labels unique.
pub fn dcm2niix_study(executor: &str, prefix: &str) -> Study {
    let status = Process::new("dcm2niix").arg("-v").output();
    assert!(
        status.is_ok(),
        "dcm2niix is not on PATH (scripts/test.sh installs Debian's package)"
    );
    let study = dicom_study(
        REQUIRED,
        "'bash {{ config_dir }}/bids.sh {{ session.dicom_dir }} {{ paths.bids_root }} {{ subject.label }} {{ session.label }}'",
        "",
    );
    let config = fs::read_to_string(study.config_path())
        .unwrap()
        .replace("executor: local", &format!("executor: {executor}"))
        .replace("{{ config_dir }}", &study.path().display().to_string());
    study.write("nfslurm.yaml", &config);
    study.write("bids.sh", BIDS_SH);
    write(
        &study,
        "S1",
        &SessionSpec::t1_and_dwi("P1", 4, 3, Layout::Flat),
    );
    write(
        &study,
        "S2",
        &SessionSpec::t1_and_dwi("P2", 4, 3, Layout::Nested),
    );
    study.write(
        "mapping.csv",
        &format!("ScanID,SubjectCode,SessionID\nS1,{prefix}01,1\nS2,{prefix}02,1\n"),
    );
    study
}

/// What `dcm2niix` wrote for one session, checked: BIDS names, sidecars
/// with the series' own fields, b-values of the DWI series.
pub fn check_bids_output(study: &Study, subject: &str) {
    let bids = study.path().join("bids");
    let dest = bids.join(format!("sub-{subject}/ses-1"));
    let base = format!("sub-{subject}_ses-1");
    for name in [
        format!("anat/{base}_T1w.nii"),
        format!("anat/{base}_T1w.json"),
        format!("dwi/{base}_dwi.nii"),
        format!("dwi/{base}_dwi.json"),
        format!("dwi/{base}_dwi.bval"),
        format!("dwi/{base}_dwi.bvec"),
    ] {
        assert!(
            dest.join(&name).is_file(),
            "{name} missing under {}",
            dest.display()
        );
    }
    let t1: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(dest.join(format!("anat/{base}_T1w.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(t1["SeriesDescription"], "T1_MPRAGE");
    assert_eq!(t1["ConversionSoftware"], "dcm2niix");
    assert_eq!(t1["SeriesNumber"], 2);
    assert!(
        (t1["RepetitionTime"].as_f64().unwrap() - 2.3).abs() < 1e-6,
        "{t1}"
    );
    let dwi: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(dest.join(format!("dwi/{base}_dwi.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(dwi["ProtocolName"], "ep2d_diff_AP");
    let bvals = fs::read_to_string(dest.join(format!("dwi/{base}_dwi.bval"))).unwrap();
    assert_eq!(
        bvals.split_whitespace().collect::<Vec<_>>(),
        vec!["0", "1000", "1000", "1000"]
    );
    // A 4D image: the NIfTI header's dim[0] is 4, dim[4] the 4 volumes.
    let nii = fs::read(dest.join(format!("dwi/{base}_dwi.nii"))).unwrap();
    let dim = |i: usize| i16::from_le_bytes([nii[40 + 2 * i], nii[41 + 2 * i]]);
    assert_eq!((dim(0), dim(1), dim(2), dim(3), dim(4)), (4, 16, 16, 4, 4));
}

#[test]
fn dcm2niix_converts_real_sessions_on_the_local_executor() {
    let study = dcm2niix_study("local", "");
    study.ok(&["discover"]);
    study.ok(&["submit", "--all", "--wait"]);
    let states = study.unit_states();
    assert!(states.values().all(|s| s == "done"), "{states:?}");
    check_bids_output(&study, "01");
    check_bids_output(&study, "02");
}

#[test]
#[ignore = "needs the Slurm test cluster: scripts/test.sh runs it"]
fn dcm2niix_converts_real_sessions_on_the_slurm_cluster() {
    let Some(_cluster) = crate::slurm::cluster() else {
        return;
    };
    let study = dcm2niix_study("slurm", "dc");
    study.ok(&["discover"]);
    study.ok(&["submit", "--all"]);
    let states = crate::slurm::sync_until_settled(&study, std::time::Duration::from_secs(180));
    assert!(states.values().all(|s| s == "done"), "{states:?}");
    let runs = study.runs();
    assert_eq!(runs.len(), 2);
    assert!(
        runs.iter()
            .all(|r| r["job_id"].as_str().is_some_and(|j| !j.is_empty()))
    );
    check_bids_output(&study, "dc01");
    check_bids_output(&study, "dc02");
    // Provenance names the Slurm job and the node it ran on.
    let p = study.json(&["show", "bids/sub-dc01/ses-1", "--provenance"]);
    let job = runs
        .iter()
        .find(|r| r["subject"] == "dc01")
        .map(|r| r["job_id"].clone())
        .unwrap();
    assert_eq!(p["job"]["job_id"], job);
    assert_eq!(p["job"]["executor"], "slurm");
    assert!(
        p["job"]["nodes"].as_str().is_some_and(|n| !n.is_empty()),
        "{p}"
    );
    assert!(
        p["submitted"]["script_sha256"]
            .as_str()
            .is_some_and(|h| h.len() == 64)
    );
}

#[test]
fn the_demo_is_real_dicom_converted_by_dcm2niix() {
    let study = Study::new();
    let out = study.ok(&["demo", "demo"]);
    assert!(
        out.contains("BIDS conversion runs the real `dcm2niix`"),
        "{out}"
    );
    assert!(
        out.contains("invalid: `SCAN3002` (sub-03 ses-2): series `dwi`: 8 instances in series 5 `DWI_dir1`, fewer than 12"),
        "{out}"
    );
    let dwi = study.path().join("demo/bids/sub-02/ses-2/dwi");
    let bvals = fs::read_to_string(dwi.join("sub-02_ses-2_dwi.bval")).unwrap();
    assert_eq!(bvals.split_whitespace().count(), 4);
    let sidecar: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dwi.join("sub-02_ses-2_dwi.json")).unwrap())
            .unwrap();
    assert_eq!(sidecar["SeriesDescription"], "DWI_dir3");
}
