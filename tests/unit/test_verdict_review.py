"""A reviewer's sweep of task kinds the verdict had not met: each case is a class of real models
whose verdict was wrong (a false pass or a false fail), checked on tiny outputs built here.

Every candidate is either healthy (int8-sized noise: must pass) or broken in a way an app would
notice (must fail, naming the output and the metric).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeq.checks import infer_all, score
from edgeq.checks.comparison import verify
from edgeq.checks.kinds import Context
from edgeq.core.data import SampleSet
from edgeq.core.targets import Tolerances

TOL = Tolerances()
IMAGE = Context(image_inputs=((1, 3, 64, 64),))


def _judge(name: str, ref: list[np.ndarray], cand: list[np.ndarray], ctx: Context = IMAGE):
    spec = infer_all((name,), [ref], ctx)[0]
    return spec, score(spec, ref, cand, TOL)


# -- multi-label classifier: independent sigmoids, several positives per sample -------------------


def _multilabel(rng: np.random.Generator, n: int = 40) -> list[np.ndarray]:
    """[1, 6] sigmoids: 1-3 labels per sample sure (0.97-0.995), the others near 0."""
    out = []
    for _ in range(n):
        p = rng.uniform(0.005, 0.03, (1, 6))
        on = rng.choice(6, rng.integers(1, 4), replace=False)
        p[0, on] = rng.uniform(0.97, 0.995, len(on))
        out.append(p.astype(np.float32))
    return out


def test_multilabel_judged_per_label_not_by_top1():
    rng = np.random.default_rng(0)
    ref = _multilabel(rng)
    # healthy: int8-sized noise reorders labels that are both sure (top-1 flips), no decision changes
    healthy = [np.clip(r + rng.normal(0, 0.01, r.shape), 0, 1).astype(np.float32) for r in ref]
    spec, c = _judge("out", ref, healthy)
    assert spec.kind == "classification" and spec.params.get("multilabel") is True, spec
    assert np.mean([r.argmax() == h.argmax() for r, h in zip(ref, healthy)]) < TOL.min_top1_agreement  # the old verdict: fail
    assert c.passed and c.metrics["label_f1"] == 1.0, c
    # broken: label 4 never fires (a damaged head row); where another label wins, top-1 hides it
    broken = [r.copy() for r in ref]
    for b in broken:
        b[0, 4] = 0.02
    _, c = _judge("out", ref, broken)
    assert not c.passed and c.metrics["label_f1"] < 0.9 and c.info["worst_label"] == 4
    assert any("label f1" in f and "'out'" in f for f in c.failures)


def test_softmax_rows_stay_single_label():
    rng = np.random.default_rng(1)
    z = [rng.normal(0, 3, (1, 6)) for _ in range(20)]
    probs = [np.exp(x) / np.exp(x).sum() for x in z]
    spec = infer_all(("out",), [probs], IMAGE)[0]
    assert spec.kind == "classification" and "multilabel" not in spec.params


# -- segmentation as class ids: [B, H, W] int64 argmax -------------------------------------------


def _label_maps(rng: np.random.Generator, n: int = 6) -> list[np.ndarray]:
    """[1, 32, 32] class ids: background 0, a big region of class 1, a thin line of class 2."""
    out = []
    for _ in range(n):
        m = np.zeros((1, 32, 32), np.int64)
        r, c = rng.integers(2, 14, 2)
        m[0, r : r + 14, c : c + 14] = 1
        m[0, rng.integers(0, 32), 2:30] = 2
        out.append(m)
    return out


def test_argmax_map_losing_a_thin_class_fails_on_mean_iou():
    ref = _label_maps(np.random.default_rng(2))
    broken = [np.where(m == 2, 0, m) for m in ref]  # the thin class is gone: 97 % of pixels still agree
    spec, c = _judge("mask", ref, broken)
    assert spec.kind == "index" and spec.params.get("class_map") is True
    assert np.mean(np.concatenate([(a == b).ravel() for a, b in zip(ref, broken)])) >= TOL.min_top1_agreement  # old: exact match passed
    assert not c.passed and c.info["worst_class"] == 2 and c.info["worst_class_iou"] == 0.0
    assert any("map iou" in f for f in c.failures)
    healthy = [m.copy() for m in ref]
    healthy[0][0, 0, 0] = 1  # one boundary pixel differs
    assert _judge("mask", ref, healthy)[1].passed
    assert infer_all(("n",), [[np.array([3], np.int64)]], IMAGE)[0].params == {}  # a count stays exact match


# -- one-channel maps that are not logit maps: depth, a denoised image ----------------------------


def _save(path: Path, offset: float, w: np.ndarray) -> Path:
    """x [B, 1, 16, 16] -> 3x3 Conv -> + offset: a depth map in metres around ``offset``."""
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["h"], pads=[1, 1, 1, 1]), helper.make_node("Add", ["h", "b"], ["depth"])],
        path.stem, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 1, 16, 16])],
        [helper.make_tensor_value_info("depth", TensorProto.FLOAT, ["B", 1, 16, 16])],
        [numpy_helper.from_array(w.astype(np.float32), "w"), numpy_helper.from_array(np.float32(offset), "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def test_depth_map_shifted_by_a_metre_fails(tmp_path):
    rng = np.random.default_rng(3)
    w = rng.normal(0, 0.3, (1, 1, 3, 3))
    x = rng.uniform(0, 1, (6, 1, 16, 16)).astype(np.float32)
    data = SampleSet(arrays={"x": x}, stacked={"x": False}, labels=None, source="test")
    ref = _save(tmp_path / "ref.onnx", 5.0, w)
    r = verify(_save(tmp_path / "far.onnx", 6.0, w), ref, data, TOL, output_names=("depth",))
    t = r.tasks[0]
    assert t["kind"] == "regression", t  # was a 'logit map' thresholded at 0: every pixel positive, always the same
    assert r.outputs[0].cosine > TOL.min_cosine  # raw cosine cannot see a shift of 1 m at 5 m
    assert not r.passed and t["metrics"]["centred_cosine"] < 0.9 and any("centred cosine" in f for f in r.failures)
    ok = verify(_save(tmp_path / "near.onnx", 5.0, w + rng.normal(0, 0.002, w.shape)), ref, data, TOL, output_names=("depth",))
    assert ok.passed, ok.failures


def test_denoised_image_is_regression_not_a_map_thresholded_at_zero():
    rng = np.random.default_rng(4)
    ref = []
    for _ in range(6):
        img = rng.normal(0, 0.02, (1, 1, 32, 32))  # residual noise around a black background
        img[0, 0, 8:20, 8:20] += 1.0
        ref.append(img.astype(np.float32))
    healthy = [(r + rng.normal(0, 0.004, r.shape)).astype(np.float32) for r in ref]
    spec, c = _judge("clean", ref, healthy, Context(image_inputs=((1, 1, 32, 32),)))
    assert spec.kind == "regression" and c.passed, (spec, c)  # was prob-map at 0: the background's sign is noise
    _, c = _judge("clean", ref, [r + 0.15 for r in ref], Context(image_inputs=((1, 1, 32, 32),)))
    assert not c.passed


def test_logit_map_is_still_thresholded_at_zero():
    rng = np.random.default_rng(5)
    ref = [np.where(rng.random((1, 1, 16, 16)) < 0.2, 4.0, -5.0) + rng.normal(0, 0.5, (1, 1, 16, 16)) for _ in range(4)]
    spec = infer_all(("y",), [ref], IMAGE)[0]
    assert spec.kind == "prob-map" and spec.params["threshold"] == 0.0


def test_constant_output_judged_by_relative_change():
    ref = [np.full((1, 8), 2.5, np.float32) for _ in range(4)]
    spec, c = _judge("scale", ref, [r * 1.0005 for r in ref], Context())
    assert spec.kind == "regression" and c.passed and "constant" in c.info["note"]
    _, c = _judge("scale", ref, [r * 1.2 for r in ref], Context())  # raw cosine of two constants is 1
    assert not c.passed and c.metrics["relative_change"] == pytest.approx(0.2, rel=1e-3)


# -- small [B, K, 2-7] outputs from an image are not CTC alphabets --------------------------------


def _poses(rng: np.random.Generator, n: int = 8) -> list[np.ndarray]:
    """[1, 17, 3]: a 120-px-tall person somewhere in a 640-px image, x, y in pixels, visibility."""
    out = []
    for _ in range(n):
        k = np.empty((1, 17, 3), np.float32)
        x0, y0 = rng.uniform(50, 500, 2)
        k[0, :, 0] = x0 + rng.uniform(0, 50, 17)
        k[0, :, 1] = y0 + rng.uniform(0, 120, 17)
        k[0, :, 2] = rng.uniform(0.6, 1, 17)
        k[0, 15:, 2] = 0.1  # ankles hidden
        out.append(k)
    return out


def test_keypoints_one_joint_moved_fails_although_cosine_passes():
    rng = np.random.default_rng(8)
    ref = _poses(rng)
    healthy = [k + np.concatenate([rng.normal(0, 1.5, (1, 17, 2)), rng.normal(0, 0.01, (1, 17, 1))], -1).astype(np.float32) for k in ref]
    spec, c = _judge("keypoints", ref, healthy, Context(image_inputs=((1, 3, 640, 640),)))
    assert spec.kind == "keypoints" and spec.params == {"visibility": True}, spec
    assert c.passed and c.metrics["keypoint_agreement"] == 1.0, c
    broken = [k.copy() for k in ref]
    for b in broken:
        b[0, 9, 0] += 45  # the left wrist 45 px off (over a third of the body's height)
    _, c = _judge("keypoints", ref, broken, Context(image_inputs=((1, 3, 640, 640),)))
    assert not c.passed and c.metrics["keypoint_agreement"] == pytest.approx(14 / 15), c
    assert any("keypoint agreement" in f and "'keypoints'" in f for f in c.failures)
    reg = score(infer_all(("y",), [ref], Context())[0], ref, broken, TOL)  # the same outputs judged as a regression
    assert reg.passed  # whole-output cosine cannot see it
    hidden = [k.copy() for k in ref]
    for h in hidden:
        h[0, 3, 2] = 0.2  # a visible joint reported hidden
    assert not score(spec, ref, hidden, TOL).passed


def test_padded_detection_table_matched_by_class_and_iou():
    rng = np.random.default_rng(9)
    dets = []
    for _ in range(8):
        d = np.zeros((1, 20, 6), np.float32)  # x1, y1, x2, y2, score, class; unused rows zero
        d[0, :3, :2] = rng.uniform(0, 300, (3, 2))
        d[0, :3, 2:4] = d[0, :3, :2] + rng.uniform(30, 90, (3, 2))
        d[0, :3, 4] = [0.9, 0.8, 0.6]
        d[0, :3, 5] = rng.integers(0, 80, 3)
        d[0, 3:6, 4] = 0.05  # low-score leftovers under the threshold
        d[0, 3:6, :4] = d[0, :3, :4] + 5
        dets.append(d)
    spec = infer_all(("output0",), [dets], IMAGE)[0]
    assert spec.kind == "detection" and spec.params["packed"] == "xyxy-score-class", spec
    swapped = [d[:, [1, 0, 2] + list(range(3, 20))] for d in dets]  # the same detections, another order
    c = score(spec, dets, swapped, TOL, [{"output0": d} for d in dets], [{"output0": d} for d in swapped])
    assert c.passed and c.metrics["detection_f1"] == 1.0 and c.info["fp32_detections"] == 24
    broken = [d.copy() for d in dets]
    for b in broken:
        b[0, 0, 0] = 0.0  # one box's x1 zeroed
        b[0, 1, 5] += 1  # one detection's class changed
    c = score(spec, dets, broken, TOL, [{"output0": d} for d in dets], [{"output0": d} for d in broken])
    assert not c.passed and c.metrics["detection_f1"] < 0.7 and any("detection f1" in f for f in c.failures)


def test_keypoints_and_padded_detections_are_not_sequences():
    rng = np.random.default_rng(6)
    kps = []
    for _ in range(8):
        k = np.empty((1, 5, 3), np.float32)
        k[0, :, :2] = rng.uniform(5, 60, (5, 2))
        k[0, :, 2] = rng.uniform(0, 1, 5)
        kps.append(k)
    # healthy: half a pixel of noise (x and y of a keypoint often close: argmax over (x, y, v) flips)
    healthy = [k + np.concatenate([rng.normal(0, 0.5, (1, 5, 2)), np.zeros((1, 5, 1))], -1).astype(np.float32) for k in kps]
    spec, c = _judge("keypoints", kps, healthy)
    assert spec.kind != "sequence" and c.passed, (spec, c)
    dets = []
    for _ in range(8):
        d = np.zeros((1, 20, 6), np.float32)
        d[0, :3, :2] = rng.uniform(0, 30, (3, 2))
        d[0, :3, 2:4] = d[0, :3, :2] + rng.uniform(5, 30, (3, 2))
        d[0, :3, 4] = rng.uniform(0.3, 1, 3)
        d[0, :3, 5] = rng.integers(0, 3, 3)
        dets.append(d)
    assert infer_all(("dets",), [dets], IMAGE)[0].kind != "sequence"
    logits = [rng.normal(0, 3, (1, 40, 37)) for _ in range(2)]  # a recognizer's alphabet still is
    assert infer_all(("logits",), [logits], IMAGE)[0].kind == "sequence"


# -- NaN / Inf from a broken candidate -------------------------------------------------------------


def test_non_finite_candidate_fails_whatever_the_metric():
    rng = np.random.default_rng(7)
    logits = [rng.normal(0, 1, (1, 10)) for _ in range(20)]
    for x in logits:
        x[0, 0] += 10  # fp32's answer is class 0, as argmax of a NaN row says
    nan = [np.full_like(x, np.nan) for x in logits]
    spec, c = _judge("y", logits, nan, Context())
    assert spec.kind == "classification" and not c.passed and c.metrics["non_finite_share"] == 1.0
    assert any("NaN/Inf" in f and "'y'" in f for f in c.failures)
    reg = [rng.normal(0, 1, (1, 4, 16)) for _ in range(4)]
    holes = [r.copy() for r in reg]
    holes[0][0, 0, :3] = np.inf
    _, c = _judge("z", reg, holes, Context())  # cosine over the finite values alone would read 1.0
    assert not c.passed and c.metrics["non_finite_share"] > 0 and c.metrics["centred_cosine"] == 0.0
    head = _pose_head(rng)  # a detection head with NaN at a detected anchor's keypoints
    spec = infer_all(("output0",), [head], IMAGE)[0]
    bad = [h.copy() for h in head]
    bad[0][0, 5:, 10] = np.nan
    c = score(spec, head, bad, TOL, [{"output0": h} for h in head], [{"output0": h} for h in bad])
    assert spec.kind == "detection" and not c.passed and c.metrics["non_finite_share"] > 0


# -- the new kind and parameters can be declared, and a manifest carrying them stays valid --------


def test_new_kind_and_parameters_declared_in_the_app_toml_and_the_manifest_schema(tmp_path):
    import json

    import jsonschema

    from edgeq.core.appio import load_io_spec
    from edgeq.core.artifact import IoSpec, TensorSpec
    from edgeq.errors import EdgeqError

    io = IoSpec((TensorSpec("x", "float32", ("B", 3, 64, 64)),), (TensorSpec("kp", "float32", ("B", 17, 3)),))
    p = tmp_path / "app.toml"
    p.write_text('[outputs.kp]\ntask = "keypoints"\nradius = 0.05\nvisibility = false\n')
    spec = load_io_spec(p, io)["outputs"]["kp"]
    assert spec == {"task": "keypoints", "radius": 0.05, "visibility": False}
    ref = _poses(np.random.default_rng(10))
    t = infer_all(("kp",), [ref], IMAGE, {"kp": spec})[0]
    moved = [k.copy() for k in ref]
    for m in moved:
        m[0, 9, 0] += 12  # outside 0.05 x the extent of the points (about 7 px), inside the default 0.2
    assert t.declared and not score(t, ref, moved, TOL).passed
    assert score(infer_all(("kp",), [ref], IMAGE)[0], ref, moved, TOL).passed
    p.write_text('[outputs.kp]\ntask = "keypoints"\nradius = 2\n')
    with pytest.raises(EdgeqError, match="invalid value for 'radius'"):
        load_io_spec(p, io)
    schema = json.loads((Path(__import__("edgeq").__file__).parent / "bundles/schemas/manifest.schema.json").read_text())
    out_schema = schema
    for key in _path_to_task(schema):
        out_schema = out_schema[key]
    for declared in (spec, {"task": "classification", "multilabel": True}, {"task": "index", "class_map": True},
                     {"task": "detection", "packed": "xyxy-score-class", "score_threshold": 0.3}, {"task": "detection", "num_classes": 80}):
        jsonschema.validate(declared, out_schema)


def _path_to_task(node, path=()):
    """Keys leading to the schema object whose properties hold an output's 'task'."""
    if isinstance(node, dict):
        if isinstance(node.get("properties"), dict) and "task" in node["properties"] and "blank" in node["properties"]:
            return path
        items = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return None
    for k, v in items:
        found = _path_to_task(v, (*path, k))
        if found is not None:
            return found
    return None


