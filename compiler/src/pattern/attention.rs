//! `fuse-attention`: scores -> (score modification) -> softmax -> weighted
//! sum, as one fused kernel. See the rulebook (README.md) for conditions.

use super::{has_reduction, mentions, op_of, operands, product_reads, reads_at_identity};
use crate::ir::{BinOp, DimExpr, ExprId, Module, Node, NormOp, OpKind, Slot, Ty, UnOp, ValueId};
use std::collections::BTreeSet;

/// A match of the attention chain ending at op `o`.
pub struct AttentionMatch {
    pub o: usize,
    pub p: usize,
    /// The elementwise score modification between scores and softmax, if any.
    pub modifier: Option<usize>,
    pub s: usize,
    /// Values the fused kernel reads: q, k, v, then any tables.
    pub inputs: Vec<ValueId>,
}

pub fn match_attention(m: &Module, o: usize, uses: &[usize]) -> Option<AttentionMatch> {
    let op_o = &m.ops[o];
    if op_o.kind != OpKind::Contract {
        return None;
    }
    let Node::Reduce { slots, body, .. } = &m.expr(op_o.body).node else {
        return None;
    };
    let [r] = slots.as_slice() else { return None };
    let mut reads = Vec::new();
    if !product_reads(m, *body, &mut reads) || reads.len() != 2 {
        return None;
    }
    // One read is the softmax output, subscripted by `r` on its softmax axis.
    for (pi, vi) in [(0, 1), (1, 0)] {
        let Node::Read(pv, psubs) = &m.expr(reads[pi]).node else {
            continue;
        };
        let Node::Read(vv, _) = &m.expr(reads[vi]).node else {
            continue;
        };
        let Some(p) = op_of(m, *pv) else { continue };
        let op_p = &m.ops[p];
        let Node::Normalize {
            op: NormOp::Softmax,
            slot,
            body: pbody,
            ..
        } = &m.expr(op_p.body).node
        else {
            continue;
        };
        if (*slot as usize) >= psubs.len() || m.expr(psubs[*slot as usize]).node != Node::Index(*r)
        {
            continue;
        }
        if uses[pv.0 as usize] != 1 || has_reduction(m, *pbody) {
            continue;
        }
        // The softmax reads the scores (or their modification) at its own indices.
        let p_operands = operands(m, p);
        let mut found = None;
        for x in &p_operands {
            let Some(xo) = op_of(m, *x) else { continue };
            // Scores may be shared (several masked branches over the same
            // scores): the fused kernel recomputes them on chip.
            if !reads_at_identity(m, *pbody, *x, op_p.rank) {
                continue;
            }
            if is_scores(m, xo) {
                found = Some((None, xo));
                break;
            }
            let op_x = &m.ops[xo];
            if op_x.kind == OpKind::Map && op_x.rank == op_p.rank {
                for y in operands(m, xo) {
                    if let Some(yo) = op_of(m, y) {
                        if is_scores(m, yo) && reads_at_identity(m, op_x.body, y, op_x.rank) {
                            found = Some((Some(xo), yo));
                        }
                    }
                }
            }
        }
        let Some((modifier, s)) = found else { continue };
        let mut inputs: Vec<ValueId> = operands(m, s);
        inputs.push(*vv);
        let internal = [
            m.ops[s].result,
            modifier.map(|x| m.ops[x].result).unwrap_or(m.ops[s].result),
            m.ops[p].result,
        ];
        let mut extra = |vs: Vec<ValueId>| {
            for v in vs {
                if !internal.contains(&v) && !inputs.contains(&v) {
                    inputs.push(v);
                }
            }
        };
        extra(p_operands.clone());
        if let Some(x) = modifier {
            extra(operands(m, x));
        }
        return Some(AttentionMatch {
            o,
            p,
            modifier,
            s,
            inputs,
        });
    }
    None
}

/// `sum(e) a[..] * b[..] * c`: a score contraction of two reads over one index.
pub fn is_scores(m: &Module, s: usize) -> bool {
    let op = &m.ops[s];
    if op.kind != OpKind::Contract {
        return false;
    }
    let Node::Reduce { slots, body, .. } = &m.expr(op.body).node else {
        return false;
    };
    let mut reads = Vec::new();
    slots.len() == 1 && product_reads(m, *body, &mut reads) && reads.len() == 2
}

