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
    /// Where it is, as words to follow "puts `{{ x }}`": `inside double
    /// quotes`, `inside a heredoc`, `as an argument of `eval``…
    pub inside: &'static str,
}

/// Which template is read, and so which values come from outside the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateKind {
    /// A pipeline's command: session folder names (`dicom_dir`) and the scan
    /// IDs taken from them. A plain word there must not be code either (the
    /// command's name, an argument of `eval` or of `sh -c`).
    Command,
    /// A script template: `command` carries those values, and is meant to
    /// run as code there; it must only not be re-read inside quotes.
    Script,
}

impl TemplateKind {
    fn outside(self) -> &'static [&'static str] {
        match self {
            TemplateKind::Command => &["dicom_dir", "scan_id"],
            TemplateKind::Script => &["command", "dicom_dir", "scan_id"],
        }
    }
}

/// Every `{{ … }}` of `template` that mentions a value from outside the
/// config (or a variable set or looped from one) and is not a plain shell
/// word, or is a plain word that is code.
pub fn outside_value_placements(template: &str, kind: TemplateKind) -> Vec<Placement> {
    let (pieces, exprs) = split(template);
    let tainted = tainted_names(&exprs, kind.outside());
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
    lex(&pieces, kind == TemplateKind::Command, &mut flag);
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
            Ctx::Top => "as a plain word",
            Ctx::Double => "inside double quotes",
            Ctx::Backtick => "inside backticks",
            Ctx::Command(_) => "inside `$(...)`",
            Ctx::Param(_) => "inside `${...}`",
        }
    }
}

