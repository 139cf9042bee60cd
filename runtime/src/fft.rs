//! The FFT long convolution, a library kernel of CPU bundles: a causal
//! convolution `y[l] = sum(t <= l) f[t] * x[l - t]` along one axis, for
//! every combination of the other ("channel") axes, in O(L log L) per
//! channel instead of the direct O(L * taps).
//!
//! Where the operands live is described by strides ([`ConvSpec`], size
//! expressions evaluated at run time), so any layout the compiler finds
//! works: `h[t, d] * g[b, l - t, d]` and `k[d, t] * u[d, b, l - t]` alike.
//! The transforms are `rustfft`'s (f64, planned once per bound length,
//! vectorised for the host at run time: 5.1x the hand-written radix-2
//! transform it replaced at 8192 points, `docs/figures.md`); the signal
//! and the filter go through one complex transform together (`x + i f`).

use crate::dim::Dim;
use rustfft::num_complex::Complex64 as C;
use rustfft::{Fft, FftPlanner};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One operand or the result: `base = const + sum(coef[c] * idx[c])` over
/// the channel axes, then `step` per position along the convolved axis.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Access {
    /// An index into the bundle's values.
    pub value: usize,
    pub offset: String,
    pub coefs: Vec<String>,
    pub step: String,
}

/// A causal FFT convolution kernel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConvSpec {
    /// Extents of the channel axes (row-major order of iteration).
    pub channels: Vec<String>,
    /// Length of the convolved axis, and the number of filter taps.
    pub len: String,
    pub taps: String,
    pub out: Access,
    pub filter: Access,
    pub signal: Access,
    /// The filter does not depend on the mixer's input (an implicit filter
    /// computed once per prepared buffers, a parameter): its spectra are
    /// computed at the first run and kept, and each call transforms only
    /// the signal, two channels per transform.
    #[serde(default)]
    pub filter_constant: bool,
}

struct Resolved {
    offset: i64,
    coefs: Vec<i64>,
    step: i64,
    value: usize,
}

type Sizes = BTreeMap<String, i64>;

fn eval(text: &str, bound: &Sizes) -> Result<i64, String> {
    Dim::parse(text)?.eval(bound)
}

fn resolve(a: &Access, bound: &Sizes) -> Result<Resolved, String> {
    Ok(Resolved {
        offset: eval(&a.offset, bound)?,
        coefs: a
            .coefs
            .iter()
            .map(|c| eval(c, bound))
            .collect::<Result<_, _>>()?,
        step: eval(&a.step, bound)?,
        value: a.value,
    })
}

#[derive(Clone, Copy)]
struct Ptrs(*const *mut f32);
// SAFETY: threads write disjoint channels of the output and only read the
// operands, which nothing writes during the kernel.
unsafe impl Send for Ptrs {}
unsafe impl Sync for Ptrs {}

/// A convolution resolved at bound sizes: layouts evaluated and twiddles
/// computed once, so repeated calls only transform.
pub struct Plan {
    channels: Vec<i64>,
    len: usize,
    taps: usize,
    out: Resolved,
    fil: Resolved,
    sig: Resolved,
    n: usize,
    /// The forward and inverse transforms of `n` points (the inverse does
    /// not scale).
    fwd: Arc<dyn Fft<f64>>,
    inv: Arc<dyn Fft<f64>>,
    filter_constant: bool,
    /// With a constant filter: each distinct filter's spectrum, and which
    /// one each filter base offset uses.
    spectra: std::sync::OnceLock<Spectra>,
}

/// Filter spectra, kept in f32 (the products are formed in f64).
struct Spectra {
    of_base: std::collections::HashMap<i64, usize>,
    spectra: Vec<Vec<(f32, f32)>>,
}

impl Plan {
    /// Resolves `spec` at `bound` (every size's value).
    pub fn new(spec: &ConvSpec, bound: &Sizes) -> Result<Plan, String> {
        let channels: Vec<i64> = spec
            .channels
            .iter()
            .map(|c| eval(c, bound))
            .collect::<Result<_, _>>()?;
        let len = eval(&spec.len, bound)?.max(0) as usize;
        let taps = (eval(&spec.taps, bound)?.max(0) as usize).min(len);
        let n = (len + taps.max(1) - 1).next_power_of_two();
        let mut planner = FftPlanner::new();
        Ok(Plan {
            channels,
            len,
            taps,
            out: resolve(&spec.out, bound)?,
            fil: resolve(&spec.filter, bound)?,
            sig: resolve(&spec.signal, bound)?,
            n,
            fwd: planner.plan_fft_forward(n),
            inv: planner.plan_fft_inverse(n),
            filter_constant: spec.filter_constant,
            spectra: std::sync::OnceLock::new(),
        })
    }

