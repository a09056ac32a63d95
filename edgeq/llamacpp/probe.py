"""Open a stranger's GGUF in a child process before llama.cpp opens it in edgeq's own.

llama.cpp parses a GGUF in native code; a file crafted to crash it (a segfault, an abort) would end
edgeq without its one-line error. ``probe_gguf`` loads the file with llama-cpp-python in a short-lived,
isolated child (``core/child.py``: ``-I``, a neutral folder) under a timeout: a crash or a hang there
becomes one ``ModelError``; ordinary refusals are left to the real load, which words them. Used for
bundles edgeq did not just write (``edgeq verify`` of a GGUF bundle), as ``core/isolate.py`` probes
ONNX models; ``EDGEQ_PROBE=0`` skips it, ``EDGEQ_PROBE_TIMEOUT`` sets the timeout.
"""

from __future__ import annotations

from pathlib import Path

from ..core.isolate import probing, run_probe

CHILD = (
    "import sys\n"
    "import llama_cpp\n"
    "try:\n"
    "    llama_cpp.Llama(model_path=sys.argv[1], n_ctx=16, n_batch=16, n_threads=1, verbose=False)\n"
    "except Exception:\n"
    "    pass  # a refusal: the real load reports it in its own words\n"
)


def probe_gguf(path: str | Path, *, timeout_s: float | None = None) -> None:
    """Raise ``ModelError`` if loading the GGUF at ``path`` kills or hangs a child process."""
    if not probing():
        return
    run_probe(CHILD, Path(path), timeout_s=timeout_s,
              hung=("llama.cpp took longer than {timeout:.0f} s to open {file}; refusing it",
                    "the GGUF may be crafted to hang llama.cpp; set EDGEQ_PROBE_TIMEOUT to allow more time"),
              crashed=("llama.cpp crashed ({signal}) while opening {file}; nothing was run in this process",
                       "the GGUF is corrupt or crafted; fetch an intact bundle or re-export it"))
