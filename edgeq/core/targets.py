"""Targets are data: one TOML file per device family in ``targets/``.

A target names its execution providers in order (with options), the session
options the device runs with, the default ``QuantSpec``, the opset range, and
the tolerances that verification holds the quantized model to.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import TargetError
from ..errors import EdgeqError
from ..quantization.spec import QuantSpec
from .safetext import escape_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_TOP_KEYS = {
    "name", "description", "arch", "notes", "static_shapes", "providers",
    "session", "quant", "opset", "tolerances", "ops", "runtime", "gguf", "rules", "static_decoder",
}
RUNTIMES = ("onnxruntime", "llama.cpp")
_SHIPPED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*")  # a file name in targets/: no '/', '..'


@dataclass(frozen=True)
class Provider:
    name: str
    options: tuple[tuple[str, str], ...] = ()

    def options_dict(self) -> dict[str, str]:
        return dict(self.options)


@dataclass(frozen=True)
class Tolerances:
    """Limits a quantized model must meet against fp32 (per output)."""

    min_cosine: float = 0.99
    min_top1_agreement: float = 0.97
    max_accuracy_drop: float = 0.01
    golden_atol: float = 1e-4
    golden_rtol: float = 1e-3
    export_atol: float = 1e-4
    export_rtol: float = 1e-3
    min_greedy_agreement: float = 0.0
    """LLM bundles, quantized: least share of greedy tokens onnxruntime-genai picks as transformers does over 32 new
    tokens (0: reported, not gated; free-running greedy text diverges early on small models). fp32 must be identical."""
    # task checks (edgeq/checks): the metric of each output's kind decides the verdict
    min_top5_agreement: float = 0.99
    min_detection_f1: float = 0.9
    min_map_iou: float = 0.9
    min_pixel_agreement: float = 0.98
    min_sequence_match: float = 0.9
    min_embedding_cosine: float = 0.99
    max_lm_kl: float = 0.05
    min_lm_top1: float = 0.9
    max_probability_error: float = 0.05
    """classification outputs that are probabilities: mean |change| of fp32's top-class probability (apps threshold it)"""

    def __post_init__(self) -> None:
        import math

        from ..errors import EdgeqError

        for k, v in vars(self).items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise EdgeqError(f"[tolerances] {k} must be a finite number >= 0, got {v!r}", "fix the target file")
            if k.startswith("min_") and v > 1:
                raise EdgeqError(f"[tolerances] {k} is a fraction: it must be between 0 and 1, got {v!r}", "fix the target file")


@dataclass(frozen=True)
class OpsetRange:
    min: int = 13
    max: int = 21
    preferred: int = 17

    def clamp(self, opset: int) -> int:
        return max(self.min, min(self.max, opset))


@dataclass(frozen=True)
class GGUFTolerance:
    """Limits for a GGUF model run by llama.cpp against the fp32 PyTorch model (next-token logits)."""

    max_kl: float
    min_top1: float
    max_ppl_ratio: float


