//! Learned words from embedding files into a model's vocabulary, for every command that
//! generates with them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use invert_model::embedding::{LearnedEmbedding, read_embeddings};
use invert_model::vocabulary::Vocabulary;

/// Adds every word of every file to `vocab` (notes printed), refusing two files that define
/// one word. Returns the words with the file each came from.
pub fn add_embedding_files(
    vocab: &mut Vocabulary,
    paths: &[PathBuf],
) -> Result<Vec<(LearnedEmbedding, PathBuf)>> {
    let mut loaded: Vec<(LearnedEmbedding, PathBuf)> = Vec::new();
    for path in paths {
        for e in
            read_embeddings(path, None).with_context(|| format!("reading {}", path.display()))?
        {
            // Two files defining one word: name both, which the tokenizer alone cannot.
            if let Some((_, first)) = loaded
                .iter()
                .find(|(w, _)| w.token.to_lowercase() == e.token.to_lowercase())
            {
                bail!(
                    "the word `{}` is defined by both {} and {}; pass only one of them, or give \
                     one another token with `invert embedding convert IN OUT --token NEW`",
                    e.token,
                    first.display(),
                    path.display()
                );
            }
            let added = vocab
                .add_embedding(&e, path)
                .with_context(|| format!("adding `{}` from {}", e.token, path.display()))?;
            if let Some(note) = added.note {
                eprintln!("note: {note}");
            }
            loaded.push((e, path.to_path_buf()));
        }
    }
    Ok(loaded)
}

/// `(token, short hash of its file)` of each word, for the PNGs' `parameters` (A1111's
/// "TI hashes").
pub fn word_hashes(loaded: &[(LearnedEmbedding, PathBuf)]) -> Result<Vec<(String, String)>> {
    loaded
        .iter()
        .map(|(e, path)| Ok((e.token.clone(), super::generate::short_hash(path)?)))
        .collect()
}

/// The initialiser text of the `invert train` run an embedding came from (its folder's
/// `config.json`), if it came from one and was not initialised at random.
pub fn recorded_init_word(embedding: &Path) -> Option<String> {
    let config = invert_train::checkpoint::load_config(embedding.parent()?).ok()?;
    Some(config.init_text()).filter(|t| t != "random")
}
