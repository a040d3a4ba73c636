//! Rendering tests. Snapshots live in `src/render/snapshots/`; Apptainer
//! cannot run here, so its command line is checked as text, and scripts are
//! executed for real only with `container.runtime: none`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use regex::Regex;

use super::*;
use crate::config::{
    ContainerRuntime, ContainerSettings, Discovery, LocalLimits, MappingConfig, Paths, RetryPolicy,
    Scheduler, SiteConfig, SubmissionMode, Validation,
};

const TEMPLATE: &str = include_str!("../../templates/sbatch.sh.tera");

const BIDS_COMMAND: &str = "heudiconv --files {{ session.dicom_dir }} -s {{ subject.label }} \
-ss {{ session.label }} -f /heuristics/heuristic.py -c dcm2niix -b \
-o {{ paths.bids_root }} --overwrite\n";

const QSIPREP_COMMAND: &str = r#"echo "sub-{{ subject.label }}: {{ sessions | length }} sessions"
{% for s in sessions -%}
test -d {{ s.dicom_dir }}  # {{ s.bids }}, scan {{ s.scan_id }}
{% endfor -%}
qsiprep {{ paths.bids_root }} {{ paths.derivatives }}/qsiprep participant \
  --participant-label {{ subject.label }} --nthreads {{ resources.cpus }} \
  --mem {{ resources.mem_mb }} -w {{ work_dir }}
"#;

fn label(s: &str) -> Label {
    Label::new(s).unwrap()
}

fn scheduler() -> Scheduler {
    Scheduler {
        partition: Some("normal".to_string()),
        account: None,
        qos: None,
        cluster: None,
        extra_directives: vec![],
        max_submitted: 2000,
        poll_interval_s: 30,
        requeue: false,
        sacct_chunk: 200,
        submission: SubmissionMode::Jobs,
        array_job_name: crate::render::DEFAULT_ARRAY_JOB_NAME.to_string(),
        tool_timeout_s: 120,
    }
}

fn pipeline(name: &str, level: Level, command: &str) -> Pipeline {
    let mut env = BTreeMap::new();
    env.insert(
        "TEMPLATEFLOW_HOME".to_string(),
        "/data/templateflow".to_string(),
    );
    Pipeline {
        name: name.to_string(),
        level,
        enabled: true,
        alert_patterns: Vec::new(),
        depends_on: vec![],
        container: Some(format!("/containers/{name}_1.0.sif")),
        command: command.to_string(),
        binds: vec!["/data".to_string(), "/scratch".to_string()],
        env,
        resources: Resources {
            cpus: 2,
            mem_mb: 8192,
            time_s: 7200,
            gpus: 0,
        },
        max_concurrent: None,
        scheduler: scheduler(),
        modules: vec![],
        max_attempts: 3,
        template_name: "bundled:sbatch.sh.tera".to_string(),
        template: TEMPLATE.to_string(),
        config_hash: "0".to_string(),
        config_hash_aliases: Vec::new(),
    }
}

