"""Per-layer times: ONNX Runtime's node profile next to `cnnc bench --profile`.

Usage, from the repository root, after `bash bench/run.sh` has exported the
ONNX models into bench/out/onnx/:

    bench/.venv/bin/python bench/ort_layers.py resnet50 [--threads 1] [--runs 20] [--nodes]
        [--cnnc target/release/cnnc]

Runs the model's ONNX file in ONNX Runtime with profiling on (batch 1,
`--runs` timed runs after 5 warm-up runs), then `cnnc bench SPEC --mode infer
--batch-size 1 --profile --format json` on the same spec, and prints each cnnc
layer's mean forward milliseconds next to the ORT nodes named after that layer
(ORT names a fused node after its last op: `conv5_block3_2_relu__172_nchwc`
holds the conv, its batch norm and its relu, and goes to cnnc's
`conv5_block3_2_conv`; see `owner_layer`. In Xception, ORT names a separable
conv's pointwise conv after the activation that follows it, which belongs to
the next layer's name: compare per block there, not per layer). Both sides' node times and
the difference are in milliseconds per run; the last lines are the totals and
the unmatched ORT nodes (layout reorders, padding, pooling).

With `--nodes`, prints instead both sides in execution order, one line per
ORT node (op type, input and output shapes) and per cnnc node (op, layer,
output shape), with mean milliseconds: for pairing layers by shape where the
names do not match.

The ORT profile JSON is written to bench/out/ and removed afterwards.
"""

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort

SPECS = {
    "fashion": "specs/fashion_mnist.cnn",
    "resnet50": "specs/zoo/resnet50.cnn",
    "xception": "specs/zoo/xception.cnn",
}


