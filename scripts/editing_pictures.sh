#!/usr/bin/env bash
# The README's editing pictures (docs/editing/), made with the bundled model (models/world):
#   1. learns <hatched-style> from datasets/hatched-style, as scripts/quickstart.sh does;
#   2. style transfer by image-to-image: a picture of the world (datasets/outlined-square/01.png,
#      drawn plain) redrawn "in the style of <hatched-style>" (`generate --init-image`), next to
#      the initialiser word's ("painting") result at the same strength and seed;
#   3. Prompt-to-Prompt with the learned word: a generated picture and its edit that adds
#      "in the style of <hatched-style>" (`edit --mode refine`), same seed, so the composition stays;
#   4. the same edit on the real picture (`edit --image`, DDIM inversion refined by --null-text).
# Every picture is 32x32 (the bundled model's size). About 3 minutes on a 2-core CPU after the
# build. Writes OUT (default out/editing) and copies the pictures the README shows to docs/editing/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/editing}
DOCS=docs/editing
cargo build --release -p invert-cli
BIN=target/release/invert
PHOTO=datasets/outlined-square/01.png
CAPTION="$(cat datasets/outlined-square/01.txt)"
COMMON=(--seed 7 --steps 25 --cfg 3)

"$BIN" train --config configs/train/world-style.toml --images datasets/hatched-style \
  --token "<hatched-style>" --init painting --out "$OUT/train" --overwrite
EMB="$OUT/train/learned_embeds.safetensors"

rm -rf "$OUT/img2img" "$OUT/p2p" "$OUT/photo-edit"
for pair in painting:init "<hatched-style>:learned"; do
  "$BIN" generate --embedding "$EMB" --init-image "$PHOTO" --strength 0.7 --sampler ddim \
    --prompt "a square $CAPTION in the style of ${pair%:*}" "${COMMON[@]}" --out "$OUT/img2img/${pair#*:}"
done
"$BIN" edit --embedding "$EMB" --prompt "a large blue circle on a white background" \
  --edit "a large blue circle on a white background in the style of <hatched-style>" \
  --mode refine --sampler ddim "${COMMON[@]}" --out "$OUT/p2p"
"$BIN" edit --embedding "$EMB" --image "$PHOTO" --null-text --prompt "a square $CAPTION" \
  --edit "a square $CAPTION in the style of <hatched-style>" --mode refine "${COMMON[@]}" \
  --out "$OUT/photo-edit"

mkdir -p "$DOCS"
cp "$PHOTO" "$DOCS/photo.png"
cp "$OUT/img2img/init/00000-7.png" "$DOCS/img2img-painting.png"
cp "$OUT/img2img/learned/00000-7.png" "$DOCS/img2img-hatched-style.png"
cp "$OUT/p2p/00000-7-strip.png" "$DOCS/p2p-strip.png"
cp "$OUT"/photo-edit/*-strip.png "$DOCS/photo-edit-strip.png"
echo "wrote $DOCS/: photo.png img2img-painting.png img2img-hatched-style.png p2p-strip.png photo-edit-strip.png"
