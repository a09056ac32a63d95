"""`edgeq inspect` counts weights that an exporter keeps in Constant nodes (silero-vad's spox export:
every weight a Constant, inside If branches; inspect said "parameters 0 (0 B)"). Integer Constants
(shapes, axes) are not parameters."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from tests.models import save_graph
from edgeq.core.onnxutil import describe


def test_float_constants_in_the_graph_and_in_if_branches_are_parameters(tmp_path):
    def const(name, arr):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(arr, name + "_v"))

    branch = lambda tag, n: helper.make_graph(  # noqa: E731
        [const(f"w_{tag}", np.ones((4, n), np.float32)), helper.make_node("MatMul", ["x", f"w_{tag}"], [f"y_{tag}"])],
        tag, [], [helper.make_tensor_value_info(f"y_{tag}", TensorProto.FLOAT, None)])
    nodes = [const("shape", np.array([1, -1], np.int64)),  # an integer Constant: not a parameter
             helper.make_node("Reshape", ["x0", "shape"], ["x"]),
             helper.make_node("If", ["c"], ["y"], then_branch=branch("a", 3), else_branch=branch("b", 5))]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x0", TensorProto.FLOAT, [1, 4]),
                                       helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.zeros(7, np.float16), "unused")])
    path = tmp_path / "m.onnx"
    save_graph(g, path)
    d = describe(path)
    assert d["parameters"] == 4 * 3 + 4 * 5 + 7
    assert d["parameter_bytes"] == (4 * 3 + 4 * 5) * 4 + 7 * 2
