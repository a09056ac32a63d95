"""int8-dynamic reaches If/Loop/Scan bodies (nested too) and LSTM nodes (issue 14, silero-vad: 12 Conv and
4 LSTM inside If branches were "quantized none of"), counts what it considered, and hints fit."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T, helper as h, numpy_helper as nh
from typer.testing import CliRunner

import edgeq
from edgeq.checks.hints import after_failed_check
from edgeq.core.data import SampleSet
from edgeq.errors import QuantizationError
from edgeq.quantization.int8.dynamic_scope import dynamic_reaches
from edgeq.quantization.int8.qdq import walk_graphs
from tests.models import save_graph

MATMUL_FORMS = {"MatMulInteger", "DynamicQuantizeMatMul"}
H = 16


def _w(rng, name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
    return nh.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)


def _vi(name: str, shape=None, t=T.FLOAT):
    return h.make_tensor_value_info(name, t, shape)


def _if_model(path: Path) -> Path:
    """If(c): then Conv -> Relu -> Reshape -> MatMul; else MatMul -> If(c2): then MatMul, else Relu. Weights are
    the bodies' own initializers, except the inner MatMul's, which is the main graph's (outer scope)."""
    rng = np.random.default_rng(0)
    then = h.make_graph(
        [h.make_node("Conv", ["x", "wc", "bc"], ["c_out"], pads=[1, 1, 1, 1], name="then_conv"),
         h.make_node("Relu", ["c_out"], ["c_relu"]),
         h.make_node("Reshape", ["c_relu", "shape_t"], ["c_flat"]),
         h.make_node("MatMul", ["c_flat", "wt"], ["yt"], name="then_matmul")],
        "then", [], [_vi("yt", [1, 10])],
        [_w(rng, "wc", (8, 4, 3, 3)), _w(rng, "bc", (8,)), _w(rng, "wt", (288, 10)),
         nh.from_array(np.array([1, 288], np.int64), "shape_t")])
    inner_then = h.make_graph([h.make_node("MatMul", ["e_mm", "wi"], ["yi"], name="inner_matmul")], "inner_then", [],
                              [_vi("yi", [1, 10])])
    inner_else = h.make_graph([h.make_node("Relu", ["e_mm"], ["yr"])], "inner_else", [], [_vi("yr", [1, 10])])
    els = h.make_graph(
        [h.make_node("Reshape", ["x", "shape_e"], ["e_flat"]),
         h.make_node("MatMul", ["e_flat", "we"], ["e_mm"], name="else_matmul"),
         h.make_node("If", ["c2"], ["ye"], then_branch=inner_then, else_branch=inner_else, name="inner_if")],
        "else", [], [_vi("ye", [1, 10])],
        [_w(rng, "we", (144, 10)), nh.from_array(np.array([1, 144], np.int64), "shape_e")])
    g = h.make_graph([h.make_node("If", ["c"], ["y"], then_branch=then, else_branch=els, name="outer_if")], "m",
                     [_vi("x", [1, 4, 6, 6]), _vi("c", [], T.BOOL), _vi("c2", [], T.BOOL)], [_vi("y", [1, 10])],
                     [_w(rng, "wi", (10, 10))])
    return save_graph(g, path)


def _lstm_model(path: Path, op: str = "LSTM") -> Path:
    """x -> op (main graph) -> Squeeze -> If(c): then op, else op (each branch its own weights) -> last hidden state."""
    rng = np.random.default_rng(1)
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]

    def rnn(tag: str, x: str, n_in: int, outs: list[str]):
        weights = [_w(rng, f"W{tag}", (1, gates * H, n_in)), _w(rng, f"R{tag}", (1, gates * H, H)), _w(rng, f"B{tag}", (1, 2 * gates * H))]
        return h.make_node(op, [x, f"W{tag}", f"R{tag}", f"B{tag}"], outs, hidden_size=H, name=f"{op.lower()}_{tag}"), weights

    top, top_w = rnn("0", "x", 8, ["Y0"])
    t_node, t_w = rnn("1", "s", H, ["", "yt"])
    e_node, e_w = rnn("2", "s", H, ["", "ye"])
    then = h.make_graph([t_node], "then", [], [_vi("yt", [1, 2, H])], t_w)
    els = h.make_graph([e_node], "else", [], [_vi("ye", [1, 2, H])], e_w)
    g = h.make_graph(
        [top, h.make_node("Squeeze", ["Y0", "ax"], ["s"]),
         h.make_node("If", ["c"], ["y"], then_branch=then, else_branch=els, name="branch_if")],
        "m", [_vi("x", [5, 2, 8]), _vi("c", [], T.BOOL)], [_vi("y", [1, 2, H])], top_w + [nh.from_array(np.array([1], np.int64), "ax")])
    return save_graph(g, path)


