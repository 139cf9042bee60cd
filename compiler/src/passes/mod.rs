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
/// 4. `merge-projections` ([`merge::merge_projections`]): projections of
///    one input with weights of one shape become one contraction with the
///    weights stacked (once per parameter set); readers read their slice.
///    Claim: each member equals its slice (listed in [`MidEnd::claims`]).
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
    let (m, mut claims) = linear_scan::as_scans_claiming(&m, consts);
    let mut m = checked("linear-attention-as-scan", m)?;
    if library_fft {
        passes.push("hoist-long-convs");
        m = checked("hoist-long-convs", conv::hoist(&m).0)?;
    }
    passes.push("merge-projections");
    let (m, views) = merge::merge_projections(&m);
    let m = checked("merge-projections", m)?;
    let mut merged: Vec<(ValueId, Vec<ValueId>)> = Vec::new();
    for (view, member) in &views {
        let Some(crate::ir::ValueDef::Op(o)) = m.values.get(view.0 as usize).map(|v| v.def.clone())
        else {
            continue;
        };
        let Some(whole) = crate::pattern::operands(&m, o.0 as usize).first().copied() else {
            continue;
        };
        match merged.iter_mut().find(|(w, _)| *w == whole) {
            Some((_, ms)) => ms.push(*member),
            None => merged.push((whole, vec![*member])),
        }
    }
    claims.extend(views);
    Ok(MidEnd {
        module: m,
        passes,
        claims,
        merged,
    })
}
