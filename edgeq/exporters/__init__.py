"""Exporters: every source format becomes an fp32 ONNX ``Artifact``.

``export_source`` is the one entry point the CLI uses: it tells the source kind
from its name and routes it to ``onnx.py``, ``torch.py`` or ``hf.py``.

| source | kind | read with |
|---|---|---|
| ``model.onnx`` | onnx | checked as is |
| ``pkg.module:factory`` | factory | the user's callable (importing it is the user's choice); ``--weights`` loads a state dict weights-only |
| ``model.pt2`` | pt2 | ``torch.export.load`` (it unpickles arbitrary objects: needs ``--trust-pickle``) |
| ``model.pt/.pth/.bin/.ckpt`` | pickle | full modules and TorchScript need ``--trust-pickle``; state dicts need a factory |
| a folder with ``config.json`` | hf | transformers, offline; ``auto_map`` needs ``--trust-remote-code`` |
"""

from __future__ import annotations

import importlib
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..core.artifact import Artifact
from ..errors import ModelError, first_line
from ..core.targets import Target

_FACTORY_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
_DTYPES = ("float32", "float16", "int64", "int32", "bool")
UNNAMED = "#"  # key prefix of an --example-shape given without NAME=


@dataclass(frozen=True)
class SourceOptions:
    """How to turn a non-ONNX source into ONNX."""

    target: Target
    example_shapes: dict[str, tuple[tuple[int, ...], str]] = field(default_factory=dict)  # name -> (shape, dtype)
    static_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    task: str | None = None
    weights: Path | None = None
    trust_pickle: bool = False
    trust_remote_code: bool = False
    opset: int | None = None
    exporter: str = "auto"
    input_names: tuple[str, ...] = ()  # --input-names (pkg.module:factory and .pt modules)
    output_names: tuple[str, ...] = ()  # --output-names
    app_io: Path | None = None  # --preprocess: its [inputs.NAME]/[outputs.NAME] checked before the export runs
    data: tuple[tuple[str, Path, str], ...] = ()  # (what, --calib/--eval, labels key): array names checked before the export runs
    dynamic_axes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # --dynamic-axes NAME=2,3: axes besides the batch


def parse_example_shapes(specs: list[str] | tuple[str, ...] | None) -> dict[str, tuple[tuple[int, ...], str]]:
    """``["input=1x3x224x224", "ids=1x16:int64"]`` -> ``{"input": ((1, 3, 224, 224), "float32"), ...}``.

    A shape without ``NAME=`` (``1x3x224x224``) is keyed ``#<position>``: its name comes
    from ``--input-names`` or ``forward()``'s signature (see :func:`input_names_for`).
    """
    out: dict[str, tuple[tuple[int, ...], str]] = {}
    for i, given in enumerate(specs or ()):
        spec = f"{UNNAMED}{i}={given}" if "=" not in given and given[:1].isdigit() else given
        name, sep, rest = spec.partition("=")
        dims, _, dtype = rest.partition(":")
        dtype = dtype or "float32"
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
            if not sep or not name or any(d <= 0 for d in shape) or dtype not in _DTYPES:
                raise ValueError
        except ValueError:
            raise ModelError(
                f"bad --example-shape '{given}'", f"write it as [NAME=]1x3x224x224 or [NAME=]1x16:int64 (dtypes: {', '.join(_DTYPES)})"
            ) from None
        if name in out:
            raise ModelError(f"--example-shape {name} given twice", "give each input once")
        out[name] = (shape, dtype)
    return out


def parse_dynamic_axes(specs: list[str] | tuple[str, ...] | None) -> dict[str, tuple[int, ...]]:
    """``["x=2,3"]`` -> ``{"x": (2, 3)}``: axes of an input that stay dynamic in the export (a fully
    convolutional net's height and width), besides the batch axis."""
    out: dict[str, tuple[int, ...]] = {}
    for given in specs or ():
        name, sep, rest = given.partition("=")
        try:
            axes = tuple(int(a) for a in rest.split(","))
            if not sep or not name or any(a < 1 for a in axes) or len(set(axes)) != len(axes):
                raise ValueError
        except ValueError:
            raise ModelError(f"bad --dynamic-axes '{given}'", "write it as NAME=2,3 (the input's axes, counted from 0, "
                             "that may change size besides the batch axis 0)") from None
        if name in out:
            raise ModelError(f"--dynamic-axes {name} given twice", "give each input once, its axes comma-separated")
        out[name] = axes
    return out


