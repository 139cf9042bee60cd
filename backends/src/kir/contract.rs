//! Tiled contractions for GPUs: `out = sum(k) A * B (+ epilogue)` as a
//! blocked matrix product through shared memory, the classic SGEMM shape.
//!
//! - **Which ops.** Those `crate::contract::matches` takes (a real sum
//!   with no guard or nested reduction, plus an optional additive
//!   epilogue). The sum's body is split into its factors: those that read
//!   the output's last axis are the *B side* (weights `w[k, .., n]`), the
//!   others the *A side* (activations `x[.., m, k]`). Output axes only the
//!   A side reads are the rows (M), those only the B side reads the
//!   columns (N); the rest (read by both, or neither: batch, head) are the
//!   same for a whole block. An op with a factor that reads both a row
//!   and a column axis is not a matrix product and keeps its generic
//!   kernel, as does one whose M or N is a constant below 16.
//! - **Tiles.** A block of 256 threads computes 64 x 64 outputs, each
//!   thread 4 x 4 of them (rows `ty + 16 r`, columns `tx + 16 c`, so a
//!   warp's shared reads are broadcasts or consecutive) in registers. The
//!   reduction runs in tiles of 16: the block stages the A side's products
//!   as a 64 x 16 tile and the B side's as 16 x 64, neighbouring threads
//!   loading neighbouring addresses, between two barriers; elements past
//!   an edge are staged as 0 (and never read from memory).
//! - **Tensor cores.** When the result is stored in 16 bits (bf16, f16),
//!   a block computes 128 x 128 outputs and each of its 8 warps 64 x 32
//!   of them with `mma.sync` m16n8k16 (`Stmt::Mma`): a k16 step loads
//!   the warp's 4 A fragments and 4 B fragments once for 16 products;
//!   the staged tiles are read in PTX's fragment layout and rounded to the
//!   storage type, and accumulation is f32.
//! - **Warpgroup tensor cores (sm_90).** There the block is 2 warpgroups
//!   (256 threads) computing 128 x 128 outputs (128 x 64 when N is a
//!   constant up to 64), each warpgroup 64 rows with `wgmma` m64nNk16
//!   (`Stmt::Wgmma`) and its f32 accumulators in registers. The A and B
//!   sides are staged in 16-bit shared tiles in the canonical K-major,
//!   unswizzled layout of 8 x 8 core matrices ([`core_index`]: leading
//!   byte offset 128, stride byte offset 256), in reduction tiles of 32
//!   (or the k16 steps a shorter constant K needs), double-buffered: each
//!   thread fences its stores for the async proxy (`Stmt::FenceAsync`),
//!   one `wgmma` group runs a tile's k16 steps through matrix descriptors
//!   ([`descriptor`]) asynchronously while the next tile is loaded into
//!   the other buffer, then a wait and a barrier.
//! - **Epilogue.** Each output adds the epilogue at its own indices and is
//!   stored once.

use super::*;

/// Output rows and columns of a block, and the reduction tile.
const BM: i64 = 64;
const BN: i64 = 64;
const BK: i64 = 16;
/// Threads per block (16 x 16), each computing `TM x TN` outputs.
const THREADS: u32 = 256;
const TX: i64 = 16;
const TM: i64 = 4;
const TN: i64 = 4;
/// With tensor cores: the warps down and across the block, each warp's
/// 16-row tiles and 8-column slices (a warp 64 x 32 outputs).
const WARPS_M: i64 = 2;
const WARPS_N: i64 = 4;
const M_TILES: i64 = 4;
const WARP_SLICES: i64 = 4;

/// A lane's coordinates in the tensor-core layout, in the block's tile:
/// its first A row (`g`), its B column (`g`), and its first k (`2 t`).
struct Warp {
    row: Ex,
    col: Ex,
    k: Ex,
}

use mixc_compiler::pattern::contract::MatrixSplit as Split;
use mixc_compiler::pattern::tiling::MatrixTiling;

