"""Opening an exported backend's file as a :class:`~muses.backends.TokenRunner`."""

from __future__ import annotations

from pathlib import Path

from muses.backends import BACKEND_FILES, TokenRunner
from muses.errors import InputError


def open_runner(backend: str, path: Path, threads: int) -> TokenRunner:
    """Load the exported file ``path`` of ``backend`` (see :data:`BACKEND_FILES`) to run on ``threads`` CPU threads."""
    if backend in ("onnx", "onnx-int8"):
        from muses.backends.onnx import OnnxRunner

        return OnnxRunner(backend, path, threads)
    if backend in ("openvino", "openvino-int8"):
        from muses.backends.openvino import OpenVinoRunner

        return OpenVinoRunner(backend, path, threads)
    raise InputError(f"backend {backend!r} has no exported file to run; use one of {', '.join(BACKEND_FILES)}.")
