//! `.safetensors` files, read tensor by tensor with positioned reads (no mmap, so loading a
//! model never keeps the whole file resident), and sharded sets described by a
//! `*.safetensors.index.json`.
//!
//! The header is validated completely before anything else is read: offsets inside the file,
//! in order and non-overlapping, and each tensor's byte length equal to its shape times its
//! element size (format: github.com/huggingface/safetensors, README "Format").

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{StoredDType, TensorMeta, TensorReader, WeightError, convert};

/// Headers above this are refused (the format's reference implementation uses 100 MB).
const MAX_HEADER: u64 = 100 << 20;

#[derive(Debug)]
struct Entry {
    meta: TensorMeta,
    /// Absolute byte range in the file.
    start: u64,
    end: u64,
}

/// One `.safetensors` file.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    file: File,
    entries: BTreeMap<String, Entry>,
    metadata: HashMap<String, String>,
}

fn corrupt(path: &Path, reason: impl Into<String>) -> WeightError {
    WeightError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn io(path: &Path, source: std::io::Error) -> WeightError {
    WeightError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn parse_dtype(s: &str) -> Option<StoredDType> {
    Some(match s {
        "F64" => StoredDType::F64,
        "F32" => StoredDType::F32,
        "F16" => StoredDType::F16,
        "BF16" => StoredDType::BF16,
        "I64" => StoredDType::I64,
        "I32" => StoredDType::I32,
        "I16" => StoredDType::I16,
        "I8" => StoredDType::I8,
        "U8" => StoredDType::U8,
        "BOOL" => StoredDType::Bool,
        _ => return None,
    })
}

/// The 8-byte length prefix must leave room for the header in the file (and stay under the
/// format's 100 MB cap), or the file is not safetensors or was cut short.
fn check_header_len(path: &Path, header_len: u64, file_len: u64) -> Result<(), WeightError> {
    if header_len > MAX_HEADER || header_len > file_len - 8 {
        return Err(corrupt(
            path,
            format!(
                "header length {header_len} does not fit in a {file_len}-byte file: not a \
                 safetensors file, or truncated"
            ),
        ));
    }
    Ok(())
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<Self, WeightError> {
        let file = File::open(path).map_err(|e| io(path, e))?;
        let file_len = file.metadata().map_err(|e| io(path, e))?.len();
        if file_len < 8 {
            return Err(corrupt(
                path,
                format!("{file_len} bytes is too short for a safetensors file (truncated?)"),
            ));
        }
        let mut len_bytes = [0u8; 8];
        file.read_exact_at(&mut len_bytes, 0)
            .map_err(|e| io(path, e))?;
        let header_len = u64::from_le_bytes(len_bytes);
        check_header_len(path, header_len, file_len)?;
        let mut header = vec![0u8; header_len as usize];
        file.read_exact_at(&mut header, 8)
            .map_err(|e| io(path, e))?;
        let data_start = 8 + header_len;
        let (entries, metadata) = parse_header(path, &header, data_start, file_len - data_start)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            entries,
            metadata,
        })
    }

    /// The `__metadata__` string map.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// Raw little-endian bytes of one tensor.
    pub fn read_bytes(&self, name: &str) -> Result<Vec<u8>, WeightError> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| WeightError::NoSuchTensor {
                path: self.path.clone(),
                name: name.to_string(),
            })?;
        let mut buf = vec![0u8; (e.end - e.start) as usize];
        self.file
            .read_exact_at(&mut buf, e.start)
            .map_err(|err| io(&self.path, err))?;
        Ok(buf)
    }
}

/// A validated header: the tensors by name, and the `__metadata__` strings.
type ParsedHeader = (BTreeMap<String, Entry>, HashMap<String, String>);

/// Validates a safetensors JSON header (the bytes after the 8-byte length) against the
/// `data_len` bytes that follow it, `data_start` being where they begin in the file. Every
/// tensor's range must lie inside the data, match its shape and dtype exactly, and not overlap
/// another; nothing is allocated from a claimed size. Shared by [`SafetensorsFile::open`] and
/// [`check_safetensors_bytes`].
fn parse_header(
    path: &Path,
    header: &[u8],
    data_start: u64,
    data_len: u64,
) -> Result<ParsedHeader, WeightError> {
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header)
        .map_err(|e| corrupt(path, format!("header is not valid JSON: {e}")))?;

    let mut entries = BTreeMap::new();
    let mut metadata = HashMap::new();
    for (name, value) in header {
        if name == "__metadata__" {
            if let Some(map) = value.as_object() {
                for (k, v) in map {
                    if let Some(s) = v.as_str() {
                        metadata.insert(k.clone(), s.to_string());
                    }
                }
            }
            continue;
        }
        let bad = |why: &str| corrupt(path, format!("tensor `{name}`: {why}"));
        let obj = value
            .as_object()
            .ok_or_else(|| bad("header entry is not an object"))?;
        let dtype_str = obj
            .get("dtype")
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad("no dtype"))?;
        let dtype =
            parse_dtype(dtype_str).ok_or_else(|| bad(&format!("unsupported dtype {dtype_str}")))?;
        let shape = obj
            .get("shape")
            .and_then(|v| v.as_array())
            .ok_or_else(|| bad("no shape"))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| bad("shape is not a list of sizes"))?;
        let offsets = obj
            .get("data_offsets")
            .and_then(|v| v.as_array())
            .filter(|a| a.len() == 2)
            .and_then(|a| Some((a[0].as_u64()?, a[1].as_u64()?)))
            .ok_or_else(|| bad("data_offsets is not [begin, end]"))?;
        let (begin, end) = offsets;
        if begin > end || end > data_len {
            return Err(bad(&format!(
                "data_offsets [{begin}, {end}] lie outside the {data_len} data bytes (truncated file?)"
            )));
        }
        let numel = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad("shape overflows"))?;
        let expected = (numel as u128) * dtype.size() as u128;
        if expected != (end - begin) as u128 {
            return Err(bad(&format!(
                "shape {shape:?} of {dtype_str} needs {expected} bytes but data_offsets span {}",
                end - begin
            )));
        }
        entries.insert(
            name,
            Entry {
                meta: TensorMeta { dtype, shape },
                start: data_start + begin,
                end: data_start + end,
            },
        );
    }
    // Overlapping ranges mean a forged header; the format forbids them.
    let mut ranges: Vec<(u64, u64, &str)> = entries
        .iter()
        .map(|(n, e)| (e.start, e.end, n.as_str()))
        .collect();
    ranges.sort();
    for pair in ranges.windows(2) {
        if pair[1].0 < pair[0].1 {
            return Err(corrupt(
                path,
                format!("tensors `{}` and `{}` overlap", pair[0].2, pair[1].2),
            ));
        }
    }
    Ok((entries, metadata))
}

