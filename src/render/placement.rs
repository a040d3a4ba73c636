//! Where a template puts values that come from outside the config.
//!
//! A folder name reaches a command as `{{ session.dicom_dir }}`, already
//! quoted as one shell word (`'X$(touch PWNED)'`). That is safe where the
//! shell reads a plain word, and only there: inside double quotes the single
//! quotes are literal characters and `$(…)` runs; inside backticks, `$(…)`,
//! `${…}`, a heredoc, single quotes or a comment the quoting is not what the
//! shell reads either. Rather than trusting every command to be written with
//! that in mind, the config loader asks [`outside_value_placements`] where
//! each such value lands, and refuses the config when one lands anywhere but
//! a plain word. Discovery also refuses folder names with shell-special
//! characters, so this is the second of two walls.
//!
//! The reader is a small shell lexer, not a shell: it knows quotes, escapes,
//! backticks, `$(…)`, `${…}`, comments and heredocs, which is what decides
//! how a word is read. Tera tags (`{% if %}`) are skipped, so both branches
//! of a condition are read as one text: a placement refused in either is
//! refused.

/// One `{{ … }}` that puts an outside value where the shell would not read
/// it as one plain word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The expression as written, `{{ session.dicom_dir }}`.
    pub expr: String,
    /// 1-based line within the template text.
    pub line: usize,
    /// That line, trimmed.
    pub excerpt: String,
    /// Where it is: `double quotes`, `backticks`, `$(...)`, `${...}`,
    /// `a heredoc`, `single quotes`, `a comment`.
    pub inside: &'static str,
}

/// The names whose values come from outside the config in a pipeline
/// command: session folder names and the scan IDs taken from them.
pub const COMMAND_OUTSIDE_NAMES: &[&str] = &["dicom_dir", "scan_id"];

/// The same for a script template: the rendered command carries them.
pub const SCRIPT_OUTSIDE_NAMES: &[&str] = &["command", "dicom_dir", "scan_id"];

/// Every `{{ … }}` of `template` that mentions one of `outside` (or a
/// variable set or looped from one) and is not a plain shell word.
pub fn outside_value_placements(template: &str, outside: &[&str]) -> Vec<Placement> {
    let (pieces, exprs) = split(template);
    let tainted = tainted_names(&exprs, outside);
    let is_tainted = |i: usize| match &exprs[i] {
        Segment::Expr { text, .. } => idents(text).any(|w| tainted.iter().any(|t| t == w)),
        Segment::Tag(_) => false,
    };
    let mut found = Vec::new();
    let mut flag = |hole: usize, inside: &'static str| {
        if !is_tainted(hole) {
            return;
        }
        if let Segment::Expr { text, offset } = &exprs[hole] {
            let line = template[..*offset].matches('\n').count() + 1;
            let excerpt = template
                .lines()
                .nth(line - 1)
                .unwrap_or("")
                .trim()
                .to_string();
            let placement = Placement {
                expr: format!("{{{{ {} }}}}", text.trim()),
                line,
                excerpt,
                inside,
            };
            if !found.contains(&placement) {
                found.push(placement);
            }
        }
    };
    lex(&pieces, &mut flag);
    found
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    Char(char),
    /// A `{{ … }}`, by index into the segments.
    Hole(usize),
}

#[derive(Debug)]
enum Segment {
    /// The text between `{{` and `}}`, and the byte offset of its `{{`.
    Expr { text: String, offset: usize },
    /// The text between `{%` and `%}`.
    Tag(String),
}

/// The template as shell text with holes where expressions are, and the
/// expressions and tags.
fn split(template: &str) -> (Vec<Piece>, Vec<Segment>) {
    let mut pieces = Vec::new();
    let mut segments = Vec::new();
    let mut rest = template;
    let mut offset = 0;
    while !rest.is_empty() {
        let next = ["{{", "{%", "<#"]
            .iter()
            .filter_map(|open| rest.find(open).map(|at| (at, *open)))
            .min();
        let Some((at, open)) = next else {
            pieces.extend(rest.chars().map(Piece::Char));
            break;
        };
        pieces.extend(rest[..at].chars().map(Piece::Char));
        let close = match open {
            "{{" => "}}",
            "{%" => "%}",
            _ => "#>",
        };
        let body_start = at + 2;
        let Some(len) = rest[body_start..].find(close) else {
            // Unclosed: Tera refuses it anyway.
            break;
        };
        let body = rest[body_start..body_start + len]
            .trim_matches('-')
            .to_string();
        let end = body_start + len + 2;
        match open {
            "{{" => {
                pieces.push(Piece::Hole(segments.len()));
                segments.push(Segment::Expr {
                    text: body,
                    offset: offset + at,
                });
            }
            "{%" => {
                if body.trim() == "raw" {
                    // Literal text up to `{% endraw %}`.
                    let after = &rest[end..];
                    let stop = find_endraw(after);
                    let (raw, skip) = match stop {
                        Some((s, e)) => (&after[..s], e),
                        None => (after, after.len()),
                    };
                    pieces.extend(raw.chars().map(Piece::Char));
                    offset += end + skip;
                    rest = &rest[end + skip..];
                    continue;
                }
                segments.push(Segment::Tag(body));
            }
            _ => {}
        }
        offset += end;
        rest = &rest[end..];
    }
    (pieces, segments)
}

