//! `conv(pre(x)) + image_bias + residual`: a stride-1 "same" convolution (3x3 or 1x1) whose
//! input is first normalised (GroupNorm, optionally SiLU) or upsampled (nearest 2x), with the
//! per-image bias (a ResNet block's time embedding) and a residual added to its output. On the
//! fused path the pre-step runs while the kernel reads its input and the additions while it
//! writes ([`crate::cpu::conv`]); the backward is in [`crate::cpu::conv_backward`].

use burn::backend::Dispatch;
use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::silu;

use super::autodiff::{AdTensor, Inputs};
use super::group_norm::planes;
use super::{FusedOps, available, dispatch};
use crate::cpu::conv::{self, Conv, Input, Weights, conv2d};
use crate::cpu::conv_backward::{input_gradient, plane_sums, upsample_backward};
use crate::cpu::conv_weight_gradient::weight_gradient;
use crate::cpu::norm::{GroupStats, group_stats};
use crate::cpu::norm_backward::group_norm_backward;
use crate::cpu::{Values, flex_tensor};
use crate::layers::upsample_nearest;

/// What a [`conv`] does to its input first.
#[derive(Clone, Copy)]
pub enum Pre<'a> {
    None,
    /// `GroupNorm`, then SiLU if the flag is set.
    Norm(&'a GroupNorm, bool),
    /// Nearest-neighbour 2x upsample.
    Upsample2x,
}

/// The input transform of [`FusedOps::fused_conv`] (the norm's parameters travel as tensors).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ConvInput {
    Plain,
    Norm {
        groups: usize,
        epsilon: f64,
        silu: bool,
    },
    Upsample2x,
}

fn explicit_padding(conv: &Conv2d) -> Option<[usize; 4]> {
    match conv.padding {
        PaddingConfig2d::Explicit(a, b, c, d) => Some([a, b, c, d]),
        PaddingConfig2d::Valid => Some([0; 4]),
        _ => None,
    }
}

/// `conv(pre(x)) + image_bias + residual`: `image_bias` is `[b, cout]` (broadcast over the
/// image), `residual` `[b, cout, H, W]`.
pub fn conv(
    conv: &Conv2d,
    x: Tensor<4>,
    pre: Pre,
    image_bias: Option<Tensor<2>>,
    residual: Option<Tensor<4>>,
) -> Tensor<4> {
    let [_, _, kh, kw] = conv.weight.dims();
    let supported = explicit_padding(conv)
        .is_some_and(|p| conv::supported([kh, kw], conv.stride, p, conv.dilation, conv.groups));
    if supported && available(&x.device(), x.dtype()) {
        let (gamma, beta, input) = match pre {
            Pre::None => (None, None, ConvInput::Plain),
            Pre::Upsample2x => (None, None, ConvInput::Upsample2x),
            Pre::Norm(norm, silu) => (
                norm.gamma.as_ref().map(|g| g.val()),
                norm.beta.as_ref().map(|b| b.val()),
                ConvInput::Norm {
                    groups: norm.num_groups,
                    epsilon: norm.epsilon,
                    silu,
                },
            ),
        };
        return Tensor::from_dispatch(Dispatch::fused_conv(
            x.into_dispatch(),
            conv.weight.val().into_dispatch(),
            dispatch(conv.bias.as_ref().map(|b| b.val())),
            dispatch(gamma),
            dispatch(beta),
            dispatch(image_bias),
            dispatch(residual),
            input,
        ));
    }
    let [_, _, h, w] = x.dims();
    let x = match pre {
        Pre::None => x,
        Pre::Norm(norm, act) => {
            let y = norm.forward(x);
            if act { silu(y) } else { y }
        }
        Pre::Upsample2x => upsample_nearest(x, [2 * h, 2 * w]),
    };
    let mut y = conv.forward(x);
    if let Some(t) = image_bias {
        y = y + t.unsqueeze_dims::<4>(&[2, 3]);
    }
    match residual {
        Some(r) => r + y,
        None => y,
    }
}

/// The operands of one convolution, as flex primitives.
pub(super) struct Operands {
    pub x: FlexTensor,
    pub weight: FlexTensor,
    pub bias: Option<FlexTensor>,
    pub gamma: Option<FlexTensor>,
    pub beta: Option<FlexTensor>,
    pub image_bias: Option<FlexTensor>,
    pub residual: Option<FlexTensor>,
    pub input: ConvInput,
}

