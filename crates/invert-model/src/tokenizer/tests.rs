use super::*;

const CAT_PHOTO: [u32; 7] = [49406, 320, 1125, 539, 320, 2368, 49407];

#[test]
fn clean_up_follows_openai() {
    let c = ClipTokenizer::clean;
    assert_eq!(c("  Rock &amp; Roll\t\n "), "rock & roll");
    // html.unescape twice, and ftfy's own unescaping repeated until nothing changes.
    assert_eq!(c("fish &amp;amp; chips"), "fish & chips");
    assert_eq!(c("a &amp;amp;amp; b"), "a & b");
    // A line with `<` turns ftfy's unescaping off: only the two html.unescape passes remain.
    assert_eq!(c("<b>&amp;amp;amp;</b>"), "<b>&amp;</b>");
    assert_eq!(c("<i>it&#8217;s</i>"), "<i>it\u{2019}s</i>");
    assert_eq!(c("it&#8217;s"), "it's");
    assert_eq!(
        c("&copy 2024 &ampersand &notit; &lt3 AT&T &#65&#x42;"),
        "© 2024 &ersand ¬it; <3 at&t ab"
    );
    assert_eq!(c("&#0;&#x110000;&#128;&#1;"), "\u{fffd}\u{fffd}€");
    assert_eq!(
        c("don’t “quote” ‘me’ \u{93}c1\u{94}"),
        "don't \"quote\" 'me' \"c1\""
    );
    assert_eq!(c("ﬁne ﬂower ĳ"), "fine flower ij");
    assert_eq!(c("Ｆｕｌｌ\u{3000}ＡＢＣ１２３！"), "full abc123!");
    assert_eq!(c("ｶﾞ"), "ガ");
    assert_eq!(c("\u{1b}[31mred\u{1b}[0m\u{7}\u{feff}"), "red");
    assert_eq!(c("e\u{301}"), "é");
    assert_eq!(c("ΟΔΟΣ"), "οδος");
    assert_eq!(c("a\u{a0}b\u{2028}c"), "a b c");
    assert_eq!(c(" \t\n"), "");
}

#[test]
fn bundled_tokenizer_basics() {
    let tok = ClipTokenizer::bundled();
    assert_eq!(tok.vocab_size(), 49408);
    assert_eq!(tok.num_ids(), 49408);
    assert_eq!(
        (tok.bos_id(), tok.eos_id(), tok.pad_id(), tok.max_length()),
        (49406, 49407, 49407, 77)
    );
    let enc = tok.encode("A  photo of a CAT").unwrap();
    assert_eq!(enc.ids.len(), 77);
    assert_eq!(enc.ids[..7], CAT_PHOTO);
    assert!(enc.ids[7..].iter().all(|&id| id == 49407));
    assert_eq!((enc.token_count, enc.truncated), (5, None));
    assert_eq!(tok.encode("").unwrap().ids[..3], [49406, 49407, 49407]);
    assert_eq!(tok.word_ids("toy").unwrap(), [5988]);
    assert_eq!(tok.word_ids("a photo").unwrap(), [320, 1125]);
    assert!(matches!(
        tok.word_ids(" \n"),
        Err(TokenizerError::EmptyText { .. })
    ));
}

#[test]
fn decode_id_gives_readable_text() {
    let mut tok = ClipTokenizer::bundled();
    assert_eq!(tok.decode_id(2368).as_deref(), Some("cat"));
    assert_eq!(tok.id_to_token(2368).as_deref(), Some("cat</w>"));
    assert_eq!(tok.decode_id(49406).as_deref(), Some("<|startoftext|>"));
    // The first byte-level piece of a three-byte character is not valid UTF-8 alone.
    assert_eq!(tok.id_to_token(728).as_deref(), Some("âĢ"));
    assert_eq!(tok.decode_id(728).as_deref(), Some("\u{fffd}"));
    let emoji = tok.word_ids("🐶").unwrap();
    assert_eq!(
        emoji
            .iter()
            .map(|&id| tok.id_to_token(id).unwrap())
            .collect::<String>(),
        "ðŁĲ¶</w>"
    );
    assert_eq!(tok.decode_id(49408), None);
    tok.add_concept("<cat-toy>", 1).unwrap();
    assert_eq!(tok.decode_id(49408).as_deref(), Some("<cat-toy>"));
}

#[test]
fn concepts_get_new_ids_and_stay_whole() {
    let mut tok = ClipTokenizer::bundled();
    assert_eq!(tok.add_concept("<cat-toy>", 1).unwrap(), [49408]);
    assert_eq!(tok.add_concept("S*", 1).unwrap(), [49409]);
    let enc = tok
        .encode("a photo of <Cat-Toy> on a beach, by S*")
        .unwrap();
    assert_eq!(
        enc.ids[..13],
        [
            49406, 320, 1125, 539, 49408, 525, 320, 2117, 267, 638, 49409, 49407, 49407
        ]
    );
    assert_eq!(tok.word_ids("<cat-toy>").unwrap(), [49408]);
    assert_eq!(tok.num_ids(), 49410);
    let tokens: Vec<_> = tok
        .concepts()
        .iter()
        .map(|c| (c.token.as_str(), c.ids.clone()))
        .collect();
    assert_eq!(tokens, [("<cat-toy>", vec![49408]), ("S*", vec![49409])]);
}

