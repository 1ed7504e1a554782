//! `invert edit` (Prompt-to-Prompt) end to end on the tiny SD1 fixture: the source image, the
//! edited images, the strip and the attention maps are written with their text chunks; the
//! source image is the one `invert generate` makes from the same seed (the controller leaves
//! the source alone) while the edit differs; bad settings fail with exit status 1 and a message
//! that says what to do.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../invert-model/tests/fixtures")
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

struct Tmp(PathBuf);

impl Tmp {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("invert-edit-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn invert(args: &[String]) -> Output {
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

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|a| a.to_string()).collect()
}

/// The common settings: tiny SD1, 64x64, 6 steps, seed 7.
fn edit_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = args(&[
        "edit",
        "--model",
        &s(&fixtures().join("tiny-sd1")),
        "--out",
        &s(out),
        "--steps",
        "6",
        "--seed",
        "7",
        "--width",
        "64",
        "--height",
        "64",
    ]);
    a.extend(args(extra));
    a
}

/// An RGB8 PNG as `((width, height), pixels)`.
struct Rgb((u32, u32), Vec<u8>);

impl Rgb {
    fn dimensions(&self) -> (u32, u32) {
        self.0
    }
}

fn image(path: &Path) -> Rgb {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb, "{}", path.display());
    buf.truncate(info.buffer_size());
    Rgb((info.width, info.height), buf)
}

fn max_diff(a: &Rgb, b: &Rgb) -> u8 {
    assert_eq!(a.0, b.0);
    a.1.iter()
        .zip(&b.1)
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap()
}

fn has_text(path: &Path, needle: &str) -> bool {
    let bytes = std::fs::read(path).unwrap();
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn edit_writes_the_source_the_edits_the_strip_and_the_attention_maps() {
    let tmp = Tmp::new("ok");
    let out = tmp.0.join("edits");
    let embedding = s(&fixtures().join("embeddings/diffusers_multi.safetensors"));
    let run = invert(&edit_args(
        &out,
        &[
            "--prompt",
            "a photo of a cat in the style of <multi>",
            "--edit",
            "a photo of a dog in the style of <multi>",
            "--edit",
            "a painting of a dog in the style of <multi>",
            "--mode",
            "replace",
            "--blend",
            "cat,dog",
            "--reweight",
            "<multi>:2",
            "--embedding",
            &embedding,
            "--attention-maps",
        ],
    ));
    assert!(run.status.success(), "{}", text(&run));
    let file = |name: &str| out.join(name);
    for name in [
        "00000-7-source.png",
        "00000-7-edit1.png",
        "00000-7-edit2.png",
        "00000-7-strip.png",
    ] {
        assert!(file(name).is_file(), "{name} missing: {}", text(&run));
        assert!(has_text(&file(name), "parameters"), "{name}: parameters");
        assert!(
            has_text(&file(name), "Mode: replace, Cross replace: 0.8"),
            "{name}: settings"
        );
    }
    assert!(has_text(&file("00000-7-edit2.png"), "a painting of a dog"));
    assert!(has_text(&file("00000-7-source.png"), "TI hashes"));
    let strip = image(&file("00000-7-strip.png"));
    assert_eq!(strip.dimensions(), (3 * 64, 64));
    let source = image(&file("00000-7-source.png"));
    let edit = image(&file("00000-7-edit1.png"));
    assert!(max_diff(&source, &edit) > 0, "the edit changed nothing");

    // Attention maps, one per token of tiny-sd1's 1000-id BPE: BOS, 13 tokens for the words ("cat"
    // is c + at, "photo" pho + to, "painting" pa + in + ting), <multi>'s 3 and EOS: 18, 18, 19.
    let maps = out.join("00000-7-attention");
    let count = |k: usize| {
        std::fs::read_dir(&maps)
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("p{k}-"))
            })
            .count()
    };
    assert_eq!((count(0), count(1), count(2)), (18, 18, 19));
    let cat = image(&maps.join("p0-07-at.png"));
    assert_eq!(cat.dimensions(), (256, 256));
    assert_eq!(image(&maps.join("p1.png")).dimensions(), (18 * 256, 256));

    // The controller leaves the source alone: it is `invert generate`'s image of that seed.
    let gen_out = tmp.0.join("generate");
    let run = invert(&args(&[
        "generate",
        "--model",
        &s(&fixtures().join("tiny-sd1")),
        "--out",
        &s(&gen_out),
        "--steps",
        "6",
        "--seed",
        "7",
        "--width",
        "64",
        "--height",
        "64",
        "--prompt",
        "a photo of a cat in the style of <multi>",
        "--embedding",
        &embedding,
    ]));
    assert!(run.status.success(), "{}", text(&run));
    let generated = image(&gen_out.join("00000-7.png"));
    let d = max_diff(&source, &generated);
    assert!(d <= 2, "source vs generate: {d}/255");
}

