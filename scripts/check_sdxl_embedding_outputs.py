#!/usr/bin/env python3
"""Check that the SDXL embedding files invert writes load in diffusers and have kohya's layout.

    cargo build --release -p invert-cli
    /work/venv23/bin/python scripts/check_sdxl_embedding_outputs.py [OUT_DIR]

Runs `target/release/invert embedding convert` on committed fixtures
(crates/invert-model/tests/fixtures/embeddings) to write, into OUT_DIR (default: a temporary
folder):
- `--format sdxl` ({clip_l, clip_g} in one file) from the real-width SDXL fixture (768 + 1280),
  from diffusers' two-file fixture (2 vectors, 8 + 16 wide) and from kohya's fp16 file;
- `--format diffusers-sdxl` (learned_embeds.safetensors + learned_embeds_2.safetensors) from the
  real-width fixture and from OneTrainer's file with its ignored `_out` tables;
- a round trip: invert's own two files, read through their second half
  (learned_embeds_2.safetensors pairs with its first), back to `--format sdxl`.
The expected values are read from the fixtures here with safetensors/torch, not by invert.
Checks, for every written file, with the values compared bit for bit as float32:
- kohya's layout for the one-file form: exactly the tensors `clip_l` and `clip_g`, F32,
  [n, d] with the same n (what kohya sd-scripts, OneTrainer and invoke-training write);
  diffusers' for the two files: one F32 [n, d] tensor named by the token in each;
- A1111's `load_from_file` logic (re-implemented): the SDXL branch takes the one-file form,
  named after the file stem, width clip_l + clip_g;
- diffusers: a tiny random StableDiffusionXLPipeline built here (no downloads; two random CLIP
  text encoders as wide as the file's tables, 2 layers; CLIP's tokenizer from
  crates/invert-model/assets/clip-tokenizer, one copy per encoder) loads the one-file form
  with `load_textual_inversion(sd["clip_l"], token=..., text_encoder=pipe.text_encoder,
  tokenizer=pipe.tokenizer)` and the same for `clip_g` with text_encoder_2/tokenizer_2, and the
  two files with `load_textual_inversion(path)` and `load_textual_inversion(path_2,
  text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)`; the new rows of both text
  encoders are compared, both tokenizers expand the token (`maybe_convert_prompt`),
  `encode_prompt` gives finite [1, 77, d_l + d_g] embeddings and pooled [1, 32], and one
  denoising step of the pipeline runs to finite latents.
Exits non-zero on the first failure; prints a summary, versions last.
"""
import copy
import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
import torch

REPO = pathlib.Path(__file__).resolve().parent.parent
FIX = REPO / "crates/invert-model/tests/fixtures/embeddings"
TOKENIZER = REPO / "crates/invert-model/assets/clip-tokenizer"
INVERT = REPO / "target/release/invert"

LOG = []


def say(msg):
    print(msg)
    LOG.append(msg)


def check(cond, msg):
    if not cond:
        raise SystemExit(f"FAIL: {msg}")


def same(t, want, what):
    t = t.detach().cpu()
    check(t.dtype == torch.float32, f"{what}: dtype {t.dtype}")
    check(list(t.shape) == list(want.shape), f"{what}: shape {list(t.shape)} vs {list(want.shape)}")
    check(torch.equal(t, want), f"{what}: values differ (max diff {(t - want).abs().max().item()})")


def convert(src, out, fmt, token=None):
    args = [str(INVERT), "embedding", "convert", str(src), str(out), "--format", fmt, "--overwrite"]
    if token:
        args += ["--token", token]
    r = subprocess.run(args, capture_output=True, text=True)
    check(r.returncode == 0, f"invert {' '.join(args[1:])}: {r.stdout}{r.stderr}")
    return r.stdout.strip()


def fixture_tables(name):
    """(clip_l, clip_g) of an SDXL fixture as float32, read without invert."""
    from safetensors.torch import load_file

    path = FIX / name
    if path.suffix == ".pt":
        sd = torch.load(path, weights_only=True)
    elif path.name.startswith("learned_embeds"):
        second = path.with_name(path.name.replace("learned_embeds", "learned_embeds_2", 1))
        (l,), (g,) = load_file(path).values(), load_file(second).values()
        return l.float(), g.float()
    else:
        sd = load_file(path)
    return sd["clip_l"].float(), sd["clip_g"].float()


