"""``edgeq generate``: the bundle's checksums first, then edgeq's own copy of the generation loop (never the bundle's)."""

from __future__ import annotations

import sys
from argparse import Namespace
from pathlib import Path
from typing import Any

from ..errors import BundleError


def generate_cli(bundle: Path, *, prompt: str, max_new_tokens: int, temperature: float, top_k: int, top_p: float, seed: int,
                 model: str = "onnx", stream: bool = True) -> dict[str, Any]:
    from ..bundles import llmgen
    from ..bundles.reader import read_bundle

    root = str(bundle)
    if not Path(bundle).is_dir():
        raise BundleError(f"{bundle} is not a bundle folder", "pass the folder edgeq export wrote for a --task text-generation model")
    if max_new_tokens < 1 or temperature < 0 or top_k < 0 or not 0 < top_p <= 1:
        raise BundleError("bad sampling options", "use --max-new-tokens >= 1, --temperature >= 0, --top-k >= 0, 0 < --top-p <= 1")
    read_bundle(Path(bundle))  # the one reader: manifest, schema, file list, checksums
    args = Namespace(prompt=prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    try:
        return llmgen.run(root, args, model=model, as_json=not stream, out=sys.stdout)
    except llmgen.PromptError as e:
        raise BundleError(str(e), e.fix) from None
    except (FileNotFoundError, ValueError) as e:
        raise BundleError(f"{Path(bundle).name}: {e}", "edgeq generate needs a bundle exported with --task text-generation from a folder with its tokenizer") from None
