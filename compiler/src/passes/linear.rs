//! `linear-attention-as-scan`: causal linear attention without softmax,
//!
//! ```text
//! N[.., i, ..] = sum(j) A[.., i, j] * V[.., j, ..] where j <= i
//! A[.., i, j]  = sum(e) Q[.., i, e] * K[.., j, e]
//! ```
//!
//! is reassociated (sums commute; the guard only constrains `j`) into a
//! recurrence with a matrix state and a readout:
//!
//! ```text
//! S[.., i, .., e] = S[.., i - 1, .., e] + K[.., i, e] * V[.., i, ..]
//! N'[.., i, ..]   = sum(e) Q[.., i, e] * S[.., i, .., e]
//! ```
//!
//! (without `V`, the same gives the normaliser `sum(j) A` of linear
//! attention). The new ops are appended to the module as real IR, verified,
//! and their equivalence with `N` is checked by interpretation in the tests;
//! the e-graph then offers the scan (sequential, state on chip) and the
//! chunked form (quadratic inside chunks, the state carried between them)
//! next to the quadratic original, and the cost model chooses.
//!
//! Conditions: the guard is exactly `j <= i` with `i` a result index of `N`;
//! `N`'s body is a product of the read of `A` and at most one other read,
//! all subscripted by bare indices; `A` contracts exactly one index `e` over
//! a product of two bare-subscripted reads, one of which (`K`) uses `j` and
//! the other (`Q`) does not; neither `K` nor `V` uses `i` (they are read at
//! step `i` in place of `j`, so a factor that also depends on the query
//! position, such as an elementwise function of the scores taken for `V`,
//! would be read at the wrong place).

use crate::ir::{
    classify, BinOp, ExprId, IndexVar, Module, Node, Op, OpId, OpKind, RedOp, Slot, Ty, Value,
    ValueDef, ValueId,
};
use crate::pattern::{attention::is_scores, op_of, product_reads};
use mixc_dsl::Span;

/// One rewrite: op `original` is equal to op `readout`, which reads the scan
/// `scan`; `q`, `k`, `v` are the values the fused kernel reads.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearRewrite {
    pub original: usize,
    pub scan: usize,
    pub readout: usize,
    pub q: ValueId,
    pub k: ValueId,
    pub v: Option<ValueId>,
}

fn bare_slots(m: &Module, read: ExprId) -> Option<(ValueId, Vec<Slot>)> {
    let Node::Read(v, subs) = &m.expr(read).node else {
        return None;
    };
    let mut out = Vec::new();
    for s in subs {
        match m.expr(*s).node {
            Node::Index(x) => out.push(x),
            _ => return None,
        }
    }
    Some((*v, out))
}

/// Appends the scan form of every match to the module.
pub fn extend(m: &mut Module) -> Vec<LinearRewrite> {
    let mut out = Vec::new();
    let n_ops = m.ops.len();
    for n in 0..n_ops {
        if let Some(r) = rewrite_one(m, n) {
            out.push(r);
        }
    }
    out
}

