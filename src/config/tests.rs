//! Loading whole configs: values, defaults, and the exact error messages.

use std::path::{Path, PathBuf};

use super::*;
use crate::model::Level;

fn env(name: &str) -> Option<String> {
    match name {
        "USER" => Some("ada".to_string()),
        "HOME" => Some("/home/ada".to_string()),
        "STUDY" => Some("/data/study".to_string()),
        _ => None,
    }
}

fn load_at(text: &str, file: &str) -> Result<Config, ConfigError> {
    load_str_with_env(text, Path::new(file), &env)
}

fn ok(text: &str) -> Config {
    match load_at(text, "/study/nfslurm.yaml") {
        Ok(config) => config,
        Err(e) => panic!("config should load, got:\n{e}"),
    }
}

/// The error message and hint, as a user reads them.
fn err(text: &str) -> String {
    match load_at(text, "nfslurm.yaml") {
        Ok(_) => panic!("config should not load"),
        Err(e) => e.report(),
    }
}

const MINIMAL: &str = "version: 1\npaths:\n  dicom_root: dicom\n";

/// The documented example config, with the two pipelines it elides written out.
const REFERENCE_CONFIG: &str = r#"version: 1
site: generic              # bundled site config (site-configs/<name>.yaml) or a path
executor: slurm            # default; --executor overrides

paths:
  dicom_root: /data/incoming/dicom
  bids_root: /data/study/bids
  derivatives: /data/study/derivatives
  work_dir: /scratch/$USER/nfslurm
  state_dir: .nfslurm      # state.db, rendered scripts, job logs

discovery:
  pattern: '^(?P<scan_id>[A-Za-z0-9_]+)$'   # over session folder names
  mapping:
    file: mapping.csv      # columns below; a CSV export URL may come later
    scan_id_column: ScanID
    subject_column: SubjectCode
    session_column: SessionID   # optional
  validation:
    min_files: 10          # fewer DICOM files: invalid
    required_series:       # optional: series that must be present
      - { name: dwi, match: '(?i)dmri|dwi', min_files: 60 }
      - { name: t1w, match: '(?i)t1|mprage' }
  settle: 30m              # a folder modified more recently is still being copied: skip it

pipelines:
  bids:
    level: session
    container: /containers/heudiconv_1.3.2.sif
    command: >
      heudiconv --files {{ session.dicom_dir }} -s {{ subject.label }}
      -ss {{ session.label }} -f /heuristics/heuristic.py -c dcm2niix -b
      -o {{ paths.bids_root }} --overwrite
    binds: ["/data/heuristics:/heuristics:ro"]
    resources: { cpus: 2, mem: 8G, time: "02:00:00" }
  qsiprep:
    level: subject
    depends_on: [bids]
    container: /containers/qsiprep_1.0.1.sif
    command: >
      qsiprep {{ paths.bids_root }} {{ paths.derivatives }}/qsiprep participant
      --participant-label {{ subject.label }} --nthreads {{ resources.cpus }}
      --mem {{ resources.mem_mb }} -w {{ work_dir }}
    resources: { cpus: 16, mem: 64G, time: "24:00:00" }
    max_concurrent: 4      # at most this many of its jobs queued or running
    partition: bigmem      # any scheduler key of the site config may be overridden here
  qsirecon:
    level: session
    depends_on: [qsiprep]
    container: /containers/qsirecon_1.0.0.sif
    command: >
      qsirecon {{ paths.derivatives }}/qsiprep {{ paths.derivatives }}/qsirecon participant
      --participant-label {{ subject.label }} --session-id {{ session.label }}
      --recon-spec mrtrix_multishell_msmt_ACT-hsvs -w {{ work_dir }}
    resources: { cpus: 8, mem: 32G, time: "12:00:00" }
  qsiparc:
    level: session
    depends_on: [qsirecon]
    command: |
      n=${#files[@]}  # bash, not Tera
      echo "$HOME" {{ subject.label }} <# a Tera comment #>
    resources: { cpus: 1, mem: 4000M, time: 90 }

retry:
  max_attempts: 3
  initial_delay: 5m
  max_delay: 1h
  factor: 2
  on_oom:     { mem_factor: 1.5, max_mem: 256G }
  on_timeout: { time_factor: 1.5, max_time: "72:00:00" }
  infra_max: 5             # retries for node failures and lost jobs
"#;

#[test]
fn spec_config_loads() {
    let c = ok(REFERENCE_CONFIG);
    assert_eq!(c.file, PathBuf::from("/study/nfslurm.yaml"));
    assert_eq!(c.dir, PathBuf::from("/study"));
    assert_eq!(c.version, 1);
    assert_eq!(c.executor, ExecutorKind::Slurm);
    assert_eq!(c.site.name, "generic");
    assert_eq!(c.site.source, "bundled:generic");

    assert_eq!(c.paths.dicom_root, PathBuf::from("/data/incoming/dicom"));
    assert_eq!(c.paths.work_dir, PathBuf::from("/scratch/ada/nfslurm"));
    assert_eq!(c.paths.state_dir, PathBuf::from("/study/.nfslurm"));

    assert!(c.discovery.pattern.is_match("S1234_2"));
    assert_eq!(
        c.discovery.mapping.file,
        PathBuf::from("/study/mapping.csv")
    );
    assert_eq!(
        c.discovery.mapping.session_column.as_deref(),
        Some("SessionID")
    );
    assert_eq!(c.discovery.validation.min_files, 10);
    let series = &c.discovery.validation.required_series;
    assert_eq!(series.len(), 2);
    assert_eq!((series[0].name.as_str(), series[0].min_files), ("dwi", 60));
    assert_eq!((series[1].name.as_str(), series[1].min_files), ("t1w", 1));
    assert!(series[1].pattern.is_match("T1_MPRAGE"));
    assert_eq!(c.discovery.settle_s, 1800);

    let names: Vec<&str> = c.pipelines.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["bids", "qsiprep", "qsirecon", "qsiparc"]);

    let bids = c.pipeline("bids").unwrap();
    assert_eq!(bids.level, Level::Session);
    assert_eq!(
        bids.resources,
        Resources {
            cpus: 2,
            mem_mb: 8192,
            time_s: 7200,
            gpus: 0
        }
    );
    assert_eq!(bids.binds, ["/data/heuristics:/heuristics:ro"]);
    assert_eq!(
        bids.container.as_deref(),
        Some("/containers/heudiconv_1.3.2.sif")
    );
    assert!(
        bids.command
            .starts_with("heudiconv --files {{ session.dicom_dir }}")
    );
    assert!(!bids.command.ends_with('\n'));
    assert_eq!(bids.scheduler.partition.as_deref(), Some("normal"));
    assert_eq!(bids.max_attempts, 3);
    assert_eq!(bids.template, BUNDLED_TEMPLATE);

    let qsiprep = c.pipeline("qsiprep").unwrap();
    assert_eq!(qsiprep.level, Level::Subject);
    assert_eq!(qsiprep.depends_on, ["bids"]);
    assert_eq!(qsiprep.max_concurrent, Some(4));
    assert_eq!(qsiprep.scheduler.partition.as_deref(), Some("bigmem"));
    assert_eq!(qsiprep.resources.mem_mb, 65536);

    let qsiparc = c.pipeline("qsiparc").unwrap();
    assert_eq!(qsiparc.container, None);
    assert_eq!(qsiparc.resources.time_s, 90 * 60);
    assert_eq!(qsiparc.resources.mem_mb, 4000);
    // Commands are left to Tera and bash: no `$VAR` expansion.
    assert!(qsiparc.command.contains("n=${#files[@]}"));
    assert!(qsiparc.command.contains("\"$HOME\""));

    assert_eq!(c.retry.max_attempts, 3);
    assert_eq!(c.retry.initial_delay_s, 300);
    assert_eq!(c.retry.max_delay_s, 3600);
    assert_eq!(c.retry.factor, 2.0);
    assert_eq!(c.retry.max_mem_mb, 262_144);
    assert_eq!(c.retry.max_time_s, 72 * 3600);
    assert_eq!(c.retry.infra_max, 5);
    assert_eq!(c.site.scheduler.max_submitted, 2000);
}

