//! A mask predicate evaluated abstractly on a *box* of index values: the
//! one interval analysis that the kernels emit (a GPU block classifies
//! each key tile at run time, in kernel IR) and that `mixc explain`
//! runs on concrete numbers to count the tiles those kernels skip
//! ([`crate::mask::kernel_tiles`]).
//!
//! The evaluation is written once, over an [`Algebra`]: integers are
//! intervals `[lo, hi]` whose ends are the algebra's integers (numbers for
//! explain, kernel-IR expressions for the kernels), booleans a pair
//! (surely true, surely false). It is sound: "surely" is claimed only when
//! every point of the box agrees under the interpreter's integer semantics
//! (floor division and modulo by positive constants). It models integer
//! constants, sizes, indices, `-x`, `+`, `-`, multiplication by a
//! constant, floor division and modulo by a positive constant, the six
//! comparisons of integers and `and`, `or`, `not`; anything else (tensor
//! reads, reals, division by a variable) is unknown, and "neither surely
//! true nor surely false" is always a safe answer.

use crate::ir::{BinOp, DimExpr, ExprId, Module, Node, Slot, Ty, UnOp};
use std::collections::HashMap;

/// What the evaluation computes with: integers and booleans, concrete or
/// symbolic.
pub trait Algebra {
    type Int: Clone;
    type Bool: Clone;
    type Error;
    fn int(&mut self, v: i64) -> Self::Int;
    fn boolean(&mut self, v: bool) -> Self::Bool;
    /// The constant the integer surely is, if the algebra knows it.
    fn known(&self, x: &Self::Int) -> Option<i64>;
    /// A size's value.
    fn size(&mut self, d: &DimExpr) -> Result<Self::Int, Self::Error>;
    fn add(&mut self, a: Self::Int, b: Self::Int) -> Self::Int;
    fn sub(&mut self, a: Self::Int, b: Self::Int) -> Self::Int;
    fn mul_const(&mut self, a: Self::Int, k: i64) -> Self::Int;
    /// Floor division (`modulo`: the floor modulo) by a positive constant.
    fn floor_div(&mut self, a: Self::Int, k: i64, modulo: bool) -> Self::Int;
    fn lt(&mut self, a: &Self::Int, b: &Self::Int) -> Self::Bool;
    fn le(&mut self, a: &Self::Int, b: &Self::Int) -> Self::Bool;
    fn and(&mut self, a: Self::Bool, b: Self::Bool) -> Self::Bool;
    fn or(&mut self, a: Self::Bool, b: Self::Bool) -> Self::Bool;
    fn select(&mut self, c: Self::Bool, a: Self::Int, b: Self::Int) -> Self::Int;
    /// A value used more than once (a kernel binds it to a variable).
    fn share(&mut self, x: Self::Int) -> Self::Int {
        x
    }
}

/// An abstract value on a box.
#[derive(Clone, Debug)]
pub enum Abs<A: Algebra + ?Sized> {
    /// Every value lies in `[lo, hi]`.
    Int(A::Int, A::Int),
    /// (surely true, surely false).
    Bool(A::Bool, A::Bool),
    Unknown,
}

