//! PTX through LLVM's NVPTX target, generic path: each IR op becomes one
//! kernel `op<k>(bufs, sizes, err)` with one thread per element of its
//! result (a scan's threads each walk its scan axis in order). Kernels are
//! launched in program order; the launch boundary orders their memory.
//! Transcendental functions come from libdevice (shipped in the
//! `nvidia-cuda-nvcc-cu12` wheel that `scripts/setup.sh` installs), linked
//! as link-once so only what is called stays. The output is checked with
//! `ptxas` in the tests. This is the cross-check path: the MLIR pipeline
//! and the tiled templates come next.

use crate::cpu::{llvm, Gen, R};
use crate::BackendError;
use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::{Linkage, Module as LModule};
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{
    CodeModel, FileType, InitializationConfig, RelocMode, Target, TargetTriple,
};
use inkwell::values::IntValue;
use inkwell::{AddressSpace, IntPredicate, OptimizationLevel};
use mixc_compiler::ir::{self, Module, Slot};
use std::path::PathBuf;

/// Where `scripts/setup.sh` puts libdevice.
pub fn libdevice_path() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../.tools/python/nvidia/cuda_nvcc/nvvm/libdevice/libdevice.10.bc")
}

impl<'c> Gen<'c, '_> {
    fn sreg(&self, name: &str) -> R<IntValue<'c>> {
        let i = Intrinsic::find(name)
            .ok_or_else(|| BackendError::Llvm(format!("no intrinsic {name}")))?;
        let f = i
            .get_declaration(&self.md, &[])
            .ok_or_else(|| BackendError::Llvm(format!("no declaration for {name}")))?;
        let v = self.b.build_call(f, &[], "sreg").map_err(llvm)?;
        let v = v
            .try_as_basic_value()
            .basic()
            .ok_or_else(|| BackendError::Llvm(format!("{name} returned nothing")))?;
        self.b
            .build_int_z_extend(v.into_int_value(), self.cx.i64_type(), "z")
            .map_err(llvm)
    }

    /// One thread per result element (per row, for a scan).
    fn op_gpu(&mut self, o: usize) -> R<()> {
        let op = self.ir.ops[o].clone();
        self.extents = op
            .slots
            .iter()
            .map(|s| self.dim(&s.extent))
            .collect::<R<_>>()?;
        let parallel: Vec<Slot> = (0..op.rank as Slot)
            .filter(|s| Some(*s as usize) != op.recurrence)
            .collect();
        let mut total = self.i64c(1);
        for s in &parallel {
            total = self
                .b
                .build_int_mul(total, self.extents[*s as usize], "total")
                .map_err(llvm)?;
        }
        let bid = self.sreg("llvm.nvvm.read.ptx.sreg.ctaid.x")?;
        let bdim = self.sreg("llvm.nvvm.read.ptx.sreg.ntid.x")?;
        let tid = self.sreg("llvm.nvvm.read.ptx.sreg.tid.x")?;
        let base = self.b.build_int_mul(bid, bdim, "base").map_err(llvm)?;
        let gid = self.b.build_int_add(base, tid, "gid").map_err(llvm)?;
        let inside = self
            .b
            .build_int_compare(IntPredicate::SLT, gid, total, "in")
            .map_err(llvm)?;
        let (work, done) = (self.block("work"), self.block("exit"));
        self.b
            .build_conditional_branch(inside, work, done)
            .map_err(llvm)?;
        self.b.position_at_end(work);
        let mut rem = gid;
        for s in parallel.iter().rev() {
            let ext = self.extents[*s as usize];
            let i = self.b.build_int_signed_rem(rem, ext, "i").map_err(llvm)?;
            self.b
                .build_store(self.slots[*s as usize], i)
                .map_err(llvm)?;
            rem = self.b.build_int_signed_div(rem, ext, "rem").map_err(llvm)?;
        }
        let sequential: Vec<Slot> = op.recurrence.map(|a| vec![a as Slot]).unwrap_or_default();
        let shape = self.ir.value(op.result).shape.clone();
        let (result, body) = (op.result, op.body);
        self.loops(&sequential, &mut |g| g.store_result(result, &shape, body))?;
        self.b.build_unconditional_branch(done).map_err(llvm)?;
        self.b.position_at_end(done);
        Ok(())
    }
}

