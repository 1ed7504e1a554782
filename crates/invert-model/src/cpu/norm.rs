//! GroupNorm as a per-(image, channel) scale and shift, so that the normalisation (and the SiLU
//! after it) can be applied while the next kernel reads its input.

#[cfg(target_arch = "x86_64")]
use super::simd::x86::{Avx2, Avx512};
use super::simd::{Portable, Simd};
use super::{Isa, SendPtr, isa, parallel_for, threads_for};

/// Elements summed in f32 lanes before the partial sum moves to f64.
const CHUNK: usize = 4096;

#[inline(always)]
unsafe fn sums<S: Simd>(x: &[f32], mean: f32) -> (f64, f64) {
    let l = S::L;
    let (mut total, mut total_sq) = (0.0f64, 0.0f64);
    for chunk in x.chunks(CHUNK) {
        let n = chunk.len() / (2 * l) * (2 * l);
        let p = chunk.as_ptr();
        // SAFETY: every load is below `n <= chunk.len()`.
        unsafe {
            let m = S::splat(mean);
            let (mut s0, mut s1, mut q0, mut q1) = (S::zero(), S::zero(), S::zero(), S::zero());
            let mut i = 0;
            while i < n {
                let a = S::sub(S::load(p.add(i)), m);
                let b = S::sub(S::load(p.add(i + l)), m);
                s0 = S::add(s0, a);
                s1 = S::add(s1, b);
                q0 = S::fma(a, a, q0);
                q1 = S::fma(b, b, q1);
                i += 2 * l;
            }
            let mut s = S::hsum(S::add(s0, s1)) as f64;
            let mut q = S::hsum(S::add(q0, q1)) as f64;
            for &v in &chunk[n..] {
                let a = (v - mean) as f64;
                s += a;
                q += a * a;
            }
            total += s;
            total_sq += q;
        }
    }
    (total, total_sq)
}

