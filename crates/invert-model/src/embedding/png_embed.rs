//! A1111 embedding images (`modules/textual_inversion/image_embedding.py`).
//!
//! A1111 saves the embedding's dict twice in its preview images: as base64 of a JSON in a PNG
//! text chunk `sd-ti-embedding` (tEXt, or zTXt/iTXt when re-saved by other tools), and in the
//! pixels: the zlib-compressed JSON is split into low and high nibbles, each drawn as a block of
//! pixels (left and right of the picture, separated by black columns) whose low nibbles are the
//! data XORed with a linear congruential stream (a = 1664525, c = 1013904223, mod 2^32, each
//! output taken mod 255). The text chunk is tried first; the pixels are the fallback for images
//! whose text chunks were stripped. Tensors in the JSON are `{"TORCHTENSOR": nested lists}`.

use std::io::Cursor;
use std::path::Path;

use base64::Engine;
use serde_json::Value;

use super::{EmbeddingError, EmbeddingFormat, EmbeddingMeta, LearnedEmbedding, build_embedding};
use crate::weights::torch_write::crc32;

/// The text chunk keyword A1111 uses.
const KEYWORD: &str = "sd-ti-embedding";
/// Largest decoded image searched for side blocks.
const MAX_PIXELS_BYTES: usize = 256 << 20;
/// Largest JSON accepted (75 vectors of 1024 values need ~2 MB).
const MAX_JSON: usize = 64 << 20;

