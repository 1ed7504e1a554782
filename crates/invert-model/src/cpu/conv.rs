//! Stride-1 "same" convolutions (k x k with padding (k - 1) / 2, k = 1 or 3) on NCHW f32 data.
//!
//! The input is first written once into a zero-padded buffer, transformed on the way (a
//! per-channel affine + SiLU, i.e. a GroupNorm, or a nearest 2x upsample). Output positions are
//! then numbered along the padded rows, `q = y * (W + k - 1) + x`, so that every kernel tap is a
//! constant offset and a register tile of `MR` output channels x two vectors of positions runs
//! over all input channels and taps with plain vector loads and broadcast weights. The two
//! padding columns per row are computed and dropped. The bias, a per-image bias (the time
//! embedding of a ResNet block) and a residual are added as results are written.

#[cfg(target_arch = "x86_64")]
use super::simd::x86::{Avx2, Avx512};
use super::simd::{Portable, Simd};
use super::{Isa, SendPtr, isa, norm::affine_plane, parallel_for, threads_for};

/// What happens to the input as it is read.
#[derive(Clone, Copy)]
pub enum Input<'a> {
    Plain,
    /// `x * scale + shift` per (image, channel) (`[batch * cin]` each), then SiLU if `silu`.
    Affine {
        scale: &'a [f32],
        shift: &'a [f32],
        silu: bool,
    },
    /// Nearest-neighbour 2x upsample; the convolution runs at twice the input size.
    Upsample2x,
}

pub struct Conv<'a> {
    /// `[batch, cin, h, w]`
    pub x: &'a [f32],
    pub batch: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    /// `[cout, cin, k, k]`
    pub weight: &'a [f32],
    pub cout: usize,
    pub k: usize,
    /// `[cout]`
    pub bias: Option<&'a [f32]>,
    /// `[batch * cout]`, added to every position of that image and channel.
    pub image_bias: Option<&'a [f32]>,
    /// `[batch, cout, H, W]`, added to the output.
    pub residual: Option<&'a [f32]>,
    pub input: Input<'a>,
    /// How `weight` is laid out (see [`Weights`]).
    pub weights: Weights,
}

/// The layout of [`Conv::weight`].
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Weights {
    /// `[cout, cin, k, k]`, PyTorch's layout.
    Forward,
    /// The weight of the convolution this one is the input gradient of: `[cin, cout, k, k]`,
    /// read transposed and spatially flipped. For a stride-1 "same" convolution `y = w * x`,
    /// `dx = flip(w)^T * dy` is again such a convolution.
    Flipped,
}

/// Output-position tiles per parallel task.
const CHUNK_TILES: usize = 8;

pub(super) struct Geometry {
    /// Output size.
    pub oh: usize,
    pub ow: usize,
    /// Padded row width and plane size of the padded input.
    pub wp: usize,
    pub plane: usize,
    /// Output positions along padded rows.
    pub n: usize,
    /// Input channels a task's tiles go through before the next block (see [`Geometry::of`]).
    pub channel_block: usize,
}

/// Bytes of one input-channel block's slice of a chunk (the rows a chunk's taps read).
const CHANNEL_BLOCK_BYTES: usize = 96 << 10;

impl Geometry {
    pub fn of(c: &Conv) -> Self {
        let (oh, ow) = match c.input {
            Input::Upsample2x => (2 * c.h, 2 * c.w),
            _ => (c.h, c.w),
        };
        let wp = ow + c.k - 1;
        // A chunk of CHUNK_TILES tiles (at most 32 positions each) spans this many padded rows
        // of every input plane, with the taps' halo.
        let rows = (CHUNK_TILES * 32).div_ceil(wp) + c.k;
        let per_channel = rows * wp * std::mem::size_of::<f32>();
        Self {
            oh,
            ow,
            wp,
            plane: (oh + c.k - 1) * wp,
            n: oh * wp,
            channel_block: (CHANNEL_BLOCK_BYTES / per_channel).max(8),
        }
    }
}

