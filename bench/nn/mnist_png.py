#!/usr/bin/env python3
"""Writes MNIST t10k image INDEX as a 28x28 greyscale PNG (standard library only), to try
`kiln nn predict`. usage: mnist_png.py INDEX OUT.png [--data DIR] [--paper] (--paper: dark digit
on light background, like a scan of a drawing)."""
import argparse, gzip, os, struct, zlib


def png(path, rows):
    raw = b"".join(b"\x00" + bytes(r) for r in rows)
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", len(rows[0]), len(rows), 8, 0, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("index", type=int)
    p.add_argument("out")
    p.add_argument("--data", default=os.path.expanduser("~/.cache/kiln/mnist"))
    p.add_argument("--paper", action="store_true")
    a = p.parse_args()
    imgs = gzip.open(os.path.join(a.data, "t10k-images-idx3-ubyte.gz")).read()
    labels = gzip.open(os.path.join(a.data, "t10k-labels-idx1-ubyte.gz")).read()
    px = imgs[16 + 784 * a.index:16 + 784 * (a.index + 1)]
    if a.paper:
        px = bytes(255 - v for v in px)
    png(a.out, [px[r * 28:(r + 1) * 28] for r in range(28)])
    print("label", labels[8 + a.index])


if __name__ == "__main__":
    main()
