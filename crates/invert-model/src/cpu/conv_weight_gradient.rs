//! The weight gradient of [`super::conv`]'s stride-1 "same" convolutions, which `invert
//! pretrain` needs (textual inversion's weights are frozen and never ask for it):
//! `dw[co, ci, ky, kx] = sum over images and output positions p of dy[co, p] * x[ci, p + (ky, kx)]`,
//! `x` being the forward's transformed, zero-padded input.
//!
//! A direct kernel rather than a matrix product. The bundled model's convolutions have 32 to 128
//! output channels over 2x2 to 16x16 planes at batch 48: as products they are `cout` rows deep,
//! so the `gemm` crate spent as long packing operands as multiplying (12-34 GFLOP/s against its
//! 85 on square shapes), whether the input was unfolded over the taps (im2col: nine copies of
//! the input) or multiplied once per tap over the padded planes (which also multiplied the
//! padding: 1.6x the work at 8x8, 4x at 2x2). Here both operands are laid out once in panels,
//! `x` as `[image, block of NR input channels, padded position, NR]` and `dy` as `[image, block
//! of two vectors of output channels, position, 2 vectors]`, so that a register tile (one tap,
//! two vectors of output channels, `NR` input channels) reads both as contiguous streams, as a
//! matrix product's micro-kernel reads packed panels, and only real positions are summed. One
//! task owns a pair of channel blocks and goes through every tap of an image while that image's
//! two panels (24 KB at 16x16 on AVX2) stay in L1; the earlier channels-last layout used 24 of
//! every 144 bytes it brought in and ran at 40 GFLOP/s at 16x16.

use std::ops::Range;

use super::conv::{Conv, Geometry, input_row};
#[cfg(target_arch = "x86_64")]
use super::simd::x86::{Avx2, Avx512};
use super::simd::{Portable, Simd};
use super::{Isa, SendPtr, isa, parallel_for, threads_for};

/// Input channels per register tile (with two vectors of output channels: 12 accumulators,
/// which with the two `dy` vectors and a broadcast fit AVX2's 16 registers).
const NR: usize = 6;

/// Bytes of both operands of the images a pass of tiles goes through (they stay in L2 while
/// every tile of the pass reads them).
const CHUNK_BYTES: usize = 256 << 10;

/// Work units (as `threads_for` counts them) per value a layout pass copies: a copy is cheap
/// against a multiply-add, but a batch's panels are worth both cores.
const COPY_COST: usize = 16;

/// The gradient of `c`'s weight, `[cout, cin, k, k]`, given `dy` `[batch, cout, H, W]` at the
/// output size.
pub fn weight_gradient(c: &Conv, dy: &[f32]) -> Vec<f32> {
    weight_gradient_with(c, dy, isa(), CHUNK_BYTES)
}

/// Sizes of the panels.
struct Layout {
    k: usize,
    oh: usize,
    ow: usize,
    wp: usize,
    plane: usize,
    /// `cin` and `cout` rounded up to whole tiles (the extra channels are zeros).
    cin: usize,
    cout: usize,
}

type TilesFn = unsafe fn(&Layout, &[f32], &[f32], SendPtr, usize, Range<usize>);

fn weight_gradient_with(c: &Conv, dy: &[f32], isa: Isa, chunk_bytes: usize) -> Vec<f32> {
    let (lanes, tiles): (usize, TilesFn) = match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => (Avx512::L, tile_avx512),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => (Avx2::L, tile_avx2),
        _ => (Portable::L, tile_portable),
    };
    let g = Geometry::of(c);
    let (kk, hw) = (c.k * c.k, g.oh * g.ow);
    assert_eq!(
        dy.len(),
        c.batch * c.cout * hw,
        "conv weight gradient: dy size"
    );
    let l = Layout {
        k: c.k,
        oh: g.oh,
        ow: g.ow,
        wp: g.wp,
        plane: g.plane,
        cin: c.cin.div_ceil(NR) * NR,
        cout: c.cout.div_ceil(2 * lanes) * 2 * lanes,
    };
    let xt = input_panels(c, &g, l.cin);
    let dyt = panels(dy, c.batch, c.cout, hw, l.cout, 2 * lanes);

    let (co_blocks, ci_blocks) = (l.cout / (2 * lanes), l.cin / NR);
    let count = co_blocks * ci_blocks;
    let image_bytes = (l.plane * l.cin + hw * l.cout) * std::mem::size_of::<f32>();
    let per = (chunk_bytes / image_bytes).clamp(1, c.batch.max(1));
    // dwt[tap][ci][co]: a tile's accumulators are whole vectors along `co`.
    let mut dwt = vec![0.0f32; kk * l.cin * l.cout];
    let out = SendPtr(dwt.as_mut_ptr());
    for b0 in (0..c.batch).step_by(per) {
        let images = b0..(b0 + per).min(c.batch);
        let work = count * kk * 2 * lanes * NR * hw * images.len();
        parallel_for(count, threads_for(work), |t| {
            // SAFETY: task t reads the operands inside their vectors (sizes from `l`) and
            // writes its own blocks of `dwt`.
            unsafe { tiles(&l, &xt, &dyt, out, t, images.clone()) }
        });
    }
    // To `[cout, cin, k, k]`: per input channel, the taps' rows are read along `co` together
    // (reading `dwt` along a tap instead crosses a page per value on the larger layers).
    let mut dw = vec![0.0f32; c.cout * c.cin * kk];
    for ci in 0..c.cin {
        for co in 0..c.cout {
            let taps = &mut dw[(co * c.cin + ci) * kk..][..kk];
            for (tap, v) in taps.iter_mut().enumerate() {
                *v = dwt[(tap * l.cin + ci) * l.cout + co];
            }
        }
    }
    dw
}

