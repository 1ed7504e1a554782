//! Embedding files: every fixture of `tests/fixtures/embeddings` (made by
//! `scripts/make_embedding_fixtures.py` with torch) is read and checked against `expected.json`,
//! the refusals are checked, and every readable embedding round-trips through the write formats
//! of its kind (three for one text encoder, two for SDXL). `write_outputs_for_python_check`
//! (ignored) writes invert's outputs for `scripts/check_embedding_outputs.py`, which loads them
//! with torch, safetensors and diffusers (`scripts/check_sdxl_embedding_outputs.py` checks the
//! SDXL ones, written by `invert embedding convert`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use invert_model::embedding::{
    EmbeddingError, EmbeddingFormat, EmbeddingMeta, LearnedEmbedding, SecondVectors, WriteFormat,
    check_width, check_widths, embedding_family, read_embeddings, write_embedding,
};
use invert_model::weights::safetensors_write::write_safetensors;
use invert_model::weights::torch_write::{PickleValue, TensorData, write_torch_zip};
use invert_model::weights::torch_zip::TorchFile;
use invert_model::weights::{StoredDType, TensorReader};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/embeddings")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A fresh folder under the target dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("invert-emb-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn format_of(name: &str) -> EmbeddingFormat {
    match name {
        "Diffusers" => EmbeddingFormat::Diffusers,
        "A1111" => EmbeddingFormat::A1111,
        "A1111Png" => EmbeddingFormat::A1111Png,
        "Kohya" => EmbeddingFormat::Kohya,
        "OneTrainer" => EmbeddingFormat::OneTrainer,
        "Rinongal" => EmbeddingFormat::Rinongal,
        "Sdxl" => EmbeddingFormat::Sdxl,
        "DiffusersSdxl" => EmbeddingFormat::DiffusersSdxl,
        "ClipL" => EmbeddingFormat::ClipL,
        "LoraBundle" => EmbeddingFormat::LoraBundle,
        other => panic!("unknown format {other}"),
    }
}

fn error_kind(e: &EmbeddingError) -> &'static str {
    match e {
        EmbeddingError::Weights(_) => "Weights",
        EmbeddingError::Io { .. } => "Io",
        EmbeddingError::UnknownFormat { .. } => "UnknownFormat",
        EmbeddingError::Sdxl { .. } => "Sdxl",
        EmbeddingError::Xti { .. } => "Xti",
        EmbeddingError::BadShape { .. } => "BadShape",
        EmbeddingError::BadDType { .. } => "BadDType",
        EmbeddingError::NonFinite { .. } => "NonFinite",
        EmbeddingError::AmbiguousOverride { .. } => "AmbiguousOverride",
        EmbeddingError::Invalid { .. } => "Invalid",
        EmbeddingError::WidthMismatch { .. } => "WidthMismatch",
        EmbeddingError::ModelMismatch { .. } => "ModelMismatch",
        EmbeddingError::AlreadyExists { .. } => "AlreadyExists",
    }
}

/// Checks both tables (`want["second"]` describes SDXL's clip_g table) and the notes.
fn check_values(file: &str, e: &LearnedEmbedding, want: &Value) {
    check_table(file, e.num_vectors, e.width, &e.vectors, want);
    match (&e.second, want.get("second")) {
        (Some(g), Some(w)) => check_table(
            &format!("{file} (clip_g)"),
            e.num_vectors,
            g.width,
            &g.vectors,
            w,
        ),
        (None, None) => {}
        (got, _) => panic!("{file}: second table {:?}", got.as_ref().map(|g| g.width)),
    }
    if let Some(notes) = want.get("extra_contains").and_then(Value::as_object) {
        for (k, v) in notes {
            let have = e.meta.extra.get(k).map(String::as_str).unwrap_or("");
            assert!(
                have.contains(v.as_str().unwrap()),
                "{file}: extra[{k}] = `{have}` lacks `{v}`"
            );
        }
    }
}

