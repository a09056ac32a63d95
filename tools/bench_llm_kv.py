#!/usr/bin/env python3
"""Decode-step growth with the context, and onnxruntime's int8 KV cache, on a 1B-shaped decoder.

    python tools/bench_llm_kv.py --contexts 128,1024 --layers 2
    python tools/bench_llm_kv.py --int4 --rounds 2             # the same decoder with edgeq's int4 RTN weights

1. The fused decoder edgeq writes (``build_decoder(fused=True)``) for a Llama-3.2-1B-shaped config
   (hidden 2048, 32 heads of 64, 8 KV heads, MLP 8192; RANDOM weights, ``--layers`` layers,
   ``--vocab`` rows): one decode step with the past/present of each layer bound to one max-length
   buffer (as onnxruntime-genai's ``past_present_share_buffer``), at each context, 1 thread.
   The per-layer attention share is then scaled to the real model's 16 layers and 128,256 vocab
   (``--real-layers``/``--real-vocab``), since growth is attention over layers + head.
2. One ``com.microsoft.GroupQueryAttention`` node of that shape alone, fp32 cache against an int8
   cache (``k_quant_type``/``v_quant_type`` PER_TENSOR and PER_CHANNEL, ``kv_cache_bit_width`` 8):
   step time at each context and the attention output's error against the fp32 cache.
Best of ``--rounds`` medians (a busy host only slows a round down). Random weights: time only.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

NH, NKV, HD, HIDDEN, MLP = 32, 8, 64, 2048, 8192


def _median_us(fn, reps: int) -> float:
    for _ in range(10):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e6


def _session(path_or_bytes, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(path_or_bytes, so, providers=["CPUExecutionProvider"])


def decoder_steps(layers: int, vocab: int, contexts: list[int], maxlen: int, reps: int, threads: int, int4: bool = False) -> list[float]:
    import torch

    from edgeq.exporters.decoder import PAST_KEY, PAST_VALUE, PRESENT_KEY, PRESENT_VALUE, DecoderArch, build_decoder

    inv = tuple(float(x) for x in 1.0 / (500000.0 ** (np.arange(0, HD, 2) / HD)))
    arch = DecoderArch("llama", layers, HIDDEN, NH, NKV, HD, vocab, 1e-5, inv, context=maxlen)
    rng = np.random.default_rng(0)

    def r(*shape: int) -> torch.Tensor:
        return torch.from_numpy((rng.standard_normal(shape, dtype=np.float32) * 0.02))

    st = {"model.embed_tokens.weight": r(vocab, HIDDEN), "model.norm.weight": torch.ones(HIDDEN), "lm_head.weight": r(vocab, HIDDEN)}
    for i in range(layers):
        p = f"model.layers.{i}."
        st |= {p + "self_attn.q_proj.weight": r(NH * HD, HIDDEN), p + "self_attn.k_proj.weight": r(NKV * HD, HIDDEN),
               p + "self_attn.v_proj.weight": r(NKV * HD, HIDDEN), p + "self_attn.o_proj.weight": r(HIDDEN, NH * HD),
               p + "mlp.gate_proj.weight": r(MLP, HIDDEN), p + "mlp.up_proj.weight": r(MLP, HIDDEN), p + "mlp.down_proj.weight": r(HIDDEN, MLP),
               p + "input_layernorm.weight": torch.ones(HIDDEN), p + "post_attention_layernorm.weight": torch.ones(HIDDEN)}
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        path = build_decoder(arch, st, Path(d) / "model.onnx", fused=True)
        del st
        if int4:  # edgeq's int4 RTN, block 32, its defaults (embedding at 8 bits): the weights as an int4 bundle ships them
            from edgeq.core.onnxutil import artifact_from
            from edgeq.quantization import quantize
            from edgeq.quantization.spec import QuantSpec

            path = quantize(artifact_from(path), QuantSpec(mode="int4", algo="rtn", block_size=32), Path(d) / "int4.onnx").artifact.path
        sess = _session(str(path), threads)
        io = sess.io_binding()
        keep = []
        for i in range(layers):
            for pin, pout in ((PAST_KEY % i, PRESENT_KEY % i), (PAST_VALUE % i, PRESENT_VALUE % i)):
                v = ort.OrtValue.ortvalue_from_numpy(rng.standard_normal((1, NKV, maxlen, HD), dtype=np.float32))
                keep.append(v)
                io.bind_ortvalue_input(pin, v)
                io.bind_ortvalue_output(pout, v)
        out = []
        for ctx in contexts:
            io.bind_cpu_input("input_ids", np.array([[5]], np.int64))
            io.bind_cpu_input("attention_mask", np.ones((1, ctx), np.int64))
            io.bind_cpu_input("position_ids", np.array([[ctx - 1]], np.int64))
            io.bind_output("logits")
            out.append(_median_us(lambda: sess.run_with_iobinding(io), reps))
        return out


def gqa_model(quant: str | None) -> bytes:
    from onnx import TensorProto as T
    from onnx import helper

    cache = T.INT8 if quant else T.FLOAT
    attrs = {"num_heads": NH, "kv_num_heads": NKV}
    ins = ["q", "k", "v", "pk", "pv", "sl", "tl"]
    vi = [helper.make_tensor_value_info("q", T.FLOAT, [1, 1, NH * HD]), helper.make_tensor_value_info("k", T.FLOAT, [1, 1, NKV * HD]),
          helper.make_tensor_value_info("v", T.FLOAT, [1, 1, NKV * HD]), helper.make_tensor_value_info("pk", cache, [1, NKV, None, HD]),
          helper.make_tensor_value_info("pv", cache, [1, NKV, None, HD]), helper.make_tensor_value_info("sl", T.INT32, [1]),
          helper.make_tensor_value_info("tl", T.INT32, [])]
    if quant:
        attrs |= {"k_quant_type": quant, "v_quant_type": quant, "kv_cache_bit_width": 8}
        ins += ["", "", "", "", "", "ks", "vs"]
        vi += [helper.make_tensor_value_info("ks", T.FLOAT, None), helper.make_tensor_value_info("vs", T.FLOAT, None)]
    node = helper.make_node("GroupQueryAttention", ins, ["o", "ok", "ov"], domain="com.microsoft", **attrs)
    outs = [helper.make_tensor_value_info("o", T.FLOAT, None), helper.make_tensor_value_info("ok", cache, None),
            helper.make_tensor_value_info("ov", cache, None)]
    m = helper.make_model(helper.make_graph([node], "gqa", vi, outs),
                          opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8
    return m.SerializeToString()


def gqa_steps(contexts: list[int], maxlen: int, reps: int, threads: int) -> dict[str, tuple[list[float], float]]:
    """{cache kind: (step us per context, max relative error of the output at the last context vs fp32)}."""
    import onnxruntime as ort

    rng = np.random.default_rng(1)
    kf = rng.standard_normal((1, NKV, maxlen, HD), dtype=np.float32)
    vf = rng.standard_normal((1, NKV, maxlen, HD), dtype=np.float32)
    q, k, v = (rng.standard_normal((1, 1, n * HD), dtype=np.float32) for n in (NH, NKV, NKV))
    res: dict[str, tuple[list[float], float]] = {}
    ref = None
    for quant in (None, "PER_TENSOR", "PER_CHANNEL"):
        sess = _session(gqa_model(quant), threads)
        if quant is None:
            ks = vs = None
            pk, pv = kf.copy(), vf.copy()
        elif quant == "PER_TENSOR":
            ks, vs = np.array([np.abs(kf).max() / 127], np.float32), np.array([np.abs(vf).max() / 127], np.float32)
        else:
            ks = (np.abs(kf).max(axis=2, keepdims=True) / 127).astype(np.float32)  # [1, nkv, 1, hd]
            vs = (np.abs(vf).max(axis=2, keepdims=True) / 127).astype(np.float32)
        if quant:
            pk = np.clip(np.rint(kf / ks), -127, 127).astype(np.int8)
            pv = np.clip(np.rint(vf / vs), -127, 127).astype(np.int8)
        times, err = [], 0.0
        for ctx in contexts:
            io = sess.io_binding()
            bk, bv = ort.OrtValue.ortvalue_from_numpy(pk.copy()), ort.OrtValue.ortvalue_from_numpy(pv.copy())
            for name, val in (("q", q), ("k", k), ("v", v), ("sl", np.array([ctx - 1], np.int32)), ("tl", np.array(ctx, np.int32))):
                io.bind_cpu_input(name, val)
            if quant:
                io.bind_cpu_input("ks", ks)
                io.bind_cpu_input("vs", vs)
            io.bind_ortvalue_input("pk", bk)
            io.bind_ortvalue_input("pv", bv)
            io.bind_ortvalue_output("ok", bk)
            io.bind_ortvalue_output("ov", bv)
            io.bind_output("o")
            times.append(_median_us(lambda: sess.run_with_iobinding(io), reps))
            sess.run_with_iobinding(io)
            o = io.copy_outputs_to_cpu()[-1]
        if quant is None:
            ref = o
        else:
            err = float(np.abs(o - ref).max() / (np.abs(ref).max() + 1e-12))
        res[quant or "fp32"] = (times, err)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", default="128,1024")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--real-layers", type=int, default=16)
    ap.add_argument("--real-vocab", type=int, default=128256)
    ap.add_argument("--maxlen", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--int4", action="store_true", help="time the decoder with edgeq's int4 RTN weights (MatMulNBits) instead of fp32")
    a = ap.parse_args()
    ctxs = [int(x) for x in a.contexts.split(",")]
    best_d: list[float] | None = None
    best_g: dict[str, tuple[list[float], float]] = {}
    for _ in range(a.rounds):
        d = decoder_steps(a.layers, a.vocab, ctxs, a.maxlen, a.reps, a.threads, a.int4)
        best_d = d if best_d is None else [min(x, y) for x, y in zip(best_d, d)]
        for kind, (t, e) in gqa_steps(ctxs, a.maxlen, a.reps * 5, a.threads).items():
            old = best_g.get(kind, (t, e))[0]
            best_g[kind] = ([min(x, y) for x, y in zip(old, t)], e)
    assert best_d is not None
    print(f"decoder, 1B shape, {a.layers} layers, vocab {a.vocab}, {'int4 RTN' if a.int4 else 'fp32'} weights, 1 step, {a.threads} thread(s)")
    print("| context | " + " | ".join(str(c) for c in ctxs) + f" | growth {ctxs[0]} -> {ctxs[-1]} |")
    print("|---|" + "---:|" * (len(ctxs) + 1))
    print("| step us | " + " | ".join(f"{u:.0f}" for u in best_d) + f" | x{best_d[-1] / best_d[0]:.2f} |")
    # the real model: per-layer and head cost scaled from the first context, the attention growth
    # per layer from GroupQueryAttention alone (the 2-layer step's own growth is below its noise)
    head_share = a.vocab * HIDDEN / (a.vocab * HIDDEN + a.layers * (2 * HIDDEN * NH * HD + 2 * HIDDEN * NKV * HD + 3 * HIDDEN * MLP))
    base = a.real_layers * best_d[0] * (1 - head_share) / a.layers + best_d[0] * head_share * a.real_vocab / a.vocab
    gq = best_g["fp32"][0]
    real = [base + a.real_layers * (u - gq[0]) for u in gq]
    print(f"| {a.real_layers} layers, vocab {a.real_vocab} (estimate: {'int4' if a.int4 else 'fp32'} weights; attention growth from the node alone) | "
          + " | ".join(f"{u:.0f}" for u in real) + f" | x{real[-1] / real[0]:.3f} |")
    print(f"\nGroupQueryAttention alone ({NH} heads, {NKV} KV heads of {HD}), buffers of {a.maxlen}")
    print("| cache | " + " | ".join(f"us @{c}" for c in ctxs) + " | growth | max rel. error vs fp32 |")
    print("|---|" + "---:|" * (len(ctxs) + 2))
    for kind, (t, e) in best_g.items():
        print(f"| {kind} | " + " | ".join(f"{u:.0f}" for u in t) + f" | x{t[-1] / t[0]:.2f} | {e:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