/// Sizes: `(batch, cin, h, w, cout, k)`.
fn sizes(x: &FlexTensor, weight: &FlexTensor) -> [usize; 6] {
    let [b, cin, h, w] = x.layout().shape().dims::<4>();
    let [cout, wcin, kh, _] = weight.layout().shape().dims::<4>();
    assert_eq!(
        wcin, cin,
        "conv: {cin} input channels against a weight for {wcin}"
    );
    [b, cin, h, w, cout, kh]
}

/// The statistics of a normalised input, if any.
fn input_stats(o: &Operands, xv: &[f32]) -> Option<GroupStats> {
    match o.input {
        ConvInput::Norm {
            groups, epsilon, ..
        } => {
            let (b, c, n) = planes(&o.x);
            Some(group_stats(xv, b, c, n, groups, epsilon))
        }
        _ => None,
    }
}

/// Runs `f` with the kernel's view of the operands (`stats`: the input norm's statistics).
fn with_conv<R>(o: &Operands, stats: Option<&GroupStats>, f: impl FnOnce(&Conv) -> R) -> R {
    let [batch, cin, h, w, cout, k] = sizes(&o.x, &o.weight);
    let xv = Values::flex(&o.x);
    let wv = Values::flex(&o.weight);
    let vals = |t: &Option<FlexTensor>| t.as_ref().map(Values::flex);
    let (bias, gamma, beta) = (vals(&o.bias), vals(&o.gamma), vals(&o.beta));
    let (image_bias, residual) = (vals(&o.image_bias), vals(&o.residual));
    fn slice(v: &Option<Values>) -> Option<&[f32]> {
        v.as_ref().map(|v| v.as_slice())
    }
    let affine = stats.map(|s| s.affine(cin, slice(&gamma), slice(&beta)));
    let input = match (o.input, &affine) {
        (ConvInput::Norm { silu, .. }, Some((scale, shift))) => {
            Input::Affine { scale, shift, silu }
        }
        (ConvInput::Upsample2x, _) => Input::Upsample2x,
        _ => Input::Plain,
    };
    f(&Conv {
        x: xv.as_slice(),
        batch,
        cin,
        h,
        w,
        weight: wv.as_slice(),
        cout,
        k,
        bias: slice(&bias),
        image_bias: slice(&image_bias),
        residual: slice(&residual),
        input,
        weights: Weights::Forward,
    })
}

/// The output and the input norm's statistics.
fn run(o: &Operands) -> (FlexTensor, Option<GroupStats>) {
    let stats = input_stats(o, Values::flex(&o.x).as_slice());
    let y = with_conv(o, stats.as_ref(), |c| {
        let out = conv2d(c);
        let h = if matches!(c.input, Input::Upsample2x) {
            2
        } else {
            1
        };
        flex_tensor(out, [c.batch, c.cout, c.h * h, c.w * h])
    });
    (y, stats)
}

pub(super) fn forward(o: &Operands) -> FlexTensor {
    run(o).0
}

#[derive(Debug)]
struct ConvBackward;

/// What the backward reads; `x` and `weight` are kept only when a gradient needs them.
#[derive(Clone, Debug)]
struct Saved {
    x: Option<FlexTensor>,
    weight: Option<FlexTensor>,
    gamma: Option<FlexTensor>,
    beta: Option<FlexTensor>,
    stats: Option<GroupStats>,
    input: ConvInput,
    x_shape: [usize; 4],
    w_shape: [usize; 4],
}

impl Saved {
    /// Runs `f` with the kernel's view of the forward: the input transform from the saved
    /// statistics, and the kept input and weight (empty where not kept: the gradient that `f`
    /// computes does not read them).
    fn with_conv<R>(&self, f: impl FnOnce(&Conv) -> R) -> R {
        let [batch, cin, h, w] = self.x_shape;
        let [cout, _, k, _] = self.w_shape;
        let xv = self.x.as_ref().map(Values::flex);
        let wv = self.weight.as_ref().map(Values::flex);
        let (g, b) = (
            self.gamma.as_ref().map(Values::flex),
            self.beta.as_ref().map(Values::flex),
        );
        fn slice(v: &Option<Values>) -> Option<&[f32]> {
            v.as_ref().map(|v| v.as_slice())
        }
        let affine = self
            .stats
            .as_ref()
            .map(|s| s.affine(cin, slice(&g), slice(&b)));
        let input = match (self.input, &affine) {
            (ConvInput::Norm { silu, .. }, Some((scale, shift))) => {
                Input::Affine { scale, shift, silu }
            }
            (ConvInput::Upsample2x, _) => Input::Upsample2x,
            _ => Input::Plain,
        };
        f(&Conv {
            x: slice(&xv).unwrap_or(&[]),
            batch,
            cin,
            h,
            w,
            weight: slice(&wv).unwrap_or(&[]),
            cout,
            k,
            bias: None,
            image_bias: None,
            residual: None,
            input,
            weights: Weights::Forward,
        })
    }
}

