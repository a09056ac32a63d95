"""The llama.cpp trip (``edgeq export`` on a llama.cpp target): a Hugging Face folder to a checked GGUF bundle."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.targets import Target
from .common import Progress


@dataclass(frozen=True)
class GGUFOutcome:
    target: Target
    out: Path
    result: dict[str, Any]


def export_gguf(source: Path, target: Target, out: Path, *, quant: str | None, prompts_file: Path | None, force: bool,
                progress: Any = None, accept_failed: bool = False) -> GGUFOutcome:
    """The llama.cpp trip: a Hugging Face folder (float, or GPTQ/AWQ/bitsandbytes) -> a GGUF bundle checked
    through llama.cpp (edgeq.llamacpp.gguf); a failure is left to :func:`check_gguf`."""
    from ..errors import ModelError
    from ..exporters.prequant import detect
    from ..llamacpp.gguf import export_llamacpp, gguf_export, read_prompts

    if not Path(source).is_dir():
        raise ModelError(
            f"{source} is not a folder: target {target.name} takes a Hugging Face Llama folder",
            "pass the folder with config.json, *.safetensors and tokenizer.json",
        )
    prog = progress if progress is not None else Progress()
    if detect(Path(source)) is not None:  # GPTQ/AWQ/bitsandbytes folder: codes kept as Q4_1 blocks where they fit
        r = gguf_export(Path(source), target, out, quant=quant, prompts=read_prompts(prompts_file), force=force, progress=prog.stage,
                        accept_failed=accept_failed)
    else:
        r = export_llamacpp(source, target, out, quant=quant, prompts=read_prompts(prompts_file), force=force, progress=prog.stage,
                        accept_failed=accept_failed)
    return GGUFOutcome(target=target, out=out, result=r)


def check_gguf(outcome: GGUFOutcome) -> None:
    r = outcome.result
    if not r["passed"] and (r.get("verdict") or {}).get("status") != "accepted-failed":  # --accept-failed: shipped, the manifest says so
        from ..errors import CheckFailed

        raise CheckFailed(
            f"the GGUF model is outside target {outcome.target.name}'s tolerances: {'; '.join(r['verify']['failures'])}",
            f"the bundle was written to {outcome.out} for inspection; try a higher-precision --quant (q8_0, f16)",
        )