/// Mean and biased variance of `x`, from sums around a first estimate of the mean (so the
/// variance does not lose precision when the mean is large).
#[inline(always)]
unsafe fn moments<S: Simd>(x: &[f32]) -> (f64, f64) {
    let n = x.len() as f64;
    let (s, _) = unsafe { sums::<S>(x, 0.0) };
    let mean0 = (s / n) as f32;
    let (s, q) = unsafe { sums::<S>(x, mean0) };
    let d = s / n;
    (mean0 as f64 + d, (q / n - d * d).max(0.0))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn moments_avx512(x: &[f32]) -> (f64, f64) {
    unsafe { moments::<Avx512>(x) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn moments_avx2(x: &[f32]) -> (f64, f64) {
    unsafe { moments::<Avx2>(x) }
}

fn group_moments(x: &[f32]) -> (f64, f64) {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa()` checked the CPU.
        Isa::Avx512 => unsafe { moments_avx512(x) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { moments_avx2(x) },
        // SAFETY: plain arrays.
        _ => unsafe { moments::<Portable>(x) },
    }
}

/// Per-(image, group) statistics of `GroupNorm(groups, eps)` over `x` `[batch, channels, n]`:
/// `mean` and `rstd = 1 / sqrt(var + eps)`, each `[batch * groups]`.
#[derive(Clone, Debug)]
pub struct GroupStats {
    pub mean: Vec<f32>,
    pub rstd: Vec<f32>,
    pub groups: usize,
}

/// The statistics of `x` `[batch, channels, n]` (see [`GroupStats`]).
pub fn group_stats(
    x: &[f32],
    batch: usize,
    channels: usize,
    n: usize,
    groups: usize,
    eps: f64,
) -> GroupStats {
    assert_eq!(x.len(), batch * channels * n, "group norm: input size");
    assert!(
        groups > 0 && channels.is_multiple_of(groups),
        "group norm: {channels} channels in {groups} groups"
    );
    let per = channels / groups;
    let mut mean = vec![0.0f32; batch * groups];
    let mut rstd = vec![0.0f32; batch * groups];
    let (mp, rp) = (SendPtr(mean.as_mut_ptr()), SendPtr(rstd.as_mut_ptr()));
    parallel_for(batch * groups, threads_for(x.len() * 2), |t| {
        let (b, g) = (t / groups, t % groups);
        let start = (b * channels + g * per) * n;
        let (m, var) = group_moments(&x[start..start + per * n]);
        // SAFETY: each task writes its own (image, group) entry.
        unsafe {
            *mp.get().add(t) = m as f32;
            *rp.get().add(t) = (1.0 / (var + eps).sqrt()) as f32;
        }
    });
    GroupStats { mean, rstd, groups }
}

impl GroupStats {
    /// The normalisation and the per-channel `gamma`/`beta` as `y = x * scale + shift` per
    /// (image, channel): `(scale, shift)`, each `[batch * channels]`.
    pub fn affine(
        &self,
        channels: usize,
        gamma: Option<&[f32]>,
        beta: Option<&[f32]>,
    ) -> (Vec<f32>, Vec<f32>) {
        let per = channels / self.groups;
        let planes = self.mean.len() * per;
        let mut scale = vec![0.0f32; planes];
        let mut shift = vec![0.0f32; planes];
        for (p, (a_out, s_out)) in scale.iter_mut().zip(shift.iter_mut()).enumerate() {
            let c = p % channels;
            let bg = p / per;
            let a = gamma.map_or(1.0, |g| g[c] as f64) * self.rstd[bg] as f64;
            *a_out = a as f32;
            *s_out = (beta.map_or(0.0, |b| b[c] as f64) - self.mean[bg] as f64 * a) as f32;
        }
        (scale, shift)
    }
}

/// `GroupNorm(groups, eps)` with per-channel `gamma`/`beta` of `x` `[batch, channels, n]`,
/// expressed as `y = x * scale + shift` per (image, channel): returns `(scale, shift)`, each
/// `[batch * channels]`.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_affine(
    x: &[f32],
    batch: usize,
    channels: usize,
    n: usize,
    groups: usize,
    eps: f64,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
) -> (Vec<f32>, Vec<f32>) {
    group_stats(x, batch, channels, n, groups, eps).affine(channels, gamma, beta)
}

#[inline(always)]
unsafe fn apply_plane<S: Simd>(x: &[f32], out: &mut [f32], a: f32, b: f32, silu: bool) {
    let l = S::L;
    let n = x.len() / l * l;
    // SAFETY: loads and stores below `n`.
    unsafe {
        let (av, bv) = (S::splat(a), S::splat(b));
        let mut i = 0;
        while i < n {
            let v = S::fma(S::load(x.as_ptr().add(i)), av, bv);
            let v = if silu { S::silu(v) } else { v };
            S::store(out.as_mut_ptr().add(i), v);
            i += l;
        }
    }
    for i in n..x.len() {
        let v = x[i] * a + b;
        out[i] = if silu { v / (1.0 + (-v).exp()) } else { v };
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn apply_plane_avx512(x: &[f32], out: &mut [f32], a: f32, b: f32, silu: bool) {
    unsafe { apply_plane::<Avx512>(x, out, a, b, silu) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn apply_plane_avx2(x: &[f32], out: &mut [f32], a: f32, b: f32, silu: bool) {
    unsafe { apply_plane::<Avx2>(x, out, a, b, silu) }
}

/// `out = x * a + b`, then SiLU if `silu`, for one plane.
pub fn affine_plane(x: &[f32], out: &mut [f32], a: f32, b: f32, silu: bool) {
    debug_assert_eq!(x.len(), out.len());
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa()` checked the CPU.
        Isa::Avx512 => unsafe { apply_plane_avx512(x, out, a, b, silu) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { apply_plane_avx2(x, out, a, b, silu) },
        // SAFETY: plain arrays.
        _ => unsafe { apply_plane::<Portable>(x, out, a, b, silu) },
    }
}

/// `x [batch, channels, n] * scale + shift` per (image, channel), then SiLU if `silu`.
pub fn apply_affine(
    x: &[f32],
    channels_n: (usize, usize),
    scale: &[f32],
    shift: &[f32],
    silu: bool,
) -> Vec<f32> {
    let (_, n) = channels_n;
    let planes = scale.len();
    assert_eq!(x.len(), planes * n, "affine: input size");
    let mut out = vec![0.0f32; x.len()];
    let dst = SendPtr(out.as_mut_ptr());
    let per_task = (16_384 / n.max(1)).max(1);
    parallel_for(planes.div_ceil(per_task), threads_for(x.len() * 4), |t| {
        for p in t * per_task..((t + 1) * per_task).min(planes) {
            // SAFETY: each plane is written by one task.
            let o = unsafe { std::slice::from_raw_parts_mut(dst.get().add(p * n), n) };
            affine_plane(&x[p * n..(p + 1) * n], o, scale[p], shift[p], silu);
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_norm_matches_the_definition() {
        let (batch, channels, n, groups) = (2, 6, 37, 3);
        let x: Vec<f32> = (0..batch * channels * n)
            .map(|i| ((i * 7919 % 1000) as f32 / 100.0 - 5.0) + 1000.0 * (i / 200) as f32)
            .collect();
        let gamma: Vec<f32> = (0..channels).map(|c| 0.5 + c as f32).collect();
        let beta: Vec<f32> = (0..channels).map(|c| c as f32 - 2.0).collect();
        let (scale, shift) = group_norm_affine(
            &x,
            batch,
            channels,
            n,
            groups,
            1e-5,
            Some(&gamma),
            Some(&beta),
        );
        let y = apply_affine(&x, (channels, n), &scale, &shift, false);
        let per = channels / groups;
        for b in 0..batch {
            for g in 0..groups {
                let s = (b * channels + g * per) * n;
                let xs = &x[s..s + per * n];
                let mean = xs.iter().map(|&v| v as f64).sum::<f64>() / xs.len() as f64;
                let var =
                    xs.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / xs.len() as f64;
                for (i, &v) in xs.iter().enumerate() {
                    let c = g * per + i / n;
                    let want =
                        (v as f64 - mean) / (var + 1e-5).sqrt() * gamma[c] as f64 + beta[c] as f64;
                    let got = y[s + i] as f64;
                    assert!(
                        (got - want).abs() < 1e-4 * want.abs().max(1.0),
                        "{got} vs {want}"
                    );
                }
            }
        }
        let z = apply_affine(&x, (channels, n), &scale, &shift, true);
        for (a, b) in y.iter().zip(&z) {
            let want = a / (1.0 + (-a).exp());
            assert!(
                (b - want).abs() < 1e-5 * want.abs().max(1.0),
                "{b} vs {want}"
            );
        }
    }
}
