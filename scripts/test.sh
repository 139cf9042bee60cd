#!/usr/bin/env bash
# README command 2: set up a fresh Debian 12 machine and run the whole test
# suite, with the formatting and lint gates the project keeps.
set -euo pipefail
cd "$(dirname "$0")/.."
# One build from a clean clone: the incremental cache would only add
# gigabytes (the test binaries link LLVM and MLIR statically).
export CARGO_INCREMENTAL=0
# A clean clone needs about 7 GB for target/ and .tools/; say so up front
# rather than failing mid-build with "No space left on device".
avail_kb=$(df -Pk . | awk 'NR==2 {print $4}')
if [ -n "$avail_kb" ] && [ "$avail_kb" -lt 8000000 ]; then
  echo "test.sh: warning: only $((avail_kb / 1024)) MB free here; a clean build needs about 7 GB" >&2
fi
./scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace
