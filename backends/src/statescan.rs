//! The scan-with-readout template: a linear recurrence whose state is read
//! by one op only, through sums over the state's own axes, is computed with
//! the state on chip; the state is never written to memory.
//!
//! The pattern covers the matrix-state recurrences of RetNet
//! (`S[b, t, h, e, f] = gamma * S[.., t - 1, ..] + k[e] v[f]`, read as
//! `o[b, t, h, f] = sum(e) q[e] * S[.., e, f]`) and the diagonal SSMs of
//! Mamba, H3 and Mega (`h[b, l, c, n]`, read as `sum(n) C[n] * h[.., n]`):
//!
//! ```text
//! for each column (the readout's result indices but time):   // in parallel
//!     state[..] = 0                       // the state axes, a constant size
//!     for t in 0..T:
//!         for n in state: state[n] = S.body(column, t, n)   // self-read -> state[n]
//!         O[column, t] = O.body(column, t)                  // reads of S -> state[..]
//! ```
//!
//! Written as is, `S` is `state size` times larger than the readout (RetNet
//! at `E = 64`: 64 floats per output) and is written once and read once. The
//! template does the same arithmetic in the same order per element, so it
//! agrees with the interpreter to rounding.
//!
//! Conditions (`matches`):
//! - `S` is a scan whose self-reads are at `(.., t - 1, ..)`, every other
//!   subscript its own index; it is not the mixer's output, and exactly
//!   one other op `O` reads it;
//! - `O` is not a scan and has no normaliser; every read of `S` in `O` is
//!   subscripted by plain `O` slots, the same for every read: `S`'s time
//!   and column axes map one to one onto `O`'s result axes, and `S`'s
//!   other axes (the *state*) onto slots `O`'s sums bind;
//! - the state's size is a constant under the sizes fixed at build time,
//!   at most [`MAX_STATE`] elements.

use crate::attention::HostKernel;
use crate::cpu::{llvm, Gen, R};
use inkwell::values::{IntValue, PointerValue};
use mixc_compiler::ir::{BinOp, DimExpr, ExprId, Module, Node, Slot, ValueId};
use std::collections::{BTreeMap, BTreeSet};

/// The largest state (in elements) a column keeps on chip.
pub const MAX_STATE: i64 = crate::kir::UNROLL;

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