fn check_table(file: &str, n: usize, width: usize, vectors: &[f32], want: &Value) {
    let shape: Vec<usize> = serde_json::from_value(want["shape"].clone()).unwrap();
    assert_eq!([n, width], shape[..], "{file}: shape");
    assert_eq!(vectors.len(), n * width, "{file}");
    if let Some(values) = want["values"].as_array() {
        let values: Vec<f32> = values.iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_eq!(vectors, values, "{file}: values");
    } else {
        let head: Vec<f32> = want["head"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(vectors[..head.len()], head[..], "{file}: first values");
        let sum: f64 = vectors.iter().map(|&v| v as f64).sum();
        let want_sum = want["sum"].as_f64().unwrap();
        assert!(
            (sum - want_sum).abs() < 1e-9,
            "{file}: sum {sum} vs {want_sum}"
        );
    }
}

#[test]
fn reads_every_fixture_as_expected() {
    let expected = expected();
    let files = expected["files"].as_object().unwrap();
    assert!(
        files.len() >= 30,
        "expected.json lists {} files",
        files.len()
    );
    let (mut read, mut refused) = (0, 0);
    for (file, want) in files {
        let path = fixtures().join(file);
        let result = read_embeddings(&path, None);
        if let Some(kind) = want["error"].as_str() {
            let err = match result {
                Ok(es) => panic!(
                    "{file}: should be refused ({kind}) but read {} embeddings",
                    es.len()
                ),
                Err(e) => e,
            };
            let msg = err.to_string();
            assert_eq!(error_kind(&err), kind, "{file}: {msg}");
            assert!(
                msg.contains(file.as_str()),
                "{file}: the message does not name the file: {msg}"
            );
            let says = want["message_contains"].as_str().unwrap();
            assert!(msg.contains(says), "{file}: `{msg}` does not say `{says}`");
            refused += 1;
            continue;
        }
        let es = result.unwrap_or_else(|e| panic!("{file}: {e}"));
        let want_es = want["embeddings"].as_array().unwrap();
        assert_eq!(es.len(), want_es.len(), "{file}: number of embeddings");
        for (e, w) in es.iter().zip(want_es) {
            assert_eq!(e.token, w["token"].as_str().unwrap(), "{file}: token");
            assert_eq!(
                e.meta.source_format,
                format_of(want["format"].as_str().unwrap()),
                "{file}"
            );
            check_values(file, e, w);
            assert_eq!(e.meta.step, w["step"].as_u64(), "{file}: step");
            assert_eq!(
                e.meta.base_model.as_deref(),
                w["base_model"].as_str(),
                "{file}: base model"
            );
            assert_eq!(
                e.meta.base_model_hash.as_deref(),
                w["base_model_hash"].as_str(),
                "{file}: base model hash"
            );
        }
        read += 1;
    }
    assert!(read >= 20 && refused >= 8, "read {read}, refused {refused}");
}

#[test]
fn format_details() {
    let one = |f: &str| {
        let mut es = read_embeddings(&fixtures().join(f), None).unwrap();
        assert_eq!(es.len(), 1, "{f}");
        es.remove(0)
    };
    let ot = one("onetrainer.safetensors");
    assert!(
        ot.meta.extra["ignored"].starts_with("emp_params_out"),
        "{:?}",
        ot.meta.extra
    );
    assert_eq!(
        one("a1111_zip.pt").meta.extra["placeholder_token_id"],
        "265"
    );
    assert_eq!(one("a1111_text.png").meta.extra["png"], "tEXt");
    assert_eq!(one("a1111_ztxt.png").meta.extra["png"], "zTXt");
    assert_eq!(one("a1111_itxt.png").meta.extra["png"], "iTXt");
    assert_eq!(one("a1111_pixels.png").meta.extra["png"], "pixels");
    let kohya = one("kohya_fp16.safetensors");
    assert_eq!(
        kohya.meta.extra["safetensors.modelspec.architecture"],
        "stable-diffusion-v1/textual-inversion"
    );
    let multi = one("diffusers_multi.safetensors");
    assert_eq!(multi.vector(2), &multi.vectors[64..96]);
}

#[test]
fn token_override() {
    let f = fixtures().join("kohya_token.pt");
    let es = read_embeddings(&f, Some("<my-concept>")).unwrap();
    assert_eq!(es[0].token, "<my-concept>");
    let es = read_embeddings(&fixtures().join("a1111_zip.pt"), Some("other")).unwrap();
    assert_eq!(es[0].token, "other");
    let err = read_embeddings(&fixtures().join("diffusers_two_tokens.bin"), Some("x")).unwrap_err();
    assert_eq!(error_kind(&err), "AmbiguousOverride", "{err}");
    assert!(err.to_string().contains("`<tok-a>`, `<tok-b>`"), "{err}");
}

#[test]
fn width_check_names_the_families() {
    let check = |file: &str, model: usize| {
        let path = fixtures().join(file);
        let e = read_embeddings(&path, None).unwrap().remove(0);
        check_width(&e, model, &path).map_err(|e| e.to_string())
    };
    check("sd1_768.pt", 768).unwrap();
    check("sd2_1024.safetensors", 1024).unwrap();
    check("diffusers_single.safetensors", 32).unwrap();
    let msg = check("sd1_768.pt", 1024).unwrap_err();
    assert!(
        msg.contains("sd1_768.pt") && msg.contains("768 wide, made for SD 1.x"),
        "{msg}"
    );
    assert!(msg.contains("text encoder is 1024 wide (SD 2.x"), "{msg}");
    let msg = check("sd2_1024.safetensors", 768).unwrap_err();
    assert!(
        msg.contains("made for SD 2.x") && msg.contains("(SD 1.x"),
        "{msg}"
    );
    let msg = check("sdxl_learned_embeds_2.safetensors", 768).unwrap_err();
    assert!(msg.contains("SDXL") && msg.contains("clip_g"), "{msg}");

    // SDXL embeddings against one-encoder and SDXL models, and the reverse.
    let widths = |file: &str, first: usize, second: Option<usize>| {
        let path = fixtures().join(file);
        let e = read_embeddings(&path, None).unwrap().remove(0);
        check_widths(&e, first, second, &path).map_err(|e| (error_kind(&e), e.to_string()))
    };
    let (kind, msg) = check("sdxl_clip_l_g.safetensors", 768)
        .map_err(|m| ("", m))
        .unwrap_err();
    assert_eq!(kind, "");
    assert!(
        msg.contains("is an SDXL embedding (1 vector(s) for each of two text encoders, clip_l 768")
            && msg.contains("has one text encoder, 768 wide")
            && msg.contains("SDXL embeddings work with SDXL models only"),
        "{msg}"
    );
    widths("sdxl_clip_l_g.safetensors", 768, Some(1280)).unwrap();
    widths("diffusers_sdxl/learned_embeds.safetensors", 8, Some(16)).unwrap();
    let (kind, msg) = widths("sdxl_clip_l_g.safetensors", 768, Some(1024)).unwrap_err();
    assert_eq!(kind, "WidthMismatch");
    assert!(
        msg.contains("`sdxl_clip_l_g (clip_g)` is 1280 wide"),
        "{msg}"
    );
    let (kind, msg) = widths("sd1_768.pt", 768, Some(1280)).unwrap_err();
    assert_eq!(kind, "ModelMismatch");
    assert!(
        msg.contains("rows for one text encoder") && msg.contains("learned_embeds_2.safetensors"),
        "{msg}"
    );
}

#[test]
fn damaged_files_fail_cleanly() {
    let dir = TempDir::new("damaged");
    for (name, src) in fixture_files() {
        if name.ends_with(".json") || name.ends_with(".md") {
            continue;
        }
        // The copies' names (`cut8-diffusers_sdxl_learned_embeds.safetensors`) are not
        // diffusers' two-file names, so each file is read alone.
        let name = name.replace('/', "_");
        let bytes = std::fs::read(&src).unwrap();
        let len = bytes.len();
        let mut variants: Vec<(String, Vec<u8>)> = [0, 1, 8, 13, 40, len / 3, len / 2, len - 1]
            .into_iter()
            .filter(|&n| n < len)
            .map(|n| (format!("cut{n}"), bytes[..n].to_vec()))
            .collect();
        for at in [len / 4, len / 2, 3 * len / 4] {
            let mut b = bytes.clone();
            b[at] ^= 0x5a;
            variants.push((format!("flip{at}"), b));
        }
        for (how, b) in variants {
            let path = dir.0.join(format!("{how}-{name}"));
            std::fs::write(&path, b).unwrap();
            // Anything but a panic; errors name the file.
            if let Err(e) = read_embeddings(&path, None) {
                let msg = e.to_string();
                assert!(
                    msg.contains(&*path.to_string_lossy()),
                    "{how} {name}: {msg}"
                );
            }
        }
    }
}

/// Every fixture file, also those in the folders of diffusers' two-file SDXL form, with its
/// name relative to the fixture folder.
fn fixture_files() -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            for inner in std::fs::read_dir(&path).unwrap() {
                let inner = inner.unwrap().path();
                let file = inner.file_name().unwrap().to_string_lossy().into_owned();
                out.push((format!("{name}/{file}"), inner));
            }
        } else {
            out.push((name, path));
        }
    }
    out.sort();
    out
}

