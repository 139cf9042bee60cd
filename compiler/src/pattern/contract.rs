//! Contractions: `out[.., n] = sum(k) body (+ epilogue)`, the shape the
//! contraction templates take (rows accumulated on the host, tiles and
//! tensor cores on GPUs) and the hoisting pass looks for.

use crate::ir::{BinOp, ExprId, Module, Node, RedOp, Slot, Ty};

/// A contraction the row-accumulating loop nest can compute.
#[derive(Clone, Debug)]
pub struct Contraction {
    pub reduce: Vec<Slot>,
    pub body: ExprId,
    pub epilogue: Option<ExprId>,
}

/// Op `o` as a contraction, if its body is `sum(k) body` or
/// `sum(k) body + epilogue` (real-valued, no guard, no nested reduction),
/// its result has an axis to run innermost, and that axis is not the one
/// threads split.
pub fn matches(m: &Module, o: usize, par: Option<Slot>) -> Option<Contraction> {
    let op = &m.ops[o];
    if op.recurrence.is_some() || op.rank == 0 || m.expr(op.body).ty != Ty::Real {
        return None;
    }
    let inner = (op.rank - 1) as Slot;
    if par == Some(inner) {
        return None;
    }
    let sum = |e: ExprId| match &m.expr(e).node {
        Node::Reduce {
            op: RedOp::Sum,
            slots,
            guard: None,
            body,
        } if m.expr(*body).ty == Ty::Real && !super::has_reduction(m, *body) => {
            Some((slots.clone(), *body))
        }
        _ => None,
    };
    if let Some((reduce, body)) = sum(op.body) {
        return Some(Contraction {
            reduce,
            body,
            epilogue: None,
        });
    }
    let Node::Binary(BinOp::Add, a, b) = &m.expr(op.body).node else {
        return None;
    };
    for (s, e) in [(*a, *b), (*b, *a)] {
        if let Some((reduce, body)) = sum(s) {
            if m.expr(e).ty == Ty::Real
                && !super::has_reduction(m, e)
                && !super::mentions(m, e, &reduce)
            {
                return Some(Contraction {
                    reduce,
                    body,
                    epilogue: Some(e),
                });
            }
        }
    }
    None
}

/// How a contraction's axes and factors split for a blocked matrix
/// product: the factors that read the output's last axis are the *B side*
/// (weights `w[k, .., n]`), the others the *A side* (activations `x[..,
/// m, k]`); output axes only the A side reads are the rows (M), those
/// only the B side reads the columns (N), the rest (batch, head) the same
/// for a whole block.
#[derive(Clone, Debug)]
pub struct MatrixSplit {
    pub rows: Vec<Slot>,
    pub cols: Vec<Slot>,
    pub uniform: Vec<Slot>,
    pub reduce: Vec<Slot>,
    pub a: Vec<ExprId>,
    pub b: Vec<ExprId>,
    pub epilogue: Option<ExprId>,
}

/// The factors of a product tree.
pub fn factors_of(m: &Module, e: ExprId, out: &mut Vec<ExprId>) {
    match &m.expr(e).node {
        Node::Binary(BinOp::Mul, x, y) => {
            factors_of(m, *x, out);
            factors_of(m, *y, out);
        }
        _ => out.push(e),
    }
}

/// Op `o` as a matrix product worth tiling: a contraction ([`matches`])
/// with no factor reading both a row and a column axis, and M and N not
/// constants below 16 (`consts`: the sizes fixed at build time).
pub fn matrix_split(
    m: &Module,
    o: usize,
    consts: &std::collections::BTreeMap<String, i64>,
) -> Option<MatrixSplit> {
    let op = &m.ops[o];
    let c = matches(m, o, None)?;
    let inner = (op.rank - 1) as Slot;
    let mut fs = Vec::new();
    factors_of(m, c.body, &mut fs);
    let mentions = |f: &ExprId, s: Slot| super::mentions(m, *f, &[s]);
    let (b, a): (Vec<ExprId>, Vec<ExprId>) = fs.into_iter().partition(|f| mentions(f, inner));
    let (mut rows, mut cols, mut uniform) = (Vec::new(), Vec::new(), Vec::new());
    for s in 0..op.rank as Slot {
        let in_a = a.iter().any(|f| mentions(f, s));
        let in_b = b.iter().any(|f| mentions(f, s));
        match (in_a, in_b) {
            (true, false) => rows.push(s),
            (false, true) => cols.push(s),
            _ => uniform.push(s),
        }
    }
    // A factor reading a row and a column axis is no matrix product.
    let crosses =
        |f: &ExprId| rows.iter().any(|s| mentions(f, *s)) && cols.iter().any(|s| mentions(f, *s));
    if rows.is_empty() || cols.is_empty() || a.iter().chain(&b).any(crosses) {
        return None;
    }
    let small = |slots: &[Slot]| {
        let n: Option<i64> = slots
            .iter()
            .map(|s| op.slots[*s as usize].extent.eval(consts).ok())
            .product();
        n.is_some_and(|n| n < 16)
    };
    if small(&rows) || small(&cols) {
        return None;
    }
    Some(MatrixSplit {
        rows,
        cols,
        uniform,
        reduce: c.reduce,
        a,
        b,
        epilogue: c.epilogue,
    })
}

