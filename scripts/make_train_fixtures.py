#!/usr/bin/env python3
"""Reference gradients of the textual-inversion loss for invert-train's tests (PyTorch autograd).

usage (from the repo root):
    /work/venv/bin/python scripts/make_train_fixtures.py [gradient] [conditional]
(no argument: both; `conditional` trains a small U-Net for about 10 minutes on one CPU thread)

Writes
    crates/invert-train/tests/fixtures/gradient/tiny-sd1.safetensors   (crates/invert-train/tests/gradient.rs)
    crates/invert-train/tests/fixtures/tiny-sd1-conditional/unet/      (crates/invert-train/tests/training.rs,
                                                                        see conditional_unet() below)

The model is crates/invert-model/tests/fixtures/tiny-sd1 (fp16 variant files, upcast to float32 as
scripts/make_fixtures.py loads them), the tokenizer is the folder's own tiny-sd1/tokenizer (1000 ids,
scripts/tiny_clip_bpe.py; transformers' CLIPTokenizer, tokens added with
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
           v-prediction fixture, but it ships no tokenizer)
    snr1   epsilon, `<s>`, min-SNR gamma 5

CPU, float32, one thread, deterministic algorithms; re-running gives a byte-identical file.
"""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402
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
VOCAB = 1000  # rows of tiny-sd1's token table (its tokenizer's ids)
TOKENIZER = MODEL / "tokenizer"  # the model's own 1000-id CLIP BPE (scripts/tiny_clip_bpe.py)
OUT = ROOT / "crates/invert-train/tests/fixtures/gradient/tiny-sd1.safetensors"
COND = ROOT / "crates/invert-train/tests/fixtures/tiny-sd1-conditional"

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
    check(new_ids == list(range(VOCAB, VOCAB + n)), f"{name}: new ids {new_ids} follow the vocabulary")

    te = CLIPTextModel.from_pretrained(str(MODEL), subfolder="text_encoder", variant="fp16", dtype=torch.float32)
    unet = UNet2DConditionModel.from_pretrained(str(MODEL), subfolder="unet", variant="fp16", torch_dtype=torch.float32)
    te.eval().requires_grad_(False)
    unet.eval().requires_grad_(False)
    check(te.dtype == torch.float32 and unet.dtype == torch.float32, "float32")
    te.resize_token_embeddings(len(tok))
    table = te.get_input_embeddings().weight
    check(table.shape[0] >= VOCAB + n, f"table rows {table.shape[0]}")

    g = torch.Generator().manual_seed(seed)
    std = table[:VOCAB].detach().std(dim=0)
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


# ------------------------------------------------------------------------------------------------
# A tiny U-Net that uses its conditioning, for the "training lowers a held-out loss" test.
#
# tiny-sd1's random U-Net hardly depends on its text conditioning (its cross-attention is nearly
# uniform over the 77 tokens, and the GroupNorms that follow cancel the near-constant offsets it
# adds): optimising v* on it to convergence, full batch, on the held-out batches themselves lowers
# their loss by only 0.03%. Its random VAE also gives posteriors whose std (about 1.06) dwarfs the
# differences between images' means (about 0.3), so a latent sample hardly says which image it
# came from. So this trains a U-Net (tiny-sd1's config with one layer per block) on six
# coloured-square images, each captioned with its own two words, with
#   - the VAE made deterministic: quant_conv's log-variance bias lowered by 40, so the log-variance
#     clamps at -30 (std 3e-7) and a latent sample is the posterior mean, and
#   - latents not scaled (scaling factor 1.0 instead of 0.18215),
# the same two changes the Rust test applies to the loaded tiny-sd1. The text encoder and VAE are
# tiny-sd1's, unchanged on disk; the prompt is the caption alone (template "{}").
# Then, for the record (the test measures its own numbers), textual inversion of `<t>` on the first
# image from the word "object", as the Rust test runs it, with the fp16-rounded U-Net.

