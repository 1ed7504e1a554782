#!/usr/bin/env python3
"""Reference token ids for invert's CLIP tokenizer (crates/invert-model/src/tokenizer/).

usage (from the repo root, after scripts/make_clip_tokenizer.py):
    /work/venv/bin/python scripts/make_tokenizer_fixtures.py [OUT_JSON]
    /work/venv/bin/python scripts/make_tokenizer_fixtures.py --entities   (prints entities.rs's table)
OUT_JSON defaults to crates/invert-model/tests/fixtures/tokenizer/prompts.json.

For every prompt two references are recorded, both without padding (BOS ... EOS; the Rust test pads
with `pad` up to `max_length`):
  openai        OpenAI's own SimpleTokenizer (clip-anytorch's clip/simple_tokenizer.py: ftfy.fix_text,
                html.unescape twice, whitespace clean-up, lower-case, BPE), `[49406] + encode + [49407]`
                cut to 77 with EOS last, exactly as `clip.tokenize(truncate=True)`. Added concepts are
                spliced in: the cleaned text is split at the (case-insensitive) concept tokens and the
                pieces encoded on their own, which is what a placeholder that BPE never splits means.
  transformers  transformers' CLIPTokenizer (5.x, tokenizers-backed) loaded from the bundled files,
                padding="max_length", max_length=77, truncation=True; concepts added with add_tokens
                and multi-vector ones expanded in the text as diffusers' `maybe_convert_prompt` does.
`invert` names the one invert must give ("openai" unless listed in KNOWN_DIFFERENCES, with the
reason in `why`), `tokens` OpenAI's prompt length before truncation, `dropped` (long prompts) the
start of the text that does not fit. Needs ftfy (pip install ftfy) for OpenAI's tokenizer.
"""
import gzip
import html.entities
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile

ASSETS = os.path.join("crates", "invert-model", "assets", "clip-tokenizer")
DEFAULT_OUT = os.path.join("crates", "invert-model", "tests", "fixtures", "tokenizer", "prompts.json")
BOS, EOS, MAX_LEN = 49406, 49407, 77

LONG = (
    "a breathtaking panoramic landscape of snow capped mountains at golden hour, a crystal clear "
    "alpine lake reflecting the peaks, pine forests, wildflowers in the foreground, dramatic clouds, "
    "volumetric light, god rays, ultra detailed, photorealistic, 8k, shot on a medium format camera, "
    "national geographic award winning photograph, vivid colors, perfect composition, rule of thirds, "
    "leading lines, sharp focus everywhere, no people, tranquil mood, the end of the prompt"
)
LONG_CJK = "城" * 60 + " and then many more words that will not fit in the window at all: " + "猫 " * 20

