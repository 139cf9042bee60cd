#!/usr/bin/env bash
# README command 1: set up, then check every example, run an example mixer
# next to the built-ins on the f64 reference backend, and explain what the
# optimiser plans for each at L=16384 (`mixc bench` replaces this once the
# compiled back ends exist).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >/dev/null
cargo build --release --quiet --bin mixc
MIXC=target/release/mixc
SIZES="${SIZES:-B=2,L=256,D=64}"
$MIXC check examples/*.mix
for f in examples/sliding_window.mix std/attention.mix std/hyena.mix; do
  $MIXC run "$f" --set "$SIZES" --backend ref
done
# What the optimiser makes of them at a realistic length.
for f in examples/sliding_window.mix std/attention.mix std/hyena.mix; do
  echo
  $MIXC explain "$f" --set L=16384 --device "${DEVICE:-h100}"
done
