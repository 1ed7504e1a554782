//! [`FusedOps`] on autodiff flex tensors: each operation's forward kernel, plus a backward step
//! registered with burn's autodiff graph (`Backward`, as burn's own operations do). The
//! operations live in the sibling modules; this file routes to them and holds what they share.

use burn::backend::Autodiff;
use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, NodeGuard, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::tensor::FloatDType;

use super::{
    ConvInput, FusedOps, Optional, attention, conv, geglu, group_norm, layer_norm, linear,
};

/// An autodiff tensor over flex (the same type for every checkpointing strategy).
pub(super) type AdTensor = FloatTensor<Autodiff<Flex>>;

impl<C: CheckpointStrategy> FusedOps for Autodiff<Flex, C> {
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        heads: usize,
        causal: bool,
    ) -> FloatTensor<Self> {
        attention::forward_autodiff::<C>(q, k, v, heads, causal)
    }

    fn fused_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Optional<Self>,
    ) -> FloatTensor<Self> {
        linear::forward_autodiff::<C>(x, weight, bias.into_option())
    }

    fn fused_conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Optional<Self>,
        gamma: Optional<Self>,
        beta: Optional<Self>,
        image_bias: Optional<Self>,
        residual: Optional<Self>,
        input: ConvInput,
    ) -> FloatTensor<Self> {
        conv::forward_autodiff::<C>(
            x,
            weight,
            [bias, gamma, beta, image_bias, residual].map(Optional::into_option),
            input,
        )
    }

    fn fused_group_norm(
        x: FloatTensor<Self>,
        gamma: Optional<Self>,
        beta: Optional<Self>,
        groups: usize,
        epsilon: f64,
        silu: bool,
    ) -> FloatTensor<Self> {
        let (gamma, beta) = (gamma.into_option(), beta.into_option());
        group_norm::forward_autodiff::<C>(x, gamma, beta, groups, epsilon, silu)
    }

    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: Optional<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        layer_norm::forward_autodiff::<C>(x, gamma, beta.into_option(), epsilon)
    }

    fn fused_geglu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        geglu::forward_autodiff::<C>(x)
    }
}

/// The inputs of one operation being recorded: their flex primitives go to the kernels, their
/// node guards (in order) to `Backward::prepare`, and whether each is tracked decides what the
/// forward keeps for the backward.
pub(super) struct Inputs<C> {
    guards: Vec<NodeGuard>,
    tracked: Vec<bool>,
    checkpoint: std::marker::PhantomData<C>,
}

impl<C: CheckpointStrategy> Inputs<C> {
    pub fn new() -> Self {
        Self {
            guards: Vec::new(),
            tracked: Vec::new(),
            checkpoint: std::marker::PhantomData,
        }
    }

    /// Adds an input; returns its primitive.
    pub fn add(&mut self, t: AdTensor) -> FlexTensor {
        self.tracked.push(is_tracked::<C>(&t));
        let (primitive, guard) = t.into_parts();
        self.guards.push(guard);
        primitive
    }

    /// Adds an optional input; an absent one takes its place as an untracked constant, so every
    /// operation has a fixed number of parents.
    pub fn add_optional(&mut self, t: Option<AdTensor>) -> Option<FlexTensor> {
        match t {
            Some(t) => Some(self.add(t)),
            None => {
                let constant = <Autodiff<Flex, C> as FloatTensorOps<_>>::float_zeros(
                    [1].into(),
                    &Default::default(),
                    FloatDType::F32,
                );
                self.tracked.push(false);
                self.guards.push(constant.node());
                None
            }
        }
    }

    /// Whether each input, in order, is tracked.
    pub fn tracked<const N: usize>(&self) -> [bool; N] {
        self.tracked
            .as_slice()
            .try_into()
            .expect("one flag per input")
    }

    /// The guards for `Backward::prepare`.
    pub fn guards<const N: usize>(self) -> [NodeGuard; N] {
        self.guards.try_into().expect("one guard per input")
    }
}

/// A backward step that is never registered: [`is_tracked`] only asks `prepare` whether a node
/// needs gradients, then drops the preparation.
#[derive(Debug)]
struct Probe;

impl Backward<Flex, 1> for Probe {
    type State = ();

    fn backward(self, _: Ops<(), 1>, _: &mut Gradients, _: &mut Checkpointer) {
        unreachable!("the probe is never registered")
    }
}

/// Whether gradients flow to `t` (a parameter that requires them, or a tensor computed from one).
fn is_tracked<C: CheckpointStrategy>(t: &AdTensor) -> bool {
    matches!(
        Probe.prepare::<C>([t.node()]).compute_bound().stateful(),
        OpsKind::Tracked(_)
    )
}
