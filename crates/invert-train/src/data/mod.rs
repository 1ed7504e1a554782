//! Training images: reading a folder of images and turning each into the network's input.
//!
//! This module is burn-free: it produces plain `Vec<f32>` buffers that the trainer uploads.
//!
//! # Reading ([`load_image_folder`])
//!
//! - Only the top level of the folder is read; subfolders are **not** searched (a warning names
//!   them). Entries are handled in byte order of their file names, so runs are reproducible.
//! - Files are recognised by their content (magic bytes), not by their extension. Supported:
//!   PNG, JPEG, WebP, BMP, GIF. Hidden files (names starting with `.`, which includes macOS `._x.png`
//!   resource forks) and `Thumbs.db` / `desktop.ini` are ignored silently.
//! - `NAME.txt` (or `NAME.png.txt`) next to `NAME.png` is that image's caption (UTF-8, trimmed; a
//!   UTF-8 byte-order mark is dropped). A `.txt` without a matching image only gives a warning.
//! - Every other file that is not a usable image is a *bad file*: by default the load fails with
//!   one error that lists every bad file and why ([`DataError::BadFiles`]); with `skip_bad` each
//!   becomes a warning instead. See [`FileProblem`] for the reasons.
//! - The image size is read from the header and checked against [`LoadImagesOptions::max_pixels`]
//!   before any pixel buffer is allocated (decompression bombs are refused, not decoded).
//! - Conversions: EXIF orientation is applied (the image comes out upright, as viewers show it);
//!   16-bit, grayscale, palette and CMYK images become 8-bit RGB (CMYK without colour management,
//!   with a warning); images with transparency are composited on white. With
//!   [`LoadImagesOptions::alpha_mask`] the alpha channel is also kept as a per-pixel loss weight
//!   (A1111's "use PNG alpha channel as loss weight"). Animated GIF / WebP / PNG: the first frame
//!   is used, with a warning.
//! - Zero usable images is an error ([`DataError::NoImages`]); fewer than 3 is a warning (the
//!   textual-inversion paper uses 3-5).
//!
//! # Preparing ([`prepare`])
//!
//! Resize so the short side equals the training resolution, crop a square (center or random),
//! optionally mirror, and scale to `[-1, 1]`. The resampling filter is Catmull-Rom (bicubic with
//! a = -0.5, widened when downscaling), the same kernel as PIL's `BICUBIC`, which diffusers'
//! `textual_inversion.py` and the original implementation use; Lanczos3 would be slightly sharper
//! but would feed the VAE different pixels from the reference trainers.

mod decode;
mod load;
mod transform;

use std::fmt;
use std::path::{Path, PathBuf};

pub use image::RgbImage;
pub use load::load_image_folder;
pub use transform::{Crop, Prepared, prepare, short_side_size};

/// Images whose short side is below this many pixels are refused ([`FileProblem::TooSmall`]):
/// upscaled to the training resolution they would be flat colour, e.g. a 1x1 tracking pixel.
pub const MIN_SIDE: u32 = 16;

/// Fewer usable images than this gives a warning (the paper uses 3-5).
pub const RECOMMENDED_MIN_IMAGES: usize = 3;

/// Options for [`load_image_folder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadImagesOptions {
    /// Skip unusable files with a warning instead of failing (`--skip-bad`).
    pub skip_bad: bool,
    /// Keep the alpha channel as a per-pixel loss weight (`--alpha-mask`).
    pub alpha_mask: bool,
    /// Refuse images with more pixels than this (width x height from the header, checked before
    /// decoding). Default 64 Mi pixels (8192 x 8192).
    pub max_pixels: u64,
    /// The training resolution, if known. Then images larger than it are downscaled at load time
    /// so their short side equals it (what [`prepare`] would do anyway; this keeps memory at about
    /// 3 x resolution^2 bytes per image instead of the full photo), and images smaller than it
    /// get one "will be upscaled" warning.
    pub resolution: Option<usize>,
}

