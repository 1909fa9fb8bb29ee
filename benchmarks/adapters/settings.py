"""The run's inputs: the profile of sizes (``configs/bench/adapters/*.yaml``) and the domains' adapter recipes
(``configs/adapters/<domain>.yaml``)."""

from __future__ import annotations

import os
from fnmatch import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from muses.errors import ConfigError, InputError, validation_problems

if TYPE_CHECKING:
    from muses.training.config import TrainConfig

MERGED = ("merged-mean", "merged-sum")  # the merged adapters' keys: weights 1/n and 1 (the package docstring)


class BenchSettings(BaseModel):
    """The run's sizes (a YAML profile, ``configs/bench/adapters/*.yaml``); the adapters' training is in their recipes.

    ``domains``: recipe names (``<recipes>/<name>.yaml``), in the run's order (None: every recipe of the folder,
    by name). ``train_overrides``: recipe-name pattern (``fnmatch``) -> dotted settings laid over the matching
    recipes (e.g. a smoke run's fewer steps).
    """

    model_config = ConfigDict(extra="forbid")

    domains: list[str] | None = None
    sequence: list[str] = Field(min_length=1)
    capacities: list[int] = Field(min_length=1)
    request_size: int = Field(ge=1)
    test_articles: int = Field(ge=1)
    dev_articles: int = Field(ge=1)
    knn_index_articles: int = Field(ge=1)
    scifact_distractors: int = Field(ge=0)
    scifact_claims: int | None = None
    dims: list[int] = Field(min_length=1)
    timing_repeats: int = Field(1, ge=1)
    seed: int = 0
    train_overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)


def load_bench_settings(path: str | os.PathLike[str]) -> BenchSettings:
    """Read and validate a bench profile (YAML).

    Raises:
        ConfigError: naming the file and each bad field.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"bench profile {p} does not exist (the shipped ones are in configs/bench/adapters/).")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        return BenchSettings.model_validate(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    except ValidationError as e:
        raise ConfigError(f"{p}: invalid bench profile: {validation_problems(e.errors())}") from None


def load_recipes(
    folder: str | os.PathLike[str],
    s: BenchSettings,
    work: str | os.PathLike[str] | None = None,
    overrides: dict[str, object] | None = None,
) -> dict[str, TrainConfig]:
    """The adapter recipes of the run, domain key -> validated recipe, in ``s.domains`` order.

    Each is ``<folder>/<name>.yaml`` with ``s.train_overrides`` for its name laid over it, then ``overrides`` (every
    recipe); ``work`` (when given) replaces each ``output_dir`` with ``<work>/<name>``. The domain key is the
    recipe's ``model.adapter.key`` (default: its name).

    Raises:
        InputError: a missing folder or recipe, a recipe without ``model.adapter``, two recipes with one key.
        ConfigError: a recipe that does not validate.
    """
    from muses.training.config import load_config

    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"recipe folder {root} does not exist (the shipped recipes are in configs/adapters/).")
    names = s.domains if s.domains is not None else sorted(p.stem for p in root.glob("*.yaml"))
    missing = [n for n in names if not (root / f"{n}.yaml").is_file()]
    if missing or not names:
        raise InputError(f"no recipe {', '.join(f'{n}.yaml' for n in missing) or '*.yaml'} in {root}.")
    out: dict[str, TrainConfig] = {}
    for name in names:
        laid = {k: v for pattern, o in s.train_overrides.items() if fnmatch(name, pattern) for k, v in o.items()}
        laid |= overrides or {}
        if work is not None:
            laid["output_dir"] = str(Path(work) / name)
        cfg = load_config(root / f"{name}.yaml", laid)
        if cfg.model.adapter is None:
            raise InputError(f"{root / name}.yaml trains the whole model: an adapter recipe sets model.adapter.")
        key = cfg.model.adapter.key or cfg.name
        if key in out:
            raise InputError(f"two recipes in {root} train the adapter {key!r}; give each domain its own key.")
        out[key] = cfg
    return out


def domain_topic(cfg: TrainConfig) -> str | None:
    """The Wikipedia topic a recipe's domain is (one ``data.wikipedia_topics`` topic), or None for SciFact.

    Raises:
        InputError: a recipe that is neither.
    """
    topics = cfg.data.wikipedia_topics or []
    if cfg.data.wikipedia_articles and len(topics) == 1:
        return topics[0]
    if cfg.data.scifact and not cfg.data.wikipedia_articles:
        return None
    raise InputError(
        f"recipe {cfg.name!r}: a bench domain trains on one Wikipedia topic (data.wikipedia_topics: [TOPIC]) or on "
        "SciFact (data.scifact: true, data.wikipedia_articles: 0)."
    )
