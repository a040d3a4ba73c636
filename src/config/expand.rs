//! `$VAR` and `${VAR}` expansion in config values.
//!
//! Not applied to pipeline commands (Tera and bash: `$HOME` and `${#x}` there
//! belong to the job's shell) nor to regexes (`$` is an anchor). An undefined
//! variable is an error, never an empty string: `/scratch/$USER/work` under a
//! cron job without `USER` must not become `/scratch//work`.

use super::error::{ConfigError, Loc, Source};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ExpandError {
    Undefined(String),
    Unclosed,
    BadName(String),
}

impl ExpandError {
    pub fn into_config_error(self, src: &Source, loc: Loc, path: &str) -> ConfigError {
        match self {
            ExpandError::Undefined(name) => src.at(
                loc,
                path,
                format!("`{path}` uses `${name}`, which is not set in the environment"),
                Some(format!(
                    "set `{name}` (cron jobs see a minimal environment), give a default with \
                     `${{{name}:-value}}`, or write `$$` for a literal `$`"
                )),
            ),
            ExpandError::Unclosed => src.at(
                loc,
                path,
                format!("`{path}` has a `${{` without its closing `}}`"),
                Some("write `${NAME}`, or `$$` for a literal `$`".to_string()),
            ),
            ExpandError::BadName(inner) => src.at(
                loc,
                path,
                format!("`{path}` has `${{{inner}}}`, which is not a variable reference"),
                Some(
                    "write `${NAME}` or `${NAME:-default}`, or `$$` for a literal `$`".to_string(),
                ),
            ),
        }
    }
}

/// Expands `$NAME`, `${NAME}` and `${NAME:-default}`; `$$` is a literal `$`,
/// and a `$` not followed by a name or `{` is kept as is.
pub(crate) fn expand_vars(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(braced) = after.strip_prefix('{') {
            let end = braced.find('}').ok_or(ExpandError::Unclosed)?;
            let inner = &braced[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if !is_env_name(name) {
                return Err(ExpandError::BadName(inner.to_string()));
            }
            match (env(name), default) {
                (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => return Err(ExpandError::Undefined(name.to_string())),
            }
            rest = &braced[end + 1..];
        } else {
            let len = after
                .char_indices()
                .find(|&(i, c)| {
                    !(c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()))
                })
                .map_or(after.len(), |(i, _)| i);
            if len == 0 {
                out.push('$');
                rest = after;
                continue;
            }
            let name = &after[..len];
            out.push_str(&env(name).ok_or_else(|| ExpandError::Undefined(name.to_string()))?);
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// A shell variable name: a letter or `_`, then letters, digits and `_`.
pub(crate) fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "USER" => Some("ada".into()),
            "EMPTY" => Some(String::new()),
            "A1" => Some("x".into()),
            _ => None,
        }
    }

    fn ex(text: &str) -> Result<String, ExpandError> {
        expand_vars(text, &env)
    }

    #[test]
    fn expands_both_forms() {
        assert_eq!(ex("/scratch/$USER/w").unwrap(), "/scratch/ada/w");
        assert_eq!(ex("/scratch/${USER}x").unwrap(), "/scratch/adax");
        assert_eq!(ex("$A1$USER").unwrap(), "xada");
        assert_eq!(ex("$EMPTY/a").unwrap(), "/a");
    }

    #[test]
    fn dollar_escapes_and_literals() {
        assert_eq!(ex("cost $$5").unwrap(), "cost $5");
        assert_eq!(ex("$$USER").unwrap(), "$USER");
        assert_eq!(ex("a$").unwrap(), "a$");
        assert_eq!(ex("a$ b").unwrap(), "a$ b");
        assert_eq!(ex("$1").unwrap(), "$1");
    }

    #[test]
    fn defaults() {
        assert_eq!(ex("${NOPE:-/tmp}").unwrap(), "/tmp");
        assert_eq!(ex("${EMPTY:-d}").unwrap(), "d");
        assert_eq!(ex("${USER:-d}").unwrap(), "ada");
    }

    #[test]
    fn errors() {
        assert_eq!(ex("$NOPE/x"), Err(ExpandError::Undefined("NOPE".into())));
        assert_eq!(ex("${NOPE}"), Err(ExpandError::Undefined("NOPE".into())));
        assert_eq!(ex("${USER"), Err(ExpandError::Unclosed));
        assert_eq!(ex("${#x}"), Err(ExpandError::BadName("#x".into())));
    }
}
