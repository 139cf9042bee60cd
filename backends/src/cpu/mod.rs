//! The CPU back end, generic path: every IR op becomes a loop nest in LLVM
//! IR (through inkwell), optimised at `-O2` and JIT-compiled for the host.
//!
//! One function `mixer(bufs, sizes, err)` runs the ops in program order:
//! `bufs[k]` is value `k`'s f32 buffer (row-major), `sizes` the bound sizes
//! in the module's order, so one compiled function serves every `L`.
//! Integer expressions (indices, sizes) are `i64`, reals `f32`, conditions
//! `i1`, as typed in the IR. `select`, element guards and masked terms
//! branch, so a guarded read never touches memory out of range, exactly as
//! in the interpreter. Integer division by zero sets `err` instead of
//! trapping. Normalisers recompute their row for each element (no cache):
//! correct first; the templates come later.

pub mod attention;
pub mod contract;
pub mod statescan;

use crate::BackendError;
use attention::{parallel_slot, HostKernel, Inline};
use inkwell::basic_block::BasicBlock;
use inkwell::builder::Builder;
use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::Module as LModule;
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{CodeModel, InitializationConfig, RelocMode, Target, TargetMachine};
use inkwell::types::BasicTypeEnum;
use inkwell::values::{BasicMetadataValueEnum, FloatValue, FunctionValue, IntValue, PointerValue};
use inkwell::{AddressSpace, FloatPredicate, IntPredicate, OptimizationLevel};
use mixc_compiler::ir::{
    self, BinOp, Builtin, DimExpr, ExprId, Module, Node, NormOp, RedOp, Slot, Ty, UnOp, ValueDef,
};
use mixc_compiler::schedule::{schedule, Target as Schedulee};
use mixc_dsl::typed::DimOp;
use mixc_runtime::bundle::Library;
use mixc_runtime::cpu::{host_threads, launch, KernelFn};
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

pub use crate::toolchain::CpuRun;

