"""Pre-flight rules: checks from the target file, run before any work starts.

A target lists ``[[rules]]`` tables; each names one of the checks below, a
severity ("error" stops before any work, exit 2; "warn" becomes a loud note) and
a message. A finding names the rule and the node or input that breaks it.

Checks:
- ``vnni_or_reduce_range``: on an x86 host without VNNI, U8S8 int8 can saturate
  (pairwise 16-bit sums); require reduce_range or U8U8.
- ``activation_types``: static activations must be one of ``allowed``; format must be ``format``.
- ``static_shapes``: every input dimension must be fixed (after --static-shape).
- ``modes``: the quantization mode should be one of ``allowed`` (e.g. CoreML: fp16).
- ``supported_ops``: every node's op type is in the target's [ops] supported list.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import EdgeqError
from ..spec import QuantSpec

CHECKS = ("vnni_or_reduce_range", "activation_types", "static_shapes", "modes", "supported_ops")
SEVERITIES = ("error", "warn")


class PreflightError(EdgeqError):
    """The model or recipe breaks one of the target's rules (found before any work)."""


@dataclass(frozen=True)
class Rule:
    id: str
    check: str
    severity: str = "error"
    message: str = ""
    allowed: tuple[str, ...] = ()
    format: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> Rule:
        known = {"id", "check", "severity", "message", "allowed", "format"}
        unknown = sorted(set(d) - known)
        if unknown or "id" not in d or "check" not in d:
            raise EdgeqError(
                f"{where}: bad [[rules]] entry {d.get('id', '?')} (unknown keys {unknown})" if unknown
                else f"{where}: a [[rules]] entry needs 'id' and 'check'",
                f"known keys: {', '.join(sorted(known))}; checks: {', '.join(CHECKS)}",
            )
        if d["check"] not in CHECKS:
            raise EdgeqError(f"{where}: rule {d['id']}: unknown check '{d['check']}'", f"choose one of {', '.join(CHECKS)}")
        sev = d.get("severity", "error")
        if sev not in SEVERITIES:
            raise EdgeqError(f"{where}: rule {d['id']}: severity must be error or warn", "fix the [[rules]] entry")
        return cls(d["id"], d["check"], sev, d.get("message", ""), tuple(d.get("allowed", ())), d.get("format", ""))


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str
    where: str  # node or input name
    message: str

    def line(self) -> str:
        return f"target rule '{self.rule}' ({self.severity}): {self.where}: {self.message}"


def host_has_vnni() -> bool | None:
    """True/False on x86 Linux hosts; None where it cannot be told."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
            break
    return bool({"avx512_vnni", "avx_vnni"} & flags)


def check(
    model: Any,
    rules: tuple[Rule, ...],
    spec: QuantSpec,
    *,
    supported_ops: tuple[str, ...] = (),
    static_shapes: dict[str, tuple[int, ...]] | None = None,
    vnni: bool | None = None,
) -> list[Finding]:
    from ...core.onnxutil import io_spec, iter_nodes

    out: list[Finding] = []
    nodes = list(iter_nodes(model.graph))
    weight_nodes = [n for n in nodes if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")]
    first_w = (weight_nodes[0].name or weight_nodes[0].op_type) if weight_nodes else "model"
    int8 = spec.mode in ("int8-static", "int8-dynamic")
    for r in rules:
        msg = r.message
        if r.check == "vnni_or_reduce_range":
            has = host_has_vnni() if vnni is None else vnni
            if int8 and has is False and not spec.reduce_range and spec.weight_type == "int8" and spec.activation_type == "uint8":
                out.append(Finding(r.id, r.severity, f"node {first_w} (and {len(weight_nodes) - 1} more)",
                                   msg or "this CPU has no VNNI: U8S8 int8 can saturate; use --reduce-range or --weight-type uint8"))
        elif r.check == "activation_types":
            if spec.mode == "int8-static" and r.allowed and spec.activation_type not in r.allowed:
                out.append(Finding(r.id, r.severity, f"node {first_w}",
                                   msg or f"activations must be {' or '.join(r.allowed)}, not {spec.activation_type}"))
            bad = [t for t in spec.activation_dtypes if r.allowed and t not in r.allowed]
            if spec.mode == "int8-static" and bad:
                out.append(Finding(r.id, r.severity, "activation_dtypes",
                                   msg or f"activations must be {' or '.join(r.allowed)}, not {', '.join(bad)}"))
            if spec.mode == "int8-dynamic" and r.format:
                out.append(Finding(r.id, r.severity, f"node {first_w}", msg or f"this target runs {r.format} static models, not dynamic INT8"))
            elif int8 and r.format and spec.format != r.format:
                out.append(Finding(r.id, r.severity, f"node {first_w}", msg or f"format must be {r.format}, not {spec.format}"))
        elif r.check == "static_shapes":
            from ...core.onnxutil import imgsz_pins

            pinned = static_shapes or {}
            pinned = {**imgsz_pins(model, pinned), **pinned}  # the optimize stage pins these from the declared imgsz
            for t in io_spec(model).inputs:
                if t.name in pinned:
                    continue
                # axis 0 (batch) is pinned to 1 by the optimize stage for static-shape targets
                bad = [i for i, d in enumerate(t.shape) if not isinstance(d, int) and i > 0]
                if bad:
                    out.append(Finding(r.id, r.severity, f"input {t.name} {t.shape_str()}",
                                       (msg or "every input dimension must be fixed") + f" (axis {bad[0]} is dynamic; pass --static-shape {t.name}=...)"))
        elif r.check == "modes":
            if r.allowed and spec.mode not in r.allowed:
                out.append(Finding(r.id, r.severity, f"node {first_w}",
                                   msg or f"this target prefers {' or '.join(r.allowed)} over {spec.mode}"))
        elif r.check == "supported_ops" and supported_ops:
            allowed = set(supported_ops) | {"Constant", "Identity"}
            for n in nodes:
                if n.op_type not in allowed:
                    out.append(Finding(r.id, r.severity, f"node {n.name or n.op_type} ({n.op_type})",
                                       msg or "op not run by the accelerator: it falls back to the CPU"))
                    break
    return out


def enforce(findings: list[Finding]) -> list[str]:
    """Raise on the first error; return the warnings as report notes."""
    errors = [f for f in findings if f.severity == "error"]
    if errors:
        f = errors[0]
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise PreflightError(f.line() + more, "change the recipe (see `edgeq targets show TARGET`) or pick another target")
    return [f"WARNING: {f.line()}" for f in findings]


def run(path: Path, target: Any, spec: QuantSpec, static_shapes: dict[str, tuple[int, ...]] | None = None) -> list[str]:
    """Check the model file against ``target.rules``; raise on errors, return warnings as notes."""
    if not getattr(target, "rules", ()):
        return []
    from ...core.onnxutil import load_model

    model = load_model(path, load_weights=False)
    return enforce(check(model, target.rules, spec, supported_ops=target.supported_ops, static_shapes=static_shapes))
