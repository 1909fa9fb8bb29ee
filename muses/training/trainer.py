"""The MuSES trainer: hierarchical InfoNCE + supervised pairs, under a Matryoshka curriculum, with retention.

One step draws a task (hierarchy documents, STS-B pairs or SciFact claim-abstract pairs), runs the model once on
its texts, and sums:

- the task loss (hierarchical InfoNCE / CoSENT / MultipleNegativesRanking) at a Matryoshka dim drawn from the
  schedule, plus the consistency term (:class:`~muses.losses.CurriculumMatryoshkaLoss`);
- retention: distillation of the batch's vectors to the frozen base model's (cached by text, computed once).

Evaluation on dev splits (STS-B dev at the full dim and 64, hierarchy on held-out train-side Wikipedia articles)
selects the best checkpoint and stops early. Checkpoints hold model, optimizer, scheduler, sampler and RNG state
and resume exactly.

Adapter mode (``model.adapter`` set, see :class:`~muses.adapters.AdapterConfig`): the base model and the heads are
frozen and a LoRA adapter is trained instead (``optim.lr`` is its learning rate). Checkpoints then hold the
adapter's PEFT files (``checkpoint/adapter/``) instead of the whole model, and ``best/`` is an adapter folder
(PEFT's ``adapter_config.json`` + ``adapter_model.safetensors``, and ``muses_adapter.json`` with the key, the base
model's fingerprint and the routing centroid of the training texts), ready for an
:class:`~muses.adapters.AdapterCache`.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from muses.adapters.config import check_key
from muses.adapters.lora import (
    adapter_weights,
    attach_adapter,
    base_fingerprint,
    hf_model,
    read_adapter,
    save_adapter,
    set_adapter_weights,
    write_peft_files,
)
from muses.adapters.router import centroid
from muses.encoder import MultiScaleEncoder
from muses.errors import ConfigError
from muses.heads import matryoshka
from muses.losses import (
    CoSENT,
    CurriculumMatryoshkaLoss,
    DimSchedule,
    HierarchicalInfoNCE,
    MatryoshkaAll,
    MultipleNegativesRanking,
    RetentionLoss,
)
from muses.scratch.model import pop_aux_loss
from muses.scratch.moe import MoEConfig, moe_layers
from muses.scratch.upcycle import upcycle_encoder
from muses.training.config import TrainConfig
from muses.training.data import MixedTaskSampler, TrainingData, truncate_document, truncate_text
from muses.training.dev import evaluate_dev
from muses.types import Document

PAD_GROUP = 16
CKPT = "checkpoint"
BEST = "best"
ADAPTER_DIR = "adapter"
SCRATCH_BASE = "scratch-base"
CENTROID_TEXTS = 5000  # per data source, for an adapter's routing centroid


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """Train a :class:`MultiScaleEncoder` with a :class:`TrainConfig` on :class:`TrainingData`."""

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
        set_seed(config.seed)
        m = config.model
        self.encoder = encoder or MultiScaleEncoder.from_base(
            self._scratch_base() if m.scratch is not None else m.base,
            dims=m.dims,
            head_kind=m.head_kind,
            sentence_pooling=m.sentence_pooling,
            document_pooling=m.document_pooling,
            device=device,
        )
        if m.upcycle is not None and encoder is None:
            upcycle_encoder(self.encoder, MoEConfig.from_dict(m.upcycle.moe_config()), m.upcycle.layers)
        self.teacher: MultiScaleEncoder | None = None  # the frozen base model, for retention
        if config.loss.retention != "none":
            self.teacher = MultiScaleEncoder.from_base(m.base, dims=m.dims, device=device)
            self.teacher.eval()
        self._teacher_cache: dict[str, Tensor] = {}
        if m.freeze_base:
            self.encoder.transformer.requires_grad_(False)
        if m.freeze_embeddings:
            self.encoder.transformer.auto_model.get_input_embeddings().requires_grad_(False)
        # adapter mode: only the LoRA weights train (they are the only parameters left requiring a gradient, so
        # the optimizer below gets them as its first group and the frozen heads as an idle second group)
        self.adapter_key: str | None = None
        self._routing: tuple[np.ndarray | None, int, str] | None = None
        if m.adapter is not None:
            self.adapter_key = self._adapter_key()
            self.encoder.requires_grad_(False)
            attach_adapter(self.encoder, self.adapter_key, m.adapter, trainable=True)
        lc = config.loss
        self.hier = HierarchicalInfoNCE(temperature=lc.temperature, alpha=lc.alpha)
        self.cosent = CoSENT()
        self.mnrl = MultipleNegativesRanking()
        self.retention = RetentionLoss(lc.retention) if lc.retention != "none" else None
        dims = self.encoder.dims
        self.matryoshka: CurriculumMatryoshkaLoss | MatryoshkaAll = (
            MatryoshkaAll(dims, consistency_weights=lc.consistency_weight)
            if lc.matryoshka == "all"
            else CurriculumMatryoshkaLoss(dims, DimSchedule(dims, lc.matryoshka), lc.consistency_weight)
        )
        oc = config.optim
        # new parameters learn at head_lr: the heads, and the routers of MoE layers (upcycled or from scratch)
        routers = [p for _, layer in moe_layers(self.encoder) for p in layer.router.parameters() if p.requires_grad]
        head_params = list(self.encoder.heads.parameters()) + routers
        head_ids = {id(p) for p in head_params}
        base_params = [p for p in self.encoder.parameters() if p.requires_grad and id(p) not in head_ids]
        self.optimizer = torch.optim.AdamW(
            [{"params": base_params, "lr": oc.lr}, {"params": head_params, "lr": oc.head_lr}],
            weight_decay=oc.weight_decay,
        )
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, int(oc.warmup_ratio * config.steps), config.steps
        )
        self.sampler = MixedTaskSampler(
            data.sizes(),
            {str(k): v for k, v in config.task_weights.items()},
            {
                "hierarchy": config.docs_per_batch,
                "stsb": config.pairs_per_batch,
                "scifact": config.pairs_per_batch,
                "ict": config.pairs_per_batch,
            },
            seed=config.seed,
        )
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.best_score = -float("inf")
        self.bad_evals = 0

    def _scratch_base(self) -> str:
        """A from-scratch base model folder (``output_dir/scratch-base``): a WordPiece tokenizer trained on the
        recipe's training texts and a seeded fresh encoder. Made once; a resumed run reuses it."""
        from muses.scratch.base import scratch_base

        spec = self.config.model.scratch
        assert spec is not None
        texts = [d.text for d in self.data.documents] + [t for a, b, _ in self.data.stsb for t in (a, b)]
        return str(scratch_base(spec.model_dump(), texts, self.out / SCRATCH_BASE, self.config.seed))

    # ------------------------------------------------------------------ adapter mode
    def _adapter_key(self) -> str:
        ad = self.config.model.adapter
        key = (ad.key if ad is not None else None) or self.config.name
        try:
            return check_key(key)
        except ValueError as e:
            raise ConfigError(f"{e} Set model.adapter.key in the recipe.") from None

    def _centroid_texts(self) -> list[str]:
        """The texts of the tasks this recipe trains on (each source capped), for the adapter's routing centroid."""
        w = self.config.task_weights
        texts: list[str] = []
        if w.get("hierarchy", 0) > 0:
            texts += [d.text for d in self.data.documents[:CENTROID_TEXTS]]
        if w.get("stsb", 0) > 0:
            texts += [t for r in self.data.stsb[:CENTROID_TEXTS] for t in r[:2]]
        if w.get("scifact", 0) > 0:
            texts += [t for p in self.data.scifact[:CENTROID_TEXTS] for t in p]
        if w.get("ict", 0) > 0:
            texts += [t for p in self.data.ict[:CENTROID_TEXTS] for t in p]
        return texts

    def _save_best(self) -> None:
        """The best model: a MuSES model folder, or in adapter mode an adapter folder (PEFT files + routing)."""
        if self.adapter_key is None:
            self.encoder.save(self.out / BEST)
            return
        if self._routing is None:
            texts = self._centroid_texts()
            self._routing = (
                centroid(self.encoder, texts) if texts else None,
                len(texts),
                base_fingerprint(self.encoder),
            )
        cent, n_texts, fingerprint = self._routing
        info = {
            "recipe": self.config.name,
            "step": self.step,
            "best_dev_score": self.best_score,
            "task_weights": {str(k): v for k, v in self.config.task_weights.items()},
            "data": self.data.sizes(),
            "adapter": self.config.model.adapter.model_dump() if self.config.model.adapter else {},
        }
        save_adapter(self.encoder, self.adapter_key, self.out / BEST, cent, n_texts, info, fingerprint)

    # ------------------------------------------------------------------ losses per task
    def _teacher(self, texts: Sequence[str]) -> Tensor:
        """Frozen base-model sentence vectors ``[N, D]`` (full dim, normalised), computed once per text."""
        missing = sorted({t for t in texts if t not in self._teacher_cache})
        if missing:
            assert self.teacher is not None, "retention without a teacher"
            vecs = self.teacher.encode_sentences(missing, batch_size=64)
            self._teacher_cache.update(zip(missing, torch.from_numpy(vecs), strict=True))
        return torch.stack([self._teacher_cache[t] for t in texts]).to(self.encoder.device)

    def _standalone(self, texts: Sequence[str]) -> Tensor:
        # batches of 16 windows sorted by length: short claims are not padded to the length of abstracts
        return self.encoder.standalone_vectors(self.encoder.token_states(texts, batch_size=PAD_GROUP))

    def _short(self, text: str) -> str:
        """A pair text cut to ``data.max_pair_tokens`` tokens."""
        offsets = self.encoder.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return truncate_text(text, offsets["offset_mapping"], self.config.data.max_pair_tokens)

    def _retention_weight(self, task: str) -> float:
        lc = self.config.loss
        return (
            0.0
            if self.retention is None
            else lc.retention_weight * {str(k): v for k, v in lc.retention_task_weights.items()}.get(task, 1.0)
        )

    def _retain(self, student: Tensor, texts: Sequence[str], task: str) -> Tensor:
        """Retention of ``student`` ``[N, D]`` to the base model's standalone vectors of ``texts``."""
        w = self._retention_weight(task)
        if w == 0 or self.retention is None:
            return student.new_zeros(())
        return w * self.retention(student, self._teacher(texts))

    def _retain_in_context(self, sentence: Tensor, docs: Sequence[Document]) -> Tensor:
        """Retention of in-context sentence vectors ``[S, D]`` to the base model's, pooled from the same documents."""
        w = self._retention_weight("hierarchy")
        if w == 0 or self.retention is None:
            return sentence.new_zeros(())
        with torch.no_grad():
            assert self.teacher is not None, "retention without a teacher"
            states = self.teacher.token_states([d.text for d in docs], batch_size=PAD_GROUP)
            target = torch.cat(
                [
                    self.teacher.document_vectors(d, st, ("sentence",))["sentence"]
                    for d, st in zip(docs, states, strict=True)
                ]
            )
        return w * self.retention(sentence, torch.nn.functional.normalize(target, dim=-1).to(sentence.device))

    def _mat(self, loss_fn: Callable[[int], Tensor], embeddings: list[Tensor]) -> dict[str, Any]:
        progress = self.step / max(self.config.steps, 1)
        return dict(self.matryoshka(loss_fn, embeddings, progress, self.generator))

    def _hierarchy_loss(self, items: list[int]) -> dict[str, Any]:
        enc, lc = self.encoder, self.config.loss
        docs = [self.data.documents[i] for i in items]
        offsets = enc.tokenizer(
            [d.text for d in docs], add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )["offset_mapping"]
        docs = [truncate_document(d, o, self.config.data.max_doc_tokens) for d, o in zip(docs, offsets, strict=True)]
        states = enc.token_states([d.text for d in docs], batch_size=PAD_GROUP)
        tok, tok_sent, sent, sent_doc, doc_vecs = [], [], [], [], []
        n_sent = 0
        for i, (doc, st) in enumerate(zip(docs, states, strict=True)):
            v = enc.document_vectors(doc, st)
            tok.append(v["token"])
            ids = v["token_sentence_ids"].to(v["token"].device)
            tok_sent.append(torch.where(ids >= 0, ids + n_sent, ids))
            sent.append(v["sentence"])
            sent_doc.append(torch.full((len(v["sentence"]),), i, dtype=torch.long))
            doc_vecs.append(v["document"])
            n_sent += len(v["sentence"])
        token, token_sentence = torch.cat(tok), torch.cat(tok_sent)
        if len(token) > lc.tokens_per_batch:
            pick = torch.randperm(len(token), generator=self.generator)[: lc.tokens_per_batch]
            token, token_sentence = token[pick.to(token.device)], token_sentence[pick.to(token.device)]
        sentence, sentence_doc, document = torch.cat(sent), torch.cat(sent_doc), torch.stack(doc_vecs)

        def loss_fn(d: int) -> Tensor:
            out = self.hier(
                token[:, :d],
                token_sentence,
                sentence[:, :d],
                sentence_doc,
                document[:, :d],
                same_doc_sentence_negatives=lc.same_doc_negatives,
            )
            return lc.hierarchy_weight * out["loss"]

        res = self._mat(loss_fn, [sentence, document])
        res["retention"] = self._retain(document, [d.text for d in docs], "hierarchy")
        if lc.retain_sentences:
            res["retention"] = res["retention"] + self._retain_in_context(sentence, docs)
        return res

    def _pair_loss(self, task: str, items: list[int]) -> dict[str, Any]:
        lc = self.config.loss
        if task == "stsb":
            rows = [self.data.stsb[i] for i in items]
            texts = [r[0] for r in rows] + [r[1] for r in rows]
            scores = torch.tensor([r[2] / 5.0 for r in rows], device=self.encoder.device)
        else:
            pairs = [(self.data.scifact if task == "scifact" else self.data.ict)[i] for i in items]
            texts = [p[0] for p in pairs] + [self._short(p[1]) for p in pairs]
        emb = self._standalone(texts)
        a, b = emb[: len(items)], emb[len(items) :]

        def loss_fn(d: int) -> Tensor:
            za, zb = matryoshka(a, d), matryoshka(b, d)
            if task == "stsb":
                return lc.cosent_weight * self.cosent(za, zb, scores)
            return lc.mnrl_weight * self.mnrl(za, zb)

        res = self._mat(loss_fn, [emb])
        res["retention"] = self._retain(emb, texts, task)
        return res

    # ------------------------------------------------------------------ loop
    def train_step(self) -> dict[str, float]:
        """One optimisation step (with gradient accumulation); returns its logged numbers."""
        self.encoder.train()
        oc = self.config.optim
        log: dict[str, float] = {}
        use_amp = oc.amp and self.encoder.device.type == "cuda"
        t0 = time.perf_counter()
        for _ in range(oc.grad_accum):
            task, items = self.sampler.next()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                res = self._hierarchy_loss(items) if task == "hierarchy" else self._pair_loss(task, items)
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
        trainable = [p for p in self.encoder.parameters() if p.requires_grad]
        log["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(trainable, oc.grad_clip))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        log["seconds"] = time.perf_counter() - t0
        log["lr"] = self.scheduler.get_last_lr()[0]
        log["step"] = float(self.step)
        return log

    def evaluate(self) -> dict[str, float]:
        """Dev metrics (:func:`~muses.training.dev.evaluate_dev`); ``"dev/score"`` selects the best checkpoint."""
        return evaluate_dev(self.encoder, self.data.dev)

    def save_checkpoint(self) -> Path:
        """Write model, optimizer, scheduler, sampler and RNG state atomically to ``output_dir/checkpoint``."""
        tmp = self.out / f"{CKPT}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        if self.adapter_key is None:
            self.encoder.save(tmp / "model")
        else:  # the base is frozen: the adapter's weights are the model state
            key = self.adapter_key
            write_peft_files(
                tmp / ADAPTER_DIR, hf_model(self.encoder).peft_config[key], adapter_weights(self.encoder, key)
            )
        torch.save(
            {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "generator": self.generator.get_state(),
            },
            tmp / "trainer_state.pt",
        )
        state = {
            "step": self.step,
            "sampler": self.sampler.state_dict(),
            "best_score": self.best_score,
            "bad_evals": self.bad_evals,
            "python_rng": _py_rng_state(),
            "numpy_rng": _np_rng_state(),
            "config": self.config.model_dump(),
        }
        (tmp / "trainer_state.json").write_text(json.dumps(state), encoding="utf-8")
        final = self.out / CKPT
        old = self.out / f"{CKPT}.old"
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        return final

    def load_checkpoint(self) -> bool:
        """Resume from ``output_dir/checkpoint`` if present; returns whether it did."""
        ckpt = self.out / CKPT
        if not ckpt.is_dir() and (self.out / f"{CKPT}.old").is_dir():
            ckpt = self.out / f"{CKPT}.old"  # killed between the two renames
        if not ckpt.is_dir():
            return False
        state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
        # validated again, so that settings added since the checkpoint was written take their defaults
        if TrainConfig.model_validate(state["config"]).model_dump() != self.config.model_dump():
            raise ConfigError(f"{ckpt} was written with another config; use a new output_dir or the same config.")
        if self.adapter_key is None:
            loaded = MultiScaleEncoder.load(ckpt / "model", device=str(self.encoder.device))
            self.encoder.load_state_dict(loaded.state_dict())
        else:
            files = read_adapter(ckpt / ADAPTER_DIR, device=self.encoder.device, require_meta=False)
            set_adapter_weights(self.encoder, self.adapter_key, files.weights)
        tensors = torch.load(ckpt / "trainer_state.pt", weights_only=True)
        self.optimizer.load_state_dict(tensors["optimizer"])
        self.scheduler.load_state_dict(tensors["scheduler"])
        torch.set_rng_state(tensors["torch_rng"])
        self.generator.set_state(tensors["generator"])
        self.sampler.load_state_dict(state["sampler"])
        self.step, self.best_score, self.bad_evals = state["step"], state["best_score"], state["bad_evals"]
        random.setstate(_tuple_state(state["python_rng"]))
        np.random.set_state(tuple(state["numpy_rng"]))
        return True

    def train(self, resume: bool = True, stop_after: int | None = None, progress: bool = True) -> dict[str, Any]:
        """Train to ``config.steps`` (or early stop), evaluating and checkpointing on schedule.

        Args:
            resume: continue from ``output_dir/checkpoint`` if there is one.
            stop_after: stop (as if interrupted) after this many steps in this call; for tests and time limits.
        Returns:
            A summary: steps done, best dev score, whether it stopped early, and the output paths.
        """
        cfg = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        if resume and self.load_checkpoint():
            _truncate_history(self.out / "history.jsonl", self.step)
        elif (self.out / "history.jsonl").exists():
            (self.out / "history.jsonl").unlink()
        stopped_early = False
        start, t0 = self.step, time.perf_counter()
        bar = tqdm(total=cfg.steps, initial=self.step, desc=f"train {cfg.name}", disable=not progress)
        with (self.out / "history.jsonl").open("a", encoding="utf-8") as hist:
            if self.step == 0 and cfg.eval_at_start:  # the base model's dev numbers, as the reference
                hist.write(json.dumps({"step": 0.0, **self.evaluate()}) + "\n")
            while self.step < cfg.steps:
                log = self.train_step()
                if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                    log.update(self.evaluate())
                    if log["dev/score"] > self.best_score:
                        self.best_score, self.bad_evals = log["dev/score"], 0
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
        if not (self.out / BEST).exists():
            self._save_best()
        from muses.plots import plot_training

        plot_training({cfg.name: self.out / "history.jsonl"}, self.out / "loss_curves.png")
        return {
            "steps": self.step,
            "best_dev_score": self.best_score,
            "stopped_early": stopped_early,
            "seconds": time.perf_counter() - t0,
            "best_model": str(self.out / BEST),
            "history": str(self.out / "history.jsonl"),
            "loss_curves": str(self.out / "loss_curves.png"),
        }


def _py_rng_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _tuple_state(state: list[Any]) -> tuple[Any, ...]:
    return (state[0], tuple(state[1]), state[2])


def _np_rng_state() -> list[Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return [kind, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)]


def _truncate_history(path: Path, step: int) -> None:
    """Drop history lines written after the checkpoint's step (they are replayed on resume), and a line cut short
    by a kill."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if entry["step"] <= step:
            kept.append(line)
    path.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")
