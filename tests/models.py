"""Tiny models and data built in the tests (onnx.helper); no files from outside."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _init(name: str, arr: np.ndarray):
    return numpy_helper.from_array(np.ascontiguousarray(arr), name)


def make_cnn(path: Path, *, seed: int = 0, batch: str | int = "N", opset: int = 17, classes: int = 10) -> Path:
    """Conv(1->8, 3x3) -> Relu -> Conv(8->16) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(16->classes).

    Input ``x`` float32 [batch, 1, 8, 8]; output ``y`` float32 [batch, classes].
    """
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.5, (8, 1, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.1, (8,)).astype(np.float32)
    w2 = rng.normal(0, 0.2, (16, 8, 3, 3)).astype(np.float32)
    b2 = rng.normal(0, 0.1, (16,)).astype(np.float32)
    w3 = rng.normal(0, 0.3, (classes, 16)).astype(np.float32)
    b3 = rng.normal(0, 0.1, (classes,)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, classes])],
        [_init("w1", w1), _init("b1", b1), _init("w2", w2), _init("b2", b2), _init("w3", w3), _init("b3", b3)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgeq-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def make_mlp(path: Path, *, seed: int = 0, opset: int = 17, width: int = 32) -> Path:
    """Two-input MLP: y = MatMul(Relu(MatMul(a, W1) + b), W2) + c. Inputs a [N, 16], c [N, 4]."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.3, (16, width)).astype(np.float32)
    b1 = rng.normal(0, 0.1, (width,)).astype(np.float32)
    w2 = rng.normal(0, 0.3, (width, 4)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["a", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["hr"]),
        helper.make_node("MatMul", ["hr", "w2"], ["o"]),
        helper.make_node("Add", ["o", "c"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_mlp",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 16]),
            helper.make_tensor_value_info("c", TensorProto.FLOAT, ["N", 4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [_init("w1", w1), _init("b1", b1), _init("w2", w2)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgeq-tests")
    model.ir_version = 8
    onnx.save(model, str(path))
    return Path(path)


def cnn_data(n: int = 64, seed: int = 1, *, labels_from: Path | None = None) -> dict[str, np.ndarray]:
    """Inputs for make_cnn; with ``labels_from``, labels are the fp32 model's own predictions."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, 1, 8, 8), dtype=np.float32)
    out = {"x": x}
    if labels_from is not None:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(labels_from), providers=["CPUExecutionProvider"])
        out["labels"] = sess.run(None, {"x": x})[0].argmax(1).astype(np.int64)
    return out


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its bytes (to prove nothing changed)."""
    path = Path(path)
    if path.is_file():
        return {".": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def make_hardswish_cnn(path: Path, *, seed: int = 0, batch: str | int = 1, opset: int = 17) -> Path:
    """MobileNetV3-style ops on the tiny CNN: Conv -> HardSwish -> squeeze-excite (ReduceMean over H,W, Conv 1x1,
    HardSigmoid, Mul) -> GlobalAveragePool -> Flatten -> Gemm. Input ``x`` [batch, 1, 8, 8], output ``y`` [batch, 10]."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.5, (8, 1, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.1, (8,)).astype(np.float32)
    ws = rng.normal(0, 0.3, (8, 8, 1, 1)).astype(np.float32)
    w3 = rng.normal(0, 0.3, (10, 8)).astype(np.float32)
    b3 = rng.normal(0, 0.1, (10,)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("HardSwish", ["c1"], ["h1"], name="hswish1"),
        helper.make_node("ReduceMean", ["h1"], ["s0"], axes=[2, 3], keepdims=1, name="se_mean"),
        helper.make_node("Conv", ["s0", "ws"], ["s1"], name="se_conv"),
        helper.make_node("HardSigmoid", ["s1"], ["s2"], alpha=1.0 / 6, beta=0.5, name="se_gate"),
        helper.make_node("Mul", ["h1", "s2"], ["m"], name="se_mul"),
        helper.make_node("GlobalAveragePool", ["m"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_hardswish_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 10])],
        [_init("w1", w1), _init("b1", b1), _init("ws", ws), _init("w3", w3), _init("b3", b3)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgeq-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def save_graph(graph, path: Path, opset: int = 17) -> Path:
    """A tiny test graph written as an opset-``opset``, IR 8 model at ``path``."""
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path