/// A config as the loader would produce it: the user guide's `bids` and `qsiprep`.
fn config(runtime: ContainerRuntime) -> Config {
    let mut bids = pipeline("bids", Level::Session, BIDS_COMMAND);
    bids.binds
        .push("/data/heuristics:/heuristics:ro".to_string());
    let mut qsiprep = pipeline("qsiprep", Level::Subject, QSIPREP_COMMAND);
    qsiprep.depends_on = vec!["bids".to_string()];
    qsiprep.resources = Resources {
        cpus: 16,
        mem_mb: 65536,
        time_s: 86_400,
        gpus: 0,
    };
    qsiprep.scheduler.partition = Some("bigmem".to_string());
    Config {
        file: PathBuf::from("/data/study/nfslurm.yaml"),
        dir: PathBuf::from("/data/study"),
        version: 1,
        executor: ExecutorKind::Slurm,
        site: SiteConfig {
            name: "generic".to_string(),
            source: "bundled:generic".to_string(),
            scheduler: scheduler(),
            container: ContainerSettings {
                runtime,
                options: vec!["--cleanenv".to_string(), "--containall".to_string()],
                binds: vec!["/data".to_string(), "/scratch".to_string()],
                env: BTreeMap::new(),
            },
            modules: vec![],
            template_name: "bundled:sbatch.sh.tera".to_string(),
            template: TEMPLATE.to_string(),
        },
        paths: Paths {
            dicom_root: PathBuf::from("/data/incoming/dicom"),
            bids_root: PathBuf::from("/data/study/bids"),
            derivatives: PathBuf::from("/data/study/derivatives"),
            work_dir: PathBuf::from("/scratch/alice/nfslurm"),
            state_dir: PathBuf::from("/data/study/.nfslurm"),
        },
        discovery: Discovery {
            pattern: Regex::new("^(?P<scan_id>[A-Za-z0-9_]+)$").unwrap(),
            mapping: MappingConfig {
                file: PathBuf::from("/data/study/mapping.csv"),
                scan_id_column: "ScanID".to_string(),
                subject_column: "SubjectCode".to_string(),
                session_column: None,
                scan_id_from: Default::default(),
            },
            validation: Validation {
                min_files: 10,
                required_series: vec![],
            },
            settle_s: 1800,
            dicom: Default::default(),
        },
        pipelines: vec![bids, qsiprep],
        retry: RetryPolicy {
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
        },
        local: LocalLimits {
            cpus: 2,
            mem_mb: 4096,
            slots: 2,
        },
        notifications: Default::default(),
        housekeeping: Default::default(),
    }
}

fn sessions() -> Vec<SessionInfo> {
    vec![
        SessionInfo {
            label: label("1"),
            scan_id: "SCAN0001".to_string(),
            dicom_dir: PathBuf::from("/data/incoming/dicom/SCAN0001"),
        },
        SessionInfo {
            label: label("2"),
            scan_id: "SCAN0042".to_string(),
            dicom_dir: PathBuf::from("/data/incoming/dicom/SCAN0042"),
        },
    ]
}

/// Renders one unit of `cfg`: session 1 of subject 01 for session-level
/// pipelines, subject 01 for subject-level ones.
struct Unit {
    key: UnitKey,
    sessions: Vec<SessionInfo>,
    output: PathBuf,
    work_dir: PathBuf,
}

impl Unit {
    fn new(cfg: &Config, pipeline: &str) -> Unit {
        let p = cfg.pipeline(pipeline).unwrap();
        let session = (p.level == Level::Session).then(|| label("1"));
        let key = UnitKey::new(pipeline, &label("01"), session.as_ref());
        let output = cfg
            .paths
            .state_dir
            .join("logs")
            .join(pipeline)
            .join(key.dir_name())
            .join("attempt-1.out");
        let work_dir = work_dir_for(cfg, &key);
        Unit {
            key,
            sessions: sessions(),
            output,
            work_dir,
        }
    }

    fn input<'a>(&'a self, cfg: &'a Config) -> ScriptInput<'a> {
        let pipeline = cfg.pipeline(&self.key.pipeline).unwrap();
        ScriptInput {
            config: cfg,
            pipeline,
            unit: &self.key,
            session: self.key.session.as_ref().map(|_| &self.sessions[0]),
            subject_sessions: &self.sessions,
            resources: &pipeline.resources,
            attempt: 1,
            token: "nf-7f3a9c2e",
            output_path: &self.output,
            work_dir: &self.work_dir,
            executor: ExecutorKind::Slurm,
        }
    }
}

fn script(cfg: &Config, pipeline: &str) -> String {
    let unit = Unit::new(cfg, pipeline);
    Renderer::new(cfg)
        .unwrap()
        .render_script(&unit.input(cfg))
        .unwrap()
}

