"""Recurrent models (edgeq/checks/recurrent.py): outputs fed back as inputs are found by name and shape,
the samples are rolled out as one stream (each model fed its own state), the task outputs decide and the
state is information.

The models are a hand-written cell ``hn = tanh(x W + h U)``, ``prob = sigmoid(hn v + b)`` built here with
onnx.helper; each candidate computes a known distortion of the reference, so each test knows the verdict.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeq.checks.comparison import verify
from edgeq.checks.recurrent import find_pairs, named_alike, rollout
from edgeq.core.data import SampleSet
from edgeq.core.targets import Tolerances
from edgeq.errors import EdgeqError

TOL = Tolerances()
X, H = 4, 8


def cell(path: Path, w: np.ndarray, u: np.ndarray, v: np.ndarray | None, b: float = 0.0, *,
         names: tuple[str, str, str] = ("h", "hn", "prob")) -> Path:
    """x [B, 4], h [B, 8] -> prob [B, 1] (omitted when ``v`` is None), hn [B, 8]."""
    h_in, h_out, p_out = names
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("MatMul", [h_in, "U"], ["hu"]),
             helper.make_node("Add", ["xw", "hu"], ["pre"]), helper.make_node("Tanh", ["pre"], [h_out])]
    inits = {"W": w, "U": u}
    outputs = [helper.make_tensor_value_info(h_out, TensorProto.FLOAT, ["B", H])]
    if v is not None:
        nodes += [helper.make_node("MatMul", [h_out, "V"], ["hv"]), helper.make_node("Add", ["hv", "b"], ["zb"]),
                  helper.make_node("Sigmoid", ["zb"], [p_out])]
        inits |= {"V": v, "b": np.array([b], np.float32)}
        outputs.insert(0, helper.make_tensor_value_info(p_out, TensorProto.FLOAT, ["B", 1]))
    g = helper.make_graph(nodes, "cell", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", X]),
                                          helper.make_tensor_value_info(h_in, TensorProto.FLOAT, ["B", H])], outputs,
                          [numpy_helper.from_array(np.asarray(a, np.float32), k) for k, a in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def stream(n: int = 24, seed: int = 0, h_name: str = "h") -> dict[str, np.ndarray]:
    """``n`` calls stacked on a new first axis: x [n, 1, 4] in [0, 1], the state zeros (the app's start)."""
    rng = np.random.default_rng(seed)
    return {"x": rng.uniform(0, 1, (n, 1, X)).astype(np.float32), h_name: np.zeros((n, 1, H), np.float32)}


def samples(arrays: dict[str, np.ndarray]) -> SampleSet:
    return SampleSet(arrays=dict(arrays), stacked={k: True for k in arrays}, labels=None, source="test")


def _task(report, name):
    return next(t for t in report.tasks if t["output"] == name)


# -- the healthy model: the raw state differs, the task does not -------------------------------------------------------

def healthy(tmp_path: Path, names: tuple[str, str, str] = ("h", "hn", "prob")) -> tuple[Path, Path]:
    """Dims 0-3 of the state carry the task (the head reads them, they feed only themselves); the candidate's
    dims 4-7 differ (another input weight), as quantization noise in state the head never reads."""
    rng = np.random.default_rng(1)
    w = rng.uniform(-1, 1, (X, H)).astype(np.float32)
    u = np.zeros((H, H), np.float32)
    u[:4, :4] = rng.uniform(-0.3, 0.3, (4, 4))
    u[4:, 4:] = rng.uniform(-0.3, 0.3, (4, 4))
    v = np.r_[np.full(4, 2.0), np.zeros(4)].astype(np.float32)[:, None]
    wc = w.copy()
    wc[:, 4:] += rng.normal(0, 0.6, (X, 4)).astype(np.float32)
    return cell(tmp_path / "ref.onnx", w, u, v, -0.5, names=names), cell(tmp_path / "cand.onnx", wc, u, v, -0.5, names=names)


def test_healthy_state_passes_through_the_task_over_the_rollout(tmp_path):
    ref, cand = healthy(tmp_path)
    data = samples(stream())
    old = verify(ref, cand, data, TOL, output_names=("prob", "hn"), tasks={"hn": {"task": "regression"}})  # per call, state by cosine (as silero-vad's stateN was judged)
    assert not old.passed and _task(old, "hn")["metrics"]["centred_cosine"] < TOL.min_cosine, old.tasks
    rep = verify(ref, cand, data, TOL, output_names=("prob", "hn"))
    assert rep.passed, rep.failures
    st, prob = _task(rep, "hn"), _task(rep, "prob")
    assert st["kind"] == "state" and st["passed"] and not st["metrics"] and not st["limits"]  # information only
    assert st["info"]["feeds"] == "h" and st["info"]["steps"] == 24 and st["info"]["cosine"] < TOL.min_cosine
    assert "24 calls rolled out" in st["why"] and "24-call rollout" in prob["why"]
    assert prob["kind"] == "classification" and prob["metrics"]["decision_agreement"] == 1.0


# -- a state that drifts: invisible one call at a time from the data's state -------------------------------------------

def drifting(tmp_path: Path, v_on: bool = True) -> tuple[Path, Path]:
    """The candidate's recurrent weight is larger: from the data's zero state every call is identical; fed its own
    state its hidden values climb toward saturation and its probability crosses 0.5 after a few calls."""
    w = np.full((X, H), 0.15, np.float32)
    u = 0.2 * np.eye(H, dtype=np.float32)
    v = np.full((H, 1), 1.0, np.float32) if v_on else None
    return cell(tmp_path / "ref.onnx", w, u, v, -5.5), cell(tmp_path / "cand.onnx", w, 1.2 * np.eye(H, dtype=np.float32), v, -5.5)


def test_drifting_state_fails_over_the_rollout(tmp_path):
    ref, cand = drifting(tmp_path)
    data = samples(stream())
    per_call = verify(ref, cand, data, TOL, output_names=("prob", "hn"), tasks={"hn": {"task": "regression"}})
    assert per_call.passed, per_call.failures  # each call from the data's zero state: the candidate looks perfect
    rep = verify(ref, cand, data, TOL, output_names=("prob", "hn"))
    assert not rep.passed and any(f.startswith("output 'prob' (classification)") for f in rep.failures), rep.failures
    assert _task(rep, "prob")["metrics"]["decision_agreement"] < 0.5 and _task(rep, "hn")["passed"]
    # it diverges only after some calls: the first ones agree
    import onnxruntime as ort

    outs = {}
    for name, path in (("ref", ref), ("cand", cand)):
        s = ort.InferenceSession(str(path))
        outs[name], _ = rollout(lambda f: s.run(None, f), (data.feed(i) for i in range(len(data))), ["prob", "hn"])
    dec = [(r > 0.5) == (c > 0.5) for r, c in zip(outs["ref"][0], outs["cand"][0])]
    assert all(d.all() for d in dec[:2]) and not dec[-1].all()


def test_only_state_outputs_are_judged_by_their_cosine_over_the_rollout(tmp_path):
    ref, cand = drifting(tmp_path, v_on=False)
    data = samples(stream())
    rep = verify(ref, cand, data, TOL, output_names=("hn",))
    st = _task(rep, "hn")
    assert not rep.passed and st["kind"] == "state" and st["metrics"]["cosine"] < TOL.min_cosine and "every output is a state" in st["why"]
    same = verify(ref, ref, data, TOL, output_names=("hn",))
    assert same.passed and _task(same, "hn")["metrics"]["cosine"] == pytest.approx(1.0)


# -- the --max-drop search and the --prefer gate score the rollout too -----------------------------------------------

def test_search_and_gate_scores_use_the_rolled_out_task(tmp_path):
    from edgeq.checks.recurrent import session_rollout
    from edgeq.quantization.int8 import qdq, static

    ref, cand = drifting(tmp_path)
    data = samples(stream())
    rm = onnx.load(str(ref))
    r, pairs = session_rollout(qdq.cpu_session(rm, None), data, len(data))  # as the --max-drop search streams fp32
    specs = static.output_tasks(rm, r, None, pairs=pairs)
    assert [s.kind for s in specs] == ["classification", "state"]
    fp32 = static.score_outputs(specs, r, r, None)
    m = static.score_outputs(specs, static.all_outputs(onnx.load(str(cand)), data, len(data)), r, None)
    drops = dict(zip(m.outputs, m.drops_from(fp32)))
    assert drops["prob"] > 0.5 and drops["hn"] == 0.0  # the task output decides; the state is information
    assert m.label(m.worst(fp32)) == "prob: agreement" and m.metrics[1].name == "state"


# -- pairing rules -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("out,inp", [("stateN", "state"), ("hn", "h"), ("hn", "h0"), ("h_n", "h0"), ("cn", "c"),
                                     ("x_out", "x_in"), ("out_x", "in_x"), ("new_state", "state"), ("next_state", "state"),
                                     ("state_out", "state"), ("new_cache", "cache"), ("conv_cache", "conv_cache_in")])
