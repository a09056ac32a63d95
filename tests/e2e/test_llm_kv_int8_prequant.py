"""`edgeq export GPTQ_FOLDER --task text-generation --calib C --kv-cache int8` (no --quant): the exact GPTQ import is
weight-only (MatMulNBits with the checkpoint's codes), so the int8 cache applies to it; it was refused as if the
target's default int8-static applied. A bitsandbytes folder, re-quantized with that default, is refused in one line."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from edgeq.cli import app  # noqa: E402
from fixtures.lm import TinyLlamaSpec, make_tiny_llama  # noqa: E402
from tests.prequant_fixtures import make_bnb4, make_gptq  # noqa: E402

SPEC = TinyLlamaSpec(layers=1)  # 4 heads of 32: GroupQueryAttention


@pytest.fixture(scope="module")
def float_folder(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("float") / "llama", SPEC, train=False)


def _tokens(path):
    np.savez(path, input_ids=np.random.default_rng(0).integers(0, SPEC.vocab_size, (6, 16)).astype(np.int64))
    return path


@pytest.mark.slow
def test_gptq_folder_takes_the_int8_cache_without_quant(runner, float_folder, tmp_path):
    make_gptq(float_folder, tmp_path / "ck", bits=4, group_size=32, desc_act=True, sym=False, fmt="gptq")
    out = tmp_path / "b"
    r = runner.invoke(app, ["export", str(tmp_path / "ck"), "--task", "text-generation", "--calib", str(_tokens(tmp_path / "t.npz")),
                            "--kv-cache", "int8", "--no-profile", "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    q = res["quantization"]
    assert q["prequant"]["method"] == "gptq" and q["prequant"]["import"]["max_abs_diff"] == 0.0  # the codes as they were
    assert q["kv_cache"]["dtype"] == "int8" and q["kv_cache"]["calibration_windows"] == 6
    m = onnx.load(str(out / "model.onnx"))
    assert sum(n.op_type == "MatMulNBits" for n in m.graph.node) >= 7 * SPEC.layers
    assert {t.type.tensor_type.elem_type for t in m.graph.input if t.name.startswith("past_")} == {onnx.TensorProto.INT8}
    assert res["passed"] and 0 < res["lm_quality"]["kl_mean"] < 0.05
    r = runner.invoke(app, ["verify", str(out)])  # golden pairs with int8 past inputs and present outputs
    assert r.exit_code == 0, r.output


def test_bitsandbytes_folder_with_int8_cache_and_default_quant_is_one_line(runner, float_folder, tmp_path):
    make_bnb4(float_folder, tmp_path / "ck")
    out = tmp_path / "b"
    r = runner.invoke(app, ["export", str(tmp_path / "ck"), "--task", "text-generation", "--calib", str(_tokens(tmp_path / "t.npz")),
                            "--kv-cache", "int8", "-o", str(out)])
    assert r.exit_code == 2 and "weight-only" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.output
    assert not out.exists()
