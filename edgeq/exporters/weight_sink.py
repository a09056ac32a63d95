"""Initializers written straight to one external-data file as a graph builder makes them.

A 1B-parameter decoder is 4.4 GB of fp32 weights: more than one protobuf holds (2 GiB), and
building every ``TensorProto`` in memory before ``onnx.save_model`` serializes them keeps two
more full copies of the weights alive beside the model they came from. ``WeightSink`` appends
each array to ``<model>.onnx.data`` the moment it is made and returns a ``TensorProto`` that
only points at it (relative location, offset, length), so the builder holds one tensor at a
time and the graph protobuf stays small. ``planned_bytes`` tells a builder beforehand whether
the model will be over ``external_data_bytes()`` (the threshold every other stage uses).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

ALIGN = 4096  # each tensor starts on a page boundary (what onnx's own writer does for large tensors; mmap-friendly)


def planned_bytes(state: dict[str, Any], extra: int = 0) -> int:
    """fp32 bytes of the floating-point tensors of a state dict, each shared tensor once (a tied lm_head is the
    embedding under a second name), plus ``extra``: what a float32 graph of them holds."""
    total, seen = int(extra), set()
    for t in state.values():
        if getattr(t, "is_floating_point", lambda: False)() and (t.data_ptr(), t.numel()) not in seen:
            seen.add((t.data_ptr(), t.numel()))
            total += 4 * int(t.numel())
    return total


def over_threshold(nbytes: int) -> bool:
    from ..core.onnxutil import external_data_bytes

    return nbytes > external_data_bytes()


class WeightSink:
    """Appends arrays to ``data_path`` (opened here, truncated) and returns external ``TensorProto``s for them."""

    def __init__(self, data_path: Path) -> None:
        self.path = Path(data_path)
        self._f = open(self.path, "wb")  # noqa: SIM115 - closed by close() / the context manager
        self.bytes = 0

    def tensor(self, name: str, arr: np.ndarray) -> Any:
        from onnx import TensorProto, helper

        a = np.ascontiguousarray(arr)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        pad = -self.bytes % ALIGN
        if pad:
            self._f.write(b"\0" * pad)
            self.bytes += pad
        offset = self.bytes
        self._f.write(a.data)
        self.bytes += a.nbytes
        t = TensorProto()
        t.name = name
        t.data_type = helper.np_dtype_to_tensor_dtype(a.dtype)
        t.dims.extend(a.shape)
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", self.path.name), ("offset", str(offset)), ("length", str(a.nbytes))):
            e = t.external_data.add()
            e.key, e.value = k, v
        return t

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> WeightSink:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
