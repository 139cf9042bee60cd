//! The scan-with-readout template: a linear recurrence whose state is read
//! by one op only, through sums over the state's own axes, is computed with
//! the state on chip; the state is never written to memory.
//!
//! The pattern covers the matrix-state recurrences of RetNet
//! (`S[b, t, h, e, f] = gamma * S[.., t - 1, ..] + k[e] v[f]`, read as
//! `o[b, t, h, f] = sum(e) q[e] * S[.., e, f]`) and the diagonal SSMs of
//! Mamba, H3 and Mega (`h[b, l, c, n]`, read as `sum(n) C[n] * h[.., n]`):
//!
//! ```text
//! for each column (the readout's result indices but time):   // in parallel
//!     state[..] = 0                       // the state axes, a constant size
//!     for t in 0..T:
//!         for n in state: state[n] = S.body(column, t, n)   // self-read -> state[n]
//!         O[column, t] = O.body(column, t)                  // reads of S -> state[..]
//! ```
//!
//! Written as is, `S` is `state size` times larger than the readout (RetNet
//! at `E = 64`: 64 floats per output) and is written once and read once. The
//! template does the same arithmetic in the same order per element, so it
//! agrees with the interpreter to rounding.
//!
//! Conditions (`matches`):
//! - `S` is a scan whose self-reads are at `(.., t - 1, ..)`, every other
//!   subscript its own index; it is not the mixer's output, and exactly
//!   one other op `O` reads it;
//! - `O` is not a scan and has no normaliser; every read of `S` in `O` is
//!   subscripted by plain `O` slots, the same for every read: `S`'s time
//!   and column axes map one to one onto `O`'s result axes, and `S`'s
//!   other axes (the *state*) onto slots `O`'s sums bind;
//! - the state's size is a constant under the sizes fixed at build time,
//!   at most [`MAX_STATE`] elements.

use super::{llvm, Gen, R};
use inkwell::values::{IntValue, PointerValue};
use mixc_compiler::ir::{Slot, ValueId};
pub use mixc_compiler::pattern::scan::{readout as matches, StateScan, MAX_STATE};

pub use mixc_compiler::pattern::scan::affine;

/// A read of the scan a host template keeps on chip.
#[derive(Clone, Debug)]
pub(crate) struct StateRef<'c> {
    pub(crate) value: ValueId,
    pub(crate) ptr: PointerValue<'c>,
    pub(crate) ss: StateScan,
}

impl<'c> Gen<'c, '_> {
    /// The state element a read of the template's scan at `subs` is.
    pub(crate) fn state_ptr(
        &self,
        st: &StateRef<'c>,
        subs: &[IntValue<'c>],
    ) -> R<PointerValue<'c>> {
        let zero = self.i64c(0);
        let mut fail = None;
        let flat = st.ss.flat(subs, zero, |acc, i, k| {
            let r = self
                .b
                .build_int_mul(i, self.i64c(k), "sk")
                .and_then(|x| self.b.build_int_add(acc, x, "sf"));
            r.unwrap_or_else(|e| {
                fail = Some(llvm(e));
                acc
            })
        });
        if let Some(e) = fail {
            return Err(e);
        }
        // SAFETY: state subscripts of a matched read are in range of the
        // state's constant extents (the checker proved them in range of the
        // scan's shape, whose state axes these are).
        unsafe {
            self.b
                .build_in_bounds_gep(self.cx.f32_type(), st.ptr, &[flat], "st")
        }
        .map_err(llvm)
    }

    /// The template on the host: the columns of `[lo, hi)` of slot `par`.
    pub(crate) fn state_scan(
        &mut self,
        ss: &StateScan,
        par: Option<Slot>,
        lo: IntValue<'c>,
        hi: IntValue<'c>,
    ) -> R<()> {
        let m = self.ir;
        let (op_s, op_o) = (m.ops[ss.s].clone(), m.ops[ss.o].clone());
        self.enter(ss.o, par, lo, hi)?;
        let o_slots = self.slots.clone();
        // The scan's frame: its own slot variables and extents.
        let s_slots: Vec<PointerValue<'c>> = (0..op_s.slots.len())
            .map(|k| self.alloca(self.cx.i64_type().into(), &format!("sf{k}")))
            .collect::<R<_>>()?;
        let s_ext: Vec<IntValue<'c>> = op_s
            .slots
            .iter()
            .map(|s| self.dim(&s.extent))
            .collect::<R<_>>()?;
        let f32t = self.cx.f32_type();
        let ptr = self
            .alloca_b
            .build_array_alloca(f32t, self.i64c(ss.size()), "state")
            .map_err(llvm)?;
        self.state = Some(StateRef {
            value: op_s.result,
            ptr,
            ss: ss.clone(),
        });
        let state_slots: Vec<Slot> = ss.state.iter().map(|(s, _)| *s).collect();
        let shape_o = m.value(op_o.result).shape.clone();
        let cols = ss.columns(m);
        let o_t = ss.o_time();
        // Runs `f` in the scan's frame, its time and column slots set
        // from the readout's.
        let in_scan = |g: &mut Self, f: &mut dyn FnMut(&mut Self) -> R<()>| -> R<()> {
            for (k, &x) in ss.s_to_o.iter().enumerate() {
                if (x as usize) < op_o.rank {
                    let v = g.load_i(o_slots[x as usize], "ov")?;
                    g.b.build_store(s_slots[k], v).map_err(llvm)?;
                }
            }
            let saved = (g.slots.clone(), g.extents.clone(), g.range.take());
            g.slots = s_slots.clone();
            g.extents = s_ext.clone();
            let r = f(g);
            (g.slots, g.extents, g.range) = saved;
            r
        };
        let state_elem = |g: &mut Self| -> R<PointerValue<'c>> {
            let subs: Vec<IntValue<'c>> = s_slots
                .iter()
                .map(|p| g.load_i(*p, "si"))
                .collect::<R<_>>()?;
            let st = g.state.clone().expect("set above");
            g.state_ptr(&st, &subs)
        };
        // The readout's sums run over the state: reassociated, they vectorise.
        self.reassoc = true;
        let r = self.loops(&cols, &mut |g| {
            in_scan(g, &mut |g| {
                g.loops(&state_slots, &mut |g| {
                    let p = state_elem(g)?;
                    g.b.build_store(p, g.f32c(0.0)).map_err(llvm)?;
                    Ok(())
                })
            })?;
            g.loops(&[o_t], &mut |g| {
                in_scan(g, &mut |g| {
                    g.loops(&state_slots, &mut |g| {
                        let v = g.expr(op_s.body)?;
                        let v = g.to_f(v)?;
                        let p = state_elem(g)?;
                        g.b.build_store(p, v).map_err(llvm)?;
                        Ok(())
                    })
                })?;
                g.store_result(op_o.result, &shape_o, op_o.body)
            })
        });
        self.state = None;
        self.reassoc = false;
        self.range = None;
        r
    }
}
