//! The mixer IR: a mixer as a sequence of tensor operations with index
//! semantics.
//!
//! A [`Module`] holds two arenas, addressed by `u32` newtypes. Arenas keep
//! ids stable while passes add nodes, make the module trivially cloneable,
//! and let the e-graph translation map ids one to one:
//! - `values`: every tensor (inputs, parameters, op results), by [`ValueId`];
//! - `exprs`: every scalar expression node, by [`ExprId`].
//!
//! Each [`Op`] defines one value element-wise over its index variables
//! (`slots`): `result[s_0, .., s_{rank-1}] = body`. The body reads other
//! values at integer subscripts, and may reduce or normalise over further
//! slots. The op's [`OpKind`] is derived from the body's shape by
//! [`classify`] (a contraction, a convolution, a scan, ...). It is what
//! later stages pattern-match on; the body alone defines the meaning.
//!
//! The text form ([`text`]) round-trips: printing, parsing and printing
//! again gives the same text. The verifier ([`verify`]) states and checks
//! the invariants every pass must keep. The interpreter runs this IR.

pub mod lower;
pub mod split;
pub mod text;
pub mod verify;

pub use mixc_dsl::ast::{BinOp, UnOp};
pub use mixc_dsl::typed::{Builtin, DimExpr, NormOp, RedOp, Slot, Ty};
use mixc_dsl::Span;
use std::fmt;

/// A tensor of the module: an input, a parameter or an op's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

/// A scalar expression node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExprId(pub u32);

/// An op, by position in [`Module::ops`] (which is program order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(pub u32);

impl fmt::Display for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Module {
    pub name: String,
    pub sizes: Vec<SizeDecl>,
    pub values: Vec<Value>,
    pub exprs: Vec<ExprNode>,
    pub ops: Vec<Op>,
    pub inputs: Vec<ValueId>,
    pub output: ValueId,
}

/// A size: free (given at run time) or derived from others.
#[derive(Clone, Debug, PartialEq)]
pub struct SizeDecl {
    pub name: String,
    pub value: Option<DimExpr>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    pub name: String,
    pub shape: Vec<DimExpr>,
    pub def: ValueDef,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ValueDef {
    Input,
    /// A parameter; its initialiser's arguments are expressions without indices.
    Param(Init),
    Op(OpId),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Normal { mean: ExprId, std: ExprId },
    Uniform { lo: ExprId, hi: ExprId },
    Constant(ExprId),
}

/// An index variable of an op.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexVar {
    pub name: String,
    pub extent: DimExpr,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Op {
    pub result: ValueId,
    /// The op's index variables: the first `rank` index the result; the
    /// rest are bound by reductions and normalisers in the body.
    pub slots: Vec<IndexVar>,
    pub rank: usize,
    pub body: ExprId,
    /// For a scan: the result axis it steps along (it reads itself at `t - 1`).
    pub recurrence: Option<usize>,
    pub kind: OpKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ExprNode {
    pub node: Node,
    pub ty: Ty,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    Const(f64),
    Size(DimExpr),
    Index(Slot),
    Read(ValueId, Vec<ExprId>),
    Unary(UnOp, ExprId),
    Binary(BinOp, ExprId, ExprId),
    Call(Builtin, Vec<ExprId>),
    Reduce {
        op: RedOp,
        slots: Vec<Slot>,
        guard: Option<ExprId>,
        body: ExprId,
    },
    Normalize {
        op: NormOp,
        slot: Slot,
        guard: Option<ExprId>,
        body: ExprId,
        eps: f64,
    },
    /// The body where the predicate holds, else 0.
    Guard(ExprId, ExprId),
}

/// What an op is, structurally. Derived from the body; never trusted over it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Elementwise over reads of other values (no reduction at the root).
    Map,
    /// `sum(k..) a[..] * b[..] * ...`: a product of reads (and scalars)
    /// summed over indices, an einsum.
    Contract,
    /// Another reduction at the root.
    Reduce,
    /// A normaliser (softmax, rms_norm, layer_norm) at the root.
    Normalize,
    /// A causal convolution along one axis: `sum(t) h[t, ..] * u[.., l - t, ..] where t <= l`.
    Conv,
    /// A linear recurrence along one axis.
    Scan,
    /// Elementwise, reading some value at a constant offset along an axis
    /// (`x[b, l - 1, d] where l >= 1`): a shift.
    Shift,
}

impl OpKind {
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Map => "map",
            OpKind::Contract => "contract",
            OpKind::Reduce => "reduce",
            OpKind::Normalize => "normalize",
            OpKind::Conv => "conv",
            OpKind::Scan => "scan",
            OpKind::Shift => "shift",
        }
    }

    pub fn from_name(s: &str) -> Option<OpKind> {
        [
            OpKind::Map,
            OpKind::Contract,
            OpKind::Reduce,
            OpKind::Normalize,
            OpKind::Conv,
            OpKind::Scan,
            OpKind::Shift,
        ]
        .into_iter()
        .find(|k| k.name() == s)
    }
}

