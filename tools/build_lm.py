"""Build the INT4 fixture: a small byte-level Llama trained here on the Python standard library.

    python tools/build_lm.py                 # the benchmark fixture (a few minutes on 2 cores)
    python tools/build_lm.py --preset tiny   # what the tests use (seconds)
    python tools/build_lm.py --preset big --untrained   # memory-bound decode model (>= 300 MB fp32)

Writes, under ``~/.cache/edgeq/fixtures/lm-<hash of the config>/`` (or ``--cache``):
  hf/                  save_pretrained() of the transformers LlamaForCausalLM
  model.onnx           logits [1, T, 259] for input_ids [1, T] (fixed T = seq_len)
  decode.onnx          one decode step with a KV cache: input_ids [1, 1], past_key/past_value
                       [layers, 1, heads, P, head_dim] -> logits [1, 1, 259], present_key/present_value
  calib.npz, eval.npz  input_ids windows [n, T] (calibration from training text, eval from held-out files)
  info.json            the config, training loss, eval perplexity of the PyTorch model

Vocabulary: 256 byte values plus BOS/EOS/PAD (259). The ONNX graphs come from this
file's own Llama forward (same math and parameter names as transformers'), checked
against the transformers model's logits before anything is written.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import math
import os
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

VOCAB = 259
BOS = 256


@dataclass(frozen=True)
class LMConfig:
    layers: int = 4
    hidden: int = 256
    heads: int = 4
    intermediate: int = 768
    seq_len: int = 128
    steps: int = 400
    batch: int = 8
    lr: float = 2e-3
    seed: int = 0
    train: bool = True
    n_calib: int = 32
    n_eval: int = 32

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


PRESETS = {
    "default": LMConfig(),
    "tiny": LMConfig(layers=2, hidden=64, heads=2, intermediate=192, seq_len=64, steps=150, batch=16, lr=4e-3, n_calib=16, n_eval=8),
    # untrained, big enough that a decode step is memory-bound: ~310 MB of fp32 weights
    "big": LMConfig(layers=6, hidden=1024, heads=8, intermediate=2816, seq_len=64, steps=0, train=False, n_calib=4, n_eval=4),
}


def default_cache() -> Path:
    return Path(os.environ.get("EDGEQ_CACHE", Path.home() / ".cache" / "edgeq")) / "fixtures"


def stdlib_text() -> tuple[bytes, bytes]:
    """(train, held-out) bytes from the running interpreter's Lib/*.py, split by file."""
    files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
    if not files:
        raise SystemExit("no standard library sources found next to this interpreter")
    cut = int(len(files) * 0.9)
    read = lambda fs: b"\n".join(Path(f).read_bytes() for f in fs)  # noqa: E731
    return read(files[:cut]), read(files[cut:])


def windows(text: bytes, n: int, t: int, seed: int) -> np.ndarray:
    """``n`` windows of ``t`` tokens (BOS + t-1 bytes) at seeded offsets."""
    rng = np.random.default_rng(seed)
    data = np.frombuffer(text, np.uint8)
    starts = rng.integers(0, len(data) - t, n)
    out = np.empty((n, t), np.int64)
    out[:, 0] = BOS
    for i, s in enumerate(starts):
        out[i, 1:] = data[s : s + t - 1]
    return out


def hf_model(cfg: LMConfig):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    conf = LlamaConfig(
        vocab_size=VOCAB, hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
        max_position_embeddings=max(cfg.seq_len, 2048), tie_word_embeddings=False, bos_token_id=BOS,
        eos_token_id=257, pad_token_id=258, rms_norm_eps=1e-5,
    )
    return LlamaForCausalLM(conf)


def train(model, cfg: LMConfig, text: bytes, log=print) -> float:
    import torch

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    loss_v = float("nan")
    t0 = time.time()
    for step in range(cfg.steps):
        ids = torch.from_numpy(windows(text, cfg.batch, cfg.seq_len, cfg.seed * 100003 + step))
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_v = float(loss)
        if step % 25 == 0 or step == cfg.steps - 1:
            log(f"step {step:5d}  loss {loss_v:.3f}  {time.time() - t0:.0f} s")
    model.eval()
    return loss_v


