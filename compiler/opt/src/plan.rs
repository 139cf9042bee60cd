//! Saturation, extraction and the plan: the ordered list of kernels.

use crate::cost::{Ctx, Profile, Work};
use crate::lang::{build, num_of, operands, Mix, MixGraph};
use crate::rules::{apply_all, consumers, inline, input_dependent, linear, value_of, Firing};
use egg::{CostFunction, Id, Language};
use mixc_compiler::ir::{self, Module, OpKind, ValueId};
use mixc_compiler::pattern::attention::{parallel_slot, plan as attention_templates};
use mixc_compiler::pattern::tiling::{Tiling, TILE_M};
use mixc_compiler::tiles::{walk, Walk};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

/// One kernel of the plan.
#[derive(Clone, Debug, Serialize)]
pub struct Kernel {
    /// Its position in launch order, from 1: the id the bundle manifest,
    /// `mixc-runner --profile` and `mixc bench` use.
    pub id: usize,
    /// The schedule the back ends lower (`mixc_compiler::schedule`):
    /// `generic`, `fused attention`, `fft conv (library)`, `blocked fft
    /// conv`, `scan + readout`; `e-graph` for an explored form.
    pub schedule: String,
    /// The parameters the back end lowers the schedule with (the attention
    /// form and its tiles, the FFT block, the scan's chunks); empty where
    /// there are none, and for an explored form.
    pub form: String,
    /// The value it produces.
    pub name: String,
    /// The template or algorithm: "fused attention", "fft conv", ...
    pub algorithm: String,
    /// Every IR value it computes (fused intermediates included), in order.
    pub covers: Vec<String>,
    pub work: Work,
    /// Flops that count (masked pairs excluded), for attention.
    pub useful_flops: f64,
    pub seconds: f64,
    /// Other ways to compute the same value, with their estimated cost
    /// (including what they read from other kernels).
    pub alternatives: Vec<(String, f64)>,
    pub notes: Vec<String>,
    /// Values it reads from device memory (inputs, parameters, or earlier
    /// kernels' results).
    pub reads: Vec<String>,
    /// For attention: the fraction of (query tile, key tile) pairs skipped.
    pub skipped_fraction: Option<f64>,
    /// False for a kernel whose result depends only on parameters and sizes:
    /// it runs once when they are set, not on every call.
    pub per_call: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub mixer: String,
    pub device: String,
    /// The schedule target the device's kernels are built for: `host`
    /// (LLVM), a GPU's architecture and storage type (`sm_90 bf16`), or
    /// `e-graph` for [`explore`]'s plan.
    pub target: String,
    /// What the e-graph found that no back end runs yet, one line each.
    pub not_run: Vec<String>,
    /// The e-graph's best estimate for one call with every form available.
    pub explored_seconds: Option<f64>,
    pub sizes: BTreeMap<String, i64>,
    pub kernels: Vec<Kernel>,
    /// Estimated time of one call (per-call kernels).
    pub total_seconds: f64,
    /// Estimated time of the kernels that run once per parameters and sizes.
    pub precompute_seconds: f64,
    /// Unfused, as written: one kernel per op, every intermediate written.
    pub naive_seconds: f64,
    pub firings: Vec<Firing>,
    pub stop_reason: String,
    pub iterations: usize,
    pub classes: usize,
    pub nodes: usize,
    pub saturation_ms: f64,
    pub extraction_ms: f64,
    /// The e-graph, for `--dump egraph`.
    #[serde(skip)]
    pub egraph_dump: String,
    /// Values the rewrites claim equal (original, replacement), checked by
    /// interpretation in the tests.
    pub equivalences: Vec<(String, String)>,
    /// The module the plan's kernels refer to: the split IR plus the ops
    /// that rewrites added.
    #[serde(skip)]
    pub module: Module,
}

const ITERATION_LIMIT: usize = 16;
const NODE_LIMIT: usize = 100_000;

struct TimeCost<'a> {
    ctx: &'a Ctx<'a>,
    g: &'a MixGraph,
}

