//! Little-endian element decoding shared by the readers.

use super::StoredDType;

/// Decodes `bytes` of `dtype` to f32; `None` for non-float dtypes.
pub fn bytes_to_f32(bytes: &[u8], dtype: StoredDType) -> Option<Vec<f32>> {
    Some(match dtype {
        StoredDType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        StoredDType::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        StoredDType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        StoredDType::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
        _ => return None,
    })
}
