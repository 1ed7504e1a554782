//! `invert eval clip` against Python's numbers for the paper's definitions
//! (scripts/make_clip_metric_fixtures.py), and `invert eval paper` end to end on the tiny random
//! SD 1.x model with the tiny random CLIP: the table's numbers are `eval clip`'s on the images the
//! experiment wrote, a second run reuses them, and bad inputs get clear errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../invert-model/tests/fixtures")
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

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("invert-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `eval clip --json` of `images` against `reference` and `prompt`.
fn eval_clip(images: &Path, reference: &Path, prompt: &str, extra: &[&str]) -> serde_json::Value {
    let out_json = scratch("clip-json").join("n.json");
    let clip = fixtures().join("clip/tiny-clip");
    let mut args = vec![
        "eval",
        "clip",
        "--clip",
        s(&clip),
        "--images",
        s(images),
        "--reference",
        s(reference),
        "--prompt",
        prompt,
        "--json",
        s(&out_json),
    ];
    args.extend_from_slice(extra);
    let out = invert(&args);
    assert!(out.status.success(), "{}", text(&out));
    json(&out_json)
}

#[test]
fn eval_clip_matches_the_python_reference() {
    let want = json(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../invert-eval/tests/fixtures/clip_metrics.json"),
    );
    let images = fixtures().join("clip/images");
    let prompt = want["prompt"].as_str().unwrap();
    let close = |a: &serde_json::Value, b: &serde_json::Value| {
        (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-4
    };
    let got = eval_clip(&images, &images, prompt, &[]);
    assert_eq!(got["text"], want["text"]);
    assert_eq!(got["images"], 3);
    assert!(
        close(&got["image_similarity"], &want["image_similarity"]),
        "{got} vs {want}"
    );
    assert!(
        close(&got["text_similarity"], &want["text_similarity"]),
        "{got} vs {want}"
    );
    let got = eval_clip(&images, &images, prompt, &["--mean-embedding"]);
    assert!(
        close(
            &got["image_similarity"],
            &want["image_similarity_mean_embedding"]
        ),
        "{got}"
    );
    assert!(
        close(
            &got["text_similarity"],
            &want["text_similarity_mean_embedding"]
        ),
        "{got}"
    );
}

#[test]
fn eval_paper_runs_end_to_end_and_resumes() {
    let f = fixtures();
    let out = scratch("paper");
    let train = f.join("clip/images");
    let run = || {
        invert(&[
            "eval",
            "paper",
            "--model",
            s(&f.join("tiny-sd1")),
            "--clip",
            s(&f.join("clip/tiny-clip")),
            "--embedding",
            s(&f.join("embeddings/diffusers_single.safetensors")),
            "--images",
            s(&train),
            "--init",
            "toy",
            "--describe",
            "a small toy cat",
            "--paper-prompts",
            "-n",
            "2",
            "--steps",
            "2",
            "--size",
            "16",
            "--batch-size",
            "2",
            "--out",
            s(&out),
        ])
    };
    let first = run();
    assert!(first.status.success(), "{}", text(&first));
    let report = json(&out.join("report.json"));
    let scores = report["scores"].as_array().unwrap();
    let methods: Vec<&str> = scores
        .iter()
        .map(|s| s["method"].as_str().unwrap())
        .collect();
    assert_eq!(methods, ["Learned", "InitWord", "BestText", "PromptOnly"]);
    assert!(out.join("figure10.png").is_file() && out.join("report.md").is_file());
    assert_eq!(report["edit_prompts"].as_array().unwrap().len(), 3);

    // Each number is `eval clip`'s on the images written (reconstruction: "a photo of S*";
    // editability: the mean over the edit prompts of their text similarity).
    for (score, folder) in scores
        .iter()
        .zip(["learned", "init-word", "text", "prompt-only"])
    {
        let base = out.join("images/cat-toy").join(folder);
        let recon = eval_clip(&base.join("00-a-photo-of"), &train, "x", &[]);
        let r = score["reconstruction"].as_f64().unwrap();
        assert!(
            (recon["image_similarity"].as_f64().unwrap() - r).abs() < 1e-5,
            "{folder}"
        );
        let mut sum = 0.0;
        for (dir, text) in [
            ("01-a-photo-of-on-the-moon", "a photo of on the moon"),
            ("02-an-oil-painting-of", "an oil painting of"),
            ("03-elmo-holding-a", "Elmo holding a"),
        ] {
            let n = eval_clip(&base.join(dir), &train, text, &[]);
            sum += n["text_similarity"].as_f64().unwrap();
        }
        let e = score["editability"].as_f64().unwrap();
        assert!(
            (sum / 3.0 - e).abs() < 1e-5,
            "{folder}: {} vs {e}",
            sum / 3.0
        );
    }

    // A second run reuses every image: same report, no image rewritten.
    let png = out.join("images/cat-toy/learned/00-a-photo-of/000.png");
    let modified = std::fs::metadata(&png).unwrap().modified().unwrap();
    let second = run();
    assert!(second.status.success(), "{}", text(&second));
    assert_eq!(
        std::fs::metadata(&png).unwrap().modified().unwrap(),
        modified
    );
    assert_eq!(json(&out.join("report.json"))["scores"], report["scores"]);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn eval_paper_and_clip_refuse_bad_inputs_clearly() {
    let f = fixtures();
    let clip = f.join("clip/tiny-clip");
    let out = invert(&[
        "eval",
        "clip",
        "--clip",
        s(&clip),
        "--images",
        s(&f.join("clip/images")),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("give --reference TRAIN_DIR, --prompt TEXT, or both"),
        "{}",
        text(&out)
    );

    let out = invert(&[
        "eval",
        "clip",
        "--clip",
        "/nonexistent/clip",
        "--images",
        s(&f.join("clip/images")),
        "--prompt",
        "a photo",
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("/nonexistent/clip"), "{}", text(&out));

    let out = invert(&[
        "eval",
        "paper",
        "--model",
        s(&f.join("tiny-sd1")),
        "--clip",
        s(&clip),
        "--embedding",
        s(&f.join("embeddings/diffusers_single.safetensors")),
        "--embedding",
        s(&f.join("embeddings/diffusers_multi.safetensors")),
        "--images",
        s(&f.join("clip/images")),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("2 --embedding but 1 --images"),
        "{}",
        text(&out)
    );
}
