//! The `invert` binary on the committed fixtures: help, model info, and embedding
//! inspect/convert on every embedding fixture (readable ones round-trip through every output
//! format of their kind, one-encoder or SDXL, and are refused by the others; refused ones exit 1
//! with their specific message).

use std::path::PathBuf;
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../invert-model/tests/fixtures")
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

#[test]
fn help_lists_the_subcommands_that_exist() {
    let out = invert(&["--help"]);
    assert!(out.status.success());
    let t = text(&out);
    for cmd in ["model", "embedding"] {
        assert!(t.contains(cmd), "{t}");
    }
}

#[test]
fn model_info_loads_folders_and_single_files() {
    let f = fixtures();
    let out = invert(&[
        "model",
        "info",
        "--model",
        f.join("tiny-sd2").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("v_prediction"), "{}", text(&out));
    let out = invert(&[
        "model",
        "info",
        "--model",
        f.join("tiny-sd1.ckpt").to_str().unwrap(),
        "--config",
        f.join("tiny-sd1").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let out = invert(&["model", "info", "--model", "/nonexistent/model"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("no such file or folder"),
        "{}",
        text(&out)
    );
}

#[test]
fn model_info_says_which_device_and_lists_adapters() {
    let model = fixtures().join("tiny-sd1");
    let model = model.to_str().unwrap();
    // `auto` (the default) is replaced by $INVERT_DEVICE=cpu here.
    let out = invert(&["model", "info", "--model", model]);
    assert!(out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("device: cpu, precision f32 (auto)"), "{err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("adapters:"),
        "{}",
        text(&out)
    );
    // A wrong device or precision is an error with advice, not a panic.
    let out = invert(&["model", "info", "--model", model, "--device", "tpu"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("--device tpu: unknown device `tpu`; choose one of: auto, cpu"),
        "{}",
        text(&out)
    );
    let out = invert(&["model", "info", "--model", model, "--precision", "f8"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap refuses it: {}",
        text(&out)
    );
}

#[test]
fn embedding_inspect_and_convert_every_fixture() {
    let dir = fixtures().join("embeddings");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let out_dir = std::env::temp_dir().join(format!("invert-cli-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir).unwrap();
    let model = fixtures().join("tiny-sd1");
    let files = expected["files"].as_object().unwrap();
    assert!(files.len() >= 30);
    for (name, want) in files {
        let path = dir.join(name);
        let p = path.to_str().unwrap();
        let out = invert(&[
            "embedding",
            "inspect",
            p,
            "--model",
            model.to_str().unwrap(),
        ]);
        if let Some(fragment) = want.get("message_contains").and_then(|m| m.as_str()) {
            assert_eq!(
                out.status.code(),
                Some(1),
                "{name} should be refused: {}",
                text(&out)
            );
            assert!(text(&out).contains(fragment), "{name}: {}", text(&out));
            continue;
        }
        assert!(out.status.success(), "{name}: {}", text(&out));
        let embeddings = want["embeddings"].as_array().unwrap();
        for e in embeddings {
            assert!(
                text(&out).contains(&format!("token:   {}", e["token"].as_str().unwrap())),
                "{name}: {}",
                text(&out)
            );
        }
        if embeddings.len() > 1 {
            let out = invert(&[
                "embedding",
                "convert",
                p,
                out_dir.join("x.pt").to_str().unwrap(),
                "--format",
                "a1111",
            ]);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{name}: several embeddings cannot go to one file"
            );
            continue;
        }
        // SDXL embeddings go to the SDXL formats (diffusers-sdxl into a folder, which gets
        // learned_embeds.safetensors + learned_embeds_2.safetensors), the others to the rest;
        // each kind is refused by the other kind's formats.
        let second = embeddings[0].get("second");
        let (formats, wrong): (&[(&str, &str)], &str) = if second.is_some() {
            (&[("sdxl", "safetensors"), ("diffusers-sdxl", "")], "kohya")
        } else {
            (
                &[
                    ("diffusers", "safetensors"),
                    ("a1111", "pt"),
                    ("kohya", "safetensors"),
                ],
                "sdxl",
            )
        };
        let safe = name.replace('/', "_");
        let refused = out_dir.join(format!("{safe}.wrong"));
        let out = invert(&[
            "embedding",
            "convert",
            p,
            refused.to_str().unwrap(),
            "--format",
            wrong,
        ]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{name} -> {wrong}: {}",
            text(&out)
        );
        assert!(
            text(&out).contains("cannot write this embedding"),
            "{name}: {}",
            text(&out)
        );
        assert!(!refused.exists());
        for &(format, ext) in formats {
            let target = if ext.is_empty() {
                let d = out_dir.join(format!("{safe}.{format}"));
                std::fs::create_dir_all(&d).unwrap();
                d
            } else {
                out_dir.join(format!("{safe}.{format}.{ext}"))
            };
            let out = invert(&[
                "embedding",
                "convert",
                p,
                target.to_str().unwrap(),
                "--format",
                format,
                "--token",
                "<conv>",
            ]);
            assert!(out.status.success(), "{name} -> {format}: {}", text(&out));
            let written = if ext.is_empty() {
                assert!(target.join("learned_embeds_2.safetensors").is_file());
                target.join("learned_embeds.safetensors")
            } else {
                target.clone()
            };
            let out = invert(&["embedding", "inspect", written.to_str().unwrap()]);
            assert!(out.status.success(), "{name} -> {format}: {}", text(&out));
            let shape = &embeddings[0]["shape"];
            let dims = match second {
                Some(g) => format!(
                    "vectors: {} x {} (clip_l) + {} x {} (clip_g)",
                    shape[0], shape[1], g["shape"][0], g["shape"][1]
                ),
                None => format!("vectors: {} x {}", shape[0], shape[1]),
            };
            assert!(
                text(&out).contains(&dims),
                "{name} -> {format}: {}",
                text(&out)
            );
            if second.is_some() {
                assert!(
                    text(&out).contains("clip_g vector 0: |v| = "),
                    "{}",
                    text(&out)
                );
            }
            // A second convert to the same path is refused without --overwrite.
            let again = invert(&[
                "embedding",
                "convert",
                p,
                target.to_str().unwrap(),
                "--format",
                format,
            ]);
            assert_eq!(again.status.code(), Some(1), "{name}: overwrite refused");
        }
    }
}

#[test]
fn embedding_sdxl_inspect_and_convert_defaults() {
    let dir = fixtures().join("embeddings");
    let out_dir = std::env::temp_dir().join(format!("invert-cli-sdxl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir).unwrap();
    let xl = dir.join("sdxl_kohya.safetensors");
    let xl = xl.to_str().unwrap();

    // Against an SDXL model: both tables fit (8 + 16 wide, like the tiny model), nearest words
    // come from each encoder's own table.
    let model = fixtures().join("tiny-sdxl");
    let out = invert(&[
        "embedding",
        "inspect",
        xl,
        "--model",
        model.to_str().unwrap(),
    ]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(!t.contains("model:   "), "no mismatch expected:\n{t}");
    for want in ["clip_l vector 0", "clip_g vector 0", "nearest:"] {
        assert!(t.contains(want), "missing {want:?} in:\n{t}");
    }

    // Without --format: sdxl for SDXL embeddings, diffusers for the others; a folder as
    // OUTPUT gets the format's usual name.
    let out = invert(&["embedding", "convert", xl, out_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("(sdxl)"), "{}", text(&out));
    let written = out_dir.join("sdxl_kohya.safetensors");
    let back = invert(&["embedding", "inspect", written.to_str().unwrap()]);
    assert!(
        text(&back).contains("format:  SDXL clip_l/clip_g")
            && text(&back).contains("vectors: 2 x 8 (clip_l) + 2 x 16 (clip_g)"),
        "{}",
        text(&back)
    );
    let one = dir.join("diffusers_multi.safetensors");
    let out = invert(&[
        "embedding",
        "convert",
        one.to_str().unwrap(),
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(out_dir.join("learned_embeds.safetensors").is_file());

    // diffusers-sdxl into a folder writes both files; either reads back as one embedding.
    let two = out_dir.join("two");
    std::fs::create_dir_all(&two).unwrap();
    let out = invert(&[
        "embedding",
        "convert",
        xl,
        two.to_str().unwrap(),
        "--format",
        "diffusers-sdxl",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("learned_embeds.safetensors + ")
            && text(&out).contains("learned_embeds_2.safetensors (diffusers-sdxl)"),
        "{}",
        text(&out)
    );
    let back = invert(&[
        "embedding",
        "inspect",
        two.join("learned_embeds_2.safetensors").to_str().unwrap(),
    ]);
    assert!(
        text(&back).contains("format:  diffusers SDXL (two files)")
            && text(&back).contains("token:   sdxl_kohya"),
        "{}",
        text(&back)
    );
    // --help documents the SDXL formats.
    let help = invert(&["embedding", "convert", "--help"]);
    assert!(
        text(&help).contains("diffusers-sdxl") && text(&help).contains("sdxl for SDXL ones"),
        "{}",
        text(&help)
    );
    let _ = std::fs::remove_dir_all(&out_dir);
}

/// `invert generate --init-image --strength` on the tiny model: the PNG has the picture's size
/// (or the one asked for), records the strength as A1111 does, and with the img2img fixture's
/// settings reproduces diffusers' `StableDiffusionImg2ImgPipeline` image within 2/255
/// (`scripts/make_img2img_fixtures.py` feeds diffusers invert's seeded noise).
#[test]
fn generate_from_an_init_image() {
    use invert_model::weights::safetensors_file::SafetensorsFile;

    let f = fixtures();
    let gold = SafetensorsFile::open(&f.join("pipeline/tiny-sd1-img2img.safetensors")).unwrap();
    let meta = |k: &str| gold.metadata().get(k).unwrap().clone();
    let out_dir = std::env::temp_dir().join(format!("invert-cli-img2img-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out_dir);
    let (model, picture) = (f.join("tiny-sd1"), f.join("pipeline/img2img-init.png"));
    let run = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--init-image",
            picture.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = invert(&args);
        assert!(out.status.success(), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        PathBuf::from(stdout.lines().next().expect("the PNG's path"))
    };
    let (prompt, negative) = (meta("prompt"), meta("negative_prompt"));
    let (seed, strength) = (meta("seed"), meta("strength"));
    let png = run(&[
        "--prompt",
        &prompt,
        "--negative",
        &negative,
        "--sampler",
        "ddim",
        "--seed",
        &seed,
        "--strength",
        &strength,
        "--steps",
        &meta("steps"),
        "--cfg",
        &meta("guidance_scale"),
    ]);
    let image = invert_model::pipeline::load_init_image(&png).unwrap();
    assert_eq!(image.dimensions(), (32, 24), "the picture's size");
    let want = gold.read_bytes("ddim.image").unwrap();
    let worst = image
        .as_raw()
        .iter()
        .zip(&want)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(worst <= 2, "max pixel |diff| {worst}/255 against diffusers");
    let bytes = std::fs::read(&png).unwrap();
    let chunk = String::from_utf8_lossy(&bytes);
    assert!(
        chunk.contains("Size: 32x24, Model: tiny-sd1, Denoising strength: 0.6, Version"),
        "{chunk}"
    );

    // Another size resizes the picture; two images make a grid.
    let png = run(&[
        "--prompt", "a toy", "--width", "48", "--height", "40", "--steps", "3", "-n", "2",
    ]);
    let image = invert_model::pipeline::load_init_image(&png).unwrap();
    assert_eq!(image.dimensions(), (48, 40), "the size asked for");
    assert!(
        String::from_utf8_lossy(&std::fs::read(&png).unwrap()).contains("Denoising strength: 0.8"),
        "the default strength is recorded"
    );
    std::fs::remove_dir_all(&out_dir).unwrap();
}
