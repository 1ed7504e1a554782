#!/usr/bin/env python3
"""Derive invert's bundled CLIP tokenizer from OpenAI's BPE merge list, without any model hub.

Source: `bpe_simple_vocab_16e6.txt.gz` (MIT, Copyright (c) 2021 OpenAI), taken from the installed
`open_clip` package (open_clip_torch wheel; clip-anytorch ships a byte-identical copy). Its sha256 is
checked, so a different file is refused.

The id layout is exactly OpenAI's `SimpleTokenizer.__init__` (CLIP's simple_tokenizer.py):
    0..255        the 256 `bytes_to_unicode` characters
    256..511      the same characters + '</w>'
    512..49405    the 48,894 merges (file lines 1..48894; line 0 is a version header), in file order
    49406         <|startoftext|>
    49407         <|endoftext|>
The tokenizer pipeline is transformers' own `CLIPTokenizer` (transformers 5.x: NFC, \\s+ -> ' ',
lowercase, CLIP split regex, byte-level, BPE with '</w>'), saved with the `tokenizers` library.

usage (from the repo root):
    /work/venv/bin/python scripts/make_clip_tokenizer.py [OUT_DIR] [--vocab-merges]
OUT_DIR defaults to crates/invert-model/assets/clip-tokenizer. Writes there:
    tokenizer.json            the full pipeline, compact JSON (what invert embeds)
    tokenizer_config.json     model_max_length 77 and the special tokens, as transformers reads them
    special_tokens_map.json   bos/eos/unk/pad = <|startoftext|>/<|endoftext|> (SD 1.x padding)
    LICENSE                   OpenAI CLIP's MIT notice (copied from the clip-anytorch wheel)
    README.md                 provenance and sha256 of every file
    vocab.json, merges.txt    only with --vocab-merges (the classic slow-tokenizer files; invert does
                              not need them, `ClipTokenizer::from_dir` can read such folders)
The run is deterministic: a rebuild gives the same bytes.
"""
import gzip
import hashlib
import json
import os
import sys

SRC_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
N_MERGES = 49152 - 256 - 2  # OpenAI: merges[1:49152-256-2+1]
DEFAULT_OUT = os.path.join("crates", "invert-model", "assets", "clip-tokenizer")
SPECIAL = {
    "bos_token": "<|startoftext|>",
    "eos_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
    "pad_token": "<|endoftext|>",
}


def bytes_to_unicode():
    """OpenAI's byte -> printable character table (simple_tokenizer.py, also GPT-2's)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def find_source():
    import open_clip

    path = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    data = open(path, "rb").read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SRC_SHA256:
        sys.exit(f"{path}: sha256 {digest}, expected {SRC_SHA256}; not the OpenAI CLIP merge list")
    return path, data


def find_license():
    """The MIT notice of OpenAI CLIP, as shipped in the clip-anytorch wheel's dist-info."""
    from importlib import metadata

    text = metadata.distribution("clip-anytorch").read_text("LICENSE")
    if not text or "Copyright (c) 2021 OpenAI" not in text:
        sys.exit("clip-anytorch's LICENSE not found or not OpenAI's MIT notice; pip install clip-anytorch")
    return text


def derive(gz_bytes):
    lines = gzip.decompress(gz_bytes).decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : N_MERGES + 1]]
    assert len(merges) == N_MERGES and all(len(m) == 2 for m in merges)
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408 and len(set(vocab)) == 49408
    return {t: i for i, t in enumerate(vocab)}, merges


