//! Decoding one file: recognising the format from its content, checking the header size before
//! allocating, catching truncated files, making the image upright and 8-bit RGB.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Cursor};
use std::path::Path;

use image::codecs::bmp::BmpDecoder;
use image::codecs::gif::GifDecoder;
use image::codecs::jpeg::JpegDecoder;
use image::codecs::png::PngDecoder;
use image::codecs::webp::WebPDecoder;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageError, Limits, RgbImage};

use super::{FileProblem, LoadImagesOptions, MIN_SIDE, display_name};

/// Extensions that make a file *look* like an image (used only to word error messages).
const IMAGE_EXTENSIONS: &[&str] = &[
    "png", "jpg", "jpeg", "jpe", "jfif", "webp", "bmp", "gif", "tif", "tiff", "heic", "heif",
    "avif", "jxl",
];

pub(super) struct Loaded {
    pub(super) rgb: RgbImage,
    pub(super) alpha: Option<Vec<u8>>,
    /// Already prefixed with the file name.
    pub(super) warnings: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Png,
    Jpeg,
    WebP,
    Bmp,
    Gif,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Png => "PNG",
            Format::Jpeg => "JPEG",
            Format::WebP => "WebP",
            Format::Bmp => "BMP",
            Format::Gif => "GIF",
        }
    }
}

/// Bytes a file may have before it is refused unread: 8 bytes per allowed pixel (RGBA 16-bit,
/// uncompressed) plus 16 MiB of metadata.
fn max_file_bytes(max_pixels: u64) -> u64 {
    max_pixels.saturating_mul(8).saturating_add(16 << 20)
}

/// Read, recognise, size-check and decode one regular file of `len` bytes.
pub(super) fn load_one(
    path: &Path,
    len: u64,
    opts: &LoadImagesOptions,
) -> Result<Loaded, FileProblem> {
    if len == 0 {
        return Err(FileProblem::Empty);
    }
    let limit = max_file_bytes(opts.max_pixels);
    if len > limit {
        return Err(FileProblem::FileTooLarge { bytes: len, limit });
    }
    let bytes = fs::read(path).map_err(FileProblem::Io)?;
    if bytes.is_empty() {
        return Err(FileProblem::Empty);
    }
    let format = sniff(&bytes, path)?;
    let name = display_name(path);
    let mut warnings = Vec::new();

    let mut limits = Limits::default();
    limits.max_alloc = Some(limit.saturating_add(64 << 20));
    let header = |e| map_error(e, format, &bytes);
    let decoded = match format {
        Format::Png => {
            let dec =
                PngDecoder::with_limits(Cursor::new(&bytes[..]), limits.clone()).map_err(header)?;
            if dec.is_apng().unwrap_or(false) {
                warnings.push(format!(
                    "{name}: animated PNG: only its default (first) image is used"
                ));
            }
            decode(dec, format, opts, limits, &bytes)?
        }
        Format::Jpeg => {
            let info = jpeg_structure(&bytes);
            if info.truncated {
                return Err(FileProblem::Truncated { format: "JPEG" });
            }
            let dec = JpegDecoder::new(Cursor::new(&bytes[..])).map_err(header)?;
            if info.components == Some(4) {
                warnings.push(format!(
                    "{name}: CMYK JPEG converted to RGB without colour management (colours may \
                     differ slightly from what an editor shows); save it as RGB to be sure"
                ));
            }
            decode(dec, format, opts, limits, &bytes)?
        }
        Format::WebP => {
            // The RIFF header states the file size; the decoder only says "corrupt bitstream".
            let riff = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
            if u64::from(riff) + 8 > bytes.len() as u64 {
                return Err(FileProblem::Truncated { format: "WebP" });
            }
            let dec = WebPDecoder::new(Cursor::new(&bytes[..])).map_err(header)?;
            if dec.has_animation() {
                warnings.push(format!(
                    "{name}: animated WebP: only the first frame is used"
                ));
            }
            decode(dec, format, opts, limits, &bytes)?
        }
        Format::Bmp => {
            let dec = BmpDecoder::new(Cursor::new(&bytes[..])).map_err(header)?;
            decode(dec, format, opts, limits, &bytes)?
        }
        Format::Gif => {
            let dec = GifDecoder::new(Cursor::new(&bytes[..])).map_err(header)?;
            if gif_frame_count(&bytes) > 1 {
                warnings.push(format!(
                    "{name}: animated GIF: only the first frame is used"
                ));
            }
            decode(dec, format, opts, limits, &bytes)?
        }
    };
    let (rgb, alpha) = to_rgb(decoded, opts.alpha_mask)?;
    Ok(Loaded {
        rgb,
        alpha,
        warnings,
    })
}

