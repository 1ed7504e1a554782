//! Torch checkpoints (`.pt`, `.ckpt`, `.bin`), read without executing anything.
//!
//! Two layouts exist:
//! - the zip format (torch >= 1.6): `<archive>/data.pkl` holds the object pickle and
//!   `<archive>/data/<key>` the raw bytes of each storage (the archive folder's name varies);
//! - the legacy format: a pickle of a magic number, one of the protocol version, one of system
//!   info, the object pickle, a pickle listing storage keys, then for each listed storage an
//!   8-byte little-endian element count followed by its raw data.
//!
//! The object pickle is interpreted by [`super::pickle`] and flattened into named tensors (nested
//! dict keys joined with `.`); integer and string leaves stay available through
//! [`TorchFile::int_value`] and [`TorchFile::str_value`]. Everything about a tensor is validated
//! at open; its data is read from the file when asked for.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use zip::ZipArchive;

use super::pickle::{Pickle, PickleError};
use super::{StoredDType, TensorMeta, TensorReader, WeightError};
use flatten::flatten;
use layout::{read_legacy, read_zip};

/// The legacy format's first pickle: `0x1950a86a20f9469cfc6c`, as LONG1's little-endian bytes.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
const LEGACY_PROTOCOL: i64 = 1001;

/// Whether `prefix` (the first bytes of a file, 32 are enough) looks like a torch checkpoint:
/// any zip archive (the zip format), or a pickle holding torch's legacy magic number.
pub fn is_torch_file(prefix: &[u8]) -> bool {
    prefix.starts_with(b"PK\x03\x04")
        || (prefix.first() == Some(&0x80)
            && prefix
                .windows(12)
                .any(|w| w[..2] == [0x8a, 10] && w[2..] == LEGACY_MAGIC))
}

/// Where a storage's bytes are in the file.
#[derive(Debug, Clone)]
enum Loc {
    /// Uncompressed, at an absolute file offset.
    Raw { start: u64, len: u64 },
    /// A deflate-compressed zip entry (torch never writes these, re-zipped files may have them).
    Deflated { entry: String, len: u64 },
}

impl Loc {
    fn len(&self) -> u64 {
        match self {
            Loc::Raw { len, .. } | Loc::Deflated { len, .. } => *len,
        }
    }
}

#[derive(Debug)]
struct Entry {
    meta: TensorMeta,
    stride: Vec<usize>,
    /// Byte range of the storage that the view touches, relative to the storage's start.
    byte_start: u64,
    byte_len: usize,
    loc: Loc,
}

/// A torch checkpoint opened for lazy reading.
#[derive(Debug)]
pub struct TorchFile {
    path: PathBuf,
    tensors: BTreeMap<String, Entry>,
    ints: BTreeMap<String, i64>,
    strs: BTreeMap<String, String>,
}

fn corrupt(path: &Path, reason: impl Into<String>) -> WeightError {
    WeightError::Corrupt {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn io_err(path: &Path, e: std::io::Error) -> WeightError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => corrupt(path, "truncated: the file ends early"),
        std::io::ErrorKind::InvalidData => corrupt(path, e.to_string()),
        _ => WeightError::Io {
            path: path.to_owned(),
            source: e,
        },
    }
}

fn pickle_err(path: &Path, e: PickleError) -> WeightError {
    match e {
        PickleError::UnsafeGlobal(global) => WeightError::UnsafeGlobal {
            path: path.to_owned(),
            global,
        },
        PickleError::Invalid(r) => corrupt(path, format!("invalid pickle: {r}")),
        PickleError::Io(e) => io_err(path, e),
    }
}

impl TorchFile {
    /// Opens a torch checkpoint in either format, reading and validating all metadata.
    pub fn open(path: &Path) -> Result<TorchFile, WeightError> {
        let mut file = File::open(path).map_err(|e| io_err(path, e))?;
        let file_len = file.metadata().map_err(|e| io_err(path, e))?.len();
        let mut head = Vec::new();
        Read::by_ref(&mut file)
            .take(4)
            .read_to_end(&mut head)
            .map_err(|e| io_err(path, e))?;
        file.rewind().map_err(|e| io_err(path, e))?;
        let (pickle, locs) = if head.starts_with(b"PK") {
            read_zip(path, file, file_len)?
        } else if head.first() == Some(&0x80) {
            read_legacy(path, file, file_len)?
        } else {
            return Err(corrupt(
                path,
                "not a torch checkpoint (neither a zip archive nor a pickle)",
            ));
        };
        Self::build(path, &pickle, &locs)
    }

