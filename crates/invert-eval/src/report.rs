//! The evaluation's printed table (Markdown) and its JSON form.

use serde::Serialize;

use crate::{Composition, ConceptScore, Fidelity, Method};

/// Goals of the issue: prompt fidelity per attribute, and reconstruction of the learned word
/// well above the initialiser word's.
pub const FIDELITY_GOAL: f64 = 0.90;
/// "Beats the initialiser word on reconstruction by a wide margin": at least this many
/// percentage points (as a fraction) more of its pictures show the concept.
pub const RECONSTRUCTION_MARGIN_GOAL: f64 = 0.30;
/// "While keeping most of the editability": the learned word's editability is at least this
/// share of the initialiser word's.
pub const EDITABILITY_KEPT_GOAL: f64 = 2.0 / 3.0;

/// One concept's learned word against its initialiser word.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub concept: String,
    /// Learned minus initialiser reconstruction.
    pub margin: f64,
    /// Learned editability over the initialiser word's (1 when both are zero).
    pub kept: f64,
    pub met: bool,
}

/// The verdict of every concept that has both a learned-word and an initialiser-word score.
pub fn verdicts(scores: &[ConceptScore]) -> Vec<Verdict> {
    let find = |name: &str, m: Method| scores.iter().find(|c| c.concept == name && c.method == m);
    let mut out = Vec::new();
    for learned in scores.iter().filter(|c| c.method == Method::Learned) {
        let Some(init) = find(&learned.concept, Method::InitWord) else {
            continue;
        };
        let margin = learned.reconstruction - init.reconstruction;
        let kept = if init.editability > 0.0 {
            learned.editability / init.editability
        } else {
            1.0
        };
        out.push(Verdict {
            concept: learned.concept.clone(),
            margin,
            kept,
            met: margin >= RECONSTRUCTION_MARGIN_GOAL && kept >= EDITABILITY_KEPT_GOAL,
        });
    }
    out
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub model: String,
    pub settings: String,
    pub fidelity: Option<Fidelity>,
    pub concepts: Vec<ConceptScore>,
    pub compositions: Vec<Composition>,
}

fn pct(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

impl EvalReport {
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# invert eval\n\nmodel: {}\n\n{}\n",
            self.model, self.settings
        );
        if let Some(f) = &self.fidelity {
            s.push_str(&format!(
                "\n## Base-model prompt fidelity ({} pictures; goal {} per attribute)\n\n\
                 | attribute | shows what the prompt asked | per asked value |\n|---|---:|---|\n",
                f.pictures,
                pct(FIDELITY_GOAL)
            ));
            for ((name, v), values) in f.attributes.iter().zip(&f.values) {
                let mark = if *v >= FIDELITY_GOAL {
                    ""
                } else {
                    " (below goal)"
                };
                let values: Vec<String> = values
                    .iter()
                    .map(|(value, v)| format!("{value} {}", pct(*v)))
                    .collect();
                s.push_str(&format!(
                    "| {name} | {}{mark} | {} |\n",
                    pct(*v),
                    values.join(", ")
                ));
            }
        }
        if !self.concepts.is_empty() {
            s.push_str(
                "\n## Reconstruction and editability (paper's Figure 10)\n\n\
                 | concept | word | reconstruction | editability |\n|---|---|---:|---:|\n",
            );
            for c in &self.concepts {
                s.push_str(&format!(
                    "| {} | {} | {} | {} |\n",
                    c.concept,
                    c.method.name(),
                    pct(c.reconstruction),
                    pct(c.editability)
                ));
            }
            s.push_str(&format!(
                "\nGoal: the learned word's reconstruction at least {} points above the \
                 initialiser word's, keeping at least {} of its editability.\n\n\
                 | concept | reconstruction margin | editability kept | goal |\n|---|---:|---:|---|\n",
                (RECONSTRUCTION_MARGIN_GOAL * 100.0).round(),
                pct(EDITABILITY_KEPT_GOAL)
            ));
            for v in verdicts(&self.concepts) {
                s.push_str(&format!(
                    "| {} | {:+.1} points | {} | {} |\n",
                    v.concept,
                    v.margin * 100.0,
                    pct(v.kept),
                    if v.met { "met" } else { "not met" }
                ));
            }
            s.push_str(
                "\n### Per edit prompt\n\n| prompt | obeyed | still shows the concept |\n|---|---:|---:|\n",
            );
            for c in &self.concepts {
                for (prompt, obeyed, shown) in &c.edits {
                    s.push_str(&format!(
                        "| `{prompt}` | {} | {} |\n",
                        pct(*obeyed),
                        pct(*shown)
                    ));
                }
            }
        }
        if !self.compositions.is_empty() {
            s.push_str(
                "\n## Composition (object word in style word)\n\n\
                 | prompt | object shown | style shown | both |\n|---|---:|---:|---:|\n",
            );
            for c in &self.compositions {
                s.push_str(&format!(
                    "| `{}` | {} | {} | {} |\n",
                    c.prompt,
                    pct(c.object),
                    pct(c.style),
                    pct(c.both)
                ));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(concept: &str, method: Method, reconstruction: f64, editability: f64) -> ConceptScore {
        ConceptScore {
            concept: concept.into(),
            method,
            reconstruction,
            editability,
            edits: vec![],
        }
    }

    #[test]
    fn verdict_needs_the_margin_and_most_of_the_editability() {
        let scores = vec![
            score("a", Method::Learned, 0.8, 0.5),
            score("a", Method::InitWord, 0.1, 0.6),
            score("b", Method::Learned, 0.9, 0.2),
            score("b", Method::InitWord, 0.0, 0.6),
            score("c", Method::Learned, 0.3, 0.6),
            score("c", Method::InitWord, 0.1, 0.6),
            score("d", Method::Learned, 0.3, 0.6),
        ];
        let v = verdicts(&scores);
        assert_eq!(v.len(), 3, "d has no initialiser score");
        assert!(v[0].met && (v[0].margin - 0.7).abs() < 1e-9);
        assert!(!v[1].met, "b lost two thirds of its editability");
        assert!(!v[2].met, "c's margin is 20 points");
        let md = EvalReport {
            model: "m".into(),
            settings: String::new(),
            fidelity: None,
            concepts: scores,
            compositions: vec![],
        }
        .markdown();
        assert!(md.contains("| a | +70.0 points | 83.3% | met |"), "{md}");
    }

    #[test]
    fn fidelity_table_names_the_values_below_the_goal() {
        let md = EvalReport {
            model: "m".into(),
            settings: String::new(),
            fidelity: Some(Fidelity {
                attributes: vec![("shape".into(), 0.88), ("colour".into(), 1.0)],
                values: vec![
                    vec![("circle".into(), 0.64), ("square".into(), 1.0)],
                    vec![("red".into(), 1.0)],
                ],
                pictures: 8,
            }),
            concepts: vec![],
            compositions: vec![],
        }
        .markdown();
        assert!(
            md.contains("| shape | 88.0% (below goal) | circle 64.0%, square 100.0% |"),
            "{md}"
        );
        assert!(md.contains("| colour | 100.0% | red 100.0% |"), "{md}");
    }
}