#[test]
fn minimal_config_gets_every_default() {
    let c = ok(MINIMAL);
    assert_eq!(c.executor, ExecutorKind::Slurm);
    assert_eq!(c.site.name, "generic");
    assert_eq!(c.paths.dicom_root, PathBuf::from("/study/dicom"));
    assert_eq!(c.paths.bids_root, PathBuf::from("/study/bids"));
    assert_eq!(c.paths.derivatives, PathBuf::from("/study/derivatives"));
    assert_eq!(c.paths.state_dir, PathBuf::from("/study/.nfslurm"));
    assert_eq!(c.paths.work_dir, PathBuf::from("/study/.nfslurm/work"));
    assert_eq!(c.discovery.pattern.as_str(), DEFAULT_PATTERN);
    assert_eq!(
        c.discovery.mapping.file,
        PathBuf::from("/study/mapping.csv")
    );
    assert_eq!(c.discovery.mapping.scan_id_column, "ScanID");
    assert_eq!(c.discovery.mapping.subject_column, "SubjectCode");
    assert_eq!(c.discovery.mapping.session_column, None);
    assert_eq!(c.discovery.validation.min_files, 1);
    assert_eq!(c.discovery.settle_s, 1800);
    assert!(c.pipelines.is_empty());
    assert_eq!(
        c.retry,
        RetryPolicy {
            max_attempts: 3,
            initial_delay_s: 300,
            max_delay_s: 3600,
            factor: 2.0,
            jitter: 0.1,
            mem_factor: 1.5,
            max_mem_mb: 262_144,
            time_factor: 1.5,
            max_time_s: 259_200,
            infra_max: 5,
            lost_after_s: 600,
        }
    );
    let s = &c.site.scheduler;
    assert_eq!(s.max_submitted, 2000);
    assert_eq!(s.poll_interval_s, 30);
    assert!(!s.requeue);
    assert_eq!(s.sacct_chunk, 200);
    assert_eq!(s.submission, SubmissionMode::Arrays);
    assert!(c.local.cpus >= 1);
    assert!(c.local.mem_mb > 0);
}

#[test]
fn pipeline_defaults() {
    let c = ok(&format!(
        "{MINIMAL}pipelines:\n  a:\n    command: echo hi\n"
    ));
    let a = &c.pipelines[0];
    assert_eq!(a.level, Level::Session);
    assert_eq!(
        a.resources,
        Resources {
            cpus: 1,
            mem_mb: 1024,
            time_s: 3600,
            gpus: 0
        }
    );
    assert_eq!(a.max_concurrent, None);
    assert_eq!(a.max_attempts, 3);
    assert_eq!(a.container, None);
    assert!(a.depends_on.is_empty());
    assert_eq!(a.template_name, BUNDLED_TEMPLATE_NAME);
    assert_eq!(a.scheduler, c.site.scheduler);
}

