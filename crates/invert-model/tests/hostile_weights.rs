//! Weights files built to mislead (issue 7's corpus): safetensors headers whose offsets or
//! shapes lie, a claimed shape of 10^12 elements, `.ckpt` pickles that name `os.system` or
//! `builtins.eval`, and NaN inside model weights. Each is refused through `load`, the path every
//! command takes, with a message that names the file and the problem, quickly and without
//! allocating what the header claims.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::fixture;
use invert_model::loading::{LoadOptions, load};
use invert_model::weights::safetensors_file::{SafetensorsFile, check_safetensors_bytes};
use invert_model::weights::safetensors_write::write_safetensors;
use invert_model::weights::{StoredDType, TensorReader, WeightError};

struct Tmp(PathBuf);

impl Tmp {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("invert-hostile-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Tmp(dir)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A safetensors file with this JSON header (taken as is, so it may lie) and `data`.
fn raw_safetensors(path: &Path, header: serde_json::Value, data: &[u8]) {
    let header = serde_json::to_vec(&header).unwrap();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    out.extend(data);
    std::fs::write(path, out).unwrap();
}

/// `load`'s message for `path`, which must fail within a second (nothing big is allocated
/// or read: the whole test process would be killed if it were).
fn refused(path: &Path) -> String {
    let start = Instant::now();
    let msg = match load(
        path,
        &LoadOptions::default(),
        &burn::prelude::Device::flex(),
    ) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => e.to_string(),
    };
    assert!(start.elapsed().as_secs_f64() < 1.0, "slow refusal: {msg}");
    assert!(
        msg.contains(&*path.to_string_lossy()),
        "names the file: {msg}"
    );
    eprintln!("{}: {msg}", path.file_name().unwrap().to_string_lossy());
    msg
}

#[test]
fn safetensors_headers_that_lie_are_refused() {
    let tmp = Tmp::new("lies");
    let f32x4 = [0u8; 16];
    // Offsets past the end of the data (a header copied onto a shorter file).
    let past = tmp.0.join("offsets_past_end.safetensors");
    raw_safetensors(
        &past,
        serde_json::json!({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 4096]}}),
        &f32x4,
    );
    assert!(
        refused(&past).contains("data_offsets [0, 4096] lie outside the 16 data bytes"),
        "{}",
        refused(&past)
    );
    // Begin after end.
    let backwards = tmp.0.join("offsets_backwards.safetensors");
    raw_safetensors(
        &backwards,
        serde_json::json!({"w": {"dtype": "F32", "shape": [0], "data_offsets": [16, 0]}}),
        &f32x4,
    );
    assert!(refused(&backwards).contains("data_offsets [16, 0] lie outside"));
    // Two tensors claiming the same bytes.
    let overlap = tmp.0.join("offsets_overlap.safetensors");
    raw_safetensors(
        &overlap,
        serde_json::json!({
            "a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]},
            "b": {"dtype": "F32", "shape": [3], "data_offsets": [4, 16]},
        }),
        &f32x4,
    );
    assert!(refused(&overlap).contains("tensors `a` and `b` overlap"));
    // A shape that needs more bytes than the offsets give it.
    let shape = tmp.0.join("shape_lies.safetensors");
    raw_safetensors(
        &shape,
        serde_json::json!({"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 16]}}),
        &f32x4,
    );
    assert!(
        refused(&shape).contains("shape [4, 4] of F32 needs 64 bytes but data_offsets span 16")
    );
    // A dtype that is not one of the format's.
    let dtype = tmp.0.join("dtype_lies.safetensors");
    raw_safetensors(
        &dtype,
        serde_json::json!({"w": {"dtype": "F31", "shape": [4], "data_offsets": [0, 16]}}),
        &f32x4,
    );
    assert!(refused(&dtype).contains("tensor `w`: unsupported dtype F31"));
    // A length prefix larger than the file.
    let prefix = tmp.0.join("header_length_lies.safetensors");
    let mut bytes = u64::MAX.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(&prefix, &bytes).unwrap();
    assert!(refused(&prefix).contains("header length 18446744073709551615 does not fit"));
    // A header that is not JSON.
    let json = tmp.0.join("header_not_json.safetensors");
    let mut bytes = 8u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{\"w\": [}");
    std::fs::write(&json, &bytes).unwrap();
    assert!(refused(&json).contains("header is not valid JSON"));
}

#[test]
fn huge_claimed_shapes_are_refused_without_allocating() {
    let tmp = Tmp::new("huge");
    // 10^12 elements (4 TB of F32) claimed by a 16-byte file.
    let huge = tmp.0.join("shape_1e12.safetensors");
    raw_safetensors(
        &huge,
        serde_json::json!({"w": {"dtype": "F32", "shape": [1_000_000, 1_000_000], "data_offsets": [0, 16]}}),
        &[0u8; 16],
    );
    let msg = refused(&huge);
    assert!(
        msg.contains(
            "shape [1000000, 1000000] of F32 needs 4000000000000 bytes but data_offsets span 16"
        ),
        "{msg}"
    );
    // A shape whose product does not even fit in 64 bits.
    let overflow = tmp.0.join("shape_overflow.safetensors");
    raw_safetensors(
        &overflow,
        serde_json::json!({"w": {"dtype": "F32", "shape": [4294967296u64, 4294967296u64, 2], "data_offsets": [0, 16]}}),
        &[0u8; 16],
    );
    assert!(refused(&overflow).contains("tensor `w`: shape overflows"));
    // The in-memory checker (the fuzz target's entry point) agrees with the file reader.
    let bytes = std::fs::read(&huge).unwrap();
    let err = check_safetensors_bytes(&huge, &bytes).unwrap_err();
    assert!(matches!(err, WeightError::Corrupt { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        SafetensorsFile::open(&huge).unwrap_err().to_string()
    );
}

/// A torch zip checkpoint whose `data.pkl` is `pickle`.
fn ckpt_with_pickle(path: &Path, pickle: &[u8]) {
    let mut w = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    w.start_file("archive/data.pkl", opts).unwrap();
    w.write_all(pickle).unwrap();
    w.start_file("archive/version", opts).unwrap();
    w.write_all(b"3\n").unwrap();
    w.finish().unwrap();
}

#[test]
fn ckpt_pickles_naming_code_are_refused_before_running_anything() {
    let tmp = Tmp::new("ckpt");
    // `os.system("touch PWNED")` as pickle protocol 2 writes it (GLOBAL + REDUCE).
    let marker = tmp.0.join("PWNED");
    let mut os_system = b"\x80\x02cos\nsystem\nq\x00X".to_vec();
    let cmd = format!("touch {}", marker.display());
    os_system.extend_from_slice(&(cmd.len() as u32).to_le_bytes());
    os_system.extend_from_slice(cmd.as_bytes());
    os_system.extend_from_slice(b"q\x01\x85q\x02Rq\x03.");
    let path = tmp.0.join("os_system.ckpt");
    ckpt_with_pickle(&path, &os_system);
    let msg = refused(&path);
    assert!(
        msg.contains("refusing to load: the pickle references `os.system`")
            && msg.contains("never executes code")
            && msg.contains("convert the file to .safetensors"),
        "{msg}"
    );
    assert!(!marker.exists(), "the command ran");

    // `builtins.eval("...")` as protocol 4 writes it (SHORT_BINUNICODE x2 + STACK_GLOBAL).
    let mut eval = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93".to_vec();
    eval.extend_from_slice(b"\x8c\x0a__import__\x85R.");
    let path = tmp.0.join("builtins_eval.ckpt");
    ckpt_with_pickle(&path, &eval);
    let msg = refused(&path);
    assert!(
        msg.contains("the pickle references `builtins.eval`"),
        "{msg}"
    );
}

#[test]
fn nan_inside_model_weights_is_refused_naming_the_tensor() {
    let tmp = Tmp::new("nan");
    let model = tmp.0.join("model");
    copy_dir(&fixture("tiny-sd2"), &model);
    // One NaN and one infinity in a text-encoder weight, everything else intact.
    let file = model.join("text_encoder/model.safetensors");
    let victim = "encoder.layers.0.mlp.fc1.weight";
    let reader = SafetensorsFile::open(&file).unwrap();
    let names = reader.names();
    assert!(names.iter().any(|n| n == victim), "{names:?}");
    let tensors: Vec<(String, StoredDType, Vec<usize>, Vec<u8>)> = names
        .iter()
        .map(|n| {
            let meta = reader.meta(n).unwrap().clone();
            let mut bytes = reader.read_bytes(n).unwrap();
            if n == victim {
                assert_eq!(meta.dtype, StoredDType::F32);
                bytes[12..16].copy_from_slice(&f32::NAN.to_le_bytes());
                bytes[40..44].copy_from_slice(&f32::INFINITY.to_le_bytes());
            }
            (n.clone(), meta.dtype, meta.shape, bytes)
        })
        .collect();
    drop(reader);
    let list: Vec<(&str, StoredDType, &[usize], &[u8])> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), *d, s.as_slice(), b.as_slice()))
        .collect();
    write_safetensors(&file, &list, &Default::default(), true).unwrap();

    let msg = refused(&model);
    assert!(
        msg.contains(&format!(
            "tensor `{victim}` holds 2 NaN/infinite value(s) (first at element 3)"
        )) && msg.contains("re-download or re-export it"),
        "{msg}"
    );
    assert!(msg.contains("text_encoder/model.safetensors"), "{msg}");
}

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
