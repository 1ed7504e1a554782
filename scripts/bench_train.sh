#!/usr/bin/env bash
# Training speed and memory of `invert train` against diffusers' own textual_inversion.py
# (unmodified), side by side, on the random-weight pipelines of the reference kit
# (../shared/bench/diffusers-baseline): seconds per optimisation step (steady state) and peak RSS.
#
# usage: scripts/bench_train.sh
#
# 1. builds the CLI (`cargo build --release -p invert-cli`; BUILD=0 skips it) and copies it to
#    BIN_COPY, so a concurrent rebuild cannot change the binary under the timed runs;
# 2. makes BENCH_DATA/{tiny,small,sd15} with the kit's make_models.py and BENCH_DATA/images/RES
#    (4 PNGs) with the kit's make_images.py if they are missing;
# 3. takes LOCK (other heavy CPU work on the machine pauses while it exists; removed on exit)
#    after the kit's idle check, then for each row CFG:RES:BATCH:STEPS[:SKIP], same model folder,
#    images, resolution, batch, fp32, placeholder "<cat-toy>" / initializer "toy", object
#    templates, AdamW, lr 5e-4 not scaled, constant schedule, seed 0:
#    - diffusers: the kit's bench_ti.py running TI_SCRIPT (stamps every optimiser step), under
#      `/usr/bin/time -v`; s/step = median of the step intervals after the first SKIP;
#    - invert: `invert train --save-every 0 --preview-every 0` (nothing is written inside the timed
#      window; the final embedding and checkpoint are written after the last step), under
#      `/usr/bin/time -v`; s/step = median of the intervals of the per-step `time` in OUT/log.jsonl
#      after the first SKIP, the same rule as bench_ti.py;
#    each preceded by the kit's idle check (wait_idle.sh);
# 4. prints one markdown table (speed-up = diffusers s/step / invert s/step; RSS ratio =
#    invert / diffusers; peak RSS of the whole process).
#
# Differences in the work per step, by design: diffusers runs the VAE encoder on every step
# (and loads/augments the PNG there); invert encodes each (image, flip) once before the first
# step and samples a latent from the cached posterior. diffusers keeps a gradient for the whole
# token-embedding table (vocab x width) and restores the other rows after each step; invert
# differentiates only the new vector(s).
#
# TI_SCRIPT is diffusers' examples/textual_inversion/textual_inversion.py, third-party
# (Apache-2.0) and in no wheel; it is never committed here. Get it with:
#   git clone https://github.com/huggingface/diffusers && git -C diffusers show \
#     58eb52c0803ea9af3abec60841c2a093bdf1f951:examples/textual_inversion/textual_inversion.py \
#     > /work/bench-data/textual_inversion.py
#   sha256 7577661c8a3d6c194abf1c12c58b5b790ce916d782a7d293c60f3b0672232933
#
# Env: BENCH_DATA (/work/bench-data), KIT (/work/shared/bench/diffusers-baseline),
#      PYTHON (/work/venv/bin/python), TI_SCRIPT ($BENCH_DATA/textual_inversion.py),
#      ROWS ("tiny:64:1:40 tiny:64:4:40 small:128:1:30 small:128:4:30 small:256:1:25 sd15:256:1:8:2"),
#      SKIP (5, default intervals dropped per row), WAIT_IDLE_MAX (90, idle wait before taking the
#      lock), ROW_IDLE_MAX (240, idle wait before each run, lock held), LOG_DIR (target/bench-train),
#      SKIP_DIFFUSERS=1 (invert only), SKIP_INVERT=1 (diffusers only), BUILD (1), CARGO_JOBS (2),
#      BIN_COPY ($BENCH_DATA/invert-bench-bin), LOCK (/tmp/invert-bench.lock; empty: no lock).
# "busy" is the share of the machine used by other processes: diffusers' is bench_ti.py's
# foreign_cpu_frac over the steady window, invert's is over the whole process (from /proc/stat).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_DATA="${BENCH_DATA:-/work/bench-data}"
KIT="${KIT:-/work/shared/bench/diffusers-baseline}"
PYTHON="${PYTHON:-/work/venv/bin/python}"
TI_SCRIPT="${TI_SCRIPT:-$BENCH_DATA/textual_inversion.py}"
ROWS="${ROWS:-tiny:64:1:40 tiny:64:4:40 small:128:1:30 small:128:4:30 small:256:1:25 sd15:256:1:8:2}"
SKIP="${SKIP:-5}"
WAIT_IDLE_MAX="${WAIT_IDLE_MAX:-90}"
ROW_IDLE_MAX="${ROW_IDLE_MAX:-240}"
LOG_DIR="${LOG_DIR:-$ROOT/target/bench-train}"
SKIP_DIFFUSERS="${SKIP_DIFFUSERS:-0}"
SKIP_INVERT="${SKIP_INVERT:-0}"
BUILD="${BUILD:-1}"
CARGO_JOBS="${CARGO_JOBS:-2}"
BIN_COPY="${BIN_COPY:-$BENCH_DATA/invert-bench-bin}"
LOCK="${LOCK-/tmp/invert-bench.lock}"
TOKEN="<cat-toy>"
INIT="toy"
LR="5e-4"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 DIFFUSERS_NO_ADVISORY_WARNINGS=1 TOKENIZERS_PARALLELISM=false

