//! Writes bundles (see `mixc_runtime::bundle` for the format): the kernels
//! of a module for one target, and the manifest a runner needs.
//!
//! - `cpu`: the host schedule in kernel IR compiled to a position-independent
//!   host object (`kernels.o`, `crate::host`) linked into a shared library
//!   (`kernels.so`) with the system C compiler driver; library kernels
//!   (FFT convolution, GEMM) are the runtime's.
//! - `sm_80`, `sm_90`: PTX (`kernels.ptx`) through kernel IR and MLIR's
//!   NVVM pipeline: the tiled templates, memref arguments, f32, bf16 or f16
//!   storage.

use crate::kir::Dtype;
use crate::BackendError;
use mixc_compiler::ir::{self, Module, ValueDef};
use mixc_runtime::bundle::{
    Args, KernelEntry, Manifest, Role, SizeEntry, ValueEntry, FORMAT, MANIFEST,
};
use mixc_runtime::Fill;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// The targets `mixc build` knows.
pub const TARGETS: [&str; 3] = ["cpu", "sm_80", "sm_90"];

/// What the bundle records besides the module.
#[derive(Clone, Debug)]
pub struct Meta {
    pub mixer: String,
    pub source: String,
    pub hash: String,
    /// Sizes fixed at build time; the other free sizes stay run-time.
    pub fixed: BTreeMap<String, i64>,
    /// Per value: how an input or parameter is filled (None if computed).
    pub fills: Vec<Option<Fill>>,
    /// How every buffer is stored (bf16 and f16 on GPU targets).
    pub dtype: Dtype,
}

/// The kernel-IR kernels of a GPU bundle (the tiled templates included,
/// each value stored as [`value_dtypes`] says), and the ops the templates
/// absorb.
pub fn gpu_kernels(m: &Module, meta: &Meta, sm: &str) -> Result<crate::kir::Lowered, BackendError> {
    crate::kir::lower_gpu(m, &meta.fixed, meta.dtype, sm)
}

pub use mixc_compiler::schedule::value_dtypes;

fn io(e: std::io::Error, what: &Path) -> BackendError {
    BackendError::Runtime(format!("{}: {e}", what.display()))
}

