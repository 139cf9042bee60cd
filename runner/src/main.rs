//! `mixc-runner`: runs and times a bundle that `mixc build` wrote, on a
//! machine that has a GPU driver (or just a CPU) and nothing else: no
//! compiler, no LLVM, no MLIR (`cargo tree -p mixc-runner` shows it).
//!
//! ```text
//! mixc-runner BUNDLE_DIR [--set B=1,L=4096] [--seed N] [--warmup N] [--reps N] [--profile]
//!                        [--check FILE] [--json] [--device native|emu]
//! ```
//!
//! `--device emu` runs a GPU bundle on the PTX emulator (`mixc-emu`)
//! through the same launch code: a check of the bundle on any machine,
//! whose timings are the emulator's, not a GPU's.
//!
//! It prints the device, the bound sizes, the median time with min and max,
//! the device memory taken, and the output's mean, std and checksum (the
//! same checksum `mixc run` prints, so outputs can be compared across
//! machines). `--check FILE` compares the output with a raw little-endian
//! f32 file and prints the relative error.

use mixc_runtime::runner::{Device, Runner};
use mixc_runtime::Tensor;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

struct Args {
    dir: PathBuf,
    sizes: BTreeMap<String, i64>,
    seed: u64,
    warmup: usize,
    reps: usize,
    check: Option<PathBuf>,
    save: Option<PathBuf>,
    json: bool,
    profile: bool,
    device: Device,
}

const USAGE: &str = "usage: mixc-runner BUNDLE_DIR [--set B=1,L=4096] [--seed N] [--warmup N] [--reps N] [--check FILE] [--save FILE] [--profile] [--json] [--device native|emu]";

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        dir: PathBuf::new(),
        sizes: BTreeMap::new(),
        seed: 0,
        warmup: 3,
        reps: 20,
        check: None,
        save: None,
        json: false,
        profile: false,
        device: Device::Native,
    };
    let mut dir = None;
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--set" => {
                for kv in value("--set")?.split(',').filter(|s| !s.is_empty()) {
                    let (k, v) = kv
                        .split_once('=')
                        .ok_or_else(|| format!("--set expects NAME=VALUE, got `{kv}`"))?;
                    let v: i64 = v
                        .trim()
                        .parse()
                        .map_err(|_| format!("--set {k}: `{v}` is not an integer"))?;
                    a.sizes.insert(k.trim().to_string(), v);
                }
            }
            "--seed" => a.seed = num(&value("--seed")?, "--seed")?,
            "--warmup" => a.warmup = num(&value("--warmup")?, "--warmup")? as usize,
            "--reps" => a.reps = num(&value("--reps")?, "--reps")? as usize,
            "--check" => a.check = Some(PathBuf::from(value("--check")?)),
            "--save" => a.save = Some(PathBuf::from(value("--save")?)),
            "--json" => a.json = true,
            "--device" => a.device = Device::parse(&value("--device")?)?,
            "--profile" => a.profile = true,
            "-h" | "--help" => return Err(USAGE.into()),
            s if s.starts_with('-') => return Err(format!("unknown option `{s}`\n{USAGE}")),
            s => {
                if dir.replace(PathBuf::from(s)).is_some() {
                    return Err(format!("one bundle at a time\n{USAGE}"));
                }
            }
        }
    }
    a.dir = dir.ok_or_else(|| USAGE.to_string())?;
    Ok(a)
}

