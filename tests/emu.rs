//! GPU bundles on the PTX emulator (`mixc-emu`), through the runtime's
//! launch path (`Runner` with `Device::Emu`): the exact PTX and manifest
//! `mixc build --target sm_80|sm_90` writes, against the interpreter; and
//! broken bundles, each caught with a located error or a wrong output.

use crate::common::{check_path, mix_files, root, run};
use mixc_runtime::runner::{Device, Runner};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The check shape: B and L run-time sizes, L not a multiple of any tile.
const B: i64 = 2;
const L: i64 = 130;
const SEED: u64 = 5;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mixc-emu-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Builds a bundle with the `mixc` binary, as a user does; returns its
/// directory.
fn build(cache: &Path, file: &str, mixer: &str, target: &str, dtype: &str) -> PathBuf {
    build_with(cache, file, mixer, target, dtype, &[])
}

fn build_with(
    cache: &Path,
    file: &str,
    mixer: &str,
    target: &str,
    dtype: &str,
    extra: &[&str],
) -> PathBuf {
    let o = Command::new(env!("CARGO_BIN_EXE_mixc"))
        .args([
            "build", file, "--mixer", mixer, "--target", target, "--dtype", dtype, "--json",
        ])
        .args(extra)
        .current_dir(root())
        .env("MIXC_CACHE_DIR", cache)
        .output()
        .expect("run mixc");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "mixc build {file} {mixer} {target} {dtype}:\n{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    PathBuf::from(j["dir"].as_str().unwrap())
}

fn sizes() -> BTreeMap<String, i64> {
    [("B".to_string(), B), ("L".to_string(), L)].into()
}

/// Runs a bundle on the emulator, computed buffers poisoned with NaN (a
/// value no kernel writes shows in the output).
fn emulate(dir: &Path) -> Result<(Vec<f64>, mixc_runtime::device::EmuStats), String> {
    emulate_at(dir, &sizes(), SEED)
}

fn emulate_at(
    dir: &Path,
    sizes: &BTreeMap<String, i64>,
    seed: u64,
) -> Result<(Vec<f64>, mixc_runtime::device::EmuStats), String> {
    let mut r = Runner::open_on(dir, Device::Emu)?;
    assert_eq!(r.device(), "ptx emulator (not GPU timing)");
    r.prepare_poisoned(sizes, seed)?;
    r.run()?;
    let out = r.output()?.iter().map(|x| *x as f64).collect();
    Ok((out, r.emu_stats().expect("emulator statistics")))
}

fn reference(file: &str, mixer: &str) -> Vec<f64> {
    let c = check_path(file, &[]);
    let prog = c.programs.iter().find(|p| p.name == mixer).unwrap();
    run(prog, &[("B", B), ("L", L), ("D", 64)], SEED)
        .output()
        .data
        .clone()
}

/// Every example and std mixer, and the configurations the GPU paths
/// differ by: f32 (sm_80), bf16 with `mma.sync` (sm_80), bf16 and f16
/// with `wgmma` (sm_90).
const CONFIGS: [(&str, &str, f64); 4] = [
    ("sm_80", "f32", 1e-4),
    ("sm_80", "bf16", 2e-2),
    ("sm_90", "bf16", 2e-2),
    ("sm_90", "f16", 2e-2),
];

fn first_mixer(file: &str) -> String {
    check_path(file, &[]).programs[0].name.clone()
}

fn mixers() -> Vec<(String, String)> {
    let mut files = mix_files("examples");
    files.extend(
        mix_files("std")
            .into_iter()
            .filter(|f| !f.ends_with("masks.mix")),
    );
    let mut out = Vec::new();
    for f in files {
        let c = check_path(&f, &[]);
        for p in &c.programs {
            out.push((f.clone(), p.name.clone()));
        }
    }
    out
}

