"""What an export will take, known before it runs: the calibration and evaluation files are checked
against it (edgeq.core.data.check_arrays_early) so that an array the model will never take, or a wrong
dtype or shape for an input whose layout is already known, is refused in one line before any slow work.

| source | inputs known before the export |
|---|---|
| PyTorch module (factory, pickle) | names from forward(), dtype and shape from the example inputs, batch axis dynamic |
| Hugging Face folder, torch's exporter | ``input_ids``, ``attention_mask``: int64 [batch, sequence] |
| Hugging Face folder through Optimum | ``input_ids``, ``attention_mask``; ``token_type_ids`` when the config has token types (``type_vocab_size`` >= 2); ``position_ids`` for text-generation |
| KV-cache decoder | ``input_ids`` int64 [batch, sequence]; ``attention_mask``, ``position_ids``, ``past_key_values.N.key/value`` (filled in by edgeq when absent) |
| static-shape KV decoder (NPU targets) | ``input_ids`` windows [n, T] only: edgeq computes the rest |

An ONNX file needs none of this: its inputs are read from the file, and the data is checked before any
other stage runs (edgeq.pipeline.export_stage.run_export).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..core.artifact import TensorSpec
from ..core.data import ExpectedInputs

TOKENS = ("batch", "sequence")
_TORCH_DTYPES = {"float32": "float32", "float16": "float16", "int64": "int64", "int32": "int32", "bool": "bool"}


def from_examples(names: list[str], args: tuple[Any, ...], axes: Mapping[str, Mapping[int, str]]) -> ExpectedInputs:
    """A traced module: each input's dtype from its example tensor, its shape with the dynamic axes symbolic."""
    specs = []
    for name, a in zip(names, args):
        dtype = _TORCH_DTYPES.get(str(getattr(a, "dtype", "")).removeprefix("torch."))
        shape = getattr(a, "shape", None)
        if dtype is None or shape is None:
            return ExpectedInputs(also=tuple(names))  # an input of a kind not checked here: names only
        dyn = axes.get(name, {})
        specs.append(TensorSpec(name, dtype, tuple(dyn.get(i, int(d)) for i, d in enumerate(shape))))
    return ExpectedInputs(specs=tuple(specs))


def _tokens(name: str, dims: tuple[Any, ...] = TOKENS) -> TensorSpec:
    return TensorSpec(name, "int64", tuple(dims))


def optimum(config: Mapping[str, Any], task: str, dims: tuple[Any, ...] = TOKENS) -> ExpectedInputs:
    """What an Optimum ONNX of ``config`` can take (edgeq.exporters.hf_optimum.KNOWN_INPUTS, narrowed by the config)."""
    names = ["input_ids", "attention_mask"]
    if int(config.get("type_vocab_size", 0) or 0) >= 2:  # BERT-like token types (RoBERTa has 1, DeBERTa-v2 0: no input)
        names.append("token_type_ids")
    if task == "text-generation":
        names.append("position_ids")
    return ExpectedInputs(specs=tuple(_tokens(n, dims) for n in names))


def kv_decoder(config: Mapping[str, Any], *, static: bool) -> ExpectedInputs:
    """A KV-cache decoder's calibration windows: ``input_ids`` alone is enough, the rest is filled in by edgeq."""
    if static:  # fixed cache slots: host inputs (bias, rotary rows, cache writes) are computed from the windows
        return ExpectedInputs(specs=(_tokens("input_ids", (1, None)),),
                              described="input_ids windows int64 [n, T] (a static-shape decoder's other inputs are computed by edgeq)")
    layers = config.get("num_hidden_layers")
    index = "|".join(str(i) for i in range(int(layers))) if isinstance(layers, int) and 0 < layers <= 4096 else r"\d+"
    return ExpectedInputs(
        specs=(_tokens("input_ids"), _tokens("attention_mask", ("batch", "total_sequence")), _tokens("position_ids")),
        pattern=rf"past_key_values\.(?:{index})\.(?:key|value)",
        described=("input_ids int64 [batch, sequence]; attention_mask, position_ids and past_key_values.N.key/value "
                   f"(N < {layers if isinstance(layers, int) else 'layers'}) are filled in by edgeq when absent"),
    )
