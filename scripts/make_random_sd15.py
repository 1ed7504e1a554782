#!/usr/bin/env python
"""Write a random-weight Stable Diffusion 1.5 model (full size, f32) for load benchmarks.

usage: /work/venv/bin/python scripts/make_random_sd15.py OUT_DIR [--single-file]

OUT_DIR becomes a diffusers folder: the configs of configs/sd15/ (model_index.json, scheduler/,
tokenizer/ configs, {text_encoder,unet,vae}/config.json) and, per component, f32 safetensors:
unet/ and vae/diffusion_pytorch_model.safetensors, text_encoder/model.safetensors. The weights
are each model's own random initialisation with `torch.manual_seed(0)` before each component
(as /work/shared/bench/diffusers-baseline/scripts/make_models.py does), 1,066,235,307
parameters, 4.27 GB.

The text-encoder keys carry the `text_model.` prefix, as every real SD1.x file (written by
transformers 4) does; transformers 5 would save them without it.

With --single-file, OUT_DIR/sd15.safetensors is also written: the same tensors in the original
(CompVis/LDM) single-file layout (`model.diffusion_model.`, `first_stage_model.`,
`cond_stage_model.transformer.`, the DDPM schedule buffers and the text encoder's
`position_ids`), like `v1-5-pruned-emaonly.safetensors`. The LDM names come from the inverse
mapping in scripts/make_ldm_key_lists.py and are checked here against diffusers' own single-file
converters (on stand-in tensors, no data).

Memory: one component is built at a time and freed before the next; files are written tensor by
tensor (no second copy of a component), and the single file is streamed from the folder's files
one tensor at a time. Peak is about the U-Net's size (3.4 GB) plus the Python/torch runtime.
No tokenizer vocabulary is written (configs/sd15/tokenizer has only its configs), which loading
the weights does not need.
"""

import argparse
import gc
import json
import os
import pathlib
import shutil
import sys
import time

import torch

REPO = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs" / "sd15"


def configs_dir(path):
    """Build from another architecture's configs (--configs)."""
    global CONFIGS
    CONFIGS = path.resolve()

DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32"}
DTYPE_SIZE = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4}


def write_safetensors(path, entries, metadata=None):
    """Streams a safetensors file. `entries`: list of (name, dtype_str, shape, get_tensor).

    The header is laid out as the safetensors library lays it out (compact JSON, `__metadata__`
    first, tensors ordered by dtype size then name, padded with spaces to 8 bytes), so a file
    written here is byte-identical to `safetensors.torch.save_file` of the same tensors. Each
    tensor is fetched, written and dropped in turn.
    """
    entries = sorted(entries, key=lambda e: (-DTYPE_SIZE[e[1]], e[0]))
    header = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for name, dtype, shape, _ in entries:
        n = DTYPE_SIZE[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    hbytes += b" " * ((8 - len(hbytes) % 8) % 8)
    tmp = str(path) + ".part"
    with open(tmp, "wb") as f:
        f.write(len(hbytes).to_bytes(8, "little"))
        f.write(hbytes)
        for name, dtype, shape, get in entries:
            t = get()
            assert DTYPES[t.dtype] == dtype and list(t.shape) == list(shape), (name, t.dtype, t.shape, dtype, shape)
            arr = t.detach().cpu().contiguous().reshape(-1).numpy()
            f.write(memoryview(arr).cast("B"))
            del t, arr
    os.replace(tmp, path)
    return 8 + len(hbytes) + offset


def save_state_dict(path, sd, rename=lambda k: k):
    entries = [(rename(k), DTYPES[v.dtype], list(v.shape), (lambda v=v: v)) for k, v in sd.items()]
    return write_safetensors(path, entries, metadata={"format": "pt"})


def read_json(p):
    with open(p) as f:
        return json.load(f)


def build_folder(out):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    # configs first: the folder is complete except for weights
    for src in sorted(CONFIGS.rglob("*")):
        if src.is_file():
            dst = out / src.relative_to(CONFIGS)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)

    params = {}
    sizes = {}

    def component(name, make, fname, rename=lambda k: k):
        t0 = time.time()
        torch.manual_seed(0)
        model = make()
        t1 = time.time()
        sd = model.state_dict()
        params[name] = sum(p.numel() for p in model.parameters())
        sizes[name] = save_state_dict(out / name / fname, sd, rename)
        print(f"  {name}: {params[name]:,} parameters, {len(sd)} tensors, {sizes[name]:,} bytes "
              f"(init {t1 - t0:.1f} s, write {time.time() - t1:.1f} s)", flush=True)
        del model, sd
        gc.collect()

    # the U-Net first (largest), each component freed before the next
    unet_cfg = read_json(CONFIGS / "unet" / "config.json")
    component("unet", lambda: UNet2DConditionModel.from_config(unet_cfg), "diffusion_pytorch_model.safetensors")
    vae_cfg = read_json(CONFIGS / "vae" / "config.json")
    component("vae", lambda: AutoencoderKL.from_config(vae_cfg), "diffusion_pytorch_model.safetensors")
    te_cfg = CLIPTextConfig.from_json_file(str(CONFIGS / "text_encoder" / "config.json"))
    component(
        "text_encoder",
        lambda: CLIPTextModel(te_cfg),
        "model.safetensors",
        rename=lambda k: k if k.startswith("text_model.") else "text_model." + k,
    )
    total = sum(params.values())
    print(f"  total: {total:,} parameters, {sum(sizes.values()):,} bytes of safetensors", flush=True)
    return total


