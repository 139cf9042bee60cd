//! The reference interpreter: evaluates a [`Program`] in f64.
//!
//! Semantics, in one place:
//! - definitions run in source order; each fills its tensor element by
//!   element in row-major order of its left-hand indices, so a recurrence
//!   (which reads itself at `t - 1`) always finds the previous step computed;
//!   its read at `t - 1 = -1` is the zero initial state;
//! - a reduction visits every value of its indices, skipping terms whose
//!   `where` guard is false (sum of nothing is 0, product 1, mean, max and
//!   min of nothing 0);
//! - a normaliser computes its whole row over its index, leaving out masked
//!   entries, which come out as 0 (a fully masked softmax row is all zeros,
//!   never NaN);
//! - `select` and element guards evaluate only the branch they take, so a
//!   guarded read never touches memory out of range.

use mixc_dsl::ast::{BinOp, UnOp};
use mixc_dsl::check::{scalar_binop, scalar_builtin};
use mixc_dsl::typed::{
    Builtin, DimExpr, Init, NormOp, Program, RedOp, TExpr, TExprKind, TensorKind, Ty,
};
use mixc_dsl::{Diagnostic, Span};
use mixc_runtime::{init_tensor, Fill, Tensor};
use std::collections::{BTreeMap, HashMap};
use thiserror::Error;

/// Values of every size symbol (free and derived).
pub type Sizes = BTreeMap<String, i64>;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum InterpError {
    #[error("size `{name}` has no value; pass it with --set {name}=N")]
    MissingSize { name: String, span: Span },
    #[error("size `{name}` cannot be computed: {message}")]
    BadSize {
        name: String,
        message: String,
        span: Span,
    },
    #[error("shape of `{tensor}` cannot be computed: {message}")]
    BadShape {
        tensor: String,
        message: String,
        span: Span,
    },
    #[error("read of `{tensor}` at index {index} on axis {axis} is outside 0..{extent}")]
    OutOfRange {
        tensor: String,
        axis: usize,
        index: i64,
        extent: usize,
        span: Span,
    },
    #[error("subscript of `{tensor}` is not an integer ({value})")]
    NonInteger {
        tensor: String,
        value: f64,
        span: Span,
    },
    #[error("integer division by zero")]
    DivisionByZero { span: Span },
    #[error("`{tensor}` has {elements} elements, more than the interpreter's limit of {limit}")]
    TooLarge {
        tensor: String,
        elements: usize,
        limit: usize,
        span: Span,
    },
}

impl InterpError {
    /// The error as a diagnostic pointing at the source.
    pub fn to_diagnostic(&self) -> Diagnostic {
        let span = match self {
            InterpError::MissingSize { span, .. }
            | InterpError::BadSize { span, .. }
            | InterpError::BadShape { span, .. }
            | InterpError::OutOfRange { span, .. }
            | InterpError::NonInteger { span, .. }
            | InterpError::TooLarge { span, .. }
            | InterpError::DivisionByZero { span } => *span,
        };
        let d = Diagnostic::error(self.to_string(), span);
        match self {
            InterpError::BadSize { .. } => {
                d.with_help("choose sizes that divide evenly, e.g. --set D=64,H=8")
            }
            InterpError::OutOfRange { .. } | InterpError::NonInteger { .. } => {
                d.with_note("the checker should have rejected this read; please report it as a bug")
            }
            InterpError::TooLarge { .. } => {
                d.with_help("run the interpreter at a smaller shape (--set L=...)")
            }
            InterpError::DivisionByZero { .. } => {
                d.with_help("a divisor here is 0: check the --set values of configs and sizes")
            }
            _ => d,
        }
    }
}

/// The interpreter refuses tensors larger than this many elements (8 GiB of f64).
pub const MAX_ELEMENTS: usize = 1 << 30;

/// Computes every size from the free ones, checking exact divisions.
pub fn bind_sizes(prog: &Program, free: &BTreeMap<String, i64>) -> Result<Sizes, InterpError> {
    let mut sizes = Sizes::new();
    for d in &prog.dims {
        let v = match &d.value {
            None => *free.get(&d.name).ok_or_else(|| InterpError::MissingSize {
                name: d.name.clone(),
                span: d.span,
            })?,
            Some(e) => e.eval(&sizes).map_err(|m| InterpError::BadSize {
                name: d.name.clone(),
                message: format!("{} = {e}: {m}", d.name),
                span: d.span,
            })?,
        };
        if v < 1 {
            return Err(InterpError::BadSize {
                name: d.name.clone(),
                message: format!("it is {v}, but sizes must be at least 1"),
                span: d.span,
            });
        }
        sizes.insert(d.name.clone(), v);
    }
    Ok(sizes)
}

