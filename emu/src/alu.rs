//! Lane-wise semantics: one function from an [`Alu`] operation and its
//! source values to the destination value.

use crate::float::*;
use crate::ir::{Alu, Cmp, Cvt, FOp, Ty};

#[inline]
pub fn mask(w: u8) -> u64 {
    if w >= 64 {
        u64::MAX
    } else {
        (1u64 << w) - 1
    }
}

#[inline]
pub fn sext(v: u64, w: u8) -> i64 {
    if w >= 64 {
        v as i64
    } else {
        let s = 64 - u32::from(w);
        ((v << s) as i64) >> s
    }
}

/// The value of `v` as an integer of type `t`.
#[inline]
fn ext(v: u64, w: u8, signed: bool) -> i128 {
    if signed {
        i128::from(sext(v, w))
    } else {
        i128::from(v & mask(w))
    }
}

#[inline]
fn f(v: u64) -> f32 {
    f32::from_bits(v as u32)
}

#[inline]
fn bits(x: f32) -> u64 {
    u64::from(x.to_bits())
}

/// A 16-bit float's value.
#[inline]
fn half(v: u64, bf: bool) -> f32 {
    if bf {
        bf16_to_f32(v as u16)
    } else {
        f16_to_f32(v as u16)
    }
}

#[inline]
fn to_half(x: f32, bf: bool) -> u64 {
    u64::from(if bf { f32_to_bf16(x) } else { f32_to_f16(x) })
}

/// A float operand widened to f64 (`.ftz` flushes f32 subnormals).
fn fval(v: u64, t: Ty, ftz_: bool) -> f64 {
    match t {
        Ty::F32 => {
            let x = f(v);
            f64::from(if ftz_ { ftz(x) } else { x })
        }
        Ty::F64 => f64::from_bits(v),
        Ty::F16 => f64::from(half(v, false)),
        Ty::Bf16 => f64::from(half(v, true)),
        _ => 0.0,
    }
}

