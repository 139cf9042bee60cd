//! PTX through LLVM's NVPTX target, generic path: each IR op becomes one
//! kernel `op<k>(bufs, sizes, err)` with one thread per element of its
//! result (a scan's threads each walk its scan axis in order). Kernels are
//! launched in program order; the launch boundary orders their memory.
//! Transcendental functions come from libdevice (shipped in the
//! `nvidia-cuda-nvcc-cu12` wheel that `scripts/setup.sh` installs), linked
//! as link-once so only what is called stays. The output is checked with
//! `ptxas` in the tests. It is the cross-check of the MLIR path (`kir`,
//! `mlir`), and the default GPU code generator until tiled templates land.

use crate::cpu::attention::HostKernel;
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
use mixc_compiler::ir::{self, DimExpr, Module, Slot};
use std::collections::BTreeMap;

pub use crate::toolchain::libdevice_path;

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

    /// One thread per combination of `slots` (over `self.extents`): the
    /// thread's indices go into the slots, and `body` runs if it is in range.
    pub(crate) fn thread_loop(
        &mut self,
        slots: &[Slot],
        body: &mut dyn FnMut(&mut Self) -> R<()>,
    ) -> R<()> {
        let mut total = self.i64c(1);
        for s in slots {
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
        for s in slots.iter().rev() {
            let ext = self.extents[*s as usize];
            let i = self.b.build_int_signed_rem(rem, ext, "i").map_err(llvm)?;
            self.b
                .build_store(self.slots[*s as usize], i)
                .map_err(llvm)?;
            rem = self.b.build_int_signed_div(rem, ext, "rem").map_err(llvm)?;
        }
        body(self)?;
        self.b.build_unconditional_branch(done).map_err(llvm)?;
        self.b.position_at_end(done);
        Ok(())
    }

    /// One thread per result element (per row, for a scan).
    fn op_gpu(&mut self, o: usize) -> R<()> {
        let zero = self.i64c(0);
        let op = self.enter(o, None, zero, zero)?;
        let parallel: Vec<Slot> = (0..op.rank as Slot)
            .filter(|s| Some(*s as usize) != op.recurrence)
            .collect();
        let sequential: Vec<Slot> = op.recurrence.map(|a| vec![a as Slot]).unwrap_or_default();
        let shape = self.ir.value(op.result).shape.clone();
        let (result, body) = (op.result, op.body);
        self.thread_loop(&parallel, &mut |g| {
            g.loops(&sequential, &mut |g| g.store_result(result, &shape, body))
        })
    }
}

/// A GPU kernel as compiled: its entry, the op whose value it writes, what
/// it is, and how many threads it needs (one per element, or per row).
#[derive(Clone, Debug)]
pub struct GpuKernel {
    pub entry: String,
    pub op: usize,
    pub kind: String,
    pub threads: DimExpr,
}

/// PTX text with its kernels in launch order and the ops a template
/// absorbed (their values are never written).
pub struct PtxCode {
    pub text: String,
    pub kernels: Vec<GpuKernel>,
    pub absorbed: std::collections::BTreeSet<usize>,
}

/// PTX for every op of a verified module, for `sm` (`sm_80`, `sm_90`):
/// the generic path, one kernel per op, sizes read at run time.
pub fn ptx(m: &Module, sm: &str) -> Result<String, BackendError> {
    Ok(ptx_with(m, sm, &BTreeMap::new(), false)?.text)
}

/// PTX for a bundle: `fixed` sizes folded in as constants, and with
/// `templates` the fused attention template (one thread per query row)
/// wherever its accumulator has a size known at build time.
pub fn ptx_with(
    m: &Module,
    sm: &str,
    fixed: &BTreeMap<String, i64>,
    templates: bool,
) -> Result<PtxCode, BackendError> {
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
    g.specialize(fixed);
    let (plan, absorbed) = crate::cpu::attention::llvm_gpu_kernels(m, templates, &g.consts);
    let mut kernels = Vec::new();
    for k in &plan {
        let o = k.op();
        let f = g.md.add_function(&format!("op{o}"), fn_ty, None);
        f.set_call_conventions(71); // PTX_Kernel
        let (kind, threads) = match k {
            HostKernel::Attention(t, _) => {
                let start = g.begin(f, 0)?;
                g.current = Some(m.ops[o].result);
                let zero = g.i64c(0);
                g.attention(t, None, zero, zero)?;
                g.finish(start)?;
                (
                    "fused attention (online softmax, a thread per row)".to_string(),
                    crate::cpu::attention::rows(m, t),
                )
            }
            _ => {
                let start = g.begin(f, m.ops[o].slots.len())?;
                g.op_gpu(o)?;
                g.finish(start)?;
                (
                    format!("{:?}", m.ops[o].kind).to_lowercase(),
                    threads(&m.ops[o]),
                )
            }
        };
        kernels.push(GpuKernel {
            entry: format!("op{o}"),
            op: o,
            kind,
            threads,
        });
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
    Ok(PtxCode {
        text: String::from_utf8_lossy(buf.as_slice()).into_owned(),
        kernels,
        absorbed,
    })
}

pub use crate::kir::{grid, threads, BLOCK};
