"""PyTorch sources: an ``nn.Module`` (or ExportedProgram) -> fp32 ONNX, checked against the source.

torch's own exporter does the work: the dynamo-based ``torch.onnx.export``
first and, when it fails, the TorchScript-based one as a named fallback that
shows in the artifact's provenance and the report. After every export the
source and the ONNX run on the same inputs (the example, plus a second batch
size when the batch axis is dynamic) and every output must stay within the
target's ``export_atol``/``export_rtol``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.artifact import Artifact
from ..errors import CheckFailed, ModelError
from ..core.targets import Target, load_target

# Above this many bytes of weights the ONNX is written with external data
# (protobuf cannot serialize a message over 2 GiB); EDGEQ_EXTERNAL_DATA_BYTES lowers it.
EXTERNAL_DATA_THRESHOLD = (2 << 30) - (64 << 20)

DYNAMO = "torch.onnx dynamo"
DYNAMO_MIN_OPSET = 18
TORCHSCRIPT = "torch.onnx TorchScript (fallback)"


@dataclass(frozen=True)
class OutputError:
    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    passed: bool


@dataclass(frozen=True)
class ExportCheck:
    """How the export was made and how close the ONNX is to the source."""

    exporter: str
    fallback_reason: str | None
    opset: int
    inputs_checked: tuple[str, ...]  # one label per sample feed, e.g. "example", "batch=3"
    outputs: tuple[OutputError, ...]
    atol: float
    rtol: float
    external_data: bool
    exporter_notes: tuple[str, ...] = ()  # why this exporter ran, where (e.g. Optimum's own Python)

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return d

    def summary(self) -> str:
        per = ", ".join(f"{o.name}: max abs {o.max_abs:.3g}, max rel {o.max_rel:.3g}" for o in self.outputs)
        return f"{per} (atol {self.atol:g}, rtol {self.rtol:g}, on {', '.join(self.inputs_checked)})"

    def notes(self) -> list[str]:
        out = [f"exported with {self.exporter} at opset {self.opset}", *self.exporter_notes]
        if self.fallback_reason:
            out.append(f"dynamo exporter not used ({self.fallback_reason}); exported with the TorchScript exporter instead")
        if self.external_data:
            out.append("weights written as ONNX external data (over the size limit for one protobuf file)")
        out.append(f"export check vs source: {self.summary()}")
        return out


def _first(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines() or [type(e).__name__])[0][:300]


_OP_RE = re.compile(r"(aten(?:::|\.)[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?|prim::\w+|onnx::\w+)")
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
_OVERLOAD_RE = re.compile(r"<OpOverload\(op='([\w.]+)', overload='(\w+)'\)>")
_KEYS = ("No ONNX function found", "not supported", "Unsupported", "unsupported", "not implemented", "Cannot", "cannot")


def _error_text(e: BaseException) -> str:
    text = str(e)
    cause = e.__cause__
    while cause is not None:
        text += "\n" + str(cause)
        cause = cause.__cause__
    text = _ANSI_RE.sub("", text)
    return _OVERLOAD_RE.sub(lambda m: f"{m.group(1)}.{m.group(2)}", text)


def _ops_in(text: str) -> list[str]:
    ops = sorted(set(_OP_RE.findall(text)))
    return [o for o in ops if not any(p != o and p.startswith(o + ".") for p in ops)]


def _unsupported(e: BaseException) -> str:
    """One line naming the op or construct that stopped the exporter."""
    text = _error_text(e)
    lines = [ln.strip(" -:") for ln in text.splitlines() if ln.strip()]
    detail = next((ln for k in _KEYS for ln in lines if k in ln), lines[0] if lines else type(e).__name__)
    detail = re.sub(r"^<class '[\w.]+'>: ", "", detail)
    ops = _ops_in(text)
    head = f"unsupported op {', '.join(ops[:3])}: " if ops else ""
    return f"{head}{detail[:240]}"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch.onnx prints progress and warnings; edgeq shows its own."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "torch.fx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    try:
        with tempfile.TemporaryFile() as sink:
            for fd in saved:  # C++ warnings and IR dumps bypass sys.stdout/sys.stderr
                os.dup2(sink.fileno(), fd)
            try:
                with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    warnings.simplefilter("ignore")
                    yield
            finally:
                for fd, orig in saved.items():
                    os.dup2(orig, fd)
    finally:
        for orig in saved.values():
            os.close(orig)
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _flatten(obj: Any) -> list[Any]:
    """Tensors of a module's output in the exporter's order (tuples, lists, dicts, ModelOutput)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in _flatten(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _flatten(v)]
    if hasattr(obj, "to_tuple"):
        return _flatten(obj.to_tuple())
    return []


