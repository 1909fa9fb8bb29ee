"""Writing a backend's files for a model: ONNX export, int8 quantization, OpenVINO conversion, calibration feeds.

Intermediate files (the fp32 graph an int8 one is made from) are built in a scratch folder and only the backend's
own files are moved into the model folder, each in one rename.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from torch import nn

from muses.backends import BACKEND_FILES, backend_files, feed_inputs
from muses.errors import InputError


class Exportable(Protocol):
    """What an export reads from a model (a :class:`~muses.encoder.MultiScaleEncoder`)."""

    @property
    def transformer(self) -> nn.Module: ...

    @property
    def tokenizer(self) -> Any: ...

    def window_inputs(self, texts: Sequence[str]) -> list[list[int]]: ...


CALIBRATION_WINDOWS = 300
"""At most this many token windows calibrate an int8 export (NNCF's default subset size)."""


def check_new_folder(out: Path) -> None:
    """Refuse an export target that exists and is not an empty folder (before any model is loaded).

    Raises:
        InputError: ``out`` is a file or a folder with something in it.
    """
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} already exists; give a new folder for the exported model.")


def default_calibration_texts() -> list[str]:
    """The bundled sample corpus, its sentences and queries: calibration text for a quick int8 export.
    Pass texts from your own domain for the best int8 accuracy."""
    from muses.samples import SAMPLE_DOCUMENTS, SAMPLE_QUERIES
    from muses.text import make_document

    docs = [make_document(d["text"], d["id"]) for d in SAMPLE_DOCUMENTS]
    long = " ".join(d.text for d in docs)  # full-length windows: activation ranges of long documents too
    return (
        [long, long[len(long) // 3 :]]
        + [d.text for d in docs]
        + [s for d in docs for s in d.sentence_texts()]
        + list(SAMPLE_QUERIES)
    )


def calibration_feeds(encoder: Exportable, texts: Sequence[str]) -> list[dict[str, np.ndarray]]:
    """One feed (input name -> ``[1, L]`` int64) per token window of ``texts``, the windows the encoder would run;
    at most :data:`CALIBRATION_WINDOWS`, spread evenly over all of them (not the first ones: a file that starts
    with one kind of text calibrates on every kind it holds)."""
    windows = encoder.window_inputs(texts)
    if len(windows) > CALIBRATION_WINDOWS:
        windows = [windows[i] for i in np.linspace(0, len(windows) - 1, CALIBRATION_WINDOWS).round().astype(int)]
    return window_feeds(encoder, windows)


def window_feeds(encoder: Exportable, windows: Sequence[list[int]]) -> list[dict[str, np.ndarray]]:
    """One feed (input name -> ``[1, L]`` int64) per window of token ids (from ``encoder.window_inputs``)."""
    names = list(encoder.tokenizer.model_input_names)
    feeds = []
    for ids in windows:
        row = np.asarray([ids], dtype=np.int64)
        feeds.append(feed_inputs(names, row, np.ones_like(row)))
    return feeds


def export_backend(
    encoder: Exportable, folder: Path, backends: Sequence[str], calibration: Sequence[str] | None = None
) -> list[Path]:
    """Write the files of each of ``backends`` (see :data:`BACKEND_FILES`) for ``encoder`` into the model ``folder``.
    The fp32 ONNX graph they all start from is exported once.

    Args:
        calibration: texts of the domain the model will embed, whose token windows calibrate the int8 backends:
            the activation ranges of ``openvino-int8`` (default: the bundled samples) and the SmoothQuant step of
            ``onnx-int8`` (default: none, plain dynamic int8; smoothing calibrated on other text than the corpus
            can do worse than none). fp32 backends need none.

    Returns:
        the path of each backend's main file.
    """
    from muses.backends.onnx import export_onnx, quantize_onnx
    from muses.backends.openvino import convert_openvino, quantize_openvino

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".export-") as tmp:
        scratch = Path(tmp)
        onnx_fp32 = export_onnx(encoder.transformer, list(encoder.tokenizer.model_input_names), scratch / "fp32.onnx")
        ir_fp32 = scratch / "fp32.xml"
        for backend in backends:
            target = scratch / BACKEND_FILES[backend]
            target.parent.mkdir(parents=True, exist_ok=True)
            if backend == "onnx":
                shutil.copyfile(onnx_fp32, target)
            elif backend == "onnx-int8":
                quantize_onnx(onnx_fp32, target, calibration_feeds(encoder, calibration) if calibration else ())
            elif backend == "openvino":
                convert_openvino(onnx_fp32, target)
            else:
                if not ir_fp32.exists():
                    convert_openvino(onnx_fp32, ir_fp32)
                texts = list(calibration) if calibration else default_calibration_texts()
                quantize_openvino(ir_fp32, target, calibration_feeds(encoder, texts))
        for backend in backends:
            final = backend_files(folder, backend)
            final[0].parent.mkdir(parents=True, exist_ok=True)
            for src, dst in zip(backend_files(scratch, backend), final, strict=True):
                os.replace(src, dst)
    return [backend_files(folder, b)[0] for b in backends]


def files_digest(paths: Sequence[Path]) -> str:
    """sha256 of the files' bytes, 16 hex digits: the identity of quantized weights."""
    h = hashlib.sha256()
    for p in paths:
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def cache_folder(fingerprint: str) -> Path:
    """Where backends exported on the fly are kept for a model of this (PyTorch) ``fingerprint``:
    ``$MUSES_BACKEND_CACHE/<fingerprint>`` (default ``~/.cache/muses/backends``)."""
    root = os.environ.get("MUSES_BACKEND_CACHE") or Path.home() / ".cache" / "muses" / "backends"
    return Path(root) / fingerprint
