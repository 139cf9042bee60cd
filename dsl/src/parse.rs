//! Parsing: lexer tokens through the lalrpop grammar into an [`ast::File`].
//!
//! The parser never gives up: lexing skips bad characters, and the grammar
//! recovers at the end of the line (`!` in `Item` and `Stmt`), so one run
//! reports every syntax error and still returns a tree.

use crate::ast;
use crate::diag::Diagnostic;
use crate::lexer::{lex, Tok};
use crate::span::{FileId, Span};
use lalrpop_util::{ErrorRecovery, ParseError};

/// The grammar's user-error payload. The lexer reports its errors on the side,
/// so the parser itself never raises one.
#[derive(Clone, Debug, PartialEq)]
pub enum ParseErrorPayload {}

#[allow(clippy::all, clippy::pedantic, unused)]
mod grammar {
    include!(concat!(env!("OUT_DIR"), "/grammar.rs"));
}

/// Parses one file. Returns the tree and every diagnostic (lexical and syntax).
pub fn parse_file(text: &str, file: FileId) -> (ast::File, Vec<Diagnostic>) {
    let (tokens, lex_errors) = lex(text, file);
    let mut diags: Vec<Diagnostic> = lex_errors
        .into_iter()
        .map(|e| {
            let d = Diagnostic::error(e.message, e.span);
            match e.hint {
                Some(h) => d.with_help(h),
                None => d,
            }
        })
        .collect();
    if let Some(d) = too_long(&tokens, file) {
        diags.push(d);
        return (ast::File { items: Vec::new() }, diags);
    }
    let mut recovered: Vec<ErrorRecovery<usize, Tok, ParseErrorPayload>> = Vec::new();
    let eof = text.len();
    let result = grammar::FileParser::new().parse(
        file,
        &mut recovered,
        tokens.into_iter().map(Ok::<_, ParseErrorPayload>),
    );
    for r in recovered {
        diags.push(syntax_diagnostic(r.error, file, eof));
    }
    let tree = match result {
        Ok(t) => t,
        Err(e) => {
            diags.push(syntax_diagnostic(e, file, eof));
            ast::File { items: Vec::new() }
        }
    };
    (tree, diags)
}

/// Parses a single expression (for tests and `--set` values).
pub fn parse_expr(text: &str, file: FileId) -> Result<ast::Expr, Vec<Diagnostic>> {
    let (mut tokens, lex_errors) = lex(text, file);
    if !lex_errors.is_empty() {
        return Err(lex_errors
            .into_iter()
            .map(|e| Diagnostic::error(e.message, e.span))
            .collect());
    }
    if matches!(tokens.last(), Some((_, Tok::Nl, _))) {
        tokens.pop();
    }
    let mut recovered = Vec::new();
    grammar::ExprParser::new()
        .parse(
            file,
            &mut recovered,
            tokens.into_iter().map(Ok::<_, ParseErrorPayload>),
        )
        .map_err(|e| vec![syntax_diagnostic(e, file, text.len())])
}

/// The most tokens one statement may have. Later stages walk a
/// statement's expression tree recursively, and a long sum is a tree as
/// deep as it has terms: this bound keeps every walk within the compiler
/// thread's stack (the CLI runs on a 4 GiB one), so a longer statement is
/// an error, not a crash.
pub const MAX_STATEMENT_TOKENS: usize = 400_000;

/// A diagnostic for the first statement over [`MAX_STATEMENT_TOKENS`].
fn too_long(tokens: &[crate::lexer::Spanned], file: FileId) -> Option<Diagnostic> {
    let mut start = 0;
    for (k, (_, t, _)) in tokens.iter().enumerate() {
        if matches!(t, Tok::Nl | Tok::LBrace | Tok::RBrace) {
            start = k + 1;
        } else if k - start >= MAX_STATEMENT_TOKENS {
            let (lo, _, hi) = tokens[start];
            return Some(
                Diagnostic::error(
                    format!("this statement has more than {MAX_STATEMENT_TOKENS} tokens"),
                    Span::new(file, lo, hi),
                )
                .with_label("this statement is too long to compile")
                .with_help("split it into several statements"),
            );
        }
    }
    None
}

fn describe_expected(expected: &[String]) -> Option<String> {
    let mut names: Vec<String> = expected
        .iter()
        .map(|s| match s.as_str() {
            "ident" => "an identifier".to_string(),
            "int" | "float" => "a number".to_string(),
            "Nl" => "end of line".to_string(),
            s => s.replace('"', "`"),
        })
        .collect();
    names.dedup();
    if names.is_empty() {
        return None;
    }
    if names.len() > 8 {
        return None;
    }
    Some(format!("expected {}", names.join(", ")))
}

fn syntax_diagnostic(
    e: ParseError<usize, Tok, ParseErrorPayload>,
    file: FileId,
    eof: usize,
) -> Diagnostic {
    match e {
        ParseError::InvalidToken { location } => {
            Diagnostic::error("invalid token", Span::new(file, location, location + 1))
        }
        ParseError::UnrecognizedEof { location, expected } => {
            let loc = location.min(eof);
            let d = Diagnostic::error("unexpected end of file", Span::new(file, loc, loc));
            match describe_expected(&expected) {
                Some(h) => d.with_label(h),
                None => d,
            }
        }
        ParseError::UnrecognizedToken {
            token: (lo, tok, hi),
            expected,
        } => {
            let (lo, hi) = if tok == Tok::Nl {
                (lo, lo.max(hi.min(lo + 1)))
            } else {
                (lo, hi)
            };
            let hi = hi.min(eof).max(lo);
            let msg = if tok == Tok::Nl {
                "unexpected end of line".to_string()
            } else {
                format!("unexpected {tok}")
            };
            let mut d = Diagnostic::error(msg, Span::new(file, lo, hi));
            if let Some(h) = describe_expected(&expected) {
                d = d.with_label(h);
            }
            if tok == Tok::Nl && expected.iter().any(|s| s == "\")\"" || s == "\"]\"") {
                d = d.with_help("a bracket opened on this line is not closed");
            }
            if matches!(tok, Tok::Ident(_)) && expected.iter().any(|s| s == "Nl") {
                d = d.with_help("two operands in a row: is an operator missing, or should this start a new line?");
            }
            d
        }
        ParseError::ExtraToken {
            token: (lo, tok, hi),
        } => Diagnostic::error(format!("unexpected {tok}"), Span::new(file, lo, hi)),
        ParseError::User { error } => match error {},
    }
}
