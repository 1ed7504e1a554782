#!/usr/bin/env python3
"""The table scripts/gpu_bench.sh prints, from the result files of one run.

usage: python table.py WORK_DIR

Reads WORK_DIR/results/: meta.json (what ran where), flops.json, and per run NAME.json (its
measurement), NAME.mem (peak GPU MiB, or n/a) and NAME.status (why it has no measurement),
with NAME = train-{invert,diffusers}-PRECISION-bBATCH, gen-{invert,diffusers}-PRECISION, and
parity.json.
"""
import json
import pathlib
import sys

res = pathlib.Path(sys.argv[1]) / "results"


def load(name):
    p = res / name
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):  # missing, or a run that died while writing it
        return None


def text(name):
    p = res / name
    return p.read_text().strip() if p.is_file() else None


meta = load("meta.json") or {}
flops = load("flops.json")
inv = meta.get("invert_precisions", ["f32", "f16"])
dif = meta.get("diffusers_precisions", ["bf16", "fp16"])
batches = meta.get("batches", [1, 4])
cols = [("invert", p) for p in inv] + [("diffusers", p) for p in dif]


def cell(kind, tool, p, b=None, what="time"):
    name = f"{kind}-{tool}-{p}" + (f"-b{b}" if b is not None else "")
    if what == "mem":
        return text(name + ".mem") or "-"
    r = load(name + ".json")
    key = "s_per_step" if kind == "train" else "s_per_image"
    if r and r.get(key) is not None:
        return f"{r[key]:.3f}"
    return text(name + ".status") or "-"


def floor(f):
    if not flops:
        return "-"
    rate = flops["matmul_flops_per_s"]
    return f"{f / rate['fp32']:.3g} / {f / rate['bf16']:.3g}"


def label(tool, p):
    if tool == "invert":
        return f"invert {p}"
    return f"diffusers {'fp32' if p == 'no' else p}" + ("" if p == "no" else " + SDPA")


head = "| workload | " + " | ".join(label(t, p) for t, p in cols) + " | FLOP floor, s (fp32 / bf16 rate) |"
rows = [head, "|---|" + "---:|" * (len(cols) + 1)]
res_px, steps, gen_steps = meta.get("res", "?"), meta.get("train_steps", "?"), meta.get("gen_steps", "?")
for b in batches:
    f = flops["train_step_flops"].get(str(b)) if flops else None
    rows.append(f"| textual inversion {res_px} px, batch {b}: s/step | "
                + " | ".join(cell("train", t, p, b) for t, p in cols) + f" | {floor(f) if f else '-'} |")
    rows.append(f"| textual inversion {res_px} px, batch {b}: peak GPU MiB | "
                + " | ".join(cell("train", t, p, b, "mem") for t, p in cols) + " | |")
g = flops["generation_flops"] if flops else None
rows.append(f"| DDIM {gen_steps} steps {res_px} px, 1 image: s | "
            + " | ".join(cell("gen", t, p) for t, p in cols) + f" | {floor(g) if g else '-'} |")
rows.append(f"| DDIM {gen_steps} steps {res_px} px: peak GPU MiB | "
            + " | ".join(cell("gen", t, p, what="mem") for t, p in cols) + " | |")

print(f"### invert vs diffusers on {meta.get('gpu', '?')} ({meta.get('date', '?')}, invert {meta.get('commit', '?')})")
print()
print(f"- invert device: {meta.get('invert_device', '?')}")
print(f"- PyTorch {meta.get('torch', '?')} on {meta.get('torch_device', '?')}, diffusers {meta.get('diffusers', '?')}")
print(f"- Model: the {meta.get('model', '?')} configs, random weights. Training: {steps} steps, s/step = "
      f"median step time after the first {meta.get('skip', '?')}; AdamW, lr 5e-4, seed 0. Generation: DDIM, "
      f"guidance 7.5, the median of the images after the first (which pays for kernel compilation).")
print("- Peak GPU memory: the most nvidia-smi reported as used during the run, less what was used before "
      "(the whole process: CUDA or Vulkan context included); n/a without nvidia-smi.")
print()
print("\n".join(rows))
print()
if flops:
    r = flops["matmul_flops_per_s"]
    tf = ", ".join(f"batch {b} {v / 1e12:.3g}" for b, v in flops["train_step_flops"].items())
    print(f"FLOPs (torch FlopCounterMode, {flops['counted_on']}): training step {tf} TFLOP (text encoder and U-Net, "
          f"forward and input backward; no VAE); generation {flops['generation_flops'] / 1e12:.3g} TFLOP. "
          f"Matmul rate measured by PyTorch on {flops['matmul_device']} (n = {flops['matmul_n']}): "
          f"fp32 (no TF32) {r['fp32'] / 1e12:.3g}, bf16 {r['bf16'] / 1e12:.3g}, fp16 {r['fp16'] / 1e12:.3g} TFLOP/s. "
          "The floor column is FLOPs over the fp32 rate / over the bf16 rate, in seconds.")
    print()
par = load("parity.json")
if par:
    parts = [f"{k}: max {v['max']}/255, mean {v['mean']:.3f}/255" if isinstance(v, dict) else f"{k}: {v}"
             for k, v in par["runs"].items()]
    print(f"Parity, one image ({par['res']} px, DDIM {par['steps']} steps, seed {par['seed']}), "
          f"against invert on the CPU in f32: " + "; ".join(parts) + ".")
else:
    print(f"Parity: {text('parity.status') or 'not run'}.")
