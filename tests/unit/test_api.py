"""The public API holds whatever is imported, and the import graph stays acyclic (issue 17)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
from pathlib import Path

import pytest

import edgeq
from edgeq.core import isolate
from edgeq.core.data import SampleSet
from edgeq.errors import ModelError
from tests.models import cnn_data, make_cnn

ROOT = Path(__file__).resolve().parents[2]
API = ("export", "optimize", "quantize", "verify", "profile", "bundle", "load_target")


def _import_everything() -> list[str]:
    names = []
    for m in pkgutil.walk_packages(edgeq.__path__, "edgeq."):
        importlib.import_module(m.name)
        names.append(m.name)
    return names


def test_every_module_imports_and_the_api_stays_functions():
    names = _import_everything()
    assert "edgeq.cli" in names and "edgeq.core.targets" in names and len(names) > 40
    for verb in API:
        assert inspect.isfunction(getattr(edgeq, verb)), f"edgeq.{verb} is {type(getattr(edgeq, verb)).__name__}"
    # no submodule or subpackage may carry an API verb's name (importing it would rebind edgeq.<verb>)
    assert not {n.split(".")[1] for n in names} & set(API)


def test_each_api_function_runs_on_a_tiny_model(tmp_path):
    _import_everything()
    src = make_cnn(tmp_path / "m.onnx")
    samples = SampleSet(arrays={"x": cnn_data(16)["x"][:, None]}, stacked={"x": True}, labels=None, source="test")
    tgt = edgeq.load_target("cpu-x86_64")

    art = edgeq.export(str(src))
    assert art.path == src and art.io.input_names == ("x",)
    opt = edgeq.optimize(art, tgt, tmp_path / "fp32.onnx")
    assert opt.path.is_file()
    q = edgeq.quantize(opt, tgt.quant.with_overrides(mode="int8-dynamic"), tmp_path / "int8.onnx")
    import onnx

    ops = {n.op_type for n in onnx.load(str(q.artifact.path)).graph.node}
    assert ops & {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger", "QLinearConv"}, ops
    report = edgeq.verify(opt.path, q.artifact.path, samples, tgt.tolerances)
    assert report.samples == 16 and report.passed and report.outputs[0].max_abs < 0.5
    timing = edgeq.profile(q.artifact.path, "cpu-x86_64", runs=3, warmup=1, budget_s=0.5)
    assert timing is not None and timing.provider == "CPUExecutionProvider"
    from edgeq.bundles.bundle import BundleInputs

    feeds = (samples.feed(0),)
    out = edgeq.bundle(q.artifact, tgt, tmp_path / "bundle", BundleInputs(golden_feeds=feeds))
    assert (Path(out) / "manifest.json").is_file()


def test_the_api_probes_an_onnx_path_in_a_child_like_the_cli(tmp_path, monkeypatch):
    # a model whose opening kills the process must become one ModelError, not a crash of the caller
    src = make_cnn(tmp_path / "m.onnx")
    monkeypatch.setattr(isolate, "_CHILD", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    for call in (lambda: edgeq.export(str(src)), lambda: edgeq.quantize(src, None, tmp_path / "q.onnx"),
                 lambda: edgeq.verify(src, src, None, None)):
        with pytest.raises(ModelError, match="SIGSEGV"):
            call()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_no_import_cycles_and_no_private_names_across_modules():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import import_graph
    finally:
        sys.path.remove(str(ROOT / "tools"))
    graph, private = import_graph.edges(ROOT / "edgeq")
    assert "edgeq.core.targets" in graph and graph["edgeq.cli"]  # the graph is really read
    assert import_graph.cycles(graph) == []
    assert private == []
    # nothing imports the package root (it imports every stage lazily for the API)
    assert [m for m, deps in graph.items() if "edgeq" in deps and m != "edgeq"] == []


def test_the_import_check_finds_a_cycle_and_a_private_name(tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import import_graph
    finally:
        sys.path.remove(str(ROOT / "tools"))
    pkg = tmp_path / "edgeq"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .b import _g\n")
    (pkg / "b.py").write_text("from . import a\n")
    graph, private = import_graph.edges(pkg)
    assert import_graph.cycles(graph) == [["edgeq.a", "edgeq.b"]]
    assert private == [("edgeq.a", "edgeq.b", "_g")]


def test_the_version_is_the_packages():
    from edgeq.core.version import __version__

    assert edgeq.__version__ == __version__
    text = (ROOT / "pyproject.toml").read_text()
    assert f'version = "{__version__}"' in text