CLASSES = [
    # caption, background RGB, square RGB (the square covers rows 16..40, columns 20..44 of 64x64)
    ("red toy", (90, 120, 200), (200, 30, 30)),
    ("green ball", (40, 160, 60), (230, 220, 40)),
    ("blue cup", (230, 230, 230), (20, 20, 140)),
    ("black cat", (20, 20, 20), (240, 240, 240)),
    ("yellow car", (240, 200, 20), (60, 60, 60)),
    ("pink hat", (250, 150, 200), (30, 120, 60)),
]
LOGVAR_SHIFT = 40.0
SCALE = 1.0
PRETRAIN_STEPS, PRETRAIN_BATCH, PRETRAIN_LR = 800, 16, 2e-3


def class_image(bg, fg):
    x = torch.empty(1, 3, 64, 64)
    x[:] = torch.tensor(bg, dtype=torch.float32).view(1, 3, 1, 1) / 127.5 - 1
    x[:, :, 16:40, 20:44] = torch.tensor(fg, dtype=torch.float32).view(1, 3, 1, 1) / 127.5 - 1
    return x


def eval_set(latent, sched, n, seed):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((n,) + tuple(latent.shape[1:]), generator=g)
    t = torch.randint(0, sched.config.num_train_timesteps, (n,), generator=g)
    return latent.expand(n, -1, -1, -1), noise, t


