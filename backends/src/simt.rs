//! A lockstep interpreter of kernel IR: the threads of a block run each
//! statement together under an activity mask, the way a GPU runs them, so
//! kernels with block-shared memory and barriers (which have no host form)
//! are checked on machines without a GPU.
//!
//! It checks what a GPU would not tell:
//! - **Barriers** must be reached by every thread of the block; one under
//!   divergent control flow (an `if` taken by some threads, a loop whose
//!   trip count differs between threads) is an error.
//! - **Shared-memory races**: between two barriers, a shared element
//!   written by one thread and read or written by another is an error,
//!   whatever order lockstep execution happened to give them.
//! - **Bounds**: every load and store is checked against its buffer.
//! - **`wgmma` operands**: a warpgroup product decodes its matrix
//!   descriptors (PTX's bit layout, K-major, no swizzle) into shared
//!   addresses. Every element it reads must lie in a 16-bit shared array
//!   of its type, have been made visible to the async proxy by its
//!   writer's `fence.proxy.async` and published by a barrier since; the
//!   128 threads of the warpgroup must all take part, with equal
//!   descriptors.
//!
//! Value buffers hold what the kernel's storage type can represent: a
//! store rounds as the GPU's conversion does ([`mixc_runtime::Dtype`]);
//! the caller rounds the inputs and parameters it uploads.
//!
//! Arithmetic is f32, i64 and i1 as in the MLIR lowering (truncating
//! signed division, `maxnumf`, ordered comparisons but `une`). Blocks run
//! one after another; the result does not depend on their order for the
//! kernels mixc generates (each block writes its own elements).

use crate::kir::{Bin, Dtype, Ex, Kernel, Mem, Pred, Space, Special, Stmt, Un};
use crate::BackendError;
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq)]
enum V {
    F(f32),
    I(i64),
    B(bool),
}

impl V {
    fn f(self) -> f32 {
        match self {
            V::F(x) => x,
            V::I(x) => x as f32,
            V::B(x) => x as u8 as f32,
        }
    }
    fn i(self) -> i64 {
        match self {
            V::I(x) => x,
            V::F(x) => x as i64,
            V::B(x) => x as i64,
        }
    }
    fn b(self) -> bool {
        match self {
            V::B(x) => x,
            V::I(x) => x != 0,
            V::F(x) => x != 0.0,
        }
    }
}

/// What a simulated launch did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    pub blocks: u64,
    /// Barriers passed, summed over blocks.
    pub barriers: u64,
    /// Shared-memory loads and stores, summed over threads.
    pub shared_accesses: u64,
    /// Global-memory loads, summed over threads.
    pub global_loads: u64,
    /// Warp-wide tensor-core products.
    pub mma: u64,
    /// Statements executed, summed over threads: the kernel's work.
    pub steps: u64,
    /// Shared-memory bank conflicts: for each warp's shared load (a `let`
    /// of one) or store, the extra passes its 32 lanes need because two
    /// lanes touch different 4-byte words of one of the 32 banks.
    pub bank_conflicts: u64,
}

/// Per shared element: who wrote it and who read it since the last
/// barrier (`NONE`, a thread, or `MANY`).
#[derive(Clone, Copy)]
struct Epoch {
    writer: i32,
    reader: i32,
}

const NONE: i32 = -1;
const MANY: i32 = -2;

struct Block<'a> {
    k: &'a Kernel,
    sizes: &'a [i64],
    bufs: &'a mut [Vec<f32>],
    threads: usize,
    block_id: i64,
    /// `vars[v][t]`.
    vars: Vec<Vec<V>>,
    /// Register locals: `regs[l][t * len + i]`.
    regs: Vec<Vec<V>>,
    shared: Vec<Vec<V>>,
    epochs: Vec<Vec<Epoch>>,
    /// Per shared element: the thread whose generic-proxy write has not
    /// yet been followed by its `fence.proxy.async` (`NONE` if none).
    unfenced: Vec<Vec<i32>>,
    /// Shared-window byte address of each shared local (0 for registers).
    bases: Vec<i64>,
    /// Per warpgroup: its committed, not yet retired products, oldest
    /// first.
    groups: Vec<Vec<Group>>,
    /// Per shared element: how many in-flight products read it.
    async_reads: Vec<Vec<u32>>,
    flag: bool,
    stats: SimStats,
}

type R<T> = Result<T, BackendError>;

/// A committed `wgmma` group: its accumulator (register array and first
/// index), its result (64 x n), and the shared elements it read.
struct Group {
    acc: u32,
    at: i64,
    d: Vec<Vec<f32>>,
    reads: Vec<(usize, usize)>,
}

