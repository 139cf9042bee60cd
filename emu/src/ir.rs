//! The decoded form a kernel runs from: registers are flat slots, labels
//! instruction indices, and every operand pre-decoded.

use crate::float::Rnd;

/// A source operand.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Src {
    Reg(u32),
    Imm(u64),
    /// The address of the module's global variable with this index (known
    /// once the module is loaded).
    Glob(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    Global,
    Shared,
    Local,
    /// A generic address: the window it falls in says which space.
    Generic,
}

/// Where the shared and local state spaces appear in generic addresses
/// (`cvta.shared`, `cvta.local`); global addresses are generic as they
/// are.
pub const SHARED_WINDOW: u64 = 0x1000_0000_0000;
pub const LOCAL_WINDOW: u64 = 0x2000_0000_0000;
/// Each window's size.
pub const WINDOW: u64 = 1 << 32;

/// A scalar type: unsigned, signed or untyped bits of a width, or a float.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    U(u8),
    S(u8),
    B(u8),
    F16,
    Bf16,
    F32,
    F64,
    Pred,
}

impl Ty {
    pub fn parse(s: &str) -> Option<Ty> {
        Some(match s {
            "u8" => Ty::U(8),
            "u16" => Ty::U(16),
            "u32" => Ty::U(32),
            "u64" => Ty::U(64),
            "s8" => Ty::S(8),
            "s16" => Ty::S(16),
            "s32" => Ty::S(32),
            "s64" => Ty::S(64),
            "b8" => Ty::B(8),
            "b16" => Ty::B(16),
            "b32" => Ty::B(32),
            "b64" => Ty::B(64),
            "f16" => Ty::F16,
            "bf16" => Ty::Bf16,
            "f32" => Ty::F32,
            "f64" => Ty::F64,
            "pred" => Ty::Pred,
            _ => return None,
        })
    }

    pub fn bits(self) -> u8 {
        match self {
            Ty::U(w) | Ty::S(w) | Ty::B(w) => w,
            Ty::F16 | Ty::Bf16 => 16,
            Ty::F32 => 32,
            Ty::F64 => 64,
            Ty::Pred => 1,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, Ty::F16 | Ty::Bf16 | Ty::F32 | Ty::F64)
    }

    pub fn is_signed(self) -> bool {
        matches!(self, Ty::S(_))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Equ,
    Neu,
    Ltu,
    Leu,
    Gtu,
    Geu,
    Num,
    Nan,
}

impl Cmp {
    pub fn parse(s: &str) -> Option<Cmp> {
        Some(match s {
            "eq" => Cmp::Eq,
            "ne" => Cmp::Ne,
            "lt" | "lo" => Cmp::Lt,
            "le" | "ls" => Cmp::Le,
            "gt" | "hi" => Cmp::Gt,
            "ge" | "hs" => Cmp::Ge,
            "equ" => Cmp::Equ,
            "neu" => Cmp::Neu,
            "ltu" => Cmp::Ltu,
            "leu" => Cmp::Leu,
            "gtu" => Cmp::Gtu,
            "geu" => Cmp::Geu,
            "num" => Cmp::Num,
            "nan" => Cmp::Nan,
            _ => return None,
        })
    }
}

/// A floating-point operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FOp {
    Add,
    Sub,
    Mul,
    Fma,
    Div,
    Min,
    Max,
    Abs,
    Neg,
    Rcp,
    Sqrt,
    Ex2,
    Rsqrt,
    Lg2,
    Sin,
    Cos,
    Tanh,
}

/// A conversion (`cvt`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cvt {
    pub dst: Ty,
    pub src: Ty,
    /// `.rn`, `.rz`, ...: rounding to a float.
    pub rnd: Option<Rnd>,
    /// `.rni`, `.rzi`, ...: rounding to an integral value.
    pub irnd: Option<Rnd>,
    pub sat: bool,
    pub ftz: bool,
}

/// A lane-wise operation: `d = f(a, b, c)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Alu {
    Mov,
    Add(u8),
    Sub(u8),
    MulLo(u8),
    MulHi(u8, bool),
    MulWide(u8, bool),
    MadLo(u8),
    MadWide(u8, bool),
    Div(u8, bool),
    Rem(u8, bool),
    Min(u8, bool),
    Max(u8, bool),
    Abs(u8),
    Neg(u8),
    And(u8),
    Or(u8),
    Xor(u8),
    Not(u8),
    Shl(u8),
    Shr(u8, bool),
    Bfe(u8, bool),
    Popc(u8),
    /// `prmt.b32` (the default mode): bytes of `{b, a}` picked by `c`.
    Prmt,
    Shf {
        left: bool,
        wrap: bool,
    },
    Setp(Cmp, Ty, bool),
    Selp,
    Cvt(Cvt),
    /// `mov.b{2w} d, {a, b}`: `a` in the low `w` bits, `b` above.
    Pack(u8),
    /// `cvt.rn.{bf16x2,f16x2}.f32 d, a, b`: `a` rounded into the upper
    /// half, `b` into the lower (bf16 when true).
    CvtPack(bool),
    F32(FOp, Rnd, bool, bool),
    F64(FOp, Rnd),
    /// f16 (false) or bf16 (true) arithmetic, rounded to nearest-even.
    H(FOp, bool),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShflMode {
    Bfly,
    Up,
    Down,
    Idx,
}

