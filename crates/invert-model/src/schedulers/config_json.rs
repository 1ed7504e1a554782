//! Typed reads of a diffusers `scheduler_config.json` object, with errors that name the key.
//! A `null` value counts as absent (diffusers writes `"trained_betas": null`).

use serde_json::{Map, Value};

use super::SchedulerError;

pub(crate) struct Json<'a>(&'a Map<String, Value>);

fn invalid(field: &'static str, message: impl Into<String>) -> SchedulerError {
    SchedulerError::Invalid {
        field,
        message: message.into(),
    }
}

impl<'a> Json<'a> {
    pub(crate) fn new(value: &'a Value) -> Result<Self, SchedulerError> {
        value
            .as_object()
            .map(Json)
            .ok_or_else(|| invalid("scheduler_config.json", "is not a JSON object"))
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    pub(crate) fn bool(&self, key: &'static str) -> Result<Option<bool>, SchedulerError> {
        self.get(key)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| invalid(key, format!("expected true or false, got {v}")))
            })
            .transpose()
    }

    pub(crate) fn f64(&self, key: &'static str) -> Result<Option<f64>, SchedulerError> {
        self.get(key)
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| invalid(key, format!("expected a number, got {v}")))
            })
            .transpose()
    }

    pub(crate) fn usize(&self, key: &'static str) -> Result<Option<usize>, SchedulerError> {
        self.get(key)
            .map(|v| {
                v.as_u64().map(|n| n as usize).ok_or_else(|| {
                    invalid(key, format!("expected a non-negative integer, got {v}"))
                })
            })
            .transpose()
    }

    pub(crate) fn string(&self, key: &'static str) -> Result<Option<String>, SchedulerError> {
        self.get(key)
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| invalid(key, format!("expected a string, got {v}")))
            })
            .transpose()
    }

    pub(crate) fn f64_list(&self, key: &'static str) -> Result<Option<Vec<f64>>, SchedulerError> {
        self.get(key)
            .map(|v| {
                v.as_array()
                    .and_then(|a| a.iter().map(Value::as_f64).collect::<Option<Vec<_>>>())
                    .ok_or_else(|| invalid(key, "expected a list of numbers"))
            })
            .transpose()
    }

    /// One of the named string values, mapped to its enum variant.
    pub(crate) fn choice<T: Copy>(
        &self,
        key: &'static str,
        options: &[(&'static str, T)],
    ) -> Result<Option<T>, SchedulerError> {
        let Some(s) = self.string(key)? else {
            return Ok(None);
        };
        options
            .iter()
            .find(|(name, _)| *name == s)
            .map(|&(_, v)| Some(v))
            .ok_or_else(|| SchedulerError::Unsupported {
                field: key,
                value: format!("\"{s}\""),
                supported: names(options),
            })
    }

    /// A feature invert does not implement: fine when absent or `supported`.
    pub(crate) fn require_bool(
        &self,
        key: &'static str,
        supported: bool,
    ) -> Result<(), SchedulerError> {
        match self.bool(key)? {
            Some(v) if v != supported => Err(SchedulerError::Unsupported {
                field: key,
                value: v.to_string(),
                supported: supported.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// A string setting invert implements only some values of.
    pub(crate) fn require_str(
        &self,
        key: &'static str,
        supported: &[&'static str],
    ) -> Result<(), SchedulerError> {
        let options: Vec<(&'static str, ())> = supported.iter().map(|&s| (s, ())).collect();
        self.choice(key, &options).map(|_| ())
    }

    /// A setting invert implements only when unset (`null`).
    pub(crate) fn require_null(&self, key: &'static str) -> Result<(), SchedulerError> {
        match self.get(key) {
            Some(v) => Err(SchedulerError::Unsupported {
                field: key,
                value: v.to_string(),
                supported: "null".into(),
            }),
            None => Ok(()),
        }
    }
}

/// The option names, joined with ", ".
fn names<T>(options: &[(&'static str, T)]) -> String {
    let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
    names.join(", ")
}
