//! Lowering from the checker's [`typed::Program`] to the IR.

use super::*;
use mixc_dsl::typed::{self, TExpr, TExprKind, TensorKind};

/// Lowers a checked program. Ids are kept: value `%k` is tensor `k`.
pub fn lower(p: &typed::Program) -> Module {
    let mut m = Module {
        name: p.name.clone(),
        sizes: p
            .dims
            .iter()
            .map(|d| SizeDecl {
                name: d.name.clone(),
                value: d.value.clone(),
                span: d.span,
            })
            .collect(),
        values: Vec::new(),
        exprs: Vec::new(),
        ops: Vec::new(),
        inputs: p.inputs.iter().map(|t| ValueId(*t)).collect(),
        output: ValueId(p.output),
    };
    for t in &p.tensors {
        let def = match &t.kind {
            TensorKind::Input => ValueDef::Input,
            TensorKind::Param(init) => ValueDef::Param(match init {
                typed::Init::Normal { mean, std } => Init::Normal {
                    mean: expr(&mut m, mean),
                    std: expr(&mut m, std),
                },
                typed::Init::Uniform { lo, hi } => Init::Uniform {
                    lo: expr(&mut m, lo),
                    hi: expr(&mut m, hi),
                },
                typed::Init::Constant(v) => Init::Constant(expr(&mut m, v)),
            }),
            TensorKind::Def(d) => {
                let body = expr(&mut m, &d.body);
                let id = OpId(m.ops.len() as u32);
                let mut op = Op {
                    result: ValueId(m.values.len() as u32),
                    slots: d
                        .slots
                        .iter()
                        .map(|s| IndexVar {
                            name: s.name.clone(),
                            extent: s.extent.clone(),
                        })
                        .collect(),
                    rank: d.rank,
                    body,
                    recurrence: d.recurrence,
                    kind: OpKind::Map,
                    span: t.span,
                };
                op.kind = classify(&m, &op);
                m.ops.push(op);
                ValueDef::Op(id)
            }
        };
        m.values.push(Value {
            name: t.name.clone(),
            shape: t.shape.clone(),
            def,
            span: t.span,
        });
    }
    m
}

fn expr(m: &mut Module, e: &TExpr) -> ExprId {
    let node = match &e.kind {
        TExprKind::Const(v) => Node::Const(*v),
        TExprKind::Dim(d) => Node::Size(d.clone()),
        TExprKind::Index(s) => Node::Index(*s),
        TExprKind::Read { tensor, subs } => {
            let subs = subs.iter().map(|s| expr(m, s)).collect();
            Node::Read(ValueId(*tensor), subs)
        }
        TExprKind::Unary(op, a) => Node::Unary(*op, expr(m, a)),
        TExprKind::Binary(op, a, b) => {
            let a = expr(m, a);
            Node::Binary(*op, a, expr(m, b))
        }
        TExprKind::Call(f, args) => Node::Call(*f, args.iter().map(|a| expr(m, a)).collect()),
        TExprKind::Reduce {
            op,
            slots,
            guard,
            body,
        } => {
            let guard = guard.as_ref().map(|g| expr(m, g));
            Node::Reduce {
                op: *op,
                slots: slots.clone(),
                guard,
                body: expr(m, body),
            }
        }
        TExprKind::Normalize {
            op,
            slot,
            guard,
            body,
            eps,
            ..
        } => {
            let guard = guard.as_ref().map(|g| expr(m, g));
            Node::Normalize {
                op: *op,
                slot: *slot,
                guard,
                body: expr(m, body),
                eps: *eps,
            }
        }
        TExprKind::Guard { pred, body } => {
            let p = expr(m, pred);
            Node::Guard(p, expr(m, body))
        }
    };
    m.add_expr(node, e.ty, e.span)
}
