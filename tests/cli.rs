//! The `mixc` binary as a user runs it.

use crate::common::{mix_files, root};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn mixc(args: &[&str]) -> Output {
    // A cache of this test process's own: no calibrated host profile or
    // bundle from elsewhere changes what these tests see.
    let cache = std::env::temp_dir().join(format!("mixc-cli-cache-{}", std::process::id()));
    mixc_cached(&cache, args)
}

/// `mixc ARGS` in the repository root with `cache` as its cache.
fn mixc_cached(cache: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mixc"))
        .args(args)
        .env("MIXC_CACHE_DIR", cache)
        .current_dir(root())
        .output()
        .expect("run mixc")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_every_example_and_std_file() {
    let mut files = mix_files("examples");
    files.extend(mix_files("std"));
    assert!(files.len() >= 13, "{files:?}");
    let args: Vec<&str> = std::iter::once("check")
        .chain(files.iter().map(|s| s.as_str()))
        .collect();
    let o = mixc(&args);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ok: ")).count(),
        files.len()
    );
}

/// Every mixer of every example runs on the reference backend at a small
/// shape in under 10 seconds (the test binary is built with opt-level 1).
#[test]
fn every_example_mixer_runs_on_the_reference_backend() {
    for f in mix_files("examples")
        .into_iter()
        .chain(["std/attention.mix".into(), "std/hyena.mix".into()])
    {
        let c = crate::common::check_path(&f, &[]);
        for p in &c.programs {
            let start = Instant::now();
            let o = mixc(&[
                "run",
                &f,
                "--mixer",
                &p.name,
                "--set",
                "B=2,L=64,D=32",
                "--json",
            ]);
            let took = start.elapsed();
            let (out, err) = text(&o);
            assert!(o.status.success(), "{f} {}: {err}", p.name);
            let v: serde_json::Value =
                serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{f}: {e}: {out}"));
            assert_eq!(v["shape"], serde_json::json!([2, 64, 32]), "{f}");
            assert_eq!(v["nonfinite"], 0, "{f} {}: non-finite output", p.name);
            let std = v["std"].as_f64().unwrap();
            assert!(std > 1e-6 && std < 1e6, "{f} {}: std {std}", p.name);
            assert!(took < Duration::from_secs(10), "{f} {}: {took:?}", p.name);
        }
    }
}

