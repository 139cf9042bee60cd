//! Conversion of blocks, statements and expressions into the typed program.

use super::range::{Lin, Prover, Var};
use super::{names_in, similar, CheckOptions, Globals, Reported, R};
use crate::ast::{
    self, Arg, BinOp, BlockKind, Expr, ExprKind, FnDef, Ident, IndexDecl, StmtKind, UnOp,
};
use crate::diag::Diagnostic;
use crate::ops::{scalar_binop, scalar_builtin};
use crate::span::Span;
use crate::typed::*;
use std::collections::{BTreeSet, HashMap};

#[derive(Clone, Debug)]
enum Entity {
    Config(f64, bool),
    Dim(DimExpr),
    Tensor(TensorId),
    /// A definition that failed to check: uses of it report nothing more.
    Poisoned,
}

struct Scope {
    prefix: String,
    names: HashMap<String, (Entity, Span)>,
}

struct SlotBuild {
    name: String,
    span: Span,
    annotated: Option<DimExpr>,
    /// Extents of axes this index subscripts directly (`x[i]`): must agree.
    constraints: Vec<(DimExpr, Span, String)>,
    /// Extents of axes it subscripts with an offset (`x[l - t]`): used only
    /// when nothing else fixes the extent; the range proof checks the read.
    weak: Vec<DimExpr>,
    /// Indices it is compared with (`j <= i`): the last resort for its extent,
    /// as in a prefix sum `c[i] = sum(j) x[j] where j <= i`.
    partners: Vec<Slot>,
}

struct DefCtx {
    slots: Vec<SlotBuild>,
    visible: Vec<(String, Slot)>,
    self_name: Option<String>,
    self_id: TensorId,
    rank: usize,
    recurrence: Option<usize>,
    allow_reads: bool,
    inline_depth: u32,
}

impl DefCtx {
    fn scalar() -> DefCtx {
        DefCtx {
            slots: Vec::new(),
            visible: Vec::new(),
            self_name: None,
            self_id: u32::MAX,
            rank: 0,
            recurrence: None,
            allow_reads: false,
            inline_depth: 0,
        }
    }

    fn lookup(&self, name: &str) -> Option<Slot> {
        self.visible
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, s)| *s)
    }

    fn bind(&mut self, name: &Ident, annotated: Option<DimExpr>) -> Slot {
        let slot = self.slots.len() as Slot;
        self.slots.push(SlotBuild {
            name: name.name.clone(),
            span: name.span,
            annotated,
            constraints: Vec::new(),
            weak: Vec::new(),
            partners: Vec::new(),
        });
        self.visible.push((name.name.clone(), slot));
        slot
    }
}

const NORMALISERS: &[(&str, NormOp)] = &[
    ("softmax", NormOp::Softmax),
    ("rms_norm", NormOp::RmsNorm),
    ("layer_norm", NormOp::LayerNorm),
];
const REDUCTIONS: &[(&str, RedOp)] = &[
    ("sum", RedOp::Sum),
    ("mean", RedOp::Mean),
    ("max", RedOp::Max),
    ("min", RedOp::Min),
    ("prod", RedOp::Prod),
];

fn te(kind: TExprKind, ty: Ty, span: Span) -> TExpr {
    TExpr { kind, ty, span }
}

fn mk(kind: ExprKind, span: Span) -> Expr {
    Expr::new(kind, span)
}

fn name_expr(name: &str, span: Span) -> Expr {
    mk(
        ExprKind::Name(Ident {
            name: name.to_string(),
            span,
        }),
        span,
    )
}

pub(crate) struct Builder<'g> {
    g: &'g Globals,
    opts: &'g CheckOptions,
    pub diags: Vec<Diagnostic>,
    pub used_overrides: BTreeSet<String>,
    prog: Program,
    axis_names: Vec<Option<Vec<String>>>,
    norm_ids: u32,
    call_stack: Vec<String>,
    fresh: u32,
    /// Set after a statement failed to parse: its name is unknown, so
    /// "unknown name" errors in the rest of the block would be noise.
    after_syntax_error: bool,
}

