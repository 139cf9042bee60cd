//! How a GPU runs an attention chain: the decision the schedule records
//! in [`crate::schedule::Schedule::Attention`] and the back end lowers
//! as given, and `mixc explain` prints.
//!
//! Four forms, tried in this order (the first the chain allows wins):
//! 1. **`wgmma`** (sm_90, 16-bit storage): one warpgroup of [`TILE_M`]
//!    query rows; the query, key and value tiles in 16-bit shared memory
//!    read through matrix descriptors.
//! 2. **`mma.sync`** (16-bit storage): 4 warps of 16 query rows, both
//!    products on m16n8k16.
//! 3. **Staged** (f32): [`TILE_M`] query rows a block, a thread each; the
//!    key-side operands of each key tile staged once in shared memory.
//! 4. **Rows**: a thread per query row, every operand read from global
//!    memory (the host's form, and the GPU's when nothing can be staged).
//!
//! The analysis is on IR alone (which reads of the chain are the same for
//! a whole block, which are staged, how many bytes a key tile takes), so
//! the optimiser and the back ends see the same tiles:
//!
//! - **Which reads are staged.** A read `X[..]` of the score, the mask or
//!   the weighted sum is staged when one subscript is exactly the key index
//!   and every other subscript is a slot that is the same for the whole
//!   block (batch, head: every row slot but the tiled one), a constant, or
//!   any index on an axis of constant extent (the head dimension: the tile
//!   holds the whole axis).
//! - **Which row slot is tiled.** The one that lets the most reads be
//!   staged (for attention, the query index).
//! - **The key tile.** [`TILE_N`] keys, halved until the staged tiles fit
//!   [`SHARED_BUDGET`] (down to [`TILE_N_MIN`]; then the widest operand
//!   stays global).
//! - **Row-side operands.** Reads that are the same for every key of a row
//!   (the query) are held once per block in shared memory, a row of
//!   `width + 1` floats per query row, when the key tiles can shrink to
//!   make room under [`SHARED_LIMIT`].

use super::attention::{Inline, Template};
use super::contract::{factors_of as factors, matrix_split, MatrixSplit};
use crate::ir::{ExprId, Module, Node, RedOp, Slot, ValueDef, ValueId};
use mixc_runtime::Dtype;
use std::collections::{BTreeMap, HashMap};

/// Query rows a block takes.
pub const TILE_M: i64 = 64;
/// The largest key tile.
pub const TILE_N: i64 = 64;
/// The smallest key tile worth staging.
pub const TILE_N_MIN: i64 = 16;
/// Shared memory for the staged tiles, bytes (leaves room under 48 KiB).
pub const SHARED_BUDGET: i64 = 32 * 1024;
/// Static shared memory a block may use (without the opt-in attribute),
/// less 1 KiB for the rows' key ranges.
pub const SHARED_LIMIT: i64 = 47 * 1024;
/// Floats per query row of row-side operands a block may hold in shared
/// memory.
pub const ROW_CACHE: i64 = 128;
/// Warps a tensor-core block has; each takes 16 query rows.
pub const WARPS: i64 = 4;

/// Which tensor-core instruction a template computes 16-bit products
/// with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorCores {
    /// None: f32 arithmetic.
    None,
    /// Warp-wide `mma.sync` m16n8k16 (sm_80 and later).
    MmaSync(Dtype),
    /// Warpgroup-wide `wgmma` m64nNk16 with shared-memory operands (sm_90
    /// only: its PTX targets sm_90a).
    Wgmma(Dtype),
}

impl TensorCores {
    /// What `sm` offers for products rounded to `d`: `wgmma` on sm_90,
    /// `mma.sync` on the others.
    pub fn for_target(sm: &str, d: Dtype) -> TensorCores {
        match (d, sm) {
            (Dtype::F32, _) => TensorCores::None,
            (_, "sm_90") => TensorCores::Wgmma(d),
            _ => TensorCores::MmaSync(d),
        }
    }
}

/// How one axis of a staged read is indexed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Axis {
    /// The key index.
    Key,
    /// A block-uniform row slot (by its p-frame number).
    Uniform(Slot),
    Const(i64),
    /// Any index: the tile holds the whole axis, of this extent.
    Whole(i64),
}

/// Which way a `wgmma` operand tile is K-major.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Core {
    /// Rows are the tile's keys, the reduction its columns (the keys of
    /// `Q Kᵀ`).
    Keys,
    /// Rows are the columns, the reduction the keys (the values of `P V`).
    Columns,
}

