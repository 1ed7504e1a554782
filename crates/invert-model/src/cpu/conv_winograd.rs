//! 3x3 stride-1 "same" convolutions by Winograd's minimal filtering F(2x2, 3x3) (Lavin and
//! Gray 2016, "Fast Algorithms for Convolutional Neural Networks"): each 2x2 block of outputs
//! takes 16 multiplies per (input, output channel) pair instead of 36, as 16 independent matrix
//! products over the channels. The direct kernels of [`super::conv`] run SD 1.5's wide
//! convolutions at about 100 GFLOP/s on two AVX2 cores; here the products go through the `gemm`
//! crate at about the same rate on 2.25x fewer multiplies, plus three passes over memory
//! (input, weight and output transforms, which also apply [`Conv`]'s input transform, bias,
//! time embedding and residual).
//!
//! Used where it pays: many output tiles against the weights' size (the weight transform is
//! redone on every call) and enough channels for the products to run near the `gemm` crate's
//! rate; [`conv2d`] returns `None` elsewhere and the direct kernels run. The input gradient of a
//! convolution comes here too (the same convolution with [`Weights::Flipped`]).
//!
//! The tiles go in blocks of a few rows of one image, one block per task: each thread
//! transforms its block's input, runs the 16 products single-threaded and writes the block's
//! outputs, so the transformed values stay in its cache and no buffer grows with the image (a
//! whole-image pass over the VAE's 256x256 planes allocated, faulted in and zeroed 0.5 GB per
//! convolution and ran slower than the direct kernels).

use super::conv::{Conv, Geometry, Weights, padded_input};
use super::gemm::{Dest, View, gemm_serial};
use super::{SendPtr, parallel_for, threads, threads_for};

/// Output tiles (2x2 positions, over the whole batch) per output channel below which the
/// weight transform and the products' short rows cost more than the multiplies saved.
const MIN_TILES: usize = 256;
/// Channels below which the products are too thin for the `gemm` crate's packing to pay.
const MIN_CHANNELS: usize = 64;
/// Tiles per block at most (the products' column count); blocks are smaller when that is
/// needed to give every thread work.
const BLOCK_TILES: usize = 256;

/// The convolution by F(2x2, 3x3), or `None` when `c` is not one it applies to (a 1x1 kernel,
/// an odd output size, few tiles or channels).
pub fn conv2d(c: &Conv) -> Option<Vec<f32>> {
    let g = Geometry::of(c);
    let (th, tw) = (g.oh / 2, g.ow / 2);
    let tiles = c.batch * th * tw;
    if c.k != 3
        || !g.oh.is_multiple_of(2)
        || !g.ow.is_multiple_of(2)
        || tiles < MIN_TILES
        || c.cin < MIN_CHANNELS
        || c.cout < MIN_CHANNELS
        || std::env::var_os("INVERT_NO_WINOGRAD").is_some()
    {
        return None;
    }
    let inp = padded_input(c, &g, 0);
    let u = weight_transform(c);
    // Rows of tiles per block: about BLOCK_TILES tiles, and at least two blocks per thread.
    let target = BLOCK_TILES.min(tiles.div_ceil(2 * threads())).max(1);
    let rows = (target / tw).clamp(1, th);
    let per_image = th.div_ceil(rows);
    let mut out = vec![0.0f32; c.batch * c.cout * g.oh * g.ow];
    let dst = SendPtr(out.as_mut_ptr());
    parallel_for(
        c.batch * per_image,
        threads_for(16 * c.cin * c.cout * tiles),
        |blk| {
            let (b, ty0) = (blk / per_image, (blk % per_image) * rows);
            let block = Block {
                b,
                ty0,
                rows: rows.min(th - ty0),
                tw,
            };
            let v = input_transform(c, &g, &inp, &block);
            // m[k] [cout, n] = u[k] [cout, cin] @ v[k] [cin, n], for each of the 16 points.
            let n = block.tiles();
            let mut m = vec![0.0f32; 16 * c.cout * n];
            for k in 0..16 {
                gemm_serial(
                    c.cout,
                    n,
                    c.cin,
                    Dest {
                        data: &mut m,
                        offset: k * c.cout * n,
                        rs: n,
                        cs: 1,
                    },
                    View {
                        data: &u,
                        offset: k * c.cout * c.cin,
                        rs: c.cin,
                        cs: 1,
                    },
                    View {
                        data: &v,
                        offset: k * c.cin * n,
                        rs: n,
                        cs: 1,
                    },
                    false,
                );
            }
            output_transform(c, &g, &m, &block, dst);
        },
    );
    Some(out)
}

/// Rows `ty0..ty0 + rows` of the tiles of image `b` (`tw` tiles per row).
struct Block {
    b: usize,
    ty0: usize,
    rows: usize,
    tw: usize,
}

impl Block {
    fn tiles(&self) -> usize {
        self.rows * self.tw
    }
}