/// Check the header size, then decode and make the image upright.
fn decode(
    mut dec: impl ImageDecoder,
    format: Format,
    opts: &LoadImagesOptions,
    limits: Limits,
    bytes: &[u8],
) -> Result<DynamicImage, FileProblem> {
    let (width, height) = dec.dimensions();
    if u64::from(width) * u64::from(height) > opts.max_pixels {
        return Err(FileProblem::TooLarge {
            width,
            height,
            max_pixels: opts.max_pixels,
        });
    }
    if width.min(height) < MIN_SIDE {
        return Err(FileProblem::TooSmall { width, height });
    }
    dec.set_limits(limits)
        .map_err(|e| map_error(e, format, bytes))?;
    // A corrupt EXIF block only loses the orientation, not the image.
    let orientation = dec.orientation().unwrap_or(Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(dec).map_err(|e| map_error(e, format, bytes))?;
    img.apply_orientation(orientation);
    Ok(img)
}

fn map_error(e: ImageError, format: Format, bytes: &[u8]) -> FileProblem {
    if let ImageError::IoError(io) = &e
        && io.kind() == io::ErrorKind::UnexpectedEof
    {
        return FileProblem::Truncated {
            format: format.name(),
        };
    }
    let message = e.to_string();
    let lower = message.to_ascii_lowercase();
    if [
        "eof",
        "end of file",
        "unexpected end",
        "no more data",
        "truncated",
    ]
    .iter()
    .any(|k| lower.contains(k))
    {
        return FileProblem::Truncated {
            format: format.name(),
        };
    }
    // "BM..." text files are sniffed as BMP; call them what they are.
    if looks_like_text(bytes) {
        return FileProblem::NotAnImage {
            looks_like: "text",
            named_like: None,
        };
    }
    FileProblem::Decode {
        format: format.name(),
        message,
    }
}

/// 8-bit RGB, transparency composited on white; the alpha is returned when `alpha_mask` is set
/// and the image has some transparency.
fn to_rgb(img: DynamicImage, alpha_mask: bool) -> Result<(RgbImage, Option<Vec<u8>>), FileProblem> {
    if !img.color().has_alpha() {
        return Ok((img.to_rgb8(), None));
    }
    let rgba = img.to_rgba8();
    let (w, h) = rgba.dimensions();
    let raw = rgba.as_raw();
    if raw.chunks_exact(4).all(|p| p[3] == 255) {
        return Ok((DynamicImage::ImageRgba8(rgba).to_rgb8(), None));
    }
    if raw.chunks_exact(4).all(|p| p[3] == 0) {
        return Err(FileProblem::FullyTransparent);
    }
    let mut rgb = Vec::with_capacity(raw.len() / 4 * 3);
    let mut alpha = Vec::with_capacity(if alpha_mask { raw.len() / 4 } else { 0 });
    for p in raw.chunks_exact(4) {
        let a = u32::from(p[3]);
        for &c in &p[..3] {
            // c * a + white * (1 - a), rounded.
            rgb.push(((u32::from(c) * a + 255 * (255 - a) + 127) / 255) as u8);
        }
        if alpha_mask {
            alpha.push(p[3]);
        }
    }
    let rgb = RgbImage::from_raw(w, h, rgb).expect("3 bytes per pixel");
    Ok((rgb, alpha_mask.then_some(alpha)))
}

/// Recognise the format from the content.
fn sniff(bytes: &[u8], path: &Path) -> Result<Format, FileProblem> {
    let starts = |m: &[u8]| bytes.starts_with(m);
    if starts(b"\x89PNG\r\n\x1a\n") {
        return Ok(Format::Png);
    }
    if starts(&[0xFF, 0xD8, 0xFF]) {
        return Ok(Format::Jpeg);
    }
    if starts(b"GIF87a") || starts(b"GIF89a") {
        return Ok(Format::Gif);
    }
    if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        return Ok(Format::WebP);
    }
    // "BM" plus a known DIB header size, so that text starting with "BM" is not taken for one.
    if starts(b"BM")
        && bytes.len() >= 18
        && matches!(
            u32::from_le_bytes([bytes[14], bytes[15], bytes[16], bytes[17]]),
            12 | 16 | 40 | 52 | 56 | 64 | 108 | 124
        )
    {
        return Ok(Format::Bmp);
    }
    let unsupported = |f: &str| {
        Err(FileProblem::UnsupportedFormat {
            format: f.to_owned(),
        })
    };
    if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        match &bytes[8..12] {
            b"avif" | b"avis" => return unsupported("AVIF"),
            b"heic" | b"heix" | b"heim" | b"heis" | b"hevc" | b"hevx" | b"mif1" | b"msf1" => {
                return unsupported("HEIC/HEIF (iPhone photo)");
            }
            _ => {}
        }
    }
    if starts(b"II*\0") || starts(b"MM\0*") {
        return unsupported("TIFF (or camera RAW)");
    }
    if starts(&[0xFF, 0x0A]) || starts(b"\0\0\0\x0CJXL \r\n\x87\n") {
        return unsupported("JPEG XL");
    }
    if starts(b"8BPS") {
        return unsupported("Photoshop (PSD)");
    }
    // Other formats `image` knows by their magic (QOI, EXR, DDS, ICO, ...). Its "BM" (BMP) and
    // "P1".."P7" (PNM) guesses are skipped for text, which can start with those letters.
    if let Ok(f) = image::guess_format(bytes)
        && f != image::ImageFormat::Bmp
        && !looks_like_text(bytes)
    {
        let name = f.extensions_str().first().copied().unwrap_or("this");
        return unsupported(&name.to_ascii_uppercase());
    }
    let looks_like = if starts(b"%PDF") {
        "a PDF document"
    } else if starts(b"PK\x03\x04") {
        "a ZIP archive (or an Office document)"
    } else if looks_like_text(bytes) {
        let head = String::from_utf8_lossy(&bytes[..bytes.len().min(1024)]).to_ascii_lowercase();
        if head.contains("<svg") {
            return unsupported("SVG (vector)");
        }
        "text"
    } else {
        "unrecognised binary data"
    };
    let named_like = path
        .extension()
        .and_then(OsStr::to_str)
        .map(str::to_ascii_lowercase)
        .filter(|e| IMAGE_EXTENSIONS.contains(&e.as_str()));
    Err(FileProblem::NotAnImage {
        looks_like,
        named_like,
    })
}

