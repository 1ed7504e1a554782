#!/usr/bin/env bash
# Trains the four bundled concept sets (datasets/) with the world presets on the bundled model and
# runs `invert eval` on them: the numbers and figure of docs/WORLD.md.
#   scripts/eval_world.sh [OUT]        (default out/eval-world; about 30 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out/eval-world}
cargo build --release -p invert-cli
BIN=target/release/invert
train() { # set kind init
  "$BIN" train --config "configs/train/world-$2.toml" --images "datasets/$1" --token "<$1>" \
    --init "$3" --out "$OUT/learned/$1" --overwrite
}
train striped-triangle object triangle
train outlined-square object square
train framed-style style painting
train hatched-style style painting
"$BIN" eval --learned "$OUT/learned" --out "$OUT"
