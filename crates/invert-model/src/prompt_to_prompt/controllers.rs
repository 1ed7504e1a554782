//! The Prompt-to-Prompt attention controllers of diffusers' examples/community/
//! pipeline_prompt2prompt.py (from google/prompt-to-prompt): `AttentionControlEdit` with its
//! `AttentionReplace`, `AttentionRefine` and `AttentionReweight` cross-attention edits, the
//! self-attention injection, the `AttentionStore` it extends and the `LocalBlend` step callback.
//!
//! The batch the U-Net sees is `[uncond x n, cond x n]` with classifier-free guidance (the
//! reference runs both halves in one batch) and the controller touches only the conditional
//! half (`AttentionControl.__call__`: `attn[h // 2:] = self.forward(attn[h // 2:], ...)`);
//! within it prompt 0 is the source and prompts 1.. the edits.

use burn::prelude::*;

use super::attention_store::AttentionStore;
use super::local_blend::LocalBlend;
use crate::attention::{AttentionControl, AttentionPlace};

/// The reference injects the source's self-attention only in layers with at most `16**2`
/// query tokens (`replace_self_attention`).
pub const MAX_SELF_REPLACE_TOKENS: usize = 16 * 16;

/// How an edit's cross-attention is taken from the source's.
#[derive(Debug, Clone)]
pub enum CrossEdit {
    /// `AttentionReplace`: `new = source @ mapper[e]` (`einsum("hpw,bwn->bhpn")`); one
    /// row-major `[77, 77]` mapper per edit.
    Replace { mappers: Vec<Vec<f32>> },
    /// `AttentionRefine`: `new[.., n] = source[.., mapper[e][n]] * alpha + edit * (1 - alpha)`.
    Refine {
        mappers: Vec<Vec<usize>>,
        alphas: Vec<Vec<f32>>,
    },
    /// `AttentionReweight`: the inner edit's result (or the source's maps) times the
    /// equalizer, one row of 77 weights per edit.
    Reweight {
        equalizers: Vec<Vec<f32>>,
        inner: Option<Box<CrossEdit>>,
    },
}

impl CrossEdit {
    /// `replace_cross_attention(attn_base, att_replace)`: `base` `[heads, lq, 77]` (source),
    /// `edits` `[e, heads, lq, 77]`; returns `[e, heads, lq, 77]`.
    fn apply(&self, base: Tensor<3>, edits: Tensor<4>) -> Tensor<4> {
        let [e, heads, lq, k] = edits.dims();
        let device = edits.device();
        match self {
            CrossEdit::Replace { mappers } => {
                let m: Vec<f32> = mappers.iter().flatten().copied().collect();
                let m = Tensor::<3>::from_data(TensorData::new(m, [e, k, k]), &device);
                let base = base.reshape([1, heads * lq, k]).repeat_dim(0, e);
                base.matmul(m).reshape([e, heads, lq, k])
            }
            CrossEdit::Refine { mappers, alphas } => {
                let gathered: Vec<Tensor<4>> = mappers
                    .iter()
                    .map(|m| {
                        let idx: Vec<i64> = m.iter().map(|&i| i as i64).collect();
                        let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [k]), &device);
                        base.clone().select(2, idx).unsqueeze_dim(0)
                    })
                    .collect();
                let a: Vec<f32> = alphas.iter().flatten().copied().collect();
                let a = Tensor::<4>::from_data(TensorData::new(a, [e, 1, 1, k]), &device);
                Tensor::cat(gathered, 0) * a.clone() + edits * (a.neg() + 1.0)
            }
            CrossEdit::Reweight { equalizers, inner } => {
                let base = match inner {
                    Some(inner) => inner.apply(base, edits),
                    None => base.unsqueeze_dim::<4>(0).repeat_dim(0, e),
                };
                let q: Vec<f32> = equalizers.iter().flatten().copied().collect();
                base * Tensor::<4>::from_data(TensorData::new(q, [e, 1, 1, k]), &device)
            }
        }
    }
}

