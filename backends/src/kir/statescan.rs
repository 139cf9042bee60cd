//! The scan-with-readout template in kernel IR (see `crate::statescan`),
//! in two forms:
//!
//! - [`state_scan`], sequential: one thread per column of the readout
//!   walks time with the scan's state in a register array (the host form,
//!   and GPUs for recurrences that are not affine);
//! - [`state_scan_chunked`], for GPUs when every step is an affine map of
//!   the state (`h = x * h + y`): a block takes [`CHUNK_COLS`] neighbouring
//!   columns (a warp, so reads along the innermost column axis coalesce)
//!   times [`CHUNKS`] chunks of time, a thread each. Each thread composes
//!   its chunk's steps into one affine map per state element; the block
//!   exchanges these through shared memory so each thread gets the state
//!   entering its chunk; then each thread replays its chunk from that
//!   state and writes the readout. Time runs in parallel at about twice
//!   the scan's arithmetic, all on chip.
//!
//! State loops of constant extent up to `UNROLL` are unrolled, so every
//! state index is a constant and the arrays are promoted to registers.

use super::{
    bin, bx, ceil_dim, ceil_div, Bin, Ex, Kernel, Launch, Lower, Mem, Pred, Scalar, Space, Special,
    Stmt, R,
};
use mixc_compiler::ir::{DimExpr, ExprId, Module, Slot};
use mixc_compiler::pattern::scan::StateScan;
use std::collections::{BTreeMap, BTreeSet};

/// Columns a block of the chunked form takes (one warp's worth).
pub const CHUNK_COLS: i64 = 32;
/// Chunks of time a block of the chunked form splits each column into.
pub const CHUNKS: i64 = mixc_compiler::schedule::GPU_SCAN_CHUNKS;

/// What both forms share: the frames of the scan and of its readout.
struct Frames<'a> {
    ss: &'a StateScan,
    m: &'a Module,
    s_ext: Vec<Ex>,
    o_ext: Vec<Ex>,
    /// The scan's state slots, and the readout's sums over them.
    s_state: Vec<Slot>,
    o_unrolled: BTreeSet<Slot>,
    /// Loops over the state unrolled (every index a constant: registers),
    /// or loops (on the host, vectorised over a large state).
    unroll: bool,
}

impl<'a> Frames<'a> {
    fn new(g: &mut Lower, m: &'a Module, ss: &'a StateScan) -> R<Frames<'a>> {
        let (op_s, op_o) = (&m.ops[ss.s], &m.ops[ss.o]);
        let o_dims: Vec<DimExpr> = op_o.slots.iter().map(|s| s.extent.clone()).collect();
        let s_dims: Vec<DimExpr> = op_s.slots.iter().map(|s| s.extent.clone()).collect();
        let o_ext = g.extents_of(&o_dims)?;
        let s_ext = g.extents_of(&s_dims)?;
        g.slots = vec![Ex::I(0); op_o.slots.len()];
        g.extents = o_ext.clone();
        Ok(Frames {
            ss,
            m,
            s_ext,
            o_ext,
            s_state: ss.state.iter().map(|(s, _)| *s).collect(),
            o_unrolled: ss
                .s_to_o
                .iter()
                .filter(|x| (**x as usize) >= op_o.rank)
                .copied()
                .collect(),
            unroll: true,
        })
    }

    /// Runs `f` in the scan's frame at the readout's current slots, once
    /// per state element (unrolled), with the element's flat index.
    fn over_state(&self, g: &mut Lower, f: &mut dyn FnMut(&mut Lower, Ex) -> R<()>) -> R<()> {
        let rank_o = self.m.ops[self.ss.o].rank;
        let mut frame = vec![Ex::I(0); self.m.ops[self.ss.s].slots.len()];
        for (k, &x) in self.ss.s_to_o.iter().enumerate() {
            if (x as usize) < rank_o {
                frame[k] = g.slots[x as usize].clone();
            }
        }
        let saved = (
            std::mem::replace(&mut g.slots, frame),
            std::mem::replace(&mut g.extents, self.s_ext.clone()),
            std::mem::replace(
                &mut g.unrolled,
                if self.unroll {
                    self.s_state.iter().copied().collect()
                } else {
                    BTreeSet::new()
                },
            ),
        );
        let ss = self.ss;
        let r = g.loops(&self.s_state, &mut |g| {
            let at = ss.flat(&g.slots, Ex::I(0), |acc, i, k| match (acc, i) {
                (Ex::I(a), Ex::I(i)) => Ex::I(a + i * k),
                (acc, i) => bin(Bin::AddI, acc, bin(Bin::MulI, i, Ex::I(k))),
            });
            f(g, at)
        });
        (g.slots, g.extents, g.unrolled) = saved;
        r
    }

    /// One step at time `t` from `state`: the state updated, then the
    /// readout written (where `write`).
    fn step(&self, g: &mut Lower, state: Mem, t: Ex, write: Option<Ex>) -> R<()> {
        let (op_s, op_o) = (&self.m.ops[self.ss.s], &self.m.ops[self.ss.o]);
        g.slots[self.ss.o_time() as usize] = t;
        self.over_state(g, &mut |g, at| {
            let v = g.expr(op_s.body)?;
            let v = g.to(v, Scalar::F32);
            let at = match &g.state_lane {
                Some((w, n)) => bin(Bin::AddI, bin(Bin::MulI, at, Ex::I(*n)), w.clone()),
                None => at,
            };
            g.emit(Stmt::Store(state, at, v));
            Ok(())
        })?;
        if self.unroll {
            g.unrolled = self.o_unrolled.clone();
        }
        let v = g.expr(op_o.body)?;
        g.unrolled.clear();
        let shape = self.m.value(op_o.result).shape.clone();
        match write {
            None => g.store_result(op_o.result, &shape, v),
            Some(c) => g.if_else(c, |g| g.store_result(op_o.result, &shape, v), |_| Ok(())),
        }
    }
}