    /// The channel's index along each channel axis, for flat channel `c`.
    fn channel(&self, c: i64) -> Vec<i64> {
        let mut rem = c;
        let mut idx = vec![0i64; self.channels.len()];
        for k in (0..self.channels.len()).rev() {
            idx[k] = rem % self.channels[k];
            rem /= self.channels[k];
        }
        idx
    }

    /// The spectrum of every distinct filter (by base offset).
    ///
    /// # Safety
    /// As [`Plan::run`].
    unsafe fn filter_spectra(&self, buffers: *const *mut f32) -> Spectra {
        let total: i64 = self.channels.iter().product();
        let mut of_base = std::collections::HashMap::new();
        let mut spectra = Vec::new();
        // SAFETY: the caller's contract.
        let fp = unsafe { *buffers.add(self.fil.value) };
        for c in 0..total.max(0) {
            let base = base(&self.fil, &self.channel(c));
            if of_base.contains_key(&base) {
                continue;
            }
            let mut z = vec![C::new(0.0, 0.0); self.n];
            for (t, zt) in z.iter_mut().enumerate().take(self.taps) {
                // SAFETY: in range, as the spec's offsets are.
                zt.re = unsafe { *fp.offset((base + t as i64 * self.fil.step) as isize) } as f64;
            }
            self.fwd.process(&mut z);
            of_base.insert(base, spectra.len());
            spectra.push(z.iter().map(|c| (c.re as f32, c.im as f32)).collect());
        }
        Spectra { of_base, spectra }
    }

    /// Bytes of the cached filter spectra (0 until the first run).
    pub fn cache_bytes(&self) -> u64 {
        self.spectra
            .get()
            .map(|s| s.spectra.iter().map(|v| v.len() as u64 * 8).sum())
            .unwrap_or(0)
    }
}

/// The offset of channel `idx` in an operand.
fn base(r: &Resolved, idx: &[i64]) -> i64 {
    r.offset + r.coefs.iter().zip(idx).map(|(a, b)| a * b).sum::<i64>()
}

/// Runs the convolution on `buffers` (one pointer per value) at `bound`
/// (every size's value).
///
/// # Safety
/// As [`Plan::run`].
pub unsafe fn run(
    spec: &ConvSpec,
    bound: &Sizes,
    buffers: *const *mut f32,
    threads: usize,
) -> Result<(), String> {
    // SAFETY: the caller's contract.
    unsafe { Plan::new(spec, bound)?.run(buffers, threads) };
    Ok(())
}

impl Plan {
    /// Runs the convolution on `buffers` (one pointer per value).
    ///
    /// # Safety
    /// `buffers` must hold one pointer per bundle value, each to a buffer of
    /// the bound shape's element count, and the spec must address within
    /// them (the compiler derives it from subscripts the checker proved in
    /// range).
    pub unsafe fn run(&self, buffers: *const *mut f32, threads: usize) {
        if self.filter_constant {
            // SAFETY: the caller's contract.
            return unsafe { self.run_constant_filter(buffers, threads) };
        }
        let Plan {
            channels,
            len,
            taps,
            out,
            fil,
            sig,
            n,
            fwd,
            inv,
            ..
        } = self;
        let (len, taps, n) = (*len, *taps, *n);
        let total: i64 = channels.iter().product();
        if total <= 0 || len == 0 {
            return;
        }
        let ptrs = Ptrs(buffers);
        let workers = threads.clamp(1, total as usize);
        let chunk = (total + workers as i64 - 1) / workers as i64;
        std::thread::scope(|scope| {
            for w in 0..workers as i64 {
                let (lo, hi) = (w * chunk, ((w + 1) * chunk).min(total));
                let (channels, out, fil, sig) = (channels, out, fil, sig);
                let (fwd, inv) = (fwd.clone(), inv.clone());
                scope.spawn(move || {
                    let p = ptrs;
                    let mut z = vec![C::new(0.0, 0.0); n];
                    let mut y = vec![C::new(0.0, 0.0); n];
                    let scratch_len = fwd
                        .get_inplace_scratch_len()
                        .max(inv.get_inplace_scratch_len());
                    let mut scratch = vec![C::new(0.0, 0.0); scratch_len];
                    for c in lo..hi {
                        // The channel's index along each channel axis.
                        let mut rem = c;
                        let mut idx = vec![0i64; channels.len()];
                        for k in (0..channels.len()).rev() {
                            idx[k] = rem % channels[k];
                            rem /= channels[k];
                        }
                        let base = |r: &Resolved| {
                            r.offset + r.coefs.iter().zip(&idx).map(|(a, b)| a * b).sum::<i64>()
                        };
                        // SAFETY: the caller's contract; offsets come from
                        // in-range subscripts.
                        unsafe {
                            let (sb, fb, ob) = (base(sig), base(fil), base(out));
                            let (sp, fp, op) = (
                                *p.0.add(sig.value),
                                *p.0.add(fil.value),
                                *p.0.add(out.value),
                            );
                            for (t, zt) in z.iter_mut().enumerate() {
                                let x = if t < len {
                                    *sp.offset((sb + t as i64 * sig.step) as isize) as f64
                                } else {
                                    0.0
                                };
                                let f = if t < taps {
                                    *fp.offset((fb + t as i64 * fil.step) as isize) as f64
                                } else {
                                    0.0
                                };
                                *zt = C::new(x, f);
                            }
                            fwd.process_with_scratch(&mut z, &mut scratch);
                            // Separate X and F from Z = FFT(x + i f), multiply.
                            for k in 0..n {
                                let a = z[k];
                                let b = z[(n - k) % n];
                                let x = C::new(0.5 * (a.re + b.re), 0.5 * (a.im - b.im));
                                let f = C::new(0.5 * (a.im + b.im), -0.5 * (a.re - b.re));
                                y[k] = x * f;
                            }
                            inv.process_with_scratch(&mut y, &mut scratch);
                            for (l, v) in y.iter().take(len).enumerate() {
                                *op.offset((ob + l as i64 * out.step) as isize) =
                                    (v.re / n as f64) as f32;
                            }
                        }
                    }
                });
            }
        });
    }
}

