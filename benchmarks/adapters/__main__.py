"""``python -m benchmarks.adapters``: run the domain-shift experiment (or re-render its report).

Writes ``<out>/results.json`` and ``<out>/adapters.md``. ``--data-dir`` defaults to the library's
(``$MUSES_DATA_DIR``, else ``../shared/data``); ``--set key.path=value`` overrides a setting of every recipe (as
``muses train --set``). A bad profile or recipe is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from benchmarks.adapters.report import render
from muses.errors import MusesError

REPO_ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, run (or re-render), write ``results.json`` and ``adapters.md``."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.adapters",
        description="The domain-shift experiment: domain LoRA adapters served from an LRU AdapterCache.",
    )
    parser.add_argument("--config", type=Path, default=REPO_ROOT / "configs/bench/adapters/full.yaml")
    parser.add_argument("--recipes", type=Path, default=REPO_ROOT / "configs/adapters")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("docs/reports/adapters"))
    parser.add_argument("--work-dir", type=Path, default=Path("runs/adapters"))
    parser.add_argument("--set", dest="sets", action="append", default=[], help="recipe setting key.path=value")
    parser.add_argument("--render-only", action="store_true", help="rewrite adapters.md from <out>/results.json")
    args = parser.parse_args(argv)
    out: Path = args.out
    if args.render_only:
        results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    else:
        from benchmarks.adapters.run import run_configured

        overrides: dict[str, object] = {}
        for item in args.sets:
            key, sep, value = item.partition("=")
            if not sep or not key:
                parser.error(f"--set {item!r} must look like key.path=value")
            overrides[key] = yaml.safe_load(value)
        try:
            results = run_configured(args.config, args.recipes, args.work_dir, args.data_dir, overrides)
        except MusesError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    (out / "adapters.md").write_text(render(results), encoding="utf-8")
    print(f"wrote {out / 'adapters.md'}" + ("" if args.render_only else f" and {out / 'results.json'}"))


if __name__ == "__main__":
    main()
