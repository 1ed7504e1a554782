//! Backward passes of GroupNorm (+ SiLU) and LayerNorm, and LayerNorm's forward.
//!
//! With `xhat = (x - mean) * rstd`, `a = gamma * xhat + beta` and `y = silu(a)` (or `a`), over
//! the `N` elements one mean covers:
//!
//! - `da = dy * silu'(a)`, `silu'(a) = sig(a) (1 + a (1 - sig(a)))`
//! - `dgamma = sum(da * xhat)`, `dbeta = sum(da)` (per channel)
//! - `dx = rstd * (gamma da - mean(gamma da) - xhat * mean(gamma da * xhat))`

#[cfg(target_arch = "x86_64")]
use super::simd::x86::{Avx2, Avx512};
use super::simd::{Portable, Simd};
use super::{Isa, SendPtr, isa, norm::GroupStats, parallel_for, threads_for};

/// Gradients of a normalisation: the input's (when asked) and the affine parameters' (when
/// asked).
pub struct NormGrads {
    pub dx: Option<Vec<f32>>,
    pub dgamma: Option<Vec<f32>>,
    pub dbeta: Option<Vec<f32>>,
}

/// `da = dy * act'(a)` into `da` for one plane with `a = x * sc + sh`; returns
/// `(sum(da), sum(da * (x - mean)))`.
#[inline(always)]
unsafe fn plane_da<S: Simd>(
    x: &[f32],
    dy: &[f32],
    da: &mut [f32],
    sc: f32,
    sh: f32,
    mean: f32,
    silu: bool,
) -> (f64, f64) {
    let l = S::L;
    let n = x.len() / l * l;
    let (mut s_da, mut s_dax) = (0.0f64, 0.0f64);
    // SAFETY: loads and stores below `n`.
    unsafe {
        let (scv, shv, one, mv) = (S::splat(sc), S::splat(sh), S::splat(1.0), S::splat(mean));
        let (mut acc, mut accx) = (S::zero(), S::zero());
        let mut i = 0;
        while i < n {
            let xv = S::load(x.as_ptr().add(i));
            let mut g = S::load(dy.as_ptr().add(i));
            if silu {
                let a = S::fma(xv, scv, shv);
                let sig = S::div(one, S::add(one, S::exp(S::sub(S::zero(), a))));
                // sig * (1 + a * (1 - sig))
                let d = S::mul(sig, S::fma(a, S::sub(one, sig), one));
                g = S::mul(g, d);
            }
            S::store(da.as_mut_ptr().add(i), g);
            acc = S::add(acc, g);
            accx = S::fma(g, S::sub(xv, mv), accx);
            i += l;
        }
        s_da += S::hsum(acc) as f64;
        s_dax += S::hsum(accx) as f64;
    }
    for i in n..x.len() {
        let mut g = dy[i];
        if silu {
            let a = x[i] * sc + sh;
            let sig = 1.0 / (1.0 + (-a).exp());
            g *= sig * (1.0 + a * (1.0 - sig));
        }
        da[i] = g;
        s_da += g as f64;
        s_dax += (g * (x[i] - mean)) as f64;
    }
    (s_da, s_dax)
}

/// `dx = a * da + c * x + b` in place over `da`.
#[inline(always)]
unsafe fn plane_dx<S: Simd>(x: &[f32], da: &mut [f32], a: f32, b: f32, c: f32) {
    let l = S::L;
    let n = x.len() / l * l;
    // SAFETY: loads and stores below `n`.
    unsafe {
        let (av, bv, cv) = (S::splat(a), S::splat(b), S::splat(c));
        let mut i = 0;
        while i < n {
            let p = da.as_mut_ptr().add(i);
            let v = S::fma(S::load(p), av, S::fma(S::load(x.as_ptr().add(i)), cv, bv));
            S::store(p, v);
            i += l;
        }
    }
    for i in n..x.len() {
        da[i] = a * da[i] + c * x[i] + b;
    }
}

