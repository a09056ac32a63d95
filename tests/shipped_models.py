"""Models for the shipped-artifact speed tests and tools/bench_shipped.py (onnx.helper, seeded weights).

``make_mbv3``: a MobileNetV3-style net (hard-swish stem, inverted residual blocks with depthwise
convolutions, squeeze-excite with hard-sigmoid, 1x1 head, classifier); weights scaled so each
layer keeps its activations near unit variance (like BatchNorm folded after calibration).
``make_convnet``: a small plain conv net (3x3 convs with ReLU, max-pooling, classifier).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class _Net:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.inits: list = []
        self.n = 0

    def _name(self, kind: str) -> str:
        self.n += 1
        return f"{kind}_{self.n}"

    def conv(self, x: str, cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: str | None = None) -> str:
        name = self._name("conv")
        fan_in = cin // groups * k * k
        w = self.rng.normal(0, (2.0 / fan_in) ** 0.5, (cout, cin // groups, k, k)).astype(np.float32)
        b = self.rng.normal(0, 0.05, (cout,)).astype(np.float32)
        self.inits += [numpy_helper.from_array(w, name + "_w"), numpy_helper.from_array(b, name + "_b")]
        self.nodes.append(helper.make_node("Conv", [x, name + "_w", name + "_b"], [name], name=name, kernel_shape=[k, k],
                                           strides=[stride, stride], pads=[k // 2] * 4, group=groups))
        return self.act(name, act) if act else name

    def act(self, x: str, kind: str) -> str:
        name = self._name(kind.lower())
        self.nodes.append(helper.make_node(kind, [x], [name], name=name))
        return name

    def op(self, kind: str, inputs: list[str], **attrs) -> str:
        name = self._name(kind.lower())
        self.nodes.append(helper.make_node(kind, inputs, [name], name=name, **attrs))
        return name

    def save(self, path: Path, x_shape: list, y: str, y_shape: list, opset: int = 17) -> Path:
        self.nodes.append(helper.make_node("Identity", [y], ["logits"], name="out"))
        graph = helper.make_graph(self.nodes, "net", [helper.make_tensor_value_info("input", TensorProto.FLOAT, x_shape)],
                                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, y_shape)], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgeq-tests")
        model.ir_version = 8
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
        return Path(path)

    def classifier(self, x: str, c: int, classes: int) -> str:
        p = self.op("GlobalAveragePool", [x])
        f = self.op("Flatten", [p])
        w = self.rng.normal(0, (1.0 / c) ** 0.5, (classes, c)).astype(np.float32)
        b = np.zeros(classes, np.float32)
        name = self._name("fc")
        self.inits += [numpy_helper.from_array(w, name + "_w"), numpy_helper.from_array(b, name + "_b")]
        self.nodes.append(helper.make_node("Gemm", [f, name + "_w", name + "_b"], [name], name=name, transB=1))
        return name


def make_mbv3(path: Path, *, size: int = 96, seed: int = 0, classes: int = 10, width: int = 16) -> Path:
    """Input ``input`` [N, 3, size, size] -> ``logits`` [N, classes]."""
    net = _Net(seed)
    x = net.conv("input", 3, width, 3, 2, act="HardSwish")
    c = width
    # (expansion, out channels, kernel, stride, squeeze-excite, activation)
    blocks = [(1, 16, 3, 2, True, "Relu"), (4, 24, 3, 2, False, "Relu"), (3, 24, 3, 1, False, "Relu"),
              (3, 40, 5, 2, True, "HardSwish"), (3, 40, 5, 1, True, "HardSwish"), (6, 48, 3, 1, True, "HardSwish")]
    for t, cout, k, s, se, act in blocks:
        inp, e = x, c * t
        h = net.conv(x, c, e, 1, act=act) if t != 1 else x
        h = net.conv(h, e, e, k, s, groups=e, act=act)
        if se:
            p = net.op("GlobalAveragePool", [h])
            q = net.conv(p, e, max(8, e // 4), 1, act="Relu")
            g = net.act(net.conv(q, max(8, e // 4), e, 1), "HardSigmoid")
            h = net.op("Mul", [h, g])
        h = net.conv(h, e, cout, 1)
        x = net.op("Add", [h, inp]) if s == 1 and cout == c else h
        c = cout
    x = net.conv(x, c, 6 * c, 1, act="HardSwish")
    y = net.classifier(x, 6 * c, classes)
    return net.save(path, ["N", 3, size, size], y, ["N", classes])


def make_convnet(path: Path, *, size: int = 32, seed: int = 0, classes: int = 10) -> Path:
    """Input ``input`` [N, 3, size, size] -> ``logits``: three 3x3 conv stages with ReLU and max-pooling."""
    net = _Net(seed)
    x, c = "input", 3
    for cout in (16, 32, 64):
        x = net.conv(x, c, cout, 3, act="Relu")
        x = net.conv(x, cout, cout, 3, act="Relu")
        x = net.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
        c = cout
    y = net.classifier(x, c, classes)
    return net.save(path, ["N", 3, size, size], y, ["N", classes])


def image_data(n: int, size: int, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Smooth random images (low-frequency patterns plus noise), ``input`` [n, 3, size, size]."""
    rng = np.random.default_rng(seed)
    lo = rng.normal(0, 1, (n, 3, 4, 4)).astype(np.float32)
    img = np.kron(lo, np.ones((1, 1, size // 4 + 1, size // 4 + 1), np.float32))[:, :, :size, :size]
    return {"input": (img + 0.3 * rng.normal(0, 1, img.shape)).astype(np.float32)}
