#!/usr/bin/env python3
"""Checks that the bundled model (models/world, written by `invert pretrain`) is an ordinary
diffusers folder: it loads with `StableDiffusionPipeline.from_pretrained`, its tokenizer gives
invert's ids, and from the same starting latents diffusers and `invert generate` draw the same
pictures (DDIM, 25 steps, guidance 7.5).

    /path/to/venv/bin/python scripts/check_world_model.py [models/world] [target/release/invert]

Needs torch, diffusers, transformers, safetensors, numpy, pillow (PyPI). Prints the largest
per-pixel difference and exits non-zero above 3/255.
"""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from PIL import Image
from safetensors.torch import save_file

model = sys.argv[1] if len(sys.argv) > 1 else "models/world"
invert = sys.argv[2] if len(sys.argv) > 2 else "target/release/invert"
prompts = [
    "a photo of a large red circle at the top left on a white background",
    "a yellow triangle on a black background",
    "a photo of a small blue square at the bottom right",
]

pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, torch_dtype=torch.float32)
pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
pipe.set_progress_bar_config(disable=True)
print("loaded", model, "with diffusers: unet", sum(p.numel() for p in pipe.unet.parameters()),
      "params, text encoder", sum(p.numel() for p in pipe.text_encoder.parameters()),
      "vae", sum(p.numel() for p in pipe.vae.parameters()))
size = pipe.unet.config.sample_size * 2 ** (len(pipe.vae.config.block_out_channels) - 1)
shape = (4, pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
worst = 0
with tempfile.TemporaryDirectory() as tmp:
    for k, prompt in enumerate(prompts):
        latents = torch.randn(shape, generator=torch.Generator().manual_seed(k))
        path = Path(tmp) / f"latents{k}.safetensors"
        save_file({"latents": latents}, str(path))
        ours = pipe(prompt, height=size, width=size, num_inference_steps=25, guidance_scale=7.5,
                    latents=latents.clone(), num_images_per_prompt=4, output_type="np").images
        ours = (ours * 255).round().astype(np.int32)
        out = Path(tmp) / f"invert{k}"
        subprocess.run([invert, "generate", "--model", model, "--prompt", prompt, "--sampler", "ddim",
                        "--steps", "25", "--cfg", "7.5", "--images", "4", "--init-latents", str(path),
                        "--seed", "0", "--out", str(out)], check=True, capture_output=True)
        files = sorted(f for f in out.glob("*.png") if not f.name.startswith("grid"))
        theirs = np.stack([np.asarray(Image.open(f).convert("RGB"), dtype=np.int32) for f in files])
        diff = np.abs(ours - theirs)
        worst = max(worst, int(diff.max()))
        print(f"{prompt!r}: ids {pipe.tokenizer(prompt).input_ids}; max |diffusers - invert| = "
              f"{diff.max()}/255, mean {diff.mean():.3f}/255")
print(json.dumps({"max_pixel_difference": worst}))
sys.exit(0 if worst <= 3 else 1)
