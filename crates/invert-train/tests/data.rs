//! Training-image loading: every odd or bad input gets a specific message or a documented
//! conversion, and `prepare` crops, flips and scales as specified.
//!
//! Most inputs are written at test time with the `image` crate; the CMYK JPEG, the EXIF-rotated
//! JPEG, the truncated progressive JPEG, the palette PNG, the animated PNG/WebP and the PIL resize
//! reference are small fixtures from `scripts/make_image_fixtures.py` (Pillow).

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use image::codecs::gif::GifEncoder;
use image::{
    DynamicImage, Frame, GrayImage, ImageBuffer, ImageFormat, Luma, Rgb, RgbImage, Rgba, RgbaImage,
};
use invert_train::data::{
    Crop, DataError, FileProblem, ImageSet, LoadImagesOptions, TrainImage, load_image_folder,
    prepare, variants,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

// ---------------------------------------------------------------------------------------------
// helpers

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("invert-data-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/images")
        .join(name)
}

fn solid(w: u32, h: u32, c: [u8; 3]) -> RgbImage {
    RgbImage::from_pixel(w, h, Rgb(c))
}

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, format).unwrap();
    buf.into_inner()
}

fn write_png(path: &Path, img: impl Into<DynamicImage>) {
    std::fs::write(path, encode(&img.into(), ImageFormat::Png)).unwrap();
}

/// Noise, so that compressed files are long enough to cut in the middle of the pixel data.
fn noise(w: u32, h: u32) -> RgbImage {
    let mut s = 0x2545_f491_u32;
    RgbImage::from_fn(w, h, |_, _| {
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 24) as u8
        };
        Rgb([next(), next(), next()])
    })
}

/// Three good 32x32 images, so a folder is usable apart from what a test adds.
fn good_folder() -> TempDir {
    let d = TempDir::new();
    for (i, c) in [[200, 10, 10], [10, 200, 10], [10, 10, 200]]
        .iter()
        .enumerate()
    {
        write_png(&d.file(&format!("good{i}.png")), solid(32, 32, *c));
    }
    d
}

fn opts() -> LoadImagesOptions {
    LoadImagesOptions::default()
}

fn load(dir: &Path) -> Result<ImageSet, DataError> {
    load_image_folder(dir, &opts())
}

/// Load a folder that must fail with `BadFiles`; return the whole message and the problems.
fn bad_files(dir: &Path) -> (String, Vec<(String, String)>) {
    let err = load(dir).expect_err("folder with a bad file must fail");
    let msg = err.to_string();
    match err {
        DataError::BadFiles { files, .. } => (
            msg,
            files
                .iter()
                .map(|f| {
                    (
                        f.path.file_name().unwrap().to_string_lossy().into_owned(),
                        f.problem.to_string(),
                    )
                })
                .collect(),
        ),
        other => panic!("expected BadFiles, got {other:?}"),
    }
}

/// The single bad file's message in a folder of good images plus `name`.
fn only_problem(dir: &Path, name: &str) -> String {
    let (msg, files) = bad_files(dir);
    assert_eq!(files.len(), 1, "{msg}");
    assert_eq!(files[0].0, name, "{msg}");
    files[0].1.clone()
}

fn image_named<'a>(set: &'a ImageSet, name: &str) -> &'a TrainImage {
    set.images
        .iter()
        .find(|i| i.path.file_name().unwrap().to_string_lossy() == name)
        .unwrap_or_else(|| panic!("{name} not loaded"))
}

fn px(img: &TrainImage, x: u32, y: u32) -> [u8; 3] {
    img.rgb.get_pixel(x, y).0
}

fn close(a: [u8; 3], b: [u8; 3], tol: u8) -> bool {
    a.iter().zip(b).all(|(&x, y)| x.abs_diff(y) <= tol)
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

/// A valid-looking PNG whose header claims `w x h` RGB pixels, with a few bytes of pixel data.
fn png_bomb(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    // zlib header + an empty stored block: far less data than the header promises.
    png_chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x01, 0x01, 0x00, 0x00, 0xFF, 0xFF, 0, 0, 0, 1],
    );
    png_chunk(&mut out, b"IEND", &[]);
    out
}

// ---------------------------------------------------------------------------------------------
// folder rules

