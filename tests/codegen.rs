//! Snapshots of generated code and manifests for small cases, so a change
//! in what the back ends emit shows up in review (bless with
//! `INSTA_UPDATE=always cargo test --test suite codegen`).

use crate::common::check_ok;
use mixc_compiler::ir::lower::lower;
use std::collections::BTreeMap;

const GATED_DECAY: &str = "\
mixer gated_decay(x: [B, L, D]) -> [B, L, D] {
    param a: [D] ~ uniform(0.5, 0.9)
    h[b, t, d] = a[d] * h[b, t - 1, d] + x[b, t, d]
    y[b, t, d] = h[b, t, d] * sigmoid(x[b, t, d])
    return y
}
";

/// The PTX of a scan and gate with the templates (the scan + readout
/// fused, chunked on GPUs), for each GPU target.
#[test]
fn ptx_of_a_small_scan_and_gate() {
    let c = check_ok("gated_decay.mix", GATED_DECAY, &[]);
    let m = lower(&c.programs[0]);
    let verified = mixc_compiler::ir::verify::verify(&m).unwrap();
    let fixed: BTreeMap<String, i64> = [("D".to_string(), 8)].into_iter().collect();
    for sm in ["sm_80", "sm_90"] {
        let low = mixc_backends::kir::lower_gpu(
            verified.module(),
            &fixed,
            mixc_backends::kir::Dtype::F32,
            sm,
        )
        .expect("kernel IR");
        let ptx = mixc_backends::mlir::ptx(&low.kernels, sm).expect("ptx");
        assert!(ptx.contains(&format!(".target {sm}")));
        insta::with_settings!({ snapshot_path => "snapshots/codegen", prepend_module_to_snapshot => false, omit_expression => true }, {
            insta::assert_snapshot!(format!("gated_decay_{sm}"), ptx);
        });
    }
}

const RMS_SOFTMAX: &str = "\
mixer rms_softmax(x: [B, L, D]) -> [B, L, D] {
    n[b, l, d] = rms_norm(x[b, l, d], over: d)
    y[b, l, d] = softmax(n[b, l, d], over: l) where l >= 1
    return y
}
";

/// Kernel IR and its MLIR (GPU and host forms) for a scan and gate, and
/// for two normalisers, one with a masked row.
#[test]
fn kernel_ir_and_mlir_of_small_cases() {
    use mixc_backends::{kir, mlir};
    for (name, src) in [("gated_decay", GATED_DECAY), ("rms_softmax", RMS_SOFTMAX)] {
        let c = check_ok(&format!("{name}.mix"), src, &[]);
        let m = lower(&c.programs[0]);
        let fixed: BTreeMap<String, i64> = [("D".to_string(), 8)].into_iter().collect();
        let kernels = kir::lower_all(&m, &fixed).expect("kernel IR");
        let text: String = kernels.iter().map(|k| k.to_string()).collect();
        let gpu = mlir::module_text(&kernels, mlir::Target::Gpu).expect("GPU MLIR");
        let host = mlir::module_text(&kernels, mlir::Target::Host).expect("host MLIR");
        assert!(gpu.contains("gpu.func @op0"), "{gpu}");
        assert!(host.contains("func.func @op0_body"), "{host}");
        insta::with_settings!({ snapshot_path => "snapshots/codegen", prepend_module_to_snapshot => false, omit_expression => true }, {
            insta::assert_snapshot!(format!("{name}_kernel_ir"), text);
            insta::assert_snapshot!(format!("{name}_mlir_gpu"), gpu);
            insta::assert_snapshot!(format!("{name}_mlir_host"), host);
        });
    }
    // The PTX of the MLIR path, for one case.
    let c = check_ok("gated_decay.mix", GATED_DECAY, &[]);
    let kernels = kir::lower_all(&lower(&c.programs[0]), &Default::default()).unwrap();
    let ptx = mlir::ptx(&kernels, "sm_90").expect("PTX through MLIR");
    assert!(ptx.contains(".visible .entry op0"), "{ptx}");
    insta::with_settings!({ snapshot_path => "snapshots/codegen", prepend_module_to_snapshot => false, omit_expression => true }, {
        insta::assert_snapshot!("gated_decay_mlir_sm_90", ptx);
    });
}

const PROJECTION: &str = "\
mixer projection(x: [B, L, D]) -> [B, L, D] {
    param w: [D, D] ~ normal(0, D ** -0.5)
    y[b, l, e] = sum(d) x[b, l, d] * w[d, e]
    return y
}
";

