//! The tiled fused-attention template for GPUs: a block of [`TILE_M`]
//! query rows (a thread each) walks the keys in tiles, and the key-side
//! operands (K, V, a per-key bias, ...) of each tile are staged once into
//! shared memory by the whole block, then read by every row.
//!
//! What is staged, which row slot is tiled, the key tile's size and the
//! row-side operands held once per block are the schedule's decision
//! (`mixc_compiler::pattern::tiling::Staging`, carried by
//! `Schedule::Attention`, printed by `mixc explain`); this module lowers
//! it as given.
//!
//! - **Tile classes.** Each row's key range comes from the mask's linear
//!   clauses (as in the row template); the block visits only the union of
//!   its rows' ranges, so tiles that are empty for the whole block are
//!   never loaded or visited, and each row clamps a tile to its own range,
//!   so an exact mask is never evaluated per element. Where the mask has
//!   clauses that are not linear, each key tile is classified at run time
//!   on (block rows) x (tile keys) (`super::interval`): empty tiles are
//!   skipped whole, full ones run without the predicate, partial ones
//!   test it per pair.
//! - **Synchronisation.** Every thread stages and reaches both barriers of
//!   a tile (rows past the end included); the tile loop's trip count is
//!   the same for the whole block. `crate::simt` checks both properties.

use super::*;
use mixc_compiler::pattern::tiling::{self, Axis, Core, RowAxis, RowCache, Spec, Staging};

mod flash;
pub use flash::attention_mma;

/// Query rows (threads) per block.
pub const TILE_M: u32 = tiling::TILE_M as u32;

/// A staged read, at lowering time: its tile and the current tile start.
#[derive(Clone, Debug)]
pub(super) struct Staged {
    tile: Mem,
    spec: Spec,
    j0: Ex,
}

