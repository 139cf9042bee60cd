//! The key tiles a fused-attention kernel visits, counted on numbers by
//! walking them as the kernel does, so `mixc explain` reports what runs:
//!
//! - Each query row's key range `[lo, hi)` comes from the mask's linear
//!   clauses ([`crate::pattern::attention::bounds`]), evaluated at the row.
//! - **Tiled kernels** (a block of `tq` rows): the block visits the union
//!   of its rows' ranges in tiles of `tk` keys from its lowest key. Where
//!   the clauses are not the whole mask, each tile is classified on the
//!   box (block rows) x (tile keys) by [`crate::interval`], the evaluation
//!   the kernel emits: an empty tile is skipped, a full one runs without
//!   the predicate, a partial one tests each pair. Where they are the whole
//!   mask, every visited tile runs without the predicate.
//! - **A thread per row**: each row visits its own range, key by key; the
//!   predicate is tested per pair where the clauses are not the whole mask.
//!
//! Block-uniform slots (batch, head) the mask mentions are walked value by
//! value (up to [`MAX_UNIFORM`] combinations; more are sampled evenly).

use crate::interval::{self, Exact, Num};
use crate::ir::{Module, Node, Slot};
use crate::pattern::attention::{bounds, Lin, Template};
use std::collections::{BTreeMap, HashMap};

/// Combinations of block-uniform slot values walked at most.
pub const MAX_UNIFORM: u64 = 64;

/// What a kernel's walk over a mask visits.
#[derive(Clone, Debug, PartialEq)]
pub struct Walk {
    /// Query rows of a block (1: a thread per row) and keys of a tile (1:
    /// key by key).
    pub tq: usize,
    pub tk: usize,
    /// Query rows and keys.
    pub rows: usize,
    pub keys: usize,
    /// Tiles of the whole `rows x keys` grid, over every combination of
    /// block-uniform values walked.
    pub grid: u64,
    /// Tiles visited and classified empty (skipped after the test), full
    /// (no predicate), partial (the predicate on each pair).
    pub empty: u64,
    pub full: u64,
    pub partial: u64,
    /// Pairs the kept mask holds at least and at most.
    pub kept: (u64, u64),
    /// Pairs in the grid.
    pub pairs: u64,
    /// The linear clauses are the whole mask.
    pub exact: bool,
}

impl Walk {
    /// Tiles the kernel never computes on: outside every block's key
    /// range, or classified empty.
    pub fn skipped(&self) -> u64 {
        self.grid - self.full - self.partial
    }

    pub fn fraction_skipped(&self) -> f64 {
        if self.grid == 0 {
            0.0
        } else {
            self.skipped() as f64 / self.grid as f64
        }
    }

    /// The fraction of pairs the mask keeps (the midpoint of the bounds).
    pub fn kept_fraction(&self) -> f64 {
        if self.pairs == 0 {
            1.0
        } else {
            ((self.kept.0 + self.kept.1) as f64 / 2.0 / self.pairs as f64).min(1.0)
        }
    }
}

/// A linear bound's value at the point `at` (every slot it reads bound),
/// or `None` where the interval evaluation cannot tell it.
fn lin_at(
    m: &Module,
    l: &Lin,
    at: &HashMap<Slot, (Num, Num)>,
    alg: &mut Exact,
) -> Result<Option<i64>, String> {
    let mut acc = l.c;
    for (k, t) in &l.terms {
        match interval::eval(m, *t, at, alg)? {
            interval::Abs::Int(lo, hi) if lo.v == hi.v => acc += k * lo.v,
            _ => return Ok(None),
        }
    }
    Ok(Some(acc))
}

