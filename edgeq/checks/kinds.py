"""Which task each model output serves, inferred or declared.

Inference looks at, in this order: the app TOML's ``[outputs.NAME] task = ...`` (always wins),
the model's ONNX metadata (e.g. ``task = detect`` written by detector exporters), the output's
name, its shape and its values on the fp32 reference outputs of the verification data.
Every guess carries the reason it was made (``TaskSpec.why``), which the report prints.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .binned import MIN_BUMP_SHARE, SURE_BUMP_SHARE, bump_share
from .denseheads import offsets_not_boxes, regression_maps

KINDS = (
    "classification",  # [B, C] logits or probabilities: top-1 / top-5 agreement
    "detection",  # raw YOLO-style heads [B, 4+C, N] / [B, N, 5+C], or post-NMS boxes (+ scores, classes)
    "prob-map",  # [B, 1, H, W] / [B, H, W] per-pixel probability (or logit): map IoU at the threshold
    "segmentation",  # [B, C, H, W] per-pixel class scores: per-pixel argmax agreement, mean IoU
    "sequence",  # [B, T, C] per-step class scores (CTC / greedy): decoded-sequence exact match
    "embedding",  # [B, D] / [B, T, D] vectors: per-vector cosine
    "lm-logits",  # [B, T, V] next-token logits from token ids: KL and same top token
    "regression",  # anything else: cosine over the whole output
    "index",  # integer outputs (argmax, class ids): exact match
    "state",  # a recurrent state fed back as an input (checks/recurrent.py): information over the rolled-out calls
    "keypoints",  # [B, K, 2|3] points in pixels (x, y and a visibility or depth) from an image: share within a radius of fp32's
)
BOX_FORMATS = ("cxcywh", "xyxy", "xywh")
DET_LAYOUTS = ("channels-first", "anchors-first")
SEQ_LAYOUTS = ("BTC", "TBC")

# parameter name -> (kinds it applies to, checker)
_PARAMS: dict[str, tuple[tuple[str, ...], Any]] = {
    "box_format": (("detection",), lambda v: v in BOX_FORMATS),
    "layout": (("detection", "sequence"), lambda v: v in DET_LAYOUTS + SEQ_LAYOUTS),
    "objectness": (("detection",), lambda v: isinstance(v, bool)),
    "score_threshold": (("detection",), lambda v: _num(v) and 0 <= v <= 1),
    "iou": (("detection",), lambda v: _num(v) and 0 < v <= 1),
    "nms_iou": (("detection",), lambda v: _num(v) and 0 < v <= 1),
    "agnostic_nms": (("detection",), lambda v: isinstance(v, bool)),  # the app's NMS ignores classes (nudenet's)
    "scores": (("detection",), lambda v: isinstance(v, str) and 0 < len(v) <= 256),
    "classes": (("detection",), lambda v: isinstance(v, str) and 0 < len(v) <= 256),
    "threshold": (("prob-map",), lambda v: _num(v)),
    "blank": (("sequence",), lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    "feeds": (("state",), lambda v: isinstance(v, str) and 0 < len(v) <= 256),
    "multilabel": (("classification",), lambda v: isinstance(v, bool)),
    "binned": (("classification",), lambda v: isinstance(v, bool)),  # ordinal bins (pitch, age): the peak within `bins`
    "bins": (("classification",), lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 1024),
    "class_map": (("index",), lambda v: isinstance(v, bool)),
    "packed": (("detection",), lambda v: v in PACKED_LAYOUTS),
    "radius": (("keypoints",), lambda v: _num(v) and 0 < v <= 1),
    "visibility": (("keypoints",), lambda v: isinstance(v, bool)),
    "num_classes": (("detection",), lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1),
    "heatmap": (("keypoints",), lambda v: isinstance(v, bool)),  # [B, K, H, W] heatmaps: each channel's peak is a point
}
PACKED_LAYOUTS = ("xyxy-score-class",)
TASK_KEYS = frozenset({"task", *_PARAMS})


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class TaskSpec:
    """One output's task: its kind, the parameters its metric uses, and why edgeq thinks so."""

    output: str
    kind: str
    why: str
    params: dict[str, Any] = field(default_factory=dict)
    declared: bool = False

    def get(self, key: str, default: Any) -> Any:
        return self.params.get(key, default)

    def to_dict(self) -> dict[str, Any]:
        return {"output": self.output, "kind": self.kind, "why": self.why, "params": dict(self.params), "declared": self.declared}


def parse_override(where: str, d: dict[str, Any]) -> dict[str, Any]:
    """Check the task keys of one ``[outputs.NAME]`` table; returns {"task": kind, **params} (or {})."""
    from ..errors import BundleError

    def bad(what: str) -> BundleError:
        return BundleError(f"{where}: {what}", "see docs/task-checks.md for the task kinds and their parameters")

    keys = {k: v for k, v in d.items() if k in TASK_KEYS}
    if not keys:
        return {}
    kind = keys.get("task")
    if kind is None:
        raise bad(f"{', '.join(sorted(keys))} given without 'task'")
    if kind not in KINDS:
        raise bad(f"task must be one of {', '.join(KINDS)}")
    out: dict[str, Any] = {"task": kind}
    for k, v in keys.items():
        if k == "task":
            continue
        kinds, ok = _PARAMS[k]
        if kind not in kinds:
            raise bad(f"'{k}' does not apply to task '{kind}' (it applies to {', '.join(kinds)})")
        if k == "layout" and v not in (DET_LAYOUTS if kind == "detection" else SEQ_LAYOUTS):
            raise bad(f"layout for {kind} must be one of {', '.join(DET_LAYOUTS if kind == 'detection' else SEQ_LAYOUTS)}")
        if not ok(v):
            raise bad(f"invalid value for '{k}'")
        out[k] = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("blank", "num_classes", "bins") else v
    return out


@dataclass(frozen=True)
class Context:
    """What inference may look at besides the output itself."""

    token_inputs: bool = False  # an integer input of rank 2 (token ids)
    image_inputs: tuple[tuple[int, ...], ...] = ()  # per-sample shapes of rank-4 float inputs
    metadata: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    sequence_inputs: tuple[tuple[int, ...], ...] = ()  # per-sample shapes of rank-2/3 float inputs (audio, features)