def _as_tuple(example_inputs: Any) -> tuple[Any, ...]:
    import torch

    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (list, tuple)):
        return tuple(example_inputs)
    raise ModelError(
        f"example_inputs must be a tensor or a tuple of tensors, not {type(example_inputs).__name__}",
        "pass e.g. (torch.randn(1, 3, 224, 224),)",
    )


def default_dynamic_axes(input_names: Sequence[str], args: tuple[Any, ...], target: Target) -> dict[str, dict[int, str]]:
    """Batch axis (0) of every tensor input dynamic, unless the target needs static shapes."""
    if target.static_shapes:
        return {}
    return {n: {0: "batch"} for n, a in zip(input_names, args) if getattr(a, "ndim", 0) >= 1}


def _dynamic_shapes(args: tuple[Any, ...], names: Sequence[str], axes: Mapping[str, Mapping[int, str]]):
    import torch

    dims: dict[str, Any] = {}  # one Dim per axis name: equal names are equal sizes
    shapes = []
    for n, a in zip(names, args):
        spec = {}
        for ax, dname in (axes.get(n) or {}).items():
            dname = re.sub(r"\W", "_", str(dname)) or f"{n}_{ax}"
            spec[int(ax)] = dims.setdefault(dname, torch.export.Dim(dname))
        shapes.append(spec or None)
    return tuple(shapes)


def _run_dynamo(module, args, path: Path, names, out_names, axes, opset: int, external: bool) -> None:
    import torch

    dyn = _dynamic_shapes(args, names, axes) if axes and not isinstance(module, torch.export.ExportedProgram) else None
    with _quiet():
        prog = torch.onnx.export(
            module, args, dynamo=True, input_names=list(names), output_names=list(out_names) or None,
            dynamic_shapes=dyn, opset_version=opset, optimize=True, verbose=False,
        )
        prog.save(str(path), external_data=external)


def _run_torchscript(module, args, path: Path, names, out_names, axes, opset: int, external: bool, threshold: int) -> None:
    import torch

    with _quiet():
        torch.onnx.export(
            module, args, str(path), dynamo=False, input_names=list(names), output_names=list(out_names) or None,
            dynamic_axes={k: dict(v) for k, v in axes.items()} or None, opset_version=opset,
        )
    if external:
        import onnx

        model = onnx.load(str(path))
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.name + ".data", size_threshold=min(1024, threshold))


def _param_bytes(module) -> int:
    import torch

    if isinstance(module, torch.export.ExportedProgram):
        return sum(t.numel() * t.element_size() for t in module.state_dict.values())
    if not isinstance(module, torch.nn.Module):
        return 0
    seen = set()
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def _to_numpy(t) -> np.ndarray:
    import torch

    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.detach().cpu().numpy()


def _variant(args: tuple[Any, ...], names: Sequence[str], axes: Mapping[str, Mapping[int, str]], seed: int = 0):
    """The example inputs with every dynamic axis grown by one (a second shape to check), or None."""
    import torch

    if not axes:
        return None
    g = torch.Generator().manual_seed(seed)
    out, grown = [], {}
    tensors = iter(names)
    for a in args:
        if not isinstance(a, torch.Tensor):
            out.append(a)
            continue
        name = next(tensors)
        for ax, dname in sorted((axes.get(name) or {}).items()):
            edge = a.narrow(int(ax), 0, 1).clone()
            if a.is_floating_point():
                edge = edge + 0.1 * torch.randn(edge.shape, generator=g, dtype=a.dtype)
            a = torch.cat([a, edge], dim=int(ax))
            grown[str(dname)] = a.shape[int(ax)]
        out.append(a)
    if not grown:
        return None
    return ", ".join(f"{k}={v}" for k, v in sorted(grown.items())), tuple(out)


