#!/usr/bin/env python3
"""Reference numbers of the paper's CLIP metrics (rinongal/textual_inversion
`evaluation/clip_eval.py`) on the tiny random CLIP of scripts/make_clip_fixtures.py, for
crates/invert-cli/tests/eval_clip.rs (`invert eval clip` against them, within 1e-4).

usage (from the repo root, after scripts/make_clip_fixtures.py):
    /work/venv23/bin/python scripts/make_clip_metric_fixtures.py

Writes crates/invert-eval/tests/fixtures/clip_metrics.json.

The definitions, as clip_eval.py's `CLIPEvaluator`:
- features: `get_image_features` / `get_text_features`, each row divided by its L2 norm;
- image similarity: `(src @ gen.T).mean()`, src = the reference (training) images squashed to
  256x256 with antialiased bicubic (the paper's data loader: PIL bicubic; here torchvision's
  uint8 antialiased bicubic, the kernel invert implements bit-exactly and which follows PIL's),
  gen = the generated images as they are; both through `CLIPImageProcessor`;
- text similarity: `(text @ gen.T).mean()` for the prompt with the learned word removed;
- "mean embedding" reading: cosine between the mean normalised embeddings.
Generated and reference images are both crates/invert-model/tests/fixtures/clip/images/*.png.
"""
import glob
import json
import os

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF
from transformers import CLIPModel, CLIPTokenizer
from transformers.models.clip.image_processing_clip import CLIPImageProcessor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIP = os.path.join(ROOT, "crates/invert-model/tests/fixtures/clip")
OUT = os.path.join(ROOT, "crates/invert-eval/tests/fixtures/clip_metrics.json")
PROMPT = "a photo of <cat-toy> on the moon"
TEXT = "a photo of on the moon"  # PROMPT without the learned word, spaces collapsed


def main():
    torch.set_num_threads(1)
    folder = os.path.join(CLIP, "tiny-clip")
    model = CLIPModel.from_pretrained(folder, torch_dtype=torch.float32).eval()
    processor = CLIPImageProcessor.from_pretrained(folder)
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    paths = sorted(glob.glob(os.path.join(CLIP, "images", "*.png")))
    images = [Image.open(p).convert("RGB") for p in paths]
    squashed = []
    for im in images:
        t = TF.pil_to_tensor(im)  # uint8 [3, h, w]
        t = TF.resize(t, [256, 256], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        squashed.append(t)

    def features(batch):
        with torch.no_grad():
            pixels = processor(images=batch, return_tensors="pt").pixel_values
            f = model.get_image_features(pixel_values=pixels)
            f = getattr(f, "pooler_output", f)
        return f / f.norm(dim=-1, keepdim=True)

    gen = features(images)
    src = features(squashed)
    with torch.no_grad():
        ids = tokenizer([TEXT], padding="max_length", max_length=77, return_tensors="pt").input_ids
        t = model.get_text_features(input_ids=ids)
        t = getattr(t, "pooler_output", t)
    t = t / t.norm(dim=-1, keepdim=True)

    def cos(a, b):
        return float((a @ b) / (a.norm() * b.norm()))

    numbers = {
        "prompt": PROMPT,
        "text": TEXT,
        "images": [os.path.basename(p) for p in paths],
        "image_similarity": float((src @ gen.T).mean()),
        "text_similarity": float((t @ gen.T).mean()),
        "image_similarity_mean_embedding": cos(src.mean(0), gen.mean(0)),
        "text_similarity_mean_embedding": cos(t[0], gen.mean(0)),
        "made_by": "scripts/make_clip_metric_fixtures.py (torch %s, transformers %s)"
        % (torch.__version__, __import__("transformers").__version__),
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(numbers, f, indent=2)
        f.write("\n")
    print(json.dumps(numbers, indent=2))


if __name__ == "__main__":
    main()
