"""Classic models (scikit-learn through skl2onnx, LightGBM through onnxmltools) return non-tensor outputs: a ZipMap's
``seq(map(int64|string, float))`` and string class labels. verify crashed on both ("float() argument must be ... not
'dict'", "could not convert string to float"); they are now judged by their task: the maps as class probabilities
(top-1 agreement), the labels by exact match."""

from __future__ import annotations

import numpy as np
import onnx

from edgeq.bundles import runner
from edgeq.checks.comparison import verify
from edgeq.core.data import SampleSet
from edgeq.core.onnxutil import io_spec
from edgeq.core.targets import Tolerances
from edgeq.core.values import as_array
from tests.ml_models import features, tree_classifier

TOL = Tolerances()


def _data(n: int = 64) -> SampleSet:
    return SampleSet(arrays={"X": features(n)}, stacked={"X": False}, labels=None, source="test")


def _tasks(report) -> dict:
    return {t["output"]: t for t in report.tasks}


def test_zipmap_maps_become_class_columns_and_string_labels_plain_arrays():
    maps = [{2: 0.5, 0: 0.25, 1: 0.25}, {0: 1.0, 1: 0.0, 2: 0.0}]
    a = as_array(maps)
    assert a.dtype == np.float32 and a.shape == (2, 3)
    assert a[0].tolist() == [0.25, 0.25, 0.5]  # columns in sorted key order, whatever the dict's order
    s = as_array(np.array(["cat", "owl"], dtype=object))
    assert s.dtype.kind == "U" and s.tolist() == ["cat", "owl"]  # np.save(..., allow_pickle=False) takes it


def test_zipmap_output_is_judged_as_class_probabilities(tmp_path):
    ref = tree_classifier(tmp_path / "ref.onnx")
    same = verify(ref, tree_classifier(tmp_path / "same.onnx"), _data(), TOL, output_names=("label", "output_probability"))
    t = _tasks(same)
    assert same.passed, same.failures
    assert t["output_probability"]["kind"] == "classification" and t["output_probability"]["metrics"]["top1_agreement"] == 1.0
    assert t["label"]["kind"] == "index"
    moved = verify(ref, tree_classifier(tmp_path / "moved.onnx", threshold=0.8), _data(), TOL,
                   output_names=("label", "output_probability"))
    t = _tasks(moved)
    assert not moved.passed  # the split moved: samples between 0 and 0.8 change class
    assert t["label"]["metrics"]["exact_match"] < TOL.min_top1_agreement
    assert t["output_probability"]["metrics"]["top1_agreement"] < TOL.min_top1_agreement


def test_string_labels_are_compared_by_exact_match(tmp_path):
    ref = tree_classifier(tmp_path / "ref.onnx", strings=True, zipmap=False)
    same = verify(ref, tree_classifier(tmp_path / "same.onnx", strings=True, zipmap=False), _data(), TOL,
                  output_names=("label", "probabilities"))
    assert same.passed and _tasks(same)["label"]["kind"] == "index" and "string labels" in _tasks(same)["label"]["why"]
    assert same.outputs[0].cosine is None  # no numeric error to report for strings
    moved = verify(ref, tree_classifier(tmp_path / "moved.onnx", threshold=0.8, strings=True, zipmap=False), _data(), TOL,
                   output_names=("label", "probabilities"))
    assert not moved.passed and _tasks(moved)["label"]["metrics"]["exact_match"] < TOL.min_top1_agreement


def test_a_zipmap_output_is_described_by_its_type(tmp_path):
    io = io_spec(onnx.load(str(tree_classifier(tmp_path / "m.onnx", strings=True))))
    assert io.outputs[1].dtype == "seq(map(string,float32))", io.outputs[1]


