#!/usr/bin/env python3
"""Generate the golden values for invert-model's noise schedule and samplers (diffusers 0.42.1).

Run from the repository root with the reference venv:
    /work/venv/bin/python scripts/make_scheduler_fixtures.py

Writes crates/invert-model/tests/fixtures/schedulers/:

- `inputs.safetensors`: `init_noise` [1,4,8,8] (unscaled initial latent) and `model_outputs`
  [34,1,4,8,8], fake "model outputs" (deterministic random tensors, not a real model): the denoising
  loop at step i feeds `model_outputs[i]` to `scheduler.step`.
- `{config}_{steps}.safetensors` for config in (sd15, sd21) and steps in (10, 25). Each sampler
  variant `v` (see VARIANTS) is built the way diffusers pipelines swap schedulers:
  `Cls.from_config(Base.from_config(json).config, **overrides)`, where Base is the json's
  `_class_name`, then run through the StableDiffusionPipeline loop. Keys:
    `{v}.timesteps` F64 [T]            scheduler.timesteps after set_timesteps(steps)
    `{v}.sigmas` F32 [T+1]             scheduler.sigmas (Euler, Euler a, DPM-Solver only)
    `{v}.init_noise_sigma` F32 [1]
    `{v}.latents` F32 [T+1,1,4,8,8]    [0] = init_noise * init_noise_sigma, [i+1] = after step i
    `{v}.scaled` F32 [T,1,4,8,8]       scale_model_input(latents[i], t_i) (only where not identity)
    `{v}.noise` F32 [T,1,4,8,8]        the noise step i drew (ancestral / eta > 0 only), captured by
                                       wrapping diffusers' `randn_tensor` in the scheduler module
- `schedule_{config}.safetensors`: `betas`, `alphas_cumprod` (F32 [1000]) of the config, of the
  `linear` and `squaredcos_cap_v2` schedules (`linear.*`, `cosine.*`), and the DDPM forward process
  as textual-inversion training uses it (DDPMScheduler.from_config): `x0`, `noise` [4,4,8,8],
  `t` I64 [4], `add_noise`, `velocity` (get_velocity), `snr` (training_utils.compute_snr) and
  `min_snr_weights` (gamma 5, as in diffusers' train_text_to_image.py).
- `extra_25.safetensors`: the same records for the EXTRA variants (prediction_type `sample`,
  DDIM `clip_sample` with eta 0.5, DPM-Solver `heun` and `euler_at_final`, Euler a with
  `trailing` spacing and v-prediction) on SD 1.5's config, 25 steps.
- `timesteps.safetensors`: timesteps/sigmas/init_noise_sigma only, for every variant, every
  `timestep_spacing` and several step counts (`{v}.{spacing}.{n}.timesteps` etc.).

CPU, float32. Re-running gives the same files.
"""

import inspect
import json
import pathlib

import torch
from safetensors.torch import save_file

import diffusers
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)
from diffusers.schedulers import scheduling_ddim, scheduling_euler_ancestral_discrete
from diffusers.training_utils import compute_snr

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "crates/invert-model/tests/fixtures/schedulers"
CONFIGS = {
    "sd15": ROOT / "configs/sd15/scheduler/scheduler_config.json",  # PNDM, epsilon
    "sd21": ROOT / "configs/sd21/scheduler/scheduler_config.json",  # DDIM, v_prediction
}
STEPS = [10, 25]
SHAPE = (1, 4, 8, 8)
MAX_CALLS = 34  # PNDM with Runge-Kutta steps: steps + 9 model calls

