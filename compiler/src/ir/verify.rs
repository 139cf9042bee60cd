//! The IR verifier. A module that passes it satisfies:
//!
//! 1. **Ids in range.** Every `ValueId`, `ExprId` and `OpId` names an entry
//!    of its arena; `inputs` are input values; `output` is a value.
//! 2. **Definitions match.** Each op's `result` is a value whose definition
//!    is that op, and whose shape is the extents of the op's first `rank`
//!    slots. Parameters and inputs have no op.
//! 3. **Program order.** An op reads only values defined before it (inputs,
//!    parameters, earlier ops), or its own result if it is a scan.
//! 4. **Scopes.** Every `Index(s)` is in scope: a result slot (`s < rank`) or
//!    a slot bound by an enclosing `Reduce` or `Normalize`. Each slot at or
//!    after `rank` is bound by exactly one binder, and binders bind only
//!    such slots; a normaliser's slot is a result slot or bound outside it.
//! 5. **Arity.** A read has one subscript per axis of the value it reads;
//!    builtins get their arity.
//! 6. **Types.** Subscripts are integers; guards, `where` clauses and the
//!    first argument of `select` are booleans; op bodies and reduction and
//!    normaliser bodies are numbers; every node's type is the one its
//!    children give it. Initialiser arguments read no tensor and use no index.
//! 7. **Scans.** A scan's reads of itself use its result slots unchanged,
//!    except on the scan axis, where the subscript is `slot - 1`.
//! 8. **Kinds.** Each op's `kind` is what [`super::classify`] derives.
//! 9. **Trees.** Each expression node has at most one parent (bodies are
//!    trees, so passes can rewrite them in place).
//!
//! A failure is a compiler bug, not a user error, and says so.

use super::text::infer_ty;
use super::*;

/// A violated invariant: which one, and where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("IR verifier (compiler bug): {0}")]
pub struct VerifyError(pub String);

/// Proof that a module passed the verifier: later stages take this, not a
/// bare module, so unverified IR cannot reach a back end.
#[derive(Debug, Clone)]
pub struct Verified<'m>(&'m Module);

impl<'m> Verified<'m> {
    pub fn module(&self) -> &'m Module {
        self.0
    }
}

pub fn verify(m: &Module) -> Result<Verified<'_>, VerifyError> {
    let err = |s: String| Err(VerifyError(s));
    let nv = m.values.len();
    let ne = m.exprs.len();
    if m.output.0 as usize >= nv {
        return err(format!("output {} is not a value", m.output));
    }
    for i in &m.inputs {
        if i.0 as usize >= nv || m.value(*i).def != ValueDef::Input {
            return err(format!("input {i} is not an input value"));
        }
    }
    let mut parents = vec![0u32; ne];
    for (k, e) in m.exprs.iter().enumerate() {
        for c in m.children(ExprId(k as u32)) {
            if c.0 as usize >= ne {
                return err(format!("expression {k} has child {} out of range", c.0));
            }
            parents[c.0 as usize] += 1;
        }
        if let Node::Read(v, _) = &e.node {
            if v.0 as usize >= nv {
                return err(format!("expression {k} reads {v}, which does not exist"));
            }
        }
    }
    if let Some(k) = parents.iter().position(|p| *p > 1) {
        return err(format!("expression {k} has {} parents", parents[k]));
    }
    // Which op defines each value, for program order.
    for (k, v) in m.values.iter().enumerate() {
        match &v.def {
            ValueDef::Op(o) => {
                if o.0 as usize >= m.ops.len() || m.op(*o).result.0 as usize != k {
                    return err(format!(
                        "value %{k} claims op {} which does not define it",
                        o.0
                    ));
                }
                let op = m.op(*o);
                let want: Vec<&DimExpr> = op.slots[..op.rank].iter().map(|s| &s.extent).collect();
                if v.shape.iter().collect::<Vec<_>>() != want {
                    return err(format!(
                        "value %{k}'s shape does not match its op's result slots"
                    ));
                }
            }
            ValueDef::Param(init) => {
                let args = match init {
                    Init::Normal { mean, std } => vec![*mean, *std],
                    Init::Uniform { lo, hi } => vec![*lo, *hi],
                    Init::Constant(c) => vec![*c],
                };
                for a in args {
                    if a.0 as usize >= ne {
                        return err(format!("initialiser of %{k} is out of range"));
                    }
                    let mut bad = false;
                    walk(m, a, &mut |n| {
                        bad |= matches!(n, Node::Read(..) | Node::Index(_))
                    });
                    if bad {
                        return err(format!("initialiser of %{k} reads a tensor or an index"));
                    }
                }
            }
            ValueDef::Input => {}
        }
    }
    for (o, op) in m.ops.iter().enumerate() {
        let r = op.result;
        if r.0 as usize >= nv || m.value(r).def != ValueDef::Op(OpId(o as u32)) {
            return err(format!("op {o} does not define its result {r}"));
        }
        let name = &m.value(r).name;
        let ctx = |s: String| VerifyError(format!("op {r} ({name}): {s}"));
        if op.body.0 as usize >= ne {
            return Err(ctx("body out of range".into()));
        }
        if op.rank > op.slots.len() {
            return Err(ctx("rank exceeds the number of slots".into()));
        }
        let mut bound = vec![false; op.slots.len()];
        (0..op.rank).for_each(|s| bound[s] = true);
        let mut binders = vec![0u32; op.slots.len()];
        check(m, op, o, op.body, &mut bound, &mut binders).map_err(ctx)?;
        if let Some(s) = (op.rank..op.slots.len()).find(|s| binders[*s] != 1) {
            return Err(ctx(format!("slot {s} is bound {} times", binders[s])));
        }
        if m.expr(op.body).ty == Ty::Bool {
            return Err(ctx("the body is a boolean".into()));
        }
        let kind = classify(m, op);
        if kind != op.kind {
            return Err(ctx(format!(
                "kind is {} but the body is a {}",
                op.kind.name(),
                kind.name()
            )));
        }
        if let Some(a) = op.recurrence {
            if a >= op.rank {
                return Err(ctx(format!("scan axis {a} is not a result axis")));
            }
        }
    }
    Ok(Verified(m))
}

