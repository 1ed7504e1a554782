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
//! padding: 1.6x the work at 8x8, 4x at 2x2). Here both operands are laid out channels-last
//! once, `x` as `[image, padded position, cin]` and `dy` as `[image, position, cout]`, and a
//! register tile of one tap, two vectors of output channels and `NR` input channels runs over
//! every output position of a few images, reading `dy` as vectors and `x` as broadcasts, as a
//! matrix product's micro-kernel does with packed panels; only real positions are summed.

use std::ops::Range;

use super::conv::{Conv, Geometry, padded_input};
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

/// The gradient of `c`'s weight, `[cout, cin, k, k]`, given `dy` `[batch, cout, H, W]` at the
/// output size.
pub fn weight_gradient(c: &Conv, dy: &[f32]) -> Vec<f32> {
    weight_gradient_with(c, dy, isa(), CHUNK_BYTES)
}

/// Sizes of the channels-last operands.
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
    let inp = padded_input(c, &g, 0);
    let xt = channels_last(&inp, c.batch, c.cin, g.plane, l.cin);
    let dyt = channels_last(dy, c.batch, c.cout, hw, l.cout);

    let (co_blocks, ci_blocks) = (l.cout / (2 * lanes), l.cin / NR);
    let count = kk * co_blocks * ci_blocks;
    let image_bytes = (l.plane * l.cin + hw * l.cout) * std::mem::size_of::<f32>();
    let per = (chunk_bytes / image_bytes).clamp(1, c.batch.max(1));
    // dwt[tap][ci][co]: a tile's accumulators are whole vectors along `co`.
    let mut dwt = vec![0.0f32; kk * l.cin * l.cout];
    let out = SendPtr(dwt.as_mut_ptr());
    for b0 in (0..c.batch).step_by(per) {
        let images = b0..(b0 + per).min(c.batch);
        let work = count * 2 * lanes * NR * hw * images.len();
        parallel_for(count, threads_for(work), |t| {
            // SAFETY: tile t reads the operands inside their vectors (sizes from `l`) and
            // writes its own block of `dwt`.
            unsafe { tiles(&l, &xt, &dyt, out, t, images.clone()) }
        });
    }
    let mut dw = vec![0.0f32; c.cout * c.cin * kk];
    for co in 0..c.cout {
        for ci in 0..c.cin {
            for tap in 0..kk {
                dw[(co * c.cin + ci) * kk + tap] = dwt[(tap * l.cin + ci) * l.cout + co];
            }
        }
    }
    dw
}

/// `[batch, channels, n]` as `[batch, n, padded]`, the channels beyond `channels` zero.
fn channels_last(x: &[f32], batch: usize, channels: usize, n: usize, padded: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; batch * n * padded];
    let dst = SendPtr(out.as_mut_ptr());
    parallel_for(batch, threads_for(batch * n * channels), |b| {
        let src = &x[b * channels * n..][..channels * n];
        // SAFETY: image b's block is written by task b only, inside `out`.
        let img =
            unsafe { std::slice::from_raw_parts_mut(dst.get().add(b * n * padded), n * padded) };
        // Blocks of positions keep the strided writes within a few cache lines per channel.
        for p0 in (0..n).step_by(64) {
            let p1 = (p0 + 64).min(n);
            for (ch, row) in src.chunks_exact(n).enumerate() {
                for p in p0..p1 {
                    img[p * padded + ch] = row[p];
                }
            }
        }
    });
    out
}

/// Tile `t` (tap, output-channel block, input-channel block) summed over `images`, added to
/// what `dwt` holds (zeros before the first chunk).
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
    let (co_blocks, ci_blocks) = (l.cout / w, l.cin / NR);
    let (tap, rest) = (t / (co_blocks * ci_blocks), t % (co_blocks * ci_blocks));
    let (cob, cib) = (rest / ci_blocks, rest % ci_blocks);
    let (ky, kx) = (tap / l.k, tap % l.k);
    let (hw, xs, ds) = (l.oh * l.ow, l.plane * l.cin, l.oh * l.ow * l.cout);
    debug_assert!(images.end * xs <= xt.len() && images.end * ds <= dyt.len());
    unsafe {
        let out = dwt.get().add((tap * l.cin + cib * NR) * l.cout + cob * w);
        let mut acc: [[S::V; 2]; NR] = std::array::from_fn(|j| {
            let o = out.add(j * l.cout);
            [S::load(o), S::load(o.add(S::L))]
        });
        for b in images {
            let xb = xt.as_ptr().add(b * xs + cib * NR);
            let db = dyt.as_ptr().add(b * hw * l.cout + cob * w);
            for y in 0..l.oh {
                let mut xp = xb.add(((y + ky) * l.wp + kx) * l.cin);
                let mut dp = db.add(y * l.ow * l.cout);
                for _ in 0..l.ow {
                    let (d0, d1) = (S::load(dp), S::load(dp.add(S::L)));
                    for (j, a) in acc.iter_mut().enumerate() {
                        let v = S::splat(*xp.add(j));
                        a[0] = S::fma(d0, v, a[0]);
                        a[1] = S::fma(d1, v, a[1]);
                    }
                    xp = xp.add(l.cin);
                    dp = dp.add(l.cout);
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
    /// several passes, a 2x upsample and a 1x1 kernel, on this machine's kernels and the
    /// portable ones.
    #[test]
    fn weight_gradient_sums_every_image_and_tap() {
        for (batch, cin, cout, h, w, k, up) in [
            (5, 3, 4, 3, 4, 3, false),
            (5, 3, 4, 3, 4, 3, true),
            (3, 7, 17, 5, 2, 3, false),
            (2, 13, 5, 4, 3, 1, false),
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
