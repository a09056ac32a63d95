"""Per-target graph rewrites (edgeq/core/rewrite.py): structure changes, numbers checked against the unrewritten graph."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeq.errors import ModelError, TargetError
from edgeq.core.rewrite import REWRITES, apply
from tests.models import make_hardswish_cnn


def _ops(path: Path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _feeds(shape, n=3):
    rng = np.random.default_rng(0)
    return [{"x": (rng.standard_normal(shape) * 4).astype(np.float32)} for _ in range(n)]


def _run(path: Path, feed):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def _reducemean(tmp_path: Path, *, axes, keepdims: int, opset: int, name="rm.onnx") -> Path:
    """x [1, 4, 5, 6] -> ReduceMean(axes) -> Relu."""
    inits = []
    if opset >= 18:
        inits.append(numpy_helper.from_array(np.array(axes, np.int64), "axes"))
        rm = helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=keepdims, name="rm")
    else:
        rm = helper.make_node("ReduceMean", ["x"], ["m"], axes=axes, keepdims=keepdims, name="rm")
    g = helper.make_graph([rm, helper.make_node("Relu", ["m"], ["y"], name="relu")], "rm",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    m = onnx.shape_inference.infer_shapes(m)
    p = tmp_path / name
    onnx.save(m, str(p))
    return p


def test_hardswish_and_hardsigmoid_become_mul_add_clip_with_the_same_outputs(tmp_path):
    src = make_hardswish_cnn(tmp_path / "hs.onnx")
    work = tmp_path / "rw.onnx"
    work.write_bytes(src.read_bytes())
    feeds = _feeds((1, 1, 8, 8))
    done = apply(work, ("hardswish-decompose", "hardsigmoid-decompose", "reducemean-hw-to-gap"), feeds, atol=1e-4, rtol=1e-3)
    assert [(r.name, r.nodes) for r in done] == [("hardswish-decompose", 1), ("hardsigmoid-decompose", 1), ("reducemean-hw-to-gap", 1)]
    assert all(r.samples == 3 and r.max_abs_diff is not None and r.max_abs_diff < 1e-5 for r in done)
    before, after = _ops(src), _ops(work)
    assert before["HardSwish"] == before["HardSigmoid"] == before["ReduceMean"] == 1
    assert after["HardSwish"] == after["HardSigmoid"] == after["ReduceMean"] == 0
    assert after["Clip"] == 2 and after["GlobalAveragePool"] == 2 and after["Mul"] == before["Mul"] + 3
    onnx.checker.check_model(onnx.load(str(work)))
    for f in feeds:  # saturated ends included (inputs x4)
        np.testing.assert_allclose(_run(work, f), _run(src, f), atol=1e-5)
    assert apply(work, ("hardswish-decompose",), feeds, atol=1e-4, rtol=1e-3) == []  # nothing left to rewrite


@pytest.mark.parametrize("axes,keepdims,opset", [([2, 3], 1, 17), ([-1, -2], 0, 17), ([2, 3], 0, 18), ([3, 2], 1, 18)])
def test_reducemean_over_h_w_becomes_global_average_pool(tmp_path, axes, keepdims, opset):
    src = _reducemean(tmp_path, axes=axes, keepdims=keepdims, opset=opset)
    work = tmp_path / "rw.onnx"
    work.write_bytes(src.read_bytes())
    feeds = _feeds((1, 4, 5, 6), 2)
    (r,) = apply(work, ("reducemean-hw-to-gap",), feeds, atol=1e-4, rtol=1e-3)
    assert r.nodes == 1 and _ops(work)["ReduceMean"] == 0 and _ops(work)["GlobalAveragePool"] == 1
    assert _ops(work)["Squeeze"] == (0 if keepdims else 1)
    for f in feeds:
        out, ref = _run(work, f), _run(src, f)
        assert out.shape == ref.shape
        np.testing.assert_allclose(out, ref, atol=1e-5)


def test_reducemean_over_other_axes_is_left_alone(tmp_path):
    src = _reducemean(tmp_path, axes=[1], keepdims=1, opset=17)
    assert apply(src, ("reducemean-hw-to-gap",), _feeds((1, 4, 5, 6), 1), atol=1e-4, rtol=1e-3) == []
    assert _ops(src)["ReduceMean"] == 1


def test_a_rewrite_that_changes_the_numbers_is_refused(tmp_path, monkeypatch):
    import edgeq.core.rewrite as rw

    def wrong(g):  # HardSigmoid with the wrong slope: the check against the unrewritten graph must catch it
        for n in g.g.node:
            if n.op_type == "HardSigmoid":
                n.CopyFrom(helper.make_node("HardSigmoid", list(n.input), list(n.output), alpha=0.3, beta=0.5, name=n.name))
                return 1
        return 0

    monkeypatch.setitem(rw.REWRITES, "hardsigmoid-decompose", wrong)
    src = make_hardswish_cnn(tmp_path / "hs.onnx")
    before = src.read_bytes()
    with pytest.raises(ModelError) as e:
        apply(src, ("hardsigmoid-decompose",), _feeds((1, 1, 8, 8)), atol=1e-4, rtol=1e-3)
    assert "changed the model's outputs" in e.value.message
    assert src.read_bytes() == before  # nothing written


def test_targets_name_their_rewrites_and_unknown_names_are_refused(tmp_path):
    from edgeq.core.targets import load_target

    assert {"hardswish-decompose", "hardsigmoid-decompose", "reducemean-hw-to-gap"} <= set(load_target("nnapi").rewrites)
    assert set(REWRITES) == {r for t in ("nnapi", "coreml", "qnn-htp") for r in load_target(t).rewrites}  # each one used
    assert "hardsigmoid-decompose" in load_target("coreml").rewrites and "reducemean-hw-to-gap" not in load_target("coreml").rewrites
    assert load_target("cpu-x86_64").rewrites == ()
    text = Path(load_target("nnapi").source).read_text().replace('"reducemean-hw-to-gap"', '"no-such-rewrite"')
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(TargetError) as e:
        load_target(str(bad))
    assert "no-such-rewrite" in e.value.message and "hardswish-decompose" in e.value.hint


@pytest.mark.slow
def test_export_lists_rewrites_in_notes_and_manifest_and_the_estimate_improves(runner, tmp_path):
    import json

    from edgeq.cli import app
    from tests.models import cnn_data

    data = tmp_path / "calib.npz"
    np.savez(data, **cnn_data(16, seed=1))
    src = make_hardswish_cnn(tmp_path / "hs.onnx")
    out = tmp_path / "b"
    r = runner.invoke(app, ["export", str(src), "-o", str(out), "--target", "nnapi", "--calib", str(data), "--no-profile", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    notes = [n for n in res["notes"] if n.startswith("rewrite ")]
    assert any(n.startswith("rewrite hardsigmoid-decompose: ") and "checked against the unrewritten graph" in n for n in notes)
    assert any(n.startswith("rewrite reducemean-hw-to-gap: 1 node(s)") for n in notes)
    man = json.loads((out / "manifest.json").read_text())
    assert any(p.startswith("rewrite(reducemean-hw-to-gap") for p in man["provenance"])
    pl = res["placement"]
    assert pl["kind"] == "estimate" and pl["accel_node_share"] == 1.0 and pl["fallback"] == []