/// Validates a whole safetensors file held in memory (length prefix, header, data ranges) and
/// returns its tensors' metadata, without converting any data. `path` is only used in messages.
/// This is the entry point of the `safetensors_header` fuzz target; loading goes through
/// [`SafetensorsFile::open`], which applies the same checks.
pub fn check_safetensors_bytes(
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<(String, TensorMeta)>, WeightError> {
    let file_len = bytes.len() as u64;
    if file_len < 8 {
        return Err(corrupt(
            path,
            format!("{file_len} bytes is too short for a safetensors file (truncated?)"),
        ));
    }
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    check_header_len(path, header_len, file_len)?;
    let data_start = 8 + header_len;
    let header = &bytes[8..data_start as usize];
    let (entries, _) = parse_header(path, header, data_start, file_len - data_start)?;
    Ok(entries.into_iter().map(|(n, e)| (n, e.meta)).collect())
}

impl TensorReader for SafetensorsFile {
    fn path(&self) -> &Path {
        &self.path
    }
    fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }
    fn meta(&self, name: &str) -> Option<&TensorMeta> {
        self.entries.get(name).map(|e| &e.meta)
    }
    fn read_f32(&self, name: &str) -> Result<Vec<f32>, WeightError> {
        let meta = &self
            .entries
            .get(name)
            .ok_or_else(|| WeightError::NoSuchTensor {
                path: self.path.clone(),
                name: name.to_string(),
            })?
            .meta;
        let bytes = self.read_bytes(name)?;
        convert::bytes_to_f32(&bytes, meta.dtype).ok_or_else(|| WeightError::NotFloat {
            path: self.path.clone(),
            name: name.to_string(),
            dtype: meta.dtype,
        })
    }
}

/// Several readers seen as one (the shards of a sharded checkpoint, or a component's files).
pub struct TensorSet {
    path: PathBuf,
    readers: Vec<Arc<dyn TensorReader>>,
    owner: BTreeMap<String, usize>,
}

impl TensorSet {
    /// Fails when two readers hold a tensor of the same name.
    pub fn new(path: PathBuf, readers: Vec<Arc<dyn TensorReader>>) -> Result<Self, WeightError> {
        let mut owner = BTreeMap::new();
        for (i, r) in readers.iter().enumerate() {
            for name in r.names() {
                if let Some(j) = owner.insert(name.clone(), i) {
                    return Err(corrupt(
                        &path,
                        format!(
                            "tensor `{name}` appears in both {} and {}",
                            readers[j].path().display(),
                            r.path().display()
                        ),
                    ));
                }
            }
        }
        Ok(Self {
            path,
            readers,
            owner,
        })
    }

    /// Opens a sharded safetensors checkpoint from its `*.safetensors.index.json`.
    pub fn open_index(index: &Path) -> Result<Self, WeightError> {
        let text = std::fs::read_to_string(index).map_err(|e| io(index, e))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| corrupt(index, format!("not valid JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| corrupt(index, "no `weight_map` object"))?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut files: Vec<String> = map
            .values()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        files.sort();
        files.dedup();
        let mut readers: Vec<Arc<dyn TensorReader>> = Vec::new();
        for f in &files {
            if f.contains("..") || f.starts_with('/') {
                return Err(corrupt(
                    index,
                    format!("shard name `{f}` leaves the folder"),
                ));
            }
            readers.push(Arc::new(SafetensorsFile::open(&dir.join(f))?));
        }
        let set = Self::new(index.to_path_buf(), readers)?;
        for (name, file) in map {
            if !set.owner.contains_key(name) {
                return Err(corrupt(
                    index,
                    format!("the index lists `{name}` in {file}, which does not hold it"),
                ));
            }
        }
        Ok(set)
    }
}

impl TensorReader for TensorSet {
    fn path(&self) -> &Path {
        &self.path
    }
    fn names(&self) -> Vec<String> {
        self.owner.keys().cloned().collect()
    }
    fn meta(&self, name: &str) -> Option<&TensorMeta> {
        self.owner
            .get(name)
            .and_then(|&i| self.readers[i].meta(name))
    }
    fn read_f32(&self, name: &str) -> Result<Vec<f32>, WeightError> {
        match self.owner.get(name) {
            Some(&i) => self.readers[i].read_f32(name),
            None => Err(WeightError::NoSuchTensor {
                path: self.path.clone(),
                name: name.to_string(),
            }),
        }
    }
}
