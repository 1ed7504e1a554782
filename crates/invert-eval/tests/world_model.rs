//! The committed world oracle (models/world-oracle) reads held-out renders at 97% or better per
//! attribute (and the bundled VAE's reconstructions of them as well as they allow), and the committed bundled model (models/world) loads and draws pictures of the
//! native size.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use invert_eval::{EvalSettings, Judge};
use invert_model::loading::{LoadOptions, load};
use invert_model::vocabulary::Vocabulary;
use invert_world::oracle::{self, OracleTraining};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn the_oracle_reads_every_attribute_of_held_out_pictures() {
    let device = Device::flex();
    let (model, config) = oracle::load(&repo().join("models/world-oracle"), &device).unwrap();
    let sd = load(
        &repo().join("models/world"),
        &LoadOptions::default(),
        &device,
    )
    .unwrap();
    // the held-out pictures of `invert world oracle`'s report (models/world-oracle/accuracy.json)
    let training = OracleTraining::default();
    let acc = oracle::train::measure(&model, &config, &training, Some(&sd.vae), &device);
    let decoded = acc.decoded.expect("measured with a VAE");
    for (a, name) in acc.attributes.iter().enumerate() {
        assert!(acc.clean[a] >= 0.97, "{name}, renders: {}", acc.clean[a]);
        // the VAE softens small circles towards squares and small stripes and outlines away
        // (93.5% and 93.2% read back; docs/WORLD.md, the oracle): no generated picture of this
        // model can do better there
        let floor = if matches!(name.as_str(), "shape" | "pattern") {
            0.93
        } else {
            0.97
        };
        assert!(
            decoded[a] >= floor,
            "{name}, VAE reconstructions: {}",
            decoded[a]
        );
    }
}

#[test]
fn the_bundled_model_loads_and_draws_native_size_pictures() {
    let device = Device::flex();
    let sd = load(
        &repo().join("models/world"),
        &LoadOptions::default(),
        &device,
    )
    .unwrap();
    let vocab = Vocabulary::for_model(&sd).unwrap();
    let (oracle, _) = oracle::load(&repo().join("models/world-oracle"), &device).unwrap();
    let judge = Judge {
        sd: &sd,
        vocab: &vocab,
        oracle: &oracle,
        settings: EvalSettings::default(),
        device: device.clone(),
    };
    let judged = judge.judge("a photo of a red circle", 1, 2).unwrap();
    assert_eq!(judged.images.len(), 2);
    assert_eq!((judged.images[0].width, judged.images[0].height), (32, 32));
    assert_eq!(judged.labels.len(), 2);
}
