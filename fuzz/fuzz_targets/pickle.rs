//! invert's pickle interpreter (used for `.ckpt`, `.bin` and `.pt` files) on any bytes.
#![no_main]

use invert_model::weights::pickle::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Errors (invalid pickle, refused global) are expected; panics, hangs and allocations
    // sized by claimed lengths are findings.
    let _ = parse(&mut &data[..]);
});
