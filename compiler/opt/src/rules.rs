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

use crate::lang::{num_of, operands, ClassData, Mix, MixGraph};
use egg::Id;
use mixc_compiler::ir::{BinOp, ExprId, Module, Node, NormOp, OpKind, ValueDef, ValueId};

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

fn op_of(m: &Module, v: ValueId) -> Option<usize> {
    match m.value(v).def {
        ValueDef::Op(o) => Some(o.0 as usize),
        _ => None,
    }
}

/// The reads in a product of reads and scalar factors.
fn product_reads(m: &Module, e: ExprId, out: &mut Vec<ExprId>) -> bool {
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
fn reads_at_identity(m: &Module, e: ExprId, v: ValueId, rank: usize) -> bool {
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

fn has_reduction(m: &Module, e: ExprId) -> bool {
    matches!(m.expr(e).node, Node::Reduce { .. } | Node::Normalize { .. })
        || m.children(e).into_iter().any(|c| has_reduction(m, c))
}

/// A match of the attention chain ending at op `o`.
pub struct AttentionMatch {
    pub o: usize,
    pub p: usize,
    /// The elementwise score modification between scores and softmax, if any.
    pub modifier: Option<usize>,
    pub s: usize,
    /// Values the fused kernel reads: q, k, v, then any tables.
    pub inputs: Vec<ValueId>,
}

pub fn match_attention(m: &Module, o: usize, uses: &[usize]) -> Option<AttentionMatch> {
    let op_o = &m.ops[o];
    if op_o.kind != OpKind::Contract {
        return None;
    }
    let Node::Reduce { slots, body, .. } = &m.expr(op_o.body).node else {
        return None;
    };
    let [r] = slots.as_slice() else { return None };
    let mut reads = Vec::new();
    if !product_reads(m, *body, &mut reads) || reads.len() != 2 {
        return None;
    }
    // One read is the softmax output, subscripted by `r` on its softmax axis.
    for (pi, vi) in [(0, 1), (1, 0)] {
        let Node::Read(pv, psubs) = &m.expr(reads[pi]).node else {
            continue;
        };
        let Node::Read(vv, _) = &m.expr(reads[vi]).node else {
            continue;
        };
        let Some(p) = op_of(m, *pv) else { continue };
        let op_p = &m.ops[p];
        let Node::Normalize {
            op: NormOp::Softmax,
            slot,
            body: pbody,
            ..
        } = &m.expr(op_p.body).node
        else {
            continue;
        };
        if (*slot as usize) >= psubs.len() || m.expr(psubs[*slot as usize]).node != Node::Index(*r)
        {
            continue;
        }
        if uses[pv.0 as usize] != 1 || has_reduction(m, *pbody) {
            continue;
        }
        // The softmax reads the scores (or their modification) at its own indices.
        let p_operands = operands(m, p);
        let mut found = None;
        for x in &p_operands {
            let Some(xo) = op_of(m, *x) else { continue };
            // Scores may be shared (several masked branches over the same
            // scores): the fused kernel recomputes them on chip.
            if !reads_at_identity(m, *pbody, *x, op_p.rank) {
                continue;
            }
            if is_scores(m, xo) {
                found = Some((None, xo));
                break;
            }
            let op_x = &m.ops[xo];
            if op_x.kind == OpKind::Map && op_x.rank == op_p.rank {
                for y in operands(m, xo) {
                    if let Some(yo) = op_of(m, y) {
                        if is_scores(m, yo) && reads_at_identity(m, op_x.body, y, op_x.rank) {
                            found = Some((Some(xo), yo));
                        }
                    }
                }
            }
        }
        let Some((modifier, s)) = found else { continue };
        let mut inputs: Vec<ValueId> = operands(m, s);
        inputs.push(*vv);
        let internal = [
            m.ops[s].result,
            modifier.map(|x| m.ops[x].result).unwrap_or(m.ops[s].result),
            m.ops[p].result,
        ];
        let mut extra = |vs: Vec<ValueId>| {
            for v in vs {
                if !internal.contains(&v) && !inputs.contains(&v) {
                    inputs.push(v);
                }
            }
        };
        extra(p_operands.clone());
        if let Some(x) = modifier {
            extra(operands(m, x));
        }
        return Some(AttentionMatch {
            o,
            p,
            modifier,
            s,
            inputs,
        });
    }
    None
}

/// `sum(e) a[..] * b[..] * c`: a score contraction of two reads over one index.
fn is_scores(m: &Module, s: usize) -> bool {
    let op = &m.ops[s];
    if op.kind != OpKind::Contract {
        return false;
    }
    let Node::Reduce { slots, body, .. } = &m.expr(op.body).node else {
        return false;
    };
    let mut reads = Vec::new();
    slots.len() == 1 && product_reads(m, *body, &mut reads) && reads.len() == 2
}

/// Runs every rule once over the e-graph; returns what fired.
pub fn apply_all(g: &mut MixGraph, classes: &[Id], uses: &[usize]) -> Vec<Firing> {
    let m = g.analysis.module.clone();
    let mut adds: Vec<(Id, Mix, Firing)> = Vec::new();
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