def _stats(samples: list[np.ndarray]) -> tuple[float, float]:
    lo, hi = math.inf, -math.inf
    for a in samples:
        a = np.asarray(a)
        if a.size and a.dtype.kind == "f":
            fin = a[np.isfinite(a)]
            if fin.size:
                lo, hi = min(lo, float(fin.min())), max(hi, float(fin.max()))
    return lo, hi


def _in01(samples: list[np.ndarray]) -> bool:
    lo, hi = _stats(samples)
    return lo >= -1e-4 and hi <= 1 + 1e-4


def _both_sides(samples: list[np.ndarray], threshold: float) -> bool:
    """Some finite values above ``threshold`` and some at or below it: a map of logits thresholded there has
    foreground and background. A log-mel spectrogram in dB (all positive) or a depth map has neither."""
    above = below = False
    for a in samples:
        a = np.asarray(a)
        if a.size and a.dtype.kind == "f":
            fin = a[np.isfinite(a)]
            above = above or bool((fin > threshold).any())
            below = below or bool((fin <= threshold).any())
    return above and below


def _rows_are_distributions(a: np.ndarray, axis: int = -1) -> str | None:
    """'prob' if slices along ``axis`` sum to 1, 'logprob' if their exp sums to 1, else None."""
    a = np.asarray(a, np.float64)
    if a.size == 0 or a.shape[axis] < 2:
        return None
    if a.min() >= -1e-4 and np.allclose(a.sum(axis=axis), 1.0, atol=1e-2):
        return "prob"
    if a.max() <= 1e-4 and np.allclose(np.exp(a).sum(axis=axis), 1.0, atol=1e-2):
        return "logprob"
    return None


_NAME_HINTS = (
    ("embedding", ("embed", "pooler", "pooled", "sentence", "feature", "vector", "last_hidden", "hidden_state", "fingerprint",
                   "descriptor", "latent", "feat")),
    ("detection", ("box", "bbox", "detection")),
    ("lm-logits", ("lm_logits",)),
)
_META_TASK = {"detect": "detection", "segment": "segmentation", "classify": "classification", "obb": "detection",
              "pose": "detection", "detection": "detection", "classification": "classification"}


def _ctc_structure(samples: list[np.ndarray], dist: str | None = None) -> dict[str, Any] | None:
    """{"layout", "blank"} when a float rank-3 output looks like raw CTC logits: per-step scores
    over C >= 3 classes, peaked (mean softmax top probability >= 0.5), one class at either end
    (0 or C-1, the blank) winning at least 30 % of the steps and at least two other classes
    winning elsewhere. [T, 1, C] (one sequence, time first) is read as TBC. ``dist`` ("prob" /
    "logprob"): the steps are already (log-)probabilities.
    Plain regression (no peaked steps) and hidden states with one outlier channel (the same
    channel wins everywhere) do not match."""
    a = np.asarray(samples[0])
    if a.ndim != 3 or a.dtype.kind != "f" or a.shape[-1] < 3:
        return None
    layout = "TBC" if a.shape[1] == 1 and a.shape[0] > 1 else "BTC"
    if (a.shape[0] if layout == "TBC" else a.shape[1]) < 4:
        return None
    c = a.shape[-1]
    rows = [np.asarray(x, np.float64).reshape(-1, c) for x in samples[:16] if np.asarray(x).ndim == 3 and np.asarray(x).shape[-1] == c]
    x = np.concatenate(rows) if rows else np.zeros((0, c))
    if x.shape[0] < 8 or not np.isfinite(x).all():
        return None
    if dist == "prob":
        p = x
    else:
        p = np.exp(x - x.max(1, keepdims=True)) if dist is None else np.exp(x)
        p /= p.sum(1, keepdims=True)
    best = p.argmax(1)
    counts = np.bincount(best, minlength=c)
    blank = int(counts.argmax())
    if blank not in (0, c - 1) or counts[blank] < 0.3 * len(best) or int((counts > 0).sum()) < 3 or float(p.max(1).mean()) < 0.5:
        return None
    return {"layout": layout, "blank": blank}


# present.N.key / present_key_values.N.value / past_key_values.N.key ...: a KV-cache decoder's state
_KV_STATE = re.compile(r"(^|[._/])(present|past)[._a-z]*[._/]?\d*[._/](key|value)s?$", re.IGNORECASE)


def is_kv_state(name: str) -> bool:
    """``name`` is a KV-cache decoder's past/present key or value (present.N.key, past_key_values.N.value, ...)"""
    return bool(_KV_STATE.search(name))


def _name_kind(name: str) -> str | None:
    low = name.lower()
    for kind, words in _NAME_HINTS:
        if any(w in low for w in words):
            return kind
    return None


def _detection_layout(samples: list[np.ndarray]) -> tuple[str, bool] | None:
    """(layout, objectness) when a float [B, K, N] output looks like a raw YOLO-style head:
    4 box values in pixels (some > 1.5) and K-4 (or K-5) scores in [0, 1] per anchor."""
    a = np.asarray(samples[0])
    if a.ndim != 3 or a.dtype.kind != "f":
        return None
    k1, k2 = a.shape[1], a.shape[2]
    for layout, small, big in (("channels-first", k1, k2), ("anchors-first", k2, k1)):
        if not (5 <= small <= 1024 and big >= max(32, 2 * small)):
            continue
        heads = [np.moveaxis(np.asarray(s, np.float64), 1 if layout == "channels-first" else 2, -1) for s in samples[:16]]
        boxes = np.concatenate([h[..., :4].ravel() for h in heads])
        scores = [h[..., 4:] for h in heads]
        if not np.isfinite(boxes).all() or np.abs(boxes).max() <= 1.5:
            continue
        if not _in01(scores):
            continue
        return layout, layout == "anchors-first"  # [B, N, 5+C] carries objectness (YOLOv5); [B, 4+C, N] does not (YOLOv8)
    return None


