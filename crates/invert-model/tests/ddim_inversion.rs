//! DDIM inversion parity with diffusers' `DDIMInverseScheduler` on the tiny SD1 model: the
//! committed 32x24 picture, its posterior mean, 5 inverse steps with the prompt's noise
//! predictions (guidance 1), then DDIM regeneration from the inverted noise; once with the
//! model's epsilon prediction and once with its scheduler set to v_prediction (SD 2.x 768-v
//! models, the bundled model). Fixture:
//! `scripts/make_ddim_inversion_fixtures.py`
//! (`tests/fixtures/pipeline/tiny-sd1-ddim-inversion.safetensors`).

mod common;

use burn::prelude::*;
use common::fixture;
use invert_model::loading::{LoadOptions, load};
use invert_model::pipeline::ddim_inversion::{DdimInversionConfig, invert_image, reconstruct};
use invert_model::pipeline::{GenerateError, decode, load_init_image, preprocess};
use invert_model::vocabulary::Vocabulary;
use invert_model::weights::TensorReader;
use invert_model::weights::safetensors_file::SafetensorsFile;

/// Inverted latents: max |diff| relative to the largest value (at least 1). Measured: 3e-7 for
/// the encoded picture, growing to 1.6e-4 (epsilon) and 5.0e-5 (v) after the 5th step: each inverse step divides the
/// sample by `sqrt(abar)` of its starting level, so float32 rounding grows along the way.
const LATENT_TOL: f32 = 5e-4;

/// Inversion and reconstruction against the fixture's case `prefix` ("" for epsilon, "v." for
/// v_prediction), the model's scheduler set to `prediction`.
fn check_case(g: &SafetensorsFile, prefix: &str, prediction: &str, device: &Device) {
    let meta = |k: &str| g.metadata().get(k).unwrap().clone();
    let tensor = |name: &str| {
        let shape = g.meta(name).unwrap().shape.clone();
        Tensor::<4>::from_data(TensorData::new(g.read_f32(name).unwrap(), shape), device)
    };
    let mut sd = load(&fixture("tiny-sd1"), &LoadOptions::default(), device).unwrap();
    sd.config.scheduler["prediction_type"] = serde_json::Value::String(prediction.into());
    let vocab = Vocabulary::for_model(&sd).unwrap();
    let rgb = load_init_image(&fixture(&format!("pipeline/{}", meta("image")))).unwrap();
    let image = preprocess(&rgb, 32, 24, device);
    let steps: usize = meta("steps").parse().unwrap();
    let config = DdimInversionConfig::new().with_steps(steps);

    let inverted = invert_image(&sd, &vocab, &image, &meta("prompt"), &config).unwrap();
    let want: Vec<f64> = serde_json::from_str(&meta(&format!("{prefix}timesteps"))).unwrap();
    assert_eq!(inverted.timesteps, want);
    assert_eq!(inverted.latents_per_step.len(), steps + 1);
    for (k, latents) in inverted.latents_per_step.iter().enumerate() {
        let want = tensor(&format!("{prefix}latents.{k}"));
        let scale = want.clone().abs().max().into_scalar::<f32>().max(1.0);
        let d = (latents.clone() - want).abs().max().into_scalar::<f32>();
        println!(
            "{prediction}: latents after {k} inverse steps: max |diff| {d:.3e} (scale {scale:.2})"
        );
        assert!(d <= LATENT_TOL * scale, "{prediction} step {k}: {d}");
    }

    let rec = reconstruct(&sd, &vocab, &image, &inverted).unwrap();
    let want_mse: f64 = meta(&format!("{prefix}reconstruction.mse"))
        .parse()
        .unwrap();
    println!(
        "{prediction}: reconstruction MSE {:.6} (diffusers {want_mse:.6}), PSNR {:.2} dB",
        rec.mse, rec.psnr
    );
    assert!((rec.mse - want_mse).abs() <= 1e-4 * want_mse.max(1e-3));
    let got = &decode(&sd, rec.latents, 0)[0];
    let want = g.read_bytes(&format!("{prefix}reconstruction")).unwrap();
    let worst = got
        .rgb
        .iter()
        .zip(&want)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    println!("{prediction}: reconstruction max pixel |diff| {worst}/255");
    assert!(
        worst <= 2,
        "{prediction}: reconstruction differs from diffusers' by {worst}/255"
    );
}

#[test]
fn ddim_inversion_matches_diffusers() {
    let device = Device::flex();
    let g = SafetensorsFile::open(&fixture("pipeline/tiny-sd1-ddim-inversion.safetensors"))
        .expect("fixture (scripts/make_ddim_inversion_fixtures.py)");
    check_case(&g, "", "epsilon", &device);
    check_case(&g, "v.", "v_prediction", &device);
}

#[test]
fn bad_pictures_are_refused() {
    let device = Device::flex();
    let sd = load(&fixture("tiny-sd1"), &LoadOptions::default(), &device).unwrap();
    let vocab = Vocabulary::for_model(&sd).unwrap();
    let rgb = load_init_image(&fixture("pipeline/img2img-init.png")).unwrap();
    let image = preprocess(&rgb, 32, 24, &device);
    let config = DdimInversionConfig::new().with_steps(5);
    // A picture of a size the model cannot take, or not one RGB picture, is refused.
    let odd = preprocess(&rgb, 30, 24, &device);
    let err = invert_image(&sd, &vocab, &odd, "a", &config).unwrap_err();
    assert!(matches!(err, GenerateError::Size { .. }), "{err}");
    let two = Tensor::cat(vec![image.clone(), image], 0);
    let err = invert_image(&sd, &vocab, &two, "a", &config).unwrap_err();
    assert!(matches!(err, GenerateError::InitImage { .. }), "{err}");
}
