//! Hand-written lexer feeding the lalrpop parser.
//!
//! Newlines end statements, as in Python: a newline inside `(...)` or `[...]`,
//! after a token that cannot end an expression (a binary operator, `=`, `,`,
//! `~`, `->`), or before a line that starts with `where`, joins lines instead.
//! Runs of newlines collapse into one `Nl` token, and newlines directly after
//! `{` or at the start of the file are dropped, so blank lines never matter.
//! A character that starts no token is reported and skipped, so lexing always
//! reaches the end of the file (several errors per run).

use crate::span::{FileId, Span};
use std::fmt;

#[derive(Clone, Debug, PartialEq)]
pub enum Tok {
    Ident(String),
    Int(i64),
    Float(f64),
    // keywords
    Use,
    Mixer,
    Filter,
    Fn,
    Mask,
    Config,
    Dim,
    Param,
    Return,
    Where,
    And,
    Or,
    Not,
    True,
    False,
    // punctuation
    LParen,
    RParen,
    LBrack,
    RBrack,
    LBrace,
    RBrace,
    Comma,
    Colon,
    Dot,
    Arrow,
    Tilde,
    Assign,
    Plus,
    Minus,
    Star,
    StarStar,
    Slash,
    SlashSlash,
    Percent,
    EqEq,
    NotEq,
    Lt,
    Le,
    Gt,
    Ge,
    Nl,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Tok::Ident(s) => return write!(f, "identifier `{s}`"),
            Tok::Int(v) => return write!(f, "number `{v}`"),
            Tok::Float(v) => return write!(f, "number `{v}`"),
            Tok::Use => "`use`",
            Tok::Mixer => "`mixer`",
            Tok::Filter => "`filter`",
            Tok::Fn => "`fn`",
            Tok::Mask => "`mask`",
            Tok::Config => "`config`",
            Tok::Dim => "`dim`",
            Tok::Param => "`param`",
            Tok::Return => "`return`",
            Tok::Where => "`where`",
            Tok::And => "`and`",
            Tok::Or => "`or`",
            Tok::Not => "`not`",
            Tok::True => "`true`",
            Tok::False => "`false`",
            Tok::LParen => "`(`",
            Tok::RParen => "`)`",
            Tok::LBrack => "`[`",
            Tok::RBrack => "`]`",
            Tok::LBrace => "`{`",
            Tok::RBrace => "`}`",
            Tok::Comma => "`,`",
            Tok::Colon => "`:`",
            Tok::Dot => "`.`",
            Tok::Arrow => "`->`",
            Tok::Tilde => "`~`",
            Tok::Assign => "`=`",
            Tok::Plus => "`+`",
            Tok::Minus => "`-`",
            Tok::Star => "`*`",
            Tok::StarStar => "`**`",
            Tok::Slash => "`/`",
            Tok::SlashSlash => "`//`",
            Tok::Percent => "`%`",
            Tok::EqEq => "`==`",
            Tok::NotEq => "`!=`",
            Tok::Lt => "`<`",
            Tok::Le => "`<=`",
            Tok::Gt => "`>`",
            Tok::Ge => "`>=`",
            Tok::Nl => "end of line",
        };
        f.write_str(s)
    }
}

/// A lexing problem: a span and a message. Lexing continues after it.
#[derive(Clone, Debug, PartialEq)]
pub struct LexError {
    pub span: Span,
    pub message: String,
    pub hint: Option<String>,
}

pub type Spanned = (usize, Tok, usize);

/// Whether a newline after this token continues the expression.
fn joins_next_line(t: &Tok) -> bool {
    use Tok::*;
    matches!(
        t,
        Plus | Minus
            | Star
            | StarStar
            | Slash
            | SlashSlash
            | Percent
            | EqEq
            | NotEq
            | Lt
            | Le
            | Gt
            | Ge
            | And
            | Or
            | Not
            | Assign
            | Comma
            | Tilde
            | Arrow
            | Colon
            | Where
            | LBrace
            | Nl
    )
}

fn keyword(s: &str) -> Option<Tok> {
    Some(match s {
        "use" => Tok::Use,
        "mixer" => Tok::Mixer,
        "filter" => Tok::Filter,
        "fn" => Tok::Fn,
        "mask" => Tok::Mask,
        "config" => Tok::Config,
        "dim" => Tok::Dim,
        "param" => Tok::Param,
        "return" => Tok::Return,
        "where" => Tok::Where,
        "and" => Tok::And,
        "or" => Tok::Or,
        "not" => Tok::Not,
        "true" => Tok::True,
        "false" => Tok::False,
        _ => return None,
    })
}

