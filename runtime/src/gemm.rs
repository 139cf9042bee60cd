//! Matrix products, a library kernel of CPU bundles: `out = alpha * sum(k)
//! a * b` for a contraction whose operands are single reads (projections,
//! output projections), through `matrixmultiply`'s `sgemm` (packed,
//! register-blocked, vectorised for the host at run time, threaded).
//!
//! Where the operands live is described by strides per axis ([`GemmSpec`],
//! size expressions evaluated at run time), so any layout the compiler
//! finds works. At run time adjacent axes of one role (rows, columns,
//! reduction) whose strides line up in every operand are merged into one
//! (`[B, L]` rows of a row-major `x[b, l, d]` are one axis of `B * L`
//! rows); axes that do not merge, and the block-uniform ones (a head read
//! by both operands), become a loop of products.

use crate::dim::Dim;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One axis of the product: its extent, and its stride in the result and
/// in each operand (`0` where the operand does not read it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Axis {
    pub extent: String,
    pub out: String,
    pub a: String,
    pub b: String,
}

/// `out[.., m, n] = alpha * sum(k) a[.., m, k] * b[.., k, n]` over axes
/// of each role, in row-major order of iteration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GemmSpec {
    /// Value indices of the result and the operands.
    pub out: usize,
    pub a: usize,
    pub b: usize,
    /// Element offsets of the operands (constant subscripts).
    pub a_offset: String,
    pub b_offset: String,
    pub alpha: f32,
    pub rows: Vec<Axis>,
    pub cols: Vec<Axis>,
    pub reduce: Vec<Axis>,
    /// Axes the same for a whole product (batch, head).
    pub batch: Vec<Axis>,
}

/// An axis at bound sizes: extent, then strides in out, a, b.
type Bound = (i64, [i64; 3]);

fn eval(text: &str, sizes: &BTreeMap<String, i64>) -> Result<i64, String> {
    Dim::parse(text)?.eval(sizes)
}

fn bind(axes: &[Axis], sizes: &BTreeMap<String, i64>) -> Result<Vec<Bound>, String> {
    axes.iter()
        .map(|x| {
            Ok((
                eval(&x.extent, sizes)?,
                [eval(&x.out, sizes)?, eval(&x.a, sizes)?, eval(&x.b, sizes)?],
            ))
        })
        .collect()
}

/// Merges adjacent axes whose strides line up in every operand (outer =
/// inner * inner extent); axes of extent 1 vanish. Returns the innermost
/// (merged) axis and the outer ones that stay separate.
fn merge(axes: Vec<Bound>) -> (Bound, Vec<Bound>) {
    let mut out: Vec<Bound> = Vec::new();
    for (n, st) in axes.into_iter().filter(|(n, _)| *n != 1) {
        if let Some((m, inner)) = out.last_mut() {
            if (0..3).all(|k| st[k] == inner[k] * *m) {
                *m *= n;
                continue;
            }
        }
        out.push((n, st));
    }
    let inner = out.pop().unwrap_or((1, [0, 0, 0]));
    (inner, out)
}

