"""Shared fixtures: a CLI runner and tiny models written to tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.models import cnn_data, make_cnn


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def cnn(tmp_path: Path) -> Path:
    return make_cnn(tmp_path / "cnn.onnx")


@pytest.fixture
def cnn_calib(tmp_path: Path) -> Path:
    p = tmp_path / "calib.npz"
    np.savez(p, **cnn_data(64, seed=1))
    return p


