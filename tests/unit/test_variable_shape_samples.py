"""Samples whose shapes vary (issue 14, item 5): graph networks, variable-length sequences, images of several
sizes. A folder of files that differ only in the model's dynamic axes is read file by file (each file its own
sample, or its own run of samples), one file in memory at a time; one file whose arrays are one call of the model
(a graph's ``[num_nodes, F]`` beside ``[2, num_edges]``) is one sample; a difference in a fixed axis is still
refused in one line. The tiny graph model: x [N, 4] gathered along edges ei [2, E], MatMul, Relu, mean over the
edges -> embedding [1, 8]; node_embedding [N, 8] has as many rows as the sample has nodes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeq.core.artifact import IoSpec, TensorSpec
from edgeq.core.data import ExpectedInputs, check_arrays_early, load_samples, require_stacked
from edgeq.core.onnxutil import artifact_from
from edgeq.errors import CalibrationError

SIZES = ((5, 7), (9, 12), (6, 6), (11, 15))  # (nodes, edges) per molecule-like sample


def _graph_model(path: Path) -> Path:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), "w")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), "w2")
    zero = numpy_helper.from_array(np.array(0, np.int64), "zero")
    nodes = [helper.make_node("Gather", ["ei", "zero"], ["src"], axis=0),
             helper.make_node("Gather", ["x", "src"], ["xs"], axis=0),
             helper.make_node("MatMul", ["xs", "w"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("ReduceMean", ["r"], ["embedding"], axes=[0], keepdims=1),
             helper.make_node("MatMul", ["x", "w2"], ["node_embedding"])]
    graph = helper.make_graph(
        nodes, "graph", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["num_nodes", 4]),
                         helper.make_tensor_value_info("ei", TensorProto.INT64, [2, "num_edges"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, 8]),
         helper.make_tensor_value_info("node_embedding", TensorProto.FLOAT, ["num_nodes", 8])], [w, w2, zero])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _sample(nodes: int, edges: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((nodes, 4)).astype(np.float32), "ei": rng.integers(0, nodes, (2, edges), dtype=np.int64)}


def _folder(d: Path, seed: int = 0, sizes=SIZES) -> list[dict[str, np.ndarray]]:
    d.mkdir()
    samples = [_sample(n, e, seed + i) for i, (n, e) in enumerate(sizes)]
    for i, s in enumerate(samples):
        np.savez(d / f"mol{i:02d}.npz", **s)
    return samples


def test_a_folder_of_different_sizes_is_read_file_by_file(tmp_path):
    io = artifact_from(_graph_model(tmp_path / "g.onnx")).io
    samples = _folder(tmp_path / "calib")
    s = load_samples(tmp_path / "calib", io)
    assert len(s) == len(SIZES)
    assert any("4 files whose shapes differ" in n and "x [5..11, 4]" in n and "one sample" in n for n in s.notes), s.notes
    sess = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
    for i in (2, 0, 3, 1):  # out of order: each feed is its own file's arrays
        f = s.feed(i)
        assert set(f) == {"x", "ei"} and f["x"].shape == samples[i]["x"].shape and f["ei"].shape == samples[i]["ei"].shape
        np.testing.assert_array_equal(f["x"], samples[i]["x"])
        np.testing.assert_array_equal(f["ei"], samples[i]["ei"])
        assert sess.run(None, f)[1].shape == (SIZES[i][0], 8)
    assert s.loader.last[0].name == "mol01.npz"  # one file kept in memory: the last one read
    two = s.take(2)
    assert len(two) == 2 and two.feed(1)["x"].shape == (9, 4)
    with pytest.raises(IndexError):
        two.feed(2)


def test_files_carrying_several_samples_are_runs(tmp_path):
    """Sequences of one length per file, stacked on a new first axis: each file is its own run of samples."""
    io = IoSpec(inputs=(TensorSpec("feats", "float32", ("batch", "time", 3)),), outputs=(TensorSpec("y", "float32", ()),))
    d = tmp_path / "utt"
    d.mkdir()
    rng = np.random.default_rng(2)
    runs = [rng.standard_normal((2, 5, 3)).astype(np.float32), rng.standard_normal((3, 8, 3)).astype(np.float32)]
    np.save(d / "a.npy", runs[0])
    np.save(d / "b.npy", runs[1])
    s = load_samples(d, io)
    assert len(s) == 5 and s.runs == (2, 3)
    np.testing.assert_array_equal(s.feed(1)["feats"], runs[0][1:2])
    np.testing.assert_array_equal(s.feed(4)["feats"], runs[1][2:3])
    assert len(s.take(3)) == 3 and s.take(3).feed(2)["feats"].shape == (1, 8, 3)
    # one utterance per file, without the batch axis ([T]): one sample each
    io1 = IoSpec(inputs=(TensorSpec("audio", "float32", ("batch", "samples")),), outputs=(TensorSpec("y", "float32", ()),))
    d1 = tmp_path / "wav"
    d1.mkdir()
    waves = [rng.standard_normal(n).astype(np.float32) for n in (160, 96, 240)]
    for i, w in enumerate(waves):
        np.save(d1 / f"{i}.npy", w)
    s1 = load_samples(d1, io1)
    assert len(s1) == 3 and s1.feed(2)["audio"].shape == (1, 240)
    np.testing.assert_array_equal(s1.feed(1)["audio"][0], waves[1])
    # the same lengths everywhere: joined into one array, as always (the fast path)
    d2 = tmp_path / "same"
    d2.mkdir()
    np.save(d2 / "a.npy", runs[1][:1])
    np.save(d2 / "b.npy", runs[1][1:])
    same = load_samples(d2, io)
    assert len(same) == 3 and not same.files and same.arrays["feats"].shape == (3, 8, 3)


def test_a_fixed_axis_that_differs_is_still_refused_in_one_line(tmp_path):
    io = artifact_from(_graph_model(tmp_path / "g.onnx")).io
    d = tmp_path / "bad"
    d.mkdir()
    np.savez(d / "a.npz", **_sample(5, 7, 0))
    np.savez(d / "b.npz", x=np.zeros((6, 3), np.float32), ei=np.zeros((2, 4), np.int64))  # x's axis 1 is fixed to 4
    with pytest.raises(CalibrationError) as e:
        load_samples(d, io)
    assert str(e.value) == f"input 'x': files in {d} have different shapes"
    # a name the model gives two inputs keeps one size within a call
    io2 = IoSpec(inputs=(TensorSpec("x", "float32", ("num_nodes", 4)), TensorSpec("ei", "int64", (2, "num_edges")),
                         TensorSpec("deg", "float32", ("num_edges", "num_nodes"))), outputs=(TensorSpec("y", "float32", ()),))
    np.savez(tmp_path / "sym.npz", x=np.zeros((5, 4), np.float32), ei=np.zeros((2, 7), np.int64), deg=np.zeros((7, 6), np.float32))
    with pytest.raises(CalibrationError, match=r"^calibration input 'deg' has num_nodes=6 \(axis 1\) but 'x' has num_nodes=5 \(axis 0\)$"):
        load_samples(tmp_path / "sym.npz", io2)


def test_one_file_of_one_call_is_one_sample(tmp_path):
    io = artifact_from(_graph_model(tmp_path / "g.onnx")).io
    one = _sample(5, 7, 0)
    np.savez(tmp_path / "one.npz", **one)
    s = load_samples(tmp_path / "one.npz", io)
    assert len(s) == 1 and s.feed(0)["x"].shape == (5, 4) and s.feed(0)["ei"].shape == (2, 7)
    assert any("read as one sample" in n and "num_nodes=5, num_edges=7" in n for n in s.notes), s.notes
    check_arrays_early(tmp_path / "one.npz", ExpectedInputs(specs=io.inputs), what="calibration")  # accepted before an export too
    # one name given two sizes is refused in one line (the early check says the same)
    io2 = IoSpec(inputs=(*io.inputs, TensorSpec("mask", "float32", ("num_nodes",))), outputs=io.outputs)
    np.savez(tmp_path / "miscount.npz", **one, mask=np.ones(6, np.float32))
    with pytest.raises(CalibrationError, match=r"^calibration input 'mask' has num_nodes=6 \(axis 0\) but 'x' has num_nodes=5") as late:
        load_samples(tmp_path / "miscount.npz", io2)
    with pytest.raises(CalibrationError) as early:
        check_arrays_early(tmp_path / "miscount.npz", ExpectedInputs(specs=io2.inputs), what="calibration")
    assert str(early.value) == str(late.value)
    # an input whose batch axis edgeq cannot tell, given in its own rank: one sample, said in a note
    io3 = IoSpec(inputs=(TensorSpec("h", "float32", (2, None, None)),), outputs=io.outputs)
    np.savez(tmp_path / "h.npz", h=np.zeros((2, 5, 3), np.float32))
    h = load_samples(tmp_path / "h.npz", io3)
    assert len(h) == 1 and h.feed(0)["h"].shape == (2, 5, 3) and any("batch axis edgeq can tell" in n for n in h.notes)


def test_export_calibrates_and_verifies_over_every_sample(runner, tmp_path):
    from edgeq.cli import app

    model = _graph_model(tmp_path / "g.onnx")
    _folder(tmp_path / "calib")
    _folder(tmp_path / "eval", seed=10, sizes=((4, 5), (8, 13), (7, 9)))
    r = runner.invoke(app, ["export", str(model), "--calib", str(tmp_path / "calib"), "--eval", str(tmp_path / "eval"),
                            "--no-profile", "-o", str(tmp_path / "b"), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["quantization"]["mode"] == "int8-static" and res["quantization"]["coverage"]["nodes_quantized"] >= 1
    assert res["quantization"]["calibration"]["samples"] == len(SIZES)
    q = onnx.load(str(tmp_path / "b" / "model.onnx"))
    assert sum(n.op_type == "QuantizeLinear" for n in q.graph.node) >= 2
    assert res["verify"]["samples"] == 3 and res["verify"]["passed"] is True
    assert {t["output"] for t in res["verify"]["tasks"]} == {"embedding", "node_embedding"}
    golden = sorted((tmp_path / "b" / "golden").iterdir())
    assert len(golden) == 3 and len({np.load(g / "in_0.npy").shape for g in golden}) == 3  # each sample's own shape
    r2 = runner.invoke(app, ["verify", str(tmp_path / "b")])
    assert r2.exit_code == 0, r2.output


def test_a_fixed_shape_target_refuses_samples_of_several_shapes(runner, tmp_path):
    """qnn-htp pins dynamic axes to one sample's sizes: the other samples could not run there."""
    from edgeq.cli import app

    model = _graph_model(tmp_path / "g.onnx")
    _folder(tmp_path / "calib")
    r = runner.invoke(app, ["export", str(model), "--target", "qnn-htp", "--calib", str(tmp_path / "calib"), "-o", str(tmp_path / "b")])
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert err.startswith("error: target qnn-htp runs the model with fixed shapes, but the calibration samples differ in shape "
                          "(x [5..11, 4], ei [2, 6..15])") and "\n" not in err, err
    assert not (tmp_path / "b").exists()


