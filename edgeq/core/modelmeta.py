"""What an ONNX file declares about itself in ``metadata_props``.

Exporters store what the app needs to feed the model there; Ultralytics detectors, for
example, carry ``imgsz`` ("[640, 640]"), ``stride`` and class ``names``. ``edgeq
inspect`` shows these (escaped, long values shortened), and a declared ``imgsz``
gives the height and width where edgeq needs a concrete size: pinning a static shape
for a target that needs one, and synthesizing inputs (random calibration, golden
inputs, profiling) for an image input whose height/width are dynamic.

Values come from the file: they are data, shown escaped and never interpreted beyond
parsing ``imgsz`` as one or two bounded integers.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

MAX_SHOWN = 120  # characters of a value shown in the terminal
MAX_JSON = 64 * 1024  # characters of a value kept in --json
MAX_SIDE = 16384
_IMGSZ_RE = re.compile(r"^\s*[\[(]?\s*(\d{1,5})\s*(?:,\s*(\d{1,5})\s*)?,?\s*[\])]?\s*$")


def metadata(model: Any) -> dict[str, str]:
    """The model's ``metadata_props`` as a dict (the last value of a repeated key wins)."""
    return {str(p.key): str(p.value) for p in model.metadata_props}


def parse_imgsz(text: str | None) -> tuple[int, int] | None:
    """``"[640, 640]"``, ``"(480, 640)"`` or ``"640"`` -> (height, width); anything else -> None."""
    if not text or len(text) > 64:
        return None
    m = _IMGSZ_RE.match(text)
    if not m:
        return None
    h = int(m.group(1))
    w = int(m.group(2)) if m.group(2) else h
    return (h, w) if 0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE else None


def declared_imgsz(model: Any) -> tuple[int, int] | None:
    return parse_imgsz(metadata(model).get("imgsz"))


def hw_axes(shape: tuple[Any, ...]) -> tuple[int, int] | None:
    """Which axes of a 4-D image input are height and width, when both are dynamic:
    NCHW (channels at axis 1) or NHWC (channels last)."""
    if len(shape) != 4:
        return None
    dyn = [not isinstance(d, int) for d in shape]
    if dyn[2] and dyn[3] and not dyn[1]:
        return (2, 3)
    if dyn[1] and dyn[2] and not dyn[3]:
        return (1, 2)
    return None


def imgsz_shape(shape: tuple[Any, ...], imgsz: tuple[int, int] | None) -> tuple[int, ...] | None:
    """``shape`` with a dynamic batch set to 1 and dynamic height/width set to ``imgsz``;
    None when there is no declared size, no dynamic height/width, or another dynamic axis."""
    axes = hw_axes(shape) if imgsz else None
    if axes is None:
        return None
    dims = list(shape)
    dims[axes[0]], dims[axes[1]] = imgsz
    if not isinstance(dims[0], int):
        dims[0] = 1
    return tuple(dims) if all(isinstance(d, int) for d in dims) else None


def clean(text: str, limit: int = MAX_SHOWN) -> str:
    """One printable line of at most ``limit`` characters: control and format characters dropped, rest shortened."""
    kept = "".join(" " if ch in "\t\n\r" else ch for ch in text if ch in "\t\n\r" or unicodedata.category(ch)[0] != "C")
    kept = " ".join(kept.split())
    return kept if len(kept) <= limit else kept[: limit - 1] + "…"


def for_json(meta: dict[str, str]) -> dict[str, str]:
    """--json: every key and value, values over ``MAX_JSON`` characters cut (JSON escapes the rest)."""
    return {k[:MAX_JSON]: (v if len(v) <= MAX_JSON else v[:MAX_JSON] + "…") for k, v in meta.items()}


def metadata_table(meta: dict[str, str]):
    """The 'metadata' section of ``edgeq inspect``: control characters dropped, long values shortened,
    shown as plain ``Text`` (no rich markup or ``:emoji:`` codes from the file take effect)."""
    from rich.table import Table
    from rich.text import Text

    t = Table(title="metadata (metadata_props, as declared by the file)")
    t.add_column("key")
    t.add_column("value")
    for k, v in meta.items():
        shown = clean(v)
        more = f"  ({len(v):,} characters)" if shown.endswith("…") else ""
        t.add_row(Text(clean(k, 60)), Text(shown + more))  # Text: never parsed as rich markup or emoji codes
    size = parse_imgsz(meta.get("imgsz"))
    if size:
        t.caption = f"imgsz {size[0]}x{size[1]}: used for dynamic height/width where edgeq needs a size"
    return t
