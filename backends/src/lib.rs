//! Code generation back ends for mixc.
//!
//! This crate owns everything that links LLVM 22 and MLIR 22. Every kernel
//! is kernel IR (`kir`), and there are two code-generation paths: kernel IR
//! to PTX (`mlir`, through melior and MLIR's NVVM pipeline) and kernel IR to
//! host code (`mlir`'s host form, translated to LLVM IR and compiled with
//! inkwell by `host`).
//! Only the CLI and tests pull it in; `dsl`, the IR and the interpreter must
//! never depend on it (they stay pure Rust and fast to build).
//!
//! It also holds the toolchain probes that prove the pipeline's two ends
//! link and work on this machine: [`mlir_verify_probe`] builds and verifies
//! one MLIR function, [`llvm_jit_probe`] JIT-runs one LLVM function and
//! [`nvptx_probe`] emits PTX through LLVM's NVPTX target.

pub mod attention;
pub mod bundle;
pub use mixc_compiler::passes::conv;
pub use mixc_compiler::passes::hoist;
pub mod host;
pub mod kir;
pub use mixc_compiler::passes::linear_scan as linear;
pub mod mlir;
pub mod sass;
pub mod simt;
pub mod toolchain;

use thiserror::Error;

/// A failure inside LLVM or MLIR. These are toolchain or compiler bugs, not
/// user errors, so the message says which library refused what.
#[derive(Debug, Error)]
pub enum BackendError {
    #[error("MLIR rejected the module: {0}")]
    Mlir(String),
    #[error("LLVM failed: {0}")]
    Llvm(String),
    #[error("{0}")]
    Runtime(String),
}

