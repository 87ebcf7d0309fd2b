"""Reference data for the cnnc model zoo (issue 3), from keras.applications.

Builds ResNet50, Xception, MobileNetV2 (alpha 1.0) and VGG16 with
`weights=None` (nothing is downloaded), each with `include_top=True` and
`include_top=False`, and writes one JSON file per variant next to this script:

    {"model": ..., "keras_version": ..., "input_shape": [h, w, c],
     "total_params": ..., "trainable_params": ..., "non_trainable_params": ...,
     "output_shapes": [[...]],
     "layers": [{"name", "class", "output_shape", "params", "trainable_params",
                 "inbound", "config"}, ...]}

Shapes drop the batch dimension. `InputLayer` rows are left out of `layers`
(the input shape is recorded in `input_shape`). `inbound` lists the names of
the layers a layer reads, in call order (the model input is called `input`,
as in cnnc). `config` keeps the arguments that decide shapes and parameter
counts (filters, kernel_size, strides, padding, use_bias, epsilon, ...).

Run with the benchmark's virtual environment:

    bench/.venv/bin/python compiler/tests/zoo_reference/keras_zoo.py
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

# Config keys kept per layer (when the layer has them).
CONFIG_KEYS = (
    "filters", "kernel_size", "strides", "padding", "dilation_rate",
    "depth_multiplier", "use_bias", "activation", "units", "pool_size",
    "epsilon", "momentum", "center", "scale", "max_value", "axis", "rate",
)


def shape_list(shape):
    """Per-example shape: the batch dimension dropped, as a list of ints."""
    return [int(d) for d in tuple(shape)[1:]]


def layer_config(layer):
    cfg = layer.get_config()
    out = {}
    for key in CONFIG_KEYS:
        if key not in cfg or cfg[key] is None:
            continue
        value = cfg[key]
        if isinstance(value, tuple):
            value = list(value)
        if key == "padding" and isinstance(value, list):
            value = [list(v) if isinstance(v, (tuple, list)) else v for v in value]
        if isinstance(value, float):
            value = float(f"{value:.7g}")
        out[key] = value
    return out


def inbound_names(layer, input_names):
    node = layer._inbound_nodes[0]
    names = []
    for tensor in node.input_tensors:
        op = tensor._keras_history.operation
        names.append("input" if op.name in input_names else op.name)
    return names


def describe(model):
    input_names = {layer.name for layer in model.layers
                   if isinstance(layer, keras.layers.InputLayer)}
    layers = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        trainable = sum(int(w.numpy().size) for w in layer.trainable_weights)
        layers.append({
            "name": layer.name,
            "class": layer.__class__.__name__,
            "output_shape": shape_list(layer.output.shape),
            "params": int(layer.count_params()),
            "trainable_params": trainable,
            "inbound": inbound_names(layer, input_names),
            "config": layer_config(layer),
        })
    trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
    non_trainable = sum(int(w.numpy().size) for w in model.non_trainable_weights)
    outputs = model.outputs if isinstance(model.outputs, (list, tuple)) else [model.outputs]
    return {
        "model": model.name,
        "keras_version": keras.__version__,
        "input_shape": shape_list(model.inputs[0].shape),
        "total_params": int(model.count_params()),
        "trainable_params": trainable,
        "non_trainable_params": non_trainable,
        "output_shapes": [shape_list(o.shape) for o in outputs],
        "layers": layers,
    }


def write(path, data):
    """One JSON object, one line per layer."""
    head = {k: v for k, v in data.items() if k != "layers"}
    lines = [json.dumps(head)[:-1] + ', "layers": [']
    rows = [json.dumps(row) for row in data["layers"]]
    lines.append(",\n".join(rows))
    lines.append("]}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    json.loads(open(path).read())  # the file parses


MODELS = {
    "resnet50": lambda top: keras.applications.ResNet50(
        weights=None, include_top=top, input_shape=(224, 224, 3)),
    "xception": lambda top: keras.applications.Xception(
        weights=None, include_top=top, input_shape=(299, 299, 3)),
    "mobilenet_v2": lambda top: keras.applications.MobileNetV2(
        weights=None, include_top=top, alpha=1.0, input_shape=(224, 224, 3)),
    "vgg16": lambda top: keras.applications.VGG16(
        weights=None, include_top=top, input_shape=(224, 224, 3)),
}


def main():
    only = set(sys.argv[1:])
    for name, build in MODELS.items():
        if only and name not in only:
            continue
        for top in (True, False):
            keras.backend.clear_session()  # generated names restart per model
            model = build(top)
            data = describe(model)
            file = name + ("" if top else "_notop") + ".json"
            write(os.path.join(HERE, file), data)
            print(f"{file}: total {data['total_params']:,} trainable "
                  f"{data['trainable_params']:,} non-trainable "
                  f"{data['non_trainable_params']:,} outputs {data['output_shapes']} "
                  f"layers {len(data['layers'])}")


if __name__ == "__main__":
    main()
