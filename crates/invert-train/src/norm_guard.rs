//! `--norm-guard`: keeps the learned vectors' norms within a factor of the vocabulary's median
//! token-vector norm. Gal et al. 2022 (section 4) optimise v* without a constraint; the guard
//! is off by default.

use burn::prelude::*;

/// Euclidean norm of each row of `[n, width]` vectors.
pub fn row_norms(rows: Tensor<2>) -> Vec<f32> {
    rows.powf_scalar(2.0)
        .sum_dim(1)
        .sqrt()
        .into_data()
        .try_to_vec::<f32>()
        .expect("f32 rows")
}

/// The median L2 norm of a token table's rows.
pub fn median_row_norm(table: Tensor<2>) -> f32 {
    let mut norms = row_norms(table);
    norms.sort_by(f32::total_cmp);
    norms[norms.len() / 2]
}

/// Scales down each `width`-long row of `rows` whose L2 norm exceeds `limit` to that norm.
pub fn clip_row_norms(rows: &mut [f32], width: usize, limit: f32) {
    for row in rows.chunks_mut(width) {
        let n = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        if n > limit {
            row.iter_mut().for_each(|x| *x *= limit / n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_row_norms() {
        let device = Device::flex();
        // norms 5, 1, 13
        let t = Tensor::<2>::from_data(
            TensorData::new(vec![3.0f32, 4.0, 1.0, 0.0, 5.0, 12.0], [3, 2]),
            &device,
        );
        assert_eq!(row_norms(t.clone()), vec![5.0, 1.0, 13.0]);
        assert_eq!(median_row_norm(t), 5.0);
    }

    #[test]
    fn only_rows_over_the_limit_shrink_to_it() {
        let mut rows = vec![3.0f32, 4.0, 0.3, 0.4];
        clip_row_norms(&mut rows, 2, 1.0);
        assert!((rows[0] - 0.6).abs() < 1e-6 && (rows[1] - 0.8).abs() < 1e-6);
        assert_eq!(&rows[2..], &[0.3, 0.4]);
    }
}
