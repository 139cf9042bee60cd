//! The cost model: a roofline per kernel for a device profile.
//!
//! A kernel's time is `max(flops / peak, bytes / bandwidth) + launch`, where
//! `bytes` counts device memory only: each value a kernel reads is read once
//! and its result is written once; intermediates inside a fused kernel stay
//! on chip. Matrix-like work (contractions, attention) runs at
//! `peak_flops`; other arithmetic at `elementwise_flops`. Profiles are data
//! files in `compiler/opt/profiles/`.

use mixc_compiler::ir::{DimExpr, ExprId, Module, Node, OpKind, RedOp, ValueId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A device: peak rates and the tile sizes its attention kernels use.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Profile {
    pub name: String,
    pub description: String,
    pub dtype: String,
    pub dtype_bytes: f64,
    pub peak_flops: f64,
    pub elementwise_flops: f64,
    pub bandwidth: f64,
    pub launch_seconds: f64,
    pub tile_q: usize,
    pub tile_k: usize,
    /// Latency of one dependent step of a sequential scan (a grid-wide
    /// dependency on GPU, a loop iteration on CPU).
    pub scan_step_seconds: f64,
    /// Chunk length of the chunked scan.
    pub scan_chunk: usize,
    /// Outputs per block of the device's FFT convolution, where it is
    /// blocked (the GPU template: transforms of `2 fft_block` points, an
    /// output block summing one per filter block that reaches it); none
    /// where one transform covers the whole padded length (the host).
    #[serde(default)]
    pub fft_block: Option<usize>,
    /// The schedule target its kernels are built for: `host` or `gpu`.
    pub target: String,
    /// A GPU's architecture (`90` for sm_90): what its kernels are built
    /// for unless told otherwise (`mixc explain --target`).
    #[serde(default)]
    pub sm: Option<u32>,
    /// A GPU's streaming multiprocessors (four schedulers each) and the
    /// clock its nominal tensor rate is quoted at: what machine-code
    /// estimates (`--report`) turn instructions issued into time with.
    #[serde(default)]
    pub sms: Option<u32>,
    #[serde(default)]
    pub clock_hz: Option<f64>,
}

const PROFILES: &[(&str, &str)] = &[
    ("h100", include_str!("../profiles/h100.json")),
    ("h200", include_str!("../profiles/h200.json")),
    ("cpu", include_str!("../profiles/cpu.json")),
];

impl Profile {
    /// A built-in profile by name (`h100`, `h200`, `cpu`).
    pub fn named(name: &str) -> Result<Profile, String> {
        let (_, text) = PROFILES
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| format!("no device profile `{name}` (known: h100, h200, cpu)"))?;
        serde_json::from_str(text).map_err(|e| format!("profile `{name}`: {e}"))
    }

    pub fn names() -> Vec<&'static str> {
        PROFILES.iter().map(|(n, _)| *n).collect()
    }

    /// Roofline time of work with this many matrix and elementwise flops and bytes.
    pub fn time(&self, w: &Work) -> f64 {
        let compute = w.matrix_flops / self.peak_flops + w.other_flops / self.elementwise_flops;
        compute
            .max(w.bytes / self.bandwidth)
            .max(w.steps * self.scan_step_seconds)
            + self.launch_seconds * w.launches
    }
}

/// Work of a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Work {
    /// Flops executed on the matrix units (contractions, attention).
    pub matrix_flops: f64,
    /// Other flops.
    pub other_flops: f64,
    /// Device-memory bytes moved.
    pub bytes: f64,
    /// Dependent sequential steps (scans).
    pub steps: f64,
    /// Kernel launches (a share of one, for a member of a merged kernel).
    pub launches: f64,
}

impl Default for Work {
    fn default() -> Work {
        Work {
            matrix_flops: 0.0,
            other_flops: 0.0,
            bytes: 0.0,
            steps: 0.0,
            launches: 1.0,
        }
    }
}

impl Work {
    pub fn flops(&self) -> f64 {
        self.matrix_flops + self.other_flops
    }
}

/// Sizes bound for costing, with the element size.
pub struct Ctx<'a> {
    pub m: &'a Module,
    pub sizes: &'a BTreeMap<String, i64>,
    pub profile: &'a Profile,
    /// Mask walks by softmax op, tiled slot and tile (query rows, keys),
    /// computed once.
    #[allow(clippy::type_complexity)]
    pub tiles: std::cell::RefCell<
        std::collections::HashMap<
            (usize, usize, usize, usize),
            Result<Option<mixc_compiler::tiles::Walk>, String>,
        >,
    >,
}