/// The walk of template `t`'s kernel over its mask: blocks of `tq` rows
/// along row slot `tiled` and key tiles of `tk` (`tq == 1 && tk == 1`: a
/// thread per row, key by key), at `sizes` (every size bound; `fixed`:
/// those a build folds in). `None` where the softmax has no mask.
pub fn walk(
    m: &Module,
    t: &Template,
    tiled: Slot,
    (tq, tk): (usize, usize),
    sizes: &BTreeMap<String, i64>,
    fixed: &BTreeMap<String, i64>,
) -> Result<Option<Walk>, String> {
    let op = &m.ops[t.p];
    let Node::Normalize { guard, .. } = &m.expr(op.body).node else {
        return Err("the attention template's softmax is not a normaliser".into());
    };
    let Some(guard) = *guard else {
        return Ok(None);
    };
    let b = bounds(m, Some(guard), t.jp);
    let ext = |s: Slot| op.slots[s as usize].extent.eval(sizes);
    let (rows, keys) = (ext(tiled)?.max(0) as usize, ext(t.jp)?.max(0) as usize);
    let (tq, tk) = (tq.max(1), tk.max(1));
    // The block-uniform slots the mask or its bounds read, value by value.
    let uniform: Vec<(Slot, i64)> = (0..op.rank as Slot)
        .filter(|s| *s != t.jp && *s != tiled && crate::pattern::mentions(m, guard, &[*s]))
        .map(|s| Ok((s, ext(s)?.max(1))))
        .collect::<Result<_, String>>()?;
    let combos: u64 = uniform.iter().map(|(_, n)| *n as u64).product();
    let walked = combos.min(MAX_UNIFORM);
    let mut alg = Exact { sizes, fixed };
    let mut w = Walk {
        tq,
        tk,
        rows,
        keys,
        grid: 0,
        empty: 0,
        full: 0,
        partial: 0,
        kept: (0, 0),
        pairs: 0,
        exact: b.exact,
    };
    let point = |v: i64| (Num { v, literal: false }, Num { v, literal: false });
    for c in 0..walked {
        // Combination `c` of `walked`, spread evenly over all of them.
        let mut k = c * combos / walked;
        let mut at: HashMap<Slot, (Num, Num)> = HashMap::new();
        for (s, n) in uniform.iter().rev() {
            at.insert(*s, point((k % *n as u64) as i64));
            k /= *n as u64;
        }
        // Each row's key range.
        let mut range = Vec::with_capacity(rows);
        for i in 0..rows {
            at.insert(tiled, point(i as i64));
            let mut lo = 0i64;
            let mut hi = keys as i64;
            for l in &b.lo {
                lo = lo.max(lin_at(m, l, &at, &mut alg)?.unwrap_or(0));
            }
            for l in &b.hi {
                hi = hi.min(lin_at(m, l, &at, &mut alg)?.unwrap_or(keys as i64));
            }
            range.push((lo.max(0), hi.min(keys as i64)));
        }
        let len = |(lo, hi): (i64, i64)| (hi - lo).max(0) as u64;
        w.pairs += (rows * keys) as u64;
        if tq == 1 && tk == 1 {
            // A thread per row, key by key.
            w.grid += (rows * keys) as u64;
            let visited: u64 = range.iter().map(|r| len(*r)).sum();
            if b.exact {
                w.full += visited;
                w.kept.0 += visited;
            } else {
                w.partial += visited;
            }
            w.kept.1 += visited;
            continue;
        }
        let key_tiles = keys.div_ceil(tk) as u64;
        for r0 in (0..rows).step_by(tq) {
            let r1 = (r0 + tq).min(rows);
            w.grid += key_tiles;
            let with_keys = || range[r0..r1].iter().filter(|r| r.0 < r.1);
            let (Some(blo), Some(bhi)) = (
                with_keys().map(|r| r.0).min(),
                with_keys().map(|r| r.1).max(),
            ) else {
                continue;
            };
            let mut j0 = blo;
            while j0 < bhi {
                let jend = (j0 + tk as i64).min(bhi);
                // Pairs of the tile within each row's own range.
                let inside: u64 = range[r0..r1]
                    .iter()
                    .map(|&(lo, hi)| len((lo.max(j0), hi.min(jend))))
                    .sum();
                let (full, empty) = if b.exact {
                    (true, false)
                } else {
                    let mut box_ = at.clone();
                    box_.insert(tiled, (point(r0 as i64).0, point(r1 as i64 - 1).0));
                    box_.insert(t.jp, (point(j0).0, point(jend - 1).0));
                    interval::class(m, guard, &box_, &mut alg)?
                };
                if empty {
                    w.empty += 1;
                } else {
                    if full {
                        w.full += 1;
                        w.kept.0 += inside;
                    } else {
                        w.partial += 1;
                    }
                    w.kept.1 += inside;
                }
                j0 = jend;
            }
        }
    }
    Ok(Some(w))
}
