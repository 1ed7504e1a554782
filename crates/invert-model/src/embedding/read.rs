//! Reading embedding files: sniffing the container, then telling the formats apart by the
//! names inside it.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use super::{
    EmbeddingError, EmbeddingFormat, EmbeddingMeta, LearnedEmbedding, build_embedding, bundle,
    check_dtype, check_shape, file_stem, png_embed, sdxl,
};
use crate::weights::safetensors_file::SafetensorsFile;
use crate::weights::torch_zip::{TorchFile, is_torch_file};
use crate::weights::{TensorMeta, TensorReader};

/// The 16 keys of a kohya XTI file: one token set per U-Net cross-attention block (SD 1.x).
pub(crate) const XTI_KEYS: [&str; 16] = [
    "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "MID", "OUT03", "OUT04", "OUT05", "OUT06",
    "OUT07", "OUT08", "OUT09", "OUT10", "OUT11",
];

/// A file holding this many tensors is a model or something else, not an embedding file.
const MAX_TENSORS: usize = 64;

/// What the first bytes say the file is.
enum Kind {
    Png,
    OtherImage(&'static str),
    Safetensors,
    Torch,
    Unknown(String),
}

fn sniff(head: &[u8], file_len: u64) -> Kind {
    if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Kind::Png;
    }
    if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        return Kind::OtherImage("WebP");
    }
    if head.starts_with(&[0xff, 0x0a]) || head.starts_with(b"\0\0\0\x0cJXL ") {
        return Kind::OtherImage("JPEG XL");
    }
    if head.len() >= 12 && &head[4..8] == b"ftyp" && matches!(&head[8..12], b"avif" | b"avis") {
        return Kind::OtherImage("AVIF");
    }
    if head.starts_with(&[0xff, 0xd8, 0xff]) {
        return Kind::OtherImage("JPEG");
    }
    if is_torch_file(head) {
        return Kind::Torch;
    }
    if head.len() >= 9 {
        let n = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        if head[8] == b'{' && n.checked_add(8).is_some_and(|end| end <= file_len) {
            return Kind::Safetensors;
        }
    }
    if head.is_empty() {
        return Kind::Unknown("the file is empty".into());
    }
    Kind::Unknown(
        "it is neither safetensors, a torch pickle/zip, nor a PNG image; the start of the file \
         matches none of them"
            .into(),
    )
}

/// Reads every embedding in `path`. The format is detected from the content. `token_override`
/// replaces the token name (only for files holding one embedding); otherwise the name comes
/// from the file where it has one (the diffusers key, A1111's `name`, invert's metadata, a LoRA
/// bundle's `<name>`) and from the file stem where it does not (kohya, OneTrainer, rinongal,
/// SDXL `{clip_l, clip_g}` files without metadata, bare tensors). Either file of diffusers'
/// two-file SDXL form reads both (see the module docs).
pub fn read_embeddings(
    path: &Path,
    token_override: Option<&str>,
) -> Result<Vec<LearnedEmbedding>, EmbeddingError> {
    let embeddings = read_file(path)?;
    let mut embeddings = sdxl::pair_two_files(path, embeddings)?;
    if let Some(token) = token_override {
        if embeddings.len() > 1 {
            return Err(EmbeddingError::AmbiguousOverride {
                path: path.to_path_buf(),
                count: embeddings.len(),
                tokens: token_list(&embeddings),
            });
        }
        for e in &mut embeddings {
            e.token = token.to_owned();
        }
    }
    for e in &embeddings {
        if e.token.trim().is_empty() {
            return Err(EmbeddingError::Invalid {
                path: path.to_path_buf(),
                reason: "the embedding has no token name (empty); give one explicitly".into(),
            });
        }
    }
    Ok(embeddings)
}