/// `e` on the box where each slot of `ranges` spans `[lo, hi]` (a slot
/// not in `ranges` is unknown).
pub fn eval<A: Algebra>(
    m: &Module,
    e: ExprId,
    ranges: &HashMap<Slot, (A::Int, A::Int)>,
    a: &mut A,
) -> Result<Abs<A>, A::Error> {
    let n = m.expr(e);
    let int = |x: ExprId| m.expr(x).ty == Ty::Int;
    let unknown_bool = |a: &mut A| Abs::Bool(a.boolean(false), a.boolean(false));
    Ok(match &n.node {
        Node::Const(c) if n.ty == Ty::Int => {
            let v = a.int(*c as i64);
            Abs::Int(v.clone(), v)
        }
        Node::Const(c) if n.ty == Ty::Bool => Abs::Bool(a.boolean(*c != 0.0), a.boolean(*c == 0.0)),
        Node::Size(d) => {
            let v = a.size(d)?;
            let v = a.share(v);
            Abs::Int(v.clone(), v)
        }
        Node::Index(s) => match ranges.get(s) {
            Some((lo, hi)) => Abs::Int(lo.clone(), hi.clone()),
            None => Abs::Unknown,
        },
        Node::Unary(UnOp::Not, x) => match eval(m, *x, ranges, a)? {
            Abs::Bool(t, f) => Abs::Bool(f, t),
            _ => unknown_bool(a),
        },
        Node::Unary(UnOp::Neg, x) if int(*x) => match eval(m, *x, ranges, a)? {
            Abs::Int(lo, hi) => {
                let zero = a.int(0);
                Abs::Int(a.sub(zero.clone(), hi), a.sub(zero, lo))
            }
            _ => Abs::Unknown,
        },
        Node::Binary(op, x, y) => {
            let (x, y) = (*x, *y);
            let both_int = int(x) && int(y);
            match op {
                BinOp::And | BinOp::Or => match (eval(m, x, ranges, a)?, eval(m, y, ranges, a)?) {
                    (Abs::Bool(t1, f1), Abs::Bool(t2, f2)) if *op == BinOp::And => {
                        Abs::Bool(a.and(t1, t2), a.or(f1, f2))
                    }
                    (Abs::Bool(t1, f1), Abs::Bool(t2, f2)) => {
                        Abs::Bool(a.or(t1, t2), a.and(f1, f2))
                    }
                    _ => unknown_bool(a),
                },
                BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge | BinOp::Eq | BinOp::Ne
                    if both_int =>
                {
                    let (Abs::Int(alo, ahi), Abs::Int(blo, bhi)) =
                        (eval(m, x, ranges, a)?, eval(m, y, ranges, a)?)
                    else {
                        return Ok(unknown_bool(a));
                    };
                    let (alo, ahi) = (a.share(alo), a.share(ahi));
                    let (blo, bhi) = (a.share(blo), a.share(bhi));
                    match op {
                        BinOp::Lt => Abs::Bool(a.lt(&ahi, &blo), a.le(&bhi, &alo)),
                        BinOp::Le => Abs::Bool(a.le(&ahi, &blo), a.lt(&bhi, &alo)),
                        BinOp::Gt => Abs::Bool(a.lt(&bhi, &alo), a.le(&ahi, &blo)),
                        BinOp::Ge => Abs::Bool(a.le(&bhi, &alo), a.lt(&ahi, &blo)),
                        _ => {
                            // Equal everywhere: both the same single value.
                            let (p, q) = (a.le(&ahi, &alo), a.le(&bhi, &blo));
                            let pq = a.and(p, q);
                            let (r, s) = (a.le(&alo, &blo), a.le(&blo, &alo));
                            let rs = a.and(r, s);
                            let same = a.and(pq, rs);
                            let (u, v) = (a.lt(&ahi, &blo), a.lt(&bhi, &alo));
                            let apart = a.or(u, v);
                            if *op == BinOp::Eq {
                                Abs::Bool(same, apart)
                            } else {
                                Abs::Bool(apart, same)
                            }
                        }
                    }
                }
                BinOp::Add | BinOp::Sub if both_int => {
                    let (Abs::Int(alo, ahi), Abs::Int(blo, bhi)) =
                        (eval(m, x, ranges, a)?, eval(m, y, ranges, a)?)
                    else {
                        return Ok(Abs::Unknown);
                    };
                    if *op == BinOp::Add {
                        Abs::Int(a.add(alo, blo), a.add(ahi, bhi))
                    } else {
                        Abs::Int(a.sub(alo, bhi), a.sub(ahi, blo))
                    }
                }
                BinOp::Mul if both_int => {
                    let (p, q) = (eval(m, x, ranges, a)?, eval(m, y, ranges, a)?);
                    let konst = |a: &A, v: &Abs<A>| match v {
                        Abs::Int(lo, hi) => match (a.known(lo), a.known(hi)) {
                            (Some(k), Some(k2)) if k == k2 => Some(k),
                            _ => None,
                        },
                        _ => None,
                    };
                    let (k, other) = match (konst(a, &p), konst(a, &q)) {
                        (Some(k), _) => (k, q),
                        (None, Some(k)) => (k, p),
                        _ => return Ok(Abs::Unknown),
                    };
                    let Abs::Int(lo, hi) = other else {
                        return Ok(Abs::Unknown);
                    };
                    let (lo, hi) = (a.mul_const(lo, k), a.mul_const(hi, k));
                    if k >= 0 {
                        Abs::Int(lo, hi)
                    } else {
                        Abs::Int(hi, lo)
                    }
                }
                BinOp::FloorDiv | BinOp::Mod if both_int => {
                    let divisor = match &m.expr(y).node {
                        Node::Const(c) if *c >= 1.0 && c.fract() == 0.0 => *c as i64,
                        _ => return Ok(Abs::Unknown),
                    };
                    let Abs::Int(lo, hi) = eval(m, x, ranges, a)? else {
                        return Ok(Abs::Unknown);
                    };
                    let (lo, hi) = (a.share(lo), a.share(hi));
                    let qlo = a.floor_div(lo.clone(), divisor, false);
                    let qlo = a.share(qlo);
                    let qhi = a.floor_div(hi.clone(), divisor, false);
                    let qhi = a.share(qhi);
                    if *op == BinOp::FloorDiv {
                        Abs::Int(qlo, qhi)
                    } else {
                        // Within one period the image is exact; else all of it.
                        let (p, q) = (a.le(&qlo, &qhi), a.le(&qhi, &qlo));
                        let one = a.and(p, q);
                        let rlo = a.floor_div(lo, divisor, true);
                        let rhi = a.floor_div(hi, divisor, true);
                        let (zero, top) = (a.int(0), a.int(divisor - 1));
                        Abs::Int(a.select(one.clone(), rlo, zero), a.select(one, rhi, top))
                    }
                }
                _ if n.ty == Ty::Bool => unknown_bool(a),
                _ => Abs::Unknown,
            }
        }
        _ if n.ty == Ty::Bool => unknown_bool(a),
        _ => Abs::Unknown,
    })
}

