//! The optimiser: what it discovers from the math, and that its plan
//! accounts for every op exactly once.

use crate::common::{check_path, mix_files};
use mixc_compiler::ir::lower::lower;
use mixc_opt::{explore as optimize, Plan, Profile};
use std::collections::BTreeMap;

fn plan(
    file: &str,
    mixer: Option<&str>,
    overrides: &[(&str, f64)],
    sizes: &[(&str, i64)],
    device: &str,
) -> Plan {
    let c = check_path(file, overrides);
    let prog = c.program(mixer).unwrap();
    let m = lower(prog);
    let free: BTreeMap<String, i64> = sizes.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    let all = mixc_compiler::bind_sizes(&m, &free).unwrap();
    optimize(&m, &all, &Profile::named(device).unwrap()).unwrap()
}

/// Optimises a program given as text.
fn plan_src(src: &str, sizes: &[(&str, i64)], device: &str) -> Plan {
    let c = crate::common::check_ok("src.mix", src, &[]);
    let m = lower(c.program(None).unwrap());
    let free: BTreeMap<String, i64> = sizes.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    let all = mixc_compiler::bind_sizes(&m, &free).unwrap();
    optimize(&m, &all, &Profile::named(device).unwrap()).unwrap()
}

/// Kernels read only inputs, parameters and what earlier kernels wrote, and
/// the last kernel writes the output.
pub fn assert_reads_in_order(p: &Plan, label: &str) {
    let m = &p.module;
    let mut available: Vec<String> = m
        .values
        .iter()
        .filter(|v| !matches!(v.def, mixc_compiler::ir::ValueDef::Op(_)))
        .map(|v| v.name.clone())
        .collect();
    for k in &p.kernels {
        for r in &k.reads {
            assert!(
                available.contains(r),
                "{label}: kernel `{}` reads `{r}` before it exists\n{}",
                k.name,
                p.render()
            );
        }
        available.push(k.name.clone());
        if k.algorithm.starts_with("merged projections") {
            available.extend(k.covers.iter().cloned());
        }
    }
    assert_eq!(
        p.kernels.last().map(|k| k.name.as_str()),
        Some(m.value(m.output).name.as_str()),
        "{label}"
    );
}

/// A plan is sound for the program `m` it came from: every equivalence a
/// rewrite claims holds under interpretation on random inputs, the output
/// is unchanged, and kernels read in order.
pub fn assert_plan_sound(
    p: &Plan,
    m: &mixc_compiler::ir::Module,
    free: &BTreeMap<String, i64>,
    seed: u64,
    label: &str,
) {
    use mixc_compiler::Interpreter;
    let mut it = Interpreter::for_module(p.module.clone(), free).unwrap();
    it.init(seed).unwrap();
    it.run().unwrap();
    for (a, b) in &p.equivalences {
        let err = mixc_runtime::rel_err(&it.get(b).unwrap().data, &it.get(a).unwrap().data);
        assert!(err < 1e-9, "{label}: `{a}` vs `{b}`: {err:e}");
    }
    let mut orig = Interpreter::for_module(m.clone(), free).unwrap();
    orig.init(seed).unwrap();
    orig.run().unwrap();
    let err = mixc_runtime::rel_err(&it.output().data, &orig.output().data);
    assert!(err < 1e-9, "{label}: output changed by {err:e}");
    assert_reads_in_order(p, label);
}

fn skipped(p: &Plan) -> Vec<f64> {
    p.kernels
        .iter()
        .filter_map(|k| k.skipped_fraction)
        .collect()
}

const BIG: &[(&str, i64)] = &[("B", 1), ("L", 16384), ("D", 1024)];

#[test]
fn causal_attention_becomes_one_fused_kernel_skipping_half_the_tiles() {
    let p = plan("std/attention.mix", None, &[], BIG, "h100");
    let fused: Vec<_> = p
        .kernels
        .iter()
        .filter(|k| k.algorithm.starts_with("fused attention"))
        .collect();
    assert_eq!(fused.len(), 1, "{}", p.render());
    assert_eq!(fused[0].covers, vec!["s", "p", "o"]);
    // 64 x 64 tiles (the GPU template's): the 256 * 255 / 2 tiles above
    // the diagonal are empty.
    assert_eq!(skipped(&p), vec![32640.0 / 65536.0]);
    // No kernel writes an L x L tensor: s and p exist only inside the fused kernel.
    let kernel_outputs: Vec<&str> = p.kernels.iter().map(|k| k.name.as_str()).collect();
    assert!(
        !kernel_outputs.contains(&"s") && !kernel_outputs.contains(&"p"),
        "{kernel_outputs:?}"
    );
    assert!(p.total_seconds < p.naive_seconds / 2.0);
    assert_eq!(
        p.firings
            .iter()
            .filter(|f| f.rule == "fuse-attention")
            .count(),
        1
    );
}

