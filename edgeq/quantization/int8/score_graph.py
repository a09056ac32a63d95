"""``auto``'s candidate scoring with the output noise energy reduced in the graph.

Each candidate's score needs, per float output and scoring sample, the noise energy
``sum((y_ref - y)^2)`` against the fp32 output (``autocal.output_energies``). A detector's map is
~1M values a sample: copied out of onnxruntime and subtracted in numpy, once per candidate and
sample. Here the candidate's session gets the fp32 output as an extra input and computes the sum
itself, in float64 as numpy did (both outputs cast to double, ``Sub``, ``ReduceSumSquare``): only
the sum and the output's shape leave the session. The signal energy depends on the reference
only, so it is summed once per sample (the same numpy sum as before), not once per candidate.

A reference output with non-finite entries (an ``-inf`` mask) is compared on its finite entries
only: that output is fetched whole for that sample and summed in numpy as before.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

_P = "__edgeq_score/"  # prefix of the names added to the candidate's graph


def signal_energy(a: np.ndarray) -> float:
    """Sum of squares of ``a`` (a raveled float array) in float64 without a float64 copy."""
    return float(np.einsum("i,i->", a, a, dtype=np.float64))


class Reference:
    """The fp32 outputs on the scoring samples, and what every candidate compares with them."""

    def __init__(self, outputs: list[list[np.ndarray]]) -> None:
        self.outputs = outputs
        first = outputs[0] if outputs else []
        self.float_outputs = [j for j, o in enumerate(first) if np.asarray(o).dtype.kind == "f"]
        # per sample and float output: the finite reference entries' signal energy, or None where some
        # entry is not finite (that output is then compared in numpy, on its finite entries)
        self.signal: list[dict[int, float | None]] = []
        for r in outputs:
            row: dict[int, float | None] = {}
            for j in self.float_outputs:
                a = np.asarray(r[j]).ravel()
                row[j] = signal_energy(a) if np.isfinite(a).all() else None
            self.signal.append(row)


def energy_model(model: Any, ref: Reference) -> tuple[Any, dict[int, tuple[str, str, str]]]:
    """``model`` (modified in place: pass a model nobody else uses, e.g. a freshly written candidate)
    with, per float output j, an input for the fp32 output and two more outputs: the noise energy
    against it (float64) and the output's shape. Returns the model and j -> (input, noise, shape)."""
    from onnx import TensorProto, helper

    g = model.graph
    names: dict[int, tuple[str, str, str]] = {}
    for j in ref.float_outputs:
        if j >= len(g.output):
            continue
        out = g.output[j]
        elem = helper.np_dtype_to_tensor_dtype(np.asarray(ref.outputs[0][j]).dtype)  # what is fed: the fp32 run's output
        r, n, s = f"{_P}ref{j}", f"{_P}noise{j}", f"{_P}shape{j}"
        g.input.append(helper.make_tensor_value_info(r, elem, None))
        g.node.extend([
            helper.make_node("Cast", [out.name], [f"{_P}y{j}"], name=f"{_P}y{j}", to=TensorProto.DOUBLE),
            helper.make_node("Cast", [r], [f"{_P}r{j}"], name=f"{_P}r{j}", to=TensorProto.DOUBLE),
            helper.make_node("Sub", [f"{_P}r{j}", f"{_P}y{j}"], [f"{_P}d{j}"], name=f"{_P}d{j}"),
            # keepdims=1: onnxruntime refuses keepdims=0 on a 0-sized axis
            helper.make_node("ReduceSumSquare", [f"{_P}d{j}"], [n], name=n, keepdims=1),
            helper.make_node("Shape", [out.name], [s], name=s),
        ])
        g.output.extend([helper.make_tensor_value_info(n, TensorProto.DOUBLE, None),
                         helper.make_tensor_value_info(s, TensorProto.INT64, None)])
        names[j] = (r, n, s)
    return model, names


def numpy_energy(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """One output on one sample: (signal, noise) energies over the finite entries of the reference ``a``, in
    float64 without float64 copies of the outputs (``autocal.output_energies`` sums these)."""
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if a.shape != b.shape:
        return 0.0, math.inf
    fin = np.isfinite(a)
    if not fin.all():
        a, b = a[fin], b[fin]
    d = np.subtract(a, b, dtype=np.float64)
    nd = float(np.dot(d, d))
    return signal_energy(a), nd if math.isfinite(nd) else math.inf


class Scorer:
    """One candidate's session: scoring sample k -> per output (signal, noise) energies, None for an
    output that is not float (as ``autocal.output_energies`` gives them for one sample)."""

    def __init__(self, sess: Any, ref: Reference, names: dict[int, tuple[str, str, str]], outputs: list[str]) -> None:
        self.sess, self.ref, self.names, self.outputs = sess, ref, names, outputs
        self.inputs = {i.name for i in sess.get_inputs()}

    def __call__(self, k: int, feed: dict[str, np.ndarray]) -> list[tuple[float, float] | None]:
        ref = self.ref.outputs[k]
        f = {n: v for n, v in feed.items() if n in self.inputs}
        fetch: list[str] = []
        for j in self.ref.float_outputs:
            if j in self.names:  # an input of the session: fed even where its sum is not used
                f[self.names[j][0]] = np.asarray(ref[j])
            if j in self.names and self.ref.signal[k][j] is not None:
                fetch += list(self.names[j][1:])
            else:  # non-finite reference entries (or no such graph output): the output itself, compared in numpy
                fetch.append(self.outputs[j])
        got = dict(zip(fetch, self.sess.run(fetch, f)))
        out: list[tuple[float, float] | None] = [None] * len(ref)
        for j in self.ref.float_outputs:
            sig = self.ref.signal[k][j]
            if j in self.names and sig is not None:
                _, n, s = self.names[j]
                if int(np.prod(got[s])) != np.asarray(ref[j]).size:  # as numpy compared them: raveled
                    out[j] = (0.0, math.inf)
                    continue
                nd = float(np.asarray(got[n]).reshape(-1)[0])
                out[j] = (sig, nd if math.isfinite(nd) else math.inf)
            else:
                out[j] = numpy_energy(ref[j], got[self.outputs[j]])
        return out


def scorer(model: Any, ref: Reference, open_session: Any) -> Scorer:
    """A ``Scorer`` on ``model`` (modified in place); ``open_session(model)`` opens its session."""
    outputs = [o.name for o in model.graph.output]
    model, names = energy_model(model, ref)
    return Scorer(open_session(model), ref, names, outputs)