# (name, prompt, options). options: concepts [(token, vectors)], pad ("!" for SD 2), dropped.
PROMPTS = [
    ("simple", "a photo of a cat", {}),
    ("van_gogh", "An oil painting of a lighthouse in the style of Van Gogh!", {}),
    ("weights", "masterpiece, best quality, (ultra detailed:1.2), [blurry], ((sharp focus)), {vivid}", {}),
    ("anime_tags", "(masterpiece:1.2), 1girl, solo, long hair, looking at viewer, smile, <lora:add_detail:0.8>", {}),
    ("camera", "portrait of a woman, 85mm, f/1.8, 4k, 8k uhd, HDR, trending on ArtStation", {}),
    ("artists", "a cat sitting on a chair, by Greg Rutkowski and Alphonse Mucha, octane render", {}),
    ("negative", "lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, "
                 "cropped, worst quality, low quality, jpeg artifacts, signature, watermark, blurry", {}),
    ("numbers", "3.14159 2024-01-01 12:30 1,000,000 people #42 $99.99 50% x2 v1.5", {}),
    ("cjk", "日本語のテキスト, 富士山, 桜の花", {}),
    ("korean", "한국어 프롬프트 고양이", {}),
    ("emoji", "a happy dog 🐶🎉 with a thumbs up 👍🏽 and a flag 🏴󠁧󠁢󠁳󠁣󠁴󠁿", {}),
    ("accents", "café crème brûlée, naïve Zürich, São Paulo, Ångström, Dvořák", {}),
    ("combining_accent", "cafe\u0301 au lait", {}),
    ("uppercase_accents", "ÀÉÎÕÜ UPPERCASE ACCENTS", {}),
    ("greek_final_sigma", "ΟΔΟΣ ΣΟΦΟΣ", {}),
    ("turkish_dotted_i", "İstanbul at night", {}),
    ("contractions", "it's a dog's life, we're here, they've gone, I'm sure, you'll see, he'd go, don't stop", {}),
    ("curly_quotes", "don’t stop believin’ — “quoted” ‘single’", {}),
    ("html_amp", "rock &amp; roll", {}),
    ("html_mixed", "fish &amp;amp; chips &lt;3 &quot;quoted&quot; &#39;single&#39; &#x2764; &eacute;t&eacute;", {}),
    ("html_with_tag", "a <b>bold</b> &amp; &amp;amp; cat", {}),
    ("html_numeric_quote", "it&#8217;s &#8220;fine&#8221;", {}),
    ("html_numeric_quote_with_tag", "<i>it&#8217;s</i> fine", {}),
    ("html_legacy", "&copy 2024 AT&T R&D &ampersand &nbsp;x &notit; &lt3", {}),
    ("html_nbsp", "a&nbsp;photo&nbsp;of a cat", {}),
    ("html_two_lines", "rock &amp; roll\n<b>&amp;amp;</b>\n&amp;amp;", {}),
    ("ligatures", "ﬁne ﬂower ﬀ ﬃ ﬄ ĳssel ǆungla", {}),
    ("full_width", "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３！\u3000ｘ", {}),
    ("halfwidth_katakana", "ｶﾀｶﾅ ﾃﾞｽ", {}),
    ("c1_controls", "\x93quoted\x94 and \x85", {}),
    ("terminal_escapes", "\x1b[31mred\x1b[0m text", {}),
    ("control_chars", "zero\u200bwidth\ufeff bom\x07 bell", {}),
    ("whitespace_mix", "  tab\tand\nnewline  and   spaces\u00a0nbsp  ", {}),
    ("empty", "", {}),
    ("whitespace_only", "   \t\n  ", {}),
    ("special_literals", "<|startoftext|>a<|endoftext|> <|ENDOFTEXT|>", {}),
    ("special_after_punctuation", "a cat,<|endoftext|> (<|startoftext|>) x<|endoftext|>", {}),
    ("long", LONG, {"dropped": "focus everywhere"}),
    ("long_cjk", LONG_CJK, {"dropped": "城"}),
    ("concept", "a photo of <cat-toy> on a beach", {"concepts": [("<cat-toy>", 1)]}),
    ("concept_glued", "a <cat-toy>toy and x<cat-toy>, <CAT-TOY>!", {"concepts": [("<cat-toy>", 1)]}),
    ("concept_star", "a painting of S* in the style of S*", {"concepts": [("S*", 1)]}),
    ("multi_vector", "a photo of <tok> in the snow", {"concepts": [("<tok>", 3)]}),
    ("multi_vector_twice", "<tok> and <tok>, by <cat-toy>", {"concepts": [("<tok>", 3), ("<cat-toy>", 1)]}),
    # 74 tokens, then a 3-vector concept that the cut after 75 tokens splits (as diffusers does).
    ("long_with_concept", "a " * 74 + "<tok> at the end", {"concepts": [("<tok>", 3)], "dropped": "<tok> at"}),
    ("sd2_padding", "a photo of a cat", {"pad": "!"}),
    ("sd2_exclamation", "hello! wow!! a photo of a cat!", {"pad": "!"}),
    ("mojibake", "donâ€™t cafÃ© crÃ¨me", {}),
    ("html5_only_entity", "five &starf; rating", {}),
]

