//! The rulebook. Each rule adds, to an e-class, an e-node that computes the
//! same value another way; none changes what is computed. Side conditions
//! are checked on the IR ops the e-nodes name.
//!
//! - `fuse-attention`: `o = sum(j) p[.., j] * v[.., j, ..]` with
//!   `p = softmax(X, over: j) [where mask]` and `X` the scores
//!   `s = sum(e) q * k * c` (or an elementwise score modification of them)
//!   becomes one fused attention kernel: online softmax, scores and
//!   probabilities never written, masked-out key tiles never visited.
//!   Conditions: `p` has no other consumer; `o` reduces over exactly the
//!   softmax axis; `s` contracts one index. Scores shared by several masked
//!   branches are recomputed on chip by each branch's fused kernel.
//! - `conv-as-fft`: a causal convolution `sum(t) h[t..] * u[.., l - t, ..]
//!   where t <= l` may be evaluated by FFT (same sums, other order).
//! - `merge-projections`: projections of one input with weights of one
//!   shape are one contraction with the weights side by side
//!   (`mixc_compiler::pattern::projection`; the mid-end's pass of that name
//!   runs it).
//! - `fuse-scan-readout`: a linear recurrence read by exactly one op,
//!   through sums over its state axes (`scan::readout`: RetNet's matrix
//!   state read as `sum(e) q * S`, a diagonal SSM read as `sum(n) C * h`),
//!   runs in one kernel with the reader, sequentially or in chunks, the
//!   state on chip: it is never written. Condition: the state's size is a
//!   constant (at most `scan::MAX_STATE`).

pub mod conv;
pub mod inline;

pub use mixc_compiler::passes::linear;
pub use mixc_compiler::pattern::{
    attention, consumers, has_reduction, op_of, product_reads, reads_at_identity, scan,
};

use crate::lang::{num_of, operands, ClassData, Mix, MixGraph};
use attention::match_attention;
use egg::Id;
use mixc_compiler::ir::ValueId;

/// One application of a rule.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Firing {
    pub rule: &'static str,
    pub detail: String,
}

