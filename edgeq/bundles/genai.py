"""The files onnxruntime-genai needs beside a KV-cache decoder, and its greedy check.

``onnxruntime_genai.Model(BUNDLE)`` reads ``genai_config.json`` (model type, decoder file,
input/output names, heads, special tokens, search defaults) and the Hugging Face tokenizer
files (``tokenizer.json``, ``tokenizer_config.json``; the chat template when the folder has
one). edgeq writes the first from the folder's config and copies the others as bytes
(regular files only, bounded in size); nothing in them is executed here.

``greedy_check`` runs onnxruntime-genai on the written bundle and transformers' greedy
``generate`` on the folder for the same prompts and compares the new tokens.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelError
from .llmgen import PREFILL, STATIC_HOST

CONFIG = "genai_config.json"
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
    "chat_template.jinja", "chat_template.json",
)
MAX_FILE_BYTES = 64 << 20


def _read_small(path: Path) -> bytes | None:
    if path.is_symlink() or not path.is_file():
        return None
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ModelError(f"{path.name} in {path.parent.name} is larger than {MAX_FILE_BYTES >> 20} MiB", "this is not a tokenizer file")
    return path.read_bytes()


def _json(data: bytes | None) -> dict[str, Any]:
    if not data:
        return {}
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _ids(v: Any) -> Any:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, list) and v and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        return v if len(v) > 1 else v[0]
    return None


def genai_config(arch: Any, gen: dict[str, Any], filename: str = "model.onnx", *, share_buffer: bool = False) -> dict[str, Any]:
    """onnxruntime-genai's config for the decoder edgeq built.

    ``share_buffer``: the decoder's attention is GroupQueryAttention, which writes the new keys and
    values into a past buffer of the maximum length in place; onnxruntime-genai then keeps one
    static cache per layer instead of copying the whole cache into a new present tensor every token
    (that copy grows with the context). Plain attention ops concatenate, so they never share.
    """
    from ..exporters.decoder import PAST_KEY, PAST_VALUE, PRESENT_KEY, PRESENT_VALUE

    eos = _ids(gen.get("eos_token_id")) if gen.get("eos_token_id") is not None else _ids(arch.eos)
    bos = _ids(gen.get("bos_token_id")) if gen.get("bos_token_id") is not None else _ids(arch.bos)
    pad = _ids(gen.get("pad_token_id")) if gen.get("pad_token_id") is not None else _ids(arch.pad)
    if pad is None:
        pad = eos[0] if isinstance(eos, list) else eos
    return {
        "model": {
            "bos_token_id": bos if bos is not None else 0,
            "context_length": arch.context,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": filename,
                "head_size": arch.head_dim,
                "hidden_size": arch.hidden,
                "inputs": {
                    "input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                    "past_key_names": PAST_KEY, "past_value_names": PAST_VALUE,
                },
                "outputs": {"logits": "logits", "present_key_names": PRESENT_KEY, "present_value_names": PRESENT_VALUE},
                "num_attention_heads": arch.heads,
                "num_hidden_layers": arch.layers,
                "num_key_value_heads": arch.kv_heads,
            },
            "eos_token_id": eos if eos is not None else 0,
            "pad_token_id": pad if pad is not None else 0,
            "type": arch.model_type,
            "vocab_size": arch.vocab,
        },
        "search": {
            "diversity_penalty": 0.0, "do_sample": False, "early_stopping": True, "length_penalty": 1.0,
            "max_length": arch.context, "min_length": 0, "no_repeat_ngram_size": 0, "num_beams": 1,
            "num_return_sequences": 1, "past_present_share_buffer": bool(share_buffer), "repetition_penalty": 1.0,
            "temperature": 1.0, "top_k": 1, "top_p": 1.0,
        },
    }


def _graph(model: Path) -> Any:
    """The decoder's graph, read without its weights' external data (core/onnxutil.load_model's checks)."""
    from ..core.onnxutil import load_model

    return load_model(Path(model), load_weights=False).graph


def _has_gqa(graph: Any) -> bool:
    """Whether a decoder can share past and present buffers: its attention is GroupQueryAttention."""
    from ..core.onnxutil import iter_nodes

    return any(n.op_type == "GroupQueryAttention" and n.domain == "com.microsoft" for n in iter_nodes(graph))


def _fixed_ids(graph: Any) -> bool:
    """True when the graph's ``input_ids`` has a fixed length (the static decoder of NPU targets)."""
    ids = next((i for i in graph.input if i.name == "input_ids"), None)
    return ids is not None and all(d.HasField("dim_value") for d in ids.type.tensor_type.shape.dim)


def bundle_files(folder: Path, model: Path | None = None) -> tuple[tuple[tuple[str, bytes], ...], list[str]]:
    """(name, bytes) of genai_config.json and the tokenizer files for a Hugging Face folder, and notes.

    ``model``: the decoder written for it; with GroupQueryAttention the config shares the KV buffers.
    """
    from ..exporters.decoder import arch_from_config

    folder = Path(folder)
    config = _json(_read_small(folder / "config.json"))
    try:
        arch = arch_from_config(config)
    except (TypeError, ValueError, OverflowError, ZeroDivisionError) as e:  # config.json is data: a number that is not one
        raise ModelError(f"config.json of {folder.name} holds a value the KV-cache builder cannot use ({str(e)[:120]})",
                         "fix config.json (numbers where transformers writes numbers)") from None
    if not 0 < arch.context < 1 << 31:  # onnxruntime-genai reads context_length as an int32
        raise ModelError(f"config.json of {folder.name}: max_position_embeddings {arch.context} is outside 1..{(1 << 31) - 1}",
                         "fix config.json")
    files: list[tuple[str, bytes]] = []
    for name in TOKENIZER_FILES:
        data = _read_small(folder / name)
        if data is not None:
            files.append((name, data))
    gen = _json(dict(files).get("generation_config.json"))
    graph = _graph(model) if model is not None else None  # read once: shared buffers and the static form
    share = graph is not None and _has_gqa(graph)
    cfg = genai_config(arch, gen, share_buffer=share)
    files.insert(0, (CONFIG, (json.dumps(cfg, indent=2, sort_keys=True) + "\n").encode("utf-8")))
    names = [n for n, _ in files]
    notes = [f"onnxruntime-genai: {', '.join(names)} written beside model.onnx"]
    if graph is not None and _fixed_ids(graph):
        from ..exporters import static_decoder

        files.append((STATIC_HOST, Path(static_decoder.__file__).read_bytes()))  # generate.py's host side of the fixed slots
        notes.append("static-shape decoder (fixed cache slots): onnxruntime-genai cannot run it; the bundle's run.py and "
                     "edgeq generate do (genai_config.json is kept for its model facts: context, EOS, vocabulary)")
        notes.append(f"static decoder: {PREFILL} (the prompt, a chunk of tokens per run) beside model.onnx (one token per run), "
                     f"both reading the weights from one model.onnx.data; {STATIC_HOST} computes their attention bias, rotary rows "
                     f"and cache writes on the host")
    if share:
        notes.append("onnxruntime-genai: past/present KV buffers shared (GroupQueryAttention updates a max-length cache in place)")
    if "tokenizer.json" not in names:
        notes.append(f"WARNING: {folder.name} has no tokenizer.json: onnxruntime-genai and run.py --prompt need one (save the tokenizer with save_pretrained)")
    has_template = "chat_template.jinja" in names or "chat_template.json" in names or "chat_template" in _json(dict(files).get("tokenizer_config.json"))
    if has_template:
        notes.append("chat template shipped with the tokenizer files")
    return tuple(files), notes


@dataclass(frozen=True)
class GreedyCheck:
    prompts: int
    new_tokens: int
    agreement: float  # share of compared positions where both runtimes chose the same token
    identical: int  # prompts whose new tokens are identical
    first_divergence: int | None  # smallest index (in new tokens) where any prompt diverged (ties excluded)
    min_agreement: float
    passed: bool
    runtime: str
    ties: int = 0  # prompts that split where transformers' top two logits were within tie_atol (compared up to there)
    tie_atol: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        div = "none" if self.first_divergence is None else f"at new token {self.first_divergence}"
        tie = f", {self.ties} split at a tie (top-2 logits within {self.tie_atol:g})" if self.ties else ""
        return (f"{self.runtime} greedy vs transformers generate: {self.identical}/{self.prompts} prompts identical over "
                f"{self.new_tokens} new tokens{tie}, agreement {self.agreement:.1%} (min {self.min_agreement:.0%}), first divergence {div}")


def longrope_switch(model: Path) -> int:
    """The decoder's LongRoPE switch (``original_max_position_embeddings``, from its metadata), or 0."""
    from ..core.onnxutil import load_model
    from .llmgen import LONGROPE_SWITCH

    props = {p.key: p.value for p in load_model(model, load_weights=False).metadata_props}
    v = props.get(LONGROPE_SWITCH, "")
    return int(v) if v.isdigit() and len(v) < 10 else 0


def _genai_greedy(bundle: Path, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """onnxruntime-genai's greedy tokens. A LongRoPE decoder's cache holds keys rotated with the short factors; when
    a generation crosses the switch, transformers' generate drops its cache and runs the whole sequence again with
    the long ones (Phi-3's ``prepare_inputs_for_generation``). onnxruntime-genai's loop keeps its cache, so here the
    generator is rewound and given the whole sequence at that step, as bundles/llmgen.py does: the tokens compared
    across the switch are the decoder's, not a difference of the two loops."""
    import onnxruntime_genai as og

    switch = longrope_switch(Path(bundle) / "model.onnx")
    model = og.Model(str(bundle))
    out = []
    for ids in prompts:
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(ids) + new_tokens)
        gen = og.Generator(model, params)
        gen.append_tokens(ids)
        while not gen.is_done():
            gen.generate_next_token()  # picks a token from the last logits; the model reads it at the next call
            if switch and len(ids) <= switch and gen.token_count() == switch + 1 and not gen.is_done():
                seq = [int(t) for t in gen.get_sequence(0)]
                gen.rewind_to(0)
                gen.append_tokens(seq)  # the whole sequence, switch + 1 tokens: the long factors
        out.append([int(t) for t in gen.get_sequence(0)][len(ids):])
    return out


def hf_greedy(model: Any, prompts: list[list[int]], new_tokens: int, *, margins: list | None = None) -> list[list[int]]:
    """transformers' greedy ``generate``; ``margins`` (when given) receives each step's top-1 minus top-2 logit."""
    import torch

    out = []
    with torch.no_grad():
        for ids in prompts:
            x = torch.tensor([ids], dtype=torch.long)
            y = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens, do_sample=False, use_cache=True,
                               output_logits=True, return_dict_in_generate=True)
            out.append([int(t) for t in y.sequences[0, len(ids):]])
            if margins is not None:
                top = [torch.topk(lg[0].double(), 2).values for lg in y.logits]
                margins.append([float(t[0] - t[1]) for t in top])
    return out


