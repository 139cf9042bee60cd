//! The integration suite: one test binary for the whole front end and
//! interpreter (test binaries are large; one keeps builds fast).

mod bundles;
mod cli;
mod codegen;
mod common;
mod diagnostics;
mod emu;
mod fuzz;
mod ir;
mod numerics;
mod opt;
mod parser;
mod plan;
mod random_programs;
mod reference;
mod robustness;
mod semantics;
