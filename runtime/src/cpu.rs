//! Running compiled CPU kernels: a bundle's shared library (`dlopen`), or
//! functions the JIT hands over. Each kernel is
//! `op(buffers, sizes, err, lo, hi)` over `[lo, hi)` of its parallel axis;
//! the axis is cut into one contiguous range per thread.

use crate::bundle::{Bound, Bundle, Timing};
use std::time::Instant;

/// A compiled CPU kernel.
pub type KernelFn = unsafe extern "C" fn(*const *mut f32, *const i64, *mut i64, i64, i64);

/// Raw pointers handed to worker threads: each writes a disjoint range.
#[derive(Clone, Copy)]
struct Shared(*const *mut f32, *const i64);
// SAFETY: the threads of one kernel write disjoint index ranges of its
// result and only read other buffers, which no thread writes meanwhile.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

/// Runs kernel `f` over `[0, extent)` of its parallel axis (`None`: one
/// call) on up to `threads` threads. Returns the or-ed error flags.
///
/// # Safety
/// `buffers` and `sizes` must be what `f` was compiled for: one pointer per
/// value with the bound shapes' element counts, and every size in order.
pub unsafe fn launch(
    f: KernelFn,
    extent: Option<i64>,
    threads: usize,
    buffers: *const *mut f32,
    sizes: *const i64,
) -> i64 {
    let shared = Shared(buffers, sizes);
    let total = extent.unwrap_or(1).max(0);
    let n = threads.clamp(1, total.max(1) as usize);
    if n == 1 || extent.is_none() {
        let mut e = 0i64;
        // SAFETY: the caller's contract.
        unsafe { f(shared.0, shared.1, &mut e, 0, total) };
        return e;
    }
    let chunk = (total + n as i64 - 1) / n as i64;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n as i64)
            .map(|t| {
                let (lo, hi) = (t * chunk, ((t + 1) * chunk).min(total));
                scope.spawn(move || {
                    let s = shared;
                    let mut e = 0i64;
                    if lo < hi {
                        // SAFETY: disjoint `[lo, hi)` of the kernel's parallel axis.
                        unsafe { f(s.0, s.1, &mut e, lo, hi) };
                    }
                    e
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(1))
            .fold(0, |a, b| a | b)
    })
}

/// The number of threads to use: all the host has.
pub fn host_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

enum Kernel {
    /// A symbol of the bundle's library, and its parallel extent.
    Native(KernelFn, Option<String>),
    /// The runtime's FFT convolution.
    Fft(Box<crate::fft::ConvSpec>),
    /// The runtime's matrix product.
    Gemm(Box<crate::gemm::GemmSpec>),
}

/// Which kernels a call runs.
#[derive(Clone, Copy, PartialEq)]
enum Phase {
    /// Input-independent kernels, once per prepared buffers.
    Precompute,
    /// The rest, on every call.
    Call,
}

/// A CPU bundle, loaded and ready to run at bound sizes.
pub struct CpuRunner {
    bundle: Bundle,
    // The library must outlive `kernels`.
    _lib: libloading::Library,
    kernels: Vec<(Kernel, bool)>,
    threads: usize,
    bound: Option<Bound>,
    /// Each kernel's parallel extent at the bound sizes, evaluated once per
    /// `prepare` (not on every call), and each FFT kernel's resolved plan.
    extents: Vec<Option<i64>>,
    plans: Vec<Option<crate::fft::Plan>>,
    buffers: Vec<Vec<f32>>,
}

impl CpuRunner {
    pub fn load(bundle: Bundle) -> Result<CpuRunner, String> {
        if bundle.manifest.target != "cpu" {
            return Err(format!(
                "the bundle targets {}, not the CPU",
                bundle.manifest.target
            ));
        }
        let path = bundle.object_path();
        // SAFETY: the library is a mixc CPU bundle: it has no initialisers
        // with side effects and exports only the kernels.
        let lib = unsafe { libloading::Library::new(&path) }
            .map_err(|e| format!("cannot load {}: {e}", path.display()))?;
        let mut kernels = Vec::new();
        for k in &bundle.manifest.kernels {
            match &k.library {
                Some(crate::bundle::Library::FftConv(spec)) => {
                    kernels.push((Kernel::Fft(Box::new(spec.clone())), k.per_call));
                    continue;
                }
                Some(crate::bundle::Library::Gemm(spec)) => {
                    kernels.push((Kernel::Gemm(Box::new(spec.clone())), k.per_call));
                    continue;
                }
                None => {}
            }
            // SAFETY: `mixc build` emits every kernel with the `KernelFn`
            // signature the manifest states.
            let f: libloading::Symbol<KernelFn> = unsafe { lib.get(k.entry.as_bytes()) }
                .map_err(|e| format!("{}: no kernel `{}`: {e}", path.display(), k.entry))?;
            kernels.push((Kernel::Native(*f, k.parallel.clone()), k.per_call));
        }
        Ok(CpuRunner {
            bundle,
            _lib: lib,
            kernels,
            threads: host_threads(),
            bound: None,
            extents: Vec::new(),
            plans: Vec::new(),
            buffers: Vec::new(),
        })
    }

