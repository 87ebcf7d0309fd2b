#!/usr/bin/env python3
"""Writes data/fashion-mnist-sample/: the first TRAIN training and TEST test
examples of a Fashion-MNIST IDX download, in the same gzip IDX format.

Usage (from the repository root):

    python3 data/make_sample.py [SOURCE_DIR] [--train 4000] [--test 1000]

SOURCE_DIR defaults to ../shared/data/fashion-mnist. Only the Python standard
library is used. The gzip header carries no file name and mtime 0, so the
output is byte-for-byte reproducible; SHA256SUMS is rewritten alongside.
"""

import argparse
import gzip
import hashlib
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path, magic):
    with gzip.open(path, "rb") as f:
        data = f.read()
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        raise SystemExit(f"{path}: magic 0x{found:08x}, expected 0x{magic:08x}")
    ndims = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndims, data[4 : 4 + 4 * ndims])
    return dims, data[4 + 4 * ndims :]


def write_gz(path, payload):
    # GzipFile with an empty filename and mtime=0: reproducible bytes.
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as f:
            f.write(payload)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", default=os.path.join(HERE, "..", "..", "shared", "data", "fashion-mnist"))
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--out", default=os.path.join(HERE, "fashion-mnist-sample"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    sums = []
    for split, count in (("train", args.train), ("test", args.test)):
        images_name, labels_name = FILES[split]
        (n, rows, cols), pixels = read_idx(os.path.join(args.source, images_name), 0x00000803)
        (n_labels,), labels = read_idx(os.path.join(args.source, labels_name), 0x00000801)
        if n != n_labels or count > n:
            raise SystemExit(f"{split}: {n} images, {n_labels} labels, {count} requested")
        image_bytes = struct.pack(">IIII", 0x00000803, count, rows, cols) + pixels[: count * rows * cols]
        label_bytes = struct.pack(">II", 0x00000801, count) + labels[:count]
        for name, payload in ((images_name, image_bytes), (labels_name, label_bytes)):
            path = os.path.join(args.out, name)
            write_gz(path, payload)
            with open(path, "rb") as f:
                sums.append(f"{hashlib.sha256(f.read()).hexdigest()}  {name}\n")
        counts = [0] * 10
        for label in labels[:count]:
            counts[label] += 1
        print(f"{split}: {count} examples, per class {counts}")
    with open(os.path.join(args.out, "SHA256SUMS"), "w") as f:
        f.writelines(sums)


if __name__ == "__main__":
    main()
