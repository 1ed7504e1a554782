#!/usr/bin/env bash
# The README's first command. Learns the word <hatched-style> from the five pictures of
# datasets/hatched-style (and their captions) with the bundled model (models/world), then draws
# it in prompts it was never trained on, next to what the initialiser word alone gives. Writes
# out/quickstart/grid.png (one row per prompt: 6 seeds each). About 3 minutes on a 2-core CPU
# after the build. Guidance 3: the bundled model over-saturates its colours at SD's usual 7.5.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/quickstart}
cargo build --release -p invert-cli
BIN=target/release/invert
"$BIN" train --config configs/train/world-style.toml --images datasets/hatched-style \
  --token "<hatched-style>" --init painting --out "$OUT/train" --overwrite
mkdir -p "$OUT"
cat > "$OUT/prompts.txt" <<'PROMPTS'
a blue circle in the style of painting
a painting in the style of <hatched-style>
a blue circle in the style of <hatched-style>
a red square at the top left in the style of <hatched-style>
a small yellow triangle on a black background in the style of <hatched-style>
PROMPTS
rm -rf "$OUT/images"
"$BIN" generate --embedding "$OUT/train/learned_embeds.safetensors" --prompts "$OUT/prompts.txt" \
  --images 6 --batch-size 6 --seed 7 --steps 25 --cfg 3 --sampler ddim --out "$OUT/images"
cp "$OUT"/images/grid-*.png "$OUT/grid.png"
echo "rows: $(tr '\n' '|' < "$OUT/prompts.txt")"
echo "wrote $OUT/grid.png"
