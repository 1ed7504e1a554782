//! Euler (Karras et al. 2022, algorithm 2 without churn), diffusers `EulerDiscreteScheduler`
//! (schedulers/scheduling_euler_discrete.py). Works in sigma space: the model input is scaled
//! by `1 / sqrt(sigma^2 + 1)` and timesteps are floats (interpolated between training steps
//! with `linspace` spacing or Karras sigmas).

use burn::prelude::*;

use super::schedule_config::{FinalSigmas, NoiseScheduleConfig, PredictionType, TimestepSpacing};
use super::sigmas::{
    euler_init_noise_sigma, euler_timesteps, input_scale, interp_sigmas, karras_sigmas, log_sigmas,
    sigma_to_t, v_to_x0,
};
use super::{SchedulerError, check_steps, to_f32};

const NAME: &str = "Euler";

#[derive(Debug, Clone)]
pub struct Euler {
    train_sigmas: Vec<f32>,
    num_train_timesteps: usize,
    prediction: PredictionType,
    spacing: TimestepSpacing,
    steps_offset: usize,
    karras: bool,
    sigma_min: Option<f64>,
    sigma_max: Option<f64>,
    final_sigmas: FinalSigmas,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
}

impl Euler {
    /// Euler with `EulerDiscreteScheduler`'s class defaults (`linspace` spacing); `karras`
    /// switches to Karras sigmas (as does `use_karras_sigmas` in the config).
    pub fn new(config: &NoiseScheduleConfig, karras: bool) -> Result<Self, SchedulerError> {
        Ok(Self {
            train_sigmas: config.init().train_sigmas(),
            num_train_timesteps: config.num_train_timesteps,
            prediction: config.prediction_type,
            spacing: config.timestep_spacing.unwrap_or(TimestepSpacing::Linspace),
            steps_offset: config.steps_offset,
            karras: karras || config.use_karras_sigmas,
            sigma_min: config.sigma_min,
            sigma_max: config.sigma_max,
            final_sigmas: config.final_sigmas_type,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
        })
    }

    pub fn set_timesteps(&mut self, n: usize) -> Result<(), SchedulerError> {
        check_steps(NAME, n, self.num_train_timesteps)?;
        let timesteps =
            euler_timesteps(self.spacing, n, self.num_train_timesteps, self.steps_offset);
        let ts64: Vec<f64> = timesteps.iter().map(|&t| t as f64).collect();
        let sigmas = interp_sigmas(&ts64, &self.train_sigmas);
        let (timesteps, mut sigmas): (Vec<f64>, Vec<f32>) = if self.karras {
            let sigma_min = self.sigma_min.unwrap_or(sigmas[n - 1]);
            let sigma_max = self.sigma_max.unwrap_or(sigmas[0]);
            let karras = karras_sigmas(sigma_min, sigma_max, n);
            let logs = log_sigmas(&self.train_sigmas);
            (
                karras
                    .iter()
                    .map(|&s| sigma_to_t(s, &logs) as f32 as f64)
                    .collect(),
                karras.iter().map(|&s| s as f32).collect(),
            )
        } else {
            (ts64, sigmas.iter().map(|&s| s as f32).collect())
        };
        sigmas.push(match self.final_sigmas {
            FinalSigmas::Zero => 0.0,
            FinalSigmas::SigmaMin => self.train_sigmas[0],
        });
        self.timesteps = timesteps;
        self.sigmas = sigmas;
        Ok(())
    }

    /// Float timesteps (float32 values), highest first.
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// One sigma per timestep plus the final one (0 or sigma_min).
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

    /// `x0 + noise * sigma` with the sigma of step `step_index` (`EulerDiscreteScheduler.add_noise`
    /// before the first step, when the pipeline has set a begin index: img2img).
    pub fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, step_index: usize) -> Tensor<4> {
        to_f32(original) + to_f32(noise).mul_scalar(self.sigma(step_index))
    }

    /// One Euler step from `sigmas[i]` to `sigmas[i + 1]` (with `s_churn = 0`, the pipeline's
    /// default, so no noise is added).
    pub fn step(&self, model_output: Tensor<4>, step_index: usize, sample: Tensor<4>) -> Tensor<4> {
        let (model_output, sample) = (to_f32(model_output), to_f32(sample));
        let sigma = self.sigma(step_index);
        // gamma = 0: sigma_hat = sigma * (gamma + 1) = sigma
        let sigma_hat = sigma;
        let pred_x0 = match self.prediction {
            PredictionType::Sample => model_output,
            PredictionType::Epsilon => sample.clone() - model_output.mul_scalar(sigma_hat),
            PredictionType::VPrediction => v_to_x0(model_output, sample.clone(), sigma),
        };
        let derivative = (sample.clone() - pred_x0).div_scalar(sigma_hat);
        let dt = self.sigmas[step_index + 1] - sigma_hat;
        sample + derivative.mul_scalar(dt)
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
            .with_steps_offset(1)
    }

    #[test]
    fn linspace_timesteps_and_sigmas() {
        let mut e = Euler::new(&config(), false).unwrap();
        e.set_timesteps(10).unwrap();
        assert_eq!(e.timesteps()[0], 999.0);
        assert_eq!(e.timesteps()[9], 0.0);
        assert_eq!(e.sigmas().len(), 11);
        assert_eq!(e.sigmas()[10], 0.0);
        assert!((e.init_noise_sigma() - 14.614_647).abs() < 1e-5);
        let mut lead = Euler::new(
            &config().with_timestep_spacing(Some(TimestepSpacing::Leading)),
            false,
        )
        .unwrap();
        lead.set_timesteps(10).unwrap();
        assert_eq!(lead.timesteps()[0], 901.0);
        let s = lead.sigmas()[0];
        assert_eq!(lead.init_noise_sigma(), (s * s + 1.0).sqrt());
    }

    #[test]
    fn karras_schedule_ends_at_the_schedule_ends() {
        let mut e = Euler::new(&config(), true).unwrap();
        e.set_timesteps(25).unwrap();
        let sig = e.sigmas();
        assert!((sig[0] - 14.614_647).abs() < 1e-5);
        assert!((sig[24] - 0.029_167_5).abs() < 1e-6);
        assert_eq!(e.timesteps()[0], 999.0);
        assert_eq!(e.timesteps()[24], 0.0);
    }

    #[test]
    fn exact_epsilon_lands_on_x0() {
        // x_t = x0 + sigma * eps and a perfect epsilon prediction: the last step (to sigma 0)
        // returns x0.
        let device = Device::flex();
        let mut e = Euler::new(&config(), false).unwrap();
        e.set_timesteps(3).unwrap();
        let x0 = Tensor::<4>::full([1, 1, 2, 2], 0.25, &device);
        let eps = Tensor::<4>::full([1, 1, 2, 2], 1.5, &device);
        let xt = x0.clone() + eps.clone().mul_scalar(e.sigmas()[2]);
        let out = e.step(eps, 2, xt);
        assert!((out - x0).abs().max().into_scalar::<f32>() < 1e-6);
    }
}
