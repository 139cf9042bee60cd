//! Pattern matchers on the mixer IR, shared by the optimiser's rules and
//! by the back ends' lowering, so that each shape (attention chain, scan
//! with readout, contraction, ...) is recognised by one function. A
//! matcher reads the IR and answers a question about it; it never changes
//! the module (rewrites that append IR live in [`crate::passes`]).

pub mod attention;
pub mod contract;
pub mod projection;
pub mod scan;
pub mod tiling;

use crate::ir::{BinOp, ExprId, Module, Node, Slot, ValueDef, ValueId};

/// The distinct values an op's body reads (not itself), in order of first read.
pub fn operands(m: &Module, op: usize) -> Vec<ValueId> {
    let mut out = Vec::new();
    let me = m.ops[op].result;
    fn walk(m: &Module, e: ExprId, me: ValueId, out: &mut Vec<ValueId>) {
        if let Node::Read(v, _) = &m.expr(e).node {
            if *v != me && !out.contains(v) {
                out.push(*v);
            }
        }
        for c in m.children(e) {
            walk(m, c, me, out);
        }
    }
    walk(m, m.ops[op].body, me, &mut out);
    out
}

/// How many distinct consumers read each value (the output counts as one).
/// `rep[o]` is the op that op `o` stands for: an op a rewrite added counts as
/// the op it is an alternative to, so alternatives do not add consumers.
pub fn consumers(m: &Module, rep: &[usize]) -> Vec<usize> {
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); m.values.len()];
    for (o, &r) in rep.iter().enumerate().take(m.ops.len()) {
        for v in operands(m, o) {
            if !readers[v.0 as usize].contains(&r) {
                readers[v.0 as usize].push(r);
            }
        }
    }
    let mut n: Vec<usize> = readers.iter().map(|r| r.len()).collect();
    n[m.output.0 as usize] += 1;
    n
}

pub fn op_of(m: &Module, v: ValueId) -> Option<usize> {
    match m.value(v).def {
        ValueDef::Op(o) => Some(o.0 as usize),
        _ => None,
    }
}

/// The reads in a product of reads and scalar factors.
pub fn product_reads(m: &Module, e: ExprId, out: &mut Vec<ExprId>) -> bool {
    match &m.expr(e).node {
        Node::Binary(BinOp::Mul, a, b) => product_reads(m, *a, out) && product_reads(m, *b, out),
        Node::Read(..) => {
            out.push(e);
            true
        }
        _ => crate::ir::is_scalar(m, e),
    }
}

/// Whether `e` reads `v` only as `v[s0, s1, ..]` with the op's own result slots.
pub fn reads_at_identity(m: &Module, e: ExprId, v: ValueId, rank: usize) -> bool {
    let ok = match &m.expr(e).node {
        Node::Read(w, subs) if *w == v => {
            subs.len() == rank
                && subs
                    .iter()
                    .enumerate()
                    .all(|(k, s)| m.expr(*s).node == Node::Index(k as u32))
        }
        _ => true,
    };
    ok && m
        .children(e)
        .into_iter()
        .all(|c| reads_at_identity(m, c, v, rank))
}

/// `e` as an unguarded `sum(slots) body`: its slots and body.
pub fn unguarded_sum(m: &Module, e: ExprId) -> Option<(&[Slot], ExprId)> {
    match &m.expr(e).node {
        Node::Reduce {
            op: crate::ir::RedOp::Sum,
            slots,
            guard: None,
            body,
        } => Some((slots.as_slice(), *body)),
        _ => None,
    }
}

pub fn has_reduction(m: &Module, e: ExprId) -> bool {
    matches!(m.expr(e).node, Node::Reduce { .. } | Node::Normalize { .. })
        || m.children(e).into_iter().any(|c| has_reduction(m, c))
}

/// The reads of value `v` in `e`.
pub fn reads_of(m: &Module, e: ExprId, v: ValueId, out: &mut Vec<ExprId>) {
    if let Node::Read(w, _) = &m.expr(e).node {
        if *w == v {
            out.push(e);
        }
    }
    for c in m.children(e) {
        reads_of(m, c, v, out);
    }
}

/// Whether expression `e` uses any of `slots`.
pub fn mentions(m: &Module, e: ExprId, slots: &[Slot]) -> bool {
    matches!(m.expr(e).node, Node::Index(s) if slots.contains(&s))
        || m.children(e).into_iter().any(|c| mentions(m, c, slots))
}

/// Whether op `o`'s value depends, transitively, on an input.
pub fn input_dependent(m: &Module, o: usize) -> bool {
    fn dep(m: &Module, v: ValueId, seen: &mut Vec<u32>) -> bool {
        match m.value(v).def {
            ValueDef::Input => true,
            ValueDef::Param(_) => false,
            ValueDef::Op(op) => {
                if seen.contains(&v.0) {
                    return false;
                }
                seen.push(v.0);
                operands(m, op.0 as usize)
                    .into_iter()
                    .any(|w| dep(m, w, seen))
            }
        }
    }
    dep(m, m.ops[o].result, &mut Vec::new())
}
