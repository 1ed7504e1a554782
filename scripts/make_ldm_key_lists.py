#!/usr/bin/env python
"""Write the single-file (CompVis/LDM) key lists that test invert-model's checkpoint-key tables.

For SD1.5 and SD2.1 this writes, into crates/invert-model/tests/fixtures/keys/:

- `<cfg>-ldm-keys.txt`: every tensor name of an original single-file checkpoint, with shape and
  dtype (`name<TAB>shape<TAB>dtype`), as the `ldm` / `stablediffusion` repos save them:
  `model.diffusion_model.*` (UNet), `first_stage_model.*` (VAE), `cond_stage_model.*` (text
  encoder), the DDPM schedule buffers and, for sd15 (like `v1-5-pruned.ckpt`), the `model_ema.*`
  EMA copy of the UNet.
- `<cfg>-ldm-expected.txt`: what diffusers' own single-file conversion
  (`diffusers.loaders.single_file_utils.convert_ldm_{unet,vae,clip}_checkpoint`,
  `convert_open_clip_checkpoint`) makes of that list: `component<TAB>diffusers_key<TAB>source_key
  <TAB>chunk<TAB>squeeze`, where `chunk` is `i/3` when the tensor is the i-th third of the source
  along dim 0 (`-` otherwise) and `squeeze` is 1 when a `[o, i, 1, 1]` conv weight became `[o, i]`.
  Components: `unet` (non-EMA), `unet_ema` (`extract_ema=True`), `vae`, `text_encoder`. Only the
  keys the diffusers/transformers model has are listed.

How the LDM names are obtained (no checkpoint is needed, none is downloaded):

- the diffusers-layout names and shapes come from the diffusers/transformers models built on the
  meta device with the SD1.5 / SD2.1 configs; for sd15 they are checked against the reference
  key lists in /work/shared/reference/keys when those are present;
- the UNet and VAE names are turned into LDM names by this script's own inverse of the LDM layout
  (`ldm.modules.diffusionmodules.openaimodel.UNetModel`, `ldm.modules.diffusionmodules.model`);
- the SD1 text encoder is transformers' CLIPTextModel under `cond_stage_model.transformer.`, in
  transformers 4's layout (`text_model.` prefix and the `position_ids` buffer), as SD1 files hold it;
- the SD2 text encoder is open_clip's own ViT-H-14 text tower (24 resblocks, width 1024) under
  `cond_stage_model.model.`, built with open_clip, visual tower removed as SD2's
  FrozenOpenCLIPEmbedder does.

Then the LDM list is run through diffusers' forward conversion with stand-in tensors that remember
their source, and the script asserts that the result is exactly the diffusers model's key set with
the right shapes. That check is what makes the lists trustworthy: diffusers' converter is the spec.

Usage: /work/venv/bin/python scripts/make_ldm_key_lists.py [--out DIR] [--reference DIR]
"""

import argparse
import pathlib
import sys
import types

import open_clip
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders import single_file_utils as sfu
from transformers import CLIPTextConfig, CLIPTextModel

REPO = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "crates/invert-model/tests/fixtures/keys"
DEFAULT_REFERENCE = pathlib.Path("/work/shared/reference/keys")

# ---------------------------------------------------------------------------------------------
# Configs (diffusers' model_index of runwayml/stable-diffusion-v1-5 and
# stabilityai/stable-diffusion-2-1). Only what changes names or shapes matters here.
# ---------------------------------------------------------------------------------------------
UNET_COMMON = dict(
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)
UNET = {
    "sd15": dict(UNET_COMMON, cross_attention_dim=768, attention_head_dim=8, sample_size=64),
    "sd21": dict(
        UNET_COMMON,
        cross_attention_dim=1024,
        attention_head_dim=(5, 10, 20, 20),
        use_linear_projection=True,
        sample_size=96,
    ),
}
VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
)
TEXT = {
    "sd15": dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                 num_hidden_layers=12, hidden_act="quick_gelu", projection_dim=768),
    "sd21": dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                 num_hidden_layers=23, hidden_act="gelu", projection_dim=512),
}

