"""Headline metrics of several evaluation reports side by side (``muses eval compare``).

Each column is one model of the reports given (a report's model and its baselines), named by its ``model`` entry
or by a new name (``--as /work/exp/v5=v5``). Models with the same name merge into one column, task by task (a later
report's task replaces an earlier one's), so a model evaluated in several runs (``--tasks squad,sts`` and ``--tasks
scifact``) reads as one. The first column is the reference the others are differenced against.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from muses.errors import InputError
from muses.evaluation.report import ALL_TASKS, load_results
from muses.evaluation.tables import HEADLINES, dim_table

Row = tuple[str, str, list[float | None]]  # (task, metric@dim, one value per column or None)


@dataclass
class Column:
    """One model's tasks (``{task: {"metrics": {...}, ...}}``), merged from the reports named in ``sources``."""

    label: str
    tasks: dict[str, Any] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)


def parse_rename(arg: str) -> tuple[str, str]:
    """``"/work/exp/v5=v5"`` -> ``("/work/exp/v5", "v5")``: split at the last ``=``, so a model name may hold one.

    Raises:
        InputError: no ``=``, or nothing on one side of it.
    """
    name, sep, label = arg.rpartition("=")
    if not sep or not name or not label:
        raise InputError(f"--as {arg!r} must look like MODEL=NAME, e.g. --as /work/exp/v5=v5.")
    return name, label


def load_columns(reports: Sequence[str | Path], rename: Mapping[str, str] | None = None) -> list[Column]:
    """The columns of ``reports`` (report folders or results.json files): every model of each, renamed by
    ``rename`` (``{model name: column name}``), in order of first appearance.

    Raises:
        InputError: a report is missing or not a MuSES results.json, or fewer than two models are left to compare.
    """
    columns: dict[str, Column] = {}
    for path in reports:
        results = load_results(path)
        models = results["models"]
        if not isinstance(models, list) or not all(
            isinstance(m, dict) and isinstance(m.get("tasks"), dict) for m in models
        ):
            raise InputError(
                f"{path}: 'models' must be a list of {{model, tasks}} entries, as `muses eval all` writes."
            )
        for model in models:
            name = str(model.get("model", "?"))
            label = (rename or {}).get(name, name)
            column = columns.setdefault(label, Column(label))
            column.tasks.update(model["tasks"])
            column.sources.append(f"{path}: {results.get('command', '(no command recorded)')}")
    if len(columns) < 2:
        raise InputError(
            f"the reports hold {len(columns)} model(s) ({', '.join(columns) or '-'}): compare needs two or more "
            "(models with the same name, or renamed alike with --as, merge into one column)."
        )
    return list(columns.values())


def compare_rows(columns: Sequence[Column]) -> list[Row]:
    """Every headline metric (``HEADLINES``) at every dim any column has, in task order."""
    rows: list[Row] = []
    for task in ALL_TASKS:
        if not any(task in c.tasks for c in columns):
            continue
        heads = HEADLINES.get(task, ())
        tables = [dim_table(c.tasks.get(task, {}).get("metrics", {}), heads) for c in columns]
        dims = sorted({d for ds, _ in tables for d in ds})
        for name in heads:
            for d in dims:
                values = [t.get(name, {}).get(d) for _, t in tables]
                if any(v is not None for v in values):
                    rows.append((task, f"{name}@{d}", values))
    return rows


def cell(value: float | None, reference: float | None) -> str:
    """``0.8263``, or ``0.8263 (+0.0060)`` against a reference; empty when missing."""
    if value is None:
        return ""
    if reference is None:
        return f"{value:.4f}"
    return f"{value:.4f} ({value - reference:+.4f})"


def render_markdown(columns: Sequence[Column], rows: Sequence[Row]) -> str:
    """A markdown page: the table (the first column is the reference; the others show their difference from it),
    then where each column's numbers come from."""
    lines = [
        "# Side by side",
        "",
        f"Headline metrics; each column after **{columns[0].label}** also shows its difference from it.",
        "",
        "| task | metric | " + " | ".join(c.label for c in columns) + " |",
        "|---|---|" + "---:|" * len(columns),
    ]
    for task, metric, values in rows:
        cells = [cell(values[0], None)] + [cell(v, values[0]) for v in values[1:]]
        lines.append(f"| {task} | {metric} | " + " | ".join(cells) + " |")
    lines += ["", "Sources:", ""]
    lines += [f"- **{c.label}**: " + "; ".join(f"`{s}`" for s in c.sources) for c in columns]
    return "\n".join(lines) + "\n"
