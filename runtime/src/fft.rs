//! The FFT long convolution, a library kernel of CPU bundles: a causal
//! convolution `y[l] = sum(t <= l) f[t] * x[l - t]` along one axis, for
//! every combination of the other ("channel") axes, in O(L log L) per
//! channel instead of the direct O(L * taps).
//!
//! Where the operands live is described by strides ([`ConvSpec`], size
//! expressions evaluated at run time), so any layout the compiler finds
//! works: `h[t, d] * g[b, l - t, d]` and `k[d, t] * u[d, b, l - t]` alike.
//! The transform is an iterative radix-2 FFT in f64; the signal and the
//! filter go through one complex transform together (`x + i f`).

use crate::dim::Dim;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
    tw: Vec<(f64, f64)>,
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
        Ok(Plan {
            channels,
            len,
            taps,
            out: resolve(&spec.out, bound)?,
            fil: resolve(&spec.filter, bound)?,
            sig: resolve(&spec.signal, bound)?,
            n,
            tw: twiddles(n),
        })
    }
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
        let Plan {
            channels,
            len,
            taps,
            out,
            fil,
            sig,
            n,
            tw,
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
                let (channels, out, fil, sig, tw) = (channels, out, fil, sig, tw);
                scope.spawn(move || {
                    let p = ptrs;
                    let mut z = vec![(0.0f64, 0.0f64); n];
                    let mut y = vec![(0.0f64, 0.0f64); n];
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
                                *zt = (x, f);
                            }
                            fft(&mut z, tw, false);
                            // Separate X and F from Z = FFT(x + i f), multiply.
                            for k in 0..n {
                                let a = z[k];
                                let b = z[(n - k) % n];
                                let x = (0.5 * (a.0 + b.0), 0.5 * (a.1 - b.1));
                                let f = (0.5 * (a.1 + b.1), -0.5 * (a.0 - b.0));
                                y[k] = (x.0 * f.0 - x.1 * f.1, x.0 * f.1 + x.1 * f.0);
                            }
                            fft(&mut y, tw, true);
                            for (l, v) in y.iter().take(len).enumerate() {
                                *op.offset((ob + l as i64 * out.step) as isize) =
                                    (v.0 / n as f64) as f32;
                            }
                        }
                    }
                });
            }
        });
    }
}

/// `exp(-2 pi i k / n)` for `k < n / 2`.
fn twiddles(n: usize) -> Vec<(f64, f64)> {
    (0..n / 2)
        .map(|k| {
            let a = -2.0 * std::f64::consts::PI * k as f64 / n as f64;
            (a.cos(), a.sin())
        })
        .collect()
}

/// In-place iterative radix-2 FFT (`n` a power of two); `inverse` uses the
/// conjugate twiddles and does not scale.
fn fft(a: &mut [(f64, f64)], tw: &[(f64, f64)], inverse: bool) {
    let n = a.len();
    if n <= 1 {
        return;
    }
    let bits = n.trailing_zeros();
    for i in 0..n {
        let j = i.reverse_bits() >> (usize::BITS - bits);
        if i < j {
            a.swap(i, j);
        }
    }
    let mut size = 2;
    while size <= n {
        let half = size / 2;
        let stride = n / size;
        for start in (0..n).step_by(size) {
            for k in 0..half {
                let (wr, wi) = tw[k * stride];
                let wi = if inverse { -wi } else { wi };
                let (ur, ui) = a[start + k];
                let (vr, vi) = a[start + k + half];
                let (tr, ti) = (vr * wr - vi * wi, vr * wi + vi * wr);
                a[start + k] = (ur + tr, ui + ti);
                a[start + k + half] = (ur - tr, ui - ti);
            }
        }
        size *= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
