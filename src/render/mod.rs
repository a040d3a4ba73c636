//! Rendering sbatch scripts from Tera templates.
//!
//! Two templates make one script: the pipeline's **command** (written by the
//! study, in `nfslurm.yaml`) and the site's **script template** (the bundled
//! `templates/sbatch.sh.tera` unless a site config names its own), which
//! wraps the rendered command in `#SBATCH` lines, module loads and the
//! container call. Both are compiled once per config by [`Renderer::new`]:
//! `submit` renders thousands of scripts, and parsing templates is the costly
//! part. The free functions [`render_command`] and [`render_script`] are thin
//! wrappers that compile per call, for one-off uses such as `nfslurm render`.
//!
//! # Safety of what reaches the shell
//!
//! Tera's autoescape only knows HTML, so quoting is ours. The rules (also in
//! `docs/templates.md`):
//!
//! - **Command context: every string is already a shell word.** Labels are
//!   validated BIDS labels (ASCII letters and digits, see [`Label`]), and every
//!   other string (paths, `session.dicom_dir`, which comes from a folder name,
//!   `session.scan_id`, `unit`, `pipeline`) is inserted through
//!   [`shell_quote`]: bare when made of `[A-Za-z0-9_./:=@%+,-]` (the usual
//!   case, so the script stays readable), single-quoted otherwise. So
//!   `--files {{ session.dicom_dir }}` is safe as written, even for a folder
//!   named `$(rm -rf ~)`. Do not put these values inside quotes in the
//!   command (`"{{ x }}"` would show the quotes literally) and do not build
//!   strings with `~` before quoting; write `{{ paths.derivatives }}/qsiprep`,
//!   which is a correct shell word either way. For the values that come from
//!   folder names (`dicom_dir`, `scan_id`) this is enforced: the config
//!   loader refuses a command that puts them anywhere but a plain word
//!   ([`outside_value_placements`]), and discovery refuses folder names with
//!   shell-special characters in the first place.
//! - These pre-quoted values are marked *safe*, and the `shell_quote` filter
//!   leaves safe values alone, so `{{ session.dicom_dir | shell_quote }}` is
//!   harmless (never quoted twice). Numbers are safe too.
//! - **Script context: strings are raw**, and the script template quotes them
//!   with `| shell_quote` where it puts them in shell code. `command` is the
//!   rendered command: inserted as-is for host runs, and quoted whole for
//!   `bash -c` inside a container.
//! - Undefined variables are errors, naming the pipeline and the variable.
//!   For subject-level units `session` is undefined, so using it is an error;
//!   `sessions` (the subject's valid sessions) is always there.
//!
//! Comments are `<# … #>` instead of Tera's `{# … #}`, so that bash's
//! `${#array[@]}` passes through.

mod container;
mod context;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tera::{Context, Tera};

use crate::config::{Config, ExecutorKind, Pipeline, Resources};
use crate::model::{Label, Level, UnitKey};

use crate::templating::describe;
pub use crate::templating::{
    DEFAULT_ARRAY_JOB_NAME, Placement, TemplateKind, array_job_name, new_tera,
    outside_value_placements, shell_join, shell_quote, tera_delimiters,
};
pub use container::{Runtime, container_argv, container_prefix};
pub use context::{slurm_time, work_dir_for};

/// One session of a subject, as a template sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub label: Label,
    pub scan_id: String,
    pub dicom_dir: PathBuf,
}

