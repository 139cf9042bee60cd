//! The checker's output: one mixer as a resolved, flat program.
//!
//! Every name is resolved (tensors by [`TensorId`], indices by [`Slot`]),
//! masks, `fn`s, filter and mixer calls are inlined, whole-tensor statements
//! are in index form, `conv` is its raw index form, and every `where` clause
//! sits on the reduction or normaliser it filters (or guards one element).
//! Sizes stay symbolic ([`DimExpr`]) until bound: one program serves every `L`.

use crate::ast::{BinOp, UnOp};
use crate::span::Span;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

/// An index variable's position in a definition's environment.
pub type Slot = u32;
/// A tensor's position in [`Program::tensors`].
pub type TensorId = u32;

/// A size: an integer expression over named dims, folded when constant.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum DimExpr {
    Const(i64),
    Sym(String),
    Bin(DimOp, Box<DimExpr>, Box<DimExpr>),
}

/// Size operators and their arithmetic are shared with the runners.
pub use mixc_runtime::dim::Arith as DimOp;

impl DimExpr {
    /// Builds `a op b`, folding constants. Exact division by a constant that
    /// does not divide is left unfolded so binding reports it.
    pub fn bin(op: DimOp, a: DimExpr, b: DimExpr) -> DimExpr {
        if let (DimExpr::Const(x), DimExpr::Const(y)) = (&a, &b) {
            if let Ok(v) = op.apply(*x, *y) {
                return DimExpr::Const(v);
            }
        }
        DimExpr::Bin(op, Box::new(a), Box::new(b))
    }

    pub fn as_const(&self) -> Option<i64> {
        match self {
            DimExpr::Const(v) => Some(*v),
            _ => None,
        }
    }

    /// Evaluates with the given symbol values.
    pub fn eval(&self, syms: &BTreeMap<String, i64>) -> Result<i64, String> {
        match self {
            DimExpr::Const(v) => Ok(*v),
            DimExpr::Sym(s) => syms
                .get(s)
                .copied()
                .ok_or_else(|| format!("dim `{s}` has no value")),
            DimExpr::Bin(op, a, b) => op.apply(a.eval(syms)?, b.eval(syms)?),
        }
    }

    /// Symbols this expression mentions.
    pub fn symbols(&self, out: &mut Vec<String>) {
        match self {
            DimExpr::Const(_) => {}
            DimExpr::Sym(s) => {
                if !out.contains(s) {
                    out.push(s.clone())
                }
            }
            DimExpr::Bin(_, a, b) => {
                a.symbols(out);
                b.symbols(out);
            }
        }
    }
}

impl DimExpr {
    /// The same expression in the runtime's form, which also defines how
    /// sizes print (so manifests and diagnostics spell them alike).
    pub fn to_dim(&self) -> mixc_runtime::dim::Dim {
        use mixc_runtime::dim::Dim;
        match self {
            DimExpr::Const(v) => Dim::Const(*v),
            DimExpr::Sym(s) => Dim::Sym(s.clone()),
            DimExpr::Bin(op, a, b) => Dim::Bin(*op, Box::new(a.to_dim()), Box::new(b.to_dim())),
        }
    }
}

impl fmt::Display for DimExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_dim())
    }
}

/// Formats a shape as `[B, L, D]`.
pub fn shape_string(shape: &[DimExpr]) -> String {
    let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

/// The static type of an expression.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Ty {
    Int,
    Real,
    Bool,
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Ty::Int => "integer",
            Ty::Real => "real",
            Ty::Bool => "boolean",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Builtin {
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Tanh,
    Sigmoid,
    Silu,
    Gelu,
    Softplus,
    Sin,
    Cos,
    Abs,
    Relu,
    Erf,
    Floor,
    Ceil,
    Min,
    Max,
    Select,
}

impl Builtin {
    pub const ALL: &'static [(&'static str, Builtin, usize)] = &[
        ("exp", Builtin::Exp, 1),
        ("log", Builtin::Log, 1),
        ("sqrt", Builtin::Sqrt, 1),
        ("rsqrt", Builtin::Rsqrt, 1),
        ("tanh", Builtin::Tanh, 1),
        ("sigmoid", Builtin::Sigmoid, 1),
        ("silu", Builtin::Silu, 1),
        ("gelu", Builtin::Gelu, 1),
        ("softplus", Builtin::Softplus, 1),
        ("sin", Builtin::Sin, 1),
        ("cos", Builtin::Cos, 1),
        ("abs", Builtin::Abs, 1),
        ("relu", Builtin::Relu, 1),
        ("erf", Builtin::Erf, 1),
        ("floor", Builtin::Floor, 1),
        ("ceil", Builtin::Ceil, 1),
        ("min", Builtin::Min, 2),
        ("max", Builtin::Max, 2),
        ("select", Builtin::Select, 3),
    ];

    pub fn lookup(name: &str) -> Option<(Builtin, usize)> {
        Builtin::ALL
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, b, a)| (*b, *a))
    }

    pub fn name(self) -> &'static str {
        Builtin::ALL
            .iter()
            .find(|(_, b, _)| *b == self)
            .map(|(n, _, _)| *n)
            .unwrap_or("?")
    }
}

