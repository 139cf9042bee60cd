//! Kernel IR to MLIR, and MLIR to PTX (GPU) or to machine code (host),
//! through melior.
//!
//! The emitter prints each [`Kernel`] in MLIR's textual form, using the
//! `gpu`, `scf`, `arith`, `math` and `memref` dialects; melior parses and
//! verifies it, and runs the lowering pipelines:
//! - **GPU**: `gpu.func` kernels in one `gpu.module`, lowered through
//!   NVVM (`convert-gpu-to-nvvm`, libdevice for the math functions) to PTX
//!   by `gpu-module-to-binary{format=isa}`; the PTX is read from the
//!   resulting `gpu.binary` op.
//! - **Host**: the same kernel body as a `func.func` (`<name>_body`) whose
//!   block and thread ids are loops (blocks `[lo, hi)` of the grid, every
//!   thread of each), its buffers `noalias`, lowered to the LLVM dialect;
//!   `crate::host` translates it to LLVM IR, wraps it in the runtime's CPU
//!   ABI and compiles it. The host runs block ranges on threads. A kernel
//!   with a barrier has no host form.
//!
//! Every value buffer is a `memref<?xf32>` (or `?xbf16`, `?xf16` for
//! narrower storage, widened by `arith.extf` on load and rounded by
//! `arith.truncf` on store); `sizes` and `err` are `memref<?xi64>`. Without the bare-pointer convention a memref argument
//! is five words at the machine level: allocated pointer, aligned pointer,
//! offset, size, stride. The GPU runner passes them so (manifest
//! `args: "memref"`).

use crate::kir::{Bin, Ex, Kernel, Mem, Pred, Space, Special, Stmt, Un};
use crate::BackendError;
use melior::ir::attribute::AttributeLike;
use melior::ir::block::BlockLike;
use melior::ir::operation::OperationLike;
use melior::ir::Module;
use melior::pass::PassManager;
use melior::utility::{
    parse_pass_pipeline, register_all_dialects, register_all_llvm_translations, register_all_passes,
};
use melior::{dialect::DialectRegistry, Context};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

type R<T> = Result<T, BackendError>;

fn mlir_err(s: impl Into<String>) -> BackendError {
    BackendError::Mlir(s.into())
}

/// The suffix of a kernel's function in the host form; the kernel's own
/// name is its wrapper with the runtime's ABI (`crate::host`).
pub const HOST_BODY: &str = "_body";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Gpu,
    Host,
}

/// Prints kernels as one MLIR module for `target`.
pub fn emit(kernels: &[Kernel], target: Target) -> R<String> {
    let mut out = String::new();
    match target {
        Target::Gpu => {
            out.push_str("module attributes {gpu.container_module} {\n  gpu.module @mixc {\n");
            for k in kernels {
                Emit::new(k, target, 2).function(&mut out)?;
            }
            out.push_str("  }\n}\n");
        }
        Target::Host => {
            out.push_str("module {\n");
            for k in kernels {
                Emit::new(k, target, 1).function(&mut out)?;
            }
            out.push_str("}\n");
        }
    }
    Ok(out)
}

struct Emit<'k> {
    k: &'k Kernel,
    target: Target,
    out: String,
    n: usize,
    depth: usize,
    vars: HashMap<u32, String>,
    specials: HashMap<Special, String>,
    /// The sizes, loaded at entry.
    sizes: Vec<String>,
}

impl<'k> Emit<'k> {
    fn new(k: &'k Kernel, target: Target, depth: usize) -> Self {
        Emit {
            k,
            target,
            out: String::new(),
            n: 0,
            depth,
            vars: HashMap::new(),
            specials: HashMap::new(),
            sizes: Vec::new(),
        }
    }

    fn line(&mut self, s: &str) {
        for _ in 0..self.depth {
            self.out.push_str("  ");
        }
        self.out.push_str(s);
        self.out.push('\n');
    }

    fn fresh(&mut self) -> String {
        self.n += 1;
        format!("%t{}", self.n)
    }

    /// `%t = op` and the new name.
    fn op(&mut self, rhs: String) -> String {
        let t = self.fresh();
        self.line(&format!("{t} = {rhs}"));
        t
    }

    fn local_type(&self, l: u32) -> String {
        let l = &self.k.locals[l as usize];
        match l.space {
            Space::Shared => format!(
                "memref<{}x{}, #gpu.address_space<workgroup>>",
                l.len,
                l.narrow.map_or(l.ty.mlir(), |d| d.name())
            ),
            Space::Register => format!("memref<{}x{}>", l.len, l.ty.mlir()),
        }
    }

