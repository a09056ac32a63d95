"""Static-shape decoders quantized in QDQ form for NPU targets (edgeq/quantization/npu_qdq.py)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from edgeq.core.onnxutil import artifact_from  # noqa: E402
from edgeq.core.targets import load_target  # noqa: E402
from edgeq.exporters import decoder as D  # noqa: E402
from edgeq.quantization import npu_qdq as Q  # noqa: E402
from edgeq.quantization.spec import QuantSpec  # noqa: E402
from fixtures.llm import make_lm  # noqa: E402

CONTEXT = 32
qnn = pytest.mark.skipif(importlib.util.find_spec("onnxruntime_qnn") is None,
                         reason="onnxruntime-qnn not installed (pip install edgeq[profile])")


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    """The fp32 one-token static decoder of the tiny llama and the step feeds of a few windows through its loop."""
    model = make_lm("llama")
    path = D.build_decoder(D.arch_from_config(model.config), model.state_dict(),
                           tmp_path_factory.mktemp("static") / "fp32.onnx", static_context=CONTEXT, chunk=1)
    feeds, used = Q.step_feeds(path, np.random.default_rng(0).integers(3, 300, (6, 12)))
    assert used == 6 and len(feeds) == 72
    starts = [int(np.argmax(feeds.feed(i)["cache_write"][0, :, 0])) for i in range(0, 72, 12)]
    assert starts == [0, 4, 8, 12, 16, 20]  # windows spread over the slots: late positions are calibrated too
    bias = feeds.feed(12)["attention_bias"][0, 0, 0, 0]  # the window at slot 4: the empty slots before it are masked
    assert (bias[:4] < -1e3).all() and bias[4] == 0 and (bias[5:] < -1e3).all()
    return path, feeds


def _quantize(decoder, tmp_path, mode, target="qnn-htp", **spec):
    path, feeds = decoder
    out = tmp_path / f"{mode}.onnx"
    res = Q.quantize(artifact_from(path), QuantSpec(mode=mode, **spec), out, target=load_target(target), data=feeds)
    return out, res


def _weight_dqs(model):
    """The DequantizeLinear feeding each MatMul's constant weight: {MatMul name: (DQ node, codes initializer)}."""
    inits = {i.name: i for i in model.graph.initializer}
    dq_of = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    out = {}
    for n in model.graph.node:
        dq = dq_of.get(n.input[1]) if n.op_type == "MatMul" else None
        if dq is not None and dq.input[0] in inits and inits[dq.input[0]].data_type in (TensorProto.INT8, TensorProto.INT4):
            out[n.name] = (dq, inits[dq.input[0]])
    return out


def _lm_kl(fp32, quant):
    windows = np.random.default_rng(1).integers(3, 300, (3, 24))
    return Q.lm_quality(fp32, quant, windows)


@pytest.mark.parametrize("mode,elem,kl_max", [("int8-weight", TensorProto.INT8, None), ("int4", TensorProto.INT4, 0.3)])
def test_qdq_static_decoder_for_the_htp_is_smaller_and_has_no_cpu_only_op(decoder, tmp_path, mode, elem, kl_max):
    fp32, _ = decoder
    out, res = _quantize(decoder, tmp_path, mode)
    m = onnx.load(str(out))
    ops = {n.op_type for n in m.graph.node}
    assert "MatMulNBits" not in ops and "GatherBlockQuantized" not in ops  # the CPU contrib ops never reach an NPU bundle
    assert not any(n.domain not in ("", "ai.onnx") for n in m.graph.node)
    inits = {i.name: i for i in m.graph.initializer}
    dqs = _weight_dqs(m)
    assert len(dqs) == 15  # 2 layers x (q, k, v, o, gate, up, down) + lm_head
    for dq, codes in dqs.values():
        assert codes.data_type == elem
        axis = next(a.i for a in dq.attribute if a.name == "axis")
        assert axis == 1 and not any(a.name == "block_size" for a in dq.attribute)  # per output channel on the HTP
        assert len(dq.input) == 3 and inits[dq.input[2]].data_type == elem  # zero points written (the HTP needs them for int4)
        assert (numpy_helper.to_array(inits[dq.input[1]]) > 0).all()  # positive scales (the HTP computed negative ones wrong)
    # 16-bit activation QDQ, calibrated through the fixed-slot loop
    act_zp = [inits[n.input[2]] for n in m.graph.node if n.op_type == "QuantizeLinear"]
    assert len(act_zp) > 100 and {z.data_type for z in act_zp} == {TensorProto.UINT16}
    assert res.details["qdq_form"]["weights"] == "per-channel" and res.details["qdq_form"]["activations"] == "uint16"
    assert any("per output channel" in n and "uint16 activations" in n for n in res.notes)
    assert out.stat().st_size < 0.85 * fp32.stat().st_size
    lq = _lm_kl(fp32, out)
    assert lq.kl_mean <= (kl_max if kl_max is not None else load_target("qnn-htp").tolerances.max_lm_kl), lq
    assert lq.same_top_token > 0.4, lq