/// The zero-padded, transformed input: `[batch, cin, plane]` plus slack for the last tile.
pub(super) fn padded_input(c: &Conv, g: &Geometry, tile: usize) -> Vec<f32> {
    let p = (c.k - 1) / 2;
    let planes = c.batch * c.cin;
    let slack = tile * 2 + c.k * (g.wp + 1);
    let mut buf = vec![0.0f32; planes * g.plane + slack];
    let dst = SendPtr(buf.as_mut_ptr());
    let per_task = (16_384 / g.plane.max(1)).max(1);
    parallel_for(
        planes.div_ceil(per_task),
        threads_for(planes * g.plane * 2),
        |t| {
            for pl in t * per_task..((t + 1) * per_task).min(planes) {
                // SAFETY: each plane is written by one task, inside `buf`.
                let out =
                    unsafe { std::slice::from_raw_parts_mut(dst.get().add(pl * g.plane), g.plane) };
                for y in 0..g.oh {
                    input_row(c, pl, y, &mut out[(y + p) * g.wp + p..][..g.ow]);
                }
            }
        },
    );
    buf
}

/// Row `y` (at the output size) of input plane `pl` (image * cin + channel) as the convolution
/// reads it: transformed, or upsampled; `row` holds the output width.
pub(super) fn input_row(c: &Conv, pl: usize, y: usize, row: &mut [f32]) {
    let (h, w) = (c.h, c.w);
    let src = &c.x[pl * h * w..(pl + 1) * h * w];
    match c.input {
        Input::Plain => row.copy_from_slice(&src[y * w..(y + 1) * w]),
        Input::Affine { scale, shift, silu } => {
            affine_plane(&src[y * w..(y + 1) * w], row, scale[pl], shift[pl], silu)
        }
        Input::Upsample2x => {
            let s = &src[(y / 2) * w..(y / 2 + 1) * w];
            for (x, v) in row.iter_mut().enumerate() {
                *v = s[x / 2];
            }
        }
    }
}

/// One register tile: `MR` output channels x `2 * L` positions, over the input channels
/// `channels` and all taps. `inp` points at the image's first input plane, offset by the tile's
/// first position. The sums start from `bias` on the first channel block, else from what `out`
/// holds (the earlier blocks' partial sums).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<S: Simd, const MR: usize, const K: usize>(
    inp: *const f32,
    (plane, wp, channels): (usize, usize, std::ops::Range<usize>),
    (w, wcs, taps): (&[*const f32; MR], usize, &[usize; 9]),
    bias: &[f32; MR],
    out: *mut f32,
    out_stride: usize,
) {
    let l = S::L;
    unsafe {
        let mut acc: [[S::V; 2]; MR] = if channels.start == 0 {
            std::array::from_fn(|m| [S::splat(bias[m]); 2])
        } else {
            std::array::from_fn(|m| {
                let o = out.add(m * out_stride);
                [S::load(o), S::load(o.add(l))]
            })
        };
        for ci in channels {
            let ip = inp.add(ci * plane);
            let wo = ci * wcs;
            for ky in 0..K {
                for kx in 0..K {
                    let src = ip.add(ky * wp + kx);
                    let x0 = S::load(src);
                    let x1 = S::load(src.add(l));
                    let t = wo + taps[ky * K + kx];
                    for m in 0..MR {
                        let wv = S::splat(*w[m].add(t));
                        acc[m][0] = S::fma(wv, x0, acc[m][0]);
                        acc[m][1] = S::fma(wv, x1, acc[m][1]);
                    }
                }
            }
        }
        for (m, a) in acc.iter().enumerate() {
            S::store(out.add(m * out_stride), a[0]);
            S::store(out.add(m * out_stride + l), a[1]);
        }
    }
}

