//! Long-running robustness check of the front end:
//! `cargo run --release -p mixc-dsl --example fuzz -- SECONDS`.
//! Feeds random token streams and mutated std files through parse, check
//! and rendering; any panic is caught, printed with its input, and fails.

use mixc_dsl::fuzz::{mutate, token_soup};
use mixc_dsl::{check_file, render, CheckOptions};
use std::panic;
use std::time::{Duration, Instant};

fn main() {
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let bases: Vec<&str> = mixc_dsl::stdlib::MODULES.iter().map(|m| m.2).collect();
    let mut n: u64 = 0;
    let mut seed: u64 = 0x5eed;
    panic::set_hook(Box::new(|_| {}));
    while Instant::now() < deadline {
        for _ in 0..100 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let text = if seed.is_multiple_of(2) {
                token_soup(seed, (seed >> 8) as usize % 300)
            } else {
                mutate(
                    bases[(seed >> 4) as usize % bases.len()],
                    seed,
                    1 + (seed >> 12) as usize % 10,
                )
            };
            let r = panic::catch_unwind(|| {
                let c = check_file("fuzz.mix", &text, &CheckOptions::default());
                render(&c.sources, &c.diagnostics).len()
            });
            if r.is_err() {
                let _ = panic::take_hook();
                eprintln!("PANIC on input (seed {seed}):\n{text}");
                std::process::exit(1);
            }
            n += 1;
        }
    }
    println!("fuzz: {n} inputs in {secs} s, no panic");
}
