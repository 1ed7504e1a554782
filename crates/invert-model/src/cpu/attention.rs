//! Multi-head attention straight from the token layout: `softmax(q k^T / sqrt(d)) v` for every
//! head of `[b, l, heads * d]` projections, with the keys and values transposed once per call so
//! both products run along the keys, four query rows at a time, and a vectorised `exp`.

#[cfg(target_arch = "x86_64")]
use super::simd::x86::{Avx2, Avx512};
use super::simd::{Portable, Simd};
use super::{Isa, SendPtr, isa, parallel_for, threads_for};

/// Query rows processed together (they share every key/value load).
const ROWS: usize = 4;
/// Keys are padded to a multiple of this (two vectors of 16 lanes).
const KEY_PAD: usize = 32;
/// Query rows per parallel task.
const TASK_ROWS: usize = 16;

/// Shapes of one attention call; `q_stride`, `kv_stride` and `out_stride` are the token row
/// widths (heads * head_dim for the usual layout).
#[derive(Clone, Copy)]
struct Shape {
    batch: usize,
    heads: usize,
    lq: usize,
    lk: usize,
    d: usize,
    q_stride: usize,
    kv_stride: usize,
    out_stride: usize,
    scale: f32,
    causal: bool,
}

/// Per-(batch, head) keys and values, transposed to `[d, lk_pad]` (values to `[d_pad, lk_pad]`)
/// and zero-padded, so the score and value products run along the keys.
struct Packed {
    kt: Vec<f32>,
    vt: Vec<f32>,
    lk_pad: usize,
    /// Row stride: `lk_pad` plus one cache line, so rows a power of two apart do not all land
    /// in the same L1 set.
    ls: usize,
    d_pad: usize,
}

fn pack(k: &[f32], v: &[f32], s: &Shape, db: usize) -> Packed {
    let lk_pad = s.lk.div_ceil(KEY_PAD) * KEY_PAD;
    let ls = lk_pad + 16;
    let d_pad = s.d.div_ceil(db) * db;
    let bh = s.batch * s.heads;
    let mut kt = vec![0.0f32; bh * s.d * ls];
    let mut vt = vec![0.0f32; bh * d_pad * ls];
    let (kp, vp) = (SendPtr(kt.as_mut_ptr()), SendPtr(vt.as_mut_ptr()));
    parallel_for(bh, threads_for(bh * s.lk * s.d * 8), |t| {
        let (b, h) = (t / s.heads, t % s.heads);
        // SAFETY: each (batch, head) task writes its own block of kt and vt.
        let (kt, vt) = unsafe {
            (
                std::slice::from_raw_parts_mut(kp.get().add(t * s.d * ls), s.d * ls),
                std::slice::from_raw_parts_mut(vp.get().add(t * d_pad * ls), d_pad * ls),
            )
        };
        for j in 0..s.lk {
            let src = (b * s.lk + j) * s.kv_stride + h * s.d;
            for dd in 0..s.d {
                kt[dd * ls + j] = k[src + dd];
                vt[dd * ls + j] = v[src + dd];
            }
        }
    });
    Packed {
        kt,
        vt,
        lk_pad,
        ls,
        d_pad,
    }
}

