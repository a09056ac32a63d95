"""What every trip shares: the progress a trip reports to, the option groups export shares with quantize and
bundle (declared once, edgeq.cli.options), and the checks on the models a user names."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.artifact import Artifact
from ..core.data import LABELS_KEY
from ..quantization.spec import QuantSpec
from ..core.targets import Target


class Progress:
    """Where a trip reports its stages and calibration samples (the CLI passes a terminal one)."""

    def stage(self, name: str) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def sample(self) -> None:
        return None


def quiet_progress(total_samples: int = 0) -> Progress:
    return Progress()


ProgressFactory = Callable[[int], Any]
"""calibration samples to expect -> an object with ``stage(name)`` (a context manager) and ``sample()``"""


@dataclass(frozen=True)
class QuantOptions:
    """The quantization options ``edgeq export`` and ``edgeq quantize`` share (declared once, edgeq.cli.options)."""

    quant: str | None = None
    calib: Path | None = None
    eval: Path | None = None
    fmt: str | None = None
    activation_type: str | None = None
    weight_type: str | None = None
    per_channel: bool | None = None
    reduce_range: bool | None = None
    calib_samples: int | None = None
    calibration: str | None = None
    calib_bins: int | None = None
    max_drop: float | None = None
    image_preprocess: Path | None = None
    prefer: str | None = None
    static_shape: tuple[str, ...] | None = None
    opset: int | None = None
    block_size: int | None = None
    symmetric: bool | None = None
    accuracy_level: int | None = None
    scale_dtype: str | None = None
    algo: str | None = None
    keep: str | None = None
    override: tuple[str, ...] | None = None

    def spec(self, target: Target) -> QuantSpec:
        """The target's quantization defaults with these options over them (checked)."""
        from ..quantization.spec import parse_keep, parse_overrides

        return target.quant.with_overrides(
            mode=self.quant, format=self.fmt, activation_type=self.activation_type, weight_type=self.weight_type,
            per_channel=self.per_channel, reduce_range=self.reduce_range, calib_samples=self.calib_samples,
            calibration=self.calibration, calib_bins=self.calib_bins,
            block_size=self.block_size, symmetric=self.symmetric, accuracy_level=self.accuracy_level,
            algo=self.algo, scale_dtype=self.scale_dtype, keep=parse_keep(self.keep), overrides=parse_overrides(self.override) or None,
        )

    def check_prefer(self) -> None:
        from ..quantization.selection.gate import PREFERENCES

        if self.prefer is not None and self.prefer not in PREFERENCES:
            from ..errors import EdgeqError

            raise EdgeqError(f"unknown --prefer '{self.prefer}'", f"choose one of {', '.join(PREFERENCES)}")


@dataclass(frozen=True)
class BundleOptions:
    """What goes into a bundle besides the model; ``edgeq export`` and ``edgeq bundle`` share these."""

    golden: int = 3
    labels_key: str = LABELS_KEY
    preprocess: Path | None = None
    labels: Path | None = None
    archive: str | None = None
    sign: Path | None = None
    bundle_version: int = 0


def check_coverage_share(minimum: float | None) -> None:
    """--min-accel-coverage is a share between 0 and 1 (checked before any work, by export and profile alike)."""
    if minimum is not None and not 0.0 <= minimum <= 1.0:
        from ..errors import TargetError

        raise TargetError(f"--min-accel-coverage {minimum} is not a share between 0 and 1", "e.g. --min-accel-coverage 0.95")


def check_onnx_path(src: Path) -> None:
    """An .onnx file the user named: a regular file that exists (checked before it is opened)."""
    from ..core.fsutil import require_regular_file
    from ..errors import ModelError

    require_regular_file(src, "model", ModelError)
    if not src.exists():
        raise ModelError(f"model file not found: {src}", "check the path")
    if src.suffix.lower() != ".onnx":
        raise ModelError(
            f"{src} is not an .onnx file",
            "this version of edgeq exports from ONNX; export PyTorch models with torch.onnx.export first",
        )


def open_model(path: Path, provenance: tuple[str, ...] = ()) -> Artifact:
    """A model path from the user is untrusted: checked as data, then probed in a child, then opened."""
    from ..core.isolate import open_source

    return open_source(Path(path), provenance)


def check_budget(recipe: dict, where: Path, has_eval: bool = True) -> None:
    """--max-drop / the gate: raise CheckFailed when no quantized model met the accuracy budget
    (edgeq.checks.verdict.budget_failure: the same line the verdict records)."""
    from ..checks.hints import after_budget_missed
    from ..checks.verdict import budget_failure
    from ..errors import CheckFailed

    why = budget_failure(recipe)
    if why is None:
        return
    gate = recipe.get("gate")
    budget = gate if gate and gate.get("met") is False else recipe.get("search") or {}
    raise CheckFailed(f"{why} (in {where}, with the {'gate' if budget is gate else 'search'} log)", after_budget_missed(budget, has_eval=has_eval))
