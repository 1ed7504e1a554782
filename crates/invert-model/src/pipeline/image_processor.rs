//! The picture img2img starts from, as diffusers' `load_image` and `VaeImageProcessor.preprocess`
//! (image_processor.py) prepare it: read the file upright (EXIF orientation, like
//! `ImageOps.exif_transpose`) as 8-bit RGB (`convert("RGB")`: alpha is dropped, not composited),
//! default the size to the picture's rounded down to a multiple of 8 (`get_default_height_width`),
//! resize to the size asked for with Lanczos (`resample="lanczos"`, the processor's default; only
//! when the size differs: PIL returns a copy then), and map `[0, 255]` to `[-1, 1]`
//! (`2 * x / 255 - 1`).
//!
//! The resize is the `image` crate's Lanczos3, which widens its kernel when downscaling like
//! PIL's, but is not PIL's code: resized pictures are close to diffusers', not identical.

use std::io;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use image::imageops::{self, FilterType};
use image::{DynamicImage, ImageDecoder, ImageError, ImageReader, RgbImage};

/// Why the init image cannot be used; each message names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum InitImageError {
    #[error("init image {}: no such file; check the path", .path.display())]
    Missing { path: PathBuf },
    #[error("init image {}: cannot read it ({reason}); check that it is a readable file", .path.display())]
    Read { path: PathBuf, reason: String },
    #[error("init image {}: the file ends before its picture does (cut off while downloading or copying); download or export it again", .path.display())]
    Truncated { path: PathBuf },
    #[error("init image {}: not a picture invert can read ({message}); give a PNG, JPEG, WebP, BMP or GIF file, or export it again if it is one", .path.display())]
    Decode { path: PathBuf, message: String },
    #[error("init image {}: {message}; downscale it", .path.display())]
    TooLarge { path: PathBuf, message: String },
    #[error("init image {} is {width}x{height} pixels: img2img needs at least 8x8; use a larger picture", .path.display())]
    TooSmall {
        path: PathBuf,
        width: u32,
        height: u32,
    },
}

/// Reads `path` as an upright 8-bit RGB picture (`diffusers.utils.load_image`).
pub fn load_init_image(path: &Path) -> Result<RgbImage, InitImageError> {
    let io_error = |e: io::Error| match e.kind() {
        io::ErrorKind::NotFound => InitImageError::Missing {
            path: path.to_path_buf(),
        },
        io::ErrorKind::UnexpectedEof => InitImageError::Truncated {
            path: path.to_path_buf(),
        },
        _ => InitImageError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
    };
    let image_error = |e: ImageError| match e {
        ImageError::IoError(e) => io_error(e),
        ImageError::Limits(l) => InitImageError::TooLarge {
            path: path.to_path_buf(),
            message: l.to_string(),
        },
        other => InitImageError::Decode {
            path: path.to_path_buf(),
            message: other.to_string(),
        },
    };
    if path.is_dir() {
        return Err(InitImageError::Decode {
            path: path.to_path_buf(),
            message: "it is a folder".into(),
        });
    }
    // The format comes from the content, not the name (a JPEG called .png still loads).
    let reader = ImageReader::open(path)
        .map_err(io_error)?
        .with_guessed_format()
        .map_err(io_error)?;
    let mut decoder = reader.into_decoder().map_err(image_error)?;
    let orientation = decoder.orientation().map_err(image_error)?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(image_error)?;
    image.apply_orientation(orientation);
    let rgb = image.to_rgb8();
    let (width, height) = rgb.dimensions();
    if width < 8 || height < 8 {
        return Err(InitImageError::TooSmall {
            path: path.to_path_buf(),
            width,
            height,
        });
    }
    Ok(rgb)
}

/// `get_default_height_width`: a picture's `(width, height)` rounded down to multiples of 8 (the
/// VAE's downscale factor for every SD model), the size img2img makes when none is asked for.
pub fn default_size(rgb: &RgbImage) -> (usize, usize) {
    let (w, h) = rgb.dimensions();
    (w as usize / 8 * 8, h as usize / 8 * 8)
}

