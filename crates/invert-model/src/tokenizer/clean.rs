//! OpenAI's prompt clean-up, run before the `tokenizer.json` pipeline.
//!
//! CLIP's `simple_tokenizer.py` encodes `whitespace_clean(basic_clean(text)).lower()`, where
//! `basic_clean` is `ftfy.fix_text` followed by `html.unescape` twice. The `tokenizer.json`
//! pipeline that transformers builds (NFC, `\s+` -> ` `, lowercase) has none of that, so a prompt
//! with `&amp;`, curly quotes or full-width letters tokenizes differently there. [`clean`]
//! reproduces the steps of ftfy 6 (`ftfy/__init__.py::fix_and_explain`, default
//! `TextFixerConfig`) that apply to typed text, in ftfy's order, then Python's `html.unescape`
//! twice, the whitespace clean-up and the lower-casing. What is not reproduced is listed in the
//! module docs of `tokenizer` (mojibake repair above all).

use tokenizers::NormalizedString;

use super::entities;

/// The text OpenAI's `SimpleTokenizer.encode` would split into words: ftfy's fixes, `html.unescape`
/// twice, whitespace runs collapsed to one space and trimmed, lower-cased.
pub(super) fn clean(text: &str) -> String {
    let fixed = fix_text(text);
    let unescaped = html_unescape(&html_unescape(&fixed));
    // `regex` `\s` and `str.strip` are Unicode White_Space, which is what `char::is_whitespace`
    // tests (str.isspace also has U+1C..U+1F, which ftfy or html.unescape have removed by now).
    let collapsed = unescaped.split_whitespace().collect::<Vec<_>>().join(" ");
    // str::to_lowercase, like Python's str.lower, applies the full Unicode mapping, final sigma
    // included (the tokenizers Lowercase normalizer maps character by character).
    collapsed.to_lowercase()
}

/// `ftfy.fix_text`: per line (ftfy's segments end after each `\n`), fixes repeated until the text
/// no longer changes. HTML entities are decoded ("unescape_html=auto") until the first line that
/// contains `<`; from there on ftfy leaves them (the setting sticks for the following lines).
fn fix_text(text: &str) -> String {
    let mut unescape = true;
    let mut out = String::with_capacity(text.len());
    for segment in text.split_inclusive('\n') {
        if segment.contains('<') {
            unescape = false;
        }
        out.push_str(&fix_segment(segment, unescape));
    }
    out
}

/// One pass of ftfy's loop per iteration, in `fix_and_explain`'s order. `fix_encoding` (mojibake
/// detection) is skipped; `fix_line_breaks` and `fix_surrogates` have no effect here (all line
/// breaks become spaces below; Rust strings hold no surrogates).
fn fix_segment(segment: &str, unescape: bool) -> String {
    let mut text = segment.to_owned();
    loop {
        let before = text.clone();
        if unescape {
            text = ftfy_unescape(&text);
        }
        let mut mapped = String::with_capacity(text.len());
        for c in text.chars() {
            map_char(c, &mut mapped);
        }
        let stripped: String = remove_terminal_escapes(&mapped)
            .chars()
            .filter(|&c| !is_removed_control(c))
            .collect();
        text = nfc(&stripped);
        if text == before {
            return text;
        }
    }
}

/// `fix_c1_controls`, `fix_latin_ligatures`, `fix_character_width` and `uncurl_quotes`, applied
/// one after the other to a character.
fn map_char(c: char, out: &mut String) {
    let c = c1_to_cp1252(c);
    match ligature(c) {
        Some(parts) => parts.chars().for_each(|p| width_then_quotes(p, out)),
        None => width_then_quotes(c, out),
    }
}

fn width_then_quotes(c: char, out: &mut String) {
    match full_width(c) {
        Some(narrow) => narrow.chars().for_each(|n| out.push(uncurl(n))),
        None => out.push(uncurl(c)),
    }
}

