"""Static-shape targets pin each input's batch axis to 1, which is not always the first axis (edgeq.core.batchaxis),
and take the other dynamic axes (declared symbolic or -1) from the calibration data."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper


def _rnn_like(path, time_dim="T", batch_dim="batch", state_first=2):
    """y = x + h broadcast: x time-major [T, batch, 4], h an RNN state [2, batch, 4]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [time_dim, batch_dim, 4])
    h = helper.make_tensor_value_info("h", TensorProto.FLOAT, [state_first, batch_dim, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [state_first, batch_dim, 4])
    hn = helper.make_tensor_value_info("hn", TensorProto.FLOAT, [state_first, batch_dim, 4])
    g = helper.make_graph([helper.make_node("ReduceSum", ["x", "ax"], ["s"], keepdims=0),
                           helper.make_node("Add", ["s", "h"], ["y"]), helper.make_node("Identity", ["h"], ["hn"])],
                          "rnn", [x, h], [y, hn], initializer=[helper.make_tensor("ax", TensorProto.INT64, [1], [0])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(m, str(path))
    return path


def _dims(path, i):
    d = onnx.load(str(path)).graph.input[i].type.tensor_type.shape.dim
    return [x.dim_value if x.HasField("dim_value") else x.dim_param for x in d]


def test_time_major_input_pins_its_named_batch_axis_and_takes_time_from_the_data(tmp_path):
    from edgeq.core.onnxutil import artifact_from
    from edgeq.core.optimization import optimize
    from edgeq.core.targets import load_target

    art = artifact_from(_rnn_like(tmp_path / "m.onnx"))
    opt, notes = optimize(art, load_target("nnapi"), tmp_path / "o.onnx", data_shapes={"x": (16, 1, 4), "h": (2, 1, 4)})
    assert _dims(opt.path, 0) == [16, 1, 4]  # time from the data, batch (axis 1) pinned: not time pinned to 1
    assert _dims(opt.path, 1) == [2, 1, 4]
    assert any("pinned batch axis of x (axis 1) to 1" in n for n in notes)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(opt.path), providers=["CPUExecutionProvider"])
    y = sess.run(["y"], {"x": np.ones((16, 1, 4), np.float32), "h": np.zeros((2, 1, 4), np.float32)})[0]
    assert y.shape == (2, 1, 4) and float(y[0, 0, 0]) == 16.0


def test_minus_one_dims_are_dynamic_and_pinned(tmp_path):
    from edgeq.core.onnxutil import artifact_from
    from edgeq.core.optimization import optimize
    from edgeq.core.targets import load_target

    m = onnx.load(str(_rnn_like(tmp_path / "m.onnx")))
    for vi in m.graph.input:  # an exporter that writes -1 for every dynamic axis
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param"):
                d.Clear()
                d.dim_value = -1
    p = tmp_path / "neg.onnx"
    onnx.save(m, str(p))
    opt, _ = optimize(artifact_from(p), load_target("coreml"), tmp_path / "o.onnx", data_shapes={"x": (1, 1, 4), "h": (2, 1, 4)})
    assert _dims(opt.path, 0) == [1, 1, 4] and _dims(opt.path, 1) == [2, 1, 4]  # no -1 left on a static-shape target


def test_a_model_onnxruntime_rejects_once_pinned_gets_one_line_naming_the_pins(tmp_path):
    """The file loads with dynamic axes; at the pinned sizes onnxruntime's shape inference refuses it (silero-vad's If
    branches on a static-shape target): one line naming the pinned shapes and the fix, and no staged file left."""
    import pytest

    from edgeq.core.onnxutil import artifact_from
    from edgeq.core.optimization import optimize
    from edgeq.core.targets import load_target
    from edgeq.errors import ModelError

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 4])
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 2], [0.5] * 8)
    g = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["y"])],
                          "g", [x], [y], initializer=[shape, w])
    p = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(p))
    optimize(artifact_from(p), load_target("cpu-x86_64"), tmp_path / "ok.onnx")  # dynamic: loads
    with pytest.raises(ModelError) as e:
        optimize(artifact_from(p), load_target("nnapi"), tmp_path / "o.onnx", data_shapes={"x": (1, 3)})
    assert "once its dynamic axes are pinned (x 1x3)" in e.value.message and "--static-shape" in e.value.hint
    assert "\n" not in e.value.message and not (tmp_path / "o.pre.onnx").exists() and not (tmp_path / "o.onnx").exists()
