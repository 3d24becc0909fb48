//! Config errors: every problem with where it is (field path, or line:column for TOML
//! syntax), so `cohort check` can print them all at once.

use std::fmt;

/// One semantic problem at a field path such as `service[0].variant[1].weight`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax or type error: serde stops at the first one.
    #[error("{}", syntax_message(.line, .column, .path, .message))]
    Syntax {
        line: usize,
        column: usize,
        path: String,
        message: String,
    },
    /// Validation collects every error.
    #[error("{} error(s):\n{}", .0.len(), join(.0))]
    Invalid(Vec<FieldError>),
}

impl ConfigError {
    /// Every error as one line each (for `cohort check`, the reload answer and logs).
    pub fn lines(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid(errs) => errs.iter().map(|e| e.to_string()).collect(),
            other => vec![other.to_string()],
        }
    }
}

fn syntax_message(line: &usize, column: &usize, path: &str, message: &str) -> String {
    if path.is_empty() || path == "." {
        format!("line {line}:{column}: {message}")
    } else {
        format!("line {line}:{column}: {path}: {message}")
    }
}

fn join(errs: &[FieldError]) -> String {
    errs.iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Collects field errors during validation.
#[derive(Debug, Default)]
pub struct Errors(pub Vec<FieldError>);

impl Errors {
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }
}