/// Pushes a token; `}` always ends a statement, so a newline goes before it.
fn push_tok(toks: &mut Vec<Spanned>, t: Spanned) {
    if t.1 == Tok::RBrace {
        if let Some((_, last, _)) = toks.last() {
            if !matches!(last, Tok::Nl | Tok::LBrace) {
                toks.push((t.0, Tok::Nl, t.0));
            }
        }
    }
    toks.push(t);
}

/// Lexes a whole file. Never fails: bad characters become [`LexError`]s.
pub fn lex(text: &str, file: FileId) -> (Vec<Spanned>, Vec<LexError>) {
    let bytes = text.as_bytes();
    let mut toks: Vec<Spanned> = Vec::new();
    let mut errors = Vec::new();
    // Open brackets: `(`/`[` and `{`, with their start offsets.
    let mut parens: Vec<(usize, Tok)> = Vec::new();
    let mut braces: Vec<usize> = Vec::new();
    let mut i = 0;
    let mut pending_nl: Option<usize> = None;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if c == '\n' {
            if pending_nl.is_none() {
                pending_nl = Some(i);
            }
            i += 1;
            continue;
        }
        if c == ' ' || c == '\t' || c == '\r' {
            i += 1;
            continue;
        }
        if c == '#' {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        let start = i;
        let tok = if c.is_ascii_alphabetic() || c == '_' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            let s = &text[start..i];
            keyword(s).unwrap_or_else(|| Tok::Ident(s.to_string()))
        } else if c.is_ascii_digit()
            || (c == '.' && i + 1 < bytes.len() && bytes[i + 1].is_ascii_digit())
        {
            let mut is_float = false;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if i < bytes.len() && bytes[i] == b'.' && !(i + 1 < bytes.len() && bytes[i + 1] == b'.')
            {
                is_float = true;
                i += 1;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
            }
            if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
                let save = i;
                i += 1;
                if i < bytes.len() && (bytes[i] == b'+' || bytes[i] == b'-') {
                    i += 1;
                }
                if i < bytes.len() && bytes[i].is_ascii_digit() {
                    is_float = true;
                    while i < bytes.len() && bytes[i].is_ascii_digit() {
                        i += 1;
                    }
                } else {
                    i = save;
                }
            }
            let s = &text[start..i];
            if is_float {
                match s.parse::<f64>() {
                    Ok(v) => Tok::Float(v),
                    Err(_) => {
                        errors.push(LexError {
                            span: Span::new(file, start, i),
                            message: format!("malformed number `{s}`"),
                            hint: None,
                        });
                        Tok::Float(0.0)
                    }
                }
            } else {
                match s.parse::<i64>() {
                    Ok(v) => Tok::Int(v),
                    Err(_) => {
                        errors.push(LexError {
                            span: Span::new(file, start, i),
                            message: format!("integer `{s}` is too large"),
                            hint: Some("integers must fit in 64 bits".into()),
                        });
                        Tok::Int(0)
                    }
                }
            }
        } else {
            let two = if i + 1 < bytes.len() {
                &text[i..i + 2]
            } else {
                ""
            };
            let (t, n) = match two {
                "->" => (Some(Tok::Arrow), 2),
                "**" => (Some(Tok::StarStar), 2),
                "//" => (Some(Tok::SlashSlash), 2),
                "==" => (Some(Tok::EqEq), 2),
                "!=" => (Some(Tok::NotEq), 2),
                "<=" => (Some(Tok::Le), 2),
                ">=" => (Some(Tok::Ge), 2),
                _ => (
                    match c {
                        '(' => Some(Tok::LParen),
                        ')' => Some(Tok::RParen),
                        '[' => Some(Tok::LBrack),
                        ']' => Some(Tok::RBrack),
                        '{' => Some(Tok::LBrace),
                        '}' => Some(Tok::RBrace),
                        ',' => Some(Tok::Comma),
                        ':' => Some(Tok::Colon),
                        '.' => Some(Tok::Dot),
                        '~' => Some(Tok::Tilde),
                        '=' => Some(Tok::Assign),
                        '+' => Some(Tok::Plus),
                        '-' => Some(Tok::Minus),
                        '*' => Some(Tok::Star),
                        '/' => Some(Tok::Slash),
                        '%' => Some(Tok::Percent),
                        '<' => Some(Tok::Lt),
                        '>' => Some(Tok::Gt),
                        _ => None,
                    },
                    1,
                ),
            };
            match t {
                Some(t) => {
                    i += n;
                    t
                }
                None => {
                    let ch = text[i..].chars().next().unwrap_or('?');
                    let len = ch.len_utf8();
                    let hint = match ch {
                        '!' => Some("negation is spelled `not`".to_string()),
                        '&' => Some("conjunction is spelled `and`".to_string()),
                        '|' => Some("disjunction is spelled `or`".to_string()),
                        '^' => Some("powers are spelled `**`".to_string()),
                        ';' => {
                            Some("statements end at the end of the line; no `;` needed".to_string())
                        }
                        _ => None,
                    };
                    errors.push(LexError {
                        span: Span::new(file, i, i + len),
                        message: format!("unexpected character `{ch}`"),
                        hint,
                    });
                    i += len;
                    continue;
                }
            }
        };
        // A line that starts a statement or an item while brackets are still
        // open means they were never closed: say where they opened, close
        // them, and go on, so one missing `)` or `}` is one error.
        if let Some(nl) = pending_nl {
            let starts_stmt = matches!(
                tok,
                Tok::Return | Tok::Param | Tok::Config | Tok::Dim | Tok::RBrace
            );
            let starts_item = matches!(
                tok,
                Tok::Mixer | Tok::Filter | Tok::Mask | Tok::Fn | Tok::Use
            );
            if (starts_stmt || starts_item) && !parens.is_empty() {
                while let Some((at, open)) = parens.pop() {
                    let (o, c, cs) = if open == Tok::LParen {
                        ("(", Tok::RParen, ")")
                    } else {
                        ("[", Tok::RBrack, "]")
                    };
                    errors.push(LexError {
                        span: Span::new(file, at, at + 1),
                        message: format!("this `{o}` is never closed"),
                        hint: Some(format!("close it with `{cs}` before the end of the line")),
                    });
                    toks.push((nl, c, nl));
                }
            }
            if starts_item && !braces.is_empty() {
                while let Some(at) = braces.pop() {
                    errors.push(LexError {
                        span: Span::new(file, at, at + 1),
                        message: "this `{` is never closed".into(),
                        hint: Some("end the block with `}` before the next item".into()),
                    });
                    push_tok(&mut toks, (nl, Tok::RBrace, nl));
                    toks.push((nl, Tok::Nl, nl));
                }
            }
        }
        // Decide whether a pending newline becomes a token.
        if let Some(nl) = pending_nl.take() {
            let last_joins = toks
                .last()
                .map(|(_, t, _)| joins_next_line(t))
                .unwrap_or(true);
            let next_joins = matches!(tok, Tok::Where | Tok::RBrace);
            if parens.is_empty() && !last_joins && !next_joins {
                toks.push((nl, Tok::Nl, nl + 1));
            }
        }
        match tok {
            Tok::LParen | Tok::LBrack => parens.push((start, tok.clone())),
            Tok::RParen | Tok::RBrack => {
                parens.pop();
            }
            Tok::LBrace => braces.push(start),
            Tok::RBrace => {
                braces.pop();
            }
            _ => {}
        }
        push_tok(&mut toks, (start, tok, i));
    }
    let n = text.len();
    for (at, open) in parens.drain(..).rev() {
        let (o, c) = if open == Tok::LParen {
            ("(", Tok::RParen)
        } else {
            ("[", Tok::RBrack)
        };
        errors.push(LexError {
            span: Span::new(file, at, at + 1),
            message: format!("this `{o}` is never closed"),
            hint: None,
        });
        toks.push((n, c, n));
    }
    for at in braces.drain(..).rev() {
        errors.push(LexError {
            span: Span::new(file, at, at + 1),
            message: "this `{` is never closed".into(),
            hint: Some("end the block with `}`".into()),
        });
        push_tok(&mut toks, (n, Tok::RBrace, n));
    }
    if let Some((_, last, _)) = toks.last() {
        if *last != Tok::Nl {
            toks.push((n, Tok::Nl, n));
        }
    }
    (toks, errors)
}
