#!/usr/bin/env bash
# Generation time of invert against diffusers' StableDiffusionPipeline, side by side, on the
# random-weight `tiny` and `small` pipelines of the reference kit (../shared/bench/diffusers-baseline).
#
# usage: scripts/bench_generate.sh
#
# 1. builds the CLI (`cargo build --release -j2 -p invert-cli`; BUILD=0 skips it);
# 2. makes BENCH_DATA/tiny and BENCH_DATA/small with the kit's make_models.py if they are missing
#    (random weights, torch.manual_seed(0) per component; the tokenizer comes from
#    crates/invert-model/assets/clip-tokenizer);
# 3. for each row (tiny 64 px, small 128 px, small 256 px) and sampler (PNDM, DDIM), 25 steps,
#    batch 1, guidance 7.5, prompt "An oil painting of a toy in the style of Van Gogh":
#    - diffusers: the kit's bench_gen.py (one 2-step warm-up call in the same process, then the
#      median of RUNS calls), under `/usr/bin/time -v`;
#    - invert: one warm-up run, then RUNS runs of `invert generate`, each under `/usr/bin/time -v`;
#      the time is the CLI's own "N image(s) in X s" (prompt encoding, denoising, VAE decode and
#      PNG writing, in process), the median is reported; "load s" is the rest of the process's
#      wall time (start-up, model loading, exit);
#    each preceded by the kit's idle check (wait_idle.sh);
# 4. prints one markdown table (ratio = invert / diffusers; peak RSS per process).
#
# Env: BENCH_DATA (/work/bench-data), KIT (/work/shared/bench/diffusers-baseline),
#      PYTHON (/work/venv/bin/python), RUNS (3), STEPS (25), ROWS ("tiny:64 small:128 small:256"),
#      SAMPLERS ("pndm ddim"), WAIT_IDLE_MAX (90), LOG_DIR (target/bench-generate),
#      SKIP_DIFFUSERS=1 (invert only), BUILD (1), CARGO_JOBS (2).
# "busy" is the share of the machine used by other processes during the timed runs (from
# /proc/stat; diffusers' own figure is bench_gen.py's foreign_cpu_frac).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_DATA="${BENCH_DATA:-/work/bench-data}"
KIT="${KIT:-/work/shared/bench/diffusers-baseline}"
PYTHON="${PYTHON:-/work/venv/bin/python}"
RUNS="${RUNS:-3}"
STEPS="${STEPS:-25}"
ROWS="${ROWS:-tiny:64 small:128 small:256}"
SAMPLERS="${SAMPLERS:-pndm ddim}"
WAIT_IDLE_MAX="${WAIT_IDLE_MAX:-90}"
LOG_DIR="${LOG_DIR:-$ROOT/target/bench-generate}"
SKIP_DIFFUSERS="${SKIP_DIFFUSERS:-0}"
BUILD="${BUILD:-1}"
CARGO_JOBS="${CARGO_JOBS:-2}"
BIN="$ROOT/target/release/invert"
PROMPT="An oil painting of a toy in the style of Van Gogh"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 DIFFUSERS_NO_ADVISORY_WARNINGS=1 TOKENIZERS_PARALLELISM=false

mkdir -p "$LOG_DIR"

if [[ ! -x /usr/bin/time ]]; then
    echo "== installing GNU time (/usr/bin/time)" >&2
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get install -y time >/dev/null || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y time >/dev/null; }
fi

if [[ "$BUILD" == 1 ]]; then
    echo "== cargo build --release -p invert-cli" >&2
    (cd "$ROOT" && cargo build --release -j"$CARGO_JOBS" -p invert-cli) >&2
fi

for cfg in $(for r in $ROWS; do echo "${r%%:*}"; done | sort -u); do
    if [[ ! -f "$BENCH_DATA/$cfg/unet/diffusion_pytorch_model.safetensors" ]]; then
        echo "== making $BENCH_DATA/$cfg with the kit's make_models.py" >&2
        "$PYTHON" "$KIT/scripts/make_models.py" "$BENCH_DATA" \
            "$ROOT/crates/invert-model/assets/clip-tokenizer" "$cfg" >&2
    fi
done

# Machine-wide busy CPU ticks (user+nice+system+irq+softirq+steal), as wait_idle.sh counts them.
busy_ticks() { read -r _ a b c _ _ f g h _ < /proc/stat; echo $((a + b + c + f + g + h)); }
median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
# "h:mm:ss" or "m:ss.ss" from time -v to seconds.
wall_s() { awk -F: '{s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; print s}'; }
hz=$(getconf CLK_TCK)
ncpu=$(nproc)

