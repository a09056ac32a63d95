#!/usr/bin/env python3
"""Text generation with an edgeq KV-cache decoder bundle: numpy + onnxruntime + tokenizers only.

Copied into LLM bundles as ``generate.py``; ``python run.py --prompt "..."`` hands over to it
after the bundle's checksums are checked, and ``edgeq generate BUNDLE`` uses the same code.

    python run.py [BUNDLE] --prompt TEXT [--max-new-tokens N] [--temperature T --top-k K --top-p P --seed S]

Greedy by default; ``--temperature`` > 0 samples (after top-k, then top-p), seeded. Stops at
an end-of-sequence token, at ``--max-new-tokens`` or at the model's context length. Text is
printed as it is generated. One prefill over the prompt, then one token per step through the
past/present key-value cache.
"""

from __future__ import annotations

import json
import os
import sys
import time

MAX_JSON_BYTES = 64 << 20
CONFIG = "genai_config.json"
TOKENIZER = "tokenizer.json"
PREFILL = "prefill.onnx"  # static decoders: the prompt's graph beside model.onnx, sharing its weights file
STATIC_HOST = "static_decoder.py"  # static decoders: the host side of the fixed-slot cache, shipped beside this file
LONGROPE_SWITCH = "edgeq_longrope_switch"  # model metadata: LongRoPE's original_max_position_embeddings


def _static_host():
    """The fixed-slot host code: edgeq's own module (edgeq generate, profile); inside a bundle its copy beside this
    file, listed and checksummed in the manifest like generate.py (run.py checks the files before this runs)."""
    try:
        from ..exporters import static_decoder
    except ImportError:  # generate.py inside a bundle: no package around it
        import importlib.util

        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), STATIC_HOST)
        if os.path.islink(path) or not os.path.isfile(path):
            raise FileNotFoundError(f"{STATIC_HOST} not found beside generate.py: the bundle's static decoder needs it") from None
        spec = importlib.util.spec_from_file_location("edgeq_bundle_static_decoder", path)
        static_decoder = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(static_decoder)
    return static_decoder


class PromptError(ValueError):
    """The prompt cannot be generated from (empty once encoded, or longer than the model's context): the caller's input."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.fix = fix


def _read_json(path: str) -> dict:
    if os.path.islink(path) or not os.path.isfile(path):
        raise FileNotFoundError(f"{os.path.basename(path)} not found in the bundle")
    if os.path.getsize(path) > MAX_JSON_BYTES:
        raise ValueError(f"{os.path.basename(path)} is larger than {MAX_JSON_BYTES >> 20} MiB")
    with open(path, "rb") as f:
        try:
            data = json.loads(f.read().decode("utf-8"))
        except RecursionError:
            raise ValueError(f"{os.path.basename(path)} is nested too deeply") from None
    if not isinstance(data, dict):
        raise ValueError(f"{os.path.basename(path)} is not a JSON object")
    return data


def _positive_int(v, what: str) -> int:
    """A count from the bundle's files: a plain positive integer (not a bool, string or object), else ValueError."""
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{what} is not a positive integer")
    return v


def _onnxruntime_error(e: Exception) -> bool:
    """onnxruntime refused the bundle's model or its inputs (its errors are plain Exception subclasses)."""
    return type(e).__module__.startswith("onnxruntime")


def _session(path: str, so, providers):
    import onnxruntime as ort

    try:
        return ort.InferenceSession(path, sess_options=so, providers=providers or ["CPUExecutionProvider"])
    except Exception as e:
        if not _onnxruntime_error(e):
            raise
        raise ValueError(f"onnxruntime cannot open {os.path.basename(path)}: {(str(e).splitlines() or [type(e).__name__])[0][:200]}") from None


def _ints(v) -> list:
    if isinstance(v, bool):
        return []
    if isinstance(v, int):
        return [v]
    return [x for x in v if isinstance(x, int) and not isinstance(x, bool)] if isinstance(v, list) else []


