//! `merge-projections`: contractions of the same input over the same index,
//! `q = sum(d) x[.., d] * wq[d, ..]`, `k = sum(d) x[.., d] * wk[d, ..]`, ...,
//! are one contraction of `x` with the weights side by side: `x` is read
//! once, and one kernel launch computes every output. The outputs are the
//! same values (each is its own slice of the merged product).
//!
//! Conditions: each op is a contraction of exactly two bare-subscripted
//! reads over one index, one of them the shared input; the members differ;
//! no member is the producer of an elementwise epilogue (that fusion would
//! claim the same kernel).

use super::{fusion, op_of, product_reads};
use mixc_compiler::ir::{Module, Node, OpKind, ValueId};

/// Groups of ops (two or more) that read the same input and can merge.
pub fn groups(m: &Module, uses: &[usize]) -> Vec<(ValueId, Vec<usize>)> {
    // Producers that an epilogue will claim are left alone.
    let mut claimed = vec![false; m.values.len()];
    for o in 0..m.ops.len() {
        for x in fusion::producers(m, o, uses) {
            claimed[x.0 as usize] = true;
        }
    }
    let mut by_input: Vec<(ValueId, String, Vec<usize>)> = Vec::new();
    for (o, op) in m.ops.iter().enumerate() {
        if op.kind != OpKind::Contract || claimed[op.result.0 as usize] {
            continue;
        }
        let Node::Reduce { slots, body, .. } = &m.expr(op.body).node else {
            continue;
        };
        let [r] = slots.as_slice() else { continue };
        let mut reads = Vec::new();
        if !product_reads(m, *body, &mut reads) || reads.len() != 2 {
            continue;
        }
        // The shared input: a read that is not of another op's weights,
        // subscripted by the reduction index last; its partner is the weight.
        for (a, w) in [(0, 1), (1, 0)] {
            let (Node::Read(x, xs), Node::Read(wv, _)) =
                (&m.expr(reads[a]).node, &m.expr(reads[w]).node)
            else {
                continue;
            };
            let last_is_r = xs
                .last()
                .map(|s| m.expr(*s).node == Node::Index(*r))
                .unwrap_or(false);
            // Weights are parameters or parameter-only values; the input is not.
            if !last_is_r
                || op_of(m, *wv).is_some()
                || !matches!(m.value(*wv).def, mixc_compiler::ir::ValueDef::Param(_))
            {
                continue;
            }
            let extent = op.slots[*r as usize].extent.to_string();
            match by_input.iter_mut().find(|(v, e, _)| v == x && *e == extent) {
                Some((_, _, g)) => {
                    if !g.contains(&o) {
                        g.push(o)
                    }
                }
                None => by_input.push((*x, extent, vec![o])),
            }
            break;
        }
    }
    by_input
        .into_iter()
        .map(|(v, _, g)| (v, g))
        .filter(|(_, g)| g.len() >= 2)
        .collect()
}
