//! Every execution path against the f64 interpreter.
//!
//! A [`Path`] is one way a checked program gets executed: the CPU back end
//! (LLVM JIT), the kernel-IR host path (MLIR), the GPU kernels in the
//! lockstep simulator for a storage dtype and an architecture (so f32
//! scalar kernels, `mma.sync` on sm_80 and `wgmma` on sm_90), and the
//! optimiser's plan (its claimed equivalences, by interpretation). Each run
//! gets the interpreter's inputs and parameters, every computed buffer
//! poisoned with NaN first, and is compared with the interpreter's output
//! by relative error against the dtype's tolerance ([`Dtype::tolerance`],
//! the one place tolerances are stated).
//!
//! Ill-conditioned programs: the interpreter is also run on its inputs
//! rounded to each storage dtype, with every intermediate result rounded
//! to f32. When that alone moves the output by more than a quarter of the
//! dtype's tolerance, no f32 or 16-bit
//! execution can be expected to meet it, and the verdict says so
//! ([`Verdict::IllConditioned`]) instead of reporting a miscompile.

use crate::gen::Shape;
use mixc_compiler::ir::{lower::lower, Module, ValueDef};
use mixc_compiler::Interpreter;
use mixc_runtime::Dtype;
use std::collections::BTreeMap;

/// One execution path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// The CPU back end: the host schedule in kernel IR, JIT-compiled, f32.
    Cpu,
    /// The GPU kernels in the lockstep simulator.
    Simt(Dtype, Arch),
    /// The optimiser's plan for a device profile: every equivalence it
    /// claims, and the output of the module it plans, by interpretation.
    Opt(&'static str),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Arch {
    Sm80,
    Sm90,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Sm80 => "sm_80",
            Arch::Sm90 => "sm_90",
        }
    }
}

impl Path {
    /// Every path, in a fixed order.
    pub fn all() -> Vec<Path> {
        let mut v = vec![Path::Cpu];
        for d in [Dtype::F32, Dtype::Bf16, Dtype::F16] {
            for a in [Arch::Sm80, Arch::Sm90] {
                v.push(Path::Simt(d, a));
            }
        }
        v.push(Path::Opt("cpu"));
        v.push(Path::Opt("h100"));
        v
    }

    pub fn name(self) -> String {
        match self {
            Path::Cpu => "cpu".into(),
            Path::Simt(d, a) => format!("simt-{}-{}", d.name(), a.name().replace('_', "")),
            Path::Opt(dev) => format!("opt-{dev}"),
        }
    }

    pub fn parse(s: &str) -> Result<Path, String> {
        Path::all()
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<String> = Path::all().iter().map(|p| p.name()).collect();
                format!("unknown path `{s}` (known: {})", names.join(", "))
            })
    }

    /// The relative error this path may show against the interpreter:
    /// the storage dtype's ([`Dtype::tolerance`]); for the optimiser's
    /// claims, interpreted in f64 and exact up to reassociation, 1e-9.
    pub fn tolerance(self) -> f64 {
        match self {
            Path::Opt(_) => 1e-9,
            p => p.dtype().tolerance(),
        }
    }

    /// The storage dtype.
    pub fn dtype(self) -> Dtype {
        match self {
            Path::Simt(d, _) => d,
            _ => Dtype::F32,
        }
    }
}

/// What one path did with one program.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Within tolerance; the relative error.
    Ok(f64),
    /// Over the dtype's tolerance: a miscompile (or a numerics bug).
    Mismatch { err: f64, tol: f64 },
    /// The path refused the program with an error (no wrong answer, but a
    /// checked program that does not run).
    Refused(String),
    /// The path panicked.
    Panic(String),
    /// The interpreter's own output moves by more than a quarter of the
    /// tolerance when its inputs are rounded to the dtype (or its
    /// arithmetic to f32 and its stored intermediates to the dtype), and
    /// the path's error is within [`ILL_CONDITIONED_SLACK`] times that
    /// floor; or a value the program computes is beyond the
    /// dtype's largest finite number: the program is too ill-conditioned
    /// for the comparison to mean anything. The number is the floor or the
    /// magnitude.
    IllConditioned(f64),
}

