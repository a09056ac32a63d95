"""One metric per task kind, quantized against fp32, with the target's tolerance.

Every function takes the per-sample fp32 outputs (``ref``) and the quantized ones (``cand``)
of one output; detection also reads the outputs its boxes' scores and classes live in.
fp32 is the ground truth: "agreement" means the quantized model does what fp32 does.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .binned import peaks
from .kinds import TaskSpec


@dataclass(frozen=True)
class TaskCheck:
    """The verdict on one output: its kind, the metrics that decide it, and information."""

    output: str
    kind: str
    why: str
    metrics: dict[str, float]
    limits: dict[str, str]  # metric -> ">= 0.9" / "<= 0.05"
    passed: bool
    failures: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["failures"] = list(self.failures)
        return d


def _check(task: TaskSpec, metrics: dict[str, float], rules: list[tuple[str, str, float]], info: dict[str, Any] | None = None) -> TaskCheck:
    """``rules``: (metric, '>=' | '<=', limit) applied to ``metrics``."""
    fails: list[str] = []
    limits: dict[str, str] = {}
    for m, op, lim in rules:
        v = metrics.get(m)
        limits[m] = f"{op} {lim:g}"
        if v is None:
            continue
        ok = v >= lim if op == ">=" else v <= lim
        if not ok or not math.isfinite(v):
            fails.append(f"output '{task.output}' ({task.kind}): {m.replace('top1', 'top-1').replace('top5', 'top-5').replace('_', ' ')} {v:.4g} {'<' if op == '>=' else '>'} {lim:g}")
    return TaskCheck(task.output, task.kind, task.why, {k: round(float(v), 6) for k, v in metrics.items()}, limits,
                     not fails, tuple(fails), info or {})


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    fin = np.isfinite(a) & np.isfinite(b)
    a, b = a[fin], b[fin]
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def _rows(samples: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(s, np.float64).reshape(-1, np.asarray(s).shape[-1] if np.asarray(s).ndim else 1) for s in samples])


# -- classification ------------------------------------------------------------------------------


def _probabilities(r: np.ndarray) -> bool:
    """fp32's rows are probabilities the app reads as such: a softmax (rows sum to 1) or, for one
    column, sigmoid values in [0, 1]."""
    if r.size == 0 or not np.isfinite(r).all() or r.min() < -1e-4 or r.max() > 1 + 1e-4:
        return False
    return r.shape[1] == 1 or bool(np.allclose(r.sum(1), 1.0, atol=1e-2))


def classification(task: TaskSpec, ref: list[np.ndarray], cand: list[np.ndarray], tol: Any) -> TaskCheck:
    """Top-1 (and top-5) agreement; for probability outputs also the mean change of fp32's top
    class probability, which apps threshold (a two-class model keeps every argmax while its
    confidences collapse: top-1 alone would pass it)."""
    r, c = _rows(ref), _rows(cand)
    if task.get("multilabel", False) and r.shape[1] >= 2:
        return _multilabel(task, r, c, tol)
    if task.get("binned", False) and r.shape[1] >= 2:
        return _binned(task, r, c, tol)
    probs = _probabilities(r)
    if r.shape[1] == 1:  # one probability: the decision at 0.5
        agree = float(np.mean((r[:, 0] > 0.5) == (c[:, 0] > 0.5)))
        metrics = {"decision_agreement": agree}
        rules = [("decision_agreement", ">=", tol.min_top1_agreement)]
        if probs:
            metrics["probability_error"] = float(np.mean(np.abs(c[:, 0] - r[:, 0])))
            rules.append(("probability_error", "<=", tol.max_probability_error))
        info1: dict[str, Any] = {"rows": int(r.shape[0])}
        above = int(np.sum(r[:, 0] > 0.5))
        if above in (0, r.shape[0]):  # every fp32 decision the same: agreement proves little
            side = "above" if above else "at or below"
            info1["note"] = (f"every fp32 value on the data is {side} 0.5 ({r.shape[0]} rows): decision agreement "
                             "is weak evidence; add samples of both outcomes to --eval")
        return _check(task, metrics, rules, info1)
    top1 = r.argmax(1)
    metrics = {"top1_agreement": float(np.mean(top1 == c.argmax(1)))}
    rules = [("top1_agreement", ">=", tol.min_top1_agreement)]
    if r.shape[1] > 5:
        top5 = np.argsort(-c, axis=1)[:, :5]
        metrics["top5_agreement"] = float(np.mean((top5 == top1[:, None]).any(1)))
        rules.append(("top5_agreement", ">=", tol.min_top5_agreement))
    info: dict[str, Any] = {"rows": int(r.shape[0])}
    if r.shape[0] > 1 and np.all(top1 == top1[0]):  # one class everywhere (openwakeword's timer model): proves little
        info["note"] = (f"every fp32 top-1 on the data is class {int(top1[0])} ({r.shape[0]} rows): top-1 agreement is "
                        "weak evidence; add samples of other classes to --eval")
    if probs:
        rows = np.arange(len(top1))
        metrics["probability_error"] = float(np.mean(np.abs(c[rows, top1] - r[rows, top1])))
        rules.append(("probability_error", "<=", tol.max_probability_error))
        info["probability_error"] = "mean |change| of fp32's top-class probability"
    return _check(task, metrics, rules, info)


def _multilabel(task: TaskSpec, r: np.ndarray, c: np.ndarray, tol: Any) -> TaskCheck:
    """Independent sigmoids (several labels per sample): the labels each model calls positive at
    0.5 (F1 of the two sets, which easy negatives cannot inflate) and the worst label's mean
    |change| of probability. Top-1 means nothing here: two sure labels tie, one damaged label hides."""
    a, b = r > 0.5, c > 0.5
    pos = int(a.sum()) + int(b.sum())
    per_label = np.abs(c - r).mean(0)
    worst = int(per_label.argmax())
    metrics = {"label_f1": 2 * float((a & b).sum()) / pos if pos else 1.0, "probability_error": float(per_label[worst])}
    info: dict[str, Any] = {"rows": int(r.shape[0]), "fp32_positive_labels": int(a.sum()), "quantized_positive_labels": int(b.sum()),
                            "decision_agreement": round(float(np.mean(a == b)), 6), "worst_label": worst,
                            "probability_error": "the worst label's mean |change| of probability"}
    if not a.any():
        info["note"] = "fp32 calls no label positive on the data: label F1 is weak evidence; add samples with labels to --eval"
    return _check(task, metrics, [("label_f1", ">=", tol.min_top1_agreement), ("probability_error", "<=", tol.max_probability_error)], info)


def _binned(task: TaskSpec, r: np.ndarray, c: np.ndarray, tol: Any) -> TaskCheck:
    """A histogram over ordered bins (pitch, age, angle): the candidate's peak within ``bins`` (1) bins
    of fp32's, on the rows where fp32's peak stands at least half as tall as its tallest on the data
    (elsewhere, unvoiced or unsure, the position is noise the app ignores); and the mean |change| of
    the peak's height, the confidence or voicing the app thresholds, on every row. Top-1 punishes a
    move to the neighbouring bin; label F1 at 0.5 flips with the bump's edges."""
    k = int(task.get("bins", 1))
    rp, rh = peaks(r)
    cp, ch = peaks(c)
    judged = rh >= 0.5 * rh.max() if rh.size and rh.max() > 0 else np.ones(len(rh), bool)
    moved = np.abs(cp - rp)
    metrics = {"peak_agreement": float(np.mean(moved[judged] <= k)) if judged.any() else 1.0,
               "peak_height_error": float(np.mean(np.abs(ch - rh))) if rh.size else 0.0}
    info: dict[str, Any] = {"rows": int(r.shape[0]), "rows_judged_by_position": int(judged.sum()), "bins": k,
                            "exact_peak_agreement": round(float(np.mean(moved[judged] == 0)) if judged.any() else 1.0, 6),
                            "largest_peak_move": int(moved[judged].max()) if judged.any() else 0,
                            "peak_agreement": f"the candidate's peak within {k} bin(s) of fp32's, on rows where fp32's "
                                              "peak is at least half its tallest",
                            "peak_height_error": "mean |change| of the peak's height (confidence / voicing)"}
    return _check(task, metrics, [("peak_agreement", ">=", tol.min_top1_agreement),
                                  ("peak_height_error", "<=", tol.max_probability_error)], info)