/// UTF-8 (possibly cut mid-character at 1 KiB) with no control characters except whitespace.
fn looks_like_text(bytes: &[u8]) -> bool {
    let head = &bytes[..bytes.len().min(1024)];
    let valid = match std::str::from_utf8(head) {
        Ok(s) => s,
        Err(e) if e.error_len().is_none() => {
            std::str::from_utf8(&head[..e.valid_up_to()]).unwrap_or_default()
        }
        Err(_) => return false,
    };
    !valid.is_empty()
        && valid
            .chars()
            .all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t' | '\u{c}'))
}

struct JpegStructure {
    truncated: bool,
    /// Component count from the frame header (1 gray, 3 YCbCr/RGB, 4 CMYK/YCCK).
    components: Option<u8>,
}

/// Walk the JPEG marker segments up to the first scan, then look for the end-of-image marker.
/// Decoders fill a cut-off scan with grey instead of failing, so a truncated file must be caught
/// here: inside entropy-coded data 0xFF is always followed by 0x00 or a restart marker, so an
/// `FF D9` after the first scan header is the real end of the image (trailing data after it, as
/// in motion photos, is fine).
fn jpeg_structure(b: &[u8]) -> JpegStructure {
    let mut components = None;
    let mut pos = 2;
    loop {
        // Markers may be preceded by fill bytes (0xFF).
        if pos >= b.len() || b[pos] != 0xFF {
            // Malformed rather than truncated: leave the verdict to the decoder.
            return JpegStructure {
                truncated: pos >= b.len(),
                components,
            };
        }
        while pos + 1 < b.len() && b[pos + 1] == 0xFF {
            pos += 1;
        }
        let Some(&marker) = b.get(pos + 1) else {
            return JpegStructure {
                truncated: true,
                components,
            };
        };
        match marker {
            0xD8 | 0x01 | 0xD0..=0xD7 => {
                pos += 2;
                continue;
            }
            0xD9 => {
                return JpegStructure {
                    truncated: false,
                    components,
                };
            }
            _ => {}
        }
        let Some(len) = b
            .get(pos + 2..pos + 4)
            .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
        else {
            return JpegStructure {
                truncated: true,
                components,
            };
        };
        let is_sof = matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_sof {
            components = b.get(pos + 9).copied();
        }
        let end = pos + 2 + len;
        if end > b.len() {
            return JpegStructure {
                truncated: true,
                components,
            };
        }
        if marker == 0xDA {
            let has_eoi = b[end..].windows(2).any(|w| w == [0xFF, 0xD9]);
            return JpegStructure {
                truncated: !has_eoi,
                components,
            };
        }
        pos = end;
    }
}

