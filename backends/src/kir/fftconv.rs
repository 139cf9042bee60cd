//! The long-convolution template for GPUs: a causal convolution `y[l] =
//! sum(t <= l) f[t] x[l - t]` whose filter is as long as the sequence
//! (Hyena's implicit filter, S4's kernel; matched by `crate::conv::long`)
//! computed by FFTs in shared memory, block by block, with the rest of the
//! op's body (Hyena's gate and skip term) applied to each output before it
//! is stored. Nothing but the op's result goes to global memory.
//!
//! The outputs along `l` are cut into blocks of `B` positions (`B` the
//! next power of two of the length, at most the template's block). Output
//! block `b` is the sum over filter blocks `k <= b` of `f_k` (taps `kB` to
//! `kB + B`) convolved with the signal's window from `(b - k - 1) B` to
//! `(b - k + 1) B`. A circular convolution of size `N = 2B` computes each
//! term exactly when the window is arranged with its newer half first
//! (position `p < B` holds `x[(b - k) B + p]`, position `p >= B` holds
//! `x[(b - k) B + p - 2B]`): for outputs `r < B`, the positions that wrap
//! are the older half.
//!
//! So a block of threads, per term, loads the window as the real part and
//! the filter block, scaled to the window's largest magnitude (so that
//! neither spectrum is buried in the other's roundoff when the two differ
//! in size), as the imaginary part of one complex sequence,
//! transforms it (radix-2, decimation in frequency: natural order in,
//! bit-reversed out), separates the two spectra by the symmetry of real
//! signals' transforms (`X = (Z[f] + conj Z[N - f]) / 2`, `F = (Z[f] -
//! conj Z[N - f]) / 2i`) and accumulates `X F` in registers, each thread
//! the same bins throughout. After the last term, one inverse transform
//! (decimation in time: bit-reversed in, natural out) gives the block's
//! outputs. The spectra never leave the chip and need no reordering: the
//! inverse transform takes the bit-reversed order the forward one leaves.
//!
//! Work per channel is `(L / B)^2 / 2` transforms of size `2B`: for a
//! sequence up to `B` long, one forward and one inverse transform, the
//! O(L log L) of the FFT; for longer ones a blocked FFT convolution, still
//! `B / log B` times fewer operations than the direct sum, in a single
//! kernel with a block per (channel, output block) and no scratch buffers.

use super::{
    bin, ceil_dim, Bin, Ex, Kernel, Launch, Lower, Mem, Pred, Scalar, Space, Special, Stmt, R,
};
use mixc_compiler::ir::{DimExpr, Module, Slot};
use mixc_compiler::passes::conv::LongConv;
use mixc_dsl::typed::DimOp;
use std::collections::BTreeMap;

/// Outputs per block of the GPU template: transforms of 4096 points, two
/// f32 arrays of 16 KiB in shared memory and a twiddle table of 8 KiB.
pub const FFT_BLOCK: i64 = mixc_compiler::schedule::GPU_FFT_BLOCK;
/// Threads per block (at most).
const THREADS: i64 = 512;

/// `a < b`.
fn lt(a: Ex, b: Ex) -> Ex {
    bin(Bin::CmpI(Pred::Lt), a, b)
}

fn add(a: Ex, b: Ex) -> Ex {
    bin(Bin::AddI, a, b)
}

fn mul(a: Ex, b: Ex) -> Ex {
    bin(Bin::MulI, a, b)
}

fn addf(a: Ex, b: Ex) -> Ex {
    bin(Bin::AddF, a, b)
}

fn subf(a: Ex, b: Ex) -> Ex {
    bin(Bin::SubF, a, b)
}

fn mulf(a: Ex, b: Ex) -> Ex {
    bin(Bin::MulF, a, b)
}

fn sel(c: Ex, a: Ex, b: Ex) -> Ex {
    Ex::Select(Box::new(c), Box::new(a), Box::new(b))
}

