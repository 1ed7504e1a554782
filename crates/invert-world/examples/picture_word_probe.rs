//! Diagnostic: the picture words a continued run's encoder makes for each bundled concept
//! (mean over 16 renderings of the concept, scaled to the vocabulary norm), written as learned
//! embeddings so `invert eval --learned` can judge them: what textual inversion could reach.
//!   cargo run --release -p invert-world --example picture_word_probe -- WORK MODEL OUT
use burn::prelude::*;
use invert_model::embedding::{EmbeddingFormat, EmbeddingMeta, LearnedEmbedding};
use invert_model::embedding::{WriteFormat, write_embedding};
use invert_model::loading::{LoadOptions, load};
use invert_world::pretrain::picture_words::{encoder_for, mean_row_norm};
use invert_world::pretrain::{PretrainConfig, checkpoint, diffusion_stage::Denoiser};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (work, model, out) = (&args[1], &args[2], &args[3]);
    // how many renderings of the concept are averaged (1: a single picture's word)
    let count: usize = args.get(4).map_or(16, |n| n.parse().unwrap());
    let device = Device::flex();
    let sd = load(model.as_ref(), &LoadOptions::default(), &device).unwrap();
    // the continued run's own config (its architecture and picture-word encoder), as the work
    // folder's state.json recorded it
    let config: PretrainConfig = checkpoint::load_state(std::path::Path::new(work))
        .unwrap()
        .config
        .expect("a work folder of a run that has started");
    let a = &config.architecture;
    let (te_cfg, unet_cfg, _) = a.configs(sd.text_encoder.vocab_size());
    let mut d = Denoiser {
        unet: unet_cfg.init(&device),
        text_encoder: te_cfg.init(&device),
        picture: encoder_for(&config, &device),
    };
    checkpoint::load_module(
        &mut d,
        &std::path::Path::new(work).join("denoiser.safetensors"),
    )
    .unwrap();
    let norm = mean_row_norm(
        d.text_encoder
            .text_model
            .embeddings
            .token_embedding
            .weight
            .val(),
    );
    println!("vocabulary mean row norm {norm}");
    for c in invert_world::world::concepts::bundled() {
        let scenes = c.scenes(count, 5);
        let images = invert_world::world::pictures_tensor(&scenes, a.image_size, &device);
        let lat = sd.vae.encode(images).mean * sd.vae.scaling_factor;
        let v = d.picture.as_ref().unwrap().forward(lat, norm).mean_dim(0);
        let len = v.clone().powf_scalar(2.0).sum().sqrt().into_scalar::<f32>();
        let v = v * (norm / len);
        let vectors: Vec<f32> = v.into_data().try_to_vec::<f32>().unwrap();
        let e = LearnedEmbedding {
            token: c.token.to_string(),
            num_vectors: 1,
            width: vectors.len(),
            vectors,
            second: None,
            meta: EmbeddingMeta::new(EmbeddingFormat::Diffusers),
        };
        let dir = std::path::Path::new(out).join(c.name);
        std::fs::create_dir_all(&dir).unwrap();
        write_embedding(
            &e,
            &dir.join("learned_embeds.safetensors"),
            WriteFormat::Diffusers,
            true,
        )
        .unwrap();
        println!("{}: mean picture word norm before rescaling {len}", c.name);
    }
}