/// Reductions over one or more indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum RedOp {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
}

/// Normalisers over one index: the value at `j` depends on the whole row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum NormOp {
    Softmax,
    RmsNorm,
    LayerNorm,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TExpr {
    pub kind: TExprKind,
    pub ty: Ty,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum TExprKind {
    Const(f64),
    /// The value of a symbolic size.
    Dim(DimExpr),
    /// The value of an index variable.
    Index(Slot),
    /// `tensor[subs]`; a recurrence's read of itself at `t - 1` reads 0 at -1.
    Read {
        tensor: TensorId,
        subs: Vec<TExpr>,
    },
    Unary(UnOp, Box<TExpr>),
    Binary(BinOp, Box<TExpr>, Box<TExpr>),
    /// Elementwise builtin; `select` evaluates only the branch it takes.
    Call(Builtin, Vec<TExpr>),
    /// A reduction over `slots`; terms where `guard` is false are left out.
    /// Max and min over an empty (fully masked) set are 0.
    Reduce {
        op: RedOp,
        slots: Vec<Slot>,
        guard: Option<Box<TExpr>>,
        body: Box<TExpr>,
    },
    /// A normaliser over `slot`. Entries where `guard` is false are left out
    /// of the row and produce 0; a fully masked row is all zeros.
    Normalize {
        op: NormOp,
        slot: Slot,
        guard: Option<Box<TExpr>>,
        body: Box<TExpr>,
        eps: f64,
        /// Unique within the program, so evaluators can cache rows.
        id: u32,
    },
    /// An element-level `where`: the body where `pred` holds, else 0.
    Guard {
        pred: Box<TExpr>,
        body: Box<TExpr>,
    },
}

/// An index variable of a definition: its name, extent and where it was bound.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SlotInfo {
    pub name: String,
    pub extent: DimExpr,
    pub span: Span,
}

/// How a parameter is initialised. Arguments are scalar expressions of sizes
/// and configs (no indices, no tensors).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Init {
    Normal { mean: TExpr, std: TExpr },
    Uniform { lo: TExpr, hi: TExpr },
    Constant(TExpr),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum TensorKind {
    Input,
    Param(Init),
    Def(Def),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Def {
    /// Every index variable: the left-hand side's first, then reduction and
    /// normaliser indices.
    pub slots: Vec<SlotInfo>,
    /// How many of `slots` are on the left-hand side.
    pub rank: usize,
    pub body: TExpr,
    /// For a recurrence, the axis it steps along (it reads itself at `t - 1`).
    pub recurrence: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Tensor {
    /// Qualified name: `h.w1` for parameter `w1` of the filter bound to `h`.
    pub name: String,
    pub shape: Vec<DimExpr>,
    pub kind: TensorKind,
    pub span: Span,
}

/// A size the program declares: free (given when run) or derived.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DimDecl {
    pub name: String,
    /// `None` for a free dim from the signature.
    pub value: Option<DimExpr>,
    pub span: Span,
}

/// A config value after `--set` overrides, for display.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConfigValue {
    pub name: String,
    pub value: f64,
    pub is_int: bool,
}

/// One checked mixer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Program {
    pub name: String,
    pub dims: Vec<DimDecl>,
    pub configs: Vec<ConfigValue>,
    pub tensors: Vec<Tensor>,
    /// Input tensors, in signature order.
    pub inputs: Vec<TensorId>,
    pub output: TensorId,
    pub span: Span,
}

impl Program {
    pub fn tensor(&self, id: TensorId) -> &Tensor {
        &self.tensors[id as usize]
    }

    /// Names of the free dims (the signature's), in order.
    pub fn free_dims(&self) -> Vec<&str> {
        self.dims
            .iter()
            .filter(|d| d.value.is_none())
            .map(|d| d.name.as_str())
            .collect()
    }

    pub fn params(&self) -> impl Iterator<Item = (TensorId, &Tensor)> {
        self.tensors
            .iter()
            .enumerate()
            .filter(|(_, t)| matches!(t.kind, TensorKind::Param(_)))
            .map(|(i, t)| (i as TensorId, t))
    }
}
