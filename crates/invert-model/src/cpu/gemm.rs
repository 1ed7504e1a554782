//! Strided matrix products through the `gemm` crate (the one burn's flex backend uses), for the
//! backward passes: any operand may be read transposed through its strides, so `dy w^T`,
//! `x^T dy` and a convolution's weight gradient need no transposed copies.

/// A read-only matrix view: element `(i, j)` is `data[offset + i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// A row-major `[rows, cols]` matrix.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            offset: 0,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of a row-major `[rows, cols]` matrix, read as `[cols, rows]`.
    pub fn transposed(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            offset: 0,
            rs: 1,
            cs: cols,
        }
    }

    /// Panics unless every element of an `[m, n]` view lies inside `data`.
    fn check(&self, m: usize, n: usize, what: &str) {
        if m == 0 || n == 0 {
            return;
        }
        let last = self.offset + (m - 1) * self.rs + (n - 1) * self.cs;
        assert!(last < self.data.len(), "gemm: {what} view out of bounds");
    }
}

/// A mutable `[m, n]` destination: element `(i, j)` at `offset + i * rs + j * cs`.
pub struct Dest<'a> {
    pub data: &'a mut [f32],
    pub offset: usize,
    pub rs: usize,
    pub cs: usize,
}

/// `dst = lhs [m, k] @ rhs [k, n]`, or `dst += ...` when `accumulate`.
pub fn gemm(m: usize, n: usize, k: usize, dst: Dest, lhs: View, rhs: View, accumulate: bool) {
    lhs.check(m, k, "left");
    rhs.check(k, n, "right");
    if m == 0 || n == 0 {
        return;
    }
    if m > 0 && n > 0 {
        let last = dst.offset + (m - 1) * dst.rs + (n - 1) * dst.cs;
        assert!(last < dst.data.len(), "gemm: destination out of bounds");
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst.data[dst.offset + i * dst.rs + j * dst.cs] = 0.0;
                }
            }
        }
        return;
    }
    // Split the larger output dimension over the kernels' own thread pool, one serial gemm
    // call per part: with the crate's rayon parallelism the two pools handed the cores back
    // and forth (13% of a pretraining profile in the scheduler).
    let threads = super::threads_for(m * n * k).min(super::threads());
    let (split_rows, len) = if m >= n { (true, m) } else { (false, n) };
    let parts = threads.min(len).max(1);
    let per = len.div_ceil(parts);
    let base = super::SendPtr(dst.data.as_mut_ptr());
    super::parallel_for(parts, parts, |part| {
        let (start, end) = (part * per, ((part + 1) * per).min(len));
        if start >= end {
            return;
        }
        let (mm, nn, dst_off, lhs_off, rhs_off) = if split_rows {
            (end - start, n, start * dst.rs, start * lhs.rs, 0)
        } else {
            (m, end - start, start * dst.cs, 0, start * rhs.cs)
        };
        // SAFETY: the three views were checked to lie inside their slices; the parts write
        // disjoint rows (or columns) of `dst`, which is borrowed mutably and so does not
        // alias the inputs.
        unsafe {
            serial(
                mm,
                nn,
                k,
                base.get().add(dst.offset + dst_off),
                (dst.rs, dst.cs),
                lhs.data.as_ptr().add(lhs.offset + lhs_off),
                (lhs.rs, lhs.cs),
                rhs.data.as_ptr().add(rhs.offset + rhs_off),
                (rhs.rs, rhs.cs),
                accumulate,
            );
        }
    });
}

/// [`gemm`] on the calling thread only, for kernels that already run one task per thread.
pub fn gemm_serial(
    m: usize,
    n: usize,
    k: usize,
    dst: Dest,
    lhs: View,
    rhs: View,
    accumulate: bool,
) {
    lhs.check(m, k, "left");
    rhs.check(k, n, "right");
    if m == 0 || n == 0 || k == 0 {
        // The general path handles the degenerate shapes (a zero or kept destination).
        return gemm(m, n, k, dst, lhs, rhs, accumulate);
    }
    let last = dst.offset + (m - 1) * dst.rs + (n - 1) * dst.cs;
    assert!(last < dst.data.len(), "gemm: destination out of bounds");
    // SAFETY: the three views were checked to lie inside their slices; `dst` is borrowed
    // mutably and so does not alias the inputs.
    unsafe {
        serial(
            m,
            n,
            k,
            dst.data.as_mut_ptr().add(dst.offset),
            (dst.rs, dst.cs),
            lhs.data.as_ptr().add(lhs.offset),
            (lhs.rs, lhs.cs),
            rhs.data.as_ptr().add(rhs.offset),
            (rhs.rs, rhs.cs),
            accumulate,
        );
    }
}

/// One single-threaded call of the `gemm` crate; strides are (row, column).
///
/// # Safety
/// Every element the shapes and strides reach must lie inside its buffer, and `dst` must not
/// alias `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
unsafe fn serial(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_strides: (usize, usize),
    lhs: *const f32,
    lhs_strides: (usize, usize),
    rhs: *const f32,
    rhs_strides: (usize, usize),
    accumulate: bool,
) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_strides.1 as isize,
            dst_strides.0 as isize,
            accumulate,
            lhs,
            lhs_strides.1 as isize,
            lhs_strides.0 as isize,
            rhs,
            rhs_strides.1 as isize,
            rhs_strides.0 as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_products_match_the_definition() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..n * k).map(|i| (i as f32).sin()).collect();
        // a [m, k] @ (b [n, k])^T, accumulated onto ones.
        let mut out = vec![1.0f32; m * n];
        gemm(
            m,
            n,
            k,
            Dest {
                data: &mut out,
                offset: 0,
                rs: n,
                cs: 1,
            },
            View::rows(&a, k),
            View::transposed(&b, k),
            true,
        );
        for i in 0..m {
            for j in 0..n {
                let want: f32 = 1.0 + (0..k).map(|p| a[i * k + p] * b[j * k + p]).sum::<f32>();
                assert!((out[i * n + j] - want).abs() < 1e-5);
            }
        }
    }
}
