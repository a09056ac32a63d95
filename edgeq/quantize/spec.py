"""``QuantSpec``: a validated, frozen description of one quantization recipe."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from ..errors import EdgeqError

MODES = ("none", "int8-static", "int8-dynamic", "fp16")
FORMATS = ("qdq", "qoperator")
ACTIVATION_TYPES = ("uint8", "int8", "uint16", "int16")
WEIGHT_TYPES = ("int8", "uint8")
CALIBRATIONS = ("minmax", "percentile:99.99", "entropy", "mse")
PREFERENCES = ("accurate", "fastest", "smallest")


@dataclass(frozen=True)
class QuantSpec:
    mode: str = "int8-static"
    format: str = "qdq"
    activation_type: str = "uint8"
    weight_type: str = "int8"
    per_channel: bool = True
    reduce_range: bool = False
    symmetric_weights: bool = True
    calibration: str = "minmax"
    calib_samples: int = 256
    calib_bins: int = 2048
    """Histogram bins per tensor for percentile/entropy/mse calibration."""
    op_types: tuple[str, ...] = ()
    """Op types to quantize; empty means onnxruntime's default set."""

    def __post_init__(self) -> None:
        _choice("quantization mode", self.mode, MODES, "--quant")
        _choice("quantization format", self.format, FORMATS, "--format")
        _choice("activation type", self.activation_type, ACTIVATION_TYPES, "the target's [quant] table")
        _choice("weight type", self.weight_type, WEIGHT_TYPES, "the target's [quant] table")
        from .calibrate import Calibration

        Calibration.parse(self.calibration, self.calib_bins)  # raises on a bad value
        if self.calib_samples < 1:
            raise EdgeqError(
                f"--calib-samples must be at least 1, got {self.calib_samples}",
                "pass a positive number of calibration samples",
            )
        if self.mode == "int8-dynamic" and self.activation_type not in ("uint8", "int8"):
            raise EdgeqError(
                f"dynamic quantization has no {self.activation_type} activations",
                "use int8-static for 16-bit activations",
            )

    @property
    def needs_calibration(self) -> bool:
        return self.mode == "int8-static"

    def with_overrides(self, **kw: Any) -> QuantSpec:
        return replace(self, **{k: v for k, v in kw.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["op_types"] = list(self.op_types)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> QuantSpec:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise EdgeqError(
                f"{where}: unknown quantization key(s) {', '.join(unknown)}",
                f"known keys: {', '.join(sorted(known))}",
            )
        data = dict(data)
        if "op_types" in data:
            data["op_types"] = tuple(data["op_types"])
        return cls(**data)


def _choice(what: str, value: str, allowed: tuple[str, ...], where: str) -> None:
    if value not in allowed:
        raise EdgeqError(f"unknown {what} '{value}'", f"choose one of {', '.join(allowed)} ({where})")
