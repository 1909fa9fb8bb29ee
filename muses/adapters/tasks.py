"""Task adapters: LoRA adapters shipped inside a MuSES model folder, one per task, under ``adapters/<task>/``.

The shared weights serve every scale and every retrieval task. A task adapter specialises them for one use without
touching them, as jina-embeddings-v3 does with its task LoRAs: ``similarity`` (symmetric sentence similarity, what
STS-B measures) is the one evaluation uses today (:data:`EVAL_TASK_ADAPTERS`).

Loaded with a task (:func:`load_for_task`, or ``muses.load(path, task=...)``), the adapter is merged into the
transformer's weights (``W + alpha / r * B @ A`` for each adapted layer), so the encoder
runs at the base model's speed and every code path (encoding, stores, the service) works unchanged.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from muses.adapters.config import check_key
from muses.adapters.lora import (
    ADAPTER_META,
    PEFT_PREFIX,
    AdapterFiles,
    AdapterMeta,
    base_fingerprint,
    hf_model,
    read_adapter,
    write_adapter_folder,
)
from muses.encoder import MultiScaleEncoder, is_saved_model
from muses.errors import InputError, ModelError

if TYPE_CHECKING:
    from muses.backends import Backend

TASKS_FOLDER = "adapters"
SIMILARITY = "similarity"
# evaluation task -> the task adapter it uses when the model ships one
EVAL_TASK_ADAPTERS: dict[str, str] = {"sts": SIMILARITY}


def task_folder(model_dir: str | os.PathLike[str], task: str) -> Path:
    """Where model ``model_dir`` keeps its adapter for ``task`` (which need not exist).

    Raises:
        InputError: for a task name that is not a usable key (e.g. ``../x``: it would point outside the model).
    """
    try:
        check_key(task)
    except ValueError as e:
        raise InputError(str(e)) from None
    return Path(model_dir) / TASKS_FOLDER / task


def list_tasks(model_dir: str | os.PathLike[str] | None) -> list[str]:
    """The tasks a model folder ships adapters for (sorted); none for a hub name or a base model."""
    if model_dir is None:
        return []
    root = Path(model_dir) / TASKS_FOLDER
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / ADAPTER_META).is_file())


def task_adapter_digest(model_dir: str | os.PathLike[str] | None, task: str) -> str | None:
    """sha256 (16 hex digits) of the files of ``model_dir``'s adapter for ``task`` (names and bytes), or None when it
    ships none: what a report records beside the numbers a task adapter gave, so a retrained adapter is noticed
    without loading the model."""
    if model_dir is None or task not in list_tasks(model_dir):
        return None
    folder = task_folder(model_dir, task)
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f.relative_to(folder).as_posix().encode() + b"\x00")
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def read_task_adapter(model_dir: str | os.PathLike[str], task: str) -> AdapterFiles:
    """Read model ``model_dir``'s adapter for ``task``.

    Raises:
        InputError: when the model ships no adapter for ``task`` (the message lists those it has).
    """
    folder = task_folder(model_dir, task)
    if not (folder / ADAPTER_META).is_file():
        have = list_tasks(model_dir)
        raise InputError(
            f"{model_dir} has no adapter for task {task!r} (it has: {', '.join(have) or 'none'}); add one with "
            "`muses adapters add MODEL ADAPTER --task TASK`."
        )
    return read_adapter(folder)


def check_trained_on(encoder: MultiScaleEncoder, files: AdapterFiles, model: str | os.PathLike[str]) -> None:
    """Refuse an adapter whose recorded base fingerprint is not ``encoder``'s: its update was learnt against other
    weights (e.g. the model was retrained after the adapter was added).

    Raises:
        InputError: naming both fingerprints and the fix.
    """
    have = base_fingerprint(encoder)
    was = files.meta.base_fingerprint if files.meta else ""
    if was != have:
        raise InputError(
            f"{files.path} was trained on other weights (fingerprint {was or 'none'}, {model} has {have}); train it "
            f"again with model.base set to {model}."
        )


def load_for_task(
    model: str | os.PathLike[str],
    task: str | None,
    device: str | None = None,
    backend: Backend | None = None,
) -> MultiScaleEncoder:
    """Load a model (a saved MuSES folder, a base model or a hub name; see ``MultiScaleEncoder.from_base``) with
    its adapter for ``task`` merged into the weights; ``task=None`` loads it as it is.

    Raises:
        InputError: a task for a model that is not a saved MuSES folder, a task on another backend than PyTorch, or
            a task the folder has no adapter for.
    """
    if task is None:
        return MultiScaleEncoder.from_base(model, device=device, backend=backend)
    if not is_saved_model(Path(model)):
        raise InputError(f"task adapters ship inside a saved MuSES model folder; {model} is not one.")
    if backend not in (None, "torch"):
        raise InputError(f"task adapters merge into PyTorch weights; use --backend torch for task {task!r}.")
    enc = MultiScaleEncoder.load(model, device=device, backend=backend)
    if enc.backend != "torch":
        raise InputError(f"task adapters merge into PyTorch weights; load {model} with backend torch to use {task!r}.")
    merge_task_adapter(enc, model, task)
    enc.task = task
    return enc


def merge_task_adapter(encoder: MultiScaleEncoder, model_dir: str | os.PathLike[str], task: str) -> None:
    """Merge model ``model_dir``'s adapter for ``task`` into ``encoder`` (that model, loaded), after checking that it
    was trained on these weights."""
    files = read_task_adapter(model_dir, task)
    check_trained_on(encoder, files, model_dir)
    merge_adapter(encoder, files)


def merge_adapter(encoder: MultiScaleEncoder, files: AdapterFiles) -> None:
    """Add a LoRA adapter's update to the encoder's transformer weights, in place.

    Each adapted linear layer ``W`` (``[out, in]``) becomes ``W + s * B @ A`` with ``A``: ``[r, in]``, ``B``:
    ``[out, r]`` and ``s = alpha / r`` (``alpha / sqrt(r)`` for rsLoRA), which is what PEFT computes unmerged.

    A model's sentence branch is dropped (:meth:`~muses.encoder.MultiScaleEncoder.drop_sentence_branch`): it was
    trained against the weights before the merge, so sentences in context come from the merged transformer, and a
    save of the merged model has no branch.

    Raises:
        ModelError: for an adapter kind this cannot merge (DoRA, bias training) or weights that name layers the
            model does not have.
    """
    cfg = files.peft_config
    unusual = (
        getattr(cfg, "use_dora", False)
        or getattr(cfg, "bias", "none") != "none"
        or getattr(cfg, "lora_bias", False)
        or getattr(cfg, "rank_pattern", None)
        or getattr(cfg, "alpha_pattern", None)
        or getattr(cfg, "modules_to_save", None)
    )
    if unusual:
        raise ModelError(
            f"{files.path}: only plain LoRA (one rank and alpha, no DoRA, biases or saved modules) can be merged; "
            "train it with `muses adapters train`."
        )
    rank = int(cfg.r)
    scale = float(cfg.lora_alpha) / (math.sqrt(rank) if getattr(cfg, "use_rslora", False) else rank)
    model = hf_model(encoder)
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in files.weights.items():
        layer, _, kind = key.removeprefix(PEFT_PREFIX).rpartition(".lora_")
        layers.setdefault(layer, {})[kind.split(".")[0]] = value
    targets: list[tuple[torch.nn.Linear, torch.Tensor, torch.Tensor]] = []
    for layer, ab in layers.items():  # every layer checked before any weight changes
        try:
            linear = model.get_submodule(layer)
        except AttributeError:
            raise ModelError(f"{files.path}: the adapter names layer {layer!r}, which this model lacks.") from None
        if set(ab) != {"A", "B"} or not isinstance(linear, torch.nn.Linear):
            raise ModelError(f"{files.path}: layer {layer!r} has no plain LoRA pair (A, B) to merge.")
        targets.append((linear, ab["A"].to(linear.weight), ab["B"].to(linear.weight)))
    with torch.no_grad():
        for linear, a, b in targets:
            linear.weight += scale * (b @ a)
    encoder.drop_sentence_branch()  # trained against the weights before the merge


def add_task_adapter(
    model_dir: str | os.PathLike[str], adapter_dir: str | os.PathLike[str], task: str, replace: bool = False
) -> Path:
    """Copy an adapter folder into a saved MuSES model as its adapter for ``task``.

    The adapter must have been trained on this model's transformer (the fingerprints in ``muses_adapter.json`` and
    of the model's weights agree), else its update would be applied to other weights.

    Returns:
        The new adapter folder, ``model_dir/adapters/<task>``.

    Raises:
        InputError: for a bad task name, an adapter of another model, or an existing task without ``replace``.
    """
    target = task_folder(model_dir, task)
    if target.exists() and not replace:
        raise InputError(f"{model_dir} already has an adapter for task {task!r}; pass --replace to overwrite it.")
    files = read_adapter(adapter_dir)
    check_trained_on(MultiScaleEncoder.load(model_dir), files, model_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    new_meta = AdapterMeta(**{**(files.meta or AdapterMeta(key=task)).__dict__, "key": task})
    return write_adapter_folder(target, files.peft_config, files.weights, new_meta)
