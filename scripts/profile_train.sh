#!/usr/bin/env bash
# Where an `invert train` step spends its time: `perf record --call-graph dwarf` (software
# cpu-clock event; no hardware counters are needed) of one training run, summarised by
# scripts/perf_train_phases.py into phases (text-encoder forward, U-Net forward, backward,
# optimiser) and cost classes (GEMM, expf, page faults, re-alignment copies, ...).
#
# usage: scripts/profile_train.sh CFG RES BATCH STEPS     e.g. scripts/profile_train.sh small 256 1 15
#
# Same options as a scripts/bench_train.sh row (no previews, no periodic saves). Needs `perf`
# (Debian: apt-get install linux-perf) and a release binary with symbols (the default).
# Env: BENCH_DATA (/work/bench-data), BIN ($BENCH_DATA/invert-bench-bin), FREQ (99 Hz),
#      LOG_DIR (target/profile-train), LOCK (/tmp/invert-bench.lock; empty: no lock),
#      EXTRA_ENV (e.g. "GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432", for experiments).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_DATA="${BENCH_DATA:-/work/bench-data}"
BIN="${BIN:-$BENCH_DATA/invert-bench-bin}"
FREQ="${FREQ:-99}"
LOG_DIR="${LOG_DIR:-$ROOT/target/profile-train}"
LOCK="${LOCK-/tmp/invert-bench.lock}"
CFG=$1; RES=$2; BS=$3; STEPS=$4
tag="$CFG-r$RES-b$BS"
model="$BENCH_DATA/$CFG"
[[ -f "$model/tokenizer/tokenizer.json" || ! -d "$BENCH_DATA/$CFG-ti" ]] || model="$BENCH_DATA/$CFG-ti"
mkdir -p "$LOG_DIR"
if [[ -n "$LOCK" ]]; then
    trap 'rm -f "$LOCK"' EXIT
    trap 'exit 130' INT TERM
    echo $$ > "$LOCK"
fi
rm -rf "$LOG_DIR/out-$tag"
env ${EXTRA_ENV:-} perf record -F "$FREQ" --call-graph dwarf,32768 -o "$LOG_DIR/$tag.perf.data" -- \
    /usr/bin/time -v "$BIN" train --model "$model" --images "$BENCH_DATA/images/$RES" \
    --token "<cat-toy>" --init toy --property object --vectors 1 --resolution "$RES" \
    --batch-size "$BS" --steps "$STEPS" --lr 5e-4 --scale-lr false --seed 0 \
    --save-every 0 --preview-every 0 --out "$LOG_DIR/out-$tag" > "$LOG_DIR/$tag.log" 2>&1
[[ -n "$LOCK" ]] && rm -f "$LOCK"
python3 - "$LOG_DIR/out-$tag/log.jsonl" <<'PY'
import json, statistics, sys
t = [json.loads(l)["time"] for l in open(sys.argv[1])]
d = [b - a for a, b in zip(t, t[1:])]
print(f"steps {len(t)}, median s/step under perf {statistics.median(d[2:] or d):.4f}")
PY
grep -E "Percent of CPU|Maximum resident|Minor|Involuntary" "$LOG_DIR/$tag.log"
pid=$(perf script -i "$LOG_DIR/$tag.perf.data" -F pid 2>/dev/null | awk '{print $1}' | sort | uniq -c | sort -rn | awk 'NR==1 {print $2}')
perf script -i "$LOG_DIR/$tag.perf.data" -F tid,time,ip,sym 2>/dev/null \
    | python3 "$ROOT/scripts/perf_train_phases.py" "$pid" | tee "$LOG_DIR/$tag.phases.md"
