//! SDXL end to end against diffusers' `StableDiffusionXLPipeline` (issue 20): a random tiny
//! SDXL model (`tests/fixtures/tiny-sdxl/`, fp16 variant files, its own `tokenizer/` and
//! `tokenizer_2/`) and its single-file twin (`tiny-sdxl.safetensors`, Stability's
//! `conditioner.embedders.{0,1}` / `model.diffusion_model` / `first_stage_model` names, with an
//! EMA copy of the U-Net), from `scripts/make_sdxl_pipeline_fixtures.py`.
//!
//! Checked: both tokenizers' ids, both encoders' penultimate states and the pooled
//! `text_embeds` (at the end-of-text position, also after a learned word), `encode_prompt`'s
//! output with and without a negative prompt (`force_zeros_for_empty_prompt`), the U-Net's
//! noise prediction with the added conditions, and the decoded image from given latents with
//! Euler and DDIM within 2/255, from the folder and from the single file.

mod common;

use burn::prelude::*;
use common::{Golden, assert_close, fixture};
use invert_model::loading::{Family, LoadOptions, StableDiffusion, load};
use invert_model::pipeline::prompt_encoding::{LearnedRows, TextConditioning, encode_prompts};
use invert_model::pipeline::{Request, decode, sample_latents};
use invert_model::schedulers::{SamplerConfig, SamplerKind};
use invert_model::unet::AddedConditions;
use invert_model::vocabulary::Vocabulary;

const TOL: f32 = 1e-4;
const PIXEL_TOL: i32 = 2;
const PROMPT: &str = "a photo of a cat";
const NEGATIVE: &str = "blurry, low quality";
const LEARNED_PROMPT: &str = "a photo of <sks>";

fn folder(device: &Device) -> StableDiffusion {
    let options = LoadOptions {
        variant: Some("fp16".into()),
        ..Default::default()
    };
    load(&fixture("tiny-sdxl"), &options, device).expect("the tiny SDXL folder loads")
}

fn single_file(device: &Device, use_ema: bool) -> StableDiffusion {
    let options = LoadOptions {
        config_dir: Some(fixture("tiny-sdxl")),
        use_ema,
        ..Default::default()
    };
    load(&fixture("tiny-sdxl.safetensors"), &options, device)
        .expect("the tiny SDXL single file loads")
}

/// The model's vocabulary with the fixture's learned word `<sks>` in both tables.
fn vocabulary(sd: &StableDiffusion, g: &Golden, device: &Device) -> Vocabulary {
    let mut vocab = Vocabulary::for_model(sd).unwrap();
    let rows = |name: &str| {
        g.f32::<2>(name, device)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    };
    let ids = vocab
        .add_word("<sks>", &rows("learned.v1"), Some(&rows("learned.v2")))
        .unwrap();
    assert_eq!(
        ids,
        vec![1000],
        "the learned word follows the 1000-token vocabulary"
    );
    vocab
}

fn encode(
    sd: &StableDiffusion,
    vocab: &Vocabulary,
    prompt: &str,
    device: &Device,
) -> TextConditioning {
    let (extra, extra_2) = (vocab.extra(device), vocab.extra_2(device));
    let learned = LearnedRows {
        first: extra.as_ref(),
        second: extra_2.as_ref(),
    };
    encode_prompts(sd, vocab, &[prompt.to_string()], learned, 1, device).unwrap()
}

fn ids(t: Tensor<2, Int>) -> Vec<i64> {
    t.into_data().convert::<i64>().try_to_vec::<i64>().unwrap()
}

