//! The sampler a pipeline runs: one enum over the five implementations, chosen by
//! [`SamplerKind`] (the CLI's `--sampler ddim|pndm|euler|euler-a|dpm++2m` and `--karras`).
//!
//! The denoising loop, as diffusers' `StableDiffusionPipeline.__call__` runs it:
//!
//! ```ignore
//! let mut sampler = SamplerConfig::new(kind).init(&schedule_config)?;
//! sampler.set_timesteps(steps)?;
//! let mut latents = noise.mul_scalar(sampler.init_noise_sigma());
//! for i in 0..sampler.timesteps().len() {
//!     let input = sampler.scale_model_input(latents.clone(), i);
//!     let out = unet(input, sampler.timesteps()[i], ...);          // + classifier-free guidance
//!     let step_noise = sampler.needs_noise().then(|| generator.randn(latents.shape()));
//!     latents = sampler.step(out, i, latents, step_noise);
//! }
//! ```

use std::fmt;
use std::str::FromStr;

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::schedule_config::NoiseScheduleConfig;
use super::{Ddim, DpmSolverMultistep, Euler, EulerAncestral, Pndm, SchedulerError};

/// Which sampler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SamplerKind {
    /// `ddim`: DDIMScheduler (eta from [`SamplerConfig::eta`]).
    #[serde(rename = "ddim")]
    Ddim,
    /// `pndm`: PNDMScheduler, PLMS with `skip_prk_steps` (SD 1.x's default).
    #[serde(rename = "pndm")]
    Pndm,
    /// `euler`: EulerDiscreteScheduler.
    #[serde(rename = "euler")]
    Euler,
    /// `euler-a`: EulerAncestralDiscreteScheduler.
    #[serde(rename = "euler-a")]
    EulerAncestral,
    /// `dpm++2m`: DPMSolverMultistepScheduler, dpmsolver++, order 2.
    #[serde(rename = "dpm++2m")]
    DpmPlusPlus2M,
}

impl SamplerKind {
    pub const ALL: [SamplerKind; 5] = [
        SamplerKind::Ddim,
        SamplerKind::Pndm,
        SamplerKind::Euler,
        SamplerKind::EulerAncestral,
        SamplerKind::DpmPlusPlus2M,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::Ddim => "ddim",
            SamplerKind::Pndm => "pndm",
            SamplerKind::Euler => "euler",
            SamplerKind::EulerAncestral => "euler-a",
            SamplerKind::DpmPlusPlus2M => "dpm++2m",
        }
    }

    /// The sampler of a config's `_class_name` (what the model was published with), if it
    /// is one of these.
    pub fn from_class_name(class_name: &str) -> Option<SamplerKind> {
        Some(match class_name {
            "DDIMScheduler" => SamplerKind::Ddim,
            "PNDMScheduler" => SamplerKind::Pndm,
            "EulerDiscreteScheduler" => SamplerKind::Euler,
            "EulerAncestralDiscreteScheduler" => SamplerKind::EulerAncestral,
            "DPMSolverMultistepScheduler" => SamplerKind::DpmPlusPlus2M,
            _ => return None,
        })
    }

    /// Whether `--karras` applies (diffusers' `use_karras_sigmas`).
    pub fn supports_karras(self) -> bool {
        matches!(self, SamplerKind::Euler | SamplerKind::DpmPlusPlus2M)
    }
}

impl fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SamplerKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SamplerKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = SamplerKind::ALL.iter().map(|k| k.name()).collect();
                format!(
                    "unknown sampler `{s}` (expected one of: {})",
                    names.join(", ")
                )
            })
    }
}

/// A sampler choice with its options.
#[derive(Config, Debug, PartialEq)]
pub struct SamplerConfig {
    pub kind: SamplerKind,
    /// Karras sigmas (Euler and DPM-Solver++ only; the config's `use_karras_sigmas` also
    /// turns them on).
    #[config(default = false)]
    pub karras: bool,
    /// DDIM's eta: 0 deterministic, 1 DDPM-like (DDIM only).
    #[config(default = 0.0)]
    pub eta: f64,
}

