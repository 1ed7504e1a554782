//! The few vector operations the CPU kernels need, for AVX-512 (16 lanes), AVX2 + FMA (8 lanes)
//! and a portable fallback. Kernels are generic over [`Simd`] and instantiated inside
//! `#[target_feature]` functions, so the intrinsics inline.

#![allow(clippy::missing_safety_doc)]

/// Vector operations over `L` f32 lanes. Every method is `unsafe`: pointers must be valid for `L`
/// lanes and, for the x86 types, the CPU must have the instruction set.
pub trait Simd: Copy {
    type V: Copy;
    const L: usize;
    unsafe fn zero() -> Self::V;
    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    /// `a * b + c`
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn hsum(a: Self::V) -> f32;
    unsafe fn hmax(a: Self::V) -> f32;
    unsafe fn div(a: Self::V, b: Self::V) -> Self::V;
    /// `exp(x)`: Cephes `expf`'s range reduction and polynomial (about 2 ulp). Exactly 0 below
    /// `ln(f32::MIN_POSITIVE)` (and for `-inf`); inputs above 88 are clamped (about 1.7e38).
    unsafe fn exp(x: Self::V) -> Self::V;
    unsafe fn min(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn abs(a: Self::V) -> Self::V;
    /// `|mag|` with the sign of `sign`.
    unsafe fn copy_sign(mag: Self::V, sign: Self::V) -> Self::V;
    /// `2^x` for `x <= 0` (softmax in base 2): degree-6 polynomial, about 1 ulp; exactly 0 below
    /// -126 (and for `-inf`).
    unsafe fn exp2_neg(x: Self::V) -> Self::V;
    /// `erf(x)`, Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7 in exact arithmetic, about 4e-7 in f32), as torch's CPU kernels.
    #[inline(always)]
    unsafe fn erf(x: Self::V) -> Self::V {
        unsafe {
            let a = Self::abs(x);
            let t = Self::div(
                Self::splat(1.0),
                Self::fma(a, Self::splat(ERF_P), Self::splat(1.0)),
            );
            let mut p = Self::splat(ERF_A[4]);
            for c in ERF_A[..4].iter().rev() {
                p = Self::fma(p, t, Self::splat(*c));
            }
            p = Self::mul(p, t);
            let e = Self::exp(Self::sub(Self::zero(), Self::mul(a, a)));
            // 1 - p * e
            let y = Self::sub(Self::splat(1.0), Self::mul(p, e));
            Self::copy_sign(y, x)
        }
    }
    /// Exact GELU, `x / 2 * (1 + erf(x / sqrt(2)))`.
    #[inline(always)]
    unsafe fn gelu(x: Self::V) -> Self::V {
        unsafe {
            let e = Self::erf(Self::mul(x, Self::splat(std::f32::consts::FRAC_1_SQRT_2)));
            Self::mul(
                Self::mul(x, Self::splat(0.5)),
                Self::add(Self::splat(1.0), e),
            )
        }
    }
    /// `x * sigmoid(x)` = `x / (1 + exp(-x))`.
    #[inline(always)]
    unsafe fn silu(x: Self::V) -> Self::V {
        unsafe {
            let e = Self::exp(Self::sub(Self::zero(), x));
            Self::div(x, Self::add(Self::splat(1.0), e))
        }
    }
}

const EXP_LOG2E: f32 = std::f32::consts::LOG2_E;
/// 1.5 * 2^23: adding it rounds to the nearest integer, which then sits in the low mantissa bits.
const EXP_MAGIC: f32 = 12_582_912.0;
const EXP_C1: f32 = 0.693_359_4;
const EXP_C2: f32 = -2.121_944_4e-4;
const EXP_LOW: f32 = -87.336_55;
/// Below 127.5 / log2(e), so the exponent never overflows.
const EXP_HIGH: f32 = 88.0;
const ERF_P: f32 = 0.327_591_1;
const ERF_A: [f32; 5] = [
    0.254_829_6,
    -0.284_496_74,
    1.421_413_8,
    -1.453_152_1,
    1.061_405_4,
];
/// Taylor coefficients of 2^f = e^(f ln 2), highest first (|f| <= 1/2: error below 1.3e-7).
const EXP2_P: [f32; 6] = [
    1.540_353e-4,
    1.333_355_8e-3,
    9.618_129e-3,
    5.550_411e-2,
    2.402_265e-1,
    6.931_472e-1,
];
const EXP2_LOW: f32 = -126.0;
const EXP_P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    5e-1,
];

/// Portable 8-lane fallback (plain loops, no FMA).
#[derive(Clone, Copy)]
pub struct Portable;

