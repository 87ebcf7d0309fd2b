#!/usr/bin/env python3
"""Keras weight files for the zoo specs (specs/zoo/*.cnn), for the test
import/tests/keras_zoo.rs (issue 5: `.h5` weights as keras.applications
saves them, loaded into the zoo specs by layer name).

The real keras.applications downloads cannot be fetched here, so the same
architectures are built with `weights=None`, given reproducible random
weights (fixed seed) and non-trivial batch-norm statistics, and saved the
way those downloads are laid out: the legacy `save_weights` HDF5 format,
root attribute `layer_names` (every layer, in model order), one group per
layer (sorted by name) with attribute `weight_names` naming its datasets,
nested by name, e.g. `Conv1/Conv1/kernel:0`, in the layer's weight order
(trainable, then non-trainable: gamma, beta, moving_mean, moving_variance).
The names are tf.keras 2's (`<layer>/<weight>:0`, depthwise kernels
`depthwise_kernel:0`), as in the files keras.applications downloads for
Keras 2 and Keras 3 alike. Each file is checked by loading it back with
Keras's own legacy loader (`load_weights_from_hdf5_group`, by position)
into a fresh model and comparing outputs.

Writes into OUT (default /work/zoo-h5; the files are 14 MB to 100 MB, keep
them out of the repository):
  - mobilenet_v2.h5         MobileNetV2(include_top=True)   -> specs/zoo/mobilenet_v2.cnn
  - mobilenet_v2_notop.h5   MobileNetV2(include_top=False)  -> specs/zoo/mobilenet_v2_notop.cnn
  - mobilenet_v2_k3.h5      the include_top=True weights written by Keras 3's
                            own `legacy_h5_format.save_weights_to_hdf5_group`
                            (names `Conv1/kernel`, depthwise `kernel`)
  - resnet50.h5             ResNet50(include_top=True)      -> specs/zoo/resnet50.cnn
  - expected.json           per file: model, spec, output shape, Keras's
                            outputs (row-major), top-1 per example.

The input (batch 2, NHWC 224 x 224 x 3) is a formula, computed identically
in Rust: x[i] = 0.5 * sin(i * i * 1e-7) + 0.25 * sin(i) for the row-major
flat index i, in float64, rounded to float32 (a chirp plus noise: the two
examples differ).

Weights: keras.utils.set_random_seed(SEED) then the Keras initialisers;
every BatchNormalization gets gamma ~ U(0.5, 1.5), beta ~ N(0, 0.1) from
numpy's default_rng(SEED), then its moving mean / variance are set to the
batch statistics of a seeded calibration batch (one training-mode forward
pass with momentum 0), so that the activations stay in range through the
whole network; the classifier's kernel ~ N(0, s) with s scaled so that the
logits' std is about 4 on the fixed input's features centred over the batch
(a confident softmax that tells the two examples apart), its bias minus
the mean features' logits plus N(0, 0.1). top-1 is recorded for classifier outputs only.

    bench/.venv/bin/python import/tests/reference/keras/make_zoo_h5.py [OUT]
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import h5py
import keras
import numpy as np
from keras.src.legacy.saving import legacy_h5_format

SEED = 5
BATCH = 2


def fixed_input():
    i = np.arange(BATCH * 224 * 224 * 3, dtype=np.float64)
    x = 0.5 * np.sin(i * i * 1e-7) + 0.25 * np.sin(i)
    return x.astype(np.float32).reshape(BATCH, 224, 224, 3)


def randomize(model, classifier):
    rng = np.random.default_rng(SEED)
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    for bn in bns:
        c = bn.gamma.shape[0]
        bn.gamma.assign(rng.uniform(0.5, 1.5, c).astype(np.float32))
        bn.beta.assign(rng.normal(0.0, 0.1, c).astype(np.float32))
    # Moving statistics = the batch statistics of a calibration batch.
    calib = rng.uniform(-1.0, 1.0, (4, 224, 224, 3)).astype(np.float32)
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
    model(calib, training=True)
    for bn, m in zip(bns, saved):
        bn.momentum = m
    if classifier is not None:
        # A random net maps both examples to nearly the same features: the
        # classifier reads their differences. Kernel ~ N(0, s), s such that
        # the logits' std is about 4 on the fixed input's centred features
        # (a confident softmax: top-1 is meaningful), and the bias cancels
        # the mean features' logits (plus N(0, 0.1) noise).
        dense = model.get_layer(classifier)
        features = keras.ops.convert_to_numpy(
            keras.Model(model.input, dense.input)(fixed_input())
        ).astype(np.float64)
        mean = features.mean(axis=0)
        rms = float(np.sqrt(np.mean(np.sum(np.square(features - mean), axis=1))))
        s = 4.0 / max(rms, 1e-6)
        kernel = rng.normal(0.0, s, dense.kernel.shape)
        bias = -(mean @ kernel) + rng.normal(0.0, 0.1, dense.bias.shape)
        dense.kernel.assign(kernel.astype(np.float32))
        dense.bias.assign(bias.astype(np.float32))


def keras2_weight_name(layer, weight):
    """tf.keras 2's variable name (`Conv1/kernel:0`): Keras 3 names a
    depthwise kernel `kernel`, Keras 2 `depthwise_kernel`."""
    name = weight.name
    if isinstance(layer, keras.layers.DepthwiseConv2D) and name == "kernel":
        name = "depthwise_kernel"
    return f"{layer.name}/{name}:0"


def save_keras2_layout(path, model):
    """tf.keras 2's `save_weights_to_hdf5_group` (the layout of the
    keras.applications downloads)."""
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_attributes_to_hdf5_group(
            f, "layer_names", [l.name.encode("utf8") for l in model.layers]
        )
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.15.0"
        for layer in sorted(model.layers, key=lambda l: l.name):
            g = f.create_group(layer.name)
            weights = layer.trainable_weights + layer.non_trainable_weights
            names = [keras2_weight_name(layer, w).encode("utf8") for w in weights]
            legacy_h5_format.save_attributes_to_hdf5_group(g, "weight_names", names)
            for name, w in zip(names, weights):
                value = keras.ops.convert_to_numpy(w)
                d = g.create_dataset(name.decode("utf8"), value.shape, dtype=value.dtype)
                if value.shape:
                    d[:] = value
                else:
                    d[()] = value


def save_keras3_legacy(path, model):
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


def check_reloads(path, build, x, want):
    """Keras's own legacy loader reads the file back to the same outputs."""
    fresh = build()
    with h5py.File(path, "r") as f:
        legacy_h5_format.load_weights_from_hdf5_group(f, fresh)
    got = fresh.predict(x, verbose=0)
    diff = float(np.max(np.abs(got - want)))
    assert diff == 0.0, f"{path}: reloaded by Keras, max abs diff {diff}"


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "/work/zoo-h5"
    os.makedirs(out, exist_ok=True)
    x = fixed_input()
    A = keras.applications
    models = [
        # file, spec, builder, classifier layer, writer
        ("mobilenet_v2.h5", "mobilenet_v2.cnn",
         lambda: A.MobileNetV2(weights=None, include_top=True), "predictions", save_keras2_layout),
        ("mobilenet_v2_notop.h5", "mobilenet_v2_notop.cnn",
         lambda: A.MobileNetV2(weights=None, include_top=False), None, save_keras2_layout),
        ("mobilenet_v2_k3.h5", "mobilenet_v2.cnn",
         lambda: A.MobileNetV2(weights=None, include_top=True), "predictions", save_keras3_legacy),
        ("resnet50.h5", "resnet50.cnn",
         lambda: A.ResNet50(weights=None, include_top=True), "predictions", save_keras2_layout),
    ]
    expected = {"seed": SEED, "input": {"shape": list(x.shape), "formula": "0.5 * sin(i * i * 1e-7) + 0.25 * sin(i)"}, "files": {}}
    for file, spec, build, classifier, write in models:
        keras.utils.set_random_seed(SEED)
        model = build()
        randomize(model, classifier)
        y = model.predict(x, verbose=0)
        path = os.path.join(out, file)
        write(path, model)
        check_reloads(path, build, x, y)
        flat = y.reshape(BATCH, -1)
        top1 = [int(i) for i in np.argmax(flat, axis=1)] if y.ndim == 2 else None
        expected["files"][file] = {
            "spec": spec,
            "params": int(model.count_params()),
            "output_shape": list(y.shape),
            "output": [float(v) for v in y.reshape(-1)],
            "top1": top1,
        }
        print(f"{file}: {os.path.getsize(path)} bytes, {model.count_params()} params, "
              f"output {y.shape}, top-1 {top1}, max {float(flat.max()):.4g}")
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f)


if __name__ == "__main__":
    main()
