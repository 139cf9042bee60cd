//! The e-graph optimiser: finds the fast algorithm for a mixer from its math.
//!
//! The IR is first split so that every op has at most one reduction or
//! normaliser at its root ([`mixc_compiler::ir::split`]). The e-graph has one
//! e-class per IR value. Its e-nodes are ways to compute that value:
//!
//! - `(value k)`: an input or parameter;
//! - `(op k args..)`: op `k` as written, one kernel (a direct loop nest);
//! - `(fft-conv k args..)`: op `k`, a causal convolution, evaluated by FFT;
//! - `(attention o p s args..)`: ops `s` (scores), `p` (softmax) and `o`
//!   (weighted sum) as one fused kernel with online softmax that never
//!   writes the `L x L` scores, visiting only the key tiles the mask keeps;
//! - `(merged k n o_1..o_n args..)`: member `k` of projections of one input
//!   computed as one contraction (the mid-end's `merge-projections` runs it);
//! - `(scan ..)`, `(chunked-scan ..)`, `(parallel-scan ..)`: a scan with its
//!   readout, sequential or chunked, and a first-order scan as a parallel
//!   prefix (the last two are explored only).
//!
//! `args` are the e-classes of the values the node reads. Rules (in
//! [`rules`]) add equivalent e-nodes under stated side conditions; the
//! meaning of every e-node is the IR ops it names, so no rule changes what is
//! computed, only how. Extraction picks the cheapest e-node per class under
//! a roofline cost model ([`cost`]) for a device profile, and [`plan`] turns
//! the result into the ordered list of kernels that `mixc explain` prints.
//!
//! **Architecture invariant:** this crate depends on the IR and on egg, never
//! the reverse: the IR and the interpreter know nothing of the optimiser.

pub mod cost;
pub mod lang;
pub mod plan;
pub mod rules;
pub mod scheduled;

pub use cost::Profile;
pub use plan::{explore, Kernel, Plan};
pub use scheduled::{optimize, optimize_for};