class Decoder:
    """One onnxruntime session over the bundle's decoder, with the cache fed back between steps."""

    def __init__(self, root: str, *, model: str = "onnx", providers: list | None = None, threads: int = 0) -> None:
        import onnxruntime as ort

        full = _read_json(os.path.join(root, CONFIG))
        cfg = full.get("model")
        if not isinstance(cfg, dict):
            raise ValueError(f"{CONFIG} has no 'model' object")
        search = full.get("search") if isinstance(full.get("search"), dict) else {}
        self.share = search.get("past_present_share_buffer") is True  # GroupQueryAttention writes into the past buffer
        self.eos = set(_ints(cfg.get("eos_token_id")))
        self.context = _positive_int(cfg.get("context_length", 2048), f"{CONFIG}'s model.context_length")
        name = "model.ort" if model == "ort" and os.path.isfile(os.path.join(root, "model.ort")) else "model.onnx"
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = threads
        self.session = _session(os.path.join(root, name), so, providers)
        self.inputs = [i for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.past = [i for i in self.inputs if i.name.startswith("past_key_values.")]
        # --kv-cache int8 (exporters/kvcache.py): the cache's element type is the graph's; zeros are zeros in either
        self.kv_int8 = bool(self.past) and self.past[0].type == "tensor(int8)"
        self.cache_dtype = "int8" if self.kv_int8 else "float32"  # numpy's name for the cache's element type
        if not self.past or "logits" not in self.outputs or "input_ids" not in [i.name for i in self.inputs]:
            raise ValueError("the bundle's model is not a KV-cache decoder (no past_key_values inputs)")
        for i in self.past:  # [batch, kv heads, positions, head size]: heads and head size fixed
            if len(i.shape) != 4 or not all(isinstance(d, int) and d > 0 for d in (i.shape[1], i.shape[3])):
                raise ValueError(f"the bundle's model is not a KV-cache decoder ({i.name[:80]} has no fixed heads and head size)")
        switch = self.session.get_modelmeta().custom_metadata_map.get(LONGROPE_SWITCH, "")
        # LongRoPE: where the frequencies switch to the long factors (0: none); generate re-runs the sequence there
        self.rope_switch = int(switch) if switch.isdigit() and len(switch) < 10 else 0
        ids_shape = self.inputs[[i.name for i in self.inputs].index("input_ids")].shape
        # static decoder (NPU targets): fixed chunk of tokens per run, cache of fixed slots (slot = position)
        self.chunk = int(ids_shape[1]) if all(isinstance(d, int) for d in ids_shape) else 0
        self.prefill = None
        if self.chunk:
            self.context = _positive_int(self.past[0].shape[2], "the static decoder's cache length")
            self.static = _static_host()
            pre = os.path.join(root, PREFILL)
            if os.path.isfile(pre) and not os.path.islink(pre):  # the prompt's graph: the same weights, a chunk of tokens per run
                self.prefill = _session(pre, so, providers)

    @property
    def prefill_chunk(self) -> int:
        """Tokens per run of the prefill graph (static decoders with prefill.onnx), else 0."""
        if self.prefill is None:
            return 0
        return int(next(i for i in self.prefill.get_inputs() if i.name == "input_ids").shape[1])

    def kv_bytes_per_token(self) -> int:
        return sum(int(i.shape[1]) * int(i.shape[3]) * (1 if self.kv_int8 else 4) for i in self.past)

    def step(self, ids, past: dict | None, total: int):
        """Logits of the last position and the new cache for ``ids`` [1, S] after ``total - S`` cached tokens."""
        import numpy as np

        s = ids.shape[1]
        if self.chunk:
            return self._static_step(ids, past, total)
        if self.share:
            return self._shared_step(ids, past, total)
        feed = {"input_ids": ids, "attention_mask": np.ones((1, total), np.int64),
                "position_ids": np.arange(total - s, total, dtype=np.int64)[None]}
        for i in self.past:
            feed[i.name] = past[i.name] if past else np.zeros((1, int(i.shape[1]), 0, int(i.shape[3])), self.cache_dtype)
        res = dict(zip(self.outputs, self.session.run(None, feed)))
        cache = {i.name: res[i.name.replace("past_key_values.", "present.")] for i in self.past}
        return res["logits"][0, -1], cache

    def _shared_step(self, ids, cache: dict | None, total: int):
        """``step`` as onnxruntime-genai runs a decoder with ``past_present_share_buffer``: one buffer per past/present
        pair, bound to both (IOBinding), that GroupQueryAttention extends in place (reallocated with its contents,
        doubling up to the context, when a step needs more positions than it has). Fed back as
        numpy, each step copied the whole cache into new present tensors: 5.3 ms instead of 2.1 ms per token at
        1,024 tokens on a hidden-1,024, 3-layer model (1.4 ms at 128 either way), a cost that grew with the context."""
        import numpy as np
        import onnxruntime as ort

        have = 0 if cache is None else cache[self.past[0].name][0].shape[2]
        if total > have:  # buffers sized as needed (doubling, at most the context): a 131k-token model allocates no GiBs
            size = min(self.context, max(total, 2 * have, 256))
            io = self.session.io_binding()
            new = {"": (None, io)}
            for i in self.past:
                buf = np.zeros((1, int(i.shape[1]), size, int(i.shape[3])), self.cache_dtype)
                if have:
                    buf[:, :, :have] = cache[i.name][0]
                val = ort.OrtValue.ortvalue_from_numpy(buf)  # the array stays referenced with its OrtValue
                new[i.name] = (buf, val)
                io.bind_ortvalue_input(i.name, val)
                io.bind_ortvalue_output(i.name.replace("past_key_values.", "present."), val)
            cache = new
        io = cache[""][1]
        s = ids.shape[1]
        io.bind_cpu_input("input_ids", np.ascontiguousarray(ids, np.int64))
        io.bind_cpu_input("attention_mask", np.ones((1, total), np.int64))
        io.bind_cpu_input("position_ids", np.arange(total - s, total, dtype=np.int64)[None])
        io.bind_output("logits")
        self.session.run_with_iobinding(io)
        logits = next(v for v in io.get_outputs() if len(v.shape()) == 3)  # [1, S, vocab]; the bound buffers are 4-D
        return logits.numpy()[0, -1], cache  # only the logits are copied out

    def _static_step(self, ids, cache, total: int):
        """``step`` for the static decoder: the prompt through the prefill graph (chunks of its size), single tokens
        through the step graph; ``cache`` is the host's fixed-slot cache (exporters/static_decoder.py, shipped beside)."""
        if total > self.context:
            raise ValueError(f"{total} tokens do not fit the decoder's {self.context} cache slots")
        cache = cache or self.static.StaticCache(self.session)
        if cache.length + ids.shape[1] != total:
            raise ValueError(f"{ids.shape[1]} new tokens after {cache.length} cached do not make {total}")
        graph = self.prefill if self.prefill is not None and ids.shape[1] > 1 else self.session
        return cache.extend(graph, ids[0])[-1], cache


def choose(logits, rng, *, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0) -> int:
    """Greedy when temperature is 0; else sample from the softmax after top-k then top-p (nucleus) filtering."""
    import numpy as np

    logits = np.asarray(logits, np.float64)
    if temperature <= 0:
        return int(np.argmax(logits))
    x = logits / temperature
    order = np.argsort(-x, kind="stable")
    if top_k > 0:
        order = order[:top_k]
    p = np.exp(x[order] - x[order].max())
    p /= p.sum()
    if top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(p), top_p) + 1)
        order, p = order[:keep], p[:keep] / p[:keep].sum()
    return int(order[rng.choice(len(order), p=p)])


