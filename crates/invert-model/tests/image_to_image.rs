//! Image-to-image parity with diffusers' `StableDiffusionImg2ImgPipeline`: the tiny SD1 model,
//! the committed 32x24 init picture, strength 0.6, 10 steps, guidance 7.5, every sampler
//! (ddim, pndm, euler, euler-a, dpm++2m, and the Karras variants), with invert's seeded noise
//! fed to diffusers in place of torch's (fixture: `scripts/make_img2img_fixtures.py`,
//! `tests/fixtures/pipeline/tiny-sd1-img2img.safetensors`). invert's decoded RGB8 image must be
//! within 2/255 of diffusers' at every pixel. Also: the request checks and their messages, and
//! per-image seeds within a batch.

mod common;

use burn::prelude::*;
use common::fixture;
use invert_model::loading::{LoadOptions, StableDiffusion, load};
use invert_model::pipeline::{
    GenerateError, Image, ImageToImage, NoiseGenerator, NoiseSource, Request, SeededNoise, decode,
    default_size, get_timesteps, init_sampler, load_init_image, preprocess,
    sample_latents_from_image, validate_image_to_image,
};
use invert_model::schedulers::{SamplerConfig, SamplerKind};
use invert_model::vocabulary::Vocabulary;
use invert_model::weights::TensorReader;
use invert_model::weights::safetensors_file::SafetensorsFile;

/// Per-pixel tolerance, in 1/255 steps (the acceptance bound).
const PIXEL_TOL: u8 = 2;
/// Final latents: max |diff| relative to the largest latent (measured: at most 2.5e-6).
const LATENT_TOL: f32 = 1e-4;

/// The fixture's cases: invert's sampler settings for each.
const CASES: [(&str, SamplerKind, bool); 7] = [
    ("ddim", SamplerKind::Ddim, false),
    ("pndm", SamplerKind::Pndm, false),
    ("euler", SamplerKind::Euler, false),
    ("euler-a", SamplerKind::EulerAncestral, false),
    ("dpm++2m", SamplerKind::DpmPlusPlus2M, false),
    ("euler-karras", SamplerKind::Euler, true),
    ("dpm++2m-karras", SamplerKind::DpmPlusPlus2M, true),
];

struct Fixture(SafetensorsFile);

impl Fixture {
    fn open() -> Self {
        Fixture(
            SafetensorsFile::open(&fixture("pipeline/tiny-sd1-img2img.safetensors"))
                .expect("img2img fixture (scripts/make_img2img_fixtures.py)"),
        )
    }

    fn f32(&self, name: &str, device: &Device) -> Tensor<4> {
        let shape = self.0.meta(name).expect("fixture tensor").shape.clone();
        Tensor::from_data(
            TensorData::new(self.0.read_f32(name).unwrap(), shape),
            device,
        )
    }

    fn text(&self, key: &str) -> String {
        self.0
            .metadata()
            .get(key)
            .unwrap_or_else(|| panic!("fixture metadata {key}"))
            .clone()
    }

    fn number<T: std::str::FromStr>(&self, key: &str) -> T {
        self.text(key)
            .parse()
            .unwrap_or_else(|_| panic!("fixture metadata {key} is a number"))
    }
}

fn tiny_sd1(device: &Device) -> StableDiffusion {
    load(&fixture("tiny-sd1"), &LoadOptions::default(), device).expect("loading tiny-sd1")
}

fn vocabulary(sd: &StableDiffusion) -> Vocabulary {
    Vocabulary::for_model(sd).unwrap()
}

/// The fixture's request and init picture (read and prepared as the CLI does).
fn request(
    g: &Fixture,
    kind: SamplerKind,
    karras: bool,
    device: &Device,
) -> (Request, ImageToImage) {
    let rgb = load_init_image(&fixture(&format!("pipeline/{}", g.text("init_image")))).unwrap();
    let (width, height) = default_size(&rgb);
    assert_eq!((width, height), (g.number("width"), g.number("height")));
    let r = Request {
        prompt: g.text("prompt"),
        negative: g.text("negative_prompt"),
        steps: g.number("steps"),
        guidance: g.number("guidance_scale"),
        seed: g.number("seed"),
        width,
        height,
        sampler: SamplerConfig::new(kind).with_karras(karras),
        clip_skip: 1,
        emphasis: Default::default(),
        init_latents: None,
    };
    let init = ImageToImage {
        image: preprocess(&rgb, width, height, device),
        strength: g.number("strength"),
    };
    (r, init)
}

fn max_abs_diff(a: Tensor<4>, b: Tensor<4>) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b).abs().max().into_scalar::<f32>()
}