/// Reads every embedding of one file, without looking at the files next to it.
pub(super) fn read_file(path: &Path) -> Result<Vec<LearnedEmbedding>, EmbeddingError> {
    let io = |source| EmbeddingError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let mut head = Vec::with_capacity(64);
    file.by_ref().take(64).read_to_end(&mut head).map_err(io)?;
    drop(file);
    let container = |reader: &dyn TensorReader, ints, strs, metadata| {
        from_container(&Container {
            reader,
            prefix: String::new(),
            token: None,
            ints,
            strs,
            metadata,
        })
    };
    match sniff(&head, file_len) {
        Kind::Png => png_embed::read_png(path),
        Kind::OtherImage(kind) => Err(EmbeddingError::UnknownFormat {
            path: path.to_path_buf(),
            reason: format!(
                "a {kind} image; invert reads A1111 embedding images only as PNG: open it \
                 in A1111 (or convert it to PNG keeping its metadata) and use the .pt"
            ),
        }),
        Kind::Safetensors => {
            let f = SafetensorsFile::open(path)?;
            let metadata = f
                .metadata()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            container(&f, BTreeMap::new(), BTreeMap::new(), metadata)
        }
        Kind::Torch => {
            let f = TorchFile::open(path)?;
            let ints = f
                .int_names()
                .filter_map(|n| Some((n.to_owned(), f.int_value(n)?)))
                .collect();
            let strs = f
                .str_names()
                .filter_map(|n| Some((n.to_owned(), f.str_value(n)?.to_owned())))
                .collect();
            container(&f, ints, strs, BTreeMap::new())
        }
        Kind::Unknown(reason) => Err(EmbeddingError::UnknownFormat {
            path: path.to_path_buf(),
            reason,
        }),
    }
}

fn token_list(es: &[LearnedEmbedding]) -> String {
    es.iter()
        .map(|e| format!("`{}`", e.token))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A tensor file's contents, whatever the container; or one entry of a LoRA bundle, whose
/// tensors are the file's under `prefix` (`bundle_emb.<name>.`), seen without it.
pub(super) struct Container<'a> {
    pub(super) reader: &'a dyn TensorReader,
    /// What this view's names lack of the file's: empty for the whole file.
    pub(super) prefix: String,
    /// The name the embeddings here are given before the file stem (a bundle entry's name).
    pub(super) token: Option<String>,
    /// Integer and string leaves of a pickle, by dotted name.
    pub(super) ints: BTreeMap<String, i64>,
    pub(super) strs: BTreeMap<String, String>,
    /// safetensors `__metadata__`.
    pub(super) metadata: BTreeMap<String, String>,
}

impl Container<'_> {
    pub(super) fn path(&self) -> &Path {
        self.reader.path()
    }

    /// The tensor names of this view, sorted, without the prefix.
    pub(super) fn names(&self) -> Vec<String> {
        self.reader
            .names()
            .into_iter()
            .filter_map(|n| n.strip_prefix(&self.prefix).map(str::to_owned))
            .collect()
    }

    /// The name a tensor has in the file (for reading it and for messages).
    pub(super) fn full_name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub(super) fn tensor_meta(&self, name: &str) -> Option<&TensorMeta> {
        self.reader.meta(&self.full_name(name))
    }

    /// The token for a format that stores none: the bundle entry's name, invert's `token`
    /// metadata, else the file stem (as A1111 and ComfyUI name embeddings).
    pub(super) fn default_token(&self) -> String {
        self.token
            .clone()
            .or_else(|| {
                self.metadata
                    .get("token")
                    .filter(|t| !t.trim().is_empty())
                    .cloned()
            })
            .unwrap_or_else(|| file_stem(self.path()))
    }

    /// Reads one tensor as an embedding, validating dtype and shape before reading its data.
    pub(super) fn embedding(
        &self,
        tensor: &str,
        token: String,
        meta: EmbeddingMeta,
    ) -> Result<LearnedEmbedding, EmbeddingError> {
        let path = self.path();
        let tensor = self.full_name(tensor);
        let m = self
            .reader
            .meta(&tensor)
            .ok_or_else(|| EmbeddingError::Invalid {
                path: path.to_path_buf(),
                reason: format!("no tensor `{tensor}`"),
            })?;
        check_dtype(path, &tensor, m.dtype)?;
        check_shape(path, &tensor, &m.shape)?;
        let shape = m.shape.clone();
        let values = self.reader.read_f32(&tensor)?;
        build_embedding(path, &tensor, token, &shape, values, meta)
    }

    /// The metadata every embedding of this file shares, from safetensors `__metadata__`
    /// (invert writes `step`, `base_model`, `base_model_hash`) or A1111's pickle fields.
    pub(super) fn meta(&self, format: EmbeddingFormat) -> EmbeddingMeta {
        let mut meta = EmbeddingMeta::new(format);
        for (k, v) in &self.metadata {
            match k.as_str() {
                "step" => meta.step = v.trim().parse().ok(),
                "base_model" => meta.base_model = Some(v.clone()),
                "base_model_hash" => meta.base_model_hash = Some(v.clone()),
                "token" => {} // the token's name, used as such
                _ => drop(meta.extra.insert(format!("safetensors.{k}"), v.clone())),
            }
        }
        if let Some(&step) = self.ints.get("step") {
            meta.step = u64::try_from(step).ok();
        }
        if let Some(name) = self.strs.get("sd_checkpoint_name") {
            meta.base_model = Some(name.clone());
        }
        if let Some(hash) = self.strs.get("sd_checkpoint") {
            meta.base_model_hash = Some(hash.clone());
        }
        meta
    }
}