impl CostFunction<Mix> for TimeCost<'_> {
    type Cost = f64;
    fn cost<C: FnMut(Id) -> f64>(&mut self, enode: &Mix, mut costs: C) -> f64 {
        let own = own_work(self.ctx, self.g, enode)
            .map(|(w, _)| self.ctx.profile.time(&w))
            .unwrap_or(0.0);
        own + enode.children().iter().map(|c| costs(*c)).sum::<f64>()
    }
}

fn nums(g: &MixGraph, ch: &[Id], n: usize) -> Vec<i64> {
    ch[..n]
        .iter()
        .map(|c| num_of(g, *c).unwrap_or(-1))
        .collect()
}

fn class_values(g: &MixGraph, ch: &[Id]) -> Vec<ValueId> {
    ch.iter().filter_map(|c| value_of(g, *c)).collect()
}

/// The work of one e-node on its own (its children are separate kernels,
/// except the producer of a `fuse`, whose output it does not re-read) and
/// the useful flops.
fn own_work(c: &Ctx, g: &MixGraph, n: &Mix) -> Option<(Work, f64)> {
    match n {
        Mix::Value(_) | Mix::Num(_) => None,
        Mix::Op(ch) => {
            let o = nums(g, ch, 1)[0] as usize;
            let w = c.direct(o, &class_values(g, &ch[1..]));
            Some((w, w.flops()))
        }
        Mix::FftConv(ch) => {
            let o = nums(g, ch, 1)[0] as usize;
            let w = c.fft_conv(o, &class_values(g, &ch[1..]), None);
            Some((w, w.flops()))
        }
        Mix::ParallelScan(ch) => {
            // Up-sweep and down-sweep: about twice the work of the sequential
            // scan, 2 log2(L) dependent steps.
            let o = nums(g, ch, 1)[0] as usize;
            let mut w = c.direct(o, &class_values(g, &ch[1..]));
            w.other_flops *= 2.0;
            w.steps = 2.0 * w.steps.max(2.0).log2().ceil();
            Some((w, w.flops()))
        }
        Mix::Merged(ch) => {
            // The member's share of one contraction that reads the shared
            // input once.
            let (w, _) = merged_work(c, g, ch);
            let n = nums(g, ch, 2)[1].max(1) as f64;
            let share = Work {
                matrix_flops: w.matrix_flops / n,
                other_flops: w.other_flops / n,
                bytes: w.bytes / n,
                steps: 0.0,
                launches: 1.0 / n,
            };
            Some((share, share.flops()))
        }
        Mix::Scan(ch) | Mix::ChunkedScan(ch) => {
            let k = nums(g, ch, 3);
            let w = crate::cost::linear_scan(
                c,
                k[1] as usize,
                k[2] as usize,
                &class_values(g, &ch[3..]),
                matches!(n, Mix::ChunkedScan(_)),
            );
            Some((w, w.flops()))
        }
        Mix::Attention(ch) => {
            let k = nums(g, ch, 4);
            let (o, p, s) = (k[0] as usize, k[1] as usize, k[2] as usize);
            let w = mask_walk(c, p, None).ok().flatten();
            let executed = w
                .as_ref()
                .map(|w| 1.0 - w.fraction_skipped())
                .unwrap_or(1.0);
            let kept = w.as_ref().map(Walk::kept_fraction).unwrap_or(1.0);
            let inputs = class_values(g, &ch[4..]);
            let ws = c.direct(s, &[]);
            let wo = c.direct(o, &[]);
            let wp = c.direct(p, &[]);
            let mut wm = Work::default();
            if k[3] >= 0 {
                wm = c.direct(k[3] as usize, &[]);
            }
            let matrix = ws.matrix_flops + wo.matrix_flops;
            let w = Work {
                matrix_flops: matrix * executed,
                other_flops: (wp.other_flops + wm.other_flops) * executed,
                bytes: inputs.iter().map(|v| c.value_bytes(*v)).sum::<f64>()
                    + c.value_bytes(c.m.ops[o].result),
                ..Work::default()
            };
            Some((w, matrix * kept))
        }
    }
}

