//! Euler ancestral ("Euler a"), diffusers `EulerAncestralDiscreteScheduler`
//! (schedulers/scheduling_euler_ancestral_discrete.py): an Euler step down to `sigma_down`,
//! then fresh noise of size `sigma_up`, with `sigma_down^2 + sigma_up^2 = sigma_next^2`.
//! Every step draws noise, including the last (where `sigma_up` is 0).

use burn::prelude::*;

use super::schedule_config::{NoiseScheduleConfig, PredictionType, TimestepSpacing};
use super::sigmas::{euler_init_noise_sigma, euler_timesteps, input_scale, interp_sigmas, v_to_x0};
use super::{SchedulerError, check_steps, to_f32};

const NAME: &str = "Euler ancestral";

#[derive(Debug, Clone)]
pub struct EulerAncestral {
    train_sigmas: Vec<f32>,
    num_train_timesteps: usize,
    v_prediction: bool,
    spacing: TimestepSpacing,
    steps_offset: usize,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
}

impl EulerAncestral {
    /// Euler ancestral with its class defaults (`linspace` spacing). Like diffusers, it has
    /// no Karras sigmas and refuses `prediction_type = "sample"`.
    pub fn new(config: &NoiseScheduleConfig) -> Result<Self, SchedulerError> {
        let v_prediction = match config.prediction_type {
            PredictionType::Epsilon => false,
            PredictionType::VPrediction => true,
            PredictionType::Sample => {
                return Err(SchedulerError::Sampler {
                    sampler: NAME,
                    message: "prediction_type \"sample\" is not supported (not implemented in diffusers either)".into(),
                });
            }
        };
        Ok(Self {
            train_sigmas: config.init().train_sigmas(),
            num_train_timesteps: config.num_train_timesteps,
            v_prediction,
            spacing: config.timestep_spacing.unwrap_or(TimestepSpacing::Linspace),
            steps_offset: config.steps_offset,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
        })
    }

    pub fn set_timesteps(&mut self, n: usize) -> Result<(), SchedulerError> {
        check_steps(NAME, n, self.num_train_timesteps)?;
        let timesteps: Vec<f64> =
            euler_timesteps(self.spacing, n, self.num_train_timesteps, self.steps_offset)
                .into_iter()
                .map(|t| t as f64)
                .collect();
        let mut sigmas: Vec<f32> = interp_sigmas(&timesteps, &self.train_sigmas)
            .into_iter()
            .map(|s| s as f32)
            .collect();
        sigmas.push(0.0);
        self.timesteps = timesteps;
        self.sigmas = sigmas;
        Ok(())
    }

    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    pub fn init_noise_sigma(&self) -> f32 {
        euler_init_noise_sigma(&self.sigmas, self.spacing)
    }

    fn sigma(&self, step_index: usize) -> f32 {
        assert!(
            step_index < self.timesteps.len(),
            "{NAME}: step {step_index} of {} (call set_timesteps first)",
            self.timesteps.len()
        );
        self.sigmas[step_index]
    }

    /// `sample / sqrt(sigma^2 + 1)`.
    pub fn scale_model_input(&self, sample: Tensor<4>, step_index: usize) -> Tensor<4> {
        to_f32(sample).div_scalar(input_scale(self.sigma(step_index)))
    }

    /// `x0 + noise * sigma` with the sigma of step `step_index`
    /// (`EulerAncestralDiscreteScheduler.add_noise` before the first step: img2img).
    pub fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, step_index: usize) -> Tensor<4> {
        to_f32(original) + to_f32(noise).mul_scalar(self.sigma(step_index))
    }

    /// One ancestral step; `noise` is standard normal, shaped like `sample`.
    pub fn step(
        &self,
        model_output: Tensor<4>,
        step_index: usize,
        sample: Tensor<4>,
        noise: Tensor<4>,
    ) -> Tensor<4> {
        let (model_output, sample) = (to_f32(model_output), to_f32(sample));
        let sigma = self.sigma(step_index);
        let pred_x0 = if self.v_prediction {
            v_to_x0(model_output, sample.clone(), sigma)
        } else {
            sample.clone() - model_output.mul_scalar(sigma)
        };
        let sigma_from = sigma;
        let sigma_to = self.sigmas[step_index + 1];
        let (from2, to2) = (sigma_from * sigma_from, sigma_to * sigma_to);
        let sigma_up = (to2 * (from2 - to2) / from2).sqrt();
        let sigma_down = (to2 - sigma_up * sigma_up).sqrt();
        let derivative = (sample.clone() - pred_x0).div_scalar(sigma);
        let dt = sigma_down - sigma;
        let prev = sample + derivative.mul_scalar(dt);
        prev + to_f32(noise).mul_scalar(sigma_up)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedulers::BetaSchedule;

    fn config() -> NoiseScheduleConfig {
        NoiseScheduleConfig::new()
            .with_beta_schedule(BetaSchedule::ScaledLinear)
            .with_beta_start(0.00085)
            .with_beta_end(0.012)
    }

    #[test]
    fn variance_is_split_between_down_and_up() {
        let mut e = EulerAncestral::new(&config()).unwrap();
        e.set_timesteps(5).unwrap();
        assert_eq!(e.sigmas().len(), 6);
        // zero model output and noise: the predicted x0 is the sample itself, nothing moves
        let device = Device::flex();
        let x = Tensor::<4>::full([1, 1, 1, 2], 2.0, &device);
        let zero = Tensor::<4>::zeros([1, 1, 1, 2], &device);
        let out = e.step(zero.clone(), 0, x.clone(), zero);
        assert!((out - x).abs().max().into_scalar::<f32>() < 1e-6);
    }

    #[test]
    fn refuses_sample_prediction() {
        let c = config().with_prediction_type(PredictionType::Sample);
        assert!(EulerAncestral::new(&c).is_err());
    }
}
