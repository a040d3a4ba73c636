//! The site's template is what reaches Slurm, in both submission modes: its
//! extra `#SBATCH` lines are checked on the jobs and array tasks Slurm holds
//! (`scontrol show job`, `squeue -o`), and a directive sbatch refuses is a
//! config error naming the template line, leaving nothing behind.

use std::collections::BTreeMap;

use crate::common::{Study, chain_study_named};
use crate::slurm::{cluster, sh};

/// The feature the test cluster's node has (scripts/slurm-test-cluster.sh).
const FEATURE: &str = "nfslurmtest";

const BUNDLED: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/templates/sbatch.sh.tera"
));

/// The bundled template with `extra` lines after its `--time` directive.
fn site_template(extra: &str) -> String {
    let (head, tail) = BUNDLED
        .split_once("#SBATCH --time={{ time }}\n")
        .expect("the bundled template sets --time");
    format!("{head}#SBATCH --time={{{{ time }}}}\n{extra}{tail}")
}

/// A study of `subjects` subjects (one session each) whose site config uses
/// its own template with `extra` directives, submitting in `mode`.
fn site_study(prefix: &str, subjects: usize, mode: &str, extra: &str) -> Study {
    let study = chain_study_named("slurm", prefix, subjects, 1, "sleep 30");
    let config = std::fs::read_to_string(study.config_path()).unwrap();
    study.write(
        "nfslurm.yaml",
        &config.replace("site: local", "site: site.yaml"),
    );
    study.write(
        "site.yaml",
        &format!(
            "name: test-site\nscheduler:\n  partition: debug\n  submission: {mode}\ncontainer:\n  runtime: none\ntemplate: sbatch.sh.tera\n"
        ),
    );
    study.write("sbatch.sh.tera", &site_template(extra));
    study.ok(&["discover"]);
    study
}

