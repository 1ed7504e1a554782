//! Real files written by torch (`scripts/make_torch_fixtures.py`), hand-built archives, and
//! truncated or corrupted copies of both.

use std::io::Write;

use zip::CompressionMethod::{Deflated, Stored};

use super::super::pickle::tests::P;
use super::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/torch");

fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

/// A per-test temporary directory, removed when dropped.
struct Tmp(PathBuf);

impl Tmp {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("invert-torch-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Tmp(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
    /// A zip of `(name, data, deflate)` entries.
    fn zip(&self, name: &str, entries: &[(&str, &[u8], bool)]) -> PathBuf {
        let path = self.path(name);
        let mut w = zip::ZipWriter::new(File::create(&path).unwrap());
        for &(entry, data, deflate) in entries {
            let method = if deflate { Deflated } else { Stored };
            let opts = zip::write::SimpleFileOptions::default().compression_method(method);
            w.start_file(entry, opts).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap();
        path
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn reason(r: Result<TorchFile, WeightError>) -> String {
    match r {
        Err(WeightError::Corrupt { reason, .. }) => reason,
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

fn read_everything(f: &TorchFile) {
    for name in f.names() {
        let _ = f.read_f32(&name);
        let _ = f.read_i64(&name);
    }
}

#[test]
fn reads_every_fixture_as_torch_wrote_it() {
    let text = std::fs::read_to_string(fixture("expected.json")).unwrap();
    let expected: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut checked = 0;
    for (file, want) in expected.as_object().unwrap() {
        if want.get("unsafe_global").is_some() {
            continue;
        }
        let f = TorchFile::open(&fixture(file)).unwrap_or_else(|e| panic!("{e}"));
        let tensors = want["tensors"].as_object().unwrap();
        assert_eq!(
            f.names(),
            tensors.keys().cloned().collect::<Vec<_>>(),
            "{file}"
        );
        for (name, t) in tensors {
            let meta = f.meta(name).unwrap();
            assert_eq!(
                format!("{:?}", meta.dtype),
                t["dtype"].as_str().unwrap(),
                "{file} {name}"
            );
            let shape: Vec<usize> = serde_json::from_value(t["shape"].clone()).unwrap();
            assert_eq!(meta.shape, shape, "{file} {name}");
            if let Some(values) = t.get("values") {
                let values: Vec<f64> = serde_json::from_value(values.clone()).unwrap();
                let values: Vec<f32> = values.into_iter().map(|v| v as f32).collect();
                assert_eq!(f.read_f32(name).unwrap(), values, "{file} {name}");
            } else {
                let ints: Vec<i64> = serde_json::from_value(t["ints"].clone()).unwrap();
                assert_eq!(f.read_i64(name).unwrap(), ints, "{file} {name}");
                assert!(matches!(
                    f.read_f32(name),
                    Err(WeightError::NotFloat { .. })
                ));
            }
            checked += 1;
        }
        let ints = want["ints"].as_object().unwrap();
        assert_eq!(
            f.int_names().collect::<Vec<_>>(),
            ints.keys().collect::<Vec<_>>(),
            "{file}"
        );
        for (k, v) in ints {
            assert_eq!(f.int_value(k), v.as_i64(), "{file} {k}");
        }
        let strs = want["strs"].as_object().unwrap();
        assert_eq!(
            f.str_names().collect::<Vec<_>>(),
            strs.keys().collect::<Vec<_>>(),
            "{file}"
        );
        for (k, v) in strs {
            assert_eq!(f.str_value(k), v.as_str(), "{file} {k}");
        }
    }
    assert!(checked >= 35, "only {checked} tensors checked");
    let emb = TorchFile::open(&fixture("a1111_emb_legacy.pt")).unwrap();
    assert_eq!(emb.int_value("string_to_token.*"), Some(265));
    assert_eq!(emb.str_value("sd_checkpoint_name"), Some("model"));
    assert_eq!(emb.meta("string_to_param.*").unwrap().shape, [2, 8]);
}

#[test]
fn malicious_fixture_is_refused() {
    match TorchFile::open(&fixture("malicious.pt")) {
        Err(e @ WeightError::UnsafeGlobal { .. }) => {
            assert!(
                matches!(&e, WeightError::UnsafeGlobal { global, .. } if global == "posix.system")
            );
            assert!(e.to_string().contains("never executes code"));
        }
        other => panic!("expected UnsafeGlobal, got {other:?}"),
    }
}

#[test]
fn reader_errors_name_the_problem() {
    let tmp = Tmp::new("errors");
    let f = TorchFile::open(&fixture("zip_proto4.pt")).unwrap();
    assert!(
        matches!(f.read_f32("nope"), Err(WeightError::NoSuchTensor { name, .. }) if name == "nope")
    );
    assert!(matches!(
        f.read_f32("i64"),
        Err(WeightError::NotFloat {
            dtype: StoredDType::I64,
            ..
        })
    ));
    assert!(
        f.read_i64("f64")
            .unwrap_err()
            .to_string()
            .contains("cannot be read as integers")
    );
    assert!(matches!(
        TorchFile::open(&tmp.path("does-not-exist.pt")),
        Err(WeightError::Io { .. })
    ));
    for (name, bytes) in [
        ("text.pt", &b"hello, world\n"[..]),
        ("empty.pt", b""),
        ("zipish.pt", b"PK\x03\x04junk"),
    ] {
        let r = reason(TorchFile::open(&tmp.write(name, bytes)));
        assert!(
            r.contains("not a torch checkpoint") || r.contains("zip"),
            "{name}: {r}"
        );
    }
}

#[test]
fn is_torch_file_recognises_both_formats() {
    for name in [
        "zip_f32.pt",
        "legacy.pt",
        "a1111_emb_legacy.pt",
        "checkpoint.ckpt",
    ] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        assert!(is_torch_file(&bytes[..32]), "{name}");
    }
    assert!(!is_torch_file(b"\x80\x02}q\x00(X\x01\x00\x00\x00a"));
    assert!(!is_torch_file(b"{\"__metadata__\": {}}"));
    assert!(!is_torch_file(b""));
}

#[test]
fn truncated_or_corrupted_fixtures_fail_cleanly() {
    let tmp = Tmp::new("truncated");
    for name in [
        "zip_f32.pt",
        "legacy.pt",
        "a1111_emb.pt",
        "a1111_emb_legacy.pt",
        "zip_proto4.pt",
    ] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        let path = tmp.path(name);
        // Every cut near the start and the end, a sample in between.
        let len = bytes.len();
        let cuts = (0..len)
            .step_by(len / 300 + 1)
            .chain(0..200)
            .chain(len - 200..len);
        for n in cuts {
            std::fs::write(&path, &bytes[..n]).unwrap();
            assert!(TorchFile::open(&path).is_err(), "{name} cut at {n} opened");
        }
        let step = len / 150 + 1;
        for at in (0..len).step_by(step) {
            let mut bad = bytes.clone();
            bad[at] ^= 0xa5;
            std::fs::write(&path, &bad).unwrap();
            if let Ok(f) = TorchFile::open(&path) {
                read_everything(&f);
            }
        }
    }
}

/// An A1111-style pickle: ParameterDict through `copyreg._reconstructor`, tensors on storage 0
/// (f32, 16 elements) and a transposed f16 view of storage 1 (6 elements).
fn emb_pickle() -> Vec<u8> {
    P::new()
        .op(b"}(")
        .str("string_to_param")
        .global("copyreg", "_reconstructor")
        .op(b"(")
        .global("torch.nn.modules.container", "ParameterDict")
        .global("builtins", "object")
        .op(b"NtR}(")
        .str("training")
        .op(&[0x88])
        .str("_parameters")
        .op(b"}")
        .str("*")
        .tensor(("FloatStorage", "0", 16), 1, &[3, 5], &[5, 1])
        .op(b"su")
        .op(b"b")
        .str("t")
        .tensor(("HalfStorage", "1", 6), 0, &[3, 2], &[1, 3])
        .str("name")
        .str("emb")
        .op(b"u")
        .stop()
}

#[test]
fn hand_built_archives_with_odd_prefixes_and_deflate() {
    let tmp = Tmp::new("archives");
    let pkl = emb_pickle();
    let data: Vec<f32> = (0..16).map(|i| i as f32).collect();
    let half: Vec<u8> = (0..6)
        .flat_map(|i| half::f16::from_f32(i as f32 * 0.5).to_le_bytes())
        .collect();
    let p = tmp.zip(
        "deflated.pt",
        &[
            ("weird name/data.pkl", &pkl, true),
            ("weird name/byteorder", b"little", false),
            ("weird name/data/0", &f32_bytes(&data), true),
            ("weird name/data/1", &half, false),
        ],
    );
    let f = TorchFile::open(&p).unwrap();
    assert_eq!(f.names(), ["string_to_param.*", "t"]);
    assert_eq!(f.read_f32("string_to_param.*").unwrap(), data[1..].to_vec());
    assert_eq!(f.read_f32("t").unwrap(), [0.0, 1.5, 0.5, 2.0, 1.0, 2.5]);
    assert_eq!(f.str_value("name"), Some("emb"));
    assert_eq!(f.int_value("name"), None);

    let short = f32_bytes(&data[..15]);
    let r = reason(TorchFile::open(&tmp.zip(
        "short.pt",
        &[
            ("a/data.pkl", &pkl, false),
            ("a/data/0", &short, false),
            ("a/data/1", &half, false),
        ],
    )));
    assert!(r.contains("storage `0` should hold 16"), "{r}");
    let r = reason(TorchFile::open(
        &tmp.zip("missing.pt", &[("a/data.pkl", &pkl, false)]),
    ));
    assert!(r.contains("missing from the archive"), "{r}");
    let r = reason(TorchFile::open(
        &tmp.zip("nopkl.pt", &[("a/b/data.pkl", &pkl, false)]),
    ));
    assert!(r.contains("without a data.pkl"), "{r}");
    let r = reason(TorchFile::open(&tmp.zip(
        "big-endian.pt",
        &[("a/data.pkl", &pkl, false), ("a/byteorder", b"big", false)],
    )));
    assert!(r.contains("big-endian"), "{r}");
}

#[test]
fn hostile_object_trees_are_refused() {
    let tmp = Tmp::new("hostile");
    let mut deep = P::new();
    for _ in 0..100 {
        deep = deep.op(b"}").str("k");
    }
    deep = deep.op(b"N").op(&[b's'; 100]);
    let r = reason(TorchFile::open(
        &tmp.zip("deep.pt", &[("a/data.pkl", &deep.stop(), false)]),
    ));
    assert!(r.contains("nested deeper"), "{r}");
    // (x, x) nested 60 times: 2^60 paths through 61 nodes.
    let mut wide = P::new().op(b"K\x01");
    for _ in 0..60 {
        wide = wide.op(b"2\x86");
    }
    let r = reason(TorchFile::open(
        &tmp.zip("wide.pt", &[("a/data.pkl", &wide.stop(), false)]),
    ));
    assert!(r.contains("too large"), "{r}");
    // One 64 KiB string referenced from 10k list slots.
    let big = P::new().str(&"x".repeat(1 << 16)).op(b"q\x00]q\x01(");
    let big = big.op(&b"h\x00".repeat(10_000)).op(b"e").stop();
    let r = reason(TorchFile::open(
        &tmp.zip("big.pt", &[("a/data.pkl", &big, false)]),
    ));
    assert!(r.contains("too large"), "{r}");
    let evil = P::new().global("builtins", "getattr").stop();
    let r = TorchFile::open(&tmp.zip("evil.pt", &[("a/data.pkl", &evil, false)]));
    assert!(
        matches!(r, Err(WeightError::UnsafeGlobal { global, .. }) if global == "builtins.getattr")
    );
}

fn legacy_file(
    little_endian: bool,
    objects: &[u8],
    keys: &[&str],
    storages: &[(u64, &[u8])],
) -> Vec<u8> {
    let mut out = vec![0x80, 2, 0x8a, 10];
    out.extend(LEGACY_MAGIC);
    out.push(b'.');
    out.extend(P::new().op(b"M\xe9\x03").stop());
    out.extend(
        P::new()
            .op(b"}")
            .str("little_endian")
            .op(if little_endian { b"\x88s" } else { b"\x89s" })
            .stop(),
    );
    out.extend(objects);
    out.extend(
        keys.iter()
            .fold(P::new().op(b"]("), |p, k| p.str(k))
            .op(b"e")
            .stop(),
    );
    for (count, data) in storages {
        out.extend(count.to_le_bytes());
        out.extend(*data);
    }
    out
}

#[test]
fn hand_built_legacy_files() {
    let tmp = Tmp::new("legacy");
    let pkl = emb_pickle();
    let data = f32_bytes(&(0..16).map(|i| i as f32).collect::<Vec<_>>());
    let half = [0u8; 12];
    let ok = legacy_file(true, &pkl, &["1", "0"], &[(6, &half), (16, &data)]);
    let f = TorchFile::open(&tmp.write("legacy-ok.pt", &ok)).unwrap();
    assert_eq!(
        f.read_f32("string_to_param.*").unwrap()[..3],
        [1.0, 2.0, 3.0]
    );
    assert_eq!(f.read_f32("t").unwrap(), [0.0; 6]);

    let cases: [(&str, Vec<u8>, &str); 5] = [
        (
            "huge",
            legacy_file(
                true,
                &pkl,
                &["1", "0"],
                &[(6, &half), (u64::MAX / 2, &data)],
            ),
            "past the end",
        ),
        (
            "order",
            legacy_file(true, &pkl, &["0", "1"], &[(6, &half), (16, &data)]),
            "past the end",
        ),
        (
            "unlisted",
            legacy_file(true, &pkl, &["1"], &[(6, &half)]),
            "storage `0` should hold",
        ),
        (
            "unused",
            legacy_file(true, &pkl, &["1", "0", "9"], &[(6, &half), (16, &data)]),
            "no tensor uses",
        ),
        (
            "big-endian",
            legacy_file(false, &pkl, &["1", "0"], &[(6, &half), (16, &data)]),
            "big-endian",
        ),
    ];
    for (name, bytes, want) in cases {
        let r = reason(TorchFile::open(
            &tmp.write(&format!("legacy-{name}.pt"), &bytes),
        ));
        assert!(r.contains(want), "{name}: {r}");
    }
    let mut wrong_magic = ok.clone();
    wrong_magic[5] ^= 1;
    let r = reason(TorchFile::open(&tmp.write("legacy-magic.pt", &wrong_magic)));
    assert!(r.contains("magic number"), "{r}");
}