/// The tiled fused-attention kernel of template `t` with the staging the
/// schedule chose (`mixc_compiler::pattern::tiling`).
pub fn attention_tiled(
    m: &Module,
    t: &Template,
    fixed: &BTreeMap<String, i64>,
    plan: &Staging,
) -> R<Kernel> {
    let op_p = &m.ops[t.p];
    let mut g = Lower::new(m, t.o, "", &DimExpr::Const(0), fixed);
    let on = g.online(t)?;
    let rows = plan.rows.clone();
    let bm = i64::from(TILE_M);
    let tiled = plan.tiled;
    let uniform: Vec<Slot> = (0..op_p.rank as Slot)
        .filter(|s| *s != t.jp && *s != tiled)
        .collect();
    // Grid: row tiles along the tiled slot, times every uniform slot.
    let ext = |s: Slot| op_p.slots[s as usize].extent.clone();
    let row_tiles = ceil_dim(ext(tiled), bm);
    let grid = uniform
        .iter()
        .fold(row_tiles, |acc, s| DimExpr::bin(DimOp::Mul, acc, ext(*s)));
    g.k.kind = format!(
        "fused attention (online softmax; {})",
        tiling::Tiling::Staged(plan.clone()).describe()
    );
    g.k.launch = Launch {
        grid,
        block: TILE_M,
    };
    g.slots = vec![Ex::I(0); on.frames.pf_ext.len()];
    g.extents = on.frames.pf_ext.clone();
    // This block's uniform slots and row tile; the thread's row.
    let n_it = g.bind("row_tiles", ceil_div(g.extents[tiled as usize].clone(), bm));
    let blk = Ex::Special(Special::BlockId);
    let it = g.bind("row_tile", bin(Bin::RemI, blk.clone(), n_it.clone()));
    let rest = g.bind("rest", bin(Bin::DivI, blk, n_it));
    g.split(rest, &uniform);
    let tid = Ex::Special(Special::ThreadId);
    let i = g.bind(
        "row",
        bin(
            Bin::AddI,
            bin(Bin::MulI, it.clone(), Ex::I(bm)),
            tid.clone(),
        ),
    );
    let text = g.extents[tiled as usize].clone();
    let active = g.bind("active", bin(Bin::CmpI(Pred::Lt), i.clone(), text.clone()));
    // Rows past the end compute at the last row (in range) and write nothing.
    let last = bin(Bin::SubI, text.clone(), Ex::I(1));
    g.slots[tiled as usize] = g.bind("i", bin(Bin::MinI, i, last));
    let of = g.online_start(&on, t)?;
    for (mem, pitch, strides, reads) in g.fill_rows(rows, &it, &text, bm)? {
        let base = bin(Bin::MulI, tid.clone(), Ex::I(pitch));
        for e in reads {
            g.row_cached.insert(e, (mem, base.clone(), strides.clone()));
        }
    }
    g.emit(Stmt::Barrier);
    let (jlo, jhi) = g.key_range(&on, t)?;
    let has = g.bind(
        "has_keys",
        bin(
            Bin::And,
            active.clone(),
            bin(Bin::CmpI(Pred::Lt), jlo.clone(), jhi.clone()),
        ),
    );
    // The block's key range: the union of its rows' ranges.
    let lo_s = g.local("row_lo", Scalar::I64, Space::Shared, bm as u32);
    let hi_s = g.local("row_hi", Scalar::I64, Space::Shared, bm as u32);
    let lo_v = Ex::Select(bx(has.clone()), bx(jlo.clone()), bx(Ex::I(i64::MAX)));
    let hi_v = Ex::Select(bx(has.clone()), bx(jhi.clone()), bx(Ex::I(i64::MIN)));
    g.emit(Stmt::Store(lo_s, tid.clone(), lo_v));
    g.emit(Stmt::Store(hi_s, tid.clone(), hi_v));
    let w = g.key_walk(
        plan,
        &on,
        (lo_s, hi_s),
        (&it, &text),
        (t.jp, uniform.clone()),
    )?;
    g.walk_tiles(&w, plan, &mut |g, j0, jend, full| {
        g.if_else(
            has.clone(),
            |g| {
                let a = g.bind("ja", bin(Bin::MaxI, j0.clone(), jlo.clone()));
                let b = g.bind("jb", bin(Bin::MinI, jend.clone(), jhi.clone()));
                let keys = |g: &mut Lower, check: bool| {
                    g.for_range("j", a.clone(), b.clone(), |g, j| {
                        g.online_step(&on, t, &of, j, check)
                    })
                };
                match full {
                    Ex::B(f) => keys(g, !f),
                    f => g.if_else(f.clone(), |g| keys(g, false), |g| keys(g, true)),
                }
            },
            |_| Ok(()),
        )
    })?;
    g.if_else(active, |g| g.online_finish(&on, &of), |_| Ok(()))?;
    g.k.body = g.blocks.pop().expect("the kernel's block");
    Ok(g.k)
}

/// A block's walk over its key tiles (both tiled templates): the block's
/// key range, the shared tiles, and what tile classes need.
struct KeyWalk {
    blo: Ex,
    bhi: Ex,
    tiles: Ex,
    bn: i64,
    tiles_mem: Vec<Mem>,
    /// The mask, and the block's first and last row, when tiles are
    /// classified (the key ranges are not exact).
    classes: Option<(ExprId, Ex, Ex)>,
    exact: bool,
    tiled: Slot,
    jp: Slot,
    uniform: Vec<Slot>,
    p_slots: Vec<Ex>,
}

/// A block's shared copy of one row-side operand: the array, its pitch
/// (floats per row), the frame slots indexing a row with their strides,
/// and the reads it serves.
type RowsCopy = (Mem, i64, Vec<(Slot, i64)>, Vec<ExprId>);