#[test]
fn image_to_image_matches_diffusers_for_every_sampler() {
    let device = Device::flex();
    let g = Fixture::open();
    let sd = tiny_sd1(&device);
    let vocab = vocabulary(&sd);

    // The generator the fixture script ported, then the scaled posterior sample: a mismatch
    // here explains any later one.
    let seed: u64 = g.number("seed");
    let mut generator = NoiseGenerator::new(seed);
    let first: Vec<f64> = (0..4).map(|_| generator.normal() as f32 as f64).collect();
    let want: Vec<f64> = serde_json::from_str(&g.text("noise.first_values")).unwrap();
    assert_eq!(first, want, "the fixture script's port of NoiseGenerator");
    let (_, init) = request(&g, SamplerKind::Ddim, false, &device);
    let posterior = sd.vae.encode(init.image.clone());
    let mut noise = SeededNoise::new(seed, 1);
    let shape = posterior.mean.dims();
    let sample = posterior
        .sample_with(noise.draw(shape, &device))
        .mul_scalar(sd.vae.scaling_factor);
    let d = max_abs_diff(sample, g.f32("init_latents", &device));
    println!("scaled posterior sample max |diff| {d:.3e}");
    assert!(d < 1e-4, "init latents differ from diffusers' by {d}");

    for (name, kind, karras) in CASES {
        let (r, init) = request(&g, kind, karras, &device);
        // The timesteps that run: `timesteps[t_start:]` (Karras' float timesteps may differ in
        // their last float32 bit, see `schedulers/mod.rs`).
        let (t_start, _) = get_timesteps(r.steps, init.strength);
        let sampler = init_sampler(&sd, &r).unwrap();
        let ran = &sampler.timesteps()[t_start..];
        let want: Vec<f64> = serde_json::from_str(&g.text(&format!("{name}.timesteps"))).unwrap();
        assert_eq!(ran.len(), want.len(), "{name}: steps run");
        for (a, b) in ran.iter().zip(&want) {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{name}: timesteps {ran:?} vs {want:?}"
            );
        }

        let mut calls = Vec::new();
        let mut noise = SeededNoise::new(r.seed, 1);
        let latents = sample_latents_from_image(&sd, &vocab, &r, &init, 1, &mut noise, |i, n| {
            calls.push((i, n))
        })
        .unwrap();
        assert_eq!(
            calls.len(),
            want.len(),
            "{name}: one progress call per step"
        );
        assert_eq!(calls.last(), Some(&(want.len(), want.len())));
        let want_latents = g.f32(&format!("{name}.latents"), &device);
        let scale = want_latents.clone().abs().max().into_scalar::<f32>();
        let d_latents = max_abs_diff(latents.clone(), want_latents);

        let image = &decode(&sd, latents, r.seed)[0];
        assert_eq!((image.width, image.height), (r.width, r.height));
        let want = g.0.read_bytes(&format!("{name}.image")).unwrap();
        assert_eq!(want.len(), image.rgb.len());
        let worst = image
            .rgb
            .iter()
            .zip(&want)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        println!(
            "{name}: final latents max |diff| {d_latents:.3e} (max |latent| {scale:.2}), \
             image max pixel |diff| {worst}/255"
        );
        assert!(
            d_latents <= LATENT_TOL * scale.max(1.0),
            "{name}: latents differ from diffusers' by {d_latents}"
        );
        assert!(
            worst <= PIXEL_TOL,
            "{name}: a pixel differs from diffusers' by {worst}/255 (tolerance {PIXEL_TOL}/255)"
        );
    }
}

/// Image i of a batch uses seed + i for all its draws (posterior sample, add_noise, ancestral
/// steps), so it is the same image made alone (up to the float rounding of a batched matmul: a
/// pixel may land on the other side of a rounding boundary, at most 1/255); other seeds give
/// other images.
#[test]
fn each_image_of_a_batch_has_its_own_seed() {
    let device = Device::flex();
    let g = Fixture::open();
    let sd = tiny_sd1(&device);
    let vocab = vocabulary(&sd);
    let (r, init) = request(&g, SamplerKind::EulerAncestral, false, &device);
    let r = Request { steps: 4, ..r };
    let run = |seed: u64, count: usize| {
        let r = Request { seed, ..r.clone() };
        let mut noise = SeededNoise::new(seed, count);
        let latents =
            sample_latents_from_image(&sd, &vocab, &r, &init, count, &mut noise, |_, _| {})
                .unwrap();
        decode(&sd, latents, seed)
    };
    let batch = run(5, 2);
    let alone = run(6, 1);
    let differs = |a: &Image, b: &Image| {
        assert_eq!((a.width, a.height), (b.width, b.height));
        let diffs: Vec<u8> = a
            .rgb
            .iter()
            .zip(&b.rgb)
            .map(|(x, y)| x.abs_diff(*y))
            .collect();
        (
            diffs.iter().filter(|d| **d > 0).count(),
            diffs.into_iter().max().unwrap_or(0),
        )
    };
    let (count, worst) = differs(&batch[1], &alone[0]);
    assert!(
        worst <= 1 && count <= 3,
        "image 1 of seed 5 is not seed 6 alone: {count} values differ, by up to {worst}/255"
    );
    let changed = batch[0]
        .rgb
        .iter()
        .zip(&batch[1].rgb)
        .filter(|(a, b)| a != b)
        .count();
    assert!(
        changed > batch[0].rgb.len() / 4,
        "seeds 5 and 6 gave nearly the same image"
    );
}

