//! A1111 embedding images: PNG decoding, the `sd-ti-embedding` text chunks (tEXt/zTXt/iTXt,
//! base64 JSON) and the data hidden in the pixels, on any bytes.
#![no_main]

use std::path::Path;

use invert_model::embedding::read_png_embedding;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = read_png_embedding(Path::new("fuzz.png"), data);
});
