//! Run-time backend choice: `auto` (the default: a real GPU through wgpu when one is present,
//! else the CPU), `cpu` (burn's flex backend, always built) or `wgpu` (Vulkan/Metal/DX12, in
//! builds with the `wgpu` cargo feature, which invert-cli enables by default; a software
//! adapter such as lavapipe is accepted only here). burn 0.22's `cuda` and `cpu` (CubeCL)
//! features download LLVM at build time and cannot be built offline, so they are not offered.

pub mod adapter;
#[cfg(feature = "wgpu")]
mod probe;

use std::fmt;

use burn::prelude::*;
use burn::tensor::DType;

pub use adapter::{AdapterInfo, AdapterKind};

/// The `--device` values.
pub const DEVICES: [&str; 3] = ["auto", "cpu", "wgpu"];

/// The `--precision` values: the dtype the frozen weights compute in. Learned vectors, the loss,
/// guidance and the samplers stay f32 whatever is chosen (the model casts at its inputs).
/// `auto` is f16 on a GPU that computes in it, else f32.
pub const PRECISIONS: [&str; 4] = ["auto", "f32", "f16", "bf16"];

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device `{0}`; choose one of: {choices}", choices = available().join(", "))]
    Unknown(String),
    #[error(
        "this invert was built without GPU support (--no-default-features); rebuild with \
         `cargo build --release -p invert-cli`, whose default features include wgpu"
    )]
    NotBuilt,
    #[error(
        "wgpu found no graphics adapter (is a Vulkan driver installed? `invert model info` \
         lists what wgpu sees); use --device cpu"
    )]
    NoAdapter,
    #[error("could not open {adapter}: {reason}")]
    Open { adapter: String, reason: String },
    #[error("unknown precision `{0}`; choose one of: {choices}", choices = PRECISIONS.join(", "))]
    UnknownPrecision(String),
    #[error("this device cannot compute in {0}; use --precision f32{hint}", hint = or_f16(.0))]
    Unsupported(&'static str),
}

/// Most GPUs that lack bf16 arithmetic have f16.
fn or_f16(refused: &str) -> &'static str {
    if refused == "bf16" { " or f16" } else { "" }
}

/// The device a `--device` value resolved to, and what to tell the user about it.
#[derive(Clone)]
pub struct Choice {
    pub device: Device,
    /// The wgpu adapter, when the device is one.
    pub adapter: Option<AdapterInfo>,
    /// Why `auto` settled on the CPU, when it did.
    pub note: Option<String>,
}

impl Choice {
    fn cpu(note: Option<String>) -> Self {
        Choice {
            device: Device::flex(),
            adapter: None,
            note,
        }
    }

    /// A hardware GPU (not a software rasteriser).
    pub fn is_gpu(&self) -> bool {
        self.adapter.as_ref().is_some_and(|a| !a.is_software())
    }
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.adapter {
            Some(a) => write!(f, "wgpu on {a}")?,
            None => write!(f, "cpu")?,
        }
        if let Some(note) = &self.note {
            write!(f, "; {note}")?;
        }
        Ok(())
    }
}

/// The backend names `--device` accepts in this build.
pub fn available() -> &'static [&'static str] {
    if cfg!(feature = "wgpu") {
        &DEVICES
    } else {
        &DEVICES[..2]
    }
}

/// The environment variable that stands in for `auto` (the test suites set it to `cpu`, so
/// their expected values do not depend on the machine's GPU).
pub const DEVICE_ENV: &str = "INVERT_DEVICE";

/// Resolve a `--device` value.
pub fn choose(name: &str) -> Result<Choice, DeviceError> {
    match name {
        "cpu" | "flex" => Ok(Choice::cpu(None)),
        "auto" => match std::env::var(DEVICE_ENV) {
            Ok(v) if !v.is_empty() && v != "auto" => choose(&v),
            _ => Ok(auto()),
        },
        "wgpu" | "gpu" => explicit_wgpu(),
        other => Err(DeviceError::Unknown(other.into())),
    }
}

/// The device for a `--device` value.
pub fn by_name(name: &str) -> Result<Device, DeviceError> {
    choose(name).map(|c| c.device)
}

/// The adapters wgpu sees on this machine, every API asked.
#[cfg(feature = "wgpu")]
pub fn adapters() -> Vec<AdapterInfo> {
    probe::adapters(false)
}

/// No adapters without the `wgpu` feature.
#[cfg(not(feature = "wgpu"))]
pub fn adapters() -> Vec<AdapterInfo> {
    Vec::new()
}

