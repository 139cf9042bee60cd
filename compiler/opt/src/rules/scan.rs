//! `scan-as-parallel-prefix`: a first-order linear recurrence
//! `h[.., t, ..] = a * h[.., t - 1, ..] + b`, where `a` and `b` do not read
//! `h`, is a composition of affine maps `h -> a h + b`, which is associative:
//! a parallel prefix scan (Blelloch) evaluates it in `O(log L)` dependent
//! steps instead of `L`, with about twice the arithmetic. Same op, other
//! order of evaluation (as with `conv-as-fft`, rounding may differ).
//! Conditions: the op is a scan whose body is `X * self + Y` or
//! `Y + X * self` (either operand order) with exactly one read of itself,
//! and `X`, `Y` free of self-reads.

use mixc_compiler::ir::{BinOp, ExprId, Module, Node};

fn reads_self(m: &Module, e: ExprId, me: mixc_compiler::ir::ValueId) -> usize {
    let own = usize::from(matches!(&m.expr(e).node, Node::Read(v, _) if *v == me));
    own + m
        .children(e)
        .into_iter()
        .map(|c| reads_self(m, c, me))
        .sum::<usize>()
}

/// Whether scan op `o` is a first-order linear recurrence.
pub fn applies(m: &Module, o: usize) -> bool {
    let op = &m.ops[o];
    if op.recurrence.is_none() {
        return false;
    }
    let me = op.result;
    if reads_self(m, op.body, me) != 1 {
        return false;
    }
    let Node::Binary(BinOp::Add, a, b) = &m.expr(op.body).node else {
        return false;
    };
    let linear_term = |e: ExprId| -> bool {
        match &m.expr(e).node {
            Node::Read(v, _) => *v == me,
            Node::Binary(BinOp::Mul, x, y) => {
                let sx = matches!(&m.expr(*x).node, Node::Read(v, _) if *v == me);
                let sy = matches!(&m.expr(*y).node, Node::Read(v, _) if *v == me);
                (sx && reads_self(m, *y, me) == 0) || (sy && reads_self(m, *x, me) == 0)
            }
            _ => false,
        }
    };
    (linear_term(*a) && reads_self(m, *b, me) == 0)
        || (linear_term(*b) && reads_self(m, *a, me) == 0)
}
