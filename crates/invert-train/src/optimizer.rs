//! The optimiser of the learned vectors. Only v* is trained, so its state is a few thousand
//! floats kept on the host: exact, cheap, and saved whole in resumable checkpoints.
//! AdamW follows `torch.optim.AdamW` (decoupled weight decay applied before the Adam update,
//! bias-corrected moments); SGD is plain gradient descent with optional momentum.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    AdamW,
    Sgd,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimizerConfig {
    pub kind: OptimizerKind,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// torch's AdamW default, which the paper's code (rinongal/textual_inversion) keeps.
    pub weight_decay: f64,
    /// SGD momentum.
    pub momentum: f64,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            kind: OptimizerKind::AdamW,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
            momentum: 0.0,
        }
    }
}

/// Moments and step count; serialised in checkpoints.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OptimizerState {
    pub step: u64,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

impl OptimizerConfig {
    /// One update of `params` with gradient `grad` at learning rate `lr`.
    pub fn step(&self, state: &mut OptimizerState, params: &mut [f32], grad: &[f32], lr: f64) {
        if state.m.len() != params.len() {
            state.m = vec![0.0; params.len()];
            state.v = vec![0.0; params.len()];
        }
        state.step += 1;
        match self.kind {
            OptimizerKind::AdamW => {
                let t = state.step as i32;
                let bc1 = 1.0 - self.beta1.powi(t);
                let bc2 = 1.0 - self.beta2.powi(t);
                for i in 0..params.len() {
                    let g = grad[i] as f64;
                    let mut p = params[i] as f64;
                    p *= 1.0 - lr * self.weight_decay;
                    let m = self.beta1 * state.m[i] as f64 + (1.0 - self.beta1) * g;
                    let v = self.beta2 * state.v[i] as f64 + (1.0 - self.beta2) * g * g;
                    state.m[i] = m as f32;
                    state.v[i] = v as f32;
                    let denom = (v / bc2).sqrt() + self.eps;
                    p -= lr * (m / bc1) / denom;
                    params[i] = p as f32;
                }
            }
            OptimizerKind::Sgd => {
                for i in 0..params.len() {
                    let mut g = grad[i] as f64 + self.weight_decay * params[i] as f64;
                    if self.momentum > 0.0 {
                        let b = if state.step == 1 {
                            g
                        } else {
                            self.momentum * state.m[i] as f64 + g
                        };
                        state.m[i] = b as f32;
                        g = b;
                    }
                    params[i] = (params[i] as f64 - lr * g) as f32;
                }
            }
        }
    }
}

/// Scales `grad` so its L2 norm is at most `max_norm` (torch's `clip_grad_norm_`); returns the
/// norm before clipping.
pub fn clip_grad_norm(grad: &mut [f32], max_norm: f64) -> f64 {
    let norm = grad
        .iter()
        .map(|&g| (g as f64) * (g as f64))
        .sum::<f64>()
        .sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let scale = (max_norm / (norm + 1e-6)) as f32;
        grad.iter_mut().for_each(|g| *g *= scale);
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adamw_first_step_moves_by_lr_against_the_gradient_sign() {
        // With bias correction, step 1 of Adam moves each weight by lr * sign(g) (|g| >> eps).
        let cfg = OptimizerConfig {
            weight_decay: 0.0,
            ..Default::default()
        };
        let mut state = OptimizerState::default();
        let mut p = vec![1.0f32, -2.0];
        cfg.step(&mut state, &mut p, &[0.5, -3.0], 0.1);
        assert!(
            (p[0] - 0.9).abs() < 1e-6 && (p[1] + 1.9).abs() < 1e-6,
            "{p:?}"
        );
        // Decoupled weight decay shrinks by lr * wd * p first.
        let cfg = OptimizerConfig {
            weight_decay: 0.5,
            ..Default::default()
        };
        let mut state = OptimizerState::default();
        let mut p = vec![1.0f32];
        cfg.step(&mut state, &mut p, &[0.0], 0.1);
        assert!((p[0] - 0.95).abs() < 1e-6, "{p:?}");
    }

    #[test]
    fn sgd_and_clipping() {
        let cfg = OptimizerConfig {
            kind: OptimizerKind::Sgd,
            weight_decay: 0.0,
            ..Default::default()
        };
        let mut state = OptimizerState::default();
        let mut p = vec![1.0f32];
        cfg.step(&mut state, &mut p, &[2.0], 0.25);
        assert_eq!(p, vec![0.5]);
        let mut g = vec![3.0f32, 4.0];
        assert_eq!(clip_grad_norm(&mut g, 1.0), 5.0);
        assert!((g[0] - 0.6).abs() < 1e-5 && (g[1] - 0.8).abs() < 1e-5);
    }
}
