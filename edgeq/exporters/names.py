"""Input and output names of a PyTorch export, known before the export runs.

Inputs: ``--input-names`` (in ``forward()`` order), else the name given in
``--example-shape NAME=...``, else ``forward()``'s parameter name, else ``input``
(``input_0``, ``input_1``, ... for several). Outputs: ``--output-names``, else the
keys of a returned dict / ``ModelOutput`` or the fields of a returned namedtuple,
else ``output`` (``output_0``, ...). So the names an app TOML must use are known
(and checked) before the export, and never torch's internal ``linear_1``.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ModelError

_MAX_NAME = 128
_NAME_RE = re.compile(r"^[A-Za-z_][\w.:/-]*$")


def parse_names(values: Sequence[str] | None, flag: str) -> tuple[str, ...]:
    """``["image,mask"]`` or ``["image", "mask"]`` -> ``("image", "mask")``; refuses empty, odd or repeated names."""
    names = [n.strip() for v in values or () for n in v.split(",")]
    if not names:
        return ()
    for n in names:
        if not n or len(n) > _MAX_NAME or not _NAME_RE.match(n):
            shown = n[:40].encode("unicode_escape").decode()
            raise ModelError(f"bad name '{shown}' in {flag}", "names start with a letter or _, then letters, digits, _ . : / - (comma-separated)")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ModelError(f"{flag} names {', '.join(dup)} more than once", "give each name once")
    return tuple(names)


def forward_params(module: Any) -> list[str]:
    """Positional parameter names of ``module.forward`` (``self`` excluded), in order."""
    fwd = getattr(module, "forward", None)
    if fwd is None:
        return []
    try:
        sig = inspect.signature(fwd)
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in sig.parameters.values() if p.kind in kinds]


def _default(stem: str, i: int, n: int) -> str:
    return stem if n == 1 else f"{stem}_{i}"


def input_names_for(keys: Sequence[str], given: Sequence[str], forward: Sequence[str], unnamed: str) -> list[str]:
    """Final input names for example inputs keyed ``keys`` (``unnamed``-prefixed keys carry no name)."""
    if given and len(given) != len(keys):
        raise ModelError(
            f"--input-names gives {len(given)} name(s) for {len(keys)} example input(s)",
            "give one name per --example-shape, in forward() order",
        )
    out = []
    for i, k in enumerate(keys):
        if given:
            out.append(given[i])
        elif not k.startswith(unnamed):
            out.append(k)
        elif i < len(forward):
            out.append(forward[i])
        else:
            out.append(_default("input", i, len(keys)))
    dup = sorted({n for n in out if out.count(n) > 1})
    if dup:
        raise ModelError(f"two inputs would be named {', '.join(dup)}", "name each input once (--input-names a,b)")
    return out


def structure_names(obj: Any, prefix: str | None = None) -> list[str | None]:
    """One name (or None) per tensor of a forward() result, in the order the exporters flatten it."""
    import torch

    if isinstance(obj, torch.Tensor):
        return [prefix]
    if isinstance(obj, Mapping):
        return [n for k, v in obj.items() for n in structure_names(v, str(k) if prefix is None else f"{prefix}_{k}")]
    fields = getattr(type(obj), "_fields", None)
    if isinstance(obj, tuple) and fields:  # namedtuple
        return [n for k, v in zip(fields, obj) for n in structure_names(v, k if prefix is None else f"{prefix}_{k}")]
    if isinstance(obj, (list, tuple)):
        return [n for i, v in enumerate(obj) for n in structure_names(v, None if prefix is None else f"{prefix}_{i}")]
    if hasattr(obj, "to_tuple"):
        return structure_names(obj.to_tuple(), prefix)
    return []


def output_names_for(result: Any, given: Sequence[str]) -> list[str]:
    """Final output names for what forward() returned."""
    found = structure_names(result)
    if not found:
        raise ModelError("forward() returned no tensors", "return a tensor, a tuple of tensors or a dict of tensors")
    if given:
        if len(given) != len(found):
            raise ModelError(
                f"--output-names gives {len(given)} name(s) but forward() returns {len(found)} tensor(s)",
                "give one name per returned tensor, in order",
            )
        return list(given)
    out = [n if n else _default("output", i, len(found)) for i, n in enumerate(found)]
    seen: dict[str, int] = {}
    for i, n in enumerate(out):  # a dict key may equal a default name
        seen[n] = seen.get(n, 0) + 1
        if seen[n] > 1:
            out[i] = f"{n}_{i}"
    return out