/// Runs `spec` on `bufs` (one pointer per bundle value) at `sizes`.
///
/// # Safety
/// `bufs` must hold a pointer for every value the spec names, each to a
/// buffer that every element the strides address at `sizes` lies in, and
/// the result's buffer must not overlap the operands'.
pub unsafe fn run(
    spec: &GemmSpec,
    sizes: &BTreeMap<String, i64>,
    bufs: *const *mut f32,
) -> Result<(), String> {
    let (m, mut loops) = merge(bind(&spec.rows, sizes)?);
    let (n, outer_n) = merge(bind(&spec.cols, sizes)?);
    let (k, outer_k) = merge(bind(&spec.reduce, sizes)?);
    loops.extend(outer_n);
    loops.extend(
        bind(&spec.batch, sizes)?
            .into_iter()
            .filter(|(n, _)| *n != 1),
    );
    let (a0, b0) = (eval(&spec.a_offset, sizes)?, eval(&spec.b_offset, sizes)?);
    if [m.0, n.0, k.0].iter().any(|x| *x < 0) || loops.iter().any(|(x, _)| *x < 0) {
        return Err("a matrix product with a negative extent".into());
    }
    let out = *bufs.add(spec.out);
    let a = *bufs.add(spec.a) as *const f32;
    let b = *bufs.add(spec.b) as *const f32;
    let total: i64 = loops.iter().map(|(x, _)| *x).product();
    // Reduction axes that do not merge are summed product by product.
    let ktotal: i64 = outer_k.iter().map(|(x, _)| *x).product();
    for flat in 0..total {
        let mut rest = flat;
        let mut base = [0i64, a0, b0];
        for (x, st) in loops.iter().rev() {
            let i = rest % x;
            rest /= x;
            for j in 0..3 {
                base[j] += i * st[j];
            }
        }
        for kflat in 0..ktotal {
            let mut rest = kflat;
            let mut kb = base;
            for (x, st) in outer_k.iter().rev() {
                let i = rest % x;
                rest /= x;
                for j in 0..3 {
                    kb[j] += i * st[j];
                }
            }
            matrixmultiply::sgemm(
                m.0 as usize,
                k.0 as usize,
                n.0 as usize,
                spec.alpha,
                a.offset(kb[1] as isize),
                m.1[1] as isize,
                k.1[1] as isize,
                b.offset(kb[2] as isize),
                k.1[2] as isize,
                n.1[2] as isize,
                if kflat == 0 { 0.0 } else { 1.0 },
                out.offset(kb[0] as isize),
                m.1[0] as isize,
                n.1[0] as isize,
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn axis(extent: i64, out: i64, a: i64, b: i64) -> Axis {
        Axis {
            extent: extent.to_string(),
            out: out.to_string(),
            a: a.to_string(),
            b: b.to_string(),
        }
    }

    /// `y[b, l, h, e] = sum(d) x[b, l, d] * w[d, h, e]` against the
    /// definition: rows `b, l` merge, columns `h, e` merge.
    #[test]
    fn strided_products_match_the_definition() {
        let (bb, l, d, h, e) = (2i64, 5, 7, 3, 4);
        let x: Vec<f32> = (0..bb * l * d).map(|i| (i % 11) as f32 - 5.0).collect();
        let w: Vec<f32> = (0..d * h * e).map(|i| (i % 7) as f32 * 0.5 - 1.0).collect();
        let mut y = vec![f32::NAN; (bb * l * h * e) as usize];
        let spec = GemmSpec {
            out: 2,
            a: 0,
            b: 1,
            a_offset: "0".into(),
            b_offset: "0".into(),
            alpha: 1.0,
            rows: vec![axis(bb, l * h * e, l * d, 0), axis(l, h * e, d, 0)],
            cols: vec![axis(h, e, 0, e), axis(e, 1, 0, 1)],
            reduce: vec![axis(d, 0, 1, h * e)],
            batch: vec![],
        };
        let mut bufs = [
            x.as_ptr() as *mut f32,
            w.as_ptr() as *mut f32,
            y.as_mut_ptr(),
        ];
        unsafe { run(&spec, &BTreeMap::new(), bufs.as_mut_ptr()) }.unwrap();
        for (r, row) in y.chunks((h * e) as usize).enumerate() {
            for (c, got) in row.iter().enumerate() {
                let want: f32 = (0..d as usize)
                    .map(|k| x[r * d as usize + k] * w[k * (h * e) as usize + c])
                    .sum();
                assert!((got - want).abs() < 1e-4, "({r}, {c}): {got} vs {want}");
            }
        }
        // A head read by both operands is a loop of products:
        // `o[h, i, j] = sum(e) q[i, h, e] * k[j, h, e]`.
        let (n, hh, ee) = (6i64, 2, 3);
        let q: Vec<f32> = (0..n * hh * ee).map(|i| (i % 5) as f32).collect();
        let k: Vec<f32> = (0..n * hh * ee).map(|i| (i % 3) as f32 - 1.0).collect();
        let mut o = vec![f32::NAN; (hh * n * n) as usize];
        let spec = GemmSpec {
            out: 2,
            a: 0,
            b: 1,
            a_offset: "0".into(),
            b_offset: "0".into(),
            alpha: 0.5,
            rows: vec![axis(n, n, hh * ee, 0)],
            cols: vec![axis(n, 1, 0, hh * ee)],
            reduce: vec![axis(ee, 0, 1, 1)],
            batch: vec![axis(hh, n * n, ee, ee)],
        };
        let mut bufs = [
            q.as_ptr() as *mut f32,
            k.as_ptr() as *mut f32,
            o.as_mut_ptr(),
        ];
        unsafe { run(&spec, &BTreeMap::new(), bufs.as_mut_ptr()) }.unwrap();
        for h in 0..hh {
            for i in 0..n {
                for j in 0..n {
                    let want: f32 = 0.5
                        * (0..ee)
                            .map(|e| {
                                q[(i * hh * ee + h * ee + e) as usize]
                                    * k[(j * hh * ee + h * ee + e) as usize]
                            })
                            .sum::<f32>();
                    let got = o[(h * n * n + i * n + j) as usize];
                    assert!(
                        (got - want).abs() < 1e-4,
                        "({h}, {i}, {j}): {got} vs {want}"
                    );
                }
            }
        }
    }
}