# DDPM.register_schedule buffers (ldm/models/diffusion/ddpm.py): every single-file SD checkpoint
# carries them; the key tables must leave them alone. `lvlb_weights` is not persistent.
SCHEDULE_BUFFERS = [
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2",
]


def state_shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def diffusers_side(cfg):
    """name -> shape of the three diffusers/transformers models, text keys with `text_model.`."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(**UNET[cfg])
        vae = AutoencoderKL(**VAE)
        text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, max_position_embeddings=77,
                                            **TEXT[cfg]))
    te = {}
    for k, s in state_shapes(text).items():
        if k.endswith("position_ids"):
            continue  # a buffer, not a parameter (transformers 5 does not persist it)
        # transformers >= 5.6 flattened CLIPTextModel; real checkpoints carry `text_model.`.
        te[k if k.startswith("text_model.") else "text_model." + k] = s
    return {"unet": state_shapes(unet), "vae": state_shapes(vae), "text_encoder": te}


# ---------------------------------------------------------------------------------------------
# Inverse of the LDM layout (diffusers name -> LDM name, LDM shape)
# ---------------------------------------------------------------------------------------------
UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
            "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def unet_to_ldm(name, lpb, up_has_attn):
    """One diffusers UNet key -> its LDM (openaimodel.UNetModel) name."""
    layer, param = name.rsplit(".", 1)
    if layer in UNET_TOP:
        return f"{UNET_TOP[layer]}.{param}"
    p = name.split(".")
    if p[0] == "mid_block":
        # middle_block = [ResBlock, SpatialTransformer, ResBlock]
        idx = {"resnets.0": 0, "attentions.0": 1, "resnets.1": 2}[f"{p[1]}.{p[2]}"]
        head, rest = f"middle_block.{idx}", p[3:]
        kind = p[1]
    else:
        block, kind, j, rest = int(p[1]), p[2], int(p[3]), p[4:]
        if p[0] == "down_blocks":
            # input_blocks: 0 is conv_in, then per block `lpb` layers and one Downsample
            base = 1 + block * (lpb + 1)
            if kind == "downsamplers":
                assert rest[0] == "conv"
                return f"input_blocks.{base + lpb}.0.op.{'.'.join(rest[1:])}"
            head = f"input_blocks.{base + j}.{0 if kind == 'resnets' else 1}"
        else:
            # output_blocks: per block `lpb + 1` layers; the Upsample sits after the
            # SpatialTransformer of the last layer when the block has attention
            base = block * (lpb + 1)
            if kind == "upsamplers":
                return f"output_blocks.{base + lpb}.{2 if up_has_attn[block] else 1}.{'.'.join(rest)}"
            head = f"output_blocks.{base + j}.{0 if kind == 'resnets' else 1}"
    if kind == "resnets":
        sub, param = ".".join(rest[:-1]), rest[-1]
        return f"{head}.{UNET_RESNET[sub]}.{param}"
    return f"{head}.{'.'.join(rest)}"  # SpatialTransformer names equal diffusers' names


VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_to_ldm(name, shape, n_up):
    """One diffusers VAE key -> (LDM name, LDM shape) of ldm.modules.diffusionmodules.model."""
    p = name.split(".")
    shape = list(shape)
    if p[0] in ("quant_conv", "post_quant_conv"):
        return name, shape
    coder, rest = p[0], p[1:]
    if rest[0] in ("conv_in", "conv_out"):
        return name, shape
    if rest[0] == "conv_norm_out":
        return f"{coder}.norm_out.{rest[1]}", shape
    if rest[0] == "mid_block":
        if rest[1] == "resnets":
            return f"{coder}.mid.block_{int(rest[2]) + 1}.{resnet_vae(rest[3:])}", shape
        sub, param = ".".join(rest[3:-1]), rest[-1]
        if sub != "group_norm" and param == "weight":
            shape = shape + [1, 1]  # LDM AttnBlock uses 1x1 convs
        return f"{coder}.mid.attn_1.{VAE_ATTN[sub]}.{param}", shape
    i = int(rest[1])
    if rest[0] == "down_blocks":
        if rest[2] == "downsamplers":
            return f"{coder}.down.{i}.downsample.{'.'.join(rest[4:])}", shape
        return f"{coder}.down.{i}.block.{rest[3]}.{resnet_vae(rest[4:])}", shape
    # the decoder's `up` list runs from the lowest resolution upwards in reverse order
    ldm_i = n_up - 1 - i
    if rest[2] == "upsamplers":
        return f"{coder}.up.{ldm_i}.upsample.{'.'.join(rest[4:])}", shape
    return f"{coder}.up.{ldm_i}.block.{rest[3]}.{resnet_vae(rest[4:])}", shape


def resnet_vae(rest):
    sub = ".".join(rest)
    return sub.replace("conv_shortcut", "nin_shortcut")


def ldm_side(cfg, diff):
    """name -> (shape, dtype) of a single-file checkpoint of this config."""
    out = {}
    unet = UNET[cfg]
    lpb = unet["layers_per_block"]
    up_has_attn = [t.startswith("CrossAttn") for t in unet["up_block_types"]]
    for k, s in diff["unet"].items():
        out["model.diffusion_model." + unet_to_ldm(k, lpb, up_has_attn)] = (list(s), "F32")
    n_up = len(VAE["up_block_types"])
    for k, s in diff["vae"].items():
        name, shape = vae_to_ldm(k, s, n_up)
        out["first_stage_model." + name] = (shape, "F32")
    if cfg == "sd15":
        # FrozenCLIPEmbedder: transformers CLIPTextModel at `cond_stage_model.transformer`
        for k, s in diff["text_encoder"].items():
            out["cond_stage_model.transformer." + k] = (list(s), "F32")
        out["cond_stage_model.transformer.text_model.embeddings.position_ids"] = ([1, 77], "I64")
    else:
        # FrozenOpenCLIPEmbedder: open_clip ViT-H-14 without its visual tower
        with torch.device("meta"):
            clip = open_clip.create_model("ViT-H-14", pretrained=None, device="meta")
        for k, s in state_shapes(clip).items():
            if not k.startswith("visual."):
                out["cond_stage_model.model." + k] = (list(s), "F32")
    for b in SCHEDULE_BUFFERS:
        out[b] = ([1000], "F32")
    if cfg == "sd15":
        # LitEma (ldm/modules/ema.py): a buffer per UNet parameter, named without dots
        out["model_ema.decay"] = ([], "F32")
        out["model_ema.num_updates"] = ([], "I32")
        for k, (s, d) in list(out.items()):
            if k.startswith("model.diffusion_model."):
                out["model_ema." + k[len("model."):].replace(".", "")] = (s, d)
    return out


# ---------------------------------------------------------------------------------------------
# diffusers' forward conversion on stand-in tensors
# ---------------------------------------------------------------------------------------------
class Fake:
    """Just enough of a tensor for diffusers' converters: shape, slicing, .T, clone/detach."""

    def __init__(self, src, shape, chunk=None, squeeze=False, transposed=False):
        self.src, self.shape, self.chunk = src, tuple(shape), chunk
        self.squeeze, self.transposed = squeeze, transposed

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def T(self):
        return Fake(self.src, self.shape[::-1], self.chunk, self.squeeze, not self.transposed)

    def clone(self):
        return self

    detach = contiguous = clone

    def __getitem__(self, idx):
        idx = idx if isinstance(idx, tuple) else (idx,)
        shape, chunk, squeeze = [], self.chunk, self.squeeze
        for d, ix in enumerate(idx):
            if isinstance(ix, int):
                assert self.shape[d] == 1, "only size-1 dims are indexed away"
                squeeze = True
            elif ix == slice(None):
                shape.append(self.shape[d])
            else:
                assert d == 0 and chunk is None
                n = self.shape[0]
                start, stop, _ = ix.indices(n)
                assert n % 3 == 0 and stop - start == n // 3, (self.src, ix)
                chunk = start // (n // 3)
                shape.append(stop - start)
        shape.extend(self.shape[len(idx):])
        return Fake(self.src, shape, chunk, squeeze, self.transposed)


