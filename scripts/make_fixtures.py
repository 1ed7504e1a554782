#!/usr/bin/env python3
"""Reference fixtures for invert's loaders and forward passes (CLIP text encoder, UNet2DConditionModel,
AutoencoderKL), made with the Python reference implementations (torch + diffusers + transformers).

usage (from the repo root):
    /work/venv/bin/python scripts/make_fixtures.py crates/invert-model/tests/fixtures [--ldm-key-tables DIR]
(--ldm-key-tables: also write full-size SD1.5/SD2.1 LDM key tables to DIR, outside the fixtures)

Writes into OUT (removing only the entries it owns first):
    tiny-sd1/              diffusers folder, SD1-style tiny config, weights ONLY as fp16 *variant* files
                           (text-encoder keys with the `text_model.` prefix, the transformers-4 layout)
    tiny-sd2/              diffusers folder, SD2-style tiny config (linear proj, per-block head counts,
                           upcast_attention, v-prediction DDIM), f32, text-encoder keys WITHOUT the prefix
    tiny-sd1.ckpt          the tiny-sd1 weights in the original CompVis/LDM single-file layout (torch zip
                           pickle, f16); no EMA copy (the EMA check lives in make_sdxl_pipeline_fixtures.py's
                           tiny-sdxl.safetensors, whose U-Net is much smaller)
    tiny-sd2.safetensors   the tiny-sd2 weights in the SD2 LDM layout (OpenCLIP text encoder, f32), with one
                           extra text resblock that must be ignored (as in real SD2 files)
    golden/tiny-sd1.safetensors, golden/tiny-sd2.safetensors   golden inputs/outputs (f32 CPU); other
                           files in golden/ belong to other scripts and are left alone
    keys/                  the full-size SD1.5 key lists (copied from /work/shared/reference/keys if present)
    README.md              what each file is, versions, verification results; whatever follows this
                           script's own part in an existing README.md (sections of other scripts) is kept

Everything is deterministic: torch.manual_seed(0) before each component, fixed torch.Generator seeds
for every input, one CPU thread. Nothing is downloaded (HF_HUB_OFFLINE=1, local_files_only=True).
Every single-file conversion is verified by loading it back with diffusers' own single-file machinery
(and, for the OpenCLIP text encoder, also with open_clip's TextTransformer) and comparing with the
folder model; the script aborts on any mismatch.
"""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import io  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
import zipfile  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import diffusers  # noqa: E402
import safetensors  # noqa: E402
import transformers  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.loaders import single_file_utils as sfu  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny_clip_bpe import EOS, VOCAB, write_tokenizer_folder  # noqa: E402

warnings.filterwarnings("ignore")
diffusers.utils.logging.set_verbosity_error()
transformers.utils.logging.set_verbosity_error()
diffusers.utils.logging.disable_progress_bar()
transformers.utils.logging.disable_progress_bar()
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

SIZE_LIMIT = 30 * 1024 * 1024  # bytes, the whole fixtures folder (issue 20's budget: 30 MB = 30,720 KiB)
# entries of the output folder this script owns (removed and rewritten on every run; nothing else is touched)
# keys/ also holds make_ldm_key_lists.py's lists, so only its sd15-keys.* copies are replaced; golden/ also
# holds make_sdxl_pipeline_fixtures.py's golden/tiny-sdxl.safetensors, so only these two golden files are.
OWNED_DIRS = ("tiny-sd1", "tiny-sd2")
OWNED_FILES = ("tiny-sd1.ckpt", "tiny-sd2.safetensors", "README.md",
               os.path.join("golden", "tiny-sd1.safetensors"), os.path.join("golden", "tiny-sd2.safetensors"))
SHARED_KEYS = "/work/shared/reference/keys"
KIT_TINY = "/work/shared/bench/diffusers-baseline/models/tiny"  # optional cross-check only
SD15_TOKENIZER_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "sd15",
                                      "tokenizer")

VERSIONS = {
    "python": platform.python_version(),
    "torch": torch.__version__,
    "diffusers": diffusers.__version__,
    "transformers": transformers.__version__,
    "safetensors": safetensors.__version__,
    "numpy": np.__version__,
}

# ----------------------------------------------------------------------------------------------
# configs
# ----------------------------------------------------------------------------------------------
SD15_PNDM = dict(  # scheduler/scheduler_config.json of SD v1.5 (as the kit's make_models.py)
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
    clip_sample=False,
    trained_betas=None,
    prediction_type="epsilon",
)
SD21_DDIM = dict(  # SD 2.1 (768-v) scheduler: DDIM, v-prediction
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    set_alpha_to_one=False,
    steps_offset=1,
    clip_sample=False,
    trained_betas=None,
    prediction_type="v_prediction",
)

# tiny-sd1: the U-Net and VAE are the kit's make_models.py CONFIGS["tiny"] (same kwargs, so the same random
# weights); the text encoder has the tiny tokenizer's 1000 rows (the kit's has 49,408)
SD1 = dict(
    unet=dict(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    ),  # attention_head_dim: default 8 (= 8 heads)
    vae=dict(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
    ),  # layers_per_block: default 1, norm_num_groups: default 32
    text=dict(
        bos_token_id=0,
        eos_token_id=2,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        pad_token_id=1,
        vocab_size=VOCAB,  # the tiny BPE of tiny_clip_bpe.py (tokenizer/): 1000 rows instead of 49,408
        max_position_embeddings=77,
    ),  # hidden_act: default quick_gelu
)

SD2 = dict(
    unet=dict(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=[2, 4],  # SD2 quirk: per-block list, these are head COUNTS
        use_linear_projection=True,
        upcast_attention=True,
        norm_num_groups=16,
    ),
    vae=dict(
        block_out_channels=[16, 32],  # channel change -> nin_shortcut in encoder down.1 and decoder up.0
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,  # non-standard: 2 and 4 channels per group
        sample_size=32,
    ),
    text=dict(
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_hidden_layers=4,
        hidden_act="gelu",
        layer_norm_eps=1e-05,
        vocab_size=1000,
        max_position_embeddings=77,
        projection_dim=32,
    ),
)

# Full-size configs, used on the meta device only (key-name round trips, key tables)
SD15_FULL = dict(
    unet=dict(
        act_fn="silu",
        attention_head_dim=8,
        block_out_channels=(320, 640, 1280, 1280),
        cross_attention_dim=768,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        in_channels=4,
        layers_per_block=2,
        norm_num_groups=32,
        out_channels=4,
        sample_size=64,
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    ),
    vae=dict(
        block_out_channels=[128, 256, 512, 512],
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=2,
        norm_num_groups=32,
        sample_size=512,
    ),
    text=dict(
        hidden_act="quick_gelu",
        hidden_size=768,
        intermediate_size=3072,
        num_attention_heads=12,
        num_hidden_layers=12,
        vocab_size=49408,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
        projection_dim=768,
    ),
)
SD21_FULL = dict(
    unet=dict(
        SD15_FULL["unet"],
        attention_head_dim=[5, 10, 20, 20],
        cross_attention_dim=1024,
        use_linear_projection=True,
        upcast_attention=True,
        sample_size=96,
    ),
    vae=dict(SD15_FULL["vae"], sample_size=768),
    text=dict(
        hidden_act="gelu",
        hidden_size=1024,
        intermediate_size=4096,
        num_attention_heads=16,
        num_hidden_layers=23,
        vocab_size=49408,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
        projection_dim=512,
    ),
)

RESULTS = []  # (section, check, value) for the README


def record(section, check, value):
    RESULTS.append((section, check, value))
    print(f"  [{section}] {check}: {value}")


def maxdiff(a, b):
    return float((a.float() - b.float()).abs().max().item())


def check(cond, msg):
    if not cond:
        raise SystemExit(f"VERIFICATION FAILED: {msg}")


def assert_params_equal(m_a, m_b, what):
    sa, sb = m_a.state_dict(), m_b.state_dict()
    check(set(sa) == set(sb), f"{what}: key sets differ: {sorted(set(sa) ^ set(sb))[:10]}")
    for k in sa:
        check(sa[k].device.type != "meta" and sb[k].device.type != "meta", f"{what}: {k} left on the meta device")
        check(sa[k].dtype == sb[k].dtype, f"{what}: {k} dtype {sa[k].dtype} vs {sb[k].dtype}")
        check(torch.equal(sa[k], sb[k]), f"{what}: {k} differs (max {maxdiff(sa[k], sb[k])})")
    return len(sa)


