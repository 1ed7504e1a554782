//! A pickle interpreter that never executes anything.
//!
//! `torch.save` writes a pickle: a program for a stack machine whose GLOBAL and REDUCE opcodes
//! would import and call arbitrary Python. This module runs the same opcodes over plain data.
//! Every global is checked against a short allow-list (tensor rebuild functions, storage types,
//! `OrderedDict`, `ParameterDict`, ...) and anything else is refused as soon as its GLOBAL opcode
//! is read. The allowed globals are never called: their effect on the value tree is modelled
//! here. Values live in an arena ([`Pickle::value`]), so memo references share a node instead of
//! copying it, and no allocation is sized by a length that has not been read from the input.

use std::collections::BTreeMap;

use super::StoredDType;

/// Most values (arena nodes, and stack entries) one pickle may create.
pub const MAX_NODES: usize = 1 << 22;
/// Most dimensions a tensor may have.
pub const MAX_DIMS: usize = 64;
/// Most work one pickle may cause, counted in node references pushed or copied and bytes
/// copied. Together with [`MAX_NODES`] this bounds time and memory independently of the input
/// size, including for small pickles that call allow-listed globals again and again on one
/// large memoized value (torch's pickles need a few references per tensor).
pub const MAX_WORK: usize = 1 << 25;
/// Longest storage key (torch's are decimal numbers).
pub const MAX_KEY: usize = 256;
/// A view may repeat storage elements (stride 0, as `expand` makes) up to this many elements.
pub const MAX_EXPANDED: usize = 1 << 24;
const MAX_LINE: u64 = 1 << 20;

/// Index of a value in [`Pickle`]'s arena.
pub type NodeId = usize;

#[derive(Debug)]
pub enum PickleError {
    /// A global outside the allow-list, as `module.name`. Nothing after it was read.
    UnsafeGlobal(String),
    /// Not a pickle this reader accepts: truncated, malformed, or a feature torch never writes.
    Invalid(String),
    /// The underlying reader failed.
    Io(std::io::Error),
}

impl std::fmt::Display for PickleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PickleError::UnsafeGlobal(g) => write!(f, "pickle references disallowed global `{g}`"),
            PickleError::Invalid(r) => write!(f, "invalid pickle: {r}"),
            PickleError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for PickleError {}

type Result<T> = std::result::Result<T, PickleError>;

fn invalid<T>(reason: impl Into<String>) -> Result<T> {
    Err(PickleError::Invalid(reason.into()))
}

/// An allow-listed Python global.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildTensor,
    RebuildParameter,
    RebuildParameterWithState,
    /// `torch._tensor._rebuild_from_type_v2`: a tensor with Python attributes or of a subclass.
    RebuildFromType,
    /// `torch.FloatStorage` etc.: only meaningful inside a storage persistent id.
    Storage(StoredDType),
    ParameterDict,
    Reconstructor,
    Object,
    Set,
    Encode,
    /// Data-only classes seen in real checkpoints, kept as opaque objects.
    Inert(&'static str),
}

use {Global as G, StoredDType as D};
/// The globals a pickle may name. Nothing here is ever imported or called.
#[rustfmt::skip]
const ALLOWED: &[(&str, &str, Global)] = &[
    // Tensors, parameters and their storages.
    ("torch._utils", "_rebuild_tensor_v2", G::RebuildTensorV2),
    ("torch._utils", "_rebuild_tensor", G::RebuildTensor),
    ("torch._utils", "_rebuild_parameter", G::RebuildParameter),
    ("torch._utils", "_rebuild_parameter_with_state", G::RebuildParameterWithState),
    ("torch._tensor", "_rebuild_from_type_v2", G::RebuildFromType),
    ("torch", "Tensor", G::Inert("torch.Tensor")),
    ("torch.nn.parameter", "Parameter", G::Inert("torch.nn.Parameter")),
    ("torch", "DoubleStorage", G::Storage(D::F64)),
    ("torch", "FloatStorage", G::Storage(D::F32)),
    ("torch", "HalfStorage", G::Storage(D::F16)),
    ("torch", "BFloat16Storage", G::Storage(D::BF16)),
    ("torch", "LongStorage", G::Storage(D::I64)),
    ("torch", "IntStorage", G::Storage(D::I32)),
    ("torch", "ShortStorage", G::Storage(D::I16)),
    ("torch", "CharStorage", G::Storage(D::I8)),
    ("torch", "ByteStorage", G::Storage(D::U8)),
    ("torch", "BoolStorage", G::Storage(D::Bool)),
    ("torch", "UntypedStorage", G::Storage(D::U8)),
    ("torch.storage", "UntypedStorage", G::Storage(D::U8)),
    // Containers, and what pickle protocol 2 uses to rebuild objects, sets and bytes.
    ("collections", "OrderedDict", G::OrderedDict),
    ("torch.nn.modules.container", "ParameterDict", G::ParameterDict),
    ("copyreg", "_reconstructor", G::Reconstructor),
    ("copy_reg", "_reconstructor", G::Reconstructor),
    ("builtins", "object", G::Object),
    ("__builtin__", "object", G::Object),
    ("builtins", "set", G::Set),
    ("__builtin__", "set", G::Set),
    ("builtins", "frozenset", G::Set),
    ("__builtin__", "frozenset", G::Set),
    ("_codecs", "encode", G::Encode),
    // Inert data in real checkpoints (Lightning .ckpt files): kept as opaque objects.
    ("torch", "device", G::Inert("torch.device")),
    ("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint", G::Inert("ModelCheckpoint")),
    ("numpy.core.multiarray", "scalar", G::Inert("numpy scalar")),
    ("numpy._core.multiarray", "scalar", G::Inert("numpy scalar")),
    ("numpy", "dtype", G::Inert("numpy.dtype")),
];

