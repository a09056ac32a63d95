"""Hugging Face sources: a local ``save_pretrained`` folder -> fp32 ONNX, checked against the model.

Offline only (``HF_HUB_OFFLINE=1``, ``local_files_only=True``). Weights are read
weights-only: safetensors files are header-checked and must be finite; a
``pytorch_model.bin`` must load with ``torch.load(weights_only=True)``. A folder
whose config names custom code (``auto_map``) is refused unless the user
passes ``trust_remote_code``: nothing from the folder is imported before that.

Two exporters: torch's, with this Python's transformers (``--exporter
dynamo|torchscript``), or Optimum's in its own Python (``--exporter optimum``,
``hf_optimum.py``: ``optimum-onnx`` pins transformers < 4.58). ``--exporter auto``
uses Optimum when a Python with it is configured, else torch's, and says which.
Either way the ONNX is checked against the model loaded here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelError, first_line
from .checkpoint import load_pickle_checkpoint, load_safetensors, state_dict_from

TASKS = ("text-classification", "feature-extraction", "text-generation")
_REMOTE_KEYS = ("auto_map",)


@dataclass(frozen=True)
class HfSource:
    folder: Path
    config: dict[str, Any]
    weights: tuple[Path, ...]


def is_hf_folder(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def _read_json(path: Path) -> dict[str, Any]:
    from ..core.fsutil import read_json_object

    try:
        return read_json_object(path, f"{path.name} in {path.parent}", ModelError, hint="re-save the model with save_pretrained")
    except OSError as e:
        raise ModelError(f"{path.name} in {path.parent} is not valid JSON ({type(e).__name__})", "re-save the model with save_pretrained") from None


def read_config(folder: Path) -> dict[str, Any]:
    """The folder's config.json (nothing imported, no weights read)."""
    return _read_json(Path(folder) / "config.json")


def inspect_folder(folder: Path, *, trust_remote_code: bool = False, trust_pickle: bool = False) -> HfSource:
    """Check a save_pretrained folder before anything from it is imported or unpickled."""
    folder = Path(folder)
    if not is_hf_folder(folder):
        raise ModelError(f"{folder} is not a Hugging Face model folder (no config.json)", "pass a folder written by save_pretrained")
    config = _read_json(folder / "config.json")
    remote = [k for k in _REMOTE_KEYS if k in config]
    for extra in ("tokenizer_config.json", "preprocessor_config.json"):
        if (folder / extra).is_file() and "auto_map" in _read_json(folder / extra):
            remote.append(f"{extra}:auto_map")
    code = sorted(p.name for p in folder.glob("*.py"))
    if remote and not trust_remote_code:
        raise ModelError(
            f"{folder.name} asks to run its own Python code ({', '.join(remote)}"
            + (f"; files {', '.join(code[:3])}" if code else "") + "); edgeq does not import it by default",
            "read that code first; pass --trust-remote-code only if you trust who made the folder",
        )
    st = sorted(folder.glob("*.safetensors"))
    bins = sorted(p for p in folder.glob("pytorch_model*.bin"))
    if not st and not bins:
        raise ModelError(f"{folder.name} has no weights (model.safetensors or pytorch_model.bin)", "re-save the model with save_pretrained")
    # Read every weights file now, with edgeq's checks: transformers reads them again afterwards.
    if st:
        for p in st:
            load_safetensors(p)
        weights = tuple(st)
    else:
        for p in bins:
            state_dict_from(load_pickle_checkpoint(p, trust_pickle=trust_pickle), p)
        weights = tuple(bins)
    return HfSource(folder=folder, config=config, weights=weights)


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    constants = None
    with contextlib.suppress(ImportError):
        from huggingface_hub import constants  # read the variable at import: set the constant too
    prev = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if constants is not None:
            constants.HF_HUB_OFFLINE = prev
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def load_hf_module(src: HfSource, task: str, *, trust_remote_code: bool = False):
    """The model for ``task`` wrapped to take (input_ids, attention_mask) and return one tensor."""
    import torch

    model = load_hf_model(src, task, trust_remote_code=trust_remote_code)

    class _Wrapped(torch.nn.Module):
        def __init__(self, m) -> None:
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            out = self.m(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
            return out["last_hidden_state"] if task == "feature-extraction" else out["logits"]

    return _Wrapped(model), model.config


def load_hf_model(src: HfSource, task: str, *, trust_remote_code: bool = False):
    """The transformers model for ``task`` (eval mode, no KV cache); refuses a folder missing the task's weights."""
    if task not in TASKS:
        raise ModelError(f"unknown --task '{task}'", f"choose one of {', '.join(TASKS)}")
    try:
        import transformers
    except ImportError:
        raise ModelError("exporting a Hugging Face folder needs transformers", "pip install 'edgeq[hf]'") from None
    auto = {
        "text-classification": transformers.AutoModelForSequenceClassification,
        "feature-extraction": transformers.AutoModel,
        "text-generation": transformers.AutoModelForCausalLM,
    }[task]
    with _offline(), contextlib.redirect_stderr(open(os.devnull, "w")):  # noqa: SIM115 - progress bars
        try:
            import torch

            # float32 whatever the checkpoint's dtype: transformers 5 loads a bf16/fp16 folder as it is ("auto"), and a
            # half-precision reference differs from the float32 export by its own rounding (0.27 max abs on a bf16 Qwen2)
            model, info = auto.from_pretrained(
                str(src.folder), local_files_only=True, trust_remote_code=trust_remote_code, attn_implementation="eager",
                output_loading_info=True, dtype=torch.float32,
            )
        except Exception as e:  # noqa: BLE001
            if trust_remote_code:
                _raise_if_custom_code(e, src.folder)
            first = first_line(e, 300)
            raise ModelError(f"transformers cannot load {src.folder.name} for {task}: {first}", "check --task and the folder") from None
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        # transformers fills them with random values and only warns: the export would be noise
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ModelError(
            f"{src.folder.name} has no weights for {', '.join(missing[:3])}{more} needed by --task {task}",
            "the folder was saved for another task: choose the task it was trained for (e.g. feature-extraction)",
        )
    model.eval()
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    return model


def _raise_if_custom_code(e: BaseException, folder: Path) -> None:
    """The folder's own Python (auto_map, run from transformers' module cache) raised: the user's error."""
    from dataclasses import replace

    from ..core.usercode import in_user_code, user_error

    fault = in_user_code(e)
    if fault is None:
        return
    copied = Path(fault.file)
    if "transformers_modules" in copied.parts and (folder / copied.name).is_file():
        fault = replace(fault, file=str(folder / copied.name))  # the cache holds a copy of the folder's file
    err = user_error(fault, f"{folder.name}'s own model code (--trust-remote-code)")
    raise err from (e if os.environ.get("EDGEQ_DEBUG") else None)  # EDGEQ_DEBUG: the whole chain


def example_inputs(config, shapes: dict[str, tuple[int, ...]], *, seed: int = 0):
    """(input_ids, attention_mask) of shape batch x sequence (default 2 x 8) with ids inside the vocabulary."""
    import torch

    shape = shapes.get("input_ids") or shapes.get("attention_mask") or (2, 8)
    if len(shape) != 2:
        raise ModelError(f"input_ids must be batch x sequence, got {'x'.join(map(str, shape))}", "write it as input_ids=1x16")
    vocab = int(getattr(config, "vocab_size", 100) or 100)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, shape, generator=g, dtype=torch.int64)
    mask = torch.ones(shape, dtype=torch.int64)
    return ids, mask


OUTPUT_NAMES = {"text-classification": "logits", "feature-extraction": "last_hidden_state", "text-generation": "logits"}