impl Node {
    /// The node with every child `c` replaced by `f(c)` and every index slot
    /// (used or bound) `x` by `slot(x)`.
    pub fn map(&self, mut f: impl FnMut(ExprId) -> ExprId, slot: impl Fn(Slot) -> Slot) -> Node {
        match self {
            Node::Const(_) | Node::Size(_) => self.clone(),
            Node::Index(x) => Node::Index(slot(*x)),
            Node::Read(v, subs) => Node::Read(*v, subs.iter().map(|x| f(*x)).collect()),
            Node::Unary(o, a) => Node::Unary(*o, f(*a)),
            Node::Binary(o, a, b) => {
                let a = f(*a);
                Node::Binary(*o, a, f(*b))
            }
            Node::Call(c, args) => Node::Call(*c, args.iter().map(|x| f(*x)).collect()),
            Node::Reduce {
                op,
                slots,
                guard,
                body,
            } => {
                let guard = guard.map(&mut f);
                Node::Reduce {
                    op: *op,
                    slots: slots.iter().map(|x| slot(*x)).collect(),
                    guard,
                    body: f(*body),
                }
            }
            Node::Normalize {
                op,
                slot: s,
                guard,
                body,
                eps,
            } => {
                let guard = guard.map(&mut f);
                Node::Normalize {
                    op: *op,
                    slot: slot(*s),
                    guard,
                    body: f(*body),
                    eps: *eps,
                }
            }
            Node::Guard(p, b) => {
                let p = f(*p);
                Node::Guard(p, f(*b))
            }
        }
    }
}

/// Maps a slot to itself (for [`Module::copy_expr`] without renaming).
pub fn same_slot(s: Slot) -> Slot {
    s
}

/// What a free size is to the back ends, from its place in the mixer's
/// signature (not its name): the first input is `[batch, sequence, ..]`
/// (`x: [B, L, D]` as `docs/language.md` writes every mixer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeRole {
    /// The first axis of the first input: independent sequences.
    Batch,
    /// The second axis of the first input (of rank 3 or more): positions.
    Sequence,
}

impl Module {
    /// The size with `role`, where the first input's axis is a plain free
    /// size (a name, not an expression or a constant).
    pub fn size_with_role(&self, role: SizeRole) -> Option<&str> {
        let x = self.inputs.first()?;
        let shape = &self.value(*x).shape;
        let axis = match role {
            SizeRole::Batch if shape.len() >= 2 => 0,
            SizeRole::Sequence if shape.len() >= 3 => 1,
            _ => return None,
        };
        match &shape[axis] {
            DimExpr::Sym(name)
                if self
                    .sizes
                    .iter()
                    .any(|s| s.name == *name && s.value.is_none()) =>
            {
                Some(name.as_str())
            }
            _ => None,
        }
    }

    /// The sizes a compiled bundle leaves to run time unless they are set
    /// at build time: the batch and the sequence sizes. One build serves
    /// every batch and every length; every other size is folded in.
    pub fn run_time_sizes(&self) -> Vec<String> {
        [SizeRole::Batch, SizeRole::Sequence]
            .iter()
            .filter_map(|r| self.size_with_role(*r).map(str::to_string))
            .collect()
    }

    /// Whether `d` mentions the sequence size.
    pub fn mentions_sequence(&self, d: &DimExpr) -> bool {
        let Some(l) = self.size_with_role(SizeRole::Sequence) else {
            return false;
        };
        let mut syms = Vec::new();
        d.symbols(&mut syms);
        syms.iter().any(|x| x == l)
    }

    /// A deep copy of expression `e` as a fresh tree, with slots renamed by
    /// `slot`. `replace` sees every original node first and may return its
    /// replacement instead of a copy (inlining, substitution).
    pub fn copy_expr(
        &mut self,
        e: ExprId,
        slot: &dyn Fn(Slot) -> Slot,
        replace: &mut dyn FnMut(&mut Module, ExprId) -> Option<ExprId>,
    ) -> ExprId {
        if let Some(r) = replace(self, e) {
            return r;
        }
        let n = self.expr(e).clone();
        let node = n.node.map(|c| self.copy_expr(c, slot, replace), slot);
        self.add_expr(node, n.ty, n.span)
    }

    pub fn expr(&self, e: ExprId) -> &ExprNode {
        &self.exprs[e.0 as usize]
    }

    pub fn value(&self, v: ValueId) -> &Value {
        &self.values[v.0 as usize]
    }

    pub fn op(&self, o: OpId) -> &Op {
        &self.ops[o.0 as usize]
    }

    pub fn add_expr(&mut self, node: Node, ty: Ty, span: Span) -> ExprId {
        self.exprs.push(ExprNode { node, ty, span });
        ExprId(self.exprs.len() as u32 - 1)
    }

    /// Children of an expression node, in a fixed order.
    pub fn children(&self, e: ExprId) -> Vec<ExprId> {
        match &self.expr(e).node {
            Node::Const(_) | Node::Size(_) | Node::Index(_) => vec![],
            Node::Read(_, subs) => subs.clone(),
            Node::Unary(_, a) => vec![*a],
            Node::Binary(_, a, b) | Node::Guard(a, b) => vec![*a, *b],
            Node::Call(_, args) => args.clone(),
            Node::Reduce { guard, body, .. } | Node::Normalize { guard, body, .. } => guard
                .iter()
                .copied()
                .chain(std::iter::once(*body))
                .collect(),
        }
    }

