//! Golden-value tests against diffusers/transformers: random-weight tiny models written by
//! `scripts/make_fixtures.py` with the reference outputs, compared on the flex backend in f32.
//! Tolerance: 1e-4 (absolute, relative for magnitudes above 1).

mod common;

use burn::prelude::*;
use common::{Golden, assert_close, assert_identical, fixture};
use invert_model::loading::{LoadOptions, StableDiffusion, load};

const TOL: f32 = 1e-4;

struct Outputs {
    last: Tensor<3>,
    penultimate: Tensor<3>,
    unet: Tensor<4>,
    mean: Tensor<4>,
    logvar: Tensor<4>,
    decoded: Tensor<4>,
}

fn run(model: &StableDiffusion, g: &Golden, device: &Device) -> Outputs {
    let ids = g.ids("te.input_ids", device);
    let last = model.text_encoder.forward(ids.clone(), None, 1);
    let penultimate = model.text_encoder.forward(ids, None, 2);
    let unet = model.unet.forward(
        g.f32("unet.sample", device),
        g.timesteps("unet.timesteps", device),
        g.f32("unet.context", device),
    );
    let posterior = model.vae.encode(g.f32("vae.image", device));
    let decoded = model.vae.decode(g.f32("vae.latent", device));
    Outputs {
        last,
        penultimate,
        unet,
        mean: posterior.mean,
        logvar: posterior.logvar,
        decoded,
    }
}

fn check_golden(name: &str, out: &Outputs, g: &Golden, device: &Device) {
    assert_close(
        &format!("{name} text last_hidden_state"),
        out.last.clone(),
        g.f32("te.last_hidden_state", device),
        TOL,
    );
    assert_close(
        &format!("{name} text penultimate"),
        out.penultimate.clone(),
        g.f32("te.penultimate", device),
        TOL,
    );
    assert_close(
        &format!("{name} unet noise prediction"),
        out.unet.clone(),
        g.f32("unet.out", device),
        TOL,
    );
    assert_close(
        &format!("{name} vae posterior mean"),
        out.mean.clone(),
        g.f32("vae.mean", device),
        TOL,
    );
    assert_close(
        &format!("{name} vae posterior logvar"),
        out.logvar.clone(),
        g.f32("vae.logvar", device),
        TOL,
    );
    assert_close(
        &format!("{name} vae decode"),
        out.decoded.clone(),
        g.f32("vae.decoded", device),
        TOL,
    );
}

fn check_identical(a: &Outputs, b: &Outputs) {
    assert_identical("text last", a.last.clone(), b.last.clone());
    assert_identical(
        "text penultimate",
        a.penultimate.clone(),
        b.penultimate.clone(),
    );
    assert_identical("unet", a.unet.clone(), b.unet.clone());
    assert_identical("vae mean", a.mean.clone(), b.mean.clone());
    assert_identical("vae logvar", a.logvar.clone(), b.logvar.clone());
    assert_identical("vae decode", a.decoded.clone(), b.decoded.clone());
}

fn load_with(path: &str, options: LoadOptions, device: &Device) -> StableDiffusion {
    load(&fixture(path), &options, device).unwrap_or_else(|e| panic!("loading {path}: {e}"))
}

#[test]
fn sd1_fp16_folder_and_ckpt_match_diffusers() {
    let device = Device::flex();
    let g = Golden::open("tiny-sd1");
    let folder = load_with("tiny-sd1", LoadOptions::default(), &device);
    let out = run(&folder, &g, &device);
    check_golden("sd1 folder (fp16 weights)", &out, &g, &device);

    let options = LoadOptions {
        config_dir: Some(fixture("tiny-sd1")),
        ..Default::default()
    };
    let single = load_with("tiny-sd1.ckpt", options.clone(), &device);
    let single_out = run(&single, &g, &device);
    check_identical(&out, &single_out);

    // `use_ema` (the checkpoint's EMA U-Net) is checked on the SDXL single file
    // (parity_sdxl_pipeline.rs), whose U-Net is small enough to carry an EMA copy.
}

#[test]
fn sd2_folder_and_single_file_match_diffusers() {
    let device = Device::flex();
    let g = Golden::open("tiny-sd2");
    let folder = load_with("tiny-sd2", LoadOptions::default(), &device);
    assert!(folder.config.unet.upcast_attention);
    let out = run(&folder, &g, &device);
    check_golden("sd2 folder (f32, linear proj, gelu)", &out, &g, &device);

    let options = LoadOptions {
        config_dir: Some(fixture("tiny-sd2")),
        ..Default::default()
    };
    let single = load_with("tiny-sd2.safetensors", options, &device);
    check_identical(&out, &run(&single, &g, &device));
}
