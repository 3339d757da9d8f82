//! Diagnostics that name the file, line and column of what is wrong.

use std::fmt;

use marked_yaml::{Marker, Span, Spanned};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
    /// What a rule means on this host, worth knowing; never an error.
    Note,
}

/// One finding about a policy, with its place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based; 0 when the place is unknown.
    pub line: usize,
    pub column: usize,
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Note => "note",
        };
        if self.line == 0 {
            write!(f, "{}: {sev}: {}", self.file, self.message)
        } else {
            write!(f, "{}:{}:{}: {sev}: {}", self.file, self.line, self.column, self.message)
        }
    }
}

/// A place in a policy file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Place {
    pub file: String,
    pub line: usize,
    pub column: usize,
}

impl Place {
    pub fn new(file: &str, marker: Option<&Marker>, line_offset: usize) -> Self {
        match marker {
            Some(m) => Self { file: file.to_string(), line: m.line() + line_offset, column: m.column() },
            None => Self { file: file.to_string(), line: 0, column: 0 },
        }
    }

    pub fn of_span(file: &str, span: &Span, line_offset: usize) -> Self {
        Self::new(file, span.start(), line_offset)
    }

    pub fn of<T>(file: &str, s: &Spanned<T>, line_offset: usize) -> Self {
        Self::of_span(file, s.span(), line_offset)
    }

    pub fn error(&self, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: self.file.clone(),
            line: self.line,
            column: self.column,
            severity: Severity::Error,
            message: message.into(),
        }
    }

    pub fn warning(&self, message: impl Into<String>) -> Diagnostic {
        Diagnostic { severity: Severity::Warning, ..self.error(message) }
    }

    pub fn note(&self, message: impl Into<String>) -> Diagnostic {
        Diagnostic { severity: Severity::Note, ..self.error(message) }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 { write!(f, "{}", self.file) } else { write!(f, "{}:{}", self.file, self.line) }
    }
}

/// A list of diagnostics that contains at least one error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn has_errors(&self) -> bool {
        self.0.iter().any(|d| d.severity == Severity::Error)
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}
