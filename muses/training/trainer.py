"""The MuSES training loop: step, log, evaluate on dev, checkpoint.

What it trains is built elsewhere: the model per mode (full, LoRA adapter, from scratch, upcycled MoE) and the
frozen teacher in :mod:`muses.training.build`; the losses per task (hierarchy, STS-B, SciFact and inverse-cloze
pairs, retention) in :mod:`muses.training.tasks`; what a run writes in :mod:`muses.training.checkpoint`.

One step draws a task from the seeded sampler, gets its loss dict (the task loss at a Matryoshka dim drawn from
the schedule plus the consistency term, and retention), adds the MoE auxiliary losses of the forward passes, and
steps AdamW under a linear warm-up schedule, with gradient accumulation and clipping.

Under ``torchrun`` (see :mod:`muses.training.distributed`) every rank draws the same global batch, encodes its
slice, computes the global loss on the gathered vectors, and averages gradients over ranks: a step equals one
process with the global batch. Rank 0 alone evaluates, logs and writes checkpoints.

Evaluation on dev splits (:func:`~muses.training.dev.evaluate_dev`) selects the best checkpoint and stops early.
Checkpoints hold model, optimizer, scheduler, sampler and RNG state and resume exactly; a rerun may change only the
settings read after training (:data:`MIXING`), so a finished run given other WiSE-FT mixes reads them without training
again. In adapter mode (``model.adapter``) checkpoints hold the adapter only and ``best/`` is an adapter folder for an
:class:`~muses.adapters.AdapterCache`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from muses.encoder import MultiScaleEncoder
from muses.errors import ConfigError
from muses.fingerprint import weights_fingerprint
from muses.scratch.model import pop_aux_loss
from muses.training import distributed as dd
from muses.training.build import SCRATCH_BASE, build_model, trainable_parameters
from muses.training.checkpoint import (
    ADAPTER_DIR,
    BEST,
    BEST_CHECKPOINT,
    CENTROID_TEXTS,
    CKPT,
    INTERPOLATION_READINGS,
    MIX_READINGS,
    Routing,
    adapter_routing,
    centroid_texts,
    find_checkpoint,
    load_model_state,
    mix_weights,
    read_checkpoint,
    read_mix_readings,
    rng_state,
    save_best_adapter,
    set_rng_state,
    truncate_history,
    write_checkpoint,
    write_mix_readings,
)
from muses.training.config import DevMetric, TrainConfig
from muses.training.data import TrainingData
from muses.training.dev import DevReading, dev_score, difference_bounds, evaluate_dev, read_dev, tolerance_misses
from muses.training.tasks import PAD_GROUP, Retention, make_sampler, make_tasks
from muses.types import Document

__all__ = [
    "ADAPTER_DIR",
    "BEST",
    "CENTROID_TEXTS",
    "CKPT",
    "PAD_GROUP",
    "SCRATCH_BASE",
    "Trainer",
    "set_seed",
]


def _str_keys(weights: Mapping[DevMetric, float] | None) -> dict[str, float] | None:
    """A recipe's dev weights (``dev_weights``, ``interpolate_weights``) as the plain dict :func:`dev_score` takes."""
    return None if weights is None else {str(k): v for k, v in weights.items()}


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


MIXING = frozenset(
    {
        "interpolate",
        "interpolate_weights",
        "interpolate_tolerance",
        "interpolate_references",
        "interpolate_confidence",
        "interpolate_keep",
    }
)
"""The settings read only after training (the WiSE-FT mixes): a run resumed or rerun with other values trains the same
steps, so a finished run given another mix list reads its mixes again without training again."""


