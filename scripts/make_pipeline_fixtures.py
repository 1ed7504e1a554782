#!/usr/bin/env python3
"""Generate the end-to-end text-to-image fixture for invert-model's pipeline test (diffusers 0.42.1).

Run from the repository root with the reference venv:
    /work/venv/bin/python scripts/make_pipeline_fixtures.py

Builds diffusers' StableDiffusionPipeline from the tiny SD1 model
(crates/invert-model/tests/fixtures/tiny-sd1, fp16 variant files loaded as float32, the folder's
PNDM scheduler) with the folder's own tokenizer (tiny-sd1/tokenizer, scripts/tiny_clip_bpe.py),
no safety checker, and runs two cases, 64x64 px, 10 steps, guidance 7.5, with explicit initial latents
and output_type="np":

- `plain`: prompt PLAIN_PROMPT, negative NEGATIVE, num_images_per_prompt 2 (two different latents);
- `learned`: after pipe.load_textual_inversion of embeddings/diffusers_single.safetensors (`<cat-toy>`,
  1 vector) and embeddings/diffusers_multi.safetensors (`<multi>`, 3 vectors), prompt LEARNED_PROMPT,
  the same negative, 1 image.

Writes crates/invert-model/tests/fixtures/pipeline/tiny-sd1.safetensors with, for case c in
(plain, learned):
    `{c}.init_latents` F32 [n,4,32,32]  the `latents=` passed in (standard normals, torch.Generator)
    `{c}.latents`      F32 [n,4,32,32]  the latents after the last step (callback_on_step_end)
    `{c}.image`        U8  [n,64,64,3]  (images * 255).round() as diffusers' numpy_to_pil makes it
    `{c}.prompt_embeds`, `{c}.negative_prompt_embeds`  F32 [1,77,32]  pipe.encode_prompt's output
                                        for one image (every image of a case shares it; debugging)
and the prompts, settings and versions in the metadata (`{c}.prompt`, `{c}.negative_prompt`, ...).

CPU, float32, one thread. Re-running gives a byte-identical file (metadata keys sorted).
"""

import json
import pathlib
import sys

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import diffusers
import transformers
from diffusers import PNDMScheduler, StableDiffusionPipeline
from transformers import CLIPTokenizer

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "crates/invert-model/tests/fixtures"
MODEL = FIXTURES / "tiny-sd1"
TOKENIZER = MODEL / "tokenizer"  # the model's own 1000-id CLIP BPE (scripts/tiny_clip_bpe.py)
EMBEDDINGS = [FIXTURES / "embeddings/diffusers_single.safetensors", FIXTURES / "embeddings/diffusers_multi.safetensors"]
OUT = FIXTURES / "pipeline/tiny-sd1.safetensors"
SIZE_LIMIT = 200_000

PLAIN_PROMPT = "An oil painting of a toy in the style of Van Gogh"
LEARNED_PROMPT = "a photo of <cat-toy> in the style of <multi>"
NEGATIVE = "blurry, low quality"
STEPS = 10
GUIDANCE = 7.5
SIZE = 64


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


def build_pipeline():
    tokenizer = CLIPTokenizer.from_pretrained(str(TOKENIZER))
    pipe = StableDiffusionPipeline.from_pretrained(
        str(MODEL),
        variant="fp16",
        dtype=torch.float32,  # (older diffusers: torch_dtype)
        tokenizer=tokenizer,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    check(isinstance(pipe.scheduler, PNDMScheduler), f"scheduler is {type(pipe.scheduler).__name__}")
    check(pipe.unet.dtype == torch.float32 and pipe.vae.dtype == torch.float32, "float32 weights")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to("cpu")


def run_case(pipe, name, prompt, n, seed, gold, meta):
    shape = (n, pipe.unet.config.in_channels, SIZE // pipe.vae_scale_factor, SIZE // pipe.vae_scale_factor)
    init = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)

    final = {}

    def on_step_end(_pipe, i, t, kwargs):
        final["latents"] = kwargs["latents"].detach().clone()
        final["steps"] = i + 1
        return kwargs

    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(prompt, "cpu", 1, True, NEGATIVE)
        out = pipe(
            prompt=prompt,
            negative_prompt=NEGATIVE,
            num_images_per_prompt=n,
            height=SIZE,
            width=SIZE,
            num_inference_steps=STEPS,
            guidance_scale=GUIDANCE,
            latents=init.clone(),
            output_type="np",
            callback_on_step_end=on_step_end,
            callback_on_step_end_tensor_inputs=["latents"],
        )
    images = out.images  # float32 [n, H, W, 3] in [0, 1]
    check(images.shape == (n, SIZE, SIZE, 3) and images.dtype == np.float32, f"images {images.shape}")
    # PNDM (PLMS, skip_prk_steps) runs STEPS + 1 model evaluations: its second timestep repeats.
    check(final["steps"] == len(pipe.scheduler.timesteps), "callback ran every step")
    meta[f"{name}.timesteps"] = json.dumps(pipe.scheduler.timesteps.tolist())
    u8 = (images * 255).round().astype("uint8")  # diffusers' numpy_to_pil

    gold[f"{name}.init_latents"] = init
    gold[f"{name}.latents"] = final["latents"]
    gold[f"{name}.image"] = torch.from_numpy(u8)
    gold[f"{name}.prompt_embeds"] = cond
    gold[f"{name}.negative_prompt_embeds"] = uncond
    ids = pipe.tokenizer(pipe.maybe_convert_prompt(prompt, pipe.tokenizer), padding="max_length",
                         max_length=pipe.tokenizer.model_max_length, truncation=True).input_ids
    meta.update({
        f"{name}.prompt": prompt,
        f"{name}.negative_prompt": NEGATIVE,
        f"{name}.num_images": str(n),
        f"{name}.init_latents_seed": f"torch.Generator().manual_seed({seed}), torch.randn {list(shape)}",
        f"{name}.prompt_ids": json.dumps(ids[: ids.index(pipe.tokenizer.eos_token_id) + 1]),
        f"{name}.image_float_range": f"{float(images.min()):.6f}..{float(images.max()):.6f}",
    })
    print(f"  {name}: {n} image(s), mean pixel {u8.mean():.2f}, latents std {final['latents'].std():.4f}")


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    pipe = build_pipeline()
    gold = {}
    meta = {
        "generator": "scripts/make_pipeline_fixtures.py",
        "model": "tiny-sd1 (fp16 variant files loaded as float32)",
        "scheduler": "PNDMScheduler from tiny-sd1/scheduler",
        "steps": str(STEPS),
        "guidance_scale": str(GUIDANCE),
        "height": str(SIZE),
        "width": str(SIZE),
        "tokenizer": "tiny-sd1/tokenizer via transformers CLIPTokenizer",
        "compute": "CPU float32, 1 thread",
        "versions": f"torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"transformers {transformers.__version__}, numpy {np.__version__}",
    }
    run_case(pipe, "plain", PLAIN_PROMPT, 2, 1234, gold, meta)

    for path in EMBEDDINGS:
        pipe.load_textual_inversion(str(path))
    meta["learned.embeddings"] = ", ".join(p.name for p in EMBEDDINGS)
    run_case(pipe, "learned", LEARNED_PROMPT, 1, 5678, gold, meta)

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
