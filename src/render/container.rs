//! The container call: `apptainer exec --cleanenv … <image>` as argv.
//!
//! Built in Rust rather than in the template so that its exact text is tested
//! here: Apptainer cannot run on the dev and CI machines, so the command line
//! is checked as text and real jobs in tests use `container.runtime: none`.

use crate::config::ContainerRuntime;

use super::ScriptInput;

/// What runs the command: a container runtime, or the host shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Apptainer,
    Singularity,
    /// No container: the site's runtime is `none` or the pipeline has no image.
    Host,
}

impl Runtime {
    pub fn of(input: &ScriptInput) -> Runtime {
        match (
            input.config.site.container.runtime,
            &input.pipeline.container,
        ) {
            (_, None) | (ContainerRuntime::None, _) => Runtime::Host,
            (ContainerRuntime::Apptainer, Some(_)) => Runtime::Apptainer,
            (ContainerRuntime::Singularity, Some(_)) => Runtime::Singularity,
        }
    }

    /// The word templates compare against: `apptainer`, `singularity`, `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Apptainer => "apptainer",
            Runtime::Singularity => "singularity",
            Runtime::Host => "none",
        }
    }
}

/// The container call up to and including the image, as argv (unquoted);
/// empty when the command runs on the host.
///
/// `<runtime> exec --cleanenv [site options…] [--nv] -B <bind>… -B <work dir>
/// [--env KEY=VALUE…] <image>`:
/// - `--cleanenv` always (neuroimaging containers must not see the host's
///   Python or FreeSurfer variables), not repeated when the site lists it;
/// - `--nv` when the unit asks for GPUs and the site options do not already
///   choose `--nv` or `--rocm`;
/// - the pipeline's binds (the site's plus its own), then the unit's work dir,
///   which is always bound; duplicates dropped;
/// - environment: `--env KEY=VALUE` for Apptainer (1.0 and later); for
///   Singularity the script exports `SINGULARITYENV_KEY` before the call
///   instead, so no `--env` here.
pub fn container_argv(input: &ScriptInput) -> Vec<String> {
    let runtime = Runtime::of(input);
    let image = match (runtime, &input.pipeline.container) {
        (Runtime::Host, _) | (_, None) => return Vec::new(),
        (_, Some(image)) => image,
    };
    let settings = &input.config.site.container;
    let mut argv = vec![runtime.as_str().to_string(), "exec".to_string()];
    argv.push("--cleanenv".to_string());
    argv.extend(
        settings
            .options
            .iter()
            .filter(|o| o.as_str() != "--cleanenv" && o.as_str() != "-e")
            .cloned(),
    );
    let has_gpu_flag = settings
        .options
        .iter()
        .any(|o| o == "--nv" || o == "--rocm");
    if input.resources.gpus > 0 && !has_gpu_flag {
        argv.push("--nv".to_string());
    }
    let work_dir = input.work_dir.to_string_lossy().into_owned();
    let mut binds: Vec<&str> = Vec::new();
    for bind in input
        .pipeline
        .binds
        .iter()
        .map(String::as_str)
        .chain([work_dir.as_str()])
    {
        if !binds.contains(&bind) {
            binds.push(bind);
        }
    }
    for bind in binds {
        argv.push("-B".to_string());
        argv.push(bind.to_string());
    }
    if runtime == Runtime::Apptainer {
        for (key, value) in &input.pipeline.env {
            argv.push("--env".to_string());
            argv.push(format!("{key}={value}"));
        }
    }
    argv.push(image.clone());
    argv
}

/// [`container_argv`] quoted for the script, one logical group per line
/// (runtime and options; each bind; each variable; the image), joined with
/// ` \` continuations. Empty when the command runs on the host.
pub fn container_prefix(argv: &[String]) -> String {
    use crate::templating::shell_quote;
    let Some(image) = argv.last() else {
        return String::new();
    };
    let mut lines: Vec<String> = Vec::new();
    let mut first: Vec<String> = Vec::new();
    let mut i = 0;
    let body = &argv[..argv.len() - 1];
    while i < body.len() {
        let word = &body[i];
        if (word == "-B" || word == "--env") && i + 1 < body.len() {
            lines.push(format!("{} {}", word, shell_quote(&body[i + 1])));
            i += 2;
        } else {
            if !lines.is_empty() {
                lines.push(shell_quote(word));
            } else {
                first.push(shell_quote(word));
            }
            i += 1;
        }
    }
    let mut all = vec![first.join(" ")];
    all.extend(lines);
    all.push(shell_quote(image));
    all.join(" \\\n    ")
}
