#!/usr/bin/env python3
"""Fixtures and reference values for the image-folder pipeline tests
(runtime/tests/image_folder.rs).

1. `--fixtures` writes the small class-per-folder fixture under
   runtime/tests/fixtures/image_folder/ (a few hundred bytes per file; pixel
   values follow the formulas in FIXTURES, so the tests can recompute the
   lossless PNGs exactly).
2. Without arguments, writes image_pipeline_tf.json next to this script:
   - "resize": `tf.image.resize(x, size, method="bilinear", antialias=A)` of
     inputs x[i] = (i * 37 + 11) % 256 (i the row-major HWC index), flattened;
   - "shorter_crop": torchvision's Resize(shorter) + CenterCrop((h, w)) done
     with tf.image.resize and slicing (top = round((H - h) / 2), Python round);
   - "preprocess": keras.applications.imagenet_utils.preprocess_input(x,
     mode=...) on hand-picked RGB pixels (plus x / 255 and x for unit / raw);
   - "decode": tf.io.decode_image(bytes, channels=3) of every fixture file
     (TensorFlow's default JPEG IDCT is libjpeg's fast integer one, JDCT_IFAST),
     and for JPEGs also decode_jpeg(dct_method="INTEGER_ACCURATE") (JDCT_ISLOW,
     what Pillow uses);
   - "keras_folder": keras.utils.image_dataset_from_directory(fixture,
     image_size=(5, 6), shuffle=False, batch_size=None): class names, file
     order, labels and the resized images;
   - "flowers5" (when ../shared/data/flowers5 exists): TF's decode (default
     and INTEGER_ACCURATE) of the top-left 16 x 16 patch of the first file of
     each class, and measured
     differences (not used as test data) between TensorFlow's bilinear resize
     and Pillow's BILINEAR (torchvision's PIL path) on 20 flowers5 images.

Regenerate (from the repository root; needs tensorflow-cpu and pillow, e.g.
a venv with `pip install tensorflow-cpu pillow`):

    python runtime/tests/reference/image_pipeline_tf.py --fixtures
    python runtime/tests/reference/image_pipeline_tf.py

Versions used for the committed JSON are in its "generator" field.
"""

import io
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
FIXTURE = os.path.join(HERE, "..", "fixtures", "image_folder")
OUT = os.path.join(HERE, "image_pipeline_tf.json")
FLOWERS = os.path.join(ROOT, "..", "shared", "data", "flowers5")


def ramp(h, w, c):
    """The resize test input: x[i] = (i * 37 + 11) % 256."""
    i = np.arange(h * w * c, dtype=np.int64)
    return ((i * 37 + 11) % 256).astype(np.float32).reshape(h, w, c)


# Fixture files: class folder / name -> how to make it. PNG pixel formulas
# are repeated in image_folder.rs.
def grey_png():  # ant/a1.png: 4 x 6 grey, v = (10 * (6y + x)) % 256
    y, x = np.mgrid[0:4, 0:6]
    return Image.fromarray(((10 * (6 * y + x)) % 256).astype(np.uint8), "L")


def rgb16_png():  # ant/a2.png: 3 x 4 RGB 16-bit, v = 4000 (4y + x) + 1000 c + 7
    y, x, c = np.mgrid[0:3, 0:4, 0:3]
    return (4000 * (4 * y + x) + 1000 * c + 7).astype(np.uint16)


def rgb_png():  # ant/a3.PNG: 5 x 5 RGB, (50x, 60y, 20(x + y))
    y, x = np.mgrid[0:5, 0:5]
    a = np.stack([50 * x, 60 * y, 20 * (x + y)], axis=-1).astype(np.uint8)
    return Image.fromarray(a, "RGB")


def rgba_png():  # Zebra/z2.png: 7 x 5 RGBA, (40x, 30y, 200, 255 - 30x)
    y, x = np.mgrid[0:7, 0:5]
    a = np.stack([40 * x, 30 * y, np.full_like(x, 200), 255 - 30 * x], axis=-1)
    return Image.fromarray(a.astype(np.uint8), "RGBA")


def palette_png():  # bee/b2.png: 3 x 4 palette, index (x + y) % 3 of
    # palette [(255, 0, 0), (0, 128, 255), (10, 20, 30)]
    y, x = np.mgrid[0:3, 0:4]
    img = Image.fromarray(((x + y) % 3).astype(np.uint8), "P")
    img.putpalette([255, 0, 0, 0, 128, 255, 10, 20, 30] + [0] * (256 * 3 - 9))
    return img