#[test]
fn relative_paths_are_relative_to_the_config_file() {
    let text = "version: 1\npaths:\n  dicom_root: ./in/dicom\n  bids_root: ../shared/bids\n  \
                derivatives: ~/derivatives\n  state_dir: state\n\
                discovery:\n  mapping:\n    file: tables/map.csv\n";
    let c = ok(text);
    assert_eq!(c.paths.dicom_root, PathBuf::from("/study/in/dicom"));
    assert_eq!(c.paths.bids_root, PathBuf::from("/study/../shared/bids"));
    assert_eq!(c.paths.derivatives, PathBuf::from("/home/ada/derivatives"));
    assert_eq!(c.paths.work_dir, PathBuf::from("/study/state/work"));
    assert_eq!(
        c.discovery.mapping.file,
        PathBuf::from("/study/tables/map.csv")
    );
}

#[test]
fn vars_are_expanded_in_values_but_not_in_commands() {
    let text = "version: 1\npaths:\n  dicom_root: ${STUDY}/dicom\n  work_dir: /scratch/$USER/$$w\n  \
                bids_root: ${NOPE:-/fallback}/bids\n\
                pipelines:\n  a:\n    container: $STUDY/img.sif\n    binds: [\"$STUDY:/study\"]\n    \
                env: { OUT: \"${STUDY}/out\", LIT: \"a$$b\" }\n    \
                command: echo $USER ${#x[@]} $$ ${NOPE}\n";
    let c = ok(text);
    assert_eq!(c.paths.dicom_root, PathBuf::from("/data/study/dicom"));
    assert_eq!(c.paths.work_dir, PathBuf::from("/scratch/ada/$w"));
    assert_eq!(c.paths.bids_root, PathBuf::from("/fallback/bids"));
    let a = &c.pipelines[0];
    assert_eq!(a.container.as_deref(), Some("/data/study/img.sif"));
    assert_eq!(a.binds, ["/data/study:/study"]);
    assert_eq!(a.env["OUT"], "/data/study/out");
    assert_eq!(a.env["LIT"], "a$b");
    assert_eq!(a.command, "echo $USER ${#x[@]} $$ ${NOPE}");
}

#[test]
fn undefined_var_is_an_error() {
    insta::assert_snapshot!(
        "undefined_var",
        err("version: 1\npaths:\n  dicom_root: /data\n  work_dir: /scratch/$SCRATCH_USER/w\n")
    );
}

#[test]
fn undefined_var_in_a_list() {
    insta::assert_snapshot!(
        "undefined_var_in_list",
        err(&format!(
            "{MINIMAL}pipelines:\n  a:\n    command: x\n    binds:\n      - /a\n      - ${{DATA}}:/data\n"
        ))
    );
}

#[test]
fn unclosed_brace_is_an_error() {
    insta::assert_snapshot!(
        "unclosed_var",
        err("version: 1\npaths:\n  dicom_root: /data/${USER\n")
    );
}

#[test]
fn topological_order_keeps_config_order_among_ready_pipelines() {
    let text = format!(
        "{MINIMAL}pipelines:\n  report:\n    depends_on: [recon, prep]\n    command: r\n  \
         recon:\n    depends_on: prep\n    command: r\n  prep:\n    depends_on: [bids]\n    \
         command: p\n  bids:\n    command: b\n  other:\n    command: o\n"
    );
    let c = ok(&text);
    let names: Vec<&str> = c.pipelines.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["bids", "prep", "recon", "report", "other"]);
    assert_eq!(c.pipeline("report").unwrap().depends_on, ["recon", "prep"]);
}

#[test]
fn pipeline_overrides_scheduler_keys() {
    let text = format!(
        "{MINIMAL}scheduler:\n  account: lab42\n  qos: normal\n  max_submitted: 500\n\
         pipelines:\n  a:\n    command: x\n    partition: gpu\n    account: ~\n    \
         extra_directives: [\"--constraint=a100\"]\n    requeue: true\n    cluster: c2\n  \
         b:\n    command: y\n"
    );
    let c = ok(&text);
    assert_eq!(c.site.scheduler.account.as_deref(), Some("lab42"));
    assert_eq!(c.site.scheduler.max_submitted, 500);
    let a = c.pipeline("a").unwrap();
    assert_eq!(a.scheduler.partition.as_deref(), Some("gpu"));
    assert_eq!(a.scheduler.account, None);
    assert_eq!(a.scheduler.qos.as_deref(), Some("normal"));
    assert_eq!(a.scheduler.cluster.as_deref(), Some("c2"));
    assert_eq!(a.scheduler.extra_directives, ["--constraint=a100"]);
    assert!(a.scheduler.requeue);
    assert_eq!(a.scheduler.max_submitted, 500);
    let b = c.pipeline("b").unwrap();
    assert_eq!(b.scheduler, c.site.scheduler);
    assert_eq!(b.scheduler.partition.as_deref(), Some("normal"));
}

