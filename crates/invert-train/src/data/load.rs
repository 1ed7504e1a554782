//! Reading the image folder: listing, recognising, decoding and converting each file.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::decode::load_one;
use super::transform::resize_short_side;
use super::{
    BadFile, DataError, FileProblem, ImageSet, LoadImagesOptions, RECOMMENDED_MIN_IMAGES,
    TrainImage, display_name,
};

/// Read every image of `dir` (top level only), see the [module docs](super) for the rules.
///
/// Errors: the folder is missing or unreadable, some files are unusable (unless
/// `opts.skip_bad`: then they are warnings), or no usable image is left.
pub fn load_image_folder(dir: &Path, opts: &LoadImagesOptions) -> Result<ImageSet, DataError> {
    let meta = fs::metadata(dir).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            DataError::MissingDir(dir.to_path_buf())
        } else {
            DataError::ReadDir {
                path: dir.to_path_buf(),
                source: e,
            }
        }
    })?;
    if !meta.is_dir() {
        return Err(DataError::NotADir(dir.to_path_buf()));
    }
    let listing = list_folder(dir)?;
    let mut bad = listing.bad;
    let mut warnings = Vec::new();
    let mut images = Vec::new();
    let mut upscaled = Vec::new();

    // Captions: NAME.txt or NAME.png.txt, keyed by what precedes ".txt".
    let mut used_captions = HashSet::new();
    for (path, len) in &listing.candidates {
        let caption_path = caption_for(path, &listing.captions);
        if let Some(c) = &caption_path {
            used_captions.insert(c.clone());
        }
        let loaded = match load_one(path, *len, opts) {
            Ok(l) => l,
            Err(problem) => {
                bad.push(BadFile {
                    path: path.clone(),
                    problem,
                });
                continue;
            }
        };
        let caption = match caption_path.map(|c| read_caption(&c).map_err(|p| (c, p))) {
            None => None,
            Some(Ok(text)) => {
                if text.is_none() {
                    warnings.push(format!(
                        "{}: its caption file is empty; training without a caption for it",
                        display_name(path)
                    ));
                }
                text
            }
            Some(Err((c, problem))) => {
                bad.push(BadFile { path: c, problem });
                continue;
            }
        };
        warnings.extend(loaded.warnings);
        let (mut rgb, mut alpha) = (loaded.rgb, loaded.alpha);
        let original_size = rgb.dimensions();
        if let Some(res) = opts.resolution.and_then(|r| u32::try_from(r).ok()) {
            let (w, h) = rgb.dimensions();
            if w.min(h) < res {
                upscaled.push(format!("{} ({w}x{h})", display_name(path)));
            } else if w.min(h) > res {
                // What `prepare` does first anyway; keeps only ~3 * res^2 bytes per image.
                (rgb, alpha) = resize_short_side(&rgb, alpha.as_deref(), res);
            }
        }
        images.push(TrainImage {
            path: path.clone(),
            rgb,
            alpha,
            caption,
            original_size,
        });
    }

    let mut orphans: Vec<&PathBuf> = listing
        .captions
        .values()
        .filter(|p| !used_captions.contains(*p))
        .collect();
    orphans.sort();
    for p in orphans {
        warnings.push(format!(
            "{}: caption file without a matching image (expected an image named like it, \
             e.g. {}.png); ignored",
            display_name(p),
            display_name(&p.with_extension(""))
        ));
    }
    if !listing.subfolders.is_empty() {
        warnings.push(format!(
            "subfolders are not searched, only the images directly in {}; ignored: {}",
            dir.display(),
            listing.subfolders.join(", ")
        ));
    }
    if !upscaled.is_empty() {
        warnings.push(format!(
            "{} image(s) are smaller than the training resolution {} px on the short side and \
             will be upscaled (blurry training data; use larger originals if you have them): {}",
            upscaled.len(),
            opts.resolution.unwrap_or_default(),
            upscaled.join(", ")
        ));
    }
    if opts.alpha_mask && !images.is_empty() && images.iter().all(|i| i.alpha.is_none()) {
        warnings.push(
            "--alpha-mask: none of the images has transparency, so every pixel gets full \
             loss weight"
                .to_owned(),
        );
    }

    bad.sort_by(|a, b| a.path.file_name().cmp(&b.path.file_name()));
    if !bad.is_empty() {
        if !opts.skip_bad {
            return Err(DataError::BadFiles {
                dir: dir.to_path_buf(),
                files: bad,
                usable: images.len(),
            });
        }
        for b in &bad {
            warnings.push(format!("skipped {b}"));
        }
    }
    if images.is_empty() {
        let detail = if !bad.is_empty() {
            format!(
                "all {} file(s) were skipped as unusable (see the warnings)",
                bad.len()
            )
        } else if !listing.subfolders.is_empty() {
            format!(
                "it holds only subfolders ({}), which are not searched: put the images \
                 directly in it",
                listing.subfolders.join(", ")
            )
        } else if !listing.captions.is_empty() {
            "it holds only .txt caption files".to_owned()
        } else {
            "the folder is empty (supported: PNG, JPEG, WebP, BMP, GIF)".to_owned()
        };
        return Err(DataError::NoImages {
            dir: dir.to_path_buf(),
            detail,
        });
    }
    if images.len() < RECOMMENDED_MIN_IMAGES {
        warnings.push(format!(
            "only {} training image(s): textual inversion usually needs 3-5 views of the \
             concept (the paper uses 3-5) to separate it from the background and pose",
            images.len()
        ));
    }
    Ok(ImageSet { images, warnings })
}

