#!/usr/bin/env python3
"""Full-size SDXL 1.0 base key lists and parameter counts (issue 20), from the published configs
in configs/sdxl-base/ with diffusers and transformers, on the meta device (no weights, no memory,
nothing downloaded).

Writes crates/invert-model/tests/fixtures/keys/sdxl-keys.unet.txt and sdxl-keys.text_encoder_2.txt
in the format of the sd15 lists (component, name, shape, dtype; `#` headers). SDXL's text_encoder
(CLIP ViT-L/14) and VAE have SD 1.5's keys and shapes, which this script checks instead of writing
them again. Text-encoder names carry the `text_model.` prefix, as published checkpoints do.

The counts are checked against the published ones: U-Net 2,567,463,684, text_encoder_2
694,659,840, text_encoder 123,060,480, VAE 83,653,863.

Run: python scripts/make_sdxl_key_lists.py   (torch, diffusers, transformers)
"""
import json
import pathlib

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

ROOT = pathlib.Path(__file__).resolve().parent.parent
CFG = ROOT / "configs/sdxl-base"
KEYS = ROOT / "crates/invert-model/tests/fixtures/keys"

PUBLISHED = {
    "unet": 2_567_463_684,
    "text_encoder_2": 694_659_840,
    "text_encoder": 123_060_480,
    "vae": 83_653_863,
}


def config(component):
    return json.loads((CFG / component / "config.json").read_text())


def text_config(component):
    cfg = {k: v for k, v in config(component).items() if k not in ("architectures", "torch_dtype")}
    return CLIPTextConfig(**cfg)


def rows(component, module):
    out = []
    for name, t in module.state_dict().items():
        if name.endswith("position_ids"):
            continue  # a buffer, not a parameter
        if component.startswith("text_encoder") and not name.startswith(("text_model.", "text_projection.")):
            name = "text_model." + name  # transformers 5 drops the prefix published files have
        out.append((name, list(t.shape)))
    return sorted(out)


def sd15_list(component):
    lines = (KEYS / f"sd15-keys.{component}.txt").read_text().splitlines()
    return sorted((c[1], json.loads(c[2])) for c in (l.split("\t") for l in lines if l and not l.startswith("#")))


def main():
    with torch.device("meta"):
        models = {
            "unet": UNet2DConditionModel.from_config(config("unet")),
            "text_encoder_2": CLIPTextModelWithProjection(text_config("text_encoder_2")),
            "text_encoder": CLIPTextModel(text_config("text_encoder")),
            "vae": AutoencoderKL.from_config(config("vae")),
        }
    for name, model in models.items():
        n = sum(p.numel() for p in model.parameters())
        assert n == PUBLISHED[name], f"{name}: {n} parameters, published {PUBLISHED[name]}"
        print(f"{name}: {n:,} parameters (as published)")
    for name in ("text_encoder", "vae"):
        assert rows(name, models[name]) == sd15_list(name), f"{name} differs from SD 1.5's"
    for name in ("unet", "text_encoder_2"):
        r = rows(name, models[name])
        head = [
            "# sdxl-base: tensor\tname\tshape\tdtype (diffusers/transformers on the meta device, configs/sdxl-base)",
            f"# {name}: {len(r)} tensors, {sum(torch.Size(s).numel() for _, s in r)} parameters",
        ]
        text = "\n".join(head + [f"{name}\t{k}\t{s}\tF32" for k, s in r]) + "\n"
        (KEYS / f"sdxl-keys.{name}.txt").write_text(text)
        print(f"wrote sdxl-keys.{name}.txt ({len(r)} tensors, {len(text)} bytes)")


if __name__ == "__main__":
    main()