def test_named_alike(out, inp):
    assert named_alike(out, inp)


@pytest.mark.parametrize("out,inp", [("output", "input"), ("y", "x"), ("state", "state"), ("present.0.key", "past_key_values.0.key"),
                                     ("logits", "input_ids"), ("ids", "input_ids"), ("conv10", "conv1"), ("hn", "c"),
                                     ("in", "i")])
def test_not_named_alike(out, inp):
    assert not named_alike(out, inp)


def test_pairs_need_the_same_shape_and_type():
    feed = {"x": np.zeros((1, 4), np.float32), "h": np.zeros((1, 8), np.float32), "c": np.zeros((1, 8), np.float32)}
    outs = {"hn": np.zeros((1, 8), np.float32), "cn": np.zeros((1, 16), np.float32), "y": np.zeros((1, 8), np.float32)}
    pairs = find_pairs(feed, outs)
    assert [(p.output, p.input) for p in pairs] == [("hn", "h")]  # cn has another shape; y is named like nothing
    assert find_pairs(feed, {"hn": np.zeros((1, 8), np.float64)}) == ()  # another element type


def test_app_toml_declares_and_denies_pairs(tmp_path):
    from edgeq.core.appio import load_io_spec
    from edgeq.core.onnxutil import artifact_from

    path = cell(tmp_path / "m.onnx", np.ones((X, H), np.float32), np.eye(H, dtype=np.float32), np.ones((H, 1), np.float32),
                names=("memory", "z", "prob"))
    toml = tmp_path / "app.toml"
    toml.write_text('[outputs.z]\ntask = "state"\nfeeds = "memory"\n')
    tasks = load_io_spec(toml, artifact_from(path).io)["outputs"]
    feed = {"x": np.zeros((1, 4), np.float32), "memory": np.zeros((1, 8), np.float32)}
    outs = {"prob": np.zeros((1, 1), np.float32), "z": np.zeros((1, 8), np.float32)}
    assert find_pairs(feed, outs) == ()  # 'z' is not named like 'memory'
    assert [(p.output, p.input) for p in find_pairs(feed, outs, tasks)] == [("z", "memory")]
    rep = verify(path, path, samples(stream(6, h_name="memory")), TOL, output_names=("prob", "z"), tasks=tasks)
    assert _task(rep, "z")["kind"] == "state" and _task(rep, "z")["info"]["feeds"] == "memory" and rep.passed
    # deny: another declared task keeps the old per-call comparison
    assert find_pairs({"h": feed["memory"]}, {"hn": outs["z"]}, {"hn": {"task": "regression"}}) == ()
    # a declared pair that cannot be: one line, exit 2
    with pytest.raises(EdgeqError) as e:
        find_pairs(feed, outs, {"z": {"task": "state", "feeds": "nope"}})
    assert e.value.exit_code == 2 and "feeds" in e.value.hint
    with pytest.raises(EdgeqError) as e:
        find_pairs(feed, {"z": np.zeros((1, 4), np.float32)}, {"z": {"task": "state", "feeds": "memory"}})
    assert e.value.exit_code == 2 and "shape" in e.value.message
    toml.write_text('[outputs.z]\ntask = "state"\nfeeds = "nope"\n')  # refused when the file is read, before any work
    with pytest.raises(EdgeqError, match="feeds names no input of the model"):
        load_io_spec(toml, artifact_from(path).io)
    toml.write_text('[outputs.prob]\ntask = "classification"\nfeeds = "memory"\n')
    with pytest.raises(EdgeqError, match="'feeds' does not apply"):
        load_io_spec(toml, artifact_from(path).io)


