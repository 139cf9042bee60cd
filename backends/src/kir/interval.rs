//! Tile classes at run time: the mask predicate evaluated abstractly on a
//! box of (row, key) pairs, in kernel IR, so a block can tell whether a
//! key tile is *empty* for all its rows (skipped: nothing loaded, nothing
//! computed), *full* (no per-pair predicate), or partial.
//!
//! This is the interval half of the static analysis in
//! `mixc_compiler::mask` (which classifies a whole tile grid at one `L`),
//! emitted as code so it holds at every `L`: integer values are intervals
//! `[lo, hi]` (both ends kernel-IR expressions), booleans are a pair
//! (surely true, surely false). It is sound: "surely" is claimed only
//! when every pair of the box agrees under the interpreter's integer
//! semantics (floor division and modulo by positive constants). Anything
//! it does not model (tensor reads, reals, division by a variable) is
//! unknown, and a partial tile is always a safe answer.

use super::{bin, Bin, Ex, Lower, Pred, R};
use mixc_compiler::ir::{BinOp, ExprId, Node, Slot, Ty, UnOp};
use std::collections::HashMap;

/// An abstract value on a box.
#[derive(Clone, Debug)]
pub(super) enum Abs {
    /// Every value lies in `[lo, hi]`.
    Int(Ex, Ex),
    /// (surely true, surely false) as i1 expressions.
    Bool(Ex, Ex),
    Unknown,
}

fn unknown_bool() -> Abs {
    Abs::Bool(Ex::B(false), Ex::B(false))
}

fn and(a: Ex, b: Ex) -> Ex {
    match (&a, &b) {
        (Ex::B(false), _) | (_, Ex::B(false)) => Ex::B(false),
        (Ex::B(true), _) => b,
        (_, Ex::B(true)) => a,
        _ => bin(Bin::And, a, b),
    }
}

fn or(a: Ex, b: Ex) -> Ex {
    match (&a, &b) {
        (Ex::B(true), _) | (_, Ex::B(true)) => Ex::B(true),
        (Ex::B(false), _) => b,
        (_, Ex::B(false)) => a,
        _ => bin(Bin::Or, a, b),
    }
}

fn lt(a: &Ex, b: &Ex) -> Ex {
    match (a, b) {
        (Ex::I(x), Ex::I(y)) => Ex::B(x < y),
        _ => bin(Bin::CmpI(Pred::Lt), a.clone(), b.clone()),
    }
}

fn le(a: &Ex, b: &Ex) -> Ex {
    match (a, b) {
        (Ex::I(x), Ex::I(y)) => Ex::B(x <= y),
        _ => bin(Bin::CmpI(Pred::Le), a.clone(), b.clone()),
    }
}

