"""Self-test of bench/export_onnx.py: exports specs and checks ONNX Runtime's
output against cnnc's on the same random weights and input (`--verify`, both
cnnc's graph as lowered and its optimized graph), plus the parameter totals.

    CNNC=target/release/cnnc bench/.venv/bin/python bench/test_export_onnx.py

Needs a built cnnc (`$CNNC`, default target/release/cnnc) and the bench venv
(onnx, onnxruntime). About a minute on 2 cores (ResNet-50 and Xception
dominate).
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CNNC = os.environ.get("CNNC", os.path.join(ROOT, "target", "release", "cnnc"))

# spec -> (total parameters, ONNX op types that must appear). The totals are
# Keras's `count_params()` for the Fashion CNN and keras.applications models;
# all_ops: conv 3*3*3*8+8 = 224, depthwise 3*3*8*2+16 = 160, separable
# 3*3*16 + 16*24 + 24 = 552, conv 1x1 24*6+6 = 150, dense 12*4+4 = 52.
CASES = {
    "specs/fashion_mnist.cnn": (1_413_834, {"Conv", "MaxPool", "Gemm", "Softmax"}),
    "specs/zoo/resnet50.cnn": (25_636_712, {"Conv", "BatchNormalization", "Add", "Pad", "GlobalAveragePool"}),
    "specs/zoo/xception.cnn": (22_910_480, {"Conv", "BatchNormalization", "Add", "MaxPool"}),
    "specs/examples/fcn.cnn": (None, {"ConvTranspose", "Add"}),
    "bench/testdata/all_ops.cnn": (1_138, {"Concat", "Mul", "AveragePool", "Resize", "Reshape", "GlobalMaxPool",
                                           "Sigmoid", "Tanh"}),
}


@unittest.skipUnless(os.path.exists(CNNC), f"no cnnc binary at {CNNC} (set CNNC)")
class ExportOnnxTest(unittest.TestCase):
    def test_exports_match_cnnc(self):
        with tempfile.TemporaryDirectory() as tmp:
            for spec, (params, ops) in CASES.items():
                with self.subTest(spec=spec):
                    out = os.path.join(tmp, os.path.basename(spec) + ".onnx")
                    proc = subprocess.run(
                        [sys.executable, os.path.join(HERE, "export_onnx.py"), "--cnnc", CNNC,
                         os.path.join(ROOT, spec), "-o", out, "--verify"],
                        capture_output=True, text=True, cwd=ROOT)
                    self.assertEqual(proc.returncode, 0, proc.stderr)
                    info = json.loads(proc.stdout.strip().splitlines()[-1])
                    if params is not None:
                        self.assertEqual(info["params"], params)
                    self.assertTrue(ops <= set(info["ops"]), f"missing {ops - set(info['ops'])}")
                    self.assertLess(info["verify"]["rel"], 1e-4)
                    self.assertLess(info["verify"]["rel_optimized"], 1e-4)


if __name__ == "__main__":
    unittest.main()
