"""Builds the ONNX model of a cnnc spec from cnnc's own lowered op graph, for
the ONNX Runtime side of the benchmark (bench/ort_bench.py).

Usage:

    python bench/export_onnx.py --cnnc target/release/cnnc SPEC.cnn -o OUT.onnx [--seed 0]

1. Runs `cnnc build SPEC --emit graph --format json --no-optimize` (the graph
   as lowered, before cnnc's own fusions, so ONNX Runtime applies its own
   optimizations to the plain layer ops) and `cnnc build SPEC --format json`
   (parameter totals and forward FLOPs).
2. Maps every op (the serde form of compiler/src/graph/ir.rs `Op`) to ONNX
   opset-17 ops in ONNX's native NCHW layout:

   | cnnc op | ONNX |
   |---|---|
   | input `[h, w, c]` | graph input `[N, c, h, w]` (`N` symbolic) |
   | conv2d (+ its bias_add) | Conv, kernel `[kh, kw, cin, f]` -> OIHW, bias as `B` |
   | depthwise_conv2d (+ bias_add) | Conv with `group = in_channels`, kernel -> `[cin*m, 1, kh, kw]` |
   | conv2d_transpose (+ bias_add) | ConvTranspose, kernel `[kh, kw, f, cin]` -> `[cin, f, kh, kw]` |
   | matmul (+ bias_add) | Gemm (MatMul when the input is not 2-D) |
   | bias_add (alone) | Add of a `[1, c, 1, 1]` (or `[c]`) constant |
   | relu, relu6, sigmoid, tanh, elu, leaky_relu, linear | Relu, Clip(0, 6), Sigmoid, Tanh, Elu, LeakyRelu, Identity |
   | softmax | Softmax over the channel axis |
   | batch_norm | BatchNormalization (inference form: moving statistics) |
   | max_pool2d / avg_pool2d | MaxPool / AveragePool (`count_include_pad = 0`) |
   | global_avg_pool2d / global_max_pool2d | GlobalAveragePool / GlobalMaxPool, then Flatten |
   | zero_padding2d | Pad (constant 0) |
   | add / multiply | Add / Mul (Sum for more than two inputs) |
   | concat | Concat on the NCHW axis |
   | up_sampling2d | Resize (nearest: asymmetric/floor; bilinear: half_pixel) |
   | flatten / reshape | Transpose to NHWC, then Flatten / Reshape (keeps cnnc's row-major NHWC order) |
   | dropout | nothing (inference) |

   A bias_add whose only input is a conv or matmul read by nothing else is
   folded into that op's bias input, as Keras-to-ONNX converters emit a
   `Conv2D(use_bias=True)`. Rank-3 outputs are transposed back to NHWC, so
   every graph output has cnnc's shape.
3. Fills every parameter with random values of its declared shape (speed
   does not depend on the values): kernels Glorot-uniform (Keras's default),
   biases and beta / moving mean small uniform, gamma and moving variance
   uniform in [0.5, 1.5]. `--weights FILE.safetensors` takes the values from
   a cnnc checkpoint instead (tensor names = cnnc parameter names, Keras
   layouts), e.g. to compare outputs with cnnc.
4. Checks the result: the ONNX checker, ONNX shape inference of every
   node against cnnc's per-node shape, each cnnc parameter used exactly once,
   the parameter count equal to cnnc's `total_params` (and to Keras's total
   for the models whose total is known), graph outputs equal to cnnc's.

Writes OUT.onnx (and OUT.onnx.json, the record `--reuse` reads) and prints
one JSON line: {"model", "onnx", "params", "flops_per_image",
"input_shape_nchw", "output_shapes", "nodes", "ops", "verify", ...}.
Exit status: 0 done, 1 export error, 3 `--verify` found different outputs
(the model is still written).
Model metadata (`metadata_props`) carries `cnnc_params`,
`cnnc_flops_per_image`, `cnnc_graph_sha256`, `cnnc_input_nhwc`.
"""

