"""Weight-only INT4 / INT8 / INT2: packing vs onnxruntime's kernels, the algorithms on a tiny trained LM, the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeq.cli import app
from edgeq.core.data import load_samples
from edgeq.errors import CalibrationError, EdgeqError
from edgeq.checks.lmeval import lm_quality
from edgeq.core.onnxutil import artifact_from
from edgeq.quantization.weight_only import blockwise as bw
from edgeq.quantization import quantize
from edgeq.quantization.spec import QuantSpec, parse_overrides

MS = "com.microsoft"


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])
    m.ir_version = 8
    return m


def _matmulnbits(codes: bw.BlockCodes, k: int, n: int, acc: int = 0) -> onnx.ModelProto:
    p = bw.pack_matmulnbits(codes)
    ins, inits = ["A", "B", "S"], [numpy_helper.from_array(p.b, "B"), numpy_helper.from_array(p.scales.reshape(-1), "S")]
    if p.zero_points is not None:
        ins.append("Z")
        inits.append(numpy_helper.from_array(p.zero_points.reshape(-1), "Z"))
    node = helper.make_node("MatMulNBits", ins, ["Y"], domain=MS, K=k, N=n, bits=codes.bits, block_size=codes.block_size, accuracy_level=acc)
    return _model([node], [helper.make_tensor_value_info("A", TensorProto.FLOAT, [None, k])],
                  [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, n])], inits)


# ---------------------------------------------------------------- packing


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("k,n,bs", [(96, 40, 32), (100, 7, 16), (256, 33, 128)])
def test_matmulnbits_packing_matches_onnxruntime(bits, symmetric, k, n, bs):
    rng = np.random.default_rng(bits * 100 + k)
    w = rng.normal(size=(k, n)).astype(np.float32)
    x = rng.normal(size=(5, k)).astype(np.float32)
    codes = bw.rtn(w, bits, bs, symmetric)
    assert codes.q.max() <= 2**bits - 1 and codes.q.shape == (-(-k // bs) * bs, n)
    # pack / unpack round trip
    packed = bw.pack_codes(codes.q.T, bits)
    assert packed.shape[-1] == -(-codes.q.shape[0] * bits // 8)
    assert np.array_equal(bw.unpack_codes(packed, bits, codes.q.shape[0]), codes.q.T)
    y = _session(_matmulnbits(codes, k, n)).run(None, {"A": x})[0]
    ref = x @ codes.dequantize()
    assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()
    # the codes are a real quantization: the error shrinks with more bits
    err = np.abs(codes.dequantize() - w).mean()
    assert err < {2: 0.45, 4: 0.1, 8: 0.006}[bits] and err > 0


def test_hqq_float_zero_points_run_in_onnxruntime():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(64, 24)).astype(np.float32)
    x = rng.normal(size=(3, 64)).astype(np.float32)
    codes = bw.hqq(w, 4, 32, False)
    assert codes.zero.dtype == np.float32 and not np.allclose(codes.zero, np.round(codes.zero))
    y = _session(_matmulnbits(codes, 64, 24)).run(None, {"A": x})[0]
    ref = x @ codes.dequantize()
    assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_gather_block_quantized_packing_matches_onnxruntime(bits, symmetric):
    rng = np.random.default_rng(bits)
    v, d, bs = 50, 64, 32
    emb = rng.normal(size=(v, d)).astype(np.float32)
    codes = bw.rtn(emb.T, bits, bs, symmetric)
    p = bw.pack_gather(codes)
    ins, inits = ["D", "I", "S"], [numpy_helper.from_array(p.data, "D"), numpy_helper.from_array(p.scales, "S")]
    if p.zero_points is not None:
        ins.append("Z")
        inits.append(numpy_helper.from_array(p.zero_points, "Z"))
    node = helper.make_node("GatherBlockQuantized", ins, ["Y"], domain=MS, gather_axis=0, quantize_axis=1, block_size=bs, bits=bits)
    m = _model([node], [helper.make_tensor_value_info("I", TensorProto.INT64, [None])],
               [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, d])], inits)
    idx = np.array([0, 3, 49, 7])
    y = _session(m).run(None, {"I": idx})[0]
    assert np.abs(y - codes.dequantize().T[idx]).max() < 1e-5
    assert np.abs(y - emb[idx]).max() > 0  # lossy: really quantized


def test_gemm_with_bias_becomes_matmulnbits(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.3, (24, 64)).astype(np.float32)  # [N, K], transB=1
    b = rng.normal(0, 0.1, (24,)).astype(np.float32)
    m = _model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, name="fc")],
               [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 24])],
               [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    src = tmp_path / "gemm.onnx"
    onnx.save(m, str(src))
    res = quantize(artifact_from(src), QuantSpec(mode="int4", accuracy_level=0), tmp_path / "q.onnx")
    q = onnx.load(str(tmp_path / "q.onnx"))
    assert [n.op_type for n in q.graph.node] == ["MatMulNBits"] and q.graph.node[0].input[5] == "b"
    assert res.coverage.quantized == {"Gemm": 1}
    x = rng.normal(size=(4, 64)).astype(np.float32)
    y = _session(q).run(None, {"x": x})[0]
    ref = x @ bw.rtn(w.T, 4, 32, False).dequantize() + b
    assert np.abs(y - ref).max() < 1e-4
    assert np.abs(y - (x @ w.T + b)).max() > 1e-3


# ---------------------------------------------------------------- spec


def test_spec_validation():
    with pytest.raises(EdgeqError, match="block size"):
        QuantSpec(mode="int4", block_size=48)
    with pytest.raises(EdgeqError, match="algorithm"):
        QuantSpec(mode="int4", algo="magic")
    with pytest.raises(EdgeqError, match="override mode"):
        QuantSpec(mode="int4", overrides=(("layers.0.*", "int3"),))
    with pytest.raises(EdgeqError, match="weight-only"):
        QuantSpec(mode="int8-static", overrides=(("x", "int8-weight"),))
    with pytest.raises(EdgeqError) as ei:
        parse_overrides(["layers.0.*"])
    assert "PATTERN=MODE" in ei.value.hint
    assert parse_overrides(["layers.0.*=int8", "a=b=none"]) == (("layers.0.*", "int8-weight"), ("a=b", "none"))
    s = QuantSpec(mode="int4", algo="gptq", keep=("embed",), overrides=(("x", "int2"),))
    assert s.needs_calibration and s.bits == 4 and QuantSpec.from_dict(s.to_dict(), "t") == s
    assert not QuantSpec(mode="int4", algo="hqq").needs_calibration


# ---------------------------------------------------------------- on a tiny trained LM


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> Path:
    """A 2-layer, 64-wide byte-level Llama trained for 150 steps on the standard library (fixtures/lm.py)."""
    pytest.importorskip("transformers")
    import os

    from fixtures import CACHE_ENV, cache_dir
    from fixtures.lm import PRESETS, build

    # with EDGEQ_CACHE_DIR set, a built fixture is reused across runs (local development); CI builds it fresh
    cache = cache_dir() if os.environ.get(CACHE_ENV) else tmp_path_factory.mktemp("fixtures")
    return build(PRESETS["tiny"], Path(cache), log=lambda *_: None)


def _q(lm: Path, out: Path, **kw):
    art = artifact_from(lm / "model.onnx")
    spec = QuantSpec(mode=kw.pop("mode", "int4"), accuracy_level=kw.pop("accuracy_level", 0), **kw)
    data = load_samples(lm / "calib.npz", art.io) if spec.needs_calibration else None
    return quantize(art, spec, out, data=data)


@pytest.mark.slow
def test_algorithms_differ_from_rtn_and_gptq_awq_reduce_error(tiny_lm, tmp_path):
    art = artifact_from(tiny_lm / "model.onnx")
    ev = load_samples(tiny_lm / "eval.npz", art.io)
    res, kl, codes = {}, {}, {}
    for algo in ("rtn", "hqq", "gptq", "awq"):
        res[algo] = _q(tiny_lm, tmp_path / f"{algo}.onnx", algo=algo)
        kl[algo] = lm_quality(art.path, res[algo].artifact.path, ev, art.io).kl_mean
        m = onnx.load(str(res[algo].artifact.path))
        codes[algo] = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer if i.name.endswith("_B")}
    # the trained model is a real LM: far from uniform over 259 tokens
    q = lm_quality(art.path, res["rtn"].artifact.path, ev, art.io)
    assert q.perplexity_fp32 < 20 and 0 < q.kl_mean < 0.05 and q.same_top_token > 0.85
    # the ONNX export and the metric agree with transformers' own loss on the same windows
    info = json.loads((tiny_lm / "info.json").read_text())
    assert q.perplexity_fp32 == pytest.approx(info["eval_perplexity_torch"], rel=1e-3)
    same = lm_quality(art.path, art.path, ev, art.io)
    assert same.kl_mean < 1e-9 and same.same_top_token == 1.0 and same.perplexity_quant == same.perplexity_fp32
    for algo in ("hqq", "gptq", "awq"):
        differing = sum(not np.array_equal(codes[algo][k], codes["rtn"][k]) for k in codes["rtn"])
        assert differing == len(codes["rtn"]), f"{algo} left weights bit-identical to RTN"
        assert kl[algo] != kl["rtn"]
    # GPTQ and AWQ use the calibration data to lower the output error (their papers' claim)
    assert kl["gptq"] < 0.8 * kl["rtn"], kl
    assert kl["awq"] < 0.95 * kl["rtn"], kl
    # AWQ's activation scales are folded into the norms and into v_proj / up_proj: no Mul is added
    m = onnx.load(str(res["awq"].artifact.path))
    assert not [n.name for n in m.graph.node if n.op_type == "Mul" and n.name.endswith("_awq")]
    ops = lambda r: sorted(n.op_type for n in onnx.load(str(r.artifact.path)).graph.node)  # noqa: E731
    assert ops(res["awq"]) == ops(res["rtn"])
    assert any("9 scale(s) folded" in n for n in res["awq"].notes), res["awq"].notes


def test_lm_metrics_by_hand():
    from edgeq.checks.lmeval import compare_logits

    ref = np.log(np.array([[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]]]))
    cand = np.log(np.array([[[0.5, 0.4, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]]]))
    ids = np.array([[0, 1, 2]])
    st = compare_logits(ref, cand, ids)
    assert np.allclose(st["nll_ref"], [-np.log(0.2), -np.log(0.8)])
    assert np.allclose(st["nll_cand"], [-np.log(0.4), -np.log(0.8)])
    assert np.allclose(st["kl"], [0.7 * np.log(0.7 / 0.5) + 0.2 * np.log(0.2 / 0.4), 0.0])
    assert st["same"].tolist() == [True, True]


def test_hqq_lowers_its_objective_and_gptq_lowers_layer_error():
    rng = np.random.default_rng(0)
    w = (rng.standard_t(3, size=(128, 48)) * 0.05).astype(np.float32)  # heavy-tailed like trained weights
    lp = lambda c: np.sum(np.abs(c.dequantize() - w) ** 0.7)  # noqa: E731
    assert lp(bw.hqq(w, 4, 32, False)) < 0.97 * lp(bw.rtn(w, 4, 32, False))
    # correlated activations with a few loud channels: the case GPTQ and AWQ are built for
    mix = rng.normal(size=(128, 128)) * 0.3 + np.eye(128)
    x = (rng.normal(size=(2048, 128)) @ mix * np.where(np.arange(128) % 17 == 0, 8.0, 1.0)).astype(np.float32)
    out_err = lambda c: np.mean((x @ (w - c.dequantize())) ** 2)  # noqa: E731
    base = out_err(bw.rtn(w, 4, 32, False))
    assert out_err(bw.gptq(w, 2 * x.T.astype(np.float64) @ x / len(x), 4, 32, False)) < 0.7 * base
    assert out_err(bw.awq(w, x[:512], np.abs(x).mean(0), 4, 32, False)) < 0.9 * base


@pytest.mark.slow
def test_keep_and_override_patterns(tiny_lm, tmp_path):
    res = _q(tiny_lm, tmp_path / "a.onnx", keep=("lm_head", "embed"), overrides=(("layers.0.*", "int8-weight"), ("layers.1.mlp.down_proj*", "none")))
    m = onnx.load(str(res.artifact.path))
    by = {n.name: n for n in m.graph.node}
    nbits = {n.name: next(a.i for a in n.attribute if a.name == "bits") for n in m.graph.node if n.op_type == "MatMulNBits"}
    assert nbits and all(v == 8 for k, v in nbits.items() if "layers.0" in k)
    assert all(v == 4 for k, v in nbits.items() if "layers.0" not in k)
    assert sum("layers.0" in k for k in nbits) == 7 and sum("layers.1" in k for k in nbits) == 6
    assert "/model/layers.1/mlp/down_proj/MatMul" in by and by["/model/layers.1/mlp/down_proj/MatMul"].op_type == "MatMul"
    assert by["/lm_head/MatMul"].op_type == "MatMul"
    assert not any(n.op_type == "GatherBlockQuantized" for n in m.graph.node)
    roles = {d.role: d for d in res.decisions if d.mode == "none"}
    assert roles["lm_head"].reason == "--keep lm_head" and roles["embed"].reason == "--keep embed"
    # the default quantizes embeddings and the LM head too
    res2 = _q(tiny_lm, tmp_path / "b.onnx")
    m2 = onnx.load(str(res2.artifact.path))
    assert sum(n.op_type == "GatherBlockQuantized" for n in m2.graph.node) == 1
    consts = {i.name for i in m2.graph.initializer}
    assert sum(n.op_type == "MatMulNBits" for n in m2.graph.node) == 15
    assert not [n.name for n in m2.graph.node if n.op_type == "MatMul" and n.input[1] in consts]
    assert all(d.mode == ("int8-weight" if d.role == "embed" else "int4") for d in res2.decisions)  # embeddings: 8 bits by default
    assert res2.artifact.path.stat().st_size < res.artifact.path.stat().st_size


@pytest.mark.slow
@pytest.mark.parametrize("mode,bs,sym,bpw", [
    ("int4", 32, False, 4 + 32 / 32 + 4 / 32),
    ("int4", 32, True, 4 + 1.0),
    ("int4", 64, False, 4 + 32 / 64 + 4 / 64),
    ("int8-weight", 64, False, 8 + 0.5 + 8 / 64),
    ("int2", 16, False, 2 + 2 + 2 / 16),
])
def test_bits_per_weight_and_file_size(tiny_lm, tmp_path, mode, bs, sym, bpw):
    extra = {"embed_mode": "int4"} if mode == "int4" else {}  # every weight at the mode's bits (embeddings default to 8 under int4)
    res = _q(tiny_lm, tmp_path / "q.onnx", mode=mode, block_size=bs, symmetric=sym, **extra)
    w = res.weights_summary()
    assert w["weights_quantized"] == w["weights_total"] == 16
    # each weight: codes + one fp32 scale per block + (asymmetric) zero points packed per column, whole bytes
    bits = {"int4": 4, "int8-weight": 8, "int2": 2}[mode]
    shapes = {i.name: tuple(i.dims) for i in onnx.load(str(tiny_lm / "model.onnx")).graph.initializer}
    for d in res.decisions:
        k, n = shapes[d.weight] if d.op == "MatMul" else shapes[d.weight][::-1]
        nb = -(-k // bs)
        assert d.bytes_quant == n * (nb * bs * bits // 8 + 4 * nb + (0 if sym else -(-nb * bits // 8))), d
    assert w["bits_per_weight_quantized"] == pytest.approx(bpw, abs=0.1)
    # the reported bytes are the bytes of the initializers in the file
    m = onnx.load(str(res.artifact.path))
    q_bytes = sum(numpy_helper.to_array(i).nbytes for i in m.graph.initializer
                  if i.name.endswith(("_B", "_scales", "_zp", "_data")))
    assert q_bytes == sum(d.bytes_quant for d in res.decisions)
    fp32 = (tiny_lm / "model.onnx").stat().st_size
    assert res.artifact.path.stat().st_size < fp32 * (bpw / 32 + 0.12)


# ---------------------------------------------------------------- CLI


@pytest.mark.slow
def test_cli_export_int4_end_to_end(runner, tiny_lm, tmp_path):
    out = tmp_path / "bundle"
    r = runner.invoke(app, ["export", str(tiny_lm / "model.onnx"), "-o", str(out), "--quant", "int4", "--algo", "gptq",
                            "--block-size", "32", "--accuracy-level", "4", "--calib", str(tiny_lm / "calib.npz"),
                            "--eval", str(tiny_lm / "eval.npz"), "--no-profile", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    q = res["quantization"]
    assert q["mode"] == "int4" and q["algo"] == "gptq" and q["weights"]["weights_quantized"] == 16
    lm = res["lm_quality"]
    assert lm["tokens"] == 8 * 63 and lm["perplexity_change"] < 0.02 and lm["same_top_token"] > 0.9 and lm["kl_mean"] < 0.01
    assert res["size"]["ratio"] < 0.3 and res["verify"]["passed"]
    m = onnx.load(str(out / "model.onnx"))
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("MatMulNBits") == 15 and ops.count("GatherBlockQuantized") == 1
    assert all(next(a.i for a in n.attribute if a.name == "accuracy_level") == 4 for n in m.graph.node if n.op_type == "MatMulNBits")
    # the table names the LM figures
    r = runner.invoke(app, ["export", str(tiny_lm / "model.onnx"), "-o", str(tmp_path / "b2"), "--quant", "int4", "--algo", "hqq",
                            "--keep", "embed", "--override", "layers.0.*=int8", "--eval", str(tiny_lm / "eval.npz"), "--no-profile"])
    assert r.exit_code == 0, r.output
    for word in ("bits per weight", "perplexity", "mean KL divergence", "same top token"):
        assert word in r.stdout


def test_embedding_wider_block_than_width_uses_a_smaller_block(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(40, 48)).astype(np.float32)
    m = _model([helper.make_node("Gather", ["E", "ids"], ["y"], name="embed")],
               [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N"])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 48])], [numpy_helper.from_array(emb, "E")])
    onnx.save(m, str(tmp_path / "e.onnx"))
    res = quantize(artifact_from(tmp_path / "e.onnx"), QuantSpec(mode="int4", block_size=32), tmp_path / "q.onnx")
    q = onnx.load(str(tmp_path / "q.onnx"))
    node = q.graph.node[0]
    assert node.op_type == "GatherBlockQuantized" and next(a.i for a in node.attribute if a.name == "block_size") == 16
    assert any("block 16" in n for n in res.notes)
    ids = np.array([1, 39, 5])
    y = _session(q).run(None, {"ids": ids})[0]
    assert np.abs(y - emb[ids]).max() < 0.25 * np.abs(emb).max()


def test_cli_weight_only_bad_input(runner, tmp_path):
    from tests.models import make_mlp

    model = make_mlp(tmp_path / "mlp.onnx")
    r = runner.invoke(app, ["quantize", str(model), "-o", str(tmp_path / "q.onnx"), "--quant", "int4", "--algo", "gptq"])
    assert r.exit_code == 2 and "calib" in r.stderr
    r = runner.invoke(app, ["quantize", str(model), "-o", str(tmp_path / "q.onnx"), "--quant", "int4", "--block-size", "48"])
    assert r.exit_code == 2 and "block size" in r.stderr
    r = runner.invoke(app, ["quantize", str(model), "-o", str(tmp_path / "q.onnx"), "--quant", "int4", "--override", "oops"])
    assert r.exit_code == 2 and "PATTERN=MODE" in r.stderr
    assert not (tmp_path / "q.onnx").exists()
    r = runner.invoke(app, ["quantize", str(model), "-o", str(tmp_path / "q.onnx"), "--quant", "int4", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["quantization"]["weights"]["weights_quantized"] == 2


def test_gptq_without_data_is_an_error(tmp_path):
    from tests.models import make_mlp

    model = make_mlp(tmp_path / "mlp.onnx")
    with pytest.raises(CalibrationError):
        quantize(artifact_from(model), QuantSpec(mode="int4", algo="awq"), tmp_path / "q.onnx")
    assert replace(QuantSpec(mode="int4"), algo="rtn").algo == "rtn"


# ---------------------------------------------------------------- AWQ folding, GPTQ act-order


def _llama_block(path: Path, *, k: int = 64, heads: int = 4, inter: int = 128, seed: int = 0, outliers: bool = True) -> Path:
    """One Llama-style block written by hand: RMSNorm -> q/v -> attention -> o_proj (+ residual),
    RMSNorm -> gate/up -> silu(gate) * up -> down_proj. The norm weights have a few loud channels
    (the activation outliers AWQ is built for)."""
    rng = np.random.default_rng(seed)
    d = k // heads
    loud = np.ones(k, np.float32)
    if outliers:
        loud[rng.choice(k, 4, replace=False)] = 12.0
    inits = {
        "g1": (loud * rng.uniform(0.5, 1.5, k)).astype(np.float32), "g2": (loud[::-1] * rng.uniform(0.5, 1.5, k)).astype(np.float32),
        "wq": rng.normal(0, k**-0.5, (k, k)), "wv": rng.normal(0, k**-0.5, (k, k)), "wo": rng.normal(0, k**-0.5, (k, k)),
        "wg": rng.normal(0, k**-0.5, (k, inter)), "wu": rng.normal(0, k**-0.5, (k, inter)), "wd": rng.normal(0, inter**-0.5, (inter, k)),
        "eps": np.array(1e-5, np.float32), "shp": np.array([1, -1, heads, d], np.int64), "shp2": np.array([1, -1, k], np.int64),
    }
    inits = {n: numpy_helper.from_array(np.asarray(a, np.float32 if a.dtype.kind == "f" else a.dtype), n) for n, a in inits.items()}
    N = helper.make_node

    def rms(x, g, p):
        return [N("Mul", [x, x], [p + "sq"]), N("ReduceMean", [p + "sq"], [p + "ms"], axes=[-1], keepdims=1),
                N("Add", [p + "ms", "eps"], [p + "a"]), N("Sqrt", [p + "a"], [p + "r"]), N("Div", [x, p + "r"], [p + "d"]),
                N("Mul", [g, p + "d"], [p + "n"], name=p + "norm")]

    nodes = rms("x", "g1", "l1") + [
        N("MatMul", ["l1n", "wq"], ["q"], name="q_proj"), N("MatMul", ["l1n", "wv"], ["v"], name="v_proj"),
        N("Reshape", ["q", "shp"], ["qr"]), N("Transpose", ["qr"], ["qt"], perm=[0, 2, 1, 3]),
        N("Reshape", ["v", "shp"], ["vr"]), N("Transpose", ["vr"], ["vt"], perm=[0, 2, 1, 3]),
        N("Transpose", ["qt"], ["kt"], perm=[0, 1, 3, 2]), N("MatMul", ["qt", "kt"], ["s"]), N("Softmax", ["s"], ["p"], axis=-1),
        N("MatMul", ["p", "vt"], ["att"]), N("Transpose", ["att"], ["at"], perm=[0, 2, 1, 3]), N("Reshape", ["at", "shp2"], ["ar"]),
        N("MatMul", ["ar", "wo"], ["o"], name="o_proj"), N("Add", ["x", "o"], ["h"]),
    ] + rms("h", "g2", "l2") + [
        N("MatMul", ["l2n", "wg"], ["gate"], name="gate_proj"), N("MatMul", ["l2n", "wu"], ["up"], name="up_proj"),
        N("Sigmoid", ["gate"], ["sg"]), N("Mul", ["gate", "sg"], ["silu"]), N("Mul", ["silu", "up"], ["mm"]),
        N("MatMul", ["mm", "wd"], ["down"], name="down_proj"), N("Add", ["h", "down"], ["y"]),
    ]
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "T", k])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "T", k])], list(inits.values()))
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def _block_data(n: int, k: int = 64, t: int = 16, seed: int = 1):
    from edgeq.core.data import SampleSet

    x = np.random.default_rng(seed).normal(size=(n, 1, t, k)).astype(np.float32)
    return SampleSet(arrays={"x": x}, stacked={"x": True}, labels=None, source="test")


def _block_err(src: Path, q: Path, data) -> float:
    a, b = _session(onnx.load(str(src))), _session(onnx.load(str(q)))
    return float(np.mean([np.mean((a.run(None, data.feed(i))[0] - b.run(None, data.feed(i))[0]) ** 2) for i in range(len(data))]))


def test_awq_folds_keep_the_float_model_identical(tmp_path):
    from edgeq.quantization.weight_only import awq_graph

    src = _llama_block(tmp_path / "b.onnx")
    m = onnx.load(str(src))
    idx = {n.name: i for i, n in enumerate(m.graph.node)}
    members = [(idx[nm], m.graph.node[idx[nm]].input[1], 128 if nm == "down_proj" else 64)
               for nm in ("q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")]
    groups = awq_graph.plan(m, members)
    by = {g.input: g for g in groups}
    # q/v share the first norm, gate/up the second; o_proj folds into v_proj's columns through the
    # attention (Reshape/Transpose/probs @ V), down_proj into up_proj's columns (silu(gate) * up)
    assert set(by) == {"l1n", "ar", "l2n", "mm"}
    assert by["l1n"].fold.inits == (("g1", -1),) and len(by["l1n"].members) == 2
    assert by["l2n"].fold.inits == (("g2", -1),)
    assert by["ar"].fold.what == "matmul" and by["ar"].fold.inits == (("wv", 1),)
    assert by["mm"].fold.inits == (("wu", 1),)
    data = _block_data(2)
    assert awq_graph.check_folds(m, groups, data.feed(0)) == groups
    # the folds with random scales: the float function is unchanged, the weights are not
    rng = np.random.default_rng(5)
    arrays = {i.name: numpy_helper.to_array(i).copy() for i in m.graph.initializer}
    for g in groups:
        awq_graph.apply(arrays, g, np.exp(rng.uniform(-1, 1, 128 if g.input == "mm" else 64)).astype(np.float32))
    m2 = onnx.ModelProto()
    m2.CopyFrom(m)
    for i in m2.graph.initializer:
        i.CopyFrom(numpy_helper.from_array(arrays[i.name], i.name))
    ref, got = _session(m).run(None, data.feed(1))[0], _session(m2).run(None, data.feed(1))[0]
    assert np.abs(got - ref).max() < 1e-4 * np.abs(ref).max()
    for name in ("g1", "g2", "wq", "wv", "wo", "wg", "wu", "wd"):
        assert not np.allclose(arrays[name], numpy_helper.to_array(next(i for i in m.graph.initializer if i.name == name)))
    # a wrong fold (scale on the wrong axis of v_proj) changes the function: the check drops it
    bad = [replace(g, fold=replace(g.fold, inits=(("wv", 0),))) if g.input == "ar" else g for g in groups]
    checked = awq_graph.check_folds(m, bad, data.feed(0))
    assert [g.fold is None for g in checked] == [g.input == "ar" for g in bad]


def test_awq_beats_rtn_with_outlier_channels_and_adds_no_mul(tmp_path):
    src = _llama_block(tmp_path / "b.onnx")
    calib, held = _block_data(16, seed=1), _block_data(6, seed=2)
    art = artifact_from(src)
    err, res = {}, {}
    for algo in ("rtn", "awq"):
        res[algo] = quantize(art, QuantSpec(mode="int4", algo=algo, block_size=32, accuracy_level=0), tmp_path / f"{algo}.onnx", data=calib)
        err[algo] = _block_err(src, res[algo].artifact.path, held)
    assert err["awq"] < 0.8 * err["rtn"], err
    ops = lambda p: [n.op_type for n in onnx.load(str(p)).graph.node]  # noqa: E731
    # every scale was folded: the same ops as RTN's graph, no Mul added
    assert ops(res["awq"].artifact.path) == ops(res["rtn"].artifact.path)
    assert ops(res["awq"].artifact.path).count("MatMulNBits") == 6
    assert any("4 scale(s) folded" in n and "0 applied by an inserted Mul" in n for n in res["awq"].notes), res["awq"].notes
    # the norm weights in the file carry 1/s (changed), the float graph's weights are gone
    g1 = numpy_helper.to_array(next(i for i in onnx.load(str(res["awq"].artifact.path)).graph.initializer if i.name == "g1"))
    assert not np.allclose(g1, numpy_helper.to_array(next(i for i in onnx.load(str(src)).graph.initializer if i.name == "g1")))


def test_awq_without_a_fold_inserts_one_mul_per_group(tmp_path):
    rng = np.random.default_rng(0)
    k = 64
    x_scale = np.where(np.arange(k) % 13 == 0, 15.0, 1.0).astype(np.float32)
    m = _model([helper.make_node("MatMul", ["x", "w1"], ["a"], name="fc1"), helper.make_node("MatMul", ["x", "w2"], ["b"], name="fc2"),
                helper.make_node("Add", ["a", "b"], ["y"])],
               [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 48])],
               [numpy_helper.from_array(rng.normal(0, 0.2, (k, 48)).astype(np.float32), "w1"),
                numpy_helper.from_array(rng.normal(0, 0.2, (k, 48)).astype(np.float32), "w2")])
    onnx.save(m, str(tmp_path / "m.onnx"))
    from edgeq.core.data import SampleSet

    xs = (rng.normal(size=(8, 32, k)) * x_scale).astype(np.float32)
    data = SampleSet(arrays={"x": xs}, stacked={"x": True}, labels=None, source="test")
    art = artifact_from(tmp_path / "m.onnx")
    res = quantize(art, QuantSpec(mode="int4", algo="awq", block_size=32, accuracy_level=0), tmp_path / "q.onnx", data=data)
    q = onnx.load(str(tmp_path / "q.onnx"))
    muls = [n for n in q.graph.node if n.op_type == "Mul"]
    assert len(muls) == 1 and muls[0].input[0] == "x"  # x is a graph input: nothing to fold into
    assert [n.input[0] for n in q.graph.node if n.op_type == "MatMulNBits"] == [muls[0].output[0]] * 2
    assert any("Mul in front" in n and "graph input" in n for n in res.notes), res.notes
    rtn = quantize(art, QuantSpec(mode="int4", algo="rtn", block_size=32, accuracy_level=0), tmp_path / "r.onnx", data=data)
    ref = lambda p: _session(onnx.load(str(p))).run(None, {"x": xs[0]})[0]  # noqa: E731
    e_awq = np.mean((ref(tmp_path / "q.onnx") - ref(tmp_path / "m.onnx")) ** 2)
    e_rtn = np.mean((ref(rtn.artifact.path) - ref(tmp_path / "m.onnx")) ** 2)
    assert e_awq < 0.8 * e_rtn


def test_gptq_act_order_changes_codes_and_is_not_worse(tmp_path):
    # heavy-tailed weights, correlated activations with loud channels spread over the blocks
    rng = np.random.default_rng(0)
    w = (rng.standard_t(3, size=(128, 48)) * 0.05).astype(np.float32)
    mix = rng.normal(size=(128, 128)) * 0.3 + np.eye(128)
    x = (rng.normal(size=(2048, 128)) @ mix * np.where(np.arange(128) % 17 == 0, 8.0, 1.0)).astype(np.float32)
    h = 2 * x.T.astype(np.float64) @ x / len(x)
    out_err = lambda c: np.mean((x @ (w - c.dequantize())) ** 2)  # noqa: E731
    plain, ao = bw.gptq(w, h, 4, 32, False, act_order=False), bw.gptq(w, h, 4, 32, False, act_order=True)
    assert not np.array_equal(plain.q, ao.q)
    assert out_err(ao) < 0.9 * out_err(plain)
    # static groups: the block ranges are those of the original weights, so MatMulNBits runs the codes as they are
    r = bw.rtn(w, 4, 32, False)
    assert np.array_equal(ao.scale, r.scale) and np.array_equal(ao.zero, r.zero)
    y = _session(_matmulnbits(ao, 128, 48)).run(None, {"A": x[:4]})[0]
    assert np.abs(y - x[:4] @ ao.dequantize()).max() <= 1e-4 * np.abs(y).max()
    # through quantize(): the spec field reaches the algorithm, and on a block with outlier channels it is not worse
    src = _llama_block(tmp_path / "b.onnx")
    calib, held = _block_data(16, seed=1), _block_data(6, seed=2)
    art = artifact_from(src)
    e = {}
    for flag in (False, True):
        out = tmp_path / f"g{flag}.onnx"
        quantize(art, QuantSpec(mode="int4", algo="gptq", gptq_act_order=flag, block_size=32, accuracy_level=0), out, data=calib)
        e[flag] = _block_err(src, out, held)
    assert e[True] != e[False] and e[True] <= 1.05 * e[False], e


def test_awq_clip_search_accounts_for_correlated_blocks():
    rng = np.random.default_rng(0)
    w = (rng.standard_t(3, size=(128, 48)) * 0.05).astype(np.float32)
    x = (rng.normal(size=(2048, 128)) @ (rng.normal(size=(128, 128)) * 0.3 + np.eye(128))).astype(np.float32)
    h = x.T.astype(np.float64) @ x / len(x)
    err = lambda c: np.mean((x @ (w - c.dequantize())) ** 2)  # noqa: E731
    rtn = bw.rtn(w, 4, 32, False)
    per_block = bw.awq_clip(w, h, 4, 32, False, passes=0)  # llm-awq's block-by-block choice
    joint = bw.awq_clip(w, h, 4, 32, False)  # + coordinate descent on the whole column's error
    assert err(joint) < 0.97 * err(per_block) < 0.99 * err(rtn)
    # only the ranges change: every block's scale is one of the shrink ratios' scales
    ratios = np.stack([bw.minmax_params(bw._blocks(w, 32) * np.float32(r), 4, False)[0] for r in bw.AWQ_CLIP_RATIOS])
    assert np.all(np.any(np.isclose(ratios, joint.scale[None], rtol=1e-6, atol=0), axis=0))
    assert not np.array_equal(joint.scale, per_block.scale)