impl SamplerConfig {
    /// Builds the sampler for a noise schedule, with the class defaults diffusers' `from_config`
    /// would fill in for keys the config lacks.
    pub fn init(&self, schedule: &NoiseScheduleConfig) -> Result<Sampler, SchedulerError> {
        schedule.validate()?;
        if self.karras && !self.kind.supports_karras() {
            return Err(SchedulerError::Sampler {
                sampler: self.kind.name(),
                message: "Karras sigmas are available with euler and dpm++2m only".into(),
            });
        }
        if self.eta != 0.0 && self.kind != SamplerKind::Ddim {
            return Err(SchedulerError::Sampler {
                sampler: self.kind.name(),
                message: "eta applies to ddim only".into(),
            });
        }
        Ok(match self.kind {
            SamplerKind::Ddim => Sampler::Ddim(Ddim::new(schedule, self.eta)?),
            SamplerKind::Pndm => Sampler::Pndm(Box::new(Pndm::new(schedule)?)),
            SamplerKind::Euler => Sampler::Euler(Euler::new(schedule, self.karras)?),
            SamplerKind::EulerAncestral => Sampler::EulerAncestral(EulerAncestral::new(schedule)?),
            SamplerKind::DpmPlusPlus2M => {
                Sampler::DpmSolver(Box::new(DpmSolverMultistep::new(schedule, self.karras)?))
            }
        })
    }
}

/// One of the samplers, behind the interface of diffusers' schedulers, indexed by step
/// number instead of timestep value. (The two that keep tensors of history are boxed.)
#[derive(Debug, Clone)]
pub enum Sampler {
    Ddim(Ddim),
    Pndm(Box<Pndm>),
    Euler(Euler),
    EulerAncestral(EulerAncestral),
    DpmSolver(Box<DpmSolverMultistep>),
}

impl Sampler {
    pub fn kind(&self) -> SamplerKind {
        match self {
            Sampler::Ddim(_) => SamplerKind::Ddim,
            Sampler::Pndm(_) => SamplerKind::Pndm,
            Sampler::Euler(_) => SamplerKind::Euler,
            Sampler::EulerAncestral(_) => SamplerKind::EulerAncestral,
            Sampler::DpmSolver(_) => SamplerKind::DpmPlusPlus2M,
        }
    }

    /// Prepares `n` inference steps and resets the sampler's history.
    pub fn set_timesteps(&mut self, n: usize) -> Result<(), SchedulerError> {
        match self {
            Sampler::Ddim(s) => s.set_timesteps(n),
            Sampler::Pndm(s) => s.set_timesteps(n),
            Sampler::Euler(s) => s.set_timesteps(n),
            Sampler::EulerAncestral(s) => s.set_timesteps(n),
            Sampler::DpmSolver(s) => s.set_timesteps(n),
        }
    }

    /// The model's timestep at each step, highest first: integers, except Euler's floats
    /// (float32 values). One per model call, so PNDM has `n + 1` (PLMS) or `n + 9`.
    pub fn timesteps(&self) -> &[f64] {
        match self {
            Sampler::Ddim(s) => s.timesteps(),
            Sampler::Pndm(s) => s.timesteps(),
            Sampler::Euler(s) => s.timesteps(),
            Sampler::EulerAncestral(s) => s.timesteps(),
            Sampler::DpmSolver(s) => s.timesteps(),
        }
    }

    /// The sigmas of the sigma-space samplers (one per step plus the final one).
    pub fn sigmas(&self) -> Option<&[f32]> {
        match self {
            Sampler::Ddim(_) | Sampler::Pndm(_) => None,
            Sampler::Euler(s) => Some(s.sigmas()),
            Sampler::EulerAncestral(s) => Some(s.sigmas()),
            Sampler::DpmSolver(s) => Some(s.sigmas()),
        }
    }

    /// What the standard-normal initial latent is multiplied by (after `set_timesteps`):
    /// 1, or the largest sigma for Euler (`sqrt(sigma^2 + 1)` with `leading` spacing).
    /// The value is a float32 number, exactly representable in f64.
    pub fn init_noise_sigma(&self) -> f64 {
        match self {
            Sampler::Euler(s) => s.init_noise_sigma() as f64,
            Sampler::EulerAncestral(s) => s.init_noise_sigma() as f64,
            _ => 1.0,
        }
    }

    /// The U-Net input at step `step_index` (divided by `sqrt(sigma^2 + 1)` for Euler; the
    /// sample itself otherwise).
    pub fn scale_model_input(&self, sample: Tensor<4>, step_index: usize) -> Tensor<4> {
        match self {
            Sampler::Euler(s) => s.scale_model_input(sample, step_index),
            Sampler::EulerAncestral(s) => s.scale_model_input(sample, step_index),
            _ => sample,
        }
    }