fn num(s: &str, name: &str) -> Result<u64, String> {
    s.parse()
        .map_err(|_| format!("{name}: `{s}` is not a non-negative integer"))
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn run() -> Result<(), String> {
    let a = parse_args()?;
    let mut r = Runner::open_on(&a.dir, a.device)?;
    let bound = r.prepare(&a.sizes, a.seed)?;
    let timing = r.time(a.warmup, a.reps)?;
    let profile = if a.profile {
        Some(r.profile(a.reps)?)
    } else {
        None
    };
    // Outputs are read after a fresh run from the initial buffers: a mixer
    // that updates its own state in place must not drift across reps.
    r.prepare(&a.sizes, a.seed)?;
    r.run()?;
    let out = r.output()?;
    if let Some(path) = &a.save {
        let bytes: Vec<u8> = out.iter().flat_map(|x| x.to_le_bytes()).collect();
        std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let m = &r.bundle().manifest;
    let shape = bound.shapes[m.output].clone();
    let stats = Tensor {
        shape: shape.clone(),
        data: out.iter().map(|x| *x as f64).collect(),
    }
    .stats();
    let rel = match &a.check {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let want: Vec<f64> = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect();
            let got: Vec<f64> = out.iter().map(|x| *x as f64).collect();
            Some(mixc_runtime::rel_err(&got, &want))
        }
        None => None,
    };
    if a.json {
        let v = serde_json::json!({
            "mixer": m.mixer,
            "target": m.target,
            "device": r.device(),
            "sizes": bound.sizes,
            "median_s": timing.median,
            "min_s": timing.min,
            "max_s": timing.max,
            "reps": timing.reps,
            "memory_bytes": r.memory_bytes(),
            "shape": shape,
            "mean": stats.mean,
            "std": stats.std,
            "checksum": stats.checksum,
            "nonfinite": stats.nonfinite,
            "rel_err": rel,
            "emu_thread_instructions": r.emu_stats().map(|s| s.thread_instructions),
            "emu_instructions_per_s": r.emu_stats().map(|s| s.rate()),
            "kernels": profile.as_ref().map(|p| {
                m.kernels
                    .iter()
                    .zip(p)
                    .map(|(k, t)| {
                        let writes = m.values.get(k.writes).map(|v| v.name.as_str());
                        serde_json::json!({"id": k.id, "schedule": k.schedule, "writes": writes, "entry": k.entry, "kind": k.kind, "median_s": t})
                    })
                    .collect::<Vec<_>>()
            }),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
        );
    } else {
        let sizes: Vec<String> = bound
            .sizes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!(
            "{} ({}) on {}, {}",
            m.mixer,
            m.target,
            r.device(),
            sizes.join(", ")
        );
        println!(
            "  time: median {:.4} ms (min {:.4}, max {:.4}) over {} reps after {} warm-up",
            timing.median * 1e3,
            timing.min * 1e3,
            timing.max * 1e3,
            timing.reps,
            a.warmup
        );
        println!(
            "  memory: {:.2} MiB",
            r.memory_bytes() as f64 / (1u64 << 20) as f64
        );
        println!(
            "  output {:?}: mean {:.6e}, std {:.6e}, checksum {:.6e}",
            shape, stats.mean, stats.std, stats.checksum
        );
        if let Some(p) = &profile {
            println!("  kernels (median per call):");
            for (k, t) in m.kernels.iter().zip(p) {
                // The kernel as `mixc explain` names it: id, value, schedule.
                let writes = m.values.get(k.writes).map_or("?", |v| v.name.as_str());
                let label = format!("kernel {} {writes} [{}]", k.id, k.schedule);
                match t {
                    Some(t) => println!("    {label:<36} {:>10.4} ms  {}", t * 1e3, k.kind),
                    None => println!(
                        "    {label:<36} {:>10}     {} (once, in prepare)",
                        "-", k.kind
                    ),
                }
            }
        }
        if let Some(s) = r.emu_stats() {
            println!(
                "  emulator: {} thread instructions ({} warp), {:.3e} per second",
                s.thread_instructions,
                s.warp_instructions,
                s.rate()
            );
        }
        if let Some(e) = rel {
            println!(
                "  relative error against {}: {e:.3e}",
                a.check
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            );
        }
    }
    if stats.nonfinite > 0 {
        eprintln!(
            "warning: the output has {} non-finite values",
            stats.nonfinite
        );
    }
    Ok(())
}
