//! `PaperExperiment` on the tiny random SD 1.x model: every (method, prompt) folder gets its
//! images and settings, the scores are the metrics of the images on disk, a second run reads
//! them back instead of generating, and a folder made with other settings is refused.
//!
//! CLIP here is a stand-in with transparent features (per-channel means and a few
//! colour statistics for images, character counts for texts): this test is about the
//! protocol, not CLIP (the CLIP model has its own parity tests).

use std::path::{Path, PathBuf};

use burn::prelude::*;
use image::RgbImage;
use invert_eval::Method;
use invert_eval::clip_metrics::{Reading, image_similarity, text_similarity};
use invert_eval::paper_experiment::{
    ClipFeatures, PaperError, PaperExperiment, PaperSettings, Subject, fill, squash_training_image,
};
use invert_model::embedding::read_embeddings;
use invert_model::loading::{LoadOptions, load};
use invert_model::schedulers::SamplerKind;
use invert_model::vocabulary::Vocabulary;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../invert-model/tests/fixtures")
        .join(rel)
}

/// Features anyone can recompute: image → [mean R, mean G, mean B, mean brightness², 1];
/// text → [letters, spaces, vowels, 1, 0].
struct StandIn;

impl ClipFeatures for StandIn {
    fn image_features(&self, images: &[RgbImage]) -> Result<Vec<Vec<f32>>, String> {
        Ok(images.iter().map(image_feature).collect())
    }

    fn text_features(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
        Ok(texts.iter().map(|t| text_feature(t)).collect())
    }
}

fn image_feature(im: &RgbImage) -> Vec<f32> {
    let n = (im.width() * im.height()) as f32;
    let mut f = vec![0.0f32; 5];
    for p in im.pixels() {
        for c in 0..3 {
            f[c] += p[c] as f32 / 255.0 / n;
        }
        let y = (p[0] as f32 + p[1] as f32 + p[2] as f32) / 765.0;
        f[3] += y * y / n;
    }
    f[4] = 1.0;
    f
}

fn text_feature(t: &str) -> Vec<f32> {
    let count = |f: &dyn Fn(char) -> bool| t.chars().filter(|&c| f(c)).count() as f32;
    vec![
        count(&|c| c.is_alphabetic()),
        count(&|c| c == ' '),
        count(&|c| "aeiou".contains(c)),
        1.0,
        0.0,
    ]
}

fn training_images() -> Vec<RgbImage> {
    vec![
        RgbImage::from_fn(40, 30, |x, y| {
            image::Rgb([(x * 6) as u8, (y * 8) as u8, 90])
        }),
        RgbImage::from_fn(24, 36, |x, _| image::Rgb([200, (x * 10) as u8, 30])),
    ]
}