# name -> (class, from_config overrides, extra step kwargs)
VARIANTS = {
    "ddim": (DDIMScheduler, {}, {"eta": 0.0}),
    "ddim_eta1": (DDIMScheduler, {}, {"eta": 1.0}),
    "pndm": (PNDMScheduler, {}, {}),
    "pndm_prk": (PNDMScheduler, {"skip_prk_steps": False}, {}),
    "euler": (EulerDiscreteScheduler, {}, {}),
    "euler_karras": (EulerDiscreteScheduler, {"use_karras_sigmas": True}, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}, {}),
    "dpmpp2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}, {}),
    "dpmpp2m_karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
        {},
    ),
    "dpmpp2m_sigma_min": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "final_sigmas_type": "sigma_min"},
        {},
    ),
}
DPMPP2M = {"algorithm_type": "dpmsolver++", "solver_order": 2}
# Settings the two configs above do not reach, run on SD 1.5's config for 25 steps into
# `extra_25.safetensors`: name -> (class, overrides, step kwargs).
EXTRA = {
    "ddim_sample": (DDIMScheduler, {"prediction_type": "sample"}, {"eta": 0.0}),
    "ddim_clip": (DDIMScheduler, {"clip_sample": True, "set_alpha_to_one": True}, {"eta": 0.5}),
    "euler_sample": (EulerDiscreteScheduler, {"prediction_type": "sample"}, {}),
    "dpmpp2m_sample": (DPMSolverMultistepScheduler, {**DPMPP2M, "prediction_type": "sample"}, {}),
    "dpmpp2m_heun": (DPMSolverMultistepScheduler, {**DPMPP2M, "solver_type": "heun"}, {}),
    "dpmpp2m_euler_at_final": (
        DPMSolverMultistepScheduler,
        {**DPMPP2M, "final_sigmas_type": "sigma_min", "euler_at_final": True},
        {},
    ),
    "euler_a_trailing_v": (
        EulerAncestralDiscreteScheduler,
        {"timestep_spacing": "trailing", "prediction_type": "v_prediction"},
        {},
    ),
}
VARIANTS_AND_EXTRA = {**VARIANTS, **EXTRA}
IDENTITY_INPUT_SCALING = {DDIMScheduler, PNDMScheduler, DPMSolverMultistepScheduler}

# The noise each step draws, recorded by wrapping randn_tensor where the samplers look it up.
DRAWN = []


def _recording(orig):
    def randn_tensor(*args, **kwargs):
        t = orig(*args, **kwargs)
        DRAWN.append(t.detach().clone())
        return t

    return randn_tensor


scheduling_ddim.randn_tensor = _recording(scheduling_ddim.randn_tensor)
scheduling_euler_ancestral_discrete.randn_tensor = _recording(
    scheduling_euler_ancestral_discrete.randn_tensor
)


def base_config(name):
    cfg = json.loads(CONFIGS[name].read_text())
    return getattr(diffusers, cfg["_class_name"]).from_config(cfg).config


def make_sampler(base, variant, **extra):
    cls, overrides, step_kwargs = VARIANTS_AND_EXTRA[variant]
    return cls.from_config(base, **{**overrides, **extra}), step_kwargs


def f32(x):
    return torch.as_tensor(x, dtype=torch.float32).reshape(-1).clone()


def record_schedule_fields(out, prefix, s):
    out[f"{prefix}.timesteps"] = s.timesteps.to(torch.float64).clone()
    if hasattr(s, "sigmas"):
        out[f"{prefix}.sigmas"] = s.sigmas.to(torch.float32).clone()
    out[f"{prefix}.init_noise_sigma"] = f32(s.init_noise_sigma)


def run(base, variant, steps, init_noise, model_outputs):
    s, step_kwargs = make_sampler(base, variant)
    s.set_timesteps(steps)
    out = {}
    record_schedule_fields(out, variant, s)
    takes_generator = "generator" in inspect.signature(s.step).parameters
    generator = torch.Generator().manual_seed(1234)
    DRAWN.clear()
    # StableDiffusionPipeline.prepare_latents: latents = randn * init_noise_sigma
    latents = init_noise * s.init_noise_sigma
    all_latents, scaled = [latents], []
    for i, t in enumerate(s.timesteps):
        scaled.append(s.scale_model_input(latents, t))
        kwargs = dict(step_kwargs)
        if takes_generator:
            kwargs["generator"] = generator
        latents = s.step(model_outputs[i], t, latents, **kwargs).prev_sample
        all_latents.append(latents)
    assert len(s.timesteps) <= MAX_CALLS
    out[f"{variant}.latents"] = torch.stack(all_latents)
    if type(s) not in IDENTITY_INPUT_SCALING:
        out[f"{variant}.scaled"] = torch.stack(scaled)
    else:
        for a, b in zip(scaled, all_latents):
            assert torch.equal(a, b)
    if DRAWN:
        assert len(DRAWN) == len(s.timesteps), (variant, len(DRAWN))
        out[f"{variant}.noise"] = torch.stack(DRAWN)
    return out