def check_kohya_layout(path, l, g):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = sorted(f.keys())
        check(keys == ["clip_g", "clip_l"], f"{path.name}: keys {keys}")
        tables = {k: f.get_tensor(k) for k in keys}
        meta = f.metadata() or {}
    for k, want in [("clip_l", l), ("clip_g", g)]:
        check(tables[k].dim() == 2, f"{path.name}: {k} has rank {tables[k].dim()}")
        same(tables[k], want, f"{path.name} {k}")
    check(tables["clip_l"].shape[0] == tables["clip_g"].shape[0], f"{path.name}: vector counts")
    say(f"- {path.name}: kohya/OneTrainer/invoke-training layout: exactly `clip_l` F32{list(l.shape)} "
        f"and `clip_g` F32{list(g.shape)}, bit-exact; metadata {json.dumps(meta, sort_keys=True)}")
    # A1111 EmbeddingDatabase.load_from_file, SDXL branch (re-implemented): a dict with both keys;
    # the trigger word is the file stem, the width clip_g + clip_l.
    from safetensors.torch import load_file

    data = load_file(str(path), device="cpu")
    check("string_to_param" not in data and type(data) is dict and "clip_g" in data and "clip_l" in data,
          f"{path.name}: A1111 would not take its SDXL branch")
    shape = data["clip_g"].shape[-1] + data["clip_l"].shape[-1]
    vectors = data["clip_g"].shape[0]
    check(shape == l.shape[1] + g.shape[1] and vectors == l.shape[0], f"{path.name}: A1111 shape")
    say(f"- {path.name}: A1111 load_from_file logic: SDXL branch, embedding `{path.stem}` (file stem), "
        f"{vectors} vector(s), width {shape} (clip_l + clip_g)")


def check_two_files(first, token, l, g):
    from safetensors import safe_open

    second = first.with_name(first.name.replace("learned_embeds", "learned_embeds_2", 1))
    for path, want in [(first, l), (second, g)]:
        with safe_open(str(path), framework="pt") as f:
            check(list(f.keys()) == [token], f"{path.name}: keys {list(f.keys())}")
            same(f.get_tensor(token), want, f"{path.parent.name}/{path.name}")
            meta = f.metadata()
        check(meta.get("format") == "pt" and meta.get("token") == token, f"{path.name}: metadata {meta}")
    say(f"- {first.parent.name}/: diffusers' two files: {first.name} {{`{token}`: F32{list(l.shape)}}} and "
        f"{second.name} {{`{token}`: F32{list(g.shape)}}}, bit-exact, metadata format=pt")
    return second