def generate(dec: Decoder, prompt_ids: list, *, max_new_tokens: int = 64, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, seed: int = 0, on_token=None) -> dict:
    """New token ids (EOS not included) and timings: time to first token, decode tokens/s."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = np.asarray([prompt_ids], np.int64)
    t0 = time.perf_counter()
    logits, cache = dec.step(ids, None, ids.shape[1])
    total, out, stop = ids.shape[1], [], "max_new_tokens"
    ttft = decode_s = 0.0
    while len(out) < max_new_tokens:
        tok = choose(logits, rng, temperature=temperature, top_k=top_k, top_p=top_p)
        if not out:
            ttft = time.perf_counter() - t0
        if tok in dec.eos:
            stop = "eos"
            break
        out.append(tok)
        if on_token is not None:
            on_token(tok)
        if len(out) >= max_new_tokens:
            break
        if total >= dec.context:
            stop = "context"
            break
        t1 = time.perf_counter()
        if total == getattr(dec, "rope_switch", 0):  # LongRoPE: the cached keys used the short factors; as transformers'
            # generate does, the whole sequence goes through again with the long ones (once, at the switch)
            logits, cache = dec.step(np.asarray([list(prompt_ids) + out], np.int64), None, total + 1)
        else:
            logits, cache = dec.step(np.asarray([[tok]], np.int64), cache, total + 1)
        decode_s += time.perf_counter() - t1
        total += 1
    steps = max(len(out) - 1, 0)
    return {"tokens": out, "stop": stop, "prompt_tokens": len(prompt_ids), "ttft_s": ttft,
            "decode_tokens_per_s": steps / decode_s if decode_s > 0 else None}


def load_tokenizer(root: str):
    from tokenizers import Tokenizer

    path = os.path.join(root, TOKENIZER)
    if os.path.islink(path) or not os.path.isfile(path):
        raise FileNotFoundError("tokenizer.json not found in the bundle: export from a folder saved with its tokenizer")
    if os.path.getsize(path) > MAX_JSON_BYTES:
        raise ValueError(f"tokenizer.json is larger than {MAX_JSON_BYTES >> 20} MiB")
    try:
        return Tokenizer.from_file(path)
    except Exception as e:  # the tokenizers package raises plain Exceptions for a file it cannot read
        raise ValueError(f"tokenizer.json is not a tokenizer the tokenizers package reads: {(str(e).splitlines() or [type(e).__name__])[0][:200]}") from None


# C0 but newline and tab, DEL, C1 (0x9b is an 8-bit CSI), line/paragraph separators and bidi overrides: the set
# edgeq/core/safetext.py escapes (this file ships inside bundles and cannot import edgeq)
_UNSAFE = set(range(0x20)) - {0x0A, 0x09} | set(range(0x7F, 0xA0)) | {0x2028, 0x2029} | set(range(0x202A, 0x202F)) | set(range(0x2066, 0x206A))


def printable(text: str) -> str:
    """Model output for a terminal: control characters other than newline and tab shown escaped."""
    return "".join((f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}") if ord(c) in _UNSAFE else c for c in text)


def one_line(text) -> str:
    """Text from the bundle for an error line: ``printable`` with newlines and tabs escaped too, at most 500 characters."""
    return printable(str(text)).replace("\n", "\\x0a").replace("\t", "\\x09")[:500]


class TextStream:
    """Prints decoded text as tokens arrive (decodes the whole answer each time: byte-level pieces join up)."""

    def __init__(self, tok, out=None) -> None:
        self.tok, self.ids, self.shown, self.out = tok, [], "", out or sys.stdout

    def __call__(self, token: int) -> None:
        self.ids.append(token)
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd"):
            return  # an incomplete UTF-8 sequence: wait for the next token
        new = text[len(self.shown):] if text.startswith(self.shown) else text
        self.out.write(printable(new))
        self.out.flush()
        self.shown = text


def add_arguments(ap) -> None:
    ap.add_argument("--prompt", required=True, help="text to continue")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); > 0 samples")
    ap.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0: all)")
    ap.add_argument("--top-p", type=float, default=1.0, help="sample within this cumulative probability")
    ap.add_argument("--seed", type=int, default=0)


def run(root: str, args, *, model: str = "onnx", providers: list | None = None, threads: int = 0, as_json: bool = False, out=None) -> dict:
    out = out or sys.stdout
    tok = load_tokenizer(root)
    dec = Decoder(root, model=model, providers=providers, threads=threads)
    ids = tok.encode(args.prompt).ids
    if not ids:
        raise PromptError("the prompt encodes to no tokens", "give a non-empty --prompt")
    if len(ids) > dec.context:  # checked before anything is printed or run: the decoder's position tables end there
        raise PromptError(f"the prompt is {len(ids)} tokens, longer than the model's context of {dec.context} tokens",
                          "shorten the prompt")
    stream = None if as_json else TextStream(tok, out)
    if stream is not None:
        out.write(args.prompt)
        out.flush()
    try:
        res = generate(dec, ids, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                       top_p=args.top_p, seed=args.seed, on_token=stream)
    except Exception as e:
        if not _onnxruntime_error(e):
            raise
        raise ValueError(f"onnxruntime cannot run the bundle's model: {(str(e).splitlines() or [type(e).__name__])[0][:200]}") from None
    res["text"] = tok.decode(res["tokens"])
    if dec.chunk:  # static decoder: how the prompt ran (prefill graph chunk, or 0: one token per run)
        res["prefill_chunk"] = dec.prefill_chunk
    if stream is not None:
        out.write("\n")
        out.flush()  # before the summary line on stderr
    return res


def main(argv: list | None = None, root: str | None = None, check=None) -> int:
    """``check(bundle)`` (run.py passes its checksum check) runs before anything is loaded."""
    import argparse

    ap = argparse.ArgumentParser(description="Generate text with an edgeq LLM bundle.")
    ap.add_argument("bundle", nargs="?", default=root or os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--model", choices=("ort", "onnx"), default="onnx")
    ap.add_argument("--providers", default="", help="comma-separated onnxruntime providers")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    add_arguments(ap)
    args = ap.parse_args(argv)
    if check is not None:
        check(args.bundle)
    providers = [p for p in args.providers.split(",") if p] or None
    try:
        res = run(args.bundle, args, model=args.model, providers=providers, threads=args.threads, as_json=args.json)
    except PromptError as e:
        print(f"error: {one_line(e)}: {e.fix}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as e:  # no tokenizer.json, not a KV-cache decoder: one line, not a traceback
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(res, indent=2, sort_keys=True))
    else:
        tps = res["decode_tokens_per_s"]
        print(f"{len(res['tokens'])} tokens (stop: {res['stop']}), time to first token {res['ttft_s'] * 1e3:.1f} ms"
              + (f", {tps:.1f} tokens/s" if tps else ""), file=sys.stderr)
    return 0


def _standalone() -> int:
    """``python generate.py`` inside a bundle: the sibling run.py's checks (the bundle's rules: file list, sizes,
    sha256) run before anything is loaded, as they do for ``python run.py --prompt``."""
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "run.py")
    if not os.path.isfile(path):
        print("FAIL no run.py beside generate.py: run it from inside an edgeq bundle", file=sys.stderr)
        return 2
    sys.dont_write_bytecode = True  # no __pycache__ inside the bundle
    spec = importlib.util.spec_from_file_location("edgeq_bundle_run", path)
    run_py = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_py)
    try:
        run_py.check_files(here, run_py.load_manifest(here))  # run.py and generate.py are checksummed too
        return main(root=here, check=lambda root: run_py.check_files(root, run_py.load_manifest(root)))
    except run_py.BundleCorrupt as e:
        print(f"FAIL bundle corrupt: {one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_standalone())
