"""Why an accelerator refused a model: hints that fit, from the model and the bundle's own record.

Used by ``edgeq profile`` (a provider error) and by export (placement that failed). It
imports no measuring code, so every stage can ask it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# ops that only move data: a quantized tensor stays quantized through them
_MOVES = frozenset({"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Identity"})


def unquantized_nodes(model_path: Path) -> list[tuple[str, str]]:
    """In a QDQ model, the nodes whose float output is not quantized again (name, op type).

    A fixed-point accelerator (the HTP) has to run these in float, or not at all.
    """
    from ..core.onnxutil import load_model

    model = load_model(Path(model_path), load_weights=False)
    nodes = list(model.graph.node)
    if not any(n.op_type == "QuantizeLinear" for n in nodes):
        return []
    consumers: dict[str, list[str]] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n.op_type)
    skip = {"QuantizeLinear", "DequantizeLinear", "Shape", "Constant", "Cast"} | _MOVES
    out = []
    for n in nodes:
        if n.op_type in skip:
            continue
        if any(c != "QuantizeLinear" and c not in _MOVES for o in n.output for c in consumers.get(o, [])):
            out.append((n.name or n.op_type, n.op_type))
    return out


def failure_hint(onnx_path: Path | None, target: Any, bundle: Path | None = None, text: str = "") -> str:
    """What to do when the target's provider, present here, refused the model: never a generic hint."""
    from collections import Counter

    parts = []
    if bundle is not None:
        ctx = _bundle_ep_context(bundle)
        if ctx and ctx.get("built") is False:
            same = "the same failure" if _clean(ctx.get("reason", ""))[:60] in text else f"'{_clean(ctx.get('reason', ''))[:200]}'"
            parts.append(f"edgeq export recorded {same} when compiling it: this bundle needs compiling on the device")
    if onnx_path is not None and target.quant.mode == "int8-static":
        try:
            left = unquantized_nodes(Path(onnx_path))
        except Exception:  # noqa: BLE001 - a diagnosis only
            left = []
        if left:
            kinds = ", ".join(f"{t} x{c}" for t, c in Counter(t for _, t in left).most_common(5))
            parts.append(f"{len(left)} node(s) stay float inside the quantized graph ({kinds}): the accelerator runs fixed point; "
                         f"rewrite them into quantizable ops ([ops] rewrites in the target file), or expect the device to fall back to its CPU or fail")
    if not parts:
        parts.append(f"the provider's own words are above: check the node it names against {target.name}'s provider documentation, or run the bundle on the device (edgeq profile BUNDLE --device ssh://...)")
    return "; ".join(parts)


def _bundle_ep_context(bundle: Path) -> dict[str, Any] | None:
    from ..bundles.reader import read_manifest

    try:  # the manifest only (bounded read): the bundle was checked when it was opened for profiling
        return read_manifest(Path(bundle))[1].get("model", {}).get("ep_context")
    except Exception:  # noqa: BLE001 - a diagnosis only
        return None


def _clean(text: Any) -> str:
    """Text from a file, safe on one terminal line."""
    return "".join(c if c.isprintable() else "?" for c in str(text))


