//! The noise schedule (betas, cumulative alpha products) of a [`NoiseScheduleConfig`] and the
//! DDPM forward process used by training (diffusers `schedulers/scheduling_ddpm.py`:
//! `add_noise`, `get_velocity`; `training_utils.py`: `compute_snr`).

use burn::prelude::*;

use super::numpy::{torch_cumprod_f32, torch_linspace_f32};
use super::schedule_config::{BetaSchedule, NoiseScheduleConfig, PredictionType};

impl NoiseScheduleConfig {
    /// The betas and cumulative alpha products of this config.
    pub fn init(&self) -> NoiseSchedule {
        let t = self.num_train_timesteps;
        let betas: Vec<f32> = match (&self.trained_betas, self.beta_schedule) {
            (Some(b), _) => b.iter().map(|&v| v as f32).collect(),
            (None, BetaSchedule::Linear) => torch_linspace_f32(self.beta_start, self.beta_end, t),
            // `torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=float32) ** 2`
            (None, BetaSchedule::ScaledLinear) => {
                torch_linspace_f32(self.beta_start.powf(0.5), self.beta_end.powf(0.5), t)
                    .into_iter()
                    .map(|b| b * b)
                    .collect()
            }
            (None, BetaSchedule::SquaredcosCapV2) => cosine_betas(t),
        };
        let alphas: Vec<f32> = betas.iter().map(|&b| 1.0 - b).collect();
        let alphas_cumprod = torch_cumprod_f32(&alphas);
        NoiseSchedule {
            config: self.clone(),
            betas,
            alphas_cumprod,
        }
    }
}

