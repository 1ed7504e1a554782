#!/usr/bin/env python3
"""Golden values for `CLIPTextModelWithProjection` (SDXL's second text encoder), issue 20.

Writes crates/invert-model/tests/fixtures/tiny-sdxl-text-encoder-2/ (a transformers component
folder: config.json, model.safetensors, random weights, gelu like OpenCLIP ViT-bigG/14) and
crates/invert-model/tests/fixtures/golden/tiny-sdxl-text-encoder-2.safetensors with, for a batch
of token ids, what SDXL's pipeline takes from this encoder (diffusers'
`StableDiffusionXLPipeline.encode_prompt`): `hidden_states[-2]` (no final LayerNorm) and
`text_embeds`. A second batch holds a learned word (an id past the vocabulary, its row appended
with `resize_token_embeddings`): transformers pools at `argmax(ids)` there (the learned word's
position, since the config has the legacy eos_token_id 2); the reference pools at the first
end-of-text id instead, what SDXL means, computed from the same model's final-LayerNorm'd last
layer and `text_projection`.

Run: python scripts/make_sdxl_text_fixtures.py   (torch, transformers 4.4x or 5.x, safetensors)
"""
import json
import pathlib

import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIX = ROOT / "crates/invert-model/tests/fixtures"
OUT = FIX / "tiny-sdxl-text-encoder-2"
EOS = 999  # the end-of-text id of this tiny vocabulary (49407 in CLIP's)


def main():
    torch.manual_seed(0)
    cfg = CLIPTextConfig(
        vocab_size=1000,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=16,
        hidden_act="gelu",
        projection_dim=24,
        bos_token_id=0,
        eos_token_id=2,  # SDXL's text_encoder_2/config.json carries the legacy value
        pad_token_id=1,
    )
    model = CLIPTextModelWithProjection(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():  # larger than the init's 0.02 so every layer matters
            p.add_(torch.randn_like(p) * 0.05)
    OUT.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(OUT, safe_serialization=True)

    # Row 0 pads with id 0 after the end of text (SDXL's second tokenizer); row 1 with EOS.
    ids = torch.tensor(
        [
            [998, 17, 401, 52, EOS, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            [998, 305, 7, 88, 123, 900, 11, EOS, EOS, EOS, EOS, EOS, EOS, EOS, EOS, EOS],
        ]
    )
    golden = {"ids": ids.to(torch.int64)}
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        golden["penultimate"] = out.hidden_states[-2].contiguous()
        golden["text_embeds"] = out.text_embeds.contiguous()
        # The pooled row is the first EOS here, as argmax(ids) finds it for plain text.
        first = (ids == EOS).int().argmax(-1)
        pooled = out.last_hidden_state[torch.arange(2), first]
        assert torch.allclose(model.text_projection(pooled), out.text_embeds, atol=1e-6)

        # A learned word: id 1000, one row appended.
        extra = torch.randn(1, cfg.hidden_size) * 0.5
        learned = CLIPTextModelWithProjection(cfg).eval()
        learned.load_state_dict(model.state_dict())
        learned.resize_token_embeddings(1001)
        learned.text_model.embeddings.token_embedding.weight[1000] = extra[0]
        ids2 = torch.tensor([[998, 17, 1000, 52, EOS, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
        out2 = learned(ids2, output_hidden_states=True)
        first2 = (ids2 == EOS).int().argmax(-1)
        golden["learned.ids"] = ids2.to(torch.int64)
        golden["learned.extra"] = extra.contiguous()
        golden["learned.penultimate"] = out2.hidden_states[-2].contiguous()
        golden["learned.text_embeds"] = learned.text_projection(
            out2.last_hidden_state[torch.arange(1), first2]
        ).contiguous()
        # transformers' own pooling picks the learned word's position (argmax): not SDXL's.
        assert not torch.allclose(out2.text_embeds, golden["learned.text_embeds"], atol=1e-3)
    save_file(golden, str(FIX / "golden/tiny-sdxl-text-encoder-2.safetensors"))
    cfg_json = json.loads((OUT / "config.json").read_text())
    print("wrote", OUT, "and golden/tiny-sdxl-text-encoder-2.safetensors;", cfg_json["architectures"])


if __name__ == "__main__":
    main()
