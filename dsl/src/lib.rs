//! The `.mix` language front end: lexer, lalrpop grammar, AST with spans,
//! semantic checks, and rustc-style diagnostics.
//!
//! **Architecture invariant:** this crate knows nothing about IR,
//! optimisation, back ends or devices. Its output is a [`typed::Program`]:
//! one mixer with every name resolved, every index bound to a slot with an
//! extent, calls inlined and whole-tensor statements desugared to index form.

pub mod ast;
pub mod check;
pub mod diag;
pub mod fuzz;
pub mod lexer;
pub mod ops;
pub mod parse;
pub mod pretty;
pub mod span;
pub mod stdlib;
pub mod typed;

pub use check::{check_file, CheckOptions, Checked};
pub use diag::{render, Diagnostic, Severity};
pub use span::{SourceMap, Span};
