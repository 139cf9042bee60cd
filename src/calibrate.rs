//! `mixc calibrate`: the host's cost profile, measured
//! ([`mixc_runtime::calibrate`]) and cached per machine, so the CPU
//! roofline (`mixc bench`'s roofline %, `mixc explain --device cpu`'s
//! estimates) is this machine's and not a nominal one.

use anyhow::{anyhow, Result};
use mixc_opt::Profile;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The cache file: the profile and the machine it was measured on.
#[derive(Serialize, Deserialize)]
struct Cached {
    machine: String,
    profile: Profile,
}

fn path() -> PathBuf {
    crate::build::cache_dir().join("host-profile.json")
}

/// What identifies the machine a measurement holds for: the CPU model and
/// the thread count.
fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    format!("{model}, {} threads", mixc_runtime::cpu::host_threads())
}

/// The nominal profile's ratio of elementwise to matrix flops, kept for
/// the measured one (the probe measures FMA throughput only).
fn elementwise_ratio(nominal: &Profile) -> f64 {
    nominal.elementwise_flops / nominal.peak_flops
}

/// Measures the host and caches the profile.
fn measure_and_cache() -> Result<Profile> {
    let nominal = Profile::named("cpu").map_err(|e| anyhow!(e))?;
    let r = mixc_runtime::calibrate::measure();
    let ratio = elementwise_ratio(&nominal);
    let profile = Profile {
        name: "cpu (measured)".into(),
        description: format!(
            "measured by `mixc calibrate` on {}: f32 FMA peak {:.1} GFLOP/s ({}), STREAM triad {:.1} GB/s, launch {:.1} us; elementwise rate {ratio} of the FMA peak (the nominal profile's ratio, not measured)",
            machine(),
            r.fma_flops / 1e9,
            r.isa,
            r.bandwidth / 1e9,
            r.launch_seconds * 1e6,
        ),
        peak_flops: r.fma_flops,
        elementwise_flops: r.fma_flops * ratio,
        bandwidth: r.bandwidth,
        launch_seconds: r.launch_seconds,
        ..nominal
    };
    let p = path();
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let cached = Cached {
        machine: machine(),
        profile: profile.clone(),
    };
    std::fs::write(&p, serde_json::to_string_pretty(&cached)?)?;
    Ok(profile)
}

/// The cached measurement for this machine, if there is one.
fn cached() -> Option<Profile> {
    let text = std::fs::read_to_string(path()).ok()?;
    let c: Cached = serde_json::from_str(&text).ok()?;
    (c.machine == machine()).then_some(c.profile)
}

/// The host profile: the cached measurement, else (with `measure`) one
/// taken now and cached, else the nominal profile.
pub fn host_profile(measure: bool) -> Result<Profile> {
    if let Some(p) = cached() {
        return Ok(p);
    }
    if measure {
        eprintln!("note: measuring this machine for the CPU cost profile (once; `mixc calibrate` redoes it)");
        return measure_and_cache();
    }
    Profile::named("cpu").map_err(|e| anyhow!(e))
}

/// `mixc calibrate`: measure, cache, print.
pub fn run() -> Result<()> {
    let p = measure_and_cache()?;
    println!("{}", p.description);
    println!("wrote {}", path().display());
    Ok(())
}
