#!/usr/bin/python3
"""gen-context.py OUTDIR [SCALE]: the copy-many benchmark's build context.

Writes OUTDIR (must not exist): 20,000 entries, ~150 MB, in 280 directories:
  15,700 files of 256 B-4 KiB, 4,050 of 4-36 KiB, 130 of 128-384 KiB, half of them
  word-salad text (gzip ~3:1, like source code), half random bytes (incompressible);
  3 % executable; 100 empty files; 20 relative symlinks (18 to files, 2 to directories).
Deterministic: fixed seed, every mtime = BENCH_EPOCH (default 1700000000), modes set
explicitly (no umask dependence), so every run writes the same bytes and metadata.
SCALE (default 1) multiplies the file counts (e.g. 0.05 for a quick try).
Idea from /work/shared/bench/workloads/copy-many/gen-context.py; not the same tree.
"""
import os
import random
import sys

if len(sys.argv) not in (2, 3):
    sys.exit(__doc__.splitlines()[0])
out = sys.argv[1]
scale = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
epoch = int(os.environ.get("BENCH_EPOCH", "1700000000"))
rng = random.Random(20261202)
os.makedirs(out)

syll = ["ka", "to", "ri", "en", "lo", "mu", "sa", "de", "ni", "por", "tra", "ex", "co",
        "an", "il", "ver", "st", "qu", "fn", "let", "mut", "impl"]
words = sorted({"".join(rng.choice(syll) for _ in range(rng.randint(1, 4))) for _ in range(3000)})
words += ["{", "}", "(", ")", "=", ";", "return", "if", "for", "self", "0", "1", "None",
          "\n", "\n", "\n    ", "\n        "]


def text(n):
    """n bytes of word salad."""
    parts, size = [], 0
    while size < n:
        chunk = " ".join(rng.choices(words, k=1024))
        parts.append(chunk)
        size += len(chunk) + 1
    return " ".join(parts)[:n].encode()


# 16 x 16 package dirs + 16 top dirs + 8 deep chains of 3 = 296 directories
dirs = []
for a in range(16):
    top = os.path.join(out, f"pkg{a:02d}")
    for b in range(16):
        dirs.append(os.path.join(top, f"mod{b:02d}"))
for i in range(8):
    dirs.append(os.path.join(out, f"pkg{i:02d}", "deep", "er", f"level{i}"))
for d in dirs:
    os.makedirs(d, exist_ok=True)

classes = [(15700, 256, 4096), (4050, 4096, 36864), (130, 131072, 393216)]
files, total = [], 0
for count, lo, hi in classes:
    for _ in range(round(count * scale)):
        size = rng.randint(lo, hi)
        d = rng.choice(dirs)
        kind = "txt" if rng.random() < 0.5 else "bin"
        path = os.path.join(d, f"f{len(files):05d}.{kind}")
        with open(path, "wb") as f:
            f.write(text(size) if kind == "txt" else rng.randbytes(size))
        os.chmod(path, 0o755 if rng.random() < 0.03 else 0o644)
        files.append(path)
        total += size
for i in range(round(100 * scale) or 1):
    path = os.path.join(rng.choice(dirs), f"empty{i:03d}")
    open(path, "wb").close()
    os.chmod(path, 0o644)
for i in range(18):
    target = rng.choice(files)
    os.symlink(os.path.basename(target), os.path.join(os.path.dirname(target), f"link{i:02d}"))
os.symlink("pkg00/mod00", os.path.join(out, "current"))
os.symlink("../mod01", os.path.join(out, "pkg03", "mod02", "sibling"))

nfiles = ndirs = nlinks = 0
for root, dnames, fnames in os.walk(out, topdown=False):
    for name in fnames + dnames:
        p = os.path.join(root, name)
        if os.path.islink(p):
            nlinks += 1
        elif os.path.isdir(p):
            ndirs += 1
            os.chmod(p, 0o755)
        else:
            nfiles += 1
        os.utime(p, (epoch, epoch), follow_symlinks=False)
os.chmod(out, 0o755)
os.utime(out, (epoch, epoch))
print(f"{out}: {nfiles} files ({total / 1e6:.1f} MB), {ndirs} dirs, {nlinks} symlinks")