#[derive(Clone, Debug, PartialEq)]
pub enum WgA {
    Desc(Src),
    Regs([Src; 4]),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Alu {
        f: Alu,
        d: u32,
        s: [Src; 3],
    },
    /// `mad{c}.{lo,hi}{.cc}.u32`: the carry chain.
    MadCc {
        hi: bool,
        carry_in: bool,
        carry_out: bool,
        d: u32,
        s: [Src; 3],
    },
    Ld {
        space: Space,
        bytes: u8,
        n: u8,
        d: [u32; 4],
        base: Src,
        off: i64,
        /// `.nc`: through the non-coherent (read-only) cache.
        nc: bool,
    },
    LdParam {
        d: u32,
        off: u32,
        bytes: u8,
    },
    /// `mov.b{2w} {a, b}, s`: the low `w` bits of `s` into `a`, the next
    /// `w` into `b`.
    Unpack {
        d: [u32; 2],
        s: Src,
        w: u8,
    },
    St {
        space: Space,
        bytes: u8,
        n: u8,
        s: [Src; 4],
        base: Src,
        off: i64,
    },
    Bra {
        target: u32,
    },
    Exit,
    Bar {
        id: Src,
    },
    Shfl {
        mode: ShflMode,
        d: u32,
        p: Option<u32>,
        a: Src,
        b: Src,
        c: Src,
        mask: Src,
    },
    Mma {
        bf16: bool,
        d: [u32; 4],
        a: [Src; 4],
        b: [Src; 2],
        c: [Src; 4],
    },
    WgFence,
    WgCommit,
    WgWait(u32),
    FenceProxyAsync,
    Wgmma {
        n: u32,
        bf16: bool,
        d: Vec<u32>,
        a: WgA,
        b: Src,
        scale_d: Src,
        neg_a: bool,
        neg_b: bool,
    },
}

impl Op {
    /// Whether every lane of the warp must execute it together.
    pub fn collective(&self) -> bool {
        matches!(
            self,
            Op::Bar { .. }
                | Op::Shfl { .. }
                | Op::Mma { .. }
                | Op::WgFence
                | Op::WgCommit
                | Op::WgWait(_)
                | Op::Wgmma { .. }
        )
    }
}

#[derive(Clone, Debug)]
pub struct Instr {
    pub op: Op,
    /// `@%p` (false) or `@!%p` (true).
    pub guard: Option<(u32, bool)>,
    pub line: u32,
    pub text: String,
}

#[derive(Clone, Debug)]
pub struct Param {
    pub name: String,
    pub offset: u32,
    pub bytes: u32,
}

#[derive(Clone, Debug)]
pub struct SharedVar {
    pub name: String,
    pub offset: u32,
    pub bytes: u32,
}

/// Slots of the special registers, in this order: tid.{x,y,z},
/// ntid.{x,y,z}, ctaid.{x,y,z}, nctaid.{x,y,z}, laneid, warpid.
pub const SPECIALS: [&str; 14] = [
    "%tid.x",
    "%tid.y",
    "%tid.z",
    "%ntid.x",
    "%ntid.y",
    "%ntid.z",
    "%ctaid.x",
    "%ctaid.y",
    "%ctaid.z",
    "%nctaid.x",
    "%nctaid.y",
    "%nctaid.z",
    "%laneid",
    "%warpid",
];

/// The slot that holds the carry flag of `.cc` instructions.
pub const CC_SLOT: u32 = SPECIALS.len() as u32;

#[derive(Clone, Debug)]
pub struct Kernel {
    pub name: String,
    pub params: Vec<Param>,
    pub param_bytes: u32,
    /// Register slots (special registers and the carry flag first).
    pub slots: u32,
    /// The name of every slot, for messages.
    pub reg_names: Vec<String>,
    pub code: Vec<Instr>,
    pub shared: Vec<SharedVar>,
    /// Static shared memory, bytes.
    pub shared_bytes: u32,
    /// Per-thread local memory (`.local` arrays), bytes.
    pub local_bytes: u32,
    pub maxntid: Option<[u32; 3]>,
}

#[derive(Clone, Debug)]
pub struct GlobalVar {
    pub name: String,
    pub align: u32,
    pub init: Vec<u8>,
}

/// A parsed PTX module.
#[derive(Clone, Debug)]
pub struct Module {
    pub target: String,
    pub kernels: Vec<Kernel>,
    pub globals: Vec<GlobalVar>,
}

impl Module {
    pub fn kernel(&self, name: &str) -> Option<&Kernel> {
        self.kernels.iter().find(|k| k.name == name)
    }
}
