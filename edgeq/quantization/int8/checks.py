"""Checks on a quantized model before it is written (issue 8: calibration and int32 bias).

``bias_overflow`` compares each quantized Conv/Gemm bias with the fp32 one:

- *clipped*: the int32 bias hit the int32 limit, so the node computes a wrong bias
  (onnxruntime clips and only logs a warning; it happens with asymmetric weights, where
  it cannot raise the weight scale). The caller re-quantizes with these nodes kept in float.
- *adjusted*: onnxruntime raised the weight scale so the bias fits (symmetric weights,
  QDQ and QOperator): the node stays quantized; the report names it and the factor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import CalibrationError, EdgeqError
from ...core.onnxutil import iter_initializers, iter_nodes

INT32_MAX = np.iinfo(np.int32).max
INT32_MIN = np.iinfo(np.int32).min
BIAS_OPS = ("Conv", "Gemm", "ConvTranspose")
# QOperator forms: (weight input, weight scale input, bias input)
_QOP = {"QLinearConv": (3, 4, 8)}


@dataclass(frozen=True)
class BiasCheck:
    clipped: tuple[str, ...] = ()
    adjusted: tuple[tuple[str, float], ...] = ()  # (node, factor the weight scale was raised by)

    def notes(self) -> list[str]:
        out = [
            f"weight scale of '{n}' raised x{f:.3g} so its bias fits int32 (tiny weights, large bias)"
            for n, f in self.adjusted
        ]
        return out


def _node_key(node: Any) -> str:
    return node.name or (node.output[0] if node.output else "")


def _arr(inits: dict[str, Any], name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    from onnx import TensorProto

    t = inits.get(name)
    if t is None or (t.data_location == TensorProto.EXTERNAL and not t.HasField("raw_data")):
        return None  # weights left in external data are not read here (never from the current directory)
    return numpy_helper.to_array(t)


def bias_overflow(fp32_model: Any, q_model: Any, *, reduce_range: bool = False) -> BiasCheck:
    """Find quantized nodes whose int32 bias was clipped or whose weight scale was raised."""
    f_inits = {i.name: i for i in iter_initializers(fp32_model.graph)}
    f_nodes = {_node_key(n): n for n in iter_nodes(fp32_model.graph) if n.op_type in BIAS_OPS}
    q_inits = {i.name: i for i in iter_initializers(q_model.graph)}
    producer = {o: n for n in iter_nodes(q_model.graph) for o in n.output}
    clipped: list[str] = []
    adjusted: list[tuple[str, float]] = []
    for node in iter_nodes(q_model.graph):
        key = _node_key(node)
        if key not in f_nodes and key.endswith("_quant"):  # QOperator renames conv -> conv_quant
            key = key[: -len("_quant")]
        fnode = f_nodes.get(key)
        if fnode is None or len(fnode.input) < 3 or len(node.input) < 3:
            continue
        if node.op_type in _QOP:
            wi, si, bi = _QOP[node.op_type]
            if len(node.input) <= bi:
                continue
            qbias, wq, wscale = _arr(q_inits, node.input[bi]), _arr(q_inits, node.input[wi]), _arr(q_inits, node.input[si])
        elif node.op_type in BIAS_OPS:
            bdq, wdq = producer.get(node.input[2]), producer.get(node.input[1])
            if bdq is None or wdq is None or bdq.op_type != "DequantizeLinear" or wdq.op_type != "DequantizeLinear":
                continue
            qbias, wq, wscale = _arr(q_inits, bdq.input[0]), _arr(q_inits, wdq.input[0]), _arr(q_inits, wdq.input[1])
        else:
            continue
        if qbias is None or qbias.dtype != np.int32:
            continue
        if np.any(qbias >= INT32_MAX) or np.any(qbias <= INT32_MIN):
            clipped.append(key)
            continue
        w = _arr(f_inits, fnode.input[1])
        if w is None or wq is None or wscale is None or wq.dtype != np.int8:
            continue
        # symmetric int8 weights normally use the full range: max |q| is 127 per channel
        # (or per tensor); a much smaller max means the scale was raised for the bias
        wscale = wscale.astype(np.float64).ravel()
        axis = 1 if node.op_type == "ConvTranspose" else 0
        if node.op_type == "Gemm" and any(a.name == "transB" and a.i == 0 for a in fnode.attribute):
            axis = 1
        wmax = np.abs(np.moveaxis(w.astype(np.float64), axis, 0).reshape(w.shape[axis], -1)).max(axis=1)
        if wscale.size == 1:
            wmax = wmax.max(keepdims=True)
        if wmax.shape != wscale.shape:
            continue
        needed = wmax / (63.5 if reduce_range else 127.5)
        with np.errstate(divide="ignore", invalid="ignore"):
            factor = np.where(needed > 0, wscale / needed, 1.0)
        if np.nanmax(factor) > 1.5:
            adjusted.append((key, float(np.nanmax(factor))))
    return BiasCheck(tuple(clipped), tuple(adjusted))


def explain_quantizer_failure(e: BaseException) -> EdgeqError | None:
    """A clear error for quantizer failures whose cause is the calibration data."""
    text = str(e)
    if isinstance(e, AssertionError) and "scale" in text or "not finite" in text:
        return CalibrationError(
            "calibration gave a non-finite range: the model's activations overflow float32 (Inf/NaN) on the calibration data",
            "check the calibration data for extreme values and scale it as in training",
        )
    return None


def check_operator_scales(model: Any) -> None:
    """``check_scales`` for QOperator models: every float ``*scale*`` initializer feeding a
    QLinear*/QGemm/QAttention node must be finite and positive."""
    from onnx import TensorProto, numpy_helper

    from ...errors import QuantizationError

    inits = {i.name: i for i in iter_initializers(model.graph)}
    for n in iter_nodes(model.graph):
        if not (n.op_type.startswith("QLinear") or n.op_type in ("QGemm", "QAttention")):
            continue
        for name in n.input:
            t = inits.get(name)
            if t is None or "scale" not in name or t.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16):
                continue
            v = numpy_helper.to_array(t).astype(np.float64)
            if not np.all(np.isfinite(v)) or np.any(v <= 0):
                raise QuantizationError(
                    f"quantization produced an invalid scale for '{name}' ({v.ravel()[:4].tolist()})",
                    "check the calibration data for extreme or constant values",
                )
