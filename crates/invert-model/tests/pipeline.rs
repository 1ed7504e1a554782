//! End-to-end text-to-image parity with diffusers' `StableDiffusionPipeline`: the tiny SD1
//! model, the fixture's initial latents, PNDM, 10 steps, guidance 7.5, 64x64 px; invert's
//! decoded RGB8 image must be within 2/255 of diffusers' (`(images * 255).round()`) at every
//! pixel. Fixture: `scripts/make_pipeline_fixtures.py`
//! (`tests/fixtures/pipeline/tiny-sd1.safetensors`). Also: seeded noise is reproducible, and
//! invalid requests get `validate`'s errors.

mod common;

use burn::prelude::*;
use common::fixture;
use invert_model::embedding::read_embeddings;
use invert_model::loading::{LoadOptions, StableDiffusion, load};
use invert_model::pipeline::text_to_image::validate;
use invert_model::pipeline::{GenerateError, Image, Request, decode, sample_latents};
use invert_model::schedulers::{SamplerConfig, SamplerKind};
use invert_model::vocabulary::Vocabulary;
use invert_model::weights::TensorReader;
use invert_model::weights::safetensors_file::SafetensorsFile;

/// Per-pixel tolerance, in 1/255 steps (the acceptance bound).
const PIXEL_TOL: u8 = 2;

struct Fixture(SafetensorsFile);

impl Fixture {
    fn open() -> Self {
        Fixture(
            SafetensorsFile::open(&fixture("pipeline/tiny-sd1.safetensors"))
                .expect("pipeline fixture (scripts/make_pipeline_fixtures.py)"),
        )
    }

    fn shape(&self, name: &str) -> Vec<usize> {
        self.0
            .meta(name)
            .unwrap_or_else(|| panic!("fixture tensor {name}"))
            .shape
            .clone()
    }

    fn f32<const D: usize>(&self, name: &str, device: &Device) -> Tensor<D> {
        let values = self.0.read_f32(name).unwrap();
        Tensor::from_data(TensorData::new(values, self.shape(name)), device)
    }

    fn u8(&self, name: &str) -> (Vec<u8>, Vec<usize>) {
        (self.0.read_bytes(name).unwrap(), self.shape(name))
    }

    fn text(&self, key: &str) -> String {
        self.0
            .metadata()
            .get(key)
            .unwrap_or_else(|| panic!("fixture metadata {key}"))
            .clone()
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

fn request(prompt: &str, negative: &str) -> Request {
    Request {
        prompt: prompt.into(),
        negative: negative.into(),
        steps: 10,
        guidance: 7.5,
        seed: 0,
        width: 64,
        height: 64,
        sampler: SamplerConfig::new(SamplerKind::Pndm),
        clip_skip: 1,
        emphasis: Default::default(),
        init_latents: None,
    }
}

fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b).abs().max().into_scalar::<f32>()
}

/// Runs one fixture case (`plain` or `learned`) through invert and compares with diffusers.
fn check_case(case: &str) {
    let device = Device::flex();
    let g = Fixture::open();
    let sd = tiny_sd1(&device);
    // The embedding files diffusers loaded (`pipe.load_textual_inversion`), in order.
    let files = g.0.metadata().get(&format!("{case}.embeddings")).cloned();
    let files: Vec<&str> = files.iter().flat_map(|f| f.split(", ")).collect();
    let vocab = vocabulary(&sd, &files);
    let prompt = g.text(&format!("{case}.prompt"));
    let negative = g.text(&format!("{case}.negative_prompt"));

    // The prompt embeddings first: a mismatch here explains any later one.
    let (ids, dropped) = vocab
        .encode(std::slice::from_ref(&prompt), &device)
        .unwrap();
    assert!(dropped.is_empty());
    let (neg_ids, _) = vocab
        .encode(std::slice::from_ref(&negative), &device)
        .unwrap();
    let extra = vocab.extra(&device);
    let cond = sd.text_encoder.forward(ids, extra.as_ref(), 1);
    let uncond = sd.text_encoder.forward(neg_ids, extra.as_ref(), 1);
    let d_cond = max_abs_diff(cond, g.f32(&format!("{case}.prompt_embeds"), &device));
    let d_uncond = max_abs_diff(
        uncond,
        g.f32(&format!("{case}.negative_prompt_embeds"), &device),
    );
    println!("{case}: prompt embeddings max |diff| {d_cond:.3e}, negative {d_uncond:.3e}");
    assert!(
        d_cond < 1e-4 && d_uncond < 1e-4,
        "{case}: prompt embeddings differ from diffusers' (max |diff| {d_cond:e} / {d_uncond:e})"
    );

    let init: Tensor<4> = g.f32(&format!("{case}.init_latents"), &device);
    let count = init.dims()[0];
    let r = Request {
        init_latents: Some(init),
        ..request(&prompt, &negative)
    };
    let mut calls = Vec::new();
    let latents =
        sample_latents(&sd, &vocab, &r, count, &device, |i, n| calls.push((i, n))).unwrap();
    assert_eq!(calls.last().map(|&(i, n)| i == n), Some(true));
    let want_latents: Tensor<4> = g.f32(&format!("{case}.latents"), &device);
    let latent_scale = want_latents.clone().abs().max().into_scalar::<f32>();
    let d_latents = max_abs_diff(latents.clone(), want_latents);
    println!("{case}: final latents max |diff| {d_latents:.3e} (max |latent| {latent_scale:.2})");

    let images = decode(&sd, latents, r.seed);
    let (want, shape) = g.u8(&format!("{case}.image"));
    assert_eq!(shape, vec![count, 64, 64, 3]);
    assert_eq!(images.len(), count);
    let mut worst = 0u8;
    let mut off = 0usize;
    for (i, image) in images.iter().enumerate() {
        assert_eq!((image.width, image.height), (64, 64));
        let want = &want[i * 64 * 64 * 3..(i + 1) * 64 * 64 * 3];
        for (&a, &b) in image.rgb.iter().zip(want) {
            let d = a.abs_diff(b);
            worst = worst.max(d);
            off += usize::from(d > 0);
        }
    }
    println!(
        "{case}: decoded image max pixel |diff| {worst}/255 ({off} of {} values not exact)",
        want.len()
    );
    assert!(
        worst <= PIXEL_TOL,
        "{case}: a pixel differs from diffusers' by {worst}/255 (tolerance {PIXEL_TOL}/255)"
    );
}

