#!/usr/bin/env python3
"""Generate the textual-inversion embedding fixtures for invert-model's embedding tests.

Run from the repo root with a Python that has torch, safetensors, numpy and Pillow:
    /work/venv23/bin/python scripts/make_embedding_fixtures.py
Writes crates/invert-model/tests/fixtures/embeddings/*: one file per format and variant that
the tools in the wild write (diffusers, A1111 .pt zip/legacy/ParameterDict, A1111 PNG with the
embedding in a tEXt/zTXt/iTXt chunk or only in the pixel side blocks, kohya, invoke-training,
OneTrainer, rinongal; SDXL {clip_l, clip_g} from kohya/OneTrainer/invoke-training/diffusers'
advanced script, diffusers' two-file SDXL form in folders, embeddings bundled in LoRA files),
files invert must refuse (half or inconsistent SDXL embeddings, Flux, a bare LoRA, XTI, NaN,
integer, rank 3, malicious pickle, not an embedding), and expected.json (token, shape, values,
format, the second table of SDXL embeddings, notes in meta.extra, or the refusal).

The files are built the way each tool saves them (dict layouts, torch.save, safetensors
metadata), re-implemented here from reading the tools' sources; nothing is downloaded.
Deterministic: fixed torch.Generator seeds; safetensors metadata sorted and legacy storage keys
renumbered, so re-running gives byte-identical files.
"""
import base64
import io
import json
import os
import pathlib
import pickletools
import shutil
import zlib

import numpy as np
import torch
from PIL import Image, ImageDraw, PngImagePlugin
from safetensors.torch import save_file

OUT = pathlib.Path(__file__).resolve().parent.parent / "crates/invert-model/tests/fixtures/embeddings"
W = 32  # width of most fixtures (tiny-sd1's text encoder width)
GEN = torch.Generator().manual_seed(20240611)

FILES = {}


def vec(n, d=W, dtype=torch.float32):
    return (torch.randn(n, d, generator=GEN) * 0.3).to(dtype)


def describe(t):
    """Expected values of a tensor as f32 (row-major); small tensors in full."""
    flat = t.detach().float().reshape(-1)
    out = {"shape": [1, t.shape[0]] if t.dim() == 1 else list(t.shape)}
    if flat.numel() <= 128:
        out["values"] = [float(v) for v in flat.tolist()]
    else:
        out["head"] = [float(v) for v in flat[:8].tolist()]
        out["sum"] = float(flat.double().sum())
    return out


def ok(name, fmt, embeddings):
    """embeddings: list of (token, tensor, extra expected fields); for SDXL the tensor is a pair
    (clip_l, clip_g), the second described under "second"."""
    def one(tok, t, extra):
        if isinstance(t, tuple):
            return dict(token=tok, **describe(t[0]), second=describe(t[1]), **extra)
        return dict(token=tok, **describe(t), **extra)

    FILES[name] = {"format": fmt, "embeddings": [one(*e) for e in embeddings]}


def refused(name, kind, says):
    FILES[name] = {"error": kind, "message_contains": says}


# --- A1111 PNG helpers (the algorithm of A1111's image_embedding.py, written anew) -----------


class TensorJSON(json.JSONEncoder):
    def default(self, o):
        if isinstance(o, torch.Tensor):
            return {"TORCHTENSOR": o.cpu().detach().numpy().tolist()}
        return super().default(o)


def lcg_stream(n):
    seed, out = 0, []
    for _ in range(n):
        seed = (1664525 * seed + 1013904223) % 2**32
        out.append(seed % 255)
    return np.array(out, dtype=np.uint8)


def xor_nibbles(block):
    return np.bitwise_xor(block.astype(np.uint8), lcg_stream(block.size).reshape(block.shape) & 0x0F)


def shade_block(block, shades):
    """A1111's style_block: dots of the embedding's shades in the high nibbles."""
    im = Image.new("RGB", (block.shape[1], block.shape[0]))
    draw = ImageDraw.Draw(im)
    i = 0
    for x in range(-6, im.size[0], 8):
        for yi, y in enumerate(range(-6, im.size[1], 8)):
            off = 4 if yi % 2 == 0 else 0
            s = int(shades[i % len(shades)])
            i += 1
            draw.ellipse((x + off, y, x + 6 + off, y + 6), fill=(s, s, s))
    return block ^ (np.array(im).astype(np.uint8) & 0xF0)


