"""The check trip (``edgeq verify``): a bundle's checks, a model against its reference, --emulate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.data import LABELS_KEY, load_samples
from ..errors import CalibrationError
from ..checks.comparison import verify
from .common import check_onnx_path, open_model


@dataclass(frozen=True)
class VerifyConfig:
    """``edgeq verify``: a bundle folder or archive (GGUF bundles too), or a candidate .onnx against its
    fp32 ``reference`` on ``data``; ``emulate``: also under qemu-aarch64 for these -cpu models."""

    candidate: Path
    reference: Path | None = None
    data: Path | None = None
    target: str = "cpu-x86_64"
    model: str = "ort"
    providers: tuple[str, ...] = ()
    pubkey: Path | None = None
    min_version: int | None = None
    labels_key: str = LABELS_KEY
    emulate: str | None = None
    preprocess: Path | None = None  # app TOML: [outputs.NAME] task = ... overrides the inferred task of an output


@dataclass(frozen=True)
class VerifyOutcome:
    kind: str
    """"bundle" (bundle checks; a failure raised before), "models" (candidate vs reference) or "emulated" (--emulate)"""
    target: str
    result: dict[str, Any]
    cpus: tuple[str, ...] = ()
    shown: str = ""  # the bundle as named on the command line

    @property
    def passed(self) -> bool:
        if self.kind == "bundle":  # a broken bundle raised before; its export verdict and --reference's comparison decide
            return self.result.get("verdict") != "fail" and bool(self.result.get("reference_check", {}).get("passed", True))
        return bool(self.result.get("passed"))


def verify_model(cfg: VerifyConfig, *, emulation_step: Any = None, on_cpu: Callable[[str], None] | None = None) -> VerifyOutcome:
    """``edgeq verify``: a bundle's checks (a broken bundle raises), or the candidate compared with its
    reference; ``--emulate`` runs the golden pairs under qemu-aarch64 too (``emulation_step(desc, done, total)``:
    building the arm64 userland; ``on_cpu(cpu)``: each emulated CPU starts). Failed comparisons are left to
    :func:`check_verify`."""
    from ..bundles.archive import archive_format

    candidate = cfg.candidate
    if cfg.emulate is not None:
        from ..devices.qemu import emulate_candidate, parse_cpus

        cpus = parse_cpus(cfg.emulate)
        result = emulate_candidate(candidate, cpus, model=cfg.model, reference=cfg.reference, data=cfg.data, target=cfg.target,
                                   labels_key=cfg.labels_key, step=emulation_step, on_cpu=on_cpu)
        return VerifyOutcome(kind="emulated", target=cfg.target, result=result, cpus=cpus)
    if candidate.is_dir() or archive_format(candidate):
        from ..bundles.bundle import check_bundle as check_bundle_files
        from ..llamacpp.gguf import check_gguf_bundle, is_gguf_bundle

        gguf = candidate.is_dir() and is_gguf_bundle(candidate)
        if cfg.reference is not None and (gguf or cfg.data is None):  # before any work: what --reference would compare on
            raise CalibrationError("--reference compares a bundle's ONNX model on --data; " + ("a GGUF bundle has none" if gguf else "no --data given"),
                                   "drop --reference" if gguf else "pass --data DATA (the inputs to compare on), or drop --reference")
        if gguf:  # llama.cpp bundle: checksums + golden prompts through llama.cpp
            result = check_gguf_bundle(candidate)
        else:
            result = check_bundle_files(candidate, providers=list(cfg.providers) or None, model=cfg.model,
                                        pubkey=cfg.pubkey, min_version=cfg.min_version, verdict_raises=False)
            if cfg.reference is not None:  # and its model against the reference, as for a candidate .onnx
                from ..bundles.reader import open_bundle

                with open_bundle(candidate, pubkey=cfg.pubkey, min_version=cfg.min_version) as b:
                    # what the export declared (tasks, recurrent states, masks) unless --preprocess says otherwise: one verdict
                    result["reference_check"] = _against_reference(cfg, b.path(b.manifest["model"]["onnx"]), b.manifest).result
        return VerifyOutcome(kind="bundle", target=cfg.target, result=result, shown=str(candidate))
    if cfg.reference is None or cfg.data is None:
        raise CalibrationError(
            "verifying a model needs --reference REF.onnx and --data DATA", "or pass a bundle folder to check it"
        )
    check_onnx_path(candidate)
    return _against_reference(cfg, candidate)


def _against_reference(cfg: VerifyConfig, candidate: Path, manifest: dict[str, Any] | None = None) -> VerifyOutcome:
    """``candidate`` (a checked .onnx path) against ``cfg.reference`` on ``cfg.data`` within the target's tolerances;
    ``manifest``: the candidate's bundle, whose recorded app TOML applies when no --preprocess is given."""
    from ..core.appio import io_spec_from_manifest, load_io_spec
    from ..core.targets import load_target

    assert cfg.reference is not None and cfg.data is not None
    tg = load_target(cfg.target)
    check_onnx_path(cfg.reference)
    open_model(candidate)
    ref = open_model(cfg.reference)
    samples = load_samples(cfg.data, ref.io, what="evaluation", labels_key=cfg.labels_key)
    app_io = io_spec_from_manifest(manifest, ref.io) if manifest is not None and cfg.preprocess is None else load_io_spec(cfg.preprocess, ref.io)
    tasks = app_io["outputs"]
    from ..checks.masking import with_app_masks

    samples = with_app_masks(samples, app_io["inputs"])
    report = verify(cfg.reference, candidate, samples, tg.tolerances, output_names=ref.io.output_names, tasks=tasks).to_dict()
    return VerifyOutcome(kind="models", target=tg.name, result=report)


def check_verify(outcome: VerifyOutcome) -> None:
    """The candidate outside the target's tolerances, or an emulated CPU disagreeing with x86: CheckFailed (exit 1)."""
    if outcome.kind == "emulated":
        from ..devices.qemu import check_emulated

        check_emulated(outcome.result)
    elif outcome.kind == "models" and not outcome.result["passed"]:
        from ..errors import CheckFailed

        raise CheckFailed(f"candidate outside target {outcome.target}'s tolerances: {'; '.join(outcome.result['failures'])}",
                          "see the table above")
    elif outcome.kind == "bundle" and not outcome.passed:
        from ..bundles.bundle import check_export_verdict
        from ..errors import CheckFailed

        check_export_verdict(outcome.result, outcome.shown)  # the manifest's own verdict first, as before --json printed

        raise CheckFailed(f"the bundle's model is outside target {outcome.target}'s tolerances against --reference: "
                          f"{'; '.join(outcome.result['reference_check']['failures'])}", "see the table above")