impl Ctx<'_> {
    pub fn dim(&self, d: &DimExpr) -> f64 {
        d.eval(self.sizes).unwrap_or(1) as f64
    }

    pub fn elems(&self, v: ValueId) -> f64 {
        self.m.value(v).shape.iter().map(|d| self.dim(d)).product()
    }

    pub fn value_bytes(&self, v: ValueId) -> f64 {
        self.elems(v) * self.profile.dtype_bytes
    }

    /// Arithmetic nodes in an expression (each one flop per evaluation).
    pub fn arith(&self, e: ExprId) -> f64 {
        let own = match &self.m.expr(e).node {
            Node::Unary(..) | Node::Binary(..) | Node::Call(..) | Node::Guard(..) => 1.0,
            _ => 0.0,
        };
        own + self
            .m
            .children(e)
            .into_iter()
            .map(|c| self.arith(c))
            .sum::<f64>()
    }

    /// Work of op `o` evaluated directly, as written.
    pub fn direct(&self, o: usize, operands: &[ValueId]) -> Work {
        let op = &self.m.ops[o];
        let out: f64 = op.slots[..op.rank]
            .iter()
            .map(|s| self.dim(&s.extent))
            .product();
        let inner: f64 = op.slots[op.rank..]
            .iter()
            .map(|s| self.dim(&s.extent))
            .product();
        let body = self.m.expr(op.body);
        let per = self.arith(op.body).max(1.0);
        // A reduction guarded by `t <= l` (a triangle) does about half its terms.
        let kept = match &body.node {
            Node::Reduce { guard: Some(_), .. } => 0.5,
            _ => 1.0,
        };
        let iters = out * inner.max(1.0) * kept;
        let reads: f64 = operands.iter().map(|v| self.value_bytes(*v)).sum();
        let bytes = reads + self.value_bytes(op.result);
        match op.kind {
            // A multiply and an add per term; scalar factors are hoisted.
            OpKind::Contract => Work {
                matrix_flops: iters * 2.0,
                bytes,
                ..Work::default()
            },
            OpKind::Normalize => Work {
                other_flops: out * (per + 4.0),
                bytes,
                ..Work::default()
            },
            OpKind::Scan => Work {
                other_flops: iters * per,
                bytes,
                steps: op
                    .recurrence
                    .map(|a| self.dim(&op.slots[a].extent))
                    .unwrap_or(1.0),
                ..Work::default()
            },
            _ => Work {
                other_flops: iters * per,
                bytes,
                ..Work::default()
            },
        }
    }

    /// Work of op `o`, a causal convolution, by FFT: three real FFTs of
    /// length `2n` per (batch, channel) row and a pointwise product; with
    /// `block` (the schedule's blocked form; else the profile's
    /// `fft_block`), the blocked form's transforms.
    pub fn fft_conv(&self, o: usize, operands: &[ValueId], block: Option<i64>) -> Work {
        let op = &self.m.ops[o];
        let (axis_len, rows) = conv_axis(self, o);
        let fft = |n: f64| 2.5 * n * n.log2().max(1.0);
        let reads: f64 = operands.iter().map(|v| self.value_bytes(*v)).sum();
        let block = block.map(|b| b as usize).or(self.profile.fft_block);
        let per_row = match block {
            Some(b) if axis_len > b as f64 => {
                // Blocked: one complex transform (window and filter block
                // packed) and a product per term, one inverse per block.
                let n = 2.0 * b as f64;
                let blocks = (axis_len / b as f64).ceil();
                let terms = blocks * (blocks + 1.0) / 2.0;
                terms * (fft(n) + 6.0 * n) + blocks * fft(n)
            }
            _ => {
                let n = 2.0 * axis_len;
                3.0 * fft(n) + 6.0 * n
            }
        };
        Work {
            other_flops: rows * per_row,
            bytes: reads + self.value_bytes(op.result),
            ..Work::default()
        }
    }
}

/// The length of a convolution's sequence axis and the number of rows along it.
pub fn conv_axis(c: &Ctx, o: usize) -> (f64, f64) {
    let op = &c.m.ops[o];
    let out: f64 = op.slots[..op.rank]
        .iter()
        .map(|s| c.dim(&s.extent))
        .product();
    // The result slot that appears in `s - t` is the conv axis.
    let mut axis = None;
    if let Node::Reduce {
        op: RedOp::Sum,
        guard: Some(g),
        ..
    } = &c.m.expr(op.body).node
    {
        if let Node::Binary(_, _, rhs) = &c.m.expr(*g).node {
            if let Node::Index(s) = c.m.expr(*rhs).node {
                axis = Some(s as usize);
            }
        }
    }
    let len = axis.map(|a| c.dim(&op.slots[a].extent)).unwrap_or(1.0);
    (len, out / len.max(1.0))
}

/// Work of a linear-attention scan (`state` op `s`, readout op `r`) with the
/// state kept on chip. `chunked`: quadratic within chunks of the profile's
/// chunk length on the matrix units, the state carried between chunks;
/// otherwise one sequential step per position.
pub fn linear_scan(c: &Ctx, s: usize, r: usize, reads: &[ValueId], chunked: bool) -> Work {
    let op_s = &c.m.ops[s];
    let axis = op_s.recurrence.unwrap_or(0);
    let len = c.dim(&op_s.slots[axis].extent);
    let state = c.elems(op_s.result); // all positions x state size
    let bytes =
        reads.iter().map(|v| c.value_bytes(*v)).sum::<f64>() + c.value_bytes(c.m.ops[r].result);
    if chunked {
        let chunk = (c.profile.scan_chunk as f64).min(len).max(1.0);
        // Per position: the in-chunk quadratic part (about chunk/2 keys, a
        // dot product and an accumulation each) and the state readout and
        // update on the matrix units.
        let out = c.elems(c.m.ops[r].result);
        let e = state / out.max(1.0);
        let quadratic = out * chunk * (2.0 * e + 2.0);
        Work {
            matrix_flops: quadratic + 4.0 * state / chunk.max(1.0) * chunk,
            bytes: bytes + state / len.max(1.0) * (len / chunk) * c.profile.dtype_bytes,
            steps: (len / chunk).ceil(),
            ..Work::default()
        }
    } else {
        Work {
            other_flops: 4.0 * state,
            bytes,
            steps: len,
            ..Work::default()
        }
    }
}
