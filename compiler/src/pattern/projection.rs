//! Projections of one input: `q = sum(d) x[.., d] * wq[d, ..]`,
//! `k = sum(d) x[.., d] * wk[d, ..]`, ... with the weights side by side
//! are one contraction of `x` (the `merge-projections` pass,
//! [`crate::passes::merge`], and the e-graph's rule of that name both use
//! [`groups`]).

use super::{input_dependent, op_of};
use crate::ir::{BinOp, ExprId, Module, Node, Slot, ValueDef, ValueId};

/// Op `o` as a projection: `sum(r) x[..] * w[..]` (either order), two
/// reads subscripted by bare indices, each result index read exactly
/// once and `r` once by each; `x` depends on the input and `w` does not.
#[derive(Clone, Debug)]
pub struct Projection {
    pub o: usize,
    pub x: ValueId,
    pub w: ValueId,
    /// The op's reduction slot (its last).
    pub r: Slot,
    /// `x`'s subscripts, as slots of the op.
    pub x_subs: Vec<Slot>,
    /// `w`'s subscripts, as slots of the op.
    pub w_subs: Vec<Slot>,
    /// Whether `x` is the left factor.
    pub x_first: bool,
}

fn bare(m: &Module, subs: &[ExprId]) -> Option<Vec<Slot>> {
    subs.iter()
        .map(|s| match m.expr(*s).node {
            Node::Index(k) => Some(k),
            _ => None,
        })
        .collect()
}

/// Op `o` as a [`Projection`], if it is one.
pub fn projection(m: &Module, o: usize) -> Option<Projection> {
    let op = &m.ops[o];
    if op.recurrence.is_some() || op.slots.len() != op.rank + 1 {
        return None;
    }
    let (slots, body) = super::unguarded_sum(m, op.body)?;
    let r = op.rank as Slot;
    if slots != [r] {
        return None;
    }
    let Node::Binary(BinOp::Mul, a, b) = m.expr(body).node else {
        return None;
    };
    let (Node::Read(va, sa), Node::Read(vb, sb)) = (&m.expr(a).node, &m.expr(b).node) else {
        return None;
    };
    let (sa, sb) = (bare(m, sa)?, bare(m, sb)?);
    let dependent = |v: ValueId| match m.value(v).def {
        ValueDef::Input => true,
        ValueDef::Param(_) => false,
        ValueDef::Op(p) => input_dependent(m, p.0 as usize),
    };
    let (x_first, x, w, x_subs, w_subs) = match (dependent(*va), dependent(*vb)) {
        (true, false) => (true, *va, *vb, sa, sb),
        (false, true) => (false, *vb, *va, sb, sa),
        _ => return None,
    };
    // Every slot (the result's and `r`) is read exactly once by `x` and
    // `w` together, `r` once by each.
    let count = |subs: &[Slot], s: Slot| subs.iter().filter(|k| **k == s).count();
    let every_once =
        (0..=r).all(|s| count(&x_subs, s) + count(&w_subs, s) == 1 + usize::from(s == r));
    if !every_once || count(&x_subs, r) != 1 || count(&w_subs, r) != 1 {
        return None;
    }
    Some(Projection {
        o,
        x,
        w,
        r,
        x_subs,
        w_subs,
        x_first,
    })
}

/// Groups of two or more projections that read the same input the same
/// way into results of one shape, with weights of one shape: each group
/// is one contraction of the input with the weights side by side. The
/// module's output and unread values are never members, and a
/// weight computed by an op must come before every member.
pub fn groups(m: &Module) -> Vec<Vec<Projection>> {
    let mut out: Vec<(String, Vec<Projection>)> = Vec::new();
    let rep: Vec<usize> = (0..m.ops.len()).collect();
    let readers = super::consumers(m, &rep);
    for o in 0..m.ops.len() {
        let Some(p) = projection(m, o) else { continue };
        // Unread values (dead, or members a merge left behind) are not
        // merged again.
        let v = m.ops[o].result;
        if v == m.output || readers[v.0 as usize] == 0 {
            continue;
        }
        let op = &m.ops[o];
        let shape = |v: ValueId| {
            m.value(v)
                .shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let key = format!(
            "{}|{:?}|{:?}|{}|{}|{}",
            p.x.0,
            p.x_subs,
            p.w_subs,
            shape(p.w),
            shape(op.result),
            op.slots[p.r as usize].extent
        );
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, g)) => g.push(p),
            None => out.push((key, vec![p])),
        }
    }
    out.into_iter()
        .map(|(_, mut g)| {
            // Weights computed by ops must be ready before the merged
            // contraction, which goes where the first member was.
            loop {
                let first = g.iter().map(|p| p.o).min().unwrap_or(0);
                let n = g.len();
                g.retain(|p| op_of(m, p.w).is_none_or(|wo| wo < first));
                if g.len() == n {
                    return g;
                }
            }
        })
        .filter(|g| g.len() >= 2)
        .collect()
}
