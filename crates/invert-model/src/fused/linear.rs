//! `Linear` (`x w + b`, burn's `[k, n]` weight layout) with the fused kernel of
//! [`crate::cpu::linear`]. Backward: `dx = dy w^T`, `dw = x^T dy`, `db = sum(dy)`, each only when
//! its input is tracked (frozen weights: `dx` alone).

use burn::backend::Dispatch;
use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::nn::Linear;
use burn::prelude::*;

use super::autodiff::{AdTensor, Inputs};
use super::{FusedOps, available, dispatch};
use crate::cpu::gemm::{Dest, View, gemm};
use crate::cpu::linear::{column_sums, matmul};
use crate::cpu::{Values, flex_tensor};

/// `lin.forward(x)`, on the fused path where it applies.
pub fn linear<const D: usize>(lin: &Linear, x: Tensor<D>) -> Tensor<D> {
    if !available(&x.device(), x.dtype()) {
        return lin.forward(x);
    }
    Tensor::from_dispatch(Dispatch::fused_linear(
        x.into_dispatch(),
        lin.weight.val().into_dispatch(),
        dispatch(lin.bias.as_ref().map(|b| b.val())),
    ))
}

/// `(rows, k, n)` of `x` `[.., k]` times `w` `[k, n]`.
fn sizes(x: &FlexTensor, w: &FlexTensor) -> (usize, usize, usize) {
    let (xs, ws) = (x.layout().shape(), w.layout().shape());
    let k = xs[xs.num_dims() - 1];
    assert_eq!(ws.num_dims(), 2, "linear: weight rank");
    assert_eq!(
        ws[0],
        k,
        "linear: input width {k} against weight {:?}",
        ws.dims::<2>()
    );
    (xs.num_elements() / k.max(1), k, ws[1])
}

pub(super) fn forward(x: FlexTensor, weight: FlexTensor, bias: Option<FlexTensor>) -> FlexTensor {
    let (rows, k, n) = sizes(&x, &weight);
    let b = bias.as_ref().map(Values::flex);
    let y = matmul(
        Values::flex(&x).as_slice(),
        rows,
        k,
        Values::flex(&weight).as_slice(),
        n,
        b.as_ref().map(|b| b.as_slice()),
    );
    let mut shape = x.layout().shape().clone();
    let last = shape.num_dims() - 1;
    shape[last] = n;
    flex_tensor(y, shape)
}

#[derive(Debug)]
struct LinearBackward;

#[derive(Clone, Debug)]
struct Saved {
    /// Kept only when the weight is tracked.
    x: Option<FlexTensor>,
    /// Kept only when the input is tracked.
    weight: Option<FlexTensor>,
    x_shape: burn::tensor::Shape,
    k: usize,
    n: usize,
}

impl Backward<Flex, 3> for LinearBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [nx, nw, nb] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let s = ops.state;
        let dyv = Values::flex(&dy);
        let dy = dyv.as_slice();
        let rows = dy.len() / s.n.max(1);
        let (k, n) = (s.k, s.n);
        if let (Some(node), Some(w)) = (nx, &s.weight) {
            // dx [rows, k] = dy [rows, n] @ w^T
            let mut dx = vec![0.0f32; rows * k];
            let wv = Values::flex(w);
            let dst = Dest {
                data: &mut dx,
                offset: 0,
                rs: k,
                cs: 1,
            };
            gemm(
                rows,
                k,
                n,
                dst,
                View::rows(dy, n),
                View::transposed(wv.as_slice(), n),
                false,
            );
            grads.register::<Flex>(node.id, flex_tensor(dx, s.x_shape.clone()));
        }
        if let (Some(node), Some(x)) = (nw, &s.x) {
            // dw [k, n] = x^T @ dy
            let mut dw = vec![0.0f32; k * n];
            let xv = Values::flex(x);
            let dst = Dest {
                data: &mut dw,
                offset: 0,
                rs: n,
                cs: 1,
            };
            gemm(
                k,
                n,
                rows,
                dst,
                View::transposed(xv.as_slice(), k),
                View::rows(dy, n),
                false,
            );
            grads.register::<Flex>(node.id, flex_tensor(dw, [k, n]));
        }
        if let Some(node) = nb {
            grads.register::<Flex>(node.id, flex_tensor(column_sums(dy, rows, s.n), [s.n]));
        }
    }
}

pub(super) fn forward_autodiff<C: CheckpointStrategy>(
    x: AdTensor,
    weight: AdTensor,
    bias: Option<AdTensor>,
) -> AdTensor {
    let mut inputs = Inputs::<C>::new();
    let x = inputs.add(x);
    let weight = inputs.add(weight);
    let bias = inputs.add_optional(bias);
    let [tx, tw, _] = inputs.tracked::<3>();
    match LinearBackward
        .prepare::<C>(inputs.guards())
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (_, k, n) = sizes(&x, &weight);
            let saved = Saved {
                x: tw.then(|| x.clone()),
                weight: tx.then(|| weight.clone()),
                x_shape: x.layout().shape().clone(),
                k,
                n,
            };
            prep.finish(saved, forward(x, weight, bias))
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(x, weight, bias)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::tests::{Operands, check_gradients};
    use burn::module::{Param, ParamId};

    fn layer(t: &Operands, k: usize, n: usize, bias: bool) -> Linear {
        Linear {
            weight: Param::initialized(ParamId::new(), t.get(1, [k, n])),
            bias: bias.then(|| Param::initialized(ParamId::new(), t.get(2, [n]))),
        }
    }

    #[test]
    fn fused_linear_matches_burn_forward_and_backward() {
        for (rows, k, n, bias) in [(6, 5, 32, true), (4, 7, 37, false), (2, 64, 64, true)] {
            let x = [2, rows / 2, k];
            for tracked in [[true, false, false], [true, true, bias]] {
                check_gradients(
                    &[rows * k, k * n, n],
                    &tracked,
                    |t| linear(&layer(t, k, n, bias), t.get(0, x)),
                    |t| layer(t, k, n, bias).forward(t.get(0, x)),
                    1e-4,
                );
            }
        }
    }
}