fn walk(m: &Module, e: ExprId, f: &mut impl FnMut(&Node)) {
    f(&m.expr(e).node);
    for c in m.children(e) {
        walk(m, c, f);
    }
}

fn check(
    m: &Module,
    op: &Op,
    o: usize,
    e: ExprId,
    bound: &mut Vec<bool>,
    binders: &mut Vec<u32>,
) -> Result<(), String> {
    let n = m.expr(e);
    let ty = |x: ExprId| m.expr(x).ty;
    let slot_ok = |s: Slot, bound: &Vec<bool>| (s as usize) < bound.len() && bound[s as usize];
    match &n.node {
        Node::Const(_) => {}
        Node::Size(_) => {}
        Node::Index(s) => {
            if !slot_ok(*s, bound) {
                return Err(format!("index slot {s} is used out of scope"));
            }
        }
        Node::Read(v, subs) => {
            let val = m.value(*v);
            if subs.len() != val.shape.len() {
                return Err(format!(
                    "read of {v} has {} subscripts for {} axes",
                    subs.len(),
                    val.shape.len()
                ));
            }
            let defined_before = match val.def {
                ValueDef::Op(d) => (d.0 as usize) < o,
                _ => true,
            };
            if *v == op.result {
                let Some(axis) = op.recurrence else {
                    return Err("reads its own result but is not a scan".into());
                };
                for (k, s) in subs.iter().enumerate() {
                    let okay = if k == axis {
                        match &m.expr(*s).node {
                            Node::Binary(BinOp::Sub, a, b) => {
                                m.expr(*a).node == Node::Index(k as Slot)
                                    && matches!(m.expr(*b).node, Node::Const(c) if c == 1.0)
                            }
                            _ => false,
                        }
                    } else {
                        m.expr(*s).node == Node::Index(k as Slot)
                    };
                    if !okay {
                        return Err(format!(
                            "scan reads itself at subscript {k} other than the previous step"
                        ));
                    }
                }
            } else if !defined_before {
                return Err(format!("reads {v} before it is defined"));
            }
            for s in subs {
                if ty(*s) != Ty::Int {
                    return Err(format!("subscript of {v} is not an integer"));
                }
            }
        }
        Node::Call(f, args) => {
            let (_, arity) = Builtin::lookup(f.name()).ok_or("unknown builtin")?;
            if args.len() != arity {
                return Err(format!("`{}` has {} arguments", f.name(), args.len()));
            }
            if *f == Builtin::Select && ty(args[0]) != Ty::Bool {
                return Err("`select` condition is not a boolean".into());
            }
        }
        Node::Guard(p, _) => {
            if ty(*p) != Ty::Bool {
                return Err("guard predicate is not a boolean".into());
            }
        }
        Node::Reduce {
            slots, guard, body, ..
        } => {
            for s in slots {
                if (*s as usize) < op.rank || *s as usize >= bound.len() || bound[*s as usize] {
                    return Err(format!(
                        "reduction binds slot {s}, which is a result slot or already bound"
                    ));
                }
                binders[*s as usize] += 1;
                bound[*s as usize] = true;
            }
            if let Some(g) = guard {
                if ty(*g) != Ty::Bool {
                    return Err("reduction guard is not a boolean".into());
                }
                check(m, op, o, *g, bound, binders)?;
            }
            if ty(*body) == Ty::Bool {
                return Err("reduction body is a boolean".into());
            }
            check(m, op, o, *body, bound, binders)?;
            for s in slots {
                bound[*s as usize] = false;
            }
            return type_matches(m, e);
        }
        Node::Normalize {
            slot, guard, body, ..
        } => {
            if !slot_ok(*slot, bound) {
                return Err(format!(
                    "normaliser over slot {slot}, which is not in scope"
                ));
            }
            if let Some(g) = guard {
                if ty(*g) != Ty::Bool {
                    return Err("normaliser mask is not a boolean".into());
                }
            }
            if ty(*body) == Ty::Bool {
                return Err("normaliser body is a boolean".into());
            }
        }
        Node::Unary(..) | Node::Binary(..) => {}
    }
    for c in m.children(e) {
        check(m, op, o, c, bound, binders)?;
    }
    type_matches(m, e)
}

fn type_matches(m: &Module, e: ExprId) -> Result<(), String> {
    let n = m.expr(e);
    if matches!(n.node, Node::Const(_)) {
        return Ok(());
    }
    let want = infer_ty(m, &n.node);
    if want != n.ty {
        return Err(format!(
            "expression {} has type {} but its operands give {}",
            e.0, n.ty, want
        ));
    }
    Ok(())
}
