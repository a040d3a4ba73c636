//! The DICOM figures: header reading against pydicom, first discovery of
//! 1,000 sessions × 200 real DICOM files against `find` + reading the first
//! 4 KiB of every file, and a no-op `sync` over 10,000 real DICOM sessions
//! against the nfslurm from before DICOM-aware discovery (when
//! `NFSLURM_BASELINE_BIN` names its binary; `scripts/bench.sh --baseline REV`
//! builds it).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use nfslurm::study::dicom::synth::{Layout, SeriesSpec, SessionSpec, write_session};

use super::measure::{self, median, median_run, ms};
use super::study::{Study, scan_id};
use super::{Report, nfslurm};

/// A session of 200 files of 64×64 16-bit images: a T1 series of 40 slices
/// and a DWI series of 4 volumes of 40 slices; flat or nested.
fn session_200(patient: &str, layout: Layout) -> SessionSpec {
    let mut spec = SessionSpec::t1_and_dwi(patient, 40, 3, layout);
    for s in &mut spec.series {
        s.rows = 64;
        s.columns = 64;
    }
    spec
}

/// A session of 2 files (a T1 series of 2 slices).
fn session_2(patient: &str) -> SessionSpec {
    let mut spec = SessionSpec::t1_and_dwi(patient, 2, 1, Layout::Flat);
    spec.series = vec![SeriesSpec::t1(2, 2)];
    spec
}