def check_against_source(
    module, onnx_path: Path, feeds: Sequence[tuple[str, tuple[Any, ...]]], names: Sequence[str], tol_atol: float, tol_rtol: float,
    *, user_roots: tuple[str, ...] = (),
) -> tuple[OutputError, ...]:
    """Run ``module`` and the ONNX on each feed; worst error per output over all feeds."""
    import torch

    from ..core.runtime import create_session, run
    from ..core.usercode import user_code

    sess = create_session(onnx_path, level="disable")
    onnx_outs = [o.name for o in sess.get_outputs()]
    worst: dict[int, list[float]] = {}
    shapes: dict[int, tuple[int, ...]] = {}
    ok: dict[int, bool] = {}
    for label, args in feeds:
        with user_code(f"forward() on the {label} inputs", roots=user_roots, require_frame=True), torch.no_grad():
            ref = [_to_numpy(t) for t in _flatten(module(*args))]
        feed = {n: _to_numpy(a) for n, a in zip(names, args) if isinstance(a, torch.Tensor)}
        got = run(sess, feed)
        if len(got) != len(ref):
            raise CheckFailed(
                f"the ONNX has {len(got)} outputs, the source {len(ref)} (inputs: {label})",
                "the exporter dropped or added outputs; export a module that returns tensors only",
            )
        for i, (r, c) in enumerate(zip(ref, got)):
            c = np.asarray(c)
            if r.shape != c.shape:
                raise CheckFailed(
                    f"output '{onnx_outs[i]}' has shape {list(c.shape)} in the ONNX but {list(r.shape)} in the source ({label})",
                    "a shape was baked in at export; mark the axis dynamic or pin it with --static-shape",
                )
            r64, c64 = r.astype(np.float64), c.astype(np.float64)
            if r.dtype.kind in "biu":
                d = np.abs(r64 - c64)
                good = bool((d == 0).all())
            else:
                both_nan = np.isnan(r64) & np.isnan(c64)
                d = np.where(both_nan, 0.0, np.abs(r64 - c64))
                d = np.where(np.isnan(d), np.inf, d)
                good = bool((d <= tol_atol + tol_rtol * np.abs(r64)).all()) if d.size else True
            rel = d / np.maximum(np.abs(r64), 1e-12)
            m_abs = float(d.max()) if d.size else 0.0
            m_rel = float(rel.max()) if d.size else 0.0
            prev = worst.get(i, [0.0, 0.0])
            worst[i] = [max(prev[0], m_abs), max(prev[1], m_rel)]
            shapes.setdefault(i, tuple(r.shape))
            ok[i] = ok.get(i, True) and good
    return tuple(
        OutputError(name=onnx_outs[i], shape=shapes[i], max_abs=worst[i][0], max_rel=worst[i][1], passed=ok[i])
        for i in sorted(worst)
    )