/// A compiled expression: sizes substituted, ready to evaluate.
enum Node {
    Const(f64),
    Index(usize),
    Read {
        t: usize,
        subs: Vec<Node>,
        recurrent: bool,
        span: Span,
    },
    Un(UnOp, Box<Node>),
    Bin(BinOp, Box<Node>, Box<Node>),
    /// `//` or `%` on integers: dividing by zero is an error, not a NaN.
    IntDiv(BinOp, Box<Node>, Box<Node>, Span),
    Select(Box<Node>, Box<Node>, Box<Node>),
    Call(Builtin, Vec<Node>),
    Reduce {
        op: RedOp,
        slots: Vec<(usize, i64)>,
        guard: Option<Box<Node>>,
        body: Box<Node>,
    },
    Norm {
        op: NormOp,
        slot: usize,
        extent: i64,
        guard: Option<Box<Node>>,
        body: Box<Node>,
        eps: f64,
        id: u32,
    },
    Guard(Box<Node>, Box<Node>),
}

/// An interpreter for one program at one set of sizes.
pub struct Interpreter<'p> {
    prog: &'p Program,
    pub sizes: Sizes,
    shapes: Vec<Vec<usize>>,
    /// Every tensor's value: inputs and parameters after [`Interpreter::init`],
    /// definitions after [`Interpreter::run`].
    pub tensors: Vec<Tensor>,
}