#[test]
fn run_prints_shape_mean_std_checksum_and_time() {
    let o = mixc(&[
        "run",
        "std/attention.mix",
        "--set",
        "B=2,L=16,D=32,H=4",
        "--seed",
        "3",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    for key in [
        "output    y: [2, 16, 32]",
        "mean",
        "std",
        "checksum",
        "time",
        "H",
    ] {
        assert!(
            out.contains(key) || err.contains(key),
            "missing `{key}` in\n{out}"
        );
    }
    // Deterministic: same seed, same checksum; another seed, another checksum.
    let j = |seed: &str| {
        let o = mixc(&[
            "run",
            "std/attention.mix",
            "--set",
            "L=16,D=32",
            "--seed",
            seed,
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["checksum"].as_f64().unwrap()
    };
    assert_eq!(j("1"), j("1"));
    assert_ne!(j("1"), j("2"));
}

#[test]
fn bad_files_exit_1_with_located_errors_and_no_panic() {
    for f in mix_files("tests/bad") {
        let o = mixc(&["check", &f]);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{f}: {err}");
        assert!(err.contains(&format!("{f}:")), "{f}: no location:\n{err}");
        assert!(!err.contains("panicked"), "{f} panicked:\n{err}");
        let o = mixc(&["run", &f]);
        assert_eq!(o.status.code(), Some(1), "run {f}");
    }
}

#[test]
fn size_and_option_errors_are_clear() {
    let o = mixc(&["run", "std/attention.mix", "--set", "D=30"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err.contains("not divisible") && err.contains("std/attention.mix:7:5"),
        "{err}"
    );

    let o = mixc(&["run", "std/attention.mix", "--set", "Q=3"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("no config or size named `Q`"), "{err}");

    let o = mixc(&["run", "std/attention.mix", "--set", "E=3"]);
    assert!(text(&o).1.contains("derived"), "{}", text(&o).1);

    let o = mixc(&["run", "examples/does_not_exist.mix"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("cannot read"));

    let o = mixc(&["run", "examples/block_sparse.mix", "--set", "bs=0,L=8"]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o).1;
    assert!(
        err.contains("integer division by zero") && err.contains("block_sparse.mix:"),
        "{err}"
    );

    let o = mixc(&["run", "std/masks.mix"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("defines no mixer"));
}

#[test]
fn check_dumps_the_ast_and_the_ir() {
    let o = mixc(&["check", "std/attention.mix", "--dump", "ast,ir"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("(= p (where (softmax s over:j) (causal i j)))"),
        "{out}"
    );
    assert!(
        out.contains("= normalize p [b@0:B h@1:8 i@2:L j@3:L] (softmax j@3"),
        "{out}"
    );
}

#[test]
fn run_on_the_cpu_backend_compares_with_the_interpreter() {
    let o = mixc(&[
        "run",
        "std/attention.mix",
        "--backend",
        "cpu",
        "--compare",
        "ref",
        "--set",
        "B=2,L=33,D=32",
        "--json",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["backend"], "cpu");
    assert_eq!(v["compare"]["backend"], "ref");
    let e = v["compare"]["rel_err"].as_f64().unwrap();
    assert!(
        e < 1e-4 && e > 0.0,
        "f32 against f64: small but not zero, got {e}"
    );
    assert!(v["compile_ms"].as_f64().unwrap() > 0.0);
    assert!(
        v["gflop"].as_f64().unwrap() > 0.0 && v["gflops"].as_f64().unwrap() > 0.0,
        "{v}"
    );
}

#[test]
fn explain_prints_the_plan_as_text_json_and_egraph() {
    let o = mixc(&[
        "explain",
        "std/attention.mix",
        "--set",
        "L=16384",
        "--dump",
        "egraph",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    // The form and tiles the sm_90 bf16 bundle runs: wgmma, and key
    // tiles of 32 at head dim 128 (the 16-bit K and V tiles of 64 keys and
    // the query tile would not fit 47 KiB); the mask note counts those.
    assert!(
        out.contains("[fused attention] (online softmax; wgmma m64n32k16 and m64n128k16 bf16: a warpgroup of 64 query rows, head dim 128, key tiles of 32, operand tiles read by 16-byte loads)"),
        "{out}"
    );
    assert!(
        out.contains("49.8% of 64x32 tiles skipped at L=16384"),
        "{out}"
    );
    // What runs: three kernels per call (q, k and v merged into one
    // contraction, attention, y), and the stacked weights once.
    assert!(
        out.contains("3 kernels per call") && out.contains("1 more once per parameters"),
        "{out}"
    );
    assert!(
        out.contains("merged projections: `q`, `k`, `v` as one contraction, the input read once"),
        "{out}"
    );
    assert!(!out.contains("not run: merged"), "{out}");
    assert!(!out.contains("folded into the query side"), "{out}");
    assert!(out.contains("rules fired: fuse-attention x1"), "{out}");
    assert!(
        out.contains("e-graph:") && out.contains("(attention "),
        "the e-graph dump shows the fused node: {out}"
    );
    let o = mixc(&[
        "explain",
        "std/hyena.mix",
        "--device",
        "cpu",
        "--json",
        "--set",
        "L=4096",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["device"], "cpu");
    assert!(v["kernels"].as_array().unwrap().len() >= 4);
    assert!(v["total_seconds"].as_f64().unwrap() > 0.0);
    let o = mixc(&["explain", "std/attention.mix", "--set", "D=30"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "bad sizes are an error with the source line"
    );
    assert!(text(&o).1.contains("not divisible"));
}

/// Kernel IR from the command line: `run --backend cpu` (kernel IR on the
/// host) against the interpreter, a GPU build with the ptxas report and
/// the dumps, and a host build's dumps.
#[test]
fn the_mlir_path_runs_builds_and_dumps() {
    let o = mixc(&[
        "run",
        "examples/hyena.mix",
        "--backend",
        "cpu",
        "--compare",
        "ref",
        "--set",
        "B=2,L=37,D=16",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    let rel: f64 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("vs ref    relative error "))
        .unwrap_or_else(|| panic!("no comparison line:\n{out}"))
        .trim()
        .parse()
        .unwrap();
    assert!(rel < 1e-4, "relative error {rel}:\n{out}");

    let dir = std::env::temp_dir().join(format!("mixc-cli-mlir-{}", std::process::id()));
    let cache = dir.join("cache");
    let o = mixc_cached(
        &cache,
        &[
            "build",
            "std/attention.mix",
            "--target",
            "sm_90",
            "--report",
            "--dump",
            "kernel,mlir",
        ],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("kernel op1 (op 1, tiled contraction"), "{out}");
    assert!(out.contains("gpu.func @op0"), "{out}");
    assert!(out.contains("0 spill bytes"), "{out}");
    let manifest = std::fs::read_dir(cache.join("bundles"))
        .unwrap()
        .map(|e| e.unwrap().path().join("manifest.json"))
        .next()
        .unwrap();
    let manifest = std::fs::read_to_string(manifest).unwrap();
    assert!(manifest.contains("\"args\": \"memref\""), "{manifest}");

    let o = mixc_cached(
        &cache,
        &["build", "std/attention.mix", "--dump", "kernel,mlir"],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("fused attention (online softmax"), "{out}");
    assert!(out.contains("func.func @op"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `mixc build --dtype`: a bf16 GPU bundle (the default MLIR path) whose
/// manifest, kernels and PTX store bf16; clear refusals for 16-bit
/// storage on the CPU, and for unknown dtypes.
#[test]
fn build_stores_bf16_on_gpus_and_refuses_it_elsewhere() {
    let dir = std::env::temp_dir().join(format!("mixc-cli-bf16-{}", std::process::id()));
    let build = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_mixc"))
            .arg("build")
            .args(args)
            .env("MIXC_CACHE_DIR", &dir)
            .current_dir(root())
            .output()
            .unwrap()
    };
    let o = build(&[
        "examples/sliding_window.mix",
        "--target",
        "sm_80",
        "--dtype",
        "bf16",
        "--dump",
        "kernel",
        "-o",
        dir.join("out").to_str().unwrap(),
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("stored as bf16, computed in f32: %0"), "{out}");
    assert!(out.contains("staged in shared memory"), "{out}");
    let manifest = std::fs::read_to_string(dir.join("out/manifest.json")).unwrap();
    let m: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    assert_eq!(m["dtype"], "bf16");
    assert_eq!(m["kernels"][0]["args"], "memref");
    let ptx = std::fs::read_to_string(dir.join("out/kernels.ptx")).unwrap();
    assert!(ptx.contains("cvt.rn.bf16.f32"), "{ptx}");

    for (args, want) in [
        (
            &["std/attention.mix", "--dtype", "f16"][..],
            "f16 storage is for GPU targets",
        ),
        (
            &["std/attention.mix", "--target", "sm_90", "--dtype", "fp8"][..],
            "unknown dtype `fp8`",
        ),
    ] {
        let o = build(args);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// README's `mixc explain` example is what explain prints: every line of
/// the block appears in the output (the README abridges, never invents),
/// so a stale claim about what runs fails here.
#[test]
fn the_readme_explain_example_is_current() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let intro = "For example, `mixc explain std/attention.mix --set L=16384` (abridged):";
    let at = readme.find(intro).expect("README has the explain example");
    let block = readme[at..]
        .split("```")
        .nth(1)
        .expect("the example's code block");
    let o = mixc(&["explain", "std/attention.mix", "--set", "L=16384"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let got: Vec<&str> = out.lines().map(str::trim_end).collect();
    let mut lines = 0;
    for line in block.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
        assert!(
            got.contains(&line),
            "README line not in explain's output:\n{line}\n\n{out}"
        );
        lines += 1;
    }
    assert!(lines >= 10, "{lines} lines checked");
}

/// f32 products and sums may contract into FMA (`fastmath<contract>` on
/// MLIR's `arith` ops): in PTX they are `fma.rn.f32`, not `mul.rn.f32`
/// and `add.rn.f32`, whose explicit rounding forbids ptxas to fuse them.
/// Before, std Hyena's sm_80 bundle had 75 FMAs against 461 separate
/// products and sums; now 213 against 29.
#[test]
fn f32_products_and_sums_contract_into_fma_in_ptx() {
    let dir = std::env::temp_dir().join(format!("mixc-cli-fma-{}", std::process::id()));
    let o = mixc_cached(
        &dir,
        &[
            "build",
            "std/hyena.mix",
            "--target",
            "sm_80",
            "--dump",
            "ptx",
        ],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let count = |s: &str| out.matches(s).count();
    let (fma, separate) = (
        count("fma.rn.f32"),
        count("mul.rn.f32") + count("add.rn.f32") + count("sub.rn.f32"),
    );
    assert!(
        fma > 3 * separate,
        "{fma} fma, {separate} separate products and sums"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `mixc explain --report`: each GPU kernel's machine-code estimate
/// (compute-, issue- and memory-bound times from its SASS and the plan's
/// work) beside the plan's roofline floor, never below it; refused for
/// the CPU, which has no SASS.
#[test]
fn explain_report_estimates_each_kernel_from_its_machine_code() {
    let o = mixc(&[
        "explain",
        "std/attention.mix",
        "--device",
        "cpu",
        "--report",
    ]);
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(err.contains("use a GPU device"), "{err}");

    let nvdisasm = root().join(".tools/sass/nvidia/cu13/bin/nvdisasm");
    if !nvdisasm.exists() {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "skipping explain_report_estimates_each_kernel_from_its_machine_code: no nvdisasm at {} (run scripts/setup.sh)",
            nvdisasm.display()
        );
        return;
    }
    for (device, target) in [("h100", "sm_90"), ("h200", "sm_80")] {
        let explain = |json: bool| {
            let mut args = vec![
                "explain",
                "std/attention.mix",
                "--device",
                device,
                "--target",
                target,
                "--dtype",
                "bf16",
                "--report",
            ];
            if json {
                args.push("--json");
            }
            mixc(&args)
        };
        let o = explain(true);
        let (out, err) = text(&o);
        assert!(o.status.success(), "{out}\n{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let rows = v["machine"].as_array().expect("machine rows");
        let kernels = v["kernels"].as_array().unwrap();
        assert_eq!(rows.len(), kernels.len(), "{out}");
        for r in rows {
            let e = &r["estimate"];
            let floor = r["floor_seconds"].as_f64().unwrap();
            let est = e["seconds"].as_f64().unwrap();
            // sm_90 code on the sm_90 profile is bounded by its floor;
            // sm_80 code (mma.sync at half the rate) even more so.
            assert!(est >= floor * 0.999, "{device} {target}: {r}");
        }
        // The attention kernel's hot loop holds the tensor instructions:
        // it has an issue bound, and it is slower than the tensor work.
        let att = rows.iter().find(|r| r["name"] == "o").expect("kernel o");
        let e = &att["estimate"];
        let issue = e["issue_seconds"].as_f64().expect("an issue bound");
        assert!(issue > e["tensor_seconds"].as_f64().unwrap(), "{att}");

        let o = explain(false);
        let (out, err) = text(&o);
        assert!(o.status.success(), "{out}\n{err}");
        assert!(
            out.contains(&format!("machine-code estimate on {device} (132 SMs")),
            "{out}"
        );
        assert!(out.contains("floor"), "{out}");
    }
}
