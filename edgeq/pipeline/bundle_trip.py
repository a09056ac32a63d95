"""The bundle-only trip (``edgeq bundle``): a runtime bundle for a model that is already quantized."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..bundles.bundle import BundleInputs, write_bundle
from ..core.data import load_samples
from ..errors import CalibrationError
from ..core.onnxutil import model_size
from ..checks.comparison import verify
from .common import BundleOptions, check_onnx_path, open_model
from .export_stage import golden_feeds_for, sizes


@dataclass(frozen=True)
class BundleConfig:
    """Bundle a model that is already quantized (optionally verified against its fp32 ``reference``)."""

    model: Path
    out: Path
    target: str = "cpu-x86_64"
    data: Path | None = None
    reference: Path | None = None
    bundle: BundleOptions = BundleOptions()
    force: bool = False


@dataclass(frozen=True)
class BundleOutcome:
    bundle: Path
    archive: Path | None
    target: str
    verify: dict[str, Any] | None
    golden_random: bool
    """no --data: the golden inputs are seeded random"""

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": str(self.bundle), "archive": str(self.archive) if self.archive else None, "verify": self.verify}


def bundle_model(cfg: BundleConfig) -> BundleOutcome:
    """``edgeq bundle``: a runtime bundle for a model that is already quantized; verified against
    ``cfg.reference`` on ``cfg.data`` when given (a failure is left to :func:`check_bundle`)."""
    from ..bundles.bundle import check_outputs, load_private_key
    from ..core.appio import check_labels_fit, load_io_spec, read_labels
    from ..core.targets import load_target

    b, model, out, data, reference, force = cfg.bundle, cfg.model, cfg.out, cfg.data, cfg.reference, cfg.force
    tg = load_target(cfg.target)
    check_onnx_path(model)
    from ..core.outputs import check_bundle_outputs

    check_bundle_outputs(out, force=force, archive=b.archive, inputs=(model, data, reference, b.preprocess, b.labels, b.sign))
    art = open_model(model, (f"source({model.name})",))
    from ..bundles.archive import check_golden_archivable

    check_golden_archivable(b.golden, len(art.io.inputs) + len(art.io.outputs), b.archive)
    app_io = load_io_spec(b.preprocess, art.io)
    label_list = read_labels(b.labels)
    check_labels_fit(label_list, app_io, art.io)
    if b.sign is not None:
        load_private_key(b.sign)
    check_outputs(out, BundleInputs(golden_feeds=(), archive=b.archive), force)
    samples = load_samples(data, art.io, what="golden", labels_key=b.labels_key) if data else None
    report = None
    size = None
    if reference is not None:
        check_onnx_path(reference)
        open_model(reference)
        if samples is None:
            raise CalibrationError("--reference needs --data to compare on", "pass --data DATA.npz")
        report = verify(reference, model, samples, tg.tolerances, output_names=art.io.output_names, tasks=app_io["outputs"]).to_dict()
        size = sizes(model_size(reference), model_size(model))
    info = BundleInputs(
        golden_feeds=golden_feeds_for(samples, art, b.golden, app_io),
        recipe={"mode": "as given", "notes": ["bundled an existing model; edgeq did not quantize it"]},
        verify=report,
        sizes=size,
        provenance=art.provenance,
        preprocessing=app_io,
        labels=tuple(label_list) if label_list else None,
        bundle_version=b.bundle_version,
        sign_key=b.sign,
        archive=b.archive,
    )
    write_bundle(art, tg, out, info, force=force)
    from ..bundles.archive import archive_path

    return BundleOutcome(bundle=out, archive=archive_path(out, b.archive) if b.archive else None, target=tg.name,
                         verify=report, golden_random=samples is None)


def check_bundle(outcome: BundleOutcome) -> None:
    report = outcome.verify
    if report is not None and not report["passed"]:
        from ..errors import CheckFailed

        raise CheckFailed(f"model outside target {outcome.target}'s tolerances: {'; '.join(report['failures'])}",
                          f"the bundle was written to {outcome.bundle}")
