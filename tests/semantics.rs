//! The language's meaning, pinned on small programs whose answers are
//! computed here by hand (or by an equivalent spelling).

use crate::common::{check_ok, check_text, run};
use mixc_compiler::{InterpError, Interpreter};
use std::collections::BTreeMap;

fn sizes(b: i64, l: i64, d: i64) -> Vec<(&'static str, i64)> {
    vec![("B", b), ("L", l), ("D", d)]
}

#[test]
fn fully_masked_softmax_rows_are_zero_not_nan() {
    // `j < i` masks every key of query 0.
    let src = "mixer m(x: [B, L, D]) -> [B, L, D] {\n    s[b, i, j] = sum(d) x[b, i, d] * x[b, j, d]\n    p = softmax(s, over: j) where j < i\n    y[b, i, d] = sum(j) p[b, i, j] * x[b, j, d]\n    return y\n}\n";
    let c = check_ok("t.mix", src, &[]);
    let it = run(c.program(None).unwrap(), &sizes(1, 5, 3), 1);
    let p = it.get("p").unwrap();
    assert!(p.data.iter().all(|v| v.is_finite()));
    assert!(
        p.data[..5].iter().all(|v| *v == 0.0),
        "row 0: {:?}",
        &p.data[..5]
    );
    // Row 3 keeps keys 0..3 and sums to one; key 3 itself is masked.
    let row: &[f64] = &p.data[15..20];
    assert!(
        (row[..3].iter().sum::<f64>() - 1.0).abs() < 1e-12,
        "{row:?}"
    );
    assert_eq!(row[3], 0.0);
    let y = it.output();
    assert!(y.data[..3].iter().all(|v| *v == 0.0));
}

#[test]
fn recurrence_is_a_prefix_scan_with_zero_initial_state() {
    let src = "mixer m(x: [B, L, D]) -> [B, L, D] {\n    config a = 0.5\n    h[b, t, d] = a * h[b, t - 1, d] + x[b, t, d]\n    return h\n}\n";
    let c = check_ok("t.mix", src, &[]);
    let prog = c.program(None).unwrap();
    let it = run(prog, &sizes(2, 6, 3), 4);
    let x = it.get("x").unwrap();
    let h = it.output();
    for b in 0..2 {
        for d in 0..3 {
            let mut s = 0.0;
            for t in 0..6 {
                let k = (b * 6 + t) * 3 + d;
                s = 0.5 * s + x.data[k];
                assert!((h.data[k] - s).abs() < 1e-12);
            }
        }
    }
    let kind = &prog.tensors[prog.output as usize].kind;
    assert!(matches!(kind, mixc_dsl::typed::TensorKind::Def(d) if d.recurrence == Some(1)));
}

#[test]
fn conv_builtin_means_its_raw_index_form() {
    let header = "mixer m(x: [B, L, D]) -> [B, L, D] {\n    param k: [L, D] ~ normal(0, 1)\n    g[b, l, d] = x[b, l, d] * 2\n";
    let a = format!("{header}    y = conv(g, k, over: l)\n    return y\n}}\n");
    let b = format!(
        "{header}    y[b, l, d] = sum(t) k[t, d] * g[b, l - t, d] where t <= l\n    return y\n}}\n"
    );
    let ca = check_ok("a.mix", &a, &[]);
    let cb = check_ok("b.mix", &b, &[]);
    let ya = run(ca.program(None).unwrap(), &sizes(2, 9, 4), 3)
        .output()
        .clone();
    let yb = run(cb.program(None).unwrap(), &sizes(2, 9, 4), 3)
        .output()
        .clone();
    assert_eq!(ya, yb);
    // And by hand for one element: y[0, 2, 1] = sum_{t<=2} k[t,1] g[0,2-t,1].
    let c = check_ok("a.mix", &a, &[]);
    let it = run(c.program(None).unwrap(), &sizes(2, 9, 4), 3);
    let (k, g) = (it.get("k").unwrap(), it.get("g").unwrap());
    let want: f64 = (0..=2)
        .map(|t| k.data[t * 4 + 1] * g.data[(2 - t) * 4 + 1])
        .sum();
    assert!((it.output().data[2 * 4 + 1] - want).abs() < 1e-12);
}

