//! The table of `invert eval paper`: CLIP image and text similarity per (word, method) as the
//! paper reports them (Gal et al. 2022, Figure 10; DreamBooth's names CLIP-I / CLIP-T), in
//! markdown and JSON, and the Figure-10 scatter with axes fitted to the numbers.

use serde::Serialize;

use crate::ConceptScore;
use crate::paper_experiment::PaperSettings;
use crate::plot::{fitted_ranges, render_on};

#[derive(Debug, Clone, Serialize)]
pub struct PaperReport {
    pub model: String,
    pub clip: String,
    pub settings: PaperSettings,
    /// The editing prompts (`{}` = the word under test).
    pub edit_prompts: Vec<String>,
    pub scores: Vec<ConceptScore>,
}

impl PaperReport {
    pub fn markdown(&self) -> String {
        let s = &self.settings;
        let mut md = format!(
            "# invert eval paper\n\nmodel: {}\n\nCLIP: {}\n\n{} images per prompt, {} {} steps, \
             guidance {}, seed {} (image i: seed + i), {}x{} px; similarity read as {:?}.\n\n\
             Reconstruction = CLIP image similarity (CLIP-I) of \"a photo of S*\" images to the \
             training images (squashed to 256x256); editability = mean CLIP text similarity \
             (CLIP-T) of each editing prompt's images to that prompt without the word \
             (rinongal/textual_inversion `evaluation/clip_eval.py`).\n\n\
             | word | method | reconstruction (CLIP-I) | editability (CLIP-T) |\n|---|---|---:|---:|\n",
            self.model,
            self.clip,
            s.images_per_prompt,
            s.sampler.name(),
            s.steps,
            s.guidance,
            s.seed,
            s.size.map_or("native".to_string(), |v| v.to_string()),
            s.size.map_or("native".to_string(), |v| v.to_string()),
            s.reading,
        );
        for c in &self.scores {
            md.push_str(&format!(
                "| {} | {} | {:.4} | {:.4} |\n",
                c.concept,
                c.method.name(),
                c.reconstruction,
                c.editability
            ));
        }
        md.push_str(
            "\n## Per editing prompt\n\n| word | method | prompt | CLIP-T | CLIP-I to training |\n\
             |---|---|---|---:|---:|\n",
        );
        for c in &self.scores {
            for (prompt, text, image) in &c.edits {
                md.push_str(&format!(
                    "| {} | {} | `{prompt}` | {text:.4} | {image:.4} |\n",
                    c.concept,
                    c.method.name()
                ));
            }
        }
        md
    }

    /// The Figure-10 scatter (RGB8 width, height, pixels).
    pub fn plot(&self) -> (usize, usize, Vec<u8>) {
        let mut concepts: Vec<String> = Vec::new();
        for c in &self.scores {
            if !concepts.contains(&c.concept) {
                concepts.push(c.concept.clone());
            }
        }
        let (x, y) = fitted_ranges(&self.scores);
        render_on(&self.scores, &concepts, x, y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Method;

    fn report() -> PaperReport {
        let score = |concept: &str, method, r, e| ConceptScore {
            concept: concept.into(),
            method,
            reconstruction: r,
            editability: e,
            edits: vec![("a photo of x on the moon".into(), e, r - 0.1)],
        };
        PaperReport {
            model: "m".into(),
            clip: "c".into(),
            settings: PaperSettings::default(),
            edit_prompts: vec!["a photo of {} on the moon".into()],
            scores: vec![
                score("clock", Method::Learned, 0.81, 0.24),
                score("clock", Method::PromptOnly, 0.53, 0.31),
            ],
        }
    }

    #[test]
    fn markdown_has_one_row_per_score_and_per_edit() {
        let md = report().markdown();
        assert!(
            md.contains("| clock | learned word | 0.8100 | 0.2400 |"),
            "{md}"
        );
        assert!(
            md.contains("| clock | prompt only | 0.5300 | 0.3100 |"),
            "{md}"
        );
        assert!(
            md.contains("| clock | learned word | `a photo of x on the moon` | 0.2400 | 0.7100 |")
        );
        assert!(md.contains("64 images per prompt, ddim 50 steps, guidance 5"));
    }

    #[test]
    fn the_plot_axes_fit_the_clip_band() {
        let r = report();
        let (x, y) = fitted_ranges(&r.scores);
        let near =
            |a: (f64, f64), b: (f64, f64)| (a.0 - b.0).abs() < 1e-9 && (a.1 - b.1).abs() < 1e-9;
        assert!(near(x, (0.5, 0.85)), "{x:?}");
        assert!(near(y, (0.2, 0.35)), "{y:?}");
        let (w, h, rgb) = r.plot();
        assert_eq!(rgb.len(), w * h * 3);
    }
}