/// Every file under `dir`, recursively.
fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            if p.is_dir() { count_files(&p) } else { 1 }
        })
        .sum()
}

fn all_readable() -> Vec<(String, LearnedEmbedding)> {
    let expected = expected();
    let mut out = Vec::new();
    for (file, want) in expected["files"].as_object().unwrap() {
        if want.get("error").is_none() {
            for e in read_embeddings(&fixtures().join(file), None).unwrap() {
                out.push((file.clone(), e));
            }
        }
    }
    out
}

const ONE_ENCODER: [WriteFormat; 3] = [
    WriteFormat::Diffusers,
    WriteFormat::A1111,
    WriteFormat::Kohya,
];
const SDXL: [WriteFormat; 2] = [WriteFormat::Sdxl, WriteFormat::DiffusersSdxl];

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|v| v.to_bits()).collect()
}

/// Where a round trip writes `format`: the two-file form needs diffusers' names, in a folder
/// of its own.
fn out_path(dir: &Path, tag: &str, format: WriteFormat) -> PathBuf {
    if format == WriteFormat::DiffusersSdxl {
        let d = dir.join(tag);
        std::fs::create_dir_all(&d).unwrap();
        d.join("learned_embeds.safetensors")
    } else {
        dir.join(format!("{tag}.out"))
    }
}

