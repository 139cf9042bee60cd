//! `fuse-attention`: scores -> (score modification) -> softmax -> weighted
//! sum, as one fused kernel. See the rulebook (README.md) for conditions.

use super::{has_reduction, op_of, operands, product_reads, reads_at_identity};
use crate::ir::{Module, Node, NormOp, OpKind, ValueId};

/// A match of the attention chain ending at op `o`.
pub struct AttentionMatch {
    pub o: usize,
    pub p: usize,
    /// The elementwise score modification between scores and softmax, if any.
    pub modifier: Option<usize>,
    pub s: usize,
    /// Values the fused kernel reads: q, k, v, then any tables.
    pub inputs: Vec<ValueId>,
}

pub fn match_attention(m: &Module, o: usize, uses: &[usize]) -> Option<AttentionMatch> {
    let op_o = &m.ops[o];
    if op_o.kind != OpKind::Contract {
        return None;
    }
    let Node::Reduce { slots, body, .. } = &m.expr(op_o.body).node else {
        return None;
    };
    let [r] = slots.as_slice() else { return None };
    let mut reads = Vec::new();
    if !product_reads(m, *body, &mut reads) || reads.len() != 2 {
        return None;
    }
    // One read is the softmax output, subscripted by `r` on its softmax axis.
    for (pi, vi) in [(0, 1), (1, 0)] {
        let Node::Read(pv, psubs) = &m.expr(reads[pi]).node else {
            continue;
        };
        let Node::Read(vv, _) = &m.expr(reads[vi]).node else {
            continue;
        };
        let Some(p) = op_of(m, *pv) else { continue };
        let op_p = &m.ops[p];
        let Node::Normalize {
            op: NormOp::Softmax,
            slot,
            body: pbody,
            ..
        } = &m.expr(op_p.body).node
        else {
            continue;
        };
        if (*slot as usize) >= psubs.len() || m.expr(psubs[*slot as usize]).node != Node::Index(*r)
        {
            continue;
        }
        if uses[pv.0 as usize] != 1 || has_reduction(m, *pbody) {
            continue;
        }
        // The softmax reads the scores (or their modification) at its own indices.
        let p_operands = operands(m, p);
        let mut found = None;
        for x in &p_operands {
            let Some(xo) = op_of(m, *x) else { continue };
            // Scores may be shared (several masked branches over the same
            // scores): the fused kernel recomputes them on chip.
            if !reads_at_identity(m, *pbody, *x, op_p.rank) {
                continue;
            }
            if is_scores(m, xo) {
                found = Some((None, xo));
                break;
            }
            let op_x = &m.ops[xo];
            if op_x.kind == OpKind::Map && op_x.rank == op_p.rank {
                for y in operands(m, xo) {
                    if let Some(yo) = op_of(m, y) {
                        if is_scores(m, yo) && reads_at_identity(m, op_x.body, y, op_x.rank) {
                            found = Some((Some(xo), yo));
                        }
                    }
                }
            }
        }
        let Some((modifier, s)) = found else { continue };
        let mut inputs: Vec<ValueId> = operands(m, s);
        inputs.push(*vv);
        let internal = [
            m.ops[s].result,
            modifier.map(|x| m.ops[x].result).unwrap_or(m.ops[s].result),
            m.ops[p].result,
        ];
        let mut extra = |vs: Vec<ValueId>| {
            for v in vs {
                if !internal.contains(&v) && !inputs.contains(&v) {
                    inputs.push(v);
                }
            }
        };
        extra(p_operands.clone());
        if let Some(x) = modifier {
            extra(operands(m, x));
        }
        return Some(AttentionMatch {
            o,
            p,
            modifier,
            s,
            inputs,
        });
    }
    None
}

/// `sum(e) a[..] * b[..] * c`: a score contraction of two reads over one index.
pub fn is_scores(m: &Module, s: usize) -> bool {
    let op = &m.ops[s];
    if op.kind != OpKind::Contract {
        return false;
    }
    let Node::Reduce { slots, body, .. } = &m.expr(op.body).node else {
        return false;
    };
    let mut reads = Vec::new();
    slots.len() == 1 && product_reads(m, *body, &mut reads) && reads.len() == 2
}
