"""Train a small CNN on scikit-learn's digits (no download) and export it for edgeq.

Writes, next to this file:
  model.onnx  fp32 model, input "input" float32 [N, 1, 8, 8], output "logits" [N, 10]
  calib.npz   256 training images ("input") for calibration
  eval.npz    the held-out split ("input", "labels") for verification

Run: python examples/digits/train.py   (about 10 s on 2 cores)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def load_split(seed: int = 0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)


def build_model():
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(128 * 2 * 2, 64), nn.ReLU(),
        nn.Linear(64, 10),
    )


def train(model, x, y, *, epochs: int, seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            # light augmentation: shift by up to one pixel
            xb = torch.roll(xt[idx], shifts=(int(torch.randint(-1, 2, (1,), generator=gen)), int(torch.randint(-1, 2, (1,), generator=gen))), dims=(2, 3))
            loss = torch.nn.functional.cross_entropy(model(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    model.eval()


def export(model, path: Path) -> None:
    import logging
    import warnings

    import torch

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    example = torch.zeros(2, 1, 8, 8)
    kwargs = dict(input_names=["input"], output_names=["logits"], opset_version=18)
    try:
        prog = torch.onnx.export(
            model, (example,), dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False, **kwargs
        )
        prog.save(str(path))
    except Exception as e:  # noqa: BLE001 - fall back to the TorchScript exporter, and say so
        print(f"dynamo exporter failed ({type(e).__name__}); using the TorchScript exporter", file=sys.stderr)
        torch.onnx.export(
            model, (example,), str(path), dynamo=False,
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, **kwargs,
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calib-size", type=int, default=256)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    x_train, x_test, y_train, y_test = load_split(args.seed)
    model = build_model()
    train(model, x_train, y_train, epochs=args.epochs, seed=args.seed)
    with torch.no_grad():
        acc = float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    args.out.mkdir(parents=True, exist_ok=True)
    export(model, args.out / "model.onnx")
    rng = np.random.default_rng(args.seed)
    calib_idx = rng.choice(len(x_train), size=min(args.calib_size, len(x_train)), replace=False)
    np.savez(args.out / "calib.npz", input=x_train[np.sort(calib_idx)])
    np.savez(args.out / "eval.npz", input=x_test, labels=y_test)
    print(f"test accuracy {100 * acc:.2f} % on {len(y_test)} held-out digits; wrote {args.out / 'model.onnx'}, calib.npz, eval.npz")
    if acc < 0.97:
        print("accuracy below 97 %: training went wrong", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
