"""INT8 benchmark: onnxruntime's quantize_static / quantize_dynamic defaults vs edgeq, side by side.

Models (all built or found offline):
- digits CNN      trained here (examples/digits/train.py), accuracy on its held-out split
- ResNet-18       torchvision's architecture written out by hand, random weights (timing; agreement)
- MobileNetV2     idem
- silero-vad      `pip install --no-deps silero-vad`: silero_vad.onnx (weights inside If branches);
                  speech synthesized with espeak-ng; metric = speech/non-speech decisions vs fp32
- tiny LM         a small byte-level transformer trained here on Python sources (perplexity)
- yolo, probmap, ctc, mobilenetv3: task models written in tools/bench_tasks.py, trained briefly on
                  synthetic scenes; metric = the task metric edgeq's verify uses (edgeq.checks) vs fp32

Columns: metric, quantized weight nodes, file size, p50 latency ratio vs fp32 (this host,
onnxruntime CPU, default session options), the same for the model.ort a bundle ships
(edgeq's ORT writer for EDGEQ_BENCH_TARGET, default arm64, with the session options its
manifest records), quantization wall time, and (separately)
calibration peak RSS at 100 and 1,000 samples, each in a fresh subprocess.

Cost (--cost MODELS): quantization wall time and peak RSS of onnxruntime's quantize_static
defaults vs edgeq's default recipe (--calibration auto), same model, same samples, each in a
fresh subprocess, with the ratios edgeq / onnxruntime. ``bigact`` is a fully convolutional
probability-map net (text-detector shaped) at 3x320x320: its activations, not its weights, are large.

Run: python tools/bench_int8.py [--models digits,resnet18,mobilenetv2,silero,lm] [--cost bigact --cost-samples 64]
     python tools/bench_int8.py --cost detector@736,ctc@48x320,mobilenetv3@224,resnet18@224 --cost-samples 32
This is a benchmark, not a test: it prints a markdown table (paste it into BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORK = Path(os.environ.get("EDGEQ_BENCH_DIR", tempfile.gettempdir())) / "edgeq-bench-int8"


# -- models ----------------------------------------------------------------------------------------


def _export_torch(model, example, path: Path, input_name="input", output_name="logits") -> Path:
    import logging
    import warnings

    import torch

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    model.eval()
    try:
        torch.onnx.export(model, (example,), str(path), input_names=[input_name], output_names=[output_name],
                          opset_version=17, dynamo=False, dynamic_axes={input_name: {0: "N"}, output_name: {0: "N"}})
    except TypeError:
        torch.onnx.export(model, (example,), str(path), input_names=[input_name], output_names=[output_name],
                          opset_version=17, dynamic_axes={input_name: {0: "N"}, output_name: {0: "N"}})
    return path


def resnet18():
    import torch.nn as nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU()
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            idt = x if self.down is None else self.down(x)
            y = self.relu(self.b1(self.c1(x)))
            return self.relu(self.b2(self.c2(y)) + idt)

    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000)]
    return nn.Sequential(*layers)


def mobilenetv2():
    import torch.nn as nn

    def cbr(cin, cout, k, s, groups=1, act=True):
        mods = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        if act:
            mods.append(nn.ReLU6())
        return mods

    class Inv(nn.Module):
        def __init__(self, cin, cout, s, t):
            super().__init__()
            hid = cin * t
            mods = ([] if t == 1 else cbr(cin, hid, 1, 1)) + cbr(hid, hid, 3, s, groups=hid) + cbr(hid, cout, 1, 1, act=False)
            self.body = nn.Sequential(*mods)
            self.res = s == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.res else self.body(x)

    cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    layers = cbr(3, 32, 3, 2)
    cin = 32
    for t, c, n, s in cfg:
        for i in range(n):
            layers.append(Inv(cin, c, s if i == 0 else 1, t))
            cin = c
    layers += cbr(cin, 1280, 1, 1) + [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, 1000)]
    return nn.Sequential(*layers)


def _randomize_bn(model, seed=0):
    """Random BN statistics so activations have realistic, non-trivial ranges."""
    import torch

    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def _images(n, size, seed):
    """Smooth random images (low-frequency noise), normalized like ImageNet inputs."""
    rng = np.random.default_rng(seed)
    small = rng.normal(size=(n, 3, size // 16, size // 16)).astype(np.float32)
    x = small.repeat(16, axis=2).repeat(16, axis=3)
    x += 0.3 * rng.normal(size=x.shape).astype(np.float32)
    return x.astype(np.float32)


def build_convnet(name: str, size: int) -> dict:
    import torch

    torch.manual_seed(0)
    model = resnet18() if name == "resnet18" else mobilenetv2()
    _randomize_bn(model)
    path = WORK / (f"{name}.onnx" if size == 224 else f"{name}_{size}.onnx")
    if not path.exists():
        _export_torch(model, torch.zeros(1, 3, size, size), path)
    return {
        "name": name if size == 224 else f"{name} {size}x{size}", "path": path, "input": "input",
        "calib": {"input": _images(300 if size >= 224 else 1000, size, 1)[:, None]},
        "eval": {"input": _images(50, size, 2)[:, None]}, "labels": None, "metric": "agreement",
    }


def bigact_net():
    """Fully convolutional prob-map net (DBNet-like shape): 16-64 channels at 1/1-1/4 resolution, upsampled back."""
    import torch
    from torch import nn

    def cbr(i, o, s=1):
        return nn.Sequential(nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU())

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Sequential(cbr(3, 16), cbr(16, 16), cbr(16, 32, 2), cbr(32, 32), cbr(32, 64, 2), cbr(64, 64))
            self.dec = nn.Sequential(nn.Upsample(scale_factor=4, mode="nearest"), cbr(64, 16), nn.Conv2d(16, 1, 1))

        def forward(self, x):
            return torch.sigmoid(self.dec(self.enc(x)))

    return Net()


def build_bigact(size: int = 320, n: int = 100) -> dict:
    import torch

    torch.manual_seed(0)
    model = bigact_net()
    _randomize_bn(model)
    path = WORK / f"bigact_{size}.onnx"
    if not path.exists():
        _export_torch(model, torch.zeros(1, 3, size, size), path, output_name="prob")
    return {"name": f"prob-map convnet 3x{size}x{size}", "path": path, "input": "input",
            "calib": {"input": _images(n, size, 1)[:, None]}, "eval": {"input": _images(8, size, 2)[:, None]},
            "labels": None, "metric": "agreement"}


def build_digits() -> dict:
    d = WORK / "digits"
    if not (d / "model.onnx").exists():
        d.mkdir(parents=True, exist_ok=True)
        for f in ("model.onnx", "calib.npz", "eval.npz"):
            if (ROOT / "examples/digits" / f).exists():
                shutil.copy(ROOT / "examples/digits" / f, d / f)
        if not (d / "model.onnx").exists():
            subprocess.run([sys.executable, str(ROOT / "examples/digits/train.py")], check=True, cwd=ROOT)
            for f in ("model.onnx", "calib.npz", "eval.npz"):
                shutil.copy(ROOT / "examples/digits" / f, d / f)
    from examples.digits.train import load_split

    xtr, xte, ytr, yte = load_split()
    calib = np.concatenate([xtr] * 2)[:1000]
    return {
        "name": "digits CNN", "path": d / "model.onnx", "input": "input",
        "calib": {"input": calib[:, None]}, "eval": {"input": xte[:, None]}, "labels": yte, "metric": "accuracy",
    }


# -- tiny LM -------------------------------------------------------------------------------------------


def _lm_text() -> bytes:
    import glob
    import sysconfig

    files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
    return b"".join(Path(f).read_bytes() for f in files[:120])


def tiny_lm(d=128, layers=2, heads=4, seq=64):
    import torch
    import torch.nn as nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
            self.register_buffer("mask", torch.triu(torch.full((seq, seq), float("-inf")), 1))

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
            q, k, v = (z.reshape(b, t, heads, d // heads).transpose(1, 2) for z in (q, k, v))
            att = (q @ k.transpose(-1, -2)) / (d // heads) ** 0.5 + self.mask[:t, :t]
            y = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
            x = x + self.proj(y)
            return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln2(x))))

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.pos = nn.Embedding(256, d), nn.Parameter(torch.zeros(seq, d))
            self.blocks = nn.Sequential(*[Block() for _ in range(layers)])
            self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, 256)

        def forward(self, idx):
            return self.head(self.ln(self.blocks(self.emb(idx) + self.pos[: idx.shape[1]])))

    return LM()


def build_lm(seq=64, steps=250) -> dict:
    import torch

    text = np.frombuffer(_lm_text(), np.uint8)
    split = int(len(text) * 0.9)
    path = WORK / "tiny_lm.onnx"
    if not path.exists():
        torch.manual_seed(0)
        model = tiny_lm(seq=seq)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        rng = np.random.default_rng(0)
        tr = torch.from_numpy(text[:split].astype(np.int64))
        for step in range(steps):
            ix = torch.from_numpy(rng.integers(0, split - seq - 1, 32))
            x = torch.stack([tr[i : i + seq] for i in ix])
            y = torch.stack([tr[i + 1 : i + seq + 1] for i in ix])
            loss = torch.nn.functional.cross_entropy(model(x).reshape(-1, 256), y.reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % 50 == 0:
                print(f"[lm] step {step} loss {float(loss):.3f}", file=sys.stderr, flush=True)
        model.eval()
        _export_torch(model, torch.zeros(1, seq, dtype=torch.long), path, "tokens", "logits")
    rng = np.random.default_rng(1)
    starts = rng.integers(0, split - seq, 1000)
    calib = np.stack([text[i : i + seq] for i in starts]).astype(np.int64)[:, None]
    ev_starts = rng.integers(split, len(text) - seq - 1, 200)
    ev = np.stack([text[i : i + seq + 1] for i in ev_starts]).astype(np.int64)
    return {"name": "tiny LM (2 layers, d=128)", "path": path, "calib": {"tokens": calib},
            "eval_tokens": ev, "metric": "perplexity"}


def _perplexity(sess, ev: np.ndarray) -> float:
    nll, n = 0.0, 0
    for row in ev:
        logits = sess.run(None, {"tokens": row[None, :-1]})[0][0].astype(np.float64)
        logits -= logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        nll -= float(logp[np.arange(len(row) - 1), row[1:]].sum())
        n += len(row) - 1
    return float(np.exp(nll / n))


# -- silero-vad -----------------------------------------------------------------------------------------


def _speech(seed: int, n_utts: int = 6) -> np.ndarray:
    """16 kHz audio: espeak-ng sentences separated by silence and background noise."""
    rng = np.random.default_rng(seed)
    parts = []
    texts = [
        "The quick brown fox jumps over the lazy dog.", "Edge devices need small and fast models.",
        "Please call me back when you get this message.", "Quantization turns floating point into integers.",
        "It was a bright cold day in April, and the clocks were striking thirteen.", "Seven plus five is twelve.",
        "Open the pod bay doors.", "A journey of a thousand miles begins with a single step.",
    ]
    with tempfile.TemporaryDirectory() as td:
        for i in range(n_utts):
            wav = Path(td) / f"{i}.wav"
            voice = ["en", "en-us", "en-gb", "en+f3", "en+m3"][int(rng.integers(5))]
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(int(rng.integers(120, 190))), "-w", str(wav),
                            texts[int(rng.integers(len(texts)))]], check=True, capture_output=True)
            with wave.open(str(wav)) as w:
                sr = w.getframerate()
                a = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
            t = np.arange(0, len(a) / sr, 1 / 16000)
            a = np.interp(t, np.arange(len(a)) / sr, a).astype(np.float32) * float(rng.uniform(0.3, 1.0))
            gap = int(rng.uniform(0.3, 1.2) * 16000)
            parts += [rng.normal(0, float(rng.uniform(0.001, 0.01)), gap).astype(np.float32), a]
    audio = np.concatenate(parts)
    return (audio + rng.normal(0, 0.003, audio.size)).astype(np.float32)


def _silero_stream(sess, audio: np.ndarray, record: bool = False):
    """Run the VAD over 512-sample chunks (with 64 samples of context); return probabilities (and feeds)."""
    state = np.zeros((2, 1, 128), np.float32)
    ctx = np.zeros(64, np.float32)
    probs, feeds = [], []
    names = [i.name for i in sess.get_inputs()]
    for i in range(0, len(audio) - 512, 512):
        chunk = np.concatenate([ctx, audio[i : i + 512]])[None]
        feed = {"input": chunk, "state": state, "sr": np.array(16000, np.int64)}
        if record:
            feeds.append({k: v.copy() for k, v in feed.items()})
        out, state = sess.run(None, {k: feed[k] for k in names})
        probs.append(float(out.reshape(-1)[0]))
        ctx = audio[i + 512 - 64 : i + 512]
    return (np.array(probs), feeds) if record else np.array(probs)


def build_silero() -> dict:
    import onnxruntime as ort
    import silero_vad

    src = Path(silero_vad.__file__).parent / "data" / "silero_vad.onnx"
    path = WORK / "silero_vad.onnx"
    shutil.copy(src, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    cal_audio, ev_audio = _speech(1, 10), _speech(2, 8)
    _, feeds = _silero_stream(sess, cal_audio, record=True)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(feeds))
    while len(idx) < 1000:
        idx = np.concatenate([idx, rng.permutation(len(feeds))])
    feeds = [feeds[i] for i in idx[:1000]]
    calib = {k: np.stack([f[k] for f in feeds]) for k in ("input", "state", "sr")}
    return {"name": "silero-vad (If)", "path": path, "calib": calib, "eval_audio": ev_audio, "metric": "agreement",
            "stacked": True}


# -- quantizers --------------------------------------------------------------------------------------


class _Reader:
    def __init__(self, calib: dict, n: int, stacked: bool):
        self.calib, self.n, self.i, self.stacked = calib, n, 0, stacked

    def get_next(self):
        if self.i >= self.n:
            return None
        i = self.i
        self.i += 1
        return {k: np.asarray(v[i]) for k, v in self.calib.items()}

    def rewind(self):
        self.i = 0


def _feed(calib: dict, i: int) -> dict:
    return {k: np.asarray(v[i]) for k, v in calib.items()}


def ort_static(m: dict, out: Path, n: int) -> str:
    from onnxruntime.quantization import quantize_static

    quantize_static(str(m["path"]), str(out), _Reader(m["calib"], n, True))
    return "QDQ, MinMax, per-tensor, S8S8 (defaults)"


def ort_static_entropy(m: dict, out: Path, n: int) -> str:
    from onnxruntime.quantization import CalibrationMethod, quantize_static

    quantize_static(str(m["path"]), str(out), _Reader(m["calib"], n, True), calibrate_method=CalibrationMethod.Entropy)
    return "QDQ, Entropy (its default bins), per-tensor, S8S8"


def ort_static_best(m: dict, out: Path, n: int) -> str:
    from onnxruntime.quantization import CalibrationMethod, QuantType, quantize_static

    quantize_static(str(m["path"]), str(out), _Reader(m["calib"], n, True), per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.Percentile)
    return "QDQ, Percentile, per-channel, U8S8"


def ort_dynamic(m: dict, out: Path, n: int) -> str:
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(m["path"]), str(out))
    return "dynamic, S8 weights (defaults)"


def edgeq_static(m: dict, out: Path, n: int, calibration: str = "minmax", max_drop: float | None = None) -> str:
    from edgeq.core.data import SampleSet
    from edgeq.core.onnxutil import artifact_from
    from edgeq.quantization.int8.quantizer import quantize
    from edgeq.quantization.spec import QuantSpec

    data = SampleSet(arrays=m["calib"], stacked={k: True for k in m["calib"]}, labels=None, source="bench")
    evals = None
    if max_drop is not None:  # the search measures agreement with fp32 on calibration samples not used for ranges
        tail = {k: v[n : n + 200] for k, v in m["calib"].items()}
        evals = SampleSet(arrays=tail, stacked={k: True for k in tail}, labels=None, source="bench-holdout")
    res = quantize(artifact_from(m["path"]), QuantSpec(calibration=calibration, calib_samples=n), out, data=data,
                   evals=evals, max_drop=max_drop)
    m.setdefault("edgeq_notes", []).extend(res.notes)
    cal = res.details["calibration"]
    how = f"auto -> {cal['method']}" if "auto" in cal else calibration
    if max_drop is not None:
        s = res.details["search"]
        m.setdefault("edgeq_notes", []).append(f"search ({s['metric']}: {s['drop_means']}) steps {s['steps']}")
        return f"QDQ, {how}, max-drop {max_drop} on {s['metric']}: {s['best']['kept_float']} node(s) float"
    return f"QDQ, {how}, per-channel, U8S8"


def edgeq_cli(m: dict, out: Path, n: int) -> str:
    """``edgeq quantize MODEL -o OUT --calib NPZ --target cpu-x86_64`` in this process (the trip the CLI calls:
    the model's probe in a child, optimize, quantize with the default ``--calibration auto``, the stamped write);
    the samples are read from ``m["npz"]`` (one row per sample), as the command reads them."""
    from edgeq.pipeline.common import QuantOptions
    from edgeq.pipeline.quantize_trip import QuantizeConfig, quantize_model

    got = quantize_model(QuantizeConfig(model=Path(m["path"]), out=out, target="cpu-x86_64",
                                        quant=QuantOptions(calib=Path(m["npz"]), calib_samples=n)))
    return f"edgeq quantize: {got.recipe.get('mode')}"


# -- measurements -----------------------------------------------------------------------------------


def _sess(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def metric(m: dict, path: Path, ref_cache: dict) -> float:
    sess = _sess(path)
    if "eval_tokens" in m:
        return _perplexity(sess, m["eval_tokens"])
    if "eval_audio" in m:
        p = _silero_stream(sess, m["eval_audio"])
        ref = ref_cache.setdefault("silero", _silero_stream(_sess(m["path"]), m["eval_audio"]))
        return float(np.mean((p > 0.5) == (ref > 0.5)))
    xs = m["eval"]["input"]
    if m["metric"] == "task":  # edgeq.checks: detection F1, map IoU, sequence match, top-1 agreement vs fp32
        from tools.bench_tasks import task_metric

        m["metric_label"], value = task_metric(m["path"], path, xs, _sess)
        return value
    name = sess.get_inputs()[0].name
    preds = np.concatenate([sess.run(None, {name: x})[0].argmax(-1) for x in xs])
    if m["labels"] is not None:
        return float(np.mean(preds == m["labels"]))
    if "ref" not in ref_cache:
        r = _sess(m["path"])
        ref_cache["ref"] = np.concatenate([r.run(None, {name: x})[0].argmax(-1) for x in xs])
    return float(np.mean(preds == ref_cache["ref"]))


SHIP_TARGET = os.environ.get("EDGEQ_BENCH_TARGET", "arm64")


def shipped_latency_ms(path: Path, feed: dict, runs: int = 30) -> float | None:
    """p50 of the model.ort a bundle for SHIP_TARGET ships (edgeq's writer), with the manifest's session options."""
    import onnxruntime as ort

    from edgeq.quantization.selection.speed import shipped_ort
    from edgeq.core.runtime import graph_level
    from edgeq.core.targets import load_target

    t = load_target(SHIP_TARGET)
    try:
        shipped = shipped_ort(path, t, WORK / f"ship-{path.stem}")
    except Exception as e:  # noqa: BLE001 - the bench reports, it does not stop
        print(f"[ship] {path.name}: {str(e).splitlines()[0][:120]}", file=sys.stderr)
        return None
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = graph_level(t.graph_optimization_level)
    if t.ort_optimization_style == "runtime":
        so.add_session_config_entry("session.enable_saved_runtime_optimizations", "1")
    return latency_ms(shipped, feed, runs, ort.InferenceSession(str(shipped), so, providers=["CPUExecutionProvider"]))


def latency_ms(path: Path, feed: dict, runs: int = 30, sess=None) -> float:
    sess = sess or _sess(path)
    names = {i.name for i in sess.get_inputs()}
    feed = {k: v for k, v in feed.items() if k in names}
    for _ in range(3):
        sess.run(None, feed)
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feed)
        ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1000)


def coverage_str(fp32: Path, q: Path) -> str:
    from edgeq.core.onnxutil import load_model
    from edgeq.quantization.int8.quantizer import coverage

    c = coverage(load_model(fp32), load_model(q))
    return f"{c.nodes_quantized}/{c.nodes_total}"


def _status_kb(key: str) -> int:
    """VmRSS / VmHWM of this process in kB (ru_maxrss would be inherited from the parent across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _rss_now_kb() -> int:
    return _status_kb("VmRSS")


def peak_rss_mb(m: dict, recipe: str, n: int) -> float | None:
    """Peak RSS growth (MB) while quantizing with ``n`` calibration samples, in a fresh subprocess
    that only loads the model path and the samples (so model building does not set the peak)."""
    got = cost(m, recipe, n)
    return None if got is None else got[1]


def _cost_npz(m: dict, n: int, cli: bool) -> tuple[Path, Path]:
    """The samples as the cost subprocesses load them (written once): the bench's stacked arrays, and with
    ``cli`` the first ``n`` samples one row each, as `edgeq quantize --calib` reads them."""
    tag = m.get("cache_tag", Path(m["path"]).stem)
    npz = WORK / f"mem_{tag}_{len(next(iter(m['calib'].values())))}.npz"
    if not npz.exists():
        np.savez(npz, **m["calib"])
    flat = npz.with_name("flat_" + npz.name)
    if cli and not flat.exists():
        np.savez(flat, **{k: np.concatenate(list(v[:n])) for k, v in m["calib"].items()})
    return npz, flat


def cost_model(key: str, n: int) -> dict:
    """A cost-table model: ``MODEL.onnx:SAMPLES.npz`` (``--cost-file``), a ``MODELS`` key, or a
    ``tools/bench_cost_models.py`` key (with 8 samples beyond the ``n`` calibration ones, held out for auto's scoring)."""
    if ":" in key:
        return cost_file_model(key, n)
    if key in MODELS:
        return MODELS[key]()
    from tools.bench_cost_models import build

    return build(key, n + 8, WORK, _export_torch)


def cost_file_model(spec: str, n: int) -> dict:
    """``MODEL.onnx:SAMPLES.npz`` (``--cost-file``): an ONNX file and an .npz of samples, one row per sample along the
    first axis of each array (as ``edgeq quantize --calib`` takes it, e.g. images [32, 3, 320, 320] for input
    [batch, 3, 320, 320]); each sample is fed with a batch axis of 1. The first ``n`` rows calibrate."""
    path, _, npz = spec.rpartition(":")
    if not path or not npz:
        raise SystemExit(f"--cost-file {spec!r}: write MODEL.onnx:SAMPLES.npz")
    z = np.load(npz, allow_pickle=False)
    calib = {k: np.asarray(z[k])[:n, None] for k in z.files}
    return {"name": Path(path).name, "path": Path(path), "calib": calib, "cache_tag": f"{Path(path).stem}-{Path(npz).stem}"}


def cost(m: dict, recipe: str, n: int, root: Path = ROOT) -> tuple[float, float, float] | None:
    """(wall seconds, peak RSS growth MB, CPU seconds of every thread) of quantizing with ``n`` samples in a
    fresh subprocess. CPU time varies less than wall time on a shared host; both are reported.
    ``root``: the edgeq checkout whose recipe runs (``--cost-base``: e.g. main, in the same rounds)."""
    npz, flat = _cost_npz(m, n, recipe == "edgeq-cli")
    code = (
        "import sys, json, numpy as np, pathlib, tempfile; sys.path.insert(0, %r); "
        "import tools.bench_int8 as b; "
        "z = np.load(%r); calib = {k: z[k] for k in z.files}; "
        "m = {'path': pathlib.Path(%r), 'calib': calib, 'npz': %r}; base = b._rss_now_kb(); "
        "out = pathlib.Path(tempfile.mkdtemp()) / 'q.onnx'; import time; t = time.perf_counter(); c = time.process_time(); "
        "b.MEMORY_RECIPES[%r](m, out, %d); t = time.perf_counter() - t; c = time.process_time() - c; "
        "print(json.dumps([base, b._status_kb('VmHWM'), t, c]))"
    ) % (str(root), str(npz), str(m["path"]), str(flat), recipe, n)
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        print(f"[memory] {recipe} n={n} took over 10 minutes", file=sys.stderr)
        return None
    if r.returncode != 0:
        print(f"[memory] {recipe} n={n} failed: {r.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    base, peak, wall, cpu = json.loads(r.stdout.strip().splitlines()[-1])
    return wall, (peak - base) / 1024.0, cpu


STAGES = {  # (module, attribute, method of a class or None, label): timed in ``staged`` (wall and CPU, all threads)
    "edgeq": [
        ("edgeq.quantization.int8.static", "calibrate_reduced", None, "calibration pass (all of it)"),
        ("edgeq.quantization.int8.calibrate", "TensorStats", "_bin", "  histogram binning"),
        ("edgeq.quantization.int8.autocal", "choose", None, "auto (all of it)"),
        ("edgeq.quantization.int8.autocal", "_session", None, "  auto: sessions opened"),
        ("edgeq.quantization.int8.calibrate", "TensorStats", "range", "  auto: range searches"),
        ("edgeq.quantization.int8.static", "write", None, "QDQ writes (auto's and the final one)"),
        ("edgeq.quantization.int8.static", "layer_sqnr", None, "per-layer SQNR report"),
        ("edgeq.core.isolate", "probe_model", None, "the model's probe in a child (CLI)"),
        ("edgeq.core.optimization", "optimize", None, "optimize (CLI)"),
        ("onnxruntime", "InferenceSession", "run", "every onnxruntime run"),
    ],
    "ort": [
        ("onnxruntime.quantization.calibrate", "MinMaxCalibrater", "augment_graph", "augment graph"),
        ("onnxruntime.quantization.calibrate", "MinMaxCalibrater", "create_inference_session", "calibration session"),
        ("onnxruntime.quantization.calibrate", "MinMaxCalibrater", "collect_data", "calibration pass"),
        ("onnxruntime.quantization.calibrate", "MinMaxCalibrater", "compute_data", "ranges"),
        ("onnxruntime.quantization.qdq_quantizer", "QDQQuantizer", "quantize_model", "QDQ rewrite"),
        ("onnxruntime", "InferenceSession", "run", "every onnxruntime run"),
    ],
}


def staged(recipe: str, m: dict, out: Path, n: int) -> dict[str, list[float]]:
    """Run ``recipe`` with timers around its stages (``STAGES``): label -> [calls, wall s, CPU s of all threads]."""
    import importlib

    times: dict[str, list[float]] = {}

    def timed(f, label):
        def g(*a, **k):
            t, c = time.perf_counter(), time.process_time()
            try:
                return f(*a, **k)
            finally:
                e = times.setdefault(label, [0, 0.0, 0.0])
                e[0] += 1
                e[1] += time.perf_counter() - t
                e[2] += time.process_time() - c
        return g

    for mod, attr, meth, label in STAGES["ort" if recipe.startswith("ort") else "edgeq"]:
        obj = getattr(importlib.import_module(mod), attr)
        if meth is None:
            setattr(importlib.import_module(mod), attr, timed(obj, label))
            for other in list(sys.modules.values()):  # names imported with ``from mod import attr`` too
                if getattr(other, "__name__", "").startswith("edgeq.") and getattr(other, attr, None) is obj:
                    setattr(other, attr, timed(obj, label))
        else:
            setattr(obj, meth, timed(getattr(obj, meth), label))
    MEMORY_RECIPES[recipe](m, out, n)
    return times


def stage_table(m: dict, n: int, recipes: tuple[str, ...], repeat: int) -> str:
    """Per-stage wall and CPU time of each recipe (``--cost-stages``), fresh processes round-robin, the median per stage."""
    npz, flat = _cost_npz(m, n, "edgeq-cli" in recipes)
    runs: dict[str, list[tuple[float, float, dict]]] = {r: [] for r in recipes}
    for _ in range(max(1, repeat)):
        for r in recipes:
            code = (
                "import sys, json, numpy as np, pathlib, tempfile, time; sys.path.insert(0, %r); import tools.bench_int8 as b; "
                "z = np.load(%r); m = {'path': pathlib.Path(%r), 'calib': {k: z[k] for k in z.files}, 'npz': %r}; "
                "out = pathlib.Path(tempfile.mkdtemp()) / 'q.onnx'; t = time.perf_counter(); c = time.process_time(); "
                "st = b.staged(%r, m, out, %d); print(json.dumps([time.perf_counter() - t, time.process_time() - c, st]))"
            ) % (str(ROOT), str(npz), str(m["path"]), str(flat), r, n)
            p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
            if p.returncode != 0:
                print(f"[stages] {r} failed: {p.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                continue
            runs[r].append(tuple(json.loads(p.stdout.strip().splitlines()[-1])))
    lines = [f"| {m['name']}: stage | calls | wall time | CPU time (all threads) |", "|---|---|---|---|"]
    for r, got in runs.items():
        if not got:
            continue
        med = lambda xs: float(np.median(xs))  # noqa: E731
        lines.append(f"| **{r}** (whole quantization, median of {len(got)}) | | {med([g[0] for g in got]):.2f} s | {med([g[1] for g in got]):.2f} s |")
        order = [st[3] for st in STAGES["ort" if r.startswith("ort") else "edgeq"]]
        for label in sorted(dict.fromkeys(k for g in got for k in g[2]), key=order.index):
            v = [g[2].get(label, [0, 0.0, 0.0]) for g in got]
            lines.append(f"| {label} | {int(med([x[0] for x in v]))} | {med([x[1] for x in v]):.2f} s | {med([x[2] for x in v]):.2f} s |")
    return "\n".join(lines)


def cost_table(keys: list[str], n: int, recipes: tuple[str, ...] = ("ort-static", "edgeq", "edgeq-minmax"), repeat: int = 1,
               base: Path | None = None) -> str:
    """Quantization wall time and peak RSS growth, edgeq vs onnxruntime's quantize_static defaults.
    With ``repeat`` > 1 the recipes run round-robin that many times: the median wall time and the
    largest peak are reported (on a shared host, load changes between one recipe's run and the next's),
    with the median CPU time (all threads) beside them. ``base``: another edgeq checkout; its ``edgeq``
    recipe runs in the same rounds as ``edgeq@base``."""
    lines = ["| model | recipe | quantization wall time | peak RSS growth | vs onnxruntime (time, RSS) | CPU time (vs onnxruntime) |",
             "|---|---|---|---|---|---|"]
    for key in keys:
        m = cost_model(key, n)
        runs: dict[str, list[tuple[float, float, float]]] = {r: [] for r in recipes + (("edgeq@base",) if base is not None else ())}
        for _ in range(max(1, repeat)):
            for r in recipes + (("edgeq@base",) if base is not None else ()):
                v = cost(m, "edgeq", n, base) if r == "edgeq@base" else cost(m, r, n)
                if v is not None:
                    runs[r].append(v)
        got = {r: (float(np.median([w for w, _, _ in v])), max(p for _, p, _ in v), float(np.median([c for _, _, c in v])))
               if v else None for r, v in runs.items()}
        ref = got.get("ort-static")
        for r, v in got.items():
            if v is None:
                lines.append(f"| {m['name']} | {r} | failed | | | |")
                continue
            ratio = f"{v[0] / ref[0]:.2f}x, {v[1] / ref[1]:.2f}x" if ref and ref[0] > 0 and ref[1] > 0 else "-"
            cpu = f"{v[2]:.1f} s" + (f" ({v[2] / ref[2]:.2f}x)" if ref and ref[2] > 0 else "")
            lines.append(f"| {m['name']} | {r} ({n} samples{f', median of {len(runs[r])}' if repeat > 1 else ''}) | {v[0]:.1f} s | {v[1]:.0f} MB | {ratio} | {cpu} |")
    return "\n".join(lines)


MODELS = {
    "digits": build_digits,
    "resnet18": lambda: build_convnet("resnet18", 224),
    "mobilenetv2": lambda: build_convnet("mobilenetv2", 224),
    "resnet18-64": lambda: build_convnet("resnet18", 64),  # for the memory table (1,000 samples fit in RAM)
    "silero": build_silero,
    "bigact": build_bigact,
    **{k: (lambda k=k: _task_model(k)) for k in ("yolo", "probmap", "ctc", "mobilenetv3")},
    "lm": build_lm,
}


def _task_model(kind: str) -> dict:
    from tools.bench_tasks import build

    return build(kind, WORK, _export_torch)


RECIPES = {
    "ort-static": ort_static,
    "ort-static-best": ort_static_best,
    "ort-dynamic": ort_dynamic,
    "edgeq-minmax": edgeq_static,
    "edgeq-entropy": lambda m, o, n: edgeq_static(m, o, n, "entropy"),
    "edgeq": lambda m, o, n: edgeq_static(m, o, n, "auto"),  # edgeq's default recipe
    "edgeq --max-drop 0.01": lambda m, o, n: edgeq_static(m, o, n, "auto", 0.01),
    "edgeq-cli": lambda m, o, n: edgeq_cli(m, o, n),  # what `edgeq quantize --calib NPZ` runs: probe, optimize, auto
}
MEMORY_RECIPES = {**RECIPES, "ort-static-entropy": ort_static_entropy}


def bench_model(key: str, n_calib: int, recipes: tuple[str, ...] = ()) -> list[dict]:
    m = MODELS[key]()
    rows = []
    ref_cache: dict = {}
    feed = _feed(m["calib"], 0)
    fp32_ms = latency_ms(m["path"], feed)
    fp32_size = m["path"].stat().st_size
    fp32_ship = shipped_latency_ms(m["path"], feed)
    rows.append({"model": m["name"], "recipe": "fp32", "metric": metric(m, m["path"], ref_cache), "coverage": "-",
                 "size": fp32_size, "latency": 1.0, "qtime": 0.0, "fp32_ms": fp32_ms,
                 "shipped": None if fp32_ship is None else fp32_ship / fp32_ms})
    for rname, fn in RECIPES.items():
        if recipes and rname not in recipes:
            continue
        out = WORK / f"{key}.{rname.split()[0]}{'.budget' if 'max-drop' in rname else ''}.onnx"  # edgeq = auto
        t = time.perf_counter()
        try:
            desc = fn(m, out, n_calib)
        except Exception as e:  # noqa: BLE001 - the bench reports failures, it does not stop
            rows.append({"model": m["name"], "recipe": rname, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:90]}"})
            continue
        qtime = time.perf_counter() - t
        rows.append({
            "model": m["name"], "recipe": rname, "desc": desc, "metric": metric(m, out, ref_cache),
            "coverage": coverage_str(m["path"], out), "size": out.stat().st_size,
            "latency": latency_ms(out, feed) / fp32_ms, "qtime": qtime,
            "shipped": (lambda v: None if v is None else v / fp32_ms)(shipped_latency_ms(out, feed)),
        })
    for r in rows:
        r["metric_name"] = m["metric"]
        r["metric_label"] = m.get("metric_label", "")
    if m.get("edgeq_notes"):
        print(f"[{m['name']}] edgeq notes: " + " | ".join(dict.fromkeys(m["edgeq_notes"])), file=sys.stderr)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        f"| model | recipe | accuracy / agreement | weight nodes quantized | size | latency vs fp32 | shipped model.ort ({SHIP_TARGET}) vs fp32 | quant time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['recipe']} | FAILED: {r['error']} | | | | | |")
            continue
        if r["metric_name"] == "perplexity":
            met = f"ppl {r['metric']:.3f}"
        elif r["metric_name"] == "task":
            met = f"{r['metric']:.3f} {r.get('metric_label', '')}"
        else:
            met = f"{100 * r['metric']:.1f} % {'acc' if r['metric_name'] == 'accuracy' else 'agree'}"
        lat = f"{r['latency']:.2f}x" + (f" ({r['fp32_ms']:.2f} ms)" if r["recipe"] == "fp32" else "")
        recipe = r["recipe"] + (f" ({r['desc']})" if r.get("desc") else "")
        ship = "-" if r.get("shipped") is None else f"{r['shipped']:.2f}x"
        lines.append(f"| {r['model']} | {recipe} | {met} | {r['coverage']} | {r['size'] / 1e6:.2f} MB | {lat} | {ship} | {r['qtime']:.1f} s |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="digits,resnet18,mobilenetv2,silero")
    ap.add_argument("--calib", type=int, default=100, help="calibration samples for the accuracy table")
    ap.add_argument("--memory", default="digits,silero", help="models for the peak-memory table (100 and 1,000 samples)")
    ap.add_argument("--memory-recipes", default="ort-static,ort-static-entropy,edgeq-minmax,edgeq-entropy,edgeq")
    ap.add_argument("--results", type=Path, default=None, help="JSON file: rows are appended per model (partial runs survive)")
    ap.add_argument("--recipes", default="", help="only these recipes (comma-separated names from RECIPES), e.g. ort-static,ort-static-best,edgeq")
    ap.add_argument("--cost", default="", help="models for the cost table only (e.g. bigact, or detector@736,ctc@48x320,"
                    "mobilenetv3@224,resnet18@224 from tools/bench_cost_models.py): wall time and peak RSS vs onnxruntime")
    ap.add_argument("--cost-samples", type=int, default=64)
    ap.add_argument("--cost-repeat", type=int, default=1, help="run the cost recipes round-robin N times: median wall time")
    ap.add_argument("--cost-recipes", default="ort-static,edgeq,edgeq-minmax")
    ap.add_argument("--cost-base", type=Path, default=None, help="another edgeq checkout (e.g. `git worktree add /tmp/main main`): "
                    "its edgeq recipe runs in the same rounds, as edgeq@base")
    ap.add_argument("--cost-file", action="append", default=[], metavar="MODEL.onnx:SAMPLES.npz",
                    help="an external model for the cost table (repeatable): the npz holds one row per sample, as for "
                    "`edgeq quantize --calib`; e.g. --cost-file /tmp/320n.onnx:/tmp/calib.npz --cost-recipes ort-static,edgeq,edgeq-cli")
    ap.add_argument("--cost-stages", action="store_true", help="with --cost/--cost-file: time per stage instead (calibration, "
                    "binning, auto's sessions, range searches and writes, the per-layer report; onnxruntime's augment, "
                    "calibration pass and QDQ rewrite), fresh processes round-robin, --cost-repeat times")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    if args.cost_stages:
        for key in [k for k in args.cost.split(",") if k] + args.cost_file:
            m = cost_model(key, args.cost_samples)
            print(stage_table(m, args.cost_samples, tuple(args.cost_recipes.split(",")), args.cost_repeat) + "\n")
        return
    if args.cost or args.cost_file:
        print(cost_table([k for k in args.cost.split(",") if k] + args.cost_file, args.cost_samples, tuple(args.cost_recipes.split(",")), args.cost_repeat,
                         args.cost_base))
        return
    rows = json.loads(args.results.read_text()) if args.results and args.results.exists() else []
    for key in args.models.split(","):
        if key:
            t = time.perf_counter()
            new = bench_model(key, args.calib, tuple(r for r in args.recipes.split(",") if r))
            rows = [r for r in rows if r["model"] != new[0]["model"]] + new
            if args.results:
                args.results.write_text(json.dumps(rows, indent=1))
            print(f"[{key}] {time.perf_counter() - t:.0f} s", file=sys.stderr)
    print(table(rows))
    mem = ["", "| model | recipe | calibration peak RSS growth, 100 samples | 1,000 samples |", "|---|---|---|---|"]
    for key in args.memory.split(","):
        if not key:
            continue
        m = MODELS[key]()
        if len(next(iter(m["calib"].values()))) < 1000:
            print(f"[memory] {key}: fewer than 1000 calibration samples", file=sys.stderr)
        for rname in args.memory_recipes.split(","):
            vals = [peak_rss_mb(m, rname, n) for n in (100, 1000)]
            mem.append(f"| {m['name']} | {rname} | " + " | ".join("failed" if v is None else f"{v:.0f} MB" for v in vals) + " |")
    print("\n".join(mem))


if __name__ == "__main__":
    main()
