//! PNDM (Liu et al. 2022), diffusers `PNDMScheduler` (schedulers/scheduling_pndm.py). With
//! `skip_prk_steps` (SD 1.x's config) it is PLMS, the linear multistep method of the latent
//! diffusion repository: one model call per step plus one extra call at the start, hence
//! `n + 1` timesteps with the second one repeated. Without it, 12 Runge-Kutta calls warm up
//! the multistep history first (F-PNDM).

use burn::prelude::*;

use super::numpy::{np_arange, np_linspace, np_round};
use super::schedule_config::{NoiseScheduleConfig, PredictionType, TimestepSpacing};
use super::{
    SchedulerError, check_in_range, check_step_index, check_steps, ddpm_add_noise, to_f32,
};

const NAME: &str = "PNDM";

#[derive(Debug, Clone)]
pub struct Pndm {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    num_train_timesteps: usize,
    v_prediction: bool,
    spacing: TimestepSpacing,
    steps_offset: usize,
    skip_prk_steps: bool,
    num_inference_steps: usize,
    prk_timesteps: Vec<i64>,
    timesteps: Vec<f64>,
    /// The first step that runs (img2img starts part-way, see [`Pndm::set_begin_index`]).
    begin_index: usize,
    // running values (reset by set_timesteps)
    counter: usize,
    ets: Vec<Tensor<4>>,
    cur_sample: Option<Tensor<4>>,
    cur_model_output: Option<Tensor<4>>,
}

impl Pndm {
    /// PNDM with `PNDMScheduler`'s class defaults (`set_alpha_to_one` false, `leading`).
    /// Refuses `prediction_type = "sample"`, as diffusers does.
    pub fn new(config: &NoiseScheduleConfig) -> Result<Self, SchedulerError> {
        let v_prediction = match config.prediction_type {
            PredictionType::Epsilon => false,
            PredictionType::VPrediction => true,
            PredictionType::Sample => {
                return Err(SchedulerError::Sampler {
                    sampler: NAME,
                    message: "prediction_type \"sample\" is not supported (diffusers' PNDMScheduler takes epsilon or v_prediction)".into(),
                });
            }
        };
        let alphas_cumprod = config.init().alphas_cumprod;
        let final_alpha_cumprod = if config.set_alpha_to_one.unwrap_or(false) {
            1.0
        } else {
            alphas_cumprod[0]
        };
        Ok(Self {
            final_alpha_cumprod,
            alphas_cumprod,
            num_train_timesteps: config.num_train_timesteps,
            v_prediction,
            spacing: config.timestep_spacing.unwrap_or(TimestepSpacing::Leading),
            steps_offset: config.steps_offset,
            skip_prk_steps: config.skip_prk_steps,
            num_inference_steps: 0,
            prk_timesteps: Vec::new(),
            timesteps: Vec::new(),
            begin_index: 0,
            counter: 0,
            ets: Vec::new(),
            cur_sample: None,
            cur_model_output: None,
        })
    }

    pub fn set_timesteps(&mut self, n: usize) -> Result<(), SchedulerError> {
        check_steps(NAME, n, self.num_train_timesteps)?;
        let t = self.num_train_timesteps;
        // ascending `_timesteps`
        let base: Vec<i64> = match self.spacing {
            TimestepSpacing::Linspace => np_linspace(0.0, (t - 1) as f64, n)
                .into_iter()
                .map(|v| np_round(v) as i64)
                .collect(),
            TimestepSpacing::Leading => (0..n)
                .map(|i| (i * (t / n) + self.steps_offset) as i64)
                .collect(),
            TimestepSpacing::Trailing => np_arange(t as f64, 0.0, -(t as f64 / n as f64))
                .into_iter()
                .rev()
                .map(|v| np_round(v) as i64 - 1)
                .collect(),
        };
        let (prk, plms): (Vec<i64>, Vec<i64>) = if self.skip_prk_steps {
            // concat(_ts[:-1], _ts[-2:-1], _ts[-1:])[::-1]: the second-to-last one twice
            let mut plms = base[..n - 1].to_vec();
            if n >= 2 {
                plms.push(base[n - 2]);
            }
            plms.push(base[n - 1]);
            plms.reverse();
            (Vec::new(), plms)
        } else {
            if n < 4 {
                return Err(SchedulerError::Sampler {
                    sampler: NAME,
                    message: format!(
                        "the Runge-Kutta warm-up (skip_prk_steps false) needs at least 4 steps, got {n}"
                    ),
                });
            }
            // (ts[-4:].repeat(2) + tile([0, T // n // 2], 4))[:-1].repeat(2)[1:-1][::-1]
            let half = (t / n / 2) as i64;
            let pairs: Vec<i64> = base[n - 4..].iter().flat_map(|&v| [v, v + half]).collect();
            let mut prk: Vec<i64> = pairs[..7].iter().flat_map(|&v| [v, v]).collect();
            prk = prk[1..prk.len() - 1].to_vec();
            prk.reverse();
            let plms: Vec<i64> = base[..n - 3].iter().rev().copied().collect();
            (prk, plms)
        };
        let all: Vec<i64> = prk.iter().chain(&plms).copied().collect();
        check_in_range(NAME, &all, t)?;
        self.num_inference_steps = n;
        self.prk_timesteps = prk;
        self.timesteps = all.into_iter().map(|v| v as f64).collect();
        self.begin_index = 0;
        self.counter = 0;
        self.ets.clear();
        self.cur_sample = None;
        self.cur_model_output = None;
        Ok(())
    }