#[test]
fn renamed_and_reordered_attention_is_found_too() {
    // Same math, other names, other index order, scale written elsewhere.
    let src = "mixer other(inp: [B, L, D]) -> [B, L, D] {\n    config heads = 4\n    dim hd = D / heads\n    param a: [D, heads, hd] ~ normal(0, 0.1)\n    param b: [D, heads, hd] ~ normal(0, 0.1)\n    param c: [D, heads, hd] ~ normal(0, 0.1)\n    param out: [heads, hd, D] ~ normal(0, 0.1)\n    kk[n, t, g, f] = sum(d) a[d, g, f] * inp[n, t, d]\n    qq[n, t, g, f] = sum(d) inp[n, t, d] * b[d, g, f]\n    vv[n, t, g, f] = sum(d) inp[n, t, d] * c[d, g, f]\n    logits[n, g, t, u] = sum(f) 0.125 * qq[n, t, g, f] * kk[n, u, g, f]\n    w[n, g, t, u] = softmax(logits[n, g, t, u], over: u) where u <= t\n    ctx[n, t, g, f] = sum(u) vv[n, u, g, f] * w[n, g, t, u]\n    res[n, t, d] = sum(g, f) ctx[n, t, g, f] * out[g, f, d]\n    return res\n}\n";
    let p = plan_src(src, BIG, "h100");
    let fused: Vec<_> = p
        .kernels
        .iter()
        .filter(|k| k.algorithm.starts_with("fused attention"))
        .collect();
    assert_eq!(fused.len(), 1, "{}", p.render());
    assert_eq!(skipped(&p), vec![32640.0 / 65536.0]);
}

#[test]
fn sliding_window_skips_about_one_minus_w_over_l() {
    let p = plan(
        "examples/sliding_window.mix",
        None,
        &[("w", 1024.0)],
        BIG,
        "h100",
    );
    let s = skipped(&p);
    assert_eq!(s.len(), 1, "{}", p.render());
    // Each 64-query tile row keeps the 17 key tiles the window touches.
    assert!(
        (s[0] - (1.0 - 1024.0 / 16384.0)).abs() < 0.01,
        "skipped {}",
        s[0]
    );
    assert!(
        (s[0] - (1.0 - 17.0 / 256.0)).abs() < 0.005,
        "skipped {}",
        s[0]
    );
}

#[test]
fn dilated_and_block_sparse_report_their_true_tile_sparsity() {
    // Dilated: three branches with segments of 8, 16, 32 <= the tile size,
    // so only the 256 diagonal tiles of 64 x 64 can hold kept pairs.
    let p = plan("examples/dilated.mix", None, &[], BIG, "h100");
    let s = skipped(&p);
    assert_eq!(s.len(), 3, "{}", p.render());
    for f in s {
        assert!(
            (f - (1.0 - 256.0 / 65536.0)).abs() < 1e-9,
            "dilated skipped {f}"
        );
    }
    // Fixed block-sparse: the summary column of every block reaches every
    // tile below the diagonal, so exactly the tiles above it are empty.
    let p = plan("examples/block_sparse.mix", None, &[], BIG, "h100");
    assert_eq!(skipped(&p), vec![32640.0 / 65536.0], "{}", p.render());
}

#[test]
fn hyena_long_conv_goes_fft_and_short_conv_stays_direct() {
    let p = plan(
        "std/hyena.mix",
        None,
        &[],
        &[("B", 8), ("L", 16384), ("D", 768)],
        "h100",
    );
    let covering = |v: &str| {
        p.kernels
            .iter()
            .find(|k| k.covers.iter().any(|c| c.starts_with(v)))
            .unwrap_or_else(|| panic!("{v}\n{}", p.render()))
    };
    // The long convolution (split from its skip term as `z.0`) is an FFT
    // convolution.
    let long = covering("z.0");
    assert!(
        long.algorithm.starts_with("FFT causal conv"),
        "{}",
        p.render()
    );
    // The 3-tap short convolution stays direct.
    let short = covering("s");
    assert!(
        short.algorithm.starts_with("direct causal conv (3 taps"),
        "{}",
        p.render()
    );
    // No epilogue is fused into another op's kernel (no back end runs that
    // form, so the e-graph does not offer it): the skip term and the short
    // convolution's bias are kernels of their own.
    for v in ["z", "sc"] {
        assert!(
            p.kernels.iter().any(|k| k.name == v && k.covers.len() == 1),
            "{v}\n{}",
            p.render()
        );
    }
    // At a short length the long conv has few taps too, and stays direct.
    let p = plan(
        "std/hyena.mix",
        None,
        &[],
        &[("B", 1), ("L", 16), ("D", 64)],
        "cpu",
    );
    let k = p.kernels.iter().find(|k| k.name == "z.0").unwrap();
    assert!(
        k.algorithm.starts_with("direct causal conv"),
        "{}",
        p.render()
    );
}