/// A staged operand: a value's tile, `[BN][width]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub value: ValueId,
    pub axes: Vec<Axis>,
    /// Floats of padding after each key's row in the tile.
    pub pad: i64,
    /// A `wgmma` operand tile instead: 16-bit, in the canonical K-major
    /// core-matrix layout, read only through descriptors.
    pub core: Option<(Dtype, Core)>,
    /// Held in 16 bits (`mma.sync`'s operand tiles of a value stored in
    /// that type: the copy is exact, and a fragment is read without a
    /// conversion from f32).
    pub narrow: Option<Dtype>,
    /// Staged by 16-byte loads of 8 elements (a 16-bit tile of a value
    /// stored in that type whose one whole axis is its last, contiguous
    /// and a multiple of 8 wide): 16-byte stores where the axis is
    /// contiguous in the tile's layout too, else (`wgmma`'s transposed
    /// value tile) 8 stores.
    pub vector: bool,
}

impl Spec {
    /// Elements a staged key's row takes in the tile: the width, plus the
    /// padding the tensor-core template asks for.
    pub fn pitch(&self) -> i64 {
        self.width() + self.pad
    }

    /// Bytes of one element in the tile.
    pub fn elem_bytes(&self) -> i64 {
        if self.core.is_some() || self.narrow.is_some() {
            2
        } else {
            4
        }
    }

    pub fn width(&self) -> i64 {
        self.axes
            .iter()
            .map(|a| match a {
                Axis::Whole(n) => *n,
                _ => 1,
            })
            .product()
    }
}

/// How one axis of a row-cached read is indexed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RowAxis {
    /// The tiled row slot (the thread's row).
    Row,
    /// A block-uniform row slot.
    Uniform(Slot),
    Const(i64),
    /// A reduction slot of the frame (the head dimension), of this constant
    /// extent: the cache holds the whole axis.
    Whole(Slot, i64),
}

/// A row-cached operand: its value, axes, and the reads it serves.
#[derive(Clone, Debug)]
pub struct RowCache {
    pub value: ValueId,
    pub axes: Vec<RowAxis>,
    pub reads: Vec<ExprId>,
}

impl RowCache {
    /// Shared bytes: a row of `width + 1` floats per query row (the pad
    /// keeps the rows of a warp's threads in distinct banks).
    pub fn bytes(&self) -> i64 {
        TILE_M * (self.width() + 1) * 4
    }

    pub fn width(&self) -> i64 {
        self.axes
            .iter()
            .map(|a| match a {
                RowAxis::Whole(_, n) => *n,
                _ => 1,
            })
            .product()
    }
}

/// The staging of a tiled attention kernel: the tiled row slot, each
/// staged read and the index of its spec, the specs, the key-tile size,
/// and the row-side operands held in shared memory.
#[derive(Clone, Debug)]
pub struct Staging {
    pub tiled: Slot,
    pub reads: HashMap<ExprId, usize>,
    pub specs: Vec<Spec>,
    pub tile_n: i64,
    pub rows: Vec<RowCache>,
}

impl Staging {
    /// Shared bytes of the staged key tiles.
    pub fn tile_bytes(&self) -> i64 {
        self.specs
            .iter()
            .map(|s| s.pitch() * self.tile_n * s.elem_bytes())
            .sum()
    }

    /// For `mixc explain`: which tiles are staged by 16-byte loads.
    fn copies(&self) -> &'static str {
        match self.specs.iter().filter(|s| s.vector).count() {
            0 => "",
            1 => ", one operand tile read by 16-byte loads",
            _ => ", operand tiles read by 16-byte loads",
        }
    }

    /// Shared bytes of the row-side operands.
    pub fn row_bytes(&self) -> i64 {
        self.rows.iter().map(RowCache::bytes).sum()
    }
}

/// What the tensor-core form needs from the chain.
#[derive(Clone, Debug)]
pub struct Parts {
    /// The score's sum (a node of an inlined op's body) and its extent
    /// (the head dimension).
    pub score: ExprId,
    pub e: i64,
    pub q: ExprId,
    pub k: ExprId,
    /// Constant factors of the score.
    pub scale: Vec<ExprId>,
    pub v: ExprId,
    /// The output's head-dim slot (o frame) and extent.
    pub ea: Slot,
    pub ev: i64,
    /// The query's row-cache axes (it goes to registers or, with `wgmma`,
    /// a 16-bit shared tile; it is not among [`Staging::rows`]).
    pub q_axes: Vec<RowAxis>,
    pub q_value: ValueId,
}