/// What a read of an absorbed value evaluates to inside the template.
#[derive(Clone, Copy, Debug)]
pub enum Inline {
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
    pub extra: Vec<DimExpr>,
    /// `p`'s softmax axis, and for each other `p` slot the `o` slot it maps to.
    pub jp: Slot,
    pub p_to_o: Vec<(Slot, Slot)>,
    /// `o`'s reduction slot (the key index in `o`'s frame).
    pub r: Slot,
    /// `o`'s result slots that are not `p`'s (the accumulator's axes).
    pub acc: Vec<Slot>,
}

/// Every attention chain the template can compile, and the ops whose
/// values then need no kernel and no buffer (absorbed).
///
/// A chain whose weighted sum or softmax another chain inlines (a score
/// that is itself an attention output: `s = sum(z) softmax(..)[.., z] *
/// v[.., z]`, read by a second softmax) is not taken: the other chain
/// evaluates it in place from its operands, which then need kernels of
/// their own (taking both left the first chain's softmax absorbed and
/// never computed: a silent wrong answer on the host, found by `mixc fuzz`,
/// seed 4005526).
pub fn plan(m: &Module) -> (Vec<Template>, BTreeSet<usize>) {
    let rep: Vec<usize> = (0..m.ops.len()).collect();
    let uses = super::consumers(m, &rep);
    let all: Vec<Template> = (0..m.ops.len())
        .filter_map(|o| shape(m, o, &uses))
        .collect();
    let inlined: BTreeSet<usize> = all.iter().flat_map(|t| t.inlined.iter().copied()).collect();
    let out: Vec<Template> = all
        .into_iter()
        .filter(|t| !inlined.contains(&t.o) && !inlined.contains(&t.p))
        .collect();
    let absorbed = absorbed_by(m, &out);
    (out, absorbed)
}

/// The ops templates `ts` absorb: each softmax (read once, by its
/// template), then, to a fixed point, every inlined op whose readers are
/// all absorbed.
pub fn absorbed_by(m: &Module, ts: &[Template]) -> BTreeSet<usize> {
    let mut absorbed: BTreeSet<usize> = ts.iter().map(|t| t.p).collect();
    let readers = |v: ValueId| -> Vec<usize> {
        (0..m.ops.len())
            .filter(|&k| super::operands(m, k).contains(&v))
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
fn identity_reads(m: &Module, e: ExprId, p: &crate::ir::Op, out: &mut Vec<usize>) {
    let mut reads = Vec::new();
    all_reads(m, e, &mut reads);
    for v in reads {
        let crate::ir::ValueDef::Op(x) = m.value(v).def else {
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
    let (slots, body) = super::unguarded_sum(m, op_o.body)?;
    let body = &body;
    // The softmax read in o's body: the one read of a softmax op's value.
    let mut softmaxes = Vec::new();
    let mut reads = Vec::new();
    all_reads(m, *body, &mut reads);
    for v in reads {
        if let crate::ir::ValueDef::Op(x) = m.value(v).def {
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
    // An inlined value is evaluated at the row's own indices wherever the
    // chain reads it, so every read of it in the chain must be there: a
    // value read at its own indices by one op and shifted by another (the
    // signal of a convolution hoisted out of the scores, `gu[b, l - t, c]`)
    // would be evaluated unshifted.
    let bodies: Vec<ExprId> = std::iter::once(*pbody)
        .chain(inlined.iter().map(|x| m.ops[*x].body))
        .collect();
    for &x in &inlined {
        let v = m.ops[x].result;
        if !bodies
            .iter()
            .all(|b| reads_at_identity(m, *b, v, op_p.rank))
        {
            return None;
        }
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
    let [r] = slots else { return None };
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

/// `j * coef + sum(terms) + c`, terms free of `j`.
#[derive(Clone, Debug, Default)]
pub struct Lin {
    j: i64,
    pub terms: Vec<(i64, ExprId)>,
    pub c: i64,
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
pub struct Bounds {
    pub lo: Vec<Lin>,
    pub hi: Vec<Lin>,
    pub exact: bool,
}

pub fn bounds(m: &Module, guard: Option<ExprId>, j: Slot) -> Bounds {
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
/// slot whose extent mentions the sequence size), else its first outer
/// slot.
pub fn parallel_slot(m: &Module, t: &Template) -> Option<Slot> {
    let op = &m.ops[t.p];
    let outer: Vec<Slot> = (0..op.rank as Slot).filter(|s| *s != t.jp).collect();
    let mentions_l = |s: &Slot| m.mentions_sequence(&op.slots[*s as usize].extent);
    outer
        .iter()
        .copied()
        .find(mentions_l)
        .or_else(|| outer.first().copied())
}