def with_side_blocks(image, data):
    """A1111's insert_image_data_embed: the zlib'd JSON as two pixel blocks beside the image."""
    d = 3
    packed = np.frombuffer(zlib.compress(json.dumps(data, cls=TensorJSON).encode(), level=9), np.uint8)
    h = image.size[1]
    size = packed.shape[0] + (h - packed.shape[0] % h)
    size = size + (h * d - size % (h * d))
    low = np.resize(packed & 0x0F, size).reshape(h, -1, d)
    high = np.resize(packed >> 4, size).reshape(h, -1, d)
    first = list(data["string_to_param"].values())[0].detach().numpy().tolist()[0][:1024]
    shades = (np.abs(first) / np.max(np.abs(first)) * 255).astype(np.uint8)
    low = xor_nibbles(shade_block(low, shades))
    high = xor_nibbles(shade_block(high, shades[::-1]))
    im_low, im_high = Image.fromarray(low), Image.fromarray(high)
    canvas = Image.new("RGB", (image.size[0] + im_low.size[0] + im_high.size[0] + 2, h), (0, 0, 0))
    canvas.paste(im_low, (0, 0))
    canvas.paste(image, (im_low.size[0] + 1, 0))
    canvas.paste(im_high, (im_low.size[0] + 1 + image.size[0] + 1, 0))
    return canvas


def picture(w=24, h=16):
    x = np.arange(w)[None, :, None]
    y = np.arange(h)[:, None, None]
    rgb = np.concatenate([40 + 8 * x + 0 * y, 60 + 9 * y + 0 * x, 200 - 5 * x + 0 * y], axis=2)
    return Image.fromarray(rgb.astype(np.uint8))


def a1111_dict(v, name, step, ckpt, ckpt_name):
    return {
        "string_to_token": {"*": 265},
        # A1111 writes a plain dict; files from its torch 1.11 days hold a ParameterDict.
        "string_to_param": v if isinstance(v, torch.nn.ParameterDict) else {"*": v},
        "name": name,
        "step": step,
        "sd_checkpoint": ckpt,
        "sd_checkpoint_name": ckpt_name,
    }


def meta_fields(step=None, base_model=None, base_model_hash=None):
    return {"step": step, "base_model": base_model, "base_model_hash": base_model_hash}