#[test]
fn script_with_apptainer() {
    let cfg = config(ContainerRuntime::Apptainer);
    insta::assert_snapshot!("apptainer_session_unit", script(&cfg, "bids"));
}

#[test]
fn script_with_singularity() {
    let cfg = config(ContainerRuntime::Singularity);
    insta::assert_snapshot!("singularity_session_unit", script(&cfg, "bids"));
}

#[test]
fn script_with_runtime_none() {
    let cfg = config(ContainerRuntime::None);
    insta::assert_snapshot!("runtime_none_session_unit", script(&cfg, "bids"));
}

#[test]
fn subject_level_unit_loops_over_sessions() {
    let cfg = config(ContainerRuntime::Apptainer);
    insta::assert_snapshot!("apptainer_subject_unit", script(&cfg, "qsiprep"));
}

#[test]
fn gpus_account_qos_and_extra_directives() {
    let mut cfg = config(ContainerRuntime::Apptainer);
    let p = &mut cfg.pipelines[1];
    p.resources.gpus = 1;
    p.scheduler.account = Some("neuro_lab".to_string());
    p.scheduler.qos = Some("long".to_string());
    p.scheduler.cluster = Some("gpu-cluster".to_string());
    p.scheduler.extra_directives = vec![
        "--constraint=avx2".to_string(),
        "--mail-type=FAIL".to_string(),
    ];
    p.scheduler.requeue = true;
    p.modules = vec!["apptainer/1.3".to_string(), "cuda/12.2".to_string()];
    insta::assert_snapshot!("gpu_account_qos_extra", script(&cfg, "qsiprep"));
}

#[test]
fn the_container_call_as_text() {
    let mut cfg = config(ContainerRuntime::Apptainer);
    cfg.pipelines[0].resources.gpus = 2;
    let unit = Unit::new(&cfg, "bids");
    let input = unit.input(&cfg);
    assert_eq!(
        container_argv(&input).join(" "),
        "apptainer exec --cleanenv --containall --nv -B /data -B /scratch \
         -B /data/heuristics:/heuristics:ro -B /scratch/alice/nfslurm/bids/sub-01/ses-1 \
         --env TEMPLATEFLOW_HOME=/data/templateflow /containers/bids_1.0.sif"
    );
    assert_eq!(
        container_command(&input),
        "apptainer exec --cleanenv --containall --nv \\\n    -B /data \\\n    -B /scratch \\\n    \
         -B /data/heuristics:/heuristics:ro \\\n    \
         -B /scratch/alice/nfslurm/bids/sub-01/ses-1 \\\n    \
         --env TEMPLATEFLOW_HOME=/data/templateflow \\\n    /containers/bids_1.0.sif"
    );

    // Singularity: no --env (the script exports SINGULARITYENV_*); the work
    // dir is not bound twice.
    cfg.site.container.runtime = ContainerRuntime::Singularity;
    cfg.pipelines[0].resources.gpus = 0;
    cfg.pipelines[0]
        .binds
        .push("/scratch/alice/nfslurm/bids/sub-01/ses-1".to_string());
    let input = unit.input(&cfg);
    assert_eq!(
        container_argv(&input).join(" "),
        "singularity exec --cleanenv --containall -B /data -B /scratch \
         -B /data/heuristics:/heuristics:ro -B /scratch/alice/nfslurm/bids/sub-01/ses-1 \
         /containers/bids_1.0.sif"
    );

    // No image, or runtime none: the host.
    cfg.pipelines[0].container = None;
    assert!(container_argv(&unit.input(&cfg)).is_empty());
    assert_eq!(container_command(&unit.input(&cfg)), "");
}