#[test]
fn study_scheduler_block_takes_every_site_key() {
    let c = ok(&format!(
        "{MINIMAL}scheduler:\n  partition: p\n  account: a\n  qos: q\n  cluster: c\n  \
         extra_directives: [--x]\n  max_submitted: 10\n  poll_interval: 1m\n  requeue: true\n  \
         sacct_chunk: 50\n  submission: jobs\n"
    ));
    let s = &c.site.scheduler;
    assert_eq!(
        (
            s.partition.as_deref(),
            s.account.as_deref(),
            s.qos.as_deref(),
            s.cluster.as_deref()
        ),
        (Some("p"), Some("a"), Some("q"), Some("c"))
    );
    assert_eq!(s.extra_directives, ["--x"]);
    assert_eq!(
        (s.max_submitted, s.poll_interval_s, s.requeue, s.sacct_chunk),
        (10, 60, true, 50)
    );
}

#[test]
fn submission_arrays_is_accepted() {
    let c = ok(&format!("{MINIMAL}scheduler:\n  submission: arrays\n"));
    assert_eq!(c.site.scheduler.submission, SubmissionMode::Arrays);
}

#[test]
fn array_job_names_say_study_and_pipeline_and_are_configurable() {
    let c = ok(MINIMAL);
    assert_eq!(
        crate::templating::array_job_name(&c.site.scheduler.array_job_name, "study", "qsiprep")
            .unwrap(),
        "nf-study-qsiprep"
    );
    let c = ok(&format!(
        "{MINIMAL}scheduler:\n  array_job_name: \"{{{{ pipeline }}}}@{{{{ study }}}}\"\n"
    ));
    assert_eq!(
        c.site.scheduler.array_job_name,
        "{{ pipeline }}@{{ study }}"
    );
    let e = err(&format!(
        "{MINIMAL}scheduler:\n  array_job_name: \"nf-{{{{ subject }}}}\"\n"
    ));
    assert!(e.contains("nfslurm.yaml:5:19"), "{e}");
    assert!(e.contains("not a usable job name template"), "{e}");
    assert!(e.contains("subject"), "{e}");
}

#[test]
fn local_site_and_executor() {
    let c = ok(&format!(
        "{MINIMAL}site: local\nexecutor: local\nlocal: {{ cpus: 2, mem: 3G }}\n"
    ));
    assert_eq!(c.executor, ExecutorKind::Local);
    assert_eq!(c.site.name, "local");
    assert_eq!(c.site.container.runtime, ContainerRuntime::None);
    assert_eq!(c.site.scheduler.partition, None);
    assert_eq!(c.site.scheduler.poll_interval_s, 2);
    assert_eq!(
        c.local,
        LocalLimits {
            cpus: 2,
            mem_mb: 3072,
            slots: 2,
        }
    );
}

#[test]
fn site_by_path_with_its_own_template() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sites")).unwrap();
    std::fs::write(
        dir.path().join("sites/hpc.yaml"),
        "scheduler:\n  partition: cpu\n  account: $USER\ncontainer:\n  runtime: singularity\n  \
         binds: [/data]\n  env: { TEMPLATEFLOW_HOME: /data/tf }\nmodules: [singularity/3.8]\n\
         template: job.tera\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("sites/job.tera"),
        "#!/bin/bash\n{{ command }}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("own.tera"), "#!/bin/sh\n{{ command }}\n").unwrap();
    let file = dir.path().join("nfslurm.yaml");
    let text = format!(
        "{MINIMAL}site: sites/hpc.yaml\npipelines:\n  a:\n    command: x\n    binds: [/extra, /data]\n    \
         env: {{ TEMPLATEFLOW_HOME: /mine, B: b }}\n    modules: [fsl]\n  \
         b:\n    command: y\n    template: own.tera\n"
    );
    let c = load_str_with_env(&text, &file, &env).unwrap();
    assert_eq!(c.site.name, "hpc");
    assert_eq!(
        c.site.source,
        dir.path().join("sites/hpc.yaml").display().to_string()
    );
    assert_eq!(c.site.scheduler.partition.as_deref(), Some("cpu"));
    assert_eq!(c.site.scheduler.account.as_deref(), Some("ada"));
    assert_eq!(c.site.scheduler.max_submitted, 2000);
    assert_eq!(c.site.container.runtime, ContainerRuntime::Singularity);
    assert_eq!(c.site.template, "#!/bin/bash\n{{ command }}\n");
    let a = c.pipeline("a").unwrap();
    assert_eq!(a.binds, ["/data", "/extra"]);
    assert_eq!(a.env["TEMPLATEFLOW_HOME"], "/mine");
    assert_eq!(a.env["B"], "b");
    assert_eq!(a.modules, ["singularity/3.8", "fsl"]);
    assert_eq!(a.template, c.site.template);
    let b = c.pipeline("b").unwrap();
    assert_eq!(b.template, "#!/bin/sh\n{{ command }}\n");
    assert!(b.template_name.ends_with("own.tera"));
    assert_ne!(a.config_hash, b.config_hash);
}

#[test]
fn site_file_errors_name_the_site_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("site.yaml"),
        "scheduler:\n  partition: cpu\n  max_submited: 10\n",
    )
    .unwrap();
    let file = dir.path().join("nfslurm.yaml");
    let e = load_str_with_env(&format!("{MINIMAL}site: ./site.yaml\n"), &file, &env).unwrap_err();
    let d = e.diagnostic().unwrap();
    assert_eq!(d.file, dir.path().join("site.yaml").display().to_string());
    assert_eq!((d.line, d.column), (Some(3), Some(3)));
    assert_eq!(d.key.as_deref(), Some("scheduler.max_submited"));
    assert_eq!(d.message, "unknown key `max_submited` at `scheduler`");
    assert_eq!(d.hint.as_deref(), Some("did you mean `max_submitted`?"));
}

