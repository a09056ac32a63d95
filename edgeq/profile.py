"""profile: latency on this host with the target's providers, labelled honestly.

A measurement says which provider ran it and on which machine. When the
target's accelerator is not here, edgeq does not time a CPU stand-in for it.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .artifact import IoSpec
from .data import SampleSet
from .onnxutil import model_size
from .runtime import available_providers, create_session, run
from .targets import Target

# Providers whose absence means "a CPU provider can stand in, labelled as such".
CPU_FAMILY = ("CPUExecutionProvider", "XnnpackExecutionProvider")


@dataclass(frozen=True)
class ProfileResult:
    model: str
    provider: str
    host: str
    device_measurement: bool
    cold_start_ms: float
    runs: int
    p50_ms: float
    p90_ms: float
    mean_ms: float
    file_bytes: int
    note: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ProfilePlan:
    providers: tuple[str, ...]
    device_measurement: bool
    note: str


def plan(target: Target) -> ProfilePlan | None:
    """Which providers to time with here, or None (with reason) when nothing honest can be timed."""
    here = set(available_providers())
    usable = tuple(p for p in target.provider_names if p in here)
    host_arch = platform.machine().lower()
    same_arch = target.arch in ("any", host_arch) or (target.arch == "aarch64" and host_arch == "arm64")
    primary = target.provider_names[0]
    if primary in here:
        note = "" if same_arch else f"host {host_arch}, target {target.arch}: not device timing"
        return ProfilePlan(usable, same_arch, note)
    if primary in CPU_FAMILY and "CPUExecutionProvider" in here:
        return ProfilePlan(
            ("CPUExecutionProvider",),
            False,
            f"{primary} not in this onnxruntime; timed with CPUExecutionProvider on {host_arch}: not device timing",
        )
    return None


def skip_reason(target: Target) -> str:
    return (
        f"{target.provider_names[0]} is not available on this host ({', '.join(available_providers())}); "
        "no timing rather than a CPU stand-in"
    )


def synthetic_feed(io: IoSpec, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feed = {}
    for t in io.inputs:
        shape = [d if isinstance(d, int) else 1 for d in t.shape]
        dt = np.dtype(t.dtype)
        feed[t.name] = (rng.standard_normal(shape).astype(dt) if dt.kind == "f" else np.zeros(shape, dt))
    return feed


def profile(
    path: Path | str,
    target: Target,
    *,
    feed: dict[str, np.ndarray] | None = None,
    io: IoSpec | None = None,
    runs: int = 50,
    warmup: int = 5,
    threads: int = 0,
    budget_s: float = 3.0,
) -> ProfileResult | None:
    """Time one model; ``None`` when the target's providers are not on this host."""
    p = plan(target)
    if p is None:
        return None
    if feed is None:
        from .onnxutil import artifact_from

        feed = synthetic_feed(io or artifact_from(Path(path)).io)
    opts = [dict(pr.options) if pr.name in p.providers else {} for pr in target.providers if pr.name in p.providers]
    t0 = time.perf_counter()
    sess = create_session(path, providers=list(p.providers), provider_options=opts, threads=threads)
    run(sess, feed)
    cold = (time.perf_counter() - t0) * 1e3
    for _ in range(warmup):
        run(sess, feed)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < runs and (len(times) < 10 or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        run(sess, feed)
        times.append((time.perf_counter() - t) * 1e3)
    arr = np.asarray(times)
    note = p.note
    if len(times) < runs:
        note = (note + "; " if note else "") + f"time budget ended after {len(times)} runs"
    return ProfileResult(
        model=str(path),
        provider=sess.get_providers()[0],
        host=f"{platform.machine()} {platform.processor() or platform.system()}".strip(),
        device_measurement=p.device_measurement,
        cold_start_ms=round(cold, 3),
        runs=len(times),
        p50_ms=round(float(np.percentile(arr, 50)), 4),
        p90_ms=round(float(np.percentile(arr, 90)), 4),
        mean_ms=round(float(arr.mean()), 4),
        file_bytes=model_size(Path(path)),
        note=note,
    )


def feed_from(data: SampleSet | None) -> dict[str, np.ndarray] | None:
    return data.feed(0) if data is not None and len(data) else None
