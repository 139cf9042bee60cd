//! The standard library, embedded in the binary: `use std.NAME` resolves here.

/// `(module name, file name, text)` for every std module.
pub const MODULES: &[(&str, &str, &str)] = &[
    (
        "masks",
        "std/masks.mix",
        include_str!("../../std/masks.mix"),
    ),
    (
        "attention",
        "std/attention.mix",
        include_str!("../../std/attention.mix"),
    ),
    (
        "hyena",
        "std/hyena.mix",
        include_str!("../../std/hyena.mix"),
    ),
];

/// The text of `std.NAME`, with its display file name.
pub fn module(name: &str) -> Option<(&'static str, &'static str)> {
    MODULES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, f, t)| (*f, *t))
}