#[test]
fn both_tokenizers_and_encoders_match_transformers() {
    let device = Device::flex();
    let sd = folder(&device);
    assert_eq!(sd.config.family, Family::Sdxl);
    assert!(sd.config.force_zeros_for_empty_prompt);
    assert!(sd.config.vae.force_upcast);
    for (name, report) in &sd.reports {
        assert!(
            report.unexpected.is_empty(),
            "{name}: {:?}",
            report.unexpected
        );
    }
    let g = Golden::open("tiny-sdxl");
    let vocab = vocabulary(&sd, &g, &device);
    for (case, prompt) in [
        ("prompt", PROMPT),
        ("neg_blurry", NEGATIVE),
        ("learned", LEARNED_PROMPT),
    ] {
        let p = [prompt.to_string()];
        let (first, _) = vocab.encode(&p, &device).unwrap();
        let (second, _) = vocab.second.as_ref().unwrap().encode(&p, &device).unwrap();
        assert_eq!(
            ids(first),
            g.i64(&format!("ids_1.{case}")).0,
            "{case}: tokenizer"
        );
        assert_eq!(
            ids(second),
            g.i64(&format!("ids_2.{case}")).0,
            "{case}: tokenizer_2"
        );
    }

    let cond = encode(&sd, &vocab, PROMPT, &device);
    assert_close(
        "prompt_embeds",
        cond.context,
        g.f32("encode.prompt_embeds", &device),
        TOL,
    );
    assert_close(
        "pooled_prompt_embeds",
        cond.text_embeds.unwrap(),
        g.f32("encode.pooled_prompt_embeds", &device),
        TOL,
    );
    let neg = encode(&sd, &vocab, NEGATIVE, &device);
    assert_close(
        "negative_prompt_embeds",
        neg.context,
        g.f32("encode.neg_blurry.negative_prompt_embeds", &device),
        TOL,
    );

    // The learned word: its rows in both tables, pooled at the end-of-text position.
    let learned = encode(&sd, &vocab, LEARNED_PROMPT, &device);
    assert_close(
        "learned prompt_embeds",
        learned.context,
        g.f32("encode.learned.prompt_embeds", &device),
        TOL,
    );
    let pooled = learned.text_embeds.unwrap();
    assert_close(
        "learned pooled",
        pooled.clone(),
        g.f32("encode.learned.pooled_prompt_embeds", &device),
        TOL,
    );
    // A prompt padded with end-of-text (999) instead of `!` pools at the first one.
    let te2 = sd.text_encoder_2.as_ref().unwrap();
    let eos = vocab.second.as_ref().unwrap().tokenizer.eos_id() as i64;
    let out = te2.forward(g.ids("ids_2.eos_padded", &device), None, eos);
    assert_close(
        "eos-padded penultimate",
        out.penultimate,
        g.f32("penultimate_2.eos_padded", &device),
        TOL,
    );
    assert_close(
        "eos-padded text_embeds",
        out.text_embeds,
        g.f32("text_embeds_2.eos_padded", &device),
        TOL,
    );
    let argmax: Tensor<2> = g.f32("text_embeds_2.learned_argmax_pooling", &device);
    assert!(
        (pooled - argmax).abs().max().into_scalar::<f32>() > 0.01,
        "pooling at argmax(ids) would pick the learned word; the reference pools at EOS"
    );
}

fn noise_prediction(sd: &StableDiffusion, g: &Golden, device: &Device) -> Tensor<4> {
    let added = AddedConditions {
        text_embeds: g.f32("unet.text_embeds", device),
        time_ids: g.f32("unet.time_ids", device),
    };
    sd.unet.forward_with(
        g.f32("unet.sample", device),
        g.timesteps("unet.timesteps", device),
        g.f32("unet.encoder_hidden_states", device),
        Some(&added),
    )
}

#[test]
fn unet_with_added_conditions_matches_from_folder_single_file_and_ema() {
    let device = Device::flex();
    let g = Golden::open("tiny-sdxl");
    let want = g.f32::<4>("unet.noise_pred", &device);
    let from_folder = noise_prediction(&folder(&device), &g, &device);
    assert_close(
        "noise_pred (folder)",
        from_folder.clone(),
        want.clone(),
        TOL,
    );
    let twin = single_file(&device, false);
    assert_eq!(twin.config.family, Family::Sdxl);
    for (name, report) in &twin.reports {
        assert!(
            report.unexpected.is_empty(),
            "{name}: {:?}",
            report.unexpected
        );
    }
    let from_file = noise_prediction(&twin, &g, &device);
    assert_eq!(
        from_file.into_data().as_slice::<f32>().unwrap(),
        from_folder.into_data().as_slice::<f32>().unwrap(),
        "the single-file twin holds the same weights"
    );
    let ema = noise_prediction(&single_file(&device, true), &g, &device);
    assert_close(
        "noise_pred (EMA)",
        ema,
        g.f32("unet.noise_pred_ema", &device),
        TOL,
    );
}

fn request(negative: &str, sampler: SamplerKind, g: &Golden, device: &Device) -> Request {
    Request {
        prompt: PROMPT.into(),
        negative: negative.into(),
        steps: 4,
        guidance: 5.0,
        seed: 0,
        width: 32,
        height: 24,
        sampler: SamplerConfig::new(sampler),
        clip_skip: 1,
        emphasis: Default::default(),
        init_latents: Some(g.f32("e2e.init_latents", device)),
    }
}

/// Max |invert - diffusers| over the pixels of one generated image, in 1/255 steps.
fn image_diff(
    sd: &StableDiffusion,
    vocab: &Vocabulary,
    r: &Request,
    case: &str,
    g: &Golden,
) -> i32 {
    let device = Device::flex();
    let latents = sample_latents(sd, vocab, r, 1, &device, |_, _| {}).unwrap();
    assert_close(
        &format!("{case} latents"),
        latents.clone(),
        g.f32(&format!("{case}.latents"), &device),
        1e-3,
    );
    let image = decode(sd, latents, 0).remove(0);
    let want = g.u8(&format!("{case}.image"));
    assert_eq!(want.len(), image.rgb.len(), "{case}: image size");
    image
        .rgb
        .iter()
        .zip(&want)
        .map(|(&a, &b)| (a as i32 - b as i32).abs())
        .max()
        .unwrap()
}

