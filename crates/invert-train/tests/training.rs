//! The training loop on tiny-sd1: frozen weights stay bit-identical while v* moves, training
//! lowers a held-out loss, and a resumed run equals an uninterrupted one bit for bit.

mod common;

use common::*;
use invert_train::checkpoint::{load_checkpoint, save_checkpoint};

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
    let vocab_size = t.vocab.tokenizer.vocab_size();
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
    // The frozen token table (49408 rows) is part of the text encoder's snapshot above; the new
    // word's rows live in the vocabulary, and they are exactly v*.
    assert_eq!(
        te[0].0,
        vec![49408, 32],
        "the first text-encoder tensor is the token table"
    );
    assert_eq!(t.vocab.tokenizer.vocab_size(), vocab_size);
    assert_eq!(t.vocab.len(), 2, "only the new word's two rows were added");
    assert_eq!(t.ids, vec![49408, 49409]);
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