/// The forward's transformed, zero-padded input as panels `[batch, cin / NR, plane, NR]` (`cin`
/// rounded up to whole panels), in one pass over `c.x`.
fn input_panels(c: &Conv, g: &Geometry, cin: usize) -> Vec<f32> {
    let (p, blocks, size) = ((c.k - 1) / 2, cin / NR, g.plane * NR);
    let mut out = vec![0.0f32; c.batch * blocks * size];
    let dst = SendPtr(out.as_mut_ptr());
    parallel_for(c.batch * blocks, threads_for(COPY_COST * out.len()), |t| {
        let (b, block) = (t / blocks, t % blocks);
        // SAFETY: panel t is written by task t only, inside `out`.
        let panel = unsafe { std::slice::from_raw_parts_mut(dst.get().add(t * size), size) };
        // One output row of the panel's NR channels (zeros past `c.cin`), then interleaved.
        let mut rows = vec![0.0f32; NR * g.ow];
        let channels = block * NR..(block * NR + NR).min(c.cin);
        for y in 0..g.oh {
            for (j, ci) in channels.clone().enumerate() {
                input_row(c, b * c.cin + ci, y, &mut rows[j * g.ow..][..g.ow]);
            }
            let start = ((y + p) * g.wp + p) * NR;
            for (x, v) in panel[start..start + g.ow * NR]
                .chunks_exact_mut(NR)
                .enumerate()
            {
                for (j, v) in v.iter_mut().enumerate() {
                    *v = rows[j * g.ow + x];
                }
            }
        }
    });
    out
}

/// `[batch, channels, n]` as `[batch, padded / width, n, width]`: blocks of `width` channels,
/// each position's `width` values together, the channels beyond `channels` zero.
fn panels(
    x: &[f32],
    batch: usize,
    channels: usize,
    n: usize,
    padded: usize,
    width: usize,
) -> Vec<f32> {
    let blocks = padded / width;
    let mut out = vec![0.0f32; batch * n * padded];
    let dst = SendPtr(out.as_mut_ptr());
    parallel_for(batch * blocks, threads_for(COPY_COST * out.len()), |t| {
        let (b, block) = (t / blocks, t % blocks);
        let first = block * width;
        let rows = &x[(b * channels + first.min(channels)) * n..]
            [..(channels.min(first + width) - first.min(channels)) * n];
        // SAFETY: panel t is written by task t only, inside `out`.
        let panel =
            unsafe { std::slice::from_raw_parts_mut(dst.get().add(t * n * width), n * width) };
        for (p, v) in panel.chunks_exact_mut(width).enumerate() {
            for (v, row) in v.iter_mut().zip(rows.chunks_exact(n)) {
                *v = row[p];
            }
        }
    });
    out
}

/// Task `t` (output-channel block, input-channel block): every tap's tile summed over
/// `images`, added to what `dwt` holds (zeros before the first chunk).
#[inline(always)]
unsafe fn tile<S: Simd>(
    l: &Layout,
    xt: &[f32],
    dyt: &[f32],
    dwt: SendPtr,
    t: usize,
    images: Range<usize>,
) {
    let w = 2 * S::L;
    let ci_blocks = l.cin / NR;
    let (cob, cib) = (t / ci_blocks, t % ci_blocks);
    let (hw, xs, ds) = (l.oh * l.ow, l.plane * l.cin, l.oh * l.ow * l.cout);
    debug_assert!(images.end * xs <= xt.len() && images.end * ds <= dyt.len());
    // A pass over the taps sums about 64 output positions (several images' planes when these
    // are small, a few rows of one image otherwise), whose panel slices (6 KB on AVX2) stay in
    // L1 while the taps read them, and loads and stores the accumulators once per tap.
    let rows = (64 / l.ow).clamp(1, l.oh);
    let per_pass = if rows == l.oh { (64 / hw).max(1) } else { 1 };
    unsafe {
        for b0 in images.clone().step_by(per_pass) {
            let pass = b0..(b0 + per_pass).min(images.end);
            for y0 in (0..l.oh).step_by(rows) {
                let y1 = (y0 + rows).min(l.oh);
                for tap in 0..l.k * l.k {
                    let (ky, kx) = (tap / l.k, tap % l.k);
                    let out = dwt.get().add((tap * l.cin + cib * NR) * l.cout + cob * w);
                    let mut acc: [[S::V; 2]; NR] = std::array::from_fn(|j| {
                        let o = out.add(j * l.cout);
                        [S::load(o), S::load(o.add(S::L))]
                    });
                    for b in pass.clone() {
                        // The image's two panels: NR input channels over the padded plane,
                        // 2 vectors of output channels over the output positions.
                        let xb = xt.as_ptr().add(b * xs + cib * NR * l.plane);
                        let mut dp = dyt.as_ptr().add(b * ds + (cob * w * hw) + y0 * l.ow * w);
                        for y in y0..y1 {
                            let mut xp = xb.add(((y + ky) * l.wp + kx) * NR);
                            for _ in 0..l.ow {
                                let (d0, d1) = (S::load(dp), S::load(dp.add(S::L)));
                                for (j, a) in acc.iter_mut().enumerate() {
                                    let v = S::splat(*xp.add(j));
                                    a[0] = S::fma(d0, v, a[0]);
                                    a[1] = S::fma(d1, v, a[1]);
                                }
                                xp = xp.add(NR);
                                dp = dp.add(w);
                            }
                        }
                    }
                    for (j, a) in acc.iter().enumerate() {
                        let o = out.add(j * l.cout);
                        S::store(o, a[0]);
                        S::store(o.add(S::L), a[1]);
                    }
                }
            }
        }
    }
}

