//! Token bookkeeping of Prompt-to-Prompt: which tokens a word of a prompt became, the
//! replacement mapper (word swap), the refinement mapper (global alignment of the token ids) and
//! the reweighting equalizer. Ported from google/prompt-to-prompt's `seq_aligner.py` /
//! `ptp_utils.py` as diffusers' examples/community/pipeline_prompt2prompt.py copies them
//! (`get_word_inds`, `get_replacement_mapper_`, `global_align`, `get_aligned_sequences`,
//! `get_mapper`, `get_equalizer`).
//!
//! One deliberate difference: the reference finds a word's tokens by re-tokenizing the prompt
//! without expanding learned words, so a multi-vector learned word (one word, several ids in the
//! text encoder's input) shifts every later index. Here each word is tokenized as the encoder
//! input has it (learned words expanded), so indices and alignment are those of the ids the
//! U-Net is actually conditioned on.

use super::EditError;
use crate::tokenizer::{ClipTokenizer, TokenizerError};

/// A prompt as the text encoder sees it, with the word each token came from.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptTokens {
    /// The prompt's space-separated words (the reference's `text.split(" ")`).
    pub words: Vec<String>,
    /// The encoder input: BOS, the tokens, EOS, padding (77 ids).
    pub ids: Vec<u32>,
    /// For each of `ids`, the index in `words` it came from (`None` for BOS/EOS/padding).
    pub word_of: Vec<Option<usize>>,
    /// BOS, the prompt's tokens and EOS, unpadded (the reference's `tokenizer.encode(text)`).
    pub len: usize,
}

impl PromptTokens {
    /// Tokenizes `prompt` word by word. CLIP's pre-tokenizer never joins text across spaces, so
    /// the words' tokens concatenated are the prompt's tokens; that is checked.
    pub fn new(tokenizer: &ClipTokenizer, prompt: &str) -> Result<Self, EditError> {
        let encoding = tokenizer.encode(prompt)?;
        if encoding.truncated.is_some() {
            return Err(EditError::TooLong {
                prompt: prompt.to_owned(),
                tokens: encoding.token_count,
                max: tokenizer.max_length() - 2,
            });
        }
        let words: Vec<String> = prompt.split(' ').map(str::to_owned).collect();
        let mut word_of = vec![None];
        let mut ids = vec![tokenizer.bos_id()];
        for (w, word) in words.iter().enumerate() {
            // An empty word (two spaces) or one the clean-up removes has no tokens.
            let word_ids = match tokenizer.word_ids(word) {
                Ok(ids) => ids,
                Err(TokenizerError::EmptyText { .. }) => Vec::new(),
                Err(e) => return Err(e.into()),
            };
            word_of.extend(std::iter::repeat_n(Some(w), word_ids.len()));
            ids.extend(word_ids);
        }
        ids.push(tokenizer.eos_id());
        let len = ids.len();
        if ids[..] != encoding.ids[..len] {
            return Err(EditError::WordSplit {
                prompt: prompt.to_owned(),
            });
        }
        word_of.resize(encoding.ids.len(), None);
        Ok(Self {
            words,
            ids: encoding.ids,
            word_of,
            len,
        })
    }

    /// The token positions of every occurrence of `word` (`get_word_inds` with a string: exact
    /// match against the space-separated words).
    pub fn word_inds(&self, word: &str) -> Vec<usize> {
        self.positions(|w| self.words[w] == word)
    }

    /// The token positions of the word at index `w` (`get_word_inds` with an int).
    pub fn word_index_inds(&self, w: usize) -> Vec<usize> {
        self.positions(|x| x == w)
    }

    fn positions(&self, pick: impl Fn(usize) -> bool) -> Vec<usize> {
        (0..self.word_of.len())
            .filter(|&i| self.word_of[i].is_some_and(&pick))
            .collect()
    }
}