/// Looks a global up in the allow-list.
pub fn resolve_global(module: &str, name: &str) -> Result<Global> {
    ALLOWED
        .iter()
        .find(|(m, n, _)| *m == module && *n == name)
        .map(|(_, _, g)| *g)
        .ok_or_else(|| PickleError::UnsafeGlobal(format!("{module}.{name}")))
}

/// A storage as named by a torch persistent id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageRef {
    pub key: String,
    pub dtype: StoredDType,
    /// Elements of the whole stored storage.
    pub numel: usize,
    /// Legacy-format storage views: (element offset, elements) inside the stored storage.
    pub view: Option<(usize, usize)>,
}

/// A tensor view into a stored storage, validated against the storage's declared size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRef {
    pub key: String,
    pub dtype: StoredDType,
    /// First element, counted from the start of the stored storage.
    pub offset: usize,
    pub shape: Vec<usize>,
    /// Strides in elements; 0 for dimensions of size <= 1.
    pub stride: Vec<usize>,
    /// Storage elements from `offset` that the view touches (0 when it is empty).
    pub len: usize,
}

impl TensorRef {
    fn new(
        st: &StorageRef,
        offset: usize,
        shape: Vec<usize>,
        mut stride: Vec<usize>,
    ) -> Result<Self> {
        let overflow = || PickleError::Invalid("tensor shape/stride/offset overflows".into());
        let (base, avail) = st.view.unwrap_or((0, st.numel));
        let (mut numel, mut last) = (1usize, 0usize);
        for (&size, st) in shape.iter().zip(stride.iter_mut()) {
            numel = numel.checked_mul(size).ok_or_else(overflow)?;
            if size <= 1 {
                *st = 0;
            } else {
                last = (size - 1)
                    .checked_mul(*st)
                    .and_then(|d| last.checked_add(d))
                    .ok_or_else(overflow)?;
            }
        }
        let len = if numel == 0 {
            0
        } else {
            last.checked_add(1).ok_or_else(overflow)?
        };
        let end = offset.checked_add(len).ok_or_else(overflow)?;
        if numel > 0 && end > avail {
            return invalid(format!(
                "tensor of shape {shape:?} (offset {offset}, strides {stride:?}) needs {end} \
                 elements of storage `{}`, which has {avail}",
                st.key
            ));
        }
        if numel > len && numel > MAX_EXPANDED {
            return invalid(format!(
                "tensor of shape {shape:?} repeats {len} storage elements {numel} times"
            ));
        }
        let offset = base.checked_add(offset).ok_or_else(overflow)?;
        Ok(TensorRef {
            key: st.key.clone(),
            dtype: st.dtype,
            offset,
            shape,
            stride,
            len,
        })
    }
}

/// One value of the tree. Containers hold ids of other nodes.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer too wide for i64: little-endian two's complement bytes.
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    /// Lists, sets and frozensets.
    List(Vec<NodeId>),
    Tuple(Vec<NodeId>),
    /// Dicts and OrderedDicts, in insertion order; a repeated key's last entry wins.
    Dict(Vec<(NodeId, NodeId)>),
    Global(Global),
    Storage(Box<StorageRef>),
    Tensor(Box<TensorRef>),
    /// An instance of an allowed class; `state` is what BUILD gave it.
    Object {
        class: Global,
        state: Option<NodeId>,
    },
}

impl Value {
    /// The value's Python type, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
            Value::Object { .. } => "object",
        }
    }
}

/// The result of interpreting one pickle.
#[derive(Debug)]
pub struct Pickle {
    nodes: Vec<Value>,
    /// The value STOP returned.
    pub root: NodeId,
    /// Every storage a persistent id named: key -> (dtype, elements).
    pub storages: BTreeMap<String, (StoredDType, usize)>,
}

impl Pickle {
    pub fn value(&self, id: NodeId) -> &Value {
        &self.nodes[id]
    }
    pub fn len(&self) -> usize {
        self.nodes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
    /// The value under string key `key` of the dict `dict` (last occurrence).
    pub fn dict_get(&self, dict: NodeId, key: &str) -> Option<NodeId> {
        let Value::Dict(pairs) = self.value(dict) else {
            return None;
        };
        let is_key = |k: NodeId| matches!(self.value(k), Value::Str(s) if s == key);
        pairs
            .iter()
            .rev()
            .find(|&&(k, _)| is_key(k))
            .map(|&(_, v)| v)
    }
}

mod input;
mod interp;
pub use interp::parse;

#[cfg(test)]
pub(crate) mod tests;
