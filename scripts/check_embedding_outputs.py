#!/usr/bin/env python3
"""Check that the embedding files invert writes load in torch, safetensors, diffusers and A1111.

    INVERT_EMBED_OUT=/tmp/emb cargo test -p invert-model --release --test embedding_formats \
        -- --ignored write_outputs_for_python_check
    /work/venv/bin/python scripts/check_embedding_outputs.py /tmp/emb

DIR holds invert_diffusers.safetensors, invert_a1111.pt, invert_kohya.safetensors and
expected.json (written by the Rust test). Checks, for each file, that the values come back
bit-exact as float32:
- safetensors: safe_open / load_file, dtype, shape, metadata;
- A1111 .pt: torch.load with weights_only=True and False (and mmap=True), the dict layout A1111
  writes; the zip entries (names A1111's modules/safe.py accepts, STORED, 64-byte aligned data,
  as torch writes them); data.pkl byte-compared with what torch.save writes for the same dict;
  a restricted unpickle with A1111's allow-list (a re-implementation of its check_pt);
- A1111's loader logic (EmbeddingDatabase.load_from_file, re-implemented) on all three files;
- diffusers: StableDiffusionPipeline.load_textual_inversion into the tiny SD1 fixture model
  (with its own tokenizer/), the token rows in the text encoder, and a prompt
  with the token encoded through encode_prompt.
Exits non-zero on the first failure.
"""
import io
import json
import os
import pathlib
import pickle
import re
import sys
import zipfile

import numpy as np
import torch

REPO = pathlib.Path(__file__).resolve().parent.parent
TINY_SD1 = REPO / "crates/invert-model/tests/fixtures/tiny-sd1"

# A1111 modules/safe.py (current master): the zip entries and pickle globals it accepts.
A1111_ZIP_NAMES = re.compile(r"^([^/]+)/((data/\d+)|version|byteorder|\.data/serialization_id|data\.pkl)$")
A1111_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_device_tensor_from_numpy"),
    ("torch.nn.modules.container", "ParameterDict"),
    ("_codecs", "encode"),
    ("__builtin__", "set"),
} | {("torch", n) for n in ["FloatStorage", "HalfStorage", "IntStorage", "LongStorage",
                             "DoubleStorage", "ByteStorage", "float32", "BFloat16Storage"]}

LOG = []


def say(msg):
    print(msg)
    LOG.append(msg)


def check(cond, msg):
    if not cond:
        raise SystemExit(f"FAIL: {msg}")


def same(t, want, what):
    check(t.dtype == torch.float32, f"{what}: dtype {t.dtype}")
    check(list(t.shape) == list(want.shape), f"{what}: shape {list(t.shape)} vs {list(want.shape)}")
    check(torch.equal(t.detach().cpu(), want), f"{what}: values differ (max diff "
          f"{(t.detach().cpu() - want).abs().max().item()})")


def expected_tensor(e):
    return torch.tensor(e["values"], dtype=torch.float32).reshape(e["shape"])


def check_safetensors(path, key, e):
    from safetensors import safe_open
    from safetensors.torch import load_file

    want = expected_tensor(e)
    with safe_open(str(path), framework="pt") as f:
        check(list(f.keys()) == [key], f"{path.name}: keys {list(f.keys())}")
        same(f.get_tensor(key), want, f"{path.name} safe_open")
        meta = f.metadata()
    sd = load_file(str(path))
    same(sd[key], want, f"{path.name} load_file")
    check(meta.get("format") == "pt", f"{path.name}: metadata format {meta.get('format')}")
    check(meta.get("token") == e["token"], f"{path.name}: metadata token")
    check(meta.get("vectors") == str(e["shape"][0]), f"{path.name}: metadata vectors")
    check(meta.get("step") == str(e["step"]), f"{path.name}: metadata step")
    check(meta.get("base_model") == e["base_model"], f"{path.name}: metadata base_model")
    check(meta.get("base_model_hash") == e["base_model_hash"], f"{path.name}: metadata hash")
    check(meta.get("invert_version") == e["invert_version"], f"{path.name}: metadata version")
    say(f"- {path.name}: safe_open + load_file: key `{key}` F32{e['shape']} bit-exact; "
        f"metadata {json.dumps(meta, sort_keys=True)}")


class A1111Unpickler(pickle.Unpickler):
    """The allow-list check of A1111's RestrictedUnpickler (re-implemented)."""

    def persistent_load(self, pid):
        check(pid[0] == "storage", f"persistent id {pid}")
        return torch.storage.TypedStorage(_internal=True)

    def find_class(self, module, name):
        check((module, name) in A1111_GLOBALS, f"global {module}.{name} is forbidden by A1111")
        return super().find_class(module, name)