# -- [B, C] amounts that are not class scores: a box regressor, pooled ReLU features --------------


def test_box_regressor_and_relu_features_are_not_classifiers():
    rng = np.random.default_rng(11)
    boxes = []
    for _ in range(30):  # one object's x1, y1, x2, y2 in pixels: x2 and y2 close, argmax flips between them
        x1, y1 = rng.uniform(10, 200, 2)
        s = rng.uniform(40, 60)
        boxes.append(np.array([[x1, y1, x1 + s + rng.uniform(-2, 2), y1 + s]], np.float32))
    healthy = [b + rng.normal(0, 0.5, b.shape).astype(np.float32) for b in boxes]
    spec, c = _judge("out", boxes, healthy)
    assert spec.kind == "regression" and c.passed, (spec, c)  # was classification: top-1 of (x1, y1, x2, y2)
    shifted = [b + np.array([[25, 0, 0, 0]], np.float32) for b in boxes]  # x1 off by half the box: x2 still wins
    assert not _judge("out", boxes, shifted)[1].passed
    feats = [np.maximum(rng.normal(0, 1, (1, 64)), 0).astype(np.float32) for _ in range(20)]
    spec, c = _judge("pooled", feats, [-f for f in feats])
    assert spec.kind == "embedding" and not c.passed
    logits = [rng.normal(0, 3, (1, 10)) for _ in range(20)]
    assert infer_all(("out",), [logits], IMAGE)[0].kind == "classification"  # signed scores stay class scores


