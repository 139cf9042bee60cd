//! Storage types of a bundle's buffers, and the conversions a runner makes
//! when it uploads and downloads them.
//!
//! Kernels always compute in f32; `bf16` and `f16` are *storage* types: a
//! value is rounded to nearest-even when a kernel (or the upload) writes
//! it, and widened exactly when a kernel reads it. A bundle's dtype is that
//! of its activations (inputs, values computed from them, the output);
//! parameters and values computed from parameters alone stay f32, as in
//! mixed-precision practice (master weights, SSM kernels): each buffer's
//! type is in the manifest. The conversions here
//! are the ones the GPU makes (`cvt.rn.bf16.f32`, `cvt.rn.f16.f32`), so a
//! runner, the lockstep simulator and the device agree bit for bit.

use serde::{Deserialize, Serialize};
use std::fmt;

/// How a buffer is stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    #[default]
    F32,
    Bf16,
    F16,
}

impl Dtype {
    pub const ALL: [Dtype; 3] = [Dtype::F32, Dtype::Bf16, Dtype::F16];

    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
            Dtype::F16 => "f16",
        }
    }

    /// Parses `f32`, `bf16` or `f16`.
    pub fn parse(s: &str) -> Result<Dtype, String> {
        Dtype::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| format!("unknown dtype `{s}` (known: f32, bf16, f16)"))
    }

    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 | Dtype::F16 => 2,
        }
    }

    /// The largest finite value this type stores.
    pub fn max_finite(self) -> f64 {
        match self {
            Dtype::F32 => f32::MAX as f64,
            // bf16 has f32's exponent range.
            Dtype::Bf16 => 3.389_531_389_251_535_5e38,
            Dtype::F16 => 65504.0,
        }
    }

    /// The relative error against the f64 interpreter a correctness check
    /// accepts for outputs stored in this type.
    pub fn tolerance(self) -> f64 {
        match self {
            Dtype::F32 => 1e-4,
            Dtype::Bf16 | Dtype::F16 => 1e-2,
        }
    }

    /// `x` as this type would store it, widened back to f32.
    pub fn round(self, x: f32) -> f32 {
        match self {
            Dtype::F32 => x,
            Dtype::Bf16 => bf16_to_f32(f32_to_bf16(x)),
            Dtype::F16 => f16_to_f32(f32_to_f16(x)),
        }
    }

    /// The bytes of `xs` in this type (little-endian).
    pub fn encode(self, xs: &[f32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(xs.len() * self.bytes());
        for &x in xs {
            match self {
                Dtype::F32 => out.extend_from_slice(&x.to_le_bytes()),
                Dtype::Bf16 => out.extend_from_slice(&f32_to_bf16(x).to_le_bytes()),
                Dtype::F16 => out.extend_from_slice(&f32_to_f16(x).to_le_bytes()),
            }
        }
        out
    }

    /// Elements of this type in `bytes`, widened to f32.
    pub fn decode(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::Bf16 => bytes
                .chunks_exact(2)
                .map(|c| bf16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// f32 to bf16, rounding to nearest-even; NaN stays a (quiet) NaN.
pub fn f32_to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) as u16) | 0x0040;
    }
    let lsb = (b >> 16) & 1;
    (b.wrapping_add(0x7fff + lsb) >> 16) as u16
}

pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// f32 to IEEE binary16, rounding to nearest-even: overflow gives
/// infinity, tiny values subnormals or zero, NaN a quiet NaN.
pub fn f32_to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if man != 0 { 0x0200 } else { 0 };
    }
    // The exponent rebiased for binary16.
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    let round = |r: u32, rem: u32, half: u32| -> u32 {
        if rem > half || (rem == half && r & 1 == 1) {
            r + 1
        } else {
            r
        }
    };
    if e <= 0 {
        // A subnormal (or zero): units of 2^-24 are m >> (14 - e).
        if e < -10 {
            return sign;
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let r = round(m >> shift, m & ((1 << shift) - 1), 1 << (shift - 1));
        return sign | r as u16;
    }
    // A carry out of the mantissa rounds into the exponent, and from the
    // largest finite value into infinity, as it should.
    let r = round(((e as u32) << 10) | (man >> 13), man & 0x1fff, 0x1000);
    sign | r as u16
}

pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let e = u32::from((h >> 10) & 0x1f);
    let m = u32::from(h & 0x3ff);
    match e {
        0 => {
            let v = m as f32 * (1.0 / 16_777_216.0);
            if sign != 0 {
                -v
            } else {
                v
            }
        }
        0x1f => f32::from_bits(sign | 0x7f80_0000 | (m << 13)),
        _ => f32::from_bits(sign | ((e + 112) << 23) | (m << 13)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nearest value of a finite set (ties to the even encoding),
    /// found by brute force.
    fn nearest(x: f32, to_f32: fn(u16) -> f32) -> u16 {
        let mut best: Option<(f64, u16)> = None;
        for h in 0..=u16::MAX {
            let v = to_f32(h);
            if !v.is_finite() || (v == 0.0 && v.is_sign_negative() != x.is_sign_negative()) {
                continue;
            }
            let d = (f64::from(v) - f64::from(x)).abs();
            best = match best {
                Some((bd, bh)) if bd < d || (bd == d && bh & 1 == 0) => Some((bd, bh)),
                _ => Some((d, h)),
            };
        }
        best.unwrap().1
    }

    #[test]
    fn every_f16_and_bf16_survives_a_round_trip() {
        for h in 0..=u16::MAX {
            let (a, b) = (f16_to_f32(h), bf16_to_f32(h));
            if !a.is_nan() {
                assert_eq!(f32_to_f16(a), h, "f16 {h:#06x} = {a:e}");
            }
            if !b.is_nan() {
                assert_eq!(f32_to_bf16(b), h, "bf16 {h:#06x} = {b:e}");
            }
        }
    }

    #[test]
    fn conversions_round_to_the_nearest_even_value() {
        let mut rng = crate::Rng::new(5);
        let mut xs: Vec<f32> = vec![
            1.0 + f32::EPSILON,
            65519.0,
            -3.0e-5,
            5.9604645e-8, // the smallest f16 subnormal
            2.9802322e-8, // half of it: ties to zero
            1.0009766,    // 1 + 2^-10: an f16 exactly
            1.0004883,    // a tie between two f16s
        ];
        for _ in 0..300 {
            let scale = 2f64.powi((rng.uniform() * 40.0) as i32 - 26);
            xs.push((rng.normal() * scale) as f32);
        }
        for x in xs {
            assert_eq!(f32_to_f16(x), nearest(x, f16_to_f32), "f16 of {x:e}");
            assert_eq!(f32_to_bf16(x), nearest(x, bf16_to_f32), "bf16 of {x:e}");
        }
        assert_eq!(f16_to_f32(f32_to_f16(1e6)), f32::INFINITY);
        assert_eq!(f16_to_f32(f32_to_f16(65520.0)), f32::INFINITY);
        assert!(f16_to_f32(f32_to_f16(f32::NAN)).is_nan());
        assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
    }

    #[test]
    fn encode_and_decode_are_inverse_on_stored_values() {
        let xs = [0.0f32, -1.5, 3.140625, 1e-3, 7.0e4];
        for d in Dtype::ALL {
            let stored: Vec<f32> = xs.iter().map(|x| d.round(*x)).collect();
            let bytes = d.encode(&stored);
            assert_eq!(bytes.len(), xs.len() * d.bytes());
            assert_eq!(d.decode(&bytes), stored, "{d}");
            assert_eq!(Dtype::parse(d.name()), Ok(d));
        }
        assert!(Dtype::parse("fp8").unwrap_err().contains("unknown dtype"));
    }
}
