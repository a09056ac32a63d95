"""Loading, checking and describing ONNX models, safely.

Models come from strangers: external-data locations must stay inside the
model's folder, and nothing is executed while reading.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .artifact import Artifact, IoSpec, TensorSpec
from ..errors import ModelError, first_line

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


def _type_name(tp: Any) -> str:
    """A non-tensor type as ONNX writes it (a ZipMap's ``seq(map(int64,float32))``), for tables and manifests."""
    kind = tp.WhichOneof("value")
    if kind == "tensor_type":
        return np_dtype(tp.tensor_type.elem_type).replace("object", "string")
    if kind == "sequence_type":
        return f"seq({_type_name(tp.sequence_type.elem_type)})"
    if kind == "map_type":
        return f"map({np_dtype(tp.map_type.key_type).replace('object', 'string')},{_type_name(tp.map_type.value_type)})"
    return kind or "undefined"


def _value_info_spec(vi: Any) -> TensorSpec:
    if vi.type.WhichOneof("value") in ("sequence_type", "map_type"):  # classic ML (ai.onnx.ml ZipMap): no tensor shape
        return TensorSpec(name=vi.name, dtype=_type_name(vi.type)[:32], shape=())
    t = vi.type.tensor_type
    dims: list[int | str | None] = []
    if t.HasField("shape"):
        for d in t.shape.dim:
            if d.HasField("dim_value") and d.dim_value >= 0:  # -1 (some exporters): dynamic
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
    from .modelmeta import declared_imgsz

    return IoSpec(inputs=inputs, outputs=outputs, imgsz=declared_imgsz(model), missing_ok=_missing_ok(model, inputs))


ML_DOMAIN = "ai.onnx.ml"  # classic ML operators (trees, SVMs, scalers, ZipMap): they run in fp32 in every mode
# ai.onnx.ml operators that give NaN a meaning (a missing value): Imputer replaces it, tree ensembles route it down a branch
_MISSING_AWARE = frozenset({"Imputer", "TreeEnsembleClassifier", "TreeEnsembleRegressor", "TreeEnsemble"})


def _missing_ok(model: Any, inputs: tuple[TensorSpec, ...]) -> tuple[str, ...]:
    """The float inputs that reach only missing-value-aware ai.onnx.ml nodes (through Cast/Identity): NaN in their data
    is a missing value the model handles (scikit-learn's SimpleImputer, LightGBM/XGBoost trees), not broken data."""
    users: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)

    def aware(name: str, depth: int = 0) -> bool:
        nodes = users.get(name, [])
        return bool(nodes) and depth < 8 and all(
            (n.domain == ML_DOMAIN and n.op_type in _MISSING_AWARE)
            or (n.domain in ("", "ai.onnx") and n.op_type in ("Cast", "Identity") and all(aware(o, depth + 1) for o in n.output))
            for n in nodes)

    return tuple(t.name for t in inputs if t.dtype in ("float32", "float64", "float16") and aware(t.name))


def imgsz_pins(model: Any, pinned: dict[str, tuple[int, ...]] | None = None) -> dict[str, tuple[int, ...]]:
    """Static shapes for the inputs not already ``pinned`` whose dynamic height/width the declared ``imgsz`` fills."""
    from .modelmeta import declared_imgsz, imgsz_shape

    size = declared_imgsz(model)
    if size is None:
        return {}
    out = {}
    for t in io_spec(model).inputs:
        if t.name in (pinned or {}):
            continue
        shape = imgsz_shape(t.shape, size)
        if shape is not None:
            out[t.name] = shape
    return out


def default_opset(model: Any) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return 0


# Keys the ONNX spec defines for external data; anything else is refused, and so are
# duplicates (a reader that takes the first and one that takes the last would disagree).
EXTERNAL_KEYS = frozenset({"location", "offset", "length", "checksum"})
# One protobuf message (a model file, or one tensor's data) holds at most this many bytes.
PROTOBUF_LIMIT = 2**31 - 1
# Above this many bytes of tensors a model is written with external data (see external_data_bytes).
DEFAULT_EXTERNAL_DATA_BYTES = (2 << 30) - (64 << 20)
EXTERNAL_DATA_ENV = "EDGEQ_EXTERNAL_DATA_BYTES"
_DIGITS = re.compile(r"^[0-9]{1,20}$")