#[test]
fn the_experiment_scores_the_images_it_writes_and_resumes() {
    let device = Device::flex();
    let sd = load(&fixture("tiny-sd1"), &LoadOptions::default(), &device).unwrap();
    let mut vocab = Vocabulary::for_model(&sd).unwrap();
    let emb = fixture("embeddings/diffusers_single.safetensors");
    for e in read_embeddings(&emb, None).unwrap() {
        vocab.add_embedding(&e, &emb).unwrap();
    }
    let out = std::env::temp_dir().join(format!("invert-paper-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let settings = PaperSettings {
        images_per_prompt: 3,
        steps: 2,
        guidance: 5.0,
        seed: 7,
        sampler: SamplerKind::Ddim,
        batch_size: 2,
        size: Some(16),
        reading: Reading::PairwiseMean,
    };
    let experiment = PaperExperiment {
        sd: &sd,
        vocab: &vocab,
        settings: settings.clone(),
        out: out.clone(),
        device: device.clone(),
    };
    let subject = Subject {
        name: "cat-toy".into(),
        token: "<cat-toy>".into(),
        init_word: Some("toy".into()),
        description: None,
        training: training_images(),
    };
    assert_eq!(
        subject.methods(),
        vec![Method::Learned, Method::InitWord, Method::PromptOnly]
    );
    let edits = vec![
        "a photo of {} on the moon".to_string(),
        "an oil painting of {}".to_string(),
    ];
    let clip = StandIn;
    let mut generated = 0;
    let scores = experiment
        .score_subject(&subject, &edits, &clip, |_, _, _| generated += 1)
        .unwrap();
    assert_eq!(scores.len(), 3);

    // Every score is the metric of the PNGs on disk (read back independently).
    let training: Vec<Vec<f32>> = subject
        .training
        .iter()
        .map(|im| image_feature(&squash_training_image(im)))
        .collect();
    let read = |dir: &Path| -> Vec<Vec<f32>> {
        (0..3)
            .map(|i| {
                let im = image::open(dir.join(format!("{i:03}.png")))
                    .unwrap()
                    .to_rgb8();
                assert_eq!(im.dimensions(), (16, 16));
                image_feature(&im)
            })
            .collect()
    };
    for s in &scores {
        let base = out.join("images/cat-toy").join(s.method.folder());
        let recon = read(&base.join("00-a-photo-of"));
        let expected = image_similarity(&training, &recon, Reading::PairwiseMean).unwrap();
        assert!(
            (s.reconstruction - expected).abs() < 1e-12,
            "{:?}",
            s.method
        );
        let moon = read(&base.join("01-a-photo-of-on-the-moon"));
        let oil = read(&base.join("02-an-oil-painting-of"));
        let t_moon = text_feature("a photo of on the moon");
        let t_oil = text_feature("an oil painting of");
        let e_moon = text_similarity(&t_moon, &moon, Reading::PairwiseMean).unwrap();
        let e_oil = text_similarity(&t_oil, &oil, Reading::PairwiseMean).unwrap();
        assert!((s.editability - (e_moon + e_oil) / 2.0).abs() < 1e-12);
        assert_eq!(
            s.edits[0].0,
            fill("a photo of {} on the moon", &subject.filler(s.method))
        );
        let settings_json =
            std::fs::read_to_string(base.join("00-a-photo-of/settings.json")).unwrap();
        assert!(settings_json.contains(&format!(
            "\"prompt\": \"{}\"",
            fill("a photo of {}", &subject.filler(s.method))
        )));
    }
    // The learned word changes the pictures: its reconstruction differs from the prompt alone.
    assert_ne!(scores[0].reconstruction, scores[2].reconstruction);

    // A second run generates nothing and gives the same numbers.
    generated = 0;
    let again = experiment
        .score_subject(&subject, &edits, &clip, |_, _, ready| {
            assert_eq!(ready, 3, "everything is read back");
            generated += 1
        })
        .unwrap();
    assert!(generated > 0);
    for (a, b) in scores.iter().zip(&again) {
        assert_eq!(a.reconstruction, b.reconstruction);
        assert_eq!(a.editability, b.editability);
    }

    // A missing image is made again, alone in its batch.
    let lost = out.join("images/cat-toy/learned/00-a-photo-of/002.png");
    let before = std::fs::read(&lost).unwrap();
    std::fs::remove_file(&lost).unwrap();
    experiment
        .score_subject(&subject, &edits, &clip, |_, _, _| {})
        .unwrap();
    assert_eq!(std::fs::read(&lost).unwrap(), before);

    // Other settings in the same folder are refused, naming the folder.
    let other = PaperExperiment {
        settings: PaperSettings {
            steps: 3,
            ..settings
        },
        ..experiment
    };
    let err = other
        .score_subject(&subject, &edits, &clip, |_, _, _| {})
        .unwrap_err();
    assert!(matches!(err, PaperError::OtherSettings { .. }), "{err}");
    assert!(err.to_string().contains("00-a-photo-of"), "{err}");
    let _ = std::fs::remove_dir_all(&out);
}