/// `betas_for_alpha_bar(T)` with the cosine transform (Python floats, then float32).
fn cosine_betas(t: usize) -> Vec<f32> {
    let alpha_bar = |x: f64| {
        ((x + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
            .cos()
            .powi(2)
    };
    (0..t)
        .map(|i| {
            let (t1, t2) = (i as f64 / t as f64, (i + 1) as f64 / t as f64);
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// Betas and `alphas_cumprod` (float32, as diffusers holds them) and the forward process.
#[derive(Debug, Clone)]
pub struct NoiseSchedule {
    pub config: NoiseScheduleConfig,
    pub betas: Vec<f32>,
    pub alphas_cumprod: Vec<f32>,
}

impl NoiseSchedule {
    pub fn num_train_timesteps(&self) -> usize {
        self.config.num_train_timesteps
    }

    pub fn prediction_type(&self) -> PredictionType {
        self.config.prediction_type
    }

    /// `sigma_t = sqrt((1 - abar_t) / abar_t)` for every training timestep, in float32 like
    /// diffusers' `((1 - alphas_cumprod) / alphas_cumprod) ** 0.5`.
    pub fn train_sigmas(&self) -> Vec<f32> {
        self.alphas_cumprod
            .iter()
            .map(|&a| ((1.0 - a) / a).sqrt())
            .collect()
    }

    fn abar(&self, t: usize) -> f32 {
        assert!(
            t < self.alphas_cumprod.len(),
            "timestep {t} out of range 0..{}",
            self.alphas_cumprod.len()
        );
        self.alphas_cumprod[t]
    }

    /// A `[b, 1, .., 1]` tensor of `f(abar_t)` per batch element, in `like`'s dtype.
    fn per_sample<const D: usize>(
        &self,
        timesteps: &[usize],
        like: &Tensor<D>,
        f: impl Fn(f32) -> f32,
    ) -> Tensor<D> {
        let b = like.dims()[0];
        assert_eq!(timesteps.len(), b, "one timestep per batch element");
        let values: Vec<f32> = timesteps.iter().map(|&t| f(self.abar(t))).collect();
        let mut shape = [1usize; D];
        shape[0] = b;
        Tensor::<1>::from_data(TensorData::new(values, [b]), &like.device())
            .reshape(shape)
            .cast(like.dtype())
    }

    /// `x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * noise`, one timestep per batch element
    /// (`DDPMScheduler.add_noise`).
    pub fn add_noise<const D: usize>(
        &self,
        x0: Tensor<D>,
        noise: Tensor<D>,
        timesteps: &[usize],
    ) -> Tensor<D> {
        let a = self.per_sample(timesteps, &x0, f32::sqrt);
        let s = self.per_sample(timesteps, &x0, |ab| (1.0 - ab).sqrt());
        a * x0 + s * noise
    }

    /// `v = sqrt(abar_t) * noise - sqrt(1 - abar_t) * x0` (`DDPMScheduler.get_velocity`).
    pub fn velocity<const D: usize>(
        &self,
        x0: Tensor<D>,
        noise: Tensor<D>,
        timesteps: &[usize],
    ) -> Tensor<D> {
        let a = self.per_sample(timesteps, &x0, f32::sqrt);
        let s = self.per_sample(timesteps, &x0, |ab| (1.0 - ab).sqrt());
        a * noise - s * x0
    }

    /// What the U-Net is trained to output for `x_t = add_noise(x0, noise, t)`: the noise, v,
    /// or x0, per `prediction_type` (diffusers' training scripts).
    pub fn target<const D: usize>(
        &self,
        x0: Tensor<D>,
        noise: Tensor<D>,
        timesteps: &[usize],
    ) -> Tensor<D> {
        match self.config.prediction_type {
            PredictionType::Epsilon => noise,
            PredictionType::VPrediction => self.velocity(x0, noise, timesteps),
            PredictionType::Sample => x0,
        }
    }

    /// Signal-to-noise ratio `(sqrt(abar_t) / sqrt(1 - abar_t))^2` (`training_utils.compute_snr`).
    pub fn snr(&self, timesteps: &[usize]) -> Vec<f32> {
        timesteps
            .iter()
            .map(|&t| {
                let ab = self.abar(t);
                let r = ab.sqrt() / (1.0 - ab).sqrt();
                r * r
            })
            .collect()
    }

    /// Min-SNR-gamma loss weights (Hang et al. 2023) as diffusers' `train_text_to_image.py`
    /// computes them: `min(snr, gamma)`, divided by `snr` for epsilon and by `snr + 1` for v.
    pub fn min_snr_weights(&self, timesteps: &[usize], gamma: f32) -> Vec<f32> {
        self.snr(timesteps)
            .into_iter()
            .map(|snr| {
                let w = snr.min(gamma);
                match self.config.prediction_type {
                    PredictionType::Epsilon => w / snr,
                    PredictionType::VPrediction => w / (snr + 1.0),
                    PredictionType::Sample => w,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd15() -> NoiseScheduleConfig {
        NoiseScheduleConfig::new()
            .with_beta_schedule(BetaSchedule::ScaledLinear)
            .with_beta_start(0.00085)
            .with_beta_end(0.012)
    }

    #[test]
    fn schedule_values() {
        let s = sd15().init();
        assert_eq!(s.betas.len(), 1000);
        assert!((s.betas[0] - 0.00085).abs() < 1e-9);
        assert!((s.betas[999] - 0.012).abs() < 1e-8);
        // diffusers: alphas_cumprod[999] = 0.00466009508818388 (float32)
        assert_eq!(s.alphas_cumprod[999], 0.004_660_095_f32);
        let sig = s.train_sigmas();
        assert!((sig[999] - 14.614_647).abs() < 1e-5);
        let cos = NoiseScheduleConfig::new()
            .with_beta_schedule(BetaSchedule::SquaredcosCapV2)
            .init();
        assert!(cos.betas[999] <= 0.999 && cos.betas[0] > 0.0);
    }

    #[test]
    fn forward_process() {
        let device = Device::flex();
        let s = NoiseScheduleConfig::new()
            .with_prediction_type(PredictionType::VPrediction)
            .init();
        let x0 = Tensor::<2>::ones([2, 3], &device);
        let noise = Tensor::<2>::zeros([2, 3], &device);
        let ts = [0, 999];
        let xt = s.add_noise(x0.clone(), noise.clone(), &ts);
        let v: Vec<f32> = xt.into_data().try_into_vec().unwrap();
        assert!((v[0] - s.alphas_cumprod[0].sqrt()).abs() < 1e-7);
        assert!((v[5] - s.alphas_cumprod[999].sqrt()).abs() < 1e-7);
        let target: Vec<f32> = s.target(x0, noise, &ts).into_data().try_into_vec().unwrap();
        assert!((target[3] + (1.0 - s.alphas_cumprod[999]).sqrt()).abs() < 1e-7);
        let snr = s.snr(&ts);
        assert!(snr[0] > snr[1]);
        let w = s.min_snr_weights(&ts, 5.0);
        assert!((w[0] - 5.0 / (snr[0] + 1.0)).abs() < 1e-6);
        assert!((w[1] - snr[1] / (snr[1] + 1.0)).abs() < 1e-6);
    }
}