def build_single_file(out):
    """OUT/sd15.safetensors in the LDM layout, streamed from the folder's component files."""
    from diffusers.loaders import single_file_utils as sfu
    from safetensors import safe_open

    sys.path.insert(0, str(REPO / "scripts"))
    import make_ldm_key_lists as ldm  # noqa: E402  (the inverse LDM mapping, checked there)

    unet_cfg = read_json(out / "unet" / "config.json")
    vae_cfg = read_json(out / "vae" / "config.json")
    lpb = unet_cfg["layers_per_block"]
    up_has_attn = [t.startswith("CrossAttn") for t in unet_cfg["up_block_types"]]
    n_up = len(vae_cfg["up_block_types"])

    files = {
        "unet": out / "unet" / "diffusion_pytorch_model.safetensors",
        "vae": out / "vae" / "diffusion_pytorch_model.safetensors",
        "text_encoder": out / "text_encoder" / "model.safetensors",
    }
    handles = {c: safe_open(str(p), framework="pt") for c, p in files.items()}
    entries = []
    source = {}  # component -> {diffusers key: ldm key}
    for comp, h in handles.items():
        source[comp] = {}
        for k in h.keys():
            sl = h.get_slice(k)
            shape = list(sl.get_shape())
            dtype = sl.get_dtype()
            if comp == "unet":
                name = "model.diffusion_model." + ldm.unet_to_ldm(k, lpb, up_has_attn)
            elif comp == "vae":
                vname, shape = ldm.vae_to_ldm(k, shape, n_up)
                name = "first_stage_model." + vname
            else:
                name = "cond_stage_model.transformer." + k
            source[comp][k] = name
            entries.append((name, dtype, shape, (lambda h=h, k=k, s=shape: h.get_tensor(k).reshape(s))))

    # buffers every original SD1 checkpoint carries
    entries.append(("cond_stage_model.transformer.text_model.embeddings.position_ids", "I64", [1, 77],
                    lambda: torch.arange(77, dtype=torch.int64).reshape(1, 77)))
    sched = read_json(out / "scheduler" / "scheduler_config.json")
    betas = torch.linspace(sched["beta_start"] ** 0.5, sched["beta_end"] ** 0.5, sched["num_train_timesteps"],
                           dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, 0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    post_var = betas * (1.0 - prev) / (1.0 - alphas_cumprod)
    buffers = {
        "betas": betas,
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).log(),
        "sqrt_recip_alphas_cumprod": (1.0 / alphas_cumprod).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1).sqrt(),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": torch.log(torch.clamp(post_var, min=1e-20)),
        "posterior_mean_coef1": betas * prev.sqrt() / (1.0 - alphas_cumprod),
        "posterior_mean_coef2": (1.0 - prev) * (1.0 - betas).sqrt() / (1.0 - alphas_cumprod),
    }
    assert set(buffers) == set(ldm.SCHEDULE_BUFFERS)
    for name, v in buffers.items():
        entries.append((name, "F32", [len(v)], (lambda v=v: v.float())))

    # diffusers' own single-file converters must map every LDM name back to the key it came from
    fakes = {name: ldm.Fake(name, shape) for name, _, shape, _ in entries}
    conv = {
        "unet": sfu.convert_ldm_unet_checkpoint(dict(fakes), {"layers_per_block": lpb}, extract_ema=False),
        "vae": sfu.convert_ldm_vae_checkpoint(
            dict(fakes), {"down_block_types": vae_cfg["down_block_types"], "up_block_types": vae_cfg["up_block_types"]}
        ),
        "text_encoder": sfu.convert_ldm_clip_checkpoint(dict(fakes)),
    }
    for comp, mapping in source.items():
        for k, name in mapping.items():
            t = conv[comp].get(k)
            assert t is not None, f"diffusers' converter does not produce {comp} key {k}"
            assert t.src == name and t.chunk is None and not t.transposed, (comp, k, name, t.src)
            assert list(t.shape) == list(handles[comp].get_slice(k).get_shape()), (comp, k, t.shape)
    print(f"  LDM names checked against {sfu.__name__} ({sum(map(len, source.values()))} tensors)", flush=True)

    t0 = time.time()
    n = write_safetensors(out / "sd15.safetensors", entries, metadata={"format": "pt"})
    print(f"  sd15.safetensors: {len(entries)} tensors, {n:,} bytes (write {time.time() - t0:.1f} s)", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=pathlib.Path)
    ap.add_argument("--single-file", action="store_true", help="also write OUT/sd15.safetensors (LDM layout)")
    ap.add_argument("--configs", type=pathlib.Path, default=CONFIGS,
                    help="the architecture: a folder laid out like configs/sd15 (e.g. configs/test/tiny "
                         "for a quick check of scripts/gpu_bench.sh)")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads (default 2; the weights do not depend on it)")
    args = ap.parse_args()
    configs_dir(args.configs)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, min(args.threads, os.cpu_count() or 1)))
    t0 = time.time()
    done = all((out / c / f).is_file() for c, f in [("unet", "diffusion_pytorch_model.safetensors"),
                                                    ("vae", "diffusion_pytorch_model.safetensors"),
                                                    ("text_encoder", "model.safetensors")])
    if done:
        print(f"{out}: weights already there, not rebuilt", flush=True)
    else:
        print(f"{out}: building the random SD1.5 diffusers folder", flush=True)
        build_folder(out)
    if args.single_file and not (out / "sd15.safetensors").is_file():
        print(f"{out}: writing the single-file (LDM) checkpoint", flush=True)
        build_single_file(out)
    print(f"done in {time.time() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
