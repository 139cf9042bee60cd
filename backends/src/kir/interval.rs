//! Tile classes at run time: the mask predicate evaluated abstractly on a
//! box of (row, key) pairs, in kernel IR, so a block can tell whether a
//! key tile is *empty* for all its rows (skipped: nothing loaded, nothing
//! computed), *full* (no per-pair predicate), or partial.
//!
//! The evaluation is `mixc_compiler::interval`, the one interval analysis
//! of masks, over kernel-IR expressions: this module is its [`Algebra`]
//! (integers and booleans as kernel-IR expressions, shared values bound to
//! variables), so it holds at every `L`; `mixc explain` runs the same
//! evaluation on numbers to count the tiles these kernels skip.

use super::{bin, BackendError, Bin, Ex, Lower, Pred, R};
use mixc_compiler::interval::{class, Algebra};
use mixc_compiler::ir::{DimExpr, ExprId, Slot};
use std::collections::HashMap;

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

impl Algebra for Lower<'_> {
    type Int = Ex;
    type Bool = Ex;
    type Error = BackendError;
    fn int(&mut self, v: i64) -> Ex {
        Ex::I(v)
    }
    fn boolean(&mut self, v: bool) -> Ex {
        Ex::B(v)
    }
    fn known(&self, x: &Ex) -> Option<i64> {
        match x {
            Ex::I(k) => Some(*k),
            _ => None,
        }
    }
    fn size(&mut self, d: &DimExpr) -> R<Ex> {
        self.dim(d)
    }
    fn add(&mut self, a: Ex, b: Ex) -> Ex {
        bin(Bin::AddI, a, b)
    }
    fn sub(&mut self, a: Ex, b: Ex) -> Ex {
        bin(Bin::SubI, a, b)
    }
    fn mul_const(&mut self, a: Ex, k: i64) -> Ex {
        bin(Bin::MulI, a, Ex::I(k))
    }
    fn floor_div(&mut self, a: Ex, k: i64, modulo: bool) -> Ex {
        self.floor_div_mod(a, Ex::I(k), modulo)
    }
    fn lt(&mut self, a: &Ex, b: &Ex) -> Ex {
        match (a, b) {
            (Ex::I(x), Ex::I(y)) => Ex::B(x < y),
            _ => bin(Bin::CmpI(Pred::Lt), a.clone(), b.clone()),
        }
    }
    fn le(&mut self, a: &Ex, b: &Ex) -> Ex {
        match (a, b) {
            (Ex::I(x), Ex::I(y)) => Ex::B(x <= y),
            _ => bin(Bin::CmpI(Pred::Le), a.clone(), b.clone()),
        }
    }
    fn and(&mut self, a: Ex, b: Ex) -> Ex {
        and(a, b)
    }
    fn or(&mut self, a: Ex, b: Ex) -> Ex {
        or(a, b)
    }
    fn select(&mut self, c: Ex, a: Ex, b: Ex) -> Ex {
        match c {
            Ex::B(true) => a,
            Ex::B(false) => b,
            c => Ex::Select(Box::new(c), Box::new(a), Box::new(b)),
        }
    }
    fn share(&mut self, x: Ex) -> Ex {
        self.bind("v", x)
    }
}

impl Lower<'_> {
    /// (surely true, surely false) of predicate `e` on the box, bound to
    /// variables.
    pub(super) fn tile_class(
        &mut self,
        e: ExprId,
        ranges: &HashMap<Slot, (Ex, Ex)>,
    ) -> R<(Ex, Ex)> {
        let m = self.m;
        let (t, f) = class(m, e, ranges, self)?;
        let t = self.bind("tile_full", t);
        let f = self.bind("tile_empty", f);
        Ok((t, f))
    }
}