def test_int4_is_blockwise_with_float_activations_where_the_target_takes_them(decoder, tmp_path):
    fp32, _ = decoder
    out, res = _quantize(decoder, tmp_path, "int4", target="nnapi", block_size=16)  # hidden 32: two blocks per column
    m = onnx.load(str(out))
    assert "QuantizeLinear" not in {n.op_type for n in m.graph.node}  # nnapi lists no fixed-point-only ops
    for dq, codes in _weight_dqs(m).values():
        attrs = {a.name: a.i for a in dq.attribute}
        assert codes.data_type == TensorProto.INT4 and attrs == {"axis": 0, "block_size": 16}
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) == 21
    assert res.details["qdq_form"] == {"weights": "blockwise", "activations": None, "why": res.details["qdq_form"]["why"]}
    assert _lm_kl(fp32, out).kl_mean < 0.3


def test_refusals_name_the_fix(decoder, tmp_path):
    from edgeq.errors import EdgeqError

    path, _ = decoder
    htp = load_target("qnn-htp")
    with pytest.raises(EdgeqError, match="runs fixed point only") as e:
        Q.quantize(artifact_from(path), QuantSpec(mode="int8-weight"), tmp_path / "x.onnx", target=htp, data=None)
    assert "--calib" in e.value.hint
    with pytest.raises(EdgeqError, match="float zero points"):
        Q.choose_form(htp, QuantSpec(mode="int4", algo="hqq"), has_data=True)
    _, feeds = decoder
    with pytest.raises(EdgeqError, match="cannot stay fp32"):
        Q.quantize(artifact_from(path), QuantSpec(mode="int4", keep=("lm_head",)), tmp_path / "x.onnx", target=htp, data=feeds)
    assert not (tmp_path / "x.onnx").exists()


# run in a child: registering the QNN plugin in this process would make onnxruntime list QNNExecutionProvider as
# built-in for every later test in the session
_HTP_RUN = """
import json, sys
import numpy as np, onnxruntime as ort, onnxruntime_qnn
from edgeq.exporters.static_decoder import StaticCache
name = onnxruntime_qnn.get_ep_name()
ort.register_execution_provider_library(name, onnxruntime_qnn.get_library_path())
so = ort.SessionOptions()
so.log_severity_level = 3
so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
so.add_provider_for_devices([d for d in ort.get_ep_devices() if d.ep_name == name][:1], {"backend_type": "htp"})
htp = ort.InferenceSession(sys.argv[1], sess_options=so)
placed = {}
for sub in htp.get_provider_graph_assignment_info():
    placed[sub.ep_name] = placed.get(sub.ep_name, 0) + len(sub.get_nodes() if hasattr(sub, "get_nodes") else sub.nodes)
cpu = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
a, b = StaticCache(cpu), StaticCache(htp)
diffs, same = [], 0
for t in np.random.default_rng(7).integers(3, 300, 8):
    la, lb = a.run(cpu, np.array([t])), b.run(htp, np.array([t]))
    diffs.append(float(np.abs(la - lb).max()) / float(np.abs(la).max()))
    same += int(la.argmax() == lb.argmax())
print(json.dumps({"placed": placed, "diffs": diffs, "same": same}))
"""


def _on_htp(path, cwd):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _HTP_RUN, str(path)], capture_output=True, text=True, timeout=600, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@qnn
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["int8-weight", "int4"])
def test_qdq_static_decoder_runs_on_the_htp_simulator(decoder, tmp_path, mode):
    out, _ = _quantize(decoder, tmp_path, mode)
    got = _on_htp(out.resolve(), tmp_path)  # before the mask, constants and scales were fixed: "Failed to finalize QNN graph"
    placed = got["placed"]
    assert placed.get("QNNExecutionProvider", 0) / sum(placed.values()) > 0.9, placed
    # the HTP computes what the same QDQ graph computes on the CPU, step by step through the fixed slots
    assert max(got["diffs"]) < 0.15 and got["same"] >= 7, got


