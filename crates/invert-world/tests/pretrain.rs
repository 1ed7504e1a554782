//! `pretrain::run` at a toy size: every stage runs, the folder it writes loads in invert and
//! samples, an interrupted run resumes from its checkpoint, and a resume with another config is
//! refused.

use std::path::PathBuf;

use burn::prelude::*;
use invert_model::loading::{LoadOptions, load};
use invert_model::pipeline::{Request, decode, sample_latents};
use invert_model::schedulers::{SamplerConfig, SamplerKind};
use invert_model::unet::PerBlock;
use invert_model::vocabulary::Vocabulary;
use invert_world::pretrain::{self, Architecture, PretrainConfig, Progress};

fn toy() -> PretrainConfig {
    PretrainConfig {
        architecture: Architecture {
            image_size: 16,
            vae_channels: vec![8, 8],
            vae_groups: 4,
            latent_channels: 4,
            unet_channels: vec![32, 32],
            unet_attention: vec![false, true],
            unet_groups: 8,
            unet_layers_per_block: PerBlock::One(1),
            unet_heads: 2,
            text_width: 32,
            text_layers: 1,
            text_heads: 2,
            text_max_length: 77,
        },
        vae_steps: 3,
        vae_batch: 2,
        latent_pictures: 8,
        text_steps: 3,
        text_batch: 4,
        diffusion_steps: 4,
        diffusion_batch: 2,
        checkpoint_every: 1,
        warmup_steps: 1,
        ..Default::default()
    }
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("invert-pretrain-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn a_toy_run_writes_a_folder_that_loads_and_samples() {
    let out = temp("full");
    let device = Device::flex();
    let mut seen = Vec::new();
    pretrain::run(&toy(), &out, false, &device, &mut |p: Progress| {
        assert!(p.loss.is_finite());
        seen.push((p.stage, p.step));
    })
    .unwrap();
    for stage in [("vae", 3), ("text", 3), ("diffusion", 4)] {
        assert!(seen.contains(&stage), "{stage:?} missing from {seen:?}");
    }
    assert!(
        !out.join("work").exists(),
        "the work folder is removed at the end"
    );
    for f in [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "text_encoder/model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let sd = load(&out, &LoadOptions::default(), &device).unwrap();
    assert_eq!(
        sd.config.vae.downscale_factor() * sd.config.unet_sample_size(),
        16
    );
    let vocab = Vocabulary::for_model(&sd).unwrap();
    let request = Request {
        prompt: "a photo of a red circle at the top left".into(),
        negative: String::new(),
        steps: 3,
        guidance: 7.5,
        seed: 1,
        width: 16,
        height: 16,
        sampler: SamplerConfig::new(SamplerKind::Ddim),
        clip_skip: 1,
        emphasis: Default::default(),
        init_latents: None,
    };
    let latents = sample_latents(&sd, &vocab, &request, 2, &device, |_, _| {}).unwrap();
    let images = decode(&sd, latents, 1);
    assert_eq!(images.len(), 2);
    assert_eq!(images[0].rgb.len(), 16 * 16 * 3);
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn an_interrupted_run_resumes_from_its_checkpoint() {
    let out = temp("resume");
    let device = Device::flex();
    let config = toy();
    // "crash" after the second diffusion step (its checkpoint is written before the callback
    // of the next step runs)
    let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pretrain::run(&config, &out, true, &device, &mut |p: Progress| {
            if p.stage == "diffusion" && p.step == 3 {
                panic!("simulated crash");
            }
        })
    }));
    assert!(crashed.is_err());
    let state = std::fs::read_to_string(out.join("work/state.json")).unwrap();
    assert!(state.contains("\"diffusion_step\": 2"), "{state}");

    // the checkpoint can be looked at as a diffusers folder while the run is unfinished
    assert_eq!(
        pretrain::export_checkpoint(&config, &out, &device).unwrap(),
        2
    );
    load(&out, &LoadOptions::default(), &device).unwrap();

    // another configuration is refused, naming the work folder
    let mut other = config.clone();
    other.diffusion_lr *= 2.0;
    let err = pretrain::run(&other, &out, true, &device, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("work"), "{err}");

    let mut steps = Vec::new();
    pretrain::run(&config, &out, true, &device, &mut |p: Progress| {
        steps.push((p.stage, p.step))
    })
    .unwrap();
    assert!(
        !steps.iter().any(|s| s.0 == "vae" || s.0 == "text"),
        "the finished VAE and text stages are not redone: {steps:?}"
    );
    // the diffusion stage leaves the text stage's encoder as it was (frozen)
    let work = out.join("work");
    let (te_cfg, unet_cfg, _) = config.architecture.configs(
        invert_model::tokenizer::ClipTokenizer::from_dir(&out.join("tokenizer"))
            .unwrap()
            .vocab_size(),
    );
    let mut reader = pretrain::text_stage::CaptionReader::new(&te_cfg, &device);
    pretrain::checkpoint::load_module(&mut reader, &pretrain::text_stage::weights_path(&work))
        .unwrap();
    let mut denoiser = pretrain::diffusion_stage::Denoiser {
        unet: unet_cfg.init(&device),
        text_encoder: te_cfg.init(&device),
        picture: None,
    };
    pretrain::checkpoint::load_module(
        &mut denoiser,
        &pretrain::diffusion_stage::weights_path(&work),
    )
    .unwrap();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 5, 9, 2], [1, 4]), &device);
    let before = reader.text_encoder.forward(ids.clone(), None, 1);
    let after = denoiser.text_encoder.forward(ids, None, 1);
    assert_eq!(
        before.into_data().try_to_vec::<f32>().unwrap(),
        after.into_data().try_to_vec::<f32>().unwrap()
    );
    let diffusion: Vec<usize> = steps
        .iter()
        .filter(|s| s.0 == "diffusion")
        .map(|s| s.1)
        .collect();
    assert_eq!(diffusion, vec![3, 4], "continues after the last checkpoint");
    assert!(
        out.join("unet/diffusion_pytorch_model.safetensors")
            .is_file()
    );

    // a finished run can be extended by more diffusion steps
    let mut longer = config.clone();
    longer.diffusion_steps = 6;
    let mut steps = Vec::new();
    pretrain::run(&longer, &out, true, &device, &mut |p: Progress| {
        steps.push((p.stage, p.step))
    })
    .unwrap();
    let diffusion: Vec<usize> = steps
        .iter()
        .filter(|s| s.0 == "diffusion")
        .map(|s| s.1)
        .collect();
    assert_eq!(diffusion, vec![5, 6]);
    std::fs::remove_dir_all(&out).ok();
}

