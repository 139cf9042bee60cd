//! The interpreter against independent hand-written implementations
//! (tests/reference), at 1e-10 relative error in f64.

use crate::common::{check_path, run};
use crate::reference::{causal_attention, hyena, rel_err, HyenaParams};

const TOL: f64 = 1e-10;

#[test]
fn std_attention_equals_hand_written_causal_attention() {
    // (B, L, D, H, seed): odd lengths, several head counts, L = 1.
    for (b, l, d, h, seed) in [
        (2, 17, 32, 8, 1),
        (1, 40, 64, 4, 7),
        (3, 5, 16, 2, 11),
        (1, 1, 8, 1, 3),
    ] {
        let c = check_path("std/attention.mix", &[("H", h as f64)]);
        let prog = c.program(None).unwrap();
        let it = run(
            prog,
            &[("B", b as i64), ("L", l as i64), ("D", d as i64)],
            seed,
        );
        let get = |n: &str| it.get(n).unwrap().data.clone();
        let want = causal_attention(
            &get("x"),
            b,
            l,
            d,
            h,
            &get("wq"),
            &get("wk"),
            &get("wv"),
            &get("wo"),
        );
        let got = &it.output().data;
        let err = rel_err(got, &want);
        assert!(err < TOL, "B={b} L={l} D={d} H={h}: relative error {err:e}");
        // Not vacuous: the output is a real signal.
        assert!(it.output().stats().std > 1e-3);
    }
}

#[test]
fn std_hyena_equals_hand_written_direct_hyena() {
    for (b, l, d, seed) in [(2, 33, 16, 1), (1, 64, 8, 5), (3, 7, 4, 9), (1, 1, 2, 2)] {
        let c = check_path("std/hyena.mix", &[]);
        let prog = c.program(None).unwrap();
        let it = run(
            prog,
            &[("B", b as i64), ("L", l as i64), ("D", d as i64)],
            seed,
        );
        let get = |n: &str| {
            it.get(n)
                .unwrap_or_else(|| panic!("no tensor {n}"))
                .data
                .clone()
        };
        let names = [
            "w_in", "b_in", "w_short", "b_short", "bias", "w_out", "b_out", "h.w1", "h.b1", "h.w2",
            "h.b2", "h.w3", "h.b3", "h.w4", "h.freq",
        ];
        let v: Vec<Vec<f64>> = names.iter().map(|n| get(n)).collect();
        let p = HyenaParams {
            w_in: &v[0],
            b_in: &v[1],
            w_short: &v[2],
            b_short: &v[3],
            bias: &v[4],
            w_out: &v[5],
            b_out: &v[6],
            w1: &v[7],
            b1: &v[8],
            w2: &v[9],
            b2: &v[10],
            w3: &v[11],
            b3: &v[12],
            w4: &v[13],
            freq: &v[14],
            emb: 33,
            order: 64,
            fast: 0.3,
            slow: 1.5,
            target: 0.01,
        };
        let want = hyena(&get("x"), b, l, d, &p);
        let err = rel_err(&it.output().data, &want);
        assert!(err < TOL, "B={b} L={l} D={d}: relative error {err:e}");
        assert!(it.output().len() <= 8 || it.output().stats().std > 1e-3);
        // The implicit filter itself, separately: a wrong filter could hide
        // behind a small gate.
        let hf = crate::reference::hyena_filter(&p, l, d);
        let err = rel_err(&get("h.h"), &hf);
        assert!(
            err < TOL,
            "filter B={b} L={l} D={d}: relative error {err:e}"
        );
    }
}

#[test]
fn the_equivalence_check_can_fail() {
    // Perturb one weight: the same comparison must now report a large error.
    let c = check_path("std/attention.mix", &[("H", 4.0)]);
    let prog = c.program(None).unwrap();
    let it = run(prog, &[("B", 1), ("L", 9), ("D", 16)], 1);
    let get = |n: &str| it.get(n).unwrap().data.clone();
    let mut wo = get("wo");
    wo[3] += 0.5;
    let want = causal_attention(
        &get("x"),
        1,
        9,
        16,
        4,
        &get("wq"),
        &get("wk"),
        &get("wv"),
        &wo,
    );
    assert!(rel_err(&it.output().data, &want) > 1e-4);
}