# ----------------------------------------------------------------------------------------------
# diffusers -> LDM (CompVis) key maps: the inverse of diffusers.loaders.single_file_utils
# ----------------------------------------------------------------------------------------------
UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
VAE_ATTN = {
    "group_norm.weight": "norm.weight",
    "group_norm.bias": "norm.bias",
    "to_q.weight": "q.weight",
    "to_q.bias": "q.bias",
    "to_k.weight": "k.weight",
    "to_k.bias": "k.bias",
    "to_v.weight": "v.weight",
    "to_v.bias": "v.bias",
    "to_out.0.weight": "proj_out.weight",
    "to_out.0.bias": "proj_out.bias",
}


def _apply_prefix_map(keys, prefixes):
    """prefixes: diffusers module prefix -> (ldm prefix, kind). Returns {diffusers key: (ldm key, kind)}."""
    out = {}
    for k in keys:
        parts = k.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            p = ".".join(parts[:cut])
            if p in prefixes:
                break
        else:
            raise SystemExit(f"no LDM mapping for {k}")
        ldm, kind = prefixes[p]
        rest = parts[cut:]
        if kind == "unet_res":
            check(rest[0] in UNET_RESNET and len(rest) == 2, f"unexpected resnet key {k}")
            rest = [UNET_RESNET[rest[0]], rest[1]]
        elif kind == "vae_res":
            check(rest[0] in VAE_RESNET and len(rest) == 2, f"unexpected vae resnet key {k}")
            rest = [VAE_RESNET[rest[0]], rest[1]]
        elif kind == "vae_attn":
            r = ".".join(rest)
            check(r in VAE_ATTN, f"unexpected vae attention key {k}")
            rest = [VAE_ATTN[r]]
        out[k] = (ldm + "." + ".".join(rest), kind)
    ldm_names = [v[0] for v in out.values()]
    check(len(set(ldm_names)) == len(ldm_names), "LDM key map is not injective")
    return out


def unet_ldm_map(unet):
    lpb = unet.config.layers_per_block
    check(isinstance(lpb, int), "layers_per_block must be an int")
    pre = {
        "time_embedding.linear_1": ("time_embed.0", None),
        "time_embedding.linear_2": ("time_embed.2", None),
        "conv_in": ("input_blocks.0.0", None),
        "conv_norm_out": ("out.0", None),
        "conv_out": ("out.2", None),
    }
    if unet.config.get("addition_embed_type") == "text_time":  # SDXL (make_sdxl_pipeline_fixtures.py)
        pre["add_embedding.linear_1"] = ("label_emb.0.0", None)
        pre["add_embedding.linear_2"] = ("label_emb.0.2", None)
    for i, b in enumerate(unet.down_blocks):
        check(len(b.resnets) == lpb, "down block resnet count")
        for j in range(lpb):
            n = 1 + i * (lpb + 1) + j
            pre[f"down_blocks.{i}.resnets.{j}"] = (f"input_blocks.{n}.0", "unet_res")
            if getattr(b, "attentions", None) is not None:
                pre[f"down_blocks.{i}.attentions.{j}"] = (f"input_blocks.{n}.1", None)
        if b.downsamplers is not None:
            check(len(b.downsamplers) == 1, "one downsampler")
            pre[f"down_blocks.{i}.downsamplers.0.conv"] = (f"input_blocks.{1 + i * (lpb + 1) + lpb}.0.op", None)
    mb = unet.mid_block
    check(len(mb.resnets) == 2 and len(mb.attentions) == 1, "mid block layout")
    pre["mid_block.resnets.0"] = ("middle_block.0", "unet_res")
    pre["mid_block.attentions.0"] = ("middle_block.1", None)
    pre["mid_block.resnets.1"] = ("middle_block.2", "unet_res")
    for i, b in enumerate(unet.up_blocks):
        check(len(b.resnets) == lpb + 1, "up block resnet count")
        has_attn = getattr(b, "attentions", None) is not None
        for j in range(lpb + 1):
            n = i * (lpb + 1) + j
            pre[f"up_blocks.{i}.resnets.{j}"] = (f"output_blocks.{n}.0", "unet_res")
            if has_attn:
                pre[f"up_blocks.{i}.attentions.{j}"] = (f"output_blocks.{n}.1", None)
        if b.upsamplers is not None:
            check(len(b.upsamplers) == 1, "one upsampler")
            pre[f"up_blocks.{i}.upsamplers.0.conv"] = (
                f"output_blocks.{i * (lpb + 1) + lpb}.{2 if has_attn else 1}.conv",
                None,
            )
    # transformer internals (norm, proj_in, transformer_blocks.*, proj_out) keep their names
    return {k: v[0] for k, v in _apply_prefix_map(unet.state_dict().keys(), pre).items()}


