//! `conv-as-fft`: a causal convolution along one axis,
//! `sum(t) h[.., t, ..] * u[.., l - t, ..] where t <= l`, may be evaluated by
//! FFT: the same sums in another order (`irfft(rfft(u) * rfft(h))` with zero
//! padding to twice the length, so the circular product is the causal one).
//! Condition: the op's kind is `conv` (the IR's structural match; the
//! builtin `conv` and its raw index form are the same IR). The cost model
//! decides: a few taps stay direct, a filter as long as the sequence goes FFT.

use mixc_compiler::ir::{Module, OpKind};

/// Whether op `o` may be computed by FFT.
pub fn applies(m: &Module, o: usize) -> bool {
    m.ops[o].kind == OpKind::Conv
}
