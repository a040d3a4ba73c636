//! Tera syntax checks at load time, with the Tera environment nfslurm renders
//! with ([`crate::templating::new_tera`]: `<# … #>` comments, because bash's
//! `${#array[@]}` would open a Tera comment with the default `{#`), so that
//! what loads here renders there.

/// A Tera syntax error, located within the checked text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TemplateSyntaxError {
    pub message: String,
    /// 1-based line and column within the text, where Tera knows them.
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// The offending line of the text.
    pub excerpt: Option<String>,
}

/// Parses `text` as a Tera template named `name`, without rendering it.
pub(crate) fn check_tera(name: &str, text: &str) -> Result<(), TemplateSyntaxError> {
    let mut tera = crate::templating::new_tera();
    tera.add_raw_template(name, text)
        .map_err(|e| match e.kind() {
            tera::ErrorKind::SyntaxError(report) => {
                let span = report.span();
                let line = span.start_line.max(1);
                TemplateSyntaxError {
                    message: tidy(report.message()),
                    line: Some(line),
                    column: Some(span.start_col + 1),
                    excerpt: text.lines().nth(line - 1).map(|l| l.trim().to_string()),
                }
            }
            _ => plain(e.to_string()),
        })
}

/// Tera's messages in our style: lower-case start, no trailing period.
fn tidy(message: &str) -> String {
    let message = message.trim().trim_end_matches('.');
    let mut chars = message.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn plain(message: String) -> TemplateSyntaxError {
    TemplateSyntaxError {
        message: tidy(&message),
        line: None,
        column: None,
        excerpt: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bash_array_length_is_not_a_comment() {
        check_tera("t", "n=${#files[@]}; echo {{ x }} <# a comment #>").unwrap();
    }

    #[test]
    fn bundled_template_parses() {
        check_tera("sbatch.sh.tera", crate::config::BUNDLED_TEMPLATE).unwrap();
    }

    #[test]
    fn syntax_errors_are_located() {
        let err = check_tera("t", "echo ok\necho {{ x \n").unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(!err.message.is_empty());
    }
}
