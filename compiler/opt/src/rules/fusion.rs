//! `fuse-epilogue`: an elementwise op `m` that reads its producer `x` only at
//! its own indices (`x[i0, i1, ..]`, the same rank), where `m` is `x`'s only
//! consumer, runs in the epilogue of `x`'s kernel: `x` is never written to
//! device memory. Gates, biases and skip terms after a convolution,
//! attention or contraction land here. Conditions: `x` is an op result that
//! is not a scan (a scan's epilogue would run once per step), `m` has no
//! reduction, and `m` is not itself a scan.

use super::{has_reduction, op_of, reads_at_identity};
use crate::lang::operands;
use mixc_compiler::ir::{Module, OpKind, ValueId};

/// The producers op `o` can be fused into as an epilogue.
pub fn producers(m: &Module, o: usize, uses: &[usize]) -> Vec<ValueId> {
    let op = &m.ops[o];
    if op.kind != OpKind::Map || has_reduction(m, op.body) || op.recurrence.is_some() {
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
