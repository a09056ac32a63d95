"""gemm-plain (core/rewrite.py): Gemm layouts the HTP takes, numbers unchanged, placement measured on the simulator."""

from __future__ import annotations

import importlib.util
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeq.core.rewrite import apply

qnn = pytest.mark.skipif(importlib.util.find_spec("onnxruntime_qnn") is None, reason="onnxruntime-qnn not installed")


def _gemm(tmp_path: Path, name: str, *, bias: tuple[int, ...] | None, alpha=1.0, beta=1.0, trans_b=1, rows_equal=False) -> Path:
    """x [4, 16] -> Gemm(W, C) -> Relu."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((8, 16) if trans_b else (16, 8)) * 0.3).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")]
    ins = ["x", "w"]
    if bias is not None:
        c = rng.standard_normal(bias).astype(np.float32)
        if rows_equal:
            c = np.repeat(c[:1], bias[0], axis=0)
        inits.append(numpy_helper.from_array(c, "c"))
        ins.append("c")
    nodes = [helper.make_node("Gemm", ins, ["h"], name="g", alpha=alpha, beta=beta, transB=trans_b),
             helper.make_node("Relu", ["h"], ["y"], name="r")]
    g = helper.make_graph(nodes, "gemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    p = tmp_path / f"{name}.onnx"
    onnx.save(m, str(p))
    return p


def _feeds(n=3):
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal((4, 16)).astype(np.float32)} for _ in range(n)]


def _gemm_attrs(p: Path) -> list[dict]:
    m = onnx.load(str(p))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    out = []
    for n in m.graph.node:
        if n.op_type == "Gemm":
            a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
            out.append({"alpha": a.get("alpha", 1.0), "beta": a.get("beta", 1.0),
                        "bias_shape": inits[n.input[2]].shape if len(n.input) > 2 else None})
    return out


@pytest.mark.parametrize("case", [
    dict(bias=(8,), alpha=0.5, beta=2.0),
    dict(bias=(8,), alpha=0.5, beta=2.0, trans_b=0),
    dict(bias=(1, 8)),
    dict(bias=(4, 8), rows_equal=True, beta=0.25),
    dict(bias=None, alpha=3.0),
])
def test_gemm_plain_folds_alpha_beta_and_flattens_the_bias(tmp_path, case):
    p = _gemm(tmp_path, "g", **case)
    done = apply(p, ("gemm-plain",), _feeds(), atol=1e-5, rtol=1e-4)
    assert [(r.name, r.nodes) for r in done] == [("gemm-plain", 1)]
    assert done[0].max_abs_diff is not None and done[0].max_abs_diff < 1e-4
    (g,) = _gemm_attrs(p)
    assert g["alpha"] == 1.0 and g["beta"] == 1.0
    assert g["bias_shape"] in (None, (8,))
    m = onnx.load(str(p))
    assert Counter(n.op_type for n in m.graph.node) == Counter({"Gemm": 1, "Relu": 1})
    assert len(m.graph.initializer) == len(m.graph.node[0].input) - 1  # the original W and C are gone


def test_gemm_plain_moves_a_true_2d_bias_into_an_add_and_leaves_plain_gemms(tmp_path):
    p = _gemm(tmp_path, "g2", bias=(4, 8))
    done = apply(p, ("gemm-plain",), _feeds(), atol=1e-5, rtol=1e-4)
    assert done and done[0].max_abs_diff < 1e-4
    assert Counter(n.op_type for n in onnx.load(str(p)).graph.node) == Counter({"Gemm": 1, "Add": 1, "Relu": 1})
    plain = _gemm(tmp_path, "plain", bias=(8,))
    before = plain.read_bytes()
    assert apply(plain, ("gemm-plain",), _feeds(), atol=1e-5, rtol=1e-4) == []
    assert plain.read_bytes() == before


@qnn
@pytest.mark.slow
def test_gemm_with_alpha_beta_reaches_the_htp_only_after_gemm_plain(tmp_path):
    from edgeq.core.onnxutil import artifact_from
    from edgeq.core.targets import load_target
    from edgeq.pipeline import ExportOptions, run_export

    src = _gemm(tmp_path, "ab", bias=(8,), alpha=0.5, beta=2.0)
    calib = tmp_path / "c.npz"
    np.savez(calib, x=np.random.default_rng(2).standard_normal((8, 4, 16)).astype(np.float32))
    tg = load_target("qnn-htp")
    assert "gemm-plain" in tg.rewrites
    shares = {}
    for label, t in (("without", replace(tg, rewrites=tuple(r for r in tg.rewrites if r != "gemm-plain"))), ("with", tg)):
        res = run_export(artifact_from(src), ExportOptions(target=t, spec=t.quant, out=tmp_path / label, calib=calib,
                                                           do_profile=False)).to_dict()
        assert res["placement"]["kind"] == "measured"
        shares[label] = res["placement"]["accel_node_share"]
        assert any(n.startswith("rewrite gemm-plain: 1 node(s)") for n in res["notes"]) == (label == "with")  # listed in the report
    assert shares["without"] < 0.9 and shares["with"] == 1.0, shares