/// One task: image `b`, position chunk `chunk`, output-channel blocks `blocks`.
#[inline(always)]
unsafe fn task<S: Simd, const MR: usize, const K: usize>(
    c: &Conv,
    g: &Geometry,
    inp: &[f32],
    out: SendPtr,
    (b, chunk, blocks): (usize, usize, std::ops::Range<usize>),
) {
    let tw = 2 * S::L;
    let cw = CHUNK_TILES * tw;
    let q0 = chunk * cw;
    let q1 = (q0 + cw).min(g.n);
    let tiles = (q1 - q0).div_ceil(tw);
    let mut tmp = vec![0.0f32; MR * cw];
    // Where output channel `co`'s weights start, how far apart its input channels are, and the
    // offset of each tap.
    let (row, wcs, taps) = match c.weights {
        Weights::Forward => (c.cin * K * K, K * K, std::array::from_fn(|t| t)),
        Weights::Flipped => (
            K * K,
            c.cout * K * K,
            std::array::from_fn(|t| (K * K - 1).saturating_sub(t)),
        ),
    };
    let out_plane = g.oh * g.ow;
    for blk in blocks {
        let co0 = blk * MR;
        // Rows past `cout` repeat the last channel; their results are dropped.
        let w: [*const f32; MR] =
            std::array::from_fn(|m| c.weight[(co0 + m).min(c.cout - 1) * row..].as_ptr());
        let bias: [f32; MR] = std::array::from_fn(|m| {
            let co = co0 + m;
            if co >= c.cout {
                return 0.0;
            }
            c.bias.map_or(0.0, |v| v[co]) + c.image_bias.map_or(0.0, |v| v[b * c.cout + co])
        });
        let base = inp[b * c.cin * g.plane + q0..].as_ptr();
        // Input channels in blocks whose slice of this chunk stays in L2 across the tiles.
        let mut ci0 = 0;
        while ci0 < c.cin {
            let ci1 = (ci0 + g.channel_block).min(c.cin);
            for t in 0..tiles {
                // SAFETY: the padded input has slack for a whole last tile; `tmp` holds
                // `CHUNK_TILES` tiles per channel.
                unsafe {
                    tile::<S, MR, K>(
                        base.add(t * tw),
                        (g.plane, g.wp, ci0..ci1),
                        (&w, wcs, &taps),
                        &bias,
                        tmp.as_mut_ptr().add(t * tw),
                        cw,
                    );
                }
            }
            ci0 = ci1;
        }
        // Keep the real columns of every row this chunk touches.
        for m in 0..MR.min(c.cout - co0) {
            let co = co0 + m;
            let plane_off = (b * c.cout + co) * out_plane;
            let src = &tmp[m * cw..m * cw + (q1 - q0)];
            let mut q = q0;
            while q < q1 {
                let (y, x) = (q / g.wp, q % g.wp);
                let end = (q - x + g.wp).min(q1);
                if x < g.ow {
                    let len = (end - q).min(g.ow - x);
                    let o = plane_off + y * g.ow + x;
                    // SAFETY: (b, co, y, x..x + len) is inside the output, and each is written
                    // by exactly one task.
                    let dst = unsafe { std::slice::from_raw_parts_mut(out.get().add(o), len) };
                    let s = &src[q - q0..q - q0 + len];
                    match c.residual {
                        Some(r) => {
                            for ((d, &v), &rv) in dst.iter_mut().zip(s).zip(&r[o..o + len]) {
                                *d = v + rv;
                            }
                        }
                        None => dst.copy_from_slice(s),
                    }
                }
                q = end;
            }
        }
    }
}

type TaskFn = unsafe fn(&Conv, &Geometry, &[f32], SendPtr, (usize, usize, std::ops::Range<usize>));

macro_rules! task_fn {
    ($name:ident, $s:ty, $mr:expr, $k:expr, $feat:literal) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feat)]
        unsafe fn $name(
            c: &Conv,
            g: &Geometry,
            inp: &[f32],
            out: SendPtr,
            t: (usize, usize, std::ops::Range<usize>),
        ) {
            unsafe { task::<$s, $mr, $k>(c, g, inp, out, t) }
        }
    };
}

task_fn!(task_avx512_k3_12, Avx512, 12, 3, "avx512f,avx2,fma");
task_fn!(task_avx512_k1_12, Avx512, 12, 1, "avx512f,avx2,fma");
task_fn!(task_avx512_k3_8, Avx512, 8, 3, "avx512f,avx2,fma");
task_fn!(task_avx512_k1_8, Avx512, 8, 1, "avx512f,avx2,fma");
task_fn!(task_avx512_k3_4, Avx512, 4, 3, "avx512f,avx2,fma");
task_fn!(task_avx512_k1_4, Avx512, 4, 1, "avx512f,avx2,fma");
task_fn!(task_avx2_k3_6, Avx2, 6, 3, "avx2,fma");
task_fn!(task_avx2_k1_6, Avx2, 6, 1, "avx2,fma");
task_fn!(task_avx2_k3_4, Avx2, 4, 3, "avx2,fma");
task_fn!(task_avx2_k1_4, Avx2, 4, 1, "avx2,fma");

unsafe fn task_portable_k3(
    c: &Conv,
    g: &Geometry,
    inp: &[f32],
    out: SendPtr,
    t: (usize, usize, std::ops::Range<usize>),
) {
    unsafe { task::<Portable, 4, 3>(c, g, inp, out, t) }
}

