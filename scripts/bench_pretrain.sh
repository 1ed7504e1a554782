#!/usr/bin/env bash
# Speed of `invert pretrain` (configs/pretrain/world.toml: the bundled model's architecture,
# batches and learning rates) for two binaries, side by side: seconds per step of each stage,
# from the time the progress lines for steps 100 and 200 arrive.
#
# usage: scripts/bench_pretrain.sh BIN_A [BIN_B ...]
#
# Each binary runs the same shortened schedule (VAE 200 steps, text encoder 200 steps, 2,000
# cached pictures, U-Net 200 steps; the stages, architecture and batch sizes of world.toml)
# into a fresh folder under LOG_DIR, alternating A B A B ... RUNS times. Without a terminal
# invert prints "STAGE STEP/TOTAL loss L" every 100 steps; this script stamps each line as it
# arrives and reports (t(200) - t(100)) / 100 per stage and binary.
#
# Env: CONFIG (configs/pretrain/world.toml), RUNS (1), LOG_DIR (target/bench-pretrain).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONFIG="${CONFIG:-$ROOT/configs/pretrain/world.toml}"
RUNS="${RUNS:-1}"
LOG_DIR="${LOG_DIR:-$ROOT/target/bench-pretrain}"
[[ $# -ge 1 ]] || { echo "usage: $0 BIN_A [BIN_B ...]" >&2; exit 2; }
mkdir -p "$LOG_DIR"

short="$LOG_DIR/world-short.toml"
sed -e 's/^vae_steps = .*/vae_steps = 200/' \
    -e 's/^text_steps = .*/text_steps = 200/' \
    -e 's/^latent_pictures = .*/latent_pictures = 2000/' \
    -e 's/^diffusion_steps = .*/diffusion_steps = 200/' \
    -e 's/^checkpoint_every = .*/checkpoint_every = 1000/' "$CONFIG" > "$short"

table="| run | binary | stage | s/step (steps 100-200) |
|---|---|---|---:|"
for run in $(seq 1 "$RUNS"); do
    i=0
    for bin in "$@"; do
        i=$((i + 1))
        out="$LOG_DIR/out-$run-$i"
        log="$LOG_DIR/run-$run-$i.log"
        rm -rf "$out"
        echo "== run $run, binary $i: $bin" >&2
        "$bin" pretrain --config "$short" --out "$out" 2>&1 | while IFS= read -r line; do
            printf '%s %s\n' "$(date +%s.%N)" "$line"
        done > "$log"
        while read -r stage s; do
            table+="
| $run | $i ($(basename "$bin")) | $stage | $s |"
        done < <(awk '$3 ~ /^(100|200)\// {
                split($3, a, "/"); t[$2, a[1]] = $1; seen[$2] = 1
            } END {
                for (s in seen) if (t[s, 100] && t[s, 200]) printf "%s %.3f\n", s, (t[s, 200] - t[s, 100]) / 100
            }' "$log" | sort)
    done
done
echo
echo "$table"