def _outside(tensor: Any, loc: str, why: str) -> ModelError:
    return ModelError(
        f"external data of tensor '{tensor.name}' points outside the model folder ({loc!r}: {why})",
        "external data files must be plain files inside the model's folder; refusing to read it",
    )


def _external_file(tensor: Any, loc: str, base: Path) -> tuple[Path, os.stat_result]:
    """Resolve ``loc`` under ``base``; refuse escapes, links of any kind, and non-files."""
    if not loc:
        raise _outside(tensor, loc, "empty location")
    if "\x00" in loc or "\\" in loc or ":" in loc:
        raise _outside(tensor, loc, "invalid characters")
    if os.path.isabs(loc) or loc.startswith("/"):
        raise _outside(tensor, loc, "absolute path")
    parts = [p for p in loc.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise _outside(tensor, loc, "'..' in the path")
    cur = base
    for part in parts:
        cur = cur / part
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            raise ModelError(
                f"external data file {loc!r} of tensor '{tensor.name}' is missing",
                "copy the model together with its external data files",
            ) from None
        except OSError as e:
            raise _outside(tensor, loc, e.strerror or type(e).__name__) from None
        if stat.S_ISLNK(st.st_mode):
            raise _outside(tensor, loc, "symbolic link")
    if not stat.S_ISREG(st.st_mode):
        raise _outside(tensor, loc, "not a regular file")
    # A hard link inside the folder to a file elsewhere cannot be told apart by its path:
    # edgeq refuses external-data files with more than one link.
    if st.st_nlink > 1:
        raise _outside(tensor, loc, f"hard link ({st.st_nlink} links)")
    real = Path(os.path.realpath(cur))
    if base not in real.parents:
        raise _outside(tensor, loc, "resolves outside")
    return cur, st


def _expected_bytes(tensor: Any) -> int | None:
    onnx = _onnx()
    n = 1
    for d in tensor.dims:
        if d < 0:
            return -1
        n *= int(d)
    if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return (n + 1) // 2
    if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return None
    try:
        return n * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except Exception:  # noqa: BLE001 - types numpy lacks: not checked here
        return None


def check_external_locations(model: Any, base_dir: Path | None) -> int:
    """Check every external-data reference before anything is read; returns the bytes they hold.

    Refused: locations that leave ``base_dir`` (``..``, absolute paths), symbolic links
    anywhere on the path, hard links (``st_nlink > 1``), non-regular files, unknown or
    duplicate keys, offsets/lengths that are not plain non-negative integers, ranges past
    the end of the file, and lengths that do not match the tensor's shape. With
    ``base_dir=None`` (a model given as bytes) any external reference is refused.
    """
    onnx = _onnx()
    from onnx.external_data_helper import _get_all_tensors

    base = Path(os.path.realpath(base_dir)) if base_dir is not None else None
    total = 0
    for tensor in _get_all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info: dict[str, str] = {}
        for e in tensor.external_data:
            if e.key not in EXTERNAL_KEYS:
                raise ModelError(
                    f"external data of tensor '{tensor.name}' has an unknown key {e.key[:40]!r}",
                    f"allowed keys: {', '.join(sorted(EXTERNAL_KEYS))}; the model file is corrupt or crafted",
                )
            if e.key in info:
                raise ModelError(
                    f"external data of tensor '{tensor.name}' repeats the key {e.key!r}",
                    "the model file is corrupt or crafted",
                )
            info[e.key] = e.value
        loc = info.get("location", "")
        if base is None:
            raise ModelError(
                f"tensor '{tensor.name}' refers to external data file {loc[:80]!r}, but the model was given as bytes",
                "load the model from its file so external data is read from the model's folder",
            )
        full, st = _external_file(tensor, loc, base)
        nums = {}
        for key in ("offset", "length"):
            if key in info:
                if not _DIGITS.match(info[key]):
                    raise ModelError(
                        f"external data of tensor '{tensor.name}' has an invalid {key} {info[key][:40]!r}",
                        "the model file is corrupt; re-export it",
                    )
                nums[key] = int(info[key])
        offset = nums.get("offset", 0)
        size = st.st_size
        if offset > size:
            raise ModelError(
                f"external data of tensor '{tensor.name}' starts past the end of {loc!r} (offset {offset}, size {size})",
                "the external data file is truncated or the model is corrupt",
            )
        length = nums.get("length", size - offset)
        if offset + length > size:
            raise ModelError(
                f"external data of tensor '{tensor.name}' reads past the end of {loc!r} "
                f"(offset {offset} + length {length} > size {size})",
                "the external data file is truncated or the model is corrupt",
            )
        want = _expected_bytes(tensor)
        if want is not None and want != length:
            raise ModelError(
                f"external data of tensor '{tensor.name}' holds {length} bytes, its shape "
                f"{list(tensor.dims)} needs {want}",
                "the model file is corrupt; re-export it",
            )
        total += length
    return total


def tensor_bytes(model: Any) -> int:
    """Bytes of every tensor's data (initializers, Constant attributes, subgraphs), from dims and type.

    Computed from the shapes, so external tensors count and nothing is copied."""
    from onnx.external_data_helper import _get_all_tensors

    total = 0
    for t in _get_all_tensors(model):
        n = _expected_bytes(t)
        if n is not None and n > 0:
            total += n
    return total


def external_data_bytes() -> int:
    """Models whose tensors hold more than this many bytes are written with ONNX external data.

    The default stays under the 2 GiB protobuf limit; ``EDGEQ_EXTERNAL_DATA_BYTES`` lowers it
    (tests use it to run the external-data path on tiny models). Values above the default are
    clamped: one protobuf cannot hold more."""
    raw = os.environ.get(EXTERNAL_DATA_ENV, "").strip()
    if not raw:
        return DEFAULT_EXTERNAL_DATA_BYTES
    if not _DIGITS.match(raw):
        raise ModelError(
            f"{EXTERNAL_DATA_ENV}={raw[:40]!r} is not a byte count",
            f"set it to a non-negative integer (e.g. 1048576) or unset it; the default is {DEFAULT_EXTERNAL_DATA_BYTES}",
        )
    return min(int(raw), DEFAULT_EXTERNAL_DATA_BYTES)


def needs_external_data(model: Any) -> bool:
    return tensor_bytes(model) > external_data_bytes()


def check_size(model: Any, what: str = "the model") -> None:
    """Refuse tensors that one ONNX tensor cannot hold (over 2 GiB), before reading them.

    Models over 2 GiB in total are fine: edgeq keeps their weights in external data. A single
    tensor over the protobuf limit cannot be loaded into a ``TensorProto`` (nor written inline)."""
    from onnx.external_data_helper import _get_all_tensors

    for t in _get_all_tensors(model):
        n = _expected_bytes(t)
        if n is not None and n > PROTOBUF_LIMIT:
            raise ModelError(
                f"tensor '{t.name[:80]}' of {what} holds {n / 2**30:.2f} GiB, over the 2 GiB limit for one ONNX tensor",
                "split the weight into several tensors (each under 2 GiB) or quantize it before export",
            )


def _parse(data: bytes, what: str) -> Any:
    onnx = _onnx()
    try:
        model = onnx.load_model_from_string(data)
    except Exception as e:  # noqa: BLE001 - protobuf raises several types
        raise ModelError(
            f"{what} is not a readable ONNX model ({type(e).__name__})",
            "pass an .onnx file written by an ONNX exporter",
        ) from None
    if model.ir_version <= 0 or not model.HasField("graph") or len(model.graph.node) == 0:
        raise ModelError(
            f"{what} is not an ONNX model (no graph or no nodes)",
            "pass an .onnx file written by an ONNX exporter",
        )
    return model


def load_model(path: str | Path, *, load_weights: bool = True) -> Any:
    """Read an ONNX model with clear errors; external data is checked before it is read."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file not found: {path}", "check the path")
    if path.is_dir():
        raise ModelError(f"{path} is a folder, not an ONNX file", "pass the .onnx file inside it")
    if path.stat().st_size > PROTOBUF_LIMIT:
        raise ModelError(
            f"{path} is larger than 2 GiB and cannot be an ONNX protobuf",
            "pass an .onnx file written by an ONNX exporter (large weights go in external data)",
        )
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelError(f"cannot read {path}: {e.strerror}", "check the file's permissions") from None
    model = _parse(data, str(path))
    del data
    check_external_locations(model, path.parent)
    if load_weights:
        check_size(model, path.name)
        _load_external(model, path.parent, str(path))
    return model


def load_model_bytes(data: bytes, *, base_dir: str | Path | None = None, load_weights: bool = True) -> Any:
    """Read an ONNX model from bytes. External data is refused unless ``base_dir`` is given,
    and then checked like a file's (never resolved against the current directory)."""
    model = _parse(bytes(data), "the model bytes")
    external = check_external_locations(model, Path(base_dir) if base_dir is not None else None)
    if load_weights and external:
        check_size(model, "the model bytes")
        _load_external(model, Path(base_dir), "the model bytes")  # type: ignore[arg-type]
    return model


def _load_external(model: Any, base: Path, what: str) -> None:
    from onnx.external_data_helper import load_external_data_for_model

    try:
        load_external_data_for_model(model, str(base))
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"cannot read external data of {what}: {first_line(e, 200)}", "re-export the model") from None


