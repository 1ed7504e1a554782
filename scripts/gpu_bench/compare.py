#!/usr/bin/env python3
"""Per-pixel difference of two images of the same size: prints one JSON line with the largest
and the mean absolute difference (in 1/255 steps) and the share of differing values.

usage: python compare.py REFERENCE.png OTHER.png
"""
import json
import sys

from PIL import Image

a = Image.open(sys.argv[1]).convert("RGB")
b = Image.open(sys.argv[2]).convert("RGB")
if a.size != b.size:
    sys.exit(f"sizes differ: {a.size} vs {b.size}")
d = [abs(x - y) for x, y in zip(a.tobytes(), b.tobytes())]
print(json.dumps(dict(max=max(d), mean=round(sum(d) / len(d), 3), differing=round(sum(v > 0 for v in d) / len(d), 4))))
