#!/usr/bin/env python3
"""Golden-value fixture for a U-Net whose `layers_per_block` differs per block.

diffusers lets `UNet2DConditionModel(layers_per_block=[2, 1, 1])` give each down block its own
resnet count; up block i then has `reversed(layers_per_block)[i] + 1` resnets. This script builds
a tiny random model of that kind and the reference output that
`crates/invert-model/tests/unet_per_block.rs` compares invert's U-Net against.

usage (from the repo root):
    /work/venv23/bin/python scripts/make_unet_per_block_fixture.py [OUT]
OUT defaults to crates/invert-model/tests/fixtures/unet-per-block. Needs torch, diffusers and
safetensors (tested with torch 2.9.0, diffusers 0.42.1, safetensors 0.8.0); nothing is downloaded.

Writes (replacing only these files):
    OUT/unet/config.json                          diffusers' `save_pretrained` config
    OUT/unet/diffusion_pytorch_model.safetensors  the weights, F16 (`save_pretrained`)
    OUT/golden.safetensors                        inputs and reference output, F32 (timesteps I64):
        sample                 [2, 4, 8, 8]   randn (torch.Generator seed 1)
        timesteps              [2] I64        [10, 700]
        encoder_hidden_states  [2, 5, 32]     randn (torch.Generator seed 2)
        out                    [2, 4, 8, 8]   `unet(sample, timesteps, encoder_hidden_states).sample`

Model: block_out_channels (4, 8, 12), layers_per_block [2, 1, 1], down (DownBlock2D,
CrossAttnDownBlock2D, CrossAttnDownBlock2D), up (CrossAttnUpBlock2D, CrossAttnUpBlock2D,
UpBlock2D), cross_attention_dim 32, attention_head_dim 2 (diffusers' legacy name: 2 heads per
block, head widths 4 and 6), norm_num_groups 4 (1, 2 and 3 channels per group), sample_size 8;
49,360 parameters. Every block has its own width, so each up-block resnet's skip connection has a
telling channel count (a resnet taking the wrong skip cannot load or gives other values); widths
(16, 32, 32) with 8 groups would be 440k parameters, 880 KB as F16, far over the size budget.
Built after torch.manual_seed(0); then every bias and every norm scale is redrawn from a seeded
generator (default init leaves norms at 1/0 and some biases at 0, which would hide a misplaced
tensor).

The reference output is computed in float32 from the weights exactly as stored: the F16 file is
loaded back with `from_pretrained(torch_dtype=float32)` (an exact upcast; checked against the
file read with safetensors) on the CPU, one thread, deterministic algorithms. Re-running gives
byte-identical files.
"""
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402

import diffusers  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

warnings.filterwarnings("ignore")
diffusers.utils.logging.set_verbosity_error()
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "crates/invert-model/tests/fixtures/unet-per-block")
SIZE_LIMIT = 150 * 1024  # bytes, the whole fixture

CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(4, 8, 12),
    layers_per_block=[2, 1, 1],
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=2,
    norm_num_groups=4,
)
TIMESTEPS = [10, 700]


def check(cond, msg):
    if not cond:
        raise SystemExit(f"FAILED: {msg}")


def resnet_counts(unet):
    return [len(b.resnets) for b in unet.down_blocks], [len(b.resnets) for b in unet.up_blocks]


@torch.no_grad()
def build():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**CONFIG).eval()
    down, up = resnet_counts(unet)
    # diffusers really builds a per-block model: 2 resnets in down block 0, 1 in the others, and the
    # up blocks the reversed list plus one (up block 2 mirrors down block 0: 2 + 1 = 3).
    check(down == [2, 1, 1], f"down block resnets {down}, expected [2, 1, 1]")
    check(up == [2, 2, 3], f"up block resnets {up}, expected [2, 2, 3]")
    check(len(unet.down_blocks[0].resnets) == 2, "down_blocks[0] should have 2 resnets")
    check(len(unet.up_blocks[2].resnets) == 3, "up_blocks[2] should have 3 resnets")

    # Non-trivial biases and norm parameters, so that a tensor loaded into the wrong place shows.
    gen = torch.Generator().manual_seed(3)
    for name, p in unet.named_parameters():
        if name.endswith(".bias"):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        elif "norm" in name.split(".")[-2] and name.endswith(".weight") and p.dim() == 1:
            p.copy_(1.0 + torch.randn(p.shape, generator=gen) * 0.2)
    return unet


def remove_owned(out):
    shutil.rmtree(os.path.join(out, "unet"), ignore_errors=True)
    golden = os.path.join(out, "golden.safetensors")
    if os.path.exists(golden):
        os.remove(golden)


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default=DEFAULT_OUT)
    args = ap.parse_args()
    out = args.out
    os.makedirs(out, exist_ok=True)
    remove_owned(out)
    unet_dir = os.path.join(out, "unet")

    unet = build()
    unet.to(torch.float16).save_pretrained(unet_dir, safe_serialization=True)
    weights = os.path.join(unet_dir, "diffusion_pytorch_model.safetensors")
    cfg = json.load(open(os.path.join(unet_dir, "config.json")))
    check(cfg["layers_per_block"] == [2, 1, 1], f"config.json layers_per_block {cfg['layers_per_block']}")

    # The reference runs on the weights as stored: F16 upcast to F32.
    stored = load_file(weights)
    check(all(v.dtype == torch.float16 for v in stored.values()), "weights are not all F16")
    ref = UNet2DConditionModel.from_pretrained(unet_dir, torch_dtype=torch.float32).eval()
    check(resnet_counts(ref) == ([2, 1, 1], [2, 2, 3]), "reloaded model has other resnet counts")
    sd = ref.state_dict()
    check(set(sd) == set(stored), "reloaded model's keys differ from the file's")
    for k, v in stored.items():
        check(sd[k].dtype == torch.float32 and torch.equal(sd[k], v.float()), f"{k} is not the exact upcast")

    sample = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    timesteps = torch.tensor(TIMESTEPS, dtype=torch.int64)
    context = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(2))
    result = ref(sample, timesteps, encoder_hidden_states=context).sample.float()
    check(result.shape == (2, 4, 8, 8), f"output shape {tuple(result.shape)}")
    check(bool(torch.isfinite(result).all()), "output is not finite")

    golden = os.path.join(out, "golden.safetensors")
    save_file(
        {
            "sample": sample.contiguous(),
            "timesteps": timesteps.contiguous(),
            "encoder_hidden_states": context.contiguous(),
            "out": result.contiguous(),
        },
        golden,
    )

    sizes = {
        os.path.relpath(os.path.join(d, f), out): os.path.getsize(os.path.join(d, f))
        for d, _, files in os.walk(out)
        for f in files
    }
    total = sum(sizes.values())
    for name, size in sorted(sizes.items()):
        print(f"{size:>8}  {name}")
    print(f"{total:>8}  total")
    print(f"parameters: {sum(v.numel() for v in stored.values())}")
    print(f"output: max |out| {result.abs().max().item():.4f}, mean |out| {result.abs().mean().item():.4f}")
    check(total <= SIZE_LIMIT, f"fixture is {total} bytes, over the {SIZE_LIMIT}-byte budget")


if __name__ == "__main__":
    main()
