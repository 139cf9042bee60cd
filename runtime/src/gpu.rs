//! Running a PTX bundle on a [`GpuDevice`]: a CUDA GPU or the PTX
//! emulator. Everything a launch depends on lives here, once, so the
//! emulator exercises the code a GPU run uses: buffers in the bundle's
//! storage types (converted on upload and download), the memref argument
//! words, grids evaluated from the manifest's size expressions, kernels
//! run once in `prepare` (`per_call: false`) or on every call, and the
//! division-by-zero flag.

use crate::bundle::{Args, Bound, Bundle, Timing};
use crate::device::{DevPtr, GpuDevice};

struct Kernel {
    entry: String,
    args: Args,
    /// The grid at the bound sizes, evaluated once per `prepare`.
    dims: [u32; 3],
    per_call: bool,
    grid: [String; 3],
    block: [u32; 3],
}

/// A PTX bundle loaded on a device.
pub struct GpuRunner {
    bundle: Bundle,
    dev: Box<dyn GpuDevice>,
    kernels: Vec<Kernel>,
    bound: Option<Bound>,
    /// Every buffer, in the bundle's storage type.
    buffers: Vec<DevPtr>,
    /// The table of buffer pointers (`args: table`), the sizes and the
    /// error flag.
    table: Option<DevPtr>,
    sizes: Option<DevPtr>,
    err: Option<DevPtr>,
    /// The memref words of every buffer, then of the sizes and the error
    /// flag (for kernels with `args: memref`).
    words: Vec<u64>,
    /// Device memory the run took, measured by the driver when it can.
    used_bytes: u64,
}

/// The memref descriptor words of a buffer of `n` elements at `p`:
/// allocated and aligned pointer, offset, length, stride.
pub fn memref_words(p: u64, n: usize) -> [u64; 5] {
    [p, p, 0, n as u64, 1]
}

