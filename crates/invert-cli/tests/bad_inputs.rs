//! Issue 7's corpus of bad inputs as a user meets them: through the `invert` binary, checking
//! the exit status and the exact message (each is also printed, for docs/RELIABILITY.md: run
//! with `--nocapture`). The library-level tests (crates/invert-train/tests/data.rs,
//! crates/invert-model/tests/{hostile_weights,embedding_formats,loading}.rs) cover each case in
//! more depth; this file checks that the CLI passes their messages on unchanged.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use invert_model::weights::torch_write::crc32;
use invert_train::data::RgbImage;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../invert-model/tests/fixtures")
}

fn tiny_sd1() -> String {
    fixtures().join("tiny-sd1").to_string_lossy().into_owned()
}

fn embedding(name: &str) -> String {
    fixtures()
        .join("embeddings")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn image_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../invert-train/tests/fixtures/images")
        .join(name)
}

struct Tmp(PathBuf);

impl Tmp {
    fn new(tag: &str) -> Self {
        let p =
            std::env::temp_dir().join(format!("invert-bad-inputs-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
    fn s(&self, rel: &str) -> String {
        self.0.join(rel).to_string_lossy().into_owned()
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn invert(args: &[&str]) -> Output {
    // The CPU whatever GPU the machine has: the expected results are the CPU's.
    Command::new(env!("CARGO_BIN_EXE_invert"))
        .args(args)
        .env("INVERT_DEVICE", "cpu")
        .output()
        .expect("run invert")
}

/// The run must fail with exit status 1 (an error, not a panic: 101); returns its stderr
/// without the `device: ...` line of the commands that choose a device.
fn fails(case: &str, args: &[&str]) -> String {
    let o = invert(args);
    let err: String = String::from_utf8_lossy(&o.stderr)
        .split_inclusive('\n')
        .filter(|line| !line.starts_with("device: "))
        .collect();
    assert_eq!(o.status.code(), Some(1), "{case}: {err}");
    assert!(!err.contains("panicked"), "{case}: {err}");
    eprintln!("[{case}] {}", err.trim_end());
    err
}

/// The run must succeed; returns stderr (warnings).
fn succeeds(case: &str, args: &[&str]) -> String {
    let o = invert(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{case}: {err}");
    eprintln!("[{case}] ok; stderr: {}", err.trim_end());
    err
}

fn generate<'a>(out: &'a str, model: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["generate", "--model", model, "--out", out, "--seed", "1"];
    args.extend_from_slice(extra);
    if !extra.contains(&"--steps") {
        args.extend(["--steps", "2"]);
    }
    args
}

#[test]
fn eval_refuses_an_unknown_sampler_before_generating() {
    let tmp = Tmp::new("eval");
    let err = fails(
        "unknown eval sampler",
        &["eval", "--out", &tmp.s("out"), "--sampler", "heun"],
    );
    assert_eq!(
        err,
        "error: --sampler: unknown sampler `heun` (expected one of: ddim, pndm, euler, euler-a, \
         dpm++2m)\n"
    );
    assert!(!Path::new(&tmp.s("out")).exists(), "nothing written");
}

#[test]
fn world_oracle_refuses_a_missing_model_before_training() {
    let tmp = Tmp::new("oracle");
    let err = fails(
        "missing oracle model",
        &[
            "world",
            "oracle",
            "--out",
            &tmp.s("oracle"),
            "--model",
            &tmp.s("no-such-model"),
        ],
    );
    assert!(err.contains("no-such-model"), "{err}");
    assert!(err.contains("its VAE reconstructs"), "{err}");
    assert!(!Path::new(&tmp.s("oracle")).exists(), "nothing written");
}

#[test]
fn generate_refuses_bad_settings_and_handles_odd_prompts() {
    let tmp = Tmp::new("generate");
    let (out, model) = (tmp.s("out"), tiny_sd1());
    let err = fails(
        "width not divisible by 8",
        &generate(&out, &model, &["--prompt", "a toy", "--width", "65"]),
    );
    assert_eq!(
        err,
        "error: width and height must be positive multiples of 8 (got 65x64); try 64x64\n"
    );
    let err = fails(
        "zero steps",
        &generate(&out, &model, &["--prompt", "a toy", "--steps", "0"]),
    );
    assert_eq!(err, "error: --steps must be at least 1\n");
    let err = fails(
        "negative guidance scale",
        &generate(&out, &model, &["--prompt", "a toy", "--cfg", "-1"]),
    );
    assert_eq!(err, "error: --cfg must be a finite number >= 0 (got -1)\n");
    let err = fails(
        "NaN guidance scale",
        &generate(&out, &model, &["--prompt", "a toy", "--cfg", "NaN"]),
    );
    assert_eq!(err, "error: --cfg must be a finite number >= 0 (got NaN)\n");

    // An empty prompt is valid: diffusers makes an unconditional image, and so does invert.
    succeeds("empty prompt", &generate(&out, &model, &["--prompt", ""]));
    // Over CLIP's 75 tokens: encoded in 75-token chunks, as A1111 does, nothing dropped.
    let long = ["red"; 300].join(" "); // one token each in tiny-sd1's BPE
    let err = succeeds(
        "300-token prompt",
        &generate(&out, &model, &["--prompt", &long]),
    );
    assert!(
        err.contains("note: the prompt is encoded in 4 chunks of 75 tokens"),
        "{err}"
    );
    let images = std::fs::read_dir(&out).unwrap().count();
    assert_eq!(images, 2, "one image per successful run");
}

/// img2img's inputs: a missing or unreadable picture, a strength outside (0, 1] or too low for
/// any step to run, and --strength without --init-image.
#[test]
fn generate_refuses_bad_init_images_and_strengths() {
    let tmp = Tmp::new("img2img");
    let (out, model) = (tmp.s("out"), tiny_sd1());
    let picture = tmp.s("photo.png");
    RgbImage::from_raw(40, 32, (0..40 * 32 * 3).map(|i| (i % 251) as u8).collect())
        .unwrap()
        .save(&picture)
        .unwrap();
    let missing = tmp.s("no-such-photo.png");
    let err = fails(
        "missing init image",
        &generate(
            &out,
            &model,
            &["--prompt", "a toy", "--init-image", &missing],
        ),
    );
    assert_eq!(
        err,
        format!("error: init image {missing}: no such file; check the path\n")
    );
    // Checked before the model is loaded: a missing model is not what it reports.
    let err = fails(
        "missing init image, missing model",
        &generate(
            &out,
            &tmp.s("no-such-model"),
            &["--prompt", "a toy", "--init-image", &missing],
        ),
    );
    assert!(err.contains("no such file; check the path"), "{err}");
    let err = fails(
        "strength 2, missing model",
        &generate(
            &out,
            &tmp.s("no-such-model"),
            &[
                "--prompt",
                "a toy",
                "--init-image",
                &picture,
                "--strength",
                "2",
            ],
        ),
    );
    assert!(err.starts_with("error: --strength must be"), "{err}");
    let notes = tmp.s("notes.png");
    std::fs::write(&notes, "not a picture").unwrap();
    let err = fails(
        "init image that is not a picture",
        &generate(&out, &model, &["--prompt", "a toy", "--init-image", &notes]),
    );
    assert!(
        err.starts_with(&format!(
            "error: init image {notes}: not a picture invert can read ("
        )),
        "{err}"
    );
    assert!(
        err.contains("give a PNG, JPEG, WebP, BMP or GIF file"),
        "{err}"
    );
    let truncated = tmp.s("truncated.png");
    let bytes = std::fs::read(&picture).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = fails(
        "truncated init image",
        &generate(
            &out,
            &model,
            &["--prompt", "a toy", "--init-image", &truncated],
        ),
    );
    assert_eq!(
        err,
        format!(
            "error: init image {truncated}: the file ends before its picture does (cut off while \
             downloading or copying); download or export it again\n"
        )
    );
    for strength in ["0", "1.5", "-0.3"] {
        let err = fails(
            &format!("strength {strength}"),
            &generate(
                &out,
                &model,
                &[
                    "--prompt",
                    "a toy",
                    "--init-image",
                    &picture,
                    "--strength",
                    strength,
                ],
            ),
        );
        assert_eq!(
            err,
            format!(
                "error: --strength must be a number in (0, 1] (got {strength}): 1 repaints the \
                 whole picture, values near 0 keep it\n"
            )
        );
    }
    let err = fails(
        "strength too low for any step",
        &generate(
            &out,
            &model,
            &[
                "--prompt",
                "a toy",
                "--init-image",
                &picture,
                "--strength",
                "0.3",
            ],
        ),
    );
    assert_eq!(
        err,
        "error: --strength 0.3 with --steps 2 runs no denoising step (int(steps * strength) = 0); \
         raise --strength to at least 0.5 or --steps to at least 4\n"
    );
    let err = fails(
        "size not a multiple of 8",
        &generate(
            &out,
            &model,
            &[
                "--prompt",
                "a toy",
                "--init-image",
                &picture,
                "--width",
                "36",
            ],
        ),
    );
    assert_eq!(
        err,
        "error: width and height must be positive multiples of 8 (got 36x32); try 40x32\n"
    );
    // --strength alone, or with --init-latents, is clap's usage error (exit 2).
    let o = invert(&generate(
        &out,
        &model,
        &[
            "--prompt",
            "a toy",
            "--init-image",
            &picture,
            "--init-latents",
            &picture,
        ],
    ));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot be used with"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = invert(&generate(
        &out,
        &model,
        &["--prompt", "a toy", "--strength", "0.5"],
    ));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--init-image"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!Path::new(&out).exists() || std::fs::read_dir(&out).unwrap().count() == 0);
}

#[test]
fn generate_refuses_embeddings_that_cannot_be_used() {
    let tmp = Tmp::new("embeddings");
    let (out, model) = (tmp.s("out"), tiny_sd1());
    // Two files with the same token.
    let copy = tmp.s("copy_of_single.safetensors");
    std::fs::copy(embedding("diffusers_single.safetensors"), &copy).unwrap();
    let single = embedding("diffusers_single.safetensors");
    let err = fails(
        "two files with the same token",
        &generate(
            &out,
            &model,
            &[
                "--prompt",
                "a <cat-toy>",
                "--embedding",
                &single,
                "--embedding",
                &copy,
            ],
        ),
    );
    assert_eq!(
        err,
        format!(
            "error: the word `<cat-toy>` is defined by both {single} and {copy}; pass only one \
             of them, or give one another token with `invert embedding convert IN OUT --token \
             NEW`\n"
        )
    );
    // A token that is an existing word (of tiny-sd1's 1000-id CLIP BPE).
    let red = tmp.s("red.safetensors");
    succeeds(
        "convert with --token red",
        &[
            "embedding",
            "convert",
            &single,
            &red,
            "--format",
            "diffusers",
            "--token",
            "red",
        ],
    );
    let err = fails(
        "token that is an existing word",
        &generate(
            &out,
            &model,
            &["--prompt", "a red toy", "--embedding", &red],
        ),
    );
    assert!(
        err.contains(&format!("error: adding `red` from {red}: \"red\" is already in CLIP's vocabulary (as \"red</w>\", id 736); a new concept needs a token the tokenizer does not know, such as <red> or red*")),
        "{err}"
    );
    // Wrong width: an SD 1.x embedding (768) on the 32-wide test model.
    let sd1 = embedding("sd1_768.pt");
    let err = fails(
        "wrong-width embedding",
        &generate(&out, &model, &["--prompt", "a", "--embedding", &sd1]),
    );
    assert!(
        err.contains("the embedding `sd1-emb` is 768 wide, made for SD 1.x (CLIP ViT-L/14, 768 wide), but the loaded model's text encoder is 32 wide"),
        "{err}"
    );
    // An SDXL embedding (clip_l + clip_g) on a model with one text encoder.
    let sdxl = embedding("sdxl_clip_l_g.safetensors");
    let err = fails(
        "SDXL embedding on an SD 1.x model",
        &generate(&out, &model, &["--prompt", "a", "--embedding", &sdxl]),
    );
    assert!(
        err.contains("the embedding `sdxl_clip_l_g` is an SDXL embedding (1 vector(s) for each of two text encoders, clip_l 768 wide and clip_g 1280 wide), but the loaded model has one text encoder, 32 wide"),
        "{err}"
    );
    // NaN inside an embedding.
    let nan = embedding("nan.safetensors");
    let err = fails(
        "NaN inside an embedding",
        &generate(&out, &model, &["--prompt", "a", "--embedding", &nan]),
    );
    assert!(
        err.contains("holds 2 NaN or infinite values (first in vector 1, element 5)"),
        "{err}"
    );
    // A pickle that names os.system (refused, nothing executed).
    let evil = embedding("malicious.pt");
    let err = fails(
        "embedding pickle referencing os.system",
        &["embedding", "inspect", &evil],
    );
    assert!(
        err.contains("refusing to load: the pickle references `posix.system`"),
        "{err}"
    );
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

/// A PNG whose header claims 30000x30000 pixels, with 11 bytes of pixel data.
fn png_bomb() -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = 30000u32.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&30000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(
        &mut out,
        b"IDAT",
        &[0x78, 1, 1, 0, 0, 0xFF, 0xFF, 0, 0, 0, 1],
    );
    png_chunk(&mut out, b"IEND", &[]);
    out
}

fn write_noise_png(path: &Path, seed: u8) {
    let rgb: Vec<u8> = (0..64 * 64 * 3)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ seed)
        .collect();
    RgbImage::from_raw(64, 64, rgb).unwrap().save(path).unwrap();
}

fn train<'a>(images: &'a str, out: &'a str, model: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "train",
        "--model",
        model,
        "--images",
        images,
        "--out",
        out,
        "--token",
        "<bad>",
        "--preview-every",
        "0",
    ];
    args.extend_from_slice(extra);
    if !extra.contains(&"--steps") {
        args.extend(["--steps", "1"]);
    }
    args
}