pub fn eval(op: Alu, a: u64, b: u64, c: u64) -> u64 {
    match op {
        Alu::Mov => a,
        Alu::Add(w) => a.wrapping_add(b) & mask(w),
        Alu::Sub(w) => a.wrapping_sub(b) & mask(w),
        Alu::MulLo(w) => a.wrapping_mul(b) & mask(w),
        Alu::MulHi(w, s) => {
            let p = ext(a, w, s).wrapping_mul(ext(b, w, s));
            ((p >> w) as u64) & mask(w)
        }
        Alu::MulWide(w, s) => (ext(a, w, s).wrapping_mul(ext(b, w, s)) as u64) & mask(2 * w),
        Alu::MadLo(w) => a.wrapping_mul(b).wrapping_add(c) & mask(w),
        Alu::MadWide(w, s) => {
            (ext(a, w, s).wrapping_mul(ext(b, w, s)) as u64).wrapping_add(c) & mask(2 * w)
        }
        Alu::Div(w, s) => {
            let (x, y) = (ext(a, w, s), ext(b, w, s));
            if y == 0 {
                // Undefined in PTX; the hardware gives all ones.
                mask(w)
            } else {
                (wrap_div(x, y, w, s) as u64) & mask(w)
            }
        }
        Alu::Rem(w, s) => {
            let (x, y) = (ext(a, w, s), ext(b, w, s));
            if y == 0 {
                a & mask(w)
            } else {
                ((x - wrap_div(x, y, w, s) * y) as u64) & mask(w)
            }
        }
        Alu::Min(w, s) => {
            if ext(a, w, s) <= ext(b, w, s) {
                a & mask(w)
            } else {
                b & mask(w)
            }
        }
        Alu::Max(w, s) => {
            if ext(a, w, s) >= ext(b, w, s) {
                a & mask(w)
            } else {
                b & mask(w)
            }
        }
        Alu::Abs(w) => (ext(a, w, true).unsigned_abs() as u64) & mask(w),
        Alu::Neg(w) => a.wrapping_neg() & mask(w),
        Alu::And(w) => a & b & mask(w),
        Alu::Or(w) => (a | b) & mask(w),
        Alu::Xor(w) => (a ^ b) & mask(w),
        Alu::Not(w) => !a & mask(w),
        Alu::Shl(w) => {
            let n = b as u32;
            if n >= u32::from(w) {
                0
            } else {
                (a << n) & mask(w)
            }
        }
        Alu::Shr(w, s) => {
            let n = b as u32;
            if s {
                let n = n.min(u32::from(w) - 1);
                ((sext(a, w) >> n) as u64) & mask(w)
            } else if n >= u32::from(w) {
                0
            } else {
                (a & mask(w)) >> n
            }
        }
        Alu::Bfe(w, s) => {
            let pos = (b & 0xff) as u32;
            let len = (c & 0xff) as u32;
            let wd = u32::from(w);
            let sbit = if !s || len == 0 {
                0
            } else {
                let msb = (pos + len - 1).min(wd - 1);
                (a >> msb) & 1
            };
            let avail = if pos >= wd { 0 } else { len.min(wd - pos) };
            let field = if avail == 0 {
                0
            } else {
                (a >> pos) & mask(avail as u8)
            };
            let fill = if sbit == 1 {
                mask(w) & !mask(avail as u8)
            } else {
                0
            };
            field | fill
        }
        Alu::Popc(w) => u64::from((a & mask(w)).count_ones()),
        Alu::Prmt => {
            let pool = ((b & 0xffff_ffff) << 32) | (a & 0xffff_ffff);
            let mut d = 0u64;
            for i in 0..4 {
                let sel = (c >> (4 * i)) & 0xf;
                let mut byte = (pool >> (8 * (sel & 7))) & 0xff;
                if sel & 8 != 0 {
                    // Replicate the selected byte's sign bit.
                    byte = if byte & 0x80 != 0 { 0xff } else { 0 };
                }
                d |= byte << (8 * i);
            }
            d
        }
        Alu::Shf { left, wrap } => {
            let n = if wrap {
                (c & 31) as u32
            } else {
                (c as u32).min(32)
            };
            let v = ((b & 0xffff_ffff) << 32) | (a & 0xffff_ffff);
            if left {
                if n == 32 {
                    a & 0xffff_ffff
                } else {
                    ((v << n) >> 32) & 0xffff_ffff
                }
            } else {
                (v >> n) & 0xffff_ffff
            }
        }
        Alu::Setp(cmp, t, z) => u64::from(setp(cmp, t, z, a, b)),
        Alu::Selp => {
            if c != 0 {
                a
            } else {
                b
            }
        }
        Alu::Cvt(cv) => cvt(cv, a),
        Alu::CvtPack(bf) => (to_half(f(a), bf) << 16) | to_half(f(b), bf),
        Alu::Pack(w) => (a & mask(w)) | ((b & mask(w)) << w),
        Alu::F32(op, mode, z, sat) => {
            let (x, y, w) = if z {
                (ftz(f(a)), ftz(f(b)), ftz(f(c)))
            } else {
                (f(a), f(b), f(c))
            };
            let mut r = match op {
                FOp::Add => add_f32(x, y, mode),
                FOp::Sub => add_f32(x, -y, mode),
                FOp::Mul => mul_f32(x, y, mode),
                FOp::Fma => fma_f32(x, y, w, mode),
                FOp::Div => div_f32(x, y, mode),
                FOp::Min => min_f32(x, y),
                FOp::Max => max_f32(x, y),
                FOp::Abs => f32::from_bits(x.to_bits() & 0x7fff_ffff),
                FOp::Neg => f32::from_bits(x.to_bits() ^ 0x8000_0000),
                FOp::Rcp => div_f32(1.0, x, mode),
                FOp::Sqrt => sqrt_f32(x, mode),
                FOp::Ex2 => ex2(x),
                // Approximate: computed exactly and rounded once, within
                // the documented error.
                FOp::Rsqrt => (1.0 / f64::from(x).sqrt()) as f32,
                FOp::Lg2 => f64::from(x).log2() as f32,
                FOp::Sin => f64::from(x).sin() as f32,
                FOp::Cos => f64::from(x).cos() as f32,
                FOp::Tanh => f64::from(x).tanh() as f32,
            };
            if z {
                r = ftz(r);
            }
            if sat {
                r = if r.is_nan() { 0.0 } else { r.clamp(0.0, 1.0) };
            }
            bits(r)
        }
        Alu::F64(op, _) => {
            let (x, y, w) = (f64::from_bits(a), f64::from_bits(b), f64::from_bits(c));
            let r = match op {
                FOp::Add => x + y,
                FOp::Sub => x - y,
                FOp::Mul => x * y,
                FOp::Fma => x.mul_add(y, w),
                FOp::Div => x / y,
                FOp::Min => {
                    if x.is_nan() {
                        y
                    } else if y.is_nan() || x < y || (x == y && x.is_sign_negative()) {
                        x
                    } else {
                        y
                    }
                }
                FOp::Max => {
                    if x.is_nan() {
                        y
                    } else if y.is_nan() || x > y || (x == y && y.is_sign_negative()) {
                        x
                    } else {
                        y
                    }
                }
                FOp::Abs => x.abs(),
                FOp::Neg => -x,
                FOp::Rcp => 1.0 / x,
                FOp::Sqrt => x.sqrt(),
                FOp::Ex2 => x.exp2(),
                FOp::Rsqrt => 1.0 / x.sqrt(),
                FOp::Lg2 => x.log2(),
                FOp::Sin => x.sin(),
                FOp::Cos => x.cos(),
                FOp::Tanh => x.tanh(),
            };
            r.to_bits()
        }
        Alu::H(op, bf) => {
            let (x, y, w) = (
                f64::from(half(a, bf)),
                f64::from(half(b, bf)),
                f64::from(half(c, bf)),
            );
            let (r, e) = match op {
                FOp::Neg => return (a ^ 0x8000) & 0xffff,
                FOp::Min => return to_half(min_f32(half(a, bf), half(b, bf)), bf),
                FOp::Max => return to_half(max_f32(half(a, bf), half(b, bf)), bf),
                FOp::Abs => return a & 0x7fff,
                FOp::Add => two_sum(x, y),
                FOp::Sub => two_sum(x, -y),
                FOp::Mul => (x * y, 0.0),
                _ => two_sum(x * y, w),
            };
            if r.is_nan() {
                return 0x7fff;
            }
            to_half(round_odd_f32(r, e), bf)
        }
    }
}