def ort_nodes(path, threads, runs):
    """Mean ms per run of each ORT node and of each ORT op type, and the mean
    ms per whole run."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join("bench", "out", "ort_layers")
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [1 if d is None or isinstance(d, str) else d for d in inp.shape]
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    warmup = 5
    for _ in range(warmup):
        sess.run(None, {inp.name: x})
    start = time.perf_counter()
    for _ in range(runs):
        sess.run(None, {inp.name: x})
    per_run = (time.perf_counter() - start) / runs * 1e3
    profile = sess.end_profiling()
    try:
        with open(profile) as f:
            events = json.load(f)
    finally:
        os.remove(profile)
    total = collections.defaultdict(float)
    by_op = collections.defaultdict(float)
    shapes = {}
    for e in events:
        name = e.get("name", "")
        if e.get("cat") == "Node" and name.endswith("_kernel_time"):
            node = name[: -len("_kernel_time")]
            args = e.get("args", {})
            total[node] += e["dur"] / 1e3
            by_op[args.get("op_name", "?")] += e["dur"] / 1e3
            shapes.setdefault(node, (
                args.get("op_name", "?"),
                [list(d.values())[0] for d in args.get("input_type_shape", [])],
                [list(d.values())[0] for d in args.get("output_type_shape", [])],
            ))
    # The profile covers the warm-up runs too.
    mean = lambda d: {k: v / (warmup + runs) for k, v in d.items()}  # noqa: E731
    return mean(total), mean(by_op), per_run, shapes


def cnnc_layers(cnnc, spec, threads, runs):
    out = subprocess.run(
        [cnnc, "bench", spec, "--mode", "infer", "--batch-size", "1", "--steps", str(runs),
         "--warmup", "3", "--threads", str(threads), "--profile", "--format", "json"],
        check=True, capture_output=True, text=True,
    ).stdout
    report = json.loads(out)
    layers = collections.defaultdict(float)
    by_op = collections.defaultdict(float)
    for node in report["profile"]:
        layers[node["layer"]] += node["forward_ms"]
        by_op[node["op"]] += node["forward_ms"]
    return layers, by_op, report["ms_per_batch"], report["profile"]


def owner_layer(node, layers):
    """The cnnc layer an ORT node is named after: the one sharing the most
    leading `_`-separated words with it (the later one in graph order on a
    tie), all of the layer's words but the last at least (`conv5_block3_2_relu__172_nchwc` -> `conv5_block3_2_conv`,
    `pool1_pad__7` -> `pool1_pad`); None if no layer qualifies."""
    words = node.split("_")
    best, best_score = None, 0
    for layer in layers:
        lw = layer.split("_")
        score = 0
        while score < min(len(lw), len(words)) and lw[score] == words[score]:
            score += 1
        # Ties go to the later layer (a fused node is named after its last op).
        if score >= max(1, len(lw) - 1) and score >= best_score:
            best, best_score = layer, score
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", choices=sorted(SPECS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--cnnc", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", "target"), "release", "cnnc"))
    ap.add_argument("--nodes", action="store_true",
                    help="list both sides' nodes in execution order with shapes")
    args = ap.parse_args()
    onnx_path = os.path.join("bench", "out", "onnx", f"{args.model}.onnx")
    if not os.path.exists(onnx_path):
        sys.exit(f"{onnx_path} is missing: run `bash bench/run.sh --models {args.model}` first")
    if not os.path.exists(args.cnnc):
        sys.exit(f"{args.cnnc} is missing: run `cargo build --release` or pass --cnnc")
    nodes, ort_ops, ort_ms, ort_shapes = ort_nodes(onnx_path, args.threads, args.runs)
    layers, cnnc_ops, cnnc_ms, profile = cnnc_layers(
        args.cnnc, SPECS[args.model], args.threads, args.runs)
    if args.nodes:
        print(f"ONNX Runtime, {ort_ms:.3f} ms/run; ms, op, node, input shapes -> output shapes:")
        for node, ms in nodes.items():
            op, ins, outs = ort_shapes[node]
            print(f"{ms:8.3f} {op:16s} {node[:48]:48s} {ins} -> {outs}")
        print(f"cnnc, {cnnc_ms:.3f} ms/run; ms, op, layer, output shape (NHWC, per image):")
        for node in profile:
            print(f"{node['forward_ms']:8.3f} {node['op']:16s} {node['layer'][:48]:48s} "
                  f"{node['shape']}")
        return
    matched = collections.defaultdict(float)
    unmatched = {}
    for node, ms in nodes.items():
        owner = owner_layer(node, layers)
        if owner is None:
            unmatched[node] = ms
        else:
            matched[owner] += ms
    print(f"{args.model}, batch 1, {args.threads} thread(s): cnnc {cnnc_ms:.3f} ms/run, "
          f"ONNX Runtime {ort_ms:.3f} ms/run")
    print(f"{'layer':40s} {'cnnc ms':>9s} {'ORT ms':>9s} {'cnnc - ORT':>11s}")
    rows = sorted(layers.items(), key=lambda kv: matched.get(kv[0], 0.0) - kv[1])
    for layer, ms in rows:
        o = matched.get(layer, 0.0)
        print(f"{layer:40s} {ms:9.3f} {o:9.3f} {ms - o:11.3f}")
    print(f"{'total in nodes':40s} {sum(layers.values()):9.3f} {sum(nodes.values()):9.3f}")
    for node, ms in sorted(unmatched.items(), key=lambda kv: -kv[1]):
        print(f"  ORT node without a cnnc layer: {node} {ms:.3f}")
    # Per op type: ORT's `Conv` covers depthwise, pointwise and full convs
    # (cnnc: `depthwise_conv2d` + `fused_conv2d`); ORT also runs layout
    # reorders and separate `Add`s that cnnc does not have.
    print("ms per op type (ORT | cnnc):")
    for side, ops in (("ORT", ort_ops), ("cnnc", cnnc_ops)):
        for op, ms in sorted(ops.items(), key=lambda kv: -kv[1]):
            print(f"  {side:5s} {op:30s} {ms:9.3f}")


if __name__ == "__main__":
    main()
