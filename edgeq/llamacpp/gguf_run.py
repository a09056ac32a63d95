#!/usr/bin/env python3
"""GGUF bundle runner: check the bundle's checksums, then generate text with llama.cpp (llama-cpp-python).

Copied into llama.cpp bundles as ``run.py``; needs only the Python standard library and
``llama-cpp-python``:

    python run.py [BUNDLE] --prompt TEXT [--max-new-tokens N] [--temperature T --top-k K --top-p P --seed S]
                  [--threads N] [--extra-buffer-types auto|on|off] [--json]

Greedy by default (temperature 0); text is printed as it is generated. On hosts with Intel
AMX, llama.cpp's AMX matmul (one of its "extra buffer types") crashed (segfault) on Q8_0/Q4_0
models with llama-cpp-python 0.3.36: ``auto`` (the default) turns extra buffer types off on such
hosts, the way edgeq's own checks load the model; set ``use_extra_bufts = False`` in
``llama_model_default_params`` to do the same in an app.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
import time

MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.sig"
SCHEMA_VERSION = 1
MAX_MANIFEST_BYTES = 16 << 20  # checked with stat before reading
MAX_MANIFEST_DEPTH = 64

# The rules below are edgeq's bundle rules (edgeq/bundles/reader.py and the ONNX bundle's run.py):
# this file ships inside the bundle and cannot import edgeq, so it keeps its own copy of them.


# C0 but newline and tab, DEL, C1 (0x9b is an 8-bit CSI), line/paragraph separators and bidi overrides: the set
# edgeq/core/safetext.py escapes, as generate.py's printable
_UNSAFE = set(range(0x20)) - {0x0A, 0x09} | set(range(0x7F, 0xA0)) | {0x2028, 0x2029} | set(range(0x202A, 0x202F)) | set(range(0x2066, 0x206A))


def _printable(text: str) -> str:
    """Generated text for a terminal: control characters other than newline and tab shown escaped."""
    return "".join((f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}") if ord(c) in _UNSAFE else c for c in text)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_manifest(root: str) -> dict:
    """manifest.json: a regular file (no link, FIFO or device) of bounded size and depth, a JSON object with a file list."""
    path = os.path.join(root, MANIFEST)
    try:
        st = os.lstat(path)
    except OSError:
        raise ValueError(f"no {MANIFEST} in {root}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{MANIFEST} is not a regular file")
    if st.st_size > MAX_MANIFEST_BYTES:
        raise ValueError(f"{MANIFEST} is larger than {MAX_MANIFEST_BYTES >> 20} MiB")
    with open(path, "rb") as f:
        data = f.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:
        raise ValueError(f"{MANIFEST} is larger than {MAX_MANIFEST_BYTES >> 20} MiB")
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"{MANIFEST} is not valid JSON ({str(e)[:120]})") from None
    stack = [(manifest, 1)]
    while stack:
        obj, depth = stack.pop()
        if depth > MAX_MANIFEST_DEPTH:
            raise ValueError(f"{MANIFEST} is nested more than {MAX_MANIFEST_DEPTH} levels deep")
        if isinstance(obj, dict):
            stack.extend((v, depth + 1) for v in obj.values())
        elif isinstance(obj, list):
            stack.extend((v, depth + 1) for v in obj)
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{MANIFEST} has an unsupported schema_version (this runner reads {SCHEMA_VERSION})")
    if not isinstance(manifest.get("files"), dict):
        raise ValueError(f"{MANIFEST} has no file list")
    return manifest


def check_files(root: str) -> dict:
    """The manifest, after every listed file is present, regular and matches its size and sha256, and no other file is present."""
    manifest = _read_manifest(root)
    files = manifest["files"]
    present = set()
    for dirpath, dirnames, names in os.walk(root):
        dirnames.sort()
        for n in names:
            rel = os.path.relpath(os.path.join(dirpath, n), root).replace(os.sep, "/")
            if rel not in (MANIFEST, SIGNATURE):
                present.add(rel)
        for d in dirnames:
            if os.path.islink(os.path.join(dirpath, d)):
                raise ValueError(f"bundle holds a symbolic link: {d}")
    extra = sorted(present - set(files))
    if extra:
        raise ValueError(f"file not in the manifest: {extra[0]}")
    missing = sorted(set(files) - present)
    if missing:
        raise ValueError(f"file missing from the bundle: {missing[0]}")
    for rel, info in sorted(files.items()):
        full = os.path.join(root, rel)
        if os.path.islink(full) or not os.path.isfile(full):
            raise ValueError(f"not a regular file: {rel}")
        if not isinstance(info, dict) or os.path.getsize(full) != info.get("bytes") or _sha256(full) != info.get("sha256"):
            raise ValueError(f"checksum mismatch: {rel}")
    return manifest


def _shown(text) -> str:
    """Text from the bundle on one line: characters that are not printable (ESC, newlines, bidi) as '?'."""
    return "".join(c if c.isprintable() else "?" for c in str(text))[:500]


def _count(v, what: str) -> int:
    """A count from the manifest: a plain positive integer (not a bool, string or object)."""
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{MANIFEST} {what} is not a positive integer")
    return v


def host_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo", errors="replace") as f:
            flags = f.read()
    except OSError:
        return False
    return " amx_int8" in flags or " amx_tile" in flags


def load(model_path: str, *, n_ctx: int, threads: int, seed: int, extra_buffer_types: str = "auto"):
    import llama_cpp
    import llama_cpp.llama_cpp as lc

    use_extra = extra_buffer_types == "on" or (extra_buffer_types == "auto" and not host_has_amx())
    orig = lc.llama_model_default_params
    if not use_extra:
        def params():
            p = orig()
            p.use_extra_bufts = False  # llama-cpp-python has no argument for it: the defaults are wrapped while loading
            return p

        lc.llama_model_default_params = params
    try:
        llm = llama_cpp.Llama(model_path=model_path, n_ctx=n_ctx, n_threads=threads or None, n_threads_batch=threads or None,
                              seed=seed, verbose=False)  # --threads holds for the prompt too (batch threads default to every core)
    finally:
        lc.llama_model_default_params = orig
    return llm, use_extra


def main(argv: list | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Generate text with an edgeq llama.cpp bundle.")
    ap.add_argument("bundle", nargs="?", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    ap.add_argument("--top-k", type=int, default=40)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--ctx", type=int, default=0, help="context tokens (default: the target's, from the manifest)")
    ap.add_argument("--extra-buffer-types", choices=("auto", "on", "off"), default="auto",
                    help="llama.cpp's extra buffer types (AMX, repacking); auto: off on AMX hosts")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        manifest = check_files(args.bundle)
        gguf = (manifest.get("model") or {}).get("gguf") or "model.gguf"
        if not isinstance(gguf, str) or gguf not in manifest["files"]:  # only a checksummed file is loaded
            raise ValueError(f"{MANIFEST} names a file that is not in its file list: {str(gguf)[:80]}")
        trained = ctx = _count((manifest.get("model") or {}).get("params", {}).get("context_length") or 2048, "model.params.context_length")
        ctx = args.ctx or _count((manifest.get("model") or {}).get("context") or ctx, "model.context")  # not the training context (131k: GiBs of KV cache)
    except (ValueError, OSError, AttributeError, TypeError) as e:  # AttributeError, TypeError: right keys, wrong shapes
        print(f"FAIL bundle corrupt: {_shown(e)}", file=sys.stderr)
        return 2
    sys.dont_write_bytecode = True
    model = os.path.join(args.bundle, gguf)
    try:
        llm, extra = load(model, n_ctx=ctx, threads=args.threads, seed=args.seed, extra_buffer_types=args.extra_buffer_types)
    except (ValueError, RuntimeError) as e:  # llama-cpp-python: "Failed to load model from file", "Failed to create llama_context"
        print(f"FAIL llama.cpp cannot load {_shown(gguf)}: {_shown((str(e).splitlines() or [type(e).__name__])[0])}", file=sys.stderr)
        return 2
    add_bos = llm.metadata.get("tokenizer.ggml.add_bos_token") == "true"
    prompt = llm.tokenize(args.prompt.encode("utf-8"), add_bos=add_bos, special=False)
    if len(prompt) > ctx:  # llama-cpp-python fails deep inside eval with a numpy broadcast error
        print(f"error: the prompt is {len(prompt)} tokens, longer than the context of {ctx} tokens: shorten the prompt"
              + (f" (or pass --ctx up to the model's {trained})" if ctx < trained else ""), file=sys.stderr)
        return 2
    llm.set_seed(args.seed)
    t0 = time.perf_counter()
    first, out, shown, stop = None, [], "", "max_new_tokens"
    for tok in llm.generate(prompt, temp=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=0.0, repeat_penalty=1.0, reset=True):
        if first is None:
            first = time.perf_counter() - t0
        if tok == llm.token_eos():
            stop = "eos"
            break
        out.append(int(tok))
        if not args.json:
            text = llm.detokenize(out).decode("utf-8", errors="replace")
            if not text.endswith("\ufffd"):  # wait for the rest of a UTF-8 sequence
                new = text[len(shown):] if text.startswith(shown) else text
                sys.stdout.write(_printable(new))
                sys.stdout.flush()
                shown = text
        if len(out) >= args.max_new_tokens or len(prompt) + len(out) >= ctx:
            stop = "max_new_tokens" if len(out) >= args.max_new_tokens else "context"
            break
    res = {"tokens": out, "text": llm.detokenize(out).decode("utf-8", errors="replace"), "stop": stop, "ttft_s": first,
           "extra_buffer_types": extra, "seconds": time.perf_counter() - t0}
    if args.json:
        print(json.dumps(res, indent=2, sort_keys=True))
    else:
        print(file=sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