/// `v[k][ci][tile] = (B^T d B)[k]` for each 4x4 patch `d` of the padded input (stride 2) under
/// the block's tiles, with `B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]`,
/// point `k = 4 i + j` for row combination `i` and column combination `j`. A row of tiles at a
/// time, so that each step runs along the row (vectorised) and writes runs of `tw` values.
fn input_transform(c: &Conv, g: &Geometry, inp: &[f32], blk: &Block) -> Vec<f32> {
    let (tw, n) = (blk.tw, blk.tiles());
    let mut v = vec![0.0f32; 16 * c.cin * n];
    // q[r][j]: column combination j of input row r, one value per tile of the row.
    let mut q = vec![0.0f32; 16 * tw];
    for ci in 0..c.cin {
        let src = &inp[(blk.b * c.cin + ci) * g.plane..][..g.plane];
        for row in 0..blk.rows {
            let ty = blk.ty0 + row;
            for r in 0..4 {
                let line = &src[(2 * ty + r) * g.wp..][..g.wp];
                let (q0, rest) = q[r * 4 * tw..(r + 1) * 4 * tw].split_at_mut(tw);
                let (q1, rest) = rest.split_at_mut(tw);
                let (q2, q3) = rest.split_at_mut(tw);
                for tx in 0..tw {
                    let d = &line[2 * tx..2 * tx + 4];
                    q0[tx] = d[0] - d[2];
                    q1[tx] = d[1] + d[2];
                    q2[tx] = d[2] - d[1];
                    q3[tx] = d[1] - d[3];
                }
            }
            for j in 0..4 {
                let at = |r: usize| &q[(r * 4 + j) * tw..][..tw];
                let (r0, r1, r2, r3) = (at(0), at(1), at(2), at(3));
                for i in 0..4 {
                    let out = &mut v[((i * 4 + j) * c.cin + ci) * n + row * tw..][..tw];
                    for tx in 0..tw {
                        out[tx] = match i {
                            0 => r0[tx] - r2[tx],
                            1 => r1[tx] + r2[tx],
                            2 => r2[tx] - r1[tx],
                            _ => r1[tx] - r3[tx],
                        };
                    }
                }
            }
        }
    }
    v
}

/// Output channels per weight-transform task.
const WEIGHT_BLOCK: usize = 16;

/// `u[k][co][ci] = (G g G^T)[k]` for each 3x3 kernel `g` (transposed and flipped for
/// [`Weights::Flipped`]), with `G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]`.
/// One output channel at a time: its kernels are first gathered tap-major (`taps[j][ci]`), so
/// that the transform runs along the input channels (vectorised) and writes whole rows of `u`.
fn weight_transform(c: &Conv) -> Vec<f32> {
    let (cin, cout) = (c.cin, c.cout);
    let mut u = vec![0.0f32; 16 * cout * cin];
    let dst = SendPtr(u.as_mut_ptr());
    parallel_for(
        cout.div_ceil(WEIGHT_BLOCK),
        threads_for(cout * cin * 64),
        |blk| {
            let mut taps = vec![0.0f32; 9 * cin];
            // t[r][j]: row r of G g, for tap column j.
            let mut t = vec![0.0f32; 12 * cin];
            for co in blk * WEIGHT_BLOCK..((blk + 1) * WEIGHT_BLOCK).min(cout) {
                for ci in 0..cin {
                    for j in 0..9 {
                        taps[j * cin + ci] = match c.weights {
                            Weights::Forward => c.weight[(co * cin + ci) * 9 + j],
                            Weights::Flipped => c.weight[(ci * cout + co) * 9 + 8 - j],
                        };
                    }
                }
                for j in 0..3 {
                    let tap = |row: usize| &taps[(3 * row + j) * cin..][..cin];
                    let (g0, g1, g2) = (tap(0), tap(1), tap(2));
                    let (t0, rest) = t[j * 4 * cin..(j + 1) * 4 * cin].split_at_mut(cin);
                    let (t1, rest) = rest.split_at_mut(cin);
                    let (t2, t3) = rest.split_at_mut(cin);
                    for ci in 0..cin {
                        t0[ci] = g0[ci];
                        t1[ci] = 0.5 * (g0[ci] + g1[ci] + g2[ci]);
                        t2[ci] = 0.5 * (g0[ci] - g1[ci] + g2[ci]);
                        t3[ci] = g2[ci];
                    }
                }
                for r in 0..4 {
                    let col = |j: usize| &t[(j * 4 + r) * cin..][..cin];
                    let (a0, a1, a2) = (col(0), col(1), col(2));
                    for k in 0..4 {
                        // SAFETY: row (point 4 r + k, co) of `u` is written by the task owning co.
                        let out = unsafe {
                            std::slice::from_raw_parts_mut(
                                dst.get().add(((r * 4 + k) * cout + co) * cin),
                                cin,
                            )
                        };
                        for ci in 0..cin {
                            out[ci] = match k {
                                0 => a0[ci],
                                1 => 0.5 * (a0[ci] + a1[ci] + a2[ci]),
                                2 => 0.5 * (a0[ci] - a1[ci] + a2[ci]),
                                _ => a2[ci],
                            };
                        }
                    }
                }
            }
        },
    );
    u
}

