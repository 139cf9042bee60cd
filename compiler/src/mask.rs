//! Static mask analysis: which (query tile, key tile) blocks of an attention
//! mask are empty, full or partial.
//!
//! A mask is a boolean predicate `pred(i, j)` over a query index `i` and a
//! key index `j` (a [`TExpr`] of type [`Ty::Bool`](mixc_dsl::typed::Ty::Bool)).
//! A blocked kernel walks a grid of `Tq x Tk` tiles. A tile where the mask is
//! false for every pair ([`TileClass::Empty`]) is skipped; a tile where it is
//! true for every pair ([`TileClass::Full`]) needs no per-element mask; every
//! other tile ([`TileClass::Partial`]) evaluates the mask element by element.
//!
//! # Use
//!
//! [`analyze`] classifies the whole grid at one `L` and returns
//! [`MaskTiles`] (counts, the fraction of tiles skipped, each tile's class,
//! bounds on the kept pairs); [`classify_tile`] classifies one tile;
//! [`MaskAnalyzer`] prepares a predicate once for many tiles; [`Options`]
//! gives the ranges of other index slots (a head `h`) and the split budget.
//!
//! # How it works
//!
//! The predicate is evaluated abstractly on a *box*
//! `i in [i0, i1], j in [j0, j1]` (one tile), never pair by pair. An abstract
//! value is one of:
//!
//! - an exact affine form `a*i + b*j + c` with integer coefficients, kept
//!   while the expression is affine in the two indices. Comparisons between
//!   affine forms are decided on the exact range of their difference, so
//!   `j <= i`, `i - j < w` and even `i - j + j <= i` are decided exactly;
//! - a finite interval `[lo, hi]` (flagged when every value is an integer),
//!   with sound transfer functions for `+ - * /`, floor division and modulo
//!   (the exact image when the operand stays within one period), `min`,
//!   `max`, `abs`, `relu`, `floor`, `ceil`, `select` and guards;
//! - unknown (a tensor read, a reduction, a transcendental function of a
//!   non-constant, division by an interval holding 0, ...).
//!
//! Comparisons give a three-valued boolean (true / false / unknown) and
//! `and`, `or`, `not` follow three-valued logic. When the predicate is
//! undecided on a tile, the tile is split in halves and the halves are
//! analysed again (branch and bound), up to [`Options::split_budget`]
//! evaluations per tile, so masks whose atoms are individually satisfiable
//! but not jointly (a segment boundary inside a tile, `i - i % s <= j`) are
//! still found empty or full where the budget allows.
//!
//! # Soundness
//!
//! `Empty` and `Full` are claims about every pair of the tile under the
//! reference interpreter's semantics (f64 arithmetic through
//! [`mixc_dsl::ops`], booleans as 0 and 1). `Partial` is always a safe
//! answer, and it is the answer whenever the analysis cannot decide.
//! Interval bounds on reals are computed with the same correctly rounded
//! operations as the interpreter; rounding is monotone, so a bound computed
//! at the corners of a box bounds every value computed inside it. Affine
//! forms are kept only while every value they take on the box is an integer
//! below 2^52 in magnitude, where f64 arithmetic is exact.
//!
//! # Cost
//!
//! `O(n_q * n_k * (split_budget + 1) * |pred|)` for [`analyze`]: nothing of
//! size `L x L` is ever built; the tile grid (`(L/Tq) x (L/Tk)` bytes) is.

use mixc_dsl::ast::{BinOp, UnOp};
use mixc_dsl::ops::{scalar_binop, scalar_builtin};
use mixc_dsl::typed::{Builtin, Slot, TExpr, TExprKind};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;

/// Largest magnitude at which f64 integer arithmetic is still exact with a
/// margin (results of one `+`, `-` stay below 2^53).
const EXACT: f64 = 4_503_599_627_370_496.0; // 2^52
/// Largest index magnitude accepted for a tile's ranges.
const MAX_INDEX: i64 = 1 << 40;

/// The default for [`Options::split_budget`].
pub const DEFAULT_SPLIT_BUDGET: usize = 32;

/// How a tile of the (query, key) grid relates to the mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TileClass {
    /// The mask is false for every pair in the tile: a kernel skips it.
    Empty,
    /// Some pairs may be kept and some dropped, or the analysis could not
    /// tell: the mask is evaluated element by element.
    Partial,
    /// The mask is true for every pair: no per-element mask is needed.
    Full,
}

impl TileClass {
    fn symbol(self) -> char {
        match self {
            TileClass::Empty => '.',
            TileClass::Partial => '+',
            TileClass::Full => '#',
        }
    }
}

/// Knobs of the analysis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Inclusive ranges of index slots other than the query's and the key's
    /// (e.g. a head `h` in `(0, H - 1)`, or `(h, h)` for one head). A tile is
    /// `Empty` (`Full`) only if it is empty (full) for every value in range.
    /// Slots not listed are unknown: any value.
    pub slot_ranges: BTreeMap<Slot, (i64, i64)>,
    /// How many extra evaluations one tile may spend on halves of itself
    /// when the predicate is undecided on the whole tile. `0` is plain
    /// interval evaluation, one evaluation per tile.
    pub split_budget: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            slot_ranges: BTreeMap::new(),
            split_budget: DEFAULT_SPLIT_BUDGET,
        }
    }
}

/// The classification of every tile of an `L x L` mask at tile sizes
/// `Tq x Tk`. Query tile `qi` covers `i` in `qi*Tq ..= min(qi*Tq + Tq, L) - 1`
/// (the last tile is short when `Tq` does not divide `L`); likewise keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaskTiles {
    /// Query tile size.
    pub tq: usize,
    /// Key tile size.
    pub tk: usize,
    /// Sequence length (queries and keys).
    pub l: usize,
    /// Number of query tiles, `ceil(L / Tq)`.
    pub n_q: usize,
    /// Number of key tiles, `ceil(L / Tk)`.
    pub n_k: usize,
    /// Tiles classified [`TileClass::Empty`].
    pub empty: usize,
    /// Tiles classified [`TileClass::Partial`].
    pub partial: usize,
    /// Tiles classified [`TileClass::Full`].
    pub full: usize,
    /// Row-major `n_q x n_k`.
    classes: Vec<TileClass>,
}

impl MaskTiles {
    /// The class of query tile `qi` against key tile `ki`. Panics when out of
    /// the grid.
    pub fn class(&self, qi: usize, ki: usize) -> TileClass {
        assert!(
            qi < self.n_q && ki < self.n_k,
            "tile ({qi}, {ki}) is outside the grid"
        );
        self.classes[qi * self.n_k + ki]
    }

    /// The classes of query tile `qi` against every key tile, in order.
    pub fn row(&self, qi: usize) -> &[TileClass] {
        &self.classes[qi * self.n_k..(qi + 1) * self.n_k]
    }

    /// Every class, row-major (`n_q` rows of `n_k`).
    pub fn classes(&self) -> &[TileClass] {
        &self.classes
    }

    /// The key tiles query tile `qi` must visit (the non-empty ones), with
    /// their classes.
    pub fn visited(&self, qi: usize) -> impl Iterator<Item = (usize, TileClass)> + '_ {
        self.row(qi)
            .iter()
            .enumerate()
            .filter(|(_, c)| **c != TileClass::Empty)
            .map(|(k, c)| (k, *c))
    }

    /// The inclusive range of query indices of tile `qi`.
    pub fn q_range(&self, qi: usize) -> (i64, i64) {
        tile_range(qi, self.tq, self.l)
    }

    /// The inclusive range of key indices of tile `ki`.
    pub fn k_range(&self, ki: usize) -> (i64, i64) {
        tile_range(ki, self.tk, self.l)
    }

    /// Number of tiles, `n_q * n_k`.
    pub fn tiles(&self) -> usize {
        self.n_q * self.n_k
    }

    /// The fraction of tiles that are empty (0 for an empty grid).
    pub fn fraction_empty(&self) -> f64 {
        ratio(self.empty, self.tiles())
    }

    /// The fraction of tiles a blocked kernel skips: the empty ones. The same
    /// as [`MaskTiles::fraction_empty`].
    pub fn fraction_skipped(&self) -> f64 {
        self.fraction_empty()
    }

    /// The fraction of tiles that are full (computed without a mask).
    pub fn fraction_full(&self) -> f64 {
        ratio(self.full, self.tiles())
    }

    /// The fraction of tiles that need the mask element by element.
    pub fn fraction_partial(&self) -> f64 {
        ratio(self.partial, self.tiles())
    }

    /// Bounds on the number of kept `(i, j)` pairs: every pair of a full tile
    /// is kept (lower bound); no pair of an empty tile is (upper bound: the
    /// pairs of full and partial tiles, i.e. the pairs a kernel computes).
    pub fn kept_pairs_bounds(&self) -> (u64, u64) {
        let (mut lo, mut hi) = (0u64, 0u64);
        for qi in 0..self.n_q {
            let (q0, q1) = self.q_range(qi);
            for (ki, c) in self.row(qi).iter().enumerate() {
                let (k0, k1) = self.k_range(ki);
                let n = (q1 - q0 + 1) as u64 * (k1 - k0 + 1) as u64;
                match c {
                    TileClass::Empty => {}
                    TileClass::Partial => hi += n,
                    TileClass::Full => {
                        lo += n;
                        hi += n
                    }
                }
            }
        }
        (lo, hi)
    }
}

