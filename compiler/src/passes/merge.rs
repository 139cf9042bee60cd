//! `merge-projections`: projections of one input (`q`, `k`, `v` of
//! attention; the gates of RetNet and Mamba) become one contraction with
//! the weights side by side, so the input is read once and one kernel
//! computes every member, on every target.
//!
//! For a group `p_k[.., n..] = sum(r) x[.., r] * w_k[r, n..]` (k = 0..K,
//! [`crate::pattern::projection::groups`]) it inserts, where the first
//! member was:
//! - `W[r, c, n..] = select(c == 0, w_0[r, n..], select(c == 1, ..))`,
//!   the weights stacked along a new axis `c` of extent K (a value of the
//!   parameters alone: it runs once per parameter set, not per call);
//! - `M[.., c, n..] = sum(r) x[.., r] * W[r, c, n..]`, the new axis placed
//!   before the result's first weight axis (so the weights' axes stay
//!   innermost, as one wider contraction);
//!
//! and every read `p_k[s..]` anywhere becomes `M[.., k, ..]` (the constant
//! `k` at `c`'s place). The members stay, unread (no kernel, no buffer).
//!
//! Claim: `M[.., k, ..] = p_k` for every k: the same products summed in
//! the same order over `r`, `select` picking `w_k` exactly. A dead view op
//! `p_k~view = M[.., k, ..]` per member carries the claim
//! ([`crate::passes::MidEnd::claims`]), which the tests check by
//! interpretation.

use super::hoist::insert_op;
use crate::ir::{
    BinOp, Builtin, DimExpr, ExprId, IndexVar, Module, Node, Op, OpKind, RedOp, Slot, Ty, ValueId,
};
use crate::pattern::projection::{groups, Projection};

/// What [`merge_projections`] did.
pub struct Merged {
    pub module: Module,
    /// (view, member): each member equals its view, a slice of the merge.
    pub claims: Vec<(ValueId, ValueId)>,
    /// Each merged contraction's value and its members.
    pub groups: Vec<(ValueId, Vec<ValueId>)>,
}

/// `m` with every group of projections merged.
pub fn merge_projections(m: &Module) -> Merged {
    let mut m = m.clone();
    let (mut claims, mut merged) = (Vec::new(), Vec::new());
    // One group at a time: each merge moves op indices.
    while let Some(g) = groups(&m).into_iter().next() {
        let (whole, views) = merge(&mut m, &g);
        merged.push((whole, views.iter().map(|(_, member)| *member).collect()));
        claims.extend(views);
    }
    Merged {
        module: m,
        claims,
        groups: merged,
    }
}

fn index(m: &mut Module, s: Slot, span: mixc_dsl::Span) -> ExprId {
    m.add_expr(Node::Index(s), Ty::Int, span)
}

