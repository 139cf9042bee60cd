//! Recurrence patterns. [`applies`] is the condition of the optimiser's
//! `scan-as-parallel-prefix` rule: a first-order linear recurrence
//! `h[.., t, ..] = a * h[.., t - 1, ..] + b`, where `a` and `b` do not read
//! `h`, is a composition of affine maps `h -> a h + b`, which is associative:
//! a parallel prefix scan (Blelloch) evaluates it in `O(log L)` dependent
//! steps instead of `L`, with about twice the arithmetic. Same op, other
//! order of evaluation (as with `conv-as-fft`, rounding may differ).
//! Conditions: the op is a scan whose body is `X * self + Y` or
//! `Y + X * self` (either operand order) with exactly one read of itself,
//! and `X`, `Y` free of self-reads.

use crate::ir::{BinOp, DimExpr, ExprId, Module, Node, Slot, ValueId};
use std::collections::{BTreeMap, BTreeSet};

pub use super::reads_of;

fn reads_self(m: &Module, e: ExprId, me: ValueId) -> usize {
    let own = usize::from(matches!(&m.expr(e).node, Node::Read(v, _) if *v == me));
    own + m
        .children(e)
        .into_iter()
        .map(|c| reads_self(m, c, me))
        .sum::<usize>()
}

/// Whether scan op `o` is a first-order linear recurrence.
pub fn applies(m: &Module, o: usize) -> bool {
    let op = &m.ops[o];
    if op.recurrence.is_none() {
        return false;
    }
    let me = op.result;
    if reads_self(m, op.body, me) != 1 {
        return false;
    }
    let Node::Binary(BinOp::Add, a, b) = &m.expr(op.body).node else {
        return false;
    };
    let linear_term = |e: ExprId| -> bool {
        match &m.expr(e).node {
            Node::Read(v, _) => *v == me,
            Node::Binary(BinOp::Mul, x, y) => {
                let sx = matches!(&m.expr(*x).node, Node::Read(v, _) if *v == me);
                let sy = matches!(&m.expr(*y).node, Node::Read(v, _) if *v == me);
                (sx && reads_self(m, *y, me) == 0) || (sy && reads_self(m, *x, me) == 0)
            }
            _ => false,
        }
    };
    (linear_term(*a) && reads_self(m, *b, me) == 0)
        || (linear_term(*b) && reads_self(m, *a, me) == 0)
}

/// The scan-with-readout match: a scan `S` (self-reads at `t - 1`, every
/// other subscript its own index) read by exactly one op `O`, only through
/// sums over the axes of `S` that are not `O`'s (the *state*), can be
/// computed with the state on chip, column by column, `S` never written:
/// RetNet's matrix state (`o = sum(e) q * S[.., e, f]`) and the diagonal
/// SSMs of Mamba, H3 and Mega (`sum(n) C * h[.., n]`). Conditions: `S` is
/// not the output; `O` is not a scan and has no normaliser; every read of
/// `S` in `O` is subscripted by plain `O` slots, the same each time,
/// mapping `S`'s time and other axes one to one onto `O`'s result axes and
/// the state onto slots `O`'s sums bind; the state's size is a constant up
/// to [`MAX_STATE`]. The optimiser's `fuse-scan-readout` rule and the back
/// ends' scan template (`mixc_backends::statescan`) both match through
/// [`readout`].
/// The largest state (in elements) a column keeps on chip (the back
/// ends unroll state loops up to this size into registers).
pub const MAX_STATE: i64 = 128;

/// The largest state the chunked form keeps when each state element has a
/// multiplier of its own (two arrays of the state in registers: at 128,
/// ptxas spills, so that state takes the sequential form, which fits).
/// With one multiplier for the whole state (RetNet's decay, or none), the
/// limit is [`MAX_STATE`].
pub const CHUNKED_MAX_STATE: i64 = 64;

/// Whether the step's multiplier `xa` (of [`affine`]; None: 1) is the same
/// for every state element (RetNet's per-head decay, or none at all), so
/// a chunk composes it into one register instead of an array the size of
/// the state.
pub fn one_multiplier(m: &Module, ss: &StateScan, xa: Option<ExprId>) -> bool {
    let state_slots: Vec<Slot> = ss.state.iter().map(|(s, _)| *s).collect();
    xa.map(|x| !super::mentions(m, x, &state_slots))
        .unwrap_or(true)
}