fn invalid(path: &Path, reason: impl Into<String>) -> EmbeddingError {
    EmbeddingError::Invalid {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn png_error(path: &Path, e: png::DecodingError) -> EmbeddingError {
    invalid(
        path,
        format!("cannot decode the PNG image ({e}); is the file complete?"),
    )
}

/// The text of the `sd-ti-embedding` chunk, and the chunk type it was in.
fn find_text(
    path: &Path,
    info: &png::Info,
) -> Result<Option<(String, &'static str)>, EmbeddingError> {
    if let Some(c) = info
        .uncompressed_latin1_text
        .iter()
        .find(|c| c.keyword == KEYWORD)
    {
        return Ok(Some((c.text.clone(), "tEXt")));
    }
    let bad = |e| {
        invalid(
            path,
            format!("the `{KEYWORD}` text chunk cannot be decompressed ({e})"),
        )
    };
    if let Some(c) = info
        .compressed_latin1_text
        .iter()
        .find(|c| c.keyword == KEYWORD)
    {
        let mut c = c.clone();
        c.decompress_text_with_limit(MAX_JSON).map_err(bad)?;
        return Ok(Some((c.get_text().map_err(bad)?, "zTXt")));
    }
    if let Some(c) = info.utf8_text.iter().find(|c| c.keyword == KEYWORD) {
        let mut c = c.clone();
        c.decompress_text_with_limit(MAX_JSON).map_err(bad)?;
        return Ok(Some((c.get_text().map_err(bad)?, "iTXt")));
    }
    Ok(None)
}

/// Reads the embedding stored in an A1111 embedding image.
pub(super) fn read_png(path: &Path) -> Result<Vec<LearnedEmbedding>, EmbeddingError> {
    let bytes = std::fs::read(path).map_err(|source| EmbeddingError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    read_png_bytes(path, &bytes)
}

/// [`read_png`] on bytes already in memory; `path` is only used in messages.
pub(super) fn read_png_bytes(
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<LearnedEmbedding>, EmbeddingError> {
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(|e| png_error(path, e))?;
    if let Some((text, chunk)) = find_text(path, reader.info())? {
        return from_base64(path, &text, chunk);
    }
    // Text chunks after the image data are only seen once the image is decoded; the pixels
    // are needed anyway for the side blocks.
    let size = reader
        .output_buffer_size()
        .filter(|&s| s <= MAX_PIXELS_BYTES)
        .ok_or_else(|| {
            invalid(
                path,
                "the PNG image is too large to be an A1111 embedding image (over 256 MiB of \
                 pixels)",
            )
        })?;
    let mut buf = vec![0u8; size];
    let out = reader
        .next_frame(&mut buf)
        .map_err(|e| png_error(path, e))?;
    reader.finish().map_err(|e| png_error(path, e))?;
    if let Some((text, chunk)) = find_text(path, reader.info())? {
        return from_base64(path, &text, chunk);
    }
    let channels = out.color_type.samples();
    let (w, h) = (out.width as usize, out.height as usize);
    let rgb: Vec<[u8; 3]> = buf[..out.buffer_size()]
        .chunks_exact(channels)
        .map(|p| match channels {
            1 | 2 => [p[0]; 3],
            _ => [p[0], p[1], p[2]],
        })
        .collect();
    let Some(compressed) = side_block_data(w, h, &rgb) else {
        return Err(EmbeddingError::UnknownFormat {
            path: path.to_path_buf(),
            reason: format!(
                "a PNG image without an A1111 embedding: it has no `{KEYWORD}` text chunk and no \
                 data blocks beside the picture"
            ),
        });
    };
    let json = inflate_zlib(&compressed).ok_or_else(|| {
        invalid(
            path,
            "the PNG's side blocks do not hold A1111 embedding data (the image was probably \
             resized or re-encoded lossily); use the embedding's .pt file instead",
        )
    })?;
    from_json(path, &json, "pixels")
}

fn from_base64(
    path: &Path,
    text: &str,
    chunk: &str,
) -> Result<Vec<LearnedEmbedding>, EmbeddingError> {
    let clean: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let json = base64::engine::general_purpose::STANDARD
        .decode(&clean)
        .map_err(|e| {
            invalid(
                path,
                format!("the `{KEYWORD}` {chunk} chunk is not base64 ({e})"),
            )
        })?;
    from_json(path, &json, chunk)
}

/// Python's `json.dumps` writes `NaN`, `Infinity` and `-Infinity`, which are not JSON: they are
/// turned into `null` (read back as NaN and refused by the finiteness check with its position).
fn python_json_to_json(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let (mut i, mut in_str, mut escaped) = (0, false, false);
    while i < text.len() {
        let b = text[i];
        if in_str {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_str = false;
            }
            i += 1;
            continue;
        }
        let rest = &text[i..];
        let word = [&b"-Infinity"[..], b"Infinity", b"NaN"]
            .into_iter()
            .find(|w| rest.starts_with(w));
        if let Some(w) = word {
            out.extend_from_slice(b"null");
            i += w.len();
            continue;
        }
        in_str = b == b'"';
        out.push(b);
        i += 1;
    }
    out
}

fn from_json(
    path: &Path,
    json: &[u8],
    source: &str,
) -> Result<Vec<LearnedEmbedding>, EmbeddingError> {
    let root: Value = serde_json::from_slice(&python_json_to_json(json)).map_err(|e| {
        invalid(
            path,
            format!("the embedding data in the PNG is not valid JSON ({e})"),
        )
    })?;
    let obj = root
        .as_object()
        .ok_or_else(|| invalid(path, "the embedding data in the PNG is not a JSON object"))?;
    let mut meta = EmbeddingMeta::new(EmbeddingFormat::A1111Png);
    meta.step = obj.get("step").and_then(Value::as_u64);
    meta.base_model = obj
        .get("sd_checkpoint_name")
        .and_then(Value::as_str)
        .map(String::from);
    meta.base_model_hash = obj
        .get("sd_checkpoint")
        .and_then(Value::as_str)
        .map(String::from);
    meta.extra.insert("png".into(), source.to_owned());
    let is_tensor = |v: &Value| v.get("TORCHTENSOR").is_some();
    // A1111's own dicts; else a diffusers-style `{token: tensor}` dict, which A1111 also loads.
    let terms: Vec<(&String, &Value)> = match obj.get("string_to_param") {
        Some(Value::Object(m)) => m.iter().collect(),
        Some(_) => {
            return Err(invalid(
                path,
                "`string_to_param` in the PNG's JSON is not a dict",
            ));
        }
        None => obj.iter().filter(|(_, v)| is_tensor(v)).collect(),
    };
    if terms.is_empty() {
        return Err(EmbeddingError::UnknownFormat {
            path: path.to_path_buf(),
            reason: "the PNG's embedding data holds no tensor".into(),
        });
    }
    let stem = super::file_stem(path);
    let name = obj.get("name").and_then(Value::as_str).map(String::from);
    let mut out = Vec::new();
    for (key, value) in &terms {
        let tensor_name = format!("string_to_param.{key}");
        let t = value
            .get("TORCHTENSOR")
            .ok_or_else(|| invalid(path, format!("`{tensor_name}` is not a TORCHTENSOR")))?;
        let (shape, values) =
            nested_list(t).map_err(|r| invalid(path, format!("`{tensor_name}`: {r}")))?;
        let mut meta = meta.clone();
        meta.extra.insert("placeholder".into(), (*key).clone());
        if let Some(id) = obj
            .get("string_to_token")
            .and_then(|s| s.get(key.as_str()))
            .and_then(Value::as_i64)
        {
            meta.extra
                .insert("placeholder_token_id".into(), id.to_string());
        }
        let token = match (terms.len(), &name) {
            (1, Some(n)) => n.clone(),
            (1, None) => stem.clone(),
            _ => (*key).clone(),
        };
        out.push(build_embedding(
            path,
            &tensor_name,
            token,
            &shape,
            values,
            meta,
        )?);
    }
    Ok(out)
}

/// The shape and row-major values of a nested list of numbers (`null` reads as NaN).
fn nested_list(v: &Value) -> Result<(Vec<usize>, Vec<f32>), String> {
    let mut shape = Vec::new();
    let mut cur = v;
    while let Value::Array(items) = cur {
        shape.push(items.len());
        if shape.len() > 8 {
            return Err("nested more than 8 levels".into());
        }
        match items.first() {
            Some(first) => cur = first,
            None => break,
        }
    }
    let mut values = Vec::new();
    fn walk(v: &Value, shape: &[usize], out: &mut Vec<f32>) -> Result<(), String> {
        match (shape.split_first(), v) {
            (None, Value::Number(n)) => out.push(n.as_f64().unwrap_or(f64::NAN) as f32),
            (None, Value::Null) => out.push(f32::NAN),
            (Some((&len, rest)), Value::Array(items)) if items.len() == len => {
                for item in items {
                    walk(item, rest, out)?;
                }
            }
            _ => return Err("not a rectangular list of numbers".into()),
        }
        Ok(())
    }
    walk(v, &shape, &mut values)?;
    Ok((shape, values))
}

/// The next value of A1111's `lcg()` generator (`seed % 255` after each step).
fn lcg_next(seed: &mut u32) -> u8 {
    *seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
    (*seed % 255) as u8
}

/// A1111's `extract_image_data_embed`, up to the zlib stream: crop the black border, split at
/// the black columns, un-XOR both blocks' low nibbles and recombine them into bytes.
fn side_block_data(w: usize, h: usize, rgb: &[[u8; 3]]) -> Option<Vec<u8>> {
    if w == 0 || h == 0 || rgb.len() != w * h {
        return None;
    }
    let lit = |x: usize, y: usize| rgb[y * w + x].iter().all(|&c| c > 0);
    let cols: Vec<bool> = (0..w).map(|x| (0..h).any(|y| lit(x, y))).collect();
    let rows: Vec<bool> = (0..h).map(|y| (0..w).any(|x| lit(x, y))).collect();
    // numpy's argmax of an all-false mask is 0: then nothing is cropped.
    let span = |m: &[bool]| {
        let start = m.iter().position(|&b| b).unwrap_or(0);
        let end = m.iter().rposition(|&b| b).map_or(m.len(), |e| e + 1);
        (start, end)
    };
    let ((x0, x1), (y0, y1)) = (span(&cols), span(&rows));
    let (cw, ch) = (x1 - x0, y1 - y0);
    let nib = |x: usize, y: usize, c: usize| rgb[(y0 + y) * w + x0 + x][c] & 0x0f;
    let black: Vec<usize> = (0..cw)
        .filter(|&x| (0..ch).all(|y| (0..3).all(|c| nib(x, y, c) == 0)))
        .collect();
    let (&first, &last) = (black.first()?, black.last()?);
    if black.len() < 2 || cw - (last + 1) != first {
        return None;
    }
    let block = |start: usize| {
        let mut seed = 0u32;
        let mut out = Vec::with_capacity(first * ch * 3);
        for y in 0..ch {
            for x in start..start + first {
                for c in 0..3 {
                    out.push(nib(x, y, c) ^ (lcg_next(&mut seed) & 0x0f));
                }
            }
        }
        out
    };
    let (low, high) = (block(0), block(last + 1));
    Some(low.iter().zip(&high).map(|(l, h)| (h << 4) | l).collect())
}

/// Inflates a zlib stream (trailing bytes after its end are ignored, as Python's
/// `zlib.decompress` does), using the png crate's zTXt support: the stream is wrapped as the
/// text of a zTXt chunk in a minimal in-memory PNG.
fn inflate_zlib(data: &[u8]) -> Option<Vec<u8>> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], body: &[u8]) {
        out.extend((body.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend(kind);
        out.extend(body);
        let crc = crc32(&out[start..]);
        out.extend(crc.to_be_bytes());
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut png, b"IHDR", &[0, 0, 0, 1, 0, 0, 0, 1, 8, 0, 0, 0, 0]);
    let mut ztxt = b"k\0\0".to_vec();
    ztxt.extend(data);
    chunk(&mut png, b"zTXt", &ztxt);
    // One gray pixel: filter byte 0, value 0, as a stored zlib block.
    chunk(
        &mut png,
        b"IDAT",
        &[0x78, 1, 1, 2, 0, 0xfd, 0xff, 0, 0, 0, 2, 0, 1],
    );
    chunk(&mut png, b"IEND", &[]);
    let mut decoder = png::Decoder::new(Cursor::new(png));
    decoder.set_limits(png::Limits {
        bytes: MAX_JSON + 2 * data.len() + (1 << 20),
    });
    let reader = decoder.read_info().ok()?;
    let mut text = reader.info().compressed_latin1_text.first()?.clone();
    text.decompress_text_with_limit(MAX_JSON).ok()?;
    // Latin-1 maps every byte to the char of the same value.
    Some(
        text.get_text()
            .ok()?
            .chars()
            .map(|c| c as u32 as u8)
            .collect(),
    )
}
