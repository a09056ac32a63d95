"""The static (NPU) decoder's two graphs: every node an op qnn-htp runs, and the prefill graph the step graph's nodes and weights."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from edgeq.core.targets import load_target  # noqa: E402
from edgeq.exporters import decoder as D  # noqa: E402
from edgeq.exporters import static_decoder as S  # noqa: E402
from edgeq.exporters.static_prefill import chunk_for, write_prefill  # noqa: E402
from edgeq.errors import ModelError  # noqa: E402
from fixtures.llm import make_lm  # noqa: E402


def _both(kind, tmp_path, chunk=8):
    model = make_lm(kind)
    arch = D.arch_from_config(model.config)
    step = D.build_decoder(arch, model.state_dict(), tmp_path / "model.onnx", static_context=32, chunk=1)
    return step, write_prefill(step, tmp_path / "prefill.onnx", chunk)


@pytest.mark.parametrize("kind", ["llama", "gemma3"])  # gemma3: sliding window, local rotary base, q/k norms, soft-caps
def test_every_node_of_both_static_graphs_is_an_op_in_qnn_htps_list(kind, tmp_path):
    supported = set(load_target("qnn-htp").supported_ops)
    for path in _both(kind, tmp_path):
        g = onnx.load(str(path)).graph
        ops = {n.op_type for n in g.node}
        assert ops <= supported, sorted(ops - supported)  # no Where, LessOrEqual, Cos, Sin, Equal, Identity...
        assert {"MatMul", "Softmax"} <= ops
        # what depends on the positions comes in from the host
        names = {i.name for i in g.input}
        assert {S.WRITE, S.KEEP} <= names and not names & {"attention_mask", "position_ids"}


def test_the_prefill_graph_is_the_step_graph_with_only_its_chunk_dimensions_widened(tmp_path):
    step, pre = _both("gemma2", tmp_path, chunk=8)
    a, b = onnx.load(str(step)).graph, onnx.load(str(pre)).graph
    assert [(n.op_type, list(n.input), list(n.output)) for n in a.node] == [(n.op_type, list(n.input), list(n.output)) for n in b.node]
    assert [(t.name, t.raw_data) for t in a.initializer] == [(t.name, t.raw_data) for t in b.initializer]

    def dims(g):
        return {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in list(g.input) + list(g.output)}

    da, db = dims(a), dims(b)
    assert db["input_ids"] == [1, 8] and db["logits"][1] == 8 and db[S.BIAS] == [1, 1, 1, 8, 32] and db[S.WRITE] == [1, 32, 8]
    assert db["past_key_values.0.key"] == da["past_key_values.0.key"] and db["present.1.value"] == da["present.1.value"]
    assert {k for k in da if da[k] != db[k]} == {"input_ids", "logits", S.BIAS, S.BIAS_SLIDING, S.WRITE, *S.ROTARY["global"]}
    with pytest.raises(ModelError, match="one-token"):
        write_prefill(pre, tmp_path / "again.onnx", 4)  # derived from a step graph only


def test_host_inputs_mask_write_and_rotate_by_position(tmp_path):
    import onnxruntime as ort

    step, pre = _both("gemma2", tmp_path, chunk=8)  # sliding window 6
    lay = S.StaticLayout.of_session(ort.InferenceSession(str(pre), providers=["CPUExecutionProvider"]))
    assert (lay.chunk, lay.context, lay.window) == (8, 32, 6)
    h = S.host_inputs(lay, 10, 5)  # 5 real tokens at positions 10..14, 3 padded rows
    full, near = h[S.BIAS][0, 0, 0] == 0, h[S.BIAS_SLIDING][0, 0, 0] == 0
    assert full[0].tolist() == [m <= 10 for m in range(32)]  # causal
    assert full[7].tolist() == [m < 15 for m in range(32)]  # a padded row sees the filled slots only
    assert near[4].tolist() == [9 <= m <= 14 for m in range(32)]  # the window: the last 6 positions
    assert np.flatnonzero(h[S.WRITE][0].max(axis=1)).tolist() == [10, 11, 12, 13, 14]  # only real tokens are written
    assert (h[S.KEEP][0, :, 0] == 1 - h[S.WRITE][0].max(axis=1)).all()
    ang = 12 * lay.inv_freq.astype(np.float32)
    assert np.allclose(h["rotary_cos"][0, 2], np.cos(ang)) and np.allclose(h["rotary_sin"][0, 2], np.sin(ang))
    assert chunk_for(32) == 32 and chunk_for(256) == S.DEFAULT_CHUNK and chunk_for(256, 16) == 16
