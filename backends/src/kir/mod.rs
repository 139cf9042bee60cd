//! Kernel IR: one kernel with its loops, its memory levels and its launch
//! geometry explicit, below the mixer IR and above MLIR.
//!
//! A [`Kernel`] is a structured program run by every thread of a 1-D grid
//! of blocks ([`Launch`]):
//! - **Memory levels.** Global buffers are the mixer's values (one per
//!   value, row-major, stored as f32, bf16 or f16: [`Kernel::storage`];
//!   loads widen to f32 and stores round, so arithmetic is always f32),
//!   plus the `sizes` (i64) and the error flag.
//!   [`Local`]s are per-block *shared* arrays or per-thread *register*
//!   arrays, both of static length.
//! - **Statements** are structured: `for` over an i64 range, `if`, SSA
//!   `let`, stores, a block-wide `barrier`, the warp-wide `mma` (tensor
//!   cores) and `shfl.xor` (lane exchange), and `flag` (integer division
//!   by zero; the run reports it instead of trapping).
//! - **Expressions** are typed scalar trees (f32, i64, i1) over loads,
//!   sizes, thread and block ids, and `let`-bound variables. Every
//!   expression is evaluated eagerly: what must not run (a guarded read
//!   out of range) sits under an `if`.
//!
//! [`lower`] gives the *generic* kernel of any mixer-IR op: one thread per
//! result element (per row, for a scan), reductions and normalisers as
//! loops with register accumulators. Every valid program therefore has
//! kernels. `crate::mlir` prints kernels as MLIR (gpu, scf, arith, math,
//! memref) for the GPU and for the host.

use crate::BackendError;
use mixc_compiler::ir::{
    self, BinOp, Builtin, DimExpr, ExprId, Module, Node, NormOp, RedOp, Slot, Ty, UnOp, ValueDef,
};
use mixc_compiler::pattern::attention::{Inline, Template};
use mixc_compiler::pattern::tiling::Tiling;
use mixc_compiler::schedule::{schedule, Target as ScheduleTarget};
use mixc_compiler::schedule::{ScanForm, Schedule as HostKernel};
use mixc_dsl::typed::DimOp;
pub use mixc_runtime::Dtype;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::{self, Write};

pub use contract::contraction_tiled;
pub use tiled::{attention_tiled, TILE_M};

mod contract;
mod fftconv;
pub use fftconv::{fft_conv, FFT_BLOCK};
mod interval;
mod statescan;
pub use statescan::{state_scan, state_scan_chunked, state_scan_lanes, CHUNKS, CHUNK_COLS};
mod tiled;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scalar {
    F32,
    I64,
    Bool,
}

