//! `saving::save_component` writes what `loading` reads: a model saved in f32 and loaded back
//! computes exactly what it computed before, and the files use diffusers' key names.

mod common;

use burn::prelude::*;
use burn::tensor::{DType, Distribution};
use common::fixture;
use invert_model::loading::{LoadOptions, load};
use invert_model::saving::{Component, save_component};
use invert_model::weights::TensorReader;
use invert_model::weights::safetensors_file::SafetensorsFile;

fn max_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

#[test]
fn a_saved_model_loads_back_and_computes_the_same() {
    let device = Device::flex();
    let src = fixture("tiny-sd1");
    let sd = load(&src, &LoadOptions::default(), &device).unwrap();
    let out = std::env::temp_dir().join(format!("invert-saving-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    for dir in ["scheduler", "text_encoder", "unet", "vae"] {
        std::fs::create_dir_all(out.join(dir)).unwrap();
    }
    std::fs::copy(src.join("model_index.json"), out.join("model_index.json")).unwrap();
    for f in [
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "unet/config.json",
        "vae/config.json",
    ] {
        std::fs::copy(src.join(f), out.join(f)).unwrap();
    }
    let te = out.join("text_encoder/model.safetensors");
    let unet = out.join("unet/diffusion_pytorch_model.safetensors");
    let vae = out.join("vae/diffusion_pytorch_model.safetensors");
    save_component(&sd.text_encoder, Component::TextEncoder, &te, DType::F32).unwrap();
    save_component(&sd.unet, Component::UNet, &unet, DType::F32).unwrap();
    save_component(&sd.vae, Component::Vae, &vae, DType::F32).unwrap();

    // diffusers' names, PyTorch layouts
    let names = SafetensorsFile::open(&unet).unwrap().names();
    assert!(
        names.iter().any(|n| n.contains(".ff.net.0.proj.weight")),
        "GEGLU key"
    );
    assert!(
        names.iter().any(|n| n.ends_with("norm1.weight")),
        "LayerNorm weight, not gamma"
    );
    assert!(
        !names
            .iter()
            .any(|n| n.contains("gamma") || n.contains("CrossAttn"))
    );
    let original =
        SafetensorsFile::open(&src.join("unet/diffusion_pytorch_model.fp16.safetensors")).unwrap();
    let mut expected = original.names();
    let mut got = names.clone();
    expected.sort();
    got.sort();
    assert_eq!(got, expected, "the same keys as the diffusers file");

    let back = load(&out, &LoadOptions::default(), &device).unwrap();
    let ids = Tensor::<2, Int>::from_data(
        TensorData::new((0..77i64).collect::<Vec<_>>(), [1, 77]),
        &device,
    );
    let ctx = sd.text_encoder.forward(ids.clone(), None, 1);
    assert_eq!(
        max_diff(ctx.clone(), back.text_encoder.forward(ids, None, 1)),
        0.0
    );
    device.seed(3);
    let x = Tensor::<4>::random([1, 4, 32, 32], Distribution::Normal(0.0, 1.0), &device);
    let t = Tensor::<1>::from_data(TensorData::new(vec![500f32], [1]), &device);
    let a = sd.unet.forward(x.clone(), t.clone(), ctx.clone());
    assert_eq!(max_diff(a, back.unet.forward(x.clone(), t, ctx)), 0.0);
    assert_eq!(max_diff(sd.vae.decode(x.clone()), back.vae.decode(x)), 0.0);
    std::fs::remove_dir_all(&out).ok();
}
