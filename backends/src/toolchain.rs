//! Where the toolchain's files are (a leaf: every back end may use it).

use std::path::PathBuf;

/// Where `scripts/setup.sh` puts libdevice.
pub fn libdevice_path() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../.tools/python/nvidia/cuda_nvcc/nvvm/libdevice/libdevice.10.bc")
}

/// Timings of one compile-and-run on the host.
#[derive(Clone, Copy, Debug)]
pub struct CpuRun {
    pub compile_seconds: f64,
    pub run_seconds: f64,
}