/// The product of `slots`' extents, as a size expression.
fn extent(op: &ir::Op, slots: &[Slot]) -> DimExpr {
    slots.iter().fold(DimExpr::Const(1), |acc, s| {
        DimExpr::bin(DimOp::Mul, acc, op.slots[*s as usize].extent.clone())
    })
}

/// A block's place in the output: the matrix extents (M, N, K) and the
/// block's first row and column.
struct Tiles {
    mx: Ex,
    nx: Ex,
    kx: Ex,
    m0: Ex,
    n0: Ex,
    tid: Ex,
}

/// Launches `threads` a block, a block per `bm x bn` output tile (and per
/// uniform index), and binds the block's coordinates.
fn tiles(g: &mut Lower, sp: &Split, bm: i64, bn: i64, threads: u32) -> R<Tiles> {
    let op = &g.m.ops[g.k.op];
    let (mx, nx, kx) = (
        extent(op, &sp.rows),
        extent(op, &sp.cols),
        extent(op, &sp.reduce),
    );
    g.k.launch = Launch {
        grid: DimExpr::bin(
            DimOp::Mul,
            DimExpr::bin(
                DimOp::Mul,
                ceil_dim(mx.clone(), bm),
                ceil_dim(nx.clone(), bn),
            ),
            extent(op, &sp.uniform),
        ),
        block: threads,
    };
    let ext: Vec<DimExpr> = op.slots.iter().map(|s| s.extent.clone()).collect();
    g.extents = g.extents_of(&ext)?;
    g.slots = vec![Ex::I(0); op.slots.len()];
    let (mx, nx, kx) = (g.dim(&mx)?, g.dim(&nx)?, g.dim(&kx)?);
    let (mx, nx, kx) = (g.bind("M", mx), g.bind("N", nx), g.bind("K", kx));
    let tiles_n = g.bind("tiles_n", ceil_div(nx.clone(), bn));
    let tiles_m = g.bind("tiles_m", ceil_div(mx.clone(), bm));
    let blk = Ex::Special(Special::BlockId);
    let tn = g.bind("tile_n", bin(Bin::RemI, blk.clone(), tiles_n.clone()));
    let rest = g.bind("rest", bin(Bin::DivI, blk, tiles_n));
    let tm = g.bind("tile_m", bin(Bin::RemI, rest.clone(), tiles_m.clone()));
    let u = g.bind("uniform", bin(Bin::DivI, rest, tiles_m));
    g.split(u, &sp.uniform);
    let m0 = g.bind("m0", bin(Bin::MulI, tm, Ex::I(bm)));
    let n0 = g.bind("n0", bin(Bin::MulI, tn, Ex::I(bn)));
    Ok(Tiles {
        mx,
        nx,
        kx,
        m0,
        n0,
        tid: Ex::Special(Special::ThreadId),
    })
}

/// One side's staged element: at output index `og` (rows or columns,
/// below `limit`; its slots' indices `at_og`, split once before the tile
/// loop by [`hoist_split`]) and reduction index `kg`, the product of that
/// side's factors `fs` stored to `tile[at]`, or 0 past an edge (and never
/// read).
#[allow(clippy::too_many_arguments)]
fn stage(
    g: &mut Lower,
    sp: &Split,
    (fs, slots, at_og): (&[ExprId], &[Slot], &[Ex]),
    (og, limit): (Ex, &Ex),
    kg: Ex,
    kx: &Ex,
    tile: Mem,
    at: Ex,
) -> R<()> {
    let inside = below(&[(&og, limit), (&kg, kx)]);
    g.if_else(
        inside,
        |g| {
            for (s, v) in slots.iter().zip(at_og) {
                g.slots[*s as usize] = v.clone();
            }
            g.split(kg, &sp.reduce);
            let mut v: Option<Ex> = None;
            for f in fs.iter() {
                let x = g.expr(*f)?;
                let x = g.to(x, Scalar::F32);
                v = Some(match v {
                    None => x,
                    Some(v) => bin(Bin::MulF, v, x),
                });
            }
            let v = v.unwrap_or(Ex::F(1.0));
            g.emit(Stmt::Store(tile, at.clone(), v));
            Ok(())
        },
        |g| {
            g.emit(Stmt::Store(tile, at.clone(), Ex::F(0.0)));
            Ok(())
        },
    )
}