@dataclass(frozen=True)
class GGUFSettings:
    """The [gguf] table of a llama.cpp target: default quant type, context, tolerances per quant type."""

    quant: str = "q4_0"
    context: int = 2048
    tolerances: tuple[tuple[str, GGUFTolerance], ...] = ()

    def tolerance(self, quant: str) -> GGUFTolerance | None:
        return dict(self.tolerances).get(quant)

    def to_dict(self) -> dict[str, Any]:
        return {"quant": self.quant, "context": self.context, "tolerances": {k: vars(v).copy() for k, v in self.tolerances}}


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    arch: str
    providers: tuple[Provider, ...]
    quant: QuantSpec
    opset: OpsetRange = field(default_factory=OpsetRange)
    tolerances: Tolerances = field(default_factory=Tolerances)
    static_shapes: bool = False
    graph_optimization_level: str = "basic"
    """The level the app's session uses (and edgeq times with), for model.onnx and model.ort."""
    intra_op_num_threads: int = 0
    ort_optimization: str = "basic"
    """The level model.ort is saved at (``[session] ort_optimization``; default: graph_optimization_level)."""
    ort_optimization_style: str = "fixed"
    """"fixed": optimizations baked into model.ort; "runtime": Q/DQ kept (for an accelerator) and the CPU
    provider's fusions saved, replayed when the session sets session.enable_saved_runtime_optimizations."""
    notes: tuple[str, ...] = ()
    supported_ops: tuple[str, ...] = ()
    """Op types the accelerator runs (empty: no rule; used for placement estimates)."""
    supported_dtypes: tuple[str, ...] = ()
    """Tensor dtypes the accelerator takes (empty: any common dtype; placement estimates)."""
    source: str = ""
    runtime: str = "onnxruntime"
    gguf: GGUFSettings | None = None
    """Set for llama.cpp targets (runtime = "llama.cpp")."""
    rules: tuple[Any, ...] = ()
    """Pre-flight rules (``edgeq.quantization.int8.preflight.Rule``), checked before any work."""
    rewrites: tuple[str, ...] = ()
    """Graph rewrites (``edgeq.core.rewrite.REWRITES``) the optimize stage applies, from ``[ops] rewrites``."""
    op_conditions: tuple[Any, ...] = ()
    """Attribute-level support conditions (``edgeq.core.op_conditions.OpCondition``), from ``[[ops.conditions]]``."""
    conditions_source: str = ""
    """Where those conditions were read (``[ops] conditions_source``: the provider's source and version)."""
    static_slots: int = 0
    """Static-shape LLM decoders: cache slots (``[static_decoder] slots``; 0: exporters.static_decoder.DEFAULT_CONTEXT)."""
    prefill_chunk: int = 0
    """Static-shape LLM decoders: tokens per run of the prefill graph (``[static_decoder] prefill_chunk``; 0: the default)."""

    @property
    def provider_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.providers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "arch": self.arch,
            "providers": [{"name": p.name, "options": p.options_dict()} for p in self.providers],
            "session": {
                "graph_optimization_level": self.graph_optimization_level,
                "intra_op_num_threads": self.intra_op_num_threads,
                "ort_optimization": self.ort_optimization,
                "ort_optimization_style": self.ort_optimization_style,
            },
            "static_shapes": self.static_shapes,
            "quant": self.quant.to_dict(),
            "opset": {"min": self.opset.min, "max": self.opset.max, "preferred": self.opset.preferred},
            "tolerances": vars(self.tolerances).copy(),
            "notes": list(self.notes),
            "supported_ops": list(self.supported_ops),
            "rewrites": list(self.rewrites),
            "supported_dtypes": list(self.supported_dtypes),
            **({"op_conditions": [c.to_dict() for c in self.op_conditions], "conditions_source": self.conditions_source}
               if self.op_conditions else {}),
            **({"static_decoder": {"slots": self.static_slots, "prefill_chunk": self.prefill_chunk}}
               if self.static_slots or self.prefill_chunk else {}),
            "runtime": self.runtime,
            **({"gguf": self.gguf.to_dict()} if self.gguf else {}),
            "rules": [vars(r).copy() | {"allowed": list(r.allowed)} for r in self.rules],
        }


_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}


def arch_name(arch: str) -> str:
    """One name per CPU architecture: a target's ``arch`` and ``platform.machine()`` compare equal (arm64 = aarch64)."""
    a = str(arch).lower()
    return _ARCH_ALIASES.get(a, a)


def host_arch() -> str:
    """This host's CPU architecture, as ``arch_name`` spells it."""
    import platform

    return arch_name(platform.machine())


def targets_dir() -> Path:
    """Where target files live: inside the installed package, or the repo root."""
    here = Path(__file__).resolve().parents[1]  # the edgeq package folder
    for candidate in (here / "targets", here.parent / "targets"):
        if candidate.is_dir():
            return candidate
    raise TargetError(  # pragma: no cover - packaging error
        "no targets directory found next to the edgeq package",
        "reinstall edgeq (pip install --force-reinstall edgeq)",
    )


def list_targets() -> list[Target]:
    return [load_target(p) for p in sorted(targets_dir().glob("*.toml"))]


def target_names() -> list[str]:
    return sorted(p.stem for p in targets_dir().glob("*.toml"))


# provider options whose value is a file, folder or library that onnxruntime opens or loads
_FILE_OPTION_WORDS = ("path", "dir", "file", "folder", "library", "lib", "cache", "dll", "so", "json")
_FILE_OPTIONS = {"load_config", "backend_path", "ep.context_file_path"}  # OpenVINO's load_config is a JSON file


def names_a_file(option: str) -> bool:
    """Whether a provider option names a file, folder or library (``backend_path``, ``*_dir``,
    ``ep.context_file_path``, cache locations, ...): such options come only from a target file the user chose."""
    words = [w for w in re.split(r"[^a-z0-9]+", option.lower()) if w]
    return option.lower() in _FILE_OPTIONS or any(w in _FILE_OPTION_WORDS or w.endswith(("path", "dir", "file", "folder")) for w in words)


