//! SDXL's `UNet2DConditionModel` options against diffusers (issue 20): a random tiny U-Net from
//! `scripts/make_sdxl_unet_fixtures.py` with `addition_embed_type: "text_time"`,
//! `transformer_layers_per_block` per block, a first block without attention, linear
//! projections and `upcast_attention: null`. The noise prediction with the added conditions
//! (pooled text embedding and the six micro-conditioning numbers), from the diffusers folder and
//! from its single-file (LDM) twin, whose `label_emb` keys fill `add_embedding`.

mod common;

use std::sync::Arc;

use burn::prelude::*;
use burn::tensor::DType;
use common::{Golden, assert_close, assert_identical, fixture};
use invert_model::loading::LoadOptions;
use invert_model::loading::apply::Assignment;
use invert_model::loading::diffusers_folder::{load_module, load_unet};
use invert_model::unet::{AddedConditions, keys};
use invert_model::weights::TensorReader;
use invert_model::weights::safetensors_file::SafetensorsFile;

const TOL: f32 = 1e-4;

fn prediction(
    unet: &invert_model::unet::UNet2DConditionModel,
    g: &Golden,
    device: &Device,
) -> Tensor<4> {
    let added = AddedConditions {
        text_embeds: g.f32("text_embeds", device),
        time_ids: g.f32("time_ids", device),
    };
    unet.forward_with(
        g.f32("sample", device),
        g.f32("timesteps", device),
        g.f32("context", device),
        Some(&added),
    )
}

#[test]
fn sdxl_unet_matches_diffusers_from_folder_and_single_file() {
    let device = Device::flex();
    let (unet, cfg, report) =
        load_unet(&fixture("tiny-sdxl-unet"), &LoadOptions::default(), &device)
            .expect("the tiny SDXL unet folder loads");
    assert!(report.unexpected.is_empty(), "{:?}", report.unexpected);
    assert!(unet.needs_added_conditions());
    assert_eq!(cfg.pooled_text_dim(), Some(24));

    let g = Golden::open("tiny-sdxl-unet");
    let folder = prediction(&unet, &g, &device);
    assert_close(
        "noise prediction",
        folder.clone(),
        g.f32("noise_pred", &device),
        TOL,
    );

    // The single-file twin through the LDM key table.
    let path = fixture("tiny-sdxl-unet-ldm.safetensors");
    let file = SafetensorsFile::open(&path).unwrap();
    let names = file.names();
    let mapping = keys::unet_from_ldm(&names, cfg.layers_per_block, false).unwrap();
    assert!(mapping.unmapped.is_empty(), "{:?}", mapping.unmapped);
    assert!(
        mapping
            .mapped
            .iter()
            .any(|(k, _)| k == "add_embedding.linear_1.weight"),
        "label_emb.0.0 maps to add_embedding.linear_1"
    );
    let assignments = mapping
        .mapped
        .into_iter()
        .map(|(key, source)| Assignment {
            path: keys::to_burn_path(&key).unwrap(),
            source,
        })
        .collect();
    let reader: Arc<dyn TensorReader> = Arc::new(file);
    // Every parameter must be filled (a missing one is a load error).
    let (twin, _) = load_module(cfg.init(&device), reader, assignments, DType::F32, "ldm")
        .expect("the LDM twin loads");
    assert_identical("single-file twin", prediction(&twin, &g, &device), folder);
}

#[test]
#[should_panic(expected = "needs text_embeds and time_ids")]
fn sdxl_unet_refuses_to_run_without_added_conditions() {
    let device = Device::flex();
    let (unet, _, _) =
        load_unet(&fixture("tiny-sdxl-unet"), &LoadOptions::default(), &device).unwrap();
    let g = Golden::open("tiny-sdxl-unet");
    unet.forward(
        g.f32("sample", &device),
        g.f32("timesteps", &device),
        g.f32("context", &device),
    );
}