#[test]
fn round_trips_through_every_write_format() {
    let dir = TempDir::new("roundtrip");
    let (mut n, mut sdxl) = (0, 0);
    for (file, e) in all_readable() {
        let (formats, wrong): (&[WriteFormat], _) = match e.second {
            Some(_) => (&SDXL, WriteFormat::Kohya),
            None => (&ONE_ENCODER, WriteFormat::Sdxl),
        };
        for (k, &format) in formats.iter().enumerate() {
            let out = out_path(&dir.0, &format!("{n}-{k}"), format);
            write_embedding(&e, &out, format, false).unwrap_or_else(|err| panic!("{file}: {err}"));
            let back = read_embeddings(&out, None).unwrap_or_else(|err| panic!("{file}: {err}"));
            assert_eq!(back.len(), 1, "{file} {format:?}");
            let b = &back[0];
            let want_format = match format {
                WriteFormat::Diffusers => EmbeddingFormat::Diffusers,
                WriteFormat::A1111 => EmbeddingFormat::A1111,
                WriteFormat::Kohya => EmbeddingFormat::Kohya,
                WriteFormat::Sdxl => EmbeddingFormat::Sdxl,
                WriteFormat::DiffusersSdxl => EmbeddingFormat::DiffusersSdxl,
            };
            assert_eq!(b.meta.source_format, want_format, "{file} {format:?}");
            assert_eq!(b.token, e.token, "{file} {format:?}");
            assert_eq!(
                (b.num_vectors, b.width),
                (e.num_vectors, e.width),
                "{file} {format:?}"
            );
            assert_eq!(bits(&b.vectors), bits(&e.vectors), "{file} {format:?}");
            assert_eq!(
                b.second.as_ref().map(|g| (g.width, bits(&g.vectors))),
                e.second.as_ref().map(|g| (g.width, bits(&g.vectors))),
                "{file} {format:?}: clip_g"
            );
            assert_eq!(b.meta.step, e.meta.step, "{file} {format:?}");
            assert_eq!(b.meta.base_model, e.meta.base_model, "{file} {format:?}");
            assert_eq!(
                b.meta.base_model_hash, e.meta.base_model_hash,
                "{file} {format:?}"
            );
        }
        // The other kind of format is refused, and writes nothing.
        let out = dir.0.join(format!("{n}-wrong.out"));
        let err = write_embedding(&e, &out, wrong, false).unwrap_err();
        assert_eq!(error_kind(&err), "Invalid", "{file}: {err}");
        assert!(!out.exists(), "{file}");
        sdxl += usize::from(e.second.is_some());
        n += 1;
    }
    assert!(n >= 30 && sdxl >= 10, "{n} embeddings, {sdxl} SDXL");
    // Nothing but the outputs is left behind (no temporary files): three files per embedding
    // either way (diffusers-sdxl writes two).
    assert_eq!(count_files(&dir.0), n * 3);
}

fn sample(token: &str, n: usize, width: usize) -> LearnedEmbedding {
    let vectors = (0..n * width)
        .map(|i| ((i as f32) * 0.37).sin() * 0.05 + (i % 7) as f32 * 1e-3)
        .collect();
    let mut meta = EmbeddingMeta::new(EmbeddingFormat::Diffusers);
    meta.step = Some(1500);
    meta.base_model = Some("tiny-sd1".into());
    meta.base_model_hash = Some("0123abcd".into());
    LearnedEmbedding {
        token: token.into(),
        vectors,
        num_vectors: n,
        width,
        second: None,
        meta,
    }
}