def _loop_scan_model(path: Path) -> Path:
    """Loop (3 times: s = Tanh(s @ W)) and Scan (over 5 steps: st = Tanh(x_t @ U + st)), W and U in the bodies."""
    rng = np.random.default_rng(7)
    body = h.make_graph(
        [h.make_node("MatMul", ["s_in", "W"], ["mm"], name="loop_matmul"), h.make_node("Tanh", ["mm"], ["s_out"]),
         h.make_node("Identity", ["cond_in"], ["cond_out"])],
        "loop_body", [_vi("i", [], T.INT64), _vi("cond_in", [], T.BOOL), _vi("s_in", [2, 8])], [_vi("cond_out", [], T.BOOL), _vi("s_out", [2, 8])],
        [_w(rng, "W", (8, 8))])
    sbody = h.make_graph(
        [h.make_node("MatMul", ["xt", "U"], ["m"], name="scan_matmul"), h.make_node("Add", ["m", "st"], ["a"]),
         h.make_node("Tanh", ["a"], ["st2"]), h.make_node("Identity", ["st2"], ["yt"])],
        "scan_body", [_vi("st", [1, 8]), _vi("xt", [1, 8])], [_vi("st2", [1, 8]), _vi("yt", [1, 8])], [_w(rng, "U", (8, 8))])
    g = h.make_graph(
        [h.make_node("Loop", ["n", "", "x"], ["s"], body=body, name="loop"),
         h.make_node("Scan", ["s0", "xs"], ["sN", "ys"], body=sbody, num_scan_inputs=1, name="scan")],
        "m", [_vi("x", [2, 8]), _vi("xs", [5, 1, 8]), _vi("s0", [1, 8])], [_vi("s", [2, 8]), _vi("ys", [5, 1, 8])],
        [nh.from_array(np.array(3, np.int64), "n")])
    return save_graph(g, path)


def _body_ops(path: Path) -> Counter:
    """Op types of the nodes inside If/Loop/Scan bodies (nested included), not the main graph's."""
    m = onnx.load(str(path))
    return Counter(n.op_type for p, g, owner in walk_graphs(m.graph) if owner is not None for n in g.node)


def _close(fp32: Path, q: Path, feeds: list[dict[str, np.ndarray]], rel: float) -> None:
    a, b = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32, q))
    for feed in feeds:
        for ya, yb in zip(a.run(None, feed), b.run(None, feed), strict=True):  # every output
            err = np.abs(ya - yb).max() / np.abs(ya).max()
            assert ya.shape == yb.shape and err < rel, (sorted(feed), err)
            assert not np.array_equal(ya, yb)  # quantized for real on this branch


def _quantize(src: Path, out: Path, **over):
    spec = edgeq.load_target("cpu-x86_64").quant.with_overrides(mode="int8-dynamic", **over)
    return edgeq.quantize(edgeq.export(str(src)), spec, out)