impl Backward<Flex, 7> for ConvBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 7>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [nx, nw, nb, ng, nbeta, nib, nres] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let s = ops.state;
        let [batch, cin, h, w] = s.x_shape;
        let cout = s.w_shape[0];
        let hw = dy.layout().shape().num_elements() / (batch * cout).max(1);
        if let Some(node) = nres {
            grads.register::<Flex>(node.id, dy.clone());
        }
        let dyv = Values::flex(&dy);
        let dy = dyv.as_slice();
        if nib.is_some() || nb.is_some() {
            let sums = plane_sums(dy, batch * cout, hw);
            if let Some(node) = nb {
                let per_channel: Vec<f32> = (0..cout)
                    .map(|c| (0..batch).map(|b| sums[b * cout + c]).sum())
                    .collect();
                grads.register::<Flex>(node.id, flex_tensor(per_channel, [cout]));
            }
            if let Some(node) = nib {
                grads.register::<Flex>(node.id, flex_tensor(sums, [batch, cout]));
            }
        }
        if let Some(node) = nw {
            let dw = s.with_conv(|c| weight_gradient(c, dy));
            grads.register::<Flex>(node.id, flex_tensor(dw, s.w_shape));
        }
        if nx.is_none() && ng.is_none() && nbeta.is_none() {
            return;
        }
        // The gradient at the transformed input, at the output size.
        let dxin = s.with_conv(|c| {
            let input = match c.input {
                Input::Upsample2x => Input::Upsample2x,
                _ => Input::Plain,
            };
            input_gradient(&Conv { input, ..*c }, dy)
        });
        macro_rules! register {
            ($grads:expr, $node:expr, $grad:expr, $shape:expr) => {
                if let (Some(node), Some(grad)) = ($node, $grad) {
                    $grads.register::<Flex>(node.id, flex_tensor(grad, $shape.to_vec()));
                }
            };
        }
        match (s.input, &s.stats) {
            (ConvInput::Norm { silu, .. }, Some(stats)) => {
                let (g, b) = (
                    s.gamma.as_ref().map(Values::flex),
                    s.beta.as_ref().map(Values::flex),
                );
                let x = Values::flex(s.x.as_ref().expect("the input is kept for its norm"));
                let n = group_norm_backward(
                    x.as_slice(),
                    &dxin,
                    (batch, cin, h * w),
                    stats,
                    g.as_ref().map(|v| v.as_slice()),
                    b.as_ref().map(|v| v.as_slice()),
                    silu,
                    (nx.is_some(), ng.is_some() || nbeta.is_some()),
                );
                register!(grads, nx, n.dx, s.x_shape);
                register!(grads, ng, n.dgamma, [cin]);
                register!(grads, nbeta, n.dbeta, [cin]);
            }
            (ConvInput::Upsample2x, _) => {
                let dx = nx
                    .is_some()
                    .then(|| upsample_backward(&dxin, batch * cin, h, w));
                register!(grads, nx, dx, s.x_shape);
            }
            _ => register!(grads, nx, Some(dxin), s.x_shape),
        }
    }
}

