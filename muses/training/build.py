"""Model building per training mode: what a recipe's ``model`` section turns into before the first step.

One function per mode, each returning a :class:`ModelSetup` (the model, the optimizer's parameter groups, the
frozen teacher or None, the adapter key or None):

- :func:`build_full`: full fine-tuning of ``model.base`` (optionally with ``freeze_base`` / ``freeze_embeddings``);
- :func:`build_adapter`: a LoRA adapter on a frozen base and frozen heads (``model.adapter``);
- :func:`build_scratch`: a from-scratch encoder and its WordPiece tokenizer (``model.scratch``);
- :func:`build_upcycled`: the base with feed-forward layers upcycled into MoE layers (``model.upcycle``);
- :func:`build_teacher`: the frozen base model that retention distils to.

:func:`build_model` picks the mode from the recipe. Every mode draws from the global torch RNG in one order:
the student (its heads, its experts), then the teacher, then the adapter's LoRA weights; a seeded run therefore
starts from the same weights whatever the mode's code path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from muses.adapters.config import check_key
from muses.adapters.lora import attach_adapter
from muses.encoder import DEFAULT_BASE, MultiScaleEncoder, is_saved_model
from muses.errors import ConfigError
from muses.scratch.moe import MoEConfig, moe_layers
from muses.scratch.upcycle import upcycle_encoder
from muses.training.config import OptimConfig, TrainConfig
from muses.training.data import TrainingData

SCRATCH_BASE = "scratch-base"


@dataclass
class ModelSetup:
    """What the training loop needs from a mode.

    Attributes:
        encoder: the model being trained.
        param_groups: AdamW parameter groups: ``[{"params", "lr"}, ...]``, base weights first, new weights second.
        teacher: the frozen base model for retention (eval mode), or None when retention is off.
        adapter_key: the LoRA adapter's key in adapter mode (checkpoints then hold the adapter only), else None.
    """

    encoder: MultiScaleEncoder
    param_groups: list[dict[str, Any]]
    teacher: MultiScaleEncoder | None = None
    adapter_key: str | None = None


def build_full(config: TrainConfig, device: str | None = None, encoder: MultiScaleEncoder | None = None) -> ModelSetup:
    """Full fine-tuning of ``model.base`` (or of ``encoder`` when given)."""
    return _setup(config, encoder or _from_base(config, config.model.base, device), device)


def build_upcycled(
    config: TrainConfig, device: str | None = None, encoder: MultiScaleEncoder | None = None
) -> ModelSetup:
    """``model.base`` with the feed-forward layers ``model.upcycle.layers`` upcycled into MoE layers; a given
    ``encoder`` is taken as already upcycled (e.g. loaded from a checkpoint)."""
    return _setup(config, encoder or _upcycled(config, device), device)


def build_scratch(
    config: TrainConfig,
    data: TrainingData,
    out: Path,
    device: str | None = None,
    encoder: MultiScaleEncoder | None = None,
) -> ModelSetup:
    """A from-scratch encoder over the base folder ``out/scratch-base`` (see :func:`scratch_base_path`)."""
    return _setup(config, encoder or _from_base(config, scratch_base_path(config, data, out), device), device)


def build_adapter(
    config: TrainConfig, device: str | None = None, encoder: MultiScaleEncoder | None = None
) -> ModelSetup:
    """A trainable LoRA adapter (``model.adapter``) on a frozen base and frozen heads.

    The LoRA weights are then the only parameters requiring a gradient: they form the first parameter group, the
    frozen heads an idle second one.
    """
    key = adapter_key(config)
    if encoder is None:
        encoder = (
            _upcycled(config, device)
            if config.model.upcycle is not None
            else _from_base(config, config.model.base, device)
        )
    return _setup(config, encoder, device, key)


def build_teacher(config: TrainConfig, device: str | None = None) -> MultiScaleEncoder | None:
    """The frozen base model (eval mode) that retention distils to; None when ``loss.retention`` is ``none``."""
    if config.loss.retention == "none":
        return None
    teacher = MultiScaleEncoder.from_base(config.model.base, dims=config.model.dims, device=device)
    if config.model.adapter is not None:  # it sets the student's sentence branch aside (active_branch): so here
        teacher.drop_sentence_branch()
    teacher.eval()
    return teacher


def build_model(
    config: TrainConfig,
    data: TrainingData,
    out: Path,
    device: str | None = None,
    encoder: MultiScaleEncoder | None = None,
) -> ModelSetup:
    """The recipe's mode: adapter, from scratch, upcycled or full fine-tuning (in that order of precedence)."""
    m = config.model
    if m.adapter is not None:
        return build_adapter(config, device, encoder)
    if m.scratch is not None:
        return build_scratch(config, data, out, device, encoder)
    if m.upcycle is not None:
        return build_upcycled(config, device, encoder)
    return build_full(config, device, encoder)


def param_groups(encoder: MultiScaleEncoder, optim: OptimConfig) -> list[dict[str, Any]]:
    """AdamW groups: trainable base weights at ``optim.lr``, the sentence branch's too (a copy of base layers); new
    weights at ``optim.head_lr`` (the heads, and the routers of MoE layers, upcycled or from scratch)."""
    routers = [p for _, layer in moe_layers(encoder) for p in layer.router.parameters() if p.requires_grad]
    branch = encoder.heads.branch
    branch_ids = {id(p) for p in branch.parameters()} if branch is not None else set()
    head_params = [p for p in encoder.heads.parameters() if id(p) not in branch_ids] + routers
    head_ids = {id(p) for p in head_params}
    base_params = [p for p in encoder.parameters() if p.requires_grad and id(p) not in head_ids]
    return [{"params": base_params, "lr": optim.lr}, {"params": head_params, "lr": optim.head_lr}]