def test_int8_dynamic_quantizes_conv_and_matmul_inside_nested_if_bodies(tmp_path):
    src = _if_model(tmp_path / "if.onnx")
    res = _quantize(src, tmp_path / "q.onnx", op_types=("MatMul", "Conv"))
    body = _body_ops(tmp_path / "q.onnx")
    assert body["ConvInteger"] == 1 and sum(body[o] for o in MATMUL_FORMS) == 3, body  # then, else and the nested If's
    assert body["Conv"] == 0 and body["MatMul"] == 0, body
    assert res.coverage.quantized == {"Conv": 1, "MatMul": 3} and res.coverage.total == {"Conv": 1, "MatMul": 3}
    assert res.details["subgraphs"]["If"]["quantized"] == 4
    assert any(n.startswith("4 node(s) inside If/Loop/Scan subgraphs quantized") for n in res.notes), res.notes
    x = np.random.default_rng(2).standard_normal((1, 4, 6, 6)).astype(np.float32)
    feeds = [{"x": x, "c": np.array(c), "c2": np.array(c2)} for c, c2 in ((True, True), (False, True), (False, False))]
    _close(src, tmp_path / "q.onnx", feeds, rel=0.05)
    # the target's default op types leave the convolution float and still reach every MatMul
    res = _quantize(src, tmp_path / "d.onnx")
    body = _body_ops(tmp_path / "d.onnx")
    assert body["Conv"] == 1 and body["ConvInteger"] == 0 and sum(body[o] for o in MATMUL_FORMS) == 3, body
    assert res.coverage.quantized == {"MatMul": 3} and res.details["float_share"] > 0.05


def test_int8_dynamic_quantizes_lstm_in_the_main_graph_and_in_if_branches(tmp_path):
    src = _lstm_model(tmp_path / "lstm.onnx")
    res = _quantize(src, tmp_path / "q.onnx")
    m = onnx.load(str(tmp_path / "q.onnx"))
    assert [n.op_type for n in m.graph.node].count("DynamicQuantizeLSTM") == 1
    body = _body_ops(tmp_path / "q.onnx")
    assert body["DynamicQuantizeLSTM"] == 2 and body["LSTM"] == 0, body
    assert res.coverage.total == {"LSTM": 3} and res.coverage.quantized == {"LSTM": 3}
    assert res.coverage.weight_bytes_quantized == res.coverage.weight_bytes_total > 0
    x = np.random.default_rng(3).standard_normal((5, 2, 8)).astype(np.float32)
    _close(src, tmp_path / "q.onnx", [{"x": x, "c": np.array(c)} for c in (True, False)], rel=0.05)
    # nodes_to_exclude (the speed decision's per-node mix) reaches a body too: the then-branch LSTM stays float
    res = _quantize(src, tmp_path / "mix.onnx", nodes_to_exclude=("lstm_1",))
    body = _body_ops(tmp_path / "mix.onnx")
    assert body["DynamicQuantizeLSTM"] == 1 and body["LSTM"] == 1 and res.coverage.quantized == {"LSTM": 2}, body


def test_int8_dynamic_quantizes_matmul_in_loop_and_scan_bodies(tmp_path):
    src = _loop_scan_model(tmp_path / "loop.onnx")
    res = _quantize(src, tmp_path / "q.onnx")
    body = _body_ops(tmp_path / "q.onnx")
    assert sum(body[o] for o in MATMUL_FORMS) == 2 and body["MatMul"] == 0, body
    assert set(res.details["subgraphs"]) == {"Loop", "Scan"} and res.coverage.quantized == {"MatMul": 2}
    rng = np.random.default_rng(8)
    feed = {"x": rng.standard_normal((2, 8)).astype(np.float32), "xs": rng.standard_normal((5, 1, 8)).astype(np.float32),
            "s0": np.zeros((1, 8), np.float32)}
    _close(src, tmp_path / "q.onnx", [feed], rel=0.05)


def test_gru_is_counted_and_named_never_labelled_int8(tmp_path):
    src = _lstm_model(tmp_path / "gru.onnx", op="GRU")
    with pytest.raises(QuantizationError) as e:
        _quantize(src, tmp_path / "q.onnx")
    assert "none of the model's 3 weight nodes: they are 3 GRU, and this mode quantizes MatMul/LSTM/Gemm" in e.value.message
    assert "--quant none" in e.value.hint and "int8-static" not in e.value.hint
    assert not (tmp_path / "q.onnx").exists()


