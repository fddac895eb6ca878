"""Writes QUERIES rows sampled (seeded) from a float32 .npy matrix to a new .npy file, so every
system in scripts/bench.sh searches exactly the same queries. Standard library only."""

import ast
import random
import struct
import sys


def main(src, dst, count, limit, seed=42):
    with open(src, "rb") as f:
        assert f.read(6) == b"\x93NUMPY", "not a .npy file"
        major, _ = f.read(2)
        size = struct.unpack("<H" if major == 1 else "<I", f.read(2 if major == 1 else 4))[0]
        header = ast.literal_eval(f.read(size).decode("latin1"))
        assert header["descr"] == "<f4" and not header["fortran_order"], header
        rows, dim = header["shape"]
        rows = min(rows, limit)
        start = f.tell()
        picked = random.Random(seed).sample(range(rows), min(count, rows))
        out = []
        for r in picked:
            f.seek(start + r * dim * 4)
            out.append(f.read(dim * 4))
    head = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }" % (len(out), dim)
    head += " " * (63 - (10 + len(head)) % 64) + "\n"
    with open(dst, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(head)) + head.encode("latin1"))
        f.write(b"".join(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
