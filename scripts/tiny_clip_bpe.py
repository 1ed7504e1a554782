"""The tiny CLIP BPE of the tiny test models (tiny-sd1, tiny-sdxl): a truncated copy of invert's bundled
CLIP tokenizer (crates/invert-model/assets/clip-tokenizer, OpenAI's id layout) with 1000 ids, so that a
tiny text encoder's token table has 1000 rows instead of 49,408 (32 KB instead of 3.2 MB at width 32, F16).

OpenAI's layout: 0..255 the bytes_to_unicode characters, 256..511 the same + "</w>", 512.. one token per
merge in merge order, then <|startoftext|> 49406, <|endoftext|> 49407. Kept: ids 0..997 unchanged (the 512
byte tokens and the first 486 merges), then <|startoftext|> = 998, <|endoftext|> = 999. Any text still
tokenizes (the byte tokens cover every character); words just split into more pieces than with the full BPE.

Used by make_fixtures.py (tiny-sd1/tokenizer) and make_sdxl_pipeline_fixtures.py (tiny-sdxl/tokenizer,
tokenizer_2). Deterministic.
"""
import json
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLED_TOKENIZER = os.path.join(ROOT, "crates/invert-model/assets/clip-tokenizer/tokenizer.json")

N_BYTE_TOKENS = 512  # 0..255 the bytes_to_unicode characters, 256..511 the same + "</w>"
N_MERGES = 486  # the first 486 merges, ids 512..997 in merge order
BOS = N_BYTE_TOKENS + N_MERGES  # 998 <|startoftext|>
EOS = BOS + 1  # 999 <|endoftext|>
VOCAB = EOS + 1  # 1000


def _check(cond, msg):
    if not cond:
        sys.exit(f"check failed: {msg}")


def tiny_vocab_and_merges():
    """(vocab, merges) of the truncated BPE."""
    with open(BUNDLED_TOKENIZER, encoding="utf-8") as f:
        model = json.load(f)["model"]
    full, merges = model["vocab"], [tuple(m) for m in model["merges"]]
    _check(len(full) == 49408 and full["<|startoftext|>"] == 49406 and full["<|endoftext|>"] == 49407,
           "bundled tokenizer: OpenAI's 49408-id layout")
    by_id = {i: t for t, i in full.items()}
    _check(sorted(by_id) == list(range(49408)), "bundled tokenizer: ids 0..49407")
    _check(all(by_id[256 + i] == by_id[i] + "</w>" for i in range(256)), "bundled tokenizer: byte tokens")
    vocab = {by_id[i]: i for i in range(BOS)}
    merges = merges[:N_MERGES]
    for i, (a, b) in enumerate(merges):  # every kept merge joins two earlier tokens into token 512 + i
        _check(vocab.get(a, BOS) < N_BYTE_TOKENS + i and vocab.get(b, BOS) < N_BYTE_TOKENS + i
               and vocab.get(a + b) == N_BYTE_TOKENS + i, f"merge {i} {a} {b}")
    vocab["<|startoftext|>"] = BOS
    vocab["<|endoftext|>"] = EOS
    _check(len(vocab) == VOCAB and sorted(vocab.values()) == list(range(VOCAB)), "tiny vocab ids")
    return vocab, merges


def write_tokenizer_folder(dest, configs_from, pad_token):
    """A classic slow-tokenizer folder: vocab.json + merges.txt, and the published model's own
    tokenizer_config.json / special_tokens_map.json copied byte for byte from `configs_from` (a folder of
    configs/, e.g. configs/sd15/tokenizer), whose pad token must be `pad_token`."""
    vocab, merges = tiny_vocab_and_merges()
    os.makedirs(dest)
    with open(os.path.join(dest, "vocab.json"), "w", encoding="utf-8") as f:
        f.write(json.dumps(vocab, ensure_ascii=False))
    with open(os.path.join(dest, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(os.path.join(configs_from, name), os.path.join(dest, name))
    with open(os.path.join(dest, "tokenizer_config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    _check(cfg["model_max_length"] == 77 and cfg["do_lower_case"] is True and cfg["pad_token"] == pad_token,
           f"{dest}: tokenizer config")
