//! SDXL textual inversion: the gradient of the training loss with respect to the word's rows in
//! **both** token tables equals PyTorch autograd's (issue 20).
//!
//! `invert-model/tests/fixtures/golden/tiny-sdxl.safetensors` (scripts/make_sdxl_pipeline_fixtures.py)
//! holds, under `ti.*`, the loss of diffusers' `textual_inversion_sdxl.py` on the tiny SDXL
//! model: both encoders' penultimate states concatenated, the pooled `text_embeds` of the second
//! at the end-of-text position, per-sample `time_ids` from each image's original size and crop,
//! epsilon MSE; and `d loss / d v1` `[1, 8]`, `d loss / d v2` `[1, 16]` for the learned word's
//! rows `learned.v1`, `learned.v2`. Here the trainer's batch is replaced by the fixture's.

mod common;

use std::path::PathBuf;

use burn::prelude::*;
use common::*;
use invert_model::loading::{LoadOptions, load};
use invert_model::weights::TensorReader;
use invert_model::weights::safetensors_file::SafetensorsFile;
use invert_train::optimizer::OptimizerState;
use invert_train::trainer::{Batch, Trainer};

/// The acceptance bound: max |g - g_ref| / max |g_ref|, for each table.
const TOL: f32 = 1e-3;

fn tiny_sdxl() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../invert-model/tests/fixtures/tiny-sdxl")
}

fn golden() -> SafetensorsFile {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../invert-model/tests/fixtures/golden/tiny-sdxl.safetensors");
    SafetensorsFile::open(&p).expect("golden/tiny-sdxl.safetensors")
}

fn relative_error(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let diff = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    diff / want.iter().map(|v| v.abs()).fold(0.0, f32::max)
}

#[test]
fn sdxl_gradient_for_both_tables_matches_pytorch() {
    let g = golden();
    let read = |k: &str| g.read_f32(k).unwrap();
    let device = device();
    let tmp = TempDir::new("gradient-sdxl");
    let (folder, images) = image_folder(tmp.path(), &[[90, 120, 200]]);
    let mut config = config(&folder, &tmp.path().join("out"), "<sks>", 1);
    config.model = tiny_sdxl();
    config.resolution = Some(16);
    let options = LoadOptions {
        variant: Some("fp16".into()),
        ..Default::default()
    };
    let sd = load(&tiny_sdxl(), &options, &device).unwrap();
    let mut trainer = Trainer::new(config, sd, &images, device.clone()).unwrap();
    assert_eq!(trainer.params.len(), 8 + 16, "rows in both tables");
    let init: Vec<f32> = [read("learned.v1"), read("learned.v2")].concat();
    trainer.restore(0, init, OptimizerState::default());

    let prompts = vec![
        "a photo of <sks>".to_string(),
        "a rendering of a <sks>".to_string(),
    ];
    let (ids, _) = trainer.vocab.encode(&prompts, &device).unwrap();
    let ids = ids
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .unwrap();
    assert_eq!(ids, i64s(&g, "ti.ids_1"), "first tokenizer");
    let second = trainer
        .vocab
        .second
        .as_ref()
        .expect("SDXL's second tokenizer");
    let (ids, _) = second.encode(&prompts, &device).unwrap();
    let ids = ids
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .unwrap();
    assert_eq!(
        ids,
        i64s(&g, "ti.ids_2"),
        "second tokenizer (pads with `!`)"
    );

    let t4 = |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, [2, 4, 12, 16]), &device);
    let time_ids = read("ti.time_ids");
    let batch = Batch {
        latents: t4(read("ti.latents")),
        noise: t4(read("ti.noise")),
        timesteps: i64s(&g, "ti.timesteps")
            .into_iter()
            .map(|t| t as usize)
            .collect(),
        prompts,
        weights: None,
        time_ids: time_ids.chunks(6).map(|r| r.try_into().unwrap()).collect(),
    };
    let (grad, loss) = trainer.gradient_of(&batch, 1.0);
    let want_loss = read("ti.loss")[0];
    let (g1, g2) = grad.split_at(8);
    let (r1, r2) = (
        relative_error(g1, &read("ti.grad_v1")),
        relative_error(g2, &read("ti.grad_v2")),
    );
    let loss_rel = (loss - want_loss).abs() / want_loss.abs();
    println!(
        "SDXL: loss {loss:.7} vs torch {want_loss:.7} (rel {loss_rel:.2e}); gradient relative \
         error v1 {r1:.2e}, v2 {r2:.2e}"
    );
    assert!(loss_rel <= TOL, "loss {loss} vs {want_loss}");
    assert!(r1 <= TOL, "first table: {r1:.3e}");
    assert!(r2 <= TOL, "second table: {r2:.3e}");
}