/// Op `o` as the runtime's matrix product (`mixc_runtime::gemm`, the
/// host's library kernel): a matrix product ([`matrix_split`]) with no
/// epilogue whose A and B sides are each one read, subscripted by plain
/// indices and constants, times constant factors (`alpha`).
pub fn gemm_spec(
    m: &Module,
    o: usize,
    consts: &std::collections::BTreeMap<String, i64>,
) -> Option<mixc_runtime::gemm::GemmSpec> {
    use crate::passes::conv::{add, mul, strides};
    use mixc_dsl::typed::DimExpr;
    use mixc_runtime::gemm::{Axis, GemmSpec};
    let op = &m.ops[o];
    let sp = matrix_split(m, o, consts)?;
    if sp.epilogue.is_some() {
        return None;
    }
    let mut alpha = 1.0f64;
    // The one read of a side, its constant factors (constants and sizes
    // fixed at build time: `D ** -0.5`) folded into alpha.
    let mut side = |fs: &[ExprId]| -> Option<ExprId> {
        let mut read = None;
        for f in fs {
            if let Some(c) = constant_value(m, *f, consts) {
                alpha *= c;
                continue;
            }
            if read.is_some() || !indexed_read(m, *f) {
                return None;
            }
            read = Some(*f);
        }
        read
    };
    let (a, b) = (side(&sp.a)?, side(&sp.b)?);
    if !(alpha.is_finite() && (alpha as f32).is_finite()) {
        return None;
    }
    // A read's value, element offset and stride for each slot.
    let layout = |e: ExprId| -> (usize, DimExpr, Vec<(Slot, DimExpr)>) {
        let Node::Read(v, subs) = &m.expr(e).node else {
            unreachable!("a side is a read")
        };
        let st = strides(&m.value(*v).shape);
        let mut offset = DimExpr::Const(0);
        let mut per: Vec<(Slot, DimExpr)> = Vec::new();
        for (k, s) in subs.iter().enumerate() {
            match m.expr(*s).node {
                Node::Index(x) => match per.iter_mut().find(|(y, _)| *y == x) {
                    Some((_, d)) => *d = add(d.clone(), st[k].clone()),
                    None => per.push((x, st[k].clone())),
                },
                Node::Const(c) => {
                    offset = add(offset, mul(DimExpr::Const(c as i64), st[k].clone()))
                }
                _ => unreachable!("subscripts are indices and constants"),
            }
        }
        (v.0 as usize, offset, per)
    };
    let (av, a_offset, a_st) = layout(a);
    let (bv, b_offset, b_st) = layout(b);
    if av == op.result.0 as usize || bv == op.result.0 as usize {
        return None;
    }
    let out_st = strides(&m.value(op.result).shape);
    let of = |per: &[(Slot, DimExpr)], s: Slot| {
        per.iter()
            .find(|(x, _)| *x == s)
            .map_or(DimExpr::Const(0), |(_, d)| d.clone())
    };
    let axes = |slots: &[Slot]| -> Vec<Axis> {
        slots
            .iter()
            .map(|s| Axis {
                extent: op.slots[*s as usize].extent.to_string(),
                out: if (*s as usize) < op.rank {
                    out_st[*s as usize].to_string()
                } else {
                    "0".into()
                },
                a: of(&a_st, *s).to_string(),
                b: of(&b_st, *s).to_string(),
            })
            .collect()
    };
    Some(GemmSpec {
        out: op.result.0 as usize,
        a: av,
        b: bv,
        a_offset: a_offset.to_string(),
        b_offset: b_offset.to_string(),
        alpha: alpha as f32,
        rows: axes(&sp.rows),
        cols: axes(&sp.cols),
        reduce: axes(&sp.reduce),
        batch: axes(&sp.uniform),
    })
}

/// The value of an expression of constants and fixed sizes, or `None`
/// where it reads a tensor, an index or a size fixed only at run time.
pub fn constant_value(
    m: &Module,
    e: ExprId,
    consts: &std::collections::BTreeMap<String, i64>,
) -> Option<f64> {
    use mixc_dsl::ops::{scalar_binop, scalar_builtin};
    Some(match &m.expr(e).node {
        Node::Const(c) => *c,
        Node::Size(d) => d.eval(consts).ok()? as f64,
        Node::Unary(crate::ir::UnOp::Neg, a) => -constant_value(m, *a, consts)?,
        Node::Binary(op, a, b) => scalar_binop(
            *op,
            constant_value(m, *a, consts)?,
            constant_value(m, *b, consts)?,
        ),
        Node::Call(f, args) => {
            let xs: Option<Vec<f64>> = args.iter().map(|a| constant_value(m, *a, consts)).collect();
            scalar_builtin(*f, &xs?)
        }
        _ => return None,
    })
}

/// Whether `e` is a read whose subscripts are plain indices and constants
/// (an operand a strided library kernel can address).
pub fn indexed_read(m: &Module, e: ExprId) -> bool {
    match &m.expr(e).node {
        Node::Read(_, subs) => subs
            .iter()
            .all(|s| matches!(m.expr(*s).node, Node::Index(_) | Node::Const(_))),
        _ => false,
    }
}