/// (surely true, surely false) of predicate `e` on the box.
pub fn class<A: Algebra>(
    m: &Module,
    e: ExprId,
    ranges: &HashMap<Slot, (A::Int, A::Int)>,
    a: &mut A,
) -> Result<(A::Bool, A::Bool), A::Error> {
    Ok(match eval(m, e, ranges, a)? {
        Abs::Bool(t, f) => (t, f),
        _ => (a.boolean(false), a.boolean(false)),
    })
}

/// Numbers: the algebra `mixc explain` evaluates with, as the kernels
/// would on the same box. A number remembers whether the kernel has it as
/// a literal (a constant, or a size fixed at build time): only a literal
/// factor makes a product an interval there, and so here.
pub struct Exact<'s> {
    /// Every size bound.
    pub sizes: &'s std::collections::BTreeMap<String, i64>,
    /// The sizes a build folds in.
    pub fixed: &'s std::collections::BTreeMap<String, i64>,
}

/// A number, and whether a kernel has it as a literal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Num {
    pub v: i64,
    pub literal: bool,
}

fn num(v: i64) -> Num {
    Num { v, literal: false }
}

impl Algebra for Exact<'_> {
    type Int = Num;
    type Bool = bool;
    type Error = String;
    fn int(&mut self, v: i64) -> Num {
        Num { v, literal: true }
    }
    fn boolean(&mut self, v: bool) -> bool {
        v
    }
    fn known(&self, x: &Num) -> Option<i64> {
        x.literal.then_some(x.v)
    }
    fn size(&mut self, d: &DimExpr) -> Result<Num, String> {
        let literal = match d {
            DimExpr::Const(_) => true,
            DimExpr::Sym(s) => self.fixed.contains_key(s),
            _ => false,
        };
        Ok(Num {
            v: d.eval(self.sizes)?,
            literal,
        })
    }
    fn add(&mut self, a: Num, b: Num) -> Num {
        num(a.v.saturating_add(b.v))
    }
    fn sub(&mut self, a: Num, b: Num) -> Num {
        num(a.v.saturating_sub(b.v))
    }
    fn mul_const(&mut self, a: Num, k: i64) -> Num {
        num(a.v.saturating_mul(k))
    }
    fn floor_div(&mut self, a: Num, k: i64, modulo: bool) -> Num {
        num(if modulo {
            a.v.rem_euclid(k)
        } else {
            a.v.div_euclid(k)
        })
    }
    fn lt(&mut self, a: &Num, b: &Num) -> bool {
        a.v < b.v
    }
    fn le(&mut self, a: &Num, b: &Num) -> bool {
        a.v <= b.v
    }
    fn and(&mut self, a: bool, b: bool) -> bool {
        a && b
    }
    fn or(&mut self, a: bool, b: bool) -> bool {
        a || b
    }
    fn select(&mut self, c: bool, a: Num, b: Num) -> Num {
        num(if c { a.v } else { b.v })
    }
}
