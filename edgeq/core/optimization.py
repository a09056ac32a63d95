"""optimize: check, bring the opset into the target's range, pin shapes, fold.

The folding is onnxruntime's *basic* level (constant folding, redundant node
elimination, Conv+BatchNorm and similar fusions): it keeps the graph portable
ONNX that any provider can run, unlike the extended/layout levels.
"""

from __future__ import annotations

from pathlib import Path

from .artifact import Artifact
from ..errors import ModelError, first_line
from .onnxutil import (artifact_from, check_model, data_file, default_opset, external_data_bytes, load_model, needs_external_data, save_model, tensor_bytes)
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


def _pin_shapes(model, target: Target, pins: dict[str, tuple[int, ...]],
                data_shapes: dict[str, tuple[int, ...]] | None = None) -> list[str]:
    """Fix input dims in place; returns notes on what was pinned.

    ``pins`` (--static-shape) win; on a target that needs static shapes, the batch axis
    becomes 1 and every other dynamic axis takes its size from the calibration data
    (``data_shapes``: one sample's shape per input).
    """
    notes: list[str] = []
    inits = {i.name for i in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in inits]
    names = {v.name for v in inputs}
    unknown = sorted(set(pins) - names)
    if unknown:
        raise ModelError(f"--static-shape names unknown input(s) {', '.join(unknown)}", f"the model's inputs are {', '.join(sorted(names))}")
    declared: dict[str, tuple[int, ...]] = {}
    if target.static_shapes:  # dynamic height/width: the size the model declares (metadata imgsz)
        from .onnxutil import imgsz_pins

        declared = imgsz_pins(model, pins)
        notes += [f"pinned {n} to {'x'.join(map(str, s))} from the model's declared imgsz (target {target.name} needs static shapes)"
                  for n, s in declared.items()]
        pins = {**pins, **declared}
    from .batchaxis import batch_axes
    from .onnxutil import io_spec

    # the batch axis is not always the first (an RNN state [layers, batch, hidden], a time-major [time, batch, features])
    batch = {n: (b.axis if b.known else 0) for n, b in batch_axes(io_spec(model).inputs).items()}
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
                if d.HasField("dim_value") and d.dim_value >= 0 and d.dim_value != size:  # -1: dynamic
                    raise ModelError(
                        f"--static-shape {vi.name}: axis {i} is fixed to {d.dim_value} in the model, not {size}",
                        "only symbolic dimensions can be pinned",
                    )
                d.dim_value = size
            if vi.name not in declared:
                notes.append(f"pinned {vi.name} to {'x'.join(map(str, shape))}")
        elif target.static_shapes:
            seen = (data_shapes or {}).get(vi.name)
            from_data = []
            for i, d in enumerate(dims):
                if d.HasField("dim_value") and d.dim_value >= 0:  # -1 (some exporters) is dynamic
                    continue
                if i == batch.get(vi.name, 0):
                    d.dim_value = 1
                    notes.append(f"pinned batch axis of {vi.name}{f' (axis {i})' if i else ''} to 1 (target {target.name} needs static shapes)")
                elif seen is not None and len(seen) == len(dims) and seen[i] > 0:
                    from_data.append(f"axis {i} ('{d.dim_param or '?'}') = {seen[i]}")
                    d.dim_value = int(seen[i])
                else:
                    raise ModelError(
                        f"input {vi.name} axis {i} ('{d.dim_param or '?'}') is dynamic and target {target.name} needs static shapes",
                        f"pin it with --static-shape {vi.name}=" + "x".join("N" for _ in dims) + ", or pass --calib data with the app's shapes",
                    )
            if from_data:
                shape = "x".join(str(d.dim_value) for d in dims)
                notes.append(f"pinned {vi.name} to {shape} from the calibration data ({', '.join(from_data)}; target {target.name} "
                             f"needs static shapes; --static-shape {vi.name}=... overrides)")
    return notes


