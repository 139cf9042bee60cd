//! Executing a kernel: blocks one after another, the warps of a block in
//! turn between barriers, the 32 lanes of a warp in lockstep under an
//! active mask.
//!
//! Divergence: a warp keeps groups of lanes, each at its own pc; it runs
//! the group with the lowest pc and merges groups that reach the same pc
//! (lanes that leave a loop wait, at a higher pc, for those still in it).
//! Warp-collective instructions (`bar.sync`, `shfl.sync`, `mma.sync`,
//! `wgmma`) park the group that reaches them until every live lane of the
//! warp has arrived; lanes elsewhere run first.

// Fragment layouts are index arithmetic: indexed loops read as the ISA's
// tables do.
#![allow(clippy::needless_range_loop)]

use crate::alu::eval;
use crate::ir::*;
use crate::mem::Memory;
use crate::{EmuError, Stats};

type R<T> = Result<T, Box<EmuError>>;
use std::collections::VecDeque;

const FULL: u32 = u32::MAX;
/// A shared-memory unit read by more than one thread in an epoch.
const MANY: u32 = u32::MAX;

pub(crate) struct Launch<'a> {
    pub k: &'a Kernel,
    pub globals: &'a [u64],
    pub params: Vec<u8>,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub dyn_shared: u32,
    pub mem: &'a mut Memory,
    pub stats: Stats,
    pub limit: u64,
    pub check_races: bool,
}

/// Who last wrote and read a 2-byte unit of shared memory, and in which
/// epoch (the number of barriers the block has passed, from 1; 0: never).
#[derive(Clone, Copy, Default)]
struct Shadow {
    w_ep: u32,
    w_t: u32,
    r_ep: u32,
    r_t: u32,
    /// The writer's count of `fence.proxy.async` when it wrote.
    w_fence: u32,
}

struct Block {
    ctaid: [u32; 3],
    shared: Vec<u8>,
    shadow: Vec<Shadow>,
    epoch: u32,
    /// `fence.proxy.async` instructions each thread has executed.
    fences: Vec<u32>,
}

struct WgJob {
    n: u32,
    bf16: bool,
    d: Vec<u32>,
    a_desc: Option<u64>,
    /// A's register fragments, per lane (when A is in registers).
    a_regs: Vec<[u64; 4]>,
    b_desc: u64,
    accumulate: bool,
    neg_a: bool,
    neg_b: bool,
    line: usize,
}

struct Warp {
    id: u32,
    regs: Vec<u64>,
    written: Vec<u32>,
    pc: u32,
    mask: u32,
    pending: Vec<(u32, u32)>,
    parked: Vec<(u32, u32)>,
    /// Lanes that are threads of the block.
    present: u32,
    exited: u32,
    local: Vec<u8>,
    /// Which bytes of `local` a store wrote.
    local_written: Vec<bool>,
    /// The PTX line of the shared load that left a register undefined.
    poison_line: Vec<u32>,
    wg_open: Vec<WgJob>,
    wg_groups: VecDeque<Vec<WgJob>>,
    /// Accumulator registers of wgmma operations not yet waited for.
    inflight: Vec<bool>,
    /// `wgmma.fence` instructions the warp has executed, and that count
    /// when each register was last written by an ordinary instruction
    /// (`u32::MAX`: never, or only by a wgmma).
    fences: u32,
    wrote_at: Vec<u32>,
    inflight_n: u32,
    done: bool,
}

enum Stop {
    Barrier,
    Done,
}