fn wrap_div(x: i128, y: i128, w: u8, s: bool) -> i128 {
    if s && y == -1 && x == i128::from(sext(1u64 << (w - 1), w)) {
        x // the most negative value divided by -1 wraps
    } else {
        x / y
    }
}

fn sqrt_f32(x: f32, mode: Rnd) -> f32 {
    let v = f64::from(x);
    let s = v.sqrt();
    if !s.is_finite() || s == 0.0 || mode == Rnd::Rn {
        return s as f32;
    }
    // The residual's sign says on which side of s the exact root lies.
    let r = (-s).mul_add(s, v);
    round_f32(s, r / (2.0 * s), mode)
}

fn setp(cmp: Cmp, t: Ty, z: bool, a: u64, b: u64) -> bool {
    if !t.is_float() {
        let w = t.bits();
        let s = t.is_signed();
        let (x, y) = (ext(a, w, s), ext(b, w, s));
        return match cmp {
            Cmp::Eq => x == y,
            Cmp::Ne => x != y,
            Cmp::Lt => x < y,
            Cmp::Le => x <= y,
            Cmp::Gt => x > y,
            Cmp::Ge => x >= y,
            _ => false,
        };
    }
    let (x, y) = (fval(a, t, z), fval(b, t, z));
    let nan = x.is_nan() || y.is_nan();
    match cmp {
        Cmp::Eq => !nan && x == y,
        Cmp::Ne => !nan && x != y,
        Cmp::Lt => !nan && x < y,
        Cmp::Le => !nan && x <= y,
        Cmp::Gt => !nan && x > y,
        Cmp::Ge => !nan && x >= y,
        Cmp::Equ => nan || x == y,
        Cmp::Neu => nan || x != y,
        Cmp::Ltu => nan || x < y,
        Cmp::Leu => nan || x <= y,
        Cmp::Gtu => nan || x > y,
        Cmp::Geu => nan || x >= y,
        Cmp::Num => !nan,
        Cmp::Nan => nan,
    }
}