def convert(cfg, ldm):
    fakes = {k: Fake(k, s) for k, (s, _) in ldm.items()}
    unet_cfg = {"layers_per_block": UNET[cfg]["layers_per_block"]}
    vae_cfg = {"down_block_types": VAE["down_block_types"], "up_block_types": VAE["up_block_types"]}
    out = {
        "unet": sfu.convert_ldm_unet_checkpoint(dict(fakes), unet_cfg, extract_ema=False),
        "vae": sfu.convert_ldm_vae_checkpoint(dict(fakes), vae_cfg),
    }
    if cfg == "sd15":
        out["unet_ema"] = sfu.convert_ldm_unet_checkpoint(dict(fakes), unet_cfg, extract_ema=True)
        out["text_encoder"] = sfu.convert_ldm_clip_checkpoint(dict(fakes))
    else:
        # only consulted when the checkpoint has no text_projection; SD2 files have one
        model = types.SimpleNamespace(config=types.SimpleNamespace(hidden_size=1024))
        out["text_encoder"] = sfu.convert_open_clip_checkpoint(model, dict(fakes))
    return out


def check(cfg, diff, converted):
    """diffusers' conversion must give exactly the model's keys and shapes. Returns dropped keys."""
    dropped = []
    for comp, conv in converted.items():
        want = diff["unet" if comp == "unet_ema" else comp]
        extra = sorted(set(conv) - set(want))
        missing = sorted(set(want) - set(conv))
        assert not missing, (cfg, comp, missing[:5])
        for k in want:
            assert conv[k].shape == tuple(want[k]), (cfg, comp, k, conv[k].shape, want[k])
            assert not conv[k].transposed
            if comp == "unet_ema":
                assert conv[k].src.startswith("model_ema."), (k, conv[k].src)
        dropped += [f"{comp}: {k} <- {conv[k].src}" for k in extra]
    return dropped


