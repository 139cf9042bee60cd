//! The plan is what runs: `mixc explain`'s kernels (the optimiser's plan
//! for a device) are the kernels a bundle for that device's target
//! launches, in the same order, with the same schedules and the same
//! written values; and the mid-end's rewrites, which every back end
//! receives, claim only what interpretation confirms.

use crate::common::{check_path, mix_files, root};
use mixc_compiler::ir::lower::lower;
use mixc_compiler::ir::Module;
use mixc_opt::Profile;
use mixc_runtime::Dtype;
use std::collections::BTreeMap;
use std::process::Command;

fn sm80_f32() -> mixc_compiler::schedule::Gpu {
    mixc_compiler::schedule::Gpu {
        sm: 80,
        dtype: Dtype::F32,
    }
}

/// (schedule, written value, form) per kernel: for a plan the schedule's
/// form (`mixc explain`'s tiles and tensor cores), for a bundle the
/// kernel's description of how it was lowered.
type Kernels = Vec<(String, String, String)>;

fn planned(
    m: &Module,
    all: &BTreeMap<String, i64>,
    device: &str,
    target: &str,
    dtype: Dtype,
) -> Kernels {
    let gpu = mixc_compiler::schedule::Gpu::parse(target, dtype);
    let p = mixc_opt::optimize_for(m, all, &Profile::named(device).unwrap(), gpu).unwrap();
    for (i, k) in p.kernels.iter().enumerate() {
        assert_eq!(k.id, i + 1);
    }
    p.kernels
        .iter()
        .map(|k| (k.schedule.clone(), k.name.clone(), k.form.clone()))
        .collect()
}

fn built(m: &Module, fixed: &BTreeMap<String, i64>, target: &str, dtype: Dtype) -> Kernels {
    let name = |m: &Module, o: usize| m.value(m.ops[o].result).name.clone();
    if target == "cpu" {
        let (_, code) = mixc_backends::host::host_object(m, true, fixed).unwrap();
        code.kernels
            .iter()
            .map(|k| {
                (
                    k.schedule.to_string(),
                    name(&code.module, k.op),
                    k.kind.clone(),
                )
            })
            .collect()
    } else {
        let low = mixc_backends::kir::lower_gpu(m, fixed, dtype, target).unwrap();
        assert_eq!(low.schedules.len(), low.kernels.len());
        low.kernels
            .iter()
            .zip(&low.schedules)
            .map(|(k, s)| (s.to_string(), name(&low.module, k.op), k.kind.clone()))
            .collect()
    }
}

/// The plan's kernels are the bundle's: the same schedules and values, and
/// each kernel lowered with the form (tiles, tensor cores) the plan gives.
fn agree(want: &Kernels, got: &Kernels) -> bool {
    want.len() == got.len()
        && want
            .iter()
            .zip(got)
            .all(|(w, g)| w.0 == g.0 && w.1 == g.1 && g.2.contains(&w.2))
}

/// For every example and std mixer, on cpu (f32), sm_80 and sm_90 (f32
/// and bf16): explain's kernels are the bundle's.
#[test]
fn explain_lists_exactly_the_kernels_a_bundle_runs() {
    let configs = [
        ("cpu", Dtype::F32, "cpu"),
        ("sm_80", Dtype::F32, "h100"),
        ("sm_80", Dtype::Bf16, "h100"),
        ("sm_90", Dtype::F32, "h100"),
        ("sm_90", Dtype::Bf16, "h100"),
    ];
    let mut pairs = 0;
    let mut schedules: BTreeMap<String, usize> = BTreeMap::new();
    let mut forms: BTreeMap<String, usize> = BTreeMap::new();
    for f in mix_files("examples").into_iter().chain(mix_files("std")) {
        let c = check_path(&f, &[]);
        for prog in &c.programs {
            let m = lower(prog);
            let free: BTreeMap<String, i64> = [("B", 2), ("L", 256), ("D", 64)]
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect();
            let Ok(all) = mixc_compiler::bind_sizes(&m, &free) else {
                continue;
            };
            let fixed: BTreeMap<String, i64> = [("D".to_string(), 64)].into_iter().collect();
            for (target, dtype, device) in configs {
                let want = planned(&m, &all, device, target, dtype);
                let got = built(&m, &fixed, target, dtype);
                assert!(
                    agree(&want, &got),
                    "{f} `{}` on {target} {dtype}: explain {want:#?} and the bundle {got:#?} differ",
                    prog.name
                );
                for (s, _, form) in &got {
                    *schedules.entry(s.clone()).or_default() += 1;
                    if s == "fused attention" {
                        *forms.entry(form.clone()).or_default() += 1;
                    }
                }
                pairs += 1;
            }
        }
    }
    println!("{pairs} mixer/target pairs agree; kernels by schedule: {schedules:?}");
    assert!(pairs >= 80, "only {pairs} pairs");
    for s in [
        "generic",
        "fused attention",
        "fft conv (library)",
        "gemm (library)",
        "blocked fft conv",
        "scan + readout",
        "chunked scan + readout",
    ] {
        assert!(schedules.contains_key(s), "no `{s}` kernel: {schedules:?}");
    }
    // Every attention form ran somewhere: the host's rows in key chunks,
    // staged tiles, mma.sync and wgmma.
    for f in [
        "in chunks of",
        "staged in shared memory",
        "mma.sync",
        "wgmma",
    ] {
        assert!(
            forms.keys().any(|k| k.contains(f)),
            "no attention kernel `{f}`: {forms:?}"
        );
    }
}