    pub fn set_threads(&mut self, n: usize) {
        self.threads = n.max(1);
    }

    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// Allocates and fills every buffer for sizes `bound` from `seed`, and
    /// runs the input-independent kernels once.
    pub fn prepare(&mut self, bound: Bound, seed: u64, poison: bool) -> Result<(), String> {
        let computed = if poison { f32::NAN } else { 0.0 };
        self.buffers = self.bundle.init_buffers_with(&bound, seed, computed);
        self.extents = self
            .kernels
            .iter()
            .map(|(k, _)| match k {
                Kernel::Native(_, Some(text)) => self.bundle.eval(text, &bound).map(Some),
                _ => Ok(None),
            })
            .collect::<Result<_, _>>()?;
        self.plans = self
            .kernels
            .iter()
            .map(|(k, _)| match k {
                Kernel::Fft(spec) => crate::fft::Plan::new(spec, &bound.sizes).map(Some),
                _ => Ok(None),
            })
            .collect::<Result<_, _>>()?;
        self.bound = Some(bound);
        self.phase(Phase::Precompute)
    }

    /// Runs every per-call kernel once, in order.
    pub fn run(&mut self) -> Result<(), String> {
        self.phase(Phase::Call)
    }

    fn phase(&mut self, phase: Phase) -> Result<(), String> {
        self.phase_timed(phase, &mut |_, _| {})
    }

    /// Runs the kernels of `phase`, reporting each one's index and wall time.
    fn phase_timed(
        &mut self,
        phase: Phase,
        each: &mut dyn FnMut(usize, f64),
    ) -> Result<(), String> {
        let bound = self.bound.as_ref().ok_or("prepare() was not called")?;
        let ptrs: Vec<*mut f32> = self.buffers.iter_mut().map(|b| b.as_mut_ptr()).collect();
        let mut err = 0;
        for (index, (k, per_call)) in self.kernels.iter().enumerate() {
            if *per_call != (phase == Phase::Call) {
                continue;
            }
            let t0 = Instant::now();
            match k {
                Kernel::Native(f, _) => {
                    let extent = self.extents[index];
                    // SAFETY: buffers were allocated from the manifest's
                    // shapes at these sizes, and the sizes are in manifest order.
                    err |= unsafe {
                        launch(
                            *f,
                            extent,
                            self.threads,
                            ptrs.as_ptr(),
                            bound.ordered.as_ptr(),
                        )
                    };
                }
                Kernel::Fft(_) => {
                    let plan = self.plans[index]
                        .as_ref()
                        .ok_or("prepare() was not called")?;
                    // SAFETY: as above; the spec addresses those buffers.
                    unsafe { plan.run(ptrs.as_ptr(), self.threads) }
                }
                // SAFETY: as above; the spec addresses those buffers, and a
                // result never overlaps its operands (distinct values).
                Kernel::Gemm(spec) => unsafe {
                    crate::gemm::run(spec, &bound.sizes, ptrs.as_ptr())?
                },
            }
            each(index, t0.elapsed().as_secs_f64());
        }
        if err != 0 {
            return Err("integer division by zero in a kernel".into());
        }
        Ok(())
    }

    /// The median wall time of each per-call kernel over `reps` calls, in
    /// manifest order (`None` for kernels that run once, in `prepare`).
    pub fn profile(&mut self, reps: usize) -> Result<Vec<Option<f64>>, String> {
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); self.kernels.len()];
        for _ in 0..reps.max(1) {
            self.phase_timed(Phase::Call, &mut |k, t| samples[k].push(t))?;
        }
        Ok(samples
            .into_iter()
            .map(|s| (!s.is_empty()).then(|| Timing::from_samples(s).median))
            .collect())
    }

    /// Runs `warmup` times untimed, then `reps` timed runs.
    pub fn time(&mut self, warmup: usize, reps: usize) -> Result<Timing, String> {
        for _ in 0..warmup {
            self.run()?;
        }
        let mut samples = Vec::new();
        for _ in 0..reps.max(1) {
            let t = Instant::now();
            self.run()?;
            samples.push(t.elapsed().as_secs_f64());
        }
        Ok(Timing::from_samples(samples))
    }

    pub fn output(&self) -> &[f32] {
        &self.buffers[self.bundle.manifest.output]
    }

    /// Bytes held in buffers.
    /// Bytes of the buffers and of the FFT kernels' cached filter spectra.
    pub fn memory_bytes(&self) -> u64 {
        let buffers: u64 = self.buffers.iter().map(|b| b.len() as u64 * 4).sum();
        let spectra: u64 = self.plans.iter().flatten().map(|p| p.cache_bytes()).sum();
        buffers + spectra
    }
}
