"""``--calibration auto``: choose the range method per model by measured output error.

The streaming pass already keeps min/max and a histogram per tensor, so every range method
(min-max, percentiles, entropy, MSE) costs nothing more to compute. Which one is best depends
on the model: min-max wastes levels on rare outliers (silero-vad), percentiles clip signal
that matters in others (a small LM's logits). ``choose`` writes the QDQ model once per
candidate, runs it beside fp32 on samples the ranges were not taken from when there are any,
and keeps the candidate whose first float output has the highest SQNR against fp32. The choice,
every candidate's score and where the scoring samples came from go into the report.

Cost: the ranges of every candidate come from the one calibration pass; each candidate is
then scored on 2 to ``SCORE_SAMPLES`` samples only (``score_samples``: fewer for models with
large outputs; the fp32 reference is computed once), and a candidate whose ranges equal an
earlier one's is not run again, so ``auto`` costs a few model runs per candidate, not a
calibration each. A candidate clearly behind the best on the first samples stops there (racing,
``RACE_DB``); one whose score has converged stops too (``converged``: small outputs, scored on 5-8
samples), and is compared with the others on the samples both ran. The weights are quantized once for
all candidates (``static.Prepared.weight_cache``). Each candidate's session sums its output noise against
the fp32 outputs fed in (``score_graph``): a detector's map does not leave onnxruntime.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ...core.data import SampleSet
from ...errors import first_line
from .calibrate import AUTO_CANDIDATES, Calibration
from .score_graph import Reference, numpy_energy, scorer

SCORE_SAMPLES = 8
SCORE_VALUES = 1 << 12  # float output values that make a stable SQNR: models with larger outputs score on fewer samples
MIN_SCORE_SAMPLES = 2


def score_samples(values_per_sample: int) -> int:
    """How many samples to score candidates on: enough for ``SCORE_VALUES`` float output values, 2 to 8.

    A detector's 84 x 11,109 output map or a CTC head's 80 x 97 log-probabilities give a steady
    SQNR from 2 samples, ResNet's 1,000 logits from 5; a 10-class classifier uses all 8. (The
    candidates' SQNRs differ by dB where the choice matters; 4,096 values estimate each to about
    0.1 dB.) Large outputs come from large activations, the models where each run costs most.
    """
    need = -(-SCORE_VALUES // max(values_per_sample, 1))
    return max(MIN_SCORE_SAMPLES, min(SCORE_SAMPLES, need))


TIE_DB = 0.05  # a later candidate must beat an earlier one by more than this
RACE_VALUES = SCORE_VALUES // 4
RACE_DB = 1.0
"""Racing: every candidate first runs the samples that give ``RACE_VALUES`` float output values
(``race_samples``: 1 for a detector's map or a CTC head, 2 for 1,000 logits). One whose SQNR there
is more than ``RACE_DB`` below the best candidate's SQNR on the same samples stops: its row gives
that score and its ``samples``. The others run every scoring sample in the session they already
have. 1,024 values estimate an SQNR to a few tenths of a dB, well inside ``RACE_DB``; models whose
outputs are small (a 10-class head) race on every scoring sample, i.e. do not race."""


def race_samples(values_per_sample: int) -> int:
    return max(1, -(-RACE_VALUES // max(values_per_sample, 1)))


CONVERGE_SAMPLES = 4
CONVERGED_DB = 0.25
"""Convergence: a small output (under 1,024 values, scored on 5 to 8 samples: a classifier's logits) says
little per sample and races late or not at all, so each candidate ran every scoring sample. A candidate's score is the SQNR of the
summed energies, i.e. of the mean per-sample noise-to-signal ratio; once it has run ``CONVERGE_SAMPLES``
samples and the standard error of that mean, in dB, is at most ``CONVERGED_DB``, its score has converged and
it stops there (its row gives its ``samples`` and ``converged``). A candidate whose per-sample errors spread
(some samples clip, others do not) runs on; so does every candidate of a model whose samples disagree.
Two candidates' scores are then each within about ``CONVERGED_DB`` of what every scoring sample would give,
so only candidates that close can change places."""


def converged(nsr: list[float]) -> bool:
    """Whether the SQNR from these per-sample noise-to-signal ratios (one scoring sample each) has
    converged: at least ``CONVERGE_SAMPLES`` of them, and the standard error of their mean is at most
    ``CONVERGED_DB`` in dB."""
    k = len(nsr)
    if k < max(CONVERGE_SAMPLES, 2):
        return False
    a = np.asarray(nsr, np.float64)
    if not np.all(np.isfinite(a)):
        return False
    mean = float(a.mean())
    if mean <= 0.0:  # no error on any sample
        return True
    se = float(a.std(ddof=1)) / math.sqrt(k) / mean  # relative standard error of the mean ratio
    return 10.0 / math.log(10.0) * se <= CONVERGED_DB


def scoring_indices(data: SampleSet, n_calib: int, k: int = SCORE_SAMPLES) -> tuple[list[int], bool]:
    """Samples to score on: those after the calibration samples if any (held out), else the first ones."""
    if len(data) > n_calib:
        return list(range(n_calib, min(len(data), n_calib + k))), True
    return list(range(min(n_calib, len(data), k))), False


def _session(model: Any, base_dir: Any = None) -> Any:
    import onnxruntime as ort

    from .qdq import open_session

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.enable_mem_pattern = False  # its one block per run grows the arena to about twice the live tensors
    return open_session(model, so, ["CPUExecutionProvider"], base_dir)


def _runner(model: Any, data: SampleSet, base_dir: Any = None) -> Any:
    """A function: sample indices -> the model's outputs on them (one session)."""
    sess = _session(model, base_dir)
    names = {i.name for i in sess.get_inputs()}
    return lambda idx: [sess.run(None, {k: v for k, v in data.feed(i).items() if k in names}) for i in idx]


def output_energies(ref: list[list[np.ndarray]], cand: list[list[np.ndarray]],
                    start: list[tuple[float, float] | None] | None = None) -> list[tuple[float, float] | None]:
    """Per output, (signal, noise) energies summed over the samples (finite entries of the reference
    only), continuing from ``start`` (the energies of earlier samples); None for an output that is not
    float (e.g. an argmax index)."""
    out: list[tuple[float, float] | None] = []
    for j in range(len(ref[0]) if ref else 0):
        if np.asarray(ref[0][j]).dtype.kind != "f":
            out.append(None)
            continue
        sig, noise = start[j] if start is not None and start[j] is not None else (0.0, 0.0)
        for r, c in zip(ref, cand):
            s, nd = numpy_energy(r[j], c[j])
            sig += s
            noise += nd
        out.append((sig, noise))
    return out


def _nsr(e: tuple[float, float] | None) -> float:
    """Noise-to-signal ratio of one sample's (signal, noise) energies (inf without signal or without energies)."""
    if e is None:
        return math.inf
    sig, noise = e
    if noise == 0.0:
        return 0.0
    return noise / sig if sig > 0 and math.isfinite(noise) else math.inf


def _sqnr(e: tuple[float, float] | None) -> float | None:
    if e is None:
        return None
    sig, noise = e
    if noise == 0.0:
        return math.inf if sig > 0 else 0.0
    if not math.isfinite(noise) or sig <= 0:
        return -math.inf
    return 10.0 * math.log10(sig / noise)


def output_sqnr(ref: list[list[np.ndarray]], cand: list[list[np.ndarray]]) -> list[float | None]:
    """SQNR (dB) of each float output over all samples (finite entries of the reference only);
    None for an output that is not float (e.g. an argmax index)."""
    return [_sqnr(e) for e in output_energies(ref, cand)]


def _prefix_sqnr(per_sample: list[tuple[float, float] | None], other: list[Any]) -> float:
    """The score (as ``_first``) over the samples both candidates ran: the first ``len(other)`` of
    ``per_sample`` (one output's energies per sample). A candidate that converged early is compared with
    another on the same samples; two that ran every sample compare their scores, as summed before."""
    sig = noise = 0.0
    for e in per_sample[: len(other)]:
        if e is None:
            return -math.inf
        sig += e[0]
        noise += e[1]
    return _first([_sqnr((sig, noise))])


def _first(per_out: list[float | None]) -> float:
    """The score: the first float output's SQNR."""
    return next((x for x in per_out if x is not None), -math.inf)


def _db(x: float | None) -> float | None:
    if x is None:
        return None
    return round(x, 2) if math.isfinite(x) else (999.0 if x > 0 else -999.0)


def choose(prep: Any, spec: Any, data: SampleSet, n_calib: int, candidates: tuple[str, ...] = AUTO_CANDIDATES, *,
           write: Any) -> Any:
    """``prep`` with ``cal`` set to the best candidate; ``prep.choice`` holds the scores.

    ``write(prep, spec)`` writes one candidate (``static.write``; passed in, so this module stays below it).
    """
    idx, held_out = scoring_indices(data, n_calib)
    fp32 = _runner(prep.model, data, prep.weights_dir)
    ref = fp32(idx[:1])
    values = sum(int(np.asarray(o).size) for o in ref[0] if np.asarray(o).dtype.kind == "f") if ref else 0
    if ref:  # the first sample's float outputs say how many samples the scores need
        idx = idx[: score_samples(values)]
        ref += fp32(idx[1:])
    del fp32  # its session holds the float weights
    reference = Reference(ref)  # each sample's signal energies, once for all candidates
    rows: list[dict[str, Any]] = []
    # (score, calibration, score on the race samples, the score's per-sample energies)
    best: tuple[float, Calibration, float, list[tuple[float, float] | None]] | None = None
    scored: dict[Any, dict[str, Any]] = {}  # ranges -> the row of the first candidate that had them
    for text in candidates:
        cal = Calibration.parse(text, prep.cal.bins)
        cand = dataclasses.replace(prep, cal=cal)
        key = tuple(sorted(prep.stats.ranges(cal).items()))
        if key in scored:  # the same model as an earlier candidate: its score, not another run
            same = scored[key]
            rows.append({**{k: v for k, v in same.items() if k != "method"}, "method": text, "same_ranges_as": same["method"]})
            continue
        race = min(race_samples(values), len(idx))
        racing = race < len(idx)
        try:
            # the candidate's noise energies are summed in its session, against the fp32 outputs fed in
            run = scorer(write(cand, spec).model, reference, lambda m: _session(m, prep.weights_dir))
            energies: list[tuple[float, float] | None] = []
            nsr: list[float] = []
            per_sample: list[tuple[float, float] | None] = []
            cut = done = False
            # one sample at a time, the sums in the same order as over all samples at once; a candidate stops
            # when raced out on the race samples, or once its score has converged (``converged``)
            for k, i in enumerate(idx, 1):
                one = run(k - 1, data.feed(i))
                energies = one if k == 1 else [None if a is None or b is None else (a[0] + b[0], a[1] + b[1])
                                               for a, b in zip(energies, one)]
                per_sample.append(next((e for e in one if e is not None), None))  # the score's output
                nsr.append(_nsr(per_sample[-1]))
                if racing and k == race:
                    first = _first([_sqnr(e) for e in energies])
                    cut = best is not None and first < best[2] - RACE_DB
                done = k < len(idx) and not cut and (k >= race or not racing) and converged(nsr)
                if cut or done:
                    break
            if not racing:
                first = _first([_sqnr(e) for e in energies])
            del run
        except Exception as e:  # noqa: BLE001 - a candidate that cannot run is skipped, and said so
            rows.append({"method": text, "error": first_line(e, 160)})
            continue
        per_out = [_sqnr(e) for e in energies]
        score = _first(per_out)
        rows.append({"method": text, "sqnr_db": _db(score), "outputs_sqnr_db": [_db(x) for x in per_out]})
        if cut:  # raced out: more than RACE_DB below the best on the first samples
            rows[-1].update(samples=race, raced_out=True)
        elif done:  # converged before the last scoring sample
            rows[-1].update(samples=len(nsr), converged=True)
        scored[key] = rows[-1]
        if not cut and (best is None or _prefix_sqnr(per_sample, best[3]) > _prefix_sqnr(best[3], per_sample) + TIE_DB):
            best = (score, cal, first, per_sample)
    if best is None:  # nothing ran: min-max, as before auto existed
        best = (-math.inf, Calibration.parse("minmax", prep.cal.bins), -math.inf, [])
    where = "held-out calibration samples" if held_out else "calibration samples (no held-out ones: pass more than --calib-samples for that)"
    choice = {
        "chosen": str(best[1]),
        "score": "SQNR (dB) of the first float output against fp32, higher is better",
        "samples": len(idx),
        "held_out": held_out,
        "candidates": rows,
    }
    note = (
        f"calibration auto: chose {best[1]} by output SQNR against fp32 on {len(idx)} {where}: "
        + ", ".join(f"{r['method']} {r['sqnr_db']} dB" + (f" (raced out after {r['samples']})" if r.get("raced_out") else "")
                    + (f" (converged after {r['samples']})" if r.get("converged") else "")
                    if "error" not in r else f"{r['method']} failed" for r in rows)
    )
    return dataclasses.replace(prep, cal=best[1], choice=choice, notes=[*prep.notes, note])