def test_the_refusal_counts_the_op_types_considered_and_static_refuses_an_lstm_only_model(tmp_path):
    rng = np.random.default_rng(5)
    branches = [h.make_graph([h.make_node("Conv", ["x", f"w{i}"], [f"y{i}"], name=f"conv{i}")], f"b{i}", [], [_vi(f"y{i}", [1, 4, 8])],
                             [_w(rng, f"w{i}", (4, 2, 1))]) for i in (0, 1)]
    g = h.make_graph([h.make_node("If", ["c"], ["y"], then_branch=branches[0], else_branch=branches[1])], "m",
                     [_vi("x", [1, 2, 8]), _vi("c", [], T.BOOL)], [_vi("y", [1, 4, 8])])
    with pytest.raises(QuantizationError) as e:  # was: "quantized none of the model's 2 Conv/Gemm/MatMul nodes"
        _quantize(save_graph(g, tmp_path / "conv_if.onnx"), tmp_path / "q.onnx")
    assert e.value.message == ("int8-dynamic quantized none of the model's 2 weight nodes: they are 2 Conv, "
                               "and this mode quantizes MatMul/LSTM/Gemm nodes")
    assert "--quant int8-static" in e.value.hint and "leaves convolutions float" in e.value.hint
    lstm = _lstm_model(tmp_path / "lstm.onnx")
    x = np.random.default_rng(4).standard_normal((8, 5, 2, 8)).astype(np.float32)
    data = SampleSet(arrays={"x": x, "c": np.ones(8, bool)}, stacked={"x": True, "c": True}, labels=None, source="test")
    spec = edgeq.load_target("cpu-x86_64").quant.with_overrides(calibration="minmax", calib_samples=8)
    with pytest.raises(QuantizationError) as e:
        edgeq.quantize(edgeq.export(str(lstm)), spec, tmp_path / "s.onnx", data=data)
    assert "its weights are in 3 LSTM node(s)" in e.value.message and "int8-dynamic" in e.value.hint, e.value


def test_hints_offer_int8_dynamic_only_where_it_reaches_a_node(tmp_path):
    tgt = edgeq.load_target("cpu-x86_64")
    static = tgt.quant.with_overrides(mode="int8-static")
    conv_only = {"by_op": {"Conv": {"total": 12, "quantized": 12}}}
    silero = {"by_op": {"Conv": {"total": 12, "quantized": 12}, "LSTM": {"total": 4, "quantized": 0}}}
    assert not dynamic_reaches(conv_only) and dynamic_reaches(silero) and dynamic_reaches(None)
    assert "int8-dynamic" not in after_failed_check(static, tgt, dynamic_applies=dynamic_reaches(conv_only))
    assert "--quant int8-dynamic" in after_failed_check(static, tgt, dynamic_applies=dynamic_reaches(silero))
    # without --calib: a model whose only MatMul sits inside an If is offered int8-dynamic (it reaches it now)
    from edgeq.cli import app

    src = _if_model(tmp_path / "if.onnx")
    r = CliRunner().invoke(app, ["export", str(src), "-o", str(tmp_path / "b")])
    assert r.exit_code == 2 and "--quant int8-dynamic / none" in r.output, r.output
    # int8-static on an LSTM-only model is refused before any data is asked for, with the mode that applies
    r = CliRunner().invoke(app, ["export", str(_lstm_model(tmp_path / "lstm.onnx")), "-o", str(tmp_path / "b")])
    assert r.exit_code == 2 and "its weights are in 3 LSTM node(s)" in r.output and "--calib" not in r.output, r.output
    assert "try --quant int8-dynamic (it quantizes LSTM nodes)" in r.output, r.output


def test_the_export_table_says_what_int8_dynamic_quantized(tmp_path):
    import json

    from rich.console import Console

    from edgeq.cli import app
    from edgeq.reporting.tables import export_table

    src = _if_model(tmp_path / "if.onnx")
    x = np.random.default_rng(6).standard_normal((4, 1, 4, 6, 6)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, c=np.zeros((4,), bool), c2=np.ones((4,), bool))
    r = CliRunner().invoke(app, ["export", str(src), "-o", str(tmp_path / "b"), "--quant", "int8-dynamic", "--eval",
                                 str(tmp_path / "d.npz"), "--no-profile", "--json"])
    res = json.loads(r.stdout)
    assert res["quantization"]["coverage"]["by_op"] == {"Conv": {"total": 1, "quantized": 0}, "MatMul": {"total": 3, "quantized": 3}}
    assert res["quantization"]["subgraphs"]["If"]["quantized"] == 3
    console = Console(width=400, record=True)
    console.print(export_table(res))
    text = console.export_text()
    assert "int8-dynamic (activations at run time) a=uint8 w=int8 per-channel; Conv 0/1, MatMul 3/3" in text, text