/// The whole merged contraction: every member's flops, the inputs read once,
/// every output written.
fn merged_work(c: &Ctx, g: &MixGraph, ch: &[Id]) -> (Work, Vec<usize>) {
    let n = nums(g, ch, 2)[1] as usize;
    let ops: Vec<usize> = nums(g, &ch[2..], n)
        .into_iter()
        .map(|o| o as usize)
        .collect();
    let mut w = Work::default();
    for o in &ops {
        let d = c.direct(*o, &[]);
        w.matrix_flops += d.matrix_flops;
        w.bytes += c.value_bytes(c.m.ops[*o].result);
    }
    w.bytes += class_values(g, &ch[2 + n..])
        .iter()
        .map(|v| c.value_bytes(*v))
        .sum::<f64>();
    (w, ops)
}

/// How the kernel of the attention chain whose softmax is op `p` walks
/// its mask ([`mixc_compiler::tiles::walk`]): with the schedule's
/// `tiling`, or for the e-graph's estimate (`None`) in blocks of the
/// profile's tile. `Ok(None)`: no mask; `Err`: the chain is not one the
/// template takes, or a bound explain cannot evaluate. Cached.
pub(crate) fn mask_walk(
    c: &Ctx,
    p: usize,
    tiling: Option<&Tiling>,
) -> Result<Option<Walk>, String> {
    let (ts, _) = attention_templates(c.m);
    let t = ts
        .into_iter()
        .find(|t| t.p == p)
        .ok_or("no attention template for this softmax")?;
    let (tiled, tile) = match tiling {
        Some(Tiling::Staged(s) | Tiling::TensorCores(s, ..)) => {
            (s.tiled, (TILE_M as usize, s.tile_n as usize))
        }
        Some(Tiling::Rows | Tiling::RowChunks { .. }) => {
            (parallel_slot(c.m, &t).unwrap_or(0), (1, 1))
        }
        None => (
            parallel_slot(c.m, &t).unwrap_or(0),
            (c.profile.tile_q, c.profile.tile_k),
        ),
    };
    let key = (p, tiled as usize, tile.0, tile.1);
    if let Some(w) = c.tiles.borrow().get(&key) {
        return w.clone();
    }
    let run_time = c.m.run_time_sizes();
    let fixed: BTreeMap<String, i64> = c
        .sizes
        .iter()
        .filter(|(k, _)| !run_time.contains(k))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    let w = walk(c.m, &t, tiled, tile, c.sizes, &fixed);
    c.tiles.borrow_mut().insert(key, w.clone());
    w
}

/// The mask note of a walk, in the words `mixc explain` prints.
pub(crate) fn mask_note(w: &Walk) -> String {
    if w.tq == 1 && w.tk == 1 {
        format!(
            "mask: each row visits only its key range: {:.1}% of (row, key) pairs skipped at L={}; {}",
            100.0 * w.fraction_skipped(),
            w.keys,
            if w.exact {
                "the ranges are the whole mask: no predicate is tested"
            } else {
                "the predicate is tested on each visited pair"
            }
        )
    } else {
        format!(
            "mask: {:.1}% of {}x{} tiles skipped at L={} ({} of {}: outside the blocks' key ranges{}; {} run without the predicate, {} test it per pair)",
            100.0 * w.fraction_skipped(),
            w.tq,
            w.tk,
            w.keys,
            w.skipped(),
            w.grid,
            if w.exact { "" } else { " or classified empty" },
            w.full,
            w.partial
        )
    }
}

/// What the generic kernel of op `o` is, in a researcher's terms
/// (`tiled`: a GPU, whose contractions are blocked through shared memory).
pub(crate) fn op_description(c: &Ctx, o: usize, tiled: bool) -> String {
    let m = c.m;
    let op = &m.ops[o];
    if op.recurrence.is_some() {
        return "scan (sequential recurrence)".into();
    }
    match op.kind {
        OpKind::Contract if tiled => "tiled contraction".into(),
        OpKind::Contract => "contraction".into(),
        OpKind::Conv => {
            let (len, _) = crate::cost::conv_axis(c, o);
            let taps = op.slots[op.rank..]
                .first()
                .map(|s| c.dim(&s.extent))
                .unwrap_or(0.0);
            format!("direct causal conv ({taps} taps over {len})")
        }
        OpKind::Normalize => "row normaliser".into(),
        OpKind::Reduce => "reduction".into(),
        OpKind::Map => "elementwise".into(),
        OpKind::Shift => "shift (elementwise, reads at an offset)".into(),
        OpKind::Scan => "scan".into(),
    }
}