table="| config | sampler | size | diffusers s | invert s | ratio | diffusers peak RSS (MiB) | invert peak RSS (MiB) | invert load s | busy (diffusers / invert) |
|---|---|---:|---:|---:|---:|---:|---:|---:|---|"

for row in $ROWS; do
    cfg="${row%%:*}"; size="${row##*:}"
    model="$BENCH_DATA/$cfg"
    for sampler in $SAMPLERS; do
        tag="$cfg-$size-$sampler"

        # --- diffusers ---
        d_med="-"; d_rss="-"; d_busy="-"
        if [[ "$SKIP_DIFFUSERS" != 1 ]]; then
            echo "== diffusers $tag: $("$KIT/scripts/wait_idle.sh" "$WAIT_IDLE_MAX")" >&2
            GEN_REPEATS="$RUNS" GEN_SCHEDULERS="$sampler" GEN_STEPS="$STEPS" \
                /usr/bin/time -v "$PYTHON" "$KIT/scripts/bench_gen.py" "$LOG_DIR/diffusers-$tag.json" \
                "$model" "$size" > "$LOG_DIR/diffusers-$tag.log" 2>&1
            read -r d_med d_busy < <("$PYTHON" -c 'import json,sys; r=json.load(open(sys.argv[1]))["runs"][0]; print(r["median_s"], r["foreign_cpu_frac"])' "$LOG_DIR/diffusers-$tag.json")
            d_rss=$(awk '/Maximum resident/ {printf "%.0f", $NF / 1024}' "$LOG_DIR/diffusers-$tag.log")
            echo "   diffusers $tag: median $d_med s, peak RSS $d_rss MiB" >&2
        fi

        # --- invert ---
        echo "== invert $tag: $("$KIT/scripts/wait_idle.sh" "$WAIT_IDLE_MAX")" >&2
        gen=(); load=(); rss=(); own=0; busy=0; span=0
        for run in $(seq 0 "$RUNS"); do
            log="$LOG_DIR/invert-$tag-run$run.log"
            b0=$(busy_ticks)
            /usr/bin/time -v "$BIN" generate --model "$model" --prompt "$PROMPT" --steps "$STEPS" \
                --sampler "$sampler" --cfg 7.5 --seed "$run" --width "$size" --height "$size" \
                --out "$LOG_DIR/images-$tag" --no-grid > "$log" 2>&1
            b1=$(busy_ticks)
            t=$(grep -o 'image(s) in [0-9.]*' "$log" | awk '{print $3}')
            wall=$(grep 'Elapsed (wall clock)' "$log" | awk '{print $NF}' | wall_s)
            user=$(awk '/User time/ {print $NF}' "$log"); sys=$(awk '/System time/ {print $NF}' "$log")
            kb=$(awk '/Maximum resident/ {print $NF}' "$log")
            echo "   invert $tag run $run: $t s (process $wall s, peak RSS $((kb / 1024)) MiB)" >&2
            [[ "$run" == 0 ]] && continue   # warm-up
            gen+=("$t"); load+=("$(awk -v w="$wall" -v t="$t" 'BEGIN {printf "%.2f", w - t}')"); rss+=("$kb")
            own=$(awk -v o="$own" -v u="$user" -v s="$sys" 'BEGIN {print o + u + s}')
            busy=$((busy + b1 - b0)); span=$(awk -v s="$span" -v w="$wall" 'BEGIN {print s + w}')
        done
        i_med=$(printf '%s\n' "${gen[@]}" | median)
        i_load=$(printf '%s\n' "${load[@]}" | median)
        i_rss=$(printf '%s\n' "${rss[@]}" | sort -n | tail -1 | awk '{printf "%.0f", $1 / 1024}')
        i_busy=$(awk -v b="$busy" -v hz="$hz" -v o="$own" -v s="$span" -v n="$ncpu" \
            'BEGIN {f = (b / hz - o) / (s * n); if (f < 0) f = 0; printf "%.3f", f}')
        ratio="-"
        [[ "$d_med" != "-" ]] && ratio=$(awk -v a="$i_med" -v b="$d_med" 'BEGIN {printf "%.2f", a / b}')
        label=$(echo "$sampler" | tr '[:lower:]' '[:upper:]')
        table+="
| $cfg | $label | $size | $d_med | $i_med | $ratio | $d_rss | $i_rss | $i_load | $d_busy / $i_busy |"
    done
done

echo
echo "$table"
