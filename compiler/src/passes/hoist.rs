//! Hoisting a reduction out of an op's body into an op of its own, so a
//! template can take it: long convolutions (`crate::passes::conv::hoist`) and
//! contractions under an elementwise function ([`hoist_sums`]: RetNet's
//! gate `silu(sum(d) x * wg) * n`, linear attention's `phi(sum(d) x *
//! wq)`), which the generic path would otherwise compute a whole sum per
//! element with strided reads, while the contraction templates (rows
//! accumulated on the host, tiles and tensor cores on GPUs) take the
//! hoisted sum. The new op is inserted before the original, its value is
//! appended to the module's values (every existing value keeps its index),
//! and the original reads it back at its own indices.

use crate::ir::split::alpha_key;
use crate::ir::{
    classify, ExprId, ExprNode, Module, Node, Op, OpId, OpKind, RedOp, Slot, Ty, Value, ValueDef,
    ValueId,
};

/// Hoists `reduce`, a reduction in op `o`'s body that reads no slot of
/// the op but the result's and its own, into a new op at index `o` (the
/// original moves to `o + 1`) computing it over the result's indices.
/// Returns the new value.
pub fn hoist_reduce(
    m: &mut Module,
    o: usize,
    reduce: ExprId,
    kind: OpKind,
    suffix: &str,
) -> ValueId {
    let op = m.ops[o].clone();
    let rank = op.rank;
    let Node::Reduce { slots: bound, .. } = m.expr(reduce).node.clone() else {
        panic!("hoist_reduce takes a reduction")
    };
    // The new op's slots: the result's, then the sum's own, renumbered.
    let at = |s: Slot| bound.iter().position(|b| *b == s);
    let body = m.copy_expr(
        reduce,
        &|s| match at(s) {
            Some(k) => (rank + k) as Slot,
            None => s,
        },
        &mut |_, _| None,
    );
    let mut slots = op.slots[..rank].to_vec();
    slots.extend(bound.iter().map(|s| op.slots[*s as usize].clone()));
    let name = format!("{}~{suffix}", m.value(op.result).name);
    let shape = m.value(op.result).shape.clone();
    let new = Op {
        result: op.result,
        slots,
        rank,
        body,
        recurrence: None,
        kind,
        span: op.span,
    };
    let v = insert_op(m, o, name, shape, new);
    read_back(m, o + 1, reduce, v);
    v
}

/// Inserts `op` at index `o` (later ops move up one) writing a new value
/// `name` of `shape`, appended after every existing value; returns it.
pub fn insert_op(
    m: &mut Module,
    o: usize,
    name: String,
    shape: Vec<crate::ir::DimExpr>,
    mut op: Op,
) -> ValueId {
    let v = ValueId(m.values.len() as u32);
    for val in &mut m.values {
        if let ValueDef::Op(id) = &mut val.def {
            if id.0 as usize >= o {
                id.0 += 1;
            }
        }
    }
    m.values.push(Value {
        name,
        shape,
        def: ValueDef::Op(OpId(o as u32)),
        span: op.span,
    });
    op.result = v;
    m.ops.insert(o, op);
    v
}

/// Replaces `reduce`, a reduction in op `o`'s body, by a read of `v` (a
/// value over the op's result indices) at the op's own indices, and drops
/// the slots it bound.
fn read_back(m: &mut Module, o: usize, reduce: ExprId, v: ValueId) {
    let op = m.ops[o].clone();
    let Node::Reduce { slots: bound, .. } = m.expr(reduce).node.clone() else {
        panic!("read_back takes a reduction")
    };
    let subs: Vec<ExprId> = (0..op.rank as Slot)
        .map(|k| m.add_expr(Node::Index(k), Ty::Int, op.span))
        .collect();
    let span = m.expr(reduce).span;
    m.exprs[reduce.0 as usize] = ExprNode {
        node: Node::Read(v, subs),
        ty: Ty::Real,
        span,
    };
    let mut gone = bound;
    gone.sort_unstable();
    let body = m.copy_expr(
        op.body,
        &|s| s - gone.iter().filter(|g| **g < s).count() as Slot,
        &mut |_, _| None,
    );
    m.ops[o].body = body;
    for g in gone.iter().rev() {
        m.ops[o].slots.remove(*g as usize);
    }
}

/// The top-level sums of `e` (not inside another reduction or normaliser).
fn top_sums(m: &Module, e: ExprId, out: &mut Vec<ExprId>) {
    match &m.expr(e).node {
        Node::Reduce { op: RedOp::Sum, .. } => out.push(e),
        Node::Reduce { .. } | Node::Normalize { .. } => {}
        _ => {
            for c in m.children(e) {
                top_sums(m, c, out);
            }
        }
    }
}

