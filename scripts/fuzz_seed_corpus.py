#!/usr/bin/env python3
"""Seeds fuzz/corpus/<target>/ from the test fixtures (standard library only).

Run once before the first fuzzing session; libFuzzer then grows the corpus, and
`cargo +nightly fuzz cmin -s none -a <target>` shrinks it again before it is committed (see
docs/RELIABILITY.md). Files are named by their SHA-1, as libFuzzer names its own.
"""

import hashlib
import pathlib
import zipfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIX = ROOT / "crates/invert-model/tests/fixtures"
CORPUS = ROOT / "fuzz/corpus"


def put(target: str, data: bytes) -> None:
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


def pickles_of(path: pathlib.Path):
    """The pickles inside a torch file: data.pkl of a zip, or the whole legacy file."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                if name.endswith(".pkl"):
                    yield z.read(name)
    else:
        yield path.read_bytes()


def main() -> None:
    # Also the folders of diffusers' two-file SDXL form.
    embeddings = sorted(p for p in (FIX / "embeddings").rglob("*") if p.is_file())
    torch = sorted((FIX / "torch").iterdir())
    for f in embeddings + torch:
        if f.suffix in (".json", ".md"):
            continue
        data = f.read_bytes()
        put("embedding_format", data)
        if f.suffix == ".safetensors":
            put("safetensors_header", data)
        if f.suffix == ".png":
            put("png_embedding", data)
        if f.suffix in (".pt", ".bin", ".ckpt"):
            for p in pickles_of(f):
                put("pickle", p)


if __name__ == "__main__":
    main()
