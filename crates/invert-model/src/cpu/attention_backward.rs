//! The backward pass of [`super::attention`], flash-attention style (Dao 2023, "FlashAttention-2",
//! algorithm 2): the probabilities are recomputed from the queries, keys and the saved base-2
//! log-sum-exp of each row, so no `[lq, lk]` matrix is kept between the passes.
//!
//! With `s = scale * q k^T`, `p = softmax(s)`, `o = p v` and the incoming gradient `do`:
//!
//! - `dv = p^T do`
//! - `dp = do v^T`, `D_i = do_i . o_i`, `ds = p * (dp - D)`
//! - `dq = scale * ds k`, `dk = scale * ds^T q`
//!
//! One task per (image, head). Inside it, keys are visited in blocks that fit L1 ([`key_block`], so their
//! gradients stay in cache) and queries in blocks of [`ROWS`] rows; the score and `dp` products
//! run along the keys (keys and values transposed once), the `dk`/`dv` updates too, and `dq`
//! along the head dimension.

#[cfg(target_arch = "x86_64")]
use super::simd::x86::{Avx2, Avx512};
use super::simd::{Portable, Simd};
use super::{Isa, SendPtr, attention::Dims, isa, parallel_for, threads_for};

/// Query rows processed together (each product keeps `ROWS * NV` accumulators in registers
/// for chunks of `NV` key vectors: 8 of AVX2's 16 registers with NV = 2).
const ROWS: usize = 4;
/// Keys are padded to a multiple of this (a multiple of every chunk width).
const KEY_PAD: usize = 32;
/// The most keys in one block.
const MAX_KEY_BLOCK: usize = 256;

/// Keys whose gradients are accumulated together: as many as keep the block's keys, values and
/// their two gradients (`4 * d` floats per key) within 24 KiB of L1, a power-of-two multiple of
/// the chunk width (the last block of a head may be shorter).
fn key_block(d: usize, chunk: usize) -> usize {
    let mut kb = chunk;
    while kb * 2 <= MAX_KEY_BLOCK && kb * 2 * 16 * d <= 24 << 10 {
        kb *= 2;
    }
    kb
}

/// Which gradients to compute: `[dq, dk, dv]`.
pub type Needed = [bool; 3];

/// Gradients of one attention call, in the token layout of its inputs (`None` where not needed).
pub struct Grads {
    pub dq: Option<Vec<f32>>,
    pub dk: Option<Vec<f32>>,
    pub dv: Option<Vec<f32>>,
}

/// One (image, head)'s operands, repacked.
struct Head {
    /// Keys and values transposed, `[d, ls]`, zero past `lk`.
    kt: Vec<f32>,
    vt: Vec<f32>,
    /// Keys by row, `[lk_pad, d_pad]`, zero-padded.
    kr: Vec<f32>,
    /// Row stride of the transposed operands (`lk_pad` plus a cache line, see the forward).
    ls: usize,
    lk_pad: usize,
    d_pad: usize,
}

/// Everything one task reads.
struct Inputs<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    out: &'a [f32],
    /// `[batch, heads, lq]`, base 2 (see [`super::attention::attention_tokens_lse`]).
    lse2: &'a [f32],
    dout: &'a [f32],
    dims: Dims,
    need: Needed,
}

fn pack<S: Simd>(x: &Inputs, b: usize, h: usize) -> Head {
    let Dims { lk, heads, d, .. } = x.dims;
    let inner = heads * d;
    let lk_pad = lk.div_ceil(KEY_PAD) * KEY_PAD;
    let ls = lk_pad + 16;
    let d_pad = d.div_ceil(S::L) * S::L;
    let mut kt = vec![0.0f32; d * ls];
    let mut vt = vec![0.0f32; d * ls];
    let mut kr = vec![0.0f32; lk_pad * d_pad];
    for j in 0..lk {
        let src = (b * lk + j) * inner + h * d;
        let (kj, vj) = (&x.k[src..src + d], &x.v[src..src + d]);
        kr[j * d_pad..j * d_pad + d].copy_from_slice(kj);
        for dd in 0..d {
            kt[dd * ls + j] = kj[dd];
            vt[dd * ls + j] = vj[dd];
        }
    }
    Head {
        kt,
        vt,
        kr,
        ls,
        lk_pad,
        d_pad,
    }
}