/// `AttentionControlEdit`: the edit of the cross-attention during the first `cross_steps`
/// U-Net calls, the source's self-attention injected during `self_steps`, the store and the
/// optional local blend.
#[derive(Debug)]
pub struct EditController {
    pub cross: CrossEdit,
    /// Prompts in the batch (source plus edits): the reference's `batch_size`.
    pub prompts: usize,
    /// Whether the U-Net batch carries the unconditional half first.
    pub guided: bool,
    /// U-Net calls `[0, end)` with the cross-attention edit: `int(cross_replace *
    /// (num_steps + 1))` (`get_time_words_attention_alpha` / `update_alpha_time_word`).
    pub cross_steps: usize,
    /// U-Net calls `[start, end)` with the source's self-attention: `int(num_steps * s)`.
    pub self_steps: (usize, usize),
    pub local_blend: Option<LocalBlend>,
    pub store: AttentionStore,
    /// The current U-Net call (`cur_step`).
    pub step: usize,
}

impl EditController {
    /// Step ranges from fractions as the reference computes them for `num_steps` inference
    /// steps (a scheduler may call the U-Net more often, e.g. PNDM's `num_steps + 1`).
    pub fn step_ranges(num_steps: usize, cross: f64, self_: f64) -> (usize, (usize, usize)) {
        (
            (cross * (num_steps + 1) as f64) as usize,
            (0, (num_steps as f64 * self_) as usize),
        )
    }

    fn self_active(&self) -> bool {
        self.self_steps.0 <= self.step && self.step < self.self_steps.1
    }

    /// After each U-Net call (`between_steps`).
    pub fn end_step(&mut self) {
        self.step += 1;
        self.store.end_step();
    }

    /// After each sampler step (`step_callback`): the local blend, if any.
    pub fn step_callback(&self, latents: Tensor<4>) -> Tensor<4> {
        match &self.local_blend {
            Some(lb) => lb.apply(latents, &self.store),
            None => latents,
        }
    }

    /// `AttentionControlEdit.forward` on the conditional maps `[prompts, heads, lq, lk]`.
    fn edit(&mut self, cond: Tensor<4>, at: &AttentionPlace) -> Tensor<4> {
        let [n, heads, lq, lk] = cond.dims();
        let replace_self = !at.is_cross && self.self_active() && lq <= MAX_SELF_REPLACE_TOKENS;
        let replace_cross = at.is_cross && self.step < self.cross_steps;
        let edited = if n > 1 && (replace_self || replace_cross) {
            let base = cond.clone().slice(s![0..1, .., .., ..]);
            let rest = cond.slice(s![1..n, .., .., ..]);
            let new = if at.is_cross {
                self.cross
                    .apply(base.clone().reshape([heads, lq, lk]), rest)
            } else {
                base.clone().repeat_dim(0, n - 1)
            };
            Tensor::cat(vec![base, new], 0)
        } else {
            cond
        };
        // The reference stores `attn` before editing it in place, so the store sees the edit.
        self.store.add(edited.clone(), at);
        edited
    }
}

impl AttentionControl for EditController {
    /// Cross-attention is always wanted (edited or stored); self-attention only while it is
    /// injected and small enough, otherwise the fused path runs.
    fn wants(&self, at: &AttentionPlace) -> bool {
        at.is_cross || (self.self_active() && at.height * at.width <= MAX_SELF_REPLACE_TOKENS)
    }