fn exp_scalar(x: f32) -> f32 {
    if x < EXP_LOW || x.is_nan() {
        return if x.is_nan() { x } else { 0.0 };
    }
    let x = x.min(EXP_HIGH);
    let t = x * EXP_LOG2E + EXP_MAGIC;
    let n = t - EXP_MAGIC;
    let r = x - n * EXP_C1 - n * EXP_C2;
    let mut p = EXP_P[0];
    for c in &EXP_P[1..] {
        p = p * r + c;
    }
    let e = p * (r * r) + (r + 1.0);
    let bits = t
        .to_bits()
        .wrapping_sub(EXP_MAGIC.to_bits())
        .wrapping_add(127)
        << 23;
    e * f32::from_bits(bits)
}

impl Simd for Portable {
    type V = [f32; 8];
    const L: usize = 8;
    unsafe fn zero() -> Self::V {
        [0.0; 8]
    }
    unsafe fn splat(x: f32) -> Self::V {
        [x; 8]
    }
    unsafe fn load(p: *const f32) -> Self::V {
        unsafe { std::ptr::read_unaligned(p as *const [f32; 8]) }
    }
    unsafe fn store(p: *mut f32, v: Self::V) {
        unsafe { std::ptr::write_unaligned(p as *mut [f32; 8], v) }
    }
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i] * b[i] + c[i])
    }
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i] + b[i])
    }
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i] - b[i])
    }
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i] * b[i])
    }
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i].max(b[i]))
    }
    unsafe fn hsum(a: Self::V) -> f32 {
        a.iter().sum()
    }
    unsafe fn hmax(a: Self::V) -> f32 {
        a.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x))
    }
    unsafe fn div(a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i] / b[i])
    }
    unsafe fn exp(x: Self::V) -> Self::V {
        x.map(exp_scalar)
    }
    unsafe fn min(a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i].min(b[i]))
    }
    unsafe fn abs(a: Self::V) -> Self::V {
        a.map(f32::abs)
    }
    unsafe fn copy_sign(mag: Self::V, sign: Self::V) -> Self::V {
        std::array::from_fn(|i| mag[i].copysign(sign[i]))
    }
    unsafe fn exp2_neg(x: Self::V) -> Self::V {
        x.map(exp2_scalar)
    }
}

fn exp2_scalar(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x < EXP2_LOW {
        return 0.0;
    }
    let t = x + EXP_MAGIC;
    let f = x - (t - EXP_MAGIC);
    let mut p = EXP2_P[0];
    for c in &EXP2_P[1..] {
        p = p * f + c;
    }
    let p = p * f + 1.0;
    let bits = t
        .to_bits()
        .wrapping_sub(EXP_MAGIC.to_bits())
        .wrapping_add(127)
        << 23;
    p * f32::from_bits(bits)
}

#[cfg(target_arch = "x86_64")]
pub mod x86 {
    use super::{
        EXP_C1, EXP_C2, EXP_HIGH, EXP_LOG2E, EXP_LOW, EXP_MAGIC, EXP_P, EXP2_LOW, EXP2_P, Simd,
    };
    use std::arch::x86_64::*;

    #[derive(Clone, Copy)]
    pub struct Avx512;
    #[derive(Clone, Copy)]
    pub struct Avx2;

    impl Simd for Avx512 {
        type V = __m512;
        const L: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> __m512 {
            unsafe { _mm512_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m512 {
            unsafe { _mm512_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            unsafe { _mm512_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn sub(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_sub_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn mul(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_mul_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn max(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_max_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn hsum(a: __m512) -> f32 {
            unsafe { _mm512_reduce_add_ps(a) }
        }
        #[inline(always)]
        unsafe fn hmax(a: __m512) -> f32 {
            unsafe { _mm512_reduce_max_ps(a) }
        }
        #[inline(always)]
        unsafe fn div(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_div_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn exp(x: __m512) -> __m512 {
            unsafe {
                let keep = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, _mm512_set1_ps(EXP_LOW));
                let a = _mm512_min_ps(
                    _mm512_max_ps(x, _mm512_set1_ps(EXP_LOW)),
                    _mm512_set1_ps(EXP_HIGH),
                );
                let t = _mm512_fmadd_ps(a, _mm512_set1_ps(EXP_LOG2E), _mm512_set1_ps(EXP_MAGIC));
                let n = _mm512_sub_ps(t, _mm512_set1_ps(EXP_MAGIC));
                let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_C1), a);
                let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_C2), r);
                let mut p = _mm512_set1_ps(EXP_P[0]);
                for c in &EXP_P[1..] {
                    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
                }
                let e = _mm512_fmadd_ps(
                    p,
                    _mm512_mul_ps(r, r),
                    _mm512_add_ps(r, _mm512_set1_ps(1.0)),
                );
                let bits = _mm512_slli_epi32::<23>(_mm512_add_epi32(
                    _mm512_sub_epi32(
                        _mm512_castps_si512(t),
                        _mm512_set1_epi32(EXP_MAGIC.to_bits() as i32),
                    ),
                    _mm512_set1_epi32(127),
                ));
                _mm512_maskz_mul_ps(keep, e, _mm512_castsi512_ps(bits))
            }
        }
        #[inline(always)]
        unsafe fn min(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_min_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn abs(a: __m512) -> __m512 {
            unsafe { _mm512_abs_ps(a) }
        }
        #[inline(always)]
        unsafe fn copy_sign(mag: __m512, sign: __m512) -> __m512 {
            unsafe {
                let m = _mm512_set1_epi32(i32::MIN);
                _mm512_castsi512_ps(_mm512_ternarylogic_epi32::<0xCA>(
                    m,
                    _mm512_castps_si512(sign),
                    _mm512_castps_si512(mag),
                ))
            }
        }
        #[inline(always)]
        unsafe fn exp2_neg(x: __m512) -> __m512 {
            unsafe {
                let keep = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, _mm512_set1_ps(EXP2_LOW));
                let a = _mm512_max_ps(x, _mm512_set1_ps(EXP2_LOW));
                let n = _mm512_roundscale_ps::<0x08>(a);
                let f = _mm512_sub_ps(a, n);
                let mut p = _mm512_set1_ps(EXP2_P[0]);
                for c in &EXP2_P[1..] {
                    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(*c));
                }
                let p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0));
                _mm512_maskz_scalef_ps(keep, p, n)
            }
        }
    }

