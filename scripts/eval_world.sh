#!/usr/bin/env bash
# Trains the four bundled concept sets (datasets/) with the world presets on the bundled model and
# runs `invert eval` on them: the numbers and figure of docs/WORLD.md.
#   scripts/eval_world.sh [OUT [EVAL OPTIONS...]]   (default out/eval-world; about 15 minutes on
#   2 cores). Options after OUT go to `invert eval` (e.g. --sampler ddim); INVERT_MODEL picks
#   another model for the training and the evaluation alike.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out/eval-world}
shift || true
cargo build --release -p invert-cli
BIN=target/release/invert
mkdir -p "$OUT/learned"
train() { # set kind init; a word's training mostly keeps one core busy, so two run at once
  echo "training <$1> (log: $OUT/learned/$1.log)"
  "$BIN" train --config "configs/train/world-$2.toml" --images "datasets/$1" --token "<$1>" \
    --init "$3" --out "$OUT/learned/$1" --overwrite >"$OUT/learned/$1.log" 2>&1 ||
    { tail -n 20 "$OUT/learned/$1.log"; return 1; }
}
pair() {
  train $1 & local a=$!
  train $2 & local b=$!
  local rc=0
  wait "$a" || rc=1
  wait "$b" || rc=1
  return $rc
}
pair "striped-triangle object triangle" "outlined-square object square"
pair "framed-style style painting" "hatched-style style painting"
"$BIN" eval --learned "$OUT/learned" --out "$OUT" "$@"
