//! The reference interpreter: evaluates the mixer IR ([`crate::ir`]) in f64.
//! A checked [`Program`] is lowered and verified first, so there is one
//! semantics: the IR's.
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

use crate::ir::{self, ExprId, Init, Module, Node, ValueDef};
use mixc_dsl::ast::{BinOp, UnOp};
use mixc_dsl::check::{scalar_binop, scalar_builtin};
use mixc_dsl::typed::{Builtin, DimExpr, NormOp, Program, RedOp, Ty};
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
    #[error("{0}")]
    Verify(String),
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
            InterpError::Verify(_) => Span::default(),
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
pub fn bind_sizes(m: &Module, free: &BTreeMap<String, i64>) -> Result<Sizes, InterpError> {
    let mut sizes = Sizes::new();
    for d in &m.sizes {
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
enum Node2 {
    Const(f64),
    Index(usize),
    Read {
        t: usize,
        subs: Vec<Node2>,
        recurrent: bool,
        span: Span,
    },
    Un(UnOp, Box<Node2>),
    Bin(BinOp, Box<Node2>, Box<Node2>),
    /// `//` or `%` on integers: dividing by zero is an error, not a NaN.
    IntDiv(BinOp, Box<Node2>, Box<Node2>, Span),
    Select(Box<Node2>, Box<Node2>, Box<Node2>),
    Call(Builtin, Vec<Node2>),
    Reduce {
        op: RedOp,
        slots: Vec<(usize, i64)>,
        guard: Option<Box<Node2>>,
        body: Box<Node2>,
    },
    Norm {
        op: NormOp,
        slot: usize,
        extent: i64,
        guard: Option<Box<Node2>>,
        body: Box<Node2>,
        eps: f64,
        id: u32,
    },
    Guard(Box<Node2>, Box<Node2>),
}

/// An interpreter for one module at one set of sizes.
pub struct Interpreter {
    module: Module,
    pub sizes: Sizes,
    shapes: Vec<Vec<usize>>,
    /// Every value: inputs and parameters after [`Interpreter::init`], op
    /// results after [`Interpreter::run`].
    pub tensors: Vec<Tensor>,
}

impl Interpreter {
    /// Lowers and verifies a checked program, binds sizes and computes shapes.
    pub fn new(prog: &Program, free: &BTreeMap<String, i64>) -> Result<Interpreter, InterpError> {
        Interpreter::for_module(ir::lower::lower(prog), free)
    }

    /// Verifies a module, binds sizes and computes every value's shape.
    pub fn for_module(
        module: Module,
        free: &BTreeMap<String, i64>,
    ) -> Result<Interpreter, InterpError> {
        ir::verify::verify(&module).map_err(|e| InterpError::Verify(e.to_string()))?;
        let sizes = bind_sizes(&module, free)?;
        let mut shapes = Vec::new();
        for t in &module.values {
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
            module,
            sizes,
            shapes,
            tensors,
        })
    }

    pub fn module(&self) -> &Module {
        &self.module
    }

    /// Fills inputs (standard normal) and parameters (their initialisers)
    /// deterministically from `seed` and each value's name.
    pub fn init(&mut self, seed: u64) -> Result<(), InterpError> {
        for (k, fill) in self.fills()?.into_iter().enumerate() {
            if let Some(fill) = fill {
                self.tensors[k] =
                    init_tensor(&self.shapes[k], fill, seed, &self.module.values[k].name);
            }
        }
        Ok(())
    }

    /// How each value is filled: inputs standard normal, parameters by
    /// their initialisers (arguments evaluated at the bound sizes), and
    /// `None` for computed values.
    pub fn fills(&self) -> Result<Vec<Option<Fill>>, InterpError> {
        let mut out = Vec::new();
        for v in &self.module.values {
            out.push(match &v.def {
                ValueDef::Input => Some(Fill::Normal {
                    mean: 0.0,
                    std: 1.0,
                }),
                ValueDef::Param(init) => Some(match *init {
                    Init::Normal { mean, std } => Fill::Normal {
                        mean: self.scalar(mean)?,
                        std: self.scalar(std)?,
                    },
                    Init::Uniform { lo, hi } => Fill::Uniform {
                        lo: self.scalar(lo)?,
                        hi: self.scalar(hi)?,
                    },
                    Init::Constant(v) => Fill::Constant(self.scalar(v)?),
                }),
                ValueDef::Op(_) => None,
            });
        }
        Ok(out)
    }

    /// Sets a value by name (an input or parameter), for tests and for
    /// feeding user data.
    pub fn set(&mut self, name: &str, value: Tensor) -> Result<(), String> {
        let k = self
            .module
            .values
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

    /// A value by name.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.module
            .values
            .iter()
            .position(|t| t.name == name)
            .map(|k| &self.tensors[k])
    }

    fn scalar(&self, e: ExprId) -> Result<f64, InterpError> {
        let n = self.compile(e, &[])?;
        let mut cache = HashMap::new();
        eval(&n, &mut [], &self.tensors, &self.names(), &mut cache)
    }

    fn names(&self) -> Vec<&str> {
        self.module.values.iter().map(|t| t.name.as_str()).collect()
    }

    fn dim(&self, d: &DimExpr, span: Span) -> Result<i64, InterpError> {
        d.eval(&self.sizes).map_err(|m| InterpError::BadShape {
            tensor: "(expression)".into(),
            message: m,
            span,
        })
    }

    fn compile(&self, e: ExprId, extents: &[i64]) -> Result<Node2, InterpError> {
        let m = &self.module;
        let n = m.expr(e);
        let c = |x: ExprId| self.compile(x, extents);
        let b = |x: ExprId| c(x).map(Box::new);
        Ok(match &n.node {
            Node::Const(v) => Node2::Const(*v),
            Node::Size(d) => Node2::Const(self.dim(d, n.span)? as f64),
            Node::Index(s) => Node2::Index(*s as usize),
            Node::Read(v, subs) => {
                let recurrent = matches!(&m.value(*v).def,
                    ValueDef::Op(o) if m.op(*o).recurrence.is_some());
                Node2::Read {
                    t: v.0 as usize,
                    subs: subs.iter().map(|s| c(*s)).collect::<Result<_, _>>()?,
                    recurrent,
                    span: n.span,
                }
            }
            Node::Unary(op, a) => Node2::Un(*op, b(*a)?),
            Node::Binary(op @ (BinOp::FloorDiv | BinOp::Mod), x, y) if n.ty == Ty::Int => {
                Node2::IntDiv(*op, b(*x)?, b(*y)?, n.span)
            }
            Node::Binary(op, x, y) => Node2::Bin(*op, b(*x)?, b(*y)?),
            Node::Call(Builtin::Select, v) => Node2::Select(b(v[0])?, b(v[1])?, b(v[2])?),
            Node::Call(f, v) => Node2::Call(*f, v.iter().map(|x| c(*x)).collect::<Result<_, _>>()?),
            Node::Reduce {
                op,
                slots,
                guard,
                body,
            } => Node2::Reduce {
                op: *op,
                slots: slots
                    .iter()
                    .map(|s| (*s as usize, extents[*s as usize]))
                    .collect(),
                guard: guard.map(b).transpose()?,
                body: b(*body)?,
            },
            Node::Normalize {
                op,
                slot,
                guard,
                body,
                eps,
            } => Node2::Norm {
                op: *op,
                slot: *slot as usize,
                extent: extents[*slot as usize],
                guard: guard.map(b).transpose()?,
                body: b(*body)?,
                eps: *eps,
                id: e.0,
            },
            Node::Guard(p, x) => Node2::Guard(b(*p)?, b(*x)?),
        })
    }

    /// Evaluates every op in order and returns the output value.
    pub fn run(&mut self) -> Result<&Tensor, InterpError> {
        self.run_storing(&|_, v| v)
    }

    /// [`Interpreter::run`], with every element an op stores passed through
    /// `store(value index, element)` before anything reads it: a model of
    /// a back end that keeps intermediate tensors in a narrower storage
    /// type (bf16 or f16 buffers on GPUs). A recurrence reads its earlier
    /// steps as stored.
    pub fn run_storing(
        &mut self,
        store: &dyn Fn(usize, f64) -> f64,
    ) -> Result<&Tensor, InterpError> {
        let names: Vec<String> = self.module.values.iter().map(|t| t.name.clone()).collect();
        let names: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        for op in &self.module.ops {
            let k = op.result.0 as usize;
            let extents: Vec<i64> = op
                .slots
                .iter()
                .map(|s| self.dim(&s.extent, op.span))
                .collect::<Result<_, _>>()?;
            let node = self.compile(op.body, &extents)?;
            let shape = self.shapes[k].clone();
            self.tensors[k] = Tensor::zeros(&shape);
            let mut env = vec![0i64; op.slots.len()];
            let mut cache = HashMap::new();
            let n = self.tensors[k].len();
            for flat in 0..n {
                // Row-major decode of the result indices.
                let mut rem = flat;
                for a in (0..op.rank).rev() {
                    env[a] = (rem % shape[a]) as i64;
                    rem /= shape[a];
                }
                let v = eval(&node, &mut env, &self.tensors, &names, &mut cache)?;
                self.tensors[k].data[flat] = store(k, v);
            }
        }
        Ok(&self.tensors[self.module.output.0 as usize])
    }

    /// [`Interpreter::run`], with every intermediate result (each
    /// expression node's value, so every stored element too) rounded to
    /// f32: an estimate of what f32 arithmetic does to the program as
    /// written. Where this differs from [`Interpreter::run`] by more than
    /// a tolerance, the program is numerically unstable in f32 (say `(x +
    /// 1e8) - 1e8`), and a compiled f32 result cannot be expected to meet
    /// that tolerance.
    pub fn run_rounded_to_f32(&mut self) -> Result<&Tensor, InterpError> {
        self.run_rounded_to_f32_storing(&|_, v| v)
    }

    /// [`Interpreter::run_rounded_to_f32`] with the storage model of
    /// [`Interpreter::run_storing`]: f32 arithmetic, narrower buffers.
    pub fn run_rounded_to_f32_storing(
        &mut self,
        store: &dyn Fn(usize, f64) -> f64,
    ) -> Result<&Tensor, InterpError> {
        ROUND_F32.with(|r| r.set(true));
        let r = self.run_storing(store).map(|_| ());
        ROUND_F32.with(|r| r.set(false));
        r?;
        Ok(self.output())
    }

    /// [`Interpreter::run_rounded_to_f32_storing`] with, in addition, every
    /// arithmetic result (each expression node's value, each partial sum
    /// of a reduction and each normaliser's statistics: a layer norm's
    /// mean and variance, a softmax's sum) multiplied by `1 + u r`, `u = 2^-24` the f32 unit
    /// roundoff and `r` in `[-1, 1]` drawn from `trial` and a counter: the
    /// standard model of floating-point arithmetic (`fl(a op b) = (a op
    /// b)(1 + d)`, `|d| <= u`) with random `d`. A computation whose result
    /// moves far under it (a layer norm of a constant row, whose deviations
    /// from a mean off by one rounding all have one sign) is ill-conditioned
    /// in f32, whatever order a back end sums in.
    pub fn run_perturbed_storing(
        &mut self,
        store: &dyn Fn(usize, f64) -> f64,
        trial: u64,
    ) -> Result<&Tensor, InterpError> {
        PERTURB.with(|p| p.set((trial.max(1), 0)));
        let r = self.run_rounded_to_f32_storing(store).map(|_| ());
        PERTURB.with(|p| p.set((0, 0)));
        r?;
        Ok(self.output())
    }

    /// The output value (after [`Interpreter::run`]).
    pub fn output(&self) -> &Tensor {
        &self.tensors[self.module.output.0 as usize]
    }
}

type RowCache = HashMap<(u32, Vec<i64>), Vec<f64>>;

thread_local! {
    /// Set while [`Interpreter::run_rounded_to_f32`] runs.
    static ROUND_F32: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// (trial, counter) while [`Interpreter::run_perturbed_storing`] runs;
    /// trial 0 is off.
    static PERTURB: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

/// `v` times `1 + u r` inside [`Interpreter::run_perturbed_storing`] (see
/// there), else `v`.
fn jitter(v: f64) -> f64 {
    let (trial, n) = PERTURB.with(|p| p.get());
    // Integer values (subscripts, comparisons, counts) are exact in any
    // arithmetic: only fractional results are perturbed.
    if trial == 0 || v == v.trunc() {
        return v;
    }
    PERTURB.with(|p| p.set((trial, n + 1)));
    let mut z = (n ^ trial << 48).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let r = (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
    v * (1.0 + r * f64::from(f32::EPSILON) / 2.0)
}

/// [`eval_node`], with the result rounded to f32 inside
/// [`Interpreter::run_rounded_to_f32`].
fn eval(
    n: &Node2,
    env: &mut [i64],
    ts: &[Tensor],
    names: &[&str],
    cache: &mut RowCache,
) -> Result<f64, InterpError> {
    let v = eval_node(n, env, ts, names, cache)?;
    Ok(if ROUND_F32.with(|r| r.get()) {
        jitter(v) as f32 as f64
    } else {
        v
    })
}

fn eval_node(
    n: &Node2,
    env: &mut [i64],
    ts: &[Tensor],
    names: &[&str],
    cache: &mut RowCache,
) -> Result<f64, InterpError> {
    Ok(match n {
        Node2::Const(v) => *v,
        Node2::Index(s) => env[*s] as f64,
        Node2::Read {
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
        Node2::Un(UnOp::Neg, a) => -eval(a, env, ts, names, cache)?,
        Node2::Un(UnOp::Not, a) => f64::from(u8::from(eval(a, env, ts, names, cache)? == 0.0)),
        Node2::Bin(BinOp::And, a, b) => {
            let x =
                eval(a, env, ts, names, cache)? != 0.0 && eval(b, env, ts, names, cache)? != 0.0;
            f64::from(u8::from(x))
        }
        Node2::Bin(BinOp::Or, a, b) => {
            let x =
                eval(a, env, ts, names, cache)? != 0.0 || eval(b, env, ts, names, cache)? != 0.0;
            f64::from(u8::from(x))
        }
        Node2::Bin(op, a, b) => {
            let x = eval(a, env, ts, names, cache)?;
            let y = eval(b, env, ts, names, cache)?;
            scalar_binop(*op, x, y)
        }
        Node2::IntDiv(op, a, b, span) => {
            let x = eval(a, env, ts, names, cache)?;
            let y = eval(b, env, ts, names, cache)?;
            if y == 0.0 {
                return Err(InterpError::DivisionByZero { span: *span });
            }
            scalar_binop(*op, x, y)
        }
        Node2::Select(c, a, b) => {
            if eval(c, env, ts, names, cache)? != 0.0 {
                eval(a, env, ts, names, cache)?
            } else {
                eval(b, env, ts, names, cache)?
            }
        }
        Node2::Call(f, args) => {
            let mut v = [0.0f64; 3];
            for (k, a) in args.iter().enumerate() {
                v[k] = eval(a, env, ts, names, cache)?;
            }
            scalar_builtin(*f, &v[..args.len()])
        }
        Node2::Guard(p, b) => {
            if eval(p, env, ts, names, cache)? != 0.0 {
                eval(b, env, ts, names, cache)?
            } else {
                0.0
            }
        }
        Node2::Reduce {
            op,
            slots,
            guard,
            body,
        } => reduce(*op, slots, guard.as_deref(), body, env, ts, names, cache)?,
        Node2::Norm {
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
    guard: Option<&Node2>,
    body: &Node2,
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
    let perturb = perturbing();
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
            RedOp::Sum | RedOp::Mean if perturb => acc = jitter(acc + v),
            RedOp::Sum | RedOp::Mean => acc += v,
            RedOp::Prod if perturb => acc = jitter(acc * v),
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

/// A sum, each partial sum perturbed as one addition inside
/// [`Interpreter::run_perturbed_storing`].
fn sum(xs: impl Iterator<Item = f64>) -> f64 {
    if perturbing() {
        xs.fold(0.0, |a, x| jitter(a + x))
    } else {
        xs.sum()
    }
}

/// Whether [`Interpreter::run_perturbed_storing`] is running (asked once
/// per reduction, not per element).
fn perturbing() -> bool {
    PERTURB.with(|p| p.get().0 != 0)
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
            let z: f64 = sum(kv().map(|v| (v - m).exp()));
            for (k, o) in out.iter_mut().enumerate() {
                if kept[k] {
                    *o = (vals[k] - m).exp() / z;
                }
            }
        }
        NormOp::RmsNorm => {
            let ms = jitter(sum(kv().map(|v| v * v)) / n as f64);
            let r = 1.0 / (ms + eps).sqrt();
            for (k, o) in out.iter_mut().enumerate() {
                if kept[k] {
                    *o = vals[k] * r;
                }
            }
        }
        NormOp::LayerNorm => {
            let mean = jitter(sum(kv()) / n as f64);
            let var = jitter(sum(kv().map(|v| (v - mean) * (v - mean))) / n as f64);
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