# -- [B, H, W] maps without a channel axis (MiDaS-style depth) are not sequences --------------------


def test_depth_map_without_channel_axis_is_a_map_not_a_ctc_sequence():
    rng = np.random.default_rng(12)
    depth = []
    for _ in range(6):
        d = np.full((1, 32, 32), 5.0) + rng.normal(0, 0.05, (1, 32, 32))
        d[0, 8:20, 8:20] = 2.0  # something closer
        depth.append(d.astype(np.float32))
    ctx = Context(image_inputs=((1, 3, 64, 64),))  # the map is the image's grid / 2
    healthy = [d + rng.normal(0, 0.01, d.shape).astype(np.float32) for d in depth]
    spec, c = _judge("depth", depth, healthy, ctx)
    assert spec.kind == "regression" and c.passed, (spec, c)  # was 'sequence': argmax per row of a depth map
    _, c = _judge("depth", depth, [d + 1.0 for d in depth], ctx)
    assert not c.passed and c.info["cosine"] > TOL.min_cosine
    probs = [(d < 3).astype(np.float32) * 0.9 + 0.05 for d in depth]
    assert infer_all(("p",), [probs], ctx)[0].kind == "prob-map"
    ctc = [rng.normal(0, 3, (1, 40, 37)) for _ in range(2)]  # a recognizer on 48 x 320 keeps its sequence
    assert infer_all(("logits",), [ctc], Context(image_inputs=((1, 3, 48, 320),)))[0].kind == "sequence"


