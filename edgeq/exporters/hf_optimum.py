"""Hugging Face folders exported through Optimum, in Optimum's own interpreter.

``optimum-onnx`` (the package that holds ``optimum.exporters.onnx``) pins
``transformers<4.58``, so it usually cannot sit next to the transformers edgeq
uses. edgeq runs it in a separate Python, the way it runs OpenVINO:

1. ``EDGEQ_OPTIMUM_PYTHON``: the python of an environment with optimum-onnx;
2. else this interpreter, when ``optimum.exporters.onnx`` is importable here.

The child (``_optimum_child.py``) runs offline (``HF_HUB_OFFLINE=1``) on a
shadow of the folder (links to its files, plus a config.json with transformers
5 keys that transformers 4 reads differently written back in the old form), and
writes into a staging folder under edgeq's scratch directory. edgeq takes the
single-graph ``model.onnx`` from there and checks it in THIS interpreter against
the folder loaded by this interpreter's transformers, per output, exactly like
the torch path: beyond the target's export tolerance it fails (exit 1).

``text-generation`` is exported without past key values (Optimum's
``text-generation`` task, not ``text-generation-with-past``): one graph,
``input_ids``/``attention_mask``/``position_ids`` -> ``logits``, the same
contract as the torch path. A KV-cache graph is not produced.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core import child
from ..core.artifact import Artifact
from ..errors import CheckFailed, ModelError
from ..core.targets import Target
from . import hf

ENV_VAR = "EDGEQ_OPTIMUM_PYTHON"
PIP_HINT = (
    "python3 -m venv ~/.cache/edgeq/optimum && ~/.cache/edgeq/optimum/bin/pip install torch --index-url "
    "https://download.pytorch.org/whl/cpu && ~/.cache/edgeq/optimum/bin/pip install 'optimum-onnx==0.1.0' "
    f"'transformers<4.58' onnx onnxruntime, then export {ENV_VAR}=~/.cache/edgeq/optimum/bin/python"
)
CHILD = Path(__file__).with_name("_optimum_child.py")
# what edgeq can feed to an Optimum ONNX for the tasks it exports
KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


class OptimumExportFailed(ModelError):
    """Optimum ran and could not export the folder (``--exporter auto`` then uses torch's exporter)."""


@dataclass(frozen=True)
class OptimumPython:
    python: Path
    why: str  # how it was found, for notes and provenance


def find_python() -> OptimumPython | None:
    """The interpreter to run Optimum in, or None when none is configured."""
    named = os.environ.get(ENV_VAR)
    if named:
        p = Path(named).expanduser()
        if not p.is_file():
            raise ModelError(f"{ENV_VAR}={named} is not a file", f"point it at the python of an environment with optimum-onnx: {PIP_HINT}")
        return OptimumPython(p, f"{ENV_VAR}={named}")
    if in_process_available():
        return OptimumPython(Path(sys.executable), "optimum.exporters.onnx is importable in this Python")
    return None


def in_process_available() -> bool:
    try:
        return importlib.util.find_spec("optimum.exporters.onnx") is not None
    except (ImportError, ValueError):
        return False


def require_python() -> OptimumPython:
    found = find_python()
    if found is None:
        raise ModelError(
            f"--exporter optimum needs a Python with optimum-onnx (it pins transformers<4.58): set {ENV_VAR}",
            PIP_HINT,
        )
    return found


def compat_config(config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """config.json as transformers 4.x reads it; returns (config, what changed).

    transformers 5 writes RoPE settings as ``rope_parameters``; transformers 4
    reads ``rope_theta`` and ``rope_scaling`` and would silently use its default
    theta. A flat ``rope_parameters`` is written back in the old form (kept too).
    """
    out = dict(config)
    changes: list[str] = []
    rp = config.get("rope_parameters")
    if isinstance(rp, dict) and "rope_theta" not in config and "rope_theta" in rp and not any(isinstance(v, dict) for v in rp.values()):
        out["rope_theta"] = rp["rope_theta"]
        changes.append("rope_parameters.rope_theta -> rope_theta")
        if "partial_rotary_factor" in rp and "partial_rotary_factor" not in config:
            out["partial_rotary_factor"] = rp["partial_rotary_factor"]
            changes.append("rope_parameters.partial_rotary_factor -> partial_rotary_factor")
        rtype = rp.get("rope_type", rp.get("type", "default"))
        if rtype != "default" and "rope_scaling" not in config:
            out["rope_scaling"] = {k: v for k, v in rp.items() if k not in ("rope_theta", "partial_rotary_factor")}
            changes.append(f"rope_parameters ({rtype}) -> rope_scaling")
    return out, changes


def shadow_folder(src: hf.HfSource, dest: Path, *, with_code: bool) -> list[str]:
    """``dest``: links to the folder's top-level files, config.json rewritten by ``compat_config``."""
    dest.mkdir(parents=True)
    for p in sorted(src.folder.iterdir()):
        if p.name == "config.json" or not p.is_file() or (p.suffix == ".py" and not with_code):
            continue
        target = p.resolve()
        try:
            (dest / p.name).symlink_to(target)
        except OSError:  # no symlinks (some Windows setups): copy
            shutil.copy2(target, dest / p.name)
    config, changes = compat_config(src.config)
    (dest / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return changes


def run_child(py: OptimumPython, folder: Path, task: str, out_dir: Path, *, opset: int, trust_remote_code: bool,
              static: dict[str, int] | None) -> dict[str, Any]:
    """Run Optimum's exporter offline in ``py``; returns the child's result (versions), raises on failure."""
    req_path = out_dir.parent / "optimum-request.json"
    res_path = out_dir.parent / "optimum-result.json"
    log_path = out_dir.parent / "optimum.log"
    req = {
        "folder": str(folder), "output": str(out_dir), "task": task, "opset": opset,
        "trust_remote_code": trust_remote_code, "static": static or None, "result": str(res_path),
    }
    req_path.write_text(json.dumps(req), encoding="utf-8")
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")  # -I ignores PYTHON* variables: -X utf8 below
    with open(log_path, "wb") as log:
        try:
            r = child.run(child.python_argv(py.python, [CHILD, req_path], flags=("-X", "utf8")), stdout=log, stderr=child.STDOUT,
                          env=env, cwd=str(out_dir.parent))  # isolated; cwd: edgeq's own scratch folder
        except OSError as e:
            raise ModelError(f"cannot run {py.python} ({py.why}): {e.strerror or e}", PIP_HINT) from None
    result: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        result = json.loads(res_path.read_text(encoding="utf-8"))
    if result.get("ok") and r.returncode == 0:
        return result
    if result.get("stage") == "import":
        raise ModelError(f"{py.python} ({py.why}) cannot import Optimum's ONNX exporter: {result.get('error')}", PIP_HINT)
    if result.get("error"):
        raise OptimumExportFailed(
            f"Optimum could not export {folder.name} for {task}: {result['error']}",
            "Optimum may not support this architecture or task; try --exporter dynamo (torch's exporter)",
        )
    tail = [ln for ln in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()][-1:] or ["no output"]
    raise ModelError(f"the Optimum exporter ({py.python}) exited with code {r.returncode}: {tail[0][:300]}", PIP_HINT)


def pick_onnx(out_dir: Path, task: str) -> Path:
    """The one graph edgeq bundles: ``model.onnx``; anything else is refused with what was written."""
    onnx_files = sorted(p.name for p in out_dir.glob("*.onnx"))
    if "model.onnx" in onnx_files:
        return out_dir / "model.onnx"
    raise OptimumExportFailed(
        f"Optimum wrote {', '.join(onnx_files) or 'no .onnx file'} for --task {task}, not one model.onnx",
        "edgeq bundles single-graph models; encoder-decoder models export as several graphs and are not supported",
    )


class _Reference:
    """The folder's model in this interpreter, called with the ONNX's inputs, returning its outputs by name."""

    def __init__(self, model, input_names: list[str], output_names: list[str]) -> None:
        self.model, self.input_names, self.output_names = model, input_names, output_names

    def __call__(self, *args):
        out = self.model(**dict(zip(self.input_names, args)), return_dict=True)
        missing = [n for n in self.output_names if n not in out]
        if missing:
            raise CheckFailed(
                f"the ONNX has output(s) {', '.join(missing)} that the transformers model does not return",
                "report the model: Optimum exported outputs edgeq cannot check",
            )
        return tuple(out[n] for n in self.output_names)


def feeds_for(names: list[str], config, shape: tuple[int, int], *, seed: int) -> tuple[Any, ...]:
    """One sample for the ONNX's inputs: ids inside the vocabulary, full mask, positions 0..n-1."""
    import torch

    g = torch.Generator().manual_seed(seed)
    b, s = shape
    vocab = int(getattr(config, "vocab_size", 100) or 100)
    types = int(getattr(config, "type_vocab_size", 1) or 1)
    out = []
    for n in names:
        if n == "input_ids":
            out.append(torch.randint(0, vocab, (b, s), generator=g, dtype=torch.int64))
        elif n == "attention_mask":
            out.append(torch.ones((b, s), dtype=torch.int64))
        elif n == "token_type_ids":
            out.append(torch.randint(0, types, (b, s), generator=g, dtype=torch.int64))
        elif n == "position_ids":
            out.append(torch.arange(s, dtype=torch.int64).expand(b, s).contiguous())
        else:
            raise ModelError(
                f"Optimum's ONNX has an input '{n}' edgeq cannot fill for the check",
                f"edgeq checks models whose inputs are among {', '.join(KNOWN_INPUTS)}",
            )
    return tuple(out)


def batch_sequence(static_shapes: dict[str, tuple[int, ...]], example_shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    """The one batch x sequence shape Optimum's inputs share: pinned with --static-shape, else the example's, else 2 x 8."""
    return tuple(static_shapes.get("input_ids") or static_shapes.get("attention_mask") or example_shapes.get("input_ids")
                 or example_shapes.get("attention_mask") or (2, 8))


def export_hf_optimum(src: hf.HfSource, *, task: str, target: Target, work: Path, opset: int | None,
                      static_shapes: dict[str, tuple[int, ...]], example_shapes: dict[str, tuple[int, ...]],
                      trust_remote_code: bool, py: OptimumPython, why: str) -> tuple[Artifact, Any]:
    """Export ``src`` with Optimum into ``work/optimum/``, check it against the folder; ``(Artifact, ExportCheck)``."""
    from ..core.onnxutil import artifact_from
    from .torch import ExportCheck, check_against_source

    if task not in hf.TASKS:
        raise ModelError(f"unknown --task '{task}'", f"choose one of {', '.join(hf.TASKS)}")
    chosen = opset or target.opset.preferred
    if not (target.opset.min <= chosen <= target.opset.max):
        raise ModelError(f"opset {chosen} is outside target {target.name}'s range {target.opset.min}-{target.opset.max}", "choose an opset in that range")
    pinned = {k: v for k, v in static_shapes.items()}
    shape = batch_sequence(static_shapes, example_shapes)
    if len(shape) != 2:
        raise ModelError(f"input_ids must be batch x sequence, got {'x'.join(map(str, shape))}", "write it as input_ids=1x16")
    bad = [f"{k}={'x'.join(map(str, v))}" for k, v in pinned.items() if tuple(v) != tuple(shape)]
    if bad:
        raise ModelError(
            f"--static-shape {', '.join(bad)} differs from {'x'.join(map(str, shape))}: Optimum's inputs share one batch and sequence size",
            "give every input the same batch x sequence shape",
        )
    static = {"batch_size": int(shape[0]), "sequence_length": int(shape[1])} if (pinned or target.static_shapes) else None
    model = hf.load_hf_model(src, task, trust_remote_code=trust_remote_code)  # the reference; refuses missing weights early
    shadow, out_dir = work / "optimum-source" / src.folder.name, work / "optimum"  # same name: messages name the folder
    changes = shadow_folder(src, shadow, with_code=trust_remote_code)
    result = run_child(py, shadow, task, out_dir, opset=chosen, trust_remote_code=trust_remote_code, static=static)
    onnx_path = pick_onnx(out_dir, task)
    art = artifact_from(onnx_path)
    names = list(art.io.input_names)
    outs = list(art.io.output_names)
    feeds = [("example", feeds_for(names, model.config, tuple(shape), seed=0))]
    if static is None:
        grown = (shape[0] + 1, shape[1] + 1)
        feeds.append((f"batch={grown[0]}, sequence={grown[1]}", feeds_for(names, model.config, grown, seed=1)))
    ref = _Reference(model, names, outs)
    tol = target.tolerances
    errs = check_against_source(ref, onnx_path, feeds, names, tol.export_atol, tol.export_rtol)
    v = result.get("versions") or {}
    used = f"optimum-onnx {v.get('optimum-onnx')} (transformers {v.get('transformers')}, torch {v.get('torch')})"
    notes = (f"Optimum ran in {py.python} ({py.why}); {why}",)
    if changes:
        notes += (f"config.json given to transformers {v.get('transformers')} in its own form: {', '.join(changes)}",)
    if task == "text-generation":
        notes += ("text-generation exported without past key values (one graph, logits for every position)",)
    check = ExportCheck(
        exporter=used, fallback_reason=None, opset=art.opset, inputs_checked=tuple(label for label, _ in feeds),
        outputs=errs, atol=tol.export_atol, rtol=tol.export_rtol, external_data=any(out_dir.glob("*.onnx_data")) or any(out_dir.glob("*.data")),
        exporter_notes=notes,
    )
    if not check.passed:
        bad_outs = [o for o in errs if not o.passed]
        raise CheckFailed(
            f"the ONNX Optimum exported differs from the source beyond target {target.name}'s export tolerance: "
            + "; ".join(f"output '{o.name}' max abs {o.max_abs:.3g}, max rel {o.max_rel:.3g}" for o in bad_outs)
            + f" (atol {check.atol:g}, rtol {check.rtol:g})",
            "transformers versions may compute this model differently; try --exporter dynamo (torch's exporter in this Python)",
        )
    worst = max((o.max_abs for o in errs), default=0.0)
    art = Artifact(
        path=onnx_path, io=art.io, opset=art.opset,
        provenance=(
            f"source(hf:{src.folder.name}, task={task})",
            f"export(optimum-onnx {v.get('optimum-onnx')}, transformers {v.get('transformers')}, opset={art.opset})",
            f"export-check(max_abs={worst:.3g}, outputs={len(errs)}, passed)",
        ),
    )
    return art, check
