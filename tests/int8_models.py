"""Tiny models for the INT8 tests: If subgraphs, -inf masks, an attention block."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _init(name: str, arr: np.ndarray):
    return numpy_helper.from_array(np.ascontiguousarray(arr), name)


def _save(graph, path: Path, opset: int = 17) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgeq-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def make_if_model(path: Path, *, seed: int = 0) -> Path:
    """y = If(flag > 0, then: Relu(x @ W1) @ W2, else: Relu(x @ W3) @ W4); every weight inside a branch.

    Inputs x float32 [N, 16], flag int64 [1]; output y [N, 8]. (Like silero-vad's If on the sample rate.)
    """
    rng = np.random.default_rng(seed)

    def branch(tag: str):
        w1 = rng.normal(0, 0.4, (16, 32)).astype(np.float32)
        w2 = rng.normal(0, 0.3, (32, 8)).astype(np.float32)
        nodes = [
            helper.make_node("MatMul", ["x", f"{tag}_w1"], [f"{tag}_h"], name=f"{tag}_mm1"),
            helper.make_node("Relu", [f"{tag}_h"], [f"{tag}_r"], name=f"{tag}_relu"),
            helper.make_node("MatMul", [f"{tag}_r", f"{tag}_w2"], [f"{tag}_y"], name=f"{tag}_mm2"),
        ]
        return helper.make_graph(
            nodes, f"{tag}_branch", [], [helper.make_tensor_value_info(f"{tag}_y", TensorProto.FLOAT, ["N", 8])],
            [_init(f"{tag}_w1", w1), _init(f"{tag}_w2", w2)],
        )

    nodes = [
        helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("zero_v", TensorProto.INT64, [1], [0])),
        helper.make_node("Greater", ["flag", "zero"], ["c"], name="gt"),
        helper.make_node("Squeeze", ["c"], ["cs"], name="sq"),
        helper.make_node("If", ["cs"], ["y"], name="branch_if", then_branch=branch("then"), else_branch=branch("else")),
    ]
    graph = helper.make_graph(
        nodes, "if_model",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16]), helper.make_tensor_value_info("flag", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
    )
    return _save(graph, path)


def make_attention(path: Path, *, seed: int = 0, d: int = 32, seq: int = 8, opset: int = 17, vocab: int = 16) -> Path:
    """One pre-LN causal self-attention block + MLP + LM head over [1, seq, d] inputs.

    LayerNorm -> Q/K/V MatMuls -> QK^T / sqrt(d) + causal mask (-inf above the diagonal) ->
    Softmax -> @V -> output MatMul -> residual -> LayerNorm -> MLP (Gelu-free: Relu) -> residual -> head.
    """
    rng = np.random.default_rng(seed)

    def w(*shape, s=None):
        return rng.normal(0, s or 1 / np.sqrt(shape[0]), shape).astype(np.float32)

    mask = np.triu(np.full((seq, seq), -np.inf, np.float32), k=1)
    inits = [
        _init("ln1_g", np.ones(d, np.float32)), _init("ln1_b", np.zeros(d, np.float32)),
        _init("ln2_g", np.ones(d, np.float32)), _init("ln2_b", np.zeros(d, np.float32)),
        _init("wq", w(d, d)), _init("wk", w(d, d)), _init("wv", w(d, d)), _init("wo", w(d, d)),
        _init("w1", w(d, 4 * d)), _init("b1", np.zeros(4 * d, np.float32)), _init("w2", w(4 * d, d)),
        _init("wh", w(d, vocab)), _init("mask", mask),
        _init("scale", np.array(1 / np.sqrt(d), np.float32)), _init("perm_shape", np.array([0, 2, 1], np.int64)),
    ]
    nodes = [
        helper.make_node("LayerNormalization", ["x", "ln1_g", "ln1_b"], ["h"], name="ln1", axis=-1),
        helper.make_node("MatMul", ["h", "wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["h", "wk"], ["k"], name="k_proj"),
        helper.make_node("MatMul", ["h", "wv"], ["v"], name="v_proj"),
        helper.make_node("Transpose", ["k"], ["kt"], name="k_t", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s"], name="scores"),
        helper.make_node("Mul", ["s", "scale"], ["ss"], name="scale_mul"),
        helper.make_node("Add", ["ss", "mask"], ["sm"], name="mask_add"),
        helper.make_node("Softmax", ["sm"], ["p"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["ctx"], name="context"),
        helper.make_node("MatMul", ["ctx", "wo"], ["o"], name="o_proj"),
        helper.make_node("Add", ["x", "o"], ["r1"], name="res1"),
        helper.make_node("LayerNormalization", ["r1", "ln2_g", "ln2_b"], ["h2"], name="ln2", axis=-1),
        helper.make_node("MatMul", ["h2", "w1"], ["f1"], name="fc1"),
        helper.make_node("Add", ["f1", "b1"], ["f1b"], name="fc1_bias"),
        helper.make_node("Relu", ["f1b"], ["f1r"], name="fc1_relu"),
        helper.make_node("MatMul", ["f1r", "w2"], ["f2"], name="fc2"),
        helper.make_node("Add", ["r1", "f2"], ["r2"], name="res2"),
        helper.make_node("MatMul", ["r2", "wh"], ["logits"], name="head"),
    ]
    graph = helper.make_graph(
        nodes, "attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, seq, d])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, seq, vocab])],
        inits[:-1],
    )
    return _save(graph, path, opset=opset)


def make_masked_mlp(path: Path, *, seed: int = 0) -> Path:
    """hm = x @ W1 + mask (-inf on half the columns); y = Softmax(hm) @ W2 + sum(exp(hm @ W3)). x [N, 16].

    ``mm_masked`` reads and writes -inf: quantizing those tensors would turn -inf into the range minimum.
    """
    rng = np.random.default_rng(seed)
    mask = np.zeros((1, 32), np.float32)
    mask[:, 16:] = -np.inf
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
            helper.make_node("Add", ["h", "mask"], ["hm"], name="mask_add"),
            helper.make_node("MatMul", ["hm", "w3"], ["z"], name="mm_masked"),  # input and output hold -inf
            helper.make_node("Exp", ["z"], ["ez"], name="exp"),  # exp(-inf) = 0
            helper.make_node("ReduceSum", ["ez"], ["z_sum"], name="zsum", keepdims=1),
            helper.make_node("Softmax", ["hm"], ["p"], name="softmax", axis=-1),
            helper.make_node("MatMul", ["p", "w2"], ["y0"], name="mm2"),
            helper.make_node("Add", ["y0", "z_sum"], ["y"], name="add_out"),
        ],
        "masked_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [
            _init("w1", rng.normal(0, 0.4, (16, 32)).astype(np.float32)),
            _init("w2", rng.normal(0, 0.4, (32, 8)).astype(np.float32)),
            _init("w3", rng.uniform(0.1, 0.5, (32, 4)).astype(np.float32)),
            _init("mask", mask),
        ],
    )
    return _save(graph, path)


def make_loop_model(path: Path, *, seed: int = 0, trips: int = 3) -> Path:
    """h_{t+1} = Relu(h_t @ W) for ``trips`` steps inside a Loop; W is an outer-scope initializer."""
    rng = np.random.default_rng(seed)
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["h_in", "w"], ["hw"], name="loop_mm"),
            helper.make_node("Relu", ["hw"], ["h_out"], name="loop_relu"),
            helper.make_node("Identity", ["cond_in"], ["cond_out"], name="loop_cond"),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_in", TensorProto.FLOAT, ["N", 16]),
        ],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["N", 16])],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "cond", "x"], ["y"], name="loop", body=body)],
        "loop_model",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
        [
            _init("w", (rng.normal(0, 0.3, (16, 16)) + np.eye(16)).astype(np.float32)),
            numpy_helper.from_array(np.array(trips, np.int64), "trips"),  # 0-d scalars
            numpy_helper.from_array(np.array(True), "cond"),
        ],
    )
    return _save(graph, path)


def make_scan_model(path: Path, *, seed: int = 0, steps: int = 5) -> Path:
    """A recurrent cell in a Scan over x [N, steps, 16] (axis 1): s_t = Tanh(x_t @ Wx + s_{t-1}),
    y_t = s_t @ Wy (Wx, Wy outer-scope initializers). Outputs s_final [N, 16] and y [N, steps, 8]."""
    rng = np.random.default_rng(seed)
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["x_t", "wx"], ["xw"], name="scan_mm_x"),
            helper.make_node("Add", ["xw", "s_in"], ["pre"], name="scan_add"),
            helper.make_node("Tanh", ["pre"], ["s_out"], name="scan_tanh"),
            helper.make_node("MatMul", ["s_out", "wy"], ["y_t"], name="scan_mm_y"),
        ],
        "scan_body",
        [helper.make_tensor_value_info("s_in", TensorProto.FLOAT, ["N", 16]), helper.make_tensor_value_info("x_t", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("s_out", TensorProto.FLOAT, ["N", 16]), helper.make_tensor_value_info("y_t", TensorProto.FLOAT, ["N", 8])],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "zero"], ["x0"], name="zeros_like"),
            helper.make_node("ReduceSum", ["x0", "ax1"], ["s0"], name="init_state", keepdims=0),
            helper.make_node("Scan", ["s0", "x"], ["s_final", "y"], name="scan", body=body, num_scan_inputs=1,
                             scan_input_axes=[1], scan_output_axes=[1]),
        ],
        "scan_model",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", steps, 16])],
        [helper.make_tensor_value_info("s_final", TensorProto.FLOAT, ["N", 16]), helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", steps, 8])],
        [
            _init("wx", rng.normal(0, 0.4, (16, 16)).astype(np.float32)),
            _init("wy", rng.normal(0, 0.4, (16, 8)).astype(np.float32)),
            _init("zero", np.zeros((), np.float32)),
            _init("ax1", np.array([1], np.int64)),
        ],
    )
    return _save(graph, path)