/// Whether the scan of `ss` can run in chunks of time: its steps are affine
/// maps of the state ([`affine`]), which compose, and the state fits the
/// chunked form's registers ([`CHUNKED_MAX_STATE`], or [`MAX_STATE`] when
/// one multiplier serves the whole state).
pub fn chunkable(m: &Module, ss: &StateScan) -> bool {
    let Some((xa, _)) = affine(m, ss.s) else {
        return false;
    };
    ss.size()
        <= if one_multiplier(m, ss, xa) {
            MAX_STATE
        } else {
            CHUNKED_MAX_STATE
        }
}

/// A matched scan and its readout.
#[derive(Clone, Debug)]
pub struct StateScan {
    /// The scan and the op that reads it (the kernel's result).
    pub s: usize,
    pub o: usize,
    /// The scan's recurrence slot.
    pub t: Slot,
    /// Per slot of the scan's result: the readout's slot it is read at.
    pub s_to_o: Vec<Slot>,
    /// The state's axes (scan slots) with their constant extents, in order.
    pub state: Vec<(Slot, i64)>,
}

impl StateScan {
    /// Elements of state per column.
    pub fn size(&self) -> i64 {
        self.state.iter().map(|(_, n)| n).product()
    }

    /// The readout's time slot.
    pub fn o_time(&self) -> Slot {
        self.s_to_o[self.t as usize]
    }

    /// The readout's result slots but time: one column each.
    pub fn columns(&self, m: &Module) -> Vec<Slot> {
        (0..m.ops[self.o].rank as Slot)
            .filter(|s| *s != self.o_time())
            .collect()
    }

    /// Per state axis (a scan slot): its stride in the flat state.
    pub fn strides(&self) -> Vec<(Slot, i64)> {
        let mut stride = 1;
        let mut out: Vec<(Slot, i64)> = self
            .state
            .iter()
            .rev()
            .map(|&(s, n)| {
                let r = (s, stride);
                stride *= n;
                r
            })
            .collect();
        out.reverse();
        out
    }

    /// The flat state index of a read of the scan with `subs` (its
    /// subscripts, evaluated), given a constant-folding multiply-add.
    pub fn flat<T: Clone>(
        &self,
        subs: &[T],
        zero: T,
        mut mul_add: impl FnMut(T, T, i64) -> T,
    ) -> T {
        self.strides().iter().fold(zero, |acc, (s, k)| {
            mul_add(acc, subs[*s as usize].clone(), *k)
        })
    }

    /// What the kernel is, for manifests and `--report`.
    pub fn kind(&self) -> String {
        format!(
            "scan + readout ({} state elements per column on chip)",
            self.size()
        )
    }

    /// The extent of the readout's column axes (the kernel's threads).
    pub fn threads(&self, m: &Module) -> DimExpr {
        use mixc_dsl::typed::DimOp;
        let op = &m.ops[self.o];
        self.columns(m)
            .iter()
            .fold(DimExpr::Const(1), |acc, s| match acc {
                DimExpr::Const(1) => op.slots[*s as usize].extent.clone(),
                acc => DimExpr::bin(DimOp::Mul, acc, op.slots[*s as usize].extent.clone()),
            })
    }

    /// The column axis a host kernel's threads split: the longest constant
    /// one, else the first.
    pub fn parallel_slot(&self, m: &Module, consts: &BTreeMap<String, i64>) -> Option<Slot> {
        let op = &m.ops[self.o];
        let cols = self.columns(m);
        cols.iter()
            .copied()
            .filter_map(|s| Some((op.slots[s as usize].extent.eval(consts).ok()?, s)))
            .max_by_key(|(n, s)| (*n, std::cmp::Reverse(*s)))
            .map(|(_, s)| s)
            .or_else(|| cols.first().copied())
    }
}

fn has_normalize(m: &Module, e: ExprId) -> bool {
    matches!(m.expr(e).node, Node::Normalize { .. })
        || m.children(e).into_iter().any(|c| has_normalize(m, c))
}

/// Whether `e` is `Index(t) - 1`.
fn previous(m: &Module, e: ExprId, t: Slot) -> bool {
    let Node::Binary(BinOp::Sub, a, b) = &m.expr(e).node else {
        return false;
    };
    matches!(m.expr(*a).node, Node::Index(x) if x == t)
        && matches!(m.expr(*b).node, Node::Const(c) if c == 1.0)
}

