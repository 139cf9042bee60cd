//! Bundles, the runners and `mixc bench`, through the binary as a user
//! runs them (each test with its own cache directory).

use crate::common::{check_path, mix_files, root, run};
use mixc_runtime::bundle::Bundle;
use mixc_runtime::cuda::{driver_present, NO_DRIVER};
use mixc_runtime::runner::Runner;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Says why a test skips, past the test harness's capture (a direct write
/// to stderr is never captured), so a skip is always visible.
fn skip(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "skipping {why}");
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mixc-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn mixc(cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mixc"))
        .args(args)
        .current_dir(root())
        .env("MIXC_CACHE_DIR", cache)
        .output()
        .expect("run mixc")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn build_json(cache: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["build", "--json"];
    all.extend_from_slice(args);
    let o = mixc(cache, &all);
    let (out, err) = text(&o);
    assert!(o.status.success(), "mixc {all:?}:\n{out}\n{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn build_writes_a_manifest_caches_it_and_reports_ptxas() {
    let cache = scratch("build");
    let out = cache.join("out");
    let first = build_json(
        &cache,
        &[
            "std/attention.mix",
            "--target",
            "sm_90",
            "--report",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(first["cached"], false);
    let m = &first["manifest"];
    assert_eq!(m["format"], "mixc-bundle/1");
    assert_eq!(m["target"], "sm_90");
    assert_eq!(m["object"], "kernels.ptx");
    // B and L stay run-time sizes; D is fixed at its default.
    let sizes = m["sizes"].as_array().unwrap();
    let value = |n: &str| sizes.iter().find(|s| s["name"] == n).unwrap()["value"].clone();
    assert!(value("B").is_null() && value("L").is_null(), "{sizes:?}");
    assert_eq!(value("D"), "64");
    // Every kernel has a grid as a size expression and a block; a
    // per-call kernel's grows with B or L.
    for k in m["kernels"].as_array().unwrap() {
        let grid = k["grid"][0].as_str().unwrap();
        assert!(
            grid.contains("L")
                || grid.contains("B")
                || grid.parse::<i64>().is_ok()
                || k["per_call"] == false,
            "{k}"
        );
        let kind = k["kind"].as_str().unwrap();
        let tiled = kind.starts_with("fused attention") && kind.contains("shared memory");
        assert_eq!(k["block"][0], if tiled { 64 } else { 256 }, "{k}");
        // Staged tiles are static shared memory, recorded per kernel.
        let staged = kind.contains("shared memory");
        assert_eq!(k["shared_bytes"].as_u64().unwrap() > 0, staged, "{k}");
    }
    // The attention chain is one fused kernel (64 query rows a block, K and
    // V staged in shared memory): the scores and probabilities get no
    // buffer.
    let kernels = m["kernels"].as_array().unwrap();
    assert!(
        kernels.iter().any(|k| {
            let kind = k["kind"].as_str().unwrap();
            kind.starts_with("fused attention") && kind.contains("staged in shared memory")
        }),
        "{kernels:?}"
    );
    let unmaterialised: Vec<&str> = m["values"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["materialized"] == false)
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    // The scores and probabilities stay on chip; q, k and v are slices of
    // their merged projection (and the views that state it are unread).
    let mut main: Vec<&str> = unmaterialised
        .iter()
        .copied()
        .filter(|n| !n.ends_with("~view"))
        .collect();
    main.sort_unstable();
    assert_eq!(main, ["k", "p", "q", "s", "v"], "{unmaterialised:?}");
    // Parameters carry their initialisers; the input is standard normal.
    let values = m["values"].as_array().unwrap();
    assert!(values
        .iter()
        .any(|v| v["role"] == "param" && v["fill"]["Normal"]["std"].as_f64().is_some()));
    assert!(out.join("manifest.json").is_file() && out.join("kernels.ptx").is_file());
    // ptxas accepted it: a report per kernel, no spills.
    let report = first["report"].as_array().unwrap();
    assert_eq!(report.len(), m["kernels"].as_array().unwrap().len());
    for r in report {
        assert_eq!(r["spill_stores"], 0, "{r}");
        assert_eq!(r["spill_loads"], 0, "{r}");
        assert!(r["registers"].as_u64().unwrap() > 0, "{r}");
    }
    // The second build comes from the cache, with the same hash.
    let second = build_json(&cache, &["std/attention.mix", "--target", "sm_90"]);
    assert_eq!(second["cached"], true);
    assert_eq!(second["hash"], first["hash"]);
    // Another size is another bundle.
    let other = build_json(
        &cache,
        &["std/attention.mix", "--target", "sm_90", "--set", "D=1024"],
    );
    assert_ne!(other["hash"], first["hash"]);

    // Text output and a bad target.
    let o = mixc(
        &cache,
        &[
            "build",
            "std/attention.mix",
            "--target",
            "sm_90",
            "--report",
        ],
    );
    let (outp, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        outp.contains("(cached)") && outp.contains("0 spill bytes"),
        "{outp}"
    );
    let o = mixc(&cache, &["build", "std/attention.mix", "--target", "sm_70"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("unknown target `sm_70`"), "{err}");
    let _ = std::fs::remove_dir_all(&cache);
}

/// Head dims 64 and 128 (D = 512 and 1024 with 8 heads) assemble for sm_80
/// and sm_90 without spills.
#[test]
fn attention_ptx_has_no_spills_at_head_dims_64_and_128() {
    let cache = scratch("headdim");
    for d in ["512", "1024"] {
        for sm in ["sm_80", "sm_90"] {
            let set = format!("D={d}");
            let j = build_json(
                &cache,
                &[
                    "std/attention.mix",
                    "--target",
                    sm,
                    "--set",
                    &set,
                    "--report",
                ],
            );
            for r in j["report"].as_array().unwrap() {
                assert_eq!(
                    r["spill_stores"].as_u64().unwrap() + r["spill_loads"].as_u64().unwrap(),
                    0,
                    "{sm} D={d}: {r}"
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&cache);
}

/// The registers a `wgmma` reads as its accumulator are written before the
/// `wgmma.fence` that precedes it, never between the fence and the
/// product (the PTX ISA's rule for `wgmma.mma_async`): for every `wgmma`
/// of the sm_90 16-bit bundles of attention, Hyena and RetNet, no
/// instruction between the fence and the first product after it writes
/// one of that product's accumulator registers.
#[test]
fn wgmma_accumulators_are_written_before_the_fence() {
    let cache = scratch("wgmma-fence");
    let mut checked = 0;
    for (file, d) in [
        ("std/attention.mix", "512"),
        ("std/attention.mix", "1024"),
        ("std/hyena.mix", "256"),
        ("examples/retnet.mix", "256"),
    ] {
        for dtype in ["bf16", "f16"] {
            let set = format!("D={d}");
            let j = build_json(
                &cache,
                &[file, "--target", "sm_90", "--dtype", dtype, "--set", &set],
            );
            let dir = PathBuf::from(j["dir"].as_str().unwrap());
            let ptx = std::fs::read_to_string(dir.join("kernels.ptx")).unwrap();
            let lines: Vec<&str> = ptx.lines().collect();
            for (i, l) in lines.iter().enumerate() {
                if !l.contains("wgmma.fence.sync.aligned") {
                    continue;
                }
                let Some(k) = (i + 1..lines.len()).find(|k| lines[*k].contains("wgmma.mma_async"))
                else {
                    continue;
                };
                // The product's accumulator: its first `{..}` register list
                // (inline asm may put the product on the line after a `{`).
                let text = lines[k..(k + 3).min(lines.len())].join(" ");
                let at = text.find("wgmma.mma_async").unwrap();
                let acc: Vec<String> = text[at..]
                    .split('{')
                    .nth(1)
                    .and_then(|x| x.split('}').next())
                    .unwrap_or("")
                    .split(',')
                    .map(|r| r.trim().to_string())
                    .filter(|r| r.starts_with('%'))
                    .collect();
                assert!(
                    !acc.is_empty(),
                    "{file} {dtype}: no accumulator at line {k}"
                );
                for between in &lines[i + 1..k] {
                    let t = between.trim();
                    let dest = t
                        .split_whitespace()
                        .nth(1)
                        .map(|x| x.trim_end_matches([',', ';']))
                        .unwrap_or("");
                    assert!(
                        !(t.starts_with("mov") || t.starts_with("cvt") || t.starts_with("ld"))
                            || !acc.iter().any(|r| r == dest),
                        "{file} {dtype} D={d}: `{t}` writes accumulator register {dest} after wgmma.fence (line {})",
                        i + 1
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 8, "only {checked} wgmma groups checked");
    let _ = std::fs::remove_dir_all(&cache);
}

/// Every example mixer's bundle, run by the runtime (not the JIT), against
/// the interpreter at B=3, L=37, D=64 (relative error under the bundle
/// dtype's tolerance: 1e-4 for f32, 1e-2 for bf16 and f16).
fn bundles_match_the_interpreter(target: &str, extra: &[&str]) {
    let cache = scratch(&format!("match-{target}-{}", extra.join("-")));
    let mut files = mix_files("examples");
    files.extend(mix_files("std"));
    let mut n = 0;
    for f in files {
        let c = check_path(&f, &[]);
        for prog in &c.programs {
            let mut args = vec![f.as_str(), "--mixer", &prog.name, "--target", target];
            args.extend(extra);
            let j = build_json(&cache, &args);
            let dir = PathBuf::from(j["dir"].as_str().unwrap());
            let mut runner = Runner::open(&dir).unwrap_or_else(|e| panic!("{f}: {e}"));
            let free: BTreeMap<String, i64> = runner
                .bundle()
                .free_sizes()
                .into_iter()
                .map(|s| {
                    let v = if s == "B" { 3 } else { 37 };
                    (s, v)
                })
                .collect();
            runner.prepare_poisoned(&free, 5).unwrap();
            runner.run().unwrap();
            let got: Vec<f64> = runner.output().unwrap().iter().map(|x| *x as f64).collect();
            let it = run(prog, &[("B", 3), ("L", 37), ("D", 64)], 5);
            let rel = mixc_runtime::rel_err(&got, &it.output().data);
            assert!(
                rel < runner.bundle().dtype().tolerance(),
                "{f} {}: relative error {rel:e} on {target} {extra:?}",
                prog.name
            );
            n += 1;
        }
    }
    assert!(n >= 16, "{n} mixers");
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn every_cpu_bundle_matches_the_interpreter() {
    bundles_match_the_interpreter("cpu", &[]);
}

#[test]
fn every_gpu_bundle_matches_the_interpreter() {
    if !driver_present() {
        skip(&format!(
            "every_gpu_bundle_matches_the_interpreter: {NO_DRIVER}"
        ));
        return;
    }
    let sm = match mixc_runtime::cuda::device_info() {
        Ok((_, sm)) if sm[3..].parse::<u32>().unwrap_or(0) >= 90 => "sm_90",
        Ok(_) => "sm_80",
        Err(e) => {
            skip(&format!("every_gpu_bundle_matches_the_interpreter: {e}"));
            return;
        }
    };
    // Kernel IR through MLIR's NVVM pipeline, in f32 and in 16-bit storage.
    bundles_match_the_interpreter(sm, &[]);
    bundles_match_the_interpreter(sm, &["--dtype", "bf16"]);
    bundles_match_the_interpreter(sm, &["--dtype", "f16"]);
}

/// Hyena on the CPU: its implicit filter depends only on parameters and L,
/// so those kernels run once per prepared buffers; the long convolution is
/// the runtime's FFT kernel and runs on every call, as does the output.
#[test]
fn hyena_bundle_precomputes_its_filter_and_uses_the_fft_kernel() {
    let cache = scratch("hyena");
    let j = build_json(&cache, &["std/hyena.mix", "--target", "cpu"]);
    let m = &j["manifest"];
    let kernels = m["kernels"].as_array().unwrap();
    let once: Vec<_> = kernels.iter().filter(|k| k["per_call"] == false).collect();
    assert!(once.len() >= 5, "{kernels:?}");
    let fft: Vec<_> = kernels
        .iter()
        .filter(|k| k["library"]["fft_conv"].is_object())
        .collect();
    assert_eq!(fft.len(), 1, "{kernels:?}");
    assert_eq!(fft[0]["per_call"], true);
    let out = m["output"].as_u64().unwrap();
    let last = kernels
        .iter()
        .find(|k| k["writes"].as_u64() == Some(out))
        .unwrap();
    assert_eq!(last["per_call"], true);
    // The per-kernel profile times exactly the per-call kernels.
    let mut r = Runner::open(Path::new(j["dir"].as_str().unwrap())).unwrap();
    let free: BTreeMap<String, i64> = [("B".to_string(), 1), ("L".to_string(), 64)]
        .into_iter()
        .collect();
    r.prepare(&free, 0).unwrap();
    let p = r.profile(2).unwrap();
    assert_eq!(p.len(), kernels.len());
    for (k, t) in kernels.iter().zip(&p) {
        assert_eq!(t.is_some(), k["per_call"] == true, "{k}");
        assert!(t.is_none_or(|t| t >= 0.0));
    }
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn a_bundle_rejects_wrong_sizes_with_a_clear_error() {
    let cache = scratch("sizes");
    let j = build_json(&cache, &["examples/sliding_window.mix", "--target", "cpu"]);
    let b = Bundle::load(Path::new(j["dir"].as_str().unwrap())).unwrap();
    let mut free = BTreeMap::new();
    free.insert("B".to_string(), 1);
    let e = b.bind(&free).unwrap_err();
    assert!(e.contains("size `L` must be given"), "{e}");
    free.insert("L".to_string(), 16);
    free.insert("D".to_string(), 32);
    let e = b.bind(&free).unwrap_err();
    assert!(e.contains("`D` was fixed to 64"), "{e}");
    free.remove("D");
    free.insert("Q".to_string(), 1);
    let e = b.bind(&free).unwrap_err();
    assert!(e.contains("`Q` is not a size"), "{e}");
    let e = Bundle::load(&cache.join("nothing")).unwrap_err();
    assert!(e.contains("cannot read"), "{e}");
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn bench_on_the_cpu_prints_checks_a_table_and_writes_svg_png_and_json() {
    let cache = scratch("bench");
    let json = cache.join("bench.json");
    let plot = cache.join("bench");
    let o = mixc(
        &cache,
        &[
            "bench",
            "examples/sliding_window.mix",
            "--vs",
            "attention,hyena,jax",
            "--device",
            "cpu",
            "--seq",
            "64,128",
            "--reps",
            "2",
            "--warmup",
            "1",
            "--json",
            json.to_str().unwrap(),
            "--plot",
            plot.to_str().unwrap(),
        ],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    for want in [
        "correctness sliding_window",
        "correctness attention",
        "correctness hyena",
        "vs attention",
        "vs hyena",
        "crossover   sliding_window",
        "profile     cpu (measured): measured by `mixc calibrate`",
    ] {
        assert!(out.contains(want), "missing `{want}`:\n{out}");
    }
    // `scripts/setup.sh` installs JAX into `.tools/python` (README command
    // 2 runs it first); without it the peer is named as missing.
    let jax = Command::new("python3")
        .args(["-c", "import jax"])
        .env("PYTHONPATH", root().join(".tools/python"))
        .status()
        .is_ok_and(|s| s.success());
    if !jax {
        skip("bench's JAX peer rows: python3 has no jax (run scripts/setup.sh)");
        assert!(
            out.contains("peers       jax: skipped: python3 has no jax"),
            "{out}"
        );
    }
    assert!(!out.contains("FAILED"), "{out}");
    let svg = std::fs::read_to_string(plot.with_extension("svg")).unwrap();
    assert!(
        svg.contains("<svg") && svg.contains("sliding_window"),
        "{svg}"
    );
    let png = std::fs::read(plot.with_extension("png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let all = v["rows"].as_array().unwrap();
    let rows: Vec<_> = all.iter().filter(|r| r["source"] == "mixc").collect();
    assert_eq!(rows.len(), 6, "{rows:?}");
    if jax {
        // Whole layers: attention (causal, and with the mixer's mask) and
        // Hyena, at each length.
        let peers: Vec<_> = all.iter().filter(|r| r["source"] == "jax").collect();
        assert_eq!(peers.len(), 6, "{peers:?}");
        for r in peers {
            assert_eq!(r["status"], "ok", "{r}");
            assert!(r["mixer"].as_str().unwrap().contains(" layer "), "{r}");
            assert!(r["median_s"].as_f64().unwrap() > 0.0, "{r}");
        }
    }
    for r in rows {
        assert_eq!(r["status"], "ok", "{r}");
        let t = r["median_s"].as_f64().unwrap();
        assert!(t > 0.0 && r["min_s"].as_f64().unwrap() <= t && t <= r["max_s"].as_f64().unwrap());
        assert!(r["useful_flops"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["speedup"]["attention"].as_f64().unwrap() > 0.0, "{r}");
    }
    for c in v["correctness"].as_array().unwrap() {
        assert!(c["rel_err"].as_f64().unwrap() < 1e-4, "{c}");
    }
    assert_eq!(v["crossovers"].as_array().unwrap().len(), 2);
    // The profile bench measured is cached: explain on the CPU uses it.
    let o = mixc(&cache, &["explain", "std/attention.mix", "--device", "cpu"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("on cpu (measured)"), "{out}");
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn bench_skips_what_does_not_fit_the_time_budget_and_goes_on() {
    let cache = scratch("budget");
    let o = mixc(
        &cache,
        &[
            "bench",
            "examples/sliding_window.mix",
            "--vs",
            "attention",
            "--device",
            "cpu",
            "--seq",
            "32,8k",
            "--reps",
            "1",
            "--warmup",
            "0",
            "--max-seconds",
            "0.001",
        ],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("skipped: out of time"), "{out}");
}

#[test]
fn bench_on_cuda_without_a_driver_fails_cleanly() {
    if driver_present() {
        skip("bench_on_cuda_without_a_driver_fails_cleanly: this machine has an NVIDIA driver");
        return;
    }
    let cache = scratch("nodriver");
    let o = mixc(
        &cache,
        &[
            "bench",
            "examples/sliding_window.mix",
            "--device",
            "cuda",
            "--seq",
            "64",
        ],
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert!(err.contains(NO_DRIVER), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let o = mixc(
        &cache,
        &[
            "bench",
            "examples/sliding_window.mix",
            "--dtype",
            "bf16",
            "--device",
            "cpu",
        ],
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err.contains("--dtype bf16: bf16 and f16 storage run on a GPU"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// `cargo tree` of a workspace package: its normal and build
/// dependencies, one crate a line.
fn cargo_tree(package: &str) -> String {
    let o = Command::new(env!("CARGO"))
        .args(["tree", "-p", package, "-e", "normal,build"])
        .args(["--prefix", "none", "--offline"])
        .current_dir(root())
        .output()
        .expect("cargo tree");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The slim runner's dependency tree has no LLVM, MLIR or compiler crate.
#[test]
fn the_runner_does_not_depend_on_llvm_or_mlir() {
    let out = cargo_tree("mixc-runner");
    assert!(
        out.contains("mixc-runtime") && out.contains("cudarc"),
        "{out}"
    );
    for bad in [
        "inkwell",
        "melior",
        "mlir-sys",
        "llvm-sys",
        "mixc-backends",
        "mixc-compiler",
    ] {
        assert!(!out.lines().any(|l| l.starts_with(bad)), "{bad} in:\n{out}");
    }
}

/// The back ends lower what the optimiser decides; they never run its
/// rules: `mixc-backends` does not depend on `mixc-opt` (the matchers
/// both use live in `mixc_compiler::pattern`, the rewrites in
/// `mixc_compiler::passes`), and no back-end source names its rules.
#[test]
fn the_back_ends_do_not_depend_on_the_optimiser() {
    let out = cargo_tree("mixc-backends");
    assert!(out.contains("mixc-compiler"), "{out}");
    assert!(
        !out.lines().any(|l| l.starts_with("mixc-opt")),
        "mixc-opt in:\n{out}"
    );
    let mut stack = vec![root().join("backends/src")];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files += 1;
                let text = std::fs::read_to_string(&p).unwrap();
                assert!(
                    !text.contains("mixc_opt::"),
                    "{} names mixc_opt",
                    p.display()
                );
            }
        }
    }
    assert!(files > 10, "only {files} back-end sources found");
}

/// `backends/src` is layered, with no import cycle between its modules
/// (a file, or a directory with its submodules): kernel IR at the bottom
/// (it imports no other back-end module), then its consumers (the
/// simulator, MLIR, the host compiler), then bundles. Items of the
/// crate root (`BackendError`) and the toolchain leaf may be used by all.
#[test]
fn the_back_ends_have_no_import_cycle() {
    use std::collections::{BTreeMap, BTreeSet};
    let src = root().join("backends/src");
    let mut modules: BTreeSet<String> = BTreeSet::new();
    let mut files: Vec<(String, std::path::PathBuf)> = Vec::new();
    let mut stack = vec![src.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(&src).unwrap();
                let top = rel
                    .components()
                    .next()
                    .unwrap()
                    .as_os_str()
                    .to_string_lossy();
                let top = top.trim_end_matches(".rs").to_string();
                if top != "lib" {
                    modules.insert(top.clone());
                }
                files.push((top, p));
            }
        }
    }
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (top, p) in &files {
        let text = std::fs::read_to_string(p).unwrap();
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                let rest = &line[i + 7..];
                let ident = |s: &str| -> String {
                    s.trim_start()
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect()
                };
                // `crate::x::..` or `crate::{x, y::..}`.
                let names: Vec<String> = match rest.strip_prefix('{') {
                    Some(group) => group
                        .split('}')
                        .next()
                        .unwrap_or("")
                        .split(',')
                        .map(ident)
                        .collect(),
                    None => vec![ident(rest)],
                };
                for name in names {
                    if modules.contains(&name) && &name != top && top != "lib" {
                        edges.entry(top.clone()).or_default().insert(name);
                    }
                }
            }
        }
    }
    assert!(
        edges
            .get("kir")
            .is_none_or(|e| e.iter().all(|x| x == "toolchain")),
        "kernel IR imports {:?}",
        edges.get("kir")
    );
    // Depth-first search for a cycle.
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let at = path.iter().position(|x| x == n).unwrap();
                let mut cycle = path[at..].to_vec();
                cycle.push(n.to_string());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, edges, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in &modules {
        if let Some(c) = visit(n, &edges, &mut state, &mut Vec::new()) {
            panic!(
                "import cycle in backends/src: {}\nedges: {edges:?}",
                c.join(" -> ")
            );
        }
    }
    println!("backends/src layers: {edges:?}");
    assert!(modules.len() >= 7, "{modules:?}");
}

/// The peer scripts are valid Python, and say so (exit 3) when their
/// framework is missing, which `mixc bench` turns into a skip line.
#[test]
fn peer_scripts_compile_and_report_a_missing_framework() {
    let python = Command::new("python3").arg("--version").output();
    if python.map(|o| !o.status.success()).unwrap_or(true) {
        skip("peer_scripts_compile_and_report_a_missing_framework: no python3");
        return;
    }
    let dir = root().join("scripts/peers");
    for script in ["torch_peers.py", "jax_peers.py"] {
        // Parse only: nothing written next to the script.
        let o = Command::new("python3")
            .args(["-c", "import ast, sys; ast.parse(open(sys.argv[1]).read())"])
            .arg(dir.join(script))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let module = script.trim_end_matches("_peers.py");
        let has = Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !has {
            let o = Command::new("python3")
                .arg(dir.join(script))
                .args(["--seq", "64"])
                .output()
                .unwrap();
            assert_eq!(o.status.code(), Some(3), "{script}");
            assert!(String::from_utf8_lossy(&o.stderr).contains("is not importable"));
        }
    }
}

/// bench finds the batch and sequence sizes by their roles in the IR (the
/// first input's first two axes), not by the names `B` and `L`.
#[test]
fn bench_takes_the_sequence_size_by_its_role_not_its_name() {
    let cache = scratch("roles");
    let src = std::fs::read_to_string(root().join("examples/sliding_window.mix"))
        .unwrap()
        .replace("[B, L, D]", "[N, T, D]");
    let file = cache.join("renamed.mix");
    std::fs::write(&file, src).unwrap();
    let json = cache.join("bench.json");
    let o = mixc(
        &cache,
        &[
            "bench",
            file.to_str().unwrap(),
            "--vs",
            "attention",
            "--device",
            "cpu",
            "--seq",
            "32,64",
            "--reps",
            "1",
            "--warmup",
            "0",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows: Vec<_> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["mixer"] == "sliding_window")
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    for r in rows {
        assert_eq!(r["status"], "ok", "{r}");
    }
    assert!(out.contains("correctness sliding_window"), "{out}");
    let _ = std::fs::remove_dir_all(&cache);
}