/// One character per tile, one line per query tile: `.` empty, `+` partial,
/// `#` full.
impl fmt::Display for MaskTiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for qi in 0..self.n_q {
            let line: String = self.row(qi).iter().map(|c| c.symbol()).collect();
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

fn tile_range(t: usize, size: usize, l: usize) -> (i64, i64) {
    let lo = t * size;
    let hi = (lo + size).min(l) - 1;
    (lo as i64, hi as i64)
}

/// Classifies one tile: query indices `q_range` and key indices `k_range`
/// (both inclusive) under the mask `pred`, with the default [`Options`]
/// (other index slots unknown). `q_slot` and `k_slot` are the slots of the
/// query and key indices in `pred`; `sizes` gives the values of the dims
/// `pred` mentions. An empty range gives `Empty`.
pub fn classify_tile(
    pred: &TExpr,
    q_slot: Slot,
    k_slot: Slot,
    q_range: (i64, i64),
    k_range: (i64, i64),
    sizes: &BTreeMap<String, i64>,
) -> TileClass {
    MaskAnalyzer::new(pred, q_slot, k_slot, sizes, &Options::default()).classify(q_range, k_range)
}

/// Classifies every tile of the `L x L` mask `pred` at tile sizes
/// `tq x tk`, with the default [`Options`]. See [`analyze_with`].
pub fn analyze(
    pred: &TExpr,
    q_slot: Slot,
    k_slot: Slot,
    l: usize,
    tq: usize,
    tk: usize,
    sizes: &BTreeMap<String, i64>,
) -> MaskTiles {
    analyze_with(pred, q_slot, k_slot, l, tq, tk, sizes, &Options::default())
}

/// Classifies every tile of the `L x L` mask `pred` at tile sizes
/// `tq x tk`. `sizes` gives the dims `pred` mentions; when it has no `L`,
/// `L` is bound to `l`. Panics if `tq` or `tk` is 0.
#[allow(clippy::too_many_arguments)]
pub fn analyze_with(
    pred: &TExpr,
    q_slot: Slot,
    k_slot: Slot,
    l: usize,
    tq: usize,
    tk: usize,
    sizes: &BTreeMap<String, i64>,
    opts: &Options,
) -> MaskTiles {
    assert!(tq > 0 && tk > 0, "tile sizes must be positive");
    let mut sizes = sizes.clone();
    sizes.entry("L".to_string()).or_insert(l as i64);
    let an = MaskAnalyzer::new(pred, q_slot, k_slot, &sizes, opts);
    let n_q = l.div_ceil(tq);
    let n_k = l.div_ceil(tk);
    let mut classes = Vec::with_capacity(n_q * n_k);
    let (mut empty, mut partial, mut full) = (0, 0, 0);
    for qi in 0..n_q {
        let q = tile_range(qi, tq, l);
        for ki in 0..n_k {
            let c = an.classify(q, tile_range(ki, tk, l));
            match c {
                TileClass::Empty => empty += 1,
                TileClass::Partial => partial += 1,
                TileClass::Full => full += 1,
            }
            classes.push(c);
        }
    }
    MaskTiles {
        tq,
        tk,
        l,
        n_q,
        n_k,
        empty,
        partial,
        full,
        classes,
    }
}

/// A mask predicate prepared for classifying many tiles: dims are bound and
/// the parts that cannot be analysed are replaced by "unknown" once.
#[derive(Clone, Debug)]
pub struct MaskAnalyzer {
    root: Node,
    budget: usize,
}

impl MaskAnalyzer {
    /// Prepares `pred` (query index in `q_slot`, key index in `k_slot`,
    /// which must differ) with dim values `sizes` and `opts`.
    pub fn new(
        pred: &TExpr,
        q_slot: Slot,
        k_slot: Slot,
        sizes: &BTreeMap<String, i64>,
        opts: &Options,
    ) -> MaskAnalyzer {
        assert_ne!(
            q_slot, k_slot,
            "query and key must be different index slots"
        );
        let cx = Prep {
            q_slot,
            k_slot,
            sizes,
            ranges: &opts.slot_ranges,
        };
        MaskAnalyzer {
            root: cx.node(pred),
            budget: opts.split_budget,
        }
    }

    /// Classifies the tile of query indices `q` and key indices `k` (both
    /// inclusive ranges). An empty range gives `Empty` (no pair at all).
    pub fn classify(&self, q: (i64, i64), k: (i64, i64)) -> TileClass {
        if q.0 > q.1 || k.0 > k.1 {
            return TileClass::Empty;
        }
        if [q.0, q.1, k.0, k.1].iter().any(|v| v.abs() > MAX_INDEX) {
            return TileClass::Partial;
        }
        let mut queue = VecDeque::from([Bx { q, k }]);
        let mut evals = 0usize;
        let (mut any_true, mut any_false) = (false, false);
        while let Some(bx) = queue.pop_front() {
            evals += 1;
            match truth(&eval(&self.root, &bx), &bx) {
                Tri::True => any_true = true,
                Tri::False => any_false = true,
                Tri::Unknown => {
                    // Two more evaluations, on top of those done and queued.
                    let affordable = evals + queue.len() + 2 <= self.budget + 1;
                    match bx.halves() {
                        Some((a, b)) if affordable => {
                            queue.push_back(a);
                            queue.push_back(b);
                        }
                        _ => return TileClass::Partial,
                    }
                }
            }
            if any_true && any_false {
                return TileClass::Partial;
            }
        }
        if any_true {
            TileClass::Full
        } else {
            TileClass::Empty
        }
    }
}

// ---------------------------------------------------------------------------
// Preparation: TExpr -> Node.

/// The predicate with dims bound and unanalysable parts made unknown.
#[derive(Clone, Debug)]
enum Node {
    Val(Val),
    /// The query index.
    Q,
    /// The key index.
    K,
    Un(UnOp, Box<Node>),
    Bin(BinOp, Box<Node>, Box<Node>),
    Call(Builtin, Vec<Node>),
    /// The body where the predicate holds, else 0.
    Guard(Box<Node>, Box<Node>),
}

struct Prep<'a> {
    q_slot: Slot,
    k_slot: Slot,
    sizes: &'a BTreeMap<String, i64>,
    ranges: &'a BTreeMap<Slot, (i64, i64)>,
}

impl Prep<'_> {
    fn node(&self, e: &TExpr) -> Node {
        let b = |x: &TExpr| Box::new(self.node(x));
        match &e.kind {
            TExprKind::Const(v) => Node::Val(Val::constant(*v)),
            TExprKind::Dim(d) => Node::Val(match d.eval(self.sizes) {
                Ok(v) => Val::constant(v as f64),
                Err(_) => Val::Top,
            }),
            TExprKind::Index(s) if *s == self.q_slot => Node::Q,
            TExprKind::Index(s) if *s == self.k_slot => Node::K,
            TExprKind::Index(s) => Node::Val(match self.ranges.get(s) {
                Some(&(lo, hi)) if lo <= hi => Val::range(lo as f64, hi as f64, true),
                _ => Val::Top,
            }),
            TExprKind::Unary(op, a) => Node::Un(*op, b(a)),
            TExprKind::Binary(op, x, y) => Node::Bin(*op, b(x), b(y)),
            TExprKind::Call(f, args) => Node::Call(*f, args.iter().map(|a| self.node(a)).collect()),
            TExprKind::Guard { pred, body } => Node::Guard(b(pred), b(body)),
            TExprKind::Read { .. } | TExprKind::Reduce { .. } | TExprKind::Normalize { .. } => {
                Node::Val(Val::Top)
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The abstract domain.

/// A box of (query, key) index pairs, both ranges inclusive and non-empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Bx {
    q: (i64, i64),
    k: (i64, i64),
}

impl Bx {
    /// The box cut in two across its longer side, or `None` for one pair.
    fn halves(&self) -> Option<(Bx, Bx)> {
        let wq = self.q.1 - self.q.0;
        let wk = self.k.1 - self.k.0;
        if wq == 0 && wk == 0 {
            return None;
        }
        let cut = |(lo, hi): (i64, i64)| {
            let mid = lo + (hi - lo + 1) / 2;
            ((lo, mid - 1), (mid, hi))
        };
        Some(if wq >= wk {
            let (a, b) = cut(self.q);
            (Bx { q: a, k: self.k }, Bx { q: b, k: self.k })
        } else {
            let (a, b) = cut(self.k);
            (Bx { q: self.q, k: a }, Bx { q: self.q, k: b })
        })
    }
}

/// A three-valued boolean.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tri {
    False,
    True,
    Unknown,
}

impl Tri {
    fn not(self) -> Tri {
        match self {
            Tri::False => Tri::True,
            Tri::True => Tri::False,
            Tri::Unknown => Tri::Unknown,
        }
    }

    /// `True` if `t`, `False` if `f`, else unknown.
    fn decide(t: bool, f: bool) -> Tri {
        if t {
            Tri::True
        } else if f {
            Tri::False
        } else {
            Tri::Unknown
        }
    }
}

/// An exact affine form `a*q + b*k + c` in the query and key indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Lin {
    a: i64,
    b: i64,
    c: i64,
}