/// The scan-with-readout form of scan op `s` (see [`StateScan`]), if it
/// and its one reader match, with the state's size constant under
/// `consts`.
pub fn readout(m: &Module, s: usize, consts: &BTreeMap<String, i64>) -> Option<StateScan> {
    let op_s = &m.ops[s];
    let t = op_s.recurrence? as Slot;
    let sv = op_s.result;
    if sv == m.output {
        return None;
    }
    // Self-reads: at t - 1, every other subscript the scan's own index.
    let mut own = Vec::new();
    reads_of(m, op_s.body, sv, &mut own);
    for r in &own {
        let Node::Read(_, subs) = &m.expr(*r).node else {
            return None;
        };
        for (k, sub) in subs.iter().enumerate() {
            let ok = if k as Slot == t {
                previous(m, *sub, t)
            } else {
                matches!(m.expr(*sub).node, Node::Index(x) if x as usize == k)
            };
            if !ok {
                return None;
            }
        }
    }
    // Exactly one reader.
    let readers: Vec<usize> = (0..m.ops.len())
        .filter(|&k| k != s && super::operands(m, k).contains(&sv))
        .collect();
    let [o] = readers.as_slice() else {
        return None;
    };
    let o = *o;
    let op_o = &m.ops[o];
    if op_o.recurrence.is_some() || has_normalize(m, op_o.body) {
        return None;
    }
    // Every read of S in O: plain O slots, the same map each time.
    let mut reads = Vec::new();
    reads_of(m, op_o.body, sv, &mut reads);
    let mut s_to_o: Option<Vec<Slot>> = None;
    for r in &reads {
        let Node::Read(_, subs) = &m.expr(*r).node else {
            return None;
        };
        let map: Option<Vec<Slot>> = subs
            .iter()
            .map(|sub| match m.expr(*sub).node {
                Node::Index(x) => Some(x),
                _ => None,
            })
            .collect();
        let map = map?;
        match &s_to_o {
            Some(prev) if *prev != map => return None,
            _ => s_to_o = Some(map),
        }
    }
    let s_to_o = s_to_o?;
    // Time and columns onto O's result axes, one to one; the rest is state.
    let mut mapped = BTreeSet::new();
    let mut state = Vec::new();
    for (k, &x) in s_to_o.iter().enumerate() {
        let same = op_s.slots[k].extent == op_o.slots[x as usize].extent;
        if (x as usize) < op_o.rank {
            if !mapped.insert(x) || !same {
                return None;
            }
        } else if k as Slot == t || !same {
            return None;
        } else {
            let n = op_s.slots[k].extent.eval(consts).ok()?;
            state.push((k as Slot, n));
        }
    }
    if mapped.len() != op_o.rank || state.is_empty() {
        return None;
    }
    let ss = StateScan {
        s,
        o,
        t,
        s_to_o,
        state,
    };
    (ss.size() <= MAX_STATE).then_some(ss)
}

/// The scan's body as `x * self + y` (`x` None: 1), if it is a
/// first-order linear recurrence ([`applies`]): each
/// step is an affine map of the state, so a chunk of steps composes into
/// one (what the GPU's chunked form uses).
pub fn affine(m: &Module, s: usize) -> Option<(Option<ExprId>, ExprId)> {
    if !applies(m, s) {
        return None;
    }
    let me = m.ops[s].result;
    let Node::Binary(BinOp::Add, a, b) = m.expr(m.ops[s].body).node else {
        return None;
    };
    let is_self = |e: ExprId| matches!(&m.expr(e).node, Node::Read(v, _) if *v == me);
    let free = |e: ExprId| {
        let mut r = Vec::new();
        reads_of(m, e, me, &mut r);
        r.is_empty()
    };
    for (lin, y) in [(a, b), (b, a)] {
        if !free(y) {
            continue;
        }
        if is_self(lin) {
            return Some((None, y));
        }
        if let Node::Binary(BinOp::Mul, p, q) = m.expr(lin).node {
            if is_self(p) && free(q) {
                return Some((Some(q), y));
            }
            if is_self(q) && free(p) {
                return Some((Some(p), y));
            }
        }
    }
    None
}
