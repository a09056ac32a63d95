"""Conv nets with large activations for ``tools/bench_int8.py --cost``: quantization cost, not quality.

Random weights (random BatchNorm statistics, so activations have realistic ranges): the cost of
calibrating and writing a model does not depend on what it learned. Keys take the input size:

- ``detector@736``: YOLOv8-shaped detector, strides 8/16/32 heads, Concat(4 box values, 80 class
  scores) over every anchor -> [B, 84, N] (3x736x736: N = 11,109 anchors);
- ``ctc@48x320``: CRNN-shaped text recognizer without the LSTM, 1x48x320 -> [B, 80, 97] log-softmax;
- ``mobilenetv3@224``: the MobileNetV3-style classifier of tools/bench_tasks.py, 3x224x224;
- ``resnet18@224``: torchvision's ResNet-18 layout (tools/bench_int8.resnet18);
- ``bigact@320``: the prob-map net of tools/bench_int8.bigact_net.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DEFAULT = "detector@736,ctc@48x320,mobilenetv3@224,resnet18@224"


def _nets():
    import torch
    from torch import nn

    def cbs(i, o, k=3, s=1):  # Conv-BN-SiLU, YOLOv8's basic block
        return nn.Sequential(nn.Conv2d(i, o, k, s, k // 2, bias=False), nn.BatchNorm2d(o), nn.SiLU())

    class C2f(nn.Module):
        def __init__(self, c, n=1):
            super().__init__()
            self.cv1, self.cv2 = cbs(c, c, 1), cbs(c * (2 + n) // 2, c, 1)
            self.m = nn.ModuleList(nn.Sequential(cbs(c // 2, c // 2), cbs(c // 2, c // 2)) for _ in range(n))

        def forward(self, x):
            y = list(self.cv1(x).chunk(2, 1))
            for m in self.m:
                y.append(m(y[-1]) + y[-1])
            return self.cv2(torch.cat(y, 1))

    class Detector(nn.Module):
        def __init__(self, classes=80):
            super().__init__()
            self.stem = nn.Sequential(cbs(3, 16, 3, 2), cbs(16, 32, 3, 2), C2f(32))
            self.p3 = nn.Sequential(cbs(32, 64, 3, 2), C2f(64, 2))
            self.p4 = nn.Sequential(cbs(64, 128, 3, 2), C2f(128, 2))
            self.p5 = nn.Sequential(cbs(128, 256, 3, 2), C2f(256))
            self.box = nn.ModuleList(nn.Sequential(cbs(c, 64), nn.Conv2d(64, 4, 1)) for c in (64, 128, 256))
            self.cls = nn.ModuleList(nn.Sequential(cbs(c, 80), nn.Conv2d(80, classes, 1)) for c in (64, 128, 256))

        def forward(self, x):
            p3 = self.p3(self.stem(x))
            p4 = self.p4(p3)
            p5 = self.p5(p4)
            boxes = torch.cat([b(p).flatten(2) for b, p in zip(self.box, (p3, p4, p5))], 2) * 16.0
            scores = torch.cat([c(p).flatten(2) for c, p in zip(self.cls, (p3, p4, p5))], 2)
            return torch.cat([boxes, torch.sigmoid(scores)], 1)

    class Crnn(nn.Module):
        def __init__(self, classes=97):
            super().__init__()
            self.body = nn.Sequential(
                cbs(1, 32), nn.MaxPool2d(2), cbs(32, 64), nn.MaxPool2d(2), cbs(64, 128), cbs(128, 128),
                nn.MaxPool2d((2, 1)), cbs(128, 256), cbs(256, 256), nn.MaxPool2d((2, 1)), cbs(256, 256, 3),
            )
            self.head = nn.Conv1d(256 * 3, classes, 1)

        def forward(self, x):
            f = self.body(x)  # [B, 256, 3, W/4]
            return torch.log_softmax(self.head(f.flatten(1, 2)).transpose(1, 2), -1)

    return Detector, Crnn


def _images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Smooth random images (low-frequency noise plus pixel noise), ImageNet-normalized scale."""
    rng = np.random.default_rng(seed)
    c, h, w = shape
    small = rng.normal(size=(n, c, -(-h // 16), -(-w // 16))).astype(np.float32)
    x = small.repeat(16, axis=2).repeat(16, axis=3)[:, :, :h, :w]
    return (x + 0.3 * rng.normal(size=x.shape).astype(np.float32)).astype(np.float32)


def build(key: str, n: int, work: Path, export) -> dict:
    """A bench model dict (``path``, ``calib`` with ``n`` samples) for ``key`` (e.g. ``detector@736``)."""
    import torch

    from tools import bench_int8 as b

    kind, _, size = key.partition("@")
    dims = [int(v) for v in size.split("x")] if size else []
    torch.manual_seed(0)
    Detector, Crnn = _nets()
    if kind == "detector":
        s = dims[0] if dims else 736
        model, shape = Detector(), (3, s, s)
    elif kind == "ctc":
        h, w = dims if len(dims) == 2 else (48, 320)
        model, shape = Crnn(), (1, h, w)
    elif kind == "mobilenetv3":
        from tools.bench_tasks import _torch_models

        s = dims[0] if dims else 224
        model, shape = _torch_models()[4](), (3, s, s)
    elif kind == "resnet18":
        s = dims[0] if dims else 224
        model, shape = b.resnet18(), (3, s, s)
    elif kind == "bigact":
        s = dims[0] if dims else 320
        model, shape = b.bigact_net(), (3, s, s)
    else:
        raise SystemExit(f"unknown cost model {key!r}: use detector@736, ctc@48x320, mobilenetv3@224, resnet18@224 or bigact@320")
    b._randomize_bn(model)
    path = work / f"cost_{kind}_{'x'.join(str(d) for d in shape[1:])}.onnx"
    if not path.exists():
        export(model, torch.zeros(1, *shape), path)
    return {"name": f"{kind} {'x'.join(str(d) for d in shape)}", "path": path, "input": "input",
            "calib": {"input": _images(n, shape, 1)[:, None]}}
