//! An NVIDIA GPU as a [`GpuDevice`], through the CUDA driver API (cudarc,
//! loaded at run time: nothing CUDA is needed to build). The runner's
//! logic is in [`crate::gpu`], shared with the PTX emulator.
//!
//! [`driver_present`] must be the first call: cudarc panics if the driver
//! library is missing, so every entry point checks it and returns
//! [`NO_DRIVER`] instead.

use crate::device::{DevPtr, GpuDevice};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream};
use cudarc::driver::{DevicePtr, DriverError, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
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

/// GPU 0 through the CUDA driver: one module, one stream, events for
/// timing.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    module: Option<Arc<CudaModule>>,
    functions: HashMap<String, CudaFunction>,
    /// Every allocation with its device address (read once, when made).
    allocs: Vec<(DevPtr, CudaSlice<u8>)>,
    events: Vec<CudaEvent>,
    sm: u32,
}

impl CudaDevice {
    /// Opens GPU 0, or says why there is none.
    pub fn open() -> Result<CudaDevice, String> {
        if !driver_present() {
            return Err(NO_DRIVER.into());
        }
        let ctx = CudaContext::new(0).map_err(cu)?;
        let (major, minor) = ctx.compute_capability().map_err(cu)?;
        let stream = ctx.default_stream();
        Ok(CudaDevice {
            ctx,
            stream,
            module: None,
            functions: HashMap::new(),
            allocs: Vec::new(),
            events: Vec::new(),
            sm: major as u32 * 10 + minor as u32,
        })
    }

    fn slice(&self, ptr: DevPtr) -> Result<&CudaSlice<u8>, String> {
        self.allocs
            .iter()
            .find(|(p, _)| *p == ptr)
            .map(|(_, s)| s)
            .ok_or_else(|| format!("{ptr:#x} is not an allocation"))
    }
}

impl GpuDevice for CudaDevice {
    fn name(&self) -> String {
        self.ctx.name().unwrap_or_else(|_| "GPU 0".into())
    }

    fn check_target(&self, target: &str, _ptx: &str) -> Result<(), String> {
        let want: u32 = target
            .strip_prefix("sm_")
            .map(|t| t.trim_end_matches('a'))
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        let sm = self.sm;
        if sm < want {
            return Err(format!("the bundle needs sm_{want} but GPU 0 is sm_{sm}"));
        }
        // Architecture-specific PTX (`sm_90a`: wgmma) runs on that
        // architecture only.
        if target.ends_with('a') && want != sm {
            return Err(format!(
                "the bundle's PTX targets sm_{want}a (warpgroup tensor cores), which runs only on sm_{want} GPUs, but GPU 0 is sm_{sm}; build it with --target sm_80 for other GPUs"
            ));
        }
        Ok(())
    }

    fn load(&mut self, ptx: &str, entries: &[String]) -> Result<(), String> {
        let module = self
            .ctx
            .load_module(Ptx::from_src(ptx.to_string()))
            .map_err(cu)?;
        self.functions.clear();
        for e in entries {
            let f = module.load_function(e).map_err(cu)?;
            self.functions.insert(e.clone(), f);
        }
        self.module = Some(module);
        Ok(())
    }

    fn alloc(&mut self, bytes: &[u8]) -> Result<DevPtr, String> {
        let d = if bytes.is_empty() {
            self.stream.alloc_zeros::<u8>(1)
        } else {
            self.stream.clone_htod(bytes)
        }
        .map_err(cu)?;
        let p = d.device_ptr(&self.stream).0;
        self.allocs.push((p, d));
        Ok(p)
    }

    fn free_all(&mut self) {
        self.allocs.clear();
    }

    fn download(&self, ptr: DevPtr) -> Result<Vec<u8>, String> {
        let s = self.slice(ptr)?;
        self.stream.clone_dtoh(s).map_err(cu)
    }

    fn launch(
        &mut self,
        entry: &str,
        grid: [u32; 3],
        block: [u32; 3],
        dyn_shared: u32,
        args: &[u64],
    ) -> Result<(), String> {
        let f = self
            .functions
            .get(entry)
            .ok_or_else(|| format!("kernel `{entry}` was not loaded"))?;
        let cfg = LaunchConfig {
            grid_dim: (grid[0], grid[1], grid[2]),
            block_dim: (block[0], block[1], block[2]),
            shared_mem_bytes: dyn_shared,
        };
        let mut b = self.stream.launch_builder(f);
        for w in args {
            b.arg(w);
        }
        // SAFETY: the runner passes the arguments the manifest's
        // convention names, and the buffers match the bound shapes.
        unsafe { b.launch(cfg) }.map_err(cu)?;
        Ok(())
    }

    fn synchronize(&mut self) -> Result<(), String> {
        self.stream.synchronize().map_err(cu)
    }

    fn record(&mut self) -> Result<usize, String> {
        let e = self
            .stream
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(cu)?;
        self.events.push(e);
        Ok(self.events.len() - 1)
    }

    fn elapsed(&mut self, from: usize, to: usize) -> Result<f64, String> {
        let (a, b) = match (self.events.get(from), self.events.get(to)) {
            (Some(a), Some(b)) => (a, b),
            _ => return Err("no such event".into()),
        };
        b.synchronize().map_err(cu)?;
        Ok(a.elapsed_ms(b).map_err(cu)? as f64 * 1e-3)
    }

    fn clear_events(&mut self) {
        self.events.clear();
    }

    fn free_memory(&mut self) -> Result<Option<u64>, String> {
        let (free, _) = self.ctx.mem_get_info().map_err(cu)?;
        Ok(Some(free as u64))
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
