"""Reading weights from strangers without running their code.

- ``.pt``/``.pth``/``.bin``: ``torch.load(weights_only=True)`` (torch's restricted
  unpickler: tensors, containers and numbers only). A full-module pickle or a
  TorchScript archive can only be read by running the unpickler on arbitrary
  objects; that needs the user's ``trust_pickle``.
- ``.safetensors``: the header is checked here (length, JSON, dtypes, offsets
  inside the file, sizes, no overlaps) before the ``safetensors`` package reads it.
- Every tensor read must be finite: NaN/Inf weights are refused.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path
from typing import Any

from ..errors import ModelError

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")

# bytes per element of each safetensors dtype (sub-byte types are refused)
_ST_DTYPES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit


class UntrustedPickleError(ModelError):
    """The file can only be read by unpickling arbitrary objects."""


def _trust_hint(path: Path) -> str:
    return (
        f"unpickling {path.name} can run any code it contains: pass --trust-pickle only if you trust "
        "who made it, or save the weights with safetensors / a state dict instead"
    )


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive: a zip with ``code/`` or ``constants.pkl`` under its root folder."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any("/code/" in n or n.endswith("/constants.pkl") for n in names)


def load_pickle_checkpoint(path: Path, *, trust_pickle: bool = False) -> Any:
    """Load a torch checkpoint; weights-only unless ``trust_pickle``.

    Returns whatever the file holds (a state dict, an ``nn.Module`` with
    ``trust_pickle``, or a ``ScriptModule`` for TorchScript with ``trust_pickle``).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path}", "check the path")
    if is_torchscript(path):
        if not trust_pickle:
            raise UntrustedPickleError(
                f"{path.name} is a TorchScript archive (pickled objects and code); edgeq does not load it by default",
                _trust_hint(path),
            )
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception as e:  # noqa: BLE001
            raise ModelError(f"cannot load TorchScript {path.name}: {_first(e)}", "re-save the model") from None
    if trust_pickle:
        try:
            return torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001
            raise ModelError(f"cannot unpickle {path.name}: {_first(e)}", "re-save the checkpoint") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - UnpicklingError and friends
        text = _first(e)
        if "weights_only" in str(e) or "Unsupported global" in str(e) or "UnpicklingError" in type(e).__name__:
            raise UntrustedPickleError(
                f"{path.name} is not a plain weights file: it pickles arbitrary Python objects ({_global_name(str(e))})",
                _trust_hint(path),
            ) from None
        raise ModelError(f"cannot read checkpoint {path.name}: {text}", "re-save it with torch.save(model.state_dict())") from None
    return obj


def _global_name(text: str) -> str:
    import re

    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if m:
        return f"it needs {m.group(1)}"
    m = re.search(r"Unsupported operand (\d+)", text)
    if m:
        return f"pickle opcode {m.group(1)} is not allowed"
    return _first_line(text)[:120]


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0]


def _first(e: BaseException) -> str:
    return _first_line(str(e))[:300] or type(e).__name__


def state_dict_from(obj: Any, path: Path) -> dict[str, Any]:
    """The tensors of a weights-only checkpoint (a state dict, maybe under 'state_dict'/'model')."""
    import torch

    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(
            f"{path.name} does not hold a state dict of tensors",
            "save it with torch.save(model.state_dict()) or safetensors",
        )
    check_finite(obj, path)
    return obj


def check_finite(tensors: dict[str, Any], path: Path) -> None:
    """Refuse NaN/Inf in floating-point weights (names the first few)."""
    import torch

    bad = [k for k, v in tensors.items() if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ModelError(
            f"{path.name} holds non-finite weights (NaN or Inf) in {', '.join(bad[:3])}{more}",
            "the checkpoint is corrupt or the training diverged; export a finite one",
        )


def check_safetensors_header(path: Path) -> dict[str, Any]:
    """Validate a .safetensors header against the file; returns the parsed header."""
    path = Path(path)
    size = path.stat().st_size
    where = f"safetensors file {path.name}"
    if size < 8:
        raise ModelError(f"{where} is truncated ({size} bytes)", "re-save the weights")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > _MAX_HEADER or 8 + n > size:
            raise ModelError(
                f"{where}: header length {n} runs past the end of the file ({size} bytes)",
                "the file is truncated or corrupt; re-save the weights",
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelError(f"{where}: header is not valid JSON", "the file is corrupt; re-save the weights") from None
    if not isinstance(header, dict):
        raise ModelError(f"{where}: header is not a JSON object", "the file is corrupt; re-save the weights")
    data_len = size - 8 - n
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
            raise ModelError(f"{where}: tensor '{name}' has a malformed entry", "re-save the weights")
        dtype, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in _ST_DTYPES:
            raise ModelError(f"{where}: tensor '{name}' has unsupported dtype {dtype!r}", "save the weights as F32/F16/BF16")
        ok = (
            isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
            and isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) for o in offs)
        )
        if not ok:
            raise ModelError(f"{where}: tensor '{name}' has a malformed shape or data_offsets", "re-save the weights")
        start, end = offs
        count = 1
        for d in shape:
            count *= d
        if not (0 <= start <= end <= data_len):
            raise ModelError(
                f"{where}: tensor '{name}' data range [{start}, {end}) lies outside the {data_len}-byte data section",
                "the file is truncated or corrupt; re-save the weights",
            )
        if end - start != count * _ST_DTYPES[dtype]:
            raise ModelError(
                f"{where}: tensor '{name}' has {end - start} bytes for shape {shape} {dtype}",
                "the file is corrupt; re-save the weights",
            )
        spans.append((start, end, name))
    spans.sort()
    for (s0, e0, a), (s1, e1, b) in zip(spans, spans[1:]):
        if s1 < e0:
            raise ModelError(
                f"{where}: tensors '{a}' and '{b}' overlap in the data section",
                "the file is corrupt or crafted; re-save the weights",
            )
    return header


def load_safetensors(path: Path) -> dict[str, Any]:
    """Header-checked, finite tensors of a .safetensors file (torch tensors on CPU)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}", "check the path")
    check_safetensors_header(path)
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ModelError("reading .safetensors needs the safetensors package", "pip install 'edgeq[hf]'") from None

    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as e:  # noqa: BLE001 - SafetensorError
        raise ModelError(f"cannot read safetensors file {path.name}: {_first(e)}", "re-save the weights") from None
    check_finite(tensors, path)
    return tensors


def load_weights(path: Path, *, trust_pickle: bool = False) -> dict[str, Any]:
    """A state dict from ``.safetensors`` or a weights-only torch checkpoint."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        return load_safetensors(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return state_dict_from(load_pickle_checkpoint(path, trust_pickle=trust_pickle), path)
    raise ModelError(f"unknown weights format {path.suffix!r} ({path.name})", "use .safetensors, .pt, .pth or .bin")
