//! Host-side tensors and deterministic parameter initialisation.
//!
//! The interpreter and every runner draw parameters and inputs from here, so
//! a given `(seed, name)` produces bit-identical values on every path and
//! outputs can be compared across back ends. This crate is pure Rust and
//! must stay free of compiler dependencies (no LLVM, no MLIR): the slim
//! runner links it.

use serde::{Deserialize, Serialize};

pub mod bundle;
pub mod calibrate;
pub mod cpu;
pub mod cuda;
pub mod device;
pub mod dim;
pub mod dtype;
pub mod fft;
pub mod gemm;
pub mod gpu;
pub mod runner;

pub use dtype::Dtype;

/// A dense row-major tensor of `f64`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl Tensor {
    pub fn zeros(shape: &[usize]) -> Tensor {
        Tensor {
            shape: shape.to_vec(),
            data: vec![0.0; shape.iter().product()],
        }
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Row-major strides.
    pub fn strides(&self) -> Vec<usize> {
        let mut s = vec![1; self.shape.len()];
        for k in (0..self.shape.len().saturating_sub(1)).rev() {
            s[k] = s[k + 1] * self.shape[k + 1];
        }
        s
    }

    /// Summary statistics printed by `mixc run`.
    pub fn stats(&self) -> Stats {
        let n = self.data.len().max(1) as f64;
        let mean = self.data.iter().sum::<f64>() / n;
        let var = self
            .data
            .iter()
            .map(|x| (x - mean) * (x - mean))
            .sum::<f64>()
            / n;
        Stats {
            mean,
            std: var.sqrt(),
            checksum: checksum(&self.data),
            nonfinite: self.data.iter().filter(|x| !x.is_finite()).count(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Stats {
    pub mean: f64,
    pub std: f64,
    pub checksum: f64,
    pub nonfinite: usize,
}

/// A position-weighted sum: sensitive to values and to where they are, so
/// a transposed or shifted output changes it.
pub fn checksum(data: &[f64]) -> f64 {
    data.iter()
        .enumerate()
        .map(|(k, x)| x * (1.0 + (k % 101) as f64 / 101.0))
        .sum()
}

/// SplitMix64: tiny, fast, and good enough for initialisation. Seeded per
/// tensor from `(seed, name)`, so adding a parameter does not change others.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    /// The stream for the tensor called `name` under `seed`.
    pub fn for_tensor(seed: u64, name: &str) -> Rng {
        // FNV-1a over the name, mixed with the seed.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        let mut r = Rng::new(h ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), 53 bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box-Muller; one draw per call, for simplicity).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// How to fill a tensor, with its arguments already evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Fill {
    Normal { mean: f64, std: f64 },
    Uniform { lo: f64, hi: f64 },
    Constant(f64),
}

/// Fills a tensor of `shape` deterministically from `(seed, name)`.
pub fn init_tensor(shape: &[usize], fill: Fill, seed: u64, name: &str) -> Tensor {
    let mut t = Tensor::zeros(shape);
    let mut rng = Rng::for_tensor(seed, name);
    for x in &mut t.data {
        *x = match fill {
            Fill::Normal { mean, std } => mean + std * rng.normal(),
            Fill::Uniform { lo, hi } => lo + (hi - lo) * rng.uniform(),
            Fill::Constant(c) => c,
        };
    }
    t
}

/// Relative error `||a - b|| / ||b||`; infinite on NaN or a length mismatch.
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() || a.iter().chain(b).any(|x| x.is_nan()) {
        return f64::INFINITY;
    }
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    if num == 0.0 {
        0.0
    } else {
        (num / den).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_deterministic_and_distinct() {
        let a = init_tensor(
            &[4, 5],
            Fill::Normal {
                mean: 0.0,
                std: 1.0,
            },
            7,
            "wq",
        );
        let b = init_tensor(
            &[4, 5],
            Fill::Normal {
                mean: 0.0,
                std: 1.0,
            },
            7,
            "wq",
        );
        let c = init_tensor(
            &[4, 5],
            Fill::Normal {
                mean: 0.0,
                std: 1.0,
            },
            7,
            "wk",
        );
        let d = init_tensor(
            &[4, 5],
            Fill::Normal {
                mean: 0.0,
                std: 1.0,
            },
            8,
            "wq",
        );
        assert_eq!(a, b);
        assert_ne!(a.data, c.data);
        assert_ne!(a.data, d.data);
    }

    #[test]
    fn normal_moments() {
        let t = init_tensor(
            &[20000],
            Fill::Normal {
                mean: 1.0,
                std: 2.0,
            },
            1,
            "x",
        );
        let s = t.stats();
        assert!((s.mean - 1.0).abs() < 0.05, "{s:?}");
        assert!((s.std - 2.0).abs() < 0.05, "{s:?}");
    }

    #[test]
    fn uniform_bounds() {
        let t = init_tensor(&[1000], Fill::Uniform { lo: -0.5, hi: 0.25 }, 3, "u");
        assert!(t.data.iter().all(|x| (-0.5..0.25).contains(x)));
    }
}