/// `m` with every contraction that sits under an elementwise function in
/// an op the host's contraction template does not take (its body is not a
/// sum, or a sum plus an epilogue) hoisted into an op of its own. A sum
/// is hoisted when, as an op, it is a contraction (an unguarded sum of a
/// product of reads) that reads no slot of the op but the result's and its
/// own, through bare-index subscripts only. The same sum reached twice (an `fn` argument used twice) is one
/// expression and is hoisted once.
pub fn hoist_sums(m: &Module) -> Module {
    let mut m = m.clone();
    let mut o = 0;
    while o < m.ops.len() {
        let op = m.ops[o].clone();
        if op.recurrence.is_some()
            || crate::pattern::contract::matches(&m, o, None).is_some()
            || matches!(
                m.expr(op.body).node,
                Node::Reduce { .. } | Node::Normalize { .. }
            )
        {
            o += 1;
            continue;
        }
        let mut sums = Vec::new();
        top_sums(&m, op.body, &mut sums);
        sums.dedup();
        let candidate = sums.into_iter().find(|r| {
            let Node::Reduce { slots, guard, .. } = &m.expr(*r).node else {
                return false;
            };
            let others: Vec<Slot> = (op.rank as Slot..op.slots.len() as Slot)
                .filter(|s| !slots.contains(s))
                .collect();
            guard.is_none()
                && !crate::pattern::mentions(&m, *r, &others)
                && plain_subscripts(&m, *r)
                && is_contraction(&m, &op, *r)
        });
        if let Some(r) = candidate {
            let key = |m: &Module, op: &Op, e: ExprId| {
                alpha_key(&crate::ir::text::expr(m, Some(op), e), op.rank)
            };
            let want = key(&m, &op, r);
            let v = hoist_reduce(&mut m, o, r, OpKind::Contract, "sum");
            // Copies of the same sum (an `fn` argument used twice) read it too.
            loop {
                let orig = m.ops[o + 1].clone();
                let mut rest = Vec::new();
                top_sums(&m, orig.body, &mut rest);
                let Some(copy) = rest.into_iter().find(|e| key(&m, &orig, *e) == want) else {
                    break;
                };
                read_back(&mut m, o + 1, copy, v);
            }
        }
        // On to the original (after a hoist): it may hold another sum.
        o += 1;
    }
    m
}

/// Whether every read in `e` is subscripted by bare indices and
/// constants. Such reads are in range wherever the indices are, so the
/// sum may be computed at every index of the result, also where the op
/// would not evaluate it (a `select` arm that guards `x[t - 1]` at `t =
/// 0`, say): a hoisted sum with shifted reads could read out of range.
fn plain_subscripts(m: &Module, e: ExprId) -> bool {
    if let Node::Read(_, subs) = &m.expr(e).node {
        if !subs
            .iter()
            .all(|s| matches!(m.expr(*s).node, Node::Index(_) | Node::Const(_)))
        {
            return false;
        }
    }
    m.children(e).into_iter().all(|c| plain_subscripts(m, c))
}

/// Whether sum `r` of `op`, as an op over the result's indices, is a
/// contraction.
fn is_contraction(m: &Module, op: &Op, r: ExprId) -> bool {
    let Node::Reduce { slots, .. } = &m.expr(r).node else {
        return false;
    };
    let probe = Op {
        result: op.result,
        slots: op.slots.clone(),
        rank: op.rank,
        body: r,
        recurrence: None,
        kind: OpKind::Map,
        span: op.span,
    };
    !slots.is_empty() && classify(m, &probe) == OpKind::Contract
}

