//! The plan that runs: the schedule of `mixc_compiler::schedule` for the
//! device's target, each kernel priced by the roofline cost model, with
//! what the e-graph found that no back end runs yet reported beside it.
//! `mixc explain` prints this plan; the bundle manifest lists the same
//! kernels, with the same ids and schedules, in the same order (a test
//! checks it for every example).

use crate::cost::{linear_scan, Ctx, Profile, Work};
use crate::plan::{explore, fmt_time, mask_note, mask_walk, op_description, Kernel, Plan};
use mixc_compiler::ir::{self, Module, ValueId};
use mixc_compiler::pattern::{input_dependent, operands};
use mixc_compiler::schedule::{
    constants, schedule, Dtype, Gpu, ScanForm, Schedule, Target, GPU_SCAN_CHUNKS,
};
use std::collections::{BTreeMap, BTreeSet};

/// The schedule target a device profile's kernels are built for: the
/// host, or its GPU architecture with activations stored in its dtype.
pub fn target_of(profile: &Profile) -> Target {
    match profile.target.as_str() {
        "host" => Target::Host,
        _ => Target::Gpu(Gpu {
            sm: profile.sm.unwrap_or(80),
            dtype: Dtype::parse(&profile.dtype).unwrap_or(Dtype::F32),
        }),
    }
}

/// The kernels `module` runs as on the profile's device at `sizes` (every
/// size bound), priced by the cost model, in launch order.
pub fn optimize(
    module: &Module,
    sizes: &BTreeMap<String, i64>,
    profile: &Profile,
) -> Result<Plan, String> {
    optimize_for(module, sizes, profile, None)
}

/// [`optimize`] for a given GPU (architecture and storage type; a bundle
/// for `--target sm_80 --dtype f32`, say) instead of the profile's own.
/// On a host profile `gpu` is ignored.
pub fn optimize_for(
    module: &Module,
    sizes: &BTreeMap<String, i64>,
    profile: &Profile,
    gpu: Option<Gpu>,
) -> Result<Plan, String> {
    let explored = explore(module, sizes, profile)?;
    let target = match (target_of(profile), gpu) {
        (Target::Gpu(_), Some(g)) => Target::Gpu(g),
        (t, _) => t,
    };
    // The schedule is made with the sizes a bundle folds in (all but the
    // batch and sequence sizes), as `mixc build` does.
    let run_time = module.run_time_sizes();
    let fixed: BTreeMap<String, i64> = sizes
        .iter()
        .filter(|(k, _)| !run_time.contains(k))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    let consts = constants(module, &fixed);
    let sched = schedule(module, target, true, &consts).map_err(|e| e.to_string())?;
    ir::verify::verify(&sched.module)
        .map_err(|e| format!("the schedule's module does not verify (compiler bug): {e}"))?;
    let m = &sched.module;
    let ctx = Ctx {
        m,
        sizes,
        profile,
        tiles: Default::default(),
    };
    let kernels: Vec<Kernel> = sched
        .kernels
        .iter()
        .enumerate()
        .map(|(i, k)| kernel(&ctx, i + 1, k, &sched.absorbed, target, &sched.merged))
        .collect();
    let (total_seconds, precompute_seconds) = crate::plan::split_seconds(&kernels);
    let name = |v: ValueId| m.value(v).name.clone();
    let equivalences = sched
        .claims
        .iter()
        .map(|(a, b)| (name(*a), name(*b)))
        .collect();
    let not_run = explored
        .kernels
        .iter()
        .filter_map(|k| {
            let why = not_run(k, target)?;
            Some(format!(
                "{} for `{}` (est. {}): {why}",
                k.algorithm,
                k.covers.join("`, `"),
                fmt_time(k.seconds)
            ))
        })
        .collect();
    Ok(Plan {
        mixer: m.name.clone(),
        device: profile.name.clone(),
        target: match target {
            Target::Host => "host".to_string(),
            Target::Gpu(g) => format!("{} {}", g.sm_name(), g.dtype),
        },
        not_run,
        explored_seconds: Some(explored.total_seconds),
        sizes: sizes.clone(),
        kernels,
        total_seconds,
        precompute_seconds,
        naive_seconds: explored.naive_seconds,
        firings: explored.firings,
        stop_reason: explored.stop_reason,
        iterations: explored.iterations,
        classes: explored.classes,
        nodes: explored.nodes,
        saturation_ms: explored.saturation_ms,
        extraction_ms: explored.extraction_ms,
        egraph_dump: explored.egraph_dump,
        equivalences,
        module: sched.module,
    })
}

