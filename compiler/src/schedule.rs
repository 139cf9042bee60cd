//! The schedule: which kernels a module runs as on a target, in launch
//! order, each with the IR ops it covers. This is the one place where
//! "whether to fuse" and "which algorithm" are decided; the back ends
//! lower each [`Schedule`] node (choosing only how: registers or shared
//! tiles, `mma.sync` or `wgmma`), the bundle manifest lists the same
//! kernels with the same ids, and `mixc explain` prices and prints them.
//!
//! The mid-end runs first, so every consumer sees one module: sums under
//! elementwise functions hoisted into ops of their own
//! ([`crate::passes::hoist`]), causal linear attention rewritten as a scan
//! where the scan-with-readout template takes it
//! ([`crate::passes::linear_scan`]), and, on the host, long convolutions
//! hoisted for the runtime's FFT library ([`crate::passes::conv`]). Each
//! of those passes states the equivalence it claims; the tests check them
//! by interpretation.

use crate::ir::verify::VerifyError;
use crate::ir::{Module, ValueDef, ValueId};
use crate::passes::conv::{self, LongConv};
use crate::passes::linear_scan;
use crate::pattern::attention::{absorbed_by, plan as attention_templates, Template};
use crate::pattern::scan::{readout, StateScan};
use crate::pattern::tiling::{matrix_tiling, tiling, MatrixTiling, Tiling};
use mixc_runtime::fft::ConvSpec;
pub use mixc_runtime::Dtype;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The kind of machine a schedule is for: what templates exist there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The host: kernel IR lowered through MLIR to loop nests on CPU
    /// threads; the runtime's FFT library for long convolutions and its
    /// GEMM for matrix products.
    Host,
    /// A GPU: kernels through kernel IR; attention needs an accumulator of
    /// constant size (it lives in registers), long convolutions run as a
    /// blocked FFT kernel. The architecture and the activations' storage
    /// decide the attention form (tensor cores or not, the tiles).
    Gpu(Gpu),
}

/// A GPU target: its architecture (`80` for sm_80) and how activations
/// are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gpu {
    pub sm: u32,
    pub dtype: Dtype,
}

impl Gpu {
    /// `sm_80`, as `mixc build --target` names it.
    pub fn sm_name(&self) -> String {
        format!("sm_{}", self.sm)
    }

    /// The GPU of `--target sm_NN` with activations stored as `dtype`.
    pub fn parse(sm: &str, dtype: Dtype) -> Option<Gpu> {
        let sm = sm.strip_prefix("sm_")?.parse().ok()?;
        Some(Gpu { sm, dtype })
    }
}

impl Target {
    pub fn is_gpu(self) -> bool {
        matches!(self, Target::Gpu(_))
    }
}

/// How one kernel computes its value.
#[derive(Clone, Debug)]
pub enum Schedule {
    /// Op `o` as written, one loop nest over its elements (a contraction
    /// may be accumulated by rows or blocked through shared memory: how,
    /// not what).
    Generic(usize),
    /// An attention chain as one kernel with an online softmax: the scores
    /// and probabilities are never written; on a GPU, in the given form
    /// and tiles (the host's form is [`Tiling::RowChunks`]).
    Attention(Template, Tiling),
    /// A long convolution by the runtime's FFT library (host).
    FftConv(usize, Box<ConvSpec>),
    /// A matrix product by the runtime's GEMM library (host): a
    /// contraction whose two sides are single reads.
    Gemm(usize, Box<mixc_runtime::gemm::GemmSpec>),
    /// A long convolution as a blocked FFT kernel, with the rest of the
    /// op's body applied before the store (GPU): blocks of up to the given
    /// number of outputs ([`GPU_FFT_BLOCK`]).
    BlockedFft(usize, Box<LongConv>, i64),
    /// Op `o`, a contraction that is a matrix product, blocked through
    /// shared memory with the given tiles and tensor cores (GPUs). It is
    /// named `generic` too: the op as written, tiled.
    Matrix(usize, Box<MatrixTiling>),
    /// A scan and its one reader, the state on chip (never written), in
    /// the given form.
    StateScan(StateScan, ScanForm),
}

/// How a scan + readout runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanForm {
    /// Step after step along time.
    Sequential,
    /// In chunks of time: each chunk composes its affine steps, the chunks'
    /// states pass from chunk to chunk, each chunk replays (GPUs, where
    /// [`crate::pattern::scan::chunkable`]).
    Chunked,
    /// Step after step along time, a thread taking this many neighbouring
    /// columns of the innermost column axis (the host: the columns are a
    /// vector's lanes, each time step reads one contiguous run; with one,
    /// the state's loops are vectorised instead).
    Lanes(i64),
}