/// How a target runs one attention chain (see the module doc).
#[derive(Clone, Debug)]
pub enum Tiling {
    /// A thread per query row.
    Rows,
    /// The host's form: a thread per `groups` groups of `rows` query
    /// rows; a group's keys in chunks of `keys` (each key's operands read
    /// once for the group's rows, one rescale per chunk, the chunk's
    /// exponentials as one vector); with more than one group, the
    /// thread's rows take the keys a tile of `tile` at a time, every group
    /// in turn, so a tile's operands stay in cache for them all.
    /// `transposed` (with more than one group, the plain dot product
    /// [`host_score`] found): the key-side operand of each tile is
    /// copied once, transposed, and a chunk's scores are a `rows` x `keys`
    /// product over the head dimension (every step one vector of keys per
    /// row, no horizontal sums).
    RowChunks {
        rows: i64,
        keys: i64,
        groups: i64,
        tile: i64,
        transposed: Option<Box<Score>>,
    },
    /// [`TILE_M`] rows a block, a thread each, key tiles staged.
    Staged(Staging),
    /// Both products on tensor cores (`MmaSync` or `Wgmma`), [`TILE_M`]
    /// rows a block.
    TensorCores(Staging, Box<Parts>, TensorCores),
}

impl Tiling {
    /// Query rows and keys a block takes per step, where the form tiles.
    pub fn tile(&self) -> Option<(i64, i64)> {
        match self {
            Tiling::Rows | Tiling::RowChunks { .. } => None,
            Tiling::Staged(s) | Tiling::TensorCores(s, ..) => Some((TILE_M, s.tile_n)),
        }
    }

    /// A short description for `mixc explain`.
    pub fn describe(&self) -> String {
        match self {
            Tiling::Rows => "a thread per query row".into(),
            Tiling::RowChunks {
                rows,
                keys,
                groups,
                tile,
                transposed,
            } if *groups > 1 => format!(
                "a thread per {} query rows in groups of {rows}, key tiles of {tile}{} in chunks of {keys} (one rescale per chunk)",
                rows * groups,
                if transposed.is_some() {
                    " (keys transposed: each chunk's scores a product)"
                } else {
                    ""
                }
            ),
            Tiling::RowChunks { rows, keys, .. } => format!(
                "a thread per {rows} query rows, keys in chunks of {keys} (one rescale per chunk)"
            ),
            Tiling::Staged(s) => format!(
                "{TILE_M} query rows a block, {} key-side operand(s) staged in shared memory in tiles of {} keys",
                s.specs.len(),
                s.tile_n
            ),
            Tiling::TensorCores(s, p, TensorCores::Wgmma(d)) => format!(
                "wgmma m64n{}k16 and m64n{}k16 {d}: a warpgroup of {TILE_M} query rows, head dim {}, key tiles of {}{}",
                s.tile_n,
                p.ev,
                p.e,
                s.tile_n,
                s.copies()
            ),
            Tiling::TensorCores(s, p, tc) => {
                let d = match tc {
                    TensorCores::MmaSync(d) | TensorCores::Wgmma(d) => d.to_string(),
                    TensorCores::None => "f32".into(),
                };
                format!(
                    "mma.sync m16n8k16 {d}: {WARPS} warps of 16 query rows, head dim {}, key tiles of {}{}{}",
                    p.e,
                    s.tile_n,
                    if s.specs.iter().any(|x| x.narrow.is_some()) {
                        " in 16 bits"
                    } else {
                        ""
                    },
                    s.copies()
                )
            }
        }
    }
}

/// The bodies the template evaluates and the values it inlines.
struct Chain {
    pbody: ExprId,
    obody: ExprId,
    guard: Option<ExprId>,
    inline: HashMap<u32, Inline>,
    /// The p frame's extents where constant (p's slots, then the inlined
    /// ops' reduction slots).
    pf_ext: Vec<Option<i64>>,
}

fn chain(m: &Module, t: &Template, consts: &BTreeMap<String, i64>) -> Option<Chain> {
    let (op_o, op_p) = (&m.ops[t.o], &m.ops[t.p]);
    let Node::Normalize {
        guard, body: pbody, ..
    } = m.expr(op_p.body).node.clone()
    else {
        return None;
    };
    let Node::Reduce { body: obody, .. } = m.expr(op_o.body).node.clone() else {
        return None;
    };
    let mut inline = HashMap::new();
    for &x in &t.inlined {
        inline.insert(m.ops[x].result.0, Inline::Body(m.ops[x].body));
    }
    inline.insert(op_p.result.0, Inline::One);
    let pf_ext = op_p
        .slots
        .iter()
        .map(|s| &s.extent)
        .chain(t.extra.iter())
        .map(|d| d.eval(consts).ok())
        .collect();
    Some(Chain {
        pbody,
        obody,
        guard,
        inline,
        pf_ext,
    })
}

