//! Writes that fail (issue 7): a full disk and a read-only folder. Every writer in invert goes
//! through `write_atomic`; a failure must be an error naming the file, and the previous file
//! must be left byte for byte as it was, with no temporary file behind.
//!
//! The full disk is a 64 KiB tmpfs, which needs root (mount); where mounting is not allowed that
//! case is skipped with a note. The read-only folder is a tmpfs remounted read-only as root
//! (file permissions do not stop root), and a `chmod 555` folder for other users; root without
//! mount permission skips it.

use std::path::{Path, PathBuf};
use std::process::Command;

use invert_model::embedding::{
    EmbeddingFormat, EmbeddingMeta, LearnedEmbedding, SecondVectors, WriteFormat, read_embeddings,
    write_embedding,
};
use invert_model::weights::safetensors_write::write_atomic;

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A folder, optionally a tmpfs of `size` mounted on it, removed (and unmounted) on drop.
struct Folder {
    path: PathBuf,
    mounted: bool,
}

impl Folder {
    fn new(tag: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("invert-failed-write-{}-{tag}", std::process::id()));
        let _ = Command::new("umount").arg(&path).output();
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Folder {
            path,
            mounted: false,
        }
    }

    /// Mounts a tmpfs of `size` (e.g. "64k") here; false when that is not allowed.
    fn mount_tmpfs(&mut self, size: &str) -> bool {
        if !is_root() {
            return false;
        }
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        self.mounted = ok;
        ok
    }

    fn remount_read_only(&self) {
        let ok = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount read-only");
    }

    fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.path).status();
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o755));
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn embedding(token: &str, vectors: usize, width: usize, value: f32) -> LearnedEmbedding {
    LearnedEmbedding {
        token: token.into(),
        vectors: vec![value; vectors * width],
        num_vectors: vectors,
        width,
        second: None,
        meta: EmbeddingMeta::new(EmbeddingFormat::Diffusers),
    }
}

/// An SDXL embedding: clip_l rows `width` wide, clip_g rows twice as wide.
fn sdxl_embedding(token: &str, vectors: usize, width: usize, value: f32) -> LearnedEmbedding {
    LearnedEmbedding {
        second: Some(SecondVectors {
            vectors: vec![-value; vectors * width * 2],
            width: width * 2,
        }),
        ..embedding(token, vectors, width, value)
    }
}

/// Checks the failure and that `path` still holds `before` and nothing else was left.
fn assert_untouched(folder: &Folder, path: &Path, before: &[u8], names: &[String], msg: &str) {
    assert!(
        msg.contains(&*path.to_string_lossy()),
        "names the file: {msg}"
    );
    assert_eq!(
        std::fs::read(path).unwrap(),
        before,
        "previous file changed"
    );
    assert_eq!(&folder.entries(), names, "a temporary file was left behind");
    let e = read_embeddings(path, None).unwrap();
    assert_eq!(e[0].token, "<old>");
}

#[test]
fn full_disk_fails_cleanly_and_keeps_the_previous_file() {
    let mut folder = Folder::new("full");
    if !folder.mount_tmpfs("64k") {
        eprintln!("skipped: mounting a tmpfs needs root (and a container that allows it)");
        return;
    }
    let path = folder.path.join("learned_embeds.safetensors");
    write_embedding(
        &embedding("<old>", 1, 32, 0.5),
        &path,
        WriteFormat::Diffusers,
        false,
    )
    .unwrap();
    let before = std::fs::read(&path).unwrap();
    // Fill the rest of the file system.
    let filler = folder.path.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let block = vec![0u8; 4096];
    while std::io::Write::write_all(&mut f, &block).is_ok() {}
    drop(f);
    let names = folder.entries();

    // 75 vectors of 1024 values (300 KB) cannot fit.
    let big = embedding("<new>", 75, 1024, 0.25);
    let err = write_embedding(&big, &path, WriteFormat::Diffusers, true).unwrap_err();
    let msg = err.to_string();
    eprintln!("full disk: {msg}");
    assert!(msg.contains("No space left on device"), "{msg}");
    assert_untouched(&folder, &path, &before, &names, &msg);

    // diffusers' two SDXL files: both are flushed before either is put in place, so neither
    // the first (the previous file) nor the second (new) appears changed.
    let big = sdxl_embedding("<new>", 75, 1024, 0.25);
    let err = write_embedding(&big, &path, WriteFormat::DiffusersSdxl, true).unwrap_err();
    let msg = err.to_string();
    eprintln!("full disk, two files: {msg}");
    assert!(msg.contains("No space left on device"), "{msg}");
    // The message names the file that could not be written (the second, staged first).
    let second = folder.path.join("learned_embeds_2.safetensors");
    assert!(msg.contains(&*second.to_string_lossy()), "{msg}");
    assert!(!second.exists());
    assert_untouched(&folder, &path, &before, &names, &path.display().to_string());

    // The same through the bare primitive every writer uses.
    let err = write_atomic(&path, &vec![1u8; 200_000], true).unwrap_err();
    assert_untouched(&folder, &path, &before, &names, &err.to_string());
}

#[test]
fn read_only_folder_fails_cleanly_and_keeps_the_previous_file() {
    let mut folder = Folder::new("ro");
    let root = folder.mount_tmpfs("1m");
    if !root && is_root() {
        // Root ignores permissions, and this container does not allow mounting.
        eprintln!("skipped: root without permission to mount a tmpfs");
        return;
    }
    let path = folder.path.join("learned_embeds.safetensors");
    write_embedding(
        &embedding("<old>", 1, 32, 0.5),
        &path,
        WriteFormat::Diffusers,
        false,
    )
    .unwrap();
    let before = std::fs::read(&path).unwrap();
    let names = folder.entries();
    if root {
        folder.remount_read_only();
    } else {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&folder.path, std::fs::Permissions::from_mode(0o555)).unwrap();
    }

    for format in [
        WriteFormat::Diffusers,
        WriteFormat::A1111,
        WriteFormat::Kohya,
        WriteFormat::Sdxl,
        WriteFormat::DiffusersSdxl,
    ] {
        let e = if format.is_sdxl() {
            sdxl_embedding("<new>", 2, 32, 1.0)
        } else {
            embedding("<new>", 2, 32, 1.0)
        };
        let err = write_embedding(&e, &path, format, true).unwrap_err();
        let msg = err.to_string();
        eprintln!("read-only folder ({format:?}): {msg}");
        assert!(
            msg.contains("Read-only file system") || msg.contains("Permission denied"),
            "{msg}"
        );
        // The message names the temporary file in the folder: same folder, so the fix is the
        // same; check the folder is named.
        assert!(msg.contains(&*folder.path.to_string_lossy()), "{msg}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert_eq!(folder.entries(), names);
    }
    // A new file in the read-only folder fails the same way.
    let other = folder.path.join("other.safetensors");
    let err = write_embedding(
        &embedding("<x>", 1, 32, 1.0),
        &other,
        WriteFormat::Diffusers,
        false,
    )
    .unwrap_err();
    assert!(!other.exists(), "{err}");
}
