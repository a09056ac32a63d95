"""edgeq: take a trained model to a quantized, verified, profiled runtime bundle.

Public API (each stage is also a CLI verb of the same name)::

    art = edgeq.export("model.onnx")   # or edgeq.export(module, (x,), target="arm64")
    tgt = edgeq.load_target("arm64")
    opt = edgeq.optimize(art, tgt, "work/fp32.onnx")
    q = edgeq.quantize(opt, tgt.quant, "work/int8.onnx", data=samples)
    report = edgeq.verify(opt.path, q.artifact.path, samples, tgt.tolerances)
    timing = edgeq.profile(q.artifact.path, tgt)
    edgeq.bundle(q.artifact, tgt, "build/bundle", info)

The whole trips the CLI runs take a config from ``edgeq.pipeline`` (and run the same checks)::

    from edgeq.pipeline import BundleConfig, ExportConfig, ProfileConfig, QuantOptions, QuantizeConfig, SourceConfig, VerifyConfig
    edgeq.export(ExportConfig(SourceConfig(Path("model.onnx")), Path("build/m"), quant=QuantOptions(calib=Path("calib.npz"))))
    edgeq.quantize(QuantizeConfig(Path("model.onnx"), Path("int8.onnx"), quant=QuantOptions(quant="int8-dynamic")))
    edgeq.bundle(BundleConfig(Path("int8.onnx"), Path("build/b")))
    edgeq.verify(VerifyConfig(Path("build/b")))           # or VerifyConfig(cand, reference=ref, data=d)
    edgeq.profile(ProfileConfig((Path("build/b"),)))
"""

from __future__ import annotations

import os as _os
from pathlib import Path

# onnxruntime (1.32, Linux) writes $TMPDIR/.ses and ~/.cache/Microsoft/DeveloperTools/.onnxruntime/
# when it is imported, unless this is set first: edgeq writes nothing outside -o. Children inherit it.
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
from typing import Any

from .core.version import __version__

__all__ = ["export", "optimize", "quantize", "verify", "profile", "bundle", "load_target", "__version__"]


def _opened(model: Any, provenance: tuple[str, ...] = ()):
    """A path the user passed in is untrusted: checked as data, then probed in a child (as the CLI does)."""
    if isinstance(model, (str, Path)):
        from .pipeline import open_model

        return open_model(Path(model), provenance)
    return model


def _trip(config: Any, kwargs: dict[str, Any]):
    """A trip config (edgeq.pipeline.ExportConfig, QuantizeConfig, BundleConfig, VerifyConfig, ProfileConfig):
    run as the CLI runs it; else None."""
    from . import pipeline

    if not isinstance(config, (pipeline.ExportConfig, pipeline.QuantizeConfig, pipeline.BundleConfig, pipeline.VerifyConfig,
                               pipeline.ProfileConfig)):
        return None
    return pipeline.run(config, **kwargs)


def _target(target: Any):
    return load_target(target) if isinstance(target, (str, Path)) else target


def export(source: Any, example_inputs: Any = None, **kwargs: Any):
    """An fp32 ONNX ``Artifact`` from a source.

    - ``export("model.onnx")``: probe the model in a child process (a crafted model cannot crash
      the caller), then load and check it, as ``edgeq export`` does;
    - ``export(module, example_inputs, target="arm64", dynamic_axes=..., opset=None)``:
      export a ``torch.nn.Module`` with torch's exporter and check it against the module;
    - ``export(ExportConfig(...), check=True)``: the whole trip of ``edgeq export`` (any source, a GGUF
      bundle on a llama.cpp target); its outcome; a failed check raises ``CheckFailed`` (``check=False``: returned).
    """
    trip = _trip(source, kwargs)
    if trip is not None:
        return trip
    if isinstance(source, (str, Path)):
        from .exporters.onnx import export_onnx

        if Path(source).suffix.lower() == ".onnx":
            _opened(source, (f"source({Path(source).name})",))
        return export_onnx(Path(source), **kwargs)
    from .exporters.torch import export_torch

    return export_torch(source, example_inputs, **kwargs)


def optimize(artifact, target, out_path, **kwargs: Any):
    """``artifact`` (an ``Artifact`` or an .onnx path) folded and shaped for ``target`` (a ``Target`` or its name)."""
    from .core.optimization import optimize as _optimize

    art, _notes = _optimize(_opened(artifact), _target(target), Path(out_path), **kwargs)
    return art


def quantize(artifact, spec=None, out_path=None, **kwargs: Any):
    """A ``QuantResult``: ``artifact`` (an ``Artifact`` or an .onnx path) quantized per ``spec`` (a ``QuantSpec``).

    ``quantize(QuantizeConfig(...))``: what ``edgeq quantize`` runs (optimize, quantize, write one file); its outcome.
    """
    trip = _trip(artifact, kwargs)
    if trip is not None:
        return trip
    from .quantization import quantize as _quantize

    return _quantize(_opened(artifact), spec, Path(out_path), **kwargs)


def verify(reference, candidate=None, data=None, tolerances=None, **kwargs: Any):
    """A ``VerifyReport``: ``candidate`` against ``reference`` (both .onnx paths, each probed first) on ``data``.

    ``verify(VerifyConfig(...))``: what ``edgeq verify`` runs (a bundle's checks, a model against its reference,
    --emulate); its outcome; a failed check raises ``CheckFailed`` (``check=False``: returned).
    """
    trip = _trip(reference, kwargs)
    if trip is not None:
        return trip
    if candidate is None:
        raise TypeError("verify() needs a reference and a candidate (.onnx paths), or a VerifyConfig")
    from .checks.comparison import verify as _verify

    _opened(reference)
    _opened(candidate)
    return _verify(reference, candidate, data, tolerances, **kwargs)


def profile(model, target=None, **kwargs: Any):
    """A ``ProfileResult`` for ``model`` (an .onnx path) on this host with ``target``'s providers (``None`` without them).

    ``profile(ProfileConfig(...))``: what ``edgeq profile`` runs (models and bundles, LLM bundles, --html, --device);
    its outcome; a failed check raises ``CheckFailed`` (``check=False``: returned).
    """
    trip = _trip(model, kwargs)
    if trip is not None:
        return trip
    if target is None:
        raise TypeError("profile() needs a target (a Target or its name), or a ProfileConfig")
    from .profiling.profiler import profile as _profile

    return _profile(model, _target(target), **kwargs)


def bundle(artifact, target=None, out=None, info=None, **kwargs: Any):
    """Write a runtime bundle for ``artifact`` (an ``Artifact`` or an .onnx path, probed) to ``out``; its path.

    ``bundle(BundleConfig(...))``: what ``edgeq bundle`` runs (checks, golden pairs, --reference); its outcome.
    """
    trip = _trip(artifact, kwargs)
    if trip is not None:
        return trip
    from .bundles.bundle import write_bundle

    return write_bundle(_opened(artifact), _target(target), Path(out), info, **kwargs)


def load_target(name_or_path):
    from .core.targets import load_target as _load

    return _load(name_or_path)