/// `y = A^T m A` per tile of the block (`A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]`), plus the
/// bias, the time embedding and the residual, into the block's rows of `[batch, cout, oh, ow]`
/// at `out`; a row of tiles at a time.
fn output_transform(c: &Conv, g: &Geometry, m: &[f32], blk: &Block, out: SendPtr) {
    let (oh, ow) = (g.oh, g.ow);
    let (tw, n) = (blk.tw, blk.tiles());
    // t[r][j]: row combination r of column j, one value per tile of the row.
    let mut t = vec![0.0f32; 8 * tw];
    for co in 0..c.cout {
        let pl = blk.b * c.cout + co;
        let add = c.bias.map_or(0.0, |v| v[co]) + c.image_bias.map_or(0.0, |v| v[pl]);
        let residual = c.residual.map(|r| &r[pl * oh * ow..(pl + 1) * oh * ow]);
        for row in 0..blk.rows {
            for j in 0..4 {
                let at = |i: usize| &m[((i * 4 + j) * c.cout + co) * n + row * tw..][..tw];
                let (m0, m1, m2, m3) = (at(0), at(1), at(2), at(3));
                let (t0, t1) = t.split_at_mut(4 * tw);
                let (t0, t1) = (&mut t0[j * tw..][..tw], &mut t1[j * tw..][..tw]);
                for tx in 0..tw {
                    t0[tx] = m0[tx] + m1[tx] + m2[tx];
                    t1[tx] = m1[tx] - m2[tx] - m3[tx];
                }
            }
            for r in 0..2 {
                let at = |j: usize| &t[(r * 4 + j) * tw..][..tw];
                let (a0, a1, a2, a3) = (at(0), at(1), at(2), at(3));
                let y = (2 * (blk.ty0 + row) + r) * ow;
                // SAFETY: output row y of plane pl lies inside the output and belongs to this
                // block's rows, which no other task writes.
                let line =
                    unsafe { std::slice::from_raw_parts_mut(out.get().add(pl * oh * ow + y), ow) };
                for tx in 0..tw {
                    line[2 * tx] = a0[tx] + a1[tx] + a2[tx] + add;
                    line[2 * tx + 1] = a1[tx] - a2[tx] - a3[tx] + add;
                }
                if let Some(res) = residual {
                    for (v, r) in line.iter_mut().zip(&res[y..y + ow]) {
                        *v += r;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::conv::{Input, direct_conv2d};
    use crate::cpu::test_values as data;

    /// Against the direct kernels (tested against the definition in `conv.rs`): forward and
    /// flipped weights, each input transform, bias, time embedding and residual, channel
    /// counts that fill no register tile, several images and blocks.
    #[test]
    fn winograd_matches_the_direct_convolution() {
        for (batch, cin, cout, h, w, input, weights) in [
            (2, 64, 70, 16, 32, 0, Weights::Forward),
            (1, 67, 64, 32, 32, 1, Weights::Flipped),
            (6, 64, 64, 6, 8, 2, Weights::Forward),
            // 11 rows of tiles: a last block shorter than the others.
            (2, 64, 64, 22, 24, 0, Weights::Flipped),
        ] {
            let x = data(batch * cin * h * w, 1);
            let weight = data(cout * cin * 9, 2);
            let (oh, ow) = if input == 2 { (2 * h, 2 * w) } else { (h, w) };
            let bias = data(cout, 3);
            let image_bias = data(batch * cout, 4);
            let residual = data(batch * cout * oh * ow, 5);
            let (scale, shift) = (data(batch * cin, 6), data(batch * cin, 7));
            let c = Conv {
                x: &x,
                batch,
                cin,
                h,
                w,
                weight: &weight,
                cout,
                k: 3,
                bias: Some(&bias),
                image_bias: Some(&image_bias),
                residual: Some(&residual),
                input: match input {
                    0 => Input::Plain,
                    1 => Input::Affine {
                        scale: &scale,
                        shift: &shift,
                        silu: true,
                    },
                    _ => Input::Upsample2x,
                },
                weights,
            };
            let got = conv2d(&c).expect("Winograd applies to these shapes");
            let want = direct_conv2d(&c);
            let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 2e-5 * scale,
                    "{batch}x{cin}->{cout} {h}x{w}: [{i}] {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn small_or_odd_shapes_take_the_direct_kernels() {
        let x = data(64 * 7 * 8, 1);
        let weight = data(64 * 64 * 9, 2);
        let c = Conv {
            x: &x,
            batch: 1,
            cin: 64,
            h: 7,
            w: 8,
            weight: &weight,
            cout: 64,
            k: 3,
            bias: None,
            image_bias: None,
            residual: None,
            input: Input::Plain,
            weights: Weights::Forward,
        };
        assert!(conv2d(&c).is_none(), "odd height");
    }
}
