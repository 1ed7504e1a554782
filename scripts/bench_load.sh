#!/usr/bin/env bash
# Peak memory of loading a full-size Stable Diffusion 1.5 model with `invert model info`.
#
# usage: scripts/bench_load.sh [MODEL_DIR]        (default /work/bench-data/sd15)
#
# 1. builds the CLI (`cargo build --release -j2 -p invert-cli`);
# 2. makes the random-weight SD1.5 model with scripts/make_random_sd15.py if MODEL_DIR has no
#    weights (diffusers folder; with SINGLE_FILE=1, the default, also MODEL_DIR/sd15.safetensors);
# 3. runs `/usr/bin/time -v target/release/invert model info --model ...` RUNS times (default 2)
#    for the folder and for the single file, plus once for a path that does not exist (the
#    process's own floor: binary, allocator, runtime; nothing loaded);
# 4. prints a markdown table: model size on disk, peak RSS, ratio peak/size, load seconds.
#
# Env: RUNS (2), SINGLE_FILE (1), PYTHON (/work/venv/bin/python), CARGO_JOBS (2),
#      RSS_TRACE=1 also samples VmRSS every 0.1 s and writes LOG_DIR/*.rss.tsv
#      LOG_DIR (target/bench-load), where the raw `time -v` outputs are kept;
#      BUILD=0 skips the cargo build and measures the existing target/release/invert.
# The weights go outside the repository; nothing is written into the work tree but target/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODEL_DIR="${1:-/work/bench-data/sd15}"
RUNS="${RUNS:-2}"
SINGLE_FILE="${SINGLE_FILE:-1}"
PYTHON="${PYTHON:-/work/venv/bin/python}"
CARGO_JOBS="${CARGO_JOBS:-2}"
LOG_DIR="${LOG_DIR:-$ROOT/target/bench-load}"
RSS_TRACE="${RSS_TRACE:-0}"
BUILD="${BUILD:-1}"
BIN="$ROOT/target/release/invert"

mkdir -p "$LOG_DIR"

if [[ ! -x /usr/bin/time ]]; then
    echo "== installing GNU time (/usr/bin/time)" >&2
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get install -y time >/dev/null || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y time >/dev/null; }
fi

if [[ "$BUILD" == 1 ]]; then
    echo "== building: cargo build --release -j$CARGO_JOBS -p invert-cli" >&2
    t0=$(date +%s)
    (cd "$ROOT" && cargo build --release -j"$CARGO_JOBS" -p invert-cli) >&2
    echo "   built in $(( $(date +%s) - t0 )) s" >&2
else
    [[ -x "$BIN" ]] || { echo "BUILD=0 but $BIN does not exist" >&2; exit 1; }
    echo "== BUILD=0: using the existing $BIN ($(date -r "$BIN" '+%F %T'))" >&2
fi

weights_present() {
    [[ -f "$MODEL_DIR/unet/diffusion_pytorch_model.safetensors" &&
       -f "$MODEL_DIR/vae/diffusion_pytorch_model.safetensors" &&
       -f "$MODEL_DIR/text_encoder/model.safetensors" ]]
}
if ! weights_present || { [[ "$SINGLE_FILE" == 1 ]] && [[ ! -f "$MODEL_DIR/sd15.safetensors" ]]; }; then
    echo "== making the random SD1.5 model in $MODEL_DIR" >&2
    args=("$MODEL_DIR"); [[ "$SINGLE_FILE" == 1 ]] && args+=(--single-file)
    "$PYTHON" "$ROOT/scripts/make_random_sd15.py" "${args[@]}" >&2
fi

# Bytes of the weights a load reads.
folder_bytes() {
    stat -c %s "$MODEL_DIR/unet/diffusion_pytorch_model.safetensors" \
        "$MODEL_DIR/vae/diffusion_pytorch_model.safetensors" \
        "$MODEL_DIR/text_encoder/model.safetensors" | awk '{s += $1} END {printf "%.0f\n", s}'
}

