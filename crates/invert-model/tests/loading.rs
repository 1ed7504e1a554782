//! Loading paths beyond the golden models: sharded safetensors, Hugging Face cache folders,
//! bf16 weights, and every bad input from the issue giving one clear error (never a panic).

mod common;

use std::path::Path;

use burn::prelude::*;
use common::{Golden, assert_identical, fixture};
use invert_model::loading::{LoadError, LoadOptions, StableDiffusion, load};
use invert_model::vocabulary::Vocabulary;
use invert_model::weights::TensorReader;
use invert_model::weights::safetensors_file::SafetensorsFile;

/// Copies a diffusers folder (configs and weights) into `dst`.
fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), &to).unwrap();
        }
    }
}

/// Writes a safetensors file holding `tensors` (name, dtype string, shape, raw bytes).
fn write_safetensors(path: &Path, tensors: &[(String, &str, Vec<usize>, Vec<u8>)]) {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, dtype, shape, bytes) in tensors {
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes.len()]}),
        );
        offset += bytes.len();
    }
    let header = serde_json::to_vec(&header).unwrap();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    for (_, _, _, bytes) in tensors {
        out.extend(bytes);
    }
    std::fs::write(path, out).unwrap();
}

/// All tensors of a file as (name, dtype, shape, bytes), re-encoded by `encode`.
fn tensors_of(
    file: &Path,
    encode: fn(&[f32]) -> (&'static str, Vec<u8>),
) -> Vec<(String, &'static str, Vec<usize>, Vec<u8>)> {
    let f = SafetensorsFile::open(file).unwrap();
    f.names()
        .into_iter()
        .map(|n| {
            let shape = f.meta(&n).unwrap().shape.clone();
            let (dtype, bytes) = encode(&f.read_f32(&n).unwrap());
            (n, dtype, shape, bytes)
        })
        .collect()
}

fn f32_bytes(v: &[f32]) -> (&'static str, Vec<u8>) {
    ("F32", v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

fn unet_out(sd: &StableDiffusion, g: &Golden, device: &Device) -> Tensor<4> {
    sd.unet.forward(
        g.f32("unet.sample", device),
        g.timesteps("unet.timesteps", device),
        g.f32("unet.context", device),
    )
}

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("invert-loading-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn sharded_unet_and_hf_cache_snapshot_load_like_the_folder() {
    let device = Device::flex();
    let g = Golden::open("tiny-sd2");
    let reference = load(&fixture("tiny-sd2"), &LoadOptions::default(), &device).unwrap();

    // A Hugging Face cache folder: models--org--name/{refs/main, snapshots/<hash>/...}.
    let cache = tmp("hf").join("models--test--tiny-sd2");
    let snap = cache.join("snapshots").join("0123abcd");
    copy_dir(&fixture("tiny-sd2"), &snap);
    std::fs::create_dir_all(cache.join("refs")).unwrap();
    std::fs::write(cache.join("refs").join("main"), "0123abcd\n").unwrap();

    // Shard the U-Net in two files with an index, as large checkpoints are published.
    let unet_dir = snap.join("unet");
    let single = unet_dir.join("diffusion_pytorch_model.safetensors");
    let tensors = tensors_of(&single, f32_bytes);
    std::fs::remove_file(&single).unwrap();
    let (a, b) = tensors.split_at(tensors.len() / 2);
    write_safetensors(
        &unet_dir.join("diffusion_pytorch_model-00001-of-00002.safetensors"),
        a,
    );
    write_safetensors(
        &unet_dir.join("diffusion_pytorch_model-00002-of-00002.safetensors"),
        b,
    );
    let mut map = serde_json::Map::new();
    for (part, file) in [
        (a, "diffusion_pytorch_model-00001-of-00002.safetensors"),
        (b, "diffusion_pytorch_model-00002-of-00002.safetensors"),
    ] {
        for t in part {
            map.insert(t.0.clone(), serde_json::json!(file));
        }
    }
    std::fs::write(
        unet_dir.join("diffusion_pytorch_model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();

    let cached = load(&cache, &LoadOptions::default(), &device).unwrap();
    assert_identical(
        "sharded unet from HF cache",
        unet_out(&cached, &g, &device),
        unet_out(&reference, &g, &device),
    );
}

#[test]
fn bf16_weights_load_into_f32() {
    let device = Device::flex();
    let g = Golden::open("tiny-sd2");
    let dir = tmp("bf16").join("model");
    copy_dir(&fixture("tiny-sd2"), &dir);
    let file = dir.join("unet/diffusion_pytorch_model.safetensors");
    let bf16 = |v: &[f32]| {
        (
            "BF16",
            v.iter()
                .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                .collect(),
        )
    };
    let tensors = tensors_of(&file, bf16);
    write_safetensors(&file, &tensors);
    let sd = load(&dir, &LoadOptions::default(), &device).unwrap();
    let w = sd.unet.conv_in.weight.val();
    assert_eq!(
        w.dtype(),
        burn::tensor::DType::F32,
        "bf16 weights are converted, not kept"
    );
    // bf16 keeps 8 bits of mantissa: the output moves, but stays close.
    let d = (unet_out(&sd, &g, &device) - g.f32::<4>("unet.out", &device))
        .abs()
        .max()
        .into_scalar::<f32>();
    assert!(d > 0.0 && d < 0.05, "bf16 unet diff {d}");
}

fn load_err(path: &Path, options: LoadOptions) -> String {
    match load(path, &options, &Device::flex()) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_component_is_named() {
    let dir = tmp("missing").join("model");
    copy_dir(&fixture("tiny-sd2"), &dir);
    std::fs::remove_dir_all(dir.join("vae")).unwrap();
    let msg = load_err(&dir, LoadOptions::default());
    assert!(
        msg.contains("no `vae` component") && msg.contains("vae/config.json"),
        "{msg}"
    );

    let dir = tmp("noweights").join("model");
    copy_dir(&fixture("tiny-sd2"), &dir);
    std::fs::remove_file(dir.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    let msg = load_err(&dir, LoadOptions::default());
    assert!(
        msg.contains("no weights file") && msg.contains("diffusion_pytorch_model.safetensors"),
        "{msg}"
    );
}

#[test]
fn shape_mismatch_names_key_shapes_and_family() {
    // A config that disagrees with the weights: the message names the key and both shapes in
    // the checkpoint's own layout.
    let dir = tmp("shape").join("model");
    copy_dir(&fixture("tiny-sd2"), &dir);
    let cfg_path = dir.join("text_encoder/config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["intermediate_size"] = serde_json::json!(48);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let msg = load_err(&dir, LoadOptions::default());
    assert!(msg.contains("model.safetensors"), "{msg}");
    assert!(
        msg.contains("fc1.weight` has shape [64, 32] but the model expects [48, 32]"),
        "{msg}"
    );
    assert!(msg.contains("diffusers folder"), "{msg}");

    // The tiny SD1 checkpoint read with the SD2 test configs: widths agree, heads and
    // projections do not.
    let options = LoadOptions {
        config_dir: Some(fixture("tiny-sd2")),
        ..Default::default()
    };
    let msg = load_err(&fixture("tiny-sd1.ckpt"), options);
    assert!(msg.contains("tiny-sd1.ckpt"), "{msg}");
    assert!(
        msg.contains("configs from") && msg.contains("--config"),
        "{msg}"
    );

    // Without --config, the published SD 1.5 architecture is assumed and named.
    let msg = load_err(&fixture("tiny-sd1.ckpt"), LoadOptions::default());
    assert!(
        msg.contains("Stable Diffusion 1.x") && msg.contains("--config"),
        "{msg}"
    );
    assert!(
        msg.contains("model.diffusion_model.") || msg.contains("cond_stage_model."),
        "{msg}"
    );
}

#[test]
fn unknown_layout_and_corrupt_files_are_refused_clearly() {
    let dir = tmp("bad");
    // A safetensors file with no Stable Diffusion keys.
    let other = dir.join("other.safetensors");
    write_safetensors(
        &other,
        &[("encoder.weight".into(), "F32", vec![2], vec![0; 8])],
    );
    let msg = load_err(&other, LoadOptions::default());
    assert!(msg.contains("unknown checkpoint layout"), "{msg}");

    // Truncated: the header promises more data than the file has.
    let bytes = std::fs::read(fixture("tiny-sd2.safetensors")).unwrap();
    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_err(&truncated, LoadOptions::default());
    assert!(
        msg.contains("truncated.safetensors") && msg.contains("truncated"),
        "{msg}"
    );

    // Truncated torch checkpoint.
    let bytes = std::fs::read(fixture("tiny-sd1.ckpt")).unwrap();
    let truncated = dir.join("truncated.ckpt");
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let msg = load_err(&truncated, LoadOptions::default());
    assert!(msg.contains("truncated.ckpt"), "{msg}");

    // Neither format.
    let text = dir.join("notes.ckpt");
    std::fs::write(&text, "just some text, not weights").unwrap();
    let msg = load_err(&text, LoadOptions::default());
    assert!(
        msg.contains("not a safetensors file or a torch checkpoint"),
        "{msg}"
    );

    // Empty file and missing path.
    let empty = dir.join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    let msg = load_err(&empty, LoadOptions::default());
    assert!(msg.contains("empty.safetensors"), "{msg}");
    let msg = load_err(&dir.join("nope"), LoadOptions::default());
    assert!(msg.contains("no such file or folder"), "{msg}");
}

#[test]
fn single_file_family_is_detected() {
    let dir = tmp("family");
    // An SD2-layout file is recognised as SD 2.x even when its widths are not the published
    // ones: the error then names the family and suggests --config.
    let msg = load_err(&fixture("tiny-sd2.safetensors"), LoadOptions::default());
    assert!(msg.contains("Stable Diffusion 2.x"), "{msg}");
    // An SDXL file (conditioner.embedders.1, label_emb) is loaded with SDXL 1.0's configs; the
    // tiny one's shapes then differ and the message says what it was taken for.
    let msg = load_err(&fixture("tiny-sdxl.safetensors"), LoadOptions::default());
    assert!(msg.contains("Stable Diffusion XL"), "{msg}");
    let _ = dir;
    assert!(matches!(
        load(
            &fixture("tiny-sd2.safetensors"),
            &LoadOptions::default(),
            &Device::flex()
        ),
        Err(LoadError::Layout { .. })
    ));
}

#[test]
fn old_vae_attention_key_names_load() {
    // Older SD VAE files name the mid-block attention query/key/value/proj_attn.
    let device = Device::flex();
    let g = Golden::open("tiny-sd2");
    let dir = tmp("oldvae").join("model");
    copy_dir(&fixture("tiny-sd2"), &dir);
    let file = dir.join("vae/diffusion_pytorch_model.safetensors");
    let renamed: Vec<_> = tensors_of(&file, f32_bytes)
        .into_iter()
        .map(|(name, dtype, shape, bytes)| {
            let name = name
                .replace("attentions.0.to_q.", "attentions.0.query.")
                .replace("attentions.0.to_k.", "attentions.0.key.")
                .replace("attentions.0.to_v.", "attentions.0.value.")
                .replace("attentions.0.to_out.0.", "attentions.0.proj_attn.");
            (name, dtype, shape, bytes)
        })
        .collect();
    assert!(
        renamed
            .iter()
            .any(|t| t.0.ends_with("attentions.0.proj_attn.weight"))
    );
    write_safetensors(&file, &renamed);
    let old = load(&dir, &LoadOptions::default(), &device).unwrap();
    let new = load(&fixture("tiny-sd2"), &LoadOptions::default(), &device).unwrap();
    let latent = g.f32::<4>("vae.latent", &device);
    assert_identical(
        "old-named VAE decode",
        old.vae.decode(latent.clone()),
        new.vae.decode(latent),
    );
}

/// Writes the bundled CLIP tokenizer as a classic `vocab.json` + `merges.txt` folder (no
/// tokenizer.json) that pads with `!`, as SD 2.x model folders have it.
/// Makes the tokenizer folder `dir` (tiny-sd1's: vocab.json + merges.txt) pad with `!` as SD 2.x
/// tokenizers do, through special_tokens_map.json alone (no tokenizer_config.json).
fn pad_with_exclamation_mark(dir: &Path) {
    std::fs::remove_file(dir.join("tokenizer_config.json")).unwrap();
    std::fs::write(
        dir.join("special_tokens_map.json"),
        r#"{"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "!", "unk_token": "<|endoftext|>"}"#,
    )
    .unwrap();
}

/// Issue 20, item 7: a single file loaded with `--config DIR` uses DIR's tokenizer (here one
/// padding with `!` and without tokenizer.json), so it conditions exactly as the folder does.
#[test]
fn single_file_with_config_folder_uses_its_tokenizer() {
    let device = Device::flex();
    let dir = tmp("config-tokenizer");
    let model = dir.join("model");
    copy_dir(&fixture("tiny-sd1"), &model);
    pad_with_exclamation_mark(&model.join("tokenizer"));
    let folder_options = LoadOptions {
        variant: Some("fp16".into()),
        ..Default::default()
    };
    let folder = load(&model, &folder_options, &device).unwrap();
    let file_options = LoadOptions {
        config_dir: Some(model.clone()),
        ..Default::default()
    };
    let file = load(&fixture("tiny-sd1.ckpt"), &file_options, &device).unwrap();
    assert_eq!(file.config.tokenizer_dir, Some(model.join("tokenizer")));

    let prompt = ["a photo of a cat".to_string()];
    let mut contexts = Vec::new();
    for sd in [&folder, &file] {
        let vocab = Vocabulary::for_model(sd).unwrap();
        let (ids, _) = vocab.encode(&prompt, &device).unwrap();
        let ids = ids
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .unwrap();
        // BOS a pho to of a c at EOS in tiny-sd1's 1000-id BPE, then the padding
        assert_eq!(ids[9..], [0; 68], "padded with `!` (id 0)");
        contexts.push(sd.text_encoder.forward(
            Tensor::from_data(TensorData::new(ids, [1, 77]), &device),
            None,
            1,
        ));
    }
    let diff = (contexts[0].clone() - contexts[1].clone())
        .abs()
        .max()
        .into_scalar::<f32>();
    assert_eq!(diff, 0.0, "same weights, same ids");
    let _ = std::fs::remove_dir_all(&dir);
}