impl Scalar {
    pub fn mlir(self) -> &'static str {
        match self {
            Scalar::F32 => "f32",
            Scalar::I64 => "i64",
            Scalar::Bool => "i1",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    Shared,
    Register,
}

/// A block-shared or thread-private array of static length.
#[derive(Clone, Debug, PartialEq)]
pub struct Local {
    pub name: String,
    pub ty: Scalar,
    pub space: Space,
    pub len: u32,
    /// An f32 shared array held in 16 bits (bf16 or f16): a store rounds
    /// to nearest-even, a load widens. Tensor-core operands that `wgmma`
    /// reads from shared memory are stored so.
    pub narrow: Option<Dtype>,
}

impl Local {
    /// Bytes of one element.
    pub fn elem_bytes(&self) -> u32 {
        match (self.narrow, self.ty) {
            (Some(_), _) => 2,
            (None, Scalar::I64) => 8,
            (None, Scalar::F32) => 4,
            (None, Scalar::Bool) => 1,
        }
    }
}

/// Where a load or store goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mem {
    /// The buffer of mixer value `k` (global memory, f32).
    Value(u32),
    /// A [`Local`] of the kernel.
    Local(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Var(pub u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Special {
    BlockId,
    ThreadId,
    BlockDim,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Un {
    NegF,
    Not,
    Exp,
    /// `2^x`: on GPUs one `ex2.approx.ftz` (the online softmax's
    /// probabilities, whose argument is then one FMA).
    Exp2,
    Log,
    Sqrt,
    Sin,
    Cos,
    AbsF,
    Floor,
    Ceil,
    Tanh,
    Erf,
    /// i64 to f32 (signed).
    IToF,
    /// i1 to f32 (0 or 1).
    BToF,
    /// f32 to i64, toward zero.
    FToI,
    /// i1 to i64 (0 or 1).
    BToI,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pred {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bin {
    AddF,
    SubF,
    MulF,
    DivF,
    PowF,
    MaxF,
    MinF,
    AddI,
    SubI,
    MulI,
    /// Truncating signed division; the divisor is never 0 (see `Stmt::Flag`).
    DivI,
    RemI,
    MaxI,
    MinI,
    /// Bitwise exclusive or (shared-memory address swizzles).
    XorI,
    /// Bitwise and of integers, a left shift and an arithmetic right
    /// shift (the FFT's power-of-two spans, without division).
    AndI,
    ShlI,
    ShrI,
    And,
    Or,
    CmpF(Pred),
    CmpI(Pred),
    /// Comparison of two booleans.
    CmpB(Pred),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Ex {
    F(f32),
    I(i64),
    B(bool),
    Var(Var),
    /// `sizes[k]`.
    Size(u32),
    Special(Special),
    Load(Mem, Box<Ex>),
    Un(Un, Box<Ex>),
    Bin(Bin, Box<Ex>, Box<Ex>),
    /// Both arms are evaluated.
    Select(Box<Ex>, Box<Ex>, Box<Ex>),
    /// The shared-memory (`.shared` window) byte address of element 0 of
    /// a shared local, as i64: what `wgmma` matrix descriptors encode.
    SharedAddr(u32),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    Let(Var, Ex),
    Store(Mem, Ex, Ex),
    For {
        var: Var,
        lo: Ex,
        hi: Ex,
        body: Vec<Stmt>,
    },
    If {
        cond: Ex,
        then: Vec<Stmt>,
        els: Vec<Stmt>,
    },
    /// Every thread of the block reaches this point before any goes on.
    Barrier,
    /// `dst[dst_at + e stride] = when ? src[src_at + e] : 0` for `e <
    /// n`: one 16-byte load (GPU targets; `n` 16-bit elements, both sides
    /// stored in the same 16-bit type, `src_at` a multiple of `n`, so
    /// exact and aligned), made only where `when` holds: `ld.global.v4`,
    /// then `st.shared.v4` where `stride` is 1 (`dst_at` a multiple of
    /// `n`), else `n` single stores (a transposed tile's column). One set
    /// of stores serves both cases.
    Copy {
        dst: Mem,
        dst_at: Ex,
        src: Mem,
        src_at: Ex,
        n: u32,
        stride: i64,
        when: Ex,
    },
    /// A warp-wide matrix multiply-accumulate on tensor cores (PTX
    /// `mma.sync.aligned.m16n8k16.row.col.f32.{ty}.{ty}.f32`): `D = A B +
    /// C` with A 16 x 16 and B 16 x 8, their elements rounded to `ty`
    /// (bf16 or f16), C and D f32. Every lane of the warp takes part with
    /// its fragments in PTX's layout (lane `l`, group `g = l / 4`, `t = l %
    /// 4`): `a[e]` is A at row `g + 8 (e / 2 % 2)`, column `2 t + e % 2 +
    /// 8 (e / 4)`; `b[e]` is B at row `2 t + e % 2 + 8 (e / 2)`, column
    /// `g`; C and D are the register array `acc[at..at + 4]`, element `e`
    /// at row `g + 8 (e / 2)`, column `2 t + e % 2`.
    Mma {
        ty: Dtype,
        a: Vec<Ex>,
        b: Vec<Ex>,
        acc: Mem,
        at: i64,
    },
    /// A warpgroup-wide matrix multiply-accumulate on sm_90 tensor cores
    /// (PTX `wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{ty}.{ty}`):
    /// `wgmma.fence`, one `mma_async` per step (each `D = A B + D`),
    /// `wgmma.commit_group` (one group), `wgmma.wait_group pending`. With
    /// `pending` 0 it is synchronous; otherwise up to `pending` groups
    /// (this one included) may still run when it ends: until a
    /// [`Stmt::WgmmaWait`] retires it, its accumulator registers must not
    /// be touched and the shared memory it reads not written. The 128 threads
    /// of a warpgroup (4 consecutive warps, the first a multiple of 4)
    /// take part, with equal descriptors. Step `(a, b)`: i64 matrix
    /// descriptors of A (64 x 16) and B (16 x `n`), both in shared memory,
    /// K-major, no swizzle: start address `>> 4` in bits 0-13, leading
    /// (K-direction) byte offset `>> 4` in bits 16-29, stride (M or N
    /// direction) byte offset `>> 4` in bits 32-45, everything else 0.
    /// Core matrices are 8 rows of 16 contiguous bytes; A's element
    /// `(m, k)` is at `start + (m / 8) sbo + (m % 8) 16 + (k / 8) lbo + (k %
    /// 8) 2`, B's `(k, n)` at the same offset with `n` for `m`. The
    /// operands are 16-bit (`ty`); D is f32 in the register array
    /// `acc[at..at + n / 2]`: warp `w` of the group, lane `l` (`g = l / 4`,
    /// `t = l % 4`) holds element `4 c + e` at row `16 w + g + 8 (e / 2)`,
    /// column `8 c + 2 t + e % 2`.
    Wgmma(Wgmma),
    /// `wgmma.wait_group n`: the warpgroup's committed products, all but
    /// the `n` most recent, are complete (their accumulators readable,
    /// their operands free to overwrite).
    WgmmaWait(u32),
    /// `fence.proxy.async.shared::cta`: this thread's earlier shared-memory
    /// writes become visible to the async proxy (`wgmma` operand reads).
    /// A barrier after it publishes them to the other threads' `wgmma`s.
    FenceAsync,
    /// A warp-wide exchange (PTX `shfl.sync.bfly`): every lane of the
    /// warp evaluates `src`, and lane `l` stores the value of lane `l ^
    /// mask` into the register array `dst[at]`. Every lane takes part.
    ShflXor {
        dst: Mem,
        at: i64,
        src: Ex,
        mask: i64,
    },
    /// Sets the run's error flag (integer division by zero).
    Flag,
}

/// A warpgroup product's operands (see [`Stmt::Wgmma`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Wgmma {
    pub ty: Dtype,
    /// N of m64nNk16.
    pub n: u32,
    /// Per k16 step: A, and B's descriptor.
    pub steps: Vec<(WgA, Ex)>,
    /// The f32 accumulator: `acc[at..at + n / 2]`.
    pub acc: Mem,
    pub at: i64,
    /// Groups that may still run when the statement ends.
    pub pending: u32,
}

/// Where a `wgmma` step's A operand (64 x 16) comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum WgA {
    /// A shared-memory tile, through its i64 matrix descriptor.
    Desc(Ex),
    /// Registers: each lane's 8 elements of its warp's 16 rows, in
    /// `Stmt::Mma`'s A fragment layout (element `e` at row `16 w + g + 8
    /// (e / 2 % 2)`, column `2 t + e % 2 + 8 (e / 4)`), rounded to the
    /// product's type.
    Regs(Vec<Ex>),
}

/// Blocks along x (a size expression over the run-time sizes) of `block`
/// threads each.
#[derive(Clone, Debug, PartialEq)]
pub struct Launch {
    pub grid: DimExpr,
    pub block: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    pub name: String,
    /// The mixer-IR op whose value it writes.
    pub op: usize,
    pub kind: String,
    /// Global buffers: one per mixer value.
    pub buffers: usize,
    /// How each value buffer is stored. Arithmetic is f32 whatever the
    /// storage: a load widens, a store rounds to nearest-even.
    pub storage: Vec<Dtype>,
    /// The names of `sizes[k]`.
    pub sizes: Vec<String>,
    /// `let` and loop variables: name and type.
    pub vars: Vec<(String, Scalar)>,
    pub locals: Vec<Local>,
    pub launch: Launch,
    /// Blocks an SM must be able to hold at once (PTX `.minnctapersm`):
    /// ptxas keeps registers low enough for that many.
    pub min_blocks: u32,
    pub body: Vec<Stmt>,
}

impl Kernel {
    pub fn ty(&self, e: &Ex) -> Scalar {
        match e {
            Ex::F(_) => Scalar::F32,
            Ex::I(_) | Ex::Size(_) | Ex::Special(_) => Scalar::I64,
            Ex::B(_) => Scalar::Bool,
            Ex::SharedAddr(_) => Scalar::I64,
            Ex::Var(v) => self.vars[v.0 as usize].1,
            Ex::Load(Mem::Value(_), _) => Scalar::F32,
            Ex::Load(Mem::Local(l), _) => self.locals[*l as usize].ty,
            Ex::Un(u, a) => match u {
                Un::Not => Scalar::Bool,
                Un::FToI | Un::BToI => Scalar::I64,
                Un::IToF | Un::BToF => Scalar::F32,
                _ => self.ty(a),
            },
            Ex::Bin(b, x, _) => match b {
                Bin::CmpF(_) | Bin::CmpI(_) | Bin::CmpB(_) | Bin::And | Bin::Or => Scalar::Bool,
                _ => self.ty(x),
            },
            Ex::Select(_, a, _) => self.ty(a),
        }
    }

    /// Bytes of block-shared memory (static: part of the PTX).
    pub fn shared_bytes(&self) -> u32 {
        self.locals
            .iter()
            .filter(|l| l.space == Space::Shared)
            .map(|l| l.len * l.elem_bytes())
            .sum()
    }

    /// Whether any statement, at any depth, satisfies `pred`.
    fn any_stmt(&self, pred: &dyn Fn(&Stmt) -> bool) -> bool {
        fn any(s: &[Stmt], pred: &dyn Fn(&Stmt) -> bool) -> bool {
            s.iter().any(|s| {
                pred(s)
                    || match s {
                        Stmt::For { body, .. } => any(body, pred),
                        Stmt::If { then, els, .. } => any(then, pred) || any(els, pred),
                        _ => false,
                    }
            })
        }
        any(&self.body, pred)
    }

    /// Whether any statement is a tensor-core product (`mma.sync` or
    /// `wgmma`).
    pub fn has_mma(&self) -> bool {
        self.any_stmt(&|s| matches!(s, Stmt::Mma { .. } | Stmt::Wgmma(_)))
    }

    /// Whether any statement is a warpgroup-wide `wgmma` (sm_90a only).
    pub fn has_wgmma(&self) -> bool {
        self.any_stmt(&|s| matches!(s, Stmt::Wgmma(_)))
    }

    /// Whether any statement is a warp-wide exchange.
    pub fn has_shuffle(&self) -> bool {
        self.any_stmt(&|s| matches!(s, Stmt::ShflXor { .. }))
    }

    /// Whether any statement is a barrier (the host lowering needs none).
    pub fn has_barrier(&self) -> bool {
        self.any_stmt(&|s| matches!(s, Stmt::Barrier))
    }
}

// ----- text form -----

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "kernel {} (op {}, {}) grid [{}] block [{}]",
            self.name, self.op, self.kind, self.launch.grid, self.launch.block
        )?;
        for d in [Dtype::Bf16, Dtype::F16] {
            let vs: Vec<String> = (0..self.buffers)
                .filter(|v| self.storage[*v] == d)
                .map(|v| format!("%{v}"))
                .collect();
            if !vs.is_empty() {
                writeln!(f, "  stored as {d}, computed in f32: {}", vs.join(" "))?;
            }
        }
        for (k, l) in self.locals.iter().enumerate() {
            let space = match l.space {
                Space::Shared => "shared",
                Space::Register => "register",
            };
            let ty = l.narrow.map_or(l.ty.mlir(), |d| d.name());
            writeln!(f, "  {space} @{k} {}: {ty}[{}]", l.name, l.len)?;
        }
        let mut s = String::new();
        self.stmts(&mut s, &self.body, 1);
        f.write_str(&s)
    }
}

impl Kernel {
    fn stmts(&self, out: &mut String, body: &[Stmt], depth: usize) {
        let pad = "  ".repeat(depth);
        for st in body {
            match st {
                Stmt::Let(v, e) => {
                    let _ = writeln!(out, "{pad}{} = {}", self.var(*v), self.ex(e));
                }
                Stmt::Store(m, i, v) => {
                    let _ = writeln!(
                        out,
                        "{pad}{}[{}] = {}",
                        self.mem(*m),
                        self.ex(i),
                        self.ex(v)
                    );
                }
                Stmt::For { var, lo, hi, body } => {
                    let _ = writeln!(
                        out,
                        "{pad}for {} in {}..{} {{",
                        self.var(*var),
                        self.ex(lo),
                        self.ex(hi)
                    );
                    self.stmts(out, body, depth + 1);
                    let _ = writeln!(out, "{pad}}}");
                }
                Stmt::If { cond, then, els } => {
                    let _ = writeln!(out, "{pad}if {} {{", self.ex(cond));
                    self.stmts(out, then, depth + 1);
                    if !els.is_empty() {
                        let _ = writeln!(out, "{pad}}} else {{");
                        self.stmts(out, els, depth + 1);
                    }
                    let _ = writeln!(out, "{pad}}}");
                }
                Stmt::Barrier => {
                    let _ = writeln!(out, "{pad}barrier");
                }
                Stmt::Copy {
                    dst,
                    dst_at,
                    src,
                    src_at,
                    n,
                    stride,
                    when,
                } => {
                    let by = if *stride == 1 {
                        String::new()
                    } else {
                        format!(" by {stride}")
                    };
                    let _ = writeln!(
                        out,
                        "{pad}{}[{}..+{n}{by}] = {} ? {}[{}..+{n}] : 0",
                        self.mem(*dst),
                        self.ex(dst_at),
                        self.ex(when),
                        self.mem(*src),
                        self.ex(src_at)
                    );
                }
                Stmt::Flag => {
                    let _ = writeln!(out, "{pad}flag division-by-zero");
                }
                Stmt::ShflXor { dst, at, src, mask } => {
                    let _ = writeln!(
                        out,
                        "{pad}{}[{at}] = shfl.xor({}, {mask})",
                        self.mem(*dst),
                        self.ex(src)
                    );
                }
                Stmt::FenceAsync => {
                    let _ = writeln!(out, "{pad}fence.proxy.async.shared");
                }
                Stmt::Wgmma(w) => {
                    let steps: Vec<String> = w
                        .steps
                        .iter()
                        .map(|(a, b)| {
                            let a = match a {
                                WgA::Desc(d) => self.ex(d),
                                WgA::Regs(xs) => format!(
                                    "[{}]",
                                    xs.iter().map(|x| self.ex(x)).collect::<Vec<_>>().join(", ")
                                ),
                            };
                            format!("(a: {a}, b: {})", self.ex(b))
                        })
                        .collect();
                    let _ = writeln!(
                        out,
                        "{pad}{}[{}..{}] += wgmma.m64n{}k16.{}{} (pending {})",
                        self.mem(w.acc),
                        w.at,
                        w.at + i64::from(w.n / 2),
                        w.n,
                        w.ty,
                        steps.join(" "),
                        w.pending
                    );
                }
                Stmt::WgmmaWait(n) => {
                    let _ = writeln!(out, "{pad}wgmma.wait_group {n}");
                }
                Stmt::Mma { ty, a, b, acc, at } => {
                    let list =
                        |xs: &[Ex]| xs.iter().map(|x| self.ex(x)).collect::<Vec<_>>().join(", ");
                    let _ = writeln!(
                        out,
                        "{pad}{}[{at}..{}] += mma.m16n8k16.{ty}(a: [{}], b: [{}])",
                        self.mem(*acc),
                        at + 4,
                        list(a),
                        list(b)
                    );
                }
            }
        }
    }

    fn var(&self, v: Var) -> String {
        format!("{}.{}", self.vars[v.0 as usize].0, v.0)
    }

    fn mem(&self, m: Mem) -> String {
        match m {
            Mem::Value(k) => format!("%{k}"),
            Mem::Local(l) => format!("@{l}"),
        }
    }

    fn ex(&self, e: &Ex) -> String {
        match e {
            Ex::F(x) => format!("{x:?}"),
            Ex::I(x) => x.to_string(),
            Ex::B(x) => x.to_string(),
            Ex::Var(v) => self.var(*v),
            Ex::Size(k) => self.sizes[*k as usize].clone(),
            Ex::Special(s) => match s {
                Special::BlockId => "block.x",
                Special::ThreadId => "thread.x",
                Special::BlockDim => "block_dim.x",
            }
            .into(),
            Ex::Load(m, i) => format!("{}[{}]", self.mem(*m), self.ex(i)),
            Ex::Un(u, a) => format!("{u:?}({})", self.ex(a)),
            Ex::Bin(b, x, y) => format!("{b:?}({}, {})", self.ex(x), self.ex(y)),
            Ex::Select(c, a, b) => {
                format!("select({}, {}, {})", self.ex(c), self.ex(a), self.ex(b))
            }
            Ex::SharedAddr(l) => format!("shared_addr(@{l})"),
        }
    }
}

// ----- wgmma operands -----

/// Index (in elements) of `(mn, k)` in a K-major, unswizzled `wgmma`
/// operand tile of `rows` rows (M or N) and any multiple of 16 columns
/// (K): the k16 steps one after another (step `s` at byte `32 rows s`), in each the 8 x 8 core matrices (128
/// contiguous bytes: 8 rows of 16) with the two K halves of an 8-row group
/// adjacent. So a step's leading byte offset (K) is 128 and its stride
/// byte offset (M or N) 256.
pub(crate) fn core_index(rows: i64, mn: Ex, k: Ex) -> Ex {
    let step = bin(Bin::DivI, k.clone(), Ex::I(16));
    let half = bin(Bin::DivI, bin(Bin::RemI, k.clone(), Ex::I(16)), Ex::I(8));
    let terms = [
        bin(Bin::MulI, step, Ex::I(rows * 16)),
        bin(Bin::MulI, bin(Bin::DivI, mn.clone(), Ex::I(8)), Ex::I(128)),
        bin(Bin::MulI, half, Ex::I(64)),
        bin(Bin::MulI, bin(Bin::RemI, mn, Ex::I(8)), Ex::I(8)),
        bin(Bin::RemI, k, Ex::I(8)),
    ];
    terms
        .into_iter()
        .reduce(|a, b| bin(Bin::AddI, a, b))
        .expect("five terms")
}

/// The matrix descriptor of the core-matrix tile at byte address `addr`
/// (see `Stmt::Wgmma`): leading byte offset 128, stride byte offset 256.
pub(crate) fn descriptor(addr: Ex) -> Ex {
    let start = bin(Bin::DivI, bin(Bin::RemI, addr, Ex::I(1 << 18)), Ex::I(16));
    let offsets = ((128 >> 4) << 16) | ((256i64 >> 4) << 32);
    bin(Bin::AddI, start, Ex::I(offsets))
}

/// The descriptor pairs of a product's k16 steps over a reduction of `k`:
/// A from the core-matrix tile of `rows.0` rows at byte address `a` (its
/// product's 64 rows may start past the first), B from the one of
/// `rows.1` rows at `b`; step `s` starts `32 s` bytes per tile row on.
pub(crate) fn wgmma_steps(a: &Ex, b: &Ex, rows: (i64, i64), k: i64) -> Vec<(WgA, Ex)> {
    (0..k / 16)
        .map(|s| {
            let a = bin(Bin::AddI, a.clone(), Ex::I(s * rows.0 * 32));
            let b = bin(Bin::AddI, b.clone(), Ex::I(s * rows.1 * 32));
            (WgA::Desc(descriptor(a)), descriptor(b))
        })
        .collect()
}

// ----- lowering: the generic kernel of one op -----

fn bx(e: Ex) -> Box<Ex> {
    Box::new(e)
}

pub fn bin(b: Bin, x: Ex, y: Ex) -> Ex {
    Ex::Bin(b, bx(x), bx(y))
}

/// `ceil(x / b)` for `x >= 0`, in kernel IR.
fn ceil_div(x: Ex, b: i64) -> Ex {
    bin(Bin::DivI, bin(Bin::AddI, x, Ex::I(b - 1)), Ex::I(b))
}

/// `ceil(x / b)` as a size expression (launch grids).
fn ceil_dim(x: DimExpr, b: i64) -> DimExpr {
    DimExpr::bin(
        DimOp::FloorDiv,
        DimExpr::bin(DimOp::Add, x, DimExpr::Const(b - 1)),
        DimExpr::Const(b),
    )
}

/// Whether `a < b` for every pair: a tile element's bounds checks.
fn below(pairs: &[(&Ex, &Ex)]) -> Ex {
    pairs
        .iter()
        .map(|(a, b)| bin(Bin::CmpI(Pred::Lt), (*a).clone(), (*b).clone()))
        .reduce(|x, y| bin(Bin::And, x, y))
        .unwrap_or(Ex::B(true))
}

pub fn un(u: Un, x: Ex) -> Ex {
    Ex::Un(u, bx(x))
}

/// Builds one kernel: the statement blocks being filled (innermost last)
/// and the current value of each index slot.
struct Lower<'m> {
    m: &'m Module,
    k: Kernel,
    blocks: Vec<Vec<Stmt>>,
    slots: Vec<Ex>,
    extents: Vec<Ex>,
    consts: BTreeMap<String, i64>,
    size_index: BTreeMap<String, u32>,
    /// Reads of these values are evaluated in place (a template's chain).
    inline: HashMap<u32, Inline>,
    /// Reads served from a shared-memory tile (the tiled template).
    staged: HashMap<ExprId, tiled::Staged>,
    /// Reads served from the block's shared copy of its rows' row-side
    /// operands (the tiled template): the array, this row's base, and the
    /// frame slots that index the row with their strides.
    row_cached: HashMap<ExprId, RowRead>,
    /// These expressions evaluate to the given value (the tensor-core
    /// template's score sum: an accumulator element).
    given: HashMap<ExprId, Ex>,
    /// The scan whose state the scan-with-readout template keeps in a
    /// register array: its value, the array, the match.
    state: Option<(u32, Mem, mixc_compiler::pattern::scan::StateScan)>,
    /// With a lane-interleaved state (`kir::state_scan_lanes`): this
    /// column's lane and the number of lanes; state element `k` of the
    /// column is at `k * lanes + lane`.
    state_lane: Option<(Ex, i64)>,
    /// Slots (of the current frame) whose loops are unrolled when their
    /// extent is a constant up to [`UNROLL`].
    unrolled: BTreeSet<Slot>,
}

type R<T> = Result<T, BackendError>;

/// A read served from a block's shared row operands: the array, the
/// thread's row base, and the frame slots indexing the row with strides.
type RowRead = (Mem, Ex, Vec<(Slot, i64)>);

fn err(s: impl Into<String>) -> BackendError {
    BackendError::Mlir(s.into())
}

impl<'m> Lower<'m> {
    fn new(
        m: &'m Module,
        o: usize,
        kind: &str,
        threads: &DimExpr,
        fixed: &BTreeMap<String, i64>,
    ) -> Self {
        Lower {
            m,
            k: Kernel {
                name: format!("op{o}"),
                op: o,
                kind: kind.into(),
                buffers: m.values.len(),
                storage: vec![Dtype::F32; m.values.len()],
                sizes: m.sizes.iter().map(|s| s.name.clone()).collect(),
                vars: Vec::new(),
                locals: Vec::new(),
                launch: Launch {
                    grid: grid(threads.clone()),
                    block: BLOCK,
                },
                min_blocks: 1,
                body: Vec::new(),
            },
            blocks: vec![Vec::new()],
            slots: Vec::new(),
            extents: Vec::new(),
            consts: constants(m, fixed),
            size_index: m
                .sizes
                .iter()
                .enumerate()
                .map(|(k, s)| (s.name.clone(), k as u32))
                .collect(),
            inline: HashMap::new(),
            staged: HashMap::new(),
            row_cached: HashMap::new(),
            given: HashMap::new(),
            state: None,
            state_lane: None,
            unrolled: BTreeSet::new(),
        }
    }

