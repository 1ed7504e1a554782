//! The committed world oracle (models/world-oracle) reads held-out renders at 97% or better per
//! attribute, and the committed bundled model (models/world) loads and draws pictures of the
//! native size.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use invert_model::loading::{LoadOptions, load};
use invert_model::vocabulary::Vocabulary;
use invert_train::eval::{EvalSettings, Judge};
use invert_train::oracle::{self, OracleTraining};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn the_oracle_reads_every_attribute_of_held_out_pictures() {
    let device = Device::flex();
    let (model, config) = oracle::load(&repo().join("models/world-oracle"), &device).unwrap();
    // the held-out pictures of `invert world oracle`'s report (models/world-oracle/accuracy.json)
    let training = OracleTraining::default();
    let acc = oracle::train::measure(&model, &config, &training, &device);
    for (name, v) in acc.attributes.iter().zip(&acc.clean) {
        assert!(*v >= 0.97, "{name}: {v}");
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
