//! `invert train` end to end on the tiny SD1 fixture: a short run writes every output, the
//! result reads back with `invert embedding inspect`, `--resume` continues it (to the same bytes
//! as an uninterrupted run), an existing run folder is protected, and unusable image folders
//! stop the run with a clear message (exit 1).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use invert_train::data::RgbImage;

fn tiny_sd1() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../invert-model/tests/fixtures/tiny-sd1")
}

fn invert(args: &[&str]) -> Output {
    // The CPU whatever GPU the machine has: the expected results are the CPU's.
    Command::new(env!("CARGO_BIN_EXE_invert"))
        .args(args)
        .env("INVERT_DEVICE", "cpu")
        .output()
        .expect("run invert")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("invert-cli-train-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn join(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A folder of `n` 64x64 PNGs (a square on a coloured background).
fn images(dir: &Path, n: usize) -> PathBuf {
    let folder = dir.join("images");
    std::fs::create_dir_all(&folder).unwrap();
    for i in 0..n {
        let mut rgb = Vec::with_capacity(64 * 64 * 3);
        for y in 0..64 {
            for x in 0..64 {
                let square = (16..40).contains(&y) && (20..44).contains(&x);
                let pixel = if square {
                    [200, 30, 30]
                } else {
                    [90, 120 + 40 * i as u8, 200]
                };
                rgb.extend_from_slice(&pixel);
            }
        }
        let img = RgbImage::from_raw(64, 64, rgb).unwrap();
        img.save(folder.join(format!("{i}.png"))).unwrap();
    }
    folder
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn train(images: &Path, out: &Path, extra: &[&str]) -> Output {
    let model = tiny_sd1();
    let mut args = vec![
        "train",
        "--model",
        s(&model),
        "--images",
        s(images),
        "--token",
        "<cli-toy>",
        "--out",
        s(out),
        "--preview-every",
        "0",
    ];
    args.extend_from_slice(extra);
    invert(&args)
}

fn log_steps(out: &Path) -> Vec<u64> {
    std::fs::read_to_string(out.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert!(v["loss"].as_f64().unwrap().is_finite(), "{l}");
            v["step"].as_u64().unwrap()
        })
        .collect()
}

#[test]
fn train_writes_every_output_and_resumes_exactly() {
    let tmp = TempDir::new("e2e");
    let folder = images(tmp.path(), 2);
    let out = tmp.join("run");
    let o = train(
        &folder,
        &out,
        &["--steps", "10", "--save-every", "5", "--vectors", "2"],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("learned_embeds.safetensors"),
        "{}",
        text(&o)
    );
    for f in [
        "learned_embeds.safetensors",
        "learned_embeds-steps-5.safetensors",
        "learned_embeds-steps-10.safetensors",
        "config.json",
        "log.jsonl",
        "checkpoint/state.safetensors",
    ] {
        assert!(out.join(f).is_file(), "{f} missing: {}", text(&o));
    }
    assert_eq!(log_steps(&out), (1..=10).collect::<Vec<_>>());
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["token"], "<cli-toy>");
    assert_eq!(config["steps"], 10);
    assert_eq!(config["vectors"], 2);

    // The result reads back, against the model too (width check, nearest words).
    let model = tiny_sd1();
    let o = invert(&[
        "embedding",
        "inspect",
        s(&out.join("learned_embeds.safetensors")),
        "--model",
        s(&model),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    for want in [
        "token:   <cli-toy>",
        "vectors: 2 x 32",
        "step:    10",
        "vector 1:",
        "nearest:",
    ] {
        assert!(t.contains(want), "missing {want:?} in:\n{t}");
    }
    assert!(!t.contains("model:   "), "width mismatch reported:\n{t}");
    let o = invert(&[
        "embedding",
        "inspect",
        s(&out.join("learned_embeds-steps-5.safetensors")),
    ]);
    assert!(
        o.status.success() && text(&o).contains("step:    5"),
        "{}",
        text(&o)
    );

    // --resume continues to 15 steps, and equals a run of 15 steps from scratch byte for byte.
    let o = invert(&["train", "--resume", s(&out), "--steps", "15"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("resuming at step 10 of 15"),
        "{}",
        text(&o)
    );
    assert_eq!(log_steps(&out), (1..=15).collect::<Vec<_>>());
    let straight = tmp.join("straight");
    let o = train(
        &folder,
        &straight,
        &["--steps", "15", "--save-every", "5", "--vectors", "2"],
    );
    assert!(o.status.success(), "{}", text(&o));
    for f in [
        "learned_embeds.safetensors",
        "learned_embeds-steps-15.safetensors",
        "checkpoint/state.safetensors",
    ] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(straight.join(f)).unwrap(),
            "{f}: resumed run differs from the uninterrupted one"
        );
    }
}

#[test]
fn an_existing_run_folder_needs_overwrite() {
    let tmp = TempDir::new("overwrite");
    let folder = images(tmp.path(), 1);
    let out = tmp.join("run");
    let o = train(&folder, &out, &["--steps", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    let before = std::fs::read(out.join("learned_embeds.safetensors")).unwrap();

    let o = train(&folder, &out, &["--steps", "3", "--seed", "7"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("already holds a run") && t.contains("--resume") && t.contains("--overwrite"),
        "{t}"
    );
    assert_eq!(
        std::fs::read(out.join("learned_embeds.safetensors")).unwrap(),
        before,
        "untouched"
    );
    assert_eq!(log_steps(&out), vec![1, 2]);

    let o = train(
        &folder,
        &out,
        &["--steps", "3", "--seed", "7", "--overwrite"],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(log_steps(&out), vec![1, 2, 3], "a fresh log");
    assert_ne!(
        std::fs::read(out.join("learned_embeds.safetensors")).unwrap(),
        before
    );
}

#[test]
fn unusable_image_folders_are_refused() {
    let tmp = TempDir::new("bad");
    // An empty folder.
    let empty = tmp.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = train(&empty, &tmp.join("out1"), &["--steps", "1"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("no usable training images") && t.contains("the folder is empty"),
        "{t}"
    );
    assert!(!tmp.join("out1/checkpoint").exists());

    // A folder with a non-image file beside a good image: every bad file is named.
    let folder = images(tmp.path(), 1);
    std::fs::write(folder.join("notes.png"), b"this is not a picture\n").unwrap();
    let o = train(&folder, &tmp.join("out2"), &["--steps", "1"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("notes.png") && t.contains("not an image") && t.contains("--skip-bad"),
        "{t}"
    );
    assert!(!tmp.join("out2/checkpoint").exists());
    // --skip-bad trains on the usable image, with a warning naming the file.
    let o = train(&folder, &tmp.join("out3"), &["--steps", "1", "--skip-bad"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("warning") && text(&o).contains("notes.png"),
        "{}",
        text(&o)
    );

    // A missing folder.
    let o = train(&tmp.join("nowhere"), &tmp.join("out4"), &["--steps", "1"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("does not exist"), "{}", text(&o));
}