#[test]
fn loads_sorted_with_captions_and_ignores_hidden_files() {
    let d = TempDir::new();
    write_png(&d.file("b.png"), solid(20, 20, [0, 0, 255]));
    write_png(&d.file("a.png"), solid(20, 20, [255, 0, 0]));
    write_png(&d.file("c.jpg.png"), solid(20, 20, [0, 255, 0]));
    std::fs::write(d.file("a.txt"), "\u{feff}  a red square \n").unwrap();
    std::fs::write(d.file("c.jpg.png.txt"), "green").unwrap();
    std::fs::write(d.file("b.txt"), "   \n").unwrap();
    std::fs::write(d.file("orphan.txt"), "nobody").unwrap();
    std::fs::write(d.file(".DS_Store"), [0u8, 1, 2]).unwrap();
    std::fs::write(d.file("._a.png"), [0u8, 5, 22, 7]).unwrap();
    std::fs::write(d.file("Thumbs.db"), [0xd0u8, 0xcf]).unwrap();
    std::fs::write(d.file("README.md"), "# my concept\n").unwrap();
    std::fs::create_dir(d.file("more")).unwrap();
    write_png(&d.file("more/d.png"), solid(20, 20, [9, 9, 9]));

    let set = load(d.path()).unwrap();
    let names: Vec<_> = set.images.iter().map(|i| i.name()).collect();
    assert_eq!(names, ["a.png", "b.png", "c.jpg.png"]);
    assert_eq!(set.images[0].caption.as_deref(), Some("a red square"));
    assert_eq!(set.images[1].caption, None);
    assert_eq!(set.images[2].caption.as_deref(), Some("green"));
    assert_eq!(px(&set.images[0], 3, 3), [255, 0, 0]);
    let w = set.warnings.join("\n");
    assert!(w.contains("b.png: its caption file is empty"), "{w}");
    assert!(
        w.contains("orphan.txt: caption file without a matching image"),
        "{w}"
    );
    assert!(w.contains("subfolders are not searched"), "{w}");
    assert!(w.contains("ignored: more/"), "{w}");
    assert!(!w.contains("training image(s)"), "3 images is enough: {w}");
}

#[test]
fn content_decides_the_format_not_the_extension() {
    let d = good_folder();
    let jpeg = encode(
        &DynamicImage::ImageRgb8(solid(24, 24, [250, 250, 250])),
        ImageFormat::Jpeg,
    );
    std::fs::write(d.file("really_a_jpeg.png"), jpeg).unwrap();
    std::fs::write(
        d.file("no_extension"),
        encode(
            &DynamicImage::ImageRgb8(solid(24, 24, [0, 0, 0])),
            ImageFormat::Bmp,
        ),
    )
    .unwrap();
    let set = load(d.path()).unwrap();
    assert_eq!(set.images.len(), 5);
    assert!(close(
        px(image_named(&set, "really_a_jpeg.png"), 5, 5),
        [250, 250, 250],
        3
    ));
    assert_eq!(px(image_named(&set, "no_extension"), 5, 5), [0, 0, 0]);
}