impl Lower<'_> {
    /// `e` on the box where each slot of `ranges` spans `[lo, hi]` (a
    /// slot not in `ranges` is unknown).
    pub(super) fn abs(&mut self, e: ExprId, ranges: &HashMap<Slot, (Ex, Ex)>) -> R<Abs> {
        let n = self.m.expr(e).clone();
        let int = |g: &Lower, x: ExprId| g.m.expr(x).ty == Ty::Int;
        Ok(match &n.node {
            Node::Const(c) if n.ty == Ty::Int => Abs::Int(Ex::I(*c as i64), Ex::I(*c as i64)),
            Node::Const(c) if n.ty == Ty::Bool => Abs::Bool(Ex::B(*c != 0.0), Ex::B(*c == 0.0)),
            Node::Size(d) => {
                let v = self.dim(d)?;
                let v = self.bind("size", v);
                Abs::Int(v.clone(), v)
            }
            Node::Index(s) => match ranges.get(s) {
                Some((lo, hi)) => Abs::Int(lo.clone(), hi.clone()),
                None => Abs::Unknown,
            },
            Node::Unary(UnOp::Not, a) => match self.abs(*a, ranges)? {
                Abs::Bool(t, f) => Abs::Bool(f, t),
                _ => unknown_bool(),
            },
            Node::Unary(UnOp::Neg, a) if int(self, *a) => match self.abs(*a, ranges)? {
                Abs::Int(lo, hi) => {
                    Abs::Int(bin(Bin::SubI, Ex::I(0), hi), bin(Bin::SubI, Ex::I(0), lo))
                }
                _ => Abs::Unknown,
            },
            Node::Binary(op, a, b) => {
                let (a, b) = (*a, *b);
                let both_int = int(self, a) && int(self, b);
                match op {
                    BinOp::And | BinOp::Or => {
                        let (x, y) = (self.abs(a, ranges)?, self.abs(b, ranges)?);
                        match (x, y) {
                            (Abs::Bool(t1, f1), Abs::Bool(t2, f2)) if *op == BinOp::And => {
                                Abs::Bool(and(t1, t2), or(f1, f2))
                            }
                            (Abs::Bool(t1, f1), Abs::Bool(t2, f2)) => {
                                Abs::Bool(or(t1, t2), and(f1, f2))
                            }
                            _ => unknown_bool(),
                        }
                    }
                    BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge | BinOp::Eq | BinOp::Ne
                        if both_int =>
                    {
                        let (Abs::Int(alo, ahi), Abs::Int(blo, bhi)) =
                            (self.abs(a, ranges)?, self.abs(b, ranges)?)
                        else {
                            return Ok(unknown_bool());
                        };
                        let (alo, ahi) = (self.bind("lo", alo), self.bind("hi", ahi));
                        let (blo, bhi) = (self.bind("lo", blo), self.bind("hi", bhi));
                        match op {
                            BinOp::Lt => Abs::Bool(lt(&ahi, &blo), le(&bhi, &alo)),
                            BinOp::Le => Abs::Bool(le(&ahi, &blo), lt(&bhi, &alo)),
                            BinOp::Gt => Abs::Bool(lt(&bhi, &alo), le(&ahi, &blo)),
                            BinOp::Ge => Abs::Bool(le(&bhi, &alo), lt(&ahi, &blo)),
                            _ => {
                                // Equal everywhere: both the same single value.
                                let same = and(
                                    and(le(&ahi, &alo), le(&bhi, &blo)),
                                    and(le(&alo, &blo), le(&blo, &alo)),
                                );
                                let apart = or(lt(&ahi, &blo), lt(&bhi, &alo));
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
                            (self.abs(a, ranges)?, self.abs(b, ranges)?)
                        else {
                            return Ok(Abs::Unknown);
                        };
                        if *op == BinOp::Add {
                            Abs::Int(bin(Bin::AddI, alo, blo), bin(Bin::AddI, ahi, bhi))
                        } else {
                            Abs::Int(bin(Bin::SubI, alo, bhi), bin(Bin::SubI, ahi, blo))
                        }
                    }
                    BinOp::Mul if both_int => {
                        let (x, y) = (self.abs(a, ranges)?, self.abs(b, ranges)?);
                        match (x, y) {
                            (Abs::Int(Ex::I(k), Ex::I(k2)), Abs::Int(lo, hi))
                            | (Abs::Int(lo, hi), Abs::Int(Ex::I(k), Ex::I(k2)))
                                if k == k2 =>
                            {
                                let (lo, hi) =
                                    (bin(Bin::MulI, lo, Ex::I(k)), bin(Bin::MulI, hi, Ex::I(k)));
                                if k >= 0 {
                                    Abs::Int(lo, hi)
                                } else {
                                    Abs::Int(hi, lo)
                                }
                            }
                            _ => Abs::Unknown,
                        }
                    }
                    BinOp::FloorDiv | BinOp::Mod if both_int => {
                        let divisor = match &self.m.expr(b).node {
                            Node::Const(c) if *c >= 1.0 && c.fract() == 0.0 => *c as i64,
                            _ => return Ok(Abs::Unknown),
                        };
                        let Abs::Int(lo, hi) = self.abs(a, ranges)? else {
                            return Ok(Abs::Unknown);
                        };
                        let (lo, hi) = (self.bind("lo", lo), self.bind("hi", hi));
                        let qlo = self.floor_div_mod(lo.clone(), Ex::I(divisor), false);
                        let qlo = self.bind("qlo", qlo);
                        let qhi = self.floor_div_mod(hi.clone(), Ex::I(divisor), false);
                        let qhi = self.bind("qhi", qhi);
                        if *op == BinOp::FloorDiv {
                            Abs::Int(qlo, qhi)
                        } else {
                            // Within one period the image is exact; else all of it.
                            let one = self.bind("one_period", bin(Bin::CmpI(Pred::Eq), qlo, qhi));
                            let rlo = self.floor_div_mod(lo, Ex::I(divisor), true);
                            let rhi = self.floor_div_mod(hi, Ex::I(divisor), true);
                            Abs::Int(
                                Ex::Select(
                                    Box::new(one.clone()),
                                    Box::new(rlo),
                                    Box::new(Ex::I(0)),
                                ),
                                Ex::Select(
                                    Box::new(one),
                                    Box::new(rhi),
                                    Box::new(Ex::I(divisor - 1)),
                                ),
                            )
                        }
                    }
                    _ if n.ty == Ty::Bool => unknown_bool(),
                    _ => Abs::Unknown,
                }
            }
            _ if n.ty == Ty::Bool => unknown_bool(),
            _ => Abs::Unknown,
        })
    }

    /// (surely true, surely false) of predicate `e` on the box, bound to
    /// variables.
    pub(super) fn tile_class(
        &mut self,
        e: ExprId,
        ranges: &HashMap<Slot, (Ex, Ex)>,
    ) -> R<(Ex, Ex)> {
        let (t, f) = match self.abs(e, ranges)? {
            Abs::Bool(t, f) => (t, f),
            _ => (Ex::B(false), Ex::B(false)),
        };
        let t = self.bind("tile_full", t);
        let f = self.bind("tile_empty", f);
        Ok((t, f))
    }
}
