//! Fused operations with a forward and a backward of their own, behind one function each that
//! the model code calls.
//!
//! Each operation is a burn backend extension ([`FusedOps`], `#[backend_extension]`): on plain
//! flex f32 tensors it runs the CPU kernels of [`crate::cpu`]; on autodiff flex tensors it runs
//! the same forward kernel and registers a backward step whose gradients come from the CPU
//! backward kernels (flash-attention backward from the saved log-sum-exp, the input gradient of a
//! convolution as a convolution with the flipped kernel, and so on). A backward computes only the
//! gradients of the inputs that are tracked: with frozen weights (textual inversion) no weight
//! gradient and no weight-sized buffer is made; when weights train (`invert pretrain`) they are.
//!
//! Everything else (wgpu, half precision, `INVERT_NO_FUSED=1`) takes burn's own operations,
//! composed to the same definition: [`available`] decides, inside each public function.

pub mod attention;
mod autodiff;
pub mod conv;
mod flex;
pub mod geglu;
pub mod group_norm;
pub mod layer_norm;
pub mod linear;

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, ExtensionType, backend_extension};
use burn::prelude::*;
use burn::tensor::DType;

pub use conv::ConvInput;

/// The fused operations (see the module documentation). Arguments are burn primitives; the
/// public functions of the submodules wrap them for [`Tensor`]s.
#[backend_extension(Flex, Autodiff)]
pub trait FusedOps: Backend {
    /// Multi-head `softmax(q k^T / sqrt(d)) v` on the token layout `[b, l, heads * d]`.
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        heads: usize,
        causal: bool,
    ) -> FloatTensor<Self>;

    /// `x w + b`, `x` `[.., k]`, `w` `[k, n]` (burn's `Linear` layout), `b` `[n]`.
    fn fused_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        #[extension_type] bias: Optional<Self>,
    ) -> FloatTensor<Self>;

    /// `conv(input(x)) + bias + image_bias + residual` for a stride-1 "same" k x k convolution
    /// (`k` 1 or 3): see [`conv`].
    #[allow(clippy::too_many_arguments)]
    fn fused_conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        #[extension_type] bias: Optional<Self>,
        #[extension_type] gamma: Optional<Self>,
        #[extension_type] beta: Optional<Self>,
        #[extension_type] image_bias: Optional<Self>,
        #[extension_type] residual: Optional<Self>,
        input: ConvInput,
    ) -> FloatTensor<Self>;

    /// GroupNorm of `x` `[b, c, ..]`, then SiLU if `silu`.
    fn fused_group_norm(
        x: FloatTensor<Self>,
        #[extension_type] gamma: Optional<Self>,
        #[extension_type] beta: Optional<Self>,
        groups: usize,
        epsilon: f64,
        silu: bool,
    ) -> FloatTensor<Self>;

    /// LayerNorm over the last dimension.
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        #[extension_type] beta: Optional<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;

    /// GEGLU: `x[.., :n] * gelu(x[.., n:])` for `x` `[.., 2n]` (exact GELU).
    fn fused_geglu(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// Whether tensors on `device` with `dtype` take the fused operations: flex f32, with or
/// without autodiff, unless `INVERT_NO_FUSED` is set.
pub fn available(device: &Device, dtype: DType) -> bool {
    crate::cpu::fused_path(device, dtype)
}

/// An optional tensor operand (a bias, a norm's affine parameters). burn 0.22's extension
/// macro passes `Option<FloatTensor>` arguments through unconverted, so they travel as this
/// enum, which it maps across the dispatch boundary.
#[derive(ExtensionType)]
pub enum Optional<B: Backend> {
    Present(FloatTensor<B>),
    Absent,
}

impl<B: Backend> Optional<B> {
    pub fn into_option(self) -> Option<FloatTensor<B>> {
        match self {
            Optional::Present(t) => Some(t),
            Optional::Absent => None,
        }
    }
}

/// The dispatch operand of an optional [`Tensor`].
fn dispatch<const D: usize>(t: Option<Tensor<D>>) -> Optional<Dispatch> {
    match t {
        Some(t) => Optional::Present(t.into_dispatch()),
        None => Optional::Absent,
    }
}

/// The harness every fused operation's tests use: forward and gradients against burn's own
/// autodiff of the operation's definition, and a finite-difference check of the gradients.
#[cfg(test)]
pub(crate) mod tests {
    use std::cell::RefCell;

    use burn::prelude::*;
    use burn::tensor::Gradients;

    pub fn assert_close<const D: usize>(a: Tensor<D>, b: Tensor<D>, tol: f32) {
        let scale = b.clone().abs().max().into_scalar::<f32>().max(1.0);
        let err = (a - b).abs().max().into_scalar::<f32>();
        assert!(
            err <= tol * scale,
            "max |diff| {err} (scale {scale}, tol {tol})"
        );
    }

    type GradOf = Box<dyn Fn(&Gradients) -> Option<Vec<f32>>>;

    /// The inputs of one check: values drawn once, handed out as tensors of whatever shape the
    /// closure asks for, tracked (requiring a gradient) or not.
    pub struct Operands {
        values: Vec<Vec<f32>>,
        tracked: Vec<bool>,
        device: Device,
        leaves: RefCell<Vec<(usize, GradOf)>>,
    }

    impl Operands {
        /// Input `i` as a `shape` tensor (a fresh leaf on autodiff devices).
        pub fn get<const D: usize>(&self, i: usize, shape: [usize; D]) -> Tensor<D> {
            let t = Tensor::<D>::from_data(
                TensorData::new(self.values[i].clone(), shape),
                &self.device,
            );
            if !self.device.is_autodiff() || !self.tracked[i] {
                return t;
            }
            let t = t.require_grad();
            let leaf = t.clone();
            self.leaves.borrow_mut().push((
                i,
                Box::new(move |g| {
                    leaf.grad(g)
                        .map(|g| g.into_data().try_to_vec::<f32>().unwrap())
                }),
            ));
            t
        }
    }

    fn draw(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// `sum(f(inputs) * weights)` and, on autodiff devices, the gradient of each tracked input.
    fn run<const D: usize>(
        values: &[Vec<f32>],
        tracked: &[bool],
        device: Device,
        f: &dyn Fn(&Operands) -> Tensor<D>,
    ) -> (Tensor<D>, f64, Vec<Option<Vec<f32>>>) {
        let ops = Operands {
            values: values.to_vec(),
            tracked: tracked.to_vec(),
            device: device.clone(),
            leaves: RefCell::new(Vec::new()),
        };
        let out = f(&ops);
        let weights = Tensor::<D>::from_data(
            TensorData::new(draw(out.shape().num_elements(), 99), out.shape()),
            &device,
        );
        let loss = (out.clone() * weights).sum();
        let value = loss.clone().into_scalar::<f32>() as f64;
        let mut grads = vec![None; values.len()];
        if device.is_autodiff() {
            let g = loss.backward();
            for (i, grad_of) in ops.leaves.borrow().iter() {
                grads[*i] = grad_of(&g);
            }
        }
        (out, value, grads)
    }

    /// Checks `fused` against `definition` (burn operations): forward on plain flex, gradients
    /// of every tracked input on autodiff flex (untracked inputs get none), both within `tol`
    /// relative to the largest value; then the fused gradients against central finite
    /// differences at a few elements of each tracked input.
    pub fn check_gradients<const D: usize>(
        sizes: &[usize],
        tracked: &[bool],
        fused: impl Fn(&Operands) -> Tensor<D>,
        definition: impl Fn(&Operands) -> Tensor<D>,
        tol: f32,
    ) {
        let values: Vec<Vec<f32>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| draw(n, i as u64 + 1))
            .collect();
        let plain = Device::flex();
        let (got, _, _) = run(&values, tracked, plain.clone(), &fused);
        let (want, _, _) = run(&values, tracked, plain.clone(), &definition);
        assert_close(got, want, tol);

        let ad = Device::flex().autodiff();
        let (_, _, got) = run(&values, tracked, ad.clone(), &fused);
        let (_, _, want) = run(&values, tracked, ad, &definition);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.is_some(), tracked[i], "input {i}: gradient present");
            let (Some(g), Some(w)) = (g, w) else { continue };
            let scale = w.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            let err = g
                .iter()
                .zip(w)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                err <= tol * scale,
                "input {i}: gradient |diff| {err} (scale {scale})"
            );
            // Central differences in f32 at three elements.
            let eps = 1e-2f32;
            for pick in [0, g.len() / 2, g.len() - 1] {
                let at = |delta: f32| {
                    let mut v = values.clone();
                    v[i][pick] += delta;
                    run(&v, tracked, plain.clone(), &fused).1
                };
                let fd = (at(eps) - at(-eps)) / (2.0 * eps as f64);
                let diff = (fd - g[pick] as f64).abs();
                assert!(
                    diff <= 2e-2 * (1.0 + fd.abs()),
                    "input {i}[{pick}]: finite difference {fd} against {}",
                    g[pick]
                );
            }
        }
    }
}
