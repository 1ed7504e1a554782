//! Writing `.safetensors` files, and the atomic file replacement every writer here uses.
//!
//! Layout (github.com/huggingface/safetensors, README "Format"): an 8-byte little-endian header
//! length, a JSON header (`{"__metadata__": {str: str}, name: {"dtype", "shape",
//! "data_offsets": [begin, end]}}`) padded with spaces to a multiple of 8 bytes, then the
//! tensors' little-endian bytes back to back, in the order given.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{StoredDType, WeightError};

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

/// The dtype's name in a safetensors header.
pub fn dtype_name(dtype: StoredDType) -> &'static str {
    match dtype {
        StoredDType::F64 => "F64",
        StoredDType::F32 => "F32",
        StoredDType::F16 => "F16",
        StoredDType::BF16 => "BF16",
        StoredDType::I64 => "I64",
        StoredDType::I32 => "I32",
        StoredDType::I16 => "I16",
        StoredDType::I8 => "I8",
        StoredDType::U8 => "U8",
        StoredDType::Bool => "BOOL",
    }
}

/// The whole file as bytes. Fails (naming `path`, for messages only) when a tensor's byte length
/// is not its shape times its element size, or a name is empty, repeated or `__metadata__`.
pub fn safetensors_bytes(
    path: &Path,
    tensors: &[(&str, StoredDType, &[usize], &[u8])],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>, WeightError> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let meta = metadata
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        header.insert("__metadata__".into(), serde_json::Value::Object(meta));
    }
    let mut offset = 0usize;
    for &(name, dtype, shape, data) in tensors {
        if name.is_empty() || name == "__metadata__" || header.contains_key(name) {
            return Err(corrupt(
                path,
                format!("cannot write tensor name `{name}`: empty, reserved or repeated"),
            ));
        }
        let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if numel.and_then(|n| n.checked_mul(dtype.size())) != Some(data.len()) {
            return Err(corrupt(
                path,
                format!(
                    "tensor `{name}`: shape {shape:?} of {} does not match {} data bytes",
                    dtype_name(dtype),
                    data.len()
                ),
            ));
        }
        let end = offset + data.len();
        header.insert(
            name.to_owned(),
            serde_json::json!({
                "dtype": dtype_name(dtype),
                "shape": shape,
                "data_offsets": [offset, end],
            }),
        );
        offset = end;
    }
    let mut json = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| corrupt(path, format!("cannot encode the header: {e}")))?;
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len() + offset);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    for &(_, _, _, data) in tensors {
        out.extend_from_slice(data);
    }
    Ok(out)
}

/// Writes a `.safetensors` file atomically (see [`write_atomic`]). `tensors` are
/// `(name, dtype, shape, little-endian bytes)`; `metadata` becomes `__metadata__` (omitted when
/// empty).
pub fn write_safetensors(
    path: &Path,
    tensors: &[(&str, StoredDType, &[usize], &[u8])],
    metadata: &BTreeMap<String, String>,
    overwrite: bool,
) -> Result<(), WeightError> {
    let bytes = safetensors_bytes(path, tensors, metadata)?;
    write_atomic(path, &bytes, overwrite)
}

/// The error [`write_atomic`] returns when `path` exists and `overwrite` is false.
pub fn exists_error(path: &Path) -> WeightError {
    io(
        path,
        std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "already exists; refusing to overwrite it (allow overwriting, or choose another \
             file name)",
        ),
    )
}

