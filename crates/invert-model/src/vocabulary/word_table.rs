//! One text encoder's new words: its tokenizer with the added tokens, and one vector per token
//! kept outside the frozen token table (see `CLIPTextModel::embed`).

use burn::prelude::*;
use burn::tensor::{DType, Distribution};

use super::{Init, VocabularyError};
use crate::tokenizer::ClipTokenizer;

/// The tokenizer and the vectors of every new word, in id order.
#[derive(Debug, Clone)]
pub struct WordTable {
    pub tokenizer: ClipTokenizer,
    width: usize,
    /// Row-major `[n_new, width]`, row `i` belonging to id `vocab_size + i`.
    extra: Vec<f32>,
}

impl WordTable {
    pub fn new(tokenizer: ClipTokenizer, width: usize) -> Self {
        Self {
            tokenizer,
            width,
            extra: Vec::new(),
        }
    }

    pub fn width(&self) -> usize {
        self.width
    }

    /// Number of new-word vectors.
    pub fn len(&self) -> usize {
        self.extra.len() / self.width.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.extra.is_empty()
    }

    /// Adds `token` with `vectors` (row-major, a multiple of the width) and returns its ids.
    pub fn add_word(&mut self, token: &str, vectors: &[f32]) -> Result<Vec<u32>, VocabularyError> {
        if vectors.is_empty() || !vectors.len().is_multiple_of(self.width) {
            return Err(VocabularyError::Invalid {
                token: token.into(),
                reason: format!(
                    "{} values are not whole vectors of width {}",
                    vectors.len(),
                    self.width
                ),
            });
        }
        let ids = self
            .tokenizer
            .add_concept(token, vectors.len() / self.width)?;
        let first = (ids[0] as usize).checked_sub(self.tokenizer.vocab_size());
        debug_assert_eq!(
            first,
            Some(self.len()),
            "new ids follow the vocabulary in order"
        );
        self.extra.extend_from_slice(vectors);
        Ok(ids)
    }

    /// Replaces the vectors of the word whose first id is `first_id` (a training step's result).
    pub fn set_vectors(&mut self, first_id: u32, vectors: &[f32]) {
        let start = (first_id as usize - self.tokenizer.vocab_size()) * self.width;
        self.extra[start..start + vectors.len()].copy_from_slice(vectors);
    }

    /// The vectors of the word whose first id is `first_id`, `n` of them.
    pub fn vectors(&self, first_id: u32, n: usize) -> &[f32] {
        let start = (first_id as usize - self.tokenizer.vocab_size()) * self.width;
        &self.extra[start..start + n * self.width]
    }

    /// All new-word vectors as a `[n_new, width]` tensor, `None` when there are none.
    pub fn extra(&self, device: &Device) -> Option<Tensor<2>> {
        (!self.extra.is_empty()).then(|| {
            Tensor::from_data(
                TensorData::new(self.extra.clone(), [self.len(), self.width]),
                device,
            )
        })
    }

    /// Token ids `[b, 77]` for `prompts`, with the text of any truncated prompt tail.
    pub fn encode(
        &self,
        prompts: &[String],
        device: &Device,
    ) -> Result<(Tensor<2, Int>, Vec<String>), VocabularyError> {
        let mut ids = Vec::new();
        let mut dropped = Vec::new();
        let mut len = 0;
        for p in prompts {
            let e = self.tokenizer.encode(p)?;
            len = e.ids.len();
            ids.extend(e.ids.iter().map(|&i| i as i64));
            dropped.extend(e.truncated);
        }
        Ok((
            Tensor::from_data(TensorData::new(ids, [prompts.len(), len]), device),
            dropped,
        ))
    }