import argparse
import hashlib
import json
import os
import struct
import subprocess
import sys

import numpy as np

OPSET = 17

# Keras's `model.count_params()` of the reference models (keras.applications
# for the zoo; Geron ch. 14 for the Fashion-MNIST CNN).
KERAS_TOTALS = {
    "fashion_mnist": 1_413_834,
    "resnet50": 25_636_712,
    "xception": 22_910_480,
}


class ExportError(Exception):
    """An op or attribute this exporter cannot express in ONNX."""


def run_cnnc(cnnc, args):
    proc = subprocess.run([cnnc, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ExportError(f"`cnnc {' '.join(args)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def activation_of(attrs):
    """(name, parameters) of an `activation` op's attrs: `"relu"` or
    `{"elu": {"alpha": 1.0}}` (serde's forms of model.rs `Activation`)."""
    act = attrs["activation"]
    if isinstance(act, str):
        return act, {}
    if isinstance(act, dict) and len(act) == 1:
        (name, params), = act.items()
        return name, params or {}
    raise ExportError(f"unknown activation form {act!r}")


def read_safetensors(path):
    """{name: float32 array} of a safetensors file (the format: u64
    little-endian header length, JSON header, raw little-endian data)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            raise ExportError(f"{path}: tensor {name} is {info['dtype']}, expected F32")
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(data[start:end], dtype="<f4").reshape(info["shape"]).astype(np.float32)
    return out


def write_safetensors(path, tensors):
    """Writes {name: array} as F32 safetensors (the layout read_safetensors reads)."""
    header, offset, blobs = {}, 0, []
    for name, arr in tensors.items():
        data = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for b in blobs:
            f.write(b)


def random_param(name, shape, rng):
    """Random float32 values of a parameter's declared (Keras-layout) shape."""
    shape = tuple(shape)
    leaf = name.rsplit("/", 1)[-1]
    if leaf in ("kernel", "depthwise_kernel", "pointwise_kernel") and len(shape) >= 2:
        if len(shape) == 4:
            kh, kw, a, b = shape
            if leaf == "depthwise_kernel":
                fan_in, fan_out = kh * kw, kh * kw * b
            else:
                fan_in, fan_out = kh * kw * a, kh * kw * b
        else:
            fan_in, fan_out = shape[0], shape[-1]
        limit = np.sqrt(6.0 / max(1, fan_in + fan_out))
        return rng.uniform(-limit, limit, size=shape).astype(np.float32)
    if leaf in ("gamma", "moving_variance"):
        return rng.uniform(0.5, 1.5, size=shape).astype(np.float32)
    return rng.uniform(-0.05, 0.05, size=shape).astype(np.float32)


class Exporter:
    def __init__(self, graph, values):
        from onnx import helper

        self.helper = helper
        self.graph = graph
        self.values = values  # {param name: Keras-layout array}
        self.nodes = []
        self.initializers = {}
        self.used_params = []
        self.counter = 0
        # cnnc node id -> (onnx value name, layout); layout "nchw" for rank-3
        # per-example shapes ([N, c, h, w] tensors), "plain" otherwise.
        self.vals = {}
        self.expected = {}  # onnx value name -> expected full ONNX shape (batch None)

    def fresh(self, base):
        self.counter += 1
        return f"{base}__{self.counter}"

    def param(self, pid, transform=None):
        p = self.graph["params"][pid]
        name = p["name"]
        arr = self.values[name]
        if list(arr.shape) != list(p["shape"]):
            raise ExportError(f"parameter {name}: values of shape {list(arr.shape)}, declared {p['shape']}")
        self.used_params.append(name)
        if transform is not None:
            arr = transform(arr)
        if name in self.initializers:
            raise ExportError(f"parameter {name} used twice")
        self.initializers[name] = np.ascontiguousarray(arr, dtype=np.float32)
        return name

    def const(self, base, arr):
        name = self.fresh(f"const/{base}")
        self.initializers[name] = np.asarray(arr)
        return name

    def node(self, op_type, inputs, base, **attrs):
        out = self.fresh(base)
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def to_plain(self, nid):
        """The value of node `nid` in cnnc's own (NHWC) order."""
        name, layout = self.vals[nid]
        if layout == "nchw":
            return self.node("Transpose", [name], "to_nhwc", perm=[0, 2, 3, 1])
        return name

    def export(self):
        helper = self.helper
        from onnx import TensorProto

        ops = self.graph["ops"]
        consumers = {o["id"]: 0 for o in ops}
        for o in ops:
            for i in o["inputs"]:
                consumers[i] += 1
        outputs = self.graph["outputs"]
        for i in outputs:
            consumers[i] += 1
        # bias_add nodes folded into the conv / matmul that feeds them.
        folded = {}
        for o in ops:
            if o["op"] == "bias_add" and len(o["inputs"]) == 1:
                src = ops[o["inputs"][0]]
                if src["op"] in ("conv2d", "depthwise_conv2d", "conv2d_transpose", "matmul") \
                        and consumers[src["id"]] == 1:
                    folded[src["id"]] = o["attrs"]["bias"]
                    folded[o["id"]] = None  # marker: alias of its input

        graph_inputs = []
        for o in ops:
            nid, op, attrs, shape = o["id"], o["op"], o["attrs"], o["output_shape"][1:]
            ins = o["inputs"]
            layer = o["layer"].replace("/", "_") or op
            nchw_out = len(shape) == 3

            def x(k=0):
                return self.vals[ins[k]][0]

            def in_layout(k=0):
                return self.vals[ins[k]][1]

            if op == "input":
                dims = ["N", shape[2], shape[0], shape[1]] if nchw_out else ["N", *shape]
                name = layer
                graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
                out = name
            elif op in ("conv2d", "depthwise_conv2d", "conv2d_transpose"):
                a = attrs["attrs"]
                p = a["pads"]
                if in_layout() != "nchw":
                    raise ExportError(f"{op} {o['layer']}: input is not a feature map")
                common = dict(
                    kernel_shape=list(a["kernel_size"]),
                    strides=list(a["strides"]),
                    dilations=list(a["dilation_rate"]),
                    pads=[p["top"], p["left"], p["bottom"], p["right"]],
                )
                if op == "conv2d":
                    w = self.param(attrs["kernel"], lambda k: k.transpose(3, 2, 0, 1))
                    op_type = "Conv"
                elif op == "depthwise_conv2d":
                    cin, m = a["in_channels"], a["depth_multiplier"]
                    kh, kw = a["kernel_size"]
                    # output channel c * m + j <- kernel[:, :, c, j]
                    w = self.param(attrs["kernel"],
                                   lambda k: k.transpose(2, 3, 0, 1).reshape(cin * m, 1, kh, kw))
                    common["group"] = cin
                    op_type = "Conv"
                else:
                    w = self.param(attrs["kernel"], lambda k: k.transpose(3, 2, 0, 1))
                    op_type = "ConvTranspose"
                    in_shape = ops[ins[0]]["output_shape"][1:]
                    extra = []
                    for axis, (pb, pe) in enumerate([(p["top"], p["bottom"]), (p["left"], p["right"])]):
                        k_eff = a["dilation_rate"][axis] * (a["kernel_size"][axis] - 1) + 1
                        natural = (in_shape[axis] - 1) * a["strides"][axis] + k_eff - pb - pe
                        extra.append(shape[axis] - natural)
                    if any(e < 0 for e in extra):
                        raise ExportError(f"conv2d_transpose {o['layer']}: output larger padding than ONNX allows")
                    if any(extra):
                        common["output_padding"] = extra
                inputs = [x(), w]
                if nid in folded:
                    inputs.append(self.param(folded[nid]))
                out = self.node(op_type, inputs, layer, **common)
            elif op == "matmul":
                w = self.param(attrs["kernel"])
                src_shape = ops[ins[0]]["output_shape"][1:]
                if len(src_shape) == 1 and in_layout() == "plain":
                    inputs = [x(), w]
                    if nid in folded:
                        inputs.append(self.param(folded[nid]))
                    out = self.node("Gemm", inputs, layer)
                else:
                    out = self.node("MatMul", [self.to_plain(ins[0]), w], layer)
                    if nid in folded:
                        out = self.node("Add", [out, self.param(folded[nid])], layer + "_bias")
            elif op == "bias_add":
                if folded.get(nid, 0) is None:
                    self.vals[nid] = self.vals[ins[0]]
                    continue
                if in_layout() == "nchw":
                    b = self.param(attrs["bias"], lambda v: v.reshape(1, -1, 1, 1))
                else:
                    b = self.param(attrs["bias"])
                out = self.node("Add", [x(), b], layer)
            elif op == "activation" or attrs.get("op") == "activation":
                name, ap = activation_of(attrs)
                if name == "relu":
                    out = self.node("Relu", [x()], layer)
                elif name == "relu6":
                    lo = self.const("zero", np.array(0.0, dtype=np.float32))
                    hi = self.const("six", np.array(6.0, dtype=np.float32))
                    out = self.node("Clip", [x(), lo, hi], layer)
                elif name == "sigmoid":
                    out = self.node("Sigmoid", [x()], layer)
                elif name == "tanh":
                    out = self.node("Tanh", [x()], layer)
                elif name == "elu":
                    out = self.node("Elu", [x()], layer, alpha=float(ap.get("alpha", 1.0)))
                elif name == "leaky_relu":
                    out = self.node("LeakyRelu", [x()], layer, alpha=float(ap["negative_slope"]))
                elif name == "linear":
                    out = self.node("Identity", [x()], layer)
                else:
                    raise ExportError(f"activation {name} has no ONNX mapping here")
            elif op == "softmax":
                axis = 1 if in_layout() == "nchw" else -1
                out = self.node("Softmax", [x()], layer, axis=axis)
            elif op in ("max_pool2d", "avg_pool2d"):
                a = attrs["attrs"]
                p = a["pads"]
                kw = dict(kernel_shape=list(a["pool_size"]), strides=list(a["strides"]),
                          pads=[p["top"], p["left"], p["bottom"], p["right"]])
                if op == "max_pool2d":
                    out = self.node("MaxPool", [x()], layer, **kw)
                else:
                    out = self.node("AveragePool", [x()], layer, count_include_pad=0, **kw)
            elif op in ("global_avg_pool2d", "global_max_pool2d"):
                pooled = self.node("GlobalAveragePool" if op == "global_avg_pool2d" else "GlobalMaxPool",
                                   [x()], layer)
                out = self.node("Flatten", [pooled], layer + "_flatten", axis=1)
            elif op == "zero_padding2d":
                p = attrs["pads"]
                pads = self.const("pads", np.array([0, 0, p["top"], p["left"], 0, 0, p["bottom"], p["right"]],
                                                   dtype=np.int64))
                out = self.node("Pad", [x(), pads], layer, mode="constant")
            elif op == "batch_norm":
                c = shape[-1]
                gamma = (self.param(attrs["gamma"]) if attrs.get("gamma") is not None
                         else self.const("ones", np.ones(c, dtype=np.float32)))
                beta = (self.param(attrs["beta"]) if attrs.get("beta") is not None
                        else self.const("zeros", np.zeros(c, dtype=np.float32)))
                mean = self.param(attrs["moving_mean"])
                var = self.param(attrs["moving_variance"])
                if in_layout() != "nchw":
                    # BatchNormalization normalizes axis 1: [N, c] works as is;
                    # other ranks are not produced by the zoo models.
                    if len(shape) != 1:
                        raise ExportError(f"batch_norm {o['layer']} on a rank-{len(shape)} value")
                out = self.node("BatchNormalization", [x(), gamma, beta, mean, var], layer,
                                epsilon=float(attrs["epsilon"]))
            elif op in ("add", "multiply"):
                layouts = {in_layout(k) for k in range(len(ins))}
                if len(layouts) != 1:
                    raise ExportError(f"{op} {o['layer']}: inputs in different layouts")
                names = [x(k) for k in range(len(ins))]
                if op == "add":
                    out = self.node("Add" if len(names) == 2 else "Sum", names, layer)
                else:
                    out = names[0]
                    for other in names[1:]:
                        out = self.node("Mul", [out, other], layer)
            elif op == "concat":
                axis = attrs["axis"]
                if nchw_out and all(in_layout(k) == "nchw" for k in range(len(ins))):
                    onnx_axis = {0: 2, 1: 3, 2: 1}[axis]
                    names = [x(k) for k in range(len(ins))]
                else:
                    onnx_axis = axis + 1
                    names = [self.to_plain(k) for k in ins]
                    if nchw_out:
                        raise ExportError(f"concat {o['layer']}: mixed layouts")
                out = self.node("Concat", names, layer, axis=onnx_axis)
            elif op == "up_sampling2d":
                s = attrs["size"]
                scales = self.const("scales", np.array([1.0, 1.0, float(s[0]), float(s[1])], dtype=np.float32))
                if attrs["interpolation"] == "nearest":
                    kw = dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
                else:
                    kw = dict(mode="linear", coordinate_transformation_mode="half_pixel")
                out = self.node("Resize", [x(), "", scales], layer, **kw)
            elif op == "flatten":
                out = self.node("Flatten", [self.to_plain(ins[0])], layer, axis=1)
            elif op == "reshape":
                target = self.const("shape", np.array([0, *shape], dtype=np.int64))
                out = self.node("Reshape", [self.to_plain(ins[0]), target], layer)
                if nchw_out:
                    out = self.node("Transpose", [out], layer + "_to_nchw", perm=[0, 3, 1, 2])
            elif op == "dropout":
                self.vals[nid] = self.vals[ins[0]]
                continue
            else:
                raise ExportError(f"op {op} (layer {o['layer']}) has no ONNX mapping here")
            self.vals[nid] = (out, "nchw" if nchw_out else "plain")
            exp = [None, shape[2], shape[0], shape[1]] if nchw_out else [None, *shape]
            self.expected[out] = exp

        graph_outputs = []
        seen = set()
        for k, oid in enumerate(outputs):
            shape = ops[oid]["output_shape"][1:]
            name = self.to_plain(oid)
            if name in seen or name in {i.name for i in graph_inputs}:
                name = self.node("Identity", [name], f"output{k}")
            seen.add(name)
            graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", *shape]))

        from onnx import numpy_helper

        inits = [numpy_helper.from_array(v, name=k) for k, v in self.initializers.items()]
        g = helper.make_graph(self.nodes, self.graph["name"], graph_inputs, graph_outputs, inits)
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="cnnc bench/export_onnx.py")
        model.ir_version = 8
        return model


def check_shapes(model, expected):
    """ONNX shape inference of every value against cnnc's shapes."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    known = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        dims = vi.type.tensor_type.shape.dim
        known[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    bad = []
    for name, exp in expected.items():
        got = known.get(name)
        if got is None:
            bad.append(f"{name}: no inferred shape")
        elif got[1:] != exp[1:]:
            bad.append(f"{name}: ONNX {got[1:]}, cnnc {exp[1:]}")
    if bad:
        raise ExportError("shape mismatch between ONNX and cnnc:\n  " + "\n  ".join(bad[:20]))
    return len(expected)


def model_values(graph, seed=0, weights=None):
    """{parameter name: Keras-layout float32 array}: from `weights` (a
    safetensors file) or random with `seed`."""
    if weights:
        return read_safetensors(weights)
    rng = np.random.default_rng(seed)
    return {p["name"]: random_param(p["name"], p["shape"], rng) for p in graph["params"]}


def export(cnnc, spec, out_path, seed=0, weights=None):
    """Exports `spec`; returns the summary dict printed by main()."""
    import onnx

    graph_args = ["build", spec, "--emit", "graph", "--format", "json", "--no-optimize"]
    graph = run_cnnc(cnnc, graph_args)
    summary = run_cnnc(cnnc, ["build", spec, "--format", "json"])
    graph_sha = hashlib.sha256(json.dumps(graph, sort_keys=True).encode()).hexdigest()

    values = model_values(graph, seed, weights)
    missing = [p["name"] for p in graph["params"] if p["name"] not in values]
    if missing:
        raise ExportError(f"no values for parameters {missing[:5]}")

    ex = Exporter(graph, values)
    model = ex.export()

    # Every cnnc parameter appears exactly once, and nothing else counts.
    declared = [p["name"] for p in graph["params"]]
    if sorted(ex.used_params) != sorted(declared):
        unused = sorted(set(declared) - set(ex.used_params))
        raise ExportError(f"parameters not used exactly once; unused: {unused[:5]}")
    params = int(sum(ex.initializers[n].size for n in ex.used_params))
    if params != summary["total_params"]:
        raise ExportError(f"ONNX model has {params} parameters, cnnc's summary {summary['total_params']}")
    keras = KERAS_TOTALS.get(graph["name"])
    if keras is not None and params != keras:
        raise ExportError(f"{graph['name']}: {params} parameters, Keras's total is {keras}")

    onnx.checker.check_model(model, full_check=True)
    checked_values = check_shapes(model, ex.expected)

    in_op = graph["ops"][graph["inputs"][0]]
    h_w_c = in_op["output_shape"][1:]
    for key, value in {
        "cnnc_params": str(params),
        "cnnc_flops_per_image": str(summary["flops"]),
        "cnnc_graph_sha256": graph_sha,
        "cnnc_input_nhwc": json.dumps(h_w_c),
        "cnnc_spec": os.path.basename(spec),
    }.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value

    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = out_path + ".tmp"
    onnx.save(model, tmp)
    os.replace(tmp, out_path)

    input_nchw = [h_w_c[2], h_w_c[0], h_w_c[1]] if len(h_w_c) == 3 else h_w_c
    out_shapes = [graph["ops"][i]["output_shape"][1:] for i in graph["outputs"]]
    return {
        "model": graph["name"],
        "onnx": out_path,
        "params": params,
        "keras_params": keras,
        "flops_per_image": summary["flops"],
        "input_shape_nchw": input_nchw,
        "output_shapes": out_shapes,
        "nodes": len(model.graph.node),
        "shape_checked_values": checked_values,
        "ops": sorted({n.op_type for n in model.graph.node}),
        "graph_sha256": graph_sha,
        "seed": seed,
    }


def cnnc_output(cnnc, spec, weights, batch, threads, optimize):
    """(input, output) of one `cnnc bench --mode infer --weights W --dump-io`
    run: the first input batch (NHWC) and cnnc's output on it."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        io_path = os.path.join(tmp, "io.safetensors")
        cmd = [cnnc, "--threads", str(threads), "bench", spec, "--mode", "infer", "--batch-size", str(batch),
               "--steps", "1", "--warmup", "0", "--weights", weights, "--dump-io", io_path, "--format", "json"]
        if not optimize:
            cmd.append("--no-optimize")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ExportError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip()}")
        io = read_safetensors(io_path)
    return io["input"], io["output"]


def verify(cnnc, spec, onnx_path, weights, batch=2, threads=1):
    """Runs cnnc and ONNX Runtime on the same input and weights. `rel` (max
    |ort - cnnc| / (max - min of cnnc's output)) compares the graph as lowered (`cnnc bench
    --no-optimize`, the ops this exporter translates); `rel_optimized` cnnc's
    optimized inference graph (folded batch norms, fused ops)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
    out = {}
    for optimize, key in ((False, "rel"), (True, "rel_optimized")):
        x, want = cnnc_output(cnnc, spec, weights, batch, threads, optimize)
        if x.ndim == 4:
            x = x.transpose(0, 3, 1, 2)
        got = sess.run(None, {sess.get_inputs()[0].name: np.ascontiguousarray(x)})[0]
        if got.shape != want.shape:
            raise ExportError(f"output shapes differ: ONNX Runtime {got.shape}, cnnc {want.shape}")
        diff = float(np.max(np.abs(got - want)))
        # Relative to the spread of cnnc's output (stricter than to its
        # largest value when a softmax over 1,000 classes is near uniform).
        spread = float(np.max(want) - np.min(want)) or float(np.max(np.abs(want)))
        if not optimize:
            out.update(max_abs_diff=diff, output_spread=spread)
        out[key] = diff / max(spread, 1e-30)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", help="the .cnn spec")
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    p.add_argument("--cnnc", default=os.environ.get("CNNC", "target/release/cnnc"), help="the cnnc binary")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--weights", help="a cnnc .safetensors checkpoint to take the weights from")
    p.add_argument("--verify", action="store_true",
                   help="also compare ONNX Runtime's output with cnnc's on the same input and weights "
                        "(cnnc bench --weights --dump-io); fails above --tolerance")
    p.add_argument("--tolerance", type=float, default=1e-3,
                   help="largest max|ort - cnnc| / (max - min of cnnc's output) accepted by --verify")
    p.add_argument("--reuse", action="store_true",
                   help="keep OUTPUT when its record OUTPUT.json names the same cnnc graph and seed "
                        "(--verify still runs)")
    args = p.parse_args()
    sidecar = args.output + ".json"
    tmp_weights = None
    try:
        graph = run_cnnc(args.cnnc, ["build", args.spec, "--emit", "graph", "--format", "json", "--no-optimize"])
        sha = hashlib.sha256(json.dumps(graph, sort_keys=True).encode()).hexdigest()
        info = None
        if args.reuse and not args.weights and os.path.exists(args.output) and os.path.exists(sidecar):
            try:
                with open(sidecar) as f:
                    old = json.load(f)
                if old.get("graph_sha256") == sha and old.get("seed") == args.seed:
                    info = dict(old, reused=True)
            except (OSError, json.JSONDecodeError):
                pass
        if info is None:
            if os.path.exists(sidecar):
                os.remove(sidecar)
            weights = args.weights
            if args.verify and not weights:
                # The same values export() draws from --seed, for cnnc to load.
                tmp_weights = args.output + ".weights.safetensors"
                os.makedirs(os.path.dirname(os.path.abspath(tmp_weights)), exist_ok=True)
                write_safetensors(tmp_weights, model_values(graph, args.seed))
                weights = tmp_weights
            info = export(args.cnnc, args.spec, args.output, seed=args.seed, weights=weights)
        elif args.verify:
            tmp_weights = args.output + ".weights.safetensors"
            write_safetensors(tmp_weights, model_values(graph, args.seed))
        if args.verify:
            # Run every time (cnnc's optimized graph changes with its passes).
            check = verify(args.cnnc, args.spec, args.output, args.weights or tmp_weights)
            info["verify"] = check
        if not args.weights:
            with open(sidecar, "w") as f:
                json.dump({k: v for k, v in info.items() if k != "reused"}, f)
    except (ExportError, OSError, json.JSONDecodeError) as e:
        print(f"export_onnx: {args.spec}: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        if tmp_weights and os.path.exists(tmp_weights):
            os.remove(tmp_weights)
    print(json.dumps(info))
    if args.verify and not info["verify"]["rel"] <= args.tolerance:
        print(f"export_onnx: {args.spec}: ONNX Runtime and cnnc outputs differ: {info['verify']}", file=sys.stderr)
        sys.exit(3)

if __name__ == "__main__":
    main()
