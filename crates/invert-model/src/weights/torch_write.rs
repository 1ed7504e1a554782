//! Writing torch zip checkpoints (`torch.save`'s format since torch 1.6) without torch.
//!
//! The archive holds `archive/data.pkl` (the object pickle, protocol 2, with the opcodes
//! `torch.save` emits), `archive/byteorder` (`little`), one `archive/data/<key>` per storage
//! (raw little-endian bytes) and `archive/version` (`3`). Entries are STORED (uncompressed) and,
//! like torch's writer, each entry's data starts at a multiple of 64 bytes: the local header
//! carries an extra field `FB` padded with `Z`s. The entry names are the ones A1111's checkpoint
//! scanner (`modules/safe.py`) accepts. Tensors are pickled as torch does:
//! `torch._utils._rebuild_tensor_v2(storage, offset, shape, stride, requires_grad,
//! collections.OrderedDict())`, the storage being the persistent id
//! `('storage', torch.FloatStorage, '<key>', 'cpu', numel)`.

use std::collections::HashMap;
use std::path::Path;

use super::safetensors_write::write_atomic;
use super::{StoredDType, WeightError};

/// A tensor to store: contiguous row-major little-endian bytes.
#[derive(Debug, Clone)]
pub struct TensorData<'a> {
    pub dtype: StoredDType,
    pub shape: Vec<usize>,
    pub data: &'a [u8],
}

