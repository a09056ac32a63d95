"""edgeq export for NPU targets: provider discovery shared with profile, placement in the table, --json and manifest."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from edgeq.cli import app
from tests.models import cnn_data, make_cnn

qnn = pytest.mark.skipif(importlib.util.find_spec("onnxruntime_qnn") is None,
                         reason="onnxruntime-qnn not installed (pip install edgeq[profile])")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    p = tmp_path / "calib.npz"
    np.savez(p, **cnn_data(16, seed=1))
    return p


def _export(runner, model: Path, out: Path, *args):
    r = runner.invoke(app, ["export", str(model), "-o", str(out), *map(str, args), "--json"])
    return r, (json.loads(r.stdout) if r.exit_code in (0, 1) and r.stdout.strip() else None)


def _with_erf(src: Path, dst: Path) -> Path:
    """The tiny CNN with relu1 replaced by Erf (no NNAPI kernel, no rewrite): one node falls back, two partitions."""
    m = onnx.load(str(src))
    nodes = list(m.graph.node)
    i = [n.name for n in nodes].index("relu1")
    nodes[i] = helper.make_node("Erf", ["c1"], ["r1"], name="erf1")
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    onnx.save(m, str(dst))
    return dst


def test_discovery_is_one_function_for_export_and_profile(monkeypatch):
    """profile's backend and export's placement both follow edgeq.profiling.providers.discover_providers."""
    import edgeq.profiling.providers as prov
    from edgeq.profiling.profiler import resolve_backend, skip_reason
    from edgeq.core.targets import load_target

    tg = load_target("qnn-htp")
    monkeypatch.setattr(prov, "qnn_plugin_installed", lambda: True)
    assert prov.find_provider("QNNExecutionProvider").kind == "plugin"
    assert "QNNExecutionProvider" in prov.available_providers()
    assert resolve_backend(tg).kind == "qnn-plugin"
    assert "not available on this host" not in skip_reason(tg)
    monkeypatch.setattr(prov, "qnn_plugin_installed", lambda: False)
    assert "QNNExecutionProvider" not in prov.available_providers()
    assert resolve_backend(tg).kind == "estimate"
    assert "not available on this host" in skip_reason(tg)


@pytest.mark.slow
def test_export_without_the_plugin_estimates_and_labels_it(runner, tmp_path, data, monkeypatch):
    import edgeq.profiling.providers as prov

    monkeypatch.setattr(prov, "qnn_plugin_installed", lambda: False)
    fp32 = make_cnn(tmp_path / "cnn.onnx", batch=1)
    r, res = _export(runner, fp32, tmp_path / "b", "--target", "qnn-htp", "--calib", data, "--no-profile")
    assert r.exit_code == 0, r.output
    pl = res["placement"]
    assert pl["kind"] == "estimate" and "did not run" in pl["basis"] and pl["accel_node_share"] == 1.0
    man = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert man["placement"]["kind"] == "estimate" and man["placement"]["nodes_on_accelerator"] == pl["nodes_total"]
    assert man["model"]["ep_context"] is None  # no provider here to compile with


@pytest.mark.slow
def test_estimated_fallback_has_reason_and_fix_and_coverage_gate_keeps_bundle(runner, tmp_path, data):
    odd = _with_erf(make_cnn(tmp_path / "cnn.onnx", batch=1), tmp_path / "erf.onnx")
    out = tmp_path / "b"
    r, res = _export(runner, odd, out, "--target", "nnapi", "--calib", data, "--no-profile", "--min-accel-coverage", "0.99")
    assert r.exit_code == 1 and "coverage below 99%" in r.stderr and "(estimate)" in r.stderr
    pl = res["placement"]
    assert pl["kind"] == "estimate" and pl["accel_partitions"] == 2 and pl["accel_node_share"] < 0.99
    (fb,) = [f for f in pl["fallback"] if f["node"] == "erf1 (Erf)"]
    assert "op Erf is not in nnapi's supported ops" in fb["reason"] and "[ops] rewrites" in fb["fix"]
    man = json.loads((out / "manifest.json").read_text())  # the bundle is still written, and says the same
    assert man["placement"]["fallback"] == [{k: f[k] for k in ("node", "provider", "reason", "fix")} for f in pl["fallback"]]
    r = runner.invoke(app, ["verify", str(out)])
    assert r.exit_code == 0, r.output
    # the human table: labelled estimate, and a fallback table with the fix
    r = runner.invoke(app, ["export", str(odd), "-o", str(out), "--target", "nnapi", "--calib", str(data), "--no-profile", "--force"])
    assert r.exit_code == 0, r.output
    assert "ESTIMATE" in r.stdout and "nodes not on Nnapi" in r.stdout and "erf1" in r.stdout


def test_min_accel_coverage_is_checked_before_work(runner, tmp_path, data):
    fp32 = make_cnn(tmp_path / "cnn.onnx", batch=1)
    r = runner.invoke(app, ["export", str(fp32), "-o", str(tmp_path / "b"), "--calib", str(data), "--min-accel-coverage", "0.9"])
    assert r.exit_code == 2 and "no accelerator" in r.stderr and not (tmp_path / "b").exists()
    r = runner.invoke(app, ["export", str(fp32), "-o", str(tmp_path / "b"), "--target", "nnapi", "--min-accel-coverage", "95"])
    assert r.exit_code == 2 and "between 0 and 1" in r.stderr


@qnn
@pytest.mark.slow
def test_qnn_export_measures_placement_on_the_simulator(runner, tmp_path, data):
    fp32 = make_cnn(tmp_path / "cnn.onnx", batch=1)
    out = tmp_path / "b"
    r, res = _export(runner, fp32, out, "--target", "qnn-htp", "--calib", data, "--min-accel-coverage", "0.95")
    assert r.exit_code == 0, r.output
    assert "not available on this host" not in r.output
    pl = res["placement"]
    assert pl["kind"] == "measured" and pl["backend"] == "qnn-plugin"
    assert pl["accel_node_share"] == 1.0 and pl["accel_partitions"] == 1 and pl["fallback"] == []
    assert "simulator" in pl["basis"] and "not device timing" in pl["basis"]
    assert res["ep_context"]["model"] == "model_ctx.onnx"
    man = json.loads((out / "manifest.json").read_text())
    assert man["placement"]["kind"] == "measured" and man["placement"]["nodes_on_accelerator"] == pl["nodes_total"] > 10
    assert "simulator" in res["profile"]["skipped"]


# --------------------------------------------------------------------------- static shapes by default


def _dynamic_hw(tmp_path: Path) -> Path:
    """The tiny CNN with batch, height and width all dynamic (GlobalAveragePool makes it size-agnostic)."""
    m = onnx.load(str(make_cnn(tmp_path / "cnn.onnx")))
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    p = tmp_path / "dyn_hw.onnx"
    onnx.save(m, str(p))
    return p


def _in_dims(path: Path) -> list:
    d = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    return [x.dim_value if x.HasField("dim_value") else x.dim_param for x in d]


@pytest.mark.parametrize("name", ["qnn-htp", "nnapi", "coreml", "openvino-npu"])
def test_npu_targets_declare_static_shapes(name):
    from edgeq.core.targets import load_target

    assert load_target(name).static_shapes is True


@pytest.mark.slow
def test_static_shape_target_pins_batch_and_axes_from_calibration(runner, tmp_path, data, monkeypatch):
    import edgeq.profiling.providers as prov

    monkeypatch.setattr(prov, "qnn_plugin_installed", lambda: False)  # estimate: fast, and dynamic axes would show there
    src = _dynamic_hw(tmp_path)
    out = tmp_path / "b"
    r, res = _export(runner, src, out, "--target", "coreml", "--calib", data, "--no-profile")
    assert r.exit_code == 0, r.output
    assert _in_dims(out / "model.onnx") == [1, 1, 8, 8]
    assert any("pinned batch axis of x to 1" in n for n in res["notes"])
    assert any("pinned x to 1x1x8x8 from the calibration data" in n and "'H') = 8" in n for n in res["notes"])
    assert not any("dynamic shape" in f["reason"] for f in res["placement"]["fallback"])
    # the same model on a target that runs dynamic shapes keeps them
    r, _ = _export(runner, src, tmp_path / "cpu", "--calib", data, "--no-profile")
    assert r.exit_code == 0, r.output
    assert _in_dims(tmp_path / "cpu" / "model.onnx") == ["N", 1, "H", "W"]


def test_static_shape_option_overrides_the_data_and_no_data_is_a_clear_error(tmp_path):
    from edgeq.errors import ModelError
    from edgeq.core.onnxutil import artifact_from
    from edgeq.core.optimization import optimize
    from edgeq.core.targets import load_target

    art = artifact_from(_dynamic_hw(tmp_path))
    tg = load_target("nnapi")
    opt, notes = optimize(art, tg, tmp_path / "a.onnx", static_shapes={"x": (2, 1, 16, 12)}, data_shapes={"x": (1, 1, 8, 8)})
    assert _in_dims(opt.path) == [2, 1, 16, 12] and any(n.startswith("pinned x to 2x1x16x12") for n in notes)
    opt, _ = optimize(art, tg, tmp_path / "b.onnx", data_shapes={"x": (1, 1, 8, 8)})
    assert _in_dims(opt.path) == [1, 1, 8, 8]
    with pytest.raises(ModelError) as e:
        optimize(art, tg, tmp_path / "c.onnx")
    assert "axis 2 ('H') is dynamic" in e.value.message and "--static-shape x=" in e.value.hint and "--calib" in e.value.hint


# --------------------------------------------------------------------------- context binary or a reason


def _export_lib(src: Path, out: Path, data: Path, target):
    """The library's export with a given Target object (e.g. one without its rewrites)."""
    from edgeq.core.onnxutil import artifact_from
    from edgeq.pipeline import ExportOptions, run_export

    return run_export(artifact_from(src), ExportOptions(target=target, spec=target.quant, out=out, calib=data, do_profile=False))