    /// The extents, each computed once at the kernel's start.
    fn extents_of(&mut self, dims: &[DimExpr]) -> R<Vec<Ex>> {
        let mut out = Vec::new();
        for d in dims {
            let e = self.dim(d)?;
            out.push(self.bind("ext", e));
        }
        Ok(out)
    }

    /// This thread's index in the grid.
    fn global_id(&mut self) -> Ex {
        let gid = bin(
            Bin::AddI,
            bin(
                Bin::MulI,
                Ex::Special(Special::BlockId),
                Ex::Special(Special::BlockDim),
            ),
            Ex::Special(Special::ThreadId),
        );
        self.bind("gid", gid)
    }

    /// Splits `gid` over `slots` (the last fastest), setting each slot.
    fn split(&mut self, gid: Ex, slots: &[Slot]) {
        let mut rem = gid;
        for s in slots.iter().rev() {
            let ext = self.extents[*s as usize].clone();
            self.slots[*s as usize] = self.bind("i", bin(Bin::RemI, rem.clone(), ext.clone()));
            rem = self.bind("rem", bin(Bin::DivI, rem, ext));
        }
    }

    fn emit(&mut self, s: Stmt) {
        self.blocks.last_mut().expect("a block is open").push(s);
    }

    fn var(&mut self, name: &str, ty: Scalar) -> Var {
        self.k.vars.push((name.into(), ty));
        Var(self.k.vars.len() as u32 - 1)
    }

    /// `e` bound to a variable, unless it is already a leaf.
    fn bind(&mut self, name: &str, e: Ex) -> Ex {
        if matches!(
            e,
            Ex::F(_) | Ex::I(_) | Ex::B(_) | Ex::Var(_) | Ex::Size(_) | Ex::Special(_)
        ) {
            return e;
        }
        let v = self.var(name, self.k.ty(&e));
        self.emit(Stmt::Let(v, e));
        Ex::Var(v)
    }

    /// A new shared or register array of `len` elements.
    fn local(&mut self, name: impl Into<String>, ty: Scalar, space: Space, len: u32) -> Mem {
        self.k.locals.push(Local {
            name: name.into(),
            ty,
            space,
            len,
            narrow: None,
        });
        Mem::Local(self.k.locals.len() as u32 - 1)
    }

    /// A shared f32 array held in 16 bits (`dtype`): a `wgmma` operand.
    fn shared_narrow(&mut self, name: &str, len: i64, dtype: Dtype) -> Mem {
        let mem = self.local(name, Scalar::F32, Space::Shared, len as u32);
        if let Mem::Local(l) = mem {
            self.k.locals[l as usize].narrow = Some(dtype);
        }
        mem
    }

    fn register(&mut self, name: &str, ty: Scalar) -> Mem {
        self.local(name, ty, Space::Register, 1)
    }

    fn get(&self, m: Mem) -> Ex {
        Ex::Load(m, bx(Ex::I(0)))
    }

    fn set(&mut self, m: Mem, v: Ex) {
        self.emit(Stmt::Store(m, Ex::I(0), v));
    }

    /// Runs `f` into a fresh block and returns its statements.
    fn nested(&mut self, f: impl FnOnce(&mut Self) -> R<()>) -> R<Vec<Stmt>> {
        self.blocks.push(Vec::new());
        let r = f(self);
        let b = self.blocks.pop().expect("pushed above");
        r.map(|_| b)
    }

    fn for_range(
        &mut self,
        name: &str,
        lo: Ex,
        hi: Ex,
        f: impl FnOnce(&mut Self, Ex) -> R<()>,
    ) -> R<()> {
        let v = self.var(name, Scalar::I64);
        let body = self.nested(|g| f(g, Ex::Var(v)))?;
        self.emit(Stmt::For {
            var: v,
            lo,
            hi,
            body,
        });
        Ok(())
    }

    fn if_else(
        &mut self,
        cond: Ex,
        then: impl FnOnce(&mut Self) -> R<()>,
        els: impl FnOnce(&mut Self) -> R<()>,
    ) -> R<()> {
        let then = self.nested(then)?;
        let els = self.nested(els)?;
        self.emit(Stmt::If { cond, then, els });
        Ok(())
    }

    /// Loops over `slots` (0 to extent each), with `f` innermost.
    fn loops(&mut self, slots: &[Slot], f: &mut dyn FnMut(&mut Self) -> R<()>) -> R<()> {
        let Some((&s, rest)) = slots.split_first() else {
            return f(self);
        };
        let saved = self.slots[s as usize].clone();
        match self.extents[s as usize] {
            Ex::I(n) if n <= UNROLL && self.unrolled.contains(&s) => {
                for i in 0..n {
                    self.slots[s as usize] = Ex::I(i);
                    self.loops(rest, f)?;
                }
                self.slots[s as usize] = saved;
                return Ok(());
            }
            _ => {}
        }
        let name = self.slot_name(s);
        let hi = self.extents[s as usize].clone();
        self.for_range(&name, Ex::I(0), hi, |g, i| {
            g.slots[s as usize] = i;
            g.loops(rest, f)
        })?;
        self.slots[s as usize] = saved;
        Ok(())
    }

    fn slot_name(&self, _s: Slot) -> String {
        "i".into()
    }

    fn size(&mut self, name: &str) -> R<Ex> {
        if let Some(v) = self.consts.get(name) {
            return Ok(Ex::I(*v));
        }
        let k = *self
            .size_index
            .get(name)
            .ok_or_else(|| err(format!("unknown size `{name}`")))?;
        Ok(Ex::Size(k))
    }

    /// `b`, or 1 with the error flag set when `b` is 0.
    fn nonzero(&mut self, b: Ex) -> Ex {
        if let Ex::I(v) = b {
            if v != 0 {
                return b;
            }
        }
        let b = self.bind("d", b);
        let zero = self.bind("z", bin(Bin::CmpI(Pred::Eq), b.clone(), Ex::I(0)));
        self.emit(Stmt::If {
            cond: zero.clone(),
            then: vec![Stmt::Flag],
            els: vec![],
        });
        Ex::Select(bx(zero), bx(Ex::I(1)), bx(b))
    }

    /// Floor division (`floor`) or modulo of integers.
    fn floor_div_mod(&mut self, a: Ex, b: Ex, modulo: bool) -> Ex {
        let b = self.nonzero(b);
        let (a, b) = (self.bind("a", a), self.bind("b", b));
        let q = self.bind("q", bin(Bin::DivI, a.clone(), b.clone()));
        let r = self.bind("r", bin(Bin::RemI, a, b.clone()));
        let rn = bin(Bin::CmpI(Pred::Lt), r.clone(), Ex::I(0));
        let bn = bin(Bin::CmpI(Pred::Lt), b.clone(), Ex::I(0));
        let adj = self.bind(
            "adj",
            bin(
                Bin::And,
                bin(Bin::CmpI(Pred::Ne), r.clone(), Ex::I(0)),
                bin(Bin::CmpB(Pred::Ne), rn, bn),
            ),
        );
        if modulo {
            Ex::Select(bx(adj), bx(bin(Bin::AddI, r.clone(), b)), bx(r))
        } else {
            Ex::Select(bx(adj), bx(bin(Bin::SubI, q.clone(), Ex::I(1))), bx(q))
        }
    }

    fn dim(&mut self, d: &DimExpr) -> R<Ex> {
        Ok(match d {
            DimExpr::Const(v) => Ex::I(*v),
            DimExpr::Sym(s) => self.size(s)?,
            DimExpr::Bin(op, a, b) => {
                let (a, b) = (self.dim(a)?, self.dim(b)?);
                match op {
                    DimOp::Add => bin(Bin::AddI, a, b),
                    DimOp::Sub => bin(Bin::SubI, a, b),
                    DimOp::Mul => bin(Bin::MulI, a, b),
                    DimOp::Div => {
                        let b = self.nonzero(b);
                        bin(Bin::DivI, a, b)
                    }
                    DimOp::FloorDiv => self.floor_div_mod(a, b, false),
                    DimOp::Mod => self.floor_div_mod(a, b, true),
                    DimOp::Max => bin(Bin::MaxI, a, b),
                    DimOp::Min => bin(Bin::MinI, a, b),
                }
            }
        })
    }

    fn to(&self, e: Ex, ty: Scalar) -> Ex {
        let from = self.k.ty(&e);
        match (from, ty) {
            (a, b) if a == b => e,
            (Scalar::I64, Scalar::F32) => un(Un::IToF, e),
            (Scalar::Bool, Scalar::F32) => un(Un::BToF, e),
            (Scalar::F32, Scalar::I64) => un(Un::FToI, e),
            (Scalar::Bool, Scalar::I64) => un(Un::BToI, e),
            (Scalar::I64, Scalar::Bool) => bin(Bin::CmpI(Pred::Ne), e, Ex::I(0)),
            (Scalar::F32, Scalar::Bool) => bin(Bin::CmpF(Pred::Ne), e, Ex::F(0.0)),
            _ => unreachable!("all pairs covered"),
        }
    }

    /// `c ? then : els`, evaluating only the branch taken.
    fn branch(
        &mut self,
        c: Ex,
        ty: Scalar,
        then: impl FnOnce(&mut Self) -> R<Ex>,
        els: impl FnOnce(&mut Self) -> R<Ex>,
    ) -> R<Ex> {
        let slot = self.register("sel", ty);
        self.if_else(
            c,
            |g| {
                let v = then(g)?;
                let v = g.to(v, ty);
                g.set(slot, v);
                Ok(())
            },
            |g| {
                let v = els(g)?;
                let v = g.to(v, ty);
                g.set(slot, v);
                Ok(())
            },
        )?;
        Ok(self.bind("v", self.get(slot)))
    }

    /// Runs `f` where `guard` holds (always without one).
    fn when_kept(&mut self, guard: Option<ExprId>, f: impl FnOnce(&mut Self) -> R<()>) -> R<()> {
        match guard {
            Some(p) => {
                let c = self.expr(p)?;
                let c = self.to(c, Scalar::Bool);
                self.if_else(c, f, |_| Ok(()))
            }
            None => f(self),
        }
    }

    fn offset(&mut self, shape: &[DimExpr], subs: &[Ex]) -> R<Ex> {
        let mut off = Ex::I(0);
        for (d, s) in shape.iter().zip(subs) {
            let e = self.dim(d)?;
            off = match off {
                Ex::I(0) => s.clone(),
                o => bin(Bin::AddI, bin(Bin::MulI, o, e), s.clone()),
            };
        }
        Ok(off)
    }