KNOWN_DIFFERENCES = {
    "mojibake": "ftfy repairs mojibake (UTF-8 read as windows-1252); invert does not, like transformers",
    "html5_only_entity": "HTML5-only entity names are not in invert's table (entities.rs); left as written, like transformers",
}


def load_openai():
    import clip

    path = os.path.join(os.path.dirname(clip.__file__), "simple_tokenizer.py")
    spec = importlib.util.spec_from_file_location("simple_tokenizer", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod, mod.SimpleTokenizer(os.path.join(os.path.dirname(clip.__file__), "bpe_simple_vocab_16e6.txt.gz"))


def encode_cleaned(mod, ref, text):
    """The body of SimpleTokenizer.encode after its clean-up (cleaning twice is not idempotent:
    html.unescape can produce curly quotes that a second ftfy pass would straighten)."""
    ids = []
    for token in mod.re.findall(ref.pat, text):
        token = "".join(ref.byte_encoder[b] for b in token.encode("utf-8"))
        ids.extend(ref.encoder[t] for t in ref.bpe(token).split(" "))
    return ids


def openai_ids(mod, ref, prompt, concepts, first_id):
    """[BOS] + ids + [EOS] (cut to 77 like clip.tokenize(truncate=True)), and the untruncated length."""
    text = mod.whitespace_clean(mod.basic_clean(prompt)).lower()
    if concepts:
        table, next_id = {}, first_id
        for token, n in concepts:
            table[token.lower()] = list(range(next_id, next_id + n))
            next_id += n
        pattern = "|".join(re.escape(t) for t in sorted(table, key=len, reverse=True))
        ids, pos = [], 0
        for m in re.finditer(pattern, text):
            ids += encode_cleaned(mod, ref, text[pos : m.start()]) + table[m.group(0)]
            pos = m.end()
        ids += encode_cleaned(mod, ref, text[pos:])
    else:
        ids = ref.encode(prompt)
        assert ids == encode_cleaned(mod, ref, text)
    n = len(ids)
    full = [BOS] + ids + [EOS]
    if len(full) > MAX_LEN:
        full = full[:MAX_LEN]
        full[-1] = EOS
    return full, n


def maybe_convert_prompt(prompt, tokenizer):
    """diffusers' TextualInversionLoaderMixin._maybe_convert_prompt (diffusers 0.3x-0.4x)."""
    tokens = tokenizer.tokenize(prompt)
    for token in set(tokens):
        if token in tokenizer.added_tokens_encoder:
            replacement, i = token, 1
            while f"{token}_{i}" in tokenizer.added_tokens_encoder:
                replacement += f" {token}_{i}"
                i += 1
            prompt = prompt.replace(token, replacement)
    return prompt


def transformers_ids(folder, prompt, concepts):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(folder)
    for token, n in concepts:
        names = [token] + [f"{token}_{i}" for i in range(1, n)]
        assert tok.add_tokens(names) == n
    text = maybe_convert_prompt(prompt, tok) if concepts else prompt
    out = tok(text, padding="max_length", max_length=MAX_LEN, truncation=True)
    ids, mask = out.input_ids, out.attention_mask
    n = sum(mask)
    assert len(ids) == MAX_LEN and all(i == tok.pad_token_id for i in ids[n:]), (prompt, ids)
    return ids[:n], tok.pad_token_id


def entities_table():
    names = set(html.entities.name2codepoint) | {"apos", "AMP", "COPY", "GT", "LT", "QUOT", "REG"}
    legacy = {k for k in html.entities.html5 if not k.endswith(";")}
    assert legacy <= names
    rows = []
    for n in sorted(names):
        v = html.entities.html5[n + ";"]
        c = v if 0x20 < ord(v) < 0x7F and v not in "'\\" else "\\u{%x}" % ord(v)
        rows.append(f"(\"{n}\", '{c}', {'true' if n in legacy else 'false'}), ")
    lines, cur = [], "    "
    for r in rows:
        if len(cur) + len(r) > 100:
            lines.append(cur.rstrip())
            cur = "    "
        cur += r
    lines.append(cur.rstrip())
    return "\n".join(lines)


def main():
    if "--entities" in sys.argv:
        print(entities_table())
        return
    out = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_OUT
    import transformers

    mod, ref = load_openai()
    tmp = tempfile.mkdtemp()
    sd2 = os.path.join(tmp, "sd2")
    shutil.copytree(ASSETS, sd2)
    with open(os.path.join(sd2, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                   "unk_token": "<|endoftext|>", "pad_token": "!"}, f)

    entries, n_same = [], 0
    for name, prompt, opt in PROMPTS:
        concepts = opt.get("concepts", [])
        folder = sd2 if opt.get("pad") == "!" else ASSETS
        oa, n_tokens = openai_ids(mod, ref, prompt, concepts, 49408)
        tf, pad = transformers_ids(folder, prompt, concepts)
        entry = {"name": name, "prompt": prompt}
        if concepts:
            entry["concepts"] = [[t, n] for t, n in concepts]
        entry.update({"pad": pad, "tokens": n_tokens, "openai": oa, "transformers": tf})
        if "dropped" in opt:
            assert n_tokens > MAX_LEN - 2, name
            entry["dropped"] = opt["dropped"]
        if name in KNOWN_DIFFERENCES:
            assert oa != tf, name
            entry.update({"invert": "transformers", "why": KNOWN_DIFFERENCES[name]})
        else:
            entry["invert"] = "openai"
            if oa != tf:
                entry["why"] = why_transformers_differs(name, opt)
        n_same += oa == tf
        entries.append(entry)
    shutil.rmtree(tmp)
    doc = {
        "about": "CLIP token ids for invert's tokenizer tests; written by scripts/make_tokenizer_fixtures.py",
        "openai": "OpenAI SimpleTokenizer (clip-anytorch 2.6.0, ftfy %s), [BOS]+encode+[EOS] cut to 77"
                  % __import__("ftfy").__version__,
        "transformers": "transformers %s CLIPTokenizer from assets/clip-tokenizer, max_length padding, truncation"
                        % transformers.__version__,
        "max_length": MAX_LEN,
        "prompts": entries,
    }
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write(compact_json(doc))
    n_openai = sum(e["invert"] == "openai" for e in entries)
    print(f"{len(entries)} prompts; openai == transformers on {n_same}; invert must match openai on {n_openai}")
    for e in entries:
        if e["openai"] != e["transformers"]:
            print(f"  {e['name']:28s} invert={e['invert']:12s} {e.get('why', '')}")


def why_transformers_differs(name, opt):
    """Why transformers' ids differ from OpenAI's where invert gives OpenAI's."""
    if opt.get("pad") == "!":
        return ("transformers makes the SD 2 pad token '!' a special token, so each '!' becomes id 0; "
                "OpenCLIP and invert keep it as text")
    if name == "greek_final_sigma":
        return "Python's str.lower() (and Rust's) writes a word-final Σ as ς; tokenizers' Lowercase maps each character alone"
    if name == "special_literals":
        return "OpenAI finds <|endoftext|> after lower-casing; transformers' special tokens are case-sensitive"
    if name == "special_after_punctuation":
        return ("OpenAI's word pattern only finds <|endoftext|> where a match starts, not after punctuation; "
                "transformers' special tokens match anywhere")
    return "OpenAI's clean-up (ftfy.fix_text, html.unescape twice), which invert reproduces and transformers 5 lacks"


def compact_json(doc):
    """Indented JSON with each list of numbers and short strings on one line (innermost first):
    small, and still readable in a diff."""
    text = json.dumps(doc, ensure_ascii=False, indent=1)
    item = r'(?:-?[0-9]+|"(?:[^"\\\n]|\\.)*"|\[[^\[\]\n]*\])'
    flat = re.compile(r"\[\s*(" + item + r"(?:,\s*" + item + r")*)\s*\]")
    while True:
        new = flat.sub(lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text)
        if new == text:
            return text + "\n"
        text = new


if __name__ == "__main__":
    main()
