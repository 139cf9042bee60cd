//! Instructions against hand-computed results: small PTX kernels run on
//! the emulator, each lane computing one case.

use mixc_emu::Machine;

/// A kernel `k(a, b, c, d)` whose lane `t` reads `a[t]`, `b[t]`, `c[t]`
/// (64-bit) into `%rd1..%rd3`, with 32-bit copies in `%r1..%r3` and
/// 16-bit ones in `%rs1..%rs3`, runs `body` (which leaves its result in
/// `%rd4`) and writes `d[t]`.
fn lanes(body: &str) -> String {
    format!(
        r#"
.version 8.0
.target sm_80
.address_size 64

.visible .entry k(
	.param .u64 k_a,
	.param .u64 k_b,
	.param .u64 k_c,
	.param .u64 k_d
)
{{
	.reg .pred 	%p<8>;
	.reg .b16 	%rs<16>;
	.reg .b32 	%r<64>;
	.reg .b64 	%rd<64>;

	ld.param.b64 	%rd10, [k_a];
	ld.param.b64 	%rd11, [k_b];
	ld.param.b64 	%rd12, [k_c];
	ld.param.b64 	%rd13, [k_d];
	mov.u32 	%r10, %tid.x;
	mul.wide.u32 	%rd14, %r10, 8;
	add.s64 	%rd15, %rd10, %rd14;
	ld.global.b64 	%rd1, [%rd15];
	add.s64 	%rd15, %rd11, %rd14;
	ld.global.b64 	%rd2, [%rd15];
	add.s64 	%rd15, %rd12, %rd14;
	ld.global.b64 	%rd3, [%rd15];
	cvt.u32.u64 	%r1, %rd1;
	cvt.u32.u64 	%r2, %rd2;
	cvt.u32.u64 	%r3, %rd3;
	cvt.u16.u64 	%rs1, %rd1;
	cvt.u16.u64 	%rs2, %rd2;
	cvt.u16.u64 	%rs3, %rd3;
{body}
	add.s64 	%rd15, %rd13, %rd14;
	st.global.b64 	[%rd15], %rd4;
	ret;
}}
"#
    )
}

