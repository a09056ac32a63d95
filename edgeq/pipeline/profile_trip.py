"""The measuring trip (``edgeq profile``): models and bundles on this host, LLM bundles, --html, --device."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import check_coverage_share, check_onnx_path


@dataclass(frozen=True)
class DeviceOptions:
    """``profile --device ssh://user@host``: each bundle's own runner on the device over SSH."""

    url: str
    known_hosts: Path | None = None
    accept_new_host_key: bool = False
    identity: Path | None = None
    python: str = "python3"
    timeout: int = 900


@dataclass(frozen=True)
class ProfileConfig:
    """``edgeq profile``: models or bundles measured on this host with the target's providers (or on ``device``)."""

    models: tuple[Path, ...]
    target: str | None = None
    """None: the first bundle's target, else cpu-x86_64"""
    data: Path | None = None
    runs: int = 50
    warmup: int = 5
    threads: int = 0
    budget: float = 10.0
    top: int = 10
    reference: Path | None = None
    min_accel_coverage: float | None = None
    html: Path | None = None
    setup_runtime: bool = False
    device: DeviceOptions | None = None


@dataclass(frozen=True)
class ProfileOutcome:
    target: str
    """the target's name; with --device: the device's URL"""
    results: list[dict[str, Any]]
    min_accel_coverage: float | None = None
    device: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"device" if self.device else "target": self.target, "results": self.results}


class _Silent:
    def update(self, text: str) -> None:
        return None


def _no_spinner(text: str) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext(_Silent())


def profile_models(cfg: ProfileConfig, *, spinner: Callable[[str], contextlib.AbstractContextManager] = _no_spinner,
                   setup_progress: Any = None, say: Callable[[str], None] | None = None) -> ProfileOutcome:
    """``edgeq profile``: latency, memory, per-op time and placement of each model on this host (KV-cache decoder
    bundles: TTFT and decode rate too), the --html report; with ``cfg.device`` each bundle runs on the device.
    ``spinner(text)`` wraps the timed runs (its value's ``update(text)`` names the model); ``setup_progress``:
    provider environment set-up steps; ``say(text)``: the copy to a device. Failed checks: :func:`check_profile`."""
    if cfg.device is not None:
        return _profile_on_device(cfg, say)
    from ..core.targets import load_target
    from ..profiling.profiler import MeasureOptions, load_input, measure, resolve_backend

    check_coverage_share(cfg.min_accel_coverage)
    if cfg.reference is not None:
        check_onnx_path(cfg.reference)
    if cfg.html is not None:  # an existing report edgeq wrote is replaced; anything else is refused, before any work
        from ..core.outputs import check_output_path

        check_output_path(cfg.html, force=True, is_dir=False, inputs=(*cfg.models, cfg.data, cfg.reference), what="--html report")
    inputs = [load_input(m, data=cfg.data) for m in cfg.models]
    if cfg.target or not inputs[0].bundle_target:
        tg = load_target(cfg.target or "cpu-x86_64")
    else:  # a bundle is data: its manifest may name only a target shipped with edgeq
        from ..core.targets import bundle_target

        tg = bundle_target(inputs[0].bundle_target, f"the manifest of bundle {inputs[0].label}")
    opts = MeasureOptions(runs=cfg.runs, warmup=cfg.warmup, threads=cfg.threads, budget_s=cfg.budget, top=cfg.top)
    backend = resolve_backend(tg, setup_runtime=cfg.setup_runtime, progress=setup_progress)
    reports = []
    with spinner("profiling ...") as status:
        for i, inp in enumerate(inputs, 1):
            status.update(f"profiling {inp.label} ({i}/{len(inputs)}, {backend.kind}, up to {cfg.budget:.0f} s of timed runs)")
            reports.append(measure(inp, tg, backend, opts, reference=cfg.reference))
    from ..profiling.llm import is_llm_bundle, profile_llm

    for m, r in zip(cfg.models, reports):  # KV-cache decoder bundles: TTFT, decode tokens/s by context, peak RSS, KV bytes/token
        if is_llm_bundle(m):
            r["llm"] = profile_llm(m, threads=cfg.threads)
    if cfg.html is not None:
        from ..reporting.html_report import write_html

        write_html(cfg.html, reports, target=tg.name)
    return ProfileOutcome(target=tg.name, results=reports, min_accel_coverage=cfg.min_accel_coverage)


def _profile_on_device(cfg: ProfileConfig, say: Callable[[str], None] | None) -> ProfileOutcome:
    """profile --device: each bundle's own runner on the device over SSH."""
    from ..devices.ssh import SshOptions, parse_device, run_on_device

    d = cfg.device
    assert d is not None
    dev = parse_device(d.url)
    opts = SshOptions(known_hosts=d.known_hosts, accept_new_host_key=d.accept_new_host_key, identity=d.identity,
                      python=d.python, command_timeout_s=float(d.timeout))
    results = []
    for m in cfg.models:
        if say is not None:
            say(f"copying {m} to {dev.url()} and running it there")
        results.append(run_on_device(m, dev, opts, runs=cfg.runs, warmup=cfg.warmup, threads=cfg.threads))
    return ProfileOutcome(target=dev.url(), results=results, device=True)


def check_profile(outcome: ProfileOutcome) -> None:
    """Measured outputs outside the target's tolerances, too little on the accelerator, or golden pairs failing
    on the device: CheckFailed (exit 1)."""
    if outcome.device:
        from ..devices.ssh import check_remote

        for r in outcome.results:
            check_remote(r)
        return
    failed = [f for r in outcome.results for f in ((r.get("numerics") or {}).get("vs_reference") or {}).get("failures", [])]
    if failed:
        from ..errors import CheckFailed

        raise CheckFailed(f"measured outputs outside target {outcome.target}'s tolerances: {'; '.join(failed)}", "see the numerics table")
    if outcome.min_accel_coverage is not None:
        from ..profiling.profiler import check_coverage

        check_coverage(outcome.results, outcome.min_accel_coverage)
