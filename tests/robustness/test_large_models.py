"""Item 4: a model just over the 2 GiB protobuf limit.

Its weights sit in external data (a sparse file, so the test costs no disk or memory).
edgeq refuses it before reading the weights or writing anything, with bounded memory.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto

from edgeq.onnxutil import PROTOBUF_LIMIT, load_model

from tests.models import cnn_data, make_cnn
from tests.robustness.failsafe import assert_one_error_line, clean_env, invoke, npz, run_edgeq, tree

BIG = 2**29 + 2**20  # float32 elements: 2 GiB + 4 MiB


def _over_limit(d: Path) -> Path:
    model = make_cnn(d / "big.onnx")
    m = onnx.load(str(model))
    t = onnx.TensorProto(name="big", data_type=TensorProto.FLOAT, dims=[BIG])
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "big.bin"), ("offset", "0"), ("length", str(4 * BIG))):
        e = t.external_data.add()
        e.key, e.value = k, v
    m.graph.initializer.append(t)
    with open(model, "wb") as f:
        f.write(m.SerializeToString())
    with open(d / "big.bin", "wb") as f:
        f.truncate(4 * BIG)
    if os.stat(d / "big.bin").st_blocks * 512 > 2**27:
        pytest.skip("this filesystem has no sparse files")
    return model


@pytest.mark.slow
def test_model_over_2gib_is_refused_before_reading_or_writing(runner, tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    model = _over_limit(d)
    assert model.stat().st_size + 4 * BIG > PROTOBUF_LIMIT
    calib = npz(tmp_path / "calib.npz", **cnn_data(4))
    out = tmp_path / "out"
    src_before = {p.name: p.stat().st_mtime_ns for p in d.iterdir()}
    p = run_edgeq(["export", model, "-o", out, "--calib", calib, "--no-profile"], env=clean_env(tmp_path / "tmp"), timeout=120)
    assert p.rc == 2, (p.rc, p.stderr)
    assert_one_error_line(p.stderr, "over the 2 GiB protobuf limit")
    assert p.max_rss < 600 * 2**20, f"peak memory {p.max_rss / 2**20:.0f} MiB"
    assert not out.exists() and sorted(q.name for q in tmp_path.iterdir()) == ["calib.npz", "m", "tmp"]
    assert [q.name for q in (tmp_path / "tmp").iterdir() if q.name.startswith("edgeq-")] == []
    assert {p.name: p.stat().st_mtime_ns for p in d.iterdir()} == src_before
    # reading only the graph still works: inspect describes it without loading 2 GiB
    r = invoke(runner, "inspect", model, "--json", budget_s=30)
    assert r.exit_code == 0, r.output
    assert '"parameter_bytes": 2151' in r.stdout  # 4 * BIG plus the CNN's own weights
    with pytest.raises(Exception, match="2 GiB"):
        load_model(model)
