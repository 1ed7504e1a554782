//! The evaluation's printed table (Markdown) and its JSON form.

use serde::Serialize;

use super::{Composition, ConceptScore, Fidelity};

/// Goals of the issue: prompt fidelity per attribute, and reconstruction of the learned word
/// well above the initialiser word's.
pub const FIDELITY_GOAL: f64 = 0.90;

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
                 | attribute | shows what the prompt asked |\n|---|---:|\n",
                f.pictures,
                pct(FIDELITY_GOAL)
            ));
            for (name, v) in &f.attributes {
                let mark = if *v >= FIDELITY_GOAL {
                    ""
                } else {
                    " (below goal)"
                };
                s.push_str(&format!("| {name} | {}{mark} |\n", pct(*v)));
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
