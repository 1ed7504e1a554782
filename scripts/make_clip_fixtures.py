#!/usr/bin/env python3
"""A tiny random CLIP (transformers `CLIPModel`) and its references, for invert's CLIP parity tests
(issue 21, item 1): image and text features, and `CLIPImageProcessor`'s preprocessing.

usage (from the repo root):
    /work/venv23/bin/python scripts/make_clip_fixtures.py

Writes crates/invert-model/tests/fixtures/clip/ (removing it first):
    tiny-clip/                        transformers folder: config.json, model.safetensors (F16),
                                      preprocessor_config.json
                                      (shortest edge 32, crop 32), tokenizer (vocab.json + merges.txt,
                                      tokenizer_config.json, special_tokens_map.json: byte copies of
                                      tiny-sdxl/tokenizer, 1000 ids, bos 998, eos 999, pads 999)
    tiny-clip-open_clip.safetensors   the same tensors with OpenAI / open_clip names (visual.conv1,
                                      visual.transformer.resblocks.N.attn.in_proj_weight fused q;k;v,
                                      visual.proj and text_projection transposed, logit_scale, ...)
    images/*.png                      small synthetic RGB images of odd sizes (inputs)
    crop224/*.png                     transformers' CLIPImageProcessor (OpenAI config: shortest edge 224,
                                      bicubic, centre crop 224) on each image, before rescale/normalise
                                      (uint8, lossless PNG)
    golden.safetensors                inputs and reference outputs (F32; ids I64)
and rewrites its own section of tests/fixtures/README.md (between this script's markers).

Weights are stored as F16 (half the bytes); every reference is computed from those F16 values upcast
to F32, as transformers' `from_pretrained(torch_dtype=float32)` loads them. CPU, float32, one thread,
deterministic (make_fixtures.py's settings; torch.manual_seed(0) before the model, fixed seeds for
every input). Nothing is downloaded. The script aborts on any failed check.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402  (offline env, one thread, deterministic algorithms)

import json  # noqa: E402
import shutil  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer  # noqa: E402
from transformers.models.clip.image_processing_clip import CLIPImageProcessor  # noqa: E402
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil  # noqa: E402

from make_fixtures import VERSIONS, check  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "crates/invert-model/tests/fixtures")
OUT = os.path.join(FIX, "clip")
FOLDER = os.path.join(OUT, "tiny-clip")
OPEN_CLIP = os.path.join(OUT, "tiny-clip-open_clip.safetensors")
FULL_SIZE = os.path.join(OUT, "full-size-keys.txt")
GOLDEN = os.path.join(OUT, "golden.safetensors")
TOKENIZER_SRC = os.path.join(FIX, "tiny-sdxl", "tokenizer")
README = os.path.join(FIX, "README.md")
SIZE_LIMIT = 350_000  # bytes, the whole clip/ folder (tests/fixtures/ must stay under 30 MB)
BEGIN = "<!-- begin: scripts/make_clip_fixtures.py (generated, do not edit) -->"
END = "<!-- end: scripts/make_clip_fixtures.py -->"

VOCAB, BOS, EOS = 1000, 998, 999
PROMPTS = ["a photo of a cat", "a drawing of a dog on the beach"]
TEXT = dict(vocab_size=VOCAB, hidden_size=16, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=16,
            bos_token_id=BOS, eos_token_id=2, pad_token_id=1)  # eos_token_id 2: OpenAI's legacy configs
VISION = dict(hidden_size=24, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4, num_channels=3,
              image_size=32, patch_size=8, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=16)
PROJECTION_DIM = 16
# the architectures of openai/clip-vit-base-patch32 and openai/clip-vit-large-patch14 (their config.json
# values; eos_token_id 2 as in those files)
FULL_SIZE_MODELS = {
    "openai/clip-vit-base-patch32": dict(
        projection_dim=512,
        text_config=dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_hidden_layers=12,
                         eos_token_id=2, projection_dim=512),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                           patch_size=32, image_size=224, projection_dim=512)),
    "openai/clip-vit-large-patch14": dict(
        projection_dim=768,
        text_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                         eos_token_id=2, projection_dim=768),
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                           patch_size=14, image_size=224, projection_dim=768)),
}
TINY_SIZE = 32  # the tiny model's preprocessor: shortest edge 32, crop 32
ROWS = (101,)  # rows of the 224 pixel values kept in the golden file (F32) per image

results = []


def record(check_name, value):
    results.append((check_name, value))
    print(f"  {check_name}: {value}")


# ----------------------------------------------------------------------------------------------
# images (deterministic, synthetic, compressible, with hard edges and fine detail)
# ----------------------------------------------------------------------------------------------
def make_images():
    rng = np.random.default_rng(2026)
    imgs = {}
    # 50x37: random colour blocks with thin dark lines (upscaled about 6x to 224; the lines overshoot and
    # must be clipped)
    h, w = 37, 50
    blocks = rng.integers(0, 256, (8, 10, 3))
    img = np.kron(blocks, np.ones((5, 5, 1)))[:h, :w].astype(np.uint8)
    img[10:20, 5:15] = [255, 0, 0]
    img[::4, 30:] = 0
    imgs["odd-50x37"] = img
    # 300x200 (width x height): gradients, a disc, stripes, a checkerboard
    h, w = 200, 300
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full((h, w), 96)], -1).astype(np.uint8)
    disc = (x - 210) ** 2 + (y - 70) ** 2 < 45 ** 2
    img[disc] = [250, 240, 30]
    img[120:180, 20:120][(x[120:180, 20:120] // 3) % 2 == 0] = [0, 0, 0]
    img[120:180, 150:250][((x[120:180, 150:250] + y[120:180, 150:250]) % 2) == 0] = [255, 255, 255]
    imgs["photo-300x200"] = img
    # 263x241: both sides above 224 (a downscale, with antialiasing): a gradient, a hard diagonal edge,
    # a grid of one-pixel lines
    h, w = 241, 263
    y, x = np.mgrid[0:h, 0:w]
    grid = np.where((x % 16 == 0) | (y % 16 == 0), 255, 40).astype(np.uint8)
    img = np.stack([(x * 255 // (w - 1)).astype(np.uint8), np.where(x > y, 230, 20).astype(np.uint8), grid], -1)
    imgs["large-263x241"] = img
    return imgs


def write_png(path, arr):
    Image.fromarray(arr, "RGB").save(path, optimize=True)


# ----------------------------------------------------------------------------------------------
# the OpenAI / open_clip layout
# ----------------------------------------------------------------------------------------------
def to_open_clip(sd, text_layers=None, vision_layers=None):
    """transformers CLIPModel state dict -> OpenAI CLIP / open_clip names (the inverse of transformers'
    convert_clip_original_pytorch_to_hf.py: in_proj = cat(q, k, v), proj / text_projection transposed)."""
    out = {}

    def tower(src, dst, n_layers):
        for i in range(n_layers):
            s, d = f"{src}encoder.layers.{i}.", f"{dst}transformer.resblocks.{i}."
            for p in ("weight", "bias"):
                out[d + f"attn.in_proj_{p}"] = torch.cat(
                    [sd[s + f"self_attn.{n}_proj.{p}"] for n in ("q", "k", "v")], 0)
                out[d + f"attn.out_proj.{p}"] = sd[s + f"self_attn.out_proj.{p}"]
                out[d + f"ln_1.{p}"] = sd[s + f"layer_norm1.{p}"]
                out[d + f"ln_2.{p}"] = sd[s + f"layer_norm2.{p}"]
                out[d + f"mlp.c_fc.{p}"] = sd[s + f"mlp.fc1.{p}"]
                out[d + f"mlp.c_proj.{p}"] = sd[s + f"mlp.fc2.{p}"]

    tower("text_model.", "", text_layers or TEXT["num_hidden_layers"])
    tower("vision_model.", "visual.", vision_layers or VISION["num_hidden_layers"])
    out["token_embedding.weight"] = sd["text_model.embeddings.token_embedding.weight"]
    out["positional_embedding"] = sd["text_model.embeddings.position_embedding.weight"]
    for p in ("weight", "bias"):
        out[f"ln_final.{p}"] = sd[f"text_model.final_layer_norm.{p}"]
        out[f"visual.ln_pre.{p}"] = sd[f"vision_model.pre_layrnorm.{p}"]
        out[f"visual.ln_post.{p}"] = sd[f"vision_model.post_layernorm.{p}"]
    out["text_projection"] = sd["text_projection.weight"].t().contiguous()
    out["visual.proj"] = sd["visual_projection.weight"].t().contiguous()
    out["visual.conv1.weight"] = sd["vision_model.embeddings.patch_embedding.weight"]
    out["visual.class_embedding"] = sd["vision_model.embeddings.class_embedding"]
    out["visual.positional_embedding"] = sd["vision_model.embeddings.position_embedding.weight"]
    out["logit_scale"] = sd["logit_scale"]
    return out


def open_clip_forward(oc, pixel_values, ids):
    """OpenAI CLIP's own forward (model.py: VisionTransformer / encode_text) written against the
    open_clip-named tensors with torch.nn.MultiheadAttention: an independent check of that layout."""
    def block(x, pre, heads, mask):
        d = x.shape[-1]
        mha = torch.nn.MultiheadAttention(d, heads, batch_first=True)
        mha.load_state_dict({k: oc[pre + "attn." + k] for k in
                             ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")})
        ln = lambda t, n: torch.nn.functional.layer_norm(t, (d,), oc[pre + n + ".weight"], oc[pre + n + ".bias"])
        h = ln(x, "ln_1")
        x = x + mha(h, h, h, need_weights=False, attn_mask=mask)[0]
        h = ln(x, "ln_2")
        h = torch.nn.functional.linear(h, oc[pre + "mlp.c_fc.weight"], oc[pre + "mlp.c_fc.bias"])
        h = h * torch.sigmoid(1.702 * h)
        return x + torch.nn.functional.linear(h, oc[pre + "mlp.c_proj.weight"], oc[pre + "mlp.c_proj.bias"])

    def ln(t, n):
        return torch.nn.functional.layer_norm(t, (t.shape[-1],), oc[n + ".weight"], oc[n + ".bias"])

    # image
    p = VISION["patch_size"]
    x = torch.nn.functional.conv2d(pixel_values, oc["visual.conv1.weight"], stride=p)
    x = x.flatten(2).transpose(1, 2)
    cls = oc["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], 1) + oc["visual.positional_embedding"]
    x = ln(x, "visual.ln_pre")
    for i in range(VISION["num_hidden_layers"]):
        x = block(x, f"visual.transformer.resblocks.{i}.", VISION["num_attention_heads"], None)
    image = ln(x[:, 0, :], "visual.ln_post") @ oc["visual.proj"]
    # text (causal mask, pooled at argmax(ids) as OpenAI's encode_text does)
    n = ids.shape[1]
    mask = torch.full((n, n), float("-inf")).triu(1)
    x = oc["token_embedding.weight"][ids] + oc["positional_embedding"][:n]
    for i in range(TEXT["num_hidden_layers"]):
        x = block(x, f"transformer.resblocks.{i}.", TEXT["num_attention_heads"], mask)
    x = ln(x, "ln_final")
    text = x[torch.arange(x.shape[0]), ids.argmax(-1)] @ oc["text_projection"]
    return image, text


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------
def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(FOLDER)
    os.makedirs(os.path.join(OUT, "images"))
    os.makedirs(os.path.join(OUT, "crop224"))
    gold = {}

    # model: random weights, rounded to F16 and stored as such
    config = CLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=PROJECTION_DIM,
                        logit_scale_init_value=2.6592)
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    with torch.no_grad():
        for prm in model.parameters():
            # larger than the init's 0.02 so that every layer matters, then F16-exact
            prm.copy_((prm + 0.1 * torch.randn_like(prm)).half().float())
        model.logit_scale.fill_(2.6592)
        model.logit_scale.copy_(model.logit_scale.half().float())
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.save_pretrained(FOLDER, safe_serialization=True)
    st = os.path.join(FOLDER, "model.safetensors")
    saved = load_file(st)
    check(set(saved) == set(sd) and all(torch.equal(saved[k], sd[k]) for k in sd), "saved state dict")
    save_file({k: v.half().contiguous() for k, v in saved.items()}, st, metadata={"format": "pt"})
    record("transformers CLIPModel keys", f"{len(saved)} tensors, e.g. {sorted(saved)[:2]} ... "
           f"(no position_ids buffers)")
    with open(os.path.join(FOLDER, "config.json")) as f:
        cfg_json = json.load(f)
    check(cfg_json["text_config"]["eos_token_id"] == 2, "config: legacy eos_token_id 2")
    reloaded = CLIPModel.from_pretrained(FOLDER, dtype=torch.float32).eval()
    check(all(torch.equal(reloaded.state_dict()[k], sd[k]) for k in sd), "F16 folder reloads to the same values")
    model = reloaded

    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(os.path.join(TOKENIZER_SRC, name), os.path.join(FOLDER, name))
    tiny_proc = CLIPImageProcessor(size={"shortest_edge": TINY_SIZE}, crop_size={"height": TINY_SIZE, "width": TINY_SIZE})
    tiny_proc.save_pretrained(FOLDER)
    tiny_proc = CLIPImageProcessor.from_pretrained(FOLDER)
    check(type(tiny_proc).__name__ == "CLIPImageProcessor", "folder processor class")

    # open_clip layout
    oc = to_open_clip(sd)
    save_file({k: v.half().contiguous() for k, v in sorted(oc.items())}, OPEN_CLIP, metadata={"format": "pt"})

    # text
    tok = CLIPTokenizer.from_pretrained(FOLDER)
    check((tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, len(tok)) == (BOS, EOS, EOS, VOCAB), "tokenizer ids")
    ids = tok(PROMPTS, padding="max_length", max_length=77, return_tensors="pt").input_ids
    g = torch.Generator().manual_seed(7)
    rand = torch.randint(1, 990, (1, 77), generator=g)  # no end-of-text id: argmax is the largest id
    rand[0, 40] = 997
    ids = torch.cat([ids, rand], 0)
    gold["text.input_ids"] = ids
    with torch.no_grad():
        te = model.get_text_features(input_ids=ids).pooler_output
        gold["text.text_embeds"] = te
        record("text_embeds (legacy eos_token_id 2: pooled at argmax(ids))",
               f"pooled positions {ids.argmax(-1).tolist()}")
        # transformers' other branch: the first position of eos_token_id (0 when there is none)
        model.text_model.eos_token_id = EOS
        te_eos = model.get_text_features(input_ids=ids).pooler_output
        model.text_model.eos_token_id = 2
        gold["text.text_embeds_eos999"] = te_eos
        pos = (ids == EOS).int().argmax(-1).tolist()
        check(pos[:2] == ids[:2].argmax(-1).tolist() and pos[2] == 0, f"first eos positions {pos}")
        check((te_eos[2] - te[2]).abs().max() > 1e-3, "the two pooling rules differ on the row without eos")
        record("text_embeds_eos999 (eos_token_id 999: first end-of-text position, 0 without one)",
               f"pooled positions {pos}")

    # images: the tiny model's own preprocessing (32), then its features
    imgs = make_images()
    pixel_tiny = []
    for name, arr in imgs.items():
        write_png(os.path.join(OUT, "images", f"{name}.png"), arr)
        back = np.array(Image.open(os.path.join(OUT, "images", f"{name}.png")).convert("RGB"))
        check(np.array_equal(back, arr), f"{name}.png round trip")
        pv = tiny_proc(images=Image.fromarray(arr), return_tensors="pt").pixel_values
        pixel_tiny.append(pv)
    pixel_tiny = torch.cat(pixel_tiny, 0)
    with torch.no_grad():
        ie = model.get_image_features(pixel_values=pixel_tiny).pooler_output
        gold["image.pixel_values"] = pixel_tiny
        gold["image.image_embeds"] = ie
        out = model(input_ids=ids[:2], pixel_values=pixel_tiny)
        gold["logits_per_image"] = out.logits_per_image
        record("image_embeds / logits_per_image", f"{list(ie.shape)} / {list(out.logits_per_image.shape)} "
               f"(images {list(imgs)}, texts = the two prompts)")

        # the open_clip layout, through OpenAI's own forward
        oc32 = {k: v.float() for k, v in load_file(OPEN_CLIP).items()}
        oi, ot = open_clip_forward(oc32, pixel_tiny, ids)
        d_img, d_txt = mf.maxdiff(oi, ie), mf.maxdiff(ot, te)
        check(d_img < 1e-5 and d_txt < 1e-5, f"open_clip forward vs transformers {d_img} {d_txt}")
        record("tiny-clip-open_clip.safetensors through OpenAI's forward (nn.MultiheadAttention) vs transformers",
               f"image max abs diff {d_img:.1e}, text {d_txt:.1e}")

    # preprocessing at 224 (OpenAI configs: clip-vit-base-patch32, clip-vit-large-patch14)
    proc = CLIPImageProcessor()
    pil_proc = CLIPImageProcessorPil()
    mean = torch.tensor(proc.image_mean) * (1.0 / proc.rescale_factor)
    std = torch.tensor(proc.image_std) * (1.0 / proc.rescale_factor)
    worst_pil = 0.0
    for name, arr in imgs.items():
        pv = proc(images=Image.fromarray(arr), return_tensors="pt").pixel_values[0]
        check(list(pv.shape) == [3, 224, 224], f"{name} 224 shape")
        # the uint8 image before rescale/normalise: the resized, centre-cropped pixels
        u8 = torch.round(pv * std[:, None, None] + mean[:, None, None]).clamp(0, 255).to(torch.uint8)
        again = (u8.float() - mean[:, None, None]) / std[:, None, None]
        check(torch.equal(again, pv), f"{name}: pixel_values == (u8 - 255 mean) / (255 std) exactly")
        write_png(os.path.join(OUT, "crop224", f"{name}.png"), u8.permute(1, 2, 0).numpy())
        for r in ROWS:
            gold[f"pixels224.{name}.row{r}"] = pv[:, r, :].contiguous()
        pv_pil = torch.from_numpy(np.asarray(pil_proc(images=Image.fromarray(arr), return_tensors="np").pixel_values[0]))
        d = mf.maxdiff(pv_pil, pv)
        levels = int(torch.round((pv_pil - pv).abs() * std[:, None, None]).max())
        worst_pil = max(worst_pil, d)
        record(f"{name}: CLIPImageProcessor (torchvision, the default) vs CLIPImageProcessorPil",
               f"max abs diff {d:.4f} after normalisation ({levels} uint8 levels)")
    record("note", f"worst PIL-backend difference {worst_pil:.4f}: transformers 5's two backends disagree; "
                   "invert matches the default (torchvision) one")

    save_golden(gold)
    write_full_size_keys()
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(OUT) for f in fs)
    check(total < SIZE_LIMIT, f"clip/ is {total} bytes")
    record("size of clip/", f"{total} bytes")
    write_readme(total)


def write_full_size_keys():
    """The two OpenAI layouts at full size, built on torch's meta device (no weights): the config, then
    `hf` (transformers) and `oc` (OpenAI / open_clip) key and shape lines, only for the first and last
    encoder layer of each tower (a test expands the others from the depth)."""
    lines = []
    for name, cfg in FULL_SIZE_MODELS.items():
        config = CLIPConfig(**cfg)
        with torch.device("meta"):
            model = CLIPModel(config)
        sd = model.state_dict()
        oc = to_open_clip(sd, config.text_config.num_hidden_layers, config.vision_config.num_hidden_layers)
        n_text, n_vision = config.text_config.num_hidden_layers, config.vision_config.num_hidden_layers
        keep_layers = (f"text_model.encoder.layers.0.", f"text_model.encoder.layers.{n_text - 1}.",
                       f"vision_model.encoder.layers.0.", f"vision_model.encoder.layers.{n_vision - 1}.",
                       "transformer.resblocks.0.", f"transformer.resblocks.{n_text - 1}.",
                       "visual.transformer.resblocks.0.", f"visual.transformer.resblocks.{n_vision - 1}.")

        def kept(k):
            layered = ".layers." in k or ".resblocks." in k
            return not layered or any(k.startswith(p) for p in keep_layers)

        lines.append(f"# {name}: {len(sd)} transformers tensors, {len(oc)} OpenAI / open_clip tensors")
        lines.append("config " + json.dumps(cfg, sort_keys=True))
        lines += [f"hf {k} {','.join(map(str, v.shape))}" for k, v in sorted(sd.items()) if kept(k)]
        lines += [f"oc {k} {','.join(map(str, v.shape))}" for k, v in sorted(oc.items()) if kept(k)]
        record(f"{name} at full size (meta device)", f"{len(sd)} transformers tensors, {len(oc)} OpenAI / open_clip "
               f"tensors; vision positions {sd['vision_model.embeddings.position_embedding.weight'].shape[0]}")
    with open(FULL_SIZE, "w") as f:
        f.write("\n".join(lines) + "\n")


def save_golden(gold):
    meta = dict(VERSIONS)
    meta.update(generator="scripts/make_clip_fixtures.py", model="tiny-clip (F16 weights loaded as float32)",
                prompts=json.dumps(PROMPTS), compute="CPU float32, 1 thread, eval mode")
    save_file({k: v.contiguous() for k, v in sorted(gold.items())}, GOLDEN, metadata=meta)
    mf.canonical_metadata_order(GOLDEN)
    with safe_open(GOLDEN, "pt") as f:
        check(set(f.keys()) == set(gold), "golden keys")
        check(all(torch.equal(f.get_tensor(k), gold[k]) for k in gold), "golden tensors")
    print(f"  {GOLDEN}: {len(gold)} tensors")


README_TEXT = """### `clip/` (CLIP: `CLIPModel`, `CLIPVisionModel`, `CLIPImageProcessor`)
Written by `scripts/make_clip_fixtures.py` (`/work/venv23/bin/python scripts/make_clip_fixtures.py`);
versions: {versions}.
- `tiny-clip/`: a transformers `CLIPModel` folder. Text tower: vocab 1000, hidden 16, 2 layers, 2 heads (head dim 8),
  MLP 37, quick_gelu, 77 positions, **`eos_token_id` 2** (OpenAI's legacy configs: pooled at `argmax(ids)`).
  Vision tower: hidden 24, 2 layers, 4 heads (head dim 6), MLP 32, image 32, patch 8 (17 positions), quick_gelu.
  `projection_dim` 16, `logit_scale` 2.6592. Random weights (init + 0.1 N(0,1)), stored **F16** in
  `model.safetensors` (transformers 5's key names: `text_model.*`, `vision_model.*`, `visual_projection`,
  `text_projection`, `logit_scale`; no `position_ids` buffers). `preprocessor_config.json`:
  `CLIPImageProcessor` with shortest edge 32 and crop 32. Tokenizer: byte copies of `tiny-sdxl/tokenizer`
  (vocab.json + merges.txt, bos 998, eos 999, pads 999).
- `tiny-clip-open_clip.safetensors`: the same F16 tensors with OpenAI / open_clip names (`visual.conv1.weight`,
  `visual.class_embedding`, `visual.positional_embedding`, `visual.ln_pre`, `visual.transformer.resblocks.N.
  {{ln_1, attn.in_proj_weight (q;k;v), attn.in_proj_bias, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}}`,
  `visual.ln_post`, `visual.proj` ([24, 16] = `visual_projection.weight` transposed), `token_embedding.weight`,
  `positional_embedding`, `transformer.resblocks.N.*`, `ln_final`, `text_projection` ([16, 16], transposed),
  `logit_scale`). Checked by running OpenAI's forward (nn.MultiheadAttention) on it.
- `full-size-keys.txt`: openai/clip-vit-base-patch32's and openai/clip-vit-large-patch14's architectures (config
  values as in their config.json) built on torch's meta device: a `config` JSON line, then `hf <key> <shape>` and
  `oc <key> <shape>` lines (transformers and OpenAI / open_clip names) for every tensor outside the encoder layers
  and for the first and last layer of each tower; the test expands the other layers.
- `images/*.png`: synthetic RGB inputs of odd sizes (50x37 colour blocks and thin lines, 300x200 with stripes and a
  checkerboard, 263x241 a gradient, a hard diagonal edge and a grid of
  one-pixel lines: a downscale).
- `crop224/*.png`: transformers' default `CLIPImageProcessor` (OpenAI config: shortest edge 224, bicubic,
  centre crop 224) of each image as uint8, before rescale/normalise; the script checks that its
  `pixel_values` equal `(u8 - 255 mean) / (255 std)` in f32 exactly.
