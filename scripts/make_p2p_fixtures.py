#!/usr/bin/env python3
"""Generate the Prompt-to-Prompt parity fixture for invert-model's `prompt_to_prompt` test.

The reference is diffusers' community pipeline examples/community/pipeline_prompt2prompt.py
(`Prompt2PromptPipeline`), which is not part of the diffusers wheel. Fetch that file from the
huggingface/diffusers repository and pass its path; the fixture was made from commit
58eb52c0803ea9af3abec60841c2a093bdf1f951. Run from the repository root:

    /work/venv23/bin/python scripts/make_p2p_fixtures.py /tmp/pipeline_prompt2prompt.py

Builds Prompt2PromptPipeline from the tiny SD1 model (crates/invert-model/tests/fixtures/tiny-sd1,
fp16 variant files loaded as float32, the folder's PNDM scheduler) with the folder's own CLIP
tokenizer, no safety checker, 64x64 px (32x32 latents, so the U-Net's attention runs on 16x16
tokens: the reference's self-attention and local-blend resolution), 10 steps, guidance 7.5,
negative prompt "" (the reference's default), and one initial latent shared by every prompt of a
case (`latents=init.expand(n, ...)`, as the paper's notebooks do). Cases (cross_attention_kwargs
as `create_controller` reads them):

- `replace`: edit_type replace, n_cross_replace 0.8, n_self_replace 0.4;
- `refine`: edit_type refine (an added word), 0.8 / 0.4;
- `reweight`: edit_type reweight on two copies of one prompt, one word weighted 5, 0.8 / 0.4;
- `blend`: edit_type replace with local_blend_words (one word per prompt), 0.8 / 0.4, and the
  reference's `LocalBlend` class with threshold BLEND_THRESHOLD instead of its default 0.3
  (`create_controller` does not pass one): the tiny random model's cross-attention is so even
  that every cell is above 0.3 of the maximum (the mask would cover the whole image and the
  blend would change nothing), while 0.985 keeps about half of them (49% at the last step, as the
  script measures and checks: a mask keeping under 10% or over 90% would not test the blend);
- `learned`: edit_type replace, 0.8 / 0.4, after pipe.load_textual_inversion of
  embeddings/diffusers_single.safetensors (`<cat-toy>`, 1 vector, the swapped-in word) and
  embeddings/diffusers_multi.safetensors (`<multi>`, 3 vectors, after the swap: the reference
  finds word positions without expanding learned words, which only agrees with the expanded ids
  before the first multi-vector word, hence its place).

Writes crates/invert-model/tests/fixtures/p2p/tiny-sd1.safetensors:
    `init_latents`  F32 [1,4,32,32]   standard normals (torch.Generator().manual_seed(SEED))
    `{case}.image`  U8  [n,64,64,3]   (images * 255).round(), source first
    `{case}.latents` F32 [n-1,4,32,32] the edits' latents after the last step (the pipeline's
                                      `callback`, after the local blend), to show small effects
                                      exactly (the source's are left out for size)
and in the metadata `{case}.prompts` (JSON list), `{case}.kwargs` (JSON cross_attention_kwargs),
`blend.threshold`,
`{case}.embeddings`, the settings and versions.

CPU, float32, one thread. Re-running gives a byte-identical file (metadata keys sorted).
"""

import importlib.util
import json
import pathlib
import sys

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import diffusers
import transformers
from diffusers import PNDMScheduler
from transformers import CLIPTokenizer

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "crates/invert-model/tests/fixtures"
MODEL = FIXTURES / "tiny-sd1"
TOKENIZER = MODEL / "tokenizer"  # the model's own 1000-id CLIP BPE (scripts/tiny_clip_bpe.py)
EMBEDDINGS = ["diffusers_single.safetensors", "diffusers_multi.safetensors"]
OUT = FIXTURES / "p2p/tiny-sd1.safetensors"
SIZE_LIMIT = 350_000
STEPS = 10
GUIDANCE = 7.5
SIZE = 64
SEED = 2022
BLEND_THRESHOLD = 0.985

CASES = [
    ("replace", ["a photo of a cat on the grass", "a photo of a dog on the grass"],
     {"edit_type": "replace", "n_cross_replace": 0.8, "n_self_replace": 0.4}),
    ("refine", ["a house on a mountain", "a wooden house on a snowy mountain"],
     {"edit_type": "refine", "n_cross_replace": 0.8, "n_self_replace": 0.4}),
    ("reweight", ["a photo of a fluffy dog", "a photo of a fluffy dog"],
     {"edit_type": "reweight", "n_cross_replace": 0.8, "n_self_replace": 0.4,
      "equalizer_words": ["fluffy"], "equalizer_strengths": [5.0]}),
    ("blend", ["a cat sitting on a car", "a tiger sitting on a car"],
     {"edit_type": "replace", "n_cross_replace": 0.8, "n_self_replace": 0.4,
      "local_blend_words": ["cat", "tiger"]}),
    ("learned", ["a photo of a cat in the style of <multi>", "a photo of a <cat-toy> in the style of <multi>"],
     {"edit_type": "replace", "n_cross_replace": 0.8, "n_self_replace": 0.4}),
]


def check(cond, msg):
    if not cond:
        sys.exit(f"check failed: {msg}")


