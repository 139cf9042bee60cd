//! Differential testing (`mixc_fuzz`): the regression corpus in
//! `tests/fuzz/`, the fixed-seed budget of random programs on every
//! execution path, and the robustness and `--compare` guarantees the
//! campaigns rely on.

use std::process::Command;
use std::time::Instant;

fn mixc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mixc"))
}

/// Every file in `tests/fuzz/` meets the expectation in its header (a
/// shrunk program a campaign or a user found, with its sizes, seed and
/// paths). `MIXC_BLESS=1` rewrites the `expect` lines instead of failing.
#[test]
fn the_regression_corpus_passes() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz");
    let bless = std::env::var("MIXC_BLESS").is_ok_and(|v| v == "1");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "mix"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "only {} corpus files", files.len());
    let mut failures = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let e = mixc_fuzz::corpus::parse(&text).unwrap_or_else(|m| panic!("{}: {m}", f.display()));
        match mixc_fuzz::corpus::run(&e) {
            Ok(_) => println!("ok    {}", f.display()),
            Err((observed, why)) if bless => {
                std::fs::write(f, mixc_fuzz::corpus::bless(&text, &observed)).unwrap();
                println!("bless {}: {observed} ({why})", f.display());
            }
            Err((_, why)) => failures.push(format!("{}:\n{why}", f.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The CI budget: 500 random programs from fixed seeds, each on the CPU
/// back end or the MLIR host path, one of the six simulator
/// configurations and one optimiser profile, with no mismatch, panic,
/// refusal, crash or hang, and at most a tenth of the programs rejected
/// by the checker.
#[test]
fn five_hundred_random_programs_match_the_interpreter_on_every_path() {
    let start = Instant::now();
    let o = mixc()
        .args([
            "fuzz", "--count", "500", "--seed", "0", "--jobs", "2", "--quick",
        ])
        .args(["--timeout", "120"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    println!("{out}{}", String::from_utf8_lossy(&o.stderr));
    println!("budget ran in {:.1} s", start.elapsed().as_secs_f64());
    assert!(o.status.success(), "the campaign failed:\n{out}");
    let last = out.lines().last().unwrap_or("");
    let passed: u64 = last
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(last.ends_with(", 0 failed"), "{last}");
    assert!(passed >= 450, "only {passed} of 500 programs ran: {last}");
    for path in ["cpu", "opt-cpu", "opt-h100"] {
        assert!(out.contains(&format!("\n  {path} ")), "no runs on {path}");
    }
    for d in ["f32", "bf16", "f16"] {
        for a in ["sm80", "sm90"] {
            assert!(
                out.contains(&format!("simt-{d}-{a}")),
                "no runs on simt-{d}-{a}"
            );
        }
    }
}

fn long_sum(terms: usize) -> String {
    format!(
        "mixer big(x: [B, L, D]) -> [B, L, D] {{\n    y[b, l, d] = {}\n    return y\n}}\n",
        vec!["x[b, l, d]"; terms].join(" + ")
    )
}

/// A 20,000-term statement checks (it overflowed the stack before), and
/// one over the statement limit is an error at the source, not a crash.
#[test]
fn long_and_deep_statements_check_without_a_crash() {
    let dir = std::env::temp_dir().join(format!("mixc-long-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("long.mix");
    std::fs::write(&file, long_sum(20_000)).unwrap();
    let start = Instant::now();
    let o = mixc().arg("check").arg(&file).output().unwrap();
    let secs = start.elapsed().as_secs_f64();
    println!("check of 20,000 terms: {secs:.2} s");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Under a second in release builds; the test profile gets slack.
    assert!(secs < 10.0, "{secs} s");
    let deep = dir.join("deep.mix");
    std::fs::write(
        &deep,
        format!(
            "mixer deep(x: [B, L, D]) -> [B, L, D] {{\n    y[b, l, d] = {}x[b, l, d]{}\n    return y\n}}\n",
            "(".repeat(50_000),
            ")".repeat(50_000)
        ),
    )
    .unwrap();
    let o = mixc()
        .args(["run"])
        .arg(&deep)
        .args([
            "--backend",
            "cpu",
            "--compare",
            "ref",
            "--set",
            "B=1,L=3,D=2",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::write(&file, long_sum(50_000)).unwrap();
    let o = mixc().arg("check").arg(&file).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("this statement has more than 400000 tokens"),
        "{err}"
    );
    assert!(err.contains("long.mix:2:5"), "{err}");
}

/// `mixc run --compare` exits 1 when the two back ends differ by more
/// than f32's tolerance, and says when the mixer itself is
/// ill-conditioned at those inputs.
#[test]
fn compare_fails_over_the_tolerance_and_explains_ill_conditioning() {
    let file =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/ill_conditioned.mix");
    let o = mixc()
        .arg("run")
        .arg(&file)
        .args([
            "--backend",
            "cpu",
            "--compare",
            "ref",
            "--set",
            "B=1,L=8,D=4",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("over the f32 tolerance 1e-4"), "{err}");
    assert!(err.contains("ill-conditioned"), "{err}");
    // A well-conditioned mixer passes with status 0.
    let ok =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/taylor_one_plus_dot.mix");
    let o = mixc()
        .arg("run")
        .arg(&ok)
        .args([
            "--backend",
            "cpu",
            "--compare",
            "ref",
            "--set",
            "B=1,L=20,D=8",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