/// How a GPU runs template `t` (the module's values stored as `storage`
/// says) on `sm`, with `consts` the sizes fixed at build time.
pub fn tiling(
    m: &Module,
    t: &Template,
    consts: &BTreeMap<String, i64>,
    storage: &[Dtype],
    sm: &str,
) -> Tiling {
    let Some(c) = chain(m, t, consts) else {
        return Tiling::Rows;
    };
    let stored = storage
        .get(m.ops[t.o].result.0 as usize)
        .copied()
        .unwrap_or(Dtype::F32);
    let tc = TensorCores::for_target(sm, stored);
    if let TensorCores::Wgmma(d) = tc {
        if let Some(x) = tensor_cores(m, t, &c, consts, (d, storage), true) {
            return x;
        }
    }
    if let TensorCores::Wgmma(d) | TensorCores::MmaSync(d) = tc {
        if let Some(x) = tensor_cores(m, t, &c, consts, (d, storage), false) {
            return x;
        }
    }
    match staged(m, t, &c, consts) {
        Some(s) => Tiling::Staged(s),
        None => Tiling::Rows,
    }
}

/// The reads of `e` (through inlined values), for staging.
fn reads(m: &Module, e: ExprId, inline: &HashMap<u32, Inline>, out: &mut Vec<ExprId>) {
    if let Node::Read(v, subs) = &m.expr(e).node {
        match inline.get(&v.0) {
            Some(Inline::Body(b)) => reads(m, *b, inline, out),
            Some(Inline::One) => {}
            None => out.push(e),
        }
        for s in subs {
            reads(m, *s, inline, out);
        }
        return;
    }
    for c in m.children(e) {
        reads(m, c, inline, out);
    }
}

/// How read `e` can be staged in a frame whose key slot is `key` and whose
/// block-uniform slots map to p-frame slots by `uniform`.
fn spec_of(
    m: &Module,
    e: ExprId,
    key: Slot,
    uniform: &HashMap<Slot, Slot>,
    consts: &BTreeMap<String, i64>,
) -> Option<Spec> {
    let Node::Read(v, subs) = &m.expr(e).node else {
        return None;
    };
    let val = m.value(*v);
    if matches!(val.def, ValueDef::Op(o) if m.op(o).recurrence.is_some()) {
        return None;
    }
    let mut axes = Vec::new();
    for (s, d) in subs.iter().zip(&val.shape) {
        axes.push(match &m.expr(*s).node {
            Node::Index(x) if *x == key => Axis::Key,
            Node::Index(x) if uniform.contains_key(x) => Axis::Uniform(uniform[x]),
            Node::Const(c) => Axis::Const(*c as i64),
            _ => Axis::Whole(d.eval(consts).ok()?),
        });
    }
    (axes.iter().filter(|a| **a == Axis::Key).count() == 1).then_some(Spec {
        value: *v,
        axes,
        pad: 0,
        core: None,
        narrow: None,
        vector: false,
    })
}

/// The reads of the score and the mask that are the same for every key of
/// a row (`q[b, i, h, e]`, a per-head slope): the block loads its rows'
/// once into shared memory (coalesced) instead of each thread loading its
/// row's once per key. Greedy, up to [`ROW_CACHE`] floats a row.
fn row_caches(m: &Module, t: &Template, c: &Chain, tiled: Slot) -> Vec<RowCache> {
    let (jp, rank) = (t.jp, m.ops[t.p].rank);
    let mut rs = Vec::new();
    reads(m, c.pbody, &c.inline, &mut rs);
    if let Some(g) = c.guard {
        reads(m, g, &c.inline, &mut rs);
    }
    let mut out: Vec<RowCache> = Vec::new();
    let mut used = 0;
    for e in rs {
        let Node::Read(v, subs) = &m.expr(e).node else {
            continue;
        };
        if matches!(m.value(*v).def, ValueDef::Op(o) if m.op(o).recurrence.is_some()) {
            continue;
        }
        let axes: Option<Vec<RowAxis>> = subs
            .iter()
            .map(|s| match m.expr(*s).node {
                Node::Index(x) if x == tiled => Some(RowAxis::Row),
                Node::Index(x) if x == jp => None,
                Node::Index(x) if (x as usize) < rank => Some(RowAxis::Uniform(x)),
                Node::Index(x) => match c.pf_ext.get(x as usize) {
                    Some(Some(n)) => Some(RowAxis::Whole(x, *n)),
                    _ => None,
                },
                Node::Const(k) => Some(RowAxis::Const(k as i64)),
                _ => None,
            })
            .collect();
        let Some(axes) = axes else { continue };
        if let Some(rc) = out.iter_mut().find(|x| x.value == *v && x.axes == axes) {
            rc.reads.push(e);
            continue;
        }
        let rc = RowCache {
            value: *v,
            axes,
            reads: vec![e],
        };
        if used + rc.width() <= ROW_CACHE {
            used += rc.width();
            out.push(rc);
        }
    }
    out
}