    fn build(
        path: &Path,
        pickle: &Pickle,
        locs: &BTreeMap<String, Loc>,
    ) -> Result<Self, WeightError> {
        for (key, &(dtype, numel)) in &pickle.storages {
            let have = locs.get(key).map(Loc::len);
            let need = (numel as u64).checked_mul(dtype.size() as u64);
            if have.is_none() || need.is_none_or(|n| Some(n) > have) {
                return Err(corrupt(
                    path,
                    format!(
                        "storage `{key}` should hold {numel} {dtype:?} elements but has {have:?} bytes"
                    ),
                ));
            }
        }
        let flat = flatten(pickle).map_err(|r| corrupt(path, r))?;
        let mut tensors = BTreeMap::new();
        for (name, t) in flat.tensors {
            // The view was checked against its storage's element count, which fits in `loc`.
            let es = t.dtype.size();
            let byte_len = t.len.checked_mul(es);
            let byte_start = (t.offset as u64)
                .checked_mul(es as u64)
                .filter(|_| t.len > 0);
            let (Some(loc), Some(byte_len)) = (locs.get(&t.key), byte_len) else {
                return Err(corrupt(
                    path,
                    format!("tensor `{name}` has no readable storage"),
                ));
            };
            let (loc, byte_start) = (loc.clone(), byte_start.unwrap_or(0));
            let meta = TensorMeta {
                dtype: t.dtype,
                shape: t.shape.clone(),
            };
            tensors.insert(
                name,
                Entry {
                    meta,
                    stride: t.stride.clone(),
                    byte_start,
                    byte_len,
                    loc,
                },
            );
        }
        Ok(TorchFile {
            path: path.to_owned(),
            tensors,
            ints: flat.ints,
            strs: flat.strs,
        })
    }

    /// An integer leaf of the object tree by dotted name (`global_step`, `string_to_token.*`).
    pub fn int_value(&self, dotted: &str) -> Option<i64> {
        self.ints.get(dotted).copied()
    }

    /// A string leaf of the object tree by dotted name (`name`, `sd_checkpoint_name`).
    pub fn str_value(&self, dotted: &str) -> Option<&str> {
        self.strs.get(dotted).map(String::as_str)
    }

    /// Names of all integer leaves, sorted.
    pub fn int_names(&self) -> impl Iterator<Item = &str> {
        self.ints.keys().map(String::as_str)
    }

    /// Names of all string leaves, sorted.
    pub fn str_names(&self) -> impl Iterator<Item = &str> {
        self.strs.keys().map(String::as_str)
    }

    fn entry(&self, name: &str) -> Result<&Entry, WeightError> {
        self.tensors
            .get(name)
            .ok_or_else(|| WeightError::NoSuchTensor {
                path: self.path.clone(),
                name: name.to_owned(),
            })
    }

    /// The bytes of the storage range the tensor's view touches.
    fn read_bytes(&self, e: &Entry) -> Result<Vec<u8>, WeightError> {
        let path = &self.path;
        if e.byte_len == 0 {
            return Ok(Vec::new());
        }
        let mut file = File::open(path).map_err(|err| io_err(path, err))?;
        let mut buf = Vec::new();
        match &e.loc {
            Loc::Raw { start, .. } => {
                file.seek(SeekFrom::Start(start + e.byte_start))
                    .map_err(|err| io_err(path, err))?;
                buf = vec![0u8; e.byte_len];
                file.read_exact(&mut buf).map_err(|err| io_err(path, err))?;
            }
            Loc::Deflated { entry, .. } => {
                let zip_err = |err: zip::result::ZipError| {
                    corrupt(path, format!("zip entry `{entry}`: {err}"))
                };
                let mut zip = ZipArchive::new(file).map_err(zip_err)?;
                let mut z = zip.by_name(entry).map_err(zip_err)?;
                let skipped = std::io::copy(
                    &mut Read::by_ref(&mut z).take(e.byte_start),
                    &mut std::io::sink(),
                );
                z.take(e.byte_len as u64)
                    .read_to_end(&mut buf)
                    .map_err(|err| io_err(path, err))?;
                if skipped.map_err(|err| io_err(path, err))? != e.byte_start
                    || buf.len() != e.byte_len
                {
                    return Err(corrupt(
                        path,
                        format!("zip entry `{entry}` is shorter than its header says"),
                    ));
                }
            }
        }
        Ok(buf)
    }

