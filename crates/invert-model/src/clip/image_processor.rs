//! transformers' `CLIPImageProcessor` (transformers 5: the torchvision backend, its default): resize
//! so that the shortest side is `size` (bicubic, antialiased: [`super::resample`]), centre crop,
//! rescale by 1/255 and normalise with CLIP's mean and std. Settings come from a model folder's
//! `preprocessor_config.json`; the defaults are OpenAI's (clip-vit-base-patch32, -large-patch14).

use std::path::{Path, PathBuf};

use burn::prelude::*;

use super::resample::resize_bicubic_antialias;

/// OpenAI CLIP's normalisation (transformers' `OPENAI_CLIP_MEAN` / `OPENAI_CLIP_STD`), written as
/// transformers writes them; torch rounds them to f32 as Rust does.
#[allow(clippy::excessive_precision)]
pub const OPENAI_CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
pub const OPENAI_CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// PIL's resampling code for bicubic, the only one supported.
const BICUBIC: u64 = 3;

/// An 8-bit RGB image: `height` rows of `width` pixels, `r, g, b` interleaved.
#[derive(Debug, Clone, Copy)]
pub struct RgbImage<'a> {
    pub width: usize,
    pub height: usize,
    pub rgb: &'a [u8],
}

/// How to resize before cropping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeTo {
    /// The shortest side becomes this; the other keeps the aspect ratio (truncated).
    ShortestEdge(usize),
    /// Exactly this `(height, width)`.
    Exact(usize, usize),
}

#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error(
        "an RGB image of {width}x{height} needs {expected} bytes, got {got} (3 bytes a pixel, rows \
         top to bottom)"
    )]
    BadImage {
        width: usize,
        height: usize,
        expected: usize,
        got: usize,
    },
    #[error(
        "images of different sizes after preprocessing ({first:?} and {other:?}, height x width) \
         cannot be stacked; keep the centre crop on (`do_center_crop`)"
    )]
    MixedSizes {
        first: (usize, usize),
        other: (usize, usize),
    },
}

/// The settings of `CLIPImageProcessor`.
#[derive(Debug, Clone, PartialEq)]
pub struct CLIPImageProcessor {
    pub do_resize: bool,
    pub size: ResizeTo,
    pub do_center_crop: bool,
    /// `(height, width)`.
    pub crop_size: (usize, usize),
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
}

impl Default for CLIPImageProcessor {
    /// OpenAI's: shortest side 224, bicubic, centre crop 224, 1/255, CLIP's mean and std.
    fn default() -> Self {
        Self::openai(224)
    }
}

impl CLIPImageProcessor {
    /// OpenAI's settings for a model that takes `image_size` square images.
    pub fn openai(image_size: usize) -> Self {
        Self {
            do_resize: true,
            size: ResizeTo::ShortestEdge(image_size),
            do_center_crop: true,
            crop_size: (image_size, image_size),
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: OPENAI_CLIP_MEAN,
            image_std: OPENAI_CLIP_STD,
        }
    }

