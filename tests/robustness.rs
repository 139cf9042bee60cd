//! The front end never panics: random token streams and mutated real files
//! go through parse and check (property tests; `cargo run -p mixc-dsl
//! --example fuzz -- SECONDS` runs the same generators for as long as asked).

use mixc_dsl::fuzz::{mutate, token_soup};
use mixc_dsl::{check_file, render, CheckOptions};
use proptest::prelude::*;

fn no_panic(text: &str) {
    let c = check_file("fuzz.mix", text, &CheckOptions::default());
    // Rendering must not panic either, whatever the spans.
    let _ = render(&c.sources, &c.diagnostics);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

    #[test]
    fn random_token_streams_never_panic(seed in any::<u64>(), len in 0usize..200) {
        no_panic(&token_soup(seed, len));
    }

    #[test]
    fn mutated_real_files_never_panic(seed in any::<u64>(), which in 0usize..3, edits in 1usize..8) {
        let base = [mixc_dsl::stdlib::MODULES[0].2, mixc_dsl::stdlib::MODULES[1].2, mixc_dsl::stdlib::MODULES[2].2][which];
        no_panic(&mutate(base, seed, edits));
    }
}
