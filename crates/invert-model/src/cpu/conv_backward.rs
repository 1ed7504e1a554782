//! Backward of the stride-1 "same" convolutions of [`super::conv`].
//!
//! - input: `dx = flip(w)^T * dy`, the forward kernel reading the weights transposed and
//!   flipped ([`Weights::Flipped`]); then through the input transform (a nearest 2x upsample
//!   sums each 2x2 block; a GroupNorm + SiLU goes to [`super::norm_backward`]);
//! - weights: in [`super::conv_weight_gradient`];
//! - biases: sums of `dy` over positions (and images, for the per-channel bias).

use super::conv::{Conv, Geometry, Input, Weights, conv2d};
use super::{SendPtr, parallel_for, threads_for};

/// The gradient with respect to the (transformed) input of `c`, `[batch, cin, H, W]` at the
/// output size, given `dy` `[batch, cout, H, W]`.
pub fn input_gradient(c: &Conv, dy: &[f32]) -> Vec<f32> {
    let g = Geometry::of(c);
    conv2d(&Conv {
        x: dy,
        batch: c.batch,
        cin: c.cout,
        h: g.oh,
        w: g.ow,
        weight: c.weight,
        cout: c.cin,
        k: c.k,
        bias: None,
        image_bias: None,
        residual: None,
        input: Input::Plain,
        weights: Weights::Flipped,
    })
}

/// The gradient of a nearest 2x upsample of `[planes, h, w]`: each 2x2 block of `d`
/// (`[planes, 2h, 2w]`) summed.
pub fn upsample_backward(d: &[f32], planes: usize, h: usize, w: usize) -> Vec<f32> {
    assert_eq!(d.len(), planes * 4 * h * w, "upsample backward: size");
    let mut out = vec![0.0f32; planes * h * w];
    let dst = SendPtr(out.as_mut_ptr());
    parallel_for(planes, threads_for(d.len() * 2), |p| {
        let src = &d[p * 4 * h * w..(p + 1) * 4 * h * w];
        for y in 0..h {
            let (r0, r1) = (&src[2 * y * 2 * w..], &src[(2 * y + 1) * 2 * w..]);
            for x in 0..w {
                let v = r0[2 * x] + r0[2 * x + 1] + r1[2 * x] + r1[2 * x + 1];
                // SAFETY: plane p is written by task p only.
                unsafe { *dst.get().add((p * h + y) * w + x) = v };
            }
        }
    });
    out
}

/// Per-(image, channel) sums of `dy` `[batch * channels, n]`.
pub fn plane_sums(dy: &[f32], planes: usize, n: usize) -> Vec<f32> {
    assert_eq!(dy.len(), planes * n, "plane sums: size");
    dy.chunks_exact(n.max(1))
        .take(planes)
        .map(|p| p.iter().map(|&v| v as f64).sum::<f64>() as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::conv_weight_gradient::weight_gradient;

    use crate::cpu::test_values as data;

    /// `sum(conv(x) * dy)` is bilinear: its gradients are checked against the forward kernel by
    /// perturbing single entries (exact up to rounding, the function being linear in each).
    #[test]
    fn gradients_are_the_derivatives_of_the_forward() {
        for &(batch, cin, cout, h, w, k, up) in &[
            (2, 5, 7, 6, 5, 3, false),
            (1, 3, 13, 4, 4, 3, true),
            (2, 7, 9, 5, 3, 1, false),
            (1, 16, 12, 9, 11, 3, false),
            (3, 5, 6, 3, 3, 3, false),
            (2, 4, 3, 2, 2, 3, true),
        ] {
            let x = data(batch * cin * h * w, 1);
            let weight = data(cout * cin * k * k, 2);
            let (oh, ow) = if up { (2 * h, 2 * w) } else { (h, w) };
            let dy = data(batch * cout * oh * ow, 3);
            let conv = |x: &[f32], weight: &[f32]| {
                conv2d(&Conv {
                    x,
                    batch,
                    cin,
                    h,
                    w,
                    weight,
                    cout,
                    k,
                    bias: None,
                    image_bias: None,
                    residual: None,
                    input: if up { Input::Upsample2x } else { Input::Plain },
                    weights: Weights::Forward,
                })
            };
            let loss = |x: &[f32], weight: &[f32]| -> f64 {
                conv(x, weight)
                    .iter()
                    .zip(&dy)
                    .map(|(a, b)| (a * b) as f64)
                    .sum()
            };
            let c = Conv {
                x: &x,
                batch,
                cin,
                h,
                w,
                weight: &weight,
                cout,
                k,
                bias: None,
                image_bias: None,
                residual: None,
                input: if up { Input::Upsample2x } else { Input::Plain },
                weights: Weights::Forward,
            };
            let dxin = input_gradient(&c, &dy);
            let dx = if up {
                upsample_backward(&dxin, batch * cin, h, w)
            } else {
                dxin
            };
            let dw = weight_gradient(&c, &dy);
            for i in [0, x.len() / 3, x.len() - 1] {
                let mut xp = x.clone();
                xp[i] += 1.0;
                let want = loss(&xp, &weight) - loss(&x, &weight);
                assert!(
                    (dx[i] as f64 - want).abs() < 1e-3,
                    "dx[{i}] {} vs {want}",
                    dx[i]
                );
            }
            for i in [0, weight.len() / 2, weight.len() - 1] {
                let mut wp = weight.clone();
                wp[i] += 1.0;
                let want = loss(&x, &wp) - loss(&x, &weight);
                assert!(
                    (dw[i] as f64 - want).abs() < 1e-3,
                    "dw[{i}] {} vs {want}",
                    dw[i]
                );
            }
        }
    }
}