def test_normalised_box_in_unit_range_is_regression_not_labels():
    rng = np.random.default_rng(13)
    boxes = []
    for _ in range(30):  # x1, y1, x2, y2 as fractions of the image: spread over [0, 1], no label decisions
        x1, y1 = rng.uniform(0.05, 0.5, 2)
        boxes.append(np.array([[x1, y1, x1 + rng.uniform(0.2, 0.45), y1 + rng.uniform(0.2, 0.45)]], np.float32))
    spec, c = _judge("out", boxes, [b + rng.normal(0, 0.002, b.shape).astype(np.float32) for b in boxes])
    assert spec.kind == "regression" and c.passed, (spec, c)  # a multi-label reading flips decisions at 0.5 on coordinates
    assert not _judge("out", boxes, [b + np.array([[0.08, 0, 0, 0]], np.float32) for b in boxes])[1].passed


def test_super_resolution_output_is_an_image_not_segmentation():
    rng = np.random.default_rng(14)
    up = [rng.uniform(0.3, 0.7, (1, 3, 64, 64)).astype(np.float32) for _ in range(4)]  # x2 from 3 x 32 x 32: grey-ish pixels
    ctx = Context(image_inputs=((1, 3, 32, 32),))
    spec, c = _judge("sr", up, [u + rng.normal(0, 0.003, u.shape).astype(np.float32) for u in up], ctx)
    assert spec.kind == "regression" and c.passed, (spec, c)  # was segmentation: argmax over R, G, B flips on grey pixels
    assert not _judge("sr", up, [u * 0.8 + 0.1 for u in up], ctx)[1].passed  # dimmer: every argmax kept
    seg = [rng.normal(0, 3, (1, 3, 64, 64)) for _ in range(2)]
    assert infer_all(("seg",), [seg], Context(image_inputs=((1, 3, 128, 128),)))[0].kind == "segmentation"  # downscaled: classes


