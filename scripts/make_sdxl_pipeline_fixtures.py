#!/usr/bin/env python3
"""A tiny random SDXL pipeline and its diffusers references, for invert's SDXL pipeline parity
tests (issue 20): prompt encoding with both text encoders, added conditions, the U-Net (also its
EMA copy in the single file), end-to-end images with three schedulers, and a learned word in both
embedding tables with its textual-inversion loss and gradients.

usage (from the repo root):
    /work/venv23/bin/python scripts/make_sdxl_pipeline_fixtures.py

Writes, under crates/invert-model/tests/fixtures/ (removing only these entries first):
    tiny-sdxl/                      diffusers folder for StableDiffusionXLPipeline, weights ONLY as
                                    fp16 variant files; tokenizer/ and tokenizer_2/ hold a tiny CLIP BPE
                                    (vocab.json + merges.txt, 1000 ids: see tiny_clip_bpe.py)
    tiny-sdxl.safetensors           the same fp16 tensors in the original SGM/LDM single-file layout
                                    (conditioner.embedders.0 = CLIP-L names, conditioner.embedders.1 =
                                    OpenCLIP names, model.diffusion_model, first_stage_model), plus an
                                    EMA copy of the U-Net (model_ema.*) whose values differ on purpose
    golden/tiny-sdxl.safetensors    inputs and reference outputs (F32; ids, timesteps I64; images U8)
and rewrites its own section of README.md (between the make_sdxl_pipeline_fixtures.py markers).

Tokenizers: a truncated copy of invert's bundled CLIP BPE (crates/invert-model/assets/clip-tokenizer,
OpenAI's id layout): the 512 byte tokens and the first 486 merges keep their ids 0..997, then
<|startoftext|> = 998 and <|endoftext|> = 999 (the full table's 49,408 rows would cost 4.8 MB here).
tokenizer pads with <|endoftext|> (999), tokenizer_2 with "!" (id 0), as
stabilityai/stable-diffusion-xl-base-1.0's tokenizer_2 (their tokenizer_config.json and
special_tokens_map.json are byte copies of configs/sdxl-base's). A learned word added to both gets id 1000.

CPU, float32, one thread, deterministic: torch.manual_seed(0) before each component, fixed
torch.Generator seeds for every input, golden metadata in sorted order (make_fixtures.py's
canonical_metadata_order). Nothing is downloaded. The script aborts on any failed check.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402  (sets the offline env, one thread, deterministic algorithms)

import hashlib  # noqa: E402
import html  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402

import ftfy  # noqa: E402
import regex  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import diffusers  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.loaders import single_file_utils as sfu  # noqa: E402
from diffusers.schedulers import scheduling_euler_ancestral_discrete as euler_a_mod  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer  # noqa: E402

from make_fixtures import VERSIONS, check, maxdiff, record  # noqa: E402
from tiny_clip_bpe import BOS, EOS, VOCAB, write_tokenizer_folder  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "crates/invert-model/tests/fixtures")
FOLDER = os.path.join(FIX, "tiny-sdxl")
SINGLE = os.path.join(FIX, "tiny-sdxl.safetensors")
GOLDEN = os.path.join(FIX, "golden", "tiny-sdxl.safetensors")
README = os.path.join(FIX, "README.md")
SDXL_CONFIGS = os.path.join(ROOT, "configs/sdxl-base")
OWN_SIZE_LIMIT = 2_000_000  # bytes, this script's three entries (1.75 MB)
BEGIN = "<!-- begin: scripts/make_sdxl_pipeline_fixtures.py (generated, do not edit) -->"
END = "<!-- end: scripts/make_sdxl_pipeline_fixtures.py -->"

PROMPT = "a photo of a cat"
NEG_BLURRY = "blurry, low quality"
LEARNED_PROMPT = "a photo of <sks>"
TI_PROMPTS = ["a photo of <sks>", "a rendering of a <sks>"]  # two textual-inversion templates
WORD = "<sks>"
HEIGHT, WIDTH, STEPS, GUIDANCE = 24, 32, 4, 5.0
SEED_ANCESTRAL = 31337
SEED_EMA = 4242  # the EMA copy's noise (as make_fixtures.py's tiny-sd1.ckpt had)
EMA_NUM_UPDATES = 470000

# the tiny tokenizer (tiny_clip_bpe.py): OpenAI's CLIP id layout truncated to 1000 ids
WORD_ID = VOCAB  # the learned word's id, added to both tokenizers

# ----------------------------------------------------------------------------------------------
# configs
# ----------------------------------------------------------------------------------------------
TE1 = dict(  # CLIP ViT-L/14 text model as SDXL's text_encoder, tiny
    vocab_size=VOCAB,
    max_position_embeddings=77,
    hidden_size=8,
    intermediate_size=16,
    num_hidden_layers=3,
    num_attention_heads=2,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-05,
    projection_dim=8,  # unused by CLIPTextModel
    bos_token_id=BOS,
    eos_token_id=EOS,
    pad_token_id=EOS,  # tokenizer pads with <|endoftext|>
)
TE2 = dict(  # OpenCLIP ViT-bigG/14 text model as SDXL's text_encoder_2, tiny
    vocab_size=VOCAB,
    max_position_embeddings=77,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=3,
    num_attention_heads=2,
    hidden_act="gelu",
    layer_norm_eps=1e-05,
    projection_dim=12,  # != hidden_size: a transposed text_projection cannot load
    bos_token_id=BOS,
    eos_token_id=EOS,  # not SDXL's legacy 2: transformers pools at the first 999, not at argmax(ids)
    pad_token_id=0,  # tokenizer_2 pads with "!" = id 0
)
TIME_DIM = 8
CONTEXT = TE1["hidden_size"] + TE2["hidden_size"]  # 24
UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(8, 16),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(2, 4),  # head counts (diffusers' naming; SDXL [5, 10, 20])
    transformer_layers_per_block=(1, 2),
    use_linear_projection=True,
    cross_attention_dim=CONTEXT,
    addition_embed_type="text_time",
    addition_time_embed_dim=TIME_DIM,
    projection_class_embeddings_input_dim=6 * TIME_DIM + TE2["projection_dim"],  # 60
    norm_num_groups=4,
    upcast_attention=None,  # SDXL's config.json says null
)
VAE = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=[8, 16],  # 2 levels: latents are H/2 x W/2
    down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
    up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
    layers_per_block=2,  # as SDXL's VAE (decoder levels hold 3 resnets)
    latent_channels=4,
    norm_num_groups=4,
    sample_size=32,
    scaling_factor=0.13025,  # SDXL's
    force_upcast=True,  # SDXL's (irrelevant in float32: diffusers only upcasts an fp16 VAE)
)

GOLD_DOC = {}  # golden name -> meaning (README)


def put(gold, name, tensor, meaning):
    check(name not in gold, f"golden name {name} used twice")
    t = tensor.detach().contiguous()
    if t.dtype.is_floating_point:
        t = t.float()
    gold[name] = t.clone()
    GOLD_DOC[name] = meaning


def perturb_(model):
    """+ N(0, 0.05^2) on every parameter (global RNG): larger than the inits so every layer matters."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def build():
    torch.manual_seed(0)
    te1 = perturb_(CLIPTextModel(CLIPTextConfig(**TE1)))
    torch.manual_seed(0)
    te2 = perturb_(CLIPTextModelWithProjection(CLIPTextConfig(**TE2)))
    torch.manual_seed(0)
    unet = perturb_(UNet2DConditionModel(**UNET))
    torch.manual_seed(0)
    vae = perturb_(AutoencoderKL(**VAE))
    return te1, te2, unet, vae


def f16(model):
    return {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}


def te1_file_sd(te1):
    """transformers-4 / published layout: every key under `text_model.` (transformers 5 flattens CLIPTextModel)."""
    sd = f16(te1)
    check(not any(k.startswith("text_model.") for k in sd), "CLIPTextModel is expected flat in transformers 5")
    return {"text_model." + k: v for k, v in sd.items()}