fn load(m: Mem, at: Ex) -> Ex {
    Ex::Load(m, Box::new(at))
}

/// Where twiddle `m` lives in the table: `m` with its low 5 bits xored
/// with bits 5-9 and 10-14, so the strided reads of a stage (entries `j
/// bsz / h` for a warp's consecutive `j`) fall in different banks; without
/// it, a stride of 32 or more puts a whole warp in one bank.
fn twiddle_at(m: Ex) -> Ex {
    let field = |shift: i64| {
        bin(
            Bin::RemI,
            bin(Bin::DivI, m.clone(), Ex::I(1 << shift)),
            Ex::I(32),
        )
    };
    bin(Bin::XorI, bin(Bin::XorI, m.clone(), field(5)), field(10))
}

/// Where element `i` of a sequence lives: `i` with its low 5 bits
/// flipped when bit 5 is set. A butterfly of span `h < 32` has a warp's
/// lanes at `h`-runs two spans apart, which fill only the banks of one bit
/// pattern; the flip sends the odd 32-word halves to the complementary
/// banks, so every stage's reads and writes are conflict-free (spans of 32
/// and more read aligned runs of 32, a permutation of the banks).
fn swizzled(i: Ex) -> Ex {
    let flip = |v: i64| if (v / 32) % 2 == 1 { v ^ 31 } else { v };
    match i {
        Ex::I(v) => Ex::I(flip(v)),
        i => {
            let odd = bin(Bin::RemI, bin(Bin::DivI, i.clone(), Ex::I(32)), Ex::I(2));
            bin(Bin::XorI, i, bin(Bin::MulI, odd, Ex::I(31)))
        }
    }
}

/// `x` clamped into `0..n`: an index that is safe to read where the value
/// is then masked.
fn clamp(x: Ex, n: &Ex) -> Ex {
    let hi = bin(Bin::MinI, x, bin(Bin::SubI, n.clone(), Ex::I(1)));
    bin(Bin::MaxI, hi, Ex::I(0))
}

/// Stores operand read `e`, evaluated in the current frame, at position
/// `at` of `mem`, or 0 where not `valid`.
fn stage(g: &mut Lower, e: mixc_compiler::ir::ExprId, mem: Mem, at: &Ex, valid: Ex) -> R<()> {
    let v = g.expr(e)?;
    let v = g.to(v, Scalar::F32);
    g.emit(Stmt::Store(
        mem,
        swizzled(at.clone()),
        sel(valid, v, Ex::F(0.0)),
    ));
    Ok(())
}

/// The shared arrays of one complex sequence.
#[derive(Clone, Copy)]
struct Seq {
    re: Mem,
    im: Mem,
}

