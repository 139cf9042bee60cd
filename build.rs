//! Gives the compiler a build identity: a hash of every compiler source
//! file, so `mixc build`'s on-disk cache never serves a bundle that an
//! older build of the compiler wrote (the crate version alone does not
//! change between development builds).

use std::hash::{Hash, Hasher};
use std::path::Path;

const SOURCES: [&str; 7] = [
    "src",
    "dsl/src",
    "compiler/src",
    "compiler/opt/src",
    "compiler/opt/profiles",
    "backends/src",
    "runtime/src",
];

fn walk(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, files);
        } else {
            files.push(p);
        }
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for d in SOURCES {
        println!("cargo:rerun-if-changed={d}");
        walk(&root.join(d), &mut files);
    }
    files.sort();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in &files {
        f.strip_prefix(root).unwrap_or(f).hash(&mut h);
        std::fs::read(f).unwrap_or_default().hash(&mut h);
    }
    println!("cargo:rustc-env=MIXC_BUILD_ID={:016x}", h.finish());
}
