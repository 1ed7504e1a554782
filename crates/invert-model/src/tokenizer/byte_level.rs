//! The byte <-> character table of byte-level BPE (`bytes_to_unicode` in CLIP's
//! simple_tokenizer.py, also GPT-2's): vocabulary entries are strings of these characters, one per
//! UTF-8 byte, so that the vocabulary never holds whitespace or control characters.

use std::sync::LazyLock;

/// The character standing for each byte: printable Latin-1 bytes stand for themselves, the other
/// 68 bytes for U+0100 onwards, in byte order.
static CHARS: LazyLock<[char; 256]> = LazyLock::new(|| {
    let mut table = ['\0'; 256];
    let mut next = 0x100;
    for b in 0..=255u8 {
        table[usize::from(b)] = if matches!(b, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff) {
            char::from(b)
        } else {
            next += 1;
            char::from_u32(next - 1).unwrap_or(char::REPLACEMENT_CHARACTER)
        };
    }
    table
});

/// `text` as the vocabulary spells it (`SimpleTokenizer.encode`'s `byte_encoder` step).
pub(super) fn encode(text: &str) -> String {
    text.bytes().map(|b| CHARS[usize::from(b)]).collect()
}

/// The UTF-8 bytes a vocabulary entry stands for, `None` if it holds a character outside the table.
pub(super) fn decode(token: &str) -> Option<Vec<u8>> {
    token
        .chars()
        .map(|c| CHARS.iter().position(|&t| t == c).map(|b| b as u8))
        .collect()
}
