//! Multi-head attention straight from the token layout: `softmax(q k^T / sqrt(d)) v` for every
//! head of `[b, l, heads * d]` projections, with the keys and values transposed once per call so
//! both products run along the keys, four query rows at a time, and a vectorised `exp`.

#[cfg(target_arch = "x86_64")]
use super::simd::x86::{Avx2, Avx512};
use super::simd::{Portable, Simd};
use super::{Isa, SendPtr, isa, parallel_for, threads_for};

/// Query rows processed together (they share every key load; each product keeps
/// `ROWS * NV` or `ROWS * DVN` accumulators in registers).
const ROWS: usize = 4;
/// Keys are padded to a multiple of this (a multiple of every chunk width).
const KEY_PAD: usize = 32;
/// The most keys in one block.
const MAX_KEY_BLOCK: usize = 256;
/// Query rows per parallel task.
const QUERY_TILE: usize = 64;

/// Per-(batch, head) keys transposed to `[d, ls]` (so scores run along the keys) and values by
/// row `[lk_pad, d_pad]` (so the weighted sum runs along the head dimension), zero-padded.
struct Packed {
    kt: Vec<f32>,
    vr: Vec<f32>,
    lk_pad: usize,
    /// Row stride of `kt`: `lk_pad` plus one cache line, so rows a power of two apart do not
    /// all land in the same L1 set.
    ls: usize,
    d_pad: usize,
}

fn pack(k: &[f32], v: &[f32], dims: &Dims, lanes: usize) -> Packed {
    let Dims {
        batch,
        lk,
        heads,
        d,
        ..
    } = *dims;
    let lk_pad = lk.div_ceil(KEY_PAD) * KEY_PAD;
    let ls = lk_pad + 16;
    let d_pad = d.div_ceil(lanes) * lanes;
    let bh = batch * heads;
    let inner = heads * d;
    let mut kt = vec![0.0f32; bh * d * ls];
    let mut vr = vec![0.0f32; bh * lk_pad * d_pad];
    let (kp, vp) = (SendPtr(kt.as_mut_ptr()), SendPtr(vr.as_mut_ptr()));
    parallel_for(bh, threads_for(bh * lk * d * 8), |t| {
        let (b, h) = (t / heads, t % heads);
        // SAFETY: each (batch, head) task writes its own block of kt and vr.
        let (kt, vr) = unsafe {
            (
                std::slice::from_raw_parts_mut(kp.get().add(t * d * ls), d * ls),
                std::slice::from_raw_parts_mut(vp.get().add(t * lk_pad * d_pad), lk_pad * d_pad),
            )
        };
        for j in 0..lk {
            let src = (b * lk + j) * inner + h * d;
            vr[j * d_pad..j * d_pad + d].copy_from_slice(&v[src..src + d]);
            for dd in 0..d {
                kt[dd * ls + j] = k[src + dd];
            }
        }
    });
    Packed {
        kt,
        vr,
        lk_pad,
        ls,
        d_pad,
    }
}

/// Keys per block: as many as keep the block's keys and values (`d + d_pad` floats per key)
/// within 24 KiB of L1, a power-of-two multiple of the chunk width (the last block of a head may be shorter).
fn key_block(d: usize, d_pad: usize, chunk: usize) -> usize {
    let mut kb = chunk;
    while kb * 2 <= MAX_KEY_BLOCK && kb * 2 * 4 * (d + d_pad) <= 24 << 10 {
        kb *= 2;
    }
    kb
}