#[derive(Clone, Copy)]
pub(crate) enum V<'c> {
    I(IntValue<'c>),
    F(FloatValue<'c>),
    B(IntValue<'c>),
}

pub(crate) fn llvm<E: std::fmt::Display>(e: E) -> BackendError {
    BackendError::Llvm(e.to_string())
}

pub(crate) struct Gen<'c, 'm> {
    /// Emitting for NVPTX: transcendental functions come from libdevice.
    pub(crate) gpu: bool,
    pub(crate) cx: &'c Context,
    pub(crate) md: LModule<'c>,
    pub(crate) b: Builder<'c>,
    pub(crate) alloca_b: Builder<'c>,
    pub(crate) f: FunctionValue<'c>,
    pub(crate) ir: &'m Module,
    pub(crate) bufs: PointerValue<'c>,
    pub(crate) sizes: PointerValue<'c>,
    pub(crate) err: PointerValue<'c>,
    pub(crate) size_index: HashMap<String, usize>,
    /// Sizes fixed at build time, folded into the code as constants.
    pub(crate) consts: BTreeMap<String, i64>,
    pub(crate) slots: Vec<PointerValue<'c>>,
    pub(crate) extents: Vec<IntValue<'c>>,
    pub(crate) current: Option<ir::ValueId>,
    /// The slot whose loop runs over `[lo, hi)` instead of its whole extent
    /// (a thread's share of the parallel axis).
    pub(crate) range: Option<(Slot, IntValue<'c>, IntValue<'c>)>,
    /// Values a template evaluates in place instead of reading.
    pub(crate) inline: HashMap<ir::ValueId, Inline>,
    /// The scan whose state the scan-with-readout template keeps on chip.
    pub(crate) state: Option<statescan::StateRef<'c>>,
    /// Float sums may be reassociated (LLVM then vectorises them): set by
    /// templates whose sums run over a small on-chip state.
    pub(crate) reassoc: bool,
}

pub(crate) type R<T> = Result<T, BackendError>;

impl<'c, 'm> Gen<'c, 'm> {
    /// A generator for module `ir` emitting into `md`, positioned nowhere
    /// yet: [`Gen::begin`] starts each function.
    pub(crate) fn new(
        cx: &'c Context,
        md: LModule<'c>,
        ir: &'m Module,
        gpu: bool,
        f: FunctionValue<'c>,
    ) -> R<Gen<'c, 'm>> {
        let p0 = f
            .get_nth_param(0)
            .map(|p| p.into_pointer_value())
            .ok_or_else(|| BackendError::Llvm("missing parameter".into()))?;
        Ok(Gen {
            gpu,
            cx,
            md,
            b: cx.create_builder(),
            alloca_b: cx.create_builder(),
            f,
            ir,
            bufs: p0,
            sizes: p0,
            err: p0,
            size_index: ir
                .sizes
                .iter()
                .enumerate()
                .map(|(k, s)| (s.name.clone(), k))
                .collect(),
            slots: Vec::new(),
            extents: Vec::new(),
            current: None,
            range: None,
            inline: HashMap::new(),
            state: None,
            reassoc: false,
            consts: BTreeMap::new(),
        })
    }

    /// Starts function `f` (parameters `bufs, sizes, err, ..`) with `n` slots;
    /// returns the block to branch to from the entry once allocas are done.
    pub(crate) fn begin(&mut self, f: FunctionValue<'c>, n: usize) -> R<BasicBlock<'c>> {
        let entry = self.cx.append_basic_block(f, "entry");
        let start = self.cx.append_basic_block(f, "start");
        self.f = f;
        self.alloca_b.position_at_end(entry);
        self.b.position_at_end(start);
        let p = |k: u32| {
            f.get_nth_param(k)
                .ok_or_else(|| BackendError::Llvm("missing parameter".into()))
        };
        self.bufs = p(0)?.into_pointer_value();
        self.sizes = p(1)?.into_pointer_value();
        self.err = p(2)?.into_pointer_value();
        self.slots.clear();
        for k in 0..n {
            let a = self.alloca(self.cx.i64_type().into(), &format!("slot{k}"))?;
            self.slots.push(a);
        }
        Ok(start)
    }

    /// Ends the current function: returns, and closes the entry block.
    pub(crate) fn finish(&mut self, start: BasicBlock<'c>) -> R<()> {
        self.b.build_return(None).map_err(llvm)?;
        self.alloca_b
            .build_unconditional_branch(start)
            .map_err(llvm)?;
        Ok(())
    }
}

/// Row statistics of a normaliser, in stack slots.
#[derive(Clone, Copy)]
pub(crate) struct RowStats<'c> {
    a1: PointerValue<'c>,
    a2: PointerValue<'c>,
    count: PointerValue<'c>,
}

impl<'c> Gen<'c, '_> {
    pub(crate) fn i64c(&self, v: i64) -> IntValue<'c> {
        self.cx.i64_type().const_int(v as u64, true)
    }

    pub(crate) fn f32c(&self, v: f64) -> FloatValue<'c> {
        self.cx.f32_type().const_float(v)
    }

    pub(crate) fn alloca(&self, ty: BasicTypeEnum<'c>, name: &str) -> R<PointerValue<'c>> {
        self.alloca_b.build_alloca(ty, name).map_err(llvm)
    }

    pub(crate) fn block(&self, name: &str) -> BasicBlock<'c> {
        self.cx.append_basic_block(self.f, name)
    }

    /// Folds `fixed` sizes, and derived sizes computable from them, into
    /// the code as constants. Kernels still take every size, and a runner
    /// passes the same values (a bundle's binding checks it).
    pub(crate) fn specialize(&mut self, fixed: &BTreeMap<String, i64>) {
        let mut consts = fixed.clone();
        for s in &self.ir.sizes {
            if let Some(e) = &s.value {
                if let Ok(v) = e.eval(&consts) {
                    consts.insert(s.name.clone(), v);
                }
            }
        }
        self.consts = consts;
    }

    fn size(&self, name: &str) -> R<IntValue<'c>> {
        if let Some(v) = self.consts.get(name) {
            return Ok(self.i64c(*v));
        }
        let k = *self
            .size_index
            .get(name)
            .ok_or_else(|| BackendError::Llvm(format!("unknown size `{name}`")))?;
        let i64t = self.cx.i64_type();
        // SAFETY: `k` indexes the sizes array the caller passes, one per size.
        let p = unsafe {
            self.b
                .build_in_bounds_gep(i64t, self.sizes, &[self.i64c(k as i64)], "size")
        }
        .map_err(llvm)?;
        Ok(self
            .b
            .build_load(i64t, p, name)
            .map_err(llvm)?
            .into_int_value())
    }

    /// Truncated quotient and remainder of `a / b`, the divisor used (1 if
    /// `b` is 0), and whether flooring must adjust them (a non-zero
    /// remainder whose sign differs from the divisor's).
    fn trunc_div(
        &self,
        a: IntValue<'c>,
        b: IntValue<'c>,
    ) -> R<(IntValue<'c>, IntValue<'c>, IntValue<'c>, IntValue<'c>)> {
        let b = self.nonzero(b)?;
        let q = self.b.build_int_signed_div(a, b, "q").map_err(llvm)?;
        let r = self.b.build_int_signed_rem(a, b, "r").map_err(llvm)?;
        let zero = self.i64c(0);
        let r_nz = self
            .b
            .build_int_compare(IntPredicate::NE, r, zero, "rnz")
            .map_err(llvm)?;
        let rn = self
            .b
            .build_int_compare(IntPredicate::SLT, r, zero, "rn")
            .map_err(llvm)?;
        let bn = self
            .b
            .build_int_compare(IntPredicate::SLT, b, zero, "bn")
            .map_err(llvm)?;
        let diff = self.b.build_xor(rn, bn, "diff").map_err(llvm)?;
        let adj = self.b.build_and(r_nz, diff, "adj").map_err(llvm)?;
        Ok((q, r, b, adj))
    }

    fn floor_div(&self, a: IntValue<'c>, b: IntValue<'c>) -> R<IntValue<'c>> {
        let (q, _, _, adj) = self.trunc_div(a, b)?;
        let q1 = self.b.build_int_sub(q, self.i64c(1), "q1").map_err(llvm)?;
        Ok(self
            .b
            .build_select(adj, q1, q, "fdiv")
            .map_err(llvm)?
            .into_int_value())
    }

    fn floor_mod(&self, a: IntValue<'c>, b: IntValue<'c>) -> R<IntValue<'c>> {
        let (_, r, b, adj) = self.trunc_div(a, b)?;
        let rb = self.b.build_int_add(r, b, "rb").map_err(llvm)?;
        Ok(self
            .b
            .build_select(adj, rb, r, "fmod")
            .map_err(llvm)?
            .into_int_value())
    }

    /// `b`, or 1 with the error flag set when `b` is 0 (no trap).
    fn nonzero(&self, b: IntValue<'c>) -> R<IntValue<'c>> {
        let zero = self
            .b
            .build_int_compare(IntPredicate::EQ, b, self.i64c(0), "z")
            .map_err(llvm)?;
        let old = self
            .b
            .build_load(self.cx.i64_type(), self.err, "e")
            .map_err(llvm)?
            .into_int_value();
        let flag = self
            .b
            .build_int_z_extend(zero, self.cx.i64_type(), "zf")
            .map_err(llvm)?;
        let new = self.b.build_or(old, flag, "e2").map_err(llvm)?;
        self.b.build_store(self.err, new).map_err(llvm)?;
        Ok(self
            .b
            .build_select(zero, self.i64c(1), b, "nz")
            .map_err(llvm)?
            .into_int_value())
    }

    pub(crate) fn dim(&self, d: &DimExpr) -> R<IntValue<'c>> {
        Ok(match d {
            DimExpr::Const(v) => self.i64c(*v),
            DimExpr::Sym(s) => self.size(s)?,
            DimExpr::Bin(op, a, b) => {
                let (a, b) = (self.dim(a)?, self.dim(b)?);
                let bl = &self.b;
                match op {
                    DimOp::Add => bl.build_int_add(a, b, "d").map_err(llvm)?,
                    DimOp::Sub => bl.build_int_sub(a, b, "d").map_err(llvm)?,
                    DimOp::Mul => bl.build_int_mul(a, b, "d").map_err(llvm)?,
                    DimOp::Div => bl
                        .build_int_signed_div(a, self.nonzero(b)?, "d")
                        .map_err(llvm)?,
                    DimOp::FloorDiv => self.floor_div(a, b)?,
                    DimOp::Mod => self.floor_mod(a, b)?,
                    DimOp::Max | DimOp::Min => {
                        let pred = if *op == DimOp::Max {
                            IntPredicate::SGT
                        } else {
                            IntPredicate::SLT
                        };
                        let c = bl.build_int_compare(pred, a, b, "c").map_err(llvm)?;
                        bl.build_select(c, a, b, "d")
                            .map_err(llvm)?
                            .into_int_value()
                    }
                }
            }
        })
    }

    pub(crate) fn to_f(&self, v: V<'c>) -> R<FloatValue<'c>> {
        let f32t = self.cx.f32_type();
        Ok(match v {
            V::F(f) => f,
            V::I(i) => self
                .b
                .build_signed_int_to_float(i, f32t, "f")
                .map_err(llvm)?,
            V::B(b) => self
                .b
                .build_unsigned_int_to_float(b, f32t, "f")
                .map_err(llvm)?,
        })
    }

    pub(crate) fn to_i(&self, v: V<'c>) -> R<IntValue<'c>> {
        let i64t = self.cx.i64_type();
        Ok(match v {
            V::I(i) => i,
            V::F(f) => self
                .b
                .build_float_to_signed_int(f, i64t, "i")
                .map_err(llvm)?,
            V::B(b) => self.b.build_int_z_extend(b, i64t, "i").map_err(llvm)?,
        })
    }

    pub(crate) fn to_b(&self, v: V<'c>) -> R<IntValue<'c>> {
        Ok(match v {
            V::B(b) => b,
            V::I(i) => self
                .b
                .build_int_compare(IntPredicate::NE, i, self.i64c(0), "b")
                .map_err(llvm)?,
            V::F(f) => self
                .b
                .build_float_compare(FloatPredicate::ONE, f, self.f32c(0.0), "b")
                .map_err(llvm)?,
        })
    }

    pub(crate) fn intrinsic(&self, name: &str, args: &[FloatValue<'c>]) -> R<FloatValue<'c>> {
        if self.gpu {
            // NVPTX has no instructions for these: libdevice does.
            let nv = match name {
                "llvm.exp" => Some("__nv_expf"),
                "llvm.log" => Some("__nv_logf"),
                "llvm.sin" => Some("__nv_sinf"),
                "llvm.cos" => Some("__nv_cosf"),
                "llvm.pow" => Some("__nv_powf"),
                _ => None,
            };
            if let Some(nv) = nv {
                return self.libcall(nv, args);
            }
        }
        let i = Intrinsic::find(name)
            .ok_or_else(|| BackendError::Llvm(format!("no intrinsic {name}")))?;
        let f = i
            .get_declaration(&self.md, &[self.cx.f32_type().into()])
            .ok_or_else(|| BackendError::Llvm(format!("no declaration for {name}")))?;
        let a: Vec<BasicMetadataValueEnum> = args.iter().map(|x| (*x).into()).collect();
        let call = self.b.build_call(f, &a, "call").map_err(llvm)?;
        call.try_as_basic_value()
            .basic()
            .map(|v| v.into_float_value())
            .ok_or_else(|| BackendError::Llvm(format!("{name} returned nothing")))
    }

    fn libm(&self, name: &str, x: FloatValue<'c>) -> R<FloatValue<'c>> {
        let name = match (self.gpu, name) {
            (true, "tanhf") => "__nv_tanhf",
            (true, "erff") => "__nv_erff",
            (_, n) => n,
        };
        self.libcall(name, &[x])
    }

    /// A call of an external `float name(float, ...)`.
    fn libcall(&self, name: &str, args: &[FloatValue<'c>]) -> R<FloatValue<'c>> {
        let f32t = self.cx.f32_type();
        let params: Vec<inkwell::types::BasicMetadataTypeEnum> =
            args.iter().map(|_| f32t.into()).collect();
        let f = self.md.get_function(name).unwrap_or_else(|| {
            self.md
                .add_function(name, f32t.fn_type(&params, false), None)
        });
        let a: Vec<BasicMetadataValueEnum> = args.iter().map(|x| (*x).into()).collect();
        let call = self.b.build_call(f, &a, "call").map_err(llvm)?;
        call.try_as_basic_value()
            .basic()
            .map(|v| v.into_float_value())
            .ok_or_else(|| BackendError::Llvm(format!("{name} returned nothing")))
    }

    fn zero_of(&self, ty: Ty) -> V<'c> {
        match ty {
            Ty::Int => V::I(self.i64c(0)),
            Ty::Real => V::F(self.f32c(0.0)),
            Ty::Bool => V::B(self.cx.bool_type().const_zero()),
        }
    }

    fn llvm_ty(&self, ty: Ty) -> BasicTypeEnum<'c> {
        match ty {
            Ty::Int => self.cx.i64_type().into(),
            Ty::Real => self.cx.f32_type().into(),
            Ty::Bool => self.cx.bool_type().into(),
        }
    }

    /// Loads an f32 from a stack slot.
    pub(crate) fn load_f(&self, p: PointerValue<'c>, name: &str) -> R<FloatValue<'c>> {
        Ok(self
            .b
            .build_load(self.cx.f32_type(), p, name)
            .map_err(llvm)?
            .into_float_value())
    }

    /// Loads an i64 from a stack slot.
    pub(crate) fn load_i(&self, p: PointerValue<'c>, name: &str) -> R<IntValue<'c>> {
        Ok(self
            .b
            .build_load(self.cx.i64_type(), p, name)
            .map_err(llvm)?
            .into_int_value())
    }

    fn store_v(&self, p: PointerValue<'c>, v: V<'c>) -> R<()> {
        match v {
            V::I(x) | V::B(x) => self.b.build_store(p, x).map_err(llvm)?,
            V::F(x) => self.b.build_store(p, x).map_err(llvm)?,
        };
        Ok(())
    }

    fn load_v(&self, p: PointerValue<'c>, ty: Ty) -> R<V<'c>> {
        let v = self.b.build_load(self.llvm_ty(ty), p, "v").map_err(llvm)?;
        Ok(match ty {
            Ty::Int => V::I(v.into_int_value()),
            Ty::Real => V::F(v.into_float_value()),
            Ty::Bool => V::B(v.into_int_value()),
        })
    }

    /// `cond ? then() : els()`, evaluating only the branch taken.
    pub(crate) fn branch(
        &mut self,
        cond: IntValue<'c>,
        ty: Ty,
        then: &mut dyn FnMut(&mut Self) -> R<V<'c>>,
        els: &mut dyn FnMut(&mut Self) -> R<V<'c>>,
    ) -> R<V<'c>> {
        let slot = self.alloca(self.llvm_ty(ty), "sel")?;
        let (bt, be, bm) = (self.block("then"), self.block("else"), self.block("merge"));
        self.b
            .build_conditional_branch(cond, bt, be)
            .map_err(llvm)?;
        self.b.position_at_end(bt);
        let v = then(self)?;
        let v = self.coerce(v, ty)?;
        self.store_v(slot, v)?;
        self.b.build_unconditional_branch(bm).map_err(llvm)?;
        self.b.position_at_end(be);
        let v = els(self)?;
        let v = self.coerce(v, ty)?;
        self.store_v(slot, v)?;
        self.b.build_unconditional_branch(bm).map_err(llvm)?;
        self.b.position_at_end(bm);
        self.load_v(slot, ty)
    }

    fn coerce(&self, v: V<'c>, ty: Ty) -> R<V<'c>> {
        Ok(match ty {
            Ty::Int => V::I(self.to_i(v)?),
            Ty::Real => V::F(self.to_f(v)?),
            Ty::Bool => V::B(self.to_b(v)?),
        })
    }

    /// Runs `f` only where `guard` holds (always, without a guard).
    pub(crate) fn when_kept(
        &mut self,
        guard: Option<ExprId>,
        f: &mut dyn FnMut(&mut Self) -> R<V<'c>>,
    ) -> R<()> {
        match guard {
            Some(p) => {
                let c = self.expr(p)?;
                let c = self.to_b(c)?;
                self.branch(c, Ty::Bool, f, &mut |g| {
                    Ok(V::B(g.cx.bool_type().const_zero()))
                })?;
            }
            None => {
                f(self)?;
            }
        }
        Ok(())
    }

    /// Nested loops over `slots` (each from 0 to its extent), running `body`.
    pub(crate) fn loops(
        &mut self,
        slots: &[Slot],
        body: &mut dyn FnMut(&mut Self) -> R<()>,
    ) -> R<()> {
        let Some((&s, rest)) = slots.split_first() else {
            return body(self);
        };
        let p = self.slots[s as usize];
        let (first, ext) = match self.range {
            Some((r, lo, hi)) if r == s => (lo, hi),
            _ => (self.i64c(0), self.extents[s as usize]),
        };
        self.b.build_store(p, first).map_err(llvm)?;
        let (head, bb, done) = (self.block("head"), self.block("body"), self.block("done"));
        self.b.build_unconditional_branch(head).map_err(llvm)?;
        self.b.position_at_end(head);
        let i = self
            .b
            .build_load(self.cx.i64_type(), p, "i")
            .map_err(llvm)?
            .into_int_value();
        let c = self
            .b
            .build_int_compare(IntPredicate::SLT, i, ext, "c")
            .map_err(llvm)?;
        self.b.build_conditional_branch(c, bb, done).map_err(llvm)?;
        self.b.position_at_end(bb);
        self.loops(rest, body)?;
        let i = self
            .b
            .build_load(self.cx.i64_type(), p, "i")
            .map_err(llvm)?
            .into_int_value();
        let n = self.b.build_int_add(i, self.i64c(1), "n").map_err(llvm)?;
        self.b.build_store(p, n).map_err(llvm)?;
        self.b.build_unconditional_branch(head).map_err(llvm)?;
        self.b.position_at_end(done);
        Ok(())
    }

    pub(crate) fn buffer(&self, v: ir::ValueId) -> R<PointerValue<'c>> {
        let ptr = self.cx.ptr_type(AddressSpace::default());
        // SAFETY: `v` indexes the buffer array the caller passes, one per value.
        let p = unsafe {
            self.b
                .build_in_bounds_gep(ptr, self.bufs, &[self.i64c(v.0 as i64)], "bp")
        }
        .map_err(llvm)?;
        Ok(self
            .b
            .build_load(ptr, p, "buf")
            .map_err(llvm)?
            .into_pointer_value())
    }

    /// Row-major offset of `subs` in a value of `shape`.
    pub(crate) fn offset(&self, shape: &[DimExpr], subs: &[IntValue<'c>]) -> R<IntValue<'c>> {
        let mut off = self.i64c(0);
        for (d, s) in shape.iter().zip(subs) {
            let e = self.dim(d)?;
            off = self.b.build_int_mul(off, e, "o").map_err(llvm)?;
            off = self.b.build_int_add(off, *s, "o").map_err(llvm)?;
        }
        Ok(off)
    }

    pub(crate) fn expr(&mut self, e: ExprId) -> R<V<'c>> {
        let n = self.ir.expr(e).clone();
        let b = &self.b;
        Ok(match &n.node {
            Node::Const(c) => match n.ty {
                Ty::Int => V::I(self.i64c(*c as i64)),
                Ty::Real => V::F(self.f32c(*c)),
                Ty::Bool => V::B(self.cx.bool_type().const_int(u64::from(*c != 0.0), false)),
            },
            Node::Size(d) => V::I(self.dim(d)?),
            Node::Index(s) => V::I(
                b.build_load(self.cx.i64_type(), self.slots[*s as usize], "ix")
                    .map_err(llvm)?
                    .into_int_value(),
            ),
            Node::Read(v, _) if self.inline.contains_key(v) => match self.inline[v] {
                Inline::Body(body) => self.expr(body)?,
                Inline::One => V::F(self.f32c(1.0)),
            },
            Node::Read(v, subs) => {
                let mut idx = Vec::new();
                for s in subs {
                    let x = self.expr(*s)?;
                    idx.push(self.to_i(x)?);
                }
                if let Some(st) = self.state.clone().filter(|st| st.value == *v) {
                    let p = self.state_ptr(&st, &idx)?;
                    return Ok(V::F(self.load_f(p, "sv")?));
                }
                let recurrent = matches!(self.ir.value(*v).def, ValueDef::Op(o) if self.ir.op(o).recurrence.is_some());
                let shape = self.ir.value(*v).shape.clone();
                let buf = self.buffer(*v)?;
                let f32t = self.cx.f32_type();
                if recurrent {
                    // The state before the first step is 0.
                    let mut neg = self.cx.bool_type().const_zero();
                    let mut clamped = Vec::new();
                    for i in &idx {
                        let c = self
                            .b
                            .build_int_compare(IntPredicate::SLT, *i, self.i64c(0), "neg")
                            .map_err(llvm)?;
                        neg = self.b.build_or(neg, c, "neg").map_err(llvm)?;
                        clamped.push(
                            self.b
                                .build_select(c, self.i64c(0), *i, "cl")
                                .map_err(llvm)?
                                .into_int_value(),
                        );
                    }
                    let off = self.offset(&shape, &clamped)?;
                    // SAFETY: clamped subscripts of a checked read are in range.
                    let p = unsafe { self.b.build_in_bounds_gep(f32t, buf, &[off], "p") }
                        .map_err(llvm)?;
                    let x = self
                        .b
                        .build_load(f32t, p, "x")
                        .map_err(llvm)?
                        .into_float_value();
                    V::F(
                        self.b
                            .build_select(neg, self.f32c(0.0), x, "r")
                            .map_err(llvm)?
                            .into_float_value(),
                    )
                } else {
                    let off = self.offset(&shape, &idx)?;
                    // SAFETY: the checker proved every subscript in range.
                    let p = unsafe { self.b.build_in_bounds_gep(f32t, buf, &[off], "p") }
                        .map_err(llvm)?;
                    V::F(
                        self.b
                            .build_load(f32t, p, "x")
                            .map_err(llvm)?
                            .into_float_value(),
                    )
                }
            }
            Node::Unary(UnOp::Neg, a) => match self.expr(*a)? {
                V::F(x) => V::F(self.b.build_float_neg(x, "n").map_err(llvm)?),
                v => V::I(self.b.build_int_neg(self.to_i(v)?, "n").map_err(llvm)?),
            },
            Node::Unary(UnOp::Not, a) => {
                let x = self.expr(*a)?;
                let x = self.to_b(x)?;
                V::B(self.b.build_not(x, "not").map_err(llvm)?)
            }
            Node::Binary(op, a, c) => {
                let (ta, tc) = (self.ir.expr(*a).ty, self.ir.expr(*c).ty);
                let x = self.expr(*a)?;
                let y = self.expr(*c)?;
                self.binary(*op, n.ty, ta, tc, x, y)?
            }
            Node::Call(Builtin::Select, args) => {
                let c = self.expr(args[0])?;
                let c = self.to_b(c)?;
                let (t, f) = (args[1], args[2]);
                self.branch(c, n.ty, &mut |g| g.expr(t), &mut |g| g.expr(f))?
            }
            Node::Call(f, args) => {
                let mut vals = Vec::new();
                for a in args {
                    vals.push(self.expr(*a)?);
                }
                self.call(*f, n.ty, &vals)?
            }
            Node::Guard(p, body) => {
                let c = self.expr(*p)?;
                let c = self.to_b(c)?;
                let body = *body;
                let ty = n.ty;
                self.branch(c, ty, &mut |g| g.expr(body), &mut |g| Ok(g.zero_of(ty)))?
            }
            Node::Reduce {
                op,
                slots,
                guard,
                body,
            } => self.reduce(*op, n.ty, slots, *guard, *body)?,
            Node::Normalize {
                op,
                slot,
                guard,
                body,
                eps,
            } => self.normalize(*op, *slot, *guard, *body, *eps)?,
        })
    }

    fn binary(&mut self, op: BinOp, ty: Ty, ta: Ty, tc: Ty, x: V<'c>, y: V<'c>) -> R<V<'c>> {
        use BinOp::*;
        let b = &self.b;
        Ok(match op {
            And => V::B(
                b.build_and(self.to_b(x)?, self.to_b(y)?, "and")
                    .map_err(llvm)?,
            ),
            Or => V::B(
                b.build_or(self.to_b(x)?, self.to_b(y)?, "or")
                    .map_err(llvm)?,
            ),
            Eq | Ne | Lt | Le | Gt | Ge => {
                if ta == Ty::Int && tc == Ty::Int || ta == Ty::Bool && tc == Ty::Bool {
                    let pred = match op {
                        Eq => IntPredicate::EQ,
                        Ne => IntPredicate::NE,
                        Lt => IntPredicate::SLT,
                        Le => IntPredicate::SLE,
                        Gt => IntPredicate::SGT,
                        _ => IntPredicate::SGE,
                    };
                    let (x, y) = if ta == Ty::Bool {
                        (self.to_b(x)?, self.to_b(y)?)
                    } else {
                        (self.to_i(x)?, self.to_i(y)?)
                    };
                    V::B(b.build_int_compare(pred, x, y, "cmp").map_err(llvm)?)
                } else {
                    let pred = match op {
                        Eq => FloatPredicate::OEQ,
                        Ne => FloatPredicate::UNE,
                        Lt => FloatPredicate::OLT,
                        Le => FloatPredicate::OLE,
                        Gt => FloatPredicate::OGT,
                        _ => FloatPredicate::OGE,
                    };
                    V::B(
                        b.build_float_compare(pred, self.to_f(x)?, self.to_f(y)?, "cmp")
                            .map_err(llvm)?,
                    )
                }
            }
            _ if ty == Ty::Int => {
                let (x, y) = (self.to_i(x)?, self.to_i(y)?);
                V::I(match op {
                    Add => b.build_int_add(x, y, "a").map_err(llvm)?,
                    Sub => b.build_int_sub(x, y, "s").map_err(llvm)?,
                    Mul => b.build_int_mul(x, y, "m").map_err(llvm)?,
                    FloorDiv => self.floor_div(x, y)?,
                    Mod => self.floor_mod(x, y)?,
                    _ => {
                        return Err(BackendError::Llvm(format!(
                            "integer `{}` has no integer result",
                            op.symbol()
                        )))
                    }
                })
            }
            _ => {
                let (x, y) = (self.to_f(x)?, self.to_f(y)?);
                V::F(match op {
                    Add => b.build_float_add(x, y, "a").map_err(llvm)?,
                    Sub => b.build_float_sub(x, y, "s").map_err(llvm)?,
                    Mul => b.build_float_mul(x, y, "m").map_err(llvm)?,
                    Div => b.build_float_div(x, y, "d").map_err(llvm)?,
                    FloorDiv => {
                        let q = b.build_float_div(x, y, "d").map_err(llvm)?;
                        self.intrinsic("llvm.floor", &[q])?
                    }
                    Mod => {
                        let q = b.build_float_div(x, y, "d").map_err(llvm)?;
                        let fl = self.intrinsic("llvm.floor", &[q])?;
                        let m = self.b.build_float_mul(y, fl, "m").map_err(llvm)?;
                        self.b.build_float_sub(x, m, "r").map_err(llvm)?
                    }
                    Pow => self.intrinsic("llvm.pow", &[x, y])?,
                    _ => unreachable!("comparisons handled above"),
                })
            }
        })
    }

    fn call(&mut self, f: Builtin, ty: Ty, vals: &[V<'c>]) -> R<V<'c>> {
        use Builtin::*;
        if ty == Ty::Int {
            // Integer min, max, abs, relu; floor and ceil of integers.
            let x = self.to_i(vals[0])?;
            let b = &self.b;
            let sel = |c: IntValue<'c>, a: IntValue<'c>, d: IntValue<'c>| -> R<V<'c>> {
                Ok(V::I(
                    b.build_select(c, a, d, "s").map_err(llvm)?.into_int_value(),
                ))
            };
            return match f {
                Min | Max => {
                    let y = self.to_i(vals[1])?;
                    let pred = if f == Max {
                        IntPredicate::SGT
                    } else {
                        IntPredicate::SLT
                    };
                    sel(b.build_int_compare(pred, x, y, "c").map_err(llvm)?, x, y)
                }
                Abs => {
                    let n = b.build_int_neg(x, "n").map_err(llvm)?;
                    sel(
                        b.build_int_compare(IntPredicate::SLT, x, self.i64c(0), "c")
                            .map_err(llvm)?,
                        n,
                        x,
                    )
                }
                Relu => sel(
                    b.build_int_compare(IntPredicate::SGT, x, self.i64c(0), "c")
                        .map_err(llvm)?,
                    x,
                    self.i64c(0),
                ),
                Floor | Ceil if matches!(vals[0], V::F(_)) => {
                    let r = self.intrinsic(
                        if f == Floor {
                            "llvm.floor"
                        } else {
                            "llvm.ceil"
                        },
                        &[self.to_f(vals[0])?],
                    )?;
                    Ok(V::I(self.to_i(V::F(r))?))
                }
                _ => Ok(V::I(x)),
            };
        }
        let x = self.to_f(vals[0])?;
        let one = self.f32c(1.0);
        Ok(V::F(match f {
            Exp => self.intrinsic("llvm.exp", &[x])?,
            Log => self.intrinsic("llvm.log", &[x])?,
            Sqrt => self.intrinsic("llvm.sqrt", &[x])?,
            Rsqrt => {
                let s = self.intrinsic("llvm.sqrt", &[x])?;
                self.b.build_float_div(one, s, "rs").map_err(llvm)?
            }
            Sin => self.intrinsic("llvm.sin", &[x])?,
            Cos => self.intrinsic("llvm.cos", &[x])?,
            Abs => self.intrinsic("llvm.fabs", &[x])?,
            Floor => self.intrinsic("llvm.floor", &[x])?,
            Ceil => self.intrinsic("llvm.ceil", &[x])?,
            Tanh => self.libm("tanhf", x)?,
            Erf => self.libm("erff", x)?,
            Relu => self.intrinsic("llvm.maxnum", &[x, self.f32c(0.0)])?,
            Min => self.intrinsic("llvm.minnum", &[x, self.to_f(vals[1])?])?,
            Max => self.intrinsic("llvm.maxnum", &[x, self.to_f(vals[1])?])?,
            Sigmoid | Silu => {
                let n = self.b.build_float_neg(x, "n").map_err(llvm)?;
                let e = self.intrinsic("llvm.exp", &[n])?;
                let d = self.b.build_float_add(one, e, "d").map_err(llvm)?;
                let s = self.b.build_float_div(one, d, "sig").map_err(llvm)?;
                if f == Silu {
                    self.b.build_float_mul(x, s, "silu").map_err(llvm)?
                } else {
                    s
                }
            }
            Gelu => {
                let a = self
                    .b
                    .build_float_mul(x, self.f32c(std::f64::consts::FRAC_1_SQRT_2), "a")
                    .map_err(llvm)?;
                let e = self.libm("erff", a)?;
                let t = self.b.build_float_add(one, e, "t").map_err(llvm)?;
                let h = self
                    .b
                    .build_float_mul(x, self.f32c(0.5), "h")
                    .map_err(llvm)?;
                self.b.build_float_mul(h, t, "gelu").map_err(llvm)?
            }
            Softplus => {
                let e = self.intrinsic("llvm.exp", &[x])?;
                let p = self.b.build_float_add(one, e, "p").map_err(llvm)?;
                let l = self.intrinsic("llvm.log", &[p])?;
                let big = self
                    .b
                    .build_float_compare(FloatPredicate::OGT, x, self.f32c(30.0), "big")
                    .map_err(llvm)?;
                self.b
                    .build_select(big, x, l, "sp")
                    .map_err(llvm)?
                    .into_float_value()
            }
            Select => unreachable!("select is lazy and handled in expr"),
        }))
    }

    fn reduce(
        &mut self,
        op: RedOp,
        ty: Ty,
        slots: &[Slot],
        guard: Option<ExprId>,
        body: ExprId,
    ) -> R<V<'c>> {
        let acc_ty = if ty == Ty::Int && op != RedOp::Mean {
            Ty::Int
        } else {
            Ty::Real
        };
        let acc = self.alloca(self.llvm_ty(acc_ty), "acc")?;
        let count = self.alloca(self.cx.i64_type().into(), "count")?;
        let init = match (op, acc_ty) {
            (RedOp::Prod, Ty::Int) => V::I(self.i64c(1)),
            (RedOp::Prod, _) => V::F(self.f32c(1.0)),
            (RedOp::Max, Ty::Int) => V::I(self.i64c(i64::MIN)),
            (RedOp::Min, Ty::Int) => V::I(self.i64c(i64::MAX)),
            (RedOp::Max, _) => V::F(self.f32c(f64::NEG_INFINITY)),
            (RedOp::Min, _) => V::F(self.f32c(f64::INFINITY)),
            _ => self.zero_of(acc_ty),
        };
        self.store_v(acc, init)?;
        self.b.build_store(count, self.i64c(0)).map_err(llvm)?;
        let saved: Vec<IntValue<'c>> = slots
            .iter()
            .map(|s| {
                self.b
                    .build_load(self.cx.i64_type(), self.slots[*s as usize], "sv")
                    .map(|v| v.into_int_value())
                    .map_err(llvm)
            })
            .collect::<R<_>>()?;
        let mut term = |g: &mut Self| -> R<()> {
            let mut add = |g: &mut Self| -> R<V<'c>> {
                let v = g.expr(body)?;
                let a = g.load_v(acc, acc_ty)?;
                let new = match acc_ty {
                    Ty::Int => {
                        let (a, v) = (g.to_i(a)?, g.to_i(v)?);
                        V::I(match op {
                            RedOp::Sum | RedOp::Mean => {
                                g.b.build_int_add(a, v, "s").map_err(llvm)?
                            }
                            RedOp::Prod => g.b.build_int_mul(a, v, "p").map_err(llvm)?,
                            RedOp::Max | RedOp::Min => {
                                let pred = if op == RedOp::Max {
                                    IntPredicate::SGT
                                } else {
                                    IntPredicate::SLT
                                };
                                let c = g.b.build_int_compare(pred, v, a, "c").map_err(llvm)?;
                                g.b.build_select(c, v, a, "m")
                                    .map_err(llvm)?
                                    .into_int_value()
                            }
                        })
                    }
                    _ => {
                        let (a, v) = (g.to_f(a)?, g.to_f(v)?);
                        V::F(match op {
                            RedOp::Sum | RedOp::Mean => {
                                let s = g.b.build_float_add(a, v, "s").map_err(llvm)?;
                                if g.reassoc {
                                    if let Some(i) = s.as_instruction() {
                                        i.set_fast_math_flags(
                                            inkwell::values::FastMathFlags::AllowReassoc,
                                        )
                                        .map_err(llvm)?;
                                    }
                                }
                                s
                            }
                            RedOp::Prod => g.b.build_float_mul(a, v, "p").map_err(llvm)?,
                            RedOp::Max => g.intrinsic("llvm.maxnum", &[a, v])?,
                            RedOp::Min => g.intrinsic("llvm.minnum", &[a, v])?,
                        })
                    }
                };
                g.store_v(acc, new)?;
                let c = g.load_i(count, "c")?;
                let c1 = g.b.build_int_add(c, g.i64c(1), "c1").map_err(llvm)?;
                g.b.build_store(count, c1).map_err(llvm)?;
                Ok(V::B(g.cx.bool_type().const_zero()))
            };
            g.when_kept(guard, &mut add)
        };
        self.loops(slots, &mut term)?;
        for (s, v) in slots.iter().zip(saved) {
            self.b
                .build_store(self.slots[*s as usize], v)
                .map_err(llvm)?;
        }
        let a = self.load_v(acc, acc_ty)?;
        let c = self
            .b
            .build_load(self.cx.i64_type(), count, "c")
            .map_err(llvm)?
            .into_int_value();
        let empty = self
            .b
            .build_int_compare(IntPredicate::EQ, c, self.i64c(0), "empty")
            .map_err(llvm)?;
        let out = match op {
            RedOp::Mean => {
                let cf = self
                    .b
                    .build_signed_int_to_float(c, self.cx.f32_type(), "cf")
                    .map_err(llvm)?;
                let m = self
                    .b
                    .build_float_div(self.to_f(a)?, cf, "mean")
                    .map_err(llvm)?;
                V::F(
                    self.b
                        .build_select(empty, self.f32c(0.0), m, "r")
                        .map_err(llvm)?
                        .into_float_value(),
                )
            }
            RedOp::Max | RedOp::Min => match a {
                V::F(x) => V::F(
                    self.b
                        .build_select(empty, self.f32c(0.0), x, "r")
                        .map_err(llvm)?
                        .into_float_value(),
                ),
                other => {
                    let x = self.to_i(other)?;
                    V::I(
                        self.b
                            .build_select(empty, self.i64c(0), x, "r")
                            .map_err(llvm)?
                            .into_int_value(),
                    )
                }
            },
            _ => a,
        };
        self.coerce(out, ty)
    }

    fn normalize(
        &mut self,
        op: NormOp,
        slot: Slot,
        guard: Option<ExprId>,
        body: ExprId,
        eps: f64,
    ) -> R<V<'c>> {
        let stats = self.normalize_stats(op, slot, guard, body)?;
        self.normalize_value(op, guard, body, eps, stats)
    }

    /// A normaliser's row statistics (max and sum of exponentials, sum of
    /// squares, or mean and squared deviations) with the kept count, over
    /// `slot`; the slot's own value is restored afterwards.
    pub(crate) fn normalize_stats(
        &mut self,
        op: NormOp,
        slot: Slot,
        guard: Option<ExprId>,
        body: ExprId,
    ) -> R<RowStats<'c>> {
        let i64t = self.cx.i64_type();
        let sp = self.slots[slot as usize];
        let own = self
            .b
            .build_load(i64t, sp, "own")
            .map_err(llvm)?
            .into_int_value();
        let a1 = self.alloca(self.cx.f32_type().into(), "a1")?;
        let a2 = self.alloca(self.cx.f32_type().into(), "a2")?;
        let count = self.alloca(i64t.into(), "n")?;
        let first = match op {
            NormOp::Softmax => f64::NEG_INFINITY,
            _ => 0.0,
        };
        self.b.build_store(a1, self.f32c(first)).map_err(llvm)?;
        self.b.build_store(a2, self.f32c(0.0)).map_err(llvm)?;
        self.b.build_store(count, self.i64c(0)).map_err(llvm)?;
        // One pass over the row: softmax max / rms sum of squares / mean.
        let pass = |g: &mut Self, second: bool| -> R<()> {
            let mut kept = |g: &mut Self| -> R<V<'c>> {
                let x = g.expr(body)?;
                let x = g.to_f(x)?;
                if !second {
                    let a = g.load_f(a1, "a")?;
                    let new = match op {
                        NormOp::Softmax => g.intrinsic("llvm.maxnum", &[a, x])?,
                        NormOp::RmsNorm => {
                            let sq = g.b.build_float_mul(x, x, "sq").map_err(llvm)?;
                            g.b.build_float_add(a, sq, "ss").map_err(llvm)?
                        }
                        NormOp::LayerNorm => g.b.build_float_add(a, x, "s").map_err(llvm)?,
                    };
                    g.b.build_store(a1, new).map_err(llvm)?;
                    let c = g.load_i(count, "c")?;
                    let c1 = g.b.build_int_add(c, g.i64c(1), "c1").map_err(llvm)?;
                    g.b.build_store(count, c1).map_err(llvm)?;
                } else {
                    // Second pass: softmax sum of exp(x - max); layer norm variance.
                    let m = g.load_f(a1, "m")?;
                    let a = g.load_f(a2, "a")?;
                    let term = match op {
                        NormOp::Softmax => {
                            let d = g.b.build_float_sub(x, m, "d").map_err(llvm)?;
                            g.intrinsic("llvm.exp", &[d])?
                        }
                        _ => {
                            let d = g.b.build_float_sub(x, m, "d").map_err(llvm)?;
                            g.b.build_float_mul(d, d, "dd").map_err(llvm)?
                        }
                    };
                    let new = g.b.build_float_add(a, term, "z").map_err(llvm)?;
                    g.b.build_store(a2, new).map_err(llvm)?;
                }
                Ok(V::B(g.cx.bool_type().const_zero()))
            };
            g.when_kept(guard, &mut kept)
        };
        self.loops(&[slot], &mut |g| pass(g, false))?;
        if op == NormOp::LayerNorm {
            // a1 becomes the mean.
            let s = self
                .b
                .build_load(self.cx.f32_type(), a1, "s")
                .map_err(llvm)?
                .into_float_value();
            let c = self
                .b
                .build_load(i64t, count, "c")
                .map_err(llvm)?
                .into_int_value();
            let cf = self
                .b
                .build_signed_int_to_float(c, self.cx.f32_type(), "cf")
                .map_err(llvm)?;
            let mean = self.b.build_float_div(s, cf, "mean").map_err(llvm)?;
            self.b.build_store(a1, mean).map_err(llvm)?;
        }
        if op != NormOp::RmsNorm {
            self.loops(&[slot], &mut |g| pass(g, true))?;
        }
        self.b.build_store(sp, own).map_err(llvm)?;
        Ok(RowStats { a1, a2, count })
    }

    /// The normalised value at the slot's current index, from the row statistics.
    pub(crate) fn normalize_value(
        &mut self,
        op: NormOp,
        guard: Option<ExprId>,
        body: ExprId,
        eps: f64,
        stats: RowStats<'c>,
    ) -> R<V<'c>> {
        let RowStats { a1, a2, count } = stats;
        let i64t = self.cx.i64_type();
        // The element itself.
        let c = self
            .b
            .build_load(i64t, count, "c")
            .map_err(llvm)?
            .into_int_value();
        let some = self
            .b
            .build_int_compare(IntPredicate::SGT, c, self.i64c(0), "some")
            .map_err(llvm)?;
        let keep_own = match guard {
            Some(p) => {
                let v = self.expr(p)?;
                self.to_b(v)?
            }
            None => self.cx.bool_type().const_int(1, false),
        };
        let go = self.b.build_and(some, keep_own, "go").map_err(llvm)?;
        self.branch(
            go,
            Ty::Real,
            &mut |g| {
                let x = g.expr(body)?;
                let x = g.to_f(x)?;
                let a1v = g.load_f(a1, "a1")?;
                let a2v = g.load_f(a2, "a2")?;
                let c = g.load_i(count, "c")?;
                let cf =
                    g.b.build_signed_int_to_float(c, g.cx.f32_type(), "cf")
                        .map_err(llvm)?;
                Ok(V::F(match op {
                    NormOp::Softmax => {
                        let d = g.b.build_float_sub(x, a1v, "d").map_err(llvm)?;
                        let e = g.intrinsic("llvm.exp", &[d])?;
                        g.b.build_float_div(e, a2v, "p").map_err(llvm)?
                    }
                    NormOp::RmsNorm => {
                        let ms = g.b.build_float_div(a1v, cf, "ms").map_err(llvm)?;
                        let v = g.b.build_float_add(ms, g.f32c(eps), "v").map_err(llvm)?;
                        let r = g.intrinsic("llvm.sqrt", &[v])?;
                        g.b.build_float_div(x, r, "rms").map_err(llvm)?
                    }
                    NormOp::LayerNorm => {
                        let var = g.b.build_float_div(a2v, cf, "var").map_err(llvm)?;
                        let v = g.b.build_float_add(var, g.f32c(eps), "v").map_err(llvm)?;
                        let r = g.intrinsic("llvm.sqrt", &[v])?;
                        let d = g.b.build_float_sub(x, a1v, "d").map_err(llvm)?;
                        g.b.build_float_div(d, r, "ln").map_err(llvm)?
                    }
                }))
            },
            &mut |g| Ok(V::F(g.f32c(0.0))),
        )
    }

    /// Sets up op `o`'s frame: its extents, and `[lo, hi)` of its parallel
    /// axis `par` (all of it when `None`). Returns the op.
    pub(crate) fn enter(
        &mut self,
        o: usize,
        par: Option<Slot>,
        lo: IntValue<'c>,
        hi: IntValue<'c>,
    ) -> R<ir::Op> {
        let op = self.ir.ops[o].clone();
        self.current = Some(op.result);
        self.extents = op
            .slots
            .iter()
            .map(|s| self.dim(&s.extent))
            .collect::<R<_>>()?;
        self.range = par.map(|p| (p, lo, hi));
        Ok(op)
    }

    /// Op `o` over `[lo, hi)` of its parallel axis (all of it if it has none).
    fn op(&mut self, o: usize, par: Option<Slot>, lo: IntValue<'c>, hi: IntValue<'c>) -> R<()> {
        let op = self.enter(o, par, lo, hi)?;
        let rank: Vec<Slot> = (0..op.rank as Slot).collect();
        let shape = self.ir.value(op.result).shape.clone();
        let (result, body) = (op.result, op.body);
        let r = match self.ir.expr(body).node.clone() {
            // A normaliser over one of the result's own axes: the row's
            // statistics once per row, then the row.
            Node::Normalize {
                op: nop,
                slot,
                guard,
                body: nb,
                eps,
            } if (slot as usize) < op.rank && op.recurrence.is_none() => {
                let outer: Vec<Slot> = rank.iter().copied().filter(|s| *s != slot).collect();
                self.loops(&outer, &mut |g| {
                    let stats = g.normalize_stats(nop, slot, guard, nb)?;
                    g.loops(&[slot], &mut |g| {
                        let v = g.normalize_value(nop, guard, nb, eps, stats)?;
                        g.store_value(result, &shape, v)
                    })
                })
            }
            _ => self.loops(&rank, &mut |g| g.store_result(result, &shape, body)),
        };
        self.range = None;
        r
    }

    /// Evaluates `body` at the current result indices and stores it.
    pub(crate) fn store_result(
        &mut self,
        result: ir::ValueId,
        shape: &[DimExpr],
        body: ExprId,
    ) -> R<()> {
        let v = self.expr(body)?;
        self.store_value(result, shape, v)
    }

    /// Stores `v` at the current result indices.
    pub(crate) fn store_value(
        &mut self,
        result: ir::ValueId,
        shape: &[DimExpr],
        v: V<'c>,
    ) -> R<()> {
        let f = self.to_f(v)?;
        let p = self.result_ptr(result, shape)?;
        self.b.build_store(p, f).map_err(llvm)?;
        Ok(())
    }

    /// The address of the result element at the current result indices.
    pub(crate) fn result_ptr(
        &mut self,
        result: ir::ValueId,
        shape: &[DimExpr],
    ) -> R<PointerValue<'c>> {
        let idx: Vec<IntValue<'c>> = (0..shape.len())
            .map(|s| {
                self.b
                    .build_load(self.cx.i64_type(), self.slots[s], "ix")
                    .map(|v| v.into_int_value())
                    .map_err(llvm)
            })
            .collect::<R<_>>()?;
        let off = self.offset(shape, &idx)?;
        let buf = self.buffer(result)?;
        // SAFETY: the result indices stay within the result's shape.
        unsafe {
            self.b
                .build_in_bounds_gep(self.cx.f32_type(), buf, &[off], "out")
        }
        .map_err(llvm)
    }
}

/// The axis an op's threads split: a result axis that is neither scanned
/// nor normalised over, preferably one whose extent involves the sequence
/// size (long).
pub fn parallel_axis(op: &ir::Op, m: &Module) -> Option<Slot> {
    let normalised = match &m.expr(op.body).node {
        Node::Normalize { slot, .. } => Some(*slot),
        _ => None,
    };
    let candidates: Vec<Slot> = (0..op.rank as Slot)
        .filter(|s| Some(*s as usize) != op.recurrence && Some(*s) != normalised)
        .collect();
    let mentions_l = |s: &Slot| m.mentions_sequence(&op.slots[*s as usize].extent);
    candidates
        .iter()
        .copied()
        .find(mentions_l)
        .or_else(|| candidates.first().copied())
}

/// A host kernel as compiled: its symbol, the op whose value it writes,
/// what it is, and the extent of the axis its threads split.
#[derive(Clone, Debug)]
pub struct KernelInfo {
    pub entry: String,
    /// The schedule it lowers (`mixc_compiler::schedule::Schedule::name`).
    pub schedule: &'static str,
    pub op: usize,
    pub kind: String,
    pub parallel: Option<DimExpr>,
    /// A library kernel the runtime provides (no symbol in the object).
    pub library: Option<Library>,
}

/// The host code of a module: the module compiled (it may have ops the
/// input did not: hoisted convolutions, appended after the input's
/// values), its kernels in launch order, and the ops a template absorbed
/// (their values are never written).
pub struct HostCode {
    pub module: Module,
    pub kernels: Vec<KernelInfo>,
    pub absorbed: std::collections::BTreeSet<usize>,
}

/// Emits every kernel of a verified module as `op<k>(bufs, sizes, err, lo,
/// hi)` for the host, optimised at `-O2`: templates where they match (with
/// `templates`), the generic loop nest elsewhere.
pub(crate) fn emit_host<'c>(
    cx: &'c Context,
    m: &Module,
    reloc: RelocMode,
    model: CodeModel,
    templates: bool,
    fixed: &BTreeMap<String, i64>,
) -> Result<(LModule<'c>, TargetMachine, HostCode), BackendError> {
    Target::initialize_native(&InitializationConfig::default()).map_err(BackendError::Llvm)?;
    let md = cx.create_module("mixer");
    let ptr = cx.ptr_type(AddressSpace::default());
    let i64t = cx.i64_type();
    let fn_ty = cx.void_type().fn_type(
        &[ptr.into(), ptr.into(), ptr.into(), i64t.into(), i64t.into()],
        false,
    );
    let placeholder = md.add_function("placeholder", fn_ty, None);
    let consts = mixc_compiler::schedule::constants(m, fixed);
    let sched = schedule(m, Schedulee::Host, templates, &consts)
        .map_err(|e| BackendError::Llvm(format!("host plan (compiler bug): {e}")))?;
    let (hm, plan, absorbed) = (sched.module, sched.kernels, sched.absorbed);
    let m = &hm;
    ir::verify::verify(m)
        .map_err(|e| BackendError::Llvm(format!("host plan (compiler bug): {e}")))?;
    let mut g = Gen::new(cx, md, m, false, placeholder)?;
    g.specialize(fixed);
    let mut kernels = Vec::new();
    for k in &plan {
        let o = k.op();
        let library = match k {
            HostKernel::FftConv(_, spec) => Some((
                "fft_conv",
                "fft conv (runtime library)",
                Library::FftConv((**spec).clone()),
            )),
            HostKernel::Gemm(_, spec) => Some((
                "gemm",
                "matrix product (runtime library: matrixmultiply sgemm)",
                Library::Gemm((**spec).clone()),
            )),
            _ => None,
        };
        if let Some((entry, kind, library)) = library {
            kernels.push(KernelInfo {
                schedule: k.name(),
                entry: entry.into(),
                op: o,
                kind: kind.into(),
                parallel: None,
                library: Some(library),
            });
            continue;
        }
        let f = g.md.add_function(&format!("op{o}"), fn_ty, None);
        let nslots = match k {
            HostKernel::Attention(..) => 0,
            _ => m.ops[o].slots.len(),
        };
        let start = g.begin(f, nslots)?;
        let p = |k: u32| {
            f.get_nth_param(k)
                .ok_or_else(|| BackendError::Llvm("missing parameter".into()))
        };
        let (lo, hi) = (p(3)?.into_int_value(), p(4)?.into_int_value());
        let (kind, parallel) = match k {
            HostKernel::StateScan(ss, _) => {
                let par = ss.parallel_slot(m, &consts);
                g.state_scan(ss, par, lo, hi)?;
                (
                    ss.kind(),
                    par.map(|a| m.ops[o].slots[a as usize].extent.clone()),
                )
            }
            HostKernel::BlockedFft(..) | HostKernel::Matrix(..) => {
                return Err(BackendError::Llvm(format!(
                    "a GPU schedule ({}) reached the host (compiler bug)",
                    k.name()
                )))
            }
            HostKernel::Generic(_) | HostKernel::FftConv(..) | HostKernel::Gemm(..) => {
                let axis = parallel_axis(&m.ops[o], m);
                let kind = match contract::matches(m, o, axis).filter(|_| templates) {
                    Some(c) => {
                        g.contraction(o, &c, axis, lo, hi)?;
                        format!("{} (row-accumulating)", m.ops[o].kind.name())
                    }
                    None => {
                        g.op(o, axis, lo, hi)?;
                        format!("{:?}", m.ops[o].kind).to_lowercase()
                    }
                };
                (
                    kind,
                    axis.map(|a| m.ops[o].slots[a as usize].extent.clone()),
                )
            }
            HostKernel::Attention(t, tiling) => {
                let par = parallel_slot(m, t);
                g.current = Some(m.ops[o].result);
                g.attention(t, par, lo, hi)?;
                (
                    format!("fused attention (online softmax; {})", tiling.describe()),
                    par.map(|a| m.ops[t.p].slots[a as usize].extent.clone()),
                )
            }
        };
        g.finish(start)?;
        kernels.push(KernelInfo {
            schedule: k.name(),
            entry: format!("op{o}"),
            op: o,
            kind,
            parallel,
            library: None,
        });
    }
    // SAFETY: the placeholder has no body and no uses; deleting it is sound.
    unsafe { placeholder.delete() };
    let md = g.md;
    md.verify()
        .map_err(|e| BackendError::Llvm(format!("invalid LLVM IR (compiler bug): {e}")))?;
    let triple = TargetMachine::get_default_triple();
    md.set_triple(&triple);
    let target = Target::from_triple(&triple).map_err(llvm)?;
    let machine = target
        .create_target_machine(
            &triple,
            &TargetMachine::get_host_cpu_name().to_string(),
            &TargetMachine::get_host_cpu_features().to_string(),
            OptimizationLevel::Aggressive,
            reloc,
            model,
        )
        .ok_or_else(|| BackendError::Llvm("no host target machine".into()))?;
    md.set_data_layout(&machine.get_target_data().get_data_layout());
    md.run_passes("default<O2>", &machine, PassBuilderOptions::create())
        .map_err(llvm)?;
    Ok((
        md,
        machine,
        HostCode {
            module: hm,
            kernels,
            absorbed,
        },
    ))
}

/// A relocatable host object with every kernel, for a CPU bundle, with the
/// `fixed` sizes folded in as constants.
pub fn host_object(
    m: &Module,
    templates: bool,
    fixed: &BTreeMap<String, i64>,
) -> Result<(Vec<u8>, HostCode), BackendError> {
    let verified = ir::verify::verify(m).map_err(|e| BackendError::Llvm(e.to_string()))?;
    let cx = Context::create();
    let (md, machine, code) = emit_host(
        &cx,
        verified.module(),
        RelocMode::PIC,
        CodeModel::Default,
        templates,
        fixed,
    )?;
    let buf = machine
        .write_to_memory_buffer(&md, inkwell::targets::FileType::Object)
        .map_err(llvm)?;
    Ok((buf.as_slice().to_vec(), code))
}

/// Compiles a verified module for the host and runs it on `buffers` (one
/// f32 buffer per value, inputs and parameters filled, row-major), on all
/// the host's threads. `sizes` binds every size of the module
/// (`mixc_compiler::bind_sizes`).
pub fn run(
    m: &Module,
    sizes: &BTreeMap<String, i64>,
    buffers: &mut [Vec<f32>],
) -> Result<CpuRun, BackendError> {
    run_with(m, sizes, buffers, host_threads(), true)
}

pub fn run_with(
    m: &Module,
    sizes: &BTreeMap<String, i64>,
    buffers: &mut [Vec<f32>],
    threads: usize,
    templates: bool,
) -> Result<CpuRun, BackendError> {
    let verified = ir::verify::verify(m).map_err(|e| BackendError::Llvm(e.to_string()))?;
    let m = verified.module();
    if buffers.len() != m.values.len() {
        return Err(BackendError::Llvm(format!(
            "{} buffers for {} values",
            buffers.len(),
            m.values.len()
        )));
    }
    let t0 = Instant::now();
    let cx = Context::create();
    // Every size but the batch and sequence sizes is folded in, as a
    // bundle would.
    let fixed: BTreeMap<String, i64> = sizes
        .iter()
        .filter(|(k, _)| !m.run_time_sizes().contains(k))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    let (md, _machine, code) = emit_host(
        &cx,
        m,
        RelocMode::Default,
        CodeModel::JITDefault,
        templates,
        &fixed,
    )?;
    let engine = md
        .create_jit_execution_engine(OptimizationLevel::Aggressive)
        .map_err(llvm)?;
    let mut fns = Vec::new();
    for k in &code.kernels {
        if k.library.is_some() {
            fns.push(None);
            continue;
        }
        // SAFETY: every kernel was built above with exactly the `KernelFn` signature.
        let f = unsafe { engine.get_function::<KernelFn>(&k.entry) }.map_err(llvm)?;
        // SAFETY: the engine outlives every call below.
        fns.push(Some(unsafe { f.as_raw() }));
    }
    let compile_seconds = t0.elapsed().as_secs_f64();
    let size_vals: Vec<i64> = m
        .sizes
        .iter()
        .map(|s| {
            sizes
                .get(&s.name)
                .copied()
                .ok_or_else(|| BackendError::Llvm(format!("size `{}` is not bound", s.name)))
        })
        .collect::<Result<_, _>>()?;
    for (k, v) in m.values.iter().enumerate() {
        let n: i64 = v.shape.iter().map(|d| d.eval(sizes).unwrap_or(0)).product();
        if buffers[k].len() != n.max(0) as usize {
            return Err(BackendError::Llvm(format!(
                "buffer of `{}` has {} elements, not {n}",
                v.name,
                buffers[k].len()
            )));
        }
    }
    // Values the host plan added (hoisted convolutions) get buffers here;
    // those of ops that get no kernel (a linear attention's scan state, kept
    // on chip; the dead original) none.
    let mut extra: Vec<Vec<f32>> = code.module.values[m.values.len()..]
        .iter()
        .map(|v| {
            if matches!(v.def, ValueDef::Op(o) if code.absorbed.contains(&(o.0 as usize))) {
                return Vec::new();
            }
            let n: i64 = v.shape.iter().map(|d| d.eval(sizes).unwrap_or(0)).product();
            vec![0.0; n.max(0) as usize]
        })
        .collect();
    let ptrs: Vec<*mut f32> = buffers
        .iter_mut()
        .chain(extra.iter_mut())
        .map(|b| b.as_mut_ptr())
        .collect();
    let t1 = Instant::now();
    let mut err: i64 = 0;
    for (k, f) in code.kernels.iter().zip(&fns) {
        let extent = match &k.parallel {
            Some(d) => Some(d.eval(sizes).map_err(BackendError::Runtime)?),
            None => None,
        };
        match (f, &k.library) {
            // SAFETY: buffers and sizes match the module (checked above).
            (Some(f), _) => {
                err |= unsafe { launch(*f, extent, threads, ptrs.as_ptr(), size_vals.as_ptr()) }
            }
            // SAFETY: the spec addresses the module's buffers in range.
            (None, Some(Library::FftConv(spec))) => {
                unsafe { mixc_runtime::fft::run(spec, sizes, ptrs.as_ptr(), threads) }
                    .map_err(BackendError::Runtime)?
            }
            // SAFETY: as above; a result never overlaps its operands.
            (None, Some(Library::Gemm(spec))) => {
                unsafe { mixc_runtime::gemm::run(spec, sizes, ptrs.as_ptr()) }
                    .map_err(BackendError::Runtime)?
            }
            (None, None) => {
                return Err(BackendError::Llvm(format!(
                    "kernel `{}` has no code",
                    k.entry
                )))
            }
        }
    }
    let run_seconds = t1.elapsed().as_secs_f64();
    if err != 0 {
        return Err(BackendError::Runtime("integer division by zero".into()));
    }
    Ok(CpuRun {
        compile_seconds,
        run_seconds,
    })
}
