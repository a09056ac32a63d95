"""optimize: check, bring the opset into the target's range, pin shapes, fold.

The folding is onnxruntime's *basic* level (constant folding, redundant node
elimination, Conv+BatchNorm and similar fusions): it keeps the graph portable
ONNX that any provider can run, unlike the extended/layout levels.
"""

from __future__ import annotations

from pathlib import Path

from .artifact import Artifact
from .errors import ModelError
from .onnxutil import artifact_from, check_model, default_opset, load_model, save_model
from .runtime import create_session, session_options
from .targets import Target

OPTIMIZE_LEVEL = "basic"


def parse_shapes(specs: list[str] | tuple[str, ...] | None) -> dict[str, tuple[int, ...]]:
    """``["input=1x3x224x224"]`` -> ``{"input": (1, 3, 224, 224)}``."""
    out: dict[str, tuple[int, ...]] = {}
    for spec in specs or ():
        name, sep, dims = spec.partition("=")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
            if not sep or not name or any(d <= 0 for d in shape):
                raise ValueError
        except ValueError:
            raise ModelError(f"bad --static-shape '{spec}'", "write it as NAME=1x3x224x224") from None
        out[name] = shape
    return out


def _pin_shapes(model, target: Target, pins: dict[str, tuple[int, ...]]) -> list[str]:
    """Fix input dims in place; returns notes on what was pinned."""
    notes: list[str] = []
    inits = {i.name for i in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in inits]
    names = {v.name for v in inputs}
    unknown = sorted(set(pins) - names)
    if unknown:
        raise ModelError(f"--static-shape names unknown input(s) {', '.join(unknown)}", f"the model's inputs are {', '.join(sorted(names))}")
    for vi in inputs:
        dims = vi.type.tensor_type.shape.dim
        if vi.name in pins:
            shape = pins[vi.name]
            if len(shape) != len(dims):
                raise ModelError(
                    f"--static-shape {vi.name} has {len(shape)} dims, the input has {len(dims)}",
                    "give one size per dimension",
                )
            for i, (d, size) in enumerate(zip(dims, shape)):
                if d.HasField("dim_value") and d.dim_value != size:
                    raise ModelError(
                        f"--static-shape {vi.name}: axis {i} is fixed to {d.dim_value} in the model, not {size}",
                        "only symbolic dimensions can be pinned",
                    )
                d.dim_value = size
            notes.append(f"pinned {vi.name} to {'x'.join(map(str, shape))}")
        elif target.static_shapes:
            for i, d in enumerate(dims):
                if d.HasField("dim_value"):
                    continue
                if i == 0:
                    d.dim_value = 1
                    notes.append(f"pinned batch axis of {vi.name} to 1 (target {target.name} needs static shapes)")
                else:
                    raise ModelError(
                        f"input {vi.name} axis {i} ('{d.dim_param or '?'}') is dynamic and target {target.name} needs static shapes",
                        f"pin it with --static-shape {vi.name}=" + "x".join("N" for _ in dims),
                    )
    return notes


def strip_debug_info(model) -> int:
    """Drop per-node doc strings and metadata (exporter stack traces that leak local paths)."""
    from .onnxutil import iter_nodes

    count = 0
    for node in iter_nodes(model.graph):
        if node.doc_string or len(node.metadata_props):
            count += 1
            node.doc_string = ""
            del node.metadata_props[:]
    return count


def optimize(
    artifact: Artifact,
    target: Target,
    out_path: Path,
    *,
    static_shapes: dict[str, tuple[int, ...]] | None = None,
    opset: int | None = None,
) -> tuple[Artifact, list[str]]:
    """Return the optimized artifact written to ``out_path`` and notes for the report."""
    import onnx
    from onnx import version_converter

    check_model(artifact.path)
    model = load_model(artifact.path)
    notes: list[str] = []
    current = default_opset(model)
    wanted = opset or target.opset.clamp(current)
    if wanted > target.opset.max or wanted < target.opset.min:
        raise ModelError(
            f"opset {wanted} is outside target {target.name}'s range {target.opset.min}-{target.opset.max}",
            f"choose an opset in that range",
        )
    if current > target.opset.max:
        raise ModelError(
            f"model opset {current} is above target {target.name}'s maximum {target.opset.max}",
            f"re-export the model with opset {target.opset.max}",
        )
    if wanted != current:
        try:
            model = version_converter.convert_version(model, wanted)
        except Exception as e:  # noqa: BLE001
            raise ModelError(
                f"cannot convert the model from opset {current} to {wanted}: {str(e).splitlines()[0][:200]}",
                f"re-export the model with opset {wanted}",
            ) from None
        notes.append(f"opset {current} -> {wanted} (target range {target.opset.min}-{target.opset.max})")
    notes += _pin_shapes(model, target, static_shapes or {})
    stripped = strip_debug_info(model)
    if stripped:
        notes.append(f"stripped exporter debug metadata from {stripped} nodes (stack traces, local paths)")
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"shape inference failed: {str(e).splitlines()[0][:200]}", "check the model with onnx.checker") from None
    out_path = Path(out_path)
    staged = out_path.with_name(out_path.stem + ".pre.onnx")
    save_model(model, staged)
    so = session_options(level=OPTIMIZE_LEVEL)
    so.optimized_model_filepath = str(out_path)
    create_session(staged, so=so)
    staged.unlink()
    folded = onnx.load(str(out_path))
    folded = onnx.shape_inference.infer_shapes(folded, strict_mode=False)
    save_model(folded, out_path)
    before, after = len(model.graph.node), len(folded.graph.node)
    if after != before:
        notes.append(f"folded {before} -> {after} nodes (onnxruntime {OPTIMIZE_LEVEL} level)")
    return artifact_from(out_path, artifact.provenance + (f"optimize(opset={wanted}, level={OPTIMIZE_LEVEL})",)), notes