/// Merges group `g`: the merged contraction's value, and (view, member)
/// for each member.
fn merge(m: &mut Module, g: &[Projection]) -> (ValueId, Vec<(ValueId, ValueId)>) {
    let p0 = &g[0];
    let op0 = m.ops[p0.o].clone();
    let span = op0.span;
    let rank = op0.rank;
    let k = g.len();
    let first = g.iter().map(|p| p.o).min().expect("a group has members");
    // Where `c` goes in the result (before its first weight axis) and in
    // the stacked weights (before their first result axis).
    let at = (0..rank as Slot)
        .find(|s| p0.w_subs.contains(s))
        .unwrap_or(rank as Slot);
    let at_w = p0
        .w_subs
        .iter()
        .position(|s| *s != p0.r)
        .unwrap_or(p0.w_subs.len());
    let shift = |s: Slot| if s < at { s } else { s + 1 };

    // The stacked weights W[.., c, ..].
    let w_shape = m.value(p0.w).shape.clone();
    let mut w_slots: Vec<IndexVar> = w_shape
        .iter()
        .enumerate()
        .map(|(j, d)| IndexVar {
            name: format!("w{j}"),
            extent: d.clone(),
        })
        .collect();
    w_slots.insert(
        at_w,
        IndexVar {
            name: "c".into(),
            extent: DimExpr::Const(k as i64),
        },
    );
    let w_at = |j: usize| if j < at_w { j } else { j + 1 } as Slot;
    let read_w = |m: &mut Module, w: ValueId| {
        let subs: Vec<ExprId> = (0..w_shape.len())
            .map(|j| index(m, w_at(j), span))
            .collect();
        m.add_expr(Node::Read(w, subs), Ty::Real, span)
    };
    let mut body = read_w(m, g[k - 1].w);
    for (c, p) in g.iter().enumerate().rev().skip(1) {
        let ci = index(m, at_w as Slot, span);
        let cc = m.add_expr(Node::Const(c as f64), Ty::Int, span);
        let pred = m.add_expr(Node::Binary(BinOp::Eq, ci, cc), Ty::Bool, span);
        let wc = read_w(m, p.w);
        body = m.add_expr(
            Node::Call(Builtin::Select, vec![pred, wc, body]),
            Ty::Real,
            span,
        );
    }
    let mut stacked_shape = w_shape.clone();
    stacked_shape.insert(at_w, DimExpr::Const(k as i64));
    let names = |vs: Vec<ValueId>, m: &Module| {
        vs.iter()
            .map(|v| m.value(*v).name.clone())
            .collect::<Vec<_>>()
            .join("_")
    };
    let w_name = format!("{}~merged", names(g.iter().map(|p| p.w).collect(), m));
    let mut w_op = Op {
        result: ValueId(0),
        slots: w_slots,
        rank: stacked_shape.len(),
        body,
        recurrence: None,
        kind: OpKind::Map,
        span,
    };
    w_op.kind = crate::ir::classify(m, &w_op);
    let w = insert_op(m, first, w_name, stacked_shape.clone(), w_op);

    // The merged contraction M[.., c, ..] = sum(r) x[..] * W[..].
    let xs: Vec<ExprId> = p0
        .x_subs
        .iter()
        .map(|s| index(m, shift(*s), span))
        .collect();
    let mut ws: Vec<ExprId> = p0
        .w_subs
        .iter()
        .map(|s| index(m, shift(*s), span))
        .collect();
    let ci = index(m, at, span);
    ws.insert(at_w, ci);
    let rx = m.add_expr(Node::Read(p0.x, xs), Ty::Real, span);
    let rw = m.add_expr(Node::Read(w, ws), Ty::Real, span);
    let (a, b) = if p0.x_first { (rx, rw) } else { (rw, rx) };
    let prod = m.add_expr(Node::Binary(BinOp::Mul, a, b), Ty::Real, span);
    let sum = m.add_expr(
        Node::Reduce {
            op: RedOp::Sum,
            slots: vec![rank as Slot + 1],
            guard: None,
            body: prod,
        },
        Ty::Real,
        span,
    );
    let mut slots = op0.slots.clone();
    slots.insert(
        at as usize,
        IndexVar {
            name: "c".into(),
            extent: DimExpr::Const(k as i64),
        },
    );
    let mut shape = m.value(op0.result).shape.clone();
    shape.insert(at as usize, DimExpr::Const(k as i64));
    let mut m_op = Op {
        result: ValueId(0),
        slots,
        rank: rank + 1,
        body: sum,
        recurrence: None,
        kind: OpKind::Contract,
        span,
    };
    m_op.kind = crate::ir::classify(m, &m_op);
    let members: Vec<ValueId> = g.iter().map(|p| m.ops[p.o + 1].result).collect();
    let merged_name = format!("{}~merged", names(members.clone(), m));
    let merged = insert_op(m, first + 1, merged_name, shape, m_op);

    // Every read of a member reads its slice of M.
    for e in 0..m.exprs.len() {
        let Node::Read(v, subs) = &m.exprs[e].node else {
            continue;
        };
        let Some(c) = members.iter().position(|x| x == v) else {
            continue;
        };
        let mut subs = subs.clone();
        let cc = m.add_expr(Node::Const(c as f64), Ty::Int, m.exprs[e].span);
        subs.insert(at as usize, cc);
        m.exprs[e].node = Node::Read(merged, subs);
    }

    // The views that carry the claims, unread.
    let mut claims = Vec::new();
    for (c, v) in members.iter().enumerate() {
        let op = m.ops[crate::pattern::op_of(m, *v).expect("a member is an op")].clone();
        let mut subs: Vec<ExprId> = (0..rank as Slot).map(|s| index(m, s, span)).collect();
        let cc = m.add_expr(Node::Const(c as f64), Ty::Int, span);
        subs.insert(at as usize, cc);
        let body = m.add_expr(Node::Read(merged, subs), Ty::Real, span);
        let view = Op {
            result: ValueId(0),
            slots: op.slots[..rank].to_vec(),
            rank,
            body,
            recurrence: None,
            kind: OpKind::Map,
            span,
        };
        let name = format!("{}~view", m.value(*v).name);
        let shape = m.value(*v).shape.clone();
        let x = insert_op(m, first + 2 + c, name, shape, view);
        claims.push((x, *v));
    }
    (merged, claims)
}