#[test]
fn element_where_zeroes_and_reduction_where_filters() {
    let src = "mixer m(x: [B, L, D]) -> [B, L, D] {\n    a[b, l, d] = x[b, l, d] where l >= 2\n    c[b, i, d] = sum(j) x[b, j, d] where j <= i\n    y[b, l, d] = a[b, l, d] + c[b, l, d]\n    return y\n}\n";
    let c = check_ok("t.mix", src, &[]);
    let it = run(c.program(None).unwrap(), &sizes(1, 4, 1), 2);
    let x = &it.get("x").unwrap().data;
    let a = &it.get("a").unwrap().data;
    let cc = &it.get("c").unwrap().data;
    assert_eq!(&a[..], &[0.0, 0.0, x[2], x[3]]);
    for i in 0..4 {
        let want: f64 = x[..=i].iter().sum();
        assert!((cc[i] - want).abs() < 1e-12);
    }
}

#[test]
fn reductions_mean_max_min_prod_and_normalisers() {
    let src = "mixer m(x: [B, L, D]) -> [B, L, D] {\n    mu[b, l] = mean(d) x[b, l, d]\n    mx[b, l] = max(d) x[b, l, d]\n    mn[b, l] = min(d) x[b, l, d]\n    pr[b, l] = prod(d) x[b, l, d]\n    r[b, l, d] = rms_norm(x[b, l, d], over: d, eps: 0.0)\n    n[b, l, d] = layer_norm(x[b, l, d], over: d, eps: 0.0)\n    y[b, l, d] = r[b, l, d] + n[b, l, d] + mu[b, l] + mx[b, l] + mn[b, l] + pr[b, l]\n    return y\n}\n";
    let c = check_ok("t.mix", src, &[]);
    let it = run(c.program(None).unwrap(), &sizes(1, 2, 5), 8);
    let x = &it.get("x").unwrap().data;
    for l in 0..2 {
        let row = &x[l * 5..l * 5 + 5];
        let mean = row.iter().sum::<f64>() / 5.0;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 5.0;
        let rms = (row.iter().map(|v| v * v).sum::<f64>() / 5.0).sqrt();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12 * (1.0 + b.abs());
        assert!(close(it.get("mu").unwrap().data[l], mean));
        assert!(close(
            it.get("mx").unwrap().data[l],
            row.iter().cloned().fold(f64::MIN, f64::max)
        ));
        assert!(close(
            it.get("mn").unwrap().data[l],
            row.iter().cloned().fold(f64::MAX, f64::min)
        ));
        assert!(close(it.get("pr").unwrap().data[l], row.iter().product()));
        for (d, v) in row.iter().enumerate() {
            assert!(close(it.get("r").unwrap().data[l * 5 + d], v / rms));
            assert!(close(
                it.get("n").unwrap().data[l * 5 + d],
                (v - mean) / var.sqrt()
            ));
        }
    }
}

#[test]
fn whole_tensor_statements_equal_index_form() {
    let body = |p: &str, o: &str| {
        format!("use std.masks\nmixer m(x: [B, L, D]) -> [B, L, D] {{\n    s[b, i, j] = sum(d) x[b, i, d] * x[b, j, d]\n    {p}\n    {o}\n    return y\n}}\n")
    };
    let a = body(
        "p = softmax(s, over: j) where causal(i, j)",
        "y = sum(j) p[b, i, j] * x[b, j, d]",
    );
    let b = body(
        "p[b, i, j] = softmax(s[b, i, j], over: j) where j <= i",
        "y[b, i, d] = sum(j) p[b, i, j] * x[b, j, d]",
    );
    let ca = check_ok("a.mix", &a, &[]);
    let cb = check_ok("b.mix", &b, &[]);
    let ya = run(ca.program(None).unwrap(), &sizes(2, 6, 3), 5)
        .output()
        .clone();
    let yb = run(cb.program(None).unwrap(), &sizes(2, 6, 3), 5)
        .output()
        .clone();
    assert_eq!(ya, yb);
}

