"""``Artifact``: the frozen record passed from stage to stage."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

Dim = int | str | None


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name, e.g. "float32"
    shape: tuple[Dim, ...]

    def shape_str(self) -> str:
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class IoSpec:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # height, width the model file declares (metadata_props "imgsz"): sizes dynamic image axes edgeq must fill
    imgsz: tuple[int, int] | None = field(default=None, compare=False)
    # inputs where NaN means "missing" to the model (read only by ai.onnx.ml Imputer / tree ensembles): data may hold NaN there
    missing_ok: tuple[str, ...] = field(default=(), compare=False)

    def input(self, name: str) -> TensorSpec:
        for t in self.inputs:
            if t.name == name:
                return t
        raise KeyError(name)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}


@dataclass(frozen=True)
class Artifact:
    """An ONNX model on disk plus what edgeq knows about it."""

    path: Path
    io: IoSpec
    opset: int
    provenance: tuple[str, ...] = ()
    quant: dict[str, Any] | None = field(default=None, compare=False)

    def then(self, path: Path, step: str, **kw: Any) -> Artifact:
        """The artifact a stage produced from this one."""
        return replace(self, path=Path(path), provenance=self.provenance + (step,), **kw)
