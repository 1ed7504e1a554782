//! Activations burn's flex backend computes one element at a time (its GELU calls libm `erf`).

#[cfg(target_arch = "x86_64")]
use super::simd::x86::{Avx2, Avx512};
use super::simd::{Portable, Simd};
use super::{Isa, SendPtr, isa, parallel_for, threads_for};

/// Rows per parallel task.
const TASK_ROWS: usize = 64;

#[inline(always)]
unsafe fn geglu_rows<S: Simd>(x: &[f32], out: &mut [f32], inner: usize) {
    let l = S::L;
    let n = inner / l * l;
    for (row, o) in x.chunks_exact(2 * inner).zip(out.chunks_exact_mut(inner)) {
        let (h, g) = row.split_at(inner);
        // SAFETY: loads and stores below `n <= inner`.
        unsafe {
            let mut i = 0;
            while i < n {
                let v = S::mul(
                    S::load(h.as_ptr().add(i)),
                    S::gelu(S::load(g.as_ptr().add(i))),
                );
                S::store(o.as_mut_ptr().add(i), v);
                i += l;
            }
        }
        if n < inner {
            // The tail, through a zero-padded vector of the portable kind.
            let (mut hv, mut gv) = ([0.0f32; 8], [0.0f32; 8]);
            for start in (n..inner).step_by(8) {
                let len = (inner - start).min(8);
                hv[..len].copy_from_slice(&h[start..start + len]);
                gv[..len].copy_from_slice(&g[start..start + len]);
                // SAFETY: plain arrays.
                let v = unsafe { Portable::mul(hv, Portable::gelu(gv)) };
                o[start..start + len].copy_from_slice(&v[..len]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn geglu_rows_avx512(x: &[f32], out: &mut [f32], inner: usize) {
    unsafe { geglu_rows::<Avx512>(x, out, inner) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn geglu_rows_avx2(x: &[f32], out: &mut [f32], inner: usize) {
    unsafe { geglu_rows::<Avx2>(x, out, inner) }
}

/// GEGLU: `x` is `[rows, 2 * inner]`; returns `x[:, :inner] * gelu(x[:, inner:])` (exact GELU),
/// `[rows, inner]`.
pub fn geglu(x: &[f32], rows: usize, inner: usize) -> Vec<f32> {
    assert_eq!(x.len(), rows * 2 * inner, "geglu: input size");
    let mut out = vec![0.0f32; rows * inner];
    let dst = SendPtr(out.as_mut_ptr());
    let isa = isa();
    parallel_for(rows.div_ceil(TASK_ROWS), threads_for(out.len() * 16), |t| {
        let r0 = t * TASK_ROWS;
        let n = TASK_ROWS.min(rows - r0);
        let src = &x[r0 * 2 * inner..(r0 + n) * 2 * inner];
        // SAFETY: tasks write disjoint rows.
        let o = unsafe { std::slice::from_raw_parts_mut(dst.get().add(r0 * inner), n * inner) };
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `isa()` checked the CPU.
            Isa::Avx512 => unsafe { geglu_rows_avx512(src, o, inner) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { geglu_rows_avx2(src, o, inner) },
            // SAFETY: plain arrays.
            _ => unsafe { geglu_rows::<Portable>(src, o, inner) },
        }
    });
    out
}

#[inline(always)]
unsafe fn geglu_backward_rows<S: Simd>(x: &[f32], dout: &[f32], dx: &mut [f32], inner: usize) {
    let l = S::L;
    let n = inner / l * l;
    let rows = x.chunks_exact(2 * inner).zip(dout.chunks_exact(inner));
    for ((row, d), dxr) in rows.zip(dx.chunks_exact_mut(2 * inner)) {
        let (h, g) = row.split_at(inner);
        let (dh, dg) = dxr.split_at_mut(inner);
        // SAFETY: loads and stores below `n <= inner`.
        unsafe {
            let half = S::splat(0.5);
            let inv_sqrt_2pi = S::splat(0.398_942_3);
            let mut i = 0;
            while i < n {
                let gv = S::load(g.as_ptr().add(i));
                let dv = S::load(d.as_ptr().add(i));
                // gelu(g) = g * cdf(g); gelu'(g) = cdf(g) + g * pdf(g)
                let cdf = S::mul(
                    half,
                    S::add(
                        S::splat(1.0),
                        S::erf(S::mul(gv, S::splat(std::f32::consts::FRAC_1_SQRT_2))),
                    ),
                );
                let pdf = S::mul(inv_sqrt_2pi, S::exp(S::mul(S::mul(gv, gv), S::splat(-0.5))));
                S::store(dh.as_mut_ptr().add(i), S::mul(dv, S::mul(gv, cdf)));
                let dgelu = S::fma(gv, pdf, cdf);
                let hv = S::load(h.as_ptr().add(i));
                S::store(dg.as_mut_ptr().add(i), S::mul(S::mul(dv, hv), dgelu));
                i += l;
            }
        }
        for i in n..inner {
            let (gv, dv) = (g[i] as f64, d[i] as f64);
            let cdf = 0.5 * (1.0 + erf_scalar(gv * std::f64::consts::FRAC_1_SQRT_2));
            let pdf = (-0.5 * gv * gv).exp() * 0.398_942_280_401_432_7;
            dh[i] = (dv * gv * cdf) as f32;
            dg[i] = (dv * h[i] as f64 * (cdf + gv * pdf)) as f32;
        }
    }
}

/// erf for the scalar tails (Abramowitz & Stegun 7.1.26, as the vector kernels).
fn erf_scalar(x: f64) -> f64 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let p = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    (1.0 - p * (-a * a).exp()).copysign(x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn geglu_backward_avx512(x: &[f32], dout: &[f32], dx: &mut [f32], inner: usize) {
    unsafe { geglu_backward_rows::<Avx512>(x, dout, dx, inner) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn geglu_backward_avx2(x: &[f32], dout: &[f32], dx: &mut [f32], inner: usize) {
    unsafe { geglu_backward_rows::<Avx2>(x, dout, dx, inner) }
}

/// The gradient of [`geglu`] with respect to its input `x` `[rows, 2 * inner]`, given the
/// gradient `dout` `[rows, inner]` of its output.
pub fn geglu_backward(x: &[f32], dout: &[f32], rows: usize, inner: usize) -> Vec<f32> {
    assert_eq!(x.len(), rows * 2 * inner, "geglu backward: input size");
    assert_eq!(dout.len(), rows * inner, "geglu backward: gradient size");
    let mut dx = vec![0.0f32; x.len()];
    let dst = SendPtr(dx.as_mut_ptr());
    let isa = isa();
    parallel_for(rows.div_ceil(TASK_ROWS), threads_for(x.len() * 24), |t| {
        let r0 = t * TASK_ROWS;
        let n = TASK_ROWS.min(rows - r0);
        let src = &x[r0 * 2 * inner..(r0 + n) * 2 * inner];
        let d = &dout[r0 * inner..(r0 + n) * inner];
        // SAFETY: tasks write disjoint rows.
        let o =
            unsafe { std::slice::from_raw_parts_mut(dst.get().add(r0 * 2 * inner), n * 2 * inner) };
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `isa()` checked the CPU.
            Isa::Avx512 => unsafe { geglu_backward_avx512(src, d, o, inner) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { geglu_backward_avx2(src, d, o, inner) },
            // SAFETY: plain arrays.
            _ => unsafe { geglu_backward_rows::<Portable>(src, d, o, inner) },
        }
    });
    dx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::simd::tests::erf_ref;

    #[test]
    fn geglu_gates_the_first_half() {
        for inner in [5, 16, 40, 77] {
            let rows = 3;
            let x: Vec<f32> = (0..rows * 2 * inner)
                .map(|i| (i as f32 * 0.37).sin() * 3.0)
                .collect();
            let got = geglu(&x, rows, inner);
            for r in 0..rows {
                for i in 0..inner {
                    let (h, g) = (
                        x[r * 2 * inner + i] as f64,
                        x[r * 2 * inner + inner + i] as f64,
                    );
                    let want = h * g * 0.5 * (1.0 + erf_ref(g / 2f64.sqrt()));
                    assert!(
                        (got[r * inner + i] as f64 - want).abs() < 2e-6,
                        "{inner}: {r},{i}"
                    );
                }
            }
        }
    }
}
