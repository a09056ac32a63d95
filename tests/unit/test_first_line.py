"""Another library's error quoted inside edgeq's one-line messages: its first line, or its type when it says nothing
(an empty message used to raise IndexError from ``str(e).splitlines()[0]``: an internal error instead of the line)."""

from __future__ import annotations

import pytest

from edgeq.errors import ModelError, first_line


def test_first_line_of_an_error():
    assert first_line(ValueError("  bad shape\n  at node 3\n")) == "bad shape"
    assert first_line(OSError()) == "OSError"
    assert first_line(RuntimeError("\n\n")) == "RuntimeError"
    assert first_line(ValueError("x" * 500), 10) == "x" * 10


def test_an_external_data_error_that_says_nothing_is_still_one_line(tmp_path, monkeypatch):
    import onnx
    from onnx import TensorProto, helper

    import edgeq.core.onnxutil as ou

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(g)

    def silent(*a, **k):
        raise OSError()

    monkeypatch.setattr(onnx.external_data_helper, "load_external_data_for_model", silent)
    with pytest.raises(ModelError) as e:
        ou._load_external(model, tmp_path, "m.onnx")
    assert e.value.message == "cannot read external data of m.onnx: OSError"