/// Builds `func.func @fma(f64, f64, f64) -> f64` with `arith` ops through
/// melior, verifies it, and returns its printed form.
pub fn mlir_verify_probe() -> Result<String, BackendError> {
    use melior::{
        dialect::{arith, func, DialectRegistry},
        ir::{
            attribute::{StringAttribute, TypeAttribute},
            block::BlockLike,
            operation::OperationLike,
            r#type::FunctionType,
            Block, Location, Module, Region, RegionLike, Type,
        },
        utility::register_all_dialects,
        Context,
    };

    let registry = DialectRegistry::new();
    register_all_dialects(&registry);
    let context = Context::new();
    context.append_dialect_registry(&registry);
    context.load_all_available_dialects();

    let loc = Location::unknown(&context);
    let module = Module::new(loc);
    let f64t = Type::float64(&context);
    let fn_type = FunctionType::new(&context, &[f64t, f64t, f64t], &[f64t]);
    let body = {
        let block = Block::new(&[(f64t, loc), (f64t, loc), (f64t, loc)]);
        let arg = |i| {
            block
                .argument(i)
                .map_err(|e| BackendError::Mlir(e.to_string()))
        };
        let (a, b, c) = (arg(0)?, arg(1)?, arg(2)?);
        let prod = block.append_operation(arith::mulf(a.into(), b.into(), loc));
        let prod = prod
            .result(0)
            .map_err(|e| BackendError::Mlir(e.to_string()))?;
        let sum = block.append_operation(arith::addf(prod.into(), c.into(), loc));
        let sum = sum
            .result(0)
            .map_err(|e| BackendError::Mlir(e.to_string()))?;
        block.append_operation(func::r#return(&[sum.into()], loc));
        let region = Region::new();
        region.append_block(block);
        region
    };
    module.body().append_operation(func::func(
        &context,
        StringAttribute::new(&context, "fma"),
        TypeAttribute::new(fn_type.into()),
        body,
        &[],
        loc,
    ));
    if !module.as_operation().verify() {
        return Err(BackendError::Mlir(format!(
            "verifier failed on\n{}",
            module.as_operation()
        )));
    }
    Ok(module.as_operation().to_string())
}

/// JIT-compiles `double fma(double a, double b, double c) = a * b + c` with
/// inkwell on the host and calls it.
pub fn llvm_jit_probe(a: f64, b: f64, c: f64) -> Result<f64, BackendError> {
    use inkwell::{
        context::Context,
        execution_engine::JitFunction,
        targets::{InitializationConfig, Target},
        OptimizationLevel,
    };
    type Fma = unsafe extern "C" fn(f64, f64, f64) -> f64;

    Target::initialize_native(&InitializationConfig::default()).map_err(BackendError::Llvm)?;
    let context = Context::create();
    let module = context.create_module("probe");
    let builder = context.create_builder();
    let f64t = context.f64_type();
    let fn_type = f64t.fn_type(&[f64t.into(), f64t.into(), f64t.into()], false);
    let function = module.add_function("fma", fn_type, None);
    let entry = context.append_basic_block(function, "entry");
    builder.position_at_end(entry);
    let p = |i| {
        function
            .get_nth_param(i)
            .map(|v| v.into_float_value())
            .ok_or_else(|| BackendError::Llvm(format!("missing parameter {i}")))
    };
    let llvm = |e: inkwell::builder::BuilderError| BackendError::Llvm(e.to_string());
    let prod = builder
        .build_float_mul(p(0)?, p(1)?, "prod")
        .map_err(llvm)?;
    let sum = builder.build_float_add(prod, p(2)?, "sum").map_err(llvm)?;
    builder.build_return(Some(&sum)).map_err(llvm)?;
    module
        .verify()
        .map_err(|e| BackendError::Llvm(e.to_string()))?;
    let engine = module
        .create_jit_execution_engine(OptimizationLevel::Default)
        .map_err(|e| BackendError::Llvm(e.to_string()))?;
    // SAFETY: the function was built above with exactly the `Fma` signature.
    let fma: JitFunction<Fma> =
        unsafe { engine.get_function("fma") }.map_err(|e| BackendError::Llvm(e.to_string()))?;
    // SAFETY: pure arithmetic on its arguments; no memory is touched.
    Ok(unsafe { fma.call(a, b, c) })
}

/// Emits PTX for a one-thread kernel `axpy(float* y, float a, float x)`
/// (`*y = a * x + *y`) through LLVM's NVPTX target for `sm`.
pub fn nvptx_probe(sm: &str) -> Result<String, BackendError> {
    use inkwell::{
        context::Context,
        module::Linkage,
        targets::{CodeModel, FileType, InitializationConfig, RelocMode, Target, TargetTriple},
        AddressSpace, OptimizationLevel,
    };

    Target::initialize_nvptx(&InitializationConfig::default());
    let triple = TargetTriple::create("nvptx64-nvidia-cuda");
    let target = Target::from_triple(&triple).map_err(|e| BackendError::Llvm(e.to_string()))?;
    let machine = target
        .create_target_machine(
            &triple,
            sm,
            "+ptx80",
            OptimizationLevel::Default,
            RelocMode::Default,
            CodeModel::Default,
        )
        .ok_or_else(|| BackendError::Llvm(format!("no NVPTX target machine for {sm}")))?;

    let context = Context::create();
    let module = context.create_module("probe");
    module.set_triple(&triple);
    module.set_data_layout(&machine.get_target_data().get_data_layout());
    let f32t = context.f32_type();
    let ptr = context.ptr_type(AddressSpace::from(1u16));
    let fn_type = context
        .void_type()
        .fn_type(&[ptr.into(), f32t.into(), f32t.into()], false);
    let function = module.add_function("axpy", fn_type, Some(Linkage::External));
    function.set_call_conventions(71); // PTX_Kernel
    let builder = context.create_builder();
    builder.position_at_end(context.append_basic_block(function, "entry"));
    let llvm = |e: inkwell::builder::BuilderError| BackendError::Llvm(e.to_string());
    let missing = || BackendError::Llvm("missing parameter".into());
    let y = function
        .get_nth_param(0)
        .ok_or_else(missing)?
        .into_pointer_value();
    let a = function
        .get_nth_param(1)
        .ok_or_else(missing)?
        .into_float_value();
    let x = function
        .get_nth_param(2)
        .ok_or_else(missing)?
        .into_float_value();
    let old = builder
        .build_load(f32t, y, "old")
        .map_err(llvm)?
        .into_float_value();
    let ax = builder.build_float_mul(a, x, "ax").map_err(llvm)?;
    let new = builder.build_float_add(ax, old, "new").map_err(llvm)?;
    builder.build_store(y, new).map_err(llvm)?;
    builder.build_return(None).map_err(llvm)?;
    module
        .verify()
        .map_err(|e| BackendError::Llvm(e.to_string()))?;
    let buf = machine
        .write_to_memory_buffer(&module, FileType::Assembly)
        .map_err(|e| BackendError::Llvm(e.to_string()))?;
    Ok(String::from_utf8_lossy(buf.as_slice()).into_owned())
}

/// Path of the `ptxas` that `scripts/setup.sh` installs into `.tools/`.
pub fn ptxas_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../.tools/python/nvidia/cuda_nvcc/bin/ptxas")
}