fn describe(c: &Ctx, g: &MixGraph, n: &Mix) -> String {
    match n {
        Mix::Value(_) | Mix::Num(_) => "input".into(),
        Mix::Op(ch) => op_description(c, nums(g, ch, 1)[0] as usize, true),
        Mix::FftConv(_) => "FFT causal conv".into(),
        Mix::ParallelScan(_) => "parallel prefix scan (log-depth)".into(),
        Mix::Attention(_) => "fused attention (online softmax)".into(),
        Mix::Scan(ch) if nums(g, ch, 3)[0] == nums(g, ch, 3)[2] => {
            "scan + readout, sequential (state on chip)".into()
        }
        Mix::ChunkedScan(ch) if nums(g, ch, 3)[0] == nums(g, ch, 3)[2] => format!(
            "scan + readout in chunks of {} (state on chip)",
            c.profile.scan_chunk
        ),
        Mix::Scan(_) => "linear attention as a sequential scan (matrix state on chip)".into(),
        Mix::Merged(ch) => format!(
            "merged projections ({} contractions of one input)",
            nums(g, ch, 2)[1]
        ),
        Mix::ChunkedScan(_) => format!(
            "linear attention as a chunked scan (chunks of {})",
            c.profile.scan_chunk
        ),
    }
}

/// Explores a module with the e-graph for a device at the given sizes:
/// every rule, including forms no back end runs yet (parallel-prefix and
/// chunked scans), extracted by cost.
/// [`optimize`] gives the kernels that run; this is what the optimiser
/// would do with every form available, and the rules' equivalence claims.
pub fn explore(
    module: &Module,
    sizes: &BTreeMap<String, i64>,
    profile: &Profile,
) -> Result<Plan, String> {
    let mut split = ir::split::split_heavy(module);
    let n_original = split.ops.len();
    let linear = linear::extend(&mut split);
    let mut rep0: Vec<usize> = (0..split.ops.len()).collect();
    for r in &linear {
        rep0[r.scan] = r.original;
        rep0[r.readout] = r.original;
    }
    let uses0 = consumers(&split, &rep0);
    let inlined = inline::extend(&mut split, &uses0);
    ir::verify::verify(&split).map_err(|e| e.to_string())?;
    // Each op added by a rewrite stands for the op it is an alternative to.
    let mut rep: Vec<usize> = (0..split.ops.len()).collect();
    for r in &linear {
        rep[r.scan] = r.original;
        rep[r.readout] = r.original;
    }
    for r in &inlined {
        rep[r.inlined] = r.original;
    }
    debug_assert!(rep.iter().all(|r| *r < n_original || rep[*r] == *r));
    let n = |o: usize| split.value(split.ops[o].result).name.clone();
    let equivalences = linear
        .iter()
        .map(|r| (n(r.original), n(r.readout)))
        .chain(inlined.iter().map(|r| (n(r.original), n(r.inlined))))
        .collect();
    let m = Arc::new(split);
    let uses = consumers(&m, &rep);
    let t0 = Instant::now();
    let (mut g, classes) = build(m.clone());
    let mut firings = Vec::new();
    let mut stop = "saturated".to_string();
    let mut iterations = 0;
    loop {
        if iterations >= ITERATION_LIMIT {
            stop = format!("iteration limit ({ITERATION_LIMIT})");
            break;
        }
        iterations += 1;
        let (lin, inl): (&[linear::LinearRewrite], &[inline::InlineRewrite]) = if iterations == 1 {
            (&linear, &inlined)
        } else {
            (&[], &[])
        };
        let fired = apply_all(&mut g, &classes, &uses, (lin, inl), sizes);
        if fired.is_empty() {
            break;
        }
        firings.extend(fired);
        if g.total_number_of_nodes() > NODE_LIMIT {
            stop = format!("node limit ({NODE_LIMIT})");
            break;
        }
    }
    let saturation_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t1 = Instant::now();
    let ctx = Ctx {
        m: &m,
        sizes,
        profile,
        tiles: Default::default(),
    };
    let extractor = egg::Extractor::new(&g, TimeCost { ctx: &ctx, g: &g });
    let root = classes[m.output.0 as usize];
    let mut kernels = Vec::new();
    let mut done: HashMap<Id, ()> = HashMap::new();
    emit(&ctx, &g, &extractor, root, &mut done, &mut kernels);
    let extraction_ms = t1.elapsed().as_secs_f64() * 1e3;
    let (total_seconds, precompute_seconds) = crate::plan::split_seconds(&kernels);
    let naive_seconds = (0..m.ops.len())
        .map(|o| profile.time(&ctx.direct(o, &operands(&m, o))))
        .sum();
    let egraph_dump = dump(&g, &m);
    Ok(Plan {
        mixer: m.name.clone(),
        device: profile.name.clone(),
        target: "e-graph".into(),
        not_run: Vec::new(),
        explored_seconds: None,
        sizes: sizes.clone(),
        kernels,
        total_seconds,
        precompute_seconds,
        naive_seconds,
        firings,
        stop_reason: stop,
        iterations,
        classes: g.number_of_classes(),
        nodes: g.total_number_of_nodes(),
        saturation_ms,
        extraction_ms,
        egraph_dump,
        equivalences,
        module: (*m).clone(),
    })
}

