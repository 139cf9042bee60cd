//! What the machine code of a GPU kernel shows, without a GPU: the SASS
//! that `nvdisasm` prints for the cubin `ptxas` assembles, read for the
//! figures that decide a kernel's speed (see
//! `docs/figures.md`, "Machine-code reports"):
//!
//! - **The hot loop**: the innermost loop (a backward branch) that holds
//!   tensor-core instructions, or, in a kernel without them, the innermost
//!   loop with the most instructions. Its instructions per iteration are
//!   counted once; loops nested in it are counted once too (their trip
//!   counts are not known from the code), and reported as `nested`.
//! - **The issue-bound ceiling**: a scheduler issues one instruction a
//!   cycle, so a warp's loop of `n` instructions whose tensor work takes
//!   `t` tensor cycles on its scheduler reaches at most `t / n` of the
//!   tensor peak. Tensor cycles per scheduler: `HMMA` m16n8kK is
//!   `2*16*8*K` FLOP a warp, `HGMMA` m64nNkK `2*64*N*K` a warpgroup (a
//!   quarter a scheduler), at [`tensor_rate`] dense 16-bit FLOP a cycle per
//!   scheduler.
//! - **Load and store widths**: global loads (`LDG`, `LDGSTS`), shared
//!   stores (`STS`) and loads (`LDS`, `LDSM`) by bytes per thread.
//! - **Integer divisions**: inline reciprocal sequences (`I2F.*.RP`, one
//!   per 32-bit division or remainder by a run-time value, and the fast
//!   path of a 64-bit one) and calls to the 64-bit division routines.
//! - **Occupancy** ([`occupancy`]): blocks an SM holds by registers,
//!   shared memory, warps and blocks.

use crate::BackendError;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `nvdisasm`, from the `nvidia-cuda-nvdisasm` wheel `scripts/setup.sh`
/// installs into `.tools/sass`.
pub fn nvdisasm_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/sass/nvidia/cu13/bin/nvdisasm")
}

