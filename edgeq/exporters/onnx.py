"""ONNX sources: load, check, and describe an existing .onnx file."""

from __future__ import annotations

from pathlib import Path

from ..core.artifact import Artifact
from ..errors import ModelError
from ..core.onnxutil import artifact_from, check_model


def export_onnx(src: Path, *, opset: int | None = None, dynamic: bool = True) -> Artifact:
    """An ONNX file is already exported: check it and return its Artifact.

    ``opset`` and ``dynamic`` are accepted for symmetry with the other
    exporters; opset conversion and shape pinning happen in ``optimize``.
    """
    src = Path(src)
    if src.suffix.lower() != ".onnx":
        raise ModelError(f"{src} is not an .onnx file", "pass a model saved with an ONNX exporter")
    art = artifact_from(src, (f"source({src.name})",))
    check_model(src)
    return art