impl Lin {
    fn constant(c: i64) -> Lin {
        Lin { a: 0, b: 0, c }
    }

    fn as_const(&self) -> Option<i64> {
        (self.a == 0 && self.b == 0).then_some(self.c)
    }

    fn add(&self, o: &Lin) -> Option<Lin> {
        Some(Lin {
            a: self.a.checked_add(o.a)?,
            b: self.b.checked_add(o.b)?,
            c: self.c.checked_add(o.c)?,
        })
    }

    fn neg(&self) -> Option<Lin> {
        Some(Lin {
            a: self.a.checked_neg()?,
            b: self.b.checked_neg()?,
            c: self.c.checked_neg()?,
        })
    }

    fn sub(&self, o: &Lin) -> Option<Lin> {
        self.add(&o.neg()?)
    }

    fn scale(&self, s: i64) -> Option<Lin> {
        Some(Lin {
            a: self.a.checked_mul(s)?,
            b: self.b.checked_mul(s)?,
            c: self.c.checked_mul(s)?,
        })
    }

    /// The exact smallest and largest value on the box (at its corners).
    fn range(&self, bx: &Bx) -> (i128, i128) {
        let term = |coef: i64, (lo, hi): (i64, i64)| {
            let (x, y) = (coef as i128 * lo as i128, coef as i128 * hi as i128);
            (x.min(y), x.max(y))
        };
        let (a0, a1) = term(self.a, bx.q);
        let (b0, b1) = term(self.b, bx.k);
        let c = self.c as i128;
        (a0 + b0 + c, a1 + b1 + c)
    }
}

/// A finite interval `[lo, hi]`, `lo <= hi`; every value is an integer when
/// `int`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Iv {
    lo: f64,
    hi: f64,
    int: bool,
}

/// An abstract value: what is known of an expression's value on a box.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Val {
    /// Exactly this affine form (every value an integer of magnitude at most
    /// 2^52 on the box it was computed for).
    Lin(Lin),
    /// Some finite value in the interval.
    Range(Iv),
    /// Anything, NaN and infinities included.
    Top,
}

const FALSE: Val = Val::Lin(Lin { a: 0, b: 0, c: 0 });
const TRUE: Val = Val::Lin(Lin { a: 0, b: 0, c: 1 });
const UNKNOWN_BOOL: Val = Val::Range(Iv {
    lo: 0.0,
    hi: 1.0,
    int: true,
});

impl Val {
    /// Exactly the value `v`.
    fn constant(v: f64) -> Val {
        if !v.is_finite() {
            Val::Top
        } else if v.fract() == 0.0 && v.abs() <= EXACT {
            Val::Lin(Lin::constant(v as i64))
        } else {
            Val::Range(Iv {
                lo: v,
                hi: v,
                int: v.fract() == 0.0,
            })
        }
    }

    /// Some value in `[lo, hi]` (unknown unless both are finite).
    fn range(lo: f64, hi: f64, int: bool) -> Val {
        if !(lo.is_finite() && hi.is_finite()) || lo > hi {
            Val::Top
        } else if lo == hi {
            Val::constant(lo)
        } else {
            Val::Range(Iv { lo, hi, int })
        }
    }

    fn from_iv(iv: Option<Iv>) -> Val {
        match iv {
            Some(Iv { lo, hi, int }) => Val::range(lo, hi, int),
            None => Val::Top,
        }
    }

    fn tri(t: Tri) -> Val {
        match t {
            Tri::False => FALSE,
            Tri::True => TRUE,
            Tri::Unknown => UNKNOWN_BOOL,
        }
    }

    /// An affine form, if every value it takes on the box is exact in f64.
    fn lin(l: Lin, bx: &Bx) -> Option<Val> {
        let (lo, hi) = l.range(bx);
        let lim = EXACT as i128;
        (lo >= -lim && hi <= lim).then_some(Val::Lin(l))
    }

    /// The interval hull on the box, or `None` when unknown.
    fn iv(&self, bx: &Bx) -> Option<Iv> {
        match self {
            Val::Lin(l) => {
                let (lo, hi) = l.range(bx);
                Some(Iv {
                    lo: lo as f64,
                    hi: hi as f64,
                    int: true,
                })
            }
            Val::Range(iv) => Some(*iv),
            Val::Top => None,
        }
    }

    /// The single value this takes on the box, if there is one.
    fn exact(&self, bx: &Bx) -> Option<f64> {
        let iv = self.iv(bx)?;
        (iv.lo == iv.hi).then_some(iv.lo)
    }
}

/// What the interpreter's truth test (`x != 0`) gives on the box.
fn truth(v: &Val, bx: &Bx) -> Tri {
    match v.iv(bx) {
        None => Tri::Unknown,
        Some(iv) => Tri::decide(iv.lo > 0.0 || iv.hi < 0.0, iv.lo == 0.0 && iv.hi == 0.0),
    }
}

/// Either of two values (the join).
fn join(x: Val, y: Val, bx: &Bx) -> Val {
    if x == y {
        return x;
    }
    match (x.iv(bx), y.iv(bx)) {
        (Some(a), Some(b)) => Val::range(a.lo.min(b.lo), a.hi.max(b.hi), a.int && b.int),
        _ => Val::Top,
    }
}

/// A comparison of values in `[alo, ahi]` with values in `[blo, bhi]`:
/// decided when it holds for every pair, or for none.
fn compare<T: PartialOrd + Copy>(op: BinOp, alo: T, ahi: T, blo: T, bhi: T) -> Tri {
    match op {
        BinOp::Lt => Tri::decide(ahi < blo, alo >= bhi),
        BinOp::Le => Tri::decide(ahi <= blo, alo > bhi),
        BinOp::Gt => Tri::decide(alo > bhi, ahi <= blo),
        BinOp::Ge => Tri::decide(alo >= bhi, ahi < blo),
        BinOp::Eq => Tri::decide(
            alo == ahi && blo == bhi && alo == blo,
            ahi < blo || bhi < alo,
        ),
        BinOp::Ne => compare(BinOp::Eq, alo, ahi, blo, bhi).not(),
        _ => unreachable!("not a comparison: {op:?}"),
    }
}

/// A comparison evaluated relationally where both sides are affine (on the
/// exact range of their difference), on the interval hulls otherwise.
fn compare_vals(op: BinOp, x: &Val, y: &Val, bx: &Bx) -> Tri {
    if let (Val::Lin(a), Val::Lin(b)) = (x, y) {
        if let Some(d) = a.sub(b) {
            let (lo, hi) = d.range(bx);
            return compare(op, lo, hi, 0, 0);
        }
    }
    match (x.iv(bx), y.iv(bx)) {
        (Some(a), Some(b)) => compare(op, a.lo, a.hi, b.lo, b.hi),
        _ => Tri::Unknown,
    }
}

fn is_comparison(op: BinOp) -> bool {
    matches!(
        op,
        BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge
    )
}

/// The smallest and largest of `f` at the four corners of `a x b`, or `None`
/// if any is not finite.
fn corners(a: &Iv, b: &Iv, f: impl Fn(f64, f64) -> f64) -> Option<(f64, f64)> {
    let vs = [f(a.lo, b.lo), f(a.lo, b.hi), f(a.hi, b.lo), f(a.hi, b.hi)];
    if vs.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let lo = vs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = vs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some((lo, hi))
}

fn excludes_zero(iv: &Iv) -> bool {
    iv.lo > 0.0 || iv.hi < 0.0
}

fn small_int(iv: &Iv) -> bool {
    iv.int && iv.lo >= -EXACT && iv.hi <= EXACT
}