# -- calibration on the rolled-out state ---------------------------------------------------------------------------------

def test_calibration_sees_the_state_the_app_feeds(tmp_path):
    import onnxruntime as ort

    from edgeq.checks.recurrent import rolled_calibration
    from edgeq.core.onnxutil import artifact_from
    from edgeq.quantization import quantize
    from edgeq.quantization.spec import QuantSpec

    ref, _ = healthy(tmp_path)
    data = samples(stream(32))
    rolled, note = rolled_calibration(ref, data)
    assert note and "'h' on fp32's own rolled-out state" in note and len(rolled) == 32
    s = ort.InferenceSession(str(ref))
    np.testing.assert_array_equal(rolled.feed(0)["h"], data.feed(0)["h"])  # the first call keeps the data's state
    np.testing.assert_allclose(rolled.feed(5)["h"], s.run(["hn"], rolled.feed(4))[0], rtol=1e-6)  # then fp32's own
    other = cell(tmp_path / "nostate.onnx", np.ones((X, H), np.float32), np.eye(H, dtype=np.float32), None, names=("memory", "z", "p"))
    assert rolled_calibration(other, samples(stream(4, h_name="memory")))[1] is None  # nothing fed back: unchanged
    # calibrated on the file's zero state, the int8 model clips the state the app feeds: the rollout sees it
    old = quantize(artifact_from(ref), QuantSpec(calibration="minmax"), tmp_path / "q_old.onnx", data=data, tasks={"hn": {"task": "regression"}})
    new = quantize(artifact_from(ref), QuantSpec(calibration="minmax"), tmp_path / "q_new.onnx", data=data)
    assert any("rolled-out state" in n for n in new.notes) and not any("rolled-out state" in n for n in old.notes)
    assert not verify(ref, old.artifact.path, data, TOL, output_names=("prob", "hn")).passed
    assert verify(ref, new.artifact.path, data, TOL, output_names=("prob", "hn")).passed


def test_calibration_keeps_states_the_data_records(tmp_path):
    from edgeq.checks.recurrent import rolled_calibration

    import onnxruntime as ort

    ref, _ = healthy(tmp_path)
    arrays = stream(8)
    arrays["h"][0] = np.random.default_rng(3).uniform(-0.5, 0.5, arrays["h"][0].shape)
    s = ort.InferenceSession(str(ref), providers=["CPUExecutionProvider"])
    for i in range(7):  # recorded from the app: each call's state is the one before's hn
        arrays["h"][i + 1] = s.run(["hn"], {"x": arrays["x"][i], "h": arrays["h"][i]})[0]
    data = samples(arrays)
    kept, note = rolled_calibration(ref, data)
    assert kept is data and "the states the data gives" in note
    # states that neither repeat a start state nor follow the stream: 'h' is an input the data gives, not paired
    arrays["h"] = np.random.default_rng(3).uniform(-0.5, 0.5, arrays["h"].shape).astype(np.float32)
    data = samples(arrays)
    assert rolled_calibration(ref, data) == (data, None)