impl Lower<'_> {
    /// The block's key walk, once every thread has stored its rows' key
    /// ranges `[lo, hi)` (or `[MAX, MIN)` for none) in `lo_s` and `hi_s`:
    /// the union, the number of key tiles, the shared tiles of `plan`, and
    /// the tile classes' inputs. Block row tile `it` of `text` rows.
    fn key_walk(
        &mut self,
        plan: &Staging,
        on: &Online,
        (lo_s, hi_s): (Mem, Mem),
        (it, text): (&Ex, &Ex),
        (jp, uniform): (Slot, Vec<Slot>),
    ) -> R<KeyWalk> {
        let (bm, bn) = (i64::from(TILE_M), plan.tile_n);
        self.emit(Stmt::Barrier);
        let blo = self.register("block_lo", Scalar::I64);
        let bhi = self.register("block_hi", Scalar::I64);
        self.set(blo, Ex::I(i64::MAX));
        self.set(bhi, Ex::I(i64::MIN));
        self.for_range("r", Ex::I(0), Ex::I(bm), |g, r| {
            g.set(
                blo,
                bin(Bin::MinI, g.get(blo), Ex::Load(lo_s, bx(r.clone()))),
            );
            g.set(bhi, bin(Bin::MaxI, g.get(bhi), Ex::Load(hi_s, bx(r))));
            Ok(())
        })?;
        let blo = self.bind("blo", self.get(blo));
        let bhi = self.bind("bhi", self.get(bhi));
        let span = bin(Bin::SubI, bhi.clone(), blo.clone());
        let tiles = self.bind(
            "key_tiles",
            Ex::Select(
                bx(bin(Bin::CmpI(Pred::Lt), blo.clone(), bhi.clone())),
                bx(ceil_div(span, bn)),
                bx(Ex::I(0)),
            ),
        );
        // One shared tile per spec.
        let mut tiles_mem = Vec::new();
        for (k, s) in plan.specs.iter().enumerate() {
            let name = format!("tile{k}_{}", self.m.value(s.value).name);
            tiles_mem.push(match (s.core, s.narrow) {
                (Some((d, _)), _) | (None, Some(d)) => self.shared_narrow(&name, s.pitch() * bn, d),
                (None, None) => {
                    self.local(name, Scalar::F32, Space::Shared, (s.pitch() * bn) as u32)
                }
            });
        }
        // Tile classes (`interval`): where the key range is not exact, each
        // key tile is classified on the box (this block's rows) x (the
        // tile's keys).
        let classes = match on.guard {
            Some(guard) if !on.bounds.exact => {
                let first = self.bind("row_first", bin(Bin::MulI, it.clone(), Ex::I(bm)));
                let end = bin(Bin::AddI, first.clone(), Ex::I(bm));
                let last = self.bind(
                    "row_last",
                    bin(Bin::SubI, bin(Bin::MinI, end, text.clone()), Ex::I(1)),
                );
                Some((guard, first, last))
            }
            _ => None,
        };
        Ok(KeyWalk {
            blo,
            bhi,
            tiles,
            bn,
            tiles_mem,
            classes,
            exact: on.bounds.exact,
            tiled: plan.tiled,
            jp,
            uniform,
            p_slots: self.slots.clone(),
        })
    }

    /// The tile loop: each key tile that is not empty for the whole block
    /// (empty ones are skipped: no loads, no barrier; every input of the
    /// class is block-uniform, so the whole block takes the same branch)
    /// is staged between two barriers, then `body(g, j0, jend, full)` runs
    /// with the staged reads served from the tiles; `full`: the mask holds
    /// on the whole tile.
    fn walk_tiles(
        &mut self,
        w: &KeyWalk,
        plan: &Staging,
        body: &mut dyn FnMut(&mut Lower, &Ex, &Ex, &Ex) -> R<()>,
    ) -> R<()> {
        let bn = w.bn;
        self.for_range("kt", Ex::I(0), w.tiles.clone(), |g, kt| {
            let j0 = g.bind(
                "j0",
                bin(Bin::AddI, w.blo.clone(), bin(Bin::MulI, kt, Ex::I(bn))),
            );
            let jend = g.bind(
                "jend",
                bin(
                    Bin::MinI,
                    bin(Bin::AddI, j0.clone(), Ex::I(bn)),
                    w.bhi.clone(),
                ),
            );
            let (full, empty) = match &w.classes {
                Some((guard, first, last)) => {
                    let mut ranges = HashMap::new();
                    ranges.insert(w.tiled, (first.clone(), last.clone()));
                    ranges.insert(w.jp, (j0.clone(), bin(Bin::SubI, jend.clone(), Ex::I(1))));
                    for u in &w.uniform {
                        let v = w.p_slots[*u as usize].clone();
                        ranges.insert(*u, (v.clone(), v));
                    }
                    g.tile_class(*guard, &ranges)?
                }
                None => (Ex::B(w.exact), Ex::B(false)),
            };
            let mut tile = |g: &mut Lower| -> R<()> {
                // The previous tile's readers are done before it is overwritten.
                g.emit(Stmt::Barrier);
                for (s, &mem) in plan.specs.iter().zip(&w.tiles_mem) {
                    g.stage(s, mem, bn, &j0, &jend, &w.p_slots)?;
                }
                if plan.specs.iter().any(|s| s.core.is_some()) {
                    // wgmma reads the operand tiles through the async proxy.
                    g.emit(Stmt::FenceAsync);
                }
                g.emit(Stmt::Barrier);
                for (e, k) in &plan.reads {
                    g.staged.insert(
                        *e,
                        Staged {
                            tile: w.tiles_mem[*k],
                            spec: plan.specs[*k].clone(),
                            j0: j0.clone(),
                        },
                    );
                }
                let r = body(g, &j0, &jend, &full);
                g.staged.clear();
                r
            };
            match empty {
                Ex::B(false) => tile(g),
                e => g.if_else(e, |_| Ok(()), tile),
            }
        })
    }

    /// Copies the row-side operands of the block's `bm` rows (row tile
    /// `it` of `text` rows) into shared memory, element `row * pitch + f`
    /// with `pitch = width + 1`, neighbouring threads reading neighbouring
    /// addresses; rows past the end load the last row.
    fn fill_rows(&mut self, rows: Vec<RowCache>, it: &Ex, text: &Ex, bm: i64) -> R<Vec<RowsCopy>> {
        let m = self.m;
        let nt = i64::from(self.k.launch.block);
        let mut out = Vec::new();
        for (k, c) in rows.into_iter().enumerate() {
            let width = c.width();
            let pitch = width + 1;
            let name = format!("rows{k}_{}", m.value(c.value).name);
            let mem = self.local(name, Scalar::F32, Space::Shared, (bm * pitch) as u32);
            let shape = m.value(c.value).shape.clone();
            let tid = Ex::Special(Special::ThreadId);
            let first = bin(Bin::MulI, it.clone(), Ex::I(bm));
            let last_row = bin(Bin::SubI, text.clone(), Ex::I(1));
            let n = bm * width;
            self.for_range("c", Ex::I(0), Ex::I((n + nt - 1) / nt), |g, cc| {
                let idx = g.bind(
                    "idx",
                    bin(Bin::AddI, bin(Bin::MulI, cc, Ex::I(nt)), tid.clone()),
                );
                let inside = bin(Bin::CmpI(Pred::Lt), idx.clone(), Ex::I(n));
                g.if_else(
                    inside,
                    |g| {
                        let r = g.bind("r", bin(Bin::DivI, idx.clone(), Ex::I(width)));
                        let mut f = g.bind("f", bin(Bin::RemI, idx.clone(), Ex::I(width)));
                        let row = g.bind(
                            "qrow",
                            bin(
                                Bin::MinI,
                                bin(Bin::AddI, first.clone(), r.clone()),
                                last_row.clone(),
                            ),
                        );
                        let at = bin(Bin::AddI, bin(Bin::MulI, r, Ex::I(pitch)), f.clone());
                        let mut subs = vec![Ex::I(0); c.axes.len()];
                        for (a, ax) in c.axes.iter().enumerate().rev() {
                            subs[a] = match ax {
                                RowAxis::Row => row.clone(),
                                RowAxis::Uniform(x) => g.slots[*x as usize].clone(),
                                RowAxis::Const(v) => Ex::I(*v),
                                RowAxis::Whole(_, n) => {
                                    let i = g.bind("w", bin(Bin::RemI, f.clone(), Ex::I(*n)));
                                    f = g.bind("f", bin(Bin::DivI, f.clone(), Ex::I(*n)));
                                    i
                                }
                            };
                        }
                        let off = g.offset(&shape, &subs)?;
                        g.emit(Stmt::Store(
                            mem,
                            at,
                            Ex::Load(Mem::Value(c.value.0), bx(off)),
                        ));
                        Ok(())
                    },
                    |_| Ok(()),
                )
            })?;
            let mut strides = Vec::new();
            let mut stride = 1;
            for ax in c.axes.iter().rev() {
                if let RowAxis::Whole(x, n) = ax {
                    strides.push((*x, stride));
                    stride *= n;
                }
            }
            out.push((mem, pitch, strides, c.reads));
        }
        Ok(out)
    }

    /// The whole block copies keys `j0..jend` of `s`'s value into `tile`:
    /// element `(j - j0) * pitch + f`, `f` over the whole axes (the last
    /// fastest), so neighbouring threads read neighbouring addresses.
    fn stage(&mut self, s: &Spec, tile: Mem, bn: i64, j0: &Ex, jend: &Ex, p_slots: &[Ex]) -> R<()> {
        let width = s.width();
        let n = bn * width;
        let bm = i64::from(self.k.launch.block);
        let shape = self.m.value(s.value).shape.clone();
        let key_axis = s
            .axes
            .iter()
            .position(|a| *a == Axis::Key)
            .expect("a key axis");
        let key_ext = self.dim(&shape[key_axis])?;
        let tid = Ex::Special(Special::ThreadId);
        if s.vector {
            return self.stage_vector(s, tile, bn, (j0, jend, &key_ext), p_slots);
        }
        self.for_range("c", Ex::I(0), Ex::I((n + bm - 1) / bm), |g, c| {
            let idx = g.bind("idx", bin(Bin::AddI, bin(Bin::MulI, c, Ex::I(bm)), tid));
            let jj = g.bind(
                "jj",
                bin(
                    Bin::AddI,
                    j0.clone(),
                    bin(Bin::DivI, idx.clone(), Ex::I(width)),
                ),
            );
            // Keys past the tile's end are stored as 0 (a tensor-core
            // product reads the whole tile, multiplied by a probability 0).
            let key_in = below(&[(&jj, jend), (&jj, &key_ext)]);
            let at = match (s.core, s.pitch()) {
                (Some((_, core)), _) => {
                    let key = bin(Bin::DivI, idx.clone(), Ex::I(width));
                    let col = bin(Bin::RemI, idx.clone(), Ex::I(width));
                    match core {
                        Core::Keys => core_index(bn, key, col),
                        Core::Columns => core_index(width, col, key),
                    }
                }
                (None, p) if p == width => idx.clone(),
                (None, p) => bin(
                    Bin::AddI,
                    bin(
                        Bin::MulI,
                        bin(Bin::DivI, idx.clone(), Ex::I(width)),
                        Ex::I(p),
                    ),
                    bin(Bin::RemI, idx.clone(), Ex::I(width)),
                ),
            };
            let at = g.bind("at", at);
            let zero = |g: &mut Lower| {
                g.emit(Stmt::Store(tile, at.clone(), Ex::F(0.0)));
                Ok(())
            };
            let load = |g: &mut Lower| {
                let mut f = g.bind("f", bin(Bin::RemI, idx.clone(), Ex::I(width)));
                let mut subs = vec![Ex::I(0); s.axes.len()];
                for (a, ax) in s.axes.iter().enumerate().rev() {
                    subs[a] = match ax {
                        Axis::Key => jj.clone(),
                        Axis::Uniform(u) => p_slots[*u as usize].clone(),
                        Axis::Const(c) => Ex::I(*c),
                        Axis::Whole(e) => {
                            let x = g.bind("w", bin(Bin::RemI, f.clone(), Ex::I(*e)));
                            f = g.bind("f", bin(Bin::DivI, f.clone(), Ex::I(*e)));
                            x
                        }
                    };
                }
                let off = g.offset(&shape, &subs)?;
                g.emit(Stmt::Store(
                    tile,
                    at.clone(),
                    Ex::Load(Mem::Value(s.value.0), bx(off)),
                ));
                Ok(())
            };
            g.if_else(
                bin(Bin::CmpI(Pred::Lt), idx.clone(), Ex::I(n)),
                |g| g.if_else(key_in, load, zero),
                |_| Ok(()),
            )
        })
    }

    /// [`Lower::stage`] by 16-byte loads (`Spec::vector`): each thread
    /// copies 8 consecutive elements of a key's row at a time (the whole
    /// axis is the value's last and contiguous), into 8 consecutive tile
    /// elements, or, in a value tile transposed for `wgmma`
    /// (`Core::Columns`), 8 elements 8 apart (its core matrices' rows);
    /// keys past the tile's end are stored as 0. Neighbouring threads take
    /// a key's neighbouring 8 elements, or, transposed, neighbouring keys
    /// (whose elements are neighbours in the tile).
    fn stage_vector(
        &mut self,
        s: &Spec,
        tile: Mem,
        bn: i64,
        (j0, jend, key_ext): (&Ex, &Ex, &Ex),
        p_slots: &[Ex],
    ) -> R<()> {
        const N: i64 = 8;
        let width = s.width();
        let per = width / N;
        let total = bn * per;
        let bm = i64::from(self.k.launch.block);
        let shape = self.m.value(s.value).shape.clone();
        let tid = Ex::Special(Special::ThreadId);
        self.for_range("c", Ex::I(0), Ex::I((total + bm - 1) / bm), |g, c| {
            let idx = g.bind("idx", bin(Bin::AddI, bin(Bin::MulI, c, Ex::I(bm)), tid));
            let columns = matches!(s.core, Some((_, Core::Columns)));
            let (key, part) = if columns {
                (
                    bin(Bin::RemI, idx.clone(), Ex::I(bn)),
                    bin(Bin::DivI, idx.clone(), Ex::I(bn)),
                )
            } else {
                (
                    bin(Bin::DivI, idx.clone(), Ex::I(per)),
                    bin(Bin::RemI, idx.clone(), Ex::I(per)),
                )
            };
            let key = g.bind("key", key);
            let f0 = g.bind("f0", bin(Bin::MulI, part, Ex::I(N)));
            let jj = g.bind("jj", bin(Bin::AddI, j0.clone(), key.clone()));
            let key_in = below(&[(&jj, jend), (&jj, key_ext)]);
            // Element e of the 8 lands at `at + e stride`.
            let (at, stride) = match s.core {
                Some((_, Core::Keys)) => (core_index(bn, key, f0.clone()), 1),
                Some((_, Core::Columns)) => (core_index(width, f0.clone(), key), 8),
                None => (
                    bin(Bin::AddI, bin(Bin::MulI, key, Ex::I(s.pitch())), f0.clone()),
                    1,
                ),
            };
            let at = g.bind("at", at);
            let copy = |g: &mut Lower| {
                let subs: Vec<Ex> = s
                    .axes
                    .iter()
                    .map(|ax| match ax {
                        Axis::Key => jj.clone(),
                        Axis::Uniform(u) => p_slots[*u as usize].clone(),
                        Axis::Const(c) => Ex::I(*c),
                        Axis::Whole(_) => f0.clone(),
                    })
                    .collect();
                let off = g.offset(&shape, &subs)?;
                g.emit(Stmt::Copy {
                    dst: tile,
                    dst_at: at.clone(),
                    src: Mem::Value(s.value.0),
                    src_at: off,
                    n: N as u32,
                    stride,
                    when: key_in,
                });
                Ok(())
            };
            g.if_else(
                bin(Bin::CmpI(Pred::Lt), idx.clone(), Ex::I(total)),
                copy,
                |_| Ok(()),
            )
        })
    }

    /// A staged read: its element of the current tile.
    pub(super) fn staged_read(&mut self, st: &Staged, subs: &[ExprId]) -> R<Ex> {
        if st.spec.core.is_some() {
            return Err(err(
                "a read of a wgmma operand tile (its layout is for descriptors only)",
            ));
        }
        let mut flat = Ex::I(0);
        let mut j = Ex::I(0);
        for (ax, s) in st.spec.axes.iter().zip(subs) {
            match ax {
                Axis::Key => {
                    let x = self.expr(*s)?;
                    j = self.to(x, Scalar::I64);
                }
                Axis::Whole(e) => {
                    let x = self.expr(*s)?;
                    let x = self.to(x, Scalar::I64);
                    flat = match flat {
                        Ex::I(0) => x,
                        f => bin(Bin::AddI, bin(Bin::MulI, f, Ex::I(*e)), x),
                    };
                }
                Axis::Uniform(_) | Axis::Const(_) => {}
            }
        }
        let row = bin(Bin::SubI, j, st.j0.clone());
        let idx = bin(Bin::AddI, bin(Bin::MulI, row, Ex::I(st.spec.pitch())), flat);
        Ok(Ex::Load(st.tile, bx(idx)))
    }
}