# -- detection -----------------------------------------------------------------------------------


def to_xyxy(b: np.ndarray, fmt: str) -> np.ndarray:
    b = np.asarray(b, np.float64)
    if fmt == "xyxy":
        return b
    if fmt == "xywh":
        return np.stack([b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]], 1)
    return np.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2], 1)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` [N, 4] with every box in ``b`` [M, 4] (xyxy)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float) -> np.ndarray:
    """Class-aware greedy NMS; indices kept, best score first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        if not rest.size:
            break
        ov = iou_matrix(boxes[i : i + 1], boxes[rest])[0]
        order = rest[(ov <= iou) | (classes[rest] != classes[i])]
    return np.asarray(keep, np.int64)


@dataclass(frozen=True)
class Detections:
    boxes: np.ndarray  # [n, 4] xyxy
    scores: np.ndarray
    classes: np.ndarray


def decode_head(head: np.ndarray, task: TaskSpec, *, threshold: float | None = None, max_det: int = 300) -> tuple[list[Detections], list[Detections]]:
    """Raw YOLO-style head of one sample ([B, K, N] or [B, N, K]) -> per batch element:
    detections above the score threshold after NMS, and the single best-scoring anchor."""
    layout = task.get("layout", "channels-first")
    obj = bool(task.get("objectness", layout == "anchors-first"))
    thr = float(task.get("score_threshold", 0.25) if threshold is None else threshold)
    fmt = task.get("box_format", "cxcywh")
    out, tops = [], []
    a = np.asarray(head, np.float64)
    for h in a:
        h = h.T if layout == "channels-first" else h  # [N, K]
        nc = task.get("num_classes", None)
        cls = h[:, 5 : 5 + nc if nc else None] if obj else h[:, 4 : 4 + nc if nc else None]
        if cls.shape[1] == 0:
            cls = np.ones((len(h), 1))
        best = cls.argmax(1)
        score = cls.max(1) * (h[:, 4] if obj else 1.0)
        dets, top = _select(to_xyxy(h[:, :4], fmt), score, best, thr, float(task.get("nms_iou", 0.45)), max_det,
                            agnostic=bool(task.get("agnostic_nms", False)))
        out.append(dets)
        tops.append(top)
    return out, tops


def _select(boxes: np.ndarray, score: np.ndarray, best: np.ndarray, thr: float, nms_iou: float, max_det: int,
            agnostic: bool = False) -> tuple[Detections, Detections]:
    """One image's anchors -> (detections above ``thr`` after class-aware NMS, or one over every class when the app
    runs that (``agnostic_nms``), the best-scoring anchor)."""
    t = int(score.argmax()) if len(score) else 0
    sel = np.nonzero(score > thr)[0]
    sel = sel[np.argsort(-score[sel], kind="stable")[:max_det]]
    k = nms(boxes[sel], score[sel], np.zeros_like(best[sel]) if agnostic else best[sel], nms_iou)
    return Detections(boxes[sel][k], score[sel][k], best[sel][k]), Detections(boxes[t : t + 1], score[t : t + 1], best[t : t + 1])


def decode_split(sample: dict[str, np.ndarray], task: TaskSpec, *, max_det: int = 300) -> tuple[list[Detections], list[Detections]]:
    """GFL/DFL-style split heads of one sample (``task.params["levels"]``: [scores, boxes, rows,
    cols, stride, bins] per level) -> per batch element: detections above the score threshold
    after class-aware NMS over every level, and the single best-scoring anchor. Box sides are the
    expectation of each side's softmax over its bins, times the stride, around the cell centre."""
    thr = float(task.get("score_threshold", 0.25))
    per_level = []
    for sc_name, box_name, rows, cols, stride, bins in task.params["levels"]:
        sc = np.asarray(sample[sc_name], np.float64)
        d = np.asarray(sample[box_name], np.float64)
        d = d.reshape(d.shape[0], d.shape[1], 4, int(bins))
        p = np.exp(d - d.max(-1, keepdims=True))
        dist = (p / p.sum(-1, keepdims=True) * np.arange(int(bins))).sum(-1) * float(stride)  # [B, N, 4]
        yy, xx = np.divmod(np.arange(int(rows) * int(cols))[: sc.shape[1]], int(cols))
        cx, cy = (xx + 0.5) * float(stride), (yy + 0.5) * float(stride)
        boxes = np.stack([cx - dist[..., 0], cy - dist[..., 1], cx + dist[..., 2], cy + dist[..., 3]], -1)
        per_level.append((sc, boxes))
    out, tops = [], []
    for b in range(per_level[0][0].shape[0]):
        cls = np.concatenate([sc[b] for sc, _ in per_level])
        boxes = np.concatenate([bx[b] for _, bx in per_level])
        dets, top = _select(boxes, cls.max(1), cls.argmax(1), thr, float(task.get("nms_iou", 0.45)), max_det,
                            agnostic=bool(task.get("agnostic_nms", False)))
        out.append(dets)
        tops.append(top)
    return out, tops


def match(ref: Detections, cand: Detections, iou: float) -> int:
    """True positives: quantized detections matching an fp32 one of the same class at IoU >= ``iou``."""
    if len(ref.boxes) == 0 or len(cand.boxes) == 0:
        return 0
    m = iou_matrix(cand.boxes, ref.boxes)
    m[cand.classes[:, None] != ref.classes[None, :]] = 0
    used = np.zeros(len(ref.boxes), bool)
    tp = 0
    for i in np.argsort(-cand.scores, kind="stable"):
        row = np.where(used, 0, m[i])
        j = int(row.argmax())
        if row[j] >= iou:
            used[j] = True
            tp += 1
    return tp


def _packed(task: TaskSpec, sample: dict[str, np.ndarray]) -> list[Detections]:
    """[B, N, 6] rows (x1, y1, x2, y2, score, class) of one sample -> per batch element, the rows
    scoring above the threshold (0.25 unless declared: such tables hold the top rows, unthresholded)."""
    t = np.asarray(sample[task.output], np.float64)
    t = t.reshape(-1, t.shape[-2], t.shape[-1])
    thr = float(task.get("score_threshold", 0.25))
    return [Detections(to_xyxy(b[b[:, 4] > thr, :4], task.get("box_format", "xyxy")), b[b[:, 4] > thr, 4],
                       b[b[:, 4] > thr, 5].astype(np.int64)) for b in t]


def _post_nms(task: TaskSpec, sample: dict[str, np.ndarray]) -> list[Detections]:
    """Boxes (+ scores, classes outputs) of one sample, per batch element."""
    if "packed" in task.params:
        return _packed(task, sample)
    boxes = np.asarray(sample[task.output], np.float64)
    batched = boxes.ndim == 3
    boxes = boxes if batched else boxes[None]
    n = boxes.shape[:2]

    def part(key: str, default: float) -> np.ndarray:
        name = task.params.get(key)
        v = np.asarray(sample[name]) if name and name in sample else np.full(n, default)
        v = v.reshape(n) if v.size == n[0] * n[1] else np.full(n, default)
        return v

    scores, classes = part("scores", 1.0), part("classes", 0)
    fmt = task.get("box_format", "xyxy")
    thr = float(task.get("score_threshold", 0.0))
    out = []
    for b in range(n[0]):
        keep = scores[b] > thr if "scores" in task.params else np.ones(n[1], bool)
        out.append(Detections(to_xyxy(boxes[b][keep].reshape(-1, 4), fmt), scores[b][keep].astype(np.float64), classes[b][keep].astype(np.int64)))
    return out


def detection(task: TaskSpec, ref: list[np.ndarray], cand: list[np.ndarray], tol: Any,
              ref_all: list[dict[str, np.ndarray]], cand_all: list[dict[str, np.ndarray]]) -> TaskCheck:
    iou = float(task.get("iou", 0.5))
    split = "levels" in task.params
    raw = split or (bool(ref) and np.asarray(ref[0]).ndim == 3 and np.asarray(ref[0]).shape[-1] != 4 and "packed" not in task.params)
    info: dict[str, Any] = {}
    tops_ok = tops_n = 0
    tp = n_ref = n_cand = 0
    for i in range(len(ref)):
        if raw:
            rd, rt = decode_split(ref_all[i], task) if split else decode_head(ref[i], task)
            cd, ct = decode_split(cand_all[i], task) if split else decode_head(cand[i], task)
            for a, b in zip(rt, ct):
                tops_n += 1
                tops_ok += match(a, b, iou)
        else:
            rd, cd = _post_nms(task, ref_all[i]), _post_nms(task, cand_all[i])
        for a, b in zip(rd, cd):
            tp += match(a, b, iou)
            n_ref += len(a.boxes)
            n_cand += len(b.boxes)
    metrics: dict[str, float] = {}
    if n_ref + n_cand:
        metrics["detection_f1"] = 2 * tp / (n_ref + n_cand)
    info.update({"fp32_detections": n_ref, "quantized_detections": n_cand, "matched": tp, "match_iou": iou})
    if raw:
        metrics["top_detection_agreement"] = tops_ok / max(tops_n, 1)
        info["score_threshold"] = float(task.get("score_threshold", 0.25))
        info.update({"levels": len(task.params["levels"])} if split else _slices(task, ref, cand))
    rules = [("detection_f1", ">=", tol.min_detection_f1)]
    if raw and not split and task.get("num_classes", None):
        extra = _extras(task, ref, cand, tol)
        metrics.update(extra[0])
        rules += extra[1]
        info.update(extra[2])
    if n_ref == 0 and raw:  # nothing above the threshold in fp32: the best anchor per image decides
        info["note"] = "fp32 found no detection above the score threshold: the best-scoring anchor per image decides"
        rules = [("top_detection_agreement", ">=", tol.min_detection_f1)]
    elif n_ref == 0:
        info["note"] = "fp32 found no detection on the verification data: nothing to compare"
    return _check(task, metrics, rules, info)


def _extras(task: TaskSpec, ref: list[np.ndarray], cand: list[np.ndarray], tol: Any) -> tuple[dict[str, float], list[tuple[str, str, float]], dict[str, Any]]:
    """The values after the class scores of a raw head (keypoints, mask coefficients, an angle),
    compared at the anchors fp32 detects (score above the threshold; the anchor grid is the same
    in both models) by the regression rules; background anchors, which the app drops, do not count."""
    ax = 1 if task.get("layout", "channels-first") == "channels-first" else 2
    obj = int(bool(task.get("objectness", ax == 2)))
    nc = int(task.get("num_classes", 0))
    thr = float(task.get("score_threshold", 0.25))
    rs, cs = [], []
    for r, c in zip(ref, cand):
        r, c = np.asarray(r, np.float64), np.asarray(c, np.float64)
        if r.shape != c.shape:
            continue
        r, c = np.moveaxis(r, ax, -1).reshape(-1, r.shape[ax]), np.moveaxis(c, ax, -1).reshape(-1, c.shape[ax])
        score = r[:, 4 + obj : 4 + obj + nc].max(1) * (r[:, 4] if obj else 1.0)
        keep = score > thr
        rs.append(r[keep, 4 + obj + nc :])
        cs.append(c[keep, 4 + obj + nc :])
    re_, ce = (np.concatenate(x) if x else np.zeros((0, 0)) for x in (rs, cs))
    if not re_.size:
        return {}, [], {"extras": "no fp32 detection above the threshold: the values after the class scores were not compared"}
    e = re_.shape[1]
    if e % 3 == 0 and re_[:, 2::3].min() >= -1e-4 and re_[:, 2::3].max() <= 1 + 1e-4 and np.abs(re_[:, 0::3]).max() > 1.5:
        # x, y, confidence per keypoint (YOLOv8-pose): each detection's points as the keypoints kind judges them
        m, rules, info = _keypoint_rules(TaskSpec(task.output, "keypoints", task.why, {"visibility": True}),
                                         [re_.reshape(-1, e // 3, 3)], [ce.reshape(-1, e // 3, 3)], tol)
        return m, rules, {"extras_at_detections": int(len(re_)), "extras": f"{e // 3} keypoints (x, y, confidence) per detection", **info}
    m, rules, info = _centred(re_.ravel(), ce.ravel(), tol)
    return ({f"extras_{k}": v for k, v in m.items()}, [(f"extras_{k}", op, lim) for k, op, lim in rules],
            {"extras_at_detections": int(sum(len(x) for x in rs)), "extras_cosine": info["cosine"]})


def _slices(task: TaskSpec, ref: list[np.ndarray], cand: list[np.ndarray]) -> dict[str, Any]:
    """Per-slice information for a concatenated head: boxes and scores separately."""
    if not ref:
        return {}
    ax = 1 if task.get("layout", "channels-first") == "channels-first" else 2
    r = np.concatenate([np.moveaxis(np.asarray(x, np.float64), ax, -1).reshape(-1, np.asarray(x).shape[ax]) for x in ref])
    c = np.concatenate([np.moveaxis(np.asarray(x, np.float64), ax, -1).reshape(-1, np.asarray(x).shape[ax]) for x in cand])
    nc = task.get("num_classes", None)
    if nc:  # the scores end where keypoints / mask coefficients / an angle begin (reported by _extras)
        end = 4 + int(bool(task.get("objectness", ax == 2))) + int(nc)
        r, c = r[:, :end], c[:, :end]
    return {
        "boxes_cosine": round(_cos(r[:, :4], c[:, :4]), 6),
        "scores_cosine": round(_cos(r[:, 4:], c[:, 4:]), 6),
        "scores_max_abs": round(float(np.abs(r[:, 4:] - c[:, 4:]).max()) if r.shape[1] > 4 else 0.0, 6),
        "best_score_fp32": round(float(r[:, 4:].max()) if r.shape[1] > 4 else 0.0, 6),
        "best_score_quantized": round(float(c[:, 4:].max()) if c.shape[1] > 4 else 0.0, 6),
    }


# -- maps --------------------------------------------------------------------------------------


def prob_map(task: TaskSpec, ref: list[np.ndarray], cand: list[np.ndarray], tol: Any) -> TaskCheck:
    thr = float(task.get("threshold", 0.5))
    inter = union = same = total = 0
    for r, c in zip(ref, cand):
        a, b = np.asarray(r) > thr, np.asarray(c) > thr
        inter += int((a & b).sum())
        union += int((a | b).sum())
        same += int((a == b).sum())
        total += a.size
    metrics = {"map_iou": inter / union if union else 1.0, "pixel_agreement": same / max(total, 1)}
    return _check(task, metrics, [("map_iou", ">=", tol.min_map_iou), ("pixel_agreement", ">=", tol.min_pixel_agreement)],
                  {"threshold": thr, "fp32_positive_pixels": int(sum(int((np.asarray(r) > thr).sum()) for r in ref))})


def segmentation(task: TaskSpec, ref: list[np.ndarray], cand: list[np.ndarray], tol: Any) -> TaskCheck:
    a = np.concatenate([np.asarray(r).argmax(1).ravel() for r in ref])
    b = np.concatenate([np.asarray(c).argmax(1).ravel() for c in cand])
    return _check(task, *_label_maps(a, b, tol)[:2])


def _label_maps(a: np.ndarray, b: np.ndarray, tol: Any) -> tuple[dict[str, float], list[tuple[str, str, float]], dict[int, float]]:
    """Two flat class-id maps: (metrics, rules, IoU per fp32 class): mean IoU over fp32's classes and pixel agreement."""
    ious = {int(k): float(np.sum((a == k) & (b == k)) / np.sum((a == k) | (b == k))) for k in np.unique(a)}
    metrics = {"map_iou": float(np.mean(list(ious.values()))) if ious else 1.0, "pixel_agreement": float(np.mean(a == b)) if a.size else 1.0}
    return metrics, [("map_iou", ">=", tol.min_map_iou), ("pixel_agreement", ">=", tol.min_pixel_agreement)], ious


# -- sequences, embeddings, LM -------------------------------------------------------------------


def greedy_decode(steps: np.ndarray, blank: int) -> tuple[int, ...]:
    """CTC greedy decode of one [T, C] score matrix: argmax, merge repeats, drop blanks."""
    best = np.asarray(steps).argmax(-1)
    out, prev = [], None
    for t in best.tolist():
        if t != prev and t != blank:
            out.append(t)
        prev = t
    return tuple(out)


def sequence(task: TaskSpec, ref: list[np.ndarray], cand: list[np.ndarray], tol: Any) -> TaskCheck:
    blank = int(task.get("blank", 0))
    tbc = task.get("layout", "BTC") == "TBC"
    same = n = 0
    step_same = steps = 0
    for r, c in zip(ref, cand):
        r, c = np.asarray(r), np.asarray(c)
        if tbc:
            r, c = np.moveaxis(r, 1, 0), np.moveaxis(c, 1, 0)
        r, c = r.reshape(-1, r.shape[-2], r.shape[-1]), c.reshape(-1, c.shape[-2], c.shape[-1])
        for x, y in zip(r, c):
            n += 1
            same += greedy_decode(x, blank) == greedy_decode(y, blank)
            step_same += int((x.argmax(-1) == y.argmax(-1)).sum())
            steps += x.shape[0]
    return _check(task, {"sequence_match": same / max(n, 1)}, [("sequence_match", ">=", tol.min_sequence_match)],
                  {"sequences": n, "blank": blank, "step_agreement": round(step_same / max(steps, 1), 6)})


def embedding(task: TaskSpec, ref: list[np.ndarray], cand: list[np.ndarray], tol: Any) -> TaskCheck:
    r, c = _rows(ref), _rows(cand)
    nr, nc = np.linalg.norm(r, axis=1), np.linalg.norm(c, axis=1)
    cos = np.where((nr > 0) & (nc > 0), (r * c).sum(1) / np.maximum(nr * nc, 1e-300), (nr == nc).astype(np.float64))
    return _check(task, {"mean_cosine": float(cos.mean()) if cos.size else 1.0},
                  [("mean_cosine", ">=", tol.min_embedding_cosine)], {"min_cosine": round(float(cos.min()), 6) if cos.size else 1.0, "vectors": int(cos.size)})


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def lm_logits(task: TaskSpec, ref: list[np.ndarray], cand: list[np.ndarray], tol: Any) -> TaskCheck:
    kl = same = n = 0.0
    for r, c in zip(ref, cand):
        lr, lc = _log_softmax(_rows([r])), _log_softmax(_rows([c]))
        kl += float(np.maximum((np.exp(lr) * (lr - lc)).sum(1), 0).sum())
        same += float((lr.argmax(1) == lc.argmax(1)).sum())
        n += lr.shape[0]
    return _check(task, {"mean_kl": kl / max(n, 1), "same_top_token": same / max(n, 1)},
                  [("mean_kl", "<=", tol.max_lm_kl), ("same_top_token", ">=", tol.min_lm_top1)], {"positions": int(n)})


def regression(task: TaskSpec, ref: list[np.ndarray], cand: list[np.ndarray], tol: Any) -> TaskCheck:
    if any(np.asarray(r).shape != np.asarray(c).shape for r, c in zip(ref, cand)):
        return _check(task, {"cosine": 0.0}, [("cosine", ">=", tol.min_cosine)], {"note": "shapes differ between fp32 and quantized"})
    r = np.concatenate([np.ravel(x) for x in ref]).astype(np.float64) if ref else np.zeros(0)
    c = np.concatenate([np.ravel(x) for x in cand]).astype(np.float64) if cand else np.zeros(0)
    return _check(task, *_centred(r, c, tol))


def _centred(r: np.ndarray, c: np.ndarray, tol: Any) -> tuple[dict[str, float], list[tuple[str, str, float]], dict[str, Any]]:
    """Cosine after subtracting fp32's mean from both, and the RMS error relative to fp32's spread
    (metrics, rules, info): an offset the values share (a depth map around 5 m, an image around 0.5)
    no longer makes any output look alike, and a shift or a gain of the candidate counts against it.
    Raw cosine stays as information.
    fp32 constant on the data (no spread to compare): the largest change relative to its value."""
    fin = np.isfinite(r) & np.isfinite(c)
    raw = _cos(r, c)
    rf, cf = r[fin], c[fin]
    mean = float(rf.mean()) if rf.size else 0.0
    spread = float(np.abs(rf - mean).max()) if rf.size else 0.0
    info: dict[str, Any] = {"cosine": round(raw, 6), "fp32_mean": round(mean, 6), "fp32_spread": round(spread, 6)}
    if spread <= 1e-6 * max(abs(mean), 1e-30):
        info["note"] = "fp32 is constant on the data: judged by the largest change relative to its value"
        err = float(np.abs(cf - rf).max() / max(abs(mean), 1e-30)) if rf.size else 0.0
        return {"relative_change": err}, [("relative_change", "<=", 1 - tol.min_cosine)], info
    # cosine cannot see a gain (0.8 x fp32 scores 1): the error relative to fp32's spread can. For noise
    # orthogonal to the signal, cosine c and relative error e meet at 1 - c = e^2 / 2: the same tolerance
    err = float(np.linalg.norm(cf - rf) / max(np.linalg.norm(rf - mean), 1e-300))
    return ({"centred_cosine": _cos(rf - mean, cf - mean), "relative_rms_error": err},
            [("centred_cosine", ">=", tol.min_cosine), ("relative_rms_error", "<=", math.sqrt(2 * (1 - tol.min_cosine)))], info)


def state(task: TaskSpec, ref: list[np.ndarray], cand: list[np.ndarray], tol: Any) -> TaskCheck:
    """A recurrent state fed back as an input (edgeq.checks.recurrent), over the rolled-out calls: cosine and
    max error over every call and at the last one, as information (the task outputs decide); the cosine
    decides only when every output of the model is a state (``params["judged"]``)."""
    info: dict[str, Any] = {"feeds": task.params.get("feeds"), "steps": len(ref)}
    cos = 0.0
    if ref and all(np.asarray(r).shape == np.asarray(c).shape for r, c in zip(ref, cand)):
        diffs = [np.abs(np.asarray(r, np.float64) - np.asarray(c, np.float64)) for r, c in zip(ref, cand)]
        cos = _cos(np.concatenate([np.ravel(r) for r in ref]), np.concatenate([np.ravel(c) for c in cand]))
        info.update({"cosine": round(cos, 6), "last_cosine": round(_cos(ref[-1], cand[-1]), 6),
                     "max_abs": round(float(max(d.max(initial=0.0) for d in diffs)), 6), "last_max_abs": round(float(diffs[-1].max(initial=0.0)), 6)})
    else:
        info["note"] = "shapes differ between fp32 and quantized" if ref else "no calls"
    if task.params.get("judged"):
        return _check(task, {"cosine": cos}, [("cosine", ">=", tol.min_cosine)], info)
    return TaskCheck(task.output, task.kind, task.why, {}, {}, True, (), info)


def index(task: TaskSpec, ref: list[np.ndarray], cand: list[np.ndarray], tol: Any) -> TaskCheck:
    if task.get("class_map", False) and all(np.asarray(x).shape == np.asarray(y).shape for x, y in zip(ref, cand)):
        return _class_map(task, ref, cand, tol)
    same = total = 0
    for r, c in zip(ref, cand):
        r, c = np.asarray(r), np.asarray(c)
        total += max(r.size, 1)
        same += int((r == c).sum()) if r.shape == c.shape else 0
    return _check(task, {"exact_match": same / max(total, 1)}, [("exact_match", ">=", tol.min_top1_agreement)])


def keypoints(task: TaskSpec, ref: list[np.ndarray], cand: list[np.ndarray], tol: Any) -> TaskCheck:
    return _check(task, *_keypoint_rules(task, ref, cand, tol))


def _keypoint_rules(task: TaskSpec, ref: list[np.ndarray], cand: list[np.ndarray],
                    tol: Any) -> tuple[dict[str, float], list[tuple[str, str, float]], dict[str, Any]]:
    """Points in pixels: the share of fp32's points (its visible ones, where a visibility column
    says so) that the candidate puts within ``radius`` (default 0.2, PCK@0.2) of the extent of the sample's
    points, and the share of visibility decisions (at 0.5) kept. A whole-output cosine cannot see
    one joint moved by a tenth of the body: coordinates in the hundreds swamp it."""
    radius = float(task.get("radius", 0.2))
    vis = bool(task.get("visibility", False))
    if task.get("heatmap", False):
        ref, cand = zip(*(heatmap_peaks(r, c) for r, c in zip(ref, cand))) if ref else ((), ())
        vis = True
    near = counted = vis_same = vis_n = 0
    for r, c in zip(ref, cand):
        r, c = np.asarray(r, np.float64), np.asarray(c, np.float64)
        if r.shape != c.shape:
            counted += max(r.shape[-2] if r.ndim >= 2 else 1, 1)
            continue
        d = r.shape[-1]
        for pr, pc in zip(r.reshape(-1, r.shape[-2], d), c.reshape(-1, c.shape[-2], d)):
            shown = pr[:, 2] > 0.5 if vis else np.ones(len(pr), bool)
            xy = pr[shown, : 2 if vis else d]
            if not len(xy):
                xy = pr[:, : 2 if vis else d]
            extent = float(np.linalg.norm(xy.max(0) - xy.min(0))) if len(xy) > 1 else 0.0
            extent = extent if extent > 0 else float(np.abs(pr[:, :2]).max())
            dist = np.linalg.norm(pc[:, : 2 if vis else d] - pr[:, : 2 if vis else d], axis=1)
            ok = np.isfinite(dist) & (dist <= radius * max(extent, 1e-12))
            near += int((ok & shown).sum())
            counted += int(shown.sum())
            if vis:
                vis_same += int(((pc[:, 2] > 0.5) == shown).sum())
                vis_n += len(pr)
    metrics = {"keypoint_agreement": near / counted if counted else 1.0}
    rules = [("keypoint_agreement", ">=", tol.min_top1_agreement)]
    if vis:
        metrics["visibility_agreement"] = vis_same / max(vis_n, 1)
        rules.append(("visibility_agreement", ">=", tol.min_top1_agreement))
    return metrics, rules, {"points": counted, "radius": f"{radius:g} x the extent of fp32's points per sample"}


def heatmap_peaks(ref: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[B, K, H, W] heatmaps -> [B, K, 3] points (x, y, peak): each channel's argmax pixel, its height
    over fp32's floor relative to fp32's tallest peak in the sample, so a joint is 'visible' (> 0.5) where
    fp32's peak stands at least half as tall as the sample's tallest, and the candidate's peaks are
    measured on the same scale."""
    r, c = np.asarray(ref, np.float64), np.asarray(cand, np.float64)
    if r.shape != c.shape or r.ndim != 4:
        return r, c  # not heatmaps of one shape: keypoints counts a shape mismatch as every point lost
    out = []
    for x in (r, c):
        flat = x.reshape(*x.shape[:2], -1)
        arg = flat.argmax(-1)
        out.append(np.stack([arg % x.shape[-1], arg // x.shape[-1], flat.max(-1)], -1).astype(np.float64))
    floor = r.reshape(r.shape[0], -1).min(-1)[:, None]
    scale = np.maximum(out[0][..., 2].max(-1, keepdims=True) - floor, 1e-12)
    for p in out:
        p[..., 2] = (p[..., 2] - floor) / scale
    return out[0], out[1]


def _class_map(task: TaskSpec, ref: list[np.ndarray], cand: list[np.ndarray], tol: Any) -> TaskCheck:
    """Integer class-id maps (a segmenter's argmax): mean IoU over fp32's classes and pixel
    agreement, as for score maps; a small class lost entirely fails mean IoU although almost every
    pixel still agrees."""
    a = np.concatenate([np.asarray(x).ravel() for x in ref]) if ref else np.zeros(0, np.int64)
    b = np.concatenate([np.asarray(x).ravel() for x in cand]) if cand else np.zeros(0, np.int64)
    metrics, rules, ious = _label_maps(a, b, tol)
    worst = min(ious, key=ious.get) if ious else None
    return _check(task, metrics, rules,
                  {"classes": len(ious), **({"worst_class": worst, "worst_class_iou": round(ious[worst], 6)} if worst is not None else {})})


def score(task: TaskSpec, ref: list[np.ndarray], cand: list[np.ndarray], tol: Any,
          ref_all: list[dict[str, np.ndarray]] | None = None, cand_all: list[dict[str, np.ndarray]] | None = None) -> TaskCheck | None:
    """The task check of one output; None for a part checked with another output (detection scores)."""
    if "part_of" in task.params:
        return None
    if task.kind == "detection":
        return _with_new_non_finite(detection(task, ref, cand, tol, ref_all or [], cand_all or []), ref, cand)
    fn = {"classification": classification, "prob-map": prob_map, "segmentation": segmentation, "sequence": sequence,
          "embedding": embedding, "lm-logits": lm_logits, "regression": regression, "index": index, "state": state, "keypoints": keypoints}[task.kind]
    c = fn(task, ref, cand, tol)
    if task.kind == "state" and not task.params.get("judged"):  # information: the outputs it feeds decide
        return c
    return _with_new_non_finite(c, ref, cand)


def _new_non_finite(ref: list[np.ndarray], cand: list[np.ndarray]) -> tuple[int, int]:
    """(values NaN/Inf in ``cand`` where fp32's are finite, values compared)."""
    bad = total = 0
    for r, c in zip(ref, cand):
        r, c = np.asarray(r), np.asarray(c)
        if r.shape != c.shape or c.dtype.kind not in "fc":
            continue
        fin_r = np.isfinite(r) if r.dtype.kind in "fc" else np.ones(r.shape, bool)
        bad += int((fin_r & ~np.isfinite(c)).sum())
        total += r.size
    return bad, total


def _with_new_non_finite(c: TaskCheck, ref: list[np.ndarray], cand: list[np.ndarray]) -> TaskCheck:
    """A candidate that writes NaN/Inf where fp32 is finite fails, whatever the metric made of the finite rest (fp16
    overflowing a power spectrum: every value inf, and cosine over the finite values, none, read 1.0). Its deciding
    (higher-is-better) metrics read 0, so --max-drop never takes it for a good candidate."""
    bad, total = _new_non_finite(ref, cand)
    if not bad:
        return c
    worst = {m: 0.0 for m, lim in c.limits.items() if m in c.metrics and lim.startswith(">=")}
    why = f"output '{c.output}' ({c.kind}): {bad} of {total} values are NaN/Inf where fp32's are finite"
    return TaskCheck(c.output, c.kind, c.why, {**c.metrics, **worst, "non_finite_share": round(bad / max(total, 1), 6)},
                     c.limits, False, (why,), {**c.info, "non_finite": bad})


class _NoLimits:
    """Tolerances for computing metrics only (``primary`` reads values, not the pass/fail)."""

    def __getattr__(self, name: str) -> float:
        return 0.0


def primary(task: TaskSpec, ref: list[np.ndarray], cand: list[np.ndarray],
            ref_all: list[dict[str, np.ndarray]] | None = None, cand_all: list[dict[str, np.ndarray]] | None = None) -> tuple[str, float]:
    """The one number that decides ``task`` (higher is better, fp32 against itself scores 1):
    what --max-drop and the gate bound. Detection: F1 of the detections, or top-detection
    agreement where fp32 detects nothing above the threshold; post-NMS boxes read their scores
    and classes from ``ref_all``/``cand_all`` (every output per sample, by name)."""
    c = score(task, ref, cand, _NoLimits(), ref_all, cand_all)
    if c is None:
        return "agreement", 1.0
    if task.kind == "lm-logits":
        return "same_top_token", c.metrics["same_top_token"]
    for m in c.limits:
        if m in c.metrics and not (m == "detection_f1" and c.info.get("fp32_detections") == 0):
            return m, c.metrics[m]
    return next(iter(c.metrics.items()), ("agreement", 1.0))


def task_note(c: dict[str, Any]) -> str:
    """One line for a task check: the kind inferred, why, and its caveat when it has one."""
    note = (c.get("info") or {}).get("note")
    return f"output '{c['output']}' checked as {c['kind']}: {c['why']}" + (f"; {note}" if note else "")