def adapter_key(config: TrainConfig) -> str:
    """The adapter's key: ``model.adapter.key``, else the recipe's name; checked as a folder-safe key."""
    ad = config.model.adapter
    key = (ad.key if ad is not None else None) or config.name
    try:
        return check_key(key)
    except ValueError as e:
        raise ConfigError(f"{e} Set model.adapter.key in the recipe.") from None


def scratch_base_path(config: TrainConfig, data: TrainingData, out: Path) -> str:
    """A from-scratch base model folder (``out/scratch-base``): a WordPiece tokenizer trained on the recipe's
    training texts and a seeded fresh encoder. Made once; a resumed run reuses it."""
    from muses.scratch.base import scratch_base

    spec = config.model.scratch
    assert spec is not None
    texts = [d.text for d in data.documents] + [t for a, b, _ in data.stsb for t in (a, b)]
    return str(scratch_base(spec.model_dump(), texts, out / SCRATCH_BASE, config.seed))


def _from_base(config: TrainConfig, base: str, device: str | None) -> MultiScaleEncoder:
    m = config.model
    heads: dict[str, Any] = m.model_dump(
        include={
            "dims",
            "head_kind",
            "sentence_pooling",
            "document_pooling",
            "context_head",
            "context_pooling",
            "sentence_branch",
        }
    )
    # an exported folder trains on its PyTorch weights
    encoder = MultiScaleEncoder.from_base(base, **heads, device=device, backend="torch")
    if base == DEFAULT_BASE or not is_saved_model(base):
        if m.keep_branch:
            raise ConfigError(
                f"model.keep_branch keeps a saved model's sentence branch, and model.base {base} is not a saved MuSES "
                "model: run the recipe as a stage after configs/sentence-branch.yaml, or set model.base to its model."
            )
        return encoder
    if m.fresh_heads:
        return encoder.with_fresh_heads(**heads, keep_branch=m.keep_branch)
    if m.sentence_branch and not encoder.heads.sentence_branch:
        encoder.add_sentence_branch(m.sentence_branch)  # a fresh branch gives the same vectors: nothing is lost
    differs = _saved_head_differences(config, encoder)
    if differs:
        raise ConfigError(
            f"model.base {base} is a saved MuSES model whose heads the recipe would change ({'; '.join(differs)}): "
            "set model.fresh_heads: true to train new heads on its transformer, or match its settings."
        )
    return encoder


def _saved_head_differences(config: TrainConfig, encoder: MultiScaleEncoder) -> list[str]:
    """The recipe's head settings that differ from a loaded MuSES model's (a head_kind only if the recipe sets it)."""
    m, h = config.model, encoder.heads
    out = []
    if "head_kind" in m.model_fields_set and m.head_kind != h.head_kind:
        out.append(f"head_kind {h.head_kind} -> {m.head_kind}")
    for label, want, have in (
        ("sentence_pooling", m.sentence_pooling, h.sentence_pooling),
        ("document_pooling", m.document_pooling, h.document_pooling),
        ("context_head", m.context_head, h.context_head),
        ("context_pooling", m.context_pooling, h.context_pooling),
    ):
        if want is not None and want != have:
            out.append(f"{label} {have} -> {want}")
    if "sentence_branch" in m.model_fields_set and m.sentence_branch != h.sentence_branch:
        out.append(f"sentence_branch {h.sentence_branch} -> {m.sentence_branch}")
    if m.dims is not None and list(m.dims) != list(h.dims):
        out.append(f"dims {h.dims} -> {m.dims}")
    return out


def _upcycled(config: TrainConfig, device: str | None) -> MultiScaleEncoder:
    up = config.model.upcycle
    assert up is not None
    encoder = _from_base(config, config.model.base, device)
    upcycle_encoder(encoder, MoEConfig.from_dict(up.moe_config()), up.layers)
    return encoder


def _setup(config: TrainConfig, encoder: MultiScaleEncoder, device: str | None, key: str | None = None) -> ModelSetup:
    """Teacher, freezing and (with ``key``) the adapter, in the RNG order of the module docstring."""
    m = config.model
    teacher = build_teacher(config, device)
    if m.freeze_base:
        encoder.transformer.requires_grad_(False)
    if m.freeze_embeddings:
        encoder.transformer.auto_model.get_input_embeddings().requires_grad_(False)
    if m.train_heads is not None:
        heads = encoder.heads
        poolings = {"sentence": heads.pool_sentence, "document": heads.pool_document, "context": heads.pool_context}
        for name, head in heads.heads.items():
            head.requires_grad_(name in m.train_heads)
            pooling = poolings.get(name)
            if pooling is not None:
                pooling.requires_grad_(name in m.train_heads)
        if heads.branch is not None:
            heads.branch.requires_grad_("branch" in m.train_heads)
    if key is not None and m.adapter is not None:
        encoder.requires_grad_(False)
        attach_adapter(encoder, key, m.adapter, trainable=True)
    return ModelSetup(encoder, param_groups(encoder, config.optim), teacher, key)


def trainable_parameters(encoder: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters that require a gradient (for gradient clipping)."""
    return [p for p in encoder.parameters() if p.requires_grad]