pub(super) fn from_container(c: &Container) -> Result<Vec<LearnedEmbedding>, EmbeddingError> {
    let path = c.path();
    let names = c.names();
    let has = |n: &str| names.iter().any(|x| x == n);
    let stem = file_stem(path);

    if has("t5") || has("t5xxl") {
        return Err(EmbeddingError::UnknownFormat {
            path: path.to_path_buf(),
            reason: format!(
                "it is a Flux/SD3 embedding (it has a `{}` tensor); invert supports Stable \
                 Diffusion 1.x, 2.x and SDXL embeddings",
                c.full_name(if has("t5") { "t5" } else { "t5xxl" })
            ),
        });
    }
    // Embeddings bundled in a LoRA file (OneTrainer, kohya's bundling script; A1111 reads them).
    if c.prefix.is_empty() && names.iter().any(|n| n.starts_with(bundle::PREFIX)) {
        return bundle::read_bundle(c, &names);
    }
    if let Some(example) = names.iter().find(|n| bundle::is_lora_tensor(n)) {
        return Err(EmbeddingError::UnknownFormat {
            path: path.to_path_buf(),
            reason: format!(
                "it is a LoRA (e.g. `{example}`) without bundled embeddings (`bundle_emb.*`); \
                 invert reads textual-inversion embeddings, not LoRA weights"
            ),
        });
    }
    // SDXL: {clip_l, clip_g} (kohya, OneTrainer with its `_out` tables, invoke-training,
    // diffusers-advanced); `clip_l` alone from diffusers' advanced SD 1.5 script.
    if names
        .iter()
        .any(|n| sdxl::CLIP_TABLES.contains(&n.as_str()))
    {
        return sdxl::read_clip_tables(c, &names);
    }
    let xti: Vec<&String> = names
        .iter()
        .filter(|n| XTI_KEYS.contains(&n.as_str()))
        .collect();
    if xti.len() >= 2 {
        return Err(EmbeddingError::Xti {
            path: path.to_path_buf(),
            keys: format!(
                "{} of the 16 block keys, e.g. {}",
                xti.len(),
                describe(c, &xti[..2])
            ),
        });
    }

    // A1111 and rinongal: string_to_param holds one tensor per placeholder string.
    let terms: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with("string_to_param."))
        .collect();
    if !terms.is_empty()
        || has("string_to_param")
        || c.ints.keys().any(|k| k.starts_with("string_to_token"))
    {
        if terms.is_empty() {
            return Err(EmbeddingError::UnknownFormat {
                path: path.to_path_buf(),
                reason: "an A1111/rinongal embedding whose `string_to_param` holds no tensor"
                    .into(),
            });
        }
        let a1111 = c.strs.contains_key("name") || c.ints.contains_key("step");
        let format = if a1111 {
            EmbeddingFormat::A1111
        } else {
            EmbeddingFormat::Rinongal
        };
        let mut out = Vec::new();
        for t in &terms {
            let placeholder = &t["string_to_param.".len()..];
            let mut meta = c.meta(format);
            meta.extra
                .insert("placeholder".into(), placeholder.to_owned());
            if let Some(id) = c.ints.get(&format!("string_to_token.{placeholder}")) {
                meta.extra
                    .insert("placeholder_token_id".into(), id.to_string());
            }
            // One term: the file's name for it (A1111 `name`), else the file stem. Several
            // (rinongal merge_embeddings.py): each placeholder string names its embedding.
            let token = if terms.len() > 1 {
                placeholder.to_owned()
            } else {
                c.strs.get("name").cloned().unwrap_or_else(|| stem.clone())
            };
            out.push(c.embedding(t, token, meta)?);
        }
        return Ok(out);
    }

    if has("emb_params") {
        let mut meta = c.meta(EmbeddingFormat::Kohya);
        note_ignored(&mut meta, &names, &["emb_params"]);
        return Ok(vec![c.embedding("emb_params", c.default_token(), meta)?]);
    }
    if has("emp_params") {
        let mut meta = c.meta(EmbeddingFormat::OneTrainer);
        note_ignored(&mut meta, &names, &["emp_params"]);
        return Ok(vec![c.embedding("emp_params", c.default_token(), meta)?]);
    }

    // diffusers: every tensor is a token.
    if names.is_empty() {
        return Err(EmbeddingError::UnknownFormat {
            path: path.to_path_buf(),
            reason: "it holds no tensors".into(),
        });
    }
    if names.len() > MAX_TENSORS {
        return Err(EmbeddingError::UnknownFormat {
            path: path.to_path_buf(),
            reason: format!(
                "it holds {} tensors (e.g. `{}`), which looks like model weights",
                names.len(),
                names[0]
            ),
        });
    }
    let mut out = Vec::new();
    for n in &names {
        let meta = c.meta(EmbeddingFormat::Diffusers);
        // A bare pickled tensor (torch.save(t)) has no name: the file stem names it.
        let token = if n.is_empty() {
            stem.clone()
        } else {
            n.clone()
        };
        out.push(c.embedding(n, token, meta)?);
    }
    Ok(out)
}