impl<'g> Builder<'g> {
    pub fn new(g: &'g Globals, opts: &'g CheckOptions, name: String, span: Span) -> Builder<'g> {
        Builder {
            g,
            opts,
            diags: Vec::new(),
            used_overrides: BTreeSet::new(),
            prog: Program {
                name,
                dims: Vec::new(),
                configs: Vec::new(),
                tensors: Vec::new(),
                inputs: Vec::new(),
                output: 0,
                span,
            },
            axis_names: Vec::new(),
            norm_ids: 0,
            call_stack: Vec::new(),
            fresh: 0,
            after_syntax_error: false,
        }
    }

    fn err(&mut self, d: Diagnostic) -> Reported {
        self.diags.push(d);
        Reported
    }

    fn push_tensor(&mut self, t: Tensor, axes: Option<Vec<String>>) -> TensorId {
        self.prog.tensors.push(t);
        self.axis_names.push(axes);
        (self.prog.tensors.len() - 1) as TensorId
    }

    fn declare(&mut self, sc: &mut Scope, name: &Ident, e: Entity) {
        if let Some((_, prev)) = sc.names.get(&name.name) {
            let prev = *prev;
            self.diags.push(
                Diagnostic::error(format!("`{}` is defined twice", name.name), name.span)
                    .with_label("second definition")
                    .with_secondary(prev, "first defined here")
                    .with_help(
                        "definitions are single-assignment; give the new tensor another name",
                    ),
            );
            return;
        }
        sc.names.insert(name.name.clone(), (e, name.span));
    }

    /// Checks a mixer or filter as a root program. Its signature dims are free.
    pub fn root(&mut self, b: &ast::Block) -> Option<Program> {
        let mut sc = Scope {
            prefix: String::new(),
            names: HashMap::new(),
        };
        let mut ok = true;
        for p in &b.params {
            match &p.shape {
                None => {
                    self.prog.dims.push(DimDecl {
                        name: p.name.name.clone(),
                        value: None,
                        span: p.name.span,
                    });
                    self.declare(
                        &mut sc,
                        &p.name,
                        Entity::Dim(DimExpr::Sym(p.name.name.clone())),
                    );
                }
                Some(shape) => {
                    let mut dims = Vec::new();
                    let mut axes = Some(Vec::new());
                    for d in &shape.dims {
                        match &d.kind {
                            ExprKind::Name(n)
                                if !sc.names.contains_key(&n.name)
                                    && !self.g.configs.contains_key(&n.name) =>
                            {
                                self.prog.dims.push(DimDecl {
                                    name: n.name.clone(),
                                    value: None,
                                    span: n.span,
                                });
                                self.declare(&mut sc, n, Entity::Dim(DimExpr::Sym(n.name.clone())));
                                dims.push(DimExpr::Sym(n.name.clone()));
                                if let Some(a) = &mut axes {
                                    a.push(n.name.to_lowercase());
                                }
                            }
                            _ => match self.dim_expr(&sc, d) {
                                Ok(x) => {
                                    if let (Some(a), ExprKind::Name(n)) = (&mut axes, &d.kind) {
                                        a.push(n.name.to_lowercase());
                                    } else {
                                        axes = None;
                                    }
                                    dims.push(x)
                                }
                                Err(_) => ok = false,
                            },
                        }
                    }
                    let id = self.push_tensor(
                        Tensor {
                            name: p.name.name.clone(),
                            shape: dims,
                            kind: TensorKind::Input,
                            span: p.name.span,
                        },
                        axes,
                    );
                    self.prog.inputs.push(id);
                    self.declare(&mut sc, &p.name, Entity::Tensor(id));
                }
            }
        }
        self.call_stack.push(b.name.name.clone());
        let out = self.block_body(b, &mut sc);
        self.call_stack.pop();
        let out = out?;
        if let Some(ret) = &b.ret {
            if !self.check_ret_shape(&sc, b, ret, out) {
                ok = false;
            }
        }
        self.prog.output = out;
        (ok && !self.diags.iter().any(|d| d.is_error())).then(|| self.prog.clone())
    }

    fn check_ret_shape(
        &mut self,
        sc: &Scope,
        b: &ast::Block,
        ret: &ast::Shape,
        out: TensorId,
    ) -> bool {
        let mut want = Vec::new();
        for d in &ret.dims {
            match self.dim_expr(sc, d) {
                Ok(x) => want.push(x),
                Err(_) => return false,
            }
        }
        let have = self.prog.tensors[out as usize].shape.clone();
        if have.len() != want.len() || have.iter().zip(&want).any(|(a, b)| !dims_equal(a, b)) {
            let name = self.prog.tensors[out as usize].name.clone();
            self.diags.push(
                Diagnostic::error(
                    format!(
                        "{} `{}` returns `{name}` of shape {}, but its signature says {}",
                        kind_word(b.kind),
                        b.name.name,
                        shape_string(&have),
                        shape_string(&want)
                    ),
                    ret.span,
                )
                .with_label(format!("declared {}", shape_string(&want)))
                .with_secondary(
                    self.prog.tensors[out as usize].span,
                    format!("`{name}` has shape {}", shape_string(&have)),
                ),
            );
            return false;
        }
        true
    }

    /// Checks a block's statements in `sc`; returns the returned tensor.
    fn block_body(&mut self, b: &ast::Block, sc: &mut Scope) -> Option<TensorId> {
        let saved = std::mem::replace(&mut self.after_syntax_error, false);
        let r = self.block_statements(b, sc);
        self.after_syntax_error = saved;
        r
    }

    fn block_statements(&mut self, b: &ast::Block, sc: &mut Scope) -> Option<TensorId> {
        let mut ret: Option<TensorId> = None;
        let mut failed = false;
        for st in &b.stmts {
            if ret.is_some() {
                if matches!(st.kind, StmtKind::Error) {
                    break; // already reported by the parser
                }
                self.diags.push(
                    Diagnostic::error("statement after `return`", st.span)
                        .with_help("`return` must be the last statement of a block"),
                );
                break;
            }
            match &st.kind {
                StmtKind::Config(entries) => {
                    for (n, e) in entries {
                        let qualified = format!("{}{}", sc.prefix, n.name);
                        let ov = self
                            .opts
                            .overrides
                            .get(&qualified)
                            .map(|v| (qualified.clone(), *v))
                            .or_else(|| {
                                self.opts
                                    .overrides
                                    .get(&n.name)
                                    .map(|v| (n.name.clone(), *v))
                            });
                        let v = match self.const_value(sc, e) {
                            Ok(v) => v,
                            Err(_) => {
                                failed = true;
                                continue;
                            }
                        };
                        let v = match ov {
                            Some((key, o)) => {
                                self.used_overrides.insert(key);
                                (o, v.1 && o.fract() == 0.0)
                            }
                            None => v,
                        };
                        self.prog.configs.push(ConfigValue {
                            name: qualified,
                            value: v.0,
                            is_int: v.1,
                        });
                        self.declare(sc, n, Entity::Config(v.0, v.1));
                    }
                }
                StmtKind::Dim(n, e) => match self.dim_expr(sc, e) {
                    Ok(DimExpr::Const(v)) => self.declare(sc, n, Entity::Dim(DimExpr::Const(v))),
                    Ok(d) => {
                        let qualified = format!("{}{}", sc.prefix, n.name);
                        self.prog.dims.push(DimDecl {
                            name: qualified.clone(),
                            value: Some(d),
                            span: st.span,
                        });
                        self.declare(sc, n, Entity::Dim(DimExpr::Sym(qualified)));
                    }
                    Err(_) => {
                        failed = true;
                        self.declare(sc, n, Entity::Poisoned)
                    }
                },
                StmtKind::Param { name, shape, init } => {
                    let mut dims = Vec::new();
                    let mut axes = Some(Vec::new());
                    let mut bad = false;
                    for d in &shape.dims {
                        match self.dim_expr(sc, d) {
                            Ok(x) => dims.push(x),
                            Err(_) => bad = true,
                        }
                        match (&mut axes, &d.kind) {
                            (Some(a), ExprKind::Name(n)) => a.push(n.name.to_lowercase()),
                            _ => axes = None,
                        }
                    }
                    let init = self.init_expr(sc, init);
                    match (bad, init) {
                        (false, Ok(init)) => {
                            let id = self.push_tensor(
                                Tensor {
                                    name: format!("{}{}", sc.prefix, name.name),
                                    shape: dims,
                                    kind: TensorKind::Param(init),
                                    span: name.span,
                                },
                                axes,
                            );
                            self.declare(sc, name, Entity::Tensor(id));
                        }
                        _ => {
                            failed = true;
                            self.declare(sc, name, Entity::Poisoned)
                        }
                    }
                }
                StmtKind::Def {
                    name,
                    indices,
                    value,
                } => {
                    let e = match self.def_stmt(sc, name, indices.as_deref(), value, st.span) {
                        Ok(id) => Entity::Tensor(id),
                        Err(_) => {
                            failed = true;
                            Entity::Poisoned
                        }
                    };
                    self.declare(sc, name, e);
                }
                StmtKind::Return(e) => match &e.kind {
                    ExprKind::Name(n) => match sc.names.get(&n.name) {
                        Some((Entity::Tensor(t), _)) => ret = Some(*t),
                        Some((Entity::Poisoned, _)) => return None,
                        Some(_) => {
                            self.diags.push(
                                Diagnostic::error(format!("`{}` is not a tensor", n.name), e.span)
                                    .with_help("a block returns one of its tensors"),
                            );
                            return None;
                        }
                        None => {
                            let mut d = Diagnostic::error(
                                format!("cannot return unknown tensor `{}`", n.name),
                                e.span,
                            )
                            .with_label("not found in this block");
                            if let Some(s) = similar(&n.name, sc.names.keys().map(|s| s.as_str())) {
                                d = d.with_help(format!(
                                    "a tensor with a similar name exists: `{s}`"
                                ));
                            }
                            self.diags.push(d);
                            return None;
                        }
                    },
                    _ => {
                        self.diags.push(
                            Diagnostic::error("`return` takes the name of a tensor", e.span)
                                .with_help(
                                    "define the result first (`y[b, l, d] = ...`), then `return y`",
                                ),
                        );
                        return None;
                    }
                },
                StmtKind::Error => {
                    failed = true;
                    self.after_syntax_error = true;
                }
            }
        }
        if ret.is_none() && !failed {
            self.diags.push(
                Diagnostic::error(
                    format!("{} `{}` has no `return`", kind_word(b.kind), b.name.name),
                    b.name.span,
                )
                .with_help("end the block with `return NAME`"),
            );
        }
        if failed {
            return None;
        }
        ret
    }

    fn def_stmt(
        &mut self,
        sc: &mut Scope,
        name: &Ident,
        indices: Option<&[IndexDecl]>,
        value: &Expr,
        span: Span,
    ) -> R<TensorId> {
        // A whole-statement call of a filter or mixer instantiates it.
        if let ExprKind::Call {
            func,
            args,
            body: None,
        } = &value.kind
        {
            if let Some(callee) = self.g.blocks.get(&func.name) {
                if indices.is_some() {
                    return Err(self.err(
                        Diagnostic::error(format!("`{}` cannot be indexed here", func.name), span)
                            .with_help(format!(
                                "bind the whole result: `{} = {}(...)`",
                                name.name, func.name
                            )),
                    ));
                }
                return self.instantiate(sc, name, callee, args, value.span);
            }
        }
        if let Some(prev) = sc.names.get(&name.name) {
            let prev = prev.1;
            return Err(self.err(
                Diagnostic::error(format!("`{}` is defined twice", name.name), name.span)
                    .with_label("second definition")
                    .with_secondary(prev, "first defined here")
                    .with_help(
                        "definitions are single-assignment; give the new tensor another name",
                    ),
            ));
        }
        let (decls, value) = match indices {
            Some(ix) => (ix.to_vec(), value.clone()),
            None => self.whole_tensor(sc, name, value)?,
        };
        let self_id = self.push_tensor(
            Tensor {
                name: format!("{}{}", sc.prefix, name.name),
                shape: Vec::new(),
                kind: TensorKind::Input,
                span: name.span,
            },
            Some(decls.iter().map(|d| d.name.name.clone()).collect()),
        );
        let mut dc = DefCtx {
            slots: Vec::new(),
            visible: Vec::new(),
            self_name: Some(name.name.clone()),
            self_id,
            rank: decls.len(),
            recurrence: None,
            allow_reads: true,
            inline_depth: 0,
        };
        let mut bad = false;
        for d in &decls {
            if dc.lookup(&d.name.name).is_some() {
                bad = true;
                self.diags.push(
                    Diagnostic::error(
                        format!(
                            "index `{}` appears twice on the left-hand side",
                            d.name.name
                        ),
                        d.name.span,
                    )
                    .with_help("each axis needs its own index name"),
                );
            }
            let ann = match &d.extent {
                Some(e) => match self.dim_expr(sc, e) {
                    Ok(x) => Some(x),
                    Err(_) => {
                        bad = true;
                        None
                    }
                },
                None => None,
            };
            dc.bind(&d.name, ann);
        }
        let body = self.expr(sc, &mut dc, &value);
        let body = body?;
        if bad {
            return Err(Reported);
        }
        if body.ty == Ty::Bool {
            return Err(self.err(
                Diagnostic::error(format!("`{}` is defined as a boolean", name.name), value.span)
                    .with_label("this is a condition, not a number")
                    .with_help("tensors hold numbers: use `select(cond, 1, 0)`, or declare a `mask` for predicates"),
            ));
        }
        let slots = self.resolve_extents(&dc)?;
        self.prove_ranges(&dc, &slots, &body)?;
        let shape = slots[..dc.rank].iter().map(|s| s.extent.clone()).collect();
        let t = &mut self.prog.tensors[self_id as usize];
        t.shape = shape;
        t.kind = TensorKind::Def(Def {
            slots,
            rank: dc.rank,
            body,
            recurrence: dc.recurrence,
        });
        Ok(self_id)
    }

    /// Rewrites `p = softmax(s, over: j) where m(i, j)` into index form:
    /// bare tensors get their axis names as subscripts, and the left-hand
    /// side gets every axis name that no reduction binds, in order of first
    /// appearance.
    fn whole_tensor(
        &mut self,
        sc: &Scope,
        name: &Ident,
        value: &Expr,
    ) -> R<(Vec<IndexDecl>, Expr)> {
        let mut axes: Vec<String> = Vec::new();
        let mut bound = BTreeSet::new();
        let v = self.rewrite_whole(sc, value, &mut axes, &mut bound)?;
        let decls = axes
            .into_iter()
            .filter(|a| !bound.contains(a))
            .map(|a| IndexDecl {
                name: Ident {
                    name: a,
                    span: name.span,
                },
                extent: None,
            })
            .collect();
        Ok((decls, v))
    }

    fn tensor_axes(&mut self, sc: &Scope, n: &Ident) -> R<Option<(TensorId, Vec<String>)>> {
        match sc.names.get(&n.name) {
            Some((Entity::Tensor(t), _)) => match &self.axis_names[*t as usize] {
                Some(a) => Ok(Some((*t, a.clone()))),
                None => Err(self.err(
                    Diagnostic::error(
                        format!(
                            "`{}` has unnamed axes and cannot be used without indices",
                            n.name
                        ),
                        n.span,
                    )
                    .with_help(format!("write it in index form, `{}[...]`", n.name)),
                )),
            },
            Some((Entity::Poisoned, _)) => Err(Reported),
            _ => Ok(None),
        }
    }

    fn rewrite_whole(
        &mut self,
        sc: &Scope,
        e: &Expr,
        axes: &mut Vec<String>,
        bound: &mut BTreeSet<String>,
    ) -> R<Expr> {
        let push_axes = |axes: &mut Vec<String>, a: &[String]| {
            for x in a {
                if !axes.contains(x) {
                    axes.push(x.clone());
                }
            }
        };
        Ok(match &e.kind {
            ExprKind::Name(n) => match self.tensor_axes(sc, n)? {
                Some((_, a)) => {
                    push_axes(axes, &a);
                    let subs = a.iter().map(|x| name_expr(x, n.span)).collect();
                    mk(ExprKind::Index(Box::new(e.clone()), subs), e.span)
                }
                None => e.clone(),
            },
            ExprKind::Call {
                func,
                args,
                body: None,
            } if func.name == "conv" => {
                let u = args.first().and_then(|a| match &a.value.kind {
                    ExprKind::Name(n) => Some(n.clone()),
                    _ => None,
                });
                match u {
                    Some(u) => match self.tensor_axes(sc, &u)? {
                        Some((_, a)) => {
                            push_axes(axes, &a);
                            let subs = a.iter().map(|x| name_expr(x, e.span)).collect();
                            mk(ExprKind::Index(Box::new(e.clone()), subs), e.span)
                        }
                        None => e.clone(),
                    },
                    None => e.clone(),
                }
            }
            ExprKind::Index(b, subs) => {
                let mut s = BTreeSet::new();
                subs.iter().for_each(|x| names_in(x, &mut s));
                for n in s {
                    if !sc.names.contains_key(&n)
                        && !self.g.configs.contains_key(&n)
                        && n != "pi"
                        && !axes.contains(&n)
                    {
                        axes.push(n);
                    }
                }
                mk(ExprKind::Index(b.clone(), subs.clone()), e.span)
            }
            ExprKind::Call { func, args, body } => {
                let is_red = body.is_some();
                if is_red {
                    for a in args {
                        if let Some(n) = &a.name {
                            bound.insert(n.name.clone());
                        } else if let ExprKind::Name(n) = &a.value.kind {
                            bound.insert(n.name.clone());
                        }
                    }
                }
                let mut new_args = Vec::new();
                for a in args {
                    let keep = is_red || a.name.is_some();
                    new_args.push(Arg {
                        name: a.name.clone(),
                        value: if keep {
                            a.value.clone()
                        } else {
                            self.rewrite_whole(sc, &a.value, axes, bound)?
                        },
                    });
                }
                let body = match body {
                    Some(b) => Some(Box::new(self.rewrite_whole(sc, b, axes, bound)?)),
                    None => None,
                };
                mk(
                    ExprKind::Call {
                        func: func.clone(),
                        args: new_args,
                        body,
                    },
                    e.span,
                )
            }
            ExprKind::Unary(op, a) => mk(
                ExprKind::Unary(*op, Box::new(self.rewrite_whole(sc, a, axes, bound)?)),
                e.span,
            ),
            ExprKind::Binary(op, a, b) => {
                let a = self.rewrite_whole(sc, a, axes, bound)?;
                let b = self.rewrite_whole(sc, b, axes, bound)?;
                mk(ExprKind::Binary(*op, Box::new(a), Box::new(b)), e.span)
            }
            ExprKind::Where(a, p) => mk(
                ExprKind::Where(Box::new(self.rewrite_whole(sc, a, axes, bound)?), p.clone()),
                e.span,
            ),
            _ => e.clone(),
        })
    }

    fn instantiate(
        &mut self,
        sc: &mut Scope,
        lhs: &Ident,
        callee: &ast::Block,
        args: &[Arg],
        span: Span,
    ) -> R<TensorId> {
        if self.call_stack.contains(&callee.name.name) {
            return Err(self.err(
                Diagnostic::error(format!("`{}` calls itself", callee.name.name), span)
                    .with_label("recursive call")
                    .with_note(format!(
                        "call chain: {} -> {}",
                        self.call_stack.join(" -> "),
                        callee.name.name
                    )),
            ));
        }
        if args.len() != callee.params.len() {
            return Err(self.err(
                Diagnostic::error(
                    format!(
                        "{} `{}` takes {} argument{} but {} were given",
                        kind_word(callee.kind),
                        callee.name.name,
                        callee.params.len(),
                        if callee.params.len() == 1 { "" } else { "s" },
                        args.len()
                    ),
                    span,
                )
                .with_secondary(callee.name.span, "defined here"),
            ));
        }
        if let Some(prev) = sc.names.get(&lhs.name) {
            let prev = prev.1;
            return Err(self.err(
                Diagnostic::error(format!("`{}` is defined twice", lhs.name), lhs.span)
                    .with_label("second definition")
                    .with_secondary(prev, "first defined here"),
            ));
        }
        let mut inner = Scope {
            prefix: format!("{}{}.", sc.prefix, lhs.name),
            names: HashMap::new(),
        };
        for (formal, arg) in callee.params.iter().zip(args) {
            if let Some(n) = &arg.name {
                return Err(self.err(Diagnostic::error(
                    "named arguments are not allowed here",
                    n.span,
                )));
            }
            match &formal.shape {
                None => {
                    let d = self.dim_expr(sc, &arg.value)?;
                    inner
                        .names
                        .insert(formal.name.name.clone(), (Entity::Dim(d), formal.name.span));
                }
                Some(shape) => {
                    let t = match &arg.value.kind {
                        ExprKind::Name(n) => match sc.names.get(&n.name) {
                            Some((Entity::Tensor(t), _)) => *t,
                            Some((Entity::Poisoned, _)) => return Err(Reported),
                            _ => {
                                return Err(self.err(
                                    Diagnostic::error(
                                        format!("`{}` is not a tensor", n.name),
                                        arg.value.span,
                                    )
                                    .with_label(format!(
                                        "`{}` expects a tensor of shape [{}]",
                                        callee.name.name,
                                        shape_text(shape)
                                    )),
                                ))
                            }
                        },
                        _ => {
                            return Err(self.err(
                                Diagnostic::error("pass a tensor by name", arg.value.span)
                                    .with_help("define the argument first, then pass its name"),
                            ))
                        }
                    };
                    let actual = self.prog.tensors[t as usize].shape.clone();
                    // Same rank, and every formal dim agrees with the actual
                    // one (a formal name seen first binds it).
                    let mut mismatch = actual.len() != shape.dims.len();
                    for (fd, ad) in shape.dims.iter().zip(&actual) {
                        if mismatch {
                            break;
                        }
                        mismatch = match &fd.kind {
                            ExprKind::Name(n) => match inner.names.get(&n.name) {
                                Some((Entity::Dim(d), _)) => !dims_equal(d, ad),
                                Some(_) => true,
                                None => {
                                    inner
                                        .names
                                        .insert(n.name.clone(), (Entity::Dim(ad.clone()), n.span));
                                    false
                                }
                            },
                            ExprKind::Int(v) => !dims_equal(&DimExpr::Const(*v), ad),
                            _ => true,
                        };
                    }
                    if mismatch {
                        return Err(self.err(
                            Diagnostic::error(
                                format!(
                                    "`{}` expects a tensor of shape [{}], but `{}` has shape {}",
                                    callee.name.name,
                                    shape_text(shape),
                                    self.prog.tensors[t as usize].name,
                                    shape_string(&actual)
                                ),
                                arg.value.span,
                            )
                            .with_secondary(shape.span, "parameter declared here"),
                        ));
                    }
                    inner.names.insert(
                        formal.name.name.clone(),
                        (Entity::Tensor(t), formal.name.span),
                    );
                }
            }
        }
        self.call_stack.push(callee.name.name.clone());
        let out = self.block_body(callee, &mut inner);
        self.call_stack.pop();
        let out = out.ok_or(Reported)?;
        if let Some(ret) = &callee.ret {
            if !self.check_ret_shape(&inner, callee, ret, out) {
                return Err(Reported);
            }
        }
        Ok(out)
    }

    // ----- sizes and constants -----

    fn dim_expr(&mut self, sc: &Scope, e: &Expr) -> R<DimExpr> {
        match &e.kind {
            ExprKind::Int(v) => Ok(DimExpr::Const(*v)),
            ExprKind::Name(n) => {
                let found = sc.names.get(&n.name).map(|x| x.0.clone());
                match found {
                    Some(Entity::Dim(d)) => Ok(d),
                    Some(Entity::Config(v, true)) => Ok(DimExpr::Const(v as i64)),
                    Some(Entity::Config(_, false)) => Err(self.err(
                        Diagnostic::error(
                            format!("config `{}` is real, but sizes are integers", n.name),
                            e.span,
                        )
                        .with_help("give the config an integer value"),
                    )),
                    Some(Entity::Poisoned) => Err(Reported),
                    Some(Entity::Tensor(_)) => Err(self.err(Diagnostic::error(
                        format!("tensor `{}` used where a size is expected", n.name),
                        e.span,
                    ))),
                    None => match self.g.configs.get(&n.name) {
                        Some((v, true)) => Ok(DimExpr::Const(*v as i64)),
                        _ => {
                            let mut d =
                                Diagnostic::error(format!("unknown size `{}`", n.name), e.span)
                                    .with_label("not a dim or integer config in this block");
                            if let Some(s) = similar(&n.name, sc.names.keys().map(|s| s.as_str())) {
                                d = d.with_help(format!("did you mean `{s}`?"));
                            } else {
                                d = d.with_help(format!(
                                    "declare it: `dim {} = ...` or `config {} = ...`",
                                    n.name, n.name
                                ));
                            }
                            Err(self.err(d))
                        }
                    },
                }
            }
            ExprKind::Binary(op, a, b) => {
                let (a, b) = (self.dim_expr(sc, a), self.dim_expr(sc, b));
                let (a, b) = (a?, b?);
                let op = match op {
                    BinOp::Add => DimOp::Add,
                    BinOp::Sub => DimOp::Sub,
                    BinOp::Mul => DimOp::Mul,
                    BinOp::Div => DimOp::Div,
                    BinOp::FloorDiv => DimOp::FloorDiv,
                    BinOp::Mod => DimOp::Mod,
                    _ => {
                        return Err(self.err(
                            Diagnostic::error(
                                format!("`{}` is not allowed in a size", op.symbol()),
                                e.span,
                            )
                            .with_help("sizes use + - * / // % max min"),
                        ))
                    }
                };
                if let (DimExpr::Const(x), DimExpr::Const(y)) = (&a, &b) {
                    if let Err(m) = op.apply(*x, *y) {
                        return Err(self.err(
                            Diagnostic::error(format!("size is not an integer: {m}"), e.span)
                                .with_help(
                                    "`/` on sizes must divide exactly; use `//` to round down",
                                ),
                        ));
                    }
                }
                Ok(DimExpr::bin(op, a, b))
            }
            ExprKind::Unary(UnOp::Neg, a) => Ok(DimExpr::bin(
                DimOp::Sub,
                DimExpr::Const(0),
                self.dim_expr(sc, a)?,
            )),
            ExprKind::Call {
                func,
                args,
                body: None,
            } if (func.name == "max" || func.name == "min") && args.len() == 2 => {
                let (a, b) = (
                    self.dim_expr(sc, &args[0].value),
                    self.dim_expr(sc, &args[1].value),
                );
                let op = if func.name == "max" {
                    DimOp::Max
                } else {
                    DimOp::Min
                };
                Ok(DimExpr::bin(op, a?, b?))
            }
            ExprKind::Float(_) => Err(self.err(
                Diagnostic::error("sizes are integers", e.span).with_help("use an integer literal"),
            )),
            ExprKind::Error => Err(Reported),
            _ => Err(self.err(
                Diagnostic::error("expected a size expression", e.span)
                    .with_help("sizes are integer expressions of dims and configs, like `D / H`"),
            )),
        }
    }

    /// A config's value: a constant expression of literals, configs and
    /// constant sizes.
    fn const_value(&mut self, sc: &Scope, e: &Expr) -> R<(f64, bool)> {
        let mut dc = DefCtx::scalar();
        let t = self.expr(sc, &mut dc, e)?;
        match fold(&t) {
            Some(v) if t.ty != Ty::Bool => Ok((v, t.ty == Ty::Int)),
            _ => Err(self.err(
                Diagnostic::error("a config must be a constant number", e.span)
                    .with_help("configs may use literals, other configs and constant sizes; use `dim` for sizes derived from B, L, D"),
            )),
        }
    }

    fn scalar(&mut self, sc: &Scope, e: &Expr) -> R<TExpr> {
        let mut dc = DefCtx::scalar();
        let t = self.expr(sc, &mut dc, e)?;
        if t.ty == Ty::Bool {
            return Err(self.err(Diagnostic::error(
                "expected a number, found a condition",
                e.span,
            )));
        }
        Ok(t)
    }

    fn init_expr(&mut self, sc: &Scope, e: &Expr) -> R<Init> {
        let (func, args) = match &e.kind {
            ExprKind::Call { func, args, body: None } => (func, args.as_slice()),
            ExprKind::Name(n) => (n, &[][..]),
            _ => {
                return Err(self.err(
                    Diagnostic::error("expected an initialiser", e.span)
                        .with_help("initialisers: normal(mean, std), uniform(lo, hi), constant(v), zeros(), ones()"),
                ))
            }
        };
        let want = match func.name.as_str() {
            "normal" | "uniform" => 2,
            "constant" => 1,
            "zeros" | "ones" => 0,
            other => {
                return Err(self.err(
                    Diagnostic::error(format!("unknown initialiser `{other}`"), func.span).with_help(
                        "initialisers: normal(mean, std), uniform(lo, hi), constant(v), zeros(), ones()",
                    ),
                ))
            }
        };
        if args.len() != want {
            return Err(self.err(Diagnostic::error(
                format!(
                    "`{}` takes {want} argument{}, but {} were given",
                    func.name,
                    if want == 1 { "" } else { "s" },
                    args.len()
                ),
                e.span,
            )));
        }
        let mut vals = Vec::new();
        for a in args {
            vals.push(self.scalar(sc, &a.value));
        }
        let vals: Vec<TExpr> = vals.into_iter().collect::<R<_>>()?;
        let c = |v: f64| te(TExprKind::Const(v), Ty::Real, e.span);
        Ok(match func.name.as_str() {
            "normal" => Init::Normal {
                mean: vals[0].clone(),
                std: vals[1].clone(),
            },
            "uniform" => Init::Uniform {
                lo: vals[0].clone(),
                hi: vals[1].clone(),
            },
            "constant" => Init::Constant(vals[0].clone()),
            "zeros" => Init::Constant(c(0.0)),
            _ => Init::Constant(c(1.0)),
        })
    }

    // ----- expressions -----

    fn expr(&mut self, sc: &Scope, dc: &mut DefCtx, e: &Expr) -> R<TExpr> {
        let span = e.span;
        match &e.kind {
            ExprKind::Int(v) => Ok(te(TExprKind::Const(*v as f64), Ty::Int, span)),
            ExprKind::Float(v) => Ok(te(TExprKind::Const(*v), Ty::Real, span)),
            ExprKind::Bool(b) => Ok(te(
                TExprKind::Const(f64::from(u8::from(*b))),
                Ty::Bool,
                span,
            )),
            ExprKind::Name(n) => self.name(sc, dc, n),
            ExprKind::Index(base, subs) => self.index(sc, dc, base, subs, span),
            ExprKind::Call {
                func,
                args,
                body: Some(body),
            } => self.reduction(sc, dc, func, args, body, span),
            ExprKind::Call {
                func,
                args,
                body: None,
            } => self.call(sc, dc, func, args, span),
            ExprKind::Unary(op, a) => {
                let a = self.expr(sc, dc, a)?;
                let ty = match (op, a.ty) {
                    (UnOp::Neg, Ty::Bool) => {
                        return Err(self.err(
                            Diagnostic::error("cannot negate a condition with `-`", span)
                                .with_help("use `not`"),
                        ))
                    }
                    (UnOp::Neg, t) => t,
                    (UnOp::Not, Ty::Bool) => Ty::Bool,
                    (UnOp::Not, t) => {
                        return Err(self.err(
                            Diagnostic::error(
                                format!("`not` needs a condition, found {t}"),
                                a.span,
                            )
                            .with_help("compare it first, e.g. `x > 0`"),
                        ))
                    }
                };
                Ok(te(TExprKind::Unary(*op, Box::new(a)), ty, span))
            }
            ExprKind::Binary(op, a, b) => {
                let (a, b) = (self.expr(sc, dc, a), self.expr(sc, dc, b));
                let (a, b) = (a?, b?);
                let ty = self.binary_type(*op, &a, &b)?;
                if let (
                    TExprKind::Index(x),
                    TExprKind::Index(y),
                    BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge,
                ) = (&a.kind, &b.kind, op)
                {
                    dc.slots[*x as usize].partners.push(*y);
                    dc.slots[*y as usize].partners.push(*x);
                }
                Ok(te(
                    TExprKind::Binary(*op, Box::new(a), Box::new(b)),
                    ty,
                    span,
                ))
            }
            ExprKind::Where(a, p) => self.where_clause(sc, dc, a, p, span),
            ExprKind::Masked(a, p) => {
                // Only reached when a rewrite put a guard somewhere unusual:
                // treat it as an element guard, which has the same meaning.
                let pred = self.condition(sc, dc, p, "`where`")?;
                let body = self.expr(sc, dc, a)?;
                let ty = body.ty;
                Ok(te(
                    TExprKind::Guard {
                        pred: Box::new(pred),
                        body: Box::new(body),
                    },
                    ty,
                    span,
                ))
            }
            ExprKind::Error => Err(Reported),
        }
    }

    fn binary_type(&mut self, op: BinOp, a: &TExpr, b: &TExpr) -> R<Ty> {
        use BinOp::*;
        let num = |t: Ty| t != Ty::Bool;
        match op {
            And | Or => {
                for x in [a, b] {
                    if x.ty != Ty::Bool {
                        return Err(self.err(
                            Diagnostic::error(
                                format!(
                                    "`{}` needs conditions on both sides, found {}",
                                    op.symbol(),
                                    x.ty
                                ),
                                x.span,
                            )
                            .with_label("this is a number")
                            .with_help("compare it, e.g. `x > 0`"),
                        ));
                    }
                }
                Ok(Ty::Bool)
            }
            Eq | Ne if a.ty == Ty::Bool && b.ty == Ty::Bool => Ok(Ty::Bool),
            Eq | Ne | Lt | Le | Gt | Ge => {
                for x in [a, b] {
                    if !num(x.ty) {
                        return Err(self.err(
                            Diagnostic::error(
                                format!("cannot compare a condition with `{}`", op.symbol()),
                                x.span,
                            )
                            .with_help("combine conditions with `and`, `or`, `not`"),
                        ));
                    }
                }
                Ok(Ty::Bool)
            }
            _ => {
                for x in [a, b] {
                    if !num(x.ty) {
                        return Err(self.err(
                            Diagnostic::error(
                                format!("arithmetic `{}` on a condition", op.symbol()),
                                x.span,
                            )
                            .with_label("this is a condition")
                            .with_help("turn it into a number with `select(cond, 1, 0)`"),
                        ));
                    }
                }
                Ok(match op {
                    Div | Pow => Ty::Real,
                    _ if a.ty == Ty::Int && b.ty == Ty::Int => Ty::Int,
                    _ => Ty::Real,
                })
            }
        }
    }

    fn condition(&mut self, sc: &Scope, dc: &mut DefCtx, p: &Expr, what: &str) -> R<TExpr> {
        let t = self.expr(sc, dc, p)?;
        if t.ty != Ty::Bool {
            return Err(self.err(
                Diagnostic::error(format!("{what} needs a condition, found {}", t.ty), p.span)
                    .with_label("this is a number, not a boolean")
                    .with_help("masks are predicates such as `j <= i`; compare numbers with `<`, `==`, ..."),
            ));
        }
        Ok(t)
    }

    fn name(&mut self, sc: &Scope, dc: &mut DefCtx, n: &Ident) -> R<TExpr> {
        if let Some(s) = dc.lookup(&n.name) {
            return Ok(te(TExprKind::Index(s), Ty::Int, n.span));
        }
        let found = sc.names.get(&n.name).map(|x| x.0.clone());
        match found {
            Some(Entity::Config(v, int)) => {
                return Ok(te(
                    TExprKind::Const(v),
                    if int { Ty::Int } else { Ty::Real },
                    n.span,
                ));
            }
            Some(Entity::Dim(DimExpr::Const(v))) => {
                return Ok(te(TExprKind::Const(v as f64), Ty::Int, n.span))
            }
            Some(Entity::Dim(d)) => return Ok(te(TExprKind::Dim(d), Ty::Int, n.span)),
            Some(Entity::Poisoned) => return Err(Reported),
            Some(Entity::Tensor(t)) => {
                let hint = match &self.axis_names[t as usize] {
                    Some(a) => format!("write `{}[{}]`", n.name, a.join(", ")),
                    None => format!("write `{}[...]` with one index per axis", n.name),
                };
                return Err(self.err(
                    Diagnostic::error(
                        format!("tensor `{}` is used without indices", n.name),
                        n.span,
                    )
                    .with_label(format!(
                        "shape {}",
                        shape_string(&self.prog.tensors[t as usize].shape)
                    ))
                    .with_help(hint),
                ));
            }
            None => {}
        }
        if let Some((v, int)) = self.g.configs.get(&n.name) {
            return Ok(te(
                TExprKind::Const(*v),
                if *int { Ty::Int } else { Ty::Real },
                n.span,
            ));
        }
        if n.name == "pi" {
            return Ok(te(TExprKind::Const(std::f64::consts::PI), Ty::Real, n.span));
        }
        let what = if self.g.masks.contains_key(&n.name) {
            Some("a mask")
        } else if self.g.fns.contains_key(&n.name) {
            Some("a function")
        } else if self.g.blocks.contains_key(&n.name) {
            Some("a block")
        } else {
            None
        };
        if let Some(w) = what {
            return Err(self.err(Diagnostic::error(
                format!("`{}` is {w}; call it with arguments", n.name),
                n.span,
            )));
        }
        if self.after_syntax_error {
            return Err(Reported);
        }
        let mut d = Diagnostic::error(format!("unknown name `{}`", n.name), n.span)
            .with_label("not found in this scope");
        let candidates: Vec<String> = dc
            .visible
            .iter()
            .map(|(n, _)| n.clone())
            .chain(sc.names.keys().cloned())
            .collect();
        if let Some(s) = similar(&n.name, candidates.iter().map(|s| s.as_str())) {
            d = d.with_help(format!("did you mean `{s}`?"));
        } else if dc.allow_reads
            && n.name.len() <= 2
            && n.name.chars().all(|c| c.is_ascii_lowercase())
        {
            d = d.with_help(format!(
                "if `{0}` is an index, bind it with a reduction such as `sum({0}) ...`, or add it to the left-hand side",
                n.name
            ));
        }
        Err(self.err(d))
    }

    fn index(
        &mut self,
        sc: &Scope,
        dc: &mut DefCtx,
        base: &Expr,
        subs: &[Expr],
        span: Span,
    ) -> R<TExpr> {
        if let ExprKind::Call {
            func,
            args,
            body: None,
        } = &base.kind
        {
            if func.name == "conv" {
                let r = self.desugar_conv(sc, args, subs, base.span)?;
                return self.expr(sc, dc, &r);
            }
        }
        let n = match &base.kind {
            ExprKind::Name(n) => n,
            _ => {
                return Err(self.err(
                    Diagnostic::error("only tensors can be subscripted", base.span)
                        .with_help("define an intermediate tensor and subscript that"),
                ))
            }
        };
        if !dc.allow_reads {
            return Err(self.err(
                Diagnostic::error("tensors cannot be read here", span)
                    .with_help("configs, sizes and initialisers are constants"),
            ));
        }
        if dc.self_name.as_deref() == Some(n.name.as_str()) {
            return self.self_read(sc, dc, n, subs, span);
        }
        let t = match sc.names.get(&n.name).map(|x| x.0.clone()) {
            Some(Entity::Tensor(t)) => t,
            Some(Entity::Poisoned) => return Err(Reported),
            Some(_) => {
                return Err(self.err(Diagnostic::error(
                    format!("`{}` is not a tensor and cannot be subscripted", n.name),
                    n.span,
                )))
            }
            None if dc.lookup(&n.name).is_some() => {
                return Err(self.err(Diagnostic::error(
                    format!("`{}` is an index and cannot be subscripted", n.name),
                    n.span,
                )))
            }
            None if self.after_syntax_error => return Err(Reported),
            None => {
                let mut d = Diagnostic::error(format!("unknown tensor `{}`", n.name), n.span)
                    .with_label("not defined before this use");
                if let Some(s) = similar(&n.name, sc.names.keys().map(|s| s.as_str())) {
                    d = d.with_help(format!("did you mean `{s}`?"));
                }
                return Err(self.err(d));
            }
        };
        let shape = self.prog.tensors[t as usize].shape.clone();
        let tname = self.prog.tensors[t as usize].name.clone();
        if shape.len() != subs.len() {
            return Err(self.err(
                Diagnostic::error(
                    format!(
                        "`{tname}` has {} ax{} (shape {}), but {} subscript{} given",
                        shape.len(),
                        if shape.len() == 1 { "is" } else { "es" },
                        shape_string(&shape),
                        subs.len(),
                        if subs.len() == 1 { " is" } else { "s are" }
                    ),
                    span,
                )
                .with_secondary(self.prog.tensors[t as usize].span, "defined here"),
            ));
        }
        let mut out = Vec::new();
        let mut bad = false;
        for (p, s) in subs.iter().enumerate() {
            match self.subscript(sc, dc, s) {
                Ok(x) => {
                    if let TExprKind::Index(slot) = x.kind {
                        dc.slots[slot as usize].constraints.push((
                            shape[p].clone(),
                            s.span,
                            format!("axis {p} of `{tname}` (shape {})", shape_string(&shape)),
                        ));
                    } else if let Some(lin) = to_lin(&x) {
                        for (v, c) in &lin.terms {
                            if let (Var::Slot(slot), 1) = (v, c) {
                                dc.slots[*slot as usize].weak.push(shape[p].clone());
                            }
                        }
                    }
                    out.push(x)
                }
                Err(_) => bad = true,
            }
        }
        if bad {
            return Err(Reported);
        }
        Ok(te(
            TExprKind::Read {
                tensor: t,
                subs: out,
            },
            Ty::Real,
            span,
        ))
    }

    fn subscript(&mut self, sc: &Scope, dc: &mut DefCtx, s: &Expr) -> R<TExpr> {
        let x = self.expr(sc, dc, s)?;
        if x.ty != Ty::Int {
            let mut d = Diagnostic::error(
                format!("subscripts must be integers, found {}", x.ty),
                s.span,
            );
            let mut has_div = false;
            find_op(s, BinOp::Div, &mut has_div);
            if has_div {
                d = d.with_help("`/` is real division; use `//` for integer division");
            }
            return Err(self.err(d));
        }
        Ok(x)
    }

    fn self_read(
        &mut self,
        sc: &Scope,
        dc: &mut DefCtx,
        n: &Ident,
        subs: &[Expr],
        span: Span,
    ) -> R<TExpr> {
        let lhs: Vec<String> = dc.slots[..dc.rank].iter().map(|s| s.name.clone()).collect();
        let bad = |this: &mut Self, at: Span, why: String| {
            this.err(
                Diagnostic::error(
                    format!(
                        "recurrence `{}` may only refer to itself one step back",
                        n.name
                    ),
                    at,
                )
                .with_label(why)
                .with_help(format!(
                    "write the previous step as `{}[{}]`",
                    n.name,
                    lhs.iter()
                        .enumerate()
                        .map(|(k, x)| if k + 1 == lhs.len().min(2) {
                            format!("{x} - 1")
                        } else {
                            x.clone()
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            )
        };
        if subs.len() != lhs.len() {
            return Err(bad(
                self,
                span,
                format!(
                    "{} subscripts, but `{}` has {} axes",
                    subs.len(),
                    n.name,
                    lhs.len()
                ),
            ));
        }
        let mut axis = None;
        for (p, s) in subs.iter().enumerate() {
            let same = matches!(&s.kind, ExprKind::Name(x) if x.name == lhs[p]);
            let prev = matches!(&s.kind, ExprKind::Binary(BinOp::Sub, a, b)
                if matches!(&a.kind, ExprKind::Name(x) if x.name == lhs[p]) && matches!(b.kind, ExprKind::Int(1)));
            if prev {
                if axis.is_some() {
                    return Err(bad(self, s.span, "steps back along a second axis".into()));
                }
                axis = Some(p);
            } else if !same {
                return Err(bad(
                    self,
                    s.span,
                    format!("expected `{}` or `{} - 1` here", lhs[p], lhs[p]),
                ));
            }
        }
        let Some(axis) = axis else {
            return Err(bad(self, span, "reads the element being defined".into()));
        };
        if let Some(prev) = dc.recurrence {
            if prev != axis {
                return Err(bad(
                    self,
                    span,
                    "steps along a different axis than another self-reference".into(),
                ));
            }
        }
        dc.recurrence = Some(axis);
        let mut out = Vec::new();
        for s in subs {
            out.push(self.expr(sc, dc, s)?);
        }
        Ok(te(
            TExprKind::Read {
                tensor: dc.self_id,
                subs: out,
            },
            Ty::Real,
            span,
        ))
    }

    fn bind_reduction_indices(
        &mut self,
        sc: &Scope,
        dc: &mut DefCtx,
        func: &Ident,
        args: &[Arg],
    ) -> R<Vec<Slot>> {
        let mut slots = Vec::new();
        if args.is_empty() {
            return Err(self.err(
                Diagnostic::error(
                    format!("`{}` names no index to reduce over", func.name),
                    func.span,
                )
                .with_help(format!("write `{}(j) body`", func.name)),
            ));
        }
        for a in args {
            let (name, ann) = match (&a.name, &a.value.kind) {
                (None, ExprKind::Name(n)) => (n.clone(), None),
                (Some(n), _) => (n.clone(), Some(self.dim_expr(sc, &a.value)?)),
                _ => {
                    return Err(self.err(
                        Diagnostic::error("reduction indices must be names", a.value.span)
                            .with_help(format!(
                                "write `{0}(j) body` or `{0}(j: L) body`",
                                func.name
                            )),
                    ))
                }
            };
            if let Some(prev) = dc.lookup(&name.name) {
                let prev_span = dc.slots[prev as usize].span;
                return Err(self.err(
                    Diagnostic::error(format!("index `{}` is already bound", name.name), name.span)
                        .with_secondary(prev_span, "bound here")
                        .with_help("use a fresh name for the reduction index"),
                ));
            }
            slots.push(dc.bind(&name, ann));
        }
        Ok(slots)
    }

    fn reduction(
        &mut self,
        sc: &Scope,
        dc: &mut DefCtx,
        func: &Ident,
        args: &[Arg],
        body: &Expr,
        span: Span,
    ) -> R<TExpr> {
        let Some(op) = REDUCTIONS
            .iter()
            .find(|(n, _)| *n == func.name)
            .map(|(_, o)| *o)
        else {
            return Err(self.err(
                Diagnostic::error(format!("`{}` is not a reduction", func.name), func.span)
                    .with_label("followed by an operand")
                    .with_help("reductions are sum, mean, max, min, prod; otherwise an operator is missing between the call and what follows"),
            ));
        };
        let depth = dc.visible.len();
        let slots = self.bind_reduction_indices(sc, dc, func, args);
        let slots = match slots {
            Ok(s) => s,
            Err(r) => {
                dc.visible.truncate(depth);
                return Err(r);
            }
        };
        let (guard, inner) = match &body.kind {
            ExprKind::Masked(b, p) => (Some(self.condition(sc, dc, p, "`where`")), b.as_ref()),
            _ => (None, body),
        };
        let b = self.expr(sc, dc, inner);
        dc.visible.truncate(depth);
        let guard = match guard {
            Some(g) => Some(Box::new(g?)),
            None => None,
        };
        let b = b?;
        let ty = match (op, b.ty) {
            (_, Ty::Bool) => {
                return Err(self.err(
                    Diagnostic::error(format!("cannot {} conditions", func.name), inner.span)
                        .with_help("use `select(cond, 1, 0)` to count"),
                ))
            }
            (RedOp::Mean, _) => Ty::Real,
            (_, t) => t,
        };
        Ok(te(
            TExprKind::Reduce {
                op,
                slots,
                guard,
                body: Box::new(b),
            },
            ty,
            span,
        ))
    }

    fn call(
        &mut self,
        sc: &Scope,
        dc: &mut DefCtx,
        func: &Ident,
        args: &[Arg],
        span: Span,
    ) -> R<TExpr> {
        let fname = func.name.as_str();
        if let Some(op) = NORMALISERS
            .iter()
            .find(|(n, _)| *n == fname)
            .map(|(_, o)| *o)
        {
            return self.normaliser(sc, dc, op, func, args, span);
        }
        if let Some(a) = args.iter().find_map(|a| a.name.as_ref()) {
            return Err(self.err(Diagnostic::error(
                format!("`{fname}` takes no named argument `{}`", a.name),
                a.span,
            )));
        }
        if let Some((b, arity)) = Builtin::lookup(fname) {
            if args.len() != arity {
                let mut d = Diagnostic::error(
                    format!(
                        "`{fname}` takes {arity} argument{}, but {} {} given",
                        if arity == 1 { "" } else { "s" },
                        args.len(),
                        if args.len() == 1 { "was" } else { "were" }
                    ),
                    span,
                );
                if (fname == "max" || fname == "min") && args.len() == 1 {
                    d = d.with_help(format!(
                        "to reduce over an index, give a body: `{fname}(j) x[j]`"
                    ));
                }
                return Err(self.err(d));
            }
            let mut vals = Vec::new();
            for a in args {
                vals.push(self.expr(sc, dc, &a.value));
            }
            let vals: Vec<TExpr> = vals.into_iter().collect::<R<_>>()?;
            let ty = if b == Builtin::Select {
                if vals[0].ty != Ty::Bool {
                    return Err(self.err(
                        Diagnostic::error(
                            format!("`select` needs a condition first, found {}", vals[0].ty),
                            vals[0].span,
                        )
                        .with_help("select(cond, if_true, if_false)"),
                    ));
                }
                match (vals[1].ty, vals[2].ty) {
                    (Ty::Bool, Ty::Bool) => Ty::Bool,
                    (Ty::Bool, _) | (_, Ty::Bool) => {
                        return Err(self.err(Diagnostic::error(
                            "`select` branches must both be numbers or both be conditions",
                            span,
                        )))
                    }
                    (Ty::Int, Ty::Int) => Ty::Int,
                    _ => Ty::Real,
                }
            } else {
                for v in &vals {
                    if v.ty == Ty::Bool {
                        return Err(self.err(
                            Diagnostic::error(
                                format!("`{fname}` needs a number, found a condition"),
                                v.span,
                            )
                            .with_help("use `select(cond, 1, 0)`"),
                        ));
                    }
                }
                match b {
                    Builtin::Abs | Builtin::Min | Builtin::Max | Builtin::Relu
                        if vals.iter().all(|v| v.ty == Ty::Int) =>
                    {
                        Ty::Int
                    }
                    Builtin::Floor | Builtin::Ceil => Ty::Int,
                    _ => Ty::Real,
                }
            };
            return Ok(te(TExprKind::Call(b, vals), ty, span));
        }
        let def = self
            .g
            .masks
            .get(fname)
            .or_else(|| self.g.fns.get(fname))
            .cloned();
        if let Some(def) = def {
            return self.inline(sc, dc, &def, args, span);
        }
        let msg = if REDUCTIONS.iter().any(|(n, _)| *n == fname) {
            Some(format!("reduction `{fname}(...)` has no body"))
        } else if fname == "conv" {
            Some("`conv(...)` must be subscripted in index form".to_string())
        } else if self.g.blocks.contains_key(fname) {
            Some(format!("`{fname}` can only be called as a whole statement"))
        } else if ["normal", "uniform", "constant", "zeros", "ones"].contains(&fname) {
            Some(format!(
                "initialiser `{fname}` is only allowed after `~` in a `param`"
            ))
        } else {
            None
        };
        if let Some(m) = msg {
            let help = match fname {
                "conv" => "write `conv(u, h, over: l)[b, l, d]`, or bind it whole: `z = conv(u, h, over: l)`".to_string(),
                f if self.g.blocks.contains_key(f) => format!("bind the result: `h = {f}(...)`, then use `h[...]`"),
                f if REDUCTIONS.iter().any(|(n, _)| *n == f) => format!("write the summand after it: `{f}(j) x[j]`"),
                _ => "declare a parameter: `param w: [D] ~ normal(0, 1)`".to_string(),
            };
            return Err(self.err(Diagnostic::error(m, span).with_help(help)));
        }
        let mut d = Diagnostic::error(format!("unknown function `{fname}`"), func.span)
            .with_label("not a builtin, mask or fn");
        let names: Vec<&str> = Builtin::ALL
            .iter()
            .map(|(n, _, _)| *n)
            .chain(NORMALISERS.iter().map(|(n, _)| *n))
            .chain(self.g.masks.keys().map(|s| s.as_str()))
            .chain(self.g.fns.keys().map(|s| s.as_str()))
            .collect();
        if let Some(s) = similar(fname, names.into_iter()) {
            d = d.with_help(format!("did you mean `{s}`?"));
        } else if fname.ends_with("causal")
            || fname == "window"
            || fname == "dilated"
            || fname == "blocks"
        {
            d = d.with_help("the standard masks need `use std.masks`");
        }
        Err(self.err(d))
    }

    fn normaliser(
        &mut self,
        sc: &Scope,
        dc: &mut DefCtx,
        op: NormOp,
        func: &Ident,
        args: &[Arg],
        span: Span,
    ) -> R<TExpr> {
        let mut value = None;
        let mut over = None;
        let mut eps = 1e-5;
        for a in args {
            match a.name.as_ref().map(|n| n.name.as_str()) {
                None if value.is_none() => value = Some(&a.value),
                Some("over") => over = Some(&a.value),
                Some("eps") if op != NormOp::Softmax => {
                    let v = self.scalar(sc, &a.value)?;
                    match fold(&v) {
                        Some(x) if x >= 0.0 => eps = x,
                        _ => {
                            return Err(self.err(Diagnostic::error(
                                "`eps` must be a non-negative constant",
                                a.value.span,
                            )))
                        }
                    }
                }
                _ => {
                    return Err(self.err(
                        Diagnostic::error(
                            format!("unexpected argument to `{}`", func.name),
                            a.value.span,
                        )
                        .with_help(format!(
                            "`{}(expr, over: j{})`",
                            func.name,
                            if op == NormOp::Softmax {
                                ""
                            } else {
                                ", eps: 1e-5"
                            }
                        )),
                    ))
                }
            }
        }
        let (Some(value), Some(over)) = (value, over) else {
            return Err(self.err(
                Diagnostic::error(
                    format!("`{}` needs a value and `over: INDEX`", func.name),
                    span,
                )
                .with_help(format!("`{}(s, over: j)`", func.name)),
            ));
        };
        let slot = match &over.kind {
            ExprKind::Name(n) => match dc.lookup(&n.name) {
                Some(s) => s,
                None => {
                    return Err(self.err(
                        Diagnostic::error(
                            format!("`over: {}` names no index in scope", n.name),
                            over.span,
                        )
                        .with_help("normalise over an index of the left-hand side"),
                    ))
                }
            },
            _ => return Err(self.err(Diagnostic::error("`over:` takes an index name", over.span))),
        };
        let (guard, inner) = match &value.kind {
            ExprKind::Masked(b, p) => (
                Some(Box::new(self.condition(sc, dc, p, "`where`")?)),
                b.as_ref(),
            ),
            _ => (None, value),
        };
        let body = self.expr(sc, dc, inner)?;
        if body.ty == Ty::Bool {
            return Err(self.err(Diagnostic::error(
                format!("cannot apply `{}` to a condition", func.name),
                inner.span,
            )));
        }
        let id = self.norm_ids;
        self.norm_ids += 1;
        Ok(te(
            TExprKind::Normalize {
                op,
                slot,
                guard,
                body: Box::new(body),
                eps,
                id,
            },
            Ty::Real,
            span,
        ))
    }

    fn inline(
        &mut self,
        sc: &Scope,
        dc: &mut DefCtx,
        def: &FnDef,
        args: &[Arg],
        span: Span,
    ) -> R<TExpr> {
        let kind = if self.g.masks.contains_key(&def.name.name) {
            "mask"
        } else {
            "fn"
        };
        if args.len() != def.params.len() {
            return Err(self.err(
                Diagnostic::error(
                    format!(
                        "{kind} `{}` takes {} argument{}, but {} {} given",
                        def.name.name,
                        def.params.len(),
                        if def.params.len() == 1 { "" } else { "s" },
                        args.len(),
                        if args.len() == 1 { "was" } else { "were" }
                    ),
                    span,
                )
                .with_secondary(def.span, "defined here"),
            ));
        }
        if dc.inline_depth > 32 {
            return Err(self.err(
                Diagnostic::error(
                    format!("{kind} `{}` expands without end", def.name.name),
                    span,
                )
                .with_help("masks and fns may not call themselves"),
            ));
        }
        let map: HashMap<&str, &Expr> = def
            .params
            .iter()
            .map(|p| p.name.as_str())
            .zip(args.iter().map(|a| &a.value))
            .collect();
        let body = substitute(&def.body, &map);
        dc.inline_depth += 1;
        let r = self.expr(sc, dc, &body);
        dc.inline_depth -= 1;
        r
    }

    /// `e where p`: the predicate filters the innermost reduction or
    /// normaliser in `e` that binds one of its indices; if none does, it
    /// guards the whole element.
    fn where_clause(
        &mut self,
        sc: &Scope,
        dc: &mut DefCtx,
        e: &Expr,
        p: &Expr,
        span: Span,
    ) -> R<TExpr> {
        let mut names = BTreeSet::new();
        names_in(p, &mut names);
        // Masks hide their index names behind parameters: look inside calls too.
        let mut found = Vec::new();
        find_binders(e, &names, &mut Vec::new(), &mut found);
        if found.is_empty() {
            let pred = self.condition(sc, dc, p, "`where`")?;
            let body = self.expr(sc, dc, e)?;
            let ty = body.ty;
            return Ok(te(
                TExprKind::Guard {
                    pred: Box::new(pred),
                    body: Box::new(body),
                },
                ty,
                span,
            ));
        }
        found.sort_by_key(|path| std::cmp::Reverse(path.len()));
        let chosen = found[0].clone();
        for other in &found[1..] {
            if !chosen.starts_with(other) {
                return Err(self.err(
                    Diagnostic::error("this `where` could filter more than one reduction", p.span)
                        .with_label("its indices are bound in two places")
                        .with_help(
                            "put the `where` inside the parentheses of the reduction it belongs to",
                        ),
                ));
            }
        }
        let rewritten = attach(e, &chosen, p);
        self.expr(sc, dc, &rewritten)
    }

    /// `conv(u, h, over: l)[s...]` as its raw index form:
    /// `sum(tap) h[tap, ...] * u[..., s_l - tap, ...] where tap <= s_l`.
    /// `h`'s first axis is the tap axis; its other axes line up with `u`'s
    /// non-`over` axes from the right (broadcasting, as in NumPy).
    fn desugar_conv(&mut self, sc: &Scope, args: &[Arg], subs: &[Expr], span: Span) -> R<Expr> {
        let usage = "write `conv(u, h, over: l)`: `u` and `h` are tensors, `l` an axis of `u`";
        let mut pos = Vec::new();
        let mut over = None;
        for a in args {
            match a.name.as_ref().map(|n| n.name.as_str()) {
                None => pos.push(&a.value),
                Some("over") => over = Some(&a.value),
                Some(other) => {
                    return Err(self.err(
                        Diagnostic::error(
                            format!("`conv` takes no argument `{other}`"),
                            a.value.span,
                        )
                        .with_help(usage),
                    ))
                }
            }
        }
        let tensor_of = |e: &Expr| match &e.kind {
            ExprKind::Name(n) => Some(n.clone()),
            _ => None,
        };
        let (Some(u), Some(h), Some(over), 2) = (
            pos.first().and_then(|e| tensor_of(e)),
            pos.get(1).and_then(|e| tensor_of(e)),
            over.and_then(tensor_of),
            pos.len(),
        ) else {
            return Err(self.err(Diagnostic::error("malformed `conv`", span).with_help(usage)));
        };
        let Some((_, u_axes)) = self.tensor_axes(sc, &u)? else {
            return Err(self.err(Diagnostic::error(
                format!("`{}` is not a tensor", u.name),
                u.span,
            )));
        };
        let h_rank = match sc.names.get(&h.name) {
            Some((Entity::Tensor(t), _)) => self.prog.tensors[*t as usize].shape.len(),
            Some((Entity::Poisoned, _)) => return Err(Reported),
            _ => {
                return Err(self.err(Diagnostic::error(
                    format!("`{}` is not a tensor", h.name),
                    h.span,
                )))
            }
        };
        let Some(k) = u_axes.iter().position(|a| *a == over.name) else {
            return Err(self.err(
                Diagnostic::error(
                    format!("`{}` has no axis named `{}`", u.name, over.name),
                    over.span,
                )
                .with_help(format!("its axes are {}", u_axes.join(", "))),
            ));
        };
        if subs.len() != u_axes.len() {
            return Err(self.err(Diagnostic::error(
                format!(
                    "`conv` of `{}` needs {} subscripts, one per axis of `{}`",
                    u.name,
                    u_axes.len(),
                    u.name
                ),
                span,
            )));
        }
        let others: Vec<usize> = (0..u_axes.len()).filter(|&p| p != k).collect();
        if h_rank == 0 || h_rank - 1 > others.len() {
            return Err(self.err(Diagnostic::error(
                format!(
                    "filter `{}` has {} axes; it needs a tap axis plus at most {}",
                    h.name,
                    h_rank,
                    others.len()
                ),
                h.span,
            )));
        }
        self.fresh += 1;
        let tap = format!("tap'{}", self.fresh);
        let tap_e = name_expr(&tap, span);
        let mut hsubs = vec![tap_e.clone()];
        for &p in &others[others.len() - (h_rank - 1)..] {
            hsubs.push(subs[p].clone());
        }
        let mut usubs = subs.to_vec();
        usubs[k] = mk(
            ExprKind::Binary(
                BinOp::Sub,
                Box::new(subs[k].clone()),
                Box::new(tap_e.clone()),
            ),
            subs[k].span,
        );
        let hread = mk(
            ExprKind::Index(Box::new(name_expr(&h.name, h.span)), hsubs),
            span,
        );
        let uread = mk(
            ExprKind::Index(Box::new(name_expr(&u.name, u.span)), usubs),
            span,
        );
        let body = mk(
            ExprKind::Binary(BinOp::Mul, Box::new(hread), Box::new(uread)),
            span,
        );
        let pred = mk(
            ExprKind::Binary(
                BinOp::Le,
                Box::new(tap_e.clone()),
                Box::new(subs[k].clone()),
            ),
            span,
        );
        Ok(mk(
            ExprKind::Call {
                func: Ident {
                    name: "sum".into(),
                    span,
                },
                args: vec![Arg {
                    name: None,
                    value: tap_e,
                }],
                body: Some(Box::new(mk(
                    ExprKind::Masked(Box::new(body), Box::new(pred)),
                    span,
                ))),
            },
            span,
        ))
    }

    // ----- extents and ranges -----

    fn resolve_extents(&mut self, dc: &DefCtx) -> R<Vec<SlotInfo>> {
        let mut out = Vec::new();
        let mut bad = false;
        let direct = |s: &SlotBuild| {
            s.annotated
                .clone()
                .or_else(|| s.constraints.first().map(|c| c.0.clone()))
                .or_else(|| s.weak.first().cloned())
        };
        for (k, s) in dc.slots.iter().enumerate() {
            let chosen = direct(s).or_else(|| {
                s.partners
                    .iter()
                    .find_map(|p| direct(&dc.slots[*p as usize]))
            });
            let Some(ext) = chosen else {
                bad = true;
                let lhs = k < dc.rank;
                self.diags.push(
                    Diagnostic::error(
                        format!("cannot infer the range of index `{}`", s.name),
                        s.span,
                    )
                    .with_label(if lhs {
                        "never used directly as a subscript"
                    } else {
                        "bound here, never used directly as a subscript"
                    })
                    .with_help(format!("give its extent: `{}: N`", s.name)),
                );
                continue;
            };
            let first_desc = match (&s.annotated, s.constraints.first()) {
                (None, Some(c)) => (c.2.clone(), c.1),
                _ => ("its annotation".to_string(), s.span),
            };
            for (d, sp, desc) in &s.constraints {
                if !dims_equal(d, &ext) {
                    bad = true;
                    self.diags.push(
                        Diagnostic::error(
                            format!("shape mismatch for index `{}`: {} vs {}", s.name, ext, d),
                            *sp,
                        )
                        .with_label(format!("here `{}` ranges over {d}, as {desc}", s.name))
                        .with_secondary(
                            first_desc.1,
                            format!("but here it ranges over {ext}, from {}", first_desc.0),
                        )
                        .with_help("use different index names for axes of different sizes"),
                    );
                    break;
                }
            }
            out.push(SlotInfo {
                name: s.name.clone(),
                extent: ext,
                span: s.span,
            });
        }
        if bad {
            return Err(Reported);
        }
        Ok(out)
    }

    fn prove_ranges(&mut self, dc: &DefCtx, slots: &[SlotInfo], body: &TExpr) -> R<()> {
        let extents: Vec<Option<Lin>> = slots.iter().map(|s| Lin::from_dim(&s.extent)).collect();
        let prover = Prover { extents: &extents };
        let mut errors = Vec::new();
        let mut facts = Vec::new();
        self.walk_ranges(dc, &prover, body, &mut facts, &mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            self.diags.extend(errors);
            Err(Reported)
        }
    }

    fn walk_ranges(
        &self,
        dc: &DefCtx,
        p: &Prover,
        e: &TExpr,
        facts: &mut Vec<Lin>,
        errs: &mut Vec<Diagnostic>,
    ) {
        let n0 = facts.len();
        match &e.kind {
            TExprKind::Read { tensor, subs } => {
                let t = &self.prog.tensors[*tensor as usize];
                for (k, s) in subs.iter().enumerate() {
                    self.walk_ranges(dc, p, s, facts, errs);
                    if matches!(s.kind, TExprKind::Index(_)) {
                        continue; // equal extents, unified already
                    }
                    if *tensor == dc.self_id {
                        continue; // `t - 1` of a recurrence reads the zero initial state at -1
                    }
                    let ext = &t.shape[k];
                    if let Some(ok) = folded_in_range(p, s, ext, facts) {
                        if !ok {
                            errs.push(
                                Diagnostic::error(format!("subscript may be out of range for axis {k} of `{}` (extent {ext})", t.name), s.span)
                                    .with_label(format!("can leave 0 ..= {ext} - 1"))
                                    .with_help(format!("`a % n` is in range when n <= {ext}; `a // c` when 0 <= a <= c * {ext} - 1")),
                            );
                        }
                        continue;
                    }
                    let Some(lin) = to_lin(s) else {
                        errs.push(
                            Diagnostic::error(format!("cannot check that this subscript stays within axis {k} of `{}` (extent {ext})", t.name), s.span)
                                .with_label("not linear in the indices")
                                .with_help("subscripts are checked when they are sums of indices and sizes times constants; precompute a table"),
                        );
                        continue;
                    };
                    if !p.prove(&lin, facts) {
                        errs.push(
                            Diagnostic::error(format!("subscript may be out of range for axis {k} of `{}` (extent {ext})", t.name), s.span)
                                .with_label("can be negative")
                                .with_help("add a guard that keeps it at least 0, for example `where t <= l` for `l - t`"),
                        );
                        continue;
                    }
                    match Lin::from_dim(ext) {
                        Some(el) if p.prove(&el.add(&Lin::constant(-1), 1).add(&lin, -1), facts) => {}
                        _ => errs.push(
                            Diagnostic::error(format!("subscript may be out of range for axis {k} of `{}` (extent {ext})", t.name), s.span)
                                .with_label(format!("can exceed {ext} - 1"))
                                .with_help(format!("add a guard that keeps it below {ext}")),
                        ),
                    }
                }
            }
            TExprKind::Reduce { guard, body, .. } | TExprKind::Normalize { guard, body, .. } => {
                if let Some(g) = guard {
                    self.walk_ranges(dc, p, g, facts, errs);
                    facts_of(g, false, facts);
                }
                self.walk_ranges(dc, p, body, facts, errs);
            }
            TExprKind::Guard { pred, body } => {
                self.walk_ranges(dc, p, pred, facts, errs);
                facts_of(pred, false, facts);
                self.walk_ranges(dc, p, body, facts, errs);
            }
            TExprKind::Call(Builtin::Select, v) => {
                self.walk_ranges(dc, p, &v[0], facts, errs);
                facts_of(&v[0], false, facts);
                self.walk_ranges(dc, p, &v[1], facts, errs);
                facts.truncate(n0);
                facts_of(&v[0], true, facts);
                self.walk_ranges(dc, p, &v[2], facts, errs);
            }
            TExprKind::Call(_, v) => v
                .iter()
                .for_each(|x| self.walk_ranges(dc, p, x, facts, errs)),
            TExprKind::Unary(_, a) => self.walk_ranges(dc, p, a, facts, errs),
            TExprKind::Binary(_, a, b) => {
                self.walk_ranges(dc, p, a, facts, errs);
                self.walk_ranges(dc, p, b, facts, errs);
            }
            TExprKind::Const(_) | TExprKind::Dim(_) | TExprKind::Index(_) => {}
        }
        facts.truncate(n0);
    }
}

fn kind_word(k: BlockKind) -> &'static str {
    match k {
        BlockKind::Mixer => "mixer",
        BlockKind::Filter => "filter",
    }
}

fn shape_text(s: &ast::Shape) -> String {
    s.dims
        .iter()
        .map(crate::pretty::expr)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether two sizes are equal for every value of their symbols.
pub(crate) fn dims_equal(a: &DimExpr, b: &DimExpr) -> bool {
    match (Lin::from_dim(a), Lin::from_dim(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn find_op(e: &Expr, op: BinOp, found: &mut bool) {
    if let ExprKind::Binary(o, a, b) = &e.kind {
        if *o == op {
            *found = true;
        }
        find_op(a, op, found);
        find_op(b, op, found);
    }
}

/// Whether subscript `s`, a remainder `a % n` by a size or a positive
/// constant, or a floor division `a // c` of a linear `a` by a positive
/// constant, stays in `0 ..= ext - 1` under `facts`; `None` for any other
/// form. `%` takes the divisor's sign, so `a % n` is in `0 ..= n - 1` for
/// every integer `a` (sizes are positive): it is in range when `n <=
/// ext`. `a // c` is in range when `0 <= a <= c * ext - 1`.
fn folded_in_range(p: &Prover, s: &TExpr, ext: &DimExpr, facts: &[Lin]) -> Option<bool> {
    let TExprKind::Binary(op @ (BinOp::Mod | BinOp::FloorDiv), a, n) = &s.kind else {
        return None;
    };
    let ext = Lin::from_dim(ext)?;
    let positive = match &n.kind {
        TExprKind::Dim(_) => true,
        TExprKind::Const(v) => *v >= 1.0,
        _ => false,
    };
    let nl = to_lin(n)?;
    if !positive {
        return Some(false);
    }
    Some(match op {
        BinOp::Mod => p.prove(&ext.add(&nl, -1), facts),
        _ => {
            let c = nl.as_const()?;
            let al = to_lin(a)?;
            p.prove(&al, facts)
                && p.prove(&ext.scale(c).add(&Lin::constant(-1), 1).add(&al, -1), facts)
        }
    })
}

fn to_lin(e: &TExpr) -> Option<Lin> {
    match &e.kind {
        TExprKind::Const(v) if v.fract() == 0.0 && v.abs() < 1e15 => Some(Lin::constant(*v as i64)),
        TExprKind::Index(s) => Some(Lin::var(Var::Slot(*s))),
        TExprKind::Dim(d) => Lin::from_dim(d),
        TExprKind::Unary(UnOp::Neg, a) => Some(to_lin(a)?.scale(-1)),
        TExprKind::Binary(BinOp::Add, a, b) => Some(to_lin(a)?.add(&to_lin(b)?, 1)),
        TExprKind::Binary(BinOp::Sub, a, b) => Some(to_lin(a)?.add(&to_lin(b)?, -1)),
        TExprKind::Binary(BinOp::Mul, a, b) => {
            let (a, b) = (to_lin(a)?, to_lin(b)?);
            match (a.as_const(), b.as_const()) {
                (Some(k), _) => Some(b.scale(k)),
                (_, Some(k)) => Some(a.scale(k)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Linear facts (`f >= 0`) implied by a condition (or by its negation).
fn facts_of(c: &TExpr, negate: bool, out: &mut Vec<Lin>) {
    match &c.kind {
        TExprKind::Binary(BinOp::And, a, b) if !negate => {
            facts_of(a, false, out);
            facts_of(b, false, out);
        }
        TExprKind::Binary(BinOp::Or, a, b) if negate => {
            facts_of(a, true, out);
            facts_of(b, true, out);
        }
        TExprKind::Unary(UnOp::Not, a) => facts_of(a, !negate, out),
        TExprKind::Binary(op, a, b) => {
            let (Some(a), Some(b)) = (to_lin(a), to_lin(b)) else {
                return;
            };
            let op = if negate {
                match op {
                    BinOp::Le => BinOp::Gt,
                    BinOp::Lt => BinOp::Ge,
                    BinOp::Ge => BinOp::Lt,
                    BinOp::Gt => BinOp::Le,
                    BinOp::Ne => BinOp::Eq,
                    _ => return,
                }
            } else {
                *op
            };
            let one = Lin::constant(1);
            match op {
                BinOp::Le => out.push(b.add(&a, -1)),
                BinOp::Lt => out.push(b.add(&a, -1).add(&one, -1)),
                BinOp::Ge => out.push(a.add(&b, -1)),
                BinOp::Gt => out.push(a.add(&b, -1).add(&one, -1)),
                BinOp::Eq => {
                    out.push(b.add(&a, -1));
                    out.push(a.add(&b, -1));
                }
                _ => {}
            }
        }
        _ => {}
    }
}

/// Constant value of an expression without indices or free sizes.
pub(crate) fn fold(e: &TExpr) -> Option<f64> {
    match &e.kind {
        TExprKind::Const(v) => Some(*v),
        TExprKind::Dim(DimExpr::Const(v)) => Some(*v as f64),
        TExprKind::Unary(UnOp::Neg, a) => Some(-fold(a)?),
        TExprKind::Unary(UnOp::Not, a) => Some(f64::from(u8::from(fold(a)? == 0.0))),
        TExprKind::Binary(op, a, b) => {
            let (x, y) = (fold(a)?, fold(b)?);
            Some(scalar_binop(*op, x, y))
        }
        TExprKind::Call(b, args) => {
            let v: Option<Vec<f64>> = args.iter().map(fold).collect();
            Some(scalar_builtin(*b, &v?))
        }
        _ => None,
    }
}

fn substitute(e: &Expr, map: &HashMap<&str, &Expr>) -> Expr {
    let s = |x: &Expr| substitute(x, map);
    let kind = match &e.kind {
        ExprKind::Name(n) => match map.get(n.name.as_str()) {
            Some(v) => return (*v).clone(),
            None => e.kind.clone(),
        },
        ExprKind::Index(b, subs) => ExprKind::Index(Box::new(s(b)), subs.iter().map(s).collect()),
        ExprKind::Call { func, args, body } => ExprKind::Call {
            func: func.clone(),
            args: args
                .iter()
                .map(|a| Arg {
                    name: a.name.clone(),
                    value: s(&a.value),
                })
                .collect(),
            body: body.as_ref().map(|b| Box::new(s(b))),
        },
        ExprKind::Unary(op, a) => ExprKind::Unary(*op, Box::new(s(a))),
        ExprKind::Binary(op, a, b) => ExprKind::Binary(*op, Box::new(s(a)), Box::new(s(b))),
        ExprKind::Where(a, b) => ExprKind::Where(Box::new(s(a)), Box::new(s(b))),
        ExprKind::Masked(a, b) => ExprKind::Masked(Box::new(s(a)), Box::new(s(b))),
        k => k.clone(),
    };
    Expr::new(kind, e.span)
}

/// Children of an expression, in a fixed order (used for paths).
fn children(e: &Expr) -> Vec<&Expr> {
    match &e.kind {
        ExprKind::Index(b, subs) => std::iter::once(b.as_ref()).chain(subs.iter()).collect(),
        ExprKind::Call { args, body, .. } => args
            .iter()
            .map(|a| &a.value)
            .chain(body.as_deref())
            .collect(),
        ExprKind::Unary(_, a) => vec![a],
        ExprKind::Binary(_, a, b) | ExprKind::Where(a, b) | ExprKind::Masked(a, b) => vec![a, b],
        _ => vec![],
    }
}

fn binds_any(e: &Expr, names: &BTreeSet<String>) -> bool {
    match &e.kind {
        ExprKind::Call {
            args,
            body: Some(_),
            ..
        } => args.iter().any(|a| match (&a.name, &a.value.kind) {
            (Some(n), _) => names.contains(&n.name),
            (None, ExprKind::Name(n)) => names.contains(&n.name),
            _ => false,
        }),
        ExprKind::Call {
            func,
            args,
            body: None,
        } if NORMALISERS.iter().any(|(n, _)| *n == func.name) => args.iter().any(|a| {
            a.name.as_ref().map(|n| n.name == "over").unwrap_or(false)
                && matches!(&a.value.kind, ExprKind::Name(n) if names.contains(&n.name))
        }),
        _ => false,
    }
}

fn find_binders(
    e: &Expr,
    names: &BTreeSet<String>,
    path: &mut Vec<usize>,
    out: &mut Vec<Vec<usize>>,
) {
    if binds_any(e, names) {
        out.push(path.clone());
    }
    // A nested `where` in parentheses is its own scope.
    if matches!(e.kind, ExprKind::Where(..)) {
        return;
    }
    for (k, c) in children(e).into_iter().enumerate() {
        path.push(k);
        find_binders(c, names, path, out);
        path.pop();
    }
}

/// Puts predicate `p` on the binder at `path`.
fn attach(e: &Expr, path: &[usize], p: &Expr) -> Expr {
    let masked = |v: &Expr| {
        let (inner, pred) = match &v.kind {
            ExprKind::Masked(i, q) => (
                i.as_ref().clone(),
                mk(
                    ExprKind::Binary(BinOp::And, q.clone(), Box::new(p.clone())),
                    p.span,
                ),
            ),
            _ => (v.clone(), p.clone()),
        };
        mk(ExprKind::Masked(Box::new(inner), Box::new(pred)), v.span)
    };
    if path.is_empty() {
        return match &e.kind {
            ExprKind::Call {
                func,
                args,
                body: Some(b),
            } => mk(
                ExprKind::Call {
                    func: func.clone(),
                    args: args.clone(),
                    body: Some(Box::new(masked(b))),
                },
                e.span,
            ),
            ExprKind::Call {
                func,
                args,
                body: None,
            } => {
                let mut args = args.clone();
                if let Some(a) = args.iter_mut().find(|a| a.name.is_none()) {
                    a.value = masked(&a.value);
                }
                mk(
                    ExprKind::Call {
                        func: func.clone(),
                        args,
                        body: None,
                    },
                    e.span,
                )
            }
            _ => e.clone(),
        };
    }
    let k = path[0];
    let rest = &path[1..];
    let sub = |x: &Expr| attach(x, rest, p);
    let kind = match &e.kind {
        ExprKind::Index(b, subs) => {
            if k == 0 {
                ExprKind::Index(Box::new(sub(b)), subs.clone())
            } else {
                let mut s = subs.clone();
                s[k - 1] = sub(&subs[k - 1]);
                ExprKind::Index(b.clone(), s)
            }
        }
        ExprKind::Call { func, args, body } => {
            let mut args = args.clone();
            let mut body = body.clone();
            if k < args.len() {
                args[k].value = sub(&args[k].value);
            } else if let Some(b) = &body {
                body = Some(Box::new(sub(b)));
            }
            ExprKind::Call {
                func: func.clone(),
                args,
                body,
            }
        }
        ExprKind::Unary(op, a) => ExprKind::Unary(*op, Box::new(sub(a))),
        ExprKind::Binary(op, a, b) => {
            if k == 0 {
                ExprKind::Binary(*op, Box::new(sub(a)), b.clone())
            } else {
                ExprKind::Binary(*op, a.clone(), Box::new(sub(b)))
            }
        }
        ExprKind::Masked(a, b) => {
            if k == 0 {
                ExprKind::Masked(Box::new(sub(a)), b.clone())
            } else {
                ExprKind::Masked(a.clone(), Box::new(sub(b)))
            }
        }
        other => other.clone(),
    };
    mk(kind, e.span)
}

// ----- definitions of masks and fns -----

/// Masks must be boolean, fns must not be; names inside them resolve where
/// they are used, so only the obvious shape of the body is checked here.
pub(crate) fn check_fn_body(g: &Globals, f: &FnDef, is_mask: bool, diags: &mut Vec<Diagnostic>) {
    let ty = syntactic_type(g, &f.body, 0);
    if is_mask && matches!(ty, Some(Ty::Int | Ty::Real)) {
        diags.push(
            Diagnostic::error(
                format!(
                    "mask `{}` must be boolean, but its body is a number",
                    f.name.name
                ),
                f.body.span,
            )
            .with_label("this is a number")
            .with_help("a mask is a predicate over indices, such as `j <= i`; write a comparison"),
        );
    }
    if !is_mask && ty == Some(Ty::Bool) {
        diags.push(
            Diagnostic::warning(
                format!("fn `{}` returns a condition", f.name.name),
                f.body.span,
            )
            .with_help(format!(
                "declare it as `mask {}(...)` to use it in `where`",
                f.name.name
            )),
        );
    }
}

fn syntactic_type(g: &Globals, e: &Expr, depth: u32) -> Option<Ty> {
    if depth > 32 {
        return None;
    }
    match &e.kind {
        ExprKind::Int(_) => Some(Ty::Int),
        ExprKind::Float(_) => Some(Ty::Real),
        ExprKind::Bool(_) => Some(Ty::Bool),
        ExprKind::Index(..) => Some(Ty::Real),
        ExprKind::Unary(UnOp::Not, _) => Some(Ty::Bool),
        ExprKind::Unary(UnOp::Neg, a) => syntactic_type(g, a, depth + 1).filter(|t| *t != Ty::Bool),
        ExprKind::Binary(op, _, _) => Some(match op {
            BinOp::Eq
            | BinOp::Ne
            | BinOp::Lt
            | BinOp::Le
            | BinOp::Gt
            | BinOp::Ge
            | BinOp::And
            | BinOp::Or => Ty::Bool,
            _ => Ty::Real,
        }),
        ExprKind::Call { func, body, .. } => {
            if body.is_some() {
                return Some(Ty::Real);
            }
            if g.masks.contains_key(&func.name) {
                return Some(Ty::Bool);
            }
            if func.name == "select" {
                return None;
            }
            if Builtin::lookup(&func.name).is_some()
                || NORMALISERS.iter().any(|(n, _)| *n == func.name)
            {
                return Some(Ty::Real);
            }
            None
        }
        _ => None,
    }
}

/// A file-level config: literals, earlier configs, arithmetic.
pub(crate) fn const_value_global(
    g: &Globals,
    e: &Expr,
    diags: &mut Vec<Diagnostic>,
) -> Option<(f64, bool)> {
    fn go(g: &Globals, e: &Expr) -> Result<(f64, bool), Span> {
        match &e.kind {
            ExprKind::Int(v) => Ok((*v as f64, true)),
            ExprKind::Float(v) => Ok((*v, false)),
            ExprKind::Name(n) if n.name == "pi" => Ok((std::f64::consts::PI, false)),
            ExprKind::Name(n) => g.configs.get(&n.name).copied().ok_or(e.span),
            ExprKind::Unary(UnOp::Neg, a) => go(g, a).map(|(v, i)| (-v, i)),
            ExprKind::Binary(op, a, b) => {
                let ((x, xi), (y, yi)) = (go(g, a)?, go(g, b)?);
                if matches!(
                    op,
                    BinOp::Eq
                        | BinOp::Ne
                        | BinOp::Lt
                        | BinOp::Le
                        | BinOp::Gt
                        | BinOp::Ge
                        | BinOp::And
                        | BinOp::Or
                ) {
                    return Err(e.span);
                }
                let int = xi && yi && !matches!(op, BinOp::Div | BinOp::Pow);
                Ok((scalar_binop(*op, x, y), int))
            }
            _ => Err(e.span),
        }
    }
    match go(g, e) {
        Ok(v) => Some(v),
        Err(span) => {
            diags.push(
                Diagnostic::error("a file-level config must be a constant number", span)
                    .with_help("use literals, `pi`, arithmetic and earlier configs"),
            );
            None
        }
    }
}