#[test]
fn every_plan_covers_every_op_once_and_is_fast_to_find() {
    let mut report = Vec::new();
    for f in mix_files("examples").into_iter().chain(mix_files("std")) {
        let c = check_path(&f, &[]);
        for prog in &c.programs {
            let m = lower(prog);
            let free: BTreeMap<String, i64> = [("B", 2), ("L", 4096), ("D", 256)]
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect();
            let all = mixc_compiler::bind_sizes(&m, &free).unwrap();
            let p = optimize(&m, &all, &Profile::named("h100").unwrap()).unwrap();
            // Every covered op is an op of the plan's module; no value is
            // written by two kernels; an op computed by more than one kernel
            // is only ever recomputed on chip inside fused attention. (That
            // kernels read only what earlier kernels wrote, and that the
            // result is unchanged, are the two tests below.)
            let ops: Vec<String> = p
                .module
                .ops
                .iter()
                .map(|o| p.module.value(o.result).name.clone())
                .collect();
            let covered: Vec<String> = p.kernels.iter().flat_map(|k| k.covers.clone()).collect();
            assert!(covered.iter().all(|c| ops.contains(c)), "{f}: {covered:?}");
            for name in &covered {
                let n = p.kernels.iter().filter(|k| k.covers.contains(name)).count();
                let producers = p.kernels.iter().filter(|k| &k.name == name).count();
                assert!(
                    producers <= 1,
                    "{f}: `{name}` written by {producers} kernels"
                );
                if n > 1 {
                    assert!(
                        p.kernels
                            .iter()
                            .filter(|k| k.covers.contains(name))
                            .all(|k| k.algorithm.starts_with("fused attention") || &k.name == name),
                        "{f}: `{name}` computed {n} times outside fused attention"
                    );
                }
            }
            assert!(
                p.total_seconds <= p.naive_seconds * 1.0001,
                "{f}: the plan is slower than the unfused program"
            );
            let ms = p.saturation_ms + p.extraction_ms;
            assert!(ms < 1000.0, "{f} {}: {ms} ms", prog.name);
            report.push(format!("{} {}: {:.1} ms", f, prog.name, ms));
        }
    }
    println!("saturation + extraction: {}", report.join("; "));
}

#[test]
fn linear_attention_is_reassociated_into_a_scan_chosen_by_cost() {
    let p = plan("examples/linear_attention.mix", None, &[], BIG, "h100");
    let num = p
        .kernels
        .iter()
        .find(|k| k.covers.iter().any(|c| c == "num.readout"))
        .expect("num rewritten");
    assert!(
        num.algorithm
            .starts_with("linear attention as a chunked scan"),
        "{}",
        p.render()
    );
    assert!(
        p.kernels.iter().all(|k| k.name != "a"),
        "the L x L scores are gone: {}",
        p.render()
    );
    assert_eq!(
        p.firings
            .iter()
            .filter(|f| f.rule == "linear-attention-as-scan")
            .count(),
        4
    );
    // On two CPU cores the sequential scan wins: fewer flops, no parallelism to lose.
    let p = plan(
        "examples/linear_attention.mix",
        None,
        &[],
        &[("B", 1), ("L", 4096), ("D", 1024)],
        "cpu",
    );
    let num = p
        .kernels
        .iter()
        .find(|k| k.covers.iter().any(|c| c == "num.readout"))
        .unwrap();
    assert!(
        num.algorithm
            .starts_with("linear attention as a sequential scan"),
        "{}",
        p.render()
    );
    // Softmax attention is not linear attention: the rule does not fire.
    let p = plan("std/attention.mix", None, &[], BIG, "h100");
    assert!(p
        .firings
        .iter()
        .all(|f| f.rule != "linear-attention-as-scan"));
}