#[test]
fn generation_matches_diffusers_pipeline() {
    check_case("plain");
}

#[test]
fn generation_with_learned_words_matches_diffusers_pipeline() {
    check_case("learned");
}

fn generate(sd: &StableDiffusion, vocab: &Vocabulary, r: &Request, device: &Device) -> Vec<Image> {
    let latents = sample_latents(sd, vocab, r, 1, device, |_, _| {}).unwrap();
    decode(sd, latents, r.seed)
}

#[test]
fn same_seed_same_image_other_seed_other_image() {
    let device = Device::flex();
    let sd = tiny_sd1(&device);
    let vocab = vocabulary(&sd, &[]);
    let r = Request {
        steps: 3,
        seed: 7,
        ..request("a red toy", "")
    };
    let a = generate(&sd, &vocab, &r, &device);
    let b = generate(&sd, &vocab, &r, &device);
    assert_eq!(a, b, "the same seed must give the same image");
    assert_eq!(a[0].seed, 7);
    let c = generate(&sd, &vocab, &Request { seed: 8, ..r }, &device);
    let changed = a[0]
        .rgb
        .iter()
        .zip(&c[0].rgb)
        .filter(|(x, y)| x != y)
        .count();
    println!("seed 7 vs 8: {changed} of {} values differ", a[0].rgb.len());
    assert!(
        changed > a[0].rgb.len() / 2,
        "different seeds gave nearly the same image"
    );
}

#[test]
fn invalid_requests_are_refused_with_clear_errors() {
    let device = Device::flex();
    let sd = tiny_sd1(&device);
    let vocab = vocabulary(&sd, &[]);
    let base = request("a toy", "");
    let refused = |r: &Request| {
        let err = sample_latents(&sd, &vocab, r, 1, &device, |_, _| {}).unwrap_err();
        assert_eq!(
            err.to_string(),
            validate(&sd, r, 1).unwrap_err().to_string(),
            "sample_latents reports validate's error"
        );
        err
    };

    let err = refused(&Request {
        width: 65,
        ..base.clone()
    });
    assert!(matches!(
        err,
        GenerateError::Size {
            width: 65,
            height: 64
        }
    ));
    assert_eq!(
        err.to_string(),
        "width and height must be positive multiples of 8 (got 65x64); try 64x64"
    );

    let err = refused(&Request {
        steps: 0,
        ..base.clone()
    });
    assert!(matches!(err, GenerateError::Steps));
    assert_eq!(err.to_string(), "--steps must be at least 1");

    let err = refused(&Request {
        guidance: -1.0,
        ..base.clone()
    });
    assert!(matches!(err, GenerateError::Guidance(g) if g == -1.0));
    assert_eq!(
        err.to_string(),
        "--cfg must be a finite number >= 0 (got -1)"
    );

    let err = refused(&Request {
        init_latents: Some(Tensor::zeros([1, 4, 16, 16], &device)),
        ..base.clone()
    });
    assert!(err.to_string().contains("[1, 4, 32, 32]"), "{err}");

    assert_eq!(validate(&sd, &base, 2).unwrap(), [2, 4, 32, 32]);
}