    fn function(mut self, out: &mut String) -> R<()> {
        let k = self.k;
        let mut args: Vec<String> = (0..k.buffers)
            .map(|v| format!("%v{v}: {}", self.value_type(v as u32)))
            .collect();
        args.push("%sizes: memref<?xi64>".into());
        args.push("%err: memref<?xi64>".into());
        let shared: Vec<String> = k
            .locals
            .iter()
            .enumerate()
            .filter(|(_, l)| l.space == Space::Shared)
            // 128-byte aligned: `wgmma` descriptors address 16-byte units
            // (and swizzled layouts repeat every 128 bytes or less).
            .map(|(i, _)| {
                format!(
                    "%l{i}: {} {{llvm.align = 128 : i64}}",
                    self.local_type(i as u32)
                )
            })
            .collect();
        match self.target {
            Target::Gpu => {
                let wg = if shared.is_empty() {
                    String::new()
                } else {
                    format!(" workgroup({})", shared.join(", "))
                };
                self.line(&format!(
                    "gpu.func @{}({}){wg} kernel attributes {{known_block_size = array<i32: {}, 1, 1>, nvvm.minctasm = {} : i32}} {{",
                    k.name,
                    args.join(", "),
                    k.launch.block,
                    k.min_blocks
                ));
                self.depth += 1;
                for (s, dim) in [
                    (Special::BlockId, "gpu.block_id x"),
                    (Special::ThreadId, "gpu.thread_id x"),
                    (Special::BlockDim, "gpu.block_dim x"),
                ] {
                    let i = self.op(dim.into());
                    let v = self.op(format!("arith.index_cast {i} : index to i64"));
                    self.specials.insert(s, v);
                }
                self.allocas();
                self.preload_sizes();
                self.stmts(&k.body)?;
                self.line("gpu.return");
                self.depth -= 1;
                self.line("}");
            }
            Target::Host => {
                if let Some(d) = k.storage.iter().find(|d| **d != crate::kir::Dtype::F32) {
                    return Err(mlir_err(format!(
                        "kernel {} stores {d}: the host form takes f32 buffers",
                        k.name
                    )));
                }
                if !shared.is_empty() || k.has_barrier() || k.has_mma() || k.has_shuffle() {
                    return Err(mlir_err(format!(
                        "kernel {} shares memory between threads: it has no host form",
                        k.name
                    )));
                }
                // Buffers never overlap (one per value): LLVM may keep
                // values in registers and vectorise across stores.
                for a in args.iter_mut() {
                    a.push_str(" {llvm.noalias}");
                }
                args.push("%lo: i64".into());
                args.push("%hi: i64".into());
                self.line(&format!(
                    "func.func @{}{HOST_BODY}({}) {{",
                    k.name,
                    args.join(", ")
                ));
                self.depth += 1;
                let one = self.op("arith.constant 1 : i64".into());
                let zero = self.op("arith.constant 0 : i64".into());
                let bdim = self.op(format!("arith.constant {} : i64", k.launch.block));
                self.specials.insert(Special::BlockDim, bdim.clone());
                self.allocas();
                self.preload_sizes();
                self.line(&format!("scf.for %block = %lo to %hi step {one} : i64 {{"));
                self.depth += 1;
                self.line(&format!(
                    "scf.for %thread = {zero} to {bdim} step {one} : i64 {{"
                ));
                self.depth += 1;
                self.specials.insert(Special::BlockId, "%block".into());
                self.specials.insert(Special::ThreadId, "%thread".into());
                self.stmts(&k.body)?;
                self.depth -= 1;
                self.line("}");
                self.depth -= 1;
                self.line("}");
                self.line("return");
                self.depth -= 1;
                self.line("}");
            }
        }
        out.push_str(&self.out);
        Ok(())
    }

    /// The memref type of value buffer `v`.
    fn value_type(&self, v: u32) -> String {
        format!("memref<?x{}>", self.k.storage[v as usize].name())
    }