def vae_ldm_map(vae):
    pre = {}
    for side in ("encoder", "decoder"):
        pre[f"{side}.conv_in"] = (f"{side}.conv_in", None)
        pre[f"{side}.conv_norm_out"] = (f"{side}.norm_out", None)
        pre[f"{side}.conv_out"] = (f"{side}.conv_out", None)
        check(len(getattr(vae, side).mid_block.resnets) == 2, "vae mid resnets")
        pre[f"{side}.mid_block.resnets.0"] = (f"{side}.mid.block_1", "vae_res")
        pre[f"{side}.mid_block.resnets.1"] = (f"{side}.mid.block_2", "vae_res")
        pre[f"{side}.mid_block.attentions.0"] = (f"{side}.mid.attn_1", "vae_attn")
    pre["quant_conv"] = ("quant_conv", None)
    pre["post_quant_conv"] = ("post_quant_conv", None)
    for i, b in enumerate(vae.encoder.down_blocks):
        for j in range(len(b.resnets)):
            pre[f"encoder.down_blocks.{i}.resnets.{j}"] = (f"encoder.down.{i}.block.{j}", "vae_res")
        if b.downsamplers is not None:
            pre[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = (f"encoder.down.{i}.downsample.conv", None)
    n = len(vae.decoder.up_blocks)
    for i, b in enumerate(vae.decoder.up_blocks):
        li = n - 1 - i  # LDM numbers the decoder levels the other way round
        for j in range(len(b.resnets)):
            pre[f"decoder.up_blocks.{i}.resnets.{j}"] = (f"decoder.up.{li}.block.{j}", "vae_res")
        if b.upsamplers is not None:
            pre[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = (f"decoder.up.{li}.upsample.conv", None)
    return _apply_prefix_map(vae.state_dict().keys(), pre)


def unet_to_ldm(unet, sd, prefix="model.diffusion_model."):
    m = unet_ldm_map(unet)
    check(set(m) == set(sd), "unet state dict keys")
    return {prefix + m[k]: sd[k] for k in sd}


def vae_to_ldm(vae, sd, prefix="first_stage_model."):
    m = vae_ldm_map(vae)
    check(set(m) == set(sd), "vae state dict keys")
    out = {}
    for k, v in sd.items():
        ldm, kind = m[k]
        if kind == "vae_attn" and v.ndim == 2:  # LDM's AttnBlock uses 1x1 convs
            v = v[:, :, None, None]
        out[prefix + ldm] = v
    return out


def te_to_openclip(te_sd, n_layers, prefix="cond_stage_model.model.", names=None):
    """transformers CLIPTextModel state dict (no `text_model.` prefix) -> OpenCLIP TextTransformer names.
    `names`, if a dict, receives {openclip key: source diffusers key(s)}."""
    sd = dict(te_sd)
    o, src = {}, {}

    def take(dst, *keys):
        src[dst] = "text_model." + keys[0] if len(keys) == 1 else "cat(" + ", ".join("text_model." + k for k in keys) + ")"
        o[dst] = sd.pop(keys[0]) if len(keys) == 1 else torch.cat([sd.pop(k) for k in keys], dim=0)

    take("token_embedding.weight", "embeddings.token_embedding.weight")
    take("positional_embedding", "embeddings.position_embedding.weight")
    for i in range(n_layers):
        p, q = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for wb in ("weight", "bias"):
            take(q + f"ln_1.{wb}", p + f"layer_norm1.{wb}")
            take(q + f"attn.in_proj_{wb}", *[p + f"self_attn.{n}_proj.{wb}" for n in ("q", "k", "v")])
            take(q + f"attn.out_proj.{wb}", p + f"self_attn.out_proj.{wb}")
            take(q + f"ln_2.{wb}", p + f"layer_norm2.{wb}")
            take(q + f"mlp.c_fc.{wb}", p + f"mlp.fc1.{wb}")
            take(q + f"mlp.c_proj.{wb}", p + f"mlp.fc2.{wb}")
    take("ln_final.weight", "final_layer_norm.weight")
    take("ln_final.bias", "final_layer_norm.bias")
    check(not sd, f"unconverted text-encoder keys: {sorted(sd)}")
    if names is not None:
        names.update({prefix + k: v for k, v in src.items()})
    return {prefix + k: v for k, v in o.items()}


def ldm_schedule_buffers(n=1000, linear_start=0.00085, linear_end=0.012):
    """The buffers ldm.models.diffusion.ddpm.DDPM.register_schedule() puts in every SD checkpoint
    (computed in float64 with numpy, stored as float32, v_posterior = 0)."""
    betas = (np.linspace(linear_start**0.5, linear_end**0.5, n, dtype=np.float64)) ** 2
    alphas = 1.0 - betas
    ac = np.cumprod(alphas, axis=0)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    bufs = {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": np.sqrt(ac),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
        "log_one_minus_alphas_cumprod": np.log(1.0 - ac),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": np.log(np.maximum(post_var, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
    }
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in bufs.items()}


# ----------------------------------------------------------------------------------------------
# forward passes with debug hooks
# ----------------------------------------------------------------------------------------------
class Hooks:
    def __init__(self):
        self.out, self.handles = {}, []

    def add(self, name, module, pick=None):
        def fn(_m, _inp, output):
            check(name not in self.out, f"hook {name} fired twice")
            o = pick(output) if pick else output
            self.out[name] = o.detach().float().clone().contiguous()

        self.handles.append(module.register_forward_hook(fn))

    def close(self):
        for h in self.handles:
            h.remove()
        return self.out


@torch.no_grad()
def run_te(te, ids, debug=True):
    hk = Hooks()
    if debug:
        hk.add("te.debug.embeddings", te.embeddings)
    o = te(ids, output_hidden_states=True)
    dbg = hk.close()
    hs = o.hidden_states
    check(len(hs) == te.config.num_hidden_layers + 1, "hidden_states count")
    last = o.last_hidden_state
    check(torch.equal(last, te.final_layer_norm(hs[-1])), "last_hidden_state != final_layer_norm(hidden_states[-1])")
    check(torch.equal(dbg.get("te.debug.embeddings", hs[0]), hs[0]), "embeddings hook != hidden_states[0]")
    res = {"te.last_hidden_state": last.float(), "te.penultimate": te.final_layer_norm(hs[-2]).float()}
    if debug:
        res.update(dbg)
        for i in range(1, len(hs)):
            res[f"te.debug.layer{i - 1}"] = hs[i].float()  # output of encoder layer i-1, before final LN
    return res


@torch.no_grad()
def run_unet(unet, sample, t, ctx, debug=True):
    hk = Hooks()
    if debug:
        hk.add("unet.debug.time_proj", unet.time_proj)
        hk.add("unet.debug.time_emb", unet.time_embedding)
        hk.add("unet.debug.conv_in", unet.conv_in)
        for i, b in enumerate(unet.down_blocks):
            hk.add(f"unet.debug.down{i}", b, pick=lambda o: o[0])
        hk.add("unet.debug.mid", unet.mid_block)
        for i, b in enumerate(unet.up_blocks):
            hk.add(f"unet.debug.up{i}", b)
    out = unet(sample, t, encoder_hidden_states=ctx).sample
    dbg = hk.close()
    res = {"unet.out": out.float()}
    res.update(dbg)
    return res


@torch.no_grad()
def run_vae(vae, image, latent, debug=True):
    hk = Hooks()
    if debug:
        hk.add("vae.debug.encoder_out", vae.encoder)
        hk.add("vae.debug.post_quant_conv", vae.post_quant_conv)
    dist = vae.encode(image).latent_dist
    dec = vae.decode(latent).sample
    dbg = hk.close()
    res = {"vae.mean": dist.mean.float(), "vae.logvar": dist.logvar.float(), "vae.decoded": dec.float()}
    res.update(dbg)
    return res


def make_inputs(kind, vocab, seed, tokenizer=None):
    g = lambda s: torch.Generator().manual_seed(seed + s)  # noqa: E731
    if kind == "sd1":
        # "a photo of a cat" by the folder's tokenizer, padded with EOS (SD1 tokenizer behaviour)
        row0 = tokenizer("a photo of a cat", padding="max_length", max_length=77).input_ids
        check(len(row0) == 77 and row0[-1] == EOS, "sd1 prompt ids padded with EOS")
    else:
        # vocab-1000 stand-in for an SD2 prompt: BOS=998 ... EOS=999, padded with 0 (OpenCLIP pads with 0)
        row0 = [998, 320, 125, 539, 320, 368, 999]
        row0 = row0 + [0] * (77 - len(row0))
    row1 = torch.randint(0, vocab, (77,), generator=g(1), dtype=torch.int64)
    row1[0], row1[-1] = 0, vocab - 1  # first and last rows of the embedding table
    ids = torch.stack([torch.tensor(row0, dtype=torch.int64), row1])
    return {
        "te.input_ids": ids,
        "unet.sample": torch.randn(2, 4, 16, 16, generator=g(2)),
        "unet.timesteps": torch.tensor([10, 981], dtype=torch.int64),
        "vae.image": torch.rand(2, 3, 32, 32, generator=g(3)) * 2 - 1,
        "vae.latent": torch.randn(2, 4, 16, 16, generator=g(4)),
    }


def golden(te, unet, vae, inputs):
    g = dict(inputs)
    t = run_te(te, inputs["te.input_ids"])
    g.update(t)
    g["unet.context"] = t["te.last_hidden_state"].clone()
    g.update(run_unet(unet, inputs["unet.sample"], inputs["unet.timesteps"], g["unet.context"]))
    g.update(run_vae(vae, inputs["vae.image"], inputs["vae.latent"]))
    return {k: v.contiguous() for k, v in g.items()}


def build(cfg):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**cfg["unet"]).eval()
    torch.manual_seed(0)
    vae = AutoencoderKL(**cfg["vae"]).eval()
    torch.manual_seed(0)
    te = CLIPTextModel(CLIPTextConfig(**cfg["text"])).eval()
    return unet, vae, te


def write_folder(out, unet, vae, te, scheduler, dtype, variant, te_prefix, tokenizer_configs=None):
    """configs from the float32 models, weights written with safetensors.save_file (format=pt); with
    tokenizer_configs (a configs/ tokenizer folder), also tokenizer/ with the tiny BPE."""
    os.makedirs(out)
    suffix = f".{variant}" if variant else ""
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", type(scheduler).__name__],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"] if tokenizer_configs else [None, None],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    with open(os.path.join(out, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
        f.write("\n")
    scheduler.save_config(os.path.join(out, "scheduler"))
    if tokenizer_configs:
        write_tokenizer_folder(os.path.join(out, "tokenizer"), tokenizer_configs, "<|endoftext|>")
    for name, m in (("unet", unet), ("vae", vae)):
        d = os.path.join(out, name)
        m.save_config(d)
        sd = {k: v.detach().to(dtype).contiguous() for k, v in m.state_dict().items()}
        save_file(sd, os.path.join(d, f"diffusion_pytorch_model{suffix}.safetensors"), metadata={"format": "pt"})
    d = os.path.join(out, "text_encoder")
    os.makedirs(d)
    te.config.architectures = ["CLIPTextModel"]
    te.config.dtype = torch.float32  # what model.save_pretrained writes for an f32 model ("dtype": "float32")
    te.config.save_pretrained(d)
    sd = {te_prefix + k: v.detach().to(dtype).contiguous() for k, v in te.state_dict().items()}
    save_file(sd, os.path.join(d, f"model{suffix}.safetensors"), metadata={"format": "pt"})


def load_folder(path, variant):
    kw = dict(variant=variant, local_files_only=True)
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=torch.float32, **kw).eval()
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=torch.float32, **kw).eval()
    te, info = CLIPTextModel.from_pretrained(
        path, subfolder="text_encoder", dtype=torch.float32, output_loading_info=True, **kw
    )
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    check(not bad, f"text encoder of {path} loads with {bad}")
    return unet, vae, te.eval()


def round_trip(model, dtype):
    """a copy of the model whose params went through `dtype` and back to float32."""
    sd = {k: v.to(dtype).float() for k, v in model.state_dict().items()}
    m = CLIPTextModel(model.config) if isinstance(model, CLIPTextModel) else type(model).from_config(model.config)
    m.load_state_dict(sd, strict=True)
    return m.eval()


def compare_outputs(section, what, ref, got, exact=True):
    worst = 0.0
    for k in ref:
        if k not in got:
            continue
        d = maxdiff(ref[k], got[k])
        worst = max(worst, d)
        if exact:
            check(d == 0.0, f"{section} {what}: {k} differs by {d}")
    record(section, what, f"max abs diff = {worst:.3g}" + (" (exact)" if worst == 0 else ""))
    return worst


