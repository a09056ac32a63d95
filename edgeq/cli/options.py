"""The options of the edgeq commands, each declared once.

Options more than one command takes are declared here as ``Annotated`` types; the groups
``export`` shares with ``quantize`` (quantization) and with ``bundle`` (bundle contents) are
tables applied by :func:`group`, which puts the group's options into the command's signature
(what typer reads) and hands the command one frozen config (``edgeq.pipeline.QuantOptions``,
``BundleOptions``) instead of two dozen loose values.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

TargetOpt = Annotated[str, typer.Option("--target", "-t", help="target name (edgeq targets) or a .toml file")]
QuantOpt = Annotated[Optional[str], typer.Option("--quant", help="int8-static | int8-dynamic | fp16 | int4 | int8-weight | int2 | none; llama.cpp targets: q4_0 | q4_k | q8_0 | f16 ... (default: the target's)")]
BlockOpt = Annotated[Optional[int], typer.Option("--block-size", help="weight-only: 16 | 32 | 64 | 128 | 256 weights per scale")]
SymOpt = Annotated[Optional[bool], typer.Option("--symmetric/--asymmetric", help="weight-only: implicit or stored zero points")]
AccOpt = Annotated[Optional[int], typer.Option("--accuracy-level", help="weight-only: MatMulNBits compute (0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8); export without it measures 4 and 0 and keeps one")]
ScaleDtypeOpt = Annotated[Optional[str], typer.Option("--scale-dtype", help="weight-only: float32 | float16 block scales (float16: half the scale bytes, MatMulNBits runs in float16)")]
AlgoOpt = Annotated[Optional[str], typer.Option("--algo", help="weight-only: rtn | hqq | gptq | awq (gptq/awq need --calib)")]
KeepOpt = Annotated[Optional[str], typer.Option("--keep", help="weight-only: keep fp32: embed, lm_head or name patterns, comma-separated")]
OverrideOpt = Annotated[Optional[list[str]], typer.Option("--override", help="weight-only: 'PATTERN=MODE' per layer (int4|int8|int2|none; repeatable)")]
CalibOpt = Annotated[Optional[Path], typer.Option("--calib", help=".npz (one array per input), a folder of .npy/.npz files, an image folder (+ preprocess.toml), or 'random' (flagged loudly)")]
EvalOpt = Annotated[Optional[Path], typer.Option("--eval", help="held-out data (+ optional 'labels'): export verifies on it, --max-drop scores candidates on it; llama.cpp targets: a prompts file")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print machine-readable JSON on stdout")]
ForceOpt = Annotated[bool, typer.Option("--force", help="replace an existing output that edgeq wrote (an edgeq bundle, an empty folder, a file edgeq wrote; never other files, a symlink, ., $HOME or a folder holding the inputs)")]
PerChannelOpt = Annotated[Optional[bool], typer.Option("--per-channel/--per-tensor", help="weight scales per output channel")]
ActOpt = Annotated[Optional[str], typer.Option("--activation-type", help="uint8 | int8 | uint16 | int16")]
WeightOpt = Annotated[Optional[str], typer.Option("--weight-type", help="int8 | uint8")]
ReduceOpt = Annotated[Optional[bool], typer.Option("--reduce-range/--full-range", help="7-bit weights for CPUs without VNNI")]
FormatOpt = Annotated[Optional[str], typer.Option("--format", help="qdq | qoperator")]
SamplesOpt = Annotated[Optional[int], typer.Option("--calib-samples", help="number of calibration samples to use")]
StaticOpt = Annotated[Optional[list[str]], typer.Option("--static-shape", help="pin an input's shape: NAME=1x3x224x224 (repeatable)")]
OpsetOpt = Annotated[Optional[int], typer.Option("--opset", help="opset to convert to (within the target's range)")]
ImagePreprocOpt = Annotated[Optional[Path], typer.Option("--image-preprocess", help="preprocessing spec (TOML) for an image-folder --calib/--eval (default: the --preprocess file's table for the input, else preprocess.toml inside the folder)")]
PreferOpt = Annotated[Optional[str], typer.Option("--prefer", help="measure INT8 candidates (QDQ, QOperator, dynamic) and fp32 on this host; pick accurate | fastest | smallest within the budget")]
CalibMethodOpt = Annotated[Optional[str], typer.Option("--calibration", help="auto (default: each method scored by output error vs fp32) | minmax | percentile:99.99 | entropy | mse (one streaming pass)")]
CalibBinsOpt = Annotated[Optional[int], typer.Option("--calib-bins", help="histogram bins per tensor (percentile/entropy/mse)")]
MaxDropOpt = Annotated[Optional[float], typer.Option("--max-drop", help="accuracy budget: keep the most sensitive nodes float until the drop is at most this (0.01 = 1 point)")]
LabelsOpt = Annotated[str, typer.Option("--labels-key", help="name of the labels array in evaluation data")]
GoldenOpt = Annotated[int, typer.Option("--golden", help="golden input/output pairs to store")]
PreprocessOpt = Annotated[Optional[Path], typer.Option("--preprocess", help="app TOML: pre/post-processing per input/output and each output's task, which sets how that output is checked and scored (export/bundle: stored in the manifest; also preprocesses image-folder calibration and sets the metric --max-drop/--prefer score)")]
LabelsFileOpt = Annotated[Optional[Path], typer.Option("--labels", help="labels.txt, one label per output index (copied into the bundle)")]
ArchiveOpt = Annotated[Optional[str], typer.Option("--archive", help="also write a deterministic OUT.tar.gz or OUT.zip: tar.gz | zip")]
SignOpt = Annotated[Optional[Path], typer.Option("--sign", help="Ed25519 private key (PEM): sign manifest.json (edgeq keygen)")]
BundleVersionOpt = Annotated[int, typer.Option("--bundle-version", help="release counter stored in the (signed) manifest; verify --min-version refuses older")]
# verify, profile and bundle: the fp32 model a candidate's outputs are checked against (export's --reference is another thing)
ReferenceOpt = Annotated[Optional[Path], typer.Option("--reference", help="fp32 reference .onnx: the model's outputs are checked against it within the target's tolerances (exit 1 outside them)")]
MinAccelOpt = Annotated[Optional[float], typer.Option("--min-accel-coverage", help="fail (exit 1; export still writes the bundle) when a smaller share of nodes runs on the accelerator")]
BundleModelOpt = Annotated[str, typer.Option("--model", help="bundle: run model.ort or model.onnx")]
BundleOutOpt = Annotated[Path, typer.Option("-o", "--out", help="bundle folder to write")]
KvCacheOpt = Annotated[str, typer.Option("--kv-cache", help="--task text-generation: the KV cache's element type, fp32 | int8 (GroupQueryAttention decoders on CPU targets; scales calibrated on --calib windows; a quarter of the cache memory)")]

# Flags several commands take with a different meaning, each declared in its command (not here); every other flag
# two commands share is one declaration above (tests/unit/test_cli_options.py compares all commands pairwise).
PER_COMMAND: dict[str, dict[str, str]] = {
    "--out": {"quantize": "one .onnx file, not a bundle folder", "keygen": "the private key file"},
    "--data": {"verify": "inputs to compare on (required for a model)", "profile": "inputs to time with (default: golden or random)",
               "bundle": "inputs of the golden pairs (default: seeded random)"},
    "--reference": {"export": "a pre-quantized folder's float Hugging Face folder, not an fp32 .onnx"},
    "--target": {"profile": "no default: a bundle's own target, else cpu-x86_64"},
}

# ARM64 emulation (verify --emulate) and remote devices (profile --device): edgeq/devices/qemu.py, edgeq/devices/ssh.py
EmulateOpt = Annotated[Optional[str], typer.Option("--emulate", help="also run under qemu-aarch64 for these -cpu models (comma-separated, or 'default' for cortex-a53,cortex-a72,neoverse-n1); correctness only")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="run the bundle on a device: ssh://user@host[:port]")]
KnownHostsOpt = Annotated[Optional[Path], typer.Option("--known-hosts", help="--device: trust only host keys in this file")]
AcceptNewOpt = Annotated[bool, typer.Option("--accept-new-host-key", help="--device: trust and record a first-seen host key (never a changed one)")]
IdentityOpt = Annotated[Optional[Path], typer.Option("--identity", help="--device: SSH private key to log in with")]
DevicePythonOpt = Annotated[str, typer.Option("--device-python", help="--device: Python on the device (with numpy + onnxruntime)")]
DeviceTimeoutOpt = Annotated[int, typer.Option("--device-timeout", help="--device: seconds allowed for the copy and for the run")]
# names of a PyTorch export (pkg.module:factory, .pt modules): edgeq/exporters/names.py
InputNamesOpt = Annotated[Optional[list[str]], typer.Option("--input-names", help="PyTorch sources: input names in forward() order, comma-separated (default: --example-shape NAME=, else forward()'s parameter names)")]
OutputNamesOpt = Annotated[Optional[list[str]], typer.Option("--output-names", help="PyTorch sources: output names in order, comma-separated (default: a returned dict's keys or namedtuple's fields, else output, output_0, ...)")]


# (parameter = the config's field, option type, default); the order is the order in --help
QUANT_OPTIONS: tuple[tuple[str, Any, Any], ...] = (
    ("quant", QuantOpt, None),
    ("calib", CalibOpt, None),
    ("eval", EvalOpt, None),
    ("fmt", FormatOpt, None),
    ("activation_type", ActOpt, None),
    ("weight_type", WeightOpt, None),
    ("per_channel", PerChannelOpt, None),
    ("reduce_range", ReduceOpt, None),
    ("calib_samples", SamplesOpt, None),
    ("calibration", CalibMethodOpt, None),
    ("calib_bins", CalibBinsOpt, None),
    ("max_drop", MaxDropOpt, None),
    ("image_preprocess", ImagePreprocOpt, None),
    ("prefer", PreferOpt, None),
    ("static_shape", StaticOpt, None),
    ("opset", OpsetOpt, None),
    ("block_size", BlockOpt, None),
    ("symmetric", SymOpt, None),
    ("accuracy_level", AccOpt, None),
    ("scale_dtype", ScaleDtypeOpt, None),
    ("algo", AlgoOpt, None),
    ("keep", KeepOpt, None),
    ("override", OverrideOpt, None),
)

BUNDLE_OPTIONS: tuple[tuple[str, Any, Any], ...] = (
    ("golden", GoldenOpt, 3),
    ("labels_key", LabelsOpt, "labels"),
    ("preprocess", PreprocessOpt, None),
    ("labels", LabelsFileOpt, None),
    ("archive", ArchiveOpt, None),
    ("sign", SignOpt, None),
    ("bundle_version", BundleVersionOpt, 0),
)


def _quant_options(**values: Any) -> Any:
    from ..pipeline import QuantOptions  # the pipeline (and what it imports) only when a command runs

    return QuantOptions(**values)


def _bundle_options(**values: Any) -> Any:
    from ..pipeline import BundleOptions

    return BundleOptions(**values)


def group(param: str, table: tuple[tuple[str, Any, Any], ...], build: Callable[..., Any]):
    """Decorator: the command's parameter ``param`` becomes the options of ``table`` (in its place, in
    --help too); the command is called with ``param=build(**those values)`` (lists as tuples)."""
    names = tuple(name for name, _, _ in table)

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn, eval_str=True)  # typer reads the evaluated annotations
        if param not in sig.parameters or set(names) & set(sig.parameters):
            raise TypeError(f"{fn.__name__}: '{param}' must be a parameter and none of its options may be")
        params: list[inspect.Parameter] = []
        for p in sig.parameters.values():
            if p.name == param:
                params += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a) for n, a, d in table]
            else:
                params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            values = {n: kwargs.pop(n) for n in names}
            kwargs[param] = build(**{n: tuple(v) if isinstance(v, list) else v for n, v in values.items()})
            return fn(**kwargs)

        command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return wrap


quant_options = group("q", QUANT_OPTIONS, _quant_options)
bundle_options = group("b", BUNDLE_OPTIONS, _bundle_options)
