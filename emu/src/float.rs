//! Floating-point semantics of the PTX instructions the emulator runs:
//! correctly rounded f32 arithmetic in every rounding mode, f16 and bf16
//! conversions (round to nearest-even), and the approximate instructions
//! (computed exactly, which is within their documented error).

/// A PTX rounding modifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rnd {
    /// `.rn`: to nearest, ties to even (the default).
    Rn,
    /// `.rz`: toward zero.
    Rz,
    /// `.rm`: toward minus infinity.
    Rm,
    /// `.rp`: toward plus infinity.
    Rp,
}

/// The next f32 above `x` (toward +inf).
pub fn next_up(x: f32) -> f32 {
    if x.is_nan() || x == f32::INFINITY {
        return x;
    }
    if x == 0.0 {
        return f32::from_bits(1);
    }
    let b = x.to_bits();
    f32::from_bits(if x > 0.0 { b + 1 } else { b - 1 })
}

/// The next f32 below `x` (toward -inf).
pub fn next_down(x: f32) -> f32 {
    -next_up(-x)
}

/// The f32 that `mode` rounds the exact value `r + e` to, where `r` is an
/// f64 and `e` an error term no larger than half an f64 ulp of `r` (as an
/// error-free transformation gives). `r` non-finite is returned as is.
pub fn round_f32(r: f64, e: f64, mode: Rnd) -> f32 {
    if !r.is_finite() {
        return r as f32;
    }
    let mut c = r as f32; // to nearest, ties to even
    if c.is_infinite() {
        // |r| is past the largest finite f32 (by at least half an ulp).
        let pos = r > 0.0;
        return match (mode, pos) {
            (Rnd::Rn, _) | (Rnd::Rp, true) | (Rnd::Rm, false) => c,
            (_, true) => f32::MAX,
            (_, false) => -f32::MAX,
        };
    }
    let d = r - f64::from(c); // exact
                              // The sign of (exact value - c).
    let side = if d != 0.0 {
        d.signum()
    } else if e != 0.0 {
        e.signum()
    } else {
        0.0
    };
    if side == 0.0 {
        return c;
    }
    let below = side < 0.0; // the exact value lies below c
    match mode {
        Rnd::Rn => {
            if d != 0.0 && e != 0.0 && e.signum() == d.signum() {
                // r was a tie between c and its neighbour; e breaks it.
                let other = if below { next_down(c) } else { next_up(c) };
                if (f64::from(other) - r).abs() == d.abs() {
                    c = other;
                }
            }
            c
        }
        Rnd::Rm => {
            if below {
                next_down(c)
            } else {
                c
            }
        }
        Rnd::Rp => {
            if below {
                c
            } else {
                next_up(c)
            }
        }
        Rnd::Rz => {
            if c > 0.0 && below {
                next_down(c)
            } else if c < 0.0 && !below {
                next_up(c)
            } else if c == 0.0 {
                0.0f32.copysign(c)
            } else {
                c
            }
        }
    }
}

/// `a + b` in f64 and its exact rounding error (TwoSum).
pub fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let bb = s - a;
    let e = (a - (s - bb)) + (b - bb);
    (s, e)
}

/// The sign an exact zero sum takes: IEEE gives +0 except in `.rm`, and
/// the operands' sign when both are zeros of the same sign.
fn zero_sum(x: f64, y: f64, mode: Rnd) -> f32 {
    if x == 0.0 && y == 0.0 && x.is_sign_negative() == y.is_sign_negative() {
        return if x.is_sign_negative() { -0.0 } else { 0.0 };
    }
    if mode == Rnd::Rm {
        -0.0
    } else {
        0.0
    }
}

pub fn add_f32(a: f32, b: f32, mode: Rnd) -> f32 {
    let (x, y) = (f64::from(a), f64::from(b));
    let (s, e) = two_sum(x, y);
    if s == 0.0 && e == 0.0 {
        return zero_sum(x, y, mode);
    }
    round_f32(s, e, mode)
}

pub fn mul_f32(a: f32, b: f32, mode: Rnd) -> f32 {
    // 24 x 24 bits: exact in f64.
    round_f32(f64::from(a) * f64::from(b), 0.0, mode)
}

pub fn fma_f32(a: f32, b: f32, c: f32, mode: Rnd) -> f32 {
    let p = f64::from(a) * f64::from(b); // exact
    let z = f64::from(c);
    if !p.is_finite() || !z.is_finite() {
        return (p + z) as f32;
    }
    let (s, e) = two_sum(p, z);
    if s == 0.0 && e == 0.0 {
        return zero_sum(p, z, mode);
    }
    round_f32(s, e, mode)
}

pub fn div_f32(a: f32, b: f32, mode: Rnd) -> f32 {
    let (x, y) = (f64::from(a), f64::from(b));
    let q = x / y;
    if !q.is_finite() || q == 0.0 {
        return q as f32;
    }
    // The remainder of a correctly rounded quotient is exact.
    let rem = (-q).mul_add(y, x);
    round_f32(q, rem / y, mode)
}

/// Flushes a subnormal f32 to zero of the same sign (`.ftz`).
pub fn ftz(x: f32) -> f32 {
    if x.is_subnormal() {
        0.0f32.copysign(x)
    } else {
        x
    }
}

