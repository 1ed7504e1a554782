//! SDXL embeddings: rows for both text encoders (`clip_l`, CLIP ViT-L/14, 768 wide, and
//! `clip_g`, OpenCLIP ViT-bigG/14, 1280 wide), in the two layouts the tools write.
//!
//! - One file `{"clip_l": [n, 768], "clip_g": [n, 1280]}`: kohya sd-scripts
//!   (`train_textual_inversion.py` for SDXL), OneTrainer (`StableDiffusionXLEmbeddingSaver`,
//!   safetensors or a torch `.pt`, with `clip_l_out`/`clip_g_out` where its model has output
//!   embeddings), invoke-training (F32 safetensors), diffusers' advanced pivotal-tuning script
//!   (`TokenEmbeddingsHandler.save_embeddings`, `<output>_emb.safetensors`). A1111 loads these
//!   (`load_from_file`, "clip_g" and "clip_l" in the dict) and names them after the file stem.
//!   The same script for SD 1.5 writes `{"clip_l": [n, 768]}` alone: a one-encoder embedding.
//! - Two files from diffusers' `textual_inversion_sdxl.py`: `learned_embeds.safetensors`
//!   `{token: [n, 768]}` from `text_encoder` and `learned_embeds_2.safetensors`
//!   `{token: [n, 1280]}` from `text_encoder_2` (every `--save_steps` also
//!   `learned_embeds-steps-N.safetensors` + `learned_embeds_2-steps-N.safetensors`). Each is an
//!   ordinary diffusers file; diffusers loads them with two `load_textual_inversion` calls
//!   (the second with `text_encoder_2`/`tokenizer_2`). invert pairs them by these names.

use std::path::{Path, PathBuf};

use super::read::{Container, note_ignored, read_file};
use super::{EmbeddingError, EmbeddingFormat, LearnedEmbedding, SecondVectors};

/// The tensor names of the one-file layout (OneTrainer's `_out` tables are ignored).
pub(super) const CLIP_TABLES: [&str; 4] = ["clip_l", "clip_g", "clip_l_out", "clip_g_out"];

/// The stem diffusers' SDXL trainer gives its first file.
const FIRST_STEM: &str = "learned_embeds";
/// What it appends for the second (text_encoder_2's rows).
const SECOND_SUFFIX: &str = "_2";

fn sdxl_error(path: &Path, reason: String) -> EmbeddingError {
    EmbeddingError::Sdxl {
        path: path.to_path_buf(),
        reason,
    }
}

/// `name [shape]` of a tensor of `c`.
fn shown(c: &Container, name: &str) -> String {
    match c.tensor_meta(name) {
        Some(m) => format!("`{}` {:?}", c.full_name(name), m.shape),
        None => format!("`{}`", c.full_name(name)),
    }
}

