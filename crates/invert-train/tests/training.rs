//! The training loop on tiny-sd1: frozen weights stay bit-identical while v* moves, training
//! lowers a held-out loss, and a resumed run equals an uninterrupted one bit for bit.

mod common;

use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::prelude::*;
use common::*;
use invert_model::loading::{LoadOptions, StableDiffusion, load};
use invert_train::checkpoint::{load_checkpoint, save_checkpoint};
use invert_train::trainer::Trainer;

/// Mean loss, without gradients, over `k` fixed (image, t, noise, prompt) draws whose step
/// indices lie far away from any training step (`usize::MAX / 2 + i`).
fn eval_loss(t: &Trainer, k: usize) -> f32 {
    let v = t.params_tensor();
    (0..k)
        .map(|i| {
            t.loss(&v, &t.batch(usize::MAX / 2 + i, 0))
                .into_scalar::<f32>()
        })
        .sum::<f32>()
        / k as f32
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn only_the_new_vectors_move() {
    let tmp = TempDir::new("frozen");
    let (folder, images) = image_folder(tmp.path(), &[[90, 120, 200], [30, 160, 90]]);
    let reference = load_tiny_sd1(&device());
    let te = snapshot(&reference.text_encoder);
    let unet = snapshot(&reference.unet);
    let vae = snapshot(&reference.vae);
    drop(reference);

    let mut t = trainer(
        config(&folder, &tmp.path().join("out"), "<frozen>", 2),
        &images,
    );
    let init = t.params.clone();
    let vocab_size = t.vocab.first.tokenizer.vocab_size();
    for _ in 0..3 {
        t.train_step().unwrap();
    }
    assert_eq!(t.step, 3);
    for (name, before, after) in [
        ("text encoder", &te, snapshot(&t.sd.text_encoder)),
        ("U-Net", &unet, snapshot(&t.sd.unet)),
        ("VAE", &vae, snapshot(&t.sd.vae)),
    ] {
        assert_eq!(before.len(), after.len(), "{name}: parameter count");
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            assert_eq!(b.0, a.0, "{name}: parameter {i} shape");
            assert!(b.1 == a.1, "{name}: parameter {i} {:?} changed", b.0);
        }
        println!(
            "{name}: {} tensors bit-identical after 3 steps",
            before.len()
        );
    }
    // The frozen token table (1000 rows: tiny-sd1's tokenizer) is part of the text encoder's snapshot above; the new
    // word's rows live in the vocabulary, and they are exactly v*.
    assert_eq!(
        te[0].0,
        vec![1000, 32],
        "the first text-encoder tensor is the token table"
    );
    assert_eq!(t.vocab.first.tokenizer.vocab_size(), vocab_size);
    assert_eq!(t.vocab.len(), 2, "only the new word's two rows were added");
    assert_eq!(t.ids, vec![1000, 1001]);
    assert_eq!(bits(t.vocab.vectors(t.ids[0], 2)), bits(&t.params));
    for (row, (a, b)) in t.params.chunks(32).zip(init.chunks(32)).enumerate() {
        let moved = a.iter().zip(b).filter(|(x, y)| x != y).count();
        assert!(moved > 16, "vector {row}: only {moved} of 32 values moved");
    }
}