/// (start, end) of the first `{% endraw %}` tag in `text`.
fn find_endraw(text: &str) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(at) = text[from..].find("{%") {
        let start = from + at;
        let close = text[start..].find("%}")? + start;
        if text[start + 2..close].trim_matches('-').trim() == "endraw" {
            return Some((start, close + 2));
        }
        from = close + 2;
    }
    None
}

fn idents(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
}

/// `outside`, plus every variable a `{% set %}` or `{% for %}` takes from one.
fn tainted_names(segments: &[Segment], outside: &[&str]) -> Vec<String> {
    let mut tainted: Vec<String> = outside.iter().map(|s| s.to_string()).collect();
    loop {
        let before = tainted.len();
        for segment in segments {
            let Segment::Tag(tag) = segment else { continue };
            let tag = tag.trim();
            let (names, source) = if let Some(rest) = tag
                .strip_prefix("set_global ")
                .or_else(|| tag.strip_prefix("set "))
            {
                match rest.split_once('=') {
                    Some((name, source)) => (name, source),
                    None => continue,
                }
            } else if let Some(rest) = tag.strip_prefix("for ") {
                match rest.split_once(" in ") {
                    Some((names, source)) => (names, source),
                    None => continue,
                }
            } else {
                continue;
            };
            if idents(source).any(|w| tainted.iter().any(|t| t == w)) {
                for name in idents(names) {
                    if !tainted.iter().any(|t| t == name) {
                        tainted.push(name.to_string());
                    }
                }
            }
        }
        if tainted.len() == before {
            return tainted;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Top,
    Double,
    Backtick,
    /// `$(…)` (and `$((…))`), with its count of open parentheses.
    Command(u32),
    /// `${…}`, with its count of open braces.
    Param(u32),
}

impl Ctx {
    fn name(self) -> &'static str {
        match self {
            Ctx::Top => "a plain word",
            Ctx::Double => "double quotes",
            Ctx::Backtick => "backticks",
            Ctx::Command(_) => "`$(...)`",
            Ctx::Param(_) => "`${...}`",
        }
    }
}

/// Reads `pieces` as the shell would, calling `flag` for each hole that is
/// not a plain word.
fn lex(pieces: &[Piece], flag: &mut dyn FnMut(usize, &'static str)) {
    let ch = |i: usize| match pieces.get(i) {
        Some(Piece::Char(c)) => Some(*c),
        _ => None,
    };
    let mut stack = vec![Ctx::Top];
    // Heredocs opened on the current line: (delimiter, strip leading tabs).
    let mut heredocs: Vec<(String, bool)> = Vec::new();
    let mut word_start = true;
    let mut i = 0;
    while i < pieces.len() {
        let ctx = *stack.last().unwrap_or(&Ctx::Top);
        let c = match pieces[i] {
            Piece::Hole(h) => {
                if ctx != Ctx::Top {
                    flag(h, ctx.name());
                }
                word_start = false;
                i += 1;
                continue;
            }
            Piece::Char(c) => c,
        };
        let next = ch(i + 1);
        match ctx {
            Ctx::Double => match c {
                '\\' => i += 1,
                '"' => {
                    stack.pop();
                }
                '`' => stack.push(Ctx::Backtick),
                '$' if next == Some('(') => {
                    stack.push(Ctx::Command(0));
                    i += 1;
                }
                '$' if next == Some('{') => {
                    stack.push(Ctx::Param(0));
                    i += 1;
                }
                _ => {}
            },
            Ctx::Backtick => match c {
                '\\' => i += 1,
                '`' => {
                    stack.pop();
                }
                _ => {}
            },
            Ctx::Top | Ctx::Command(_) | Ctx::Param(_) => {
                let in_param = matches!(ctx, Ctx::Param(_));
                match c {
                    '\\' => i += 1,
                    '\'' => {
                        // Single quotes (and `$'…'`): nothing is special
                        // until the closing quote, and a hole there is not a word.
                        let ansi = i > 0 && ch(i - 1) == Some('$');
                        i += 1;
                        while i < pieces.len() {
                            match pieces[i] {
                                Piece::Hole(h) => flag(h, "single quotes"),
                                Piece::Char('\\') if ansi => i += 1,
                                Piece::Char('\'') => break,
                                Piece::Char(_) => {}
                            }
                            i += 1;
                        }
                    }
                    '"' => stack.push(Ctx::Double),
                    '`' => stack.push(Ctx::Backtick),
                    '$' if next == Some('(') => {
                        stack.push(Ctx::Command(0));
                        i += 1;
                    }
                    '$' if next == Some('{') => {
                        stack.push(Ctx::Param(0));
                        i += 1;
                    }
                    '(' => {
                        if let Some(Ctx::Command(n)) = stack.last_mut() {
                            *n += 1;
                        }
                    }
                    ')' => match stack.last_mut() {
                        Some(Ctx::Command(0)) => {
                            stack.pop();
                        }
                        Some(Ctx::Command(n)) => *n -= 1,
                        _ => {}
                    },
                    '{' if in_param => {
                        if let Some(Ctx::Param(n)) = stack.last_mut() {
                            *n += 1;
                        }
                    }
                    '}' if in_param => match stack.last_mut() {
                        Some(Ctx::Param(0)) => {
                            stack.pop();
                        }
                        Some(Ctx::Param(n)) => *n -= 1,
                        _ => {}
                    },
                    '#' if word_start && !in_param => {
                        // A comment, to the end of the line.
                        while i + 1 < pieces.len() && ch(i + 1) != Some('\n') {
                            i += 1;
                            if let Piece::Hole(h) = pieces[i] {
                                flag(h, "a comment");
                            }
                        }
                    }
                    '<' if next == Some('<') && !in_param => {
                        if ch(i + 2) == Some('<') {
                            // A here-string: the next word is a plain word.
                            i += 2;
                        } else {
                            i += 2;
                            let strip = ch(i) == Some('-');
                            if strip {
                                i += 1;
                            }
                            while matches!(ch(i), Some(' ' | '\t')) {
                                i += 1;
                            }
                            let mut delimiter = String::new();
                            while i < pieces.len() {
                                match pieces[i] {
                                    Piece::Char(c)
                                        if c.is_whitespace() || ";|&<>()".contains(c) =>
                                    {
                                        break;
                                    }
                                    Piece::Char('\'' | '"' | '\\') => {}
                                    Piece::Char(c) => delimiter.push(c),
                                    Piece::Hole(h) => flag(h, "a heredoc"),
                                }
                                i += 1;
                            }
                            heredocs.push((delimiter, strip));
                            word_start = false;
                            continue;
                        }
                    }
                    '\n' if !heredocs.is_empty() => {
                        i = read_heredoc_bodies(pieces, i + 1, &heredocs, flag);
                        heredocs.clear();
                        word_start = true;
                        continue;
                    }
                    _ => {}
                }
            }
        }
        word_start = c.is_whitespace() || ";&|()<>".contains(c);
        i += 1;
    }
}

/// Reads the bodies of `heredocs` from `start` (the first piece after the
/// line that opened them), flagging every hole; returns where the shell
/// resumes.
fn read_heredoc_bodies(
    pieces: &[Piece],
    start: usize,
    heredocs: &[(String, bool)],
    flag: &mut dyn FnMut(usize, &'static str),
) -> usize {
    let mut i = start;
    for (delimiter, strip) in heredocs {
        loop {
            if i >= pieces.len() {
                return i;
            }
            let mut line = String::new();
            let mut holes = Vec::new();
            while i < pieces.len() && pieces[i] != Piece::Char('\n') {
                match pieces[i] {
                    Piece::Char(c) => line.push(c),
                    Piece::Hole(h) => {
                        holes.push(h);
                        line.push('\u{fffc}');
                    }
                }
                i += 1;
            }
            i += 1; // the newline
            let text = if *strip {
                line.trim_start_matches('\t')
            } else {
                &line
            };
            if text == delimiter {
                break;
            }
            for h in holes {
                flag(h, "a heredoc");
            }
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn places(template: &str) -> Vec<(&'static str, usize)> {
        outside_value_placements(template, COMMAND_OUTSIDE_NAMES)
            .into_iter()
            .map(|p| (p.inside, p.line))
            .collect()
    }

    #[test]
    fn folder_name_inside_double_quotes_is_found() {
        // The reproduction of issue 9: `ls "{{ session.dicom_dir }}"`.
        let found =
            outside_value_placements(r#"ls "{{ session.dicom_dir }}""#, COMMAND_OUTSIDE_NAMES);
        assert_eq!(
            found,
            vec![Placement {
                expr: "{{ session.dicom_dir }}".into(),
                line: 1,
                excerpt: r#"ls "{{ session.dicom_dir }}""#.into(),
                inside: "double quotes",
            }]
        );
    }

    #[test]
    fn plain_words_pass() {
        assert!(places("ls {{ session.dicom_dir }}").is_empty());
        assert!(places("heudiconv --files {{ session.dicom_dir }}/*/* -o x").is_empty());
        assert!(places("dir={{ session.dicom_dir }}\nls \"$dir\"").is_empty());
        assert!(places("echo 'a' {{ session.scan_id }} \"b\"").is_empty());
        assert!(places("n=${#files[@]}; echo {{ session.dicom_dir }}").is_empty());
        assert!(places("cat <<< {{ session.dicom_dir }}").is_empty());
        assert!(places("x=$(date) && ls {{ session.dicom_dir }} # done").is_empty());
        // Labels and paths from the config are not outside values.
        assert!(places(r#"echo "sub-{{ subject.label }} {{ paths.bids_root }}""#).is_empty());
        assert!(
            places(
                "{% raw %}echo \"{{ session.dicom_dir }}\"{% endraw %} ls {{ session.dicom_dir }}"
            )
            .is_empty()
        );
    }

    #[test]
    fn every_other_place_is_found() {
        assert_eq!(
            places("ls \"x/{{ session.dicom_dir }}/y\""),
            [("double quotes", 1)]
        );
        assert_eq!(
            places("echo `ls {{ session.dicom_dir }}`"),
            [("backticks", 1)]
        );
        assert_eq!(
            places("n=$(ls {{ session.dicom_dir }} | wc -l)"),
            [("`$(...)`", 1)]
        );
        assert_eq!(
            places("echo ${x:-{{ session.scan_id }}}"),
            [("`${...}`", 1)]
        );
        assert_eq!(
            places("echo '{{ session.scan_id }}'"),
            [("single quotes", 1)]
        );
        assert_eq!(places("true # {{ session.scan_id }}"), [("a comment", 1)]);
        assert_eq!(
            places("cat <<EOF\nscan {{ session.scan_id }}\nEOF\nls {{ session.dicom_dir }}"),
            [("a heredoc", 2)]
        );
        assert_eq!(
            places("cat <<-'EOF' > f\n\t{{ session.scan_id }}\n\tEOF\n"),
            [("a heredoc", 2)]
        );
        assert_eq!(
            places("echo \"$(ls {{ session.dicom_dir }})\""),
            [("`$(...)`", 1)]
        );
    }

    #[test]
    fn loops_and_sets_carry_the_taint() {
        assert_eq!(
            places("{% for s in sessions %}ls \"{{ s.dicom_dir }}\"{% endfor %}"),
            [("double quotes", 1)]
        );
        assert_eq!(
            places("{% set d = session.dicom_dir %}\nls \"{{ d }}\""),
            [("double quotes", 2)]
        );
        assert_eq!(
            places("{% set e = session.dicom_dir %}{% set d = e %}ls \"{{ d | shell_quote }}\""),
            [("double quotes", 1)]
        );
        assert!(places("{% for s in sessions %}echo \"{{ s.label }}\"{% endfor %}").is_empty());
    }

    #[test]
    fn script_templates_guard_the_command() {
        let found = outside_value_placements(
            "#!/bin/bash\nbash -c \"{{ command }}\"\n",
            SCRIPT_OUTSIDE_NAMES,
        );
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].inside, found[0].line), ("double quotes", 2));
        let bundled =
            outside_value_placements(crate::config::BUNDLED_TEMPLATE, SCRIPT_OUTSIDE_NAMES);
        assert!(bundled.is_empty(), "{bundled:?}");
    }
}
