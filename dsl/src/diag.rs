//! Diagnostics: an error or warning with a primary span, secondary labels,
//! notes and a help line, rendered like rustc through codespan-reporting:
//! `error: message`, `--> file:line:col`, the source line and a caret.

use crate::span::{SourceMap, Span};
use codespan_reporting::diagnostic::{Diagnostic as CsDiagnostic, Label};
use codespan_reporting::files::SimpleFiles;
use codespan_reporting::term::{self, Config};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub message: String,
    pub span: Span,
    /// Text under the primary caret.
    pub label: Option<String>,
    pub secondary: Vec<(Span, String)>,
    pub notes: Vec<String>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(message: impl Into<String>, span: Span) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            span,
            label: None,
            secondary: Vec::new(),
            notes: Vec::new(),
            help: None,
        }
    }

    pub fn warning(message: impl Into<String>, span: Span) -> Diagnostic {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(message, span)
        }
    }

    pub fn with_label(mut self, label: impl Into<String>) -> Diagnostic {
        self.label = Some(label.into());
        self
    }

    pub fn with_secondary(mut self, span: Span, label: impl Into<String>) -> Diagnostic {
        self.secondary.push((span, label.into()));
        self
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Diagnostic {
        self.notes.push(note.into());
        self
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// Renders diagnostics as plain text (no colour), in the given order.
pub fn render(sources: &SourceMap, diags: &[Diagnostic]) -> String {
    let mut files = SimpleFiles::new();
    let ids: Vec<usize> = sources
        .files
        .iter()
        .map(|f| files.add(f.name.clone(), f.text.clone()))
        .collect();
    let config = Config::default();
    let mut out = String::new();
    for d in diags {
        let file = ids[d.span.file as usize];
        let text_len = sources.get(d.span.file).text.len();
        let range = |s: Span| (s.lo as usize).min(text_len)..(s.hi as usize).min(text_len);
        let mut primary = Label::primary(file, range(d.span));
        if let Some(l) = &d.label {
            primary = primary.with_message(l.clone());
        }
        let mut labels = vec![primary];
        for (s, l) in &d.secondary {
            labels.push(Label::secondary(ids[s.file as usize], range(*s)).with_message(l.clone()));
        }
        let mut notes = d.notes.clone();
        if let Some(h) = &d.help {
            notes.push(format!("help: {h}"));
        }
        let cs = match d.severity {
            Severity::Error => CsDiagnostic::error(),
            Severity::Warning => CsDiagnostic::warning(),
        }
        .with_message(d.message.clone())
        .with_labels(labels)
        .with_notes(notes);
        // Writing to a String cannot fail except on a bad span, which
        // `range` has clamped; fall back to a plain line if it still does.
        if term::emit_to_string(&mut out, &config, &files, &cs).is_err() {
            let (line, col) = sources.line_col(d.span);
            out.push_str(&format!(
                "error: {}\n  --> {}:{line}:{col}\n",
                d.message,
                sources.get(d.span.file).name
            ));
        }
    }
    out
}
