//! The fused-attention template for the host: scores, their modification,
//! softmax and the weighted sum as one kernel with an online softmax, so no
//! `L x L` tensor is ever written.
//!
//! The chain is the one the optimiser's `fuse-attention` rule names
//! (`mixc_compiler::pattern::attention`), taken a little more generally:
//! `o = sum(j) p[.., j, ..] * rest` with `p = softmax(j) where MASK: f(..)`,
//! where every op that `f` reads at `p`'s own indices (the scores, a score
//! modification, transitively) is inlined. The user's expressions are
//! evaluated per `(row, j)` from the IR, exactly as the interpreter defines
//! them: the score contraction, any modification (ALiBi's bias written into
//! the scores, soft-capping) and the mask predicate.
//!
//! The kernel walks one row (all of `p`'s indices but `j`) at a time:
//!
//! ```text
//! m = -inf; l = 0; acc[..] = 0
//! for j in [lo(row), hi(row)):           // key range from the mask
//!     if !exact && !mask(row, j): continue
//!     x = f(s(row, j))
//!     if x > m: acc *= exp(m - x); l *= exp(m - x); m = x   // only then
//!     w = exp(x - m); l += w; acc[..] += w * v[j, ..]
//! o[row, ..] = l > 0 ? acc / l : 0      // a fully masked row gives 0
//! ```
//!
//! The key range comes from the mask's linear clauses (`j <= i`,
//! `i - j < w`, `j >= i - w`): a conjunction of bounds on `j` with
//! coefficient +-1 gives `[lo, hi)` per row, so masked-out key blocks are
//! never visited. When every clause is such a bound the range is exact and
//! the predicate is not evaluated at all; otherwise (`%` in dilated or
//! block-sparse masks, `or`, `!=`) the predicate runs for each `j` in the
//! range, which is still sound: the range only ever over-approximates.

use crate::cpu::{llvm, Gen, R, V};
use inkwell::values::IntValue;
use inkwell::IntPredicate;
use mixc_compiler::ir::{
    BinOp, DimExpr, ExprId, Module, Node, NormOp, OpKind, RedOp, Slot, Ty, UnOp, ValueId,
};
use mixc_compiler::pattern::{has_reduction, reads_at_identity};
use std::collections::{BTreeSet, HashMap};

/// What a read of an absorbed value evaluates to inside the template.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Inline {
    /// The producing op's body, at the current (identity) indices.
    Body(ExprId),
    /// The constant 1 (the softmax factor, applied by the template).
    One,
}

/// A matched attention chain and how its indices line up.
#[derive(Clone, Debug)]
pub struct Template {
    /// The weighted sum (the kernel's result) and the softmax, as op indices.
    pub o: usize,
    pub p: usize,
    /// Ops the softmax's body reads at its own indices (the scores, any
    /// modification, transitively): evaluated in place, per `(row, j)`.
    pub inlined: Vec<usize>,
    /// The frame for evaluating them: the extents of slots past `p`'s rank
    /// (the inlined ops' reduction slots, which must agree).
    pub(crate) extra: Vec<DimExpr>,
    /// `p`'s softmax axis, and for each other `p` slot the `o` slot it maps to.
    pub(crate) jp: Slot,
    pub(crate) p_to_o: Vec<(Slot, Slot)>,
    /// `o`'s reduction slot (the key index in `o`'s frame).
    pub(crate) r: Slot,
    /// `o`'s result slots that are not `p`'s (the accumulator's axes).
    pub(crate) acc: Vec<Slot>,
}

/// Every attention chain the template can compile, and the ops whose
/// values then need no kernel and no buffer (absorbed).
pub fn plan(m: &Module) -> (Vec<Template>, BTreeSet<usize>) {
    let rep: Vec<usize> = (0..m.ops.len()).collect();
    let uses = mixc_compiler::pattern::consumers(m, &rep);
    let out: Vec<Template> = (0..m.ops.len())
        .filter_map(|o| shape(m, o, &uses))
        .collect();
    let absorbed = absorbed_by(m, &out);
    (out, absorbed)
}

/// The ops templates `ts` absorb: each softmax (read once, by its
/// template), then, to a fixed point, every inlined op whose readers are
/// all absorbed.
fn absorbed_by(m: &Module, ts: &[Template]) -> BTreeSet<usize> {
    let mut absorbed: BTreeSet<usize> = ts.iter().map(|t| t.p).collect();
    let readers = |v: ValueId| -> Vec<usize> {
        (0..m.ops.len())
            .filter(|&k| mixc_compiler::pattern::operands(m, k).contains(&v))
            .collect()
    };
    loop {
        let before = absorbed.len();
        for t in ts {
            for &x in &t.inlined {
                let v = m.ops[x].result;
                if v != m.output && readers(v).iter().all(|k| absorbed.contains(k)) {
                    absorbed.insert(x);
                }
            }
        }
        if absorbed.len() == before {
            return absorbed;
        }
    }
}

