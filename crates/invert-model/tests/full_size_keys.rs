//! The SD 1.5 architecture built from `configs/sd15` has exactly the parameter names and shapes
//! of the published checkpoint (1,130 tensors; key lists from the reference kit, see
//! tests/fixtures/keys/README.md) and its parameter counts.

use std::collections::BTreeMap;

use burn::prelude::*;
use invert_model::clip::{CLIPTextConfig, keys as clip_keys};
use invert_model::inspect::{ParamInfo, parameter_count, parameters};
use invert_model::loading::family::{Family, bundled_config};
use invert_model::loading::parse_config;
use invert_model::unet::{UNet2DConditionConfig, keys as unet_keys};
use invert_model::vae::{AutoencoderKLConfig, keys as vae_keys};

/// `name -> shape` from a key list file (component, name, shape, dtype; `#` headers).
fn key_list(file: &str) -> BTreeMap<String, Vec<usize>> {
    let path = format!("{}/tests/fixtures/keys/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            let shape = cols[2]
                .trim_matches(|c| c == '[' || c == ']')
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.trim().parse().unwrap())
                .collect();
            (cols[1].to_string(), shape)
        })
        .collect()
}

/// Compares the model's parameters, in checkpoint layout, with the key list after remapping.
fn check(
    params: Vec<ParamInfo>,
    expected: BTreeMap<String, Vec<usize>>,
    to_burn: fn(&str) -> Option<String>,
) {
    let expected: BTreeMap<String, (String, Vec<usize>)> = expected
        .into_iter()
        .filter_map(|(k, s)| to_burn(&k).map(|p| (p, (k, s))))
        .collect();
    let mut seen = 0;
    for p in &params {
        // Compare in the checkpoint's layout: norms' weight/bias, Linear [out, in].
        let (torch_path, shape) = p.torch_layout();
        let (key, want) = expected.get(&torch_path).unwrap_or_else(|| {
            panic!(
                "model parameter {} ({torch_path}) is not in the checkpoint key list",
                p.path
            )
        });
        assert_eq!(&shape, want, "shape of {key}");
        seen += 1;
    }
    assert_eq!(
        seen,
        expected.len(),
        "every checkpoint key maps to a parameter"
    );
}

fn config<C: burn::config::Config>(component: &str, defaults: C) -> C {
    let path = std::path::Path::new(component);
    parse_config(
        path,
        &bundled_config(Family::Sd1, component).unwrap(),
        defaults,
    )
    .unwrap()
}

#[test]
fn sd15_architecture_matches_published_keys_and_counts() {
    let device = Device::flex();
    let te = config("text_encoder", CLIPTextConfig::new());
    let unet = config("unet", UNet2DConditionConfig::new(vec![], vec![], vec![]));
    let vae = config("vae", AutoencoderKLConfig::new(vec![]));
    // Lazily initialised: nothing is allocated by building or listing.
    let (te, unet, vae) = (te.init(&device), unet.init(&device), vae.init(&device));

    let te_params = parameters(&te);
    let unet_params = parameters(&unet);
    let vae_params = parameters(&vae);
    assert_eq!(unet_params.len() + te_params.len() + vae_params.len(), 1130);

    check(
        te_params,
        key_list("sd15-keys.text_encoder.txt"),
        clip_keys::to_burn_path,
    );
    check(
        unet_params,
        key_list("sd15-keys.unet.txt"),
        unet_keys::to_burn_path,
    );
    check(
        vae_params,
        key_list("sd15-keys.vae.txt"),
        vae_keys::to_burn_path,
    );

    let (n_te, n_unet, n_vae) = (
        parameter_count(&te),
        parameter_count(&unet),
        parameter_count(&vae),
    );
    assert_eq!(n_unet, 859_520_964);
    assert_eq!(n_te, 123_060_480);
    assert_eq!(n_vae, 83_653_863);
    assert_eq!(n_unet + n_te + n_vae, 1_066_235_307);
}

/// A config of `configs/sdxl-base` (SDXL 1.0 base as published).
fn sdxl_config<C: burn::config::Config>(component: &str, defaults: C) -> C {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../configs/sdxl-base")
        .join(component)
        .join("config.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    parse_config(&path, &serde_json::from_str(&text).unwrap(), defaults).unwrap()
}

/// SDXL 1.0 base from `configs/sdxl-base`: the U-Net (`text_time` addition, 1/2/10 transformer
/// layers) and the second text encoder have the published names, shapes and parameter counts
/// (lists from `scripts/make_sdxl_key_lists.py`); the first text encoder and the VAE are SD
/// 1.5's architecture (the script checks their keys against SD 1.5's lists).
#[test]
fn sdxl_architecture_matches_published_keys_and_counts() {
    let device = Device::flex();
    let unet = sdxl_config("unet", UNet2DConditionConfig::new(vec![], vec![], vec![]));
    assert_eq!(unet.unsupported(), None);
    assert_eq!(unet.pooled_text_dim(), Some(1280));
    let te2 = sdxl_config("text_encoder_2", CLIPTextConfig::new());
    assert_eq!(te2.projection_dim, unet.pooled_text_dim().unwrap());
    let te1 = sdxl_config("text_encoder", CLIPTextConfig::new());
    assert_eq!(te1.hidden_size + te2.hidden_size, unet.cross_attention_dim);
    let vae = sdxl_config("vae", AutoencoderKLConfig::new(vec![]));

    let (unet, te2) = (unet.init(&device), te2.init_with_projection(&device));
    assert_eq!(parameter_count(&unet), 2_567_463_684);
    assert_eq!(parameter_count(&te2), 694_659_840);
    assert_eq!(parameter_count(&te1.init(&device)), 123_060_480);
    assert_eq!(parameter_count(&vae.init(&device)), 83_653_863);
    check(
        parameters(&unet),
        key_list("sdxl-keys.unet.txt"),
        unet_keys::to_burn_path,
    );
    check(
        parameters(&te2),
        key_list("sdxl-keys.text_encoder_2.txt"),
        clip_keys::to_burn_path_with_projection,
    );
}
