"""Task models for tools/bench_int8.py, written here and trained briefly on synthetic scenes.

- ``yolo``: YOLOv8-style detector, anchor-free head Concat(4 box values in pixels, 3 sigmoid class
  scores) over an 8x8 grid -> [B, 7, 64]; metric: detection F1 vs fp32 after NMS (edgeq.checks).
- ``probmap``: DBNet-like probability-map segmenter -> [B, 1, 64, 64]; metric: map IoU at 0.5.
- ``ctc``: CRNN-like recognizer of bar-code "glyph" strings -> [B, 32, 11] log-softmax; metric:
  greedy-decoded sequence exact match vs fp32.
- ``mobilenetv3``: MobileNetV3-style classifier (inverted residuals, squeeze-excite, hard-swish) of
  the dominant shape colour -> [B, 3]; metric: top-1 agreement.

Scenes: 64x64 RGB, noisy background, 1-3 filled rectangles of 3 colours (the classes). Every
metric compares the quantized model with fp32 on held-out scenes, as ``edgeq export`` does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLOURS = np.array([[1.0, 0.2, 0.2], [0.2, 1.0, 0.2], [0.2, 0.3, 1.0]], np.float32)
SIZE = 64
GRID = 8  # detector stride 8 -> 8x8 anchors
STEPS = int(__import__("os").environ.get("EDGEQ_BENCH_TRAIN_STEPS", "200"))  # Adam steps of batch 32 per model


def scenes(n: int, seed: int) -> tuple[np.ndarray, list[list[tuple[int, float, float, float, float]]], np.ndarray]:
    """Images [n, 3, 64, 64], objects per image (class, cx, cy, w, h in pixels), text masks [n, 1, 64, 64]."""
    rng = np.random.default_rng(seed)
    x = (0.15 * rng.normal(size=(n, 3, SIZE, SIZE))).astype(np.float32)
    mask = np.zeros((n, 1, SIZE, SIZE), np.float32)
    objs: list[list[tuple[int, float, float, float, float]]] = []
    for i in range(n):
        o = []
        for _ in range(int(rng.integers(1, 4))):
            c = int(rng.integers(0, 3))
            w, h = int(rng.integers(10, 26)), int(rng.integers(10, 26))
            x0, y0 = int(rng.integers(0, SIZE - w)), int(rng.integers(0, SIZE - h))
            x[i, :, y0 : y0 + h, x0 : x0 + w] = COLOURS[c][:, None, None] + 0.1 * rng.normal(size=(3, h, w))
            mask[i, 0, y0 : y0 + h, x0 : x0 + w] = 1.0
            o.append((c, x0 + w / 2, y0 + h / 2, float(w), float(h)))
        objs.append(o)
    return x, objs, mask


def _targets(objs, n):
    """Per anchor: class one-hot, box (cx, cy, w, h) and a mask of anchors holding an object centre."""
    cls = np.zeros((n, 3, GRID * GRID), np.float32)
    box = np.zeros((n, 4, GRID * GRID), np.float32)
    has = np.zeros((n, GRID * GRID), np.float32)
    for i, o in enumerate(objs):
        for c, cx, cy, w, h in o:
            a = int(cy // (SIZE // GRID)) * GRID + int(cx // (SIZE // GRID))
            cls[i, c, a], has[i, a] = 1.0, 1.0
            box[i, :, a] = (cx, cy, w, h)
    return cls, box, has


def _torch_models():
    import torch
    from torch import nn

    def cbr(i, o, s=1, act=nn.ReLU):
        return nn.Sequential(nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), act())

    class Yolo(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(cbr(3, 16, 2), cbr(16, 32, 2), cbr(32, 64, 2), cbr(64, 64))
            self.box, self.cls = nn.Conv2d(64, 4, 1), nn.Conv2d(64, 3, 1)
            ys, xs = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
            self.register_buffer("centre", torch.stack([xs, ys]).reshape(1, 2, -1).float() * (SIZE // GRID) + SIZE // GRID / 2)

        def forward(self, x):
            f = self.body(x)
            b = self.box(f).flatten(2)
            xy = self.centre + b[:, :2] * 8.0
            wh = torch.exp(b[:, 2:].clamp(-4, 4)) * 16.0
            return torch.cat([xy, wh, torch.sigmoid(self.cls(f).flatten(2))], 1)

    class ProbMap(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Sequential(cbr(3, 16), cbr(16, 32, 2), cbr(32, 32, 2))
            self.dec = nn.Sequential(nn.Upsample(scale_factor=4), cbr(32, 16), nn.Conv2d(16, 1, 1))

        def forward(self, x):
            return torch.sigmoid(self.dec(self.enc(x)))

    class Ctc(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(cbr(1, 16), nn.MaxPool2d((2, 2)), cbr(16, 32), nn.MaxPool2d((2, 1)), cbr(32, 32))
            self.head = nn.Conv1d(32 * 4, 11, 1)

        def forward(self, x):
            f = self.body(x)  # [B, 32, 4, 64]
            f = f.flatten(1, 2)[..., ::2]  # [B, 128, 32]
            return torch.log_softmax(self.head(f).transpose(1, 2), -1)

    class HSwish(nn.Module):
        def forward(self, x):
            return x * torch.nn.functional.hardtanh(x + 3, 0, 6) / 6

    class SE(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.fc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c // 4, 1), nn.ReLU(), nn.Conv2d(c // 4, c, 1), nn.Hardsigmoid())

        def forward(self, x):
            return x * self.fc(x)

    class Block(nn.Module):
        def __init__(self, i, e, o, s, se):
            super().__init__()
            self.res = s == 1 and i == o
            self.f = nn.Sequential(nn.Conv2d(i, e, 1, bias=False), nn.BatchNorm2d(e), HSwish(),
                                   nn.Conv2d(e, e, 3, s, 1, groups=e, bias=False), nn.BatchNorm2d(e), HSwish(),
                                   SE(e) if se else nn.Identity(), nn.Conv2d(e, o, 1, bias=False), nn.BatchNorm2d(o))

        def forward(self, x):
            return x + self.f(x) if self.res else self.f(x)

    class MobileNetV3(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = nn.Sequential(cbr(3, 16, 2, HSwish), Block(16, 32, 16, 1, True), Block(16, 64, 24, 2, False),
                                   Block(24, 72, 24, 1, False), Block(24, 96, 40, 2, True), Block(40, 120, 40, 1, True),
                                   nn.Conv2d(40, 96, 1), HSwish(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(96, 3))

        def forward(self, x):
            return self.f(x)

    return torch, Yolo, ProbMap, Ctc, MobileNetV3


def glyphs(n: int, seed: int) -> tuple[np.ndarray, list[list[int]]]:
    """Strings of 3-6 symbols 1..10, each drawn as a 6-pixel-wide column of its 4-bit pattern: [n, 1, 16, 128]."""
    rng = np.random.default_rng(seed)
    x = (0.1 * rng.normal(size=(n, 1, 16, 128))).astype(np.float32)
    labels = []
    for i in range(n):
        s = [int(v) for v in rng.integers(1, 11, int(rng.integers(3, 7)))]
        pos = 4
        for k in s:
            bits = [(k >> b) & 1 for b in range(4)]
            for b, on in enumerate(bits):
                x[i, 0, 4 * b : 4 * b + 4, pos : pos + 6] += 1.0 if on else 0.35
            pos += 6 + int(rng.integers(8, 14))
        labels.append(s)
    return x, labels


def _train(model, step_fn, steps: int, lr: float = 3e-3):
    import torch

    opt = torch.optim.Adam(model.parameters(), lr)
    model.train()
    loss = None
    for i in range(steps):
        opt.zero_grad()
        loss = step_fn(i)
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.detach()) if loss is not None else float("nan")


def build(kind: str, work: Path, export) -> dict:
    """Train (minutes on a shared CPU) and export one task model; returns a bench model dict.
    An exported model already in ``work`` is reused (not trained again)."""
    torch, Yolo, ProbMap, Ctc, MobileNetV3 = _torch_models()
    torch.manual_seed(0)
    path = work / f"task_{kind}.onnx"
    if kind == "ctc":
        xtr, ytr = glyphs(512, 1)
        model = Ctc()
        ctc = torch.nn.CTCLoss(blank=0, zero_infinity=True)
        X = torch.from_numpy(xtr)
        tgt = torch.tensor([v for s in ytr for v in s])
        lens = torch.tensor([len(s) for s in ytr])
        offs = np.concatenate([[0], np.cumsum([len(s) for s in ytr])])

        def step(i):
            j = torch.randint(0, len(X), (32,))
            out = model(X[j]).transpose(0, 1)
            t = torch.cat([tgt[offs[k] : offs[k + 1]] for k in j.tolist()])
            return ctc(out, t, torch.full((32,), out.shape[0], dtype=torch.long), lens[j])

        loss = _train(model, step, 0 if path.exists() else STEPS)
        if not path.exists():
            export(model, torch.zeros(1, 1, 16, 128), path, output_name="logits")
        xc, _ = glyphs(164, 2)
        return {"name": "CTC recognizer 1x16x128", "path": path, "input": "input", "calib": {"input": xc[:, None]},
                "eval": {"input": xc[100:, None]}, "labels": None, "metric": "task", "train_loss": loss}
    x, objs, mask = scenes(512, 1)
    X = torch.from_numpy(x)
    if kind == "yolo":
        model = Yolo()
        cls, box, has = (torch.from_numpy(a) for a in _targets(objs, len(x)))

        def step(i):
            j = torch.randint(0, len(X), (32,))
            out = model(X[j])
            m = has[j][:, None]
            bl = (torch.abs(out[:, :4] - box[j]) * m).sum() / m.sum().clamp(min=1) / 8.0
            return bl + torch.nn.functional.binary_cross_entropy(out[:, 4:].clamp(1e-6, 1 - 1e-6), cls[j])

        loss = _train(model, step, 0 if path.exists() else STEPS)
        name = "YOLOv8-style detector 3x64x64"
        out_name = "output0"
    elif kind == "probmap":
        model = ProbMap()
        M = torch.from_numpy(mask)

        def step(i):
            j = torch.randint(0, len(X), (32,))
            return torch.nn.functional.binary_cross_entropy(model(X[j]).clamp(1e-6, 1 - 1e-6), M[j])

        loss = _train(model, step, 0 if path.exists() else STEPS)
        name = "prob-map segmenter 3x64x64"
        out_name = "maps"
    else:
        model = MobileNetV3()
        lab = torch.tensor([max(o, key=lambda t: t[3] * t[4])[0] for o in objs])  # colour of the largest shape

        def step(i):
            j = torch.randint(0, len(X), (32,))
            return torch.nn.functional.cross_entropy(model(X[j]), lab[j])

        loss = _train(model, step, 0 if path.exists() else STEPS)
        name = "MobileNetV3-style classifier 3x64x64"
        out_name = "logits"
    if not path.exists():
        export(model, torch.zeros(1, 3, SIZE, SIZE), path, output_name=out_name)
    xc, _, _ = scenes(164, 2)
    # calibration uses the first --calib (100) samples; --max-drop measures on the rest, as does the metric
    return {"name": name, "path": path, "input": "input", "calib": {"input": xc[:, None]}, "eval": {"input": xc[100:, None]},
            "labels": None, "metric": "task", "train_loss": loss}


def task_metric(ref_path: Path, path: Path, xs: np.ndarray, sess_fn) -> tuple[str, float]:
    """The task metric edgeq's verify uses (edgeq.checks), quantized against fp32 on ``xs``."""
    import onnx

    from edgeq.checks.kinds import first_output_task
    from edgeq.checks.metrics import primary

    r, c = sess_fn(ref_path), sess_fn(path)
    name = r.get_inputs()[0].name
    ref = [r.run(None, {name: x})[0] for x in xs]
    cand = [c.run(None, {name: x})[0] for x in xs]
    task = first_output_task(onnx.load(str(ref_path), load_external_data=False), ref)
    metric, value = primary(task, ref, cand)
    return metric.replace("_", " "), value


def detector():
    """The YOLOv8-style detector above, untrained (seeded): tools/bench_npu.py measures its placement. Input 3x64x64."""
    _, yolo, _, _, _ = _torch_models()
    return yolo()
