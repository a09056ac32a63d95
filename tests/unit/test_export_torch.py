"""PyTorch sources: tiny modules exported with torch's exporter and checked against the module."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

import edgeq  # noqa: E402
from edgeq.cli import app  # noqa: E402
from edgeq.errors import CheckFailed  # noqa: E402
from edgeq.exporters.torch import DYNAMO, TORCHSCRIPT, export_torch_checked  # noqa: E402


class TinyCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.c2 = torch.nn.Conv2d(8, 8, 3, stride=2)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        h = torch.relu(self.bn(self.c1(x)))
        h = torch.relu(self.c2(h)).mean((2, 3))
        return self.fc(h)


class TinyGRU(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.lstm = torch.nn.LSTM(6, 12, batch_first=True)
        self.gru = torch.nn.GRU(12, 10, batch_first=True)
        self.fc = torch.nn.Linear(10, 4)

    def forward(self, x):
        h, _ = self.lstm(x)
        h, last = self.gru(h)
        return self.fc(h[:, -1]), last


class TinyEncoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.block = torch.nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True, dropout=0.0)

    def forward(self, x):
        return self.block(x)


class TinyMLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.net = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.GELU(), torch.nn.Linear(16, 3))

    def forward(self, x):
        return self.net(x)


class Unexportable(torch.nn.Module):
    def forward(self, x):
        return torch.linalg.svd(x)[1]


def tiny_mlp() -> torch.nn.Module:
    """Factory used through the CLI as tests.unit.test_export_torch:tiny_mlp."""
    return TinyMLP()


def _ort(path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


def _dims(path: Path) -> dict[str, list]:
    m = onnx.load(str(path), load_external_data=False)
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in m.graph.input}


@pytest.mark.slow
def test_cnn_for_static_shape_target(tmp_path):
    x = torch.rand(1, 3, 16, 16)
    art, check = export_torch_checked(TinyCNN(), (x,), target="qnn-htp", out_path=tmp_path / "cnn.onnx", input_names=["image"])
    assert check.exporter == DYNAMO and check.passed and check.fallback_reason is None
    assert _dims(art.path) == {"image": [1, 3, 16, 16]}  # qnn-htp needs static shapes: nothing dynamic
    assert check.inputs_checked == ("example",)
    ops = {n.op_type for n in onnx.load(str(art.path)).graph.node}
    assert "Conv" in ops
    x2 = torch.rand(1, 3, 16, 16)
    want = TinyCNN().eval()(x2).detach().numpy()
    got = _ort(art.path, {"image": x2.numpy()})[0]
    assert got.shape == (1, 5) and np.abs(want - got).max() < 1e-4
    assert art.provenance[0].startswith("export(torch.onnx dynamo, opset=18")


@pytest.mark.slow
def test_lstm_gru_model_with_two_outputs(tmp_path):
    x = torch.randn(2, 7, 6)
    art, check = export_torch_checked(TinyGRU(), (x,), target="arm64", out_path=tmp_path / "rnn.onnx", input_names=["seq"])
    assert check.passed and len(check.outputs) == 2
    assert all(o.max_abs < 1e-4 for o in check.outputs)
    assert check.inputs_checked == ("example", "batch=3")  # batch axis stays dynamic and is checked at a 2nd size
    ops = {n.op_type for n in onnx.load(str(art.path)).graph.node}
    assert ops & {"LSTM", "GRU", "Scan", "Loop"}
    x5 = torch.randn(5, 7, 6)
    want = [t.detach().numpy() for t in TinyGRU().eval()(x5)]
    got = _ort(art.path, {"seq": x5.numpy()})
    assert got[0].shape == (5, 4) and np.abs(want[0] - got[0]).max() < 1e-4
    assert np.abs(want[1] - got[1]).max() < 1e-4


@pytest.mark.slow
def test_transformer_encoder_block_with_attention(tmp_path):
    x = torch.randn(2, 5, 16)
    axes = {"tokens": {0: "batch", 1: "sequence"}}
    art, check = export_torch_checked(
        TinyEncoder(), (x,), target="cpu-x86_64", out_path=tmp_path / "enc.onnx", input_names=["tokens"], dynamic_axes=axes,
    )
    assert check.passed
    assert _dims(art.path)["tokens"][:2] == ["batch", "sequence"]
    assert check.inputs_checked == ("example", "batch=3, sequence=6")
    x2 = torch.randn(4, 9, 16)
    want = TinyEncoder().eval()(x2).detach().numpy()
    got = _ort(art.path, {"tokens": x2.numpy()})[0]
    assert got.shape == (4, 9, 16) and np.abs(want - got).max() < 1e-4
    ops = {n.op_type for n in onnx.load(str(art.path)).graph.node}
    assert "Softmax" in ops and "MatMul" in ops


@pytest.mark.slow
def test_dynamic_batch_through_public_api(tmp_path):
    # a batch-1 example: edgeq traces with batch 2 so the axis is not specialized to 1
    art = edgeq.export(TinyMLP(), (torch.randn(1, 10),), target="arm64", input_names=["x"], out_path=tmp_path / "m.onnx")
    assert _dims(art.path) == {"x": ["batch", 10]}
    assert any(p.startswith("export-check(") and p.endswith("passed)") for p in art.provenance)
    for n in (1, 3, 8):
        xb = torch.randn(n, 10)
        got = _ort(art.path, {"x": xb.numpy()})[0]
        assert got.shape == (n, 3)
        assert np.abs(TinyMLP().eval()(xb).detach().numpy() - got).max() < 1e-4


def test_torchscript_fallback_is_named_and_external_data_is_written(tmp_path):
    # opset 17 asked for: the dynamo exporter starts at 18, so the TorchScript exporter runs,
    # and the report says so. A lowered threshold makes the weights go to external data.
    out = tmp_path / "m.onnx"
    art, check = export_torch_checked(
        TinyMLP(), (torch.randn(2, 10),), target="arm64", out_path=out, input_names=["x"], opset=17, external_data_threshold=0,
    )
    assert check.exporter == TORCHSCRIPT and "opset 18" in check.fallback_reason
    assert any("TorchScript" in n for n in check.notes())
    assert art.provenance[0] == "export(torch.onnx TorchScript (fallback), opset=17, external-data)"
    assert art.opset == 17
    assert (tmp_path / "m.onnx.data").stat().st_size >= (10 * 16 + 16 * 3) * 4
    m = onnx.load(str(out), load_external_data=False)
    assert any(i.data_location == onnx.TensorProto.EXTERNAL for i in m.graph.initializer)
    xb = torch.randn(3, 10)
    assert np.abs(TinyMLP().eval()(xb).detach().numpy() - _ort(out, {"x": xb.numpy()})[0]).max() < 1e-4


def test_check_failure_lists_every_output(tmp_path, monkeypatch):
    # a source that drifts from what was exported (here: weights changed after export)
    class Drifting(TinyMLP):
        calls = 0

        def forward(self, x):
            Drifting.calls += 1
            y = super().forward(x)
            return y + 0.5 if Drifting.calls > 1 else y  # the first call is the trace

    with pytest.raises(CheckFailed) as e:
        export_torch_checked(Drifting(), (torch.randn(2, 10),), target="arm64", out_path=tmp_path / "m.onnx",
                             input_names=["x"], exporter="torchscript")
    msg = e.value.one_line()
    assert "output '" in msg and "max abs 0.5" in msg and "atol 0.0001" in msg
    assert e.value.exit_code == 1


def unexportable() -> torch.nn.Module:
    return Unexportable()


@pytest.mark.slow
def test_unexportable_model_names_the_op(runner, tmp_path):
    out = tmp_path / "b"
    r = runner.invoke(app, ["export", "tests.unit.test_export_torch:unexportable", "--example-shape", "x=2x3x3", "-o", str(out)])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: torch cannot export the model to ONNX")
    assert "linalg_svd" in lines[0] and "not supported" in lines[0]
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []


@pytest.mark.slow
def test_cli_factory_with_weights_runs_the_whole_pipeline(runner, tmp_path):
    from safetensors.torch import save_file

    trained = TinyMLP()
    with torch.no_grad():
        for p in trained.parameters():
            p.mul_(-2.0)  # different from what the factory builds
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(weights))
    calib = tmp_path / "c.npz"
    np.savez(calib, x=np.random.default_rng(0).normal(size=(16, 10)).astype(np.float32))
    out = tmp_path / "bundle"
    r = runner.invoke(app, [
        "export", "tests.unit.test_export_torch:tiny_mlp", "--weights", str(weights), "--example-shape", "x=1x10",
        "--target", "arm64", "--quant", "int8-dynamic", "--calib", str(calib), "--no-profile", "-o", str(out), "--json",
    ])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["export"]["passed"] and res["export"]["exporter"] == DYNAMO
    assert res["export"]["outputs"][0]["max_abs"] < 1e-4
    assert res["verify"]["outputs"][0]["cosine"] > 0.99
    assert res["notes"][0].startswith("exported with torch.onnx dynamo")
    manifest = json.loads((out / "manifest.json").read_text())
    assert any("weights=w.safetensors" in p for p in manifest["provenance"])
    # the bundle computes the *trained* weights, not the factory's
    xb = np.random.default_rng(1).normal(size=(1, 10)).astype(np.float32)
    fp32 = _ort(out / "model.onnx", {"x": xb})[0]
    assert np.abs(fp32 - trained.eval()(torch.from_numpy(xb)).detach().numpy()).max() < 0.1


@pytest.mark.slow
def test_cli_pt2_needs_trust_pickle_then_exports(runner, tmp_path):
    ep = torch.export.export(TinyMLP().eval(), (torch.randn(2, 10),))
    path = tmp_path / "m.pt2"
    torch.export.save(ep, str(path))
    out = tmp_path / "b"
    r = runner.invoke(app, ["export", str(path), "--quant", "none", "--no-profile", "-o", str(out)])
    assert r.exit_code == 2 and "--trust-pickle" in r.stderr and not out.exists()
    r = runner.invoke(app, ["export", str(path), "--trust-pickle", "--quant", "none", "--no-profile", "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["export"]["passed"] and res["export"]["outputs"][0]["shape"] == [2, 3]
    assert (out / "model.onnx").is_file()


def test_cli_state_dict_alone_asks_for_the_architecture(runner, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(TinyMLP().state_dict(), str(path))
    r = runner.invoke(app, ["export", str(path), "--example-shape", "x=1x10", "-o", str(tmp_path / "b")])
    assert r.exit_code == 2
    assert "state dict" in r.stderr and "pkg.module:factory" in r.stderr and "--weights weights.pt" in r.stderr


def test_cli_bad_example_shape_and_missing_examples(runner, tmp_path):
    r = runner.invoke(app, ["export", "tests.unit.test_export_torch:tiny_mlp", "--example-shape", "x=1xQ", "-o", str(tmp_path / "b")])
    assert r.exit_code == 2 and "bad --example-shape" in r.stderr
    r = runner.invoke(app, ["export", "tests.unit.test_export_torch:tiny_mlp", "-o", str(tmp_path / "b")])
    assert r.exit_code == 2 and "--example-shape" in r.stderr
    assert not (tmp_path / "b").exists()