/// Number of frames (image descriptors) in a GIF, counting at most 2; walks the block structure
/// without decoding. A malformed stream stops the count (the decoder reports the error).
fn gif_frame_count(b: &[u8]) -> usize {
    fn skip_sub_blocks(b: &[u8], mut pos: usize) -> Option<usize> {
        loop {
            let n = usize::from(*b.get(pos)?);
            pos += 1;
            if n == 0 {
                return Some(pos);
            }
            pos += n;
        }
    }
    let table = |flags: u8| {
        if flags & 0x80 != 0 {
            3 << ((flags & 7) + 1)
        } else {
            0
        }
    };
    let Some(&flags) = b.get(10) else {
        return 0;
    };
    let mut pos = 13 + table(flags);
    let mut frames = 0;
    while let Some(&block) = b.get(pos) {
        match block {
            0x21 => match skip_sub_blocks(b, pos + 2) {
                Some(p) => pos = p,
                None => break,
            },
            0x2C => {
                frames += 1;
                if frames >= 2 {
                    break;
                }
                let Some(&f) = b.get(pos + 9) else { break };
                match skip_sub_blocks(b, pos + 10 + table(f) + 1) {
                    Some(p) => pos = p,
                    None => break,
                }
            }
            _ => break,
        }
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_detection() {
        assert!(looks_like_text(b"hello\nworld\t!"));
        assert!(looks_like_text("caf\u{e9} na\u{ef}ve".as_bytes()));
        assert!(!looks_like_text(b"\x89PNG\r\n\x1a\n\0\0"));
        assert!(!looks_like_text(b""));
        // Cut in the middle of a multi-byte character at the 1 KiB boundary.
        let mut s = "a".repeat(1023).into_bytes();
        s.extend_from_slice("\u{e9}".as_bytes());
        assert!(looks_like_text(&s));
    }

    #[test]
    fn sniff_names_unsupported_formats() {
        let p = Path::new("x.png");
        let msg = |b: &[u8]| sniff(b, p).unwrap_err().to_string();
        assert!(
            msg(b"II*\0\x08\0\0\0").starts_with("TIFF (or camera RAW) images are not supported")
        );
        assert!(msg(b"\0\0\0\x18ftypheic\0\0\0\0").starts_with("HEIC/HEIF (iPhone photo)"));
        assert!(msg(b"\0\0\0\x1cftypavif\0\0\0\0").starts_with("AVIF"));
        assert!(msg(b"<?xml version=\"1.0\"?>\n<svg xmlns=").starts_with("SVG (vector)"));
        assert!(
            msg(b"%PDF-1.7\n")
                .contains("looks like a PDF document although the file is named .png")
        );
        assert!(msg(b"BMW owners club\n").contains("looks like text"));
        assert!(msg(b"\x01\x02\x03\x04").contains("unrecognised binary data"));
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n", p).unwrap(), Format::Png);
    }

    #[test]
    fn jpeg_structure_of_a_minimal_stream() {
        // SOI, SOF0 (3 components), SOS, scan bytes with a stuffed FF00, EOI.
        let mut j = vec![0xFF, 0xD8];
        j.extend_from_slice(&[0xFF, 0xC0, 0, 17, 8, 0, 16, 0, 16, 3]);
        j.extend_from_slice(&[0; 9]);
        j.extend_from_slice(&[0xFF, 0xDA, 0, 12]);
        j.extend_from_slice(&[0; 10]);
        j.extend_from_slice(&[0x12, 0xFF, 0x00, 0x34]);
        let cut = j.clone();
        j.extend_from_slice(&[0xFF, 0xD9]);
        let s = jpeg_structure(&j);
        assert!(!s.truncated);
        assert_eq!(s.components, Some(3));
        assert!(jpeg_structure(&cut).truncated);
        assert!(jpeg_structure(&j[..12]).truncated);
    }
}
