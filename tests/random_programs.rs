//! Property test of the optimiser's soundness on random small programs.
//!
//! The generator assembles mixers from the building blocks of the
//! literature with random index names, operand orders, masks, score
//! modifications, gates and sizes: softmax attention (optionally masked,
//! optionally with a position bias), causal linear attention, long and
//! short causal convolutions, gated recurrences and elementwise epilogues.
//! Each program must check; every equivalence the optimiser claims must hold
//! under interpretation; the output of the plan's module (the split program
//! plus the ops rewrites added) must equal the original program's; and
//! kernels may read only what earlier kernels wrote.
//!
//! Why that suffices: an e-node either evaluates the same IR ops another way
//! (fusion, FFT, merged projections: same ops, same meaning) or stands for a
//! value the rewrite claims equal to the original (linear attention's scan
//! readout), and each such claim is checked here by interpretation.

use crate::common::check_ok;
use mixc_compiler::ir::lower::lower;
use mixc_dsl::fuzz::random_program;
use mixc_opt::{explore, optimize, Profile};
use proptest::prelude::*;
use std::collections::BTreeMap;

fn check_one(seed: u64) {
    let src = random_program(seed);
    let c = check_ok(&format!("random-{seed}.mix"), &src, &[]);
    let m = lower(c.program(None).unwrap());
    let free: BTreeMap<String, i64> = [("B", 2), ("L", 13), ("D", 8)]
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    let all = mixc_compiler::bind_sizes(&m, &free).unwrap();
    for device in ["cpu", "h100"] {
        let profile = Profile::named(device).unwrap();
        // The kernels that run (the mid-end's module and its claims) and
        // the e-graph's exploration (its rules' claims).
        for (what, p) in [
            ("plan", optimize(&m, &all, &profile).unwrap()),
            ("e-graph", explore(&m, &all, &profile).unwrap()),
        ] {
            crate::opt::assert_plan_sound(
                &p,
                &m,
                &free,
                seed,
                &format!("seed {seed}, {what} on {device}\n{src}"),
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn optimised_random_programs_compute_what_they_say(seed in any::<u64>()) {
        check_one(seed);
    }
}

#[test]
fn the_generator_reaches_every_discovery() {
    // Over a fixed set of seeds, every rule fires somewhere: the property
    // above is exercising the rewrites, not just the unoptimised path.
    let mut rules = std::collections::BTreeSet::new();
    for seed in 0..64 {
        let src = random_program(seed);
        let c = check_ok("r.mix", &src, &[]);
        let m = lower(c.program(None).unwrap());
        let free: BTreeMap<String, i64> = [("B", 1), ("L", 4096), ("D", 256)]
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        let all = mixc_compiler::bind_sizes(&m, &free).unwrap();
        let p = explore(&m, &all, &Profile::named("h100").unwrap()).unwrap();
        rules.extend(p.firings.iter().map(|f| f.rule));
    }
    for r in [
        "fuse-attention",
        "conv-as-fft",
        "linear-attention-as-scan",
        "merge-projections",
    ] {
        assert!(
            rules.contains(r),
            "no random program fired `{r}`: {rules:?}"
        );
    }
}
