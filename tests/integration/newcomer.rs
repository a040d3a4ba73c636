//! A newcomer's path: `init --site local` runs as written, `doctor` finds a
//! missing program or image, `site show` prints a site file to copy, the
//! settling message says how to change `settle`, and selections take lists.

use std::fs;

use crate::common::{Study, chain_study};

#[test]
fn init_site_local_writes_a_study_that_runs_as_written_and_says_to_cd() {
    let study = Study::new();
    let out = study.ok(&["init", "lap", "--site", "local"]);
    assert!(out.contains("\n  cd lap\n"), "{out}");
    assert!(out.contains("nfslurm sync"), "{out}");
    let lap = study.path().join("lap");
    let text = fs::read_to_string(lap.join("nfslurm.yaml")).unwrap();
    assert!(
        text.contains("executor: local") && text.contains("settle: 0s"),
        "{text}"
    );
    fs::create_dir_all(lap.join("dicom/S1")).unwrap();
    fs::write(lap.join("dicom/S1/IM1.dcm"), "DICM").unwrap();
    fs::write(
        lap.join("mapping.csv"),
        "ScanID,SubjectCode,SessionID\nS1,01,1\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = study.cmd().current_dir(&lap).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let doctor = run(&["doctor"]);
    assert!(doctor.contains("ok    commands"), "{doctor}");
    run(&["sync"]);
    run(&["submit", "--all", "--wait"]);
    let status = run(&["--json", "status"]);
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert!(
        v["units"]
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u["state"] == "done"),
        "{v}"
    );
    assert_eq!(
        fs::read_to_string(lap.join("derivatives/qsiparc/sub-01/ses-1/parc.txt")).unwrap(),
        "1\n"
    );
    // In the study folder itself, no `cd` line.
    let here = Study::new();
    let out = here.ok(&["init", "--site", "local"]);
    assert!(!out.contains("  cd "), "{out}");
}

#[test]
fn doctor_names_a_host_command_and_an_image_that_are_missing() {
    let study = Study::new();
    study.write(
        "nfslurm.yaml",
        "version: 1\nsite: local\nexecutor: local\npaths:\n  dicom_root: dicom\n\
         pipelines:\n  bids:\n    command: |\n      out={{ paths.bids_root }}/x\n      no-such-tool-4711 --run \"$out\"\n",
    );
    study.write("mapping.csv", "ScanID,SubjectCode,SessionID\n");
    fs::create_dir_all(study.path().join("dicom")).unwrap();
    let out = study.run(&["doctor"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("fail  commands    not found on `PATH`: `no-such-tool-4711` (bids)"),
        "{text}"
    );
    assert!(
        text.contains("hint: install it, fix the pipeline's `command`"),
        "{text}"
    );

    // In a container, the command is the image's business; the image is checked.
    study.write(
        "nfslurm.yaml",
        "version: 1\nsite: generic\npaths:\n  dicom_root: dicom\n\
         pipelines:\n  bids:\n    container: /nonexistent/heudiconv.sif\n    command: heudiconv --help\n",
    );
    let out = study.run(&["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("missing: `/nonexistent/heudiconv.sif` (bids)"),
        "{text}"
    );
    assert!(!text.contains("commands"), "{text}");
}

#[test]
fn site_show_prints_a_bundled_site_file_that_works_as_a_copy() {
    let study = chain_study("local", 1, 1, "");
    let out = study.ok(&["site", "show", "local"]);
    assert_eq!(
        out,
        fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/site-configs/local.yaml"
        ))
        .unwrap()
    );
    study.write("mysite.yaml", &out);
    let config = fs::read_to_string(study.config_path())
        .unwrap()
        .replace("site: local", "site: mysite.yaml");
    study.write("nfslurm.yaml", &config);
    study.ok(&["plan"]);
    let listed = study.ok(&["site", "list"]);
    assert!(listed.starts_with("generic\nlocal\n"), "{listed}");
    let out = study.run(&["site", "show", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("hint: bundled: generic, local"));
}

#[test]
fn a_settling_folder_says_how_to_change_settle() {
    let study = chain_study("local", 1, 1, "");
    let config = fs::read_to_string(study.config_path())
        .unwrap()
        .replace("settle: 0s", "settle: 30m");
    study.write("nfslurm.yaml", &config);
    let out = study.ok(&["discover"]);
    assert!(out.contains("skipped: "), "{out}");
    assert!(out.contains("lower `settle` in nfslurm.yaml"), "{out}");
}

fn planned_subjects(study: &Study, args: &[&str]) -> Vec<String> {
    let mut all = vec!["plan"];
    all.extend_from_slice(args);
    let v = study.json(&all);
    let mut subjects: Vec<String> = v["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["subject"].as_str().unwrap().to_string())
        .collect();
    subjects.sort();
    subjects.dedup();
    subjects
}

#[test]
fn selections_take_lists_and_a_participant_file() {
    let study = chain_study("local", 4, 1, "");
    study.ok(&["discover"]);
    assert_eq!(
        planned_subjects(
            &study,
            &[
                "--participant",
                "01",
                "sub-02",
                "--pipeline",
                "bids",
                "qsiprep"
            ]
        ),
        vec!["01", "02"]
    );
    study.write(
        "subjects.txt",
        "01\n# not this one: 02\nsub-03, 04 # two on a line\n\n",
    );
    assert_eq!(
        planned_subjects(&study, &["--participant-file", "subjects.txt"]),
        vec!["01", "03", "04"]
    );
    study.write("bad.txt", "01\n0;2\n");
    let out = study.run(&["plan", "--participant-file", "bad.txt"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`bad.txt` line 2"), "{err}");
}
