//! Sigma schedules shared by the samplers that work in sigma = sqrt((1 - abar) / abar) space
//! (Euler, Euler ancestral, DPM-Solver): float timesteps, interpolation of the training sigmas,
//! Karras et al. sigmas and the inverse map sigma -> timestep (diffusers
//! `scheduling_euler_discrete.py`, `_convert_to_karras`, `_sigma_to_t`).

use super::numpy::{np_arange, np_interp_grid, np_linspace, np_round};
use super::schedule_config::TimestepSpacing;

/// The float32 timesteps of `EulerDiscreteScheduler.set_timesteps` (and Euler ancestral),
/// highest first.
pub(crate) fn euler_timesteps(
    spacing: TimestepSpacing,
    n: usize,
    num_train_timesteps: usize,
    steps_offset: usize,
) -> Vec<f32> {
    let t = num_train_timesteps;
    match spacing {
        // np.linspace(0, T - 1, n, dtype=np.float32)[::-1]
        TimestepSpacing::Linspace => np_linspace(0.0, (t - 1) as f64, n)
            .into_iter()
            .rev()
            .map(|v| v as f32)
            .collect(),
        // (np.arange(0, n) * (T // n)).round()[::-1].astype(np.float32) + steps_offset
        TimestepSpacing::Leading => {
            let ratio = t / n;
            (0..n)
                .rev()
                .map(|i| (i * ratio) as f32 + steps_offset as f32)
                .collect()
        }
        // np.arange(T, 0, -T / n).round().astype(np.float32) - 1
        TimestepSpacing::Trailing => np_arange(t as f64, 0.0, -(t as f64 / n as f64))
            .into_iter()
            .map(|v| np_round(v) as f32 - 1.0)
            .collect(),
    }
}

/// `np.interp(timesteps, np.arange(T), train_sigmas)`: the training sigmas at (float)
/// timesteps, in float64.
pub(crate) fn interp_sigmas(timesteps: &[f64], train_sigmas: &[f32]) -> Vec<f64> {
    let fp: Vec<f64> = train_sigmas.iter().map(|&s| s as f64).collect();
    timesteps.iter().map(|&t| np_interp_grid(t, &fp)).collect()
}

/// `np.log` of the float32 training sigmas (kept in float32, like numpy).
pub(crate) fn log_sigmas(train_sigmas: &[f32]) -> Vec<f32> {
    train_sigmas.iter().map(|s| s.ln()).collect()
}

/// `_sigma_to_t`: the fractional timestep whose log-sigma is `ln(sigma)`, by linear
/// interpolation between the two neighbouring training log-sigmas (clamped to the ends).
pub(crate) fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    // np.cumsum(dists >= 0).argmax(): the last index whose log-sigma is <= log_sigma (0 if none)
    let low_idx = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - l as f64 >= 0.0)
        .unwrap_or(0)
        .min(n - 2);
    let high_idx = low_idx + 1;
    let low = log_sigmas[low_idx] as f64;
    let high = log_sigmas[high_idx] as f64;
    let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

/// `_convert_to_karras`: `n` sigmas from `sigma_max` down to `sigma_min`, evenly spaced in
/// `sigma^(1/7)` (Karras et al. 2022, rho = 7).
pub(crate) fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0;
    let min_inv_rho = sigma_min.powf(1.0 / rho);
    let max_inv_rho = sigma_max.powf(1.0 / rho);
    np_linspace(0.0, 1.0, n)
        .into_iter()
        .map(|r| (max_inv_rho + r * (min_inv_rho - max_inv_rho)).powf(rho))
        .collect()
}

/// `init_noise_sigma` of Euler and Euler ancestral: the largest sigma, or `sqrt(max^2 + 1)`
/// with `leading` spacing (whose first timestep is below T - 1).
pub(crate) fn euler_init_noise_sigma(sigmas: &[f32], spacing: TimestepSpacing) -> f32 {
    let max = sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    match spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
        TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
    }
}

/// `sample / sqrt(sigma^2 + 1)`'s divisor: the Euler-family `scale_model_input`.
pub(crate) fn input_scale(sigma: f32) -> f32 {
    (sigma * sigma + 1.0).sqrt()
}

/// `x0` predicted by a v-prediction model in sigma space (Euler, Euler ancestral):
/// `v * (-sigma / sqrt(sigma^2 + 1)) + sample / (sigma^2 + 1)`.
pub(crate) fn v_to_x0(
    model_output: burn::Tensor<4>,
    sample: burn::Tensor<4>,
    sigma: f32,
) -> burn::Tensor<4> {
    let s2 = sigma * sigma + 1.0;
    model_output.mul_scalar(-sigma / s2.sqrt()) + sample.div_scalar(s2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn euler_timesteps_per_spacing() {
        let lin = euler_timesteps(TimestepSpacing::Linspace, 4, 1000, 1);
        assert_eq!(lin, vec![999.0, 666.0, 333.0, 0.0]);
        let lead = euler_timesteps(TimestepSpacing::Leading, 4, 1000, 1);
        assert_eq!(lead, vec![751.0, 501.0, 251.0, 1.0]);
        let trail = euler_timesteps(TimestepSpacing::Trailing, 4, 1000, 1);
        assert_eq!(trail, vec![999.0, 749.0, 499.0, 249.0]);
    }

    #[test]
    fn sigma_to_t_inverts_the_table() {
        let sig: Vec<f32> = (0..10).map(|i| 0.1 + i as f32).collect();
        let logs = log_sigmas(&sig);
        assert!((sigma_to_t(sig[3] as f64, &logs) - 3.0).abs() < 1e-6);
        assert_eq!(sigma_to_t(1e-3, &logs), 0.0);
        assert_eq!(sigma_to_t(1e3, &logs), 9.0);
        let mid = ((logs[4] as f64 + logs[5] as f64) / 2.0).exp();
        assert!((sigma_to_t(mid, &logs) - 4.5).abs() < 1e-6);
    }

    #[test]
    fn karras_ends() {
        let k = karras_sigmas(0.03, 14.6, 5);
        assert!((k[0] - 14.6).abs() < 1e-12 && (k[4] - 0.03).abs() < 1e-12);
        assert!(k.windows(2).all(|w| w[0] > w[1]));
    }
}