def export_torch_checked(
    module,
    example_inputs,
    *,
    target: Target | str,
    out_path: Path,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    opset: int | None = None,
    exporter: str = "auto",
    external_data_threshold: int | None = None,
    provenance: tuple[str, ...] = (),
    reference=None,
    user_roots: tuple[str, ...] = (),
) -> tuple[Artifact, ExportCheck]:
    """Export ``module`` to ``out_path`` and check it against the source; raise ``CheckFailed`` when it differs.

    ``dynamic_axes`` is ``{input_name: {axis: "name"}}``; ``None`` makes the batch axis
    dynamic (static for targets that need static shapes). ``exporter`` is ``auto``
    (dynamo, then TorchScript), ``dynamo`` or ``torchscript``. ``reference`` is what
    the ONNX is compared with (default: ``module``). An exception the model's own code
    raised while torch traced it is reported as the user's (``UserCodeError``), not as an
    unsupported op; ``user_roots`` are folders whose files count as the user's code.
    """
    import torch

    from ..core.onnxutil import artifact_from

    tg = load_target(target)
    args = _as_tuple(example_inputs)
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    names = list(input_names or ([f"input_{i}" for i in range(len(tensors))] if len(tensors) > 1 else ["input"]))
    if len(names) != len(tensors):
        raise ModelError(f"{len(names)} input names for {len(tensors)} tensor inputs", "give one name per tensor input")
    axes = dict(default_dynamic_axes(names, args, tg) if dynamic_axes is None else dynamic_axes)
    if tg.static_shapes and axes:
        raise ModelError(
            f"target {tg.name} needs static shapes but dynamic axes were requested ({', '.join(sorted(axes))})",
            "drop dynamic_axes (the example's shapes are used) or choose another target",
        )
    explicit = opset is not None
    opset = opset or tg.opset.preferred
    if not (tg.opset.min <= opset <= tg.opset.max):
        raise ModelError(
            f"opset {opset} is outside target {tg.name}'s range {tg.opset.min}-{tg.opset.max}",
            "choose an opset in that range",
        )
    # the dynamo exporter translates to opset 18 and later only
    dyn_opset = opset if opset >= DYNAMO_MIN_OPSET else (None if explicit else DYNAMO_MIN_OPSET)
    if dyn_opset is not None and dyn_opset > tg.opset.max:
        dyn_opset = None
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise ModelError(f"unknown exporter '{exporter}'", "choose auto, dynamo or torchscript")
    if isinstance(module, torch.nn.Module):
        module.eval()
    reference = reference if reference is not None else module
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if external_data_threshold is None:
        from ..core.onnxutil import external_data_bytes

        external_data_threshold = external_data_bytes()  # EXTERNAL_DATA_THRESHOLD unless lowered
    external = _param_bytes(module) > external_data_threshold
    used, fallback, dyn_err = DYNAMO, None, None
    var = _variant(args, names, axes)
    # tracing specializes axes of size 1: trace with the dynamic axes grown, check on both
    trace_args = var[1] if var is not None and _has_size_one(args, names, axes) else args
    if exporter != "torchscript":
        if dyn_opset is None:
            fallback = f"it needs opset {DYNAMO_MIN_OPSET} or later, opset {opset} was asked for"
        else:
            try:
                _run_dynamo(module, trace_args, out_path, names, output_names or (), axes, dyn_opset, external)
                baked = _baked_axes(out_path, names, axes)
                if baked:
                    fallback = f"it fixed dynamic axes {', '.join(baked)}"
            except Exception as e:  # noqa: BLE001 - the exporters raise many types
                _raise_if_user(e, user_roots, out_path)
                dyn_err = e
                fallback = _unsupported(e)
        if fallback and (exporter == "dynamo" or not _torchscript_possible(module)):
            _cleanup(out_path)
            raise ModelError(
                f"torch cannot export the model to ONNX: {fallback}",
                "rewrite that part of the model with supported ops, or register a custom translation",
            )
    if exporter == "torchscript" or fallback:
        _cleanup(out_path)
        used = TORCHSCRIPT if exporter == "auto" else "torch.onnx TorchScript"
        try:
            _run_torchscript(module, trace_args, out_path, names, output_names or (), axes, opset, external, external_data_threshold)
        except Exception as e2:  # noqa: BLE001
            _cleanup(out_path)
            _raise_if_user(e2, user_roots, out_path)
            what = _unsupported(e2)
            if dyn_err is not None:
                what = f"{fallback} (TorchScript exporter: {what.split(': ', 1)[-1] if _ops_in(_error_text(e2)) else what})"
            raise ModelError(
                f"torch cannot export the model to ONNX: {what}",
                "rewrite that part of the model with supported ops, or register a custom translation",
            ) from None
    baked = _baked_axes(out_path, names, axes)
    if baked:
        _cleanup(out_path)
        raise ModelError(
            f"torch exported dynamic axes {', '.join(baked)} as fixed sizes: the model's code depends on them",
            "export with static shapes (--static-shape NAME=1x...) or make forward() independent of that size",
        )
    art = artifact_from(out_path)
    got_opset = art.opset
    feeds = [("example", args)]
    if var is not None:
        feeds.append(var)
    outs = check_against_source(reference, out_path, feeds, names, tg.tolerances.export_atol, tg.tolerances.export_rtol,
                                user_roots=user_roots)
    check = ExportCheck(
        exporter=used, fallback_reason=fallback, opset=got_opset, inputs_checked=tuple(label for label, _ in feeds),
        outputs=outs, atol=tg.tolerances.export_atol, rtol=tg.tolerances.export_rtol, external_data=external,
    )
    if not check.passed:
        bad = [o for o in outs if not o.passed]
        raise CheckFailed(
            "the exported ONNX differs from the source beyond target "
            f"{tg.name}'s export tolerance: "
            + "; ".join(f"output '{o.name}' max abs {o.max_abs:.3g}, max rel {o.max_rel:.3g}" for o in bad)
            + f" (atol {check.atol:g}, rtol {check.rtol:g})",
            "the model may use an op the exporter translates loosely; try --opset or report the model",
        )
    step = f"export({used}, opset={got_opset}{', external-data' if external else ''})"
    worst = max((o.max_abs for o in outs), default=0.0)
    art = Artifact(
        path=out_path, io=art.io, opset=got_opset,
        provenance=provenance + (step, f"export-check(max_abs={worst:.3g}, outputs={len(outs)}, passed)"),
    )
    return art, check