/// The slot indices of output index `og` (of `slots`, clamped into
/// `[0, limit)`), split where this is called: a thread stages the same
/// rows and columns at every reduction tile, so the division of each by
/// the run-time extents (the sequence length) happens once, not per
/// element and tile.
fn hoist_split(g: &mut Lower, slots: &[Slot], og: Ex, limit: &Ex) -> Vec<Ex> {
    let last = bin(Bin::SubI, limit.clone(), Ex::I(1));
    let og = g.bind("og_in", bin(Bin::MaxI, bin(Bin::MinI, og, last), Ex::I(0)));
    g.split(og, slots);
    slots.iter().map(|s| g.slots[*s as usize].clone()).collect()
}

/// Each output of the block's tile (accumulator index, row and column in
/// the tile) stored with the epilogue added, inside the matrix.
fn write_outputs(
    g: &mut Lower,
    sp: &Split,
    t: &Tiles,
    acc: Mem,
    outputs: Vec<(i64, Ex, Ex)>,
) -> R<()> {
    let op = &g.m.ops[g.k.op];
    let result = op.result;
    let shape = g.m.value(result).shape.clone();
    for (at, row, col) in outputs {
        let mg = g.bind("mg", bin(Bin::AddI, t.m0.clone(), row));
        let ng = g.bind("ng", bin(Bin::AddI, t.n0.clone(), col));
        let inside = below(&[(&mg, &t.mx), (&ng, &t.nx)]);
        g.if_else(
            inside,
            |g| {
                g.split(mg, &sp.rows);
                g.split(ng, &sp.cols);
                let mut v = Ex::Load(acc, bx(Ex::I(at)));
                if let Some(e) = sp.epilogue {
                    let x = g.expr(e)?;
                    v = bin(Bin::AddF, v, g.to(x, Scalar::F32));
                }
                g.store_result(result, &shape, v)
            },
            |_| Ok(()),
        )?;
    }
    Ok(())
}

