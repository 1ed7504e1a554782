#!/usr/bin/env python3
"""The FLOP floor of the benchmark's workloads: their FLOPs (counted by torch's FlopCounterMode
on the diffusers models, on the meta device, so no weights or compute are needed) and the
matmul rate PyTorch measures on this device, per dtype.

usage: python flops.py OUT_JSON MODEL_DIR SIZE STEPS BATCH [BATCH...]

- training step (invert's work per step): text encoder forward and backward to the token
  embeddings, U-Net forward and backward to its inputs (weights frozen: no weight gradients),
  at each BATCH. The VAE encoder is not counted: invert encodes each image once before training
  (diffusers' script encodes every step, so its floor is higher).
- generation: the text encoder on the prompt and the empty prompt, STEPS U-Net forwards of a
  batch of 2 (classifier-free guidance) and one VAE decode.
- matmul rate: square matrix products (8192 on a GPU, 1024 on the CPU), fp32 without TF32,
  bf16 and fp16.
The floor of a workload is its FLOPs over the rate: no implementation does it faster.
"""
import json
import pathlib
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

out_json, model_dir, size, steps = sys.argv[1], pathlib.Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
batches = [int(b) for b in sys.argv[5:]]


def read(p):
    return json.loads((model_dir / p).read_text())


def build(device):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device(device):
        unet = UNet2DConditionModel.from_config(read("unet/config.json"))
        vae = AutoencoderKL.from_config(read("vae/config.json"))
        te = CLIPTextModel(CLIPTextConfig.from_json_file(str(model_dir / "text_encoder/config.json")))
    for m in (unet, vae, te):
        m.requires_grad_(False)
    return unet, vae, te


def count(fn):
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def counts(device):
    unet, vae, te = build(device)
    lat = size // 2 ** (len(vae.config.block_out_channels) - 1)
    ch = unet.config.in_channels

    def train_step(b):
        table = te.get_input_embeddings().weight
        table.requires_grad_(True)
        ids = torch.zeros(b, 77, dtype=torch.long, device=device)
        x = torch.zeros(b, ch, lat, lat, device=device)
        t = torch.full((b,), 500, dtype=torch.long, device=device)
        h = te(ids)[0]
        loss = F.mse_loss(unet(x, t, encoder_hidden_states=h).sample, x)
        loss.backward()
        table.requires_grad_(False)

    def generation():
        with torch.no_grad():
            h = te(torch.zeros(2, 77, dtype=torch.long, device=device))[0]
            x = torch.zeros(2, ch, lat, lat, device=device)
            t = torch.full((2,), 500, dtype=torch.long, device=device)
            unet_flops = count(lambda: unet(x, t, encoder_hidden_states=h))
            te_flops = count(lambda: te(torch.zeros(2, 77, dtype=torch.long, device=device)))
            vae_flops = count(lambda: vae.decode(torch.zeros(1, vae.config.latent_channels, lat, lat, device=device)))
        return te_flops + steps * unet_flops + vae_flops

    return {str(b): count(lambda: train_step(b)) for b in batches}, generation()


try:
    train, gen = counts("meta")
    counted_on = "meta"
except Exception as e:  # an op without a meta kernel: count on real (random) tensors instead
    print(f"meta-device count failed ({e!r}); counting on the CPU", file=sys.stderr)
    train, gen = counts("cpu")
    counted_on = "cpu"

dev = "cuda" if torch.cuda.is_available() else "cpu"
n = 8192 if dev == "cuda" else 1024
rates = {}
if dev == "cuda":
    torch.backends.cuda.matmul.allow_tf32 = False
for name, dtype in [("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)]:
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    reps = 10 if dev == "cuda" else 3
    for _ in range(3):
        a @ b
    if dev == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    if dev == "cuda":
        torch.cuda.synchronize()
    rates[name] = 2 * n**3 * reps / (time.perf_counter() - t0)

res = dict(size=size, steps=steps, counted_on=counted_on, train_step_flops=train, generation_flops=gen,
           matmul_device=torch.cuda.get_device_name() if dev == "cuda" else "cpu", matmul_n=n,
           matmul_flops_per_s=rates)
with open(out_json, "w") as f:
    json.dump(res, f, indent=1)
print(json.dumps(res))