def check_a1111_pt(path, e):
    want = expected_tensor(e)
    for kwargs in ({"weights_only": True}, {"weights_only": False}, {"weights_only": True, "mmap": True}):
        d = torch.load(path, map_location="cpu", **kwargs)
        check(type(d) is dict, f"{path.name}: {type(d)}")
        check(list(d) == ["string_to_token", "string_to_param", "name", "step", "sd_checkpoint",
                          "sd_checkpoint_name"], f"{path.name}: keys {list(d)}")
        check(d["string_to_token"] == {"*": 265}, f"{path.name}: string_to_token {d['string_to_token']}")
        check(type(d["string_to_param"]) is dict and list(d["string_to_param"]) == ["*"],
              f"{path.name}: string_to_param")
        t = d["string_to_param"]["*"]
        same(t, want, f"{path.name} torch.load({kwargs})")
        check(t.is_contiguous() and not t.requires_grad, f"{path.name}: tensor layout")
        check(d["name"] == e["token"] and d["step"] == e["step"], f"{path.name}: name/step")
        check(d["sd_checkpoint"] == e["base_model_hash"] and d["sd_checkpoint_name"] == e["base_model"],
              f"{path.name}: sd_checkpoint fields")
    say(f"- {path.name}: torch.load weights_only=True, weights_only=False and mmap=True: "
        f"{{string_to_token: {{'*': 265}}, string_to_param: {{'*': F32{e['shape']}}}, name "
        f"{e['token']!r}, step {e['step']}, sd_checkpoint {e['base_model_hash']!r}, "
        f"sd_checkpoint_name {e['base_model']!r}}}, values bit-exact")

    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        for info in z.infolist():
            check(A1111_ZIP_NAMES.match(info.filename), f"{path.name}: A1111 refuses entry {info.filename}")
            check(info.compress_type == zipfile.ZIP_STORED, f"{path.name}: {info.filename} compressed")
            with open(path, "rb") as f:
                f.seek(info.header_offset + 26)
                n, m = np.frombuffer(f.read(4), "<u2")
            start = info.header_offset + 30 + int(n) + int(m)
            check(start % 64 == 0, f"{path.name}: {info.filename} data at {start}, not 64-aligned")
        ours = z.read("archive/data.pkl")
        check(z.read("archive/version") == b"3\n" and z.read("archive/byteorder") == b"little",
              f"{path.name}: version/byteorder")
        A1111Unpickler(io.BytesIO(ours)).load()
    buf = io.BytesIO()
    torch.save(torch.load(path, weights_only=True), buf)
    with zipfile.ZipFile(buf) as z:
        torch_names = z.namelist()
        theirs = z.read(next(n for n in torch_names if n.endswith("/data.pkl")))
    check(ours == theirs, f"{path.name}: data.pkl differs from torch.save's")
    say(f"- {path.name}: zip entries {names} (torch {torch.__version__} writes "
        f"{[n.split('/', 1)[1] for n in torch_names]}), all STORED with 64-byte aligned data, "
        "all accepted by A1111's safe.py name check; data.pkl is byte-identical to torch.save's "
        "for the same dict; A1111's restricted unpickler allow-list accepts it")


def check_torch_stress(path, ints):
    """invert's generic torch writer: 120 entries, >256 memo slots, every int encoding."""
    for weights_only in (True, False):
        d = torch.load(path, map_location="cpu", weights_only=weights_only)
        check(len(d) == 120, f"{path.name}: {len(d)} entries")
        for i in range(120):
            e = d[f"entry{i}"]
            t = e["t"]
            if i % 3 == 0:
                want = torch.tensor([i + k * 0.25 for k in range(6)], dtype=torch.float32)
            elif i % 3 == 1:
                want = torch.tensor([i - k for k in range(6)], dtype=torch.float32).half()
            else:
                want = torch.tensor([i * 1000 - k for k in range(6)], dtype=torch.int64)
            check(t.dtype == want.dtype and torch.equal(t, want.reshape(2, 3)), f"{path.name}: entry{i}.t")
            check(e["n"] == ints[i % len(ints)], f"{path.name}: entry{i}.n = {e['n']}")
            check(e["shared"] == "same string" and e[f"own{i}"] == f"value {i}", f"{path.name}: strings")
            check(e.get("late") == ("late string" if i >= 100 else None), f"{path.name}: late string")
            if i % 50 == 0:
                check(e["flag"] is (i % 100 == 0) and e["none"] is None, f"{path.name}: flag/none")
    say(f"- {path.name} (invert's generic torch zip writer, 120 nested dicts, {len(ints)} int "
        "encodings incl. LONG1, >256 memo entries with LONG_BINPUT/LONG_BINGET, F32/F16/I64 tensors): torch.load "
        "weights_only=True and False return every value exactly")


