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
//! - `fuse-epilogue`: an elementwise op that reads its producer only at its
//!   own indices, and is that producer's only consumer, runs in the
//!   producer's epilogue: the producer's result is never written.

pub mod attention;
pub mod linear;

use crate::lang::{num_of, operands, ClassData, Mix, MixGraph};
use attention::match_attention;
use egg::Id;
use mixc_compiler::ir::{BinOp, ExprId, Module, Node, OpKind, ValueDef, ValueId};

/// One application of a rule.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Firing {
    pub rule: &'static str,
    pub detail: String,
}

/// How many ops read each value (the output counts as a reader).
pub fn consumers(m: &Module) -> Vec<usize> {
    let mut n = vec![0usize; m.values.len()];
    for o in 0..m.ops.len() {
        for v in operands(m, o) {
            n[v.0 as usize] += 1;
        }
    }
    n[m.output.0 as usize] += 1;
    n
}

pub(crate) fn op_of(m: &Module, v: ValueId) -> Option<usize> {
    match m.value(v).def {
        ValueDef::Op(o) => Some(o.0 as usize),
        _ => None,
    }
}

/// The reads in a product of reads and scalar factors.
pub(crate) fn product_reads(m: &Module, e: ExprId, out: &mut Vec<ExprId>) -> bool {
    match &m.expr(e).node {
        Node::Binary(BinOp::Mul, a, b) => product_reads(m, *a, out) && product_reads(m, *b, out),
        Node::Read(..) => {
            out.push(e);
            true
        }
        _ => mixc_compiler::ir::is_scalar(m, e),
    }
}

/// Whether `e` reads `v` only as `v[s0, s1, ..]` with the op's own result slots.
pub(crate) fn reads_at_identity(m: &Module, e: ExprId, v: ValueId, rank: usize) -> bool {
    let ok = match &m.expr(e).node {
        Node::Read(w, subs) if *w == v => {
            subs.len() == rank
                && subs
                    .iter()
                    .enumerate()
                    .all(|(k, s)| m.expr(*s).node == Node::Index(k as u32))
        }
        _ => true,
    };
    ok && m
        .children(e)
        .into_iter()
        .all(|c| reads_at_identity(m, c, v, rank))
}

pub(crate) fn has_reduction(m: &Module, e: ExprId) -> bool {
    matches!(m.expr(e).node, Node::Reduce { .. } | Node::Normalize { .. })
        || m.children(e).into_iter().any(|c| has_reduction(m, c))
}

/// Runs every rule once over the e-graph; returns what fired.
pub fn apply_all(
    g: &mut MixGraph,
    classes: &[Id],
    uses: &[usize],
    linear: &[linear::LinearRewrite],
) -> Vec<Firing> {
    let m = g.analysis.module.clone();
    let mut adds: Vec<(Id, Mix, Firing)> = Vec::new();
    for r in linear {
        let id = classes[m.ops[r.original].result.0 as usize];
        let nums: Vec<Id> = [r.original, r.scan, r.readout]
            .iter()
            .map(|n| g.add(Mix::Num(*n as i64)))
            .collect();
        let mut ch = nums;
        ch.push(classes[r.q.0 as usize]);
        ch.push(classes[r.k.0 as usize]);
        if let Some(v) = r.v {
            ch.push(classes[v.0 as usize]);
        }
        let name = &m.value(m.ops[r.original].result).name;
        for (node, how) in [
            (
                Mix::Scan(ch.clone().into_boxed_slice()),
                "a scan with a matrix state",
            ),
            (Mix::ChunkedScan(ch.into_boxed_slice()), "a chunked scan"),
        ] {
            adds.push((
                id,
                node,
                Firing {
                    rule: "linear-attention-as-scan",
                    detail: format!("`{name}` (causal linear attention) as {how}"),
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
            if op.kind == OpKind::Conv {
                let mut c = ch.to_vec();
                c[0] = ch[0];
                adds.push((
                    class.id,
                    Mix::FftConv(c.into_boxed_slice()),
                    Firing {
                        rule: "conv-as-fft",
                        detail: format!("`{name}` may be evaluated by FFT"),
                    },
                ));
            }
            if let Some(a) = match_attention(&m, o, uses) {
                let nums = [a.o, a.p, a.s, a.modifier.unwrap_or(usize::MAX)];
                adds.push((
                    class.id,
                    Mix::Num(-1), // placeholder, built below
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
                let _ = nums;
            }
            if op.kind == OpKind::Map && !has_reduction(&m, op.body) && op.recurrence.is_none() {
                for x in operands(&m, o) {
                    let Some(xo) = op_of(&m, x) else { continue };
                    if uses[x.0 as usize] != 1
                        || m.ops[xo].recurrence.is_some()
                        || m.value(x).shape.len() != op.rank
                    {
                        continue;
                    }
                    if !reads_at_identity(&m, op.body, x, op.rank) {
                        continue;
                    }
                    let mut c = vec![ch[0], classes[x.0 as usize]];
                    c.extend(
                        operands(&m, o)
                            .into_iter()
                            .filter(|v| *v != x)
                            .map(|v| classes[v.0 as usize]),
                    );
                    adds.push((
                        class.id,
                        Mix::Fuse(c.into_boxed_slice()),
                        Firing {
                            rule: "fuse-epilogue",
                            detail: format!(
                                "`{name}` runs in the epilogue of `{}`",
                                m.value(x).name
                            ),
                        },
                    ));
                }
            }
        }
    }
    let mut fired = Vec::new();
    for (id, node, firing) in adds {
        let node = if let Mix::Num(-1) = node {
            // Build the attention e-node: (attention o p s mod inputs..).
            let Some(Mix::Op(ch)) = g[id]
                .nodes
                .iter()
                .find(|n| matches!(n, Mix::Op(_)))
                .cloned()
            else {
                continue;
            };
            let o = num_of(g, ch[0]).unwrap_or(0) as usize;
            let Some(a) = match_attention(&m, o, uses) else {
                continue;
            };
            let nums: Vec<Id> = [
                a.o as i64,
                a.p as i64,
                a.s as i64,
                a.modifier.map(|x| x as i64).unwrap_or(-2),
            ]
            .iter()
            .map(|n| g.add(Mix::Num(*n)))
            .collect();
            let mut c = nums;
            c.extend(a.inputs.iter().map(|v| classes[v.0 as usize]));
            Mix::Attention(c.into_boxed_slice())
        } else {
            node
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

/// The value a class computes.
pub fn value_of(g: &MixGraph, id: Id) -> Option<ValueId> {
    match g[id].data {
        ClassData::Value(v) => Some(v),
        ClassData::Num(_) => None,
    }
}