/// A failed write of the temporary copy, reported against the file the user asked for (the
/// temporary name alone would puzzle), with what to do for the usual causes.
fn write_failed(path: &Path, tmp: &Path, e: std::io::Error) -> WeightError {
    use std::io::ErrorKind;
    let hint = match e.kind() {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => {
            ": free some disk space or write to another folder"
        }
        ErrorKind::ReadOnlyFilesystem | ErrorKind::PermissionDenied => {
            ": the folder is not writable; choose another folder or fix its permissions"
        }
        _ => "",
    };
    let tmp_name = tmp.file_name().unwrap_or_default().to_string_lossy();
    io(
        path,
        std::io::Error::new(
            e.kind(),
            format!(
                "{e} (while writing the temporary file {tmp_name}; any existing file at this \
                 path is unchanged){hint}"
            ),
        ),
    )
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Removes the temporary file unless disarmed.
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Writes `bytes` to `path` so that `path` is never seen half-written: the bytes go to a new
/// temporary file in the same folder (`.<name>.invert-tmp-<pid>-<n>`), which is flushed to disk
/// and then renamed over `path` (or, without `overwrite`, hard-linked to `path`, which fails if
/// it exists, so a file created meanwhile is never replaced); the folder is then synced. On any
/// failure the temporary file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8], overwrite: bool) -> Result<(), WeightError> {
    write_atomic_all(&[(path, bytes)], overwrite)
}

/// [`write_atomic`] for files that belong together (diffusers' two-file SDXL embedding): every
/// file is written and flushed to its temporary file before any is put in place, so a full disk
/// or a read-only folder leaves all of them untouched; then they are put in place in order.
/// Without `overwrite`, nothing is written when any of them exists, and should one appear in the
/// meantime, the ones this call already put in place are removed again. With `overwrite`, a
/// failure between two renames (within one folder: rare) leaves the earlier ones replaced.
pub fn write_atomic_all(files: &[(&Path, &[u8])], overwrite: bool) -> Result<(), WeightError> {
    if let Some((path, _)) = files
        .iter()
        .find(|(p, _)| !overwrite && p.symlink_metadata().is_ok())
    {
        return Err(exists_error(path));
    }
    let staged = files
        .iter()
        .map(|&(path, bytes)| stage(path, bytes))
        .collect::<Result<Vec<_>, _>>()?;
    let mut placed: Vec<PathBuf> = Vec::new();
    for s in staged {
        let path = s.path.clone();
        if let Err(e) = commit(s, overwrite) {
            if !overwrite {
                for p in &placed {
                    let _ = std::fs::remove_file(p);
                }
            }
            return Err(e);
        }
        placed.push(path);
    }
    Ok(())
}

/// A file's bytes in a flushed temporary file next to it, not yet in place.
struct Staged {
    path: PathBuf,
    dir: PathBuf,
    tmp: PathBuf,
    /// Removes the temporary file when the write is abandoned.
    guard: TempGuard,
}

fn stage(path: &Path, bytes: &[u8]) -> Result<Staged, WeightError> {
    let name = path
        .file_name()
        .ok_or_else(|| corrupt(path, "not a file name (ends in `..` or `/`)"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "the folder {} does not exist; create it first",
                    dir.display()
                ),
            ),
        ));
    }
    // A stale temporary file of the same name (from a crashed process) is skipped, not reused.
    let mut attempt = 0;
    let (tmp, mut f) = loop {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(
            ".{}.invert-tmp-{}-{n}",
            name.to_string_lossy(),
            std::process::id()
        ));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => {
                attempt += 1;
            }
            Err(e) => return Err(write_failed(path, &tmp, e)),
        }
    };
    let guard = TempGuard(Some(tmp.clone()));
    f.write_all(bytes)
        .map_err(|e| write_failed(path, &tmp, e))?;
    f.sync_all().map_err(|e| write_failed(path, &tmp, e))?;
    Ok(Staged {
        path: path.to_path_buf(),
        dir,
        tmp,
        guard,
    })
}

/// Puts a staged file in place (see [`write_atomic`]).
fn commit(s: Staged, overwrite: bool) -> Result<(), WeightError> {
    let Staged {
        path,
        dir,
        tmp,
        mut guard,
    } = s;
    if overwrite {
        std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
        guard.0 = None;
    } else {
        match std::fs::hard_link(&tmp, &path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(exists_error(&path));
            }
            // File systems without hard links: check, then rename (a tiny race remains).
            Err(_) => {
                if path.symlink_metadata().is_ok() {
                    return Err(exists_error(&path));
                }
                std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
            }
        }
        // The temporary name is removed by the guard (a no-op after a rename).
    }
    drop(guard);
    // Persist the directory entry; not every platform allows opening a folder, so best effort.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
