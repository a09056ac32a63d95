"""One-channel maps that are not per-pixel probabilities (found on openwakeword's melspectrogram.onnx: a log-mel
spectrogram in dB, every value 32..98, read as a logit map thresholded at 0, so a quantization that destroyed it
passed on map IoU 1.0): a map whose values never cross the threshold, or one computed from an audio / feature input,
is compared by cosine. A logit map of an image model keeps its map check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeq.checks import infer_all
from edgeq.checks.comparison import verify
from edgeq.checks.kinds import Context
from edgeq.core.data import SampleSet
from edgeq.core.targets import Tolerances

TOL = Tolerances()


def _save(path: Path, nodes, inp, out, inits) -> Path:
    g = helper.make_graph(nodes, path.stem, [inp], [out], [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def _samples(**arrays) -> SampleSet:
    return SampleSet(arrays=dict(arrays), stacked={k: False for k in arrays}, labels=None, source="test")


def _db_map(path: Path, flat: bool) -> Path:
    """x [B, 1, 16, 16] -> 60 + 20 * x (a positive, dB-like map); ``flat``: the structure lost, 60 everywhere."""
    nodes = [helper.make_node("Mul", ["x", "zero" if flat else "k"], ["s"]), helper.make_node("Add", ["s", "off"], ["y"])]
    return _save(path, nodes, helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 1, 16, 16]),
                 helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 1, 16, 16]),
                 {"k": np.float32(20), "zero": np.float32(0), "off": np.float32(60)})


def test_a_positive_map_is_not_read_as_logits_and_its_damage_fails(tmp_path):
    x = np.clip(np.random.default_rng(0).normal(0, 1, (6, 1, 16, 16)), -2.5, 2.5).astype(np.float32)
    r = verify(_db_map(tmp_path / "ref.onnx", False), _db_map(tmp_path / "flat.onnx", True), _samples(x=x), TOL, output_names=("y",))
    t = r.tasks[0]
    assert t["kind"] == "regression", t  # was prob-map at threshold 0: every pixel "on" in both, map IoU 1.0, pass
    assert "never cross 0" in t["why"]
    assert not r.passed and t["metrics"]["centred_cosine"] < TOL.min_cosine
    same = verify(_db_map(tmp_path / "ref.onnx", False), _db_map(tmp_path / "ref2.onnx", False), _samples(x=x), TOL, output_names=("y",))
    assert same.passed


def _audio_map(path: Path, weights: np.ndarray | None) -> Path:
    """audio [B, 256] -> [B, 1, 16, 16] (framed), times positive per-bin ``weights`` (a candidate that keeps every sign)."""
    nodes = [helper.make_node("Reshape", ["audio", "shape"], ["f"]), helper.make_node("Mul", ["f", "w"], ["spec"])]
    w = np.ones((1, 1, 16, 16), np.float32) if weights is None else weights
    return _save(path, nodes, helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["B", 256]),
                 helper.make_tensor_value_info("spec", TensorProto.FLOAT, ["B", 1, 16, 16]),
                 {"shape": np.array([-1, 1, 16, 16], np.int64), "w": w})


def test_a_map_from_an_audio_input_is_compared_by_cosine(tmp_path):
    rng = np.random.default_rng(1)
    audio = rng.normal(0, 1, (6, 256)).astype(np.float32)
    bent = rng.uniform(0.05, 4.0, (1, 1, 16, 16)).astype(np.float32)  # every sign kept, magnitudes scrambled
    r = verify(_audio_map(tmp_path / "ref.onnx", None), _audio_map(tmp_path / "bent.onnx", bent), _samples(audio=audio), TOL,
               output_names=("spec",))
    t = r.tasks[0]
    assert t["kind"] == "regression" and "audio / feature input" in t["why"], t  # was prob-map (signs agree: IoU 1.0)
    assert not r.passed


def test_an_image_models_logit_map_keeps_its_map_check():
    rng = np.random.default_rng(2)
    logits = [np.where(rng.random((1, 1, 16, 16)) < 0.2, 3.0, -3.0) for _ in range(4)]
    ctx = Context(image_inputs=((1, 3, 64, 64),))
    assert infer_all(("y",), [logits], ctx)[0].kind == "prob-map"
    assert infer_all(("y",), [[p + 10.0 for p in logits]], ctx)[0].kind == "regression"  # all positive now
    probs = [1 / (1 + np.exp(-p)) for p in logits]
    spec = infer_all(("y",), [probs], Context(sequence_inputs=((1, 256),)))[0]
    assert spec.kind == "regression"  # from audio: a soft mask / spectrogram, not a thresholded map
    assert infer_all(("y",), [probs], ctx)[0].kind == "prob-map"