/// A bf16 projection for sm_90: kernel IR and MLIR of the `wgmma`
/// contraction (16-bit K-major shared tiles, descriptors, the async-proxy
/// fence, the warpgroup product), and the PTX's target and instructions.
#[test]
fn kernel_ir_and_mlir_of_a_wgmma_projection() {
    use mixc_backends::{kir, mlir};
    let c = check_ok("projection.mix", PROJECTION, &[]);
    let m = lower(&c.programs[0]);
    let fixed: BTreeMap<String, i64> = [("D".to_string(), 16)].into_iter().collect();
    let verified = mixc_compiler::ir::verify::verify(&m).unwrap();
    let kernels = kir::lower_gpu(verified.module(), &fixed, kir::Dtype::Bf16, "sm_90")
        .expect("kernel IR")
        .kernels;
    assert!(kernels.iter().any(|k| k.has_wgmma()));
    let text: String = kernels.iter().map(|k| k.to_string()).collect();
    let gpu = mlir::module_text(&kernels, mlir::Target::Gpu).expect("GPU MLIR");
    assert!(gpu.contains("nvvm.wgmma.mma_async"), "{gpu}");
    let ptx = mlir::ptx(&kernels, "sm_90").expect("PTX");
    assert!(ptx.contains(".target sm_90a"));
    assert!(ptx.contains("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16"));
    // The same kernels are no sm_80 PTX.
    assert!(mlir::ptx(&kernels, "sm_80").is_err());
    insta::with_settings!({ snapshot_path => "snapshots/codegen", prepend_module_to_snapshot => false, omit_expression => true }, {
        insta::assert_snapshot!("projection_wgmma_kernel_ir", text);
        insta::assert_snapshot!("projection_wgmma_mlir_gpu", gpu);
    });
}

#[test]
fn manifest_of_a_cpu_bundle_with_a_fused_attention_kernel() {
    let text =
        std::fs::read_to_string(crate::common::root().join("examples/sliding_window.mix")).unwrap();
    let c = check_ok("examples/sliding_window.mix", &text, &[]);
    let prog = &c.programs[0];
    let m = lower(prog);
    let mut sizes = BTreeMap::new();
    for (k, v) in [("B", 1), ("L", 1), ("D", 64)] {
        sizes.insert(k.to_string(), v);
    }
    let it = mixc_compiler::Interpreter::new(prog, &sizes).unwrap();
    let meta = mixc_backends::bundle::Meta {
        mixer: prog.name.clone(),
        source: "examples/sliding_window.mix".into(),
        hash: "snapshot".into(),
        fixed: [("D".to_string(), 64)].into_iter().collect(),
        fills: it.fills().unwrap(),
        dtype: Default::default(),
    };
    let dir = std::env::temp_dir().join(format!("mixc-manifest-{}", std::process::id()));
    let manifest = mixc_backends::bundle::write(&m, "cpu", &meta, &dir).expect("bundle");
    let _ = std::fs::remove_dir_all(&dir);
    let fused: Vec<_> = manifest
        .kernels
        .iter()
        .filter(|k| k.kind.starts_with("fused attention"))
        .collect();
    assert_eq!(fused.len(), 1);
    let mut v = serde_json::to_value(&manifest).unwrap();
    v["compiler"] = "mixc (version)".into();
    insta::with_settings!({ snapshot_path => "snapshots/codegen", prepend_module_to_snapshot => false, omit_expression => true }, {
        insta::assert_snapshot!("sliding_window_cpu_manifest", serde_json::to_string_pretty(&v).unwrap());
    });
}

/// The mask a PyTorch peer gets (`mask_mod` over q_idx and kv_idx).
#[test]
fn masks_are_written_for_pytorch_peers() {
    let mask = |file: &str, mixer: Option<&str>| {
        let text = std::fs::read_to_string(crate::common::root().join(file)).unwrap();
        let c = check_ok(file, &text, &[]);
        let prog = c.program(mixer).unwrap();
        let fixed: BTreeMap<String, i64> = [("D".to_string(), 64)].into_iter().collect();
        mixc_backends::attention::mask_python(&lower(prog), &fixed)
    };
    assert_eq!(
        mask("examples/sliding_window.mix", None).as_deref(),
        Some("((kv_idx <= q_idx) & ((q_idx - kv_idx) < 16))")
    );
    assert_eq!(
        mask("std/attention.mix", None).as_deref(),
        Some("(kv_idx <= q_idx)")
    );
    assert_eq!(
        mask("examples/attention.mix", Some("full_attention")).as_deref(),
        Some("q_idx >= 0")
    );
    // No attention, no mask.
    assert_eq!(mask("std/hyena.mix", None), None);
}