/// An SDXL embedding: `sample`'s rows as clip_l, and clip_g rows `width_g` wide.
fn sample_sdxl(token: &str, n: usize, width_l: usize, width_g: usize) -> LearnedEmbedding {
    let mut e = sample(token, n, width_l);
    e.second = Some(SecondVectors {
        vectors: (0..n * width_g)
            .map(|i| ((i as f32) * 0.11).cos() * 0.03 - (i % 5) as f32 * 2e-3)
            .collect(),
        width: width_g,
    });
    e
}

#[test]
fn writes_refuse_to_overwrite_and_stay_atomic() {
    let dir = TempDir::new("overwrite");
    let e = sample("<ow>", 2, 32);
    for format in [
        WriteFormat::Diffusers,
        WriteFormat::A1111,
        WriteFormat::Kohya,
    ] {
        let path = dir.0.join(format.default_file_name("ow"));
        std::fs::write(&path, b"precious").unwrap();
        let err = write_embedding(&e, &path, format, false).unwrap_err();
        assert_eq!(error_kind(&err), "AlreadyExists", "{err}");
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
        write_embedding(&e, &path, format, true).unwrap();
        assert_eq!(read_embeddings(&path, None).unwrap()[0].vectors, e.vectors);
    }
    // Invalid embeddings are refused before anything is written.
    let mut bad = sample("<bad>", 1, 32);
    bad.vectors[3] = f32::NAN;
    let path = dir.0.join("bad.safetensors");
    let err = write_embedding(&bad, &path, WriteFormat::Diffusers, false).unwrap_err();
    assert_eq!(error_kind(&err), "NonFinite", "{err}");
    let mut short = sample("<short>", 2, 32);
    short.vectors.pop();
    assert!(write_embedding(&short, &path, WriteFormat::Kohya, false).is_err());
    let err = write_embedding(
        &sample("<x>", 1, 4),
        &dir.0.join("no/such/dir.pt"),
        WriteFormat::A1111,
        false,
    )
    .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(!path.exists());
    let names: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
}

#[test]
fn sdxl_writes_refuse_to_overwrite_either_file() {
    let dir = TempDir::new("sdxl-overwrite");
    let e = sample_sdxl("<xl>", 2, 8, 16);
    assert_eq!(WriteFormat::default_for(&e), WriteFormat::Sdxl);
    assert_eq!(
        WriteFormat::default_for(&sample("<x>", 1, 8)),
        WriteFormat::Diffusers
    );
    assert_eq!(
        WriteFormat::Sdxl.default_file_name("<xl>"),
        "xl.safetensors"
    );
    assert_eq!(
        WriteFormat::DiffusersSdxl.default_file_name("<xl>"),
        "learned_embeds.safetensors"
    );
    let pair = dir.0.join(WriteFormat::Sdxl.default_file_name("<xl>"));
    std::fs::write(&pair, b"precious").unwrap();
    let err = write_embedding(&e, &pair, WriteFormat::Sdxl, false).unwrap_err();
    assert_eq!(error_kind(&err), "AlreadyExists", "{err}");
    assert_eq!(std::fs::read(&pair).unwrap(), b"precious");
    write_embedding(&e, &pair, WriteFormat::Sdxl, true).unwrap();
    assert_eq!(read_embeddings(&pair, None).unwrap()[0], {
        let mut want = e.clone();
        want.meta = read_embeddings(&pair, None).unwrap()[0].meta.clone();
        want
    });

    // Only the second file of the two exists: it is named, and neither file is written.
    let two = dir.0.join("two");
    std::fs::create_dir(&two).unwrap();
    let first = two.join("learned_embeds.safetensors");
    let second = two.join("learned_embeds_2.safetensors");
    std::fs::write(&second, b"precious").unwrap();
    let err = write_embedding(&e, &first, WriteFormat::DiffusersSdxl, false).unwrap_err();
    assert_eq!(error_kind(&err), "AlreadyExists", "{err}");
    assert!(
        err.to_string().contains("learned_embeds_2.safetensors"),
        "{err}"
    );
    assert!(!first.exists());
    assert_eq!(std::fs::read(&second).unwrap(), b"precious");
    write_embedding(&e, &first, WriteFormat::DiffusersSdxl, true).unwrap();
    for path in [&first, &second] {
        let back = read_embeddings(path, None).unwrap();
        assert_eq!(back[0].second, e.second, "{}", path.display());
        assert_eq!(back[0].vectors, e.vectors);
    }
    assert_eq!(count_files(&dir.0), 3, "no temporary files");

    // Steps files pair by their number; a name diffusers does not write is refused.
    let steps = two.join("learned_embeds-steps-7.safetensors");
    write_embedding(&e, &steps, WriteFormat::DiffusersSdxl, false).unwrap();
    let back = read_embeddings(&two.join("learned_embeds_2-steps-7.safetensors"), None).unwrap();
    assert_eq!(back[0].meta.source_format, EmbeddingFormat::DiffusersSdxl);
    assert_eq!(back[0].second, e.second);
    for bad in ["xl.safetensors", "learned_embeds_2.safetensors"] {
        let path = dir.0.join("elsewhere").join(bad);
        let err = write_embedding(&e, &path, WriteFormat::DiffusersSdxl, true).unwrap_err();
        assert!(
            err.to_string()
                .contains("name the output learned_embeds.safetensors"),
            "{err}"
        );
    }
}

