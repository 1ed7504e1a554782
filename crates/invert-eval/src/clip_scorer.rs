//! CLIP features for the metrics: a loaded `CLIPModel` with its image processor and tokenizer
//! (transformers' `CLIPModel.get_image_features` / `get_text_features` after
//! `CLIPImageProcessor` / `CLIPTokenizer`, as the paper's `clip_eval.py` uses OpenAI CLIP).

use std::path::Path;

use burn::prelude::*;
use image::RgbImage;
use invert_model::clip::{
    ClipLoadError, ClipLoadOptions, LoadedClip, RgbImage as ClipRgb, load_clip,
};
use invert_model::tokenizer::ClipTokenizer;

use crate::paper_experiment::ClipFeatures;

/// A CLIP model ready to score images and texts.
pub struct ClipScorer {
    /// The model, with a tokenizer (the folder's, or CLIP's own BPE when it has none).
    pub clip: LoadedClip,
    /// True when the folder had no tokenizer and CLIP's own BPE (bundled with invert, the one
    /// every OpenAI CLIP and Stable Diffusion 1.x uses) stands in.
    pub bundled_tokenizer: bool,
    pub device: Device,
    /// Images encoded together.
    pub batch_size: usize,
}

impl ClipScorer {
    /// Loads a transformers CLIP folder or an OpenAI / open_clip checkpoint.
    pub fn load(path: &Path, device: &Device) -> Result<Self, ClipLoadError> {
        let mut clip = load_clip(path, &ClipLoadOptions::default(), device)?;
        let bundled_tokenizer = clip.tokenizer.is_none();
        if bundled_tokenizer {
            clip.tokenizer = Some(ClipTokenizer::bundled());
        }
        Ok(Self {
            clip,
            bundled_tokenizer,
            device: device.clone(),
            batch_size: 16,
        })
    }
}

/// The rows of `[n, width]` features.
fn rows(features: Tensor<2>) -> Vec<Vec<f32>> {
    let [n, width] = features.dims();
    let values = features
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 features");
    (0..n)
        .map(|i| values[i * width..(i + 1) * width].to_vec())
        .collect()
}

impl ClipFeatures for ClipScorer {
    fn image_features(&self, images: &[RgbImage]) -> Result<Vec<Vec<f32>>, String> {
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(self.batch_size.max(1)) {
            let views: Vec<ClipRgb> = chunk
                .iter()
                .map(|im| ClipRgb {
                    width: im.width() as usize,
                    height: im.height() as usize,
                    rgb: im.as_raw(),
                })
                .collect();
            let features = self
                .clip
                .image_features(&views, &self.device)
                .map_err(|e| e.to_string())?;
            out.extend(rows(features));
        }
        Ok(out)
    }

    fn text_features(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let features = self
            .clip
            .text_features(&texts, &self.device)
            .map_err(|e| e.to_string())?;
        Ok(rows(features))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use invert_model::weights::TensorReader;
    use invert_model::weights::safetensors_file::SafetensorsFile;

    /// The tiny random CLIP and transformers' outputs for it (scripts/make_clip_fixtures.py).
    fn fixtures() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../invert-model/tests/fixtures/clip")
    }

    fn golden(name: &str) -> Vec<Vec<f32>> {
        let g = SafetensorsFile::open(&fixtures().join("golden.safetensors")).unwrap();
        let shape = g.meta(name).unwrap().shape.clone();
        let v = g.read_f32(name).unwrap();
        v.chunks(shape[1]).map(<[f32]>::to_vec).collect()
    }

    fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .flatten()
            .zip(b.iter().flatten())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn image_features_of_pngs_match_transformers_in_any_batch() {
        let mut scorer = ClipScorer::load(&fixtures().join("tiny-clip"), &Device::flex()).unwrap();
        let images: Vec<RgbImage> = ["odd-50x37", "photo-300x200", "large-263x241"]
            .iter()
            .map(|n| {
                image::open(fixtures().join(format!("images/{n}.png")))
                    .unwrap()
                    .to_rgb8()
            })
            .collect();
        let want = golden("image.image_embeds");
        let together = scorer.image_features(&images).unwrap();
        assert!(max_diff(&together, &want) < 1e-4);
        scorer.batch_size = 2;
        let in_twos = scorer.image_features(&images).unwrap();
        assert!(max_diff(&in_twos, &want) < 1e-4);
    }

    #[test]
    fn text_features_match_transformers() {
        let scorer = ClipScorer::load(&fixtures().join("tiny-clip"), &Device::flex()).unwrap();
        assert!(
            !scorer.bundled_tokenizer,
            "the folder has its own tokenizer"
        );
        let texts = ["a photo of a cat", "a drawing of a dog on the beach"].map(String::from);
        let got = scorer.text_features(&texts).unwrap();
        // rows 0 and 1 of the golden ids are these prompts (row 2 is random ids)
        assert!(max_diff(&got, &golden("text.text_embeds")[..2]) < 1e-4);
    }
}
