//! The e-graph language over IR values, and its analysis.

use egg::{define_language, Analysis, DidMerge, EGraph, Id, Language};
use mixc_compiler::ir::{Module, ValueDef, ValueId};
use std::sync::Arc;

define_language! {
    /// Ways to compute one IR value. Children are `Num` op or value indices
    /// followed by the e-classes of the values read.
    pub enum Mix {
        "value" = Value([Id; 1]),
        "op" = Op(Box<[Id]>),
        "fft-conv" = FftConv(Box<[Id]>),
        "attention" = Attention(Box<[Id]>),
        "scan" = Scan(Box<[Id]>),
        "chunked-scan" = ChunkedScan(Box<[Id]>),
        "merged" = Merged(Box<[Id]>),
        "parallel-scan" = ParallelScan(Box<[Id]>),
        Num(i64),
    }
}

/// Per-class data: the IR value the class computes and facts about it, or
/// the number a `Num` leaf holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClassData {
    Value(ValueId, Facts),
    Num(i64),
}

/// What is known of a class's value without evaluating it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// Whether it depends on the mixer's input. A value that does not (a
    /// table, an implicit filter) is a constant of the parameters and sizes:
    /// computed once, not per call.
    pub input_dependent: bool,
    /// Its shape, symbolic in the sizes.
    pub shape: Vec<mixc_compiler::ir::DimExpr>,
}

/// The analysis: holds the module so e-nodes can be interpreted.
pub struct MixAnalysis {
    pub module: Arc<Module>,
}

impl Analysis<Mix> for MixAnalysis {
    type Data = ClassData;

    fn make(egraph: &mut EGraph<Mix, Self>, enode: &Mix, _id: Id) -> ClassData {
        let num = |egraph: &EGraph<Mix, Self>, id: Id| match egraph[id].data {
            ClassData::Num(n) => n,
            ClassData::Value(..) => -1,
        };
        // Any child value that depends on the input makes this one depend on it.
        let dependent = enode
            .children()
            .iter()
            .any(|c| matches!(&egraph[*c].data, ClassData::Value(_, f) if f.input_dependent));
        let m = egraph.analysis.module.clone();
        let facts = |v: ValueId, dep: bool| {
            ClassData::Value(
                v,
                Facts {
                    input_dependent: dep,
                    shape: m.value(v).shape.clone(),
                },
            )
        };
        match enode {
            Mix::Num(n) => ClassData::Num(*n),
            Mix::Value([k]) => {
                let v = ValueId(num(egraph, *k) as u32);
                facts(v, m.value(v).def == mixc_compiler::ir::ValueDef::Input)
            }
            Mix::Merged(c) => {
                // (merged k n op_1 .. op_n args..): member k of the group.
                let k = num(egraph, c[0]) as usize;
                let op = num(egraph, c[2 + k]) as usize;
                facts(m.ops[op].result, dependent)
            }
            Mix::Op(c)
            | Mix::ParallelScan(c)
            | Mix::FftConv(c)
            | Mix::Attention(c)
            | Mix::Scan(c)
            | Mix::ChunkedScan(c) => {
                let op = num(egraph, c[0]) as usize;
                facts(m.ops[op].result, dependent)
            }
        }
    }

    fn merge(&mut self, _a: &mut ClassData, _b: ClassData) -> DidMerge {
        // Every e-node of a class computes the value of the class's first
        // e-node: rules add nodes to an existing class rather than unioning
        // classes of different values.
        DidMerge(false, false)
    }
}

pub type MixGraph = EGraph<Mix, MixAnalysis>;

pub use mixc_compiler::pattern::operands;

/// Builds the e-graph of a (split) module: one class per value.
pub fn build(m: Arc<Module>) -> (MixGraph, Vec<Id>) {
    let mut g = EGraph::new(MixAnalysis { module: m.clone() });
    let mut class = vec![Id::from(0usize); m.values.len()];
    for (k, v) in m.values.iter().enumerate() {
        if !matches!(v.def, ValueDef::Op(_)) {
            let n = g.add(Mix::Num(k as i64));
            class[k] = g.add(Mix::Value([n]));
        }
    }
    for (o, op) in m.ops.iter().enumerate() {
        let n = g.add(Mix::Num(o as i64));
        let mut children = vec![n];
        children.extend(operands(&m, o).iter().map(|v| class[v.0 as usize]));
        class[op.result.0 as usize] = g.add(Mix::Op(children.into_boxed_slice()));
    }
    g.rebuild();
    (g, class)
}

/// The `Num` held by a class.
pub fn num_of(g: &MixGraph, id: Id) -> Option<i64> {
    match g[id].data {
        ClassData::Num(n) => Some(n),
        ClassData::Value(..) => None,
    }
}