def load_target(name_or_path: str | Path) -> Target:
    """Load a target the user chose: by name (``arm64``) or from a TOML file path."""
    if isinstance(name_or_path, Target):
        return name_or_path
    text = str(name_or_path)
    path = Path(text)
    if not (text.endswith(".toml") and path.is_file()):
        if not _SHIPPED_NAME.fullmatch(text) or not (targets_dir() / f"{text}.toml").is_file():
            raise TargetError(
                f"unknown target '{escape_text(text)[:120]}'",
                f"choose one of {', '.join(target_names())} (edgeq targets), or pass a path to a .toml file",
            )
        path = targets_dir() / f"{text}.toml"
    return _load_file(path, trusted=True)


def bundle_target(name: Any, source: str) -> Target:
    """The target a bundle's manifest (untrusted data) names: only one shipped with edgeq, by name.

    Never a path (a TOML inside the bundle could make onnxruntime load the bundle's own
    library through ``backend_path``); provider options naming files are refused here too.
    """
    if not isinstance(name, str) or not _SHIPPED_NAME.fullmatch(name) or name not in target_names():
        shown = escape_text(str(name))[:80]
        raise TargetError(
            f"{source} names target '{shown}', which is not a target shipped with edgeq",
            "pass --target NAME (edgeq targets) or --target FILE.toml with the target you trust",
        )
    return _load_file(targets_dir() / f"{name}.toml", trusted=False)


MAX_TARGET_BYTES = 1 << 20  # a target file is a few hundred lines of TOML


