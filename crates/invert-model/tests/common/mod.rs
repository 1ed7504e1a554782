//! Helpers shared by the golden-value tests: fixture paths, reading reference tensors, and
//! the tolerance check (max |a - b| <= tol * max(1, |b|), i.e. absolute for values of order
//! one and relative for large magnitudes).

#![allow(dead_code)]

use std::path::PathBuf;

use burn::prelude::*;
use invert_model::weights::TensorReader;
use invert_model::weights::safetensors_file::SafetensorsFile;

pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

pub struct Golden(SafetensorsFile);

impl Golden {
    pub fn open(name: &str) -> Self {
        Golden(
            SafetensorsFile::open(&fixture(&format!("golden/{name}.safetensors")))
                .expect("golden file"),
        )
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.meta(name).is_some()
    }

    pub fn f32<const D: usize>(&self, name: &str, device: &Device) -> Tensor<D> {
        let meta = self
            .0
            .meta(name)
            .unwrap_or_else(|| panic!("golden tensor {name}"))
            .clone();
        let values = self.0.read_f32(name).unwrap();
        Tensor::from_data(TensorData::new(values, meta.shape), device)
    }

    pub fn i64(&self, name: &str) -> (Vec<i64>, Vec<usize>) {
        let meta = self
            .0
            .meta(name)
            .unwrap_or_else(|| panic!("golden tensor {name}"))
            .clone();
        let bytes = self.0.read_bytes(name).unwrap();
        let v = bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        (v, meta.shape)
    }

    /// A U8 tensor's bytes (images).
    pub fn u8(&self, name: &str) -> Vec<u8> {
        assert!(self.has(name), "golden tensor {name}");
        self.0.read_bytes(name).unwrap()
    }

    pub fn ids(&self, name: &str, device: &Device) -> Tensor<2, Int> {
        let (v, shape) = self.i64(name);
        Tensor::from_data(TensorData::new(v, shape), device)
    }

    pub fn timesteps(&self, name: &str, device: &Device) -> Tensor<1> {
        let (v, shape) = self.i64(name);
        let v: Vec<f32> = v.into_iter().map(|t| t as f32).collect();
        Tensor::from_data(TensorData::new(v, shape), device)
    }
}

/// Max of |a - b| / max(1, |b|) over all elements.
pub fn scaled_max_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let scale = b.clone().abs().clamp_min(1.0);
    ((a - b).abs() / scale).max().into_scalar::<f32>()
}

/// Asserts within `tol` and prints the measured difference (run with --nocapture to see it).
pub fn assert_close<const D: usize>(what: &str, a: Tensor<D>, b: Tensor<D>, tol: f32) {
    let d = scaled_max_diff(a, b);
    println!("{what}: max scaled |diff| = {d:.3e}");
    assert!(
        d <= tol,
        "{what}: max scaled |diff| {d:.3e} exceeds {tol:.0e}"
    );
}

pub fn assert_identical<const D: usize>(what: &str, a: Tensor<D>, b: Tensor<D>) {
    let d = (a - b).abs().max().into_scalar::<f32>();
    assert_eq!(d, 0.0, "{what}: outputs differ by {d:e}");
}
