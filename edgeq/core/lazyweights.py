"""One weight at a time from a model whose weights stay in external data.

``load_model(path, load_weights=False)`` (which checks every external location first) gives the
graph; ``tensor_array`` reads one tensor's bytes into a numpy array without storing them in the
model, so a stage that rewrites weights one by one (weight-only quantization of a 1B LLM) holds
one float tensor at a time instead of all of them. ``load_rest`` reads what is still external
into the model before it is saved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def tensor_array(t: Any, base_dir: str | Path) -> np.ndarray:
    """The array of initializer ``t``; external bytes are read into a throw-away copy, never into ``t``."""
    from onnx import TensorProto, numpy_helper
    from onnx.external_data_helper import load_external_data_for_tensor

    if t.data_location != TensorProto.EXTERNAL:
        return numpy_helper.to_array(t)
    tmp = TensorProto()
    tmp.CopyFrom(t)  # no bytes yet: dims, type and the location only
    load_external_data_for_tensor(tmp, str(base_dir))
    return numpy_helper.to_array(tmp)


def load_rest(model: Any, base_dir: str | Path) -> int:
    """Read every still-external initializer of ``model`` into it (what a stage kept as is); returns how many."""
    from onnx import TensorProto
    from onnx.external_data_helper import load_external_data_for_tensor

    n = 0
    for t in model.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            load_external_data_for_tensor(t, str(base_dir))
            t.data_location = TensorProto.DEFAULT
            del t.external_data[:]
            n += 1
    return n