def conditional_unet():
    from diffusers import AutoencoderKL

    tok = CLIPTokenizer.from_pretrained(str(TOKENIZER))
    te = CLIPTextModel.from_pretrained(str(MODEL), subfolder="text_encoder", variant="fp16", dtype=torch.float32)
    vae = AutoencoderKL.from_pretrained(str(MODEL), subfolder="vae", variant="fp16", torch_dtype=torch.float32)
    te.eval().requires_grad_(False)
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        vae.quant_conv.bias[4:] -= LOGVAR_SHIFT
    sched = DDPMScheduler.from_config(json.loads((MODEL / "scheduler/scheduler_config.json").read_text()))

    def context(prompts):
        ids = tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        return te(ids)[0]

    latents, contexts = [], []
    with torch.no_grad():
        for caption, bg, fg in CLASSES:
            dist = vae.encode(class_image(bg, fg)).latent_dist
            check(float(dist.std.max()) < 1e-6, "deterministic VAE")
            latents.append(dist.mean * SCALE)
            contexts.append(context([caption]))
    latents, contexts = torch.cat(latents), torch.cat(contexts)

    config = dict(UNet2DConditionModel.load_config(str(MODEL), subfolder="unet"))
    config["layers_per_block"] = 1
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(config)
    opt = torch.optim.AdamW(unet.parameters(), lr=PRETRAIN_LR)
    g = torch.Generator().manual_seed(0)
    for step in range(PRETRAIN_STEPS):
        k = torch.randint(0, len(CLASSES), (PRETRAIN_BATCH,), generator=g)
        x0 = latents[k]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (PRETRAIN_BATCH,), generator=g)
        loss = F.mse_loss(unet(sched.add_noise(x0, noise, t), t, contexts[k]).sample, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step + 1 == PRETRAIN_STEPS:
            print(f"conditional U-Net: step {step} loss {loss.item():.5f}", flush=True)

    d = COND / "unet"
    if COND.exists():
        shutil.rmtree(COND)
    d.mkdir(parents=True)
    unet.save_config(str(d))
    weights = {k: v.detach().half().contiguous() for k, v in sorted(unet.state_dict().items())}
    save_file(weights, str(d / "diffusion_pytorch_model.fp16.safetensors"), metadata={"format": "pt"})
    os.chmod(d / "diffusion_pytorch_model.fp16.safetensors", 0o644)

    # The stored (fp16) U-Net: held-out loss on the first image per caption, and textual inversion.
    unet = UNet2DConditionModel.from_pretrained(str(COND), subfolder="unet", variant="fp16", torch_dtype=torch.float32)
    unet.eval().requires_grad_(False)
    x0, noise, t = eval_set(latents[:1], sched, 32, 123)
    noisy = sched.add_noise(x0, noise, t)

    def held_out(ctx):
        with torch.no_grad():
            return F.mse_loss(unet(noisy, t, ctx.expand(len(t), -1, -1)).sample, noise).item()

    lines = []
    for caption, _, _ in CLASSES + [("object", None, None)]:
        lines.append(f"held-out loss of image 0 ({CLASSES[0][0]}) with prompt {caption!r}: {held_out(context([caption])):.5f}")
    check(tok.add_tokens(["<t>"]) == 1, "token added")
    tid = tok.convert_tokens_to_ids("<t>")
    ids = tok(["<t>"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    table = te.get_input_embeddings().weight
    object_id = tok(["object"]).input_ids[0][1]
    v = table[object_id].detach().clone().requires_grad_(True)
    mask = (ids == tid).unsqueeze(-1)

    def v_context():
        padded = torch.where(ids == tid, torch.zeros_like(ids), ids)
        hook = te.get_input_embeddings().register_forward_hook(lambda m, i, o: torch.where(mask, v.view(1, 1, -1), o))
        out = te(padded)[0]
        hook.remove()
        return out

    opt = torch.optim.AdamW([v], lr=5e-3)
    before = held_out(v_context().detach())
    g = torch.Generator().manual_seed(7)
    for _ in range(200):
        noise1 = torch.randn(latents[:1].shape, generator=g)
        t1 = torch.randint(0, 1000, (1,), generator=g)
        loss = F.mse_loss(unet(sched.add_noise(latents[:1], noise1, t1), t1, v_context()).sample, noise1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_out(v_context().detach())
    lines.append(f"textual inversion of <t> from 'object', 200 AdamW steps at 5e-3, batch 1: {before:.5f} -> {after:.5f}")
    for line in lines:
        print(line)
    readme = f"""# tiny-sd1-conditional

`unet/`: a U-Net with tiny-sd1's configuration but one layer per block, trained by
`scripts/make_train_fixtures.py conditional` ({PRETRAIN_STEPS} AdamW steps at {PRETRAIN_LR}, batch
{PRETRAIN_BATCH}) to denoise the latents of six 64x64 coloured-square images conditioned on their
two-word captions, with tiny-sd1's text encoder and VAE (the VAE made deterministic, quant_conv's
log-variance bias lowered by {LOGVAR_SHIFT:g}; latents unscaled, scaling factor {SCALE:g}). tiny-sd1's
own random U-Net hardly depends on its conditioning, so textual inversion cannot lower its loss by
a measurable margin; this one does. crates/invert-train/tests/training.rs assembles a model folder
from tiny-sd1 with this U-Net.

Images (background, square at rows 16..40, columns 20..44):
""" + "".join(f"- {c!r}: {bg}, {fg}\n" for c, bg, fg in CLASSES) + """
Measured by the script (PyTorch, fp16-rounded weights, 32 fixed (t, noise) pairs):

""" + "".join(f"- {line}\n" for line in lines) + f"""
Versions: torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}.
"""
    (COND / "README.md").write_text(readme)
    print(f"wrote {COND.relative_to(ROOT)}")


def main():
    which = set(sys.argv[1:]) or {"gradient", "conditional"}
    check(which <= {"gradient", "conditional"}, f"unknown arguments {sorted(which)}")
    if "gradient" in which:
        gradient_fixtures()
    if "conditional" in which:
        conditional_unet()


def gradient_fixtures():
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
    os.chmod(OUT, 0o644)
    with safe_open(str(OUT), "pt") as f:
        check(set(f.keys()) == set(tensors) and f.metadata() == meta, "keys/metadata round trip")
    print(f"wrote {OUT.relative_to(ROOT)} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