/// Gradients of image `b`, head `h`: `dq` into `dq` (`[lq, d]`), `dk`/`dv` transposed into
/// `dkt`/`dvt` (`[d, ls]`), all unscaled.
// The register tiles are indexed arrays on purpose: they stay in registers.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn head_task<S: Simd, const NV: usize, const DVN: usize>(
    x: &Inputs,
    b: usize,
    h: usize,
    out: &mut HeadGrads,
) {
    let l = S::L;
    let Dims {
        lq,
        lk,
        heads,
        d,
        causal,
        ..
    } = x.dims;
    let inner = heads * d;
    let p = pack::<S>(x, b, h);
    let (ls, d_pad) = (p.ls, p.d_pad);
    out.reset(d, ls, lq, d_pad);
    let scale = x.dims.scale();
    let scale2 = scale * std::f32::consts::LOG2_E;
    let [need_q, need_k, need_v] = x.need;
    // Per query row, once: base-2 scaled queries, plain queries, incoming gradients (rows past
    // lq zero), lse (+inf where nothing is visible: 2^(s - inf) = 0) and D = do . o.
    let lq_pad = lq.div_ceil(ROWS) * ROWS;
    let mut qs2 = vec![0.0f32; lq_pad * d];
    let mut qk = vec![0.0f32; lq_pad * d];
    let mut dor = vec![0.0f32; lq_pad * d];
    let mut lse_rows = vec![f32::INFINITY; lq_pad];
    let mut dsum = vec![0.0f32; lq_pad];
    for i in 0..lq {
        let src = (b * lq + i) * inner + h * d;
        let (qrow, drow, orow) = (
            &x.q[src..src + d],
            &x.dout[src..src + d],
            &x.out[src..src + d],
        );
        for dd in 0..d {
            qs2[i * d + dd] = qrow[dd] * scale2;
            qk[i * d + dd] = qrow[dd];
            dor[i * d + dd] = drow[dd];
            dsum[i] += drow[dd] * orow[dd];
        }
        let l2 = x.lse2[(b * heads + h) * lq + i];
        lse_rows[i] = if l2 == f32::NEG_INFINITY {
            f32::INFINITY
        } else {
            l2
        };
    }
    let visible = |i: usize| {
        if causal {
            (i + 1 + lk).saturating_sub(lq).min(lk)
        } else {
            lk
        }
    };
    let key_block = key_block(d, NV * l);
    let mut ds_block = vec![0.0f32; ROWS * key_block];
    let cw = NV * l;
    let mut kb = 0;
    while kb < lk {
        let kb_end = (kb + key_block).min(p.lk_pad);
        let mut i0 = 0;
        while i0 < lq {
            let n = ROWS.min(lq - i0);
            // Rows whose visible keys all lie before this block contribute nothing to it.
            if visible(i0 + n - 1) <= kb {
                i0 += n;
                continue;
            }
            let qs2 = &qs2[i0 * d..(i0 + ROWS) * d];
            let qk = &qk[i0 * d..(i0 + ROWS) * d];
            let dor = &dor[i0 * d..(i0 + ROWS) * d];
            let lse: [f32; ROWS] = std::array::from_fn(|r| lse_rows[i0 + r]);
            let dsum: [f32; ROWS] = std::array::from_fn(|r| dsum[i0 + r]);
            let vis: [usize; ROWS] =
                std::array::from_fn(|r| if r < n { visible(i0 + r) } else { 0 });
            let mut c = kb;
            while c < kb_end {
                // s (base 2), then dp, for ROWS rows x NV vectors of keys: two loops, so each
                // keeps only ROWS * NV accumulators in registers.
                let mut sa = [[unsafe { S::zero() }; NV]; ROWS];
                let mut pa = [[unsafe { S::zero() }; NV]; ROWS];
                for (acc, t, rows) in [(&mut sa, &p.kt, qs2), (&mut pa, &p.vt, dor)] {
                    for dd in 0..d {
                        // SAFETY: dd < d and c + NV * l <= lk_pad <= ls: inside kt and vt.
                        unsafe {
                            let tp = t.as_ptr().add(dd * ls + c);
                            let tv: [S::V; NV] = std::array::from_fn(|e| S::load(tp.add(e * l)));
                            for (r, a) in acc.iter_mut().enumerate() {
                                let w = S::splat(*rows.get_unchecked(r * d + dd));
                                for e in 0..NV {
                                    a[e] = S::fma(w, tv[e], a[e]);
                                }
                            }
                        }
                    }
                }
                // p = 2^(s - lse) (0 for masked keys), ds = p (dp - D).
                let mut pr = [[unsafe { S::zero() }; NV]; ROWS];
                let mut dsr = [[unsafe { S::zero() }; NV]; ROWS];
                for r in 0..ROWS {
                    let mut s_lanes = [0.0f32; 32];
                    // SAFETY: NV * l <= 32 lanes.
                    unsafe {
                        for e in 0..NV {
                            S::store(s_lanes.as_mut_ptr().add(e * l), sa[r][e]);
                        }
                    }
                    let limit = vis[r];
                    if c + cw > limit {
                        for (lane, sv) in s_lanes[..cw].iter_mut().enumerate() {
                            if c + lane >= limit {
                                *sv = f32::NEG_INFINITY;
                            }
                        }
                    }
                    // SAFETY: as above; the ds block holds key_block >= cw keys per row.
                    unsafe {
                        let lv = S::splat(lse[r]);
                        let dv = S::splat(dsum[r]);
                        for e in 0..NV {
                            let s = S::load(s_lanes.as_ptr().add(e * l));
                            let pv = S::exp2_neg(S::sub(s, lv));
                            pr[r][e] = pv;
                            dsr[r][e] = S::mul(pv, S::sub(pa[r][e], dv));
                            S::store(
                                ds_block.as_mut_ptr().add(r * key_block + (c - kb) + e * l),
                                dsr[r][e],
                            );
                        }
                    }
                }
                // dvt[dd, c..] += sum_r p[r] do[r, dd], then dkt[dd, c..] += sum_r ds[r] q[r, dd]
                // (again one loop per product, for the registers).
                let updates = [
                    (need_v, &mut out.dvt, &pr, dor),
                    (need_k, &mut out.dkt, &dsr, qk),
                ];
                for (on, grad, coef, rows) in updates {
                    if !on {
                        continue;
                    }
                    for dd in 0..d {
                        // SAFETY: as above, inside dkt and dvt (same shape as kt).
                        unsafe {
                            let o = grad.as_mut_ptr().add(dd * ls + c);
                            let mut a: [S::V; NV] = std::array::from_fn(|e| S::load(o.add(e * l)));
                            for (r, cr) in coef.iter().enumerate() {
                                let w = S::splat(*rows.get_unchecked(r * d + dd));
                                for e in 0..NV {
                                    a[e] = S::fma(cr[e], w, a[e]);
                                }
                            }
                            for (e, v) in a.iter().enumerate() {
                                S::store(o.add(e * l), *v);
                            }
                        }
                    }
                }
                c += cw;
            }
            // dq[r, :] += sum_j ds[r, j] k[j, :] over this key block, DVN vectors at a time
            // (ROWS * DVN accumulators).
            if need_q {
                let keys = kb_end - kb;
                let mut v0 = 0;
                while v0 < d_pad {
                    let nv = DVN.min((d_pad - v0) / l);
                    let mut acc = [[unsafe { S::zero() }; DVN]; ROWS];
                    for j in 0..keys {
                        // SAFETY: kb + j < lk_pad and v0 + e*l < d_pad: inside kr.
                        unsafe {
                            let kp = p.kr.as_ptr().add((kb + j) * d_pad + v0);
                            let kv: [S::V; DVN] = std::array::from_fn(|e| {
                                if e < nv {
                                    S::load(kp.add(e * l))
                                } else {
                                    S::zero()
                                }
                            });
                            for r in 0..ROWS {
                                let w = S::splat(*ds_block.get_unchecked(r * key_block + j));
                                for e in 0..DVN {
                                    acc[r][e] = S::fma(w, kv[e], acc[r][e]);
                                }
                            }
                        }
                    }
                    for (r, a) in acc.iter().enumerate().take(n) {
                        for (e, av) in a.iter().enumerate().take(nv) {
                            // SAFETY: row i0 + r < lq, column v0 + e*l < d_pad: inside dq.
                            unsafe {
                                let o = out.dq.as_mut_ptr().add((i0 + r) * d_pad + v0 + e * l);
                                S::store(o, S::add(S::load(o), *av));
                            }
                        }
                    }
                    v0 += nv * l;
                }
            }
            i0 += n;
        }
        kb += key_block;
    }
}