/// Compiles `m` for `target` into `dir` (created if needed) and writes the
/// manifest. Returns the manifest.
pub fn write(m: &Module, target: &str, meta: &Meta, dir: &Path) -> Result<Manifest, BackendError> {
    let verified = ir::verify::verify(m).map_err(|e| BackendError::Llvm(e.to_string()))?;
    let m = verified.module();
    if meta.fills.len() != m.values.len() {
        return Err(BackendError::Runtime(format!(
            "{} initialisers for {} values",
            meta.fills.len(),
            m.values.len()
        )));
    }
    let gpu = target.starts_with("sm_");
    if meta.dtype != Dtype::F32 && !gpu {
        return Err(BackendError::Runtime(format!(
            "{} storage is for GPU targets (--target sm_80|sm_90); CPU bundles store f32",
            meta.dtype
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| io(e, dir))?;
    let sig_cpu = "(f32** buffers, i64* sizes, i64* error, i64 lo, i64 hi)";
    let mut kernels = Vec::new();
    // Values a template computes on chip: no kernel writes them, no buffer.
    let absorbed: Vec<usize>;
    // The module the kernels compute: the mid-end may add values (hoisted
    // sums and convolutions) after the input's.
    let module;
    let object = match target {
        "cpu" => {
            let (obj, code) = crate::host::host_object(m, true, &meta.fixed)?;
            module = code.module;
            let m = &module;
            let o = dir.join("kernels.o");
            std::fs::write(&o, obj).map_err(|e| io(e, &o))?;
            link_shared(&o, &dir.join("kernels.so"))?;
            absorbed = results(m, &code.absorbed);
            for k in code.kernels {
                let signature = match k.library {
                    Some(mixc_runtime::bundle::Library::FftConv(_)) => {
                        "library: the runtime's FFT convolution"
                    }
                    Some(mixc_runtime::bundle::Library::Gemm(_)) => {
                        "library: the runtime's matrix product"
                    }
                    None => sig_cpu,
                };
                kernels.push(KernelEntry {
                    parallel: k.parallel.map(|d| d.to_string()),
                    library: k.library,
                    schedule: k.schedule.into(),
                    ..entry(m, k.entry, k.op, k.kind, signature)
                });
            }
            "kernels.so"
        }
        sm if sm.starts_with("sm_") && TARGETS.contains(&sm) => {
            let low = gpu_kernels(m, meta, sm)?;
            let text = crate::mlir::ptx(&low.kernels, sm)?;
            let p = dir.join("kernels.ptx");
            std::fs::write(&p, &text).map_err(|e| io(e, &p))?;
            module = low.module;
            let m = &module;
            absorbed = results(m, &low.absorbed);
            let code = low.kernels;
            let schedules = low.schedules;
            let sig = format!(
                "memref<?x{}> per activation, memref<?xf32> per parameter or value of parameters alone, memref<?xi64> sizes, memref<?xi64> error",
                meta.dtype
            );
            for (k, schedule) in code.into_iter().zip(schedules) {
                kernels.push(KernelEntry {
                    grid: Some([k.launch.grid.to_string(), "1".into(), "1".into()]),
                    block: Some([k.launch.block, 1, 1]),
                    shared_bytes: k.shared_bytes(),
                    args: Args::Memref,
                    schedule: schedule.into(),
                    ..entry(m, k.name, k.op, k.kind, &sig)
                });
            }
            "kernels.ptx"
        }
        other => {
            return Err(BackendError::Runtime(format!(
                "unknown target `{other}` (known: {})",
                TARGETS.join(", ")
            )))
        }
    };
    let m = &module;
    for (i, k) in kernels.iter_mut().enumerate() {
        k.id = i + 1;
    }
    let fills = meta.fills.iter().copied().chain(std::iter::repeat(None));
    let dtypes = value_dtypes(m, meta.dtype);
    let manifest = Manifest {
        format: FORMAT.into(),
        mixer: meta.mixer.clone(),
        source: meta.source.clone(),
        target: target.into(),
        dtype: meta.dtype.name().into(),
        hash: meta.hash.clone(),
        compiler: format!("mixc {}", env!("CARGO_PKG_VERSION")),
        object: object.into(),
        sizes: m
            .sizes
            .iter()
            .map(|s| SizeEntry {
                name: s.name.clone(),
                value: match (meta.fixed.get(&s.name), &s.value) {
                    (_, Some(e)) => Some(e.to_string()),
                    (Some(v), None) => Some(v.to_string()),
                    (None, None) => None,
                },
            })
            .collect(),
        values: m
            .values
            .iter()
            .zip(fills)
            .enumerate()
            .map(|(k, (v, fill))| ValueEntry {
                materialized: !absorbed.contains(&k),
                name: v.name.clone(),
                role: match v.def {
                    ValueDef::Input => Role::Input,
                    ValueDef::Param(_) => Role::Param,
                    ValueDef::Op(_) => Role::Computed,
                },
                shape: v.shape.iter().map(|d| d.to_string()).collect(),
                fill,
                dtype: dtypes[k],
            })
            .collect(),
        inputs: m.inputs.iter().map(|v| v.0 as usize).collect(),
        output: m.output.0 as usize,
        kernels,
    };
    let text = serde_json::to_string_pretty(&manifest)
        .map_err(|e| BackendError::Runtime(e.to_string()))?;
    let p = dir.join(MANIFEST);
    std::fs::write(&p, text + "\n").map_err(|e| io(e, &p))?;
    Ok(manifest)
}

/// A kernel entry for op `o` with no launch geometry or library spec yet.
fn entry(m: &Module, name: String, o: usize, kind: String, signature: &str) -> KernelEntry {
    KernelEntry {
        id: 0,
        schedule: "generic".into(),
        entry: name,
        writes: m.ops[o].result.0 as usize,
        kind,
        parallel: None,
        grid: None,
        block: None,
        shared_bytes: 0,
        signature: signature.into(),
        library: None,
        per_call: mixc_compiler::pattern::input_dependent(m, o),
        args: Args::Table,
    }
}

/// The values ops `ops` compute, as indices.
fn results(m: &Module, ops: &std::collections::BTreeSet<usize>) -> Vec<usize> {
    ops.iter().map(|o| m.ops[*o].result.0 as usize).collect()
}

/// Links a host object into a shared library with the first C compiler
/// driver found (`$CC`, `cc`, `clang`, `gcc`).
fn link_shared(object: &Path, out: &Path) -> Result<(), BackendError> {
    let mut tried = Vec::new();
    let env_cc = std::env::var("CC").ok();
    for cc in env_cc
        .iter()
        .map(|s| s.as_str())
        .chain(["cc", "clang", "gcc"])
    {
        let r = Command::new(cc)
            .arg("-shared")
            .arg("-o")
            .arg(out)
            .arg(object)
            .arg("-lm")
            .output();
        match r {
            Ok(o) if o.status.success() => return Ok(()),
            Ok(o) => {
                return Err(BackendError::Runtime(format!(
                    "linking {} with {cc} failed:\n{}",
                    out.display(),
                    String::from_utf8_lossy(&o.stderr)
                )))
            }
            Err(e) => tried.push(format!("{cc}: {e}")),
        }
    }
    Err(BackendError::Runtime(format!(
        "no C compiler driver to link the CPU bundle ({}); install clang or gcc (scripts/setup.sh does)",
        tried.join("; ")
    )))
}
