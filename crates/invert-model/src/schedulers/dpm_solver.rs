//! DPM-Solver++ 2M (Lu et al. 2022), diffusers `DPMSolverMultistepScheduler` with
//! `algorithm_type="dpmsolver++"` and `solver_order=2` (schedulers/scheduling_dpmsolver_multistep.py):
//! a second-order multistep solver on the data prediction x0, in log-SNR time lambda. The first
//! step, and the last one when `final_sigmas_type` is `zero` (or with `lower_order_final` and
//! fewer than 15 steps, or `euler_at_final`), are first order. A config's own `algorithm_type`
//! and `solver_order` are not read: this sampler is dpmsolver++ of order 2 by definition.

use burn::prelude::*;

use super::numpy::{np_arange, np_interp_grid, np_linspace, np_round};
use super::schedule_config::{
    BetaSchedule, FinalSigmas, NoiseScheduleConfig, PredictionType, SolverType, TimestepSpacing,
};
use super::sigmas::{karras_sigmas, log_sigmas, sigma_to_t};
use super::{SchedulerError, check_step_index, check_steps, to_f32};

const NAME: &str = "DPM-Solver++ 2M";

#[derive(Debug, Clone)]
pub struct DpmSolverMultistep {
    alphas_cumprod: Vec<f32>,
    train_sigmas: Vec<f32>,
    num_train_timesteps: usize,
    beta_schedule: BetaSchedule,
    prediction: PredictionType,
    spacing: TimestepSpacing,
    steps_offset: usize,
    karras: bool,
    sigma_min: Option<f64>,
    sigma_max: Option<f64>,
    final_sigmas: FinalSigmas,
    lower_order_final: bool,
    euler_at_final: bool,
    solver_type: SolverType,
    lambda_min_clipped: f64,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    // running values (reset by set_timesteps)
    step_index: usize,
    prev_x0: Option<Tensor<4>>,
    lower_order_nums: usize,
}

impl DpmSolverMultistep {
    /// DPM-Solver++ 2M with the class defaults (`linspace` spacing, `lower_order_final`);
    /// `karras` switches to Karras sigmas (as does `use_karras_sigmas` in the config).
    pub fn new(config: &NoiseScheduleConfig, karras: bool) -> Result<Self, SchedulerError> {
        let schedule = config.init();
        Ok(Self {
            train_sigmas: schedule.train_sigmas(),
            alphas_cumprod: schedule.alphas_cumprod,
            num_train_timesteps: config.num_train_timesteps,
            beta_schedule: config.beta_schedule,
            prediction: config.prediction_type,
            spacing: config.timestep_spacing.unwrap_or(TimestepSpacing::Linspace),
            steps_offset: config.steps_offset,
            karras: karras || config.use_karras_sigmas,
            sigma_min: config.sigma_min,
            sigma_max: config.sigma_max,
            final_sigmas: config.final_sigmas_type,
            lower_order_final: config.lower_order_final,
            euler_at_final: config.euler_at_final,
            solver_type: config.solver_type,
            lambda_min_clipped: config.lambda_min_clipped.unwrap_or(f64::NEG_INFINITY),
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            step_index: 0,
            prev_x0: None,
            lower_order_nums: 0,
        })
    }