/// Runs every rule once over the e-graph; returns what fired. Rules first
/// collect their matches (reading the e-graph), then add e-nodes to the
/// matched classes; an addition that changes nothing is not a firing.
pub fn apply_all(
    g: &mut MixGraph,
    classes: &[Id],
    uses: &[usize],
    (linear, inlined): (&[linear::LinearRewrite], &[inline::InlineRewrite]),
    sizes: &std::collections::BTreeMap<String, i64>,
) -> Vec<Firing> {
    let m = g.analysis.module.clone();
    let mut adds: Vec<Addition> = Vec::new();
    for r in inlined {
        let id = classes[m.ops[r.original].result.0 as usize];
        let args: Vec<Id> = operands(&m, r.inlined)
            .iter()
            .map(|v| classes[v.0 as usize])
            .collect();
        adds.push((
            id,
            vec![r.inlined as i64],
            args,
            Kind::Op,
            Firing {
                rule: "inline-elementwise",
                detail: format!(
                    "`{}` recomputes `{}` instead of reading it",
                    m.value(m.ops[r.original].result).name,
                    m.value(m.ops[r.producer].result).name
                ),
            },
        ));
    }
    for r in linear {
        let id = classes[m.ops[r.original].result.0 as usize];
        let mut args = vec![classes[r.q.0 as usize], classes[r.k.0 as usize]];
        if let Some(v) = r.v {
            args.push(classes[v.0 as usize]);
        }
        let name = &m.value(m.ops[r.original].result).name;
        for (kind, how) in [
            (Kind::Scan, "a scan with a matrix state"),
            (Kind::ChunkedScan, "a chunked scan"),
        ] {
            adds.push((
                id,
                vec![r.original as i64, r.scan as i64, r.readout as i64],
                args.clone(),
                kind,
                Firing {
                    rule: "linear-attention-as-scan",
                    detail: format!("`{name}` (causal linear attention) as {how}"),
                },
            ));
        }
    }
    for g in mixc_compiler::pattern::projection::groups(&m) {
        let group: Vec<usize> = g.iter().map(|p| p.o).collect();
        let input = &m.value(g[0].x).name;
        let names: Vec<String> = group
            .iter()
            .map(|o| format!("`{}`", m.value(m.ops[*o].result).name))
            .collect();
        let nums: Vec<i64> = group.iter().map(|o| *o as i64).collect();
        let mut args: Vec<Id> = Vec::new();
        for o in &group {
            for v in operands(&m, *o) {
                let c = classes[v.0 as usize];
                if !args.contains(&c) {
                    args.push(c);
                }
            }
        }
        for (k, o) in group.iter().enumerate() {
            let mut n = vec![k as i64, group.len() as i64];
            n.extend(nums.iter().copied());
            adds.push((
                classes[m.ops[*o].result.0 as usize],
                n,
                args.clone(),
                Kind::MergedProjection,
                Firing {
                    rule: "merge-projections",
                    detail: format!(
                        "{} read `{input}` once, as one contraction",
                        names.join(", ")
                    ),
                },
            ));
        }
    }
    for class in g.classes() {
        for node in &class.nodes {
            let Mix::Op(ch) = node else { continue };
            let Some(o) = num_of(g, ch[0]) else { continue };
            let o = o as usize;
            let op = &m.ops[o];
            let name = &m.value(op.result).name;
            if scan::applies(&m, o) {
                adds.push((
                    class.id,
                    vec![o as i64],
                    ch[1..].to_vec(),
                    Kind::ParallelScan,
                    Firing {
                        rule: "scan-as-parallel-prefix",
                        detail: format!(
                            "`{name}` (first-order linear recurrence) as a parallel prefix scan"
                        ),
                    },
                ));
            }
            if conv::applies(&m, o) {
                adds.push((
                    class.id,
                    vec![o as i64],
                    ch[1..].to_vec(),
                    Kind::FftConv,
                    Firing {
                        rule: "conv-as-fft",
                        detail: format!("`{name}` may be evaluated by FFT"),
                    },
                ));
            }
            if let Some(a) = match_attention(&m, o, uses) {
                adds.push((
                    class.id,
                    vec![
                        a.o as i64,
                        a.p as i64,
                        a.s as i64,
                        a.modifier.map(|x| x as i64).unwrap_or(-2),
                    ],
                    a.inputs.iter().map(|v| classes[v.0 as usize]).collect(),
                    Kind::Attention,
                    Firing {
                        rule: "fuse-attention",
                        detail: format!(
                            "`{}` = softmax(`{}`) · `{}`{}: one fused attention kernel",
                            name,
                            m.value(m.ops[a.s].result).name,
                            m.value(*a.inputs.get(2).unwrap_or(&op.result)).name,
                            a.modifier
                                .map(|x| format!(
                                    " with score modification `{}`",
                                    m.value(m.ops[x].result).name
                                ))
                                .unwrap_or_default()
                        ),
                    },
                ));
            }
            // `fuse-scan-readout`: a scan read once through its state.
            for v in operands(&m, o) {
                let Some(s) = op_of(&m, v) else { continue };
                match scan::readout(&m, s, sizes) {
                    Some(ss) if ss.o == o => {}
                    _ => continue,
                }
                let mut args: Vec<Id> = Vec::new();
                for x in operands(&m, s).into_iter().chain(operands(&m, o)) {
                    let c = classes[x.0 as usize];
                    if x != v && !args.contains(&c) {
                        args.push(c);
                    }
                }
                for (kind, how) in [(Kind::Scan, "sequential"), (Kind::ChunkedScan, "chunked")] {
                    adds.push((
                        class.id,
                        vec![o as i64, s as i64, o as i64],
                        args.clone(),
                        kind,
                        Firing {
                            rule: "fuse-scan-readout",
                            detail: format!(
                                "`{name}` reads the scan `{}` once, through its state: {how}, the state on chip",
                                m.value(v).name
                            ),
                        },
                    ));
                }
            }
        }
    }
    let mut fired = Vec::new();
    for (id, nums, args, kind, firing) in adds {
        let mut ch: Vec<Id> = nums.into_iter().map(|n| g.add(Mix::Num(n))).collect();
        ch.extend(args);
        let ch = ch.into_boxed_slice();
        let node = match kind {
            Kind::Op => Mix::Op(ch),
            Kind::ParallelScan => Mix::ParallelScan(ch),
            Kind::FftConv => Mix::FftConv(ch),
            Kind::Attention => Mix::Attention(ch),
            Kind::Scan => Mix::Scan(ch),
            Kind::ChunkedScan => Mix::ChunkedScan(ch),
            Kind::MergedProjection => Mix::Merged(ch),
        };
        let before = g.total_number_of_nodes();
        let new = g.add(node);
        let changed = g.union(id, new);
        if changed || g.total_number_of_nodes() != before {
            fired.push(firing);
        }
    }
    g.rebuild();
    fired
}

/// An e-node to add to a class: (class, `Num` children, class children,
/// which kind of node, why).
type Addition = (Id, Vec<i64>, Vec<Id>, Kind, Firing);

#[derive(Clone, Copy)]
enum Kind {
    Op,
    ParallelScan,
    FftConv,
    Attention,
    Scan,
    ChunkedScan,
    MergedProjection,
}

/// The value a class computes.
pub fn value_of(g: &MixGraph, id: Id) -> Option<ValueId> {
    match g[id].data {
        ClassData::Value(v, _) => Some(v),
        ClassData::Num(_) => None,
    }
}

/// Whether a class's value depends on the mixer's input.
pub fn input_dependent(g: &MixGraph, id: Id) -> bool {
    match &g[id].data {
        ClassData::Value(_, f) => f.input_dependent,
        ClassData::Num(_) => false,
    }
}
