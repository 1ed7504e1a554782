#!/usr/bin/env python3
"""Generate the image-to-image fixture for invert-model's pipeline test (diffusers 0.42.1).

Run from the repository root with the reference venv:
    /work/venv23/bin/python scripts/make_img2img_fixtures.py

Runs diffusers' StableDiffusionImg2ImgPipeline on the tiny SD1 model
(crates/invert-model/tests/fixtures/tiny-sd1, fp16 variant files loaded as float32) with the folder's
own tokenizer, no safety checker, once per sampler:

    ddim, pndm, euler, euler-a, dpm++2m    Cls.from_config(folder's PNDM config)
    euler-karras, dpm++2m-karras           the same with use_karras_sigmas=True

each with the committed init image `pipeline/img2img-init.png` (32x24 px, drawn below), prompt
PROMPT, negative NEGATIVE, strength STRENGTH, STEPS steps, guidance GUIDANCE, output_type="np".

The random numbers: diffusers draws three kinds, all through `randn_tensor` (the VAE posterior's
`latent_dist.sample(generator)`, the pipeline's `prepare_latents` noise for `scheduler.add_noise`,
and Euler ancestral's per-step noise). This script replaces `randn_tensor` in those three modules
with a port of invert's own generator (`crates/invert-model/src/pipeline/noise.rs`: SplitMix64 +
Box-Muller in float64, rounded to float32) seeded with SEED, drawn in the same order invert draws
them (posterior noise, add_noise noise, then one tensor per ancestral step). So the Rust test runs
`invert`'s seeded path exactly as `invert generate --init-image ... --seed SEED` does and needs no
stored noise: the fixture stays a few KB. `noise.first_values` in the metadata holds the first
values of the stream, to tell a generator mismatch from a pipeline mismatch.

Writes crates/invert-model/tests/fixtures/pipeline/img2img-init.png and
crates/invert-model/tests/fixtures/pipeline/tiny-sd1-img2img.safetensors with
    `init_latents`     F32 [1,4,12,16]  scaling_factor * latent_dist.sample() (before add_noise)
and for each case c:
    `{c}.latents`      F32 [1,4,12,16]  the latents after the last step (callback_on_step_end)
    `{c}.image`        U8  [1,24,32,3]  (images * 255).round() as diffusers' numpy_to_pil makes it
and the settings, each case's timesteps run and the versions in the metadata.

CPU, float32, one thread. Re-running gives byte-identical files (metadata keys sorted).
"""

import json
import math
import pathlib
import sys

import numpy as np
import PIL
import torch
from PIL import Image, ImageDraw
from safetensors import safe_open
from safetensors.torch import save_file

import diffusers
import diffusers.models.autoencoders.vae as vae_module
import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img as img2img_module
import diffusers.schedulers.scheduling_euler_ancestral_discrete as euler_a_module
import transformers
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionImg2ImgPipeline,
)
from transformers import CLIPTokenizer

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "crates/invert-model/tests/fixtures"
MODEL = FIXTURES / "tiny-sd1"
TOKENIZER = MODEL / "tokenizer"  # the model's own 1000-id CLIP BPE (scripts/tiny_clip_bpe.py)
INIT_PNG = FIXTURES / "pipeline/img2img-init.png"
OUT = FIXTURES / "pipeline/tiny-sd1-img2img.safetensors"
SIZE_LIMIT = 60_000

PROMPT = "a painting of a red toy in the style of Van Gogh"
NEGATIVE = "blurry, low quality"
STEPS = 10
STRENGTH = 0.6
GUIDANCE = 7.5
SEED = 42
WIDTH, HEIGHT = 32, 24

# (case name, scheduler class, use_karras_sigmas); the names are invert's --sampler values.
CASES = [
    ("ddim", DDIMScheduler, False),
    ("pndm", PNDMScheduler, False),
    ("euler", EulerDiscreteScheduler, False),
    ("euler-a", EulerAncestralDiscreteScheduler, False),
    ("dpm++2m", DPMSolverMultistepScheduler, False),
    ("euler-karras", EulerDiscreteScheduler, True),
    ("dpm++2m-karras", DPMSolverMultistepScheduler, True),
]


def check(cond, msg):
    if not cond:
        sys.exit(f"check failed: {msg}")


class InvertNoise:
    """invert's NoiseGenerator (src/pipeline/noise.rs), value for value."""

    MASK = (1 << 64) - 1

    def __init__(self, seed):
        self.state = seed & self.MASK
        self.spare = None

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & self.MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & self.MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & self.MASK
        return z ^ (z >> 31)

    def uniform(self):
        return ((self.next_u64() >> 11) + 1) / float(1 << 53)

    def normal(self):
        if self.spare is not None:
            z, self.spare = self.spare, None
            return z
        u1, u2 = self.uniform(), self.uniform()
        r = math.sqrt(-2.0 * math.log(u1))
        theta = 2.0 * math.pi * u2
        self.spare = r * math.sin(theta)
        return r * math.cos(theta)

    def tensor(self, shape):
        n = int(np.prod(shape))
        values = np.array([self.normal() for _ in range(n)], dtype=np.float64).astype(np.float32)
        return torch.from_numpy(values.reshape(tuple(shape)))


class PatchedRandn:
    """Stands in for diffusers' randn_tensor in the three modules that draw img2img's noise."""

    def __init__(self):
        self.source = None
        self.draws = []

    def __call__(self, shape, generator=None, device=None, dtype=None, layout=None):
        check(self.source is not None, "randn_tensor called outside a case")
        check(tuple(shape)[0] == 1, f"one image per case, got shape {tuple(shape)}")
        t = self.source.tensor(tuple(shape))
        self.draws.append(tuple(shape))
        return t.to(dtype=dtype or torch.float32)


