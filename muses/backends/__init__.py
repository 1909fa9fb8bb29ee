"""Where the transformer pass runs: PyTorch (default), ONNX Runtime or OpenVINO, in fp32 or int8.

Only the transformer moves. Windows, stitching, pooling and the per-scale heads stay in PyTorch, so all three scales
come from the backend's token states and an fp32 backend gives the PyTorch vectors (to float rounding).

================  ==============================================  ===============================  =============
backend           runs on                                         file in a model folder           extra
================  ==============================================  ===============================  =============
``torch``         PyTorch (CPU or GPU; the only one that trains)  ``0_Transformer/`` safetensors   (core)
``onnx``          ONNX Runtime, fp32                              ``onnx/model.onnx``              ``onnx``
``onnx-int8``     ONNX Runtime, int8 weights (dynamic quant.)     ``onnx/model_qint8.onnx``        ``onnx``
``openvino``      OpenVINO, fp32                                  ``openvino/openvino_model.xml``  ``openvino``
``openvino-int8`` OpenVINO, int8 (NNCF static quantization)       ``openvino/openvino_model_qint8.xml`` ``openvino``
================  ==============================================  ===============================  =============

The file names follow sentence-transformers' own backend layout. ``onnx-int8`` exported with calibration text is
smoothed first (:mod:`muses.backends.smoothing`). An int8 backend changes the vectors, so it
changes the model's fingerprint (a store built with PyTorch refuses it); an fp32 one does not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol, get_args

import numpy as np

from muses.errors import InputError

Backend = Literal["torch", "onnx", "onnx-int8", "openvino", "openvino-int8"]
BACKENDS: tuple[str, ...] = get_args(Backend)

BACKEND_FILES: dict[str, str] = {
    "onnx": "onnx/model.onnx",
    "onnx-int8": "onnx/model_qint8.onnx",
    "openvino": "openvino/openvino_model.xml",
    "openvino-int8": "openvino/openvino_model_qint8.xml",
}
"""Backend -> its file, relative to a model folder (OpenVINO's ``.bin`` sits beside its ``.xml``)."""


def check_backend(backend: str) -> Backend:
    """``backend`` itself when it is one of :data:`BACKENDS`, else :class:`InputError` naming them."""
    if backend not in BACKENDS:
        raise InputError(f"backend {backend!r} is unknown; use one of {', '.join(BACKENDS)}.")
    return backend  # type: ignore[return-value]


def is_quantized(backend: str) -> bool:
    """Whether ``backend`` changes the weights (int8), and so the vectors and the fingerprint."""
    return backend.endswith("-int8")


def backend_files(folder: Path, backend: str) -> list[Path]:
    """The files of ``backend`` inside a model ``folder`` (empty for ``torch``)."""
    if backend == "torch":
        return []
    main = folder / BACKEND_FILES[backend]
    return [main, main.with_suffix(".bin")] if main.suffix == ".xml" else [main]


def feed_inputs(names: list[str], input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
    """An exported graph's inputs by name, each ``[B, L]`` int64; ``token_type_ids``, where the model takes them,
    are zeros (one segment, as in the PyTorch pass)."""
    known = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": np.zeros_like(input_ids)}
    return {name: known[name] for name in names}


class TokenRunner(Protocol):
    """Runs the exported transformer: ``input_ids``, ``attention_mask`` ``[B, L]`` int64 -> token states
    ``[B, L, H]`` float32 (the base transformer's last hidden states)."""

    backend: str

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray: ...