#[test]
fn bash_array_length_survives_rendering() {
    let mut cfg = config(ContainerRuntime::Apptainer);
    cfg.pipelines[0].command =
        "files=({{ session.dicom_dir }}/*)\necho \"${#files[@]} files\" <# a Tera comment #>\n"
            .to_string();
    let unit = Unit::new(&cfg, "bids");
    let renderer = Renderer::new(&cfg).unwrap();
    let command = renderer.render_command(&unit.input(&cfg)).unwrap();
    assert_eq!(
        command,
        "files=(/data/incoming/dicom/SCAN0001/*)\necho \"${#files[@]} files\""
    );
    let script = renderer.render_script(&unit.input(&cfg)).unwrap();
    assert!(script.contains(r#"echo "${#files[@]} files"'"#), "{script}");
}

#[test]
fn an_undefined_variable_names_the_pipeline_and_the_variable() {
    let mut cfg = config(ContainerRuntime::Apptainer);
    cfg.pipelines[0].command =
        "heudiconv -s {{ subject.label }} -ss {{ sesion.label }}".to_string();
    let unit = Unit::new(&cfg, "bids");
    let err = Renderer::new(&cfg)
        .unwrap()
        .render_script(&unit.input(&cfg))
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(
            "cannot render the command of pipeline `bids` for `bids/sub-01/ses-1`: \
             Variable `sesion` is not defined."
        ),
        "{text}"
    );
    assert!(text.contains("--> cmd:bids:1:"), "{text}");

    // A missing field names the field.
    cfg.pipelines[0].command = "echo {{ subject.lable }}".to_string();
    let err = render_command(&unit.input(&cfg)).unwrap_err().to_string();
    assert!(err.contains("Field `lable` is not defined"), "{err}");

    // Through the filter too: an undefined value is never an empty word.
    cfg.pipelines[0].command = "echo {{ nope | shell_quote }}".to_string();
    let err = render_command(&unit.input(&cfg)).unwrap_err().to_string();
    assert!(
        err.contains("pipeline `bids`") && err.contains("undefined"),
        "{err}"
    );
}

#[test]
fn session_is_undefined_for_subject_level_units() {
    let mut cfg = config(ContainerRuntime::None);
    cfg.pipelines[1].command = "qsiprep --session-id {{ session.label }}".to_string();
    let unit = Unit::new(&cfg, "qsiprep");
    let err = render_command(&unit.input(&cfg)).unwrap_err().to_string();
    assert!(err.contains("Variable `session` is not defined"), "{err}");
}

#[test]
fn a_syntax_error_names_the_pipeline() {
    let mut cfg = config(ContainerRuntime::None);
    cfg.pipelines[1].command = "qsiprep {% if %}".to_string();
    let err = Renderer::new(&cfg).unwrap_err();
    assert!(matches!(&err, RenderError::CommandSyntax { pipeline, .. } if pipeline == "qsiprep"));
    assert!(err.to_string().contains("--> cmd:qsiprep:1:"), "{err}");
}

#[test]
fn a_shell_injection_label_cannot_exist() {
    assert!(Label::new("01; rm -rf ~").is_err());
    assert!(Label::subject("01; rm -rf ~").is_err());
    assert!(Label::session("$(id)").is_err());
}

#[test]
fn hostile_folder_names_are_quoted_and_never_run() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(ContainerRuntime::None);
    cfg.paths.work_dir = tmp.path().join("work dir");
    cfg.pipelines[0].command = "printf '%s\\n' {{ session.dicom_dir }} {{ session.scan_id }} \
         {{ session.dicom_dir | shell_quote }} > out.txt"
        .to_string();
    let marker = tmp.path().join("pwned");
    let folder = format!("/dicom/x'$(touch {})'`id` ~", marker.display());
    let mut unit = Unit::new(&cfg, "bids");
    unit.sessions[0].dicom_dir = PathBuf::from(&folder);
    unit.sessions[0].scan_id = "A;B".to_string();
    unit.output = tmp.path().join("log.out");

    let script = Renderer::new(&cfg)
        .unwrap()
        .render_script(&unit.input(&cfg))
        .unwrap();
    let path = tmp.path().join("job.sbatch");
    std::fs::write(&path, &script).unwrap();
    // The local executor's way: `bash script`, #SBATCH lines are comments.
    let out = Command::new("bash").arg(&path).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!marker.exists(), "a folder name was executed");
    let written = std::fs::read_to_string(unit.work_dir.join("out.txt")).unwrap();
    assert_eq!(written, format!("{folder}\nA;B\n{folder}\n"));
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        log.starts_with("[nfslurm] bids/sub-01/ses-1 attempt 1 on "),
        "{log}"
    );
}