def test_the_runner_compares_string_golden_outputs(tmp_path):
    """run.py's golden check on a string label output: the same strings pass, others fail (no float conversion)."""
    import onnxruntime as ort

    model = tree_classifier(tmp_path / "model.onnx", strings=True)
    x = features(4)
    outs = [runner.dense(o) for o in ort.InferenceSession(str(model)).run(None, {"X": x})]
    assert outs[1].shape == (4, 3) and outs[0].dtype.kind == "U"
    np.save(tmp_path / "in.npy", x)
    manifest = {"model": {"onnx": "model.onnx"}, "inputs": [{"name": "X"}], "target": {"session_options": {}},
                "golden": {"atol": 1e-4, "rtol": 1e-3, "pairs": [{"id": "000", "inputs": ["in.npy"], "outputs": ["o0.npy", "o1.npy"]}]},
                "files": {"model.onnx": {}, "in.npy": {}, "o0.npy": {}, "o1.npy": {}}}
    np.save(tmp_path / "o0.npy", outs[0], allow_pickle=False)
    np.save(tmp_path / "o1.npy", outs[1], allow_pickle=False)
    assert runner.run_golden(str(tmp_path), manifest, model="onnx")["passed"]
    np.save(tmp_path / "o0.npy", np.array(["dog"] * 4), allow_pickle=False)
    assert not runner.run_golden(str(tmp_path), manifest, model="onnx")["passed"]


def test_string_inputs_are_read_from_unicode_arrays(tmp_path):
    """A string input (a categorical encoder) was told to convert its data to dtype object, which an .npz cannot hold
    without pickle (refused): a unicode array is what numpy.savez writes, and it runs."""
    import pytest

    from edgeq.core.data import load_samples
    from edgeq.errors import CalibrationError
    from tests.ml_models import string_encoder

    m = string_encoder(tmp_path / "enc.onnx")
    io = io_spec(onnx.load(str(m)))
    np.savez(tmp_path / "ok.npz", colour=np.array([["red"], ["blue"], ["green"], ["red"]]))
    data = load_samples(tmp_path / "ok.npz", io, what="evaluation")
    r = verify(m, m, data, TOL, output_names=("code",))
    assert r.passed and r.tasks[0]["kind"] == "index" and r.samples == 4
    np.savez(tmp_path / "bad.npz", colour=np.zeros((4, 1), np.float32))
    with pytest.raises(CalibrationError) as e:
        load_samples(tmp_path / "bad.npz", io, what="evaluation")
    assert "expects strings" in str(e.value) and "astype(str)" in e.value.hint


def test_nan_is_a_missing_value_where_the_model_imputes_it(tmp_path):
    """Data with NaN was refused ("holds NaN or Inf ... clean the data") for models whose Imputer / trees take NaN as a
    missing value (scikit-learn's SimpleImputer, LightGBM): only those inputs accept it, and Inf stays refused."""
    import pytest

    from edgeq.core.data import load_samples
    from edgeq.errors import CalibrationError

    x = features(32)
    x[::3, 1] = np.nan
    np.savez(tmp_path / "nan.npz", X=x)
    imputed = tree_classifier(tmp_path / "imputed.onnx", impute=True, zipmap=False)
    io = io_spec(onnx.load(str(imputed)))
    assert io.missing_ok == ("X",)
    data = load_samples(tmp_path / "nan.npz", io, what="evaluation")
    r = verify(imputed, imputed, data, TOL, output_names=("label", "probabilities"))
    assert r.passed and r.samples == 32
    from onnx import TensorProto, helper

    relu = helper.make_model(helper.make_graph(  # a graph that does not impute: NaN is broken data there
        [helper.make_node("Relu", ["X"], ["y"])], "relu", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])]), opset_imports=[helper.make_opsetid("", 17)])
    assert io_spec(relu).missing_ok == ()
    with pytest.raises(CalibrationError, match="holds NaN or Inf"):
        load_samples(tmp_path / "nan.npz", io_spec(relu), what="evaluation")
    x[0, 0] = np.inf
    np.savez(tmp_path / "inf.npz", X=x)
    with pytest.raises(CalibrationError, match="holds Inf"):
        load_samples(tmp_path / "inf.npz", io, what="evaluation")