fn state_size(ss: &StateScan) -> R<u32> {
    u32::try_from(ss.size()).map_err(|_| super::err("state too large"))
}

/// The sequential kernel of template `ss`: its result is the readout's
/// value; the scan's value is never written.
pub fn state_scan(m: &Module, ss: &StateScan, fixed: &BTreeMap<String, i64>) -> R<Kernel> {
    let threads = ss.threads(m);
    let mut g = Lower::new(m, ss.o, &ss.kind(), &threads, fixed);
    let fr = Frames::new(&mut g, m, ss)?;
    let state = g.local("state", Scalar::F32, Space::Register, state_size(ss)?);
    g.state = Some((m.ops[ss.s].result.0, state, ss.clone()));
    let gid = g.global_id();
    let total = g.dim(&threads)?;
    g.if_else(
        bin(Bin::CmpI(Pred::Lt), gid.clone(), total),
        |g| {
            g.split(gid, &ss.columns(m));
            fr.over_state(g, &mut |g, at| {
                g.emit(Stmt::Store(state, at, Ex::F(0.0)));
                Ok(())
            })?;
            let hi = fr.o_ext[ss.o_time() as usize].clone();
            g.for_range("t", Ex::I(0), hi, |g, t| fr.step(g, state, t, None))
        },
        |_| Ok(()),
    )?;
    g.k.body = g.blocks.pop().expect("the kernel's block");
    Ok(g.k)
}