def _load_file(path: Path, *, trusted: bool) -> Target:
    if path.stat().st_size > MAX_TARGET_BYTES:
        raise TargetError(f"target file {escape_text(str(path))} is over {MAX_TARGET_BYTES >> 20} MiB: not a target file", "pass the target's .toml file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise TargetError(f"target file {escape_text(str(path))} is not valid TOML: {escape_text(str(e))}", "fix the syntax of the file") from None
    return _parse(data, path, trusted=trusted)


def _parse(data: dict[str, Any], path: Path, *, trusted: bool = True) -> Target:
    where = f"target file {path.name}"
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise TargetError(f"{where}: unknown key(s) {', '.join(unknown)}", f"known keys: {', '.join(sorted(_TOP_KEYS))}")
    from .target_check import check_target_data

    tolerance_defaults = {f.name: f.default for f in fields(Tolerances)}
    check_target_data(data, where, tolerance_defaults)  # every key and value: type, finite, range (one line naming the key)
    runtime = data.get("runtime", "onnxruntime")
    if runtime not in RUNTIMES:
        raise TargetError(f"{where}: unknown runtime '{runtime}'", f"choose one of {', '.join(RUNTIMES)}")
    if runtime == "llama.cpp":
        return _parse_llamacpp(data, path, where)
    if "gguf" in data:
        raise TargetError(f"{where}: a [gguf] table needs runtime = \"llama.cpp\"", "see targets/llamacpp-arm64.toml")
    for key in ("name", "description", "providers"):
        if key not in data:
            raise TargetError(f"{where}: missing required key '{key}'", "see targets/arm64.toml for the format")
    providers = []
    for p in data["providers"]:
        if "name" not in p:
            raise TargetError(f"{where}: a [[providers]] entry has no name", "give each provider a name")
        opts = tuple(sorted((str(k), str(v)) for k, v in p.get("options", {}).items()))
        files = [k for k, _ in opts if names_a_file(k)]
        if files and not trusted:
            raise TargetError(
                f"{where}: provider option '{files[0]}' names a file or library, which edgeq takes only from a target file you pass",
                "pass --target FILE.toml that sets it",
            )
        providers.append(Provider(name=p["name"], options=opts))
    if not providers:
        raise TargetError(f"{where}: no providers listed", "list at least one [[providers]] entry")
    try:
        quant = QuantSpec.from_dict(data.get("quant", {}), where)
        opset = OpsetRange(**data.get("opset", {}))
        tol = Tolerances(**data.get("tolerances", {}))
    except TypeError as e:
        raise TargetError(f"{where}: {e}", "see targets/arm64.toml for the format") from None
    except EdgeqError as e:
        raise TargetError(e.message, e.hint) from None
    if not (opset.min <= opset.preferred <= opset.max):  # each in target_check.OPSET_BOUNDS already
        raise TargetError(f"{where}: opset range must satisfy min <= preferred <= max", "fix the [opset] table")
    session = data.get("session", {})
    level = session.get("graph_optimization_level", "basic")
    if level not in ("disable", "basic", "extended", "all"):
        raise TargetError(f"{where}: unknown graph_optimization_level '{level}'", "choose disable, basic, extended or all")
    ort_level = session.get("ort_optimization", level)
    if ort_level not in ("disable", "basic", "extended", "all"):
        raise TargetError(f"{where}: unknown ort_optimization '{ort_level}'", "choose disable, basic, extended or all")
    style = session.get("ort_optimization_style", "fixed")
    if style not in ("fixed", "runtime"):
        raise TargetError(f"{where}: unknown ort_optimization_style '{style}'", "choose fixed or runtime")
    if ort_level == "all" and data.get("arch", "any") != "x86_64":
        # measured under qemu: a model.ort saved at 'all' holds x86-only NCHWc kernels and loads on no Arm core
        key = "ort_optimization" if "ort_optimization" in session else "graph_optimization_level"
        raise TargetError(
            f"{where}: {key} 'all' bakes x86-only (NCHWc) kernels into model.ort",
            "use ort_optimization = 'extended' (or 'basic') for targets that are not x86_64",
        )
    ops = data.get("ops", {})
    from ..quantization.int8.preflight import Rule

    try:
        rules = tuple(Rule.from_dict(r, where) for r in data.get("rules", ()))
    except EdgeqError as e:
        raise TargetError(e.message, e.hint) from None
    return Target(
        name=data["name"],
        description=data["description"],
        arch=data.get("arch", "any"),
        providers=tuple(providers),
        quant=quant,
        opset=opset,
        tolerances=tol,
        static_shapes=bool(data.get("static_shapes", False)),
        graph_optimization_level=level,
        intra_op_num_threads=int(session.get("intra_op_num_threads", 0)),
        ort_optimization=ort_level,
        ort_optimization_style=style,
        notes=tuple(data.get("notes", ())),
        supported_ops=tuple(ops.get("supported", ())),
        supported_dtypes=tuple(ops.get("dtypes", ())),
        source=str(path),
        rules=rules,
        rewrites=_rewrites(ops, where),
        op_conditions=_conditions(ops, where),
        conditions_source=str(ops.get("conditions_source", "")),
        static_slots=int(data.get("static_decoder", {}).get("slots", 0)),
        prefill_chunk=int(data.get("static_decoder", {}).get("prefill_chunk", 0)),
    )


def _conditions(ops: dict[str, Any], where: str) -> tuple[Any, ...]:
    from .op_conditions import parse_conditions

    return parse_conditions(ops.get("conditions", []), where)


def _rewrites(ops: dict[str, Any], where: str) -> tuple[str, ...]:
    from .rewrite import REWRITES

    names = ops.get("rewrites", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise TargetError(f"{where}: [ops] rewrites must be a list of names", f"choose from {', '.join(REWRITES)}")
    unknown = [n for n in names if n not in REWRITES]
    if unknown:
        raise TargetError(f"{where}: unknown rewrite '{unknown[0]}' in [ops] rewrites", f"choose from {', '.join(REWRITES)}")
    return tuple(names)


def _parse_llamacpp(data: dict[str, Any], path: Path, where: str) -> Target:
    """A llama.cpp target: no ONNX providers; a [gguf] table with the default quant type and tolerances."""
    from ..llamacpp.gguf import QUANT_NAMES

    for key in ("name", "description", "gguf"):
        if key not in data:
            raise TargetError(f"{where}: missing required key '{key}'", "see targets/llamacpp-arm64.toml for the format")
    onnx_only = sorted(set(data) & {"providers", "session", "quant", "opset", "tolerances", "ops", "static_shapes"})
    if onnx_only:
        raise TargetError(f"{where}: {', '.join(onnx_only)} do not apply to runtime = \"llama.cpp\"", "put llama.cpp settings in the [gguf] table")
    g = dict(data["gguf"])
    tols = g.pop("tolerances", {})
    unknown = sorted(set(g) - {"quant", "context"})
    if unknown:
        raise TargetError(f"{where}: unknown [gguf] key(s) {', '.join(unknown)}", "known keys: quant, context, tolerances")
    quant = str(g.get("quant", "q4_0"))
    if quant not in QUANT_NAMES:
        raise TargetError(f"{where}: unknown GGUF quant type '{quant}'", f"choose one of {', '.join(QUANT_NAMES)}")
    parsed = []
    for q, t in sorted(tols.items()):
        if q not in QUANT_NAMES:
            raise TargetError(f"{where}: [gguf.tolerances.{q}] names an unknown quant type", f"choose among {', '.join(QUANT_NAMES)}")
        try:
            parsed.append((q, GGUFTolerance(**t)))
        except TypeError as e:
            raise TargetError(f"{where}: [gguf.tolerances.{q}]: {e}", "give max_kl, min_top1 and max_ppl_ratio") from None
    return Target(
        name=data["name"],
        description=data["description"],
        arch=data.get("arch", "any"),
        providers=(),
        quant=QuantSpec(mode="none"),
        notes=tuple(data.get("notes", ())),
        source=str(path),
        runtime="llama.cpp",
        gguf=GGUFSettings(quant=quant, context=int(g.get("context", 2048)), tolerances=tuple(parsed)),
    )