/// The values the writer can pickle: what embedding files and state dicts are made of.
#[derive(Debug, Clone)]
pub enum PickleValue<'a> {
    None,
    Bool(bool),
    Int(i64),
    Str(String),
    /// A plain `dict` with string keys, in this order.
    Dict(Vec<(String, PickleValue<'a>)>),
    Tensor(TensorData<'a>),
}

/// The `torch.<Name>Storage` global for a dtype, as `module name`.
fn storage_global(dtype: StoredDType) -> &'static str {
    match dtype {
        StoredDType::F64 => "torch DoubleStorage",
        StoredDType::F32 => "torch FloatStorage",
        StoredDType::F16 => "torch HalfStorage",
        StoredDType::BF16 => "torch BFloat16Storage",
        StoredDType::I64 => "torch LongStorage",
        StoredDType::I32 => "torch IntStorage",
        StoredDType::I16 => "torch ShortStorage",
        StoredDType::I8 => "torch CharStorage",
        StoredDType::U8 => "torch ByteStorage",
        StoredDType::Bool => "torch BoolStorage",
    }
}

// Pickle opcodes (Lib/pickle.py).
const PROTO: u8 = 0x80;
const STOP: u8 = b'.';
const MARK: u8 = b'(';
const EMPTY_DICT: u8 = b'}';
const SETITEM: u8 = b's';
const SETITEMS: u8 = b'u';
const EMPTY_TUPLE: u8 = b')';
const TUPLE: u8 = b't';
const TUPLE1: u8 = 0x85;
const TUPLE2: u8 = 0x86;
const TUPLE3: u8 = 0x87;
const NONE: u8 = b'N';
const NEWTRUE: u8 = 0x88;
const NEWFALSE: u8 = 0x89;
const BININT: u8 = b'J';
const BININT1: u8 = b'K';
const BININT2: u8 = b'M';
const LONG1: u8 = 0x8a;
const BINUNICODE: u8 = b'X';
const GLOBAL: u8 = b'c';
const REDUCE: u8 = b'R';
const BINPERSID: u8 = b'Q';
const BINPUT: u8 = b'q';
const LONG_BINPUT: u8 = b'r';
const BINGET: u8 = b'h';
const LONG_BINGET: u8 = b'j';

/// A protocol-2 pickler for [`PickleValue`]s, memoizing like Python's (strings and globals are
/// written once and fetched again with BINGET).
struct Pickler<'v, 'a> {
    out: Vec<u8>,
    memo_len: u32,
    strings: HashMap<String, u32>,
    globals: HashMap<&'static str, u32>,
    storages: Vec<&'v TensorData<'a>>,
}

impl<'v, 'a> Pickler<'v, 'a> {
    fn put(&mut self) -> u32 {
        let id = self.memo_len;
        match u8::try_from(id) {
            Ok(b) => self.out.extend([BINPUT, b]),
            Err(_) => {
                self.out.push(LONG_BINPUT);
                self.out.extend(id.to_le_bytes());
            }
        }
        self.memo_len += 1;
        id
    }

    fn get(&mut self, id: u32) {
        match u8::try_from(id) {
            Ok(b) => self.out.extend([BINGET, b]),
            Err(_) => {
                self.out.push(LONG_BINGET);
                self.out.extend(id.to_le_bytes());
            }
        }
    }

    fn int(&mut self, v: i64) {
        if let Ok(b) = u8::try_from(v) {
            self.out.extend([BININT1, b]);
        } else if let Ok(w) = u16::try_from(v) {
            self.out.push(BININT2);
            self.out.extend(w.to_le_bytes());
        } else if let Ok(d) = i32::try_from(v) {
            self.out.push(BININT);
            self.out.extend(d.to_le_bytes());
        } else {
            // Python's encode_long: minimal two's complement, little-endian.
            let bytes = v.to_le_bytes();
            let mut n = 8;
            while n > 1 {
                let (last, prev) = (bytes[n - 1], bytes[n - 2]);
                let redundant =
                    (last == 0 && prev & 0x80 == 0) || (last == 0xff && prev & 0x80 != 0);
                if !redundant {
                    break;
                }
                n -= 1;
            }
            self.out.extend([LONG1, n as u8]);
            self.out.extend(&bytes[..n]);
        }
    }

    fn str(&mut self, s: &str) {
        if let Some(&id) = self.strings.get(s) {
            return self.get(id);
        }
        self.out.push(BINUNICODE);
        self.out.extend((s.len() as u32).to_le_bytes());
        self.out.extend(s.as_bytes());
        let id = self.put();
        self.strings.insert(s.to_owned(), id);
    }

    /// `GLOBAL module\nname\n`, memoized by its full text.
    fn global(&mut self, full: &'static str) {
        if let Some(&id) = self.globals.get(full) {
            return self.get(id);
        }
        let (module, name) = full.rsplit_once(' ').expect("`module name`");
        self.out.push(GLOBAL);
        self.out.extend(module.as_bytes());
        self.out.push(b'\n');
        self.out.extend(name.as_bytes());
        self.out.push(b'\n');
        let id = self.put();
        self.globals.insert(full, id);
    }

    /// A tuple of small ints, as pickle writes one (TUPLE1..3, else MARK ... TUPLE).
    fn int_tuple(&mut self, items: &[usize]) {
        if items.is_empty() {
            return self.out.push(EMPTY_TUPLE);
        }
        if items.len() > 3 {
            self.out.push(MARK);
        }
        for &i in items {
            self.int(i as i64);
        }
        self.out.push(match items.len() {
            1 => TUPLE1,
            2 => TUPLE2,
            3 => TUPLE3,
            _ => TUPLE,
        });
        self.put();
    }

    fn value(&mut self, v: &'v PickleValue<'a>) {
        match v {
            PickleValue::None => self.out.push(NONE),
            PickleValue::Bool(b) => self.out.push(if *b { NEWTRUE } else { NEWFALSE }),
            PickleValue::Int(i) => self.int(*i),
            PickleValue::Str(s) => self.str(s),
            PickleValue::Dict(items) => {
                self.out.push(EMPTY_DICT);
                self.put();
                if items.len() > 1 {
                    self.out.push(MARK);
                }
                for (k, v) in items {
                    self.str(k);
                    self.value(v);
                }
                match items.len() {
                    0 => {}
                    1 => self.out.push(SETITEM),
                    _ => self.out.push(SETITEMS),
                }
            }
            PickleValue::Tensor(t) => self.tensor(t),
        }
    }

    fn tensor(&mut self, t: &'v TensorData<'a>) {
        let key = self.storages.len().to_string();
        self.storages.push(t);
        let numel: usize = t.shape.iter().product();
        self.global("torch._utils _rebuild_tensor_v2");
        self.out.push(MARK);
        // The persistent id names the storage; its bytes go to `data/<key>`.
        self.out.push(MARK);
        self.str("storage");
        self.global(storage_global(t.dtype));
        self.str(&key);
        self.str("cpu");
        self.int(numel as i64);
        self.out.push(TUPLE);
        self.put();
        self.out.push(BINPERSID);
        self.int(0); // storage offset
        self.int_tuple(&t.shape);
        let mut stride = vec![1usize; t.shape.len()];
        for d in (0..t.shape.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * t.shape[d + 1];
        }
        self.int_tuple(&stride);
        self.out.push(NEWFALSE); // requires_grad
        self.global("collections OrderedDict"); // backward hooks
        self.out.push(EMPTY_TUPLE);
        self.out.push(REDUCE);
        self.put();
        self.out.push(TUPLE);
        self.put();
        self.out.push(REDUCE);
        self.put();
    }
}

/// The object pickle of `root` and the tensors whose bytes go to `data/0`, `data/1`, ...
fn pickle<'v, 'a>(root: &'v PickleValue<'a>) -> (Vec<u8>, Vec<&'v TensorData<'a>>) {
    let mut p = Pickler {
        out: vec![PROTO, 2],
        memo_len: 0,
        strings: HashMap::new(),
        globals: HashMap::new(),
        storages: Vec::new(),
    };
    p.value(root);
    p.out.push(STOP);
    (p.out, p.storages)
}

/// CRC-32 (IEEE 802.3, as zip and PNG use).
pub fn crc32(bytes: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    !bytes.iter().fold(!0u32, |c, &b| {
        table[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8)
    })
}

/// Where torch aligns record data in its archives.
const ALIGN: usize = 64;

/// A zip archive of STORED entries whose data start at multiples of [`ALIGN`] (no zip64: every
/// entry and the whole archive must stay under 4 GiB).
fn stored_zip(entries: &[(String, &[u8])]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    // 1980-01-01 00:00, the earliest DOS date.
    let (time, date) = (0u16, 0x21u16);
    for (name, data) in entries {
        let offset = u32::try_from(out.len()).map_err(|_| "archive over 4 GiB")?;
        let size = u32::try_from(data.len()).map_err(|_| format!("entry `{name}` over 4 GiB"))?;
        let crc = crc32(data);
        // Extra field `FB` + length + `Z` padding, so that the data start is aligned.
        let start = out.len() + 30 + name.len() + 4;
        let pad = (ALIGN - start % ALIGN) % ALIGN;
        let mut extra = b"FB".to_vec();
        extra.extend((pad as u16).to_le_bytes());
        extra.resize(4 + pad, b'Z');
        let common = |v: &mut Vec<u8>| {
            v.extend(20u16.to_le_bytes()); // version needed: 2.0
            v.extend(0u16.to_le_bytes()); // flags
            v.extend(0u16.to_le_bytes()); // method: stored
            v.extend(time.to_le_bytes());
            v.extend(date.to_le_bytes());
            v.extend(crc.to_le_bytes());
            v.extend(size.to_le_bytes()); // compressed
            v.extend(size.to_le_bytes()); // uncompressed
            v.extend((name.len() as u16).to_le_bytes());
        };
        out.extend(0x0403_4b50u32.to_le_bytes());
        common(&mut out);
        out.extend((extra.len() as u16).to_le_bytes());
        out.extend(name.as_bytes());
        out.extend(&extra);
        debug_assert_eq!(out.len() % ALIGN, 0);
        out.extend(*data);

        central.extend(0x0201_4b50u32.to_le_bytes());
        central.extend(20u16.to_le_bytes()); // version made by
        common(&mut central);
        central.extend(0u16.to_le_bytes()); // extra length
        central.extend(0u16.to_le_bytes()); // comment length
        central.extend(0u16.to_le_bytes()); // disk number
        central.extend(0u16.to_le_bytes()); // internal attributes
        central.extend(0u32.to_le_bytes()); // external attributes
        central.extend(offset.to_le_bytes());
        central.extend(name.as_bytes());
    }
    let cd_offset = u32::try_from(out.len()).map_err(|_| "archive over 4 GiB")?;
    let n = u16::try_from(entries.len()).map_err(|_| "too many entries")?;
    out.extend(&central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]); // disk numbers
    out.extend(n.to_le_bytes());
    out.extend(n.to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(cd_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes()); // comment length
    Ok(out)
}

/// The bytes of a torch zip checkpoint holding `root`, with entries under `archive/`.
/// Fails (naming `path`, for messages only) when a tensor's bytes do not match its shape.
pub fn torch_zip_bytes(path: &Path, root: &PickleValue) -> Result<Vec<u8>, WeightError> {
    let bad = |reason: String| WeightError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let (pkl, storages) = pickle(root);
    let mut entries: Vec<(String, &[u8])> = vec![
        ("archive/data.pkl".into(), &pkl),
        ("archive/byteorder".into(), b"little"),
    ];
    for (key, t) in storages.iter().enumerate() {
        let numel = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if numel.and_then(|n| n.checked_mul(t.dtype.size())) != Some(t.data.len()) {
            return Err(bad(format!(
                "cannot write a tensor of shape {:?} and dtype {:?} from {} bytes",
                t.shape,
                t.dtype,
                t.data.len()
            )));
        }
        entries.push((format!("archive/data/{key}"), t.data));
    }
    entries.push(("archive/version".into(), b"3\n"));
    stored_zip(&entries).map_err(bad)
}

/// Writes `root` as a torch zip checkpoint that `torch.load` (also with `weights_only=True`)
/// reads, atomically (see [`write_atomic`]).
pub fn write_torch_zip(
    path: &Path,
    root: &PickleValue,
    overwrite: bool,
) -> Result<(), WeightError> {
    let bytes = torch_zip_bytes(path, root)?;
    write_atomic(path, &bytes, overwrite)
}
