//! `CLIPTextModelWithProjection` (SDXL's second text encoder) against transformers: a random
//! tiny component folder and reference outputs from `scripts/make_sdxl_text_fixtures.py`. The
//! penultimate hidden state and the pooled, projected embedding, for plain prompts (padded with
//! id 0 or with the end-of-text id) and for a prompt holding a learned word, whose pooled row is
//! the end-of-text position rather than transformers' `argmax(ids)`.

mod common;

use burn::prelude::*;
use common::{Golden, assert_close, fixture};
use invert_model::loading::LoadOptions;
use invert_model::loading::diffusers_folder::load_text_encoder_with_projection;

const TOL: f32 = 1e-4;
const EOS: i64 = 999;

#[test]
fn text_encoder_2_matches_transformers() {
    let device = Device::flex();
    let (model, cfg, report) = load_text_encoder_with_projection(
        &fixture("tiny-sdxl-text-encoder-2"),
        &LoadOptions::default(),
        &device,
    )
    .expect("the tiny text_encoder_2 folder loads");
    assert!(report.unexpected.is_empty(), "{:?}", report.unexpected);
    assert_eq!((cfg.hidden_act.as_str(), cfg.projection_dim), ("gelu", 24));
    assert_eq!((model.hidden_size(), model.projection_dim()), (32, 24));

    let g = Golden::open("tiny-sdxl-text-encoder-2");
    let out = model.forward(g.ids("ids", &device), None, EOS);
    assert_close(
        "penultimate",
        out.penultimate,
        g.f32("penultimate", &device),
        TOL,
    );
    assert_close(
        "text_embeds",
        out.text_embeds,
        g.f32("text_embeds", &device),
        TOL,
    );

    let extra = g.f32::<2>("learned.extra", &device);
    let out = model.forward(g.ids("learned.ids", &device), Some(&extra), EOS);
    assert_close(
        "learned word: penultimate",
        out.penultimate,
        g.f32("learned.penultimate", &device),
        TOL,
    );
    assert_close(
        "learned word: text_embeds pooled at the end of text",
        out.text_embeds,
        g.f32("learned.text_embeds", &device),
        TOL,
    );
}