impl Verdict {
    /// Whether this verdict is a bug to report.
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            Verdict::Mismatch { .. } | Verdict::Panic(_) | Verdict::Refused(_)
        )
    }

    /// A short class name: `ok`, `mismatch`, `refused`, `panic`,
    /// `ill-conditioned`.
    pub fn class(&self) -> &'static str {
        match self {
            Verdict::Ok(_) => "ok",
            Verdict::Mismatch { .. } => "mismatch",
            Verdict::Refused(_) => "refused",
            Verdict::Panic(_) => "panic",
            Verdict::IllConditioned(_) => "ill-conditioned",
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Verdict::Ok(e) => format!("ok (relative error {e:.2e})"),
            Verdict::Mismatch { err, tol } => {
                format!("mismatch: relative error {err:.3e} over the tolerance {tol:.0e}")
            }
            Verdict::Refused(m) => format!("refused: {m}"),
            Verdict::Panic(m) => format!("panic: {m}"),
            Verdict::IllConditioned(f) => {
                format!(
                "ill-conditioned: rounding (or perturbing by a unit roundoff) the inputs, the arithmetic and the stored intermediates moves the output by {f:.2e} (for a reference of zeros: the output's rms against the program's scale)"
            )
            }
        }
    }
}

/// Why a case did not reach the paths at all.
#[derive(Clone, Debug, PartialEq)]
pub enum Invalid {
    /// The checker rejected the program (the generator's miss).
    Check(String),
    /// The interpreter stopped with a program error (division by zero,
    /// a size that does not divide).
    Interp(String),
    /// The reference output has NaN or infinities.
    NonFinite,
}

/// The interpreter's run of a program: inputs, parameters and output.
pub struct Reference {
    pub module: Module,
    pub sizes: BTreeMap<String, i64>,
    pub free: BTreeMap<String, i64>,
    /// Every value's buffer after the run, f64 (inputs, parameters, ops).
    pub buffers: Vec<Vec<f64>>,
    pub output: Vec<f64>,
    pub seed: u64,
}

/// Checks `src` and returns its program's module, or the rendered
/// diagnostics.
pub fn check(src: &str) -> Result<mixc_dsl::typed::Program, String> {
    let c = mixc_dsl::check_file("fuzz.mix", src, &Default::default());
    if c.has_errors() {
        return Err(mixc_dsl::render(&c.sources, &c.diagnostics));
    }
    c.program(None).cloned()
}

/// Runs the interpreter on `prog` at `shape`.
pub fn reference(
    prog: &mixc_dsl::typed::Program,
    shape: &Shape,
    seed: u64,
) -> Result<Reference, Invalid> {
    let m = lower(prog);
    let free = shape.sizes.clone();
    let mut it =
        Interpreter::for_module(m.clone(), &free).map_err(|e| Invalid::Interp(e.to_string()))?;
    it.init(seed).map_err(|e| Invalid::Interp(e.to_string()))?;
    it.run().map_err(|e| Invalid::Interp(e.to_string()))?;
    let output = it.output().data.clone();
    if output.iter().any(|x| !x.is_finite()) {
        return Err(Invalid::NonFinite);
    }
    let sizes = it.sizes.clone();
    Ok(Reference {
        module: m,
        sizes,
        free,
        buffers: it.tensors.iter().map(|t| t.data.clone()).collect(),
        output,
        seed,
    })
}

