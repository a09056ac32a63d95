"""--dynamic-axes: a fully convolutional PyTorch module (MTCNN's PNet runs on every level of an
image pyramid) exported with height and width left dynamic, calibrated and evaluated on images of
several sizes. Found on facenet-pytorch's PNet: `pkg.module:factory` exports pinned every axis but
the batch, so one bundle could serve one image size only.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

from edgeq.cli import app  # noqa: E402


class TinyPNet(torch.nn.Module):
    """PNet's layout: convs, a ceil-mode pool, a 2-channel softmax face map and a 4-channel offset map."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1 = torch.nn.Conv2d(3, 6, 3)
        self.pool = torch.nn.MaxPool2d(2, 2, ceil_mode=True)
        self.c2 = torch.nn.Conv2d(6, 8, 3)
        self.score = torch.nn.Conv2d(8, 2, 1)
        self.box = torch.nn.Conv2d(8, 4, 1)

    def forward(self, x):
        h = torch.relu(self.c2(self.pool(torch.relu(self.c1(x)))))
        return self.box(h), torch.softmax(self.score(h), dim=1)


def tiny_pnet() -> TinyPNet:
    return TinyPNet().eval()


def _images(tmp_path, name, sizes, seed):
    folder = tmp_path / name
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for s in sizes:
        np.savez(folder / f"s{s}.npz", x=rng.uniform(-1, 1, (4, 3, s, s)).astype(np.float32))
    return folder


@pytest.mark.slow
def test_height_and_width_stay_dynamic_and_every_size_is_checked(runner, tmp_path):
    calib, evald = _images(tmp_path, "calib", (20, 31), 0), _images(tmp_path, "eval", (24, 40), 1)
    out = tmp_path / "b"
    r = runner.invoke(app, [
        "export", "tests.e2e.test_dynamic_axes:tiny_pnet", "--example-shape", "x=1x3x24x24", "--dynamic-axes", "x=2,3",
        "--target", "arm64", "--calib", str(calib), "--eval", str(evald), "--no-profile", "-o", str(out), "--json",
    ])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    # the export check ran on a second shape with the height and width one larger
    assert any("x_2=25" in i and "x_3=25" in i for i in res["export"]["inputs_checked"]), res["export"]
    assert res["verify"]["samples"] == 8  # 4 images at each of 2 sizes
    kinds = {t["output"]: t["kind"] for t in res["verify"]["tasks"]}
    assert kinds == {"output_0": "regression", "output_1": "segmentation"}, kinds
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"][0]["shape"] == ["batch", 3, "x_2", "x_3"]
    dims = onnx.load(str(out / "model.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, "x_2", "x_3"]
    # the bundle's (int8) model answers at sizes it never saw, close to the module
    sess, net = ort.InferenceSession(str(out / "model.onnx")), tiny_pnet()
    for h, w in ((17, 29), (64, 48)):
        x = np.random.default_rng(h).uniform(-1, 1, (1, 3, h, w)).astype(np.float32)
        got = sess.run(None, {"x": x})
        want = [t.detach().numpy() for t in net(torch.from_numpy(x))]
        assert [g.shape for g in got] == [v.shape for v in want]
        for g, v in zip(got, want):
            assert float(np.dot(g.ravel(), v.ravel()) / (np.linalg.norm(g) * np.linalg.norm(v))) > 0.99


@pytest.mark.parametrize("axes, words", [
    ("y=2,3", "names 'y', which is no input of the export (inputs: x)"),
    ("x=4", "axis 4 is outside the input's 4 axes"),
    ("x=0,2", "bad --dynamic-axes 'x=0,2'"),
])
def test_bad_dynamic_axes_are_refused_before_anything_is_written(runner, tmp_path, axes, words):
    out = tmp_path / "b"
    r = runner.invoke(app, ["export", "tests.e2e.test_dynamic_axes:tiny_pnet", "--example-shape", "x=1x3x24x24",
                            "--dynamic-axes", axes, "--quant", "none", "-o", str(out)])
    assert r.exit_code == 2 and words in r.stderr, r.output
    assert not out.exists()


def test_dynamic_axes_conflict_with_a_pinned_shape(runner, tmp_path):
    r = runner.invoke(app, ["export", "tests.e2e.test_dynamic_axes:tiny_pnet", "--example-shape", "x=1x3x24x24",
                            "--dynamic-axes", "x=2,3", "--static-shape", "x=1x3x24x24", "--quant", "none", "-o", str(tmp_path / "b")])
    assert r.exit_code == 2 and "--dynamic-axes x conflicts with --static-shape x" in r.stderr, r.output


def test_dynamic_axes_of_an_onnx_source_are_refused(runner, tmp_path, cnn):
    r = runner.invoke(app, ["export", str(cnn), "--dynamic-axes", "x=2,3", "--quant", "none", "-o", str(tmp_path / "b")])
    assert r.exit_code == 2 and "--dynamic-axes names axes of a PyTorch module's export" in r.stderr, r.output
    assert not (tmp_path / "b").exists()