/// The tiled kernel of contraction op `o` with the split, tiles and
/// tensor cores the schedule chose (`mixc_compiler::pattern::tiling`).
pub fn contraction_tiled(
    m: &Module,
    o: usize,
    fixed: &BTreeMap<String, i64>,
    mt: &MatrixTiling,
) -> R<Kernel> {
    let (sp, tc) = (&mt.split, mt.tc);
    if let TensorCores::Wgmma(d) = tc {
        return contraction_wgmma(m, o, fixed, mt, d);
    }
    let mma = match tc {
        TensorCores::MmaSync(d) => Some(d),
        _ => None,
    };
    let (bm, bn, bk) = (mt.bm, mt.bn, mt.bk);
    let want = if mma.is_some() {
        (WARPS_M * 16 * M_TILES, WARPS_N * 8 * WARP_SLICES, BK)
    } else {
        (BM, BN, BK)
    };
    if (bm, bn, bk) != want {
        return Err(err(format!(
            "the tiled contraction takes {}x{}x{} tiles here, not the schedule's {bm}x{bn}x{bk} (compiler bug)",
            want.0, want.1, want.2
        )));
    }
    let kind = match mma {
        None => format!("tiled contraction ({})", mt.describe()),
        Some(_) => format!("tiled contraction on tensor cores ({})", mt.describe()),
    };
    let mut g = Lower::new(m, o, &kind, &DimExpr::Const(0), fixed);
    let t = tiles(&mut g, sp, bm, bn, THREADS)?;
    let tid = t.tid.clone();
    let tx = g.bind("tx", bin(Bin::RemI, tid.clone(), Ex::I(TX)));
    let ty = g.bind("ty", bin(Bin::DivI, tid.clone(), Ex::I(TX)));
    let a_tile = g.local("a_tile", Scalar::F32, Space::Shared, (bm * bk) as u32);
    let b_tile = g.local("b_tile", Scalar::F32, Space::Shared, (bk * bn) as u32);
    let n_acc = if mma.is_some() {
        4 * M_TILES * WARP_SLICES
    } else {
        TM * TN
    };
    let acc = g.local("acc", Scalar::F32, Space::Register, n_acc as u32);
    for a in 0..n_acc {
        g.emit(Stmt::Store(acc, Ex::I(a), Ex::F(0.0)));
    }
    // Which outputs each thread accumulates: (accumulator index, row and
    // column in the block's tile).
    let mut outputs = Vec::new();
    let mma = match mma {
        None => {
            for r in 0..TM {
                for c in 0..TN {
                    let row = bin(Bin::AddI, ty.clone(), Ex::I(r * TX));
                    let col = bin(Bin::AddI, tx.clone(), Ex::I(c * TX));
                    outputs.push((r * TN + c, row, col));
                }
            }
            None
        }
        Some(dtype) => {
            // 8 warps: WARPS_M down the rows (16 M_TILES each), WARPS_N
            // across the columns (8 WARP_SLICES each). Lane l (g = l / 4,
            // t = l % 4) holds A rows g, g + 8 of each 16-row tile, B
            // column g of each slice, and outputs at rows g, g + 8 and
            // columns 2t, 2t + 1 of each (tile, slice).
            let warp = g.bind("warp", bin(Bin::DivI, tid.clone(), Ex::I(32)));
            let lane = g.bind("lane", bin(Bin::RemI, tid.clone(), Ex::I(32)));
            let grp = g.bind("grp", bin(Bin::DivI, lane.clone(), Ex::I(4)));
            let quad = g.bind("quad", bin(Bin::RemI, lane, Ex::I(4)));
            let wrow = g.bind(
                "wrow",
                bin(
                    Bin::MulI,
                    bin(Bin::RemI, warp.clone(), Ex::I(WARPS_M)),
                    Ex::I(16 * M_TILES),
                ),
            );
            let wcol = g.bind(
                "wcol",
                bin(
                    Bin::MulI,
                    bin(Bin::DivI, warp, Ex::I(WARPS_M)),
                    Ex::I(8 * WARP_SLICES),
                ),
            );
            let w = Warp {
                row: g.bind("arow", bin(Bin::AddI, wrow, grp.clone())),
                col: g.bind("bcol", bin(Bin::AddI, wcol.clone(), grp)),
                k: g.bind("k2", bin(Bin::MulI, quad, Ex::I(2))),
            };
            for mt in 0..M_TILES {
                for slice in 0..WARP_SLICES {
                    for e in 0..4 {
                        let row = bin(Bin::AddI, w.row.clone(), Ex::I(16 * mt + 8 * (e / 2)));
                        let col = bin(
                            Bin::AddI,
                            bin(Bin::AddI, wcol.clone(), w.k.clone()),
                            Ex::I(8 * slice + e % 2),
                        );
                        outputs.push((4 * (mt * WARP_SLICES + slice) + e, row, col));
                    }
                }
            }
            Some((dtype, w))
        }
    };
    let k_tiles = g.bind("k_tiles", ceil_div(t.kx.clone(), bk));
    // A side: [bm][bk]; B side: [bk][bn]; the fast index is the reduction
    // for A and the column for B, as the operands' layouts usually are.
    // Element `c` of a thread's share: its tile index, its output index
    // (row or column) and its index along the reduction tile.
    let sides = [
        (a_tile, &sp.a, bk, &sp.rows, &t.m0, &t.mx, true),
        (b_tile, &sp.b, bn, &sp.cols, &t.n0, &t.nx, false),
    ];
    let mut shares = Vec::new();
    for (_, _, width, slots, base, limit, k_fast) in sides {
        let per = if k_fast { bm * bk } else { bk * bn } / i64::from(THREADS);
        let mut share = Vec::new();
        for c in 0..per {
            let idx = g.bind(
                "idx",
                bin(Bin::AddI, Ex::I(c * i64::from(THREADS)), tid.clone()),
            );
            let hi = g.bind("hi", bin(Bin::DivI, idx.clone(), Ex::I(width)));
            let lo = g.bind("lo", bin(Bin::RemI, idx.clone(), Ex::I(width)));
            let (outer, kk) = if k_fast { (hi, lo) } else { (lo, hi) };
            let og = g.bind("og", bin(Bin::AddI, base.clone(), outer));
            let at_og = hoist_split(&mut g, slots, og.clone(), limit);
            share.push((idx, og, kk, at_og));
        }
        shares.push(share);
    }
    g.for_range("kt", Ex::I(0), k_tiles, |g, kt| {
        let k0 = g.bind("k0", bin(Bin::MulI, kt, Ex::I(bk)));
        // The previous tile's readers are done before it is overwritten.
        g.emit(Stmt::Barrier);
        for ((tile, fs, _, slots, _, limit, _), share) in sides.iter().zip(&shares) {
            for (idx, og, kk, at_og) in share {
                let kg = g.bind("kg", bin(Bin::AddI, k0.clone(), kk.clone()));
                stage(
                    g,
                    sp,
                    (fs, slots, at_og),
                    (og.clone(), limit),
                    kg,
                    &t.kx,
                    *tile,
                    idx.clone(),
                )?;
            }
        }
        g.emit(Stmt::Barrier);
        match &mma {
            None => g.for_range("kk", Ex::I(0), Ex::I(BK), |g, kk| {
                let a: Vec<Ex> = (0..TM)
                    .map(|r| {
                        let row = bin(Bin::AddI, ty.clone(), Ex::I(r * TX));
                        let at = bin(Bin::AddI, bin(Bin::MulI, row, Ex::I(BK)), kk.clone());
                        g.bind("a", Ex::Load(a_tile, bx(at)))
                    })
                    .collect();
                let b: Vec<Ex> = (0..TN)
                    .map(|c| {
                        let col = bin(Bin::AddI, tx.clone(), Ex::I(c * TX));
                        let at = bin(Bin::AddI, bin(Bin::MulI, kk.clone(), Ex::I(BN)), col);
                        g.bind("b", Ex::Load(b_tile, bx(at)))
                    })
                    .collect();
                for (r, a) in a.iter().enumerate() {
                    for (c, b) in b.iter().enumerate() {
                        let at = Ex::I(r as i64 * TN + c as i64);
                        let v = bin(
                            Bin::AddF,
                            Ex::Load(acc, bx(at.clone())),
                            bin(Bin::MulF, a.clone(), b.clone()),
                        );
                        g.emit(Stmt::Store(acc, at, v));
                    }
                }
                Ok(())
            }),
            Some((dtype, w)) => {
                // One k16 step: each of the warp's 16-row tiles of A
                // against each of its 8-column slices of B (each fragment
                // loaded once).
                let a: Vec<Vec<Ex>> = (0..M_TILES)
                    .map(|mt| {
                        (0..8)
                            .map(|e| {
                                let row =
                                    bin(Bin::AddI, w.row.clone(), Ex::I(16 * mt + 8 * (e / 2 % 2)));
                                let k = bin(Bin::AddI, w.k.clone(), Ex::I(e % 2 + 8 * (e / 4)));
                                let at = bin(Bin::AddI, bin(Bin::MulI, row, Ex::I(bk)), k);
                                g.bind("a", Ex::Load(a_tile, bx(at)))
                            })
                            .collect()
                    })
                    .collect();
                let b: Vec<Vec<Ex>> = (0..WARP_SLICES)
                    .map(|slice| {
                        (0..4)
                            .map(|e| {
                                let k = bin(Bin::AddI, w.k.clone(), Ex::I(e % 2 + 8 * (e / 2)));
                                let col = bin(Bin::AddI, w.col.clone(), Ex::I(8 * slice));
                                let at = bin(Bin::AddI, bin(Bin::MulI, k, Ex::I(bn)), col);
                                g.bind("b", Ex::Load(b_tile, bx(at)))
                            })
                            .collect()
                    })
                    .collect();
                for (mt, a) in a.iter().enumerate() {
                    for (slice, b) in b.iter().enumerate() {
                        g.emit(Stmt::Mma {
                            ty: *dtype,
                            a: a.clone(),
                            b: b.clone(),
                            acc,
                            at: 4 * (mt as i64 * WARP_SLICES + slice as i64),
                        });
                    }
                }
                Ok(())
            }
        }
    })?;
    write_outputs(&mut g, sp, &t, acc, outputs)?;
    g.k.body = g.blocks.pop().expect("the kernel's block");
    Ok(g.k)
}

