"""The quantize-only trip (``edgeq quantize``): optimize and quantize one model to one file."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.data import load_samples
from ..errors import CalibrationError
from ..core.fsutil import scratch_dir
from ..core.optimization import optimize
from ..quantization import quantize
from .common import ProgressFactory, QuantOptions, check_budget, check_onnx_path, open_model, quiet_progress
from .export_stage import image_preprocess_for


@dataclass(frozen=True)
class QuantizeConfig:
    """Optimize and quantize one ONNX model to one file (no verify, profile or bundle)."""

    model: Path
    out: Path
    target: str = "cpu-x86_64"
    quant: QuantOptions = QuantOptions()
    force: bool = False
    preprocess: Path | None = None  # app TOML: [outputs.NAME] task = ... is the metric --max-drop / --prefer score that output with


@dataclass(frozen=True)
class QuantizeOutcome:
    model: Path
    mode: str
    recipe: dict[str, Any]
    has_eval: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"model": str(self.model), "quantization": self.recipe}


def quantize_model(cfg: QuantizeConfig, progress: ProgressFactory = quiet_progress) -> QuantizeOutcome:
    """``edgeq quantize``: optimize and quantize one model to ``cfg.out`` (stamped, published atomically)."""
    import os

    from ..core.outputs import copy_stamped
    from ..core.fsutil import staging
    from ..core.optimization import parse_shapes
    from ..core.targets import load_target

    q, out, force, model = cfg.quant, cfg.out, cfg.force, cfg.model
    tg = load_target(cfg.target)
    spec = q.spec(tg)
    q.check_prefer()
    check_onnx_path(model)
    from ..core.onnxutil import data_file
    from ..core.outputs import check_output_path

    for path, what in ((out, "output"), (data_file(out), "external data file")):  # before any work
        check_output_path(path, force=force, is_dir=False, inputs=(model, q.calib, q.eval, q.image_preprocess, cfg.preprocess), what=what)
    src = open_model(model)
    from ..core.appio import load_io_spec

    app_io = load_io_spec(cfg.preprocess, src.io)
    tasks = app_io["outputs"]  # before any work: per-output task overrides for --max-drop / --prefer
    image_prep = image_preprocess_for(q.image_preprocess, cfg.preprocess, app_io, src)
    data = load_samples(q.calib, src.io, preprocess=image_prep, random_n=spec.calib_samples) if q.calib else None
    evals = load_samples(q.eval, src.io, what="evaluation", preprocess=image_prep) if q.eval else None
    if spec.needs_calibration and data is None:
        from ..checks.hints import modes_without_calibration

        raise CalibrationError(f"{spec.mode} needs calibration data", "pass --calib DATA.npz, or " + modes_without_calibration(tg))
    from ..quantization.int8.preflight import run as preflight

    pre_notes = preflight(model, tg, spec, parse_shapes(q.static_shape))  # before any work
    prog = progress(min(spec.calib_samples, len(data)) if data else 0)
    with staging(out, force=force, is_dir=False) as tmp, contextlib.ExitStack() as data_stage, scratch_dir() as work:
        with prog.stage("optimize"):
            opt, notes = optimize(src, tg, work / "fp32.onnx", static_shapes=parse_shapes(q.static_shape), opset=q.opset)
            notes = pre_notes + notes
        with prog.stage(f"quantize ({spec.mode})"):
            res = quantize(
                opt, spec, work / "q.onnx", data=data, on_sample=prog.sample, evals=evals, max_drop=q.max_drop,
                prefer=q.prefer, budget=tg.tolerances.max_accuracy_drop, target=tg, tasks=tasks,
            )
        from ..core.onnxutil import copy_model, has_external_data

        if has_external_data(res.artifact.path):  # large: OUT plus OUT.data, the data published first
            tmp_data = data_stage.enter_context(staging(data_file(out), force=force, is_dir=False))
            copy_model(res.artifact.path, tmp, data_path=tmp_data, location=data_file(out).name)
            stamped = tmp.with_name(tmp.name + "_stamp")  # a temporary name the next run cleans up
            copy_stamped(tmp, stamped)  # producer "edgeq": a later --force knows edgeq wrote it
            os.replace(stamped, tmp)
        else:
            copy_stamped(res.artifact.path, tmp)
    recipe = res.recipe()
    recipe["notes"] = notes + recipe["notes"]
    return QuantizeOutcome(model=out, mode=recipe["mode"], recipe=recipe, has_eval=q.eval is not None)


def check_quantize(outcome: QuantizeOutcome) -> None:
    check_budget(outcome.recipe, outcome.model, has_eval=outcome.has_eval)