#[cfg(unix)]
#[test]
fn train_lists_every_bad_image_in_one_message() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::symlink;
    let tmp = Tmp::new("images");
    let dir = tmp.0.join("images");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..3 {
        write_noise_png(&dir.join(format!("good{i}.png")), i);
    }
    write_noise_png(&dir.join("whole.png"), 9);
    let png = std::fs::read(dir.join("whole.png")).unwrap();
    std::fs::remove_file(dir.join("whole.png")).unwrap();
    std::fs::write(dir.join("cut.png"), &png[..png.len() / 2]).unwrap();
    std::fs::copy(
        image_fixture("truncated_progressive.jpg"),
        dir.join("cut.jpg"),
    )
    .unwrap();
    std::fs::write(dir.join("empty.png"), b"").unwrap();
    std::fs::write(dir.join("notes.png"), "this is not a picture\n").unwrap();
    RgbImage::from_raw(1, 1, vec![0, 0, 0])
        .unwrap()
        .save(dir.join("dot.png"))
        .unwrap();
    std::fs::write(dir.join("bomb.png"), png_bomb()).unwrap();
    std::fs::write(dir.join(OsStr::from_bytes(b"caf\xe9.png")), b"").unwrap();
    symlink("loop_b.png", dir.join("loop_a.png")).unwrap();
    symlink("loop_a.png", dir.join("loop_b.png")).unwrap();

    let (images, out, model) = (tmp.s("images"), tmp.s("out"), tiny_sd1());
    let start = std::time::Instant::now();
    let err = fails("bad image folder", &train(&images, &out, &model, &[]));
    assert!(start.elapsed().as_secs() < 20, "the bomb was decoded");
    let expected = [
        format!("error: 9 file(s) in image folder {images} cannot be used for training:"),
        "  bomb.png: image is 30000x30000 = 900.0 megapixels, over the 67.1 megapixel limit \
         (refused before decoding"
            .into(),
        "  caf\\xE9.png: empty file (0 bytes)".into(),
        "  cut.jpg: JPEG file is truncated (it ends before the image data does".into(),
        "  cut.png: PNG file is truncated".into(),
        "  dot.png: image is 1x1: too small to train on".into(),
        "  empty.png: empty file (0 bytes)".into(),
        "  loop_a.png: symbolic link cannot be followed (".into(),
        "  loop_b.png: symbolic link cannot be followed (".into(),
        "  notes.png: not an image: the content looks like text although the file is named .png"
            .into(),
    ];
    let lines: Vec<&str> = err.lines().collect();
    for (line, want) in lines.iter().zip(&expected) {
        assert!(
            line.starts_with(want.as_str()),
            "{line:?} vs {want:?}\n{err}"
        );
    }
    assert!(
        lines[expected.len()..]
            .join(" ")
            .contains("or pass --skip-bad to train on the 3 usable image(s) only"),
        "{err}"
    );
    // With --skip-bad the same folder trains on the good images, listing the rest as warnings.
    let out2 = tmp.s("out2");
    let err = succeeds(
        "bad image folder with --skip-bad",
        &train(&images, &out2, &model, &["--skip-bad"]),
    );
    assert!(err.contains("warning: skipped"), "{err}");

    // Zero steps and an existing word as the token are refused before anything runs.
    let err = fails(
        "train with zero steps",
        &train(&images, &tmp.s("out3"), &model, &["--steps", "0"]),
    );
    assert_eq!(err, "error: --steps must be at least 1\n");
    let out4 = tmp.s("out4");
    let mut args = train(&images, &out4, &model, &["--skip-bad"]);
    let token = args.iter().position(|a| *a == "<bad>").unwrap();
    args[token] = "red";
    let err = fails("train with an existing word as the token", &args);
    assert!(
        err.contains(
            "error: --token: \"red\" is already in CLIP's vocabulary (as \"red</w>\", id 736); \
             a new concept needs a token the tokenizer does not know, such as <red> or red*"
        ),
        "{err}"
    );
}

#[test]
fn train_converts_odd_but_valid_images_with_warnings() {
    let tmp = Tmp::new("convert");
    let dir = tmp.0.join("images");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, to) in [
        ("cmyk.jpg", "cmyk.jpg"),
        ("exif_rotate6.jpg", "rotated.jpg"),
        ("palette_trns.png", "palette.png"),
        ("animated.png", "animated.png"),
    ] {
        std::fs::copy(image_fixture(name), dir.join(to)).unwrap();
    }
    let (images, out, model) = (tmp.s("images"), tmp.s("out"), tiny_sd1());
    let err = succeeds("odd but valid images", &train(&images, &out, &model, &[]));
    for want in [
        "warning: cmyk.jpg: CMYK JPEG converted to RGB",
        "warning: animated.png: animated PNG: only its default (first) image is used",
    ] {
        assert!(err.contains(want), "{want:?} in {err}");
    }
}