impl Launch<'_> {
    fn threads(&self) -> u32 {
        self.block[0] * self.block[1] * self.block[2]
    }

    pub fn run(&mut self) -> R<()> {
        let shared_len = (self.k.shared_bytes + self.dyn_shared) as usize;
        let mut block = Block {
            ctaid: [0; 3],
            shared: vec![0; shared_len],
            shadow: vec![Shadow::default(); shared_len.div_ceil(2)],
            epoch: 1,
            fences: vec![0; self.threads() as usize],
        };
        for z in 0..self.grid[2] {
            for y in 0..self.grid[1] {
                for x in 0..self.grid[0] {
                    block.ctaid = [x, y, z];
                    block.shared.fill(0);
                    block.shadow.fill(Shadow::default());
                    block.fences.fill(0);
                    block.epoch = 1;
                    self.run_block(&mut block)?;
                }
            }
        }
        Ok(())
    }

    fn err(&self, b: &Block, pc: usize, warp: Option<(u32, u32)>, msg: String) -> Box<EmuError> {
        self.err_at(b.ctaid, pc, warp, msg)
    }

    fn err_at(
        &self,
        ctaid: [u32; 3],
        pc: usize,
        warp: Option<(u32, u32)>,
        msg: String,
    ) -> Box<EmuError> {
        let ins = self.k.code.get(pc);
        Box::new(EmuError {
            msg,
            kernel: self.k.name.clone(),
            line: ins.map(|i| i.line).unwrap_or(0),
            instr: ins.map(|i| i.text.clone()).unwrap_or_default(),
            block: Some(ctaid),
            thread: warp.map(|(w, l)| self.tid(w * 32 + l)),
            address: None,
        })
    }

    fn tid(&self, linear: u32) -> [u32; 3] {
        let [bx, by, _] = self.block;
        [linear % bx, (linear / bx) % by, linear / (bx * by)]
    }

    fn new_warp(&self, b: &Block, id: u32) -> Warp {
        let k = self.k;
        let n = self.threads();
        let mut present = 0u32;
        for l in 0..32 {
            if id * 32 + l < n {
                present |= 1 << l;
            }
        }
        let slots = k.slots as usize;
        let mut regs = vec![0u64; slots * 32];
        let mut written = vec![0u32; slots];
        for l in 0..32u32 {
            let t = self.tid(id * 32 + l);
            let vals = [
                t[0],
                t[1],
                t[2],
                self.block[0],
                self.block[1],
                self.block[2],
                b.ctaid[0],
                b.ctaid[1],
                b.ctaid[2],
                self.grid[0],
                self.grid[1],
                self.grid[2],
                l,
                id,
            ];
            for (s, v) in vals.iter().enumerate() {
                regs[s * 32 + l as usize] = u64::from(*v);
            }
        }
        for w in written.iter_mut().take(SPECIALS.len() + 1) {
            *w = FULL;
        }
        Warp {
            id,
            regs,
            written,
            pc: 0,
            mask: present,
            pending: Vec::new(),
            parked: Vec::new(),
            present,
            exited: 0,
            local: vec![0; k.local_bytes as usize * 32],
            local_written: vec![false; k.local_bytes as usize * 32],
            poison_line: vec![0; slots],
            wg_open: Vec::new(),
            wg_groups: VecDeque::new(),
            inflight: vec![false; slots],
            fences: 0,
            wrote_at: vec![u32::MAX; slots],
            inflight_n: 0,
            done: present == 0,
        }
    }

    fn run_block(&mut self, b: &mut Block) -> R<()> {
        let n = self.threads();
        let nwarps = n.div_ceil(32);
        let mut warps: Vec<Warp> = (0..nwarps).map(|i| self.new_warp(b, i)).collect();
        loop {
            let mut at_bar = 0;
            for w in warps.iter_mut() {
                if w.done {
                    continue;
                }
                match self.run_warp(w, b)? {
                    Stop::Barrier => at_bar += 1,
                    Stop::Done => w.done = true,
                }
            }
            if at_bar == 0 {
                break;
            }
            // Every thread must reach the barrier.
            let waiting: Vec<&Warp> = warps.iter().filter(|w| !w.done).collect();
            if let Some(w) = warps.iter().find(|w| w.done || w.exited != 0) {
                let bar = waiting[0];
                let lane = if w.exited != 0 {
                    w.exited.trailing_zeros()
                } else {
                    0
                };
                let arrived: u32 = warps
                    .iter()
                    .filter(|w| !w.done)
                    .map(|w| (w.mask).count_ones())
                    .sum();
                return Err(self.err(
                    b,
                    bar.pc as usize,
                    Some((w.id, lane)),
                    format!(
                        "barrier not reached by every thread of the block: {arrived} of {n} threads wait at it, this thread exited without reaching it"
                    ),
                ));
            }
            for w in warps.iter_mut() {
                w.pc += 1;
            }
            b.epoch += 1;
        }
        for w in &warps {
            if !w.wg_open.is_empty() || !w.wg_groups.is_empty() {
                return Err(self.err(
                    b,
                    self.k.code.len().saturating_sub(1),
                    Some((w.id, 0)),
                    "the kernel exits with wgmma operations never waited for (wgmma.wait_group)"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// Runs a warp until all its live lanes wait at a barrier or exit.
    fn run_warp(&mut self, w: &mut Warp, b: &mut Block) -> R<Stop> {
        let code = &self.k.code;
        let mut pend_min = u32::MAX;
        loop {
            if w.mask == 0 {
                if !w.pending.is_empty() {
                    let pc = w.pending.iter().map(|g| g.0).min().unwrap_or(0);
                    let mut m = 0;
                    w.pending.retain(|g| {
                        if g.0 == pc {
                            m |= g.1;
                            false
                        } else {
                            true
                        }
                    });
                    w.pc = pc;
                    w.mask = m;
                    pend_min = w.pending.iter().map(|g| g.0).min().unwrap_or(u32::MAX);
                    continue;
                }
                if w.parked.is_empty() {
                    return Ok(Stop::Done);
                }
                let pc = w.parked[0].0;
                if let Some(g) = w.parked.iter().find(|g| g.0 != pc) {
                    let other = code[g.0 as usize].line;
                    return Err(self.err(
                        b,
                        pc as usize,
                        Some((w.id, w.parked[0].1.trailing_zeros())),
                        format!(
                            "divergent warp: lanes wait at different collective instructions (this one and line {other})"
                        ),
                    ));
                }
                w.mask = w.parked.iter().fold(0, |m, g| m | g.1);
                w.pc = pc;
                w.parked.clear();
            }
            let pc = w.pc as usize;
            let Some(ins) = code.get(pc) else {
                return Err(self.err(
                    b,
                    pc.saturating_sub(1),
                    Some((w.id, w.mask.trailing_zeros())),
                    "execution ran past the end of the kernel".into(),
                ));
            };
            self.stats.warp_instructions += 1;
            if self.stats.warp_instructions > self.limit {
                return Err(self.err(
                    b,
                    pc,
                    Some((w.id, w.mask.trailing_zeros())),
                    format!(
                        "more than {} warp instructions: an endless loop?",
                        self.limit
                    ),
                ));
            }
            if ins.op.collective() {
                if !w.pending.is_empty() || !w.parked.is_empty() {
                    w.parked.push((w.pc, w.mask));
                    w.mask = 0;
                    self.stats.warp_instructions -= 1;
                    continue;
                }
                let live = w.present & !w.exited;
                if w.mask != live {
                    let missing = live & !w.mask;
                    return Err(self.err(
                        b,
                        pc,
                        Some((w.id, w.mask.trailing_zeros())),
                        format!(
                            "warp-collective instruction reached by lanes {:#010x} of the warp's live lanes {live:#010x} (lane {} is elsewhere)",
                            w.mask,
                            missing.trailing_zeros()
                        ),
                    ));
                }
                if let Some((p, neg)) = ins.guard {
                    let v = w.regs[p as usize * 32 + w.mask.trailing_zeros() as usize] != 0;
                    if v == neg {
                        // Predicated off for the (uniform) warp.
                        w.pc += 1;
                        continue;
                    }
                }
                self.stats.thread_instructions += u64::from(w.mask.count_ones());
                if let Op::Bar { .. } = ins.op {
                    if w.exited != 0 {
                        return Err(self.err(
                            b,
                            pc,
                            Some((w.id, w.exited.trailing_zeros())),
                            "barrier not reached by every thread of the block: this thread exited without reaching it".into(),
                        ));
                    }
                    return Ok(Stop::Barrier);
                }
                if w.inflight_n > 0 && matches!(ins.op, Op::Shfl { .. } | Op::Mma { .. }) {
                    self.check_inflight(w, b, pc)?;
                }
                self.collective(w, b, pc)?;
                w.pc += 1;
                continue;
            }
            if w.inflight_n > 0 {
                self.check_inflight(w, b, pc)?;
            }
            // The lanes the guard enables.
            let eff = match ins.guard {
                None => w.mask,
                Some((p, neg)) => {
                    let base = p as usize * 32;
                    let mut m = 0u32;
                    let mut rest = w.mask;
                    if w.written[p as usize] & rest != rest {
                        return Err(self.unwritten(w, b, pc, p, rest));
                    }
                    while rest != 0 {
                        let l = rest.trailing_zeros();
                        rest &= rest - 1;
                        if (w.regs[base + l as usize] != 0) != neg {
                            m |= 1 << l;
                        }
                    }
                    m
                }
            };
            self.stats.thread_instructions += u64::from(eff.count_ones());
            match &ins.op {
                Op::Bra { target } => {
                    let not_taken = w.mask & !eff;
                    if not_taken == 0 {
                        w.pc = *target;
                    } else if eff == 0 {
                        w.pc += 1;
                    } else {
                        w.pending.push((*target, eff));
                        w.pending.push((w.pc + 1, not_taken));
                        w.mask = 0;
                        continue;
                    }
                }
                Op::Exit => {
                    w.exited |= eff;
                    w.mask &= !eff;
                    w.pc += 1;
                    if w.mask == 0 {
                        continue;
                    }
                }
                op => {
                    if eff != 0 {
                        self.exec(w, b, pc, op, eff)?;
                    }
                    w.pc += 1;
                }
            }
            if w.pc >= pend_min && !w.pending.is_empty() {
                w.pending.push((w.pc, w.mask));
                w.mask = 0;
                pend_min = u32::MAX;
            }
        }
    }

    /// Registers an instruction reads or writes must not be accumulators
    /// of a wgmma still in flight (the PTX ISA leaves that undefined).
    fn check_inflight(&self, w: &Warp, b: &Block, pc: usize) -> R<()> {
        let ins = &self.k.code[pc];
        let mut regs: Vec<u32> = Vec::new();
        let src = |s: &Src, regs: &mut Vec<u32>| {
            if let Src::Reg(r) = s {
                regs.push(*r);
            }
        };
        match &ins.op {
            Op::Alu { d, s, .. } | Op::MadCc { d, s, .. } => {
                regs.push(*d);
                s.iter().for_each(|x| src(x, &mut regs));
            }
            Op::Ld { d, n, base, .. } => {
                regs.extend(&d[..usize::from(*n)]);
                src(base, &mut regs);
            }
            Op::LdParam { d, .. } => regs.push(*d),
            Op::Unpack { d, s, .. } => {
                regs.extend(d);
                src(s, &mut regs);
            }
            Op::St { s, n, base, .. } => {
                s[..usize::from(*n)].iter().for_each(|x| src(x, &mut regs));
                src(base, &mut regs);
            }
            Op::Shfl { d, a, .. } => {
                regs.push(*d);
                src(a, &mut regs);
            }
            Op::Mma { d, a, b: bb, c, .. } => {
                regs.extend(d);
                a.iter().chain(bb).chain(c).for_each(|x| src(x, &mut regs));
            }
            _ => {}
        }
        if let Some(r) = regs.into_iter().find(|r| w.inflight[*r as usize]) {
            return Err(self.err(
                b,
                pc,
                Some((w.id, w.mask.trailing_zeros())),
                format!(
                    "register `{}` is the accumulator of a wgmma.mma_async not yet waited for (wgmma.wait_group): using it is undefined",
                    self.k.reg_names[r as usize]
                ),
            ));
        }
        Ok(())
    }

    fn unwritten(&self, w: &Warp, b: &Block, pc: usize, slot: u32, m: u32) -> Box<EmuError> {
        let lanes = m & !w.written[slot as usize];
        self.err(
            b,
            pc,
            Some((w.id, lanes.trailing_zeros())),
            match w.poison_line[slot as usize] {
                0 => format!(
                    "read of register `{}`, which this thread never wrote",
                    self.k.reg_names[slot as usize]
                ),
                line => format!(
                    "read of register `{}`, which holds shared memory no thread wrote (loaded at PTX line {line})",
                    self.k.reg_names[slot as usize]
                ),
            },
        )
    }

    #[inline]
    fn check(&self, w: &Warp, b: &Block, pc: usize, s: &[Src], m: u32) -> R<()> {
        for x in s {
            if let Src::Reg(r) = *x {
                if w.written[r as usize] & m != m {
                    return Err(self.unwritten(w, b, pc, r, m));
                }
            }
        }
        Ok(())
    }

    #[inline]
    fn get(&self, w: &Warp, s: Src, lane: usize) -> u64 {
        match s {
            Src::Reg(r) => w.regs[r as usize * 32 + lane],
            Src::Imm(v) => v,
            Src::Glob(g) => self.globals[g as usize],
        }
    }

    fn exec(&mut self, w: &mut Warp, b: &mut Block, pc: usize, op: &Op, m: u32) -> R<()> {
        match op {
            Op::Alu { f, d, s } => {
                self.check(w, b, pc, s, m)?;
                let base = *d as usize * 32;
                let mut rest = m;
                if rest == FULL {
                    for l in 0..32 {
                        let v = eval(
                            *f,
                            self.get(w, s[0], l),
                            self.get(w, s[1], l),
                            self.get(w, s[2], l),
                        );
                        w.regs[base + l] = v;
                    }
                } else {
                    while rest != 0 {
                        let l = rest.trailing_zeros() as usize;
                        rest &= rest - 1;
                        let v = eval(
                            *f,
                            self.get(w, s[0], l),
                            self.get(w, s[1], l),
                            self.get(w, s[2], l),
                        );
                        w.regs[base + l] = v;
                    }
                }
                w.written[*d as usize] |= m;
                w.wrote_at[*d as usize] = w.fences;
            }
            Op::Unpack { d, s, w: bits } => {
                self.check(w, b, pc, std::slice::from_ref(s), m)?;
                let mask = (1u64 << bits) - 1;
                let mut rest = m;
                while rest != 0 {
                    let l = rest.trailing_zeros() as usize;
                    rest &= rest - 1;
                    let v = self.get(w, *s, l);
                    w.regs[d[0] as usize * 32 + l] = v & mask;
                    w.regs[d[1] as usize * 32 + l] = (v >> bits) & mask;
                }
                for r in d {
                    w.written[*r as usize] |= m;
                    w.wrote_at[*r as usize] = w.fences;
                }
            }
            Op::MadCc {
                hi,
                carry_in,
                carry_out,
                d,
                s,
            } => {
                self.check(w, b, pc, s, m)?;
                if *carry_in && w.written[CC_SLOT as usize] & m != m {
                    return Err(self.err(
                        b,
                        pc,
                        Some((w.id, m.trailing_zeros())),
                        "carry-in read before any instruction set the carry flag".into(),
                    ));
                }
                let mut rest = m;
                while rest != 0 {
                    let l = rest.trailing_zeros() as usize;
                    rest &= rest - 1;
                    let (x, y, z) = (
                        self.get(w, s[0], l) & 0xffff_ffff,
                        self.get(w, s[1], l) & 0xffff_ffff,
                        self.get(w, s[2], l) & 0xffff_ffff,
                    );
                    let p = x * y;
                    let p = if *hi { p >> 32 } else { p & 0xffff_ffff };
                    let cin = if *carry_in {
                        w.regs[CC_SLOT as usize * 32 + l] & 1
                    } else {
                        0
                    };
                    let sum = p + z + cin;
                    w.regs[*d as usize * 32 + l] = sum & 0xffff_ffff;
                    if *carry_out {
                        w.regs[CC_SLOT as usize * 32 + l] = sum >> 32;
                    }
                }
                w.written[*d as usize] |= m;
                w.wrote_at[*d as usize] = w.fences;
                if *carry_out {
                    w.written[CC_SLOT as usize] |= m;
                }
            }
            Op::LdParam { d, off, bytes } => {
                let o = *off as usize;
                let mut v = [0u8; 8];
                v[..*bytes as usize].copy_from_slice(&self.params[o..o + *bytes as usize]);
                let v = u64::from_le_bytes(v);
                let mut rest = m;
                while rest != 0 {
                    let l = rest.trailing_zeros() as usize;
                    rest &= rest - 1;
                    w.regs[*d as usize * 32 + l] = v;
                }
                w.written[*d as usize] |= m;
                w.wrote_at[*d as usize] = w.fences;
            }
            Op::Ld {
                space,
                bytes,
                n,
                d,
                base,
                off,
                nc,
            } => {
                self.check(w, b, pc, &[*base], m)?;
                let total = usize::from(*bytes) * usize::from(*n);
                let mut poisoned = [0u32; 4];
                let mut rest = m;
                while rest != 0 {
                    let l = rest.trailing_zeros() as usize;
                    rest &= rest - 1;
                    let addr = self.get(w, *base, l).wrapping_add(*off as u64);
                    let mut buf = [0u8; 32];
                    if *nc {
                        let m = &*self.mem;
                        if let Err(msg) = m.read_nc(addr, &mut buf[..total]) {
                            let mut e = self.err(b, pc, Some((w.id, l as u32)), msg);
                            e.address = Some(addr);
                            return Err(e);
                        }
                        continue_lane(&mut w.regs, d, *n, *bytes, l, &buf);
                        continue;
                    }
                    let e = usize::from(*bytes);
                    let undef =
                        self.access(w, b, pc, l, *space, addr, &mut buf[..total], false, e)?;
                    continue_lane(&mut w.regs, d, *n, *bytes, l, &buf);
                    // An element read from shared memory no thread wrote
                    // leaves its register undefined: using it is the error
                    // (a vector load may read a padding element it never
                    // uses, which is harmless).
                    for k in 0..usize::from(*n) {
                        if undef & (1 << k) != 0 {
                            poisoned[k] |= 1 << l;
                        }
                    }
                }
                for (k, r) in d.iter().take(usize::from(*n)).enumerate() {
                    w.written[*r as usize] |= m;
                    w.wrote_at[*r as usize] = w.fences;
                    if poisoned[k] != 0 {
                        w.written[*r as usize] &= !poisoned[k];
                        w.poison_line[*r as usize] = self.k.code[pc].line;
                    }
                }
            }
            Op::St {
                space,
                bytes,
                n,
                s,
                base,
                off,
            } => {
                self.check(w, b, pc, &[*base], m)?;
                self.check(w, b, pc, &s[..usize::from(*n)], m)?;
                let total = usize::from(*bytes) * usize::from(*n);
                let mut rest = m;
                while rest != 0 {
                    let l = rest.trailing_zeros() as usize;
                    rest &= rest - 1;
                    let addr = self.get(w, *base, l).wrapping_add(*off as u64);
                    let mut buf = [0u8; 32];
                    for k in 0..usize::from(*n) {
                        let e = usize::from(*bytes);
                        let v = self.get(w, s[k], l).to_le_bytes();
                        buf[k * e..(k + 1) * e].copy_from_slice(&v[..e]);
                    }
                    self.access(
                        w,
                        b,
                        pc,
                        l,
                        *space,
                        addr,
                        &mut buf[..total],
                        true,
                        usize::from(*bytes),
                    )?;
                }
            }
            Op::FenceProxyAsync => {
                let mut rest = m;
                while rest != 0 {
                    let l = rest.trailing_zeros();
                    rest &= rest - 1;
                    b.fences[(w.id * 32 + l) as usize] += 1;
                }
            }
            _ => {
                return Err(self.err(
                    b,
                    pc,
                    Some((w.id, m.trailing_zeros())),
                    "internal: collective executed per lane".into(),
                ));
            }
        }
        Ok(())
    }

    /// One lane's load (`write` false: fills `buf`) or store (`buf`).
    #[allow(clippy::too_many_arguments)]
    fn access(
        &mut self,
        w: &mut Warp,
        b: &mut Block,
        pc: usize,
        lane: usize,
        space: Space,
        addr: u64,
        buf: &mut [u8],
        write: bool,
        elem: usize,
    ) -> R<u8> {
        let len = buf.len() as u64;
        let what = if write { "write" } else { "read" };
        let ctaid = b.ctaid;
        let wid = w.id;
        let at = |this: &Self, msg: String| {
            let mut e = this.err_at(ctaid, pc, Some((wid, lane as u32)), msg);
            e.address = Some(addr);
            e
        };
        if !addr.is_multiple_of(len) {
            return Err(at(
                self,
                format!("misaligned {space:?} {what} of {len} bytes").to_lowercase(),
            ));
        }
        // A generic address: its window says the space.
        let (space, addr) = match space {
            Space::Generic if (SHARED_WINDOW..SHARED_WINDOW + WINDOW).contains(&addr) => {
                (Space::Shared, addr - SHARED_WINDOW)
            }
            Space::Generic if (LOCAL_WINDOW..LOCAL_WINDOW + WINDOW).contains(&addr) => {
                (Space::Local, addr - LOCAL_WINDOW)
            }
            Space::Generic => (Space::Global, addr),
            s => (s, addr),
        };
        match space {
            Space::Generic => unreachable!("resolved above"),
            Space::Global => {
                let r = if write {
                    self.mem.write(addr, buf)
                } else {
                    self.mem.read_into(addr, buf)
                };
                r.map(|()| 0).map_err(|near| {
                    at(
                        self,
                        format!("out-of-bounds global {what} of {len} bytes ({near})"),
                    )
                })
            }
            Space::Local => {
                let size = u64::from(self.k.local_bytes);
                if addr.checked_add(len).is_none_or(|e| e > size) {
                    return Err(at(self, format!("out-of-bounds local {what} of {len} bytes (the thread's local memory is {size} bytes)")));
                }
                let base = lane * self.k.local_bytes as usize + addr as usize;
                let span = base..base + buf.len();
                if write {
                    w.local[span.clone()].copy_from_slice(buf);
                    w.local_written[span].fill(true);
                } else {
                    if !w.local_written[span.clone()].iter().all(|x| *x) {
                        return Err(at(
                            self,
                            "read of local memory this thread never wrote".into(),
                        ));
                    }
                    buf.copy_from_slice(&w.local[span]);
                }
                Ok(0)
            }
            Space::Shared => {
                let size = b.shared.len() as u64;
                if addr.checked_add(len).is_none_or(|e| e > size) {
                    return Err(at(self, format!("out-of-bounds shared {what} of {len} bytes (the block has {size} bytes of shared memory)")));
                }
                let t = w.id * 32 + lane as u32;
                let a = addr as usize;
                // Elements read from units no thread wrote: undefined.
                let mut undef = 0u8;
                for u in a / 2..(a + buf.len()).div_ceil(2) {
                    match shadow_access(&mut b.shadow[u], b.epoch, t, write, self.check_races) {
                        Err(msg) => {
                            let mut e = at(self, msg);
                            e.address = Some(u as u64 * 2);
                            return Err(e);
                        }
                        Ok(false) => undef |= 1 << ((u * 2 - a) / elem.max(1)),
                        Ok(true) => {}
                    }
                    if write {
                        b.shadow[u].w_fence = b.fences[t as usize];
                    }
                }
                if write {
                    b.shared[a..a + buf.len()].copy_from_slice(buf);
                } else {
                    buf.copy_from_slice(&b.shared[a..a + buf.len()]);
                }
                Ok(undef)
            }
        }
    }

    fn collective(&mut self, w: &mut Warp, b: &mut Block, pc: usize) -> R<()> {
        let ins = &self.k.code[pc];
        let m = w.mask;
        match &ins.op {
            Op::Shfl {
                mode,
                d,
                p,
                a,
                b: bs,
                c,
                mask: mm,
            } => {
                self.check(w, b, pc, &[*a, *bs, *c, *mm], m)?;
                let vals: Vec<u64> = (0..32).map(|l| self.get(w, *a, l) & 0xffff_ffff).collect();
                for l in 0..32usize {
                    if m & (1 << l) == 0 {
                        continue;
                    }
                    let member = self.get(w, *mm, l) as u32;
                    if member & w.present & !m != 0 {
                        let lane = (member & w.present & !m).trailing_zeros();
                        return Err(self.err(b, pc, Some((w.id, l as u32)), format!("shfl.sync member mask {member:#010x} names lane {lane}, which does not execute it (it exited or is elsewhere)")));
                    }
                    if member & m != m || member & (1 << l) == 0 {
                        return Err(self.err(b, pc, Some((w.id, l as u32)), format!("shfl.sync member mask {member:#010x} does not cover the active lanes {m:#010x}")));
                    }
                    let bv = (self.get(w, *bs, l) & 0x1f) as i32;
                    let cv = self.get(w, *c, l) as u32;
                    let seg = ((cv >> 8) & 0x1f) as i32;
                    let clamp = (cv & 0x1f) as i32;
                    let lane = l as i32;
                    let max_lane = (lane & seg) | (clamp & !seg);
                    let min_lane = lane & seg;
                    let (j, ok) = match mode {
                        ShflMode::Up => (lane - bv, lane - bv >= max_lane),
                        ShflMode::Down => (lane + bv, lane + bv <= max_lane),
                        ShflMode::Bfly => (lane ^ bv, (lane ^ bv) <= max_lane),
                        ShflMode::Idx => {
                            let j = min_lane | (bv & !seg);
                            (j, j <= max_lane)
                        }
                    };
                    let j = if ok { j } else { lane };
                    if m & (1 << j) == 0 {
                        return Err(self.err(
                            b,
                            pc,
                            Some((w.id, l as u32)),
                            format!("shfl.sync reads lane {j}, which is not active"),
                        ));
                    }
                    w.regs[*d as usize * 32 + l] = vals[j as usize];
                    if let Some(p) = p {
                        w.regs[*p as usize * 32 + l] = u64::from(ok);
                    }
                }
                w.written[*d as usize] |= m;
                w.wrote_at[*d as usize] = w.fences;
                if let Some(p) = p {
                    w.written[*p as usize] |= m;
                    w.wrote_at[*p as usize] = w.fences;
                }
            }
            Op::Mma {
                bf16,
                d,
                a,
                b: bb,
                c,
            } => {
                if m != FULL {
                    return Err(self.err(
                        b,
                        pc,
                        Some((w.id, 0)),
                        "mma.sync needs all 32 lanes of the warp".into(),
                    ));
                }
                self.check(w, b, pc, a, m)?;
                self.check(w, b, pc, bb, m)?;
                self.check(w, b, pc, c, m)?;
                let mut am = [[0f64; 16]; 16];
                let mut bm = [[0f64; 8]; 16];
                let mut cm = [[0f64; 8]; 16];
                for l in 0..32usize {
                    let (g, t) = (l / 4, l % 4);
                    for i in 0..8 {
                        let reg = self.get(w, a[i / 2], l);
                        let h = (reg >> (16 * (i % 2))) as u16;
                        let row = g + 8 * ((i >> 1) & 1);
                        let col = t * 2 + (i & 1) + 8 * (i >> 2);
                        am[row][col] = h16(h, *bf16);
                    }
                    for i in 0..4 {
                        let reg = self.get(w, bb[i / 2], l);
                        let h = (reg >> (16 * (i % 2))) as u16;
                        let row = t * 2 + (i & 1) + 8 * (i >> 1);
                        bm[row][g] = h16(h, *bf16);
                    }
                    for i in 0..4 {
                        let row = g + 8 * (i >> 1);
                        let col = t * 2 + (i & 1);
                        cm[row][col] = f64::from(f32::from_bits(self.get(w, c[i], l) as u32));
                    }
                }
                for l in 0..32usize {
                    let (g, t) = (l / 4, l % 4);
                    for i in 0..4 {
                        let row = g + 8 * (i >> 1);
                        let col = t * 2 + (i & 1);
                        let mut s = cm[row][col];
                        for k in 0..16 {
                            s += am[row][k] * bm[k][col];
                        }
                        w.regs[d[i] as usize * 32 + l] = u64::from((s as f32).to_bits());
                    }
                }
                for r in d {
                    w.written[*r as usize] |= m;
                    w.wrote_at[*r as usize] = w.fences;
                }
            }
            Op::WgFence => w.fences += 1,
            Op::WgCommit => {
                let g = std::mem::take(&mut w.wg_open);
                w.wg_groups.push_back(g);
            }
            Op::WgWait(n) => {
                while w.wg_groups.len() > *n as usize {
                    let g = w.wg_groups.pop_front().unwrap_or_default();
                    for job in g {
                        self.wgmma(w, b, &job)?;
                    }
                }
                // What is still in flight.
                w.inflight.fill(false);
                w.inflight_n = 0;
                let pending: Vec<u32> = w
                    .wg_open
                    .iter()
                    .chain(w.wg_groups.iter().flatten())
                    .flat_map(|j| j.d.iter().copied())
                    .collect();
                for r in pending {
                    if !w.inflight[r as usize] {
                        w.inflight[r as usize] = true;
                        w.inflight_n += 1;
                    }
                }
            }
            Op::Wgmma {
                n,
                bf16,
                d,
                a,
                b: bd,
                scale_d,
                neg_a,
                neg_b,
            } => {
                if m != FULL {
                    return Err(self.err(
                        b,
                        pc,
                        Some((w.id, 0)),
                        "wgmma needs all 32 lanes of each warp of the warpgroup".into(),
                    ));
                }
                if !self.threads().is_multiple_of(128) {
                    return Err(self.err(
                        b,
                        pc,
                        Some((w.id, 0)),
                        format!(
                            "wgmma in a block of {} threads, not whole warpgroups",
                            self.threads()
                        ),
                    ));
                }
                self.check(w, b, pc, &[*bd, *scale_d], m)?;
                let uniform = |this: &Self, s: Src, what: &str| -> R<u64> {
                    let v = this.get(w, s, 0);
                    if let Some(l) = (1..32).find(|l| this.get(w, s, *l) != v) {
                        return Err(this.err(
                            b,
                            pc,
                            Some((w.id, l as u32)),
                            format!("wgmma {what} differs between lanes"),
                        ));
                    }
                    Ok(v)
                };
                let b_desc = uniform(self, *bd, "B descriptor")?;
                let accumulate = uniform(self, *scale_d, "scale-d")? != 0;
                let (a_desc, a_regs) = match a {
                    WgA::Desc(s) => {
                        self.check(w, b, pc, &[*s], m)?;
                        (Some(uniform(self, *s, "A descriptor")?), Vec::new())
                    }
                    WgA::Regs(r) => {
                        self.check(w, b, pc, r, m)?;
                        (
                            None,
                            (0..32)
                                .map(|l| [0, 1, 2, 3].map(|k| self.get(w, r[k], l)))
                                .collect(),
                        )
                    }
                };
                if accumulate {
                    let ds: Vec<Src> = d.iter().map(|r| Src::Reg(*r)).collect();
                    self.check(w, b, pc, &ds, m)?;
                }
                // The PTX ISA: the registers a wgmma accesses (its
                // accumulator, A's fragments) must not have been written
                // since the last wgmma.fence, which orders those accesses.
                let mut read: Vec<u32> = d.clone();
                if let WgA::Regs(r) = a {
                    read.extend(r.iter().filter_map(|x| match x {
                        Src::Reg(r) => Some(*r),
                        _ => None,
                    }));
                }
                if let Some(r) = read.iter().find(|r| w.wrote_at[**r as usize] == w.fences) {
                    return Err(self.err(
                        b,
                        pc,
                        Some((w.id, 0)),
                        format!(
                            "register `{}`, which this wgmma accesses, was written after the last wgmma.fence.sync.aligned",
                            self.k.reg_names[*r as usize]
                        ),
                    ));
                }
                w.wg_open.push(WgJob {
                    n: *n,
                    bf16: *bf16,
                    d: d.clone(),
                    a_desc,
                    a_regs,
                    b_desc,
                    accumulate,
                    neg_a: *neg_a,
                    neg_b: *neg_b,
                    line: pc,
                });
                for r in d {
                    w.written[*r as usize] |= m;
                    w.wrote_at[*r as usize] = u32::MAX;
                    if !w.inflight[*r as usize] {
                        w.inflight[*r as usize] = true;
                        w.inflight_n += 1;
                    }
                }
            }
            _ => return Err(self.err(b, pc, Some((w.id, 0)), "internal: not a collective".into())),
        }
        Ok(())
    }

    /// Reads element (row, k) of a K-major operand without swizzle: 8 x 8
    /// core matrices of 8 rows of 16 bytes; LBO steps between core
    /// matrices along K, SBO along M or N.
    fn desc_elem(
        &mut self,
        w: &Warp,
        b: &mut Block,
        job: &WgJob,
        desc: u64,
        row: usize,
        k: usize,
    ) -> R<f64> {
        let start = (desc & 0x3fff) << 4;
        let lbo = ((desc >> 16) & 0x3fff) << 4;
        let sbo = ((desc >> 32) & 0x3fff) << 4;
        let base_off = (desc >> 49) & 7;
        let swizzle = desc >> 62;
        if swizzle != 0 || base_off != 0 {
            return Err(self.err(
                b,
                job.line,
                Some((w.id, 0)),
                format!("wgmma descriptor {desc:#x}: swizzled layouts are not supported"),
            ));
        }
        let addr = start
            + (row as u64 / 8) * sbo
            + (k as u64 / 8) * lbo
            + (row as u64 % 8) * 16
            + (k as u64 % 8) * 2;
        let size = b.shared.len() as u64;
        if addr + 2 > size {
            let mut e = self.err(b, job.line, Some((w.id, 0)), format!("wgmma operand read outside shared memory ({size} bytes; descriptor {desc:#x}, row {row}, k {k})"));
            e.address = Some(addr);
            return Err(e);
        }
        let u = addr as usize / 2;
        let defined = match shadow_access(
            &mut b.shadow[u],
            b.epoch,
            w.id * 32,
            false,
            self.check_races,
        ) {
            Ok(d) => d,
            Err(msg) => {
                let mut e = self.err(
                    b,
                    job.line,
                    Some((w.id, 0)),
                    format!("wgmma operand (descriptor {desc:#x}, row {row}, k {k}): {msg}"),
                );
                e.address = Some(addr);
                return Err(e);
            }
        };
        if !defined {
            let mut e = self.err(
                b,
                job.line,
                Some((w.id, 0)),
                format!("wgmma operand (descriptor {desc:#x}, row {row}, k {k}): read of a shared-memory word that no thread wrote"),
            );
            e.address = Some(addr);
            return Err(e);
        }
        // The async proxy sees a generic-proxy write only after the writer
        // ran fence.proxy.async.
        let s = b.shadow[u];
        if b.fences[s.w_t as usize] == s.w_fence {
            let mut e = self.err(
                b,
                job.line,
                Some((w.id, 0)),
                format!(
                    "wgmma reads shared memory (descriptor {desc:#x}, row {row}, k {k}) that thread {} wrote with no fence.proxy.async after the write",
                    s.w_t
                ),
            );
            e.address = Some(addr);
            return Err(e);
        }
        let h = u16::from_le_bytes([b.shared[addr as usize], b.shared[addr as usize + 1]]);
        Ok(h16(h, job.bf16))
    }

    fn wgmma(&mut self, w: &mut Warp, b: &mut Block, job: &WgJob) -> R<()> {
        let n = job.n as usize;
        let wq = (w.id % 4) as usize; // the warp's rows: 16 wq ..
        let mut am = [[0f64; 16]; 16];
        match job.a_desc {
            Some(desc) => {
                for (r, row) in am.iter_mut().enumerate() {
                    for (k, x) in row.iter_mut().enumerate() {
                        *x = self.desc_elem(w, b, job, desc, 16 * wq + r, k)?;
                    }
                }
            }
            None => {
                for l in 0..32usize {
                    let (g, t) = (l / 4, l % 4);
                    for i in 0..8 {
                        let h = (job.a_regs[l][i / 2] >> (16 * (i % 2))) as u16;
                        am[g + 8 * ((i >> 1) & 1)][t * 2 + (i & 1) + 8 * (i >> 2)] =
                            h16(h, job.bf16);
                    }
                }
            }
        }
        let mut bm = vec![[0f64; 16]; n]; // bm[col][k]
        for (col, row) in bm.iter_mut().enumerate() {
            for (k, x) in row.iter_mut().enumerate() {
                *x = self.desc_elem(w, b, job, job.b_desc, col, k)?;
            }
        }
        let sa = if job.neg_a { -1.0 } else { 1.0 };
        let sb = if job.neg_b { -1.0 } else { 1.0 };
        for l in 0..32usize {
            let (g, t) = (l / 4, l % 4);
            for (ri, reg) in job.d.iter().enumerate() {
                let (j, i) = (ri / 4, ri % 4);
                let row = g + 8 * (i >> 1);
                let col = 8 * j + 2 * t + (i & 1);
                let slot = *reg as usize * 32 + l;
                let mut s = if job.accumulate {
                    f64::from(f32::from_bits(w.regs[slot] as u32))
                } else {
                    0.0
                };
                for k in 0..16 {
                    s += sa * am[row][k] * sb * bm[col][k];
                }
                w.regs[slot] = u64::from((s as f32).to_bits());
            }
        }
        Ok(())
    }
}

/// Writes one lane's loaded elements to their registers.
fn continue_lane(regs: &mut [u64], d: &[u32; 4], n: u8, bytes: u8, l: usize, buf: &[u8]) {
    let e = usize::from(bytes);
    for k in 0..usize::from(n) {
        let mut v = [0u8; 8];
        v[..e].copy_from_slice(&buf[k * e..(k + 1) * e]);
        regs[d[k] as usize * 32 + l] = u64::from_le_bytes(v);
    }
}

fn h16(h: u16, bf: bool) -> f64 {
    f64::from(if bf {
        crate::float::bf16_to_f32(h)
    } else {
        crate::float::f16_to_f32(h)
    })
}

/// Records one thread's access to a 2-byte unit of shared memory, or says
/// why it is wrong: a race (another thread wrote it, or read it before
/// this write, since the last barrier). `Ok(false)`: a read of a unit no
/// thread wrote (its value is undefined; not recorded as a read).
fn shadow_access(
    s: &mut Shadow,
    epoch: u32,
    t: u32,
    write: bool,
    races: bool,
) -> Result<bool, String> {
    if write {
        if races && s.w_ep == epoch && s.w_t != t {
            return Err(format!("shared-memory race: thread {} wrote this word and thread {t} writes it with no barrier between", s.w_t));
        }
        if races && s.r_ep == epoch && s.r_t != t {
            let who = if s.r_t == MANY {
                "other threads".to_string()
            } else {
                format!("thread {}", s.r_t)
            };
            return Err(format!("shared-memory race: {who} read this word and thread {t} writes it with no barrier between"));
        }
        s.w_ep = epoch;
        s.w_t = t;
    } else {
        if s.w_ep == 0 {
            return Ok(false);
        }
        if races && s.w_ep == epoch && s.w_t != t {
            return Err(format!("shared-memory race: thread {} wrote this word and thread {t} reads it with no barrier between", s.w_t));
        }
        if s.r_ep == epoch && s.r_t != t {
            s.r_t = MANY;
        } else {
            s.r_ep = epoch;
            s.r_t = t;
        }
    }
    Ok(true)
}