fn round_integral(x: f64, mode: Rnd) -> f64 {
    match mode {
        Rnd::Rn => x.round_ties_even(),
        Rnd::Rz => x.trunc(),
        Rnd::Rm => x.floor(),
        Rnd::Rp => x.ceil(),
    }
}

fn cvt(cv: Cvt, a: u64) -> u64 {
    let (d, s) = (cv.dst, cv.src);
    match (d.is_float(), s.is_float()) {
        (false, false) => {
            let v = ext(a, s.bits(), s.is_signed());
            let w = d.bits();
            let v = if cv.sat {
                let (lo, hi) = if d.is_signed() {
                    (-(1i128 << (w - 1)), (1i128 << (w - 1)) - 1)
                } else {
                    (0, (1i128 << w) - 1)
                };
                v.clamp(lo, hi)
            } else {
                v
            };
            (v as u64) & mask(w)
        }
        (true, false) => {
            let v = ext(a, s.bits(), s.is_signed());
            match d {
                Ty::F64 => (v as f64).to_bits(),
                _ => {
                    let hi = v as f64;
                    let e = (v - hi as i128) as f64;
                    bits(round_f32(hi, e, cv.rnd.unwrap_or(Rnd::Rn)))
                }
            }
        }
        (false, true) => {
            let x = fval(a, s, cv.ftz);
            let w = d.bits();
            if x.is_nan() {
                return 0;
            }
            let r = round_integral(x, cv.irnd.unwrap_or(Rnd::Rz));
            let (lo, hi) = if d.is_signed() {
                (
                    -(2f64.powi(i32::from(w) - 1)),
                    2f64.powi(i32::from(w) - 1) - 1.0,
                )
            } else {
                (0.0, 2f64.powi(i32::from(w)) - 1.0)
            };
            let r = r.clamp(lo, hi);
            (r as i128 as u64) & mask(w)
        }
        (true, true) => {
            let x = fval(a, s, cv.ftz);
            match d {
                Ty::F16 | Ty::Bf16 => to_half(x as f32, d == Ty::Bf16),
                Ty::F64 => {
                    let mut r = x;
                    if let Some(m) = cv.irnd {
                        r = round_integral(r, m);
                    }
                    if cv.sat {
                        r = if r.is_nan() { 0.0 } else { r.clamp(0.0, 1.0) };
                    }
                    r.to_bits()
                }
                _ => {
                    let mut r = if s == Ty::F64 {
                        round_f32(x, 0.0, cv.rnd.unwrap_or(Rnd::Rn))
                    } else {
                        x as f32
                    };
                    if let Some(m) = cv.irnd {
                        r = round_integral(f64::from(r), m) as f32;
                    }
                    if cv.ftz {
                        r = ftz(r);
                    }
                    if cv.sat {
                        r = if r.is_nan() { 0.0 } else { r.clamp(0.0, 1.0) };
                    }
                    bits(r)
                }
            }
        }
    }
}
