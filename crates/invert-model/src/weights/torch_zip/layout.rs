//! Where the object pickle and the storages are in each of torch's two file layouts.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use zip::{CompressionMethod, ZipArchive};

use super::super::WeightError;
use super::super::pickle::{self, Pickle, Value};
use super::{LEGACY_MAGIC, LEGACY_PROTOCOL, Loc, corrupt, io_err, pickle_err};

/// Deflate expands at most ~1032x: an entry claiming more is lying about its size.
fn max_inflated(compressed: u64) -> u64 {
    compressed.saturating_mul(1100).saturating_add(1024)
}

pub(super) fn read_zip(
    path: &Path,
    file: File,
    file_len: u64,
) -> Result<(Pickle, BTreeMap<String, Loc>), WeightError> {
    // A zip's directory is at its end, so a cut-off download loses it first: say so.
    let zip_err = |e: zip::result::ZipError| {
        corrupt(
            path,
            format!(
                "not a valid zip archive ({e}); the file is probably truncated (an unfinished \
                 download or copy) or damaged: get it again"
            ),
        )
    };
    let mut zip = ZipArchive::new(file).map_err(zip_err)?;
    let pkl = zip
        .file_names()
        .filter(|n| *n == "data.pkl" || (n.ends_with("/data.pkl") && n.matches('/').count() == 1))
        .min_by_key(|n| n.len())
        .map(str::to_owned)
        .ok_or_else(|| {
            corrupt(
                path,
                "zip archive without a data.pkl: not a torch checkpoint",
            )
        })?;
    let prefix = &pkl[..pkl.len() - "data.pkl".len()];
    if let Ok(f) = zip.by_name(&format!("{prefix}byteorder")) {
        let mut order = Vec::new();
        f.take(16)
            .read_to_end(&mut order)
            .map_err(|e| io_err(path, e))?;
        if order.trim_ascii() != b"little" {
            return Err(corrupt(
                path,
                "the checkpoint was saved big-endian, which is not supported",
            ));
        }
    }
    let pickle = {
        let entry = zip.by_name(&pkl).map_err(zip_err)?;
        let most = max_inflated(entry.compressed_size());
        pickle::parse(&mut BufReader::new(entry.take(most))).map_err(|e| pickle_err(path, e))?
    };
    let mut locs = BTreeMap::new();
    for key in pickle.storages.keys() {
        let name = format!("{prefix}data/{key}");
        let missing = || {
            corrupt(
                path,
                format!("storage `{name}` is missing from the archive"),
            )
        };
        let f = zip
            .by_index_raw(zip.index_for_name(&name).ok_or_else(missing)?)
            .map_err(zip_err)?;
        let (start, len, packed) = (f.data_start(), f.size(), f.compressed_size());
        let loc = match f.compression() {
            _ if f.encrypted() => {
                return Err(corrupt(path, format!("zip entry `{name}` is encrypted")));
            }
            CompressionMethod::Stored
                if packed == len && start.checked_add(len).is_some_and(|e| e <= file_len) =>
            {
                Loc::Raw { start, len }
            }
            CompressionMethod::Stored => {
                return Err(corrupt(
                    path,
                    format!("zip entry `{name}` runs past the end of the file"),
                ));
            }
            CompressionMethod::Deflated if len <= max_inflated(packed) => {
                Loc::Deflated { entry: name, len }
            }
            m => {
                return Err(corrupt(
                    path,
                    format!("zip entry `{name}`: unsupported or implausible {m:?} data"),
                ));
            }
        };
        locs.insert(key.clone(), loc);
    }
    Ok((pickle, locs))
}

pub(super) fn read_legacy(
    path: &Path,
    file: File,
    file_len: u64,
) -> Result<(Pickle, BTreeMap<String, Loc>), WeightError> {
    let mut r = BufReader::new(file);
    let mut next = || pickle::parse(&mut r).map_err(|e| pickle_err(path, e));
    let magic = next()?;
    if !matches!(magic.value(magic.root), Value::BigInt(b) if b[..] == LEGACY_MAGIC) {
        return Err(corrupt(
            path,
            "not a torch checkpoint: the first pickle is not torch's magic number",
        ));
    }
    let version = next()?;
    if !matches!(version.value(version.root), Value::Int(LEGACY_PROTOCOL)) {
        return Err(corrupt(
            path,
            match version.value(version.root) {
                Value::Int(v) => format!("unsupported legacy torch protocol {v}"),
                v => format!("legacy torch protocol is a {}, not an int", v.kind()),
            },
        ));
    }
    let sys = next()?;
    if sys
        .dict_get(sys.root, "little_endian")
        .is_some_and(|v| sys.value(v) == &Value::Bool(false))
    {
        return Err(corrupt(
            path,
            "the checkpoint was saved big-endian, which is not supported",
        ));
    }
    let objects = next()?;
    let keys = next()?;
    let Value::List(key_ids) = keys.value(keys.root) else {
        return Err(corrupt(path, "the storage key list is not a list"));
    };
    let mut pos = r.stream_position().map_err(|e| io_err(path, e))?;
    let mut file = r.into_inner();
    let mut locs = BTreeMap::new();
    for &k in key_ids {
        let Value::Str(key) = keys.value(k) else {
            return Err(corrupt(path, "a storage key is not a string"));
        };
        let &(dtype, _) = objects.storages.get(key).ok_or_else(|| {
            corrupt(
                path,
                format!("storage `{key}` is listed but no tensor uses it"),
            )
        })?;
        let mut count = [0u8; 8];
        file.seek(SeekFrom::Start(pos))
            .map_err(|e| io_err(path, e))?;
        file.read_exact(&mut count).map_err(|e| io_err(path, e))?;
        let len = u64::from_le_bytes(count).checked_mul(dtype.size() as u64);
        let end = len
            .and_then(|l| l.checked_add(pos + 8))
            .filter(|&end| end <= file_len);
        let (Some(len), Some(end)) = (len, end) else {
            return Err(corrupt(
                path,
                format!("storage `{key}` runs past the end of the file (truncated?)"),
            ));
        };
        locs.insert(
            key.clone(),
            Loc::Raw {
                start: pos + 8,
                len,
            },
        );
        pos = end;
    }
    Ok((objects, locs))
}