def sorted_safetensors_metadata(path):
    """safetensors writes __metadata__ in hash-map order; rewrite the header with sorted keys so
    that re-running gives the same bytes (offsets are relative to the header's end)."""
    raw = pathlib.Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", None)
    out = {"__metadata__": dict(sorted(meta.items()))} if meta else {}
    out.update(header)
    hb = json.dumps(out, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    pathlib.Path(path).write_bytes(len(hb).to_bytes(8, "little") + hb + raw[8 + n :])


def save_legacy(obj, path):
    """torch.save in the legacy format, with the storage keys (memory addresses there) replaced
    by same-length sequence numbers so that re-running gives the same bytes."""
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=False)
    raw = buf.getvalue()
    stream = io.BytesIO(raw)
    for _ in range(4):  # magic, protocol, system info, the object
        for _op in pickletools.genops(stream):
            pass
    keys = [arg for op, arg, _ in pickletools.genops(stream) if isinstance(arg, str)]
    for i, k in enumerate(keys):
        raw = raw.replace(k.encode(), f"{i:0{len(k)}d}".encode())
    pathlib.Path(path).write_bytes(raw)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned-by-embedding",))


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for p in OUT.iterdir():
        if p.is_dir():
            shutil.rmtree(p)
        elif p.name != "README.md":
            p.unlink()

    # diffusers: safetensors with metadata {"format": "pt"}; .bin via torch.save.
    v = vec(1)
    save_file({"<cat-toy>": v}, OUT / "diffusers_single.safetensors", metadata={"format": "pt"})
    ok("diffusers_single.safetensors", "Diffusers", [("<cat-toy>", v, meta_fields())])
    v = vec(3)
    save_file({"<multi>": v}, OUT / "diffusers_multi.safetensors", metadata={"format": "pt"})
    ok("diffusers_multi.safetensors", "Diffusers", [("<multi>", v, meta_fields())])
    a, b = vec(1), vec(2)
    torch.save({"<tok-a>": a, "<tok-b>": b}, OUT / "diffusers_two_tokens.bin")
    ok("diffusers_two_tokens.bin", "Diffusers", [("<tok-a>", a, meta_fields()), ("<tok-b>", b, meta_fields())])
    v = vec(1)[0]
    torch.save({"<flat>": v}, OUT / "diffusers_1d.bin")
    ok("diffusers_1d.bin", "Diffusers", [("<flat>", v, meta_fields())])
    v = vec(2, dtype=torch.float16)
    save_file({"<half>": v}, OUT / "diffusers_f16.safetensors", metadata={"format": "pt"})
    ok("diffusers_f16.safetensors", "Diffusers", [("<half>", v, meta_fields())])
    v = vec(2, dtype=torch.bfloat16)
    torch.save({"<bf16>": v}, OUT / "diffusers_bf16.bin")
    ok("diffusers_bf16.bin", "Diffusers", [("<bf16>", v, meta_fields())])
    v = vec(2)
    torch.save(v, OUT / "bare_tensor.pt")  # no name: the file stem names it
    ok("bare_tensor.pt", "Diffusers", [("bare_tensor", v, meta_fields())])
    v = vec(1, 1024)
    save_file({"<sd2-tok>": v}, OUT / "sd2_1024.safetensors", metadata={"format": "pt"})
    ok("sd2_1024.safetensors", "Diffusers", [("<sd2-tok>", v, meta_fields())])
    # diffusers' SDXL trainer writes TE2's rows to learned_embeds_2.safetensors (1280 wide).
    v = vec(1, 1280)
    save_file({"<xl-tok>": v}, OUT / "sdxl_learned_embeds_2.safetensors", metadata={"format": "pt"})
    ok("sdxl_learned_embeds_2.safetensors", "Diffusers", [("<xl-tok>", v, meta_fields())])

    # A1111 Embedding.save: torch.save of a plain dict (zip), older torch's legacy format, and
    # the ParameterDict that files from torch 1.11-era A1111 hold.
    v = vec(2)
    torch.save(a1111_dict(v, "a1111-style", 500, "a1b2c3d4", "tiny-sd1"), OUT / "a1111_zip.pt")
    ok("a1111_zip.pt", "A1111", [("a1111-style", v, meta_fields(500, "tiny-sd1", "a1b2c3d4"))])
    v = vec(3)
    save_legacy(a1111_dict(v, "legacy-style", None, None, None), OUT / "a1111_legacy.pt")
    ok("a1111_legacy.pt", "A1111", [("legacy-style", v, meta_fields())])
    v = vec(1)
    pd = torch.nn.ParameterDict({"*": torch.nn.Parameter(v.clone())})
    torch.save(a1111_dict(pd, "paramdict-style", 1200, "ffee0011", "sd15"), OUT / "a1111_paramdict.pt")
    ok("a1111_paramdict.pt", "A1111", [("paramdict-style", v, meta_fields(1200, "sd15", "ffee0011"))])
    v = vec(1, 768)
    torch.save(a1111_dict(v, "sd1-emb", 3000, "e1d2c3b4", "v1-5-pruned-emaonly"), OUT / "sd1_768.pt")
    ok("sd1_768.pt", "A1111", [("sd1-emb", v, meta_fields(3000, "v1-5-pruned-emaonly", "e1d2c3b4"))])

    # A1111 embedding images: base64 JSON in a text chunk (A1111 writes tEXt; zTXt and iTXt are
    # what other tools make of it), and the side blocks alone (text chunks stripped).
    for name, how in [("a1111_text.png", "tEXt"), ("a1111_ztxt.png", "zTXt"), ("a1111_itxt.png", "iTXt")]:
        v = vec(2)
        data = a1111_dict(v, "png-" + how.lower(), 750, "0badf00d", "tiny-sd1")
        b64 = base64.b64encode(json.dumps(data, cls=TensorJSON).encode())
        info = PngImagePlugin.PngInfo()
        if how == "tEXt":
            info.add_text("sd-ti-embedding", b64)
        elif how == "zTXt":
            info.add_text("sd-ti-embedding", b64, zip=True)
        else:
            info.add_itxt("sd-ti-embedding", b64.decode(), zip=True)
        picture(8, 8).save(OUT / name, "PNG", pnginfo=info)
        ok(name, "A1111Png", [("png-" + how.lower(), v, meta_fields(750, "tiny-sd1", "0badf00d"))])
    v = vec(2)
    data = a1111_dict(v, "png-pixels", 250, None, "tiny-sd1")
    with_side_blocks(picture(), data).save(OUT / "a1111_pixels.png", "PNG")
    ok("a1111_pixels.png", "A1111Png", [("png-pixels", v, meta_fields(250, "tiny-sd1", None))])

    # kohya sd-scripts (`.pt` by default, safetensors with SAI model-spec metadata; fp16 with
    # --save_precision fp16) and invoke-training (safetensors, fp32).
    v = vec(2)
    torch.save({"emb_params": v}, OUT / "kohya_token.pt")
    ok("kohya_token.pt", "Kohya", [("kohya_token", v, meta_fields())])
    v = vec(2, dtype=torch.float16)
    save_file({"emb_params": v}, OUT / "kohya_fp16.safetensors", metadata={
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-v1/textual-inversion",
        "modelspec.title": "kohya_fp16",
    })
    sorted_safetensors_metadata(OUT / "kohya_fp16.safetensors")
    ok("kohya_fp16.safetensors", "Kohya", [("kohya_fp16", v, meta_fields())])
    v = vec(3)
    save_file({"emb_params": v}, OUT / "invoke_training.safetensors")
    ok("invoke_training.safetensors", "Kohya", [("invoke_training", v, meta_fields())])

    # OneTrainer: emp_params plus emp_params_out (ignored).
    v = vec(2)
    save_file({"emp_params": v, "emp_params_out": vec(2)}, OUT / "onetrainer.safetensors")
    ok("onetrainer.safetensors", "OneTrainer", [("onetrainer", v, meta_fields())])

    # rinongal EmbeddingManager.save: string_to_token values are tensors, string_to_param a
    # ParameterDict; merge_embeddings.py makes files with several placeholders.
    v = vec(2)
    torch.save({
        "string_to_token": {"*": torch.tensor(265)},
        "string_to_param": torch.nn.ParameterDict({"*": torch.nn.Parameter(v.clone())}),
    }, OUT / "rinongal_embeddings.pt")
    ok("rinongal_embeddings.pt", "Rinongal", [("rinongal_embeddings", v, meta_fields())])
    a, b = vec(1), vec(2)
    torch.save({
        "string_to_token": {"*": torch.tensor(265), "@": torch.tensor(287)},
        "string_to_param": torch.nn.ParameterDict({
            "*": torch.nn.Parameter(a.clone()), "@": torch.nn.Parameter(b.clone())}),
    }, OUT / "rinongal_merged.pt")
    ok("rinongal_merged.pt", "Rinongal", [("*", a, meta_fields()), ("@", b, meta_fields())])

    # SDXL at its real widths (kohya/OneTrainer/invoke-training layout); read since SDXL support.
    l, g = vec(1, 768), vec(1, 1280)
    save_file({"clip_l": l, "clip_g": g}, OUT / "sdxl_clip_l_g.safetensors")
    ok("sdxl_clip_l_g.safetensors", "Sdxl", [("sdxl_clip_l_g", (l, g), meta_fields())])

    # Refused.
    xti_keys = ["IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "MID", "OUT03", "OUT04", "OUT05",
                "OUT06", "OUT07", "OUT08", "OUT09", "OUT10", "OUT11"]
    save_file({k: vec(1) for k in xti_keys}, OUT / "kohya_xti.safetensors")
    refused("kohya_xti.safetensors", "Xti", "XTI")
    v = vec(2)
    v[1, 5] = float("nan")
    v[1, 7] = float("inf")
    save_file({"<broken>": v}, OUT / "nan.safetensors")
    refused("nan.safetensors", "NonFinite", "2 NaN or infinite values (first in vector 1, element 5)")
    save_file({"<int>": torch.arange(W, dtype=torch.int64).reshape(1, W)}, OUT / "int_tensor.safetensors")
    refused("int_tensor.safetensors", "BadDType", "I64")
    save_file({"<r3>": vec(2).reshape(1, 2, W)}, OUT / "rank3.safetensors")
    refused("rank3.safetensors", "BadShape", "rank 3")
    torch.save({"<evil>": vec(1), "payload": Evil()}, OUT / "malicious.pt")
    refused("malicious.pt", "Weights", "system")
    (OUT / "notes.txt").write_text("these are not the embeddings you are looking for\n")
    refused("notes.txt", "UnknownFormat", "not an embedding file")
    png_plain = OUT / "plain.png"
    Image.new("RGB", (8, 8), (30, 60, 90)).save(png_plain, "PNG")
    refused("plain.png", "UnknownFormat", "without an A1111 embedding")

    sdxl_fixtures()

    versions = {"torch": torch.__version__, "numpy": np.__version__, "Pillow": Image.__version__}
    with open(OUT / "expected.json", "w") as f:
        json.dump({"generated_by": "scripts/make_embedding_fixtures.py", "versions": versions,
                   "files": FILES}, f, indent=1, sort_keys=True)
        f.write("\n")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"{len(FILES)} fixtures, {total} bytes in {OUT}")
    assert total < 300_000, total


