//! The mid-end: IR-to-IR passes. Each appends or replaces ops with ones
//! it claims equal, and states the equivalence; the tests check every
//! claim by interpretation.

pub mod conv;
pub mod hoist;
pub mod linear;
pub mod linear_scan;

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
/// 3. `hoist-long-convs` ([`conv::hoist`], with `library_fft`: the host's
///    FFT library takes a convolution that is an op of its own): each long
///    convolution (and a signal expression) becomes an op of its own.
///    Claim: the output is unchanged.
pub fn pipeline(
    m: &Module,
    library_fft: bool,
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
    let (m, claims) = linear_scan::as_scans_claiming(&m, consts);
    let mut m = checked("linear-attention-as-scan", m)?;
    if library_fft {
        passes.push("hoist-long-convs");
        m = checked("hoist-long-convs", conv::hoist(&m).0)?;
    }
    Ok(MidEnd {
        module: m,
        passes,
        claims,
    })
}