/// One task: query rows `rows` of image `b`, head `h`, over all keys in blocks, with the
/// running (online) softmax of FlashAttention (Dao et al. 2022): per row the largest score so
/// far `m`, the sum of `2^(s - m)` and the weighted sum of values, rescaled when `m` grows.
/// Writes the output rows and, if asked, their base-2 log-sum-exp.
// The register tiles are indexed arrays on purpose: they stay in registers.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn tile_task<S: Simd, const NV: usize, const DVN: usize>(
    q: &[f32],
    p: &Packed,
    dims: &Dims,
    (b, h, rows): (usize, usize, std::ops::Range<usize>),
    out: SendPtr,
    lse: Option<SendPtr>,
) {
    let l = S::L;
    let Dims {
        lq,
        lk,
        heads,
        d,
        causal,
        ..
    } = *dims;
    let (ls, d_pad) = (p.ls, p.d_pad);
    let inner = heads * d;
    let bh = b * heads + h;
    let kt = &p.kt[bh * d * ls..(bh + 1) * d * ls];
    let vr = &p.vr[bh * p.lk_pad * d_pad..(bh + 1) * p.lk_pad * d_pad];
    let i0 = rows.start;
    let n = rows.len();
    let n_pad = n.div_ceil(ROWS) * ROWS;
    let scale2 = dims.scale() * std::f32::consts::LOG2_E;
    let mut qs2 = vec![0.0f32; n_pad * d];
    for r in 0..n {
        let src = (b * lq + i0 + r) * inner + h * d;
        for dd in 0..d {
            qs2[r * d + dd] = q[src + dd] * scale2;
        }
    }
    let visible = |r: usize| {
        if r >= n {
            0
        } else if causal {
            (i0 + r + 1 + lk).saturating_sub(lq).min(lk)
        } else {
            lk
        }
    };
    let mut m = vec![f32::NEG_INFINITY; n_pad];
    let mut sum = vec![0.0f32; n_pad];
    let mut acc = vec![0.0f32; n_pad * d_pad];
    let cw = NV * l;
    let kb_len = key_block(d, d_pad, cw);
    let mut sbuf = vec![0.0f32; ROWS * kb_len];
    let mut kb = 0;
    while kb < lk {
        let kb_end = (kb + kb_len).min(p.lk_pad);
        let len = kb_end - kb;
        for g in (0..n_pad).step_by(ROWS) {
            let vis: [usize; ROWS] = std::array::from_fn(|r| visible(g + r));
            if vis.iter().all(|&v| v <= kb) {
                continue;
            }
            let qg = &qs2[g * d..(g + ROWS) * d];
            // Scores (base 2) of the block, NV vectors of keys at a time.
            let mut c = kb;
            while c < kb_end {
                let mut sa = [[unsafe { S::zero() }; NV]; ROWS];
                for dd in 0..d {
                    // SAFETY: dd < d and c + cw <= lk_pad < ls: inside kt.
                    unsafe {
                        let tp = kt.as_ptr().add(dd * ls + c);
                        let tv: [S::V; NV] = std::array::from_fn(|e| S::load(tp.add(e * l)));
                        for (r, a) in sa.iter_mut().enumerate() {
                            let w = S::splat(*qg.get_unchecked(r * d + dd));
                            for e in 0..NV {
                                a[e] = S::fma(w, tv[e], a[e]);
                            }
                        }
                    }
                }
                for (r, a) in sa.iter().enumerate() {
                    for (e, v) in a.iter().enumerate() {
                        // SAFETY: r < ROWS and c - kb + e*l < kb_len.
                        unsafe { S::store(sbuf.as_mut_ptr().add(r * kb_len + c - kb + e * l), *v) };
                    }
                }
                c += cw;
            }
            // Masks, the running maximum and sum, and the probabilities in place.
            for r in 0..ROWS {
                let row = &mut sbuf[r * kb_len..r * kb_len + len];
                let limit = vis[r].saturating_sub(kb).min(len);
                row[limit..].fill(f32::NEG_INFINITY);
                let ptr = row.as_mut_ptr();
                // SAFETY: every access is below len, a multiple of l.
                unsafe {
                    let mut mv = S::splat(f32::NEG_INFINITY);
                    for c in (0..len).step_by(l) {
                        mv = S::max(mv, S::load(ptr.add(c)));
                    }
                    let m_new = S::hmax(mv).max(m[g + r]);
                    if m_new == f32::NEG_INFINITY {
                        row.fill(0.0);
                        continue;
                    }
                    let alpha = (m[g + r] - m_new).exp2();
                    let mn = S::splat(m_new);
                    let mut sv = S::zero();
                    for c in (0..len).step_by(l) {
                        let e = S::exp2_neg(S::sub(S::load(ptr.add(c)), mn));
                        S::store(ptr.add(c), e);
                        sv = S::add(sv, e);
                    }
                    sum[g + r] = sum[g + r] * alpha + S::hsum(sv);
                    m[g + r] = m_new;
                    if alpha != 1.0 {
                        for a in &mut acc[(g + r) * d_pad..(g + r + 1) * d_pad] {
                            *a *= alpha;
                        }
                    }
                }
            }
            // acc[r, :] += sum_j p[r, j] v[j, :], DVN vectors of the head dimension at a time.
            let mut v0 = 0;
            while v0 < d_pad {
                let nv = DVN.min((d_pad - v0) / l);
                // SAFETY: rows g..g + ROWS < n_pad and columns below d_pad: inside acc.
                unsafe {
                    let ap = acc.as_mut_ptr().add(g * d_pad + v0);
                    let mut a: [[S::V; DVN]; ROWS] = std::array::from_fn(|r| {
                        std::array::from_fn(|e| {
                            if e < nv {
                                S::load(ap.add(r * d_pad + e * l))
                            } else {
                                S::zero()
                            }
                        })
                    });
                    for j in 0..len {
                        let vp = vr.as_ptr().add((kb + j) * d_pad + v0);
                        let vv: [S::V; DVN] = std::array::from_fn(|e| {
                            if e < nv {
                                S::load(vp.add(e * l))
                            } else {
                                S::zero()
                            }
                        });
                        for (r, ar) in a.iter_mut().enumerate() {
                            let w = S::splat(*sbuf.get_unchecked(r * kb_len + j));
                            for e in 0..DVN {
                                ar[e] = S::fma(w, vv[e], ar[e]);
                            }
                        }
                    }
                    for (r, ar) in a.iter().enumerate() {
                        for (e, v) in ar.iter().enumerate().take(nv) {
                            S::store(ap.add(r * d_pad + e * l), *v);
                        }
                    }
                }
                v0 += nv * l;
            }
        }
        kb = kb_end;
    }
    for r in 0..n {
        let i = i0 + r;
        // Rows with nothing visible stay zero, as burn's kernels give them.
        let inv = if sum[r] > 0.0 { 1.0 / sum[r] } else { 0.0 };
        // SAFETY: this task owns rows i0..i0 + n of head h (columns h*d..(h+1)*d), and their
        // log-sum-exp entries.
        unsafe {
            let dst = out.get().add((b * lq + i) * inner + h * d);
            for dd in 0..d {
                *dst.add(dd) = acc[r * d_pad + dd] * inv;
            }
            if let Some(lse) = lse {
                *lse.get().add(bh * lq + i) = if sum[r] > 0.0 {
                    m[r] + sum[r].log2()
                } else {
                    f32::NEG_INFINITY
                };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn tile_avx512(
    q: &[f32],
    p: &Packed,
    dims: &Dims,
    t: (usize, usize, std::ops::Range<usize>),
    out: SendPtr,
    lse: Option<SendPtr>,
) {
    unsafe { tile_task::<Avx512, 2, 4>(q, p, dims, t, out, lse) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2(
    q: &[f32],
    p: &Packed,
    dims: &Dims,
    t: (usize, usize, std::ops::Range<usize>),
    out: SendPtr,
    lse: Option<SendPtr>,
) {
    unsafe { tile_task::<Avx2, 2, 2>(q, p, dims, t, out, lse) }
}

fn tile_portable(
    q: &[f32],
    p: &Packed,
    dims: &Dims,
    t: (usize, usize, std::ops::Range<usize>),
    out: SendPtr,
    lse: Option<SendPtr>,
) {
    // SAFETY: the portable "vectors" are plain arrays.
    unsafe { tile_task::<Portable, 2, 2>(q, p, dims, t, out, lse) }
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
    let dims = Dims {
        batch,
        lq,
        lk,
        heads,
        d,
        causal,
    };
    run(q, k, v, &dims, false).0
}

/// The shape of one attention call on token-layout data (see [`attention_tokens`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dims {
    pub batch: usize,
    pub lq: usize,
    pub lk: usize,
    pub heads: usize,
    pub d: usize,
    pub causal: bool,
}

impl Dims {
    /// `1 / sqrt(d)`, the scale of SDPA's scores.
    pub fn scale(&self) -> f32 {
        1.0 / (self.d as f32).sqrt()
    }
}

/// [`attention_tokens`] that also returns, per `[batch, heads, lq]` row, the base-2 log-sum-exp
/// of the row's scores times `scale * log2(e)`: `lse2 = log2(sum_j 2^(s_j))` with
/// `s_j = q . k_j * scale * log2(e)` (`-inf` for a row with no visible key). The backward pass
/// ([`super::attention_backward`]) recomputes the probabilities as `2^(s_j - lse2)` from it.
pub fn attention_tokens_lse(q: &[f32], k: &[f32], v: &[f32], dims: &Dims) -> (Vec<f32>, Vec<f32>) {
    run(q, k, v, dims, true)
}

fn run(q: &[f32], k: &[f32], v: &[f32], dims: &Dims, want_lse: bool) -> (Vec<f32>, Vec<f32>) {
    let Dims {
        batch,
        lq,
        lk,
        heads,
        d,
        ..
    } = *dims;
    let inner = heads * d;
    assert_eq!(q.len(), batch * lq * inner, "attention: query shape");
    assert_eq!(k.len(), batch * lk * inner, "attention: key shape");
    assert_eq!(v.len(), batch * lk * inner, "attention: value shape");
    let mut out = vec![0.0f32; batch * lq * inner];
    let mut lse = if want_lse {
        vec![f32::NEG_INFINITY; batch * heads * lq]
    } else {
        Vec::new()
    };
    if out.is_empty() || lk == 0 {
        return (out, lse);
    }
    let isa = isa();
    let lanes = match isa {
        Isa::Avx512 => 16,
        _ => 8,
    };
    let packed = pack(k, v, dims, lanes);
    // Two products of lq * lk * d multiply-adds per head.
    let work = 2 * batch * heads * lq * packed.lk_pad * d;
    let tiles = lq.div_ceil(QUERY_TILE);
    let dst = SendPtr(out.as_mut_ptr());
    let lse_ptr = want_lse.then_some(SendPtr(lse.as_mut_ptr()));
    parallel_for(batch * heads * tiles, threads_for(work), |t| {
        let (bh, tile) = (t / tiles, t % tiles);
        let rows = tile * QUERY_TILE..((tile + 1) * QUERY_TILE).min(lq);
        let task = (bh / heads, bh % heads, rows);
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `isa()` checked that the CPU has these features; tasks write disjoint
            // rows and heads of `out` (and of `lse`), which outlive `parallel_for`.
            Isa::Avx512 => unsafe { tile_avx512(q, &packed, dims, task, dst, lse_ptr) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { tile_avx2(q, &packed, dims, task, dst, lse_ptr) },
            _ => tile_portable(q, &packed, dims, task, dst, lse_ptr),
        }
    });
    (out, lse)
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
        crate::cpu::test_values(n, seed)
            .into_iter()
            .map(|v| v * 3.0)
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
            let dims = Dims {
                batch,
                lq,
                lk,
                heads,
                d,
                causal,
            };
            let packed = pack(&k, &v, &dims, 8);
            let mut out = vec![0.0f32; batch * lq * inner];
            for bh in 0..batch * heads {
                let task = (bh / heads, bh % heads, 0..lq);
                tile_portable(&q, &packed, &dims, task, SendPtr(out.as_mut_ptr()), None);
            }
            let err = out
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(err < 2e-5, "portable {batch}x{lq}x{lk}x{heads}x{d}: {err}");
        }
    }
}