/// Outputs a block of the GPU's blocked FFT convolution computes: one
/// `2 GPU_FFT_BLOCK`-point transform per filter block that reaches it.
pub const GPU_FFT_BLOCK: i64 = 2048;

/// Keys a host attention row takes at a time: 16 scores are one AVX-512
/// vector (two AVX2 ones) of exponentials, and one rescale per 16 keys.
pub const HOST_KEY_CHUNK: i64 = 16;

/// Query rows a host attention thread takes: each key's operands are read
/// once for all of them (from memory for the first, from L1 after), and
/// four rows' accumulators at head dim 64 are 16 AVX-512 registers.
pub const HOST_ATTENTION_ROWS: i64 = 4;

/// Groups of [`HOST_ATTENTION_ROWS`] a host attention thread takes, and
/// the keys of a tile they all walk before the next: 64 query rows share
/// each key tile's operands (256 keys of K and V at head dim 64 are 128
/// KiB, in L2), where 4 rows alone streamed them from L3.
pub const HOST_ATTENTION_GROUPS: i64 = 16;
pub const HOST_KEY_TILE: i64 = 256;

/// Columns a host scan thread takes (`ScanForm::Lanes`): one AVX-512
/// vector of f32.
pub const HOST_SCAN_LANES: i64 = 16;

/// The largest state (per column) the host's lanes form takes: Mamba's 16
/// per channel gains 3x (16 lanes of state, 1 KiB, in L1); a 128-element
/// matrix state (RetNet) is faster a column at a time (`Lanes(1)`), its
/// loops vectorised along the state.
pub const HOST_SCAN_LANE_STATE: i64 = 32;

/// Chunks of time each column of a GPU chunked scan splits into.
pub const GPU_SCAN_CHUNKS: i64 = 8;

impl Schedule {
    /// The op whose value the kernel writes.
    pub fn op(&self) -> usize {
        match self {
            Schedule::Generic(o)
            | Schedule::Matrix(o, _)
            | Schedule::FftConv(o, _)
            | Schedule::Gemm(o, _)
            | Schedule::BlockedFft(o, ..) => *o,
            Schedule::Attention(t, _) => t.o,
            Schedule::StateScan(ss, _) => ss.o,
        }
    }

    /// A short name, the same in `mixc explain`, the manifest and the
    /// runner's profile.
    pub fn name(&self) -> &'static str {
        match self {
            Schedule::Generic(_) | Schedule::Matrix(..) => "generic",
            Schedule::Attention(..) => "fused attention",
            Schedule::FftConv(..) => "fft conv (library)",
            Schedule::Gemm(..) => "gemm (library)",
            Schedule::BlockedFft(..) => "blocked fft conv",
            Schedule::StateScan(_, ScanForm::Sequential | ScanForm::Lanes(_)) => "scan + readout",
            Schedule::StateScan(_, ScanForm::Chunked) => "chunked scan + readout",
        }
    }

    /// The parameters the back end lowers it with, for `mixc explain` and
    /// the manifest: the attention form and tiles, the FFT block, the
    /// scan's chunks; empty where there are none.
    pub fn form(&self) -> String {
        match self {
            Schedule::Attention(_, t) => t.describe(),
            Schedule::Matrix(_, t) => t.describe(),
            Schedule::BlockedFft(_, _, b) => format!("blocks of up to {b} outputs"),
            Schedule::StateScan(_, ScanForm::Chunked) => {
                format!("{GPU_SCAN_CHUNKS} chunks of time")
            }
            Schedule::StateScan(_, ScanForm::Lanes(1)) => {
                "a column a thread, the state's loops vectorised".into()
            }
            Schedule::StateScan(_, ScanForm::Lanes(w)) => {
                format!("{w} columns a thread (vector lanes), time outermost")
            }
            Schedule::Gemm(..) => "matrixmultiply sgemm".into(),
            Schedule::Generic(_) | Schedule::FftConv(..) | Schedule::StateScan(..) => String::new(),
        }
    }

    /// The ops the kernel computes, the written one last: for attention
    /// the chain's ops it absorbs, for a scan + readout the scan.
    pub fn covers(&self, absorbed: &BTreeSet<usize>) -> Vec<usize> {
        match self {
            Schedule::Attention(t, _) => {
                let mut v: Vec<usize> = t
                    .inlined
                    .iter()
                    .copied()
                    .filter(|x| absorbed.contains(x))
                    .collect();
                v.push(t.p);
                v.push(t.o);
                v
            }
            Schedule::StateScan(ss, _) => vec![ss.s, ss.o],
            k => vec![k.op()],
        }
    }
}