/// `--precision f16|bf16`: the frozen models compute in half precision while latents, guidance
/// and the sampler stay f32; the image stays close to diffusers' f32 one. Measured: f16 mean
/// 0.05/255, max 1/255; bf16 mean 0.47/255, max 4/255 (bf16 keeps 8 bits of mantissa).
#[test]
fn generation_in_half_precision_stays_close_to_f32() {
    use burn::tensor::DType;
    let device = Device::flex();
    let g = Fixture::open();
    let prompt = g.text("plain.prompt");
    let negative = g.text("plain.negative_prompt");
    let (want, _) = g.u8("plain.image");
    for (dtype, max_mean, max_worst) in [(DType::F16, 0.25, 3), (DType::BF16, 1.5, 12)] {
        let options = LoadOptions {
            dtype,
            ..Default::default()
        };
        let sd = load(&fixture("tiny-sd1"), &options, &device).unwrap();
        let vocab = vocabulary(&sd, &[]);
        let init: Tensor<4> = g.f32("plain.init_latents", &device);
        let count = init.dims()[0];
        let r = Request {
            init_latents: Some(init),
            ..request(&prompt, &negative)
        };
        let latents = sample_latents(&sd, &vocab, &r, count, &device, |_, _| {}).unwrap();
        assert_eq!(latents.dtype(), DType::F32, "latents stay f32");
        let images = decode(&sd, latents, r.seed);
        let got: Vec<u8> = images.iter().flat_map(|i| i.rgb.iter().copied()).collect();
        assert_eq!(got.len(), want.len());
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        let mean = got
            .iter()
            .zip(&want)
            .map(|(a, b)| f64::from(a.abs_diff(*b)))
            .sum::<f64>()
            / want.len() as f64;
        println!("{dtype:?}: decoded image mean |diff| {mean:.3}/255, max {worst}/255");
        assert!(
            mean <= max_mean && worst <= max_worst,
            "{dtype:?}: mean {mean}/255 max {worst}/255 against f32 diffusers"
        );
    }
}

/// A1111's prompt syntax in generation: weight 1 changes nothing, emphasis changes the
/// conditioning of its token only up to the mean restoration, `BREAK` and long prompts make
/// more 77-token chunks, and a prompt and negative prompt of different lengths still generate.
#[test]
fn a1111_prompt_syntax_in_generation() {
    use invert_model::pipeline::prompt_encoding::{Emphasis, LearnedRows, encode_weighted_prompt};
    let device = Device::flex();
    let sd = tiny_sd1(&device);
    let vocab = vocabulary(&sd, &[]);
    let encode_with = |p: &str, emphasis| {
        encode_weighted_prompt(&sd, &vocab, p, LearnedRows::default(), 1, emphasis, &device)
            .unwrap()
            .context
    };
    let encode = |p: &str| encode_with(p, Emphasis::A1111);
    let plain = encode("a photo of a cat");
    assert_eq!(plain.dims()[1], 77);
    assert_eq!(
        encode("a photo of a (cat:1.0)").into_data(),
        plain.clone().into_data(),
        "weight 1 is no weight"
    );
    let weighted = encode("a photo of a (cat:1.5)");
    assert!(
        max_abs_diff(weighted, plain) > 1e-3,
        "emphasis changes the conditioning"
    );
    assert_eq!(encode("a photo BREAK of a cat").dims()[1], 154);
    // ComfyUI's rule: weight 0 gives the empty prompt's output at that position, weight 1 the
    // token's own; A1111's rule differs from it.
    let comfy = encode_with("a photo of a (cat:1.5)", Emphasis::Comfy);
    assert!(max_abs_diff(comfy.clone(), encode("a photo of a (cat:1.5)")) > 1e-4);
    let zero = encode_with("(a photo of a cat:0)", Emphasis::Comfy);
    let empty = encode_with("", Emphasis::A1111);
    // Positions 1..8 carry the words (a pho to of a c at, weight 0), BOS is never weighted.
    let words = |t: Tensor<3>| t.slice([0..1, 1..8, 0..32]);
    assert!(max_abs_diff(words(zero), words(empty)) < 1e-5);
    let long = ["red"; 100].join(" "); // one token each in tiny-sd1's BPE
    assert_eq!(encode(&long).dims()[1], 154);

    let r = Request {
        steps: 2,
        ..request(&long, "(blurry:1.2)")
    };
    let latents = sample_latents(&sd, &vocab, &r, 2, &device, |_, _| {}).unwrap();
    assert_eq!(latents.dims()[0], 2);
}
