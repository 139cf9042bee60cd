#!/usr/bin/env bash
# README command 1: set up, then compile and run an example mixer next to the
# built-ins (today on the f64 reference backend; `mixc bench` replaces this
# once the compiled back ends exist).
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