/// The run must fail with exit status 1 (an error, not a panic) and say `needle`.
fn fails_with(out: &Path, extra: &[&str], needle: &str) {
    let run = invert(&edit_args(out, extra));
    assert_eq!(run.status.code(), Some(1), "{}", text(&run));
    assert!(
        text(&run).contains(needle),
        "wanted `{needle}`: {}",
        text(&run)
    );
}

#[test]
fn edit_refuses_bad_settings_with_a_message() {
    let tmp = Tmp::new("bad");
    let out = tmp.0.join("edits");
    fails_with(
        &out,
        &["--prompt", "a cat on a car", "--edit", "a big cat on a car"],
        "use --mode refine",
    );
    fails_with(
        &out,
        &["--prompt", "a cat"],
        "give an edited prompt with --edit",
    );
    fails_with(
        &out,
        &["--prompt", "a cat", "--edit", "a dog", "--blend", "tiger"],
        "--blend word `tiger` is not a word of",
    );
    fails_with(
        &out,
        &["--prompt", "a cat", "--reweight", "cat=2"],
        "write word:weight",
    );
    fails_with(
        &out,
        &[
            "--prompt",
            "a cat",
            "--edit",
            "a dog",
            "--cross-replace",
            "2",
        ],
        "--cross-replace must be a fraction in [0, 1]",
    );
    // An unknown mode is a usage error (clap's exit status 2) with the choices.
    let run = invert(&edit_args(
        &out,
        &["--prompt", "a cat", "--edit", "a dog", "--mode", "swap"],
    ));
    assert_eq!(run.status.code(), Some(2), "{}", text(&run));
    assert!(
        text(&run).contains("expected replace or refine"),
        "{}",
        text(&run)
    );
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().next().is_none());
}

/// The picture the real-picture edits start from (32x24, resized to the 64x64 of `edit_args`).
fn picture() -> String {
    s(&fixtures().join("pipeline/img2img-init.png"))
}

/// The `MSE x, PSNR y dB` that `invert edit --image` prints.
fn reported_mse(o: &Output) -> f64 {
    let out = text(o);
    let line = out
        .lines()
        .find(|l| l.starts_with("reconstruction of "))
        .unwrap_or_else(|| panic!("no reconstruction line: {out}"));
    assert!(line.contains("PSNR") && line.ends_with(" dB"), "{line}");
    line.split("MSE ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MSE in `{line}`"))
}

/// `invert edit --image picture()` on tiny SD1 with the source "a photo of a cat".
fn edit_picture(out: &Path, extra: &[&str]) -> Output {
    let mut a = vec![
        "--image".to_owned(),
        picture(),
        "--prompt".into(),
        "a photo of a cat".into(),
        "--edit".into(),
        "a photo of a tiger".into(),
    ];
    a.extend(extra.iter().map(|e| e.to_string()));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    invert(&edit_args(out, &a))
}