@qnn
@pytest.mark.slow
def test_qnn_context_binary_or_the_providers_reason_and_rewrites_fix_it(runner, tmp_path, data):
    """Float nodes left inside a QDQ graph (HardSigmoid, not rewritten) make the HTP simulator refuse to compile."""
    from tests.models import make_hardswish_cnn

    from edgeq.core.targets import load_target

    from dataclasses import replace

    src = make_hardswish_cnn(tmp_path / "hs.onnx")
    tg = load_target("qnn-htp")
    out = tmp_path / "b"
    # the recipe before activation QDQ (weight ops only) and no rewrites: HardSigmoid stays float, the HTP refuses
    res = _export_lib(src, out, data, replace(tg, rewrites=(), quant=replace(tg.quant, activation_ops=()))).to_dict()
    ctx = res["ep_context"]
    assert ctx["built"] is False and ctx["needs_on_device_compilation"] is True
    assert "QNN_COMMON_ERROR" in ctx["reason"]  # the provider's own words
    assert not (out / "model_ctx.onnx").exists()
    man = json.loads((out / "manifest.json").read_text())
    assert man["model"]["ep_context"] == ctx
    assert man["placement"]["kind"] == "failed" and "QNN_COMMON_ERROR" in man["placement"]["reason"]
    assert "HardSigmoid" in man["placement"]["hint"]
    assert runner.invoke(app, ["verify", str(out)]).exit_code == 0  # the manifest (and its schema) stay valid
    r = runner.invoke(app, ["profile", str(out), "--runs", "5", "--warmup", "0", "--budget", "1"])
    assert r.exit_code == 2
    assert "QNN_COMMON_ERROR" in r.stderr and "needs compiling on the device" in r.stderr and "HardSigmoid" in r.stderr
    assert "check that the target's provider and device exist" not in r.stderr
    # with qnn-htp's rewrites (HardSigmoid -> Mul/Add/Clip, ReduceMean -> GlobalAveragePool) it all compiles
    res = _export_lib(src, tmp_path / "ok", data, tg).to_dict()
    assert res["ep_context"]["model"] == "model_ctx.onnx" and (tmp_path / "ok" / "model_ctx.onnx").is_file()
    pl = res["placement"]
    assert pl["kind"] == "measured" and pl["accel_node_share"] == 1.0 and pl["accel_partitions"] == 1