/// The SASS of `cubin`, as `nvdisasm -c` prints it.
pub fn disassemble(cubin: &Path) -> Result<String, BackendError> {
    let tool = nvdisasm_path();
    if !tool.exists() {
        return Err(BackendError::Runtime(format!(
            "nvdisasm not found at {}; run scripts/setup.sh",
            tool.display()
        )));
    }
    let out = std::process::Command::new(&tool)
        .arg("-c")
        .arg(cubin)
        .output()
        .map_err(|e| BackendError::Runtime(format!("cannot run {}: {e}", tool.display())))?;
    if !out.status.success() {
        return Err(BackendError::Runtime(format!(
            "nvdisasm failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One SASS instruction: its address, opcode with modifiers (`LDG.E.128`)
/// and operands; a branch's target address.
#[derive(Clone, Debug)]
pub struct Instr {
    pub addr: u32,
    pub op: String,
    pub args: String,
    pub target: Option<u32>,
}

/// The functions of a disassembly, each with its instructions (the
/// internal subroutines ptxas appends, such as 64-bit division, left out)
/// and the names of the routines it calls.
pub fn parse(text: &str) -> Vec<(String, Vec<Instr>)> {
    let mut out: Vec<(String, Vec<Instr>)> = Vec::new();
    // Per function: instructions, labels (name -> address of the next
    // instruction), pending labels, and whether a subroutine has begun.
    let mut labels: BTreeMap<String, u32> = BTreeMap::new();
    let mut pending: Vec<String> = Vec::new();
    let mut targets: Vec<(usize, String)> = Vec::new();
    let mut sub = false;
    let finish = |out: &mut Vec<(String, Vec<Instr>)>,
                  labels: &BTreeMap<String, u32>,
                  targets: &mut Vec<(usize, String)>| {
        if let Some((_, code)) = out.last_mut() {
            for (k, l) in targets.drain(..) {
                code[k].target = labels.get(&l).copied();
            }
        }
    };
    for line in text.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix(".text.").and_then(|s| s.strip_suffix(':')) {
            finish(&mut out, &labels, &mut targets);
            out.push((name.to_string(), Vec::new()));
            labels.clear();
            pending.clear();
            sub = false;
            continue;
        }
        if let Some(l) = t.strip_suffix(':') {
            if l.starts_with("$__internal") {
                sub = true;
            }
            if !l.contains(' ') {
                pending.push(l.to_string());
            }
            continue;
        }
        let Some(rest) = t.strip_prefix("/*") else {
            continue;
        };
        let Some((addr, body)) = rest.split_once("*/") else {
            continue;
        };
        let Ok(addr) = u32::from_str_radix(addr.trim(), 16) else {
            continue;
        };
        let Some((_, code)) = out.last_mut() else {
            continue;
        };
        for l in pending.drain(..) {
            labels.insert(l, addr);
        }
        if sub {
            continue;
        }
        let body = body.trim().trim_end_matches(';').trim();
        let mut words = body.split_whitespace();
        let mut op = words.next().unwrap_or("");
        if op.starts_with('@') {
            op = words.next().unwrap_or("");
        }
        let args: String = words.collect::<Vec<_>>().join(" ");
        if op.starts_with("BRA") {
            if let Some(l) = args
                .split_once("(")
                .and_then(|(_, r)| r.split_once(')'))
                .map(|(l, _)| l.to_string())
            {
                targets.push((code.len(), l));
            }
        }
        code.push(Instr {
            addr,
            op: op.to_string(),
            args,
            target: None,
        });
    }
    finish(&mut out, &labels, &mut targets);
    out
}

/// Dense 16-bit tensor FLOP a cycle per scheduler (a quarter of an SM):
/// A100 (sm_80) 312 TFLOP/s over 108 SMs at 1.41 GHz is 2048 an SM;
/// H100 (sm_90) 989 TFLOP/s over 132 SMs at 1.83 GHz is 4096.
pub fn tensor_rate(sm: &str) -> u32 {
    if sm.starts_with("sm_90") {
        1024
    } else {
        512
    }
}

/// The hot loop's figures (see the module doc).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Loop {
    pub start: u32,
    pub end: u32,
    /// Instructions a warp issues per iteration (nested loops once).
    pub instructions: u32,
    /// Loops inside this one.
    pub nested: u32,
    /// Tensor-core instructions and their cycles on one scheduler.
    pub tensor: u32,
    pub tensor_cycles: u32,
    /// Bytes per thread -> count.
    pub global_loads: BTreeMap<u32, u32>,
    pub shared_stores: BTreeMap<u32, u32>,
    pub shared_loads: BTreeMap<u32, u32>,
    /// `LDSM` (ldmatrix) instructions.
    pub ldmatrix: u32,
    pub int_div_inline: u32,
    pub int_div_calls: u32,
}

impl Loop {
    /// Tensor cycles over issue cycles, at most 1; `None` without tensor
    /// instructions.
    pub fn ceiling(&self) -> Option<f64> {
        (self.tensor > 0 && self.instructions > 0)
            .then(|| (self.tensor_cycles as f64 / self.instructions as f64).min(1.0))
    }
}

/// What the SASS of one kernel shows.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Machine {
    /// Instructions of the kernel (subroutines left out).
    pub instructions: u32,
    pub int_div_inline: u32,
    pub int_div_calls: u32,
    pub hot_loop: Option<Loop>,
}

/// A device for [`estimate`]: its architecture, SMs (four schedulers
/// each), clock, the tensor rate it sustains on its own architecture's
/// instructions, and device-memory bandwidth.
#[derive(Clone, Debug)]
pub struct Device<'a> {
    pub sm: &'a str,
    pub sms: u32,
    pub clock_hz: f64,
    pub tensor_flops: f64,
    /// The rate of other arithmetic (CUDA cores).
    pub elementwise_flops: f64,
    pub bandwidth: f64,
    pub launch_seconds: f64,
}

/// What a kernel's machine code and work predict on a [`Device`]:
///
/// - **tensor-bound**: its matrix FLOPs at the sustained tensor rate (for
///   code built for an older architecture, scaled by the ratio of the
///   architectures' per-scheduler rates, [`tensor_rate`]: `mma.sync` on
///   an sm_90 is taken to run at sm_80's rate a scheduler);
/// - **issue-bound**: every tile runs the hot loop, which issues
///   `instructions` a warp for `tensor_cycles` of tensor work on its
///   scheduler, so the kernel takes at least its nominal tensor time over
///   the loop's [`Loop::ceiling`] (one instruction a cycle a scheduler);
///   `None` for a kernel whose hot loop has no tensor instructions, whose
///   trip counts the code does not show;
/// - **compute-bound**: the tensor-bound time plus its other FLOPs at the
///   elementwise rate (the plan's roofline counts compute so);
/// - **memory-bound**: its device-memory bytes at the bandwidth;
/// - **steps**: the dependent steps of a scan at the step latency, given.
///
/// The estimate is the largest plus the launches: a bound the kernel
/// cannot beat, never below the plan's roofline floor on the same device
/// and architecture, and not a prediction of stalls (latency, bank
/// conflicts and occupancy are not modelled).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Estimate {
    pub issue_seconds: Option<f64>,
    pub tensor_seconds: f64,
    pub compute_seconds: f64,
    pub memory_seconds: f64,
    pub seconds: f64,
    /// All its FLOPs (matrix and other) over `seconds`.
    pub flops_per_second: f64,
    /// Which bound decides: "issue", "compute", "memory" or "steps".
    pub bound: &'static str,
}

