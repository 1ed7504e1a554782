//! [`FusedOps`] on plain flex tensors: the forward kernels alone (inference).

use burn::backend::Flex;
use burn::backend::tensor::FloatTensor;

use super::{
    ConvInput, FusedOps, Optional, attention, conv, geglu, group_norm, layer_norm, linear,
};

impl FusedOps for Flex {
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        heads: usize,
        causal: bool,
    ) -> FloatTensor<Self> {
        attention::forward(q, k, v, heads, causal)
    }

    fn fused_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Optional<Self>,
    ) -> FloatTensor<Self> {
        linear::forward(x, weight, bias.into_option())
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
        conv::forward(&conv::Operands {
            x,
            weight,
            bias: bias.into_option(),
            gamma: gamma.into_option(),
            beta: beta.into_option(),
            image_bias: image_bias.into_option(),
            residual: residual.into_option(),
            input,
        })
    }

    fn fused_group_norm(
        x: FloatTensor<Self>,
        gamma: Optional<Self>,
        beta: Optional<Self>,
        groups: usize,
        epsilon: f64,
        silu: bool,
    ) -> FloatTensor<Self> {
        group_norm::forward(
            x,
            gamma.into_option(),
            beta.into_option(),
            groups,
            epsilon,
            silu,
        )
    }

    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: Optional<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        layer_norm::forward(x, gamma, beta.into_option(), epsilon)
    }

    fn fused_geglu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        geglu::forward(x)
    }
}
