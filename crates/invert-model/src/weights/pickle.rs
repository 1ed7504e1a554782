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

use StoredDType as D;
const ALLOWED: &[(&str, &str, Global)] = &[
    ("collections", "OrderedDict", Global::OrderedDict),
    (
        "torch._utils",
        "_rebuild_tensor_v2",
        Global::RebuildTensorV2,
    ),
    ("torch._utils", "_rebuild_tensor", Global::RebuildTensor),
    (
        "torch._utils",
        "_rebuild_parameter",
        Global::RebuildParameter,
    ),
    (
        "torch._utils",
        "_rebuild_parameter_with_state",
        Global::RebuildParameterWithState,
    ),
    ("torch", "DoubleStorage", Global::Storage(D::F64)),
    ("torch", "FloatStorage", Global::Storage(D::F32)),
    ("torch", "HalfStorage", Global::Storage(D::F16)),
    ("torch", "BFloat16Storage", Global::Storage(D::BF16)),
    ("torch", "LongStorage", Global::Storage(D::I64)),
    ("torch", "IntStorage", Global::Storage(D::I32)),
    ("torch", "ShortStorage", Global::Storage(D::I16)),
    ("torch", "CharStorage", Global::Storage(D::I8)),
    ("torch", "ByteStorage", Global::Storage(D::U8)),
    ("torch", "BoolStorage", Global::Storage(D::Bool)),
    ("torch", "UntypedStorage", Global::Storage(D::U8)),
    ("torch.storage", "UntypedStorage", Global::Storage(D::U8)),
    (
        "torch.nn.modules.container",
        "ParameterDict",
        Global::ParameterDict,
    ),
    ("copyreg", "_reconstructor", Global::Reconstructor),
    ("copy_reg", "_reconstructor", Global::Reconstructor),
    ("builtins", "object", Global::Object),
    ("__builtin__", "object", Global::Object),
    ("builtins", "set", Global::Set),
    ("__builtin__", "set", Global::Set),
    ("builtins", "frozenset", Global::Set),
    ("__builtin__", "frozenset", Global::Set),
    ("_codecs", "encode", Global::Encode),
    ("torch", "device", Global::Inert("torch.device")),
    (
        "pytorch_lightning.callbacks.model_checkpoint",
        "ModelCheckpoint",
        Global::Inert("ModelCheckpoint"),
    ),
    (
        "numpy.core.multiarray",
        "scalar",
        Global::Inert("numpy scalar"),
    ),
    (
        "numpy._core.multiarray",
        "scalar",
        Global::Inert("numpy scalar"),
    ),
    ("numpy", "dtype", Global::Inert("numpy.dtype")),
    ("torch._tensor", "_rebuild_from_type_v2", Global::RebuildFromType),
    ("torch", "Tensor", Global::Inert("torch.Tensor")),
    ("torch.nn.parameter", "Parameter", Global::Inert("torch.nn.Parameter")),
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
