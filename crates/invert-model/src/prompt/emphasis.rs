//! A1111's prompt emphasis syntax (`modules/prompt_parser.py`, `parse_prompt_attention`), which
//! users of every Stable Diffusion UI write: `(word)` multiplies the attention to `word` by 1.1,
//! `(word:1.3)` by 1.3, `[word]` divides it by 1.1, brackets nest and multiply, `\(` `\)` `\[`
//! `\]` `\\` are literal characters, and `BREAK` (a whole word, in capitals) ends the current
//! 75-token chunk. Unbalanced brackets are closed at the end of the prompt. This is a reading of
//! that function's rules, including its quirks: a weight needs an open `(` to apply (else
//! `:1.3)` stays text), neighbouring pieces of equal weight are merged, and a `BREAK` inside
//! brackets gets multiplied and so is no longer a break.

/// A1111's multipliers for `(...)` and `[...]`.
const ROUND: f64 = 1.1;
const SQUARE: f64 = 1.0 / 1.1;
/// The weight A1111 gives its `BREAK` marker.
const BREAK_WEIGHT: f64 = -1.0;

/// One piece of a parsed prompt: text and the weight of its tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct Weighted {
    pub text: String,
    pub weight: f64,
}

impl Weighted {
    fn new(text: impl Into<String>, weight: f64) -> Self {
        Self {
            text: text.into(),
            weight,
        }
    }

    /// Whether this piece is a chunk break (`BREAK` outside any brackets).
    pub fn is_break(&self) -> bool {
        self.text == "BREAK" && self.weight == BREAK_WEIGHT
    }
}