def pipeline_single_file_check(section, path, folder, ref_unet, ref_vae, ref_te):
    """StableDiffusionPipeline.from_single_file(path, config=folder): every component equal to the folder's."""
    try:
        pipe = StableDiffusionPipeline.from_single_file(
            path, config=folder, local_files_only=True, torch_dtype=torch.float32, safety_checker=None,
            tokenizer=None,
        )
    except Exception as e:  # noqa: BLE001
        record(section, "StableDiffusionPipeline.from_single_file(config=folder)", f"FAILED: {type(e).__name__}: {e}")
        return False
    n = 0
    for m_ref, m in ((ref_unet, pipe.unet), (ref_vae, pipe.vae), (ref_te, pipe.text_encoder)):
        n += assert_params_equal(m_ref, m, f"{section} pipeline")
    record(
        section,
        "StableDiffusionPipeline.from_single_file(config=folder)",
        f"loads; unet/vae/text_encoder params identical to the folder's ({n} tensors); "
        f"scheduler {type(pipe.scheduler).__name__} prediction_type={pipe.scheduler.config.prediction_type}",
    )
    return True


# ----------------------------------------------------------------------------------------------
# tiny-sd1
# ----------------------------------------------------------------------------------------------
def make_sd1(out_root):
    sec = "tiny-sd1"
    print(f"== {sec}")
    folder = os.path.join(out_root, "tiny-sd1")
    unet, vae, te = build(SD1)
    kit_sha = os.path.join(os.path.dirname(KIT_TINY), "fixtures-sha256.txt")
    if os.path.exists(kit_sha):  # same kwargs + seeds as the kit's tiny model: same f32 weights (file sha256)
        import hashlib
        from safetensors.torch import save as st_bytes

        want = dict(line.split()[::-1] for line in open(kit_sha) if line.strip())
        ok = []
        for comp, m, fn, pre in (
            ("unet", unet, "diffusion_pytorch_model.safetensors", ""),
            ("vae", vae, "diffusion_pytorch_model.safetensors", ""),
        ):  # (not the text encoder: the kit's has the full 49,408-row token table)
            b = st_bytes({pre + k: v.contiguous() for k, v in m.state_dict().items()}, metadata={"format": "pt"})
            ok.append(hashlib.sha256(b).hexdigest() == want.get(f"tiny/{comp}/{fn}"))
        record(sec, "f32 weights before fp16 rounding == kit's models/tiny (sha256 of unet/vae files)",
               "yes" if all(ok) else f"NO {ok}")
    sched = PNDMScheduler.from_config(SD15_PNDM)
    write_folder(folder, unet, vae, te, sched, torch.float16, "fp16", te_prefix="text_model.",
                 tokenizer_configs=SD15_TOKENIZER_CONFIGS)
    if os.path.isdir(KIT_TINY):
        cfgs = ["unet/config.json", "vae/config.json", "scheduler/scheduler_config.json"]
        same = [c for c in cfgs
                if open(os.path.join(folder, c), "rb").read() == open(os.path.join(KIT_TINY, c), "rb").read()]
        record(sec, "config files byte-identical to the kit's models/tiny", ", ".join(same) if same else "none")

    # the golden outputs use the weights exactly as stored: fp16 -> float32, compute in float32
    f_unet, f_vae, f_te = load_folder(folder, "fp16")
    n = 0
    for a, b in ((unet, f_unet), (vae, f_vae), (te, f_te)):
        n += assert_params_equal(round_trip(a, torch.float16), b, f"{sec} fp16 variant reload")
    record(sec, "from_pretrained(variant='fp16', float32) == .half().float() of the built params", f"yes ({n} tensors)")
    p = StableDiffusionPipeline.from_pretrained(folder, variant="fp16", torch_dtype=torch.float32, local_files_only=True)
    check(len(p.tokenizer) == VOCAB and p.tokenizer.pad_token_id == EOS and type(p.scheduler).__name__ == "PNDMScheduler",
          "pipeline folder load")
    record(sec, "StableDiffusionPipeline.from_pretrained(folder, variant='fp16')",
           f"loads, with the folder's tokenizer ({len(p.tokenizer)} ids, pads with {EOS})")
    tokenizer = p.tokenizer
    del p

    inputs = make_inputs("sd1", SD1["text"]["vocab_size"], seed=1000, tokenizer=tokenizer)
    gold = golden(f_te, f_unet, f_vae, inputs)

    # ---- single file (.ckpt, f16, LDM layout + schedule buffers; no EMA copy: 2.8 MB of the size budget,
    # the EMA check is made on tiny-sdxl.safetensors by make_sdxl_pipeline_fixtures.py)
    f16 = lambda m: {k: v.detach().half().clone() for k, v in m.state_dict().items()}  # noqa: E731
    unet_ldm = unet_to_ldm(unet, f16(unet))
    sd = dict(ldm_schedule_buffers())
    sd.update(unet_ldm)
    sd.update(vae_to_ldm(vae, f16(vae)))
    sd.update({"cond_stage_model.transformer.text_model." + k: v for k, v in f16(te).items()})
    sd["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
    sd = {k: v.clone().contiguous() for k, v in sd.items()}  # one storage per tensor
    ckpt = os.path.join(out_root, "tiny-sd1.ckpt")
    buf = io.BytesIO()  # saving to a buffer names the zip records archive/... as in real SD .ckpt files
    torch.save({"state_dict": sd, "global_step": 470000}, buf)
    with open(ckpt, "wb") as f:
        f.write(buf.getvalue())
    with zipfile.ZipFile(ckpt) as z:
        names = z.namelist()
        check("archive/data.pkl" in names, f"ckpt zip records: {names[:3]}")
    record(sec, "tiny-sd1.ckpt zip layout", f"{len(names)} records, archive/data.pkl + archive/data/0..; pickle protocol 2")

    # ---- verify with diffusers' single-file machinery
    loaded = torch.load(ckpt, map_location="cpu", weights_only=True)
    check(set(loaded) == {"state_dict", "global_step"} and loaded["global_step"] == 470000, "ckpt top level")
    lsd = loaded["state_dict"]
    check(set(lsd) == set(sd) and all(torch.equal(lsd[k], sd[k]) and lsd[k].dtype == sd[k].dtype for k in sd), "ckpt")
    check(not any(k.startswith("model_ema") for k in lsd), "tiny-sd1.ckpt must hold no EMA keys")
    counts = dict(
        unet=sum(k.startswith("model.diffusion_model.") for k in lsd),
        vae=sum(k.startswith("first_stage_model.") for k in lsd),
        te=sum(k.startswith("cond_stage_model.") for k in lsd),
        other=sum(not k.startswith(("model.", "first_stage_model.", "cond_stage_model.")) for k in lsd),
    )
    record(sec, "tiny-sd1.ckpt tensor counts", json.dumps(counts))

    # diffusers' converters on the dict (pure key round trip, all tensors identical objects)
    d_unet = sfu.convert_ldm_unet_checkpoint(lsd, dict(f_unet.config))
    d_vae = sfu.convert_ldm_vae_checkpoint(lsd, dict(f_vae.config))
    fu, fv = f16(unet), f16(vae)
    check(set(d_unet) == set(fu) and all(torch.equal(d_unet[k], fu[k]) for k in fu), "convert_ldm_unet_checkpoint")
    check(set(d_vae) == set(fv) and all(torch.equal(d_vae[k], fv[k]) for k in fv), "convert_ldm_vae_checkpoint")
    record(sec, "convert_ldm_unet/vae_checkpoint(ckpt) == folder state dicts", f"yes ({len(fu)} + {len(fv)} tensors)")

    kw = dict(config=folder, local_files_only=True, torch_dtype=torch.float32)
    s_unet = UNet2DConditionModel.from_single_file(ckpt, subfolder="unet", **kw).eval()
    n = assert_params_equal(f_unet, s_unet, "sd1 unet single file")
    s_out = run_unet(s_unet, inputs["unet.sample"], inputs["unet.timesteps"], gold["unet.context"], debug=False)
    compare_outputs(sec, f"UNet2DConditionModel.from_single_file(ckpt) vs folder: {n} params equal; unet.out", gold, s_out)

    s_vae = AutoencoderKL.from_single_file(ckpt, subfolder="vae", **kw).eval()
    n = assert_params_equal(f_vae, s_vae, "sd1 vae single file")
    compare_outputs(sec, f"AutoencoderKL.from_single_file(ckpt) vs folder: {n} params equal; vae outputs", gold,
                    run_vae(s_vae, inputs["vae.image"], inputs["vae.latent"], debug=False))

    s_te = sfu.create_diffusers_clip_model_from_ldm(
        CLIPTextModel, lsd, subfolder="text_encoder", config=folder, torch_dtype=torch.float32, local_files_only=True
    )
    n = assert_params_equal(f_te, s_te, "sd1 text encoder single file")
    compare_outputs(sec, f"create_diffusers_clip_model_from_ldm(ckpt) vs folder: {n} params equal; te outputs", gold,
                    run_te(s_te, inputs["te.input_ids"], debug=False))
    pipeline_single_file_check(sec, ckpt, folder, f_unet, f_vae, f_te)

    ref_ac = sched.alphas_cumprod
    record(sec, "ckpt alphas_cumprod (LDM, float64->f32) vs diffusers scheduler alphas_cumprod (f32)",
           f"max abs diff = {maxdiff(sd['alphas_cumprod'], ref_ac):.3g}")
    return gold


# ----------------------------------------------------------------------------------------------
# tiny-sd2
# ----------------------------------------------------------------------------------------------
def openclip_reference(lsd, ids, n_blocks_total, layer_idx, width, heads, mlp_ratio, vocab):
    """SD2's FrozenOpenCLIPEmbedder.encode_with_transformer, run with open_clip's own TextTransformer
    on the single-file weights: skip the last `layer_idx` resblocks, then ln_final."""
    import open_clip.transformer as oct

    tt = oct.TextTransformer(
        context_length=77, vocab_size=vocab, width=width, heads=heads, layers=n_blocks_total,
        mlp_ratio=mlp_ratio, output_dim=width, act_layer=torch.nn.GELU,
    ).eval()
    pre = "cond_stage_model.model."
    sd = {k[len(pre):]: v for k, v in lsd.items() if k.startswith(pre) and k != pre + "logit_scale"}
    tt.load_state_dict(sd, strict=True)
    with torch.no_grad():
        x = tt.token_embedding(ids) + tt.positional_embedding
        for r in tt.transformer.resblocks[: n_blocks_total - layer_idx]:
            x = r(x, attn_mask=tt.attn_mask)
        return tt.ln_final(x), oct.__name__


def make_sd2(out_root):
    sec = "tiny-sd2"
    print(f"== {sec}")
    folder = os.path.join(out_root, "tiny-sd2")
    unet, vae, te = build(SD2)
    sched = DDIMScheduler.from_config(SD21_DDIM)
    write_folder(folder, unet, vae, te, sched, torch.float32, None, te_prefix="")
    f_unet, f_vae, f_te = load_folder(folder, None)
    n = 0
    for a, b in ((unet, f_unet), (vae, f_vae), (te, f_te)):
        n += assert_params_equal(a, b, f"{sec} reload")
    record(sec, "from_pretrained(folder) == built params", f"yes ({n} tensors)")
    p = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32, local_files_only=True,
                                                tokenizer=None)
    check(p.scheduler.config.prediction_type == "v_prediction", "sd2 scheduler")
    check([a.transformer_blocks[0].attn1.heads for a in p.unet.down_blocks[0].attentions] == [2], "sd2 heads")
    check(p.unet.mid_block.attentions[0].transformer_blocks[0].attn1.heads == 4, "sd2 mid heads")
    record(sec, "StableDiffusionPipeline.from_pretrained(folder, tokenizer=None)",
           "loads; DDIMScheduler v_prediction; heads down0/mid/up1 = 2/4/2 (head dim 16)")
    del p

    inputs = make_inputs("sd2", SD2["text"]["vocab_size"], seed=2000)
    gold = golden(f_te, f_unet, f_vae, inputs)

    # ---- single file (.safetensors, f32, SD2 LDM layout, OpenCLIP text encoder + 1 extra resblock)
    f32 = lambda m: {k: v.detach().float().clone() for k, v in m.state_dict().items()}  # noqa: E731
    nl = SD2["text"]["num_hidden_layers"]
    d = SD2["text"]["hidden_size"]
    sd = dict(ldm_schedule_buffers())
    sd.update(unet_to_ldm(unet, f32(unet)))
    sd.update(vae_to_ldm(vae, f32(vae)))
    te_ldm = te_to_openclip(f32(te), nl)
    gen = torch.Generator().manual_seed(5151)
    extra = {}  # resblock `nl`: present in real SD2 files (24 vs 23), unused by SD2 ("penultimate" layer)
    for k, v in te_ldm.items():
        if k.startswith("cond_stage_model.model.transformer.resblocks.0."):
            k2 = k.replace("resblocks.0.", f"resblocks.{nl}.")
            r = torch.randn(v.shape, generator=gen)
            extra[k2] = (1.0 + 0.1 * r) if ".ln_" in k and k.endswith("weight") else 0.2 * r
    # insert the extra block right after the last real one, then ln_final, text_projection, logit_scale
    te_items = list(te_ldm.items())
    cut = next(i for i, (k, _) in enumerate(te_items) if k.startswith("cond_stage_model.model.ln_final"))
    te_all = dict(te_items[:cut] + list(extra.items()) + te_items[cut:])
    te_all["cond_stage_model.model.text_projection"] = torch.randn(d, d, generator=gen) * d**-0.5
    te_all["cond_stage_model.model.logit_scale"] = torch.tensor(4.6052, dtype=torch.float32)  # ln(100)
    sd.update(te_all)
    sd = {k: v.clone().contiguous() for k, v in sd.items()}
    st = os.path.join(out_root, "tiny-sd2.safetensors")
    save_file(sd, st, metadata={"format": "pt"})

    lsd = load_file(st)
    check(set(lsd) == set(sd) and all(torch.equal(lsd[k], sd[k]) for k in sd), "sd2 safetensors")
    counts = dict(
        unet=sum(k.startswith("model.diffusion_model.") for k in lsd),
        vae=sum(k.startswith("first_stage_model.") for k in lsd),
        te=sum(k.startswith("cond_stage_model.") for k in lsd),
        te_extra_resblock=len(extra),
        other=sum(not k.startswith(("model.", "first_stage_model.", "cond_stage_model.")) for k in lsd),
    )
    record(sec, "tiny-sd2.safetensors tensor counts", json.dumps(counts))
    fu, fv = f32(unet), f32(vae)
    d_unet = sfu.convert_ldm_unet_checkpoint(lsd, dict(f_unet.config))
    d_vae = sfu.convert_ldm_vae_checkpoint(lsd, dict(f_vae.config))
    check(set(d_unet) == set(fu) and all(torch.equal(d_unet[k], fu[k]) for k in fu), "sd2 convert_ldm_unet")
    check(set(d_vae) == set(fv) and all(torch.equal(d_vae[k], fv[k]) for k in fv), "sd2 convert_ldm_vae")
    d_te = sfu.convert_open_clip_checkpoint(f_te, lsd)
    d_te = {k.removeprefix("text_model."): v for k, v in d_te.items()}
    ft = f32(te)
    unexpected = sorted(set(d_te) - set(ft))
    check(all(k.startswith(f"encoder.layers.{nl}.") for k in unexpected), f"unexpected te keys {unexpected}")
    check(set(ft) <= set(d_te) and all(torch.equal(d_te[k], ft[k]) for k in ft), "convert_open_clip_checkpoint")
    record(sec, "convert_ldm_unet/vae_checkpoint + convert_open_clip_checkpoint == folder state dicts",
           f"yes ({len(fu)} + {len(fv)} + {len(ft)} tensors); the extra resblock {nl} comes out as "
           f"{len(unexpected)} unexpected keys encoder.layers.{nl}.* that loading drops")

    kw = dict(config=folder, local_files_only=True, torch_dtype=torch.float32)
    s_unet = UNet2DConditionModel.from_single_file(st, subfolder="unet", **kw).eval()
    n = assert_params_equal(f_unet, s_unet, "sd2 unet single file")
    compare_outputs(sec, f"UNet2DConditionModel.from_single_file vs folder: {n} params equal; unet.out", gold,
                    run_unet(s_unet, inputs["unet.sample"], inputs["unet.timesteps"], gold["unet.context"],
                             debug=False))
    s_vae = AutoencoderKL.from_single_file(st, subfolder="vae", **kw).eval()
    n = assert_params_equal(f_vae, s_vae, "sd2 vae single file")
    compare_outputs(sec, f"AutoencoderKL.from_single_file vs folder: {n} params equal; vae outputs", gold,
                    run_vae(s_vae, inputs["vae.image"], inputs["vae.latent"], debug=False))
    s_te = sfu.create_diffusers_clip_model_from_ldm(
        CLIPTextModel, lsd, subfolder="text_encoder", config=folder, torch_dtype=torch.float32, local_files_only=True
    )
    n = assert_params_equal(f_te, s_te, "sd2 text encoder single file")
    compare_outputs(sec, f"create_diffusers_clip_model_from_ldm (OpenCLIP) vs folder: {n} params equal; te outputs",
                    gold, run_te(s_te, inputs["te.input_ids"], debug=False))
    pipeline_single_file_check(sec, st, folder, f_unet, f_vae, f_te)

    # independent check of the OpenCLIP layout with open_clip itself (not diffusers)
    try:
        kwoc = dict(n_blocks_total=nl + 1, width=d, heads=SD2["text"]["num_attention_heads"],
                    mlp_ratio=SD2["text"]["intermediate_size"] / d, vocab=SD2["text"]["vocab_size"])
        ids = inputs["te.input_ids"]
        last, _ = openclip_reference(lsd, ids, layer_idx=1, **kwoc)
        pen, _ = openclip_reference(lsd, ids, layer_idx=2, **kwoc)
        allb, _ = openclip_reference(lsd, ids, layer_idx=0, **kwoc)
        d1, d2 = maxdiff(last, gold["te.last_hidden_state"]), maxdiff(pen, gold["te.penultimate"])
        d3 = maxdiff(allb, gold["te.last_hidden_state"])
        check(d1 < 1e-5 and d2 < 1e-5 and d3 > 1e-2, f"open_clip check {d1} {d2} {d3}")
        import open_clip

        record(sec, f"open_clip {open_clip.__version__} TextTransformer on tiny-sd2.safetensors, SD2 'penultimate' "
               f"(skip last resblock) + ln_final vs te.last_hidden_state",
               f"max abs diff = {d1:.3g}; skipping 2 blocks vs te.penultimate: {d2:.3g}; "
               f"using all {nl + 1} blocks (wrong) differs by {d3:.3g}")
    except ImportError:
        record(sec, "open_clip cross-check", "skipped (open_clip not installed)")
    return gold