/// Word swap (`get_replacement_mapper_`): a `[77, 77]` row-major matrix `M` with the edit's
/// cross-attention `new[.., n] = sum_w source[.., w] * M[w][n]`. The prompts must have the same
/// number of words; a swapped word with a different token count spreads its source tokens
/// evenly over the edit's tokens (`ratio`), and the positions after it shift as the reference's
/// loop shifts them.
pub fn replacement_mapper(x: &PromptTokens, y: &PromptTokens) -> Result<Vec<f32>, EditError> {
    if x.words.len() != y.words.len() {
        return Err(EditError::ReplaceWordCount {
            source_words: x.words.len(),
            edit: y.words.join(" "),
            edit_words: y.words.len(),
        });
    }
    let max_len = x.ids.len();
    let replaced: Vec<usize> = (0..y.words.len())
        .filter(|&i| y.words[i] != x.words[i])
        .collect();
    let source: Vec<Vec<usize>> = replaced.iter().map(|&i| x.word_index_inds(i)).collect();
    let target: Vec<Vec<usize>> = replaced.iter().map(|&i| y.word_index_inds(i)).collect();
    let mut m = vec![0f32; max_len * max_len];
    let (mut i, mut j, mut cur) = (0, 0, 0);
    while i < max_len && j < max_len {
        // A replaced word without tokens (one the clean-up removes) never matches a position;
        // skip it rather than leave the later words unmatched.
        while cur < source.len() && source[cur].is_empty() {
            cur += 1;
        }
        if cur < source.len() && source[cur].first() == Some(&i) {
            let (s, t) = (&source[cur], &target[cur]);
            if s.len() == t.len() {
                for (&a, &b) in s.iter().zip(t) {
                    m[a * max_len + b] = 1.0;
                }
            } else {
                let ratio = 1.0 / t.len() as f32;
                for &a in s {
                    for &b in t {
                        m[a * max_len + b] = ratio;
                    }
                }
            }
            cur += 1;
            i += s.len();
            j += t.len();
        } else if cur < source.len() {
            m[i * max_len + j] = 1.0;
            i += 1;
            j += 1;
        } else {
            // The reference writes `mapper[j, j]` here, not `[i, j]`: kept as it is.
            m[j * max_len + j] = 1.0;
            i += 1;
            j += 1;
        }
    }
    Ok(m)
}

/// `global_align`'s traceback codes.
const LEFT: u8 = 1;
const UP: u8 = 2;
const DIAG: u8 = 3;
const START: u8 = 4;

/// Needleman-Wunsch as the reference scores it (`ScoreParams(gap=0, match=1, mismatch=-1)`),
/// ties broken left, then up, then diagonal; returns for each `y` position the `x` position it
/// aligns with, or `None` for an insertion (`get_aligned_sequences`' `mapper_y_to_x`).
pub fn align(x: &[u32], y: &[u32]) -> Vec<Option<usize>> {
    let (gap, matched, mismatch) = (0i32, 1i32, -1i32);
    let (nx, ny) = (x.len(), y.len());
    let w = ny + 1;
    let mut score = vec![0i32; (nx + 1) * w];
    let mut trace = vec![0u8; (nx + 1) * w];
    for j in 1..=ny {
        score[j] = j as i32 * gap;
        trace[j] = LEFT;
    }
    for i in 1..=nx {
        score[i * w] = i as i32 * gap;
        trace[i * w] = UP;
    }
    trace[0] = START;
    for i in 1..=nx {
        for j in 1..=ny {
            let left = score[i * w + j - 1] + gap;
            let up = score[(i - 1) * w + j] + gap;
            let pair = if x[i - 1] == y[j - 1] {
                matched
            } else {
                mismatch
            };
            let diag = score[(i - 1) * w + j - 1] + pair;
            let best = left.max(up).max(diag);
            score[i * w + j] = best;
            trace[i * w + j] = if best == left {
                LEFT
            } else if best == up {
                UP
            } else {
                DIAG
            };
        }
    }
    let (mut i, mut j) = (nx, ny);
    let mut y_to_x = Vec::with_capacity(ny);
    while i > 0 || j > 0 {
        match trace[i * w + j] {
            DIAG => {
                i -= 1;
                j -= 1;
                y_to_x.push(Some(i));
            }
            LEFT => {
                j -= 1;
                y_to_x.push(None);
            }
            UP => i -= 1,
            _ => break,
        }
    }
    y_to_x.reverse();
    y_to_x
}