impl<'p> Interpreter<'p> {
    /// Binds sizes and computes every tensor's shape.
    pub fn new(
        prog: &'p Program,
        free: &BTreeMap<String, i64>,
    ) -> Result<Interpreter<'p>, InterpError> {
        let sizes = bind_sizes(prog, free)?;
        let mut shapes = Vec::new();
        for t in &prog.tensors {
            let mut s = Vec::new();
            for d in &t.shape {
                let v = d.eval(&sizes).map_err(|m| InterpError::BadShape {
                    tensor: t.name.clone(),
                    message: m,
                    span: t.span,
                })?;
                s.push(v.max(0) as usize);
            }
            let n: usize = s.iter().product();
            if n > MAX_ELEMENTS {
                return Err(InterpError::TooLarge {
                    tensor: t.name.clone(),
                    elements: n,
                    limit: MAX_ELEMENTS,
                    span: t.span,
                });
            }
            shapes.push(s);
        }
        let tensors = shapes.iter().map(|s| Tensor::zeros(s)).collect();
        Ok(Interpreter {
            prog,
            sizes,
            shapes,
            tensors,
        })
    }

    /// Fills inputs (standard normal) and parameters (their initialisers)
    /// deterministically from `seed` and each tensor's name.
    pub fn init(&mut self, seed: u64) -> Result<(), InterpError> {
        for (k, t) in self.prog.tensors.iter().enumerate() {
            let fill = match &t.kind {
                TensorKind::Input => Fill::Normal {
                    mean: 0.0,
                    std: 1.0,
                },
                TensorKind::Param(init) => {
                    let c = |e: &TExpr| self.scalar(e);
                    match init {
                        Init::Normal { mean, std } => Fill::Normal {
                            mean: c(mean)?,
                            std: c(std)?,
                        },
                        Init::Uniform { lo, hi } => Fill::Uniform {
                            lo: c(lo)?,
                            hi: c(hi)?,
                        },
                        Init::Constant(v) => Fill::Constant(c(v)?),
                    }
                }
                TensorKind::Def(_) => continue,
            };
            self.tensors[k] = init_tensor(&self.shapes[k], fill, seed, &t.name);
        }
        Ok(())
    }

    /// Sets a tensor's value by name (an input or parameter), for tests and
    /// for feeding user data.
    pub fn set(&mut self, name: &str, value: Tensor) -> Result<(), String> {
        let k = self
            .prog
            .tensors
            .iter()
            .position(|t| t.name == name)
            .ok_or_else(|| format!("no tensor named `{name}`"))?;
        if value.shape != self.shapes[k] {
            return Err(format!(
                "`{name}` has shape {:?}, not {:?}",
                self.shapes[k], value.shape
            ));
        }
        self.tensors[k] = value;
        Ok(())
    }

    /// A tensor's current value by name.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.prog
            .tensors
            .iter()
            .position(|t| t.name == name)
            .map(|k| &self.tensors[k])
    }

    fn scalar(&self, e: &TExpr) -> Result<f64, InterpError> {
        let n = self.compile(e, &[])?;
        let mut cache = HashMap::new();
        eval(&n, &mut [], &self.tensors, &self.prog_names(), &mut cache)
    }

    fn prog_names(&self) -> Vec<&str> {
        self.prog.tensors.iter().map(|t| t.name.as_str()).collect()
    }

    fn dim(&self, d: &DimExpr, span: Span) -> Result<i64, InterpError> {
        d.eval(&self.sizes).map_err(|m| InterpError::BadShape {
            tensor: "(expression)".into(),
            message: m,
            span,
        })
    }

    fn compile(&self, e: &TExpr, extents: &[i64]) -> Result<Node, InterpError> {
        let c = |x: &TExpr| self.compile(x, extents);
        let b = |x: &TExpr| c(x).map(Box::new);
        Ok(match &e.kind {
            TExprKind::Const(v) => Node::Const(*v),
            TExprKind::Dim(d) => Node::Const(self.dim(d, e.span)? as f64),
            TExprKind::Index(s) => Node::Index(*s as usize),
            TExprKind::Read { tensor, subs } => {
                let recurrent = matches!(&self.prog.tensors[*tensor as usize].kind,
                    TensorKind::Def(d) if d.recurrence.is_some());
                Node::Read {
                    t: *tensor as usize,
                    subs: subs.iter().map(c).collect::<Result<_, _>>()?,
                    recurrent,
                    span: e.span,
                }
            }
            TExprKind::Unary(op, a) => Node::Un(*op, b(a)?),
            TExprKind::Binary(op @ (BinOp::FloorDiv | BinOp::Mod), x, y) if e.ty == Ty::Int => {
                Node::IntDiv(*op, b(x)?, b(y)?, e.span)
            }
            TExprKind::Binary(op, x, y) => Node::Bin(*op, b(x)?, b(y)?),
            TExprKind::Call(Builtin::Select, v) => Node::Select(b(&v[0])?, b(&v[1])?, b(&v[2])?),
            TExprKind::Call(f, v) => Node::Call(*f, v.iter().map(c).collect::<Result<_, _>>()?),
            TExprKind::Reduce {
                op,
                slots,
                guard,
                body,
            } => Node::Reduce {
                op: *op,
                slots: slots
                    .iter()
                    .map(|s| (*s as usize, extents[*s as usize]))
                    .collect(),
                guard: guard.as_ref().map(|g| b(g)).transpose()?,
                body: b(body)?,
            },
            TExprKind::Normalize {
                op,
                slot,
                guard,
                body,
                eps,
                id,
            } => Node::Norm {
                op: *op,
                slot: *slot as usize,
                extent: extents[*slot as usize],
                guard: guard.as_ref().map(|g| b(g)).transpose()?,
                body: b(body)?,
                eps: *eps,
                id: *id,
            },
            TExprKind::Guard { pred, body } => Node::Guard(b(pred)?, b(body)?),
        })
    }

    /// Evaluates every definition in order and returns the output tensor.
    pub fn run(&mut self) -> Result<&Tensor, InterpError> {
        let names: Vec<String> = self.prog.tensors.iter().map(|t| t.name.clone()).collect();
        let names: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        for (k, t) in self.prog.tensors.iter().enumerate() {
            let TensorKind::Def(def) = &t.kind else {
                continue;
            };
            let extents: Vec<i64> = def
                .slots
                .iter()
                .map(|s| self.dim(&s.extent, s.span))
                .collect::<Result<_, _>>()?;
            let node = self.compile(&def.body, &extents)?;
            let shape = self.shapes[k].clone();
            self.tensors[k] = Tensor::zeros(&shape);
            let mut env = vec![0i64; def.slots.len()];
            let mut cache = HashMap::new();
            let n = self.tensors[k].len();
            for flat in 0..n {
                // Row-major decode of the left-hand indices.
                let mut rem = flat;
                for a in (0..def.rank).rev() {
                    env[a] = (rem % shape[a]) as i64;
                    rem /= shape[a];
                }
                let v = eval(&node, &mut env, &self.tensors, &names, &mut cache)?;
                self.tensors[k].data[flat] = v;
            }
        }
        Ok(&self.tensors[self.prog.output as usize])
    }

    /// The output tensor (after [`Interpreter::run`]).
    pub fn output(&self) -> &Tensor {
        &self.tensors[self.prog.output as usize]
    }
}