/// Reads in `e` of values computed by an op with `p`'s rank and extents,
/// every read of which (in `e`) is at `p`'s own indices.
fn identity_reads(m: &Module, e: ExprId, p: &mixc_compiler::ir::Op, out: &mut Vec<usize>) {
    let mut reads = Vec::new();
    all_reads(m, e, &mut reads);
    for v in reads {
        let mixc_compiler::ir::ValueDef::Op(x) = m.value(v).def else {
            continue;
        };
        let x = x.0 as usize;
        let op_x = &m.ops[x];
        let same_frame = op_x.rank == p.rank
            && op_x.recurrence.is_none()
            && (0..p.rank).all(|k| op_x.slots[k].extent == p.slots[k].extent);
        if same_frame && reads_at_identity(m, e, v, p.rank) && !out.contains(&x) {
            out.push(x);
        }
    }
}

fn all_reads(m: &Module, e: ExprId, out: &mut Vec<ValueId>) {
    if let Node::Read(v, _) = &m.expr(e).node {
        if !out.contains(v) {
            out.push(*v);
        }
    }
    for c in m.children(e) {
        all_reads(m, c, out);
    }
}

/// Matches `o = sum(r) p[.., r, ..] * rest` with `p` a softmax over its own
/// axis, and checks the index structure the template relies on.
fn shape(m: &Module, o: usize, uses: &[usize]) -> Option<Template> {
    let op_o = &m.ops[o];
    if op_o.kind != OpKind::Contract || op_o.recurrence.is_some() {
        return None;
    }
    let Node::Reduce {
        op: RedOp::Sum,
        slots,
        guard: None,
        body,
    } = &m.expr(op_o.body).node
    else {
        return None;
    };
    // The softmax read in o's body: the one read of a softmax op's value.
    let mut softmaxes = Vec::new();
    let mut reads = Vec::new();
    all_reads(m, *body, &mut reads);
    for v in reads {
        if let mixc_compiler::ir::ValueDef::Op(x) = m.value(v).def {
            if matches!(
                m.expr(m.ops[x.0 as usize].body).node,
                Node::Normalize {
                    op: NormOp::Softmax,
                    ..
                }
            ) {
                softmaxes.push(x.0 as usize);
            }
        }
    }
    let [p] = softmaxes.as_slice() else {
        return None;
    };
    let p = *p;
    let op_p = &m.ops[p];
    if op_p.slots.len() != op_p.rank
        || op_p.recurrence.is_some()
        || uses[op_p.result.0 as usize] != 1
    {
        return None;
    }
    let Node::Normalize {
        op: NormOp::Softmax,
        slot: jp,
        body: pbody,
        ..
    } = &m.expr(op_p.body).node
    else {
        return None;
    };
    if has_reduction(m, *pbody) {
        return None;
    }
    // What the softmax's body reads at its own indices, transitively.
    let mut inlined = Vec::new();
    identity_reads(m, *pbody, op_p, &mut inlined);
    let mut k = 0;
    while k < inlined.len() {
        let b = m.ops[inlined[k]].body;
        identity_reads(m, b, op_p, &mut inlined);
        k += 1;
    }
    if inlined.is_empty() {
        return None;
    }
    // Their reduction slots share one frame: their extents must agree.
    let mut extra: Vec<DimExpr> = Vec::new();
    for &x in &inlined {
        for (k, s) in m.ops[x].slots.iter().enumerate().skip(op_p.rank) {
            let i = k - op_p.rank;
            match extra.get(i) {
                Some(e) if *e != s.extent => return None,
                Some(_) => {}
                None => extra.push(s.extent.clone()),
            }
        }
    }
    let [r] = slots.as_slice() else { return None };
    if op_o.slots.len() != op_o.rank + 1 {
        return None;
    }
    // The one read of p in o's body, subscripted by plain o slots.
    let pv = op_p.result;
    let mut reads = Vec::new();
    collect_reads(m, *body, pv, &mut reads);
    let [pread] = reads.as_slice() else {
        return None;
    };
    let Node::Read(_, subs) = &m.expr(*pread).node else {
        return None;
    };
    // The template multiplies by p itself: p must be a factor of the body.
    if !is_factor(m, *body, *pread) {
        return None;
    }
    let mut p_to_o = Vec::new();
    for (k, sub) in subs.iter().enumerate() {
        let Node::Index(os) = m.expr(*sub).node else {
            return None;
        };
        if k as Slot == *jp {
            if os != *r {
                return None;
            }
        } else {
            if os == *r || (os as usize) >= op_o.rank {
                return None;
            }
            p_to_o.push((k as Slot, os));
        }
    }
    let mapped: Vec<Slot> = p_to_o.iter().map(|(_, os)| *os).collect();
    let acc: Vec<Slot> = (0..op_o.rank as Slot)
        .filter(|s| !mapped.contains(s))
        .collect();
    Some(Template {
        o,
        p,
        inlined,
        extra,
        jp: *jp,
        p_to_o,
        r: *r,
        acc,
    })
}

