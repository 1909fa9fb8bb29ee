"""Which metrics a report shows, and how a task's flat metric names become a table of metric by dim.

Shared by the markdown report (:mod:`muses.evaluation.report`), the plots (:mod:`muses.plots`) and the CLI, so
none of them imports another for it.

Example::

    >>> dim_table({"spearman@64": 0.79, "spearman@384": 0.82, "pearson@64": 0.8}, ("spearman",))
    ([64, 384], {'spearman': {64: 0.79, 384: 0.82}})
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

_DIM_KEY = re.compile(r"^(?P<name>.+)@(?P<dim>\d+)$")

# The rows shown in markdown and compare tables (results.json keeps every metric).
HEADLINES: dict[str, tuple[str, ...]] = {
    "sts": ("spearman",),
    "scifact": (
        "document/ndcg@10",
        "sentence/ndcg@10",
        "token-rerank/ndcg@10",
        "fusion-wsum/ndcg@10",
        "fusion-rrf/ndcg@10",
        "document/recall@100",
    ),
    "evidence": ("flat/recall@1", "flat/recall@10", "flat/mrr@100", "zoom/recall@1", "zoom/recall@10", "zoom/mrr@100"),
    "squad": (
        "unambiguous/flat/recall@1",
        "unambiguous/flat/mrr@100",
        "unambiguous/zoom/recall@1",
        "unambiguous/zoom/mrr@100",
        "all/flat/recall@1",
    ),
    "hierarchy": (
        "wikipedia/hierarchy/batch32",
        "wikipedia/hierarchy/all",
        "scifact/hierarchy/batch32",
        "scifact/hierarchy/all",
    ),
    "knn": ("knn/document/accuracy", "knn/document/macro_f1", "knn/sentence/accuracy", "knn/sentence/macro_f1"),
    "routing": ("tokens_per_s", "moe/balance", "moe/max_balance", "moe/drop_rate", "moe/specialisation"),
}
HEADLINES["squad-standalone"] = HEADLINES["squad-local"] = HEADLINES["squad"]
HEADLINES["evidence-local"] = HEADLINES["evidence"]


def dim_table(metrics: Mapping[str, float], headlines: Sequence[str]) -> tuple[list[int], dict[str, dict[int, float]]]:
    """Rows ``{metric name: {dim: value}}`` for the headline metrics, and the sorted dims present."""
    rows: dict[str, dict[int, float]] = {}
    for key, value in metrics.items():
        m = _DIM_KEY.match(key)
        if m and m["name"] in headlines:
            rows.setdefault(m["name"], {})[int(m["dim"])] = value
    dims = sorted({d for r in rows.values() for d in r})
    return dims, {h: rows[h] for h in headlines if h in rows}
