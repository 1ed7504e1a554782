#!/usr/bin/env bash
# Smoke test of the wgpu backend: `invert generate` and `invert train` on the tiny test model
# with `--device wgpu`, compared with the CPU (`flex`) backend.
#
# usage: scripts/wgpu_smoke.sh
#
# Builds `invert` (the default features include wgpu; BUILD=0 skips it), then:
# 1. generates one 64x64 image with the same seed on cpu and on wgpu, in f32 and f16, and prints
#    the largest and mean per-pixel difference to the cpu f32 image (invert's noise generator is
#    backend-independent, so the images must agree up to arithmetic rounding);
# 2. trains TRAIN_STEPS steps on wgpu and on cpu from the same seed and prints both loss curves.
# On a machine without a GPU, wgpu picks a software adapter (Mesa llvmpipe through GL/EGL,
# which deadlocked in wgpu-hal 30's GLES backend here; or Mesa lavapipe, Debian package
# mesa-vulkan-drivers, which works): slow, but the same code path as a GPU.
#
# Env: BUILD (1), WORK (target/wgpu-smoke), MODEL (crates/invert-model/tests/fixtures/tiny-sd1),
#      PYTHON (python3; needs Pillow for the image comparison), BIN (target/release/invert),
#      STEPS (3, denoising steps), TRAIN_STEPS (3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${BUILD:-1}"
WORK="${WORK:-$ROOT/target/wgpu-smoke}"
MODEL="${MODEL:-$ROOT/crates/invert-model/tests/fixtures/tiny-sd1}"
STEPS="${STEPS:-3}"
TRAIN_STEPS="${TRAIN_STEPS:-3}"
BIN="${BIN:-$ROOT/target/release/invert}"
PYTHON="${PYTHON:-python3}"

if [[ "$BUILD" == 1 ]]; then
    (cd "$ROOT" && cargo build --release -p invert-cli) >&2
fi
rm -rf "$WORK"
mkdir -p "$WORK"

gen() { # device precision
    local out="$WORK/gen-$1-$2"
    "$BIN" generate --model "$MODEL" --prompt "a red toy on a blue table" --steps "$STEPS" --seed 3 \
        --device "$1" --precision "$2" --out "$out" >"$out.log" 2>&1 ||
        { echo "FAILED: generate on $1 $2" >&2; tail -5 "$out.log" >&2; exit 1; }
    echo "$out/00000-3.png"
}

ref=$(gen cpu f32)
echo "| device | precision | time | max |diff| to cpu f32 | mean |diff| |"
echo "|---|---|---|---:|---:|"
echo "| cpu | f32 | $(grep -o 'image(s) in [0-9.]* s' "$WORK/gen-cpu-f32.log" | awk '{print $3}') s | (reference) | |"
for run in "wgpu f32" "wgpu f16"; do
    set -- $run
    img=$(gen "$1" "$2")
    t=$(grep -o 'image(s) in [0-9.]* s' "$WORK/gen-$1-$2.log" | awk '{print $3}')
    "$PYTHON" - "$ref" "$img" "$1" "$2" "$t" <<'PY'
import sys
from PIL import Image
a = Image.open(sys.argv[1]).convert("RGB").tobytes()
b = Image.open(sys.argv[2]).convert("RGB").tobytes()
d = [abs(x - y) for x, y in zip(a, b)]
print(f"| {sys.argv[3]} | {sys.argv[4]} | {sys.argv[5]} s | {max(d)}/255 | {sum(d) / len(d):.3f}/255 |")
PY
done

mkdir -p "$WORK/images"
"$PYTHON" -c "
from PIL import Image, ImageDraw
for i, c in enumerate([(200, 30, 30), (30, 160, 60), (40, 60, 200)]):
    im = Image.new('RGB', (64, 64), (230, 230, 230))
    ImageDraw.Draw(im).ellipse((12 + 4 * i, 14, 50, 52), fill=c)
    im.save('$WORK/images/img%d.png' % i)
"
for device in cpu wgpu; do
    "$BIN" train --model "$MODEL" --images "$WORK/images" --token "<smoke>" --steps "$TRAIN_STEPS" --seed 1 \
        --device "$device" --preview-every 0 --save-every 0 --out "$WORK/train-$device" \
        >"$WORK/train-$device.log" 2>&1 ||
        { echo "FAILED: train on $device" >&2; tail -5 "$WORK/train-$device.log" >&2; exit 1; }
    echo "train on $device: losses $(python3 -c "
import json
print(' '.join(f\"{json.loads(l)['loss']:.5f}\" for l in open('$WORK/train-$device/log.jsonl')))")"
done
