//! Long convolutions on the host go through the runtime's FFT kernel
//! (`mixc_runtime::fft`), not the generic O(L * taps) loop.
//!
//! A long convolution is a sum, anywhere in an op's body, of the form
//! `sum(t) where t <= l: f[.., t, ..] * x[.., l - t, ..]` whose tap count
//! is the extent of the signal axis `l` (Hyena's implicit filter, S4's
//! kernel), whatever that size is named. It is hoisted into
//! an op of its own (its value gets a buffer; the original op reads it at
//! its own indices), and that op's kernel becomes the library kernel, with
//! the operands' layouts described by strides. Short convolutions (a
//! fixed number of taps) stay on the generic path, which is faster for them.

use crate::ir::{BinOp, DimExpr, ExprId, ExprNode, Module, Node, Op, OpKind, RedOp, Slot, Ty};
use mixc_dsl::typed::DimOp;
use mixc_runtime::fft::{Access, ConvSpec};
use std::collections::BTreeMap;

fn is_index(m: &Module, e: ExprId, s: Slot) -> bool {
    m.expr(e).node == Node::Index(s)
}

/// `l - t` as a subscript: returns `l`.
fn minus_tap(m: &Module, e: ExprId, tap: Slot) -> Option<Slot> {
    match &m.expr(e).node {
        Node::Binary(BinOp::Sub, a, b) if is_index(m, *b, tap) => match m.expr(*a).node {
            Node::Index(l) if l != tap => Some(l),
            _ => None,
        },
        _ => None,
    }
}

/// Matches a long causal convolution at `e` in op `op`.
fn matches(m: &Module, op: &Op, e: ExprId) -> Option<LongConv> {
    let Node::Reduce {
        op: RedOp::Sum,
        slots,
        guard: Some(g),
        body,
    } = &m.expr(e).node
    else {
        return None;
    };
    let [tap] = slots.as_slice() else { return None };
    let tap = *tap;
    let taps = &op.slots.get(tap as usize)?.extent;
    let Node::Binary(BinOp::Mul, a, b) = &m.expr(*body).node else {
        return None;
    };
    for (f, x) in [(*a, *b), (*b, *a)] {
        let Node::Read(_, fsubs) = &m.expr(f).node else {
            continue;
        };
        // The signal: a read, or an elementwise expression of reads, each
        // with exactly one `l - t` subscript (the same `l`); no other use
        // of `l` or `t`.
        let Some(l) = signal_axis(m, op, x, tap) else {
            continue;
        };
        // Long: the filter has as many taps as the signal axis has
        // positions (whatever that size is called). A filter of a fixed
        // number of taps stays a direct sum, faster for a few taps.
        if *taps != op.slots[l as usize].extent {
            continue;
        }
        let plain = |subs: &[ExprId], special: &dyn Fn(ExprId) -> bool| {
            subs.iter().all(|s| {
                special(*s)
                    || matches!(m.expr(*s).node, Node::Index(k) if k != tap && k != l && (k as usize) < op.rank)
                    || matches!(m.expr(*s).node, Node::Const(_))
            })
        };
        // The filter: exactly one `t` subscript, no `l`.
        if fsubs.iter().filter(|s| is_index(m, **s, tap)).count() != 1
            || !plain(fsubs, &|s| is_index(m, s, tap))
        {
            continue;
        }
        // The guard is `t <= l` (or `l >= t`).
        let ok = match &m.expr(*g).node {
            Node::Binary(BinOp::Le, p, q) => is_index(m, *p, tap) && is_index(m, *q, l),
            Node::Binary(BinOp::Ge, p, q) => is_index(m, *p, l) && is_index(m, *q, tap),
            _ => false,
        };
        if !ok {
            continue;
        }
        return Some(LongConv {
            reduce: e,
            tap,
            l,
            filter: f,
            signal: x,
        });
    }
    None
}