/// Row and column (of the warpgroup's 64 x n result) of accumulator
/// element `i` of thread `t` (see `Stmt::Wgmma`).
fn acc_element(t: usize, i: usize) -> (usize, usize) {
    let (w, l) = ((t % 128) / 32, t % 32);
    let (g, q) = (l / 4, l % 4);
    let (c, e) = (i / 4, i % 4);
    (16 * w + g + 8 * (e / 2), 8 * c + 2 * q + e % 2)
}

fn fail(k: &Kernel, s: impl Into<String>) -> BackendError {
    BackendError::Runtime(format!("kernel {}: {}", k.name, s.into()))
}

impl Block<'_> {
    fn stmts(&mut self, body: &[Stmt], mask: &[bool]) -> R<()> {
        // No thread here: nothing runs, and no barrier is reached.
        if !mask.iter().any(|m| *m) {
            return Ok(());
        }
        let threads = mask.iter().filter(|m| **m).count() as u64;
        for s in body {
            self.stats.steps += threads;
            match s {
                Stmt::Let(v, e) => {
                    if let Ex::Load(m, i) = e {
                        self.banks(*m, i, mask)?;
                    }
                    for t in active(mask) {
                        let x = self.eval(e, t)?;
                        self.vars[v.0 as usize][t] = x;
                    }
                }
                Stmt::Store(m, i, v) => {
                    self.banks(*m, i, mask)?;
                    // Every active thread evaluates, then all write.
                    let mut writes = Vec::new();
                    for t in active(mask) {
                        let i = self.eval(i, t)?.i();
                        let v = self.eval(v, t)?;
                        writes.push((t, i, v));
                    }
                    for (t, i, v) in writes {
                        self.store(*m, t, i, v)?;
                    }
                }
                Stmt::For { var, lo, hi, body } => {
                    let mut cur = vec![0i64; self.threads];
                    let mut end = vec![0i64; self.threads];
                    for t in active(mask) {
                        cur[t] = self.eval(lo, t)?.i();
                        end[t] = self.eval(hi, t)?.i();
                    }
                    loop {
                        let m: Vec<bool> = (0..self.threads)
                            .map(|t| mask[t] && cur[t] < end[t])
                            .collect();
                        if !m.iter().any(|x| *x) {
                            break;
                        }
                        for t in active(&m) {
                            self.vars[var.0 as usize][t] = V::I(cur[t]);
                            cur[t] += 1;
                        }
                        self.stmts(body, &m)?;
                    }
                }
                Stmt::If { cond, then, els } => {
                    let mut c = vec![false; self.threads];
                    for t in active(mask) {
                        c[t] = self.eval(cond, t)?.b();
                    }
                    let yes: Vec<bool> = (0..self.threads).map(|t| mask[t] && c[t]).collect();
                    let no: Vec<bool> = (0..self.threads).map(|t| mask[t] && !c[t]).collect();
                    self.stmts(then, &yes)?;
                    self.stmts(els, &no)?;
                }
                Stmt::Barrier => {
                    let n = mask.iter().filter(|m| **m).count();
                    if n != self.threads {
                        return Err(fail(
                            self.k,
                            format!(
                                "block {}: a barrier reached by {n} of {} threads (divergent control flow)",
                                self.block_id, self.threads
                            ),
                        ));
                    }
                    self.stats.barriers += 1;
                    for e in self.epochs.iter_mut().flatten() {
                        *e = Epoch {
                            writer: NONE,
                            reader: NONE,
                        };
                    }
                }
                Stmt::Flag => self.flag = true,
                Stmt::Copy {
                    dst,
                    dst_at,
                    src,
                    src_at,
                    n,
                    stride,
                    when,
                } => {
                    // Element by element: every active thread reads (where
                    // `when` holds), then all write.
                    let mut writes = Vec::new();
                    for t in active(mask) {
                        let (d, s) = (self.eval(dst_at, t)?.i(), self.eval(src_at, t)?.i());
                        let load = self.eval(when, t)?.b();
                        for e in 0..i64::from(*n) {
                            let v = if load {
                                self.load(*src, t, s + e)?
                            } else {
                                V::F(0.0)
                            };
                            writes.push((t, d + e * stride, v));
                        }
                    }
                    for (t, i, v) in writes {
                        self.store(*dst, t, i, v)?;
                    }
                }
                Stmt::FenceAsync => {
                    for u in self.unfenced.iter_mut().flatten() {
                        if *u != NONE && mask[*u as usize] {
                            *u = NONE;
                        }
                    }
                }
                Stmt::Wgmma(w) => self.wgmma(mask, w)?,
                Stmt::WgmmaWait(keep) => {
                    for (g, lanes) in self.warpgroups(mask, "wgmma.wait_group")? {
                        self.retire(g, lanes, *keep as usize)?;
                    }
                }
                Stmt::Mma { ty, a, b, acc, at } => self.mma(mask, *ty, a, b, *acc, *at)?,
                Stmt::ShflXor {
                    dst,
                    at,
                    src,
                    mask: x,
                } => self.shfl_xor(mask, *dst, *at, src, *x)?,
            }
        }
        Ok(())
    }

    /// A warp-wide m16n8k16 product (see `Stmt::Mma` for the fragment
    /// layout): every lane of a warp must take part; the warp's fragments
    /// are gathered into A, B and C, `D = A B + C` is computed with A and B
    /// rounded to `ty` and f32 accumulation, and D is scattered back.
    fn mma(&mut self, mask: &[bool], ty: Dtype, a: &[Ex], b: &[Ex], acc: Mem, at: i64) -> R<()> {
        if a.len() != 8 || b.len() != 4 {
            return Err(fail(self.k, "an mma takes 8 A and 4 B elements a lane"));
        }
        for lanes in self.warps(mask, "an mma")? {
            self.stats.mma += 1;
            let (mut am, mut bm, mut cm) = ([[0f32; 16]; 16], [[0f32; 8]; 16], [[0f32; 8]; 16]);
            for t in lanes.clone() {
                let (g, q) = ((t % 32) / 4, t % 4);
                for (e, x) in a.iter().enumerate() {
                    let v = ty.round(self.eval(x, t)?.f());
                    am[g + 8 * (e / 2 % 2)][2 * q + e % 2 + 8 * (e / 4)] = v;
                }
                for (e, x) in b.iter().enumerate() {
                    let v = ty.round(self.eval(x, t)?.f());
                    bm[2 * q + e % 2 + 8 * (e / 2)][g] = v;
                }
                for e in 0..4 {
                    cm[g + 8 * (e / 2)][2 * q + e % 2] = self.load(acc, t, at + e as i64)?.f();
                }
            }
            for t in lanes {
                let (g, q) = ((t % 32) / 4, t % 4);
                for e in 0..4 {
                    let (r, c) = (g + 8 * (e / 2), 2 * q + e % 2);
                    let d = (0..16).fold(cm[r][c], |s, k| s + am[r][k] * bm[k][c]);
                    self.store(acc, t, at + e as i64, V::F(d))?;
                }
            }
        }
        Ok(())
    }

    /// A warpgroup product (see `Stmt::Wgmma`): every thread of each
    /// warpgroup that reaches it takes part with the same descriptors; A
    /// and B are read from shared memory through them, `D = A B + D` per
    /// step with f32 accumulation. The result is held as an in-flight
    /// group until a wait retires it (at once when `pending` is 0): until
    /// then the accumulator's registers may not be touched (but a later
    /// product on the same accumulator chains on it, as the hardware
    /// orders same-shape products), and the shared elements it read may
    /// not be written.
    fn wgmma(&mut self, mask: &[bool], w: &crate::kir::Wgmma) -> R<()> {
        let (ty, n, steps, acc, at, pending) = (w.ty, w.n, &w.steps, w.acc, w.at, w.pending);
        if n == 0 || !n.is_multiple_of(8) || n > 256 {
            return Err(fail(self.k, format!("wgmma with n = {n}")));
        }
        let n = n as usize;
        let Mem::Local(acc_l) = acc else {
            return Err(fail(self.k, "a wgmma accumulator in global memory"));
        };
        for (g, lanes) in self.warpgroups(mask, "wgmma")? {
            self.stats.mma += 1;
            let chained = self.groups[g]
                .iter()
                .rev()
                .find(|p| p.acc == acc_l && p.at == at && p.d[0].len() == n)
                .map(|p| p.d.clone());
            let mut d = match chained {
                Some(d) => d,
                None => {
                    let mut d = vec![vec![0f32; n]; 64];
                    for t in lanes.clone() {
                        for i in 0..n / 2 {
                            let (r, c) = acc_element(t, i);
                            d[r][c] = self.load(acc, t, at + i as i64)?.f();
                        }
                    }
                    d
                }
            };
            let mut reads = Vec::new();
            for (a, b) in steps {
                let da = match a {
                    crate::kir::WgA::Desc(a) => Some(self.uniform(a, lanes.clone(), g)?),
                    crate::kir::WgA::Regs(_) => None,
                };
                let db = self.uniform(b, lanes.clone(), g)?;
                let mut am = vec![[0f32; 16]; 64];
                match (a, da) {
                    (_, Some(da)) => {
                        for (r, row) in am.iter_mut().enumerate() {
                            for (k, x) in row.iter_mut().enumerate() {
                                *x = self.operand(da, r, k, ty, &mut reads)?;
                            }
                        }
                    }
                    (crate::kir::WgA::Regs(xs), None) => {
                        if xs.len() != 8 {
                            return Err(fail(self.k, "a register A takes 8 elements a lane"));
                        }
                        // Each warp's 16 rows in the m16k16 fragment layout.
                        for t in lanes.clone() {
                            let (w, l) = ((t % 128) / 32, t % 32);
                            let (gr, q) = (l / 4, l % 4);
                            for (e, x) in xs.iter().enumerate() {
                                let v = ty.round(self.eval(x, t)?.f());
                                am[16 * w + gr + 8 * (e / 2 % 2)][2 * q + e % 2 + 8 * (e / 4)] = v;
                            }
                        }
                    }
                    _ => unreachable!("a descriptor was read"),
                }
                let mut bm = vec![[0f32; 16]; n];
                for (c, col) in bm.iter_mut().enumerate() {
                    for (k, x) in col.iter_mut().enumerate() {
                        *x = self.operand(db, c, k, ty, &mut reads)?;
                    }
                }
                for (r, row) in d.iter_mut().enumerate() {
                    for (c, x) in row.iter_mut().enumerate() {
                        *x = (0..16).fold(*x, |s, k| s + am[r][k] * bm[c][k]);
                    }
                }
            }
            for &(l, i) in &reads {
                self.async_reads[l][i] += 1;
            }
            self.groups[g].push(Group {
                acc: acc_l,
                at,
                d,
                reads,
            });
            self.retire(g, lanes, pending as usize)?;
        }
        Ok(())
    }

    /// The value of `x`, which every thread of warpgroup `g` (`lanes`)
    /// must agree on (a `wgmma` descriptor).
    fn uniform(&mut self, x: &Ex, lanes: std::ops::Range<usize>, g: usize) -> R<i64> {
        let mut vals = Vec::new();
        for t in lanes {
            vals.push(self.eval(x, t)?.i());
        }
        if vals.iter().any(|v| *v != vals[0]) {
            return Err(fail(
                self.k,
                format!(
                    "block {}: wgmma descriptors differ between the threads of warpgroup {g}",
                    self.block_id
                ),
            ));
        }
        Ok(vals[0])
    }

    /// The warpgroups that reach a warpgroup-wide statement (`what`): all
    /// 128 threads of one must, or none.
    fn warpgroups(&self, mask: &[bool], what: &str) -> R<Vec<(usize, std::ops::Range<usize>)>> {
        self.collective(mask, 128, "warpgroup", what)
    }

    /// The groups of `size` consecutive threads (`unit`s: warps,
    /// warpgroups) that reach a statement all of whose threads take part
    /// (`what`): every thread of a group must, or none (a block's last
    /// group may be short; then it cannot).
    fn collective(
        &self,
        mask: &[bool],
        size: usize,
        unit: &str,
        what: &str,
    ) -> R<Vec<(usize, std::ops::Range<usize>)>> {
        let mut out = Vec::new();
        for g in 0..self.threads.div_ceil(size) {
            let lanes = g * size..((g + 1) * size).min(self.threads);
            let n = lanes.clone().filter(|t| mask[*t]).count();
            if n == 0 {
                continue;
            }
            if n != size {
                return Err(fail(
                    self.k,
                    format!(
                        "block {}: {what} reached by {n} of {unit} {g}'s {size} threads (divergent control flow, or a block that is not whole {unit}s)",
                        self.block_id
                    ),
                ));
            }
            out.push((g, lanes));
        }
        Ok(out)
    }

    /// `wgmma.wait_group keep` for warpgroup `g`: all but its `keep` most
    /// recent groups complete; their accumulators are written back.
    fn retire(&mut self, g: usize, lanes: std::ops::Range<usize>, keep: usize) -> R<()> {
        while self.groups[g].len() > keep {
            let p = self.groups[g].remove(0);
            for &(l, i) in &p.reads {
                self.async_reads[l][i] -= 1;
            }
            let n = p.d[0].len();
            for t in lanes.clone() {
                for i in 0..n / 2 {
                    let (r, c) = acc_element(t, i);
                    let at = p.at + i as i64;
                    let ix = self.local_index(p.acc, at, "store")?;
                    let len = self.k.locals[p.acc as usize].len as usize;
                    self.regs[p.acc as usize][t * len + ix] = V::F(p.d[r][c]);
                }
            }
        }
        Ok(())
    }

    /// An error if thread `t` touches register `l[i]` while an in-flight
    /// product of its warpgroup holds it.
    fn check_in_flight(&self, l: u32, t: usize, i: usize) -> R<()> {
        let Some(groups) = self.groups.get(t / 128) else {
            return Ok(());
        };
        for p in groups {
            let n = p.d[0].len() as i64;
            if p.acc == l && (p.at..p.at + n / 2).contains(&(i as i64)) {
                return Err(fail(
                    self.k,
                    format!(
                        "block {}: thread {t} touches {}[{i}], the accumulator of an in-flight wgmma, before wgmma.wait_group retires it",
                        self.block_id, self.k.locals[l as usize].name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Element (`mn`, `k`) of a K-major, unswizzled `wgmma` operand, read
    /// through its descriptor: start address, leading (K) and stride (M or
    /// N) byte offsets, each `>> 4`, in bits 0-13, 16-29 and 32-45; base
    /// offset (49-51) and swizzle mode (62-63) must be 0.
    fn operand(
        &mut self,
        desc: i64,
        mn: usize,
        k: usize,
        ty: Dtype,
        reads: &mut Vec<(usize, usize)>,
    ) -> R<f32> {
        let field = |lo: u32| ((desc >> lo) & 0x3FFF) << 4;
        let (start, lbo, sbo) = (field(0), field(16), field(32));
        let unused = desc & !((0x3FFF) | (0x3FFF << 16) | (0x3FFF << 32));
        if unused != 0 {
            return Err(fail(
                self.k,
                format!("wgmma descriptor {desc:#x}: base offset, swizzle or reserved bits set"),
            ));
        }
        let addr = start
            + (mn / 8) as i64 * sbo
            + (mn % 8) as i64 * 16
            + (k / 8) as i64 * lbo
            + (k % 8) as i64 * 2;
        let found = self.k.locals.iter().enumerate().find(|(l, loc)| {
            loc.space == Space::Shared
                && (self.bases[*l]..self.bases[*l] + i64::from(loc.len * loc.elem_bytes()))
                    .contains(&addr)
        });
        let Some((l, loc)) = found else {
            return Err(fail(
                self.k,
                format!(
                    "wgmma descriptor {desc:#x} reads shared address {addr:#x}, in no shared array"
                ),
            ));
        };
        if loc.narrow != Some(ty) {
            return Err(fail(
                self.k,
                format!(
                    "wgmma.{ty} reads shared {}, which does not hold {ty}",
                    loc.name
                ),
            ));
        }
        let i = ((addr - self.bases[l]) / 2) as usize;
        if (addr - self.bases[l]) % 2 != 0 {
            return Err(fail(
                self.k,
                format!("wgmma reads {} at an odd byte", loc.name),
            ));
        }
        if self.unfenced[l][i] != NONE {
            return Err(fail(
                self.k,
                format!(
                    "block {}: wgmma reads shared {}[{i}], written by thread {} with no fence.proxy.async after it",
                    self.block_id, loc.name, self.unfenced[l][i]
                ),
            ));
        }
        let e = &mut self.epochs[l][i];
        if e.writer != NONE {
            return Err(fail(
                self.k,
                format!(
                    "block {}: wgmma reads shared {}[{i}], written by thread {} with no barrier between",
                    self.block_id, loc.name, e.writer
                ),
            ));
        }
        e.reader = MANY;
        self.stats.shared_accesses += 1;
        reads.push((l, i));
        Ok(self.shared[l][i].f())
    }

    /// Counts the bank conflicts of one access to `m` at `i` by the active
    /// lanes of each warp (shared memory only; 4-byte words, 32 banks).
    fn banks(&mut self, m: Mem, i: &Ex, mask: &[bool]) -> R<()> {
        let Mem::Local(l) = m else { return Ok(()) };
        if self.k.locals[l as usize].space != Space::Shared {
            return Ok(());
        }
        let bytes = i64::from(self.k.locals[l as usize].elem_bytes());
        for w in 0..self.threads.div_ceil(32) {
            let mut words: Vec<Vec<i64>> = vec![Vec::new(); 32];
            for t in (w * 32..((w + 1) * 32).min(self.threads)).filter(|t| mask[*t]) {
                let at = self.eval(i, t)?.i() * bytes / 4;
                let bank = &mut words[at.rem_euclid(32) as usize];
                if !bank.contains(&at) {
                    bank.push(at);
                }
            }
            let ways = words.iter().map(Vec::len).max().unwrap_or(0) as u64;
            self.stats.bank_conflicts += ways.saturating_sub(1);
        }
        Ok(())
    }

    /// The lanes of each warp that reaches a warp-wide statement (`what`):
    /// all 32 of a warp must, or none.
    fn warps(&self, mask: &[bool], what: &str) -> R<Vec<std::ops::Range<usize>>> {
        Ok(self
            .collective(mask, 32, "warp", what)?
            .into_iter()
            .map(|(_, lanes)| lanes)
            .collect())
    }

    /// A warp-wide butterfly exchange (see `Stmt::ShflXor`): every lane of
    /// a warp that reaches it must take part.
    fn shfl_xor(&mut self, mask: &[bool], dst: Mem, at: i64, src: &Ex, x: i64) -> R<()> {
        if !(1..32).contains(&x) {
            return Err(fail(self.k, format!("a shuffle with lane mask {x}")));
        }
        for lanes in self.warps(mask, "a shuffle")? {
            let vals: Vec<V> = lanes.clone().map(|t| self.eval(src, t)).collect::<R<_>>()?;
            for t in lanes {
                let from = (t % 32) ^ x as usize;
                self.store(dst, t, at, vals[from])?;
            }
        }
        Ok(())
    }

    fn local_index(&self, l: u32, i: i64, what: &str) -> R<usize> {
        let len = self.k.locals[l as usize].len as i64;
        if !(0..len).contains(&i) {
            return Err(fail(
                self.k,
                format!(
                    "{what} of {}[{i}] out of bounds (length {len})",
                    self.k.locals[l as usize].name
                ),
            ));
        }
        Ok(i as usize)
    }

    fn store(&mut self, m: Mem, t: usize, i: i64, v: V) -> R<()> {
        match m {
            Mem::Value(k) => {
                let buf = &mut self.bufs[k as usize];
                let Some(slot) = usize::try_from(i).ok().and_then(|i| buf.get_mut(i)) else {
                    return Err(fail(
                        self.k,
                        format!("store to %{k}[{i}] out of bounds ({} elements)", buf.len()),
                    ));
                };
                *slot = self.k.storage[k as usize].round(v.f());
            }
            Mem::Local(l) => {
                let i = self.local_index(l, i, "store")?;
                let local = &self.k.locals[l as usize];
                match local.space {
                    Space::Register => {
                        self.check_in_flight(l, t, i)?;
                        self.regs[l as usize][t * local.len as usize + i] = v;
                    }
                    Space::Shared => {
                        self.stats.shared_accesses += 1;
                        let e = &mut self.epochs[l as usize][i];
                        let me = t as i32;
                        if (e.writer != NONE && e.writer != me)
                            || (e.reader != NONE && e.reader != me)
                        {
                            let other = if e.writer != NONE && e.writer != me {
                                format!("written by thread {}", e.writer)
                            } else {
                                "read by another thread".into()
                            };
                            return Err(fail(
                                self.k,
                                format!(
                                    "block {}: shared {}[{i}] written by thread {t} and {other} with no barrier between",
                                    self.block_id, local.name
                                ),
                            ));
                        }
                        if self.async_reads[l as usize][i] > 0 {
                            return Err(fail(
                                self.k,
                                format!(
                                    "block {}: shared {}[{i}] written by thread {t} while an in-flight wgmma reads it",
                                    self.block_id, local.name
                                ),
                            ));
                        }
                        e.writer = me;
                        self.unfenced[l as usize][i] = me;
                        self.shared[l as usize][i] = match local.narrow {
                            Some(d) => V::F(d.round(v.f())),
                            None => v,
                        };
                    }
                }
            }
        }
        Ok(())
    }

    fn load(&mut self, m: Mem, t: usize, i: i64) -> R<V> {
        match m {
            Mem::Value(k) => {
                self.stats.global_loads += 1;
                let buf = &self.bufs[k as usize];
                usize::try_from(i)
                    .ok()
                    .and_then(|i| buf.get(i))
                    .map(|x| V::F(*x))
                    .ok_or_else(|| {
                        fail(
                            self.k,
                            format!("load of %{k}[{i}] out of bounds ({} elements)", buf.len()),
                        )
                    })
            }
            Mem::Local(l) => {
                let i = self.local_index(l, i, "load")?;
                let local = &self.k.locals[l as usize];
                match local.space {
                    Space::Register => {
                        self.check_in_flight(l, t, i)?;
                        Ok(self.regs[l as usize][t * local.len as usize + i])
                    }
                    Space::Shared => {
                        self.stats.shared_accesses += 1;
                        let e = &mut self.epochs[l as usize][i];
                        let me = t as i32;
                        if e.writer != NONE && e.writer != me {
                            return Err(fail(
                                self.k,
                                format!(
                                    "block {}: shared {}[{i}] read by thread {t} and written by thread {} with no barrier between",
                                    self.block_id, local.name, e.writer
                                ),
                            ));
                        }
                        e.reader = if e.reader == NONE || e.reader == me {
                            me
                        } else {
                            MANY
                        };
                        Ok(self.shared[l as usize][i])
                    }
                }
            }
        }
    }

    fn eval(&mut self, e: &Ex, t: usize) -> R<V> {
        Ok(match e {
            Ex::F(x) => V::F(*x),
            Ex::I(x) => V::I(*x),
            Ex::B(x) => V::B(*x),
            Ex::Var(v) => self.vars[v.0 as usize][t],
            Ex::Size(k) => V::I(
                *self
                    .sizes
                    .get(*k as usize)
                    .ok_or_else(|| fail(self.k, format!("size {k} is not bound")))?,
            ),
            Ex::Special(s) => V::I(match s {
                Special::BlockId => self.block_id,
                Special::ThreadId => t as i64,
                Special::BlockDim => self.threads as i64,
            }),
            Ex::Load(m, i) => {
                let i = self.eval(i, t)?.i();
                self.load(*m, t, i)?
            }
            Ex::Un(u, a) => {
                let x = self.eval(a, t)?;
                match u {
                    Un::NegF => V::F(-x.f()),
                    Un::Not => V::B(!x.b()),
                    Un::Exp => V::F(x.f().exp()),
                    Un::Exp2 => V::F(x.f().exp2()),
                    Un::Log => V::F(x.f().ln()),
                    Un::Sqrt => V::F(x.f().sqrt()),
                    Un::Sin => V::F(x.f().sin()),
                    Un::Cos => V::F(x.f().cos()),
                    Un::AbsF => V::F(x.f().abs()),
                    Un::Floor => V::F(x.f().floor()),
                    Un::Ceil => V::F(x.f().ceil()),
                    Un::Tanh => V::F(x.f().tanh()),
                    Un::Erf => V::F(mixc_dsl::ops::erf(x.f() as f64) as f32),
                    Un::IToF => V::F(x.i() as f32),
                    Un::BToF => V::F(x.b() as u8 as f32),
                    Un::FToI => V::I(x.f() as i64),
                    Un::BToI => V::I(x.b() as i64),
                }
            }
            Ex::Bin(b, x, y) => {
                let (x, y) = (self.eval(x, t)?, self.eval(y, t)?);
                match b {
                    Bin::AddF => V::F(x.f() + y.f()),
                    Bin::SubF => V::F(x.f() - y.f()),
                    Bin::MulF => V::F(x.f() * y.f()),
                    Bin::DivF => V::F(x.f() / y.f()),
                    Bin::PowF => V::F(x.f().powf(y.f())),
                    Bin::MaxF => V::F(x.f().max(y.f())),
                    Bin::MinF => V::F(x.f().min(y.f())),
                    Bin::AddI => V::I(x.i().wrapping_add(y.i())),
                    Bin::SubI => V::I(x.i().wrapping_sub(y.i())),
                    Bin::MulI => V::I(x.i().wrapping_mul(y.i())),
                    Bin::DivI | Bin::RemI => {
                        let (a, d) = (x.i(), y.i());
                        if d == 0 {
                            return Err(fail(self.k, "integer division by zero in kernel IR"));
                        }
                        V::I(if *b == Bin::DivI {
                            a.wrapping_div(d)
                        } else {
                            a.wrapping_rem(d)
                        })
                    }
                    Bin::MaxI => V::I(x.i().max(y.i())),
                    Bin::XorI => V::I(x.i() ^ y.i()),
                    Bin::AndI => V::I(x.i() & y.i()),
                    Bin::ShlI => V::I(x.i().wrapping_shl(y.i() as u32)),
                    Bin::ShrI => V::I(x.i().wrapping_shr(y.i() as u32)),
                    Bin::MinI => V::I(x.i().min(y.i())),
                    Bin::And => V::B(x.b() && y.b()),
                    Bin::Or => V::B(x.b() || y.b()),
                    Bin::CmpF(p) => V::B(cmp(*p, x.f(), y.f())),
                    Bin::CmpI(p) => V::B(cmp(*p, x.i(), y.i())),
                    Bin::CmpB(p) => V::B(cmp(*p, x.b(), y.b())),
                }
            }
            Ex::SharedAddr(l) => V::I(self.bases[*l as usize]),
            Ex::Select(c, a, b) => {
                let c = self.eval(c, t)?.b();
                let (a, b) = (self.eval(a, t)?, self.eval(b, t)?);
                if c {
                    a
                } else {
                    b
                }
            }
        })
    }
}

fn cmp<T: PartialOrd>(p: Pred, a: T, b: T) -> bool {
    match p {
        Pred::Eq => a == b,
        Pred::Ne => a != b,
        Pred::Lt => a < b,
        Pred::Le => a <= b,
        Pred::Gt => a > b,
        Pred::Ge => a >= b,
    }
}

fn active(mask: &[bool]) -> impl Iterator<Item = usize> + '_ {
    mask.iter().enumerate().filter(|(_, m)| **m).map(|(t, _)| t)
}

fn garbage(ty: crate::kir::Scalar) -> V {
    // Locals start as garbage, as on a GPU: NaN shows a read before a write.
    match ty {
        crate::kir::Scalar::F32 => V::F(f32::NAN),
        crate::kir::Scalar::I64 => V::I(i64::MIN),
        crate::kir::Scalar::Bool => V::B(false),
    }
}

/// Runs one kernel over its whole grid on `bufs` (one per mixer value),
/// with `sizes` bound by name. Returns whether the error flag was set.
pub fn launch(
    k: &Kernel,
    sizes: &BTreeMap<String, i64>,
    bufs: &mut [Vec<f32>],
    stats: &mut SimStats,
) -> R<bool> {
    if k.buffers != bufs.len() {
        return Err(fail(
            k,
            format!("{} buffers for {} values", bufs.len(), k.buffers),
        ));
    }
    let mut size_vals = Vec::new();
    for name in &k.sizes {
        size_vals.push(
            *sizes
                .get(name)
                .ok_or_else(|| fail(k, format!("size `{name}` is not bound")))?,
        );
    }
    let blocks = k.launch.grid.eval(sizes).map_err(|e| fail(k, e))?;
    let threads = k.launch.block as usize;
    // Shared arrays one after another from a non-zero address, each
    // 16-byte aligned, as `wgmma` descriptors need (the PTX declares
    // them so).
    let mut bases = Vec::new();
    let mut next = 1024i64;
    for l in &k.locals {
        if l.space == Space::Shared {
            bases.push(next);
            next += (i64::from(l.len * l.elem_bytes()) + 15) / 16 * 16;
        } else {
            bases.push(0);
        }
    }
    let mut flag = false;
    for b in 0..blocks.max(0) {
        let mut blk = Block {
            k,
            sizes: &size_vals,
            bufs: &mut *bufs,
            threads,
            block_id: b,
            vars: k
                .vars
                .iter()
                .map(|(_, ty)| vec![garbage(*ty); threads])
                .collect(),
            regs: k
                .locals
                .iter()
                .map(|l| match l.space {
                    Space::Register => vec![garbage(l.ty); l.len as usize * threads],
                    Space::Shared => Vec::new(),
                })
                .collect(),
            shared: k
                .locals
                .iter()
                .map(|l| match l.space {
                    Space::Shared => vec![garbage(l.ty); l.len as usize],
                    Space::Register => Vec::new(),
                })
                .collect(),
            epochs: k
                .locals
                .iter()
                .map(|l| match l.space {
                    Space::Shared => vec![
                        Epoch {
                            writer: NONE,
                            reader: NONE
                        };
                        l.len as usize
                    ],
                    Space::Register => Vec::new(),
                })
                .collect(),
            unfenced: k
                .locals
                .iter()
                .map(|l| match l.space {
                    Space::Shared => vec![NONE; l.len as usize],
                    Space::Register => Vec::new(),
                })
                .collect(),
            bases: bases.clone(),
            groups: (0..threads.div_ceil(128)).map(|_| Vec::new()).collect(),
            async_reads: k
                .locals
                .iter()
                .map(|l| match l.space {
                    Space::Shared => vec![0; l.len as usize],
                    Space::Register => Vec::new(),
                })
                .collect(),
            flag: false,
            stats: SimStats::default(),
        };
        blk.stmts(&k.body, &vec![true; threads])?;
        if blk.groups.iter().any(|g| !g.is_empty()) {
            return Err(fail(
                k,
                format!("block {b}: a wgmma still in flight when the kernel ends"),
            ));
        }
        flag |= blk.flag;
        stats.blocks += 1;
        stats.barriers += blk.stats.barriers;
        stats.shared_accesses += blk.stats.shared_accesses;
        stats.global_loads += blk.stats.global_loads;
        stats.steps += blk.stats.steps;
        stats.mma += blk.stats.mma;
        stats.bank_conflicts += blk.stats.bank_conflicts;
    }
    Ok(flag)
}

/// Runs kernels in order, as a GPU stream would; an error flag set by any
/// of them is reported as an error.
pub fn run(
    kernels: &[Kernel],
    sizes: &BTreeMap<String, i64>,
    bufs: &mut [Vec<f32>],
) -> R<SimStats> {
    let mut stats = SimStats::default();
    for k in kernels {
        if launch(k, sizes, bufs, &mut stats)? {
            return Err(BackendError::Runtime("integer division by zero".into()));
        }
    }
    Ok(stats)
}

/// Lowers a verified module to its GPU kernels (kernel IR, the tiled
/// templates included; sizes other than `B` and `L` folded in, as a
/// bundle's are) and runs them in the simulator on `bufs`. Values a
/// template absorbs are left as they were.
pub fn run_mixer(
    m: &mixc_compiler::ir::Module,
    sizes: &BTreeMap<String, i64>,
    bufs: &mut [Vec<f32>],
) -> R<(Vec<Kernel>, SimStats)> {
    let verified =
        mixc_compiler::ir::verify::verify(m).map_err(|e| BackendError::Runtime(e.to_string()))?;
    let fixed: BTreeMap<String, i64> = sizes
        .iter()
        .filter(|(k, _)| !m.run_time_sizes().contains(k))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    let low = crate::kir::lower_module(verified.module(), &fixed, true)?;
    let stats = low.with_buffers(sizes, bufs, |b| run(&low.kernels, sizes, b))?;
    Ok((low.kernels, stats))
}