/// What `ptxas -v` says of one kernel.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KernelReport {
    pub name: String,
    pub registers: u32,
    pub shared_bytes: u32,
    pub stack_bytes: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
    /// ptxas's warnings and performance notes about this kernel (such as
    /// `wgmma` serialized for a register hazard).
    pub warnings: Vec<String>,
    /// What its SASS shows (`None` without `nvdisasm`).
    pub sass: Option<sass::Machine>,
}

/// The architecture PTX built for `sm` assembles for: its `.target`,
/// which is `sm` or `sm`'s architecture-specific variant (`sm_90a`, for
/// `wgmma`), whose PTX assembles only for that variant.
pub fn ptx_arch<'a>(ptx: &'a str, sm: &'a str) -> &'a str {
    mixc_runtime::cuda::ptx_target(ptx)
        .filter(|t| t.starts_with(sm))
        .unwrap_or(sm)
}

/// Assembles `ptx` for `sm` with `ptxas -v` and reads each kernel's
/// registers, shared memory, stack and spills from its log. An error
/// carries ptxas's own message.
pub fn ptxas_report(ptx: &str, sm: &str) -> Result<Vec<KernelReport>, BackendError> {
    let ptxas = ptxas_path();
    if !ptxas.exists() {
        return Err(BackendError::Runtime(format!(
            "ptxas not found at {}; run scripts/setup.sh",
            ptxas.display()
        )));
    }
    let dir = std::env::temp_dir().join(format!(
        "mixc-ptxas-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| BackendError::Runtime(e.to_string()))?;
    let file = dir.join("kernels.ptx");
    std::fs::write(&file, ptx).map_err(|e| BackendError::Runtime(e.to_string()))?;
    let arch = ptx_arch(ptx, sm);
    let out = std::process::Command::new(&ptxas)
        .arg(format!("-arch={arch}"))
        .arg("-v")
        .arg(&file)
        .arg("-o")
        .arg(dir.join("kernels.cubin"))
        .output()
        .map_err(|e| BackendError::Runtime(format!("cannot run {}: {e}", ptxas.display())))?;
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(BackendError::Runtime(format!(
            "ptxas rejected the PTX:\n{log}"
        )));
    }
    let mut reports = parse_ptxas_log(&log);
    let code = if sass::nvdisasm_path().exists() {
        Some(sass::disassemble(&dir.join("kernels.cubin")))
    } else {
        None
    };
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(code) = code {
        let fs = sass::parse(&code?);
        for r in &mut reports {
            if let Some((_, c)) = fs.iter().find(|(n, _)| *n == r.name) {
                r.sass = Some(sass::analyse(c, sm));
            }
        }
    }
    Ok(reports)
}

/// Reads `ptxas -v` output: a `Compiling entry function 'NAME'` line opens
/// each kernel; `N bytes stack frame, S bytes spill stores, L bytes spill
/// loads` and `Used R registers, ... X bytes smem` fill it in.
pub fn parse_ptxas_log(log: &str) -> Vec<KernelReport> {
    fn before(line: &str, unit: &str) -> u32 {
        line.find(unit)
            .and_then(|k| line[..k].split_whitespace().last())
            .and_then(|w| w.parse().ok())
            .unwrap_or(0)
    }
    let mut out: Vec<KernelReport> = Vec::new();
    let mut notes = Vec::new();
    for line in log.lines() {
        if line.contains("warning") || line.contains("Performance Loss") {
            notes.push(line.trim().to_string());
            continue;
        }
        if let Some(k) = line.find("Compiling entry function '") {
            let rest = &line[k + "Compiling entry function '".len()..];
            let name = rest.split('\'').next().unwrap_or("").to_string();
            out.push(KernelReport {
                name,
                registers: 0,
                shared_bytes: 0,
                stack_bytes: 0,
                spill_stores: 0,
                spill_loads: 0,
                warnings: Vec::new(),
                sass: None,
            });
        } else if let Some(r) = out.last_mut() {
            if line.contains("bytes stack frame") {
                r.stack_bytes = before(line, "bytes stack frame");
                r.spill_stores = before(line, "bytes spill stores");
                r.spill_loads = before(line, "bytes spill loads");
            } else if line.contains("Used") && line.contains("registers") {
                r.registers = before(line, "registers");
                r.shared_bytes = before(line, "bytes smem");
            }
        }
    }
    // A note names its function when it is about one; otherwise it is
    // about them all.
    for note in notes {
        let named: Vec<usize> = (0..out.len())
            .filter(|k| note.contains(&format!("'{}'", out[*k].name)))
            .collect();
        for (k, r) in out.iter_mut().enumerate() {
            if named.is_empty() || named.contains(&k) {
                r.warnings.push(note.clone());
            }
        }
    }
    out
}