def canonical_metadata_order(path):
    """safetensors writes __metadata__ in hash-map order; rewrite the header with sorted keys."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", None)
    new = {"__metadata__": dict(sorted(meta.items()))} if meta else {}
    new.update(header)
    hb = json.dumps(new, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    path.write_bytes(len(hb).to_bytes(8, "little") + hb + raw[8 + n :])


def load_reference(path):
    spec = importlib.util.spec_from_file_location("pipeline_prompt2prompt", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    class LocalBlendAtThreshold(module.LocalBlend):
        coverage = []  # per call: the fraction of latent cells the edit keeps (mask 1)

        def __init__(self, *args, **kwargs):
            kwargs.setdefault("threshold", BLEND_THRESHOLD)
            super().__init__(*args, **kwargs)

        def __call__(self, x_t, attention_store):
            out = super().__call__(x_t, attention_store)
            # cells where the edit was replaced by the source are those outside the mask
            replaced = ((out[1:] - x_t[1:]).abs().amax(dim=1) > 0) & ((x_t[1:] - x_t[:1]).abs().amax(dim=1) > 0)
            LocalBlendAtThreshold.coverage.append(1.0 - replaced.float().mean().item())
            return out

    # create_controller looks LocalBlend up in the module at call time.
    module.LocalBlend = LocalBlendAtThreshold
    return module.Prompt2PromptPipeline, LocalBlendAtThreshold.coverage


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    Prompt2PromptPipeline, blend_coverage = load_reference(sys.argv[1])
    pipe = Prompt2PromptPipeline.from_pretrained(
        str(MODEL),
        variant="fp16",
        dtype=torch.float32,
        tokenizer=CLIPTokenizer.from_pretrained(str(TOKENIZER)),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).to("cpu")
    check(isinstance(pipe.scheduler, PNDMScheduler), f"scheduler is {type(pipe.scheduler).__name__}")
    pipe.set_progress_bar_config(disable=True)

    latent = SIZE // pipe.vae_scale_factor
    shape = (1, pipe.unet.config.in_channels, latent, latent)
    init = torch.randn(shape, generator=torch.Generator().manual_seed(SEED), dtype=torch.float32)
    gold = {"init_latents": init}
    meta = {
        "generator": "scripts/make_p2p_fixtures.py",
        "reference": "diffusers examples/community/pipeline_prompt2prompt.py at "
        "58eb52c0803ea9af3abec60841c2a093bdf1f951",
        "model": "tiny-sd1 (fp16 variant files loaded as float32)",
        "scheduler": "PNDMScheduler from tiny-sd1/scheduler",
        "steps": str(STEPS),
        "guidance_scale": str(GUIDANCE),
        "height": str(SIZE),
        "width": str(SIZE),
        "negative_prompt": "",
        "init_latents_seed": f"torch.Generator().manual_seed({SEED}), torch.randn {list(shape)}",
        "compute": "CPU float32, 1 thread",
        "versions": f"torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"transformers {transformers.__version__}, numpy {np.__version__}",
    }
    for name, prompts, kwargs in CASES:
        if name == "learned":
            for file in EMBEDDINGS:
                pipe.load_textual_inversion(str(FIXTURES / "embeddings" / file))
            meta[f"{name}.embeddings"] = ", ".join(EMBEDDINGS)
        n = len(prompts)
        final = {}

        def on_step(i, t, latents):
            final["latents"] = latents.detach().clone()
            final["steps"] = i + 1

        with torch.no_grad():
            out = pipe(
                prompt=prompts,
                height=SIZE,
                width=SIZE,
                num_inference_steps=STEPS,
                guidance_scale=GUIDANCE,
                latents=init.expand(n, *shape[1:]).clone(),
                output_type="np",
                cross_attention_kwargs=dict(kwargs),
                callback=on_step,
            )
        # PNDM (PLMS, skip_prk_steps) runs STEPS + 1 model evaluations: its second timestep repeats.
        check(final["steps"] == len(pipe.scheduler.timesteps), "callback ran every step")
        images = out.images
        check(images.shape == (n, SIZE, SIZE, 3), f"{name}: images {images.shape}")
        u8 = (images * 255).round().astype("uint8")
        gold[f"{name}.image"] = torch.from_numpy(u8)
        gold[f"{name}.latents"] = final["latents"][1:]
        meta[f"{name}.prompts"] = json.dumps(prompts)
        meta[f"{name}.kwargs"] = json.dumps(kwargs, sort_keys=True)
        if "local_blend_words" in kwargs:
            meta[f"{name}.threshold"] = str(BLEND_THRESHOLD)
            kept = blend_coverage[-1]
            print(f"  {name}: the mask keeps {kept:.0%} of the edit's latent cells at the last step")
            check(0.1 < kept < 0.9, f"{name}: a mask keeping {kept:.0%} of the cells does not test the blend")
        delta = np.abs(u8[0].astype(int) - u8[1].astype(int)).max()
        print(f"  {name}: source vs edit max |diff| {delta}/255")

    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sorted(gold.items())}, str(OUT), metadata=meta)
    canonical_metadata_order(OUT)
    with safe_open(str(OUT), "pt") as f:
        check(set(f.keys()) == set(gold) and f.metadata() == meta, "keys/metadata round trip")
        check(all(torch.equal(f.get_tensor(k), gold[k]) for k in gold), "tensors round trip")
    size = OUT.stat().st_size
    check(size < SIZE_LIMIT, f"{OUT} is {size} bytes (limit {SIZE_LIMIT})")
    print(f"  {OUT.relative_to(ROOT)}: {len(gold)} tensors, {size} bytes")


if __name__ == "__main__":
    main()
