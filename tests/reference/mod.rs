//! Independent f64 reference implementations of std/attention.mix and
//! std/hyena.mix. They are written as plain nested loops straight from the
//! math (no FFT, no code shared with the compiler) so that a compiled kernel
//! that agrees with them is very unlikely to share a bug with them.
//! All arrays are flat row-major (C order) slices; shapes are in the comments.
// Included as a module of the integration-test binary, where not every
// function is necessarily used by every test.
#![allow(dead_code)]

use std::f64::consts::PI;

/// ||a - b||_2 / ||b||_2. Returns +inf when the lengths differ or anything is
/// NaN (or infinite), so a broken result can never slip under a tolerance.
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() || a.iter().chain(b).any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    // Identical (e.g. both all-zero) is a perfect match, not 0/0 = NaN.
    if num == 0.0 {
        0.0
    } else {
        (num / den).sqrt()
    }
}

/// Causal multi-head softmax attention (std/attention.mix).
/// x: [B,L,D]; wq, wk, wv: [D,H,E] with E = D/H; wo: [H,E,D]. Returns [B,L,D].
#[allow(clippy::too_many_arguments)]
pub fn causal_attention(
    x: &[f64],
    b: usize,
    l: usize,
    d: usize,
    h: usize,
    wq: &[f64],
    wk: &[f64],
    wv: &[f64],
    wo: &[f64],
) -> Vec<f64> {
    assert!(h > 0 && d.is_multiple_of(h), "D must be divisible by H");
    let e = d / h;
    let he = h * e; // (h, e) flattened; equals D
    assert_eq!(x.len(), b * l * d);
    for w in [wq, wk, wv, wo] {
        assert_eq!(w.len(), d * he);
    }
    let scale = (e as f64).powf(-0.5);

    // q/k/v[b, i, h, e] = sum(d) x[b, i, d] * w[d, h, e]; stored as [B,L,H,E].
    let project = |w: &[f64]| {
        let mut out = vec![0.0; b * l * he];
        for row in 0..b * l {
            for c in 0..he {
                out[row * he + c] = (0..d).map(|k| x[row * d + k] * w[k * he + c]).sum();
            }
        }
        out
    };
    let (q, k, v) = (project(wq), project(wk), project(wv));
    let at =
        |t: &[f64], bi: usize, i: usize, hh: usize, ee: usize| t[((bi * l + i) * h + hh) * e + ee];

    let mut y = vec![0.0; b * l * d];
    let mut s = vec![0.0; l];
    let mut o = vec![0.0; he];
    for bi in 0..b {
        for i in 0..l {
            o.fill(0.0);
            for hh in 0..h {
                // Causal mask: only keys j <= i take part; masked keys get
                // exactly zero weight (they are never summed at all).
                for (j, sj) in s.iter_mut().enumerate().take(i + 1) {
                    let dot: f64 = (0..e)
                        .map(|ee| at(&q, bi, i, hh, ee) * at(&k, bi, j, hh, ee))
                        .sum();
                    *sj = dot * scale;
                }
                // Stable softmax: subtract the row max before exponentiating.
                let m = s[..=i].iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let mut z = 0.0;
                for sj in &mut s[..=i] {
                    *sj = (*sj - m).exp();
                    z += *sj;
                }
                for (j, sj) in s[..=i].iter().enumerate() {
                    let p = sj / z;
                    for ee in 0..e {
                        o[hh * e + ee] += p * at(&v, bi, j, hh, ee);
                    }
                }
            }
            // y[b, i, d] = sum(h, e) o[b, i, h, e] * wo[h, e, d]
            for dd in 0..d {
                y[(bi * l + i) * d + dd] = (0..he).map(|c| o[c] * wo[c * d + dd]).sum();
            }
        }
    }
    y
}

/// Every parameter and config of std/hyena.mix (mixer and filter).
/// Mixer: w_in [D,3,D] (channel c: 0 = x0, 1 = x1, 2 = v), b_in [3,D],
/// w_short [3,D,3] = [c, d, tap t] where tap t reads position l - t,
/// b_short [3,D], bias [D] (skip term of the long conv), w_out [D,D], b_out [D].
/// Filter MLP: w1 [emb,order], b1 [order], w2/w3 [order,order], b2/b3 [order],
/// w4 [order,D] (no bias), freq [order] (one Sin frequency shared by 3 layers).
pub struct HyenaParams<'a> {
    pub w_in: &'a [f64],
    pub b_in: &'a [f64],
    pub w_short: &'a [f64],
    pub b_short: &'a [f64],
    pub bias: &'a [f64],
    pub w_out: &'a [f64],
    pub b_out: &'a [f64],
    pub w1: &'a [f64],
    pub b1: &'a [f64],
    pub w2: &'a [f64],
    pub b2: &'a [f64],
    pub w3: &'a [f64],
    pub b3: &'a [f64],
    pub w4: &'a [f64],
    pub freq: &'a [f64],
    /// Filter configs; the .mix defaults are 33, 64, 0.3, 1.5, 0.01.
    pub emb: usize,
    pub order: usize,
    pub fast: f64,
    pub slow: f64,
    pub target: f64,
}

