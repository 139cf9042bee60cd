//! Proofs that subscripts stay in range, by interval reasoning over linear
//! forms.
//!
//! A subscript `s` on an axis of extent `N` is in range when `s >= 0` and
//! `N - 1 - s >= 0`. Each goal is a linear form over index variables and
//! size symbols. We subtract up to two facts from the enclosing `where`
//! clauses and `select` conditions (each fact is `f >= 0`), bound what is
//! left from below by putting every index at the end of its range that
//! lowers it (0 or its extent minus 1), and accept when the remaining form in
//! sizes is non-negative for every size >= 1. This is sound: each step only
//! lowers the form. It is incomplete (non-linear subscripts are not proven),
//! and then the user is asked for a guard.

use crate::typed::{DimExpr, DimOp, Slot};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Var {
    Slot(Slot),
    Sym(String),
}

/// `c + sum(coef * var)`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Lin {
    pub c: i64,
    pub terms: BTreeMap<Var, i64>,
}

impl Lin {
    pub fn constant(c: i64) -> Lin {
        Lin {
            c,
            terms: BTreeMap::new(),
        }
    }

    pub fn var(v: Var) -> Lin {
        let mut terms = BTreeMap::new();
        terms.insert(v, 1);
        Lin { c: 0, terms }
    }

    pub fn add(&self, o: &Lin, k: i64) -> Lin {
        let mut r = self.clone();
        r.c += k * o.c;
        for (v, c) in &o.terms {
            let e = r.terms.entry(v.clone()).or_insert(0);
            *e += k * c;
            if *e == 0 {
                r.terms.remove(v);
            }
        }
        r
    }

    pub fn scale(&self, k: i64) -> Lin {
        Lin::default().add(self, k)
    }

    pub fn as_const(&self) -> Option<i64> {
        self.terms.is_empty().then_some(self.c)
    }

    /// A size expression as a linear form, when it is linear.
    pub fn from_dim(d: &DimExpr) -> Option<Lin> {
        match d {
            DimExpr::Const(v) => Some(Lin::constant(*v)),
            DimExpr::Sym(s) => Some(Lin::var(Var::Sym(s.clone()))),
            DimExpr::Bin(op, a, b) => {
                let (a, b) = (Lin::from_dim(a)?, Lin::from_dim(b)?);
                match op {
                    DimOp::Add => Some(a.add(&b, 1)),
                    DimOp::Sub => Some(a.add(&b, -1)),
                    DimOp::Mul => match (a.as_const(), b.as_const()) {
                        (Some(k), _) => Some(b.scale(k)),
                        (_, Some(k)) => Some(a.scale(k)),
                        _ => None,
                    },
                    _ => None,
                }
            }
        }
    }
}

/// Facts in scope (`f >= 0` each) and the extent of every index.
pub struct Prover<'a> {
    pub extents: &'a [Option<Lin>],
}

impl Prover<'_> {
    /// Lowest value of `l` over the index ranges, as a form in size symbols,
    /// or `None` if an index with a negative coefficient has no linear extent.
    fn lower_bound(&self, l: &Lin) -> Option<Lin> {
        let mut out = Lin::constant(l.c);
        for (v, &c) in &l.terms {
            match v {
                Var::Sym(_) => out = out.add(&Lin::var(v.clone()), c),
                Var::Slot(s) => {
                    if c < 0 {
                        let ext = self.extents.get(*s as usize)?.as_ref()?;
                        // index <= extent - 1
                        out = out.add(&ext.add(&Lin::constant(-1), 1), c);
                    }
                }
            }
        }
        Some(out)
    }

    /// Whether a form in size symbols is >= 0 whenever every size is >= 1.
    fn nonneg_for_sizes(l: &Lin) -> bool {
        if l.terms.keys().any(|v| matches!(v, Var::Slot(_))) {
            return false;
        }
        l.terms.values().all(|&c| c >= 0) && l.c + l.terms.values().sum::<i64>() >= 0
    }

    fn holds_without_facts(&self, goal: &Lin) -> bool {
        self.lower_bound(goal)
            .map(|b| Self::nonneg_for_sizes(&b))
            .unwrap_or(false)
    }

    /// Proves `goal >= 0` from `facts` (each `>= 0`) and the index ranges.
    pub fn prove(&self, goal: &Lin, facts: &[Lin]) -> bool {
        if self.holds_without_facts(goal) {
            return true;
        }
        for (i, f) in facts.iter().enumerate() {
            let r = goal.add(f, -1);
            if self.holds_without_facts(&r) {
                return true;
            }
            for g in &facts[i + 1..] {
                if self.holds_without_facts(&r.add(g, -1)) {
                    return true;
                }
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(s: &str) -> Lin {
        Lin::var(Var::Sym(s.into()))
    }
    fn slot(s: Slot) -> Lin {
        Lin::var(Var::Slot(s))
    }

    #[test]
    fn shifted_read_needs_the_guard() {
        // slots: 0 = l in [0, L), 1 = t in [0, 3)
        let ext = vec![Some(sym("L")), Some(Lin::constant(3))];
        let p = Prover { extents: &ext };
        let sub = slot(0).add(&slot(1), -1); // l - t
        assert!(!p.prove(&sub, &[]));
        let guard = slot(0).add(&slot(1), -1); // t <= l  ->  l - t >= 0
        assert!(p.prove(&sub, &[guard]));
        // upper: L - 1 - (l - t) >= 0 holds from ranges alone
        let upper = sym("L").add(&Lin::constant(-1), 1).add(&sub, -1);
        assert!(p.prove(&upper, &[]));
    }

    #[test]
    fn constant_offsets_into_longer_axes() {
        // w1[1 + k] with k in [0, 16), axis extent 33
        let ext = vec![Some(Lin::constant(16))];
        let p = Prover { extents: &ext };
        let sub = slot(0).add(&Lin::constant(1), 1);
        let upper = Lin::constant(32).add(&sub, -1);
        assert!(p.prove(&upper, &[]));
        let sub2 = slot(0).add(&Lin::constant(18), 1); // 15 + 18 = 33 > 32
        assert!(!p.prove(&Lin::constant(32).add(&sub2, -1), &[]));
    }
}
