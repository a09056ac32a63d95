"""Task-aware checks (edgeq/checks): each kind inferred and judged by its own metric.

Reference and candidate models are built here with onnx.helper; the candidate computes a
known distortion of the reference, so each test knows what the verdict must be.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeq.checks import infer_all, score
from edgeq.checks.kinds import Context
from edgeq.core.data import SampleSet
from edgeq.core.targets import Tolerances
from edgeq.checks.comparison import verify

TOL = Tolerances()


def _save(path: Path, nodes, inputs, outputs, inits=(), metadata=None) -> Path:
    g = helper.make_graph(nodes, path.stem, inputs, outputs, [numpy_helper.from_array(np.asarray(v), k) for k, v in dict(inits).items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    for k, v in (metadata or {}).items():
        helper.set_model_props(m, {k: v})
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def _samples(**arrays: np.ndarray) -> SampleSet:
    return SampleSet(arrays=dict(arrays), stacked={k: False for k in arrays}, labels=None, source="test")


def _f(name, shape, t=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, t, shape)


# -- YOLO-style concatenated head: raw cosine passes, the task metric fails ------------------------


def _yolo(path: Path, score_scale: float) -> Path:
    """boxes [B, 4, N] (pixels) ++ sigmoid(logits [B, C, N]) * score_scale -> [B, 4+C, N]."""
    return _save(path, [
        helper.make_node("Sigmoid", ["logits"], ["p"]),
        helper.make_node("Mul", ["p", "k"], ["s"]),
        helper.make_node("Concat", ["boxes", "s"], ["out"], axis=1),
    ], [_f("boxes", ["B", 4, 64]), _f("logits", ["B", 3, 64])], [_f("out", ["B", 7, 64])], {"k": np.float32(score_scale)})


def _yolo_data(n: int = 8) -> SampleSet:
    rng = np.random.default_rng(0)
    boxes = np.empty((n, 4, 64), np.float32)
    boxes[:, :2] = rng.uniform(40, 280, (n, 2, 64))  # centres in pixels
    boxes[:, 2:] = rng.uniform(20, 60, (n, 2, 64))  # sizes
    logits = np.full((n, 3, 64), -4.0, np.float32)
    for i in range(n):  # two objects per image, well separated anchors
        logits[i, i % 3, 5] = 3.0
        logits[i, (i + 1) % 3, 40] = 2.5
        boxes[i, :, 40] = [250, 250, 40, 40]
        boxes[i, :, 5] = [60, 60, 40, 40]
    return _samples(boxes=boxes, logits=logits)


def test_yolo_concat_scores_collapse_fails_although_raw_cosine_passes(tmp_path):
    ref, cand = _yolo(tmp_path / "ref.onnx", 1.0), _yolo(tmp_path / "cand.onnx", 0.2)
    r = verify(ref, cand, _yolo_data(), TOL, output_names=("out",))
    assert r.outputs[0].cosine > TOL.min_cosine  # the old verdict: pass
    task = r.tasks[0]
    assert task["kind"] == "detection" and task["info"]["fp32_detections"] == 16 and task["info"]["quantized_detections"] == 0
    assert task["metrics"]["detection_f1"] == 0.0 and not r.passed
    info = task["info"]  # per slice: box error never hides score damage
    assert info["boxes_cosine"] == 1.0 and info["scores_max_abs"] > 0.7
    assert info["best_score_fp32"] > 0.9 and info["best_score_quantized"] < 0.2
    assert any("detection f1" in f for f in r.failures)
    # the same model against itself passes on the task metric
    same = verify(ref, ref, _yolo_data(), TOL, output_names=("out",))
    assert same.passed and same.tasks[0]["metrics"]["detection_f1"] == 1.0


# -- probability map: raw cosine fails, the thresholded map is the same -----------------------------


def _pmap(path: Path, squash: bool) -> Path:
    nodes = [helper.make_node("Mul", ["x", "four"], ["z"]), helper.make_node("Sigmoid", ["z"], ["p"])]
    if squash:  # 0.5 + (p - 0.5) / 2: values move a lot, nothing crosses 0.5
        nodes += [helper.make_node("Sub", ["p", "half"], ["d"]), helper.make_node("Mul", ["d", "half"], ["e"]),
                  helper.make_node("Add", ["e", "half"], ["y"])]
    else:
        nodes += [helper.make_node("Identity", ["p"], ["y"])]
    return _save(path, nodes, [_f("x", ["B", 1, 16, 16])], [_f("y", ["B", 1, 16, 16])],
                 {"four": np.float32(4.0), "half": np.float32(0.5)})


def test_probability_map_passes_on_map_iou_although_raw_cosine_fails(tmp_path):
    rng = np.random.default_rng(1)
    x = np.where(rng.random((6, 1, 16, 16)) < 0.1, 2.0, -2.0).astype(np.float32)
    r = verify(_pmap(tmp_path / "ref.onnx", False), _pmap(tmp_path / "cand.onnx", True), _samples(x=x), TOL, output_names=("y",))
    assert r.outputs[0].cosine < TOL.min_cosine  # the old verdict: fail
    t = r.tasks[0]
    assert t["kind"] == "prob-map" and t["metrics"]["map_iou"] == 1.0 and t["metrics"]["pixel_agreement"] == 1.0
    assert r.passed, r.failures
    # a candidate that loses the text pixels fails
    x2 = x.copy()
    x2[:3] = -2.0
    ref = [np.asarray(1 / (1 + np.exp(-4 * x[i : i + 1]))) for i in range(6)]
    cand = [np.asarray(1 / (1 + np.exp(-4 * x2[i : i + 1]))) for i in range(6)]
    spec = infer_all(("y",), [ref], Context())[0]
    assert not score(spec, ref, cand, TOL).passed


# -- the other kinds, each inferred and checked ---------------------------------------------------


def _ctc(path: Path, bias: float) -> Path:
    return _save(path, [helper.make_node("Add", ["x", "b"], ["z"]), helper.make_node("LogSoftmax", ["z"], ["y"], axis=-1)],
                 [_f("x", ["B", 12, 6])], [_f("y", ["B", 12, 6])], {"b": np.array([0, bias, 0, 0, 0, 0], np.float32)})


def test_ctc_sequence_inferred_and_decoded(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(0, 2, (10, 12, 6)).astype(np.float32)
    data = _samples(x=x)
    same = verify(_ctc(tmp_path / "r.onnx", 0.0), _ctc(tmp_path / "c.onnx", 0.01), data, TOL, output_names=("y",))
    assert same.tasks[0]["kind"] == "sequence" and same.tasks[0]["metrics"]["sequence_match"] == 1.0 and same.passed
    worse = verify(_ctc(tmp_path / "r.onnx", 0.0), _ctc(tmp_path / "c2.onnx", 3.0), data, TOL, output_names=("y",))
    assert worse.tasks[0]["metrics"]["sequence_match"] < 0.5 and not worse.passed


def test_greedy_decode_merges_repeats_and_drops_blank():
    from edgeq.checks.metrics import greedy_decode

    steps = np.eye(4)[[1, 1, 0, 1, 2, 2, 0, 0, 3]]
    assert greedy_decode(steps, blank=0) == (1, 1, 2, 3)


def test_classification_embedding_lm_segmentation_index_regression_inferred():
    rng = np.random.default_rng(3)
    logits = [rng.normal(size=(1, 10)) for _ in range(20)]
    emb = [(lambda v: v / np.linalg.norm(v))(rng.normal(size=(1, 32))) for _ in range(20)]
    lm = [rng.normal(size=(1, 8, 64)) for _ in range(4)]
    seg = [rng.normal(size=(1, 4, 8, 8)) for _ in range(4)]
    idx = [np.array([3], np.int64) for _ in range(4)]
    reg = [rng.normal(size=(1,)) * 50 for _ in range(20)]
    k = lambda name, s, ctx=Context(): infer_all((name,), [s], ctx)[0].kind  # noqa: E731
    assert k("y", logits) == "classification"
    assert k("y", emb) == "embedding"
    assert k("sentence_embedding", [e * 3 for e in emb]) == "embedding"  # by name, not unit-norm
    assert k("logits", lm, Context(token_inputs=True)) == "lm-logits"
    assert k("last_hidden_state", lm, Context(token_inputs=True)) == "embedding"
    assert k("y", seg, Context(image_inputs=((1, 1, 8, 8),))) == "segmentation"
    assert k("y", [s[:, :3] for s in seg], Context(image_inputs=((1, 3, 8, 8),))) == "regression"  # image-to-image
    assert k("y", idx) == "index"
    assert k("y", reg) == "regression"
    # metrics: top-1 / top-5, embedding cosine, LM KL, segmentation agreement
    swapped = [np.roll(x, 1, axis=1) for x in logits]
    c = score(infer_all(("y",), [logits], Context())[0], logits, swapped, TOL)
    assert not c.passed and c.metrics["top1_agreement"] < 0.3 and "top5_agreement" in c.metrics
    c = score(infer_all(("y",), [logits], Context())[0], logits, [x + 1e-3 for x in logits], TOL)
    assert c.passed and c.metrics["top1_agreement"] == 1.0 and c.metrics["top5_agreement"] == 1.0
    c = score(infer_all(("y",), [emb], Context())[0], emb, [-e for e in emb], TOL)
    assert not c.passed and c.metrics["mean_cosine"] == pytest.approx(-1.0)
    spec = infer_all(("logits",), [lm], Context(token_inputs=True))[0]
    assert score(spec, lm, [x + 0.001 for x in lm], TOL).passed
    noisy = score(spec, lm, [x + rng.normal(0, 3, x.shape) for x in lm], TOL)
    assert not noisy.passed and noisy.metrics["mean_kl"] > TOL.max_lm_kl
    ispec = infer_all(("y",), [idx], Context())[0]
    assert score(ispec, idx, idx, TOL).passed and not score(ispec, idx, [i + 1 for i in idx], TOL).passed
    rspec = infer_all(("y",), [reg], Context())[0]
    assert score(rspec, reg, [r * 1.001 for r in reg], TOL).passed and not score(rspec, reg, [-r for r in reg], TOL).passed
    spec = infer_all(("y",), [seg], Context(image_inputs=((1, 1, 8, 8),)))[0]
    assert score(spec, seg, seg, TOL).metrics == {"map_iou": 1.0, "pixel_agreement": 1.0}
    assert not score(spec, seg, [s[:, ::-1] for s in seg], TOL).passed


def test_yolov5_layout_and_onnx_metadata(tmp_path):
    rng = np.random.default_rng(4)
    head = np.zeros((1, 200, 8), np.float32)  # [B, N, 5+C]: xywh in pixels, objectness, 3 class scores
    head[..., :4] = rng.uniform(10, 300, (1, 200, 4))
    head[..., 4:] = rng.uniform(0, 0.1, (1, 200, 4))
    head[0, 7, 4:] = [0.9, 0.05, 0.95, 0.1]
    spec = infer_all(("output0",), [[head]], Context())[0]
    assert spec.kind == "detection" and spec.params == {"layout": "anchors-first", "objectness": True}
    c = score(spec, [head], [head], TOL)
    assert c.passed and c.info["fp32_detections"] == 1
    moved = head.copy()
    moved[0, 7, 0] += 200  # the box moved: no match at IoU 0.5
    assert not score(spec, [head], [moved], TOL).passed


def test_post_nms_boxes_scores_classes_grouped_and_matched():
    boxes = [np.array([[10, 10, 50, 50], [100, 100, 150, 160]], np.float32), np.array([[0, 0, 20, 20]], np.float32)]
    scores = [np.array([0.9, 0.8], np.float32), np.array([0.7], np.float32)]
    labels = [np.array([1, 2], np.int64), np.array([0], np.int64)]
    names = ("boxes", "scores", "labels")
    specs = infer_all(names, [boxes, scores, labels], Context())
    assert [s.kind for s in specs] == ["detection"] * 3 and specs[0].params["scores"] == "scores"
    assert specs[0].params["classes"] == "labels" and specs[1].params == {"part_of": "boxes"}
    ref_all = [dict(zip(names, x)) for x in zip(boxes, scores, labels)]
    c = score(specs[0], boxes, boxes, TOL, ref_all, ref_all)
    assert c.passed and c.metrics["detection_f1"] == 1.0
    wrong_class = [dict(d, labels=d["labels"] + 1) for d in ref_all]
    c = score(specs[0], boxes, boxes, TOL, ref_all, wrong_class)
    assert not c.passed and c.metrics["detection_f1"] == 0.0
    assert score(specs[1], scores, scores, TOL) is None  # checked with its boxes


def test_app_toml_override_and_its_validation(tmp_path):
    from edgeq.core.appio import load_io_spec
    from edgeq.core.artifact import IoSpec, TensorSpec
    from edgeq.errors import EdgeqError

    io = IoSpec((TensorSpec("x", "float32", ("B", 1, 16, 16)),), (TensorSpec("y", "float32", ("B", 1, 16, 16)),))
    p = tmp_path / "app.toml"
    p.write_text('[outputs.y]\ntask = "prob-map"\nthreshold = 0.3\n')
    spec = load_io_spec(p, io)["outputs"]["y"]
    assert spec == {"task": "prob-map", "threshold": 0.3}
    ref = [np.full((1, 1, 16, 16), 0.4, np.float32)]
    t = infer_all(("y",), [ref], Context(), {"y": spec})[0]
    assert t.declared and t.kind == "prob-map" and t.params["threshold"] == 0.3
    assert score(t, ref, [r - 0.2 for r in ref], TOL).metrics["map_iou"] == 0.0  # 0.4 > 0.3 but 0.2 is not
    for bad, word in (('task = "yolo"', "task must be one of"), ('threshold = 0.3', "without 'task'"),
                      ('task = "classification"\nbox_format = "xyxy"', "does not apply"),
                      ('task = "detection"\nbox_format = "ltrb"', "invalid value")):
        p.write_text(f"[outputs.y]\n{bad}\n")
        with pytest.raises(EdgeqError, match=word):
            load_io_spec(p, io)


def test_tolerances_are_validated_target_data():
    from edgeq.errors import EdgeqError
    from edgeq.core.targets import load_target

    tol = load_target("cpu-x86_64").tolerances
    assert tol.min_detection_f1 == 0.9 and tol.min_map_iou == 0.9 and tol.max_lm_kl == 0.05
    with pytest.raises(EdgeqError, match="fraction"):
        Tolerances(min_map_iou=1.5)


# -- --max-drop and the gate score the task ------------------------------------------------------


def _conv_detector(path: Path) -> Path:
    """x [B, 16, 64] -> 1x1 Conv -> rows 0-3 boxes in pixels (x100 + 160), rows 4-6 sigmoid scores -> [B, 7, 64]."""
    rng = np.random.default_rng(5)
    w = rng.normal(0, 0.4, (7, 16, 1)).astype(np.float32)
    return _save(path, [
        helper.make_node("Conv", ["x", "w"], ["h"], name="head"),
        helper.make_node("Split", ["h", "sp"], ["b", "l"], axis=1),
        helper.make_node("Mul", ["b", "k"], ["b1"]), helper.make_node("Add", ["b1", "c"], ["boxes"]),
        helper.make_node("Sigmoid", ["l"], ["scores"]),
        helper.make_node("Concat", ["boxes", "scores"], ["out"], axis=1),
    ], [_f("x", ["B", 16, 64])], [_f("out", ["B", 7, 64])],
        {"w": w, "sp": np.array([4, 3], np.int64), "k": np.float32(100.0), "c": np.float32(160.0)})


def test_metric_of_max_drop_and_gate_is_the_task_metric(tmp_path):
    """The old metric (top-1 over the flattened head) calls a collapsed detector perfect; the task metric does not."""
    import onnx as _onnx

    from edgeq.checks.kinds import first_output_task
    from edgeq.quantization.int8.static import metric

    p = _yolo(tmp_path / "y.onnx", 1.0)
    data = _yolo_data()
    ref = [np.concatenate([data.feed(i)["boxes"], 1 / (1 + np.exp(-data.feed(i)["logits"]))], 1) for i in range(len(data))]
    cand = [np.concatenate([r[:, :4], r[:, 4:] * 0.2], 1) for r in ref]
    old = metric(cand, ref, None)
    assert old.name == "agreement" and old.drop_from(metric(ref, ref, None)) == 0.0  # the false pass
    task = first_output_task(_onnx.load(str(p)), ref)
    assert task.kind == "detection"
    fp32, q = metric(ref, ref, None, task=task), metric(cand, ref, None, task=task)
    assert fp32.name == "detection_f1" and fp32.value == 1.0 and q.drop_from(fp32) == 1.0


@pytest.mark.slow
def test_gate_with_no_candidate_in_budget_ships_fp32_labelled_and_exits_1(runner, tmp_path):
    import json

    from edgeq.cli import app

    m = _conv_detector(tmp_path / "det.onnx")
    rng = np.random.default_rng(6)
    np.savez(tmp_path / "calib.npz", x=rng.normal(0, 1, (32, 1, 16, 64)).astype(np.float32))
    q = tmp_path / "q.onnx"
    r = runner.invoke(app, ["quantize", str(m), "-o", str(q), "--calib", str(tmp_path / "calib.npz"), "--prefer", "accurate",
                            "--max-drop", "0", "--json"])
    rec = json.loads(r.stdout)["quantization"]
    assert rec["gate"]["metric"] in ("detection_f1", "top_detection_agreement")
    drops = [c["drop"] for c in rec["gate"]["candidates"][1:] if c["drop"] is not None]
    assert drops and min(drops) > 0  # int8 moved some detections: no candidate within --max-drop 0
    assert r.exit_code == 1 and "fp32" in r.stderr
    assert rec["mode"] == "none" and rec["gate"]["picked"] == "fp32" and rec["gate"]["met"] is False


def test_raw_ctc_logits_from_an_image_are_a_sequence():
    rng = np.random.default_rng(7)
    logits = [rng.normal(0, 3, (1, 40, 37)) for _ in range(4)]
    spec = infer_all(("logits",), [logits], Context(image_inputs=((1, 3, 48, 320),)))[0]
    assert spec.kind == "sequence"
    assert infer_all(("logits",), [logits], Context())[0].kind == "regression"  # no image input: nothing to say


@pytest.mark.slow
def test_max_drop_met_only_with_every_node_float_is_not_met(runner, tmp_path):
    """--max-drop 0 on a one-Conv detector: the search keeps the Conv float; that is fp32, said so, exit 1."""
    import json

    from edgeq.cli import app

    m = _conv_detector(tmp_path / "det.onnx")
    rng = np.random.default_rng(6)
    np.savez(tmp_path / "calib.npz", x=rng.normal(0, 1, (48, 1, 16, 64)).astype(np.float32))
    r = runner.invoke(app, ["quantize", str(m), "-o", str(tmp_path / "q.onnx"), "--calib", str(tmp_path / "calib.npz"),
                            "--calib-samples", "32", "--max-drop", "0", "--json"])
    rec = json.loads(r.stdout)["quantization"]
    assert rec["search"]["metric"] in ("detection_f1", "top_detection_agreement")
    assert rec["coverage"]["nodes_quantized"] == 0 and rec["float_share"] == 1.0
    assert rec["search"]["met"] is False and rec["search"]["all_float"] is True
    assert r.exit_code == 1 and "every weight node float" in r.stderr