def read_reference(path):
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        _, name, shape, _ = line.split("\t")
        out[name] = tuple(int(x) for x in shape.strip("[]").split(",") if x.strip())
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    ap.add_argument("--reference", type=pathlib.Path, default=DEFAULT_REFERENCE)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    for cfg in ("sd15", "sd21"):
        diff = diffusers_side(cfg)
        if cfg == "sd15" and args.reference.is_dir():
            for comp in ("unet", "vae", "text_encoder"):
                ref = read_reference(args.reference / f"sd15-keys.{comp}.txt")
                assert ref == diff[comp], f"sd15 {comp} differs from the reference key list"
            print("sd15: diffusers-side keys equal the reference lists", file=sys.stderr)
        ldm = ldm_side(cfg, diff)
        converted = convert(cfg, ldm)
        dropped = check(cfg, diff, converted)

        header = (
            f"# {cfg} single-file (LDM) checkpoint: {len(ldm)} tensors; name\tshape\tdtype\n"
            "# written by scripts/make_ldm_key_lists.py; checked with diffusers' own converters\n"
        )
        lines = [f"{k}\t{s}\t{d}" for k, (s, d) in sorted(ldm.items())]
        (args.out / f"{cfg}-ldm-keys.txt").write_text(header + "\n".join(lines) + "\n")

        rows = []
        for comp in ("unet", "unet_ema", "vae", "text_encoder"):
            if comp not in converted:
                continue
            want = diff["unet" if comp == "unet_ema" else comp]
            for k in sorted(want):
                t = converted[comp][k]
                chunk = "-" if t.chunk is None else f"{t.chunk}/3"
                rows.append(f"{comp}\t{k}\t{t.src}\t{chunk}\t{int(t.squeeze)}")
        header = (
            f"# {cfg}: what {sfu.__name__} makes of {cfg}-ldm-keys.txt, "
            f"{len(rows)} rows; component\tdiffusers_key\tsource_key\tchunk\tsqueeze\n"
            "# written by scripts/make_ldm_key_lists.py; keys the diffusers model lacks are left out:\n"
            + "".join(f"#   dropped {d}\n" for d in dropped)
        )
        (args.out / f"{cfg}-ldm-expected.txt").write_text(header + "\n".join(rows) + "\n")
        print(f"{cfg}: {len(ldm)} LDM keys, {len(rows)} expected rows, {len(dropped)} dropped",
              file=sys.stderr)


if __name__ == "__main__":
    main()
