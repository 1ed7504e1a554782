//! Flattening the object tree into dotted names.

use std::collections::BTreeMap;

use super::super::pickle::{Global, NodeId, Pickle, TensorRef, Value};

/// Deepest nesting of containers the flattening follows.
const MAX_DEPTH: usize = 64;
/// Longest dotted name.
const MAX_NAME: usize = 4096;

/// The leaves of the object tree by dotted name. Dict keys (str or int) and list indices are
/// joined with `.`; a `ParameterDict` contributes the entries of its `_parameters`. Other values
/// (floats, bools, opaque objects) are skipped.
pub(super) struct Flat<'p> {
    pickle: &'p Pickle,
    /// Work left, in visits plus container entries: shared references can make a small pickle
    /// an exponentially large tree.
    visits: usize,
    /// Bytes of names and strings left to allocate, for the same reason.
    bytes: usize,
    pub tensors: BTreeMap<String, &'p TensorRef>,
    pub ints: BTreeMap<String, i64>,
    pub strs: BTreeMap<String, String>,
}

pub(super) fn flatten(pickle: &Pickle) -> Result<Flat<'_>, String> {
    let mut flat = Flat {
        pickle,
        visits: pickle.len().saturating_mul(4).saturating_add(1024),
        bytes: pickle.len().saturating_mul(64).saturating_add(1 << 20),
        tensors: BTreeMap::new(),
        ints: BTreeMap::new(),
        strs: BTreeMap::new(),
    };
    flat.walk(pickle.root, String::new(), 0)?;
    Ok(flat)
}

const TOO_LARGE: &str = "object graph too large (too many shared references)";

impl Flat<'_> {
    fn charge(&mut self, visits: usize, bytes: usize) -> Result<(), String> {
        self.visits = self.visits.checked_sub(visits).ok_or(TOO_LARGE)?;
        self.bytes = self.bytes.checked_sub(bytes).ok_or(TOO_LARGE)?;
        Ok(())
    }

    fn walk(&mut self, id: NodeId, name: String, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("objects nested deeper than {MAX_DEPTH} levels"));
        }
        if name.len() > MAX_NAME {
            return Err(format!("a key path is longer than {MAX_NAME} bytes"));
        }
        self.charge(1, name.len())?;
        let join = |key: &str| {
            if name.is_empty() {
                key.to_owned()
            } else {
                format!("{name}.{key}")
            }
        };
        let p = self.pickle;
        match p.value(id) {
            Value::Tensor(t) => drop(self.tensors.insert(name, t)),
            Value::Int(i) => drop(self.ints.insert(name, *i)),
            Value::Str(s) => {
                self.charge(0, s.len())?;
                self.strs.insert(name, s.clone());
            }
            Value::Dict(pairs) => {
                self.charge(pairs.len(), 0)?;
                for &(k, v) in pairs {
                    match p.value(k) {
                        Value::Str(s) => self.walk(v, join(s), depth + 1)?,
                        Value::Int(i) => self.walk(v, join(&i.to_string()), depth + 1)?,
                        _ => {}
                    }
                }
            }
            Value::List(items) | Value::Tuple(items) => {
                self.charge(items.len(), 0)?;
                for (i, &v) in items.iter().enumerate() {
                    self.walk(v, join(&i.to_string()), depth + 1)?;
                }
            }
            // A ParameterDict is a module: its entries are in the `_parameters` of its state.
            Value::Object {
                class: Global::ParameterDict,
                state: Some(state),
            } => {
                if let Value::Dict(pairs) = p.value(*state) {
                    self.charge(pairs.len(), 0)?;
                }
                if let Some(params) = p.dict_get(*state, "_parameters") {
                    self.walk(params, name, depth + 1)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}
