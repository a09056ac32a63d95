"""What onnxruntime returns for one output, as a numpy array every stage can compare and save without pickle.

Classic models converted to ONNX (scikit-learn through skl2onnx, LightGBM/XGBoost through onnxmltools) return
non-tensor outputs: a ZipMap's ``seq(map(int64|string, float))`` (one dict of class -> probability per sample)
and string tensors (class labels), which onnxruntime hands back as a list of dicts and an object array.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def as_array(value: Any) -> np.ndarray:
    """``value`` as a plain numpy array: a sequence of maps becomes float32 ``[N, C]`` with its columns in the
    maps' sorted key order (a ZipMap's class probabilities, as with ``zipmap=False``); a string tensor held as
    objects becomes a unicode array (savable with ``allow_pickle=False``); a tensor is returned as it is."""
    if isinstance(value, np.ndarray):
        if value.dtype == object and all(isinstance(v, str) for v in value.ravel()):
            return value.astype(str)
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, dict) for v in value):
        keys = sorted(value[0], key=lambda k: (isinstance(k, str), k))
        return np.array([[float(m.get(k, np.nan)) for k in keys] for m in value], dtype=np.float32).reshape(len(value), len(keys))
    if isinstance(value, (list, tuple)) and not value:
        return np.zeros((0, 0), np.float32)
    return np.asarray(value)