    /// The storage type of `m` when it is a value or a shared local stored
    /// narrower than f32.
    fn narrow(&self, m: Mem) -> Option<&'static str> {
        match m {
            Mem::Value(v) if self.k.storage[v as usize] != crate::kir::Dtype::F32 => {
                Some(self.k.storage[v as usize].name())
            }
            Mem::Local(l) => self.k.locals[l as usize].narrow.map(|d| d.name()),
            _ => None,
        }
    }

    /// `exp(x)` on a GPU: `ex2.approx.ftz.f32(x * log2(e))`, an FMUL and
    /// one MUFU.EX2 (libdevice's `__nv_expf` adds a range reduction around
    /// the same instruction: about 8). `ex2.approx` is within 2^-22 of
    /// `2^t`; rounding `t` adds at most `|x| 2^-24 ln 2` (4e-6 at the
    /// largest finite result), both well inside the f32 tolerance against
    /// the interpreter (1e-4). Results below f32's smallest normal flush
    /// to 0; `-inf` gives 0, `+inf` and NaN stay.
    fn exp_gpu(&mut self, x: &str) -> String {
        let log2e = self.op(format!(
            "arith.constant 0x{:08X} : f32",
            std::f32::consts::LOG2_E.to_bits()
        ));
        let t = self.op(format!("arith.mulf {x}, {log2e} : f32"));
        self.ex2_gpu(&t)
    }

    /// `2^t` on a GPU: one `ex2.approx.ftz.f32` (MUFU.EX2), within 2^-22
    /// of `2^t`.
    fn ex2_gpu(&mut self, t: &str) -> String {
        self.op(format!(
            "llvm.inline_asm asm_dialect = att \"ex2.approx.ftz.f32 $0, $1;\", \"=f,f\" {t} : (f32) -> f32"
        ))
    }

    /// `exp(x)` on the host, inline, so LLVM vectorises the loops that
    /// call it (libm's `expf` is a scalar call): `x = n ln 2 + r` with `n =
    /// floor(x log2(e) + 1/2)` and `|r| <= ln(2) / 2` (ln 2 in two parts,
    /// Cody and Waite), `exp(r)` by Cephes' degree-7 polynomial (relative
    /// error about 1e-7), times `2^n` built in the exponent bits. Above
    /// 88.72 it is `inf`, below -87.34 (under `f32`'s smallest normal) 0,
    /// and NaN stays NaN.
    fn exp_host(&mut self, x: &str) -> String {
        let c = |this: &mut Self, v: f32| {
            this.op(format!("arith.constant 0x{:08X} : f32", v.to_bits()))
        };
        let (hi, lo) = (c(self, 88.722_84), c(self, -87.336_54));
        let xc = self.op(format!("arith.minimumf {x}, {hi} : f32"));
        let xc = self.op(format!("arith.maximumf {xc}, {lo} : f32"));
        let (log2e, half) = (c(self, std::f32::consts::LOG2_E), c(self, 0.5));
        let t = self.op(format!("arith.mulf {xc}, {log2e} : f32"));
        let t = self.op(format!("arith.addf {t}, {half} : f32"));
        let n = self.op(format!("math.floor {t} : f32"));
        let (nlo, nhi) = (c(self, -126.0), c(self, 127.0));
        let n = self.op(format!("arith.maximumf {n}, {nlo} : f32"));
        let n = self.op(format!("arith.minimumf {n}, {nhi} : f32"));
        let (c1, c2) = (c(self, 0.693_359_4), c(self, -2.121_944_4e-4));
        let a = self.op(format!("arith.mulf {n}, {c1} : f32"));
        let r = self.op(format!("arith.subf {xc}, {a} : f32"));
        let b = self.op(format!("arith.mulf {n}, {c2} : f32"));
        let r = self.op(format!("arith.subf {r}, {b} : f32"));
        let coef = [
            1.987_569_1e-4,
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ];
        let mut p = c(self, coef[0]);
        for k in &coef[1..] {
            let m = self.op(format!("arith.mulf {p}, {r} : f32"));
            let k = c(self, *k);
            p = self.op(format!("arith.addf {m}, {k} : f32"));
        }
        let r2 = self.op(format!("arith.mulf {r}, {r} : f32"));
        let p = self.op(format!("arith.mulf {p}, {r2} : f32"));
        let p = self.op(format!("arith.addf {p}, {r} : f32"));
        let one = c(self, 1.0);
        let p = self.op(format!("arith.addf {p}, {one} : f32"));
        let ni = self.op(format!("arith.fptosi {n} : f32 to i32"));
        let bias = self.op("arith.constant 127 : i32".into());
        let e = self.op(format!("arith.addi {ni}, {bias} : i32"));
        let sh = self.op("arith.constant 23 : i32".into());
        let e = self.op(format!("arith.shli {e}, {sh} : i32"));
        let scale = self.op(format!("arith.bitcast {e} : i32 to f32"));
        let y = self.op(format!("arith.mulf {p}, {scale} : f32"));
        let inf = self.op("arith.constant 0x7F800000 : f32".into());
        let zero = c(self, 0.0);
        let over = self.op(format!("arith.cmpf ogt, {x}, {hi} : f32"));
        let y = self.op(format!("arith.select {over}, {inf}, {y} : f32"));
        let under = self.op(format!("arith.cmpf olt, {x}, {lo} : f32"));
        let y = self.op(format!("arith.select {under}, {zero}, {y} : f32"));
        let nan = self.op(format!("arith.cmpf uno, {x}, {x} : f32"));
        self.op(format!("arith.select {nan}, {x}, {y} : f32"))
    }

    /// Every size the kernel takes, loaded once at the function's entry
    /// (sizes never change during a launch; loaded inside a loop, LLVM
    /// could not hoist them past the stores it cannot prove apart).
    fn preload_sizes(&mut self) {
        for s in 0..self.k.sizes.len() {
            let i = self.op(format!("arith.constant {s} : index"));
            let v = self.op(format!("memref.load %sizes[{i}] : memref<?xi64>"));
            self.sizes.push(v);
        }
    }

    /// Register arrays, allocated once at the function's entry.
    fn allocas(&mut self) {
        for (i, l) in self.k.locals.iter().enumerate() {
            if l.space == Space::Register {
                let ty = self.local_type(i as u32);
                self.line(&format!("%l{i} = memref.alloca() : {ty}"));
            }
        }
    }

    fn stmts(&mut self, body: &[Stmt]) -> R<()> {
        for s in body {
            match s {
                Stmt::Let(v, e) => {
                    let x = self.val(e)?;
                    self.vars.insert(v.0, x);
                }
                Stmt::Store(m, i, v) => {
                    let mut x = self.val(v)?;
                    let (mem, ty, idx) = self.address(*m, i)?;
                    if let Some(st) = self.narrow(*m) {
                        x = self.op(format!("arith.truncf {x} : f32 to {st}"));
                    }
                    self.line(&format!("memref.store {x}, {mem}[{idx}] : {ty}"));
                }
                Stmt::For { var, lo, hi, body } => {
                    let (lo, hi) = (self.val(lo)?, self.val(hi)?);
                    let one = self.op("arith.constant 1 : i64".into());
                    let name = format!("%i{}", var.0);
                    self.vars.insert(var.0, name.clone());
                    self.line(&format!(
                        "scf.for {name} = {lo} to {hi} step {one} : i64 {{"
                    ));
                    self.depth += 1;
                    self.stmts(body)?;
                    self.depth -= 1;
                    self.line("}");
                }
                Stmt::If { cond, then, els } => {
                    let c = self.val(cond)?;
                    self.line(&format!("scf.if {c} {{"));
                    self.depth += 1;
                    self.stmts(then)?;
                    self.depth -= 1;
                    if !els.is_empty() {
                        self.line("} else {");
                        self.depth += 1;
                        self.stmts(els)?;
                        self.depth -= 1;
                    }
                    self.line("}");
                }
                Stmt::Barrier => self.line("gpu.barrier"),
                Stmt::Mma { ty, a, b, acc, at } => self.mma(*ty, a, b, *acc, *at)?,
                Stmt::Wgmma(w) => self.wgmma(w)?,
                Stmt::WgmmaWait(n) => self.line(&format!("nvvm.wgmma.wait.group.sync.aligned {n}")),
                Stmt::Copy {
                    dst,
                    dst_at,
                    src,
                    src_at,
                    n,
                    stride,
                    when,
                } => {
                    let c = self.val(when)?;
                    let (sm, st, si) = self.address(*src, src_at)?;
                    let (dm, dt, di) = self.address(*dst, dst_at)?;
                    let elt = match (self.narrow(*src), self.narrow(*dst)) {
                        (Some(a), Some(b)) if a == b && self.target == Target::Gpu => a,
                        _ => {
                            return Err(mlir_err(format!(
                                "{}: a 16-byte copy between unlike or f32 buffers (compiler bug)",
                                self.k.name
                            )))
                        }
                    };
                    let bytes = 2 * n;
                    let vt = format!("vector<{n}x{elt}>");
                    let zero = self.op(format!("arith.constant dense<0.0> : {vt}"));
                    let v = self.fresh();
                    self.line(&format!("{v} = scf.if {c} -> ({vt}) {{"));
                    self.depth += 1;
                    let x = self.op(format!(
                        "vector.load {sm}[{si}] {{alignment = {bytes} : i64}} : {st}, {vt}"
                    ));
                    self.line(&format!("scf.yield {x} : {vt}"));
                    self.depth -= 1;
                    self.line("} else {");
                    self.depth += 1;
                    self.line(&format!("scf.yield {zero} : {vt}"));
                    self.depth -= 1;
                    self.line("}");
                    if *stride == 1 {
                        self.line(&format!(
                            "vector.store {v}, {dm}[{di}] {{alignment = {bytes} : i64}} : {dt}, vector<{n}x{elt}>"
                        ));
                    } else {
                        for e in 0..i64::from(*n) {
                            let x = self.op(format!("vector.extract {v}[{e}] : {elt} from vector<{n}x{elt}>"));
                            let off = self.op(format!("arith.constant {} : index", e * stride));
                            let at = self.op(format!("arith.addi {di}, {off} : index"));
                            self.line(&format!("memref.store {x}, {dm}[{at}] : {dt}"));
                        }
                    }
                }
                Stmt::FenceAsync => self.line(
                    "nvvm.fence.proxy {kind = #nvvm.proxy_kind<async.shared>, space = #nvvm.shared_space<cta>}",
                ),
                Stmt::ShflXor { dst, at, src, mask } => {
                    let v = self.val(src)?;
                    let off = self.op(format!("arith.constant {mask} : i32"));
                    let width = self.op("arith.constant 32 : i32".into());
                    let r = self.fresh();
                    self.line(&format!(
                        "{r}, {r}_ok = gpu.shuffle xor {v}, {off}, {width} : f32"
                    ));
                    let (mem, ty, i) = self.address(*dst, &Ex::I(*at))?;
                    self.line(&format!("memref.store {r}, {mem}[{i}] : {ty}"));
                }
                Stmt::Flag => {
                    let one = self.op("arith.constant 1 : i64".into());
                    let z = self.op("arith.constant 0 : index".into());
                    self.op(format!(
                        "memref.atomic_rmw ori {one}, %err[{z}] : (i64, memref<?xi64>) -> i64"
                    ));
                }
            }
        }
        Ok(())
    }

    /// A tensor-core product (`Stmt::Mma`) as `nvvm.mma.sync`: elements
    /// rounded by `arith.truncf` and paired (the first in the low half);
    /// bf16 pairs go as `i32`, as NVVM takes them.
    fn mma(&mut self, ty: crate::kir::Dtype, a: &[Ex], b: &[Ex], acc: Mem, at: i64) -> R<()> {
        let half = ty.name();
        let operand = if ty == crate::kir::Dtype::Bf16 {
            "i32".to_string()
        } else {
            format!("vector<2x{half}>")
        };
        // bf16 pairs as i32 (integer packing keeps the pair in a register;
        // a vector bitcast goes through the stack), f16 pairs as vectors.
        let pack = |this: &mut Self, xs: &[Ex]| -> R<Vec<String>> {
            if ty == crate::kir::Dtype::Bf16 {
                return this.pack_i32(ty, xs);
            }
            let mut out = Vec::new();
            for pair in xs.chunks(2) {
                let mut hs = Vec::new();
                for x in pair {
                    let v = this.val(x)?;
                    hs.push(this.op(format!("arith.truncf {v} : f32 to {half}")));
                }
                out.push(this.op(format!(
                    "vector.from_elements {} : vector<2x{half}>",
                    hs.join(", ")
                )));
            }
            Ok(out)
        };
        let (av, bv) = (pack(self, a)?, pack(self, b)?);
        let mut cv = Vec::new();
        let mut idx = Vec::new();
        for e in 0..4 {
            let (mem, ty, i) = self.address(acc, &Ex::I(at + e))?;
            cv.push(self.op(format!("memref.load {mem}[{i}] : {ty}")));
            idx.push((mem, ty, i));
        }
        let st = "!llvm.struct<(f32, f32, f32, f32)>";
        let d = self.op(format!(
            "nvvm.mma.sync A[{}] B[{}] C[{}] {{layoutA = #nvvm.mma_layout<row>, layoutB = #nvvm.mma_layout<col>, multiplicandAPtxType = #nvvm.mma_type<{half}>, multiplicandBPtxType = #nvvm.mma_type<{half}>, shape = #nvvm.shape<m = 16, n = 8, k = 16>}} : ({operand}, {operand}, f32) -> {st}",
            av.join(", "),
            bv.join(", "),
            cv.join(", ")
        ));
        for (e, (mem, ty, i)) in idx.into_iter().enumerate() {
            let x = self.op(format!("llvm.extractvalue {d}[{e}] : {st}"));
            self.line(&format!("memref.store {x}, {mem}[{i}] : {ty}"));
        }
        Ok(())
    }

    /// A warpgroup product (`Stmt::Wgmma`): `nvvm.wgmma.fence.aligned`, the
    /// accumulator gathered into one struct, a chain of
    /// `nvvm.wgmma.mma_async` (A row-major and B column-major: both
    /// K-major, no transpose), commit, wait until at most `pending` groups
    /// run, and the struct scattered back to the register array (SSA
    /// values once LLVM promotes the array; nothing reads them before the
    /// kernel's `WgmmaWait`).
    fn wgmma(&mut self, w: &crate::kir::Wgmma) -> R<()> {
        let (ty, n, steps, acc, at, pending) = (w.ty, w.n, &w.steps, w.acc, w.at, w.pending);
        let half = ty.name();
        let regs = n as usize / 2;
        let st = format!("!llvm.struct<({})>", vec!["f32"; regs].join(", "));
        // A from shared memory: its descriptor; from registers: the
        // fragment's 8 elements rounded and packed in pairs into 4 i32.
        let mut ops = Vec::new();
        for (a, b) in steps {
            let a = match a {
                crate::kir::WgA::Desc(x) => Ok(self.val(x)?),
                crate::kir::WgA::Regs(xs) => Err(self.pack_i32(ty, xs)?),
            };
            ops.push((a, self.val(b)?));
        }
        let mut d = self.op(format!("llvm.mlir.undef : {st}"));
        let mut idx = Vec::new();
        for e in 0..regs {
            let (mem, ty, i) = self.address(acc, &Ex::I(at + e as i64))?;
            let x = self.op(format!("memref.load {mem}[{i}] : {ty}"));
            d = self.op(format!("llvm.insertvalue {x}, {d}[{e}] : {st}"));
            idx.push((mem, ty, i));
        }
        // Pin the accumulator in its registers before the fence: the PTX
        // ISA orders ordinary register writes before a `wgmma` that reads
        // them only through `wgmma.fence`, and without this LLVM may sink
        // the moves that set the accumulator (zeroing it) past the fence.
        // An empty side-effecting asm with every register tied in and out
        // makes them live, with their values, before it.
        let ins: Vec<String> = (0..regs)
            .map(|e| self.op(format!("llvm.extractvalue {d}[{e}] : {st}")))
            .collect();
        let mut cons: Vec<String> = vec!["=f".into(); regs];
        cons.extend((0..regs).map(|r| r.to_string()));
        d = self.op(format!(
            "llvm.inline_asm has_side_effects asm_dialect = att \"\", \"{}\" {} : ({}) -> {st}",
            cons.join(","),
            ins.join(", "),
            vec!["f32"; regs].join(", ")
        ));
        self.line("nvvm.wgmma.fence.aligned");
        for (a, b) in ops {
            d = match a {
                Ok(a) => self.op(format!(
                    "nvvm.wgmma.mma_async {a}, {b}, {d}, #nvvm.shape<m = 64, n = {n}, k = 16>, D [<f32>, #nvvm.wgmma_scale_out<one>], A [<{half}>, #nvvm.wgmma_scale_in<one>, <row>], B [<{half}>, #nvvm.wgmma_scale_in<one>, <col>] : {st} -> {st}"
                )),
                Err(a) => self.wgmma_regs_a(ty, (n, &st), &d, &a, &b),
            };
        }
        self.line("nvvm.wgmma.commit.group.sync.aligned");
        self.line(&format!("nvvm.wgmma.wait.group.sync.aligned {pending}"));
        for (e, (mem, ty, i)) in idx.into_iter().enumerate() {
            let x = self.op(format!("llvm.extractvalue {d}[{e}] : {st}"));
            self.line(&format!("memref.store {x}, {mem}[{i}] : {ty}"));
        }
        Ok(())
    }

    /// One `wgmma` step with A from registers, as inline PTX (NVVM's op
    /// takes A from shared memory only): the accumulator `d` (a struct of
    /// `n / 2` f32) in and out, A as 4 packed i32, B's descriptor `b`;
    /// scale-d 1 (accumulate), no negation, B K-major.
    fn wgmma_regs_a(
        &mut self,
        ty: crate::kir::Dtype,
        (n, st): (u32, &str),
        d: &str,
        a: &[String],
        b: &str,
    ) -> String {
        let regs = n as usize / 2;
        let mut ins = Vec::new();
        for e in 0..regs {
            ins.push(self.op(format!("llvm.extractvalue {d}[{e}] : {st}")));
        }
        let outs: Vec<String> = (0..regs).map(|r| format!("${r}")).collect();
        let a_ops: Vec<String> = (0..4).map(|k| format!("${}", 2 * regs + k)).collect();
        let asm = format!(
            "{{ .reg .pred p; setp.ne.b32 p, 1, 0; wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{ty}.{ty} {{{}}}, {{{}}}, ${}, p, 1, 1, 0; }}",
            outs.join(", "),
            a_ops.join(", "),
            2 * regs + 4
        );
        let mut cons: Vec<String> = vec!["=f".into(); regs];
        cons.extend((0..regs).map(|r| r.to_string()));
        cons.extend(["r", "r", "r", "r", "l"].map(String::from));
        let mut args = ins;
        args.extend(a.iter().cloned());
        args.push(b.to_string());
        let mut tys = vec!["f32"; regs];
        tys.extend(["i32"; 4]);
        tys.push("i64");
        self.op(format!(
            "llvm.inline_asm has_side_effects asm_dialect = att \"{asm}\", \"{}\" {} : ({}) -> {st}",
            cons.join(","),
            args.join(", "),
            tys.join(", ")
        ))
    }

    /// Rounds `xs` (an even number of f32) to `ty` and packs them in
    /// pairs, the first in the low half, into i32 words.
    fn pack_i32(&mut self, ty: crate::kir::Dtype, xs: &[Ex]) -> R<Vec<String>> {
        let half = ty.name();
        let mut out = Vec::new();
        for pair in xs.chunks(2) {
            let mut w = Vec::new();
            for x in pair {
                let v = self.val(x)?;
                let h = self.op(format!("arith.truncf {v} : f32 to {half}"));
                let i = self.op(format!("arith.bitcast {h} : {half} to i16"));
                w.push(self.op(format!("arith.extui {i} : i16 to i32")));
            }
            let sixteen = self.op("arith.constant 16 : i32".into());
            let hi = self.op(format!("arith.shli {}, {sixteen} : i32", w[1]));
            out.push(self.op(format!("arith.ori {}, {hi} : i32", w[0])));
        }
        Ok(out)
    }

    /// The memref, its type and the index value of `m[i]`.
    fn address(&mut self, m: Mem, i: &Ex) -> R<(String, String, String)> {
        let i = self.val(i)?;
        let idx = self.op(format!("arith.index_cast {i} : i64 to index"));
        Ok(match m {
            Mem::Value(v) => (format!("%v{v}"), self.value_type(v), idx),
            Mem::Local(l) => (format!("%l{l}"), self.local_type(l), idx),
        })
    }

    fn val(&mut self, e: &Ex) -> R<String> {
        let k = self.k;
        Ok(match e {
            Ex::F(x) => self.op(format!("arith.constant 0x{:08X} : f32", x.to_bits())),
            Ex::I(x) => self.op(format!("arith.constant {x} : i64")),
            Ex::B(x) => self.op(format!("arith.constant {x}")),
            Ex::Var(v) => self.vars.get(&v.0).cloned().ok_or_else(|| {
                mlir_err(format!("{}: variable {} used out of scope", k.name, v.0))
            })?,
            Ex::Size(s) => self
                .sizes
                .get(*s as usize)
                .cloned()
                .ok_or_else(|| mlir_err(format!("{}: size {s} out of range", k.name)))?,
            Ex::Special(s) => self.specials[s].clone(),
            Ex::Load(m, i) => {
                let (mem, ty, idx) = self.address(*m, i)?;
                let x = self.op(format!("memref.load {mem}[{idx}] : {ty}"));
                match self.narrow(*m) {
                    Some(st) => self.op(format!("arith.extf {x} : {st} to f32")),
                    None => x,
                }
            }
            Ex::Un(u, a) => {
                let x = self.val(a)?;
                let f = |op: &str| format!("{op} {x} : f32");
                let rhs = match u {
                    Un::NegF => f("arith.negf"),
                    Un::Not => {
                        let t = self.op("arith.constant true".into());
                        format!("arith.xori {x}, {t} : i1")
                    }
                    Un::Exp if self.target == Target::Host => return Ok(self.exp_host(&x)),
                    Un::Exp => return Ok(self.exp_gpu(&x)),
                    Un::Exp2 if self.target == Target::Host => {
                        let ln2 = self.op(format!(
                            "arith.constant 0x{:08X} : f32",
                            std::f32::consts::LN_2.to_bits()
                        ));
                        let t = self.op(format!("arith.mulf {x}, {ln2} : f32"));
                        return Ok(self.exp_host(&t));
                    }
                    Un::Exp2 => return Ok(self.ex2_gpu(&x)),
                    Un::Log => f("math.log"),
                    Un::Sqrt => f("math.sqrt"),
                    Un::Sin => f("math.sin"),
                    Un::Cos => f("math.cos"),
                    Un::AbsF => f("math.absf"),
                    Un::Floor => f("math.floor"),
                    Un::Ceil => f("math.ceil"),
                    Un::Tanh => f("math.tanh"),
                    Un::Erf => f("math.erf"),
                    Un::IToF => format!("arith.sitofp {x} : i64 to f32"),
                    Un::BToF => format!("arith.uitofp {x} : i1 to f32"),
                    Un::FToI => format!("arith.fptosi {x} : f32 to i64"),
                    Un::BToI => format!("arith.extui {x} : i1 to i64"),
                };
                self.op(rhs)
            }
            Ex::Bin(b, x, y) => {
                let ty = k.ty(x).mlir();
                let (x, y) = (self.val(x)?, self.val(y)?);
                let two = |op: &str| format!("{op} {x}, {y} : {ty}");
                let pred_f = |p: Pred| match p {
                    Pred::Eq => "oeq",
                    Pred::Ne => "une",
                    Pred::Lt => "olt",
                    Pred::Le => "ole",
                    Pred::Gt => "ogt",
                    Pred::Ge => "oge",
                };
                let pred_i = |p: Pred| match p {
                    Pred::Eq => "eq",
                    Pred::Ne => "ne",
                    Pred::Lt => "slt",
                    Pred::Le => "sle",
                    Pred::Gt => "sgt",
                    Pred::Ge => "sge",
                };
                // A product and a sum may contract into one FMA (a single
                // rounding: never less accurate than the two; the f32
                // tolerance against the interpreter, 1e-4, holds either way).
                // On the host, sums may also reassociate: that is what lets
                // LLVM vectorise a reduction loop (a dot product over a head
                // dimension) instead of chaining one add per element; the
                // order of a sum is not the interpreter's anyway (the GPU
                // kernels sum in tiles).
                let flags = match self.target {
                    Target::Host => "fastmath<reassoc,contract>",
                    Target::Gpu => "fastmath<contract>",
                };
                let contract = |op: &str| format!("{op} {x}, {y} {flags} : {ty}");
                let rhs = match b {
                    Bin::AddF => contract("arith.addf"),
                    Bin::SubF => contract("arith.subf"),
                    Bin::MulF => contract("arith.mulf"),
                    Bin::DivF => two("arith.divf"),
                    Bin::PowF => two("math.powf"),
                    Bin::MaxF => two("arith.maxnumf"),
                    Bin::MinF => two("arith.minnumf"),
                    Bin::AddI => two("arith.addi"),
                    Bin::SubI => two("arith.subi"),
                    Bin::MulI => two("arith.muli"),
                    Bin::DivI => two("arith.divsi"),
                    Bin::RemI => two("arith.remsi"),
                    Bin::MaxI => two("arith.maxsi"),
                    Bin::XorI => two("arith.xori"),
                    Bin::AndI => two("arith.andi"),
                    Bin::ShlI => two("arith.shli"),
                    Bin::ShrI => two("arith.shrsi"),
                    Bin::MinI => two("arith.minsi"),
                    Bin::And => two("arith.andi"),
                    Bin::Or => two("arith.ori"),
                    Bin::CmpF(p) => format!("arith.cmpf {}, {x}, {y} : f32", pred_f(*p)),
                    Bin::CmpI(p) | Bin::CmpB(p) => {
                        format!("arith.cmpi {}, {x}, {y} : {ty}", pred_i(*p))
                    }
                };
                self.op(rhs)
            }
            Ex::Select(c, a, b) => {
                let ty = k.ty(a).mlir();
                let (c, a, b) = (self.val(c)?, self.val(a)?, self.val(b)?);
                self.op(format!("arith.select {c}, {a}, {b} : {ty}"))
            }
            Ex::SharedAddr(l) => {
                if self.target != Target::Gpu {
                    return Err(mlir_err(format!(
                        "{}: a shared-memory address has no host form",
                        k.name
                    )));
                }
                let ty = self.local_type(*l);
                let p = self.op(format!(
                    "memref.extract_aligned_pointer_as_index %l{l} : {ty} -> index"
                ));
                self.op(format!("arith.index_cast {p} : index to i64"))
            }
        })
    }
}

