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