/// The template's kernel for op `o` with long convolution `c`, blocks of
/// up to `block` outputs (a power of two; [`FFT_BLOCK`] on GPUs).
pub fn fft_conv(
    m: &Module,
    o: usize,
    c: &LongConv,
    fixed: &BTreeMap<String, i64>,
    block: i64,
) -> R<Kernel> {
    assert!(
        block >= 2 && block & (block - 1) == 0,
        "block is a power of two"
    );
    let op = &m.ops[o];
    let threads = THREADS.min(block);
    let n_max = 2 * block;
    let channels: Vec<Slot> = (0..op.rank as Slot).filter(|s| *s != c.l).collect();
    let len_dim = op.slots[c.l as usize].extent.clone();
    let grid = channels.iter().fold(ceil_dim(len_dim, block), |acc, s| {
        DimExpr::bin(DimOp::Mul, op.slots[*s as usize].extent.clone(), acc)
    });
    let kind = format!(
        "long conv by FFT (blocks of up to {block} outputs, {}-point transforms in shared memory, epilogue fused)",
        n_max
    );
    let mut g = Lower::new(m, o, &kind, &grid, fixed);
    g.k.launch = Launch {
        grid,
        block: threads as u32,
    };
    let dims: Vec<DimExpr> = op.slots.iter().map(|s| s.extent.clone()).collect();
    g.extents = g.extents_of(&dims)?;
    g.slots = vec![Ex::I(0); op.slots.len()];
    let len = g.extents[c.l as usize].clone();
    let taps = g.extents[c.tap as usize].clone();
    let z = Seq {
        re: g.local("re", Scalar::F32, Space::Shared, n_max as u32),
        im: g.local("im", Scalar::F32, Space::Shared, n_max as u32),
    };
    // Positions (and bins) per thread; butterflies per thread are half.
    let per = n_max / threads;
    let acc = Seq {
        re: g.local("acc_re", Scalar::F32, Space::Register, per as u32),
        im: g.local("acc_im", Scalar::F32, Space::Register, per as u32),
    };
    let partner = g.local("partner", Scalar::I64, Space::Register, per as u32);
    let tid = Ex::Special(Special::ThreadId);

    // The block size B: the next power of two of the length, capped.
    let (mut bsz, mut lg) = (Ex::I(1), Ex::I(0));
    let mut p = 1;
    while p < block {
        let more = g.bind("more", lt(bsz.clone(), len.clone()));
        bsz = g.bind("bsz", sel(more.clone(), mul(bsz.clone(), Ex::I(2)), bsz));
        lg = g.bind("lg", sel(more, add(lg.clone(), Ex::I(1)), lg));
        p *= 2;
    }
    let n = g.bind("n", mul(bsz.clone(), Ex::I(2)));
    let lg_b = g.bind("lg_b", lg);
    let lg_n = g.bind("lg_n", add(lg_b.clone(), Ex::I(1)));
    let nblocks = g.bind("blocks", super::ceil_div(len.clone(), block));
    let bid = Ex::Special(Special::BlockId);
    let bi = g.bind("out_block", bin(Bin::RemI, bid.clone(), nblocks.clone()));
    let chan = g.bind("channel", bin(Bin::DivI, bid, nblocks));
    g.split(chan, &channels);
    let origin = g.bind("origin", mul(bi.clone(), bsz.clone()));
    // The twiddle table: cos(2 pi m / n) for m < bsz, computed once (the
    // first term's barriers order it before any transform reads it).
    let tw = g.local("twiddle", Scalar::F32, Space::Shared, block as u32);
    let turn = g.bind(
        "turn",
        bin(
            Bin::DivF,
            Ex::F(2.0 * std::f32::consts::PI),
            super::un(super::Un::IToF, n.clone()),
        ),
    );
    for e in 0..per / 2 {
        let at = g.bind("m", add(tid.clone(), Ex::I(e * threads)));
        g.if_else(
            lt(at.clone(), bsz.clone()),
            |g| {
                let angle = mulf(super::un(super::Un::IToF, at.clone()), turn.clone());
                g.emit(Stmt::Store(
                    tw,
                    twiddle_at(at),
                    super::un(super::Un::Cos, angle),
                ));
                Ok(())
            },
            |_| Ok(()),
        )?;
    }

    // Each thread's positions `q = tid + threads e` hold the bins rev(q);
    // the partner of bin f is bin N - f.
    let (xs, r) = (
        g.register("rev_x", Scalar::I64),
        g.register("rev_r", Scalar::I64),
    );
    let rev = |g: &mut Lower, x: Ex| -> R<Ex> {
        g.set(xs, x);
        g.set(r, Ex::I(0));
        g.for_range("bit", Ex::I(0), lg_n.clone(), |g, _| {
            let (xv, rv) = (g.get(xs), g.get(r));
            g.set(
                r,
                add(mul(rv, Ex::I(2)), bin(Bin::RemI, xv.clone(), Ex::I(2))),
            );
            g.set(xs, bin(Bin::DivI, xv, Ex::I(2)));
            Ok(())
        })?;
        let v = g.get(r);
        Ok(g.bind("rev", v))
    };
    for e in 0..per {
        let q = g.bind("q", add(tid.clone(), Ex::I(e * threads)));
        let f = rev(&mut g, q)?;
        let fp = bin(Bin::RemI, bin(Bin::SubI, n.clone(), f), n.clone());
        let fp = g.bind("fp", fp);
        let pq = rev(&mut g, fp)?;
        g.emit(Stmt::Store(partner, Ex::I(e), pq));
        g.emit(Stmt::Store(acc.re, Ex::I(e), Ex::F(0.0)));
        g.emit(Stmt::Store(acc.im, Ex::I(e), Ex::F(0.0)));
    }

    // The terms: filter blocks k = 0 ..= b (those the taps reach).
    let filter_blocks = g.bind(
        "filter_blocks",
        bin(
            Bin::DivI,
            add(taps.clone(), bin(Bin::SubI, bsz.clone(), Ex::I(1))),
            bsz.clone(),
        ),
    );
    let hi = bin(Bin::MinI, add(bi.clone(), Ex::I(1)), filter_blocks);
    // Per term, the largest magnitudes of the window and of the filter
    // block (a tree reduction over the block's threads).
    let red = Seq {
        re: g.local("max_re", Scalar::F32, Space::Shared, threads as u32),
        im: g.local("max_im", Scalar::F32, Space::Shared, threads as u32),
    };
    let (mx, mh) = (
        g.register("max_x", Scalar::F32),
        g.register("max_f", Scalar::F32),
    );
    g.for_range("k", Ex::I(0), hi, |g, k| {
        g.emit(Stmt::Barrier);
        // The window (real part) and the filter block (imaginary part).
        let base = g.bind(
            "base",
            mul(bin(Bin::SubI, bi.clone(), k.clone()), bsz.clone()),
        );
        for e in 0..per {
            let at = g.bind("p", add(tid.clone(), Ex::I(e * threads)));
            g.if_else(
                lt(at.clone(), n.clone()),
                |g| {
                    let newer = g.bind("newer", lt(at.clone(), bsz.clone()));
                    let back = sel(newer.clone(), Ex::I(0), mul(bsz.clone(), Ex::I(2)));
                    let pos = g.bind("pos", bin(Bin::SubI, add(base.clone(), at.clone()), back));
                    let inside = bin(
                        Bin::And,
                        bin(Bin::CmpI(Pred::Ge), pos.clone(), Ex::I(0)),
                        lt(pos.clone(), len.clone()),
                    );
                    let inside = g.bind("inside", inside);
                    g.slots[c.l as usize] = g.bind("pos_c", clamp(pos, &len));
                    g.slots[c.tap as usize] = Ex::I(0);
                    stage(g, c.signal, z.re, &at, inside)?;
                    let t = g.bind("tap", add(mul(k.clone(), bsz.clone()), at.clone()));
                    let live = bin(Bin::And, newer, lt(t.clone(), taps.clone()));
                    let live = g.bind("live", live);
                    g.slots[c.tap as usize] = g.bind("tap_c", clamp(t, &taps));
                    stage(g, c.filter, z.im, &at, live)
                },
                |_| Ok(()),
            )?;
        }
        g.emit(Stmt::Barrier);
        // The filter block is scaled to the window's magnitude before it is
        // packed with it: the spectra are separated from one transform, so
        // each carries roundoff of the size of the larger; a window far
        // larger than the filter (a signal with a large mean) would bury
        // the filter's spectrum. The product is scaled back below.
        g.set(mx, Ex::F(0.0));
        g.set(mh, Ex::F(0.0));
        for e in 0..per {
            let q = g.bind("q", add(tid.clone(), Ex::I(e * threads)));
            g.if_else(
                lt(q.clone(), n.clone()),
                |g| {
                    let a = super::un(super::Un::AbsF, load(z.re, swizzled(q.clone())));
                    let b = super::un(super::Un::AbsF, load(z.im, swizzled(q.clone())));
                    let (x, h) = (g.get(mx), g.get(mh));
                    g.set(mx, bin(Bin::MaxF, x, a));
                    g.set(mh, bin(Bin::MaxF, h, b));
                    Ok(())
                },
                |_| Ok(()),
            )?;
        }
        let (x, h) = (g.get(mx), g.get(mh));
        g.emit(Stmt::Store(red.re, tid.clone(), x));
        g.emit(Stmt::Store(red.im, tid.clone(), h));
        g.emit(Stmt::Barrier);
        let mut span = threads / 2;
        while span >= 1 {
            g.if_else(
                lt(tid.clone(), Ex::I(span)),
                |g| {
                    let other = add(tid.clone(), Ex::I(span));
                    for arr in [red.re, red.im] {
                        let v = bin(Bin::MaxF, load(arr, tid.clone()), load(arr, other.clone()));
                        g.emit(Stmt::Store(arr, tid.clone(), v));
                    }
                    Ok(())
                },
                |_| Ok(()),
            )?;
            g.emit(Stmt::Barrier);
            span /= 2;
        }
        let sx = g.bind("window_max", load(red.re, Ex::I(0)));
        let sh = g.bind("filter_max", load(red.im, Ex::I(0)));
        let both = bin(
            Bin::And,
            bin(Bin::CmpF(Pred::Gt), sx.clone(), Ex::F(0.0)),
            bin(Bin::CmpF(Pred::Gt), sh.clone(), Ex::F(0.0)),
        );
        // The ratio is capped: a filter block of subnormal magnitudes (a
        // decayed implicit filter) must not overflow it.
        let ratio = bin(Bin::MinF, bin(Bin::DivF, sx, sh), Ex::F(1e30));
        let up = g.bind("filter_scale", sel(both.clone(), ratio, Ex::F(1.0)));
        // A window or a filter block of zeros adds nothing (exactly).
        let down = g.bind(
            "filter_unscale",
            sel(both, bin(Bin::DivF, Ex::F(1.0), up.clone()), Ex::F(0.0)),
        );
        for e in 0..per {
            let q = g.bind("q", add(tid.clone(), Ex::I(e * threads)));
            g.if_else(
                lt(q.clone(), n.clone()),
                |g| {
                    let v = mulf(load(z.im, swizzled(q.clone())), up.clone());
                    g.emit(Stmt::Store(z.im, swizzled(q), v));
                    Ok(())
                },
                |_| Ok(()),
            )?;
        }
        g.emit(Stmt::Barrier);
        transform(g, (z, tw), (&bsz, &lg_b), (threads, per / 2), false)?;
        // Separate the spectra and accumulate their product.
        for e in 0..per {
            let q = g.bind("q", add(tid.clone(), Ex::I(e * threads)));
            g.if_else(
                lt(q.clone(), n.clone()),
                |g| {
                    let pq = g.bind("pq", load(partner, Ex::I(e)));
                    let a = g.bind("a", load(z.re, swizzled(q.clone())));
                    let b = g.bind("b", load(z.im, swizzled(q.clone())));
                    let cc = g.bind("c", load(z.re, swizzled(pq.clone())));
                    let d = g.bind("d", load(z.im, swizzled(pq)));
                    let half = |x: Ex| mulf(x, Ex::F(0.5));
                    // X = ((a + c) / 2, (b - d) / 2); F = ((b + d) / 2, (c - a) / 2).
                    let xr = g.bind("xr", half(addf(a.clone(), cc.clone())));
                    let xi = g.bind("xi", half(subf(b.clone(), d.clone())));
                    let fr = g.bind("fr", half(addf(b, d)));
                    let fi = g.bind("fi", half(subf(cc, a)));
                    let pr = subf(mulf(xr.clone(), fr.clone()), mulf(xi.clone(), fi.clone()));
                    let pi = addf(mulf(xr, fi), mulf(xi, fr));
                    let (pr, pi) = (mulf(pr, down.clone()), mulf(pi, down.clone()));
                    let (ar, ai) = (load(acc.re, Ex::I(e)), load(acc.im, Ex::I(e)));
                    g.emit(Stmt::Store(acc.re, Ex::I(e), addf(ar, pr)));
                    g.emit(Stmt::Store(acc.im, Ex::I(e), addf(ai, pi)));
                    Ok(())
                },
                |_| Ok(()),
            )?;
        }
        Ok(())
    })?;

    // The inverse transform of the accumulated spectrum.
    g.emit(Stmt::Barrier);
    for e in 0..per {
        let q = g.bind("q", add(tid.clone(), Ex::I(e * threads)));
        g.if_else(
            lt(q.clone(), n.clone()),
            |g| {
                g.emit(Stmt::Store(
                    z.re,
                    swizzled(q.clone()),
                    load(acc.re, Ex::I(e)),
                ));
                g.emit(Stmt::Store(
                    z.im,
                    swizzled(q.clone()),
                    load(acc.im, Ex::I(e)),
                ));
                Ok(())
            },
            |_| Ok(()),
        )?;
    }
    g.emit(Stmt::Barrier);
    transform(&mut g, (z, tw), (&bsz, &lg_b), (threads, per / 2), true)?;

    // The epilogue: the op's body with the sum's value given.
    let scale = g.bind(
        "scale",
        bin(Bin::DivF, Ex::F(1.0), super::un(super::Un::IToF, n.clone())),
    );
    let (result, body) = (op.result, op.body);
    let shape = m.value(result).shape.clone();
    for e in 0..(block / threads).max(1) {
        let r = g.bind("r", add(tid.clone(), Ex::I(e * threads)));
        let l = g.bind("l", add(origin.clone(), r.clone()));
        let live = bin(
            Bin::And,
            lt(r.clone(), bsz.clone()),
            lt(l.clone(), len.clone()),
        );
        g.if_else(
            live,
            |g| {
                let v = g.bind("conv", mulf(load(z.re, swizzled(r)), scale.clone()));
                g.given.insert(c.reduce, v);
                g.slots[c.l as usize] = l;
                let out = g.expr(body)?;
                g.given.remove(&c.reduce);
                g.store_result(result, &shape, out)
            },
            |_| Ok(()),
        )?;
    }
    g.k.body = g.blocks.pop().expect("the kernel's block");
    Ok(g.k)
}