/// Writes the real DICOM folders of `study` with `spec` per session.
fn write_folders(study: &Study, spec: impl Fn(&str, usize) -> SessionSpec) {
    let mut n = 0;
    for sub in 1..=study.subjects {
        for ses in 1..=study.sessions_per_subject {
            let scan = scan_id(sub, ses);
            write_session(&study.dir.join("dicom").join(&scan), &spec(&scan, n))
                .expect("write a DICOM session");
            n += 1;
        }
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

const PYDICOM: &str = r#"
import sys, time
from pydicom import dcmread
files = [l.rstrip("\n") for l in open(sys.argv[1])]
for f in files[:200]:
    dcmread(f, stop_before_pixels=True)
start = time.perf_counter()
for f in files:
    ds = dcmread(f, stop_before_pixels=True)
    ds.SeriesInstanceUID, ds.get("SeriesDescription"), ds.get("ImageType")
print(len(files) / (time.perf_counter() - start))
"#;

/// 1,000 sessions of 200 real DICOM files, half flat, half nested.
pub fn setup_dicom(dir: &Path) -> Study {
    let study = Study::create(dir, 500, 2);
    write_folders(&study, |scan, n| {
        session_200(
            scan,
            if n % 2 == 0 {
                Layout::Flat
            } else {
                Layout::Nested
            },
        )
    });
    study
}

pub fn bench_dicom(report: &mut Report, dir: &Path, reps: usize) {
    eprintln!("dicom: 1,000 sessions x 200 real DICOM files (64x64, flat and nested)");
    let start = Instant::now();
    let study = setup_dicom(dir);
    eprintln!("    files written in {:.0} ms", ms(start.elapsed()));
    // Written back to disk before anything is timed: 2 GB of dirty pages
    // being flushed would slow whichever figure comes first.
    let _ = Command::new("sync").status();
    let root = study.dir.join("dicom");

    // Header reading, one thread each, the same 20,000 files, warm cache.
    let folders: Vec<PathBuf> = (1..=50)
        .flat_map(|sub| (1..=2).map(move |ses| scan_id(sub, ses)))
        .map(|scan| root.join(scan))
        .collect();
    let files: Vec<PathBuf> = folders.iter().flat_map(|f| files_under(f)).collect();
    let list = dir.join("files.txt");
    let text: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    fs::write(&list, text.join("\n") + "\n").expect("write the file list");
    let (time, read) = median(reps, || {
        folders
            .iter()
            .map(|f| nfslurm::study::dicom::summarize(f).dicom_files)
            .sum::<u64>()
    });
    assert_eq!(read as usize, files.len(), "every file is DICOM");
    let ours = files.len() as f64 / time.as_secs_f64();
    report.add(
        "dicom: header reading, nfslurm (1 thread)",
        ours,
        "files/s",
        None,
    );
    let out = Command::new("python3")
        .args(["-c", PYDICOM])
        .arg(&list)
        .output()
        .expect("run python3");
    if out.status.success() {
        let theirs: f64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("pydicom's files/s");
        report.add(
            "dicom: header reading, pydicom dcmread(stop_before_pixels=True)",
            theirs,
            "files/s",
            None,
        );
        report.add_min(
            "dicom: header reading, nfslurm / pydicom",
            ours / theirs,
            "x",
            10.0,
        );
    } else {
        eprintln!(
            "    pydicom not measured: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }

    // First discovery against find + the first 4 KiB of every file.
    let find = || {
        let mut cmd = Command::new("bash");
        cmd.arg("-c").arg(format!(
            "find {} -type f -print0 | xargs -0 head -qc 4096 > /dev/null",
            root.display()
        ));
        cmd
    };
    let _ = measure::run(&mut find());
    let (reference, _) = median_run(reps, find);
    report.add(
        "dicom: find + first 4 KiB of 200,000 files",
        ms(reference.wall),
        "ms",
        None,
    );
    let state = study.config().paths.state_dir;
    let mut first: Vec<measure::Usage> = Vec::new();
    for _ in 0..reps {
        let _ = fs::remove_dir_all(&state);
        first.push(measure::run(&mut nfslurm(&study, &["discover"])).0);
    }
    first.sort_by_key(|u| u.wall);
    let usage = first[first.len() / 2];
    report.add(
        "dicom: first `nfslurm discover`, 1,000 sessions x 200 files",
        ms(usage.wall),
        "ms",
        None,
    );
    report.add(
        "dicom: first discovery / (find + 4 KiB)",
        usage.wall.as_secs_f64() / reference.wall.as_secs_f64(),
        "x",
        Some(2.0),
    );
    let (usage, _) = median_run(reps, || nfslurm(&study, &["discover"]));
    report.add(
        "dicom: `nfslurm discover` again, nothing changed (no file read)",
        ms(usage.wall),
        "ms",
        None,
    );
    let _ = fs::remove_dir_all(dir);
}

/// A no-op sync over 10,000 sessions of 2 real DICOM files each, all done:
/// this nfslurm, and the one from before (same folders, a copy of the state
/// at its schema version) when `NFSLURM_BASELINE_BIN` is set.
/// 10,000 sessions of 2 real DICOM files, registered, every unit done.
pub fn setup_sync_dicom(dir: &Path) -> Study {
    let study = Study::create(dir, 5_000, 2);
    write_folders(&study, |scan, _| session_2(scan));
    study.register();
    study.complete_all();
    study
}

pub fn bench_sync_dicom(report: &mut Report, dir: &Path, reps: usize) {
    eprintln!("sync: 10,000 sessions of 2 real DICOM files, 35,000 units all done");
    let study = setup_sync_dicom(dir);
    // The first sync reads every header; the rest read none.
    let _ = measure::run(&mut nfslurm(&study, &["sync"]));
    let (usage, _) = median_run(reps, || nfslurm(&study, &["sync"]));
    report.add(
        "sync 10k DICOM: `nfslurm sync`, nothing to do",
        ms(usage.wall),
        "ms",
        Some(250.0),
    );
    if let Some(baseline) = std::env::var_os("NFSLURM_BASELINE_BIN") {
        let copy = dir.with_extension("baseline");
        let state = copy.join(".nfslurm");
        fs::create_dir_all(&state).expect("create the baseline study");
        let config = fs::read_to_string(study.config_path())
            .expect("read the config")
            .replace(
                "dicom_root: dicom",
                &format!("dicom_root: {}", study.dir.join("dicom").display()),
            );
        fs::write(copy.join("nfslurm.yaml"), config).expect("write the baseline config");
        fs::copy(study.dir.join("mapping.csv"), copy.join("mapping.csv")).expect("copy");
        fs::copy(study.dir.join(".nfslurm/state.db"), state.join("state.db"))
            .expect("copy the state");
        // The tables added since are unknown to it and harmless.
        let conn = rusqlite::Connection::open(state.join("state.db")).expect("open the copy");
        conn.pragma_update(None, "user_version", 2)
            .expect("set the version");
        drop(conn);
        let run = || {
            let mut cmd = Command::new(&baseline);
            cmd.arg("--config")
                .arg(copy.join("nfslurm.yaml"))
                .arg("sync")
                .env("NO_COLOR", "1");
            cmd
        };
        let _ = measure::run(&mut run());
        let (before, _) = median_run(reps, run);
        report.add(
            "sync 10k DICOM: the same sync, nfslurm before this work",
            ms(before.wall),
            "ms",
            None,
        );
        report.add(
            "sync 10k DICOM: after / before",
            usage.wall.as_secs_f64() / before.wall.as_secs_f64(),
            "x",
            None,
        );
        let _ = fs::remove_dir_all(&copy);
    }
    let _ = fs::remove_dir_all(dir);
}