/// The [`Estimate`] of a kernel built for `target` with machine code `m`,
/// doing `matrix_flops` on tensor cores, `other_flops` besides, moving
/// `bytes`, with `step_seconds` of dependent scan steps and launched
/// `launches` times, on `dev`.
pub fn estimate(
    m: &Machine,
    target: &str,
    dev: &Device,
    (matrix_flops, other_flops, bytes, step_seconds, launches): (f64, f64, f64, f64, f64),
) -> Estimate {
    let ratio = (tensor_rate(target) as f64 / tensor_rate(dev.sm) as f64).min(1.0);
    let tensor_seconds = matrix_flops / (dev.tensor_flops * ratio);
    let nominal =
        tensor_rate(target).min(tensor_rate(dev.sm)) as f64 * 4.0 * dev.sms as f64 * dev.clock_hz;
    let issue_seconds = m
        .hot_loop
        .as_ref()
        .and_then(Loop::ceiling)
        .filter(|_| matrix_flops > 0.0)
        .map(|c| matrix_flops / nominal / c);
    let compute_seconds = tensor_seconds + other_flops / dev.elementwise_flops;
    let memory_seconds = bytes / dev.bandwidth;
    let mut bound = ("compute", compute_seconds);
    for b in [
        ("issue", issue_seconds.unwrap_or(0.0)),
        ("memory", memory_seconds),
        ("steps", step_seconds),
    ] {
        if b.1 > bound.1 {
            bound = b;
        }
    }
    let seconds = bound.1 + launches * dev.launch_seconds;
    Estimate {
        issue_seconds,
        tensor_seconds,
        compute_seconds,
        memory_seconds,
        seconds,
        flops_per_second: if seconds > 0.0 {
            (matrix_flops + other_flops) / seconds
        } else {
            0.0
        },
        bound: bound.0,
    }
}

/// Bytes per thread of a load or store opcode (`LDG.E.128` is 16).
fn width(op: &str) -> u32 {
    for m in op.split('.').skip(1) {
        match m {
            "U8" | "S8" => return 1,
            "U16" | "S16" => return 2,
            "64" => return 8,
            "128" => return 16,
            _ => {}
        }
    }
    4
}

/// FLOP a warp's tensor instruction does on its scheduler, if `op` is one.
fn tensor_flop(op: &str) -> Option<u64> {
    let mut parts = op.split('.');
    let name = parts.next()?;
    let shape = parts.next()?;
    match name {
        "HGMMA" => {
            let d: Vec<u64> = shape.split('x').filter_map(|x| x.parse().ok()).collect();
            let [m, n, k] = d.as_slice() else { return None };
            Some(2 * m * n * k / 4)
        }
        "HMMA" => {
            // m16n8kK as "168K", m16n8k16 as "16816".
            let k: u64 = shape.strip_prefix("168")?.parse().ok()?;
            Some(2 * 16 * 8 * k)
        }
        _ => None,
    }
}

fn is_int_div_call(args: &str) -> bool {
    [
        "div_s64", "div_u64", "rem_s64", "rem_u64", "div_s32", "div_u32", "rem_s32", "rem_u32",
    ]
    .iter()
    .any(|p| args.contains(p))
}

fn is_int_div_inline(op: &str) -> bool {
    op.starts_with("I2F") && op.split('.').any(|m| m == "RP")
}