def _export_modules():
    """The Llama forward written out (export-friendly, with an explicit KV cache)."""
    import torch
    from torch import nn

    class RMS(nn.Module):
        def __init__(self, src):
            super().__init__()
            self.weight = src.weight
            self.eps = 1e-5

        def forward(self, x):
            return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))

    def rope(x, cos, sin):
        h = x.shape[-1] // 2
        rot = torch.cat([-x[..., h:], x[..., :h]], dim=-1)
        return x * cos + rot * sin

    class Attn(nn.Module):
        def __init__(self, src, heads):
            super().__init__()
            self.q_proj, self.k_proj, self.v_proj, self.o_proj = src.q_proj, src.k_proj, src.v_proj, src.o_proj
            self.h = heads
            self.hd = src.q_proj.out_features // heads

        def forward(self, x, cos, sin, pk=None, pv=None):
            b, t, _ = x.shape
            q = self.q_proj(x).view(b, t, self.h, self.hd).transpose(1, 2)
            k = self.k_proj(x).view(b, t, self.h, self.hd).transpose(1, 2)
            v = self.v_proj(x).view(b, t, self.h, self.hd).transpose(1, 2)
            q, k = rope(q, cos, sin), rope(k, cos, sin)
            p = 0
            if pk is not None:
                p = pk.shape[2]
                k = torch.cat([pk, k], 2)
                v = torch.cat([pv, v], 2)
            s = (q @ k.transpose(-1, -2)) / math.sqrt(self.hd)
            if t > 1:
                s = s + torch.full((t, t + p), float("-inf")).triu(1 + p)
            o = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(b, t, self.h * self.hd)
            return self.o_proj(o), k, v

    class MLP(nn.Module):
        def __init__(self, src):
            super().__init__()
            self.gate_proj, self.up_proj, self.down_proj = src.gate_proj, src.up_proj, src.down_proj

        def forward(self, x):
            return self.down_proj(torch.nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))

    class Layer(nn.Module):
        def __init__(self, src, heads):
            super().__init__()
            self.input_layernorm = RMS(src.input_layernorm)
            self.self_attn = Attn(src.self_attn, heads)
            self.post_attention_layernorm = RMS(src.post_attention_layernorm)
            self.mlp = MLP(src.mlp)

        def forward(self, x, cos, sin, pk=None, pv=None):
            a, k, v = self.self_attn(self.input_layernorm(x), cos, sin, pk, pv)
            x = x + a
            return x + self.mlp(self.post_attention_layernorm(x)), k, v

    class Body(nn.Module):
        def __init__(self, src, heads):
            super().__init__()
            self.embed_tokens = src.embed_tokens
            self.layers = nn.ModuleList([Layer(l, heads) for l in src.layers])
            self.norm = RMS(src.norm)

        def forward(self, ids, cos, sin, past_k=None, past_v=None):
            x = self.embed_tokens(ids)
            keys, vals = [], []
            for i, layer in enumerate(self.layers):
                x, k, v = layer(x, cos, sin, None if past_k is None else past_k[i], None if past_v is None else past_v[i])
                keys.append(k)
                vals.append(v)
            return self.norm(x), keys, vals

    class Llama(nn.Module):
        """forward(ids, past_k=None, past_v=None) -> logits (, present_k, present_v).

        Module names follow transformers' (model.layers.0.self_attn.q_proj ...), so ONNX node
        names carry them (/model/layers.0/self_attn/q_proj/MatMul).
        """

        def __init__(self, hf):
            super().__init__()
            c = hf.config
            self.model = Body(hf.model, c.num_attention_heads)
            self.lm_head = hf.lm_head
            hd = c.hidden_size // c.num_attention_heads
            theta = getattr(c, "rope_theta", None) or c.rope_parameters["rope_theta"]
            self.register_buffer("inv_freq", 1.0 / theta ** (torch.arange(0, hd, 2).float() / hd), persistent=False)

        def forward(self, ids, past_k=None, past_v=None):
            t = ids.shape[1]
            p = 0 if past_k is None else past_k.shape[3]
            ang = (torch.arange(t, dtype=torch.float32) + p)[:, None] * self.inv_freq[None, :]
            ang = torch.cat([ang, ang], -1)
            x, keys, vals = self.model(ids, ang.cos(), ang.sin(), past_k, past_v)
            logits = self.lm_head(x)
            if past_k is None:
                return logits
            return logits, torch.stack(keys), torch.stack(vals)

    return Llama