// ----- melior: parse, verify, lower -----

/// An MLIR context with every dialect, translation and pass registered,
/// and the diagnostics it reports.
pub struct Mlir {
    pub context: Context,
    diagnostics: Rc<RefCell<Vec<String>>>,
}

impl Default for Mlir {
    fn default() -> Self {
        Self::new()
    }
}

impl Mlir {
    pub fn new() -> Mlir {
        let registry = DialectRegistry::new();
        register_all_dialects(&registry);
        let context = Context::new();
        context.append_dialect_registry(&registry);
        context.load_all_available_dialects();
        register_all_llvm_translations(&context);
        register_all_passes();
        let diagnostics = Rc::new(RefCell::new(Vec::new()));
        let sink = diagnostics.clone();
        context.attach_diagnostic_handler(move |d| {
            sink.borrow_mut().push(format!("{}: {d}", d.location()));
            true
        });
        Mlir {
            context,
            diagnostics,
        }
    }

    fn failure(&self, what: &str) -> BackendError {
        let d = self.diagnostics.borrow_mut().drain(..).collect::<Vec<_>>();
        mlir_err(format!("{what}: {}", d.join("\n")))
    }

    /// Parses and verifies MLIR text.
    pub fn parse<'c>(&'c self, text: &str) -> R<Module<'c>> {
        let m = Module::parse(&self.context, text).ok_or_else(|| self.failure("parse"))?;
        if !m.as_operation().verify() {
            return Err(self.failure("verify"));
        }
        Ok(m)
    }

    /// Runs a textual pass pipeline over the module.
    pub fn run_pipeline(&self, m: &mut Module, pipeline: &str) -> R<()> {
        let pm = PassManager::new(&self.context);
        parse_pass_pipeline(pm.as_operation_pass_manager(), pipeline)
            .map_err(|e| mlir_err(format!("pipeline `{pipeline}`: {e}")))?;
        pm.run(m)
            .map_err(|_| self.failure(&format!("pipeline `{pipeline}`")))
    }
}