/// Arithmetic on two abstract values.
fn arith(op: BinOp, x: Val, y: Val, bx: &Bx) -> Val {
    // Exactly known operands: compute as the interpreter does.
    if let (Some(a), Some(b)) = (x.exact(bx), y.exact(bx)) {
        let int_div = matches!(op, BinOp::FloorDiv | BinOp::Mod) && b == 0.0;
        // Integer `//` and `%` by zero is an error; any answer is sound.
        return if int_div {
            Val::Top
        } else {
            Val::constant(scalar_binop(op, a, b))
        };
    }
    // Affine forms stay affine under +, - and scaling.
    if let (Val::Lin(a), Val::Lin(b)) = (&x, &y) {
        let l = match op {
            BinOp::Add => a.add(b),
            BinOp::Sub => a.sub(b),
            BinOp::Mul => match (a.as_const(), b.as_const()) {
                (Some(s), _) => b.scale(s),
                (_, Some(s)) => a.scale(s),
                _ => None,
            },
            _ => None,
        };
        if let Some(v) = l.and_then(|l| Val::lin(l, bx)) {
            return v;
        }
    }
    // `x % r` with the quotient constant on the box is `x - r*k`: affine,
    // so `i - i % s` is exactly the chunk start on a box inside one chunk.
    if let (BinOp::Mod, Val::Lin(a), Some(r)) = (op, &x, y.exact(bx)) {
        let (lo, hi) = a.range(bx);
        let k = scalar_binop(BinOp::FloorDiv, lo as f64, r);
        let period = r != 0.0 && r.fract() == 0.0 && r.abs() <= EXACT;
        if period && k == scalar_binop(BinOp::FloorDiv, hi as f64, r) {
            let shift = (r as i64).checked_mul(k as i64).map(Lin::constant);
            let shifted = shift.and_then(|s| a.sub(&s));
            if let Some(v) = shifted.and_then(|l| Val::lin(l, bx)) {
                return v;
            }
        }
    }
    let (Some(a), Some(b)) = (x.iv(bx), y.iv(bx)) else {
        return Val::Top;
    };
    let int = a.int && b.int;
    match op {
        BinOp::Add => Val::range(a.lo + b.lo, a.hi + b.hi, int),
        BinOp::Sub => Val::range(a.lo - b.hi, a.hi - b.lo, int),
        BinOp::Mul => {
            Val::from_iv(corners(&a, &b, |u, v| u * v).map(|(lo, hi)| Iv { lo, hi, int }))
        }
        BinOp::Div if excludes_zero(&b) => {
            Val::from_iv(corners(&a, &b, |u, v| u / v).map(|(lo, hi)| Iv { lo, hi, int: false }))
        }
        // floor(fl(x / y)) is monotone in x for every y, and in y (away from
        // 0) for every x, so its extremes over the box are at the corners.
        BinOp::FloorDiv if excludes_zero(&b) => Val::from_iv(
            corners(&a, &b, |u, v| scalar_binop(BinOp::FloorDiv, u, v)).map(|(lo, hi)| Iv {
                lo,
                hi,
                int: true,
            }),
        ),
        BinOp::Mod if excludes_zero(&b) => modulo(&a, &b),
        _ => Val::Top,
    }
}

/// `x % y` (floored, as in Python), `y` away from 0.
fn modulo(x: &Iv, y: &Iv) -> Val {
    let fd = |u, v| scalar_binop(BinOp::FloorDiv, u, v);
    let md = |u, v| scalar_binop(BinOp::Mod, u, v);
    if y.lo == y.hi {
        let r = y.lo;
        // Within one period the quotient is constant and `x - r*k` is
        // monotone in x, whatever the rounding: the image is exact.
        if fd(x.lo, r) == fd(x.hi, r) {
            let (lo, hi) = (md(x.lo, r), md(x.hi, r));
            return Val::range(lo.min(hi), lo.max(hi), x.int && y.int);
        }
    }
    // Across periods: the sign of the divisor's range, for exact integers.
    if !(small_int(x) && small_int(y)) {
        return Val::Top;
    }
    if y.lo > 0.0 {
        if x.lo >= 0.0 && x.hi < y.lo {
            return Val::Range(*x);
        }
        let hi = if x.lo >= 0.0 {
            x.hi.min(y.hi - 1.0)
        } else {
            y.hi - 1.0
        };
        Val::range(0.0, hi, true)
    } else {
        if x.hi <= 0.0 && x.lo > y.hi {
            return Val::Range(*x);
        }
        let lo = if x.hi <= 0.0 {
            x.lo.max(y.lo + 1.0)
        } else {
            y.lo + 1.0
        };
        Val::range(lo, 0.0, true)
    }
}

/// An elementwise builtin (other than `select`) on abstract values.
fn builtin(f: Builtin, args: &[Val], bx: &Bx) -> Val {
    let exact: Option<Vec<f64>> = args.iter().map(|a| a.exact(bx)).collect();
    if let Some(vs) = exact {
        return Val::constant(scalar_builtin(f, &vs));
    }
    match f {
        Builtin::Min | Builtin::Max => {
            let (x, y) = (args[0], args[1]);
            let want_min = f == Builtin::Min;
            // Affine operands ordered on the whole box: the answer is one of them.
            if let (Val::Lin(a), Val::Lin(b)) = (&x, &y) {
                if let Some(d) = a.sub(b) {
                    let (lo, hi) = d.range(bx);
                    if hi <= 0 {
                        return if want_min { x } else { y };
                    }
                    if lo >= 0 {
                        return if want_min { y } else { x };
                    }
                }
            }
            match (x.iv(bx), y.iv(bx)) {
                (Some(a), Some(b)) => {
                    let int = a.int && b.int;
                    if want_min {
                        Val::range(a.lo.min(b.lo), a.hi.min(b.hi), int)
                    } else {
                        Val::range(a.lo.max(b.lo), a.hi.max(b.hi), int)
                    }
                }
                _ => Val::Top,
            }
        }
        Builtin::Abs => {
            let x = args[0];
            let Some(a) = x.iv(bx) else {
                return Val::Top;
            };
            if a.lo >= 0.0 {
                x
            } else if a.hi <= 0.0 {
                neg(x, bx)
            } else {
                Val::range(0.0, a.hi.max(-a.lo), a.int)
            }
        }
        Builtin::Relu => match args[0].iv(bx) {
            Some(a) if a.lo >= 0.0 => args[0],
            Some(a) => Val::range(0.0, a.hi.max(0.0), a.int),
            None => Val::Top,
        },
        Builtin::Floor | Builtin::Ceil => match args[0] {
            Val::Lin(_) => args[0],
            Val::Range(a) if a.int => args[0],
            Val::Range(a) => {
                let g = |v: f64| scalar_builtin(f, &[v]);
                Val::range(g(a.lo), g(a.hi), true)
            }
            Val::Top => Val::Top,
        },
        _ => Val::Top,
    }
}

fn neg(x: Val, bx: &Bx) -> Val {
    if let Val::Lin(l) = x {
        if let Some(v) = l.neg().and_then(|l| Val::lin(l, bx)) {
            return v;
        }
    }
    match x.iv(bx) {
        Some(a) => Val::range(-a.hi, -a.lo, a.int),
        None => Val::Top,
    }
}

/// Evaluates the prepared predicate (or any sub-expression) on a box.
fn eval(n: &Node, bx: &Bx) -> Val {
    match n {
        Node::Val(v) => *v,
        Node::Q => Val::Lin(Lin { a: 1, b: 0, c: 0 }),
        Node::K => Val::Lin(Lin { a: 0, b: 1, c: 0 }),
        Node::Un(UnOp::Neg, a) => neg(eval(a, bx), bx),
        Node::Un(UnOp::Not, a) => Val::tri(truth(&eval(a, bx), bx).not()),
        Node::Bin(BinOp::And, a, b) => {
            let x = truth(&eval(a, bx), bx);
            if x == Tri::False {
                return FALSE;
            }
            match (x, truth(&eval(b, bx), bx)) {
                (_, Tri::False) => FALSE,
                (Tri::True, Tri::True) => TRUE,
                _ => UNKNOWN_BOOL,
            }
        }
        Node::Bin(BinOp::Or, a, b) => {
            let x = truth(&eval(a, bx), bx);
            if x == Tri::True {
                return TRUE;
            }
            match (x, truth(&eval(b, bx), bx)) {
                (_, Tri::True) => TRUE,
                (Tri::False, Tri::False) => FALSE,
                _ => UNKNOWN_BOOL,
            }
        }
        Node::Bin(op, a, b) if is_comparison(*op) => {
            Val::tri(compare_vals(*op, &eval(a, bx), &eval(b, bx), bx))
        }
        Node::Bin(op, a, b) => arith(*op, eval(a, bx), eval(b, bx), bx),
        Node::Call(Builtin::Select, args) => match truth(&eval(&args[0], bx), bx) {
            Tri::True => eval(&args[1], bx),
            Tri::False => eval(&args[2], bx),
            Tri::Unknown => join(eval(&args[1], bx), eval(&args[2], bx), bx),
        },
        Node::Call(f, args) => {
            let vals: Vec<Val> = args.iter().map(|a| eval(a, bx)).collect();
            builtin(*f, &vals, bx)
        }
        Node::Guard(p, body) => match truth(&eval(p, bx), bx) {
            Tri::True => eval(body, bx),
            Tri::False => FALSE,
            Tri::Unknown => join(eval(body, bx), FALSE, bx),
        },
    }
}