/// The axis `l` of a convolution's signal `x`: every read in `x` has
/// exactly one subscript `l - t` (the same `l`, a result axis) and its
/// others are other result indices or constants; outside subscripts, `x`
/// uses neither `l` nor `t`, and it has no reduction.
fn signal_axis(m: &Module, op: &Op, x: ExprId, tap: Slot) -> Option<Slot> {
    fn walk(
        m: &Module,
        op: &Op,
        e: ExprId,
        tap: Slot,
        l: &mut Option<Slot>,
        bare: &mut Vec<Slot>,
    ) -> bool {
        match &m.expr(e).node {
            Node::Read(_, subs) => {
                let ls: Vec<Slot> = subs.iter().filter_map(|s| minus_tap(m, *s, tap)).collect();
                let [this] = ls.as_slice() else { return false };
                if (*this as usize) >= op.rank || l.is_some_and(|x| x != *this) {
                    return false;
                }
                *l = Some(*this);
                subs.iter().all(|s| match m.expr(*s).node {
                    Node::Index(k) => k != tap && k != *this && (k as usize) < op.rank,
                    Node::Const(_) => true,
                    _ => minus_tap(m, *s, tap) == Some(*this),
                })
            }
            Node::Index(s) => {
                bare.push(*s);
                true
            }
            Node::Reduce { .. } | Node::Normalize { .. } => false,
            _ => m
                .children(e)
                .into_iter()
                .all(|c| walk(m, op, c, tap, l, bare)),
        }
    }
    let (mut l, mut bare) = (None, Vec::new());
    if !walk(m, op, x, tap, &mut l, &mut bare) {
        return None;
    }
    let l = l?;
    bare.iter()
        .all(|s| *s != tap && *s != l && (*s as usize) < op.rank)
        .then_some(l)
}

/// Makes the signal of convolution `c` in op `o` a plain read, where it is
/// an expression: a new op at `o` (the convolution moves to `o + 1`)
/// computes the expression over the op's result indices, with `l` for
/// `l - t`, and the convolution reads it at `l - t`. The host's FFT kernel
/// reads its operands by strides.
fn materialize_signal(m: &mut Module, o: usize, c: &LongConv) {
    let op = m.ops[o].clone();
    let (l, tap, span) = (c.l, c.tap, op.span);
    let body = m.copy_expr(c.signal, &crate::ir::same_slot, &mut |m, e| {
        (minus_tap(m, e, tap) == Some(l)).then(|| m.add_expr(Node::Index(l), Ty::Int, span))
    });
    let name = format!("{}~signal", m.value(op.result).name);
    let shape = m.value(op.result).shape.clone();
    let mut new = Op {
        result: op.result,
        slots: op.slots[..op.rank].to_vec(),
        rank: op.rank,
        body,
        recurrence: None,
        kind: OpKind::Map,
        span,
    };
    new.kind = crate::ir::classify(m, &new);
    let v = crate::passes::hoist::insert_op(m, o, name, shape, new);
    let subs: Vec<ExprId> = (0..op.rank as Slot)
        .map(|k| {
            let i = m.add_expr(Node::Index(k), Ty::Int, span);
            if k == l {
                let t = m.add_expr(Node::Index(tap), Ty::Int, span);
                m.add_expr(Node::Binary(BinOp::Sub, i, t), Ty::Int, span)
            } else {
                i
            }
        })
        .collect();
    m.exprs[c.signal.0 as usize] = ExprNode {
        node: Node::Read(v, subs),
        ty: Ty::Real,
        span,
    };
}

fn find(m: &Module, op: &Op, e: ExprId) -> Option<LongConv> {
    if let Some(f) = matches(m, op, e) {
        return Some(f);
    }
    m.children(e).into_iter().find_map(|c| find(m, op, c))
}

pub(crate) fn mul(a: DimExpr, b: DimExpr) -> DimExpr {
    match (&a, &b) {
        (DimExpr::Const(1), _) => b,
        (_, DimExpr::Const(1)) => a,
        _ => DimExpr::bin(DimOp::Mul, a, b),
    }
}

pub(crate) fn add(a: DimExpr, b: DimExpr) -> DimExpr {
    match (&a, &b) {
        (DimExpr::Const(0), _) => b,
        (_, DimExpr::Const(0)) => a,
        _ => DimExpr::bin(DimOp::Add, a, b),
    }
}

/// Row-major strides of a shape.
pub(crate) fn strides(shape: &[DimExpr]) -> Vec<DimExpr> {
    let mut s = vec![DimExpr::Const(1); shape.len()];
    for k in (0..shape.len().saturating_sub(1)).rev() {
        s[k] = mul(s[k + 1].clone(), shape[k + 1].clone());
    }
    s
}

/// The access of a read: offset and coefficients over `channels`, and the
/// step along the subscript `special` picks.
fn access(m: &Module, read: ExprId, channels: &[Slot], special: &dyn Fn(ExprId) -> bool) -> Access {
    let Node::Read(v, subs) = &m.expr(read).node else {
        unreachable!("matched reads are reads")
    };
    let st = strides(&m.value(*v).shape);
    let mut offset = DimExpr::Const(0);
    let mut coefs = vec![DimExpr::Const(0); channels.len()];
    let mut step = DimExpr::Const(0);
    for (k, s) in subs.iter().enumerate() {
        if special(*s) {
            step = add(step, st[k].clone());
            continue;
        }
        match m.expr(*s).node {
            Node::Index(i) => {
                if let Some(c) = channels.iter().position(|x| *x == i) {
                    coefs[c] = add(coefs[c].clone(), st[k].clone());
                }
            }
            Node::Const(c) => offset = add(offset, mul(DimExpr::Const(c as i64), st[k].clone())),
            _ => {}
        }
    }
    Access {
        value: v.0 as usize,
        offset: offset.to_string(),
        coefs: coefs.iter().map(|d| d.to_string()).collect(),
        step: step.to_string(),
    }
}