def source_kind(source: str | Path) -> str:
    text = str(source)
    path = Path(text)
    if path.is_dir():
        return "hf"
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".pt2":
        return "pt2"
    if suffix in (".pt", ".pth", ".bin", ".ckpt"):
        return "pickle"
    if not path.exists() and _FACTORY_RE.match(text):
        return "factory"
    if suffix == ".safetensors":
        raise ModelError(
            f"{path.name} holds weights only, not the model's architecture",
            "pass the architecture as pkg.module:factory with --weights " + path.name + ", or a save_pretrained folder",
        )
    if not path.exists():
        raise ModelError(f"model not found: {text}", "pass an .onnx/.pt2/.pt file, a Hugging Face folder, or pkg.module:factory")
    raise ModelError(
        f"unknown model format {suffix or '(no suffix)'} ({path.name})",
        "pass an .onnx, .pt2, .pt/.pth/.bin file, a Hugging Face folder, or pkg.module:factory",
    )


def _examples(shapes: dict[str, tuple[tuple[int, ...], str]], statics: dict[str, tuple[int, ...]], what: str):
    import torch

    merged = dict(shapes)
    for name, shape in statics.items():
        if name in merged and merged[name][0] != shape:
            raise ModelError(f"--static-shape {name} and --example-shape {name} disagree", "give the same shape, or only one")
        merged.setdefault(name, (shape, "float32"))
    if not merged:
        raise ModelError(f"{what} needs example inputs to trace", "pass --example-shape NAME=1x3x224x224 (one per model input, in order)")
    g = torch.Generator().manual_seed(0)
    tensors = []
    for shape, dtype in merged.values():
        if dtype in ("float32", "float16"):
            t = torch.randn(shape, generator=g).to(getattr(torch, dtype))
        elif dtype == "bool":
            t = torch.ones(shape, dtype=torch.bool)
        else:
            t = torch.randint(0, 2, shape, generator=g, dtype=getattr(torch, dtype))
        tensors.append(t)
    return list(merged), tuple(tensors)


def _dynamic_axes(names: list[str], args, opts: SourceOptions) -> dict[str, dict[int, str]]:
    """Batch axis dynamic except for inputs pinned with --static-shape or a static-shape target;
    the axes --dynamic-axes names stay dynamic too (each its own symbol, ``NAME_AXIS``)."""
    for n in opts.dynamic_axes:
        rank = next((getattr(a, "ndim", 0) for m, a in zip(names, args) if m == n), None)
        if rank is None:
            raise ModelError(f"--dynamic-axes names '{n}', which is no input of the export (inputs: {', '.join(names)})",
                             "name an input (see --example-shape / --input-names)")
        if any(ax >= rank for ax in opts.dynamic_axes[n]):
            raise ModelError(f"--dynamic-axes {n}: axis {max(opts.dynamic_axes[n])} is outside the input's {rank} axes",
                             f"count axes from 0 (batch) to {rank - 1}")
        if n in opts.static_shapes or opts.target.static_shapes:
            raise ModelError(f"--dynamic-axes {n} conflicts with " + (f"--static-shape {n}" if n in opts.static_shapes else
                             f"target {opts.target.name}, which needs static shapes"), "drop one of them")
    if opts.target.static_shapes:
        return {}
    return {n: {0: "batch", **{ax: f"{n}_{ax}" for ax in opts.dynamic_axes.get(n, ())}}
            for n, a in zip(names, args) if n not in opts.static_shapes and getattr(a, "ndim", 0) >= 1}


