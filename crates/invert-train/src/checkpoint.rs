//! What a run leaves on disk, always written atomically (temporary file, then rename):
//! - `learned_embeds.safetensors` (diffusers format; SDXL: `{clip_l, clip_g}`, or diffusers' two
//!   files with `diffusers_sdxl`) at the end, and
//!   `learned_embeds-steps-N.safetensors` every `save_every` steps;
//! - `checkpoint/state.safetensors`: v*, the optimiser moments and the step, which with
//!   `config.json` is everything `--resume` needs (all randomness derives from seed and step).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use invert_model::embedding::{
    EmbeddingFormat, EmbeddingMeta, LearnedEmbedding, SecondVectors, WriteFormat, write_embedding,
};
use invert_model::weights::safetensors_file::SafetensorsFile;
use invert_model::weights::safetensors_write::{write_atomic, write_safetensors};
use invert_model::weights::{StoredDType, TensorReader};

use crate::config::TrainConfig;
use crate::optimizer::OptimizerState;
use crate::trainer::Trainer;

pub fn checkpoint_dir(out: &Path) -> PathBuf {
    out.join("checkpoint")
}

/// The learned word as an embedding (diffusers metadata: step, base model).
pub fn embedding(trainer: &Trainer) -> LearnedEmbedding {
    let mut meta = EmbeddingMeta::new(EmbeddingFormat::Diffusers);
    meta.step = Some(trainer.step as u64);
    meta.base_model = trainer
        .config
        .model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    let first = trainer.params.len() - trainer.second_params().map_or(0, <[f32]>::len);
    LearnedEmbedding {
        token: trainer.config.token.clone(),
        vectors: trainer.params[..first].to_vec(),
        num_vectors: trainer.config.vectors,
        width: trainer.vocab.width(),
        second: trainer
            .second_params()
            .zip(trainer.vocab.second_width())
            .map(|(rows, width)| SecondVectors {
                vectors: rows.to_vec(),
                width,
            }),
        meta,
    }
}

/// Writes the embedding to `path` (replacing an older version of the same run's file): the
/// diffusers format for SD 1.x/2.x; for SDXL one `{clip_l, clip_g}` file, or diffusers' two
/// files (`path` and its `_2` twin) with `diffusers_sdxl`.
pub fn save_embedding(trainer: &Trainer, path: &Path) -> Result<(), String> {
    let e = embedding(trainer);
    let format = match (&e.second, trainer.config.diffusers_sdxl) {
        (None, _) => WriteFormat::Diffusers,
        (Some(_), false) => WriteFormat::Sdxl,
        (Some(_), true) => WriteFormat::DiffusersSdxl,
    };
    write_embedding(&e, path, format, true).map_err(|e| e.to_string())
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Saves the resumable state into `out/checkpoint/`.
pub fn save_checkpoint(trainer: &Trainer) -> Result<PathBuf, String> {
    let dir = checkpoint_dir(&trainer.config.out);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let n = trainer.params.len();
    let (p, m, v) = (
        f32_bytes(&trainer.params),
        f32_bytes(&trainer.optimizer.m),
        f32_bytes(&trainer.optimizer.v),
    );
    let mut tensors = vec![("params", StoredDType::F32, vec![n], p.as_slice())];
    if !trainer.optimizer.m.is_empty() {
        tensors.push(("adam_m", StoredDType::F32, vec![n], m.as_slice()));
        tensors.push(("adam_v", StoredDType::F32, vec![n], v.as_slice()));
    }
    let list: Vec<(&str, StoredDType, &[usize], &[u8])> = tensors
        .iter()
        .map(|(k, d, s, b)| (*k, *d, s.as_slice(), *b))
        .collect();
    let mut meta = BTreeMap::new();
    meta.insert("step".to_string(), trainer.step.to_string());
    meta.insert(
        "optimizer_step".to_string(),
        trainer.optimizer.step.to_string(),
    );
    meta.insert("token".to_string(), trainer.config.token.clone());
    let path = dir.join("state.safetensors");
    write_safetensors(&path, &list, &meta, true).map_err(|e| e.to_string())?;
    Ok(path)
}

/// Writes the effective configuration as `out/config.json`.
pub fn save_config(config: &TrainConfig) -> Result<(), String> {
    let path = config.out.join("config.json");
    let text = serde_json::to_string_pretty(config).expect("config serialises");
    write_atomic(&path, text.as_bytes(), true).map_err(|e| e.to_string())
}

/// Reads `out/config.json` of an earlier run.
pub fn load_config(out: &Path) -> Result<TrainConfig, String> {
    let path = out.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "{}: {e} (is this the --out folder of an earlier run?)",
            path.display()
        )
    })?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads the resumable state: (step, v*, optimiser state).
pub fn load_checkpoint(
    out: &Path,
    expected_len: usize,
) -> Result<(usize, Vec<f32>, OptimizerState), String> {
    let path = checkpoint_dir(out).join("state.safetensors");
    let file = SafetensorsFile::open(&path)
        .map_err(|e| format!("{e} (no resumable checkpoint in {})", out.display()))?;
    let meta = file.metadata();
    let num = |k: &str| {
        meta.get(k)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| format!("{}: no `{k}` in its metadata", path.display()))
    };
    let step = num("step")? as usize;
    let opt_step = num("optimizer_step")?;
    let read = |name: &str| file.read_f32(name).map_err(|e| e.to_string());
    let params = read("params")?;
    if params.len() != expected_len {
        return Err(format!(
            "{}: {} values, but the run's word has {expected_len}",
            path.display(),
            params.len()
        ));
    }
    let (m, v) = if file.meta("adam_m").is_some() {
        (read("adam_m")?, read("adam_v")?)
    } else {
        (Vec::new(), Vec::new())
    };
    Ok((
        step,
        params,
        OptimizerState {
            step: opt_step,
            m,
            v,
        },
    ))
}

/// The path of the resumable state inside a run folder.
pub fn state_path(out: &Path) -> PathBuf {
    checkpoint_dir(out).join("state.safetensors")
}

/// Drops the lines of `out/log.jsonl` for steps after `step`. A run killed between logging a
/// step and saving its checkpoint has logged steps that `--resume` will run again; without this
/// the log would hold them twice. The log is rewritten atomically.
pub fn trim_log(out: &Path, step: usize) -> Result<(), String> {
    let path = out.join("log.jsonl");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut kept = String::with_capacity(text.len());
    for line in text.lines() {
        // A line cut by the kill is not JSON: dropped with the steps after the checkpoint.
        let logged = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v["step"].as_u64());
        if logged.is_some_and(|s| s as usize <= step) {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    if kept.len() != text.len() {
        write_atomic(&path, kept.as_bytes(), true).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Removes the temporary files (`.NAME.invert-tmp-PID-N`, see `write_atomic`) that a killed
/// run left in `out` and its checkpoint folder: only those of processes that no longer run,
/// so a concurrent writer is never disturbed. Where process ids cannot be checked (no
/// `/proc`), nothing is removed. Returns how many were removed.
pub fn remove_stale_temp_files(out: &Path) -> usize {
    if !Path::new("/proc/self").exists() {
        return 0;
    }
    let mut removed = 0;
    for dir in [out.to_path_buf(), checkpoint_dir(out)] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.starts_with('.'))
                .and_then(|n| n.rsplit_once(".invert-tmp-"))
                .and_then(|(_, tail)| tail.split('-').next()?.parse::<u32>().ok())
            else {
                continue;
            };
            let alive = Path::new(&format!("/proc/{pid}")).exists();
            if !alive && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}
