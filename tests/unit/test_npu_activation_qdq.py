"""Whole-graph QDQ for the HTP (quantization/int8/qdq_acts.py) and the gelu-fuse rewrite (core/rewrite.py)."""

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


def _gelu_graph(tmp_path: Path, half_first: bool) -> Path:
    """x -> Conv-free torch GELU: x * 0.5 * (1 + Erf(x / sqrt 2)) in either Mul order, then Relu."""
    c = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("sq2", 1.4142135), ("one", 1.0), ("half", 0.5))]
    nodes = [helper.make_node("Div", ["x", "sq2"], ["d"], name="div"), helper.make_node("Erf", ["d"], ["e"], name="erf"),
             helper.make_node("Add", ["e", "one"], ["a"], name="add")]
    if half_first:
        nodes += [helper.make_node("Mul", ["x", "half"], ["h"], name="half"), helper.make_node("Mul", ["h", "a"], ["g"], name="mul")]
    else:
        nodes += [helper.make_node("Mul", ["x", "a"], ["m"], name="mul"), helper.make_node("Mul", ["m", "half"], ["g"], name="half")]
    nodes.append(helper.make_node("Relu", ["g"], ["y"], name="relu"))
    g = helper.make_graph(nodes, "gelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], c)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    p = tmp_path / f"gelu{int(half_first)}.onnx"
    onnx.save(m, str(p))
    return p


@pytest.mark.parametrize("half_first", [False, True])
def test_gelu_fuse_replaces_the_erf_chain_with_one_gelu_and_keeps_the_outputs(tmp_path, half_first):
    p = _gelu_graph(tmp_path, half_first)
    rng = np.random.default_rng(0)
    feeds = [{"x": (rng.standard_normal((2, 16)) * 3).astype(np.float32)} for _ in range(3)]
    done = apply(p, ("gelu-fuse",), feeds, atol=1e-5, rtol=1e-4)
    assert [(r.name, r.nodes) for r in done] == [("gelu-fuse", 1)]
    assert done[0].max_abs_diff is not None and done[0].max_abs_diff < 1e-5
    m = onnx.load(str(p))
    assert Counter(n.op_type for n in m.graph.node) == Counter({"Gelu": 1, "Relu": 1})
    assert any(o.domain == "com.microsoft" for o in m.opset_import)  # Gelu is standard from opset 20 only


def test_gelu_fuse_leaves_a_chain_whose_constant_is_not_gelus(tmp_path):
    p = _gelu_graph(tmp_path, False)
    m = onnx.load(str(p))
    for t in m.graph.initializer:
        if t.name == "half":
            t.CopyFrom(numpy_helper.from_array(np.array(0.4, np.float32), "half"))
    onnx.save(m, str(p))
    assert apply(p, ("gelu-fuse",), [], atol=1e-5, rtol=1e-4) == []
    assert "Erf" in {n.op_type for n in onnx.load(str(p)).graph.node}


def _tiny_bert(tmp_path: Path) -> tuple[Path, Path]:
    import sys

    import importlib.util

    # the benchmark's own model zoo, loaded from its file (tests and tools do not import each other's packages)
    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root))  # tools/npu_models.py imports tools.bench_tasks
    spec = importlib.util.spec_from_file_location("npu_models", root / "tools" / "npu_models.py")
    zoo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zoo)
    build, sample_inputs, to_onnx = zoo.build, zoo.sample_inputs, zoo.to_onnx

    m = build("bert2", dim=32, heads=2, seq=8)  # vocab 1000: the rewrite check feeds ids of that range
    src = tmp_path / "bert.onnx"
    to_onnx(m, src)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=sample_inputs(m, 8, 0))
    return src, calib


def _float_nodes(model) -> list[str]:
    """Nodes (other than Q/DQ) that read a float activation not produced by DequantizeLinear."""
    from edgeq.quantization.int8 import qdq

    floats = qdq.float_tensors(model)
    consts = qdq.const_names(model)
    dq = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return [n.name for n in model.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
            and any(t in floats and t not in dq and t not in consts for t in n.input)]