#[test]
fn sdxl_writes_keep_each_kind_in_its_formats() {
    let dir = TempDir::new("sdxl-kinds");
    let xl = sample_sdxl("<xl>", 1, 8, 16);
    for format in ONE_ENCODER {
        let path = dir.0.join(format!("{}.out", format.name()));
        let msg = write_embedding(&xl, &path, format, false)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("it is an SDXL embedding") && msg.contains("diffusers-sdxl"),
            "{msg}"
        );
    }
    let one = sample("<one>", 1, 768);
    for format in SDXL {
        let path = dir.0.join("learned_embeds.safetensors");
        let msg = write_embedding(&one, &path, format, false)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("rows for one text encoder (768 wide: SD 1.x")
                && msg.contains("as diffusers, a1111 or kohya"),
            "{msg}"
        );
    }
    // A clip_g table of the wrong size, and NaN in it, are refused before writing.
    let mut short = xl.clone();
    short.second.as_mut().unwrap().vectors.pop();
    let path = dir.0.join("short.safetensors");
    let msg = write_embedding(&short, &path, WriteFormat::Sdxl, false)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("clip_g table's 15 values"), "{msg}");
    let mut nan = xl.clone();
    nan.second.as_mut().unwrap().vectors[4] = f32::INFINITY;
    let msg = write_embedding(&nan, &path, WriteFormat::Sdxl, false)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("`<xl> (clip_g)` holds 1 NaN"), "{msg}");
    assert_eq!(count_files(&dir.0), 0);
}