/// ftfy's `fix_c1_controls`: U+0080..U+009F read as "sloppy" windows-1252, where the five bytes
/// cp1252 leaves undefined keep their Latin-1 meaning. Python's `html.unescape` uses the same
/// table for `&#128;`..`&#159;`.
fn c1_to_cp1252(c: char) -> char {
    const CP1252: [char; 32] = [
        '\u{20ac}', '\u{81}', '\u{201a}', '\u{192}', '\u{201e}', '\u{2026}', '\u{2020}',
        '\u{2021}', '\u{2c6}', '\u{2030}', '\u{160}', '\u{2039}', '\u{152}', '\u{8d}', '\u{17d}',
        '\u{8f}', '\u{90}', '\u{2018}', '\u{2019}', '\u{201c}', '\u{201d}', '\u{2022}', '\u{2013}',
        '\u{2014}', '\u{2dc}', '\u{2122}', '\u{161}', '\u{203a}', '\u{153}', '\u{9d}', '\u{17e}',
        '\u{178}',
    ];
    match c {
        '\u{80}'..='\u{9f}' => CP1252[c as usize - 0x80],
        _ => c,
    }
}

/// ftfy's `LIGATURES` table (chardata.py): Latin typographic ligatures and legacy digraphs.
fn ligature(c: char) -> Option<&'static str> {
    Some(match c {
        'Ĳ' => "IJ",
        'ĳ' => "ij",
        'ŉ' => "\u{2bc}n",
        'Ǳ' => "DZ",
        'ǲ' => "Dz",
        'ǳ' => "dz",
        'Ǆ' => "D\u{17d}",
        'ǅ' => "D\u{17e}",
        'ǆ' => "d\u{17e}",
        'Ǉ' => "LJ",
        'ǈ' => "Lj",
        'ǉ' => "lj",
        'Ǌ' => "NJ",
        'ǋ' => "Nj",
        'ǌ' => "nj",
        'ﬀ' => "ff",
        'ﬁ' => "fi",
        'ﬂ' => "fl",
        'ﬃ' => "ffi",
        'ﬄ' => "ffl",
        'ﬅ' => "\u{17f}t",
        'ﬆ' => "st",
        _ => return None,
    })
}

/// ftfy's `WIDTH_MAP`: the ideographic space becomes a space, and every character of the
/// Halfwidth and Fullwidth Forms block (U+FF01..U+FFEF) its NFKC form (full-width ASCII, half-width
/// katakana and hangul, full-width currency signs).
fn full_width(c: char) -> Option<String> {
    match c {
        '\u{3000}' => Some(" ".to_owned()),
        '\u{ff01}'..='\u{ffef}' => {
            let mut s = NormalizedString::from(c.to_string());
            s.nfkc();
            (s.get().chars().ne([c])).then(|| s.get().to_owned())
        }
        _ => None,
    }
}

/// ftfy's `uncurl_quotes`: U+02BC and U+2018..U+201B become `'`, U+201C..U+201F become `"`.
fn uncurl(c: char) -> char {
    match c {
        '\u{2bc}' | '\u{2018}'..='\u{201b}' => '\'',
        '\u{201c}'..='\u{201f}' => '"',
        _ => c,
    }
}

