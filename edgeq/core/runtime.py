"""onnxruntime sessions with edgeq's error handling."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ModelError, ProviderError, first_line

LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def ort():
    import onnxruntime

    return onnxruntime


def graph_level(name: str) -> Any:
    if name not in LEVELS:
        raise ModelError(f"unknown graph optimization level '{name}'", f"choose one of {', '.join(LEVELS)}")
    return getattr(ort().GraphOptimizationLevel, LEVELS[name])


def session_options(*, level: str = "all", threads: int = 0, profile_prefix: str | None = None) -> Any:
    so = ort().SessionOptions()
    so.graph_optimization_level = graph_level(level)
    # a kernel that fails logs an ERROR line of its own before the exception edgeq reports in one line: FATAL only,
    # unless EDGEQ_DEBUG=1 asks for library logs too
    so.log_severity_level = 3 if os.environ.get("EDGEQ_DEBUG") else 4
    if threads:
        so.intra_op_num_threads = threads
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so


def available_providers() -> list[str]:
    return list(ort().get_available_providers())


def create_session(
    path: Path | str | bytes,
    *,
    providers: list[str] | None = None,
    provider_options: list[dict[str, str]] | None = None,
    level: str = "all",
    threads: int = 0,
    so: Any = None,
    disabled_optimizers: list[str] | None = None,
) -> Any:
    providers = providers or ["CPUExecutionProvider"]
    missing = [p for p in providers if p not in available_providers()]
    if missing:
        raise ProviderError(
            f"execution provider {missing[0]} is not available in this onnxruntime",
            f"available here: {', '.join(available_providers())}; install the onnxruntime build that ships it",
        )
    so = so or session_options(level=level, threads=threads)
    if isinstance(path, (bytes, bytearray)):
        # onnxruntime resolves external data of in-memory models against the current
        # directory: check the bytes first (any external reference is refused)
        from .onnxutil import load_model_bytes

        load_model_bytes(path, load_weights=False)
        model: Any = bytes(path)
        path = "<model bytes>"
    else:
        model = str(path)
    try:
        kw = {"disabled_optimizers": disabled_optimizers} if disabled_optimizers else {}
        return ort().InferenceSession(model, sess_options=so, providers=providers, provider_options=provider_options, **kw)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ModelError(f"onnxruntime cannot load {Path(path).name}: {first_line(e, 300)}", "check that the model is valid (edgeq inspect)") from None


def fit_empty(session: Any, feed: dict[str, Any]) -> dict[str, Any]:
    """``feed`` with each zero-size array in the type the session declares for it: an empty past holds no values, so
    one feed serves a decoder with an fp32 cache and the same decoder with an int8 cache (exporters/kvcache.py)."""
    if not any(getattr(v, "size", 1) == 0 for v in feed.values()):
        return feed
    import numpy as np

    types = {i.name: i.type for i in session.get_inputs()}
    named = {"tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(float)": np.float32, "tensor(float16)": np.float16}
    out = dict(feed)
    for k, v in feed.items():
        want = named.get(types.get(k, ""))
        if want is not None and getattr(v, "size", 1) == 0 and np.asarray(v).dtype != want:
            out[k] = np.asarray(v).astype(want)
    return out


def run(session: Any, feed: dict[str, Any]) -> list[Any]:
    from .values import as_array

    try:
        outs = session.run(None, fit_empty(session, feed))
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"onnxruntime failed to run the model: {first_line(e, 300)}", "check the input shapes and dtypes") from None
    return [as_array(o) for o in outs]  # a ZipMap's maps and string labels as arrays (edgeq/core/values.py)
