"""Calibration layouts (issue 14, item 5): each input's batch axis read from the declared shapes (symbolic,
``-1``, fixed 1, absent), samples stacked along it or on a new first axis giving the same feeds, scalar and
shared inputs broadcast with a note, sample counts agreeing, and wrong data refused in one line naming the
input, its shape, what the model expects and the batch axis read -- at load and in the early header check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from edgeq.core.artifact import IoSpec, TensorSpec
from edgeq.core.batchaxis import batch_axes
from edgeq.core.data import ExpectedInputs, check_arrays_early, load_samples
from edgeq.core.onnxutil import artifact_from
from edgeq.errors import CalibrationError

N = 6


def _state_model(path: Path, batch: str | None) -> Path:
    """silero-vad's layout: x [B, 8], state [2, B, 8] (batch in the middle), sr a rank-0 int64;
    y = (state + x) * sr, [2, B, 8]. ``batch`` None: the batch dims are unnamed (-1)."""
    b = batch if batch is not None else -1
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [b, 8]),
              helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, b, 8]),
              helper.make_tensor_value_info("sr", TensorProto.INT64, [])]
    nodes = [helper.make_node("Add", ["state", "x"], ["s"]),
             helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["s", "srf"], ["y"])]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, b, 8])
    model = helper.make_model(helper.make_graph(nodes, "state", inputs, [out]), opset_imports=[helper.make_opsetid("", 17)])
    if batch is None:  # -1 as some exporters write it, not a dim_param
        for vi in (*model.graph.input[:2], model.graph.output[0]):
            dims = vi.type.tensor_type.shape.dim
            dims[len(dims) - 2].dim_value = -1
    onnx.save(model, path)
    return path


def _data(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((N, 8)).astype(np.float32), "state": rng.standard_normal((2, N, 8)).astype(np.float32)}


def _io(*specs: tuple) -> IoSpec:
    return IoSpec(inputs=tuple(TensorSpec(n, d, tuple(s)) for n, d, s in specs), outputs=(TensorSpec("y", "float32", ()),))


def _axes(*specs: tuple) -> dict[str, int | None]:
    return {k: v.axis for k, v in batch_axes([TensorSpec(n, "float32", tuple(s)) for n, s in specs]).items()}


def test_batch_axis_rule():
    # symbolic batch shared with another input's first axis, in the middle of a state
    assert _axes(("x", ("N", 8)), ("h", (2, "N", 8))) == {"x": 0, "h": 1}
    # a batch-named symbol wins even where the first axis is dynamic too (time-major RNN)
    assert _axes(("x", ("time", "batch", 8)), ("h", (1, "batch", 8))) == {"x": 1, "h": 1}
    # -1 / unnamed: a fixed first axis (not 1) and exactly one dynamic axis
    assert _axes(("x", (None, 8)), ("h", (2, None, 8))) == {"x": 0, "h": 1}
    # fixed 1 first, and a fixed state whose only axis declared 1 is the batch
    assert _axes(("x", (1, 3, 4)), ("h", (2, 1, 16))) == {"x": 0, "h": 1}
    # absent: a scalar, an all-fixed input without a 1
    assert _axes(("sr", ()), ("w", (4, 8))) == {"sr": None, "w": None}
    # a symbol shared but never first (sequence beside an unnamed batch) keeps the batch first
    assert _axes(("ids", (None, "seq")), ("mask", (None, "seq"))) == {"ids": 0, "mask": 0}
    # ambiguous: several dynamic axes after a fixed first axis
    amb = batch_axes([TensorSpec("h", "float32", (2, None, None))])["h"]
    assert amb.axis is None and not amb.known and "axes 1, 2 are dynamic" in amb.describe()


@pytest.mark.parametrize("batch", ["N", None], ids=["symbolic", "minus-one"])
def test_along_batch_axis_gives_the_new_axis_feeds(tmp_path, batch):
    model = _state_model(tmp_path / "m.onnx", batch)
    io = artifact_from(model).io
    d = _data()
    sr = np.int64(16000)
    np.savez(tmp_path / "along.npz", x=d["x"], state=d["state"], sr=np.array(sr))  # sr 0-d: shared
    np.savez(tmp_path / "new.npz", x=d["x"][:, None], state=np.moveaxis(d["state"], 1, 0)[:, :, None], sr=np.full(N, sr))
    along = load_samples(tmp_path / "along.npz", io)
    new = load_samples(tmp_path / "new.npz", io)
    assert len(along) == len(new) == N
    assert any("'sr' given once" in n and f"{N} samples" in n for n in along.notes) and not new.notes
    assert any(n.startswith(f"calibration data: 'state' [2, {N}, 8] read as {N} samples along batch axis 1") for n in along.notes)
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    for i in range(N):
        fa, fn = along.feed(i), new.feed(i)
        assert fa["state"].shape == (2, 1, 8) and fa["x"].shape == (1, 8) and fa["sr"].shape == ()
        for k in fa:
            assert fa[k].dtype == fn[k].dtype and np.array_equal(fa[k], fn[k]), k
        np.testing.assert_array_equal(fa["state"][:, 0], d["state"][:, i])  # sample i, not a neighbour's
        (y,) = sess.run(None, fa)
        np.testing.assert_allclose(y[:, 0], (d["state"][:, i] + d["x"][i]) * 16000, rtol=1e-6)


def test_an_input_given_once_is_shared_by_all_samples(tmp_path):
    io = artifact_from(_state_model(tmp_path / "m.onnx", "N")).io
    d = _data()
    once = d["state"][:, :1]  # [2, 1, 8]: the model's own shape, batch 1
    np.savez(tmp_path / "once.npz", x=d["x"], state=once, sr=np.full(N, 8000, np.int64))  # sr stacked as [N]: still fine
    s = load_samples(tmp_path / "once.npz", io)
    assert len(s) == N and any("'state' given once" in n for n in s.notes)
    for i in range(N):
        np.testing.assert_array_equal(s.feed(i)["state"], once)
        assert s.feed(i)["sr"] == 8000
    assert len(s.take(3)) == 3 and s.take(3).feed(2)["state"].shape == (2, 1, 8)
    # an input without a batch axis (every axis fixed) given in its own shape: shared too
    io2 = _io(("x", "float32", ("N", 8)), ("w", "float32", (4, 8)))
    np.savez(tmp_path / "w.npz", x=d["x"], w=np.ones((4, 8), np.float32))
    s2 = load_samples(tmp_path / "w.npz", io2)
    assert len(s2) == N and s2.feed(N - 1)["w"].shape == (4, 8)


def test_sample_counts_must_agree(tmp_path):
    io = artifact_from(_state_model(tmp_path / "m.onnx", None)).io
    d = _data()
    np.savez(tmp_path / "bad.npz", x=d["x"], state=d["state"][:, :4], sr=np.array(16000))
    with pytest.raises(CalibrationError) as e:
        load_samples(tmp_path / "bad.npz", io)
    msg = str(e.value)
    assert "\n" not in msg and "x=6 along batch axis 0" in msg and "state=4 along batch axis 1" in msg
    # mixed layouts count alike; a count of 1 on a new axis is not "given once"
    np.savez(tmp_path / "bad2.npz", x=d["x"][:1, None], state=d["state"], sr=np.array(16000))
    with pytest.raises(CalibrationError, match=r"x=1 along a new first axis, state=6 along batch axis 1"):
        load_samples(tmp_path / "bad2.npz", io)
    np.savez(tmp_path / "lab.npz", x=d["x"], state=d["state"], sr=np.array(16000), labels=np.zeros(4, np.int64))
    with pytest.raises(CalibrationError, match="1-D integer array of 6 labels"):
        load_samples(tmp_path / "lab.npz", io)


def test_wrong_layouts_stay_refused_in_one_line(tmp_path):
    io = _io(("x", "float32", (4, 8)))  # a batch fixed to 4: no batch axis to stack along
    np.savez(tmp_path / "f.npz", x=np.zeros((32, 8), np.float32))
    with pytest.raises(CalibrationError, match=r"'x' has sample shape \[32, 8\], the model expects float32\[4, 8\] \(axis 0; "
                                               r"read as one sample shared by all \(no batch axis"):
        load_samples(tmp_path / "f.npz", io)
    assert len(load_samples(tmp_path / "f.npz", _io(("x", "float32", (32, 8))))) == 1  # its own shape: one sample
    # several dynamic axes after a fixed first: samples only on a new first axis; an array of the input's own
    # rank is one call of the model (tests/unit/test_variable_shape_samples.py), another rank is refused
    io2 = _io(("h", "float32", (2, None, None)))
    np.savez(tmp_path / "h.npz", h=np.zeros((5, 3), np.float32))
    with pytest.raises(CalibrationError, match=r"'h' has shape \[5, 3\], the model expects float32\[2, \?, \?\] per sample "
                                               r"\(batch axis unknown: axis 0 is fixed to 2 and axes 1, 2 are dynamic\)"):
        load_samples(tmp_path / "h.npz", io2)
    np.savez(tmp_path / "h1.npz", h=np.zeros((5, 2, 1, 3), np.float32))
    assert len(load_samples(tmp_path / "h1.npz", io2)) == 5
    # the state's fixed axis 0 still checked when read along its batch axis
    io3 = artifact_from(_state_model(tmp_path / "m.onnx", None)).io
    np.savez(tmp_path / "s.npz", x=np.zeros((N, 8), np.float32), state=np.zeros((3, N, 8), np.float32), sr=np.array(1))
    with pytest.raises(CalibrationError, match=r"'state' has sample shape \[3, 1, 8\], .* \(axis 0; read as samples along batch axis 1"):
        load_samples(tmp_path / "s.npz", io3)


def test_early_check_accepts_and_refuses_as_load_does(tmp_path):
    io = artifact_from(_state_model(tmp_path / "m.onnx", "N")).io
    expected = ExpectedInputs(specs=io.inputs)
    d = _data()
    np.savez(tmp_path / "ok.npz", x=d["x"], state=d["state"], sr=np.array(16000), labels=np.zeros(N, np.int64))
    check_arrays_early(tmp_path / "ok.npz", expected, what="calibration")  # accepted, as load_samples accepts it
    assert len(load_samples(tmp_path / "ok.npz", io)) == N
    bad = {"counts": dict(x=d["x"], state=d["state"][:, :4], sr=np.array(16000)),
           "shape": dict(x=d["x"], state=d["state"][:1], sr=np.array(16000)),
           "labels": dict(x=d["x"], state=d["state"], sr=np.array(16000), labels=np.zeros(3, np.int64))}
    for name, arrays in bad.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        with pytest.raises(CalibrationError) as early:
            check_arrays_early(tmp_path / f"{name}.npz", expected, what="calibration")
        with pytest.raises(CalibrationError) as late:
            load_samples(tmp_path / f"{name}.npz", io)
        assert str(early.value) == str(late.value), name


def test_folder_of_batches_joins_along_the_batch_axis(tmp_path):
    io = artifact_from(_state_model(tmp_path / "m.onnx", "N")).io
    d = _data()
    (tmp_path / "f").mkdir()
    np.savez(tmp_path / "f" / "0.npz", x=d["x"][:4], state=d["state"][:, :4], sr=np.array(16000))
    np.savez(tmp_path / "f" / "1.npz", x=d["x"][4:], state=d["state"][:, 4:], sr=np.array(16000))
    s = load_samples(tmp_path / "f", io)
    assert len(s) == N
    for i in range(N):
        np.testing.assert_array_equal(s.feed(i)["state"][:, 0], d["state"][:, i])
        assert s.feed(i)["sr"] == 16000


def test_export_cli_reads_samples_along_the_batch_axis(runner, tmp_path):
    from edgeq.cli import app

    model = _state_model(tmp_path / "m.onnx", None)
    d = _data()
    np.savez(tmp_path / "along.npz", x=d["x"], state=d["state"], sr=np.array(16000))
    r = runner.invoke(app, ["export", str(model), "--calib", str(tmp_path / "along.npz"), "--no-profile",
                            "-o", str(tmp_path / "b"), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert any("'sr' given once" in n and f"{N} samples" in n for n in res["notes"]), res["notes"]
    assert res["verify"]["passed"] is True

    np.savez(tmp_path / "bad.npz", x=d["x"], state=d["state"][:1], sr=np.array(16000))
    r = runner.invoke(app, ["export", str(model), "--calib", str(tmp_path / "bad.npz"), "--no-profile", "-o", str(tmp_path / "b2")])
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert err.startswith("error:") and "\n" not in err, err
    assert "'state' has sample shape [1, 1, 8]" in err and "float32[2, ?, 8]" in err and "batch axis 1" in err
    assert not (tmp_path / "b2").exists()


def test_time_major_inputs_read_along_the_named_batch_axis(tmp_path):
    io = _io(("x", "float32", ("time", "batch", 8)), ("h", "float32", (1, "batch", 8)))
    rng = np.random.default_rng(1)
    x, h = rng.standard_normal((3, 5, 8)).astype(np.float32), rng.standard_normal((1, 5, 8)).astype(np.float32)
    np.savez(tmp_path / "t.npz", x=x, h=h)
    s = load_samples(tmp_path / "t.npz", io)
    assert len(s) == 5
    for i in range(5):
        np.testing.assert_array_equal(s.feed(i)["x"], x[:, i : i + 1])
        np.testing.assert_array_equal(s.feed(i)["h"], h[:, i : i + 1])