    fn expr(&mut self, e: ExprId) -> R<Ex> {
        if let Some(v) = self.given.get(&e) {
            return Ok(v.clone());
        }
        let n = self.m.expr(e).clone();
        let ty = scalar(n.ty);
        Ok(match &n.node {
            Node::Const(c) => match n.ty {
                Ty::Int => Ex::I(*c as i64),
                Ty::Real => Ex::F(*c as f32),
                Ty::Bool => Ex::B(*c != 0.0),
            },
            Node::Size(d) => self.dim(d)?,
            Node::Index(s) => self.slots[*s as usize].clone(),
            Node::Read(_, subs) if self.staged.contains_key(&e) => {
                let st = self.staged[&e].clone();
                self.staged_read(&st, subs)?
            }
            Node::Read(..) if self.row_cached.contains_key(&e) => {
                let (mem, base, axes) = self.row_cached[&e].clone();
                let mut flat = base;
                for (x, stride) in axes {
                    flat = match (flat, self.slots[x as usize].clone()) {
                        (Ex::I(a), Ex::I(i)) => Ex::I(a + i * stride),
                        (f, i) => bin(Bin::AddI, f, bin(Bin::MulI, i, Ex::I(stride))),
                    };
                }
                Ex::Load(mem, bx(flat))
            }
            Node::Read(v, _) if self.inline.contains_key(&v.0) => match self.inline[&v.0] {
                Inline::Body(body) => self.expr(body)?,
                Inline::One => Ex::F(1.0),
            },
            Node::Read(v, subs) => {
                let mut idx = Vec::new();
                for s in subs {
                    let x = self.expr(*s)?;
                    let x = self.to(x, Scalar::I64);
                    idx.push(self.bind("s", x));
                }
                if let Some((_, mem, ss)) = self.state.as_ref().filter(|s| s.0 == v.0) {
                    let flat = ss.flat(&idx, Ex::I(0), |acc, i, k| match (acc, i) {
                        (Ex::I(a), Ex::I(i)) => Ex::I(a + i * k),
                        (Ex::I(0), i) => bin(Bin::MulI, i, Ex::I(k)),
                        (acc, i) => bin(Bin::AddI, acc, bin(Bin::MulI, i, Ex::I(k))),
                    });
                    let flat = match &self.state_lane {
                        Some((w, n)) => bin(Bin::AddI, bin(Bin::MulI, flat, Ex::I(*n)), w.clone()),
                        None => flat,
                    };
                    return Ok(Ex::Load(*mem, bx(flat)));
                }
                let recurrent = matches!(self.m.value(*v).def,
                    ValueDef::Op(o) if self.m.op(o).recurrence.is_some());
                let shape = self.m.value(*v).shape.clone();
                if recurrent {
                    // The state before the first step is 0.
                    let mut neg = Ex::B(false);
                    let mut clamped = Vec::new();
                    for i in &idx {
                        let c = self.bind("neg", bin(Bin::CmpI(Pred::Lt), i.clone(), Ex::I(0)));
                        neg = match neg {
                            Ex::B(false) => c.clone(),
                            n => bin(Bin::Or, n, c.clone()),
                        };
                        clamped.push(Ex::Select(bx(c), bx(Ex::I(0)), bx(i.clone())));
                    }
                    let off = self.offset(&shape, &clamped)?;
                    let x = Ex::Load(Mem::Value(v.0), bx(off));
                    Ex::Select(bx(neg), bx(Ex::F(0.0)), bx(x))
                } else {
                    let off = self.offset(&shape, &idx)?;
                    Ex::Load(Mem::Value(v.0), bx(off))
                }
            }
            Node::Unary(UnOp::Neg, a) => {
                let x = self.expr(*a)?;
                match self.k.ty(&x) {
                    Scalar::F32 => un(Un::NegF, x),
                    _ => bin(Bin::SubI, Ex::I(0), self.to(x, Scalar::I64)),
                }
            }
            Node::Unary(UnOp::Not, a) => {
                let x = self.expr(*a)?;
                un(Un::Not, self.to(x, Scalar::Bool))
            }
            Node::Binary(op, a, c) => {
                let (ta, tc) = (self.m.expr(*a).ty, self.m.expr(*c).ty);
                let x = self.expr(*a)?;
                let x = self.bind("x", x);
                let y = self.expr(*c)?;
                self.binary(*op, n.ty, ta, tc, x, y)?
            }
            Node::Call(Builtin::Select, args) => {
                let c = self.expr(args[0])?;
                let c = self.to(c, Scalar::Bool);
                let (t, f) = (args[1], args[2]);
                self.branch(c, ty, |g| g.expr(t), |g| g.expr(f))?
            }
            Node::Call(f, args) => {
                let mut vals = Vec::new();
                for a in args {
                    let v = self.expr(*a)?;
                    vals.push(self.bind("x", v));
                }
                self.call(*f, n.ty, vals)
            }
            Node::Guard(p, body) => {
                let c = self.expr(*p)?;
                let c = self.to(c, Scalar::Bool);
                let body = *body;
                self.branch(c, ty, |g| g.expr(body), |_| Ok(zero(ty)))?
            }
            Node::Reduce {
                op,
                slots,
                guard,
                body,
            } => self.reduce(*op, n.ty, slots, *guard, *body)?,
            Node::Normalize {
                op,
                slot,
                guard,
                body,
                eps,
            } => self.normalize(*op, *slot, *guard, *body, *eps)?,
        })
    }

    fn binary(&mut self, op: BinOp, ty: Ty, ta: Ty, tc: Ty, x: Ex, y: Ex) -> R<Ex> {
        use BinOp::*;
        let pred = |op| match op {
            Eq => Pred::Eq,
            Ne => Pred::Ne,
            Lt => Pred::Lt,
            Le => Pred::Le,
            Gt => Pred::Gt,
            _ => Pred::Ge,
        };
        Ok(match op {
            And => bin(Bin::And, self.to(x, Scalar::Bool), self.to(y, Scalar::Bool)),
            Or => bin(Bin::Or, self.to(x, Scalar::Bool), self.to(y, Scalar::Bool)),
            Eq | Ne | Lt | Le | Gt | Ge => {
                if ta == Ty::Int && tc == Ty::Int {
                    bin(
                        Bin::CmpI(pred(op)),
                        self.to(x, Scalar::I64),
                        self.to(y, Scalar::I64),
                    )
                } else if ta == Ty::Bool && tc == Ty::Bool {
                    bin(
                        Bin::CmpB(pred(op)),
                        self.to(x, Scalar::Bool),
                        self.to(y, Scalar::Bool),
                    )
                } else {
                    bin(
                        Bin::CmpF(pred(op)),
                        self.to(x, Scalar::F32),
                        self.to(y, Scalar::F32),
                    )
                }
            }
            _ if ty == Ty::Int => {
                let (x, y) = (self.to(x, Scalar::I64), self.to(y, Scalar::I64));
                match op {
                    Add => bin(Bin::AddI, x, y),
                    Sub => bin(Bin::SubI, x, y),
                    Mul => bin(Bin::MulI, x, y),
                    FloorDiv => self.floor_div_mod(x, y, false),
                    Mod => self.floor_div_mod(x, y, true),
                    _ => {
                        return Err(err(format!(
                            "integer `{}` has no integer result",
                            op.symbol()
                        )))
                    }
                }
            }
            _ => {
                let (x, y) = (self.to(x, Scalar::F32), self.to(y, Scalar::F32));
                match op {
                    Add => bin(Bin::AddF, x, y),
                    Sub => bin(Bin::SubF, x, y),
                    Mul => bin(Bin::MulF, x, y),
                    Div => bin(Bin::DivF, x, y),
                    FloorDiv => un(Un::Floor, bin(Bin::DivF, x, y)),
                    Mod => {
                        let y = self.bind("y", y);
                        let fl = un(Un::Floor, bin(Bin::DivF, x.clone(), y.clone()));
                        bin(Bin::SubF, x, bin(Bin::MulF, y, fl))
                    }
                    Pow => bin(Bin::PowF, x, y),
                    _ => unreachable!("comparisons handled above"),
                }
            }
        })
    }

    fn call(&mut self, f: Builtin, ty: Ty, vals: Vec<Ex>) -> Ex {
        use Builtin::*;
        if ty == Ty::Int {
            let x = vals[0].clone();
            return match f {
                Min | Max => {
                    let (x, y) = (
                        self.to(x, Scalar::I64),
                        self.to(vals[1].clone(), Scalar::I64),
                    );
                    bin(if f == Max { Bin::MaxI } else { Bin::MinI }, x, y)
                }
                Abs => {
                    let x = self.to(x, Scalar::I64);
                    bin(Bin::MaxI, x.clone(), bin(Bin::SubI, Ex::I(0), x))
                }
                Relu => bin(Bin::MaxI, self.to(x, Scalar::I64), Ex::I(0)),
                Floor | Ceil if self.k.ty(&x) == Scalar::F32 => un(
                    Un::FToI,
                    un(if f == Floor { Un::Floor } else { Un::Ceil }, x),
                ),
                _ => self.to(x, Scalar::I64),
            };
        }
        let x = self.to(vals[0].clone(), Scalar::F32);
        let second = |g: &Self| g.to(vals[1].clone(), Scalar::F32);
        let sigmoid = |x: Ex| {
            bin(
                Bin::DivF,
                Ex::F(1.0),
                bin(Bin::AddF, Ex::F(1.0), un(Un::Exp, un(Un::NegF, x))),
            )
        };
        match f {
            Exp => un(Un::Exp, x),
            Log => un(Un::Log, x),
            Sqrt => un(Un::Sqrt, x),
            Rsqrt => bin(Bin::DivF, Ex::F(1.0), un(Un::Sqrt, x)),
            Sin => un(Un::Sin, x),
            Cos => un(Un::Cos, x),
            Abs => un(Un::AbsF, x),
            Floor => un(Un::Floor, x),
            Ceil => un(Un::Ceil, x),
            Tanh => un(Un::Tanh, x),
            Erf => un(Un::Erf, x),
            Relu => bin(Bin::MaxF, x, Ex::F(0.0)),
            Min => bin(Bin::MinF, x, second(self)),
            Max => bin(Bin::MaxF, x, second(self)),
            Sigmoid => sigmoid(x),
            Silu => bin(Bin::MulF, x.clone(), sigmoid(x)),
            Gelu => {
                let e = un(
                    Un::Erf,
                    bin(Bin::MulF, x.clone(), Ex::F(std::f32::consts::FRAC_1_SQRT_2)),
                );
                bin(
                    Bin::MulF,
                    bin(Bin::MulF, x, Ex::F(0.5)),
                    bin(Bin::AddF, Ex::F(1.0), e),
                )
            }
            Softplus => {
                let l = un(Un::Log, bin(Bin::AddF, Ex::F(1.0), un(Un::Exp, x.clone())));
                Ex::Select(
                    bx(bin(Bin::CmpF(Pred::Gt), x.clone(), Ex::F(30.0))),
                    bx(x),
                    bx(l),
                )
            }
            Select => unreachable!("select is lazy and handled in expr"),
        }
    }

    fn reduce(
        &mut self,
        op: RedOp,
        ty: Ty,
        slots: &[Slot],
        guard: Option<ExprId>,
        body: ExprId,
    ) -> R<Ex> {
        let acc_ty = if ty == Ty::Int && op != RedOp::Mean {
            Scalar::I64
        } else {
            Scalar::F32
        };
        let int = acc_ty == Scalar::I64;
        let acc = self.register("acc", acc_ty);
        let count = self.register("count", Scalar::I64);
        let init = match (op, int) {
            (RedOp::Prod, true) => Ex::I(1),
            (RedOp::Prod, false) => Ex::F(1.0),
            (RedOp::Max, true) => Ex::I(i64::MIN),
            (RedOp::Min, true) => Ex::I(i64::MAX),
            (RedOp::Max, false) => Ex::F(f32::NEG_INFINITY),
            (RedOp::Min, false) => Ex::F(f32::INFINITY),
            (_, true) => Ex::I(0),
            (_, false) => Ex::F(0.0),
        };
        self.set(acc, init);
        self.set(count, Ex::I(0));
        self.loops(slots, &mut |g| {
            g.when_kept(guard, |g| {
                let v = g.expr(body)?;
                let v = g.to(v, acc_ty);
                let a = g.get(acc);
                let b = match (op, int) {
                    (RedOp::Sum | RedOp::Mean, true) => Bin::AddI,
                    (RedOp::Prod, true) => Bin::MulI,
                    (RedOp::Max, true) => Bin::MaxI,
                    (RedOp::Min, true) => Bin::MinI,
                    (RedOp::Sum | RedOp::Mean, false) => Bin::AddF,
                    (RedOp::Prod, false) => Bin::MulF,
                    (RedOp::Max, false) => Bin::MaxF,
                    (RedOp::Min, false) => Bin::MinF,
                };
                g.set(acc, bin(b, a, v));
                g.set(count, bin(Bin::AddI, g.get(count), Ex::I(1)));
                Ok(())
            })
        })?;
        let a = self.bind("acc", self.get(acc));
        let c = self.bind("count", self.get(count));
        let empty = bin(Bin::CmpI(Pred::Eq), c.clone(), Ex::I(0));
        let out = match op {
            RedOp::Mean => Ex::Select(
                bx(empty),
                bx(Ex::F(0.0)),
                bx(bin(Bin::DivF, self.to(a, Scalar::F32), un(Un::IToF, c))),
            ),
            RedOp::Max | RedOp::Min => Ex::Select(bx(empty), bx(zero(acc_ty)), bx(a)),
            _ => a,
        };
        Ok(self.to(out, scalar(ty)))
    }