type RowCache = HashMap<(u32, Vec<i64>), Vec<f64>>;

fn eval(
    n: &Node,
    env: &mut [i64],
    ts: &[Tensor],
    names: &[&str],
    cache: &mut RowCache,
) -> Result<f64, InterpError> {
    Ok(match n {
        Node::Const(v) => *v,
        Node::Index(s) => env[*s] as f64,
        Node::Read {
            t,
            subs,
            recurrent,
            span,
        } => {
            let tensor = &ts[*t];
            let mut off = 0usize;
            let mut stride = 1usize;
            // Compute subscripts first (they may read other tensors).
            let mut idx = [0i64; 8];
            let mut big = Vec::new();
            let vals: &mut [i64] = if subs.len() <= 8 {
                &mut idx[..subs.len()]
            } else {
                big.resize(subs.len(), 0);
                &mut big
            };
            for (a, s) in subs.iter().enumerate() {
                let v = eval(s, env, ts, names, cache)?;
                if v.fract() != 0.0 || !v.is_finite() {
                    return Err(InterpError::NonInteger {
                        tensor: names[*t].into(),
                        value: v,
                        span: *span,
                    });
                }
                vals[a] = v as i64;
            }
            for a in (0..subs.len()).rev() {
                let ext = tensor.shape[a];
                let i = vals[a];
                if i < 0 || i as usize >= ext {
                    if *recurrent && i == -1 {
                        return Ok(0.0);
                    }
                    return Err(InterpError::OutOfRange {
                        tensor: names[*t].into(),
                        axis: a,
                        index: i,
                        extent: ext,
                        span: *span,
                    });
                }
                off += i as usize * stride;
                stride *= ext;
            }
            tensor.data[off]
        }
        Node::Un(UnOp::Neg, a) => -eval(a, env, ts, names, cache)?,
        Node::Un(UnOp::Not, a) => f64::from(u8::from(eval(a, env, ts, names, cache)? == 0.0)),
        Node::Bin(BinOp::And, a, b) => {
            let x =
                eval(a, env, ts, names, cache)? != 0.0 && eval(b, env, ts, names, cache)? != 0.0;
            f64::from(u8::from(x))
        }
        Node::Bin(BinOp::Or, a, b) => {
            let x =
                eval(a, env, ts, names, cache)? != 0.0 || eval(b, env, ts, names, cache)? != 0.0;
            f64::from(u8::from(x))
        }
        Node::Bin(op, a, b) => {
            let x = eval(a, env, ts, names, cache)?;
            let y = eval(b, env, ts, names, cache)?;
            scalar_binop(*op, x, y)
        }
        Node::IntDiv(op, a, b, span) => {
            let x = eval(a, env, ts, names, cache)?;
            let y = eval(b, env, ts, names, cache)?;
            if y == 0.0 {
                return Err(InterpError::DivisionByZero { span: *span });
            }
            scalar_binop(*op, x, y)
        }
        Node::Select(c, a, b) => {
            if eval(c, env, ts, names, cache)? != 0.0 {
                eval(a, env, ts, names, cache)?
            } else {
                eval(b, env, ts, names, cache)?
            }
        }
        Node::Call(f, args) => {
            let mut v = [0.0f64; 3];
            for (k, a) in args.iter().enumerate() {
                v[k] = eval(a, env, ts, names, cache)?;
            }
            scalar_builtin(*f, &v[..args.len()])
        }
        Node::Guard(p, b) => {
            if eval(p, env, ts, names, cache)? != 0.0 {
                eval(b, env, ts, names, cache)?
            } else {
                0.0
            }
        }
        Node::Reduce {
            op,
            slots,
            guard,
            body,
        } => reduce(*op, slots, guard.as_deref(), body, env, ts, names, cache)?,
        Node::Norm {
            op,
            slot,
            extent,
            guard,
            body,
            eps,
            id,
        } => {
            let own = env[*slot];
            let mut key_env = env.to_vec();
            key_env[*slot] = 0;
            let key = (*id, key_env);
            if let Some(row) = cache.get(&key) {
                return Ok(row[own as usize]);
            }
            let mut vals = Vec::with_capacity(*extent as usize);
            let mut kept = Vec::with_capacity(*extent as usize);
            for v in 0..*extent {
                env[*slot] = v;
                let keep = match guard {
                    Some(g) => eval(g, env, ts, names, cache)? != 0.0,
                    None => true,
                };
                kept.push(keep);
                vals.push(if keep {
                    eval(body, env, ts, names, cache)?
                } else {
                    0.0
                });
            }
            env[*slot] = own;
            let row = normalise(*op, &vals, &kept, *eps);
            let r = row[own as usize];
            cache.insert(key, row);
            r
        }
    })
}

