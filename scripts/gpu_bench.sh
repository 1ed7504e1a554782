#!/usr/bin/env bash
# One-shot GPU benchmark: invert (wgpu, f32 and f16) against diffusers (PyTorch on the same
# device, bf16 and fp16 with SDPA) on the SD 1.5 architecture, in one command under 10 minutes.
#
# usage (on the GPU machine, from the repository root, after scripts/gpu_bench_pack.sh was run
# where the repository was built; the GPU machine needs no network, Rust or diffusers):
#   scripts/gpu_bench.sh
# on a machine without a GPU, to test the script end to end on a software adapter (lavapipe):
#   GPU_BENCH_TINY=1 DEVICE=wgpu PYTHON=<python with torch> scripts/gpu_bench.sh
#
# What it does, each run under a time limit so the table always comes out:
# 1. makes the machine ready from PACK (scripts/gpu_bench_pack.sh): the Vulkan loader (.deb,
#    unpacked only if the machine lacks libvulkan.so.1; needs root), NVIDIA's Vulkan driver file
#    where the driver is mounted under /usr/local/nvidia, diffusers (+ importlib_metadata) on
#    PYTHONPATH if python lacks it, the invert release binary, diffusers' textual_inversion.py;
# 2. `invert model info` (the adapters wgpu sees, and what --device chooses);
# 3. a random-weight model from CONFIGS with scripts/make_random_sd15.py (4.3 GB for SD 1.5) and
#    the CLIP tokenizer of crates/invert-model/assets, and 4 training pictures;
# 4. the FLOPs of a training step and of a generation (scripts/gpu_bench/flops.py) and PyTorch's
#    matmul rate per dtype: the FLOP floor;
# 5. textual inversion at RES px for each batch in BATCHES: invert (`invert train`, each of
#    INVERT_PRECISIONS) and diffusers' textual_inversion.py, unmodified (each of
#    DIFFUSERS_PRECISIONS as --mixed_precision): median s/step after SKIP, peak GPU memory;
# 6. DDIM text-to-image, GEN_STEPS steps at RES px: invert and diffusers' StableDiffusionPipeline,
#    GEN_IMAGES images one at a time (the first pays for kernel compilation; the median of the
#    others is reported);
# 7. parity: one image (PARITY_RES px, DDIM PARITY_STEPS steps, seed 0) from invert on DEVICE in
#    each precision against invert on the CPU in f32;
# 8. prints the table (scripts/gpu_bench/table.py) and, where $OUT is set (the device tool),
#    writes $OUT/gpu_bench.md and $OUT/gpu_bench_logs.tar.xz.
#
# Env: PACK (.gpu-bench), WORK (/tmp/gpu-bench), PYTHON (python3), BIN (the pack's invert),
#      TI_SCRIPT (PACK/textual_inversion.py), DEVICE (auto; invert's --device), CONFIGS
#      (configs/sd15), RES (512), BATCHES ("1 4"), TRAIN_STEPS (15), SKIP (3), GEN_STEPS (50),
#      GEN_IMAGES (2), INVERT_PRECISIONS ("f32 f16"), DIFFUSERS_PRECISIONS ("bf16 fp16"; "no"
#      is fp32), PARITY_RES (256, or RES if smaller), PARITY_STEPS (10), DEADLINE_S (570: no run goes past this
#      many seconds after the start), RUN_TIMEOUT (240, seconds per run).
#      GPU_BENCH_TINY=1 changes the defaults to a seconds-long check: CONFIGS configs/test/tiny,
#      RES 64, TRAIN_STEPS 6, SKIP 2, GEN_STEPS 4, PARITY_STEPS 3, DIFFUSERS_PRECISIONS "no bf16"
#      (fp16 training needs CUDA).
set -uo pipefail # no -e: a failed run is a cell of the table, not the end of the benchmark

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TINY="${GPU_BENCH_TINY:-0}"
PACK="${PACK:-$ROOT/.gpu-bench}"
WORK="${WORK:-/tmp/gpu-bench}"
PYTHON="${PYTHON:-python3}"
BIN="${BIN:-}"
TI_SCRIPT="${TI_SCRIPT:-$PACK/textual_inversion.py}"
DEVICE="${DEVICE:-auto}"
if [[ "$TINY" == 1 ]]; then
    CONFIGS="${CONFIGS:-$ROOT/configs/test/tiny}"
    RES="${RES:-64}" TRAIN_STEPS="${TRAIN_STEPS:-6}" SKIP="${SKIP:-2}" GEN_STEPS="${GEN_STEPS:-4}"
    PARITY_STEPS="${PARITY_STEPS:-3}" DIFFUSERS_PRECISIONS="${DIFFUSERS_PRECISIONS:-no bf16}"