/// One lexical token of the syntax, in the order A1111's pattern tries its alternatives.
enum Token<'a> {
    /// `\(`, `\)`, `\[`, `\]`, `\\`: the character; a lone `\` gives the empty string.
    Literal(&'a str),
    OpenRound,
    OpenSquare,
    /// `:1.3)` (spaces allowed around the number): the number as written.
    Weight(&'a str),
    CloseRound,
    CloseSquare,
    /// A run of anything else, or a `:` that does not start a weight.
    Text,
}

/// The token at the start of `s` (not empty) and its length in bytes.
fn next_token(s: &str) -> (Token<'_>, usize) {
    let mut chars = s.chars();
    let first = chars.next().expect("not empty");
    match first {
        '\\' => match chars.next() {
            Some(c @ ('(' | ')' | '[' | ']' | '\\')) => {
                (Token::Literal(&s[1..2]), 1 + c.len_utf8())
            }
            _ => (Token::Literal(""), 1),
        },
        '(' => (Token::OpenRound, 1),
        '[' => (Token::OpenSquare, 1),
        ')' => (Token::CloseRound, 1),
        ']' => (Token::CloseSquare, 1),
        ':' => match weight_at(s) {
            Some((number, len)) => (Token::Weight(number), len),
            None => (Token::Text, 1),
        },
        _ => {
            let end = s.find(['\\', '(', ')', '[', ']', ':']).unwrap_or(s.len());
            (Token::Text, end)
        }
    }
}

/// `:\s*([+-]?[.\d]+)\s*\)` at the start of `s`: the number and the match length.
fn weight_at(s: &str) -> Option<(&str, usize)> {
    let skip_space = |from: usize| {
        from + s[from..]
            .find(|c: char| !c.is_whitespace())
            .unwrap_or(s.len() - from)
    };
    let start = skip_space(1);
    let mut end = start;
    if s[end..].starts_with(['+', '-']) {
        end += 1;
    }
    let digits = s[end..]
        .find(|c: char| !(c == '.' || c.is_ascii_digit()))
        .unwrap_or(s.len() - end);
    if digits == 0 {
        return None;
    }
    end += digits;
    let close = skip_space(end);
    s[close..]
        .starts_with(')')
        .then(|| (&s[start..end], close + 1))
}

/// Python's `\w` for `\b`: letters, digits and `_`.
fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Splits plain text at `\s*\bBREAK\b\s*`, as `re.split` does (empty pieces kept).
fn split_breaks(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut piece_start = 0;
    let mut search = 0;
    while let Some(found) = text[search..].find("BREAK") {
        let at = search + found;
        let end = at + "BREAK".len();
        let before_ok = text[..at].chars().next_back().is_none_or(|c| !is_word(c));
        let after_ok = text[end..].chars().next().is_none_or(|c| !is_word(c));
        if !(before_ok && after_ok) {
            search = end;
            continue;
        }
        let lead = text[piece_start..at].trim_end_matches(char::is_whitespace);
        let trail_len =
            text[end..].len() - text[end..].trim_start_matches(char::is_whitespace).len();
        parts.push(lead);
        piece_start = end + trail_len;
        search = piece_start;
    }
    parts.push(&text[piece_start..]);
    parts
}

/// Parses `prompt` into pieces of text with their weights (A1111's `parse_prompt_attention`).
/// The result is never empty; a prompt with no text gives one empty piece of weight 1.
pub fn parse(prompt: &str) -> Vec<Weighted> {
    let mut out: Vec<Weighted> = Vec::new();
    let (mut round, mut square): (Vec<usize>, Vec<usize>) = (Vec::new(), Vec::new());
    let scale = |out: &mut Vec<Weighted>, from: usize, by: f64| {
        out[from..].iter_mut().for_each(|w| w.weight *= by);
    };
    let mut rest = prompt;
    while !rest.is_empty() {
        let (token, len) = next_token(rest);
        let matched = &rest[..len];
        rest = &rest[len..];
        match token {
            Token::Literal(c) => out.push(Weighted::new(c, 1.0)),
            Token::OpenRound => round.push(out.len()),
            Token::OpenSquare => square.push(out.len()),
            Token::Weight(number) if !round.is_empty() => {
                match number.parse::<f64>() {
                    Ok(w) => {
                        let from = round.pop().expect("checked");
                        scale(&mut out, from, w);
                    }
                    // `(x:1.2.3)`: Python's float() would raise; keep it as text instead.
                    Err(_) => out.push(Weighted::new(matched, 1.0)),
                }
            }
            Token::CloseRound if !round.is_empty() => {
                let from = round.pop().expect("checked");
                scale(&mut out, from, ROUND);
            }
            Token::CloseSquare if !square.is_empty() => {
                let from = square.pop().expect("checked");
                scale(&mut out, from, SQUARE);
            }
            Token::Text | Token::Weight(_) | Token::CloseRound | Token::CloseSquare => {
                for (i, part) in split_breaks(matched).into_iter().enumerate() {
                    if i > 0 {
                        out.push(Weighted::new("BREAK", BREAK_WEIGHT));
                    }
                    out.push(Weighted::new(part, 1.0));
                }
            }
        }
    }
    for from in round {
        scale(&mut out, from, ROUND);
    }
    for from in square {
        scale(&mut out, from, SQUARE);
    }
    if out.is_empty() {
        out.push(Weighted::new("", 1.0));
    }
    // Neighbours of exactly equal weight become one piece.
    let mut merged: Vec<Weighted> = Vec::with_capacity(out.len());
    for w in out {
        match merged.last_mut() {
            Some(last) if last.weight == w.weight => last.text.push_str(&w.text),
            _ => merged.push(w),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(prompt: &str) -> Vec<(String, f64)> {
        parse(prompt)
            .into_iter()
            .map(|w| (w.text, w.weight))
            .collect()
    }

    fn want(v: &[(&str, f64)]) -> Vec<(String, f64)> {
        v.iter().map(|(t, w)| (t.to_string(), *w)).collect()
    }

    /// The examples of `parse_prompt_attention`'s docstring, with its printed values.
    #[test]
    fn a1111_documented_examples() {
        assert_eq!(pieces("normal text"), want(&[("normal text", 1.0)]));
        assert_eq!(
            pieces("an (important) word"),
            want(&[("an ", 1.0), ("important", 1.1), (" word", 1.0)])
        );
        assert_eq!(pieces("(unbalanced"), want(&[("unbalanced", 1.1)]));
        assert_eq!(pieces("\\(literal\\]"), want(&[("(literal]", 1.0)]));
        assert_eq!(
            pieces("(unnecessary)(parens)"),
            want(&[("unnecessaryparens", 1.1)])
        );
        assert_eq!(
            pieces("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky)))."),
            want(&[
                ("a ", 1.0),
                ("house", 1.5730000000000004),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641000000000006),
                (".", 1.1),
            ])
        );
    }

    #[test]
    fn breaks_weights_and_odd_input() {
        let p = parse("a cat BREAK a dog");
        assert_eq!(
            p.iter().map(|w| w.text.as_str()).collect::<Vec<_>>(),
            ["a cat", "BREAK", "a dog"]
        );
        assert!(p[1].is_break());
        // Not a whole word, or inside brackets: no break.
        assert_eq!(pieces("BREAKFAST"), want(&[("BREAKFAST", 1.0)]));
        assert!(!parse("(a BREAK b)").iter().any(Weighted::is_break));
        // Spaces around the weight; a weight without an open bracket stays text.
        assert_eq!(pieces("(cat : 1.5 )"), want(&[("cat ", 1.5)]));
        assert_eq!(pieces("cat:1.5)"), want(&[("cat:1.5)", 1.0)]));
        assert_eq!(pieces("(x:1.2.3)"), want(&[("x:1.2.3)", 1.1)]));
        assert_eq!(pieces("[[faint]]"), want(&[("faint", SQUARE * SQUARE)]));
        assert_eq!(pieces("a\\\\b"), want(&[("a\\b", 1.0)]));
        assert_eq!(pieces("a\\b"), want(&[("ab", 1.0)]));
        assert_eq!(pieces(""), want(&[("", 1.0)]));
        assert_eq!(
            pieces("(<my-style>:1.2) city"),
            want(&[("<my-style>", 1.2), (" city", 1.0)])
        );
        assert_eq!(
            pieces("日本 (画:0.8)"),
            want(&[("日本 ", 1.0), ("画", 0.8)])
        );
    }
}
