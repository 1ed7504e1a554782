//! Run-time backend choice: `cpu` (burn's flex backend, always built) or `wgpu` (Vulkan/Metal,
//! with the `wgpu` cargo feature). burn 0.22's `cuda` and `cpu` (CubeCL) features download
//! LLVM at build time and cannot be built offline, so they are not offered.

use burn::prelude::*;
use burn::tensor::DType;

/// The `--precision` values: the dtype the frozen weights compute in. Learned vectors, the loss,
/// guidance and the samplers stay f32 whatever is chosen (the model casts at its inputs).
pub const PRECISIONS: [&str; 3] = ["f32", "f16", "bf16"];

/// The compute dtype for a `--precision` value on `device`, refused when the device cannot
/// compute in it (bf16 on many Vulkan devices stores but has no arithmetic: burn's
/// `supports_dtype`), so a run never silently produces garbage.
pub fn precision(name: &str, device: &Device) -> Result<DType, String> {
    let dtype = match name {
        "f32" | "fp32" | "float32" => DType::F32,
        "f16" | "fp16" | "float16" | "half" => DType::F16,
        "bf16" | "bfloat16" => DType::BF16,
        other => {
            return Err(format!(
                "unknown precision `{other}`; choose one of: {}",
                PRECISIONS.join(", ")
            ));
        }
    };
    if !device.supports_dtype(dtype) {
        return Err(format!(
            "this device cannot compute in {name}; use --precision f32{}",
            if dtype == DType::BF16 { " or f16" } else { "" }
        ));
    }
    Ok(dtype)
}

/// The backend names `--device` accepts in this build.
pub fn available() -> &'static [&'static str] {
    if cfg!(feature = "wgpu") {
        &["cpu", "wgpu"]
    } else {
        &["cpu"]
    }
}

/// The device for a `--device` value.
pub fn by_name(name: &str) -> Result<Device, String> {
    match name {
        "cpu" | "flex" => Ok(Device::flex()),
        #[cfg(feature = "wgpu")]
        "wgpu" | "gpu" => Ok(Device::wgpu(Default::default())),
        #[cfg(not(feature = "wgpu"))]
        "wgpu" | "gpu" => Err("this invert was built without GPU support; rebuild with `cargo build --release --features wgpu`".into()),
        other => Err(format!("unknown device `{other}`; choose one of: {}", available().join(", "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_always_available() {
        assert!(available().contains(&"cpu"));
        assert!(by_name("cpu").is_ok());
        let err = by_name("tpu").unwrap_err();
        assert!(err.contains("unknown device `tpu`"), "{err}");
    }

    #[test]
    fn precisions_on_the_cpu() {
        let device = Device::flex();
        assert_eq!(precision("f32", &device), Ok(DType::F32));
        assert_eq!(precision("f16", &device), Ok(DType::F16));
        assert_eq!(precision("bf16", &device), Ok(DType::BF16));
        let err = precision("f8", &device).unwrap_err();
        assert!(err.contains("unknown precision `f8`"), "{err}");
    }
}
