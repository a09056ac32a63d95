"""What the app must do around the model: pre-processing per input, post-processing per output, labels.

``--preprocess FILE.toml`` holds one table per model input and output::

    [inputs.x]
    layout = "NCHW"              # NCHW | NHWC | NCW | NWC | NC | NTC | any
    color = "RGB"                # RGB | BGR | GRAY (images only)
    resize = [224, 224]          # height, width the app resizes to (or one number: shorter side)
    crop = [224, 224]            # centre crop after resizing (optional)
    dtype = "float32"            # float32 | float16 | uint8 (uint8: raw pixels, no scaling)
    scale = 0.00392156862745098  # raw value * scale, then
    mean = [0.485, 0.456, 0.406] # - mean, then
    std = [0.229, 0.224, 0.225]  # / std (per channel, or one value)
    mask = "real"                # a token mask: real | padding (what non-zero marks) | none (not one); else found by name

    [outputs.y]
    activation = "softmax"       # none | softmax | sigmoid
    labels = true                # the last axis indexes labels.txt
    task = "detection"           # what verify checks (optional; inferred otherwise): see docs/task-checks.md
    box_format = "cxcywh"        # + the task's parameters (score_threshold, iou, threshold, blank, ...)

``--labels labels.txt``: one label per line, UTF-8, copied into the bundle.

The same file drives image-folder calibration and evaluation (edgeq/core/images.py), so the
pixels edgeq calibrates on are the pixels the app is told to produce.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .artifact import IoSpec
from ..errors import BundleError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

LAYOUTS = ("NCHW", "NHWC", "NCW", "NWC", "NC", "NTC", "any")
COLORS = ("RGB", "BGR", "GRAY")
ACTIVATIONS = ("none", "softmax", "sigmoid")
DTYPES = ("float32", "float16", "uint8")
MASK_MEANINGS = ("real", "padding", "none")
"""[inputs.NAME] mask: what a non-zero entry of a token mask marks, or none (not a token mask): edgeq.checks.masking"""
_REAL_MASK_NAMES = ("attention_mask", "input_mask", "mask", "attn_mask", "token_mask")
_REAL_MASK_SUFFIXES = ("_attention_mask", "_input_mask")
_PADDING_MASK_NAMES = ("padding_mask", "key_padding_mask", "pad_mask")
_PADDING_MASK_SUFFIXES = ("_padding_mask",)
_IN_KEYS = {"layout", "color", "resize", "crop", "dtype", "scale", "mean", "std", "mask"}
_OUT_KEYS = {"activation", "labels"}
MAX_SPEC_BYTES = 1 << 20
MAX_LABELS_BYTES = 16 << 20
LABELS_FILE = "labels.txt"


def mask_meaning(name: str, declared: dict[str, Any] | None = None) -> str | None:
    """What an input named ``name`` is as a token mask: ``real`` (non-zero marks real tokens), ``padding``
    (non-zero marks padding), ``none``, or None when neither its ``[inputs.NAME]`` table (``declared``) nor
    a name models use for a mask says so (``attention_mask``, ``input_mask``, ``*_attention_mask`` ...;
    ``padding_mask``, ``key_padding_mask``, ``*_padding_mask`` ...)."""
    if declared and declared.get("mask") in MASK_MEANINGS:
        return declared["mask"]
    n = name.lower()
    if n in _PADDING_MASK_NAMES or n.endswith(_PADDING_MASK_SUFFIXES):
        return "padding"
    if n in _REAL_MASK_NAMES or n.endswith(_REAL_MASK_SUFFIXES):
        return "real"
    return None


def _bad(where: str, what: str) -> BundleError:
    return BundleError(f"{where}: {what}", "see 'edgeq bundle --help' and README (pre/post-processing) for the format")


def _floats(where: str, key: str, v: Any, *, positive: bool = False) -> list[float]:
    vals = v if isinstance(v, list) else [v]
    if not vals or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vals):
        raise _bad(where, f"'{key}' must be a number or a list of numbers")
    out = [float(x) for x in vals]
    if not all(math.isfinite(x) for x in out) or (positive and not all(x > 0 for x in out)):
        raise _bad(where, f"'{key}' must be finite" + (" and positive" if positive else ""))
    return out


def _pixels(v: Any, n: int) -> bool:
    return isinstance(v, list) and len(v) == n and all(isinstance(x, int) and not isinstance(x, bool) and 0 < x <= 65536 for x in v)


def input_spec(where: str, d: dict[str, Any]) -> dict[str, Any]:
    """Check one ``[inputs.NAME]`` table; the result is what the manifest records."""
    unknown = sorted(set(d) - _IN_KEYS)
    if unknown:
        raise _bad(where, f"unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(_IN_KEYS))})")
    out: dict[str, Any] = {}
    if "layout" in d:
        if d["layout"] not in LAYOUTS:
            raise _bad(where, f"layout must be one of {', '.join(LAYOUTS)}")
        out["layout"] = d["layout"]
    if "color" in d:
        color = "GRAY" if d["color"] == "L" else d["color"]
        if color not in COLORS:
            raise _bad(where, f"color must be one of {', '.join(COLORS)}")
        out["color"] = color
    if "resize" in d:
        r = d["resize"]
        if not (_pixels(r, 2) or _pixels([r], 1)):
            raise _bad(where, "resize must be [height, width] in pixels, or one number (the shorter side)")
        out["resize"] = list(r) if isinstance(r, list) else r
    if "crop" in d:
        if not _pixels(d["crop"], 2):
            raise _bad(where, "crop must be [height, width] in pixels")
        out["crop"] = list(d["crop"])
    if "dtype" in d:
        if d["dtype"] not in DTYPES:
            raise _bad(where, f"dtype must be one of {', '.join(DTYPES)}")
        out["dtype"] = d["dtype"]
    if "scale" in d:
        s = _floats(where, "scale", d["scale"])
        if len(s) != 1:
            raise _bad(where, "'scale' must be one number")
        out["scale"] = s[0]
    if "mask" in d:
        if d["mask"] not in MASK_MEANINGS:
            raise _bad(where, f"mask must be one of {', '.join(MASK_MEANINGS)} (what a non-zero entry marks, or none: not a token mask)")
        out["mask"] = d["mask"]
    if "mean" in d:
        out["mean"] = _floats(where, "mean", d["mean"])
    if "std" in d:
        out["std"] = _floats(where, "std", d["std"], positive=True)
    if "mean" in out and "std" in out and len(out["mean"]) != len(out["std"]) and 1 not in (len(out["mean"]), len(out["std"])):
        raise _bad(where, "mean and std must have the same number of channels")
    return out


def _output_spec(where: str, d: dict[str, Any]) -> dict[str, Any]:
    from ..checks.kinds import TASK_KEYS, parse_override

    unknown = sorted(set(d) - _OUT_KEYS - TASK_KEYS)
    if unknown:
        raise _bad(where, f"unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(_OUT_KEYS | TASK_KEYS))})")
    out: dict[str, Any] = parse_override(where, d)
    if "activation" in d:
        if d["activation"] not in ACTIVATIONS:
            raise _bad(where, f"activation must be one of {', '.join(ACTIVATIONS)}")
        out["activation"] = d["activation"]
    if "labels" in d:
        if not isinstance(d["labels"], bool):
            raise _bad(where, "labels must be true or false")
        out["labels"] = d["labels"]
    return out


def _read_spec(path: Path) -> tuple[str, dict[str, Any]]:
    where = f"pre/post-processing file {path.name}"
    if not path.is_file():
        raise BundleError(f"{where} not found", "check the --preprocess path")
    if path.stat().st_size > MAX_SPEC_BYTES:
        raise _bad(where, "file is larger than 1 MiB")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise _bad(where, f"not valid TOML ({e})") from None
    unknown = sorted(set(data) - {"inputs", "outputs"})
    if unknown:
        raise _bad(where, f"unknown table(s) {', '.join(unknown)} (use [inputs.NAME] and [outputs.NAME])")
    for kind in ("inputs", "outputs"):
        if not isinstance(data.get(kind, {}), dict):
            raise _bad(where, f"[{kind}] must be a table of tables")
    return where, data


def check_io_names(path: Path, inputs: Sequence[str], outputs: Sequence[str], *, hint: str) -> None:
    """Before an export: every [inputs.NAME]/[outputs.NAME] must name what the export will produce."""
    where, data = _read_spec(Path(path))
    for kind, names in (("inputs", list(inputs)), ("outputs", list(outputs))):
        for name in data.get(kind, {}):
            if name not in names:
                shown = str(name)[:80].encode("unicode_escape").decode()
                raise BundleError(
                    f"{where}: [{kind}.{shown}] names no {kind[:-1]} of the export "
                    f"(it will have inputs {', '.join(inputs) or '(none)'}; outputs {', '.join(outputs) or '(none)'})",
                    hint,
                )


def load_io_spec(path: Path | None, io: IoSpec) -> dict[str, dict[str, dict[str, Any]]]:
    """Parse and check ``--preprocess``: {"inputs": {name: spec}, "outputs": {name: spec}}."""
    if path is None:
        return {"inputs": {}, "outputs": {}}
    where, data = _read_spec(Path(path))
    return _parse_tables(where, data, io)


def io_spec_from_manifest(manifest: dict[str, Any], io: IoSpec) -> dict[str, dict[str, dict[str, Any]]]:
    """What a bundle's manifest records of the app TOML it was exported with that bears on the verdict (each output's
    ``postprocess``: declared tasks, recurrent states; each input's token ``mask``), checked as ``--preprocess`` is
    against ``io``: a manifest is untrusted, so a value the app TOML could not hold is refused in one line (exit 2)."""
    data: dict[str, dict[str, Any]] = {"inputs": {}, "outputs": {}}
    for t in manifest.get("inputs") or []:
        if isinstance(t, dict) and isinstance(t.get("preprocess"), dict) and "mask" in t["preprocess"]:
            data["inputs"][str(t.get("name"))] = {"mask": t["preprocess"]["mask"]}
    for t in manifest.get("outputs") or []:
        if isinstance(t, dict) and t.get("postprocess"):
            data["outputs"][str(t.get("name"))] = t["postprocess"]
    try:
        return _parse_tables("the bundle's manifest", data, io)
    except BundleError as e:
        raise BundleError(e.message, "rebuild the bundle with edgeq export, or pass --preprocess APP.toml to say what its outputs are") from None


def _parse_tables(where: str, data: dict[str, Any], io: IoSpec) -> dict[str, dict[str, dict[str, Any]]]:
    res: dict[str, dict[str, dict[str, Any]]] = {"inputs": {}, "outputs": {}}
    for kind, names, parse in (("inputs", io.input_names, input_spec), ("outputs", io.output_names, _output_spec)):
        table = data.get(kind, {})
        for name, spec in table.items():
            if name not in names:
                raise _bad(where, f"the model has no {kind[:-1]} named '{name}' (it has {', '.join(names)})")
            if not isinstance(spec, dict):
                raise _bad(where, f"[{kind}.{name}] must be a table")
            res[kind][name] = parse(f"{where} [{kind}.{name}]", spec)
            feeds = res[kind][name].get("feeds")  # a declared recurrent state (edgeq.checks.recurrent): an input of this model
            if feeds is not None and feeds not in io.input_names:
                raise _bad(f"{where} [outputs.{name}]", f"feeds names no input of the model ('{feeds}'; it has {', '.join(io.input_names)})")
    return res


def read_labels(path: Path | None) -> list[str] | None:
    """Check ``--labels``: UTF-8 text, one non-empty label per line."""
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"labels file {path} not found", "check the --labels path")
    if path.stat().st_size > MAX_LABELS_BYTES:
        raise BundleError(f"labels file {path.name} is larger than 16 MiB", "one short label per line is expected")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BundleError(f"labels file {path.name} is not UTF-8 text", "save it as UTF-8, one label per line") from None
    labels = text.splitlines()
    while labels and not labels[-1].strip():
        labels.pop()
    if not labels or any(not x.strip() for x in labels):
        raise BundleError(f"labels file {path.name} is empty or has blank lines", "one non-empty label per line")
    return labels


def check_labels_fit(labels: list[str] | None, spec: dict[str, Any], io: IoSpec) -> None:
    """An output marked ``labels = true`` with a fixed last axis must have one label per index."""
    for out in io.outputs:
        if not spec["outputs"].get(out.name, {}).get("labels"):
            continue
        if labels is None:
            raise BundleError(f"output '{out.name}' is marked labels = true but no --labels file was given", "pass --labels labels.txt")
        last = out.shape[-1] if out.shape else None
        if isinstance(last, int) and last != len(labels):
            raise BundleError(
                f"output '{out.name}' has {last} classes but the labels file has {len(labels)} lines",
                "give one label per class, in index order",
            )