/// The exact number of pairs `(i, j)` in the tile for which `pred` holds,
/// by enumeration (with the other slots at the given values). The oracle
/// for tests; never used by the analysis.
#[cfg(test)]
pub fn count_kept_pairs_exact(
    pred: &TExpr,
    q_slot: Slot,
    k_slot: Slot,
    q_range: (i64, i64),
    k_range: (i64, i64),
    sizes: &BTreeMap<String, i64>,
    others: &[(Slot, i64)],
) -> u64 {
    count_pairs_exact(pred, q_slot, k_slot, q_range, k_range, sizes, others).kept
}

/// What enumerating a tile's pairs finds.
#[cfg(test)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct PairCounts {
    /// The predicate holds.
    kept: u64,
    /// It does not.
    dropped: u64,
    /// Evaluating it is an error (integer division by zero): the program
    /// fails, so any classification is sound for these pairs.
    errors: u64,
}

/// The oracle: evaluates `pred` at every pair of the tile.
#[cfg(test)]
fn count_pairs_exact(
    pred: &TExpr,
    q_slot: Slot,
    k_slot: Slot,
    q_range: (i64, i64),
    k_range: (i64, i64),
    sizes: &BTreeMap<String, i64>,
    others: &[(Slot, i64)],
) -> PairCounts {
    let n_slots = [q_slot, k_slot]
        .into_iter()
        .chain(others.iter().map(|o| o.0))
        .max()
        .unwrap_or(0) as usize
        + 1;
    let mut env = vec![0i64; n_slots];
    for &(s, v) in others {
        env[s as usize] = v;
    }
    let mut n = PairCounts::default();
    for i in q_range.0..=q_range.1 {
        for j in k_range.0..=k_range.1 {
            env[q_slot as usize] = i;
            env[k_slot as usize] = j;
            match concrete(pred, &env, sizes) {
                Some(v) if v != 0.0 => n.kept += 1,
                Some(_) => n.dropped += 1,
                None => n.errors += 1,
            }
        }
    }
    n
}