impl Plan {
    /// [`Plan::run`] with the filters' spectra computed once: each call
    /// packs two channels' signals into one complex transform (`x_c + i
    /// x_c'`), separates their spectra, multiplies each by its filter's,
    /// and gets both outputs from one inverse transform (`y_c + i y_c'`,
    /// both real). One transform per channel instead of two.
    ///
    /// # Safety
    /// As [`Plan::run`].
    unsafe fn run_constant_filter(&self, buffers: *const *mut f32, threads: usize) {
        let (len, n) = (self.len, self.n);
        let total: i64 = self.channels.iter().product();
        if total <= 0 || len == 0 {
            return;
        }
        // SAFETY: the caller's contract.
        let spectra = self
            .spectra
            .get_or_init(|| unsafe { self.filter_spectra(buffers) });
        let ptrs = Ptrs(buffers);
        let pairs = (total + 1) / 2;
        let workers = threads.clamp(1, pairs as usize);
        let chunk = (pairs + workers as i64 - 1) / workers as i64;
        std::thread::scope(|scope| {
            for w in 0..workers as i64 {
                let (lo, hi) = (w * chunk, ((w + 1) * chunk).min(pairs));
                scope.spawn(move || {
                    let p = ptrs;
                    let mut z = vec![C::new(0.0, 0.0); n];
                    let mut y = vec![C::new(0.0, 0.0); n];
                    let scratch_len = self
                        .fwd
                        .get_inplace_scratch_len()
                        .max(self.inv.get_inplace_scratch_len());
                    let mut scratch = vec![C::new(0.0, 0.0); scratch_len];
                    for pair in lo..hi {
                        let cs: Vec<i64> = [2 * pair, 2 * pair + 1]
                            .into_iter()
                            .filter(|c| *c < total)
                            .collect();
                        let idx: Vec<Vec<i64>> = cs.iter().map(|c| self.channel(*c)).collect();
                        // SAFETY: the caller's contract; offsets come from
                        // in-range subscripts.
                        unsafe {
                            let (sp, op) = (*p.0.add(self.sig.value), *p.0.add(self.out.value));
                            for (t, zt) in z.iter_mut().enumerate() {
                                *zt = C::new(0.0, 0.0);
                                if t < len {
                                    let at = |i: &[i64]| {
                                        *sp.offset(
                                            (base(&self.sig, i) + t as i64 * self.sig.step)
                                                as isize,
                                        ) as f64
                                    };
                                    zt.re = at(&idx[0]);
                                    if let Some(i) = idx.get(1) {
                                        zt.im = at(i);
                                    }
                                }
                            }
                            self.fwd.process_with_scratch(&mut z, &mut scratch);
                            let f: Vec<&Vec<(f32, f32)>> = idx
                                .iter()
                                .map(|i| &spectra.spectra[spectra.of_base[&base(&self.fil, i)]])
                                .collect();
                            // X1 = (Z[k] + conj Z[n-k]) / 2, X2 = (Z[k] - conj Z[n-k]) / 2i;
                            // Y = X1 F1 + i X2 F2 (the inverse of each is real).
                            for (k, yk) in y.iter_mut().enumerate() {
                                let (a, b) = (z[k], z[(n - k) % n]);
                                let x1 = C::new(0.5 * (a.re + b.re), 0.5 * (a.im - b.im));
                                let x2 = C::new(0.5 * (a.im + b.im), -0.5 * (a.re - b.re));
                                let f1 = C::new(f[0][k].0 as f64, f[0][k].1 as f64);
                                let y1 = x1 * f1;
                                let y2 = match f.get(1) {
                                    Some(f2) => x2 * C::new(f2[k].0 as f64, f2[k].1 as f64),
                                    None => C::new(0.0, 0.0),
                                };
                                *yk = C::new(y1.re - y2.im, y1.im + y2.re);
                            }
                            self.inv.process_with_scratch(&mut y, &mut scratch);
                            for (c, i) in idx.iter().enumerate() {
                                let ob = base(&self.out, i);
                                for (l, v) in y.iter().take(len).enumerate() {
                                    let v = if c == 0 { v.re } else { v.im };
                                    *op.offset((ob + l as i64 * self.out.step) as isize) =
                                        (v / n as f64) as f32;
                                }
                            }
                        }
                    }
                });
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With a constant filter (its spectra cached at the first run, two
    /// channels per transform), three channels (a pair and a single)
    /// match the direct sum, on the first run and on the second.
    #[test]
    fn constant_filter_convolution_matches_the_direct_sum_twice() {
        let (len, taps, ch) = (45usize, 45usize, 3usize);
        let x: Vec<f32> = (0..ch * len)
            .map(|k| ((k * 7 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let f: Vec<f32> = (0..ch * taps)
            .map(|k| ((k * 5 % 13) as f32 - 6.0) / 4.0)
            .collect();
        let access = |value: usize| Access {
            value,
            offset: "0".into(),
            coefs: vec!["1".into()],
            step: ch.to_string(),
        };
        let spec = ConvSpec {
            channels: vec![ch.to_string()],
            len: len.to_string(),
            taps: taps.to_string(),
            out: access(2),
            filter: access(1),
            signal: access(0),
            filter_constant: true,
        };
        let plan = Plan::new(&spec, &Sizes::new()).unwrap();
        let mut bufs = [x.clone(), f.clone(), vec![f32::NAN; ch * len]];
        for round in 0..2 {
            bufs[2].iter_mut().for_each(|v| *v = f32::NAN);
            let ptrs: Vec<*mut f32> = bufs.iter_mut().map(|b| b.as_mut_ptr()).collect();
            unsafe { plan.run(ptrs.as_ptr(), 2) };
            for c in 0..ch {
                for l in 0..len {
                    let want: f64 = (0..=l.min(taps - 1))
                        .map(|t| f[ch * t + c] as f64 * x[ch * (l - t) + c] as f64)
                        .sum();
                    let got = bufs[2][ch * l + c] as f64;
                    assert!(
                        (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                        "round {round} c={c} l={l}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn fft_convolution_matches_the_direct_sum() {
        let (len, taps) = (37usize, 29usize);
        let x: Vec<f32> = (0..2 * len)
            .map(|k| ((k * 7 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let f: Vec<f32> = (0..2 * taps)
            .map(|k| ((k * 5 % 13) as f32 - 6.0) / 4.0)
            .collect();
        let mut y = vec![f32::NAN; 2 * len];
        // Two channels, interleaved: x[t, c], f[t, c], y[t, c].
        let access = |value: usize| Access {
            value,
            offset: "0".into(),
            coefs: vec!["1".into()],
            step: "2".into(),
        };
        let spec = ConvSpec {
            channels: vec!["2".into()],
            len: len.to_string(),
            taps: taps.to_string(),
            out: access(2),
            filter: access(1),
            signal: access(0),
            filter_constant: false,
        };
        let bound = Sizes::new();
        let mut bufs = [x.clone(), f.clone(), y.clone()];
        let ptrs: Vec<*mut f32> = bufs.iter_mut().map(|b| b.as_mut_ptr()).collect();
        unsafe { run(&spec, &bound, ptrs.as_ptr(), 2) }.unwrap();
        y.clone_from(&bufs[2]);
        for c in 0..2 {
            for l in 0..len {
                let want: f64 = (0..=l.min(taps - 1))
                    .map(|t| f[2 * t + c] as f64 * x[2 * (l - t) + c] as f64)
                    .sum();
                let got = y[2 * l + c] as f64;
                assert!(
                    (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                    "c={c} l={l}: {got} vs {want}"
                );
            }
        }
    }
}