/// Records the tensors a format's reader skips.
pub(super) fn note_ignored(meta: &mut EmbeddingMeta, names: &[String], used: &[&str]) {
    let ignored: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| !used.contains(n))
        .collect();
    if !ignored.is_empty() {
        // OneTrainer writes `emp_params_out` / `clip_l_out` / `clip_g_out` next to the input
        // tables (StableDiffusion[XL]EmbeddingSaver, LoRA savers).
        let why = if ignored.iter().any(|n| n.ends_with("_out")) {
            " (OneTrainer's output-side embeddings, for models whose text encoder has one; \
             Stable Diffusion uses the input embeddings only)"
        } else {
            ""
        };
        add_note(meta, "ignored", &format!("{}{why}", ignored.join(", ")));
    }
}

/// Adds `note` to `meta.extra[key]`, after what is there.
pub(super) fn add_note(meta: &mut EmbeddingMeta, key: &str, note: &str) {
    meta.extra
        .entry(key.into())
        .and_modify(|v| {
            v.push_str("; ");
            v.push_str(note);
        })
        .or_insert_with(|| note.to_owned());
}

/// `name [shape]` for a few tensors.
fn describe(c: &Container, names: &[&String]) -> String {
    names
        .iter()
        .map(|n| match c.tensor_meta(n) {
            Some(m) => format!("`{n}` {:?}", m.shape),
            None => format!("`{n}`"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}
