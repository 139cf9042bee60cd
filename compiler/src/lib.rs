//! The mixc compiler's middle: today, the f64 reference interpreter that
//! defines what every checked program means. Later stages (the mixer IR, the
//! e-graph optimiser, lowering to kernels) live here too and are checked
//! against it.
//!
//! **Architecture invariant:** the interpreter is pure Rust: no egg, no LLVM,
//! no MLIR, no CUDA. It is deliberately simple (a tree walk over the typed
//! program), because it is the definition every faster path is compared with.

pub mod interp;
pub mod interval;
pub mod ir;
pub mod passes;
pub mod pattern;
pub mod schedule;
pub mod tiles;

pub use interp::{bind_sizes, InterpError, Interpreter, Sizes};