# -- raw detector heads with more than scores after the boxes (YOLOv8-pose / -seg / -obb) ----------


def _pose_head(rng: np.random.Generator, n: int = 6) -> list[np.ndarray]:
    """[1, 4 + 1 + 5 * 3, 256]: cx, cy, w, h in pixels, one class score, 5 keypoints (x, y, conf) per anchor."""
    out = []
    for _ in range(n):
        h = np.empty((1, 20, 256), np.float32)
        h[0, :4] = rng.uniform(20, 300, (4, 256))
        h[0, 4] = rng.uniform(0, 0.05, 256)
        h[0, 4, [10, 100]] = [0.9, 0.8]  # two people
        h[0, :4, 100] = [250, 250, 60, 120]
        h[0, :4, 10] = [60, 60, 60, 120]
        h[0, 5::3] = rng.uniform(0, 320, (5, 256))  # keypoint x
        h[0, 6::3] = rng.uniform(0, 320, (5, 256))  # keypoint y
        h[0, 7::3] = rng.uniform(0, 1, (5, 256))  # keypoint confidence
        out.append(h)
    return out


def test_pose_head_is_a_detection_with_keypoints_judged_at_the_detections():
    rng = np.random.default_rng(15)
    ref = _pose_head(rng)
    spec = infer_all(("output0",), [ref], IMAGE)[0]
    assert spec.kind == "detection" and spec.params == {"layout": "channels-first", "objectness": False, "num_classes": 1}, spec
    all_ = lambda xs: [{"output0": x} for x in xs]  # noqa: E731
    scale = np.full((1, 20, 1), 0.3, np.float32)  # half a pixel of noise on boxes and keypoints
    scale[0, 4] = scale[0, 7::3] = 0.003  # a little on the scores and the keypoints' confidences
    healthy = [h + rng.normal(0, 1, h.shape).astype(np.float32) * scale for h in ref]
    c = score(spec, ref, healthy, TOL, all_(ref), all_(healthy))
    assert c.passed and c.metrics["detection_f1"] == 1.0 and c.info["extras_at_detections"] == 12, c
    broken = [h.copy() for h in ref]
    for b in broken:
        b[0, 5, [10, 100]] += 40  # the first keypoint of every detected person 40 px off; boxes and scores intact
    c = score(spec, ref, broken, TOL, all_(ref), all_(broken))
    assert c.metrics["detection_f1"] == 1.0 and not c.passed and any("keypoint agreement" in f for f in c.failures), c
    assert c.info["best_score_fp32"] == pytest.approx(0.9)  # the score slice ends where the keypoints begin