    /// Reads `preprocessor_config.json`; fields it lacks keep the defaults.
    pub fn from_file(path: &Path) -> Result<Self, PreprocessError> {
        let bad = |reason: String| PreprocessError::Config {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        Self::from_json(&json).map_err(bad)
    }

    /// The settings in a `preprocessor_config.json`'s JSON (the `size` and `crop_size` forms
    /// transformers accepts: an int, `{"shortest_edge"}`, `{"height", "width"}`).
    pub fn from_json(json: &serde_json::Value) -> Result<Self, String> {
        let mut p = Self::default();
        let obj = json.as_object().ok_or("not a JSON object")?;
        let flag = |k: &str, d: bool| -> Result<bool, String> {
            match obj.get(k) {
                None | Some(serde_json::Value::Null) => Ok(d),
                Some(v) => v.as_bool().ok_or(format!("`{k}` should be true or false")),
            }
        };
        p.do_resize = flag("do_resize", p.do_resize)?;
        p.do_center_crop = flag("do_center_crop", p.do_center_crop)?;
        p.do_rescale = flag("do_rescale", p.do_rescale)?;
        p.do_normalize = flag("do_normalize", p.do_normalize)?;
        if !flag("do_convert_rgb", true)? {
            return Err("`do_convert_rgb: false` is not supported (images are RGB)".into());
        }
        if let Some(v) = obj.get("resample").filter(|v| !v.is_null())
            && v.as_u64() != Some(BICUBIC)
        {
            return Err(format!(
                "`resample` {v} is not supported: only 3 (bicubic, CLIP's) is"
            ));
        }
        if let Some(v) = obj.get("size").filter(|v| !v.is_null()) {
            p.size = match (side(v, "shortest_edge"), pair(v)) {
                (Some(s), _) => ResizeTo::ShortestEdge(s),
                (None, Some((h, w))) => ResizeTo::Exact(h, w),
                _ => return Err(format!("`size` {v} is not understood")),
            };
        }
        if let Some(v) = obj.get("crop_size").filter(|v| !v.is_null()) {
            p.crop_size = match (v.as_u64(), pair(v)) {
                (Some(s), _) => (s as usize, s as usize),
                (None, Some(hw)) => hw,
                _ => return Err(format!("`crop_size` {v} is not understood")),
            };
        }
        if let Some(v) = obj.get("rescale_factor").filter(|v| !v.is_null()) {
            p.rescale_factor = v
                .as_f64()
                .filter(|f| *f > 0.0)
                .ok_or(format!("`rescale_factor` {v} should be a positive number"))?;
        }
        for (key, dst) in [
            ("image_mean", &mut p.image_mean),
            ("image_std", &mut p.image_std),
        ] {
            if let Some(v) = obj.get(key).filter(|v| !v.is_null()) {
                let values: Vec<f32> = v
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_f64())
                            .map(|x| x as f32)
                            .collect()
                    })
                    .unwrap_or_default();
                match values.as_slice() {
                    [a, b, c] => *dst = [*a, *b, *c],
                    [a] => *dst = [*a; 3],
                    _ => return Err(format!("`{key}` {v} should hold 3 numbers")),
                }
            }
        }
        if p.image_std.contains(&0.0) {
            return Err("`image_std` holds a zero".into());
        }
        Ok(p)
    }

    /// `(height, width)` of the resized image, as transformers computes it.
    pub fn resized_size(&self, height: usize, width: usize) -> (usize, usize) {
        match self.size {
            ResizeTo::Exact(h, w) => (h, w),
            ResizeTo::ShortestEdge(s) => {
                let (short, long) = if width <= height {
                    (width, height)
                } else {
                    (height, width)
                };
                // Python's `int(s * long / short)`: an exact product, one rounding, truncation
                let new_long = ((s * long) as f64 / short as f64) as usize;
                if width <= height {
                    (new_long, s)
                } else {
                    (s, new_long)
                }
            }
        }
    }

    /// The uint8 image after resizing and centre cropping: `(rgb, width, height)`.
    pub fn resize_and_crop(
        &self,
        image: RgbImage,
    ) -> Result<(Vec<u8>, usize, usize), PreprocessError> {
        let (w, h) = (image.width, image.height);
        if image.rgb.len() != w * h * 3 || w == 0 || h == 0 {
            return Err(PreprocessError::BadImage {
                width: w,
                height: h,
                expected: w * h * 3,
                got: image.rgb.len(),
            });
        }
        let (mut rgb, mut w, mut h) = (image.rgb.to_vec(), w, h);
        if self.do_resize {
            let (nh, nw) = self.resized_size(h, w);
            rgb = resize_bicubic_antialias(&rgb, w, h, 3, nw.max(1), nh.max(1));
            (w, h) = (nw.max(1), nh.max(1));
        }
        if self.do_center_crop {
            (rgb, w, h) = center_crop(&rgb, w, h, self.crop_size);
        }
        Ok((rgb, w, h))
    }

    /// `pixel_values` of one image: `[3, height, width]` values, channel by channel.
    pub fn preprocess(&self, image: RgbImage) -> Result<Vec<f32>, PreprocessError> {
        let (rgb, w, h) = self.resize_and_crop(image)?;
        Ok(self.rescale_and_normalize(&rgb, w, h))
    }

    /// Rescale and normalise an RGB8 image (`h` rows of `w`) into `[3, h, w]` values.
    pub fn rescale_and_normalize(&self, rgb: &[u8], w: usize, h: usize) -> Vec<f32> {
        let (mean, std) = self.mean_std();
        let scale = self.rescale_factor as f32;
        let mut out = vec![0.0f32; 3 * w * h];
        for c in 0..3 {
            for i in 0..w * h {
                let mut v = f32::from(rgb[i * 3 + c]);
                if self.do_rescale && !self.do_normalize {
                    v *= scale;
                }
                if self.do_normalize {
                    v = (v - mean[c]) / std[c];
                }
                out[c * w * h + i] = v;
            }
        }
        out
    }

    /// The mean and std applied to the uint8 values: with rescaling, transformers folds the
    /// factor into them (`mean / factor`, in f32) and normalises the raw values.
    fn mean_std(&self) -> ([f32; 3], [f32; 3]) {
        if !(self.do_rescale && self.do_normalize) {
            return (self.image_mean, self.image_std);
        }
        let k = (1.0 / self.rescale_factor) as f32;
        (
            self.image_mean.map(|m| m * k),
            self.image_std.map(|s| s * k),
        )
    }

    /// `pixel_values` `[n, 3, height, width]` of `images` (all come out the crop size).
    pub fn pixel_values(
        &self,
        images: &[RgbImage],
        device: &Device,
    ) -> Result<Tensor<4>, PreprocessError> {
        let mut values = Vec::new();
        let mut shape = [images.len(), 3, 0, 0];
        for image in images {
            let (rgb, w, h) = self.resize_and_crop(*image)?;
            if shape[2] != 0 && (shape[2], shape[3]) != (h, w) {
                return Err(PreprocessError::MixedSizes {
                    first: (shape[2], shape[3]),
                    other: (h, w),
                });
            }
            (shape[2], shape[3]) = (h, w);
            values.extend(self.rescale_and_normalize(&rgb, w, h));
        }
        Ok(Tensor::from_data(TensorData::new(values, shape), device))
    }
}