/// Refinement (`get_mapper`): for each of the edit's 77 positions, the source position whose
/// cross-attention it takes (`mapper`) and whether it takes it (`alphas`, 0 for inserted
/// tokens), from the alignment of the unpadded token ids; positions past the edit's tokens map
/// onward from there (`len(y_seq) + arange(...)`).
pub fn refinement_mapper(x: &PromptTokens, y: &PromptTokens) -> (Vec<usize>, Vec<f32>) {
    let max_len = y.ids.len();
    let aligned = align(&x.ids[..x.len], &y.ids[..y.len]);
    let mut mapper: Vec<usize> = (0..max_len).collect();
    let mut alphas = vec![1f32; max_len];
    for (n, a) in aligned.iter().enumerate() {
        // An insertion gathers index -1 in the reference (torch: the last position); its
        // alpha is 0, so only that position's finite value matters, and the result is the same.
        mapper[n] = a.unwrap_or(max_len - 1);
        alphas[n] = if a.is_some() { 1.0 } else { 0.0 };
    }
    (mapper, alphas)
}

/// Reweighting (`get_equalizer`): 1 at every position but those of `words`, which get their
/// weights (the reference takes one value for all its words; each word has its own here).
/// Words not in the prompt are reported by the caller; here they change nothing.
pub fn equalizer(tokens: &PromptTokens, words: &[(String, f32)]) -> Vec<f32> {
    let mut eq = vec![1f32; tokens.ids.len()];
    for (word, weight) in words {
        for i in tokens.word_inds(word) {
            eq[i] = *weight;
        }
    }
    eq
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(prompt: &str) -> PromptTokens {
        PromptTokens::new(&ClipTokenizer::bundled(), prompt).unwrap()
    }

    /// The mapper's non-zero entries as `(row, column, value)`, for positions below `n`.
    fn entries(m: &[f32], n: usize) -> Vec<(usize, usize, f32)> {
        let w = (m.len() as f64).sqrt() as usize;
        let mut out = vec![];
        for r in 0..n {
            for c in 0..n {
                if m[r * w + c] != 0.0 {
                    out.push((r, c, m[r * w + c]));
                }
            }
        }
        out
    }

    #[test]
    fn words_map_to_their_tokens() {
        let t = tokens("a photo of a squirrel.");
        // "squirrel." is one word of two tokens ("squirrel", ".").
        assert_eq!(t.words.len(), 5);
        assert_eq!(t.len, 8);
        assert_eq!(t.word_inds("a"), vec![1, 4]);
        assert_eq!(t.word_inds("squirrel."), vec![5, 6]);
        assert_eq!(t.word_index_inds(1), vec![2]);
        assert!(t.word_inds("squirrel").is_empty());
        assert_eq!(t.word_of[0], None);
        assert_eq!(t.word_of[7], None);
    }

    #[test]
    fn replacement_of_one_word_is_the_identity_with_that_token_moved() {
        // The paper's word-swap example: "cat" -> "dog" (one token each).
        let x = tokens("a cat riding a bicycle");
        let y = tokens("a dog riding a bicycle");
        let m = replacement_mapper(&x, &y).unwrap();
        let want: Vec<(usize, usize, f32)> = (0..77).map(|i| (i, i, 1.0)).collect();
        assert_eq!(entries(&m, 77), want);
    }

    #[test]
    fn replacement_with_more_tokens_spreads_the_attention() {
        // "cat" (1 token) -> "armadillo" (2 tokens: "armad", "illo"): the source token feeds
        // both target tokens with weight 1/2, then positions shift by one.
        let x = tokens("a cat on a bench");
        let y = tokens("a armadillo on a bench");
        assert_eq!(
            y.word_inds("armadillo").len(),
            2,
            "test premise: two tokens"
        );
        let m = replacement_mapper(&x, &y).unwrap();
        let e = entries(&m, 8);
        assert_eq!(
            &e[..4],
            &[(0, 0, 1.0), (1, 1, 1.0), (2, 2, 0.5), (2, 3, 0.5)]
        );
        // After the last replaced word the reference writes the diagonal from j: (4,4), ...
        assert_eq!(&e[4..6], &[(4, 4, 1.0), (5, 5, 1.0)]);
    }

    #[test]
    fn replacement_needs_the_same_word_count() {
        let err = replacement_mapper(&tokens("a cat"), &tokens("a big cat")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("as many words") && msg.contains("--mode refine"),
            "{msg}"
        );
    }

    #[test]
    fn alignment_follows_the_reference_on_an_insertion() {
        // An inserted token: x = [B a b c E], y = [B a X b c E].
        let x = [0u32, 1, 2, 3, 9];
        let y = [0u32, 1, 7, 2, 3, 9];
        assert_eq!(
            align(&x, &y),
            vec![Some(0), Some(1), None, Some(2), Some(3), Some(4)]
        );
        // A substitution with gap 0 prefers a gap pair (left first) over a mismatch.
        assert_eq!(align(&[5, 1], &[5, 2]), vec![Some(0), None]);
    }

    #[test]
    fn refinement_mapper_on_an_added_adjective() {
        let x = tokens("a photo of a house on a mountain");
        let y = tokens("a photo of a house on a snowy mountain");
        let (mapper, alphas) = refinement_mapper(&x, &y);
        // y: BOS a photo of a house on a snowy mountain EOS: "snowy" (8) is new.
        assert_eq!(&mapper[..11], &[0, 1, 2, 3, 4, 5, 6, 7, 76, 8, 9]);
        assert_eq!(&alphas[..11], &[1., 1., 1., 1., 1., 1., 1., 1., 0., 1., 1.]);
        assert_eq!(mapper[11], 11);
        assert_eq!(mapper[76], 76);
        assert!(alphas[11..].iter().all(|&a| a == 1.0));
    }

    #[test]
    fn multi_vector_learned_words_count_as_their_expanded_tokens() {
        let mut tokenizer = ClipTokenizer::bundled();
        let ids = tokenizer.add_concept("<multi>", 3).unwrap();
        let x = PromptTokens::new(&tokenizer, "a <multi> on grass").unwrap();
        let y = PromptTokens::new(&tokenizer, "a big <multi> on grass").unwrap();
        // BOS a m0 m1 m2 on grass EOS: "on" is at 5, where the reference (unexpanded) says 3.
        assert_eq!(x.word_inds("<multi>"), vec![2, 3, 4]);
        assert_eq!(&x.ids[2..5], &ids[..]);
        assert_eq!(x.word_inds("on"), vec![5]);
        let (mapper, alphas) = refinement_mapper(&x, &y);
        assert_eq!(&mapper[..9], &[0, 1, 76, 2, 3, 4, 5, 6, 7]);
        assert_eq!(&alphas[..9], &[1., 1., 0., 1., 1., 1., 1., 1., 1.]);
        // Swapping the word after it keeps the learned word's three tokens in place.
        let z = PromptTokens::new(&tokenizer, "a <multi> on snow").unwrap();
        let m = replacement_mapper(&x, &z).unwrap();
        let want: Vec<(usize, usize, f32)> = (0..77).map(|i| (i, i, 1.0)).collect();
        assert_eq!(entries(&m, 77), want);
    }

    #[test]
    fn equalizer_weights_the_chosen_words_only() {
        let t = tokens("a smiling bunny doll");
        let eq = equalizer(&t, &[("smiling".into(), 5.0), ("doll".into(), 0.5)]);
        assert_eq!(eq.len(), 77);
        assert_eq!(&eq[..6], &[1.0, 1.0, 5.0, 1.0, 0.5, 1.0]);
        assert!(eq[6..].iter().all(|&v| v == 1.0));
    }
}
