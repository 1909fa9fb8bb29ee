"""SmoothQuant for an ONNX graph: move the activation outliers of each weight product into its weights.

Dynamic int8 quantizes a product's input with one scale for the whole tensor, so a few input channels with large
values (BERT's feed-forward activations have them) leave the others a handful of int8 levels. SmoothQuant
(Xiao et al., 2023, arXiv 2211.10438) divides each input channel ``k`` by ``s_k`` and multiplies row ``k`` of the
weight by it, which leaves the product unchanged in fp32 and evens out the activation ranges before quantization:

    s_k = max|X_k| ** alpha / max|W_k| ** (1 - alpha)

The division is one ``Mul`` per product input (elementwise, shared by the products reading the same tensor); the
activation maxima come from running the fp32 graph on calibration windows. ONNX Runtime offers SmoothQuant only for
static quantization and through Intel Neural Compressor; this module is that step alone, for the dynamic path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from muses.extras import require

ALPHA = 0.8
"""Migration strength: 0.8 kept the int8 token states closest to fp32 on held-out SciFact abstracts
(docs/benchmarks.md)."""


def smooth_matmuls(
    source: Path, path: Path, calibration: Sequence[dict[str, np.ndarray]], alpha: float = ALPHA
) -> Path:
    """Write ``source`` (an fp32 ONNX graph) to ``path`` with every weight ``MatMul`` smoothed; same outputs in fp32.

    Args:
        calibration: feeds (input name -> ``[1, L]`` int64) whose activations give each input channel's range.
        alpha: how much of the activation range moves into the weights (0: none, 1: all).
    """
    onnx = require("onnx", "onnx")
    ort = require("onnxruntime", "onnx")
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    weights = {w.name: w for w in model.graph.initializer}
    readers: dict[str, list[Any]] = {}  # activation tensor -> the weight MatMuls that read it
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in weights and node.input[0] not in weights:
            readers.setdefault(node.input[0], []).append(node)
    if not readers:
        onnx.save(model, str(path))
        return path

    probe = onnx.ModelProto()
    probe.CopyFrom(model)  # the same graph, with the product inputs as extra outputs
    names = sorted(readers)
    probe.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep the probed tensors
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    act_max: dict[str, np.ndarray] = {}
    for feed in calibration:
        for name, value in zip(names, session.run(names, feed), strict=True):
            m = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            act_max[name] = np.maximum(act_max[name], m) if name in act_max else m
    if not act_max:
        raise ValueError("smoothing needs at least one calibration window")

    muls: dict[str, Any] = {}  # smoothed tensor -> the Mul that makes it
    for name, nodes in readers.items():
        mats = [numpy_helper.to_array(weights[n.input[1]]) for n in nodes]
        w_max = np.max([np.abs(w).max(axis=1) for w in mats], axis=0)
        s = np.maximum(act_max[name], 1e-5) ** alpha / np.maximum(w_max, 1e-5) ** (1 - alpha)
        s = np.clip(s, 1e-2, 1e3).astype(np.float32)
        for n, w in zip(nodes, mats, strict=True):
            weights[n.input[1]].CopyFrom(numpy_helper.from_array(w * s[:, None], n.input[1]))
        inverse, smoothed = f"{name}/smooth_inverse", f"{name}/smoothed"
        model.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inverse))
        muls[smoothed] = helper.make_node("Mul", [name, inverse], [smoothed], name=f"{name}/Smooth")
        for n in nodes:
            n.input[0] = smoothed

    ordered: list[Any] = []
    for node in model.graph.node:  # each Mul right before the first product that reads it (topological order)
        ordered += [muls.pop(inp) for inp in node.input if inp in muls]
        ordered.append(node)
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    onnx.save(model, str(path))
    return path
