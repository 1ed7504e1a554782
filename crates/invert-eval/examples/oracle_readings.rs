//! Diagnostic: what the oracle reads in a prompt's pictures, per attribute and value (where
//! `invert eval`'s reconstruction score only says whether all of a concept's values showed).
//!   cargo run --release -p invert-eval --example oracle_readings -- MODEL [EMBEDDING...] -- PROMPT...
//! e.g. MODEL models/world, EMBEDDING out/eval-world/learned/striped-triangle/learned_embeds.safetensors,
//! PROMPT "a photo of <striped-triangle>". 64 pictures per prompt with `invert eval`'s settings.
use burn::prelude::*;
use invert_eval::{EvalSettings, Judge};
use invert_model::embedding::read_embeddings;
use invert_model::loading::{LoadOptions, load};
use invert_model::vocabulary::Vocabulary;
use invert_world::world::ATTRIBUTES;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let split = args
        .iter()
        .position(|a| a == "--")
        .expect("MODEL [EMBEDDING...] -- PROMPT...");
    let (paths, prompts) = (&args[..split], &args[split + 1..]);
    let device = Device::flex();
    let sd = load(paths[0].as_ref(), &LoadOptions::default(), &device).unwrap();
    let mut vocab = Vocabulary::for_model(&sd).unwrap();
    for path in &paths[1..] {
        for e in read_embeddings(path.as_ref(), None).unwrap() {
            vocab.add_embedding(&e, path.as_ref()).unwrap();
        }
    }
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let (oracle, _) =
        invert_world::oracle::load(&repo.join("models/world-oracle"), &device).unwrap();
    let judge = Judge {
        sd: &sd,
        vocab: &vocab,
        oracle: &oracle,
        settings: EvalSettings::default(),
        device,
    };
    let count = 64;
    for prompt in prompts {
        let judged = judge.judge(prompt, 1000, count).unwrap();
        println!("{prompt} ({count} pictures)");
        for (a, attribute) in ATTRIBUTES.iter().enumerate() {
            let shares: Vec<String> = attribute
                .values
                .iter()
                .enumerate()
                .map(|(v, name)| {
                    let n = judged.labels.iter().filter(|l| l[a] == v).count();
                    format!("{name} {:.0}%", 100.0 * n as f64 / count as f64)
                })
                .collect();
            println!("  {:<10} {}", attribute.name, shares.join(", "));
        }
    }
}
