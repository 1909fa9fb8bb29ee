"""The run's adapters: one trained per domain recipe (reused or resumed when already there), and two merged ones."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks.adapters.settings import MERGED
from muses.adapters.lora import AdapterMeta, base_fingerprint, read_meta, write_adapter_folder
from muses.encoder import MultiScaleEncoder

if TYPE_CHECKING:
    from muses.training.config import TrainConfig

Log = Callable[[str], None]


def train_adapters(
    recipes: dict[str, TrainConfig], data_dir: str | os.PathLike[str] | None, log: Log
) -> dict[str, dict[str, Any]]:
    """Train (or resume, or reuse) every domain's adapter as its recipe says; returns key -> training summary."""
    from muses.training.data import load_training_data
    from muses.training.trainer import BEST, Trainer

    out: dict[str, dict[str, Any]] = {}
    for key, cfg in recipes.items():
        data = load_training_data(cfg, data_dir)
        t = time.perf_counter()
        summary = Trainer(cfg, data).train(progress=False)
        seconds = time.perf_counter() - t
        meta = read_meta(Path(cfg.output_dir) / BEST)
        history = [json.loads(ln) for ln in Path(summary["history"]).read_text(encoding="utf-8").splitlines()]
        step_s = [h["seconds"] for h in history if "seconds" in h]
        out[key] = {
            "steps": summary["steps"],
            "train_items": data.sizes(),
            "seconds_this_run": round(seconds, 1),
            "seconds_per_step": round(float(np.mean(step_s)), 2) if step_s else None,
            "folder": str(Path(cfg.output_dir) / BEST),
            "centroid_texts": meta.n_texts,
        }
        log(f"adapter {key}: {summary['steps']} steps, {seconds:.0f}s this run")
    return out


def merge_adapters(folders: dict[str, Path], work: Path, log: Log) -> dict[str, Path]:
    """The merged adapters (PEFT ``add_weighted_adapter``, ``cat``) with weights ``1/n`` and 1, as folders."""
    from peft import PeftModel, get_peft_model_state_dict

    host = MultiScaleEncoder.from_base()
    fingerprint = base_fingerprint(host)
    names = list(folders)
    peft_model = PeftModel.from_pretrained(host.transformer.auto_model, str(folders[names[0]]), adapter_name=names[0])
    for name in names[1:]:
        peft_model.load_adapter(str(folders[name]), adapter_name=name)
    metas = [read_meta(folders[n]) for n in names]
    cents = [m.centroid for m in metas if m.centroid is not None]
    out: dict[str, Path] = {}
    for key, w in zip(MERGED, (1.0 / len(names), 1.0), strict=True):
        peft_model.add_weighted_adapter(names, [w] * len(names), key, combination_type="cat")
        weights = {
            k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(peft_model, adapter_name=key).items()
        }
        meta = AdapterMeta(
            key=key,
            base_model=host.base_name,
            base_fingerprint=fingerprint,
            centroid=np.mean(cents, axis=0).tolist() if cents else None,
            info={"merged": names, "weight": w, "combination_type": "cat"},
        )
        out[key] = write_adapter_folder(work / key, peft_model.peft_config[key], weights, meta)
        log(f"merged adapter {key}: rank {getattr(peft_model.peft_config[key], 'r', '?')}")
    return out