#[test]
fn concepts_that_would_not_be_new_words_are_refused() {
    let mut tok = ClipTokenizer::bundled();
    tok.add_concept("<cat-toy>", 1).unwrap();
    let in_vocab = |r: Result<Vec<u32>, TokenizerError>| {
        matches!(r, Err(TokenizerError::ConceptInVocabulary { .. }))
    };
    let taken =
        |r: Result<Vec<u32>, TokenizerError>| matches!(r, Err(TokenizerError::ConceptTaken { .. }));
    let invalid = |r: Result<Vec<u32>, TokenizerError>| {
        matches!(r, Err(TokenizerError::ConceptInvalid { .. }))
    };
    assert!(in_vocab(tok.add_concept("cat", 1)));
    assert!(in_vocab(tok.add_concept("Cat", 1)));
    assert!(in_vocab(tok.add_concept("<|endoftext|>", 1)));
    assert!(in_vocab(tok.add_concept("!", 1)));
    // A word piece (in the vocabulary without `</w>`): an added token would reuse its id.
    let piece = (512..49406).find_map(|id| {
        let t = tok.id_to_token(id).unwrap();
        (t.len() > 3
            && t.chars().all(|c| c.is_ascii_lowercase())
            && tok.word_ids(&t).unwrap().len() > 1)
            .then_some(t)
    });
    let piece = piece.expect("some word piece is not a whole word");
    assert!(in_vocab(tok.add_concept(&piece, 1)), "{piece}");
    assert!(taken(tok.add_concept("<cat-toy>", 1)));
    assert!(taken(tok.add_concept("<CAT-TOY>", 2)));
    assert!(invalid(tok.add_concept("", 1)));
    assert!(invalid(tok.add_concept("my token", 1)));
    assert!(invalid(tok.add_concept("&amp;x", 1)));
    assert!(invalid(tok.add_concept("“x”", 1)));
    assert!(invalid(tok.add_concept("<x>", 0)));
    // A multi-vector concept needs every `token_i` free.
    tok.add_concept("<b>_1", 1).unwrap();
    assert!(taken(tok.add_concept("<b>", 3)));
    assert_eq!(tok.num_ids(), 49410, "refused concepts add nothing");
    let message = tok.add_concept("cat", 1).unwrap_err().to_string();
    assert!(
        message.contains("already in CLIP's vocabulary") && message.contains("cat</w>"),
        "{message}"
    );
}

#[test]
fn multi_vector_concepts_expand() {
    let mut tok = ClipTokenizer::bundled();
    assert_eq!(tok.add_concept("<tok>", 3).unwrap(), [49408, 49409, 49410]);
    assert_eq!(tok.concepts()[0].tokens(), ["<tok>", "<tok>_1", "<tok>_2"]);
    let enc = tok.encode("a photo of <tok> in the snow").unwrap();
    assert_eq!(
        enc.ids[..11],
        [
            49406, 320, 1125, 539, 49408, 49409, 49410, 530, 518, 2583, 49407
        ]
    );
    assert_eq!(enc.token_count, 9);
    // Written out in full (as diffusers' expanded text), it is not expanded again.
    let full = tok
        .encode("a photo of <tok> <tok>_1 <tok>_2 in the snow")
        .unwrap();
    assert_eq!(full, enc);
    assert_eq!(
        tok.word_ids("<tok>,<tok>").unwrap(),
        [49408, 49409, 49410, 267, 49408, 49409, 49410]
    );
}

#[test]
fn truncation_names_the_dropped_words() {
    let mut tok = ClipTokenizer::bundled();
    let fits = vec!["cat"; 75].join(" ");
    let enc = tok.encode(&fits).unwrap();
    assert_eq!(
        (enc.token_count, enc.truncated, enc.ids[76]),
        (75, None, 49407)
    );
    let enc = tok.encode(&format!("{fits}, Dropped WORDS here")).unwrap();
    assert_eq!(enc.token_count, 79);
    assert_eq!(enc.truncated.as_deref(), Some(", dropped words here"));
    assert_eq!((enc.ids[75], enc.ids[76]), (2368, 49407));
    // A multi-vector concept cut by the limit: diffusers cuts it too; the message starts there.
    tok.add_concept("<tok>", 3).unwrap();
    let enc = tok
        .encode(&format!("{} <tok> beach", vec!["cat"; 74].join(" ")))
        .unwrap();
    assert_eq!(enc.ids[74..], [2368, 49408, 49407]);
    assert_eq!(enc.truncated.as_deref(), Some("<tok> beach"));
}

#[test]
fn special_literals_follow_openais_word_pattern() {
    let tok = ClipTokenizer::bundled();
    assert_eq!(
        tok.word_ids("<|startoftext|>a<|ENDOFTEXT|>").unwrap(),
        [49406, 320, 49407]
    );
    // After punctuation the literal is part of a punctuation run, as in OpenAI's re.findall.
    assert_eq!(
        tok.word_ids("a,<|endoftext|>").unwrap(),
        [320, 11, 27, 347, 40786, 4160, 91, 285]
    );
}
