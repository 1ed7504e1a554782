//! Prompt-to-Prompt parity with diffusers' community `Prompt2PromptPipeline`
//! (examples/community/pipeline_prompt2prompt.py): the tiny SD1 model, PNDM, 10 steps,
//! guidance 7.5, 64x64 px, one initial latent shared by all prompts; for each controller
//! (replace, refine, reweight, local blend, and replace with learned words) invert's decoded
//! images must be within 2/255 of the reference's at every pixel. Because the tiny random model
//! reacts weakly to its prompt, each case also checks on the latents that the controller
//! acted: the edit is much closer to the reference's edit than to an uncontrolled generation
//! of the same edited prompt. Fixture: `scripts/make_p2p_fixtures.py`
//! (`tests/fixtures/p2p/tiny-sd1.safetensors`).

mod common;

use burn::prelude::*;
use common::fixture;
use invert_model::embedding::read_embeddings;
use invert_model::loading::{LoadOptions, StableDiffusion, load};
use invert_model::pipeline::{Request, decode, sample_latents};
use invert_model::prompt_to_prompt::{EditError, EditMode, EditRequest, edit_latents};
use invert_model::schedulers::{SamplerConfig, SamplerKind};
use invert_model::vocabulary::Vocabulary;
use invert_model::weights::TensorReader;
use invert_model::weights::safetensors_file::SafetensorsFile;
use serde_json::Value;

/// Per-pixel tolerance, in 1/255 steps (the acceptance bound).
const PIXEL_TOL: u8 = 2;

struct Fixture(SafetensorsFile);

impl Fixture {
    fn open() -> Self {
        Fixture(
            SafetensorsFile::open(&fixture("p2p/tiny-sd1.safetensors"))
                .expect("p2p fixture (scripts/make_p2p_fixtures.py)"),
        )
    }

    fn f32<const D: usize>(&self, name: &str, device: &Device) -> Tensor<D> {
        let shape = self.0.meta(name).expect(name).shape.clone();
        Tensor::from_data(
            TensorData::new(self.0.read_f32(name).unwrap(), shape),
            device,
        )
    }

    fn text(&self, key: &str) -> Option<String> {
        self.0.metadata().get(key).cloned()
    }

    fn json(&self, key: &str) -> Value {
        serde_json::from_str(&self.text(key).unwrap_or_else(|| panic!("metadata {key}"))).unwrap()
    }
}

fn tiny_sd1(device: &Device) -> StableDiffusion {
    load(&fixture("tiny-sd1"), &LoadOptions::default(), device).expect("loading tiny-sd1")
}

fn vocabulary(sd: &StableDiffusion, embeddings: &[&str]) -> Vocabulary {
    let mut vocab = Vocabulary::for_model(sd).unwrap();
    for name in embeddings {
        let path = fixture(&format!("embeddings/{name}"));
        for e in read_embeddings(&path, None).unwrap() {
            vocab.add_embedding(&e, &path).unwrap();
        }
    }
    vocab
}

fn base(prompt: &str, init: Tensor<4>) -> Request {
    Request {
        prompt: prompt.into(),
        negative: String::new(),
        steps: 10,
        guidance: 7.5,
        seed: 0,
        width: 64,
        height: 64,
        sampler: SamplerConfig::new(SamplerKind::Pndm),
        clip_skip: 1,
        emphasis: Default::default(),
        init_latents: Some(init),
    }
}

/// `create_controller`'s kwargs as an [`EditRequest`].
fn request(prompts: &[String], kwargs: &Value, init: Tensor<4>) -> EditRequest {
    let words = |key: &str| -> Vec<String> {
        kwargs[key]
            .as_array()
            .map(|a| a.iter().map(|w| w.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    };
    let (mode, reweight) = match kwargs["edit_type"].as_str().unwrap() {
        "replace" => (Some(EditMode::Replace), vec![]),
        "refine" => (Some(EditMode::Refine), vec![]),
        "reweight" => {
            let strengths = kwargs["equalizer_strengths"].as_array().unwrap();
            let w = words("equalizer_words")
                .into_iter()
                .zip(strengths)
                .map(|(w, s)| (w, s.as_f64().unwrap() as f32))
                .collect();
            (None, w)
        }
        other => panic!("edit type {other}"),
    };
    EditRequest {
        base: base(&prompts[0], init),
        edits: prompts[1..].to_vec(),
        mode,
        reweight,
        blend: words("local_blend_words"),
        blend_threshold: 0.3,
        cross_replace: kwargs["n_cross_replace"].as_f64().unwrap(),
        self_replace: kwargs["n_self_replace"].as_f64().unwrap(),
    }
}

fn max_abs(a: Tensor<4>, b: Tensor<4>) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).abs().max().into_scalar::<f32>()
}

