//! The fused-attention template for the host: scores, their modification,
//! softmax and the weighted sum as one kernel with an online softmax, so no
//! `L x L` tensor is ever written.
//!
//! The chain is the one the optimiser's `fuse-attention` rule names
//! (`mixc_compiler::pattern::attention`), taken a little more generally:
//! `o = sum(j) p[.., j, ..] * rest` with `p = softmax(j) where MASK: f(..)`,
//! where every op that `f` reads at `p`'s own indices (the scores, a score
//! modification, transitively) is inlined. The user's expressions are
//! evaluated per `(row, j)` from the IR, exactly as the interpreter defines
//! them: the score contraction, any modification (ALiBi's bias written into
//! the scores, soft-capping) and the mask predicate.
//!
//! The kernel walks one row (all of `p`'s indices but `j`) at a time:
//!
//! ```text
//! m = -inf; l = 0; acc[..] = 0
//! for j in [lo(row), hi(row)):           // key range from the mask
//!     if !exact && !mask(row, j): continue
//!     x = f(s(row, j))
//!     if x > m: acc *= exp(m - x); l *= exp(m - x); m = x   // only then
//!     w = exp(x - m); l += w; acc[..] += w * v[j, ..]
//! o[row, ..] = l > 0 ? acc / l : 0      // a fully masked row gives 0
//! ```
//!
//! The key range comes from the mask's linear clauses (`j <= i`,
//! `i - j < w`, `j >= i - w`): a conjunction of bounds on `j` with
//! coefficient +-1 gives `[lo, hi)` per row, so masked-out key blocks are
//! never visited. When every clause is such a bound the range is exact and
//! the predicate is not evaluated at all; otherwise (`%` in dilated or
//! block-sparse masks, `or`, `!=`) the predicate runs for each `j` in the
//! range, which is still sound: the range only ever over-approximates.

use super::{llvm, Gen, R, V};
use inkwell::values::IntValue;
use inkwell::IntPredicate;
use mixc_compiler::ir::{BinOp, DimExpr, ExprId, Module, Node, Slot, Ty, UnOp};
use std::collections::{BTreeSet, HashMap};

use mixc_compiler::pattern::attention::absorbed_by;
pub use mixc_compiler::pattern::attention::{
    bounds, parallel_slot, plan, rows, Bounds, Inline, Lin, Template,
};
use mixc_compiler::pattern::tiling::Tiling;