impl Reference {
    /// The relative change of the output when the inputs and parameters
    /// are stored as `dtype`, or when, in addition, every intermediate
    /// result is rounded to f32, whichever is larger: the floor below
    /// which no execution in that dtype can be expected to go.
    pub fn rounding_floor(&self, dtype: Dtype) -> f64 {
        let mut it = match Interpreter::for_module(self.module.clone(), &self.free) {
            Ok(it) => it,
            Err(_) => return f64::INFINITY,
        };
        if it.init(self.seed).is_err() {
            return f64::INFINITY;
        }
        // Round every given value (input or parameter) as an upload would,
        // also for f32: the back ends compute from f32 values.
        let names: Vec<(String, Vec<usize>, Vec<f64>)> = self
            .module
            .values
            .iter()
            .enumerate()
            .filter(|(_, v)| !matches!(v.def, ValueDef::Op(_)))
            .map(|(k, v)| {
                let t = &it.tensors[k];
                (
                    v.name.clone(),
                    t.shape.clone(),
                    t.data
                        .iter()
                        .map(|x| dtype.round(*x as f32) as f64)
                        .collect(),
                )
            })
            .collect();
        for (name, shape, data) in names {
            let _ = it.set(&name, mixc_runtime::Tensor { shape, data });
        }
        let inputs = match it.run() {
            Ok(out) => mixc_runtime::rel_err(&out.data, &self.output),
            Err(_) => return f64::INFINITY,
        };
        // And the program's own arithmetic, rounded to f32 at every step,
        // with every intermediate tensor stored in the storage dtype the
        // back ends give it (16-bit buffers for input-dependent values).
        let stored = mixc_backends::bundle::value_dtypes(&self.module, dtype);
        let store = |k: usize, v: f64| stored[k].round(v as f32) as f64;
        let arithmetic = match it.run_rounded_to_f32_storing(&store) {
            Ok(out) => mixc_runtime::rel_err(&out.data, &self.output),
            Err(_) => return f64::INFINITY,
        };
        // And the program's sensitivity: every stored element perturbed by
        // a random relative amount of one unit roundoff of its storage
        // dtype (what a backward-stable execution may do to each), and
        // every arithmetic result and normaliser statistic by one f32 unit
        // roundoff (`Interpreter::run_perturbed_storing`), twice.
        // A rounding that happens to be exact (a constant that is
        // representable) hides nothing here; cancellation, a softmax over
        // large scores or a normaliser of a constant row shows up.
        let perturbed = (1..=2u64)
            .map(|trial| {
                let count = std::cell::Cell::new(0u64);
                let store = |k: usize, v: f64| {
                    let n = count.get();
                    count.set(n + 1);
                    let mut z =
                        (n ^ (k as u64) << 40 ^ trial << 56).wrapping_add(0x9e37_79b9_7f4a_7c15);
                    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                    z ^= z >> 31;
                    let r = (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
                    let d = stored[k];
                    d.round((v * (1.0 + unit_roundoff(d) * r)) as f32) as f64
                };
                match it.run_perturbed_storing(&store, trial) {
                    Ok(out) => mixc_runtime::rel_err(&out.data, &self.output),
                    Err(_) => f64::INFINITY,
                }
            })
            .fold(0.0f64, f64::max);
        inputs.max(arithmetic).max(perturbed)
    }

    /// The largest magnitude of any value the program computes.
    pub fn max_abs(&self) -> f64 {
        self.buffers
            .iter()
            .flatten()
            .fold(0.0f64, |m, x| m.max(x.abs()))
    }

    /// f32 buffers for a back end: inputs and parameters from the
    /// interpreter, every op's result poisoned with NaN.
    fn f32_buffers(&self) -> Vec<Vec<f32>> {
        self.module
            .values
            .iter()
            .zip(&self.buffers)
            .map(|(v, b)| match v.def {
                ValueDef::Op(_) => vec![f32::NAN; b.len()],
                _ => b.iter().map(|x| *x as f32).collect(),
            })
            .collect()
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic)".into()
    }
}

/// The unit roundoff of a storage dtype: half the distance from 1 to the
/// next number.
fn unit_roundoff(d: Dtype) -> f64 {
    match d {
        Dtype::F32 => f64::powi(2.0, -24),
        Dtype::Bf16 => f64::powi(2.0, -8),
        Dtype::F16 => f64::powi(2.0, -11),
    }
}

/// How far past the rounding floor an ill-conditioned program's error may
/// go and still be put down to rounding: the floor is one rounding of the
/// inputs and one of the arithmetic; a back end reassociates and rounds
/// differently, so its error can exceed it by a small factor, not by
/// orders of magnitude.
pub const ILL_CONDITIONED_SLACK: f64 = 16.0;