/// The figures of one kernel's instructions on `sm`.
pub fn analyse(code: &[Instr], sm: &str) -> Machine {
    let inline = |c: &[Instr]| c.iter().filter(|i| is_int_div_inline(&i.op)).count() as u32;
    let calls = |c: &[Instr]| {
        c.iter()
            .filter(|i| i.op.starts_with("CALL") && is_int_div_call(&i.args))
            .count() as u32
    };
    // Loops: a branch back to an address at or before it.
    let loops: Vec<(usize, usize)> = code
        .iter()
        .enumerate()
        .filter_map(|(k, i)| {
            let t = i.target.filter(|t| *t < i.addr)?;
            Some((code.iter().position(|x| x.addr == t)?, k))
        })
        .collect();
    let inside = |a: (usize, usize), b: (usize, usize)| b != a && b.0 >= a.0 && b.1 <= a.1;
    let rate = u64::from(tensor_rate(sm));
    let figures = |(s, e): (usize, usize)| -> Loop {
        let body = &code[s..=e];
        let mut l = Loop {
            start: code[s].addr,
            end: code[e].addr,
            instructions: body.len() as u32,
            nested: loops.iter().filter(|x| inside((s, e), **x)).count() as u32,
            int_div_inline: inline(body),
            int_div_calls: calls(body),
            ..Loop::default()
        };
        let mut flop = 0u64;
        for i in body {
            if let Some(f) = tensor_flop(&i.op) {
                l.tensor += 1;
                flop += f;
            }
            let op = i.op.as_str();
            if op.starts_with("LDG") {
                *l.global_loads.entry(width(op)).or_default() += 1;
            } else if op.starts_with("LDSM") {
                l.ldmatrix += 1;
            } else if op.starts_with("LDS") {
                *l.shared_loads.entry(width(op)).or_default() += 1;
            } else if op.starts_with("STS") {
                *l.shared_stores.entry(width(op)).or_default() += 1;
            }
        }
        l.tensor_cycles = flop.div_ceil(rate) as u32;
        l
    };
    let all: Vec<Loop> = loops.iter().map(|x| figures(*x)).collect();
    let hot = all
        .iter()
        .filter(|l| l.tensor > 0)
        .min_by_key(|l| l.end - l.start)
        .or_else(|| {
            all.iter()
                .filter(|l| l.nested == 0)
                .max_by_key(|l| l.instructions)
        })
        .cloned();
    Machine {
        instructions: code.len() as u32,
        int_div_inline: inline(code),
        int_div_calls: calls(code),
        hot_loop: hot,
    }
}