#[test]
fn missing_site_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nfslurm.yaml");
    let e = load_str_with_env(&format!("{MINIMAL}site: ./nope.yaml\n"), &file, &env).unwrap_err();
    let d = e.diagnostic().unwrap();
    assert_eq!((d.line, d.key.as_deref()), (Some(4), Some("site")));
    assert!(
        d.message.starts_with("cannot read the site config"),
        "{}",
        d.message
    );
}

#[test]
fn unknown_bundled_site() {
    insta::assert_snapshot!(
        "unknown_bundled_site",
        err(&format!("{MINIMAL}site: generc\n"))
    );
}

#[test]
fn bad_site_template_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t.tera"), "#!/bin/bash\n{% if x %}\n").unwrap();
    let file = dir.path().join("nfslurm.yaml");
    let text = format!("{MINIMAL}pipelines:\n  a:\n    command: x\n    template: t.tera\n");
    let e = load_str_with_env(&text, &file, &env).unwrap_err();
    let d = e.diagnostic().unwrap();
    assert_eq!(d.key.as_deref(), Some("pipelines.a.template"));
    assert_eq!(d.line, Some(7));
    assert!(d.message.contains("is not valid Tera"), "{}", d.message);
}

#[test]
fn config_hash_follows_command_container_template_not_resources() {
    let base = |command: &str, container: &str, resources: &str| {
        let text = format!(
            "{MINIMAL}pipelines:\n  a:\n    command: {command}\n{container}    resources: {resources}\n"
        );
        ok(&text).pipelines[0].config_hash.clone()
    };
    let h = base("echo 1", "", "{ cpus: 1 }");
    assert_eq!(h.len(), 64);
    assert!(h.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(h, base("echo 1", "", "{ cpus: 8, mem: 64G, time: 2h }"));
    assert_ne!(h, base("echo 2", "", "{ cpus: 1 }"));
    assert_ne!(
        h,
        base("echo 1", "    container: /img.sif\n", "{ cpus: 1 }")
    );
    assert_eq!(h, config_hash("echo 1", None, BUNDLED_TEMPLATE));
    assert_ne!(h, config_hash("echo 1", None, "#!/bin/sh\n"));
}

#[test]
fn x_keys_hold_anchors_for_merges() {
    let text = format!(
        "{MINIMAL}x-big: &big\n  resources: {{ cpus: 16, mem: 64G }}\n  partition: bigmem\n\
         pipelines:\n  a:\n    <<: *big\n    command: x\n  b:\n    <<: *big\n    partition: fat\n    command: y\n"
    );
    let c = ok(&text);
    assert_eq!(c.pipelines[0].resources.cpus, 16);
    assert_eq!(
        c.pipelines[0].scheduler.partition.as_deref(),
        Some("bigmem")
    );
    assert_eq!(c.pipelines[1].scheduler.partition.as_deref(), Some("fat"));
}

#[test]
fn load_reads_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nfslurm.yaml");
    std::fs::write(&file, MINIMAL).unwrap();
    let c = load(&file).unwrap();
    assert_eq!(c.file, file);
    assert_eq!(c.paths.dicom_root, dir.path().join("dicom"));

    let missing = dir.path().join("missing.yaml");
    let e = load(&missing).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
    assert_eq!(
        e.to_string(),
        format!(
            "cannot read `{}`: No such file or directory (os error 2)",
            missing.display()
        )
    );
}

// ---- find_config ----

#[test]
fn find_config_prefers_explicit_then_env_then_upward_search() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let deep = root.join("a/b/c");
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(root.join("nfslurm.yaml"), MINIMAL).unwrap();
    std::fs::write(root.join("a/other.yaml"), MINIMAL).unwrap();

    // Upward search from a subfolder.
    assert_eq!(
        find_config_with(None, None, &deep).unwrap(),
        root.join("nfslurm.yaml")
    );
    // `$NFSLURM_CONFIG`, relative to the working directory.
    assert_eq!(
        find_config_with(None, Some(Path::new("../../other.yaml")), &deep).unwrap(),
        root.join("a/b/c/../../other.yaml")
    );
    // `--config` wins, and a folder means its nfslurm.yaml.
    assert_eq!(
        find_config_with(Some(root), Some(Path::new("nope.yaml")), &deep).unwrap(),
        root.join("nfslurm.yaml")
    );
}

#[test]
fn find_config_explains_what_it_tried() {
    let dir = tempfile::tempdir().unwrap();
    let e = find_config_with(None, None, dir.path()).unwrap_err();
    let text = e
        .report()
        .replace(&dir.path().display().to_string(), "[TMP]");
    insta::assert_snapshot!("find_config_not_found", text);

    let e = find_config_with(Some(Path::new("x.yaml")), None, dir.path()).unwrap_err();
    let text = e
        .report()
        .replace(&dir.path().display().to_string(), "[TMP]");
    insta::assert_snapshot!("find_config_explicit_missing", text);
}

// ---- error messages ----

#[test]
fn unknown_key_in_a_pipeline() {
    let text = format!(
        "{MINIMAL}pipelines:\n  bids:\n    command: heudiconv\n    resorces: {{ cpus: 2 }}\n"
    );
    insta::assert_snapshot!("unknown_key_pipeline", err(&text));
}

#[test]
fn unknown_key_at_top_level() {
    insta::assert_snapshot!(
        "unknown_key_top",
        err(&format!("{MINIMAL}pipeline:\n  a: {{}}\n"))
    );
}

