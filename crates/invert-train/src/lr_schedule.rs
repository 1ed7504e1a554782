//! Learning-rate schedules: constant, constant with linear warm-up, cosine with warm-up
//! (diffusers `get_scheduler`, optimization.py), and A1111's step string
//! (`0.005:100, 1e-3:1000, 1e-4`: each rate holds until its step; the last one has no end;
//! modules/textual_inversion/learn_schedule.py).

use std::str::FromStr;

#[derive(Debug, Clone, PartialEq)]
pub enum LrSchedule {
    Constant {
        lr: f64,
    },
    /// Linear ramp from 0 over `warmup` steps, then constant.
    ConstantWithWarmup {
        lr: f64,
        warmup: usize,
    },
    /// Linear warm-up, then half a cosine from `lr` to 0 at `total` steps.
    Cosine {
        lr: f64,
        warmup: usize,
        total: usize,
    },
    /// `(rate, until_step)` pieces; `None` marks the open-ended last piece.
    Steps(Vec<(f64, Option<usize>)>),
}

impl LrSchedule {
    /// The rate for optimisation step `step` (0-based, as diffusers' LambdaLR sees it).
    pub fn lr_at(&self, step: usize) -> f64 {
        match self {
            LrSchedule::Constant { lr } => *lr,
            LrSchedule::ConstantWithWarmup { lr, warmup } => {
                if step < *warmup {
                    lr * step as f64 / (*warmup).max(1) as f64
                } else {
                    *lr
                }
            }
            LrSchedule::Cosine { lr, warmup, total } => {
                if step < *warmup {
                    return lr * step as f64 / (*warmup).max(1) as f64;
                }
                let progress =
                    (step - warmup) as f64 / (total.saturating_sub(*warmup)).max(1) as f64;
                lr * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
            }
            LrSchedule::Steps(pieces) => pieces
                .iter()
                .find(|(_, until)| until.is_none_or(|u| step < u))
                .or(pieces.last())
                .map(|(r, _)| *r)
                .unwrap_or(0.0),
        }
    }

    /// Multiplies every rate (for `--scale-lr`).
    pub fn scaled(self, factor: f64) -> Self {
        match self {
            LrSchedule::Constant { lr } => LrSchedule::Constant { lr: lr * factor },
            LrSchedule::ConstantWithWarmup { lr, warmup } => LrSchedule::ConstantWithWarmup {
                lr: lr * factor,
                warmup,
            },
            LrSchedule::Cosine { lr, warmup, total } => LrSchedule::Cosine {
                lr: lr * factor,
                warmup,
                total,
            },
            LrSchedule::Steps(p) => {
                LrSchedule::Steps(p.into_iter().map(|(r, u)| (r * factor, u)).collect())
            }
        }
    }
}

/// Parses A1111's schedule string. A plain number is a constant rate.
impl FromStr for LrSchedule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let parts: Vec<&str> = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        if parts.is_empty() {
            return Err("empty learning rate".into());
        }
        for (i, part) in parts.iter().enumerate() {
            let (rate, until) = match part.split_once(':') {
                Some((r, u)) => {
                    let u: usize = u.trim().parse().map_err(|_| {
                        format!("`{part}`: the step after `:` must be a whole number")
                    })?;
                    (r.trim(), Some(u))
                }
                None if i + 1 == parts.len() => (*part, None),
                None => {
                    return Err(format!(
                        "`{part}`: only the last rate may omit `:step` (e.g. `0.005:100, 1e-3:1000, 1e-4`)"
                    ));
                }
            };
            let rate: f64 = rate
                .parse()
                .map_err(|_| format!("`{rate}` is not a number"))?;
            if !(rate.is_finite() && rate > 0.0) {
                return Err(format!("learning rate {rate} must be positive"));
            }
            if let (Some(u), Some((_, Some(prev)))) = (until, pieces.last())
                && u <= *prev
            {
                return Err(format!("`{part}`: steps must increase ({u} after {prev})"));
            }
            pieces.push((rate, until));
        }
        Ok(if pieces.len() == 1 && pieces[0].1.is_none() {
            LrSchedule::Constant { lr: pieces[0].0 }
        } else {
            LrSchedule::Steps(pieces)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a1111_step_string() {
        let s: LrSchedule = "0.005:100, 1e-3:1000, 1e-4".parse().unwrap();
        assert_eq!(s.lr_at(0), 0.005);
        assert_eq!(s.lr_at(99), 0.005);
        assert_eq!(s.lr_at(100), 1e-3);
        assert_eq!(s.lr_at(999), 1e-3);
        assert_eq!(s.lr_at(5000), 1e-4);
        // A string whose last piece has an end keeps its last rate afterwards.
        let s: LrSchedule = "0.01:10".parse().unwrap();
        assert_eq!(s.lr_at(50), 0.01);
        assert_eq!(
            "5e-3".parse::<LrSchedule>().unwrap(),
            LrSchedule::Constant { lr: 5e-3 }
        );
        assert!(
            "0.1, 0.2"
                .parse::<LrSchedule>()
                .unwrap_err()
                .contains("only the last")
        );
        assert!(
            "0.1:20, 0.2:10, 0.3"
                .parse::<LrSchedule>()
                .unwrap_err()
                .contains("increase")
        );
        assert!("-1".parse::<LrSchedule>().unwrap_err().contains("positive"));
    }

    #[test]
    fn warmup_and_cosine_follow_diffusers() {
        let w = LrSchedule::ConstantWithWarmup { lr: 1.0, warmup: 4 };
        assert_eq!(
            [w.lr_at(0), w.lr_at(2), w.lr_at(4), w.lr_at(10)],
            [0.0, 0.5, 1.0, 1.0]
        );
        let c = LrSchedule::Cosine {
            lr: 1.0,
            warmup: 0,
            total: 10,
        };
        assert_eq!(c.lr_at(0), 1.0);
        assert!((c.lr_at(5) - 0.5).abs() < 1e-12);
        assert!(c.lr_at(10).abs() < 1e-12);
        assert_eq!(LrSchedule::Constant { lr: 2.0 }.scaled(4.0).lr_at(3), 8.0);
    }
}