# ----------------------------------------------------------------------------------------------
# full-size key-name round trips (meta device) and key tables
# ----------------------------------------------------------------------------------------------
def full_size_keys(tables_dir=None):
    """Full-size SD1.5 / SD2.1 models on the meta device: diffusers -> LDM names with this script's maps,
    then back with diffusers' converters. With tables_dir, also writes <tables_dir>/{sd15,sd21}-ldm-keys.txt
    (LDM key, component, diffusers key, LDM shape); these are not part of the fixtures (size budget)."""
    sec = "full-size"
    print(f"== {sec} key round trips (meta device)")
    for name, cfg, openclip in (("sd15", SD15_FULL, False), ("sd21", SD21_FULL, True)):
        with torch.device("meta"):
            unet = UNet2DConditionModel(**cfg["unet"])
            vae = AutoencoderKL(**cfg["vae"])
            te = CLIPTextModel(CLIPTextConfig(**cfg["text"]))
        us, vs, ts = unet.state_dict(), vae.state_dict(), te.state_dict()
        rows = []
        ldm_u = unet_to_ldm(unet, us)
        ldm_v = vae_to_ldm(vae, vs)
        inv_u = {v: k for k, v in unet_ldm_map(unet).items()}
        inv_v = {v[0]: k for k, v in vae_ldm_map(vae).items()}
        for k, v in ldm_u.items():
            rows.append((k, "unet", inv_u[k[len("model.diffusion_model."):]], list(v.shape)))
        for k, v in ldm_v.items():
            rows.append((k, "vae", inv_v[k[len("first_stage_model."):]], list(v.shape)))
        cu = sfu.convert_ldm_unet_checkpoint(ldm_u, dict(unet.config))
        cv = sfu.convert_ldm_vae_checkpoint(ldm_v, dict(vae.config))
        check(set(cu) == set(us) and all(cu[k] is us[k] for k in us), f"{name} unet key round trip")
        check(set(cv) == set(vs) and all(cv[k].shape == vs[k].shape for k in vs), f"{name} vae key round trip")
        if openclip:
            nl = cfg["text"]["num_hidden_layers"]
            src = {}
            ldm_t = te_to_openclip(ts, nl, names=src)
            for k, v in ldm_t.items():
                rows.append((k, "text_encoder", src[k], list(v.shape)))
            ct = sfu.convert_open_clip_checkpoint(te, ldm_t)
            ct = {k.removeprefix("text_model."): v for k, v in ct.items()}
            check(set(ct) == set(ts) and all(ct[k].shape == ts[k].shape for k in ts), f"{name} openclip round trip")
            # as in real SD2 files, which diffusers drops by name (SD_2_TEXT_ENCODER_KEYS_TO_IGNORE)
            ignored = [k for k in sfu.SD_2_TEXT_ENCODER_KEYS_TO_IGNORE if "resblocks" in k]
            check(all(f"resblocks.{nl}." in k for k in ignored), "SD2 ignore list is resblock 23")
            for k in sorted(ignored):
                shp = ldm_t[k.replace(f"resblocks.{nl}.", "resblocks.0.")].shape
                rows.append((k, "text_encoder", "(unused: extra resblock)", list(shp)))
            d = cfg["text"]["hidden_size"]
            rows.append(("cond_stage_model.model.text_projection", "text_encoder", "(unused)", [d, d]))
            rows.append(("cond_stage_model.model.logit_scale", "text_encoder", "(unused)", []))
        else:
            for k, v in ts.items():
                rows.append(("cond_stage_model.transformer.text_model." + k, "text_encoder", "text_model." + k,
                             list(v.shape)))
            rows.append(("cond_stage_model.transformer.text_model.embeddings.position_ids", "text_encoder",
                         "(buffer, ignore)", [1, 77]))
        for k in ldm_schedule_buffers():
            rows.append((k, "-", "(schedule buffer)", [1000]))
        if tables_dir:
            os.makedirs(tables_dir, exist_ok=True)
            with open(os.path.join(tables_dir, f"{name}-ldm-keys.txt"), "w") as f:
                f.write(f"# {name}: LDM single-file key\tcomponent\tdiffusers key\tshape (derived by "
                        f"scripts/make_fixtures.py, key round trip checked with diffusers {diffusers.__version__})\n")
                for r in rows:
                    f.write(f"{r[0]}\t{r[1]}\t{r[2]}\t{r[3]}\n")
        if name == "sd15" and os.path.exists(os.path.join(SHARED_KEYS, "sd15-keys.unet.txt")):
            ref = {}
            for comp in ("unet", "text_encoder", "vae"):
                for line in open(os.path.join(SHARED_KEYS, f"sd15-keys.{comp}.txt")):
                    if not line.startswith("#"):
                        c, k, shp, _ = line.rstrip("\n").split("\t")
                        ref[(c, k)] = json.loads(shp)
            mine = {("unet", k): list(v.shape) for k, v in us.items()}
            mine.update({("vae", k): list(v.shape) for k, v in vs.items()})
            mine.update({("text_encoder", "text_model." + k): list(v.shape) for k, v in ts.items()})
            check(mine == ref, "meta sd15 model keys/shapes != shared sd15-keys lists")
            record(sec, "sd15 meta models vs shared keys/sd15-keys.*.txt", f"identical ({len(ref)} tensors)")
        n_te = len(rows) - len(ldm_u) - len(ldm_v) - len(ldm_schedule_buffers())
        record(sec, f"{name} full-size (meta device) diffusers->LDM names, back through diffusers' converters",
               f"identical: {len(ldm_u)} unet + {len(ldm_v)} vae keys"
               + (" + the OpenCLIP text encoder (23 layers)" if openclip else "") + f"; {n_te} text-encoder LDM keys")