def tiny_sdxl(dl, dg):
    """A random StableDiffusionXLPipeline whose text encoders are dl and dg wide (2 layers each),
    with CLIP's real tokenizer (49408 ids) twice; no downloads."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(0)
    common = dict(vocab_size=49408, intermediate_size=16, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    te1 = CLIPTextModel(CLIPTextConfig(hidden_size=dl, **common)).eval()
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=dg, projection_dim=32, hidden_act="gelu",
                                                     **common)).eval()
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4), norm_num_groups=4,
        cross_attention_dim=dl + dg, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=8 * 6 + 32, transformer_layers_per_block=1).eval()
    vae = AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                        sample_size=32).eval()
    tok1 = CLIPTokenizer.from_pretrained(TOKENIZER)
    tok2 = CLIPTokenizer.from_pretrained(TOKENIZER, pad_token="!")  # SDXL's tokenizer_2 pads with "!"
    check(tok1("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407], "tokenizer")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok1,
                                     tokenizer_2=tok2, unet=unet, scheduler=EulerDiscreteScheduler(),
                                     add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


PIPES = {}


def fresh_pipe(dl, dg):
    if (dl, dg) not in PIPES:
        PIPES[(dl, dg)] = tiny_sdxl(dl, dg)
    return copy.deepcopy(PIPES[(dl, dg)])


def check_in_diffusers(what, load, token, l, g):
    """`load(pipe)` loads the embedding into both text encoders; checks the rows and a prompt."""
    n, dl, dg = l.shape[0], l.shape[1], g.shape[1]
    pipe = fresh_pipe(dl, dg)
    vocab = len(pipe.tokenizer)
    load(pipe)
    tokens = [token] + [f"{token}_{i}" for i in range(1, n)]
    ids = []
    for tok, te, want, name in [(pipe.tokenizer, pipe.text_encoder, l, "text_encoder"),
                                (pipe.tokenizer_2, pipe.text_encoder_2, g, "text_encoder_2")]:
        tid = tok.convert_tokens_to_ids(tokens)
        check(all(i >= vocab for i in tid), f"{what}: {name} tokens {tokens} -> ids {tid}")
        same(te.get_input_embeddings().weight[tid], want, f"{what} rows in {name}")
        prompt = pipe.maybe_convert_prompt(f"a photo of {token}", tok)
        check(prompt == "a photo of " + " ".join(tokens), f"{what}: prompt {prompt!r}")
        ids.append(tid)
    with torch.no_grad():
        emb, _, pooled, _ = pipe.encode_prompt(f"a photo of {token}", device="cpu", num_images_per_prompt=1,
                                               do_classifier_free_guidance=False)
        check(torch.isfinite(emb).all() and list(emb.shape) == [1, 77, dl + dg], f"{what}: encode_prompt {emb.shape}")
        check(torch.isfinite(pooled).all() and list(pooled.shape) == [1, 32], f"{what}: pooled {pooled.shape}")
        latents = pipe(f"a photo of {token}", num_inference_steps=1, height=32, width=32, output_type="latent",
                       generator=torch.Generator().manual_seed(0)).images
        check(torch.isfinite(latents).all() and list(latents.shape) == [1, 4, 16, 16], f"{what}: latents")
    say(f"- {what}: StableDiffusionXLPipeline (text encoders {dl} + {dg} wide): tokens {tokens} -> ids "
        f"{ids[0]} / {ids[1]}; rows bit-exact in text_encoder and text_encoder_2; both tokenizers expand "
        f"the token; encode_prompt finite [1, 77, {dl + dg}] + pooled [1, 32]; one denoising step -> finite latents")


def main():
    import diffusers
    import safetensors
    import transformers
    from safetensors.torch import load_file

    check(INVERT.is_file(), f"{INVERT} is missing: run `cargo build --release -p invert-cli` first")
    tmp = None
    if len(sys.argv) > 1:
        out = pathlib.Path(sys.argv[1])
        out.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory()
        out = pathlib.Path(tmp.name)
    version = subprocess.run([str(INVERT), "--version"], capture_output=True, text=True).stdout.strip()
    say(f"Files written by `{version}` embedding convert into {out}:")

    # The one-file form ({clip_l, clip_g}, kohya's layout).
    one_file = [
        ("sdxl_clip_l_g.safetensors", "xl_real.safetensors", "<xl-real>"),
        ("diffusers_sdxl/learned_embeds.safetensors", "xl_cat.safetensors", None),
        ("sdxl_kohya.safetensors", "xl_kohya.safetensors", "<kohya-xl>"),
    ]
    for src, dst, token in one_file:
        say(f"  {convert(FIX / src, out / dst, 'sdxl', token)}")
    # diffusers' two files.
    (out / "two_real").mkdir(exist_ok=True)
    (out / "two_onetrainer").mkdir(exist_ok=True)
    two_files = [
        ("sdxl_clip_l_g.safetensors", out / "two_real", "<xl-real>"),
        ("sdxl_onetrainer_out.safetensors", out / "two_onetrainer", "<ot-xl>"),
    ]
    for src, dst, token in two_files:
        say(f"  {convert(FIX / src, dst, 'diffusers-sdxl', token)}")
    # Round trip through invert's own second file.
    say(f"  {convert(out / 'two_real/learned_embeds_2.safetensors', out / 'xl_real_again.safetensors', 'sdxl')}")

    # Layouts.
    for src, dst, token in one_file:
        l, g = fixture_tables(src)
        check_kohya_layout(out / dst, l, g)
    for src, dst, token in two_files:
        l, g = fixture_tables(src)
        check_two_files(dst / "learned_embeds.safetensors", token, l, g)
    a, b = load_file(out / "xl_real.safetensors"), load_file(out / "xl_real_again.safetensors")
    check(all(torch.equal(a[k], b[k]) for k in ["clip_l", "clip_g"]), "round trip changed values")
    say("- xl_real_again.safetensors (two_real/learned_embeds_2.safetensors read back, paired with its first "
        "file, written as sdxl): tensors identical to xl_real.safetensors")

    # diffusers.
    for src, dst, token in one_file:
        l, g = fixture_tables(src)
        token = token or "<xl-cat>"
        sd = load_file(out / dst)

        def load(pipe, sd=sd, token=token):
            pipe.load_textual_inversion(sd["clip_l"], token=token, text_encoder=pipe.text_encoder,
                                        tokenizer=pipe.tokenizer)
            pipe.load_textual_inversion(sd["clip_g"], token=token, text_encoder=pipe.text_encoder_2,
                                        tokenizer=pipe.tokenizer_2)

        check_in_diffusers(f"{dst} (sd[\"clip_l\"], sd[\"clip_g\"], token=)", load, token, l, g)
    for src, dst, token in two_files:
        l, g = fixture_tables(src)
        first = dst / "learned_embeds.safetensors"
        second = dst / "learned_embeds_2.safetensors"

        def load(pipe, first=first, second=second):
            pipe.load_textual_inversion(str(first))
            pipe.load_textual_inversion(str(second), text_encoder=pipe.text_encoder_2,
                                        tokenizer=pipe.tokenizer_2)

        check_in_diffusers(f"{dst.name}/learned_embeds[_2].safetensors (paths, token from the files)",
                           load, token, l, g)

    say(f"Versions: python {sys.version.split()[0]}, torch {torch.__version__}, diffusers "
        f"{diffusers.__version__}, transformers {transformers.__version__}, safetensors "
        f"{safetensors.__version__}, numpy {np.__version__}.")
    say("ALL CHECKS PASSED")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
