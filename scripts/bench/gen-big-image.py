#!/usr/bin/python3
"""gen-big-image.py OUTDIR [LAYERS [LAYER_MB]]: the pull benchmark's build context.

Writes OUTDIR (must not exist) with one directory per layer, layer1/ ... layerN/
(default N = 6), each holding LAYER_MB (default 50) MB in two files: random.bin, half
of it random bytes (incompressible), and text.txt, the other half line-oriented text
(gzip ~5:1, like logs). `COPY layerI/ /layerI/` once per layer makes an
N-layer image of N x LAYER_MB MB (uncompressed).
Deterministic: fixed seeds, every mtime = BENCH_EPOCH (default 1700000000), modes set
explicitly, so every run writes the same bytes and an rbuild build of it under a fixed
SOURCE_DATE_EPOCH has the same digest.
"""
import os
import random
import sys

if len(sys.argv) not in (2, 3, 4):
    sys.exit(__doc__.splitlines()[0])
out = sys.argv[1]
layers = int(sys.argv[2]) if len(sys.argv) > 2 else 6
layer_bytes = int(float(sys.argv[3]) * 1_000_000) if len(sys.argv) > 3 else 50_000_000
epoch = int(os.environ.get("BENCH_EPOCH", "1700000000"))
os.makedirs(out)

WORDS = ("rbuild layer bench pull blob digest manifest registry chunk gzip sha256 "
         "request response status ok cached fresh stale index config tag push").split()


def text(rng, n):
    """n bytes of log-like lines: a counter, a level, eight words from a small vocabulary."""
    parts, size, i = [], 0, 0
    levels = ["INFO", "DEBUG", "WARN", "INFO", "INFO"]
    while size < n:
        line = f"{i:09d} {rng.choice(levels)} " + " ".join(rng.choices(WORDS, k=8)) + "\n"
        parts.append(line)
        size += len(line)
        i += 1
    return "".join(parts).encode()[:n]


total = 0
for layer in range(1, layers + 1):
    rng = random.Random(20261202 * 100 + layer)
    d = os.path.join(out, f"layer{layer}")
    os.makedirs(d)
    half = layer_bytes // 2
    for name, data in (("random.bin", rng.randbytes(half)), ("text.txt", text(rng, layer_bytes - half))):
        path = os.path.join(d, name)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, 0o644)
        os.utime(path, (epoch, epoch))
        total += len(data)
    os.chmod(d, 0o755)
    os.utime(d, (epoch, epoch))
os.chmod(out, 0o755)
os.utime(out, (epoch, epoch))
print(f"gen-big-image: {layers} layers, {total / 1e6:.1f} MB in {out}", file=sys.stderr)
