//! Host code from kernel IR: the CPU back end.
//!
//! The host schedule (`mixc_compiler::schedule::Target::Host`) is lowered
//! by [`crate::kir::lower_host`]: kernel-IR kernels for the templates and
//! generic ops, the runtime's library kernels (FFT convolution, GEMM) in
//! their places. `mlir.rs` prints the kernels' host form (blocks and
//! threads as loops) and lowers it to the LLVM dialect; here it is
//! translated to LLVM IR in an inkwell context, each kernel gets a wrapper
//! with the runtime's CPU ABI, `name(f32** buffers, i64* sizes, i64* err,
//! i64 lo, i64 hi)` over blocks `[lo, hi)` of its grid (the memref
//! descriptors are built inside and the body inlined), and the module is
//! optimised at `-O3` for this machine. The same module becomes a bundle's
//! object or is JIT-compiled by [`run`].

use crate::kir::{HostLowered, Kernel, Step};
use crate::toolchain::CpuRun;
use crate::BackendError;
use inkwell::attributes::{Attribute, AttributeLoc};
use inkwell::context::Context;
use inkwell::module::{Linkage, Module as LModule};
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{CodeModel, InitializationConfig, RelocMode, Target, TargetMachine};
use inkwell::values::BasicMetadataValueEnum;
use inkwell::{AddressSpace, OptimizationLevel};
use mixc_compiler::ir::{self, DimExpr, Module, ValueDef};
use mixc_runtime::bundle::Library;
use mixc_runtime::cpu::{host_threads, launch, KernelFn};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

type R<T> = Result<T, BackendError>;

fn llvm(e: impl ToString) -> BackendError {
    BackendError::Llvm(e.to_string())
}

/// A host kernel as compiled: its symbol, the op whose value it writes,
/// what it is, and the extent its threads split (the kernel's grid of
/// blocks).
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

/// The host code of a module: the module compiled (the mid-end may add
/// values after the input's), its kernels in launch order, and the ops
/// that get no kernel and no buffer.
pub struct HostCode {
    pub module: Module,
    pub kernels: Vec<KernelInfo>,
    pub absorbed: BTreeSet<usize>,
}

impl HostCode {
    fn of(low: &HostLowered) -> HostCode {
        let kernels = low
            .steps
            .iter()
            .map(|(s, schedule)| match s {
                Step::Kernel(k) => KernelInfo {
                    entry: k.name.clone(),
                    schedule,
                    op: k.op,
                    kind: k.kind.clone(),
                    parallel: Some(k.launch.grid.clone()),
                    library: None,
                },
                Step::Library { op, kind, library } => KernelInfo {
                    entry: match library {
                        Library::FftConv(_) => "fft_conv".into(),
                        Library::Gemm(_) => "gemm".into(),
                    },
                    schedule,
                    op: *op,
                    kind: kind.clone(),
                    parallel: None,
                    library: Some(library.clone()),
                },
            })
            .collect();
        HostCode {
            module: low.module.clone(),
            kernels,
            absorbed: low.absorbed.clone(),
        }
    }
}

/// This machine's target machine (its CPU and features), for code built
/// with `reloc` and `model`.
fn host_machine(reloc: RelocMode, model: CodeModel) -> R<TargetMachine> {
    Target::initialize_native(&InitializationConfig::default()).map_err(llvm)?;
    let triple = TargetMachine::get_default_triple();
    let target = Target::from_triple(&triple).map_err(llvm)?;
    target
        .create_target_machine(
            &triple,
            &TargetMachine::get_host_cpu_name().to_string(),
            &TargetMachine::get_host_cpu_features().to_string(),
            OptimizationLevel::Aggressive,
            reloc,
            model,
        )
        .ok_or_else(|| llvm("no host target machine"))
}

