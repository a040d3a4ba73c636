//! The `#SBATCH` directives of a rendered script, read the way sbatch reads
//! them, so that an array job carries exactly what its members' template
//! asked for.
//!
//! sbatch takes options from `#SBATCH` lines up to the first line that is
//! neither blank nor a comment; a line may hold several options, words may
//! be quoted, and an unquoted `#` starts a comment. Some options differ per
//! unit by nature (job name, output and error files, comment, array index):
//! nfslurm sets those itself for an array, and for a single job on the
//! sbatch command line, which wins over the script. Every other directive is
//! *shared*: units share an array only when their shared directives are the
//! same, word for word.
//!
//! Pure: no I/O.

/// One option of a `#SBATCH` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// The option's long name without dashes (`exclude` for `-x`).
    pub name: String,
    /// The option as written, with its value: `--exclude=node1`, `-x node1`.
    pub text: String,
    /// 1-based line of the script it is on.
    pub line: usize,
}

/// Options nfslurm sets per job or task itself.
const PER_TASK: &[&str] = &["job-name", "output", "error", "comment", "array"];

/// Long names of sbatch's short options (those a template is likely to use).
const SHORT: &[(char, &str)] = &[
    ('A', "account"),
    ('a', "array"),
    ('b', "begin"),
    ('C', "constraint"),
    ('c', "cpus-per-task"),
    ('D', "chdir"),
    ('d', "dependency"),
    ('e', "error"),
    ('G', "gpus"),
    ('i', "input"),
    ('J', "job-name"),
    ('L', "licenses"),
    ('M', "clusters"),
    ('m', "distribution"),
    ('N', "nodes"),
    ('n', "ntasks"),
    ('o', "output"),
    ('p', "partition"),
    ('q', "qos"),
    ('t', "time"),
    ('w', "nodelist"),
    ('x', "exclude"),
];

/// The long name of an option word (`--mem=8G` → `mem`, `-x` → `exclude`);
/// `None` for a word that is not an option.
fn option_name(word: &str) -> Option<String> {
    if let Some(long) = word.strip_prefix("--") {
        let name = long.split('=').next().unwrap_or(long);
        return (!name.is_empty()).then(|| name.to_string());
    }
    let mut chars = word.strip_prefix('-')?.chars();
    let c = chars.next()?;
    Some(
        SHORT
            .iter()
            .find(|(s, _)| *s == c)
            .map(|(_, l)| l.to_string())
            .unwrap_or_else(|| c.to_string()),
    )
}

/// The words of a directive line, as written (quotes kept), up to an
/// unquoted `#`.
fn words(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= bytes.len() || bytes[i] == b'#' {
            break;
        }
        let start = i;
        let mut quote: Option<u8> = None;
        while i < bytes.len() {
            let b = bytes[i];
            match quote {
                Some(q) if b == q => quote = None,
                Some(_) => {}
                None if b == b'"' || b == b'\'' => quote = Some(b),
                None if b.is_ascii_whitespace() => break,
                None => {}
            }
            i += 1;
        }
        out.push(&text[start..i]);
    }
    out
}

/// Every option of the script's `#SBATCH` lines, in order.
pub fn parse(script: &str) -> Vec<Directive> {
    let mut out = Vec::new();
    for (index, line) in script.lines().enumerate() {
        if index == 0 && line.starts_with("#!") {
            continue;
        }
        let trimmed = line.trim_start();
        let Some(rest) = line.strip_prefix("#SBATCH") else {
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            // The first command ends sbatch's reading of directives.
            break;
        };
        if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
            // `#SBATCHX` is a comment to sbatch.
            continue;
        }
        let words = words(rest);
        let mut i = 0;
        while i < words.len() {
            let word = words[i];
            let Some(name) = option_name(word) else {
                i += 1;
                continue;
            };
            let mut text = word.to_string();
            // `--name value` / `-x value`: a following word that is not an
            // option is this option's value.
            let attached = word.contains('=') || (!word.starts_with("--") && word.len() > 2);
            if !attached && let Some(value) = words.get(i + 1).filter(|w| !w.starts_with('-')) {
                text.push(' ');
                text.push_str(value);
                i += 1;
            }
            out.push(Directive {
                name,
                text,
                line: index + 1,
            });
            i += 1;
        }
    }
    out
}

/// Whether nfslurm sets this option per job or task itself.
pub fn is_per_task(name: &str) -> bool {
    PER_TASK.contains(&name)
}

/// The shared directives of a script: every option but the per-task ones,
/// as written. Units whose lists differ never share an array.
pub fn shared(script: &str) -> Vec<String> {
    parse(script)
        .into_iter()
        .filter(|d| !is_per_task(&d.name))
        .map(|d| d.text)
        .collect()
}

/// The options an sbatch refusal points at, by Slurm's own words (seen on
/// 22.05). Empty when the message names no option nfslurm knows.
pub fn options_blamed(message: &str) -> &'static [&'static str] {
    let m = message.to_ascii_lowercase();
    const RULES: &[(&str, &[&str])] = &[
        ("invalid node name", &["exclude", "nodelist"]),
        ("invalid partition", &["partition"]),
        ("invalid account", &["account"]),
        ("invalid qos", &["qos"]),
        ("invalid feature specification", &["constraint"]),
        ("invalid generic resource", &["gres", "gpus"]),
        ("invalid license", &["licenses"]),
        ("reservation", &["reservation"]),
        ("invalid --mail-type", &["mail-type"]),
        ("invalid mail", &["mail-type", "mail-user"]),
        ("invalid nice", &["nice"]),
        ("invalid cluster", &["clusters"]),
        ("no such cluster", &["clusters"]),
        ("memory specification", &["mem", "mem-per-cpu"]),
        ("time limit", &["time"]),
        ("invalid time", &["time"]),
        ("dependency", &["dependency"]),
        (
            "requested node configuration is not available",
            &[
                "constraint",
                "mem",
                "cpus-per-task",
                "gres",
                "nodelist",
                "exclude",
            ],
        ),
    ];
    RULES
        .iter()
        .find(|(needle, _)| m.contains(needle))
        .map(|(_, opts)| *opts)
        .unwrap_or(&[])
}

