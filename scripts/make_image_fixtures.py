#!/usr/bin/env python3
"""Generate the small image fixtures for invert-train's data loading tests (Pillow).

Run from the repository root with the reference venv:
    /work/venv/bin/python scripts/make_image_fixtures.py

Writes crates/invert-train/tests/fixtures/images/ (every file is deterministic and a few KiB):

- `cmyk.jpg`: 16x16 CMYK JPEG (Pillow writes Adobe-style inverted CMYK with an APP14 marker).
  Top half C=0 M=255 Y=255 K=0 (red), bottom half C=255 M=255 Y=0 K=0 (blue).
- `exif_rotate6.jpg`: stored 32x16 (landscape), EXIF Orientation = 6 ("rotate 90 CW to display"),
  so it must come out 16x32 (portrait). Stored quadrants: top-left red, bottom-left green,
  right half white. Displayed upright: top-right red, top-left green, bottom half white.
- `truncated_progressive.jpg`: a 64x64 progressive JPEG cut to 60 % of its bytes.
- `palette_trns.png`: 32x32 palette ("P") PNG with a tRNS chunk: left half palette entry 0 (red,
  fully transparent), right half entry 1 (blue, opaque).
- `animated.png` (APNG) and `animated.webp`: 16x16, two frames, red then blue.
- `resize_src.png`: 48x32 smooth RGB test pattern, and `resize_pil_bicubic_16.png`: the diffusers
  `textual_inversion.py` preprocessing of it at resolution 16 with `--center_crop` (square center
  crop 32x32, then `Image.resize((16, 16), resample=PIL.Image.BICUBIC)`), used to check that
  invert's resize stays close to what diffusers feeds the VAE.
"""

import io
import math
import os

from PIL import Image

OUT = os.path.join("crates", "invert-train", "tests", "fixtures", "images")


def cmyk_jpeg():
    img = Image.new("CMYK", (16, 16))
    for y in range(16):
        for x in range(16):
            img.putpixel((x, y), (0, 255, 255, 0) if y < 8 else (255, 255, 0, 0))
    img.save(os.path.join(OUT, "cmyk.jpg"), quality=95)


def exif_rotated_jpeg():
    img = Image.new("RGB", (32, 16), (255, 255, 255))
    for y in range(16):
        for x in range(16):
            img.putpixel((x, y), (255, 0, 0) if y < 8 else (0, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    img.save(os.path.join(OUT, "exif_rotate6.jpg"), quality=95, exif=exif.tobytes())


def truncated_progressive_jpeg():
    img = Image.new("RGB", (64, 64))
    for y in range(64):
        for x in range(64):
            img.putpixel((x, y), ((x * 4) % 256, (y * 4) % 256, ((x + y) * 2) % 256))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, progressive=True)
    data = buf.getvalue()
    with open(os.path.join(OUT, "truncated_progressive.jpg"), "wb") as f:
        f.write(data[: len(data) * 6 // 10])


def palette_png():
    img = Image.new("P", (32, 32))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)
    for y in range(32):
        for x in range(32):
            img.putpixel((x, y), 0 if x < 16 else 1)
    img.save(os.path.join(OUT, "palette_trns.png"), transparency=bytes([0, 255]))


def animations():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    for name, extra in (("animated.png", {}), ("animated.webp", {"lossless": True})):
        frames[0].save(
            os.path.join(OUT, name), save_all=True, append_images=frames[1:], duration=100, loop=0,
            **extra,
        )


def resize_reference():
    w, h = 48, 32
    img = Image.new("RGB", (w, h))
    for y in range(h):
        for x in range(w):
            r = 128 + 100 * math.sin(x / 5.0)
            g = 128 + 100 * math.cos(y / 4.0)
            b = 128 + 60 * math.sin((x + y) / 7.0)
            img.putpixel((x, y), (int(r), int(g), int(b)))
    img.save(os.path.join(OUT, "resize_src.png"))
    # diffusers textual_inversion.py, center_crop=True:
    crop = min(h, w)
    box = ((w - crop) // 2, (h - crop) // 2, (w + crop) // 2, (h + crop) // 2)
    out = img.crop(box).resize((16, 16), resample=Image.BICUBIC)
    out.save(os.path.join(OUT, "resize_pil_bicubic_16.png"))


def main():
    os.makedirs(OUT, exist_ok=True)
    cmyk_jpeg()
    exif_rotated_jpeg()
    truncated_progressive_jpeg()
    palette_png()
    animations()
    resize_reference()
    for name in sorted(os.listdir(OUT)):
        print(name, os.path.getsize(os.path.join(OUT, name)))


if __name__ == "__main__":
    main()
