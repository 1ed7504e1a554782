//! Golden-value test of a U-Net whose `layers_per_block` differs per block (`[2, 1, 1]`: down
//! blocks with 2, 1, 1 resnets, up blocks with 2, 2, 3) against diffusers. The standalone `unet/`
//! folder and the reference output are written by `scripts/make_unet_per_block_fixture.py`
//! (tiny random model, F16 weights; the reference is computed in f32 from the stored weights).
//! The folder is loaded with the same functions the diffusers-folder loader uses and run on the
//! flex backend in f32.

use std::path::PathBuf;

use burn::prelude::*;
use burn::tensor::DType;
use invert_model::loading::diffusers_folder::{assignments, load_module, open_component_weights};
use invert_model::loading::parse_config;
use invert_model::unet::unet_blocks::{DownBlock, UpBlock};
use invert_model::unet::{PerBlock, UNet2DConditionConfig, UNet2DConditionModel, keys};
use invert_model::weights::TensorReader;
use invert_model::weights::safetensors_file::SafetensorsFile;

/// Max |ours - diffusers| allowed on the noise prediction (outputs are of order one: max |out|
/// is 1.13). Measured: 9.5e-7 (flex backend, CPU, release build).
const TOL: f32 = 1e-4;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unet-per-block")
}

/// The `unet/` folder's parsed config and the model loaded from it, in f32.
fn load_unet(device: &Device) -> (UNet2DConditionConfig, UNet2DConditionModel) {
    let dir = fixture_dir().join("unet");
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).expect("unet/config.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("config.json is JSON");
    let cfg = parse_config(
        &config_path,
        &json,
        UNet2DConditionConfig::new(vec![], vec![], vec![]),
    )
    .expect("parse unet/config.json");
    assert_eq!(cfg.unsupported(), None, "config should be supported");

    let reader =
        open_component_weights(&dir, "diffusion_pytorch_model", None).expect("open unet weights");
    let a = assignments(reader.as_ref(), keys::to_burn_path);
    let (unet, report) = load_module(
        cfg.init(device),
        reader,
        a,
        DType::F32,
        "a diffusers U-Net folder",
    )
    .unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()));
    assert!(
        report.unexpected.is_empty(),
        "unused weights: {:?}",
        report.unexpected
    );
    (cfg, unet)
}

fn golden_f32<const D: usize>(g: &SafetensorsFile, name: &str, device: &Device) -> Tensor<D> {
    let shape = g
        .meta(name)
        .unwrap_or_else(|| panic!("golden tensor {name}"))
        .shape
        .clone();
    let values = g.read_f32(name).unwrap();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// The I64 timesteps as the float tensor `forward` takes.
fn golden_timesteps(g: &SafetensorsFile, device: &Device) -> Tensor<1> {
    let shape = g.meta("timesteps").expect("golden timesteps").shape.clone();
    let values: Vec<f32> = g
        .read_bytes("timesteps")
        .unwrap()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
        .collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

#[test]
fn per_block_layers_unet_matches_diffusers() {
    let device = Device::flex();
    let (cfg, unet) = load_unet(&device);

    assert_eq!(cfg.layers_per_block, PerBlock::Each(vec![2, 1, 1]));
    let down: Vec<usize> = unet
        .down_blocks
        .iter()
        .map(|b| match b {
            DownBlock::CrossAttn(b) => b.resnets.len(),
            DownBlock::Plain(b) => b.resnets.len(),
        })
        .collect();
    assert_eq!(down[0], 2, "down block 0 resnets");
    assert_eq!(down, [2, 1, 1], "down block resnets");
    let up: Vec<usize> = unet.up_blocks.iter().map(UpBlock::num_resnets).collect();
    assert_eq!(
        up,
        [2, 2, 3],
        "up block resnets (reversed layers_per_block + 1)"
    );

    let g = SafetensorsFile::open(&fixture_dir().join("golden.safetensors")).expect("golden file");
    let out = unet.forward(
        golden_f32(&g, "sample", &device),
        golden_timesteps(&g, &device),
        golden_f32(&g, "encoder_hidden_states", &device),
    );
    let expected: Tensor<4> = golden_f32(&g, "out", &device);
    assert_eq!(out.dims(), expected.dims(), "output shape");
    let d = (out - expected).abs().max().into_scalar::<f32>();
    println!("per-block U-Net noise prediction: max |diff| = {d:.3e}");
    assert!(
        d <= TOL,
        "per-block U-Net noise prediction: max |diff| {d:.3e} exceeds {TOL:.0e}"
    );
}
