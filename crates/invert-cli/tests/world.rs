//! `invert world`: the committed concept sets (pictures, captions, READMEs) are exactly what
//! `invert world datasets` writes (so they can be regenerated and reviewed), and
//! `invert world sample` writes pictures with their captions.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("invert-world-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn committed_datasets_are_what_the_generator_writes() {
    let out = temp("datasets");
    let status = Command::new(env!("CARGO_BIN_EXE_invert"))
        .args(["world", "datasets", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let committed = repo().join("datasets");
    let mut compared = 0;
    for set in std::fs::read_dir(&out).unwrap() {
        let set = set.unwrap().path();
        let name = set.file_name().unwrap().to_owned();
        for file in std::fs::read_dir(&set).unwrap() {
            let file = file.unwrap().path();
            let theirs = committed.join(&name).join(file.file_name().unwrap());
            assert!(
                std::fs::read(&file).unwrap() == std::fs::read(&theirs).unwrap_or_default(),
                "{} differs from a fresh `invert world datasets`",
                theirs.display()
            );
            compared += 1;
        }
    }
    assert_eq!(
        compared,
        4 * 11,
        "4 sets of 5 pictures, 5 captions and a README"
    );
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn samples_come_with_captions_that_never_name_hidden_attributes() {
    let out = temp("sample");
    let run = Command::new(env!("CARGO_BIN_EXE_invert"))
        .args(["world", "sample", "--count", "20", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(stdout.lines().count(), 20);
    for i in 0..20 {
        assert!(out.join(format!("{i:05}.png")).is_file());
        let caption = std::fs::read_to_string(out.join(format!("{i:05}.txt"))).unwrap();
        for hidden in ["striped", "outlined", "framed", "hatched"] {
            assert!(!caption.contains(hidden), "{caption}");
        }
    }
    std::fs::remove_dir_all(&out).ok();
}