/// Every rewrite that introduces new IR claims two values are equal; the
/// extended module is interpreted and the claims checked on random inputs.
#[test]
fn every_claimed_equivalence_holds_under_interpretation() {
    let mut checked = 0;
    for f in mix_files("examples").into_iter().chain(mix_files("std")) {
        let c = check_path(&f, &[]);
        for prog in &c.programs {
            let m = lower(prog);
            let free: BTreeMap<String, i64> = [("B", 2), ("L", 11), ("D", 32)]
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect();
            let all = mixc_compiler::bind_sizes(&m, &free).unwrap();
            let p = optimize(&m, &all, &Profile::named("cpu").unwrap()).unwrap();
            assert_plan_sound(&p, &m, &free, 5, &f);
            checked += p.equivalences.len();
        }
    }
    assert!(checked >= 2, "no rewrite claimed anything ({checked})");
}

#[test]
fn kernels_read_only_inputs_or_earlier_kernels() {
    for f in mix_files("examples").into_iter().chain(mix_files("std")) {
        let c = check_path(&f, &[]);
        for prog in &c.programs {
            let p = plan(
                &f,
                Some(&prog.name),
                &[],
                &[("B", 1), ("L", 1024), ("D", 256)],
                "h100",
            );
            assert_reads_in_order(&p, &f);
        }
    }
}

#[test]
fn projections_of_one_input_merge_into_one_contraction() {
    // The e-graph prices the merged form ...
    let p = plan("std/attention.mix", None, &[], BIG, "h100");
    let merged: Vec<_> = p
        .kernels
        .iter()
        .filter(|k| k.algorithm.starts_with("merged projections"))
        .collect();
    assert_eq!(merged.len(), 1, "{}", p.render());
    assert_eq!(merged[0].covers, vec!["q", "k", "v"]);
    // ... and the GPU schedule runs it (the mid-end's `merge-projections`);
    // the host's keeps three projections and says why.
    for device in ["h100", "cpu"] {
        let c = check_path("std/attention.mix", &[]);
        let m = lower(c.program(None).unwrap());
        let free: BTreeMap<String, i64> = BIG.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let all = mixc_compiler::bind_sizes(&m, &free).unwrap();
        let p = mixc_opt::optimize(&m, &all, &Profile::named(device).unwrap()).unwrap();
        if device == "cpu" {
            assert!(
                p.not_run.len() == 1 && p.not_run[0].contains("the host does not run it"),
                "{}",
                p.render()
            );
            assert!(
                ["q", "k", "v"]
                    .iter()
                    .all(|v| p.kernels.iter().any(|k| k.name == *v)),
                "{}",
                p.render()
            );
            continue;
        }
        assert!(p.not_run.is_empty(), "{}", p.render());
        let merged: Vec<_> = p
            .kernels
            .iter()
            .filter(|k| k.notes.iter().any(|n| n.starts_with("merged projections")))
            .collect();
        assert_eq!(merged.len(), 1, "{}", p.render());
        assert_eq!(merged[0].name, "q_k_v~merged", "{}", p.render());
        assert!(
            merged[0].notes[0].contains("`q`, `k`, `v`"),
            "{:?}",
            merged[0].notes
        );
        // No kernel computes q, k or v on its own.
        assert!(
            p.kernels
                .iter()
                .all(|k| !["q", "k", "v"].contains(&k.name.as_str())),
            "{}",
            p.render()
        );
        // x (16384 x 1024 at 2 bytes) is read once: the kernel
        // moves x, the stacked weights and the three results.
        let once = 2.0 * (16384.0 * 1024.0 + 3.0 * 1024.0 * 1024.0 + 3.0 * 16384.0 * 1024.0);
        assert!(
            (merged[0].work.bytes - once).abs() < 1.0,
            "{} vs {once}",
            merged[0].work.bytes
        );
        // The stacked weights are computed once per parameter set.
        let w = p
            .kernels
            .iter()
            .find(|k| k.name == "wq_wk_wv~merged")
            .unwrap();
        assert!(!w.per_call, "{}", p.render());
    }
    // The output projection reads a different input: it stays alone.
    assert!(p
        .kernels
        .iter()
        .any(|k| k.name == "y" && k.algorithm == "tiled contraction"));
}

