//! POSIX shell quoting.

/// Quotes `s` as one POSIX shell word.
///
/// Left bare when it is non-empty and made only of `[A-Za-z0-9_./:=@%+,-]`
/// (so the usual paths, labels and options stay readable in the script);
/// otherwise wrapped in single quotes, each `'` written as `'\''`. Inside
/// single quotes nothing is special to the shell: `$`, backquotes, `\`, `!`,
/// globs, spaces and newlines all stay literal.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(is_bare) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// Quotes every word and joins them with spaces.
pub fn shell_join<S: AsRef<str>>(words: &[S]) -> String {
    let quoted: Vec<String> = words.iter().map(|w| shell_quote(w.as_ref())).collect();
    quoted.join(" ")
}

fn is_bare(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'_' | b'.' | b'/' | b':' | b'=' | b'@' | b'%' | b'+' | b',' | b'-'
        )
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn safe_words_stay_bare() {
        assert_eq!(shell_quote("sub-01"), "sub-01");
        assert_eq!(
            shell_quote("/data/heuristics:/heuristics:ro"),
            "/data/heuristics:/heuristics:ro"
        );
        assert_eq!(shell_quote("KEY=a,b@c%d+e"), "KEY=a,b@c%d+e");
    }

    #[test]
    fn empty_string_is_two_quotes() {
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn single_quote_inside() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn spaces_and_substitutions_are_quoted() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("$(rm -rf ~)"), "'$(rm -rf ~)'");
        assert_eq!(shell_quote("`id`"), "'`id`'");
        assert_eq!(shell_quote("~"), "'~'");
        assert_eq!(shell_quote("01; rm -rf ~"), "'01; rm -rf ~'");
        assert_eq!(shell_quote("*"), "'*'");
    }

    #[test]
    fn bash_reads_back_exactly_what_was_quoted() {
        let nasty = [
            "",
            "plain",
            "a b",
            "it's",
            "''",
            "$(touch /tmp/nfslurm-pwned)",
            "`id`",
            "${#x[@]}",
            "line\nbreak",
            "back\\slash",
            "!event",
            "tab\there",
            "ünïcode",
        ];
        let script = format!("printf '%s\\0' {}", shell_join(&nasty));
        let out = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        assert!(out.status.success());
        let got: Vec<String> = out
            .stdout
            .split(|&b| b == 0)
            .map(|w| String::from_utf8(w.to_vec()).unwrap())
            .collect();
        let mut expected: Vec<String> = nasty.iter().map(|s| s.to_string()).collect();
        expected.push(String::new()); // after the last NUL
        assert_eq!(got, expected);
    }
}
