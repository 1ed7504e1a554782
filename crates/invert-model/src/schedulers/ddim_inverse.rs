//! DDIM run backwards (the deterministic ODE of Song et al. 2020, section 4.3, from data to
//! noise), diffusers `DDIMInverseScheduler` (schedulers/scheduling_ddim_inverse.py): each step
//! takes a sample at the noise level of `t - T / n` to `t`, with the model's noise prediction at
//! `t`. DDIM inversion of real pictures (Mokady et al. 2022, "Null-text inversion") starts from
//! it. Not a generation sampler, so not one of [`super::Sampler`]'s kinds.

use burn::prelude::*;

use super::numpy::{np_arange, np_round};
use super::schedule_config::{NoiseScheduleConfig, PredictionType, TimestepSpacing};
use super::{SchedulerError, check_in_range, check_steps, to_f32};

const NAME: &str = "DDIM inverse";

#[derive(Debug, Clone)]
pub struct DdimInverse {
    alphas_cumprod: Vec<f32>,
    /// alpha-bar "before" timestep 0: 1 with `set_alpha_to_one`, else `abar_0`.
    initial_alpha_cumprod: f32,
    num_train_timesteps: usize,
    prediction: PredictionType,
    spacing: TimestepSpacing,
    steps_offset: usize,
    clip: Option<f32>,
    num_inference_steps: usize,
    timesteps: Vec<f64>,
}

impl DdimInverse {
    /// With `DDIMInverseScheduler`'s class defaults for keys the config lacks
    /// (`set_alpha_to_one` and `clip_sample` true, `leading` spacing). diffusers' inverse
    /// scheduler has no `linspace` spacing; neither has this.
    pub fn new(config: &NoiseScheduleConfig) -> Result<Self, SchedulerError> {
        let spacing = config.timestep_spacing.unwrap_or(TimestepSpacing::Leading);
        if spacing == TimestepSpacing::Linspace {
            return Err(SchedulerError::Unsupported {
                field: "timestep_spacing",
                value: "\"linspace\"".into(),
                supported: "\"leading\", \"trailing\" (DDIMInverseScheduler)".into(),
            });
        }
        let alphas_cumprod = config.init().alphas_cumprod;
        let initial_alpha_cumprod = if config.set_alpha_to_one.unwrap_or(true) {
            1.0
        } else {
            alphas_cumprod[0]
        };
        Ok(Self {
            initial_alpha_cumprod,
            alphas_cumprod,
            num_train_timesteps: config.num_train_timesteps,
            prediction: config.prediction_type,
            spacing,
            steps_offset: config.steps_offset,
            clip: config
                .clip_sample
                .unwrap_or(true)
                .then_some(config.clip_sample_range as f32),
            num_inference_steps: 0,
            timesteps: Vec::new(),
        })
    }

    /// Ascending timesteps: `arange(n) * (T // n) + steps_offset` (`leading`), or
    /// `round(arange(T, 0, -T / n)[::-1]) - 1` (`trailing`).
    pub fn set_timesteps(&mut self, n: usize) -> Result<(), SchedulerError> {
        check_steps(NAME, n, self.num_train_timesteps)?;
        let t = self.num_train_timesteps;
        let timesteps: Vec<i64> = match self.spacing {
            TimestepSpacing::Trailing => np_arange(t as f64, 0.0, -(t as f64 / n as f64))
                .into_iter()
                .rev()
                .map(|v| np_round(v) as i64 - 1)
                .collect(),
            _ => (0..n)
                .map(|i| (i * (t / n) + self.steps_offset) as i64)
                .collect(),
        };
        check_in_range(NAME, &timesteps, t)?;
        self.num_inference_steps = n;
        self.timesteps = timesteps.into_iter().map(|v| v as f64).collect();
        Ok(())
    }