/// `optional`: bias, gamma, beta, image bias, residual.
pub(super) fn forward_autodiff<C: CheckpointStrategy>(
    x: AdTensor,
    weight: AdTensor,
    optional: [Option<AdTensor>; 5],
    input: ConvInput,
) -> AdTensor {
    let [bias, gamma, beta, image_bias, residual] = optional;
    let mut inputs = Inputs::<C>::new();
    let o = Operands {
        x: inputs.add(x),
        weight: inputs.add(weight),
        bias: inputs.add_optional(bias),
        gamma: inputs.add_optional(gamma),
        beta: inputs.add_optional(beta),
        image_bias: inputs.add_optional(image_bias),
        residual: inputs.add_optional(residual),
        input,
    };
    let [tx, tw, _, tg, tb, _, _] = inputs.tracked::<7>();
    match ConvBackward
        .prepare::<C>(inputs.guards())
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (y, stats) = run(&o);
            let through_input = tx || tg || tb;
            let normed = matches!(input, ConvInput::Norm { .. });
            let saved = Saved {
                x: (tw || (normed && through_input)).then(|| o.x.clone()),
                weight: through_input.then(|| o.weight.clone()),
                gamma: o.gamma.clone(),
                beta: o.beta.clone(),
                stats,
                input,
                x_shape: o.x.layout().shape().dims::<4>(),
                w_shape: o.weight.layout().shape().dims::<4>(),
            };
            prep.finish(saved, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(&o)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::tests::{Operands, check_gradients};
    use crate::layers::conv2d as conv_module;
    use burn::module::{Param, ParamId};

    /// Operands: 0 x, 1 weight, 2 bias, 3 gamma, 4 beta, 5 image bias, 6 residual.
    struct Case {
        b: usize,
        cin: usize,
        cout: usize,
        h: usize,
        w: usize,
        k: usize,
        pre: u8,
    }

    impl Case {
        fn out(&self) -> [usize; 4] {
            let s = if self.pre == 2 { 2 } else { 1 };
            [self.b, self.cout, self.h * s, self.w * s]
        }

        fn sizes(&self) -> Vec<usize> {
            let [b, cout, oh, ow] = self.out();
            vec![
                b * self.cin * self.h * self.w,
                cout * self.cin * self.k * self.k,
                cout,
                self.cin,
                self.cin,
                b * cout,
                b * cout * oh * ow,
            ]
        }

        fn module(&self, t: &Operands) -> (Conv2d, GroupNorm) {
            let device = Device::flex();
            let mut conv = conv_module(self.cin, self.cout, self.k, 1, (self.k - 1) / 2, &device);
            conv.weight = Param::initialized(
                ParamId::new(),
                t.get(1, [self.cout, self.cin, self.k, self.k]),
            );
            conv.bias = Some(Param::initialized(ParamId::new(), t.get(2, [self.cout])));
            let mut norm = burn::nn::GroupNormConfig::new(2, self.cin).init(&device);
            if self.pre == 1 {
                norm.gamma = Some(Param::initialized(ParamId::new(), t.get(3, [self.cin])));
                norm.beta = Some(Param::initialized(ParamId::new(), t.get(4, [self.cin])));
            }
            (conv, norm)
        }

        fn x(&self, t: &Operands) -> Tensor<4> {
            t.get(0, [self.b, self.cin, self.h, self.w])
        }

        fn extras(&self, t: &Operands) -> (Option<Tensor<2>>, Option<Tensor<4>>) {
            if self.pre == 2 {
                return (None, None);
            }
            (
                Some(t.get(5, [self.b, self.cout])),
                Some(t.get(6, self.out())),
            )
        }

        fn fused(&self, t: &Operands) -> Tensor<4> {
            let (c, norm) = self.module(t);
            let pre = match self.pre {
                1 => Pre::Norm(&norm, true),
                2 => Pre::Upsample2x,
                _ => Pre::None,
            };
            let (ib, res) = self.extras(t);
            conv(&c, self.x(t), pre, ib, res)
        }

        fn definition(&self, t: &Operands) -> Tensor<4> {
            let (c, norm) = self.module(t);
            let x = self.x(t);
            let x = match self.pre {
                1 => silu(norm.forward(x)),
                2 => upsample_nearest(x, [2 * self.h, 2 * self.w]),
                _ => x,
            };
            let (ib, res) = self.extras(t);
            let mut y = c.forward(x);
            if let Some(ib) = ib {
                y = y + ib.unsqueeze_dims::<4>(&[2, 3]);
            }
            match res {
                Some(r) => y + r,
                None => y,
            }
        }
    }

    #[test]
    fn fused_conv_matches_burn_forward_and_backward() {
        let cases = [
            Case {
                b: 2,
                cin: 4,
                cout: 6,
                h: 5,
                w: 7,
                k: 3,
                pre: 1,
            },
            Case {
                b: 1,
                cin: 6,
                cout: 5,
                h: 4,
                w: 3,
                k: 3,
                pre: 2,
            },
            Case {
                b: 2,
                cin: 4,
                cout: 4,
                h: 3,
                w: 5,
                k: 1,
                pre: 0,
            },
        ];
        for case in &cases {
            let norm = case.pre == 1;
            let extras = case.pre != 2;
            // Textual inversion (input only), then everything that can train.
            for tracked in [
                [true, false, false, false, false, false, false],
                [true, true, true, norm, norm, extras, extras],
                [false, true, false, norm, false, extras, false],
            ] {
                check_gradients(
                    &case.sizes(),
                    &tracked,
                    |t| case.fused(t),
                    |t| case.definition(t),
                    1e-4,
                );
            }
        }
    }
}