/// 10 steps, a checkpoint, a fresh trainer restored from it and 10 more steps end bit for bit
/// where 20 uninterrupted steps do: parameters, Adam moments and step counts.
#[test]
fn resume_after_10_steps_equals_20_steps() {
    let tmp = TempDir::new("resume");
    let (folder, images) = image_folder(tmp.path(), &[[90, 120, 200], [30, 160, 90]]);
    let mut base = config(&folder, &tmp.path().join("whole"), "<r>", 2);
    // Two micro-batches of two: every random choice of a step (images, flips, templates,
    // timesteps, noise, latent samples) is exercised.
    base.batch_size = 2;
    base.grad_accum = 2;

    let mut whole = trainer(base.clone(), &images);
    let mut losses = Vec::new();
    for _ in 0..20 {
        losses.push(whole.train_step().unwrap().loss);
    }

    let out = tmp.path().join("split");
    let first_config = invert_train::config::TrainConfig {
        out: out.clone(),
        ..base.clone()
    };
    let mut first = trainer(first_config.clone(), &images);
    for loss in &losses[..10] {
        assert_eq!(first.train_step().unwrap().loss.to_bits(), loss.to_bits());
    }
    save_checkpoint(&first).unwrap();
    let n = first.params.len();
    drop(first);

    let mut second = trainer(first_config, &images);
    let (step, params, optimizer) = load_checkpoint(&out, n).unwrap();
    assert_eq!(step, 10);
    second.restore(step, params, optimizer);
    for loss in &losses[10..] {
        assert_eq!(second.train_step().unwrap().loss.to_bits(), loss.to_bits());
    }
    assert_eq!(second.step, 20);
    assert_eq!(bits(&second.params), bits(&whole.params), "v*");
    assert_eq!(second.optimizer.step, whole.optimizer.step);
    assert_eq!(
        bits(&second.optimizer.m),
        bits(&whole.optimizer.m),
        "Adam m"
    );
    assert_eq!(
        bits(&second.optimizer.v),
        bits(&whole.optimizer.v),
        "Adam v"
    );
    assert_eq!(
        bits(second.vocab.vectors(second.ids[0], 2)),
        bits(&whole.params)
    );
    println!(
        "resume: 10 + 10 steps == 20 steps bit for bit (v*, Adam m and v, step {})",
        whole.optimizer.step
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// tiny-sd1 with the U-Net of `tests/fixtures/tiny-sd1-conditional` (see its README.md): one
/// trained to denoise six coloured-square images given their captions, so that its prediction
/// depends on the text conditioning.
fn conditional_model(dir: &Path) -> PathBuf {
    let model = dir.join("model");
    copy_dir(&tiny_sd1(), &model);
    std::fs::remove_dir_all(model.join("unet")).unwrap();
    let unet =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sd1-conditional/unet");
    copy_dir(&unet, &model.join("unet"));
    model
}

/// The two changes the conditional U-Net was trained with (scripts/make_train_fixtures.py): a
/// deterministic VAE (log-variance bias lowered by 40, so it clamps at -30) and unscaled latents.
fn as_trained(sd: &mut StableDiffusion) {
    let conv = sd
        .vae
        .quant_conv
        .as_mut()
        .expect("tiny-sd1 has a quant_conv");
    let bias = conv.bias.take().expect("with a bias").val();
    let shift = Tensor::<1>::from_data(
        TensorData::new(vec![0.0f32, 0.0, 0.0, 0.0, -40.0, -40.0, -40.0, -40.0], [8]),
        &bias.device(),
    );
    conv.bias = Some(Param::from_tensor((bias + shift).detach()));
    sd.vae.scaling_factor = 1.0;
}

/// Textual inversion lowers the loss on a fixed held-out set of (t, noise) pairs.
///
/// On tiny-sd1's own random U-Net this cannot show: its prediction barely depends on the text
/// (optimising v* full-batch on the held-out batches themselves lowers their loss by 0.03%, and
/// 200 steps of training move the held-out loss by -0.011%..+0.015% depending on the seed). So the
/// model here is tiny-sd1 with a small U-Net trained to use its conditioning
/// (`tests/fixtures/tiny-sd1-conditional`). The word is trained on that U-Net's "red toy" image
/// from the word "object", with the prompt being the word alone (the template the U-Net was
/// trained with), for 200 steps of batch 1 at the default 5e-3.
#[test]
fn training_lowers_a_held_out_loss() {
    const STEPS: usize = 200;
    const HELD_OUT: usize = 32;
    /// The least relative decrease asserted: measured 24.2% (seed 23), 19.2-23.8% with seeds 1-5
    /// (with tiny-sd1's 1000-id tokenizer, where "object" is five tokens and the conditional
    /// U-Net was retrained; 200 steps on tiny-sd1's own random U-Net move it by under 0.02%).
    const MARGIN: f32 = 0.12;
    let tmp = TempDir::new("learn");
    let model = conditional_model(tmp.path());
    // The "red toy" image of the U-Net's training set.
    let (folder, images) = image_folder(tmp.path(), &[[90, 120, 200]]);
    let templates = tmp.path().join("templates.txt");
    std::fs::write(&templates, "{}\n").unwrap();
    let mut config = config(&folder, &tmp.path().join("out"), "<toy>", 1);
    config.model = model.clone();
    config.templates = Some(templates);
    config.steps = STEPS;
    assert_eq!(config.init_text(), "object");

    let device = device();
    let mut sd = load(&model, &LoadOptions::default(), &device).unwrap();
    as_trained(&mut sd);
    let mut t = Trainer::new(config, sd, &images, device).unwrap();
    let start = std::time::Instant::now();
    let before = eval_loss(&t, HELD_OUT);
    let mut first = Vec::new();
    let mut last = Vec::new();
    for step in 0..STEPS {
        let loss = t.train_step().unwrap().loss;
        if step < 20 {
            first.push(loss);
        } else if step >= STEPS - 20 {
            last.push(loss);
        }
    }
    let after = eval_loss(&t, HELD_OUT);
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    let decrease = 1.0 - after / before;
    println!(
        "held-out loss ({HELD_OUT} fixed (t, noise) pairs): {before:.5} -> {after:.5} after {STEPS} steps \
         ({:.1}% lower; asserted at least {:.0}%); training loss, mean of the first / last 20 steps: \
         {:.5} / {:.5}; {:.1?}",
        100.0 * decrease,
        100.0 * MARGIN,
        mean(&first),
        mean(&last),
        start.elapsed()
    );
    assert!(decrease >= MARGIN, "held-out loss {before} -> {after}");
}