    /// Whether `step` must be given noise: Euler ancestral always, DDIM when `eta > 0`.
    pub fn needs_noise(&self) -> bool {
        match self {
            Sampler::Ddim(s) => s.needs_noise(),
            Sampler::EulerAncestral(_) => true,
            _ => false,
        }
    }

    /// diffusers' `set_begin_index`, as img2img calls it after `set_timesteps`: the denoising
    /// loop will start at step `begin_index` (`t_start * order`) instead of 0. Only the samplers
    /// that count their steps need it (PNDM, DPM-Solver); DDIM and the Euler samplers look the
    /// step up by its index. `set_timesteps` resets it to 0.
    ///
    /// # Panics
    /// If `begin_index` is not below `timesteps().len()`.
    pub fn set_begin_index(&mut self, begin_index: usize) {
        let len = self.timesteps().len();
        assert!(
            begin_index < len,
            "begin index {begin_index} of {len} steps (call set_timesteps first)"
        );
        match self {
            Sampler::Pndm(s) => s.set_begin_index(begin_index),
            Sampler::DpmSolver(s) => s.set_begin_index(begin_index),
            Sampler::Ddim(_) | Sampler::Euler(_) | Sampler::EulerAncestral(_) => {}
        }
    }

    /// Noises clean latents `original` to the noise level of step `step_index`, the way each
    /// diffusers scheduler's `add_noise` does before the first step of img2img (called with
    /// `timesteps[t_start]`, where the sigma samplers use `sigmas[begin_index]`):
    /// - DDIM, PNDM: `sqrt(abar_t) * x0 + sqrt(1 - abar_t) * noise` (DDPM's forward process);
    /// - Euler, Euler ancestral: `x0 + sigma * noise` (no `init_noise_sigma`: the model input is
    ///   divided by `sqrt(sigma^2 + 1)` by `scale_model_input`);
    /// - DPM-Solver++: `alpha_t * x0 + sigma_t * noise` with `alpha_t = 1 / sqrt(sigma^2 + 1)`.
    ///
    /// `noise` is standard normal, shaped like `original`. Works in f32 and returns f32.
    pub fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, step_index: usize) -> Tensor<4> {
        match self {
            Sampler::Ddim(s) => s.add_noise(original, noise, step_index),
            Sampler::Pndm(s) => s.add_noise(original, noise, step_index),
            Sampler::Euler(s) => s.add_noise(original, noise, step_index),
            Sampler::EulerAncestral(s) => s.add_noise(original, noise, step_index),
            Sampler::DpmSolver(s) => s.add_noise(original, noise, step_index),
        }
    }

    /// Advances `sample` from step `step_index` to the next, given the model's output at
    /// `timesteps()[step_index]` (after classifier-free guidance). `noise`: a standard-normal
    /// tensor shaped like `sample` when [`Sampler::needs_noise`], else ignored. The pipeline
    /// draws it from its seeded generator, one tensor per step, which makes ancestral runs
    /// reproducible. Works in f32 and returns f32.
    ///
    /// # Panics
    /// If noise is needed but missing, and for PNDM and DPM-Solver (which keep a history) when
    /// steps are not run in order `b, b + 1, ..` after `set_timesteps` (`b`: the begin index, 0
    /// unless [`Sampler::set_begin_index`] set it).
    pub fn step(
        &mut self,
        model_output: Tensor<4>,
        step_index: usize,
        sample: Tensor<4>,
        noise: Option<Tensor<4>>,
    ) -> Tensor<4> {
        match self {
            Sampler::Ddim(s) => s.step(model_output, step_index, sample, noise),
            Sampler::Pndm(s) => s.step(model_output, step_index, sample),
            Sampler::Euler(s) => s.step(model_output, step_index, sample),
            Sampler::EulerAncestral(s) => {
                let noise = noise.unwrap_or_else(|| {
                    panic!("Euler ancestral needs the step's noise (see Sampler::needs_noise)")
                });
                s.step(model_output, step_index, sample, noise)
            }
            Sampler::DpmSolver(s) => s.step(model_output, step_index, sample),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_print() {
        for k in SamplerKind::ALL {
            assert_eq!(k.name().parse::<SamplerKind>().unwrap(), k);
            assert_eq!(k.to_string(), k.name());
        }
        let e = "lms".parse::<SamplerKind>().unwrap_err();
        assert!(e.contains("dpm++2m"), "{e}");
        assert_eq!(
            SamplerKind::from_class_name("PNDMScheduler"),
            Some(SamplerKind::Pndm)
        );
        assert_eq!(SamplerKind::from_class_name("LMSDiscreteScheduler"), None);
    }

    #[test]
    fn options_are_checked() {
        let schedule = NoiseScheduleConfig::new();
        assert!(
            SamplerConfig::new(SamplerKind::Ddim)
                .with_karras(true)
                .init(&schedule)
                .is_err()
        );
        assert!(
            SamplerConfig::new(SamplerKind::Euler)
                .with_eta(1.0)
                .init(&schedule)
                .is_err()
        );
        let s = SamplerConfig::new(SamplerKind::DpmPlusPlus2M)
            .with_karras(true)
            .init(&schedule)
            .unwrap();
        assert_eq!(s.kind(), SamplerKind::DpmPlusPlus2M);
    }

    /// img2img's start: every sampler runs from a begin index, and `add_noise` with a zero
    /// clean sample gives the noise scaled to that step's level (DDPM `sqrt(1 - abar_t)`, Euler
    /// `sigma`, DPM-Solver `sigma / sqrt(sigma^2 + 1)`), lower than at step 0.
    #[test]
    fn every_sampler_starts_part_way() {
        let device = Device::flex();
        let schedule = NoiseScheduleConfig::new()
            .with_beta_schedule(crate::schedulers::BetaSchedule::ScaledLinear)
            .with_beta_start(0.00085)
            .with_beta_end(0.012)
            .with_steps_offset(1);
        let level = |s: &Sampler, i: usize| {
            let zero = Tensor::<4>::zeros([1, 1, 1, 1], &device);
            let one = Tensor::<4>::ones([1, 1, 1, 1], &device);
            s.add_noise(zero, one, i).into_scalar::<f32>()
        };
        for kind in SamplerKind::ALL {
            let mut s = SamplerConfig::new(kind).init(&schedule).unwrap();
            s.set_timesteps(10).unwrap();
            let begin = 4;
            s.set_begin_index(begin);
            let (first, here) = (level(&s, 0), level(&s, begin));
            assert!(here < first && here > 0.0, "{kind}: {first} then {here}");
            let t = s.timesteps()[begin] as usize;
            let abar = schedule.init().alphas_cumprod[t];
            let want = match kind {
                SamplerKind::Ddim | SamplerKind::Pndm => (1.0 - abar).sqrt(),
                SamplerKind::Euler | SamplerKind::EulerAncestral => s.sigmas().unwrap()[begin],
                SamplerKind::DpmPlusPlus2M => {
                    let sigma = s.sigmas().unwrap()[begin];
                    sigma / (sigma * sigma + 1.0).sqrt()
                }
            };
            assert!((here - want).abs() < 1e-6, "{kind}: {here} vs {want}");
            let mut x = Tensor::<4>::ones([1, 1, 1, 1], &device);
            for i in begin..s.timesteps().len() {
                let out = s.scale_model_input(x.clone(), i).mul_scalar(0.1);
                let noise = s
                    .needs_noise()
                    .then(|| Tensor::<4>::zeros([1, 1, 1, 1], &device));
                x = s.step(out, i, x, noise);
            }
            assert!(x.into_scalar::<f32>().is_finite(), "{kind}");
        }
    }

    #[test]
    #[should_panic(expected = "expected step 4")]
    fn a_begin_index_sampler_refuses_step_zero() {
        let device = Device::flex();
        let mut s = SamplerConfig::new(SamplerKind::DpmPlusPlus2M)
            .init(&NoiseScheduleConfig::new())
            .unwrap();
        s.set_timesteps(10).unwrap();
        s.set_begin_index(4);
        let x = Tensor::<4>::zeros([1, 1, 1, 1], &device);
        s.step(x.clone(), 0, x, None);
    }

    #[test]
    fn every_sampler_runs_a_short_loop() {
        let device = Device::flex();
        let schedule = NoiseScheduleConfig::new();
        for kind in SamplerKind::ALL {
            let mut s = SamplerConfig::new(kind).init(&schedule).unwrap();
            s.set_timesteps(4).unwrap();
            let mut x = Tensor::<4>::ones([1, 2, 2, 2], &device).mul_scalar(s.init_noise_sigma());
            for i in 0..s.timesteps().len() {
                let input = s.scale_model_input(x.clone(), i);
                let out = input.mul_scalar(0.1);
                let noise = s
                    .needs_noise()
                    .then(|| Tensor::<4>::zeros([1, 2, 2, 2], &device));
                x = s.step(out, i, x, noise);
            }
            let v = x.abs().max().into_scalar::<f32>();
            assert!(v.is_finite(), "{kind}: {v}");
        }
    }
}
