//! Antialiased bicubic resizing of 8-bit images, bit-exact with what transformers 5's
//! `CLIPImageProcessor` runs.
//!
//! transformers 5's `CLIPImageProcessor` is its torchvision backend: the uint8 image goes through
//! `torchvision.transforms.v2.functional.resize(BICUBIC, antialias=True)`, which on CPU keeps it
//! uint8 and calls PyTorch's `_upsample_bicubic2d_aa` uint8 kernel (aten `UpSampleKernel.cpp`):
//! - a separable filter, horizontal pass first, each pass rounded and clamped to uint8;
//! - Keys' cubic with a = -0.5, PIL's support (2, times the scale when downscaling) and centres
//!   (`(i + 0.5) * scale`), weights normalised to sum to one;
//! - the weights as int16 fixed point, with the precision chosen per pass: the largest number of
//!   bits (at most 22) that keeps the largest weight below 2^15 when doubled; sums start at half
//!   a unit and are shifted down.
//!
//! PIL's own `Image.resize(BICUBIC)` (transformers' `CLIPImageProcessorPil`) uses 22-bit weights
//! and differs from this by one or two levels on a few percent of the pixels.

/// Keys' cubic convolution kernel with a = -0.5 (PyTorch's antialiasing filter, PIL's bicubic).
fn cubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// One output index's taps: the first input index and the fixed-point weights.
struct Taps {
    start: usize,
    weights: Vec<i64>,
}

/// The taps of resizing `input` samples to `output` and their fixed-point precision (bits).
fn taps(input: usize, output: usize) -> (Vec<Taps>, u32) {
    let scale = input as f64 / output as f64;
    let (support, inv_scale) = if scale >= 1.0 {
        (2.0 * scale, 1.0 / scale)
    } else {
        (2.0, 1.0)
    };
    let mut max_weight = 0.0f64;
    let float_taps: Vec<(usize, Vec<f64>)> = (0..output)
        .map(|i| {
            let center = scale * (i as f64 + 0.5);
            // `as` truncates toward zero, as C's cast of a double does
            let start = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).min(input as i64) as usize;
            let mut w: Vec<f64> = (start..end)
                .map(|j| cubic((j as f64 - center + 0.5) * inv_scale))
                .collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                for v in &mut w {
                    *v /= total;
                }
            }
            max_weight = w.iter().copied().fold(max_weight, f64::max);
            (start, w)
        })
        .collect();
    let mut precision = 0u32;
    while precision < 22 {
        let next = (0.5 + max_weight * f64::from(1u32 << (precision + 1))) as i64;
        if next >= 1 << 15 {
            break;
        }
        precision += 1;
    }
    let unit = f64::from(1u32 << precision);
    let taps = float_taps
        .into_iter()
        .map(|(start, w)| Taps {
            start,
            weights: w
                .into_iter()
                .map(|v| {
                    let v = v * unit;
                    // int16 in PyTorch; the values fit by the choice of precision
                    (if v < 0.0 { -0.5 + v } else { 0.5 + v }) as i64
                })
                .collect(),
        })
        .collect();
    (taps, precision)
}

/// Resamples along one axis. `len` samples `stride` apart, `lines` lines `line_stride` apart;
/// `channels` interleaved values per sample (the same on input and output).
struct Axis {
    len: usize,
    stride: usize,
    lines: usize,
    line_stride: usize,
}

fn resample_axis(src: &[u8], dst: &mut [u8], from: &Axis, to: &Axis, channels: usize) {
    let (taps, precision) = taps(from.len, to.len);
    // half a unit, so that the shift rounds
    let half = (1i64 << precision) >> 1;
    for line in 0..from.lines {
        for (i, t) in taps.iter().enumerate() {
            for c in 0..channels {
                let mut acc = half;
                for (k, w) in t.weights.iter().enumerate() {
                    let v = src[line * from.line_stride + (t.start + k) * from.stride + c];
                    acc += i64::from(v) * w;
                }
                dst[line * to.line_stride + i * to.stride + c] =
                    (acc >> precision).clamp(0, 255) as u8;
            }
        }
    }
}

