//! Causal linear attention as a scan, in the back ends.
//!
//! Written as in the papers, `num[.., i, ..] = sum(j) a[.., i, j] * v[..,
//! j, ..] where j <= i` with `a = q kᵀ` and no softmax materialises the
//! `L x L` scores: quadratic memory and work. The optimiser's
//! `linear-attention-as-scan` rule (`crate::passes::linear`) derives the
//! same values as a recurrence with a matrix state, `S[.., i, .., e] =
//! S[.., i - 1, .., e] + k[.., i, e] * v[.., i, ..]`, read once as
//! `sum(e) q[.., i, e] * S[.., i, .., e]`. That is the scan-with-readout
//! template's pattern (`crate::pattern::scan::readout`): the state stays on chip, so
//! memory is linear in `L` and no score is ever written.
//!
//! [`as_scans`] applies the rewrite where that template takes the result
//! (the state, `E` floats per column, has a constant size under the sizes
//! fixed at build time): the readout computes the original's value in its
//! place in program order, and the scores and the original op become
//! dead. [`dead_ops`] finds ops nothing the output needs reads; the back
//! ends give them no kernel and no buffer. The rewrite sums in another
//! order (prefix sums instead of row sums), so results agree with the
//! interpreter to rounding.

use crate::ir::{Module, Node, OpId, ValueDef, ValueId};
use std::collections::{BTreeMap, BTreeSet};

/// `m` with every causal linear attention whose scan form the
/// scan-with-readout template takes rewritten into that form (`m` itself
/// where there is none). Ops that became dead stay in the module; see
/// [`dead_ops`].
pub fn as_scans(m: &Module, consts: &BTreeMap<String, i64>) -> Module {
    as_scans_claiming(m, consts).0
}

/// [`as_scans`], with the equivalences it claims: per rewrite, the value
/// the readout now writes (the original's, which the rest of the module
/// reads) and the value the original op, left dead in the module, still
/// computes. Interpreting the result computes both, so each claim can be
/// checked.
pub fn as_scans_claiming(
    m: &Module,
    consts: &BTreeMap<String, i64>,
) -> (Module, Vec<(ValueId, ValueId)>) {
    let mut x = m.clone();
    let n = m.ops.len();
    let rewrites: Vec<_> = crate::passes::linear::extend(&mut x)
        .into_iter()
        .filter(|r| {
            let same_shape =
                x.value(x.ops[r.original].result).shape == x.value(x.ops[r.readout].result).shape;
            let taken = crate::pattern::scan::readout(&x, r.scan, consts)
                .map(|ss| ss.o == r.readout)
                .unwrap_or(false);
            same_shape && taken
        })
        .collect();
    if rewrites.is_empty() {
        return (m.clone(), Vec::new());
    }
    let mut claims = Vec::new();
    // The readout writes the original's value; the original, the readout's
    // (which nothing reads).
    for r in &rewrites {
        let (a, b) = (x.ops[r.original].result, x.ops[r.readout].result);
        claims.push((a, b));
        x.ops[r.original].result = b;
        x.ops[r.readout].result = a;
        x.values[a.0 as usize].def = ValueDef::Op(OpId(r.readout as u32));
        x.values[b.0 as usize].def = ValueDef::Op(OpId(r.original as u32));
    }
    // Program order: the scan and its readout where the original was.
    let mut order = Vec::new();
    for o in 0..n {
        if let Some(r) = rewrites.iter().find(|r| r.original == o) {
            order.extend([r.scan, r.readout]);
        }
        order.push(o);
    }
    let placed: BTreeSet<usize> = order.iter().copied().collect();
    order.extend((n..x.ops.len()).filter(|o| !placed.contains(o)));
    let mut at = vec![0u32; x.ops.len()];
    for (new, old) in order.iter().enumerate() {
        at[*old] = new as u32;
    }
    x.ops = order.iter().map(|o| x.ops[*o].clone()).collect();
    for v in &mut x.values {
        if let ValueDef::Op(id) = &mut v.def {
            id.0 = at[id.0 as usize];
        }
    }
    (x, claims)
}

fn reads(m: &Module, e: crate::ir::ExprId, out: &mut Vec<ValueId>) {
    if let Node::Read(v, _) = &m.expr(e).node {
        out.push(*v);
    }
    for c in m.children(e) {
        reads(m, c, out);
    }
}

/// The ops whose values the output does not depend on.
pub fn dead_ops(m: &Module) -> BTreeSet<usize> {
    let mut live = vec![false; m.ops.len()];
    let mut work = vec![m.output];
    while let Some(v) = work.pop() {
        let ValueDef::Op(o) = m.value(v).def else {
            continue;
        };
        let o = o.0 as usize;
        if std::mem::replace(&mut live[o], true) {
            continue;
        }
        reads(m, m.ops[o].body, &mut work);
    }
    (0..m.ops.len()).filter(|o| !live[*o]).collect()
}