def data_file(path: str | Path) -> Path:
    """The one external-data file edgeq writes for ``path``: ``<name>.data`` beside it."""
    path = Path(path)
    return path.with_name(path.name + ".data")


def save_model(model: Any, path: str | Path, *, external: bool | None = None) -> Path:
    """Write ``model`` to ``path``: one self-contained file, or with external data when large.

    Tensors still marked as external but holding their bytes are written as edgeq chooses,
    so saving never creates or overwrites a file named by the model (``onnx.save`` would
    write it wherever its ``location`` points). Tensors whose bytes were never loaded
    are refused, and so is a tensor over 2 GiB.

    When the tensors hold more than ``external_data_bytes()`` (or ``external=True``), the
    weights go to ONE file, ``data_file(path)`` beside ``path`` with a relative location;
    the in-memory model's tensors then point at it and no longer hold their bytes.
    """
    onnx = _onnx()
    from onnx.external_data_helper import _get_all_tensors

    for t in _get_all_tensors(model):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            if not t.HasField("raw_data"):
                raise ModelError(
                    f"tensor '{t.name}' refers to external data that was not loaded; refusing to save a model that points at other files",
                    "load the model with its weights before saving it",
                )
            t.data_location = onnx.TensorProto.DEFAULT
            del t.external_data[:]
    check_size(model)
    path = Path(path)
    if needs_external_data(model) if external is None else external:
        data = data_file(path)
        data.unlink(missing_ok=True)  # onnx appends to an existing file
        try:
            onnx.save_model(
                model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                location=data.name, size_threshold=1024, convert_attribute=False,
            )
        except Exception as e:  # noqa: BLE001 - protobuf refuses a graph over 2 GiB even without weights
            raise ModelError(
                f"cannot write {path.name} with external data: {first_line(e, 200)}",
                "the graph itself (without weights) may be over 2 GiB: large Constant nodes should be initializers",
            ) from None
        return path
    try:
        data = model.SerializeToString()
    except Exception:  # noqa: BLE001 - protobuf refuses messages over 2 GiB
        data = None
    if data is None or len(data) > PROTOBUF_LIMIT:
        raise ModelError(
            "the model is over the 2 GiB protobuf limit and cannot be written as one file",
            f"let edgeq write it with external data (do not set {EXTERNAL_DATA_ENV} above the default)",
        )
    with open(path, "wb") as f:
        f.write(data)
    return path