SHARED_KEY_NAMES = ["sd15-keys.unet.txt", "sd15-keys.text_encoder.txt", "sd15-keys.vae.txt", "README.md"]


def copy_shared_keys(out_root):
    keys_dir = os.path.join(out_root, "keys")
    os.makedirs(keys_dir, exist_ok=True)
    names = SHARED_KEY_NAMES
    if not all(os.path.exists(os.path.join(SHARED_KEYS, n)) for n in names):
        print(f"  {SHARED_KEYS} not found: skipping the copy of the sd15 key lists")
        return False
    for n in names:
        shutil.copyfile(os.path.join(SHARED_KEYS, n), os.path.join(keys_dir, n))
        os.chmod(os.path.join(keys_dir, n), 0o644)
    return True


# ----------------------------------------------------------------------------------------------
# README
# ----------------------------------------------------------------------------------------------
README_HEAD = """# invert-model test fixtures

Generated by `scripts/make_fixtures.py` (run from the repo root:
`/work/venv/bin/python scripts/make_fixtures.py crates/invert-model/tests/fixtures`).
Do not edit by hand; re-run the script. Versions used: {versions}.
CPU, float32, one thread, deterministic (torch.manual_seed(0) before each component, fixed
torch.Generator seeds for every input). Re-running gives byte-identical files (the golden files'
`__metadata__` is rewritten in sorted key order, since safetensors writes it in hash-map order).
Nothing is downloaded.

## Files

### `tiny-sd1/` (diffusers folder, SD1-style, **fp16 variant files only**)
- Same kwargs and seeds as the kit's `make_models.py` CONFIGS["tiny"]: UNet block_out_channels (32, 64),
  layers_per_block 2, down (DownBlock2D, CrossAttnDownBlock2D), up (CrossAttnUpBlock2D, UpBlock2D),
  cross_attention_dim 32, attention_head_dim 8 (= 8 heads, head dim 4 at 32 ch / 8 at 64 ch),
  norm_num_groups 32; VAE [32, 64], 1 resnet per block, latent 4 (H/2), scaling_factor 0.18215;
  CLIPTextModel hidden 32, 5 layers, 4 heads, MLP 37, quick_gelu, vocab 1000, 77 positions.
- `tokenizer/`: a 1000-id CLIP BPE (`scripts/tiny_clip_bpe.py`: OpenAI's id layout truncated, ids 0..997
  unchanged, `<|startoftext|>` 998, `<|endoftext|>` 999; SD 1.5's own tokenizer_config.json and
  special_tokens_map.json, padding with `<|endoftext|>`), so the token table has 1000 rows, not 49,408
  (3.1 MB less in each of this folder and `tiny-sd1.ckpt`). A learned word added to it gets id 1000.
- `model_index.json` (safety_checker/feature_extractor are `[null, null]`),
  `scheduler/scheduler_config.json` (SD1.5 PNDM, epsilon), `unet/config.json`,
  `vae/config.json`, `text_encoder/config.json` (transformers 5 writes `"dtype"`, not `"torch_dtype"`).
- Weights: `unet/diffusion_pytorch_model.fp16.safetensors`, `vae/diffusion_pytorch_model.fp16.safetensors`,
  `text_encoder/model.fp16.safetensors` (F16; text-encoder keys carry the `text_model.` prefix, the
  transformers-4 / real SD1.x layout). There is no non-variant file: a loader must find `*.fp16.safetensors`.
- VAE mid-block attention uses diffusers 0.42's `to_q/to_k/to_v/to_out.0` names, 2-D Linear weights.

### `tiny-sd2/` (diffusers folder, SD2-style, F32)
- UNet: block_out_channels (32, 64), layers_per_block 1, down (CrossAttnDownBlock2D, DownBlock2D),
  up (UpBlock2D, CrossAttnUpBlock2D), cross_attention_dim 32, **attention_head_dim [2, 4]** (a per-block
  list of head COUNTS: down0 2 heads, mid 4 heads (last entry), up1 2 heads (reversed list); head dim 16),
  **use_linear_projection** (proj_in/proj_out are Linear, 2-D weights), **upcast_attention** true,
  **norm_num_groups 16** (ResNets and Transformer2D GroupNorms).
- VAE: [16, 32], 1 resnet per block, **norm_num_groups 8** (2 and 4 channels per group), latent 4 (H/2),
  scaling_factor 0.18215; the channel change gives `conv_shortcut` (LDM `nin_shortcut`) in encoder
  down_blocks.1 and decoder up_blocks.1.
- CLIPTextModel: hidden 32, 4 layers, 4 heads, MLP 64, **gelu** (erf), vocab 1000, 77 positions.
  `text_encoder/model.safetensors` keys have **no** `text_model.` prefix (transformers 5's own layout).
- Scheduler: DDIMScheduler, SD 2.1 style, **prediction_type v_prediction** (scaled_linear 0.00085..0.012,
  1000 steps, set_alpha_to_one false, steps_offset 1, clip_sample false).
- Weights: `unet/diffusion_pytorch_model.safetensors`, `vae/diffusion_pytorch_model.safetensors`,
  `text_encoder/model.safetensors` (all F32).

### `tiny-sd1.ckpt` (CompVis/LDM single file, torch zip pickle, F16)
`torch.save({{"state_dict": sd, "global_step": 470000}})`. Same weights as `tiny-sd1/` (bit-identical F16).
- `model.diffusion_model.*`: UNet, LDM names (`time_embed.{{0,2}}`, `input_blocks.N.{{0,1}}`
  (`.0.op` = downsampler), `middle_block.{{0,1,2}}`, `output_blocks.N.{{0,1,2}}` (`.1.conv`/`.2.conv` =
  upsampler), `out.{{0,2}}`; resnets `in_layers.{{0,2}}`, `emb_layers.1`, `out_layers.{{0,3}}`,
  `skip_connection`; transformer internals keep diffusers' names).
- No EMA copy of the UNet (size budget): the `model_ema.*` keys and their golden output are in
  `tiny-sdxl.safetensors` / `golden/tiny-sdxl.safetensors` (`unet.noise_pred_ema`), written by
  `scripts/make_sdxl_pipeline_fixtures.py`.
- `first_stage_model.*`: VAE, LDM names (`encoder.down.N.block.M`, `encoder.down.N.downsample.conv`,
  `{{encoder,decoder}}.mid.{{block_1,attn_1,block_2}}`, `mid.attn_1.{{norm,q,k,v,proj_out}}` with **1x1 conv
  weights [c, c, 1, 1]**, `norm_out`, `nin_shortcut`, `decoder.up.N` in **reversed** order
  (`decoder.up.{{n-1-i}}` = diffusers `decoder.up_blocks.i`), `decoder.up.N.upsample.conv`, `quant_conv`,
  `post_quant_conv`).
- `cond_stage_model.transformer.text_model.*`: the transformers-4 CLIPTextModel names, plus the
  `embeddings.position_ids` buffer (I64 [1, 77]) that real SD1 files carry (ignore it).
- Top-level LDM schedule buffers (F32 [1000], computed like LDM's register_schedule in float64):
  betas, alphas_cumprod, alphas_cumprod_prev, sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod,
  log_one_minus_alphas_cumprod, sqrt_recip_alphas_cumprod, sqrt_recipm1_alphas_cumprod,
  posterior_variance, posterior_log_variance_clipped, posterior_mean_coef1, posterior_mean_coef2.

### `tiny-sd2.safetensors` (SD2 LDM single file, F32)
Same weights as `tiny-sd2/`.
- `model.diffusion_model.*` (as above; proj_in/proj_out 2-D Linear), `first_stage_model.*` (as above),
  schedule buffers (as above).
- Text encoder in OpenCLIP layout under `cond_stage_model.model.`: `token_embedding.weight`,
  `positional_embedding` ([77, 32] raw tensor), `transformer.resblocks.N.{{ln_1, attn.in_proj_weight
  ([96, 32] = q;k;v stacked on dim 0), attn.in_proj_bias ([96]), attn.out_proj, ln_2, mlp.c_fc,
  mlp.c_proj}}.{{weight,bias}}`, `ln_final`, `text_projection` ([32, 32], random, unused by SD),
  `logit_scale` (F32 scalar, unused).
- **resblocks 0..3 are the 4 diffusers layers; resblock 4 is an extra RANDOM block that must be ignored**
  (real SD2 files hold 24 resblocks; SD2 uses the penultimate layer, diffusers' text encoder has 23).
  A loader should take the layer count from the diffusers config (or resblocks - 1), not from the file.

### `golden/tiny-sd1.safetensors`, `golden/tiny-sd2.safetensors`
Computed on CPU in float32 from the folder weights **exactly as stored** (tiny-sd1: the fp16 variant
files loaded with `variant="fp16", torch_dtype=float32`, i.e. fp16 values upcast to f32). Metadata holds the
versions. F32 unless noted:
- `te.input_ids` (I64 [2, 77]). tiny-sd1 row 0: "a photo of a cat" by `tiny-sd1/tokenizer` (starts with 998)
  padded with 999; tiny-sd2 row 0: `998 320 125 539 320 368 999` padded with 0 (OpenCLIP pads with 0);
  row 1: random ids in [0, vocab) with position 0 = 0 and position 76 = vocab-1.
- `te.last_hidden_state` [2, 77, 32] (after final_layer_norm); `te.penultimate` [2, 77, 32] =
  `final_layer_norm(hidden_states[-2])` (diffusers clip_skip=1, A1111 "clip skip 2").
- `unet.sample` [2, 4, 16, 16] randn; `unet.timesteps` (I64 [2]) = [10, 981]; `unet.context` =
  te.last_hidden_state; `unet.out` [2, 4, 16, 16] = `unet(sample, timesteps, encoder_hidden_states=context).sample`.
- `vae.image` [2, 3, 32, 32] uniform in [-1, 1); `vae.mean`, `vae.logvar` [2, 4, 16, 16] =
  `vae.encode(image).latent_dist.mean / .logvar` (logvar clamped to [-30, 20] by diffusers; no scaling
  factor applied); `vae.latent` [2, 4, 16, 16] randn; `vae.decoded` [2, 3, 32, 32] = `vae.decode(latent).sample`
  (no scaling factor applied).
- Debug intermediates (forward hooks): `te.debug.embeddings` (token + position embeddings),
  `te.debug.layerI` (output of encoder layer I, before the final LayerNorm), `unet.debug.time_proj`
  (sinusoidal timestep features [2, 32], flip_sin_to_cos, shift 0), `unet.debug.time_emb` (time_embedding
  output [2, 128]), `unet.debug.conv_in`, `unet.debug.downI` (hidden state leaving down block I),
  `unet.debug.mid` (mid_block output), `unet.debug.upI` (up block I output, before conv_norm_out),
  `vae.debug.encoder_out` (encoder output before quant_conv, [2, 8, 16, 16]), `vae.debug.post_quant_conv`
  (decoder input after post_quant_conv, [2, 4, 16, 16]).

### `keys/`
- `sd15-keys.{{unet,text_encoder,vae}}.txt`, `README.md`: copied from `/work/shared/reference/keys/`
  (full-size SD1.5 diffusers key lists: component, name, shape, dtype).
- Not stored here (size budget): full-size LDM key tables. `make_fixtures.py OUT --ldm-key-tables DIR`
  writes `DIR/{{sd15,sd21}}-ldm-keys.txt` (LDM key, component, diffusers key, LDM shape), derived by this
  script's diffusers->LDM maps (not from real files) and round-tripped through diffusers' converters.

## Notes for the Rust loader (found while making these)
- tiny-sd2 ships no tokenizer; its `model_index.json` lists it as `[null, null]`. diffusers'
  `StableDiffusionPipeline.from_pretrained` / `from_single_file` then need `tokenizer=None` passed
  explicitly (tokenizer is not an optional component).
- diffusers' `from_single_file` loads on the meta device: a key its converter misses stays on `meta`
  silently, and keys it does not know are only logged as "not used". The script therefore compares
  every parameter of every single-file model with the folder model (`torch.equal`), not just outputs.
- diffusers ignores SD2's extra text resblock only by name (`resblocks.23`, SD_2_TEXT_ENCODER_KEYS_TO_IGNORE);
  here (resblock 4) it converts it to `encoder.layers.4.*` and drops it as unexpected keys. A Rust
  loader should stop at the configured layer count.
- With transformers >= 5.6 `CLIPTextModel` is flattened (no `.text_model`): keys have no
  `text_model.` prefix and diffusers 0.42.1's `StableDiffusionPipeline.encode_prompt(clip_skip=...)`
  raises `AttributeError: 'CLIPTextModel' object has no attribute 'text_model'`. `te.penultimate` here is
  therefore computed directly as `te.final_layer_norm(hidden_states[-2])`.
- LDM's schedule buffers (float64 math, stored f32) differ from diffusers' float32 `alphas_cumprod` by up
  to ~5e-7; take the schedule from the scheduler config, not from the checkpoint buffers.
- `tiny-sd1.ckpt` zip records are named `archive/...` (as in real SD checkpoints); a reader should find
  `*/data.pkl` whatever the prefix is.

## Verification results (produced by the script; it aborts on any failed check)

| section | check | result |
|---|---|---|
"""