#[test]
fn invalid_image_to_image_requests_are_refused_with_clear_errors() {
    let device = Device::flex();
    let g = Fixture::open();
    let sd = tiny_sd1(&device);
    let vocab = vocabulary(&sd);
    let (r, init) = request(&g, SamplerKind::Ddim, false, &device);
    let refused = |r: &Request, init: &ImageToImage| {
        let err = validate_image_to_image(&sd, r, init, 1).unwrap_err();
        let mut noise = SeededNoise::new(0, 1);
        let again =
            sample_latents_from_image(&sd, &vocab, r, init, 1, &mut noise, |_, _| {}).unwrap_err();
        assert_eq!(
            err.to_string(),
            again.to_string(),
            "the pipeline reports validate's error"
        );
        err
    };
    let with_strength = |strength| ImageToImage {
        strength,
        ..init.clone()
    };

    for bad in [0.0, 1.5, -0.2, f64::NAN] {
        let err = refused(&r, &with_strength(bad));
        assert!(matches!(err, GenerateError::Strength(_)), "{bad}: {err}");
        assert!(
            err.to_string()
                .starts_with("--strength must be a number in (0, 1]"),
            "{err}"
        );
    }
    let err = refused(&r, &with_strength(0.05));
    assert_eq!(
        err.to_string(),
        "--strength 0.05 with --steps 10 runs no denoising step (int(steps * strength) = 0); \
         raise --strength to at least 0.1 or --steps to at least 20"
    );
    let err = refused(
        &Request {
            width: 40,
            ..r.clone()
        },
        &init,
    );
    assert_eq!(
        err.to_string(),
        "the init image has shape [1, 3, 24, 32]; this request needs [1 or 1, 3, 24, 40] \
         (RGB in [-1, 1] at the requested size)"
    );
    let err = refused(
        &Request {
            width: 30,
            ..r.clone()
        },
        &init,
    );
    assert!(matches!(err, GenerateError::Size { .. }), "{err}");
    let err = refused(
        &Request {
            init_latents: Some(Tensor::zeros([1, 4, 12, 16], &device)),
            ..r.clone()
        },
        &init,
    );
    assert!(matches!(err, GenerateError::InitLatentsAndImage), "{err}");
    // Strength 1 runs every step.
    assert_eq!(
        validate_image_to_image(&sd, &r, &with_strength(1.0), 1).unwrap(),
        ([1, 4, 12, 16], 0)
    );
}

/// SDXL takes the same path (`StableDiffusionXLImg2ImgPipeline` without `denoising_start`): the
/// tiny SDXL model makes a picture-sized image, the same seed the same one, and a lower
/// strength keeps the picture's latents closer. No diffusers fixture: the steps are those of
/// SD1 above, and SDXL's conditioning those of text-to-image (`parity_sdxl_pipeline.rs`).
#[test]
fn sdxl_image_to_image_runs_end_to_end() {
    let device = Device::flex();
    let g = Fixture::open();
    let options = LoadOptions {
        variant: Some("fp16".into()),
        ..Default::default()
    };
    let sd = load(&fixture("tiny-sdxl"), &options, &device).expect("the tiny SDXL folder loads");
    let vocab = Vocabulary::for_model(&sd).unwrap();
    let (r, init) = request(&g, SamplerKind::Euler, false, &device);
    let r = Request { steps: 4, ..r };
    let run = |strength: f64| {
        let init = ImageToImage {
            strength,
            ..init.clone()
        };
        let mut noise = SeededNoise::new(r.seed, 1);
        sample_latents_from_image(&sd, &vocab, &r, &init, 1, &mut noise, |_, _| {}).unwrap()
    };
    let (low, high) = (run(0.25), run(1.0));
    assert_eq!(low.dims(), [1, 4, 12, 16]);
    let a = decode(&sd, low.clone(), r.seed);
    assert_eq!((a[0].width, a[0].height), (32, 24));
    assert_eq!(
        a,
        decode(&sd, run(0.25), r.seed),
        "the same seed, the same image"
    );
    let clean = sd
        .vae
        .encode(init.image.clone())
        .mean
        .mul_scalar(sd.vae.scaling_factor);
    let (d_low, d_high) = (max_abs_diff(low, clean.clone()), max_abs_diff(high, clean));
    println!("SDXL: max |latents - picture's| at strength 0.25 {d_low:.3}, at 1.0 {d_high:.3}");
    assert!(d_low < d_high, "strength 0.25 strays further than 1.0");
}