def load_factory(spec: str):
    """Import ``pkg.module`` (from the current directory too) and call ``factory()``.

    Whatever the user's module or factory raises is reported as theirs (file, line, exception).
    """
    from ..core.usercode import module_roots, user_code

    mod_name, _, attr = spec.partition(":")
    added = False
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
        added = True
    try:
        with user_code(f"importing {mod_name}", roots=_spec_roots(mod_name), passthrough=(ImportError,)):
            mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ModelError(f"cannot import {mod_name}: {e}", "run from the folder that holds the package, or pip install it") from None
    finally:
        if added:
            sys.path.remove(str(Path.cwd()))
    obj: Any = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelError(f"{mod_name} has no attribute {attr}", "name a function that returns the nn.Module")
        obj = getattr(obj, part)
    import torch

    with user_code(f"{spec}()", roots=module_roots(mod_name)):
        model = obj() if callable(obj) and not isinstance(obj, torch.nn.Module) else obj
    if not isinstance(model, torch.nn.Module):
        raise ModelError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module", "return the model from the factory")
    return model


def _spec_roots(mod_name: str) -> tuple[str, ...]:
    """The user's package folder before it is imported (so an installed package's own frames count as theirs)."""
    import importlib.util

    try:
        found = importlib.util.find_spec(mod_name.partition(".")[0])
    except (ImportError, ValueError):
        return ()
    locs = list(getattr(found, "submodule_search_locations", None) or ())
    if locs:
        return tuple(str(x) for x in locs)
    return (found.origin,) if found is not None and found.origin else ()


def _module_inputs(module, opts: SourceOptions, what: str):
    """Example inputs and their final names (see edgeq/exporters/names.py)."""
    from .names import forward_params, input_names_for

    keys = list(opts.example_shapes)
    given = opts.input_names
    if given and len(given) < len(keys):
        input_names_for(keys, given, (), UNNAMED)  # raises: too few names
    names = input_names_for(keys, given[: len(keys)], forward_params(module), UNNAMED)
    shapes = {n: opts.example_shapes[k] for k, n in zip(keys, names)}
    names, args = _examples(shapes, opts.static_shapes, what)  # --static-shape NAME adds an input the examples lack
    if given and list(given) != names:
        names = input_names_for(names, given, (), UNNAMED)
    return names, args


def _module_outputs(module, args, opts: SourceOptions, roots: tuple[str, ...]) -> list[str]:
    """Run forward() once on the example (the user's code: its errors are the user's) and name its outputs."""
    import torch

    from ..core.usercode import user_code
    from .names import output_names_for

    module.eval()
    with user_code("forward()", roots=roots, hint="fix the model's code, or check --example-shape against forward()'s inputs"), torch.no_grad():
        result = module(*args)
    return output_names_for(result, opts.output_names)


def _check_app_io(opts: SourceOptions, inputs, outputs, expected=None) -> None:
    """--preprocess, --calib and --eval name what the export will produce: checked before the (slow) export."""
    if opts.app_io is not None:
        from ..core.appio import check_io_names

        check_io_names(opts.app_io, inputs, outputs, hint="name them with --input-names / --output-names, or rename the tables")
    _check_data(opts, expected)


def _check_data(opts: SourceOptions, expected) -> None:
    """--calib / --eval arrays the model will not take, or of the wrong dtype or shape: refused now, not after the export."""
    from ..core.data import check_arrays_early

    for what, path, labels_key in opts.data:
        check_arrays_early(path, expected, what=what, labels_key=labels_key)


def _export_module(module, opts: SourceOptions, what: str, provenance: tuple[str, ...], roots: tuple[str, ...], common: dict):
    from .expected import from_examples
    from .torch import export_torch_checked

    names, args = _module_inputs(module, opts, what)
    out_names = _module_outputs(module, args, opts, roots)
    axes = _dynamic_axes(names, args, opts)
    _check_app_io(opts, names, out_names, from_examples(names, args, axes))
    return export_torch_checked(
        module, args, input_names=names, output_names=out_names, dynamic_axes=axes,
        provenance=provenance, user_roots=roots, **common,
    )


def check_data_before_export(source: str | Path, opts: SourceOptions) -> None:
    """--calib / --eval against what a Hugging Face folder's export will take, from its config.json alone:
    before any work on the folder (a pre-quantized checkpoint's dequantization included). PyTorch modules
    are checked once forward() is read (in :func:`export_source`); ONNX files by run_export, first."""
    from . import hf

    if opts.data and opts.task and source_kind(source) == "hf" and hf.is_hf_folder(Path(source)):
        early = _hf_expected(hf.read_config(Path(source)), opts)
        if early is not None:
            _check_data(opts, early)