impl Default for LoadImagesOptions {
    fn default() -> Self {
        Self {
            skip_bad: false,
            alpha_mask: false,
            max_pixels: 64 * 1024 * 1024,
            resolution: None,
        }
    }
}

/// The usable images of a folder, in file-name order, plus the warnings to show the user.
#[derive(Debug, Clone)]
pub struct ImageSet {
    pub images: Vec<TrainImage>,
    pub warnings: Vec<String>,
}

/// One decoded training image: upright, 8-bit RGB, transparency already composited on white.
#[derive(Debug, Clone)]
pub struct TrainImage {
    pub path: PathBuf,
    pub rgb: RgbImage,
    /// Alpha, row-major `width * height` bytes (255 = full weight); only with `alpha_mask` and
    /// only for images that have some transparency.
    pub alpha: Option<Vec<u8>>,
    /// The sidecar caption (`NAME.txt`), trimmed; `None` when there is none or it is empty.
    pub caption: Option<String>,
    /// `(width, height)` of the picture as decoded, before any downscaling at load (SDXL's
    /// micro-conditioning is given the original size).
    pub original_size: (u32, u32),
}

impl TrainImage {
    /// `(width, height)` in pixels.
    pub fn size(&self) -> (u32, u32) {
        self.rgb.dimensions()
    }

    /// The file name, for messages (lossy if it is not valid UTF-8).
    pub fn name(&self) -> String {
        display_name(&self.path)
    }
}

/// The distinct inputs a center-crop training run feeds the VAE: `(image index, flipped)`, in
/// order; two per image with flipping, one without. With a center crop [`prepare`] is
/// deterministic given these two, so the trainer can encode each variant once and cache its
/// latents. (Random crop has no finite variant list.)
pub fn variants(n_images: usize, flip: bool) -> Vec<(usize, bool)> {
    let mut out = Vec::with_capacity(if flip { 2 * n_images } else { n_images });
    for i in 0..n_images {
        out.push((i, false));
        if flip {
            out.push((i, true));
        }
    }
    out
}

/// A file of the image folder that cannot be used, and why.
#[derive(Debug)]
pub struct BadFile {
    pub path: PathBuf,
    pub problem: FileProblem,
}

impl fmt::Display for BadFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", display_name(&self.path), self.problem)
    }
}

/// Why a file cannot be used. Each message says what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum FileProblem {
    #[error("empty file (0 bytes): copy it again or delete it")]
    Empty,
    #[error(
        "not an image: the content looks like {looks_like}{}; remove it from the image folder",
        named_like.as_ref().map(|e| format!(" although the file is named .{e}")).unwrap_or_default()
    )]
    NotAnImage {
        /// e.g. "text", "a PDF document", "unrecognised binary data".
        looks_like: &'static str,
        /// The image extension the file has, if any (a text file named `.png`).
        named_like: Option<String>,
    },
    #[error(
        "{format} images are not supported: convert it to PNG or JPEG \
         (supported: PNG, JPEG, WebP, BMP, GIF)"
    )]
    UnsupportedFormat { format: String },
    #[error(
        "the file is {} MiB, far more than any usable training image (limit {} MiB): \
         downscale or re-compress it",
        bytes >> 20, limit >> 20
    )]
    FileTooLarge { bytes: u64, limit: u64 },
    #[error(
        "image is {width}x{height} = {:.1} megapixels, over the {:.1} megapixel limit \
         (refused before decoding: a decompression bomb, or just a very large image); \
         downscale it (training only uses the training resolution) or raise the pixel limit",
        (*width as f64 * *height as f64) / 1e6, *max_pixels as f64 / 1e6
    )]
    TooLarge {
        width: u32,
        height: u32,
        max_pixels: u64,
    },
    #[error(
        "image is {width}x{height}: too small to train on (at least {MIN_SIDE} px on each side, \
         ideally the training resolution); use a larger version of it or remove it"
    )]
    TooSmall { width: u32, height: u32 },
    #[error(
        "{format} file is truncated (it ends before the image data does; cut off while \
         downloading or copying): download or export it again"
    )]
    Truncated { format: &'static str },
    #[error(
        "cannot decode this {format} file ({message}): it is probably corrupt; export it again"
    )]
    Decode {
        format: &'static str,
        message: String,
    },
    #[error(
        "every pixel is fully transparent, so there is nothing to learn from: \
         export it without the empty alpha channel"
    )]
    FullyTransparent,
    #[error("cannot read the file: {0}")]
    Io(#[source] std::io::Error),
    #[error("broken symbolic link (its target does not exist): fix or remove the link")]
    BrokenSymlink,
    #[error(
        "symbolic link cannot be followed ({0}; e.g. a link loop): point it at a real file or \
         remove it"
    )]
    UnfollowableSymlink(#[source] std::io::Error),
    #[error("not a regular file (a pipe, socket or device): remove it from the image folder")]
    NotRegularFile,
    #[error("caption file is not valid UTF-8 text: re-save it as UTF-8")]
    CaptionNotUtf8,
}

