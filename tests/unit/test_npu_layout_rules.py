"""Attribute-level op conditions for NNAPI and CoreML ([[ops.conditions]], core/op_conditions.py).

The placement estimate names a Gemm/MatMul layout the provider's builder refuses, with the
reason; the target's rewrite brings it back onto the accelerator with unchanged outputs;
a bad condition in a target file is refused with one line when the target loads.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeq.core.rewrite import apply
from edgeq.core.targets import load_target, targets_dir
from edgeq.errors import TargetError
from edgeq.profiling.placement import estimate


def _save(tmp_path: Path, name: str, nodes, x_shape, y_shape, inits, extra_inputs=()) -> Path:
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)] + list(extra_inputs)
    g = helper.make_graph(nodes, name, ins, [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    p = tmp_path / f"{name}.onnx"
    onnx.save(m, str(p))
    return p


def _w(*shape) -> np.ndarray:
    return (np.random.default_rng(0).standard_normal(shape) * 0.3).astype(np.float32)


def _fallback(p: Path, target: str) -> dict[str, str]:
    """node (op) -> reason, for each node the estimate sends to the CPU."""
    return {f["node"]: f["reason"] for f in estimate(p, load_target(target))["fallback"]}


def _feeds(shape, n=2):
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def _tol():
    t = load_target("nnapi").tolerances
    return {"atol": t.export_atol, "rtol": t.export_rtol}


def test_gemm_transa_falls_back_with_reason_and_rewrite_keeps_it_on_nnapi_and_coreml(tmp_path):
    # x [16, 4] used as A^T: Gemm(transA=1, transB=1) -> [4, 8]
    p = _save(tmp_path, "gemm_ta", [helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="g", transA=1, transB=1)],
              [16, 4], [4, 8], [numpy_helper.from_array(_w(8, 16), "w"), numpy_helper.from_array(_w(8), "c")])
    for target, who in (("nnapi", "NNAPI"), ("coreml", "CoreML")):
        fb = _fallback(p, target)
        assert list(fb) == ["g (Gemm)"], fb
        assert fb["g (Gemm)"].startswith("Gemm transA=1: ") and f"{who}'s builder needs transA=0" in fb["g (Gemm)"]
    res = apply(p, ("gemm-transa",), _feeds((16, 4)), **_tol())
    assert [(r.name, r.nodes) for r in res] == [("gemm-transa", 1)] and res[0].max_abs_diff is not None
    assert [n.op_type for n in onnx.load(str(p)).graph.node] == ["Transpose", "Gemm"]
    for target in ("nnapi", "coreml"):
        est = estimate(p, load_target(target))
        assert est["fallback"] == [] and est["accel_node_share"] == 1.0 and est["accel_partitions"] == 1


def test_gemm_alpha_beta_and_2d_bias_fall_back_on_nnapi_until_gemm_plain(tmp_path):
    p = _save(tmp_path, "gemm_ab", [helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="g", alpha=0.5, beta=2.0, transB=1)],
              [4, 16], [4, 8], [numpy_helper.from_array(_w(8, 16), "w"), numpy_helper.from_array(_w(4, 8), "c")])
    reason = _fallback(p, "nnapi")["g (Gemm)"]
    for part in ("Gemm alpha=0.5: NNAPI's builder needs alpha=1", "Gemm beta=2: NNAPI's builder needs beta=1",
                 "Gemm bias C [4, 8] with N=8: NNAPI's FULLY_CONNECTED takes a bias of N values"):
        assert part in reason, reason
    assert "Gemm bias C [4, 8] with N=8: CoreML's linear" in _fallback(p, "coreml")["g (Gemm)"]
    apply(p, ("gemm-plain",), _feeds((4, 16)), **_tol())
    for target in ("nnapi", "coreml"):
        est = estimate(p, load_target(target))
        assert est["fallback"] == [] and est["nodes_total"] == 2  # plain Gemm + Add of the [M, N] bias


def test_matmul_rank3_falls_back_on_nnapi_until_matmul_2d(tmp_path):
    p = _save(tmp_path, "mm3", [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
              [1, 6, 16], [1, 6, 8], [numpy_helper.from_array(_w(16, 8), "w")])
    fb = _fallback(p, "nnapi")
    assert list(fb) == ["mm (MatMul)"] and "MatMul input 0 has rank 3: NNAPI's builder maps a quantized MatMul" in fb["mm (MatMul)"]
    assert _fallback(p, "coreml") == {}  # ML Program MatMul takes N-D inputs
    res = apply(p, ("matmul-2d",), _feeds((1, 6, 16)), **_tol())
    assert res[0].nodes == 1 and res[0].max_abs_diff < 1e-5
    assert [n.op_type for n in onnx.load(str(p)).graph.node] == ["Reshape", "MatMul", "Reshape"]
    est = estimate(p, load_target("nnapi"))
    assert est["fallback"] == [] and est["accel_node_share"] == 1.0


def test_constant_b_conditions_read_qdq_weights_and_trans_b(tmp_path):
    # B from a second graph input: NNAPI takes it only with transB=1, CoreML never; a QDQ weight counts as constant
    b_in = helper.make_tensor_value_info("b", TensorProto.FLOAT, [8, 16])
    p = _save(tmp_path, "gemm_dyn_b", [helper.make_node("Gemm", ["x", "b"], ["y"], name="g", transB=1)],
              [4, 16], [4, 8], [], [b_in])
    assert _fallback(p, "nnapi") == {}
    assert "CoreML's builder needs a constant B for Gemm" in _fallback(p, "coreml")["g (Gemm)"]
    q = numpy_helper.from_array(np.ones((16, 8), np.int8), "wq")
    s = numpy_helper.from_array(np.array(0.01, np.float32), "ws")
    z = numpy_helper.from_array(np.array(0, np.int8), "wz")
    p2 = _save(tmp_path, "mm_qdq", [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], name="dq"),
                                    helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
               [4, 16], [4, 8], [q, s, z])
    assert _fallback(p2, "nnapi") == {}
    p3 = _save(tmp_path, "mm_dyn", [helper.make_node("MatMul", ["x", "b"], ["y"], name="mm")], [4, 16], [4, 8], [],
               [helper.make_tensor_value_info("b", TensorProto.FLOAT, [16, 8])])
    assert "MatMul input 1 (b) is not a constant: NNAPI's builder needs a constant B" in _fallback(p3, "nnapi")["mm (MatMul)"]


def test_estimate_basis_cites_the_source_of_the_conditions(tmp_path):
    p = _save(tmp_path, "relu", [helper.make_node("Relu", ["x"], ["y"], name="r")], [1, 4], [1, 4], [])
    for target in ("nnapi", "coreml"):
        basis = estimate(p, load_target(target))["basis"]
        assert "op conditions read from onnxruntime" in basis and "@" in basis


@pytest.mark.parametrize("block, words", [
    ('check = "shape"\nop = "Gemm"\nreason = "r"', "check must be one of attribute, constant, rank, bias-vector"),
    ('check = "attribute"\nop = "Gemm"\nreason = "r"\nattribute = "transA"\nallowed = []', "allowed must be a non-empty list of numbers or of strings"),
    ('check = "attribute"\nop = "Foo"\nreason = "r"\nattribute = "mode"\nallowed = [1]', "default is needed"),
    ('check = "rank"\nop = "MatMul"\nreason = "r"\ninput = 0\nranks = [2]\nattribute = "x"', "attribute is not a key of check 'rank'"),
    ('check = "constant"\nop = "Gemm"\nreason = ""\ninput = 1', "reason must be a non-empty string"),
    ('check = "constant"\nop = "Gemm"\nreason = "r"\ninput = 1\nwhen_attribute = "transB"', "when_attribute and when_value go together"),
    ('check = "attribute"\nop = "Resize"\nreason = "r"\nattribute = "mode"\ndefault = "nearest"\nallowed = ["nearest", 1]', "numbers or of strings"),
    ('check = "attribute"\nop = "Resize"\nreason = "r"\nattribute = "nearest_mode"\ndefault = "floor"\nallowed = ["floor"]\n'
     'when_attribute = "mode"\nwhen_value = "nearest"', "when_default is needed"),
])
def test_bad_condition_is_refused_when_the_target_loads(tmp_path, block, words):
    t = tmp_path / "mine.toml"
    shutil.copy(targets_dir() / "nnapi.toml", t)
    t.write_text(t.read_text() + "\n[[ops.conditions]]\n" + block + "\n")
    with pytest.raises(TargetError) as e:
        load_target(t)
    assert "\n" not in e.value.message and "[[ops.conditions]]" in e.value.message and words in e.value.message


def test_nnapi_export_reports_the_fallback_with_fix_and_its_rewrites_clear_it(tmp_path):
    """Through export (int8 QDQ for nnapi): a transA Gemm and a 3-D MatMul fall back without the rewrites
    (reason and fix in the placement), run on NNAPI with them, and each rewrite is listed in the notes."""
    from dataclasses import replace

    from edgeq.core.onnxutil import artifact_from
    from edgeq.pipeline import ExportOptions, run_export

    # x [1, 6, 16] -> MatMul W [16, 8] -> Reshape [8, 6]... as A^T of a Gemm(transA=1) -> [6, 4]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Reshape", ["h", "shape"], ["h2"], name="flat"),
             helper.make_node("Gemm", ["h2", "w2", "c"], ["y"], name="g", transA=1, transB=1)]
    inits = [numpy_helper.from_array(_w(16, 8), "w"), numpy_helper.from_array(np.array([6, 8], np.int64), "shape"),
             numpy_helper.from_array(_w(4, 6), "w2"), numpy_helper.from_array(_w(4), "c")]
    src = _save(tmp_path, "both", nodes, [1, 6, 16], [8, 4], inits)
    calib = tmp_path / "c.npz"
    np.savez(calib, x=np.random.default_rng(2).standard_normal((8, 6, 16)).astype(np.float32))
    tg = load_target("nnapi")
    ours = ("gemm-transa", "matmul-2d")
    out = {}
    for label, t in (("without", replace(tg, rewrites=tuple(r for r in tg.rewrites if r not in ours))), ("with", tg)):
        res = run_export(artifact_from(src), ExportOptions(target=t, spec=t.quant, out=tmp_path / label, calib=calib,
                                                           do_profile=False)).to_dict()
        out[label] = res
        assert res["placement"]["kind"] == "estimate"
        for r in ours:
            assert any(n.startswith(f"rewrite {r}: 1 node(s)") for n in res["notes"]) == (label == "with"), res["notes"]
    fb = {f["node"]: f for f in out["without"]["placement"]["fallback"]}
    assert "transA=1: NNAPI's builder needs transA=0" in fb["g (Gemm)"]["reason"]
    assert fb["g (Gemm)"]["fix"] == "add 'gemm-transa' to nnapi's [ops] rewrites (edgeq/core/rewrite.py)"
    assert "has rank 3" in fb["mm (MatMul)"]["reason"] and "'matmul-2d'" in fb["mm (MatMul)"]["fix"]
    assert out["with"]["placement"]["fallback"] == [] and out["with"]["placement"]["accel_node_share"] == 1.0


def test_nnapi_batch_matmul_float_only_and_gather_indices(tmp_path):
    """Float activation x activation MatMul of equal rank >= 3 runs as NNAPI's batch MatMul; the same fed by
    DequantizeLinear (QDQ) falls back; Gather takes computed int32 indices, not computed int64 ones."""
    y = helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 2, 8, 6])
    p = _save(tmp_path, "bmm", [helper.make_node("MatMul", ["x", "b"], ["y"], name="mm")], [1, 2, 5, 8], [1, 2, 5, 6], [], [y])
    assert _fallback(p, "nnapi") == {}
    s = numpy_helper.from_array(np.array(0.05, np.float32), "s")
    z = numpy_helper.from_array(np.array(128, np.uint8), "z")
    nodes = [helper.make_node("QuantizeLinear", [i, "s", "z"], [i + "_q"], name=i + "_q") for i in ("x", "b")]
    nodes += [helper.make_node("DequantizeLinear", [i + "_q", "s", "z"], [i + "_dq"], name=i + "_dq") for i in ("x", "b")]
    nodes.append(helper.make_node("MatMul", ["x_dq", "b_dq"], ["y"], name="mm"))
    p2 = _save(tmp_path, "bmm_qdq", nodes, [1, 2, 5, 8], [1, 2, 5, 6], [s, z], [y])
    reason = _fallback(p2, "nnapi")["mm (MatMul)"]
    assert "MatMul input 0 has rank 4" in reason and "MatMul input 1 (b_dq) is not a constant" in reason
    table = numpy_helper.from_array(_w(10, 4), "table")
    for dt, on in ((TensorProto.INT32, True), (TensorProto.INT64, False)):
        ids = helper.make_tensor_value_info("ids", dt, [1, 3])
        g = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["y"], name="emb")], "g", [ids],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4])], [table])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        q = tmp_path / f"gather{dt}.onnx"
        onnx.save(m, str(q))
        fb = _fallback(q, "nnapi")
        assert (fb == {}) == on, fb
        if not on:
            assert "Gather input 1 (ids) is not a constant: NNAPI's builder converts int64 Gather indices" in fb["emb (Gather)"]


def _resize(tmp_path: Path, name: str, **attrs) -> Path:
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="up", **attrs)
    return _save(tmp_path, name, [node], [1, 3, 4, 4], [1, 3, 8, 8], [scales])


def test_nnapi_resize_conditions_follow_the_mode(tmp_path):
    """torch's nearest upsample (asymmetric, floor) runs on NNAPI; the ONNX defaults (half_pixel, round_prefer_floor)
    do not; a linear Resize takes half_pixel; cubic is refused whatever the coordinates."""
    assert _fallback(_resize(tmp_path, "torch_nearest", mode="nearest", coordinate_transformation_mode="asymmetric",
                             nearest_mode="floor"), "nnapi") == {}
    reason = _fallback(_resize(tmp_path, "defaults"), "nnapi")["up (Resize)"]
    assert "Resize coordinate_transformation_mode=half_pixel: NNAPI's nearest Resize needs" in reason
    assert "Resize nearest_mode=round_prefer_floor: NNAPI's nearest Resize needs nearest_mode=floor" in reason
    assert _fallback(_resize(tmp_path, "linear", mode="linear"), "nnapi") == {}
    assert "Resize mode=cubic: NNAPI's builder takes nearest or linear" in _fallback(
        _resize(tmp_path, "cubic", mode="cubic", coordinate_transformation_mode="asymmetric"), "nnapi")["up (Resize)"]


def test_targets_show_lists_the_conditions_and_json_carries_them():
    from typer.testing import CliRunner

    from edgeq.cli import app

    res = CliRunner().invoke(app, ["targets", "show", "nnapi", "--json"])
    assert res.exit_code == 0, res.output
    import json

    d = json.loads(res.output)
    assert {"op": "Gemm", "check": "attribute", "attribute": "transA", "allowed": [0.0], "default": 0.0,
            "reason": "NNAPI's builder needs transA=0 (rewrite gemm-transa)"} in d["op_conditions"]
    gather = next(c for c in d["op_conditions"] if (c["op"], c["check"]) == ("Gather", "constant"))
    assert {k: v for k, v in gather.items() if k != "reason"} == {"op": "Gather", "check": "constant", "input": 1, "unless_dtype": "int32"}
    assert "gemm_op_builder.cc" in d["conditions_source"]
    res = CliRunner().invoke(app, ["targets", "show", "coreml"])
    assert res.exit_code == 0 and "op conditions" in res.output


def test_pool_conditions_ceil_mode_and_rank(tmp_path):
    plain = _save(tmp_path, "pool", [helper.make_node("MaxPool", ["x"], ["y"], name="p", kernel_shape=[2, 2], strides=[2, 2])],
                  [1, 3, 8, 8], [1, 3, 4, 4], [])
    ceil = _save(tmp_path, "pool_ceil", [helper.make_node("MaxPool", ["x"], ["y"], name="p", kernel_shape=[2, 2], strides=[2, 2],
                                                          ceil_mode=1)], [1, 3, 7, 7], [1, 3, 4, 4], [])
    one_d = _save(tmp_path, "pool_1d", [helper.make_node("AveragePool", ["x"], ["y"], name="p", kernel_shape=[2], strides=[2])],
                  [1, 3, 8], [1, 3, 4], [])
    for target, who in (("nnapi", "NNAPI"), ("coreml", "CoreML")):
        assert _fallback(plain, target) == {}
        assert _fallback(ceil, target)["p (MaxPool)"] == f"MaxPool ceil_mode=1: {who}'s pool builder needs ceil_mode=0"
        assert "AveragePool input 0 has rank 3" in _fallback(one_d, target)["p (AveragePool)"]
