//! LayerNorm over the last dimension (CLIP's layers, the transformer blocks' `norm1..3`).
//! burn's `LayerNorm` keeps its epsilon private, so callers pass the one their config gives.

use burn::backend::Dispatch;
use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::nn::LayerNorm;
use burn::prelude::*;

use super::autodiff::{AdTensor, Inputs};
use super::{FusedOps, available, dispatch};
use crate::cpu::norm_backward::{layer_norm as layer_norm_kernel, layer_norm_backward};
use crate::cpu::{Values, flex_tensor};

/// `ln.forward(x)` for a LayerNorm built with `epsilon`.
pub fn layer_norm<const D: usize>(ln: &LayerNorm, x: Tensor<D>, epsilon: f64) -> Tensor<D> {
    if !available(&x.device(), x.dtype()) {
        return ln.forward(x);
    }
    Tensor::from_dispatch(Dispatch::fused_layer_norm(
        x.into_dispatch(),
        ln.gamma.val().into_dispatch(),
        dispatch(ln.beta.as_ref().map(|b| b.val())),
        epsilon,
    ))
}

fn width(x: &FlexTensor) -> usize {
    let shape = x.layout().shape();
    shape[shape.num_dims() - 1]
}

fn normalise(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: Option<&FlexTensor>,
    epsilon: f64,
) -> (FlexTensor, Vec<f32>, Vec<f32>) {
    let b = beta.map(Values::flex);
    let (y, mean, rstd) = layer_norm_kernel(
        Values::flex(x).as_slice(),
        width(x),
        Values::flex(gamma).as_slice(),
        b.as_ref().map(|v| v.as_slice()),
        epsilon,
    );
    (flex_tensor(y, x.layout().shape().clone()), mean, rstd)
}

pub(super) fn forward(
    x: FlexTensor,
    gamma: FlexTensor,
    beta: Option<FlexTensor>,
    epsilon: f64,
) -> FlexTensor {
    normalise(&x, &gamma, beta.as_ref(), epsilon).0
}

#[derive(Debug)]
struct LayerNormBackward;

#[derive(Clone, Debug)]
struct Saved {
    x: FlexTensor,
    gamma: FlexTensor,
    mean: Vec<f32>,
    rstd: Vec<f32>,
}

impl Backward<Flex, 3> for LayerNormBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [nx, ng, nb] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let s = ops.state;
        let w = width(&s.x);
        let g = layer_norm_backward(
            Values::flex(&s.x).as_slice(),
            Values::flex(&dy).as_slice(),
            w,
            Values::flex(&s.gamma).as_slice(),
            (&s.mean, &s.rstd),
            (nx.is_some(), ng.is_some() || nb.is_some()),
        );
        if let (Some(node), Some(dx)) = (nx, g.dx) {
            grads.register::<Flex>(node.id, flex_tensor(dx, s.x.layout().shape().clone()));
        }
        if let (Some(node), Some(dg)) = (ng, g.dgamma) {
            grads.register::<Flex>(node.id, flex_tensor(dg, [w]));
        }
        if let (Some(node), Some(db)) = (nb, g.dbeta) {
            grads.register::<Flex>(node.id, flex_tensor(db, [w]));
        }
    }
}

pub(super) fn forward_autodiff<C: CheckpointStrategy>(
    x: AdTensor,
    gamma: AdTensor,
    beta: Option<AdTensor>,
    epsilon: f64,
) -> AdTensor {
    let mut inputs = Inputs::<C>::new();
    let x = inputs.add(x);
    let gamma = inputs.add(gamma);
    let beta = inputs.add_optional(beta);
    match LayerNormBackward
        .prepare::<C>(inputs.guards())
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (y, mean, rstd) = normalise(&x, &gamma, beta.as_ref(), epsilon);
            prep.finish(
                Saved {
                    x,
                    gamma,
                    mean,
                    rstd,
                },
                y,
            )
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(x, gamma, beta, epsilon)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::tests::{Operands, check_gradients};
    use burn::module::{Param, ParamId};

    fn ln(t: &Operands, w: usize) -> LayerNorm {
        let mut ln = burn::nn::LayerNormConfig::new(w).init(&Device::flex());
        ln.gamma = Param::initialized(ParamId::new(), t.get(1, [w]));
        ln.beta = Some(Param::initialized(ParamId::new(), t.get(2, [w])));
        ln
    }

    #[test]
    fn fused_layer_norm_matches_burn_forward_and_backward() {
        for (rows, w) in [(6, 7), (4, 40)] {
            for tracked in [[true, false, false], [true, true, true]] {
                check_gradients(
                    &[rows * w, w, w],
                    &tracked,
                    |t| layer_norm(&ln(t, w), t.get(0, [2, rows / 2, w]), 1e-5),
                    |t| ln(t, w).forward(t.get(0, [2, rows / 2, w])),
                    1e-4,
                );
            }
        }
    }
}