/// The key-side staging within `budget` bytes (rows not yet chosen), or
/// `None` when no read can be staged.
fn plan(
    m: &Module,
    t: &Template,
    c: &Chain,
    consts: &BTreeMap<String, i64>,
    budget: i64,
) -> Option<Staging> {
    let op_p = &m.ops[t.p];
    let outer: Vec<Slot> = (0..op_p.rank as Slot).filter(|s| *s != t.jp).collect();
    let mut p_reads = Vec::new();
    reads(m, c.pbody, &c.inline, &mut p_reads);
    if let Some(g) = c.guard {
        reads(m, g, &c.inline, &mut p_reads);
    }
    let mut o_reads = Vec::new();
    reads(m, c.obody, &c.inline, &mut o_reads);
    let mut best: Option<Staging> = None;
    for &tiled in outer.iter().rev() {
        let up: HashMap<Slot, Slot> = outer
            .iter()
            .filter(|s| **s != tiled)
            .map(|s| (*s, *s))
            .collect();
        let uo: HashMap<Slot, Slot> = t
            .p_to_o
            .iter()
            .filter(|(p, _)| up.contains_key(p))
            .map(|(p, o)| (*o, *p))
            .collect();
        let mut specs: Vec<Spec> = Vec::new();
        let mut staged = HashMap::new();
        let frames = [(&p_reads, t.jp, &up), (&o_reads, t.r, &uo)];
        for (rs, key, uniform) in frames {
            for &e in rs.iter() {
                if let Some(s) = spec_of(m, e, key, uniform, consts) {
                    let k = match specs.iter().position(|x| *x == s) {
                        Some(k) => k,
                        None => {
                            specs.push(s);
                            specs.len() - 1
                        }
                    };
                    staged.insert(e, k);
                }
            }
        }
        // The key tile: halve until the tiles fit; then drop the widest.
        let words = |specs: &[Spec], n: i64| specs.iter().map(|s| s.pitch() * n * 4).sum::<i64>();
        let mut n = TILE_N;
        while words(&specs, n) > budget && n > TILE_N_MIN {
            n /= 2;
        }
        while words(&specs, n) > budget {
            let widest = (0..specs.len()).max_by_key(|k| specs[*k].width())?;
            specs.remove(widest);
            staged.retain(|_, k| *k != widest);
            for k in staged.values_mut() {
                if *k > widest {
                    *k -= 1;
                }
            }
        }
        if staged.is_empty() {
            continue;
        }
        if best.as_ref().is_none_or(|b| staged.len() > b.reads.len()) {
            best = Some(Staging {
                tiled,
                reads: staged,
                specs,
                tile_n: n,
                rows: Vec::new(),
            });
        }
    }
    best
}

/// The f32 staged form: key tiles within [`SHARED_BUDGET`], and row-side
/// operands too where the key tiles can shrink to make room.
fn staged(m: &Module, t: &Template, c: &Chain, consts: &BTreeMap<String, i64>) -> Option<Staging> {
    let mut s = plan(m, t, c, consts, SHARED_BUDGET)?;
    let rows = row_caches(m, t, c, s.tiled);
    let row_bytes: i64 = rows.iter().map(RowCache::bytes).sum();
    if row_bytes + s.tile_bytes() > SHARED_LIMIT {
        let budget = SHARED_LIMIT - row_bytes;
        match plan(m, t, c, consts, budget) {
            Some(p) if p.tiled == s.tiled && p.tile_bytes() <= budget => {
                s = p;
                s.rows = rows;
            }
            _ => {}
        }
    } else {
        s.rows = rows;
    }
    Some(s)
}

fn reductions(m: &Module, e: ExprId, out: &mut Vec<ExprId>) {
    if matches!(m.expr(e).node, Node::Reduce { .. } | Node::Normalize { .. }) {
        out.push(e);
        return;
    }
    for c in m.children(e) {
        reductions(m, c, out);
    }
}

fn constant(m: &Module, e: ExprId) -> bool {
    !matches!(
        m.expr(e).node,
        Node::Read(..) | Node::Index(_) | Node::Reduce { .. }
    ) && m.children(e).into_iter().all(|c| constant(m, c))
}

/// The one whole-axis slot of a staged spec's read, if the spec has one
/// whole axis of extent `n` indexed by a plain slot.
pub fn whole_slot(m: &Module, read: ExprId, spec: &Spec) -> Option<(Slot, i64)> {
    let Node::Read(_, subs) = &m.expr(read).node else {
        return None;
    };
    let mut out = None;
    for (ax, s) in spec.axes.iter().zip(subs) {
        if let Axis::Whole(n) = ax {
            let Node::Index(x) = m.expr(*s).node else {
                return None;
            };
            if out.replace((x, *n)).is_some() {
                return None;
            }
        }
    }
    out
}

