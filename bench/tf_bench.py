"""One TensorFlow/Keras measurement of the book's Fashion-MNIST CNN.

Usage (one measurement per process, so the thread settings apply):

    python bench/tf_bench.py --mode train --batch-size 128 --steps 30 --warmup 5 --threads 1

Prints one JSON line with the same keys as `cnnc bench --format json`:
{"impl", "workload", "threads", "batch_size", "steps", "images_per_s",
 "ms_per_batch", "peak_rss_mb", ...}.

The model is the CNN of Geron, *Hands-On Machine Learning* (2nd/3rd ed.),
chapter 14, compiled with SGD(lr=0.01, momentum=0.9) and
sparse_categorical_crossentropy. Training times `model.train_on_batch`;
inference times a `tf.function` of `model(x, training=False)`.
"""

import argparse
import gzip
import json
import os
import resource
import sys
import time

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "fashion-mnist")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["train", "infer"], required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before timing")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads")
    p.add_argument("--inter-op", type=int, default=1, help="inter-op threads")
    p.add_argument("--data-dir", default=os.environ.get("FASHION_MNIST_DIR", DATA_DIR))
    return p.parse_args()


def load_images(data_dir, n):
    """First `n` training images as float32 NHWC [n, 28, 28, 1] scaled to [0, 1],
    and their labels as int64 [n]. Only the needed prefix of each gzip stream is
    decompressed, so peak RSS is not inflated by the whole data set.
    Falls back to deterministic uniform random data if the files are absent."""
    import numpy as np

    img_path = os.path.join(data_dir, "train-images-idx3-ubyte.gz")
    lbl_path = os.path.join(data_dir, "train-labels-idx1-ubyte.gz")
    n = min(n, 60000)
    if os.path.exists(img_path) and os.path.exists(lbl_path):
        with gzip.open(img_path, "rb") as f:
            header = np.frombuffer(f.read(16), dtype=">u4")
            assert header[0] == 2051, "not an IDX3 ubyte file"
            count, rows, cols = (int(v) for v in header[1:])
            n = min(n, count)
            raw = np.frombuffer(f.read(n * rows * cols), dtype=np.uint8)
        with gzip.open(lbl_path, "rb") as f:
            header = np.frombuffer(f.read(8), dtype=">u4")
            assert header[0] == 2049, "not an IDX1 ubyte file"
            labels = np.frombuffer(f.read(n), dtype=np.uint8).astype(np.int64)
        images = (raw.astype(np.float32) / 255.0).reshape(n, rows, cols, 1)
        return images, labels, "fashion-mnist"
    rng = np.random.default_rng(0)
    images = rng.random((n, 28, 28, 1), dtype=np.float32)
    labels = rng.integers(0, 10, size=n, dtype=np.int64)
    return images, labels, "random"


def cpu_seconds():
    """User + system CPU time of every thread of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def batches(images, labels, batch_size, count):
    """`count` batches, cycling through the loaded images."""
    import numpy as np

    n = images.shape[0]
    out = []
    for i in range(count):
        idx = (np.arange(batch_size) + i * batch_size) % n
        out.append((np.ascontiguousarray(images[idx]), np.ascontiguousarray(labels[idx])))
    return out


def main():
    args = parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    # Thread settings must come before any op runs.
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.inter_op)
    import warnings

    warnings.filterwarnings("ignore")
    import keras

    keras.utils.set_random_seed(42)

    model = keras.models.Sequential([
        keras.layers.Conv2D(64, 7, activation="relu", padding="same", input_shape=[28, 28, 1]),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(128, 3, activation="relu", padding="same"),
        keras.layers.Conv2D(128, 3, activation="relu", padding="same"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(256, 3, activation="relu", padding="same"),
        keras.layers.Conv2D(256, 3, activation="relu", padding="same"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"), keras.layers.Dropout(0.5),
        keras.layers.Dense(64, activation="relu"), keras.layers.Dropout(0.5),
        keras.layers.Dense(10, activation="softmax")])
    params = model.count_params()
    # 3,200 + 73,856 + 147,584 + 295,168 + 590,080 + 295,040 + 8,256 + 650
    assert params == 1_413_834, f"unexpected parameter count {params}"

    total = args.warmup + args.steps
    images, labels, source = load_images(args.data_dir, args.batch_size * total)
    data = batches(images, labels, args.batch_size, total)
    del images, labels

    if args.mode == "train":
        model.compile(loss="sparse_categorical_crossentropy",
                      optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9))

        def step(i):
            x, y = data[i]
            return model.train_on_batch(x, y)
    else:
        infer = tf.function(lambda x: model(x, training=False))
        tensors = [tf.constant(x) for x, _ in data]

        def step(i):
            return infer(tensors[i]).numpy()

    for i in range(args.warmup):
        step(i)
    cpu_before = cpu_seconds()
    start = time.perf_counter()
    for i in range(args.warmup, total):
        last = step(i)
    elapsed = time.perf_counter() - start
    cpu_s = cpu_seconds() - cpu_before
    if args.mode == "train":
        loss = float(last if not isinstance(last, (list, tuple)) else last[0])
    else:
        loss = None

    ms_per_batch = elapsed * 1000.0 / args.steps
    result = {
        "impl": "tf",
        "workload": f"{args.mode}-b{args.batch_size}",
        "mode": args.mode,
        "threads": args.threads,
        "inter_op_threads": args.inter_op,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "images_per_s": args.batch_size * args.steps / elapsed,
        "ms_per_batch": ms_per_batch,
        # Linux reports ru_maxrss in KiB.
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        # CPU time of all threads during the timed steps, and the cores it kept busy.
        "cpu_s": cpu_s,
        "cores_used": cpu_s / elapsed,
        "params": params,
        "data": source,
        "last_loss": loss,
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }
    print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