fn check_case(case: &str) {
    let device = Device::flex();
    let g = Fixture::open();
    let sd = tiny_sd1(&device);
    let files = g.text(&format!("{case}.embeddings"));
    let files: Vec<&str> = files.iter().flat_map(|f| f.split(", ")).collect();
    let vocab = vocabulary(&sd, &files);
    let prompts: Vec<String> = serde_json::from_value(g.json(&format!("{case}.prompts"))).unwrap();
    let kwargs = g.json(&format!("{case}.kwargs"));
    let init: Tensor<4> = g.f32("init_latents", &device);
    let mut r = request(&prompts, &kwargs, init.clone());
    if let Some(t) = g.text(&format!("{case}.threshold")) {
        r.blend_threshold = t.parse().unwrap();
    }

    let mut calls = 0;
    let out = edit_latents(&sd, &vocab, &r, &device, |_, _| calls += 1).unwrap();
    assert_eq!(calls, 11, "PNDM: 10 steps, 11 U-Net calls");
    // The edits' latents (the fixture leaves the source's out).
    let n = prompts.len();
    let want: Tensor<4> = g.f32(&format!("{case}.latents"), &device);
    let edits = |t: Tensor<4>| t.slice(s![1..n, .., .., ..]);
    let d_latents = max_abs(edits(out.latents.clone()), want.clone());

    // The same edited prompt without any controller, from the same latents.
    let edit = want.clone().slice(s![n - 2..n - 1, .., .., ..]);
    let plain = sample_latents(
        &sd,
        &vocab,
        &base(&prompts[n - 1], init),
        1,
        &device,
        |_, _| {},
    )
    .unwrap();
    let effect = max_abs(plain, edit);
    println!("{case}: latents max |diff| {d_latents:.2e}; controller effect {effect:.2e}");
    assert!(
        d_latents < 2e-3,
        "{case}: latents differ from the reference by {d_latents}"
    );
    assert!(
        effect > 20.0 * d_latents.max(1e-4),
        "{case}: the controller barely acts ({effect:e} vs parity {d_latents:e})"
    );

    if !r.blend.is_empty() {
        // The local blend itself acts: without it the edit ends elsewhere.
        let unblended = EditRequest {
            blend: vec![],
            ..r.clone()
        };
        let out = edit_latents(&sd, &vocab, &unblended, &device, |_, _| {}).unwrap();
        let blend_effect = max_abs(edits(out.latents), want.clone());
        println!("{case}: local blend effect {blend_effect:.2e}");
        assert!(
            blend_effect > 20.0 * d_latents.max(1e-4),
            "{case}: the local blend barely acts ({blend_effect:e})"
        );
    }

    let images = decode(&sd, out.latents, 0);
    let (want_px, shape) = (
        g.0.read_bytes(&format!("{case}.image")).unwrap(),
        g.0.meta(&format!("{case}.image")).unwrap().shape.clone(),
    );
    assert_eq!(shape, vec![n, 64, 64, 3]);
    let worst = images
        .iter()
        .flat_map(|im| im.rgb.iter())
        .zip(&want_px)
        .map(|(&a, &b)| a.abs_diff(b))
        .max()
        .unwrap();
    println!("{case}: images max |diff| {worst}/255");
    assert!(
        worst <= PIXEL_TOL,
        "{case}: pixels differ from the reference by {worst}/255"
    );
}

#[test]
fn replace_matches_the_reference() {
    check_case("replace");
}

#[test]
fn refine_matches_the_reference() {
    check_case("refine");
}

#[test]
fn reweight_matches_the_reference() {
    check_case("reweight");
}

#[test]
fn local_blend_matches_the_reference() {
    check_case("blend");
}

#[test]
fn learned_words_match_the_reference() {
    check_case("learned");
}

#[test]
fn bad_edits_are_explained() {
    let device = Device::flex();
    let sd = tiny_sd1(&device);
    let vocab = vocabulary(&sd, &[]);
    let init = Tensor::<4>::zeros([1, 4, 32, 32], &device);
    let mut r = EditRequest {
        base: base("a cat on the grass", init),
        edits: vec!["a big cat on the grass".into()],
        mode: Some(EditMode::Replace),
        reweight: vec![],
        blend: vec![],
        blend_threshold: 0.3,
        cross_replace: 0.8,
        self_replace: 0.4,
    };
    let err = edit_latents(&sd, &vocab, &r, &device, |_, _| {}).unwrap_err();
    assert!(matches!(err, EditError::ReplaceWordCount { .. }), "{err}");
    assert!(err.to_string().contains("--mode refine"), "{err}");

    r.mode = Some(EditMode::Refine);
    r.blend = vec!["dog".into()];
    let err = edit_latents(&sd, &vocab, &r, &device, |_, _| {}).unwrap_err();
    assert!(
        matches!(&err, EditError::WordNotFound { word, .. } if word == "dog"),
        "{err}"
    );

    r.blend = vec![];
    r.cross_replace = 1.5;
    let err = edit_latents(&sd, &vocab, &r, &device, |_, _| {}).unwrap_err();
    assert!(matches!(err, EditError::Fraction { .. }), "{err}");
}