/// The score of the chain as a plain dot product: the sum node, the head
/// dimension, the query read (row-cached, its one whole axis the sum's
/// slot), the key read (staged, likewise) and the constant factors.
#[derive(Clone, Debug)]
pub struct Score {
    pub score: ExprId,
    pub e: i64,
    pub q: ExprId,
    pub k: ExprId,
    pub scale: Vec<ExprId>,
    pub q_axes: Vec<RowAxis>,
    pub q_value: ValueId,
}

/// The largest head dimension whose key tile the host stages transposed.
pub const HOST_SCORE_E: i64 = 128;

/// The host's scores as a small matrix product
/// (`Tiling::RowChunks::transposed`): where the chain's score is a plain
/// dot product (`score`) of a query-side read and a key-side read over a
/// constant head dimension of at most [`HOST_SCORE_E`], with the query
/// index the row-side slot.
pub fn host_score(m: &Module, t: &Template, consts: &BTreeMap<String, i64>) -> Option<Score> {
    let c = chain(m, t, consts)?;
    let plan = plan(m, t, &c, consts, i64::MAX)?;
    if Some(plan.tiled) != super::attention::parallel_slot(m, t) {
        return None;
    }
    let rows = row_caches(m, t, &c, plan.tiled);
    score(m, t, &plan, &rows).filter(|s| s.e <= HOST_SCORE_E)
}

fn score(m: &Module, t: &Template, plan: &Staging, rows: &[RowCache]) -> Option<Score> {
    let op_p = &m.ops[t.p];
    // The score's sum: the one reduction of the inlined chain.
    let mut sums = Vec::new();
    for &x in &t.inlined {
        reductions(m, m.ops[x].body, &mut sums);
    }
    let [score] = sums.as_slice() else {
        return None;
    };
    let score = *score;
    let Node::Reduce {
        op: RedOp::Sum,
        slots,
        guard: None,
        body,
    } = m.expr(score).node.clone()
    else {
        return None;
    };
    let [x] = slots.as_slice() else { return None };
    if (*x as usize) < op_p.rank {
        return None;
    }
    let mut fs = Vec::new();
    factors(m, body, &mut fs);
    let (mut q, mut k, mut scale) = (None, None, Vec::new());
    let mut q_axes = Vec::new();
    for f in fs {
        if let Some(c) = rows.iter().find(|c| c.reads.contains(&f)) {
            let whole: Vec<_> = c
                .axes
                .iter()
                .filter_map(|a| match a {
                    RowAxis::Whole(s, n) => Some((*s, *n)),
                    _ => None,
                })
                .collect();
            if whole.as_slice() != [(*x, whole.first()?.1)] || q.replace(f).is_some() {
                return None;
            }
            q_axes = c.axes.clone();
        } else if let Some(&sk) = plan.reads.get(&f) {
            if whole_slot(m, f, &plan.specs[sk])?.0 != *x || k.replace(f).is_some() {
                return None;
            }
        } else if constant(m, f) {
            scale.push(f);
        } else {
            return None;
        }
    }
    let (q, k) = (q?, k?);
    let Node::Read(q_value, _) = m.expr(q).node else {
        return None;
    };
    let e = plan.specs[plan.reads[&k]].width();
    Some(Score {
        score,
        e,
        q,
        k,
        scale,
        q_axes,
        q_value,
    })
}

/// The tensor-core parts of the chain: a plain dot product over a head
/// dimension that is a multiple of 16 (at most 128), times constants, and
/// a weighted sum `p * v` with a value head dimension that is a multiple
/// of 8 (at most 128).
fn parts(
    m: &Module,
    t: &Template,
    obody: ExprId,
    plan: &Staging,
    rows: &[RowCache],
) -> Option<Parts> {
    let op_p = &m.ops[t.p];
    let Score {
        score,
        e,
        q,
        k,
        scale,
        q_axes,
        q_value,
    } = score(m, t, plan, rows)?;
    if e % 16 != 0 || e > 128 {
        return None;
    }
    // The weighted sum: exactly `p * v`.
    let [ea] = t.acc.as_slice() else { return None };
    let mut fs = Vec::new();
    factors(m, obody, &mut fs);
    let mut v = None;
    let mut p_seen = false;
    for f in fs {
        match &m.expr(f).node {
            Node::Read(w, _) if *w == op_p.result && !p_seen => p_seen = true,
            Node::Read(..) if plan.reads.contains_key(&f) && v.is_none() => v = Some(f),
            _ => return None,
        }
    }
    let v = v.filter(|_| p_seen)?;
    let (slot, ev) = whole_slot(m, v, &plan.specs[plan.reads[&v]])?;
    if slot != *ea || ev % 8 != 0 || ev > 128 || plan.tile_n % 16 != 0 {
        return None;
    }
    Some(Parts {
        score,
        e,
        q,
        k,
        scale,
        v,
        ea: *ea,
        ev,
        q_axes,
        q_value,
    })
}