#[test]
fn input_independent_values_are_computed_once_not_per_call() {
    // Hyena's implicit filter depends only on its parameters and L.
    let p = plan(
        "std/hyena.mix",
        None,
        &[],
        &[("B", 8), ("L", 16384), ("D", 768)],
        "h100",
    );
    for k in &p.kernels {
        let filter = k.covers.iter().all(|c| c.starts_with("h."));
        assert_eq!(
            k.per_call, !filter,
            "kernel `{}` covering {:?}",
            k.name, k.covers
        );
    }
    assert!(p.precompute_seconds > 0.0);
    let per_call: f64 = p
        .kernels
        .iter()
        .filter(|k| k.per_call)
        .map(|k| k.seconds)
        .sum();
    assert_eq!(p.total_seconds, per_call);
    // ALiBi's slope table too; attention's kernels all depend on x.
    let p = plan("examples/alibi.mix", None, &[], BIG, "h100");
    assert!(
        p.kernels.iter().any(|k| k.name == "slope" && !k.per_call),
        "{}",
        p.render()
    );
    let p = plan("std/attention.mix", None, &[], BIG, "h100");
    assert!(p.kernels.iter().all(|k| k.per_call));
}

fn fired(src: &str, rule: &str) -> usize {
    plan_src(src, BIG, "h100")
        .firings
        .iter()
        .filter(|f| f.rule == rule)
        .count()
}

const HEAD: &str = "use std.masks\nmixer m(x: [B, L, D]) -> [B, L, D] {\n    param w: [D, D] ~ normal(0, 0.1)\n    param h: [L, D] ~ normal(0, 0.1)\n    param g: [D] ~ normal(0, 1)\n";

#[test]
fn rules_do_not_fire_where_they_must_not() {
    // fuse-attention: the probabilities are also used elsewhere, so they
    // must be materialised; no fusion.
    let src = format!("{HEAD}    s[b, i, j] = sum(d) x[b, i, d] * x[b, j, d]\n    p = softmax(s, over: j) where causal(i, j)\n    o[b, i, d] = sum(j) p[b, i, j] * x[b, j, d]\n    c[b, i, d] = sum(j) p[b, i, j] * x[b, j, d] * g[d]\n    y[b, i, d] = o[b, i, d] + c[b, i, d]\n    return y\n}}\n");
    assert_eq!(fired(&src, "fuse-attention"), 0);
    // conv-as-fft: no shift by the tap, so no convolution.
    let src = format!(
        "{HEAD}    y[b, l, d] = sum(t) h[t, d] * x[b, t, d] * x[b, l, d]\n    return y\n}}\n"
    );
    assert_eq!(fired(&src, "conv-as-fft"), 0);
    // linear-attention-as-scan: a window, not a causal guard.
    let src = format!("{HEAD}    a[b, i, j] = sum(d) x[b, i, d] * x[b, j, d]\n    y[b, i, d] = sum(j) a[b, i, j] * x[b, j, d] where window(i, j, 4)\n    return y\n}}\n");
    assert_eq!(fired(&src, "linear-attention-as-scan"), 0);
    // merge-projections: different inputs.
    let src = format!("{HEAD}    a[b, l, d] = sum(k) x[b, l, k] * w[k, d]\n    c[b, l, d] = sum(k) a[b, l, k] * w[k, d]\n    return c\n}}\n");
    assert_eq!(fired(&src, "merge-projections"), 0);
    // inline-elementwise: an op that reads its producer at its own indices
    // (the product `u` of the gate) is not inlined.
    let p = plan(
        "std/hyena.mix",
        None,
        &[],
        &[("B", 1), ("L", 64), ("D", 8)],
        "cpu",
    );
    assert!(
        p.firings
            .iter()
            .all(|f| !(f.rule == "inline-elementwise" && f.detail.contains("recomputes `u`"))),
        "{:?}",
        p.firings
    );
}

#[test]
fn first_order_linear_recurrences_become_parallel_prefix_scans() {
    // At L=4k, D=64 on the h100 profile Mamba's state is small: the scan
    // runs as a parallel prefix and its readout as a contraction.
    let p = plan(
        "examples/mamba.mix",
        None,
        &[],
        &[("B", 1), ("L", 4096), ("D", 64)],
        "h100",
    );
    let h = p.kernels.iter().find(|k| k.name == "h").unwrap();
    assert!(
        h.algorithm.starts_with("parallel prefix scan"),
        "{}",
        p.render()
    );
    // A non-linear recurrence is not associative: no parallel prefix.
    let src =
        format!("{HEAD}    s[b, t, d] = tanh(s[b, t - 1, d]) + x[b, t, d]\n    return s\n}}\n");
    assert_eq!(fired(&src, "scan-as-parallel-prefix"), 0);
    let src =
        format!("{HEAD}    s[b, t, d] = g[d] * s[b, t - 1, d] + x[b, t, d]\n    return s\n}}\n");
    assert_eq!(fired(&src, "scan-as-parallel-prefix"), 1);
}

