"""edgeq: take a trained model to a quantized, verified, profiled runtime bundle.

Public API (each stage is also a CLI verb of the same name)::

    art = edgeq.export("model.onnx")   # or edgeq.export(module, (x,), target="arm64")
    tgt = edgeq.load_target("arm64")
    opt = edgeq.optimize(art, tgt, "work/fp32.onnx")
    q = edgeq.quantize(opt, tgt.quant, "work/int8.onnx", data=samples)
    report = edgeq.verify(opt.path, q.artifact.path, samples, tgt.tolerances)
    timing = edgeq.profile(q.artifact.path, tgt)
    edgeq.bundle(q.artifact, tgt, "build/bundle", info)
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


def export(source: Any, example_inputs: Any = None, **kwargs: Any):
    """An fp32 ONNX ``Artifact`` from a source.

    - ``export("model.onnx")``: load and check an ONNX model;
    - ``export(module, example_inputs, target="arm64", dynamic_axes=..., opset=None)``:
      export a ``torch.nn.Module`` with torch's exporter and check it against the module.
    """
    if isinstance(source, (str, Path)):
        from .exporters.onnx import export_onnx

        return export_onnx(Path(source), **kwargs)
    from .exporters.torch import export_torch

    return export_torch(source, example_inputs, **kwargs)


def optimize(artifact, target, out_path, **kwargs: Any):
    from .core.optimization import optimize as _optimize

    art, _notes = _optimize(artifact, target, Path(out_path), **kwargs)
    return art


def quantize(artifact, spec, out_path, **kwargs: Any):
    from .quantization import quantize as _quantize

    return _quantize(artifact, spec, Path(out_path), **kwargs)


def verify(reference, candidate, data, tolerances, **kwargs: Any):
    from .checks.comparison import verify as _verify

    return _verify(reference, candidate, data, tolerances, **kwargs)


def profile(model, target, **kwargs: Any):
    from .profiling.profiler import profile as _profile

    return _profile(model, target, **kwargs)


def bundle(artifact, target, out, info, **kwargs: Any):
    from .bundles.bundle import write_bundle

    return write_bundle(artifact, target, Path(out), info, **kwargs)


def load_target(name_or_path):
    from .core.targets import load_target as _load

    return _load(name_or_path)