/// The tensor-core form with values stored as `dtype`, on `wgmma` or
/// `mma.sync`, or `None` where the chain does not allow it.
fn tensor_cores(
    m: &Module,
    t: &Template,
    c: &Chain,
    consts: &BTreeMap<String, i64>,
    (dtype, storage): (Dtype, &[Dtype]),
    wgmma: bool,
) -> Option<Tiling> {
    let mut plan = plan(m, t, c, consts, SHARED_BUDGET)?;
    // On `mma.sync`, a tile of a value stored in `dtype` is held in 16
    // bits (the copy is exact; fragments need no conversion). Key rows
    // are padded by 4 words (4 floats, or 8 16-bit elements) when the
    // width is a multiple of 16, so that a warp's fragment reads (8 keys
    // x 4 column pairs of K, 4 key pairs x 8 columns of V) fall in
    // different banks.
    for s in plan.specs.iter_mut().filter(|_| !wgmma) {
        let stored = storage.get(s.value.0 as usize).copied();
        if stored == Some(dtype) && dtype != Dtype::F32 {
            s.narrow = Some(dtype);
        }
        if s.width() % 16 == 0 {
            s.pad = if s.narrow.is_some() { 8 } else { 4 };
        }
    }
    let mut rows = row_caches(m, t, c, plan.tiled);
    let pt = parts(m, t, c.obody, &plan, &rows)?;
    // The query goes straight into registers as A fragments (once per
    // row); other row-side operands (a slope) stay in shared memory.
    rows.retain(|r| !r.reads.contains(&pt.q));
    let row_bytes: i64 = rows.iter().map(RowCache::bytes).sum();
    // With wgmma the key and value tiles are 16-bit operand tiles (read
    // only by the products), and the query goes through shared memory too
    // (64 rows, 16-bit).
    let mut extra = 0;
    if wgmma {
        let (ks, vs) = (plan.reads[&pt.k], plan.reads[&pt.v]);
        let shared = plan
            .reads
            .iter()
            .any(|(e, k)| (*k == ks && *e != pt.k) || (*k == vs && *e != pt.v));
        if ks == vs || shared {
            return None;
        }
        plan.specs[ks].core = Some((dtype, Core::Keys));
        plan.specs[vs].core = Some((dtype, Core::Columns));
        extra = TILE_M * pt.e * 2;
        while plan.tile_n < TILE_N && row_bytes + 2 * plan.tile_bytes() + extra <= SHARED_LIMIT {
            plan.tile_n *= 2;
        }
    }
    if row_bytes + plan.tile_bytes() + extra > SHARED_LIMIT {
        return None;
    }
    // 16-byte loads where the value is stored in the tile's type and a
    // key's row is contiguous in it: stored as 16-byte copies where the row
    // is contiguous in the tile too (the key tile on either; the value
    // tile on `mma.sync`, whose layout keeps keys as rows), as 8 stores 8
    // elements apart in `wgmma`'s transposed value tile (its core
    // matrices' rows).
    for s in &mut plan.specs {
        let stored = storage.get(s.value.0 as usize).copied() == Some(dtype);
        let layout = match (s.core, s.narrow) {
            (Some(_), _) => true,
            (None, Some(_)) => s.pitch() % 8 == 0,
            _ => false,
        };
        let last = matches!(s.axes.last(), Some(Axis::Whole(w)) if *w == s.width());
        s.vector = stored && layout && last && s.width() % 8 == 0;
    }
    plan.rows = rows;
    let tc = if wgmma {
        TensorCores::Wgmma(dtype)
    } else {
        TensorCores::MmaSync(dtype)
    };
    Some(Tiling::TensorCores(plan, Box::new(pt), tc))
}

/// Output rows and columns of a block of the tiled contraction, and its
/// reduction tile, in f32 (a thread 4 x 4 outputs).
pub const MATRIX_TILE: (i64, i64, i64) = (64, 64, 16);
/// The same on `mma.sync`: 8 warps of 64 x 32 outputs (16 m16n8k16
/// products a warp and k16 step, against 4 with 16 x 32).
pub const MATRIX_MMA_TILE: (i64, i64, i64) = (128, 128, 16);
/// Warpgroups a `wgmma` contraction block has (64 output rows each).
pub const MATRIX_WARPGROUPS: i64 = 2;
/// The `wgmma` contraction's reduction tile.
pub const MATRIX_WGMMA_K: i64 = 32;