/// Lines of a template (1-based, with their text) whose `#SBATCH` directive
/// sets one of `options`, long or short form.
pub fn template_lines(template: &str, options: &[&str]) -> Vec<(usize, String)> {
    template
        .lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let rest = line.trim_start().strip_prefix("#SBATCH")?;
            let hit = words(rest)
                .iter()
                .filter_map(|w| option_name(w))
                .any(|n| options.contains(&n.as_str()));
            hit.then(|| (i + 1, line.trim().to_string()))
        })
        .collect()
}

/// The template lines to name for a refusal blaming `options`, among
/// [`template_lines`]: a line written without Tera that appears as such in
/// the rendered script is to blame; failing one, the lines with Tera in
/// them (a literal line that did not render, inside an `{% if %}`, is not);
/// failing those, every candidate.
pub fn lines_to_blame(template: &str, rendered: &str, options: &[&str]) -> Vec<(usize, String)> {
    let candidates = template_lines(template, options);
    let templated = |text: &str| text.contains("{{") || text.contains("{%");
    let rendered_as_is =
        |text: &str| !templated(text) && rendered.lines().any(|l| l.trim() == text);
    let literal: Vec<(usize, String)> = candidates
        .iter()
        .filter(|(_, t)| rendered_as_is(t))
        .cloned()
        .collect();
    if !literal.is_empty() {
        return literal;
    }
    let with_tera: Vec<(usize, String)> = candidates
        .iter()
        .filter(|(_, t)| templated(t))
        .cloned()
        .collect();
    if with_tera.is_empty() {
        candidates
    } else {
        with_tera
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = "#!/bin/bash\n\
#SBATCH --job-name=nf-bids-01-1\n\
#SBATCH --output='/state/logs/a b.out'\n\
#SBATCH --mem=8192M  # memory\n\
\n\
#SBATCH -x node7 --nice=77\n\
#SBATCH --comment=nfslurm-abc\n\
#SBATCHX --not-an-option\n\
# a comment\n\
#SBATCH --requeue\n\
set -euo pipefail\n\
#SBATCH --after-the-first-command\n";

    #[test]
    fn directives_are_read_as_sbatch_reads_them() {
        let d = parse(SCRIPT);
        let got: Vec<(&str, &str, usize)> = d
            .iter()
            .map(|d| (d.name.as_str(), d.text.as_str(), d.line))
            .collect();
        assert_eq!(
            got,
            vec![
                ("job-name", "--job-name=nf-bids-01-1", 2),
                ("output", "--output='/state/logs/a b.out'", 3),
                ("mem", "--mem=8192M", 4),
                ("exclude", "-x node7", 6),
                ("nice", "--nice=77", 6),
                ("comment", "--comment=nfslurm-abc", 7),
                ("requeue", "--requeue", 10),
            ]
        );
    }

    #[test]
    fn shared_directives_leave_out_what_differs_per_task() {
        assert_eq!(
            shared(SCRIPT),
            vec!["--mem=8192M", "-x node7", "--nice=77", "--requeue"]
        );
    }

    #[test]
    fn the_bundled_template_directives_are_all_read() {
        let text = crate::config::BUNDLED_TEMPLATE;
        let lines = template_lines(text, &["comment"]);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].1.starts_with("#SBATCH --comment="));
    }

    #[test]
    fn refusals_point_at_the_template_line() {
        // sbatch 22.05, `#SBATCH --exclude=nosuchnode`:
        let msg = "Batch job submission failed: Invalid node name specified";
        let template = "#!/bin/bash\n#SBATCH --nice=77\n#SBATCH --exclude=nosuchnode\n";
        assert_eq!(
            template_lines(template, options_blamed(msg)),
            vec![(3, "#SBATCH --exclude=nosuchnode".to_string())]
        );
        assert!(options_blamed("Batch job submission failed: something new").is_empty());
        // Of a literal line and a templated one, the literal line that rendered.
        let template =
            "#SBATCH --gres=gpu:1\n{% if gpus > 0 %}\n#SBATCH --gres=gpu:{{ gpus }}\n{% endif %}\n";
        let blamed = options_blamed("Invalid generic resource (gres) specification");
        assert_eq!(template_lines(template, blamed).len(), 2);
        assert_eq!(
            lines_to_blame(template, "#!/bin/bash\n#SBATCH --gres=gpu:1\n", blamed),
            vec![(1, "#SBATCH --gres=gpu:1".to_string())]
        );
        assert_eq!(
            lines_to_blame(template, "#!/bin/bash\n#SBATCH --gres=gpu:2\n", blamed),
            vec![(3, "#SBATCH --gres=gpu:{{ gpus }}".to_string())]
        );
        assert_eq!(
            options_blamed("Batch job submission failed: Invalid partition name specified"),
            &["partition"]
        );
    }
}
