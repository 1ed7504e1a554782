//! The embedding-file reader end to end: content sniffing (PNG, other images, safetensors,
//! torch zip / legacy pickle), then telling the formats apart by the names inside.
//! `read_embeddings` takes a path, so each input is written to a per-process file in
//! /dev/shm (memory-backed) first.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use invert_model::embedding::read_embeddings;
use libfuzzer_sys::fuzz_target;

fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        dir.join(format!("invert-fuzz-embedding-{}", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let path = scratch();
    std::fs::write(path, data).expect("scratch file");
    if let Err(e) = read_embeddings(path, None) {
        // Every message names the file it is about.
        let msg = e.to_string();
        assert!(msg.contains(&*path.to_string_lossy()), "{msg}");
    }
});