/// `scontrol -o show job ID`: one map of fields per record (an array gives
/// one record per task).
fn scontrol_records(job: &str) -> Vec<BTreeMap<String, String>> {
    sh(&format!("scontrol -o show job {job}"))
        .lines()
        .map(|line| {
            line.split_whitespace()
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// squeue rows of these jobs, one per task: id, name, comment, nice, features.
fn squeue_rows(job: &str) -> Vec<Vec<String>> {
    sh(&format!("squeue -h -r -j {job} -o '%i|%j|%k|%y|%f'"))
        .lines()
        .map(|l| l.split('|').map(str::to_string).collect())
        .collect()
}

fn require_feature() {
    let node = sh("scontrol -o show node");
    assert!(
        node.contains(&format!("ActiveFeatures={FEATURE}")),
        "the test node lacks the feature `{FEATURE}`: restart the cluster with \
         `scripts/slurm-test-cluster.sh restart` (it gives the node that feature)\n{node}"
    );
}

const EXTRA: &str = "#SBATCH --nice=77\n#SBATCH --constraint=nfslurmtest\n";

/// The runs of `bids`, by subject: (job ID, token).
fn bids_runs(study: &Study) -> BTreeMap<String, (String, String)> {
    study
        .runs()
        .iter()
        .filter(|r| r["pipeline"] == "bids")
        .map(|r| {
            (
                r["subject"].as_str().unwrap().to_string(),
                (
                    r["job_id"].as_str().unwrap().to_string(),
                    r["token"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

#[test]
#[ignore = "needs the Slurm test cluster: scripts/test.sh runs it"]
fn site_template_directives_reach_array_tasks() {
    let Some(_cluster) = cluster() else { return };
    require_feature();
    let study = site_study("ta", 3, "arrays", EXTRA);
    // What will be submitted, before it is: the array script with the unit's task.
    let preview = study.ok(&[
        "render",
        "--pipeline",
        "bids",
        "--participant",
        "ta02",
        "--session",
        "1",
    ]);
    assert!(preview.contains("#SBATCH --nice=77"), "{preview}");
    assert!(preview.contains("#SBATCH --array="), "{preview}");
    assert!(preview.contains("sub-ta02"), "{preview}");
    eprintln!("render:\n{preview}");
    let plan = study.ok(&["plan", "--pipeline", "bids"]);
    eprintln!("plan:\n{plan}");
    assert!(plan.contains("array of 3 `bids` units"), "{plan}");

    study.ok(&["submit", "--pipeline", "bids"]);
    let runs = bids_runs(&study);
    assert_eq!(runs.len(), 3);
    let array = runs["ta01"].0.split('_').next().unwrap().to_string();
    let array_token = runs["ta01"].1.rsplit_once('_').unwrap().0.to_string();
    let study_name = study
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    // Once a task has started, Slurm holds a record per started task: wait
    // for one, so that what is checked is what the tasks themselves carry.
    let start = std::time::Instant::now();
    let records = loop {
        let records = scontrol_records(&array);
        let started = records.iter().any(|r| r["JobState"] != "PENDING");
        if started || start.elapsed() > std::time::Duration::from_secs(90) {
            break records;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    };
    eprintln!("scontrol show job {array}:\n{records:#?}");
    assert!(
        records.iter().any(|r| r["JobState"] == "RUNNING"),
        "a task started: {records:#?}"
    );
    // Tasks not started yet are one record (`ArrayTaskId=1-3`), started ones one each.
    assert!(!records.is_empty());
    let mut tasks: Vec<u32> = Vec::new();
    for r in &records {
        assert_eq!(r["Nice"], "77", "{r:?}");
        assert_eq!(r["Features"], FEATURE, "{r:?}");
        assert_eq!(r["Comment"], array_token, "{r:?}");
        assert_eq!(r["JobName"], format!("nf-{study_name}-bids"), "{r:?}");
        assert_eq!(r["ArrayJobId"], array, "{r:?}");
        for part in r["ArrayTaskId"].split('%').next().unwrap().split(',') {
            match part.split_once('-') {
                Some((a, b)) => tasks.extend(a.parse::<u32>().unwrap()..=b.parse().unwrap()),
                None => tasks.push(part.parse().unwrap()),
            }
        }
    }
    tasks.sort_unstable();
    assert_eq!(tasks, [1, 2, 3]);
    let rows = squeue_rows(&array);
    eprintln!("squeue -r -o '%i|%j|%k|%y|%f':\n{rows:?}");
    assert_eq!(rows.len(), 3, "{rows:?}");
    for row in &rows {
        assert_eq!(
            row[1..],
            [
                format!("nf-{study_name}-bids"),
                array_token.clone(),
                "77".into(),
                FEATURE.into()
            ],
            "{row:?}"
        );
    }
    study.ok(&["cancel", "--all"]);
}

#[test]
#[ignore = "needs the Slurm test cluster: scripts/test.sh runs it"]
fn site_template_directives_reach_single_jobs() {
    let Some(_cluster) = cluster() else { return };
    require_feature();
    let study = site_study("tj", 2, "jobs", EXTRA);
    study.ok(&["submit", "--pipeline", "bids"]);
    let runs = bids_runs(&study);
    assert_eq!(runs.len(), 2);
    for (subject, (job, token)) in &runs {
        assert!(!job.contains('_'), "a single job: {job}");
        let records = scontrol_records(job);
        eprintln!("scontrol show job {job}:\n{records:#?}");
        assert_eq!(records.len(), 1);
        let r = &records[0];
        assert_eq!(r["Nice"], "77", "{r:?}");
        assert_eq!(r["Features"], FEATURE, "{r:?}");
        assert_eq!(&r["Comment"], token, "{r:?}");
        assert_eq!(r["JobName"], format!("nf-bids-{subject}-1"), "{r:?}");
        let rows = squeue_rows(job);
        eprintln!("squeue -o '%i|%j|%k|%y|%f': {rows:?}");
        assert_eq!(
            rows[0][1..],
            [
                format!("nf-bids-{subject}-1"),
                token.clone(),
                "77".into(),
                FEATURE.into()
            ]
        );
    }
    study.ok(&["cancel", "--all"]);
}

/// `--exclude` of a node that does not exist: sbatch says "Invalid node name
/// specified". In both modes that is a config error naming the template
/// line, and the refused runs leave no row, no script and no spent attempt.
#[test]
#[ignore = "needs the Slurm test cluster: scripts/test.sh runs it"]
fn a_directive_sbatch_refuses_is_a_config_error_naming_the_template_line() {
    let Some(_cluster) = cluster() else { return };
    for (prefix, mode) in [("rj", "jobs"), ("ra", "arrays")] {
        let study = site_study(
            prefix,
            2,
            mode,
            "#SBATCH --nice=77\n#SBATCH --exclude=nosuchnode\n",
        );
        let line = site_template("#SBATCH --nice=77\n#SBATCH --exclude=nosuchnode\n")
            .lines()
            .position(|l| l == "#SBATCH --exclude=nosuchnode")
            .unwrap()
            + 1;
        let out = study.run(&["submit", "--pipeline", "bids"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("{mode} mode, submit:\n{stderr}");
        assert_eq!(out.status.code(), Some(1), "{mode}: {stderr}");
        assert!(
            stderr.contains("Invalid node name specified"),
            "{mode}: {stderr}"
        );
        let place = format!("sbatch.sh.tera:{line}`: `#SBATCH --exclude=nosuchnode`");
        assert!(stderr.contains(&place), "{mode}: {stderr}");
        // Nothing half-written: no run, no script, no array manifest.
        assert!(study.runs().is_empty(), "{mode}: {:#?}", study.runs());
        let scripts = sh(&format!(
            "find {} -name '*.sbatch'",
            study.path().join(".nfslurm").display()
        ));
        assert!(scripts.trim().is_empty(), "{mode}: {scripts}");
        let states = study.unit_states();
        assert!(
            states
                .iter()
                .filter(|(k, _)| k.starts_with("bids/"))
                .all(|(_, s)| s == "waiting"),
            "{mode}: {states:?}"
        );
        // Fixed, it goes through at its first attempt.
        study.write("sbatch.sh.tera", &site_template("#SBATCH --nice=77\n"));
        study.ok(&["submit", "--pipeline", "bids"]);
        let runs = study.runs();
        assert_eq!(runs.len(), 2, "{mode}: {runs:#?}");
        assert!(runs.iter().all(|r| r["attempt"] == 1), "{mode}: {runs:#?}");
        study.ok(&["cancel", "--all"]);
    }
}

/// Without a cluster: `plan` says which units share an array and why the
/// others do not; `render` shows the array script with a pipeline's own
/// cluster in its directives and on the sbatch command line.
#[test]
fn plan_shows_arrays_split_by_directives_and_render_shows_the_array() {
    let study = site_study(
        "px",
        3,
        "arrays",
        "#SBATCH --nice={% if subject == \"px03\" %}10{% else %}77{% endif %}\n",
    );
    let config = std::fs::read_to_string(study.config_path()).unwrap();
    study.write(
        "nfslurm.yaml",
        &config.replacen(
            "  bids:\n    level: session\n",
            "  bids:\n    level: session\n    cluster: othercluster\n",
            1,
        ),
    );
    let plan = study.ok(&["plan", "--pipeline", "bids"]);
    assert!(
        plan.contains(
            "as 2 sbatch calls (arrays mode):\n  array of 2 `bids` units: bids/sub-px01/ses-1, bids/sub-px02/ses-1\n  job bids/sub-px03/ses-1 (its directives differ from the first `bids` submission's: `--nice=10` instead of `--nice=77`)\n"
        ),
        "{plan}"
    );
    let dry = study.ok(&["submit", "--dry-run", "--pipeline", "bids"]);
    assert!(dry.contains("as 2 sbatch calls"), "{dry}");

    let out = study.ok(&[
        "render",
        "--pipeline",
        "bids",
        "--participant",
        "px02",
        "--session",
        "1",
    ]);
    let (unit, array) = out
        .split_once(
            "#### nfslurm: in arrays mode the script above runs as task 2 of this array job",
        )
        .unwrap_or_else(|| panic!("{out}"));
    assert!(unit.contains("#SBATCH --clusters=othercluster"), "{unit}");
    for line in [
        "#SBATCH --array=1-2\n",
        "#SBATCH --nice=77\n",
        "#SBATCH --clusters=othercluster\n",
        "--kill-on-invalid-dep=yes --clusters=othercluster ",
        "  2) unit=bids/sub-px02/ses-1 ",
    ] {
        assert!(array.contains(line), "{line:?} in\n{array}");
    }
    // Per-task lines of the unit's script are not the array's.
    assert!(!array.contains("--job-name=nf-bids-px02-1"), "{array}");
    assert!(!array.contains("#SBATCH --comment"), "{array}");
    assert!(
        array.contains(&format!(
            "--job-name=nf-{}-bids",
            study.path().file_name().unwrap().to_string_lossy()
        )),
        "{array}"
    );
    // The odd one out goes as a single job, and render says so.
    let out = study.ok(&[
        "render",
        "--pipeline",
        "bids",
        "--participant",
        "px03",
        "--session",
        "1",
    ]);
    assert!(
        out.contains("#### nfslurm: in arrays mode `bids/sub-px03/ses-1` goes as a single job (its directives differ"),
        "{out}"
    );
}
