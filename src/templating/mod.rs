//! The Tera environment nfslurm renders with, and the checks a template
//! passes before it is used: `<# … #>` comments, no HTML autoescape, the
//! `shell_quote` filter, and where a template puts values that come from
//! outside the config ([`outside_value_placements`]).
//!
//! Apart from `render` (which fills templates from a config) so that the
//! config loader can check templates without depending on the renderer:
//! this module depends on neither.

mod placement;
mod quote;

use tera::{Context, Error, ErrorKind, Kwargs, State, Tera, TeraResult, Value};

pub use placement::{Placement, TemplateKind, outside_value_placements};
pub use quote::{shell_join, shell_quote};

/// The Tera delimiters nfslurm uses everywhere: the defaults, except comments,
/// which are `<#` … `#>` so that bash's `${#x}` does not open a comment.
pub fn tera_delimiters() -> tera::Delimiters {
    tera::Delimiters {
        comment_start: "<#".into(),
        comment_end: "#>".into(),
        ..tera::Delimiters::default()
    }
}

/// A Tera environment configured as nfslurm renders: `<# #>` comments
/// ([`tera_delimiters`]), no HTML autoescape, the `shell_quote` filter. Use
/// it to check templates elsewhere (config loading, `doctor`), so that what
/// passes there renders here: a bare `Tera` rejects `| shell_quote` as an
/// unknown filter.
pub fn new_tera() -> Tera {
    let mut tera = Tera::new();
    tera.set_delimiters(tera_delimiters())
        .expect("the delimiters are two bytes each and distinct, and no template is loaded yet");
    tera.autoescape_on(Vec::<&str>::new());
    tera.register_filter("shell_quote", shell_quote_filter);
    tera
}

/// The `shell_quote` filter: quotes a value as one shell word.
///
/// Safe values pass through untouched: the command context's pre-quoted
/// strings (so they are never quoted twice), numbers and booleans. An array
/// gives its elements quoted and joined by spaces. `undefined` and `none` are
/// errors rather than an empty word that would silently shift arguments.
fn shell_quote_filter(value: &Value, _: Kwargs, _: &State) -> TeraResult<Value> {
    quote_value(value)
}

fn quote_value(value: &Value) -> TeraResult<Value> {
    if value.is_undefined() || value.is_none() {
        return Err(Error::new(ErrorKind::InvalidArgument {
            expected_type: "a defined value".to_string(),
            actual_type: if value.is_none() { "none" } else { "undefined" }.to_string(),
        }));
    }
    if let Some(items) = value.as_array() {
        let mut words = Vec::with_capacity(items.len());
        for item in items {
            words.push(quote_value(item)?.to_string());
        }
        return Ok(Value::safe_string(&words.join(" ")));
    }
    if value.is_safe() {
        return Ok(value.clone());
    }
    Ok(Value::safe_string(&shell_quote(&value.to_string())))
}

/// The default `scheduler.array_job_name`: whose study, which pipeline.
pub const DEFAULT_ARRAY_JOB_NAME: &str = "nf-{{ study }}-{{ pipeline }}";

/// The name of an array job: `template` (Tera, with `study` and `pipeline`)
/// rendered, whitespace and control characters made `_` (sbatch takes the
/// name as one argument; squeue prints it in a column). An error when the
/// template does not parse, uses another variable, or renders to nothing.
pub fn array_job_name(template: &str, study: &str, pipeline: &str) -> Result<String, String> {
    let mut tera = new_tera();
    tera.add_raw_template("array_job_name", template)
        .map_err(|e| describe(&e).0)?;
    let mut ctx = Context::new();
    ctx.insert("study", study);
    ctx.insert("pipeline", pipeline);
    let text = tera
        .render("array_job_name", &ctx)
        .map_err(|e| describe(&e).0)?;
    let name: String = text
        .trim()
        .chars()
        .map(|c| {
            if c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if name.is_empty() {
        return Err("it renders to an empty name".into());
    }
    Ok(name)
}

/// A Tera error as (one-line message, located report on the following lines).
pub(crate) fn describe(err: &tera::Error) -> (String, String) {
    match err.kind() {
        tera::ErrorKind::SyntaxError(report) | tera::ErrorKind::RenderingError(report) => {
            let full = err.to_string();
            // The report repeats the message on its first line; keep the
            // location and the source excerpt that follow.
            let location = full
                .split_once('\n')
                .map(|(_, rest)| format!("\n{rest}"))
                .unwrap_or_default();
            (report.message().to_string(), location)
        }
        _ => {
            let mut message = err.to_string();
            let mut source = std::error::Error::source(err);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            (message, String::new())
        }
    }
}