    /// `n` starting vectors for a new word, from rows of the frozen token table `table`
    /// (`[vocab, width]`).
    pub fn init_vectors(
        &self,
        table: &Tensor<2>,
        init: &Init,
        n: usize,
    ) -> Result<Vec<f32>, VocabularyError> {
        // Learned vectors are f32 whatever the model's precision.
        let table = &table.clone().cast(DType::F32);
        let [vocab, width] = table.dims();
        match init {
            Init::Text(text) => {
                let ids = self.tokenizer.word_ids(text)?;
                if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
                    return Err(VocabularyError::Invalid {
                        token: text.clone(),
                        reason: format!(
                            "initialiser token id {bad} is itself a new word; use a vocabulary word"
                        ),
                    });
                }
                let picks: Vec<i64> = (0..n).map(|i| ids[i % ids.len()] as i64).collect();
                let index =
                    Tensor::<1, Int>::from_data(TensorData::new(picks, [n]), &table.device());
                Ok(table
                    .clone()
                    .select(0, index)
                    .into_data()
                    .try_to_vec::<f32>()
                    .expect("f32 table"))
            }
            Init::Random(seed) => {
                let std = table.clone().var(0).sqrt().reshape([1, width]);
                let device = table.device();
                device.seed(*seed);
                let noise =
                    Tensor::<2>::random([n, width], Distribution::Normal(0.0, 1.0), &device);
                let _ = vocab;
                Ok((noise * std).into_data().try_to_vec::<f32>().expect("f32"))
            }
        }
    }

    /// The `k` vocabulary words closest to `vector` by cosine similarity in `table`.
    pub fn nearest_words(&self, table: &Tensor<2>, vector: &[f32], k: usize) -> Vec<(String, f32)> {
        let table = &table.clone().cast(DType::F32);
        let [vocab, width] = table.dims();
        let v = Tensor::<2>::from_data(
            TensorData::new(vector.to_vec(), [width, 1]),
            &table.device(),
        );
        let norms = table
            .clone()
            .powf_scalar(2.0)
            .sum_dim(1)
            .sqrt()
            .clamp_min(1e-12);
        let vnorm = v
            .clone()
            .powf_scalar(2.0)
            .sum()
            .sqrt()
            .clamp_min(1e-12)
            .into_scalar::<f32>();
        let cos = (table.clone().matmul(v) / norms)
            .div_scalar(vnorm)
            .reshape([vocab]);
        let values = cos.into_data().try_to_vec::<f32>().expect("f32");
        let mut order: Vec<usize> = (0..vocab).collect();
        order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
        order
            .into_iter()
            .filter_map(|i| self.tokenizer.decode_id(i as u32).map(|w| (w, values[i])))
            // Byte-level pieces of multi-byte characters decode to U+FFFD alone: not words.
            .filter(|(w, _)| {
                !w.trim().is_empty() && !w.contains('\u{FFFD}') && !w.chars().any(char::is_control)
            })
            .take(k)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_get_consecutive_ids_and_rows() {
        let device = Device::flex();
        let mut v = WordTable::new(ClipTokenizer::bundled(), 2);
        let a = v.add_word("<a>", &[1.0, 2.0]).unwrap();
        let b = v.add_word("<b>", &[3.0, 4.0, 5.0, 6.0]).unwrap();
        assert_eq!(a, vec![49408]);
        assert_eq!(b, vec![49409, 49410]);
        assert_eq!(v.len(), 3);
        assert_eq!(v.vectors(49409, 2), &[3.0, 4.0, 5.0, 6.0]);
        let extra = v.extra(&device).unwrap();
        assert_eq!(extra.dims(), [3, 2]);
        // A prompt with both words: the multi-vector one expands to two positions.
        let (ids, dropped) = v
            .encode(&["a photo of <b> and <a>".into()], &device)
            .unwrap();
        let ids = ids
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .unwrap();
        assert_eq!(
            &ids[..8],
            &[49406, 320, 1125, 539, 49409, 49410, 537, 49408]
        );
        assert!(dropped.is_empty());
        // Taken and existing words are refused.
        assert!(v.add_word("<a>", &[0.0, 0.0]).is_err());
        assert!(v.add_word("cat", &[0.0, 0.0]).is_err());
        assert!(v.add_word("<c>", &[0.0, 0.0, 0.0]).is_err());
    }

    #[test]
    fn init_from_phrase_takes_its_tokens_in_turn() {
        let device = Device::flex();
        let v = WordTable::new(ClipTokenizer::bundled(), 2);
        // A table where row i is [i, -i].
        let rows: Vec<f32> = (0..49408).flat_map(|i| [i as f32, -(i as f32)]).collect();
        let table = Tensor::<2>::from_data(TensorData::new(rows, [49408, 2]), &device);
        let ids = v.tokenizer.word_ids("red toy").unwrap();
        let got = v
            .init_vectors(&table, &Init::Text("red toy".into()), 3)
            .unwrap();
        let want: Vec<f32> = [ids[0], ids[1], ids[0]]
            .iter()
            .flat_map(|&i| [i as f32, -(i as f32)])
            .collect();
        assert_eq!(got, want);
        let nearest = v.nearest_words(&table, &[1.0, -1.0], 1);
        assert_eq!(nearest.len(), 1);
        let r = v.init_vectors(&table, &Init::Random(3), 2).unwrap();
        assert_eq!(r.len(), 4);
        assert_eq!(
            r,
            v.init_vectors(&table, &Init::Random(3), 2).unwrap(),
            "seeded"
        );
    }
}