def _hf_expected(config: dict[str, Any], opts: SourceOptions):
    """What the folder's export will take (edgeq.exporters.expected), by the path it will take; None: torch's
    exporter, checked once its example inputs are built."""
    from . import expected

    if _kv_cache_wanted(opts):
        return expected.kv_decoder(config, static=opts.target.static_shapes)
    if opts.exporter not in ("auto", "optimum"):  # torch's exporters, or an unknown one (refused by export_source)
        return None
    from . import hf_optimum as ho

    if opts.exporter == "auto" and ho.find_python() is None:
        return None
    shape = ho.batch_sequence(opts.static_shapes, {k: v[0] for k, v in opts.example_shapes.items()})
    fixed = (opts.static_shapes or opts.target.static_shapes) and len(shape) == 2
    return expected.optimum(config, opts.task, tuple(shape) if fixed else expected.TOKENS)


EXPORTERS = ("auto", "dynamo", "torchscript", "optimum")


def _export_hf_optimum(src, opts: SourceOptions, work: Path):
    """``--exporter optimum``, or ``auto`` with an Optimum Python configured: ``((Artifact, ExportCheck), None)``.

    Otherwise ``(None, note)``: the torch path runs, and the note says why.
    """
    if opts.exporter in ("dynamo", "torchscript"):
        return None, None
    from . import hf_optimum as ho

    if opts.exporter == "optimum":
        py, why = ho.require_python(), "asked for with --exporter optimum"
    else:
        py, why = ho.find_python(), "--exporter auto uses Optimum for Hugging Face folders when a Python with it is configured"
        if py is None:
            return None, f"--exporter auto: no Optimum Python configured ({ho.ENV_VAR} unset, optimum-onnx not importable here), so torch's exporter ran"
    kw = dict(
        task=opts.task, target=opts.target, work=work, opset=opts.opset, static_shapes=opts.static_shapes,
        example_shapes={k: v[0] for k, v in opts.example_shapes.items()}, trust_remote_code=opts.trust_remote_code, py=py, why=why,
    )
    if opts.exporter == "optimum":
        return ho.export_hf_optimum(src, **kw), None
    try:
        return ho.export_hf_optimum(src, **kw), None
    except ho.OptimumExportFailed as e:
        import shutil

        for sub in ("optimum", "optimum-source"):
            shutil.rmtree(Path(work) / sub, ignore_errors=True)
        return None, f"--exporter auto: {e.message}; torch's exporter ran instead"


def _kv_cache_wanted(opts: SourceOptions) -> bool:
    """``--task text-generation`` gives a KV-cache decoder unless an exporter or static shapes were asked for.

    ``--exporter dynamo|torchscript|optimum`` and ``--static-shape`` keep the full-sequence graph
    (no past key values) those paths write; static-shape targets get the static KV decoder
    (fixed cache slots; a one-token step graph, a prefill graph derived from it: static_decoder.py).
    """
    return opts.task == "text-generation" and opts.exporter == "auto" and not opts.static_shapes


