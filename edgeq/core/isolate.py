"""Open untrusted models in a child process first.

onnx's checker and shape inference and onnxruntime's session creation are native code;
a crafted or corrupt model can crash them (a segfault kills the process: no error
message, no cleanup) or make them allocate without bound. ``probe_model`` runs those
steps on the model in a short-lived child with a memory and time limit; a crash, a
timeout or an allocation failure there becomes one ``ModelError`` before edgeq has
written anything. Python-level errors are left to the real stages, which report them
with their own messages. The cost is one interpreter start (about a second) per model
the user passes in; intermediate models edgeq writes itself are not probed.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from . import child
from .artifact import Artifact
from ..errors import ModelError

PROBE_TIMEOUT_S = 600.0
PROBE_MEMORY_BASE = 6 * 2**30  # address space for the interpreter, onnx and onnxruntime
_OOM_WORDS = ("MemoryError", "bad_alloc", "failed to map segment", "Cannot allocate memory")
_CHILD = "import sys\nfrom edgeq.core.isolate import _child\n_child(sys.argv[1])\n"


def _limits(memory: int):
    def apply() -> None:  # runs in the child between fork and exec
        try:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        except (ImportError, ValueError, OSError):
            pass

    return apply


def probing() -> bool:
    """The child probes run unless ``EDGEQ_PROBE=0``."""
    return os.environ.get("EDGEQ_PROBE") != "0"


def run_probe(code: str, path: Path, *, timeout_s: float | None, hung: tuple[str, str], crashed: tuple[str, str],
              **kwargs: object) -> child.CompletedProcess:
    """Run ``code`` (``python -I -c``, argument: ``path``) in an isolated child under the probe timeout
    (``EDGEQ_PROBE_TIMEOUT``). A hang or a death by signal is one ``ModelError``: ``hung`` and ``crashed`` are
    (message, hint), the message formatted with ``file``, ``timeout`` and ``signal``. Anything else is the caller's."""
    timeout = timeout_s or float(os.environ.get("EDGEQ_PROBE_TIMEOUT", PROBE_TIMEOUT_S))
    env = child.clean_env()
    env.setdefault("OMP_NUM_THREADS", "1")
    try:
        proc = child.run(child.python_argv(sys.executable, ["-c", code, path.resolve()]),
                         capture_output=True, text=True, timeout=timeout, env=env, **kwargs)
    except child.TimeoutExpired:
        raise ModelError(hung[0].format(file=path.name, timeout=timeout), hung[1]) from None
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        raise ModelError(crashed[0].format(file=path.name, signal=name), crashed[1])
    return proc


def probe_model(path: str | Path, *, size: int | None = None, timeout_s: float | None = None,
                memory_bytes: int | None = None) -> None:
    """Raise ``ModelError`` if opening ``path`` crashes, hangs or exhausts memory in a child."""
    path = Path(path)
    if not probing():
        return
    if size is None:
        from .onnxutil import model_size

        size = model_size(path)
    memory = memory_bytes or PROBE_MEMORY_BASE + 4 * size
    kwargs = {"preexec_fn": _limits(memory)} if sys.platform.startswith("linux") else {}
    proc = run_probe(child.edgeq_code(_CHILD), path, timeout_s=timeout_s,
                     hung=("opening {file} took longer than {timeout:.0f} s; refusing it",
                           "the model may be crafted to hang the runtime; set EDGEQ_PROBE_TIMEOUT to allow more time"),
                     crashed=("onnx/onnxruntime crashed ({signal}) while opening {file}; nothing was written",
                              "the model is corrupt or crafted; re-export it from its source"), **kwargs)
    result = {}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            try:
                result = json.loads(line)
            except ValueError:
                pass
            break
    if proc.returncode != 0 and not result and any(w in proc.stderr for w in _OOM_WORDS):
        result = {"memory": "out of memory"}
    if result.get("memory"):
        raise ModelError(
            f"opening {path.name} needs more than {memory / 2**30:.1f} GiB of memory ({result['memory'][:120]})",
            "the model may be crafted to exhaust memory; refusing it",
        )
    if proc.returncode != 0 or not result.get("ok"):
        raise ModelError(
            f"the check process for {path.name} failed (exit {proc.returncode})",
            "set EDGEQ_DEBUG=1 and run again to see why, or EDGEQ_PROBE=0 to skip the check",
        )


def open_source(path: str | Path, provenance: tuple[str, ...] = ()) -> Artifact:
    """A model the user passed in: checked as data in-process, then probed in a child."""
    from .onnxutil import check_external_locations, check_size, default_opset, io_spec, load_model

    path = Path(path)
    model = load_model(path, load_weights=False)  # external locations and ranges checked
    external = check_external_locations(model, path.parent)
    check_size(model, path.name)  # a tensor over 2 GiB: refused before anything is read or written
    art = Artifact(path=path, io=io_spec(model), opset=default_opset(model), provenance=provenance)
    probe_model(path, size=path.stat().st_size + external)
    return art


def _child(path: str) -> None:  # pragma: no cover - runs in the probe process
    """Run the native steps the stages will run; report only what Python cannot catch."""
    import warnings

    warnings.simplefilter("ignore")
    memory = ""
    steps = []
    try:
        import onnx
        import onnxruntime as ort
    except (MemoryError, ImportError) as e:
        if isinstance(e, MemoryError) or "bad_alloc" in str(e):
            print(json.dumps({"memory": f"import: {str(e) or 'MemoryError'}"[:200]}))
            return
        raise

    def step(name, fn):
        nonlocal memory
        try:
            fn()
            steps.append(name)
        except MemoryError as e:
            memory = memory or f"{name}: {e or 'MemoryError'}"
        except Exception as e:  # noqa: BLE001 - ordinary errors are reported by the stages
            text = str(e)
            if "bad_alloc" in text or "Failed to allocate" in text:
                memory = memory or f"{name}: {text.splitlines()[0][:200] if text else ''}"

    step("checker", lambda: onnx.checker.check_model(path, full_check=False))
    holder = {}
    from .onnxutil import needs_external_data

    try:  # a large model's weights stay in external data: shape inference needs only the graph
        head = onnx.load(path, load_external_data=False)
        big = needs_external_data(head)
    except Exception:  # noqa: BLE001 - ordinary errors are reported by the stages
        head, big = None, False
    step("load", lambda: holder.update(m=head if big else onnx.load(path)))
    if "m" in holder:
        step("shape inference", lambda: onnx.shape_inference.infer_shapes(holder["m"], strict_mode=False, data_prop=True))

    def session():
        so = ort.SessionOptions()
        so.log_severity_level = 4
        so.intra_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])

    step("session", session)
    print(json.dumps({"memory": memory} if memory else {"ok": True, "steps": steps}))
