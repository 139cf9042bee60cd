#!/usr/bin/env bash
# README command 2: set up a fresh Debian 12 machine and run the whole test
# suite, with the formatting and lint gates the project keeps.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace
