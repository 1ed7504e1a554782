//! The safetensors length prefix, JSON header and range/shape/dtype validation, on any bytes.
#![no_main]

use std::path::Path;

use invert_model::weights::safetensors_file::check_safetensors_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Anything but a panic, a hang or a large allocation is fine; accepted headers must
    // describe ranges that fit the input.
    if let Ok(tensors) = check_safetensors_bytes(Path::new("fuzz.safetensors"), data) {
        for (_, meta) in tensors {
            let bytes = meta.numel() as u128 * meta.dtype.size() as u128;
            assert!(bytes <= data.len() as u128);
        }
    }
});