/// The implicit long filter h: [L, D] (hyena_filter in std/hyena.mix).
pub fn hyena_filter(p: &HyenaParams, l: usize, d: usize) -> Vec<f64> {
    let (emb, order) = (p.emb, p.order);
    assert!(emb >= 1, "emb must hold at least the t feature");
    let nb = (emb - 1) / 2;
    let (oo, od) = (order * order, order * d);
    for (v, n) in [(p.w1, emb * order), (p.w2, oo), (p.w3, oo), (p.w4, od)] {
        assert_eq!(v.len(), n);
    }
    for v in [p.b1, p.b2, p.b3, p.freq] {
        assert_eq!(v.len(), order);
    }
    // Float max(.., 1) so that nb = 0 or 1 and D = 1 / L = 1 never underflow.
    let band: Vec<f64> = (0..nb)
        .map(|k| 1e-4 + k as f64 * (nb as f64 - 1.0 - 1e-4) / (nb as f64 - 1.0).max(1.0))
        .collect();
    let ln_t = p.target.ln();
    let (slow_rate, fast_rate) = (ln_t / p.slow, ln_t / p.fast);
    let delta: Vec<f64> = (0..d)
        .map(|c| slow_rate + c as f64 * (fast_rate - slow_rate) / (d as f64 - 1.0).max(1.0))
        .collect();
    // One Linear -> Sin layer over order inputs (layers 2 and 3).
    let dense_sin = |a: &[f64], w: &[f64], bias: &[f64]| -> Vec<f64> {
        (0..order)
            .map(|o| {
                let pre: f64 = (0..order).map(|q| a[q] * w[q * order + o]).sum();
                (p.freq[o] * (pre + bias[o])).sin()
            })
            .collect()
    };

    let mut h = vec![0.0; l * d];
    for li in 0..l {
        let t = li as f64 / (l as f64 - 1.0).max(1.0);
        // Layer 1 reads the features in the order [t, cos(f_k w), -sin(f_k w)].
        let a1: Vec<f64> = (0..order)
            .map(|o| {
                let mut pre = t * p.w1[o];
                for (k, f) in band.iter().enumerate() {
                    let arg = f * 2.0 * PI * li as f64 / l as f64;
                    pre += arg.cos() * p.w1[(1 + k) * order + o];
                    pre += -arg.sin() * p.w1[(1 + nb + k) * order + o];
                }
                (p.freq[o] * (pre + p.b1[o])).sin()
            })
            .collect();
        let a2 = dense_sin(&a1, p.w2, p.b2);
        let a3 = dense_sin(&a2, p.w3, p.b3);
        for c in 0..d {
            let lin: f64 = (0..order).map(|o| a3[o] * p.w4[o * d + c]).sum();
            // Exponential decay window, faster for later channels.
            h[li * d + c] = lin * (-t * delta[c].abs()).exp();
        }
    }
    h
}

