#!/usr/bin/env python3
"""How much does a world model's prediction depend on each word of the prompt?

For a diffusers folder written by `invert pretrain` (default models/world), predicts the clean
latent x0 from the same 16 noise latents at a few timesteps for prompts that differ in one
captioned attribute ("a large red circle at the top left on a white background" with the
colour, shape, position or background changed), and prints the variance of x0 across the
attribute's values. Next to it, the same variance of the data itself (the mean latent of the
pictures with each value), from `--latents` (a pretraining work folder's latents.f32) and
`--scenes` (the scenes of those latents as `invert world sample --seed 1145652806 --count N`
prints them), when given.

A model that reads the attribute from its prompt shows a variance near the data's at t = 999,
where the noisy latent holds nothing of the picture; 0.0000 means the word is ignored. This is
the measurement behind docs/WORLD.md "Why the text encoder is trained first".

    python scripts/world_text_dependence.py [models/world] [--latents F --scenes F]

Needs torch, diffusers, transformers, numpy (PyPI).
"""
import argparse

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

TEMPLATE = "a large {colour} {shape} at the {position} on a {background} background"
BASE = dict(colour="red", shape="circle", position="top left", background="white")
VALUES = dict(
    colour=["red", "green", "blue"],
    shape=["circle", "square", "triangle"],
    position=["top left", "top right", "bottom left", "bottom right"],
    background=["white", "black", "blue"],
)


def model_variances(folder, timesteps):
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    unet, te, tok, sch = pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.scheduler
    v_pred = sch.config.prediction_type == "v_prediction"
    side = unet.config.sample_size
    noise = torch.randn(16, unet.config.in_channels, side, side, generator=torch.Generator().manual_seed(0))

    def encode(prompt):
        ids = tok([prompt] * len(noise), padding="max_length", max_length=tok.model_max_length,
                  truncation=True, return_tensors="pt").input_ids
        return te(ids)[0]

    rows = {}
    with torch.no_grad():
        for t in timesteps:
            a, s = sch.alphas_cumprod[t].sqrt(), (1 - sch.alphas_cumprod[t]).sqrt()
            for attr, values in VALUES.items():
                x0s = []
                for v in values:
                    out = unet(noise, t, encode(TEMPLATE.format(**{**BASE, attr: v}))).sample
                    x0s.append(a * noise - s * out if v_pred else (noise - s * out) / a)
                x0s = torch.stack(x0s)
                rows.setdefault(attr, {})[t] = ((x0s - x0s.mean(0, keepdim=True)) ** 2).mean().item()
    return rows, pipe.vae.config.scaling_factor


def data_variances(latents_path, scenes_path, scaling):
    scenes = []
    for line in open(scenes_path):
        desc = line.split("|")[0].split(": ", 1)[1]
        parts = [p.strip() for p in desc.split(",")]
        words = parts[0].split()
        scenes.append(dict(size=words[0], colour=words[1], shape=words[2],
                           position=" ".join(words[3:]), background=parts[1].split()[0]))
    lat = np.fromfile(latents_path, dtype=np.float32)
    lat = lat.reshape(len(scenes), -1) * scaling
    base = dict(BASE, size="large")
    out = {}
    for attr, values in VALUES.items():
        means = []
        for v in values:
            want = {**base, attr: v}
            keep = np.array([all(s[k] == w for k, w in want.items()) for s in scenes])
            means.append(lat[keep].mean(0))
        means = np.stack(means)
        out[attr] = float(((means - means.mean(0)) ** 2).mean())
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default="models/world")
    ap.add_argument("--latents")
    ap.add_argument("--scenes")
    args = ap.parse_args()
    timesteps = [999, 800, 600]
    rows, scaling = model_variances(args.model, timesteps)
    data = data_variances(args.latents, args.scenes, scaling) if args.latents and args.scenes else {}
    print("| attribute | " + " | ".join(f"t = {t}" for t in timesteps) + (" | data |" if data else " |"))
    print("|---|" + "---:|" * (len(timesteps) + bool(data)))
    for attr, by_t in rows.items():
        cells = [f"{by_t[t]:.4f}" for t in timesteps] + ([f"{data[attr]:.4f}"] if data else [])
        print(f"| {attr} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
