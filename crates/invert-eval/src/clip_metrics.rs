//! The paper's CLIP metrics (Gal et al. 2022, section 5.1; rinongal/textual_inversion
//! `evaluation/clip_eval.py`, `CLIPEvaluator`), on feature vectors already computed by CLIP:
//!
//! - **image similarity** (reconstruction; DreamBooth's "CLIP-I"): the mean cosine similarity
//!   over all (training image, generated image) pairs, `(src @ gen.T).mean()` of L2-normalised
//!   features;
//! - **text similarity** (editability; DreamBooth's "CLIP-T"): the mean cosine similarity between
//!   each generated image and its prompt with the learned word removed (`target_text.replace("*",
//!   "")`), `(text @ gen.T).mean()`.
//!
//! The mean over pairs equals the dot product of the two mean normalised embeddings; the paper's
//! text also reads "the average pair-wise CLIP-space cosine-similarity", which is this. The
//! "mean embedding" reading ([`Reading::MeanEmbedding`]) instead takes the cosine between the two
//! mean embeddings, i.e. renormalises the means; it is offered behind a flag because some
//! re-implementations report it (when the pairwise mean is positive, this is at least as large:
//! the means have norm at most 1).

use serde::{Deserialize, Serialize};

/// How a set-to-set similarity is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Reading {
    /// Mean cosine over all pairs (the paper's `clip_eval.py`).
    #[default]
    PairwiseMean,
    /// Cosine between the mean normalised embeddings of each set.
    MeanEmbedding,
}

/// `v / |v|` (a zero vector stays zero).
pub fn normalized(v: &[f32]) -> Vec<f64> {
    let norm = v
        .iter()
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt();
    v.iter()
        .map(|&x| if norm > 0.0 { x as f64 / norm } else { 0.0 })
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn mean(rows: &[Vec<f64>]) -> Vec<f64> {
    let mut m = vec![0.0; rows.first().map_or(0, Vec::len)];
    for r in rows {
        m.iter_mut().zip(r).for_each(|(a, b)| *a += b);
    }
    m.iter_mut().for_each(|a| *a /= rows.len().max(1) as f64);
    m
}

/// Similarity between two sets of features (`a` against `b`), each row one image or text.
/// `None` when either set is empty or the widths differ.
pub fn set_similarity(a: &[Vec<f32>], b: &[Vec<f32>], reading: Reading) -> Option<f64> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let width = a[0].len();
    if a.iter().chain(b).any(|r| r.len() != width) {
        return None;
    }
    let a: Vec<Vec<f64>> = a.iter().map(|r| normalized(r)).collect();
    let b: Vec<Vec<f64>> = b.iter().map(|r| normalized(r)).collect();
    Some(match reading {
        Reading::PairwiseMean => {
            let total: f64 = a.iter().flat_map(|x| b.iter().map(|y| dot(x, y))).sum();
            total / (a.len() * b.len()) as f64
        }
        Reading::MeanEmbedding => {
            let (ma, mb) = (mean(&a), mean(&b));
            let (na, nb) = (dot(&ma, &ma).sqrt(), dot(&mb, &mb).sqrt());
            if na == 0.0 || nb == 0.0 {
                0.0
            } else {
                dot(&ma, &mb) / (na * nb)
            }
        }
    })
}

/// Image similarity (reconstruction, CLIP-I): training images' features against generated ones.
pub fn image_similarity(
    training: &[Vec<f32>],
    generated: &[Vec<f32>],
    reading: Reading,
) -> Option<f64> {
    set_similarity(training, generated, reading)
}

/// Text similarity (editability, CLIP-T): one prompt's features against generated images'.
pub fn text_similarity(prompt: &[f32], generated: &[Vec<f32>], reading: Reading) -> Option<f64> {
    set_similarity(&[prompt.to_vec()], generated, reading)
}

/// The prompt the text similarity is measured against: the learned words removed, as the paper's
/// `target_text.replace("*", "")` removes its placeholder `*`. Spaces are collapsed so that
/// "a photo of <cat-toy> on the moon" becomes "a photo of on the moon" (CLIP's tokenizer splits
/// on whitespace, so this changes no token).
pub fn prompt_without_words(prompt: &str, words: &[&str]) -> String {
    let mut text = prompt.to_string();
    for w in words.iter().filter(|w| !w.is_empty()) {
        text = text.replace(w, " ");
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn pairwise_mean_is_the_mean_of_all_pair_cosines() {
        // training: e1, e2; generated: e1, (e1 + e2) / sqrt 2 (unnormalised on purpose)
        let training = vec![vec![2.0, 0.0], vec![0.0, 3.0]];
        let generated = vec![vec![5.0, 0.0], vec![1.0, 1.0]];
        let s = 0.5f64.sqrt();
        // pairs: (e1,e1)=1, (e1,d)=s, (e2,e1)=0, (e2,d)=s
        let expected = (1.0 + s + 0.0 + s) / 4.0;
        let got = image_similarity(&training, &generated, Reading::PairwiseMean).unwrap();
        assert!(close(got, expected), "{got} vs {expected}");
    }

    #[test]
    fn mean_embedding_renormalises_the_means() {
        let training = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        let generated = vec![vec![1.0, 1.0]];
        // mean of training = (0.5, 0.5), cosine with (1,1)/sqrt2 = 1; pairwise mean = sqrt(1/2)
        let m = image_similarity(&training, &generated, Reading::MeanEmbedding).unwrap();
        let p = image_similarity(&training, &generated, Reading::PairwiseMean).unwrap();
        assert!(close(m, 1.0), "{m}");
        assert!(close(p, 0.5f64.sqrt()), "{p}");
        assert!(m >= p);
    }

    #[test]
    fn text_similarity_averages_over_generated_images() {
        let text = vec![0.0, 2.0];
        let generated = vec![
            vec![0.0, 1.0],
            vec![1.0, 0.0],
            vec![-1.0, 0.0],
            vec![0.0, -4.0],
        ];
        let got = text_similarity(&text, &generated, Reading::PairwiseMean).unwrap();
        assert!(close(got, 0.0), "{got}");
        let got = text_similarity(&text, &generated[..1], Reading::PairwiseMean).unwrap();
        assert!(close(got, 1.0), "{got}");
    }

    #[test]
    fn empty_or_mismatched_sets_have_no_similarity() {
        assert_eq!(
            set_similarity(&[], &[vec![1.0]], Reading::PairwiseMean),
            None
        );
        assert_eq!(
            set_similarity(&[vec![1.0, 0.0]], &[vec![1.0]], Reading::PairwiseMean),
            None
        );
    }

    #[test]
    fn learned_words_are_removed_from_the_prompt() {
        assert_eq!(
            prompt_without_words("a photo of <cat-toy> on the moon", &["<cat-toy>"]),
            "a photo of on the moon"
        );
        assert_eq!(
            prompt_without_words("<a> in the style of <b>", &["<a>", "<b>"]),
            "in the style of"
        );
        // the paper's own placeholder
        assert_eq!(
            prompt_without_words("an oil painting of *", &["*"]),
            "an oil painting of"
        );
    }
}