/// `{key: n}` in a size dict, or a bare int for `shortest_edge`.
fn side(v: &serde_json::Value, key: &str) -> Option<usize> {
    v.as_u64()
        .or_else(|| v.get(key).and_then(|s| s.as_u64()))
        .map(|s| s as usize)
}

/// `{"height": h, "width": w}`.
fn pair(v: &serde_json::Value) -> Option<(usize, usize)> {
    let h = v.get("height")?.as_u64()? as usize;
    let w = v.get("width")?.as_u64()? as usize;
    Some((h, w))
}

/// transformers' torchvision `center_crop`: pad with zeros (left/top get the smaller half) when
/// the crop is larger than the image, then take the window at `int((size - crop) / 2)`.
fn center_crop(
    rgb: &[u8],
    w: usize,
    h: usize,
    (ch, cw): (usize, usize),
) -> (Vec<u8>, usize, usize) {
    let (pad_l, pad_t) = (cw.saturating_sub(w) / 2, ch.saturating_sub(h) / 2);
    let (pw, ph) = (w.max(cw), h.max(ch));
    let top = (ph - ch) / 2;
    let left = (pw - cw) / 2;
    let mut out = vec![0u8; cw * ch * 3];
    for y in 0..ch {
        for x in 0..cw {
            // position in the padded image, then in the original
            let (py, px) = (y + top, x + left);
            if py < pad_t || px < pad_l || py - pad_t >= h || px - pad_l >= w {
                continue;
            }
            let src = ((py - pad_t) * w + (px - pad_l)) * 3;
            out[(y * cw + x) * 3..(y * cw + x) * 3 + 3].copy_from_slice(&rgb[src..src + 3]);
        }
    }
    (out, cw, ch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resized_size_follows_transformers() {
        let p = CLIPImageProcessor::default();
        // (height, width) -> (height, width)
        assert_eq!(p.resized_size(37, 50), (224, 302));
        assert_eq!(p.resized_size(200, 300), (224, 336));
        assert_eq!(p.resized_size(300, 200), (336, 224));
        assert_eq!(p.resized_size(241, 263), (224, 244));
        assert_eq!(p.resized_size(224, 224), (224, 224));
    }

    #[test]
    fn config_forms_are_read() {
        let json = serde_json::json!({
            "crop_size": 196, "do_center_crop": true, "do_normalize": true, "do_resize": true,
            "feature_extractor_type": "CLIPFeatureExtractor",
            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.5, 1.0], "resample": 3, "size": 200
        });
        let p = CLIPImageProcessor::from_json(&json).unwrap();
        assert_eq!(p.size, ResizeTo::ShortestEdge(200));
        assert_eq!(p.crop_size, (196, 196));
        assert_eq!(p.image_std, [0.25, 0.5, 1.0]);
        let json = serde_json::json!({
            "size": {"height": 10, "width": 12}, "crop_size": {"height": 8, "width": 9}
        });
        let p = CLIPImageProcessor::from_json(&json).unwrap();
        assert_eq!((p.size, p.crop_size), (ResizeTo::Exact(10, 12), (8, 9)));
        let err = CLIPImageProcessor::from_json(&serde_json::json!({"resample": 2})).unwrap_err();
        assert!(err.contains("bicubic"), "{err}");
        let err = CLIPImageProcessor::from_json(&serde_json::json!({"size": "big"})).unwrap_err();
        assert!(err.contains("size"), "{err}");
    }

    #[test]
    fn crop_takes_the_centre_and_pads_with_zeros() {
        // 4x3 image, pixel value = 10 * y + x in every channel
        let rgb: Vec<u8> = (0..3)
            .flat_map(|y| (0..4).flat_map(move |x| [10 * y + x; 3]))
            .collect();
        let (out, w, h) = center_crop(&rgb, 4, 3, (2, 2));
        assert_eq!((w, h), (2, 2));
        let firsts: Vec<u8> = out.chunks(3).map(|p| p[0]).collect();
        assert_eq!(firsts, [1, 2, 11, 12]);
        // crop larger than the image: 1 column of padding left, 2 right; 1 row top, 1 bottom
        let (out, w, h) = center_crop(&rgb, 4, 3, (5, 7));
        assert_eq!((w, h), (7, 5));
        let row = |y: usize| -> Vec<u8> { (0..7).map(|x| out[(y * 7 + x) * 3]).collect() };
        assert_eq!(row(0), [0; 7]);
        assert_eq!(row(1), [0, 0, 1, 2, 3, 0, 0]);
        assert_eq!(row(3), [0, 20, 21, 22, 23, 0, 0]);
    }

    #[test]
    fn normalisation_folds_the_rescale_into_mean_and_std() {
        let p = CLIPImageProcessor {
            do_resize: false,
            do_center_crop: false,
            ..Default::default()
        };
        let rgb = [0u8, 128, 255];
        let v = p
            .preprocess(RgbImage {
                width: 1,
                height: 1,
                rgb: &rgb,
            })
            .unwrap();
        for c in 0..3 {
            let want = (f32::from(rgb[c]) / 255.0 - OPENAI_CLIP_MEAN[c]) / OPENAI_CLIP_STD[c];
            assert!((v[c] - want).abs() < 1e-5, "{c}: {} vs {want}", v[c]);
        }
        let err = p
            .preprocess(RgbImage {
                width: 2,
                height: 1,
                rgb: &rgb,
            })
            .unwrap_err();
        assert!(err.to_string().contains("needs 6 bytes"), "{err}");
        let device = Device::flex();
        let (a, b) = ([9u8; 2 * 3 * 3], [9u8; 3 * 3 * 3]);
        let images = [
            RgbImage {
                width: 2,
                height: 3,
                rgb: &a,
            },
            RgbImage {
                width: 3,
                height: 3,
                rgb: &b,
            },
        ];
        let err = p.pixel_values(&images, &device).unwrap_err();
        assert!(matches!(err, PreprocessError::MixedSizes { .. }), "{err}");
        let both = p.pixel_values(&images[1..], &device).unwrap();
        assert_eq!(both.dims(), [1, 3, 3, 3]);
    }
}
