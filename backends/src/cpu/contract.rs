//! Contractions on the host, accumulated a row at a time: for
//! `out[.., n] = sum(k) a[.., k] * w[k, .., n] (+ epilogue)`, the loops run
//! the output's last axis innermost, so the inner loop reads the weights
//! and writes the output contiguously (LLVM vectorises it), instead of the
//! generic order, where each output element walks the reduction with
//! strided reads.
//!
//! The output row accumulates on the stack: it is first set to the
//! epilogue (an additive term outside the sum, like a bias) or 0, every term
//! is added into it, and then it is written out once.

use super::{llvm, Gen, R, V};
use inkwell::values::IntValue;
use mixc_compiler::ir::Slot;

pub use mixc_compiler::pattern::contract::{matches, Contraction};

impl<'c> Gen<'c, '_> {
    /// Op `o`, a matched contraction, over `[lo, hi)` of `par`.
    pub(crate) fn contraction(
        &mut self,
        o: usize,
        c: &Contraction,
        par: Option<Slot>,
        lo: IntValue<'c>,
        hi: IntValue<'c>,
    ) -> R<()> {
        let op = self.enter(o, par, lo, hi)?;
        let inner = (op.rank - 1) as Slot;
        let outer: Vec<Slot> = (0..inner).collect();
        let shape = self.ir.value(op.result).shape.clone();
        let result = op.result;
        // The row lives on the stack while it accumulates: stores there
        // cannot alias the buffers, so loads of the operands stay hoisted.
        let f32t = self.cx.f32_type();
        let n = self.extents[inner as usize];
        let row = if n.is_const() {
            self.alloca_b
                .build_array_alloca(f32t, n, "row")
                .map_err(llvm)?
        } else {
            self.b.build_array_alloca(f32t, n, "row").map_err(llvm)?
        };
        let slot = self.slots[inner as usize];
        let at = |g: &mut Self| -> R<inkwell::values::PointerValue<'c>> {
            let i = g.load_i(slot, "n")?;
            // SAFETY: `i` < the inner extent, the row's length.
            unsafe { g.b.build_in_bounds_gep(f32t, row, &[i], "r") }.map_err(llvm)
        };
        let r = self.loops(&outer, &mut |g| {
            g.loops(&[inner], &mut |g| {
                let v = match c.epilogue {
                    Some(e) => g.expr(e)?,
                    None => V::F(g.f32c(0.0)),
                };
                let v = g.to_f(v)?;
                let p = at(g)?;
                g.b.build_store(p, v).map_err(llvm)?;
                Ok(())
            })?;
            g.loops(&c.reduce, &mut |g| {
                g.loops(&[inner], &mut |g| {
                    let v = g.expr(c.body)?;
                    let v = g.to_f(v)?;
                    let p = at(g)?;
                    let a = g.load_f(p, "acc")?;
                    let s = g.b.build_float_add(a, v, "acc").map_err(llvm)?;
                    g.b.build_store(p, s).map_err(llvm)?;
                    Ok(())
                })
            })?;
            g.loops(&[inner], &mut |g| {
                let p = at(g)?;
                let v = g.load_f(p, "v")?;
                g.store_value(result, &shape, V::F(v))
            })
        });
        self.range = None;
        r
    }
}