class Trainer:
    """Train a :class:`MultiScaleEncoder` with a :class:`TrainConfig` on :class:`TrainingData`.

    Args:
        config: the recipe.
        data: its training and dev data.
        encoder: train this model instead of building one from ``config.model`` (adapter, teacher and freezing
            still apply).
        device: where to build the model (default: the encoder's choice).
    """

    def __init__(
        self,
        config: TrainConfig,
        data: TrainingData,
        encoder: MultiScaleEncoder | None = None,
        device: str | None = None,
    ) -> None:
        self.config = config
        self.data = data
        self.out = Path(config.output_dir)
        dd.init_from_env()
        self.sampler = make_sampler(config, data)
        small = {
            t: n
            for t in self.sampler.tasks
            if (n := min(self.sampler.batch_sizes[t], data.sizes()[t])) < dd.world_size()
        }
        if small:
            raise ConfigError(
                f"the global batches {small} cannot be split over {dd.world_size()} ranks: raise docs_per_batch / "
                "pairs_per_batch to at least the number of ranks"
            )
        set_seed(config.seed)
        setup = build_model(config, data, self.out, device or dd.default_device(), encoder)
        self.encoder, self.teacher, self.adapter_key = setup.encoder, setup.teacher, setup.adapter_key
        off = sorted(set(config.loss.retention_dims) - set(self.encoder.dims))
        if off:
            raise ConfigError(
                f"loss.retention_dims {off} are not Matryoshka dims of the model; use some of {list(self.encoder.dims)}"
            )
        self.retention = Retention(self.teacher, config.loss, self.encoder.device)
        oc = config.optim
        self.optimizer = torch.optim.AdamW(setup.param_groups, weight_decay=oc.weight_decay)
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, int(oc.warmup_ratio * config.steps), config.steps
        )
        self.generator = torch.Generator().manual_seed(config.seed)
        self.tasks = make_tasks(config, data, self.encoder, self.retention, self.generator)
        dd.broadcast_parameters(self.encoder)  # every rank starts from rank 0's weights
        if dd.is_distributed():
            torch.manual_seed(config.seed + dd.rank())  # each rank its own dropout masks
        self.step = 0
        self.best_score = -float("inf")
        self.bad_evals = 0
        self._routing: Routing | None = None
        self._start: dict[str, Tensor] | None = None  # the starting weights, on CPU, for ``interpolate``
        if config.interpolate:
            self._start = {k: v.detach().to("cpu", copy=True) for k, v in self.encoder.state_dict().items()}
        # what this run starts from: a resume or a new mix from other starting weights (an earlier stage trained or
        # mixed again since) is refused, since the run's checkpoint and its alpha 0 would not belong together
        self._start_weights = weights_fingerprint(self.encoder, {})
        self._dev_digest: str | None = None  # of self.data.dev, for the keys of mix-readings.json

    # ------------------------------------------------------------------ retention (kept for callers and tests)
    def _retention_weight(self, task: str) -> float:
        return self.retention.weight(task)

    def _retain(self, student: Tensor, texts: Sequence[str], task: str) -> Tensor:
        return self.retention.standalone(student, texts, task)

    def _retain_in_context(self, sentence: Tensor, docs: Sequence[Document]) -> Tensor:
        return self.retention.in_context(sentence, docs)

    # ------------------------------------------------------------------ loop
    def train_step(self) -> dict[str, float]:
        """One optimisation step (with gradient accumulation); returns its logged numbers."""
        self.encoder.train()
        oc = self.config.optim
        log: dict[str, float] = {}
        use_amp = oc.amp and self.encoder.device.type == "cuda"
        progress = self.step / max(self.config.steps, 1)
        t0 = time.perf_counter()
        for _ in range(oc.grad_accum):
            task, items = self.sampler.next()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                res = self.tasks[task](items, progress)
                aux = pop_aux_loss(self.encoder)  # MoE balance and z-losses of this micro-step's forwards
                loss = (res["loss"] + res["retention"] + (aux if aux is not None else 0.0)) / oc.grad_accum
            loss.backward()
            if aux is not None:
                log["moe/aux"] = float(aux.detach())
            log.update(
                {
                    f"{task}/loss": float(res["task"].detach()),
                    f"{task}/consistency": float(res["consistency"].detach()),
                    f"{task}/retention": float(res["retention"].detach()),
                    f"{task}/dim": float(res.get("dim", 0)),
                    "loss": float(loss.detach()) * oc.grad_accum,
                }
            )
        dd.average_gradients(trainable_parameters(self.encoder))
        log["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(trainable_parameters(self.encoder), oc.grad_clip))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        log["seconds"] = time.perf_counter() - t0
        log["lr"] = self.scheduler.get_last_lr()[0]
        log["step"] = float(self.step)
        return log

    def evaluate(self, every: bool = False) -> dict[str, float]:
        """Dev metrics (:func:`~muses.training.dev.evaluate_dev`); ``"dev/score"`` selects the best checkpoint.
        Only the metrics ``dev_weights`` weighs, unless ``every`` or ``config.eval_unweighted``. Under torchrun
        rank 0 evaluates and every rank gets its numbers."""
        weights = _str_keys(self.config.dev_weights)
        tasks = (
            None
            if every or self.config.eval_unweighted or weights is None
            else {t for t, w in weights.items() if w > 0}
        )
        return dd.broadcast_object(evaluate_dev(self.encoder, self.data.dev, weights, tasks) if dd.is_main() else {})

    def _read_every(self, encoder: MultiScaleEncoder | None = None, weighted: bool = True) -> DevReading:
        """Every dev metric of ``encoder`` (default: the one training), with each query's value, and ``"dev/score"``
        (by ``dev_weights`` if ``weighted``, else their mean); under torchrun rank 0 reads and every rank gets it."""
        if not dd.is_main():
            return dd.broadcast_object(DevReading({}, {}))
        # read_dev reads in eval mode and restores each module's mode afterwards
        reading = read_dev(encoder if encoder is not None else self.encoder, self.data.dev)
        weights = _str_keys(self.config.dev_weights) if weighted else None
        reading.metrics["dev/score"] = dev_score(reading.metrics, weights)
        return dd.broadcast_object(reading)

    def _read_once(
        self, read: dict[str, DevReading], encoder: MultiScaleEncoder | None = None, weighted: bool = True
    ) -> DevReading:
        """:meth:`_read_every`, unless ``read`` (this run's :data:`MIX_READINGS`) has these weights read on these dev
        sets (:meth:`~muses.training.dev.DevSet.digest`) under this recipe (its settings but :data:`MIXING`, which
        include ``dev_weights``); a new reading is added to it and written at once, so a run killed while mixing
        keeps what it read. (A change to the code that reads is not seen: delete the file to read again.)"""
        key = None
        if dd.is_main():
            if self._dev_digest is None:
                self._dev_digest = self.data.dev.digest()
            recipe = {k: v for k, v in self.config.model_dump().items() if k not in MIXING}
            extra = {"weighted": weighted, "recipe": recipe, "dev": self._dev_digest}
            key = weights_fingerprint(encoder if encoder is not None else self.encoder, extra)
        known = dd.broadcast_object(read.get(key) if key is not None else None)
        if known is not None:
            return known
        reading = self._read_every(encoder, weighted)
        if key is not None:
            read[key] = reading
            try:
                write_mix_readings(self.out, read)
            except OSError as e:  # only a saving lost: the run goes on (and under torchrun, so do the other ranks)
                warnings.warn(f"could not keep the dev reading in {self.out / MIX_READINGS}: {e}", stacklevel=2)
        return reading

    def _reference_reading(self, name: str, read: dict[str, DevReading]) -> DevReading:
        """Every dev metric of the model ``name`` (as ``model.base``: a name or folder) with its own heads, on this
        run's dev sets: a reference for ``interpolate_references``."""
        if not dd.is_main():
            return self._read_once(read)
        reference = MultiScaleEncoder.from_base(name, device=str(self.encoder.device), backend="torch")
        return self._read_once(read, reference, weighted=False)

    def _save_best(self) -> None:
        """The best model: a MuSES model folder, or in adapter mode an adapter folder (PEFT files + routing)."""
        if self.adapter_key is None:
            self.encoder.save(self.out / BEST)
            return
        if self._routing is None:
            self._routing = adapter_routing(self.encoder, centroid_texts(self.config, self.data))
        info = {
            "recipe": self.config.name,
            "step": self.step,
            "best_dev_score": self.best_score,
            "task_weights": {str(k): v for k, v in self.config.task_weights.items()},
            "data": self.data.sizes(),
            "adapter": self.config.model.adapter.model_dump() if self.config.model.adapter else {},
        }
        save_best_adapter(self.encoder, self.adapter_key, self.out / BEST, self._routing, info)

    def save_checkpoint(self) -> Path:
        """Write model, optimizer, scheduler, sampler and RNG state atomically to ``output_dir/checkpoint`` (under
        torchrun: call it on every rank; rank 0 writes, with every rank's torch RNG state, while the others wait)."""
        torch_rngs = dd.all_gather_object(torch.get_rng_state())
        path = self.out / CKPT
        if dd.is_main():
            path = self._write_checkpoint(torch_rngs)
        dd.barrier()
        return path

    def _write_checkpoint(self, torch_rngs: list[Tensor]) -> Path:
        tensors: dict[str, Any] = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "torch_rng": torch_rngs[0],
            "generator": self.generator.get_state(),
        }
        if len(torch_rngs) > 1:
            tensors["torch_rng_ranks"] = torch_rngs
        state = {
            "start_weights": self._start_weights,
            "step": self.step,
            "sampler": self.sampler.state_dict(),
            "best_score": self.best_score,
            "bad_evals": self.bad_evals,
            **rng_state(),
            "config": self.config.model_dump(),
        }
        return write_checkpoint(self.out, self.encoder, self.adapter_key, tensors, state)

    def load_checkpoint(self) -> bool:
        """Resume from ``output_dir/checkpoint`` if present; returns whether it did."""
        ckpt = find_checkpoint(self.out)
        if ckpt is None:
            return False
        state, tensors = read_checkpoint(ckpt)
        # validated again, so that settings added since the checkpoint was written take their defaults
        written, now = TrainConfig.model_validate(state["config"]).model_dump(), self.config.model_dump()
        changed = sorted(k for k in now.keys() | written.keys() if k not in MIXING and now.get(k) != written.get(k))
        if changed:
            raise ConfigError(
                f"{ckpt} was written with another config ({', '.join(changed)} differ); use a new output_dir or the "
                "same config (only the interpolate settings may differ: they are read after training)."
            )
        if state.get("start_weights", self._start_weights) != self._start_weights:  # checkpoints before it: unchecked
            raise ConfigError(
                f"{ckpt} was trained from other starting weights than model.base ({self.config.model.base}) holds "
                "now (an earlier stage trained or mixed again since?); train this stage again: delete its output_dir."
            )
        load_model_state(ckpt, self.encoder, self.adapter_key)
        self.optimizer.load_state_dict(tensors["optimizer"])
        self.scheduler.load_state_dict(tensors["scheduler"])
        ranks = tensors.get("torch_rng_ranks")
        if ranks is not None and len(ranks) == dd.world_size():
            torch.set_rng_state(ranks[dd.rank()])
        else:
            torch.set_rng_state(tensors["torch_rng"])
        self.generator.set_state(tensors["generator"])
        self.sampler.load_state_dict(state["sampler"])
        self.step, self.best_score, self.bad_evals = state["step"], state["best_score"], state["bad_evals"]
        set_rng_state(state)
        return True

    def train(self, resume: bool = True, stop_after: int | None = None, progress: bool = True) -> dict[str, Any]:
        """Train to ``config.steps`` (or early stop), evaluating and checkpointing on schedule.

        Args:
            resume: continue from ``output_dir/checkpoint`` if there is one.
            stop_after: stop (as if interrupted) after this many steps in this call; for tests and time limits.
            progress: show a progress bar.
        Returns:
            A summary: steps done, best dev score, whether it stopped early, and the output paths.
        """
        cfg = self.config
        main = dd.is_main()
        self.out.mkdir(parents=True, exist_ok=True)
        history = self.out / "history.jsonl"
        if resume and self.load_checkpoint():
            if main:
                truncate_history(history, self.step)
        elif main:
            history.unlink(missing_ok=True)
            shutil.rmtree(self.out / BEST_CHECKPOINT, ignore_errors=True)  # a previous run's, not this one's
        dd.barrier()
        stopped_early = False
        start, t0 = self.step, time.perf_counter()
        bar = tqdm(total=cfg.steps, initial=self.step, desc=f"train {cfg.name}", disable=not (progress and main))
        with (history if main else Path(os.devnull)).open("a", encoding="utf-8") as hist:
            if self.step == 0 and cfg.eval_at_start:  # the base model's dev numbers, as the reference
                hist.write(json.dumps({"step": 0.0, **self.evaluate()}) + "\n")
            while self.step < cfg.steps:
                log = self.train_step()
                if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                    log.update(self.evaluate())
                    if log["dev/score"] > self.best_score:
                        self.best_score, self.bad_evals = log["dev/score"], 0
                        if main:
                            self._save_best()
                    else:
                        self.bad_evals += 1
                    stopped_early = self.bad_evals >= cfg.patience
                hist.write(json.dumps(log) + "\n")
                hist.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{log['loss']:.3f}")
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps or stopped_early:
                    self.save_checkpoint()
                if stopped_early or (stop_after is not None and self.step - start >= stop_after):
                    break
        bar.close()
        if main and not (self.out / BEST).exists():
            self._save_best()
        dd.barrier()
        interpolation = self._interpolate() if (self.step >= cfg.steps or stopped_early) else None
        if main:
            from muses.plots import plot_training

            plot_training({cfg.name: history}, self.out / "loss_curves.png")
        dd.barrier()
        return {
            "steps": self.step,
            "best_dev_score": self.best_score,
            "stopped_early": stopped_early,
            "seconds": time.perf_counter() - t0,
            "best_model": str(self.out / BEST),
            "history": str(history),
            "loss_curves": str(self.out / "loss_curves.png"),
            **({"interpolation": interpolation} if interpolation is not None else {}),
        }

    def _interpolate(self) -> dict[str, Any] | None:
        """WiSE-FT (Wortsman et al., 2022, Robust fine-tuning of zero-shot models): the best checkpoint's weights
        mixed with the starting weights, ``alpha * best + (1 - alpha) * start``, for each ``config.interpolate``
        alpha, each scored on dev. ``best/`` becomes whichever scores highest (the checkpoint itself if no mix beats
        it); ``interpolation.json`` records every alpha's score and dev metrics and the one kept (1.0: the
        checkpoint). With ``interpolate_weights`` the checkpoint is scored again and every score uses those weights.
        With ``interpolate_tolerance`` only the checkpoint and mixes whose named dev metrics stay within it of the
        starting model's (alpha 0), and of each of ``interpolate_references``' (evaluated on the same dev sets), can
        be kept; the record lists each one's misses and the references' metrics. With ``interpolate_confidence`` a
        retrieval metric is held to the bootstrap bound of its difference instead
        (:func:`~muses.training.dev.difference_bounds`), the record lists the bounds, and
        ``interpolation-readings.json`` keeps every alpha's per-query dev values (:attr:`DevReading.per_query`).
        With ``interpolate_keep`` that mix is kept whatever this run's dev says (chosen over fold runs); the record
        then says so and names the alpha this run's dev would have kept.

        The checkpoint's own best model is kept in ``best-checkpoint/`` first, and every mix is made from it, so a
        rerun of a finished run (or of one killed while mixing) gives the same ``best/``; the rerun reads again only
        the weights that ``mix-readings.json`` lacks. Every rank runs it (dev scores are broadcast); rank 0 writes.
        Returns that record, or None when the recipe lists no alpha."""
        source = self.out / BEST_CHECKPOINT
        if self._start is None:  # no mixes; an earlier run's (a rerun without them): its checkpoint is best/ again
            if dd.is_main() and source.exists():  # killed in between: train() saves a best/, this replaces it again
                shutil.rmtree(self.out / BEST, ignore_errors=True)
                os.replace(source, self.out / BEST)
                for name in ("interpolation.json", INTERPOLATION_READINGS, MIX_READINGS):
                    (self.out / name).unlink(missing_ok=True)
            dd.barrier()
            return None
        if dd.is_main() and not source.exists():
            tmp = self.out / f".{BEST_CHECKPOINT}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(self.out / BEST, tmp)
            os.replace(tmp, source)
        dd.barrier()
        best = MultiScaleEncoder.load(source, device=str(self.encoder.device), backend="torch").state_dict()
        start = self._start

        def mix(alpha: float) -> dict[str, Tensor]:
            return mix_weights(start, best, alpha)

        weights = _str_keys(self.config.interpolate_weights)

        def score(m: dict[str, float]) -> float:
            return m["dev/score"] if weights is None else dev_score(m, weights)

        tolerance = _str_keys(self.config.interpolate_tolerance)
        confidence = self.config.interpolate_confidence
        read = read_mix_readings(self.out) if dd.is_main() else {}
        readings: dict[float, DevReading] = {}
        scores, kept = {1.0: self.best_score}, 1.0
        if weights is not None or tolerance is not None:  # the checkpoint, on every dev metric
            self.encoder.load_state_dict(best)
            readings[1.0] = self._read_once(read)
            if weights is not None:  # it was selected on dev_weights: score it again on these
                scores[1.0] = score(readings[1.0].metrics)
        for alpha in self.config.interpolate:
            self.encoder.load_state_dict(mix(alpha))
            readings[alpha] = self._read_once(read)
            scores[alpha] = score(readings[alpha].metrics)
        metrics = {a: r.metrics for a, r in readings.items()}
        misses: dict[float, list[str]] = {}
        bounds: dict[float, dict[str, float]] = {}
        references = {name: self._reference_reading(name, read) for name in self.config.interpolate_references}
        if tolerance is not None:  # the checkpoint and every mix against the starting model (alpha 0), the references

            def bound(r: DevReading, ref: DevReading) -> dict[str, float] | None:
                if confidence is None:
                    return None
                return difference_bounds(r, ref, tolerance, confidence, self.data.dev, self.config.seed)

            for a, r in readings.items():
                against = {"": (readings[0.0], bound(r, readings[0.0]))}
                against |= {name: (ref, bound(r, ref)) for name, ref in references.items()}
                misses[a] = [
                    k + (f" (against {name})" if name else "")
                    for name, (ref, b) in against.items()
                    for k in tolerance_misses(r.metrics, ref.metrics, tolerance, b)
                ]
                if confidence is not None:
                    bounds[a] = {
                        k + (f" (against {name})" if name else ""): v
                        for name, (_, b) in against.items()
                        for k, v in (b or {}).items()
                    }
            kept = 0.0
        for alpha in [*self.config.interpolate, 1.0]:
            if not misses.get(alpha) and scores[alpha] > scores[kept]:
                kept = alpha
        chosen_here = kept
        if self.config.interpolate_keep is not None:  # chosen over k fold runs, not on this run's dev
            kept = self.config.interpolate_keep
        self.encoder.load_state_dict(best if kept == 1.0 else mix(kept))  # the encoder holds the kept weights
        record = {
            "alphas": {str(a): s for a, s in sorted(scores.items())},
            "kept": kept,
            **(
                {"kept_by": "interpolate_keep", "dev_would_keep": chosen_here}
                if self.config.interpolate_keep is not None
                else {}
            ),
            "dev_score": scores[kept],
            "metrics": {str(a): m for a, m in sorted(metrics.items())},
            **({"misses": {str(a): m for a, m in sorted(misses.items())}} if tolerance is not None else {}),
            **({"confidence": confidence, "bounds": {str(a): b for a, b in sorted(bounds.items())}} if bounds else {}),
            **({"references": {n: r.metrics for n, r in references.items()}} if references else {}),
        }
        self.best_score = scores[kept]
        if dd.is_main():
            self._save_best()
            (self.out / "interpolation.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
            if confidence is not None:  # what the bounds were drawn from, to pool runs (benchmarks/rationale_folds.py)
                per_query = {str(a): r.per_query for a, r in sorted(readings.items())}
                (self.out / INTERPOLATION_READINGS).write_text(json.dumps(per_query) + "\n", encoding="utf-8")
            else:  # an earlier run's, with other mixes
                (self.out / INTERPOLATION_READINGS).unlink(missing_ok=True)
        dd.barrier()
        return record