fn dump(g: &MixGraph, m: &Module) -> String {
    let mut s = String::new();
    let mut ids: Vec<Id> = g.classes().map(|c| c.id).collect();
    ids.sort();
    for id in ids {
        let Some(v) = value_of(g, id) else { continue };
        s.push_str(&format!("e{id} `{}`:", m.value(v).name));
        for n in &g[id].nodes {
            let kids: Vec<String> = n
                .children()
                .iter()
                .map(|c| {
                    num_of(g, *c)
                        .map(|x| x.to_string())
                        .unwrap_or_else(|| format!("e{c}"))
                })
                .collect();
            s.push_str(&format!(" ({n} {})", kids.join(" ")));
        }
        s.push('\n');
    }
    s
}

/// Emits the kernels for class `id` after those of its inputs.
fn emit(
    c: &Ctx,
    g: &MixGraph,
    ex: &egg::Extractor<TimeCost, Mix, crate::lang::MixAnalysis>,
    id: Id,
    done: &mut HashMap<Id, ()>,
    out: &mut Vec<Kernel>,
) {
    let id = g.find(id);
    if done.contains_key(&id) {
        return;
    }
    done.insert(id, ());
    let best = ex.find_best_node(id).clone();
    if matches!(best, Mix::Value(_) | Mix::Num(_)) {
        return;
    }
    if let Mix::Merged(ch) = &best {
        // One kernel for the members that chose the merged contraction.
        let n = nums(g, ch, 2)[1] as usize;
        let args: Vec<Id> = ch[2 + n..].to_vec();
        for a in &args {
            emit(c, g, ex, *a, done, out);
        }
        let (work, members) = merged_work(c, g, ch);
        let mut covers = Vec::new();
        for o in &members {
            let v = c.m.ops[*o].result;
            // Find the member's class through the value it computes.
            if let Some(cl) = g
                .classes()
                .find(|k| value_of(g, k.id) == Some(v))
                .map(|k| k.id)
            {
                if matches!(ex.find_best_node(cl), Mix::Merged(_)) {
                    done.insert(g.find(cl), ());
                    covers.push(c.m.value(v).name.clone());
                }
            }
        }
        let reads: Vec<String> = args
            .iter()
            .filter_map(|a| value_of(g, *a))
            .map(|v| c.m.value(v).name.clone())
            .collect();
        out.push(Kernel {
            id: out.len() + 1,
            schedule: "e-graph".into(),
            form: String::new(),
            name: covers.join("+"),
            algorithm: describe(c, g, &best),
            covers: covers.clone(),
            work,
            useful_flops: work.flops(),
            seconds: c.profile.time(&work),
            alternatives: vec![(
                format!(
                    "separate contractions would take {} in all; merged takes {}",
                    fmt_time(
                        members
                            .iter()
                            .map(|o| c.profile.time(&c.direct(*o, &[])))
                            .sum::<f64>()
                    ),
                    fmt_time(c.profile.time(&work))
                ),
                0.0,
            )],
            notes: vec![format!(
                "reads the shared input once for {} outputs",
                covers.len()
            )],
            reads,
            skipped_fraction: None,
            per_call: input_dependent(g, id),
        });
        return;
    }
    let inputs: Vec<Id> = best
        .children()
        .iter()
        .copied()
        .filter(|k| value_of(g, *k).is_some())
        .collect();
    for i in &inputs {
        emit(c, g, ex, *i, done, out);
    }
    let (work, useful) = own_work(c, g, &best).unwrap_or_default();
    let mut covers = Vec::new();
    let algorithm = describe(c, g, &best);
    covers.extend(covered(c, g, &best));
    let seconds = c.profile.time(&work);
    let mut notes = Vec::new();
    let mut skipped_fraction = None;
    // The attention node of this kernel: the kernel itself, or the producer
    // at the bottom of its fused chain.
    let attention = Some(best.clone()).filter(|n| matches!(n, Mix::Attention(_)));
    if let Some(Mix::Attention(ch)) = &attention {
        let p = nums(g, ch, 2)[1] as usize;
        match mask_walk(c, p, None) {
            Ok(Some(w)) => {
                skipped_fraction = Some(w.fraction_skipped());
                notes.push(mask_note(&w));
            }
            Ok(None) => {
                skipped_fraction = Some(0.0);
                notes.push("no mask: every tile visited".into())
            }
            Err(e) => notes.push(format!("mask: tiles not counted ({e})")),
        }
        notes
            .push("scores and probabilities stay on chip: no L x L tensor in device memory".into());
    }
    let value = value_of(g, id).unwrap();
    let mut alternatives = Vec::new();
    let mut tc = TimeCost { ctx: c, g };
    // Alternatives for this value.
    let chosen = ex.find_best_node(id).clone();
    let chosen_cost = ex.find_best_cost(id);
    for n in &g[id].nodes {
        if *n == chosen {
            continue;
        }
        let cost = tc.cost(n, |k| ex.find_best_cost(k));
        alternatives.push((
            format!(
                "{} would take {}; chosen {} takes {} (both with their inputs)",
                describe(c, g, n),
                fmt_time(cost),
                describe(c, g, &chosen),
                fmt_time(chosen_cost)
            ),
            cost,
        ));
    }
    let reads = inputs
        .iter()
        .filter_map(|i| value_of(g, *i))
        .map(|v| c.m.value(v).name.clone())
        .fold(Vec::new(), |mut acc, n| {
            if !acc.contains(&n) {
                acc.push(n);
            }
            acc
        });
    out.push(Kernel {
        id: out.len() + 1,
        schedule: "e-graph".into(),
        form: String::new(),
        name: c.m.value(value).name.clone(),
        reads,
        algorithm,
        covers,
        work,
        useful_flops: useful,
        seconds,
        alternatives,
        notes,
        skipped_fraction,
        per_call: input_dependent(g, id),
    });
}

