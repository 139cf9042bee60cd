//! The mid-end: IR-to-IR passes. Each appends or replaces ops with ones
//! it claims equal, and states the equivalence; the tests check every
//! claim by interpretation.

pub mod conv;
pub mod hoist;
pub mod linear;
pub mod linear_scan;
pub mod merge;

use crate::ir::verify::{verify, VerifyError};
use crate::ir::{Module, ValueId};
use std::collections::BTreeMap;

/// The mid-end's output: the module every back end of a target receives,
/// the passes that ran (in order), and the equivalences they claim.
#[derive(Clone, Debug)]
pub struct MidEnd {
    pub module: Module,
    pub passes: Vec<&'static str>,
    /// (value the module now computes, value the rewritten op still
    /// computes): interpreting `module` computes both.
    pub claims: Vec<(ValueId, ValueId)>,
    /// Each merged contraction of `merge-projections` and its members.
    pub merged: Vec<(ValueId, Vec<ValueId>)>,
}

/// Which target-dependent passes run.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// The host's FFT library takes long convolutions (`hoist-long-convs`).
    pub library_fft: bool,
    /// Projections of one input merge (`merge-projections`): on GPUs, whose
    /// tiled contractions take the wider product whole; not on the host,
    /// which computes each projection as a matrix product of its own (the
    /// runtime's GEMM; before it, the row-accumulating contraction
    /// streamed the whole weight matrix for every row and stacked weights
    /// fell out of cache: std attention, D=512, L=1k, 22.5 ms merged
    /// against 16.5 ms for the three projections). Merging on the host
    /// again is not measured yet.
    pub merge_projections: bool,
    /// Sides of matrix products that are products of several reads become
    /// ops of their own (`hoist-gemm-sides`): on the host, whose GEMM
    /// library takes one read a side.
    pub gemm_sides: bool,
}

/// The mid-end pipeline, in order; every pass takes and returns verified
/// IR (a pass whose output fails the verifier is a compiler bug, reported
/// with its name):
///
/// 1. `hoist-sums` ([`hoist::hoist_sums`]): a contraction under an
///    elementwise function becomes an op of its own, read back at the
///    original's indices. Claim: the output is unchanged (the same sums,
///    stored and reread).
/// 2. `linear-attention-as-scan` ([`linear_scan::as_scans_claiming`]):
///    causal linear attention whose matrix state fits on chip becomes a
///    scan and its readout. Claim: each readout equals the op it replaces
///    (listed in [`MidEnd::claims`]).
/// 3. `hoist-long-convs` ([`conv::hoist`], with [`Options::library_fft`]: the host's
///    FFT library takes a convolution that is an op of its own): each long
///    convolution (and a signal expression) becomes an op of its own.
///    Claim: the output is unchanged.
/// 4. `hoist-gemm-sides` ([`hoist::hoist_gemm_sides`], with
///    [`Options::gemm_sides`]): a side of a matrix product that is a
///    product of several reads becomes an op of its own. Claim: the output
///    is unchanged.
/// 5. `merge-projections` ([`merge::merge_projections`], with
///    [`Options::merge_projections`]): projections of
///    one input with weights of one shape become one contraction with the
///    weights stacked (once per parameter set); readers read their slice.
///    Claim: each member equals its slice (listed in [`MidEnd::claims`]).
pub fn pipeline(
    m: &Module,
    options: Options,
    consts: &BTreeMap<String, i64>,
) -> Result<MidEnd, VerifyError> {
    let checked = |name: &'static str, m: Module| -> Result<Module, VerifyError> {
        verify(&m)
            .map_err(|e| VerifyError(format!("after the `{name}` pass (compiler bug): {}", e.0)))?;
        Ok(m)
    };
    verify(m)?;
    let mut passes = vec!["hoist-sums"];
    let m = checked("hoist-sums", hoist::hoist_sums(m))?;
    passes.push("linear-attention-as-scan");
    let (m, mut claims) = linear_scan::as_scans_claiming(&m, consts);
    let mut m = checked("linear-attention-as-scan", m)?;
    if options.library_fft {
        passes.push("hoist-long-convs");
        m = checked("hoist-long-convs", conv::hoist(&m).0)?;
    }
    if options.gemm_sides {
        passes.push("hoist-gemm-sides");
        m = checked("hoist-gemm-sides", hoist::hoist_gemm_sides(&m, consts))?;
    }
    let (m, merged) = if options.merge_projections {
        passes.push("merge-projections");
        let r = merge::merge_projections(&m);
        claims.extend(r.claims);
        (checked("merge-projections", r.module)?, r.groups)
    } else {
        (m, Vec::new())
    };
    Ok(MidEnd {
        module: m,
        passes,
        claims,
        merged,
    })
}