#[test]
fn every_bad_file_is_listed_in_one_error() {
    let d = good_folder();
    std::fs::write(d.file("empty.png"), b"").unwrap();
    std::fs::write(d.file("notes.png"), "this is not a picture\n").unwrap();
    std::fs::write(d.file("report.pdf"), b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n").unwrap();
    write_png(&d.file("dot.png"), solid(1, 1, [0, 0, 0]));
    let (msg, files) = bad_files(d.path());
    let names: Vec<_> = files.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(
        names,
        ["dot.png", "empty.png", "notes.png", "report.pdf"],
        "{msg}"
    );
    assert!(msg.starts_with("4 file(s) in image folder "), "{msg}");
    assert!(msg.contains("\n  empty.png: empty file (0 bytes)"), "{msg}");
    assert!(
        msg.contains("\n  dot.png: image is 1x1: too small to train on"),
        "{msg}"
    );
    assert!(msg.contains(
        "\n  notes.png: not an image: the content looks like text although the file is named .png"
    ), "{msg}");
    assert!(
        msg.contains("\n  report.pdf: not an image: the content looks like a PDF document;"),
        "{msg}"
    );
    assert!(
        msg.ends_with("or pass --skip-bad to train on the 3 usable image(s) only"),
        "{msg}"
    );
}

#[test]
fn skip_bad_turns_bad_files_into_warnings() {
    let d = good_folder();
    std::fs::write(d.file("empty.png"), b"").unwrap();
    let set = load_image_folder(
        d.path(),
        &LoadImagesOptions {
            skip_bad: true,
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(set.images.len(), 3);
    assert!(
        set.warnings
            .iter()
            .any(|w| w == "skipped empty.png: empty file (0 bytes): copy it again or delete it"),
        "{:?}",
        set.warnings
    );
}

#[test]
fn no_usable_images_is_an_error() {
    let d = TempDir::new();
    let err = load(d.path()).unwrap_err();
    assert!(matches!(err, DataError::NoImages { .. }));
    assert!(err.to_string().contains("the folder is empty"), "{err}");

    std::fs::write(d.file("a.png"), b"").unwrap();
    let err = load_image_folder(
        d.path(),
        &LoadImagesOptions {
            skip_bad: true,
            ..opts()
        },
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("all 1 file(s) were skipped as unusable"),
        "{err}"
    );

    let d = TempDir::new();
    std::fs::create_dir(d.file("cats")).unwrap();
    let err = load(d.path()).unwrap_err();
    assert!(
        err.to_string()
            .contains("holds only subfolders (cats/), which are not searched"),
        "{err}"
    );
}

#[test]
fn missing_folder_and_file_instead_of_folder() {
    let d = TempDir::new();
    let err = load(&d.file("nope")).unwrap_err();
    assert!(matches!(err, DataError::MissingDir(_)), "{err}");
    assert!(err.to_string().contains("does not exist"));
    write_png(&d.file("x.png"), solid(20, 20, [1, 2, 3]));
    let err = load(&d.file("x.png")).unwrap_err();
    assert!(matches!(err, DataError::NotADir(_)), "{err}");
    assert!(err.to_string().contains("is not a folder"));
}

#[test]
fn fewer_than_three_images_warns() {
    let d = TempDir::new();
    write_png(&d.file("a.png"), solid(20, 20, [1, 2, 3]));
    write_png(&d.file("b.png"), solid(20, 20, [1, 2, 3]));
    let set = load(d.path()).unwrap();
    assert_eq!(set.images.len(), 2);
    assert!(
        set.warnings
            .iter()
            .any(|w| w.starts_with("only 2 training image(s)")),
        "{:?}",
        set.warnings
    );
}

#[test]
fn non_utf8_caption_is_a_bad_file() {
    let d = good_folder();
    std::fs::write(d.file("good0.txt"), b"caf\xe9").unwrap();
    assert_eq!(
        only_problem(d.path(), "good0.txt"),
        "caption file is not valid UTF-8 text: re-save it as UTF-8"
    );
}

// ---------------------------------------------------------------------------------------------
// hardening: damaged and hostile files

#[test]
fn truncated_png() {
    let d = good_folder();
    let png = encode(&DynamicImage::ImageRgb8(noise(64, 64)), ImageFormat::Png);
    std::fs::write(d.file("cut.png"), &png[..png.len() / 2]).unwrap();
    let p = only_problem(d.path(), "cut.png");
    assert!(p.starts_with("PNG file is truncated"), "{p}");
}

#[test]
fn truncated_jpeg_baseline_and_progressive() {
    let d = good_folder();
    let jpg = encode(&DynamicImage::ImageRgb8(noise(64, 64)), ImageFormat::Jpeg);
    std::fs::write(d.file("cut.jpg"), &jpg[..jpg.len() * 2 / 3]).unwrap();
    std::fs::copy(
        fixture("truncated_progressive.jpg"),
        d.file("cut_progressive.jpg"),
    )
    .unwrap();
    let (msg, files) = bad_files(d.path());
    assert_eq!(files.len(), 2, "{msg}");
    for (_, p) in &files {
        assert!(
            p.starts_with("JPEG file is truncated (it ends before the image data does"),
            "{p}"
        );
    }
    // The intact file with data after the end-of-image marker (as in motion photos) is fine.
    let d = good_folder();
    let mut tail = jpg.clone();
    tail.extend_from_slice(b"\0\0\0\x18ftypmp42 trailing video");
    std::fs::write(d.file("motion.jpg"), tail).unwrap();
    assert_eq!(load(d.path()).unwrap().images.len(), 4);
}

#[test]
fn truncated_gif_bmp_webp() {
    let img = DynamicImage::ImageRgba8(DynamicImage::ImageRgb8(noise(64, 64)).to_rgba8());
    for (name, fmt) in [
        ("cut.gif", ImageFormat::Gif),
        ("cut.bmp", ImageFormat::Bmp),
        ("cut.webp", ImageFormat::WebP),
    ] {
        let d = good_folder();
        let bytes = encode(&img, fmt);
        std::fs::write(d.file(name), &bytes[..bytes.len() / 2]).unwrap();
        let p = only_problem(d.path(), name);
        assert!(
            p.contains("file is truncated (it ends before the image data does"),
            "{name}: {p}"
        );
    }
}

#[test]
fn decompression_bomb_is_refused_from_the_header() {
    let d = good_folder();
    std::fs::write(d.file("bomb.png"), png_bomb(30000, 30000)).unwrap();
    // GIF: logical screen 30000x30000 holding one 1x1 frame (decoding would allocate 3.6 GB).
    let mut gif = b"GIF89a".to_vec();
    gif.extend_from_slice(&30000u16.to_le_bytes());
    gif.extend_from_slice(&30000u16.to_le_bytes());
    gif.extend_from_slice(&[0, 0, 0]);
    gif.extend_from_slice(&[0x2C, 0, 0, 0, 0, 1, 0, 1, 0, 0]);
    gif.extend_from_slice(&[2, 2, 0x4C, 0x01, 0, 0x3B]);
    std::fs::write(d.file("bomb.gif"), gif).unwrap();
    // BMP: 30000x30000 24-bit, no pixel data.
    let mut bmp = b"BM".to_vec();
    bmp.extend_from_slice(&54u32.to_le_bytes());
    bmp.extend_from_slice(&[0, 0, 0, 0]);
    bmp.extend_from_slice(&54u32.to_le_bytes());
    bmp.extend_from_slice(&40u32.to_le_bytes());
    bmp.extend_from_slice(&30000i32.to_le_bytes());
    bmp.extend_from_slice(&30000i32.to_le_bytes());
    bmp.extend_from_slice(&1u16.to_le_bytes());
    bmp.extend_from_slice(&24u16.to_le_bytes());
    bmp.extend_from_slice(&[0; 24]);
    std::fs::write(d.file("bomb.bmp"), bmp).unwrap();

    let start = std::time::Instant::now();
    let (msg, files) = bad_files(d.path());
    assert!(start.elapsed().as_secs() < 5, "a bomb must not be decoded");
    assert_eq!(files.len(), 3, "{msg}");
    for (_, p) in &files {
        assert!(
            p.starts_with("image is 30000x30000 = 900.0 megapixels, over the 67.1 megapixel limit (refused before decoding"),
            "{p}"
        );
    }
    // A lower limit applies to ordinary images too.
    let err = load_image_folder(
        d.path(),
        &LoadImagesOptions {
            max_pixels: 1000,
            skip_bad: true,
            ..opts()
        },
    )
    .unwrap_err();
    assert!(matches!(err, DataError::NoImages { .. }), "{err}");
}

#[test]
fn fully_transparent_image_is_refused() {
    let d = good_folder();
    write_png(
        &d.file("clear.png"),
        RgbaImage::from_pixel(20, 20, Rgba([9, 9, 9, 0])),
    );
    assert!(only_problem(d.path(), "clear.png").starts_with("every pixel is fully transparent"));
}

#[cfg(unix)]
#[test]
fn symlink_loop_broken_link_and_self_link_do_not_hang() {
    use std::os::unix::fs::symlink;
    let d = good_folder();
    symlink("loop_b.png", d.file("loop_a.png")).unwrap();
    symlink("loop_a.png", d.file("loop_b.png")).unwrap();
    symlink("missing.png", d.file("dangling.png")).unwrap();
    symlink(".", d.file("self")).unwrap();
    symlink("good0.png", d.file("alias.png")).unwrap();
    let (msg, files) = bad_files(d.path());
    assert_eq!(files.len(), 3, "{msg}");
    assert_eq!(
        files[0],
        (
            "dangling.png".into(),
            "broken symbolic link (its target does not exist): fix or remove the link".into()
        )
    );
    for f in &files[1..] {
        assert!(
            f.1.starts_with("symbolic link cannot be followed ("),
            "{f:?}"
        );
        assert!(f.1.contains("link loop"), "{f:?}");
    }
    let set = load_image_folder(
        d.path(),
        &LoadImagesOptions {
            skip_bad: true,
            ..opts()
        },
    )
    .unwrap();
    // The link to a good image is followed; the link to the folder itself is not walked.
    assert_eq!(set.images.len(), 4);
    assert!(
        set.warnings.iter().any(|w| w.contains("ignored: self/")),
        "{:?}",
        set.warnings
    );
}

#[cfg(unix)]
#[test]
fn named_pipe_is_refused_without_reading() {
    let d = good_folder();
    let ok = std::process::Command::new("mkfifo")
        .arg(d.file("pipe.png"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("mkfifo unavailable; skipped");
        return;
    }
    assert_eq!(
        only_problem(d.path(), "pipe.png"),
        "not a regular file (a pipe, socket or device): remove it from the image folder"
    );
}

#[cfg(unix)]
#[test]
fn non_utf8_file_names_load_and_are_shown_escaped() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let d = good_folder();
    let name = OsStr::from_bytes(b"caf\xe9.png");
    write_png(&d.path().join(name), solid(20, 20, [5, 6, 7]));
    std::fs::write(d.path().join(OsStr::from_bytes(b"caf\xe9.txt")), "caption").unwrap();
    std::fs::write(d.path().join(OsStr::from_bytes(b"bad\xff.png")), b"").unwrap();
    let (msg, _) = bad_files(d.path());
    assert!(msg.contains("\n  bad\\xFF.png: empty file"), "{msg}");
    std::fs::remove_file(d.path().join(OsStr::from_bytes(b"bad\xff.png"))).unwrap();
    let set = load(d.path()).unwrap();
    let img = set
        .images
        .iter()
        .find(|i| i.path.file_name() == Some(name))
        .unwrap();
    assert_eq!(img.name(), "caf\\xE9.png");
    assert_eq!(img.caption.as_deref(), Some("caption"));
    assert_eq!(px(img, 0, 0), [5, 6, 7]);
}

// ---------------------------------------------------------------------------------------------
// conversions

#[test]
fn exif_rotated_jpeg_comes_out_upright() {
    let d = TempDir::new();
    std::fs::copy(fixture("exif_rotate6.jpg"), d.file("phone.jpg")).unwrap();
    let set = load(d.path()).unwrap();
    let img = &set.images[0];
    // Stored 32x16 with orientation 6: displayed 16x32, red top-right, green top-left.
    assert_eq!(img.size(), (16, 32));
    assert!(
        close(px(img, 13, 3), [255, 0, 0], 40),
        "{:?}",
        px(img, 13, 3)
    );
    assert!(close(px(img, 2, 3), [0, 255, 0], 40), "{:?}", px(img, 2, 3));
    assert!(
        close(px(img, 8, 28), [255, 255, 255], 10),
        "{:?}",
        px(img, 8, 28)
    );
}

#[test]
fn cmyk_jpeg_is_converted_to_rgb_with_a_warning() {
    let d = TempDir::new();
    std::fs::copy(fixture("cmyk.jpg"), d.file("print.jpg")).unwrap();
    let set = load(d.path()).unwrap();
    let img = &set.images[0];
    assert_eq!(img.size(), (16, 16));
    // Pillow reads these as (255, 0, 0) and (0, 0, 255).
    assert!(
        close(px(img, 8, 2), [255, 0, 0], 40),
        "top {:?}",
        px(img, 8, 2)
    );
    assert!(
        close(px(img, 8, 13), [0, 0, 255], 40),
        "bottom {:?}",
        px(img, 8, 13)
    );
    assert!(
        set.warnings
            .iter()
            .any(|w| w.starts_with("print.jpg: CMYK JPEG converted to RGB")),
        "{:?}",
        set.warnings
    );
}

#[test]
fn sixteen_bit_and_grayscale_png_become_8_bit_rgb() {
    let d = TempDir::new();
    let rgb16: ImageBuffer<Rgb<u16>, Vec<u16>> = ImageBuffer::from_fn(20, 20, |x, _| {
        if x < 10 {
            Rgb([65535, 0, 32896])
        } else {
            Rgb([0, 65535, 0])
        }
    });
    write_png(&d.file("deep.png"), DynamicImage::ImageRgb16(rgb16));
    let gray16: ImageBuffer<Luma<u16>, Vec<u16>> = ImageBuffer::from_pixel(20, 20, Luma([32896]));
    write_png(&d.file("gray16.png"), DynamicImage::ImageLuma16(gray16));
    write_png(
        &d.file("gray8.png"),
        GrayImage::from_pixel(20, 20, Luma([77])),
    );
    let set = load(d.path()).unwrap();
    assert_eq!(px(image_named(&set, "deep.png"), 2, 2), [255, 0, 128]);
    assert_eq!(px(image_named(&set, "deep.png"), 15, 2), [0, 255, 0]);
    assert_eq!(px(image_named(&set, "gray16.png"), 2, 2), [128, 128, 128]);
    assert_eq!(px(image_named(&set, "gray8.png"), 2, 2), [77, 77, 77]);
}

#[test]
fn palette_png_with_transparency_composites_on_white_or_keeps_alpha() {
    let d = TempDir::new();
    std::fs::copy(fixture("palette_trns.png"), d.file("palette.png")).unwrap();
    let set = load(d.path()).unwrap();
    let img = &set.images[0];
    assert_eq!(img.size(), (32, 32));
    assert_eq!(
        px(img, 2, 2),
        [255, 255, 255],
        "transparent red becomes white"
    );
    assert_eq!(px(img, 30, 2), [0, 0, 255]);
    assert_eq!(img.alpha, None, "no alpha kept without --alpha-mask");

    let set = load_image_folder(
        d.path(),
        &LoadImagesOptions {
            alpha_mask: true,
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(px(&set.images[0], 2, 2), [255, 255, 255]);
    let a = set.images[0]
        .alpha
        .as_ref()
        .expect("alpha kept with --alpha-mask");
    assert_eq!((a[2 * 32 + 2], a[2 * 32 + 30]), (0, 255));
}

#[test]
fn rgba_is_composited_on_white_and_alpha_is_optional_weight() {
    let d = TempDir::new();
    let img = RgbaImage::from_fn(20, 20, |x, _| {
        if x < 10 {
            Rgba([255, 0, 0, 128])
        } else {
            Rgba([0, 0, 0, 255])
        }
    });
    write_png(&d.file("half.png"), img);
    let opaque = RgbaImage::from_pixel(20, 20, Rgba([1, 2, 3, 255]));
    write_png(&d.file("opaque_rgba.png"), opaque);
    let set = load(d.path()).unwrap();
    let half = image_named(&set, "half.png");
    // 255*128/255 + 255*127/255 = 255; 0*128/255 + 255*127/255 = 127.
    assert_eq!(px(half, 2, 2), [255, 127, 127]);
    assert_eq!(px(half, 15, 2), [0, 0, 0]);
    assert_eq!(half.alpha, None);

    let set = load_image_folder(
        d.path(),
        &LoadImagesOptions {
            alpha_mask: true,
            ..opts()
        },
    )
    .unwrap();
    let half = image_named(&set, "half.png");
    assert_eq!(
        px(half, 2, 2),
        [255, 127, 127],
        "still composited: the VAE sees white"
    );
    let a = half.alpha.as_ref().unwrap();
    assert_eq!((a[0], a[15]), (128, 255));
    assert_eq!(
        image_named(&set, "opaque_rgba.png").alpha,
        None,
        "fully opaque: no weight map"
    );
}

#[test]
fn animated_gif_uses_the_first_frame_with_a_warning() {
    let d = TempDir::new();
    let mut bytes = Vec::new();
    {
        let mut enc = GifEncoder::new(&mut bytes);
        enc.encode_frames(vec![
            Frame::new(RgbaImage::from_pixel(20, 20, Rgba([255, 0, 0, 255]))),
            Frame::new(RgbaImage::from_pixel(20, 20, Rgba([0, 0, 255, 255]))),
        ])
        .unwrap();
    }
    std::fs::write(d.file("anim.gif"), &bytes).unwrap();
    let mut still = Vec::new();
    GifEncoder::new(&mut still)
        .encode_frame(Frame::new(RgbaImage::from_pixel(
            20,
            20,
            Rgba([0, 255, 0, 255]),
        )))
        .unwrap();
    std::fs::write(d.file("still.gif"), &still).unwrap();
    let set = load(d.path()).unwrap();
    assert!(close(
        px(image_named(&set, "anim.gif"), 5, 5),
        [255, 0, 0],
        8
    ));
    assert!(close(
        px(image_named(&set, "still.gif"), 5, 5),
        [0, 255, 0],
        8
    ));
    let w: Vec<_> = set
        .warnings
        .iter()
        .filter(|w| w.contains("animated"))
        .collect();
    assert_eq!(w, ["anim.gif: animated GIF: only the first frame is used"]);
}

#[test]
fn animated_png_and_webp_use_the_first_frame_with_a_warning() {
    let d = TempDir::new();
    std::fs::copy(fixture("animated.png"), d.file("anim.png")).unwrap();
    std::fs::copy(fixture("animated.webp"), d.file("anim.webp")).unwrap();
    let set = load(d.path()).unwrap();
    for img in &set.images {
        assert!(
            close(px(img, 5, 5), [255, 0, 0], 8),
            "{}: {:?}",
            img.name(),
            px(img, 5, 5)
        );
    }
    assert_eq!(
        set.warnings
            .iter()
            .filter(|w| w.contains("animated"))
            .collect::<Vec<_>>(),
        [
            "anim.png: animated PNG: only its default (first) image is used",
            "anim.webp: animated WebP: only the first frame is used"
        ]
    );
}

#[test]
fn webp_and_bmp_load() {
    let d = TempDir::new();
    let img = DynamicImage::ImageRgba8(RgbaImage::from_pixel(20, 20, Rgba([10, 20, 30, 255])));
    std::fs::write(d.file("a.webp"), encode(&img, ImageFormat::WebP)).unwrap();
    std::fs::write(d.file("b.bmp"), encode(&img, ImageFormat::Bmp)).unwrap();
    let set = load(d.path()).unwrap();
    assert_eq!(px(&set.images[0], 3, 3), [10, 20, 30]);
    assert_eq!(px(&set.images[1], 3, 3), [10, 20, 30]);
}

#[test]
fn resolution_option_downscales_at_load_and_warns_about_upscaling() {
    let d = TempDir::new();
    write_png(&d.file("big.png"), noise(128, 64));
    write_png(&d.file("small.png"), noise(20, 24));
    let o = LoadImagesOptions {
        resolution: Some(32),
        ..opts()
    };
    let set = load_image_folder(d.path(), &o).unwrap();
    assert_eq!(image_named(&set, "big.png").size(), (64, 32));
    assert_eq!(image_named(&set, "small.png").size(), (20, 24));
    assert!(
        set.warnings.iter().any(|w| w
            .starts_with("1 image(s) are smaller than the training resolution 32 px")
            && w.ends_with("small.png (20x24)")),
        "{:?}",
        set.warnings
    );
    // Downscaling at load is exactly the first step of `prepare`.
    let full = load(d.path()).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    for name in ["big.png", "small.png"] {
        assert_eq!(
            prepare(image_named(&set, name), 32, Crop::Center, false, &mut rng),
            prepare(image_named(&full, name), 32, Crop::Center, false, &mut rng),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// prepare

fn train_image(rgb: RgbImage, alpha: Option<Vec<u8>>) -> TrainImage {
    TrainImage {
        path: PathBuf::from("t.png"),
        original_size: rgb.dimensions(),
        rgb,
        alpha,
        caption: None,
    }
}

/// Channel `c` of pixel (x, y) in a `[3, r, r]` buffer, back in 0..=255.
fn at(p: &[f32], r: usize, c: usize, x: usize, y: usize) -> f32 {
    (p[c * r * r + y * r + x] + 1.0) * 127.5
}

#[test]
fn center_crop_takes_the_middle() {
    // 48x16, thirds red / green / blue: the 16x16 center crop is all green.
    let img = RgbImage::from_fn(48, 16, |x, _| match x / 16 {
        0 => Rgb([255, 0, 0]),
        1 => Rgb([0, 255, 0]),
        _ => Rgb([0, 0, 255]),
    });
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let out = prepare(
        &train_image(img.clone(), None),
        16,
        Crop::Center,
        false,
        &mut rng,
    );
    assert_eq!(out.pixels.len(), 3 * 16 * 16);
    assert!(
        out.pixels
            .chunks(256)
            .nth(1)
            .unwrap()
            .iter()
            .all(|&v| v == 1.0)
    );
    assert!(
        out.pixels[..256]
            .iter()
            .chain(&out.pixels[512..])
            .all(|&v| v == -1.0)
    );
    // Portrait: the middle rows.
    let tall = DynamicImage::ImageRgb8(img).rotate90().to_rgb8();
    let out = prepare(&train_image(tall, None), 16, Crop::Center, false, &mut rng);
    assert!(
        out.pixels
            .chunks(256)
            .nth(1)
            .unwrap()
            .iter()
            .all(|&v| v == 1.0)
    );
}

#[test]
fn flip_mirrors_pixels_and_weight() {
    let img = RgbImage::from_fn(16, 16, |x, y| Rgb([(x * 16) as u8, (y * 16) as u8, 7]));
    let alpha: Vec<u8> = (0..256).map(|i| (i % 16 * 10) as u8).collect();
    let t = train_image(img, Some(alpha));
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let a = prepare(&t, 16, Crop::Center, false, &mut rng);
    let b = prepare(&t, 16, Crop::Center, true, &mut rng);
    for c in 0..3 {
        for y in 0..16 {
            for x in 0..16 {
                assert_eq!(
                    a.pixels[c * 256 + y * 16 + x],
                    b.pixels[c * 256 + y * 16 + 15 - x]
                );
            }
        }
    }
    assert!((at(&a.pixels, 16, 0, 3, 9) - 48.0).abs() < 1e-3);
    assert!((at(&b.pixels, 16, 0, 3, 9) - 192.0).abs() < 1e-3);
    let (wa, wb) = (a.weight.unwrap(), b.weight.unwrap());
    assert_eq!(wa[5], 50.0 / 255.0);
    assert_eq!(wb[15 - 5], 50.0 / 255.0);
}

#[test]
fn random_crop_is_reproducible_from_the_seed_and_varies() {
    // 64x16: every column a different value, so the crop offset is visible in pixel (0, 0).
    let img = RgbImage::from_fn(64, 16, |x, _| Rgb([(x * 4) as u8, 0, 0]));
    let t = train_image(img, None);
    let offsets = |seed: u64| -> Vec<u32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..20)
            .map(|_| {
                let p = prepare(&t, 16, Crop::Random, false, &mut rng);
                (at(&p.pixels, 16, 0, 0, 0).round() as u32) / 4
            })
            .collect()
    };
    let a = offsets(42);
    assert_eq!(a, offsets(42), "same seed, same crops");
    assert_ne!(a, offsets(43), "another seed, other crops");
    assert!(a.iter().all(|&o| o <= 48), "{a:?}");
    let distinct: std::collections::BTreeSet<_> = a.iter().collect();
    assert!(distinct.len() > 5, "{a:?}");
}

#[test]
fn output_is_in_minus_one_to_one() {
    let t = train_image(noise(40, 30), None);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for crop in [Crop::Center, Crop::Random] {
        for res in [8, 16, 64] {
            let p = prepare(&t, res, crop, true, &mut rng);
            assert_eq!(p.pixels.len(), 3 * res * res);
            assert!(p.pixels.iter().all(|v| (-1.0..=1.0).contains(v)));
            assert!(p.weight.is_none());
        }
    }
    let white = prepare(
        &train_image(solid(16, 16, [255; 3]), None),
        16,
        Crop::Center,
        false,
        &mut rng,
    );
    assert!(white.pixels.iter().all(|&v| v == 1.0));
    let black = prepare(
        &train_image(solid(16, 16, [0; 3]), None),
        16,
        Crop::Center,
        false,
        &mut rng,
    );
    assert!(black.pixels.iter().all(|&v| v == -1.0));
}

#[test]
fn weight_is_resized_and_cropped_like_the_pixels() {
    // 64x32 alpha: left half 0, right half 255; res 16 -> resized 32x16, center crop x 8..24.
    let alpha: Vec<u8> = (0..64 * 32)
        .map(|i| if i % 64 < 32 { 0 } else { 255 })
        .collect();
    let t = train_image(solid(64, 32, [9, 9, 9]), Some(alpha));
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let w = prepare(&t, 16, Crop::Center, false, &mut rng)
        .weight
        .unwrap();
    assert_eq!(w.len(), 256);
    assert!(w.iter().all(|v| (0.0..=1.0).contains(v)));
    assert_eq!(w[5 * 16 + 1], 0.0);
    assert_eq!(w[5 * 16 + 14], 1.0);
}

#[test]
fn resize_matches_pil_bicubic_as_diffusers_uses_it() {
    // diffusers: center crop 32x32 of the 48x32 image, then PIL bicubic to 16x16. Ours: resize
    // the short side to 16 (Catmull-Rom), then center crop.
    let src = image::open(fixture("resize_src.png")).unwrap().to_rgb8();
    let reference = image::open(fixture("resize_pil_bicubic_16.png"))
        .unwrap()
        .to_rgb8();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let out = prepare(&train_image(src, None), 16, Crop::Center, false, &mut rng);
    let (mut sum, mut max) = (0f32, 0f32);
    for c in 0..3 {
        for y in 0..16 {
            for x in 0..16 {
                let d = (at(&out.pixels, 16, c, x, y)
                    - f32::from(reference.get_pixel(x as u32, y as u32)[c]))
                .abs();
                sum += d;
                max = max.max(d);
            }
        }
    }
    let mean = sum / (3.0 * 256.0);
    eprintln!("vs PIL bicubic: mean |diff| {mean:.2}, max {max:.1} (0..255)");
    // Measured: mean 0.06, max 1 (rounding only).
    assert!(mean < 0.5 && max <= 2.0, "mean {mean}, max {max}");
}

#[test]
fn variants_for_latent_caching() {
    assert_eq!(variants(3, false), [(0, false), (1, false), (2, false)]);
    assert_eq!(
        variants(2, true),
        [(0, false), (0, true), (1, false), (1, true)]
    );
}

#[test]
fn file_problem_messages_name_the_fix() {
    let too_large = FileProblem::TooLarge {
        width: 30000,
        height: 30000,
        max_pixels: 64 << 20,
    };
    assert!(too_large.to_string().contains("downscale it"));
    let unsupported = FileProblem::UnsupportedFormat {
        format: "TIFF".into(),
    };
    assert!(
        unsupported
            .to_string()
            .contains("convert it to PNG or JPEG")
    );
}