/// Runs one path on the reference's inputs and judges it.
pub fn run_path(r: &Reference, path: Path) -> Verdict {
    let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_raw(r, path)));
    let (verdict, output) = match got {
        Err(p) => return Verdict::Panic(panic_message(p)),
        Ok(Err(e)) => return Verdict::Refused(e),
        Ok(Ok(x)) => x,
    };
    let tol = path.tolerance();
    if verdict <= tol {
        return Verdict::Ok(verdict);
    }
    // A reference output that is exactly zero has no relative error to
    // speak of: the path's output is judged against the scale of the
    // values the program computes (an FFT of zeros packed with a filter,
    // for one, leaves roundoff of the filter's size).
    if r.output.iter().all(|x| *x == 0.0) {
        if let Some(got) = &output {
            let rms = (got.iter().map(|x| x * x).sum::<f64>() / got.len().max(1) as f64).sqrt();
            if rms <= tol * r.max_abs() {
                return Verdict::IllConditioned(rms);
            }
        }
    }
    if let Path::Opt(_) = path {
        return Verdict::Mismatch { err: verdict, tol };
    }
    // Over the tolerance: do the program's values leave the dtype's range
    // (f16 ends at 65504), or is the program itself too sensitive?
    let max = r.max_abs();
    if max > path.dtype().max_finite() {
        return Verdict::IllConditioned(max);
    }
    // Ill-conditioned only where the floor explains the error: a result
    // far beyond what rounding alone does is a miscompile all the same.
    let floor = r.rounding_floor(path.dtype());
    if floor * 4.0 > tol && verdict <= ILL_CONDITIONED_SLACK * floor {
        return Verdict::IllConditioned(floor);
    }
    Verdict::Mismatch { err: verdict, tol }
}

/// The relative error of one path's output and the output (or the equivalences' worst,
/// for the optimiser).
fn run_raw(r: &Reference, path: Path) -> Result<(f64, Option<Vec<f64>>), String> {
    let m = &r.module;
    let out = m.output.0 as usize;
    match path {
        Path::Cpu => {
            let mut bufs = r.f32_buffers();
            mixc_backends::host::run(m, &r.sizes, &mut bufs).map_err(|e| e.to_string())?;
            let got: Vec<f64> = bufs[out].iter().map(|x| *x as f64).collect();
            Ok((mixc_runtime::rel_err(&got, &r.output), Some(got)))
        }
        Path::Simt(dtype, arch) => {
            let verified = mixc_compiler::ir::verify::verify(m).map_err(|e| e.to_string())?;
            let fixed: BTreeMap<String, i64> = r
                .sizes
                .iter()
                .filter(|(k, _)| !m.run_time_sizes().contains(k))
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            let dtypes = mixc_backends::bundle::value_dtypes(verified.module(), dtype);
            let low = mixc_backends::kir::lower_gpu(verified.module(), &fixed, dtype, arch.name())
                .map_err(|e| e.to_string())?;
            let mut bufs = r.f32_buffers();
            for (buf, d) in bufs.iter_mut().zip(&dtypes) {
                buf.iter_mut().for_each(|x| *x = d.round(*x));
            }
            low.with_buffers(&r.sizes, &mut bufs, |b| {
                mixc_backends::simt::run(&low.kernels, &r.sizes, b)
            })
            .map_err(|e| e.to_string())?;
            let got: Vec<f64> = bufs[out].iter().map(|x| *x as f64).collect();
            Ok((mixc_runtime::rel_err(&got, &r.output), Some(got)))
        }
        Path::Opt(device) => {
            let profile = mixc_opt::Profile::named(device)?;
            // The plan that runs (the mid-end's module and claims) and the
            // e-graph's exploration (its rules' claims).
            let mut worst: f64 = 0.0;
            for p in [
                mixc_opt::optimize(m, &r.sizes, &profile)?,
                mixc_opt::explore(m, &r.sizes, &profile)?,
            ] {
                let mut it = Interpreter::for_module(p.module.clone(), &r.free)
                    .map_err(|e| e.to_string())?;
                it.init(r.seed).map_err(|e| e.to_string())?;
                it.run().map_err(|e| e.to_string())?;
                worst = worst.max(mixc_runtime::rel_err(&it.output().data, &r.output));
                for (a, b) in &p.equivalences {
                    let (Some(x), Some(y)) = (it.get(a), it.get(b)) else {
                        return Err(format!("the plan claims `{a}` = `{b}`, but one is missing"));
                    };
                    worst = worst.max(mixc_runtime::rel_err(&x.data, &y.data));
                }
            }
            Ok((worst, None))
        }
    }
}
