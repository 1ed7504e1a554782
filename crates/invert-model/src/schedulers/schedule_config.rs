//! A diffusers `scheduler/scheduler_config.json`, as invert reads it.
//!
//! Config fields missing from the json take diffusers' defaults. Three of those defaults
//! depend on the scheduler class (`set_alpha_to_one`: DDIM true, PNDM false; `clip_sample`:
//! DDIM true; `timestep_spacing`: DDIM/PNDM `leading`, Euler/DPM-Solver `linspace`), and
//! diffusers' `from_config` lets each class fill in its own (`_use_default_values`), so those
//! stay `None` here until a sampler resolves them.

use burn::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::SchedulerError;
use super::config_json::Json;

/// `beta_schedule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    Linear,
    /// Linear in sqrt(beta), the latent-diffusion schedule of SD 1.x/2.x.
    ScaledLinear,
    /// The GLIDE cosine schedule (`betas_for_alpha_bar`, cosine).
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredcosCapV2,
}

/// `prediction_type`: what the U-Net predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    Epsilon,
    /// `v = sqrt(abar) * noise - sqrt(1 - abar) * x0` (SD 2.x 768 models).
    VPrediction,
    /// x0 itself.
    Sample,
}

/// `timestep_spacing` (table 2 of "Common Diffusion Noise Schedules and Sample Steps are
/// Flawed").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    Leading,
    Trailing,
    Linspace,
}

/// `final_sigmas_type` (Euler, DPM-Solver): the sigma after the last step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalSigmas {
    Zero,
    /// The smallest training sigma, `sqrt((1 - abar_0) / abar_0)`.
    SigmaMin,
}

/// `solver_type` of DPM-Solver's second-order step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SolverType {
    Midpoint,
    Heun,
}

/// The scheduler settings invert reads from `scheduler_config.json`. Build it with
/// [`NoiseScheduleConfig::from_json`] (or `new()` for diffusers' plain defaults).
#[derive(Config, Debug, PartialEq)]
pub struct NoiseScheduleConfig {
    /// `_class_name`: the sampler the model was published with (PNDM for SD 1.x, DDIM for
    /// SD 2.x); see `SamplerKind::from_class_name`.
    #[config(default = "None")]
    pub class_name: Option<String>,
    #[config(default = 1000)]
    pub num_train_timesteps: usize,
    #[config(default = 0.0001)]
    pub beta_start: f64,
    #[config(default = 0.02)]
    pub beta_end: f64,
    #[config(default = "BetaSchedule::Linear")]
    pub beta_schedule: BetaSchedule,
    /// Explicit betas; they replace `beta_start`/`beta_end`/`beta_schedule`.
    #[config(default = "None")]
    pub trained_betas: Option<Vec<f64>>,
    #[config(default = "PredictionType::Epsilon")]
    pub prediction_type: PredictionType,
    /// Added to `leading` timesteps (1 for SD 1.x/2.x).
    #[config(default = 0)]
    pub steps_offset: usize,
    /// DDIM/PNDM: alpha-bar "before" the first training step is 1 (else `abar_0`). `None`:
    /// the sampler's default (DDIM true, PNDM false).
    #[config(default = "None")]
    pub set_alpha_to_one: Option<bool>,
    /// `None`: the sampler's default (DDIM/PNDM `leading`, the others `linspace`).
    #[config(default = "None")]
    pub timestep_spacing: Option<TimestepSpacing>,
    /// DDIM: clamp the predicted x0 to `[-clip_sample_range, clip_sample_range]`. `None`:
    /// DDIM's default, true.
    #[config(default = "None")]
    pub clip_sample: Option<bool>,
    #[config(default = 1.0)]
    pub clip_sample_range: f64,
    /// PNDM: skip the Runge-Kutta warm-up, i.e. plain PLMS (SD 1.x).
    #[config(default = false)]
    pub skip_prk_steps: bool,
    /// Euler, DPM-Solver: Karras et al. sigmas.
    #[config(default = false)]
    pub use_karras_sigmas: bool,
    /// Euler, DPM-Solver: ends of the Karras ramp (default: the schedule's own).
    #[config(default = "None")]
    pub sigma_min: Option<f64>,
    #[config(default = "None")]
    pub sigma_max: Option<f64>,
    #[config(default = "FinalSigmas::Zero")]
    pub final_sigmas_type: FinalSigmas,
    /// DPM-Solver: first-order last step when there are fewer than 15 steps.
    #[config(default = true)]
    pub lower_order_final: bool,
    /// DPM-Solver: always a first-order (Euler) last step.
    #[config(default = false)]
    pub euler_at_final: bool,
    #[config(default = "SolverType::Midpoint")]
    pub solver_type: SolverType,
    /// DPM-Solver: drop the timesteps whose log-SNR lambda is below this (default: none).
    #[config(default = "None")]
    pub lambda_min_clipped: Option<f64>,
}