# the last line of this script's part of README.md; what follows it (other scripts' sections) is kept
README_OWN_END = "this folder (e.g. `torch/`) come from other scripts, are left untouched and are not described here.\n"


def readme_tail(out_root):
    """the part of an existing README.md after this script's own part (sections of other scripts), or ''."""
    path = os.path.join(out_root, "README.md")
    if not os.path.exists(path):
        return ""
    text = open(path).read()
    i = text.find(README_OWN_END)
    return text[i + len(README_OWN_END) :] if i >= 0 else ""


def write_readme(out_root, sizes, total, tail=""):
    with open(os.path.join(out_root, "README.md"), "w") as f:
        f.write(README_HEAD.format(versions=", ".join(f"{k} {v}" for k, v in VERSIONS.items())))
        for s, c, v in RESULTS:
            f.write(f"| {s} | {c} | {v} |\n")
        f.write("\n## Sizes (bytes; files written by this script, README.md excluded)\n\n")
        for p, n in sizes:
            f.write(f"- `{p}`: {n}\n")
        f.write(f"\nTotal: {total} bytes. The limit for the whole folder is {SIZE_LIMIT} bytes; other entries in\n"
                + README_OWN_END)
        f.write(tail)


def canonical_metadata_order(path):
    """safetensors writes __metadata__ entries in hash-map order, so two runs give different bytes.
    Rewrite the JSON header with sorted metadata keys (tensor entries and data untouched; offsets are
    relative to the end of the header), padded with spaces to a multiple of 8 like safetensors does."""
    with open(path, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", None)
    new = {"__metadata__": dict(sorted(meta.items()))} if meta else {}
    new.update(header)
    hb = json.dumps(new, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(len(hb).to_bytes(8, "little") + hb + raw[8 + n :])


def save_golden(path, gold, model):
    meta = dict(VERSIONS)
    meta.update(
        model=model,
        generator="scripts/make_fixtures.py",
        compute="CPU float32, 1 thread, eval mode, diffusers default attention processor, "
        "transformers default attn_implementation",
    )
    save_file({k: v.contiguous() for k, v in sorted(gold.items())}, path, metadata=meta)
    canonical_metadata_order(path)
    with safe_open(path, "pt") as f:
        check(set(f.keys()) == set(gold) and f.metadata() == meta, "golden keys/metadata")
        check(all(torch.equal(f.get_tensor(k), gold[k]) for k in gold), "golden tensors")
    print(f"  {path}: {len(gold)} tensors")


def main():
    args = sys.argv[1:]
    tables_dir = None
    if "--ldm-key-tables" in args:
        i = args.index("--ldm-key-tables")
        tables_dir = args[i + 1]
        del args[i : i + 2]
    if len(args) != 1:
        raise SystemExit(__doc__)
    out_root = args[0]
    os.makedirs(out_root, exist_ok=True)
    tail = readme_tail(out_root)  # other scripts' README sections, kept after this script's part
    for n in OWNED_DIRS:
        shutil.rmtree(os.path.join(out_root, n), ignore_errors=True)
    for n in OWNED_FILES:
        if os.path.exists(os.path.join(out_root, n)):
            os.remove(os.path.join(out_root, n))
    print("versions:", VERSIONS)

    g1 = make_sd1(out_root)
    g2 = make_sd2(out_root)
    os.makedirs(os.path.join(out_root, "golden"), exist_ok=True)
    save_golden(os.path.join(out_root, "golden", "tiny-sd1.safetensors"), g1, "tiny-sd1")
    save_golden(os.path.join(out_root, "golden", "tiny-sd2.safetensors"), g2, "tiny-sd2")
    copied = []  # keys/ copies written by this run: listed with this script's files, never removed by it
    if copy_shared_keys(out_root):
        copied = [os.path.join("keys", n) for n in SHARED_KEY_NAMES]
        record("keys", "copied from " + SHARED_KEYS, "sd15-keys.{unet,text_encoder,vae}.txt, README.md")
    else:
        record("keys", "copy of the shared sd15 key lists", f"skipped ({SHARED_KEYS} not found)")
    full_size_keys(tables_dir)

    def walk():
        own, other = [], []
        for root, dirs, files in os.walk(out_root):
            dirs.sort()
            for fn in sorted(files):
                p = os.path.join(root, fn)
                rel = os.path.relpath(p, out_root)
                mine = rel.split(os.sep)[0] in OWNED_DIRS or rel in OWNED_FILES
                (own if mine or rel in copied else other).append((rel, os.path.getsize(p)))
                if mine:
                    os.chmod(p, 0o644)
        return sorted(own), sorted(other)

    own, _ = walk()
    own = [x for x in own if x[0] != "README.md"]
    write_readme(out_root, own, sum(n for _, n in own), tail)
    own, other = walk()
    print("== files written by this script")
    for p, n in own:
        print(f"  {n:>10}  {p}")
    t_own = sum(n for _, n in own)
    print(f"  {t_own:>10}  TOTAL of this script's files ({t_own / 1e6:.2f} MB)")
    if other:
        print("== other files in the folder (not made by this script, counted in the folder total)")
        for p, n in other:
            print(f"  {n:>10}  {p}")
    total = t_own + sum(n for _, n in other)
    print(f"  {total:>10}  TOTAL of the whole folder ({total / 2**20:.2f} MiB, limit {SIZE_LIMIT / 2**20:.0f} MiB)")
    check(total < SIZE_LIMIT, f"fixtures folder is {total} bytes, over {SIZE_LIMIT}")
    print("all checks passed")


if __name__ == "__main__":
    main()