/// Reads a file whose tensors include `clip_l*` / `clip_g*` (`names`, without `c`'s prefix).
pub(super) fn read_clip_tables(
    c: &Container,
    names: &[String],
) -> Result<Vec<LearnedEmbedding>, EmbeddingError> {
    let path = c.path();
    let has = |n: &str| names.iter().any(|x| x == n);
    let token = c.default_token();
    match (has("clip_l"), has("clip_g")) {
        (true, true) => {
            let mut meta = c.meta(EmbeddingFormat::Sdxl);
            note_ignored(&mut meta, names, &["clip_l", "clip_g"]);
            // The tables are read as embeddings of their own so that a bad value is reported
            // as `token (clip_g)`; check_shape has already named the tensor for a bad shape.
            let l = c.embedding("clip_l", format!("{token} (clip_l)"), meta.clone())?;
            let g = c.embedding("clip_g", format!("{token} (clip_g)"), meta)?;
            if l.num_vectors != g.num_vectors {
                return Err(sdxl_error(
                    path,
                    format!(
                        "{} holds {} vectors but {} holds {}; an SDXL embedding has the same \
                         number of vectors (one per token) for each text encoder. The file was \
                         damaged or assembled from two different embeddings: re-export it from \
                         the tool that trained it",
                        shown(c, "clip_l"),
                        l.num_vectors,
                        shown(c, "clip_g"),
                        g.num_vectors
                    ),
                ));
            }
            if (l.width, g.width) == (1280, 768) {
                return Err(sdxl_error(
                    path,
                    format!(
                        "{} is 1280 wide and {} 768 wide: the tables are swapped (clip_l is \
                         CLIP ViT-L, 768 wide; clip_g is OpenCLIP ViT-bigG, 1280 wide). \
                         Re-save the file with the names exchanged",
                        shown(c, "clip_l"),
                        shown(c, "clip_g")
                    ),
                ));
            }
            Ok(vec![LearnedEmbedding {
                token,
                vectors: l.vectors,
                num_vectors: l.num_vectors,
                width: l.width,
                second: Some(SecondVectors {
                    vectors: g.vectors,
                    width: g.width,
                }),
                meta: l.meta,
            }])
        }
        (true, false) => {
            let mut meta = c.meta(EmbeddingFormat::ClipL);
            note_ignored(&mut meta, names, &["clip_l"]);
            Ok(vec![c.embedding("clip_l", token, meta)?])
        }
        (false, true) => Err(sdxl_error(
            path,
            format!(
                "it holds {} (the second text encoder's rows) but no `{}` (the first's): this \
                 is half of an SDXL embedding, and SDXL needs both. Find the complete file \
                 (kohya, OneTrainer and invoke-training write `clip_l` and `clip_g` together)",
                shown(c, "clip_g"),
                c.full_name("clip_l")
            ),
        )),
        (false, false) => Err(sdxl_error(
            path,
            format!(
                "it holds only OneTrainer's output-side tables ({}), not the input tables \
                 `clip_l` and `clip_g` that a prompt uses; the file is incomplete: re-export \
                 the embedding from OneTrainer",
                names
                    .iter()
                    .filter(|n| CLIP_TABLES.contains(&n.as_str()))
                    .map(|n| shown(c, n))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// Which file of diffusers' two-file SDXL form a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Half {
    /// `learned_embeds[-steps-N].safetensors`: text_encoder's rows (clip_l).
    First,
    /// `learned_embeds_2[-steps-N].safetensors`: text_encoder_2's rows (clip_g).
    Second,
}

/// The half `path` is by its name, and the path of the other half. Only diffusers' exact names
/// count: `X.safetensors` and `X_2.safetensors` in general may be two versions of one
/// embedding, and reading them as one SDXL embedding would be wrong.
fn two_file_role(path: &Path) -> Option<(Half, PathBuf)> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".safetensors")?;
    let (base, steps) = match stem.split_once("-steps-") {
        Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            (base, format!("-steps-{n}"))
        }
        Some(_) => return None,
        None => (stem, String::new()),
    };
    let second = format!("{FIRST_STEM}{SECOND_SUFFIX}");
    let (half, other_base) = if base == FIRST_STEM {
        (Half::First, second.as_str())
    } else if base == second {
        (Half::Second, FIRST_STEM)
    } else {
        return None;
    };
    Some((
        half,
        path.with_file_name(format!("{other_base}{steps}.safetensors")),
    ))
}

/// The second file's path for a first file `path` (`learned_embeds[-steps-N].safetensors`), or
/// `None` when `path` is not named like a first file.
pub(super) fn second_file(path: &Path) -> Option<PathBuf> {
    match two_file_role(path)? {
        (Half::First, second) => Some(second),
        (Half::Second, _) => None,
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// diffusers' two-file SDXL form: when `path` is one half and its embeddings are plain
/// diffusers tables, reads the other half next to it and returns SDXL embeddings (first file's
/// rows as `vectors`, second's as `second`). A first file without its second is an ordinary
/// one-encoder file; a second file without its first is refused (it is half an embedding).
pub(super) fn pair_two_files(
    path: &Path,
    embeddings: Vec<LearnedEmbedding>,
) -> Result<Vec<LearnedEmbedding>, EmbeddingError> {
    let Some((half, other)) = two_file_role(path) else {
        return Ok(embeddings);
    };
    if embeddings
        .iter()
        .any(|e| e.meta.source_format != EmbeddingFormat::Diffusers)
    {
        return Ok(embeddings);
    }
    let (first_path, second_path) = match half {
        Half::First => (path, other.as_path()),
        Half::Second => (other.as_path(), path),
    };
    let other_there = other.symlink_metadata().is_ok();
    let (firsts, seconds) = match (half, other_there) {
        (Half::First, false) => return Ok(embeddings),
        (Half::Second, false) => {
            return Err(sdxl_error(
                path,
                format!(
                    "it is named like the second file of diffusers' two-file SDXL embedding \
                     (text_encoder_2's rows, clip_g), but the first file {} (text_encoder's \
                     rows, clip_l) is not next to it. An SDXL embedding needs both: put the two \
                     files in one folder",
                    file_name(first_path)
                ),
            ));
        }
        (Half::First, true) => (embeddings, read_file(second_path)?),
        (Half::Second, true) => (read_file(first_path)?, embeddings),
    };
    let pair_err = |reason: String| {
        sdxl_error(
            path,
            format!(
                "{} and {} next to it are not the two halves of one SDXL embedding: {reason}. \
                 Keep only files written together by diffusers' textual_inversion_sdxl.py in \
                 one folder",
                file_name(first_path),
                file_name(second_path)
            ),
        )
    };
    for (which, es) in [("first", &firsts), ("second", &seconds)] {
        if let Some(e) = es
            .iter()
            .find(|e| e.meta.source_format != EmbeddingFormat::Diffusers)
        {
            return Err(pair_err(format!(
                "the {which} is a {} file, not a diffusers table",
                e.meta.source_format
            )));
        }
    }
    let tokens = |es: &[LearnedEmbedding]| {
        es.iter()
            .map(|e| format!("`{}`", e.token))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if firsts.len() != seconds.len() {
        return Err(pair_err(format!(
            "the first holds {}, the second {}",
            tokens(&firsts),
            tokens(&seconds)
        )));
    }
    let mut seconds = seconds;
    let note = format!(
        "{} (text_encoder, clip_l) + {} (text_encoder_2, clip_g): diffusers' two-file SDXL \
         form, read together",
        file_name(first_path),
        file_name(second_path)
    );
    let mut out = Vec::with_capacity(firsts.len());
    for mut e in firsts {
        let Some(i) = seconds.iter().position(|g| g.token == e.token) else {
            return Err(pair_err(format!(
                "the first holds `{}`, the second {}",
                e.token,
                tokens(&seconds)
            )));
        };
        let g = seconds.swap_remove(i);
        if g.num_vectors != e.num_vectors {
            return Err(pair_err(format!(
                "`{}` has {} vectors in the first and {} in the second",
                e.token, e.num_vectors, g.num_vectors
            )));
        }
        e.second = Some(SecondVectors {
            vectors: g.vectors,
            width: g.width,
        });
        e.meta.source_format = EmbeddingFormat::DiffusersSdxl;
        e.meta.extra.insert("two_files".into(), note.clone());
        out.push(e);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_file_names() {
        let role = |p: &str| two_file_role(Path::new(p));
        assert_eq!(
            role("out/learned_embeds.safetensors"),
            Some((Half::First, "out/learned_embeds_2.safetensors".into()))
        );
        assert_eq!(
            role("learned_embeds_2-steps-500.safetensors"),
            Some((Half::Second, "learned_embeds-steps-500.safetensors".into()))
        );
        assert_eq!(
            role("learned_embeds-steps-20.safetensors"),
            Some((Half::First, "learned_embeds_2-steps-20.safetensors".into()))
        );
        for other in [
            "learned_embeds.bin",
            "my_learned_embeds.safetensors",
            "learned_embeds_3.safetensors",
            "learned_embeds-steps-.safetensors",
            "learned_embeds-steps-5x.safetensors",
            "cat_2.safetensors",
        ] {
            assert_eq!(role(other), None, "{other}");
        }
        assert_eq!(second_file(Path::new("learned_embeds_2.safetensors")), None);
    }
}
