"""Conv-net architectures for the NPU benchmark, written here (torchvision's wheel on this index is a CUDA build).

MobileNetV3 (small, large), MobileNetV2 and ResNet-18 after their papers' layer tables,
with a ``width`` multiplier and ``classes`` so tests can build tiny versions. Weights are
random (seeded): placement, context compilation and quantization agreement do not need
trained weights.
"""

from __future__ import annotations

import torch
from torch import nn


def _div(v: float, d: int = 8) -> int:
    return max(d, int(v + d / 2) // d * d)


class ConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, s: int = 1, groups: int = 1, act: type[nn.Module] | None = nn.ReLU):
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        mid = _div(c / 4)
        self.fc1 = nn.Conv2d(c, mid, 1)
        self.fc2 = nn.Conv2d(mid, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)  # exports as ReduceMean over H, W
        s = nn.functional.hardsigmoid(self.fc2(nn.functional.relu(self.fc1(s))))
        return x * s


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, k: int, exp: int, cout: int, se: bool, act: type[nn.Module], s: int):
        super().__init__()
        layers: list[nn.Module] = []
        if exp != cin:
            layers.append(ConvBN(cin, exp, 1, act=act))
        layers.append(ConvBN(exp, exp, k, s, groups=exp, act=act))
        if se:
            layers.append(SqueezeExcite(exp))
        layers.append(ConvBN(exp, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.residual = s == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


HS, RE = nn.Hardswish, nn.ReLU
# kernel, expansion, out, SE, activation, stride (MobileNetV3 paper, tables 1 and 2)
V3_SMALL = [(3, 16, 16, True, RE, 2), (3, 72, 24, False, RE, 2), (3, 88, 24, False, RE, 1), (5, 96, 40, True, HS, 2),
            (5, 240, 40, True, HS, 1), (5, 240, 40, True, HS, 1), (5, 120, 48, True, HS, 1), (5, 144, 48, True, HS, 1),
            (5, 288, 96, True, HS, 2), (5, 576, 96, True, HS, 1), (5, 576, 96, True, HS, 1)]
V3_LARGE = [(3, 16, 16, False, RE, 1), (3, 64, 24, False, RE, 2), (3, 72, 24, False, RE, 1), (5, 72, 40, True, RE, 2),
            (5, 120, 40, True, RE, 1), (5, 120, 40, True, RE, 1), (3, 240, 80, False, HS, 2), (3, 200, 80, False, HS, 1),
            (3, 184, 80, False, HS, 1), (3, 184, 80, False, HS, 1), (3, 480, 112, True, HS, 1), (3, 672, 112, True, HS, 1),
            (5, 672, 160, True, HS, 2), (5, 960, 160, True, HS, 1), (5, 960, 160, True, HS, 1)]


class MobileNetV3(nn.Module):
    def __init__(self, cfg: list, last: int, width: float = 1.0, classes: int = 1000, blocks: int | None = None):
        super().__init__()
        cfg = cfg[:blocks] if blocks else cfg
        c = _div(16 * width)
        layers: list[nn.Module] = [ConvBN(3, c, 3, 2, act=HS)]
        for k, exp, out, se, act, s in cfg:
            o = _div(out * width)
            layers.append(InvertedResidual(c, k, _div(exp * width), o, se, act, s))
            c = o
        head = _div(cfg[-1][1] * width)
        layers.append(ConvBN(c, head, 1, act=HS))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(head, last), nn.Hardswish(), nn.Linear(last, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def mobilenet_v3_small(width: float = 1.0, classes: int = 1000, blocks: int | None = None) -> nn.Module:
    return MobileNetV3(V3_SMALL, _div(1024 * width), width, classes, blocks)


def mobilenet_v3_large(width: float = 1.0, classes: int = 1000, blocks: int | None = None) -> nn.Module:
    return MobileNetV3(V3_LARGE, _div(1280 * width), width, classes, blocks)


class MobileNetV2(nn.Module):
    # expansion, out, repeats, stride
    CFG = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, width: float = 1.0, classes: int = 1000):
        super().__init__()
        c = _div(32 * width)
        layers: list[nn.Module] = [ConvBN(3, c, 3, 2, act=nn.ReLU6)]
        for t, out, n, s in self.CFG:
            o = _div(out * width)
            for i in range(n):
                layers.append(InvertedResidual(c, 3, c * t, o, False, nn.ReLU6, s if i == 0 else 1))
                c = o
        last = _div(1280 * max(1.0, width))
        layers.append(ConvBN(c, last, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(last, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, s: int):
        super().__init__()
        self.a = ConvBN(cin, cout, 3, s)
        self.b = ConvBN(cout, cout, 3, 1, act=None)
        self.down = ConvBN(cin, cout, 1, s, act=None) if s != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.relu(self.b(self.a(x)) + self.down(x))


class ResNet18(nn.Module):
    def __init__(self, width: float = 1.0, classes: int = 1000):
        super().__init__()
        w = [_div(c * width) for c in (64, 128, 256, 512)]
        self.stem = nn.Sequential(ConvBN(3, w[0], 7, 2), nn.MaxPool2d(3, 2, 1))
        blocks: list[nn.Module] = []
        c = w[0]
        for i, o in enumerate(w):
            blocks += [BasicBlock(c, o, 1 if i == 0 else 2), BasicBlock(o, o, 1)]
            c = o
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


class TinyBert(nn.Module):
    """A 2-layer BERT-style encoder (token + position embeddings, post-norm layers, GELU, [CLS] classifier)."""

    def __init__(self, vocab: int = 1000, dim: int = 128, heads: int = 4, layers: int = 2, seq: int = 32, classes: int = 2):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, seq, dim) * 0.02)
        self.norm = nn.LayerNorm(dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 4, dropout=0.0, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)
        self.vocab, self.seq = vocab, seq

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.tok(ids) + self.pos[:, : ids.shape[1]])
        return self.head(self.encoder(h)[:, 0])


def yolov8_style(**kw) -> nn.Module:
    """The YOLOv8-style detector of tools/bench_tasks.py (anchor-free head: box Exp, class Sigmoid, Concat), fixed 64x64 input."""
    from tools.bench_tasks import SIZE, detector

    m = detector()
    m.input_size = SIZE  # its anchor centres are laid out for this size
    return m


MODELS = {
    "mobilenet_v3_small": mobilenet_v3_small,
    "mobilenet_v3_large": mobilenet_v3_large,
    "mobilenet_v2": MobileNetV2,
    "resnet18": ResNet18,
    "bert2": TinyBert,
    "yolov8": yolov8_style,
}


def sample_inputs(model: nn.Module, n: int, size: int, seed: int = 0):
    """Seeded inputs the model takes: token ids for the BERT, images for the conv nets."""
    import numpy as np

    rng = np.random.default_rng(seed)
    size = getattr(model, "input_size", size)
    if isinstance(model, TinyBert):
        return rng.integers(0, model.vocab, (n, model.seq)).astype(np.int64)
    return rng.standard_normal((n, 3, size, size)).astype(np.float32)


def build(name: str, *, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    m = MODELS[name](**kw).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding is exercised
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return m


def to_onnx(model: nn.Module, path, size: int = 224, opset: int = 17) -> None:
    size = getattr(model, "input_size", size)
    if isinstance(model, TinyBert):  # token ids [N, seq]
        ids = torch.randint(0, model.vocab, (1, model.seq))
        torch.onnx.export(model, (ids,), str(path), input_names=["x"], output_names=["y"], opset_version=opset, dynamo=False,
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
        return
    x = torch.randn(1, 3, size, size)
    torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["y"], opset_version=opset, dynamo=False,
                      dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
