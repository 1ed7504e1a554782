//! Embeddings bundled in LoRA files.
//!
//! A LoRA trained together with new words can carry them: each tensor of embedding `<name>` is
//! stored as `bundle_emb.<name>.<tensor>` next to the LoRA weights. OneTrainer writes
//! `bundle_emb.<placeholder>.clip_l` (SD 1.x; older versions `string_to_param.*`) and
//! `.clip_l`/`.clip_g` for SDXL, with `_out` tables where its model has them (its
//! `*LoRASaver.__get_state_dict`); kohya's bundling script copies every tensor of an embedding
//! file under `bundle_emb.<file stem>.` (`string_to_param.*`, `emb_params`, `clip_l`, ...). A1111
//! and Forge (`extensions-builtin/Lora/networks.py`) split the key at its first two dots, load
//! the tensors under each `<name>` as an embedding file of their own, and name it `<name>`;
//! invert does the same. The LoRA weights themselves are ignored: invert applies no LoRA.

use std::collections::BTreeMap;

use super::read::{Container, add_note, from_container};
use super::{EmbeddingError, EmbeddingFormat, LearnedEmbedding};

/// The key prefix of a bundled embedding's tensors.
pub(super) const PREFIX: &str = "bundle_emb.";

/// Whether a tensor name is a LoRA weight: kohya's `lora_unet_*`/`lora_te*_*` modules, or the
/// `lora_down`/`lora_up` (kohya) and `lora_A`/`lora_B` (PEFT, diffusers) matrices.
pub(super) fn is_lora_tensor(name: &str) -> bool {
    name.starts_with("lora_unet_")
        || name.starts_with("lora_te")
        || [".lora_down.", ".lora_up.", ".lora_A.", ".lora_B."]
            .iter()
            .any(|p| name.contains(p))
}

/// Reads every bundled embedding of a file whose tensor `names` include `bundle_emb.*` ones.
pub(super) fn read_bundle(
    c: &Container,
    names: &[String],
) -> Result<Vec<LearnedEmbedding>, EmbeddingError> {
    let path = c.path();
    // Entry names in the order of the (sorted) tensor names.
    let mut entries: Vec<&str> = Vec::new();
    for n in names {
        let Some(rest) = n.strip_prefix(PREFIX) else {
            continue;
        };
        match rest.split_once('.') {
            Some((name, tensor)) if !name.is_empty() && !tensor.is_empty() => {
                if entries.last() != Some(&name) {
                    entries.push(name);
                }
            }
            _ => {
                return Err(EmbeddingError::Invalid {
                    path: path.to_path_buf(),
                    reason: format!(
                        "the LoRA bundle key `{n}` is not `bundle_emb.<name>.<tensor>` (the \
                         layout OneTrainer writes and A1111 reads); the file is damaged or was \
                         bundled by hand: re-bundle the embedding"
                    ),
                });
            }
        }
    }
    entries.dedup();
    let others: Vec<&String> = names.iter().filter(|n| !n.starts_with(PREFIX)).collect();
    let lora_note = others.first().map(|first| {
        format!(
            "{} LoRA tensor{} (e.g. `{first}`): invert does not apply LoRA weights; load the \
             file as a LoRA in A1111, ComfyUI or diffusers for them",
            others.len(),
            if others.len() == 1 { "" } else { "s" }
        )
    });
    // kohya's `ss_*` training fields (dataset folders, tag frequencies) can be many kilobytes:
    // they describe the LoRA's training, not the embedding.
    let metadata: BTreeMap<String, String> = c
        .metadata
        .iter()
        .filter(|(k, _)| !k.starts_with("ss_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();

    let mut out = Vec::with_capacity(entries.len());
    for name in entries {
        let prefix = format!("{PREFIX}{name}.");
        let entry = Container {
            reader: c.reader,
            prefix: format!("{}{prefix}", c.prefix),
            token: Some(name.to_owned()),
            ints: under(&c.ints, &prefix),
            strs: under(&c.strs, &prefix),
            metadata: metadata.clone(),
        };
        let mut es = from_container(&entry)?;
        if es.len() != 1 {
            return Err(EmbeddingError::Invalid {
                path: path.to_path_buf(),
                reason: format!(
                    "the bundled embedding `{name}` holds {} embeddings ({}); A1111 reads one \
                     per bundle entry. Re-bundle them one per name",
                    es.len(),
                    es.iter()
                        .map(|e| format!("`{}`", e.token))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        let mut e = es.remove(0);
        e.token = name.to_owned();
        e.meta.extra.insert(
            "bundle_layout".into(),
            e.meta.source_format.name().to_owned(),
        );
        e.meta.source_format = EmbeddingFormat::LoraBundle;
        if let Some(note) = &lora_note {
            add_note(&mut e.meta, "ignored", note);
        }
        out.push(e);
    }
    Ok(out)
}

/// The entries of `m` whose keys start with `prefix`, without it (a pickle's integer and string
/// leaves of one bundle entry, e.g. kohya's bundled `string_to_token.*`).
fn under<V: Clone>(m: &BTreeMap<String, V>, prefix: &str) -> BTreeMap<String, V> {
    m.iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_owned(), v.clone())))
        .collect()
}
