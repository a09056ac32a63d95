"""Quantization stages; ``quantize`` dispatches on ``QuantSpec.mode``."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def quantize(artifact: Any, spec: Any, out_path: Path, **kwargs: Any) -> Any:
    """Quantize ``artifact`` per ``spec`` into ``out_path``; returns a ``QuantResult``."""
    if getattr(spec, "weight_only", False):
        from .int4 import quantize as int4_quantize

        return int4_quantize(artifact, spec, Path(out_path), **kwargs)
    from .int8 import quantize as int8_quantize

    return int8_quantize(artifact, spec, Path(out_path), **kwargs)
