//! The meaning of operators and builtins on values, shared by constant
//! folding in the checker and by every evaluator (so they cannot disagree).
//! Booleans are 0 and 1; integer division is floor division on exact values.

use crate::ast::BinOp;
use crate::typed::Builtin;

/// The meaning of a binary operator on values (booleans are 0 and 1).
/// Shared with the interpreter so constant folding and evaluation agree.
pub fn scalar_binop(op: BinOp, x: f64, y: f64) -> f64 {
    let b = |c: bool| f64::from(u8::from(c));
    match op {
        BinOp::Add => x + y,
        BinOp::Sub => x - y,
        BinOp::Mul => x * y,
        BinOp::Div => x / y,
        BinOp::FloorDiv => (x / y).floor(),
        BinOp::Mod => x - y * (x / y).floor(),
        BinOp::Pow => x.powf(y),
        BinOp::Eq => b(x == y),
        BinOp::Ne => b(x != y),
        BinOp::Lt => b(x < y),
        BinOp::Le => b(x <= y),
        BinOp::Gt => b(x > y),
        BinOp::Ge => b(x >= y),
        BinOp::And => b(x != 0.0 && y != 0.0),
        BinOp::Or => b(x != 0.0 || y != 0.0),
    }
}

/// The meaning of an elementwise builtin on values.
pub fn scalar_builtin(f: Builtin, a: &[f64]) -> f64 {
    let x = a[0];
    match f {
        Builtin::Exp => x.exp(),
        Builtin::Log => x.ln(),
        Builtin::Sqrt => x.sqrt(),
        Builtin::Rsqrt => 1.0 / x.sqrt(),
        Builtin::Tanh => x.tanh(),
        Builtin::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Builtin::Silu => x / (1.0 + (-x).exp()),
        Builtin::Gelu => 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)),
        Builtin::Softplus => {
            if x > 30.0 {
                x
            } else {
                x.exp().ln_1p()
            }
        }
        Builtin::Sin => x.sin(),
        Builtin::Cos => x.cos(),
        Builtin::Abs => x.abs(),
        Builtin::Relu => x.max(0.0),
        Builtin::Erf => erf(x),
        Builtin::Floor => x.floor(),
        Builtin::Ceil => x.ceil(),
        Builtin::Min => x.min(a[1]),
        Builtin::Max => x.max(a[1]),
        Builtin::Select => {
            if x != 0.0 {
                a[1]
            } else {
                a[2]
            }
        }
    }
}

#[allow(clippy::excessive_precision)]
/// The error function, to double precision (W. J. Cody's rational
/// approximations, as in most libm implementations).
pub fn erf(x: f64) -> f64 {
    // erf(x) = x * P(x^2) / Q(x^2) for |x| < 0.5, else 1 - erfc(|x|).
    let ax = x.abs();
    if ax < 0.5 {
        let t = x * x;
        let p = [
            3.209_377_589_138_469_4e3,
            3.774_852_376_853_020_2e2,
            1.138_641_541_510_501_6e2,
            3.161_123_743_870_565_6,
            1.857_777_061_846_031_5e-1,
        ];
        let q = [
            2.844_236_833_439_170_6e3,
            1.282_616_526_077_372_3e3,
            2.440_246_379_344_441_7e2,
            2.360_129_095_234_412_1e1,
            1.0,
        ];
        let num = (((p[4] * t + p[3]) * t + p[2]) * t + p[1]) * t + p[0];
        let den = (((q[4] * t + q[3]) * t + q[2]) * t + q[1]) * t + q[0];
        return x * num / den;
    }
    let erfc = if ax < 4.0 {
        let p = [
            1.230_339_354_797_997_2e3,
            2.051_078_377_826_071_5e3,
            1.712_047_612_634_070_6e3,
            8.819_522_212_417_691e2,
            2.986_351_381_974_001_3e2,
            6.611_919_063_714_163e1,
            8.883_149_794_388_377,
            5.641_884_969_886_701e-1,
            2.153_115_354_744_038_5e-8,
        ];
        let q = [
            1.230_339_354_803_749_4e3,
            3.439_367_674_143_721_6e3,
            4.362_619_090_143_247e3,
            3.290_799_235_733_459_7e3,
            1.621_389_574_566_690_3e3,
            5.371_811_018_620_098_5e2,
            1.176_939_508_913_125e2,
            1.574_492_611_070_983_5e1,
            1.0,
        ];
        let mut num = p[8];
        let mut den = q[8];
        for k in (0..8).rev() {
            num = num * ax + p[k];
            den = den * ax + q[k];
        }
        (-ax * ax).exp() * num / den
    } else {
        let z = 1.0 / (ax * ax);
        let p = [
            -6.587_491_615_298_378e-4,
            -1.608_378_514_874_227_5e-2,
            -1.257_817_261_112_292_6e-1,
            -3.603_448_999_498_044_5e-1,
            -3.053_266_349_612_323_4e-1,
            -1.631_538_713_730_709_6e-2,
        ];
        let q = [
            2.335_204_976_268_691_8e-3,
            6.051_834_131_244_132e-2,
            5.278_812_195_785_076e-1,
            1.872_952_849_923_460_4,
            2.568_520_192_289_822,
            1.0,
        ];
        let mut num = p[5];
        let mut den = q[5];
        for k in (0..5).rev() {
            num = num * z + p[k];
            den = den * z + q[k];
        }
        let r = z * num / den;
        (-ax * ax).exp() / ax * (1.0 / std::f64::consts::PI.sqrt() + r)
    };
    if x >= 0.0 {
        1.0 - erfc
    } else {
        erfc - 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_known_values() {
        for (x, want) in [
            (0.0, 0.0),
            (0.1, 0.1124629160182849),
            (0.5, 0.5204998778130465),
            (1.0, 0.8427007929497149),
            (-1.5, -0.9661051464753108),
            (2.0, 0.9953222650189527),
            (3.5, 0.9999992569016276),
            (5.0, 0.9999999999984626),
        ] {
            assert!(
                (erf(x) - want).abs() < 1e-14,
                "erf({x}) = {} != {want}",
                erf(x)
            );
        }
    }

    #[test]
    fn floor_division_and_modulo_follow_python() {
        assert_eq!(scalar_binop(BinOp::FloorDiv, -7.0, 2.0), -4.0);
        assert_eq!(scalar_binop(BinOp::Mod, -7.0, 3.0), 2.0);
        assert_eq!(scalar_binop(BinOp::Mod, 7.0, 3.0), 1.0);
    }
}