/// Blocks of `threads` threads using `registers` a thread and `shared`
/// bytes one SM of `sm` holds, and what limits it. Registers are
/// allocated per warp in units of 256, shared memory in units of 128
/// bytes (plus 1 KiB the system reserves per block).
pub fn occupancy(sm: &str, registers: u32, shared: u32, threads: u32) -> (u32, &'static str) {
    let (smem_sm, max_warps, max_blocks) = if sm.starts_with("sm_90") {
        (228 * 1024, 64, 32)
    } else {
        (164 * 1024, 64, 32)
    };
    let warps = threads.div_ceil(32).max(1);
    let per_warp = (registers.max(1) * 32).div_ceil(256) * 256;
    let by_regs = 65536 / (per_warp * warps).max(1);
    let by_smem = match shared {
        0 => u32::MAX,
        s => smem_sm / ((s.div_ceil(128) * 128) + 1024),
    };
    let by_warps = max_warps / warps;
    [
        (by_regs, "registers"),
        (by_smem, "shared memory"),
        (by_warps, "warps"),
        (max_blocks, "blocks"),
    ]
    .into_iter()
    .min_by_key(|(n, _)| *n)
    .unwrap_or((0, "registers"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = r#"
.text.k:
        /*0000*/                   S2R R0, SR_TID.X ;
.L_x_1:
        /*0010*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0020*/                   LDG.E.U16 R8, desc[UR4][R2.64+0x10] ;
        /*0030*/                   STS.64 [R0], R4 ;
        /*0040*/                   I2F.U32.RP R9, R10 ;
        /*0050*/                   HMMA.16816.F32.BF16 R12, R4, R6, R12 ;
        /*0060*/               @P0 BRA `(.L_x_1) ;
        /*0070*/                   CALL.REL.NOINC `($__internal_0_$__cuda_sm20_div_s64) ;
        /*0080*/                   EXIT ;
$__internal_0_$__cuda_sm20_div_s64:
        /*0090*/                   I2F.U64.RP R1, R2 ;
        /*00a0*/                   RET.REL.NODEC R20 `(k) ;
"#;

    /// The parser finds the loop, its widths, the tensor instruction and
    /// the division sequences, and leaves the subroutine out.
    #[test]
    fn a_listing_reads_as_its_figures() {
        let fs = parse(LISTING);
        assert_eq!(fs.len(), 1);
        let (name, code) = &fs[0];
        assert_eq!(name, "k");
        assert_eq!(code.len(), 9, "the subroutine is left out");
        let m = analyse(code, "sm_80");
        assert_eq!((m.int_div_inline, m.int_div_calls), (1, 1));
        let l = m.hot_loop.expect("a loop");
        assert_eq!((l.start, l.end, l.instructions), (0x10, 0x60, 6));
        assert_eq!(l.tensor, 1);
        // m16n8k16: 4096 FLOP at 512 a cycle.
        assert_eq!(l.tensor_cycles, 8);
        assert_eq!(l.global_loads, BTreeMap::from([(2, 1), (16, 1)]));
        assert_eq!(l.shared_stores, BTreeMap::from([(8, 1)]));
        assert_eq!((l.int_div_inline, l.int_div_calls), (1, 0));
        // 8 tensor cycles against 6 issue cycles: tensor-bound.
        assert_eq!(l.ceiling(), Some(1.0));
    }

    #[test]
    fn wgmma_shapes_count_a_quarter_per_scheduler() {
        // m64n128k16: 262144 FLOP a warpgroup, 65536 a scheduler, 64 cycles.
        assert_eq!(tensor_flop("HGMMA.64x128x16.F32.BF16"), Some(65536));
        assert_eq!(tensor_flop("HMMA.1688.F32.TF32"), Some(2048));
        assert_eq!(tensor_flop("FFMA"), None);
    }

    /// The estimate's bounds: the issue bound is the nominal tensor time
    /// over the ceiling, code for an older architecture runs at its rate,
    /// and the largest bound decides.
    #[test]
    fn an_estimate_takes_the_largest_bound() {
        let dev = Device {
            sm: "sm_90",
            sms: 132,
            clock_hz: 1.83e9,
            tensor_flops: 790e12,
            elementwise_flops: 60e12,
            bandwidth: 3e12,
            launch_seconds: 4e-6,
        };
        let hot = Loop {
            instructions: 400,
            tensor: 4,
            tensor_cycles: 256,
            ..Loop::default()
        };
        let m = Machine {
            hot_loop: Some(hot),
            ..Machine::default()
        };
        let nominal = 1024.0 * 4.0 * 132.0 * 1.83e9;
        let e = estimate(&m, "sm_90", &dev, (1e12, 0.0, 1e6, 0.0, 1.0));
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs();
        assert!(close(e.tensor_seconds, 1e12 / 790e12));
        assert!(close(e.issue_seconds.unwrap(), 1e12 / nominal / 0.64));
        assert_eq!(e.bound, "issue");
        assert!(close(e.seconds, e.issue_seconds.unwrap() + 4e-6));
        assert!(close(e.flops_per_second, 1e12 / e.seconds));
        // mma.sync code on the sm_90: half the rate a scheduler.
        let old = estimate(&m, "sm_80", &dev, (1e12, 0.0, 1e6, 0.0, 1.0));
        assert!(close(old.tensor_seconds, 2.0 * e.tensor_seconds));
        assert!(close(
            old.issue_seconds.unwrap(),
            2.0 * e.issue_seconds.unwrap()
        ));
        // Memory-bound: 30 GB at 3 TB/s is 10 ms.
        let mem = estimate(&m, "sm_90", &dev, (1e12, 0.0, 3e10, 0.0, 0.0));
        assert_eq!(mem.bound, "memory");
        assert!(close(mem.seconds, 1e-2));
        // Without tensor instructions there is no issue bound; other FLOPs
        // count at the elementwise rate.
        let plain = estimate(
            &Machine::default(),
            "sm_90",
            &dev,
            (0.0, 6e10, 0.0, 0.0, 0.0),
        );
        assert_eq!((plain.issue_seconds, plain.bound), (None, "compute"));
        assert!(close(plain.seconds, 1e-3));
    }

    #[test]
    fn occupancy_is_limited_by_the_scarcest_resource() {
        // 128 threads at 255 registers: 4 warps of 8192 registers, 2 blocks.
        assert_eq!(occupancy("sm_80", 255, 34816, 128), (2, "registers"));
        // 256 threads at 16 registers, no shared memory: 8 warps a block,
        // 64 an SM.
        assert_eq!(occupancy("sm_90", 16, 0, 256), (8, "warps"));
        // 160 KiB of shared memory: one block.
        assert_eq!(occupancy("sm_80", 32, 160 * 1024, 128).1, "shared memory");
    }
}