- `golden.safetensors`: `text.input_ids` (I64 [3, 77]: the two prompts padded with 999, then random ids
  without an end-of-text id), `text.text_embeds` (`get_text_features`, legacy argmax pooling),
  `text.text_embeds_eos999` (the same with `eos_token_id` 999: first end-of-text position, 0 without one),
  `image.pixel_values` [3, 3, 32, 32] (the tiny folder's processor on the three images, in the order above),
  `image.image_embeds` (`get_image_features`), `logits_per_image` [3, 2] (images x prompts),
  `pixels224.<image>.row<r>` (rows {rows} of the 224 `pixel_values`, [3, 224]).

Preprocessing: transformers 5's `CLIPImageProcessor` is the torchvision backend: the uint8 image is resized by
`torchvision.transforms.v2.functional.resize(antialias=True, BICUBIC)`, which on CPU runs PyTorch's uint8
antialiased bicubic (Keys a = -0.5, PIL's support and centres, int16 fixed-point weights whose precision is
chosen per pass, horizontal pass first, rounded to uint8 in between). That is not PIL: `CLIPImageProcessorPil`
(PIL's `Image.resize(BICUBIC)`, 22-bit weights) differs by a few levels. invert's `clip::resample` reproduces
the PyTorch kernel, so `tests/clip.rs` requires the uint8 crops to be equal (0 of 150,528 values differ, on all
three images) and the normalised values to agree within 1e-6 (measured: 0, the same f32 operations); the
tolerance for features is 1e-4 (measured: text 6.0e-7, image 3.3e-7 scaled max differences). Measured by this
script:

| check | result |
|---|---|
{table}
"""


def write_readme(total):
    table = "\n".join(f"| {c} | {v} |" for c, v in results)
    versions = ", ".join(f"{k} {v}" for k, v in VERSIONS.items())
    text = README_TEXT.format(versions=versions, rows=", ".join(map(str, ROWS)), table=table)
    block = "\n".join([BEGIN, "", text.rstrip(), "", f"Total of `clip/`: {total} bytes.", "", END, ""])
    with open(README) as f:
        readme = f.read()
    if BEGIN in readme:
        a, b = readme.index(BEGIN), readme.index(END) + len(END) + 1
        readme = readme[:a] + block + readme[b:]
    else:
        readme = readme.rstrip("\n") + "\n\n" + block
    with open(README, "w") as f:
        f.write(readme)


if __name__ == "__main__":
    main()