/// Why an explored kernel's form does not run on `target`, or None where
/// it does. Parallel-prefix and chunked forms of the e-graph have no
/// template; an op that `inline-elementwise` rewrote (`NAME.inl`) does
/// not run because the mid-end does not inline; merged projections run on
/// GPUs only (`mixc_compiler::passes::Options::merge_projections`).
fn not_run(k: &Kernel, target: Target) -> Option<&'static str> {
    let explored_only = ["parallel prefix", "chunk"]
        .iter()
        .any(|x| k.algorithm.contains(x))
        || k.covers.iter().any(|c| c.ends_with(".inl"));
    if explored_only {
        Some("no back end runs this form yet")
    } else if k.algorithm.starts_with("merged projections") && !target.is_gpu() {
        Some("the host does not run it: it computes each projection as a matrix product of its own (the runtime's GEMM library; contractions it cannot take accumulate by rows, where stacked weights fall out of cache); merging them on the host is not done yet")
    } else {
        None
    }
}

/// The values ops `ops` read that none of them computes, in order.
fn reads_of(m: &Module, ops: &[usize]) -> Vec<ValueId> {
    let mine: Vec<ValueId> = ops.iter().map(|o| m.ops[*o].result).collect();
    let mut out = Vec::new();
    for o in ops {
        for v in operands(m, *o) {
            if !mine.contains(&v) && !out.contains(&v) {
                out.push(v);
            }
        }
    }
    out
}