# --------------------------------------------------------------------------- 16-bit activations on the simulator


@qnn
@pytest.mark.slow
def test_max_drop_search_runs_its_candidates_on_the_htp_simulator(runner, tmp_path, data, monkeypatch):
    from edgeq.profiling.accel import accelerator_outputs
    from edgeq.core.data import load_samples
    from edgeq.core.onnxutil import artifact_from
    from edgeq.quantization.int8 import static
    from edgeq.core.targets import load_target
    from tests.models import make_hardswish_cnn

    src = make_hardswish_cnn(tmp_path / "hs.onnx")
    # an unreachable budget walks the whole search: 16-bit steps first, then float, each run on the simulator
    out = tmp_path / "b"
    r, res = _export(runner, src, out, "--target", "qnn-htp", "--calib", data, "--no-profile", "--max-drop", "-0.01")
    assert r.exit_code == 1 and "budget not met" in r.stderr and (out / "manifest.json").is_file()
    s = res["quantization"]["search"]
    assert s["candidates_run_on"] == "QNNExecutionProvider (qnn-plugin)" and s["activation_16bit"] == "uint16"
    assert any(st["kept_16bit"] > 0 for st in s["steps"]) and any(st["kept_float"] > 0 for st in s["steps"])
    # A8W8 and A16W8 side by side, both run on the simulator against fp32 on the CPU provider
    cmp = res["activations_compared"]
    assert cmp["run_on"] == "QNNExecutionProvider (qnn-plugin)" and set(cmp["models"]) == {"A8W8", "A16W8 (uint16)"}
    for m in cmp["models"].values():
        assert m["cosine"] > 0.99 and m["top1_agreement"] >= 0.9
        assert m["placement"] == "measured" and m["accel_node_share"] == 1.0 and m["accel_partitions"] == 1
    assert cmp["models"]["A16W8 (uint16)"]["max_abs"] < cmp["models"]["A8W8"]["max_abs"]  # 16 bits are closer to fp32
    # the runner gives the simulator's numbers: close to the CPU provider's, not the same bits
    tg = load_target("qnn-htp")
    run = accelerator_outputs(tg)
    art = artifact_from(out / "model.onnx")
    feeds = load_samples(data, art.io)
    model = onnx.load(str(out / "model.onnx"))
    sim, cpu = run(model, feeds, 4), static.first_outputs(model, feeds, 4)
    assert len(sim) == 4 and all(a.shape == b.shape for a, b in zip(sim, cpu))
    assert all(np.allclose(a, b, atol=0.05) for a, b in zip(sim, cpu))
    assert any(not np.array_equal(a, b) for a, b in zip(sim, cpu))
    # no accelerator here (plugin hidden): the CPU provider runs them, as before
    import edgeq.profiling.providers as prov

    monkeypatch.setattr(prov, "qnn_plugin_installed", lambda: False)
    assert accelerator_outputs(tg) is None


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("EDGEQ_OPENVINO_PYTHON"), reason="set EDGEQ_OPENVINO_PYTHON to an environment with onnxruntime-openvino")
def test_openvino_export_measures_placement_in_its_own_environment(runner, tmp_path, data):
    fp32 = make_cnn(tmp_path / "cnn.onnx", batch=1)
    r, res = _export(runner, fp32, tmp_path / "cpu", "--target", "openvino-cpu", "--calib", data, "--min-accel-coverage", "0.95")
    assert r.exit_code == 0, r.output
    pl = res["placement"]
    assert pl["kind"] == "measured" and pl["backend"] == "openvino-env" and pl["accel_node_share"] == 1.0
    assert "not available on this host" not in res["profile"]["skipped"]
    # no NPU here: said so, with the provider's words, and the bundle is still written
    r, res = _export(runner, fp32, tmp_path / "npu", "--target", "openvino-npu", "--calib", data)
    assert r.exit_code == 0, r.output
    assert res["placement"]["kind"] == "unavailable" and "did not start" in res["placement"]["reason"]
    assert (tmp_path / "npu" / "manifest.json").is_file()