#[test]
fn a_real_script_runs_with_runtime_none() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(ContainerRuntime::None);
    cfg.paths.work_dir = tmp.path().to_path_buf();
    cfg.paths.derivatives = tmp.path().join("derivatives");
    cfg.pipelines[1].command = r#"files=(a b c)
mkdir -p {{ paths.derivatives }}
echo "sub-{{ subject.label }} {{ sessions | length }} sessions ${#files[@]} files $TEMPLATEFLOW_HOME" \
  > {{ paths.derivatives }}/result.txt
{% for s in sessions %}echo {{ s.bids }} >> {{ paths.derivatives }}/result.txt
{% endfor %}"#
        .to_string();
    let unit = Unit::new(&cfg, "qsiprep");
    let script = render_script(&unit.input(&cfg)).unwrap();
    let path = tmp.path().join("job.sbatch");
    std::fs::write(&path, &script).unwrap();
    let out = Command::new("bash").arg(&path).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result = std::fs::read_to_string(tmp.path().join("derivatives/result.txt")).unwrap();
    assert_eq!(
        result,
        "sub-01 2 sessions 3 files /data/templateflow\nses-1\nses-2\n"
    );
    assert!(tmp.path().join("qsiprep/sub-01").is_dir());
}

#[test]
fn the_shell_quote_filter() {
    let tera = {
        let mut t = new_tera();
        t.add_raw_template(
            "t",
            "{{ raw | shell_quote }}|{{ words | shell_quote }}|{{ n | shell_quote }}|{{ pre | shell_quote }}",
        )
        .unwrap();
        t
    };
    let mut ctx = Context::new();
    ctx.insert("raw", "it's $(id)");
    ctx.insert("words", &vec!["a b", "c", ""]);
    ctx.insert("n", &16);
    ctx.insert_value("pre", tera::Value::safe_string("'already quoted'"));
    assert_eq!(
        tera.render("t", &ctx).unwrap(),
        r"'it'\''s $(id)'|'a b' c ''|16|'already quoted'"
    );
}

#[test]
fn undefined_and_none_values_are_errors_in_the_script_template() {
    let mut cfg = config(ContainerRuntime::None);
    cfg.site.template = "#!/bin/bash\n#SBATCH --account={{ account | shell_quote }}\n".to_string();
    for p in &mut cfg.pipelines {
        p.template = cfg.site.template.clone();
        p.template_name = "site.tera".to_string();
    }
    let unit = Unit::new(&cfg, "bids");
    let err = render_script(&unit.input(&cfg)).unwrap_err().to_string();
    assert!(
        err.starts_with("cannot render the script template `site.tera` for `bids/sub-01/ses-1`"),
        "{err}"
    );
    assert!(err.contains("none"), "{err}");
}

#[test]
fn renderer_compiles_each_template_text_once() {
    let mut cfg = config(ContainerRuntime::None);
    cfg.pipelines[1].template = "#!/bin/bash\n# custom\n{{ command }}\n".to_string();
    cfg.pipelines[1].template_name = "bundled:sbatch.sh.tera".to_string();
    let renderer = Renderer::new(&cfg).unwrap();
    let names: Vec<&str> = {
        let mut v: Vec<&str> = renderer.tera.get_template_names().collect();
        v.sort_unstable();
        v
    };
    assert_eq!(
        names,
        vec![
            "cmd:bids",
            "cmd:qsiprep",
            "script:bundled:sbatch.sh.tera",
            "script:bundled:sbatch.sh.tera#2"
        ]
    );
    let unit = Unit::new(&cfg, "qsiprep");
    let text = renderer.render_script(&unit.input(&cfg)).unwrap();
    assert!(text.starts_with("#!/bin/bash\n# custom\necho \"sub-01: 2 sessions\""));
}

