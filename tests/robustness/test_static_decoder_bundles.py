"""Hostile static (NPU, fixed-slot) decoder bundles: the layout the host reads from the graphs and their
``edgeq_static_decoder`` metadata is data. A bad layout is one line, exit 2, from ``edgeq generate``, the
bundle's ``run.py --prompt`` and ``edgeq verify`` (before: RecursionError / TypeError tracebacks and
"internal error" lines). Also the standalone runner's timing reads only files its manifest lists."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeq.cli import app

from tests.robustness.failsafe import assert_fails_safely, assert_one_error_line

META_KEY = "edgeq_static_decoder"


@pytest.fixture(scope="module")
def static_bundle(tmp_path_factory) -> Path:
    """A real static decoder bundle (qnn-htp target: model.onnx + prefill.onnx sharing model.onnx.data), about 14 s."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from typer.testing import CliRunner

    from fixtures.llm import save_lm

    base = tmp_path_factory.mktemp("static")
    folder = save_lm(base / "src", "llama")
    out = base / "bundle"
    r = CliRunner().invoke(app, ["export", str(folder), "--task", "text-generation", "--target", "qnn-htp", "--quant", "none",
                                 "--no-profile", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert (out / "prefill.onnx").is_file()
    return out


def _graphs(change):
    """Apply ``change(model)`` to both graphs (read without their shared weights file, which stays as it is)."""
    def apply(d: Path) -> None:
        import onnx

        for name in ("model.onnx", "prefill.onnx"):
            m = onnx.load(str(d / name), load_external_data=False)
            change(m)
            onnx.save(m, str(d / name))
    return apply


def _meta(value: str):
    def change(m) -> None:
        next(p for p in m.metadata_props if p.key == META_KEY).value = value
    return _graphs(change)


def _no_cache_length(m) -> None:
    next(i for i in m.graph.input if i.name.startswith("past_key_values.")).type.tensor_type.shape.dim[2].Clear()


CASES = {
    "metadata nested too deeply": (_meta("[" * 30_000 + "]" * 30_000), "nested too deeply"),
    "cache length unknown": (_graphs(_no_cache_length), "static"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_hostile_static_layout_is_one_line(static_bundle, tmp_path, runner, case):
    from edgeq.bundles.reader import write_manifest
    from fixtures.llm import run_script

    change, word = CASES[case]
    b = tmp_path / "b"
    shutil.copytree(static_bundle, b)
    change(b)
    write_manifest(b, json.loads((b / "manifest.json").read_text()), kind="genai")  # consistent: every checksum right
    assert_fails_safely(runner, ["generate", str(b), "--prompt", "the", "--max-new-tokens", "3"], b, word)
    assert_fails_safely(runner, ["verify", str(b), "--model", "onnx"], b, word)
    p = run_script(b / "run.py", ["--prompt", "the", "--max-new-tokens", "3"], tmp_path / "cwd", timeout=120)
    assert p.returncode == 2, p.stderr
    assert word.lower() in assert_one_error_line(p.stderr).lower()


@pytest.mark.slow
def test_the_intact_static_bundle_generates_and_verifies(static_bundle, tmp_path, runner):
    """Control for the cases above: the unchanged bundle generates and verifies."""
    r = runner.invoke(app, ["generate", str(static_bundle), "--prompt", "the", "--max-new-tokens", "3", "--json"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["verify", str(static_bundle), "--model", "onnx"])
    assert r.exit_code == 0, r.output


def test_a_sliding_window_past_any_index_is_refused_by_the_layout():
    """A window from the metadata is an index the host subtracts from positions: one past int64 (numpy's
    OverflowError later, an internal error) is refused with the layout's other checks; a real one is accepted."""
    from edgeq.exporters.static_decoder import BIAS_SLIDING, StaticLayout

    shapes = {"input_ids": [1, 4], "past_key_values.0.key": [1, 2, 16, 8], BIAS_SLIDING: [1, 1, 1, 4, 16]}
    assert StaticLayout(shapes, {"window": 6}).window == 6
    for window in (10**30, 1 << 40):
        with pytest.raises(ValueError, match="sliding window"):
            StaticLayout(shapes, {"window": window})


def test_run_py_timing_reads_only_listed_golden_inputs(tmp_path):
    """``run.py --runs N`` (how ``edgeq profile BUNDLE --device`` times on a device) loads the golden input the
    manifest names only when it is one of the bundle's checksummed files, as the golden check does."""
    import onnx
    from onnx import TensorProto, helper

    from edgeq.bundles import runner as R

    root = tmp_path / "bundle"
    (root / "golden").mkdir(parents=True)
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(root / "model.onnx"))
    np.save(root / "golden" / "in.npy", np.ones(2, np.float32))
    np.save(tmp_path / "outside.npy", np.ones(2, np.float32))  # beside the bundle, not in it
    manifest = {"model": {"onnx": "model.onnx", "ort": None}, "inputs": [{"name": "x"}], "target": {"session_options": {}},
                "files": {"model.onnx": {}, "golden/in.npy": {}}, "golden": {"pairs": [{"inputs": ["golden/in.npy"]}]}}
    assert R.time_model(str(root), manifest, model="onnx", runs=2, warmup=0)["runs"] >= 2  # control: a listed input
    for rel in ("../outside.npy", str(tmp_path / "outside.npy")):
        manifest["golden"]["pairs"][0]["inputs"] = [rel]
        with pytest.raises(R.BundleCorrupt, match="not in its file list"):
            R.time_model(str(root), manifest, model="onnx", runs=2, warmup=0)