/// The spec of op `o`, whose body is a matched convolution.
fn spec(m: &Module, o: usize, f: &LongConv) -> ConvSpec {
    let op = &m.ops[o];
    let channels: Vec<Slot> = (0..op.rank as Slot).filter(|s| *s != f.l).collect();
    let out_st = strides(&m.value(op.result).shape);
    let tap = f.tap;
    ConvSpec {
        channels: channels
            .iter()
            .map(|s| op.slots[*s as usize].extent.to_string())
            .collect(),
        len: op.slots[f.l as usize].extent.to_string(),
        taps: op.slots[tap as usize].extent.to_string(),
        out: Access {
            value: op.result.0 as usize,
            offset: "0".into(),
            coefs: channels
                .iter()
                .map(|s| out_st[*s as usize].to_string())
                .collect(),
            step: out_st[f.l as usize].to_string(),
        },
        filter: access(m, f.filter, &channels, &|s| is_index(m, s, tap)),
        signal: access(m, f.signal, &channels, &|s| minus_tap(m, s, tap).is_some()),
        filter_constant: match &m.expr(f.filter).node {
            Node::Read(v, _) => match m.value(*v).def {
                crate::ir::ValueDef::Input => false,
                crate::ir::ValueDef::Param(_) => true,
                crate::ir::ValueDef::Op(o) => !crate::pattern::input_dependent(m, o.0 as usize),
            },
            _ => false,
        },
    }
}

/// A long causal convolution in an op's body: the sum, its tap and output
/// axes, and the filter and signal reads (see the module doc).
#[derive(Clone, Debug)]
pub struct LongConv {
    pub reduce: ExprId,
    pub tap: Slot,
    pub l: Slot,
    pub filter: ExprId,
    pub signal: ExprId,
}

/// The long convolution in op `o`'s body, where one matches: the op is
/// not a recurrence, and the sum reads only the op's result slots and its
/// tap.
pub fn long(m: &Module, o: usize) -> Option<LongConv> {
    let op = &m.ops[o];
    if op.recurrence.is_some() {
        return None;
    }
    let f = find(m, op, op.body)?;
    let used_ok = (0..op.slots.len() as Slot)
        .filter(|s| (*s as usize) >= op.rank && *s != f.tap)
        .all(|s| !crate::pattern::mentions(m, f.reduce, &[s]));
    used_ok.then_some(f)
}

/// The runtime library's FFT kernel for every op that is a long
/// convolution of a read and nothing else (what [`hoist`] leaves), by op
/// index.
pub fn library_specs(m: &Module) -> BTreeMap<usize, ConvSpec> {
    (0..m.ops.len())
        .filter_map(|o| {
            let found = long(m, o)?;
            let plain = found.reduce == m.ops[o].body
                && matches!(m.expr(found.signal).node, Node::Read(..));
            plain.then(|| (o, spec(m, o, &found)))
        })
        .collect()
}

/// Hoists every long convolution into an op of its own. Returns the new
/// module and, per op index of it, the FFT kernel that computes that op.
pub fn hoist(m: &Module) -> (Module, BTreeMap<usize, ConvSpec>) {
    let mut m = m.clone();
    let mut convs = BTreeMap::new();
    let mut o = 0;
    while o < m.ops.len() {
        let op = m.ops[o].clone();
        let Some(found) = long(&m, o) else {
            o += 1;
            continue;
        };
        if !matches!(m.expr(found.signal).node, Node::Read(..)) {
            // The signal becomes an op of its own at `o`; look again.
            materialize_signal(&mut m, o, &found);
            continue;
        }
        if found.reduce == op.body {
            convs.insert(o, spec(&m, o, &found));
            o += 1;
            continue;
        }
        // A new op before `o` computes the sum over the result's indices.
        crate::passes::hoist::hoist_reduce(&mut m, o, found.reduce, OpKind::Conv, "conv");
        let hoisted = find(&m, &m.ops[o].clone(), m.ops[o].body).expect("the hoisted sum matches");
        convs.insert(o, spec(&m, o, &hoisted));
        o += 2;
    }
    (m, convs)
}
