#!/usr/bin/env python3
"""Generate the DDIM-inversion fixture for invert-model's ddim_inversion test (diffusers 0.42.1).

Run from the repository root with the reference venv, after make_img2img_fixtures.py (it reuses
its init picture):
    /work/venv23/bin/python scripts/make_ddim_inversion_fixtures.py

DDIM inversion of a real picture as Mokady et al. ("Null-text inversion", 2022) run it, with
diffusers' pieces on the tiny SD1 model (crates/invert-model/tests/fixtures/tiny-sd1, fp16 files
loaded as float32, the folder's own tokenizer):

1. the picture `pipeline/img2img-init.png` (32x24) through `VaeImageProcessor.preprocess`, encoded
   with the VAE, the posterior mean (not a sample: inversion is deterministic) times scaling_factor;
2. `DDIMInverseScheduler.from_config(folder's PNDM config)`, STEPS steps; at each timestep t (lowest
   first) the U-Net's noise prediction for the prompt PROMPT at t, guidance 1 (no unconditional
   pass), and `inverse_scheduler.step(noise_pred, t, latents)`;
3. the reconstruction: `StableDiffusionPipeline` with `DDIMScheduler.from_config(same config)`,
   the same prompt, STEPS steps, guidance 1, `latents=` the last inverted latents.

Writes crates/invert-model/tests/fixtures/pipeline/tiny-sd1-ddim-inversion.safetensors with
    `latents.0`           F32 [1,4,12,16]  the scaled posterior mean (step 0, the clean picture)
    `latents.{k}`         F32 [1,4,12,16]  after inverse step k = 1..STEPS
    `reconstruction`      U8  [1,24,32,3]  the regenerated picture, (images * 255).round()
and the settings, the inverse timesteps, the reconstruction's MSE and PSNR against the picture
(in [0, 1], before rounding) and the versions in the metadata. The same again with the scheduler
config's prediction_type set to v_prediction (SD 2.x 768-v models and the bundled model predict
v), under keys prefixed `v.` (`v.latents.{k}`, `v.reconstruction`, `v.timesteps`, ...).

CPU, float32, one thread. Re-running gives a byte-identical file (metadata keys sorted).
"""

import json
import math
import pathlib
import sys

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

import diffusers
import transformers
from diffusers import DDIMInverseScheduler, DDIMScheduler, StableDiffusionPipeline
from transformers import CLIPTokenizer

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from make_img2img_fixtures import canonical_metadata_order, check  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "crates/invert-model/tests/fixtures"
MODEL = FIXTURES / "tiny-sd1"
TOKENIZER = MODEL / "tokenizer"  # the model's own 1000-id CLIP BPE (scripts/tiny_clip_bpe.py)
INIT_PNG = FIXTURES / "pipeline/img2img-init.png"
OUT = FIXTURES / "pipeline/tiny-sd1-ddim-inversion.safetensors"
SIZE_LIMIT = 60_000

PROMPT = "a red disc and a white square on a blue ground"
STEPS = 5


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(str(TOKENIZER))
    pipe = StableDiffusionPipeline.from_pretrained(
        str(MODEL),
        variant="fp16",
        dtype=torch.float32,
        tokenizer=tokenizer,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).to("cpu")
    pipe.set_progress_bar_config(disable=True)
    base_config = dict(pipe.scheduler.config)
    gold, meta = {}, {
        "generator": "scripts/make_ddim_inversion_fixtures.py",
        "model": "tiny-sd1 (fp16 variant files loaded as float32)",
        "image": INIT_PNG.name,
        "prompt": PROMPT,
        "steps": str(STEPS),
        "guidance_scale": "1.0",
        "tokenizer": "tiny-sd1/tokenizer via transformers CLIPTokenizer",
        "compute": "CPU float32, 1 thread",
        "versions": f"torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"transformers {transformers.__version__}, numpy {np.__version__}",
    }
    # The model's own epsilon-prediction config, and the same with prediction_type v_prediction
    # (SD 2.x 768-v and the bundled model; the random U-Net's output read as v), keys prefixed "v.".
    for prefix, prediction in (("", "epsilon"), ("v.", "v_prediction")):
        config = dict(base_config, prediction_type=prediction)
        inverse = DDIMInverseScheduler.from_config(config)
        inverse.set_timesteps(STEPS)
        with torch.no_grad():
            image = Image.open(INIT_PNG).convert("RGB")
            pixels = pipe.image_processor.preprocess(image)
            latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
            gold[f"{prefix}latents.0"] = latents.clone()
            prompt_embeds, _ = pipe.encode_prompt(PROMPT, "cpu", 1, False)
            for k, t in enumerate(inverse.timesteps, start=1):
                noise_pred = pipe.unet(latents, t, encoder_hidden_states=prompt_embeds).sample
                latents = inverse.step(noise_pred, t, latents).prev_sample
                gold[f"{prefix}latents.{k}"] = latents.clone()

            pipe.scheduler = DDIMScheduler.from_config(config)
            check(pipe.scheduler.config.prediction_type == prediction, "reconstruction scheduler")
            out = pipe(
                prompt=PROMPT,
                num_inference_steps=STEPS,
                guidance_scale=1.0,
                latents=latents.clone(),
                height=pixels.shape[2],
                width=pixels.shape[3],
                output_type="np",
            )
        images = out.images
        check(images.shape == (1, pixels.shape[2], pixels.shape[3], 3), f"images {images.shape}")
        original = (pixels[0].permute(1, 2, 0).numpy() / 2 + 0.5).clip(0, 1)
        mse = float(((images[0] - original) ** 2).mean())
        gold[f"{prefix}reconstruction"] = torch.from_numpy((images * 255).round().astype("uint8"))
        meta.update({
            f"{prefix}inverse_scheduler": f"DDIMInverseScheduler.from_config(tiny-sd1 PNDM config, {prediction})",
            f"{prefix}reconstruction_scheduler": f"DDIMScheduler.from_config(tiny-sd1 PNDM config, {prediction})",
            f"{prefix}timesteps": json.dumps(inverse.timesteps.tolist()),
            f"{prefix}reconstruction.mse": repr(mse),
            f"{prefix}reconstruction.psnr": repr(10 * math.log10(1 / mse)),
        })
        print(f"  {prediction}: timesteps {inverse.timesteps.tolist()}, reconstruction MSE {mse:.5f}, "
              f"PSNR {10 * math.log10(1 / mse):.2f} dB")
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