#[cfg(feature = "wgpu")]
fn auto() -> Choice {
    let adapters = probe::adapters(true);
    match adapter::pick(&adapters, false) {
        Some(i) => match probe::open(&adapters, i) {
            Ok(device) => Choice {
                device,
                adapter: Some(adapters[i].clone()),
                note: None,
            },
            // A GPU that will not open is reported, not fatal: the CPU still does the job.
            Err(e) => Choice::cpu(Some(e.to_string())),
        },
        None => Choice::cpu(Some(match adapters.iter().find(|a| a.is_software()) {
            Some(a) => format!(
                "no GPU found (software adapter {} skipped; --device wgpu uses it)",
                a.name
            ),
            None => "no GPU found".into(),
        })),
    }
}

#[cfg(not(feature = "wgpu"))]
fn auto() -> Choice {
    Choice::cpu(Some("built without GPU support".into()))
}

#[cfg(feature = "wgpu")]
fn explicit_wgpu() -> Result<Choice, DeviceError> {
    let adapters = probe::adapters(true);
    let i = adapter::pick(&adapters, true).ok_or(DeviceError::NoAdapter)?;
    Ok(Choice {
        device: probe::open(&adapters, i)?,
        adapter: Some(adapters[i].clone()),
        note: None,
    })
}

#[cfg(not(feature = "wgpu"))]
fn explicit_wgpu() -> Result<Choice, DeviceError> {
    Err(DeviceError::NotBuilt)
}

/// The compute dtype for a `--precision` value on `choice`, refused when the device cannot
/// compute in it (bf16 on many Vulkan devices stores but has no arithmetic: burn's
/// `supports_dtype`), so a run never silently produces garbage. `auto`: f16 on a GPU that
/// computes in it (half the memory and, on tensor cores, several times the speed), else f32
/// (on the CPU f32 is invert's fastest path: its fused kernels are f32).
pub fn precision(name: &str, choice: &Choice) -> Result<DType, DeviceError> {
    let (dtype, canonical) = match name {
        "auto" => {
            let half = choice.is_gpu() && choice.device.supports_dtype(DType::F16);
            return Ok(if half { DType::F16 } else { DType::F32 });
        }
        "f32" | "fp32" | "float32" => (DType::F32, "f32"),
        "f16" | "fp16" | "float16" | "half" => (DType::F16, "f16"),
        "bf16" | "bfloat16" => (DType::BF16, "bf16"),
        other => return Err(DeviceError::UnknownPrecision(other.into())),
    };
    if !choice.device.supports_dtype(dtype) {
        return Err(DeviceError::Unsupported(canonical));
    }
    Ok(dtype)
}

/// The short name of a compute dtype, as `--precision` spells it.
pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "f32",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_always_available() {
        assert!(available().contains(&"cpu"));
        assert!(available().contains(&"auto"));
        let choice = choose("cpu").unwrap();
        assert!(choice.adapter.is_none() && !choice.is_gpu());
        assert_eq!(choice.to_string(), "cpu");
        let err = by_name("tpu").unwrap_err().to_string();
        assert!(err.contains("unknown device `tpu`"), "{err}");
        assert!(err.contains("auto, cpu"), "{err}");
    }

    #[test]
    fn auto_never_takes_a_software_adapter() {
        // Whatever this machine has: a GPU when there is one, the CPU otherwise; never an error.
        let choice = choose("auto").unwrap();
        match &choice.adapter {
            Some(a) => assert!(!a.is_software(), "{a}"),
            None => assert!(choice.note.is_some()),
        }
        assert!(adapters().len() >= usize::from(choice.adapter.is_some()));
    }

    #[test]
    fn precisions_on_the_cpu() {
        let cpu = choose("cpu").unwrap();
        assert_eq!(precision("auto", &cpu).unwrap(), DType::F32);
        assert_eq!(precision("f32", &cpu).unwrap(), DType::F32);
        assert_eq!(precision("f16", &cpu).unwrap(), DType::F16);
        assert_eq!(precision("bf16", &cpu).unwrap(), DType::BF16);
        let err = precision("f8", &cpu).unwrap_err().to_string();
        assert!(err.contains("unknown precision `f8`"), "{err}");
        assert_eq!(dtype_name(DType::BF16), "bf16");
    }

    #[test]
    fn errors_read_as_advice() {
        assert_eq!(
            DeviceError::Unsupported("bf16").to_string(),
            "this device cannot compute in bf16; use --precision f32 or f16"
        );
        assert_eq!(
            DeviceError::Unsupported("f16").to_string(),
            "this device cannot compute in f16; use --precision f32"
        );
        assert!(
            DeviceError::NotBuilt
                .to_string()
                .contains("default features")
        );
    }

    #[cfg(not(feature = "wgpu"))]
    #[test]
    fn wgpu_is_refused_without_the_feature() {
        assert!(matches!(choose("wgpu"), Err(DeviceError::NotBuilt)));
        assert_eq!(available(), &["auto", "cpu"]);
    }
}