    fn normalize(
        &mut self,
        op: NormOp,
        slot: Slot,
        guard: Option<ExprId>,
        body: ExprId,
        eps: f64,
    ) -> R<Ex> {
        let own = self.slots[slot as usize].clone();
        let a1 = self.register("a1", Scalar::F32);
        let a2 = self.register("a2", Scalar::F32);
        let count = self.register("n", Scalar::I64);
        let first = match op {
            NormOp::Softmax => f32::NEG_INFINITY,
            _ => 0.0,
        };
        self.set(a1, Ex::F(first));
        self.set(a2, Ex::F(0.0));
        self.set(count, Ex::I(0));
        // First pass: softmax max / rms sum of squares / layer-norm sum.
        self.loops(&[slot], &mut |g| {
            g.when_kept(guard, |g| {
                let x = g.expr(body)?;
                let x = g.to(x, Scalar::F32);
                let x = g.bind("x", x);
                let a = g.get(a1);
                let new = match op {
                    NormOp::Softmax => bin(Bin::MaxF, a, x),
                    NormOp::RmsNorm => bin(Bin::AddF, a, bin(Bin::MulF, x.clone(), x)),
                    NormOp::LayerNorm => bin(Bin::AddF, a, x),
                };
                g.set(a1, new);
                g.set(count, bin(Bin::AddI, g.get(count), Ex::I(1)));
                Ok(())
            })
        })?;
        if op == NormOp::LayerNorm {
            let mean = bin(Bin::DivF, self.get(a1), un(Un::IToF, self.get(count)));
            self.set(a1, mean);
        }
        if op != NormOp::RmsNorm {
            // Second pass: softmax sum of exp(x - max); layer-norm variance.
            self.loops(&[slot], &mut |g| {
                g.when_kept(guard, |g| {
                    let x = g.expr(body)?;
                    let x = g.to(x, Scalar::F32);
                    let d = g.bind("d", bin(Bin::SubF, x, g.get(a1)));
                    let term = match op {
                        NormOp::Softmax => un(Un::Exp, d),
                        _ => bin(Bin::MulF, d.clone(), d),
                    };
                    g.set(a2, bin(Bin::AddF, g.get(a2), term));
                    Ok(())
                })
            })?;
        }
        self.slots[slot as usize] = own;
        let some = bin(Bin::CmpI(Pred::Gt), self.get(count), Ex::I(0));
        let keep = match guard {
            Some(p) => {
                let v = self.expr(p)?;
                self.to(v, Scalar::Bool)
            }
            None => Ex::B(true),
        };
        let go = bin(Bin::And, some, keep);
        self.branch(
            go,
            Scalar::F32,
            |g| {
                let x = g.expr(body)?;
                let x = g.to(x, Scalar::F32);
                let cf = un(Un::IToF, g.get(count));
                let (a1v, a2v) = (g.get(a1), g.get(a2));
                Ok(match op {
                    NormOp::Softmax => bin(Bin::DivF, un(Un::Exp, bin(Bin::SubF, x, a1v)), a2v),
                    NormOp::RmsNorm => {
                        let v = bin(Bin::AddF, bin(Bin::DivF, a1v, cf), Ex::F(eps as f32));
                        bin(Bin::DivF, x, un(Un::Sqrt, v))
                    }
                    NormOp::LayerNorm => {
                        let v = bin(Bin::AddF, bin(Bin::DivF, a2v, cf), Ex::F(eps as f32));
                        bin(Bin::DivF, bin(Bin::SubF, x, a1v), un(Un::Sqrt, v))
                    }
                })
            },
            |_| Ok(Ex::F(0.0)),
        )
    }
}

fn scalar(t: Ty) -> Scalar {
    match t {
        Ty::Int => Scalar::I64,
        Ty::Real => Scalar::F32,
        Ty::Bool => Scalar::Bool,
    }
}

fn zero(t: Scalar) -> Ex {
    match t {
        Scalar::F32 => Ex::F(0.0),
        Scalar::I64 => Ex::I(0),
        Scalar::Bool => Ex::B(false),
    }
}

/// Sizes a kernel may fold in: `fixed` plus every derived size they determine.
pub use mixc_compiler::schedule::constants;

/// The generic kernel of op `o` of a verified module, with the sizes in
/// `fixed` folded in as constants.
pub fn lower(m: &Module, o: usize, fixed: &BTreeMap<String, i64>) -> R<Kernel> {
    let op = &m.ops[o];
    let total = threads(op);
    let mut g = Lower::new(m, o, op.kind.name(), &total, fixed);
    let ext: Vec<DimExpr> = op.slots.iter().map(|s| s.extent.clone()).collect();
    g.extents = g.extents_of(&ext)?;
    g.slots = vec![Ex::I(0); op.slots.len()];
    let parallel: Vec<Slot> = (0..op.rank as Slot)
        .filter(|s| Some(*s as usize) != op.recurrence)
        .collect();
    let sequential: Vec<Slot> = op.recurrence.map(|a| vec![a as Slot]).unwrap_or_default();
    let (result, body) = (op.result, op.body);
    let shape = m.value(result).shape.clone();
    // Rows: when the innermost parallel axis has a constant extent of a
    // block's size, a block is one row of it (its other axes split from
    // the block index, once per block) and a thread one element: no
    // division per element, and on the host the thread loop runs along
    // contiguous addresses.
    let consts = constants(m, fixed);
    let row = parallel.split_last().and_then(|(last, outer)| {
        let c = op.slots[*last as usize].extent.eval(&consts).ok()?;
        (ROW_MIN..=ROW_MAX)
            .contains(&c)
            .then_some((*last, outer, c))
    });
    if let Some((last, outer, c)) = row {
        let rows = outer.iter().fold(DimExpr::Const(1), |acc, s| {
            let e = op.slots[*s as usize].extent.clone();
            match acc {
                DimExpr::Const(1) => e,
                acc => DimExpr::bin(DimOp::Mul, acc, e),
            }
        });
        g.k.launch = Launch {
            grid: rows,
            block: c as u32,
        };
        g.slots[last as usize] = Ex::Special(Special::ThreadId);
        g.split(Ex::Special(Special::BlockId), outer);
        g.loops(&sequential, &mut |g| {
            let v = g.expr(body)?;
            g.store_result(result, &shape, v)
        })?;
        g.k.body = g.blocks.pop().expect("the kernel's block");
        return Ok(g.k);
    }
    let gid = g.global_id();
    let total = g.dim(&total)?;
    g.if_else(
        bin(Bin::CmpI(Pred::Lt), gid.clone(), total),
        |g| {
            g.split(gid, &parallel);
            g.loops(&sequential, &mut |g| {
                let v = g.expr(body)?;
                g.store_result(result, &shape, v)
            })
        },
        |_| Ok(()),
    )?;
    g.k.body = g.blocks.pop().expect("the kernel's block");
    Ok(g.k)
}

/// The extents of a row of a generic kernel in row form: a block a row
/// (see [`lower`]).
pub const ROW_MIN: i64 = 32;
pub const ROW_MAX: i64 = 1024;

/// The generic kernels of every op, in program order.
pub fn lower_all(m: &Module, fixed: &BTreeMap<String, i64>) -> R<Vec<Kernel>> {
    (0..m.ops.len()).map(|o| lower(m, o, fixed)).collect()
}

/// Sets how every kernel stores each of the mixer's values (the lowering
/// is the same: loads and stores of value buffers convert).
fn store_as(kernels: &mut [Kernel], storage: &[Dtype]) {
    for k in kernels {
        k.storage = storage.to_vec();
    }
}

/// What lowering a module gives: the module the kernels compute (the
/// input's values first, in order; rewrites may add values after them and
/// reorder ops), its kernels in launch order, and the ops that get no
/// kernel and no buffer (absorbed by a template, or dead).
#[derive(Clone, Debug)]
pub struct Lowered {
    pub module: Module,
    pub kernels: Vec<Kernel>,
    /// Per kernel, the schedule it lowers
    /// (`mixc_compiler::schedule::Schedule::name`).
    pub schedules: Vec<&'static str>,
    pub absorbed: BTreeSet<usize>,
}

impl Lowered {
    /// Runs `f` on `buffers` (the input module's values) extended to
    /// [`Lowered::module`]'s values: zeroed buffers for the values that
    /// lowering added and a kernel writes (hoisted sums), empty ones for
    /// those no kernel touches (a scan's state kept on chip, dead ops).
    pub fn with_buffers<T>(
        &self,
        sizes: &BTreeMap<String, i64>,
        buffers: &mut [Vec<f32>],
        f: impl FnOnce(&mut [Vec<f32>]) -> T,
    ) -> T {
        let n = buffers.len();
        let mut all: Vec<Vec<f32>> = buffers.iter_mut().map(std::mem::take).collect();
        for v in self.module.values.iter().skip(n) {
            let live = match v.def {
                ir::ValueDef::Op(o) => !self.absorbed.contains(&(o.0 as usize)),
                _ => true,
            };
            let len: i64 = v.shape.iter().map(|d| d.eval(sizes).unwrap_or(0)).product();
            all.push(if live {
                vec![0.0; len.max(0) as usize]
            } else {
                Vec::new()
            });
        }
        let r = f(&mut all);
        for (b, a) in buffers.iter_mut().zip(all) {
            *b = a;
        }
        r
    }
}

/// The kernels of a verified module with the templates: fused attention
/// wherever its accumulator's size is fixed by `fixed`, causal linear
/// attention as a scan, a generic kernel for every other op, none for the
/// ops a template absorbs. With `tiled` (GPUs), attention stages its
/// key-side operands in shared memory ([`attention_tiled`]) where it can,
/// matrix-product contractions are blocked through shared memory
/// ([`contraction_tiled`]), and long convolutions run as blocked FFTs
/// ([`fft_conv`]); without (the host form, which has no shared memory), a
/// thread per row or per element.
pub fn lower_module(m: &Module, fixed: &BTreeMap<String, i64>, tiled: bool) -> R<Lowered> {
    let storage = tiled.then_some((Dtype::F32, "sm_80"));
    lower_with(m, fixed, storage)
}

pub use mixc_compiler::pattern::tiling::TensorCores;

/// The GPU kernels of a verified module for `sm` with activations stored
/// as `dtype` (each value as `crate::bundle::value_dtypes` says): the
/// tiled templates, and contractions whose result is stored in 16 bits on
/// tensor cores in that type (`wgmma` on sm_90, `mma.sync` on sm_80).
pub fn lower_gpu(m: &Module, fixed: &BTreeMap<String, i64>, dtype: Dtype, sm: &str) -> R<Lowered> {
    let mut low = lower_with(m, fixed, Some((dtype, sm)))?;
    let storage = mixc_compiler::schedule::value_dtypes(&low.module, dtype);
    store_as(&mut low.kernels, &storage);
    Ok(low)
}

/// One step of a host plan, in launch order: a kernel-IR kernel, or a
/// kernel the runtime's library provides (the FFT convolution, matrix
/// products), for op `op`.
#[derive(Clone, Debug)]
pub enum Step {
    Kernel(Kernel),
    Library {
        op: usize,
        kind: String,
        library: mixc_runtime::bundle::Library,
    },
}

/// What lowering a module for the host gives: as [`Lowered`], with the
/// library kernels in their places.
#[derive(Clone, Debug)]
pub struct HostLowered {
    pub module: Module,
    /// Each step and the schedule it lowers.
    pub steps: Vec<(Step, &'static str)>,
    pub absorbed: BTreeSet<usize>,
}

impl HostLowered {
    /// The kernel-IR kernels, in launch order.
    pub fn kernels(&self) -> Vec<Kernel> {
        self.steps
            .iter()
            .filter_map(|(s, _)| match s {
                Step::Kernel(k) => Some(k.clone()),
                Step::Library { .. } => None,
            })
            .collect()
    }
}

/// The host's kernels of a verified module, in launch order: the host
/// schedule (`mixc_compiler::schedule::Target::Host`) lowered to kernel IR
/// (fused attention a thread per query row, scans sequential, every
/// other op generic), and its long convolutions and matrix products as
/// the runtime's library kernels. With `templates` off (a test-only
/// cross-check), every op is its own generic kernel.
pub fn lower_host(m: &Module, fixed: &BTreeMap<String, i64>, templates: bool) -> R<HostLowered> {
    let consts = constants(m, fixed);
    let sched = schedule(m, ScheduleTarget::Host, templates, &consts)
        .map_err(|e| BackendError::Mlir(format!("the schedule (compiler bug): {e}")))?;
    let (module, plan, absorbed) = (sched.module, sched.kernels, sched.absorbed);
    let steps = steps(&module, &plan, fixed)?;
    Ok(HostLowered {
        module,
        steps,
        absorbed,
    })
}

/// [`lower_module`]: with `gpu` (the activations' storage), the tiled
/// templates.
fn lower_with(m: &Module, fixed: &BTreeMap<String, i64>, gpu: Option<(Dtype, &str)>) -> R<Lowered> {
    let Some((dtype, sm)) = gpu else {
        let low = lower_host(m, fixed, true)?;
        return Ok(Lowered {
            kernels: low.kernels(),
            schedules: low.steps.iter().map(|(_, s)| *s).collect(),
            module: low.module,
            absorbed: low.absorbed,
        });
    };
    let consts = constants(m, fixed);
    let target = ScheduleTarget::Gpu(
        mixc_compiler::schedule::Gpu::parse(sm, dtype)
            .ok_or_else(|| err(format!("`{sm}` is not a GPU architecture")))?,
    );
    let sched = schedule(m, target, true, &consts)
        .map_err(|e| BackendError::Mlir(format!("the schedule (compiler bug): {e}")))?;
    let (module, plan, absorbed) = (sched.module, sched.kernels, sched.absorbed);
    let mut out = Vec::new();
    for (step, _) in steps(&module, &plan, fixed)? {
        match step {
            Step::Kernel(k) => out.push(k),
            Step::Library { kind, .. } => {
                return Err(BackendError::Mlir(format!(
                    "a host schedule ({kind}) reached a GPU (compiler bug)"
                )))
            }
        }
    }
    Ok(Lowered {
        module: module.clone(),
        kernels: out,
        schedules: plan.iter().map(|k| k.name()).collect(),
        absorbed,
    })
}

/// Each kernel of `plan` lowered: a kernel-IR kernel, or a library step.
fn steps(
    m: &Module,
    plan: &[HostKernel],
    fixed: &BTreeMap<String, i64>,
) -> R<Vec<(Step, &'static str)>> {
    use mixc_runtime::bundle::Library;
    let mut out = Vec::new();
    for k in plan {
        let step = match k {
            HostKernel::FftConv(o, spec) => Step::Library {
                op: *o,
                kind: "fft conv (runtime library)".into(),
                library: Library::FftConv((**spec).clone()),
            },
            HostKernel::Gemm(o, spec) => Step::Library {
                op: *o,
                kind: "matrix product (runtime library: matrixmultiply sgemm)".into(),
                library: Library::Gemm((**spec).clone()),
            },
            _ => Step::Kernel(kernel(m, k, fixed)?),
        };
        out.push((step, k.name()));
    }
    Ok(out)
}

/// The kernel-IR kernel of one schedule node.
fn kernel(m: &Module, k: &HostKernel, fixed: &BTreeMap<String, i64>) -> R<Kernel> {
    Ok(match k {
        HostKernel::Attention(t, Tiling::TensorCores(st, pt, tc)) => match tc {
            TensorCores::Wgmma(d) => tiled::attention_mma(m, t, fixed, (st, pt), *d, true)?,
            TensorCores::MmaSync(d) => tiled::attention_mma(m, t, fixed, (st, pt), *d, false)?,
            TensorCores::None => {
                return Err(err(
                    "the schedule chose tensor cores without a 16-bit type (compiler bug)",
                ))
            }
        },
        HostKernel::Attention(t, Tiling::Staged(st)) => attention_tiled(m, t, fixed, st)?,
        HostKernel::Attention(t, Tiling::Rows) => attention(m, t, fixed)?,
        HostKernel::Attention(t, form @ Tiling::RowChunks { .. }) => {
            attention_rows(m, t, fixed, form)?
        }
        HostKernel::StateScan(ss, ScanForm::Chunked) => state_scan_chunked(m, ss, fixed)?
            .ok_or_else(|| {
                err("the schedule chose a chunked scan the template cannot take (compiler bug)")
            })?,
        HostKernel::StateScan(ss, ScanForm::Sequential) => state_scan(m, ss, fixed)?,
        HostKernel::StateScan(ss, ScanForm::Lanes(w)) => {
            statescan::state_scan_lanes(m, ss, fixed, *w, &k.form())?
        }
        HostKernel::BlockedFft(o, c, block) => fft_conv(m, *o, c, fixed, *block)?,
        HostKernel::FftConv(..) | HostKernel::Gemm(..) => {
            return Err(BackendError::Mlir(format!(
                "a library schedule ({}) reached kernel IR (compiler bug)",
                k.name()
            )))
        }
        HostKernel::Matrix(o, mt) => contraction_tiled(m, *o, fixed, mt)?,
        HostKernel::Generic(o) => lower(m, *o, fixed)?,
    })
}

/// The fused-attention template (see `crate::attention` for the chain and
/// the key ranges): one thread per query row with an online softmax, its
/// accumulator in registers; only the chain's result is written.
pub fn attention(m: &Module, t: &Template, fixed: &BTreeMap<String, i64>) -> R<Kernel> {
    let rows = mixc_compiler::pattern::attention::rows(m, t);
    let mut g = Lower::new(
        m,
        t.o,
        &format!(
            "fused attention (online softmax; {})",
            Tiling::Rows.describe()
        ),
        &rows,
        fixed,
    );
    let on = g.online(t)?;
    let op_p = &m.ops[t.p];
    let outer: Vec<Slot> = (0..op_p.rank as Slot).filter(|s| *s != t.jp).collect();
    let gid = {
        g.slots = vec![Ex::I(0); on.frames.pf_ext.len()];
        g.extents = on.frames.pf_ext.clone();
        g.global_id()
    };
    let rows = g.dim(&rows)?;
    g.if_else(
        bin(Bin::CmpI(Pred::Lt), gid.clone(), rows),
        |g| {
            g.split(gid, &outer);
            let of = g.online_start(&on, t)?;
            let (jlo, jhi) = g.key_range(&on, t)?;
            let check = !on.bounds.exact;
            g.for_range("j", jlo, jhi, |g, j| g.online_step(&on, t, &of, j, check))?;
            g.online_finish(&on, &of)
        },
        |_| Ok(()),
    )?;
    g.k.body = g.blocks.pop().expect("the kernel's block");
    Ok(g.k)
}

/// The host's fused attention (`Tiling::RowChunks`): a thread takes
/// `rows` consecutive query rows (of the query axis,
/// `pattern::attention::parallel_slot`) and walks the union of their key
/// ranges `keys` at a time ([`Lower::online_chunks`]), so each key's
/// operands are read once for all its rows, each row's statistics are
/// rescaled once per chunk, and a chunk's exponentials are one loop (a
/// vector on the host). Rows past the query axis's end compute on its
/// last row and write nothing.
pub fn attention_rows(
    m: &Module,
    t: &Template,
    fixed: &BTreeMap<String, i64>,
    form: &Tiling,
) -> R<Kernel> {
    use mixc_dsl::typed::DimOp;
    let Tiling::RowChunks {
        rows,
        keys,
        groups,
        tile,
        transposed,
    } = form
    else {
        return Err(err(
            "attention_rows takes the RowChunks form (compiler bug)",
        ));
    };
    let (rows, keys, groups, tile) = (*rows, *keys, *groups, *tile);
    let per = rows * groups.max(1);
    let op_p = &m.ops[t.p];
    let q = mixc_compiler::pattern::attention::parallel_slot(m, t)
        .ok_or_else(|| err("attention template: no query axis"))?;
    let outer: Vec<Slot> = (0..op_p.rank as Slot).filter(|s| *s != t.jp).collect();
    // Threads: the outer slots, the query axis in blocks of `per` rows.
    let block = |e: DimExpr| {
        DimExpr::bin(
            DimOp::FloorDiv,
            DimExpr::bin(DimOp::Add, e, DimExpr::Const(per - 1)),
            DimExpr::Const(per),
        )
    };
    let threads = outer.iter().fold(DimExpr::Const(1), |acc, s| {
        let e = op_p.slots[*s as usize].extent.clone();
        let e = if *s == q { block(e) } else { e };
        match acc {
            DimExpr::Const(1) => e,
            acc => DimExpr::bin(DimOp::Mul, acc, e),
        }
    });
    let mut g = Lower::new(
        m,
        t.o,
        &format!("fused attention (online softmax; {})", form.describe()),
        &threads,
        fixed,
    );
    // A host form: a block is one thread, so the runtime's split of the
    // grid over the machine's threads is as fine as the work (256 a block
    // left small lengths on one thread).
    g.k.launch = Launch {
        grid: threads.clone(),
        block: 1,
    };
    let ons: Vec<Online> = (0..rows).map(|_| g.online(t)).collect::<R<_>>()?;
    let gid = {
        g.slots = vec![Ex::I(0); ons[0].frames.pf_ext.len()];
        g.extents = ons[0].frames.pf_ext.clone();
        g.global_id()
    };
    let total = g.dim(&threads)?;
    let lq = g.extents[q as usize].clone();
    let blocks = g.bind(
        "blocks",
        bin(
            Bin::DivI,
            bin(Bin::AddI, lq.clone(), Ex::I(per - 1)),
            Ex::I(per),
        ),
    );
    let check = !ons[0].bounds.exact;
    g.if_else(
        bin(Bin::CmpI(Pred::Lt), gid.clone(), total),
        |g| {
            g.extents[q as usize] = blocks.clone();
            g.split(gid, &outer);
            g.extents[q as usize] = lq.clone();
            let first = g.bind(
                "row0",
                bin(Bin::MulI, g.slots[q as usize].clone(), Ex::I(per)),
            );
            let last = bin(Bin::SubI, lq.clone(), Ex::I(1));
            // Row `r` of the group starting at `base`: its index (clamped),
            // whether it exists, o's frame and its key range.
            let row = |g: &mut Lower, on: &Online, base: &Ex, r: usize| -> R<Row> {
                let i = bin(Bin::AddI, base.clone(), Ex::I(r as i64));
                let valid = g.bind("valid", bin(Bin::CmpI(Pred::Lt), i.clone(), lq.clone()));
                let i = g.bind("i", bin(Bin::MinI, i, last.clone()));
                g.slots[q as usize] = i.clone();
                let of = g.o_frame(t, on);
                let range = g.key_range(on, t)?;
                Ok(Row {
                    i,
                    valid,
                    of,
                    range,
                })
            };
            if groups <= 1 {
                let mut each = Vec::new();
                for (r, on) in ons.iter().enumerate() {
                    let x = row(g, on, &first, r)?;
                    g.online_reset(on)?;
                    each.push(x);
                }
                g.online_chunks(&ons, t, &each, q, check, (keys, None))?;
                for (on, x) in ons.iter().zip(&each) {
                    g.slots[q as usize] = x.i.clone();
                    g.if_else(x.valid.clone(), |g| g.online_finish(on, &x.of), |_| Ok(()))?;
                }
                return Ok(());
            }
            // The block's rows keep their statistics and accumulators here
            // between key tiles; a group works in `ons`' registers.
            let nacc = ons[0].nacc;
            let len = |n: i64| u32::try_from(n).map_err(|_| err("attention block too large"));
            let st_acc = g.local("block_acc", Scalar::F32, Space::Register, len(per * nacc)?);
            let st_m = g.local("block_m", Scalar::F32, Space::Register, len(per)?);
            let st_l = g.local("block_l", Scalar::F32, Space::Register, len(per)?);
            g.for_range("z", Ex::I(0), Ex::I(per * nacc), |g, z| {
                g.emit(Stmt::Store(st_acc, z, Ex::F(0.0)));
                Ok(())
            })?;
            g.for_range("z", Ex::I(0), Ex::I(per), |g, z| {
                g.emit(Stmt::Store(st_m, z.clone(), Ex::F(f32::NEG_INFINITY)));
                g.emit(Stmt::Store(st_l, z, Ex::F(0.0)));
                Ok(())
            })?;
            let group_base = |gi: &Ex| {
                bin(
                    Bin::AddI,
                    first.clone(),
                    bin(Bin::MulI, gi.clone(), Ex::I(rows)),
                )
            };
            // The union of the block's key ranges.
            let ulo = g.register("ulo", Scalar::I64);
            let uhi = g.register("uhi", Scalar::I64);
            g.set(ulo, Ex::I(i64::MAX));
            g.set(uhi, Ex::I(0));
            g.for_range("gi", Ex::I(0), Ex::I(groups), |g, gi| {
                let base = g.bind("base", group_base(&gi));
                for (r, on) in ons.iter().enumerate() {
                    let x = row(g, on, &base, r)?;
                    g.set(ulo, bin(Bin::MinI, g.get(ulo), x.range.0));
                    g.set(uhi, bin(Bin::MaxI, g.get(uhi), x.range.1));
                }
                Ok(())
            })?;
            let ulo = g.bind("ulo", g.get(ulo));
            let uhi = g.bind("uhi", g.get(uhi));
            // The transposed key tile: `kt[e * pitch + (j - t0)]`, zeroed
            // once so that columns past a short tile's end hold numbers.
            let keyed = match transposed {
                Some(sc) => {
                    let Node::Reduce { slots, .. } = &m.expr(sc.score).node else {
                        return Err(err("the score is not a sum (compiler bug)"));
                    };
                    let pitch = tile + keys;
                    let kt = g.local("kt", Scalar::F32, Space::Register, len(sc.e * pitch)?);
                    g.for_range("z", Ex::I(0), Ex::I(sc.e * pitch), |g, z| {
                        g.emit(Stmt::Store(kt, z, Ex::F(0.0)));
                        Ok(())
                    })?;
                    let mut scale = Ex::F(1.0);
                    for f in &sc.scale {
                        let v = g.expr(*f)?;
                        scale = bin(Bin::MulF, scale, g.to(v, Scalar::F32));
                    }
                    let scale = g.bind("scale", scale);
                    Some(KeyTile {
                        kt,
                        pitch,
                        t0: Ex::I(0),
                        e: sc.e,
                        slot: slots[0],
                        score: sc.score,
                        q: sc.q,
                        k: sc.k,
                        scale,
                    })
                }
                None => None,
            };
            // Moves row `gi * rows + r`'s state between the block's arrays
            // and `on`'s registers.
            let swap = |g: &mut Lower, on: &Online, at: &Ex, load: bool| -> R<()> {
                let k = g.bind("k", at.clone());
                let pairs = [
                    (on.mstat, Ex::I(0), st_m, k.clone()),
                    (on.lstat, Ex::I(0), st_l, k.clone()),
                ];
                for (reg, ri, arr, ai) in pairs {
                    if load {
                        g.emit(Stmt::Store(reg, ri, Ex::Load(arr, bx(ai))));
                    } else {
                        g.emit(Stmt::Store(arr, ai, Ex::Load(reg, bx(ri))));
                    }
                }
                let off = g.bind("off", bin(Bin::MulI, k, Ex::I(nacc)));
                g.each(nacc, |g, a| {
                    let ai = bin(Bin::AddI, off.clone(), a.clone());
                    if load {
                        g.emit(Stmt::Store(on.acc, a, Ex::Load(st_acc, bx(ai))));
                    } else {
                        g.emit(Stmt::Store(st_acc, ai, Ex::Load(on.acc, bx(a))));
                    }
                    Ok(())
                })
            };
            g.pieces(("tile", tile), (ulo.clone(), uhi.clone()), |g, t0, n| {
                let t1 = g.bind("t1", bin(Bin::AddI, t0.clone(), n.clone()));
                let keyed = match &keyed {
                    Some(kt) => {
                        let kt = KeyTile {
                            t0: t0.clone(),
                            ..kt.clone()
                        };
                        g.stage_transposed(&kt, t, &n)?;
                        Some(kt)
                    }
                    None => None,
                };
                g.for_range("gi", Ex::I(0), Ex::I(groups), |g, gi| {
                    let base = g.bind("base", group_base(&gi));
                    let mut each = Vec::new();
                    for (r, on) in ons.iter().enumerate() {
                        let mut x = row(g, on, &base, r)?;
                        x.range = (
                            g.bind("lo", bin(Bin::MaxI, x.range.0, t0.clone())),
                            g.bind("hi", bin(Bin::MinI, x.range.1, t1.clone())),
                        );
                        let at = bin(
                            Bin::AddI,
                            bin(Bin::MulI, gi.clone(), Ex::I(rows)),
                            Ex::I(r as i64),
                        );
                        swap(g, on, &at, true)?;
                        each.push(x);
                    }
                    g.online_chunks(&ons, t, &each, q, check, (keys, keyed.as_ref()))?;
                    for (r, on) in ons.iter().enumerate() {
                        let at = bin(
                            Bin::AddI,
                            bin(Bin::MulI, gi.clone(), Ex::I(rows)),
                            Ex::I(r as i64),
                        );
                        swap(g, on, &at, false)?;
                    }
                    Ok(())
                })
            })?;
            g.for_range("gi", Ex::I(0), Ex::I(groups), |g, gi| {
                let base = g.bind("base", group_base(&gi));
                for (r, on) in ons.iter().enumerate() {
                    let x = row(g, on, &base, r)?;
                    let at = bin(
                        Bin::AddI,
                        bin(Bin::MulI, gi.clone(), Ex::I(rows)),
                        Ex::I(r as i64),
                    );
                    swap(g, on, &at, true)?;
                    g.slots[q as usize] = x.i.clone();
                    g.if_else(x.valid.clone(), |g| g.online_finish(on, &x.of), |_| Ok(()))?;
                }
                Ok(())
            })
        },
        |_| Ok(()),
    )?;
    g.k.body = g.blocks.pop().expect("the kernel's block");
    Ok(g.k)
}

/// The key tile of [`attention_rows`] staged transposed
/// (`Tiling::RowChunks::transposed`): `kt[e * pitch + (j - t0)]` holds the
/// score's key-side operand `k` at key `j` and head-dim index `e` (the
/// score sum's slot `slot`); a chunk's scores are `q . k` from it times
/// the constant `scale`.
#[derive(Clone)]
struct KeyTile {
    kt: Mem,
    pitch: i64,
    t0: Ex,
    e: i64,
    slot: Slot,
    score: ExprId,
    q: ExprId,
    k: ExprId,
    scale: Ex,
}

/// One query row of [`attention_rows`]: its index on the query axis
/// (clamped to the last row), whether it exists, o's frame at it and its
/// key range.
struct Row {
    i: Ex,
    valid: Ex,
    of: Vec<Ex>,
    range: (Ex, Ex),
}

/// What the online-softmax pieces of the attention templates share.
struct Online {
    pbody: ExprId,
    obody: ExprId,
    guard: Option<ExprId>,
    bounds: mixc_compiler::pattern::attention::Bounds,
    frames: Frames,
    acc: Mem,
    nacc: i64,
    mstat: Mem,
    lstat: Mem,
    result: ir::ValueId,
    shape_o: Vec<DimExpr>,
}

impl Lower<'_> {
    /// The frames, the inlined chain and the accumulator of template `t`.
    fn online(&mut self, t: &Template) -> R<Online> {
        let m = self.m;
        let (op_o, op_p) = (&m.ops[t.o], &m.ops[t.p]);
        let Node::Normalize {
            guard, body: pbody, ..
        } = m.expr(op_p.body).node.clone()
        else {
            return Err(err("attention template: no softmax"));
        };
        let Node::Reduce { body: obody, .. } = m.expr(op_o.body).node.clone() else {
            return Err(err("attention template: no sum"));
        };
        // The p frame: p's slots, then the inlined ops' reduction slots.
        let pdims: Vec<DimExpr> = op_p
            .slots
            .iter()
            .map(|s| s.extent.clone())
            .chain(t.extra.iter().cloned())
            .collect();
        let pf_ext = self.extents_of(&pdims)?;
        let odims: Vec<DimExpr> = op_o.slots.iter().map(|s| s.extent.clone()).collect();
        let of_ext = self.extents_of(&odims)?;
        for &x in &t.inlined {
            self.inline
                .insert(m.ops[x].result.0, Inline::Body(m.ops[x].body));
        }
        self.inline.insert(op_p.result.0, Inline::One);
        // The accumulator: one f32 per element of o's own axes, in registers.
        let mut nacc = 1i64;
        for s in &t.acc {
            nacc *= op_o.slots[*s as usize]
                .extent
                .eval(&self.consts)
                .map_err(|e| {
                    err(format!(
                        "attention template: the accumulator's size is not fixed: {e}"
                    ))
                })?;
        }
        let len = u32::try_from(nacc.max(1)).map_err(|_| err("accumulator too large"))?;
        let acc = self.local("acc", Scalar::F32, Space::Register, len);
        let mstat = self.register("m", Scalar::F32);
        let lstat = self.register("l", Scalar::F32);
        Ok(Online {
            pbody,
            obody,
            guard,
            bounds: mixc_compiler::pattern::attention::bounds(m, guard, t.jp),
            frames: Frames {
                pf_ext,
                of_ext,
                acc_axes: t.acc.clone(),
            },
            acc,
            nacc,
            mstat,
            lstat,
            result: op_o.result,
            shape_o: m.value(op_o.result).shape.clone(),
        })
    }