#[test]
fn edit_image_inverts_a_picture_edits_it_and_reports_the_reconstruction() {
    let tmp = Tmp::new("image");
    // Plain DDIM inversion; another sampler is replaced by DDIM, and says so.
    let out = tmp.0.join("ddim");
    let run = edit_picture(&out, &["--sampler", "euler"]);
    assert!(run.status.success(), "{}", text(&run));
    assert!(
        text(&run).contains("sampling with ddim instead of --sampler euler"),
        "{}",
        text(&run)
    );
    let mse = reported_mse(&run);
    assert!(mse.is_finite() && mse > 0.0, "{mse}");
    assert!(text(&run).contains("DDIM inversion (guidance 1)"));
    for name in [
        "00000-7-source.png",
        "00000-7-edit1.png",
        "00000-7-strip.png",
    ] {
        let path = out.join(name);
        assert!(path.is_file(), "{name} missing: {}", text(&run));
        assert!(has_text(&path, "inversion"), "{name}: inversion chunk");
        assert!(
            has_text(&path, "Reconstruction at CFG 7.5: MSE"),
            "{name}: reconstruction error"
        );
        assert!(has_text(&path, "Image: img2img-init.png"), "{name}");
        assert!(has_text(&path, "Sampler: DDIM"), "{name}: sampler");
    }
    let source = image(&out.join("00000-7-source.png"));
    assert_eq!(source.dimensions(), (64, 64));
    let edited = image(&out.join("00000-7-edit1.png"));
    assert!(max_diff(&source, &edited) > 0, "the edit changed nothing");

    // Null-text inversion runs end to end and says so in the picture.
    let out = tmp.0.join("null");
    let run = edit_picture(&out, &["--null-text", "--null-text-inner-steps", "2"]);
    assert!(run.status.success(), "{}", text(&run));
    assert!(
        text(&run).contains("null-text inversion ("),
        "{}",
        text(&run)
    );
    assert!(reported_mse(&run).is_finite());
    let path = out.join("00000-7-source.png");
    assert!(has_text(&path, "2 inner steps"), "null-text settings");
}

/// The paper's finding end to end on the bundled trained model (tiny SD1's random VAE makes
/// pixel errors meaningless): at --cfg 7.5 null-text inversion reconstructs the picture better
/// than DDIM inversion.
#[test]
fn edit_image_null_text_reconstructs_better_than_ddim_inversion() {
    let tmp = Tmp::new("world");
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dataset = repo.join("datasets/hatched-style");
    let caption = std::fs::read_to_string(dataset.join("01.txt")).unwrap();
    let caption = caption.trim();
    assert!(caption.contains("triangle"), "{caption}");
    let run = |out: &Path, extra: &[&str]| {
        let mut a = args(&[
            "edit",
            "--model",
            &s(&repo.join("models/world")),
            "--image",
            &s(&dataset.join("01.png")),
            "--prompt",
            caption,
            "--edit",
            &caption.replace("triangle", "square"),
            "--steps",
            "20",
            "--out",
            &s(out),
        ]);
        a.extend(args(extra));
        invert(&a)
    };
    let ddim = run(&tmp.0.join("ddim"), &[]);
    assert!(ddim.status.success(), "{}", text(&ddim));
    let null = run(&tmp.0.join("null"), &["--null-text"]);
    assert!(null.status.success(), "{}", text(&null));
    let (ddim_mse, null_mse) = (reported_mse(&ddim), reported_mse(&null));
    println!("reconstruction MSE: DDIM inversion {ddim_mse}, null-text {null_mse}");
    assert!(
        null_mse < ddim_mse,
        "null-text MSE {null_mse} vs DDIM inversion {ddim_mse}"
    );
    // The picture's size (32x32) unless told otherwise; seed 0 names the files.
    let source = image(&tmp.0.join("null/00000-0-source.png"));
    assert_eq!(source.dimensions(), (32, 32));
}

#[test]
fn edit_image_refuses_bad_pictures_and_settings_with_a_message() {
    let tmp = Tmp::new("bad-image");
    let out = tmp.0.join("edits");
    let prompts = ["--prompt", "a cat", "--edit", "a dog"];
    let with = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = prompts.iter().map(|p| p.to_string()).collect();
        a.extend(extra.iter().map(|e| e.to_string()));
        a
    };
    let fails = |extra: &[&str], needle: &str| {
        let a = with(extra);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        fails_with(&out, &a, needle);
    };
    let missing = s(&tmp.0.join("nope.png"));
    fails(&["--image", &missing], "no such file");
    let corrupt = tmp.0.join("corrupt.png");
    std::fs::write(&corrupt, b"not a picture at all").unwrap();
    fails(&["--image", &s(&corrupt)], "not a picture invert can read");
    fails(
        &["--image", &picture(), "--null-text", "--cfg", "1"],
        "needs --cfg above 1",
    );
    fails(
        &["--image", &picture(), "--sampler", "nope"],
        "unknown sampler",
    );
    // --null-text without a picture is a usage error (clap's exit status 2).
    let a = with(&["--null-text"]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let run = invert(&edit_args(&out, &a));
    assert_eq!(run.status.code(), Some(2), "{}", text(&run));
    assert!(text(&run).contains("--image"), "{}", text(&run));
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().next().is_none());
}
