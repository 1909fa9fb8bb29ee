"""What a training run writes and reads back: the resumable checkpoint, the best model and the history file.

``output_dir/checkpoint/`` holds the model state (``model/``, a MuSES model folder, or in adapter mode
``adapter/``, the adapter's PEFT files: the base is frozen), ``trainer_state.pt`` (optimizer, scheduler, torch
RNG, the loop's generator) and ``trainer_state.json`` (step, sampler, best score, patience count, python and numpy
RNG, the config). It is written to ``checkpoint.tmp`` and renamed into place, so a kill at any point leaves a whole
checkpoint (``checkpoint`` or ``checkpoint.old``).

``output_dir/mix-readings.json`` keeps the dev readings of the WiSE-FT mixes, keyed by a fingerprint of the weights
read and of the recipe: a rerun with other mixes, or one killed while mixing, reads only what it has not.

``output_dir/best/`` is a MuSES model folder, or in adapter mode an adapter folder (PEFT's files and
``muses_adapter.json`` with the key, the base model's fingerprint and the routing centroid of the training texts),
ready for an :class:`~muses.adapters.AdapterCache`.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from muses.adapters.lora import (
    adapter_weights,
    base_fingerprint,
    hf_model,
    read_adapter,
    save_adapter,
    set_adapter_weights,
    write_peft_files,
)
from muses.adapters.router import centroid
from muses.encoder import MultiScaleEncoder
from muses.io import write_text_atomic
from muses.training.config import TrainConfig
from muses.training.data import TrainingData
from muses.training.dev import DevReading

CKPT = "checkpoint"
BEST = "best"
BEST_CHECKPOINT = "best-checkpoint"  # with ``interpolate``: the best checkpoint before mixing
INTERPOLATION_READINGS = "interpolation-readings.json"  # with ``interpolate_confidence``: per-query dev values
MIX_READINGS = "mix-readings.json"  # with ``interpolate``: each dev reading made while mixing, by the weights read
ADAPTER_DIR = "adapter"
CENTROID_TEXTS = 5000  # per data source, for an adapter's routing centroid

Routing = tuple[np.ndarray | None, int, str]  # (centroid [D] or None, number of texts, base fingerprint)


def write_checkpoint(
    out: Path, encoder: MultiScaleEncoder, adapter_key: str | None, tensors: dict[str, Any], state: dict[str, Any]
) -> Path:
    """Write the model state, ``tensors`` (to ``trainer_state.pt``) and ``state`` (JSON) atomically to
    ``out/checkpoint``; returns that folder."""
    tmp = out / f"{CKPT}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if adapter_key is None:
        encoder.save(tmp / "model")
    else:  # the base is frozen: the adapter's weights are the model state
        write_peft_files(
            tmp / ADAPTER_DIR, hf_model(encoder).peft_config[adapter_key], adapter_weights(encoder, adapter_key)
        )
    torch.save(tensors, tmp / "trainer_state.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(state), encoding="utf-8")
    final = out / CKPT
    old = out / f"{CKPT}.old"
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(out: Path) -> Path | None:
    """``out/checkpoint``, or ``out/checkpoint.old`` when a kill came between the two renames, or None."""
    ckpt = out / CKPT
    if not ckpt.is_dir() and (out / f"{CKPT}.old").is_dir():
        ckpt = out / f"{CKPT}.old"
    return ckpt if ckpt.is_dir() else None


def read_checkpoint(ckpt: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checkpoint's JSON state and its tensors (``trainer_state.pt``)."""
    state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
    return state, torch.load(ckpt / "trainer_state.pt", weights_only=True)


def load_model_state(ckpt: Path, encoder: MultiScaleEncoder, adapter_key: str | None) -> None:
    """Load the checkpoint's model (or adapter) weights into ``encoder`` in place."""
    if adapter_key is None:
        loaded = MultiScaleEncoder.load(ckpt / "model", device=str(encoder.device), backend="torch")
        encoder.load_state_dict(loaded.state_dict())
    else:
        files = read_adapter(ckpt / ADAPTER_DIR, device=encoder.device, require_meta=False)
        set_adapter_weights(encoder, adapter_key, files.weights)


def centroid_texts(config: TrainConfig, data: TrainingData) -> list[str]:
    """The texts of the tasks the recipe trains on (each source capped), for an adapter's routing centroid."""
    w = config.task_weights
    texts: list[str] = []
    if w.get("hierarchy", 0) > 0:
        texts += [d.text for d in data.documents[:CENTROID_TEXTS]]
    if w.get("stsb", 0) > 0:
        texts += [t for r in data.stsb[:CENTROID_TEXTS] for t in r[:2]]
    if w.get("scifact", 0) > 0:
        texts += [t for p in data.scifact[:CENTROID_TEXTS] for t in p]
    if w.get("ict", 0) > 0:
        texts += [t for p in data.ict[:CENTROID_TEXTS] for t in p]
    return texts


def adapter_routing(encoder: MultiScaleEncoder, texts: list[str]) -> Routing:
    """An adapter's routing record: the centroid ``[D]`` of ``texts`` (None without texts), their number and the
    base model's fingerprint."""
    return (centroid(encoder, texts) if texts else None, len(texts), base_fingerprint(encoder))


def save_best_adapter(
    encoder: MultiScaleEncoder, adapter_key: str, path: Path, routing: Routing, info: dict[str, Any]
) -> None:
    """Write the adapter folder of ``adapter_key`` with its routing record and ``info`` to ``path``."""
    cent, n_texts, fingerprint = routing
    save_adapter(encoder, adapter_key, path, cent, n_texts, info, fingerprint)


def rng_state() -> dict[str, Any]:
    """The python and numpy global RNG states, as JSON-ready lists."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "python_rng": [version, list(internal), gauss],
        "numpy_rng": [kind, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the python and numpy global RNG states written by :func:`rng_state`."""
    py = state["python_rng"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np.random.set_state(tuple(state["numpy_rng"]))


def truncate_history(path: Path, step: int) -> None:
    """Drop history lines written after the checkpoint's step (they are replayed on resume), and a line cut short
    by a kill."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if entry["step"] <= step:
            kept.append(line)
    path.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")


def mix_weights(start: Mapping[str, Tensor], best: Mapping[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """WiSE-FT's mix of two state dicts of one model: ``alpha * best + (1 - alpha) * start`` for every floating-point
    tensor (on ``best``'s device), ``best``'s own for the rest (e.g. integer buffers); alpha 0 gives ``start``."""
    return {k: torch.lerp(start[k].to(v.device), v, alpha) if v.is_floating_point() else v for k, v in best.items()}


def read_mix_readings(out: Path) -> dict[str, DevReading]:
    """The dev readings a run made while mixing (:data:`MIX_READINGS`), by key; empty if none (or unreadable: a
    reading is made again rather than trusted)."""
    try:
        raw = json.loads((out / MIX_READINGS).read_text(encoding="utf-8"))
        return {
            k: DevReading(
                {n: float(x) for n, x in v["metrics"].items()},
                {n: {q: float(x) for q, x in values.items()} for n, values in v["per_query"].items()},
            )
            for k, v in raw.items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def write_mix_readings(out: Path, readings: dict[str, DevReading]) -> None:
    """Write :data:`MIX_READINGS` whole (a temporary file renamed into place: a kill leaves the old or the new)."""
    raw = {k: {"metrics": r.metrics, "per_query": r.per_query} for k, r in readings.items()}
    write_text_atomic(out / MIX_READINGS, json.dumps(raw) + "\n")