def write_folder(te1, te2, unet, vae):
    os.makedirs(FOLDER)
    with open(os.path.join(SDXL_CONFIGS, "model_index.json")) as f:
        index = json.load(f)
    index["_diffusers_version"] = diffusers.__version__
    check(index["tokenizer"] == index["tokenizer_2"] == ["transformers", "CLIPTokenizer"], "model_index tokenizers")
    check(index["force_zeros_for_empty_prompt"] is True, "model_index force_zeros_for_empty_prompt")
    with open(os.path.join(FOLDER, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")
    os.makedirs(os.path.join(FOLDER, "scheduler"))
    shutil.copyfile(os.path.join(SDXL_CONFIGS, "scheduler/scheduler_config.json"),
                    os.path.join(FOLDER, "scheduler/scheduler_config.json"))
    write_tokenizers()
    for name, m in (("unet", unet), ("vae", vae)):
        d = os.path.join(FOLDER, name)
        m.save_config(d)
        save_file(f16(m), os.path.join(d, "diffusion_pytorch_model.fp16.safetensors"), metadata={"format": "pt"})
    for name, m, sd, arch in (("text_encoder", te1, te1_file_sd(te1), "CLIPTextModel"),
                              ("text_encoder_2", te2, f16(te2), "CLIPTextModelWithProjection")):
        d = os.path.join(FOLDER, name)
        os.makedirs(d)
        m.config.architectures = [arch]
        m.config.dtype = torch.float32  # as make_fixtures.py's tiny-sd1 (fp16 files, "dtype": "float32")
        m.config.save_pretrained(d)
        save_file(sd, os.path.join(d, "model.fp16.safetensors"), metadata={"format": "pt"})


# ----------------------------------------------------------------------------------------------
# the tiny tokenizer
# ----------------------------------------------------------------------------------------------
def write_tokenizers():
    """tokenizer/ and tokenizer_2/: the tiny BPE with SDXL base 1.0's own tokenizer_config.json /
    special_tokens_map.json (byte copies from configs/sdxl-base)."""
    for sub in ("tokenizer", "tokenizer_2"):
        write_tokenizer_folder(os.path.join(FOLDER, sub), os.path.join(SDXL_CONFIGS, sub),
                               "<|endoftext|>" if sub == "tokenizer" else "!")


class SlowClip:
    """OpenAI's SimpleTokenizer algorithm (CLIP's simple_tokenizer.py; transformers 4's slow CLIPTokenizer
    is a port of it) on a folder's vocab.json + merges.txt: an implementation independent of the
    `tokenizers` library that transformers 5's CLIPTokenizer runs on (transformers 5 has no slow one)."""

    PAT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

    def __init__(self, folder, pad, added=()):
        self.encoder = json.load(open(os.path.join(folder, "vocab.json"), encoding="utf-8"))
        lines = open(os.path.join(folder, "merges.txt"), encoding="utf-8").read().split("\n")
        check(lines[0] == "#version: 0.2" and lines[-1] == "", "merges.txt layout")
        self.ranks = {tuple(m.split()): i for i, m in enumerate(lines[1:-1])}
        bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
            list(range(ord("®"), ord("ÿ") + 1))
        cs, n = bs[:], 0
        for b in range(256):
            if b not in bs:
                bs.append(b)
                cs.append(256 + n)
                n += 1
        self.byte_encoder = dict(zip(bs, map(chr, cs)))
        self.pat = regex.compile(self.PAT, regex.IGNORECASE)
        self.added = {w: len(self.encoder) + i for i, w in enumerate(added)}
        self.pad = self.encoder[pad]

    def bpe(self, token):
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            bigram = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if bigram not in self.ranks:
                break
            new, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == bigram:
                    new.append(word[i] + word[i + 1])
                    i += 2
                else:
                    new.append(word[i])
                    i += 1
            word = tuple(new)
        return word

    def text_ids(self, text):
        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()  # OpenAI's basic_clean
        text = regex.sub(r"\s+", " ", text).strip().lower()  # whitespace_clean, lower
        out = []
        for tok in self.pat.findall(text):
            tok = "".join(self.byte_encoder[b] for b in tok.encode("utf-8"))
            out += [self.encoder[t] for t in self.bpe(tok)]
        return out

    def __call__(self, text, max_length=77):
        pieces = [text]
        if self.added:  # added words are split out first, as transformers' trie does
            pieces = [p for p in regex.split("(" + "|".join(map(regex.escape, self.added)) + ")", text) if p]
        ids = []
        for piece in pieces:
            ids += [self.added[piece]] if piece in self.added else self.text_ids(piece)
        ids = [self.encoder["<|startoftext|>"]] + ids[: max_length - 2] + [self.encoder["<|endoftext|>"]]
        return ids + [self.pad] * (max_length - len(ids))


def load_tokenizers(added=()):
    """the folder's two tokenizers with transformers' CLIPTokenizer (built from vocab.json + merges.txt)."""
    toks = []
    for sub in ("tokenizer", "tokenizer_2"):
        t = CLIPTokenizer.from_pretrained(FOLDER, subfolder=sub, local_files_only=True)
        for w in added:
            check(t.add_tokens(w) == 1, f"add_tokens {w}")
        toks.append(t)
    return toks


TOKEN_CHECK_TEXTS = [PROMPT, NEG_BLURRY, LEARNED_PROMPT, "", "A  Photo of 2 CATS, sitting on a mat.",
                     "don't   stop: 3.14 - caf\u00e9 \u2764 x<sks>y"]
BANG = "a cat!"  # tokenizer_2's pad token "!" in a prompt: transformers and OpenAI differ (see check_tokenizers)


def check_tokenizers(sec):
    t1, t2 = load_tokenizers()
    check(len(t1) == len(t2) == VOCAB and t1.model_max_length == t2.model_max_length == 77, "tokenizer sizes")
    check((t1.bos_token_id, t1.eos_token_id, t1.pad_token_id) == (BOS, EOS, EOS), "tokenizer special ids")
    check((t2.bos_token_id, t2.eos_token_id, t2.pad_token_id) == (BOS, EOS, 0), "tokenizer_2 special ids")
    a1, a2 = load_tokenizers(added=(WORD,))
    for sub, pad, fast, fast_l in (("tokenizer", "<|endoftext|>", t1, a1), ("tokenizer_2", "!", t2, a2)):
        check(fast_l.convert_tokens_to_ids(WORD) == WORD_ID, f"{sub}: {WORD} id")
        slow = SlowClip(os.path.join(FOLDER, sub), pad)
        slow_l = SlowClip(os.path.join(FOLDER, sub), pad, added=(WORD,))
        for text in TOKEN_CHECK_TEXTS:
            got, want = ids_of(fast, text)[0].tolist(), slow(text)
            check(got == want, f"{sub} {text!r}: CLIPTokenizer {got} vs SimpleTokenizer {want}")
            check(all(i < VOCAB for i in want), f"{sub} {text!r}: an id >= {VOCAB}")
            got, want = ids_of(fast_l, text)[0].tolist(), slow_l(text)
            check(got == want, f"{sub} {text!r} with {WORD}: CLIPTokenizer {got} vs SimpleTokenizer {want}")
            check((WORD_ID in want) == (WORD in text) and all(i < VOCAB for i in want if i != WORD_ID),
                  f"{sub} {text!r}: learned id")
    # transformers registers tokenizer_2's pad token "!" as a special added token and splits every "!" of a
    # prompt out as id 0; OpenAI's / OpenCLIP's tokenizer reads it as text ("!</w>" = 256). No golden prompt
    # holds a "!".
    check(all("!" not in t for t in [PROMPT, NEG_BLURRY, LEARNED_PROMPT] + TI_PROMPTS), "a golden prompt with '!'")
    bang_fast = trimmed(ids_of(t2, BANG))
    bang_slow = SlowClip(os.path.join(FOLDER, "tokenizer_2"), "!")(BANG)
    n = len(bang_fast) - 2  # the "!" position
    check(bang_fast[:n] == bang_slow[:n] and bang_fast[n] == 0 and bang_slow[n] == 256
          and trimmed(ids_of(t1, BANG))[-2] == 256, f"'!' in tokenizer_2: {bang_fast} vs {bang_slow[:8]}")
    shown = "; ".join(f'"{t}" = {trimmed(ids_of(t1, t))}' for t in (PROMPT, NEG_BLURRY, ""))
    record(sec, "tiny tokenizers (tokenizer/, tokenizer_2/: vocab.json + merges.txt, 1000 ids)",
           f"transformers' CLIPTokenizer and an OpenAI SimpleTokenizer re-implementation give the same ids for "
           f"{len(TOKEN_CHECK_TEXTS)} texts, with and without {WORD} added (id {WORD_ID}); every other id < {VOCAB}; "
           f"padding {EOS} (tokenizer) and 0 (tokenizer_2); {shown}. Known difference, not in any golden "
           f'prompt: transformers\' tokenizer_2 splits a "!" out as its pad token, id 0 ("{BANG}" = {bang_fast}), '
           f'OpenAI\'s tokenizer (and tokenizer 1) give "!</w>" = 256')


def trimmed(ids):
    """a [1, 77] id row up to and including its first end-of-text."""
    return ids[0, : int(first_eos(ids)[0]) + 1].tolist()


def load_pipeline():
    pipe = StableDiffusionXLPipeline.from_pretrained(
        FOLDER, variant="fp16", torch_dtype=torch.float32, local_files_only=True, add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    check(type(pipe.tokenizer).__name__ == type(pipe.tokenizer_2).__name__ == "CLIPTokenizer", "pipeline tokenizers")
    check(len(pipe.tokenizer) == len(pipe.tokenizer_2) == VOCAB and pipe.tokenizer.pad_token_id == EOS
          and pipe.tokenizer_2.pad_token_id == 0, "pipeline tokenizers: the folder's")
    return pipe


def assert_sd_equal(want, model, what):
    got = model.state_dict()
    check(set(want) == set(got), f"{what}: key sets differ: {sorted(set(want) ^ set(got))[:10]}")
    for k in want:
        check(got[k].device.type != "meta", f"{what}: {k} left on the meta device")
        check(got[k].dtype == torch.float32, f"{what}: {k} is {got[k].dtype}")
        check(torch.equal(got[k], want[k]), f"{what}: {k} differs (max {maxdiff(got[k], want[k])})")
    return len(want)


def ids_of(tok, prompt):
    return tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True,
               return_tensors="pt").input_ids


# ----------------------------------------------------------------------------------------------
# single file (SGM / LDM layout)
# ----------------------------------------------------------------------------------------------
def ema_key(ldm_key):
    """LDM's EMA naming: model.diffusion_model.X.Y.Z -> model_ema.diffusion_modelXYZ (dots dropped)."""
    return "model_ema." + "".join(ldm_key.split(".")[1:])


def ema_copy(unet_ldm):
    """an EMA copy of the U-Net, deliberately different: stored F16 weights + N(0, 0.02^2), rounded to F16."""
    gen = torch.Generator().manual_seed(SEED_EMA)
    ema = {}
    for k, v in unet_ldm.items():
        noise = torch.randn(v.shape, generator=gen) * 0.02
        ema[ema_key(k)] = (v.float() + noise).half()
    check(len(ema) == len(unet_ldm), "EMA key names collide")
    return ema


def single_file_dict(te1, te2, unet, vae):
    sd = {}
    te1_sd = te1_file_sd(te1)
    sd.update({"conditioner.embedders.0.transformer." + k: v for k, v in te1_sd.items()})
    # position_ids: the persistent buffer of transformers-4 era CLIP state dicts (real SD1 files carry it)
    sd["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    pre2 = "conditioner.embedders.1.model."
    t2 = f16(te2)
    proj = t2.pop("text_projection.weight")  # [projection_dim, width] (nn.Linear)
    check(all(k.startswith("text_model.") for k in t2), "te2 keys")
    sd.update(mf.te_to_openclip({k.removeprefix("text_model."): v for k, v in t2.items()},
                                TE2["num_hidden_layers"], prefix=pre2))
    sd[pre2 + "text_projection"] = proj.t().contiguous()  # OpenCLIP: x @ text_projection, [width, projection_dim]
    sd[pre2 + "logit_scale"] = torch.tensor(4.6052, dtype=torch.float16)  # ln(100), unused by SDXL
    unet_ldm = mf.unet_to_ldm(unet, f16(unet))
    sd.update(unet_ldm)
    sd["model_ema.decay"] = torch.tensor(0.9999, dtype=torch.float32)
    sd["model_ema.num_updates"] = torch.tensor(EMA_NUM_UPDATES, dtype=torch.int32)
    sd.update(ema_copy(unet_ldm))
    sd.update(mf.vae_to_ldm(vae, f16(vae)))
    return {k: v.clone().contiguous() for k, v in sd.items()}


def check_single_file(sec, folder_pipe):
    want = {n: {k: v.clone() for k, v in getattr(folder_pipe, n).state_dict().items()}
            for n in ("text_encoder", "text_encoder_2", "unet", "vae")}
    lsd = load_file(SINGLE)
    counts = {p: sum(k.startswith(p) for k in lsd) for p in (
        "conditioner.embedders.0.", "conditioner.embedders.1.", "model.diffusion_model.", "model_ema.",
        "first_stage_model.")}
    counts["other"] = len(lsd) - sum(counts.values())
    check(counts["other"] == 0, "unexpected top-level keys in the single file")
    inferred = sfu.infer_diffusers_model_type(lsd)
    check(inferred == "v1", f"infer_diffusers_model_type gave {inferred}")
    record(sec, "infer_diffusers_model_type(tiny-sdxl.safetensors)",
           '"v1" (diffusers recognises "xl_base" only by conditioner.embedders.1.model.transformer.resblocks.9.*, '
           "absent with 3 layers): from_single_file needs config=tiny-sdxl/")
    check(counts["model_ema."] == counts["model.diffusion_model."] + 2, "one EMA key per U-Net key + 2")
    check(lsd["model_ema.decay"].dtype == torch.float32 and lsd["model_ema.num_updates"].dtype == torch.int32,
          "EMA scalars")
    check(all(v.dtype == torch.float16 for k, v in lsd.items()
              if not k.endswith("position_ids") and k not in ("model_ema.decay", "model_ema.num_updates")),
          "f16 tensors")
    record(sec, "tiny-sdxl.safetensors tensor counts (F16 except position_ids I64, model_ema.decay F32, "
           "model_ema.num_updates I32)", json.dumps(counts))

    # component-wise with diffusers' converters (pure key mapping, values compared after f16 -> f32)
    fl = lambda d: {k: v.float() for k, v in d.items()}  # noqa: E731
    cu = sfu.convert_ldm_unet_checkpoint(lsd, dict(folder_pipe.unet.config))
    cv = sfu.convert_ldm_vae_checkpoint(lsd, dict(folder_pipe.vae.config))
    for what, got, ref in (("convert_ldm_unet_checkpoint", fl(cu), want["unet"]),
                           ("convert_ldm_vae_checkpoint", fl(cv), want["vae"])):
        check(set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref), what)
    n = {}
    for comp, cls in (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)):
        m = sfu.create_diffusers_clip_model_from_ldm(cls, lsd, subfolder=comp, config=FOLDER,
                                                     torch_dtype=torch.float32, local_files_only=True)
        n[comp] = assert_sd_equal(want[comp], m, f"create_diffusers_clip_model_from_ldm({cls.__name__})")
    record(sec, "convert_ldm_unet/vae_checkpoint + create_diffusers_clip_model_from_ldm (both encoders) "
           "== folder (fp16 variant, f32)",
           f"identical ({len(want['unet'])} + {len(want['vae'])} + {n['text_encoder']} + "
           f"{n['text_encoder_2']} tensors)")

    try:
        sp = StableDiffusionXLPipeline.from_single_file(
            SINGLE, config=FOLDER, local_files_only=True, torch_dtype=torch.float32, add_watermarker=False,
        )
    except Exception as e:  # noqa: BLE001
        raise SystemExit(f"VERIFICATION FAILED: StableDiffusionXLPipeline.from_single_file: {type(e).__name__}: {e}")
    sp.set_progress_bar_config(disable=True)
    total = 0
    for comp in want:
        total += assert_sd_equal(want[comp], getattr(sp, comp), f"from_single_file {comp}")
    check(type(sp.scheduler).__name__ == "EulerDiscreteScheduler", "single-file scheduler")
    check(dict(sp.scheduler.config) == dict(folder_pipe.scheduler.config), "single-file scheduler config")
    check(sp.config.force_zeros_for_empty_prompt is True, "single-file force_zeros_for_empty_prompt")
    for a, b in ((sp.tokenizer, folder_pipe.tokenizer), (sp.tokenizer_2, folder_pipe.tokenizer_2)):
        check(len(a) == VOCAB and a.pad_token_id == b.pad_token_id
              and all(torch.equal(ids_of(a, t), ids_of(b, t)) for t in TOKEN_CHECK_TEXTS), "single-file tokenizers")
    record(sec, "StableDiffusionXLPipeline.from_single_file(tiny-sdxl.safetensors, config=tiny-sdxl/, "
           "torch_dtype=float32)",
           f"loads (non-EMA U-Net: diffusers' default extract_ema=False); all {total} parameters of text_encoder, "
           f"text_encoder_2, unet, vae bit-identical to the folder's; tokenizers from tiny-sdxl/tokenizer{{,_2}} "
           f"(same ids); scheduler EulerDiscreteScheduler with the folder's config")
    return sp


def check_ema(sec, pipe, gold):
    """diffusers' single-file loader with extract_ema=True gives the file's EMA weights; their noise prediction
    for the inputs of unet.noise_pred is golden unet.noise_pred_ema."""
    lsd = load_file(SINGLE)
    kw = dict(config=FOLDER, subfolder="unet", local_files_only=True, torch_dtype=torch.float32)
    try:
        u_ema = UNet2DConditionModel.from_single_file(SINGLE, extract_ema=True, **kw).eval()
        u_reg = UNet2DConditionModel.from_single_file(SINGLE, **kw).eval()
    except Exception as e:  # noqa: BLE001
        raise SystemExit(f"VERIFICATION FAILED: UNet2DConditionModel.from_single_file: {type(e).__name__}: {e}")
    ldm_map = mf.unet_ldm_map(pipe.unet)
    want = {k: lsd[ema_key("model.diffusion_model." + v)].float() for k, v in ldm_map.items()}
    n = assert_sd_equal(want, u_ema, "from_single_file(extract_ema=True) unet")
    assert_sd_equal({k: v.clone() for k, v in pipe.unet.state_dict().items()}, u_reg, "from_single_file unet")
    with torch.no_grad():
        added = {"text_embeds": gold["unet.text_embeds"], "time_ids": gold["unet.time_ids"]}
        args = (gold["unet.sample"], gold["unet.timesteps"], gold["unet.encoder_hidden_states"])
        out = u_ema(*args, added_cond_kwargs=added).sample
        reg = u_reg(*args, added_cond_kwargs=added).sample
    check(torch.equal(reg, gold["unet.noise_pred"]), "single-file U-Net (no EMA) == unet.noise_pred")
    d = maxdiff(out, gold["unet.noise_pred"])
    check(d > 1e-2, f"EMA output too close to the non-EMA output ({d})")
    put(gold, "unet.noise_pred_ema", out, "the same with the EMA weights of tiny-sdxl.safetensors "
        "(UNet2DConditionModel.from_single_file(..., extract_ema=True))")
    record(sec, "UNet2DConditionModel.from_single_file(tiny-sdxl.safetensors, config=tiny-sdxl/, subfolder='unet', "
           "extract_ema=True)", f"its {n} parameters == the file's model_ema.* values (f16 -> f32); "
           f"without extract_ema == the folder's U-Net, whose output is unet.noise_pred exactly; "
           f"max abs(noise_pred_ema - noise_pred) = {d:.3g} (EMA deliberately differs)")


# ----------------------------------------------------------------------------------------------
# references
# ----------------------------------------------------------------------------------------------
def encoders(te1, te2, ids1, ids2):
    o1 = te1(ids1, output_hidden_states=True)
    o2 = te2(ids2, output_hidden_states=True)
    return o1, o2


def first_eos(ids):
    return (ids == EOS).int().argmax(-1)


def prompt_encoding(sec, pipe, gold):
    t1, t2 = pipe.tokenizer, pipe.tokenizer_2
    te1, te2 = pipe.text_encoder, pipe.text_encoder_2
    cases = {"prompt": PROMPT, "neg_empty": "", "neg_blurry": NEG_BLURRY}
    enc = {}
    with torch.no_grad():
        for case, text in cases.items():
            ids1, ids2 = ids_of(t1, text), ids_of(t2, text)
            o1, o2 = encoders(te1, te2, ids1, ids2)
            n = int(first_eos(ids1)[0]) + 1
            q = f'"{text}"'
            put(gold, f"ids_1.{case}", ids1, f"tokenizer ids of {q} (pad {EOS}), I64")
            put(gold, f"ids_2.{case}", ids2, f"tokenizer_2 ids of {q} (pad 0), I64")
            put(gold, f"penultimate_1.{case}", o1.hidden_states[-2],
                f"text_encoder hidden_states[-2] of {q} (no final LayerNorm)")
            put(gold, f"penultimate_2.{case}", o2.hidden_states[-2],
                f"text_encoder_2 hidden_states[-2] of {q} (no final LayerNorm)")
            put(gold, f"text_embeds_2.{case}", o2.text_embeds,
                f"text_encoder_2 text_embeds of {q}: text_projection(final_layer_norm(last)[first {EOS}])")
            pooled = te2.text_model.final_layer_norm(o2.hidden_states[-1])[0, int(first_eos(ids2)[0])]
            check(torch.allclose(te2.text_projection(pooled)[None], o2.text_embeds, atol=1e-6, rtol=0),
                  f"{case}: text_embeds is not pooled at the first end-of-text")
            check(torch.equal(ids1[0, :n], ids2[0, :n]) and (ids1[0, n:] == EOS).all() and (ids2[0, n:] == 0).all(),
                  f"{case}: tokenizers differ only by padding")
            check(int(ids1.max()) < VOCAB and int(ids2.max()) < VOCAB, f"{case}: ids < {VOCAB}")
            enc[case] = (o1, o2)
        record(sec, "token ids (both tokenizers)", "; ".join(
            f'"{t}" = {trimmed(gold[f"ids_1.{c}"])}' for c, t in cases.items()))

        # text_encoder_2 on the prompt padded with the end-of-text id instead of 0 (as tokenizer 1 pads):
        # pooled at the FIRST end-of-text, so text_embeds equal the 0-padded prompt's (causal attention)
        ids2 = gold["ids_2.prompt"].clone()
        n = int(first_eos(ids2)[0]) + 1
        ids2[0, n:] = EOS
        o2 = te2(ids2, output_hidden_states=True)
        p0 = enc["prompt"][1]
        check(torch.equal(o2.text_embeds, p0.text_embeds), "EOS padding: text_embeds == the 0-padded prompt's")
        check(torch.equal(o2.hidden_states[-2][:, :n], p0.hidden_states[-2][:, :n]), "EOS padding: causal prefix")
        d_pad = maxdiff(o2.hidden_states[-2][:, n:], p0.hidden_states[-2][:, n:])
        check(d_pad > 1e-2, "EOS padding changes the padded positions")
        last = te2.text_model.final_layer_norm(o2.hidden_states[-1])
        d_last = maxdiff(te2.text_projection(last[:, -1]), o2.text_embeds)
        check(d_last > 1e-2, "pooling at the last end-of-text would differ")
        put(gold, "ids_2.eos_padded", ids2, f'"{PROMPT}" for text_encoder_2 padded with {EOS} (end of text) '
            "instead of 0: ids_2.prompt with every pad replaced, I64")
        put(gold, "penultimate_2.eos_padded", o2.hidden_states[-2],
            "text_encoder_2 hidden_states[-2] of ids_2.eos_padded (== penultimate_2.prompt up to the first "
            f"{EOS}, different after it)")
        put(gold, "text_embeds_2.eos_padded", o2.text_embeds,
            f"text_encoder_2 text_embeds of ids_2.eos_padded: pooled at the FIRST {EOS} (== text_embeds_2.prompt)")
        record(sec, f"text_encoder_2 with {EOS} padding (ids_2.eos_padded)",
               f"text_embeds == the 0-padded prompt's (pooled at the first {EOS}, position {n - 1}); penultimate "
               f"equal up to it, differs after it by up to {d_pad:.3g}; pooling at the last {EOS} would differ by "
               f"{d_last:.3g}")

        # StableDiffusionXLPipeline.encode_prompt
        pe_ref = torch.cat([enc["prompt"][0].hidden_states[-2], enc["prompt"][1].hidden_states[-2]], dim=-1)
        for neg_case, neg in (("neg_none", None), ("neg_empty", ""), ("neg_blurry", NEG_BLURRY)):
            pe, npe, pp, npp = pipe.encode_prompt(PROMPT, device="cpu", num_images_per_prompt=1,
                                                  do_classifier_free_guidance=True, negative_prompt=neg)
            check(torch.equal(pe, pe_ref), "encode_prompt prompt_embeds == cat(penultimate_1, penultimate_2)")
            check(torch.equal(pp, enc["prompt"][1].text_embeds), "encode_prompt pooled == text_embeds_2.prompt")
            if neg_case == "neg_none":
                put(gold, "encode.prompt_embeds", pe, f'encode_prompt("{PROMPT}") prompt_embeds = '
                    "cat(penultimate_1.prompt, penultimate_2.prompt, dim=-1)")
                put(gold, "encode.pooled_prompt_embeds", pp,
                    "encode_prompt pooled_prompt_embeds = text_embeds_2.prompt")
                check(torch.count_nonzero(npe) == 0 and torch.count_nonzero(npp) == 0, "neg None must give zeros")
                what = "negative_prompt=None: zeros (force_zeros_for_empty_prompt)"
            else:
                o1, o2 = enc[neg_case]
                check(torch.equal(npe, torch.cat([o1.hidden_states[-2], o2.hidden_states[-2]], -1)), "neg embeds")
                check(torch.equal(npp, o2.text_embeds), "neg pooled")
                check(torch.count_nonzero(npe) > 0, f"{neg_case} must not be zeros")
                what = f'negative_prompt="{neg}": encoded (NOT zeros)'
            put(gold, f"encode.{neg_case}.negative_prompt_embeds", npe, f"encode_prompt negative_prompt_embeds, {what}")
            put(gold, f"encode.{neg_case}.negative_pooled_prompt_embeds", npp,
                f"encode_prompt negative_pooled_prompt_embeds, {what}")
        record(sec, "encode_prompt with force_zeros_for_empty_prompt=true",
               'zeros only for negative_prompt=None; negative_prompt="" is encoded like any prompt '
               "(diffusers: zero_out_negative_prompt = negative_prompt is None and force_zeros_for_empty_prompt)")


def unet_reference(sec, pipe, gold):
    atid = pipe._get_add_time_ids((HEIGHT, WIDTH), (0, 0), (HEIGHT, WIDTH), dtype=torch.float32,
                                  text_encoder_projection_dim=TE2["projection_dim"])
    check(atid.tolist() == [[HEIGHT, WIDTH, 0, 0, HEIGHT, WIDTH]], f"add_time_ids {atid}")
    put(gold, "add_time_ids", atid, f"pipe._get_add_time_ids(({HEIGHT}, {WIDTH}), (0, 0), ({HEIGHT}, {WIDTH})): "
        "(orig_h, orig_w, crop_top, crop_left, target_h, target_w)")
    g = torch.Generator().manual_seed(2001)
    sample = torch.randn(2, 4, HEIGHT // 2, WIDTH // 2, generator=g)
    t = torch.tensor([751, 751], dtype=torch.int64)
    ctx = torch.cat([gold["encode.neg_blurry.negative_prompt_embeds"], gold["encode.prompt_embeds"]])
    te = torch.cat([gold["encode.neg_blurry.negative_pooled_prompt_embeds"], gold["encode.pooled_prompt_embeds"]])
    tid = torch.cat([atid, atid])
    with torch.no_grad():
        out = pipe.unet(sample, t, encoder_hidden_states=ctx,
                        added_cond_kwargs={"text_embeds": te, "time_ids": tid}).sample
        other = pipe.unet(sample, t, encoder_hidden_states=ctx,
                          added_cond_kwargs={"text_embeds": te, "time_ids": tid + 8.0}).sample
    d = maxdiff(out, other)
    check(d > 1e-3, f"time_ids do not matter ({d})")
    put(gold, "unet.sample", sample, "U-Net input latents (randn, seed 2001)")
    put(gold, "unet.timesteps", t, "U-Net timesteps, I64 (751 = the first Euler step of 4, as the CFG batch)")
    put(gold, "unet.encoder_hidden_states", ctx,
        "cat([encode.neg_blurry.negative_prompt_embeds, encode.prompt_embeds]) (CFG order: uncond, cond)")
    put(gold, "unet.text_embeds", te,
        "cat([encode.neg_blurry.negative_pooled_prompt_embeds, encode.pooled_prompt_embeds])")
    put(gold, "unet.time_ids", tid, "cat([add_time_ids, add_time_ids])")
    put(gold, "unet.noise_pred", out, "unet(sample, timesteps, encoder_hidden_states, "
        "added_cond_kwargs={text_embeds, time_ids}).sample")
    record(sec, "U-Net reference", f"noise_pred std {out.std():.4f}; time_ids + 8 changes it by {d:.3g}")


class NoiseRecorder:
    """wraps the randn_tensor that EulerAncestralDiscreteScheduler.step draws its noise with."""

    def __init__(self, replay=None):
        self.orig = euler_a_mod.randn_tensor
        self.draws, self.replay = [], replay

    def __call__(self, *a, **kw):
        if self.replay is not None:
            x = self.replay[len(self.draws)].clone()
        else:
            x = self.orig(*a, **kw)
        self.draws.append(x.clone())
        return x

    def __enter__(self):
        euler_a_mod.randn_tensor = self
        return self

    def __exit__(self, *exc):
        euler_a_mod.randn_tensor = self.orig


def run_pipe(pipe, prompt, neg, latents, generator=None):
    steps = []

    def on_step_end(_p, i, t, kw):
        steps.append(kw["latents"].detach().clone())
        return kw

    with torch.no_grad():
        out = pipe(prompt=prompt, negative_prompt=neg, height=HEIGHT, width=WIDTH, num_inference_steps=STEPS,
                   guidance_scale=GUIDANCE, latents=latents.clone(), output_type="np", generator=generator,
                   callback_on_step_end=on_step_end, callback_on_step_end_tensor_inputs=["latents"]).images
    check(len(steps) == STEPS, "callback per step")
    return out, torch.stack(steps)


def e2e(sec, pipe, gold, learned_pipe):
    init = torch.randn(1, 4, HEIGHT // 2, WIDTH // 2, generator=torch.Generator().manual_seed(3001))
    put(gold, "e2e.init_latents", init, "the latents= given to the pipeline (randn, seed 3001); the pipeline "
        "multiplies them by scheduler.init_noise_sigma first")
    base_cfg = dict(pipe.scheduler.config)
    cases = [
        ("euler.neg_none", pipe, PROMPT, None, EulerDiscreteScheduler, False),
        ("euler.neg_empty", pipe, PROMPT, "", EulerDiscreteScheduler, False),
        ("euler.neg_blurry", pipe, PROMPT, NEG_BLURRY, EulerDiscreteScheduler, False),
        ("ddim.neg_blurry", pipe, PROMPT, NEG_BLURRY, DDIMScheduler, False),
        ("euler_a.neg_blurry", pipe, PROMPT, NEG_BLURRY, EulerAncestralDiscreteScheduler, True),
        ("euler.learned", learned_pipe, LEARNED_PROMPT, NEG_BLURRY, EulerDiscreteScheduler, False),
    ]
    summary = []
    for name, p, prompt, neg, cls, ancestral in cases:
        p.scheduler = cls.from_config(base_cfg)
        gen = torch.Generator().manual_seed(SEED_ANCESTRAL) if ancestral else None
        if ancestral:
            with NoiseRecorder() as rec:
                img, steps = run_pipe(p, prompt, neg, init, generator=gen)
            noise = torch.stack(rec.draws)
            check(noise.shape[0] == STEPS, f"ancestral draws {noise.shape}")
            with NoiseRecorder(replay=noise) as rep:  # the stored noise alone reproduces the run
                img2, steps2 = run_pipe(p, prompt, neg, init, generator=None)
            check(len(rep.draws) == STEPS and np.array_equal(img, img2) and torch.equal(steps, steps2),
                  "ancestral replay with the stored noise")
            img3, _ = run_pipe(p, prompt, neg, init, generator=torch.Generator().manual_seed(SEED_ANCESTRAL))
            check(np.array_equal(img, img3), "ancestral run repeatable with the same seed")
            put(gold, f"e2e.{name}.step_noise", noise, "the noise EulerAncestralDiscreteScheduler.step i "
                f"drew (torch.Generator().manual_seed({SEED_ANCESTRAL}) passed as generator=); feed it to reproduce")
        else:
            img, steps = run_pipe(p, prompt, neg, init)
        # output_type="latent" gives the latents before decoding: the last callback's
        with torch.no_grad():
            lat = p(prompt=prompt, negative_prompt=neg, height=HEIGHT, width=WIDTH, num_inference_steps=STEPS,
                    guidance_scale=GUIDANCE, latents=init.clone(), output_type="latent",
                    generator=torch.Generator().manual_seed(SEED_ANCESTRAL) if ancestral else None).images
        check(torch.equal(lat, steps[-1]), f"{name}: output_type=latent == last step latents")
        with torch.no_grad():  # decode as the pipeline does (f32 VAE: no upcast), postprocess to [0, 1]
            dec = p.vae.decode(lat / p.vae.config.scaling_factor).sample
        own = (dec / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
        check(np.array_equal(own, img), f"{name}: decode(latents / scaling_factor) != the pipeline's image")
        check(img.shape == (1, HEIGHT, WIDTH, 3) and img.dtype == np.float32, f"{name} image {img.shape}")
        u8 = (img * 255).round().astype(np.uint8)
        ts = p.scheduler.timesteps
        check(torch.equal(ts, ts.round()), "integral timesteps")
        desc = (f'prompt "{prompt}", negative_prompt {json.dumps(neg)}, {cls.__name__}.from_config(folder '
                f"scheduler), {STEPS} steps, guidance {GUIDANCE}, {HEIGHT}x{WIDTH}")
        put(gold, f"e2e.{name}.image", torch.from_numpy(u8), f"(images * 255).round() of output_type='np' "
            f"(= (vae.decode(latents / 0.13025) / 2 + 0.5).clamp(0, 1), NHWC): {desc}")
        put(gold, f"e2e.{name}.image_float", torch.from_numpy(img), "the same image before rounding, F32 in [0, 1]")
        put(gold, f"e2e.{name}.latents", steps[-1], "final latents before decoding (== output_type='latent')")
        put(gold, f"e2e.{name}.step_latents", steps, "latents after each scheduler step (callback_on_step_end)")
        put(gold, f"e2e.{name}.timesteps", ts.to(torch.int64), "scheduler.timesteps of the run, I64")
        if hasattr(p.scheduler, "sigmas"):
            put(gold, f"e2e.{name}.sigmas", p.scheduler.sigmas, "scheduler.sigmas of the run (last = 0)")
        inside = float(((img > 0) & (img < 1)).mean())
        summary.append(f"{name}: t={ts.to(torch.int64).tolist()}, mean pixel {u8.mean():.1f}, "
                       f"{inside:.0%} unclamped")
    p_sched = [c[0] for c in cases]
    d = int((gold["e2e.euler.neg_none.image"].int() - gold["e2e.euler.neg_empty.image"].int()).abs().max())
    check(d > 0, "negative None and '' give the same image")
    pipe.scheduler = EulerDiscreteScheduler.from_config(base_cfg)
    learned_pipe.scheduler = EulerDiscreteScheduler.from_config(base_cfg)
    dd = int((gold["e2e.euler.neg_blurry.image"].int() - gold["e2e.ddim.neg_blurry.image"].int()).abs().max())
    record(sec, "end-to-end runs (" + ", ".join(p_sched) + ")", "; ".join(summary) +
           f"; neg None vs \"\" images differ by up to {d}/255; ddim vs euler (neg_blurry) by up to {dd}/255 "
           "(DDIM with eta 0 is Euler's step in sigma space; only its last step, to alphas_cumprod[0] rather "
           "than sigma 0, differs); euler_a: the generator's noise is stored (step_noise) and replaying it "
           "without a generator gives the same image")
    return init


def with_learned_word(te1, te2, v1, v2):
    """copies of the encoders and the folder's tokenizers with WORD added (id 1000 in both tables)."""
    a1, a2 = load_tokenizers(added=(WORD,))
    check(a1.convert_tokens_to_ids(WORD) == a2.convert_tokens_to_ids(WORD) == WORD_ID, "learned id")
    e1 = CLIPTextModel(te1.config).eval()
    e1.load_state_dict(te1.state_dict())
    e2 = CLIPTextModelWithProjection(te2.config).eval()
    e2.load_state_dict(te2.state_dict())
    for e, v in ((e1, v1), (e2, v2)):
        e.resize_token_embeddings(VOCAB + 1)
        with torch.no_grad():
            e.get_input_embeddings().weight[WORD_ID] = v[0]
    check(e1.config.eos_token_id == EOS and e2.config.eos_token_id == EOS, "eos ids kept")
    return e1, e2, a1, a2


def learned(sec, pipe, gold):
    te1, te2 = pipe.text_encoder, pipe.text_encoder_2
    g = torch.Generator().manual_seed(4001)
    w1, w2 = te1.get_input_embeddings().weight, te2.get_input_embeddings().weight
    v1 = torch.randn(1, TE1["hidden_size"], generator=g) * float(w1.std())
    v2 = torch.randn(1, TE2["hidden_size"], generator=g) * float(w2.std())
    put(gold, "learned.v1", v1, f"the {WORD} row of text_encoder's table (id {WORD_ID}), randn * table std, seed 4001")
    put(gold, "learned.v2", v2, f"the {WORD} row of text_encoder_2's table (id {WORD_ID})")
    e1, e2, a1, a2 = with_learned_word(te1, te2, v1, v2)
    lp = StableDiffusionXLPipeline(vae=pipe.vae, text_encoder=e1, text_encoder_2=e2, tokenizer=a1, tokenizer_2=a2,
                                   unet=pipe.unet, scheduler=EulerDiscreteScheduler.from_config(pipe.scheduler.config),
                                   force_zeros_for_empty_prompt=True, add_watermarker=False)
    lp.set_progress_bar_config(disable=True)
    with torch.no_grad():
        ids1, ids2 = ids_of(a1, LEARNED_PROMPT), ids_of(a2, LEARNED_PROMPT)
        pos = int(first_eos(ids2)[0])
        word = pos - 1
        head = trimmed(ids_of(pipe.tokenizer, LEARNED_PROMPT.replace(WORD, "").rstrip()))[:-1]  # "a photo of"
        check(trimmed(ids1) == head + [WORD_ID, EOS] and torch.equal(ids1[0, : pos + 1], ids2[0, : pos + 1]),
              f"learned ids {trimmed(ids1)}")
        check(int(ids2.argmax(-1)[0]) == word, "argmax(ids) is the learned word")
        o1, o2 = encoders(e1, e2, ids1, ids2)
        last = e2.text_model.final_layer_norm(o2.hidden_states[-1])
        at_eos = e2.text_projection(last[:, pos])
        at_argmax = e2.text_projection(last[:, word])
        check(torch.allclose(o2.text_embeds, at_eos, atol=1e-6, rtol=0), f"transformers pools at the first {EOS}")
        check(maxdiff(at_eos, at_argmax) > 1e-2, "argmax pooling would differ")
        pe, _, pp, _ = lp.encode_prompt(LEARNED_PROMPT, device="cpu", num_images_per_prompt=1,
                                        do_classifier_free_guidance=True, negative_prompt=NEG_BLURRY)
        check(torch.equal(pe, torch.cat([o1.hidden_states[-2], o2.hidden_states[-2]], -1)), "learned prompt_embeds")
        check(torch.equal(pp, o2.text_embeds), "learned pooled")
    put(gold, "ids_1.learned", ids1, f'tokenizer ids of "{LEARNED_PROMPT}" ({WORD} = {WORD_ID}), I64')
    put(gold, "ids_2.learned", ids2, f'tokenizer_2 ids of "{LEARNED_PROMPT}", I64')
    put(gold, "penultimate_1.learned", o1.hidden_states[-2], f"text_encoder hidden_states[-2] with v1 as row {WORD_ID}")
    put(gold, "penultimate_2.learned", o2.hidden_states[-2],
        f"text_encoder_2 hidden_states[-2] with v2 as row {WORD_ID}")
    put(gold, "text_embeds_2.learned", o2.text_embeds, f"text_encoder_2 text_embeds, pooled at the first {EOS} "
        f"(position {pos})")
    put(gold, "text_embeds_2.learned_argmax_pooling", at_argmax, f"what pooling at argmax(ids) (the learned word, "
        f"position {word}; transformers' behaviour for eos_token_id 2 configs) would give: WRONG, for tests to tell "
        "apart")
    put(gold, "encode.learned.prompt_embeds", pe, f'lp.encode_prompt("{LEARNED_PROMPT}") prompt_embeds')
    put(gold, "encode.learned.pooled_prompt_embeds", pp, "its pooled_prompt_embeds (== text_embeds_2.learned)")
    record(sec, f"learned word {WORD}", f"id {WORD_ID} in both tokenizers ({trimmed(ids1)}); text_embeds pooled at "
           f"the first {EOS} (position {pos}), argmax(ids) pooling (position {word}) would differ by "
           f"{maxdiff(at_eos, at_argmax):.3g}")
    return lp, e1, e2, a1, a2


class Extended(torch.nn.Module):
    """an embedding table = frozen base rows + trainable new rows (autograd sees only the new rows)."""

    def __init__(self, base, extra):
        super().__init__()
        self.base, self.extra = base, extra

    @property
    def weight(self):
        return torch.cat([self.base, self.extra])

    def forward(self, ids):
        return F.embedding(ids, self.weight)


def ti_gradient(sec, pipe, gold, e1, e2, a1, a2):
    unet = pipe.unet
    g = torch.Generator().manual_seed(5001)
    latents = torch.randn(2, 4, HEIGHT // 2, WIDTH // 2, generator=g) * 0.8
    noise = torch.randn(2, 4, HEIGHT // 2, WIDTH // 2, generator=g)
    timesteps = torch.tensor([17, 733], dtype=torch.int64)
    ddpm = DDPMScheduler.from_config(pipe.scheduler.config)  # textual_inversion_sdxl.py's noise_scheduler
    noisy = ddpm.add_noise(latents, noise, timesteps)
    orig = [(40, 30), (28, 36)]
    crops = [(3, 1), (0, 2)]
    target = (HEIGHT, WIDTH)
    # textual_inversion_sdxl.py: torch.cat of per-sample 6-vectors -> a flat [12] tensor (the U-Net reshapes it)
    time_ids_flat = torch.cat([torch.tensor(orig[i] + crops[i] + target) for i in range(2)]).float()
    ids1 = torch.cat([ids_of(a1, p) for p in TI_PROMPTS])
    ids2 = torch.cat([ids_of(a2, p) for p in TI_PROMPTS])
    check((ids1 == WORD_ID).sum() == 2 and (ids2 == WORD_ID).sum() == 2, "learned word in both TI prompts")

    for m in (unet, e1, e2):
        for p in m.parameters():
            p.requires_grad_(False)
    v1 = gold["learned.v1"].clone().requires_grad_(True)
    v2 = gold["learned.v2"].clone().requires_grad_(True)
    emb1, emb2 = e1.get_input_embeddings(), e2.get_input_embeddings()
    e1.set_input_embeddings(Extended(emb1.weight[:VOCAB].detach(), v1))
    e2.set_input_embeddings(Extended(emb2.weight[:VOCAB].detach(), v2))
    try:
        h1 = e1(ids1, output_hidden_states=True).hidden_states[-2]
        out2 = e2(ids2, output_hidden_states=True)
        h2 = out2.hidden_states[-2]
        ctx = torch.cat([h1, h2], dim=-1)
        pred = unet(noisy, timesteps, ctx, added_cond_kwargs={"text_embeds": out2[0], "time_ids": time_ids_flat}).sample
        loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
        gv1, gv2 = torch.autograd.grad(loss, [v1, v2])
    finally:
        e1.set_input_embeddings(emb1)
        e2.set_input_embeddings(emb2)
    check(torch.equal(out2.text_embeds.detach(), out2[0].detach()), "encoder_output_2[0] is text_embeds")
    check(float(gv1.abs().max()) > 0 and float(gv2.abs().max()) > 0, "non-zero gradients")

    # cross-check: the gradient of the whole (resized) table, row 1000, and [2, 6] time_ids give the same
    for m in (e1, e2):
        m.get_input_embeddings().weight.requires_grad_(True)
    h1b = e1(ids1, output_hidden_states=True).hidden_states[-2]
    o2b = e2(ids2, output_hidden_states=True)
    tid = time_ids_flat.reshape(2, 6)
    predb = unet(noisy, timesteps, torch.cat([h1b, o2b.hidden_states[-2]], -1),
                 added_cond_kwargs={"text_embeds": o2b.text_embeds, "time_ids": tid}).sample
    lossb = F.mse_loss(predb.float(), noise.float(), reduction="mean")
    gw1, gw2 = torch.autograd.grad(lossb, [e1.get_input_embeddings().weight, e2.get_input_embeddings().weight])
    for m in (e1, e2):
        m.get_input_embeddings().weight.requires_grad_(False)
    d_loss = abs(float(loss) - float(lossb))
    d_g = max(maxdiff(gw1[VOCAB:], gv1), maxdiff(gw2[VOCAB:], gv2))
    check(d_loss < 1e-6 and d_g < 1e-6, f"TI cross-check: loss {d_loss}, grad {d_g}")

    put(gold, "ti.ids_1", ids1, f"tokenizer ids of {json.dumps(TI_PROMPTS)}, [2, 77] I64")
    put(gold, "ti.ids_2", ids2, "tokenizer_2 ids of the same prompts, I64")
    put(gold, "ti.latents", latents, "clean latents (randn * 0.8, seed 5001; stand-in for vae mean * scaling_factor)")
    put(gold, "ti.noise", noise, "the noise, also the target (epsilon prediction)")
    put(gold, "ti.timesteps", timesteps, "training timesteps, I64")
    put(gold, "ti.noisy_latents", noisy, "DDPMScheduler.from_config(folder scheduler).add_noise(latents, noise, "
        "timesteps)")
    put(gold, "ti.time_ids", tid, "per-sample (orig_h, orig_w, crop_top, crop_left, target_h, target_w) = "
        "(40, 30, 3, 1, 24, 32), (28, 36, 0, 2, 24, 32); the training script passes them flattened ([12])")
    put(gold, "ti.prompt_embeds", ctx, "cat(text_encoder hidden_states[-2], text_encoder_2 hidden_states[-2]), "
        "learned rows v1 / v2")
    put(gold, "ti.text_embeds", out2.text_embeds, "text_encoder_2 text_embeds (encoder_output_2[0]), pooled at the "
        f"first {EOS}")
    put(gold, "ti.model_pred", pred, "unet(noisy_latents, timesteps, prompt_embeds, added_cond_kwargs).sample")
    put(gold, "ti.loss", loss.reshape(1), "F.mse_loss(model_pred.float(), noise.float(), reduction='mean'), [1]")
    put(gold, "ti.grad_v1", gv1, "d loss / d v1 (torch autograd, float32, all other weights frozen)")
    put(gold, "ti.grad_v2", gv2, "d loss / d v2")
    record(sec, "textual-inversion loss and gradients",
           f"loss {float(loss):.6f}; max abs grad v1 {float(gv1.abs().max()):.3g}, max abs grad v2 "
           f"{float(gv2.abs().max()):.3g} (small: the loss is a mean over 1536 values); "
           f"same (< 1e-6) via the gradient of the whole resized tables (row {WORD_ID}) "
           f"and [2, 6] time_ids")
    for m in (e1, e2):
        for p in m.parameters():
            p.requires_grad_(False)


# ----------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------
def save_golden(gold):
    meta = dict(VERSIONS)
    meta.update(
        model="tiny-sdxl (fp16 variant files loaded as float32)",
        generator="scripts/make_sdxl_pipeline_fixtures.py",
        compute="CPU float32, 1 thread, eval mode, diffusers default attention processor, "
        "transformers default attn_implementation",
        prompt=PROMPT, negative_prompts=json.dumps([None, "", NEG_BLURRY]), learned_prompt=LEARNED_PROMPT,
        height=str(HEIGHT), width=str(WIDTH), steps=str(STEPS), guidance_scale=str(GUIDANCE),
        tokenizer="tiny-sdxl/tokenizer, tiny-sdxl/tokenizer_2 (vocab 1000, bos 998, eos 999; pads 999 / 0) via "
        "transformers CLIPTokenizer",
    )
    save_file({k: v.contiguous() for k, v in sorted(gold.items())}, GOLDEN, metadata=meta)
    mf.canonical_metadata_order(GOLDEN)
    with safe_open(GOLDEN, "pt") as f:
        check(set(f.keys()) == set(gold) and f.metadata() == meta, "golden keys/metadata")
        check(all(torch.equal(f.get_tensor(k), gold[k]) for k in gold), "golden tensors")
    print(f"  {GOLDEN}: {len(gold)} tensors")


def own_files():
    out = []
    for p in (FOLDER, SINGLE, GOLDEN):
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs.sort()
                out += [os.path.join(root, f) for f in sorted(files)]
        else:
            out.append(p)
    return [(os.path.relpath(p, FIX), os.path.getsize(p)) for p in out]


def dtype_name(t):
    return {torch.float32: "F32", torch.int64: "I64", torch.uint8: "U8"}[t.dtype]


README_TEXT = """### `tiny-sdxl/`, `tiny-sdxl.safetensors` and `golden/tiny-sdxl.safetensors`
Written by `scripts/make_sdxl_pipeline_fixtures.py` (run from the repo root:
`/work/venv23/bin/python scripts/make_sdxl_pipeline_fixtures.py`; it rewrites only these entries
and this section). Versions: {versions}. CPU, float32, one thread, deterministic (seed 0 before
each component, fixed torch.Generator seeds for every input; golden metadata in sorted order):
re-running gives byte-identical files. Nothing is downloaded. The script aborts on any failed check.

A tiny random SDXL pipeline (random weights: each component's init plus N(0, 0.05^2), seed 0):
- `tokenizer/`, `tokenizer_2/`: a **tiny CLIP BPE** (vocab 1000) as classic slow-tokenizer files
  `vocab.json` + `merges.txt` (`#version: 0.2` header), cut from invert's bundled
  `crates/invert-model/assets/clip-tokenizer` (OpenAI's id layout): ids 0..255 the byte characters,
  256..511 the same + `</w>`, 512..997 the first 486 merges in order (all unchanged), then
  **`<|startoftext|>` = 998, `<|endoftext|>` = 999**. `tokenizer_config.json` and
  `special_tokens_map.json` are byte copies of `configs/sdxl-base/tokenizer{{,_2}}/` (SDXL base 1.0's:
  model_max_length 77, do_lower_case, AddedToken dicts): tokenizer pads with `<|endoftext|>` (999),
  tokenizer_2 with `"!"` (id 0). Words tokenize into short pieces ("photo" is `pho` `to</w>`); a learned
  word added to both (`add_tokens`) gets **id 1000**. transformers' `CLIPTokenizer` and an
  OpenAI-`SimpleTokenizer` re-implementation in the script give the same ids (transformers 5 has no slow
  `CLIPTokenizer`; see the table below).
- `text_encoder`: transformers `CLIPTextModel`, vocab 1000, 77 positions, hidden 8, 3 layers, 2
  heads, MLP 16, quick_gelu, bos 998, eos 999, pad 999.
- `text_encoder_2`: `CLIPTextModelWithProjection`, vocab 1000, 77 positions, hidden 16, 3 layers,
  2 heads, MLP 32, gelu, **projection_dim 12** (non-square: a transposed `text_projection` cannot
  load), bos 998, **eos_token_id 999** (SDXL's published config has the legacy 2; with 999
  transformers pools at the FIRST end-of-text position, not at argmax(ids), which a learned word
  (id >= 1000) would win), pad 0.
- `unet`: SDXL-style `UNet2DConditionModel`: blocks `DownBlock2D` + `CrossAttnDownBlock2D` / `CrossAttnUpBlock2D` +
  `UpBlock2D`, channels (8, 16), 2 layers per block, head counts (2, 4), `transformer_layers_per_block`
  [1, 2], linear projections, `upcast_attention: null`, norm groups 4, `cross_attention_dim` 24 (8 + 16),
  `addition_embed_type: "text_time"`, `addition_time_embed_dim` 8,
  `projection_class_embeddings_input_dim` 60 (6 x 8 + 12), sample_size 8.
- `vae`: `AutoencoderKL`, channels [8, 16] (downscale 2), 2 resnets per block, norm groups 4, latent 4,
  **scaling_factor 0.13025**, **force_upcast true** (SDXL's; diffusers upcasts only an fp16 VAE, so the
  references, computed in float32, are unaffected).
- `scheduler`: `scheduler/scheduler_config.json` is a byte copy of `configs/sdxl-base/scheduler/scheduler_config.json`
  (SDXL base 1.0: EulerDiscreteScheduler, scaled_linear 0.00085..0.012, 1000 steps, steps_offset 1,
  timestep_spacing leading, interpolation linear, no Karras sigmas, epsilon).
- `model_index.json`: `configs/sdxl-base/model_index.json` (`"force_zeros_for_empty_prompt": true`,
  `"add_watermarker": null`, `tokenizer` / `tokenizer_2` = `["transformers", "CLIPTokenizer"]`) with this
  diffusers version. `StableDiffusionXLPipeline.from_pretrained(folder, variant="fp16", torch_dtype=float32,
  local_files_only=True)` loads everything, tokenizers included.
- Weights **only as fp16 variant files**: `text_encoder/model.fp16.safetensors` (keys `text_model.*`, the
  published layout), `text_encoder_2/model.fp16.safetensors` (`text_model.*`, `text_projection.weight`
  [12, 16]), `unet/diffusion_pytorch_model.fp16.safetensors`, `vae/diffusion_pytorch_model.fp16.safetensors`.
  Text encoder configs say `"dtype": "float32"` (as tiny-sd1). All references are computed in float32
  from the fp16 values (`from_pretrained(variant="fp16", torch_dtype=float32)`).

`tiny-sdxl.safetensors`: the single-file (original SGM/LDM) twin, the same F16 values:
- `conditioner.embedders.0.transformer.text_model.*`: text_encoder, transformers names, plus
  `conditioner.embedders.0.transformer.text_model.embeddings.position_ids` (I64 [1, 77], a buffer of
  transformers-4 era state dicts; ignore it).
- `conditioner.embedders.1.model.*`: text_encoder_2 in OpenCLIP names: `token_embedding.weight`,
  `positional_embedding` [77, 16], `transformer.resblocks.N.{{ln_1, attn.in_proj_weight [48, 16] (q; k; v),
  attn.in_proj_bias, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}}`, `ln_final`, **`text_projection` [16, 12]
  = the transpose of diffusers' `text_projection.weight`** (OpenCLIP computes `x @ text_projection`),
  `logit_scale` (F16 scalar ln 100, unused; diffusers ignores it).
- `model.diffusion_model.*`: the U-Net in LDM names (`label_emb.0.0` / `label_emb.0.2` = `add_embedding.linear_1/2`),
  `first_stage_model.*`: the VAE in LDM names (mid-block attention as 1x1 convs). No schedule buffers.
- **EMA copy of the U-Net** (the single-file EMA check; `tiny-sd1.ckpt` no longer has one):
  `model_ema.decay` (F32 scalar 0.9999), `model_ema.num_updates` (I32 scalar {ema_updates}), and for every
  `model.diffusion_model.X.Y.Z` a `model_ema.diffusion_modelXYZ` key (dots removed) with **different** values:
  the stored U-Net weights + N(0, 0.02^2) noise (torch.Generator seed {ema_seed}, keys in `unet_to_ldm`
  order), rounded to F16. diffusers uses them only with `extract_ema=True` (and only when more than 100 keys
  start with `model_ema`); golden `unet.noise_pred_ema` is computed from them.
- Checked with diffusers (see the table below): `convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`,
  `create_diffusers_clip_model_from_ldm` for both encoders, and
  `StableDiffusionXLPipeline.from_single_file(path, config="tiny-sdxl/", local_files_only=True,
  torch_dtype=float32)` (tokenizers taken from `tiny-sdxl/`) give parameters bit-identical to the folder's
  (every tensor compared with `torch.equal`, none left on the meta device); the end-to-end image of the
  single-file pipeline equals the folder's; `UNet2DConditionModel.from_single_file(path, config=...,
  subfolder="unet", extract_ema=True)` gives exactly the `model_ema.*` values. diffusers tells the two
  encoders apart by the width of `positional_embedding` / `position_embedding` (8 vs 16), and infers
  "xl_base" only from `conditioner.embedders.1.model.transformer.resblocks.9.*` (this file has 3 resblocks:
  it infers "v1"), so `config=` is required.

`golden/tiny-sdxl.safetensors` (F32 unless noted; I64 ids and timesteps; U8 images). Prompt
"{prompt}"; negatives `None`, `""` and "{neg}"; {h}x{w} px ({lh}x{lw} latents), {steps} steps,
guidance {guidance}. All ids are the folder's own tokenizers' (vocab 1000). **diffusers zeroes the
negative embeddings only for `negative_prompt=None`** (`force_zeros_for_empty_prompt` and no negative prompt
given); `negative_prompt=""` is encoded like any prompt (ids `998 999` then padding) and gives a different
image. Pipelines are built with `add_watermarker=False`. Notes:
- Euler (timestep_spacing "leading", 4 steps: timesteps 751, 501, 251, 1) multiplies the given latents by
  `init_noise_sigma` = sqrt(sigma_max^2 + 1) and feeds the U-Net `x / sqrt(sigma^2 + 1)`; DDIM's
  `init_noise_sigma` is 1. The `latents` entries are the scheduler's latents, before `/ 0.13025`.
- Euler ancestral draws its per-step noise from torch's CPU generator, which invert does not reproduce: the
  draws are stored (`e2e.euler_a.neg_blurry.step_noise`); the script checks that replaying them without a
  generator gives the same image, and that the same seed repeats the run.
- `*_2.eos_padded`: text_encoder_2 on "{prompt}" padded with 999 instead of 0 (as tokenizer 1 pads; a
  tokenizer_2 folder may pad so too): pooled at the FIRST 999, so `text_embeds_2.eos_padded` equals
  `text_embeds_2.prompt`; pooling at the last 999 would not.
- The learned-word pipeline is the same pipeline with `<sks>` added to both tokenizers (`add_tokens`, id
  1000) and both tables resized to 1001 rows (`resize_token_embeddings`, row 1000 = `learned.v1` / `v2`).
- `ti.*` follows diffusers' examples/textual_inversion/textual_inversion_sdxl.py: `noisy_latents =
  DDPMScheduler.add_noise(latents, noise, timesteps)`, prompt_embeds = cat(both `hidden_states[-2]`),
  `added_cond_kwargs = {{"text_embeds": text_encoder_2(...)[0], "time_ids": ...}}`, `loss = F.mse_loss(pred,
  noise, reduction="mean")` (epsilon); gradients taken with autograd on the two new rows only (an embedding
  = cat(frozen 1000 rows, v)), cross-checked against the gradient of the whole resized tables. The
  gradients are small (~1e-3..1e-4): compare them relatively.

Tensors:

| name | dtype | shape | meaning |
|---|---|---|---|
"""


def write_readme(sizes):
    lines = [BEGIN, "", README_TEXT.format(
        versions=", ".join(f"{k} {v}" for k, v in VERSIONS.items()), prompt=PROMPT, neg=NEG_BLURRY,
        h=HEIGHT, w=WIDTH, lh=HEIGHT // 2, lw=WIDTH // 2, steps=STEPS, guidance=GUIDANCE, ema_seed=SEED_EMA,
        ema_updates=EMA_NUM_UPDATES).rstrip("\n")]
    with safe_open(GOLDEN, "pt") as f:
        for k in sorted(f.keys()):
            t = f.get_tensor(k)
            lines.append(f"| `{k}` | {dtype_name(t)} | {list(t.shape)} | {GOLD_DOC[k]} |")
    lines += ["", "Verification results (produced by the script):", "", "| section | check | result |", "|---|---|---|"]
    lines += [f"| {s} | {c} | {v} |" for s, c, v in mf.RESULTS]
    lines += ["", "Sizes (bytes):", ""]
    lines += [f"- `{p}`: {n}" for p, n in sizes]
    total = sum(n for _, n in sizes)
    lines += ["", f"Total of these entries: {total} bytes ({total / 1e6:.2f} MB).", "", END, ""]
    section = "\n".join(lines)
    text = open(README).read()
    if BEGIN in text:
        a, b = text.index(BEGIN), text.index(END) + len(END)
        text = text[:a].rstrip("\n") + "\n\n" + section + text[b:].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(README, "w") as f:
        f.write(text)


def main():
    print("versions:", VERSIONS)
    shutil.rmtree(FOLDER, ignore_errors=True)
    for p in (SINGLE, GOLDEN):
        if os.path.exists(p):
            os.remove(p)
    sec = "tiny-sdxl"
    te1, te2, unet, vae = build()
    write_folder(te1, te2, unet, vae)
    check_tokenizers(sec)
    pipe = load_pipeline()
    built = {"text_encoder": te1, "text_encoder_2": te2, "unet": unet, "vae": vae}
    n = sum(assert_sd_equal({k: v.half().float() for k, v in m.state_dict().items()}, getattr(pipe, c),
                            f"folder {c}") for c, m in built.items())
    check(type(pipe.scheduler).__name__ == "EulerDiscreteScheduler" and pipe.config.force_zeros_for_empty_prompt,
          "folder pipeline scheduler / force_zeros")
    check(json.load(open(os.path.join(FOLDER, "vae/config.json")))["force_upcast"] is True, "force_upcast")
    check(pipe.vae_scale_factor == 2, "vae scale factor")
    check(pipe.watermark is None, "no watermarker")
    params = {c: sum(p.numel() for p in m.parameters()) for c, m in built.items()}
    record(sec, "StableDiffusionXLPipeline.from_pretrained(tiny-sdxl/, variant='fp16', torch_dtype=float32, "
           "add_watermarker=False)",
           f"loads, tokenizers included; {n} parameters == .half().float() of the built ones; parameter counts "
           f"{json.dumps(params)}")

    gold = {}
    prompt_encoding(sec, pipe, gold)
    unet_reference(sec, pipe, gold)
    lp, e1, e2, a1, a2 = learned(sec, pipe, gold)
    e2e(sec, pipe, gold, lp)
    ti_gradient(sec, pipe, gold, e1, e2, a1, a2)

    save_file(single_file_dict(te1, te2, unet, vae), SINGLE, metadata={"format": "pt"})
    sp = check_single_file(sec, pipe)
    check_ema(sec, pipe, gold)
    img, _ = run_pipe(sp, PROMPT, NEG_BLURRY, gold["e2e.init_latents"])
    check(np.array_equal((img * 255).round().astype(np.uint8), gold["e2e.euler.neg_blurry.image"].numpy()),
          "single-file pipeline image")
    check(np.array_equal(img, gold["e2e.euler.neg_blurry.image_float"].numpy()), "single-file pipeline image float")
    record(sec, "single-file pipeline end to end (euler.neg_blurry)", "image identical to the folder pipeline's")

    save_golden(gold)
    for p, _ in own_files():
        os.chmod(os.path.join(FIX, p), 0o644)
    sizes = own_files()
    total = sum(n for _, n in sizes)
    write_readme(sizes)
    print("== files written by this script")
    for p, n in sizes:
        print(f"  {n:>10}  {p}  {hashlib.sha256(open(os.path.join(FIX, p), 'rb').read()).hexdigest()[:16]}")
    print(f"  {total:>10}  TOTAL ({total / 1e6:.2f} MB)")
    check(total < OWN_SIZE_LIMIT, f"{total} bytes, over {OWN_SIZE_LIMIT}")
    print("all checks passed")


if __name__ == "__main__":
    main()