fn reads_of(m: &Module, e: ExprId, v: ValueId, out: &mut Vec<ExprId>) {
    if let Node::Read(w, _) = &m.expr(e).node {
        if *w == v {
            out.push(e);
        }
    }
    for c in m.children(e) {
        reads_of(m, c, v, out);
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

/// The template for scan op `s`, if it and its one reader match.
pub fn matches(m: &Module, s: usize, consts: &BTreeMap<String, i64>) -> Option<StateScan> {
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
        .filter(|&k| k != s && mixc_opt::lang::operands(m, k).contains(&sv))
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
/// first-order linear recurrence (`mixc_opt::rules::scan::applies`): each
/// step is an affine map of the state, so a chunk of steps composes into
/// one (what the GPU's chunked form uses).
pub fn affine(m: &Module, s: usize) -> Option<(Option<ExprId>, ExprId)> {
    if !mixc_opt::rules::scan::applies(m, s) {
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

/// `kernels` with every scan the template takes replaced: the scan's
/// kernel removed (its op absorbed: no buffer), its reader's kernel the
/// template.
pub fn splice(
    m: &Module,
    consts: &BTreeMap<String, i64>,
    kernels: Vec<HostKernel>,
    mut absorbed: BTreeSet<usize>,
) -> (Vec<HostKernel>, BTreeSet<usize>) {
    let generic: BTreeSet<usize> = kernels
        .iter()
        .filter_map(|k| match k {
            HostKernel::Generic(o) => Some(*o),
            _ => None,
        })
        .collect();
    let mut by_o: BTreeMap<usize, StateScan> = BTreeMap::new();
    for &s in &generic {
        if let Some(ss) = matches(m, s, consts) {
            if generic.contains(&ss.o) && !by_o.contains_key(&s) {
                by_o.insert(ss.o, ss);
            }
        }
    }
    // A scan whose reader is itself a scan taken by the template stays.
    let scans: BTreeSet<usize> = by_o.values().map(|ss| ss.s).collect();
    by_o.retain(|o, _| !scans.contains(o));
    let scans: BTreeSet<usize> = by_o.values().map(|ss| ss.s).collect();
    absorbed.extend(scans.iter().copied());
    let out = kernels
        .into_iter()
        .filter(|k| !scans.contains(&k.op()) || !matches!(k, HostKernel::Generic(_)))
        .map(|k| match by_o.get(&k.op()) {
            Some(ss) if matches!(k, HostKernel::Generic(_)) => HostKernel::StateScan(ss.clone()),
            _ => k,
        })
        .collect();
    (out, absorbed)
}

/// A read of the scan a host template keeps on chip.
#[derive(Clone, Debug)]
pub(crate) struct StateRef<'c> {
    pub(crate) value: ValueId,
    pub(crate) ptr: PointerValue<'c>,
    pub(crate) ss: StateScan,
}

impl<'c> Gen<'c, '_> {
    /// The state element a read of the template's scan at `subs` is.
    pub(crate) fn state_ptr(
        &self,
        st: &StateRef<'c>,
        subs: &[IntValue<'c>],
    ) -> R<PointerValue<'c>> {
        let zero = self.i64c(0);
        let mut fail = None;
        let flat = st.ss.flat(subs, zero, |acc, i, k| {
            let r = self
                .b
                .build_int_mul(i, self.i64c(k), "sk")
                .and_then(|x| self.b.build_int_add(acc, x, "sf"));
            r.unwrap_or_else(|e| {
                fail = Some(llvm(e));
                acc
            })
        });
        if let Some(e) = fail {
            return Err(e);
        }
        // SAFETY: state subscripts of a matched read are in range of the
        // state's constant extents (the checker proved them in range of the
        // scan's shape, whose state axes these are).
        unsafe {
            self.b
                .build_in_bounds_gep(self.cx.f32_type(), st.ptr, &[flat], "st")
        }
        .map_err(llvm)
    }

    /// The template on the host: the columns of `[lo, hi)` of slot `par`.
    pub(crate) fn state_scan(
        &mut self,
        ss: &StateScan,
        par: Option<Slot>,
        lo: IntValue<'c>,
        hi: IntValue<'c>,
    ) -> R<()> {
        let m = self.ir;
        let (op_s, op_o) = (m.ops[ss.s].clone(), m.ops[ss.o].clone());
        self.enter(ss.o, par, lo, hi)?;
        let o_slots = self.slots.clone();
        // The scan's frame: its own slot variables and extents.
        let s_slots: Vec<PointerValue<'c>> = (0..op_s.slots.len())
            .map(|k| self.alloca(self.cx.i64_type().into(), &format!("sf{k}")))
            .collect::<R<_>>()?;
        let s_ext: Vec<IntValue<'c>> = op_s
            .slots
            .iter()
            .map(|s| self.dim(&s.extent))
            .collect::<R<_>>()?;
        let f32t = self.cx.f32_type();
        let ptr = self
            .alloca_b
            .build_array_alloca(f32t, self.i64c(ss.size()), "state")
            .map_err(llvm)?;
        self.state = Some(StateRef {
            value: op_s.result,
            ptr,
            ss: ss.clone(),
        });
        let state_slots: Vec<Slot> = ss.state.iter().map(|(s, _)| *s).collect();
        let shape_o = m.value(op_o.result).shape.clone();
        let cols = ss.columns(m);
        let o_t = ss.o_time();
        // Runs `f` in the scan's frame, its time and column slots set
        // from the readout's.
        let in_scan = |g: &mut Self, f: &mut dyn FnMut(&mut Self) -> R<()>| -> R<()> {
            for (k, &x) in ss.s_to_o.iter().enumerate() {
                if (x as usize) < op_o.rank {
                    let v = g.load_i(o_slots[x as usize], "ov")?;
                    g.b.build_store(s_slots[k], v).map_err(llvm)?;
                }
            }
            let saved = (g.slots.clone(), g.extents.clone(), g.range.take());
            g.slots = s_slots.clone();
            g.extents = s_ext.clone();
            let r = f(g);
            (g.slots, g.extents, g.range) = saved;
            r
        };
        let state_elem = |g: &mut Self| -> R<PointerValue<'c>> {
            let subs: Vec<IntValue<'c>> = s_slots
                .iter()
                .map(|p| g.load_i(*p, "si"))
                .collect::<R<_>>()?;
            let st = g.state.clone().expect("set above");
            g.state_ptr(&st, &subs)
        };
        // The readout's sums run over the state: reassociated, they vectorise.
        self.reassoc = true;
        let r = self.loops(&cols, &mut |g| {
            in_scan(g, &mut |g| {
                g.loops(&state_slots, &mut |g| {
                    let p = state_elem(g)?;
                    g.b.build_store(p, g.f32c(0.0)).map_err(llvm)?;
                    Ok(())
                })
            })?;
            g.loops(&[o_t], &mut |g| {
                in_scan(g, &mut |g| {
                    g.loops(&state_slots, &mut |g| {
                        let v = g.expr(op_s.body)?;
                        let v = g.to_f(v)?;
                        let p = state_elem(g)?;
                        g.b.build_store(p, v).map_err(llvm)?;
                        Ok(())
                    })
                })?;
                g.store_result(op_o.result, &shape_o, op_o.body)
            })
        });
        self.state = None;
        self.reassoc = false;
        self.range = None;
        r
    }
}
