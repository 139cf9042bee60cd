//! Differential testing for mixc, in the manner of `cranelift-fuzzgen` and
//! Csmith: random programs from a grammar ([`gen`]), run on every
//! execution path against the f64 interpreter ([`exec`]), failures shrunk
//! to small programs ([`shrink`]) and kept as data-driven regression files
//! ([`corpus`]). `mixc fuzz` drives campaigns; the test suite runs a
//! fixed-seed budget and the corpus.

pub mod corpus;
pub mod exec;
pub mod gen;
pub mod shrink;

pub use exec::{Arch, Invalid, Path, Verdict};
pub use gen::{Case, Program, Shape};

/// What one case did on each path it ran.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub invalid: Option<Invalid>,
    pub verdicts: Vec<(Path, Verdict)>,
}

impl Outcome {
    pub fn failures(&self) -> impl Iterator<Item = &(Path, Verdict)> {
        self.verdicts.iter().filter(|(_, v)| v.is_failure())
    }
}

/// Runs `src` at `shape` with inputs from `seed` on `paths`.
pub fn run_source(src: &str, shape: &Shape, seed: u64, paths: &[Path]) -> Outcome {
    let prog = match exec::check(src) {
        Ok(p) => p,
        Err(e) => {
            return Outcome {
                invalid: Some(Invalid::Check(e)),
                verdicts: vec![],
            }
        }
    };
    let r = match exec::reference(&prog, shape, seed) {
        Ok(r) => r,
        Err(e) => {
            return Outcome {
                invalid: Some(e),
                verdicts: vec![],
            }
        }
    };
    Outcome {
        invalid: None,
        verdicts: paths.iter().map(|p| (*p, exec::run_path(&r, *p))).collect(),
    }
}

/// The paths a campaign runs case `seed` on: the CPU back end, the MLIR
/// host path and the optimiser's claims on every case, and two of the
/// six simulator configurations (dtype x architecture), rotating so every
/// configuration gets a third of the cases.
pub fn paths_for(seed: u64, allowed: &[Path]) -> Vec<Path> {
    let sims: Vec<Path> = Path::all()
        .into_iter()
        .filter(|p| matches!(p, Path::Simt(..)))
        .collect();
    let a = sims[(seed % 6) as usize];
    let b = sims[((seed / 6 + seed + 3) % 6) as usize];
    let opt = if seed.is_multiple_of(2) {
        Path::Opt("cpu")
    } else {
        Path::Opt("h100")
    };
    let mut v = vec![Path::Cpu, a, b, opt];
    v.dedup();
    v.retain(|p| allowed.contains(p));
    v
}

/// The CI budget's paths for case `seed`: the CPU back end, one of the six
/// simulator configurations and one optimiser profile, rotating so each
/// gets its share of the cases.
pub fn quick_paths_for(seed: u64, allowed: &[Path]) -> Vec<Path> {
    let sims: Vec<Path> = Path::all()
        .into_iter()
        .filter(|p| matches!(p, Path::Simt(..)))
        .collect();
    let host = Path::Cpu;
    let opt = if (seed / 2).is_multiple_of(2) {
        Path::Opt("cpu")
    } else {
        Path::Opt("h100")
    };
    let mut v = vec![host, sims[(seed % 6) as usize], opt];
    v.retain(|p| allowed.contains(p));
    v
}
