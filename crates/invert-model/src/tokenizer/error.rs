use std::path::PathBuf;

/// Everything that can go wrong loading a tokenizer, encoding a prompt or adding a concept. The
/// messages name the file or the token and say what to do.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(
        "{dir} has no tokenizer.json and no vocab.json + merges.txt; pass a model's tokenizer/ \
         folder (invert's bundled CLIP tokenizer is used when a model has none)"
    )]
    NoTokenizer { dir: PathBuf },

    #[error("{present} has no {missing} beside it; a CLIP tokenizer folder needs both files")]
    MissingFile { present: PathBuf, missing: PathBuf },

    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path} is not valid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("{path} is not a usable tokenizer: {message}")]
    Load { path: PathBuf, message: String },

    #[error("{path}: {message}")]
    BadConfig { path: PathBuf, message: String },

    #[error("{token:?} is not in the tokenizer's vocabulary, so it cannot be the {role}")]
    UnknownToken { token: String, role: &'static str },

    #[error("the tokenizer failed on {text:?}: {message}")]
    Encode { text: String, message: String },

    #[error("{text:?} has no tokens after clean-up; give a word or phrase")]
    EmptyText { text: String },

    #[error(
        "{token:?} is already in CLIP's vocabulary (as {existing:?}, id {id}); a new concept \
         needs a token the tokenizer does not know, such as <{token}> or {token}*"
    )]
    ConceptInVocabulary {
        token: String,
        existing: String,
        id: u32,
    },

    #[error("{token:?} is already taken by {owner}; pick another token")]
    ConceptTaken { token: String, owner: String },

    #[error("{token:?} cannot be a concept token: {reason}")]
    ConceptInvalid { token: String, reason: String },
}