/// A safetensors file as (header JSON, tensor bytes): the header's key order is not fixed.
fn tensors(dir: &std::path::Path, f: &str) -> (serde_json::Value, Vec<u8>) {
    let bytes = std::fs::read(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header, bytes[8 + n..].to_vec())
}

#[test]
fn a_continued_run_with_picture_words_and_object_weight_keeps_the_vae_and_text_encoder() {
    let base = temp("base");
    let device = Device::flex();
    pretrain::run(&toy(), &base, false, &device, &mut |_| {}).unwrap();

    let continued = temp("continued");
    let config = PretrainConfig {
        init_from: Some(base.clone()),
        picture_words: 1.0,
        object_weight: 3.0,
        diffusion_steps: 3,
        ..toy()
    };
    let mut stages = Vec::new();
    pretrain::run(&config, &continued, false, &device, &mut |p: Progress| {
        assert!(p.loss.is_finite());
        stages.push(p.stage)
    })
    .unwrap();
    assert!(
        !stages.iter().any(|s| *s == "vae" || *s == "text"),
        "{stages:?}"
    );
    assert_eq!(stages.iter().filter(|s| **s == "diffusion").count(), 3);
    for f in [
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
    ] {
        assert!(tensors(&base, f) == tensors(&continued, f), "{f}");
    }
    let vae_json =
        |d: &std::path::Path| std::fs::read_to_string(d.join("vae/config.json")).unwrap();
    assert_eq!(
        vae_json(&base),
        vae_json(&continued),
        "the latent scaling is kept"
    );
    let unet = "unet/diffusion_pytorch_model.safetensors";
    assert!(tensors(&base, unet).1 != tensors(&continued, unet).1);
    // the picture encoder is not part of the folder: it loads as an ordinary model
    load(&continued, &LoadOptions::default(), &device).unwrap();

    // a folder of another architecture is refused, naming the component
    let wider = PretrainConfig {
        architecture: Architecture {
            unet_channels: vec![32, 64],
            ..toy().architecture
        },
        ..config.clone()
    };
    let other = temp("other");
    let err = pretrain::run(&wider, &other, false, &device, &mut |_| {}).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("unet") && msg.contains("architecture"),
        "{msg}"
    );
    for d in [base, continued, other] {
        std::fs::remove_dir_all(d).ok();
    }
}

/// A continued run whose architecture has one more U-Net layer in a block grows the folder's
/// U-Net (`grow_unet.rs`): its first step's loss is the loss the ungrown U-Net gives on the same
/// batch, and the folder it writes says the new layer count and loads.
#[test]
fn a_continued_run_may_grow_the_unet_by_a_layer() {
    let base = temp("grow-base");
    let device = Device::flex();
    pretrain::run(&toy(), &base, false, &device, &mut |_| {}).unwrap();

    let first_loss = |config: &PretrainConfig, out: &std::path::Path| {
        let mut losses = Vec::new();
        pretrain::run(config, out, false, &device, &mut |p: Progress| {
            if p.stage == "diffusion" {
                losses.push(p.loss)
            }
        })
        .unwrap();
        losses[0]
    };
    let same = PretrainConfig {
        init_from: Some(base.clone()),
        diffusion_steps: 2,
        ..toy()
    };
    let grown = PretrainConfig {
        architecture: Architecture {
            unet_layers_per_block: PerBlock::Each(vec![2, 1]),
            ..toy().architecture
        },
        ..same.clone()
    };
    let (same_out, grown_out) = (temp("grow-same"), temp("grow-grown"));
    let a = first_loss(&same, &same_out);
    let b = first_loss(&grown, &grown_out);
    assert!((a - b).abs() < 1e-5 * a.abs().max(1.0), "{a} against {b}");

    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(grown_out.join("unet/config.json")).unwrap())
            .unwrap();
    assert_eq!(config["layers_per_block"], serde_json::json!([2, 1]));
    load(&grown_out, &LoadOptions::default(), &device).unwrap();

    // two layers more is not a growth
    let too_many = PretrainConfig {
        architecture: Architecture {
            unet_layers_per_block: PerBlock::Each(vec![3, 1]),
            ..toy().architecture
        },
        ..same.clone()
    };
    let other = temp("grow-other");
    let msg = pretrain::run(&too_many, &other, false, &device, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(msg.contains("at most one per block"), "{msg}");
    for d in [base, same_out, grown_out, other] {
        std::fs::remove_dir_all(d).ok();
    }
}
