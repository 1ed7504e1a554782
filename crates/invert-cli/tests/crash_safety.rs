//! Crash safety of `invert train` (issue 7): the run is killed with SIGKILL at random moments
//! (no handler runs, as after a power cut or the OOM killer), again and again, each time
//! continued with `--resume`. After every kill the output folder must hold only valid files:
//! every `learned_embeds*.safetensors` reads back, the checkpoint agrees with the embedding of
//! its step, and progress never goes backwards. The finished run must equal an uninterrupted
//! one byte for byte, and its log must list every step exactly once.
//!
//! `INVERT_KILL_ROUNDS` (default 10) and `INVERT_KILL_SEED` (default 7) change the number of
//! kills and the moments chosen, e.g. `INVERT_KILL_ROUNDS=200 cargo test --release -p
//! invert-cli --test crash_safety -- --nocapture` for a long soak.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use invert_model::embedding::read_embeddings;
use invert_model::weights::TensorReader;
use invert_model::weights::safetensors_file::SafetensorsFile;
use invert_train::data::RgbImage;

const STEPS: usize = 30;
const SAVE_EVERY: usize = 2;

fn tiny_sd1() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../invert-model/tests/fixtures/tiny-sd1")
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: reproducible kill moments without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

fn images(dir: &Path) -> PathBuf {
    let folder = dir.join("images");
    std::fs::create_dir_all(&folder).unwrap();
    for i in 0..3u8 {
        let mut rgb = Vec::with_capacity(64 * 64 * 3);
        for y in 0..64 {
            for x in 0..64 {
                let square = (16..40).contains(&y) && (20..44).contains(&x);
                let pixel = if square {
                    [200, 30, 30]
                } else {
                    [90, 120 + 40 * i, 200]
                };
                rgb.extend_from_slice(&pixel);
            }
        }
        let img = RgbImage::from_raw(64, 64, rgb).unwrap();
        img.save(folder.join(format!("{i}.png"))).unwrap();
    }
    folder
}

fn fresh_args(images: &Path, out: &Path) -> Vec<String> {
    let mut args: Vec<String> = ["train", "--model"].map(String::from).to_vec();
    args.push(tiny_sd1().to_string_lossy().into_owned());
    args.extend(["--images".into(), images.to_string_lossy().into_owned()]);
    args.extend(["--out".into(), out.to_string_lossy().into_owned()]);
    for a in [
        "--token",
        "<crash>",
        "--preview-every",
        "0",
        "--steps",
        &STEPS.to_string(),
        "--save-every",
        &SAVE_EVERY.to_string(),
    ] {
        args.push(a.to_string());
    }
    args
}

/// The command that continues the run in `out`: `--resume` once the run has written its
/// configuration, otherwise the original command again (nothing was learned yet).
fn next_args(images: &Path, out: &Path) -> Vec<String> {
    if out.join("config.json").is_file() {
        vec![
            "train".into(),
            "--resume".into(),
            out.to_string_lossy().into_owned(),
        ]
    } else {
        fresh_args(images, out)
    }
}

fn invert(args: &[String]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_invert"));
    // The CPU whatever GPU the machine has: the expected results are the CPU's.
    c.args(args)
        .env("INVERT_DEVICE", "cpu")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// Checks every file a killed run left; returns the checkpoint's step (0 without one).
fn check_folder(out: &Path) -> usize {
    let mut embedding_steps = Vec::new();
    for entry in std::fs::read_dir(out).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(".safetensors") {
            continue;
        }
        let path = entry.path();
        let e = read_embeddings(&path, None)
            .unwrap_or_else(|err| panic!("{name} is not a valid embedding after a kill: {err}"))
            .remove(0);
        assert_eq!(e.token, "<crash>", "{name}");
        assert!(e.vectors.iter().all(|v| v.is_finite()), "{name}");
        if let Some(step) = name
            .strip_prefix("learned_embeds-steps-")
            .and_then(|s| s.strip_suffix(".safetensors"))
        {
            let step: u64 = step.parse().unwrap();
            assert_eq!(e.meta.step, Some(step), "{name}");
            embedding_steps.push((step as usize, e.vectors));
        }
    }
    let state = out.join("checkpoint/state.safetensors");
    if !state.exists() {
        return 0;
    }
    let f = SafetensorsFile::open(&state)
        .unwrap_or_else(|e| panic!("checkpoint unreadable after a kill: {e}"));
    let step: usize = f.metadata()["step"].parse().unwrap();
    let params = f.read_f32("params").unwrap();
    // The embedding of the checkpoint's step is written just before it, so it exists and
    // holds the same vectors.
    let (_, vectors) = embedding_steps
        .iter()
        .find(|(s, _)| *s == step)
        .unwrap_or_else(|| panic!("checkpoint at step {step} but no embedding of that step"));
    assert_eq!(
        vectors, &params,
        "checkpoint and embedding of step {step} differ"
    );
    step
}

fn log_steps(out: &Path) -> Vec<u64> {
    std::fs::read_to_string(out.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[test]
fn sigkill_at_random_moments_never_loses_or_breaks_the_run() {
    let tmp = std::env::temp_dir().join(format!("invert-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let images = images(&tmp);

    // The reference: the same run, never interrupted; also times a whole run.
    let reference = tmp.join("reference");
    let start = Instant::now();
    let o = invert(&fresh_args(&images, &reference)).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run_ms = start.elapsed().as_millis() as u64;

    let rounds = env_or("INVERT_KILL_ROUNDS", 10);
    let mut rng = Rng(env_or("INVERT_KILL_SEED", 7) | 1);
    let out = tmp.join("killed");
    let (mut kills, mut finished_early, mut last_step) = (0, 0, 0);
    let mut steps_seen = Vec::new();
    for _ in 0..rounds {
        let mut child = invert(&next_args(&images, &out)).spawn().unwrap();
        // Anywhere from start-up to the length of a whole run (resumed runs are shorter).
        std::thread::sleep(Duration::from_millis(rng.below(run_ms + 1)));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        } else {
            finished_early += 1;
        }
        let o = child.wait_with_output().unwrap();
        let step = check_folder(&out);
        assert!(
            step >= last_step,
            "the checkpoint went back from step {last_step} to {step}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        last_step = step;
        steps_seen.push(step);
        if step == STEPS && out.join("learned_embeds.safetensors").exists() {
            // Finished: start over to keep killing (a finished run is not resumed).
            let _ = std::fs::remove_dir_all(&out);
            last_step = 0;
        }
    }
    eprintln!(
        "{rounds} rounds ({kills} killed, {finished_early} finished first; a whole run takes \
         {run_ms} ms); checkpoint step after each: {steps_seen:?}"
    );
    assert!(kills > 0);

    // Continue (without killing) to the end.
    let o = invert(&next_args(&images, &out)).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    check_folder(&out);
    for f in [
        "learned_embeds.safetensors",
        &format!("learned_embeds-steps-{STEPS}.safetensors"),
        "checkpoint/state.safetensors",
    ] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(reference.join(f)).unwrap(),
            "{f}: the killed and resumed run differs from the uninterrupted one"
        );
    }
    assert_eq!(log_steps(&out), (1..=STEPS as u64).collect::<Vec<_>>());
    // Temporary files of killed writers are cleaned up by the next run.
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .chain(std::fs::read_dir(out.join("checkpoint")).unwrap())
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".invert-tmp-"))
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let _ = std::fs::remove_dir_all(&tmp);
}