#[allow(clippy::too_many_arguments)]
fn reduce(
    op: RedOp,
    slots: &[(usize, i64)],
    guard: Option<&Node>,
    body: &Node,
    env: &mut [i64],
    ts: &[Tensor],
    names: &[&str],
    cache: &mut RowCache,
) -> Result<f64, InterpError> {
    let saved: Vec<i64> = slots.iter().map(|(s, _)| env[*s]).collect();
    let (mut acc, mut count) = match op {
        RedOp::Sum | RedOp::Mean => (0.0, 0usize),
        RedOp::Prod => (1.0, 0),
        RedOp::Max => (f64::NEG_INFINITY, 0),
        RedOp::Min => (f64::INFINITY, 0),
    };
    let total: i64 = slots.iter().map(|(_, e)| *e).product();
    for flat in 0..total.max(0) {
        let mut rem = flat;
        for (s, e) in slots.iter().rev() {
            env[*s] = rem % e;
            rem /= e;
        }
        if let Some(g) = guard {
            if eval(g, env, ts, names, cache)? == 0.0 {
                continue;
            }
        }
        let v = eval(body, env, ts, names, cache)?;
        count += 1;
        match op {
            RedOp::Sum | RedOp::Mean => acc += v,
            RedOp::Prod => acc *= v,
            RedOp::Max => acc = acc.max(v),
            RedOp::Min => acc = acc.min(v),
        }
    }
    for ((s, _), v) in slots.iter().zip(saved) {
        env[*s] = v;
    }
    Ok(match op {
        RedOp::Mean if count == 0 => 0.0,
        RedOp::Mean => acc / count as f64,
        RedOp::Max | RedOp::Min if count == 0 => 0.0,
        _ => acc,
    })
}

fn normalise(op: NormOp, vals: &[f64], kept: &[bool], eps: f64) -> Vec<f64> {
    let n = kept.iter().filter(|k| **k).count();
    let mut out = vec![0.0; vals.len()];
    if n == 0 {
        return out;
    }
    let kv = || vals.iter().zip(kept).filter(|(_, k)| **k).map(|(v, _)| *v);
    match op {
        NormOp::Softmax => {
            let m = kv().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = kv().map(|v| (v - m).exp()).sum();
            for (k, o) in out.iter_mut().enumerate() {
                if kept[k] {
                    *o = (vals[k] - m).exp() / z;
                }
            }
        }
        NormOp::RmsNorm => {
            let ms = kv().map(|v| v * v).sum::<f64>() / n as f64;
            let r = 1.0 / (ms + eps).sqrt();
            for (k, o) in out.iter_mut().enumerate() {
                if kept[k] {
                    *o = vals[k] * r;
                }
            }
        }
        NormOp::LayerNorm => {
            let mean = kv().sum::<f64>() / n as f64;
            let var = kv().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64;
            let r = 1.0 / (var + eps).sqrt();
            for (k, o) in out.iter_mut().enumerate() {
                if kept[k] {
                    *o = (vals[k] - mean) * r;
                }
            }
        }
    }
    out
}