    /// The timesteps to call the model at: `n + 1` with `skip_prk_steps`, `n + 9` without.
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// Runs the steps from `begin_index` on (img2img). diffusers' `PNDMScheduler` has no
    /// `set_begin_index`: the pipeline just loops over `timesteps[t_start:]` while the scheduler's
    /// `counter` starts at 0, so the first step run is PLMS's first (Euler-like) step and the
    /// second one its averaging redo, whatever timesteps they land on. Same here.
    pub fn set_begin_index(&mut self, begin_index: usize) {
        assert!(
            begin_index < self.timesteps.len(),
            "{NAME}: begin index {begin_index} of {} steps (call set_timesteps first)",
            self.timesteps.len()
        );
        self.begin_index = begin_index;
    }

    /// `x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * noise` at `t = timesteps()[step_index]`
    /// (`PNDMScheduler.add_noise`).
    pub fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, step_index: usize) -> Tensor<4> {
        let t = self.timesteps[step_index] as usize;
        ddpm_add_noise(self.alphas_cumprod[t], original, noise)
    }

    /// One PLMS (or Runge-Kutta) update. Steps must run in order from the begin index: the
    /// sampler keeps the previous model outputs.
    pub fn step(
        &mut self,
        model_output: Tensor<4>,
        step_index: usize,
        sample: Tensor<4>,
    ) -> Tensor<4> {
        check_step_index(
            NAME,
            self.begin_index + self.counter,
            step_index,
            self.timesteps.len(),
        );
        let (model_output, sample) = (to_f32(model_output), to_f32(sample));
        let timestep = self.timesteps[step_index] as i64;
        let out = if self.counter < self.prk_timesteps.len() && !self.skip_prk_steps {
            self.step_prk(model_output, timestep, sample)
        } else {
            self.step_plms(model_output, timestep, sample)
        };
        self.counter += 1;
        out
    }

    fn ratio(&self) -> i64 {
        (self.num_train_timesteps / self.num_inference_steps) as i64
    }

    fn step_prk(&mut self, model_output: Tensor<4>, timestep: i64, sample: Tensor<4>) -> Tensor<4> {
        let diff_to_prev = if self.counter % 2 == 1 {
            0
        } else {
            self.ratio() / 2
        };
        let prev_timestep = timestep - diff_to_prev;
        let timestep = self.prk_timesteps[self.counter / 4 * 4];
        let third = (1.0f64 / 3.0) as f32;
        let sixth = (1.0f64 / 6.0) as f32;
        let model_output = match self.counter % 4 {
            0 => {
                self.cur_model_output = Some(model_output.clone().mul_scalar(sixth));
                self.ets.push(model_output.clone());
                self.cur_sample = Some(sample.clone());
                model_output
            }
            1 | 2 => {
                let acc = self
                    .cur_model_output
                    .take()
                    .expect("set at counter % 4 == 0");
                self.cur_model_output = Some(acc + model_output.clone().mul_scalar(third));
                model_output
            }
            _ => {
                let acc = self
                    .cur_model_output
                    .take()
                    .expect("set at counter % 4 == 0");
                acc + model_output.mul_scalar(sixth)
            }
        };
        let cur_sample = self.cur_sample.clone().unwrap_or(sample);
        self.prev_sample(cur_sample, timestep, prev_timestep, model_output)
    }

    fn step_plms(
        &mut self,
        model_output: Tensor<4>,
        timestep: i64,
        sample: Tensor<4>,
    ) -> Tensor<4> {
        let (mut timestep, mut prev_timestep) = (timestep, timestep - self.ratio());
        if self.counter != 1 {
            if self.ets.len() > 3 {
                self.ets.drain(..self.ets.len() - 3);
            }
            self.ets.push(model_output.clone());
        } else {
            // the extra call: redo the first step with the average of both model outputs
            prev_timestep = timestep;
            timestep += self.ratio();
        }
        let e = |k: usize| self.ets[self.ets.len() - k].clone();
        let mut sample = sample;
        let model_output = match (self.ets.len(), self.counter) {
            (1, 0) => {
                self.cur_sample = Some(sample.clone());
                model_output
            }
            (1, 1) => {
                sample = self.cur_sample.take().expect("set at step 0");
                (model_output + e(1)).div_scalar(2.0)
            }
            (2, _) => (e(1).mul_scalar(3.0) - e(2)).div_scalar(2.0),
            (3, _) => (e(1).mul_scalar(23.0) - e(2).mul_scalar(16.0) + e(3).mul_scalar(5.0))
                .div_scalar(12.0),
            _ => (e(1).mul_scalar(55.0) - e(2).mul_scalar(59.0) + e(3).mul_scalar(37.0)
                - e(4).mul_scalar(9.0))
            .mul_scalar((1.0f64 / 24.0) as f32),
        };
        self.prev_sample(sample, timestep, prev_timestep, model_output)
    }

    /// `_get_prev_sample`: x_{t - delta} from x_t and epsilon, formula (9) of the PNDM paper.
    fn prev_sample(
        &self,
        sample: Tensor<4>,
        timestep: i64,
        prev_timestep: i64,
        model_output: Tensor<4>,
    ) -> Tensor<4> {
        let alpha_prod_t = self.alphas_cumprod[timestep as usize];
        let alpha_prod_t_prev = if prev_timestep >= 0 {
            self.alphas_cumprod[prev_timestep as usize]
        } else {
            self.final_alpha_cumprod
        };
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let model_output = if self.v_prediction {
            model_output.mul_scalar(alpha_prod_t.sqrt())
                + sample.clone().mul_scalar(beta_prod_t.sqrt())
        } else {
            model_output
        };
        let sample_coeff = (alpha_prod_t_prev / alpha_prod_t).sqrt();
        let denom = alpha_prod_t * beta_prod_t_prev.sqrt()
            + (alpha_prod_t * beta_prod_t * alpha_prod_t_prev).sqrt();
        sample.mul_scalar(sample_coeff)
            - model_output
                .mul_scalar(alpha_prod_t_prev - alpha_prod_t)
                .div_scalar(denom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedulers::BetaSchedule;

    fn config(skip_prk: bool) -> NoiseScheduleConfig {
        NoiseScheduleConfig::new()
            .with_beta_schedule(BetaSchedule::ScaledLinear)
            .with_beta_start(0.00085)
            .with_beta_end(0.012)
            .with_steps_offset(1)
            .with_skip_prk_steps(skip_prk)
    }

    #[test]
    fn plms_timesteps_repeat_the_second() {
        let mut p = Pndm::new(&config(true)).unwrap();
        p.set_timesteps(4).unwrap();
        assert_eq!(p.timesteps(), &[751.0, 501.0, 501.0, 251.0, 1.0]);
        p.set_timesteps(1).unwrap();
        assert_eq!(p.timesteps(), &[1.0]);
    }

    #[test]
    fn prk_timesteps() {
        let mut p = Pndm::new(&config(false)).unwrap();
        p.set_timesteps(10).unwrap();
        let expected = [
            901, 851, 851, 801, 801, 751, 751, 701, 701, 651, 651, 601, 601, 501, 401, 301, 201,
            101, 1,
        ];
        let got: Vec<i64> = p.timesteps().iter().map(|&t| t as i64).collect();
        assert_eq!(got, expected);
        assert!(p.set_timesteps(3).is_err());
    }

    #[test]
    fn refuses_sample_prediction() {
        let c = config(true).with_prediction_type(PredictionType::Sample);
        assert!(Pndm::new(&c).is_err());
    }

    #[test]
    #[should_panic(expected = "expected step 0")]
    fn steps_must_run_in_order() {
        let device = Device::flex();
        let mut p = Pndm::new(&config(true)).unwrap();
        p.set_timesteps(3).unwrap();
        let x = Tensor::<4>::zeros([1, 1, 1, 1], &device);
        p.step(x.clone(), 1, x);
    }
}