/// Reads `pieces` as the shell would, calling `flag` for each hole that is
/// not a plain word.
fn lex(pieces: &[Piece], code_words: bool, flag: &mut dyn FnMut(usize, &'static str)) {
    let ch = |i: usize| match pieces.get(i) {
        Some(Piece::Char(c)) => Some(*c),
        _ => None,
    };
    let mut stack = vec![Ctx::Top];
    // Heredocs opened on the current line: (delimiter, strip leading tabs).
    let mut heredocs: Vec<(String, bool)> = Vec::new();
    let mut word_start = true;
    // The words of the current simple command at the top level, and the
    // word being read: a plain word is still code as the command's name, or
    // as the argument of `eval` or of `sh -c`.
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut i = 0;
    while i < pieces.len() {
        let ctx = *stack.last().unwrap_or(&Ctx::Top);
        let c = match pieces[i] {
            Piece::Hole(h) => {
                if ctx != Ctx::Top {
                    flag(h, ctx.name());
                } else if code_words && let Some(place) = code_position(&words, &word) {
                    flag(h, place);
                }
                word.push('\u{fffc}');
                word_start = false;
                i += 1;
                continue;
            }
            Piece::Char(c) => c,
        };
        // `"eval"` is `eval`: text in double quotes at the top level is part
        // of the word (what a `$` or a backquote opens is not).
        if ctx == Ctx::Double && stack.len() == 2 && !matches!(c, '"' | '\\' | '$' | '`') {
            word.push(c);
        }
        if ctx == Ctx::Top {
            match c {
                ' ' | '\t' => {
                    if !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                }
                // `x=( … )`: an array's words are arguments.
                '(' if word.ends_with('=') => word.push(c),
                ';' | '&' | '|' | '\n' | '(' | ')' => {
                    word.clear();
                    words.clear();
                }
                '\'' | '"' | '\\' => {}
                _ => word.push(c),
            }
        }
        let next = ch(i + 1);
        if c == '\\'
            && let Some(Piece::Hole(h)) = pieces.get(i + 1)
        {
            // `\'…'`: the backslash takes the value's opening quote.
            flag(*h, "after a backslash");
        }
        match ctx {
            Ctx::Double => match c {
                '\\' => {
                    if stack.len() == 2
                        && let Some(e) = next
                    {
                        word.push(e);
                    }
                    i += 1;
                }
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
                    '\\' => {
                        // `\eval` is `eval`: the escaped character is part of the word.
                        if ctx == Ctx::Top
                            && let Some(e) = next.filter(|&e| e != '\n')
                        {
                            word.push(e);
                        }
                        i += 1;
                    }
                    '\'' => {
                        // Single quotes (and `$'…'`): nothing is special
                        // until the closing quote, and a hole there is not a word.
                        let ansi = i > 0 && ch(i - 1) == Some('$');
                        i += 1;
                        while i < pieces.len() {
                            match pieces[i] {
                                Piece::Hole(h) => flag(h, "inside single quotes"),
                                Piece::Char('\\') if ansi => i += 1,
                                Piece::Char('\'') => break,
                                // `'eval'` is `eval`: quoted text is part of the word.
                                Piece::Char(q) if ctx == Ctx::Top => word.push(q),
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
                                flag(h, "inside a comment");
                            }
                        }
                    }
                    '<' if next == Some('<') && !in_param => {
                        if ch(i + 2) == Some('<') || ch(i + 2).is_some_and(|c| c.is_ascii_digit()) {
                            // A here-string (the next word is a plain word),
                            // or a shift in arithmetic (`$((1<<2))`).
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
                                    Piece::Hole(h) => flag(h, "inside a heredoc"),
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

/// Where a plain word is code all the same: as the name of the command (no
/// word before it but assignments and prefixes such as `env`), as an
/// argument of `eval`, or after a shell's `-c` or an interpreter's `-c`/`-e`.
fn code_position(words: &[String], word: &str) -> Option<&'static str> {
    const PREFIXES: &[&str] = &[
        "env", "exec", "command", "builtin", "nohup", "time", "sudo", "nice",
    ];
    const SHELLS: &[&str] = &["sh", "bash", "dash", "zsh", "ksh", "ash", "busybox"];
    const INTERPRETERS: &[&str] = &["python", "python3", "perl", "ruby", "node", "Rscript"];
    let is_assignment = |w: &str| {
        w.split_once('=').is_some_and(|(name, _)| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    };
    if words
        .iter()
        .chain([&word.to_string()])
        .any(|w| w.contains("=("))
    {
        // The elements of an array assignment, `x=( … )`.
        return None;
    }
    let command = words
        .iter()
        .find(|w| !is_assignment(w) && !PREFIXES.contains(&w.as_str()));
    let Some(command) = command else {
        return (word.is_empty()).then_some("as the command's name");
    };
    if command == "eval" {
        return Some("as an argument of `eval`");
    }
    let base = |w: &str| w.rsplit('/').next().unwrap_or(w).to_string();
    for (i, w) in words.iter().enumerate() {
        let name = base(w);
        let later = &words[i + 1..];
        if SHELLS.contains(&name.as_str())
            && later
                .iter()
                .any(|f| f.starts_with('-') && !f.starts_with("--") && f.contains('c'))
        {
            return Some("as a shell's `-c` code");
        }
        if INTERPRETERS.contains(&name.as_str()) && later.iter().any(|f| f == "-c" || f == "-e") {
            return Some("as an interpreter's `-c`/`-e` code");
        }
    }
    None
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
                flag(h, "inside a heredoc");
            }
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn places(template: &str) -> Vec<(&'static str, usize)> {
        outside_value_placements(template, TemplateKind::Command)
            .into_iter()
            .map(|p| (p.inside, p.line))
            .collect()
    }

    #[test]
    fn folder_name_inside_double_quotes_is_found() {
        // The reproduction of issue 9: `ls "{{ session.dicom_dir }}"`.
        let found =
            outside_value_placements(r#"ls "{{ session.dicom_dir }}""#, TemplateKind::Command);
        assert_eq!(
            found,
            vec![Placement {
                expr: "{{ session.dicom_dir }}".into(),
                line: 1,
                excerpt: r#"ls "{{ session.dicom_dir }}""#.into(),
                inside: "inside double quotes",
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
        for command in [
            "if [ -d {{ session.dicom_dir }} ]; then echo ok; fi",
            "for f in {{ session.dicom_dir }}/*; do echo \"$f\"; done",
            "case {{ session.scan_id }} in P*) echo p;; esac\nls {{ session.dicom_dir }}",
            "x=( {{ session.dicom_dir }}/* )",
            "echo \"it's\" {{ session.scan_id }}",
            "# it's a comment\nls {{ session.dicom_dir }}",
            "awk '{print $1}' {{ session.dicom_dir }}/list",
            "echo $(( 1 << 2 )) $((3<<1)) {{ session.scan_id }}",
        ] {
            assert!(
                places(command).is_empty(),
                "{command}: {:?}",
                places(command)
            );
        }
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
            [("inside double quotes", 1)]
        );
        assert_eq!(
            places("echo `ls {{ session.dicom_dir }}`"),
            [("inside backticks", 1)]
        );
        assert_eq!(
            places("n=$(ls {{ session.dicom_dir }} | wc -l)"),
            [("inside `$(...)`", 1)]
        );
        assert_eq!(
            places("echo ${x:-{{ session.scan_id }}}"),
            [("inside `${...}`", 1)]
        );
        assert_eq!(
            places("echo '{{ session.scan_id }}'"),
            [("inside single quotes", 1)]
        );
        assert_eq!(
            places("true # {{ session.scan_id }}"),
            [("inside a comment", 1)]
        );
        assert_eq!(
            places("cat <<EOF\nscan {{ session.scan_id }}\nEOF\nls {{ session.dicom_dir }}"),
            [("inside a heredoc", 2)]
        );
        assert_eq!(
            places("cat <<-'EOF' > f\n\t{{ session.scan_id }}\n\tEOF\n"),
            [("inside a heredoc", 2)]
        );
        assert_eq!(
            places("echo \"$(ls {{ session.dicom_dir }})\""),
            [("inside `$(...)`", 1)]
        );
    }

    #[test]
    fn a_plain_word_that_is_code_is_found() {
        assert_eq!(
            places("{{ session.scan_id }} --help"),
            [("as the command's name", 1)]
        );
        assert_eq!(
            places("A=1 env {{ session.dicom_dir }}"),
            [("as the command's name", 1)]
        );
        assert_eq!(
            places("eval {{ session.scan_id }}"),
            [("as an argument of `eval`", 1)]
        );
        // Found by the property test below: a quoted or escaped name is
        // the same command once the shell removes the quoting.
        for quoted in ["\\eval", "'eval'", "\"eval\"", "e\\val", "ev'al'"] {
            assert_eq!(
                places(&format!("{quoted} {{{{ session.scan_id }}}}")),
                [("as an argument of `eval`", 1)],
                "{quoted}"
            );
        }
        assert_eq!(
            places("\"bash\" -c {{ session.scan_id }}"),
            [("as a shell's `-c` code", 1)]
        );
        assert_eq!(
            places("x=1; bash -c {{ session.scan_id }}"),
            [("as a shell's `-c` code", 1)]
        );
        assert_eq!(
            places("apptainer exec img /bin/sh -ec {{ session.scan_id }}"),
            [("as a shell's `-c` code", 1)]
        );
        assert_eq!(
            places("python3 -c {{ session.scan_id }}"),
            [("as an interpreter's `-c`/`-e` code", 1)]
        );
        // Arguments, assignments and the next command are plain words.
        assert!(
            places("ls {{ session.dicom_dir }}; eval true\nls {{ session.dicom_dir }}").is_empty()
        );
        assert!(places("dir={{ session.dicom_dir }} ls \"$dir\"").is_empty());
        assert!(places("bash script.sh {{ session.dicom_dir }}").is_empty());
    }

    mod end_to_end {
        //! Whatever the command, when the loader accepts it, bash never runs
        //! a folder name: the folder names here are the worst a name could
        //! be (discovery would refuse them), so this checks the second wall
        //! alone.

        use std::process::{Command, Stdio};

        use proptest::prelude::*;

        use super::super::*;
        use crate::templating::shell_quote;

        const NAMES: &[&str] = &[
            "X$(touch P1)",
            "`touch P2`",
            "'; touch P3; '",
            "\"; touch P4; \"",
            "a\nb; touch P5",
            "touch P6",
            "${x:-$(touch P7)}",
        ];

        fn fragment() -> impl Strategy<Value = &'static str> {
            proptest::sample::select(vec![
                "ls ",
                "echo ",
                "{{ session.dicom_dir }}",
                "{{ session.dicom_dir }}",
                "{{ session.dicom_dir }}",
                " ls ",
                " ",
                " ",
                "\"",
                "'",
                "`",
                "$(",
                ")",
                "${x:-",
                "}",
                "; ",
                "\n",
                "<<EOF\n",
                "\nEOF\n",
                "# ",
                "x=",
                "eval ",
                "bash -c ",
                "true ",
                "| cat ",
                "=( ",
                " )",
                "\\",
            ])
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn an_accepted_command_never_runs_a_folder_name(
                parts in proptest::collection::vec(fragment(), 1..12),
                name in proptest::sample::select(NAMES.to_vec()),
            ) {
                let command: String = parts.concat();
                if !outside_value_placements(&command, TemplateKind::Command).is_empty() {
                    return Ok(());
                }
                let script = command.replace("{{ session.dicom_dir }}", &shell_quote(&format!("/d/{name}")));
                let dir = tempfile::tempdir().unwrap();
                let _ = Command::new("timeout")
                    .args(["5", "bash", "-c", &script])
                    .current_dir(dir.path())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                let made: Vec<String> = std::fs::read_dir(dir.path())
                    .unwrap()
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with('P'))
                    .collect();
                prop_assert!(made.is_empty(), "{command:?} ran {name:?}: made {made:?}");
            }
        }
    }

    #[test]
    fn a_backslash_before_the_value_is_found() {
        // `ls \'X$(touch P)' ' '`: the backslash takes the opening quote.
        assert_eq!(
            places("ls \\{{ session.dicom_dir }} ' '"),
            [("after a backslash", 1)]
        );
        assert_eq!(
            places("echo \"\\{{ session.scan_id }}\""),
            [("after a backslash", 1)]
        );
    }

    #[test]
    fn loops_and_sets_carry_the_taint() {
        assert_eq!(
            places("{% for s in sessions %}ls \"{{ s.dicom_dir }}\"{% endfor %}"),
            [("inside double quotes", 1)]
        );
        assert_eq!(
            places("{% set d = session.dicom_dir %}\nls \"{{ d }}\""),
            [("inside double quotes", 2)]
        );
        assert_eq!(
            places("{% set e = session.dicom_dir %}{% set d = e %}ls \"{{ d | shell_quote }}\""),
            [("inside double quotes", 1)]
        );
        assert!(places("{% for s in sessions %}echo \"{{ s.label }}\"{% endfor %}").is_empty());
    }

    #[test]
    fn script_templates_guard_the_command() {
        let found = outside_value_placements(
            "#!/bin/bash\nbash -c \"{{ command }}\"\n",
            TemplateKind::Script,
        );
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].inside, found[0].line),
            ("inside double quotes", 2)
        );
    }
}