fn covered(c: &Ctx, g: &MixGraph, n: &Mix) -> Vec<String> {
    let name = |o: i64| c.m.value(c.m.ops[o as usize].result).name.clone();
    match n {
        Mix::Attention(ch) => {
            let k = nums(g, ch, 4);
            let mut v = vec![name(k[2])];
            if k[3] >= 0 {
                v.push(name(k[3]));
            }
            v.push(name(k[1]));
            v.push(name(k[0]));
            v
        }
        Mix::Op(ch) | Mix::FftConv(ch) | Mix::ParallelScan(ch) => {
            vec![name(nums(g, ch, 1)[0])]
        }
        Mix::Scan(ch) | Mix::ChunkedScan(ch) => {
            let k = nums(g, ch, 3);
            vec![name(k[1]), name(k[2])]
        }
        Mix::Merged(ch) => {
            let n = nums(g, ch, 2)[1] as usize;
            nums(g, &ch[2..], n).into_iter().map(name).collect()
        }
        _ => vec![],
    }
}

/// The estimated seconds of the per-call kernels and of the kernels that
/// run once per parameters and sizes.
pub(crate) fn split_seconds(kernels: &[Kernel]) -> (f64, f64) {
    kernels.iter().fold((0.0, 0.0), |(call, once), k| {
        if k.per_call {
            (call + k.seconds, once)
        } else {
            (call, once + k.seconds)
        }
    })
}

