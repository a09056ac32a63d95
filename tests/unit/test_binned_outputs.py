"""Binned (ordinal) outputs: a histogram over ordered bins with one bump per row (torchcrepe's
[B, 360] pitch sigmoids, age / angle / depth bins). Neither class scores (top-1 punishes a peak
moving to the neighbouring bin) nor multi-label decisions (the bump's edge bins cross 0.5 with
int8 noise): judged by the peak within ``bins`` (1) bins of fp32's and the peak's height."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeq.checks import infer_all, score
from edgeq.checks.kinds import Context
from edgeq.checks.metrics import primary
from edgeq.core.targets import Tolerances

TOL = Tolerances()
AUDIO = Context(sequence_inputs=((1, 1024),))
BINS = 120


def _bump(centre: float, height: float, bins: int = BINS, width: float = 1.25) -> np.ndarray:
    x = np.arange(bins)
    return height * np.exp(-0.5 * ((x - centre) / width) ** 2)


def _pitch(rng: np.random.Generator, n: int = 48, softmax: bool = False):
    """Per sample [1, BINS]: a bump at a random pitch, voiced (peak 0.6-0.95) on most frames, a low
    bump (unvoiced) on some; or a softmax over the bins (a bump summing to 1). Returns (rows, centres, heights)."""
    centres = rng.uniform(10, BINS - 10, n)
    heights = np.where(rng.random(n) < 0.8, rng.uniform(0.6, 0.95, n), rng.uniform(0.05, 0.2, n))
    rows = []
    for c, h in zip(centres, heights):
        r = _bump(c, h) + 0.002 * rng.random(BINS)
        if softmax:
            r = _bump(c, 1.0, width=2.0) + 1e-4
            r = r / r.sum()
        rows.append(r[None].astype(np.float32))
    return rows, centres, heights


def _candidate(rng, centres, heights, move: float = 0.45, height_noise: float = 0.02, softmax: bool = False):
    out = []
    for c, h in zip(centres, heights):
        c2 = c + rng.uniform(-move, move)
        h2 = np.clip(h + rng.normal(0, height_noise), 0, 1)
        r = np.clip(_bump(c2, h2) + 0.002 * rng.random(BINS) + rng.normal(0, 0.005, BINS), 0, 1)
        if softmax:
            r = _bump(c2, 1.0, width=2.0) + 1e-4
            r = np.clip(r / r.sum() + rng.normal(0, 0.002, BINS), 0, 1)
        out.append(r[None].astype(np.float32))
    return out


def test_pitch_sigmoids_read_as_binned_and_a_healthy_candidate_passes_where_f1_and_top1_fail():
    rng = np.random.default_rng(0)
    ref, centres, heights = _pitch(rng)
    healthy = _candidate(rng, centres, heights)
    spec = infer_all(("output",), [ref], AUDIO)[0]
    assert spec.kind == "classification" and spec.params == {"binned": True}, spec
    assert "a guess" not in spec.why
    c = score(spec, ref, healthy, TOL)
    assert c.passed and c.metrics["peak_agreement"] == 1.0 and c.info["largest_peak_move"] <= 1, c
    # the old verdicts on the same candidate: multi-label F1 at 0.5 and plain top-1 both fail it
    old_ml = score(type(spec)("output", "classification", "", {"multilabel": True}), ref, healthy, TOL)
    old_top1 = score(type(spec)("output", "classification", ""), ref, healthy, TOL)
    assert not old_ml.passed and old_ml.metrics["label_f1"] < TOL.min_top1_agreement, old_ml
    assert not old_top1.passed and old_top1.metrics["top1_agreement"] < TOL.min_top1_agreement, old_top1
    # --max-drop / --prefer bound the same number (edgeq.quantization.int8.static.metric)
    from edgeq.quantization.int8.static import metric

    assert primary(spec, ref, healthy) == ("peak_agreement", 1.0)
    m = metric(healthy, ref, None, task=spec)
    assert m.name == "peak_agreement" and m.value == 1.0, m


def test_broken_binned_candidates_fail():
    rng = np.random.default_rng(1)
    ref, centres, heights = _pitch(rng)
    voiced = np.nonzero(heights >= 0.6)[0]
    moved_centres = centres.copy()
    moved_centres[voiced[::4]] += 3.5  # a quarter of the voiced frames an octave-ish error away: 3+ bins
    spec = infer_all(("output",), [ref], AUDIO)[0]
    moved = _candidate(rng, moved_centres, heights)
    c = score(spec, ref, moved, TOL)
    assert not c.passed and c.metrics["peak_agreement"] < 0.8 and c.info["largest_peak_move"] >= 3, c
    assert any("peak agreement" in f for f in c.failures)
    assert primary(spec, ref, moved)[1] < 0.8
    collapsed = _candidate(rng, centres, heights * 0.7)  # every peak where fp32's is, the voicing confidence collapsed
    c = score(spec, ref, collapsed, TOL)
    assert not c.passed and c.metrics["peak_agreement"] == 1.0 and c.metrics["peak_height_error"] > TOL.max_probability_error, c
    assert any("peak height error" in f for f in c.failures)


def test_softmax_over_bins_is_binned_and_the_tolerance_is_declarable():
    rng = np.random.default_rng(2)
    ref, centres, heights = _pitch(rng, softmax=True)
    spec = infer_all(("age",), [ref], Context(image_inputs=((1, 3, 64, 64),)))[0]
    assert spec.kind == "classification" and spec.params == {"binned": True}, spec
    assert score(spec, ref, _candidate(rng, centres, heights, softmax=True), TOL).passed
    two = _candidate(rng, centres + 2.0, heights, move=0.2, softmax=True)  # every peak 2 bins off
    assert not score(spec, ref, two, TOL).passed
    wide = infer_all(("age",), [ref], Context(), {"age": {"task": "classification", "binned": True, "bins": 3}})[0]
    assert wide.declared and score(wide, ref, two, TOL).passed
    # a declared plain classification still overrides the binned reading
    plain = infer_all(("age",), [ref], Context(), {"age": {"task": "classification"}})[0]
    assert plain.params == {} and "top1_agreement" in score(plain, ref, two, TOL).metrics


def test_multilabel_and_softmax_classifiers_keep_their_kinds():
    rng = np.random.default_rng(3)
    # several separate labels per row among 40: not one bump
    ml = []
    for _ in range(40):
        p = rng.uniform(0.005, 0.03, (1, 40))
        p[0, rng.choice(40, rng.integers(2, 5), replace=False)] = rng.uniform(0.9, 0.99)
        ml.append(p.astype(np.float32))
    spec = infer_all(("out",), [ml], Context())[0]
    assert spec.params == {"multilabel": True}, spec
    # a confident softmax classifier over 100 classes (one class above 10 % of the top) and an unsure one
    for temp in (0.2, 3.0):
        logits = [rng.normal(0, 1, (1, 100)) for _ in range(40)]
        probs = [(np.exp(x / temp) / np.exp(x / temp).sum()).astype(np.float32) for x in logits]
        spec = infer_all(("out",), [probs], Context())[0]
        assert spec.kind == "classification" and "binned" not in spec.params, (temp, spec)
    # a classifier whose rows put a neighbouring class (or two, either side) beside the top one (dog
    # breeds sit side by side in ImageNet's list): neighbours, but no rising-and-falling bump
    side = []
    for _ in range(40):
        p = np.full(100, 1e-3)
        k = int(rng.integers(2, 97))
        p[k], p[k + 1], p[k + 2] = 0.5, 0.15, 0.3
        side.append((p / p.sum())[None].astype(np.float32))
    assert "binned" not in infer_all(("out",), [side], Context())[0].params
    # fewer than 16 bins: class scores
    few = [(_bump(c, 0.9, bins=12)[None]).astype(np.float32) for c in rng.uniform(2, 10, 40)]
    assert "binned" not in infer_all(("out",), [few], Context())[0].params


def test_binned_declared_in_the_app_toml_and_the_manifest_schema(tmp_path):
    import jsonschema

    from edgeq.core.appio import load_io_spec
    from edgeq.core.artifact import IoSpec, TensorSpec
    from edgeq.errors import EdgeqError

    io = IoSpec((TensorSpec("x", "float32", ("B", 1024)),), (TensorSpec("pitch", "float32", ("B", 360)),))
    p = tmp_path / "app.toml"
    p.write_text('[outputs.pitch]\ntask = "classification"\nbinned = true\nbins = 2\n')
    spec = load_io_spec(p, io)["outputs"]["pitch"]
    assert spec == {"task": "classification", "binned": True, "bins": 2} and isinstance(spec["bins"], int)
    p.write_text('[outputs.pitch]\ntask = "classification"\nbins = -1\n')
    with pytest.raises(EdgeqError, match="invalid value for 'bins'"):
        load_io_spec(p, io)
    p.write_text('[outputs.pitch]\ntask = "regression"\nbinned = true\n')
    with pytest.raises(EdgeqError, match="'binned' does not apply"):
        load_io_spec(p, io)
    schema = json.loads((Path(__import__("edgeq").__file__).parent / "bundles/schemas/manifest.schema.json").read_text())
    text = json.dumps(schema)
    assert '"binned": {"type": "boolean"}' in text and '"bins": {"type": "integer"' in text
    from tests.unit.test_verdict_review import _path_to_task

    node = schema
    for key in _path_to_task(schema):
        node = node[key]
    jsonschema.validate(spec, node)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"task": "classification", "bins": "two"}, node)


def test_one_peak_moved_on_a_small_eval_set_suggests_more_samples():
    from edgeq.checks.hints import one_change_over_a_small_set

    rng = np.random.default_rng(4)
    centres, heights = rng.uniform(10, BINS - 10, 20), np.full(20, 0.9)  # every frame voiced: all 20 judged by position
    ref = [(_bump(c, h) + 0.002 * rng.random(BINS))[None].astype(np.float32) for c, h in zip(centres, heights)]
    moved_centres = centres.copy()
    moved_centres[0] += 4  # one frame's peak 4 bins away
    spec = infer_all(("output",), [ref], AUDIO)[0]
    c = score(spec, ref, _candidate(rng, moved_centres, heights, move=0.3, height_noise=0.005), TOL)
    assert not c.passed and c.metrics["peak_agreement"] == 0.95 and c.info["rows_judged_by_position"] == 20, c
    tip = one_change_over_a_small_set([c.to_dict()])
    assert tip and "one of 20 changed" in tip and "peak agreement" in tip, tip


def test_thin_evidence_is_called_a_guess():
    rng = np.random.default_rng(5)
    ref, _, _ = _pitch(rng, n=40)
    for r in ref[:12]:  # 30 % of the rows: two separate spikes, no bump
        r[:] = 0.01
        r[0, 5], r[0, 60] = 0.9, 0.8
    spec = infer_all(("output",), [ref], AUDIO)[0]
    assert spec.params == {"binned": True} and "a guess" in spec.why and 'task = "classification"' in spec.why, spec
    named = infer_all(("output",), [ref], Context(metadata={"names": "{0: 'a', 1: 'b'}"}))[0]
    assert "binned" not in named.params, named  # class names in the metadata: class scores


def _pitch_model(path: Path, shift: float, height: float = 0.9) -> Path:
    """x [B, 1] (a pitch in bins) -> output [B, BINS] = height * exp(-((bin - x - shift) / 1.25)^2 / 2)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    consts = {"shift": np.float32(shift), "bins": np.arange(BINS, dtype=np.float32)[None], "width": np.float32(1.25),
              "half": np.float32(-0.5), "height": np.float32(height)}
    nodes = [helper.make_node("Add", ["x", "shift"], ["xs"]), helper.make_node("Sub", ["bins", "xs"], ["d"]),
             helper.make_node("Div", ["d", "width"], ["z"]), helper.make_node("Mul", ["z", "z"], ["z2"]),
             helper.make_node("Mul", ["z2", "half"], ["e"]), helper.make_node("Exp", ["e"], ["g"]),
             helper.make_node("Mul", ["g", "height"], ["output"])]
    g = helper.make_graph(nodes, path.stem, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 1])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["B", BINS])],
                          [numpy_helper.from_array(v, k) for k, v in consts.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def test_verify_of_two_onnx_models_reads_the_pitch_head_as_binned(tmp_path):
    from edgeq.checks.comparison import verify
    from edgeq.core.data import SampleSet

    x = np.random.default_rng(6).uniform(10, BINS - 10, (32, 1)).astype(np.float32)
    data = SampleSet(arrays={"x": x}, stacked={"x": False}, labels=None, source="test")
    ref = _pitch_model(tmp_path / "ref.onnx", 0.0)
    ok = verify(ref, _pitch_model(tmp_path / "near.onnx", 0.45, 0.89), data, TOL, output_names=("output",))
    t = ok.tasks[0]
    assert t["kind"] == "classification" and "ordered bins" in t["why"] and set(t["limits"]) == {"peak_agreement", "peak_height_error"}, t
    assert ok.passed and t["metrics"]["peak_agreement"] == 1.0, ok.failures
    assert ok.outputs[0].top1_agreement < TOL.min_top1_agreement  # plain top-1 (information) would have failed it
    far = verify(ref, _pitch_model(tmp_path / "far.onnx", 3.0), data, TOL, output_names=("output",))
    assert not far.passed and far.tasks[0]["metrics"]["peak_agreement"] == 0.0 and any("peak agreement" in f for f in far.failures)
    flat = verify(ref, _pitch_model(tmp_path / "flat.onnx", 0.0, 0.6), data, TOL, output_names=("output",))
    assert not flat.passed and any("peak height error" in f for f in flat.failures), flat.tasks
