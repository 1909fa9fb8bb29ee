"""OpenVINO backends: convert the exported ONNX graph to OpenVINO IR, quantize it to int8 with NNCF, and run it.

int8 here is NNCF's post-training static quantization (weights and activations; ``ModelType.TRANSFORMER`` keeps
the sensitive operations in float), calibrated on token windows of real text. sentence-transformers' OpenVINO
helpers go through optimum-intel, which does not support transformers 5 yet; this module does the same steps with
OpenVINO's and NNCF's own APIs.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from muses.backends import feed_inputs
from muses.extras import require


def convert_openvino(onnx_path: Path, path: Path) -> Path:
    """Convert the fp32 ONNX graph at ``onnx_path`` to OpenVINO IR at ``path`` (``.xml`` + ``.bin``), kept fp32."""
    ov = require("openvino", "openvino")
    path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov.convert_model(str(onnx_path)), str(path), compress_to_fp16=False)
    return path


def quantize_openvino(source: Path, path: Path, calibration: Sequence[dict[str, np.ndarray]]) -> Path:
    """Quantize the fp32 IR ``source`` to int8 at ``path``, calibrated on ``calibration``: one feed per item
    (``input name -> [1, L]`` int64 arrays, e.g. windows of tokenised text)."""
    ov = require("openvino", "openvino")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nncf = require("nncf", "openvino")
        model = ov.Core().read_model(str(source))
        quantized = nncf.quantize(
            model,
            nncf.Dataset(list(calibration)),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(calibration),
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(path), compress_to_fp16=False)
    return path


class OpenVinoRunner:
    """An OpenVINO model compiled for the CPU with ``threads`` threads, in fp32 precision (int8 layers stay int8)."""

    def __init__(self, backend: str, path: Path, threads: int) -> None:
        ov = require("openvino", "openvino")
        self.backend = backend
        config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
        self.compiled: Any = ov.Core().compile_model(str(path), "CPU", config)
        self.input_names = [next(iter(i.get_names())) for i in self.compiled.inputs]
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request, shared: calls from several threads take turns

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feed = feed_inputs(self.input_names, input_ids, attention_mask)
        with self._lock:
            out = self._request.infer(feed)
            return np.array(out[self.compiled.outputs[0]], dtype=np.float32)
