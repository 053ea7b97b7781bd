#!/usr/bin/env python3
"""gen-tree-tar.py OUT.tar [FILES] [FILE_KIB]: a tar of FILES files (default 50,000) of
FILE_KIB KiB each (default 21: about 1 GiB in all) under d0/ .. d499/, written as a stream
(nothing is held in memory). Contents are text, distinct per file; every mtime is
1700000000, so the tar is the same on every machine."""

import io
import sys
import tarfile

out = sys.argv[1]
files = int(sys.argv[2]) if len(sys.argv) > 2 else 50_000
size = (int(sys.argv[3]) if len(sys.argv) > 3 else 21) * 1024
dirs = 500

with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as t:
    for d in range(dirs):
        info = tarfile.TarInfo(f"d{d}")
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
        t.addfile(info)
    for i in range(files):
        line = f"file {i} of the diff benchmark's tree\n".encode()
        body = (line * (size // len(line) + 1))[:size]
        info = tarfile.TarInfo(f"d{i % dirs}/f{i}")
        info.size, info.mode, info.mtime = size, 0o644, 1_700_000_000
        t.addfile(info, io.BytesIO(body))