    /// Resets the row's statistics and accumulator; returns o's frame at
    /// the row (p's slots set).
    fn online_start(&mut self, on: &Online, t: &Template) -> R<Vec<Ex>> {
        let of = self.o_frame(t, on);
        self.online_reset(on)?;
        Ok(of)
    }

    /// o's frame at the row (p's slots set).
    fn o_frame(&self, t: &Template, on: &Online) -> Vec<Ex> {
        let mut of = vec![Ex::I(0); on.frames.of_ext.len()];
        for (ps, os) in &t.p_to_o {
            of[*os as usize] = self.slots[*ps as usize].clone();
        }
        of
    }

    /// The row's statistics and accumulator, reset.
    fn online_reset(&mut self, on: &Online) -> R<()> {
        self.set(on.mstat, Ex::F(f32::NEG_INFINITY));
        self.set(on.lstat, Ex::F(0.0));
        self.each(on.nacc, |g, a| {
            g.emit(Stmt::Store(on.acc, a, Ex::F(0.0)));
            Ok(())
        })
    }

    /// The row's key range `[lo, hi)` from the mask's linear clauses.
    fn key_range(&mut self, on: &Online, t: &Template) -> R<(Ex, Ex)> {
        let mut jlo = Ex::I(0);
        for l in &on.bounds.lo {
            let v = self.lin(l)?;
            jlo = bin(Bin::MaxI, jlo, v);
        }
        let mut jhi = on.frames.pf_ext[t.jp as usize].clone();
        for l in &on.bounds.hi {
            let v = self.lin(l)?;
            jhi = bin(Bin::MinI, jhi, v);
        }
        Ok((self.bind("jlo", jlo), self.bind("jhi", jhi)))
    }