def _detection_extras(samples: list[np.ndarray]) -> tuple[str, bool, int] | None:
    """(layout, objectness, classes) when a float [B, K, N] head holds 4 box values in pixels, then
    C channels of scores in [0, 1], then channels that are not scores (YOLOv8-pose keypoints,
    -seg mask coefficients, -obb angle): the scores are the longest run of [0, 1] channels."""
    a = np.asarray(samples[0])
    if a.ndim != 3 or a.dtype.kind != "f":
        return None
    for layout, small, big in (("channels-first", a.shape[1], a.shape[2]), ("anchors-first", a.shape[2], a.shape[1])):
        if not (6 <= small <= 1024 and big >= max(32, 2 * small)):
            continue
        heads = np.concatenate([np.moveaxis(np.asarray(x, np.float64), 1 if layout == "channels-first" else 2, -1).reshape(-1, small)
                                for x in samples[:16] if np.asarray(x).shape == a.shape])
        if not np.isfinite(heads).all() or np.abs(heads[:, :4]).max() <= 1.5:
            continue
        unit = (heads.min(0) >= -1e-4) & (heads.max(0) <= 1 + 1e-4)
        obj = layout == "anchors-first"
        first = 5 if obj else 4
        if obj and not unit[4]:
            continue
        n = 0
        while first + n < small and unit[first + n]:
            n += 1
        if n >= 1 and first + n < small:
            return layout, obj, n
    return None