impl GpuRunner {
    pub fn load(bundle: Bundle, mut dev: Box<dyn GpuDevice>) -> Result<GpuRunner, String> {
        if !bundle.manifest.target.starts_with("sm_") {
            return Err(format!(
                "the bundle targets {}, not a GPU",
                bundle.manifest.target
            ));
        }
        let ptx = std::fs::read_to_string(bundle.object_path())
            .map_err(|e| format!("{}: {e}", bundle.object_path().display()))?;
        let target = crate::cuda::ptx_target(&ptx)
            .unwrap_or(&bundle.manifest.target)
            .to_string();
        dev.check_target(&target, &ptx)?;
        let mut kernels = Vec::new();
        let narrow = bundle
            .manifest
            .values
            .iter()
            .any(|v| v.dtype != crate::Dtype::F32);
        for k in &bundle.manifest.kernels {
            if narrow && k.args != Args::Memref {
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
            let grid = k
                .grid
                .clone()
                .ok_or_else(|| format!("kernel `{}` has no grid", k.entry))?;
            let block = k
                .block
                .ok_or_else(|| format!("kernel `{}` has no block", k.entry))?;
            kernels.push(Kernel {
                entry: k.entry.clone(),
                args: k.args,
                dims: [0; 3],
                per_call: k.per_call,
                grid,
                block,
            });
        }
        let entries: Vec<String> = kernels.iter().map(|k| k.entry.clone()).collect();
        dev.load(&ptx, &entries)?;
        // The manifest's shared memory is what the PTX declares.
        for k in &bundle.manifest.kernels {
            if let Some(s) = dev.static_shared(&k.entry) {
                if s != k.shared_bytes {
                    return Err(format!(
                        "kernel `{}`: the manifest says {} bytes of shared memory, the PTX declares {s}",
                        k.entry, k.shared_bytes
                    ));
                }
            }
        }
        Ok(GpuRunner {
            bundle,
            dev,
            kernels,
            bound: None,
            buffers: Vec::new(),
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

    pub fn device_name(&self) -> String {
        self.dev.name()
    }

    /// What the emulator executed so far (`None` on a GPU).
    pub fn emu_stats(&self) -> Option<mixc_emu::Stats> {
        self.dev.emu_stats()
    }

    /// Allocates every buffer on the device and uploads the initial values.
    pub fn prepare(&mut self, bound: Bound, seed: u64, poison: bool) -> Result<(), String> {
        self.dev.free_all();
        self.buffers.clear();
        self.table = None;
        let free_before = self.dev.free_memory()?;
        let need = bound.bytes();
        if let Some(free) = free_before {
            if need > free {
                return Err(format!(
                    "out of memory: needs {:.2} GiB, {:.2} GiB free",
                    need as f64 / (1u64 << 30) as f64,
                    free as f64 / (1u64 << 30) as f64
                ));
            }
        }
        let computed = if poison { f32::NAN } else { 0.0 };
        let host = self.bundle.init_buffers_with(&bound, seed, computed);
        let mut lens = Vec::new();
        for (h, &dtype) in host.iter().zip(&bound.dtypes) {
            // A zero-length allocation is not allowed: keep one element.
            let bytes = if h.is_empty() {
                vec![0u8; dtype.bytes()]
            } else {
                dtype.encode(h)
            };
            self.buffers.push(self.dev.alloc(&bytes)?);
            lens.push(h.len().max(1));
        }
        let ptrs = self.buffers.clone();
        let table_bytes: Vec<u8> = ptrs.iter().flat_map(|p| p.to_le_bytes()).collect();
        self.table = Some(self.dev.alloc(&table_bytes)?);
        let size_bytes: Vec<u8> = bound.ordered.iter().flat_map(|v| v.to_le_bytes()).collect();
        let sizes = self.dev.alloc(&size_bytes)?;
        let err = self.dev.alloc(&0i64.to_le_bytes())?;
        self.words.clear();
        for (p, n) in ptrs.iter().copied().zip(lens.iter().copied()) {
            self.words.extend(memref_words(p, n));
        }
        self.words.extend(memref_words(sizes, bound.ordered.len()));
        self.words.extend(memref_words(err, 1));
        self.sizes = Some(sizes);
        self.err = Some(err);
        self.dev.synchronize()?;
        let free_after = self.dev.free_memory()?;
        self.used_bytes = match (free_before, free_after) {
            (Some(a), Some(b)) => a.saturating_sub(b).max(need),
            _ => need,
        };
        for k in self.kernels.iter_mut() {
            for (g, text) in k.dims.iter_mut().zip(&k.grid) {
                let v = self.bundle.eval(text, &bound)?;
                *g = u32::try_from(v.max(0))
                    .map_err(|_| format!("grid dimension {v} is too large"))?;
            }
        }
        self.bound = Some(bound);
        self.launch(false)?;
        self.dev.synchronize()?;
        self.check_err()
    }

    fn launch(&mut self, per_call: bool) -> Result<(), String> {
        self.launch_marked(per_call, &mut |_, _| Ok(()))
    }

    /// Launches the kernels of a phase (`per_call`, or the
    /// input-independent ones that run once in `prepare`), calling `mark`
    /// before each (with its index) and once after the last
    /// (`usize::MAX`).
    fn launch_marked(
        &mut self,
        per_call: bool,
        mark: &mut dyn FnMut(&mut dyn GpuDevice, usize) -> Result<(), String>,
    ) -> Result<(), String> {
        self.bound.as_ref().ok_or("prepare() was not called")?;
        let (table, sizes, err) = match (self.table, self.sizes, self.err) {
            (Some(t), Some(s), Some(e)) => (t, s, e),
            _ => return Err("prepare() was not called".into()),
        };
        for (index, k) in self.kernels.iter().enumerate() {
            if k.per_call != per_call {
                continue;
            }
            mark(self.dev.as_mut(), index)?;
            if k.dims.contains(&0) {
                continue;
            }
            let table_args = [table, sizes, err];
            let args: &[u64] = match k.args {
                Args::Table => &table_args,
                Args::Memref => &self.words,
            };
            // Static shared memory is part of the PTX: no dynamic bytes.
            self.dev
                .launch(&k.entry, k.dims, k.block, 0, args)
                .map_err(|e| format!("kernel `{}`: {e}", k.entry))?;
        }
        mark(self.dev.as_mut(), usize::MAX)
    }

    /// The median time of each per-call kernel over `reps` calls (events
    /// between launches), in manifest order; `None` for kernels that run
    /// once, in `prepare`.
    pub fn profile(&mut self, reps: usize) -> Result<Vec<Option<f64>>, String> {
        let n = self.kernels.len();
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); n];
        for _ in 0..reps.max(1) {
            let mut events: Vec<(usize, usize)> = Vec::new();
            self.dev.clear_events();
            self.launch_marked(true, &mut |dev, k| {
                events.push((k, dev.record()?));
                Ok(())
            })?;
            for w in events.windows(2) {
                samples[w[0].0].push(self.dev.elapsed(w[0].1, w[1].1)?);
            }
        }
        self.dev.clear_events();
        self.check_err()?;
        Ok(samples
            .into_iter()
            .map(|s| (!s.is_empty()).then(|| Timing::from_samples(s).median))
            .collect())
    }

    fn check_err(&mut self) -> Result<(), String> {
        let err = self.err.ok_or("prepare() was not called")?;
        let e = self.dev.download(err)?;
        if e.iter().any(|b| *b != 0) {
            return Err("integer division by zero in a kernel".into());
        }
        Ok(())
    }

    /// Runs every kernel once and waits for them.
    pub fn run(&mut self) -> Result<(), String> {
        self.launch(true)?;
        self.dev.synchronize()?;
        self.check_err()
    }

    /// `warmup` untimed runs, then `reps` runs each timed with events.
    pub fn time(&mut self, warmup: usize, reps: usize) -> Result<Timing, String> {
        for _ in 0..warmup {
            self.launch(true)?;
        }
        let mut samples = Vec::new();
        for _ in 0..reps.max(1) {
            self.dev.clear_events();
            let start = self.dev.record()?;
            self.launch(true)?;
            let end = self.dev.record()?;
            samples.push(self.dev.elapsed(start, end)?);
        }
        self.dev.clear_events();
        self.check_err()?;
        Ok(Timing::from_samples(samples))
    }

    pub fn output(&self) -> Result<Vec<f32>, String> {
        let out = self.buffers[self.bundle.manifest.output];
        let bytes = self.dev.download(out)?;
        let bound = self.bound.as_ref().ok_or("prepare() was not called")?;
        let mut v = bound.dtypes[self.bundle.manifest.output].decode(&bytes);
        v.truncate(bound.elements(self.bundle.manifest.output));
        Ok(v)
    }

    /// Device memory the run holds (the driver's count, at least the
    /// buffers).
    pub fn memory_bytes(&self) -> u64 {
        self.used_bytes
    }
}