    /// The model's timestep at each step, lowest first.
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// One inverse step: `sample` is at the noise level of `t - T / n` (or the clean picture
    /// for the first step), `model_output` the model's prediction at `t = timesteps()[i]`; the
    /// result is at the level of `t`. DDIM's update (formula 12, eta 0) with the two noise levels
    /// swapped, in diffusers' order of operations.
    pub fn step(&self, model_output: Tensor<4>, step_index: usize, sample: Tensor<4>) -> Tensor<4> {
        assert!(
            step_index < self.timesteps.len(),
            "{NAME}: step {step_index} of {} (call set_timesteps first)",
            self.timesteps.len()
        );
        let (model_output, sample) = (to_f32(model_output), to_f32(sample));
        let t = self.timesteps[step_index] as i64;
        let from = (t - (self.num_train_timesteps / self.num_inference_steps) as i64)
            .min(self.num_train_timesteps as i64 - 1);
        let alpha_prod_t = if from >= 0 {
            self.alphas_cumprod[from as usize]
        } else {
            self.initial_alpha_cumprod
        };
        let alpha_prod_t_next = self.alphas_cumprod[t as usize];
        let beta_prod_t = 1.0 - alpha_prod_t;
        let (pred_x0, pred_eps) = match self.prediction {
            PredictionType::Epsilon => (
                (sample.clone() - model_output.clone().mul_scalar(beta_prod_t.sqrt()))
                    .div_scalar(alpha_prod_t.sqrt()),
                model_output,
            ),
            PredictionType::Sample => (
                model_output.clone(),
                (sample - model_output.mul_scalar(alpha_prod_t.sqrt()))
                    .div_scalar(beta_prod_t.sqrt()),
            ),
            PredictionType::VPrediction => (
                sample.clone().mul_scalar(alpha_prod_t.sqrt())
                    - model_output.clone().mul_scalar(beta_prod_t.sqrt()),
                model_output.mul_scalar(alpha_prod_t.sqrt())
                    + sample.mul_scalar(beta_prod_t.sqrt()),
            ),
        };
        let pred_x0 = match self.clip {
            Some(r) => pred_x0.clamp(-r, r),
            None => pred_x0,
        };
        let direction = pred_eps.mul_scalar((1.0 - alpha_prod_t_next).sqrt());
        pred_x0.mul_scalar(alpha_prod_t_next.sqrt()) + direction
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedulers::{BetaSchedule, Ddim};

    fn config() -> NoiseScheduleConfig {
        NoiseScheduleConfig::new()
            .with_beta_schedule(BetaSchedule::ScaledLinear)
            .with_beta_start(0.00085)
            .with_beta_end(0.012)
            .with_steps_offset(1)
            .with_set_alpha_to_one(Some(false))
            .with_clip_sample(Some(false))
    }

    #[test]
    fn timesteps_ascend() {
        let mut d = DdimInverse::new(&config()).unwrap();
        d.set_timesteps(4).unwrap();
        assert_eq!(d.timesteps(), &[1.0, 251.0, 501.0, 751.0]);
        let mut d =
            DdimInverse::new(&config().with_timestep_spacing(Some(TimestepSpacing::Trailing)))
                .unwrap();
        d.set_timesteps(4).unwrap();
        assert_eq!(d.timesteps(), &[249.0, 499.0, 749.0, 999.0]);
        assert!(
            DdimInverse::new(&config().with_timestep_spacing(Some(TimestepSpacing::Linspace)))
                .is_err()
        );
    }

    /// With a model output that does not depend on the sample, an inverse step and the DDIM
    /// step back between the same two noise levels undo each other.
    #[test]
    fn a_ddim_step_undoes_an_inverse_step() {
        let device = Device::flex();
        let mut inverse = DdimInverse::new(&config()).unwrap();
        inverse.set_timesteps(10).unwrap();
        let mut ddim = Ddim::new(&config(), 0.0).unwrap();
        ddim.set_timesteps(10).unwrap();
        let x = Tensor::<4>::full([1, 1, 2, 2], 0.4, &device);
        let eps = Tensor::<4>::full([1, 1, 2, 2], -0.7, &device);
        // inverse step 3 goes 201 -> 301; DDIM step 6 (of 901, 801, ...) goes 301 -> 201
        assert_eq!(
            (inverse.timesteps()[3], ddim.timesteps()[6]),
            (301.0, 301.0)
        );
        let up = inverse.step(eps.clone(), 3, x.clone());
        let back = ddim.step(eps, 6, up, None);
        assert!((back - x).abs().max().into_scalar::<f32>() < 1e-6);
    }
}