/// Attention for token rows `first..first + out.len() / out_stride` (over the flattened
/// `[batch, lq]` index), all heads. `DB` value columns are accumulated together.
#[inline(always)]
unsafe fn attend_rows<S: Simd, const DB: usize>(
    q: &[f32],
    p: &Packed,
    s: &Shape,
    first: usize,
    out: &mut [f32],
) {
    let l = S::L;
    let (lk_pad, ls, d_pad, d) = (p.lk_pad, p.ls, p.d_pad, s.d);
    debug_assert!(lk_pad % (2 * l) == 0 && d_pad % DB == 0);
    let rows = out.len() / s.out_stride;
    let scale2 = s.scale * std::f32::consts::LOG2_E;
    let mut scores = vec![0.0f32; ROWS * ls];
    let mut qs = vec![0.0f32; ROWS * d];
    let mut row = 0;
    while row < rows {
        let token = first + row;
        let (b, i) = (token / s.lq, token % s.lq);
        // A block never crosses into the next batch entry.
        let n = ROWS.min(rows - row).min(s.lq - i);
        for h in 0..s.heads {
            let bh = b * s.heads + h;
            let kt = &p.kt[bh * d * ls..(bh + 1) * d * ls];
            let vt = &p.vt[bh * d_pad * ls..(bh + 1) * d_pad * ls];
            // Queries scaled by scale * log2(e), so the softmax runs in base 2; unused rows of a
            // short block stay zero.
            qs.fill(0.0);
            for r in 0..n {
                let src = (token + r) * s.q_stride + h * d;
                for dd in 0..d {
                    qs[r * d + dd] = q[src + dd] * scale2;
                }
            }
            // scores[r, j] = sum_dd q[r, dd] kt[dd, j], two vectors of keys at a time.
            let (ktp, sp) = (kt.as_ptr(), scores.as_mut_ptr());
            let mut c = 0;
            while c < lk_pad {
                let mut acc = [[unsafe { S::zero() }; 2]; ROWS];
                for dd in 0..d {
                    // SAFETY: c + 2l <= lk_pad and dd < d, inside kt.
                    let (k0, k1) = unsafe {
                        (
                            S::load(ktp.add(dd * ls + c)),
                            S::load(ktp.add(dd * ls + c + l)),
                        )
                    };
                    for (r, a) in acc.iter_mut().enumerate() {
                        let qv = unsafe { S::splat(*qs.get_unchecked(r * d + dd)) };
                        unsafe {
                            a[0] = S::fma(qv, k0, a[0]);
                            a[1] = S::fma(qv, k1, a[1]);
                        }
                    }
                }
                for (r, a) in acc.iter().enumerate() {
                    // SAFETY: r < ROWS and c + 2l <= lk_pad, inside scores.
                    unsafe {
                        S::store(sp.add(r * ls + c), a[0]);
                        S::store(sp.add(r * ls + c + l), a[1]);
                    }
                }
                c += 2 * l;
            }
            // Masks (padding keys; future keys when causal, aligned to the end as torch's
            // `is_causal` does when lq != lk), then the softmax numerators in place.
            let mut inv = [0.0f32; ROWS];
            for (r, inv_r) in inv.iter_mut().enumerate() {
                let srow = &mut scores[r * ls..r * ls + lk_pad];
                let visible = if s.causal {
                    (i + r + 1 + s.lk).saturating_sub(s.lq).min(s.lk)
                } else {
                    s.lk
                };
                srow[visible..].fill(f32::NEG_INFINITY);
                let ptr = srow.as_mut_ptr();
                // SAFETY: every access is below lk_pad, a multiple of l.
                unsafe {
                    let mut m = S::splat(f32::NEG_INFINITY);
                    for c in (0..lk_pad).step_by(l) {
                        m = S::max(m, S::load(ptr.add(c)));
                    }
                    let max = S::hmax(m);
                    if max == f32::NEG_INFINITY {
                        // Nothing visible: the row's output is zero (as burn's kernels do).
                        srow.fill(0.0);
                        continue;
                    }
                    let mv = S::splat(max);
                    let mut sum = S::zero();
                    for c in (0..lk_pad).step_by(l) {
                        let e = S::exp2_neg(S::sub(S::load(ptr.add(c)), mv));
                        S::store(ptr.add(c), e);
                        sum = S::add(sum, e);
                    }
                    *inv_r = 1.0 / S::hsum(sum);
                }
            }
            // out[r, dd] = sum_j p[r, j] vt[dd, j] / sum_r, DB value columns at a time.
            let (vtp, sp) = (vt.as_ptr(), scores.as_ptr());
            for d0 in (0..d_pad).step_by(DB) {
                let mut acc = [[unsafe { S::zero() }; DB]; ROWS];
                for c in (0..lk_pad).step_by(l) {
                    // SAFETY: c < lk_pad, r < ROWS, d0 + e < d_pad: inside scores and vt.
                    unsafe {
                        let pr: [S::V; ROWS] = std::array::from_fn(|r| S::load(sp.add(r * ls + c)));
                        let vv: [S::V; DB] =
                            std::array::from_fn(|e| S::load(vtp.add((d0 + e) * ls + c)));
                        for r in 0..ROWS {
                            for e in 0..DB {
                                acc[r][e] = S::fma(pr[r], vv[e], acc[r][e]);
                            }
                        }
                    }
                }
                for r in 0..n {
                    let dst = (row + r) * s.out_stride + h * d;
                    for e in 0..DB.min(d.saturating_sub(d0)) {
                        out[dst + d0 + e] = unsafe { S::hsum(acc[r][e]) } * inv[r];
                    }
                }
            }
        }
        row += n;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn attend_rows_avx512(q: &[f32], p: &Packed, s: &Shape, first: usize, out: &mut [f32]) {
    unsafe { attend_rows::<Avx512, 4>(q, p, s, first, out) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_rows_avx2(q: &[f32], p: &Packed, s: &Shape, first: usize, out: &mut [f32]) {
    unsafe { attend_rows::<Avx2, 2>(q, p, s, first, out) }
}

fn attend_rows_portable(q: &[f32], p: &Packed, s: &Shape, first: usize, out: &mut [f32]) {
    // SAFETY: the portable "vectors" are plain arrays.
    unsafe { attend_rows::<Portable, 2>(q, p, s, first, out) }
}

/// `softmax(q k^T * scale) v` per head on raw token-layout data: `q` is `[batch, lq, heads * d]`,
/// `k` and `v` `[batch, lk, heads * d]`; returns `[batch, lq, heads * d]`. `causal` masks key `j`
/// for query `i` when `j > i + lk - lq`.
#[allow(clippy::too_many_arguments)]
pub fn attention_tokens(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    batch: usize,
    lq: usize,
    lk: usize,
    heads: usize,
    d: usize,
    causal: bool,
) -> Vec<f32> {
    let inner = heads * d;
    assert_eq!(q.len(), batch * lq * inner, "attention: query shape");
    assert_eq!(k.len(), batch * lk * inner, "attention: key shape");
    assert_eq!(v.len(), batch * lk * inner, "attention: value shape");
    let s = Shape {
        batch,
        heads,
        lq,
        lk,
        d,
        q_stride: inner,
        kv_stride: inner,
        out_stride: inner,
        scale: 1.0 / (d as f32).sqrt(),
        causal,
    };
    let mut out = vec![0.0f32; batch * lq * inner];
    if out.is_empty() || lk == 0 {
        return out;
    }
    let isa = isa();
    let db = match isa {
        Isa::Avx512 => 4,
        _ => 2,
    };
    let packed = pack(k, v, &s, db);
    // Two products of lq * lk * d multiply-adds per head.
    let work = 2 * batch * heads * lq * packed.lk_pad * d;
    let rows = batch * lq;
    let tasks = rows.div_ceil(TASK_ROWS);
    let dst = SendPtr(out.as_mut_ptr());
    parallel_for(tasks, threads_for(work), |t| {
        let first = t * TASK_ROWS;
        let n = TASK_ROWS.min(rows - first);
        // SAFETY: tasks cover disjoint row ranges of `out`, which outlives `parallel_for`.
        let chunk =
            unsafe { std::slice::from_raw_parts_mut(dst.get().add(first * inner), n * inner) };
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `isa()` checked that the CPU has these features.
            Isa::Avx512 => unsafe { attend_rows_avx512(q, &packed, &s, first, chunk) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { attend_rows_avx2(q, &packed, &s, first, chunk) },
            _ => attend_rows_portable(q, &packed, &s, first, chunk),
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        (batch, lq, lk, heads, d): (usize, usize, usize, usize, usize),
        causal: bool,
    ) -> Vec<f32> {
        let inner = heads * d;
        let mut out = vec![0.0f32; batch * lq * inner];
        let scale = 1.0 / (d as f64).sqrt();
        for b in 0..batch {
            for h in 0..heads {
                for i in 0..lq {
                    let mut sc = vec![f64::NEG_INFINITY; lk];
                    for j in 0..lk {
                        if causal && j as isize > i as isize + lk as isize - lq as isize {
                            continue;
                        }
                        let mut dot = 0.0f64;
                        for dd in 0..d {
                            dot += q[(b * lq + i) * inner + h * d + dd] as f64
                                * k[(b * lk + j) * inner + h * d + dd] as f64;
                        }
                        sc[j] = dot * scale;
                    }
                    let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    if m == f64::NEG_INFINITY {
                        continue;
                    }
                    let e: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for dd in 0..d {
                        let mut acc = 0.0f64;
                        for j in 0..lk {
                            acc += e[j] * v[(b * lk + j) * inner + h * d + dd] as f64;
                        }
                        out[(b * lq + i) * inner + h * d + dd] = (acc / sum) as f32;
                    }
                }
            }
        }
        out
    }

    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x as f32 / u32::MAX as f32) * 6.0 - 3.0
            })
            .collect()
    }

    #[test]
    fn fused_attention_matches_the_formula() {
        for &(batch, lq, lk, heads, d, causal) in &[
            (2, 37, 77, 3, 8, false),
            (1, 77, 77, 2, 40, true),
            (2, 5, 3, 1, 5, false),
            (1, 130, 130, 4, 16, false),
            (1, 64, 96, 1, 128, false),
            (2, 9, 12, 2, 7, true),
        ] {
            let inner = heads * d;
            let q = data(batch * lq * inner, 1);
            let k = data(batch * lk * inner, 2);
            let v = data(batch * lk * inner, 3);
            let want = reference(&q, &k, &v, (batch, lq, lk, heads, d), causal);
            let got = attention_tokens(&q, &k, &v, batch, lq, lk, heads, d, causal);
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                err < 2e-5,
                "{batch}x{lq}x{lk}x{heads}x{d} causal {causal}: {err}"
            );
            // The portable path gives the same result.
            let s = Shape {
                batch,
                heads,
                lq,
                lk,
                d,
                q_stride: inner,
                kv_stride: inner,
                out_stride: inner,
                scale: 1.0 / (d as f32).sqrt(),
                causal,
            };
            let packed = pack(&k, &v, &s, 2);
            let mut out = vec![0.0f32; batch * lq * inner];
            attend_rows_portable(&q, &packed, &s, 0, &mut out);
            let err = out
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(err < 2e-5, "portable {batch}x{lq}x{lk}x{heads}x{d}: {err}");
        }
    }
}