    /// The tensor's elements in row-major order, each decoded from its little-endian bytes.
    fn gather<T>(&self, name: &str, conv: impl Fn(&[u8]) -> T) -> Result<Vec<T>, WeightError> {
        let e = self.entry(name)?;
        let raw = self.read_bytes(e)?;
        let (es, shape, numel) = (e.meta.dtype.size(), &e.meta.shape, e.meta.numel());
        let mut out = Vec::with_capacity(numel); // bounded by the view check at open
        if numel == 0 {
            return Ok(out);
        }
        let mut expect = 1;
        let contiguous = shape.iter().zip(&e.stride).rev().all(|(&s, &st)| {
            let ok = s <= 1 || st == expect;
            expect *= s;
            ok
        });
        if contiguous {
            out.extend(raw.chunks_exact(es).take(numel).map(&conv));
        } else {
            let (mut idx, mut pos) = (vec![0usize; shape.len()], 0usize);
            for _ in 0..numel {
                let bytes = raw.get(pos * es..(pos + 1) * es);
                out.push(conv(bytes.ok_or_else(|| {
                    corrupt(&self.path, "tensor view out of range")
                })?));
                for d in (0..shape.len()).rev() {
                    idx[d] += 1;
                    pos += e.stride[d];
                    if idx[d] < shape[d] {
                        break;
                    }
                    pos -= e.stride[d] * shape[d];
                    idx[d] = 0;
                }
            }
        }
        if out.len() != numel {
            return Err(corrupt(
                &self.path,
                format!("tensor `{name}` has too few bytes"),
            ));
        }
        Ok(out)
    }

    /// An integer (or bool) tensor's values as i64, in row-major order.
    pub fn read_i64(&self, name: &str) -> Result<Vec<i64>, WeightError> {
        let dtype = self.entry(name)?.meta.dtype;
        let conv: fn(&[u8]) -> i64 = match dtype {
            StoredDType::I64 => {
                |b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
            }
            StoredDType::I32 => |b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]).into(),
            StoredDType::I16 => |b| i16::from_le_bytes([b[0], b[1]]).into(),
            StoredDType::I8 => |b| (b[0] as i8).into(),
            StoredDType::U8 | StoredDType::Bool => |b| b[0].into(),
            _ => {
                return Err(corrupt(
                    &self.path,
                    format!(
                        "tensor `{name}` has dtype {dtype:?}, which cannot be read as integers"
                    ),
                ));
            }
        };
        self.gather(name, conv)
    }
}

impl TensorReader for TorchFile {
    fn path(&self) -> &Path {
        &self.path
    }
    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
    fn meta(&self, name: &str) -> Option<&TensorMeta> {
        self.tensors.get(name).map(|e| &e.meta)
    }
    fn read_f32(&self, name: &str) -> Result<Vec<f32>, WeightError> {
        let dtype = self.entry(name)?.meta.dtype;
        let conv: fn(&[u8]) -> f32 = match dtype {
            StoredDType::F32 => |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            StoredDType::F16 => |b| half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
            StoredDType::BF16 => |b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            StoredDType::F64 => {
                |b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
            }
            _ => {
                return Err(WeightError::NotFloat {
                    path: self.path.clone(),
                    name: name.to_owned(),
                    dtype,
                });
            }
        };
        self.gather(name, conv)
    }
}

mod flatten;
mod layout;

#[cfg(test)]
mod tests;
