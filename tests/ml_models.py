"""Tiny classic-ML models in the ``ai.onnx.ml`` domain, as skl2onnx/onnxmltools write them (built with onnx.helper,
no converter needed): a two-tree TreeEnsembleClassifier with int64 or string class labels and, optionally, a ZipMap
whose output is ``seq(map(label, float))`` instead of a probability tensor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

CLASSES = 3
FEATURES = 4


def tree_classifier(path: Path, *, threshold: float = 0.0, strings: bool = False, zipmap: bool = True, impute: bool = False) -> Path:
    """X [N, 4] -> label [N] (int64, or string with ``strings``) and class probabilities (ZipMap maps, or [N, 3]).
    Tree 0 splits feature 0 at ``threshold``, tree 1 feature 1 at 0; their leaves vote for different classes, so a
    moved ``threshold`` changes the label of the samples between. ``impute``: an Imputer first (NaN -> 0), as
    scikit-learn's SimpleImputer writes it."""
    labels = {"classlabels_strings": ["cat", "dog", "owl"]} if strings else {"classlabels_int64s": [0, 1, 2]}
    # per tree: node 0 a branch (x[f] <= t: node 1, else node 2), nodes 1 and 2 leaves
    votes = {(0, 1): [0.8, 0.1, 0.1], (0, 2): [0.1, 0.1, 0.8], (1, 1): [0.2, 0.6, 0.2], (1, 2): [0.3, 0.3, 0.4]}
    tree = helper.make_node(
        "TreeEnsembleClassifier", ["Xi" if impute else "X"], ["label", "probabilities"], domain="ai.onnx.ml",
        nodes_treeids=[0, 0, 0, 1, 1, 1], nodes_nodeids=[0, 1, 2, 0, 1, 2], nodes_featureids=[0, 0, 0, 1, 0, 0],
        nodes_values=[threshold, 0.0, 0.0, 0.0, 0.0, 0.0], nodes_modes=["BRANCH_LEQ", "LEAF", "LEAF"] * 2,
        nodes_truenodeids=[1, 0, 0, 1, 0, 0], nodes_falsenodeids=[2, 0, 0, 2, 0, 0],
        class_treeids=[t for (t, _n) in votes for _ in range(CLASSES)], class_nodeids=[n for (_t, n) in votes for _ in range(CLASSES)],
        class_ids=[c for _ in votes for c in range(CLASSES)], class_weights=[w / 2 for v in votes.values() for w in v],
        post_transform="NONE", **labels)
    label_type = TensorProto.STRING if strings else TensorProto.INT64
    outputs = [helper.make_tensor_value_info("label", label_type, ["N"])]
    nodes = [tree]
    if impute:
        nodes.insert(0, helper.make_node("Imputer", ["X"], ["Xi"], domain="ai.onnx.ml", imputed_value_floats=[0.0] * FEATURES,
                                         replaced_value_float=float("nan")))
    if zipmap:
        nodes.append(helper.make_node("ZipMap", ["probabilities"], ["output_probability"], domain="ai.onnx.ml", **labels))
        outputs.append(helper.make_value_info("output_probability", helper.make_sequence_type_proto(
            helper.make_map_type_proto(label_type, helper.make_tensor_type_proto(TensorProto.FLOAT, None)))))
    else:
        outputs.append(helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", CLASSES]))
    g = helper.make_graph(nodes, "trees", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", FEATURES])], outputs)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def features(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, FEATURES)).astype(np.float32)


def string_encoder(path: Path) -> Path:
    """colour [N, 1] (strings) -> code [N, 1] (int64): an ai.onnx.ml LabelEncoder, as a categorical feature's first step."""
    node = helper.make_node("LabelEncoder", ["colour"], ["code"], domain="ai.onnx.ml", keys_strings=["red", "green", "blue"],
                            values_int64s=[0, 1, 2], default_int64=-1)
    g = helper.make_graph([node], "enc", [helper.make_tensor_value_info("colour", TensorProto.STRING, ["N", 1])],
                          [helper.make_tensor_value_info("code", TensorProto.INT64, ["N", 1])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 2)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path
