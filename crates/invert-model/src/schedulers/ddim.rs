//! DDIM (Song et al. 2020), diffusers `DDIMScheduler` (schedulers/scheduling_ddim.py):
//! integer timesteps, `eta` = 0 deterministic, `eta` = 1 DDPM-like ancestral noise.

use burn::prelude::*;

use super::numpy::{np_arange, np_linspace, np_round};
use super::schedule_config::{NoiseScheduleConfig, PredictionType, TimestepSpacing};
use super::{SchedulerError, check_in_range, check_steps, ddpm_add_noise, to_f32};

const NAME: &str = "DDIM";

#[derive(Debug, Clone)]
pub struct Ddim {
    alphas_cumprod: Vec<f32>,
    /// alpha-bar "before" timestep 0: 1 with `set_alpha_to_one`, else `abar_0`.
    final_alpha_cumprod: f32,
    num_train_timesteps: usize,
    prediction: PredictionType,
    spacing: TimestepSpacing,
    steps_offset: usize,
    /// `clip_sample_range` when `clip_sample`.
    clip: Option<f32>,
    eta: f64,
    num_inference_steps: usize,
    timesteps: Vec<f64>,
}

impl Ddim {
    /// DDIM with the class defaults diffusers' `DDIMScheduler` fills in for keys the config
    /// lacks (`set_alpha_to_one` and `clip_sample` true, `leading` spacing).
    pub fn new(config: &NoiseScheduleConfig, eta: f64) -> Result<Self, SchedulerError> {
        if !(eta >= 0.0 && eta.is_finite()) {
            return Err(SchedulerError::Sampler {
                sampler: NAME,
                message: format!("eta must be >= 0, got {eta}"),
            });
        }
        let schedule = config.init();
        let alphas_cumprod = schedule.alphas_cumprod;
        let final_alpha_cumprod = if config.set_alpha_to_one.unwrap_or(true) {
            1.0
        } else {
            alphas_cumprod[0]
        };
        Ok(Self {
            final_alpha_cumprod,
            alphas_cumprod,
            num_train_timesteps: config.num_train_timesteps,
            prediction: config.prediction_type,
            spacing: config.timestep_spacing.unwrap_or(TimestepSpacing::Leading),
            steps_offset: config.steps_offset,
            clip: config
                .clip_sample
                .unwrap_or(true)
                .then_some(config.clip_sample_range as f32),
            eta,
            num_inference_steps: 0,
            timesteps: Vec::new(),
        })
    }

    pub fn eta(&self) -> f64 {
        self.eta
    }

    pub fn set_timesteps(&mut self, n: usize) -> Result<(), SchedulerError> {
        check_steps(NAME, n, self.num_train_timesteps)?;
        let t = self.num_train_timesteps;
        let timesteps: Vec<i64> = match self.spacing {
            // np.linspace(0, T - 1, n).round()[::-1]
            TimestepSpacing::Linspace => np_linspace(0.0, (t - 1) as f64, n)
                .into_iter()
                .rev()
                .map(|v| np_round(v) as i64)
                .collect(),
            // np.arange(0, n) * (T // n), reversed, + steps_offset
            TimestepSpacing::Leading => (0..n)
                .rev()
                .map(|i| (i * (t / n) + self.steps_offset) as i64)
                .collect(),
            // np.round(np.arange(T, 0, -T / n)) - 1
            TimestepSpacing::Trailing => np_arange(t as f64, 0.0, -(t as f64 / n as f64))
                .into_iter()
                .map(|v| np_round(v) as i64 - 1)
                .collect(),
        };
        check_in_range(NAME, &timesteps, t)?;
        self.num_inference_steps = n;
        self.timesteps = timesteps.into_iter().map(|v| v as f64).collect();
        Ok(())
    }

    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    pub fn needs_noise(&self) -> bool {
        self.eta > 0.0
    }