/// Errors of [`load_image_folder`].
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("image folder {} does not exist: pass the folder that holds the training images", .0.display())]
    MissingDir(PathBuf),
    #[error("{} is not a folder: pass the folder that holds the training images, not a file", .0.display())]
    NotADir(PathBuf),
    #[error("cannot list image folder {}: {source}", path.display())]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", bad_files_message(dir, files, *usable))]
    BadFiles {
        dir: PathBuf,
        files: Vec<BadFile>,
        /// How many images were usable.
        usable: usize,
    },
    #[error("no usable training images in {}: {detail}", dir.display())]
    NoImages { dir: PathBuf, detail: String },
}

fn bad_files_message(dir: &Path, files: &[BadFile], usable: usize) -> String {
    let mut s = format!(
        "{} file(s) in image folder {} cannot be used for training:",
        files.len(),
        dir.display()
    );
    for f in files {
        s.push_str("\n  ");
        s.push_str(&f.to_string());
    }
    s.push_str(&format!(
        "\nfix or remove them, or pass --skip-bad to train on the {usable} usable image(s) only"
    ));
    s
}

/// A file's name for messages; non-UTF-8 bytes are shown escaped (`caf\xE9.png`).
pub(crate) fn display_name(path: &Path) -> String {
    let name = path.file_name().unwrap_or(path.as_os_str());
    match name.to_str() {
        Some(s) => s.to_owned(),
        None => {
            let dbg = format!("{name:?}");
            dbg.trim_matches('"').to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_lists_each_image_once_or_twice() {
        assert_eq!(variants(2, false), vec![(0, false), (1, false)]);
        assert_eq!(
            variants(2, true),
            vec![(0, false), (0, true), (1, false), (1, true)]
        );
        assert!(variants(0, true).is_empty());
    }

    #[test]
    fn bad_files_message_lists_every_file_and_the_fix() {
        let err = DataError::BadFiles {
            dir: PathBuf::from("/data/cat"),
            files: vec![
                BadFile {
                    path: PathBuf::from("/data/cat/a.png"),
                    problem: FileProblem::Empty,
                },
                BadFile {
                    path: PathBuf::from("/data/cat/b.png"),
                    problem: FileProblem::NotAnImage {
                        looks_like: "text",
                        named_like: Some("png".into()),
                    },
                },
            ],
            usable: 3,
        };
        let msg = err.to_string();
        assert!(
            msg.starts_with("2 file(s) in image folder /data/cat cannot be used"),
            "{msg}"
        );
        assert!(msg.contains("\n  a.png: empty file (0 bytes)"), "{msg}");
        assert!(
            msg.contains("\n  b.png: not an image: the content looks like text although the file is named .png"),
            "{msg}"
        );
        assert!(
            msg.contains("--skip-bad to train on the 3 usable image(s)"),
            "{msg}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn display_name_escapes_non_utf8() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        let p = Path::new("/x").join(OsStr::from_bytes(b"caf\xe9.png"));
        assert_eq!(display_name(&p), "caf\\xE9.png");
    }
}