impl NoiseScheduleConfig {
    /// Reads a parsed `scheduler_config.json`. Unknown keys are ignored (diffusers keeps them
    /// unused); values invert cannot reproduce are an error naming the key.
    pub fn from_json(json: &Value) -> Result<Self, SchedulerError> {
        let j = Json::new(json)?;
        for (key, off) in [
            ("thresholding", false),
            ("rescale_betas_zero_snr", false),
            ("use_exponential_sigmas", false),
            ("use_beta_sigmas", false),
            ("use_lu_lambdas", false),
            ("use_flow_sigmas", false),
            ("use_dynamic_shifting", false),
        ] {
            j.require_bool(key, off)?;
        }
        j.require_str("timestep_type", &["discrete"])?;
        j.require_str("interpolation_type", &["linear"])?;
        j.require_null("variance_type")?;
        let default = Self::new();
        let config = Self {
            class_name: j.string("_class_name")?,
            num_train_timesteps: j.usize("num_train_timesteps")?.unwrap_or(1000),
            beta_start: j.f64("beta_start")?.unwrap_or(default.beta_start),
            beta_end: j.f64("beta_end")?.unwrap_or(default.beta_end),
            beta_schedule: j
                .choice(
                    "beta_schedule",
                    &[
                        ("linear", BetaSchedule::Linear),
                        ("scaled_linear", BetaSchedule::ScaledLinear),
                        ("squaredcos_cap_v2", BetaSchedule::SquaredcosCapV2),
                    ],
                )?
                .unwrap_or(BetaSchedule::Linear),
            trained_betas: j.f64_list("trained_betas")?,
            prediction_type: j
                .choice(
                    "prediction_type",
                    &[
                        ("epsilon", PredictionType::Epsilon),
                        ("v_prediction", PredictionType::VPrediction),
                        ("sample", PredictionType::Sample),
                    ],
                )?
                .unwrap_or(PredictionType::Epsilon),
            steps_offset: j.usize("steps_offset")?.unwrap_or(0),
            set_alpha_to_one: j.bool("set_alpha_to_one")?,
            timestep_spacing: j.choice(
                "timestep_spacing",
                &[
                    ("leading", TimestepSpacing::Leading),
                    ("trailing", TimestepSpacing::Trailing),
                    ("linspace", TimestepSpacing::Linspace),
                ],
            )?,
            clip_sample: j.bool("clip_sample")?,
            clip_sample_range: j.f64("clip_sample_range")?.unwrap_or(1.0),
            skip_prk_steps: j.bool("skip_prk_steps")?.unwrap_or(false),
            use_karras_sigmas: j.bool("use_karras_sigmas")?.unwrap_or(false),
            sigma_min: j.f64("sigma_min")?,
            sigma_max: j.f64("sigma_max")?,
            final_sigmas_type: j
                .choice(
                    "final_sigmas_type",
                    &[
                        ("zero", FinalSigmas::Zero),
                        ("sigma_min", FinalSigmas::SigmaMin),
                    ],
                )?
                .unwrap_or(FinalSigmas::Zero),
            lower_order_final: j.bool("lower_order_final")?.unwrap_or(true),
            euler_at_final: j.bool("euler_at_final")?.unwrap_or(false),
            solver_type: j
                .choice(
                    "solver_type",
                    &[
                        ("midpoint", SolverType::Midpoint),
                        ("heun", SolverType::Heun),
                    ],
                )?
                .unwrap_or(SolverType::Midpoint),
            lambda_min_clipped: j.f64("lambda_min_clipped")?,
        };
        config.validate()?;
        Ok(config)
    }

