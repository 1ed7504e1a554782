//! `x w + b` for the token projections: `x` `[rows, k]`, `w` `[k, n]` (burn's `Linear` layout),
//! register tiles of `MR` rows x two vectors of columns, broadcasting `x` and streaming rows of `w`
//! (no packing: the matrices of Stable Diffusion's projections are small enough to stay in cache).

use super::gemm::{Dest, View, gemm};
#[cfg(target_arch = "x86_64")]
use super::simd::x86::{Avx2, Avx512};
use super::simd::{Portable, Simd};
use super::{Isa, SendPtr, isa, parallel_for, threads_for};

/// Column tiles per task.
const TASK_TILES: usize = 4;
/// Row blocks per task.
const TASK_BLOCKS: usize = 8;

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn task<S: Simd, const MR: usize>(
    x: &[f32],
    rows: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    out: SendPtr,
    (row_chunk, col_chunk): (usize, usize),
) {
    let tw = 2 * S::L;
    let c0 = col_chunk * TASK_TILES * tw;
    let c1 = (c0 + TASK_TILES * tw).min(n);
    let r0 = row_chunk * TASK_BLOCKS * MR;
    let r1 = (r0 + TASK_BLOCKS * MR).min(rows);
    let mut c = c0;
    while c < c1 {
        // SAFETY: `n` is a multiple of the tile width, so `c + tw <= n`; rows are clamped.
        unsafe {
            let b = match bias {
                Some(b) => [
                    S::load(b.as_ptr().add(c)),
                    S::load(b.as_ptr().add(c + S::L)),
                ],
                None => [S::zero(); 2],
            };
            let mut r = r0;
            while r < r1 {
                let valid = MR.min(r1 - r);
                let xr: [*const f32; MR] =
                    std::array::from_fn(|i| x.as_ptr().add((r + i.min(valid - 1)) * k));
                let mut acc = [b; MR];
                let wp = w.as_ptr().add(c);
                for kk in 0..k {
                    let w0 = S::load(wp.add(kk * n));
                    let w1 = S::load(wp.add(kk * n + S::L));
                    for i in 0..MR {
                        let xv = S::splat(*xr[i].add(kk));
                        acc[i][0] = S::fma(xv, w0, acc[i][0]);
                        acc[i][1] = S::fma(xv, w1, acc[i][1]);
                    }
                }
                for (i, a) in acc.iter().enumerate().take(valid) {
                    let o = out.get().add((r + i) * n + c);
                    S::store(o, a[0]);
                    S::store(o.add(S::L), a[1]);
                }
                r += MR;
            }
        }
        c += tw;
    }
}

type TaskFn =
    unsafe fn(&[f32], usize, usize, &[f32], usize, Option<&[f32]>, SendPtr, (usize, usize));

macro_rules! task_fn {
    ($name:ident, $s:ty, $mr:expr, $feat:literal) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feat)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name(
            x: &[f32],
            rows: usize,
            k: usize,
            w: &[f32],
            n: usize,
            bias: Option<&[f32]>,
            out: SendPtr,
            t: (usize, usize),
        ) {
            unsafe { task::<$s, $mr>(x, rows, k, w, n, bias, out, t) }
        }
    };
}

task_fn!(task_avx512, Avx512, 12, "avx512f,avx2,fma");
task_fn!(task_avx2, Avx2, 6, "avx2,fma");

#[allow(clippy::too_many_arguments)]
unsafe fn task_portable(
    x: &[f32],
    rows: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    out: SendPtr,
    t: (usize, usize),
) {
    unsafe { task::<Portable, 4>(x, rows, k, w, n, bias, out, t) }
}

fn tile_width() -> usize {
    match isa() {
        Isa::Avx512 => 32,
        _ => 16,
    }
}

/// Whether [`linear`] handles `n` output columns (a multiple of the tile width).
pub fn supported(n: usize) -> bool {
    n > 0 && n.is_multiple_of(tile_width())
}

/// `x [rows, k] @ w [k, n] + bias`; `n` must be [`supported`].
pub fn linear(
    x: &[f32],
    rows: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    assert!(supported(n), "linear: {n} columns");
    assert_eq!(x.len(), rows * k, "linear: input size");
    assert_eq!(w.len(), k * n, "linear: weight size");
    let mut out = vec![0.0f32; rows * n];
    if rows == 0 {
        return out;
    }
    let (run, mr): (TaskFn, usize) = match isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => (task_avx512, 12),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => (task_avx2, 6),
        _ => (task_portable, 4),
    };
    let row_chunks = rows.div_ceil(TASK_BLOCKS * mr);
    let col_chunks = n.div_ceil(TASK_TILES * tile_width());
    let dst = SendPtr(out.as_mut_ptr());
    parallel_for(row_chunks * col_chunks, threads_for(rows * k * n), |t| {
        // SAFETY: `run` matches the CPU; tasks write disjoint tiles of `out`.
        unsafe {
            run(
                x,
                rows,
                k,
                w,
                n,
                bias,
                dst,
                (t / col_chunks, t % col_chunks),
            )
        };
    });
    out
}