/// Everything one script is rendered from.
#[derive(Debug, Clone, Copy)]
pub struct ScriptInput<'a> {
    pub config: &'a Config,
    pub pipeline: &'a Pipeline,
    pub unit: &'a UnitKey,
    /// The unit's session, for session-level units.
    pub session: Option<&'a SessionInfo>,
    /// All valid sessions of the subject.
    pub subject_sessions: &'a [SessionInfo],
    /// Effective resources (possibly escalated after OOM or TIMEOUT).
    pub resources: &'a Resources,
    pub attempt: u32,
    pub token: &'a str,
    pub output_path: &'a Path,
    /// The unit's work dir, normally [`work_dir_for`].
    pub work_dir: &'a Path,
    pub executor: ExecutorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("the command of pipeline `{pipeline}` is not a valid template: {message}{report}")]
    CommandSyntax {
        pipeline: String,
        message: String,
        report: String,
    },
    #[error(
        "the script template `{template}` (pipeline `{pipeline}`) is not a valid template: {message}{report}"
    )]
    TemplateSyntax {
        pipeline: String,
        template: String,
        message: String,
        report: String,
    },
    #[error("cannot render the command of pipeline `{pipeline}` for `{unit}`: {message}{report}")]
    Command {
        pipeline: String,
        unit: String,
        message: String,
        report: String,
    },
    #[error("cannot render the script template `{template}` for `{unit}`: {message}{report}")]
    Script {
        template: String,
        unit: String,
        message: String,
        report: String,
    },
    #[error("the command of pipeline `{pipeline}` for `{unit}` renders to nothing")]
    EmptyCommand { pipeline: String, unit: String },
    #[error("pipeline `{0}` is not in the configuration")]
    UnknownPipeline(String),
    #[error("`{unit}` belongs to pipeline `{unit_pipeline}`, not `{pipeline}`")]
    PipelineMismatch {
        unit: String,
        unit_pipeline: String,
        pipeline: String,
    },
    #[error("`{unit}` is a session-level unit, but no session was given to render it")]
    MissingSession { unit: String },
    #[error("session `{given}` was given to render `{unit}`")]
    SessionMismatch { unit: String, given: String },
    #[error("`{unit}`: pipeline `{pipeline}` is {level}-level")]
    LevelMismatch {
        unit: String,
        pipeline: String,
        level: Level,
    },
    #[error("path `{}` is not valid UTF-8 and cannot be put in a script", .0.display())]
    NonUtf8Path(PathBuf),
    #[error(
        "pipeline `{pipeline}`: `{name}` is not a valid environment variable name (letters, digits and `_`, not starting with a digit)"
    )]
    BadEnvName { pipeline: String, name: String },
}

/// Compiled templates for one config: every pipeline's command and script
/// template. Build once (per `submit`, `sync`…), render many.
pub struct Renderer {
    tera: Tera,
    pipelines: HashMap<String, Compiled>,
}

struct Compiled {
    /// Tera name of the command: `cmd:<pipeline>`.
    command: String,
    /// Tera name of the script template: `script:<template name>` (with `#n`
    /// when two pipelines use different texts under the same name).
    script: String,
    /// The template's name for messages, as the config gives it.
    template_name: String,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self.pipelines.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("Renderer")
            .field("pipelines", &names)
            .finish()
    }
}

impl Renderer {
    /// Compiles every pipeline's command and script template, and checks the
    /// environment variable names (they are written unquoted in the script).
    pub fn new(config: &Config) -> Result<Renderer, RenderError> {
        let mut tera = new_tera();
        let mut pipelines = HashMap::with_capacity(config.pipelines.len());
        // Script template text -> its Tera name, so that pipelines sharing the
        // site template compile it once.
        let mut scripts: HashMap<&str, String> = HashMap::new();
        for pipeline in &config.pipelines {
            for name in pipeline.env.keys() {
                if !is_env_name(name) {
                    return Err(RenderError::BadEnvName {
                        pipeline: pipeline.name.clone(),
                        name: name.clone(),
                    });
                }
            }
            let command = format!("cmd:{}", pipeline.name);
            tera.add_raw_template(&command, &pipeline.command)
                .map_err(|e| {
                    let (message, report) = describe(&e);
                    RenderError::CommandSyntax {
                        pipeline: pipeline.name.clone(),
                        message,
                        report,
                    }
                })?;
            let script = match scripts.get(pipeline.template.as_str()) {
                Some(name) => name.clone(),
                None => {
                    let mut name = format!("script:{}", pipeline.template_name);
                    let mut n = 1;
                    while scripts.values().any(|v| *v == name) {
                        n += 1;
                        name = format!("script:{}#{n}", pipeline.template_name);
                    }
                    tera.add_raw_template(&name, &pipeline.template)
                        .map_err(|e| {
                            let (message, report) = describe(&e);
                            RenderError::TemplateSyntax {
                                pipeline: pipeline.name.clone(),
                                template: pipeline.template_name.clone(),
                                message,
                                report,
                            }
                        })?;
                    scripts.insert(&pipeline.template, name.clone());
                    name
                }
            };
            pipelines.insert(
                pipeline.name.clone(),
                Compiled {
                    command,
                    script,
                    template_name: pipeline.template_name.clone(),
                },
            );
        }
        Ok(Renderer { tera, pipelines })
    }