    /// One key `j` of the row: the score, the rescale on a new maximum,
    /// and `acc += w * rest(j, ..)`. `check`: evaluate the mask predicate
    /// first (not needed where the key range is exact, or on a tile the
    /// mask is true for everywhere).
    fn online_step(&mut self, on: &Online, t: &Template, of: &[Ex], j: Ex, check: bool) -> R<()> {
        let saved = self.slots[t.jp as usize].clone();
        self.slots[t.jp as usize] = j.clone();
        let mut of = of.to_vec();
        of[t.r as usize] = j;
        let (mstat, lstat) = (on.mstat, on.lstat);
        let step = |g: &mut Lower| -> R<()> {
            let x = g.expr(on.pbody)?;
            let x = g.to(x, Scalar::F32);
            let x = g.bind("x", x);
            // A new row maximum rescales what was accumulated.
            let m0 = g.bind("m0", g.get(mstat));
            g.rescale(on, m0, x.clone())?;
            let w = g.bind("w", un(Un::Exp, bin(Bin::SubF, x, g.get(mstat))));
            g.set(lstat, bin(Bin::AddF, g.get(lstat), w.clone()));
            g.accumulate(on, &of, &w)
        };
        let r = if check {
            self.when_kept(on.guard, step)
        } else {
            step(self)
        };
        self.slots[t.jp as usize] = saved;
        r
    }

    /// The keys of `rows` (query slot `q` set per row; row `r`'s
    /// statistics and accumulator are `ons[r]`'s) over the union of their
    /// ranges, `chunk` at a time: each row's scores into a register array
    /// (keys outside the row's range or mask, and past the union's end,
    /// as `-inf`), its maximum and one rescale per chunk, its weights
    /// `exp(s - m)` in one loop over the array (a vector of exponentials on
    /// the host), then `acc += w * rest(j, ..)` per key and row. The same
    /// sums as [`Lower::online_step`], in another order. With `keyed`, the
    /// score's sum comes from [`Lower::dots`] (the same sum over the head
    /// dimension, its constant factors applied after).
    fn online_chunks(
        &mut self,
        ons: &[Online],
        t: &Template,
        rows: &[Row],
        q: Slot,
        check: bool,
        (chunk, keyed): (i64, Option<&KeyTile>),
    ) -> R<()> {
        let len = u32::try_from(chunk).map_err(|_| err("key chunk too large"))?;
        let ss: Vec<Mem> = rows
            .iter()
            .map(|_| self.local("s", Scalar::F32, Space::Register, len))
            .collect();
        let ds: Vec<Mem> = match keyed {
            Some(_) => rows
                .iter()
                .map(|_| self.local("dot", Scalar::F32, Space::Register, len))
                .collect(),
            None => Vec::new(),
        };
        let mut jlo = rows[0].range.0.clone();
        let mut jhi = rows[0].range.1.clone();
        for r in &rows[1..] {
            jlo = bin(Bin::MinI, jlo, r.range.0.clone());
            jhi = bin(Bin::MaxI, jhi, r.range.1.clone());
        }
        let (jlo, jhi) = (self.bind("jlo", jlo), self.bind("jhi", jhi));
        self.pieces(("jc", chunk), (jlo, jhi), |g, j0, n| {
            // The scores; -inf where no key counts.
            for s in &ss {
                g.for_range("c", Ex::I(0), Ex::I(chunk), |g, c| {
                    g.emit(Stmt::Store(*s, c, Ex::F(f32::NEG_INFINITY)));
                    Ok(())
                })?;
            }
            if let Some(kt) = keyed {
                g.dots(kt, rows, q, &ds, &j0, chunk)?;
            }
            g.for_range("c", Ex::I(0), n.clone(), |g, c| {
                let j = g.bind("j", bin(Bin::AddI, j0.clone(), c.clone()));
                let saved = std::mem::replace(&mut g.slots[t.jp as usize], j.clone());
                let saved_q = g.slots[q as usize].clone();
                for (r, ((on, row), s)) in ons.iter().zip(rows).zip(&ss).enumerate() {
                    g.slots[q as usize] = row.i.clone();
                    let inside = bin(
                        Bin::And,
                        bin(Bin::CmpI(Pred::Ge), j.clone(), row.range.0.clone()),
                        bin(Bin::CmpI(Pred::Lt), j.clone(), row.range.1.clone()),
                    );
                    g.if_else(
                        inside,
                        |g| {
                            let score = |g: &mut Lower| -> R<()> {
                                if let (Some(kt), Some(d)) = (keyed, ds.get(r)) {
                                    let dot = Ex::Load(*d, bx(c.clone()));
                                    g.given
                                        .insert(kt.score, bin(Bin::MulF, dot, kt.scale.clone()));
                                }
                                let x = g.expr(on.pbody)?;
                                if let Some(kt) = keyed {
                                    g.given.remove(&kt.score);
                                }
                                let x = g.to(x, Scalar::F32);
                                g.emit(Stmt::Store(*s, c.clone(), x));
                                Ok(())
                            };
                            if check {
                                g.when_kept(on.guard, score)
                            } else {
                                score(g)
                            }
                        },
                        |_| Ok(()),
                    )?;
                }
                g.slots[q as usize] = saved_q;
                g.slots[t.jp as usize] = saved;
                Ok(())
            })?;
            // Per row: the chunk's maximum, one rescale when it raises the
            // row's, and the weights.
            for (on, s) in ons.iter().zip(&ss) {
                let (mstat, lstat) = (on.mstat, on.lstat);
                let mc = g.register("mc", Scalar::F32);
                g.set(mc, Ex::F(f32::NEG_INFINITY));
                g.for_range("c", Ex::I(0), Ex::I(chunk), |g, c| {
                    let v = bin(Bin::MaxF, g.get(mc), Ex::Load(*s, bx(c)));
                    g.set(mc, v);
                    Ok(())
                })?;
                let m0 = g.bind("m0", g.get(mstat));
                let m1 = g.bind("m1", bin(Bin::MaxF, m0.clone(), g.get(mc)));
                g.rescale(on, m0, m1.clone())?;
                // Nothing counts until some key does (and -inf - -inf is
                // NaN): the row's weights stay 0 until then.
                let some = g.bind(
                    "some",
                    bin(Bin::CmpF(Pred::Gt), m1.clone(), Ex::F(f32::NEG_INFINITY)),
                );
                let lsum = g.register("lsum", Scalar::F32);
                g.set(lsum, Ex::F(0.0));
                g.for_range("c", Ex::I(0), Ex::I(chunk), |g, c| {
                    let w = un(
                        Un::Exp,
                        bin(Bin::SubF, Ex::Load(*s, bx(c.clone())), m1.clone()),
                    );
                    let w = Ex::Select(bx(some.clone()), bx(w), bx(Ex::F(0.0)));
                    g.emit(Stmt::Store(*s, c.clone(), w));
                    let v = bin(Bin::AddF, g.get(lsum), Ex::Load(*s, bx(c)));
                    g.set(lsum, v);
                    Ok(())
                })?;
                g.set(lstat, bin(Bin::AddF, g.get(lstat), g.get(lsum)));
            }
            let add = |g: &mut Lower, c: Ex| -> R<()> {
                let j = g.bind("j", bin(Bin::AddI, j0.clone(), c.clone()));
                let saved = std::mem::replace(&mut g.slots[t.jp as usize], j.clone());
                for ((on, row), s) in ons.iter().zip(rows).zip(&ss) {
                    let w = g.bind("w", Ex::Load(*s, bx(c.clone())));
                    let mut of = row.of.clone();
                    of[t.r as usize] = j.clone();
                    g.accumulate(on, &of, &w)?;
                }
                g.slots[t.jp as usize] = saved;
                Ok(())
            };
            // A whole chunk with its keys unrolled (a loop over keys would
            // be vectorised across keys, gathering the values; unrolled,
            // each key's update is contiguous and its values are read once
            // for every row).
            g.if_else(
                bin(Bin::CmpI(Pred::Eq), n.clone(), Ex::I(chunk)),
                |g| g.each(chunk, add),
                |g| g.for_range("c", Ex::I(0), n.clone(), add),
            )
        })
    }

