"""A short hash of a module's weights: the identity of a model's vectors, recorded by stores and caches."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import torch


def weights_fingerprint(module: torch.nn.Module, extra: Mapping[str, object]) -> str:
    """sha256 over every parameter and buffer (names, shapes, bytes) and the JSON of ``extra``; 16 hex digits."""
    h = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