#[test]
fn every_gpu_bundle_runs_on_the_emulator_and_matches_the_interpreter() {
    let cache = scratch("all");
    let t0 = Instant::now();
    let mut failures = Vec::new();
    let mut total = mixc_runtime::device::EmuStats::default();
    let mut worst = [0f64; CONFIGS.len()];
    let mut n = 0;
    for (file, mixer) in mixers() {
        let want = reference(&file, &mixer);
        for (c, (target, dtype, tol)) in CONFIGS.into_iter().enumerate() {
            let dir = build(&cache, &file, &mixer, target, dtype);
            n += 1;
            match emulate(&dir) {
                Ok((got, stats)) => {
                    total.add(&stats);
                    let rel = mixc_runtime::rel_err(&got, &want);
                    worst[c] = worst[c].max(rel);
                    // NaN (an unwritten element) fails too.
                    if rel.is_nan() || rel >= tol {
                        failures.push(format!(
                            "{file} {mixer} {target} {dtype}: relative error {rel:e} (tolerance {tol:e})"
                        ));
                    }
                }
                Err(e) => failures.push(format!("{file} {mixer} {target} {dtype}: {e}")),
            }
        }
    }
    eprintln!(
        "emulated {n} GPU bundles in {:.1} s: {} thread instructions at {:.3e} per second",
        t0.elapsed().as_secs_f64(),
        total.thread_instructions,
        total.rate()
    );
    for ((target, dtype, _), w) in CONFIGS.iter().zip(worst) {
        eprintln!("  {target} {dtype}: largest relative error {w:.2e}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // 16 mixers (attention.mix defines two) in 4 configurations.
    assert!(n >= 64, "only {n} bundles");
    let _ = std::fs::remove_dir_all(&cache);
}

/// A copy of a bundle whose PTX (or manifest) `edit` changes.
fn broken(src: &Path, dst: &Path, ptx: impl Fn(&str) -> String, manifest: impl Fn(&str) -> String) {
    std::fs::create_dir_all(dst).unwrap();
    let p = std::fs::read_to_string(src.join("kernels.ptx")).unwrap();
    let m = std::fs::read_to_string(src.join("manifest.json")).unwrap();
    let (p2, m2) = (ptx(&p), manifest(&m));
    assert!(p2 != p || m2 != m, "the edit changed nothing");
    std::fs::write(dst.join("kernels.ptx"), p2).unwrap();
    std::fs::write(dst.join("manifest.json"), m2).unwrap();
}

fn same(s: &str) -> String {
    s.to_string()
}

/// The text of the kernel `entry` in `ptx`, its range of lines.
fn kernel_lines(ptx: &str, entry: &str) -> std::ops::Range<usize> {
    let lines: Vec<&str> = ptx.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with(".visible .entry") && l.contains(&format!(" {entry}(")))
        .unwrap();
    let end = (start..lines.len()).find(|k| lines[*k] == "}").unwrap();
    start..end
}

#[test]
fn arguments_in_the_wrong_order_are_caught() {
    // The attention bundle's first contraction reads `x` (value 0) and a
    // projection weight; swapping the two pointers reads the small weight
    // as if it were `x`.
    let cache = scratch("args");
    let dir = build(&cache, "std/attention.mix", "attention", "sm_80", "f32");
    let m: mixc_runtime::bundle::Manifest =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let k = m.kernels.iter().find(|k| k.per_call).unwrap().entry.clone();
    let bad = cache.join("bad");
    broken(
        &dir,
        &bad,
        |p| {
            // Memref words: buffer v's aligned pointer is parameter 5v+1.
            let r = kernel_lines(p, &k);
            let lines: Vec<String> = p
                .lines()
                .enumerate()
                .map(|(i, l)| {
                    if r.contains(&i) && l.contains("ld.param") {
                        l.replace(&format!("{k}_param_1]"), &format!("{k}_param_TMP]"))
                            .replace(&format!("{k}_param_6]"), &format!("{k}_param_1]"))
                            .replace(&format!("{k}_param_TMP]"), &format!("{k}_param_6]"))
                    } else {
                        l.to_string()
                    }
                })
                .collect();
            lines.join("\n")
        },
        same,
    );
    let e = emulate(&bad).map(|_| ()).unwrap_err();
    assert!(
        e.contains("out-of-bounds global read")
            && e.contains(&format!("kernel `{k}`"))
            && e.contains("thread ("),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn a_grid_one_block_short_leaves_the_output_unwritten() {
    let cache = scratch("grid");
    let dir = build(
        &cache,
        "examples/hyena.mix",
        &first_mixer("examples/hyena.mix"),
        "sm_80",
        "f32",
    );
    let (good, _) = emulate(&dir).unwrap();
    assert!(good.iter().all(|x| x.is_finite()));
    // The last kernel writes the output: one block fewer.
    let bad = cache.join("bad");
    broken(&dir, &bad, same, |m| {
        let mut j: serde_json::Value = serde_json::from_str(m).unwrap();
        let ks = j["kernels"].as_array_mut().unwrap();
        let last = ks.last_mut().unwrap();
        let g = last["grid"][0].as_str().unwrap().to_string();
        last["grid"][0] = serde_json::Value::String(format!("({g}) - 1"));
        serde_json::to_string_pretty(&j).unwrap()
    });
    let (out, _) = emulate(&bad).unwrap();
    let unwritten = out.iter().filter(|x| x.is_nan()).count();
    assert!(
        unwritten > 0,
        "a block short, yet every output element was written"
    );
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn a_missing_barrier_is_a_shared_memory_race() {
    let cache = scratch("barrier");
    let dir = build(&cache, "std/attention.mix", "attention", "sm_80", "f32");
    let bad = cache.join("bad");
    // Drop the first barrier of the kernel with shared-memory staging.
    broken(
        &dir,
        &bad,
        |p| {
            let mut done = false;
            p.lines()
                .filter(|l| {
                    if !done && l.trim() == "bar.sync \t0;" {
                        done = true;
                        return false;
                    }
                    true
                })
                .collect::<Vec<_>>()
                .join("\n")
        },
        same,
    );
    let e = emulate(&bad).map(|_| ()).unwrap_err();
    assert!(
        e.contains("shared-memory race") && e.contains("PTX line") && e.contains("block ("),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn a_wgmma_descriptor_moved_by_one_core_matrix_is_caught() {
    let cache = scratch("wgmma");
    let dir = build(&cache, "std/attention.mix", "attention", "sm_90", "bf16");
    let (good, _) = emulate(&dir).unwrap();
    let want = reference("std/attention.mix", "attention");
    assert!(mixc_runtime::rel_err(&good, &want) < 2e-2);
    let bad = cache.join("bad");
    // Add one core matrix (128 bytes: 8 in the descriptor's address field,
    // which counts 16-byte units) to the B descriptor of every product.
    broken(
        &dir,
        &bad,
        |p| {
            let mut out = Vec::new();
            let lines: Vec<&str> = p.lines().collect();
            let mut i = 0;
            while i < lines.len() {
                let l = lines[i];
                if l.trim() == "{"
                    && lines
                        .get(i + 3)
                        .is_some_and(|x| x.contains("wgmma.mma_async"))
                {
                    let w = lines[i + 3];
                    let descs: Vec<&str> = w
                        .split('}')
                        .nth(1)
                        .unwrap()
                        .split(',')
                        .map(str::trim)
                        .filter(|x| x.starts_with("%rd"))
                        .collect();
                    let b = descs.last().unwrap();
                    out.push(format!("\tadd.s64 \t{b}, {b}, 8;"));
                }
                out.push(l.to_string());
                i += 1;
            }
            out.join("\n")
        },
        same,
    );
    match emulate(&bad) {
        Err(e) => assert!(e.contains("wgmma") && e.contains("PTX line"), "{e}"),
        Ok((out, _)) => {
            let rel = mixc_runtime::rel_err(&out, &want);
            assert!(
                rel.is_nan() || rel >= 2e-2,
                "moved descriptor, relative error only {rel:e}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&cache);
}

/// Random mixers from the differential generator (`mixc_fuzz::gen`), each
/// built as a GPU bundle in one of the four configurations and run on the
/// emulator against the interpreter. A program too ill-conditioned for
/// the storage type passes as `mixc fuzz` judges it: within
/// `ILL_CONDITIONED_SLACK` times its rounding floor.
#[test]
fn random_mixers_run_on_the_emulator() {
    let cache = scratch("random");
    let mut ran = 0;
    let mut failures = Vec::new();
    for seed in 0..32u64 {
        let case = mixc_fuzz::gen::case(seed);
        let src = case.program.text();
        let Ok(prog) = mixc_fuzz::exec::check(&src) else {
            continue;
        };
        let Ok(reference) = mixc_fuzz::exec::reference(&prog, &case.shape, seed) else {
            continue; // not a valid case (non-finite output)
        };
        let file = cache.join(format!("case{seed}.mix"));
        std::fs::write(&file, &src).unwrap();
        let (target, dtype_name, _) = CONFIGS[seed as usize % CONFIGS.len()];
        let fixed: Vec<String> = case
            .shape
            .sizes
            .iter()
            .filter(|(k, _)| *k != "B" && *k != "L")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let set = fixed.join(",");
        let mut extra = vec![];
        if !set.is_empty() {
            extra = vec!["--set", set.as_str()];
        }
        let dir = build_with(
            &cache,
            file.to_str().unwrap(),
            &prog.name,
            target,
            dtype_name,
            &extra,
        );
        let free: BTreeMap<String, i64> = ["B", "L"]
            .iter()
            .map(|k| (k.to_string(), case.shape.get(k)))
            .collect();
        let dtype = mixc_runtime::Dtype::parse(dtype_name).unwrap();
        let tol = dtype.tolerance();
        match emulate_at(&dir, &free, seed) {
            Ok((got, _)) => {
                let rel = mixc_runtime::rel_err(&got, &reference.output);
                let floor = if rel < tol {
                    0.0
                } else {
                    reference.rounding_floor(dtype)
                };
                let ill =
                    floor * 4.0 > tol && rel <= mixc_fuzz::exec::ILL_CONDITIONED_SLACK * floor;
                if !(rel < tol || ill) {
                    failures.push(format!(
                        "seed {seed} ({target} {dtype_name}, {}): relative error {rel:e}\n{src}",
                        case.shape.text()
                    ));
                }
            }
            Err(e) => failures.push(format!("seed {seed} ({target} {dtype_name}): {e}\n{src}")),
        }
        ran += 1;
    }
    eprintln!("{ran} random mixers on the emulator");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(ran >= 8, "only {ran} random mixers were valid cases");
    let _ = std::fs::remove_dir_all(&cache);
}

/// `mixc-emu` depends on nothing (ARCHITECTURE.md), and the slim runner
/// links it.
#[test]
fn the_emulator_depends_on_nothing() {
    let tree = |p: &str| {
        let o = Command::new(env!("CARGO"))
            .args([
                "tree",
                "-p",
                p,
                "-e",
                "normal,build",
                "--prefix",
                "none",
                "--offline",
            ])
            .current_dir(root())
            .output()
            .expect("cargo tree");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let emu = tree("mixc-emu");
    let lines: Vec<&str> = emu.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with("mixc-emu "),
        "{emu}"
    );
    assert!(tree("mixc-runner")
        .lines()
        .any(|l| l.starts_with("mixc-emu ")));
}

/// `mixc run --backend emu`: the bundle `mixc build` makes, on the
/// emulator, judged by the bundle's dtype tolerance.
#[test]
fn mixc_run_backend_emu_compares_with_the_interpreter() {
    let cache = scratch("run");
    let o = Command::new(env!("CARGO_BIN_EXE_mixc"))
        .args([
            "run",
            "std/attention.mix",
            "--backend",
            "emu",
            "--target",
            "sm_90",
            "--dtype",
            "bf16",
            "--compare",
            "ref",
            "--set",
            "B=1,L=70",
            "--json",
        ])
        .current_dir(root())
        .env("MIXC_CACHE_DIR", &cache)
        .output()
        .expect("run mixc");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(j["backend"], "emu");
    assert_eq!(j["shape"], serde_json::json!([1, 70, 64]));
    let rel = j["compare"]["rel_err"].as_f64().unwrap();
    assert!(rel < 1e-2, "relative error {rel:e}");
    let _ = std::fs::remove_dir_all(&cache);
}