def export_onnx(hf, cfg: LMConfig, out: Path, *, decode: bool = True, check: bool = True) -> None:
    import torch

    Llama = _export_modules()
    m = Llama(hf).eval()
    ids = torch.from_numpy(windows(b"def f(x):\n    return x + 1\n" * 20, 1, cfg.seq_len, 0))
    with torch.no_grad():
        if check:
            ref = hf(input_ids=ids).logits
            got = m(ids)
            err = float((ref - got).abs().max())
            if err > 1e-3 * max(1.0, float(ref.abs().max())):
                raise SystemExit(f"export forward differs from transformers by {err}")
        kw = dict(dynamo=False, opset_version=17, do_constant_folding=True)
        torch.onnx.export(m, (ids,), str(out / "model.onnx"), input_names=["input_ids"], output_names=["logits"], **kw)
        if decode:
            hd = cfg.hidden // cfg.heads
            pk = torch.zeros(cfg.layers, 1, cfg.heads, 8, hd)
            torch.onnx.export(
                m, (ids[:, :1], pk, pk.clone()), str(out / "decode.onnx"),
                input_names=["input_ids", "past_key", "past_value"], output_names=["logits", "present_key", "present_value"],
                dynamic_axes={"past_key": {3: "past"}, "past_value": {3: "past"}, "present_key": {3: "total"}, "present_value": {3: "total"}},
                **kw,
            )


def build(cfg: LMConfig, cache: Path | None = None, *, log=print, force: bool = False) -> Path:
    """Build (or reuse) the fixture for ``cfg``; returns its folder."""
    import torch

    root = Path(cache or default_cache()) / f"lm-{cfg.key()}"
    if (root / "info.json").exists() and not force:
        return root
    tmp = root.with_name(root.name + f".tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        return _build_into(cfg, root, tmp, log)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-built is left in the cache
        raise


def _build_into(cfg: LMConfig, root: Path, tmp: Path, log) -> Path:
    import torch

    torch.set_num_threads(1)  # on a shared 2-core host, 2 threads ran 25x slower than 1
    train_text, eval_text = stdlib_text()
    hf = hf_model(cfg)
    t0 = time.time()
    loss = train(hf, cfg, train_text, log=log) if cfg.train and cfg.steps else float("nan")
    train_s = time.time() - t0
    hf.eval()
    hf.save_pretrained(str(tmp / "hf"))
    calib = windows(train_text, cfg.n_calib, cfg.seq_len, 1)
    ev = windows(eval_text, cfg.n_eval, cfg.seq_len, 2)
    np.savez(tmp / "calib.npz", input_ids=calib)
    np.savez(tmp / "eval.npz", input_ids=ev)
    with torch.no_grad():
        nll = float(hf(input_ids=torch.from_numpy(ev), labels=torch.from_numpy(ev)).loss)
    export_onnx(hf, cfg, tmp)
    info = {
        "config": asdict(cfg), "train_loss": loss, "train_seconds": round(train_s, 1),
        "eval_perplexity_torch": math.exp(nll), "params": sum(p.numel() for p in hf.parameters()),
        "python": sys.version.split()[0], "torch": torch.__version__,
    }
    (tmp / "info.json").write_text(json.dumps(info, indent=2))
    if root.exists():
        import shutil

        shutil.rmtree(root)
    os.replace(tmp, root)
    log(f"wrote {root} (eval perplexity {info['eval_perplexity_torch']:.3f})")
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="default")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--untrained", action="store_true")
    ap.add_argument("--cache", type=Path)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--reexport", action="store_true", help="write the ONNX files again from the cached hf/ folder")
    a = ap.parse_args()
    cfg = PRESETS[a.preset]
    from dataclasses import replace

    if a.steps is not None:
        cfg = replace(cfg, steps=a.steps)
    if a.untrained:
        cfg = replace(cfg, train=False, steps=0)
    if a.reexport:
        from transformers import LlamaForCausalLM

        root = Path(a.cache or default_cache()) / f"lm-{cfg.key()}"
        export_onnx(LlamaForCausalLM.from_pretrained(str(root / "hf")).eval(), cfg, root)
        print(root)
        return
    print(build(cfg, a.cache, force=a.force))


if __name__ == "__main__":
    main()