def test_segmenting_detector_head_and_prototypes(tmp_path):
    rng = np.random.default_rng(16)
    heads, protos = [], []
    for _ in range(4):
        h = np.empty((1, 4 + 3 + 8, 256), np.float32)  # boxes, 3 class scores, 8 mask coefficients
        h[0, :4] = rng.uniform(20, 300, (4, 256))
        h[0, 4:7] = rng.uniform(0, 0.05, (3, 256))
        h[0, 5, 30] = 0.9
        h[0, 7:] = rng.normal(0, 1, (8, 256))
        heads.append(h)
        protos.append(rng.normal(0, 1, (1, 8, 40, 40)).astype(np.float32))
    ctx = Context(image_inputs=((1, 3, 160, 160),), metadata={"task": "segment"})
    specs = infer_all(("output0", "output1"), [heads, protos], ctx)
    assert specs[0].kind == "detection" and specs[0].params["num_classes"] == 3, specs[0]  # was prob-map / sequence
    assert specs[1].kind == "regression" and "prototypes" in specs[1].why, specs[1]  # was 8 'classes' per pixel
    all_ = lambda xs: [{"output0": x} for x in xs]  # noqa: E731
    assert score(specs[0], heads, heads, TOL, all_(heads), all_(heads)).passed
    flipped = [h.copy() for h in heads]
    for f in flipped:
        f[0, 7:, 30] *= -1  # the detected object's mask coefficients negated: its mask inverted
    c = score(specs[0], heads, flipped, TOL, all_(heads), all_(flipped))
    assert c.metrics["detection_f1"] == 1.0 and not c.passed and any("extras centred cosine" in f for f in c.failures), c


def test_max_drop_search_scores_a_multilabel_head_by_label_f1_not_top1():
    """--max-drop / --prefer bound the same number the verdict decides on (int8.static.metric)."""
    from edgeq.quantization.int8.static import metric

    rng = np.random.default_rng(0)
    ref = _multilabel(rng)
    broken = [r.copy() for r in ref]
    for b in broken:
        b[0, 4] = 0.02  # label 4 never fires; top-1 mostly unchanged
    spec = infer_all(("out",), [ref], IMAGE)[0]
    m = metric(broken, ref, None, task=spec)
    assert m.name == "label_f1" and m.value < 0.9, m
