#!/usr/bin/env bash
# README command 1: set up, then check every example, compile and run an
# example mixer next to the built-ins on the CPU back end (each checked
# against the f64 reference interpreter), and explain what the optimiser
# plans for each at L=16384. `mixc bench` will replace this.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >/dev/null
cargo build --release --quiet --bin mixc
MIXC=target/release/mixc
SIZES="${SIZES:-B=2,L=256,D=64}"
$MIXC check examples/*.mix
for f in examples/sliding_window.mix std/attention.mix std/hyena.mix; do
  # The compiled CPU path, checked against the f64 reference interpreter.
  $MIXC run "$f" --set "$SIZES" --backend cpu --compare ref
done
# What the optimiser makes of them at a realistic length.
for f in examples/sliding_window.mix std/attention.mix std/hyena.mix; do
  echo
  $MIXC explain "$f" --set L=16384 --device "${DEVICE:-h100}"
done