#[test]
fn unknown_key_without_a_close_match_lists_the_keys() {
    let text = format!(
        "{MINIMAL}pipelines:\n  a:\n    command: x\n    resources: {{ cpus: 2, ram: 8G }}\n"
    );
    insta::assert_snapshot!("unknown_key_resources", err(&text));
}

#[test]
fn unknown_key_in_a_list_item() {
    let text = format!(
        "{MINIMAL}discovery:\n  validation:\n    required_series:\n      - name: dwi\n        match: dwi\n        min_file: 3\n"
    );
    insta::assert_snapshot!("unknown_key_series", err(&text));
}

#[test]
fn unknown_dependency() {
    let text = format!(
        "{MINIMAL}pipelines:\n  bids:\n    command: b\n  qsiprep:\n    depends_on: [bidz]\n    command: q\n  \
         qsirecon:\n    depends_on: [qsiprep]\n    command: r\n"
    );
    insta::assert_snapshot!("unknown_dependency", err(&text));
}

#[test]
fn self_dependency() {
    let text = format!("{MINIMAL}pipelines:\n  a:\n    depends_on:\n      - a\n    command: x\n");
    insta::assert_snapshot!("self_dependency", err(&text));
}

#[test]
fn dependency_cycle() {
    let text = format!(
        "{MINIMAL}pipelines:\n  bids:\n    command: b\n  qsiprep:\n    depends_on: [bids, qsirecon]\n    command: q\n  \
         qsirecon:\n    depends_on: [qsiprep]\n    command: r\n"
    );
    insta::assert_snapshot!("dependency_cycle", err(&text));
}

#[test]
fn bad_regex() {
    let text =
        "version: 1\npaths:\n  dicom_root: /d\ndiscovery:\n  pattern: '^(?P<scan_id>[A-Z+$'\n";
    insta::assert_snapshot!("bad_regex", err(text));
}

#[test]
fn bad_series_regex() {
    let text = format!(
        "{MINIMAL}discovery:\n  validation:\n    required_series:\n      - {{ name: dwi, match: '(?i)dwi(' }}\n"
    );
    insta::assert_snapshot!("bad_series_regex", err(&text));
}

#[test]
fn bad_duration() {
    let text =
        format!("{MINIMAL}pipelines:\n  a:\n    command: x\n    resources:\n      time: 2 hrs 5\n");
    insta::assert_snapshot!("bad_duration", err(&text));
}

#[test]
fn bad_memory() {
    let text =
        format!("{MINIMAL}pipelines:\n  qsiprep:\n    command: x\n    resources: {{ mem: 64X }}\n");
    insta::assert_snapshot!("bad_memory", err(&text));
}

#[test]
fn zero_memory() {
    let text = format!("{MINIMAL}pipelines:\n  a:\n    command: x\n    resources: {{ mem: 0 }}\n");
    insta::assert_snapshot!("zero_memory", err(&text));
}

#[test]
fn bad_level() {
    let text = format!("{MINIMAL}pipelines:\n  a:\n    level: participant\n    command: x\n");
    insta::assert_snapshot!("bad_level", err(&text));
}

#[test]
fn missing_version() {
    insta::assert_snapshot!("missing_version", err("paths:\n  dicom_root: /d\n"));
}

#[test]
fn wrong_version() {
    insta::assert_snapshot!(
        "wrong_version",
        err("version: 2\npaths:\n  dicom_root: /d\n")
    );
}

#[test]
fn missing_dicom_root() {
    insta::assert_snapshot!(
        "missing_dicom_root",
        err("version: 1\npaths:\n  bids_root: /b\n")
    );
}

#[test]
fn missing_paths() {
    insta::assert_snapshot!("missing_paths", err("version: 1\n"));
}

#[test]
fn missing_command() {
    let text = format!("{MINIMAL}pipelines:\n  a:\n    level: session\n");
    insta::assert_snapshot!("missing_command", err(&text));
}

#[test]
fn command_is_not_valid_tera() {
    let text = format!(
        "{MINIMAL}pipelines:\n  a:\n    command: |\n      echo start\n      echo {{{{ subject.label }}\n"
    );
    insta::assert_snapshot!("bad_tera_command", err(&text));
}

#[test]
fn bad_pipeline_name() {
    let text = format!("{MINIMAL}pipelines:\n  QSIPrep:\n    command: x\n");
    insta::assert_snapshot!("bad_pipeline_name", err(&text));
}

#[test]
fn wrong_type() {
    let text =
        format!("{MINIMAL}pipelines:\n  a:\n    command: x\n    resources: {{ cpus: many }}\n");
    insta::assert_snapshot!("wrong_type_cpus", err(&text));
}

#[test]
fn list_where_a_mapping_belongs() {
    let text = format!("{MINIMAL}pipelines:\n  a:\n    command: x\n    resources: [1, 2]\n");
    insta::assert_snapshot!("list_for_mapping", err(&text));
}

#[test]
fn bad_executor() {
    insta::assert_snapshot!("bad_executor", err(&format!("{MINIMAL}executor: slurmm\n")));
}

#[test]
fn yaml_syntax_error() {
    insta::assert_snapshot!(
        "yaml_syntax",
        err("version: 1\npaths:\n  dicom_root: [/d\n  bids_root: /b\n")
    );
}

#[test]
fn empty_file() {
    insta::assert_snapshot!("empty_file", err("# nothing yet\n"));
}

#[test]
fn duplicate_pipeline() {
    let text = format!("{MINIMAL}pipelines:\n  a:\n    command: x\n  a:\n    command: y\n");
    insta::assert_snapshot!("duplicate_pipeline", err(&text));
}

#[test]
fn bad_retry_values() {
    insta::assert_snapshot!(
        "bad_jitter",
        err(&format!("{MINIMAL}retry:\n  jitter: 1.5\n"))
    );
    insta::assert_snapshot!(
        "bad_max_delay",
        err(&format!(
            "{MINIMAL}retry:\n  initial_delay: 2h\n  max_delay: 1h\n"
        ))
    );
}

#[test]
fn root_must_be_a_mapping() {
    insta::assert_snapshot!("root_not_mapping", err("- version: 1\n"));
}

#[test]
fn empty_pipeline_block() {
    insta::assert_snapshot!(
        "empty_pipeline",
        err(&format!(
            "{MINIMAL}pipelines:\n  a:\n  b:\n    command: x\n"
        ))
    );
}

#[test]
fn settle_accepts_zero_and_required_series_defaults() {
    let c = ok(&format!(
        "{MINIMAL}discovery:\n  settle: 0\n  validation:\n    required_series:\n      - {{ name: t1w, match: t1 }}\n"
    ));
    assert_eq!(c.discovery.settle_s, 0);
    assert_eq!(c.discovery.validation.required_series[0].min_files, 1);
}

#[test]
fn bad_env_name() {
    let text = format!("{MINIMAL}pipelines:\n  a:\n    command: x\n    env: {{ 1BAD: x }}\n");
    insta::assert_snapshot!("bad_env_name", err(&text));
}

#[test]
fn notifications_default_to_no_channel_and_every_event() {
    let n = ok(MINIMAL).notifications;
    assert!(!n.enabled());
    assert_eq!(n, Notifications::default());
    assert_eq!(n.events, NotifyEvent::ALL.to_vec());
    assert_eq!(n.unreachable_after, 3);
}

#[test]
fn notifications_block_is_read() {
    let c = ok(&format!(
        "{MINIMAL}notifications:\n  webhook: https://hooks.example.org/$USER\n  command: mail -s \"$1\" $USER@example.org\n  events: [failed, unreachable]\n  unreachable_after: 5\n"
    ));
    let n = c.notifications;
    assert!(n.enabled());
    // The URL is expanded; the command is the shell's, kept as written.
    assert_eq!(n.webhook.as_deref(), Some("https://hooks.example.org/ada"));
    assert_eq!(
        n.command.as_deref(),
        Some("mail -s \"$1\" $USER@example.org")
    );
    assert_eq!(
        n.events,
        vec![NotifyEvent::Failed, NotifyEvent::Unreachable]
    );
    assert!(!n.wants(NotifyEvent::Finished));
    assert_eq!(n.unreachable_after, 5);
    // A single event is a list of one.
    let c = ok(&format!(
        "{MINIMAL}notifications:\n  command: cat\n  events: failed\n"
    ));
    assert_eq!(c.notifications.events, vec![NotifyEvent::Failed]);
}

#[test]
fn bad_notifications() {
    insta::assert_snapshot!(
        "bad_notify_event",
        err(&format!(
            "{MINIMAL}notifications:\n  command: cat\n  events: [failed, finshed]\n"
        ))
    );
    insta::assert_snapshot!(
        "bad_notify_webhook",
        err(&format!(
            "{MINIMAL}notifications:\n  webhook: hooks.example.org/x\n"
        ))
    );
    insta::assert_snapshot!(
        "bad_notify_key",
        err(&format!("{MINIMAL}notifications:\n  webhok: https://x\n"))
    );
    insta::assert_snapshot!(
        "bad_notify_unreachable_after",
        err(&format!(
            "{MINIMAL}notifications:\n  command: cat\n  unreachable_after: 0\n"
        ))
    );
}

/// Issue 9: `ls "{{ session.dicom_dir }}"` ran a folder named
/// `X$(touch PWNED)`; the loader refuses it, naming the place and the fix.
#[test]
fn folder_name_inside_double_quotes_is_refused() {
    insta::assert_snapshot!(
        "outside_value_in_double_quotes",
        err(&format!(
            "{MINIMAL}discovery:\n  pattern: '^(?P<scan_id>.+)$'\npipelines:\n  bids:\n    command: |\n      echo start\n      ls \"{{{{ session.dicom_dir }}}}\"\n"
        ))
    );
}

#[test]
fn outside_values_in_backticks_substitutions_and_heredocs_are_refused() {
    for (command, inside) in [
        ("echo `ls {{ session.dicom_dir }}`", "backticks"),
        ("n=$(ls {{ session.dicom_dir }} | wc -l)", "`$(...)`"),
        (
            "cat <<EOF\n      {{ session.scan_id }}\n      EOF",
            "a heredoc",
        ),
        (
            "{% for s in sessions %}echo \"{{ s.scan_id }}\"{% endfor %}",
            "double quotes",
        ),
        ("eval {{ session.scan_id }}", "as an argument of `eval`"),
        ("bash -c {{ session.scan_id }}", "as a shell's `-c` code"),
        ("{{ session.dicom_dir }}/run.sh", "as the command's name"),
    ] {
        let text = format!("{MINIMAL}pipelines:\n  bids:\n    command: |\n      {command}\n");
        let message = err(&text);
        let place = if inside.starts_with("as ") {
            inside.to_string()
        } else {
            format!("inside {inside}")
        };
        assert!(
            message.contains(&format!("{place}, where a folder name could run as code")),
            "{command}: {message}"
        );
        assert!(
            message.contains("hint: write it as a word of its own"),
            "{message}"
        );
    }
    // The same values as plain words load.
    ok(&format!(
        "{MINIMAL}pipelines:\n  bids:\n    command: |\n      dir={{{{ session.dicom_dir }}}}\n      ls \"$dir\" {{{{ session.scan_id }}}}\n"
    ));
}

#[test]
fn a_script_template_quoting_the_command_in_double_quotes_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("job.sh.tera"),
        "#!/bin/bash\nbash -c \"{{ command }}\"\n",
    )
    .unwrap();
    let file = dir.path().join("nfslurm.yaml");
    let text = "version: 1\npaths:\n  dicom_root: dicom\npipelines:\n  a:\n    command: echo\n    template: job.sh.tera\n";
    let e = load_str_with_env(text, &file, &env).unwrap_err().report();
    assert!(
        e.contains("puts `{{ command }}` inside double quotes at") && e.contains("job.sh.tera:2"),
        "{e}"
    );
}

mod fuzz {
    //! Nothing the loader is given makes it panic: any text, and a valid
    //! config with odd values put where values go.

    use proptest::prelude::*;

    use super::*;

    /// Values a hand-edited config may hold: empty, huge, negative, odd
    /// units, control characters, templates, YAML structure.
    fn odd_value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just("99999999999999999999".to_string()),
            Just("-1".to_string()),
            Just("0".to_string()),
            Just("1e309".to_string()),
            Just("18446744073709551616".to_string()),
            Just("999999999999T".to_string()),
            Just("99999999:00:00".to_string()),
            Just("9999999999d".to_string()),
            Just("[]".to_string()),
            Just("{}".to_string()),
            Just("~".to_string()),
            Just("'{{ x'".to_string()),
            Just("\"\\u0000\\u001b\"".to_string()),
            "[ -~]{0,40}",
            "\\PC{0,20}",
            "[0-9]{1,30}[KMGTPkmgtp]?",
            "[0-9:\\-]{1,20}",
        ]
    }

    const TEMPLATE: &str = "version: 1\nsite: local\npaths:\n  dicom_root: dicom\ndiscovery:\n  pattern: @P\n  settle: @S\n  validation: { min_files: @F }\npipelines:\n  a:\n    command: @C\n    resources: { cpus: @U, mem: @M, time: @T, gpus: @G }\n    max_concurrent: @N\nretry:\n  max_attempts: @A\n  initial_delay: @D\n  factor: @X\n";

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_text_loads_or_errors(text in "\\PC{0,400}") {
            let _ = load_at(&text, "nfslurm.yaml");
        }

        #[test]
        fn odd_values_load_or_error_with_a_location(values in proptest::collection::vec(odd_value(), 13)) {
            let mut text = TEMPLATE.to_string();
            for (key, value) in ["@P", "@S", "@F", "@C", "@U", "@M", "@T", "@G", "@N", "@A", "@D", "@X"].iter().zip(&values) {
                text = text.replacen(key, value, 1);
            }
            let loaded = load_at(&text, "nfslurm.yaml");
            if let Ok(c) = &loaded {
                for p in &c.pipelines {
                    let r = &p.resources;
                    prop_assert!(r.cpus >= 1 && r.cpus <= crate::config::units::MAX_CPUS);
                    prop_assert!(r.gpus <= crate::config::units::MAX_GPUS);
                    prop_assert!(r.mem_mb >= 1 && r.mem_mb <= crate::config::units::MAX_MEM_MB);
                    prop_assert!(r.time_s >= 1 && r.time_s <= crate::config::units::MAX_TIME_S);
                }
            }
            if let Err(e) = loaded {
                let report = e.report();
                prop_assert!(report.starts_with("nfslurm.yaml"), "{}", report);
                prop_assert!(!report.lines().next().unwrap_or("").ends_with('.'), "{}", report);
            }
        }
    }
}

/// Issue 9: `cpus: 99999999999999999999` said "whole number".
#[test]
fn resources_have_upper_bounds() {
    let res = |r: &str| {
        err(&format!(
            "{MINIMAL}pipelines:\n  a:\n    command: x\n    resources: {{ {r} }}\n"
        ))
    };
    insta::assert_snapshot!(
        "resources_upper_bounds",
        [
            res("cpus: 99999999999999999999"),
            res("cpus: 5000"),
            res("gpus: 65"),
            res("mem: 65T"),
            res("mem: 99999999999999999999999P"),
            res("time: 366d"),
            res("time: \"9000:00:00\""),
        ]
        .join("\n\n")
    );
    // The bounds themselves load.
    let c = ok(&format!(
        "{MINIMAL}pipelines:\n  a:\n    command: x\n    resources: {{ cpus: 4096, gpus: 64, mem: 64T, time: 365d }}\n"
    ));
    let r = &c.pipelines[0].resources;
    assert_eq!(
        (r.cpus, r.gpus, r.mem_mb, r.time_s),
        (4096, 64, 64 * 1024 * 1024, 365 * 86_400)
    );
    assert!(
        err(&format!(
            "{MINIMAL}retry:\n  on_timeout: {{ max_time: 400d }}\n"
        ))
        .contains("more than the 365 days nfslurm accepts")
    );
}
