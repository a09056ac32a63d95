"""``QuantSpec``: a validated, frozen description of one quantization recipe."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from ..errors import EdgeqError

MODES = ("none", "int8-static", "int8-dynamic", "fp16", "int4", "int8-weight", "int2")
# weight-only modes: MatMul/Gemm weights -> com.microsoft MatMulNBits (bits per weight code)
WEIGHT_ONLY_BITS = {"int4": 4, "int8-weight": 8, "int2": 2}
ALGOS = ("rtn", "hqq", "gptq", "awq")
BLOCK_SIZES = (16, 32, 64, 128, 256)
ACCURACY_LEVELS = (0, 1, 2, 3, 4)
SCALE_DTYPES = ("float32", "float16")
KEEP_WORDS = ("embed", "lm_head")
FORMATS = ("qdq", "qoperator")
ACTIVATION_TYPES = ("uint8", "int8", "uint16", "int16")
WEIGHT_TYPES = ("int8", "uint8")
CALIBRATIONS = ("auto", "minmax", "percentile:99.99", "entropy", "mse")
PREFERENCES = ("accurate", "fastest", "smallest")


@dataclass(frozen=True)
class QuantSpec:
    mode: str = "int8-static"
    format: str = "qdq"
    activation_type: str = "uint8"
    weight_type: str = "int8"
    per_channel: bool = True
    reduce_range: bool = False
    symmetric_weights: bool = True
    calibration: str = "auto"
    """Range method; "auto" scores every method on the model's output error and keeps the best."""
    calib_samples: int = 256
    calib_bins: int = 2048
    """Histogram bins per tensor for percentile/entropy/mse calibration."""
    op_types: tuple[str, ...] = ()
    """Op types to quantize; empty means onnxruntime's default set."""
    activation_ops: tuple[str, ...] = ()
    """Static QDQ: op types whose float activations (and constants) get QDQ too, beyond the weight
    ops, for accelerators that run fixed point only (the HTP); empty: weight ops only."""
    nodes_to_exclude: tuple[str, ...] = ()
    """Nodes kept in float (e.g. those whose int32 bias would overflow)."""
    activation_dtypes: tuple[str, ...] = ()
    """Activation types the target runs (static QDQ). A 16-bit one listed here lets the
    --max-drop search give its most sensitive nodes 16-bit activations before fp32."""
    # weight-only (int4 / int8-weight / int2) fields
    block_size: int = 32
    symmetric: bool = False
    """weight-only: symmetric codes (implicit zero point) or asymmetric (stored zero points)."""
    accuracy_level: int = 4
    """MatMulNBits accuracy_level: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 compute of activations."""
    algo: str = "rtn"
    scale_dtype: str = "float32"
    """weight-only: storage type of the block scales; float16 halves their bytes (MatMulNBits then runs
    with float16 activations between Casts, GatherBlockQuantized's output is cast back to float32)."""
    gptq_act_order: bool = True
    """GPTQ: process input channels by decreasing Hessian diagonal, block ranges fixed up front (static groups).
    On the trained INT4 fixture it lowered KL by 3-7 % vs in-order GPTQ (BENCHMARKS.md "## INT4")."""
    embed_mode: str = "int8-weight"
    """weight-only int4: the mode of embedding tables (Gather) that no --keep/--override names. 8 bits by
    default: a row lookup costs no compute, GPTQ/AWQ cannot help it (no activations feed it), and its
    rounding enters every token's residual stream; on the trained tiny Llama 8-bit embeddings cut the
    int4 GPTQ decoder's mean KL 6.7 x for 5 % more bytes (BENCHMARKS.md, KV-cache decoders).
    ``--override embed=int4`` gives 4 bits."""
    keep: tuple[str, ...] = ()
    """Weights kept in fp32: 'embed', 'lm_head' or name patterns (fnmatch)."""
    overrides: tuple[tuple[str, str], ...] = ()
    """(name pattern, mode) pairs: weight-only mode per layer, first match wins; mode 'none' keeps fp32."""

    def __post_init__(self) -> None:
        _choice("quantization mode", self.mode, MODES, "--quant")
        _choice("quantization format", self.format, FORMATS, "--format")
        _choice("activation type", self.activation_type, ACTIVATION_TYPES, "the target's [quant] table")
        _choice("weight type", self.weight_type, WEIGHT_TYPES, "the target's [quant] table")
        for t in self.activation_dtypes:
            _choice("activation type", t, ACTIVATION_TYPES, "activation_dtypes in the target's [quant] table")
        from .int8.calibrate import Calibration

        Calibration.parse(self.calibration, self.calib_bins)  # raises on a bad value
        if self.calib_samples < 1:
            raise EdgeqError(
                f"--calib-samples must be at least 1, got {self.calib_samples}",
                "pass a positive number of calibration samples",
            )
        if self.block_size not in BLOCK_SIZES:
            raise EdgeqError(
                f"unsupported block size {self.block_size}",
                f"choose one of {', '.join(map(str, BLOCK_SIZES))} (--block-size)",
            )
        if self.accuracy_level not in ACCURACY_LEVELS:
            raise EdgeqError(
                f"unsupported accuracy level {self.accuracy_level}", "choose 0 (unset), 1 (fp32), 2 (fp16), 3 (bf16) or 4 (int8) (--accuracy-level)"
            )
        _choice("weight-only algorithm", self.algo, ALGOS, "--algo")
        _choice("scale type", self.scale_dtype, SCALE_DTYPES, "--scale-dtype")
        if self.embed_mode not in ("int4", "int8-weight", "none"):
            raise EdgeqError(f"unknown embedding mode '{self.embed_mode}'", "choose int4, int8-weight or none")
        for k in self.keep:
            if not k or not isinstance(k, str):
                raise EdgeqError(f"empty --keep entry in {list(self.keep)!r}", f"use {', '.join(KEEP_WORDS)} or name patterns")
        for pat, mode in self.overrides:
            if not pat:
                raise EdgeqError("an --override has an empty name pattern", "write PATTERN=MODE, e.g. 'layers.0.*=int8'")
            if mode not in (*WEIGHT_ONLY_BITS, "int8", "none"):
                raise EdgeqError(
                    f"unknown override mode '{mode}' for '{pat}'",
                    "choose int4, int8 (= int8-weight), int2 or none (keep fp32)",
                )
        if self.overrides and not self.weight_only:
            raise EdgeqError("--override applies to weight-only modes", "use --quant int4, int8-weight or int2")
        if self.mode == "int8-dynamic" and self.activation_type not in ("uint8", "int8"):
            raise EdgeqError(
                f"dynamic quantization has no {self.activation_type} activations",
                "use int8-static for 16-bit activations",
            )

    @property
    def wide_activation_type(self) -> str | None:
        """The 16-bit activation type sensitive nodes may get (``activation_dtypes``), or None."""
        if self.activation_type in ("uint16", "int16"):
            return None
        wide = [t for t in self.activation_dtypes if t in ("uint16", "int16")]
        same_sign = "uint16" if self.activation_type == "uint8" else "int16"
        return same_sign if same_sign in wide else (wide[0] if wide else None)

    @property
    def weight_only(self) -> bool:
        return self.mode in WEIGHT_ONLY_BITS

    @property
    def bits(self) -> int | None:
        return WEIGHT_ONLY_BITS.get(self.mode)

    @property
    def needs_calibration(self) -> bool:
        return self.mode == "int8-static" or (self.weight_only and self.algo in ("gptq", "awq"))

    def with_overrides(self, **kw: Any) -> QuantSpec:
        return replace(self, **{k: v for k, v in kw.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["op_types"] = list(self.op_types)
        d["nodes_to_exclude"] = list(self.nodes_to_exclude)
        d["activation_ops"] = list(self.activation_ops)
        d["activation_dtypes"] = list(self.activation_dtypes)
        d["keep"] = list(self.keep)
        d["overrides"] = [list(o) for o in self.overrides]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> QuantSpec:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise EdgeqError(
                f"{where}: unknown quantization key(s) {', '.join(unknown)}",
                f"known keys: {', '.join(sorted(known))}",
            )
        data = dict(data)
        for key in ("op_types", "keep", "nodes_to_exclude", "activation_dtypes", "activation_ops"):
            if key in data:
                data[key] = tuple(data[key])
        if "overrides" in data:
            data["overrides"] = tuple(tuple(o) for o in data["overrides"])
        return cls(**data)


def _choice(what: str, value: str, allowed: tuple[str, ...], where: str) -> None:
    if value not in allowed:
        raise EdgeqError(f"unknown {what} '{value}'", f"choose one of {', '.join(allowed)} ({where})")


def parse_overrides(items: list[str] | tuple[str, ...] | None) -> tuple[tuple[str, str], ...]:
    """``['layers.0.*=int8', ...]`` -> ``(('layers.0.*', 'int8-weight'), ...)``, checked."""
    out = []
    for item in items or ():
        pat, sep, mode = item.rpartition("=")
        if not sep or not pat.strip() or not mode.strip():
            raise EdgeqError(f"cannot read --override {item!r}", "write PATTERN=MODE, e.g. 'layers.0.*=int8'")
        mode = mode.strip()
        out.append((pat.strip(), "int8-weight" if mode == "int8" else mode))
    return tuple(out)


def parse_keep(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(v.strip() for v in value.split(",") if v.strip())
