#!/usr/bin/env bash
# README command 1: set up, then benchmark an example mixer against the
# built-in attention and Hyena (and PyTorch, when python3 has torch) across
# sequence lengths (whole layers, same shapes): on the GPU when there is one,
# else on the CPU back end against JAX on the CPU.
# Each mixer is first checked against the f64 reference interpreter. Writes
# target/bench/bench.{svg,png,json}, then explains the optimiser's plan for
# the mixer at L=16384.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >/dev/null
cargo build --release --quiet --bin mixc
MIXC=target/release/mixc
FILE="${1:-examples/sliding_window.mix}"
mkdir -p target/bench
$MIXC check examples/*.mix
$MIXC bench "$FILE" --vs attention,hyena,torch,jax --seq "${SEQ:-256,1k,4k}" \
  --device "${DEVICE:-auto}" --plot target/bench/bench --json target/bench/bench.json
echo
$MIXC explain "$FILE" --set L=16384