/// A module's schedule on a target.
#[derive(Clone, Debug)]
pub struct Scheduled {
    /// The module after the mid-end: the input's values first, in order
    /// (passes append values and may insert ops).
    pub module: Module,
    /// The kernels in launch order.
    pub kernels: Vec<Schedule>,
    /// The ops that get no kernel and no buffer (absorbed by a template,
    /// or dead).
    pub absorbed: BTreeSet<usize>,
    /// Values the mid-end's rewrites claim equal (the value the module
    /// now computes, and the one the rewritten op still computes, dead):
    /// interpreting [`Scheduled::module`] computes both, and the tests
    /// check each claim.
    pub claims: Vec<(ValueId, ValueId)>,
    /// Merged projections: each merged contraction and its members.
    pub merged: Vec<(ValueId, Vec<ValueId>)>,
}

/// The schedule of `m` on `target`, with `consts` the sizes fixed at build
/// time (a scan's state and a GPU attention accumulator must have a
/// constant size). Without `templates` (a test-only cross-check), every op
/// is its own generic kernel of the unchanged module.
pub fn schedule(
    m: &Module,
    target: Target,
    templates: bool,
    consts: &BTreeMap<String, i64>,
) -> Result<Scheduled, VerifyError> {
    if !templates {
        return Ok(Scheduled {
            module: m.clone(),
            kernels: (0..m.ops.len()).map(Schedule::Generic).collect(),
            absorbed: BTreeSet::new(),
            claims: Vec::new(),
            merged: Vec::new(),
        });
    }
    let options = crate::passes::Options {
        library_fft: target == Target::Host,
        merge_projections: target.is_gpu(),
        gemm_sides: target == Target::Host,
    };
    let mid = crate::passes::pipeline(m, options, consts)?;
    let (m, claims, merged) = (mid.module, mid.claims, mid.merged);
    let mut convs = match target {
        Target::Host => conv::library_specs(&m),
        Target::Gpu(_) => BTreeMap::new(),
    };
    let (mut ts, _) = attention_templates(&m);
    // The accumulator lives in registers: its size must be constant.
    ts.retain(|t| {
        t.acc
            .iter()
            .all(|s| m.ops[t.o].slots[*s as usize].extent.eval(consts).is_ok())
    });
    let mut absorbed = absorbed_by(&m, &ts);
    let dead = linear_scan::dead_ops(&m);
    absorbed.extend(dead.iter().copied());
    let by_o: HashMap<usize, Template> = ts.into_iter().map(|t| (t.o, t)).collect();
    let storage = match target {
        Target::Gpu(g) => value_dtypes(&m, g.dtype),
        _ => Vec::new(),
    };
    let ks = (0..m.ops.len())
        .filter(|o| !absorbed.contains(o))
        .map(|o| match (by_o.get(&o), convs.remove(&o)) {
            (Some(t), _) => Schedule::Attention(
                t.clone(),
                match target {
                    Target::Gpu(g) => tiling(&m, t, consts, &storage, &g.sm_name()),
                    Target::Host => Tiling::RowChunks {
                        rows: HOST_ATTENTION_ROWS,
                        keys: HOST_KEY_CHUNK,
                        groups: HOST_ATTENTION_GROUPS,
                        tile: HOST_KEY_TILE,
                        transposed: (HOST_ATTENTION_GROUPS > 1)
                            .then(|| crate::pattern::tiling::host_score(&m, t, consts))
                            .flatten()
                            .map(Box::new),
                    },
                },
            ),
            (None, Some(c)) => Schedule::FftConv(o, Box::new(c)),
            (None, None) => Schedule::Generic(o),
        })
        .collect();
    let (ks, absorbed) = splice(&m, consts, ks, absorbed);
    let ks = match target {
        // Matrix products of single reads by the runtime's GEMM library;
        // scans with their innermost columns in vector lanes.
        Target::Host => ks
            .into_iter()
            .map(|k| match k {
                Schedule::Generic(o) => match crate::pattern::contract::gemm_spec(&m, o, consts) {
                    Some(g) => Schedule::Gemm(o, Box::new(g)),
                    None => Schedule::Generic(o),
                },
                Schedule::StateScan(ss, ScanForm::Sequential) => {
                    let inner = ss
                        .columns(&m)
                        .last()
                        .and_then(|s| m.ops[ss.o].slots[*s as usize].extent.eval(consts).ok());
                    match inner {
                        Some(c)
                            if c > 0
                                && c % HOST_SCAN_LANES == 0
                                && ss.size() <= HOST_SCAN_LANE_STATE =>
                        {
                            Schedule::StateScan(ss, ScanForm::Lanes(HOST_SCAN_LANES))
                        }
                        _ => Schedule::StateScan(ss, ScanForm::Lanes(1)),
                    }
                }
                k => k,
            })
            .collect(),
        Target::Gpu(g) => {
            let sm = g.sm_name();
            ks.into_iter()
                .map(|k| match k {
                    Schedule::Generic(o) => match conv::long(&m, o) {
                        Some(c) => Schedule::BlockedFft(o, Box::new(c), GPU_FFT_BLOCK),
                        None => match matrix_tiling(&m, o, consts, &storage, &sm) {
                            Some(t) => Schedule::Matrix(o, Box::new(t)),
                            None => Schedule::Generic(o),
                        },
                    },
                    Schedule::StateScan(ss, _) if crate::pattern::scan::chunkable(&m, &ss) => {
                        Schedule::StateScan(ss, ScanForm::Chunked)
                    }
                    k => k,
                })
                .collect()
        }
    };
    Ok(Scheduled {
        module: m,
        kernels: ks,
        absorbed,
        claims,
        merged,
    })
}

/// `kernels` with every scan the scan-with-readout template takes
/// replaced: the scan's kernel removed (its op absorbed: no buffer), its
/// reader's kernel the template. A scan whose reader is itself a scan the
/// template takes stays.
fn splice(
    m: &Module,
    consts: &BTreeMap<String, i64>,
    kernels: Vec<Schedule>,
    mut absorbed: BTreeSet<usize>,
) -> (Vec<Schedule>, BTreeSet<usize>) {
    let generic: BTreeSet<usize> = kernels
        .iter()
        .filter_map(|k| match k {
            Schedule::Generic(o) => Some(*o),
            _ => None,
        })
        .collect();
    let mut by_o: BTreeMap<usize, StateScan> = BTreeMap::new();
    for &s in &generic {
        if let Some(ss) = readout(m, s, consts) {
            if generic.contains(&ss.o) && !by_o.contains_key(&s) {
                by_o.insert(ss.o, ss);
            }
        }
    }
    let scans: BTreeSet<usize> = by_o.values().map(|ss| ss.s).collect();
    by_o.retain(|o, _| !scans.contains(o));
    let scans: BTreeSet<usize> = by_o.values().map(|ss| ss.s).collect();
    absorbed.extend(scans.iter().copied());
    let out = kernels
        .into_iter()
        .filter(|k| !scans.contains(&k.op()) || !matches!(k, Schedule::Generic(_)))
        .map(|k| match by_o.get(&k.op()) {
            Some(ss) if matches!(k, Schedule::Generic(_)) => {
                Schedule::StateScan(ss.clone(), ScanForm::Sequential)
            }
            _ => k,
        })
        .collect();
    (out, absorbed)
}

/// `fixed` with every derived size (`dim E = D / H`) whose value it
/// determines: the sizes a build folds in as constants.
pub fn constants(m: &Module, fixed: &BTreeMap<String, i64>) -> BTreeMap<String, i64> {
    let mut consts = fixed.clone();
    for s in &m.sizes {
        if let Some(e) = &s.value {
            if let Ok(v) = e.eval(&consts) {
                consts.insert(s.name.clone(), v);
            }
        }
    }
    consts
}

/// How each value is stored when a bundle's activations are `dtype`:
/// inputs and every value computed from an input in `dtype`; parameters
/// and values computed from parameters alone (filters, decays, phases,
/// which 16 bits ruin) in f32, as mixed-precision training keeps master
/// weights and SSM kernels.
pub fn value_dtypes(m: &Module, dtype: Dtype) -> Vec<Dtype> {
    m.values
        .iter()
        .map(|v| match v.def {
            ValueDef::Input => dtype,
            ValueDef::Param(_) => Dtype::F32,
            ValueDef::Op(o) if crate::pattern::input_dependent(m, o.0 as usize) => dtype,
            ValueDef::Op(_) => Dtype::F32,
        })
        .collect()
}