/// Warpgroups a block of the `wgmma` contraction, each computing 64 rows.
const WG: i64 = 2;
/// Its reduction tile: two k16 steps a product (fewer when the reduction
/// is a shorter constant).
const WG_BK: i64 = 32;
/// Shared-memory stages of the operand tiles: the product of one runs
/// while the next is loaded.
const STAGES: i64 = 2;

/// The contraction on sm_90's warpgroup tensor cores (`wgmma`): a block of
/// [`WG`] warpgroups computes `64 WG x bn` outputs (`bn` 128, or 64 when
/// N is a constant up to 64), each warpgroup 64 rows with f32
/// accumulators in registers. Each reduction tile of [`WG_BK`] is staged
/// in 16-bit shared memory in the canonical K-major layout
/// ([`core_index`]) and fenced for the async proxy, in one of [`STAGES`]
/// buffers; the `wgmma` group of tile `kt` (its k16 steps) is issued
/// asynchronously, tile `kt + 1` is loaded into the other buffer while it
/// runs, and the wait for it (`Stmt::WgmmaWait`) and a barrier end the
/// iteration.
fn contraction_wgmma(
    m: &Module,
    o: usize,
    fixed: &BTreeMap<String, i64>,
    mt: &MatrixTiling,
    dtype: Dtype,
) -> R<Kernel> {
    let sp = &mt.split;
    let (bm, bn, bk) = (mt.bm, mt.bn, mt.bk);
    if bm != 64 * WG || !matches!(bn, 64 | 128) || bk % 16 != 0 || bk > WG_BK {
        return Err(err(format!(
            "the wgmma contraction takes {}x(64|128) tiles with reduction tiles of up to {WG_BK} in k16 steps, not the schedule's {bm}x{bn}x{bk} (compiler bug)",
            64 * WG
        )));
    }
    let threads = (128 * WG) as u32;
    let kind = format!(
        "tiled contraction on warpgroup tensor cores ({})",
        mt.describe()
    );
    let mut g = Lower::new(m, o, &kind, &DimExpr::Const(0), fixed);
    // Two blocks an SM (128 registers a thread): one block's warpgroups
    // wait on their loads while the other's products run.
    g.k.min_blocks = 2;
    let t = tiles(&mut g, sp, bm, bn, threads)?;
    let tid = t.tid.clone();
    // Two stages of each operand tile: one read by the in-flight product,
    // the other being filled.
    let (a_len, b_len) = (bm * bk, bk * bn);
    let a_tile = g.shared_narrow("a_tile", STAGES * a_len, dtype);
    let b_tile = g.shared_narrow("b_tile", STAGES * b_len, dtype);
    let acc = g.local("acc", Scalar::F32, Space::Register, (bn / 2) as u32);
    for a in 0..bn / 2 {
        g.emit(Stmt::Store(acc, Ex::I(a), Ex::F(0.0)));
    }
    let (Mem::Local(la), Mem::Local(lb)) = (a_tile, b_tile) else {
        unreachable!()
    };
    // Warpgroup `wg`, its warp `w` and lane `l` (g = l / 4, q = l % 4).
    let wg = g.bind("wg", bin(Bin::DivI, tid.clone(), Ex::I(128)));
    let warp = g.bind(
        "warp",
        bin(Bin::RemI, bin(Bin::DivI, tid.clone(), Ex::I(32)), Ex::I(4)),
    );
    let lane = g.bind("lane", bin(Bin::RemI, tid.clone(), Ex::I(32)));
    let grp = g.bind("grp", bin(Bin::DivI, lane.clone(), Ex::I(4)));
    let quad = g.bind("quad", bin(Bin::RemI, lane, Ex::I(4)));
    let a_addr = g.bind("a_addr", Ex::SharedAddr(la));
    let b_addr = g.bind("b_addr", Ex::SharedAddr(lb));
    // The warpgroup's rows start at core row group 8 wg of the A tile.
    let a_rows = g.bind(
        "a_rows",
        bin(
            Bin::AddI,
            a_addr,
            bin(Bin::MulI, wg.clone(), Ex::I(8 * 128 * 2)),
        ),
    );
    // Each thread stages one row of the A tile and one column of the B
    // tile, a run of `per` consecutive k of each: its row and column are
    // split into slot indices once, here, so the tile loop divides by no
    // run-time extent. The threads of an A row are neighbours (they read
    // its k run together); B's neighbouring threads take neighbouring
    // columns (coalesced reads of `w[k, n]`).
    let sides = [
        (a_tile, a_len, &sp.a, &sp.rows, &t.m0, &t.mx, bm, true),
        (b_tile, b_len, &sp.b, &sp.cols, &t.n0, &t.nx, bn, false),
    ];
    let mut owned = Vec::new();
    for (tile, len, fs, slots, base, limit, rows, a_side) in sides {
        let per = rows * bk / i64::from(threads);
        let groups = bk / per.max(1);
        if per == 0 || rows * groups != i64::from(threads) || per * groups != bk {
            return Err(err(format!(
                "the wgmma contraction cannot spread a {rows} x {bk} tile over {threads} threads (compiler bug)"
            )));
        }
        let (mn, part) = if a_side {
            (
                bin(Bin::DivI, tid.clone(), Ex::I(groups)),
                bin(Bin::RemI, tid.clone(), Ex::I(groups)),
            )
        } else {
            (
                bin(Bin::RemI, tid.clone(), Ex::I(rows)),
                bin(Bin::DivI, tid.clone(), Ex::I(rows)),
            )
        };
        let mn = g.bind("mn", mn);
        let kk0 = g.bind("kk0", bin(Bin::MulI, part, Ex::I(per)));
        let og = g.bind("og", bin(Bin::AddI, base.clone(), mn.clone()));
        let at_og = hoist_split(&mut g, slots, og.clone(), limit);
        owned.push((tile, len, fs, slots, limit, rows, per, mn, kk0, og, at_og));
    }
    // Reduction tile `kt` into stage `buf`; each thread fences its stores
    // for the async proxy.
    let fill = |g: &mut Lower, kt: Ex, buf: Ex| -> R<()> {
        let k0 = g.bind("k0", bin(Bin::MulI, kt, Ex::I(bk)));
        for (side, (tile, len, fs, slots, limit, rows, per, mn, kk0, og, at_og)) in
            owned.iter().enumerate()
        {
            let first = g.bind("first", bin(Bin::MulI, buf.clone(), Ex::I(*len)));
            if side == 0 && mt.vector_a {
                // 8 consecutive k of the row at a time (the plan checked
                // they are 8 consecutive elements, 16-byte aligned, and K
                // a multiple of 8); rows and k past the edges stage 0.
                let Node::Read(v, subs) = g.m.expr(fs[0]).node.clone() else {
                    return Err(err(
                        "the A side's 16-byte copies need one read (compiler bug)",
                    ));
                };
                let shape = g.m.value(v).shape.clone();
                for c in 0..per / 8 {
                    let kk = g.bind("kk", bin(Bin::AddI, kk0.clone(), Ex::I(8 * c)));
                    let at = core_index(*rows, mn.clone(), kk.clone());
                    let at = g.bind("at", bin(Bin::AddI, first.clone(), at));
                    let kg = g.bind("kg", bin(Bin::AddI, k0.clone(), kk));
                    for (s, x) in slots.iter().zip(at_og) {
                        g.slots[*s as usize] = x.clone();
                    }
                    g.split(kg.clone(), &sp.reduce);
                    let mut idx = Vec::new();
                    for e in &subs {
                        let x = g.expr(*e)?;
                        idx.push(g.to(x, Scalar::I64));
                    }
                    let off = g.offset(&shape, &idx)?;
                    g.emit(Stmt::Copy {
                        dst: *tile,
                        dst_at: at,
                        src: Mem::Value(v.0),
                        src_at: off,
                        n: 8,
                        stride: 1,
                        when: below(&[(og, limit), (&kg, &t.kx)]),
                    });
                }
                continue;
            }
            g.for_range("c", Ex::I(0), Ex::I(*per), |g, c| {
                let kk = g.bind("kk", bin(Bin::AddI, kk0.clone(), c));
                let at = g.bind(
                    "at",
                    bin(
                        Bin::AddI,
                        first.clone(),
                        core_index(*rows, mn.clone(), kk.clone()),
                    ),
                );
                let kg = g.bind("kg", bin(Bin::AddI, k0.clone(), kk));
                stage(
                    g,
                    sp,
                    (fs, slots, at_og),
                    (og.clone(), limit),
                    kg,
                    &t.kx,
                    *tile,
                    at,
                )
            })?;
        }
        g.emit(Stmt::FenceAsync);
        Ok(())
    };
    let k_tiles = g.bind("k_tiles", ceil_div(t.kx.clone(), bk));
    fill(&mut g, Ex::I(0), Ex::I(0))?;
    g.emit(Stmt::Barrier);
    g.for_range("kt", Ex::I(0), k_tiles.clone(), |g, kt| {
        // Tile kt's products run while tile kt + 1 is loaded into the
        // other stage (whose last reader, tile kt - 1's product, was
        // retired before the barrier that ended its iteration).
        let buf = g.bind("buf", bin(Bin::RemI, kt.clone(), Ex::I(STAGES)));
        // Stage `buf` of a tile of `len` 16-bit elements at `base`.
        let mut stage_at = |name: &str, base: &Ex, len: i64| {
            let off = bin(Bin::MulI, buf.clone(), Ex::I(len * 2));
            g.bind(name, bin(Bin::AddI, base.clone(), off))
        };
        let a0 = stage_at("a_stage", &a_rows, a_len);
        let b0 = stage_at("b_stage", &b_addr, b_len);
        g.emit(Stmt::Wgmma(Wgmma {
            ty: dtype,
            n: bn as u32,
            steps: wgmma_steps(&a0, &b0, (bm, bn), bk),
            acc,
            at: 0,
            pending: 1,
        }));
        let next = g.bind("next", bin(Bin::AddI, kt, Ex::I(1)));
        let more = bin(Bin::CmpI(Pred::Lt), next.clone(), k_tiles.clone());
        g.if_else(
            more,
            |g| {
                let other = bin(Bin::SubI, Ex::I(STAGES - 1), buf.clone());
                fill(g, next.clone(), other)
            },
            |_| Ok(()),
        )?;
        g.emit(Stmt::WgmmaWait(0));
        g.emit(Stmt::Barrier);
        Ok(())
    })?;
    // Accumulator 4 c + e: row 64 wg + 16 w + g + 8 (e / 2), column 8 c +
    // 2 q + e % 2.
    let row0 = g.bind(
        "row0",
        bin(
            Bin::AddI,
            bin(
                Bin::AddI,
                bin(Bin::MulI, wg, Ex::I(64)),
                bin(Bin::MulI, warp, Ex::I(16)),
            ),
            grp,
        ),
    );
    let col0 = g.bind("col0", bin(Bin::MulI, quad, Ex::I(2)));
    let outputs = (0..bn / 2)
        .map(|i| {
            let (c, e) = (i / 4, i % 4);
            let row = bin(Bin::AddI, row0.clone(), Ex::I(8 * (e / 2)));
            let col = bin(Bin::AddI, col0.clone(), Ex::I(8 * c + e % 2));
            (i, row, col)
        })
        .collect();
    write_outputs(&mut g, sp, &t, acc, outputs)?;
    g.k.body = g.blocks.pop().expect("the kernel's block");
    Ok(g.k)
}
