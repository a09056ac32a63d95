"""Bundles built in the tests (through the library, no quantization: fast)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeq.bundles.bundle import BundleInputs, generate_keypair, write_bundle
from edgeq.core.onnxutil import artifact_from
from edgeq.core.targets import load_target

from tests.models import make_cnn


def golden_feeds(n: int = 2, seed: int = 3) -> tuple[dict[str, np.ndarray], ...]:
    rng = np.random.default_rng(seed)
    return tuple({"x": rng.random((1, 1, 8, 8), dtype=np.float32)} for _ in range(n))


def build(out: Path, *, model: Path | None = None, target: str = "arm64", **kw) -> Path:
    """A bundle of the tiny CNN at ``out`` (the model is written next to it unless given)."""
    out = Path(out)
    if model is None:
        model = make_cnn(out.parent / f"{out.name}-cnn.onnx", seed=kw.pop("seed", 0))
    art = artifact_from(model, (f"source({Path(model).name})",))
    info = BundleInputs(golden_feeds=kw.pop("golden_feeds", golden_feeds()), **kw)
    return write_bundle(art, load_target(target), out, info)


def keypair(path: Path) -> tuple[Path, Path]:
    return generate_keypair(path)
