//! Toolchain probes: MLIR 22 through melior, LLVM 22 through inkwell, and
//! PTX accepted by `ptxas`. If these fail, the toolchain is broken, not mixc.

use mixc_backends::{llvm_jit_probe, mlir_verify_probe, nvptx_probe, ptxas_path};

#[test]
fn mlir_builds_and_verifies_a_function() {
    let text = mlir_verify_probe().expect("melior probe");
    assert!(text.contains("func.func @fma"), "{text}");
    assert!(text.contains("arith.mulf"), "{text}");
    assert!(text.contains("arith.addf"), "{text}");
}

#[test]
fn llvm_jit_runs_a_function() {
    let r = llvm_jit_probe(1.5, 4.0, 0.25).expect("inkwell JIT probe");
    assert_eq!(r, 6.25);
    let r = llvm_jit_probe(-2.0, 3.0, 1.0).expect("inkwell JIT probe");
    assert_eq!(r, -5.0);
}

#[test]
fn nvptx_emission_is_accepted_by_ptxas() {
    let ptxas = ptxas_path();
    assert!(
        ptxas.exists(),
        "ptxas not found at {}; run scripts/setup.sh",
        ptxas.display()
    );
    for sm in ["sm_80", "sm_90"] {
        let ptx = nvptx_probe(sm).expect("NVPTX probe");
        assert!(ptx.contains(".entry axpy"), "{ptx}");
        assert!(ptx.contains(&format!(".target {sm}")), "{ptx}");
        let dir = std::env::temp_dir().join(format!("mixc-probe-{}-{sm}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("axpy.ptx");
        std::fs::write(&file, &ptx).unwrap();
        let out = std::process::Command::new(&ptxas)
            .arg(format!("-arch={sm}"))
            .arg("-v")
            .arg(&file)
            .arg("-o")
            .arg(dir.join("axpy.cubin"))
            .output()
            .expect("run ptxas");
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "ptxas rejected the PTX for {sm}:\n{log}\n{ptx}"
        );
        assert!(
            log.contains("Used"),
            "ptxas -v printed no resource usage: {log}"
        );
    }
}
