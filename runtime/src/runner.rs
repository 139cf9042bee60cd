//! One interface over the CPU and GPU runners: load a bundle for its
//! target, bind sizes, fill buffers from the seed, run, time, read back.
//! A GPU bundle runs on GPU 0 or, with [`Device::Emu`], on the PTX
//! emulator through the same runner code.

use crate::bundle::{Bound, Bundle, Timing};
use crate::cpu::CpuRunner;
pub use crate::device::Device;
use crate::device::EmuDevice;
use crate::gpu::GpuRunner;
use std::collections::BTreeMap;
use std::path::Path;

pub enum Runner {
    Cpu(Box<CpuRunner>),
    Gpu(Box<GpuRunner>),
}

impl Runner {
    /// Loads the bundle in `dir` on the device its target names.
    pub fn open(dir: &Path) -> Result<Runner, String> {
        Runner::for_bundle(Bundle::load(dir)?)
    }

    pub fn for_bundle(bundle: Bundle) -> Result<Runner, String> {
        Runner::for_bundle_on(bundle, Device::Native)
    }

    /// Loads the bundle in `dir` on `device`.
    pub fn open_on(dir: &Path, device: Device) -> Result<Runner, String> {
        Runner::for_bundle_on(Bundle::load(dir)?, device)
    }

    /// Loads a bundle on `device`: [`Device::Emu`] runs a GPU bundle on
    /// the PTX emulator.
    pub fn for_bundle_on(bundle: Bundle, device: Device) -> Result<Runner, String> {
        match (bundle.manifest.target.as_str(), device) {
            ("cpu", Device::Native) => Ok(Runner::Cpu(Box::new(CpuRunner::load(bundle)?))),
            ("cpu", Device::Emu) => {
                Err("the PTX emulator runs GPU bundles; this bundle targets the CPU".into())
            }
            (_, Device::Native) => {
                let dev = crate::cuda::CudaDevice::open().map_err(|e| {
                    if e == crate::cuda::NO_DRIVER {
                        "no NVIDIA driver found; this GPU bundle runs on the PTX emulator with --device emu (not GPU timing)".to_string()
                    } else {
                        e
                    }
                })?;
                Ok(Runner::Gpu(Box::new(GpuRunner::load(
                    bundle,
                    Box::new(dev),
                )?)))
            }
            (_, Device::Emu) => Ok(Runner::Gpu(Box::new(GpuRunner::load(
                bundle,
                Box::new(EmuDevice::new()),
            )?))),
        }
    }

    /// What the PTX emulator executed so far: `None` on other devices.
    pub fn emu_stats(&self) -> Option<mixc_emu::Stats> {
        match self {
            Runner::Cpu(_) => None,
            Runner::Gpu(r) => r.emu_stats(),
        }
    }

    pub fn bundle(&self) -> &Bundle {
        match self {
            Runner::Cpu(r) => r.bundle(),
            Runner::Gpu(r) => r.bundle(),
        }
    }

    /// `cpu (N threads)`, the GPU's name, or the emulator's (which says
    /// its timings are not GPU timings).
    pub fn device(&self) -> String {
        match self {
            Runner::Cpu(_) => format!("cpu ({} threads)", crate::cpu::host_threads()),
            Runner::Gpu(r) => r.device_name(),
        }
    }

    /// Binds the free sizes and prepares buffers filled from `seed`.
    pub fn prepare(&mut self, free: &BTreeMap<String, i64>, seed: u64) -> Result<Bound, String> {
        self.prepare_with(free, seed, false)
    }

    /// As [`Runner::prepare`], computed buffers poisoned with NaN: a value
    /// no kernel writes then shows in the output.
    pub fn prepare_poisoned(
        &mut self,
        free: &BTreeMap<String, i64>,
        seed: u64,
    ) -> Result<Bound, String> {
        self.prepare_with(free, seed, true)
    }

    fn prepare_with(
        &mut self,
        free: &BTreeMap<String, i64>,
        seed: u64,
        poison: bool,
    ) -> Result<Bound, String> {
        let bound = self.bundle().bind(free)?;
        match self {
            Runner::Cpu(r) => r.prepare(bound.clone(), seed, poison)?,
            Runner::Gpu(r) => r.prepare(bound.clone(), seed, poison)?,
        }
        Ok(bound)
    }

    pub fn run(&mut self) -> Result<(), String> {
        match self {
            Runner::Cpu(r) => r.run(),
            Runner::Gpu(r) => r.run(),
        }
    }

    pub fn time(&mut self, warmup: usize, reps: usize) -> Result<Timing, String> {
        match self {
            Runner::Cpu(r) => r.time(warmup, reps),
            Runner::Gpu(r) => r.time(warmup, reps),
        }
    }

    /// The median time of each per-call kernel, in manifest order.
    pub fn profile(&mut self, reps: usize) -> Result<Vec<Option<f64>>, String> {
        match self {
            Runner::Cpu(r) => r.profile(reps),
            Runner::Gpu(r) => r.profile(reps),
        }
    }

    pub fn output(&self) -> Result<Vec<f32>, String> {
        match self {
            Runner::Cpu(r) => Ok(r.output().to_vec()),
            Runner::Gpu(r) => r.output(),
        }
    }

    pub fn memory_bytes(&self) -> u64 {
        match self {
            Runner::Cpu(r) => r.memory_bytes(),
            Runner::Gpu(r) => r.memory_bytes(),
        }
    }
}
