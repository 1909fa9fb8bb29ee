"""Recipes trained one after another: ``muses train -c A.yaml -c B.yaml``, a stage list, an ablation arm.

Each stage after the first starts from the model the stages before it keep (the last whole-model stage's
``output_dir/best``). Adapter stages (``model.adapter``) come last, and each is added to that model's folder as its
task adapter (:mod:`muses.adapters.tasks`), so the chain ends in one folder that loads with every task it trained.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from muses.errors import InputError
from muses.training.config import TrainConfig, load_config, read_stage_list

Paths = Sequence[str | os.PathLike[str]]


def expand_stage_lists(configs: Paths) -> list[Path]:
    """``configs`` with each stage list (:func:`~muses.training.config.read_stage_list`) replaced by its recipes."""
    return [stage for c in configs for stage in read_stage_list(c) or [Path(c)]]


def task_adapter_target(stages: Sequence[TrainConfig]) -> Path | None:
    """The model the next stage starts from: the last whole-model stage's ``output_dir/best``, or None before the
    first; an adapter stage after it is added to that folder as its task adapter."""
    models = [s for s in stages if s.model.adapter is None]
    return Path(models[-1].output_dir) / "best" if models else None


def load_stages(configs: Paths, overrides: Mapping[str, object] | None = None) -> list[TrainConfig]:
    """Recipes trained one after another, all validated before the first starts; a stage list stands for the recipes
    it names. Each after the first starts from the model the stages before it keep: its ``model.base`` becomes
    :func:`task_adapter_target` of them. ``overrides`` (dotted keys, as :func:`load_config`'s) apply to every stage.

    Raises:
        InputError: two stages write to the same output_dir (the second would resume the first's checkpoint), a
            whole-model stage follows an adapter stage (the adapter would serve weights that are gone), or a stage
            selects on SciFact claims an earlier stage trained on (``data.dev_scifact_unused_claims``,
            ``data.dev_scifact_rationale_fold``).
    """
    stages: list[TrainConfig] = []
    written: dict[Path, Path] = {}
    for config in expand_stage_lists(configs):
        model = task_adapter_target(stages)
        cfg = load_config(config, {**(overrides or {}), **({"model.base": str(model)} if model else {})})
        if cfg.model.adapter is None and stages and stages[-1].model.adapter is not None:
            raise InputError(
                f"{config} trains the whole model after an adapter stage; put adapter stages last (an adapter "
                "serves the weights it was trained on)."
            )
        trains = [st.name for st in stages if st.task_weights.get("scifact", 0) > 0]
        fold = cfg.data.dev_scifact_rationale_fold
        unevidenced = [  # earlier stages that train the claims without evidence outside this stage's held-out fold
            s.name
            for s in stages
            if s.task_weights.get("rationale", 0) > 0
            and s.data.scifact_claims_without_evidence
            and (s.data.dev_scifact_rationale_fold != fold or not cfg.data.scifact_claims_without_evidence)
        ]
        if cfg.data.dev_scifact_unused_claims and trains:
            raise InputError(
                f"{config} selects on SciFact train-fit claims (data.dev_scifact_unused_claims) that the earlier stage "
                f"{trains[0]!r} trains on (task_weights.scifact): drop the option here or the task there."
            )
        if cfg.data.dev_scifact_unused_claims and unevidenced:
            raise InputError(
                f"{config} selects on SciFact train-fit claims (data.dev_scifact_unused_claims) that the earlier stage "
                f"{unevidenced[0]!r} trains on (data.scifact_claims_without_evidence): hold out the same fold in both "
                "with data.scifact_claims_without_evidence here too, or drop the option here."
            )
        other_fold = [
            s.name
            for s in stages
            if s.task_weights.get("rationale", 0) > 0 and s.data.dev_scifact_rationale_fold != fold
        ]
        if fold is not None and (saw := trains + other_fold):
            raise InputError(
                f"{config} selects on the rationale claims of fold {list(fold)} (data.dev_scifact_rationale_fold) "
                f"that the earlier stage {saw[0]!r} trains on: hold out the same fold there, or drop the option here."
            )
        out = Path(cfg.output_dir).resolve()
        if out in written:
            raise InputError(
                f"{config} and {written[out]} both write to {cfg.output_dir}: give each stage its own output_dir "
                "(a --set output_dir=... applies to every stage)."
            )
        written[out] = config
        stages.append(cfg)
    return stages


def train_stages(
    stages: Sequence[TrainConfig],
    train: Callable[[TrainConfig], dict[str, Any]],
    log: Callable[[str], None] = print,
    main_process: bool = True,
) -> list[dict[str, Any]]:
    """Train ``stages`` (from :func:`load_stages`) in turn with ``train`` (one recipe -> its summary); each adapter
    stage then becomes a task adapter of the model the stages before it keep. ``main_process`` False (another rank
    of a data-parallel run) trains without writing into the model folder. Returns each stage's summary."""
    summaries = []
    for i, cfg in enumerate(stages, 1):
        if len(stages) > 1:
            log(f"stage {i}/{len(stages)} {cfg.name}: starts from {cfg.model.base}")
        summaries.append(train(cfg))
        model = task_adapter_target(stages[: i - 1])
        if cfg.model.adapter is not None and model is not None and main_process:
            from muses.adapters.tasks import add_task_adapter
            from muses.training.build import adapter_key

            key = adapter_key(cfg)
            add_task_adapter(model, Path(cfg.output_dir) / "best", key, replace=True)
            log(f"{model} now ships the {key!r} task adapter (muses.adapters.tasks)")
    return summaries