    pub fn set_timesteps(&mut self, n: usize) -> Result<(), SchedulerError> {
        let t = self.num_train_timesteps;
        check_steps(NAME, n, t)?;
        // the timesteps whose lambda = log(alpha_t) - log(sigma_t) is below lambda_min_clipped
        // are dropped: searchsorted(flip(lambda_t), lambda_min_clipped)
        let clipped = self
            .alphas_cumprod
            .iter()
            .rev()
            .map(|&a| a.sqrt().ln() - (1.0 - a).sqrt().ln())
            .take_while(|&l| (l as f64) < self.lambda_min_clipped)
            .count();
        let last = t - clipped;
        let mut timesteps: Vec<f64> = match self.spacing {
            // np.linspace(0, last - 1, n + 1).round()[::-1][:-1]
            TimestepSpacing::Linspace => {
                let mut v: Vec<f64> = np_linspace(0.0, (last - 1) as f64, n + 1)
                    .into_iter()
                    .rev()
                    .map(np_round)
                    .collect();
                v.pop();
                v
            }
            // (np.arange(0, n + 1) * (last // (n + 1))).round()[::-1][:-1] + steps_offset
            TimestepSpacing::Leading => {
                let ratio = last / (n + 1);
                (1..=n)
                    .rev()
                    .map(|i| (i * ratio + self.steps_offset) as f64)
                    .collect()
            }
            // np.arange(last, 0, -T / n).round() - 1
            TimestepSpacing::Trailing => np_arange(last as f64, 0.0, -(t as f64 / n as f64))
                .into_iter()
                .map(|v| np_round(v) - 1.0)
                .collect(),
        };
        let mut sigmas: Vec<f64> = if self.karras {
            // Karras sigmas over the whole training range, mapped back to (rounded) timesteps
            let sigma_min = self.sigma_min.unwrap_or(self.train_sigmas[0] as f64);
            let sigma_max = self.sigma_max.unwrap_or(self.train_sigmas[t - 1] as f64);
            let sigmas = karras_sigmas(sigma_min, sigma_max, n);
            let logs = log_sigmas(&self.train_sigmas);
            timesteps = sigmas.iter().map(|&s| sigma_to_t(s, &logs)).collect();
            if self.beta_schedule != BetaSchedule::SquaredcosCapV2 {
                timesteps = timesteps.into_iter().map(np_round).collect();
            }
            sigmas
        } else {
            let fp: Vec<f64> = self.train_sigmas.iter().map(|&s| s as f64).collect();
            timesteps
                .iter()
                .map(|&ts| np_interp_grid(ts, &fp))
                .collect()
        };
        sigmas.push(match self.final_sigmas {
            FinalSigmas::Zero => 0.0,
            FinalSigmas::SigmaMin => self.train_sigmas[0] as f64,
        });
        // `torch.from_numpy(timesteps).to(torch.int64)` truncates
        self.timesteps = timesteps.into_iter().map(|v| v.trunc()).collect();
        self.sigmas = sigmas.into_iter().map(|s| s as f32).collect();
        self.step_index = 0;
        self.prev_x0 = None;
        self.lower_order_nums = 0;
        Ok(())
    }

    /// Integer timesteps, highest first.
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// One sigma per timestep plus the final one (0 or sigma_min).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// `(alpha_t, sigma_t)` of the variance-preserving process at `sigma`:
    /// `alpha_t = 1 / sqrt(sigma^2 + 1)`, `sigma_t = sigma * alpha_t`.
    fn alpha_sigma(sigma: f32) -> (f32, f32) {
        let alpha_t = 1.0 / (sigma * sigma + 1.0).sqrt();
        (alpha_t, sigma * alpha_t)
    }

    fn lambda(alpha_t: f32, sigma_t: f32) -> f32 {
        alpha_t.ln() - sigma_t.ln()
    }

    /// `convert_model_output`: the model's x0 prediction.
    fn data_prediction(&self, model_output: Tensor<4>, sample: Tensor<4>, sigma: f32) -> Tensor<4> {
        let (alpha_t, sigma_t) = Self::alpha_sigma(sigma);
        match self.prediction {
            PredictionType::Epsilon => {
                (sample - model_output.mul_scalar(sigma_t)).div_scalar(alpha_t)
            }
            PredictionType::Sample => model_output,
            PredictionType::VPrediction => {
                sample.mul_scalar(alpha_t) - model_output.mul_scalar(sigma_t)
            }
        }
    }

    /// Starts the solver at step `begin_index` (`set_begin_index`: img2img skips the first
    /// `t_start` steps). The first step run is first order, as diffusers' `lower_order_nums`
    /// count starts at 0 whatever the begin index.
    pub fn set_begin_index(&mut self, begin_index: usize) {
        assert!(
            begin_index < self.timesteps.len(),
            "{NAME}: begin index {begin_index} of {} steps (call set_timesteps first)",
            self.timesteps.len()
        );
        self.step_index = begin_index;
    }