def test_activation_ops_put_layernorm_softmax_add_mul_between_qdq(tmp_path):
    from edgeq.core.data import load_samples
    from edgeq.core.onnxutil import artifact_from
    from edgeq.core.targets import load_target
    from edgeq.quantization.int8 import static

    from edgeq.core.optimization import optimize

    src, calib = _tiny_bert(tmp_path)
    tg = load_target("qnn-htp")
    assert {"LayerNormalization", "Softmax", "Add", "Mul", "MatMul"} <= set(tg.quant.activation_ops)
    opt, _ = optimize(artifact_from(src), tg, tmp_path / "fp32.onnx", static_shapes={"x": (1, 8)})  # as export does
    data = load_samples(calib, opt.io)
    model = onnx.load(str(opt.path))
    assert "Gelu" in {n.op_type for n in model.graph.node}  # the target's gelu-fuse rewrite ran
    prep = static.prepare(model, replace(tg.quant, calibration="minmax"), data)
    weights_only = static.write(prep, replace(tg.quant, activation_ops=()))
    left = _float_nodes(weights_only.model)
    assert any("LayerNormalization" in n for n in left) and any("Softmax" in n for n in left)  # the CPU recipe
    whole = static.write(prep, replace(tg.quant, calibration="minmax"))
    assert _float_nodes(whole.model) == []
    ln = [n for n in whole.model.graph.node if n.op_type == "LayerNormalization"]
    assert ln
    # every LayerNorm input (activation, scale, bias) is dequantized; the bias as int32
    dq_of = {n.output[0]: n for n in whole.model.graph.node if n.op_type == "DequantizeLinear"}
    inits = {t.name: t for t in whole.model.graph.initializer}
    for n in ln:
        assert all(i in dq_of for i in n.input)
        assert inits[dq_of[n.input[2]].input[0]].data_type == TensorProto.INT32
    # and the model still answers like fp32 on the CPU provider
    ref = static.first_outputs(model, data, 8)
    got = static.first_outputs(whole.model, data, 8)
    cos = [float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b))) for a, b in zip(ref, got)]
    assert min(cos) > 0.95, cos


@qnn
@pytest.mark.slow
def test_tiny_bert_runs_whole_on_the_htp_simulator(tmp_path):
    """Without activation QDQ and gelu-fuse the HTP refuses the graph (QNN_COMMON_ERROR_MEM_ALLOC); with them, 100 %."""
    from edgeq.core.onnxutil import artifact_from
    from edgeq.core.targets import load_target
    from edgeq.pipeline import ExportOptions, run_export

    src, calib = _tiny_bert(tmp_path)
    tg = load_target("qnn-htp")
    old = replace(tg, quant=replace(tg.quant, activation_ops=()), rewrites=tuple(r for r in tg.rewrites if r != "gelu-fuse"))
    res = run_export(artifact_from(src), ExportOptions(target=old, spec=old.quant, out=tmp_path / "old", calib=calib,
                                                       do_profile=False)).to_dict()
    assert res["placement"]["kind"] == "failed"
    assert "activation_qdq" not in res["quantization"]
    res = run_export(artifact_from(src), ExportOptions(target=tg, spec=tg.quant, out=tmp_path / "b", calib=calib,
                                                       do_profile=False)).to_dict()
    pl = res["placement"]
    assert pl["kind"] == "measured" and pl["accel_node_share"] == 1.0 and pl["accel_partitions"] == 1
    assert res["ep_context"]["model"] == "model_ctx.onnx"
    acts = res["quantization"]["activation_qdq"]  # said in --json and the notes
    assert acts["LayerNormalization"] == 5 and acts["Softmax"] == 2
    assert any("without weights quantized for the accelerator" in n for n in res["notes"])


def test_a_16_bit_weight_node_keeps_its_16_bit_input_next_to_activation_qdq(tmp_path):
    """--max-drop gives sensitive nodes 16-bit activations: a LayerNorm feeding such a Gemm must not squeeze it to 8 bits first."""
    from edgeq.core.data import load_samples
    from edgeq.core.onnxutil import artifact_from
    from edgeq.core.optimization import optimize
    from edgeq.core.targets import load_target
    from edgeq.quantization.int8 import static

    src, calib = _tiny_bert(tmp_path)
    tg = load_target("qnn-htp")
    opt, _ = optimize(artifact_from(src), tg, tmp_path / "fp32.onnx", static_shapes={"x": (1, 8)})
    spec = replace(tg.quant, calibration="minmax")
    prep = static.prepare(onnx.load(str(opt.path)), spec, load_samples(calib, opt.io))
    head = next(n for n in prep.model.graph.node if n.op_type == "Gemm" and n.name.startswith("/head"))
    w = static.write(prep, spec, wide={head.name: "sensitive"})
    nodes = {o: n for n in w.model.graph.node for o in n.output}
    gemm = next(n for n in w.model.graph.node if n.name == head.name)
    dq = nodes[gemm.input[0]]
    q = nodes[dq.input[0]]
    assert q.op_type == "QuantizeLinear" and dq.domain == "com.microsoft"  # 16-bit below opset 21
    assert nodes[q.input[0]].op_type != "DequantizeLinear"  # read straight from the float tensor, no 8-bit step before
    assert _float_nodes(w.model) == []