    /// Reads `scheduler_config.json` from a file. Python's `json` writes non-finite floats as
    /// bare `NaN`/`Infinity`/`-Infinity` (diffusers saves DPM-Solver's default
    /// `lambda_min_clipped` as `-Infinity`); they are read as `null`, i.e. the default.
    pub fn from_file(path: &std::path::Path) -> Result<Self, SchedulerError> {
        let invalid = |message: String| SchedulerError::Invalid {
            field: "scheduler_config.json",
            message,
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
        let json: Value = serde_json::from_str(&python_json_to_json(&text))
            .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
        Self::from_json(&json)
    }

    /// Checks the values that types alone do not (also for configs built in code).
    pub fn validate(&self) -> Result<(), SchedulerError> {
        let invalid = |field, message: String| Err(SchedulerError::Invalid { field, message });
        if self.num_train_timesteps < 2 {
            return invalid("num_train_timesteps", "must be at least 2".into());
        }
        if let Some(b) = &self.trained_betas {
            if b.len() != self.num_train_timesteps {
                return invalid(
                    "trained_betas",
                    format!(
                        "has {} values for {} training timesteps",
                        b.len(),
                        self.num_train_timesteps
                    ),
                );
            }
            if b.iter().any(|&v| !(0.0..1.0).contains(&v)) {
                return invalid("trained_betas", "values must be in [0, 1)".into());
            }
        } else if !(self.beta_start > 0.0
            && self.beta_end < 1.0
            && self.beta_start <= self.beta_end)
        {
            return invalid(
                "beta_start",
                format!(
                    "need 0 <= beta_start <= beta_end < 1, got {} and {}",
                    self.beta_start, self.beta_end
                ),
            );
        }
        Ok(())
    }
}

/// `text` with Python's non-standard JSON literals (`NaN`, `Infinity`, `-Infinity`) outside
/// strings replaced by `null`.
fn python_json_to_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            in_string = escaped || c != '"';
            escaped = !escaped && c == '\\';
        } else if c == '"' {
            in_string = true;
        } else if let Some(token) = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t))
        {
            out.push_str("null");
            rest = &rest[token.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sd15() -> Value {
        json!({
            "_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": false,
            "skip_prk_steps": true, "steps_offset": 1, "trained_betas": null, "clip_sample": false
        })
    }

    #[test]
    fn parses_sd15_with_defaults() {
        let c = NoiseScheduleConfig::from_json(&sd15()).unwrap();
        assert_eq!(c.class_name.as_deref(), Some("PNDMScheduler"));
        assert_eq!(c.beta_schedule, BetaSchedule::ScaledLinear);
        assert_eq!(c.prediction_type, PredictionType::Epsilon);
        assert_eq!(c.timestep_spacing, None);
        assert_eq!(c.set_alpha_to_one, Some(false));
        assert_eq!(c.steps_offset, 1);
        assert!(c.skip_prk_steps);
        let empty = NoiseScheduleConfig::from_json(&json!({})).unwrap();
        assert_eq!(empty, NoiseScheduleConfig::new());
    }

    #[test]
    fn unsupported_values_name_the_key() {
        let mut v = sd15();
        v["beta_schedule"] = json!("sigmoid");
        let e = NoiseScheduleConfig::from_json(&v).unwrap_err().to_string();
        assert!(e.contains("beta_schedule") && e.contains("sigmoid"), "{e}");
        let mut v = sd15();
        v["prediction_type"] = json!("flow_prediction");
        let e = NoiseScheduleConfig::from_json(&v).unwrap_err().to_string();
        assert!(e.contains("prediction_type"), "{e}");
        let mut v = sd15();
        v["thresholding"] = json!(true);
        let e = NoiseScheduleConfig::from_json(&v).unwrap_err().to_string();
        assert!(e.contains("thresholding"), "{e}");
        let mut v = sd15();
        v["timestep_spacing"] = json!(3);
        let e = NoiseScheduleConfig::from_json(&v).unwrap_err().to_string();
        assert!(e.contains("timestep_spacing"), "{e}");
        let mut v = sd15();
        v["trained_betas"] = json!([0.1, 0.2]);
        let e = NoiseScheduleConfig::from_json(&v).unwrap_err().to_string();
        assert!(e.contains("trained_betas"), "{e}");
    }

    #[test]
    fn python_literals_read_as_null() {
        let text = r#"{"lambda_min_clipped": -Infinity, "a": "x\"NaN\\", "b": [NaN, Infinity]}"#;
        let v: Value = serde_json::from_str(&python_json_to_json(text)).unwrap();
        assert_eq!(v["lambda_min_clipped"], Value::Null);
        assert_eq!(v["a"], json!("x\"NaN\\"));
        assert_eq!(v["b"], json!([null, null]));
        assert_eq!(
            NoiseScheduleConfig::from_json(&v)
                .unwrap()
                .lambda_min_clipped,
            None
        );
    }
}
