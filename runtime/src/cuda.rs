//! Running PTX bundles on an NVIDIA GPU through the CUDA driver API
//! (cudarc, loaded at run time: nothing CUDA is needed to build).
//!
//! [`driver_present`] must be the first call: cudarc panics if the driver
//! library is missing, so every entry point checks it and returns
//! [`NO_DRIVER`] instead.

use crate::bundle::{Bound, Bundle, Timing};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig};
use cudarc::driver::{DriverError, PushKernelArg};
use cudarc::nvrtc::Ptx;
use std::sync::Arc;

/// What every GPU entry point says when there is no driver.
pub const NO_DRIVER: &str = "no NVIDIA driver found; use --device cpu";

/// Whether the CUDA driver library can be loaded.
pub fn driver_present() -> bool {
    // SAFETY: only tries to open the driver library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

fn cu(e: DriverError) -> String {
    format!("CUDA: {e}")
}

/// The GPU's name and compute capability (`sm_90`), or why there is none.
pub fn device_info() -> Result<(String, String), String> {
    if !driver_present() {
        return Err(NO_DRIVER.into());
    }
    let ctx = CudaContext::new(0).map_err(cu)?;
    let (major, minor) = ctx.compute_capability().map_err(cu)?;
    Ok((ctx.name().map_err(cu)?, format!("sm_{major}{minor}")))
}

struct Kernel {
    f: CudaFunction,
    args: crate::bundle::Args,
    /// The grid at the bound sizes, evaluated once per `prepare`.
    dims: [u32; 3],
    per_call: bool,
    grid: [String; 3],
    block: [u32; 3],
    shared: u32,
}

/// A PTX bundle loaded on GPU 0.
pub struct GpuRunner {
    bundle: Bundle,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    kernels: Vec<Kernel>,
    bound: Option<Bound>,
    /// Every buffer's bytes, in the bundle's storage type.
    buffers: Vec<CudaSlice<u8>>,
    /// Elements of every buffer (the memref size words).
    lens: Vec<usize>,
    table: Option<CudaSlice<u64>>,
    sizes: Option<CudaSlice<i64>>,
    err: Option<CudaSlice<i64>>,
    /// The memref words of every buffer, then of the sizes and the error
    /// flag (for kernels with `args: memref`).
    words: Vec<u64>,
    /// Device memory the run took, measured by the driver.
    used_bytes: u64,
}

impl GpuRunner {
    pub fn load(bundle: Bundle) -> Result<GpuRunner, String> {
        if !driver_present() {
            return Err(NO_DRIVER.into());
        }
        if !bundle.manifest.target.starts_with("sm_") {
            return Err(format!(
                "the bundle targets {}, not a GPU",
                bundle.manifest.target
            ));
        }
        let ctx = CudaContext::new(0).map_err(cu)?;
        let (major, minor) = ctx.compute_capability().map_err(cu)?;
        let want: u32 = bundle.manifest.target[3..].parse().unwrap_or(0);
        if major as u32 * 10 + (minor as u32) < want {
            return Err(format!(
                "the bundle needs {} but GPU 0 is sm_{major}{minor}",
                bundle.manifest.target
            ));
        }
        let ptx = std::fs::read_to_string(bundle.object_path())
            .map_err(|e| format!("{}: {e}", bundle.object_path().display()))?;
        // Architecture-specific PTX (`sm_90a`: wgmma) runs on that
        // architecture only.
        if let Some(exact) = specific_target(&ptx) {
            if exact != major as u32 * 10 + minor as u32 {
                return Err(format!(
                    "the bundle's PTX targets sm_{exact}a (warpgroup tensor cores), which runs only on sm_{exact} GPUs, but GPU 0 is sm_{major}{minor}; build it with --target sm_80 for other GPUs"
                ));
            }
        }
        let module = ctx.load_module(Ptx::from_src(ptx)).map_err(cu)?;
        let mut kernels = Vec::new();
        for k in &bundle.manifest.kernels {
            let narrow = bundle
                .manifest
                .values
                .iter()
                .any(|v| v.dtype != crate::Dtype::F32);
            if narrow && k.args != crate::bundle::Args::Memref {
                return Err(format!(
                    "kernel `{}` takes f32 pointers, but the bundle stores {}",
                    k.entry,
                    bundle.dtype()
                ));
            }
            if k.library.is_some() {
                return Err(format!(
                    "kernel `{}` is a CPU library kernel; this bundle is not for a GPU",
                    k.entry
                ));
            }
            let f = module.load_function(&k.entry).map_err(cu)?;
            let grid = k
                .grid
                .clone()
                .ok_or_else(|| format!("kernel `{}` has no grid", k.entry))?;
            let block = k
                .block
                .ok_or_else(|| format!("kernel `{}` has no block", k.entry))?;
            kernels.push(Kernel {
                f,
                args: k.args,
                dims: [0; 3],
                per_call: k.per_call,
                grid,
                block,
                shared: k.shared_bytes,
            });
        }
        let stream = ctx.default_stream();
        Ok(GpuRunner {
            bundle,
            ctx,
            stream,
            kernels,
            bound: None,
            buffers: Vec::new(),
            lens: Vec::new(),
            table: None,
            sizes: None,
            err: None,
            words: Vec::new(),
            used_bytes: 0,
        })
    }

    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// The GPU's name.
    pub fn device_name(&self) -> String {
        self.ctx.name().unwrap_or_else(|_| "GPU 0".into())
    }

    /// Allocates every buffer on the device and uploads the initial values.
    pub fn prepare(&mut self, bound: Bound, seed: u64, poison: bool) -> Result<(), String> {
        self.buffers.clear();
        self.table = None;
        let (free_before, _) = self.ctx.mem_get_info().map_err(cu)?;
        let need = bound.bytes();
        if need > free_before as u64 {
            return Err(format!(
                "out of memory: needs {:.2} GiB, {:.2} GiB free",
                need as f64 / (1u64 << 30) as f64,
                free_before as f64 / (1u64 << 30) as f64
            ));
        }
        let computed = if poison { f32::NAN } else { 0.0 };
        let host = self.bundle.init_buffers_with(&bound, seed, computed);
        self.lens.clear();
        for (h, &dtype) in host.iter().zip(&bound.dtypes) {
            // A zero-length allocation is not allowed: keep one element.
            let d = if h.is_empty() {
                self.stream.alloc_zeros::<u8>(dtype.bytes())
            } else {
                self.stream.clone_htod(&dtype.encode(h))
            }
            .map_err(cu)?;
            self.buffers.push(d);
            self.lens.push(h.len().max(1));
        }
        let ptrs: Vec<u64> = self
            .buffers
            .iter()
            .map(|b| {
                let (p, _sync) = b.device_ptr(&self.stream);
                p
            })
            .collect();
        self.table = Some(self.stream.clone_htod(&ptrs).map_err(cu)?);
        let sizes = self.stream.clone_htod(&bound.ordered).map_err(cu)?;
        let err = self.stream.alloc_zeros::<i64>(1).map_err(cu)?;
        self.words.clear();
        for (p, n) in ptrs.iter().copied().zip(self.lens.iter().copied()) {
            self.words.extend([p, p, 0, n as u64, 1]);
        }
        for (p, n) in [
            (sizes.device_ptr(&self.stream).0, bound.ordered.len()),
            (err.device_ptr(&self.stream).0, 1),
        ] {
            self.words.extend([p, p, 0, n as u64, 1]);
        }
        self.sizes = Some(sizes);
        self.err = Some(err);
        self.stream.synchronize().map_err(cu)?;
        let (free_after, _) = self.ctx.mem_get_info().map_err(cu)?;
        self.used_bytes = (free_before.saturating_sub(free_after) as u64).max(need);
        for k in self.kernels.iter_mut() {
            for (g, text) in k.dims.iter_mut().zip(&k.grid) {
                let v = self.bundle.eval(text, &bound)?;
                *g = u32::try_from(v.max(0))
                    .map_err(|_| format!("grid dimension {v} is too large"))?;
            }
        }
        self.bound = Some(bound);
        self.launch(false)?;
        self.stream.synchronize().map_err(cu)?;
        self.check_err()
    }

    /// Launches the per-call kernels (`per_call`), or the input-independent
    /// ones that run once when the buffers are prepared.
    fn launch_all(&mut self) -> Result<(), String> {
        self.launch(true)
    }

    fn launch(&mut self, per_call: bool) -> Result<(), String> {
        self.launch_marked(per_call, &mut |_, _| Ok(()))
    }

    /// Launches the kernels of a phase, calling `mark` before each (with
    /// its index) and once after the last (with `usize::MAX`).
    fn launch_marked(
        &mut self,
        per_call: bool,
        mark: &mut dyn FnMut(&CudaStream, usize) -> Result<(), String>,
    ) -> Result<(), String> {
        self.bound.as_ref().ok_or("prepare() was not called")?;
        let (table, sizes, err) = match (&self.table, &self.sizes, &self.err) {
            (Some(t), Some(s), Some(e)) => (t, s, e),
            _ => return Err("prepare() was not called".into()),
        };
        for (index, k) in self.kernels.iter().enumerate() {
            if k.per_call != per_call {
                continue;
            }
            mark(&self.stream, index)?;
            let grid = k.dims;
            if grid.contains(&0) {
                continue;
            }
            let cfg = LaunchConfig {
                grid_dim: (grid[0], grid[1], grid[2]),
                block_dim: (k.block[0], k.block[1], k.block[2]),
                shared_mem_bytes: 0,
            };
            let _ = k.shared; // static shared memory is part of the PTX
            let mut b = self.stream.launch_builder(&k.f);
            match k.args {
                crate::bundle::Args::Table => {
                    b.arg(table).arg(sizes).arg(err);
                }
                crate::bundle::Args::Memref => {
                    for w in &self.words {
                        b.arg(w);
                    }
                }
            }
            // SAFETY: the kernel takes the arguments the manifest's
            // convention names, and the buffers match the bound shapes.
            unsafe { b.launch(cfg) }.map_err(cu)?;
        }
        mark(&self.stream, usize::MAX)
    }

    /// The median time of each per-call kernel over `reps` calls (CUDA
    /// events between launches), in manifest order; `None` for kernels
    /// that run once, in `prepare`.
    pub fn profile(&mut self, reps: usize) -> Result<Vec<Option<f64>>, String> {
        let n = self.kernels.len();
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); n];
        for _ in 0..reps.max(1) {
            let mut events: Vec<(usize, cudarc::driver::CudaEvent)> = Vec::new();
            self.launch_marked(true, &mut |stream, k| {
                let e = stream
                    .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                    .map_err(cu)?;
                events.push((k, e));
                Ok(())
            })?;
            if let Some((_, last)) = events.last() {
                last.synchronize().map_err(cu)?;
            }
            for w in events.windows(2) {
                let ms = w[0].1.elapsed_ms(&w[1].1).map_err(cu)?;
                samples[w[0].0].push(ms as f64 * 1e-3);
            }
        }
        self.check_err()?;
        Ok(samples
            .into_iter()
            .map(|s| (!s.is_empty()).then(|| Timing::from_samples(s).median))
            .collect())
    }

    fn check_err(&mut self) -> Result<(), String> {
        let err = self.err.as_ref().ok_or("prepare() was not called")?;
        let e = self.stream.clone_dtoh(err).map_err(cu)?;
        if e.first().copied().unwrap_or(0) != 0 {
            return Err("integer division by zero in a kernel".into());
        }
        Ok(())
    }

    /// Runs every kernel once and waits for them.
    pub fn run(&mut self) -> Result<(), String> {
        self.launch_all()?;
        self.stream.synchronize().map_err(cu)?;
        self.check_err()
    }

    /// `warmup` untimed runs, then `reps` runs each timed with CUDA events.
    pub fn time(&mut self, warmup: usize, reps: usize) -> Result<Timing, String> {
        for _ in 0..warmup {
            self.launch_all()?;
        }
        let mut samples = Vec::new();
        for _ in 0..reps.max(1) {
            let start = self
                .stream
                .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(cu)?;
            self.launch_all()?;
            let end = self
                .stream
                .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(cu)?;
            end.synchronize().map_err(cu)?;
            samples.push(start.elapsed_ms(&end).map_err(cu)? as f64 * 1e-3);
        }
        self.check_err()?;
        Ok(Timing::from_samples(samples))
    }

    pub fn output(&self) -> Result<Vec<f32>, String> {
        let out = &self.buffers[self.bundle.manifest.output];
        let bytes = self.stream.clone_dtoh(out).map_err(cu)?;
        let bound = self.bound.as_ref().ok_or("prepare() was not called")?;
        let mut v = bound.dtypes[self.bundle.manifest.output].decode(&bytes);
        v.truncate(bound.elements(self.bundle.manifest.output));
        Ok(v)
    }

    /// Device memory the run holds (the driver's count, at least the buffers).
    pub fn memory_bytes(&self) -> u64 {
        self.used_bytes
    }
}

/// The architecture PTX's `.target` names (`sm_90`, `sm_90a`), without
/// its options.
pub fn ptx_target(ptx: &str) -> Option<&str> {
    ptx.lines()
        .find_map(|l| l.trim().strip_prefix(".target "))?
        .split([',', ' '])
        .next()
        .map(str::trim)
}

/// The architecture of PTX whose `.target` is an architecture-specific
/// variant (`sm_90a` gives 90), or `None` for portable PTX.
pub fn specific_target(ptx: &str) -> Option<u32> {
    ptx_target(ptx)?
        .strip_prefix("sm_")?
        .strip_suffix('a')?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn architecture_specific_ptx_is_recognised() {
        let ptx = "//\n.version 8.0\n.target sm_90a\n.address_size 64\n";
        assert_eq!(super::specific_target(ptx), Some(90));
        assert_eq!(super::specific_target(".target sm_90\n"), None);
        assert_eq!(super::specific_target(".target sm_80, debug\n"), None);
        assert_eq!(super::specific_target("no target"), None);
    }
}