def test_trips_that_need_one_array_refuse_files_read_one_by_one(tmp_path):
    io = artifact_from(_graph_model(tmp_path / "g.onnx")).io
    _folder(tmp_path / "calib")
    s = load_samples(tmp_path / "calib", io)
    with pytest.raises(CalibrationError, match=r"^calibration data .*calib: files of their own shapes \(x \[5\.\.11, 4\], ei \[2, 6\.\.15\]\), "
                                               r"read one by one; a static decoder takes"):
        require_stacked(s, "calibration", "a static decoder takes input_ids windows of one length [n, T]")
    # an input replaced for every sample (a rolled-out recurrent state) is laid over the files' arrays
    from dataclasses import replace

    over = replace(s, arrays={"x": np.stack([np.full((3, 4), i, np.float32) for i in range(len(s))])}, stacked={"x": True})
    assert over.feed(2)["x"].shape == (3, 4) and over.feed(2)["x"][0, 0] == 2 and over.feed(2)["ei"].shape == (2, 6)
    assert over.take(1).feed(0)["x"][0, 0] == 0


def test_max_drop_search_scores_samples_of_several_shapes(runner, tmp_path):
    from edgeq.cli import app

    model = _graph_model(tmp_path / "g.onnx")
    _folder(tmp_path / "calib")
    _folder(tmp_path / "eval", seed=10, sizes=((4, 5), (8, 13), (7, 9)))
    r = runner.invoke(app, ["export", str(model), "--calib", str(tmp_path / "calib"), "--eval", str(tmp_path / "eval"),
                            "--max-drop", "0.05", "--no-profile", "-o", str(tmp_path / "b"), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    search = res["quantization"]["search"]
    assert search["met"] is True and search["steps"] and {o["output"] for o in search["best"]["outputs"]} == {"embedding", "node_embedding"}
    assert res["verify"]["samples"] == 3


def test_axis_names_an_exporter_made_up_keep_the_batch_reading(tmp_path):
    """torch.export names two inputs' unconstrained batch axes s0 and s1: arrays at their own rank with N rows each
    are N samples (the batch reading), not one call; descriptive names (num_nodes, num_edges) are sizes."""
    import onnx
    from onnx import TensorProto, helper

    from edgeq.core.data import load_samples
    from edgeq.core.onnxutil import io_spec

    def model(a: str, b: str):
        g = helper.make_graph([helper.make_node("Identity", ["x"], ["ox"]), helper.make_node("Identity", ["y"], ["oy"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [a, 3]),
                               helper.make_tensor_value_info("y", TensorProto.FLOAT, [b, 2])],
                              [helper.make_tensor_value_info("ox", TensorProto.FLOAT, [a, 3]),
                               helper.make_tensor_value_info("oy", TensorProto.FLOAT, [b, 2])])
        return io_spec(helper.make_model(g))

    p = tmp_path / "d.npz"
    np.savez(p, x=np.zeros((5, 3), np.float32), y=np.ones((5, 2), np.float32))
    data = load_samples(p, model("s0", "s1"))
    assert len(data) == 5 and data.feed(0)["x"].shape == (1, 3)
    data = load_samples(p, model("num_nodes", "num_edges"))
    assert len(data) == 1 and data.feed(0)["x"].shape == (5, 3)
