"""Review of the session-16 work on issue 14 (batch axes, recurrent models, int8-dynamic in subgraphs):
each test here failed on the merged code before its fix."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeq.core.artifact import IoSpec, TensorSpec
from edgeq.core.batchaxis import batch_axes
from edgeq.core.data import load_samples


def _axes(*specs: tuple) -> dict[str, int | None]:
    return {k: v.axis for k, v in batch_axes([TensorSpec(n, "float32", tuple(s)) for n, s in specs]).items()}


def test_a_rank1_input_does_not_make_its_axis_the_batch_symbol(tmp_path):
    """``pos [L]`` beside ``tokens [N, L]``: L is first in pos only because pos has one axis; the batch stays
    tokens' first axis (the merged rule read tokens [4, 16] as 16 samples of [4, 1])."""
    assert _axes(("tokens", ("N", "L")), ("pos", ("L",))) == {"tokens": 0, "pos": 0}
    assert _axes(("x", (1, "L")), ("y", ("L",))) == {"x": 0, "y": 0}
    # a shared symbol first in an input of rank 2 or more still finds a state's middle batch axis
    assert _axes(("x", ("N", "T", 8)), ("h", (2, "N", 8)), ("lengths", ("N",))) == {"x": 0, "h": 1, "lengths": 0}
    io = IoSpec(inputs=(TensorSpec("tokens", "int64", ("N", "L")), TensorSpec("pos", "int64", ("L",))),
                outputs=(TensorSpec("y", "float32", ("N", "L")),))
    np.savez(tmp_path / "d.npz", tokens=np.arange(64, dtype=np.int64).reshape(4, 16), pos=np.arange(16, dtype=np.int64)[None].repeat(4, 0))
    s = load_samples(tmp_path / "d.npz", io)
    assert len(s) == 4 and s.feed(1)["tokens"].shape == (1, 16) and s.feed(1)["tokens"][0, 0] == 16


def test_rolled_calibration_runs_only_the_samples_calibration_reads(tmp_path, monkeypatch):
    """--calib-samples 8 on a 64-sample recurrent stream: fp32 rolls out the 8 calls calibration reads and the 8 after
    them that --calibration auto scores on, not 64 (the merged code rolled out the whole file, up to a million samples,
    for a calibration that reads --calib-samples of them)."""
    from edgeq.checks import recurrent
    from edgeq.core.onnxutil import artifact_from
    from edgeq.quantization import quantize
    from edgeq.quantization.int8.autocal import SCORE_SAMPLES
    from edgeq.quantization.spec import QuantSpec
    from tests.unit.test_recurrent_verdict import healthy, samples, stream

    ref, _ = healthy(tmp_path)
    data = samples(stream(64))
    rolled_n: list[int] = []
    real = recurrent.session_rollout

    def counting(sess, d, n, *a, **k):
        rolled_n.append(n)
        return real(sess, d, n, *a, **k)

    monkeypatch.setattr(recurrent, "session_rollout", counting)
    res = quantize(artifact_from(ref), QuantSpec(calibration="minmax", calib_samples=8), tmp_path / "q.onnx", data=data)
    assert rolled_n and max(rolled_n) == 8 + SCORE_SAMPLES, rolled_n
    assert any(f"rolled-out state ({8 + SCORE_SAMPLES} samples" in n for n in res.notes), res.notes
    monkeypatch.setattr(recurrent, "session_rollout", real)
    rolled, _ = recurrent.rolled_calibration(ref, data, limit=8)
    assert len(rolled) == 64
    np.testing.assert_array_equal(rolled.feed(0)["h"], data.feed(0)["h"])
    assert np.abs(rolled.feed(7)["h"]).max() > 0  # fp32's own state from the second call on
    np.testing.assert_array_equal(rolled.feed(20)["h"], data.feed(20)["h"])  # beyond the calibration count: as given


def _denoiser(path, w: np.ndarray):
    """out_sample = sample @ W: named like a state (diffusers' UNet: sample -> out_sample) but an input the data gives anew."""
    g = helper.make_graph([helper.make_node("MatMul", ["sample", "W"], ["out_sample"])], "unet",
                          [helper.make_tensor_value_info("sample", TensorProto.FLOAT, ["B", 8])],
                          [helper.make_tensor_value_info("out_sample", TensorProto.FLOAT, ["B", 8])],
                          [numpy_helper.from_array(w.astype(np.float32), "W")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def test_an_input_the_data_gives_anew_is_not_rolled_out(tmp_path):
    """'sample' -> 'out_sample' is named alike and has the same shape, but every sample gives a new 'sample': the merged
    code fed the model's output back as the next input and judged the stream (a diffusion UNet's noise prediction fed
    back as its next latent). A start state repeated on every sample, or a stream recorded from the app, is still a state."""
    import onnxruntime as ort

    from edgeq.checks.comparison import verify
    from edgeq.checks.recurrent import find_pairs, rolled_calibration, rollout
    from edgeq.core.targets import Tolerances
    from edgeq.quantization.int8 import static
    from tests.unit.test_recurrent_verdict import healthy, samples, stream

    rng = np.random.default_rng(0)
    w = rng.uniform(-1, 1, (8, 8))
    ref = _denoiser(tmp_path / "ref.onnx", w)
    cand = _denoiser(tmp_path / "cand.onnx", w + rng.normal(0, 0.02, (8, 8)))
    data = samples({"sample": rng.standard_normal((16, 1, 8)).astype(np.float32)})
    rep = verify(ref, cand, data, Tolerances(), output_names=("out_sample",))
    check = rep.tasks[0]
    assert check["kind"] != "state" and "rollout" not in check["why"], check
    # the candidate per call is what is compared: the same outputs as running each sample on its own
    s = ort.InferenceSession(str(ref), providers=["CPUExecutionProvider"])
    outs, pairs = rollout(lambda f: s.run(None, f), (data.feed(i) for i in range(len(data))), ["out_sample"])
    assert pairs == () and np.allclose(outs[0][5], s.run(None, data.feed(5))[0])
    assert rolled_calibration(ref, data) == (data, None)
    r = static.all_outputs(onnx.load(str(ref)), data, len(data))
    assert [t.kind for t in static.output_tasks(onnx.load(str(ref)), r, None, pairs=())] != ["state"]
    # a state: the start state repeated, or the stream the app recorded (h[i+1] = hn after call i)
    cell, _ = healthy(tmp_path)
    zeros = samples(stream(6))
    assert [p.input for p in rollout(lambda f: ort.InferenceSession(str(cell)).run(None, f),
                                     (zeros.feed(i) for i in range(6)), ["prob", "hn"])[1]] == ["h"]
    sc = ort.InferenceSession(str(cell), providers=["CPUExecutionProvider"])
    recorded = stream(6)
    for i in range(5):
        recorded["h"][i + 1] = sc.run(["hn"], {"x": recorded["x"][i], "h": recorded["h"][i]})[0]
    rec = samples(recorded)
    feed0, feed1 = rec.feed(0), rec.feed(1)
    outs0 = dict(zip(["prob", "hn"], sc.run(None, feed0)))
    assert [p.input for p in find_pairs(feed0, outs0, None, feed1)] == ["h"]
    assert find_pairs(feed0, outs0, None, {**feed1, "h": feed1["h"] + 1.0}) == ()  # neither: a new input each call