    /// Copies the `n` keys of the tile at `kt.t0` into `kt`, transposed
    /// (key `j`, head-dim index `e` at `e * pitch + (j - t0)`).
    fn stage_transposed(&mut self, kt: &KeyTile, t: &Template, n: &Ex) -> R<()> {
        let saved = self.slots.clone();
        self.for_range("jj", Ex::I(0), n.clone(), |g, jj| {
            g.slots[t.jp as usize] = g.bind("j", bin(Bin::AddI, kt.t0.clone(), jj.clone()));
            g.for_range("e", Ex::I(0), Ex::I(kt.e), |g, e| {
                g.slots[kt.slot as usize] = e.clone();
                let v = g.expr(kt.k)?;
                let v = g.to(v, Scalar::F32);
                let at = bin(Bin::AddI, bin(Bin::MulI, e, Ex::I(kt.pitch)), jj.clone());
                g.emit(Stmt::Store(kt.kt, at, v));
                Ok(())
            })
        })?;
        self.slots = saved;
        Ok(())
    }

    /// Each row's dot products with the `chunk` keys from `j0` (keys past
    /// the tile's copied ones hold stale numbers; the caller masks them):
    /// `ds[r][c] = sum(e) q(row r, e) * kt[e * pitch + (j0 - t0) + c]`.
    /// The head dimension is unrolled inside the loop over keys, so the
    /// host vectorises that loop: each step one vector of keys per row (a
    /// broadcast query element times a contiguous piece of `kt`).
    fn dots(
        &mut self,
        kt: &KeyTile,
        rows: &[Row],
        q: Slot,
        ds: &[Mem],
        j0: &Ex,
        chunk: i64,
    ) -> R<()> {
        let base = self.bind("kbase", bin(Bin::SubI, j0.clone(), kt.t0.clone()));
        let saved = self.slots.clone();
        let acc = self.register("dot", Scalar::F32);
        self.for_range("c", Ex::I(0), Ex::I(chunk), |g, c| {
            let at = g.bind("kat", bin(Bin::AddI, base.clone(), c.clone()));
            for (row, d) in rows.iter().zip(ds) {
                g.slots[q as usize] = row.i.clone();
                g.set(acc, Ex::F(0.0));
                for e in 0..kt.e {
                    g.slots[kt.slot as usize] = Ex::I(e);
                    let x = g.expr(kt.q)?;
                    let x = g.to(x, Scalar::F32);
                    let k = Ex::Load(kt.kt, bx(bin(Bin::AddI, at.clone(), Ex::I(e * kt.pitch))));
                    g.set(acc, bin(Bin::AddF, g.get(acc), bin(Bin::MulF, x, k)));
                }
                g.emit(Stmt::Store(*d, c.clone(), g.get(acc)));
            }
            Ok(())
        })?;
        self.slots = saved;
        Ok(())
    }

    /// `[lo, hi)` in pieces of `size` (the last one shorter): `f` gets
    /// each piece's start and length, both bound.
    fn pieces(
        &mut self,
        (name, size): (&str, i64),
        (lo, hi): (Ex, Ex),
        f: impl FnOnce(&mut Self, Ex, Ex) -> R<()>,
    ) -> R<()> {
        let len = bin(Bin::MaxI, bin(Bin::SubI, hi.clone(), lo.clone()), Ex::I(0));
        let count = bin(Bin::DivI, bin(Bin::AddI, len, Ex::I(size - 1)), Ex::I(size));
        let count = self.bind("pieces", count);
        self.for_range(name, Ex::I(0), count, |g, k| {
            let start = g.bind("start", bin(Bin::AddI, lo, bin(Bin::MulI, k, Ex::I(size))));
            let n = g.bind(
                "n",
                bin(Bin::MinI, Ex::I(size), bin(Bin::SubI, hi, start.clone())),
            );
            f(g, start, n)
        })
    }

    /// Where `m1` exceeds the row's maximum `m0`: the statistics and the
    /// accumulator scaled by `exp(m0 - m1)` and `m1` the new maximum.
    fn rescale(&mut self, on: &Online, m0: Ex, m1: Ex) -> R<()> {
        let (acc, mstat, lstat, nacc) = (on.acc, on.mstat, on.lstat, on.nacc);
        self.if_else(
            bin(Bin::CmpF(Pred::Gt), m1.clone(), m0.clone()),
            |g| {
                let corr = g.bind("corr", un(Un::Exp, bin(Bin::SubF, m0, m1.clone())));
                g.set(lstat, bin(Bin::MulF, g.get(lstat), corr.clone()));
                g.set(mstat, m1);
                g.each(nacc, |g, a| {
                    let v = bin(Bin::MulF, Ex::Load(acc, bx(a.clone())), corr.clone());
                    g.emit(Stmt::Store(acc, a, v));
                    Ok(())
                })
            },
            |_| Ok(()),
        )
    }

    /// `acc += w * rest(j, ..)`, in o's frame `of` (its key slot set).
    fn accumulate(&mut self, on: &Online, of: &[Ex], w: &Ex) -> R<()> {
        let acc = on.acc;
        self.in_frame(of, &on.frames, |g, flat| {
            let rest = g.expr(on.obody)?;
            let rest = g.to(rest, Scalar::F32);
            let v = bin(
                Bin::AddF,
                Ex::Load(acc, bx(flat.clone())),
                bin(Bin::MulF, w.clone(), rest),
            );
            g.emit(Stmt::Store(acc, flat, v));
            Ok(())
        })
    }

    /// Writes the row: `acc / l`, or 0 for a fully masked row.
    fn online_finish(&mut self, on: &Online, of: &[Ex]) -> R<()> {
        let l = self.bind("l", self.get(on.lstat));
        let some = self.bind("some", bin(Bin::CmpF(Pred::Gt), l.clone(), Ex::F(0.0)));
        let (acc, result) = (on.acc, on.result);
        let shape = on.shape_o.clone();
        self.in_frame(of, &on.frames, |g, flat| {
            let q = bin(Bin::DivF, Ex::Load(acc, bx(flat)), l.clone());
            let v = Ex::Select(bx(some.clone()), bx(q), bx(Ex::F(0.0)));
            g.store_result(result, &shape, v)
        })
    }
}

/// Accumulator loops up to this many elements are unrolled, so their
/// indices are constants and the accumulator is promoted to registers.
pub const UNROLL: i64 = 128;

/// The two frames of the attention template: extents of p's and o's
/// slots, and the accumulator's axes (o slots).
struct Frames {
    pf_ext: Vec<Ex>,
    of_ext: Vec<Ex>,
    acc_axes: Vec<Slot>,
}

impl Lower<'_> {
    /// Runs `f` in o's frame `of` for every element of the accumulator,
    /// with its flat index; p's frame is restored after.
    fn in_frame(
        &mut self,
        of: &[Ex],
        fr: &Frames,
        mut f: impl FnMut(&mut Self, Ex) -> R<()>,
    ) -> R<()> {
        let saved = (
            std::mem::replace(&mut self.slots, of.to_vec()),
            std::mem::replace(&mut self.extents, fr.of_ext.clone()),
            std::mem::take(&mut self.unrolled),
        );
        let axes = fr.acc_axes.clone();
        let consts: Option<Vec<i64>> = axes
            .iter()
            .map(|s| match self.extents[*s as usize] {
                Ex::I(v) => Some(v),
                _ => None,
            })
            .collect();
        let r = match consts {
            // Unrolled: every accumulator index is a constant, so the
            // accumulator lives in registers.
            Some(ext) if ext.iter().product::<i64>() <= UNROLL => {
                let total: i64 = ext.iter().product();
                let mut r = Ok(());
                for flat in 0..total {
                    let mut rem = flat;
                    for (s, e) in axes.iter().zip(&ext).rev() {
                        self.slots[*s as usize] = Ex::I(rem % e);
                        rem /= e;
                    }
                    r = f(self, Ex::I(flat));
                    if r.is_err() {
                        break;
                    }
                }
                r
            }
            _ => self.loops(&axes, &mut |g| {
                let mut flat = Ex::I(0);
                for s in &axes {
                    let e = g.extents[*s as usize].clone();
                    flat = bin(
                        Bin::AddI,
                        bin(Bin::MulI, flat, e),
                        g.slots[*s as usize].clone(),
                    );
                }
                let flat = g.bind("flat", flat);
                f(g, flat)
            }),
        };
        self.slots = saved.0;
        self.extents = saved.1;
        self.unrolled = saved.2;
        r
    }

    /// Stores `v` (as f32) at the current result indices of `result`.
    fn store_result(&mut self, result: ir::ValueId, shape: &[DimExpr], v: Ex) -> R<()> {
        let v = self.to(v, Scalar::F32);
        let idx: Vec<Ex> = (0..shape.len()).map(|s| self.slots[s].clone()).collect();
        let off = self.offset(shape, &idx)?;
        self.emit(Stmt::Store(Mem::Value(result.0), off, v));
        Ok(())
    }

    /// `f(a)` for `a` in `0..n`: unrolled up to [`UNROLL`], else a loop.
    fn each(&mut self, n: i64, mut f: impl FnMut(&mut Self, Ex) -> R<()>) -> R<()> {
        if n <= UNROLL {
            for a in 0..n {
                f(self, Ex::I(a))?;
            }
            Ok(())
        } else {
            self.for_range("a", Ex::I(0), Ex::I(n), f)
        }
    }

    /// A linear mask bound `c + sum(k * term)`, terms in the current frame.
    fn lin(&mut self, l: &mixc_compiler::pattern::attention::Lin) -> R<Ex> {
        let mut acc = Ex::I(l.c);
        for (k, t) in &l.terms {
            let v = self.expr(*t)?;
            let v = self.to(v, Scalar::I64);
            acc = bin(Bin::AddI, acc, bin(Bin::MulI, v, Ex::I(*k)));
        }
        Ok(self.bind("bound", acc))
    }
}

/// Threads per block of every generic-path kernel.
pub const BLOCK: u32 = 256;

/// How many threads op `o`'s kernel needs: one per result element, less
/// the scanned axis (each thread walks it).
pub fn threads(op: &ir::Op) -> DimExpr {
    use mixc_dsl::typed::DimOp;
    (0..op.rank)
        .filter(|s| Some(*s) != op.recurrence)
        .fold(DimExpr::Const(1), |acc, s| match acc {
            DimExpr::Const(1) => op.slots[s].extent.clone(),
            acc => DimExpr::bin(DimOp::Mul, acc, op.slots[s].extent.clone()),
        })
}

/// The grid for `threads` threads: enough blocks of [`BLOCK`].
pub fn grid(threads: DimExpr) -> DimExpr {
    use mixc_dsl::typed::DimOp;
    let b = i64::from(BLOCK);
    DimExpr::bin(
        DimOp::FloorDiv,
        DimExpr::bin(DimOp::Add, threads, DimExpr::Const(b - 1)),
        DimExpr::Const(b),
    )
}
