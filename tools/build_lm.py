"""Build the INT4 fixture: a small byte-level Llama trained here on the Python standard library.

    python tools/build_lm.py                 # the benchmark fixture (a few minutes on 2 cores)
    python tools/build_lm.py --preset tiny   # what the tests use (seconds)
    python tools/build_lm.py --preset big --untrained   # memory-bound decode model (>= 300 MB fp32)

The builder is ``fixtures/lm.py`` (shared with the tests; what each file holds is described
there). It writes under ``$EDGEQ_CACHE_DIR/fixtures/lm-<hash of the config>/`` (default
``~/.cache/edgeq/fixtures``), or under ``--cache``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fixtures import cache_dir  # noqa: E402
from fixtures.lm import PRESETS, build, export_onnx  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="default")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--untrained", action="store_true")
    ap.add_argument("--cache", type=Path)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--reexport", action="store_true", help="write the ONNX files again from the cached hf/ folder")
    a = ap.parse_args()
    cfg = PRESETS[a.preset]
    if a.steps is not None:
        cfg = replace(cfg, steps=a.steps)
    if a.untrained:
        cfg = replace(cfg, train=False, steps=0)
    if a.reexport:
        from transformers import LlamaForCausalLM

        root = Path(a.cache or cache_dir()) / f"lm-{cfg.key()}"
        export_onnx(LlamaForCausalLM.from_pretrained(str(root / "hf")).eval(), cfg, root)
        print(root)
        return
    print(build(cfg, a.cache, force=a.force))


if __name__ == "__main__":
    main()