fn bytes(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Runs `body` over the cases `(a, b, c)`, one lane each.
fn run(body: &str, cases: &[(u64, u64, u64)]) -> Vec<u64> {
    let mut m = Machine::new();
    let id = m.load(&lanes(body)).unwrap_or_else(|e| panic!("{e}"));
    let n = cases.len();
    let a = m.mem.alloc(8 * n);
    let b = m.mem.alloc(8 * n);
    let c = m.mem.alloc(8 * n);
    let d = m.mem.alloc(8 * n);
    m.mem
        .write(a, &bytes(&cases.iter().map(|x| x.0).collect::<Vec<_>>()))
        .unwrap();
    m.mem
        .write(b, &bytes(&cases.iter().map(|x| x.1).collect::<Vec<_>>()))
        .unwrap();
    m.mem
        .write(c, &bytes(&cases.iter().map(|x| x.2).collect::<Vec<_>>()))
        .unwrap();
    m.launch(id, "k", [1, 1, 1], [n as u32, 1, 1], 0, &[a, b, c, d])
        .unwrap_or_else(|e| panic!("{e}"));
    let mut out = vec![0u8; 8 * n];
    m.mem.read_into(d, &mut out).unwrap();
    out.chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// `op d, a, b[, c]` on 32-bit registers, the result zero-extended.
fn op32(op: &str, k: usize, cases: &[(u64, u64, u64)]) -> Vec<u64> {
    let srcs = ["%r1", "%r2", "%r3"][..k].join(", ");
    run(
        &format!("\t{op} \t%r4, {srcs};\n\tcvt.u64.u32 \t%rd4, %r4;"),
        cases,
    )
}

fn op64(op: &str, k: usize, cases: &[(u64, u64, u64)]) -> Vec<u64> {
    let srcs = ["%rd1", "%rd2", "%rd3"][..k].join(", ");
    run(&format!("\t{op} \t%rd4, {srcs};"), cases)
}

fn op16(op: &str, k: usize, cases: &[(u64, u64, u64)]) -> Vec<u64> {
    let srcs = ["%rs1", "%rs2", "%rs3"][..k].join(", ");
    run(
        &format!("\t{op} \t%rs4, {srcs};\n\tcvt.u64.u16 \t%rd4, %rs4;"),
        cases,
    )
}

fn f(x: f32) -> u64 {
    u64::from(x.to_bits())
}

fn i(x: i64) -> u64 {
    x as u64
}

fn i32_(x: i32) -> u64 {
    u64::from(x as u32)
}

#[test]
fn integer_arithmetic() {
    let c = |a: u64, b: u64| (a, b, 0);
    assert_eq!(
        op32("add.s32", 2, &[c(i32_(-5), 3), c(0xffff_ffff, 1)]),
        [i32_(-2), 0]
    );
    assert_eq!(op32("sub.s32", 2, &[c(3, 5)]), [i32_(-2)]);
    assert_eq!(op32("mul.lo.s32", 2, &[c(0x1_0001, 0x1_0001)]), [0x2_0001]);
    assert_eq!(
        op32("mul.hi.u32", 2, &[c(0xffff_ffff, 0xffff_ffff)]),
        [0xffff_fffe]
    );
    assert_eq!(
        op32("mul.hi.s32", 2, &[c(i32_(-1), i32_(-1)), c(i32_(-2), 3)]),
        [0, i32_(-1)]
    );
    assert_eq!(op32("div.s32", 2, &[c(i32_(-7), 2)]), [i32_(-3)]);
    assert_eq!(op32("rem.s32", 2, &[c(i32_(-7), 2)]), [i32_(-1)]);
    assert_eq!(
        op32("div.u32", 2, &[c(7, 2), c(0xffff_fffe, 3)]),
        [3, 0x5555_5554]
    );
    assert_eq!(op32("min.s32", 2, &[c(i32_(-1), 1)]), [i32_(-1)]);
    assert_eq!(op32("max.u32", 2, &[c(i32_(-1), 1)]), [0xffff_ffff]);
    assert_eq!(
        op32("shr.s32", 2, &[c(i32_(-16), 2), c(i32_(-16), 40)]),
        [i32_(-4), i32_(-1)]
    );
    assert_eq!(op32("shr.u32", 2, &[c(i32_(-16), 28), c(5, 32)]), [0xf, 0]);
    assert_eq!(op32("shl.b32", 2, &[c(3, 31), c(3, 40)]), [0x8000_0000, 0]);
    assert_eq!(op32("neg.s32", 1, &[c(5, 0)]), [i32_(-5)]);
    assert_eq!(op32("xor.b32", 2, &[c(0xff00, 0x0ff0)]), [0xf0f0]);
    // bfe: bits 4..8 of 0xabcd; signed: the field's top bit spreads.
    assert_eq!(
        op32("bfe.u32", 3, &[(0xabcd, 4, 4), (0xabcd, 30, 8)]),
        [0xc, 0]
    );
    assert_eq!(
        op32("bfe.s32", 3, &[(0xabcd, 4, 4), (0xabcd, 8, 3)]),
        [i32_(-4), 3]
    );
    // shf.l.wrap: the high word of ({b, a} << n).
    assert_eq!(
        op32(
            "shf.l.wrap.b32",
            3,
            &[(0x8000_0001, 0x1234_5678, 4), (1, 2, 36)]
        ),
        [0x2345_6788, 0x20]
    );
    // prmt: selector nibbles pick bytes of {b, a}; bit 3 spreads the sign.
    assert_eq!(
        op32(
            "prmt.b32",
            3,
            &[
                (0x4433_2211, 0x8877_6655, 0x7701),
                (0x0000_80ff, 0, 0x4498),
                (0x1234_5678, 0, 0x3210)
            ]
        ),
        [0x8888_1122, 0xffff, 0x1234_5678]
    );
    assert_eq!(op64("add.s64", 2, &[c(i(-1), 2)]), [1]);
    assert_eq!(op64("mul.lo.s64", 2, &[c(1 << 40, 1 << 30)]), [0]);
    assert_eq!(op64("mul.hi.u64", 2, &[c(1 << 40, 1 << 30)]), [1 << 6]);
    assert_eq!(op64("div.s64", 2, &[c(i(-9), 4)]), [i(-2)]);
    assert_eq!(op64("rem.s64", 2, &[c(i(-9), 4)]), [i(-1)]);
    assert_eq!(op64("rem.u64", 2, &[c(10, 4)]), [2]);
    assert_eq!(op64("div.u64", 2, &[c(u64::MAX, 2)]), [u64::MAX / 2]);
    assert_eq!(op64("min.s64", 2, &[c(i(-3), 2)]), [i(-3)]);
    assert_eq!(op64("max.s64", 2, &[c(i(-3), 2)]), [2]);
    assert_eq!(op64("max.u64", 2, &[c(i(-3), 2)]), [i(-3)]);
    assert_eq!(op64("abs.s64", 1, &[c(i(-3), 0)]), [3]);
    assert_eq!(op64("neg.s64", 1, &[c(3, 0)]), [i(-3)]);
    assert_eq!(op64("not.b64", 1, &[c(0, 0)]), [u64::MAX]);
    assert_eq!(op64("shr.s64", 2, &[c(i(-256), 4)]), [i(-16)]);
    assert_eq!(op64("shr.u64", 2, &[c(i(-256), 60)]), [0xf]);
    assert_eq!(op64("mad.lo.s64", 3, &[(3, 4, 5)]), [17]);
    assert_eq!(op64("bfe.s64", 3, &[(0x20, 5, 1)]), [i(-1)]);
    assert_eq!(op64("bfe.u64", 3, &[(0xf0, 4, 2)]), [3]);
    assert_eq!(
        run(
            "\tpopc.b64 \t%r4, %rd1;\n\tcvt.u64.u32 \t%rd4, %r4;",
            &[c(u64::MAX, 0), c(0x8001, 0)]
        ),
        [64, 2]
    );
    assert_eq!(
        run(
            "\tmul.wide.u32 \t%rd4, %r1, %r2;",
            &[c(0xffff_ffff, 0xffff_ffff)]
        ),
        [0xffff_fffe_0000_0001]
    );
    assert_eq!(
        run("\tcvt.s64.s32 \t%rd4, %r1;", &[c(i32_(-2), 0)]),
        [i(-2)]
    );
    assert_eq!(
        run("\tcvt.u64.u32 \t%rd4, %r1;", &[c(i32_(-2), 0)]),
        [0xffff_fffe]
    );
    assert_eq!(
        op16("mul.lo.s16", 2, &[c(300, 300)]),
        [(300 * 300) & 0xffff]
    );
    assert_eq!(op16("mul.hi.u16", 2, &[c(0xffff, 0xffff)]), [0xfffe]);
    assert_eq!(op16("sub.s16", 2, &[c(1, 2)]), [0xffff]);
    assert_eq!(op16("and.b16", 2, &[c(0xff0f, 0x0ff0)]), [0x0f00]);
    assert_eq!(op16("shr.u16", 2, &[c(0x8000, 15)]), [1]);
}

#[test]
fn carry_chains() {
    // The 64-bit product of two 32-bit words, low and high halves through
    // the carry: lo = a * b + c (carry out), hi = hi(a * b) + 0 + carry.
    let body = "\tmad.lo.cc.u32 \t%r4, %r1, %r2, %r3;\n\tmadc.hi.u32 \t%r5, %r1, %r2, 0;\n\tcvt.u64.u32 \t%rd5, %r5;\n\tshl.b64 \t%rd5, %rd5, 32;\n\tcvt.u64.u32 \t%rd6, %r4;\n\tor.b64 \t%rd4, %rd5, %rd6;";
    let cases = [
        (0xffff_ffff, 0xffff_ffff, 0xffff_ffff),
        (2, 3, 4),
        (0x8000_0000, 2, 0x8000_0000),
    ];
    let want: Vec<u64> = cases.iter().map(|(a, b, c)| a * b + c).collect();
    assert_eq!(run(body, &cases), want);
}

#[test]
fn float_rounding_modes() {
    let one = 1.0f32;
    let tiny = 2f32.powi(-30);
    let c = |a: f32, b: f32| (f(a), f(b), 0);
    let up = f32::from_bits(one.to_bits() + 1);
    assert_eq!(op32("add.rn.f32", 2, &[c(one, tiny)]), [f(one)]);
    assert_eq!(op32("add.rp.f32", 2, &[c(one, tiny)]), [f(up)]);
    assert_eq!(
        op32("add.rm.f32", 2, &[c(one, tiny), c(-one, -tiny)]),
        [f(one), f(-up)]
    );
    assert_eq!(op32("add.rz.f32", 2, &[c(-one, -tiny)]), [f(-one)]);
    assert_eq!(op32("sub.rn.f32", 2, &[c(one, one)]), [f(0.0)]);
    assert_eq!(op32("sub.rm.f32", 2, &[c(one, one)]), [f(-0.0)]);
    // a = 1 + 2^-12: a * a = 1 + 2^-11 + 2^-24, a tie at f32 precision.
    let a = 1.0 + 2f32.powi(-12);
    assert_eq!(op32("mul.rn.f32", 2, &[c(a, a)]), [f(1.0 + 2f32.powi(-11))]);
    assert_eq!(
        op32("mul.rp.f32", 2, &[c(a, a)]),
        [f(1.0 + 2f32.powi(-11) + 2f32.powi(-23))]
    );
    // fma rounds once: a * a - 1 is exactly 2^-11 + 2^-24.
    assert_eq!(
        op32("fma.rn.f32", 3, &[(f(a), f(a), f(-1.0))]),
        [f(2f32.powi(-11) + 2f32.powi(-24))]
    );
    // fma.rm: 1 * 1 + 2^-30 toward -inf is 1; 1 * -1 - 2^-30 is below -1.
    assert_eq!(
        op32(
            "fma.rm.f32",
            3,
            &[(f(1.0), f(1.0), f(tiny)), (f(1.0), f(-1.0), f(-tiny))]
        ),
        [f(1.0), f(-up)]
    );
    assert_eq!(op32("div.rn.f32", 2, &[c(1.0, 3.0)]), [0x3eaa_aaab]);
    assert_eq!(op32("div.rz.f32", 2, &[c(1.0, 3.0)]), [0x3eaa_aaaa]);
    assert_eq!(op32("rcp.rn.f32", 1, &[c(3.0, 0.0)]), [0x3eaa_aaab]);
    assert_eq!(op32("mul.f32", 2, &[c(1.5, 2.0)]), [f(3.0)]);
    assert_eq!(op32("add.f32", 2, &[c(1.5, 2.0)]), [f(3.5)]);
    assert_eq!(op32("sub.f32", 2, &[c(1.5, 2.0)]), [f(-0.5)]);
    assert_eq!(op32("neg.f32", 1, &[c(1.5, 0.0)]), [f(-1.5)]);
    assert_eq!(op32("abs.f32", 1, &[c(-1.5, 0.0)]), [f(1.5)]);
    assert_eq!(
        op32("min.f32", 2, &[c(f32::NAN, 1.0), c(-0.0, 0.0)]),
        [f(1.0), f(-0.0)]
    );
    assert_eq!(
        op32("max.f32", 2, &[c(f32::NAN, 1.0), c(-0.0, 0.0)]),
        [f(1.0), f(0.0)]
    );
    // Approximate instructions: exact results are within their error.
    assert_eq!(
        op32("ex2.approx.ftz.f32", 1, &[c(3.0, 0.0), c(-1.0, 0.0)]),
        [f(8.0), f(0.5)]
    );
    assert_eq!(
        op32("rcp.approx.ftz.f32", 1, &[c(4.0, 0.0), c(1e-40, 0.0)]),
        [f(0.25), f(f32::INFINITY)]
    );
    assert_eq!(op32("sqrt.approx.f32", 1, &[c(2.25, 0.0)]), [f(1.5)]);
    assert_eq!(op32("rsqrt.approx.ftz.f32", 1, &[c(0.25, 0.0)]), [f(2.0)]);
    assert_eq!(op32("lg2.approx.ftz.f32", 1, &[c(8.0, 0.0)]), [f(3.0)]);
    assert_eq!(op32("sin.approx.f32", 1, &[c(0.0, 0.0)]), [f(0.0)]);
    assert_eq!(op32("cos.approx.f32", 1, &[c(0.0, 0.0)]), [f(1.0)]);
    assert_eq!(op32("tanh.approx.f32", 1, &[c(0.0, 0.0)]), [f(0.0)]);
    // f64
    assert_eq!(
        op64("mul.rn.f64", 2, &[(1.5f64.to_bits(), 3.0f64.to_bits(), 0)]),
        [4.5f64.to_bits()]
    );
}

#[test]
fn comparisons_and_selects() {
    let c = |a: f32, b: f32| (f(a), f(b), 0);
    let setp = |cmp: &str, cases: &[(u64, u64, u64)]| {
        run(
            &format!("\tsetp.{cmp} \t%p1, %r1, %r2;\n\tselp.b64 \t%rd4, 1, 0, %p1;"),
            cases,
        )
    };
    let nan = f32::NAN;
    assert_eq!(setp("lt.f32", &[c(1.0, 2.0), c(nan, 2.0)]), [1, 0]);
    assert_eq!(setp("ltu.f32", &[c(3.0, 2.0), c(nan, 2.0)]), [0, 1]);
    assert_eq!(setp("neu.f32", &[c(1.0, 1.0), c(nan, nan)]), [0, 1]);
    assert_eq!(setp("leu.f32", &[c(1.0, 1.0), c(2.0, 1.0)]), [1, 0]);
    assert_eq!(setp("num.f32", &[c(1.0, 1.0), c(nan, 1.0)]), [1, 0]);
    assert_eq!(setp("nan.f32", &[c(1.0, 1.0), c(1.0, nan)]), [0, 1]);
    assert_eq!(setp("eq.f32", &[c(0.0, -0.0), c(nan, nan)]), [1, 0]);
    assert_eq!(setp("ge.f32", &[c(2.0, 2.0)]), [1]);
    assert_eq!(setp("gt.f32", &[c(2.0, 2.0)]), [0]);
    assert_eq!(setp("lt.s32", &[(i32_(-1), 1, 0)]), [1]);
    assert_eq!(setp("lt.u32", &[(i32_(-1), 1, 0)]), [0]);
    assert_eq!(setp("gt.u32", &[(i32_(-1), 1, 0)]), [1]);
    let setp64 = |cmp: &str, cases: &[(u64, u64, u64)]| {
        run(
            &format!("\tsetp.{cmp} \t%p1, %rd1, %rd2;\n\tselp.b64 \t%rd4, 1, 0, %p1;"),
            cases,
        )
    };
    assert_eq!(setp64("lt.s64", &[(i(-1), 1, 0)]), [1]);
    assert_eq!(setp64("ge.u64", &[(i(-1), 1, 0)]), [1]);
    assert_eq!(setp64("le.s64", &[(1, 1, 0)]), [1]);
    assert_eq!(setp64("ne.b64", &[(1, 1, 0)]), [0]);
    // 16-bit floats: f16 1.0 is 0x3c00, bf16 1.0 is 0x3f80.
    let setp16 = |cmp: &str, cases: &[(u64, u64, u64)]| {
        run(
            &format!("\tsetp.{cmp} \t%p1, %rs1, %rs2;\n\tselp.b64 \t%rd4, 1, 0, %p1;"),
            cases,
        )
    };
    assert_eq!(
        setp16(
            "leu.f16",
            &[
                (0x3c00, 0x4000, 0),
                (0x7e00, 0x3c00, 0),
                (0x4000, 0x3c00, 0)
            ]
        ),
        [1, 1, 0]
    );
    assert_eq!(
        setp16("leu.bf16", &[(0x3f80, 0x4000, 0), (0x4000, 0x3f80, 0)]),
        [1, 0]
    );
    assert_eq!(setp16("eq.b16", &[(5, 5, 0)]), [1]);
    // Predicate logic: and, or, not, and a predicated branch.
    let body = "\tsetp.lt.s32 \t%p1, %r1, 0;\n\tsetp.lt.s32 \t%p2, %r2, 0;\n\tand.pred \t%p3, %p1, %p2;\n\tor.pred \t%p4, %p1, %p2;\n\tnot.pred \t%p5, %p4;\n\tselp.b64 \t%rd5, 4, 0, %p3;\n\tselp.b64 \t%rd6, 2, 0, %p4;\n\tselp.b64 \t%rd7, 1, 0, %p5;\n\tor.b64 \t%rd4, %rd5, %rd6;\n\tor.b64 \t%rd4, %rd4, %rd7;";
    assert_eq!(
        run(
            body,
            &[(i32_(-1), i32_(-1), 0), (i32_(-1), 1, 0), (1, 1, 0)]
        ),
        [6, 2, 1]
    );
}

#[test]
fn conversions() {
    let cvt = |ty: &str, cases: &[(u64, u64, u64)]| {
        run(
            &format!("\tcvt.{ty} \t%r4, %r1;\n\tcvt.u64.u32 \t%rd4, %r4;"),
            cases,
        )
    };
    let c = |a: f32| (f(a), 0, 0);
    assert_eq!(
        cvt(
            "rni.s32.f32",
            &[c(2.5), c(-2.5), c(3.5), c(f32::NAN), c(3e9)]
        ),
        [2, i32_(-2), 4, 0, 0x7fff_ffff]
    );
    assert_eq!(
        cvt("rzi.s32.f32", &[c(-2.7), c(-3e9)]),
        [i32_(-2), 0x8000_0000]
    );
    assert_eq!(cvt("rni.f32.f32", &[c(2.5), c(-1.5)]), [f(2.0), f(-2.0)]);
    assert_eq!(
        cvt("sat.f32.f32", &[c(1.5), c(-0.5), c(f32::NAN), c(0.25)]),
        [f(1.0), f(0.0), f(0.0), f(0.25)]
    );
    assert_eq!(
        cvt("rn.f32.s32", &[(i32_(-3), 0, 0), (16_777_217, 0, 0)]),
        [f(-3.0), f(16_777_216.0)]
    );
    assert_eq!(
        cvt("rn.f32.u32", &[(0xffff_ffff, 0, 0)]),
        [f(4_294_967_296.0)]
    );
    let wide = |ty: &str, cases: &[(u64, u64, u64)]| {
        run(
            &format!("\tcvt.{ty} \t%r4, %rd1;\n\tcvt.u64.u32 \t%rd4, %r4;"),
            cases,
        )
    };
    // 2^24 + 1 is a tie: to even (2^24); 2^24 + 3 rounds up.
    assert_eq!(
        wide(
            "rn.f32.s64",
            &[(16_777_217, 0, 0), (16_777_219, 0, 0), (i(-5), 0, 0)]
        ),
        [f(16_777_216.0), f(16_777_220.0), f(-5.0)]
    );
    assert_eq!(
        wide("rn.f32.u64", &[(u64::MAX, 0, 0)]),
        [f(18_446_744_073_709_551_616.0)]
    );
    assert_eq!(
        wide("rn.f32.f64", &[((1.0f64 + 2f64.powi(-40)).to_bits(), 0, 0)]),
        [f(1.0)]
    );
    assert_eq!(
        run("\tcvt.rn.f64.s64 \t%rd4, %rd1;", &[(i(-7), 0, 0)]),
        [(-7.0f64).to_bits()]
    );
    // To 16 bits, to nearest-even.
    let narrow = |ty: &str, cases: &[(u64, u64, u64)]| {
        run(
            &format!("\tcvt.{ty} \t%rs4, %r1;\n\tcvt.u64.u16 \t%rd4, %rs4;"),
            cases,
        )
    };
    let one_and = |k: i32| 1.0 + 2f32.powi(k);
    assert_eq!(
        narrow(
            "rn.bf16.f32",
            &[
                c(1.0),
                c(one_and(-8)),
                c(1.0 + 3.0 * 2f32.powi(-8)),
                c(-2.0),
                c(f32::INFINITY)
            ]
        ),
        [0x3f80, 0x3f80, 0x3f82, 0xc000, 0x7f80]
    );
    assert_eq!(
        narrow(
            "rn.f16.f32",
            &[
                c(1.0),
                c(one_and(-11)),
                c(65519.0),
                c(65520.0),
                c(2f32.powi(-25)),
                c(3.0 * 2f32.powi(-26)),
                c(-0.0)
            ]
        ),
        [0x3c00, 0x3c00, 0x7bff, 0x7c00, 0, 1, 0x8000]
    );
    let widen = |ty: &str, cases: &[(u64, u64, u64)]| {
        run(
            &format!("\tcvt.{ty} \t%r4, %rs1;\n\tcvt.u64.u32 \t%rd4, %r4;"),
            cases,
        )
    };
    assert_eq!(
        widen("f32.f16", &[(1, 0, 0), (0xbc00, 0, 0), (0x7c00, 0, 0)]),
        [f(2f32.powi(-24)), f(-1.0), f(f32::INFINITY)]
    );
    assert_eq!(widen("f32.bf16", &[(0x3f82, 0, 0)]), [f(1.015625)]);
    // 16-bit arithmetic rounds to its own precision.
    assert_eq!(op16("mul.f16", 2, &[(0x3e00, 0x3e00, 0)]), [0x4080]); // 1.5 * 1.5 = 2.25
    assert_eq!(op16("mul.bf16", 2, &[(0x3f81, 0x3f81, 0)]), [0x3f82]); // (1+2^-7)^2 rounds to 1+2^-6
                                                                       // min/max of 16-bit floats: NaN gives the other operand.
    assert_eq!(
        op16("min.bf16", 2, &[(0x3f80, 0x4000, 0), (0x7fc0, 0x4000, 0)]),
        [0x3f80, 0x4000]
    );
    assert_eq!(
        op16("max.f16", 2, &[(0x3c00, 0x4000, 0), (0xbc00, 0x7e00, 0)]),
        [0x4000, 0xbc00]
    );
    assert_eq!(
        op16("fma.rn.bf16", 3, &[(0x3f80, 0x4000, 0x3f80)]),
        [0x4040]
    ); // 1 * 2 + 1 = 3
    assert_eq!(
        run(
            "\tmov.b16 \t%rs4, 0x3E80;\n\tcvt.u64.u16 \t%rd4, %rs4;",
            &[(0, 0, 0)]
        ),
        [0x3e80]
    );
}

/// `mov.b32 d, {a, b}` packs two 16-bit registers, `a` in the low half
/// (how LLVM hands `mma.sync` a pair of 16-bit elements loaded apart).
#[test]
fn mov_packs_a_vector_of_halves() {
    let out = run(
        "\tmov.b32 \t%r4, {%rs1, %rs2};\n\tcvt.u64.u32 \t%rd4, %r4;",
        &[(0x1234, 0xabcd, 0), (0xffff_0001, 0x2, 0)],
    );
    assert_eq!(out, [0xabcd_1234, 0x0002_0001]);
}

/// `mov.b32 {a, b}, s` unpacks: the low half into `a`, the high into `b`
/// (how LLVM takes 16-bit elements out of a 16-byte vector load).
#[test]
fn mov_unpacks_into_a_vector_of_halves() {
    let out = run(
        "\tmov.b32 \t{%rs4, %rs3}, %r1;\n\tmov.b32 \t%r4, {%rs3, %rs4};\n\tcvt.u64.u32 \t%rd4, %r4;",
        &[(0xabcd_1234, 0, 0), (0x0002_0001, 0, 0)],
    );
    assert_eq!(out, [0x1234_abcd, 0x0001_0002]);
}