/// The GPU pipeline: NVVM, libdevice, PTX text for `chip` (`sm_80`,
/// `sm_90`, or `sm_90a` for `wgmma`).
pub fn gpu_pipeline(chip: &str) -> String {
    let libdevice = crate::toolchain::libdevice_path();
    format!(
        "builtin.module(gpu.module(strip-debuginfo,convert-vector-to-llvm,convert-scf-to-cf,convert-gpu-to-nvvm,canonicalize,cse,reconcile-unrealized-casts),\
         nvvm-attach-target{{chip={chip} features=+ptx80 O=3 l={}}},gpu-to-llvm,gpu-module-to-binary{{format=isa}})",
        libdevice.display()
    )
}

/// The host pipeline: to the LLVM dialect.
pub const HOST_PIPELINE: &str =
    "builtin.module(canonicalize,cse,convert-math-to-llvm,convert-math-to-libm,\
     convert-scf-to-cf,convert-arith-to-llvm,finalize-memref-to-llvm,convert-func-to-llvm,\
     convert-cf-to-llvm,reconcile-unrealized-casts)";

/// PTX for `sm` (`sm_80`, `sm_90`) of kernels, through MLIR's NVVM path.
pub fn ptx(kernels: &[Kernel], sm: &str) -> R<String> {
    if sm
        .strip_prefix("sm_")
        .is_none_or(|v| v.parse::<u32>().is_err())
    {
        return Err(mlir_err(format!("`{sm}` is not a GPU architecture")));
    }
    // `wgmma` exists only in sm_90's architecture-specific variant, whose
    // PTX runs on sm_90 devices alone; other modules stay portable.
    let chip = if kernels.iter().any(Kernel::has_wgmma) {
        if sm != "sm_90" {
            return Err(mlir_err(format!(
                "wgmma kernels are for sm_90 (sm_90a), not {sm}"
            )));
        }
        "sm_90a"
    } else {
        sm
    };
    // The NVPTX back end lives in the LLVM that MLIR links (one copy).
    inkwell::targets::Target::initialize_nvptx(&Default::default());
    let text = emit(kernels, Target::Gpu)?;
    let mlir = Mlir::new();
    let mut m = mlir.parse(&text)?;
    mlir.run_pipeline(&mut m, &gpu_pipeline(chip))?;
    let body = m.body();
    let mut op = body.first_operation();
    while let Some(o) = op {
        if o.name().as_string_ref().as_str() == Ok("gpu.binary") {
            let objects = o
                .attribute("objects")
                .map_err(|e| mlir_err(format!("gpu.binary: {e}")))?;
            let objects = melior::ir::attribute::ArrayAttribute::try_from(objects)
                .map_err(|e| mlir_err(format!("gpu.binary objects: {e}")))?;
            let obj = objects
                .element(0)
                .map_err(|e| mlir_err(format!("gpu.binary object: {e}")))?;
            // SAFETY: `obj` is a live attribute of this context; the string
            // it returns is owned by the context and copied at once.
            let text = unsafe {
                if !mlir_sys::mlirAttributeIsAGPUObjectAttr(obj.to_raw()) {
                    return Err(mlir_err("gpu.binary holds no #gpu.object"));
                }
                let s = mlir_sys::mlirGPUObjectAttrGetObject(obj.to_raw());
                let bytes = std::slice::from_raw_parts(s.data as *const u8, s.length);
                String::from_utf8_lossy(bytes).into_owned()
            };
            return Ok(text);
        }
        op = o.next_in_block();
    }
    Err(mlir_err("the GPU pipeline produced no gpu.binary"))
}

/// The MLIR module of kernels for `target`: parsed, verified, folded
/// (`canonicalize`, `cse`) and printed.
pub fn module_text(kernels: &[Kernel], target: Target) -> R<String> {
    let text = emit(kernels, target)?;
    let mlir = Mlir::new();
    let mut m = mlir.parse(&text)?;
    mlir.run_pipeline(&mut m, "builtin.module(canonicalize,cse)")?;
    Ok(m.as_operation().to_string())
}