/// ftfy's `remove_terminal_escapes`: `\x1b[` digits/semicolons then one ASCII letter.
fn remove_terminal_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("\u{1b}[") {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 2..];
        let params = after
            .find(|c: char| !(c.is_ascii_digit() || c == ';'))
            .unwrap_or(after.len());
        match after[params..].chars().next() {
            Some(l) if l.is_ascii_alphabetic() => rest = &after[params + 1..],
            _ => {
                out.push_str("\u{1b}[");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// ftfy's `CONTROL_CHARS`: C0 controls other than tab, LF, FF and CR, DEL, the deprecated Arabic
/// format characters, the byte order mark and the interlinear annotation characters.
fn is_removed_control(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{8}' | '\u{b}' | '\u{e}'..='\u{1f}' | '\u{7f}' | '\u{206a}'..='\u{206f}'
        | '\u{feff}' | '\u{fff9}'..='\u{fffc}')
}

fn nfc(text: &str) -> String {
    let mut s = NormalizedString::from(text);
    s.nfc();
    s.get().to_owned()
}

/// ftfy's own `unescape_html`: only `&` + optional `#` + 1..24 ASCII letters/digits + `;`.
/// Named references are decoded when known; numeric ones as `html.unescape` would, unless the
/// result holds a `;` (ftfy then keeps the reference: it would not have been consumed whole).
fn ftfy_unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let numeric = after.starts_with('#');
        let body_at = usize::from(numeric);
        let len = after[body_at..]
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(after.len() - body_at);
        let body = &after[body_at..body_at + len];
        let terminated = after[body_at + len..].starts_with(';');
        let decoded = if !terminated || !(1..=24).contains(&len) {
            None
        } else if numeric {
            parse_numeric(body).filter(|s| !s.contains(';'))
        } else {
            entities::named(body).map(String::from)
        };
        match decoded {
            Some(s) => {
                out.push_str(&s);
                rest = &after[body_at + len + 1..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// `12` or `x1F` (the part after `&#`), decoded as Python's `html._replace_charref` does.
fn parse_numeric(body: &str) -> Option<String> {
    let (digits, radix) = match body.strip_prefix(['x', 'X']) {
        Some(hex) => (hex, 16),
        None => (body, 10),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    // Too long for u32 is also past U+10FFFF, which Python turns into U+FFFD.
    let num = u32::from_str_radix(digits, radix).unwrap_or(u32::MAX);
    Some(match num {
        0 => "\u{fffd}".to_owned(),
        0x0d => "\r".to_owned(),
        0x80..=0x9f => c1_to_cp1252(char::from_u32(num)?).to_string(),
        0xd800..=0xdfff | 0x11_0000.. => "\u{fffd}".to_owned(),
        0x1..=0x8 | 0xb | 0xe..=0x1f | 0x7f | 0xfdd0..=0xfdef => String::new(),
        _ if num & 0xfffe == 0xfffe => String::new(),
        _ => char::from_u32(num)?.to_string(),
    })
}

/// Python's `html.unescape`: `&#123`, `&#x7b` (the `;` optional) and named references, where a
/// name without `;` (or an unknown one) falls back to its longest prefix that is a legacy name
/// (`&copy2024` -> `©2024`, `&ampx` -> `&x`).
fn html_unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        match unescape_one(after) {
            Some((s, used)) => {
                out.push_str(&s);
                rest = &after[used..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Decodes the reference at the start of `after` (the text after `&`): the replacement and the
/// bytes it consumed, or `None` when Python's `_charref` regex does not match there.
fn unescape_one(after: &str) -> Option<(String, usize)> {
    if let Some(num) = after.strip_prefix('#') {
        let hex = num.starts_with(['x', 'X']);
        let digits = &num[usize::from(hex)..];
        let len = digits
            .find(|c: char| !c.is_digit(if hex { 16 } else { 10 }))
            .unwrap_or(digits.len());
        if len == 0 {
            return None;
        }
        let body = &num[..usize::from(hex) + len];
        let used = 1 + body.len() + usize::from(num[body.len()..].starts_with(';'));
        return parse_numeric(body).map(|s| (s, used));
    }
    let len = after
        .char_indices()
        .take_while(|&(_, c)| !matches!(c, '\t' | '\n' | '\u{c}' | ' ' | '<' | '&' | '#' | ';'))
        .take(32)
        .last()
        .map(|(i, c)| i + c.len_utf8())?;
    let name = &after[..len];
    if after[len..].starts_with(';')
        && let Some(c) = entities::named(name)
    {
        return Some((c.to_string(), len + 1));
    }
    if let Some(c) = entities::legacy(name) {
        return Some((c.to_string(), len));
    }
    // Longest proper prefix of at least two characters (`range(len(s)-1, 1, -1)` over `s`,
    // which here includes a final `;` when present).
    let with_semi = len + usize::from(after[len..].starts_with(';'));
    let full = &after[..with_semi];
    let ends: Vec<usize> = full.char_indices().map(|(i, _)| i).skip(2).collect();
    for &end in ends.iter().rev() {
        if let Some(c) = entities::legacy(&full[..end]) {
            return Some((format!("{c}{}", &full[end..]), with_semi));
        }
    }
    // Python returns `&` + the name unchanged: the same as no match, as the name holds no `&`.
    None
}