def smooth_rgb(h, w, seed):  # JPEG sources: smooth gradients (small JPEG error)
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([
        40 + 10 * x + 3 * seed,
        200 - 9 * y,
        90 + 5 * (x + y),
    ], axis=-1)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")


def write_png16(path, array):
    """A 16-bit RGB PNG written by hand (Pillow cannot write RGB 16-bit)."""
    import struct
    import zlib

    h, w, _ = array.shape
    raw = b"".join(b"\x00" + array[r].astype(">u2").tobytes() for r in range(h))

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


FIXTURES = [
    ("Zebra/z1.jpg", lambda p: smooth_rgb(12, 16, 1).save(p, quality=95)),
    ("Zebra/z2.png", lambda p: rgba_png().save(p)),
    ("Zebra/nested/z3.jpg", lambda p: smooth_rgb(16, 16, 2).save(p, quality=90)),
    ("ant/a1.png", lambda p: grey_png().save(p)),
    ("ant/a2.png", lambda p: write_png16(p, rgb16_png())),
    ("ant/a3.PNG", lambda p: rgb_png().save(p)),
    ("ant/notes.txt", None),
    ("bee/b1.jpeg", lambda p: smooth_rgb(8, 8, 3).convert("L").save(p, quality=95)),
    ("bee/b2.png", lambda p: palette_png().save(p)),
]