struct Listing {
    /// Image candidates (every regular, non-`.txt` file) with their size, sorted by name.
    candidates: Vec<(PathBuf, u64)>,
    /// `.txt` files keyed by their name without `.txt`.
    captions: HashMap<OsString, PathBuf>,
    subfolders: Vec<String>,
    bad: Vec<BadFile>,
}

/// Hidden files, OS litter, and notes kept beside the pictures (a README, a licence file):
/// documentation extensions are never images, so they are skipped rather than reported.
fn is_ignored(name: &OsStr) -> bool {
    let bytes = name.as_encoded_bytes();
    let doc = Path::new(name)
        .extension()
        .and_then(OsStr::to_str)
        .is_some_and(|e| {
            ["md", "markdown", "rst", "license"]
                .iter()
                .any(|d| e.eq_ignore_ascii_case(d))
        });
    bytes.first() == Some(&b'.')
        || doc
        || bytes.eq_ignore_ascii_case(b"Thumbs.db")
        || bytes.eq_ignore_ascii_case(b"desktop.ini")
}

fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension()
        .and_then(OsStr::to_str)
        .is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

fn list_folder(dir: &Path) -> Result<Listing, DataError> {
    let read_err = |source| DataError::ReadDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut listing = Listing {
        candidates: Vec::new(),
        captions: HashMap::new(),
        subfolders: Vec::new(),
        bad: Vec::new(),
    };
    for entry in fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let name = entry.file_name();
        if is_ignored(&name) {
            continue;
        }
        let path = entry.path();
        let is_link = entry.file_type().map_err(read_err)?.is_symlink();
        // `fs::metadata` follows links; a link loop fails (ELOOP) instead of hanging.
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                let problem = match (is_link, e.kind()) {
                    (true, io::ErrorKind::NotFound) => FileProblem::BrokenSymlink,
                    (true, _) => FileProblem::UnfollowableSymlink(e),
                    (false, _) => FileProblem::Io(e),
                };
                listing.bad.push(BadFile { path, problem });
                continue;
            }
        };
        if meta.is_dir() {
            listing.subfolders.push(display_name(&path) + "/");
        } else if !meta.is_file() {
            listing.bad.push(BadFile {
                path,
                problem: FileProblem::NotRegularFile,
            });
        } else if has_extension(&path, "txt") {
            let key = path.file_stem().unwrap_or_default().to_os_string();
            listing.captions.insert(key, path);
        } else {
            listing.candidates.push((path, meta.len()));
        }
    }
    listing
        .candidates
        .sort_by(|a, b| a.0.file_name().cmp(&b.0.file_name()));
    listing.subfolders.sort();
    Ok(listing)
}

/// `NAME.png.txt` first, then `NAME.txt`.
fn caption_for(image: &Path, captions: &HashMap<OsString, PathBuf>) -> Option<PathBuf> {
    let full = image.file_name()?;
    let stem = image.file_stem()?;
    captions.get(full).or_else(|| captions.get(stem)).cloned()
}

/// The trimmed caption, `None` if it is empty.
fn read_caption(path: &Path) -> Result<Option<String>, FileProblem> {
    let bytes = fs::read(path).map_err(FileProblem::Io)?;
    let text = String::from_utf8(bytes).map_err(|_| FileProblem::CaptionNotUtf8)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text).trim();
    Ok((!text.is_empty()).then(|| text.to_owned()))
}