macro_rules! tile_fn {
    ($name:ident, $s:ty, $feat:literal) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feat)]
        unsafe fn $name(
            l: &Layout,
            xt: &[f32],
            dyt: &[f32],
            dwt: SendPtr,
            t: usize,
            images: Range<usize>,
        ) {
            unsafe { tile::<$s>(l, xt, dyt, dwt, t, images) }
        }
    };
}

tile_fn!(tile_avx512, Avx512, "avx512f,avx2,fma");
tile_fn!(tile_avx2, Avx2, "avx2,fma");

unsafe fn tile_portable(
    l: &Layout,
    xt: &[f32],
    dyt: &[f32],
    dwt: SendPtr,
    t: usize,
    images: Range<usize>,
) {
    unsafe { tile::<Portable>(l, xt, dyt, dwt, t, images) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::conv::{Input, Weights};
    use crate::cpu::test_values as data;

    /// Against the definition in f64: channel counts that fill no tile, images split over
    /// several chunks and passes, planes split into rows, a 2x upsample and a 1x1 kernel, on this machine's kernels and the
    /// portable ones.
    #[test]
    fn weight_gradient_sums_every_image_and_tap() {
        for (batch, cin, cout, h, w, k, up) in [
            (5, 3, 4, 3, 4, 3, false),
            (5, 3, 4, 3, 4, 3, true),
            (3, 7, 17, 5, 2, 3, false),
            (2, 13, 5, 4, 3, 1, false),
            // Passes of several whole planes, the last one short; passes of a few rows.
            (9, 3, 4, 4, 4, 3, false),
            (2, 5, 3, 5, 20, 3, false),
        ] {
            let (oh, ow) = if up { (2 * h, 2 * w) } else { (h, w) };
            let x = data(batch * cin * h * w, 4);
            let weight = data(cout * cin * k * k, 5);
            let dy = data(batch * cout * oh * ow, 6);
            let c = Conv {
                x: &x,
                batch,
                cin,
                h,
                w,
                weight: &weight,
                cout,
                k,
                bias: None,
                image_bias: None,
                residual: None,
                input: if up { Input::Upsample2x } else { Input::Plain },
                weights: Weights::Forward,
            };
            let p = (k as isize - 1) / 2;
            let input = |b: usize, ci: usize, y: isize, xx: isize| -> f64 {
                if y < 0 || xx < 0 || y >= oh as isize || xx >= ow as isize {
                    return 0.0;
                }
                let (y, xx) = if up {
                    (y as usize / 2, xx as usize / 2)
                } else {
                    (y as usize, xx as usize)
                };
                x[((b * cin + ci) * h + y) * w + xx] as f64
            };
            let mut want = vec![0.0f64; cout * cin * k * k];
            for (i, v) in want.iter_mut().enumerate() {
                let (co, ci, tap) = (i / (cin * k * k), i / (k * k) % cin, i % (k * k));
                let (ky, kx) = ((tap / k) as isize - p, (tap % k) as isize - p);
                for b in 0..batch {
                    for y in 0..oh {
                        for xx in 0..ow {
                            let d = dy[((b * cout + co) * oh + y) * ow + xx] as f64;
                            *v += d * input(b, ci, y as isize + ky, xx as isize + kx);
                        }
                    }
                }
            }
            for isa in [isa(), Isa::Portable] {
                for chunk in [1, 1 << 20] {
                    let dw = weight_gradient_with(&c, &dy, isa, chunk);
                    for (i, (&got, &want)) in dw.iter().zip(&want).enumerate() {
                        assert!(
                            (got as f64 - want).abs() < 1e-4,
                            "{isa:?} chunk {chunk}: dw[{i}] {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