def has_external_data(path: str | Path) -> bool:
    """Does the (checked) model at ``path`` keep tensors in external data?"""
    onnx = _onnx()
    from onnx.external_data_helper import _get_all_tensors

    head = load_model(path, load_weights=False)
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in _get_all_tensors(head))


def copy_model(src: str | Path, dst: str | Path, *, data_path: Path | None = None, location: str | None = None) -> bool:
    """Copy the model at ``src`` to ``dst`` without loading its weights; True if it has external data.

    External data (already checked by ``load_model``) is streamed into ONE file, ``data_path``
    (default ``data_file(dst)``), and the graph's references are rewritten to ``location``
    (default that file's name), which must name a file in ``dst``'s folder: a staged copy can
    be written under a temporary name and still point at its final one.
    """
    import shutil

    onnx = _onnx()
    from onnx.external_data_helper import _get_all_tensors

    src, dst = Path(src), Path(dst)
    head = load_model(src, load_weights=False)
    tensors = [t for t in _get_all_tensors(head) if t.data_location == onnx.TensorProto.EXTERNAL]
    if not tensors:
        shutil.copyfile(src, dst)
        return False
    data_path = Path(data_path) if data_path is not None else data_file(dst)
    location = location or data_path.name
    if "/" in location or "\\" in location or location in ("", ".", ".."):
        raise ModelError(f"external data location {location!r} must be a file name", "write the data file beside the model")
    base: dict[str, int] = {}
    with open(data_path, "wb") as out:
        for t in tensors:
            loc = next(e.value for e in t.external_data if e.key == "location")
            if loc in base:
                continue
            pad = -out.tell() % 4096  # each source file starts page-aligned (onnxruntime may map it)
            out.write(b"\0" * pad)
            base[loc] = out.tell()
            with open(src.parent / loc, "rb") as f:
                shutil.copyfileobj(f, out, 16 << 20)
    for t in tensors:
        info = {e.key: e.value for e in t.external_data}
        size = (src.parent / info["location"]).stat().st_size
        offset = int(info.get("offset", "0"))
        length = int(info.get("length", str(size - offset)))
        del t.external_data[:]
        for k, v in (("location", location), ("offset", str(base[info["location"]] + offset)), ("length", str(length))):
            e = t.external_data.add()
            e.key, e.value = k, v
    with open(dst, "wb") as f:
        f.write(head.SerializeToString())
    return True