@qnn
@pytest.mark.slow
def test_export_qnn_htp_int8_qdq_bundle_generates_like_fp32(runner, tmp_path):
    from tokenizers import Tokenizer

    from edgeq.cli import app
    from fixtures.lm import TinyLlamaSpec, corpus_text, make_tiny_llama

    folder = make_tiny_llama(tmp_path / "llama", TinyLlamaSpec(hidden=64, intermediate=128, steps=120, seq=32, context=64))
    ids = np.array(Tokenizer.from_file(str(folder / "tokenizer.json")).encode(corpus_text()[0][:20000]).ids, np.int64)
    np.savez(tmp_path / "calib.npz", input_ids=np.stack([ids[i * 300 : i * 300 + 24] for i in range(8)]))
    base = ["export", str(folder), "--task", "text-generation", "--target", "qnn-htp", "--no-profile"]
    out = tmp_path / "b"
    r = runner.invoke(app, [*base, "--quant", "int8-weight", "--calib", str(tmp_path / "calib.npz"), "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    tol = load_target("qnn-htp").tolerances
    assert res["lm_quality"]["kl_mean"] <= tol.max_lm_kl and res["lm_quality"]["same_top_token"] >= tol.min_lm_top1
    gen = res["generation"]
    assert gen["passed"] and gen["identical"] >= 2, gen
    assert res["placement"]["kind"] == "measured" and res["placement"]["accel_node_share"] > 0.9, res["placement"]
    assert res["size"]["ratio"] < 0.6
    assert any("QDQ static decoder" in n and "uint16 activations" in n for n in res["notes"])
    assert "MatMulNBits" not in {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    # int4: 4-bit codes in model.onnx
    out4 = tmp_path / "b4"
    r = runner.invoke(app, [*base, "--quant", "int4", "--algo", "gptq", "--calib", str(tmp_path / "calib.npz"), "-o", str(out4), "--json"])
    assert r.exit_code == 0, r.output
    res4 = json.loads(r.stdout)
    m4 = onnx.load(str(out4 / "model.onnx"))
    assert any(t.data_type == onnx.TensorProto.INT4 for t in m4.graph.initializer)
    assert "MatMulNBits" not in {n.op_type for n in m4.graph.node}
    def stored(b):  # a static bundle keeps its weights in model.onnx.data, shared by the step and prefill graphs
        return sum((b / f).stat().st_size for f in ("model.onnx", "model.onnx.data") if (b / f).is_file())

    assert stored(out4) < 0.85 * stored(out)
    assert res4["placement"]["accel_node_share"] > 0.9 and res4["lm_quality"]["kl_mean"] <= tol.max_lm_kl, res4["lm_quality"]
    import onnxruntime as ort

    assert not (out4 / "model.ort").exists()  # a static bundle ships no ORT copy of its weights (it held them twice)
    for g in ("model.onnx", "prefill.onnx"):  # both graphs of the bundle load with the 4-bit weights they share
        ort.InferenceSession(str(out4 / g), providers=["CPUExecutionProvider"])
    # no windows: refused with one line and the fix, before anything is written
    r = runner.invoke(app, [*base, "--quant", "int8-weight", "-o", str(tmp_path / "d")])
    assert r.exit_code == 2 and "--calib" in r.output and not (tmp_path / "d").exists()


def test_static_decoders_take_the_qdq_path_and_the_default_int8_static_becomes_int8_weights(decoder):
    from edgeq.core.onnxutil import io_spec

    path, _ = decoder
    io = io_spec(onnx.load(str(path)))
    assert Q.is_static_decoder(io)
    assert Q.applies(QuantSpec(mode="int4"), io) and Q.applies(QuantSpec(mode="int8-static"), io)
    assert not Q.applies(QuantSpec(mode="fp16"), io) and not Q.applies(QuantSpec(mode="none"), io)
    spec, notes = Q.decoder_spec(QuantSpec(mode="int8-static"))
    assert spec.mode == "int8-weight" and notes
    form = Q.choose_form(load_target("qnn-htp"), spec, has_data=True)
    assert form.activations == "uint16" and form.weight == "per-channel"  # the 16-bit type qnn-htp lists, not its uint8 default