    fn compiled(&self, input: &ScriptInput) -> Result<&Compiled, RenderError> {
        check_input(input)?;
        self.pipelines
            .get(&input.pipeline.name)
            .ok_or_else(|| RenderError::UnknownPipeline(input.pipeline.name.clone()))
    }

    /// The pipeline's command alone, rendered and trimmed.
    pub fn render_command(&self, input: &ScriptInput) -> Result<String, RenderError> {
        let compiled = self.compiled(input)?;
        self.command(compiled, input)
    }

    fn command(&self, compiled: &Compiled, input: &ScriptInput) -> Result<String, RenderError> {
        let ctx = context::command_context(input)?;
        let text = self.tera.render(&compiled.command, &ctx).map_err(|e| {
            let (message, report) = describe(&e);
            RenderError::Command {
                pipeline: input.pipeline.name.clone(),
                unit: input.unit.to_string(),
                message,
                report,
            }
        })?;
        let text = text.trim();
        if text.is_empty() {
            return Err(RenderError::EmptyCommand {
                pipeline: input.pipeline.name.clone(),
                unit: input.unit.to_string(),
            });
        }
        Ok(text.to_string())
    }

    /// The whole sbatch script.
    pub fn render_script(&self, input: &ScriptInput) -> Result<String, RenderError> {
        let compiled = self.compiled(input)?;
        let command = self.command(compiled, input)?;
        let ctx: Context = context::script_context(input, &command)?;
        self.tera.render(&compiled.script, &ctx).map_err(|e| {
            let (message, report) = describe(&e);
            RenderError::Script {
                template: compiled.template_name.clone(),
                unit: input.unit.to_string(),
                message,
                report,
            }
        })
    }
}

/// The study's name for job names: the config folder's name, reduced to
/// letters, digits, `.`, `_` and `-`.
pub fn study_name(config: &Config) -> String {
    let raw = config
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        "study".into()
    } else {
        name
    }
}

/// Renders the pipeline's command alone. Compiles the config's templates on
/// every call: prefer a [`Renderer`] when rendering more than one unit.
pub fn render_command(input: &ScriptInput) -> Result<String, RenderError> {
    Renderer::new(input.config)?.render_command(input)
}

/// Renders the whole sbatch script. Compiles the config's templates on every
/// call: prefer a [`Renderer`] when rendering more than one unit.
pub fn render_script(input: &ScriptInput) -> Result<String, RenderError> {
    Renderer::new(input.config)?.render_script(input)
}

/// The container call as it appears in the script (quoted, with ` \`
/// continuations, up to the image; `bash -c '<command>'` follows it). Empty
/// when the command runs on the host.
pub fn container_command(input: &ScriptInput) -> String {
    container_prefix(&container_argv(input))
}

/// The unit, pipeline, level and session must agree before anything renders.
fn check_input(input: &ScriptInput) -> Result<(), RenderError> {
    let unit = input.unit;
    if unit.pipeline != input.pipeline.name {
        return Err(RenderError::PipelineMismatch {
            unit: unit.to_string(),
            unit_pipeline: unit.pipeline.clone(),
            pipeline: input.pipeline.name.clone(),
        });
    }
    match (input.pipeline.level, &unit.session) {
        (Level::Session, None) | (Level::Subject, Some(_)) => {
            return Err(RenderError::LevelMismatch {
                unit: unit.to_string(),
                pipeline: input.pipeline.name.clone(),
                level: input.pipeline.level,
            });
        }
        _ => {}
    }
    if let Some(label) = &unit.session {
        match input.session {
            None => {
                return Err(RenderError::MissingSession {
                    unit: unit.to_string(),
                });
            }
            Some(info) if &info.label != label => {
                return Err(RenderError::SessionMismatch {
                    unit: unit.to_string(),
                    given: info.label.to_string(),
                });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests;