# run LABEL MODEL_PATH RUN_NO -> appends "label|bytes|run|peak_kb|load_s|wall_s|exit" to $ROWS
ROWS="$LOG_DIR/rows.txt"
: >"$ROWS"
run() {
    local label=$1 model=$2 n=$3 bytes=$4
    local log="$LOG_DIR/$label.$n.log"
    local trace_pid=""
    /usr/bin/time -v "$BIN" model info --model "$model" >"$log" 2>&1 &
    local tpid=$!
    if [[ "$RSS_TRACE" == 1 ]]; then
        (
            # sample the invert child of /usr/bin/time
            local pid="" start; start=$(date +%s%N)
            for _ in $(seq 50); do pid=$(pgrep -P "$tpid" || true); [[ -n "$pid" ]] && break; sleep 0.02; done
            [[ -z "$pid" ]] && exit 0
            printf 't_ms\trss_kb\n' >"$LOG_DIR/$label.$n.rss.tsv"
            while [[ -r /proc/$pid/status ]]; do
                rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
                [[ -n "$rss" ]] && printf '%d\t%s\n' "$(( ($(date +%s%N) - start) / 1000000 ))" "$rss" >>"$LOG_DIR/$label.$n.rss.tsv"
                sleep 0.1
            done
        ) &
        trace_pid=$!
    fi
    local rc=0
    wait "$tpid" || rc=$?
    [[ -n "$trace_pid" ]] && wait "$trace_pid" || true
    local peak wall load
    peak=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$log")
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$log" | awk -F: '{ if (NF == 3) print $1*3600 + $2*60 + $3; else print $1*60 + $2 }')
    load=$(awk '/^loaded in/ {print $3}' "$log")
    echo "$label|$bytes|$n|$peak|${load:--}|$wall|$rc" >>"$ROWS"
    echo "   $label run $n: exit $rc, peak RSS $peak kB, load ${load:--} s, wall $wall s" >&2
    if [[ $rc -ne 0 && "$bytes" != 0 ]]; then
        echo "   (failed; log: $log)" >&2
        tail -5 "$log" >&2
    fi
}

echo "== floor: invert model info --model <missing path> (process only, nothing loaded)" >&2
run floor "$LOG_DIR/does-not-exist" 1 0
echo "== diffusers folder: $MODEL_DIR" >&2
FB=$(folder_bytes)
for n in $(seq "$RUNS"); do run folder "$MODEL_DIR" "$n" "$FB"; done
if [[ "$SINGLE_FILE" == 1 && -f "$MODEL_DIR/sd15.safetensors" ]]; then
    echo "== single file: $MODEL_DIR/sd15.safetensors" >&2
    SB=$(stat -c %s "$MODEL_DIR/sd15.safetensors")
    for n in $(seq "$RUNS"); do run single-file "$MODEL_DIR/sd15.safetensors" "$n" "$SB"; done
fi

# The summary of the first folder run, for the record.
echo
sed -n '/^model:/,/^loaded in/p' "$LOG_DIR/folder.1.log"
echo
echo "| model | size on disk | run | peak RSS | peak / size | load (s) | wall (s) |"
echo "|---|---:|---:|---:|---:|---:|---:|"
awk -F'|' '{
    label = $1; bytes = $2; peak_b = $4 * 1024
    if (label == "floor") {
        printf "| process floor (missing path, nothing loaded) | - | %s | %.1f MiB | - | - | %s |\n", $3, $4 / 1024, $6
    } else if ($7 != 0) {
        printf "| %s | %.2f GB | %s | failed (exit %s) | - | - | %s |\n", label, bytes / 1e9, $3, $7, $6
    } else {
        printf "| %s | %.2f GB | %s | %.2f GB | %.2fx | %s | %s |\n", label, bytes / 1e9, $3, peak_b / 1e9, peak_b / bytes, $5, $6
    }
}' "$ROWS"
echo
echo "GB = 10^9 bytes; peak RSS = /usr/bin/time -v 'Maximum resident set size'; load = the CLI's own 'loaded in'; raw logs in $LOG_DIR" 