    /// `alpha_t * x0 + sigma_t * noise` at the sigma of step `step_index`
    /// (`DPMSolverMultistepScheduler.add_noise` before the first step: img2img).
    pub fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, step_index: usize) -> Tensor<4> {
        let (alpha_t, sigma_t) = Self::alpha_sigma(self.sigmas[step_index]);
        to_f32(original).mul_scalar(alpha_t) + to_f32(noise).mul_scalar(sigma_t)
    }

    /// One solver step from `timesteps()[step_index]` to the next. Steps must run in order:
    /// the sampler keeps the previous x0 prediction.
    pub fn step(
        &mut self,
        model_output: Tensor<4>,
        step_index: usize,
        sample: Tensor<4>,
    ) -> Tensor<4> {
        let len = self.timesteps.len();
        check_step_index(NAME, self.step_index, step_index, len);
        let (model_output, sample) = (to_f32(model_output), to_f32(sample));
        let i = step_index;
        let lower_order_final = i == len - 1
            && (self.euler_at_final
                || (self.lower_order_final && len < 15)
                || self.final_sigmas == FinalSigmas::Zero);
        let x0 = self.data_prediction(model_output, sample.clone(), self.sigmas[i]);
        let prev_x0 = self.prev_x0.replace(x0.clone());

        let (alpha_t, sigma_t) = Self::alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s0, sigma_s0) = Self::alpha_sigma(self.sigmas[i]);
        let lambda_t = Self::lambda(alpha_t, sigma_t);
        let lambda_s0 = Self::lambda(alpha_s0, sigma_s0);
        let h = lambda_t - lambda_s0;
        let phi = alpha_t * ((-h).exp() - 1.0);
        let out = match prev_x0 {
            Some(m1) if self.lower_order_nums >= 1 && !lower_order_final => {
                // multistep_dpm_solver_second_order_update
                let (alpha_s1, sigma_s1) = Self::alpha_sigma(self.sigmas[i - 1]);
                let lambda_s1 = Self::lambda(alpha_s1, sigma_s1);
                let h_0 = lambda_s0 - lambda_s1;
                let r0 = h_0 / h;
                let d1 = (x0.clone() - m1).mul_scalar(1.0 / r0);
                let base = sample.mul_scalar(sigma_t / sigma_s0) - x0.mul_scalar(phi);
                match self.solver_type {
                    SolverType::Midpoint => base - d1.mul_scalar(0.5 * phi),
                    SolverType::Heun => {
                        base + d1.mul_scalar(alpha_t * (((-h).exp() - 1.0) / h + 1.0))
                    }
                }
            }
            // dpm_solver_first_order_update (DDIM in lambda time)
            _ => sample.mul_scalar(sigma_t / sigma_s0) - x0.mul_scalar(phi),
        };
        if self.lower_order_nums < 2 {
            self.lower_order_nums += 1;
        }
        self.step_index += 1;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> NoiseScheduleConfig {
        NoiseScheduleConfig::new()
            .with_beta_schedule(BetaSchedule::ScaledLinear)
            .with_beta_start(0.00085)
            .with_beta_end(0.012)
            .with_steps_offset(1)
    }

    #[test]
    fn timesteps() {
        let mut d = DpmSolverMultistep::new(&config(), false).unwrap();
        d.set_timesteps(10).unwrap();
        let expected = [999., 899., 799., 699., 599., 500., 400., 300., 200., 100.];
        assert_eq!(d.timesteps(), &expected);
        assert_eq!(d.sigmas().len(), 11);
        let mut lead = DpmSolverMultistep::new(
            &config().with_timestep_spacing(Some(TimestepSpacing::Leading)),
            false,
        )
        .unwrap();
        lead.set_timesteps(10).unwrap();
        assert_eq!(lead.timesteps()[0], 901.0);
        assert_eq!(lead.timesteps()[9], 91.0);
        let mut k = DpmSolverMultistep::new(&config(), true).unwrap();
        k.set_timesteps(10).unwrap();
        let expected = [999., 916., 815., 687., 523., 327., 146., 41., 7., 0.];
        assert_eq!(k.timesteps(), &expected);
    }

    #[test]
    fn final_step_with_zero_sigma_returns_x0() {
        let device = Device::flex();
        let mut d = DpmSolverMultistep::new(&config(), false).unwrap();
        d.set_timesteps(2).unwrap();
        let x = Tensor::<4>::full([1, 1, 1, 2], 0.3, &device);
        let eps = Tensor::<4>::full([1, 1, 1, 2], 0.1, &device);
        let x1 = d.step(eps.clone(), 0, x);
        let (alpha, sigma) = DpmSolverMultistep::alpha_sigma(d.sigmas()[1]);
        let x0 = (x1.clone() - eps.clone().mul_scalar(sigma)).div_scalar(alpha);
        let out = d.step(eps, 1, x1);
        assert!((out - x0).abs().max().into_scalar::<f32>() < 1e-6);
    }
}
