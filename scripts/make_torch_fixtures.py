#!/usr/bin/env python3
"""Generate the tiny torch checkpoint fixtures used by invert-model's torch reader tests.

Run with a Python that has torch:  python scripts/make_torch_fixtures.py
Writes crates/invert-model/tests/fixtures/torch/*.pt|*.ckpt and expected.json (the values the
Rust reader must produce, tensors flattened to f32 in row-major order).
"""
import collections
import json
import os
import pathlib

import torch

OUT = pathlib.Path(__file__).resolve().parent.parent / "crates/invert-model/tests/fixtures/torch"
DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.uint8: "U8",
}


def describe(tensors, ints=None, strs=None):
    out = {"tensors": {}, "ints": ints or {}, "strs": strs or {}}
    for name, t in tensors.items():
        t = t.detach()
        entry = {"dtype": DTYPES[t.dtype], "shape": list(t.shape)}
        if t.dtype.is_floating_point:
            entry["values"] = [float(v) for v in t.float().reshape(-1).tolist()]
        else:
            entry["ints"] = [int(v) for v in t.reshape(-1).tolist()]
        out["tensors"][name] = entry
    return out


def state_dict(dtype, gen):
    base = torch.randn(4, 5, generator=gen).to(dtype)
    other = torch.randn(6, generator=gen).to(dtype)
    return collections.OrderedDict(
        [
            ("base", base),
            ("transposed", base.t()),  # non-contiguous view of base's storage
            ("slice", base[1:3, 2:]),  # storage offset + row stride 5
            ("strided", other[1::2]),  # offset 1, stride 2 into its own storage
            ("scalar", torch.tensor(1.5, dtype=dtype)),
            ("empty", torch.zeros(0, 3, dtype=dtype)),
        ]
    )


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned-by-checkpoint",))


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(1234)
    expected = {}

    for dtype, fname in [
        (torch.float32, "zip_f32.pt"),
        (torch.float16, "zip_f16.pt"),
        (torch.bfloat16, "zip_bf16.pt"),
    ]:
        sd = state_dict(dtype, gen)
        torch.save(sd, OUT / fname)
        expected[fname] = describe(sd)

    # Mixed dtypes incl. integers and f64, saved with pickle protocol 4 (FRAME, MEMOIZE,
    # SHORT_BINUNICODE, STACK_GLOBAL).
    mixed = {
        "f64": torch.randn(2, 3, generator=gen, dtype=torch.float64),
        "i64": torch.arange(6, dtype=torch.int64).reshape(2, 3).t(),
        "i32": torch.tensor([-7, 8, 2**31 - 1], dtype=torch.int32),
        "u8": torch.tensor([0, 200, 255], dtype=torch.uint8),
        "nested": {"deeper": {"t": torch.randn(2, generator=gen)}},
        # A tensor carrying a Python attribute pickles through _rebuild_from_type_v2.
        "with_attr": torch.randn(3, generator=gen),
    }
    mixed["with_attr"].note = "hello"
    torch.save(mixed, OUT / "zip_proto4.pt", pickle_protocol=4)
    flat = {k: v for k, v in mixed.items() if k != "nested"}
    flat["nested.deeper.t"] = mixed["nested"]["deeper"]["t"]
    expected["zip_proto4.pt"] = describe(flat)

    # A Lightning-style checkpoint whose state_dict comes from Module.state_dict() (an
    # OrderedDict carrying `_metadata`, pickled with BUILD).
    m = torch.nn.Module()
    m.model = torch.nn.Module()
    m.model.x = torch.nn.Linear(3, 2)
    with torch.no_grad():
        m.model.x.weight.copy_(torch.randn(2, 3, generator=gen))
        m.model.x.bias.copy_(torch.randn(2, generator=gen))
    ckpt = {"state_dict": m.state_dict(), "global_step": 5, "epoch": 1}
    torch.save(ckpt, OUT / "checkpoint.ckpt")
    expected["checkpoint.ckpt"] = describe(
        {"state_dict." + k: v for k, v in ckpt["state_dict"].items()},
        ints={"global_step": 5, "epoch": 1},
    )

    # The legacy (pre-1.6, non-zip) format.
    legacy = state_dict(torch.float32, gen)
    legacy["half"] = torch.randn(3, 2, generator=gen).half().t()
    legacy["long"] = torch.tensor([1, -2, 3], dtype=torch.int64)
    torch.save(legacy, OUT / "legacy.pt", _use_new_zipfile_serialization=False)
    expected["legacy.pt"] = describe(legacy)

    # A1111 textual-inversion embeddings, both formats.
    for fname, use_zip in [("a1111_emb.pt", True), ("a1111_emb_legacy.pt", False)]:
        param = torch.nn.Parameter(torch.randn(2, 8, generator=gen))
        emb = {
            "string_to_token": {"*": 265},
            "string_to_param": torch.nn.ParameterDict({"*": param}),
            "name": "my-emb",
            "step": 100,
            "sd_checkpoint": "abcd",
            "sd_checkpoint_name": "model",
        }
        torch.save(emb, OUT / fname, _use_new_zipfile_serialization=use_zip)
        expected[fname] = describe(
            {"string_to_param.*": param},
            ints={"string_to_token.*": 265, "step": 100},
            strs={"name": "my-emb", "sd_checkpoint": "abcd", "sd_checkpoint_name": "model"},
        )

    # A malicious checkpoint: loading it with pickle would run os.system.
    torch.save({"w": torch.zeros(2), "payload": Evil()}, OUT / "malicious.pt")
    expected["malicious.pt"] = {"unsafe_global": f"{os.system.__module__}.system"}

    with open(OUT / "expected.json", "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(expected)} fixtures to {OUT} ({total} bytes)")


if __name__ == "__main__":
    main()