/// One scheduled kernel, priced.
fn kernel(
    c: &Ctx,
    id: usize,
    k: &Schedule,
    absorbed: &BTreeSet<usize>,
    target: Target,
    merged: &[(ValueId, Vec<ValueId>)],
) -> Kernel {
    let m = c.m;
    let covers = k.covers(absorbed);
    let reads = reads_of(m, &covers);
    let o = k.op();
    let mut notes = Vec::new();
    let mut skipped_fraction = None;
    let (work, useful, algorithm) = match k {
        Schedule::Generic(o) | Schedule::Matrix(o, _) | Schedule::Gemm(o, _) => {
            let w = c.direct(*o, &reads);
            if let Some((_, members)) = merged.iter().find(|(v, _)| *v == m.ops[*o].result) {
                let names: Vec<&str> = members.iter().map(|v| m.value(*v).name.as_str()).collect();
                notes.push(format!(
                    "merged projections: `{}` as one contraction, the input read once (merge-projections)",
                    names.join("`, `")
                ));
            }
            let alg = match k {
                Schedule::Matrix(_, t) => format!("tiled contraction ({})", t.describe()),
                Schedule::Gemm(..) => {
                    "matrix product (runtime library: matrixmultiply sgemm)".into()
                }
                _ => op_description(c, *o, false),
            };
            (w, w.flops(), alg)
        }
        Schedule::FftConv(o, _) => {
            let w = c.fft_conv(*o, &reads, None);
            (
                w,
                w.flops(),
                "FFT causal conv (runtime library)".to_string(),
            )
        }
        Schedule::BlockedFft(o, _, block) => {
            let w = c.fft_conv(*o, &reads, Some(*block));
            let alg = format!(
                "blocked FFT causal conv (blocks of up to {block} outputs), the rest of the op applied before the store"
            );
            (w, w.flops(), alg)
        }
        Schedule::StateScan(ss, form) => {
            let mut w = linear_scan(c, ss.s, ss.o, &reads, false);
            let alg = match form {
                ScanForm::Sequential => "scan + readout (state on chip, never written)".to_string(),
                ScanForm::Lanes(1) => "scan + readout (a column a thread, its state's loops vectorised; state on chip, never written)".to_string(),
                ScanForm::Lanes(w) => format!(
                    "scan + readout ({w} columns a thread in vector lanes, time outermost; state on chip, never written)"
                ),
                ScanForm::Chunked => {
                    // Each chunk composes its steps (two products a step),
                    // the chunks pass states along, each chunk replays.
                    let chunks = GPU_SCAN_CHUNKS as f64;
                    w.other_flops *= 3.0;
                    w.steps = 2.0 * (w.steps / chunks).ceil() + chunks;
                    format!(
                        "chunked scan + readout ({GPU_SCAN_CHUNKS} chunks of time a column: each composes its steps, then replays from the state passed to it; state on chip, never written)"
                    )
                }
            };
            (w, w.flops(), alg)
        }
        Schedule::Attention(t, tiling) => {
            // The mask walked as the kernel walks it, at its own tiles.
            let walk = mask_walk(c, t.p, Some(tiling));
            let ok = walk.as_ref().ok().and_then(|w| w.as_ref());
            let executed = ok.map(|w| 1.0 - w.fraction_skipped()).unwrap_or(1.0);
            let kept = ok.map(|w| w.kept_fraction()).unwrap_or(1.0);
            let mut matrix = c.direct(t.o, &[]).matrix_flops;
            let mut other = c.direct(t.p, &[]).other_flops;
            for x in covers.iter().filter(|x| **x != t.o && **x != t.p) {
                let w = c.direct(*x, &[]);
                matrix += w.matrix_flops;
                other += w.other_flops;
            }
            let w = Work {
                matrix_flops: matrix * executed,
                other_flops: other * executed,
                bytes: reads.iter().map(|v| c.value_bytes(*v)).sum::<f64>()
                    + c.value_bytes(m.ops[t.o].result),
                ..Work::default()
            };
            match &walk {
                Ok(Some(wk)) => {
                    skipped_fraction = Some(wk.fraction_skipped());
                    notes.push(mask_note(wk));
                }
                Ok(None) => {
                    skipped_fraction = Some(0.0);
                    notes.push("no mask: every key visited".into());
                }
                Err(e) => notes.push(format!("mask: tiles not counted ({e})")),
            }
            notes.push(match target {
                Target::Gpu(_) => "scores and probabilities stay on chip: no L x L tensor in device memory; the score scale is applied to every score".into(),
                _ => "a row at a time, keys from the mask's linear bounds; scores never written; the score scale is applied to every score".into(),
            });
            (
                w,
                matrix * kept,
                format!("fused attention (online softmax; {})", tiling.describe()),
            )
        }
    };
    let seconds = c.profile.time(&work);
    let mut alternatives = Vec::new();
    let separate: f64 = covers
        .iter()
        .map(|x| c.profile.time(&c.direct(*x, &operands(m, *x))))
        .sum();
    if !matches!(
        k,
        Schedule::Generic(_) | Schedule::Matrix(..) | Schedule::Gemm(..)
    ) {
        alternatives.push((
            format!(
                "as written ({} loop nest{}, every intermediate in memory) would take {}; this kernel takes {}",
                covers.len(),
                if covers.len() == 1 { "" } else { "s" },
                fmt_time(separate),
                fmt_time(seconds)
            ),
            separate,
        ));
    }
    let name = |v: ValueId| m.value(v).name.clone();
    Kernel {
        id,
        schedule: k.name().into(),
        form: k.form(),
        name: name(m.ops[o].result),
        algorithm,
        covers: covers.iter().map(|x| name(m.ops[*x].result)).collect(),
        work,
        useful_flops: useful,
        seconds,
        alternatives,
        notes,
        reads: reads.into_iter().map(name).collect(),
        skipped_fraction,
        per_call: input_dependent(m, o),
    }
}
