"""The prefill graph of a static KV-cache decoder: the one-token step graph with its chunk dimensions widened.

The static graph (``build_decoder(..., static_context=M)``) takes every position-dependent
tensor from the host (``static_decoder.py``), so its nodes do not depend on how many tokens
a run takes: the prefill graph is the same nodes and the same initializers, with only the
declared chunk dimension of ``input_ids``, the host inputs and ``logits`` changed. Deriving it
from the graph that ships (after optimization and quantization) keeps the two graphs' weights
identical; written beside a step graph whose weights are external data, its initializers point
into the same file at the same offsets, so a bundle stores the weights once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ModelError
from .static_decoder import BIAS, BIAS_SLIDING, DEFAULT_CHUNK, ROTARY, WRITE

# the axis that holds the chunk, per input / output of a static graph
CHUNK_AXES = {"input_ids": 1, BIAS: 3, BIAS_SLIDING: 3, WRITE: 2, "logits": 1, **{n: 1 for pair in ROTARY.values() for n in pair}}


def chunk_for(slots: int, chunk: int = 0) -> int:
    """The prefill chunk: ``chunk`` (or the default), bounded by the slots."""
    return max(1, min(int(chunk or DEFAULT_CHUNK), int(slots)))


def _dims(vi: Any) -> list[Any]:
    return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]


def step_chunk(model: Any) -> int | None:
    """The fixed ``input_ids`` length of a static decoder's graph, else None."""
    ids = next((i for i in model.graph.input if i.name == "input_ids"), None)
    dims = _dims(ids) if ids is not None else []
    return dims[1] if len(dims) == 2 and None not in dims else None


def prefill_model(step: Any, chunk: int) -> Any:
    """A copy of the one-token static graph ``step`` taking ``chunk`` tokens per run (initializers as they are)."""
    import onnx

    if step_chunk(step) != 1 or not any(i.name.startswith("past_key_values.") for i in step.graph.input):
        raise ModelError("the prefill graph is derived from a one-token static KV-cache decoder", "export with a static-shape target")
    out = onnx.ModelProto()
    out.CopyFrom(step)
    g = out.graph
    del g.value_info[:]  # shapes inside the graph follow the inputs (onnxruntime infers them)
    for vi in list(g.input) + list(g.output):
        axis = CHUNK_AXES.get(vi.name)
        if axis is not None:
            dim = vi.type.tensor_type.shape.dim[axis]
            if dim.dim_value != 1:
                raise ModelError(f"static decoder input '{vi.name}' has {dim.dim_value} at its chunk axis, not 1", "re-export the model")
            dim.dim_value = int(chunk)
    return out


def write_prefill(step_path: Path, out: Path, chunk: int = 0) -> Path:
    """``out`` beside ``step_path``: its prefill graph of ``chunk`` tokens per run (0: the default, bounded by the
    slots); external weights stay where the step graph's point (the same file and offsets)."""
    import onnx

    step_path, out = Path(step_path), Path(out)
    if out.parent.resolve() != step_path.parent.resolve():
        raise ModelError("the prefill graph is written beside its step graph", "pass a path in the same folder")
    step = onnx.load(str(step_path), load_external_data=False)
    past = next((i for i in step.graph.input if i.name.startswith("past_key_values.")), None)
    slots = (_dims(past)[2:3] or [None])[0] if past is not None else None
    onnx.save_model(prefill_model(step, chunk_for(slots or 1, chunk)), str(out))
    return out
