//! Run-time backend choice: `cpu` (burn's flex backend, always built) or `wgpu` (Vulkan/Metal,
//! with the `wgpu` cargo feature). burn 0.22's `cuda` and `cpu` (CubeCL) features download
//! LLVM at build time and cannot be built offline, so they are not offered.

use burn::prelude::*;

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
}
