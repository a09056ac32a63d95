"""Task-aware checks: what each model output is (its task kind) and the metric that judges it.

``kinds.infer`` names an output's kind from its shape, its values on the verification data,
the model's ONNX metadata and the app TOML (``[outputs.NAME] task = ...``); ``metrics.score``
compares the quantized output with fp32 the way the task is used (top-1/top-5 agreement,
detections after NMS, thresholded maps, decoded sequences, embedding cosine, LM next-token
statistics). Raw cosine and max error stay in the report as information; these decide.
"""

from .kinds import KINDS, TaskSpec, infer_all, parse_override
from .metrics import TaskCheck, score
from .verdict import verdict_of

__all__ = ["KINDS", "TaskCheck", "TaskSpec", "infer_all", "parse_override", "score", "verdict_of"]
