//! `inline-elementwise`: a cheap elementwise op `g` (a gate such as Hyena's
//! `v * x1`, a bias, a feature map) is recomputed inside each consumer
//! instead of being written to device memory and read back. For a consumer
//! `c` that reads `g[s0, s1, ..]`, the rewrite builds `c'`: `c`'s body with
//! every read of `g` replaced by `g`'s body, `g`'s indices replaced by the
//! subscripts. `c'` is appended to the module as verified IR and claimed
//! equal to `c`; the tests check the claim by interpretation. The cost
//! model decides whether recomputing beats materialising.
//!
//! Conditions: `g` is a map with no reduction or normaliser and a
//! real-typed body (an integer-valued one, `floor(..)`, is stored as a real
//! but would not type as one in place of the read), is not a scan,
//! is not the output, has at most 8 arithmetic nodes, and does not read a
//! producer of its own at its own indices as that producer's only
//! consumer (a chain the e-graph keeps whole); `c` is not a scan
//! and is an op of the original program (rewrites are not stacked).

use crate::lang::operands;
use mixc_compiler::ir::{
    classify, same_slot, ExprId, Module, Node, OpId, Ty, Value, ValueDef, ValueId,
};

/// Consumer op `original` is equal to op `inlined`, which recomputes `producer`.
#[derive(Clone, Debug, PartialEq)]
pub struct InlineRewrite {
    pub original: usize,
    pub inlined: usize,
    pub producer: usize,
}

fn arith(m: &Module, e: ExprId) -> usize {
    let own = usize::from(matches!(
        m.expr(e).node,
        Node::Unary(..) | Node::Binary(..) | Node::Call(..) | Node::Guard(..)
    ));
    own + m
        .children(e)
        .into_iter()
        .map(|c| arith(m, c))
        .sum::<usize>()
}

fn has_binder(m: &Module, e: ExprId) -> bool {
    matches!(m.expr(e).node, Node::Reduce { .. } | Node::Normalize { .. })
        || m.children(e).into_iter().any(|c| has_binder(m, c))
}

/// Appends an inlined copy of every consumer of every cheap elementwise op
/// that is not already an epilogue candidate (`uses` counts consumers before
/// inlining; an op that can run in its producer's epilogue is better fused
/// there, and inlining it would give its producer a second reader).
pub fn extend(m: &mut Module, uses: &[usize]) -> Vec<InlineRewrite> {
    let n_ops = m.ops.len();
    let mut out = Vec::new();
    for g in 0..n_ops {
        let op_g = m.ops[g].clone();
        if op_g.recurrence.is_some()
            || op_g.result == m.output
            || has_binder(m, op_g.body)
            || arith(m, op_g.body) > 8
            // An integer-valued body (`floor(..)`, index arithmetic) stored
            // as a real: a read of it is real, the body in its place would
            // not be.
            || m.expr(op_g.body).ty != Ty::Real
        {
            continue;
        }
        if !own_index_producers(m, g, uses).is_empty() {
            continue;
        }
        for c in 0..n_ops {
            if c == g || m.ops[c].recurrence.is_some() || !operands(m, c).contains(&op_g.result) {
                continue;
            }
            let op_c = m.ops[c].clone();
            let body = copy_inlining(m, op_c.body, op_g.result, op_g.body);
            let result = ValueId(m.values.len() as u32);
            let id = m.ops.len();
            let mut new_op = mixc_compiler::ir::Op {
                result,
                body,
                ..op_c.clone()
            };
            new_op.kind = classify(m, &new_op);
            let name = format!("{}.inl", m.value(op_c.result).name);
            let shape = m.value(op_c.result).shape.clone();
            m.values.push(Value {
                name,
                shape,
                def: ValueDef::Op(OpId(id as u32)),
                span: op_c.span,
            });
            m.ops.push(new_op);
            out.push(InlineRewrite {
                original: c,
                inlined: id,
                producer: g,
            });
        }
    }
    out
}

/// A copy of `e` where each read of `g` is `g`'s body at its subscripts.
fn copy_inlining(m: &mut Module, e: ExprId, g: ValueId, g_body: ExprId) -> ExprId {
    m.copy_expr(e, &same_slot, &mut |m, x| match &m.expr(x).node {
        Node::Read(v, subs) if *v == g => {
            let subs = subs.clone();
            Some(instantiate(m, g_body, &subs))
        }
        _ => None,
    })
}

/// A copy of `g`'s body with its index `k` replaced by (a copy of) `subs[k]`.
fn instantiate(m: &mut Module, e: ExprId, subs: &[ExprId]) -> ExprId {
    m.copy_expr(e, &same_slot, &mut |m, x| match m.expr(x).node {
        Node::Index(k) => Some(m.copy_expr(subs[k as usize], &same_slot, &mut |_, _| None)),
        _ => None,
    })
}

/// The producers op `o` (a map with no reduction, not a scan) reads only at
/// its own indices, as their only consumer, none of them a scan.
fn own_index_producers(m: &Module, o: usize, uses: &[usize]) -> Vec<ValueId> {
    use super::{has_reduction, op_of, reads_at_identity};
    let op = &m.ops[o];
    if op.kind != mixc_compiler::ir::OpKind::Map
        || has_reduction(m, op.body)
        || op.recurrence.is_some()
    {
        return Vec::new();
    }
    operands(m, o)
        .into_iter()
        .filter(|x| {
            let Some(xo) = op_of(m, *x) else { return false };
            uses[x.0 as usize] == 1
                && m.ops[xo].recurrence.is_none()
                && m.value(*x).shape.len() == op.rank
                && reads_at_identity(m, op.body, *x, op.rank)
        })
        .collect()
}
