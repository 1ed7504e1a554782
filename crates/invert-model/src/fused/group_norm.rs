//! GroupNorm, optionally followed by SiLU (diffusers' `norm` + `nonlinearity` pairs), on the
//! fused path: one pass for the statistics, one for the per-channel affine; the backward from
//! [`crate::cpu::norm_backward`].

use burn::backend::Dispatch;
use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::nn::GroupNorm;
use burn::prelude::*;
use burn::tensor::activation::silu as burn_silu;

use super::autodiff::{AdTensor, Inputs};
use super::{FusedOps, available, dispatch};
use crate::cpu::norm::{GroupStats, apply_affine, group_stats};
use crate::cpu::norm_backward::group_norm_backward;
use crate::cpu::{Values, flex_tensor};

/// `silu(norm(x))` (or `norm(x)`) for `x` `[b, c, ..]`.
pub fn group_norm<const D: usize>(norm: &GroupNorm, x: Tensor<D>, silu: bool) -> Tensor<D> {
    if !available(&x.device(), x.dtype()) {
        let y = norm.forward(x);
        return if silu { burn_silu(y) } else { y };
    }
    Tensor::from_dispatch(Dispatch::fused_group_norm(
        x.into_dispatch(),
        dispatch(norm.gamma.as_ref().map(|g| g.val())),
        dispatch(norm.beta.as_ref().map(|b| b.val())),
        norm.num_groups,
        norm.epsilon,
        silu,
    ))
}

/// `(batch, channels, positions)` of `x` `[b, c, ..]`.
pub(super) fn planes(x: &FlexTensor) -> (usize, usize, usize) {
    let shape = x.layout().shape();
    assert!(shape.num_dims() >= 2, "group norm: input rank");
    let (b, c) = (shape[0], shape[1]);
    (b, c, shape.num_elements() / (b * c).max(1))
}

/// The statistics of `x` and the normalised (and activated) output.
fn normalise(
    x: &FlexTensor,
    gamma: Option<&FlexTensor>,
    beta: Option<&FlexTensor>,
    groups: usize,
    epsilon: f64,
    silu: bool,
) -> (FlexTensor, GroupStats) {
    let (b, c, n) = planes(x);
    let xv = Values::flex(x);
    let stats = group_stats(xv.as_slice(), b, c, n, groups, epsilon);
    let (g, bt) = (gamma.map(Values::flex), beta.map(Values::flex));
    let (scale, shift) = stats.affine(
        c,
        g.as_ref().map(|v| v.as_slice()),
        bt.as_ref().map(|v| v.as_slice()),
    );
    let y = apply_affine(xv.as_slice(), (c, n), &scale, &shift, silu);
    (flex_tensor(y, x.layout().shape().clone()), stats)
}

pub(super) fn forward(
    x: FlexTensor,
    gamma: Option<FlexTensor>,
    beta: Option<FlexTensor>,
    groups: usize,
    epsilon: f64,
    silu: bool,
) -> FlexTensor {
    normalise(&x, gamma.as_ref(), beta.as_ref(), groups, epsilon, silu).0
}

/// What the backward of a GroupNorm (+ SiLU) reads.
#[derive(Clone, Debug)]
struct Saved {
    x: FlexTensor,
    gamma: Option<FlexTensor>,
    beta: Option<FlexTensor>,
    stats: GroupStats,
    silu: bool,
}

#[derive(Debug)]
struct GroupNormBackward;

impl Backward<Flex, 3> for GroupNormBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [nx, ng, nb] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let s = ops.state;
        let (g, b) = (
            s.gamma.as_ref().map(Values::flex),
            s.beta.as_ref().map(Values::flex),
        );
        let g = group_norm_backward(
            Values::flex(&s.x).as_slice(),
            Values::flex(&dy).as_slice(),
            planes(&s.x),
            &s.stats,
            g.as_ref().map(|v| v.as_slice()),
            b.as_ref().map(|v| v.as_slice()),
            s.silu,
            (nx.is_some(), ng.is_some() || nb.is_some()),
        );
        let c = planes(&s.x).1;
        if let (Some(node), Some(dx)) = (nx, g.dx) {
            grads.register::<Flex>(node.id, flex_tensor(dx, s.x.layout().shape().clone()));
        }
        if let (Some(node), Some(dg)) = (ng, g.dgamma) {
            grads.register::<Flex>(node.id, flex_tensor(dg, [c]));
        }
        if let (Some(node), Some(db)) = (nb, g.dbeta) {
            grads.register::<Flex>(node.id, flex_tensor(db, [c]));
        }
    }
}

pub(super) fn forward_autodiff<C: CheckpointStrategy>(
    x: AdTensor,
    gamma: Option<AdTensor>,
    beta: Option<AdTensor>,
    groups: usize,
    epsilon: f64,
    silu: bool,
) -> AdTensor {
    let mut inputs = Inputs::<C>::new();
    let x = inputs.add(x);
    let gamma = inputs.add_optional(gamma);
    let beta = inputs.add_optional(beta);
    match GroupNormBackward
        .prepare::<C>(inputs.guards())
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (y, stats) = normalise(&x, gamma.as_ref(), beta.as_ref(), groups, epsilon, silu);
            let saved = Saved {
                x,
                gamma,
                beta,
                stats,
                silu,
            };
            prep.finish(saved, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(x, gamma, beta, groups, epsilon, silu)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::tests::{Operands, check_gradients};
    use burn::module::{Param, ParamId};

    fn norm(t: &Operands, groups: usize, c: usize) -> GroupNorm {
        let mut norm = burn::nn::GroupNormConfig::new(groups, c)
            .with_epsilon(1e-5)
            .init(&Device::flex());
        norm.gamma = Some(Param::initialized(ParamId::new(), t.get(1, [c])));
        norm.beta = Some(Param::initialized(ParamId::new(), t.get(2, [c])));
        norm
    }

    #[test]
    fn fused_group_norm_matches_burn_forward_and_backward() {
        for (b, c, h, w, groups, silu) in [(2, 8, 5, 3, 4, true), (1, 6, 4, 4, 2, false)] {
            for tracked in [
                [true, false, false],
                [true, true, true],
                [false, true, true],
            ] {
                check_gradients(
                    &[b * c * h * w, c, c],
                    &tracked,
                    |t| group_norm(&norm(t, groups, c), t.get(0, [b, c, h, w]), silu),
                    |t| {
                        let y = norm(t, groups, c).forward(t.get(0, [b, c, h, w]));
                        if silu { burn_silu(y) } else { y }
                    },
                    1e-4,
                );
            }
        }
    }
}