/// How a GPU runs a contraction that is a matrix product: the split of
/// its axes and factors, the tensor cores, and the block's tile (`bm` x
/// `bn` outputs, reduction tiles of `bk`).
#[derive(Clone, Debug)]
pub struct MatrixTiling {
    pub split: MatrixSplit,
    pub tc: TensorCores,
    pub bm: i64,
    pub bn: i64,
    pub bk: i64,
    /// The A side is staged by 16-byte copies (`wgmma` only): it is one
    /// read of a value stored in the product's 16-bit type whose last
    /// subscripts are the reduction indices in order, over axes of the
    /// same extents, and whose others are plain indices, with K a
    /// constant multiple of 8, so 8 consecutive k are 8 consecutive,
    /// 16-byte aligned elements.
    pub vector_a: bool,
}

impl MatrixTiling {
    /// A short description for `mixc explain`, in the words of the
    /// kernel's own `kind`.
    pub fn describe(&self) -> String {
        let (bm, bn, bk) = (self.bm, self.bn, self.bk);
        let tiles = format!(
            "{bm}x{bn} outputs a block, reduction tiles of {bk} staged in shared memory{}",
            if self.vector_a {
                ", the A side by 16-byte copies"
            } else {
                ""
            }
        );
        match self.tc {
            TensorCores::None => tiles,
            TensorCores::MmaSync(d) => format!("mma.sync m16n8k16 {d}, f32 accumulation; {tiles}"),
            TensorCores::Wgmma(d) => format!("wgmma m64n{bn}k16 {d}, f32 accumulation; {tiles}"),
        }
    }
}

/// How a GPU `sm` runs contraction op `o` (values stored as `storage`
/// says) as a blocked matrix product, or `None` where it is not one worth
/// tiling (it keeps its generic kernel).
pub fn matrix_tiling(
    m: &Module,
    o: usize,
    consts: &BTreeMap<String, i64>,
    storage: &[Dtype],
    sm: &str,
) -> Option<MatrixTiling> {
    let split = matrix_split(m, o, consts)?;
    let op = &m.ops[o];
    let stored = storage
        .get(op.result.0 as usize)
        .copied()
        .unwrap_or(Dtype::F32);
    let tc = TensorCores::for_target(sm, stored);
    let extent = |slots: &[Slot]| -> Option<i64> {
        slots
            .iter()
            .map(|s| op.slots[*s as usize].extent.eval(consts).ok())
            .product()
    };
    let (bm, bn, bk) = match tc {
        TensorCores::Wgmma(_) => {
            let bn = if extent(&split.cols).is_some_and(|n| n <= 64) {
                64
            } else {
                128
            };
            // A reduction shorter than a tile is staged in the k16 steps
            // it needs.
            let bk = extent(&split.reduce).map_or(MATRIX_WGMMA_K, |k| {
                MATRIX_WGMMA_K.min((k.max(1) + 15) / 16 * 16)
            });
            (64 * MATRIX_WARPGROUPS, bn, bk)
        }
        TensorCores::MmaSync(_) => MATRIX_MMA_TILE,
        TensorCores::None => MATRIX_TILE,
    };
    let vector_a = match tc {
        TensorCores::Wgmma(d) => vector_side(m, o, &split, consts, storage, d),
        _ => false,
    };
    Some(MatrixTiling {
        split,
        tc,
        bm,
        bn,
        bk,
        vector_a,
    })
}

/// See [`MatrixTiling::vector_a`].
fn vector_side(
    m: &Module,
    o: usize,
    split: &MatrixSplit,
    consts: &BTreeMap<String, i64>,
    storage: &[Dtype],
    dtype: Dtype,
) -> bool {
    let op = &m.ops[o];
    let [a] = split.a.as_slice() else {
        return false;
    };
    let Node::Read(v, subs) = &m.expr(*a).node else {
        return false;
    };
    let k = &split.reduce;
    let shape = &m.value(*v).shape;
    if k.is_empty() || subs.len() < k.len() || shape.len() != subs.len() {
        return false;
    }
    let slot = |e: &ExprId| match m.expr(*e).node {
        Node::Index(s) => Some(s),
        _ => None,
    };
    let split_at = subs.len() - k.len();
    // The trailing subscripts: the reduction indices in order, each over
    // an axis of its own extent.
    let trailing = subs[split_at..]
        .iter()
        .zip(k)
        .zip(&shape[split_at..])
        .all(|((e, s), ext)| {
            slot(e) == Some(*s)
                && ext.eval(consts).ok() == op.slots[*s as usize].extent.eval(consts).ok()
                && ext.eval(consts).is_ok()
        });
    let others = subs[..split_at]
        .iter()
        .all(|e| slot(e).is_some_and(|s| !k.contains(&s)));
    let kx: Option<i64> = k
        .iter()
        .map(|s| op.slots[*s as usize].extent.eval(consts).ok())
        .product();
    storage.get(v.0 as usize).copied() == Some(dtype)
        && trailing
        && others
        && kx.is_some_and(|n| n % 8 == 0)
}