# --- SDXL (made after everything above, so that the values of older fixtures stay the same) ---

WL, WG = 8, 16  # stand-ins for SDXL's clip_l (768) and clip_g (1280) widths


def lora_tensors(sdxl):
    """A few kohya-style LoRA weights (down, up, alpha) for the bundle fixtures."""
    te = "lora_te1_text_model_encoder_layers_0_mlp_fc1" if sdxl else "lora_te_text_model_encoder_layers_0_mlp_fc1"
    out = {}
    for module in ["lora_unet_down_blocks_0_attentions_0_proj_in", te]:
        out[f"{module}.lora_down.weight"] = vec(4, WL)
        out[f"{module}.lora_up.weight"] = vec(WL, 4)
        out[f"{module}.alpha"] = torch.tensor(4.0)
    return out


def sdxl_fixtures():
    # kohya sd-scripts SDXL (`--save_precision fp16`, SAI model-spec metadata).
    l, g = vec(2, WL, torch.float16), vec(2, WG, torch.float16)
    save_file({"clip_l": l, "clip_g": g}, OUT / "sdxl_kohya.safetensors", metadata={
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-xl-v1-base/textual-inversion",
        "modelspec.title": "sdxl_kohya",
    })
    sorted_safetensors_metadata(OUT / "sdxl_kohya.safetensors")
    ok("sdxl_kohya.safetensors", "Sdxl", [("sdxl_kohya", (l, g), meta_fields())])
    # invoke-training: F32 safetensors, no metadata.
    l, g = vec(1, WL), vec(1, WG)
    save_file({"clip_l": l, "clip_g": g}, OUT / "sdxl_invoke.safetensors")
    ok("sdxl_invoke.safetensors", "Sdxl", [("sdxl_invoke", (l, g), meta_fields())])
    # OneTrainer: torch.save of the dict (its CKPT output), and safetensors with `_out` tables.
    l, g = vec(1, WL), vec(1, WG)
    torch.save({"clip_l": l, "clip_g": g}, OUT / "sdxl_onetrainer.pt")
    ok("sdxl_onetrainer.pt", "Sdxl", [("sdxl_onetrainer", (l, g), meta_fields())])
    l, g = vec(2, WL), vec(2, WG)
    save_file({"clip_l": l, "clip_g": g, "clip_l_out": vec(2, WL), "clip_g_out": vec(2, WG)},
              OUT / "sdxl_onetrainer_out.safetensors")
    ok("sdxl_onetrainer_out.safetensors", "Sdxl", [("sdxl_onetrainer_out", (l, g), dict(
        meta_fields(), extra_contains={"ignored": "clip_g_out, clip_l_out (OneTrainer's output-side"}))])
    # An older torch's legacy pickle of the same dict.
    l, g = vec(3, WL), vec(3, WG)
    save_legacy({"clip_l": l, "clip_g": g}, OUT / "sdxl_legacy.pt")
    ok("sdxl_legacy.pt", "Sdxl", [("sdxl_legacy", (l, g), meta_fields())])
    # diffusers' advanced pivotal-tuning scripts: `<output>_emb.safetensors`, 2 tokens per
    # abstraction (<s0><s1>); the SD 1.5 script writes clip_l alone.
    l, g = vec(2, WL), vec(2, WG)
    save_file({"clip_l": l, "clip_g": g}, OUT / "sdxl_advanced_emb.safetensors")
    ok("sdxl_advanced_emb.safetensors", "Sdxl", [("sdxl_advanced_emb", (l, g), meta_fields())])
    v = vec(2)
    save_file({"clip_l": v}, OUT / "sd15_advanced_emb.safetensors")
    ok("sd15_advanced_emb.safetensors", "ClipL", [("sd15_advanced_emb", v, meta_fields())])

    # diffusers textual_inversion_sdxl.py: learned_embeds[_2][-steps-N].safetensors in the output
    # folder; text_encoder_2 is cast to the mixed-precision dtype, so file 2 can be fp16.
    d = OUT / "diffusers_sdxl"
    d.mkdir()
    for steps, dtype in [("", torch.float32), ("-steps-500", torch.float16)]:
        l, g = vec(2, WL), vec(2, WG, dtype)
        save_file({"<xl-cat>": l}, d / f"learned_embeds{steps}.safetensors", metadata={"format": "pt"})
        save_file({"<xl-cat>": g}, d / f"learned_embeds_2{steps}.safetensors", metadata={"format": "pt"})
        for name in [f"learned_embeds{steps}.safetensors", f"learned_embeds_2{steps}.safetensors"]:
            ok(f"diffusers_sdxl/{name}", "DiffusersSdxl", [("<xl-cat>", (l, g), dict(
                meta_fields(), extra_contains={"two_files": "diffusers' two-file SDXL form"}))])
    d = OUT / "diffusers_sdxl_half"
    d.mkdir()
    save_file({"<half>": vec(1, WG)}, d / "learned_embeds_2.safetensors", metadata={"format": "pt"})
    refused("diffusers_sdxl_half/learned_embeds_2.safetensors", "Sdxl",
            "the first file learned_embeds.safetensors (text_encoder's rows, clip_l) is not next to it")
    d = OUT / "diffusers_sdxl_mismatch"
    d.mkdir()
    save_file({"<odd>": vec(1, WL)}, d / "learned_embeds.safetensors", metadata={"format": "pt"})
    save_file({"<odd>": vec(2, WG)}, d / "learned_embeds_2.safetensors", metadata={"format": "pt"})
    for name in ["learned_embeds.safetensors", "learned_embeds_2.safetensors"]:
        refused(f"diffusers_sdxl_mismatch/{name}", "Sdxl",
                "`<odd>` has 1 vectors in the first and 2 in the second")

    # LoRA files with bundled embeddings. OneTrainer SDXL: bundle_emb.<placeholder>.clip_l/clip_g
    # (+ _out), kohya-style LoRA keys and ss_* training metadata.
    l1, g1, l2, g2 = vec(1, WL), vec(1, WG), vec(2, WL), vec(2, WG)
    sd = lora_tensors(True)
    sd.update({"bundle_emb.<xl-one>.clip_l": l1, "bundle_emb.<xl-one>.clip_g": g1,
               "bundle_emb.<xl-one>.clip_l_out": vec(1, WL), "bundle_emb.<xl-one>.clip_g_out": vec(1, WG),
               "bundle_emb.second-word.clip_l": l2, "bundle_emb.second-word.clip_g": g2})
    save_file(sd, OUT / "lora_bundle_sdxl.safetensors", metadata={
        "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
        "ss_network_module": "networks.lora",
        "ss_tag_frequency": json.dumps({"img": {"xl-one": 12, "second-word": 3}}),
    })
    sorted_safetensors_metadata(OUT / "lora_bundle_sdxl.safetensors")
    lora_note = {"ignored": "6 LoRA tensors (e.g. `lora_te1_text_model_encoder_layers_0_mlp_fc1.alpha`)"}
    ok("lora_bundle_sdxl.safetensors", "LoraBundle", [
        ("<xl-one>", (l1, g1), dict(meta_fields(), extra_contains=dict(
            lora_note, bundle_layout="SDXL clip_l/clip_g"))),
        ("second-word", (l2, g2), dict(meta_fields(), extra_contains=dict(
            lora_note, bundle_layout="SDXL clip_l/clip_g"))),
    ])
    # kohya's bundling script with a torch target: every entry of an A1111 .pt (dicts flattened
    # one level, ints kept, `name`/`step` dropped) and of a kohya emb_params file.
    a, k = vec(2), vec(1)
    sd = lora_tensors(False)
    sd.update({"bundle_emb.a1111-word.string_to_token.*": 265,
               "bundle_emb.a1111-word.string_to_param.*": a,
               "bundle_emb.kohya-word.emb_params": k})
    torch.save(sd, OUT / "lora_bundle_sd1.pt")
    ok("lora_bundle_sd1.pt", "LoraBundle", [
        ("a1111-word", a, dict(meta_fields(), extra_contains={"bundle_layout": "rinongal"})),
        ("kohya-word", k, dict(meta_fields(), extra_contains={"bundle_layout": "kohya"})),
    ])
    # OneTrainer SD 1.x today: bundle_emb.<placeholder>.clip_l (+ clip_l_out).
    v = vec(2)
    sd = lora_tensors(False)
    sd.update({"bundle_emb.<ot-word>.clip_l": v, "bundle_emb.<ot-word>.clip_l_out": vec(2)})
    save_file(sd, OUT / "lora_bundle_sd1_onetrainer.safetensors")
    ok("lora_bundle_sd1_onetrainer.safetensors", "LoraBundle", [
        ("<ot-word>", v, dict(meta_fields(), extra_contains={
            "bundle_layout": "clip_l", "ignored": "clip_l_out (OneTrainer's output-side"}))])

    # Refused: a LoRA without embeddings, half or inconsistent SDXL tables, NaN in clip_g, rank 3,
    # Flux (clip_l + t5, diffusers' advanced Flux script).
    save_file(lora_tensors(True), OUT / "lora_only.safetensors")
    refused("lora_only.safetensors", "UnknownFormat", "a LoRA (e.g. `lora_te1_text_model_encoder_layers_0_mlp_fc1.alpha`)")
    save_file({"clip_g": vec(1, WG)}, OUT / "sdxl_clip_g_only.safetensors")
    refused("sdxl_clip_g_only.safetensors", "Sdxl", "but no `clip_l`")
    save_file({"clip_l": vec(2, WL), "clip_g": vec(1, WG)}, OUT / "sdxl_count_mismatch.safetensors")
    refused("sdxl_count_mismatch.safetensors", "Sdxl", "`clip_l` [2, 8] holds 2 vectors but `clip_g` [1, 16] holds 1")
    g = vec(1, WG)
    g[0, 3] = float("nan")
    save_file({"clip_l": vec(1, WL), "clip_g": g}, OUT / "sdxl_nan.safetensors")
    refused("sdxl_nan.safetensors", "NonFinite", "`sdxl_nan (clip_g)` holds 1 NaN or infinite values (first in vector 0, element 3)")
    save_file({"clip_l": vec(1, WL), "clip_g": vec(1, WG).reshape(1, 1, WG)}, OUT / "sdxl_rank3.safetensors")
    refused("sdxl_rank3.safetensors", "BadShape", "`clip_g` has shape [1, 1, 16]: rank 3")
    save_file({"clip_l": vec(1, WL), "t5": vec(1, WG)}, OUT / "flux_clip_l_t5.safetensors")
    refused("flux_clip_l_t5.safetensors", "UnknownFormat", "Flux/SD3")


if __name__ == "__main__":
    main()
