//! Errors that carry what the user needs: an exit code and a hint.

/// An error that carries its exit code (docs/user-guide.md) and an optional hint.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub code: i32,
    pub message: String,
    pub hint: Option<String>,
}

impl Failure {
    pub fn user(message: impl Into<String>, hint: Option<&str>) -> anyhow::Error {
        Failure {
            code: 1,
            message: message.into(),
            hint: hint.map(str::to_string),
        }
        .into()
    }

    pub fn unreachable(message: impl Into<String>, hint: Option<&str>) -> anyhow::Error {
        Failure {
            code: 2,
            message: message.into(),
            hint: hint.map(str::to_string),
        }
        .into()
    }
}

/// An error with its causes, `outer: inner: root`, for one-line messages.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}
