"""Reference for cnnc's flowers5 transfer-learning run: the same ImageNet
MobileNetV2 (the torchvision ONNX file, rebuilt as a Keras model with its own
weights), the same head, split fractions, preprocessing, augmentation and
phases as specs/transfer/flowers_mobilenet_v2.yaml, trained by TensorFlow.

  python3 -m venv bench/.venv && bench/.venv/bin/pip install -r bench/requirements.txt  # once (bench/run.sh does the same)
  bench/.venv/bin/python bench/reference/flowers_transfer_keras.py [--head-epochs 2] [--fine-epochs 6]

Run it from the repository root (it reads the ONNX file and the photos from
../shared; nothing needs to be built or imported first). It prints the
split sizes, the largest difference between the rebuilt base's pooled
features and ONNX Runtime's (about 5e-6), Keras's training log (validation
accuracy per epoch), then `test [loss, accuracy] wall SECONDS s`.

The split is per class with the same fractions as the run file (10% test,
15% validation, seed 42) but drawn by NumPy, so it holds other photos than
cnnc's split; compare accuracies, not individual predictions.

Measured 2026-11-30 on the 2-core machine (TensorFlow 2.21, Keras 3.15), the
defaults (Adam 1e-3 x2 with the base frozen, then Adam 1e-4 decay 0.002 x6
with everything trainable; flip + random 224 crop of 256):

  validation accuracy per epoch  71.8 73.5 | 78.7 77.7 75.7 78.3 82.0 80.9
  test accuracy                  81.6%, 737 s

cnnc with specs/transfer/flowers_mobilenet_v2.yaml on its own split:
71.0 73.4 | 78.0 79.8 74.4 80.4 78.6 80.0, test 78.4%.
"""
import argparse, glob, os, time
import numpy as np
import onnx
from onnx import numpy_helper
from PIL import Image

p = argparse.ArgumentParser()
p.add_argument('--onnx', default='../shared/models/mobilenet_v2_torchvision.onnx')
p.add_argument('--data', default='../shared/data/flowers5')
p.add_argument('--head-epochs', type=int, default=2)
p.add_argument('--fine-epochs', type=int, default=6)
p.add_argument('--head-lr', type=float, default=1e-3)
p.add_argument('--fine-lr', type=float, default=1e-4)
p.add_argument('--fine-decay', type=float, default=0.002)
p.add_argument('--threads', type=int, default=2)
p.add_argument('--seed', type=int, default=42)
a = p.parse_args()

import tensorflow as tf
import keras
tf.config.threading.set_intra_op_parallelism_threads(a.threads)
tf.config.threading.set_inter_op_parallelism_threads(1)
keras.utils.set_random_seed(a.seed)
L = keras.layers


def from_onnx(path):
    """Keras functional model (NHWC) equal to the ONNX graph's pooled features."""
    m = onnx.load(path)
    init = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    x = inp = keras.Input((224, 224, 3))
    env = {m.graph.input[0].name: x}
    for n in m.graph.node:
        at = {q.name: onnx.helper.get_attribute_value(q) for q in n.attribute}
        if n.op_type == 'Conv':
            w, b = init[n.input[1]], init[n.input[2]]          # [F, C/g, kh, kw]
            x = env[n.input[0]]
            pads = at.get('pads', [0, 0, 0, 0])
            if any(pads):
                x = L.ZeroPadding2D(((pads[0], pads[2]), (pads[1], pads[3])))(x)
            s = tuple(at.get('strides', [1, 1]))
            g = at.get('group', 1)
            if g == 1:
                layer = L.Conv2D(w.shape[0], w.shape[2:], strides=s, padding='valid')
                y = layer(x)
                layer.set_weights([w.transpose(2, 3, 1, 0), b])
            else:
                assert g == w.shape[0] and w.shape[1] == 1
                layer = L.DepthwiseConv2D(w.shape[2:], strides=s, padding='valid')
                y = layer(x)
                layer.set_weights([w.transpose(2, 3, 0, 1), b])
            env[n.output[0]] = y
        elif n.op_type == 'Clip':
            env[n.output[0]] = L.ReLU(max_value=6.0)(env[n.input[0]])
        elif n.op_type == 'Add':
            env[n.output[0]] = L.Add()([env[n.input[0]], env[n.input[1]]])
        elif n.op_type == 'GlobalAveragePool':
            env[n.output[0]] = L.GlobalAveragePooling2D()(env[n.input[0]])
            return keras.Model(inp, env[n.output[0]])
        else:
            raise SystemExit(f'unexpected op {n.op_type}')


MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def load(files):
    """Shorter side to 256 (bilinear), centre 256x256, [0,1], torchvision
    mean/std; NHWC float32 (as the run file's `resize_shorter: 256`; the
    flowers5 photos are all square, so this is a plain resize for them)."""
    out = np.empty((len(files), 256, 256, 3), np.float32)
    for i, f in enumerate(files):
        im = Image.open(f).convert('RGB')
        w, h = im.size
        scale = 256 / min(w, h)
        im = im.resize((max(256, round(w * scale)), max(256, round(h * scale))), Image.BILINEAR)
        left, top = (im.width - 256) // 2, (im.height - 256) // 2
        im = im.crop((left, top, left + 256, top + 256))
        out[i] = (np.asarray(im, np.float32) / 255 - MEAN) / STD
    return out


classes = sorted(os.listdir(a.data))
rng = np.random.default_rng(a.seed)
parts = {'train': [], 'val': [], 'test': []}
for c, name in enumerate(classes):
    fs = sorted(glob.glob(os.path.join(a.data, name, '*')))
    idx = rng.permutation(len(fs))
    nt, nv = round(0.10 * len(fs)), round(0.15 * len(fs))
    parts['test'] += [(fs[i], c) for i in idx[:nt]]
    parts['val'] += [(fs[i], c) for i in idx[nt:nt + nv]]
    parts['train'] += [(fs[i], c) for i in idx[nt + nv:]]
data = {k: (load([f for f, _ in v]), np.array([c for _, c in v])) for k, v in parts.items()}
print({k: len(v[1]) for k, v in data.items()}, flush=True)


def train_ds(x, y):
    def aug(img, lab):
        img = tf.image.random_crop(img, (224, 224, 3))
        return tf.image.random_flip_left_right(img), lab
    return (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(y), seed=a.seed)
            .map(aug).batch(32).prefetch(2))


def eval_ds(x, y):
    return tf.data.Dataset.from_tensor_slices((x[:, 16:240, 16:240], y)).batch(64)


base = from_onnx(a.onnx)
# Check the rebuilt base against ONNX Runtime's pooled features.
import onnxruntime as ort
m = onnx.load(a.onnx)
gap = [n for n in m.graph.node if n.op_type == 'GlobalAveragePool'][0].output[0]
m.graph.output.append(onnx.helper.make_tensor_value_info(gap, onnx.TensorProto.FLOAT, None))
sess = ort.InferenceSession(m.SerializeToString())
probe = data['val'][0][:4, 16:240, 16:240]
ref = sess.run([gap], {sess.get_inputs()[0].name: probe.transpose(0, 3, 1, 2)})[0].reshape(4, -1)
print('max |keras - ort| pooled features:', float(np.abs(base.predict(probe, verbose=0) - ref).max()), flush=True)

model = keras.Sequential([base, L.Dense(len(classes), activation='softmax')])
tr, va, te = data['train'], data['val'], data['test']
t0 = time.time()
base.trainable = False
model.compile(keras.optimizers.Adam(a.head_lr), loss='sparse_categorical_crossentropy', metrics=['accuracy'])
model.fit(train_ds(*tr), validation_data=eval_ds(*va), epochs=a.head_epochs, verbose=2)
base.trainable = True
# Keras 2's `decay`: lr / (1 + decay * iterations), as cnnc's `decay`.
sched = keras.optimizers.schedules.InverseTimeDecay(a.fine_lr, 1, a.fine_decay)
model.compile(keras.optimizers.Adam(sched), loss='sparse_categorical_crossentropy', metrics=['accuracy'])
model.fit(train_ds(*tr), validation_data=eval_ds(*va), epochs=a.fine_epochs, verbose=2)
print('test', model.evaluate(eval_ds(*te), verbose=0), 'wall', round(time.time() - t0, 1), 's')