def _raise_if_user(e: BaseException, roots: tuple[str, ...], out_path: Path) -> None:
    """The model's own code raised while torch traced it: that is the user's error, not an unsupported op."""
    from ..core.usercode import raised_by_user, user_error

    fault = raised_by_user(e, roots)
    if fault is not None:
        _cleanup(out_path)
        err = user_error(fault, "the model's code, traced by torch.onnx.export,")
        raise err from (e if os.environ.get("EDGEQ_DEBUG") else None)  # EDGEQ_DEBUG: the whole chain


def _has_size_one(args, names, axes) -> bool:
    import torch

    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    return any(t.shape[int(ax)] == 1 for n, t in zip(names, tensors) for ax in (axes.get(n) or {}))


def _baked_axes(path: Path, names: Sequence[str], axes: Mapping[str, Mapping[int, str]]) -> list[str]:
    """Requested dynamic axes that came out as fixed sizes in the ONNX inputs."""
    from ..core.onnxutil import load_model

    model = load_model(path, load_weights=False)
    dims = {v.name: v.type.tensor_type.shape.dim for v in model.graph.input}
    out = []
    for n in names:
        for ax in (axes.get(n) or {}):
            d = dims.get(n)
            if d is not None and int(ax) < len(d) and d[int(ax)].HasField("dim_value"):
                out.append(f"{n}[{ax}]={d[int(ax)].dim_value}")
    return out


def _torchscript_possible(module) -> bool:
    import torch

    return isinstance(module, (torch.nn.Module, torch.jit.ScriptModule)) and not isinstance(module, torch.export.ExportedProgram)


def _cleanup(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".data")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def export_torch(
    module,
    example_inputs,
    *,
    target: Target | str = "cpu-x86_64",
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    opset: int | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    out_path: Path | str | None = None,
    exporter: str = "auto",
) -> Artifact:
    """Export an ``nn.Module`` to ONNX for ``target`` and check it numerically against the module.

    The check's figures are in the artifact's provenance; use
    :func:`export_torch_checked` to get them as an ``ExportCheck``.
    """
    if out_path is None:
        out_path = Path(tempfile.mkdtemp(prefix="edgeq-export-")) / "model.onnx"
    art, _check = export_torch_checked(
        module, example_inputs, target=target, out_path=Path(out_path), input_names=input_names,
        output_names=output_names, dynamic_axes=dynamic_axes, opset=opset, exporter=exporter,
    )
    return art
