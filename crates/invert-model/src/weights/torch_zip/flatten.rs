//! Flattening the object tree into dotted names.

use std::collections::BTreeMap;

use super::super::pickle::{Global, NodeId, Pickle, TensorRef, Value};

/// Deepest nesting of containers the flattening follows.
const MAX_DEPTH: usize = 64;
/// Longest dotted name.
const MAX_NAME: usize = 4096;

/// Flattening of the object tree into dotted names.
pub(super) struct Flat<'p> {
    pub pickle: &'p Pickle,
    /// Visits left: shared references may make a small pickle an exponentially large tree.
    pub budget: usize,
    pub tensors: BTreeMap<String, &'p TensorRef>,
    pub ints: BTreeMap<String, i64>,
    pub strs: BTreeMap<String, String>,
}

impl<'p> Flat<'p> {
    pub fn walk(&mut self, id: NodeId, name: &str, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!(
                "objects nested deeper than {MAX_DEPTH} levels at `{name}`"
            ));
        }
        if name.len() > MAX_NAME {
            return Err(format!("a key path is longer than {MAX_NAME} bytes"));
        }
        self.budget = self
            .budget
            .checked_sub(1)
            .ok_or("object graph too large (too many shared references)")?;
        let join = |key: &str| {
            if name.is_empty() {
                key.to_owned()
            } else {
                format!("{name}.{key}")
            }
        };
        let p = self.pickle;
        match p.value(id) {
            Value::Tensor(t) => drop(self.tensors.insert(name.to_owned(), t)),
            Value::Int(i) => drop(self.ints.insert(name.to_owned(), *i)),
            Value::Str(s) => drop(self.strs.insert(name.to_owned(), s.clone())),
            Value::Dict(pairs) => {
                for &(k, v) in pairs {
                    let key = match p.value(k) {
                        Value::Str(s) => join(s),
                        Value::Int(i) => join(&i.to_string()),
                        _ => continue,
                    };
                    self.walk(v, &key, depth + 1)?;
                }
            }
            Value::List(items) | Value::Tuple(items) => {
                for (i, &v) in items.iter().enumerate() {
                    self.walk(v, &join(&i.to_string()), depth + 1)?;
                }
            }
            // A ParameterDict is a module: its entries are in the `_parameters` of its state.
            Value::Object {
                class: Global::ParameterDict,
                state: Some(state),
            } => {
                if let Some(params) = p.dict_get(*state, "_parameters") {
                    self.walk(params, name, depth + 1)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}
