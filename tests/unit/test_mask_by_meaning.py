"""The token mask is found by meaning, not only under the name ``attention_mask`` (issue 14): BERT-style
``input_mask``, ``padding_mask`` (non-zero = padding), or any name the app file declares with
``[inputs.NAME] mask = ...``; and only when its values are 0/1 in the token input's shape. The candidate here
differs from the reference only at padded positions, so an unmasked cosine fails and the masked one passes."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeq.checks.comparison import verify
from edgeq.checks.masking import find_mask, token_masks
from edgeq.cli import app
from edgeq.core.data import SampleSet
from edgeq.core.targets import load_target

V, H, T, N = 20, 16, 8, 12


def _encoder(path, mask_name: str, *, pad_noise: bool, padding_marks: bool = False):
    """input_ids, MASK [N, T] -> Gather -> MatMul -> last_hidden_state [N, T, H]; with ``pad_noise`` a large
    vector is added at every padded position (where MASK is 0, or 1 when ``padding_marks``)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 1, (V, H)).astype(np.float32), "table"),
             numpy_helper.from_array(rng.normal(0, 0.3, (H, H)).astype(np.float32), "w")]
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["e"]), helper.make_node("MatMul", ["e", "w"], ["h"]),
             helper.make_node("Cast", [mask_name], ["mf"], to=TensorProto.FLOAT)]
    out = "h"
    if pad_noise:
        inits += [numpy_helper.from_array(np.float32(1.0).reshape(()), "one"),
                  numpy_helper.from_array(np.full(H, -5.0, np.float32), "noise"),
                  numpy_helper.from_array(np.array([-1], np.int64), "last")]
        nodes += [helper.make_node("Identity", ["mf"], ["pad"]) if padding_marks else helper.make_node("Sub", ["one", "mf"], ["pad"]),
                  helper.make_node("Unsqueeze", ["pad", "last"], ["pad3"]),
                  helper.make_node("Mul", ["pad3", "noise"], ["n"]), helper.make_node("Add", ["h", "n"], ["hn"])]
        out = "hn"
    else:  # the mask input is used either way (an unused input would be dropped by optimizers)
        inits.append(numpy_helper.from_array(np.float32(0.0).reshape(()), "zero"))
        nodes += [helper.make_node("Mul", ["mf", "zero"], ["m0"]), helper.make_node("Unsqueeze", ["m0", "lastax"], ["m3"]),
                  helper.make_node("Add", ["h", "m3"], ["hn"])]
        inits.append(numpy_helper.from_array(np.array([-1], np.int64), "lastax"))
        out = "hn"
    nodes.append(helper.make_node("Identity", [out], ["last_hidden_state"]))
    g = helper.make_graph(nodes, "enc", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", T]),
                                         helper.make_tensor_value_info(mask_name, TensorProto.INT64, ["N", T])],
                          [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["N", T, H])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def _arrays(mask_name: str, *, padding_marks: bool = False):
    rng = np.random.default_rng(1)
    ids = rng.integers(1, V, (N, T)).astype(np.int64)
    real = np.ones((N, T), np.int64)
    real[:, T // 2:] = 0  # half of every sample is padding
    ids[real == 0] = 0
    return {"input_ids": ids, mask_name: (1 - real) if padding_marks else real}


def _data(arrays, roles=()) -> SampleSet:
    return SampleSet(arrays=arrays, stacked={k: False for k in arrays}, labels=None, source="test", mask_roles=tuple(roles))


def _verify(tmp_path, name, *, padding_marks=False, roles=()):
    ref = _encoder(tmp_path / "ref.onnx", name, pad_noise=False)
    cand = _encoder(tmp_path / "cand.onnx", name, pad_noise=True, padding_marks=padding_marks)
    report = verify(ref, cand, _data(_arrays(name, padding_marks=padding_marks), roles), load_target("cpu-x86_64").tolerances,
                    output_names=("last_hidden_state",))
    return report, report.tasks[0]


def test_bert_input_mask_is_read_as_the_token_mask(tmp_path):
    report, check = _verify(tmp_path, "input_mask")
    assert check["kind"] == "embedding"
    assert report.passed and check["info"]["vectors"] == N * T // 2, check  # only the real tokens are scored
    assert check["info"]["token_mask"].startswith("input_mask")


def test_padding_mask_marks_padding(tmp_path):
    report, check = _verify(tmp_path, "padding_mask", padding_marks=True)
    assert report.passed and check["info"]["vectors"] == N * T // 2, check


def test_unknown_name_is_not_a_mask_unless_the_app_file_says_so(tmp_path):
    report, check = _verify(tmp_path, "seg")
    assert not report.passed and check["info"]["vectors"] == N * T  # no mask: padding counted, and it fails
    (tmp_path / "declared").mkdir()
    report, check = _verify(tmp_path / "declared", "seg", roles=(("seg", "real"),))
    assert report.passed and check["info"]["vectors"] == N * T // 2


def test_values_and_shape_must_say_mask(tmp_path):
    a = _arrays("mask")
    assert find_mask(_data(a)).input == "mask"
    not_binary = {**a, "mask": a["mask"] * 3}
    assert find_mask(_data(not_binary)) is None and token_masks(_data(not_binary), N) is None
    other_shape = {"input_ids": a["input_ids"], "mask": np.ones((N, T + 1), np.int64)}
    assert find_mask(_data(other_shape)) is None
    assert find_mask(_data(a, (("mask", "none"),))) is None  # the app file: not a token mask
    flipped = token_masks(_data(_arrays("pad_mask", padding_marks=True)), 2)
    assert flipped[0].sum() == T // 2 and bool(flipped[0][0, 0])  # non-zero in pad_mask = padding: the real tokens are its zeros


def test_verify_command_reads_the_app_file_declaration(runner, tmp_path):
    ref = _encoder(tmp_path / "ref.onnx", "seg", pad_noise=False)
    cand = _encoder(tmp_path / "cand.onnx", "seg", pad_noise=True)
    np.savez(tmp_path / "d.npz", **_arrays("seg"))
    base = ["verify", str(cand), "--reference", str(ref), "--data", str(tmp_path / "d.npz")]
    assert runner.invoke(app, base).exit_code == 1
    (tmp_path / "app.toml").write_text('[inputs.seg]\nmask = "real"\n')
    r = runner.invoke(app, [*base, "--preprocess", str(tmp_path / "app.toml")])
    assert r.exit_code == 0, r.output
    (tmp_path / "bad.toml").write_text('[inputs.seg]\nmask = "yes"\n')
    r = runner.invoke(app, [*base, "--preprocess", str(tmp_path / "bad.toml")])
    assert r.exit_code == 2 and "mask must be one of real, padding, none" in r.stderr


def test_the_search_scores_an_input_mask_model_on_the_real_tokens(tmp_path):
    """--max-drop / --prefer scoring (static.score_outputs) reads the same mask as the verdict."""
    from edgeq.quantization.int8 import static

    ref, cand = _encoder(tmp_path / "ref.onnx", "input_mask", pad_noise=False), _encoder(tmp_path / "cand.onnx", "input_mask", pad_noise=True)
    data = _data(_arrays("input_mask"))
    ro = static.all_outputs(onnx.load(str(ref)), data, len(data))
    co = static.all_outputs(onnx.load(str(cand)), data, len(data))
    specs = static.output_tasks(onnx.load(str(ref)), ro)
    masks = token_masks(data, len(data))
    assert static.score_outputs(specs, co, ro, None, masks).drop_from(static.score_outputs(specs, ro, ro, None, masks)) < 1e-6
    assert static.score_outputs(specs, co, ro, None).drop_from(static.score_outputs(specs, ro, ro, None)) > 0.1  # padding counted


def test_golden_inputs_leave_every_token_real_whatever_the_mask_means():
    """No data: golden/timing inputs are typical values; a padding mask (non-zero = padding) is all zeros there,
    not all ones (a fully padded input, NaN attention and timing of nothing)."""
    from edgeq.core.artifact import IoSpec, TensorSpec
    from edgeq.core.golden import typical_feed

    ins = (TensorSpec("input_ids", "int64", ("N", T)), TensorSpec("input_mask", "int64", ("N", T)),
           TensorSpec("key_padding_mask", "bool", ("N", T)), TensorSpec("padding_mask", "int64", ("N", T)),
           TensorSpec("seg", "int64", ("N", T)))
    io = IoSpec(ins, (TensorSpec("y", "float32", ("N", T, H)),))
    feed = typical_feed(None, io, {"seg": {"mask": "padding"}})
    assert feed["input_mask"].all() and feed["input_mask"].shape == (1, T)
    assert not feed["key_padding_mask"].any() and feed["key_padding_mask"].dtype == bool
    assert not feed["padding_mask"].any() and not feed["seg"].any()