def write(path, data):
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode("utf-8"))


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    vocab_merges = "--vocab-merges" in sys.argv
    out = args[0] if args else DEFAULT_OUT
    os.makedirs(out, exist_ok=True)
    src_path, gz = find_source()
    encoder, merges = derive(gz)

    import tokenizers
    import transformers
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(vocab=encoder, merges=merges, model_max_length=77, **SPECIAL)
    # Compact JSON: 1.7 MB instead of 3.6 MB pretty-printed; the content is the same.
    tok.backend_tokenizer.save(os.path.join(out, "tokenizer.json"), pretty=False)
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        **SPECIAL,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": False,
    }
    write(os.path.join(out, "tokenizer_config.json"), json.dumps(config, indent=2) + "\n")
    write(os.path.join(out, "special_tokens_map.json"), json.dumps(SPECIAL, indent=2) + "\n")
    write(os.path.join(out, "LICENSE"), find_license())
    if vocab_merges:
        write(os.path.join(out, "vocab.json"), json.dumps(encoder, ensure_ascii=False))
        write(os.path.join(out, "merges.txt"), "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))

    # Self-check: the saved file, reloaded, gives the ids of OpenAI's table and of transformers.
    raw = tokenizers.Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    assert raw.get_vocab_size() == 49408
    ids = raw.encode("a photo of a cat").ids
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407], ids
    reloaded = CLIPTokenizer.from_pretrained(out)
    assert reloaded.model_max_length == 77 and reloaded.pad_token_id == 49407
    assert reloaded("toy", add_special_tokens=False).input_ids == [5988]

    files = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "LICENSE"]
    if vocab_merges:
        files += ["vocab.json", "merges.txt"]
    rows = []
    for name in files:
        data = open(os.path.join(out, name), "rb").read()
        rows.append(f"| `{name}` | {len(data):,} | `{hashlib.sha256(data).hexdigest()}` |")
    readme = README.format(
        sha=SRC_SHA256,
        size=len(gz),
        tf=transformers.__version__,
        tk=tokenizers.__version__,
        rows="\n".join(rows),
    )
    write(os.path.join(out, "README.md"), readme)
    print(f"source {src_path} ({len(gz)} bytes, sha256 {SRC_SHA256})")
    print("\n".join(rows))


README = """# CLIP tokenizer (OpenAI BPE vocabulary)

The tokenizer of the CLIP ViT-L/14 text encoder used by Stable Diffusion 1.x. SD 2.x (OpenCLIP
ViT-H/14) uses the same vocabulary and merges, and pads with `!` (id 0) instead of `<|endoftext|>`.
invert embeds `tokenizer.json` (see `crates/invert-model/src/tokenizer/`) and uses it for models
whose folder has no `tokenizer/` and for single-file checkpoints.

## Where the files come from

Derived, without any model hub, from OpenAI's BPE merge list `bpe_simple_vocab_16e6.txt.gz`
({size:,} bytes, sha256 `{sha}`), the file shipped inside the PyPI wheels `open_clip_torch`
(`open_clip/`) and `clip-anytorch` (`clip/`), by `scripts/make_clip_tokenizer.py`:

- ids 0-255: the 256 `bytes_to_unicode` characters; 256-511: the same + `</w>`; 512-49405: the
  48,894 merges in file order; 49406 `<|startoftext|>`; 49407 `<|endoftext|>` (49,408 ids), exactly
  as OpenAI's `SimpleTokenizer` in CLIP's `simple_tokenizer.py` builds its table;
- the pipeline (normalizer NFC, `\\s+` -> ` `, lowercase; CLIP split regex; byte-level; BPE with the
  `</w>` end-of-word suffix) is the one transformers' `CLIPTokenizer` builds, here transformers {tf},
  saved with tokenizers {tk} as compact JSON;
- `tokenizer_config.json`: `model_max_length` 77 (75 tokens + BOS + EOS) and the special tokens.

Rebuild (deterministic, same bytes): `/work/venv/bin/python scripts/make_clip_tokenizer.py`.

| file | bytes | sha256 |
|---|---:|---|
{rows}

## License

OpenAI's CLIP code and BPE vocabulary are MIT licensed, Copyright (c) 2021 OpenAI; see `LICENSE`
(copied from the clip-anytorch wheel). The derived files carry the same notice.
"""

if __name__ == "__main__":
    main()