def make_fixtures():
    for rel, make in FIXTURES:
        path = os.path.join(FIXTURE, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if make is None:
            with open(path, "w") as f:
                f.write("not an image: ignored by the folder index\n")
        else:
            make(path)
    with open(os.path.join(FIXTURE, "README.txt"), "w") as f:
        f.write("Test fixture of runtime/tests/image_folder.rs, made by "
                "runtime/tests/reference/image_pipeline_tf.py --fixtures.\n")
    total = sum(os.path.getsize(os.path.join(r, n))
                for r, _, ns in os.walk(FIXTURE) for n in ns)
    print(f"fixtures written to {FIXTURE} ({total} bytes)")


def flat(t):
    """Row-major float32 values, each written with the shortest decimal that
    reads back as the same float32."""
    return [float(str(v)) for v in np.asarray(t, dtype=np.float32).reshape(-1)]


def main():
    import tensorflow as tf
    import keras

    out = {"generator": {"tensorflow": tf.__version__, "keras": keras.__version__,
                         "numpy": np.__version__, "pillow": Image.__version__}}

    resize_cases = [
        ([5, 7, 3], [3, 4]), ([5, 7, 3], [9, 13]), ([4, 4, 1], [2, 2]),
        ([6, 9, 3], [4, 3]), ([3, 3, 2], [7, 5]), ([16, 16, 3], [7, 5]),
        ([12, 10, 3], [5, 3]), ([2, 9, 1], [5, 2]),
    ]
    out["resize"] = []
    for shape, size in resize_cases:
        for antialias in (False, True):
            y = tf.image.resize(ramp(*shape), size, method="bilinear", antialias=antialias)
            out["resize"].append({"input": shape, "size": size, "antialias": antialias,
                                  "output": flat(y)})

    out["shorter_crop"] = []
    for shape, shorter, crop in [([6, 9, 3], 8, [7, 5]), ([9, 6, 3], 4, [3, 3]),
                                 ([5, 5, 1], 7, [4, 6 - 1])]:
        h, w, _ = shape
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(shorter * long / short)
        nh, nw = (new_long, shorter) if w <= h else (shorter, new_long)
        resized = tf.image.resize(ramp(*shape), [nh, nw], method="bilinear").numpy()
        top = int(round((nh - crop[0]) / 2.0))
        left = int(round((nw - crop[1]) / 2.0))
        cut = resized[top:top + crop[0], left:left + crop[1]]
        out["shorter_crop"].append({"input": shape, "shorter": shorter, "crop": crop,
                                    "resized": [nh, nw], "offsets": [top, left],
                                    "output": flat(cut)})

    from keras.applications import imagenet_utils
    pixels = np.array([[[255.0, 0.0, 127.5], [12.0, 200.0, 99.0],
                        [0.0, 0.0, 0.0], [103.939, 116.779, 123.68]]], dtype=np.float32)
    out["preprocess"] = {"pixels": flat(pixels)}
    for mode in ("tf", "torch", "caffe"):
        y = imagenet_utils.preprocess_input(pixels.copy(), mode=mode,
                                            data_format="channels_last")
        out["preprocess"][mode] = flat(y)
    out["preprocess"]["unit"] = flat(pixels / 255.0)
    out["preprocess"]["raw"] = flat(pixels)

    out["decode"] = {}
    for rel, make in FIXTURES:
        if make is None:
            continue
        data = open(os.path.join(FIXTURE, rel), "rb").read()
        img = tf.io.decode_image(data, channels=3, expand_animations=False)
        out["decode"][rel] = {"shape": list(img.shape), "pixels": flat(img)}
        if rel.lower().endswith((".jpg", ".jpeg")):
            accurate = tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")
            out["decode"][rel]["pixels_accurate"] = flat(accurate)

    ds = keras.utils.image_dataset_from_directory(
        FIXTURE, image_size=(5, 6), shuffle=False, batch_size=None, verbose=False)
    images, labels = [], []
    for x, y in ds:
        images.extend(flat(x))
        labels.append(int(y))
    out["keras_folder"] = {
        "image_size": [5, 6],
        "class_names": list(ds.class_names),
        "files": [os.path.relpath(p, FIXTURE) for p in ds.file_paths],
        "labels": labels,
        "images": images,
    }

    if os.path.isdir(FLOWERS):
        out["flowers5"] = flowers_reference(tf)

    with open(OUT, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")


def flowers_reference(tf):
    classes = sorted(d for d in os.listdir(FLOWERS)
                     if os.path.isdir(os.path.join(FLOWERS, d)))
    patches = []
    for c in classes:
        name = sorted(os.listdir(os.path.join(FLOWERS, c)))[0]
        data = open(os.path.join(FLOWERS, c, name), "rb").read()
        img = tf.io.decode_jpeg(data, channels=3).numpy()
        accurate = tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE").numpy()
        patches.append({"file": f"{c}/{name}", "shape": list(img.shape),
                        "patch16": flat(img[:16, :16]),
                        "patch16_accurate": flat(accurate[:16, :16])})

    # How far is TensorFlow's bilinear from Pillow's (torchvision's PIL
    # path)? Mean / max absolute difference on the 0-255 scale, over 20
    # images (the first 4 of each class).
    files = []
    for c in classes:
        names = sorted(os.listdir(os.path.join(FLOWERS, c)))[:4]
        files += [os.path.join(FLOWERS, c, n) for n in names]
    stats = {}
    for label, size in (("up_256", 256), ("down_64", 64), ("down_50", 50)):
        for antialias in (False, True):
            diffs = []
            for path in files:
                pil = Image.open(path).convert("RGB")
                x = np.asarray(pil, dtype=np.float32)
                ref = np.asarray(pil.resize((size, size), Image.BILINEAR), dtype=np.float32)
                y = tf.image.resize(x, [size, size], method="bilinear",
                                    antialias=antialias).numpy()
                diffs.append(np.abs(y - ref))
            d = np.stack(diffs)
            stats[f"{label}_tf_antialias_{antialias}_vs_pillow"] = {
                "mean_abs": float(d.mean()), "max_abs": float(d.max())}
    # JPEG decoders: Pillow (libjpeg) vs TF (libjpeg-turbo) on the same files.
    d = [np.abs(np.asarray(Image.open(p).convert("RGB"), dtype=np.float32)
                - tf.io.decode_jpeg(open(p, "rb").read(), channels=3).numpy())
         for p in files]
    stats["decode_pillow_vs_tf"] = {"mean_abs": float(np.mean(d)), "max_abs": float(np.max(d))}
    d = [np.abs(tf.io.decode_jpeg(open(p, "rb").read(), channels=3).numpy().astype(np.float32)
                - tf.io.decode_jpeg(open(p, "rb").read(), channels=3,
                                    dct_method="INTEGER_ACCURATE").numpy())
         for p in files]
    stats["decode_tf_default_vs_integer_accurate"] = {
        "mean_abs": float(np.mean(d)), "max_abs": float(np.max(d))}
    return {"classes": classes, "patches": patches, "resize_vs_pillow": stats}


if __name__ == "__main__":
    if "--fixtures" in sys.argv[1:]:
        make_fixtures()
    else:
        main()