def _input_dims(model) -> dict[str, list[int | str]]:
    return {vi.name: [d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in vi.type.tensor_type.shape.dim]
            for vi in model.graph.input}


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
    data_shapes: dict[str, tuple[int, ...]] | None = None,
) -> tuple[Artifact, list[str]]:
    """Return the optimized artifact written to ``out_path`` and notes for the report."""
    import onnx
    from onnx import version_converter

    head = load_model(artifact.path, load_weights=False)  # external locations checked first
    check_model(artifact.path)
    big = needs_external_data(head)
    # a large model's weights stay on disk: only the graph is loaded, converted and checked
    model = head if big else load_model(artifact.path)
    del head
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
                f"cannot convert the model from opset {current} to {wanted}: {first_line(e, 200)}",
                f"re-export the model with opset {wanted}",
            ) from None
        notes.append(f"opset {current} -> {wanted} (target range {target.opset.min}-{target.opset.max})")
    before_pins = _input_dims(model)
    notes += _pin_shapes(model, target, static_shapes or {}, data_shapes)
    pinned = [f"{n} {'x'.join(map(str, d))}" for n, d in _input_dims(model).items() if d != before_pins.get(n)]
    stripped = strip_debug_info(model)
    if stripped:
        notes.append(f"stripped exporter debug metadata from {stripped} nodes (stack traces, local paths)")
    out_path = Path(out_path)
    before = len(model.graph.node)
    if big:
        _fold_external(model, Path(artifact.path).parent, out_path)
        folded = load_model(out_path, load_weights=False)
        notes.append(
            f"weights kept in ONNX external data ({_size(tensor_bytes(folded))} in {data_file(out_path).name}): "
            f"over the {_size(external_data_bytes())} single-file threshold"
        )
    else:
        # shape inference file to file: no in-memory round trips of the weights (an LLM under 2 GiB held 6 copies)
        staged = out_path.with_name(out_path.stem + ".pre.onnx")
        save_model(model, staged)
        del model
        try:
            onnx.shape_inference.infer_shapes_path(str(staged), str(staged), strict_mode=False, data_prop=True)
        except Exception as e:  # noqa: BLE001
            staged.unlink(missing_ok=True)
            raise ModelError(f"shape inference failed: {first_line(e, 200)}", "check the model with onnx.checker") from None
        so = session_options(level=OPTIMIZE_LEVEL)
        so.optimized_model_filepath = str(out_path)
        try:
            create_session(staged, so=so)
        except ModelError as e:
            staged.unlink(missing_ok=True)
            if not pinned:
                raise
            # the file loads with its dynamic axes (edgeq checked it) but not at the pinned sizes: the static shapes
            # flow into branches (If/Loop bodies) whose declared shapes contradict them, or the sizes do not fit
            raise ModelError(f"onnxruntime rejects the model once its dynamic axes are pinned ({', '.join(pinned)}): "
                             f"{e.message.split(': ', 1)[-1]}",
                             "pin other sizes with --static-shape NAME=AxBx..., or use a target with dynamic shapes "
                             "(e.g. cpu-x86_64)") from None
        staged.unlink()
        onnx.shape_inference.infer_shapes_path(str(out_path), str(out_path), strict_mode=False)
        folded = load_model(out_path, load_weights=False)
    after = len(folded.graph.node)
    if after != before:
        notes.append(f"folded {before} -> {after} nodes (onnxruntime {OPTIMIZE_LEVEL} level)")
    done = _rewrite(out_path, target, big, notes)
    prov = (f"optimize(opset={wanted}, level={OPTIMIZE_LEVEL})",) + tuple(f"rewrite({r.name}, nodes={r.nodes})" for r in done)
    return artifact_from(out_path, artifact.provenance + prov), notes


def _rewrite(path: Path, target: Target, big: bool, notes: list[str]) -> list:
    """The target's [ops] rewrites, each checked against the graph before it on seeded inputs."""
    if not target.rewrites:
        return []
    if big:
        notes.append(f"target rewrites ({', '.join(target.rewrites)}) skipped: the weights live in external data")
        return []
    from .data import synthetic_feed
    from .rewrite import apply

    io = artifact_from(path).io
    feeds = []
    for seed in range(3):  # spread wide enough to reach the saturated ends of hard-sigmoid/-swish
        feeds.append({k: v * 4 if v.dtype.kind == "f" else v for k, v in synthetic_feed(io, seed=seed).items()})
    done = apply(path, target.rewrites, feeds, atol=target.tolerances.export_atol, rtol=target.tolerances.export_rtol)
    notes += [r.note() + f" (target {target.name}: checked against the unrewritten graph)" for r in done]
    return done


def _fold_external(model, src_dir: Path, out_path: Path) -> None:
    """ONNX shape inference and onnxruntime's folding for a model whose weights stay in external data.

    ``model`` is the graph with external references into ``src_dir`` (already checked by
    ``load_model``). The referenced files are linked (or copied) into a private staging folder
    beside ``out_path`` under edgeq's own names; shape inference and the checker run on paths
    (never on one in-memory protobuf); onnxruntime writes the folded model to ``out_path`` with
    its initializers in ``data_file(out_path)``.
    """
    import os
    import shutil

    import onnx
    from onnx.external_data_helper import _get_all_tensors

    stage = out_path.with_name(out_path.stem + ".pre")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        names: dict[str, str] = {}
        for t in _get_all_tensors(model):
            if t.data_location != onnx.TensorProto.EXTERNAL:
                continue
            for e in t.external_data:
                if e.key == "location":
                    if e.value not in names:
                        names[e.value] = f"w{len(names)}.data"
                        src, dst = src_dir / e.value, stage / names[e.value]
                        try:
                            os.link(src, dst)  # same file system: no copy of the weights
                        except OSError:
                            shutil.copyfile(src, dst)
                    e.value = names[e.value]
        staged = stage / "model.onnx"
        if names:
            _save_head(model, staged)
        else:  # large but inline in the source: the weights go to the staging folder's data file
            save_model(model, staged, external=True)
        try:
            onnx.shape_inference.infer_shapes_path(str(staged), str(staged), strict_mode=False, data_prop=True)
        except Exception as e:  # noqa: BLE001
            raise ModelError(f"shape inference failed: {first_line(e, 200)}", "check the model with onnx.checker") from None
        data = data_file(out_path)
        data.unlink(missing_ok=True)
        so = session_options(level=OPTIMIZE_LEVEL)
        so.optimized_model_filepath = str(out_path)
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", data.name)
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        create_session(staged, so=so)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    try:
        onnx.shape_inference.infer_shapes_path(str(out_path), str(out_path), strict_mode=False)
    except Exception:  # noqa: BLE001 - the folded model keeps the shapes it has
        pass
    check_model(out_path)


def _save_head(model, path: Path) -> None:
    """Write a graph whose large tensors are external references (they stay where they point)."""
    with open(path, "wb") as f:
        f.write(model.SerializeToString())


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.2f} {unit}"
    return f"{n} bytes"