/// `image` (`height` rows of `width` pixels of `channels` interleaved u8 values) resized to
/// `new_width` x `new_height` as transformers 5's `CLIPImageProcessor` does (see the module docs).
/// An axis whose size does not change is left as it is.
pub fn resize_bicubic_antialias(
    image: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    new_width: usize,
    new_height: usize,
) -> Vec<u8> {
    assert_eq!(image.len(), width * height * channels, "image size");
    assert!(new_width > 0 && new_height > 0, "empty output");
    let mut cur = image.to_vec();
    let mut w = width;
    if new_width != width {
        let mut out = vec![0u8; new_width * height * channels];
        let from = Axis {
            len: width,
            stride: channels,
            lines: height,
            line_stride: width * channels,
        };
        let to = Axis {
            len: new_width,
            stride: channels,
            lines: height,
            line_stride: new_width * channels,
        };
        resample_axis(&cur, &mut out, &from, &to, channels);
        cur = out;
        w = new_width;
    }
    if new_height != height {
        let mut out = vec![0u8; w * new_height * channels];
        let from = Axis {
            len: height,
            stride: w * channels,
            lines: w,
            line_stride: channels,
        };
        let to = Axis {
            len: new_height,
            stride: w * channels,
            lines: w,
            line_stride: channels,
        };
        resample_axis(&cur, &mut out, &from, &to, channels);
        cur = out;
    }
    cur
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 5x3 grey image (rows below), as one channel.
    const IMAGE: [u8; 15] = [
        0, 255, 10, 200, 30, //
        255, 0, 128, 64, 90, //
        5, 250, 0, 255, 17,
    ];

    #[test]
    fn matches_torchvision_up_and_down() {
        // torchvision.transforms.v2.functional.resize(uint8, BICUBIC, antialias=True), torch 2.9
        let up = resize_bicubic_antialias(&IMAGE, 5, 3, 1, 7, 4);
        assert_eq!(
            up,
            [
                0, 162, 219, 4, 163, 142, 16, //
                178, 121, 74, 93, 102, 89, 71, //
                178, 121, 70, 89, 121, 102, 64, //
                0, 162, 210, 0, 209, 172, 0
            ]
        );
        let down = resize_bicubic_antialias(&IMAGE, 5, 3, 1, 3, 2);
        assert_eq!(down, [123, 101, 91, 123, 106, 103]);
    }

    #[test]
    fn channels_are_independent() {
        let rgb: Vec<u8> = IMAGE.iter().flat_map(|&v| [v, 255 - v, 7]).collect();
        let out = resize_bicubic_antialias(&rgb, 5, 3, 3, 7, 4);
        let grey = resize_bicubic_antialias(&IMAGE, 5, 3, 1, 7, 4);
        let inverted: Vec<u8> = IMAGE.iter().map(|&v| 255 - v).collect();
        let inv = resize_bicubic_antialias(&inverted, 5, 3, 1, 7, 4);
        for (i, px) in out.chunks(3).enumerate() {
            assert_eq!(px, [grey[i], inv[i], 7], "pixel {i}");
        }
    }

    #[test]
    fn same_size_is_the_identity_and_flat_stays_flat() {
        assert_eq!(resize_bicubic_antialias(&IMAGE, 5, 3, 1, 5, 3), IMAGE);
        let flat = vec![77u8; 13 * 11 * 3];
        let out = resize_bicubic_antialias(&flat, 13, 11, 3, 224, 190);
        assert!(out.iter().all(|&v| v == 77));
        let out = resize_bicubic_antialias(&flat, 13, 11, 3, 3, 2);
        assert!(out.iter().all(|&v| v == 77));
    }

    #[test]
    fn precision_keeps_the_largest_weight_in_int16() {
        for (input, output) in [(5, 7), (37, 224), (300, 224), (1000, 3)] {
            let (taps, bits) = taps(input, output);
            assert!(bits <= 22);
            let max = taps.iter().flat_map(|t| t.weights.iter()).max().unwrap();
            assert!(*max < 1 << 15, "{input}->{output}: {max} at {bits} bits");
            // one more bit would overflow, unless the cap was reached
            assert!(
                bits == 22 || 2 * max >= (1 << 15) - 1,
                "{input}->{output}: {bits} bits"
            );
        }
    }
}