    fn control(&mut self, probs: Tensor<4>, at: &AttentionPlace) -> Tensor<4> {
        let b = probs.dims()[0];
        let halves = if self.guided { 2 } else { 1 };
        debug_assert_eq!(b, halves * self.prompts, "batch: [uncond x n,] cond x n");
        if !self.guided {
            return self.edit(probs, at);
        }
        let uncond = probs.clone().slice(s![0..b / 2, .., .., ..]);
        let cond = self.edit(probs.slice(s![b / 2..b, .., .., ..]), at);
        Tensor::cat(vec![uncond, cond], 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::UNetPlace;
    use burn::tensor::Distribution;

    fn at(is_cross: bool, side: usize) -> AttentionPlace {
        AttentionPlace {
            place: UNetPlace::Up,
            is_cross,
            height: side,
            width: side,
        }
    }

    fn controller(cross: CrossEdit, cross_steps: usize, self_end: usize) -> EditController {
        EditController {
            cross,
            prompts: 2,
            guided: true,
            cross_steps,
            self_steps: (0, self_end),
            local_blend: None,
            store: AttentionStore::default(),
            step: 0,
        }
    }

    fn diff(a: Tensor<4>, b: Tensor<4>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    fn probs(b: usize, lq: usize, k: usize) -> Tensor<4> {
        let device = Device::flex();
        burn::tensor::activation::softmax(
            Tensor::<4>::random([b, 2, lq, k], Distribution::Normal(0.0, 1.0), &device),
            3,
        )
    }

    #[test]
    fn step_ranges_follow_the_reference() {
        // 50 steps, cross 0.8, self 0.4: int(0.8 * 51) = 40, int(50 * 0.4) = 20.
        assert_eq!(EditController::step_ranges(50, 0.8, 0.4), (40, (0, 20)));
        assert_eq!(EditController::step_ranges(10, 1.0, 0.0), (11, (0, 0)));
    }

    #[test]
    fn identity_replace_copies_the_source_maps_into_the_conditional_edit_only() {
        let k = 5;
        let eye: Vec<f32> = (0..k * k)
            .map(|i| if i % (k + 1) == 0 { 1.0 } else { 0.0 })
            .collect();
        let mut c = controller(CrossEdit::Replace { mappers: vec![eye] }, 1, 0);
        let p = probs(4, 3, k);
        let out = c.control(p.clone(), &at(true, 1));
        let s = |t: &Tensor<4>, i: usize| t.clone().slice(s![i..i + 1, .., .., ..]);
        assert_eq!(diff(s(&out, 0), s(&p, 0)), 0.0, "uncond untouched");
        assert_eq!(diff(s(&out, 1), s(&p, 1)), 0.0, "uncond untouched");
        assert_eq!(diff(s(&out, 2), s(&p, 2)), 0.0, "source untouched");
        assert!(
            diff(s(&out, 3), s(&p, 2)) < 1e-6,
            "edit takes the source's maps"
        );
        // Past the cross steps nothing changes.
        c.end_step();
        assert_eq!(diff(c.control(p.clone(), &at(true, 1)), p), 0.0);
    }

    #[test]
    fn refine_gathers_the_source_and_keeps_inserted_tokens() {
        let k = 4;
        // Edit token 2 is new (alpha 0); tokens 0, 1, 3 come from source 0, 1, 2.
        let cross = CrossEdit::Refine {
            mappers: vec![vec![0, 1, 3, 2]],
            alphas: vec![vec![1.0, 1.0, 0.0, 1.0]],
        };
        let mut c = controller(cross, 1, 0);
        let p = probs(4, 3, k);
        let out = c.control(p.clone(), &at(true, 1));
        let col =
            |t: &Tensor<4>, b: usize, j: usize| t.clone().slice(s![b..b + 1, .., .., j..j + 1]);
        assert!(diff(col(&out, 3, 3), col(&p, 2, 2)) < 1e-6);
        assert!(diff(col(&out, 3, 1), col(&p, 2, 1)) < 1e-6);
        assert!(
            diff(col(&out, 3, 2), col(&p, 3, 2)) < 1e-6,
            "inserted token kept"
        );
    }

    #[test]
    fn reweight_scales_the_chosen_tokens_of_the_source_maps() {
        let k = 3;
        let cross = CrossEdit::Reweight {
            equalizers: vec![vec![1.0, 2.0, 1.0]],
            inner: None,
        };
        let mut c = controller(cross, 1, 0);
        let p = probs(4, 2, k);
        let out = c.control(p.clone(), &at(true, 1));
        let col =
            |t: &Tensor<4>, b: usize, j: usize| t.clone().slice(s![b..b + 1, .., .., j..j + 1]);
        assert!(diff(col(&out, 3, 1), col(&p, 2, 1).mul_scalar(2.0)) < 1e-6);
        assert!(diff(col(&out, 3, 0), col(&p, 2, 0)) < 1e-6);
    }

    #[test]
    fn self_attention_is_injected_only_while_active_and_small() {
        let eye = vec![1.0];
        let mut c = controller(CrossEdit::Replace { mappers: vec![eye] }, 0, 1);
        assert!(c.wants(&at(false, 16)));
        assert!(!c.wants(&at(false, 17)), "over 16x16 tokens: fused path");
        let p = probs(4, 4, 4);
        let out = c.control(p.clone(), &at(false, 2));
        let s = |t: &Tensor<4>, i: usize| t.clone().slice(s![i..i + 1, .., .., ..]);
        assert!(diff(s(&out, 3), s(&p, 2)) < 1e-6);
        c.end_step();
        assert!(!c.wants(&at(false, 2)));
        assert!(c.wants(&at(true, 64)), "cross-attention is always stored");
    }
}