    impl Simd for Avx2 {
        type V = __m256;
        const L: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> __m256 {
            unsafe { _mm256_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m256 {
            unsafe { _mm256_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            unsafe { _mm256_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn sub(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_sub_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn mul(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_mul_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn max(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_max_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn hsum(a: __m256) -> f32 {
            unsafe {
                let s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
                _mm_cvtss_f32(s)
            }
        }
        #[inline(always)]
        unsafe fn hmax(a: __m256) -> f32 {
            unsafe {
                let s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
                let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_max_ss(s, _mm_shuffle_ps::<1>(s, s));
                _mm_cvtss_f32(s)
            }
        }
        #[inline(always)]
        unsafe fn div(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_div_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn exp(x: __m256) -> __m256 {
            unsafe {
                let keep = _mm256_cmp_ps::<_CMP_GE_OQ>(x, _mm256_set1_ps(EXP_LOW));
                let a = _mm256_min_ps(
                    _mm256_max_ps(x, _mm256_set1_ps(EXP_LOW)),
                    _mm256_set1_ps(EXP_HIGH),
                );
                let t = _mm256_fmadd_ps(a, _mm256_set1_ps(EXP_LOG2E), _mm256_set1_ps(EXP_MAGIC));
                let n = _mm256_sub_ps(t, _mm256_set1_ps(EXP_MAGIC));
                let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_C1), a);
                let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_C2), r);
                let mut p = _mm256_set1_ps(EXP_P[0]);
                for c in &EXP_P[1..] {
                    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
                }
                let e = _mm256_fmadd_ps(
                    p,
                    _mm256_mul_ps(r, r),
                    _mm256_add_ps(r, _mm256_set1_ps(1.0)),
                );
                let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
                    _mm256_sub_epi32(
                        _mm256_castps_si256(t),
                        _mm256_set1_epi32(EXP_MAGIC.to_bits() as i32),
                    ),
                    _mm256_set1_epi32(127),
                ));
                _mm256_and_ps(keep, _mm256_mul_ps(e, _mm256_castsi256_ps(bits)))
            }
        }
        #[inline(always)]
        unsafe fn min(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_min_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn abs(a: __m256) -> __m256 {
            unsafe { _mm256_andnot_ps(_mm256_set1_ps(-0.0), a) }
        }
        #[inline(always)]
        unsafe fn copy_sign(mag: __m256, sign: __m256) -> __m256 {
            unsafe {
                let m = _mm256_set1_ps(-0.0);
                _mm256_or_ps(_mm256_andnot_ps(m, mag), _mm256_and_ps(m, sign))
            }
        }
        #[inline(always)]
        unsafe fn exp2_neg(x: __m256) -> __m256 {
            unsafe {
                let keep = _mm256_cmp_ps::<_CMP_GE_OQ>(x, _mm256_set1_ps(EXP2_LOW));
                let a = _mm256_max_ps(x, _mm256_set1_ps(EXP2_LOW));
                let t = _mm256_add_ps(a, _mm256_set1_ps(EXP_MAGIC));
                let f = _mm256_sub_ps(a, _mm256_sub_ps(t, _mm256_set1_ps(EXP_MAGIC)));
                let mut p = _mm256_set1_ps(EXP2_P[0]);
                for c in &EXP2_P[1..] {
                    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(*c));
                }
                let p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0));
                let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
                    _mm256_sub_epi32(
                        _mm256_castps_si256(t),
                        _mm256_set1_epi32(EXP_MAGIC.to_bits() as i32),
                    ),
                    _mm256_set1_epi32(127),
                ));
                _mm256_and_ps(keep, _mm256_mul_ps(p, _mm256_castsi256_ps(bits)))
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    #[cfg(target_arch = "x86_64")]
    use x86::{Avx2, Avx512};

    /// erf by its Taylor series (|x| <= 3) or asymptotic expansion, in f64.
    pub(crate) fn erf_ref(x: f64) -> f64 {
        if x.abs() > 3.0 {
            // erfc(x) ~ exp(-x^2) / (x sqrt(pi)) * (1 - 1/(2x^2) + 3/(4x^4))
            let a = x.abs();
            let c = (-a * a).exp() / (a * std::f64::consts::PI.sqrt())
                * (1.0 - 1.0 / (2.0 * a * a) + 3.0 / (4.0 * a.powi(4)));
            return (1.0 - c).copysign(x);
        }
        let (mut sum, mut term) = (0.0, x);
        for n in 0..200 {
            sum += term / (2 * n + 1) as f64;
            term *= -x * x / (n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    /// `f` of a vector of `x`, first lane.
    fn lane<S: Simd>(f: unsafe fn(S::V) -> S::V, x: f32) -> f32 {
        let mut buf = [0.0f32; 16];
        unsafe { S::store(buf.as_mut_ptr(), f(S::splat(x))) };
        buf[0]
    }

    type Fns = [fn(f32) -> f32; 4];

    /// exp, exp2_neg, erf, gelu of every instruction set this CPU has.
    fn instruction_sets() -> Vec<(&'static str, Fns)> {
        let mut sets: Vec<(&'static str, Fns)> = vec![(
            "portable",
            [
                |x| lane::<Portable>(Portable::exp, x),
                |x| lane::<Portable>(Portable::exp2_neg, x),
                |x| lane::<Portable>(Portable::erf, x),
                |x| lane::<Portable>(Portable::gelu, x),
            ],
        )];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                sets.push((
                    "avx512",
                    [
                        |x| lane::<Avx512>(Avx512::exp, x),
                        |x| lane::<Avx512>(Avx512::exp2_neg, x),
                        |x| lane::<Avx512>(Avx512::erf, x),
                        |x| lane::<Avx512>(Avx512::gelu, x),
                    ],
                ));
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                sets.push((
                    "avx2",
                    [
                        |x| lane::<Avx2>(Avx2::exp, x),
                        |x| lane::<Avx2>(Avx2::exp2_neg, x),
                        |x| lane::<Avx2>(Avx2::erf, x),
                        |x| lane::<Avx2>(Avx2::gelu, x),
                    ],
                ));
            }
        }
        sets
    }

    #[test]
    fn exp_and_exp2_match_std() {
        for (name, [exp, exp2, _, _]) in instruction_sets() {
            let mut worst = 0.0f32;
            let mut x = -100.0f32;
            while x <= 88.0 {
                let (got, want) = (exp(x), x.exp());
                let err = if want < f32::MIN_POSITIVE {
                    got.abs()
                } else {
                    ((got - want) / want).abs()
                };
                worst = worst.max(err);
                x += 0.001_3;
            }
            assert!(worst < 5e-7, "{name}: exp: worst relative error {worst}");
            assert_eq!(exp(0.0), 1.0, "{name}");
            assert_eq!(exp(f32::NEG_INFINITY), 0.0, "{name}");
            let mut x = -130.0f32;
            while x <= 0.0 {
                let (got, want) = (exp2(x) as f64, (x as f64).exp2());
                let err = if x < -126.0 {
                    got
                } else {
                    (got - want).abs() / want
                };
                assert!(err < 4e-7, "{name} exp2({x}): {got} vs {want}");
                x += 0.001_9;
            }
            assert_eq!(exp2(f32::NEG_INFINITY), 0.0, "{name}");
            assert_eq!(exp2(0.0), 1.0, "{name}");
        }
    }

    #[test]
    fn erf_and_gelu_are_accurate() {
        for (name, [_, _, erf, gelu]) in instruction_sets() {
            let mut x = -8.0f32;
            while x <= 8.0 {
                // A&S 7.1.26 evaluated in f32: about 4e-7 (torch's GELU is within 8e-7).
                let e = erf_ref(x as f64);
                assert!((erf(x) as f64 - e).abs() < 1e-6, "{name} erf({x})");
                let g = x as f64 * 0.5 * (1.0 + erf_ref(x as f64 / 2f64.sqrt()));
                let tol = 2e-6 * g.abs().max(1.0);
                assert!((gelu(x) as f64 - g).abs() < tol, "{name} gelu({x})");
                x += 0.003_7;
            }
        }
    }
}
