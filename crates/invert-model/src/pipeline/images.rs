//! Writing generated images: PNG with text chunks (A1111's `parameters`, so images describe
//! themselves and load back into A1111's "PNG Info"), grids, and the parameters text.

use super::text_to_image::Image;

/// PNG bytes of `image` with `tEXt` chunks (`key`, `value`); non-Latin-1 values go in `iTXt`.
pub fn encode_png(image: &Image, text: &[(&str, String)]) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, image.width as u32, image.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        for (key, value) in text {
            if value.chars().all(|c| (c as u32) < 256) {
                encoder.add_text_chunk(key.to_string(), value.clone())?;
            } else {
                encoder.add_itxt_chunk(key.to_string(), value.clone())?;
            }
        }
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&image.rgb)?;
        writer.finish()?;
    }
    Ok(out)
}

/// Images side by side in rows of `cols` (A1111's grid), all the size of the first.
pub fn grid(images: &[Image], cols: usize) -> Image {
    let (w, h) = (images[0].width, images[0].height);
    let cols = cols.clamp(1, images.len());
    let rows = images.len().div_ceil(cols);
    let (gw, gh) = (w * cols, h * rows);
    let mut rgb = vec![0u8; gw * gh * 3];
    for (i, img) in images.iter().enumerate() {
        let (ox, oy) = ((i % cols) * w, (i / cols) * h);
        for y in 0..h.min(img.height) {
            let src = &img.rgb[y * img.width * 3..(y * img.width + w.min(img.width)) * 3];
            let start = ((oy + y) * gw + ox) * 3;
            rgb[start..start + src.len()].copy_from_slice(src);
        }
    }
    Image {
        width: gw,
        height: gh,
        rgb,
        seed: images[0].seed,
    }
}

/// Columns for a grid of `n` images: the smallest square that holds them (A1111's default).
pub fn grid_columns(n: usize) -> usize {
    (n as f64).sqrt().ceil().max(1.0) as usize
}

/// What A1111 writes in a PNG's `parameters` chunk.
#[derive(Debug, Clone, Default)]
pub struct Parameters {
    pub prompt: String,
    pub negative: String,
    pub steps: usize,
    /// A1111's sampler name, e.g. `DPM++ 2M Karras`.
    pub sampler: String,
    pub cfg: f64,
    pub seed: u64,
    pub width: usize,
    pub height: usize,
    pub model_name: String,
    pub model_hash: Option<String>,
    pub clip_skip: usize,
    /// (token, short hash) of each learned embedding used.
    pub embeddings: Vec<(String, String)>,
    /// img2img's strength (A1111's "Denoising strength"); `None` for text-to-image.
    pub denoising_strength: Option<f64>,
}

impl Parameters {
    /// The three-line A1111 format: prompt, `Negative prompt: ...`, then `key: value` pairs.
    pub fn to_a1111(&self) -> String {
        let mut s = self.prompt.clone();
        if !self.negative.is_empty() {
            s.push_str(&format!("\nNegative prompt: {}", self.negative));
        }
        s.push_str(&format!(
            "\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {}x{}",
            self.steps, self.sampler, self.cfg, self.seed, self.width, self.height
        ));
        if let Some(h) = &self.model_hash {
            s.push_str(&format!(", Model hash: {h}"));
        }
        s.push_str(&format!(", Model: {}", self.model_name));
        // Where A1111's img2img tab writes it: right after the model.
        if let Some(strength) = self.denoising_strength {
            s.push_str(&format!(", Denoising strength: {strength}"));
        }
        if self.clip_skip > 1 {
            s.push_str(&format!(", Clip skip: {}", self.clip_skip));
        }
        if !self.embeddings.is_empty() {
            let list: Vec<String> = self
                .embeddings
                .iter()
                .map(|(t, h)| format!("{t}: {h}"))
                .collect();
            s.push_str(&format!(", TI hashes: \"{}\"", list.join(", ")));
        }
        s.push_str(&format!(", Version: invert {}", env!("CARGO_PKG_VERSION")));
        s
    }
}

/// A1111's display name of a sampler.
pub fn a1111_sampler_name(kind: crate::schedulers::SamplerKind, karras: bool) -> String {
    use crate::schedulers::SamplerKind::*;
    let base = match kind {
        Ddim => "DDIM",
        Pndm => "PLMS",
        Euler => "Euler",
        EulerAncestral => "Euler a",
        DpmPlusPlus2M => "DPM++ 2M",
    };
    if karras {
        format!("{base} Karras")
    } else {
        base.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solid(w: usize, h: usize, v: u8) -> Image {
        Image {
            width: w,
            height: h,
            rgb: vec![v; w * h * 3],
            seed: 0,
        }
    }

    #[test]
    fn png_round_trips_with_its_parameters() {
        let img = Image {
            width: 3,
            height: 2,
            rgb: (0..18).collect(),
            seed: 7,
        };
        let params = Parameters {
            prompt: "a photo of <cat-toy>".into(),
            negative: "blurry".into(),
            steps: 10,
            sampler: "PLMS".into(),
            cfg: 7.5,
            seed: 7,
            width: 3,
            height: 2,
            model_name: "tiny".into(),
            ..Default::default()
        };
        let bytes = encode_png(&img, &[("parameters", params.to_a1111())]).unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        reader.next_frame(&mut buf).unwrap();
        assert_eq!(&buf[..18], &img.rgb[..]);
        let text = &reader.info().uncompressed_latin1_text[0];
        assert_eq!(text.keyword, "parameters");
        assert_eq!(
            text.text,
            "a photo of <cat-toy>\nNegative prompt: blurry\nSteps: 10, Sampler: PLMS, CFG scale: 7.5, Seed: 7, Size: 3x2, Model: tiny, Version: invert 0.1.0"
        );
        let img2img = Parameters {
            denoising_strength: Some(0.6),
            ..params
        };
        assert!(
            img2img
                .to_a1111()
                .contains("Size: 3x2, Model: tiny, Denoising strength: 0.6, Version"),
            "{}",
            img2img.to_a1111()
        );
    }

    #[test]
    fn grid_places_images_in_rows() {
        let imgs = [solid(2, 2, 10), solid(2, 2, 20), solid(2, 2, 30)];
        assert_eq!(grid_columns(3), 2);
        let g = grid(&imgs, 2);
        assert_eq!((g.width, g.height), (4, 4));
        let px = |x: usize, y: usize| g.rgb[(y * 4 + x) * 3];
        assert_eq!((px(0, 0), px(3, 1), px(1, 3), px(3, 3)), (10, 20, 30, 0));
    }
}