/// The same through the CLI: `mixc explain --json` and the manifest of
/// `mixc build` list the same kernels with the same ids and schedules.
#[test]
fn explain_json_and_the_manifest_agree() {
    let dir = std::env::temp_dir().join(format!("mixc-plan-{}", std::process::id()));
    for (file, target, dtype, device) in [
        ("std/attention.mix", "cpu", "f32", "cpu"),
        ("std/hyena.mix", "cpu", "f32", "cpu"),
        ("std/attention.mix", "sm_90", "bf16", "h100"),
        ("examples/retnet.mix", "sm_80", "f32", "h100"),
    ] {
        let out = dir.join(format!("{target}-{dtype}-{}", file.replace('/', "-")));
        let o = Command::new(env!("CARGO_BIN_EXE_mixc"))
            .current_dir(root())
            .args(["build", file, "--target", target, "--dtype", dtype])
            .args(["--set", "D=64", "--no-cache", "-o"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap())
                .unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_mixc"))
            .current_dir(root())
            .args(["explain", file, "--device", device, "--json"])
            .args(["--set", "D=64,L=256,B=2"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let values = manifest["values"].as_array().unwrap();
        let from_manifest: Vec<(u64, String, String)> = manifest["kernels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                let w = k["writes"].as_u64().unwrap() as usize;
                (
                    k["id"].as_u64().unwrap(),
                    k["schedule"].as_str().unwrap().to_string(),
                    values[w]["name"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let from_plan: Vec<(u64, String, String)> = plan["kernels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                (
                    k["id"].as_u64().unwrap(),
                    k["schedule"].as_str().unwrap().to_string(),
                    k["name"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(from_plan, from_manifest, "{file} on {target} {dtype}");
        assert!(!from_plan.is_empty());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same over random mixers from the differential generator (every
/// op kind, masks, recurrences, convolutions, several inputs): explain's
/// kernels are the bundle's on cpu, sm_80 (f32) and sm_90 (bf16).
#[test]
fn explain_lists_the_bundles_kernels_for_random_mixers() {
    let mut pairs = 0;
    for seed in 0..60u64 {
        let case = mixc_fuzz::gen::case(seed);
        let src = case.program.text();
        let c = mixc_dsl::check_file("random.mix", &src, &Default::default());
        if c.has_errors() {
            continue;
        }
        let Ok(prog) = c.program(None) else { continue };
        let m = lower(prog);
        let Ok(all) = mixc_compiler::bind_sizes(&m, &case.shape.sizes) else {
            continue;
        };
        let fixed: BTreeMap<String, i64> = case
            .shape
            .sizes
            .iter()
            .filter(|(k, _)| !m.run_time_sizes().contains(k))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for (target, dtype, device) in [
            ("cpu", Dtype::F32, "cpu"),
            ("sm_80", Dtype::F32, "h100"),
            ("sm_90", Dtype::Bf16, "h100"),
        ] {
            let want = planned(&m, &all, device, target, dtype);
            let got = built(&m, &fixed, target, dtype);
            assert!(
                agree(&want, &got),
                "seed {seed} on {target} {dtype}: explain {want:#?} and the bundle {got:#?} differ\n{src}"
            );
            pairs += 1;
        }
    }
    println!("{pairs} random mixer/target pairs agree");
    assert!(pairs >= 120, "only {pairs} pairs");
}

/// Which convolutions run by FFT is decided from the math, not from size
/// names: a filter as long as the signal axis (here named `T`) takes the
/// FFT schedules, a filter of a few taps stays a direct sum; both match
/// the interpreter on the CPU, MLIR and simulator paths.
#[test]
fn long_convolutions_are_found_by_structure_not_by_the_name_l() {
    use mixc_compiler::schedule::{schedule, Schedule, Target};
    use mixc_fuzz::{exec::Arch, Path, Shape};
    let long = "mixer m(x: [B, T, D]) -> [B, T, D] {\n    param h: [T, D] ~ normal(0, 0.1)\n    y[b, t, d] = sum(s) h[s, d] * x[b, t - s, d] where s <= t\n    return y\n}\n";
    let short = "mixer m(x: [B, T, D]) -> [B, T, D] {\n    config K = 4\n    param h: [K, D] ~ normal(0, 0.1)\n    y[b, t, d] = sum(s) h[s, d] * x[b, t - s, d] where s <= t\n    return y\n}\n";
    for (src, fft) in [(long, true), (short, false)] {
        let c = crate::common::check_ok("conv.mix", src, &[]);
        let m = lower(c.program(None).unwrap());
        let consts: BTreeMap<String, i64> = [("D".to_string(), 4)].into_iter().collect();
        let host = schedule(&m, Target::Host, true, &consts).unwrap();
        let gpu = schedule(&m, Target::Gpu(sm80_f32()), true, &consts).unwrap();
        assert_eq!(
            host.kernels
                .iter()
                .any(|k| matches!(k, Schedule::FftConv(..))),
            fft,
            "{src}"
        );
        assert_eq!(
            gpu.kernels
                .iter()
                .any(|k| matches!(k, Schedule::BlockedFft(..))),
            fft,
            "{src}"
        );
        let shape = Shape::parse("B=2,T=37,D=4").unwrap();
        let paths = [Path::Cpu, Path::Simt(Dtype::F32, Arch::Sm80)];
        let o = mixc_fuzz::run_source(src, &shape, 7, &paths);
        assert!(o.invalid.is_none(), "{:?}", o.invalid);
        for (p, v) in &o.verdicts {
            assert!(!v.is_failure(), "{} on {}: {}", src, p.name(), v.describe());
        }
    }
}

/// Size roles come from the signature's positions, not from the names `B`
/// and `L`: a mixer over `x: [N, T, C]` builds with `N` and `T` left to
/// run time and `C` folded in, its attention splits threads over the
/// query axis, and it matches the interpreter.
#[test]
fn run_time_sizes_follow_the_signature_not_the_names() {
    let src = "use std.masks\nmixer renamed(x: [N, T, C]) -> [N, T, C] {\n    config H = 2\n    dim E = C / H\n    param wq: [C, H, E] ~ normal(0, 0.2)\n    param wk: [C, H, E] ~ normal(0, 0.2)\n    param wv: [C, H, E] ~ normal(0, 0.2)\n    q[n, t, h, e] = sum(c) x[n, t, c] * wq[c, h, e]\n    k[n, t, h, e] = sum(c) x[n, t, c] * wk[c, h, e]\n    v[n, t, h, e] = sum(c) x[n, t, c] * wv[c, h, e]\n    s[n, h, i, j] = sum(e) q[n, i, h, e] * k[n, j, h, e]\n    p[n, h, i, j] = softmax(s[n, h, i, j], over: j) where causal(i, j)\n    o[n, i, h, e] = sum(j) p[n, h, i, j] * v[n, j, h, e]\n    y[n, t, c] = sum(h, e) o[n, t, h, e] * wq[c, h, e]\n    return y\n}\n";
    let c = crate::common::check_ok("renamed.mix", src, &[]);
    let m = lower(c.program(None).unwrap());
    assert_eq!(m.run_time_sizes(), vec!["N".to_string(), "T".to_string()]);
    let dir = std::env::temp_dir().join(format!("mixc-roles-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("renamed.mix");
    std::fs::write(&file, src).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_mixc"))
        .current_dir(root())
        .args(["build"])
        .arg(&file)
        .args(["--target", "cpu", "--set", "C=16", "--no-cache", "-o"])
        .arg(dir.join("b"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("b/manifest.json")).unwrap())
            .unwrap();
    let sizes: BTreeMap<String, Option<String>> = manifest["sizes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["value"].as_str().map(str::to_string),
            )
        })
        .collect();
    assert_eq!(sizes["N"], None, "{sizes:?}");
    assert_eq!(sizes["T"], None, "{sizes:?}");
    assert_eq!(sizes["C"].as_deref(), Some("16"), "{sizes:?}");
    let kernels = manifest["kernels"].as_array().unwrap();
    let attention = kernels
        .iter()
        .find(|k| k["schedule"] == "fused attention")
        .expect("a fused attention kernel");
    // Its blocks, split over the host's threads, are blocks of query rows.
    let parallel = attention["parallel"].as_str().unwrap_or("");
    assert!(
        parallel.contains('T') && !parallel.contains('C'),
        "{attention}"
    );
    let o = Command::new(env!("CARGO_BIN_EXE_mixc"))
        .current_dir(root())
        .args(["run"])
        .arg(&file)
        .args(["--backend", "cpu", "--compare", "ref"])
        .args(["--set", "N=2,T=37,C=16"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );

    let _ = std::fs::remove_dir_all(&dir);
}

/// The mid-end's claims, by interpretation, on every example and std
/// mixer: for the host pipeline (long convolutions hoisted for the FFT
/// library) and the GPU one, the output of the module the back ends
/// receive equals the original's, and every equivalence a pass claims
/// holds (1e-9: the same arithmetic, reassociated at most).
#[test]
fn the_mid_end_keeps_every_mixers_output_and_its_claims_hold() {
    use mixc_compiler::Interpreter;
    let mut claims = 0;
    let mut mixers = 0;
    for f in mix_files("examples").into_iter().chain(mix_files("std")) {
        let c = check_path(&f, &[]);
        for prog in &c.programs {
            let m = lower(prog);
            let free: BTreeMap<String, i64> = [("B", 2), ("L", 13), ("D", 8)]
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect();
            let Ok(all) = mixc_compiler::bind_sizes(&m, &free) else {
                continue;
            };
            let consts = mixc_compiler::schedule::constants(&m, &all);
            let mut orig = Interpreter::for_module(m.clone(), &free).unwrap();
            orig.init(3).unwrap();
            orig.run().unwrap();
            for (library_fft, merge_projections, gemm_sides) in
                [(true, false, true), (false, true, false)]
            {
                let options = mixc_compiler::passes::Options {
                    library_fft,
                    merge_projections,
                    gemm_sides,
                };
                let mid = mixc_compiler::passes::pipeline(&m, options, &consts).unwrap();
                let mut it = Interpreter::for_module(mid.module.clone(), &free).unwrap();
                it.init(3).unwrap();
                it.run().unwrap();
                let err = mixc_runtime::rel_err(&it.output().data, &orig.output().data);
                assert!(
                    err < 1e-9,
                    "{f} `{}` after {:?}: {err:e}",
                    prog.name,
                    mid.passes
                );
                for (a, b) in &mid.claims {
                    let name = |v: &mixc_compiler::ir::ValueId| mid.module.value(*v).name.clone();
                    let (x, y) = (it.get(&name(a)).unwrap(), it.get(&name(b)).unwrap());
                    let err = mixc_runtime::rel_err(&x.data, &y.data);
                    assert!(
                        err < 1e-9,
                        "{f}: `{}` = `{}` off by {err:e}",
                        name(a),
                        name(b)
                    );
                    claims += 1;
                }
            }
            mixers += 1;
        }
    }
    println!("{mixers} mixers, {claims} claims checked");
    assert!(
        mixers >= 15 && claims >= 2,
        "{mixers} mixers, {claims} claims"
    );
}

/// A random mask over `i`, `j` and `L`: comparisons of sums, differences,
/// constant multiples, floor divisions and moduli, under `and`, `or`,
/// `not` (the operations the interval evaluation models, and a few it does
/// not: products of indices, `abs`).
fn random_mask(rng: &mut u64, depth: u32) -> String {
    let mut next = |n: u64| {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        *rng % n
    };
    fn int(next: &mut dyn FnMut(u64) -> u64, depth: u32) -> String {
        let leaf = |next: &mut dyn FnMut(u64) -> u64| match next(5) {
            0 | 1 => "i".to_string(),
            2 | 3 => "j".to_string(),
            _ => format!("{}", next(40) as i64 - 8),
        };
        if depth == 0 {
            return leaf(next);
        }
        match next(9) {
            0 => format!("({} + {})", int(next, depth - 1), int(next, depth - 1)),
            1 => format!("({} - {})", int(next, depth - 1), int(next, depth - 1)),
            2 => format!("({} * {})", next(5) as i64 - 2, int(next, depth - 1)),
            3 => format!("({} // {})", int(next, depth - 1), next(20) + 1),
            4 => format!("({} % {})", int(next, depth - 1), next(20) + 1),
            5 => "(L - 1 - i)".to_string(),
            6 => format!("({} * {})", int(next, 0), int(next, 0)),
            _ => leaf(next),
        }
    }
    let cmp = ["<", "<=", ">", ">=", "==", "!="];
    match next(6) {
        0 if depth > 0 => format!(
            "({} and {})",
            random_mask(rng, depth - 1),
            random_mask(rng, depth - 1)
        ),
        1 if depth > 0 => format!(
            "({} or {})",
            random_mask(rng, depth - 1),
            random_mask(rng, depth - 1)
        ),
        2 if depth > 0 => format!("not {}", random_mask(rng, depth - 1)),
        _ => {
            let op = cmp[next(6) as usize];
            format!("({} {op} {})", int(&mut next, 2), int(&mut next, 2))
        }
    }
}

/// The one interval analysis of masks (`mixc_compiler::interval`, which
/// the kernels emit and explain evaluates) is sound against the
/// interpreter: on random boxes of random masks, "surely true" and
/// "surely false" hold for every pair the interpreter evaluates.
#[test]
fn mask_tile_classes_are_sound_against_the_interpreter() {
    use mixc_compiler::interval::{class, Exact, Num};
    use mixc_compiler::ir::Node;
    let l = 96i64;
    let (mut decided, mut boxes) = (0, 0);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for case in 0..120 {
        let mask = random_mask(&mut rng, 2);
        let src = format!(
            "mixer m(x: [B, L, D]) -> [B, L, L] {{\n    y[b, i, j] = select({mask}, 1.0, 0.0) + 0.0 * x[b, i, 0] * x[b, j, 0]\n    return y\n}}\n"
        );
        let c = mixc_dsl::check_file("mask.mix", &src, &Default::default());
        if c.has_errors() {
            continue;
        }
        let prog = c.program(None).unwrap();
        let it = crate::common::run(prog, &[("B", 1), ("L", l), ("D", 2)], 1);
        let out = it.output();
        let m = lower(prog);
        let op = m.ops.last().unwrap();
        let mut cond = None;
        let mut stack = vec![op.body];
        while let Some(e) = stack.pop() {
            if let Node::Call(_, args) = &m.expr(e).node {
                if args.len() == 3 && cond.is_none() {
                    cond = Some(args[0]);
                }
            }
            stack.extend(m.children(e));
        }
        let Some(cond) = cond else { continue };
        let sizes: BTreeMap<String, i64> = [("B", 1), ("L", l), ("D", 2)]
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        let fixed = BTreeMap::new();
        let mut alg = Exact {
            sizes: &sizes,
            fixed: &fixed,
        };
        let mut r = rng;
        for _ in 0..40 {
            r = r
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let pick = |x: u64| (x % l as u64) as i64;
            let (a, b) = (pick(r >> 7), pick(r >> 23));
            let (c0, d0) = (pick(r >> 37), pick(r >> 51));
            let (i0, i1) = (a.min(b), a.max(b).min(a.min(b) + 20));
            let (j0, j1) = (c0.min(d0), c0.max(d0).min(c0.min(d0) + 20));
            let n = |v| Num { v, literal: false };
            let ranges = [(1, (n(i0), n(i1))), (2, (n(j0), n(j1)))]
                .into_iter()
                .collect();
            let (surely, never) = class(&m, cond, &ranges, &mut alg).unwrap();
            boxes += 1;
            assert!(!(surely && never), "case {case}: {mask}: both on a box");
            if surely || never {
                decided += 1;
            }
            for i in i0..=i1 {
                for j in j0..=j1 {
                    let v = out.data[(i * l + j) as usize];
                    let wrong = (surely && v != 1.0) || (never && v != 0.0);
                    assert!(
                        !wrong,
                        "case {case}: `{mask}` on i in [{i0}, {i1}], j in [{j0}, {j1}]: claimed {} but ({i}, {j}) is {v}",
                        if surely { "surely true" } else { "surely false" }
                    );
                }
            }
        }
    }
    println!("{decided} of {boxes} boxes decided");
    assert!(
        boxes >= 2000 && decided * 5 >= boxes,
        "{decided} of {boxes}"
    );
}
