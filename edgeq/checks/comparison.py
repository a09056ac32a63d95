"""verify: run reference and candidate on the same inputs and compare per output.

The verdict comes from each output's task check (edgeq/checks: classification agreement,
detections after NMS, thresholded maps, decoded sequences, embeddings, LM logits); raw
cosine and max error are reported per output as information.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.data import SampleSet
from ..errors import ModelError
from ..core.runtime import create_session
from ..core.targets import Tolerances


@dataclass(frozen=True)
class OutputMetrics:
    name: str
    max_abs: float | None  # None: the output's shape differs between the models (e.g. detections after NMS)
    mean_abs: float | None
    max_rel: float | None
    cosine: float | None
    top1_agreement: float | None  # for classifier-shaped outputs [N, C]


@dataclass(frozen=True)
class VerifyReport:
    samples: int
    data_source: str
    outputs: tuple[OutputMetrics, ...]
    accuracy_reference: float | None
    accuracy_candidate: float | None
    passed: bool
    failures: tuple[str, ...] = field(default=())
    synthetic_data: bool = False
    tasks: tuple[dict[str, Any], ...] = field(default=())
    """One task check per output (edgeq.checks.TaskCheck.to_dict()): these decide ``passed``."""

    @property
    def accuracy_drop(self) -> float | None:
        if self.accuracy_reference is None or self.accuracy_candidate is None:
            return None
        return self.accuracy_reference - self.accuracy_candidate

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["outputs"] = [asdict(o) for o in self.outputs]
        d["failures"] = list(self.failures)
        d["tasks"] = [dict(t) for t in self.tasks]
        d["accuracy_drop"] = self.accuracy_drop
        return d


def _is_classifier(a: np.ndarray) -> bool:
    return a.ndim == 2 and a.shape[1] >= 2 and a.dtype.kind == "f"


def streamed(path: Path | str, data: SampleSet, tasks: dict[str, dict[str, Any]] | None = None, pairs: Any = None
             ) -> tuple[list[list[np.ndarray]], Any]:
    """Every output of the model at ``path`` on every sample, ``[output][sample]`` (shapes may vary per sample), with
    the samples run in order as one stream when outputs feed inputs back (edgeq.checks.recurrent.rollout; ``pairs``:
    the reference's, else found here); and the pairs."""
    from .recurrent import session_rollout

    return session_rollout(create_session(path), data, len(data), tasks, pairs)


def _stacked(v: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(v, axis=0) if v[0].ndim else np.stack(v)


def _raw(name: str, ref: list[np.ndarray], cand: list[np.ndarray]) -> OutputMetrics:
    if any(r.shape != c.shape for r, c in zip(ref, cand)) or len({r.shape[1:] for r in ref if r.ndim}) > 1:
        return OutputMetrics(name, None, None, None, None, None)
    return compare(name, _stacked(ref), _stacked(cand))


def compare(name: str, ref: np.ndarray, cand: np.ndarray) -> OutputMetrics:
    if ref.shape != cand.shape:
        raise ModelError(
            f"output '{name}' has shape {list(cand.shape)} in the candidate but {list(ref.shape)} in the reference",
            "the two models do not compute the same thing",
        )
    if ref.dtype.kind not in "fiub" or cand.dtype.kind not in "fiub":  # string labels: no error to measure (the task check: exact match)
        return OutputMetrics(name, None, None, None, None, None)
    r = ref.astype(np.float64).ravel()
    c = cand.astype(np.float64).ravel()
    diff = np.abs(r - c)
    denom = np.maximum(np.abs(r), 1e-12)
    nr, nc = np.linalg.norm(r), np.linalg.norm(c)
    if nr == 0 and nc == 0:
        cosine = 1.0
    elif nr == 0 or nc == 0:
        cosine = 0.0
    else:
        cosine = float(np.dot(r, c) / (nr * nc))
    top1 = None
    if _is_classifier(ref):
        top1 = float(np.mean(ref.argmax(axis=1) == cand.argmax(axis=1)))
    return OutputMetrics(
        name=name,
        max_abs=float(diff.max()) if diff.size else 0.0,
        mean_abs=float(diff.mean()) if diff.size else 0.0,
        max_rel=float((diff / denom).max()) if diff.size else 0.0,
        cosine=cosine,
        top1_agreement=top1,
    )


def encoding_differs(name: str, ref: list[np.ndarray], cand: list[np.ndarray]) -> str | None:
    """Why output ``name`` is not comparable between the two models (None: it is): another element type (an int8 KV
    cache's ``present`` codes against fp32 values), or a decoder's cache state held as integer codes in either one (codes
    of one model's scales are not the other's values). Such an output is reported, not compared: the others carry the task."""
    from .kinds import is_kv_state

    rd, cd = (np.asarray(v[0]).dtype if v else None for v in (ref, cand))
    if rd != cd:
        return f"{cd} in the candidate, {rd} in the reference: another encoding, not the same values (reported, not compared)"
    if is_kv_state(name) and rd is not None and rd.kind in "iub":
        return f"a key/value cache held as {rd} codes: its values depend on each model's cache scales (reported, not compared)"
    return None


def judge(names: tuple[str, ...], ref_outs: list[list[np.ndarray]], cand_outs: list[list[np.ndarray]], ctx: Any,
          tolerances: Tolerances, *, tasks: dict[str, dict[str, Any]] | None = None, pairs: tuple[Any, ...] = (),
          data: SampleSet | None = None) -> tuple[tuple[OutputMetrics, ...], list[dict[str, Any]], list[Any]]:
    """Each output of the candidate against the reference's, ``[output][sample]``, by its task: (raw metrics as
    information, task checks as dicts, the task specs). ``ctx``: the reference's kinds.Context; ``pairs``: recurrent
    pairs the two were streamed with (checks.recurrent); ``data``: the samples (token masks), when there are any."""
    from . import infer_all, score
    from .masking import find_mask, masked, token_masks
    from .recurrent import mark_states

    n = len(ref_outs[0]) if ref_outs else 0
    apart = {nm: why for nm, r, c in zip(names, ref_outs, cand_outs) if (why := encoding_differs(nm, r, c))}
    if apart and len(apart) == len(names):
        raise ModelError("no output of the candidate has the reference's element type: nothing to compare",
                         "compare models whose outputs hold the same values (the same types)")
    metrics = tuple(OutputMetrics(nm, None, None, None, None, None) if nm in apart else _raw(nm, r, c)
                    for nm, r, c in zip(names, ref_outs, cand_outs))
    specs = mark_states(infer_all(names, ref_outs, ctx, tasks), pairs, n)
    ref_all = [{nm: ref_outs[k][i] for k, nm in enumerate(names)} for i in range(n)]
    cand_all = [{nm: cand_outs[k][i] for k, nm in enumerate(names)} for i in range(n)]
    masks = token_masks(data, n) if data is not None else None  # embedding outputs: judged on the real tokens only
    mask_input = find_mask(data) if masks else None
    checks: list[dict[str, Any]] = []
    for spec, r, c in zip(specs, masked(specs, ref_outs, masks), masked(specs, cand_outs, masks)):
        if spec.output in apart:  # reported, never compared: its values mean another thing in each model
            checks.append({"output": spec.output, "kind": "not-compared", "why": apart[spec.output], "metrics": {}, "limits": {},
                           "passed": True, "failures": [], "info": {"reference_dtype": str(r[0].dtype), "candidate_dtype": str(c[0].dtype)}})
            continue
        chk = score(spec, r, c, tolerances, ref_all, cand_all)
        checks.append(chk.to_dict() if chk is not None else {
            "output": spec.output, "kind": spec.kind, "why": spec.why, "metrics": {}, "limits": {}, "passed": True,
            "failures": [], "info": {"part_of": spec.params.get("part_of")}})
        if mask_input is not None and spec.kind == "embedding" and isinstance(checks[-1].get("info"), dict):
            checks[-1]["info"]["token_mask"] = mask_input.describe()  # what was read as the mask, and why
    return metrics, checks, specs


def verify(
    reference: Path | str,
    candidate: Path | str,
    data: SampleSet,
    tolerances: Tolerances,
    *,
    output_names: tuple[str, ...] | None = None,
    tasks: dict[str, dict[str, Any]] | None = None,
) -> VerifyReport:
    """Compare ``candidate`` against ``reference`` on ``data`` within ``tolerances``.

    ``tasks``: per-output overrides from the app TOML (``{name: {"task": kind, ...}}``).
    """
    from .kinds import context_from
    from ..core.onnxutil import artifact_from

    ref_outs, pairs = streamed(reference, data, tasks)  # a recurrent model: one stream, each model fed its own state
    cand_outs, _ = streamed(candidate, data, tasks, pairs)
    if len(ref_outs) != len(cand_outs):
        raise ModelError(
            f"the candidate has {len(cand_outs)} outputs, the reference {len(ref_outs)}",
            "compare models with the same outputs",
        )
    names = output_names or tuple(f"output_{i}" for i in range(len(ref_outs)))
    ctx = context_from(reference, artifact_from(Path(reference)).io)
    metrics, checks, specs = judge(names, ref_outs, cand_outs, ctx, tolerances, tasks=tasks, pairs=pairs, data=data)
    failures: list[str] = [f for c in checks for f in c["failures"]]
    acc_ref = acc_cand = None
    if data.labels is not None:
        idx = next((i for i, s in enumerate(specs) if s.kind == "classification" and _is_classifier(_stacked(ref_outs[i]))), None)
        if idx is not None:
            r, c = _stacked(ref_outs[idx]), _stacked(cand_outs[idx])
            labels = np.asarray(data.labels)[: len(r)]
            if len(labels) == len(r):
                acc_ref = float(np.mean(r.argmax(axis=1) == labels))
                acc_cand = float(np.mean(c.argmax(axis=1) == labels))
                if acc_ref - acc_cand > tolerances.max_accuracy_drop:
                    failures.append(
                        f"accuracy drop {100 * (acc_ref - acc_cand):.2f} points > {100 * tolerances.max_accuracy_drop:.2f}"
                    )
    return VerifyReport(
        samples=len(data),
        data_source=data.source,
        outputs=metrics,
        accuracy_reference=acc_ref,
        accuracy_candidate=acc_cand,
        passed=not failures,
        failures=tuple(failures),
        synthetic_data=data.synthetic,
        tasks=tuple(checks),
    )