#[test]
fn images_from_given_latents_match_diffusers_within_2_of_255() {
    let device = Device::flex();
    let g = Golden::open("tiny-sdxl");
    let sd = folder(&device);
    let vocab = vocabulary(&sd, &g, &device);
    let cases = [
        // No negative prompt: zeros for the unconditional half (force_zeros_for_empty_prompt).
        ("e2e.euler.neg_none", "", SamplerKind::Euler, PROMPT),
        ("e2e.euler.neg_blurry", NEGATIVE, SamplerKind::Euler, PROMPT),
        ("e2e.ddim.neg_blurry", NEGATIVE, SamplerKind::Ddim, PROMPT),
        (
            "e2e.euler.learned",
            NEGATIVE,
            SamplerKind::Euler,
            LEARNED_PROMPT,
        ),
    ];
    for (case, negative, sampler, prompt) in cases {
        let mut r = request(negative, sampler, &g, &device);
        r.prompt = prompt.into();
        let d = image_diff(&sd, &vocab, &r, case, &g);
        println!("{case}: max pixel diff {d}/255");
        assert!(d <= PIXEL_TOL, "{case}: {d}/255");
    }
    // The single file generates the same image as the folder.
    let twin = single_file(&device, false);
    let r = request(NEGATIVE, SamplerKind::Euler, &g, &device);
    let a = decode(
        &sd,
        sample_latents(&sd, &vocab, &r, 1, &device, |_, _| {}).unwrap(),
        0,
    );
    let twin_vocab = vocabulary(&twin, &g, &device);
    let b = decode(
        &twin,
        sample_latents(&twin, &twin_vocab, &r, 1, &device, |_, _| {}).unwrap(),
        0,
    );
    assert_eq!(a, b);
}

#[test]
#[should_panic(expected = "needs text_embeds and time_ids")]
fn sdxl_unet_refuses_to_run_without_added_conditions() {
    let device = Device::flex();
    let g = Golden::open("tiny-sdxl");
    folder(&device).unet.forward(
        g.f32("unet.sample", &device),
        g.timesteps("unet.timesteps", &device),
        g.f32("unet.encoder_hidden_states", &device),
    );
}

/// `--precision f16`: the SDXL VAE stays f32 when its config says `force_upcast` (diffusers'
/// `upcast_vae`); a `--vae` whose config says `false` (an fp16-fixed VAE) runs in f16; a VAE of
/// another latent shape is refused.
#[test]
fn half_precision_keeps_a_force_upcast_vae_in_f32_and_vae_overrides_load() {
    use burn::tensor::DType;
    let device = Device::flex();
    let half = |vae: Option<std::path::PathBuf>| LoadOptions {
        dtype: DType::F16,
        variant: Some("fp16".into()),
        vae,
        ..Default::default()
    };
    let sd = load(&fixture("tiny-sdxl"), &half(None), &device).unwrap();
    assert_eq!(sd.unet.conv_in.weight.val().dtype(), DType::F16);
    assert_eq!(sd.vae.decoder.conv_in.weight.val().dtype(), DType::F32);

    let dir = std::env::temp_dir().join(format!("invert-sdxl-vae-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let src = fixture("tiny-sdxl/vae");
    for entry in std::fs::read_dir(&src).unwrap().flatten() {
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let config = dir.join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("\"force_upcast\": true"));
    std::fs::write(
        &config,
        text.replace("\"force_upcast\": true", "\"force_upcast\": false"),
    )
    .unwrap();
    let fixed = load(&fixture("tiny-sdxl"), &half(Some(dir.clone())), &device).unwrap();
    assert_eq!(fixed.vae.decoder.conv_in.weight.val().dtype(), DType::F16);
    assert!(!fixed.config.vae.force_upcast);

    // A single file (here the twin's first_stage_model.* keys) has the model's VAE architecture
    // and runs in the model's precision; in f32 it decodes exactly as the folder's VAE.
    let file_vae = load(
        &fixture("tiny-sdxl"),
        &half(Some(fixture("tiny-sdxl.safetensors"))),
        &device,
    )
    .unwrap();
    assert_eq!(
        file_vae.vae.decoder.conv_in.weight.val().dtype(),
        DType::F16
    );
    let f32_with = |vae| LoadOptions {
        variant: Some("fp16".into()),
        vae,
        ..Default::default()
    };
    let a = load(&fixture("tiny-sdxl"), &f32_with(None), &device).unwrap();
    let b = load(
        &fixture("tiny-sdxl"),
        &f32_with(Some(fixture("tiny-sdxl.safetensors"))),
        &device,
    )
    .unwrap();
    let latents: Tensor<4> = Golden::open("tiny-sdxl").f32("e2e.init_latents", &device);
    assert_eq!(decode(&a, latents.clone(), 0), decode(&b, latents, 0));

    // A VAE with 16-channel latents (another kind of model) is refused before its weights load.
    let text = std::fs::read_to_string(&config).unwrap();
    let wide = text.replace("\"latent_channels\": 4", "\"latent_channels\": 16");
    assert_ne!(wide, text);
    std::fs::write(&config, wide).unwrap();
    let err = load(&fixture("tiny-sdxl"), &half(Some(dir.clone())), &device)
        .expect_err("a VAE of another latent shape");
    assert!(err.to_string().contains("another kind of model"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