def compare_tokens(ref: list[list[int]], got: list[list[int]], new_tokens: int, min_agreement: float, runtime: str,
                   *, margins: list[list[float]] | None = None, tie_atol: float = 0.0) -> GreedyCheck:
    """Token agreement; a split where the reference's top two logits were within ``tie_atol`` is a tie:
    that prompt is compared up to the split only (after it the two runs continue different texts)."""
    same = total = identical = ties = 0
    first = None
    for k, (r, g) in enumerate(zip(ref, got)):
        n = max(len(r), len(g))
        div = next((i for i in range(n) if i >= len(r) or i >= len(g) or r[i] != g[i]), None)
        m = margins[k] if margins is not None and k < len(margins) else []
        if div is not None and div < len(r) and div < len(m) and m[div] <= tie_atol:
            ties += 1
            same += div
            total += div
            continue
        identical += div is None
        if div is not None:
            first = div if first is None else min(first, div)
        same += sum(1 for a, b in zip(r, g) if a == b)
        total += n
    agreement = same / total if total else 1.0
    return GreedyCheck(prompts=len(ref), new_tokens=new_tokens, agreement=agreement, identical=identical, first_divergence=first,
                       min_agreement=min_agreement, passed=agreement >= min_agreement, runtime=runtime, ties=ties, tie_atol=tie_atol)