/// The LLVM module of `kernels` in `cx`: each kernel's MLIR host form
/// translated, wrapped in the runtime's ABI and optimised at `-O3`.
pub fn llvm_module<'c>(
    cx: &'c Context,
    kernels: &[Kernel],
    machine: &TargetMachine,
) -> R<LModule<'c>> {
    let md = if kernels.is_empty() {
        cx.create_module("mixer")
    } else {
        let text = crate::mlir::emit(kernels, crate::mlir::Target::Host)?;
        let mlir = crate::mlir::Mlir::new();
        let mut m = mlir.parse(&text)?;
        mlir.run_pipeline(&mut m, crate::mlir::HOST_PIPELINE)?;
        // SAFETY: MLIR and inkwell link the same LLVM (one copy), so an
        // `LLVMContextRef` of one is one of the other; the translated
        // module is created in `cx`, and the caller owns it.
        let raw = unsafe {
            mlir_sys::mlirTranslateModuleToLLVMIR(m.as_operation().to_raw(), cx.raw() as _)
        };
        if raw.is_null() {
            return Err(BackendError::Mlir(
                "the host module did not translate to LLVM IR".into(),
            ));
        }
        // SAFETY: a module just created in `cx`, owned by nothing else.
        unsafe { LModule::new(raw as _) }
    };
    md.set_triple(&machine.get_triple());
    md.set_data_layout(&machine.get_target_data().get_data_layout());
    let ptr = cx.ptr_type(AddressSpace::default());
    let i64t = cx.i64_type();
    let fn_ty = cx.void_type().fn_type(
        &[ptr.into(), ptr.into(), ptr.into(), i64t.into(), i64t.into()],
        false,
    );
    let inline = Attribute::get_named_enum_kind_id("alwaysinline");
    let b = cx.create_builder();
    for k in kernels {
        let name = format!("{}{}", k.name, crate::mlir::HOST_BODY);
        let body = md
            .get_function(&name)
            .ok_or_else(|| llvm(format!("no function {name} after translation")))?;
        let want = 5 * (k.buffers + 2) + 2;
        if body.count_params() as usize != want {
            return Err(llvm(format!(
                "{name} takes {} words, not {want}",
                body.count_params()
            )));
        }
        body.set_linkage(Linkage::Internal);
        body.add_attribute(AttributeLoc::Function, cx.create_enum_attribute(inline, 0));
        let f = md.add_function(&k.name, fn_ty, None);
        b.position_at_end(cx.append_basic_block(f, "entry"));
        let p = |i: u32| f.get_nth_param(i).ok_or_else(|| llvm("missing parameter"));
        let (bufs, sizes, err) = (
            p(0)?.into_pointer_value(),
            p(1)?.into_pointer_value(),
            p(2)?.into_pointer_value(),
        );
        let (zero, one) = (i64t.const_zero(), i64t.const_int(1, false));
        let mut args: Vec<BasicMetadataValueEnum> = Vec::with_capacity(want);
        let memref = |args: &mut Vec<BasicMetadataValueEnum<'c>>,
                      p: BasicMetadataValueEnum<'c>,
                      len: BasicMetadataValueEnum<'c>| {
            args.extend([p, p, zero.into(), len, one.into()]);
        };
        for v in 0..k.buffers {
            // SAFETY: `bufs` is the runtime's table of one pointer per value.
            let slot = unsafe {
                b.build_in_bounds_gep(ptr, bufs, &[i64t.const_int(v as u64, false)], "slot")
            }
            .map_err(llvm)?;
            let buf = b.build_load(ptr, slot, "buf").map_err(llvm)?;
            memref(&mut args, buf.into(), zero.into());
        }
        let nsizes = i64t.const_int(k.sizes.len() as u64, false);
        memref(&mut args, sizes.into(), nsizes.into());
        memref(&mut args, err.into(), one.into());
        args.push(p(3)?.into());
        args.push(p(4)?.into());
        b.build_call(body, &args, "").map_err(llvm)?;
        b.build_return(None).map_err(llvm)?;
    }
    md.verify()
        .map_err(|e| llvm(format!("invalid LLVM IR (compiler bug): {e}")))?;
    md.run_passes("default<O3>", machine, PassBuilderOptions::create())
        .map_err(llvm)?;
    Ok(md)
}

/// A relocatable host object with every kernel of a verified module's
/// host plan, for a CPU bundle, with the `fixed` sizes folded in.
pub fn host_object(
    m: &Module,
    templates: bool,
    fixed: &BTreeMap<String, i64>,
) -> R<(Vec<u8>, HostCode)> {
    let verified = ir::verify::verify(m).map_err(llvm)?;
    let low = crate::kir::lower_host(verified.module(), fixed, templates)?;
    let machine = host_machine(RelocMode::PIC, CodeModel::Default)?;
    let cx = Context::create();
    let md = llvm_module(&cx, &low.kernels(), &machine)?;
    let buf = machine
        .write_to_memory_buffer(&md, inkwell::targets::FileType::Object)
        .map_err(llvm)?;
    Ok((buf.as_slice().to_vec(), HostCode::of(&low)))
}

/// Compiles a verified module for the host and runs it on `buffers` (one
/// f32 buffer per value, inputs and parameters filled, row-major), on all
/// the host's threads. `sizes` binds every size of the module
/// (`mixc_compiler::bind_sizes`); every size but the batch and sequence
/// sizes is folded in, as a bundle would.
pub fn run(m: &Module, sizes: &BTreeMap<String, i64>, buffers: &mut [Vec<f32>]) -> R<CpuRun> {
    run_with(m, sizes, buffers, host_threads(), true)
}

/// [`run`] on `threads` threads; without `templates` (a test-only
/// cross-check), every op is its own generic kernel.
pub fn run_with(
    m: &Module,
    sizes: &BTreeMap<String, i64>,
    buffers: &mut [Vec<f32>],
    threads: usize,
    templates: bool,
) -> R<CpuRun> {
    let verified = ir::verify::verify(m).map_err(llvm)?;
    let m = verified.module();
    if buffers.len() != m.values.len() {
        return Err(llvm(format!(
            "{} buffers for {} values",
            buffers.len(),
            m.values.len()
        )));
    }
    for (k, v) in m.values.iter().enumerate() {
        let n: i64 = v.shape.iter().map(|d| d.eval(sizes).unwrap_or(0)).product();
        if buffers[k].len() != n.max(0) as usize {
            return Err(llvm(format!(
                "buffer of `{}` has {} elements, not {n}",
                v.name,
                buffers[k].len()
            )));
        }
    }
    let t0 = Instant::now();
    let fixed: BTreeMap<String, i64> = sizes
        .iter()
        .filter(|(k, _)| !m.run_time_sizes().contains(k))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    let low = crate::kir::lower_host(m, &fixed, templates)?;
    let code = HostCode::of(&low);
    let machine = host_machine(RelocMode::Default, CodeModel::JITDefault)?;
    let cx = Context::create();
    let md = llvm_module(&cx, &low.kernels(), &machine)?;
    let engine = md
        .create_jit_execution_engine(OptimizationLevel::Aggressive)
        .map_err(llvm)?;
    let mut fns = Vec::new();
    for k in &code.kernels {
        if k.library.is_some() {
            fns.push(None);
            continue;
        }
        // SAFETY: every kernel's wrapper has exactly the `KernelFn` signature.
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
                .ok_or_else(|| llvm(format!("size `{}` is not bound", s.name)))
        })
        .collect::<R<_>>()?;
    // Values the mid-end added get buffers here; those of ops that get no
    // kernel (a scan's state kept on chip, dead ops) none.
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
            (None, None) => return Err(llvm(format!("kernel `{}` has no code", k.entry))),
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
