#!/usr/bin/env python3
"""Four simple training pictures (a coloured shape on a grey ground) of SIZE x SIZE.

usage: python images.py OUT_DIR SIZE
"""
import pathlib
import sys

from PIL import Image, ImageDraw

out, size = pathlib.Path(sys.argv[1]), int(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
for i, colour in enumerate([(200, 30, 30), (30, 160, 60), (40, 60, 200), (220, 180, 40)]):
    im = Image.new("RGB", (size, size), (225, 225, 225))
    s = size / 64
    box = (int((10 + 3 * i) * s), int(12 * s), int((50 + 2 * i) * s), int(54 * s))
    draw = ImageDraw.Draw(im)
    (draw.ellipse if i % 2 == 0 else draw.rectangle)(box, fill=colour)
    im.save(out / f"img{i}.png")