pub(crate) fn fmt_time(s: f64) -> String {
    if s >= 1e-3 {
        format!("{:.3} ms", s * 1e3)
    } else {
        format!("{:.1} us", s * 1e6)
    }
}

impl Plan {
    /// The plan in a researcher's terms.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let sizes: Vec<String> = self.sizes.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let per_call = self.kernels.iter().filter(|k| k.per_call).count();
        s.push_str(&format!(
            "mixer {} on {} ({} kernels) at {}: {} kernel{} per call, est. {} (as written: {})",
            self.mixer,
            self.device,
            self.target,
            sizes.join(" "),
            per_call,
            if per_call == 1 { "" } else { "s" },
            fmt_time(self.total_seconds),
            fmt_time(self.naive_seconds)
        ));
        if per_call < self.kernels.len() {
            s.push_str(&format!(
                "; {} more once per parameters and sizes, est. {}",
                self.kernels.len() - per_call,
                fmt_time(self.precompute_seconds)
            ));
        }
        s.push_str("\n\n");
        for kern in &self.kernels {
            s.push_str(&format!(
                "kernel {}  {}  [{}] {}\n    computes {}; {:.3} GFLOP, {:.3} MB, est. {}\n",
                kern.id,
                kern.name,
                kern.schedule,
                kern.algorithm
                    .strip_prefix(kern.schedule.as_str())
                    .map_or(kern.algorithm.as_str(), |rest| rest.trim()),
                kern.covers.join(" -> "),
                kern.work.flops() / 1e9,
                kern.work.bytes / 1e6,
                fmt_time(kern.seconds)
            ));
            if !kern.per_call {
                s.push_str("    once per parameters and sizes: it does not depend on the input\n");
            }
            for n in &kern.notes {
                s.push_str(&format!("    {n}\n"));
            }
            for (alt, _) in &kern.alternatives {
                s.push_str(&format!("    why: {alt}\n"));
            }
        }
        if let Some(t) = self.explored_seconds {
            s.push_str(&format!(
                "\ne-graph's best with every form it knows: est. {} per call\n",
                fmt_time(t)
            ));
            for line in &self.not_run {
                s.push_str(&format!("  not run: {line}\n"));
            }
        }
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for f in &self.firings {
            *counts.entry(f.rule).or_default() += 1;
        }
        let rules: Vec<String> = counts.iter().map(|(r, n)| format!("{r} x{n}")).collect();
        s.push_str(&format!(
            "\nrules fired: {}\n",
            if rules.is_empty() {
                "none".to_string()
            } else {
                rules.join(", ")
            }
        ));
        let mut shown: Vec<(&str, &str)> = Vec::new();
        for f in &self.firings {
            if shown.contains(&(f.rule, f.detail.as_str())) {
                continue;
            }
            shown.push((f.rule, f.detail.as_str()));
            s.push_str(&format!("  {}: {}\n", f.rule, f.detail));
        }
        s.push_str(&format!(
            "e-graph: {} classes, {} nodes; {} after {} iteration{}; saturation {:.2} ms, extraction {:.2} ms\n",
            self.classes,
            self.nodes,
            self.stop_reason,
            self.iterations,
            if self.iterations == 1 { "" } else { "s" },
            self.saturation_ms,
            self.extraction_ms
        ));
        s
    }
}
