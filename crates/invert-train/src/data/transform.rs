//! Resize, crop, flip and scale one training image into the network's input layout.

use image::imageops::{self, FilterType};
use image::{GrayImage, RgbImage};
use rand::Rng;

use super::TrainImage;

/// The resampling filter. Catmull-Rom is the cubic convolution kernel with a = -0.5, which is
/// what PIL's `Image.BICUBIC` uses (diffusers' `textual_inversion.py` and the original
/// implementation resize with it); like PIL, `image` widens the kernel when downscaling, so it
/// antialiases. Lanczos3 would be a little sharper, but the VAE would then see different pixels
/// from the reference trainers for no measured gain.
pub(crate) const FILTER: FilterType = FilterType::CatmullRom;

/// How to cut the square training image out of the resized one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Crop {
    /// The middle (diffusers `--center_crop`); deterministic, so latents can be cached.
    #[default]
    Center,
    /// A uniformly random square along the long side, drawn from the `rng` given to [`prepare`].
    Random,
}

/// One image ready for the VAE encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// `[3, res, res]`, channel-major (all R, then all G, then all B), row-major within a
    /// channel, in `[-1, 1]` (`v / 127.5 - 1`, as diffusers).
    pub pixels: Vec<f32>,
    /// `[res, res]` alpha loss weight in `[0, 1]` (only for images with an alpha mask). It is the
    /// raw alpha, resized, cropped and flipped like the pixels; the trainer downsamples it to the
    /// latent size and normalises it (A1111: min 0, mean 1).
    pub weight: Option<Vec<f32>>,
    /// The source file's `(height, width)` (before any resizing), and the crop's `(top, left)`
    /// in the resized image: SDXL's micro-conditioning (diffusers' `textual_inversion_sdxl.py`
    /// records the same two pairs).
    pub original_size: [usize; 2],
    pub crop_top_left: [usize; 2],
}

/// The size `(w, h)` that makes the short side `res` and keeps the aspect ratio (rounded; the
/// long side is never below `res`).
pub fn short_side_size(w: u32, h: u32, res: u32) -> (u32, u32) {
    let scale = |long: u32, short: u32| -> u32 {
        let v = (u64::from(long) * u64::from(res) + u64::from(short) / 2) / u64::from(short);
        u32::try_from(v).unwrap_or(u32::MAX).max(res)
    };
    if w <= h {
        (res, scale(h, w))
    } else {
        (scale(w, h), res)
    }
}

/// Resize `rgb` (and `alpha`, row-major, same size) so the short side is `res`; a no-op copy when
/// it already is.
pub(crate) fn resize_short_side(
    rgb: &RgbImage,
    alpha: Option<&[u8]>,
    res: u32,
) -> (RgbImage, Option<Vec<u8>>) {
    let (w, h) = rgb.dimensions();
    let (nw, nh) = short_side_size(w, h, res);
    if (nw, nh) == (w, h) {
        return (rgb.clone(), alpha.map(<[u8]>::to_vec));
    }
    let out = imageops::resize(rgb, nw, nh, FILTER);
    let alpha = alpha.map(|a| {
        let gray = GrayImage::from_raw(w, h, a.to_vec()).expect("alpha is width * height bytes");
        imageops::resize(&gray, nw, nh, FILTER).into_raw()
    });
    (out, alpha)
}

/// Turn `img` into a `res x res` network input: resize so the short side is `resolution`
/// (Catmull-Rom = PIL `BICUBIC`, see the [module docs](super)), crop a square (`crop`), mirror
/// left-right when `flip` is true, scale to `[-1, 1]`.
///
/// `flip` is the decision for this sample, not the option: the trainer draws it (p = 0.5 unless
/// `--no-flip`), which keeps `(image, flip)` a cacheable key for center crops (see
/// [`super::variants`]). Only [`Crop::Random`] uses `rng`; the same seed gives the same crops.
///
/// # Panics
/// If `resolution` is 0 (the caller validates options).
pub fn prepare(
    img: &TrainImage,
    resolution: usize,
    crop: Crop,
    flip: bool,
    rng: &mut impl Rng,
) -> Prepared {
    assert!(resolution > 0, "training resolution must be positive");
    let res = u32::try_from(resolution).expect("resolution fits in u32");
    let (ow, oh) = img.original_size;
    let original_size = [oh as usize, ow as usize];
    let (rgb, alpha) = resize_short_side(&img.rgb, img.alpha.as_deref(), res);
    let (w, h) = rgb.dimensions();
    let (x0, y0) = match crop {
        Crop::Center => ((w - res) / 2, (h - res) / 2),
        Crop::Random => (rng.random_range(0..=w - res), rng.random_range(0..=h - res)),
    };
    let r = resolution;
    let (w, x0, y0) = (w as usize, x0 as usize, y0 as usize);
    let src_x = |x: usize| if flip { x0 + r - 1 - x } else { x0 + x };

    let raw = rgb.as_raw();
    let mut pixels = vec![0f32; 3 * r * r];
    let (red, rest) = pixels.split_at_mut(r * r);
    let (green, blue) = rest.split_at_mut(r * r);
    for y in 0..r {
        let row = (y0 + y) * w;
        for x in 0..r {
            let p = 3 * (row + src_x(x));
            let i = y * r + x;
            red[i] = f32::from(raw[p]) / 127.5 - 1.0;
            green[i] = f32::from(raw[p + 1]) / 127.5 - 1.0;
            blue[i] = f32::from(raw[p + 2]) / 127.5 - 1.0;
        }
    }
    let weight = alpha.map(|a| {
        let mut out = vec![0f32; r * r];
        for y in 0..r {
            let row = (y0 + y) * w;
            for x in 0..r {
                out[y * r + x] = f32::from(a[row + src_x(x)]) / 255.0;
            }
        }
        out
    });
    Prepared {
        pixels,
        weight,
        original_size,
        crop_top_left: [y0, x0],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_side_size_keeps_aspect() {
        assert_eq!(short_side_size(1024, 768, 512), (683, 512));
        assert_eq!(short_side_size(768, 1024, 512), (512, 683));
        assert_eq!(short_side_size(512, 512, 512), (512, 512));
        assert_eq!(short_side_size(1, 1, 512), (512, 512));
        assert_eq!(short_side_size(100, 30000, 512), (512, 153600));
        // Rounding never makes the long side shorter than the short one.
        assert_eq!(short_side_size(1001, 1000, 7), (7, 7));
    }
}