/// PTX for every op of a verified module, for `sm` (`sm_80`, `sm_90`).
pub fn ptx(m: &Module, sm: &str) -> Result<String, BackendError> {
    let verified = ir::verify::verify(m).map_err(|e| BackendError::Llvm(e.to_string()))?;
    let m = verified.module();
    Target::initialize_nvptx(&InitializationConfig::default());
    let triple = TargetTriple::create("nvptx64-nvidia-cuda");
    let target = Target::from_triple(&triple).map_err(llvm)?;
    let machine = target
        .create_target_machine(
            &triple,
            sm,
            "+ptx80",
            OptimizationLevel::Aggressive,
            RelocMode::Default,
            CodeModel::Default,
        )
        .ok_or_else(|| BackendError::Llvm(format!("no NVPTX target machine for {sm}")))?;
    let cx = Context::create();
    let md = cx.create_module("mixer");
    md.set_triple(&triple);
    md.set_data_layout(&machine.get_target_data().get_data_layout());
    let ptr = cx.ptr_type(AddressSpace::default());
    let fn_ty = cx
        .void_type()
        .fn_type(&[ptr.into(), ptr.into(), ptr.into()], false);
    let placeholder = md.add_function("placeholder", fn_ty, None);
    let mut g = Gen::new(&cx, md, m, true, placeholder)?;
    for o in 0..m.ops.len() {
        let f = g.md.add_function(&format!("op{o}"), fn_ty, None);
        f.set_call_conventions(71); // PTX_Kernel
        let start = g.begin(f, m.ops[o].slots.len())?;
        g.op_gpu(o)?;
        g.finish(start)?;
    }
    // SAFETY: the placeholder has no body and no uses; deleting it is sound.
    unsafe { placeholder.delete() };
    let md = g.md;
    let lib = LModule::parse_bitcode_from_path(libdevice_path(), &cx).map_err(|e| {
        BackendError::Llvm(format!(
            "libdevice ({}): {e}; run scripts/setup.sh",
            libdevice_path().display()
        ))
    })?;
    for f in lib.get_functions() {
        if f.count_basic_blocks() > 0 {
            f.set_linkage(Linkage::LinkOnceODR);
        }
    }
    md.link_in_module(lib).map_err(llvm)?;
    md.verify()
        .map_err(|e| BackendError::Llvm(format!("invalid LLVM IR (compiler bug): {e}")))?;
    md.run_passes("default<O2>", &machine, PassBuilderOptions::create())
        .map_err(llvm)?;
    let buf = machine
        .write_to_memory_buffer(&md, FileType::Assembly)
        .map_err(llvm)?;
    Ok(String::from_utf8_lossy(buf.as_slice()).into_owned())
}

/// Threads per block of every generic-path kernel.
pub const BLOCK: u32 = 256;

/// How many threads op `o`'s kernel needs: one per result element, less
/// the scanned axis (each thread walks it).
pub fn threads(op: &ir::Op) -> mixc_compiler::ir::DimExpr {
    use mixc_compiler::ir::DimExpr;
    use mixc_dsl::typed::DimOp;
    (0..op.rank)
        .filter(|s| Some(*s) != op.recurrence)
        .fold(DimExpr::Const(1), |acc, s| match acc {
            DimExpr::Const(1) => op.slots[s].extent.clone(),
            acc => DimExpr::bin(DimOp::Mul, acc, op.slots[s].extent.clone()),
        })
}

/// The grid of op `o`'s kernel: enough blocks of [`BLOCK`] threads.
pub fn grid(op: &ir::Op) -> mixc_compiler::ir::DimExpr {
    use mixc_compiler::ir::DimExpr;
    use mixc_dsl::typed::DimOp;
    let b = i64::from(BLOCK);
    DimExpr::bin(
        DimOp::FloorDiv,
        DimExpr::bin(DimOp::Add, threads(op), DimExpr::Const(b - 1)),
        DimExpr::Const(b),
    )
}