fi
CONFIGS="${CONFIGS:-$ROOT/configs/sd15}"
RES="${RES:-512}"
BATCHES="${BATCHES:-1 4}"
TRAIN_STEPS="${TRAIN_STEPS:-15}"
SKIP="${SKIP:-3}"
GEN_STEPS="${GEN_STEPS:-50}"
GEN_IMAGES="${GEN_IMAGES:-2}"
INVERT_PRECISIONS="${INVERT_PRECISIONS:-f32 f16}"
DIFFUSERS_PRECISIONS="${DIFFUSERS_PRECISIONS:-bf16 fp16}"
PARITY_RES="${PARITY_RES:-$((RES < 256 ? RES : 256))}" # the CPU side must fit the time
PARITY_STEPS="${PARITY_STEPS:-10}"
DEADLINE_S="${DEADLINE_S:-570}"
RUN_TIMEOUT="${RUN_TIMEOUT:-240}"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 DIFFUSERS_NO_ADVISORY_WARNINGS=1 \
    TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

T0=$SECONDS
log() { echo "== [$((SECONDS - T0)) s] $*" >&2; }
RESULTS="$WORK/results"
LOGS="$WORK/logs"
mkdir -p "$RESULTS" "$LOGS" "$WORK/out"
rm -rf "${RESULTS:?}"/* "${LOGS:?}"/* "$WORK/out"/*

# --- 1. the machine ---
if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1'; then
    if compgen -G "$PACK/debs/*.deb" >/dev/null; then
        log "no Vulkan loader: unpacking $PACK/debs into /"
        for f in "$PACK"/debs/*.deb; do dpkg -x "$f" /; done
        ldconfig
    else
        log "warning: no Vulkan loader (libvulkan.so.1) and no $PACK/debs: wgpu will find no GPU"
    fi
fi
nvidia_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [[ -z "${VK_DRIVER_FILES:-}" && -f "$nvidia_icd" ]] &&
    ! compgen -G "/usr/share/vulkan/icd.d/nvidia*" >/dev/null &&
    ! compgen -G "/etc/vulkan/icd.d/nvidia*" >/dev/null; then
    log "using NVIDIA's Vulkan driver file $nvidia_icd"
    export VK_DRIVER_FILES="$nvidia_icd"
    export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi
if ! "$PYTHON" -c 'import diffusers' 2>/dev/null; then
    if [[ -f "$PACK/python-site.tar.xz" ]]; then
        log "diffusers from $PACK/python-site.tar.xz"
        mkdir -p "$WORK/site"
        "$PYTHON" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' \
            "$PACK/python-site.tar.xz" "$WORK/site"
        export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
    else
        log "warning: $PYTHON has no diffusers and $PACK has none: the diffusers columns will be empty"
    fi
fi
if [[ -z "$BIN" ]]; then
    BIN="$WORK/invert"
    [[ -f "$PACK/invert.xz" ]] || { echo "error: no $PACK/invert.xz: run scripts/gpu_bench_pack.sh first (or set BIN)" >&2; exit 1; }
    "$PYTHON" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
        "$PACK/invert.xz" "$BIN"
    chmod +x "$BIN"
fi
COMMIT="$(cat "$PACK/invert.commit" 2>/dev/null || (cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null) || echo '?')"

# --- 2. what invert sees ---
"$BIN" model info --model "$ROOT/crates/invert-model/tests/fixtures/tiny-sd1" --device "$DEVICE" \
    >"$LOGS/model-info.log" 2>&1
grep -E '^(adapters:| {13} )' "$LOGS/model-info.log" >&2
INVERT_DEVICE="$(grep -m1 '^device: ' "$LOGS/model-info.log" | cut -c9-)"
log "invert --device $DEVICE: ${INVERT_DEVICE:-unknown (see $LOGS/model-info.log)}"
if command -v nvidia-smi >/dev/null; then
    GPU="$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1 | sed 's/, / (driver /; s/$/)/')"
else
    GPU="a machine without nvidia-smi"
fi

# --- 3. model and pictures ---
MODEL="$WORK/model-$(basename "$CONFIGS")"
log "model $MODEL from $CONFIGS"
"$PYTHON" "$ROOT/scripts/make_random_sd15.py" "$MODEL" --configs "$CONFIGS" --threads "$(nproc)" \
    >"$LOGS/make-model.log" 2>&1 || { tail -20 "$LOGS/make-model.log" >&2; echo "error: could not make the model" >&2; exit 1; }
mkdir -p "$MODEL/tokenizer"
cp "$ROOT"/crates/invert-model/assets/clip-tokenizer/*.json "$MODEL/tokenizer/"
IMAGES="$WORK/images/$RES"
"$PYTHON" "$ROOT/scripts/gpu_bench/images.py" "$IMAGES" "$RES"

# One run: NAME COMMAND... under the time limits, its log in LOGS/NAME.log, its peak GPU memory
# in RESULTS/NAME.mem and, when it has no result, why in RESULTS/NAME.status.
run() {
    local name="$1"; shift
    local left=$((DEADLINE_S - (SECONDS - T0)))
    if ((left < 15)); then
        echo "not run (time)" >"$RESULTS/$name.status"
        log "$name: not run, out of time"
        return 1
    fi
    local limit=$((left < RUN_TIMEOUT ? left : RUN_TIMEOUT)) base="" poll=""
    if command -v nvidia-smi >/dev/null; then
        base="$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)"
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$LOGS/$name.smi" 2>/dev/null &
        poll=$!
    fi
    log "$name (limit $limit s)"
    local t=$SECONDS rc=0
    timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1 || rc=$?
    if [[ -n "$poll" ]]; then
        kill "$poll" 2>/dev/null; wait "$poll" 2>/dev/null
        awk -v b="$base" 'BEGIN {m = b} $1 + 0 > m {m = $1 + 0} END {print m - b}' "$LOGS/$name.smi" >"$RESULTS/$name.mem"
    else
        echo "n/a" >"$RESULTS/$name.mem"
    fi
    if ((rc == 124)); then
        echo "timed out ($limit s)" >"$RESULTS/$name.status"
    elif ((rc != 0)); then
        echo "failed (exit $rc)" >"$RESULTS/$name.status"
        tail -5 "$LOGS/$name.log" | sed "s/^/   $name: /" >&2
    fi
    log "$name: exit $rc after $((SECONDS - t)) s"
    return "$rc"
}

# --- 4. FLOP floor ---
# shellcheck disable=SC2086
run flops "$PYTHON" "$ROOT/scripts/gpu_bench/flops.py" "$RESULTS/flops.json" "$MODEL" "$RES" "$GEN_STEPS" $BATCHES

# --- 5. textual inversion ---
train_invert() { # PRECISION BATCH
    local name="train-invert-$1-b$2"
    run "$name" "$BIN" train --model "$MODEL" --images "$IMAGES" --token "<cat-toy>" --init toy \
        --property object --vectors 1 --resolution "$RES" --batch-size "$2" --grad-accum 1 \
        --steps "$TRAIN_STEPS" --lr 5e-4 --scale-lr false --lr-schedule constant --optimizer adamw \
        --seed 0 --save-every 0 --preview-every 0 --device "$DEVICE" --precision "$1" \
        --out "$WORK/out/$name" || return
    # The same rule as diffusers_ti.py: median of the step intervals after the first SKIP.
    "$PYTHON" - "$WORK/out/$name/log.jsonl" "$SKIP" >"$RESULTS/$name.json" <<'PY'
import json, statistics, sys
t = [json.loads(l)["time"] for l in open(sys.argv[1]) if l.strip()]
skip = int(sys.argv[2])
d = [b - a for a, b in zip(t, t[1:])]
steady = d[skip:] if len(d) > skip + 2 else d
print(json.dumps(dict(tool="invert", steps=len(t), first_step_at_s=round(t[0], 3),
                      step_intervals_s=[round(x, 4) for x in d],
                      s_per_step=round(statistics.median(steady), 4) if steady else None)))
PY
    [[ -s "$RESULTS/$name.json" ]] || echo "no step times" >"$RESULTS/$name.status"
}
train_diffusers() { # PRECISION BATCH
    local name="train-diffusers-$1-b$2"
    [[ -f "$TI_SCRIPT" ]] || { echo "no textual_inversion.py" >"$RESULTS/$name.status"; return 1; }
    run "$name" env BENCH_SKIP="$SKIP" "$PYTHON" "$ROOT/scripts/gpu_bench/diffusers_ti.py" \
        "$RESULTS/$name.json" "$TI_SCRIPT" --pretrained_model_name_or_path "$MODEL" \
        --train_data_dir "$IMAGES" --learnable_property object --placeholder_token "<cat-toy>" \
        --initializer_token toy --resolution "$RES" --train_batch_size "$2" \
        --max_train_steps "$TRAIN_STEPS" --learning_rate 5e-4 --lr_warmup_steps 0 --seed 0 \
        --mixed_precision "$1" --output_dir "$WORK/out/$name"
}
for b in $BATCHES; do
    for p in $INVERT_PRECISIONS; do train_invert "$p" "$b"; done
    for p in $DIFFUSERS_PRECISIONS; do train_diffusers "$p" "$b"; done
done

# --- 6. generation ---
gen_invert() { # NAME DEVICE PRECISION SIZE STEPS IMAGES
    local name="$1" out="$WORK/out/$1"
    run "$name" "$BIN" generate --model "$MODEL" --prompt "a red toy on a blue table" \
        --sampler ddim --steps "$5" --cfg 7.5 --seed 0 -n "$6" --batch-size 1 --width "$4" \
        --height "$4" --device "$2" --precision "$3" --no-grid --out "$out" || return
    # "batch of 1 image(s) in X s" per image: the first is cold, the median of the rest is kept.
    "$PYTHON" - "$LOGS/$name.log" >"$RESULTS/$name.json" <<'PY'
import json, re, statistics, sys
t = [float(x) for x in re.findall(r"batch of 1 image\(s\) in ([0-9.]+) s", open(sys.argv[1]).read())]
print(json.dumps(dict(tool="invert", times_s=t, s_per_image=statistics.median(t[1:] or t) if t else None)))
PY
}
for p in $INVERT_PRECISIONS; do gen_invert "gen-invert-$p" "$DEVICE" "$p" "$RES" "$GEN_STEPS" "$GEN_IMAGES"; done
for p in $DIFFUSERS_PRECISIONS; do
    dt="$p"; [[ "$p" == no ]] && dt=fp32
    run "gen-diffusers-$p" "$PYTHON" "$ROOT/scripts/gpu_bench/diffusers_gen.py" \
        "$RESULTS/gen-diffusers-$p.json" "$MODEL" "$RES" "$GEN_STEPS" "$dt" "$GEN_IMAGES"
done

# --- 7. parity: the same image on DEVICE and on the CPU ---
if gen_invert parity-cpu cpu f32 "$PARITY_RES" "$PARITY_STEPS" 1; then
    ref="$(ls "$WORK"/out/parity-cpu/*.png | head -1)"
    for p in $INVERT_PRECISIONS; do
        gen_invert "parity-$p" "$DEVICE" "$p" "$PARITY_RES" "$PARITY_STEPS" 1 &&
            "$PYTHON" "$ROOT/scripts/gpu_bench/compare.py" "$ref" "$(ls "$WORK/out/parity-$p"/*.png | head -1)" \
                >"$RESULTS/parity-$p.cmp"
    done
else
    cp "$RESULTS/parity-cpu.status" "$RESULTS/parity.status" 2>/dev/null
fi

# --- 8. the table ---
"$PYTHON" - "$RESULTS" <<PY
import json, pathlib, sys
r = pathlib.Path(sys.argv[1])
runs = {}
for p in "$INVERT_PRECISIONS".split():
    c = r / f"parity-{p}.cmp"
    s = r / f"parity-{p}.status"
    if c.is_file():
        runs[f"{'$DEVICE'} {p}"] = json.loads(c.read_text())
    elif s.is_file():
        runs[f"{'$DEVICE'} {p}"] = s.read_text().strip()
if runs:
    (r / "parity.json").write_text(json.dumps(dict(res=$PARITY_RES, steps=$PARITY_STEPS, seed=0, runs=runs)))
try:
    import torch
    tv, td = torch.__version__, (torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
except Exception as e:
    tv, td = f"unavailable ({e})", "-"
try:
    import diffusers
    dv = diffusers.__version__
except Exception as e:
    dv = f"unavailable ({e})"
import datetime
(r / "meta.json").write_text(json.dumps(dict(
    gpu="""$GPU""", invert_device="""$INVERT_DEVICE""", commit="$COMMIT", torch=tv, torch_device=td,
    diffusers=dv, date=datetime.date.today().isoformat(), model="$(basename "$CONFIGS")",
    res=$RES, train_steps=$TRAIN_STEPS, skip=$SKIP, gen_steps=$GEN_STEPS,
    batches=[int(b) for b in "$BATCHES".split()],
    invert_precisions="$INVERT_PRECISIONS".split(), diffusers_precisions="$DIFFUSERS_PRECISIONS".split())))
PY
"$PYTHON" "$ROOT/scripts/gpu_bench/table.py" "$WORK" | tee "$WORK/table.md"
log "done in $((SECONDS - T0)) s"
if [[ -n "${OUT:-}" && -d "${OUT:-}" ]]; then
    cp "$WORK/table.md" "$OUT/gpu_bench.md"
    tar -C "$WORK" -cJf "$OUT/gpu_bench_logs.tar.xz" logs results
fi