mkdir -p "$LOG_DIR"
LOG_DIR="$(cd "$LOG_DIR" && pwd)"

if [[ "$SKIP_DIFFUSERS" != 1 && ! -f "$TI_SCRIPT" ]]; then
    echo "error: $TI_SCRIPT is missing: diffusers' textual_inversion.py (see the header of $0 for how to get it)" >&2
    exit 1
fi

if [[ ! -x /usr/bin/time ]]; then
    echo "== installing GNU time (/usr/bin/time)" >&2
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get install -y time >/dev/null || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y time >/dev/null; }
fi

if [[ "$BUILD" == 1 ]]; then
    echo "== cargo build --release -p invert-cli" >&2
    (cd "$ROOT" && cargo build --release -j"$CARGO_JOBS" -p invert-cli) >&2
fi
cp "$ROOT/target/release/invert" "$BIN_COPY.tmp" && mv "$BIN_COPY.tmp" "$BIN_COPY"
BIN="$BIN_COPY"
echo "== invert binary: $BIN (sha256 $(sha256sum "$BIN" | cut -c1-16), git $(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- crates || echo '+dirty'))" >&2

for cfg in $(for r in $ROWS; do echo "${r%%:*}"; done | sort -u); do
    if [[ ! -f "$BENCH_DATA/$cfg/unet/diffusion_pytorch_model.safetensors" ]]; then
        echo "== making $BENCH_DATA/$cfg with the kit's make_models.py" >&2
        "$PYTHON" "$KIT/scripts/make_models.py" "$BENCH_DATA" \
            "$ROOT/crates/invert-model/assets/clip-tokenizer" "$cfg" >&2
    fi
done
# A model folder whose tokenizer/ holds only configs (scripts/make_random_sd15.py writes none):
# diffusers then cannot tokenize "toy" as one token. Use BENCH_DATA/CFG-ti instead: the same
# components (symlinks) with the kit's CLIP tokenizer (crates/invert-model/assets/clip-tokenizer).
model_dir() {
    local dir="$BENCH_DATA/$1"
    if [[ -f "$dir/tokenizer/tokenizer.json" || -f "$dir/tokenizer/vocab.json" ]]; then
        echo "$dir"; return
    fi
    local ti="$BENCH_DATA/$1-ti"
    if [[ ! -f "$ti/tokenizer/tokenizer.json" ]]; then
        echo "== making $ti: $dir's components + the CLIP tokenizer" >&2
        mkdir -p "$ti/tokenizer"
        for c in model_index.json scheduler text_encoder unet vae; do ln -sfn "$dir/$c" "$ti/$c"; done
        cp "$ROOT/crates/invert-model/assets/clip-tokenizer/"* "$ti/tokenizer/"
    fi
    echo "$ti"
}

for res in $(for r in $ROWS; do echo "$r" | cut -d: -f2; done | sort -un); do
    if [[ ! -f "$BENCH_DATA/images/$res/img3.png" ]]; then
        echo "== making $BENCH_DATA/images/$res with the kit's make_images.py" >&2
        "$PYTHON" "$KIT/scripts/make_images.py" "$BENCH_DATA/images" "$res" >&2
    fi
done

# Machine-wide busy CPU ticks (user+nice+system+irq+softirq+steal), as wait_idle.sh counts them.
busy_ticks() { read -r _ a b c _ _ f g h _ < /proc/stat; echo $((a + b + c + f + g + h)); }
# "h:mm:ss" or "m:ss.ss" from time -v to seconds.
wall_s() { awk -F: '{s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; print s}'; }
hz=$(getconf CLK_TCK)
ncpu=$(nproc)

echo "== idle check before taking the lock: $("$KIT/scripts/wait_idle.sh" "$WAIT_IDLE_MAX")" >&2
if [[ -n "$LOCK" ]]; then
    trap 'rm -f "$LOCK"' EXIT
    trap 'exit 130' INT TERM
    echo $$ > "$LOCK"
    echo "== holding $LOCK (pid $$)" >&2
fi
t_lock=$(date +%s)

table="| config | res | batch | steps (skip) | diffusers s/step | invert s/step | speed-up | diffusers peak RSS (MiB) | invert peak RSS (MiB) | RSS invert/diffusers | busy (diffusers / invert) |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"