/// `VaeImageProcessor.preprocess` for one picture: resized to `width x height` (Lanczos) when
/// it is another size, as `[1, 3, height, width]` in `[-1, 1]` on `device`.
pub fn preprocess(rgb: &RgbImage, width: usize, height: usize, device: &Device) -> Tensor<4> {
    let (w, h) = (width as u32, height as u32);
    let resized;
    let rgb = if rgb.dimensions() == (w, h) {
        rgb
    } else {
        resized = imageops::resize(rgb, w, h, FilterType::Lanczos3);
        &resized
    };
    let plane = width * height;
    let mut chw = vec![0f32; 3 * plane];
    for (i, pixel) in rgb.pixels().enumerate() {
        for (c, &v) in pixel.0.iter().enumerate() {
            // `pil_to_numpy` (x / 255) then `normalize` (2 * x - 1), in float32
            chw[c * plane + i] = 2.0 * (f32::from(v) / 255.0) - 1.0;
        }
    }
    Tensor::from_data(TensorData::new(chw, [1, 3, height, width]), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preprocess_maps_to_minus_one_one_in_channel_planes() {
        let device = Device::flex();
        let mut rgb = RgbImage::new(8, 8);
        rgb.put_pixel(1, 0, image::Rgb([255, 0, 128]));
        let t = preprocess(&rgb, 8, 8, &device);
        assert_eq!(t.dims(), [1, 3, 8, 8]);
        let v: Vec<f32> = t.into_data().convert::<f32>().try_into_vec().unwrap();
        assert_eq!(
            (v[0], v[1], v[64 + 1], v[128 + 1]),
            (-1.0, 1.0, -1.0, 2.0 * (128.0 / 255.0) - 1.0)
        );
    }

    #[test]
    fn size_defaults_to_multiples_of_8_and_resizes() {
        let device = Device::flex();
        let rgb = RgbImage::from_pixel(37, 29, image::Rgb([200, 100, 50]));
        assert_eq!(default_size(&rgb), (32, 24));
        let t = preprocess(&rgb, 32, 24, &device);
        assert_eq!(t.dims(), [1, 3, 24, 32]);
        // A flat picture stays flat through the resize.
        let v: Vec<f32> = t.into_data().convert::<f32>().try_into_vec().unwrap();
        let want = 2.0 * (200.0 / 255.0) - 1.0;
        assert!(
            v[..32 * 24].iter().all(|x| (x - want).abs() < 1e-2),
            "{}",
            v[0]
        );
    }

    #[test]
    fn bad_files_name_the_file_and_the_fix() {
        let dir = std::env::temp_dir().join(format!("invert-init-image-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("nope.png");
        let e = load_init_image(&missing).unwrap_err();
        assert!(matches!(e, InitImageError::Missing { .. }), "{e}");
        assert!(e.to_string().contains("nope.png: no such file"), "{e}");
        let text = dir.join("notes.png");
        std::fs::write(&text, b"not a picture at all").unwrap();
        let e = load_init_image(&text).unwrap_err();
        assert!(matches!(e, InitImageError::Decode { .. }), "{e}");
        assert!(e.to_string().contains("give a PNG, JPEG"), "{e}");
        let good = dir.join("good.png");
        RgbImage::from_pixel(16, 8, image::Rgb([1, 2, 3]))
            .save(&good)
            .unwrap();
        let bytes = std::fs::read(&good).unwrap();
        let cut = dir.join("cut.png");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let e = load_init_image(&cut).unwrap_err();
        assert!(matches!(e, InitImageError::Truncated { .. }), "{e}");
        let tiny = dir.join("tiny.png");
        RgbImage::new(4, 4).save(&tiny).unwrap();
        let e = load_init_image(&tiny).unwrap_err();
        assert!(e.to_string().contains("is 4x4 pixels"), "{e}");
        let rgb = load_init_image(&good).unwrap();
        assert_eq!(rgb.dimensions(), (16, 8));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