/// The interpreter's semantics on one point (`None` where it errors).
#[cfg(test)]
fn concrete(e: &TExpr, env: &[i64], sizes: &BTreeMap<String, i64>) -> Option<f64> {
    use mixc_dsl::typed::Ty;
    let ev = |x: &TExpr| concrete(x, env, sizes);
    Some(match &e.kind {
        TExprKind::Const(v) => *v,
        TExprKind::Dim(d) => d.eval(sizes).ok()? as f64,
        TExprKind::Index(s) => env[*s as usize] as f64,
        TExprKind::Unary(UnOp::Neg, a) => -ev(a)?,
        TExprKind::Unary(UnOp::Not, a) => f64::from(u8::from(ev(a)? == 0.0)),
        TExprKind::Binary(BinOp::And, a, b) => f64::from(u8::from(ev(a)? != 0.0 && ev(b)? != 0.0)),
        TExprKind::Binary(BinOp::Or, a, b) => f64::from(u8::from(ev(a)? != 0.0 || ev(b)? != 0.0)),
        TExprKind::Binary(op, a, b) => {
            let (x, y) = (ev(a)?, ev(b)?);
            if matches!(op, BinOp::FloorDiv | BinOp::Mod) && e.ty == Ty::Int && y == 0.0 {
                return None;
            }
            scalar_binop(*op, x, y)
        }
        TExprKind::Call(Builtin::Select, v) => {
            if ev(&v[0])? != 0.0 {
                ev(&v[1])?
            } else {
                ev(&v[2])?
            }
        }
        TExprKind::Call(f, v) => {
            let vals: Option<Vec<f64>> = v.iter().map(ev).collect();
            scalar_builtin(*f, &vals?)
        }
        TExprKind::Guard { pred, body } => {
            if ev(pred)? != 0.0 {
                ev(body)?
            } else {
                0.0
            }
        }
        TExprKind::Read { .. } | TExprKind::Reduce { .. } | TExprKind::Normalize { .. } => {
            return None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mixc_dsl::typed::{DimExpr, Ty};
    use mixc_dsl::Span;

    const I: Slot = 0;
    const J: Slot = 1;
    const H: Slot = 2;

    // ---- Hand-built predicates --------------------------------------------

    fn te(kind: TExprKind, ty: Ty) -> TExpr {
        TExpr {
            kind,
            ty,
            span: Span::default(),
        }
    }

    fn idx(s: Slot) -> TExpr {
        te(TExprKind::Index(s), Ty::Int)
    }

    fn i() -> TExpr {
        idx(I)
    }

    fn j() -> TExpr {
        idx(J)
    }

    fn c(v: f64) -> TExpr {
        let ty = if v.fract() == 0.0 { Ty::Int } else { Ty::Real };
        te(TExprKind::Const(v), ty)
    }

    fn dim(name: &str) -> TExpr {
        te(TExprKind::Dim(DimExpr::Sym(name.into())), Ty::Int)
    }

    fn bin(op: BinOp, a: TExpr, b: TExpr) -> TExpr {
        use BinOp::*;
        let ty = match op {
            Eq | Ne | Lt | Le | Gt | Ge | And | Or => Ty::Bool,
            Div | Pow => Ty::Real,
            _ if a.ty == Ty::Int && b.ty == Ty::Int => Ty::Int,
            _ => Ty::Real,
        };
        te(TExprKind::Binary(op, Box::new(a), Box::new(b)), ty)
    }

    fn not(a: TExpr) -> TExpr {
        te(TExprKind::Unary(UnOp::Not, Box::new(a)), Ty::Bool)
    }

    fn neg_(a: TExpr) -> TExpr {
        let ty = a.ty;
        te(TExprKind::Unary(UnOp::Neg, Box::new(a)), ty)
    }

    fn call(f: Builtin, args: Vec<TExpr>) -> TExpr {
        let ty = match f {
            Builtin::Select => args[1].ty,
            Builtin::Min | Builtin::Max if args.iter().all(|a| a.ty == Ty::Int) => Ty::Int,
            Builtin::Abs | Builtin::Relu if args[0].ty == Ty::Int => Ty::Int,
            _ => Ty::Real,
        };
        te(TExprKind::Call(f, args), ty)
    }

    fn and(a: TExpr, b: TExpr) -> TExpr {
        bin(BinOp::And, a, b)
    }

    fn or(a: TExpr, b: TExpr) -> TExpr {
        bin(BinOp::Or, a, b)
    }

    fn sub(a: TExpr, b: TExpr) -> TExpr {
        bin(BinOp::Sub, a, b)
    }

    fn fdiv(a: TExpr, s: f64) -> TExpr {
        bin(BinOp::FloorDiv, a, c(s))
    }

    fn modulo(a: TExpr, s: f64) -> TExpr {
        bin(BinOp::Mod, a, c(s))
    }

    /// std.masks.causal: `j <= i`.
    fn causal() -> TExpr {
        bin(BinOp::Le, j(), i())
    }

    /// std.masks.window: `causal(i, j) and i - j < w`.
    fn window(w: f64) -> TExpr {
        and(causal(), bin(BinOp::Lt, sub(i(), j()), c(w)))
    }

    /// std.masks.dilated: causal, same segment, every `r`-th key back.
    fn dilated(seg: f64, r: f64) -> TExpr {
        let same = bin(BinOp::Eq, fdiv(i(), seg), fdiv(j(), seg));
        let step = bin(BinOp::Eq, modulo(sub(i(), j()), r), c(0.0));
        and(and(causal(), same), step)
    }

    /// std.masks.blocks: causal, own block or the last key of each block.
    fn blocks(bs: f64) -> TExpr {
        let own = bin(BinOp::Eq, fdiv(i(), bs), fdiv(j(), bs));
        let summary = bin(BinOp::Eq, modulo(j(), bs), c(bs - 1.0));
        and(causal(), or(own, summary))
    }

    /// examples/block_sparse.mix `fixed`: the last `cc` keys of each block.
    fn fixed(bs: f64, cc: f64) -> TExpr {
        let own = bin(BinOp::Eq, fdiv(i(), bs), fdiv(j(), bs));
        let summary = bin(BinOp::Ge, modulo(j(), bs), c(bs - cc));
        and(causal(), or(own, summary))
    }

    fn no_sizes() -> BTreeMap<String, i64> {
        BTreeMap::new()
    }

    // ---- The oracle harness ----------------------------------------------

    /// What the analysis found against what the oracle says, over a grid.
    #[derive(Debug)]
    struct Report {
        tiles: MaskTiles,
        truly_empty: usize,
        truly_full: usize,
        kept: u64,
    }

    /// Analyses `pred` and checks every tile against the enumerated mask
    /// (for every value of the other slots in `opts.slot_ranges`): an
    /// `Empty` tile keeps no pair, a `Full` tile keeps all.
    fn check(
        pred: &TExpr,
        l: usize,
        tq: usize,
        tk: usize,
        sizes: &BTreeMap<String, i64>,
        opts: &Options,
    ) -> Report {
        let tiles = analyze_with(pred, I, J, l, tq, tk, sizes, opts);
        let mut sizes = sizes.clone();
        sizes.entry("L".into()).or_insert(l as i64);
        // Every assignment of the other slots.
        let mut assigns: Vec<Vec<(Slot, i64)>> = vec![vec![]];
        for (&s, &(lo, hi)) in &opts.slot_ranges {
            assigns = assigns
                .into_iter()
                .flat_map(|a| {
                    (lo..=hi).map(move |v| {
                        let mut a = a.clone();
                        a.push((s, v));
                        a
                    })
                })
                .collect();
        }
        let (mut truly_empty, mut truly_full, mut kept, mut errors) = (0, 0, 0, 0);
        for qi in 0..tiles.n_q {
            for ki in 0..tiles.n_k {
                let (q, k) = (tiles.q_range(qi), tiles.k_range(ki));
                let counts: Vec<PairCounts> = assigns
                    .iter()
                    .map(|a| count_pairs_exact(pred, I, J, q, k, &sizes, a))
                    .collect();
                let any_kept = counts.iter().map(|n| n.kept).max().unwrap();
                let any_dropped = counts.iter().map(|n| n.dropped).max().unwrap();
                kept += counts[0].kept;
                errors += counts.iter().map(|n| n.errors).sum::<u64>();
                match tiles.class(qi, ki) {
                    TileClass::Empty => assert_eq!(
                        any_kept, 0,
                        "tile ({qi}, {ki}) called empty keeps {any_kept} pairs"
                    ),
                    TileClass::Full => assert_eq!(
                        any_dropped, 0,
                        "tile ({qi}, {ki}) called full drops {any_dropped} pairs"
                    ),
                    TileClass::Partial => {}
                }
                truly_empty += usize::from(any_kept == 0);
                truly_full += usize::from(any_dropped == 0);
            }
        }
        let (kl, kh) = tiles.kept_pairs_bounds();
        if assigns.len() == 1 && errors == 0 {
            assert!(
                kl <= kept && kept <= kh,
                "kept {kept} outside bounds {kl}..{kh}"
            );
        }
        Report {
            tiles,
            truly_empty,
            truly_full,
            kept,
        }
    }

    fn check_default(pred: &TExpr, l: usize, t: usize) -> Report {
        check(pred, l, t, t, &no_sizes(), &Options::default())
    }

    /// The analysis found exactly the empty and full tiles.
    fn assert_exact(r: &Report, what: &str) {
        assert_eq!(r.tiles.empty, r.truly_empty, "{what}: empty tiles");
        assert_eq!(r.tiles.full, r.truly_full, "{what}: full tiles");
    }

    // ---- Exact figures at long L -----------------------------------------

    #[test]
    fn causal_at_16k_skips_exactly_the_upper_triangle() {
        let m = analyze(&causal(), I, J, 16384, 128, 128, &no_sizes());
        assert_eq!((m.n_q, m.n_k), (128, 128));
        // 128 * 127 / 2 tiles above the diagonal, as many below, 128 on it.
        assert_eq!((m.empty, m.partial, m.full), (8128, 128, 8128));
        assert_eq!(m.fraction_skipped(), 8128.0 / 16384.0);
        assert!((m.fraction_empty() - 0.49609375).abs() < 1e-12);
        for qi in 0..m.n_q {
            for ki in 0..m.n_k {
                let want = match ki.cmp(&qi) {
                    std::cmp::Ordering::Greater => TileClass::Empty,
                    std::cmp::Ordering::Equal => TileClass::Partial,
                    std::cmp::Ordering::Less => TileClass::Full,
                };
                assert_eq!(m.class(qi, ki), want, "tile ({qi}, {ki})");
            }
        }
        // L (L + 1) / 2 pairs are kept; the bounds bracket it.
        let (lo, hi) = m.kept_pairs_bounds();
        let kept = 16384u64 * 16385 / 2;
        assert_eq!((lo, hi), (8128 * 128 * 128, (8128 + 128) * 128 * 128));
        assert!(lo <= kept && kept <= hi);
        assert_eq!(m.visited(5).count(), 6);
    }

    #[test]
    fn sliding_window_at_16k_skips_all_but_a_band() {
        // w = 1024, T = 128: query tile qi and key tile qi - d hold
        // i - j in [128 d - 127, 128 d + 127]. Full for 1 <= d <= 7 (all in
        // [0, 1023]), partial for d = 0 and d = 8, empty for d < 0 or d >= 9.
        let m = analyze(&window(1024.0), I, J, 16384, 128, 128, &no_sizes());
        let full: usize = (1..=7).map(|d| 128 - d).sum(); // 868
        let partial = 128 + (128 - 8); // 248
        assert_eq!((m.full, m.partial), (full, partial));
        assert_eq!(m.empty, 128 * 128 - full - partial); // 15268
        let f = m.fraction_skipped();
        assert!((f - 15268.0 / 16384.0).abs() < 1e-12);
        // About 1 - w / L = 0.9375, less the band's ragged edges.
        assert!((f - (1.0 - 1024.0 / 16384.0)).abs() < 0.01, "{f}");
        for qi in 0..m.n_q {
            for ki in 0..m.n_k {
                let d = qi as i64 - ki as i64;
                let want = match d {
                    1..=7 => TileClass::Full,
                    0 | 8 => TileClass::Partial,
                    _ => TileClass::Empty,
                };
                assert_eq!(m.class(qi, ki), want, "tile ({qi}, {ki})");
            }
        }
    }

    #[test]
    fn dilated_and_block_sparse_at_16k() {
        // Segments of 2048 = 16 tiles of 128: a tile is non-empty iff it is
        // on or below the diagonal inside one segment (8 x 16 * 17 / 2), and
        // never full (every 4th offset only).
        let m = analyze(&dilated(2048.0, 4.0), I, J, 16384, 128, 128, &no_sizes());
        assert_eq!((m.empty, m.partial, m.full), (16384 - 1088, 1088, 0));
        assert_eq!(m.fraction_skipped(), 0.93359375);
        // Block-sparse `fixed` with bs = 1024, c = 128: key tiles 7, 15, ...
        // are summary columns (full below their block), the rest of a lower
        // off-block row is empty, the own block is full below the diagonal.
        let m = analyze(&fixed(1024.0, 128.0), I, J, 16384, 128, 128, &no_sizes());
        let own = 16 * (8 * 7 / 2); // 448
        let summary: usize = (0..16).map(|b| 127 - (8 * b + 7)).sum(); // 960
        assert_eq!((m.partial, m.full), (128, own + summary));
        assert_eq!(m.empty, 16384 - 128 - own - summary); // 14848
        assert_eq!(m.fraction_skipped(), 0.90625);
        // With bs = T the summary column is inside every lower tile.
        let m = analyze(&fixed(128.0, 1.0), I, J, 16384, 128, 128, &no_sizes());
        assert_eq!((m.empty, m.partial, m.full), (8128, 8256, 0));
    }

    // ---- Soundness and precision against the oracle -----------------------

    #[test]
    fn causal_and_window_are_exact_with_ragged_tiles() {
        for (l, tq, tk) in [(1000, 64, 64), (1000, 48, 80), (257, 16, 7), (5, 64, 64)] {
            let r = check(&causal(), l, tq, tk, &no_sizes(), &Options::default());
            assert_exact(&r, &format!("causal L={l} {tq}x{tk}"));
            for w in [1.0, 50.0, 64.0, 100.0, 333.0] {
                let r = check(&window(w), l, tq, tk, &no_sizes(), &Options::default());
                assert_exact(&r, &format!("window {w} L={l} {tq}x{tk}"));
            }
        }
        // Even without splitting: both are decided on whole tiles.
        let plain = Options {
            split_budget: 0,
            ..Options::default()
        };
        for pred in [causal(), window(100.0)] {
            let r = check(&pred, 1000, 64, 64, &no_sizes(), &plain);
            assert_exact(&r, "unsplit");
        }
        let r = check_default(&causal(), 1000, 64);
        // 16 tiles a side (15 of 64, one of 40): 120 empty, 16 partial, 120 full.
        assert_eq!(
            (r.tiles.n_q, r.tiles.empty, r.tiles.partial, r.tiles.full),
            (16, 120, 16, 120)
        );
        assert_eq!(r.kept, 1000 * 1001 / 2);
    }

    #[test]
    fn dilated_masks_against_the_oracle() {
        for (seg, rate) in [
            (8.0, 1.0),
            (16.0, 2.0),
            (32.0, 4.0),
            (256.0, 4.0),
            (100.0, 3.0),
            (96.0, 40.0),
            (1000.0, 7.0),
        ] {
            let r = check_default(&dilated(seg, rate), 2048, 64);
            let plain = check(
                &dilated(seg, rate),
                2048,
                64,
                64,
                &no_sizes(),
                &Options {
                    split_budget: 0,
                    ..Options::default()
                },
            );
            eprintln!(
                "dilated seg={seg} r={rate} L=2048 T=64: skipped {:.4} (oracle {:.4}); empty {}/{} (unsplit {}), full {}/{}",
                r.tiles.fraction_skipped(),
                r.truly_empty as f64 / r.tiles.tiles() as f64,
                r.tiles.empty,
                r.truly_empty,
                plain.tiles.empty,
                r.tiles.full,
                r.truly_full,
            );
            // Every truly empty (and full) tile is found, split or not.
            assert_exact(&r, &format!("dilated seg={seg} r={rate}"));
            assert_exact(&plain, &format!("dilated seg={seg} r={rate} unsplit"));
        }
    }

    #[test]
    fn block_sparse_masks_against_the_oracle() {
        let cases: Vec<(String, TExpr)> = vec![
            ("blocks bs=8".into(), blocks(8.0)),
            ("blocks bs=128".into(), blocks(128.0)),
            ("blocks bs=100".into(), blocks(100.0)),
            ("fixed bs=8 c=1".into(), fixed(8.0, 1.0)),
            ("fixed bs=128 c=16".into(), fixed(128.0, 16.0)),
            ("fixed bs=256 c=64".into(), fixed(256.0, 64.0)),
        ];
        for (name, pred) in cases {
            let r = check_default(&pred, 2048, 64);
            eprintln!(
                "{name} L=2048 T=64: skipped {:.4} (oracle {:.4}); empty {}/{}, full {}/{}",
                r.tiles.fraction_skipped(),
                r.truly_empty as f64 / r.tiles.tiles() as f64,
                r.tiles.empty,
                r.truly_empty,
                r.tiles.full,
                r.truly_full,
            );
            assert_exact(&r, &name);
        }
    }

    #[test]
    fn splitting_finds_tiles_plain_intervals_miss() {
        let plain = Options {
            split_budget: 0,
            ..Options::default()
        };
        // A segment boundary inside a tile: the few same-segment pairs of an
        // off-diagonal tile are 1..=23 apart, never a multiple of 32.
        let pred = dilated(24.0, 32.0);
        let r = check_default(&pred, 1024, 64);
        let r0 = check(&pred, 1024, 64, 64, &no_sizes(), &plain);
        eprintln!(
            "dilated seg=24 r=32 L=1024 T=64: empty {}/{} split, {} unsplit",
            r.tiles.empty, r.truly_empty, r0.tiles.empty
        );
        assert_exact(&r, "dilated 24/32 split");
        assert!(r0.tiles.empty < r.tiles.empty);

        // `i - i % s <= j <= i`: the key is in the query's chunk. `i` occurs
        // twice, so plain intervals lose the correlation; halves restore it.
        let start = sub(i(), modulo(i(), 16.0));
        let pred = and(bin(BinOp::Le, start, j()), causal());
        let r = check_default(&pred, 1000, 64);
        let r0 = check(&pred, 1000, 64, 64, &no_sizes(), &plain);
        eprintln!(
            "chunk-start s=16 L=1000 T=64: empty {}/{} split, {} unsplit",
            r.tiles.empty, r.truly_empty, r0.tiles.empty
        );
        assert_exact(&r, "chunk start split");
        assert!(r0.tiles.empty < r.tiles.empty);
    }

    #[test]
    fn or_and_not_combinations() {
        let w = 100.0;
        let g = 70.0;
        // Causal written with `not`, a local window or global keys/queries.
        let globals = and(
            not(bin(BinOp::Gt, j(), i())),
            or(
                bin(BinOp::Lt, sub(i(), j()), c(w)),
                or(bin(BinOp::Lt, j(), c(g)), bin(BinOp::Lt, i(), c(g))),
            ),
        );
        // Prefix LM: bidirectional over the first p positions, then causal.
        let prefix = or(bin(BinOp::Lt, j(), c(200.0)), causal());
        // Bidirectional local attention with abs.
        let local = bin(BinOp::Le, call(Builtin::Abs, vec![sub(i(), j())]), c(w));
        // Strided (Sparse Transformer): recent keys or every s-th key back.
        let strided = and(
            causal(),
            or(
                bin(BinOp::Lt, sub(i(), j()), c(32.0)),
                bin(BinOp::Eq, modulo(sub(i(), j()), 32.0), c(0.0)),
            ),
        );
        // Anti-causal through not(or(..)), and a select-defined prefix LM.
        let neither = not(or(causal(), bin(BinOp::Eq, j(), c(999.0))));
        let select = call(
            Builtin::Select,
            vec![
                bin(BinOp::Lt, i(), c(300.0)),
                bin(BinOp::Lt, j(), c(300.0)),
                causal(),
            ],
        );
        // The window through min/max: j >= max(i - w + 1, 0) and j <= i.
        let lower = call(
            Builtin::Max,
            vec![bin(BinOp::Add, sub(i(), c(w)), c(1.0)), c(0.0)],
        );
        let minmax = and(
            bin(BinOp::Ge, j(), lower),
            bin(BinOp::Le, j(), call(Builtin::Min, vec![i(), c(1e9)])),
        );
        // Equality of booleans, negation and a guard.
        let xor = bin(BinOp::Ne, causal(), bin(BinOp::Lt, sub(i(), j()), c(w)));
        let guarded = te(
            TExprKind::Guard {
                pred: Box::new(causal()),
                body: Box::new(bin(BinOp::Lt, neg_(sub(j(), i())), c(w))),
            },
            Ty::Bool,
        );
        for (name, pred) in [
            ("globals", globals),
            ("prefix", prefix),
            ("local", local),
            ("strided", strided),
            ("neither", neither),
            ("select", select),
            ("minmax", minmax),
            ("xor", xor),
            ("guard", guarded),
        ] {
            let r = check_default(&pred, 1000, 64);
            eprintln!(
                "{name} L=1000 T=64: skipped {:.4}; empty {}/{}, full {}/{}",
                r.tiles.fraction_skipped(),
                r.tiles.empty,
                r.truly_empty,
                r.tiles.full,
                r.truly_full
            );
            assert_exact(&r, name);
        }
    }

    #[test]
    fn dims_come_from_sizes_and_l_defaults_to_the_length() {
        // The last 100 keys (by L), causally, within a window W from sizes.
        let pred = and(
            and(causal(), bin(BinOp::Ge, j(), sub(dim("L"), c(100.0)))),
            bin(BinOp::Lt, sub(i(), j()), dim("W")),
        );
        let sizes = BTreeMap::from([("W".to_string(), 40)]);
        let r = check(&pred, 1000, 32, 32, &sizes, &Options::default());
        assert_exact(&r, "dims");
        assert!(r.tiles.fraction_empty() > 0.99);
        // An unbound dim is unknown: only the rest is decided. Without the
        // window, 10 tiles are non-empty (key tiles 28..=31 hold j >= 900,
        // on or below the diagonal).
        let r = check(&pred, 1000, 32, 32, &no_sizes(), &Options::default());
        assert_eq!(r.tiles.empty, 32 * 32 - 10);
        assert_eq!(r.tiles.full, 0);
    }

    #[test]
    fn other_slots_are_ranges_or_unknown() {
        // A per-head window: head h sees the last 64 (h + 1) keys.
        let width = bin(BinOp::Mul, c(64.0), bin(BinOp::Add, idx(H), c(1.0)));
        let pred = and(causal(), bin(BinOp::Lt, sub(i(), j()), width));
        for range in [(0, 3), (2, 2), (0, 0)] {
            let opts = Options {
                slot_ranges: BTreeMap::from([(H, range)]),
                ..Options::default()
            };
            let r = check(&pred, 640, 32, 32, &no_sizes(), &opts);
            assert_exact(&r, &format!("per-head window, h in {range:?}"));
        }
        // Head unknown: only the causal half is decided (empty), nothing full.
        let m = analyze(&pred, I, J, 640, 32, 32, &no_sizes());
        assert_eq!((m.empty, m.full), (20 * 19 / 2, 0));
    }

    #[test]
    fn unanalysable_parts_are_partial() {
        let read = te(
            TExprKind::Read {
                tensor: 0,
                subs: vec![i(), j()],
            },
            Ty::Real,
        );
        let learned = bin(BinOp::Gt, read, c(0.5));
        let m = analyze(&learned, I, J, 300, 32, 32, &no_sizes());
        assert_eq!(m.partial, m.tiles());
        // `and` with a decided false part is still empty.
        let m = analyze(
            &and(causal(), learned.clone()),
            I,
            J,
            300,
            32,
            32,
            &no_sizes(),
        );
        assert_eq!((m.empty, m.partial, m.full), (45, 55, 0));
        // Transcendental functions of indices are unknown, of constants exact.
        let soft = bin(BinOp::Lt, call(Builtin::Exp, vec![sub(i(), j())]), c(1.0));
        let m = analyze(&soft, I, J, 300, 32, 32, &no_sizes());
        assert_eq!(m.partial, m.tiles());
        let konst = bin(BinOp::Lt, call(Builtin::Exp, vec![c(0.0)]), c(1.5));
        let m = analyze(&konst, I, J, 300, 32, 32, &no_sizes());
        assert_eq!(m.full, m.tiles());
        // A real window through `/`: (i - j) / 4 < 2.5 is i - j < 10.
        let real = and(
            causal(),
            bin(BinOp::Lt, bin(BinOp::Div, sub(i(), j()), c(4.0)), c(2.5)),
        );
        let r = check_default(&real, 300, 8);
        assert_exact(&r, "real window");
    }

    #[test]
    fn classify_tile_and_the_grid_picture() {
        let s = no_sizes();
        assert_eq!(
            classify_tile(&causal(), I, J, (128, 255), (0, 127), &s),
            TileClass::Full
        );
        assert_eq!(
            classify_tile(&causal(), I, J, (0, 127), (128, 255), &s),
            TileClass::Empty
        );
        assert_eq!(
            classify_tile(&causal(), I, J, (0, 127), (0, 127), &s),
            TileClass::Partial
        );
        assert_eq!(
            classify_tile(&causal(), I, J, (5, 4), (0, 127), &s),
            TileClass::Empty
        );
        // Slots the other way round: the mask j >= i.
        assert_eq!(
            classify_tile(&causal(), J, I, (128, 255), (0, 127), &s),
            TileClass::Empty
        );
        let m = analyze(&window(16.0), I, J, 40, 8, 8, &s);
        // Offsets 1..=15 are all inside a window of 16: full below the diagonal.
        assert_eq!(m.to_string(), "+....\n#+...\n+#+..\n.+#+.\n..+#+\n");
        let m = analyze(&causal(), I, J, 40, 16, 8, &s);
        assert_eq!(
            (m.n_q, m.n_k, m.q_range(2), m.k_range(4)),
            (3, 5, (32, 39), (32, 39))
        );
        assert_eq!(m.to_string(), "++...\n##++.\n####+\n");
        let empty = analyze(&causal(), I, J, 0, 64, 64, &s);
        assert_eq!((empty.tiles(), empty.fraction_skipped()), (0, 0.0));
    }

    // ---- Randomised soundness of the transfer functions -------------------

    /// xorshift64*: deterministic, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn int(&mut self, lo: i64, hi: i64) -> i64 {
            lo + self.below((hi - lo + 1) as u64) as i64
        }
    }

    fn rand_num(r: &mut Rng, depth: u32) -> TExpr {
        if depth == 0 || r.below(4) == 0 {
            return match r.below(9) {
                0..=2 => i(),
                3..=4 => j(),
                5 => idx(H),
                6 => c([0.5, -1.5, 2.25, 3e15, -7.0e15, 1.0e300][r.below(6) as usize]),
                _ => c(r.int(-9, 9) as f64),
            };
        }
        let d = depth - 1;
        let nonzero = |r: &mut Rng| {
            let v = r.int(1, 9) as f64;
            c(if r.below(3) == 0 { -v } else { v })
        };
        match r.below(16) {
            0 | 1 => bin(BinOp::Add, rand_num(r, d), rand_num(r, d)),
            2 | 3 => bin(BinOp::Sub, rand_num(r, d), rand_num(r, d)),
            4 => bin(BinOp::Mul, rand_num(r, d), rand_num(r, d)),
            5 => {
                let k = nonzero(r);
                bin(BinOp::Mul, rand_num(r, d), k)
            }
            6 => {
                let k = nonzero(r);
                bin(BinOp::FloorDiv, rand_num(r, d), k)
            }
            7 => {
                let k = nonzero(r);
                bin(BinOp::Mod, rand_num(r, d), k)
            }
            8 => bin(BinOp::Mod, rand_num(r, d), rand_num(r, d)),
            9 => bin(BinOp::FloorDiv, rand_num(r, d), rand_num(r, d)),
            10 => bin(BinOp::Div, rand_num(r, d), rand_num(r, d)),
            11 => neg_(rand_num(r, d)),
            12 => {
                let f = [Builtin::Min, Builtin::Max][r.below(2) as usize];
                call(f, vec![rand_num(r, d), rand_num(r, d)])
            }
            13 => {
                let f = [
                    Builtin::Abs,
                    Builtin::Relu,
                    Builtin::Floor,
                    Builtin::Ceil,
                    Builtin::Tanh,
                ][r.below(5) as usize];
                call(f, vec![rand_num(r, d)])
            }
            14 => call(
                Builtin::Select,
                vec![rand_bool(r, d), rand_num(r, d), rand_num(r, d)],
            ),
            _ => bin(BinOp::Pow, rand_num(r, d), c(2.0)),
        }
    }

    fn rand_bool(r: &mut Rng, depth: u32) -> TExpr {
        let d = depth.saturating_sub(1);
        match r.below(if depth == 0 { 1 } else { 5 }) {
            0 | 1 => {
                let op = [
                    BinOp::Eq,
                    BinOp::Ne,
                    BinOp::Lt,
                    BinOp::Le,
                    BinOp::Gt,
                    BinOp::Ge,
                ][r.below(6) as usize];
                bin(op, rand_num(r, d), rand_num(r, d))
            }
            2 => and(rand_bool(r, d), rand_bool(r, d)),
            3 => or(rand_bool(r, d), rand_bool(r, d)),
            _ => not(rand_bool(r, d)),
        }
    }

    /// The predicate in source syntax, for failure messages.
    fn show(e: &TExpr) -> String {
        match &e.kind {
            TExprKind::Const(v) => format!("{v}"),
            TExprKind::Dim(d) => d.to_string(),
            TExprKind::Index(s) => ["i", "j", "h"][*s as usize].to_string(),
            TExprKind::Unary(UnOp::Neg, a) => format!("-({})", show(a)),
            TExprKind::Unary(UnOp::Not, a) => format!("not ({})", show(a)),
            TExprKind::Binary(op, a, b) => format!("({} {} {})", show(a), op.symbol(), show(b)),
            TExprKind::Call(f, args) => {
                let args: Vec<String> = args.iter().map(show).collect();
                format!("{}({})", f.name(), args.join(", "))
            }
            _ => "?".into(),
        }
    }

    /// Every concrete value on the box lies in the abstract value.
    fn contains(v: &Val, x: f64, q: i64, k: i64) -> bool {
        match v {
            Val::Lin(l) => x == (l.a * q + l.b * k + l.c) as f64,
            Val::Range(iv) => iv.lo <= x && x <= iv.hi && (!iv.int || x.fract() == 0.0),
            Val::Top => true,
        }
    }

    #[test]
    fn random_expressions_stay_inside_their_abstract_values() {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        let sizes = no_sizes();
        let mut decided = 0;
        for round in 0..3000 {
            let e = if round % 2 == 0 {
                rand_num(&mut r, 4)
            } else {
                rand_bool(&mut r, 4)
            };
            let h = (r.int(-3, 3), 0);
            let h = (h.0, h.0 + r.int(0, 3));
            let ranges = BTreeMap::from([(H, h)]);
            let prep = Prep {
                q_slot: I,
                k_slot: J,
                sizes: &sizes,
                ranges: &ranges,
            };
            let node = prep.node(&e);
            let q0 = r.int(-12, 30);
            let k0 = r.int(-12, 30);
            let bx = Bx {
                q: (q0, q0 + r.int(0, 9)),
                k: (k0, k0 + r.int(0, 9)),
            };
            let v = eval(&node, &bx);
            decided += usize::from(v != Val::Top);
            for q in bx.q.0..=bx.q.1 {
                for k in bx.k.0..=bx.k.1 {
                    for hv in h.0..=h.1 {
                        let env = [q, k, hv];
                        if let Some(x) = concrete(&e, &env, &sizes) {
                            assert!(contains(&v, x, q, k), "{e:?}\non {bx:?}, h in {h:?}: value {x} at ({q}, {k}, {hv}) not in {v:?}");
                        }
                    }
                }
            }
        }
        // The test means something only if most values are not unknown.
        assert!(decided > 1500, "only {decided} decided");
    }

    #[test]
    fn random_predicates_classify_soundly() {
        let mut r = Rng(0x0123_4567_89ab_cdef);
        let mut decided = 0;
        for _ in 0..400 {
            let pred = rand_bool(&mut r, 4);
            let l = r.int(1, 40) as usize;
            let tq = r.int(1, 12) as usize;
            let tk = r.int(1, 12) as usize;
            let opts = Options {
                slot_ranges: BTreeMap::from([(H, (0, r.int(0, 2)))]),
                split_budget: [0, 4, 32][r.below(3) as usize],
            };
            let rep = std::panic::catch_unwind(|| check(&pred, l, tq, tk, &no_sizes(), &opts))
                .unwrap_or_else(|_| panic!("L={l} {tq}x{tk} {opts:?}: {}", show(&pred)));
            decided += rep.tiles.empty + rep.tiles.full;
        }
        assert!(decided > 1000, "only {decided} tiles decided");
    }
}
