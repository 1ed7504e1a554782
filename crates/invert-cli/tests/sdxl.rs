//! SDXL from the command line on the tiny SDXL fixture (issue 20): `invert train` learns a word
//! with rows in both text encoders and writes one `{clip_l, clip_g}` file (or diffusers' two
//! files with `--diffusers-sdxl`), `--resume` continues both tables exactly, and `invert
//! generate` draws the word with every sampler, a negative prompt and a non-square size.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use invert_model::weights::TensorReader;
use invert_model::weights::safetensors_file::SafetensorsFile;
use invert_train::data::RgbImage;

fn tiny_sdxl() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../invert-model/tests/fixtures/tiny-sdxl")
}

fn invert(args: &[&str]) -> Output {
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

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn scratch(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("invert-cli-sdxl-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// Two 40x30 pictures (not square, so the crop and original size enter the time ids).
fn images(dir: &Path) -> PathBuf {
    let folder = dir.join("images");
    std::fs::create_dir_all(&folder).unwrap();
    for i in 0..2u8 {
        let mut rgb = Vec::new();
        for y in 0..30 {
            for x in 0..40 {
                let square = (8..20).contains(&y) && (10..26).contains(&x);
                rgb.extend_from_slice(&if square {
                    [200, 30, 30]
                } else {
                    [90, 120 + 40 * i, 200]
                });
            }
        }
        let img = RgbImage::from_raw(40, 30, rgb).unwrap();
        img.save(folder.join(format!("{i}.png"))).unwrap();
    }
    folder
}

fn train(images: &Path, out: &Path, extra: &[&str]) -> Output {
    let model = tiny_sdxl();
    let mut args = vec![
        "train",
        "--model",
        s(&model),
        "--images",
        s(images),
        "--token",
        "<xl-toy>",
        "--init",
        "cat",
        "--vectors",
        "2",
        "--resolution",
        "16",
        "--preview-every",
        "0",
        "--out",
        s(out),
    ];
    args.extend_from_slice(extra);
    invert(&args)
}

fn tensor_shapes(path: &Path) -> Vec<(String, Vec<usize>)> {
    let f = SafetensorsFile::open(path).unwrap();
    let mut names = f.names();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let shape = f.meta(&n).unwrap().shape.clone();
            (n, shape)
        })
        .collect()
}

#[test]
fn an_sdxl_word_trains_resumes_and_generates() {
    let dir = scratch("train");
    let folder = images(&dir);
    let out = dir.join("run");
    let o = train(&folder, &out, &["--steps", "4", "--save-every", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    let file = out.join("learned_embeds.safetensors");
    assert_eq!(
        tensor_shapes(&file),
        vec![
            ("clip_g".to_string(), vec![2, 16]),
            ("clip_l".to_string(), vec![2, 8])
        ],
        "kohya's SDXL layout"
    );
    let o = invert(&["embedding", "inspect", s(&file)]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("clip_g"), "{}", text(&o));

    // Resuming continues both tables to the bytes of an uninterrupted run.
    let o = invert(&["train", "--resume", s(&out), "--steps", "6"]);
    assert!(o.status.success(), "{}", text(&o));
    let straight = dir.join("straight");
    let o = train(&folder, &straight, &["--steps", "6", "--save-every", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        std::fs::read(&file).unwrap(),
        std::fs::read(straight.join("learned_embeds.safetensors")).unwrap(),
        "resumed SDXL run differs from the uninterrupted one"
    );

    // The word in a prompt, with each sampler, a negative prompt and a 32x24 image.
    let model = tiny_sdxl();
    for sampler in ["euler", "euler-a", "ddim", "pndm", "dpm++2m"] {
        let images_out = dir.join(format!("gen-{sampler}"));
        let o = invert(&[
            "generate",
            "--model",
            s(&model),
            "--embedding",
            s(&file),
            "--prompt",
            "a photo of <xl-toy>",
            "--negative",
            "blurry",
            "--sampler",
            sampler,
            "--steps",
            "2",
            "--width",
            "32",
            "--height",
            "24",
            "--seed",
            "3",
            "--out",
            s(&images_out),
        ]);
        assert!(o.status.success(), "{sampler}: {}", text(&o));
        let png = std::fs::read_dir(&images_out)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "png"))
            .unwrap_or_else(|| panic!("{sampler}: no image in {}", images_out.display()));
        // The PNG header's IHDR: width and height, big-endian, at bytes 16..24.
        let bytes = std::fs::read(&png).unwrap();
        let dim = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
        assert_eq!((dim(16), dim(20)), (32, 24), "{sampler}");
        // A1111's `parameters` text, as it writes it for SDXL too.
        let png_text = String::from_utf8_lossy(&bytes);
        for want in [
            "parameters",
            "Negative prompt: blurry",
            "Size: 32x24",
            "Seed: 3",
        ] {
            assert!(png_text.contains(want), "{sampler}: no {want:?} in the PNG");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn diffusers_sdxl_writes_two_files_that_generate_reads_back() {
    let dir = scratch("two-files");
    let folder = images(&dir);
    let out = dir.join("run");
    let o = train(&folder, &out, &["--steps", "2", "--diffusers-sdxl"]);
    assert!(o.status.success(), "{}", text(&o));
    let first = out.join("learned_embeds.safetensors");
    assert_eq!(
        tensor_shapes(&first),
        vec![("<xl-toy>".to_string(), vec![2, 8])]
    );
    assert_eq!(
        tensor_shapes(&out.join("learned_embeds_2.safetensors")),
        vec![("<xl-toy>".to_string(), vec![2, 16])]
    );
    let model = tiny_sdxl();
    let images_out = dir.join("gen");
    let o = invert(&[
        "generate",
        "--model",
        s(&model),
        "--embedding",
        s(&first),
        "--prompt",
        "<xl-toy> on a table",
        "--steps",
        "2",
        "--width",
        "16",
        "--height",
        "16",
        "--out",
        s(&images_out),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        !text(&o).contains("note:"),
        "both halves were used: {}",
        text(&o)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn model_info_describes_sdxl_folders_and_single_files() {
    let model = tiny_sdxl();
    let file = model.with_file_name("tiny-sdxl.safetensors");
    for args in [
        vec!["model", "info", "--model", s(&model)],
        vec!["model", "info", "--model", s(&file), "--config", s(&model)],
    ] {
        let o = invert(&args);
        let t = text(&o);
        assert!(o.status.success(), "{t}");
        for want in [
            "Stable Diffusion XL",
            "text encoder 2: 3 layers, width 16",
            "force_upcast true",
        ] {
            assert!(t.contains(want), "missing {want:?} in:\n{t}");
        }
    }
}