fn is_factor(m: &Module, e: ExprId, f: ExprId) -> bool {
    e == f
        || matches!(&m.expr(e).node, Node::Binary(BinOp::Mul, a, b) if is_factor(m, *a, f) || is_factor(m, *b, f))
}

fn collect_reads(m: &Module, e: ExprId, v: ValueId, out: &mut Vec<ExprId>) {
    if let Node::Read(w, _) = &m.expr(e).node {
        if *w == v {
            out.push(e);
        }
    }
    for c in m.children(e) {
        collect_reads(m, c, v, out);
    }
}

/// Whether expression `e` uses any of `slots`.
pub(crate) fn mentions(m: &Module, e: ExprId, slots: &[Slot]) -> bool {
    matches!(m.expr(e).node, Node::Index(s) if slots.contains(&s))
        || m.children(e).into_iter().any(|c| mentions(m, c, slots))
}

/// `j * coef + sum(terms) + c`, terms free of `j`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Lin {
    j: i64,
    pub(crate) terms: Vec<(i64, ExprId)>,
    pub(crate) c: i64,
}

impl Lin {
    fn scale(mut self, k: i64) -> Lin {
        self.j *= k;
        self.c *= k;
        for t in &mut self.terms {
            t.0 *= k;
        }
        self
    }

    fn add(mut self, o: Lin) -> Lin {
        self.j += o.j;
        self.c += o.c;
        self.terms.extend(o.terms);
        self
    }
}

fn lin(m: &Module, e: ExprId, j: Slot) -> Option<Lin> {
    let n = m.expr(e);
    if n.ty != Ty::Int {
        return None;
    }
    if !mentions(m, e, &[j]) {
        if let Node::Const(c) = n.node {
            return Some(Lin {
                c: c as i64,
                ..Lin::default()
            });
        }
        return Some(Lin {
            terms: vec![(1, e)],
            ..Lin::default()
        });
    }
    match &n.node {
        Node::Index(s) if *s == j => Some(Lin {
            j: 1,
            ..Lin::default()
        }),
        Node::Binary(BinOp::Add, a, b) => Some(lin(m, *a, j)?.add(lin(m, *b, j)?)),
        Node::Binary(BinOp::Sub, a, b) => Some(lin(m, *a, j)?.add(lin(m, *b, j)?.scale(-1))),
        Node::Unary(UnOp::Neg, a) => Some(lin(m, *a, j)?.scale(-1)),
        Node::Binary(BinOp::Mul, a, b) => match (&m.expr(*a).node, &m.expr(*b).node) {
            (Node::Const(k), _) => Some(lin(m, *b, j)?.scale(*k as i64)),
            (_, Node::Const(k)) => Some(lin(m, *a, j)?.scale(*k as i64)),
            _ => None,
        },
        _ => None,
    }
}

/// Bounds on `j` from a guard: inclusive lower bounds and exclusive upper
/// bounds (each `sign * (terms + c)`), and whether they are the whole guard.
#[derive(Default)]
pub(crate) struct Bounds {
    pub(crate) lo: Vec<Lin>,
    pub(crate) hi: Vec<Lin>,
    pub(crate) exact: bool,
}

pub(crate) fn bounds(m: &Module, guard: Option<ExprId>, j: Slot) -> Bounds {
    let mut b = Bounds {
        exact: true,
        ..Bounds::default()
    };
    if let Some(g) = guard {
        clauses(m, g, j, &mut b);
    }
    b
}