    /// Derives the kind of an op from its body.
    pub fn classify(&self, op: &Op) -> OpKind {
        classify(self, op)
    }
}

/// Derives an op's kind from the structure of its body.
pub fn classify(m: &Module, op: &Op) -> OpKind {
    if op.recurrence.is_some() {
        return OpKind::Scan;
    }
    match &m.expr(op.body).node {
        Node::Normalize { .. } => OpKind::Normalize,
        Node::Reduce {
            op: RedOp::Sum,
            slots,
            guard,
            body,
        } => {
            if is_conv(m, slots, *guard, *body) {
                OpKind::Conv
            } else if is_product_of_reads(m, *body) && guard.is_none() {
                OpKind::Contract
            } else {
                OpKind::Reduce
            }
        }
        Node::Reduce { .. } => OpKind::Reduce,
        _ if has_shifted_read(m, op.body) => OpKind::Shift,
        _ => OpKind::Map,
    }
}

/// A read with a subscript `index +/- constant` (and no reduction inside).
fn has_shifted_read(m: &Module, e: ExprId) -> bool {
    match &m.expr(e).node {
        Node::Reduce { .. } | Node::Normalize { .. } => false,
        Node::Read(_, subs) => subs.iter().any(|s| match &m.expr(*s).node {
            Node::Binary(BinOp::Sub | BinOp::Add, a, b) => {
                matches!(m.expr(*a).node, Node::Index(_))
                    && matches!(m.expr(*b).node, Node::Const(_))
            }
            _ => false,
        }),
        _ => m.children(e).into_iter().any(|c| has_shifted_read(m, c)),
    }
}

fn is_product_of_reads(m: &Module, e: ExprId) -> bool {
    let mut reads = 0;
    fn walk(m: &Module, e: ExprId, reads: &mut usize) -> bool {
        match &m.expr(e).node {
            Node::Binary(BinOp::Mul, a, b) => walk(m, *a, reads) && walk(m, *b, reads),
            Node::Read(..) => {
                *reads += 1;
                true
            }
            _ => is_scalar(m, e),
        }
    }
    walk(m, e, &mut reads) && reads >= 1
}

/// An expression that is the same for every element: no index, no read.
pub fn is_scalar(m: &Module, e: ExprId) -> bool {
    match &m.expr(e).node {
        Node::Const(_) | Node::Size(_) => true,
        Node::Index(_) | Node::Read(..) | Node::Reduce { .. } | Node::Normalize { .. } => false,
        _ => m.children(e).into_iter().all(|c| is_scalar(m, c)),
    }
}

/// `sum(t) h[.., t, ..] * u(s - t) where t <= s` with `t` the only reduced
/// index: one factor reads the filter at the tap (on any axis); the other is
/// an elementwise expression whose every read is shifted by the tap on one
/// axis (`x[.., s - t, ..]`), so it is a function of the shifted position
/// alone: a gated input (`(a * b)[s - t]`) is still a convolution.
fn is_conv(m: &Module, slots: &[Slot], guard: Option<ExprId>, body: ExprId) -> bool {
    let [t] = slots else { return false };
    let Some(g) = guard else { return false };
    let Node::Binary(BinOp::Le, gl, _) = &m.expr(g).node else {
        return false;
    };
    if m.expr(*gl).node != Node::Index(*t) {
        return false;
    }
    let Node::Binary(BinOp::Mul, a, b) = &m.expr(body).node else {
        return false;
    };
    let is_filter = |r: ExprId| match &m.expr(r).node {
        Node::Read(_, subs) => subs.iter().any(|s| m.expr(*s).node == Node::Index(*t)),
        _ => false,
    };
    (is_filter(*a) && shifted_input(m, *b, *t)) || (is_filter(*b) && shifted_input(m, *a, *t))
}

/// An expression with at least one read, no reduction, every read shifted by
/// `t` on exactly one axis and `t` used nowhere else.
fn shifted_input(m: &Module, e: ExprId, t: Slot) -> bool {
    fn walk(m: &Module, e: ExprId, t: Slot, reads: &mut usize) -> bool {
        match &m.expr(e).node {
            Node::Read(_, subs) => {
                *reads += 1;
                let shifted = subs
                    .iter()
                    .filter(|s| match &m.expr(**s).node {
                        Node::Binary(BinOp::Sub, x, y) => {
                            m.expr(*y).node == Node::Index(t)
                                && matches!(m.expr(*x).node, Node::Index(_))
                        }
                        _ => false,
                    })
                    .count();
                let bare_t = subs.iter().any(|s| m.expr(*s).node == Node::Index(t));
                shifted == 1 && !bare_t
            }
            Node::Index(s) => *s != t,
            Node::Reduce { .. } | Node::Normalize { .. } => false,
            _ => m.children(e).into_iter().all(|c| walk(m, c, t, reads)),
        }
    }
    let mut reads = 0;
    walk(m, e, t, &mut reads) && reads >= 1
}
