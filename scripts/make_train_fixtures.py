#!/usr/bin/env python3
"""Reference gradients of the textual-inversion loss for invert-train's tests (PyTorch autograd).

usage (from the repo root):
    /work/venv/bin/python scripts/make_train_fixtures.py

Writes crates/invert-train/tests/fixtures/gradient/tiny-sd1.safetensors, read by
crates/invert-train/tests/gradient.rs.

The model is crates/invert-model/tests/fixtures/tiny-sd1 (fp16 variant files, upcast to float32 as
scripts/make_fixtures.py loads them), the tokenizer is the bundled
crates/invert-model/assets/clip-tokenizer (transformers' CLIPTokenizer, tokens added with
`add_tokens` like diffusers' textual_inversion.py, a multi-vector word `<m>` as `<m> <m>_1`).
The new rows are set in the text encoder's resized embedding table, which is the leaf whose
gradient is taken (diffusers' textual_inversion.py trains the same rows); everything else is frozen.

For each case, with fixed latents (already scaled by the VAE factor), noise and timesteps:
    noisy  = DDPMScheduler.from_config(scheduler_config).add_noise(latents, noise, t)
    target = noise (epsilon) or scheduler.get_velocity(latents, noise, t) (v_prediction)
    pred   = unet(noisy, t, text_encoder(ids)[0]).sample
    loss   = F.mse_loss(pred.float(), target, reduction="mean")           (diffusers textual_inversion.py)
    or, with min_snr_gamma: per-sample MSE * min(snr, gamma) / snr (or / (snr + 1) for v), then the
    mean (diffusers train_text_to_image.py)
and the gradient of `loss` with respect to the new word's rows.

Cases (tensor names `{case}.{latents,noise,timesteps,init,input_ids,loss,grad}`; metadata
`{case}.token`, `{case}.vectors`, `{case}.prompts` (JSON list), `{case}.prediction_type`,
`{case}.min_snr_gamma`):
    eps1   epsilon, `<s>`, 1 vector
    eps2   epsilon, `<m>`, 2 vectors (`<m>` twice in one prompt)
    v1     v_prediction: tiny-sd1 with prediction_type overridden to v_prediction (tiny-sd2 is the
           v-prediction fixture, but its text encoder has 1000 rows while the bundled tokenizer
           emits ids up to 49407 and invert numbers new words from 49408: it cannot encode any
           prompt with the bundled tokenizer, in PyTorch or in invert)
    snr1   epsilon, `<s>`, min-SNR gamma 5

CPU, float32, one thread, deterministic algorithms; re-running gives a byte-identical file.
"""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers import DDPMScheduler, UNet2DConditionModel  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import CLIPTextModel, CLIPTokenizer  # noqa: E402

warnings.filterwarnings("ignore")
diffusers.utils.logging.set_verbosity_error()
transformers.utils.logging.set_verbosity_error()
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODEL = ROOT / "crates/invert-model/tests/fixtures/tiny-sd1"
TOKENIZER = ROOT / "crates/invert-model/assets/clip-tokenizer"
OUT = ROOT / "crates/invert-train/tests/fixtures/gradient/tiny-sd1.safetensors"

CASES = [
    # name, token, vectors, prompts, timesteps, prediction_type, min_snr_gamma, seed
    ("eps1", "<s>", 1, ["a photo of a <s>", "a rendering of a <s>"], [37, 811], "epsilon", None, 1),
    ("eps2", "<m>", 2, ["a photo of a <m>", "a <m> next to another <m>"], [250, 600], "epsilon", None, 2),
    ("v1", "<s>", 1, ["a photo of a <s>", "a cropped photo of the <s>"], [120, 930], "v_prediction", None, 3),
    ("snr1", "<s>", 1, ["a photo of a <s>", "the photo of a <s>"], [20, 500], "epsilon", 5.0, 4),
]


def check(cond, msg):
    if not cond:
        sys.exit(f"check failed: {msg}")


def canonical_metadata_order(path):
    """safetensors writes __metadata__ in hash-map order; rewrite the header with sorted keys."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", None)
    new = {"__metadata__": dict(sorted(meta.items()))} if meta else {}
    new.update(header)
    hb = json.dumps(new, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    path.write_bytes(len(hb).to_bytes(8, "little") + hb + raw[8 + n :])


def expand(prompt, token, n):
    """diffusers' TextualInversionLoaderMixin.maybe_convert_prompt: `<m>` -> `<m> <m>_1 ...`."""
    return prompt.replace(token, " ".join([token] + [f"{token}_{i}" for i in range(1, n)]))