/// `fuse-scan-readout`: a scan read once through its state runs with its
/// reader, the state on chip, where the cost model says so (the host
/// profile, where the state's bytes dominate; and Mamba at D=1024, L=16k
/// on the h100 profile); the scan is then in no kernel of its own. A scan
/// read by two ops, or at a shifted time, does not match.
#[test]
fn scans_read_once_through_their_state_fuse_with_their_reader() {
    for (file, device, sizes) in [
        (
            "examples/retnet.mix",
            "cpu",
            &[("B", 1), ("L", 4096), ("D", 64)][..],
        ),
        ("examples/mamba.mix", "h100", BIG),
    ] {
        let p = plan(file, None, &[], sizes, device);
        let k = p
            .kernels
            .iter()
            .find(|k| k.algorithm.starts_with("scan + readout"))
            .unwrap_or_else(|| panic!("{file}: {}", p.render()));
        assert!(
            k.covers.iter().any(|c| c == "S" || c == "h"),
            "{file}: {:?}",
            k.covers
        );
        assert!(
            p.kernels.iter().all(|k| k.name != "S" && k.name != "h"),
            "{file}: the state is never written: {}",
            p.render()
        );
    }
    let ssm = |readers: &str| {
        format!("mixer m(x: [B, L, D]) -> [B, L, D] {{\n    config N = 16\n    param g: [D] ~ normal(0, 1)\n    param wn: [D, N] ~ normal(0, 0.1)\n    param c: [N] ~ normal(0, 1)\n    s[b, t, d, n] = g[d] * s[b, t - 1, d, n] + x[b, t, d] * wn[d, n]\n{readers}    return y\n}}\n")
    };
    let once = ssm("    y[b, t, d] = sum(n) s[b, t, d, n] * c[n]\n");
    let two = ssm("    z[b, t, d] = sum(n) s[b, t, d, n] * c[n]\n    y[b, t, d] = sum(n) s[b, t, d, n] * wn[d, n] + z[b, t, d]\n");
    let shifted = ssm("    y[b, t, d] = sum(n) s[b, t - 1, d, n] * c[n] where t >= 1\n");
    assert_eq!(fired(&two, "fuse-scan-readout"), 0);
    assert_eq!(fired(&shifted, "fuse-scan-readout"), 0);
    assert_eq!(fired(&once, "fuse-scan-readout"), 2);
}

/// The FFT convolution's estimate follows the device: the h100 profile's
/// `fft_block` (2048, the GPU template's) makes a sequence longer than a
/// block cost one transform of 4096 points per (output block, filter
/// block) pair and one inverse per output block, where the host's single
/// transform of the padded length costs three real transforms. Up to one
/// block the two agree.
#[test]
fn the_fft_conv_estimate_follows_the_devices_blocking() {
    let c = check_path("std/hyena.mix", &[]);
    let m = mixc_compiler::ir::split::split_heavy(&lower(c.program(None).unwrap()));
    let o = m
        .ops
        .iter()
        .position(|op| op.kind == mixc_compiler::ir::OpKind::Conv && op.slots.len() > op.rank)
        .expect("the long convolution");
    let flops = |device: &str, l: i64| {
        let free: BTreeMap<String, i64> = [("B", 1), ("L", l), ("D", 64)]
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        let sizes = mixc_compiler::bind_sizes(&m, &free).unwrap();
        let profile = Profile::named(device).unwrap();
        let ctx = mixc_opt::cost::Ctx {
            m: &m,
            sizes: &sizes,
            profile: &profile,
            tiles: Default::default(),
        };
        ctx.fft_conv(o, &[], None).other_flops
    };
    let short = flops("h100", 2048) / flops("cpu", 2048);
    assert!((short - 1.0).abs() < 1e-9, "{short}");
    // 8 blocks: 36 transforms and 8 inverses of 4096 points (6.29M flops
    // a row), against three of 32768 (3.88M): 1.62 times the work.
    let long = flops("h100", 16384) / flops("cpu", 16384);
    assert!((long - 6_291_456.0 / 3_883_008.0).abs() < 1e-9, "{long}");
}