def prompt_ids(folder: Path, texts: list[str], vocab: int) -> list[list[int]]:
    """Token ids of ``texts`` with the folder's tokenizer.json (the tokenizers package; no code from the folder)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
    return [[i for i in tok.encode(t).ids if i < vocab] or [0] for t in texts]


def _until_eos(seqs: list[list[int]], eos: set[int]) -> list[list[int]]:
    """Tokens before the first end-of-sequence token (onnxruntime-genai does not return it; transformers does)."""
    return [s[: next((i for i, t in enumerate(s) if t in eos), len(s))] for s in seqs]


def eos_ids(model: Any) -> set[int]:
    cfg = getattr(model, "generation_config", None) or model.config
    e = getattr(cfg, "eos_token_id", None)
    return set(e if isinstance(e, list) else [] if e is None else [e])


def stage_for_genai(model: Path, files: tuple[tuple[str, bytes], ...], folder: Path, *, prefill_chunk: int = 0) -> Path:
    """``folder`` laid out as the bundle will be for onnxruntime-genai: the decoder as model.onnx (its
    external data beside it) and the genai/tokenizer files, so the greedy check runs before the
    manifest is written and its result is part of the verdict."""
    from ..core.onnxutil import copy_model

    folder.mkdir(parents=True, exist_ok=True)
    copy_model(model, folder / "model.onnx")
    if _fixed_ids(_graph(folder / "model.onnx")):  # static decoder: its prefill graph beside it, as the bundle ships it
        from ..exporters.static_prefill import write_prefill

        write_prefill(folder / "model.onnx", folder / PREFILL, prefill_chunk)
    for name, data in files:
        (folder / Path(name).name).write_bytes(data)
    return folder


def _static_sessions(path: Path) -> tuple[Any, Any] | None:
    """Sessions of ``path`` and its prefill graph beside it (None when absent) when ``path``'s ``input_ids`` has a
    fixed length (the static decoder), else None."""
    if not _fixed_ids(_graph(path)):
        return None
    from ..core.runtime import create_session

    pre = Path(path).with_name(PREFILL)
    return create_session(path), (create_session(pre) if pre.is_file() else None)


def _without_pad(prompts: list[list[int]], bundle: Path) -> list[list[int]]:
    """``prompts`` without the bundle's pad token: onnxruntime-genai masks every pad id it is given (its attention
    mask is ``input_ids != pad``) while transformers is given a mask of ones, so a prompt holding one (a random
    prompt, a padded calibration window; the pad id defaults to EOS) would diverge at its first token on a
    correct decoder."""
    try:
        pad = _ids(json.loads((bundle / "genai_config.json").read_text())["model"].get("pad_token_id"))
    except (OSError, ValueError, KeyError, TypeError):
        return prompts
    pads = set(pad) if isinstance(pad, list) else {pad}
    return [[t for t in p if t not in pads] or p for p in prompts]


def greedy_check(bundle: Path, model: Any, prompts: list[list[int]], *, new_tokens: int, min_agreement: float,
                 tie_atol: float) -> GreedyCheck | None:
    """None when onnxruntime-genai is not installed. A static-shape decoder (NPU targets) runs through
    onnxruntime with the fixed-slot loop of exporters/static_decoder.py instead."""
    static = _static_sessions(Path(bundle) / "model.onnx")
    prompts = _without_pad(prompts, Path(bundle))
    if static is None:
        try:
            import onnxruntime_genai  # noqa: F401
        except ImportError:
            return None
    margins: list[list[float]] = []
    ref = hf_greedy(model, prompts, new_tokens, margins=margins)
    if static is not None:
        import numpy as np

        from ..exporters.static_decoder import greedy_static

        got = [greedy_static(static[0], np.asarray(ids, np.int64), new_tokens, static[1]) for ids in prompts]
        ref, got = _until_eos(ref, eos_ids(model)), _until_eos(got, eos_ids(model))
        return compare_tokens(ref, got, new_tokens, min_agreement, "onnxruntime (static slots)", margins=margins, tie_atol=tie_atol)
    got = _genai_greedy(Path(bundle), prompts, new_tokens)
    eos = eos_ids(model)
    ref, got = _until_eos(ref, eos), _until_eos(got, eos)
    return compare_tokens(ref, got, new_tokens, min_agreement, "onnxruntime-genai", margins=margins, tie_atol=tie_atol)


def check_prefill(bundle: Path, atol: float, rtol: float, *, seed: int = 0) -> dict[str, Any]:
    """A static decoder bundle's prefill graph against its step graph: one seeded prompt of a full chunk and a
    padded one through prefill.onnx, and token by token through model.onnx; the logits of every prompt position."""
    import numpy as np

    from ..exporters.static_decoder import StaticLayout, logits_static

    step, pre = _static_sessions(Path(bundle) / "model.onnx") or (None, None)
    if step is None or pre is None:
        raise ModelError(f"{Path(bundle).name} has no static decoder with {PREFILL} beside it", "re-export it for a static-shape target")
    lay = StaticLayout.of_session(pre)
    vocab = int(step.get_outputs()[0].shape[-1])
    n = min(lay.context, lay.chunk + 3)
    ids = np.random.default_rng(seed).integers(0, vocab, n, dtype=np.int64)
    got, want = logits_static(step, ids, n, pre), logits_static(step, ids, n)
    err = np.abs(got.astype(np.float64) - want)
    return {"chunk": lay.chunk, "prompt_tokens": n, "max_abs_error": float(err.max()), "atol": atol, "rtol": rtol,
            "passed": bool((err <= atol + rtol * np.abs(want)).all())}