#[test]
fn configs_are_overridable_and_change_the_result() {
    let c1 = crate::common::check_path("std/attention.mix", &[]);
    let c2 = crate::common::check_path("std/attention.mix", &[("H", 2.0)]);
    assert!(c2.used_overrides.contains("H"));
    let p1 = c1.program(None).unwrap();
    let p2 = c2.program(None).unwrap();
    assert_eq!(
        p2.configs.iter().find(|c| c.name == "H").unwrap().value,
        2.0
    );
    let y1 = run(p1, &sizes(1, 8, 16), 1).output().clone();
    let y2 = run(p2, &sizes(1, 8, 16), 1).output().clone();
    assert_ne!(y1, y2);
}

#[test]
fn divisibility_is_checked_when_sizes_are_bound() {
    let c = crate::common::check_path("std/attention.mix", &[]);
    let prog = c.program(None).unwrap();
    let s: BTreeMap<String, i64> = [("B", 1), ("L", 4), ("D", 30)]
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    match Interpreter::new(prog, &s) {
        Err(InterpError::BadSize {
            name,
            message,
            span,
        }) => {
            assert_eq!(name, "E");
            assert!(message.contains("not divisible"), "{message}");
            assert_eq!(c.sources.snippet(span), "dim E = D / H");
        }
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("D = 30, H = 8 must not bind"),
    }
}

#[test]
fn one_program_serves_every_length() {
    let c = crate::common::check_path("std/attention.mix", &[("H", 2.0)]);
    let prog = c.program(None).unwrap();
    for l in [1, 2, 7, 33] {
        let it = run(prog, &sizes(1, l, 8), 1);
        assert_eq!(it.output().shape, vec![1, l as usize, 8]);
    }
    // Causality across lengths: a prefix of a longer run equals the shorter run.
    let short = run(prog, &sizes(1, 5, 8), 1);
    let long = run(prog, &sizes(1, 9, 8), 1);
    let xs = short.get("x").unwrap().data.clone();
    // Different L means different random x; feed the short x as the long prefix.
    let s: BTreeMap<String, i64> = [("B", 1), ("L", 9), ("D", 8)]
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    let mut it = Interpreter::new(prog, &s).unwrap();
    it.init(1).unwrap();
    let mut x = long.get("x").unwrap().clone();
    x.data[..xs.len()].copy_from_slice(&xs);
    it.set("x", x).unwrap();
    it.run().unwrap();
    let n = short.output().len();
    for k in 0..n {
        assert!((it.output().data[k] - short.output().data[k]).abs() < 1e-12);
    }
}

#[test]
fn mixers_and_filters_can_be_called() {
    let src = "use std.attention\nfilter decay(L, D) {\n    h[l: L, d: D] = exp(-0.1 * l)\n    return h\n}\nmixer m(x: [B, L, D]) -> [B, L, D] {\n    k = decay(L, D)\n    z[b, l, d] = conv(x, k, over: l)[b, l, d]\n    y = attention(z)\n    return y\n}\n";
    let c = check_ok("t.mix", src, &[]);
    let prog = c.program(None).unwrap();
    let it = run(prog, &sizes(1, 6, 16), 2);
    assert!(
        it.get("y.wq").is_some(),
        "params of a called mixer are namespaced"
    );
    assert!(it.get("k.h").is_some());
    assert_eq!(it.output().shape, vec![1, 6, 16]);
    // An unknown --set name in check options is simply unused.
    let c = check_text("t.mix", src, &[("nonexistent", 1.0)]);
    assert!(!c.used_overrides.contains("nonexistent"));
}

#[test]
fn main_file_definitions_shadow_std_imports() {
    // `use std.hyena` brings a mixer named `hyena`; the file's own wins.
    let src = "use std.hyena\nmixer hyena(x: [B, L, D]) -> [B, L, D] {\n    u[b, l, d] = silu(sum(t) x[b, l - t, d] where t <= l)\n    return u\n}\n";
    let c = check_ok("t.mix", src, &[]);
    let prog = c.program(Some("hyena")).unwrap();
    assert!(
        prog.params().next().is_none(),
        "the std hyena has parameters; this one has none"
    );
    let it = run(prog, &sizes(1, 3, 2), 1);
    let x = &it.get("x").unwrap().data;
    let silu = |v: f64| v / (1.0 + (-v).exp());
    assert!((it.output().data[2 * 2] - silu(x[0] + x[2] + x[4])).abs() < 1e-12);
}
