#!/usr/bin/env bash
# `invert train` on a folder of ordinary photos, through every training option, then
# `invert generate` with the learned words. A smoke run of the whole product on real-world files
# (different sizes and aspect ratios, grayscale, JPEG and PNG, a caption sidecar, a bad file).
#
# usage: scripts/train_on_photos.sh [PHOTOS_DIR]
#
# PHOTOS_DIR defaults to $WORK/photos, filled on first use with six public-domain / CC0 photos
# from the scikit-image wheel (PyPI; `pip download` needs the package registry, nothing else):
# astronaut.png (512x512, NASA), chelsea.png (451x300 cat), coffee.png (600x400),
# rocket.jpg (427x640 JPEG, portrait), motorcycle_left.png (741x500), camera.png (512x512 grayscale).
#
# Env: MODEL (crates/invert-model/tests/fixtures/tiny-sd1), STEPS (40), WORK (target/photos-run),
#      BUILD (1), PIP (pip3).
# Prints one line per run: options, steps, first/last loss, |v*|, files written, seconds; exits
# non-zero at the first run that fails or writes an unreadable embedding.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODEL="${MODEL:-$ROOT/crates/invert-model/tests/fixtures/tiny-sd1}"
STEPS="${STEPS:-40}"
WORK="${WORK:-$ROOT/target/photos-run}"
BUILD="${BUILD:-1}"
PIP="${PIP:-pip3}"
BIN="$ROOT/target/release/invert"
PHOTOS="${1:-$WORK/photos}"

if [[ "$BUILD" == 1 ]]; then
    (cd "$ROOT" && cargo build --release -p invert-cli) >&2
fi

if [[ ! -d "$PHOTOS" ]]; then
    echo "== fetching six photos from the scikit-image wheel into $PHOTOS" >&2
    dl="$WORK/dl"
    mkdir -p "$dl" "$PHOTOS"
    "$PIP" download --no-deps --quiet scikit-image==0.26.0 -d "$dl"
    for f in astronaut.png chelsea.png coffee.png rocket.jpg motorcycle_left.png camera.png; do
        unzip -o -q -j "$dl"/scikit_image-*.whl "skimage/data/$f" -d "$PHOTOS"
    done
fi

# A copy with captions, a custom template file and one unreadable file for --skip-bad.
DATA="$WORK/data"
rm -rf "$DATA" "$WORK/runs"
mkdir -p "$DATA" "$WORK/runs"
cp "$PHOTOS"/* "$DATA/"
echo "a tabby cat lying on a couch" >"$DATA/chelsea.txt"
echo "a cup of coffee on a table" >"$DATA/coffee.txt"
echo "this is not an image" >"$DATA/notes.jpg"
printf '%s\n' "a photo of {}" "a photo of {}, {caption}" "a close-up photo of {}" >"$WORK/templates.txt"

# One run: its name, then its options (together the runs use every flag of `invert train`).
train_run() {
    local name="$1"
    shift
    local out="$WORK/runs/$name" start end losses files
    start=$(date +%s.%N)
    "$BIN" train --model "$MODEL" --images "$DATA" --token "<$name>" --steps "$STEPS" --out "$out" \
        "$@" >"$WORK/runs/$name.log" 2>&1 ||
        { echo "FAILED: $name (log: $WORK/runs/$name.log)" >&2; tail -5 "$WORK/runs/$name.log" >&2; exit 1; }
    end=$(date +%s.%N)
    "$BIN" embedding inspect "$out/learned_embeds.safetensors" --model "$MODEL" >"$WORK/runs/$name.inspect" ||
        { echo "FAILED: the embedding of $name does not read back" >&2; exit 1; }
    losses=$(python3 -c "
import json
rows = [json.loads(l)['loss'] for l in open('$out/log.jsonl')]
k = max(1, len(rows) // 4)
print(f\"{sum(rows[:k]) / k:.4f} -> {sum(rows[-k:]) / k:.4f}\")")
    files=$(cd "$out" && ls | tr '\n' ' ')
    printf '| %s | `%s` | %s | %s | %s | %.1f |\n' "$name" "$*" "$STEPS" "$losses" "$files" \
        "$(python3 -c "print($end - $start)")"
}

printf '| run | options | steps | mean loss, first -> last quarter | files | s |\n|---|---|---:|---|---|---:|\n'
train_run object-default --property object --skip-bad
train_run object-captions --property object --templates "$WORK/templates.txt" --vectors 2 \
    --init "tabby cat" --crop random --skip-bad --preview-every 20 \
    --preview-prompt "a photo of <object-captions> on the moon" --save-every 10
train_run style-sgd --property style --optimizer sgd --lr "0.005:10, 1e-3:20, 1e-4" --grad-accum 2 \
    --batch-size 2 --scale-lr true --no-flip --skip-bad
train_run style-adamw --property style --init random --lr-schedule cosine --warmup-steps 5 \
    --weight-decay 0 --max-grad-norm 1 --min-snr-gamma 5 --norm-guard 2 --clip-skip 2 --seed 7 --skip-bad
train_run object-warmup --property object --lr-schedule constant_with_warmup --warmup-steps 10 \
    --resolution 64 --skip-bad
train_run object-bf16 --config "$ROOT/configs/train/sd1-object.toml" --precision bf16 \
    --gradient-checkpointing --resolution 64 --save-every 20 --preview-every 0 --skip-bad

# Resume: half the steps, then --resume to the full count.
out="$WORK/runs/resumed"
"$BIN" train --model "$MODEL" --images "$DATA" --token "<resumed>" --steps $((STEPS / 2)) --out "$out" --skip-bad \
    >"$WORK/runs/resumed.log" 2>&1
"$BIN" train --resume "$out" --steps "$STEPS" >>"$WORK/runs/resumed.log" 2>&1
echo "resume: $(wc -l <"$out/log.jsonl") log lines after --resume to $STEPS steps"

# Generation with two learned words in one prompt.
"$BIN" generate --model "$MODEL" \
    --embedding "$WORK/runs/object-default/learned_embeds.safetensors" \
    --embedding "$WORK/runs/style-adamw/learned_embeds.safetensors" \
    --prompt "a photo of <object-default> in the style of <style-adamw>" \
    --steps 10 --seed 1 -n 2 --out "$WORK/generated" >"$WORK/generate.log" 2>&1 ||
    { echo "FAILED: generate (log: $WORK/generate.log)" >&2; exit 1; }
echo "generate: $(ls "$WORK/generated" | tr '\n' ' ')"
