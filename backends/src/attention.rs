//! Attention as the back ends see it: the chain and its key ranges
//! (`mixc_compiler::pattern::attention`), the schedule node, and the mask
//! as the Python expression a PyTorch peer's `mask_mod` takes.

use mixc_compiler::ir::{BinOp, DimExpr, ExprId, Module, Node, Slot, Ty, UnOp};

pub use mixc_compiler::pattern::attention::{
    bounds, parallel_slot, plan, rows, Bounds, Inline, Lin, Template,
};
pub use mixc_compiler::schedule::Schedule as HostKernel;

/// The first attention template's mask as a Python expression over
/// `q_idx` and `kv_idx` (and `L`), for a PyTorch `mask_mod`: integer
/// arithmetic, comparisons, `&`, `|`, `~`. `fixed` gives every size but
/// `L`. `None` if there is no template, or the mask reads a tensor, another
/// index, or anything without a plain integer meaning. No mask is `True`
/// for every pair (written `q_idx >= 0`).
pub fn mask_python(m: &Module, fixed: &std::collections::BTreeMap<String, i64>) -> Option<String> {
    let (ts, _) = plan(m);
    let t = ts.first()?;
    let q = parallel_slot(m, t)?;
    let Node::Normalize { guard, .. } = &m.expr(m.ops[t.p].body).node else {
        return None;
    };
    match guard {
        None => Some("q_idx >= 0".into()),
        Some(g) => py_expr(m, *g, q, t.jp, fixed),
    }
}

fn py_dim(d: &DimExpr, fixed: &std::collections::BTreeMap<String, i64>) -> Option<String> {
    use mixc_dsl::typed::DimOp;
    Some(match d {
        DimExpr::Const(v) => v.to_string(),
        DimExpr::Sym(s) if s == "L" => "L".into(),
        DimExpr::Sym(s) => fixed.get(s)?.to_string(),
        DimExpr::Bin(op, a, b) => {
            let (a, b) = (py_dim(a, fixed)?, py_dim(b, fixed)?);
            match op {
                DimOp::Max => format!("max({a}, {b})"),
                DimOp::Min => format!("min({a}, {b})"),
                DimOp::Div | DimOp::FloorDiv => format!("({a} // {b})"),
                op => format!("({a} {} {b})", op.symbol()),
            }
        }
    })
}

fn py_expr(
    m: &Module,
    e: ExprId,
    q: Slot,
    kv: Slot,
    fixed: &std::collections::BTreeMap<String, i64>,
) -> Option<String> {
    let n = m.expr(e);
    let sub = |x: ExprId| py_expr(m, x, q, kv, fixed);
    Some(match &n.node {
        Node::Index(s) if *s == q => "q_idx".into(),
        Node::Index(s) if *s == kv => "kv_idx".into(),
        Node::Const(c) if n.ty == Ty::Int => (*c as i64).to_string(),
        Node::Const(c) if n.ty == Ty::Bool => if *c != 0.0 {
            "(q_idx >= 0)"
        } else {
            "(q_idx < 0)"
        }
        .into(),
        Node::Size(d) => py_dim(d, fixed)?,
        Node::Unary(UnOp::Not, a) => format!("(~{})", sub(*a)?),
        Node::Unary(UnOp::Neg, a) if n.ty == Ty::Int => format!("(-{})", sub(*a)?),
        Node::Binary(op, a, b) => {
            let sym = match op {
                BinOp::And => "&",
                BinOp::Or => "|",
                BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::FloorDiv | BinOp::Mod
                    if m.expr(*a).ty == Ty::Int && m.expr(*b).ty == Ty::Int =>
                {
                    op.symbol()
                }
                BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge
                    if m.expr(*a).ty == Ty::Int && m.expr(*b).ty == Ty::Int =>
                {
                    op.symbol()
                }
                _ => return None,
            };
            format!("({} {sym} {})", sub(*a)?, sub(*b)?)
        }
        _ => return None,
    })
}