def init_image():
    """A small picture with edges and colours (deterministic), saved as PNG."""
    img = Image.new("RGB", (WIDTH, HEIGHT), (40, 90, 160))
    d = ImageDraw.Draw(img)
    for y in range(HEIGHT):
        for x in range(WIDTH):
            if (x + y) % 7 == 0:
                img.putpixel((x, y), (200, 180, 60))
    d.ellipse((4, 3, 18, 17), fill=(220, 40, 30))
    d.rectangle((20, 12, 29, 21), fill=(250, 250, 240))
    d.line((0, 23, 31, 0), fill=(10, 10, 10))
    img.save(INIT_PNG, optimize=True)
    return Image.open(INIT_PNG).convert("RGB")


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


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    INIT_PNG.parent.mkdir(parents=True, exist_ok=True)
    image = init_image()

    tokenizer = CLIPTokenizer.from_pretrained(str(TOKENIZER))
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
        str(MODEL),
        variant="fp16",
        dtype=torch.float32,
        tokenizer=tokenizer,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).to("cpu")
    pipe.set_progress_bar_config(disable=True)
    check(pipe.vae.dtype == torch.float32 and pipe.unet.dtype == torch.float32, "float32 weights")
    base_config = pipe.scheduler.config
    check(type(pipe.scheduler).__name__ == "PNDMScheduler", "the folder's scheduler is PNDM")

    randn = PatchedRandn()
    for module in (vae_module, img2img_module, euler_a_module):
        module.randn_tensor = randn

    first = InvertNoise(SEED)
    meta = {
        "generator": "scripts/make_img2img_fixtures.py",
        "model": "tiny-sd1 (fp16 variant files loaded as float32)",
        "pipeline": "StableDiffusionImg2ImgPipeline",
        "init_image": INIT_PNG.name,
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE,
        "steps": str(STEPS),
        "strength": str(STRENGTH),
        "guidance_scale": str(GUIDANCE),
        "seed": str(SEED),
        "width": str(WIDTH),
        "height": str(HEIGHT),
        "noise": "invert's NoiseGenerator(seed) in place of randn_tensor: posterior sample, "
        "add_noise noise, then one tensor per Euler ancestral step",
        "noise.first_values": json.dumps([float(np.float32(first.normal())) for _ in range(4)]),
        "tokenizer": "tiny-sd1/tokenizer via transformers CLIPTokenizer",
        "compute": "CPU float32, 1 thread",
        "versions": f"torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"transformers {transformers.__version__}, numpy {np.__version__}, Pillow {PIL.__version__}",
    }
    gold = {}

    # The scaled posterior sample the first draw gives (every case starts from it).
    with torch.no_grad():
        pixels = pipe.image_processor.preprocess(image)
        check(tuple(pixels.shape) == (1, 3, HEIGHT, WIDTH), f"preprocessed {tuple(pixels.shape)}")
        randn.source, randn.draws = InvertNoise(SEED), []
        posterior = pipe.vae.encode(pixels).latent_dist
        gold["init_latents"] = pipe.vae.config.scaling_factor * posterior.sample()

    for name, cls, karras in CASES:
        extra = {"use_karras_sigmas": True} if karras else {}
        pipe.scheduler = cls.from_config(base_config, **extra)
        randn.source, randn.draws = InvertNoise(SEED), []
        final = {}

        def on_step_end(_pipe, i, t, kwargs):
            final["latents"] = kwargs["latents"].detach().clone()
            final.setdefault("timesteps", []).append(float(t))
            return kwargs

        with torch.no_grad():
            out = pipe(
                prompt=PROMPT,
                negative_prompt=NEGATIVE,
                image=image,
                strength=STRENGTH,
                num_inference_steps=STEPS,
                guidance_scale=GUIDANCE,
                output_type="np",
                callback_on_step_end=on_step_end,
                callback_on_step_end_tensor_inputs=["latents"],
            )
        images = out.images
        check(images.shape == (1, HEIGHT, WIDTH, 3), f"{name}: images {images.shape}")
        ancestral = cls is EulerAncestralDiscreteScheduler
        want_draws = 2 + (len(final["timesteps"]) if ancestral else 0)
        check(len(randn.draws) == want_draws, f"{name}: {len(randn.draws)} draws, expected {want_draws}")
        u8 = (images * 255).round().astype("uint8")
        gold[f"{name}.latents"] = final["latents"]
        gold[f"{name}.image"] = torch.from_numpy(u8)
        meta[f"{name}.scheduler"] = f"{cls.__name__}.from_config(tiny-sd1 PNDM config{', use_karras_sigmas=True' if karras else ''})"
        meta[f"{name}.timesteps"] = json.dumps(final["timesteps"])
        print(f"  {name}: {len(final['timesteps'])} steps {final['timesteps']}, mean pixel {u8.mean():.2f}")

    save_file({k: v.contiguous() for k, v in sorted(gold.items())}, str(OUT), metadata=meta)
    canonical_metadata_order(OUT)
    with safe_open(str(OUT), "pt") as f:
        check(set(f.keys()) == set(gold) and f.metadata() == meta, "keys/metadata round trip")
        check(all(torch.equal(f.get_tensor(k), gold[k]) for k in gold), "tensors round trip")
    size = OUT.stat().st_size
    check(size < SIZE_LIMIT, f"{OUT} is {size} bytes (limit {SIZE_LIMIT})")
    print(f"  {OUT.relative_to(ROOT)}: {len(gold)} tensors, {size} bytes; {INIT_PNG.name} {INIT_PNG.stat().st_size} bytes")


if __name__ == "__main__":
    main()