def run_case(name, token, n, prompts, timesteps, prediction, gamma, seed, base_config):
    tok = CLIPTokenizer.from_pretrained(str(TOKENIZER))
    names = [token] + [f"{token}_{i}" for i in range(1, n)]
    check(tok.add_tokens(names) == n, f"{name}: tokens added")
    new_ids = tok.convert_tokens_to_ids(names)
    check(new_ids == list(range(49408, 49408 + n)), f"{name}: new ids {new_ids} follow the vocabulary")

    te = CLIPTextModel.from_pretrained(str(MODEL), subfolder="text_encoder", variant="fp16", dtype=torch.float32)
    unet = UNet2DConditionModel.from_pretrained(str(MODEL), subfolder="unet", variant="fp16", torch_dtype=torch.float32)
    te.eval().requires_grad_(False)
    unet.eval().requires_grad_(False)
    check(te.dtype == torch.float32 and unet.dtype == torch.float32, "float32")
    te.resize_token_embeddings(len(tok))
    table = te.get_input_embeddings().weight
    check(table.shape[0] >= 49408 + n, f"table rows {table.shape[0]}")

    g = torch.Generator().manual_seed(seed)
    std = table[:49408].detach().std(dim=0)
    init = (torch.randn(n, table.shape[1], generator=g) * std).float()
    latents = torch.randn(2, 4, 32, 32, generator=g) * 0.8
    noise = torch.randn(2, 4, 32, 32, generator=g)
    t = torch.tensor(timesteps, dtype=torch.int64)

    with torch.no_grad():
        table[new_ids] = init
    table.requires_grad_(True)

    config = dict(base_config)
    config["prediction_type"] = prediction
    sched = DDPMScheduler.from_config(config)
    check(sched.config.prediction_type == prediction, "prediction type")

    ids = tok(
        [expand(p, token, n) for p in prompts], padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    noisy = sched.add_noise(latents, noise, t)
    target = noise if prediction == "epsilon" else sched.get_velocity(latents, noise, t)
    context = te(ids)[0]
    pred = unet(noisy, t, context).sample
    if gamma is None:
        loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
    else:
        from diffusers.training_utils import compute_snr

        snr = compute_snr(sched, t)
        w = torch.stack([snr, gamma * torch.ones_like(t, dtype=snr.dtype)], dim=1).min(dim=1)[0]
        w = w / snr if prediction == "epsilon" else w / (snr + 1)
        per = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=[1, 2, 3]) * w
        loss = per.mean()
    loss.backward()
    grad = table.grad[new_ids].detach().clone()
    check(float(grad.abs().max()) > 0, f"{name}: a nonzero gradient")
    # the vocabulary's own rows get gradients too (they are inputs as well); they are frozen in
    # training, so only the new rows are recorded.
    tensors = {
        f"{name}.latents": latents,
        f"{name}.noise": noise,
        f"{name}.timesteps": t,
        f"{name}.init": init,
        f"{name}.input_ids": ids.to(torch.int64),
        f"{name}.loss": loss.detach().reshape(1),
        f"{name}.grad": grad,
    }
    meta = {
        f"{name}.token": token,
        f"{name}.vectors": str(n),
        f"{name}.prompts": json.dumps(prompts),
        f"{name}.prediction_type": prediction,
        f"{name}.min_snr_gamma": "" if gamma is None else str(gamma),
    }
    print(f"{name}: loss {loss.item():.6f}, |grad|max {grad.abs().max().item():.3e}, ids {ids[0, :8].tolist()}")
    return tensors, meta


def main():
    base_config = json.loads((MODEL / "scheduler/scheduler_config.json").read_text())
    tensors, meta = {}, {}
    for case in CASES:
        t, m = run_case(*case, base_config)
        tensors.update(t)
        meta.update(m)
    meta["versions"] = json.dumps(
        {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__}
    )
    meta["script"] = "scripts/make_train_fixtures.py"
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, str(OUT), metadata=meta)
    canonical_metadata_order(OUT)
    with safe_open(str(OUT), "pt") as f:
        check(set(f.keys()) == set(tensors) and f.metadata() == meta, "keys/metadata round trip")
    print(f"wrote {OUT.relative_to(ROOT)} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
