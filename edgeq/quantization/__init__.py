"""Quantization stages; ``quantize`` dispatches on ``QuantSpec.mode``."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def quantize(artifact: Any, spec: Any, out_path: Path, **kwargs: Any) -> Any:
    """Quantize ``artifact`` per ``spec`` into ``out_path``; returns a ``QuantResult``.

    ``tasks``: the app TOML's per-output task overrides, scored by --max-drop and the gate.
    Weight-only modes (int4 / int8-weight / int2) go to ``int4``. With ``prefer``
    (accurate | fastest | smallest), every INT8 candidate this host can run is measured
    against fp32 and the pick within ``budget`` is written (``gate.select``).
    """
    if getattr(spec, "weight_only", False):
        from .weight_only.quantizer import quantize as int4_quantize

        for key in ("prefer", "budget", "evals", "max_drop", "target", "outputs_of", "tasks"):  # INT8-only options
            kwargs.pop(key, None)
        return int4_quantize(artifact, spec, Path(out_path), **kwargs)
    note = None
    if kwargs.get("data") is not None and (spec.mode == "int8-static" or kwargs.get("prefer")):  # calibrated: a recurrent
        # model's state inputs as the app feeds them (edgeq.checks.recurrent)
        from ..checks.recurrent import rolled_calibration
        from .int8.autocal import SCORE_SAMPLES

        # the samples calibration reads, and those --calibration auto scores its candidates on (held out after them)
        kwargs["data"], note = rolled_calibration(artifact.path, kwargs["data"], kwargs.get("tasks"), artifact.io,
                                                  spec.calib_samples + SCORE_SAMPLES)
    res = _int8(artifact, spec, Path(out_path), kwargs)
    if note is None:
        return res
    from dataclasses import replace

    return replace(res, notes=(*res.notes, note))


def _int8(artifact: Any, spec: Any, out_path: Path, kwargs: dict[str, Any]) -> Any:
    from .int8.quantizer import quantize as int8_quantize

    prefer = kwargs.pop("prefer", None)
    budget = kwargs.pop("budget", None)
    target = kwargs.pop("target", None)
    if prefer and spec.mode in ("int8-static", "int8-dynamic"):
        kwargs.pop("outputs_of", None)
        from .selection.gate import select

        drop = kwargs.get("max_drop")
        return select(
            artifact, spec, Path(out_path), data=kwargs.get("data"), evals=kwargs.get("evals"),
            max_drop=drop if drop is not None else (budget if budget is not None else 0.01),
            prefer=prefer, on_sample=kwargs.get("on_sample"), target=target, tasks=kwargs.get("tasks"),
        )
    return int8_quantize(artifact, spec, Path(out_path), **kwargs)