macro_rules! dispatch {
    ($name:ident, $inner:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx2,fma")]
            unsafe fn avx512($($arg: $ty),*) -> $ret {
                unsafe { $inner::<Avx512>($($arg),*) }
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($arg: $ty),*) -> $ret {
                unsafe { $inner::<Avx2>($($arg),*) }
            }
            match isa() {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `isa()` checked the CPU.
                Isa::Avx512 => unsafe { avx512($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as above.
                Isa::Avx2 => unsafe { avx2($($arg),*) },
                // SAFETY: plain arrays.
                _ => unsafe { $inner::<Portable>($($arg),*) },
            }
        }
    };
}

dispatch!(da_plane, plane_da, (x: &[f32], dy: &[f32], da: &mut [f32], sc: f32, sh: f32, mean: f32, silu: bool) -> (f64, f64));
dispatch!(dx_plane, plane_dx, (x: &[f32], da: &mut [f32], a: f32, b: f32, c: f32) -> ());

/// Gradients of `act(GroupNorm(x))` (`act` SiLU when `silu`) for `x` `[batch, channels, n]`
/// with the forward's `stats`, given `dy`. `need_x` asks for `dx`, `need_affine` for
/// `dgamma`/`dbeta` (`[channels]`).
#[allow(clippy::too_many_arguments)]
pub fn group_norm_backward(
    x: &[f32],
    dy: &[f32],
    (batch, channels, n): (usize, usize, usize),
    stats: &GroupStats,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    silu: bool,
    (need_x, need_affine): (bool, bool),
) -> NormGrads {
    assert_eq!(
        x.len(),
        batch * channels * n,
        "group norm backward: input size"
    );
    assert_eq!(dy.len(), x.len(), "group norm backward: gradient size");
    let groups = stats.groups;
    let per = channels / groups;
    let (scale, shift) = stats.affine(channels, gamma, beta);
    let mut da = vec![0.0f32; x.len()];
    // Per (image, channel): sum(da), sum(da * x).
    let mut sums = vec![(0.0f64, 0.0f64); batch * channels];
    let (dp, sp) = (SendPtr(da.as_mut_ptr()), sums.as_mut_ptr() as usize);
    parallel_for(batch * groups, threads_for(x.len() * 8), |t| {
        let (b, g) = (t / groups, t % groups);
        let (mean, rstd) = (stats.mean[t] as f64, stats.rstd[t] as f64);
        let mut s1 = 0.0f64;
        let mut s2 = 0.0f64;
        for c in g * per..(g + 1) * per {
            let p = b * channels + c;
            let range = p * n..(p + 1) * n;
            // SAFETY: each task owns its group's planes of `da` and entries of `sums`.
            let dap = unsafe { std::slice::from_raw_parts_mut(dp.get().add(p * n), n) };
            let (sd, sdxm) = da_plane(
                &x[range.clone()],
                &dy[range],
                dap,
                scale[p],
                shift[p],
                mean as f32,
                silu,
            );
            let sdxh = rstd * sdxm;
            unsafe { *(sp as *mut (f64, f64)).add(p) = (sd, sdxh) };
            let gc = gamma.map_or(1.0, |v| v[c] as f64);
            s1 += gc * sd;
            s2 += gc * sdxh;
        }
        if !need_x {
            return;
        }
        let count = (per * n) as f64;
        // dx = rstd * (gamma da - s1 / N - xhat * s2 / N), xhat = (x - mean) rstd
        let c_x = -rstd * rstd * s2 / count;
        let b0 = -rstd * s1 / count - c_x * mean;
        for c in g * per..(g + 1) * per {
            let p = b * channels + c;
            let a = rstd * gamma.map_or(1.0, |v| v[c] as f64);
            // SAFETY: as above.
            let dap = unsafe { std::slice::from_raw_parts_mut(dp.get().add(p * n), n) };
            dx_plane(&x[p * n..(p + 1) * n], dap, a as f32, b0 as f32, c_x as f32);
        }
    });
    let per_channel = |pick: fn(&(f64, f64)) -> f64| {
        let mut out = vec![0.0f64; channels];
        for (p, s) in sums.iter().enumerate() {
            out[p % channels] += pick(s);
        }
        out.into_iter().map(|v| v as f32).collect::<Vec<f32>>()
    };
    NormGrads {
        dgamma: need_affine.then(|| per_channel(|s| s.1)),
        dbeta: need_affine.then(|| per_channel(|s| s.0)),
        dx: need_x.then_some(da),
    }
}

/// Rows per parallel task of the LayerNorm kernels.
const LN_ROWS: usize = 16;

/// LayerNorm over rows of `width`: `(y, mean, rstd)` (`[rows]` each for the statistics).
pub fn layer_norm(
    x: &[f32],
    width: usize,
    gamma: &[f32],
    beta: Option<&[f32]>,
    eps: f64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    assert_eq!(gamma.len(), width, "layer norm: gamma width");
    let rows = x.len() / width.max(1);
    let mut y = vec![0.0f32; x.len()];
    let mut mean = vec![0.0f32; rows];
    let mut rstd = vec![0.0f32; rows];
    let (yp, mp, rp) = (
        SendPtr(y.as_mut_ptr()),
        SendPtr(mean.as_mut_ptr()),
        SendPtr(rstd.as_mut_ptr()),
    );
    parallel_for(rows.div_ceil(LN_ROWS), threads_for(x.len() * 4), |t| {
        for r in t * LN_ROWS..((t + 1) * LN_ROWS).min(rows) {
            let row = &x[r * width..(r + 1) * width];
            let m = row.iter().map(|&v| v as f64).sum::<f64>() / width as f64;
            let var = row.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / width as f64;
            let s = 1.0 / (var + eps).sqrt();
            // SAFETY: each task writes its own rows.
            unsafe {
                *mp.get().add(r) = m as f32;
                *rp.get().add(r) = s as f32;
                let out = std::slice::from_raw_parts_mut(yp.get().add(r * width), width);
                for (i, (o, &v)) in out.iter_mut().zip(row).enumerate() {
                    let xh = ((v as f64 - m) * s) as f32;
                    *o = xh * gamma[i] + beta.map_or(0.0, |b| b[i]);
                }
            }
        }
    });
    (y, mean, rstd)
}

/// Gradients of [`layer_norm`] given `dy`, with the forward's `mean` and `rstd`.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward(
    x: &[f32],
    dy: &[f32],
    width: usize,
    gamma: &[f32],
    (mean, rstd): (&[f32], &[f32]),
    (need_x, need_affine): (bool, bool),
) -> NormGrads {
    let rows = x.len() / width.max(1);
    let mut dx = vec![0.0f32; if need_x { x.len() } else { 0 }];
    let dxp = SendPtr(dx.as_mut_ptr());
    if need_x {
        parallel_for(rows.div_ceil(LN_ROWS), threads_for(x.len() * 6), |t| {
            for r in t * LN_ROWS..((t + 1) * LN_ROWS).min(rows) {
                let (xr, dr) = (
                    &x[r * width..(r + 1) * width],
                    &dy[r * width..(r + 1) * width],
                );
                let (m, s) = (mean[r], rstd[r]);
                let (mut s1, mut s2) = (0.0f64, 0.0f64);
                for i in 0..width {
                    let g = (dr[i] * gamma[i]) as f64;
                    s1 += g;
                    s2 += g * ((xr[i] - m) * s) as f64;
                }
                let (m1, m2) = ((s1 / width as f64) as f32, (s2 / width as f64) as f32);
                // SAFETY: each task writes its own rows.
                let out =
                    unsafe { std::slice::from_raw_parts_mut(dxp.get().add(r * width), width) };
                for i in 0..width {
                    let xh = (xr[i] - m) * s;
                    out[i] = s * (dr[i] * gamma[i] - m1 - xh * m2);
                }
            }
        });
    }
    let (dgamma, dbeta) = if need_affine {
        let (mut dg, mut db) = (vec![0.0f64; width], vec![0.0f64; width]);
        for r in 0..rows {
            for i in 0..width {
                let d = dy[r * width + i] as f64;
                dg[i] += d * ((x[r * width + i] - mean[r]) * rstd[r]) as f64;
                db[i] += d;
            }
        }
        let f = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect();
        (Some(f(dg)), Some(f(db)))
    } else {
        (None, None)
    };
    NormGrads {
        dx: need_x.then_some(dx),
        dgamma,
        dbeta,
    }
}
