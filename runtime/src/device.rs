//! The device interface a GPU bundle runs through: allocate and fill
//! buffers, read them back, load the PTX module, launch a kernel with its
//! parameter words, and time with events. Two implementations: a CUDA GPU
//! through the driver API ([`crate::cuda::CudaDevice`]) and the PTX
//! emulator ([`EmuDevice`]), so the runner's code ([`crate::gpu`]) is the
//! same on both.

use mixc_emu::{Machine, ModuleId, Stats};

/// What the emulator counts: instructions executed and seconds.
pub use mixc_emu::Stats as EmuStats;
use std::time::Instant;

/// A device address.
pub type DevPtr = u64;

/// Where a GPU bundle runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// The device the bundle's target names: the host for a CPU bundle,
    /// GPU 0 for a GPU bundle.
    #[default]
    Native,
    /// The PTX emulator (`mixc-emu`): correctness on any machine, timings
    /// that are not GPU timings.
    Emu,
}

impl Device {
    /// Parses `cpu`, `gpu`, `cuda`, `native` or `emu`.
    pub fn parse(s: &str) -> Result<Device, String> {
        match s {
            "native" | "cpu" | "gpu" | "cuda" | "auto" => Ok(Device::Native),
            "emu" => Ok(Device::Emu),
            _ => Err(format!("unknown device `{s}` (known: native, emu)")),
        }
    }
}

/// What a GPU runner needs from a device.
pub trait GpuDevice {
    /// The device's name for reports.
    fn name(&self) -> String;
    /// Whether PTX for `target` (its `.target`, e.g. `sm_90a`) runs here.
    fn check_target(&self, target: &str, ptx: &str) -> Result<(), String>;
    /// Loads the module every later launch takes its kernels from.
    fn load(&mut self, ptx: &str, entries: &[String]) -> Result<(), String>;
    /// Static shared memory the module declares for `entry`, if known.
    fn static_shared(&self, _entry: &str) -> Option<u32> {
        None
    }
    /// A new allocation holding `bytes` (at least one byte).
    fn alloc(&mut self, bytes: &[u8]) -> Result<DevPtr, String>;
    /// Frees every allocation.
    fn free_all(&mut self);
    /// The whole allocation at `ptr`.
    fn download(&self, ptr: DevPtr) -> Result<Vec<u8>, String>;
    /// Launches `entry` with one 64-bit word per kernel parameter.
    fn launch(
        &mut self,
        entry: &str,
        grid: [u32; 3],
        block: [u32; 3],
        dyn_shared: u32,
        args: &[u64],
    ) -> Result<(), String>;
    fn synchronize(&mut self) -> Result<(), String>;
    /// Records an event on the launch stream; returns its index.
    fn record(&mut self) -> Result<usize, String>;
    /// Seconds between two recorded events (waits for the later one).
    fn elapsed(&mut self, from: usize, to: usize) -> Result<f64, String>;
    fn clear_events(&mut self);
    /// Free device memory, if the device counts it.
    fn free_memory(&mut self) -> Result<Option<u64>, String>;
    /// What the emulator executed, for reports (`None` on a GPU).
    fn emu_stats(&self) -> Option<Stats> {
        None
    }
}

/// The PTX emulator as a device. Launches run synchronously; events are
/// host clock readings, so its timings measure the emulator.
pub struct EmuDevice {
    machine: Machine,
    module: Option<ModuleId>,
    allocs: Vec<DevPtr>,
    events: Vec<Instant>,
}

impl Default for EmuDevice {
    fn default() -> Self {
        EmuDevice::new()
    }
}

impl EmuDevice {
    pub fn new() -> EmuDevice {
        EmuDevice {
            machine: Machine::new(),
            module: None,
            allocs: Vec::new(),
            events: Vec::new(),
        }
    }
}

/// What `Runner::device` says for the emulator.
pub const EMU_NAME: &str = "ptx emulator (not GPU timing)";

impl GpuDevice for EmuDevice {
    fn name(&self) -> String {
        EMU_NAME.into()
    }

    fn check_target(&self, target: &str, _ptx: &str) -> Result<(), String> {
        match target {
            "sm_80" | "sm_86" | "sm_89" | "sm_90" | "sm_90a" => Ok(()),
            t => Err(format!(
                "the emulator runs PTX for sm_80 to sm_90a, not {t}"
            )),
        }
    }

    fn load(&mut self, ptx: &str, entries: &[String]) -> Result<(), String> {
        let id = self
            .machine
            .load(ptx)
            .map_err(|e| format!("the emulator cannot run this PTX: {e}"))?;
        for e in entries {
            if self.machine.module(id).kernel(e).is_none() {
                return Err(format!("the PTX has no kernel `{e}`"));
            }
        }
        self.module = Some(id);
        Ok(())
    }

    fn static_shared(&self, entry: &str) -> Option<u32> {
        let id = self.module?;
        self.machine
            .module(id)
            .kernel(entry)
            .map(|k| k.shared_bytes)
    }

    fn alloc(&mut self, bytes: &[u8]) -> Result<DevPtr, String> {
        let p = self.machine.mem.alloc(bytes.len());
        self.machine.mem.write(p, bytes)?;
        self.allocs.push(p);
        Ok(p)
    }

    fn free_all(&mut self) {
        for p in self.allocs.drain(..) {
            let _ = self.machine.mem.free(p);
        }
    }

    fn download(&self, ptr: DevPtr) -> Result<Vec<u8>, String> {
        let len = self
            .machine
            .mem
            .len_of(ptr)
            .ok_or_else(|| format!("{ptr:#x} is not an allocation"))?;
        let mut v = vec![0; len];
        self.machine.mem.read_into(ptr, &mut v)?;
        Ok(v)
    }

    fn launch(
        &mut self,
        entry: &str,
        grid: [u32; 3],
        block: [u32; 3],
        dyn_shared: u32,
        args: &[u64],
    ) -> Result<(), String> {
        let id = self.module.ok_or("no module loaded")?;
        self.machine
            .launch(id, entry, grid, block, dyn_shared, args)
            .map(|_| ())
            .map_err(|e| format!("ptx emulator: {e}"))
    }

    fn synchronize(&mut self) -> Result<(), String> {
        Ok(())
    }

    fn record(&mut self) -> Result<usize, String> {
        self.events.push(Instant::now());
        Ok(self.events.len() - 1)
    }

    fn elapsed(&mut self, from: usize, to: usize) -> Result<f64, String> {
        match (self.events.get(from), self.events.get(to)) {
            (Some(a), Some(b)) => Ok(b.duration_since(*a).as_secs_f64()),
            _ => Err("no such event".into()),
        }
    }

    fn clear_events(&mut self) {
        self.events.clear();
    }

    fn free_memory(&mut self) -> Result<Option<u64>, String> {
        Ok(None)
    }

    fn emu_stats(&self) -> Option<Stats> {
        Some(self.machine.stats)
    }
}