/// Per-task gradient buffers, reused across the heads a thread handles.
#[derive(Default)]
struct HeadGrads {
    dq: Vec<f32>,
    dkt: Vec<f32>,
    dvt: Vec<f32>,
}

impl HeadGrads {
    fn reset(&mut self, d: usize, ls: usize, lq: usize, d_pad: usize) {
        for (buf, len) in [
            (&mut self.dq, lq * d_pad),
            (&mut self.dkt, d * ls),
            (&mut self.dvt, d * ls),
        ] {
            buf.clear();
            buf.resize(len, 0.0);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn head_avx512(x: &Inputs, b: usize, h: usize, out: &mut HeadGrads) {
    unsafe { head_task::<Avx512, 2, 4>(x, b, h, out) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn head_avx2(x: &Inputs, b: usize, h: usize, out: &mut HeadGrads) {
    unsafe { head_task::<Avx2, 2, 2>(x, b, h, out) }
}

fn head_portable(x: &Inputs, b: usize, h: usize, out: &mut HeadGrads) {
    // SAFETY: the portable "vectors" are plain arrays.
    unsafe { head_task::<Portable, 2, 2>(x, b, h, out) }
}

/// Gradients of [`super::attention::attention_tokens_lse`] with respect to `q`, `k`, `v` given
/// the forward's `out` and `lse2` and the gradient `dout` of its output (all token layout).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse2: &[f32],
    dout: &[f32],
    dims: &Dims,
    need: Needed,
) -> Grads {
    let Dims {
        batch,
        lq,
        lk,
        heads,
        d,
        ..
    } = *dims;
    let inner = heads * d;
    assert_eq!(
        q.len(),
        batch * lq * inner,
        "attention backward: query shape"
    );
    assert_eq!(k.len(), batch * lk * inner, "attention backward: key shape");
    assert_eq!(
        v.len(),
        batch * lk * inner,
        "attention backward: value shape"
    );
    assert_eq!(out.len(), q.len(), "attention backward: output shape");
    assert_eq!(dout.len(), q.len(), "attention backward: gradient shape");
    assert_eq!(
        lse2.len(),
        batch * heads * lq,
        "attention backward: lse shape"
    );
    let alloc = |on: bool, len: usize| on.then(|| vec![0.0f32; len]);
    let mut g = Grads {
        dq: alloc(need[0], q.len()),
        dk: alloc(need[1], k.len()),
        dv: alloc(need[2], v.len()),
    };
    if q.is_empty() || lk == 0 || need == [false; 3] {
        return g;
    }
    let x = Inputs {
        q,
        k,
        v,
        out,
        lse2,
        dout,
        dims: *dims,
        need,
    };
    let ptr = |v: &mut Option<Vec<f32>>| v.as_mut().map(|v| SendPtr(v.as_mut_ptr()));
    let (dq, dk, dv) = (ptr(&mut g.dq), ptr(&mut g.dk), ptr(&mut g.dv));
    let isa = isa();
    let scale = dims.scale();
    let work = 5 * batch * heads * lq * lk * d;
    parallel_for(batch * heads, threads_for(work), |t| {
        let (b, h) = (t / heads, t % heads);
        let mut hg = HeadGrads::default();
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `isa()` checked that the CPU has these features.
            Isa::Avx512 => unsafe { head_avx512(&x, b, h, &mut hg) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { head_avx2(&x, b, h, &mut hg) },
            _ => head_portable(&x, b, h, &mut hg),
        }
        let ls = hg.dkt.len() / d.max(1);
        let d_pad = hg.dq.len() / lq.max(1);
        // SAFETY: task (b, h) writes only columns h*d..(h+1)*d of image b's rows.
        unsafe {
            if let Some(dq) = dq {
                for i in 0..lq {
                    let dst = dq.get().add((b * lq + i) * inner + h * d);
                    for dd in 0..d {
                        *dst.add(dd) = hg.dq[i * d_pad + dd] * scale;
                    }
                }
            }
            for (dst, src, s) in [(dk, &hg.dkt, scale), (dv, &hg.dvt, 1.0)] {
                if let Some(dst) = dst {
                    for j in 0..lk {
                        let row = dst.get().add((b * lk + j) * inner + h * d);
                        for dd in 0..d {
                            *row.add(dd) = src[dd * ls + j] * s;
                        }
                    }
                }
            }
        }
    });
    g
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::attention::attention_tokens_lse;

    use crate::cpu::test_values as data;

    /// The definition in f64: materialised softmax and its derivative.
    fn reference(q: &[f32], k: &[f32], v: &[f32], dout: &[f32], dims: &Dims) -> [Vec<f64>; 3] {
        let Dims {
            batch,
            lq,
            lk,
            heads,
            d,
            causal,
        } = *dims;
        let inner = heads * d;
        let scale = 1.0 / (d as f64).sqrt();
        let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
        for b in 0..batch {
            for h in 0..heads {
                for i in 0..lq {
                    let qi = |dd: usize| q[(b * lq + i) * inner + h * d + dd] as f64;
                    let kj = |j: usize, dd: usize| k[(b * lk + j) * inner + h * d + dd] as f64;
                    let vj = |j: usize, dd: usize| v[(b * lk + j) * inner + h * d + dd] as f64;
                    let doi = |dd: usize| dout[(b * lq + i) * inner + h * d + dd] as f64;
                    let visible = |j: usize| !causal || j + lq <= i + lk;
                    let s: Vec<f64> = (0..lk)
                        .map(|j| {
                            if visible(j) {
                                (0..d).map(|dd| qi(dd) * kj(j, dd)).sum::<f64>() * scale
                            } else {
                                f64::NEG_INFINITY
                            }
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    if m == f64::NEG_INFINITY {
                        continue;
                    }
                    let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    let p: Vec<f64> = e.iter().map(|x| x / z).collect();
                    let dp: Vec<f64> = (0..lk)
                        .map(|j| (0..d).map(|dd| doi(dd) * vj(j, dd)).sum())
                        .collect();
                    let big_d: f64 = (0..lk).map(|j| p[j] * dp[j]).sum();
                    for j in 0..lk {
                        let ds = p[j] * (dp[j] - big_d);
                        for dd in 0..d {
                            dq[(b * lq + i) * inner + h * d + dd] += scale * ds * kj(j, dd);
                            dk[(b * lk + j) * inner + h * d + dd] += scale * ds * qi(dd);
                            dv[(b * lk + j) * inner + h * d + dd] += p[j] * doi(dd);
                        }
                    }
                }
            }
        }
        [dq, dk, dv]
    }

    #[test]
    fn gradients_match_the_definition() {
        for &(batch, lq, lk, heads, d, causal) in &[
            (2, 37, 77, 3, 8, false),
            (1, 77, 77, 2, 40, true),
            (2, 5, 3, 1, 5, false),
            (1, 130, 200, 2, 16, false),
            (2, 9, 12, 2, 7, true),
            (1, 3, 5, 1, 24, true),
        ] {
            let dims = Dims {
                batch,
                lq,
                lk,
                heads,
                d,
                causal,
            };
            let inner = heads * d;
            let q = data(batch * lq * inner, 1);
            let k = data(batch * lk * inner, 2);
            let v = data(batch * lk * inner, 3);
            let dout = data(batch * lq * inner, 4);
            let (out, lse) = attention_tokens_lse(&q, &k, &v, &dims);
            let want = reference(&q, &k, &v, &dout, &dims);
            for need in [[true; 3], [false, true, true], [true, false, false]] {
                let g = attention_backward(&q, &k, &v, &out, &lse, &dout, &dims, need);
                for (got, (want, on)) in [g.dq, g.dk, g.dv].iter().zip(want.iter().zip(need)) {
                    assert_eq!(got.is_some(), on);
                    if let Some(got) = got {
                        let err = got
                            .iter()
                            .zip(want)
                            .map(|(a, b)| (*a as f64 - b).abs())
                            .fold(0.0, f64::max);
                        assert!(err < 2e-5, "{dims:?} {need:?}: {err}");
                    }
                }
            }
        }
    }
}
