#!/usr/bin/env python3
"""Golden values for SDXL's `UNet2DConditionModel` options (issue 20): `addition_embed_type:
"text_time"` (`add_time_proj` + `add_embedding`), `transformer_layers_per_block` per block, a
first block without attention, linear projections and `upcast_attention: null`, as in
stabilityai/stable-diffusion-xl-base-1.0's unet/config.json, at a tiny size with random weights.

Writes, under crates/invert-model/tests/fixtures/:
    tiny-sdxl-unet/                 diffusers component folder (config.json, f32 safetensors)
    tiny-sdxl-unet-ldm.safetensors  the same weights under the single-file (LDM) names,
                                    `model.diffusion_model.*` with `label_emb.0.{0,2}`; checked by
                                    converting back with diffusers' `convert_ldm_unet_checkpoint`
    golden/tiny-sdxl-unet.safetensors  inputs (sample, timesteps, context, text_embeds, time_ids)
                                    and diffusers' noise prediction

Run: python scripts/make_sdxl_unet_fixtures.py   (torch, diffusers, safetensors; nothing downloaded)
"""
import json
import pathlib
import sys

import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders import single_file_utils as sfu
from safetensors.torch import save_file

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from make_fixtures import unet_to_ldm  # noqa: E402  (the LDM key map, with SDXL's label_emb)

FIX = ROOT / "crates/invert-model/tests/fixtures"
OUT = FIX / "tiny-sdxl-unet"
POOLED = 24  # the second text encoder's projection_dim (1280 in SDXL)
TIME_DIM = 8  # addition_time_embed_dim (256 in SDXL)
CONTEXT = 16 + 32  # both encoders' widths concatenated (768 + 1280 in SDXL)

torch.set_num_threads(1)


def main():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),  # head counts, diffusers' naming (SDXL: [5, 10, 20])
        transformer_layers_per_block=(1, 2),
        use_linear_projection=True,
        cross_attention_dim=CONTEXT,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_DIM,
        projection_class_embeddings_input_dim=POOLED + 6 * TIME_DIM,
        norm_num_groups=4,
        upcast_attention=None,  # SDXL's config.json says null
    ).eval()
    with torch.no_grad():
        for p in unet.parameters():  # larger than the init so every layer matters
            p.add_(torch.randn_like(p) * 0.05)
    OUT.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(OUT, safe_serialization=True)
    cfg = json.loads((OUT / "config.json").read_text())
    assert cfg["upcast_attention"] is None and cfg["addition_embed_type"] == "text_time"

    sd = {k: v.contiguous() for k, v in unet.state_dict().items()}
    ldm = unet_to_ldm(unet, sd)
    back = sfu.convert_ldm_unet_checkpoint(dict(ldm), dict(unet.config))
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd), "LDM round trip"
    assert "model.diffusion_model.label_emb.0.0.weight" in ldm
    save_file(ldm, str(FIX / "tiny-sdxl-unet-ldm.safetensors"))

    g = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 4, 8, 8, generator=g)
    timesteps = torch.tensor([999.0, 17.0])
    context = torch.randn(2, 7, CONTEXT, generator=g)
    text_embeds = torch.randn(2, POOLED, generator=g)
    # (original h, w, crop top, left, target h, w), as `_get_add_time_ids` makes them
    time_ids = torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0], [768.0, 512.0, 32.0, 16.0, 1024.0, 1024.0]])
    with torch.no_grad():
        out = unet(
            sample,
            timesteps,
            encoder_hidden_states=context,
            added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids},
        ).sample
        # The addition matters: another pooled embedding changes the prediction.
        other = unet(
            sample,
            timesteps,
            encoder_hidden_states=context,
            added_cond_kwargs={"text_embeds": -text_embeds, "time_ids": time_ids},
        ).sample
        assert (out - other).abs().max() > 1e-2
    golden = {
        "sample": sample,
        "timesteps": timesteps,
        "context": context,
        "text_embeds": text_embeds,
        "time_ids": time_ids,
        "noise_pred": out.contiguous(),
    }
    save_file(golden, str(FIX / "golden/tiny-sdxl-unet.safetensors"))
    n = sum(p.numel() for p in unet.parameters())
    print(f"wrote {OUT}, tiny-sdxl-unet-ldm.safetensors and golden/tiny-sdxl-unet.safetensors ({n} parameters)")


if __name__ == "__main__":
    main()