    /// `x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * noise` at `t = timesteps()[step_index]`
    /// (`DDIMScheduler.add_noise`, which img2img calls with `timesteps[t_start]`).
    pub fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, step_index: usize) -> Tensor<4> {
        let t = self.timesteps[step_index] as i64;
        ddpm_add_noise(self.abar(t), original, noise)
    }

    fn abar(&self, t: i64) -> f32 {
        if t >= 0 {
            self.alphas_cumprod[t as usize]
        } else {
            self.final_alpha_cumprod
        }
    }

    /// One DDIM update from `timesteps()[step_index]` to the previous timestep, `t - T / n`
    /// (formulas (12) and (16) of the paper, in diffusers' order of operations). `noise` is
    /// required when `eta > 0`.
    pub fn step(
        &self,
        model_output: Tensor<4>,
        step_index: usize,
        sample: Tensor<4>,
        noise: Option<Tensor<4>>,
    ) -> Tensor<4> {
        assert!(
            step_index < self.timesteps.len(),
            "{NAME}: step {step_index} of {} (call set_timesteps first)",
            self.timesteps.len()
        );
        let (model_output, sample) = (to_f32(model_output), to_f32(sample));
        let t = self.timesteps[step_index] as i64;
        let prev_t = t - (self.num_train_timesteps / self.num_inference_steps) as i64;
        let alpha_prod_t = self.abar(t);
        let alpha_prod_t_prev = self.abar(prev_t);
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

        // _get_variance: sigma_t(eta)^2 / eta^2
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let variance = (beta_prod_t_prev / beta_prod_t) * (1.0 - alpha_prod_t / alpha_prod_t_prev);
        let std_dev_t = self.eta as f32 * variance.sqrt();

        let direction =
            pred_eps.mul_scalar((1.0 - alpha_prod_t_prev - std_dev_t * std_dev_t).sqrt());
        let prev_sample = pred_x0.mul_scalar(alpha_prod_t_prev.sqrt()) + direction;
        if self.eta > 0.0 {
            let noise = noise.unwrap_or_else(|| {
                panic!("{NAME} with eta > 0 needs the step's noise (see Sampler::needs_noise)")
            });
            prev_sample + to_f32(noise).mul_scalar(std_dev_t)
        } else {
            prev_sample
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> NoiseScheduleConfig {
        NoiseScheduleConfig::new()
            .with_beta_schedule(super::super::BetaSchedule::ScaledLinear)
            .with_beta_start(0.00085)
            .with_beta_end(0.012)
            .with_steps_offset(1)
            .with_set_alpha_to_one(Some(false))
            .with_clip_sample(Some(false))
    }

    #[test]
    fn timesteps_per_spacing() {
        let mut d = Ddim::new(&config(), 0.0).unwrap();
        d.set_timesteps(4).unwrap();
        assert_eq!(d.timesteps(), &[751.0, 501.0, 251.0, 1.0]);
        let mut d = Ddim::new(
            &config().with_timestep_spacing(Some(TimestepSpacing::Trailing)),
            0.0,
        )
        .unwrap();
        d.set_timesteps(4).unwrap();
        assert_eq!(d.timesteps(), &[999.0, 749.0, 499.0, 249.0]);
        let mut d = Ddim::new(
            &config().with_timestep_spacing(Some(TimestepSpacing::Linspace)),
            0.0,
        )
        .unwrap();
        d.set_timesteps(4).unwrap();
        assert_eq!(d.timesteps(), &[999.0, 666.0, 333.0, 0.0]);
        assert!(d.set_timesteps(1001).is_err());
        assert!(Ddim::new(&config(), -1.0).is_err());
    }

    #[test]
    fn perfect_epsilon_recovers_x0_at_the_last_step() {
        // With set_alpha_to_one the last step returns the predicted x0 itself.
        let device = Device::flex();
        let mut d = Ddim::new(&config().with_set_alpha_to_one(Some(true)), 0.0).unwrap();
        d.set_timesteps(10).unwrap();
        let x0 = Tensor::<4>::full([1, 1, 2, 2], 0.5, &device);
        let eps = Tensor::<4>::full([1, 1, 2, 2], -1.0, &device);
        let t = d.timesteps()[9] as usize;
        let ab = d.alphas_cumprod[t];
        let xt = x0.clone().mul_scalar(ab.sqrt()) + eps.clone().mul_scalar((1.0 - ab).sqrt());
        let out = d.step(eps, 9, xt, None);
        let diff = (out - x0).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-6, "{diff}");
    }

    #[test]
    #[should_panic(expected = "needs the step's noise")]
    fn eta_needs_noise() {
        let device = Device::flex();
        let mut d = Ddim::new(&config(), 1.0).unwrap();
        d.set_timesteps(2).unwrap();
        let x = Tensor::<4>::zeros([1, 1, 1, 1], &device);
        d.step(x.clone(), 0, x, None);
    }
}