/// A comparison of the key's block with something free of the key,
/// `j // s op v` (either way round, `s` a positive constant): `v`, `s` and
/// the comparison with `j // s` on the left. Floor division makes it
/// exact: `j // s == v` holds for `s * v <= j < s * v + s`, so a segment
/// mask (`i // seg == j // seg`) gives each row a range of `seg` keys.
fn block_clause(
    m: &Module,
    op: BinOp,
    x: ExprId,
    y: ExprId,
    j: Slot,
) -> Option<(ExprId, i64, BinOp)> {
    let key_block = |e: ExprId| match &m.expr(e).node {
        Node::Binary(BinOp::FloorDiv, a, d) => match (&m.expr(*a).node, &m.expr(*d).node) {
            (Node::Index(k), Node::Const(s)) if *k == j && *s >= 1.0 && s.fract() == 0.0 => {
                Some(*s as i64)
            }
            _ => None,
        },
        _ => None,
    };
    let free = |e: ExprId| m.expr(e).ty == Ty::Int && !mentions(m, e, &[j]);
    if let (Some(s), true) = (key_block(x), free(y)) {
        return Some((y, s, op));
    }
    if let (Some(s), true) = (key_block(y), free(x)) {
        let flipped = match op {
            BinOp::Lt => BinOp::Gt,
            BinOp::Le => BinOp::Ge,
            BinOp::Gt => BinOp::Lt,
            BinOp::Ge => BinOp::Le,
            o => o,
        };
        return Some((x, s, flipped));
    }
    None
}

fn clauses(m: &Module, e: ExprId, j: Slot, b: &mut Bounds) {
    let node = &m.expr(e).node;
    if let Node::Binary(BinOp::And, x, y) = node {
        clauses(m, *x, j, b);
        clauses(m, *y, j, b);
        return;
    }
    let Node::Binary(op, x, y) = node else {
        b.exact = false;
        return;
    };
    if let Some((v, s, op)) = block_clause(m, *op, *x, *y, j) {
        // `j // s op v`: the keys of whole blocks of `s`, exactly.
        let at = |k: i64| Lin {
            j: 0,
            terms: vec![(s, v)],
            c: k,
        };
        match op {
            BinOp::Eq => {
                b.lo.push(at(0));
                b.hi.push(at(s));
            }
            BinOp::Lt => b.hi.push(at(0)),
            BinOp::Le => b.hi.push(at(s)),
            BinOp::Gt => b.lo.push(at(s)),
            BinOp::Ge => b.lo.push(at(0)),
            _ => b.exact = false,
        }
        return;
    }
    let (Some(lx), Some(ly)) = (lin(m, *x, j), lin(m, *y, j)) else {
        b.exact = false;
        return;
    };
    // d = x - y = a*j + R, compared with 0.
    let d = lx.add(ly.scale(-1));
    if d.j != 1 && d.j != -1 {
        b.exact = false;
        return;
    }
    // With a = 1: j op -R. With a = -1: R op j, i.e. j (flipped op) R.
    let rest = Lin { j: 0, ..d.clone() };
    let (bound, op) = if d.j == 1 {
        (rest.scale(-1), *op)
    } else {
        let flipped = match op {
            BinOp::Lt => BinOp::Gt,
            BinOp::Le => BinOp::Ge,
            BinOp::Gt => BinOp::Lt,
            BinOp::Ge => BinOp::Le,
            o => *o,
        };
        (rest, flipped)
    };
    let plus = |l: &Lin, k: i64| Lin {
        c: l.c + k,
        ..l.clone()
    };
    match op {
        BinOp::Lt => b.hi.push(bound),
        BinOp::Le => b.hi.push(plus(&bound, 1)),
        BinOp::Gt => b.lo.push(plus(&bound, 1)),
        BinOp::Ge => b.lo.push(bound),
        BinOp::Eq => {
            b.lo.push(bound.clone());
            b.hi.push(plus(&bound, 1));
        }
        _ => b.exact = false,
    }
}

