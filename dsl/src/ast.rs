//! The abstract syntax tree, exactly as written, with spans.
//!
//! Nothing here is resolved or desugared: whole-tensor statements, `where`
//! clauses, calls and reductions stay in their written form. The checker
//! (`check`) turns a [`File`] into resolved programs.

use crate::span::Span;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct File {
    pub items: Vec<Item>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Item {
    /// `use std.masks`
    Use { path: Vec<Ident>, span: Span },
    /// `mask causal(i, j) = j <= i`
    Mask(FnDef),
    /// `fn gate(a, b) = a * sigmoid(b)`
    Fn(FnDef),
    /// `config H = 8, N = 16` at file level
    Config(Vec<(Ident, Expr)>, Span),
    /// `mixer` or `filter` block
    Block(Block),
    /// A line that did not parse; its error is already reported.
    Error(Span),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FnDef {
    pub name: Ident,
    pub params: Vec<Ident>,
    pub body: Expr,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum BlockKind {
    Mixer,
    Filter,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Block {
    pub kind: BlockKind,
    pub name: Ident,
    pub params: Vec<BlockParam>,
    pub ret: Option<Shape>,
    pub stmts: Vec<Stmt>,
    pub span: Span,
}

/// A block parameter: a tensor with a shape (`x: [B, L, D]`) or a dim (`L`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BlockParam {
    pub name: Ident,
    pub shape: Option<Shape>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Shape {
    pub dims: Vec<Expr>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stmt {
    pub kind: StmtKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum StmtKind {
    /// `config H = 8, N = 16`
    Config(Vec<(Ident, Expr)>),
    /// `dim E = D / H`
    Dim(Ident, Expr),
    /// `param wq: [D, H, E] ~ normal(0, D ** -0.5)`
    Param {
        name: Ident,
        shape: Shape,
        init: Expr,
    },
    /// `t[i, j: L] = expr` or `t = expr` (whole-tensor form)
    Def {
        name: Ident,
        indices: Option<Vec<IndexDecl>>,
        value: Expr,
    },
    /// `return y`
    Return(Expr),
    /// A line that did not parse; its error is already reported.
    Error,
}

/// An index on the left of a definition, optionally with its extent.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IndexDecl {
    pub name: Ident,
    pub extent: Option<Expr>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum ExprKind {
    Int(i64),
    Float(f64),
    Bool(bool),
    Name(Ident),
    /// `base[subscripts]`
    Index(Box<Expr>, Vec<Expr>),
    /// `f(args)` or, with a body, a reduction `sum(j) body`.
    Call {
        func: Ident,
        args: Vec<Arg>,
        body: Option<Box<Expr>>,
    },
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `expr where pred`, at the end of a statement or inside parentheses.
    Where(Box<Expr>, Box<Expr>),
    /// Placeholder for an expression that did not parse.
    Error,
    /// Never produced by the parser: the checker's rewrite of a `where`
    /// clause moved onto the reduction or normaliser it filters.
    Masked(Box<Expr>, Box<Expr>),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum UnOp {
    Neg,
    Not,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    FloorDiv,
    Mod,
    Pow,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::FloorDiv => "//",
            BinOp::Mod => "%",
            BinOp::Pow => "**",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::And => "and",
            BinOp::Or => "or",
        }
    }
}

impl Expr {
    pub fn new(kind: ExprKind, span: Span) -> Expr {
        Expr { kind, span }
    }
}

/// Builds a binary expression spanning `lo..hi` (used by the grammar).
pub fn bin(file: crate::span::FileId, lo: usize, hi: usize, op: BinOp, a: Expr, b: Expr) -> Expr {
    Expr::new(
        ExprKind::Binary(op, Box::new(a), Box::new(b)),
        crate::span::Span::new(file, lo, hi),
    )
}
