"""int4 weight-only: embedding tables default to 8 bits (QuantSpec.embed_mode); `--override embed=int4` gives 4."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgeq.core.onnxutil import artifact_from
from edgeq.errors import EdgeqError
from edgeq.quantization import quantize
from edgeq.quantization.spec import QuantSpec, parse_overrides
from tests.unit.test_int4_size import D, V, _ids, _run, make_toy_lm


def _gather_bits(path) -> list[int]:
    m = onnx.load(str(path))
    return [next(a.i for a in n.attribute if a.name == "bits") for n in m.graph.node if n.op_type == "GatherBlockQuantized"]


def test_int4_embedding_defaults_to_8_bits_and_the_override_gives_4(tmp_path):
    src = make_toy_lm(tmp_path / "lm.onnx")
    ids = _ids()
    ref = _run(src, ids)
    a = quantize(artifact_from(src), QuantSpec(mode="int4", accuracy_level=0), tmp_path / "a.onnx")
    emb = next(d for d in a.decisions if d.role == "embed")
    assert emb.mode == "int8-weight" and "embedding default" in emb.reason
    assert _gather_bits(tmp_path / "a.onnx") == [8] and a.sizes["bytes"]["embedding_codes"] == V * D
    assert all(d.mode == "int4" for d in a.decisions if d.role != "embed")
    # the role word names the embedding in --override (its node here is called 'embed', the decoder's 'embed_tokens')
    b = quantize(artifact_from(src), QuantSpec(mode="int4", accuracy_level=0, overrides=parse_overrides(["embed=int4"])), tmp_path / "b.onnx")
    assert _gather_bits(tmp_path / "b.onnx") == [4] and b.sizes["bytes"]["embedding_codes"] == V * D // 2
    assert next(d for d in b.decisions if d.role == "embed").reason == "--override embed=int4"
    c = quantize(artifact_from(src), QuantSpec(mode="int4", accuracy_level=0, embed_mode="int4"), tmp_path / "c.onnx")
    assert _gather_bits(tmp_path / "c.onnx") == [4]
    # the 8-bit table is the closer one: the output error of the whole model drops
    err8 = np.abs(_run(tmp_path / "a.onnx", ids) - ref).mean()
    err4 = np.abs(_run(tmp_path / "b.onnx", ids) - ref).mean()
    assert err8 < err4
    # --keep embed still wins (fp32), and other modes are untouched by the embedding default
    k = quantize(artifact_from(src), QuantSpec(mode="int4", accuracy_level=0, keep=("embed",)), tmp_path / "k.onnx")
    assert _gather_bits(tmp_path / "k.onnx") == [] and next(d for d in k.decisions if d.role == "embed").mode == "none"
    e = quantize(artifact_from(src), QuantSpec(mode="int8-weight", accuracy_level=0), tmp_path / "e.onnx")
    assert next(d for d in e.decisions if d.role == "embed").reason == "default"


def test_unknown_embedding_mode_is_refused():
    with pytest.raises(EdgeqError) as e:
        QuantSpec(mode="int4", embed_mode="int3")
    assert "int3" in e.value.message