/// The order-2 Hyena mixer (std/hyena.mix). x: [B,L,D]. Returns [B,L,D].
pub fn hyena(x: &[f64], b: usize, l: usize, d: usize, p: &HyenaParams) -> Vec<f64> {
    let (cd, bld) = (3 * d, b * l * d); // cd: (c, d) flattened
    let sizes = [
        (x, bld),
        (p.w_in, d * cd),
        (p.w_short, cd * 3),
        (p.w_out, d * d),
    ];
    let sizes2 = [(p.b_in, cd), (p.b_short, cd), (p.bias, d), (p.b_out, d)];
    for (v, n) in sizes.into_iter().chain(sizes2) {
        assert_eq!(v.len(), n);
    }

    // u[b, l, c, d] = (sum(k) x[b, l, k] * w_in[k, c, d]) + b_in[c, d]
    let mut u = vec![0.0; b * l * cd];
    for row in 0..b * l {
        for j in 0..cd {
            let acc: f64 = (0..d).map(|k| x[row * d + k] * p.w_in[k * cd + j]).sum();
            u[row * cd + j] = acc + p.b_in[j];
        }
    }

    // Depthwise causal short conv; tap t reads l - t and only t <= l counts
    // (zero padding before the sequence start). Then + b_short.
    let mut sc = vec![0.0; b * l * cd];
    for bi in 0..b {
        for li in 0..l {
            for j in 0..cd {
                let acc: f64 = (0..3.min(li + 1))
                    .map(|t| p.w_short[j * 3 + t] * u[(bi * l + li - t) * cd + j])
                    .sum();
                sc[(bi * l + li) * cd + j] = acc + p.b_short[j];
            }
        }
    }
    let chan = |bi: usize, li: usize, c: usize, dd: usize| sc[(bi * l + li) * cd + c * d + dd];

    let hf = hyena_filter(p, l, d);
    let mut y = vec![0.0; b * l * d];
    let mut gated = vec![0.0; d];
    for bi in 0..b {
        // Order 2: value (channel 2) gated by x1 (channel 1), long conv, then x0.
        let g = |li: usize, dd: usize| chan(bi, li, 2, dd) * chan(bi, li, 1, dd);
        for li in 0..l {
            for (dd, gd) in gated.iter_mut().enumerate() {
                // Causal long convolution sum_{t<=l} h[t] g[l-t], plus the skip term.
                let conv: f64 = (0..=li).map(|t| hf[t * d + dd] * g(li - t, dd)).sum();
                let z = conv + g(li, dd) * p.bias[dd];
                *gd = chan(bi, li, 0, dd) * z;
            }
            for dd in 0..d {
                let acc: f64 = (0..d).map(|k| gated[k] * p.w_out[k * d + dd]).sum();
                y[(bi * l + li) * d + dd] = acc + p.b_out[dd];
            }
        }
    }
    y
}

#[cfg(test)]
mod self_tests {
    use super::*;

