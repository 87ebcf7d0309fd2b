"""One ONNX Runtime inference measurement of an ONNX model made by
bench/export_onnx.py.

Usage (one measurement per process, so the thread settings and the peak RSS
belong to this row alone):

    python bench/ort_bench.py --model bench/out/onnx/fashion_mnist.onnx --batch-size 1 \\
        --steps 200 --warmup 20 --threads 1

Session: CPU execution provider, `intra_op_num_threads = --threads`,
`inter_op_num_threads = 1`, sequential execution, `ORT_ENABLE_ALL` graph
optimizations (constant folding, Conv + BatchNormalization / Add / Relu
fusion, the NCHWc layout transform for AVX-512 / AVX2, ...). The input is NCHW
float32: the first `batch x (warmup + steps)` Fashion-MNIST training images
(cycling), scaled to [0, 1] and transposed from NHWC, when the model's input
is `[1, 28, 28]` and the files are there (the same images tf_bench.py and
`cnnc bench` use); deterministic uniform [0, 1) data otherwise. All batches
are built before timing; each step is one `session.run` that returns the
output as a numpy array.

Prints one JSON line with the keys of tf_bench.py and `cnnc bench --format
json` ("impl", "workload", "threads", "batch_size", "steps", "images_per_s",
"ms_per_batch", "peak_rss_mb", "params", "flops_per_image", "data", ...).
"""

import argparse
import json
import os
import resource
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = os.path.join(HERE, "..", "..", "shared", "data", "fashion-mnist")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the .onnx file (from bench/export_onnx.py)")
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before timing")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads")
    p.add_argument("--inter-op", type=int, default=1, help="inter-op threads")
    p.add_argument("--data-dir", default=os.environ.get("FASHION_MNIST_DIR", DATA_DIR))
    args = p.parse_args()
    if args.batch_size < 1 or args.steps < 1 or args.warmup < 0 or args.threads < 1:
        p.error("--batch-size, --steps and --threads must be at least 1, --warmup at least 0")
    return args


def vm_rss_mb():
    """Current resident set size (VmRSS of /proc/self/status) in MiB, or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def main():
    args = parse_args()
    import numpy as np
    import onnxruntime as ort

    sys.path.insert(0, HERE)
    sys.dont_write_bytecode = True  # no bench/__pycache__ in the source tree
    from tf_bench import cpu_seconds, load_images  # NumPy only; TensorFlow is imported in tf_bench.main

    total = args.warmup + args.steps
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = args.inter_op
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3

    rss_before_session = vm_rss_mb()
    t0 = time.perf_counter()
    session = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
    session_s = time.perf_counter() - t0
    meta = session.get_modelmeta().custom_metadata_map
    inp = session.get_inputs()[0]
    out_names = [o.name for o in session.get_outputs()]
    per_example = [d for d in inp.shape[1:]]
    if not all(isinstance(d, int) for d in per_example):
        print(f"ort_bench: input {inp.name} has unknown sizes {inp.shape}", file=sys.stderr)
        sys.exit(2)

    # Input batches, NCHW, built before timing.
    n_images = args.batch_size * total
    if per_example == [1, 28, 28]:
        images, _, source = load_images(args.data_dir, n_images)
        images = images.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    else:
        rng = np.random.default_rng(0)
        images = rng.random((min(n_images, 64), *per_example), dtype=np.float32)
        source = "random"
    count = images.shape[0]
    batches = []
    for i in range(total):
        idx = (np.arange(args.batch_size) + i * args.batch_size) % count
        batches.append(np.ascontiguousarray(images[idx], dtype=np.float32))
    del images

    def step(i):
        return session.run(out_names, {inp.name: batches[i]})

    for i in range(args.warmup):
        step(i)
    cpu_before = cpu_seconds()
    start = time.perf_counter()
    for i in range(args.warmup, total):
        last = step(i)
    elapsed = time.perf_counter() - start
    cpu_s = cpu_seconds() - cpu_before
    out_shape = list(last[0].shape)

    result = {
        "impl": "ort",
        "workload": f"infer-b{args.batch_size}",
        "mode": "infer",
        "threads": args.threads,
        "inter_op_threads": args.inter_op,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "images_per_s": args.batch_size * args.steps / elapsed,
        "ms_per_batch": elapsed * 1000.0 / args.steps,
        # Linux reports ru_maxrss in KiB.
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        # CPU time of all threads during the timed steps, and the cores it kept busy.
        "cpu_s": cpu_s,
        "cores_used": cpu_s / elapsed,
        # Python + NumPy + onnxruntime + the input batches, before the session exists.
        "rss_before_session_mb": rss_before_session,
        "session_create_s": session_s,
        "params": int(meta["cnnc_params"]) if "cnnc_params" in meta else None,
        "model": os.path.splitext(os.path.basename(args.model))[0],
        "input_shape_nchw": per_example,
        "output_shape": out_shape,
        "flops_per_image": int(meta["cnnc_flops_per_image"]) if "cnnc_flops_per_image" in meta else None,
        "data": source,
        "last_loss": None,
        "versions": {"onnxruntime": ort.__version__, "numpy": np.__version__},
    }
    print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
