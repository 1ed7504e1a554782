//! GEGLU's gate (diffusers `GEGLU`, models/activations.py): `h * gelu(gate)` for the two halves
//! of the projection, exact GELU.

use burn::backend::Dispatch;
use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::prelude::*;
use burn::tensor::activation::gelu;

use super::autodiff::{AdTensor, Inputs};
use super::{FusedOps, available};
use crate::cpu::act::{geglu as geglu_kernel, geglu_backward};
use crate::cpu::{Values, flex_tensor};

/// `x[.., :n] * gelu(x[.., n:])` for `x` `[.., 2n]`.
pub fn geglu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if available(&x.device(), x.dtype()) {
        return Tensor::from_dispatch(Dispatch::fused_geglu(x.into_dispatch()));
    }
    let [h, gate] = x.chunk(2, D - 1).try_into().expect("two halves");
    h * gelu(gate)
}

/// `(rows, n)` and the output shape of `x` `[.., 2n]`.
fn sizes(x: &FlexTensor) -> (usize, usize, burn::tensor::Shape) {
    let mut shape = x.layout().shape().clone();
    let last = shape.num_dims() - 1;
    let two = shape[last];
    assert!(two.is_multiple_of(2), "geglu: odd width {two}");
    shape[last] = two / 2;
    (
        x.layout().shape().num_elements() / two.max(1),
        two / 2,
        shape,
    )
}

pub(super) fn forward(x: FlexTensor) -> FlexTensor {
    let (rows, n, shape) = sizes(&x);
    flex_tensor(geglu_kernel(Values::flex(&x).as_slice(), rows, n), shape)
}

#[derive(Debug)]
struct GegluBackward;

impl Backward<Flex, 1> for GegluBackward {
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [nx] = ops.parents;
        let dout = grads.consume::<Flex>(&ops.node);
        let x = ops.state;
        if let Some(node) = nx {
            let (rows, n, _) = sizes(&x);
            let dx = geglu_backward(
                Values::flex(&x).as_slice(),
                Values::flex(&dout).as_slice(),
                rows,
                n,
            );
            grads.register::<Flex>(node.id, flex_tensor(dx, x.layout().shape().clone()));
        }
    }
}

pub(super) fn forward_autodiff<C: CheckpointStrategy>(x: AdTensor) -> AdTensor {
    let mut inputs = Inputs::<C>::new();
    let x = inputs.add(x);
    match GegluBackward
        .prepare::<C>(inputs.guards())
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(x.clone(), forward(x)),
        OpsKind::UnTracked(prep) => prep.finish(forward(x)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::tests::check_gradients;

    #[test]
    fn fused_geglu_matches_burn_forward_and_backward() {
        for (rows, n) in [(3, 5), (4, 40)] {
            check_gradients(
                &[rows * 2 * n],
                &[true],
                |t| geglu(t.get(0, [rows, 2 * n]).mul_scalar(2.0)),
                |t| {
                    let x = t.get(0, [rows, 2 * n]).mul_scalar(2.0);
                    let [h, g] = x.chunk(2, 1).try_into().unwrap();
                    h * gelu(g)
                },
                1e-4,
            );
        }
    }
}
