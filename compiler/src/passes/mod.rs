//! The mid-end: IR-to-IR passes. Each appends or replaces ops with ones
//! it claims equal, and states the equivalence; the tests check every
//! claim by interpretation.

pub mod conv;
pub mod hoist;
pub mod linear;
pub mod linear_scan;
