#!/usr/bin/env python3
"""Time diffusers' StableDiffusionPipeline: DDIM text-to-image, one image at a time, guidance
7.5 (the U-Net sees a batch of 2 per step), PyTorch's SDPA attention (diffusers' default on
torch 2), and the peak memory torch allocated.

usage: python diffusers_gen.py OUT_JSON MODEL_DIR SIZE STEPS DTYPE [IMAGES]
DTYPE: fp32, fp16 or bf16 (the whole pipeline is cast). IMAGES (2): the first is the cold one
(kernel selection, allocator growth), the median of the others is reported. The last image is
saved beside OUT_JSON.
"""
import json
import statistics
import sys
import time

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

out_json, model_dir, size, steps, dtype_name = sys.argv[1:6]
images = int(sys.argv[6]) if len(sys.argv) > 6 else 2
size, steps = int(size), int(steps)
dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
device = "cuda" if torch.cuda.is_available() else "cpu"

t0 = time.perf_counter()
pipe = StableDiffusionPipeline.from_pretrained(model_dir, torch_dtype=dtype, safety_checker=None,
                                               requires_safety_checker=False)
pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
pipe = pipe.to(device)
pipe.set_progress_bar_config(disable=True)
load_s = time.perf_counter() - t0
if device == "cuda":
    torch.cuda.reset_peak_memory_stats()

times = []
for i in range(images):
    g = torch.Generator(device).manual_seed(i)
    if device == "cuda":
        torch.cuda.synchronize()
    a = time.perf_counter()
    img = pipe("a red toy on a blue table", height=size, width=size, num_inference_steps=steps,
               guidance_scale=7.5, generator=g, output_type="pil").images[0]
    if device == "cuda":
        torch.cuda.synchronize()
    times.append(time.perf_counter() - a)
img.save(out_json.replace(".json", ".png"))
res = dict(
    tool="diffusers",
    dtype=dtype_name,
    torch=torch.__version__,
    device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
    attention=type(pipe.unet.attn_processors[next(iter(pipe.unet.attn_processors))]).__name__,
    load_s=round(load_s, 3),
    size=size,
    steps=steps,
    times_s=[round(t, 3) for t in times],
    s_per_image=round(statistics.median(times[1:] or times), 3),
    torch_peak_allocated_mib=round(torch.cuda.max_memory_allocated() / 2**20) if device == "cuda" else None,
    torch_peak_reserved_mib=round(torch.cuda.max_memory_reserved() / 2**20) if device == "cuda" else None,
)
with open(out_json, "w") as f:
    json.dump(res, f, indent=1)
print(json.dumps(res))
