//! Helpers shared by the suite's modules.

use mixc_compiler::Interpreter;
use mixc_dsl::typed::Program;
use mixc_dsl::{check_file, render, CheckOptions, Checked};
use std::collections::BTreeMap;
use std::path::PathBuf;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Checks a file given relative to the repository root.
pub fn check_path(rel: &str, overrides: &[(&str, f64)]) -> Checked {
    let text = std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    check_text(rel, &text, overrides)
}

pub fn check_text(name: &str, text: &str, overrides: &[(&str, f64)]) -> Checked {
    let opts = CheckOptions {
        overrides: overrides.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
    };
    check_file(name, text, &opts)
}

/// Checks and asserts there are no errors.
pub fn check_ok(name: &str, text: &str, overrides: &[(&str, f64)]) -> Checked {
    let c = check_text(name, text, overrides);
    assert!(
        !c.has_errors(),
        "{name} has errors:\n{}",
        render(&c.sources, &c.diagnostics)
    );
    c
}

/// Interprets a program at the given sizes with the given seed.
pub fn run(prog: &Program, sizes: &[(&str, i64)], seed: u64) -> Interpreter {
    let sizes: BTreeMap<String, i64> = sizes.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    let mut it = Interpreter::new(prog, &sizes).expect("bind sizes");
    it.init(seed).expect("init");
    it.run().expect("run");
    it
}

/// Every `.mix` file under a directory of the repository, sorted.
pub fn mix_files(dir: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".mix"))
        .map(|n| format!("{dir}/{n}"))
        .collect();
    v.sort();
    v
}