@contextlib.contextmanager
def session_source(model: Any) -> Iterator[Any]:
    """What ``onnxruntime.InferenceSession`` takes for an in-memory model.

    Its bytes, or for a model too large for one protobuf (``needs_external_data``) the path
    of a copy saved with external data in a private temporary folder, removed on exit (the
    session has read it by then). In that case the model's tensors move to that file: pass
    a model you no longer need (or a copy).
    """
    if not needs_external_data(model):
        yield model.SerializeToString()
        return
    with tempfile.TemporaryDirectory(prefix="edgeq-session-") as d:
        path = Path(d) / "model.onnx"
        save_model(model, path, external=True)
        yield str(path)


def check_model(path: Path) -> None:
    """Run the ONNX checker (by path, so models over 2 GiB work)."""
    onnx = _onnx()
    try:
        onnx.checker.check_model(str(path), full_check=False)
    except Exception as e:  # noqa: BLE001
        first = first_line(e)
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
    """(number of parameters, bytes of parameters) over all initializers, and the floating-point
    tensors of Constant nodes (exporters such as spox keep every weight there, in If branches too;
    integer Constants are shapes and indices, not parameters)."""
    onnx = _onnx()
    count = 0
    nbytes = 0
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)
    consts = [a.t for n in iter_nodes(model.graph) if n.op_type == "Constant" and n.domain in ("", "ai.onnx")
              for a in n.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR and a.t.data_type in floats]
    for init in (*iter_initializers(model.graph), *consts):
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
        **_declared(model),
    }


def _declared(model: Any) -> dict[str, Any]:
    from .modelmeta import declared_imgsz, for_json, metadata

    size = declared_imgsz(model)
    return {"metadata": for_json(metadata(model)), "declared_imgsz": list(size) if size else None}