/// The host's kernel of template `ss` (`ScanForm::Lanes`): a thread takes
/// `lanes` neighbouring columns of the innermost column axis (whose
/// extent `lanes` divides, as the schedule checked; with one lane, the
/// state's loops are loops, vectorised along the state) and walks time
/// once for all of them; at each step a loop over the columns (innermost,
/// reading one contiguous run, which LLVM vectorises) updates each
/// column's state, held interleaved (element `k` of lane `w` at `k *
/// lanes + w`), and writes its readout. `form` is the schedule's
/// description.
pub fn state_scan_lanes(
    m: &Module,
    ss: &StateScan,
    fixed: &BTreeMap<String, i64>,
    lanes: i64,
    form: &str,
) -> R<Kernel> {
    use mixc_dsl::typed::DimOp;
    let cols = ss.columns(m);
    let Some(&inner) = cols.last() else {
        return state_scan(m, ss, fixed);
    };
    let threads = ss.threads(m);
    let groups = DimExpr::bin(DimOp::FloorDiv, threads.clone(), DimExpr::Const(lanes));
    let kind = format!("{}; {form}", ss.kind());
    let mut g = Lower::new(m, ss.o, &kind, &groups, fixed);
    // A host form: a block is one thread, so the runtime's split of the
    // grid over the machine's threads is as fine as the work.
    g.k.launch = Launch {
        grid: groups.clone(),
        block: 1,
    };
    let mut fr = Frames::new(&mut g, m, ss)?;
    // One column a thread: the state's loops stay loops, which LLVM
    // vectorises along the state.
    fr.unroll = lanes > 1;
    let n = state_size(ss)?;
    let len = n
        .checked_mul(lanes as u32)
        .ok_or_else(|| super::err("state too large"))?;
    let state = g.local("state", Scalar::F32, Space::Register, len);
    g.state = Some((m.ops[ss.s].result.0, state, ss.clone()));
    let gid = g.global_id();
    let total = g.dim(&groups)?;
    g.if_else(
        bin(Bin::CmpI(Pred::Lt), gid.clone(), total),
        |g| {
            // The group's first column; the others follow on the innermost
            // axis (its extent is a multiple of `lanes`).
            let first = g.bind("col0", bin(Bin::MulI, gid, Ex::I(lanes)));
            g.split(first, &cols);
            let base = g.slots[inner as usize].clone();
            g.for_range("z", Ex::I(0), Ex::I(len as i64), |g, z| {
                g.emit(Stmt::Store(state, z, Ex::F(0.0)));
                Ok(())
            })?;
            let hi = fr.o_ext[ss.o_time() as usize].clone();
            g.for_range("t", Ex::I(0), hi, |g, t| {
                g.for_range("w", Ex::I(0), Ex::I(lanes), |g, w| {
                    g.slots[inner as usize] = bin(Bin::AddI, base.clone(), w.clone());
                    g.state_lane = Some((w, lanes));
                    let r = fr.step(g, state, t.clone(), None);
                    g.state_lane = None;
                    r
                })
            })
        },
        |_| Ok(()),
    )?;
    g.k.body = g.blocks.pop().expect("the kernel's block");
    Ok(g.k)
}

