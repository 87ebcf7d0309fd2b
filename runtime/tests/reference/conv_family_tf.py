#!/usr/bin/env python3
"""Reference outputs and gradients of Keras convolution-family layers for the
cnnc runtime tests (runtime/tests/conv_family_tf.rs).

Each case builds one Keras layer (Conv2D with dilation, DepthwiseConv2D,
Conv2DTranspose) with linear activation, sets seeded random weights, runs it on
a seeded random NHWC input, and records
  y       = layer(x)
  dx, dkernel, dbias = gradients of  L = sum(y * dy)  (tf.GradientTape)
for a seeded random upstream gradient dy. Everything is written, flattened in
row-major (C) order, to conv_family_tf.json next to this script.

Regenerate (from the repository root; needs tensorflow-cpu, installed in the
bench virtual environment):

    bench/.venv/bin/python runtime/tests/reference/conv_family_tf.py

Versions used for the committed JSON are recorded in its "generator" field.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "conv_family_tf.json")

CASES = [
    # Dilated Conv2D.
    dict(name="conv2d_dilated_same", kind="conv2d", input_shape=[2, 9, 8, 3],
         filters=4, kernel_size=[3, 3], strides=[1, 1], padding="same",
         dilation_rate=[2, 2]),
    dict(name="conv2d_dilated_valid_nonsquare", kind="conv2d", input_shape=[1, 10, 9, 2],
         filters=3, kernel_size=[3, 2], strides=[1, 1], padding="valid",
         dilation_rate=[2, 3]),
    dict(name="conv2d_dilated_same_even_kernel", kind="conv2d", input_shape=[1, 7, 6, 2],
         filters=2, kernel_size=[2, 4], strides=[1, 1], padding="same",
         dilation_rate=[3, 2]),
    # DepthwiseConv2D.
    dict(name="depthwise_dm2_stride2_same_odd", kind="depthwise", input_shape=[2, 7, 9, 3],
         kernel_size=[3, 3], strides=[2, 2], padding="same", depth_multiplier=2,
         dilation_rate=[1, 1]),
    dict(name="depthwise_dm1_dilated_same", kind="depthwise", input_shape=[1, 8, 7, 5],
         kernel_size=[3, 3], strides=[1, 1], padding="same", depth_multiplier=1,
         dilation_rate=[2, 2]),
    dict(name="depthwise_dm3_valid_nonsquare", kind="depthwise", input_shape=[2, 6, 7, 2],
         kernel_size=[2, 3], strides=[1, 2], padding="valid", depth_multiplier=3,
         dilation_rate=[1, 1]),
    # Conv2DTranspose.
    dict(name="transpose_s2_same", kind="conv2d_transpose", input_shape=[2, 4, 5, 3],
         filters=2, kernel_size=[3, 3], strides=[2, 2], padding="same",
         output_padding=None, dilation_rate=[1, 1]),
    dict(name="transpose_s2_valid", kind="conv2d_transpose", input_shape=[2, 4, 5, 3],
         filters=2, kernel_size=[3, 3], strides=[2, 2], padding="valid",
         output_padding=None, dilation_rate=[1, 1]),
    dict(name="transpose_s2_same_outpad_nonsquare", kind="conv2d_transpose",
         input_shape=[1, 5, 4, 2], filters=3, kernel_size=[3, 2], strides=[2, 2],
         padding="same", output_padding=[1, 1], dilation_rate=[1, 1]),
    dict(name="transpose_s2_valid_outpad", kind="conv2d_transpose", input_shape=[1, 3, 4, 2],
         filters=2, kernel_size=[2, 3], strides=[2, 2], padding="valid",
         output_padding=[1, 0], dilation_rate=[1, 1]),
    dict(name="transpose_s23_same_even_kernel", kind="conv2d_transpose",
         input_shape=[1, 3, 4, 2], filters=2, kernel_size=[4, 5], strides=[2, 3],
         padding="same", output_padding=None, dilation_rate=[1, 1]),
    dict(name="transpose_k1_s2_same_outpad", kind="conv2d_transpose",
         input_shape=[1, 3, 3, 2], filters=2, kernel_size=[1, 1], strides=[2, 2],
         padding="same", output_padding=[1, 1], dilation_rate=[1, 1]),
    dict(name="transpose_k2_s3_valid_gaps", kind="conv2d_transpose",
         input_shape=[1, 3, 2, 2], filters=2, kernel_size=[2, 2], strides=[3, 3],
         padding="valid", output_padding=None, dilation_rate=[1, 1]),
    dict(name="transpose_dilated_same", kind="conv2d_transpose", input_shape=[1, 5, 6, 2],
         filters=3, kernel_size=[3, 3], strides=[1, 1], padding="same",
         output_padding=None, dilation_rate=[2, 2]),
]


def make_layer(c):
    common = dict(kernel_size=tuple(c["kernel_size"]), strides=tuple(c["strides"]),
                  padding=c["padding"], dilation_rate=tuple(c["dilation_rate"]),
                  use_bias=True, activation=None)
    if c["kind"] == "conv2d":
        return keras.layers.Conv2D(c["filters"], **common)
    if c["kind"] == "depthwise":
        return keras.layers.DepthwiseConv2D(depth_multiplier=c["depth_multiplier"], **common)
    op = c["output_padding"]
    return keras.layers.Conv2DTranspose(c["filters"], output_padding=None if op is None
                                        else tuple(op), **common)


def flat(a):
    # float32 values, rounded to 7 significant digits (well below the 1e-4 tolerance).
    return [float("%.7g" % v) for v in np.asarray(a, dtype=np.float32).ravel()]


def run(case, seed):
    rng = np.random.default_rng(seed)
    layer = make_layer(case)
    x = rng.uniform(-1, 1, case["input_shape"]).astype(np.float32)
    layer.build(x.shape)
    kernel_shape = tuple(layer.kernel.shape)
    bias_shape = tuple(layer.bias.shape)
    kernel = rng.uniform(-1, 1, kernel_shape).astype(np.float32)
    bias = rng.uniform(-1, 1, bias_shape).astype(np.float32)
    layer.set_weights([kernel, bias])
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = layer(xt)
        dy = tf.constant(rng.uniform(-1, 1, tuple(y.shape)).astype(np.float32))
        loss = tf.reduce_sum(y * dy)
    dx, dkernel, dbias = tape.gradient(loss, [xt, layer.kernel, layer.bias])
    out = dict(case)
    out.update(
        kernel_shape=list(kernel_shape), output_shape=list(y.shape),
        x=flat(x), kernel=flat(kernel), bias=flat(bias), y=flat(y), dy=flat(dy),
        dx=flat(dx), dkernel=flat(dkernel), dbias=flat(dbias),
    )
    return out


def main():
    results = []
    for i, case in enumerate(CASES):
        results.append(run(case, 1000 + i))
    doc = dict(
        generator="runtime/tests/reference/conv_family_tf.py "
                  f"(tensorflow {tf.__version__}, keras {keras.__version__})",
        cases=results,
    )
    with open(OUT, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {len(results)} cases to {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