/// An in-place radix-2 transform of the `2 bsz` points of `z` (`bsz =
/// 2^lg_b`: `lg_b + 1` stages, `bsz` butterflies each, `per` a thread), a
/// barrier after each stage. Forward: decimation in
/// frequency, `e^(-2 pi i / n)`, natural order in and bit-reversed out.
/// Inverse: decimation in time, `e^(+2 pi i / n)`, unscaled, bit-reversed
/// in and natural out. The twiddles come from `tw`, `cos(2 pi m / n)` for
/// `m < bsz`; the sines are its entries a quarter turn away. Every span is
/// a power of two, so a butterfly's indices are shifts and masks (no
/// division).
fn transform(
    g: &mut Lower,
    (z, tw): (Seq, Mem),
    (bsz, lg_b): (&Ex, &Ex),
    (threads, per): (i64, i64),
    inverse: bool,
) -> R<()> {
    let tid = Ex::Special(Special::ThreadId);
    // The butterflies' span h = 2^lg_h: n / 2 down to 1 (forward), 1 up
    // to n / 2.
    let lg_h = g.register("lg_span", Scalar::I64);
    g.set(lg_h, if inverse { Ex::I(0) } else { lg_b.clone() });
    let stages = add(lg_b.clone(), Ex::I(1));
    let quarter = g.bind("quarter", bin(Bin::ShrI, bsz.clone(), Ex::I(1)));
    g.for_range("stage", Ex::I(0), stages, |g, _| {
        let lh = g.bind("lg_h", g.get(lg_h));
        let h = g.bind("h", bin(Bin::ShlI, Ex::I(1), lh.clone()));
        let mask = g.bind("h_mask", bin(Bin::SubI, h.clone(), Ex::I(1)));
        // The twiddle stride bsz / h.
        let lg_stride = g.bind("lg_stride", bin(Bin::SubI, lg_b.clone(), lh.clone()));
        for e in 0..per {
            let i = g.bind("i", add(tid.clone(), Ex::I(e * threads)));
            g.if_else(
                lt(i.clone(), bsz.clone()),
                |g| {
                    let j = g.bind("j", bin(Bin::AndI, i.clone(), mask.clone()));
                    // a = (i / h) * 2h + j.
                    let grp = bin(Bin::ShrI, i.clone(), lh.clone());
                    let a = g.bind(
                        "a",
                        add(bin(Bin::ShlI, grp, add(lh.clone(), Ex::I(1))), j.clone()),
                    );
                    let b = g.bind("b", add(a.clone(), h.clone()));
                    // W = e^(-+ i pi j / h): the table's entry j (bsz / h).
                    let idx = g.bind("w_at", bin(Bin::ShlI, j, lg_stride.clone()));
                    let wr = g.bind("wr", load(tw, twiddle_at(idx.clone())));
                    let off = bin(Bin::SubI, quarter.clone(), idx.clone());
                    let off = bin(Bin::MaxI, off.clone(), bin(Bin::SubI, Ex::I(0), off));
                    let s = sel(
                        bin(Bin::CmpI(Pred::Eq), idx, Ex::I(0)),
                        Ex::F(0.0),
                        load(tw, twiddle_at(off)),
                    );
                    let s = if inverse {
                        s
                    } else {
                        super::un(super::Un::NegF, s)
                    };
                    let wi = g.bind("wi", s);
                    let ar = g.bind("ar", load(z.re, swizzled(a.clone())));
                    let ai = g.bind("ai", load(z.im, swizzled(a.clone())));
                    let br = g.bind("br", load(z.re, swizzled(b.clone())));
                    let bi = g.bind("bi", load(z.im, swizzled(b.clone())));
                    let rot = |g: &mut Lower, xr: Ex, xi: Ex| -> (Ex, Ex) {
                        let r = subf(mulf(xr.clone(), wr.clone()), mulf(xi.clone(), wi.clone()));
                        let i = addf(mulf(xr, wi.clone()), mulf(xi, wr.clone()));
                        (g.bind("rr", r), g.bind("ri", i))
                    };
                    let (outs_a, outs_b) = if inverse {
                        let (tr, ti) = rot(g, br, bi);
                        (
                            (addf(ar.clone(), tr.clone()), addf(ai.clone(), ti.clone())),
                            (subf(ar, tr), subf(ai, ti)),
                        )
                    } else {
                        let (dr, di) = (
                            g.bind("dr", subf(ar.clone(), br.clone())),
                            g.bind("di", subf(ai.clone(), bi.clone())),
                        );
                        let sum = (addf(ar, br), addf(ai, bi));
                        (sum, rot(g, dr, di))
                    };
                    g.emit(Stmt::Store(z.re, swizzled(a.clone()), outs_a.0));
                    g.emit(Stmt::Store(z.im, swizzled(a), outs_a.1));
                    g.emit(Stmt::Store(z.re, swizzled(b.clone()), outs_b.0));
                    g.emit(Stmt::Store(z.im, swizzled(b), outs_b.1));
                    Ok(())
                },
                |_| Ok(()),
            )?;
        }
        g.emit(Stmt::Barrier);
        let next = if inverse {
            add(lh, Ex::I(1))
        } else {
            bin(Bin::SubI, lh, Ex::I(1))
        };
        g.set(lg_h, next);
        Ok(())
    })
}