def infer_one(name: str, samples: list[np.ndarray], ctx: Context, override: dict[str, Any] | None = None) -> TaskSpec:
    """The task of output ``name`` from its per-sample fp32 outputs ``samples``."""
    params = {k: v for k, v in (override or {}).items() if k != "task"}
    if override and override.get("task"):
        return TaskSpec(name, override["task"], "declared in the app TOML ([outputs] task)", params, True)
    a = np.asarray(samples[0]) if samples else np.zeros((0,))
    shape = a.shape
    if a.dtype.kind in "iub" and a.dtype.kind != "b" and ctx.image_inputs and a.ndim in (3, 4) and shape[-1] >= 4 and shape[-2] >= 4 \
            and (a.ndim == 3 or shape[1] == 1):
        return TaskSpec(name, "index", f"integer map {list(shape)} from an image: a class id per pixel (mean IoU over fp32's classes, "
                                       "pixel agreement)", {"class_map": True})
    if a.dtype.kind in "iub":
        return TaskSpec(name, "index", f"integer output {list(shape)}: exact match")
    if a.dtype.kind in "US":  # a classic model's string class labels (skl2onnx; edgeq.core.values made them unicode)
        return TaskSpec(name, "index", f"string labels {list(shape)}: exact match")
    if a.dtype.kind == "f" and a.size and len(samples) > 1 and _constant(samples):
        return TaskSpec(name, "regression", f"{list(shape)} holds one value on every sample: nothing for a task metric to "
                                            "compare, judged by its change relative to that value")
    meta = _META_TASK.get(ctx.metadata.get("task", "").lower()) if ctx.metadata else None
    hint = _name_kind(name)
    if a.ndim == 4 and ctx.token_inputs and _KV_STATE.search(name):
        return TaskSpec(name, "regression", f"{list(shape)} from token ids, named like a decoder's key/value cache: "
                        "state, not a prediction (cosine; the logits carry the task)")
    if a.ndim == 3 and a.dtype.kind == "f" and not ctx.token_inputs and _packed_detections(samples):
        return TaskSpec(name, "detection", f"{list(shape)}: one detection per row after NMS (x1, y1, x2, y2, score in [0, 1], "
                                           "integer class; zero-score rows are padding)", {"packed": "xyxy-score-class", "box_format": "xyxy"})
    if a.ndim == 3 and a.dtype.kind == "f" and ctx.image_inputs and not ctx.token_inputs and (kp := _keypoints(samples)) is not None:
        return TaskSpec(name, "keypoints", f"{list(shape)} from an image: {shape[1]} points in pixels"
                        + (" with a visibility in [0, 1]" if kp else "") + " (share within a radius of fp32's)", {"visibility": kp})
    if a.ndim == 3 and a.dtype.kind == "f" and not ctx.token_inputs and meta is None and hint is None and _aligned_map(shape, ctx):
        lo, hi = _stats(samples)
        if _in01(samples) and hi - lo > 0.5:
            return TaskSpec(name, "prob-map", f"{list(shape)} map on the image's grid with values in [0, 1]: thresholded at 0.5", {"threshold": 0.5})
        if _logit_map(samples):
            return TaskSpec(name, "prob-map", f"{list(shape)} map on the image's grid (logits): thresholded at 0", {"threshold": 0.0})
        return TaskSpec(name, "regression", f"{list(shape)} map on the image's grid (depth, density, a one-channel image; not "
                                            "per-step class scores): compared by cosine around fp32's mean")
    if a.ndim == 3:
        det = _detection_layout(samples)
        if det is not None and (meta in (None, "detection")):
            layout, obj = det
            why = f"{list(shape)}: 4 box values in pixels and {'objectness + ' if obj else ''}scores in [0, 1] per anchor ({layout})"
            if meta == "detection":
                why += "; ONNX metadata task=" + ctx.metadata.get("task", "")
            return TaskSpec(name, "detection", why, {"layout": layout, "objectness": obj})
        ext = _detection_extras(samples) if meta in (None, "detection", "segmentation") and not ctx.token_inputs else None
        if ext is not None:  # a segmenting detector's head is still a detection head
            layout, obj, nc = ext
            k = shape[1] if layout == "channels-first" else shape[2]
            why = (f"{list(shape)}: 4 box values in pixels, {'objectness, ' if obj else ''}{nc} class score(s) in [0, 1] and "
                   f"{k - 4 - obj - nc} other values per anchor (keypoints, mask coefficients or an angle; {layout}): detections "
                   "matched to fp32's, the other values compared at fp32's detections")
            return TaskSpec(name, "detection", why, {"layout": layout, "objectness": obj, "num_classes": nc})
        if ctx.token_inputs:
            if hint == "embedding":
                return TaskSpec(name, "embedding", f"{list(shape)} from token ids, named like hidden states / embeddings")
            if shape[-1] >= 32:
                return TaskSpec(name, "lm-logits", f"{list(shape)} from token ids: [batch, positions, vocabulary] logits")
        dist = _rows_are_distributions(a)
        if dist is not None and not ctx.token_inputs:
            ctc = _ctc_structure(samples, dist) or ({"layout": "TBC"} if shape[1] == 1 and shape[0] > 1 else {})
            return TaskSpec(name, "sequence", f"{list(shape)}: a {'softmax' if dist == 'prob' else 'log-softmax'} over the last axis at every step (CTC / greedy decode)"
                            + (f"; class {ctc['blank']} wins most steps (the blank)" if "blank" in ctc else ""), ctc)
        if hint == "embedding":
            return TaskSpec(name, "embedding", f"{list(shape)}, named like an embedding")
        ctc = _ctc_structure(samples) if (ctx.sequence_inputs or ctx.image_inputs) and not ctx.token_inputs else None
        if ctc is not None:
            src = "an image" if ctx.image_inputs else "a sequence input"
            return TaskSpec(name, "sequence", f"{list(shape)} from {src}: peaked per-step class logits ({ctc['layout']}) where class "
                                              f"{ctc['blank']} wins most steps, as CTC's blank does (greedy decode)", ctc)
        if ctx.image_inputs and not ctx.token_inputs and shape[-1] >= _MIN_SEQ_CLASSES and shape[-2] >= 2 and not _score_head(samples):
            return TaskSpec(name, "sequence", f"{list(shape)} from an image: per-step class scores (CTC recognizer, greedy decode)")
        if ctx.image_inputs and not ctx.token_inputs and shape[-1] >= 2 and shape[1] == 1 and shape[0] > 1:
            return TaskSpec(name, "sequence", f"{list(shape)} from an image: per-step class scores, one sequence time first "
                                              "(TBC; CTC recognizer, greedy decode)", {"layout": "TBC"})
    if hint == "detection" and a.ndim in (2, 3) and shape[-1] == 4:
        return TaskSpec(name, "detection", f"{list(shape)} boxes after NMS (named '{name}')", _siblings(name, samples, ctx))
    if a.ndim == 4 or (a.ndim == 3 and meta == "segmentation"):
        c = shape[1] if a.ndim == 4 else 1
        h, w = shape[-2], shape[-1]
        if h >= 4 and w >= 4:
            if c == 1 and ctx.sequence_inputs and not ctx.image_inputs:
                return TaskSpec(name, "regression", f"{list(shape)} one-channel map from an audio / feature input (a spectrogram "
                                "or feature map, not a per-pixel probability): compared by cosine")
            if c == 1 and not _in01(samples) and not _both_sides(samples, 0.0):
                return TaskSpec(name, "regression", f"{list(shape)} one-channel map whose values never cross 0 (not logits of a "
                                "per-pixel probability): compared by cosine")
            same_as_input = any(len(s) == 4 and s[1] == c and s[2:] == (h, w) for s in ctx.image_inputs)
            # an image upscaled by a whole factor (super-resolution: [B, 3, kH, kW] from [B, 3, H, W]) is an image too
            same_as_input |= any(len(s) == 4 and s[1] == c and s[2] > 1 and s[3] > 1 and h % s[2] == 0 and w % s[3] == 0
                                 and h // s[2] == w // s[3] for s in ctx.image_inputs)
            if c == 1 and _in01(samples) and not _bimodal(samples):
                if same_as_input:  # a greyscale image in, a greyscale image out (denoiser, restorer): mid-tones everywhere
                    return TaskSpec(name, "regression", f"{list(shape)} one-channel image in [0, 1] from a one-channel image of "
                                    f"its grid, its values spread over the range (a denoised / restored image, not a mostly 0-or-1 "
                                    "probability map): compared by cosine around fp32's mean")
                return TaskSpec(name, "prob-map", f"{list(shape)} one-channel map (values in [0, 1]): thresholded at 0.5; a guess, its "
                                "values are spread over the range rather than near 0 or 1: declare [outputs." + name + "] task = "
                                "\"regression\" if it is an image", {"threshold": 0.5})
            if c == 1 and (_in01(samples) or _logit_map(samples)):
                thr = 0.5 if _in01(samples) else 0.0
                return TaskSpec(name, "prob-map", f"{list(shape)} one-channel map ({'values in [0, 1]' if thr else 'logits'}): thresholded at {thr}", {"threshold": thr})
            # a one-channel map of one sign or crowded around 0 (depth, distance, a denoised image) is no logit map
            if 2 <= c <= _MAX_HEATMAPS and hint is None and _heatmaps(samples):
                return TaskSpec(name, "keypoints", f"{list(shape)}: {c} heatmaps near their floor except a small peak each (pose "
                                "keypoints, not per-pixel classes: no channel dominates most pixels): the peak of each compared "
                                "as a point; a guess from the values, declare [outputs." + name + "] task = \"segmentation\" if "
                                "these are class scores", {"heatmap": True})
            if c >= 2 and same_as_input and (corr := _channel_correlation(samples)) is not None and corr < _MAX_CLASS_CORRELATION:
                return TaskSpec(name, "segmentation", f"{list(shape)}: {c} class scores per pixel (its channels compete: mean "
                                f"correlation {corr:.2f}, where an image's colour channels rise together); a guess from the "
                                "values, declare [outputs." + name + "] task = \"regression\" if it is an image")
            if c >= 2 and not same_as_input:
                return TaskSpec(name, "segmentation", f"{list(shape)}: {c} class scores per pixel")
    if a.ndim == 3 and meta == "segmentation" or (a.ndim == 3 and shape[-1] >= 4 and shape[-2] >= 4 and _in01(samples) and not ctx.token_inputs and hint is None):
        lo, hi = _stats(samples)
        if hi - lo > 0.5:
            return TaskSpec(name, "prob-map", f"{list(shape)} map with values in [0, 1]: thresholded at 0.5", {"threshold": 0.5})
    if a.ndim == 2 and shape[-1] >= 2:
        norms = np.linalg.norm(np.asarray(a, np.float64), axis=-1)
        if hint == "embedding" or (shape[-1] >= 16 and norms.size and np.allclose(norms, 1.0, atol=1e-2) and _rows_are_distributions(a) is None):
            return TaskSpec(name, "embedding", f"{list(shape)} " + ("named like an embedding" if hint == "embedding" else "unit-norm vectors"))
        lo, hi = _stats(samples)
        if meta is None and lo >= 0 and hi > 1 + 1e-4:  # logits take both signs; these are amounts, not class scores
            if shape[-1] >= 16:
                return TaskSpec(name, "embedding", f"{list(shape)} non-negative values beyond 1 (pooled ReLU features, "
                                                   "not class scores): per-vector cosine")
            return TaskSpec(name, "regression", f"{list(shape)} non-negative values beyond 1 (coordinates, sizes, counts; "
                                                "not class scores): compared by cosine around fp32's mean")
        bumps = bump_share(samples) if meta is None and not _class_names(ctx.metadata) else None
        if bumps is not None and bumps >= MIN_BUMP_SHARE:
            rows = sum(int(np.prod(np.shape(x)[:-1])) for x in samples[:64])
            guess = "" if bumps >= SURE_BUMP_SHARE and rows >= 8 else (
                f"; a guess from the values ({bumps:.0%} of {rows} rows), declare [outputs.{name}] task = \"classification\" "
                "if these are unordered class scores")
            return TaskSpec(name, "classification", f"{list(shape)} values in [0, 1] over {shape[-1]} ordered bins, one bump of "
                            f"adjacent bins per row on {bumps:.0%} of the rows (a pitch / age / angle histogram): its peak "
                            f"within 1 bin of fp32's and the peak's height{guess}", {"binned": True})
        if meta in (None, "classification") and _multilabel(samples):
            if not _decided(samples):  # sigmoids of a trained multi-label head sit near 0 or 1; coordinates spread out
                return TaskSpec(name, "regression", f"{list(shape)} values in [0, 1] spread across the range, rows not summing to 1 "
                                                    "(normalised coordinates or sizes, not label decisions): compared by cosine around fp32's mean")
            return TaskSpec(name, "classification", f"{list(shape)} independent probabilities in [0, 1] (rows do not sum to 1): "
                            "multi-label, each label decided at 0.5", {"multilabel": True})
        if meta in (None, "classification"):
            dist = _rows_are_distributions(a)
            what = {"prob": "probabilities", "logprob": "log-probabilities"}.get(dist or "", "scores")
            named = _class_names(ctx.metadata)
            if named:
                return TaskSpec(name, "classification", f"{list(shape)} class {what} (ONNX metadata '{named}' names the classes)")
            share = _standout_share(samples) if dist is None and meta is None else None
            if share is not None and share < _MIN_STANDOUT and not _CLASS_WORDS.search(name):
                return TaskSpec(name, "embedding", f"{list(shape)} signed vectors whose largest value stands out (by 1 std) on "
                                f"{share:.0%} of the samples, as the largest of {shape[-1]} random values does, where a classifier's "
                                f"top class stands out on most: per-vector cosine; a guess from the values, declare "
                                f"[outputs.{name}] task = \"classification\" if these are class scores")
            if share is not None and share < 0.5:
                what += (f"; a guess: the top class stands out on only {share:.0%} of the samples, declare "
                         f"[outputs.{name}] task = \"embedding\" if these are feature vectors")
            return TaskSpec(name, "classification", f"{list(shape)} class {what}")
    if a.ndim <= 2 and (a.ndim == 0 or shape[-1] == 1) and _in01(samples) and _stats(samples)[1] > _stats(samples)[0]:
        return TaskSpec(name, "classification", f"{list(shape)} one probability per sample: thresholded at 0.5")
    return TaskSpec(name, "regression", f"{list(shape)}: no task recognised, compared by cosine around fp32's mean")


# a recognizer's per-step scores cover at least digits and a blank; [B, K, 2-7] from an image is
# keypoints (x, y, visibility), boxes or a padded detection table, not a CTC alphabet
_MIN_SEQ_CLASSES = 8


def _packed_detections(samples: list[np.ndarray]) -> bool:
    """[B, N, 6] rows of x1, y1, x2, y2, score, class after NMS (YOLOv10 / end-to-end exports; the
    unused rows zero): scores in [0, 1], class ids whole numbers >= 0, boxes ordered and some in pixels."""
    a = np.asarray(samples[0])
    if a.ndim != 3 or a.shape[-1] != 6 or a.shape[1] < 2:
        return False
    rows = np.concatenate([np.asarray(x, np.float64).reshape(-1, 6) for x in samples[:16] if np.asarray(x).shape[-1:] == (6,)])
    if not np.isfinite(rows).all():
        return False
    live = rows[rows[:, 4] > 0]
    if not len(live) or rows[:, 4].min() < 0 or rows[:, 4].max() > 1 + 1e-4:
        return False
    cls = live[:, 5]
    return bool(np.all(cls >= 0) and np.all(cls == np.round(cls)) and np.all(live[:, 2] >= live[:, 0]) and np.all(live[:, 3] >= live[:, 1])
                and np.abs(live[:, :4]).max() > 1.5)


def _keypoints(samples: list[np.ndarray]) -> bool | None:
    """[B, K, 2|3] points from an image (K <= 256): x and y in pixels (some > 1.5), a third column in
    [0, 1] read as visibility (True) or as depth (False); None when not points."""
    a = np.asarray(samples[0])
    if a.ndim != 3 or a.shape[-1] not in (2, 3) or not 1 <= a.shape[1] <= 256:
        return None
    pts = np.concatenate([np.asarray(x, np.float64).reshape(-1, a.shape[-1]) for x in samples[:16] if np.asarray(x).shape[-1] == a.shape[-1]])
    if not np.isfinite(pts).all() or np.abs(pts[:, :2]).max() <= 1.5:
        return None
    return bool(a.shape[-1] == 3 and pts[:, 2].min() >= -1e-4 and pts[:, 2].max() <= 1 + 1e-4)


# ONNX metadata keys exporters use for class names (ultralytics 'names', HF 'id2label', ...)
_CLASS_NAME_KEYS = ("names", "classes", "labels", "class_names", "id2label")
# [B, D >= 64] signed scores are class logits when the top class stands out (by 1 std of the row)
# on at least this share of samples; the largest of D Gaussians does on 3-6 % of them
_MIN_STANDOUT = 0.2
# output names that say class scores whatever the values (kept a classifier, with a note when the values disagree)
_CLASS_WORDS = re.compile(r"logit|class|prob|score|cls|label|pred", re.IGNORECASE)
_MIN_EMBED_DIM = 64


def _class_names(metadata: dict[str, str]) -> str | None:
    """The metadata key naming a classifier's classes, if the model carries one."""
    return next((k for k in metadata if k.lower() in _CLASS_NAME_KEYS and metadata[k].strip()), None)


def _standout_share(samples: list[np.ndarray]) -> float | None:
    """Share of [B, D] rows whose largest value beats the second by at least one standard deviation
    of the row: most rows of a classifier's logits, a few of an embedding's (the gap between the two
    largest of D >= 64 Gaussians averages a quarter of one). None when it says nothing: D < 64,
    fewer than 8 rows, one sign only."""
    a = np.asarray(samples[0])
    if a.ndim != 2 or a.shape[-1] < _MIN_EMBED_DIM:
        return None
    rows = np.concatenate([np.asarray(x, np.float64).reshape(-1, a.shape[-1]) for x in samples if np.asarray(x).shape[-1:] == a.shape[-1:]])
    rows = rows[np.isfinite(rows).all(1)]
    if len(rows) < 8 or not (rows.min() < 0 < rows.max()):
        return None
    sd = rows.std(1)
    top = np.sort(rows, 1)[:, -2:]
    return float(np.mean((top[:, 1] - top[:, 0]) >= np.maximum(sd, 1e-12)))


# pose heatmaps come one per keypoint (17 COCO, 133 whole-body); a backbone's feature maps number more
_MAX_HEATMAPS = 160
# mean pairwise channel correlation below which an image-shaped [B, C, H, W] output is class
# scores (classes exclude each other: -1 for two, about -0.5 for three equal ones); an image's
# colour channels correlate positively, a random one's about 0
_MAX_CLASS_CORRELATION = -0.25


def _bimodal(samples: list[np.ndarray]) -> bool:
    """A map in [0, 1] that is mostly near 0 or 1 (at most a quarter of its values in (0.1, 0.9)), as
    a probability map is; a natural image's mid-tones are not."""
    vals = np.concatenate([np.asarray(x, np.float64).ravel() for x in samples[:16]])
    vals = vals[np.isfinite(vals)]
    return not vals.size or float(np.mean((vals > 0.1) & (vals < 0.9))) <= 0.25


def _heatmaps(samples: list[np.ndarray]) -> bool:
    """[B, K, H, W] keypoint heatmaps: per sample, no channel comes within half of the sample's range
    of its top on most pixels (a segmenter's scores have a dominant channel, the background's
    included, nearly everywhere), and each channel rises above half of its own range on under 10 %
    of the pixels (a small peak over a flat floor)."""
    dominated, peaks = [], []
    for x in samples[:16]:
        x = np.asarray(x, np.float64)
        if x.ndim != 4 or x.shape[-1] * x.shape[-2] < 64 or not np.isfinite(x).all():
            return False
        for xs in x:
            lo, hi = float(xs.min()), float(xs.max())
            if hi <= lo:
                return False
            dominated.append(float(np.mean(xs.max(0) > lo + 0.5 * (hi - lo))))
            cl, ch = xs.min((1, 2))[:, None, None], xs.max((1, 2))[:, None, None]
            peaks.append(float(np.median(np.mean(xs > cl + 0.5 * (ch - cl), (1, 2)))))
    return bool(dominated) and float(np.median(dominated)) < 0.5 and float(np.median(peaks)) < 0.1


def _channel_correlation(samples: list[np.ndarray]) -> float | None:
    """Mean correlation over pixels between every pair of channels of [B, C, H, W]; None when a channel is flat."""
    x = np.concatenate([np.moveaxis(np.asarray(s, np.float64), 1, -1).reshape(-1, np.asarray(s).shape[1]) for s in samples[:16]])
    x = x[np.isfinite(x).all(1)]
    if len(x) < 16 or (x.std(0) <= 0).any():
        return None
    r = np.corrcoef(x, rowvar=False)
    return float(r[np.triu_indices(r.shape[0], 1)].mean())


def _aligned_map(shape: tuple[int, ...], ctx: Context) -> bool:
    """[B, h, w] on an image input's grid: h and w divide its H and W by the same factor (a depth
    or probability map without a channel axis, MiDaS-style), which a recognizer's [B, T, C] does not."""
    h, w = shape[-2], shape[-1]
    if h < 4 or w < 4:
        return False
    for img in ctx.image_inputs:
        for hh, ww in ((img[2], img[3]), (img[1], img[2])):  # NCHW, NHWC
            if hh > 1 and ww > 1 and hh % h == 0 and ww % w == 0 and hh // h == ww // w:
                return True
    return False


def _constant(samples: list[np.ndarray]) -> bool:
    """fp32 gives one (finite) value everywhere, on every sample."""
    first = np.asarray(samples[0], np.float64).ravel()[0]
    return bool(np.isfinite(first)) and all(np.all(np.asarray(x, np.float64) == first) for x in samples)


def _logit_map(samples: list[np.ndarray]) -> bool:
    """A one-channel map not in [0, 1] reads as logits (thresholded at 0) only when it holds both
    signs and few of its values sit near 0 (a logit map's background is clearly negative, its
    objects clearly positive). A map of one sign (depth, distance, a heat map) or one crowded
    around 0 (a denoised or residual image) is a regression."""
    if not _both_sides(samples, 0.0):
        return False
    vals = np.concatenate([np.asarray(x, np.float64).ravel() for x in samples[:16]])
    vals = vals[np.isfinite(vals)]
    return float(np.mean(np.abs(vals) <= 0.05 * np.abs(vals).max())) < 0.1


def _multilabel(samples: list[np.ndarray]) -> bool:
    """[B, C >= 2] independent sigmoids: values in [0, 1], spread across the range, rows that do not sum to 1."""
    a = np.asarray(samples[0]) if samples else np.zeros(0)
    if a.ndim != 2 or a.shape[-1] < 2 or a.dtype.kind != "f" or not _in01(samples):
        return False
    rows = np.concatenate([np.asarray(x, np.float64).reshape(-1, a.shape[-1]) for x in samples])
    lo, hi = _stats(samples)
    return hi - lo > 0.5 and _rows_are_distributions(rows) is None


def _decided(samples: list[np.ndarray]) -> bool:
    """Most values near 0 or 1 (outside [0.2, 0.8]), as a trained sigmoid head's are."""
    vals = np.concatenate([np.asarray(x, np.float64).ravel() for x in samples])
    return float(np.mean((vals < 0.2) | (vals > 0.8))) >= 0.5


def _siblings(name: str, samples: list[np.ndarray], ctx: Context) -> dict[str, Any]:
    """Post-NMS detections: the outputs holding each box's score and class, by name."""
    out: dict[str, Any] = {"box_format": "xyxy"}
    n = np.asarray(samples[0]).shape[:-1]
    for other, arrs in ctx.outputs.items():
        if other == name or not arrs:
            continue
        low, shp = other.lower(), np.asarray(arrs[0]).shape
        if shp != n and shp != (*n, 1):
            continue
        if "score" in low or "conf" in low:
            out.setdefault("scores", other)
        elif "class" in low or "label" in low or "cls" in low:
            out.setdefault("classes", other)
    return out


def infer_all(
    names: tuple[str, ...], per_sample: list[list[np.ndarray]], ctx: Context, overrides: dict[str, dict[str, Any]] | None = None
) -> list[TaskSpec]:
    """One TaskSpec per output; ``per_sample[k]`` holds output k's fp32 value on every sample.

    An output named as a detection's ``scores``/``classes`` is checked with its boxes (kind
    ``detection``, role noted in ``why``), never on its own.
    """
    overrides = overrides or {}
    ctx = replace(ctx, outputs=dict(zip(names, per_sample)))
    specs = [infer_one(n, s, ctx, _task_of(overrides.get(n))) for n, s in zip(names, per_sample)]
    specs = _split_heads(specs, dict(zip(names, per_sample)), ctx)
    specs = _prototypes(specs, dict(zip(names, per_sample)))
    boxes = regression_maps([s.output for s in specs if s.kind in ("segmentation", "classification") and not s.declared],
                            ctx.outputs)
    specs = [TaskSpec(s.output, "regression", f"{list(np.shape(ctx.outputs[s.output][0]))}: signed regression (box offsets, "
                      f"sizes or landmarks) beside the scores '{boxes[s.output]}', not class scores: compared by cosine around "
                      f"fp32's mean; a guess, declare [outputs.{s.output}] task = \"{s.kind}\" if these are class scores")
             if s.output in boxes else s for s in specs]
    specs = [TaskSpec(s.output, "regression", f"{list(np.shape(ctx.outputs[s.output][0]))}: named like boxes, but its rows "
                      "are no boxes (corners out of order, negative sizes): box regression offsets, compared by cosine around "
                      f"fp32's mean; declare [outputs.{s.output}] task = \"detection\" if these are boxes")
             if s.kind == "detection" and not s.declared and not {"layout", "levels", "packed"} & set(s.params)
             and ctx.outputs.get(s.output) and np.shape(ctx.outputs[s.output][0])[-1:] == (4,)
             and offsets_not_boxes(ctx.outputs[s.output]) else s for s in specs]
    parts = {p: s.output for s in specs if s.kind == "detection" for p in (s.params.get("scores"), s.params.get("classes")) if p}
    return [
        TaskSpec(s.output, "detection", f"part of detection output '{parts[s.output]}' (checked with it)", {"part_of": parts[s.output]})
        if s.output in parts and not s.declared else s
        for s in specs
    ]


def _prototypes(specs: list[TaskSpec], outputs: dict[str, list[np.ndarray]]) -> list[TaskSpec]:
    """A segmenting detector (YOLOv8-seg): the [B, M, h, w] mask prototypes whose M matches the
    M mask coefficients per anchor of a detection head are bases the app mixes, not M classes."""
    extra = {}
    for s in specs:
        if s.kind == "detection" and "num_classes" in s.params and outputs.get(s.output):
            a = np.asarray(outputs[s.output][0])
            k = a.shape[1] if s.params.get("layout") == "channels-first" else a.shape[2]
            extra[k - 4 - int(bool(s.params.get("objectness"))) - int(s.params["num_classes"])] = s.output
    out = []
    for s in specs:
        a = np.asarray(outputs[s.output][0]) if outputs.get(s.output) else np.zeros(0)
        if not s.declared and (s.kind == "segmentation" or s.params.get("heatmap")) and a.ndim == 4 and a.shape[1] in extra:
            s = TaskSpec(s.output, "regression", f"{list(a.shape)}: mask prototypes, {a.shape[1]} bases mixed by the mask "
                         f"coefficients of detection output '{extra[a.shape[1]]}' (compared by cosine around fp32's mean)")
        out.append(s)
    return out


def _score_head(samples: list[np.ndarray]) -> bool:
    """[B, N, C] per-anchor class scores: many anchors (N >= 16, N >= 2C), values in [0, 1], rows
    not a softmax (each class its own sigmoid, as detectors score)."""
    a = np.asarray(samples[0]) if samples else np.zeros(0)
    if a.ndim != 3 or a.dtype.kind != "f" or not (1 <= a.shape[2] <= 1024 and a.shape[1] >= max(16, 2 * a.shape[2])):
        return False
    return _in01(samples[:16]) and _rows_are_distributions(a) is None


def _box_head(samples: list[np.ndarray], n: int) -> int | None:
    """Bins per side when ``samples`` look like [B, n, 4 * bins] box-side distributions (GFL / DFL,
    as PicoDet, NanoDet and YOLOv8 heads give before their decode), bins >= 4."""
    a = np.asarray(samples[0]) if samples else np.zeros(0)
    if a.ndim != 3 or a.dtype.kind != "f" or a.shape[1] != n or a.shape[2] % 4 or a.shape[2] // 4 < 4:
        return None
    return a.shape[2] // 4 if all(np.isfinite(np.asarray(x)).all() for x in samples[:4]) else None


def _grid(n: int, image: tuple[int, ...] | None) -> tuple[int, int, float]:
    """(rows, cols, stride) of a head with ``n`` anchors on an image [.., H, W] (declared sizes),
    else the squarest grid with ``n`` cells and stride 1 (fp32 and quantized decode alike)."""
    if image and len(image) == 4 and image[2] > 1 and image[3] > 1:
        h, w = image[2], image[3]
        s = round(math.sqrt(h * w / n))
        for st in (s, s - 1, s + 1, 2 ** round(math.log2(max(s, 1)))):
            if st > 0 and math.ceil(h / st) * math.ceil(w / st) == n:
                return math.ceil(h / st), math.ceil(w / st), float(st)
    cols = next(c for c in range(int(math.isqrt(n)), n + 1) if n % c == 0)
    return n // cols, cols, 1.0


def _split_heads(specs: list[TaskSpec], outputs: dict[str, list[np.ndarray]], ctx: Context) -> list[TaskSpec]:
    """Detectors that leave their decode to the app (PicoDet / NanoDet / GFL-style): per level one
    [B, N, C] class-score output and one [B, N, 4 * bins] box-distribution output with the same N.
    The first score head becomes one ``detection`` check over every level (boxes decoded, NMS, F1
    against fp32); the other heads are checked with it. Declared outputs are left as declared,
    except a declared ``detection`` score head, whose parameters are kept."""
    if ctx.token_inputs or not ctx.image_inputs:
        return specs
    free = [s for s in specs if not s.declared or s.kind == "detection"]
    scores = [s for s in free if s.kind != "index" and _score_head(outputs[s.output])]
    used: set[str] = set()
    levels = []
    for sc in scores:
        n = np.asarray(outputs[sc.output][0]).shape[1]
        box = next((b for b in free if b.output not in used and b.output != sc.output and b not in scores
                    and _box_head(outputs[b.output], n)), None)
        if box is None:
            continue
        used.add(box.output)
        rows, cols, stride = _grid(n, ctx.image_inputs[0])
        levels.append([sc.output, box.output, rows, cols, stride, _box_head(outputs[box.output], n)])
    if not levels:
        return specs
    head = levels[0][0]
    first = next(s for s in specs if s.output == head)
    params = {**(first.params if first.declared else {}), "levels": levels}
    why = (f"{len(levels)} level(s) of per-anchor class scores in [0, 1] with box-side distributions "
           f"({levels[0][5]} bins per side, GFL/DFL-style split head): boxes decoded, NMS, matched to fp32's")
    parts = {x for lv in levels for x in lv[:2]} - {head}
    return [TaskSpec(s.output, "detection", why, params, s.declared) if s.output == head else
            TaskSpec(s.output, "detection", f"part of detection output '{head}' (checked with it)", {"part_of": head})
            if s.output in parts else s for s in specs]


def _task_of(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    if not spec or "task" not in spec:
        return None
    return {k: v for k, v in spec.items() if k in TASK_KEYS}


def context_from_model(model: Any) -> Context:
    """Context from an in-memory ModelProto (graph inputs and metadata; weights not read)."""
    inits = {i.name for i in model.graph.initializer}
    tokens, images, seqs = False, [], []
    for i in model.graph.input:
        if i.name in inits:
            continue
        t = i.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in t.shape.dim]
        tokens |= t.elem_type in (6, 7) and len(dims) == 2  # INT32, INT64 token ids
        if t.elem_type in (1, 10, 16) and len(dims) == 4:
            images.append(tuple(dims))
        elif t.elem_type in (1, 10, 16) and len(dims) in (2, 3):
            seqs.append(tuple(dims))
    return Context(tokens, tuple(images), {p.key[:64]: p.value[:256] for p in model.metadata_props}, sequence_inputs=tuple(seqs))


def first_output_task(model: Any, ref: list[np.ndarray], overrides: dict[str, dict[str, Any]] | None = None) -> TaskSpec:
    """The task of a model's first output from its fp32 values (--max-drop and the gate score every
    output: ``edgeq.quantization.int8.static.output_tasks``)."""
    name = model.graph.output[0].name if model.graph.output else "output_0"
    return infer_one(name, [np.asarray(r) for r in ref], context_from_model(model), _task_of((overrides or {}).get(name)))


def context_from(model_path: Any, io: Any) -> Context:
    """Token / image inputs from the IoSpec and string metadata from the ONNX file (not its weights)."""
    meta: dict[str, str] = {}
    try:
        import onnx

        m = onnx.load(str(model_path), load_external_data=False)
        meta = {p.key[:64]: p.value[:256] for p in m.metadata_props}
    except Exception:  # noqa: BLE001 - metadata is a hint only
        meta = {}
    tokens = any(t.dtype in ("int64", "int32") and len(t.shape) == 2 for t in io.inputs)
    def dims(t: Any) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) and d > 0 else 1 for d in t.shape)

    images = tuple(dims(t) for t in io.inputs if t.dtype.startswith("float") and len(t.shape) == 4)
    seqs = tuple(dims(t) for t in io.inputs if t.dtype.startswith("float") and len(t.shape) in (2, 3))
    return Context(tokens, images, meta, sequence_inputs=seqs)
