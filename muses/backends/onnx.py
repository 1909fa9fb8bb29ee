"""ONNX Runtime backends: export the transformer to ONNX, quantize it to int8, and run it.

Export uses PyTorch's own exporter (``torch.onnx.export``); int8 uses ONNX Runtime's dynamic quantization (int8
weights, activations quantized per batch at run time), after SmoothQuant (:mod:`muses.backends.smoothing`) when
calibration text from the user's domain is given. sentence-transformers' ONNX helpers go
through optimum-onnx, which does not support transformers 5 yet; this module is what they would do for a
``[Transformer]`` model, without the optimum layer.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from muses.backends import feed_inputs
from muses.extras import require

OPSET = 17
_AXES = {0: "batch", 1: "sequence"}


class _TokenStates(nn.Module):
    """The sentence-transformers ``Transformer`` module as a function of tensors: ``[B, L]`` ids -> ``[B, L, H]``."""

    def __init__(self, transformer: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.transformer = transformer
        self.names = names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.transformer(dict(zip(self.names, inputs, strict=True)))["token_embeddings"]


def export_onnx(transformer: nn.Module, input_names: list[str], path: Path) -> Path:
    """Write the transformer's token-state graph to ``path`` (``.onnx``), with dynamic batch and sequence axes.

    Args:
        transformer: the encoder's sentence-transformers ``Transformer`` (``model[0]``).
        input_names: the tokenizer's ``model_input_names`` (``input_ids``, ``attention_mask``, maybe
            ``token_type_ids``), in the order the graph takes them.
    """
    require("onnx", "onnx")
    path.parent.mkdir(parents=True, exist_ok=True)
    device = next(transformer.parameters()).device
    example = tuple(torch.ones((2, 8), dtype=torch.long, device=device) for _ in input_names)
    modes = [(m, m.training) for m in transformer.modules()]  # restored one by one: HF models mix train/eval flags
    transformer.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer notes on shape-dependent Python branches, all benign here
            torch.onnx.export(
                _TokenStates(transformer, input_names),
                example,
                str(path),
                input_names=input_names,
                output_names=["token_embeddings"],
                dynamic_axes={name: _AXES for name in [*input_names, "token_embeddings"]},
                opset_version=OPSET,
                dynamo=False,  # the TorchScript exporter: exact for BERT-like encoders, no onnxscript needed
            )
    finally:
        for module, training in modes:
            module.training = training
    return path


def quantize_onnx(source: Path, path: Path, calibration: Sequence[dict[str, np.ndarray]] = ()) -> Path:
    """Quantize the fp32 graph ``source`` to int8 weights (per channel) at ``path``, with ONNX Runtime.

    Signed per-channel weights at 7 bits (``reduce_range``): u8s8 products cannot overflow on CPUs without VNNI
    (AVX2). Of the eight dynamic settings tried, the one that kept STS-B best (docs/benchmarks.md). With
    ``calibration`` feeds (input name -> ``[1, L]`` int64), the graph is smoothed first
    (:func:`~muses.backends.smoothing.smooth_matmuls`). Calibrated on in-domain text, this halved the int8 error on
    scientific abstracts; calibrated on the bundled samples, it did not help there (docs/benchmarks.md)."""
    quantization = require("onnxruntime.quantization", "onnx")
    from muses.backends.smoothing import smooth_matmuls

    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ONNX Runtime logs a pre-processing hint on the root logger
    try:
        with warnings.catch_warnings(), tempfile.TemporaryDirectory(dir=path.parent, prefix=".smooth-") as tmp:
            warnings.simplefilter("ignore")
            if calibration:
                source = smooth_matmuls(source, Path(tmp) / "smoothed.onnx", calibration)
            quantization.quantize_dynamic(
                str(source), str(path), weight_type=quantization.QuantType.QInt8, per_channel=True, reduce_range=True
            )
    finally:
        root.setLevel(level)
    return path


class OnnxRunner:
    """An ONNX Runtime session over an exported file, on the CPU with ``threads`` threads."""

    def __init__(self, backend: str, path: Path, threads: int) -> None:
        ort = require("onnxruntime", "onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.backend = backend
        self.session: Any = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feed = feed_inputs(self.input_names, input_ids, attention_mask)
        return np.asarray(self.session.run(None, feed)[0], dtype=np.float32)
