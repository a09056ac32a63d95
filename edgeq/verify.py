"""verify: run reference and candidate on the same inputs and compare per output."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data import SampleSet
from .errors import ModelError
from .runtime import create_session, run
from .targets import Tolerances


@dataclass(frozen=True)
class OutputMetrics:
    name: str
    max_abs: float
    mean_abs: float
    max_rel: float
    cosine: float
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

    @property
    def accuracy_drop(self) -> float | None:
        if self.accuracy_reference is None or self.accuracy_candidate is None:
            return None
        return self.accuracy_reference - self.accuracy_candidate

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["outputs"] = [asdict(o) for o in self.outputs]
        d["failures"] = list(self.failures)
        d["accuracy_drop"] = self.accuracy_drop
        return d


def _is_classifier(a: np.ndarray) -> bool:
    return a.ndim == 2 and a.shape[1] >= 2 and a.dtype.kind == "f"


def collect_outputs(path: Path | str, data: SampleSet, *, providers: list[str] | None = None) -> list[np.ndarray]:
    """Run every sample through the model; outputs stacked along the batch axis."""
    sess = create_session(path, providers=providers)
    per_output: list[list[np.ndarray]] = []
    for i in range(len(data)):
        outs = run(sess, data.feed(i))
        if not per_output:
            per_output = [[] for _ in outs]
        for k, o in enumerate(outs):
            per_output[k].append(np.asarray(o))
    return [np.concatenate(v, axis=0) if v[0].ndim else np.stack(v) for v in per_output]


def compare(name: str, ref: np.ndarray, cand: np.ndarray) -> OutputMetrics:
    if ref.shape != cand.shape:
        raise ModelError(
            f"output '{name}' has shape {list(cand.shape)} in the candidate but {list(ref.shape)} in the reference",
            "the two models do not compute the same thing",
        )
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


def verify(
    reference: Path | str,
    candidate: Path | str,
    data: SampleSet,
    tolerances: Tolerances,
    *,
    output_names: tuple[str, ...] | None = None,
) -> VerifyReport:
    """Compare ``candidate`` against ``reference`` on ``data`` within ``tolerances``."""
    ref_outs = collect_outputs(reference, data)
    cand_outs = collect_outputs(candidate, data)
    if len(ref_outs) != len(cand_outs):
        raise ModelError(
            f"the candidate has {len(cand_outs)} outputs, the reference {len(ref_outs)}",
            "compare models with the same outputs",
        )
    names = output_names or tuple(f"output_{i}" for i in range(len(ref_outs)))
    metrics = tuple(compare(n, r, c) for n, r, c in zip(names, ref_outs, cand_outs))
    failures: list[str] = []
    for m in metrics:
        if m.cosine < tolerances.min_cosine:
            failures.append(f"output '{m.name}': cosine {m.cosine:.4f} < {tolerances.min_cosine}")
        if m.top1_agreement is not None and m.top1_agreement < tolerances.min_top1_agreement:
            failures.append(f"output '{m.name}': top-1 agreement {m.top1_agreement:.2%} < {tolerances.min_top1_agreement:.0%}")
    acc_ref = acc_cand = None
    if data.labels is not None:
        idx = next((i for i, r in enumerate(ref_outs) if _is_classifier(r)), None)
        if idx is not None:
            acc_ref = float(np.mean(ref_outs[idx].argmax(axis=1) == data.labels))
            acc_cand = float(np.mean(cand_outs[idx].argmax(axis=1) == data.labels))
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
    )
