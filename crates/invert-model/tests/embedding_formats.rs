//! Embedding files: every fixture of `tests/fixtures/embeddings` (made by
//! `scripts/make_embedding_fixtures.py` with torch) is read and checked against `expected.json`,
//! the refusals are checked, and every readable embedding round-trips through the three write
//! formats. `write_outputs_for_python_check` (ignored) writes invert's outputs for
//! `scripts/check_embedding_outputs.py`, which loads them with torch, safetensors and diffusers.

use std::path::{Path, PathBuf};

use invert_model::embedding::{
    EmbeddingError, EmbeddingFormat, EmbeddingMeta, LearnedEmbedding, WriteFormat, check_width,
    read_embeddings, write_embedding,
};
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
        EmbeddingError::AlreadyExists { .. } => "AlreadyExists",
    }
}

fn check_values(file: &str, e: &LearnedEmbedding, want: &Value) {
    let shape: Vec<usize> = serde_json::from_value(want["shape"].clone()).unwrap();
    assert_eq!([e.num_vectors, e.width], shape[..], "{file}: shape");
    assert_eq!(e.vectors.len(), e.num_vectors * e.width, "{file}");
    if let Some(values) = want["values"].as_array() {
        let values: Vec<f32> = values.iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_eq!(e.vectors, values, "{file}: values");
    } else {
        let head: Vec<f32> = want["head"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(e.vectors[..head.len()], head[..], "{file}: first values");
        let sum: f64 = e.vectors.iter().map(|&v| v as f64).sum();
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
}

#[test]
fn damaged_files_fail_cleanly() {
    let dir = TempDir::new("damaged");
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let src = entry.unwrap().path();
        let name = src.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".json") || name.ends_with(".md") {
            continue;
        }
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

#[test]
fn round_trips_through_every_write_format() {
    let dir = TempDir::new("roundtrip");
    let mut n = 0;
    for (file, e) in all_readable() {
        for (k, format) in [
            WriteFormat::Diffusers,
            WriteFormat::A1111,
            WriteFormat::Kohya,
        ]
        .into_iter()
        .enumerate()
        {
            let out = dir.0.join(format!("{n}-{k}.out"));
            write_embedding(&e, &out, format, false).unwrap_or_else(|err| panic!("{file}: {err}"));
            let back = read_embeddings(&out, None).unwrap_or_else(|err| panic!("{file}: {err}"));
            assert_eq!(back.len(), 1, "{file} {format:?}");
            let b = &back[0];
            let want_format = match format {
                WriteFormat::Diffusers => EmbeddingFormat::Diffusers,
                WriteFormat::A1111 => EmbeddingFormat::A1111,
                WriteFormat::Kohya => EmbeddingFormat::Kohya,
            };
            assert_eq!(b.meta.source_format, want_format, "{file} {format:?}");
            assert_eq!(b.token, e.token, "{file} {format:?}");
            assert_eq!(
                (b.num_vectors, b.width),
                (e.num_vectors, e.width),
                "{file} {format:?}"
            );
            assert_eq!(
                b.vectors.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                e.vectors.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{file} {format:?}: values"
            );
            assert_eq!(b.meta.step, e.meta.step, "{file} {format:?}");
            assert_eq!(b.meta.base_model, e.meta.base_model, "{file} {format:?}");
            assert_eq!(
                b.meta.base_model_hash, e.meta.base_model_hash,
                "{file} {format:?}"
            );
        }
        n += 1;
    }
    assert!(n >= 20);
    // Nothing but the outputs is left behind (no temporary files).
    let left = std::fs::read_dir(&dir.0).unwrap().count();
    assert_eq!(left, n * 3);
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
