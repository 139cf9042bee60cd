//! Contractions: `out[.., n] = sum(k) body (+ epilogue)`, the shape the
//! contraction templates take (rows accumulated on the host, tiles and
//! tensor cores on GPUs) and the hoisting pass looks for.

use crate::ir::{BinOp, ExprId, Module, Node, RedOp, Slot, Ty};

/// A contraction the row-accumulating loop nest can compute.
#[derive(Clone, Debug)]
pub struct Contraction {
    pub reduce: Vec<Slot>,
    pub body: ExprId,
    pub epilogue: Option<ExprId>,
}

/// Op `o` as a contraction, if its body is `sum(k) body` or
/// `sum(k) body + epilogue` (real-valued, no guard, no nested reduction),
/// its result has an axis to run innermost, and that axis is not the one
/// threads split.
pub fn matches(m: &Module, o: usize, par: Option<Slot>) -> Option<Contraction> {
    let op = &m.ops[o];
    if op.recurrence.is_some() || op.rank == 0 || m.expr(op.body).ty != Ty::Real {
        return None;
    }
    let inner = (op.rank - 1) as Slot;
    if par == Some(inner) {
        return None;
    }
    let sum = |e: ExprId| match &m.expr(e).node {
        Node::Reduce {
            op: RedOp::Sum,
            slots,
            guard: None,
            body,
        } if m.expr(*body).ty == Ty::Real && !super::has_reduction(m, *body) => {
            Some((slots.clone(), *body))
        }
        _ => None,
    };
    if let Some((reduce, body)) = sum(op.body) {
        return Some(Contraction {
            reduce,
            body,
            epilogue: None,
        });
    }
    let Node::Binary(BinOp::Add, a, b) = &m.expr(op.body).node else {
        return None;
    };
    for (s, e) in [(*a, *b), (*b, *a)] {
        if let Some((reduce, body)) = sum(s) {
            if m.expr(e).ty == Ty::Real
                && !super::has_reduction(m, e)
                && !super::mentions(m, e, &reduce)
            {
                return Some(Contraction {
                    reduce,
                    body,
                    epilogue: Some(e),
                });
            }
        }
    }
    None
}