#[test]
fn sdxl_reading_details() {
    let dir = TempDir::new("sdxl-read");
    let f = |name: &str| fixtures().join(name);
    // A token given replaces the file stem of a {clip_l, clip_g} file.
    let es = read_embeddings(&f("sdxl_kohya.safetensors"), Some("<kohya-xl>")).unwrap();
    assert_eq!(es[0].token, "<kohya-xl>");
    assert_eq!(
        es[0].meta.extra["safetensors.modelspec.architecture"],
        "stable-diffusion-xl-v1-base/textual-inversion"
    );
    // The real widths are named in full.
    let real = read_embeddings(&f("sdxl_clip_l_g.safetensors"), None)
        .unwrap()
        .remove(0);
    assert!(embedding_family(&real).starts_with("SDXL (clip_l: CLIP ViT-L/14, 768 wide"));
    assert!(embedding_family(&es[0]).contains("8 + 16 wide text encoders"));

    let tensors = |path: &Path, entries: &[(&str, &[usize])]| {
        let data: Vec<Vec<u8>> = entries
            .iter()
            .map(|(_, shape)| vec![0u8; shape.iter().product::<usize>() * 4])
            .collect();
        let list: Vec<_> = entries
            .iter()
            .zip(&data)
            .map(|((name, shape), d)| {
                (
                    *name,
                    invert_model::weights::StoredDType::F32,
                    *shape,
                    d.as_slice(),
                )
            })
            .collect();
        write_safetensors(path, &list, &BTreeMap::new(), true).unwrap();
    };
    // Swapped tables.
    let swapped = dir.0.join("swapped.safetensors");
    tensors(&swapped, &[("clip_l", &[1, 1280]), ("clip_g", &[1, 768])]);
    let msg = read_embeddings(&swapped, None).unwrap_err().to_string();
    assert!(msg.contains("the tables are swapped"), "{msg}");
    // Only OneTrainer's output tables.
    let outs = dir.0.join("outs.safetensors");
    tensors(&outs, &[("clip_l_out", &[1, 8]), ("clip_g_out", &[1, 16])]);
    let msg = read_embeddings(&outs, None).unwrap_err().to_string();
    assert!(
        msg.contains("only OneTrainer's output-side tables"),
        "{msg}"
    );
    // A token merely starting like a table name is a diffusers token.
    let girl = dir.0.join("girl.safetensors");
    tensors(&girl, &[("clip_girl", &[1, 8])]);
    assert_eq!(read_embeddings(&girl, None).unwrap()[0].token, "clip_girl");

    // Two files holding different words are not one embedding; a first file alone is an
    // ordinary diffusers file.
    let two = dir.0.join("two");
    std::fs::create_dir(&two).unwrap();
    tensors(&two.join("learned_embeds.safetensors"), &[("<a>", &[1, 8])]);
    let alone = read_embeddings(&two.join("learned_embeds.safetensors"), None).unwrap();
    assert_eq!(alone[0].meta.source_format, EmbeddingFormat::Diffusers);
    assert!(alone[0].second.is_none());
    tensors(
        &two.join("learned_embeds_2.safetensors"),
        &[("<b>", &[1, 16])],
    );
    let msg = read_embeddings(&two.join("learned_embeds.safetensors"), None)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("are not the two halves of one SDXL embedding: the first holds `<a>`"),
        "{msg}"
    );

    // LoRA bundles: tokens from the bundle names; a token given needs one embedding.
    let err = read_embeddings(&f("lora_bundle_sdxl.safetensors"), Some("x")).unwrap_err();
    assert_eq!(error_kind(&err), "AmbiguousOverride", "{err}");
    let bundled = read_embeddings(&f("lora_bundle_sdxl.safetensors"), None).unwrap();
    assert!(
        !bundled[0]
            .meta
            .extra
            .keys()
            .any(|k| k.starts_with("safetensors.ss_")),
        "kohya's training fields are left out: {:?}",
        bundled[0].meta.extra
    );
    let bad = dir.0.join("bad_bundle.safetensors");
    tensors(&bad, &[("bundle_emb.nothing", &[1, 8])]);
    let msg = read_embeddings(&bad, None).unwrap_err().to_string();
    assert!(msg.contains("is not `bundle_emb.<name>.<tensor>`"), "{msg}");
}

#[test]
fn a1111_output_is_a_torch_zip_as_torch_writes_it() {
    let dir = TempDir::new("zip");
    let path = dir.0.join("z.pt");
    write_embedding(&sample("<z>", 3, 32), &path, WriteFormat::A1111, false).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&bytes)).unwrap();
    let names: Vec<String> = zip.file_names().map(String::from).collect();
    assert_eq!(
        names,
        [
            "archive/data.pkl",
            "archive/byteorder",
            "archive/data/0",
            "archive/version"
        ]
    );
    for i in 0..zip.len() {
        let f = zip.by_index(i).unwrap();
        assert_eq!(f.compression(), zip::CompressionMethod::Stored);
        assert_eq!(
            f.data_start() % 64,
            0,
            "{} is not 64-byte aligned",
            f.name()
        );
    }
    let mut v = String::new();
    std::io::Read::read_to_string(&mut zip.by_name("archive/version").unwrap(), &mut v).unwrap();
    assert_eq!(v, "3\n");
    assert_eq!(zip.by_name("archive/data/0").unwrap().size(), 3 * 32 * 4);
}

/// Integers that exercise every pickle int encoding (BININT1/2, BININT, LONG1).
const INTS: [i64; 8] = [0, 255, 256, 65_535, 65_536, -1, -2_147_483_649, i64::MIN];

/// A state dict with more than 256 memoized values (LONG_BINPUT/LONG_BINGET), shared strings,
/// nested dicts, every int encoding, bools, None and tensors of several dtypes.
fn stress_tree(data: &[Vec<u8>]) -> PickleValue<'_> {
    let mut items = Vec::new();
    for (i, bytes) in data.iter().enumerate() {
        let dtype = [StoredDType::F32, StoredDType::F16, StoredDType::I64][i % 3];
        let shape = vec![2, bytes.len() / 2 / dtype.size()];
        let mut inner = vec![
            (
                "t".to_string(),
                PickleValue::Tensor(TensorData {
                    dtype,
                    shape,
                    data: bytes,
                }),
            ),
            ("n".to_string(), PickleValue::Int(INTS[i % INTS.len()])),
            ("shared".to_string(), PickleValue::Str("same string".into())),
            (format!("own{i}"), PickleValue::Str(format!("value {i}"))),
        ];
        if i >= 100 {
            // First memoized past slot 255, then fetched with LONG_BINGET.
            inner.push(("late".into(), PickleValue::Str("late string".into())));
        }
        if i % 50 == 0 {
            inner.push(("flag".into(), PickleValue::Bool(i % 100 == 0)));
            inner.push(("none".into(), PickleValue::None));
        }
        items.push((format!("entry{i}"), PickleValue::Dict(inner)));
    }
    PickleValue::Dict(items)
}