fn rewrite_one(m: &mut Module, n: usize) -> Option<LinearRewrite> {
    let op_n = m.ops[n].clone();
    if op_n.recurrence.is_some() {
        return None;
    }
    let Node::Reduce {
        op: RedOp::Sum,
        slots,
        guard: Some(g),
        body,
    } = m.expr(op_n.body).node.clone()
    else {
        return None;
    };
    let [j] = slots.as_slice() else { return None };
    let j = *j;
    // Guard `j <= i` (or `i >= j`) with `i` a result index.
    let i = match &m.expr(g).node {
        Node::Binary(BinOp::Le, a, b) if m.expr(*a).node == Node::Index(j) => match m.expr(*b).node
        {
            Node::Index(i) => i,
            _ => return None,
        },
        Node::Binary(BinOp::Ge, a, b) if m.expr(*b).node == Node::Index(j) => match m.expr(*a).node
        {
            Node::Index(i) => i,
            _ => return None,
        },
        _ => return None,
    };
    if i as usize >= op_n.rank {
        return None;
    }
    let mut reads = Vec::new();
    if !product_reads(m, body, &mut reads) || reads.is_empty() || reads.len() > 2 {
        return None;
    }
    // Scalar factors other than reads are not handled.
    if count_non_read_factors(m, body) != 0 {
        return None;
    }
    let parsed: Vec<(ValueId, Vec<Slot>)> = reads
        .iter()
        .map(|r| bare_slots(m, *r))
        .collect::<Option<_>>()?;
    // Which read is the scores A?
    // (The other read, V, must not use `i`: see below.)
    let (ai, a_read) = parsed.iter().enumerate().find(|(k, (v, _))| {
        op_of(m, *v).map(|o| is_scores(m, o)).unwrap_or(false)
            && parsed
                .iter()
                .enumerate()
                .all(|(o, (_, subs))| o == *k || !subs.contains(&i))
    })?;
    let (a_val, sigma) = a_read.clone();
    let v_read = parsed
        .iter()
        .enumerate()
        .find(|(k, _)| *k != ai)
        .map(|(_, r)| r.clone());
    let a = op_of(m, a_val)?;
    let op_a = m.ops[a].clone();
    if sigma.len() != op_a.rank || !sigma.contains(&j) {
        return None;
    }
    let Node::Reduce {
        slots: a_slots,
        guard: None,
        body: a_body,
        ..
    } = m.expr(op_a.body).node.clone()
    else {
        return None;
    };
    let [e_a] = a_slots.as_slice() else {
        return None;
    };
    let e_a = *e_a;
    let mut a_reads = Vec::new();
    if !product_reads(m, a_body, &mut a_reads)
        || a_reads.len() != 2
        || count_non_read_factors(m, a_body) != 0
    {
        return None;
    }
    let qk: Vec<(ValueId, Vec<Slot>)> = a_reads
        .iter()
        .map(|r| bare_slots(m, *r))
        .collect::<Option<_>>()?;
    // Map an A slot to an N slot. e_A maps to a marker first (N's own slot
    // numbers may include it), then to the new ops' slot `e`.
    let e_new = op_n.rank as Slot;
    const E_MARK: Slot = Slot::MAX;
    let map_a = |s: Slot| -> Option<Slot> {
        if s == e_a {
            Some(E_MARK)
        } else {
            sigma.get(s as usize).copied()
        }
    };
    let fin = |s: Slot| if s == E_MARK { e_new } else { s };
    let uses_j = |subs: &[Slot]| subs.iter().any(|s| map_a(*s) == Some(j));
    let (q, k) = match (uses_j(&qk[0].1), uses_j(&qk[1].1)) {
        (false, true) => (qk[0].clone(), qk[1].clone()),
        (true, false) => (qk[1].clone(), qk[0].clone()),
        _ => return None,
    };
    if !q.1.contains(&e_a) || !k.1.contains(&e_a) {
        return None;
    }
    // K and V are read at the step `i` in place of `j`: that is only the
    // same sum when neither depends on the query position `i` itself (a
    // weight that reads `a[.., i, j]` as V, with some contraction taken
    // for the scores, is not linear attention).
    if k.1.iter().any(|s| map_a(*s) == Some(i))
        || v_read.as_ref().is_some_and(|(_, subs)| subs.contains(&i))
    {
        return None;
    }
    let q_subs: Vec<Slot> =
        q.1.iter()
            .map(|s| map_a(*s).map(fin))
            .collect::<Option<_>>()?;
    // K and V at step i instead of j.
    let step = |s: Slot| if s == j { i } else { s };
    let k_subs: Vec<Slot> =
        k.1.iter()
            .map(|s| map_a(*s).map(step).map(fin))
            .collect::<Option<_>>()?;
    let v_subs: Option<(ValueId, Vec<Slot>)> =
        v_read.map(|(v, subs)| (v, subs.iter().map(|s| step(*s)).collect()));
    // Q uses only N's result indices and e; V only N's result indices (after
    // j -> i); K both. Anything else (another reduction's index) is out.
    let ok = |subs: &[Slot], allow_e: bool| {
        subs.iter()
            .all(|s| (*s as usize) < op_n.rank || (allow_e && *s == e_new))
    };
    if !ok(&q_subs, true)
        || !ok(&k_subs, true)
        || !v_subs.as_ref().map(|v| ok(&v.1, false)).unwrap_or(true)
    {
        return None;
    }
    let sp = op_n.span;
    let name = m.value(op_n.result).name.clone();
    let e_extent = op_a.slots[e_a as usize].extent.clone();
    let e_name = op_a.slots[e_a as usize].name.clone();

    // The scan S over axis i, with the result indices of N plus e.
    let s_val = ValueId(m.values.len() as u32);
    let mut s_slots: Vec<IndexVar> = op_n.slots[..op_n.rank].to_vec();
    s_slots.push(IndexVar {
        name: e_name.clone(),
        extent: e_extent.clone(),
    });
    let idx = |m: &mut Module, s: Slot| m.add_expr(Node::Index(s), Ty::Int, sp);
    let read = |m: &mut Module, v: ValueId, subs: &[Slot]| {
        let s: Vec<ExprId> = subs
            .iter()
            .map(|x| m.add_expr(Node::Index(*x), Ty::Int, sp))
            .collect();
        m.add_expr(Node::Read(v, s), Ty::Real, sp)
    };
    let mut prev_subs = Vec::new();
    for s in 0..=op_n.rank as Slot {
        if s == i {
            let a = idx(m, s);
            let one = m.add_expr(Node::Const(1.0), Ty::Int, sp);
            prev_subs.push(m.add_expr(Node::Binary(BinOp::Sub, a, one), Ty::Int, sp));
        } else {
            prev_subs.push(idx(m, s));
        }
    }
    let prev = m.add_expr(Node::Read(s_val, prev_subs), Ty::Real, sp);
    let k_read = read(m, k.0, &k_subs);
    let update = match &v_subs {
        Some((v, subs)) => {
            let v_read = read(m, *v, subs);
            m.add_expr(Node::Binary(BinOp::Mul, k_read, v_read), Ty::Real, sp)
        }
        None => k_read,
    };
    let s_body = m.add_expr(Node::Binary(BinOp::Add, prev, update), Ty::Real, sp);
    let s_op_id = m.ops.len();
    let mut s_op = Op {
        result: s_val,
        slots: s_slots.clone(),
        rank: op_n.rank + 1,
        body: s_body,
        recurrence: Some(i as usize),
        kind: OpKind::Scan,
        span: sp,
    };
    s_op.kind = classify(m, &s_op);
    m.values.push(Value {
        name: format!("{name}.state"),
        shape: s_slots.iter().map(|s| s.extent.clone()).collect(),
        def: ValueDef::Op(OpId(s_op_id as u32)),
        span: sp,
    });
    m.ops.push(s_op);

    // The readout N' = sum(e) Q * S.
    let r_val = ValueId(m.values.len() as u32);
    let q_read = read(m, q.0, &q_subs);
    let all: Vec<Slot> = (0..=op_n.rank as Slot).collect();
    let s_read = read(m, s_val, &all);
    let prod = m.add_expr(Node::Binary(BinOp::Mul, q_read, s_read), Ty::Real, sp);
    let r_body = m.add_expr(
        Node::Reduce {
            op: RedOp::Sum,
            slots: vec![e_new],
            guard: None,
            body: prod,
        },
        Ty::Real,
        sp,
    );
    let mut r_slots: Vec<IndexVar> = op_n.slots[..op_n.rank].to_vec();
    r_slots.push(IndexVar {
        name: e_name,
        extent: e_extent,
    });
    let r_op_id = m.ops.len();
    let mut r_op = Op {
        result: r_val,
        slots: r_slots,
        rank: op_n.rank,
        body: r_body,
        recurrence: None,
        kind: OpKind::Map,
        span: sp,
    };
    r_op.kind = classify(m, &r_op);
    m.values.push(Value {
        name: format!("{name}.readout"),
        shape: m.value(op_n.result).shape.clone(),
        def: ValueDef::Op(OpId(r_op_id as u32)),
        span: sp,
    });
    m.ops.push(r_op);
    let _ = Span::default();
    Some(LinearRewrite {
        original: n,
        scan: s_op_id,
        readout: r_op_id,
        q: q.0,
        k: k.0,
        v: v_subs.map(|v| v.0),
    })
}

fn count_non_read_factors(m: &Module, e: ExprId) -> usize {
    match &m.expr(e).node {
        Node::Binary(BinOp::Mul, a, b) => {
            count_non_read_factors(m, *a) + count_non_read_factors(m, *b)
        }
        Node::Read(..) => 0,
        _ => 1,
    }
}