def a1111_load(path):
    """A1111 EmbeddingDatabase.load_from_file (re-implemented) for .pt/.bin/.safetensors."""
    from safetensors.torch import load_file

    name, ext = os.path.splitext(os.path.basename(path))
    if ext.upper() in [".SAFETENSORS"]:
        data = load_file(path, device="cpu")
    else:
        data = torch.load(path, map_location="cpu", weights_only=True)
    if "string_to_param" in data:
        param_dict = data["string_to_param"]
        param_dict = getattr(param_dict, "_parameters", param_dict)
        assert len(param_dict) == 1, "embedding file has multiple terms in it"
        emb = next(iter(param_dict.items()))[1]
        vec = emb.detach().to(dtype=torch.float32)
        shape, vectors = vec.shape[-1], vec.shape[0]
    elif type(data) == dict and "clip_g" in data and "clip_l" in data:
        raise AssertionError("SDXL")
    elif type(data) == dict and type(next(iter(data.values()))) == torch.Tensor:
        assert len(data.keys()) == 1, "embedding file has multiple terms in it"
        emb = next(iter(data.values()))
        if len(emb.shape) == 1:
            emb = emb.unsqueeze(0)
        vec = emb.detach().to(dtype=torch.float32)
        shape, vectors = vec.shape[-1], vec.shape[0]
    else:
        raise AssertionError(f"Couldn't identify {path} as textual inversion embedding")
    return name, vec, shape, vectors, data.get("step", None), data.get("sd_checkpoint", None), \
        data.get("sd_checkpoint_name", None)


def check_a1111_loader(path, e):
    name, vec, shape, vectors, step, ckpt, ckpt_name = a1111_load(str(path))
    same(vec, expected_tensor(e), f"{path.name} A1111 loader")
    check(shape == 32 and vectors == e["shape"][0], f"{path.name}: A1111 shape")
    extra = ""
    if path.suffix == ".pt":
        check(step == e["step"] and ckpt == e["base_model_hash"] and ckpt_name == e["base_model"],
              f"{path.name}: A1111 step/checkpoint")
        extra = f", step {step}, sd_checkpoint {ckpt!r}"
    say(f"- {path.name}: A1111 load_from_file logic: embedding `{name}` (file stem), "
        f"{vectors} vector(s) x {shape}{extra}, values bit-exact")


def check_diffusers(d, exp):
    import diffusers
    import transformers
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(  # with the folder's own tokenizer/
        TINY_SD1, variant="fp16", dtype=torch.float32,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    vocab0 = len(pipe.tokenizer)
    loads = [
        ("invert_diffusers.safetensors", {}),
        ("invert_a1111.pt", {}),
        ("invert_kohya.safetensors", {"token": exp["invert_kohya.safetensors"]["token"]}),
    ]
    for fname, kwargs in loads:
        e = exp[fname]
        pipe.load_textual_inversion(str(d / fname), **kwargs)
        n = e["shape"][0]
        tokens = [e["token"]] + [f"{e['token']}_{i}" for i in range(1, n)]
        ids = pipe.tokenizer.convert_tokens_to_ids(tokens)
        check(all(i >= vocab0 for i in ids), f"{fname}: tokens {tokens} -> ids {ids}")
        rows = pipe.text_encoder.get_input_embeddings().weight[ids]
        same(rows, expected_tensor(e), f"{fname} in diffusers' text encoder")
        prompt = pipe.maybe_convert_prompt(f"a photo of {e['token']}", pipe.tokenizer)
        check(prompt == "a photo of " + " ".join(tokens), f"{fname}: prompt {prompt!r}")
        with torch.no_grad():
            emb, _ = pipe.encode_prompt(f"a photo of {e['token']}", "cpu", 1, False)
        input_ids = pipe.tokenizer(prompt).input_ids
        check(all(i in input_ids for i in ids), f"{fname}: ids not in {input_ids}")
        check(torch.isfinite(emb).all() and list(emb.shape) == [1, 77, 32], f"{fname}: encode_prompt")
        how = ", token= given (without it diffusers names a kohya file `emb_params`)" if kwargs else ""
        say(f"- {fname}: StableDiffusionPipeline.load_textual_inversion into tiny-sd1{how}: tokens "
            f"{tokens} -> ids {ids}; text-encoder rows bit-exact; maybe_convert_prompt -> "
            f"{prompt!r}; encode_prompt -> finite [1, 77, 32]")
    return diffusers.__version__, transformers.__version__


def main():
    d = pathlib.Path(sys.argv[1])
    exp = json.loads((d / "expected.json").read_text())
    import safetensors

    files = sorted(k for k in exp if k.endswith((".pt", ".safetensors")))
    say(f"Checked {files} + torch_write_stress.pt written by invert {exp['invert_diffusers.safetensors']['invert_version']}:")
    check_safetensors(d / "invert_diffusers.safetensors", exp["invert_diffusers.safetensors"]["token"],
                      exp["invert_diffusers.safetensors"])
    check_safetensors(d / "invert_kohya.safetensors", "emb_params", exp["invert_kohya.safetensors"])
    check_a1111_pt(d / "invert_a1111.pt", exp["invert_a1111.pt"])
    for f in ["invert_diffusers.safetensors", "invert_a1111.pt", "invert_kohya.safetensors"]:
        check_a1111_loader(d / f, exp[f])
    check_torch_stress(d / "torch_write_stress.pt", exp["stress_ints"])
    dv, tv = check_diffusers(d, exp)
    say(f"Versions: python {sys.version.split()[0]}, torch {torch.__version__}, diffusers {dv}, "
        f"transformers {tv}, safetensors {safetensors.__version__}, numpy {np.__version__}.")
    say("ALL CHECKS PASSED")


if __name__ == "__main__":
    main()
