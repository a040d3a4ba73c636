//! Provenance (what produced each run) on the local executor: the template,
//! the image and the config changed one at a time, each seen in the
//! provenance of the next run and in its `provenance.json`.

use std::fs;

use crate::common::Study;

fn config(study: &Study, mem: &str) -> String {
    let dir = study.path().display();
    format!(
        r#"version: 1
site: local
executor: local
paths:
  dicom_root: dicom
discovery:
  mapping: {{ file: mapping.csv }}
  validation: {{ min_files: 1 }}
  settle: 0s
pipelines:
  bids:
    level: session
    container: {dir}/images/bids.sif
    template: {dir}/my.sbatch.tera
    command: echo converted
    resources: {{ cpus: 1, mem: {mem}, time: "00:05:00" }}
"#
    )
}

fn provenance(study: &Study) -> serde_json::Value {
    study.json(&["show", "bids/sub-01/ses-1", "--provenance"])
}

fn submitted(p: &serde_json::Value, field: &str) -> String {
    p["submitted"][field].as_str().unwrap().to_string()
}

fn image_sha(p: &serde_json::Value) -> String {
    p["submitted"]["image"]["sha256"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn template_image_and_config_changes_each_show_in_the_next_runs_provenance() {
    let study = Study::new();
    study.session_folder("S1", 2);
    study.write("mapping.csv", "ScanID,SubjectCode,SessionID\nS1,01,1\n");
    let template = include_str!("../../templates/sbatch.sh.tera");
    study.write("my.sbatch.tera", template);
    study.write("images/bids.sif", "image version 1");
    study.write("nfslurm.yaml", &config(&study, "256M"));
    study.ok(&["discover"]);
    study.ok(&["submit", "--all", "--wait"]);
    let first = provenance(&study);
    assert_eq!(first["attempt"], 1);
    assert_eq!(first["job"]["state"], "succeeded");
    assert_eq!(
        submitted(&first, "nfslurm_version"),
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(first["submitted"]["image"]["size"], 15);
    let script = fs::read(first["script"].as_str().unwrap()).unwrap();
    assert_eq!(
        submitted(&first, "script_sha256"),
        nfslurm::provenance::sha256_hex(&script)
    );
    // The file beside the script, rewritten when the run ended.
    let file = first["script"]
        .as_str()
        .unwrap()
        .replace(".sbatch", ".provenance.json");
    let on_disk: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(on_disk["submitted"], first["submitted"]);
    assert_eq!(on_disk["job"]["state"], "succeeded");

    // 1. The template: the unit is stale, its next run names the new one.
    study.write("my.sbatch.tera", &format!("{template}\n# site note\n"));
    study.ok(&["submit", "--all", "--wait"]);
    let second = provenance(&study);
    assert_eq!(second["attempt"], 2);
    assert_ne!(
        submitted(&second, "template_sha256"),
        submitted(&first, "template_sha256")
    );
    assert_ne!(
        submitted(&second, "pipeline_fingerprint"),
        submitted(&first, "pipeline_fingerprint")
    );
    assert_eq!(image_sha(&second), image_sha(&first));
    assert_eq!(
        submitted(&second, "config_sha256"),
        submitted(&first, "config_sha256")
    );

    // 2. The image, rebuilt at the same path.
    study.write("images/bids.sif", "image version 2, rebuilt");
    study.ok(&["submit", "--all", "--force", "--wait"]);
    let third = provenance(&study);
    assert_eq!(third["attempt"], 3);
    assert_ne!(image_sha(&third), image_sha(&second));
    assert_eq!(
        submitted(&third, "template_sha256"),
        submitted(&second, "template_sha256")
    );
    assert_eq!(
        submitted(&third, "config_sha256"),
        submitted(&second, "config_sha256")
    );

    // 3. The config (resources alone do not make the unit stale).
    study.write("nfslurm.yaml", &config(&study, "512M"));
    study.ok(&["submit", "--all", "--force", "--wait"]);
    let fourth = provenance(&study);
    assert_eq!(fourth["attempt"], 4);
    assert_ne!(
        submitted(&fourth, "config_sha256"),
        submitted(&third, "config_sha256")
    );
    assert_eq!(fourth["submitted"]["resources_asked"]["mem_mb"], 512);
    assert_eq!(image_sha(&fourth), image_sha(&third));
    assert_eq!(
        submitted(&fourth, "template_sha256"),
        submitted(&third, "template_sha256")
    );
    let chain: Vec<i64> = fourth["attempt_chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["attempt"].as_i64().unwrap())
        .collect();
    assert_eq!(chain, vec![1, 2, 3, 4]);

    let text = study.ok(&["show", "bids/sub-01/ses-1", "--provenance"]);
    assert!(
        text.contains(&format!(
            "image      {}/images/bids.sif sha256:{}",
            study.path().display(),
            image_sha(&fourth)
        )),
        "{text}"
    );
    assert!(text.contains("  * attempt 4"), "{text}");
}