/// Multiply-adds above which [`matmul`] hands a product to the `gemm` crate, whose packed,
/// cache-blocked kernels beat the unpacked tiles of [`linear`] on large products (SD 1.5's
/// projections at 64x64 latents: 1.1x to 2x, `examples/kernel_rates.rs`), while the unpacked
/// tiles cost less set-up on the small ones (CLIP's 77 tokens, the tiny test models).
const GEMM_CRATE_WORK: usize = 1 << 22;

/// `x [rows, k] @ w [k, n] + bias` for any `n`: the `gemm` crate for large products, else
/// [`linear`] (on `w` and `bias` zero-padded to a supported width when `n` is not one).
pub fn matmul(
    x: &[f32],
    rows: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    assert_eq!(x.len(), rows * k, "matmul: input size");
    assert_eq!(w.len(), k * n, "matmul: weight size");
    if rows * k * n >= GEMM_CRATE_WORK {
        let mut out = match bias {
            Some(b) => b.repeat(rows),
            None => vec![0.0f32; rows * n],
        };
        let dst = Dest {
            data: &mut out,
            offset: 0,
            rs: n,
            cs: 1,
        };
        gemm(
            rows,
            n,
            k,
            dst,
            View::rows(x, k),
            View::rows(w, n),
            bias.is_some(),
        );
        return out;
    }
    if supported(n) || n == 0 {
        if n == 0 {
            return Vec::new();
        }
        return linear(x, rows, k, w, n, bias);
    }
    let np = n.div_ceil(tile_width()) * tile_width();
    let mut wp = vec![0.0f32; k * np];
    for (dst, src) in wp.chunks_exact_mut(np).zip(w.chunks_exact(n)) {
        dst[..n].copy_from_slice(src);
    }
    let bp = bias.map(|b| {
        let mut v = vec![0.0f32; np];
        v[..n].copy_from_slice(b);
        v
    });
    let wide = linear(x, rows, k, &wp, np, bp.as_deref());
    let mut out = Vec::with_capacity(rows * n);
    for row in wide.chunks_exact(np) {
        out.extend_from_slice(&row[..n]);
    }
    out
}

/// Sums of the columns of `x` `[rows, n]`.
pub fn column_sums(x: &[f32], rows: usize, n: usize) -> Vec<f32> {
    assert_eq!(x.len(), rows * n, "column sums: size");
    let mut acc = vec![0.0f64; n];
    for row in x.chunks_exact(n.max(1)).take(rows) {
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += v as f64;
        }
    }
    acc.into_iter().map(|v| v as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_matches_the_definition() {
        let w_ = tile_width();
        for &(rows, k, n) in &[(1, 3, w_), (13, 17, 2 * w_), (50, 64, 5 * w_), (7, 1, w_)] {
            let x: Vec<f32> = (0..rows * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect();
            let w: Vec<f32> = (0..k * n)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 30.0)
                .collect();
            let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.1 - 1.0).collect();
            for bias in [None, Some(&b[..])] {
                let got = linear(&x, rows, k, &w, n, bias);
                // The same product through the gemm crate (as `matmul` does for large ones).
                let mut via_crate = bias.map_or(vec![0.0; rows * n], |b| b.repeat(rows));
                let dst = Dest {
                    data: &mut via_crate,
                    offset: 0,
                    rs: n,
                    cs: 1,
                };
                gemm(
                    rows,
                    n,
                    k,
                    dst,
                    View::rows(&x, k),
                    View::rows(&w, n),
                    bias.is_some(),
                );
                for (a, b) in got.iter().zip(&via_crate) {
                    assert!((a - b).abs() < 1e-4 * b.abs().max(1.0));
                }
                // The first n - 3 columns, through the padded path.
                let narrow: Vec<f32> = w
                    .chunks_exact(n)
                    .flat_map(|r| r[..n - 3].to_vec())
                    .collect();
                let padded = matmul(&x, rows, k, &narrow, n - 3, bias.map(|b| &b[..n - 3]));
                for r in 0..rows {
                    assert_eq!(
                        &padded[r * (n - 3)..(r + 1) * (n - 3)],
                        &got[r * n..r * n + n - 3]
                    );
                }
                for r in 0..rows {
                    for c in 0..n {
                        let mut want = bias.map_or(0.0, |b| b[c] as f64);
                        for i in 0..k {
                            want += x[r * k + i] as f64 * w[i * n + c] as f64;
                        }
                        let g = got[r * n + c] as f64;
                        assert!(
                            (g - want).abs() < 1e-4 * want.abs().max(1.0),
                            "{rows}x{k}x{n}"
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;

    #[test]
    fn column_sums_add_up_rows() {
        assert_eq!(column_sums(&[1.0, 2.0, 3.0, 4.0], 2, 2), vec![4.0, 6.0]);
    }
}
