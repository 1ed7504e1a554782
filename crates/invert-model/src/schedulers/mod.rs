//! Noise schedules and samplers, reproducing diffusers 0.42.1 (`schedulers/scheduling_*.py`).
//!
//! - [`NoiseScheduleConfig`] reads a diffusers `scheduler/scheduler_config.json`;
//!   [`NoiseSchedule`] holds its betas and `alphas_cumprod` and the DDPM forward process that
//!   training uses (`add_noise`, `velocity`, the loss `target`, SNR and min-SNR weights).
//! - [`Sampler`] is one of [`Ddim`], [`Pndm`] (PLMS, SD 1.x's default), [`Euler`],
//!   [`EulerAncestral`] and [`DpmSolverMultistep`] (DPM-Solver++ 2M), built from the same
//!   config by [`SamplerConfig::init`], the way diffusers pipelines swap schedulers with
//!   `Cls.from_config(pipe.scheduler.config)`.
//! - [`DdimInverse`] runs DDIM backwards (`DDIMInverseScheduler`), for DDIM inversion of real
//!   pictures (`pipeline/ddim_inversion.rs`).
//!
//! Timesteps, sigmas and each step's arithmetic follow diffusers operation by operation, in
//! f32 where diffusers computes in float32 tensors and in f64 where it uses numpy float64
//! (including torch's float32 `linspace` and double-accumulated `cumprod`, bit for bit), so
//! results agree to float32 rounding. They are not bit-identical: torch takes float32
//! sqrt/log/exp through MKL, which is not correctly rounded, so a scalar can differ in its last
//! bit (see `tests/schedulers.rs` and `scripts/make_scheduler_fixtures.py`).
//!
//! Samplers that add noise (DDIM with `eta > 0`, Euler ancestral) take it from the caller as
//! `step(.., noise: Some(n))`, a standard-normal tensor shaped like the sample: the pipeline
//! draws it from its seeded generator, so runs are reproducible and testable.
//! [`Sampler::needs_noise`] tells when it must be given.
//!
//! Latents stay in f32 across steps: `step` casts its inputs to f32 and returns f32 (diffusers
//! upcasts inside Euler/DPM steps too, but rounds the result back to the model's dtype).

mod config_json;
mod ddim;
mod ddim_inverse;
mod dpm_solver;
mod euler;
mod euler_ancestral;
mod noise_schedule;
mod numpy;
mod pndm;
mod sampler;
mod schedule_config;
mod sigmas;

pub use ddim::Ddim;
pub use ddim_inverse::DdimInverse;
pub use dpm_solver::DpmSolverMultistep;
pub use euler::Euler;
pub use euler_ancestral::EulerAncestral;
pub use noise_schedule::NoiseSchedule;
pub use pndm::Pndm;
pub use sampler::{Sampler, SamplerConfig, SamplerKind};
pub use schedule_config::{
    BetaSchedule, FinalSigmas, NoiseScheduleConfig, PredictionType, SolverType, TimestepSpacing,
};

use burn::prelude::*;
use burn::tensor::DType;

/// What a scheduler config or sampler request that invert cannot honour looks like.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SchedulerError {
    /// A config value diffusers accepts but invert does not implement, or does not know.
    #[error("scheduler config: `{field}` = {value} is not supported (supported: {supported})")]
    Unsupported {
        field: &'static str,
        value: String,
        supported: String,
    },
    /// A config value of the wrong type or out of range.
    #[error("scheduler config: `{field}`: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// A sampler that cannot run with the requested settings.
    #[error("{sampler}: {message}")]
    Sampler {
        sampler: &'static str,
        message: String,
    },
}

/// `tensor` in f32 (a no-op when it already is).
pub(crate) fn to_f32<const D: usize>(tensor: Tensor<D>) -> Tensor<D> {
    if tensor.dtype() == DType::F32 {
        tensor
    } else {
        tensor.cast(DType::F32)
    }
}

/// `sqrt(abar_t) * x0 + sqrt(1 - abar_t) * noise` in f32: the DDPM forward process that
/// `DDIMScheduler.add_noise` and `PNDMScheduler.add_noise` compute (`alphas_cumprod[t] ** 0.5`).
pub(crate) fn ddpm_add_noise(abar: f32, original: Tensor<4>, noise: Tensor<4>) -> Tensor<4> {
    to_f32(original).mul_scalar(abar.sqrt()) + to_f32(noise).mul_scalar((1.0 - abar).sqrt())
}

/// The checks every `set_timesteps` shares (diffusers raises for DDIM; the others would build
/// an empty or degenerate schedule).
pub(crate) fn check_steps(
    sampler: &'static str,
    n: usize,
    num_train_timesteps: usize,
) -> Result<(), SchedulerError> {
    if n == 0 || n > num_train_timesteps {
        return Err(SchedulerError::Sampler {
            sampler,
            message: format!(
                "the number of inference steps must be between 1 and num_train_timesteps ({num_train_timesteps}), got {n}"
            ),
        });
    }
    Ok(())
}

/// Integer timesteps must index the training schedule (diffusers fails with an IndexError
/// when `leading` spacing plus `steps_offset` reaches T, e.g. 1000 steps with offset 1).
pub(crate) fn check_in_range(
    sampler: &'static str,
    timesteps: &[i64],
    num_train_timesteps: usize,
) -> Result<(), SchedulerError> {
    match timesteps
        .iter()
        .find(|&&t| t < 0 || t >= num_train_timesteps as i64)
    {
        Some(t) => Err(SchedulerError::Sampler {
            sampler,
            message: format!(
                "timestep {t} is outside the training schedule 0..{num_train_timesteps} (too many steps for this timestep_spacing/steps_offset)"
            ),
        }),
        None => Ok(()),
    }
}

/// Panics with a message when `step` is called out of order on a stateful sampler.
pub(crate) fn check_step_index(sampler: &str, expected: usize, got: usize, len: usize) {
    assert!(
        len > 0,
        "{sampler}: call set_timesteps before step or scale_model_input"
    );
    assert!(
        got == expected && got < len,
        "{sampler}: step {got} called, expected step {expected} of {len} (steps must run in order after set_timesteps)"
    );
}
