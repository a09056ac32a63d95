"""Which execution providers this host can run: one discovery for every command.

``edgeq export``, ``edgeq profile`` (and ``edgeq doctor``) ask here, so a provider
one command can use is never "not available on this host" for another. Three kinds:

- ``built-in``: what the installed ``onnxruntime`` module lists;
- ``plugin``: a provider library a PyPI package brings (``onnxruntime-qnn``); the
  measurement worker registers it (``ort.register_execution_provider_library``)
  in its own process;
- ``environment``: ``onnxruntime-openvino`` replaces the ``onnxruntime`` module, so
  it lives in its own Python (``EDGEQ_OPENVINO_PYTHON`` or edgeq's managed
  environment, see ``edgeq.profiling.ovenv``); discovery never creates one.
"""

from __future__ import annotations

import importlib.util
import platform
from dataclasses import dataclass

QNN = "QNNExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"


@dataclass(frozen=True)
class Provider:
    name: str
    kind: str  # built-in | plugin | environment
    plugin: str | None = None  # the worker's plugin key ("qnn")
    python: str | None = None  # the interpreter of an own environment
    note: str = ""


def qnn_plugin_installed() -> bool:
    return importlib.util.find_spec("onnxruntime_qnn") is not None


def discover_providers() -> tuple[Provider, ...]:
    """Every provider reachable here, built-in ones first, in onnxruntime's order."""
    import onnxruntime as ort

    found = [Provider(name, "built-in") for name in ort.get_available_providers()]
    names = {p.name for p in found}
    if QNN not in names and qnn_plugin_installed():
        sim = platform.machine().lower() in ("x86_64", "amd64")
        found.append(Provider(QNN, "plugin", plugin="qnn",
                              note="onnxruntime-qnn plugin" + (": HTP simulator (placement and numerics, not device timing)" if sim else "")))
    if OPENVINO not in names:
        from . import ovenv
        from ..errors import ProviderError

        try:
            py = ovenv.find_python()
        except ProviderError:  # EDGEQ_OPENVINO_PYTHON names no file: profile says so when asked for OpenVINO
            py = None
        if py is not None:
            found.append(Provider(OPENVINO, "environment", python=str(py), note=f"onnxruntime-openvino in {py}"))
    return tuple(found)


def available_providers() -> list[str]:
    """Names of the providers :func:`discover_providers` finds."""
    return [p.name for p in discover_providers()]


def find_provider(name: str) -> Provider | None:
    return next((p for p in discover_providers() if p.name == name), None)