    /// Deterministic pseudo-random values in [-1, 1) (no external crates).
    fn rand_vec(n: usize, seed: u64) -> Vec<f64> {
        let step = |s: u64| {
            s.wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407)
        };
        let mut s = step(seed);
        (0..n)
            .map(|_| {
                s = step(s);
                ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn rel_err_basics() {
        assert_eq!(rel_err(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert_eq!(rel_err(&[3.0, 4.0], &[0.0, 0.0]), f64::INFINITY);
        assert_eq!(rel_err(&[f64::INFINITY], &[f64::INFINITY]), f64::INFINITY);
        assert!((rel_err(&[1.0, 0.0], &[2.0, 0.0]) - 0.5).abs() < 1e-15);
        assert_eq!(rel_err(&[1.0], &[1.0, 2.0]), f64::INFINITY);
        assert_eq!(rel_err(&[f64::NAN], &[1.0]), f64::INFINITY);
    }

    // Softmax over a single key is exactly 1, so attention is x·wv·wo.
    #[test]
    fn attention_single_position_is_value_projection() {
        let (b, l, d, h) = (2, 1, 4, 2);
        let x = rand_vec(b * l * d, 1);
        let w: Vec<Vec<f64>> = (2..6).map(|s| rand_vec(d * d, s)).collect();
        let (wv, wo) = (&w[2], &w[3]);
        let y = causal_attention(&x, b, l, d, h, &w[0], &w[1], wv, wo);
        let mut expect = vec![0.0; b * d];
        for r in 0..b {
            for dd in 0..d {
                for c in 0..d {
                    let v: f64 = (0..d).map(|k| x[r * d + k] * wv[k * d + c]).sum();
                    expect[r * d + dd] += v * wo[c * d + dd];
                }
            }
        }
        assert!(rel_err(&y, &expect) < 1e-14);
    }

    // With wq = 0 every score is 0: position i averages v over keys 0..=i.
    #[test]
    fn attention_zero_queries_average_the_prefix() {
        let (b, l, d, h) = (1, 5, 2, 1);
        let x = rand_vec(l * d, 6);
        let ident = [1.0, 0.0, 0.0, 1.0];
        let y = causal_attention(&x, b, l, d, h, &[0.0; 4], &rand_vec(4, 7), &ident, &ident);
        for i in 0..l {
            for dd in 0..d {
                let mean = (0..=i).map(|j| x[j * d + dd]).sum::<f64>() / (i + 1) as f64;
                assert!((y[i * d + dd] - mean).abs() < 1e-14);
            }
        }
    }

    #[test]
    fn attention_is_causal() {
        let (b, l, d, h) = (2, 6, 8, 2);
        let x = rand_vec(b * l * d, 8);
        let w: Vec<Vec<f64>> = (9..13).map(|s| rand_vec(d * d, s)).collect();
        let y = causal_attention(&x, b, l, d, h, &w[0], &w[1], &w[2], &w[3]);
        let mut x2 = x.clone();
        for bi in 0..b {
            for dd in 0..d {
                x2[(bi * l + l - 1) * d + dd] += 3.0;
            }
        }
        let y2 = causal_attention(&x2, b, l, d, h, &w[0], &w[1], &w[2], &w[3]);
        for bi in 0..b {
            let early = (bi * l) * d..(bi * l + l - 1) * d;
            assert_eq!(&y[early.clone()], &y2[early]);
            assert_ne!(y[(bi * l + l - 1) * d], y2[(bi * l + l - 1) * d]);
        }
    }

    /// Owned storage for HyenaParams in tests, in struct field order.
    struct Owned(Vec<Vec<f64>>);

    #[rustfmt::skip]
    fn random_params(d: usize, emb: usize, order: usize) -> Owned {
        let (oo, dd) = (order * order, 3 * d);
        let sizes = [d * dd, dd, dd * 3, dd, d, d * d, d, emb * order, order, oo, order, oo, order, order * d];
        let mut v: Vec<Vec<f64>> = sizes.iter().zip(20..).map(|(&n, s)| rand_vec(n, s)).collect();
        v.push(vec![1.0; order]); // freq
        Owned(v)
    }

    #[rustfmt::skip]
    fn params(o: &Owned, emb: usize, order: usize) -> HyenaParams<'_> {
        let v = &o.0;
        HyenaParams {
            w_in: &v[0], b_in: &v[1], w_short: &v[2], b_short: &v[3], bias: &v[4],
            w_out: &v[5], b_out: &v[6], w1: &v[7], b1: &v[8], w2: &v[9], b2: &v[10],
            w3: &v[11], b3: &v[12], w4: &v[13], freq: &v[14],
            emb, order, fast: 0.3, slow: 1.5, target: 0.01,
        }
    }

    // Zero weights with biases pi/2 make every Sin layer output 1, so
    // h[l, d] = order * exp(-t |delta_d|): it must decay monotonically, and at
    // t = 1 channel 0 reaches target^(1/slow), channel D-1 target^(1/fast).
    #[test]
    fn filter_decays_as_designed() {
        let (l, d, emb, order) = (7, 4, 5, 3);
        let mut o = random_params(d, emb, order);
        for i in [7, 9, 11] {
            o.0[i].fill(0.0);
        }
        for i in [8, 10, 12] {
            o.0[i].fill(PI / 2.0);
        }
        o.0[13].fill(1.0);
        let h = hyena_filter(&params(&o, emb, order), l, d);
        let n = order as f64;
        for c in 0..d {
            assert!((h[c] - n).abs() < 1e-12);
            for li in 1..l {
                assert!(h[li * d + c] < h[(li - 1) * d + c]);
            }
        }
        assert!((h[(l - 1) * d] - n * 0.01f64.powf(1.0 / 1.5)).abs() < 1e-12);
        assert!((h[(l - 1) * d + d - 1] - n * 0.01f64.powf(1.0 / 0.3)).abs() < 1e-12);
    }

    #[test]
    fn hyena_is_causal() {
        let (b, l, d) = (2, 6, 4);
        let o = random_params(d, 33, 8);
        let p = params(&o, 33, 8);
        let x = rand_vec(b * l * d, 40);
        let y = hyena(&x, b, l, d, &p);
        let mut x2 = x.clone();
        x2[(l - 1) * d] += 1.0;
        let y2 = hyena(&x2, b, l, d, &p);
        assert_eq!(&y[..(l - 1) * d], &y2[..(l - 1) * d]);
        assert_ne!(y[(l - 1) * d..l * d], y2[(l - 1) * d..l * d]);
        assert_eq!(&y[l * d..], &y2[l * d..]); // other batch untouched
    }

    // D = 1, w_in = 1, zero biases, only short tap 1 (reads l - 1): every
    // channel is x shifted by one, so y[0] = b_out and
    // y[1] = x0 * (h[0] x0^2 + bias x0^2) * w_out (+ b_out), by hand.
    #[test]
    fn hyena_hand_computed_tiny_case() {
        let (l, d, emb, order) = (2, 1, 3, 2);
        let mut o = random_params(d, emb, order);
        o.0[0] = vec![1.0; 3];
        o.0[1] = vec![0.0; 3];
        o.0[2] = vec![0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0];
        o.0[3] = vec![0.0; 3];
        let (bias, w_out, b_out) = (o.0[4][0], o.0[5][0], o.0[6][0]);
        let p = params(&o, emb, order);
        let h = hyena_filter(&p, l, d);
        let x = [0.7, -0.4];
        let y = hyena(&x, 1, l, d, &p);
        let x0 = x[0];
        assert_eq!(y[0], b_out);
        let expect = x0 * (h[0] * x0 * x0 + bias * x0 * x0) * w_out + b_out;
        assert!((y[1] - expect).abs() < 1e-14);
    }
}