#[test]
fn inputs_must_agree() {
    let cfg = config(ContainerRuntime::None);
    let renderer = Renderer::new(&cfg).unwrap();
    let unit = Unit::new(&cfg, "bids");
    let mut input = unit.input(&cfg);
    input.session = None;
    assert!(matches!(
        renderer.render_script(&input),
        Err(RenderError::MissingSession { .. })
    ));
    let mut input = unit.input(&cfg);
    input.session = Some(&unit.sessions[1]);
    assert!(matches!(
        renderer.render_script(&input),
        Err(RenderError::SessionMismatch { .. })
    ));
    let mut input = unit.input(&cfg);
    input.pipeline = cfg.pipeline("qsiprep").unwrap();
    assert!(matches!(
        renderer.render_script(&input),
        Err(RenderError::PipelineMismatch { .. })
    ));
}

#[test]
fn bad_environment_names_are_refused() {
    let mut cfg = config(ContainerRuntime::Singularity);
    cfg.pipelines[0]
        .env
        .insert("BAD;NAME".to_string(), "x".to_string());
    let err = Renderer::new(&cfg).unwrap_err().to_string();
    assert!(err.contains("`BAD;NAME`"), "{err}");
}

#[test]
fn work_dirs_are_per_subject_and_per_session() {
    let cfg = config(ContainerRuntime::None);
    let subject = UnitKey::new("qsiprep", &label("01"), None);
    let session = UnitKey::new("bids", &label("01"), Some(&label("2")));
    assert_eq!(
        work_dir_for(&cfg, &subject),
        Path::new("/scratch/alice/nfslurm/qsiprep/sub-01")
    );
    assert_eq!(
        work_dir_for(&cfg, &session),
        Path::new("/scratch/alice/nfslurm/bids/sub-01/ses-2")
    );
}

#[test]
fn slurm_times() {
    assert_eq!(slurm_time(30), "00:00:30");
    assert_eq!(slurm_time(7200), "02:00:00");
    assert_eq!(slurm_time(86_399), "23:59:59");
    assert_eq!(slurm_time(86_400), "1-00:00:00");
    assert_eq!(slurm_time(259_200 + 5400), "3-01:30:00");
}

#[test]
fn command_context_values() {
    let mut cfg = config(ContainerRuntime::None);
    cfg.paths.bids_root = PathBuf::from("/data/My Study/bids");
    cfg.pipelines[0].command = "{{ subject.bids }} {{ session.bids }} {{ paths.bids_root }} \
         {{ resources.cpus }} {{ resources.mem_gb }} {{ resources.time }} {{ resources.time_s }} \
         {{ resources.gpus }} {{ attempt }} {{ pipeline }} {{ unit }} {{ executor }} {{ work_dir }}"
        .to_string();
    let unit = Unit::new(&cfg, "bids");
    assert_eq!(
        render_command(&unit.input(&cfg)).unwrap(),
        "sub-01 ses-1 '/data/My Study/bids' 2 8 02:00:00 7200 0 1 bids bids/sub-01/ses-1 slurm \
         /scratch/alice/nfslurm/bids/sub-01/ses-1"
    );
}

#[test]
fn the_bundled_script_template_guards_the_command() {
    let bundled = outside_value_placements(crate::config::BUNDLED_TEMPLATE, TemplateKind::Script);
    assert!(bundled.is_empty(), "{bundled:?}");
}

#[test]
fn the_study_name_is_the_config_folders_name() {
    let mut c = config(ContainerRuntime::None);
    assert_eq!(study_name(&c), "study");
    c.dir = PathBuf::from("/data/my study#2");
    assert_eq!(study_name(&c), "my_study_2");
}