/// `m` with each side of a matrix product that is a product of several
/// reads (a gated projection's `q * z` in `sum(d) q * z * wo`, Hyena's
/// `gate * conv` before its output projection) materialised as an op of
/// its own over the side's indices, so the host's matrix product (the
/// runtime's GEMM, which takes one read a side) computes the rest. A side
/// is hoisted only where every factor is a read subscripted by indices
/// and constants, none reads a scan's state (its readout keeps the state
/// on chip) and the op is not part of an attention chain. Constant
/// factors stay in the product (folded into the GEMM's alpha). Claim: the
/// output is unchanged (the same products, stored and reread).
pub fn hoist_gemm_sides(m: &Module, consts: &std::collections::BTreeMap<String, i64>) -> Module {
    use crate::pattern::contract::{constant_value, gemm_spec, matrix_split};
    let mut m = m.clone();
    let (ts, _) = crate::pattern::attention::plan(&m);
    let chain: std::collections::BTreeSet<ValueId> = ts
        .iter()
        .flat_map(|t| t.inlined.iter().copied().chain([t.p, t.o]))
        .map(|o| m.ops[o].result)
        .collect();
    let mut o = 0;
    while o < m.ops.len() {
        let op = m.ops[o].clone();
        if chain.contains(&op.result) || gemm_spec(&m, o, consts).is_some() {
            o += 1;
            continue;
        }
        let Some(sp) = matrix_split(&m, o, consts) else {
            o += 1;
            continue;
        };
        let plain_read = |m: &Module, f: ExprId| match &m.expr(f).node {
            Node::Read(v, _) => {
                let scan =
                    matches!(m.value(*v).def, ValueDef::Op(p) if m.op(p).recurrence.is_some());
                !scan && crate::pattern::contract::indexed_read(m, f)
            }
            _ => false,
        };
        let hoistable = |m: &Module, fs: &[ExprId]| -> Option<Vec<ExprId>> {
            let reads: Vec<ExprId> = fs
                .iter()
                .copied()
                .filter(|f| constant_value(m, *f, consts).is_none())
                .collect();
            (reads.len() > 1 && reads.iter().all(|f| plain_read(m, *f))).then_some(reads)
        };
        if sp.epilogue.is_some() {
            // `sum + epilogue` (a bias): the sum becomes an op of its own
            // (looked at again next), the epilogue is added elementwise.
            let one_read = |fs: &[ExprId]| {
                let reads: Vec<&ExprId> = fs
                    .iter()
                    .filter(|f| constant_value(&m, **f, consts).is_none())
                    .collect();
                reads.len() == 1 && plain_read(&m, *reads[0])
            };
            let takes = [&sp.a, &sp.b]
                .into_iter()
                .all(|fs| one_read(fs) || hoistable(&m, fs).is_some());
            let reduce = match &m.expr(op.body).node {
                Node::Binary(crate::ir::BinOp::Add, x, y) => [*x, *y]
                    .into_iter()
                    .find(|e| matches!(m.expr(*e).node, Node::Reduce { .. })),
                _ => None,
            };
            match reduce.filter(|_| takes) {
                Some(r) => {
                    hoist_reduce(&mut m, o, r, OpKind::Contract, "mm");
                }
                None => o += 1,
            }
            continue;
        }
        let sides: Vec<Vec<ExprId>> = [&sp.a, &sp.b]
            .into_iter()
            .filter_map(|fs| hoistable(&m, fs))
            .collect();
        if sides.is_empty() {
            o += 1;
            continue;
        }
        let Node::Reduce {
            op: red,
            slots: bound,
            guard,
            body,
        } = m.expr(op.body).node.clone()
        else {
            o += 1;
            continue;
        };
        let mut factors = Vec::new();
        crate::pattern::contract::factors_of(&m, body, &mut factors);
        let mut at = o;
        for (k, side) in sides.iter().enumerate() {
            // The side's slots, in the op's order, and its product over them.
            let slots: Vec<Slot> = (0..op.slots.len() as Slot)
                .filter(|s| side.iter().any(|f| crate::pattern::mentions(&m, *f, &[*s])))
                .collect();
            let pos = |s: Slot| slots.iter().position(|x| *x == s).unwrap_or(0) as Slot;
            let mut prod: Option<ExprId> = None;
            for f in side {
                let c = m.copy_expr(*f, &pos, &mut |_, _| None);
                prod = Some(match prod {
                    None => c,
                    Some(p) => {
                        m.add_expr(Node::Binary(crate::ir::BinOp::Mul, p, c), Ty::Real, op.span)
                    }
                });
            }
            let new = Op {
                result: op.result,
                slots: slots
                    .iter()
                    .map(|s| op.slots[*s as usize].clone())
                    .collect(),
                rank: slots.len(),
                body: prod.expect("a side has factors"),
                recurrence: None,
                kind: OpKind::Map,
                span: op.span,
            };
            let shape = slots
                .iter()
                .map(|s| op.slots[*s as usize].extent.clone())
                .collect();
            let name = format!("{}~{}", m.value(op.result).name, ["a", "b"][k]);
            let v = insert_op(&mut m, at, name, shape, new);
            at += 1;
            let subs: Vec<ExprId> = slots
                .iter()
                .map(|s| m.add_expr(Node::Index(*s), Ty::Int, op.span))
                .collect();
            let read = m.add_expr(Node::Read(v, subs), Ty::Real, op.span);
            factors.retain(|f| !side.contains(f));
            factors.push(read);
        }
        // Fresh copies: every expression keeps one parent.
        let fresh: Vec<ExprId> = factors
            .iter()
            .map(|f| m.copy_expr(*f, &|s| s, &mut |_, _| None))
            .collect();
        let mut prod = fresh[0];
        for f in &fresh[1..] {
            prod = m.add_expr(
                Node::Binary(crate::ir::BinOp::Mul, prod, *f),
                Ty::Real,
                op.span,
            );
        }
        let reduce = m.add_expr(
            Node::Reduce {
                op: red,
                slots: bound,
                guard,
                body: prod,
            },
            Ty::Real,
            op.span,
        );
        m.ops[at].body = reduce;
        let kind = classify(&m, &m.ops[at]);
        m.ops[at].kind = kind;
        o = at + 1;
    }
    m
}