/// Row-major bytes of `stress_tree`'s tensor `i` (2 rows of 3 elements).
fn stress_data() -> Vec<Vec<u8>> {
    (0..120)
        .map(|i| match i % 3 {
            0 => (0..6)
                .flat_map(|k| (i as f32 + k as f32 * 0.25).to_le_bytes())
                .collect(),
            1 => (0..6)
                .flat_map(|k| half::f16::from_f32(i as f32 - k as f32).to_le_bytes())
                .collect(),
            _ => (0..6)
                .flat_map(|k| (i as i64 * 1000 - k).to_le_bytes())
                .collect(),
        })
        .collect()
}

#[test]
fn torch_writer_round_trips_large_pickles() {
    let dir = TempDir::new("stress");
    let path = dir.0.join("stress.pt");
    let data = stress_data();
    write_torch_zip(&path, &stress_tree(&data), false).unwrap();
    let f = TorchFile::open(&path).unwrap();
    assert_eq!(f.names().len(), 120);
    for (i, bytes) in data.iter().enumerate() {
        let t = format!("entry{i}.t");
        assert_eq!(f.meta(&t).unwrap().shape, [2, 3]);
        match i % 3 {
            0 => assert_eq!(
                f.read_f32(&t).unwrap(),
                (0..6)
                    .map(|k| i as f32 + k as f32 * 0.25)
                    .collect::<Vec<_>>()
            ),
            1 => assert_eq!(
                f.read_f32(&t).unwrap(),
                (0..6).map(|k| i as f32 - k as f32).collect::<Vec<_>>()
            ),
            _ => assert_eq!(
                f.read_i64(&t).unwrap(),
                bytes
                    .chunks(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect::<Vec<_>>()
            ),
        }
        assert_eq!(
            f.int_value(&format!("entry{i}.n")),
            Some(INTS[i % INTS.len()])
        );
        assert_eq!(
            f.str_value(&format!("entry{i}.shared")),
            Some("same string")
        );
        let late = f.str_value(&format!("entry{i}.late"));
        assert_eq!(late, (i >= 100).then_some("late string"));
        let own = format!("value {i}");
        assert_eq!(f.str_value(&format!("entry{i}.own{i}")), Some(own.as_str()));
    }
}

/// Writes invert's three output formats to `$INVERT_EMBED_OUT` for
/// `scripts/check_embedding_outputs.py`, with `expected.json` holding the values.
#[test]
#[ignore = "writes files for the Python check: INVERT_EMBED_OUT=dir cargo test -- --ignored"]
fn write_outputs_for_python_check() {
    let dir = PathBuf::from(std::env::var("INVERT_EMBED_OUT").expect("set INVERT_EMBED_OUT"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut expected = serde_json::Map::new();
    for (file, token, n, format) in [
        (
            "invert_diffusers.safetensors",
            "<invert-diffusers>",
            3,
            WriteFormat::Diffusers,
        ),
        ("invert_a1111.pt", "invert-a1111", 2, WriteFormat::A1111),
        (
            "invert_kohya.safetensors",
            "<invert-kohya>",
            1,
            WriteFormat::Kohya,
        ),
    ] {
        let e = sample(token, n, 32);
        write_embedding(&e, &dir.join(file), format, true).unwrap();
        expected.insert(
            file.into(),
            serde_json::json!({
                "token": token,
                "shape": [n, 32],
                "values": e.vectors,
                "step": e.meta.step,
                "base_model": e.meta.base_model,
                "base_model_hash": e.meta.base_model_hash,
                "format": format!("{format:?}"),
                "invert_version": env!("CARGO_PKG_VERSION"),
            }),
        );
    }
    // The generic torch writer, for torch.load to check.
    let data = stress_data();
    write_torch_zip(
        &dir.join("torch_write_stress.pt"),
        &stress_tree(&data),
        true,
    )
    .unwrap();
    expected.insert("stress_ints".into(), serde_json::json!(INTS));
    let json = serde_json::to_string_pretty(&Value::Object(expected)).unwrap();
    std::fs::write(dir.join("expected.json"), json).unwrap();
}
