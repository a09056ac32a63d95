"""Loading, checking and describing ONNX models, safely.

Models come from strangers: external-data locations must stay inside the
model's folder, and nothing is executed while reading.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Any

import numpy as np

from .artifact import Artifact, IoSpec, TensorSpec
from .errors import ModelError

QUANT_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
    "QLinearAdd", "QLinearMul", "QGemm", "MatMulInteger", "ConvInteger", "MatMulNBits",
    "DynamicQuantizeMatMul", "GatherBlockQuantized", "QAttention",
})


def _onnx():
    import onnx

    return onnx


def np_dtype(elem_type: int) -> str:
    onnx = _onnx()
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except Exception:  # noqa: BLE001 - unknown/undefined element types
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def _value_info_spec(vi: Any) -> TensorSpec:
    t = vi.type.tensor_type
    dims: list[int | str | None] = []
    if t.HasField("shape"):
        for d in t.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
    return TensorSpec(name=vi.name, dtype=np_dtype(t.elem_type), shape=tuple(dims))


def io_spec(model: Any) -> IoSpec:
    inits = {i.name for i in model.graph.initializer}
    inputs = tuple(_value_info_spec(v) for v in model.graph.input if v.name not in inits)
    outputs = tuple(_value_info_spec(v) for v in model.graph.output)
    return IoSpec(inputs=inputs, outputs=outputs)


def default_opset(model: Any) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return 0


def check_external_locations(model: Any, base_dir: Path) -> None:
    """Refuse external-data locations that leave ``base_dir`` (.., absolute, links)."""
    onnx = _onnx()
    from onnx.external_data_helper import _get_all_tensors

    base = Path(os.path.realpath(base_dir))
    for tensor in _get_all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        loc = info.get("location", "")
        bad = (
            not loc
            or os.path.isabs(loc)
            or loc.startswith(("/", "\\"))
            or ".." in Path(loc.replace("\\", "/")).parts
            or ":" in loc
        )
        full = base / loc
        if not bad:
            real = Path(os.path.realpath(full))
            bad = base not in real.parents or full.is_symlink()
        if bad:
            raise ModelError(
                f"external data of tensor '{tensor.name}' points outside the model folder ({loc!r})",
                "external data files must sit in the model's folder; refusing to read it",
            )
        for key in ("offset", "length"):
            if key in info:
                try:
                    value = int(info[key])
                except ValueError:
                    value = -1
                if value < 0:
                    raise ModelError(
                        f"external data of tensor '{tensor.name}' has an invalid {key} {info[key]!r}",
                        "the model file is corrupt; re-export it",
                    )
        if not full.is_file():
            raise ModelError(
                f"external data file {loc!r} of tensor '{tensor.name}' is missing",
                "copy the model together with its external data files",
            )
        size = full.stat().st_size
        end = int(info.get("offset", 0)) + int(info.get("length", size - int(info.get("offset", 0))))
        if end > size:
            raise ModelError(
                f"external data of tensor '{tensor.name}' reads past the end of {loc!r}",
                "the external data file is truncated or the model is corrupt",
            )


def load_model(path: str | Path, *, load_weights: bool = True) -> Any:
    """Read an ONNX model with clear errors; external data is checked before it is read."""
    onnx = _onnx()
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file not found: {path}", "check the path")
    if path.is_dir():
        raise ModelError(f"{path} is a folder, not an ONNX file", "pass the .onnx file inside it")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises several types
        raise ModelError(
            f"{path} is not a readable ONNX model ({type(e).__name__})",
            "pass an .onnx file written by an ONNX exporter",
        ) from None
    if model.ir_version <= 0 or not model.HasField("graph") or len(model.graph.node) == 0:
        raise ModelError(
            f"{path} is not an ONNX model (no graph or no nodes)",
            "pass an .onnx file written by an ONNX exporter",
        )
    check_external_locations(model, path.parent)
    if load_weights:
        from onnx.external_data_helper import load_external_data_for_model

        try:
            load_external_data_for_model(model, str(path.parent))
        except Exception as e:  # noqa: BLE001
            raise ModelError(f"cannot read external data of {path}: {e}", "re-export the model") from None
    return model


def check_model(path: Path) -> None:
    """Run the ONNX checker (by path, so models over 2 GiB work)."""
    onnx = _onnx()
    try:
        onnx.checker.check_model(str(path), full_check=False)
    except Exception as e:  # noqa: BLE001
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{path} fails the ONNX checker: {first}", "re-export the model with a current exporter") from None


def artifact_from(path: Path, provenance: tuple[str, ...] = ()) -> Artifact:
    model = load_model(path, load_weights=False)
    return Artifact(path=Path(path), io=io_spec(model), opset=default_opset(model), provenance=provenance)


def iter_nodes(graph: Any):
    """Every node, including those inside If/Loop/Scan subgraphs."""
    onnx = _onnx()
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from iter_nodes(g)


def iter_initializers(graph: Any):
    onnx = _onnx()
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_initializers(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from iter_initializers(g)


def op_histogram(model: Any) -> dict[str, int]:
    counts = collections.Counter(
        (f"{n.domain}." if n.domain not in ("", "ai.onnx") else "") + n.op_type for n in iter_nodes(model.graph)
    )
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def param_stats(model: Any) -> tuple[int, int]:
    """(number of parameters, bytes of parameters) over all initializers."""
    onnx = _onnx()
    count = 0
    nbytes = 0
    for init in iter_initializers(model.graph):
        n = int(np.prod(init.dims)) if len(init.dims) else 1
        count += n
        if init.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
            nbytes += (n + 1) // 2
        else:
            try:
                itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
            except Exception:  # noqa: BLE001
                itemsize = 4
            nbytes += n * itemsize
    return count, nbytes


def is_quantized(model: Any) -> bool:
    return any(n.op_type in QUANT_OPS for n in iter_nodes(model.graph))


def model_size(path: Path) -> int:
    """File size including external data files next to it."""
    model = load_model(path, load_weights=False)
    onnx = _onnx()
    from onnx.external_data_helper import _get_all_tensors

    total = Path(path).stat().st_size
    seen = set()
    for t in _get_all_tensors(model):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = {e.key: e.value for e in t.external_data}.get("location")
            if loc and loc not in seen:
                seen.add(loc)
                total += (Path(path).parent / loc).stat().st_size
    return total


def describe(path: Path) -> dict[str, Any]:
    """Everything ``edgeq inspect`` prints."""
    model = load_model(path, load_weights=False)
    params, pbytes = param_stats(model)
    return {
        "path": str(path),
        "ir_version": int(model.ir_version),
        "opset": default_opset(model),
        "opset_imports": {(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        **io_spec(model).to_dict(),
        "ops": op_histogram(model),
        "nodes": sum(1 for _ in iter_nodes(model.graph)),
        "parameters": params,
        "parameter_bytes": pbytes,
        "file_bytes": model_size(path),
        "quantized": is_quantized(model),
    }
