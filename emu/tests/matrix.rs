//! Warp-collective instructions: `shfl.sync`, `mma.sync` m16n8k16 and
//! `wgmma` m64nNk16, with operands packed by the PTX ISA's fragment
//! tables (written out here, independently of the emulator).

use mixc_emu::float::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16};
use mixc_emu::Machine;

const HEAD: &str = ".version 8.0\n.target sm_90a\n.address_size 64\n";

fn words(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn read_words(m: &Machine, p: u64, n: usize) -> Vec<u32> {
    let mut b = vec![0u8; 4 * n];
    m.mem.read_into(p, &mut b).unwrap();
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn upload(m: &mut Machine, v: &[u32]) -> u64 {
    let p = m.mem.alloc(4 * v.len());
    m.mem.write(p, &words(v)).unwrap();
    p
}

#[test]
fn shfl_bfly_exchanges_between_lanes() {
    let ptx = format!(
        "{HEAD}
.visible .entry k(.param .u64 k_d)
{{
	.reg .b32 	%r<8>;
	.reg .b64 	%rd<8>;
	ld.param.b64 	%rd1, [k_d];
	mov.u32 	%r1, %tid.x;
	mul.lo.s32 	%r2, %r1, 10;
	shfl.sync.bfly.b32 	%r3, %r2, 1, 31, -1;
	shfl.sync.bfly.b32 	%r4, %r3, 4, 31, -1;
	mul.wide.u32 	%rd2, %r1, 4;
	add.s64 	%rd3, %rd1, %rd2;
	st.global.b32 	[%rd3], %r4;
	ret;
}}
"
    );
    let mut m = Machine::new();
    let id = m.load(&ptx).unwrap();
    let d = m.mem.alloc(4 * 32);
    m.launch(id, "k", [1, 1, 1], [32, 1, 1], 0, &[d]).unwrap();
    let got = read_words(&m, d, 32);
    let want: Vec<u32> = (0..32u32).map(|l| (l ^ 1 ^ 4) * 10).collect();
    assert_eq!(got, want);
}

/// The m16n8k16 fragment tables of the PTX ISA (16-bit A and B, f32 C
/// and D), for lane `l`: `groupID = l / 4`, `threadID_in_group = l % 4`.
/// A's element i (of 8; pairs per 32-bit register, the lower index in the
/// low half), B's element i (of 4), C's and D's element i (of 4).
fn a_frag(l: usize, i: usize) -> (usize, usize) {
    let (g, t) = (l / 4, l % 4);
    let row = [g, g, g + 8, g + 8, g, g, g + 8, g + 8][i];
    let col = [
        2 * t,
        2 * t + 1,
        2 * t,
        2 * t + 1,
        2 * t + 8,
        2 * t + 9,
        2 * t + 8,
        2 * t + 9,
    ][i];
    (row, col)
}

fn b_frag(l: usize, i: usize) -> (usize, usize) {
    let (g, t) = (l / 4, l % 4);
    ([2 * t, 2 * t + 1, 2 * t + 8, 2 * t + 9][i], g)
}

fn c_frag(l: usize, i: usize) -> (usize, usize) {
    let (g, t) = (l / 4, l % 4);
    (
        [g, g, g + 8, g + 8][i],
        [2 * t, 2 * t + 1, 2 * t, 2 * t + 1][i],
    )
}

fn enc(x: f32, bf16: bool) -> u32 {
    u32::from(if bf16 { f32_to_bf16(x) } else { f32_to_f16(x) })
}

fn dec(h: u32, bf16: bool) -> f32 {
    if bf16 {
        bf16_to_f32(h as u16)
    } else {
        f16_to_f32(h as u16)
    }
}

/// Small integers: exact in bf16 and f16, and their products and sums
/// exact in f32, so the result is exact.
fn a_val(r: usize, c: usize) -> f32 {
    ((r * 16 + c * 3) % 7) as f32 - 3.0
}

fn b_val(k: usize, n: usize) -> f32 {
    ((k * 5 + n * 2) % 9) as f32 - 4.0
}

fn mma(bf16: bool) {
    let ty = if bf16 { "bf16" } else { "f16" };
    let ptx = format!(
        "{HEAD}
.visible .entry k(.param .u64 k_a, .param .u64 k_b, .param .u64 k_c, .param .u64 k_d)
{{
	.reg .b32 	%r<40>;
	.reg .b64 	%rd<20>;
	ld.param.b64 	%rd1, [k_a];
	ld.param.b64 	%rd2, [k_b];
	ld.param.b64 	%rd3, [k_c];
	ld.param.b64 	%rd4, [k_d];
	mov.u32 	%r1, %tid.x;
	mul.wide.u32 	%rd5, %r1, 16;
	mul.wide.u32 	%rd7, %r1, 8;
	add.s64 	%rd6, %rd1, %rd5;
	ld.global.v4.b32 	{{%r2, %r3, %r4, %r5}}, [%rd6];
	add.s64 	%rd8, %rd2, %rd7;
	ld.global.v2.b32 	{{%r6, %r7}}, [%rd8];
	add.s64 	%rd9, %rd3, %rd5;
	ld.global.v4.b32 	{{%r8, %r9, %r10, %r11}}, [%rd9];
	mma.sync.aligned.m16n8k16.row.col.f32.{ty}.{ty}.f32
		{{%r12, %r13, %r14, %r15}},
		{{%r2, %r3, %r4, %r5}},
		{{%r6, %r7}},
		{{%r8, %r9, %r10, %r11}};
	add.s64 	%rd10, %rd4, %rd5;
	st.global.v4.b32 	[%rd10], {{%r12, %r13, %r14, %r15}};
	ret;
}}
"
    );
    let c_val = |r: usize, n: usize| r as f32 + 0.5 * n as f32;
    let mut a = vec![0u32; 32 * 4];
    let mut b = vec![0u32; 32 * 2];
    let mut c = vec![0u32; 32 * 4];
    for l in 0..32 {
        for i in 0..8 {
            let (r, col) = a_frag(l, i);
            a[l * 4 + i / 2] |= enc(a_val(r, col), bf16) << (16 * (i % 2));
        }
        for i in 0..4 {
            let (k, n) = b_frag(l, i);
            b[l * 2 + i / 2] |= enc(b_val(k, n), bf16) << (16 * (i % 2));
        }
        for i in 0..4 {
            let (r, n) = c_frag(l, i);
            c[l * 4 + i] = c_val(r, n).to_bits();
        }
    }
    // The packing round-trips: every element is exact in the 16-bit type.
    assert_eq!(dec(enc(a_val(3, 5), bf16), bf16), a_val(3, 5));
    let mut m = Machine::new();
    let id = m.load(&ptx).unwrap();
    let (pa, pb, pc) = (upload(&mut m, &a), upload(&mut m, &b), upload(&mut m, &c));
    let pd = m.mem.alloc(4 * 32 * 4);
    m.launch(id, "k", [1, 1, 1], [32, 1, 1], 0, &[pa, pb, pc, pd])
        .unwrap_or_else(|e| panic!("{e}"));
    let d = read_words(&m, pd, 32 * 4);
    for l in 0..32 {
        for i in 0..4 {
            let (r, n) = c_frag(l, i);
            let want: f32 = c_val(r, n) + (0..16).map(|k| a_val(r, k) * b_val(k, n)).sum::<f32>();
            assert_eq!(
                f32::from_bits(d[l * 4 + i]),
                want,
                "lane {l} d{i} (row {r}, col {n})"
            );
        }
    }
}

#[test]
fn mma_sync_m16n8k16_bf16_follows_the_fragment_layout() {
    mma(true);
}

#[test]
fn mma_sync_m16n8k16_f16_follows_the_fragment_layout() {
    mma(false);
}

/// Byte offset of element (row, k) of a K-major operand without swizzle:
/// 8 x 8 core matrices of 8 rows of 16 contiguous bytes; the leading
/// byte offset steps between core matrices along K, the stride byte
/// offset along M (or N).
fn core_offset(row: usize, k: usize, lbo: usize, sbo: usize) -> usize {
    (row / 8) * sbo + (k / 8) * lbo + (row % 8) * 16 + (k % 8) * 2
}

const LBO: usize = 128;
const SBO: usize = 256;
const N: usize = 16;

/// A 64 x 16 and B 16 x 16 (stored N x K) in shared memory; `a_regs`:
/// A from registers instead; `shift`: bytes added to B's start address.
/// `variant`: "nofence" drops the `fence.proxy.async`, "early" reads an
/// accumulator between the commit and the wait, "late" writes one after
/// the `wgmma.fence`.
fn wgmma(a_regs: bool, shift: u64, variant: &str) -> Result<Vec<u32>, String> {
    let a_bytes = 64 * 16 * 2;
    let total = a_bytes + N * 16 * 2;
    let mut image = vec![0u8; total];
    for r in 0..64 {
        for k in 0..16 {
            let o = core_offset(r, k, LBO, SBO);
            image[o..o + 2].copy_from_slice(&f32_to_bf16(a_val(r, k)).to_le_bytes());
        }
    }
    for n in 0..N {
        for k in 0..16 {
            let o = a_bytes + core_offset(n, k, LBO, SBO);
            image[o..o + 2].copy_from_slice(&f32_to_bf16(b_val(k, n)).to_le_bytes());
        }
    }
    let desc_hi = ((LBO as u64 >> 4) << 16) | ((SBO as u64 >> 4) << 32);
    let acc = "{%r40, %r41, %r42, %r43, %r44, %r45, %r46, %r47}";
    let product = |scale: u32| {
        if a_regs {
            format!("\t{{ .reg .pred p; setp.ne.b32 p, {scale}, 0; wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {acc}, {{%r50, %r51, %r52, %r53}}, %rd23, p, 1, 1, 0; }}")
        } else {
            format!("\t{{\n.reg .pred p;\nsetp.ne.b32 p, {scale}, 0;\nwgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {acc}, %rd22, %rd23, p, 1,  1, 0,  0;\n}}")
        }
    };
    let ptx = format!(
        "{HEAD}
.visible .entry k(.param .u64 k_img, .param .u64 k_a, .param .u64 k_d)
.maxntid 128, 1, 1
{{
	.shared .align 128 .b8 	sm[{total}];
	.reg .pred 	%p<4>;
	.reg .b32 	%r<64>;
	.reg .b64 	%rd<40>;
	ld.param.b64 	%rd1, [k_img];
	ld.param.b64 	%rd2, [k_a];
	ld.param.b64 	%rd3, [k_d];
	mov.u32 	%r1, %tid.x;
	mov.b64 	%rd4, sm;
	mov.u32 	%r2, %r1;
$L_copy:
	setp.ge.u32 	%p1, %r2, {words};
	@%p1 bra 	$L_done;
	mul.wide.u32 	%rd5, %r2, 4;
	add.s64 	%rd6, %rd1, %rd5;
	ld.global.b32 	%r3, [%rd6];
	add.s64 	%rd7, %rd4, %rd5;
	st.shared.b32 	[%rd7], %r3;
	add.s32 	%r2, %r2, 128;
	bra.uni 	$L_copy;
$L_done:
{fence}
	bar.sync 	0;
	shr.u64 	%rd20, %rd4, 4;
	and.b64 	%rd20, %rd20, 16383;
	or.b64 	%rd22, %rd20, {desc_hi};
	add.s64 	%rd23, %rd22, {b_start};
	mul.wide.u32 	%rd8, %r1, 16;
	add.s64 	%rd9, %rd2, %rd8;
	ld.global.v4.b32 	{{%r50, %r51, %r52, %r53}}, [%rd9];
	wgmma.fence.sync.aligned;
{late}
{p0}
{p1}
	wgmma.commit_group.sync.aligned;
{early}
	wgmma.wait_group.sync.aligned 	0;
	mul.wide.u32 	%rd10, %r1, 32;
	add.s64 	%rd11, %rd3, %rd10;
	st.global.v4.b32 	[%rd11], {{%r40, %r41, %r42, %r43}};
	st.global.v4.b32 	[%rd11+16], {{%r44, %r45, %r46, %r47}};
	ret;
}}
",
        words = total / 4,
        b_start = (a_bytes as u64 + shift) >> 4,
        p0 = product(0),
        p1 = product(1),
        fence = if variant == "nofence" {
            ""
        } else {
            "\tfence.proxy.async.shared::cta;"
        },
        early = if variant == "early" {
            "\tmov.b32 \t%r60, %r41;"
        } else {
            ""
        },
        late = if variant == "late" {
            "\tmov.b32 \t%r41, 0;"
        } else {
            ""
        },
    );
    // A's register fragments: per warp w, rows 16 w .. 16 w + 15 in the
    // m16n8k16 A layout.
    let mut a = vec![0u32; 128 * 4];
    for t in 0..128 {
        let (w, l) = (t / 32, t % 32);
        for i in 0..8 {
            let (r, k) = a_frag(l, i);
            a[t * 4 + i / 2] |= u32::from(f32_to_bf16(a_val(16 * w + r, k))) << (16 * (i % 2));
        }
    }
    let mut m = Machine::new();
    let id = m.load(&ptx).map_err(|e| e.to_string())?;
    let img = m.mem.alloc(total);
    m.mem.write(img, &image).unwrap();
    let pa = upload(&mut m, &a);
    let pd = m.mem.alloc(128 * 8 * 4);
    m.launch(id, "k", [1, 1, 1], [128, 1, 1], 0, &[img, pa, pd])
        .map_err(|e| e.to_string())?;
    Ok(read_words(&m, pd, 128 * 8))
}

/// The accumulator of m64nNk16 (f32): warp w of the warpgroup holds rows
/// 16 w .. 16 w + 15; register 4 j + i holds row 16 w + groupID + 8 (i / 2),
/// column 8 j + 2 threadID_in_group + i % 2.
fn check_wgmma(d: &[u32]) {
    for t in 0..128 {
        let (w, l) = (t / 32, t % 32);
        let (g, tg) = (l / 4, l % 4);
        for reg in 0..N / 2 {
            let (j, i) = (reg / 4, reg % 4);
            let row = 16 * w + g + 8 * (i / 2);
            let col = 8 * j + 2 * tg + i % 2;
            let ab: f32 = (0..16).map(|k| a_val(row, k) * b_val(k, col)).sum();
            // Two products, the first with scale-d false (D = A B), the
            // second accumulating: D = 2 A B.
            assert_eq!(
                f32::from_bits(d[t * 8 + reg]),
                2.0 * ab,
                "thread {t} d{reg} (row {row}, col {col})"
            );
        }
    }
}

#[test]
fn wgmma_with_both_operands_in_shared_memory() {
    check_wgmma(&wgmma(false, 0, "").unwrap());
}

#[test]
fn wgmma_with_a_in_registers() {
    check_wgmma(&wgmma(true, 0, "").unwrap());
}

#[test]
fn a_wgmma_descriptor_moved_by_one_core_matrix_reads_past_the_tile() {
    let e = wgmma(false, 128, "").unwrap_err();
    assert!(
        e.contains("wgmma operand read outside shared memory") && e.contains("PTX line"),
        "{e}"
    );
}

#[test]
fn wgmma_reading_shared_memory_written_without_a_proxy_fence_is_located() {
    let e = wgmma(false, 0, "nofence").unwrap_err();
    assert!(
        e.contains("with no fence.proxy.async after the write") && e.contains("wgmma.mma_async"),
        "{e}"
    );
}

#[test]
fn an_accumulator_read_before_the_wait_is_located() {
    let e = wgmma(false, 0, "early").unwrap_err();
    assert!(
        e.contains("register `%r41` is the accumulator of a wgmma.mma_async not yet waited for"),
        "{e}"
    );
}

#[test]
fn an_accumulator_written_after_the_wgmma_fence_is_located() {
    let e = wgmma(false, 0, "late").unwrap_err();
    assert!(
        e.contains(
            "register `%r41`, which this wgmma accesses, was written after the last wgmma.fence"
        ),
        "{e}"
    );
}