/// `min.f32`: NaN only when both are NaN; -0 is below +0.
pub fn min_f32(a: f32, b: f32) -> f32 {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => f32::from_bits(0x7fff_ffff),
        (true, false) => b,
        (false, true) => a,
        _ => {
            if a == b {
                if a.is_sign_negative() {
                    a
                } else {
                    b
                }
            } else if a < b {
                a
            } else {
                b
            }
        }
    }
}

/// `max.f32`: NaN only when both are NaN; +0 is above -0.
pub fn max_f32(a: f32, b: f32) -> f32 {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => f32::from_bits(0x7fff_ffff),
        (true, false) => b,
        (false, true) => a,
        _ => {
            if a == b {
                if a.is_sign_negative() {
                    b
                } else {
                    a
                }
            } else if a > b {
                a
            } else {
                b
            }
        }
    }
}

/// f32 to bf16, to nearest-even; NaN gives the canonical NaN 0x7fff.
pub fn f32_to_bf16(x: f32) -> u16 {
    if x.is_nan() {
        return 0x7fff;
    }
    let b = x.to_bits();
    let keep = b >> 16;
    let rest = b & 0xffff;
    let up = rest > 0x8000 || (rest == 0x8000 && keep & 1 == 1);
    (keep + u32::from(up)) as u16
}

pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// f32 to IEEE binary16, to nearest-even (overflow to infinity,
/// subnormals kept); NaN gives the canonical NaN 0x7fff.
pub fn f32_to_f16(x: f32) -> u16 {
    if x.is_nan() {
        return 0x7fff;
    }
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let a = b & 0x7fff_ffff;
    if a >= 0x7f80_0000 {
        return sign | 0x7c00;
    }
    // |x| = m * 2^exp exactly.
    let e = (a >> 23) as i32;
    let (m, exp) = if e == 0 {
        (u64::from(a & 0x7f_ffff), -149)
    } else {
        (u64::from((a & 0x7f_ffff) | 0x80_0000), e - 150)
    };
    if m == 0 {
        return sign;
    }
    // The f16 ulp at |x|'s binade (2^-24 for every subnormal binade), and
    // |x| in units of it, rounded to nearest-even.
    let binade = exp + (64 - m.leading_zeros() as i32) - 1;
    let ulp = binade.max(-14) - 10;
    let shift = ulp - exp;
    let q = if shift <= 0 {
        m << (-shift)
    } else if shift > 40 {
        0
    } else {
        let q = m >> shift;
        let r = m & ((1u64 << shift) - 1);
        let half = 1u64 << (shift - 1);
        if r > half || (r == half && q & 1 == 1) {
            q + 1
        } else {
            q
        }
    };
    if q == 0 {
        return sign;
    }
    // q * 2^ulp: a subnormal when ulp is -24 and q < 1024; a carry to 2048
    // moves into the exponent; both fall out of one formula.
    let bits = (((ulp + 25) as u64) << 10) + q - 1024;
    sign | bits.min(0x7c00) as u16
}

pub fn f16_to_f32(h: u16) -> f32 {
    let neg = h & 0x8000 != 0;
    let e = i32::from((h >> 10) & 0x1f);
    let m = f64::from(h & 0x3ff);
    let v = match e {
        0 => m * 2f64.powi(-24),
        0x1f => {
            if m == 0.0 {
                f64::INFINITY
            } else {
                f64::NAN
            }
        }
        _ => (1024.0 + m) * 2f64.powi(e - 25),
    };
    let v = v as f32;
    if neg {
        -v
    } else {
        v
    }
}

/// The f32 nearest `r + e` by round-to-odd: toward zero, the last bit set
/// when inexact. Rounding that to 16 bits to nearest-even equals rounding
/// the exact value once (24 >= 2 * 11 + 2).
pub fn round_odd_f32(r: f64, e: f64) -> f32 {
    let t = round_f32(r, e, Rnd::Rz);
    let exact = f64::from(t) == r && e == 0.0;
    if exact || t.is_infinite() || t.is_nan() {
        t
    } else {
        f32::from_bits(t.to_bits() | 1)
    }
}

/// The exact value `2^x`, rounded to f32 (`ex2.approx`, whose documented
/// error is 2 ulp; exact is within it).
pub fn ex2(x: f32) -> f32 {
    (f64::from(x)).exp2() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact_sum(a: f32, b: f32) -> f64 {
        f64::from(a) + f64::from(b)
    }

    #[test]
    fn directed_rounding_brackets_the_exact_value() {
        let xs = [
            1.0f32,
            3.0e-8,
            -7.5,
            1.0e30,
            2.5e-39,
            0.1,
            -0.3,
            16_777_217.0,
        ];
        for &a in &xs {
            for &b in &xs {
                let dn = add_f32(a, b, Rnd::Rm);
                let up = add_f32(a, b, Rnd::Rp);
                let ex = exact_sum(a, b);
                assert!(f64::from(dn) <= ex && ex <= f64::from(up), "{a} + {b}");
                assert!(up == dn || next_up(dn) == up, "{a} + {b}: {dn} {up}");
                let z = add_f32(a, b, Rnd::Rz);
                assert!(f64::from(z).abs() <= ex.abs());
            }
        }
    }

    #[test]
    fn f16_round_trips() {
        for h in 0..=u16::MAX {
            let f = f16_to_f32(h);
            if !f.is_nan() {
                assert_eq!(f32_to_f16(f), h, "{h:#x}");
            }
        }
    }
}