impl<'c> Gen<'c, '_> {
    fn lin_value(&mut self, l: &Lin) -> R<IntValue<'c>> {
        let mut acc = self.i64c(l.c);
        for (k, t) in &l.terms {
            let v = self.expr(*t)?;
            let v = match v {
                V::I(i) => i,
                _ => {
                    return Err(crate::BackendError::Llvm(
                        "a mask bound is not an integer".into(),
                    ))
                }
            };
            let kv = self.b.build_int_mul(v, self.i64c(*k), "kt").map_err(llvm)?;
            acc = self.b.build_int_add(acc, kv, "lin").map_err(llvm)?;
        }
        Ok(acc)
    }

    fn imax(&self, a: IntValue<'c>, b: IntValue<'c>) -> R<IntValue<'c>> {
        let c = self
            .b
            .build_int_compare(IntPredicate::SGT, a, b, "gt")
            .map_err(llvm)?;
        Ok(self
            .b
            .build_select(c, a, b, "max")
            .map_err(llvm)?
            .into_int_value())
    }

    fn imin(&self, a: IntValue<'c>, b: IntValue<'c>) -> R<IntValue<'c>> {
        let c = self
            .b
            .build_int_compare(IntPredicate::SLT, a, b, "lt")
            .map_err(llvm)?;
        Ok(self
            .b
            .build_select(c, a, b, "min")
            .map_err(llvm)?
            .into_int_value())
    }

    /// The template for `t` over `[lo, hi)` of `par` (a slot of `p`).
    pub(crate) fn attention(
        &mut self,
        t: &Template,
        par: Option<Slot>,
        lo: IntValue<'c>,
        hi: IntValue<'c>,
    ) -> R<()> {
        let m = self.ir;
        let (op_o, op_p) = (m.ops[t.o].clone(), m.ops[t.p].clone());
        let Node::Normalize {
            guard, body: pbody, ..
        } = m.expr(op_p.body).node.clone()
        else {
            return Err(crate::BackendError::Llvm(
                "attention template: no softmax".into(),
            ));
        };
        let Node::Reduce { body: obody, .. } = m.expr(op_o.body).node.clone() else {
            return Err(crate::BackendError::Llvm(
                "attention template: no sum".into(),
            ));
        };
        // The p frame: p's slots, then the inlined ops' reduction slots.
        let nf = op_p.rank + t.extra.len();
        let mut pf_ext = Vec::new();
        for d in op_p.slots.iter().map(|s| &s.extent).chain(&t.extra) {
            pf_ext.push(self.dim(d)?);
        }
        let mut pf = Vec::new();
        for k in 0..nf {
            pf.push(self.alloca(self.cx.i64_type().into(), &format!("pf{k}"))?);
        }
        let of_ext: Vec<IntValue<'c>> = op_o
            .slots
            .iter()
            .map(|s| self.dim(&s.extent))
            .collect::<R<_>>()?;
        let of: Vec<_> = (0..op_o.slots.len())
            .map(|k| self.alloca(self.cx.i64_type().into(), &format!("of{k}")))
            .collect::<R<_>>()?;
        // Reads of the chain's intermediates are evaluated, not loaded.
        self.inline.clear();
        for &x in &t.inlined {
            self.inline
                .insert(m.ops[x].result, Inline::Body(m.ops[x].body));
        }
        self.inline.insert(op_p.result, Inline::One);
        let f32t = self.cx.f32_type();
        // The accumulator: one f32 per element of o's own axes.
        let mut nacc = self.i64c(1);
        for s in &t.acc {
            nacc = self
                .b
                .build_int_mul(nacc, of_ext[*s as usize], "nacc")
                .map_err(llvm)?;
        }
        // A fixed-size accumulator lives in the entry block (registers or
        // local memory on a GPU); otherwise a dynamic alloca at the kernel's
        // start, outside every loop (the host only: `gpu_kernels` checks).
        let acc = if nacc.is_const() {
            self.alloca_b
                .build_array_alloca(f32t, nacc, "acc")
                .map_err(llvm)?
        } else if self.gpu {
            return Err(crate::BackendError::Llvm(
                "attention template: the accumulator's size is not fixed".into(),
            ));
        } else {
            self.b.build_array_alloca(f32t, nacc, "acc").map_err(llvm)?
        };
        let mstat = self.alloca(f32t.into(), "m")?;
        let lstat = self.alloca(f32t.into(), "l")?;
        let outer: Vec<Slot> = (0..op_p.rank as Slot).filter(|s| *s != t.jp).collect();
        let bnd = bounds(m, guard, t.jp);
        let shape_o = m.value(op_o.result).shape.clone();
        let result = op_o.result;
        self.slots = pf.clone();
        self.extents = pf_ext.clone();
        self.range = par.map(|p| (p, lo, hi));
        let mut row = |g: &mut Self| -> R<()> {
            // Row setup: o's frame from p's, statistics cleared.
            for (ps, os) in &t.p_to_o {
                let v = g.load_i(pf[*ps as usize], "pv")?;
                g.b.build_store(of[*os as usize], v).map_err(llvm)?;
            }
            g.b.build_store(mstat, g.f32c(f64::NEG_INFINITY))
                .map_err(llvm)?;
            g.b.build_store(lstat, g.f32c(0.0)).map_err(llvm)?;
            g.acc_loop(&t.acc, &of, &of_ext, acc, &mut |g, p| {
                g.b.build_store(p, g.f32c(0.0)).map_err(llvm)?;
                Ok(())
            })?;
            // The key range.
            let mut jlo = g.i64c(0);
            for l in &bnd.lo {
                let v = g.lin_value(l)?;
                jlo = g.imax(jlo, v)?;
            }
            let mut jhi = pf_ext[t.jp as usize];
            for l in &bnd.hi {
                let v = g.lin_value(l)?;
                jhi = g.imin(jhi, v)?;
            }
            let saved = g.range;
            let saved_ext = g.extents[t.jp as usize];
            g.range = Some((t.jp, jlo, jhi));
            g.loops(&[t.jp], &mut |g| {
                let j = g.load_i(pf[t.jp as usize], "j")?;
                g.b.build_store(of[t.r as usize], j).map_err(llvm)?;
                let mut step = |g: &mut Self| -> R<V<'c>> {
                    let x = g.expr(pbody)?;
                    let x = g.to_f(x)?;
                    // A new row maximum rescales what was accumulated (one
                    // exp, only then); otherwise the maximum stands.
                    let m0 = g.load_f(mstat, "m0")?;
                    let up =
                        g.b.build_float_compare(inkwell::FloatPredicate::OGT, x, m0, "up")
                            .map_err(llvm)?;
                    g.branch(
                        up,
                        Ty::Bool,
                        &mut |g| {
                            let d = g.b.build_float_sub(m0, x, "d").map_err(llvm)?;
                            let corr = g.intrinsic("llvm.exp", &[d])?;
                            let l0 = g.load_f(lstat, "l0")?;
                            let l1 = g.b.build_float_mul(l0, corr, "lc").map_err(llvm)?;
                            g.b.build_store(lstat, l1).map_err(llvm)?;
                            g.b.build_store(mstat, x).map_err(llvm)?;
                            g.acc_loop(&t.acc, &of, &of_ext, acc, &mut |g, p| {
                                let a = g.load_f(p, "a")?;
                                let a = g.b.build_float_mul(a, corr, "ac").map_err(llvm)?;
                                g.b.build_store(p, a).map_err(llvm)?;
                                Ok(())
                            })?;
                            Ok(V::B(g.cx.bool_type().const_zero()))
                        },
                        &mut |g| Ok(V::B(g.cx.bool_type().const_zero())),
                    )?;
                    let m1 = g.load_f(mstat, "m1")?;
                    let d = g.b.build_float_sub(x, m1, "dx").map_err(llvm)?;
                    let w = g.intrinsic("llvm.exp", &[d])?;
                    let l0 = g.load_f(lstat, "l0")?;
                    let l1 = g.b.build_float_add(l0, w, "l1").map_err(llvm)?;
                    g.b.build_store(lstat, l1).map_err(llvm)?;
                    // acc += w * rest(j, ..), in o's frame.
                    g.acc_loop(&t.acc, &of, &of_ext, acc, &mut |g, p| {
                        let rest = g.expr(obody)?;
                        let rest = g.to_f(rest)?;
                        let a = g.load_f(p, "a")?;
                        let wr = g.b.build_float_mul(w, rest, "wr").map_err(llvm)?;
                        let a = g.b.build_float_add(a, wr, "a1").map_err(llvm)?;
                        g.b.build_store(p, a).map_err(llvm)?;
                        Ok(())
                    })?;
                    Ok(V::B(g.cx.bool_type().const_zero()))
                };
                if bnd.exact {
                    step(g)?;
                    Ok(())
                } else {
                    g.when_kept(guard, &mut step)
                }
            })?;
            g.range = saved;
            g.extents[t.jp as usize] = saved_ext;
            // Write the row: acc / l, or 0 for a fully masked row.
            let l = g.load_f(lstat, "l")?;
            let some =
                g.b.build_float_compare(inkwell::FloatPredicate::OGT, l, g.f32c(0.0), "some")
                    .map_err(llvm)?;
            g.acc_loop(&t.acc, &of, &of_ext, acc, &mut |g, p| {
                let a = g.load_f(p, "a")?;
                let q = g.b.build_float_div(a, l, "q").map_err(llvm)?;
                let v = g.b.build_select(some, q, g.f32c(0.0), "o").map_err(llvm)?;
                g.store_value(result, &shape_o, V::F(v.into_float_value()))
            })?;
            Ok(())
        };
        // The host walks its share of the rows; a GPU thread takes one.
        let r = if self.gpu {
            self.thread_loop(&outer, &mut row)
        } else {
            self.loops(&outer, &mut row)
        };
        self.range = None;
        self.inline.clear();
        r
    }

    /// Loops over the accumulator's axes in o's frame (which `f` runs in),
    /// handing `f` the element's address.
    fn acc_loop(
        &mut self,
        axes: &[Slot],
        of: &[inkwell::values::PointerValue<'c>],
        of_ext: &[IntValue<'c>],
        acc: inkwell::values::PointerValue<'c>,
        f: &mut dyn FnMut(&mut Self, inkwell::values::PointerValue<'c>) -> R<()>,
    ) -> R<()> {
        let (ps, pe, pr) = (self.slots.clone(), self.extents.clone(), self.range);
        self.slots = of.to_vec();
        self.extents = of_ext.to_vec();
        self.range = None;
        let r = self.loops(axes, &mut |g| {
            let mut flat = g.i64c(0);
            for s in axes {
                let i = g.load_i(of[*s as usize], "ai")?;
                flat =
                    g.b.build_int_mul(flat, of_ext[*s as usize], "af")
                        .map_err(llvm)?;
                flat = g.b.build_int_add(flat, i, "af").map_err(llvm)?;
            }
            // SAFETY: `flat` < the product of the axes' extents, the size of `acc`.
            let p = unsafe { g.b.build_in_bounds_gep(g.cx.f32_type(), acc, &[flat], "ap") }
                .map_err(llvm)?;
            f(g, p)
        });
        self.slots = ps;
        self.extents = pe;
        self.range = pr;
        r
    }
}

pub use mixc_compiler::schedule::Schedule as HostKernel;

/// The `--codegen llvm` GPU path's kernels (a cross-check of the kernel-IR
/// path, on the unhoisted module): the attention template where its
/// accumulator's size is a constant under `consts`, one generic kernel per
/// op elsewhere, nothing for absorbed ops.
pub fn llvm_gpu_kernels(
    m: &Module,
    templates: bool,
    consts: &std::collections::BTreeMap<String, i64>,
) -> (Vec<HostKernel>, BTreeSet<usize>) {
    if !templates {
        return (
            (0..m.ops.len()).map(HostKernel::Generic).collect(),
            BTreeSet::new(),
        );
    }
    let (ts, _) = plan(m);
    let fixed_acc = |t: &Template| {
        t.acc
            .iter()
            .all(|s| m.ops[t.o].slots[*s as usize].extent.eval(consts).is_ok())
    };
    let ts: Vec<Template> = ts.into_iter().filter(fixed_acc).collect();
    let absorbed = absorbed_by(m, &ts);
    let by_o: HashMap<usize, Template> = ts.into_iter().map(|t| (t.o, t)).collect();
    let ks = (0..m.ops.len())
        .filter(|o| !absorbed.contains(o))
        .map(|o| match by_o.get(&o) {
            Some(t) => HostKernel::Attention(t.clone(), Tiling::Rows),
            None => HostKernel::Generic(o),
        })
        .collect();
    (ks, absorbed)
}

/// The first attention template's mask as a Python expression over
/// `q_idx` and `kv_idx` (and `L`), for a PyTorch `mask_mod`: integer
/// arithmetic, comparisons, `&`, `|`, `~`. `fixed` gives every size but
/// `L`. `None` if there is no template, or the mask reads a tensor, another
/// index, or anything without a plain integer meaning. No mask is `True`
/// for every pair (written `q_idx >= 0`).
pub fn mask_python(m: &Module, fixed: &std::collections::BTreeMap<String, i64>) -> Option<String> {
    let (ts, _) = plan(m);
    let t = ts.first()?;
    let q = parallel_slot(m, t)?;
    let Node::Normalize { guard, .. } = &m.expr(m.ops[t.p].body).node else {
        return None;
    };
    match guard {
        None => Some("q_idx >= 0".into()),
        Some(g) => py_expr(m, *g, q, t.jp, fixed),
    }
}

fn py_dim(d: &DimExpr, fixed: &std::collections::BTreeMap<String, i64>) -> Option<String> {
    use mixc_dsl::typed::DimOp;
    Some(match d {
        DimExpr::Const(v) => v.to_string(),
        DimExpr::Sym(s) if s == "L" => "L".into(),
        DimExpr::Sym(s) => fixed.get(s)?.to_string(),
        DimExpr::Bin(op, a, b) => {
            let (a, b) = (py_dim(a, fixed)?, py_dim(b, fixed)?);
            match op {
                DimOp::Max => format!("max({a}, {b})"),
                DimOp::Min => format!("min({a}, {b})"),
                DimOp::Div | DimOp::FloorDiv => format!("({a} // {b})"),
                op => format!("({a} {} {b})", op.symbol()),
            }
        }
    })
}

fn py_expr(
    m: &Module,
    e: ExprId,
    q: Slot,
    kv: Slot,
    fixed: &std::collections::BTreeMap<String, i64>,
) -> Option<String> {
    let n = m.expr(e);
    let sub = |x: ExprId| py_expr(m, x, q, kv, fixed);
    Some(match &n.node {
        Node::Index(s) if *s == q => "q_idx".into(),
        Node::Index(s) if *s == kv => "kv_idx".into(),
        Node::Const(c) if n.ty == Ty::Int => (*c as i64).to_string(),
        Node::Const(c) if n.ty == Ty::Bool => if *c != 0.0 {
            "(q_idx >= 0)"
        } else {
            "(q_idx < 0)"
        }
        .into(),
        Node::Size(d) => py_dim(d, fixed)?,
        Node::Unary(UnOp::Not, a) => format!("(~{})", sub(*a)?),
        Node::Unary(UnOp::Neg, a) if n.ty == Ty::Int => format!("(-{})", sub(*a)?),
        Node::Binary(op, a, b) => {
            let sym = match op {
                BinOp::And => "&",
                BinOp::Or => "|",
                BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::FloorDiv | BinOp::Mod
                    if m.expr(*a).ty == Ty::Int && m.expr(*b).ty == Ty::Int =>
                {
                    op.symbol()
                }
                BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge
                    if m.expr(*a).ty == Ty::Int && m.expr(*b).ty == Ty::Int =>
                {
                    op.symbol()
                }
                _ => return None,
            };
            format!("({} {sym} {})", sub(*a)?, sub(*b)?)
        }
        _ => return None,
    })
}