unsafe fn task_portable_k1(
    c: &Conv,
    g: &Geometry,
    inp: &[f32],
    out: SendPtr,
    t: (usize, usize, std::ops::Range<usize>),
) {
    unsafe { task::<Portable, 4, 1>(c, g, inp, out, t) }
}

/// Whether [`conv2d`] handles a kernel of size `k` with this stride, padding, dilation, groups.
pub fn supported(
    k: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 4],
    dilation: [usize; 2],
    groups: usize,
) -> bool {
    let p = (k[0].saturating_sub(1)) / 2;
    k[0] == k[1]
        && (k[0] == 1 || k[0] == 3)
        && stride == [1, 1]
        && dilation == [1, 1]
        && groups == 1
        && padding == [p; 4]
}

/// The convolution described by `c`; returns `[batch, cout, H, W]`. Wide 3x3 convolutions over
/// many positions go through Winograd's F(2x2, 3x3) ([`super::conv_winograd`]).
pub fn conv2d(c: &Conv) -> Vec<f32> {
    super::conv_winograd::conv2d(c).unwrap_or_else(|| direct_conv2d(c))
}

/// [`conv2d`] by the direct register-tile kernels, whatever the shape.
pub(super) fn direct_conv2d(c: &Conv) -> Vec<f32> {
    assert!(c.k == 1 || c.k == 3, "conv2d: kernel {}", c.k);
    assert_eq!(c.x.len(), c.batch * c.cin * c.h * c.w, "conv2d: input size");
    assert_eq!(
        c.weight.len(),
        c.cout * c.cin * c.k * c.k,
        "conv2d: weight size"
    );
    let g = Geometry::of(c);
    let (oh, ow) = (g.oh, g.ow);
    if let Some(r) = c.residual {
        assert_eq!(r.len(), c.batch * c.cout * oh * ow, "conv2d: residual size");
    }
    let isa = isa();
    // Output channels per register tile: the widest (most multiply-adds per load) unless it
    // pads more than an eighth of the channels; else the one that pads the fewest.
    let (lanes, choices): (usize, &[usize]) = match isa {
        Isa::Avx512 => (16, &[12, 8, 4]),
        Isa::Avx2 => (8, &[6, 4]),
        Isa::Portable => (8, &[4]),
    };
    let waste = |m: usize| c.cout.div_ceil(m) * m - c.cout;
    let mr = choices
        .iter()
        .copied()
        .find(|&m| waste(m) * 8 <= c.cout)
        .or_else(|| choices.iter().copied().min_by_key(|&m| waste(m)))
        .expect("a tile height");
    let tw = 2 * lanes;
    let inp = padded_input(c, &g, tw);
    let mut out = vec![0.0f32; c.batch * c.cout * oh * ow];
    let dst = SendPtr(out.as_mut_ptr());

    let chunks = g.n.div_ceil(CHUNK_TILES * tw);
    let blocks = c.cout.div_ceil(mr);
    let work = c.batch * c.cout * g.n * c.cin * c.k * c.k;
    let threads = threads_for(work).min(super::threads());
    // Split the output channels too when images x chunks alone leave threads idle.
    let want = 4 * threads;
    let groups = if c.batch * chunks >= want {
        1
    } else {
        blocks.min(want.div_ceil(c.batch * chunks))
    };
    let per_group = blocks.div_ceil(groups);
    let run: TaskFn = match (isa, c.k, mr) {
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512, 3, 12) => task_avx512_k3_12,
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512, _, 12) => task_avx512_k1_12,
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512, 3, 8) => task_avx512_k3_8,
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512, _, 8) => task_avx512_k1_8,
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512, 3, _) => task_avx512_k3_4,
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512, _, _) => task_avx512_k1_4,
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, 3, 6) => task_avx2_k3_6,
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, _, 6) => task_avx2_k1_6,
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, 3, _) => task_avx2_k3_4,
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, _, _) => task_avx2_k1_4,
        (_, 3, _) => task_portable_k3,
        _ => task_portable_k1,
    };
    parallel_for(c.batch * chunks * groups, threads, |t| {
        let (b, rest) = (t / (chunks * groups), t % (chunks * groups));
        let (chunk, grp) = (rest / groups, rest % groups);
        let range = grp * per_group..((grp + 1) * per_group).min(blocks);
        // SAFETY: `run` matches the CPU (checked by `isa()`); tasks write disjoint outputs.
        unsafe { run(c, &g, &inp, dst, (b, chunk, range)) };
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cpu::test_values as data;

    /// Direct definition, in f64.
    fn reference(c: &Conv) -> Vec<f32> {
        let (oh, ow) = match c.input {
            Input::Upsample2x => (2 * c.h, 2 * c.w),
            _ => (c.h, c.w),
        };
        let p = (c.k - 1) as isize / 2;
        let read = |b: usize, ci: usize, y: isize, x: isize| -> f64 {
            if y < 0 || x < 0 || y >= oh as isize || x >= ow as isize {
                return 0.0;
            }
            let (y, x) = (y as usize, x as usize);
            let pl = b * c.cin + ci;
            match c.input {
                Input::Plain => c.x[(pl * c.h + y) * c.w + x] as f64,
                Input::Upsample2x => c.x[(pl * c.h + y / 2) * c.w + x / 2] as f64,
                Input::Affine { scale, shift, silu } => {
                    let v =
                        c.x[(pl * c.h + y) * c.w + x] as f64 * scale[pl] as f64 + shift[pl] as f64;
                    if silu { v / (1.0 + (-v).exp()) } else { v }
                }
            }
        };
        let mut out = vec![0.0f32; c.batch * c.cout * oh * ow];
        for b in 0..c.batch {
            for co in 0..c.cout {
                for y in 0..oh {
                    for x in 0..ow {
                        let mut acc = c.bias.map_or(0.0, |v| v[co] as f64)
                            + c.image_bias.map_or(0.0, |v| v[b * c.cout + co] as f64);
                        for ci in 0..c.cin {
                            for ky in 0..c.k {
                                for kx in 0..c.k {
                                    let wv = c.weight[((co * c.cin + ci) * c.k + ky) * c.k + kx];
                                    acc += wv as f64
                                        * read(
                                            b,
                                            ci,
                                            y as isize + ky as isize - p,
                                            x as isize + kx as isize - p,
                                        );
                                }
                            }
                        }
                        let o = ((b * c.cout + co) * oh + y) * ow + x;
                        out[o] = (acc + c.residual.map_or(0.0, |r| r[o] as f64)) as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn convolutions_match_the_definition() {
        for &(batch, cin, cout, h, w, k, mode) in &[
            (2, 5, 7, 9, 11, 3, 0),
            (1, 3, 13, 4, 4, 3, 1),
            (2, 8, 26, 6, 5, 3, 2),
            (1, 16, 16, 33, 40, 3, 0),
            (2, 7, 9, 5, 3, 1, 1),
            (1, 4, 3, 1, 1, 3, 0),
            (1, 4, 2, 2, 3, 1, 2),
            // More input channels than one channel block (62 at this width).
            (1, 70, 3, 64, 64, 3, 1),
            // Small planes (the bundled model's deepest blocks).
            (3, 9, 14, 2, 2, 3, 1),
            (2, 6, 5, 2, 2, 3, 2),
            (4, 7, 9, 3, 3, 1, 0),
            (2, 5, 6, 4, 4, 3, 0),
        ] {
            let x = data(batch * cin * h * w, 1);
            let weight = data(cout * cin * k * k, 2);
            let bias = data(cout, 3);
            let image_bias = data(batch * cout, 4);
            let scale = data(batch * cin, 5);
            let shift = data(batch * cin, 6);
            let (oh, ow) = if mode == 2 { (2 * h, 2 * w) } else { (h, w) };
            let residual = data(batch * cout * oh * ow, 7);
            let input = match mode {
                0 => Input::Plain,
                1 => Input::Affine {
                    scale: &scale,
                    shift: &shift,
                    silu: true,
                },
                _ => Input::Upsample2x,
            };
            let c = Conv {
                x: &x,
                batch,
                cin,
                h,
                w,
                weight: &weight,
                cout,
                k,
                bias: Some(&bias),
                image_bias: (mode == 1).then_some(&image_bias[..]),
                residual: (mode != 2).then_some(&residual[..]),
                input,
                weights: Weights::Forward,
            };
            let want = reference(&c);
            let got = conv2d(&c);
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                err < 1e-4,
                "{batch}x{cin}->{cout} {h}x{w} k{k} mode {mode}: {err}"
            );
        }
    }
}