def export_source(source: str | Path, opts: SourceOptions, work: Path):
    """Export ``source`` to ``work/exported.onnx``; returns ``(Artifact, ExportCheck | None)``."""
    kind = source_kind(source)
    if kind == "onnx":
        from .onnx import export_onnx

        return export_onnx(Path(source)), None
    try:
        import torch
    except ImportError:
        raise ModelError(f"exporting a {kind} source needs PyTorch", "pip install torch (the CPU build is enough)") from None
    from .checkpoint import load_pickle_checkpoint, load_weights
    from .torch import export_torch_checked

    out = Path(work) / "exported.onnx"
    text = str(source)
    name = Path(text).name
    common = dict(target=opts.target, out_path=out, opset=opts.opset, exporter=opts.exporter)
    if kind == "hf":
        from . import hf

        if not hf.is_hf_folder(Path(text)):
            raise ModelError(f"{name} is a folder without config.json", "pass a folder written by save_pretrained, or a model file")
        if not opts.task:
            raise ModelError("exporting a Hugging Face folder needs --task", f"choose one of {', '.join(hf.TASKS)}")
        if opts.exporter not in EXPORTERS:
            raise ModelError(f"unknown exporter '{opts.exporter}'", f"choose one of {', '.join(EXPORTERS)}")
        src = hf.inspect_folder(Path(text), trust_remote_code=opts.trust_remote_code, trust_pickle=opts.trust_pickle)
        early = _hf_expected(src.config, opts)
        if early is not None:
            _check_data(opts, early)
        if _kv_cache_wanted(opts):
            from .decoder import export_hf_decoder

            model = hf.load_hf_model(src, opts.task, trust_remote_code=opts.trust_remote_code)
            art, check, _ = export_hf_decoder(model, out, opts.target, provenance=(f"source(hf:{name}, task={opts.task}, kv-cache)",))
            return art, check
        art_check, why_torch = _export_hf_optimum(src, opts, Path(work))
        if art_check is not None:
            return art_check
        module, config = hf.load_hf_module(src, opts.task, trust_remote_code=opts.trust_remote_code)
        shapes = {k: v[0] for k, v in opts.example_shapes.items()}
        shapes.update(opts.static_shapes)
        args = hf.example_inputs(config, shapes)
        names = ["input_ids", "attention_mask"]
        axes = {} if opts.target.static_shapes else {
            n: {0: "batch", 1: "sequence"} for n in names if n not in opts.static_shapes
        }
        from .expected import from_examples

        _check_app_io(opts, names, [hf.OUTPUT_NAMES[opts.task]], from_examples(names, args, axes))
        art, check = export_torch_checked(
            module, args, input_names=names, output_names=[hf.OUTPUT_NAMES[opts.task]], dynamic_axes=axes,
            provenance=(f"source(hf:{name}, task={opts.task})",), **common,
        )
        return art, (replace(check, exporter_notes=check.exporter_notes + (why_torch,)) if why_torch else check)
    if opts.exporter == "optimum":
        raise ModelError(f"--exporter optimum is for Hugging Face folders, not a {kind} source", "use auto, dynamo or torchscript")
    if kind == "pt2":
        if not opts.trust_pickle:
            raise ModelError(
                f"{name} is a torch.export archive; torch.export.load falls back to unpickling arbitrary objects",
                "pass --trust-pickle only if you trust who made it",
            )
        try:
            ep = torch.export.load(text)
        except Exception as e:  # noqa: BLE001
            raise ModelError(f"cannot load {name}: {first_line(e, 300)}", "re-save it with torch.export.save") from None
        args = ep.example_inputs[0] if ep.example_inputs else None
        if opts.example_shapes or opts.static_shapes or args is None:
            names, args = _examples(opts.example_shapes, opts.static_shapes, name)
        else:
            names = None
        return export_torch_checked(
            ep, args, input_names=names, reference=ep.module(), dynamic_axes={},
            provenance=(f"source(torch.export:{name})",), **common,
        )
    if kind == "pickle":
        obj = load_pickle_checkpoint(Path(text), trust_pickle=opts.trust_pickle)
        if not isinstance(obj, torch.nn.Module):
            raise ModelError(
                f"{name} holds weights only (a state dict), not the model's architecture",
                f"pass the architecture as pkg.module:factory with --weights {name}",
            )
        return _export_module(obj, opts, name, (f"source(pickle:{name}, trusted)",), (), common)
    # factory
    module = load_factory(text)
    prov = f"source(factory:{text})"
    if opts.weights is not None:
        sd = load_weights(opts.weights, trust_pickle=opts.trust_pickle)
        try:
            module.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise ModelError(
                f"--weights {opts.weights.name} does not fit {text}: {first_line(e, 240)}",
                "check that the factory builds the same architecture the weights were saved from",
            ) from None
        prov = f"source(factory:{text}, weights={opts.weights.name})"
    from ..core.usercode import module_roots

    return _export_module(module, opts, text, (prov,), module_roots(text.partition(":")[0]), common)


__all__ = ["SourceOptions", "check_data_before_export", "export_source", "parse_dynamic_axes", "parse_example_shapes", "source_kind", "Artifact"]