/// The chunked kernel of template `ss` (see the module doc), or None when
/// the scan is not `mixc_compiler::pattern::scan::chunkable` (the schedule
/// asks for this form only where it is).
pub fn state_scan_chunked(
    m: &Module,
    ss: &StateScan,
    fixed: &BTreeMap<String, i64>,
) -> R<Option<Kernel>> {
    if !mixc_compiler::pattern::scan::chunkable(m, ss) {
        return Ok(None);
    }
    let Some((xa, yb)) = mixc_compiler::pattern::scan::affine(m, ss.s) else {
        return Ok(None);
    };
    let scalar_mul = mixc_compiler::pattern::scan::one_multiplier(m, ss, xa);
    let threads = ss.threads(m);
    let kind = format!(
        "scan + readout, chunked ({} state elements per column on chip; {CHUNK_COLS} columns x {CHUNKS} chunks of time a block)",
        ss.size()
    );
    let mut g = Lower::new(m, ss.o, &kind, &threads, fixed);
    g.k.launch = Launch {
        grid: ceil_dim(threads.clone(), CHUNK_COLS),
        block: (CHUNK_COLS * CHUNKS) as u32,
    };
    let fr = Frames::new(&mut g, m, ss)?;
    let n = state_size(ss)?;
    // The chunk's composed map `h -> mul * h + add`; `add` becomes the state.
    let mul = g.local(
        "chunk_mul",
        Scalar::F32,
        Space::Register,
        if scalar_mul { 1 } else { n },
    );
    // Where element `at`'s multiplier lives, and whether this element
    // updates it (with one register, the first element does).
    let mul_at = move |at: &Ex| if scalar_mul { Ex::I(0) } else { at.clone() };
    let updates_mul = move |at: &Ex| !scalar_mul || *at == Ex::I(0);
    let state = g.local("state", Scalar::F32, Space::Register, n);
    let cells = (CHUNK_COLS * CHUNKS) as u32;
    let mul_sh = g.local("mul_shared", Scalar::F32, Space::Shared, cells);
    let add_sh = g.local("add_shared", Scalar::F32, Space::Shared, cells);
    g.state = Some((m.ops[ss.s].result.0, state, ss.clone()));
    let tid = Ex::Special(Special::ThreadId);
    let lane = g.bind("lane", bin(Bin::RemI, tid.clone(), Ex::I(CHUNK_COLS)));
    let chunk = g.bind("chunk", bin(Bin::DivI, tid.clone(), Ex::I(CHUNK_COLS)));
    let col = g.bind(
        "column",
        bin(
            Bin::AddI,
            bin(Bin::MulI, Ex::Special(Special::BlockId), Ex::I(CHUNK_COLS)),
            lane.clone(),
        ),
    );
    let total = g.dim(&threads)?;
    let total = g.bind("columns", total);
    let active = g.bind(
        "active",
        bin(Bin::CmpI(Pred::Lt), col.clone(), total.clone()),
    );
    // Columns past the end compute at the last column and write nothing,
    // so every thread reaches every barrier.
    let clamped = g.bind("col", bin(Bin::MinI, col, bin(Bin::SubI, total, Ex::I(1))));
    g.split(clamped, &ss.columns(m));
    let len = fr.o_ext[ss.o_time() as usize].clone();
    let clen = g.bind("chunk_len", ceil_div(len.clone(), CHUNKS));
    let t0 = g.bind(
        "t0",
        bin(
            Bin::MinI,
            bin(Bin::MulI, chunk.clone(), clen.clone()),
            len.clone(),
        ),
    );
    let t1 = g.bind("t1", bin(Bin::MinI, bin(Bin::AddI, t0.clone(), clen), len));
    let o_t = ss.o_time() as usize;
    // 1. Compose the chunk's steps.
    fr.over_state(&mut g, &mut |g, at| {
        g.emit(Stmt::Store(mul, mul_at(&at), Ex::F(1.0)));
        g.emit(Stmt::Store(state, at, Ex::F(0.0)));
        Ok(())
    })?;
    g.for_range("t", t0.clone(), t1.clone(), |g, t| {
        g.slots[o_t] = t;
        fr.over_state(g, &mut |g, at| {
            let x = match xa {
                Some(x) => eval_f(g, x)?,
                None => Ex::F(1.0),
            };
            let x = g.bind("x", x);
            let y = eval_f(g, yb)?;
            let a0 = Ex::Load(state, bx(at.clone()));
            if updates_mul(&at) {
                let m0 = Ex::Load(mul, bx(mul_at(&at)));
                g.emit(Stmt::Store(mul, mul_at(&at), bin(Bin::MulF, m0, x.clone())));
            }
            g.emit(Stmt::Store(
                state,
                at,
                bin(Bin::AddF, bin(Bin::MulF, x, a0), y),
            ));
            Ok(())
        })
    })?;
    // 2. The state entering each chunk: the earlier chunks' maps, composed
    //    in order from 0, one state element at a time through shared memory.
    let cell = |c: Ex| {
        bin(
            Bin::AddI,
            bin(Bin::MulI, c, Ex::I(CHUNK_COLS)),
            lane.clone(),
        )
    };
    let carry = g.register("carry", Scalar::F32);
    fr.over_state(&mut g, &mut |g, at| {
        g.emit(Stmt::Store(
            mul_sh,
            tid.clone(),
            Ex::Load(mul, bx(mul_at(&at))),
        ));
        g.emit(Stmt::Store(
            add_sh,
            tid.clone(),
            Ex::Load(state, bx(at.clone())),
        ));
        g.emit(Stmt::Barrier);
        g.set(carry, Ex::F(0.0));
        g.for_range("c", Ex::I(0), chunk.clone(), |g, c| {
            let k = g.bind("cell", cell(c));
            let v = bin(
                Bin::AddF,
                bin(Bin::MulF, Ex::Load(mul_sh, bx(k.clone())), g.get(carry)),
                Ex::Load(add_sh, bx(k)),
            );
            g.set(carry, v);
            Ok(())
        })?;
        g.emit(Stmt::Barrier);
        g.emit(Stmt::Store(state, at, g.get(carry)));
        Ok(())
    })?;
    // 3. Replay the chunk from its entering state, writing the readout.
    g.for_range("t", t0, t1, |g, t| {
        fr.step(g, state, t, Some(active.clone()))
    })?;
    g.k.body = g.blocks.pop().expect("the kernel's block");
    Ok(Some(g.k))
}

fn eval_f(g: &mut Lower, e: ExprId) -> R<Ex> {
    let v = g.expr(e)?;
    Ok(g.to(v, Scalar::F32))
}
