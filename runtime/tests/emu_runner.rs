//! The GPU runner on the PTX emulator, with a hand-written bundle: the
//! memref argument words, the grid from the manifest's size expression,
//! bf16 conversion on upload and download, and the division-by-zero flag
//! all go through the code a GPU run uses.

use mixc_runtime::runner::{Device, Runner};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// `op0`: y[i] = 2 x[i] over N elements stored bf16 (memref words: x, y,
/// sizes, error: 20 parameters). `op1`: sets the error flag when N is 7.
fn ptx() -> String {
    let params = |k: &str| {
        (0..20)
            .map(|p| format!("\t.param .u64 {k}_param_{p}"))
            .collect::<Vec<_>>()
            .join(",\n")
    };
    format!(
        r#".version 8.0
.target sm_80
.address_size 64

.visible .entry op0(
{p0}
)
.maxntid 32, 1, 1
{{
	.reg .pred 	%p<4>;
	.reg .b16 	%rs<4>;
	.reg .b32 	%r<8>;
	.reg .b64 	%rd<16>;
	ld.param.b64 	%rd1, [op0_param_1];
	ld.param.b64 	%rd2, [op0_param_6];
	ld.param.b64 	%rd3, [op0_param_11];
	ld.param.b64 	%rd4, [op0_param_8];
	mov.u32 	%r1, %ctaid.x;
	mov.u32 	%r2, %tid.x;
	mov.u32 	%r3, %ntid.x;
	mad.lo.s32 	%r4, %r1, %r3, %r2;
	cvt.u64.u32 	%rd5, %r4;
	ld.global.b64 	%rd6, [%rd3];
	setp.ge.s64 	%p1, %rd5, %rd6;
	@%p1 bra 	$L__end;
	setp.ge.u64 	%p2, %rd5, %rd4;
	@%p2 bra 	$L__end;
	shl.b64 	%rd7, %rd5, 1;
	add.s64 	%rd8, %rd1, %rd7;
	ld.global.b16 	%rs1, [%rd8];
	cvt.f32.bf16 	%r5, %rs1;
	add.rn.f32 	%r6, %r5, %r5;
	cvt.rn.bf16.f32 	%rs2, %r6;
	add.s64 	%rd9, %rd2, %rd7;
	st.global.b16 	[%rd9], %rs2;
$L__end:
	ret;
}}

.visible .entry op1(
{p1}
)
{{
	.reg .pred 	%p<4>;
	.reg .b64 	%rd<8>;
	ld.param.b64 	%rd1, [op1_param_11];
	ld.param.b64 	%rd2, [op1_param_16];
	ld.global.b64 	%rd3, [%rd1];
	setp.ne.s64 	%p1, %rd3, 7;
	@%p1 bra 	$L__done;
	mov.b64 	%rd4, 1;
	st.global.b64 	[%rd2], %rd4;
$L__done:
	ret;
}}
"#,
        p0 = params("op0"),
        p1 = params("op1"),
    )
}

fn manifest() -> String {
    let kernel = |id: usize, entry: &str, grid: &str| {
        format!(
            r#"{{"id": {id}, "schedule": "generic", "entry": "{entry}", "writes": 1, "kind": "map", "parallel": null,
            "grid": ["{grid}", "1", "1"], "block": [32, 1, 1], "shared_bytes": 0, "signature": "", "library": null,
            "per_call": true, "args": "memref"}}"#
        )
    };
    format!(
        r#"{{"format": "mixc-bundle/1", "mixer": "double", "source": "test", "target": "sm_80", "dtype": "bf16",
        "hash": "0", "compiler": "test", "object": "kernels.ptx",
        "sizes": [{{"name": "N", "value": null}}],
        "values": [
          {{"name": "x", "role": "input", "shape": ["N"], "fill": {{"Normal": {{"mean": 0.0, "std": 1.0}}}}, "materialized": true, "dtype": "bf16"}},
          {{"name": "y", "role": "computed", "shape": ["N"], "fill": null, "materialized": true, "dtype": "bf16"}}
        ],
        "inputs": [0], "output": 1,
        "kernels": [{}, {}]}}"#,
        kernel(1, "op0", "(N + 31) // 32"),
        kernel(2, "op1", "1")
    )
}

fn bundle(name: &str, ptx: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mixc-emu-runner-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("kernels.ptx"), ptx).unwrap();
    std::fs::write(d.join("manifest.json"), manifest()).unwrap();
    d
}

fn n(v: i64) -> BTreeMap<String, i64> {
    [("N".to_string(), v)].into()
}

#[test]
fn a_bundle_runs_through_the_gpu_runner_on_the_emulator() {
    let dir = bundle("ok", &ptx());
    let mut r = Runner::open_on(&dir, Device::Emu).unwrap();
    assert_eq!(r.device(), "ptx emulator (not GPU timing)");
    r.prepare_poisoned(&n(70), 3).unwrap();
    r.run().unwrap();
    let out = r.output().unwrap();
    let x = &r
        .bundle()
        .init_buffers(&r.bundle().bind(&n(70)).unwrap(), 3)[0];
    assert_eq!(out.len(), 70);
    for (y, x) in out.iter().zip(x) {
        // Stored bf16 on upload, doubled exactly, stored bf16 again.
        assert_eq!(*y, 2.0 * mixc_runtime::Dtype::Bf16.round(*x));
    }
    let s = r.emu_stats().unwrap();
    assert!(s.thread_instructions > 70 && s.warp_instructions > 0);
    let t = r.time(0, 2).unwrap();
    assert_eq!(t.reps, 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_division_by_zero_flag_is_read_back() {
    let dir = bundle("flag", &ptx());
    let mut r = Runner::open_on(&dir, Device::Emu).unwrap();
    r.prepare(&n(7), 3).unwrap();
    assert_eq!(r.run().unwrap_err(), "integer division by zero in a kernel");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_fault_names_the_kernel_through_the_runner() {
    // op0 without its bounds checks: the last block's spare threads read
    // past x.
    let broken = ptx()
        .replace("\t@%p1 bra \t$L__end;\n", "")
        .replace("\t@%p2 bra \t$L__end;\n", "");
    assert_ne!(broken, ptx());
    let dir = bundle("fault", &broken);
    let mut r = Runner::open_on(&dir, Device::Emu).unwrap();
    r.prepare(&n(70), 3).unwrap();
    let e = r.run().unwrap_err();
    assert!(
        e.starts_with("kernel `op0`: ptx emulator: out-of-bounds global read of 2 bytes")
            && e.contains("thread (6, 0, 0)")
            && e.contains("block (2, 0, 0)"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_cpu_bundle_is_not_for_the_emulator() {
    let dir = bundle("cpu", &ptx());
    let m = manifest()
        .replace("\"target\": \"sm_80\"", "\"target\": \"cpu\"")
        .replace("\"dtype\": \"bf16\"", "\"dtype\": \"f32\"");
    std::fs::write(dir.join("manifest.json"), m).unwrap();
    let e = Runner::open_on(&dir, Device::Emu).err().unwrap();
    assert!(e.contains("GPU bundles"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