for row in $ROWS; do
    IFS=: read -r cfg res bs steps skip <<< "$row"
    skip="${skip:-$SKIP}"
    tag="$cfg-r$res-b$bs"
    model=$(model_dir "$cfg")
    images="$BENCH_DATA/images/$res"

    # --- diffusers ---
    d_med="-"; d_rss="-"; d_busy="-"
    if [[ "$SKIP_DIFFUSERS" != 1 ]]; then
        echo "== diffusers $tag: $("$KIT/scripts/wait_idle.sh" "$ROW_IDLE_MAX")" >&2
        rm -rf "$LOG_DIR/out-diffusers-$tag"
        (cd "$LOG_DIR" && BENCH_SKIP="$skip" /usr/bin/time -v "$PYTHON" "$KIT/scripts/bench_ti.py" \
            "$LOG_DIR/diffusers-$tag.json" "$TI_SCRIPT" \
            --pretrained_model_name_or_path "$model" --train_data_dir "$images" \
            --learnable_property object --placeholder_token "$TOKEN" --initializer_token "$INIT" \
            --resolution "$res" --train_batch_size "$bs" --max_train_steps "$steps" \
            --learning_rate "$LR" --lr_warmup_steps 0 --seed 0 --mixed_precision no \
            --output_dir "$LOG_DIR/out-diffusers-$tag" > "$LOG_DIR/diffusers-$tag.log" 2>&1)
        read -r d_med d_busy d_n < <("$PYTHON" -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["steady_median_s"], r["foreign_cpu_frac"], r["steps"])' "$LOG_DIR/diffusers-$tag.json")
        d_rss=$(awk '/Maximum resident/ {printf "%.0f", $NF / 1024}' "$LOG_DIR/diffusers-$tag.log")
        echo "   diffusers $tag: $d_n steps, median $d_med s/step, peak RSS $d_rss MiB, busy $d_busy" >&2
    fi

    # --- invert ---
    i_med="-"; i_rss="-"; i_busy="-"
    if [[ "$SKIP_INVERT" != 1 ]]; then
        echo "== invert $tag: $("$KIT/scripts/wait_idle.sh" "$ROW_IDLE_MAX")" >&2
        out="$LOG_DIR/out-invert-$tag"
        log="$LOG_DIR/invert-$tag.log"
        rm -rf "$out"
        b0=$(busy_ticks)
        /usr/bin/time -v "$BIN" train --model "$model" --images "$images" \
            --token "$TOKEN" --init "$INIT" --property object --vectors 1 \
            --resolution "$res" --batch-size "$bs" --grad-accum 1 --steps "$steps" \
            --lr "$LR" --scale-lr false --lr-schedule constant --optimizer adamw --seed 0 \
            --save-every 0 --preview-every 0 --out "$out" > "$log" 2>&1
        b1=$(busy_ticks)
        wall=$(grep 'Elapsed (wall clock)' "$log" | awk '{print $NF}' | wall_s)
        user=$(awk '/User time/ {print $NF}' "$log"); sys=$(awk '/System time/ {print $NF}' "$log")
        i_rss=$(awk '/Maximum resident/ {printf "%.0f", $NF / 1024}' "$log")
        i_busy=$(awk -v b="$((b1 - b0))" -v hz="$hz" -v u="$user" -v s="$sys" -v w="$wall" -v n="$ncpu" \
            'BEGIN {f = (b / hz - u - s) / (w * n); if (f < 0) f = 0; printf "%.3f", f}')
        # Same rule as bench_ti.py: intervals between consecutive steps, the first `skip` dropped.
        read -r i_med i_first i_n < <("$PYTHON" - "$out/log.jsonl" "$skip" <<'PY'
import json, statistics, sys
t = [json.loads(l)["time"] for l in open(sys.argv[1]) if l.strip()]
skip = int(sys.argv[2])
d = [b - a for a, b in zip(t, t[1:])]
steady = d[skip:] if len(d) > skip + 2 else d
print(round(statistics.median(steady), 4), round(t[0], 3), len(t))
PY
)
        echo "   invert $tag: $i_n steps, median $i_med s/step (first step ${i_first} s after start of training), process $wall s, peak RSS $i_rss MiB, busy $i_busy" >&2
    fi

    speedup="-"; rss_ratio="-"
    [[ "$d_med" != "-" && "$i_med" != "-" ]] && speedup=$(awk -v a="$d_med" -v b="$i_med" 'BEGIN {printf "%.2fx", a / b}')
    [[ "$d_rss" != "-" && "$i_rss" != "-" ]] && rss_ratio=$(awk -v a="$i_rss" -v b="$d_rss" 'BEGIN {printf "%.2f", a / b}')
    table+="
| $cfg | $res | $bs | $steps ($skip) | $d_med | $i_med | $speedup | $d_rss | $i_rss | $rss_ratio | $d_busy / $i_busy |"
done

if [[ -n "$LOCK" ]]; then
    rm -f "$LOCK"
    echo "== released $LOCK after $(( $(date +%s) - t_lock )) s" >&2
fi

echo
echo "$table"
