"""Models whose weights live in ONNX external data, written without holding them in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper


def _external(name: str, dims: tuple[int, ...], location: str, offset: int) -> onnx.TensorProto:
    t = onnx.TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(dims))
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(4 * int(np.prod(dims))))):
        e = t.external_data.add()
        e.key, e.value = k, v
    return t


def make_linear_stack(path: Path, widths: tuple[int, ...], *, seed: int = 0, location: str = "weights.bin",
                      chunk_rows: int = 1024) -> Path:
    """MatMul + Add (+ Relu between layers) over ``widths``; every weight and bias in one external file.

    Input ``x`` float32 [N, widths[0]], output ``y`` float32 [N, widths[-1]]. Weights are
    N(0, 1/fan_in), written ``chunk_rows`` rows at a time: building a 2 GiB model needs
    no more memory than one chunk.
    """
    path = Path(path)
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = "x"
    offset = 0
    with open(path.parent / location, "wb") as f:
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            inits.append(_external(f"w{i}", (a, b), location, offset))
            for r in range(0, a, chunk_rows):
                rows = min(chunk_rows, a - r)
                block = rng.standard_normal((rows, b), dtype=np.float32)
                block *= np.float32(1.0 / np.sqrt(a))
                f.write(block.tobytes())
            offset += 4 * a * b
            bias = rng.normal(0, 0.1, (b,)).astype(np.float32)
            inits.append(_external(f"b{i}", (b,), location, offset))
            f.write(bias.tobytes())
            offset += 4 * b
            nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"mm{i}"))
            last = i == len(widths) - 2
            nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], ["y" if last else f"a{i}"], name=f"add{i}"))
            if not last:
                nodes.append(helper.make_node("Relu", [f"a{i}"], [f"r{i}"], name=f"relu{i}"))
                x = f"r{i}"
    graph = helper.make_graph(
        nodes, "linear_stack",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", widths[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", widths[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgeq-tests")
    model.ir_version = 8
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return path


def weight_bytes(widths: tuple[int, ...]) -> int:
    return sum(4 * (a * b + b) for a, b in zip(widths[:-1], widths[1:]))