def schedule_file(name):
    base = base_config(name)
    ddpm = DDPMScheduler.from_config(base)
    out = {"betas": ddpm.betas.clone(), "alphas_cumprod": ddpm.alphas_cumprod.clone()}
    for tag, sched in [("linear", "linear"), ("cosine", "squaredcos_cap_v2")]:
        other = DDPMScheduler.from_config(base, beta_schedule=sched, beta_start=0.0001, beta_end=0.02)
        out[f"{tag}.betas"] = other.betas.clone()
        out[f"{tag}.alphas_cumprod"] = other.alphas_cumprod.clone()
    g = torch.Generator().manual_seed(7)
    x0 = torch.randn((4, 4, 8, 8), generator=g)
    noise = torch.randn((4, 4, 8, 8), generator=g)
    t = torch.tensor([0, 1, 500, 999], dtype=torch.int64)
    out.update(x0=x0, noise=noise, t=t)
    out["add_noise"] = ddpm.add_noise(x0, noise, t)
    out["velocity"] = ddpm.get_velocity(x0, noise, t)
    snr = compute_snr(ddpm, t)
    out["snr"] = snr
    # diffusers examples/text_to_image/train_text_to_image.py, --snr_gamma 5
    w = torch.stack([snr, 5.0 * torch.ones_like(t)], dim=1).min(dim=1)[0]
    if ddpm.config.prediction_type == "epsilon":
        w = w / snr
    elif ddpm.config.prediction_type == "v_prediction":
        w = w / (snr + 1)
    out["min_snr_weights"] = w
    return out


def timesteps_file():
    out = {}
    base = base_config("sd15")
    for variant in VARIANTS:
        for spacing in ["leading", "trailing", "linspace"]:
            for n in [1, 2, 3, 7, 10, 20, 25, 50, 100]:
                if variant == "pndm_prk" and n < 4:
                    continue  # diffusers' PRK schedule needs at least 4 steps
                s, _ = make_sampler(base, variant, timestep_spacing=spacing)
                s.set_timesteps(n)
                record_schedule_fields(out, f"{variant}.{spacing}.{n}", s)
    return out


def main():
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    init_noise = torch.randn(SHAPE, generator=g)
    model_outputs = torch.randn((MAX_CALLS, *SHAPE), generator=g)
    save_file({"init_noise": init_noise, "model_outputs": model_outputs}, OUT / "inputs.safetensors")
    for name in CONFIGS:
        base = base_config(name)
        save_file(schedule_file(name), OUT / f"schedule_{name}.safetensors")
        for steps in STEPS:
            out = {}
            for variant in VARIANTS:
                out.update(run(base, variant, steps, init_noise, model_outputs))
            save_file({k: v.contiguous() for k, v in out.items()}, OUT / f"{name}_{steps}.safetensors")
    out = {}
    for variant in EXTRA:
        out.update(run(base_config("sd15"), variant, 25, init_noise, model_outputs))
    save_file({k: v.contiguous() for k, v in out.items()}, OUT / "extra_25.safetensors")
    save_file(timesteps_file(), OUT / "timesteps.safetensors")
    total = sum(p.stat().st_size for p in OUT.glob("*.safetensors"))
    print(f"wrote {OUT} ({total / 1e6:.2f} MB), torch {torch.__version__}, diffusers {diffusers.__version__}")


if __name__ == "__main__":
    main()