impl<'c> Gen<'c, '_> {
    fn lin_value(&mut self, l: &Lin) -> R<IntValue<'c>> {
        let mut acc = self.i64c(l.c);
        for (k, t) in &l.terms {
            let v = self.expr(*t)?;
            let v = match v {
                V::I(i) => i,
                _ => {
                    return Err(crate::BackendError::Llvm(
                        "a mask bound is not an integer".into(),
                    ))
                }
            };
            let kv = self.b.build_int_mul(v, self.i64c(*k), "kt").map_err(llvm)?;
            acc = self.b.build_int_add(acc, kv, "lin").map_err(llvm)?;
        }
        Ok(acc)
    }

    fn imax(&self, a: IntValue<'c>, b: IntValue<'c>) -> R<IntValue<'c>> {
        let c = self
            .b
            .build_int_compare(IntPredicate::SGT, a, b, "gt")
            .map_err(llvm)?;
        Ok(self
            .b
            .build_select(c, a, b, "max")
            .map_err(llvm)?
            .into_int_value())
    }

    fn imin(&self, a: IntValue<'c>, b: IntValue<'c>) -> R<IntValue<'c>> {
        let c = self
            .b
            .build_int_compare(IntPredicate::SLT, a, b, "lt")
            .map_err(llvm)?;
        Ok(self
            .b
            .build_select(c, a, b, "min")
            .map_err(llvm)?
            .into_int_value())
    }

    /// The template for `t` over `[lo, hi)` of `par` (a slot of `p`).
    pub(crate) fn attention(
        &mut self,
        t: &Template,
        par: Option<Slot>,
        lo: IntValue<'c>,
        hi: IntValue<'c>,
    ) -> R<()> {
        let m = self.ir;
        let (op_o, op_p) = (m.ops[t.o].clone(), m.ops[t.p].clone());
        let Node::Normalize {
            guard, body: pbody, ..
        } = m.expr(op_p.body).node.clone()
        else {
            return Err(crate::BackendError::Llvm(
                "attention template: no softmax".into(),
            ));
        };
        let Node::Reduce { body: obody, .. } = m.expr(op_o.body).node.clone() else {
            return Err(crate::BackendError::Llvm(
                "attention template: no sum".into(),
            ));
        };
        // The p frame: p's slots, then the inlined ops' reduction slots.
        let nf = op_p.rank + t.extra.len();
        let mut pf_ext = Vec::new();
        for d in op_p.slots.iter().map(|s| &s.extent).chain(&t.extra) {
            pf_ext.push(self.dim(d)?);
        }
        let mut pf = Vec::new();
        for k in 0..nf {
            pf.push(self.alloca(self.cx.i64_type().into(), &format!("pf{k}"))?);
        }
        let of_ext: Vec<IntValue<'c>> = op_o
            .slots
            .iter()
            .map(|s| self.dim(&s.extent))
            .collect::<R<_>>()?;
        let of: Vec<_> = (0..op_o.slots.len())
            .map(|k| self.alloca(self.cx.i64_type().into(), &format!("of{k}")))
            .collect::<R<_>>()?;
        // Reads of the chain's intermediates are evaluated, not loaded.
        self.inline.clear();
        for &x in &t.inlined {
            self.inline
                .insert(m.ops[x].result, Inline::Body(m.ops[x].body));
        }
        self.inline.insert(op_p.result, Inline::One);
        let f32t = self.cx.f32_type();
        // The accumulator: one f32 per element of o's own axes.
        let mut nacc = self.i64c(1);
        for s in &t.acc {
            nacc = self
                .b
                .build_int_mul(nacc, of_ext[*s as usize], "nacc")
                .map_err(llvm)?;
        }
        // A fixed-size accumulator lives in the entry block (registers or
        // local memory on a GPU); otherwise a dynamic alloca at the kernel's
        // start, outside every loop (the host only: `gpu_kernels` checks).
        let acc = if nacc.is_const() {
            self.alloca_b
                .build_array_alloca(f32t, nacc, "acc")
                .map_err(llvm)?
        } else if self.gpu {
            return Err(crate::BackendError::Llvm(
                "attention template: the accumulator's size is not fixed".into(),
            ));
        } else {
            self.b.build_array_alloca(f32t, nacc, "acc").map_err(llvm)?
        };
        let mstat = self.alloca(f32t.into(), "m")?;
        let lstat = self.alloca(f32t.into(), "l")?;
        let outer: Vec<Slot> = (0..op_p.rank as Slot).filter(|s| *s != t.jp).collect();
        let bnd = bounds(m, guard, t.jp);
        let shape_o = m.value(op_o.result).shape.clone();
        let result = op_o.result;
        self.slots = pf.clone();
        self.extents = pf_ext.clone();
        self.range = par.map(|p| (p, lo, hi));
        let mut row = |g: &mut Self| -> R<()> {
            // Row setup: o's frame from p's, statistics cleared.
            for (ps, os) in &t.p_to_o {
                let v = g.load_i(pf[*ps as usize], "pv")?;
                g.b.build_store(of[*os as usize], v).map_err(llvm)?;
            }
            g.b.build_store(mstat, g.f32c(f64::NEG_INFINITY))
                .map_err(llvm)?;
            g.b.build_store(lstat, g.f32c(0.0)).map_err(llvm)?;
            g.acc_loop(&t.acc, &of, &of_ext, acc, &mut |g, p| {
                g.b.build_store(p, g.f32c(0.0)).map_err(llvm)?;
                Ok(())
            })?;
            // The key range.
            let mut jlo = g.i64c(0);
            for l in &bnd.lo {
                let v = g.lin_value(l)?;
                jlo = g.imax(jlo, v)?;
            }
            let mut jhi = pf_ext[t.jp as usize];
            for l in &bnd.hi {
                let v = g.lin_value(l)?;
                jhi = g.imin(jhi, v)?;
            }
            let saved = g.range;
            let saved_ext = g.extents[t.jp as usize];
            g.range = Some((t.jp, jlo, jhi));
            g.loops(&[t.jp], &mut |g| {
                let j = g.load_i(pf[t.jp as usize], "j")?;
                g.b.build_store(of[t.r as usize], j).map_err(llvm)?;
                let mut step = |g: &mut Self| -> R<V<'c>> {
                    let x = g.expr(pbody)?;
                    let x = g.to_f(x)?;
                    // A new row maximum rescales what was accumulated (one
                    // exp, only then); otherwise the maximum stands.
                    let m0 = g.load_f(mstat, "m0")?;
                    let up =
                        g.b.build_float_compare(inkwell::FloatPredicate::OGT, x, m0, "up")
                            .map_err(llvm)?;
                    g.branch(
                        up,
                        Ty::Bool,
                        &mut |g| {
                            let d = g.b.build_float_sub(m0, x, "d").map_err(llvm)?;
                            let corr = g.intrinsic("llvm.exp", &[d])?;
                            let l0 = g.load_f(lstat, "l0")?;
                            let l1 = g.b.build_float_mul(l0, corr, "lc").map_err(llvm)?;
                            g.b.build_store(lstat, l1).map_err(llvm)?;
                            g.b.build_store(mstat, x).map_err(llvm)?;
                            g.acc_loop(&t.acc, &of, &of_ext, acc, &mut |g, p| {
                                let a = g.load_f(p, "a")?;
                                let a = g.b.build_float_mul(a, corr, "ac").map_err(llvm)?;
                                g.b.build_store(p, a).map_err(llvm)?;
                                Ok(())
                            })?;
                            Ok(V::B(g.cx.bool_type().const_zero()))
                        },
                        &mut |g| Ok(V::B(g.cx.bool_type().const_zero())),
                    )?;
                    let m1 = g.load_f(mstat, "m1")?;
                    let d = g.b.build_float_sub(x, m1, "dx").map_err(llvm)?;
                    let w = g.intrinsic("llvm.exp", &[d])?;
                    let l0 = g.load_f(lstat, "l0")?;
                    let l1 = g.b.build_float_add(l0, w, "l1").map_err(llvm)?;
                    g.b.build_store(lstat, l1).map_err(llvm)?;
                    // acc += w * rest(j, ..), in o's frame.
                    g.acc_loop(&t.acc, &of, &of_ext, acc, &mut |g, p| {
                        let rest = g.expr(obody)?;
                        let rest = g.to_f(rest)?;
                        let a = g.load_f(p, "a")?;
                        let wr = g.b.build_float_mul(w, rest, "wr").map_err(llvm)?;
                        let a = g.b.build_float_add(a, wr, "a1").map_err(llvm)?;
                        g.b.build_store(p, a).map_err(llvm)?;
                        Ok(())
                    })?;
                    Ok(V::B(g.cx.bool_type().const_zero()))
                };
                if bnd.exact {
                    step(g)?;
                    Ok(())
                } else {
                    g.when_kept(guard, &mut step)
                }
            })?;
            g.range = saved;
            g.extents[t.jp as usize] = saved_ext;
            // Write the row: acc / l, or 0 for a fully masked row.
            let l = g.load_f(lstat, "l")?;
            let some =
                g.b.build_float_compare(inkwell::FloatPredicate::OGT, l, g.f32c(0.0), "some")
                    .map_err(llvm)?;
            g.acc_loop(&t.acc, &of, &of_ext, acc, &mut |g, p| {
                let a = g.load_f(p, "a")?;
                let q = g.b.build_float_div(a, l, "q").map_err(llvm)?;
                let v = g.b.build_select(some, q, g.f32c(0.0), "o").map_err(llvm)?;
                g.store_value(result, &shape_o, V::F(v.into_float_value()))
            })?;
            Ok(())
        };
        // The host walks its share of the rows; a GPU thread takes one.
        let r = if self.gpu {
            self.thread_loop(&outer, &mut row)
        } else {
            self.loops(&outer, &mut row)
        };
        self.range = None;
        self.inline.clear();
        r
    }

    /// Loops over the accumulator's axes in o's frame (which `f` runs in),
    /// handing `f` the element's address.
    fn acc_loop(
        &mut self,
        axes: &[Slot],
        of: &[inkwell::values::PointerValue<'c>],
        of_ext: &[IntValue<'c>],
        acc: inkwell::values::PointerValue<'c>,
        f: &mut dyn FnMut(&mut Self, inkwell::values::PointerValue<'c>) -> R<()>,
    ) -> R<()> {
        let (ps, pe, pr) = (self.slots.clone(), self.extents.clone(), self.range);
        self.slots = of.to_vec();
        self.extents = of_ext.to_vec();
        self.range = None;
        let r = self.loops(axes, &mut |g| {
            let mut flat = g.i64c(0);
            for s in axes {
                let i = g.load_i(of[*s as usize], "ai")?;
                flat =
                    g.b.build_int_mul(flat, of_ext[*s as usize], "af")
                        .map_err(llvm)?;
                flat = g.b.build_int_add(flat, i, "af").map_err(llvm)?;
            }
            // SAFETY: `flat` < the product of the axes' extents, the size of `acc`.
            let p = unsafe { g.b.build_in_bounds_gep(g.cx.f32_type(), acc, &[flat], "ap") }
                .map_err(llvm)?;
            f(g, p)
        });
        self.slots = ps;
        self.extents = pe;
        self.range = pr;
        r
    }
}

/// Which kernels a module compiles to on the host: templates where they
/// match, the runtime's FFT convolution for long convolutions, the generic
/// loop nest elsewhere, nothing for absorbed ops.
#[derive(Clone, Debug)]
pub enum HostKernel {
    Generic(usize),
    Attention(Template),
    FftConv(usize, Box<mixc_runtime::fft::ConvSpec>),
    /// A scan and its one reader, the state on chip (`crate::statescan`).
    StateScan(crate::statescan::StateScan),
}

impl HostKernel {
    /// The op whose value the kernel writes.
    pub fn op(&self) -> usize {
        match self {
            HostKernel::Generic(o) | HostKernel::FftConv(o, _) => *o,
            HostKernel::Attention(t) => t.o,
            HostKernel::StateScan(ss) => ss.o,
        }
    }
}

/// The module the host compiles (contractions under elementwise functions
/// and long convolutions hoisted into ops of their own, causal linear
/// attention as a scan), its kernels in launch
/// order, and the ops that get no kernel (absorbed by a template, or
/// dead). `consts`
/// are the sizes fixed at build time (a scan's state must have a constant
/// size to stay on chip).
pub fn host_kernels(
    m: &Module,
    templates: bool,
    consts: &std::collections::BTreeMap<String, i64>,
) -> (Module, Vec<HostKernel>, BTreeSet<usize>) {
    if !templates {
        return (
            m.clone(),
            (0..m.ops.len()).map(HostKernel::Generic).collect(),
            BTreeSet::new(),
        );
    }
    let m = crate::linear::as_scans(&crate::hoist::hoist_sums(m), consts);
    let (m, mut convs) = crate::conv::hoist(&m);
    let (ts, mut absorbed) = plan(&m);
    absorbed.extend(crate::linear::dead_ops(&m));
    let by_o: HashMap<usize, Template> = ts.into_iter().map(|t| (t.o, t)).collect();
    let ks = (0..m.ops.len())
        .filter(|o| !absorbed.contains(o))
        .map(|o| match (by_o.get(&o), convs.remove(&o)) {
            (Some(t), _) => HostKernel::Attention(t.clone()),
            (None, Some(c)) => HostKernel::FftConv(o, Box::new(c)),
            (None, None) => HostKernel::Generic(o),
        })
        .collect();
    let (ks, absorbed) = crate::statescan::splice(&m, consts, ks, absorbed);
    (m, ks, absorbed)
}

/// The GPU's kernels for `m`: the attention template where its
/// accumulator's size is a constant under `consts` (and `templates`), one
/// generic kernel per op elsewhere, nothing for absorbed ops.
pub fn gpu_kernels(
    m: &Module,
    templates: bool,
    consts: &std::collections::BTreeMap<String, i64>,
) -> (Vec<HostKernel>, BTreeSet<usize>) {
    if !templates {
        return (
            (0..m.ops.len()).map(HostKernel::Generic).collect(),
            BTreeSet::new(),
        );
    }
    let (ts, _) = plan(m);
    let fixed_acc = |t: &Template| {
        t.acc
            .iter()
            .all(|s| m.ops[t.o].slots[*s as usize].extent.eval(consts).is_ok())
    };
    let ts: Vec<Template> = ts.into_iter().filter(fixed_acc).collect();
    let absorbed = absorbed_by(m, &ts);
    let by_o: HashMap<usize, Template> = ts.into_iter().map(|t| (t.o, t)).collect();
    let ks = (0..m.ops.len())
        .filter(|o| !absorbed.contains(o))
        .map(|o| match by_o.get(&o) {
            Some(t) => HostKernel::Attention(t.clone()),
            None => HostKernel::Generic(o),
        })
        .collect();
    (ks, absorbed)
}

/// How many rows (GPU threads) a template has: `p`'s outer extents.
pub fn rows(m: &Module, t: &Template) -> DimExpr {
    use mixc_dsl::typed::DimOp;
    let op = &m.ops[t.p];
    (0..op.rank as Slot)
        .filter(|s| *s != t.jp)
        .fold(DimExpr::Const(1), |acc, s| match acc {
            DimExpr::Const(1) => op.slots[s as usize].extent.clone(),
            acc => DimExpr::bin(DimOp::Mul, acc, op.slots[s as usize].extent.clone()),
        })
}

/// The slot of `p` a template's threads split: its query axis (an outer
/// slot whose extent mentions `L`), else its first outer slot.
pub fn parallel_slot(m: &Module, t: &Template) -> Option<Slot> {
    let op = &m.ops[t.p];
    let outer: Vec<Slot> = (0..op.rank as Slot).filter(|s| *s != t.jp).collect();
    let mentions_l = |s: &Slot| {
        let mut syms = Vec::new();
        op.slots[*s as usize].extent.symbols(&mut syms);
        syms.iter().any(|x| x == "L")
    };
    outer
        .iter()
        .copied()
        .find(mentions_l)
        .or_else(|| outer.first().copied())
}

/// The first attention template's mask as a Python expression over
/// `q_idx` and `kv_idx` (and `L`), for a PyTorch `mask_mod`: integer
/// arithmetic, comparisons, `&`, `|`, `~`. `fixed` gives every size but
/// `L`. `None` if there is no template, or the mask reads a tensor, another
/// index, or anything without a plain integer meaning. No mask is `True`
/// for every pair (written `q_idx >= 0`).
pub fn mask_python(m: &Module, fixed: &std::collections::BTreeMap<String, i64>) -> Option<String> {
    let (ts, _) = plan(m);
    let t = ts.first()?;
    let q = parallel_slot(m, t)?;
    let Node::Normalize { guard, .. } = &m.expr(m.ops[t.p].body).node else {
        return None;
    };
    match guard {
        None => Some("q_idx >= 0".into()),
        Some(g) => py_expr(m, *g, q, t.jp, fixed),
    }
}

fn py_dim(d: &DimExpr, fixed: &std::collections::BTreeMap<String, i64>) -> Option<String> {
    use mixc_dsl::typed::DimOp;
    Some(match d {
        DimExpr::Const(v) => v.to_string(),
        DimExpr::Sym(s) if s == "L" => "L".into(),
        DimExpr::Sym(s) => fixed.get(s)?.to_string(),
        DimExpr::Bin(op, a, b) => {
            let (a, b) = (py_dim(a, fixed)?, py_dim(b, fixed)?);
            match op {
                DimOp::Max => format!("max({a}, {b})"),
                DimOp::Min => format!("min({a}, {b})"),
                DimOp::Div | DimOp::FloorDiv => format!("({a} // {b})"),
                op => format!("({a} {} {b})", op.symbol()),
            }
        }
    })
}

fn py_expr(
    m: &Module,
    e: ExprId,
    q: Slot,
    kv: Slot,
    fixed: &std::collections::BTreeMap<String, i64>,
) -> Option<String> {
    let n = m.expr(e);
    let sub = |x: ExprId| py_expr(m, x, q, kv, fixed);
    Some(match &n.node {
        Node::Index(s) if *s == q => "q_idx".into(),
        Node::Index(s) if *s == kv => "kv_idx".into(),
        Node::Const(c) if n.ty == Ty::Int => (*c as i64).to_string(),
        Node::Const(c) if n.ty == Ty::Bool => if *c != 0.0 {
            "(q_idx >= 0)"
        } else {
            "(q_idx < 0)"
        }
        .into(),
        Node::Size(d) => py_dim(d, fixed)?,
        Node::Unary(UnOp::Not, a) => format!("(~{})", sub(*a)?),
        Node::Unary(UnOp::Neg, a) if n.ty == Ty::Int => format!("(-{})", sub(*a)?),
        Node::Binary(op, a, b) => {
            let sym = match op {
                BinOp::And => "&",
                BinOp::Or => "|",
                BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::FloorDiv | BinOp::Mod
                    if m.expr(*a).ty == Ty::Int && m.expr(*b).ty == Ty::Int =>
                {
                    op.symbol()
                }
                BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge
                    if m.expr(*a).ty == Ty::Int && m.expr(*b).ty == Ty::Int =>
                {
                    op.symbol()
                }
                _ => return None,
            };
            format!("({} {sym} {})", sub(*a)?, sub(*b)?)
        }
        _ => return None,
    })
}
