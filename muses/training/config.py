"""Training configuration: a YAML recipe validated by pydantic, with errors that name the field and the fix."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from muses.adapters.config import AdapterConfig
from muses.errors import ConfigError, validation_problems
from muses.heads import HeadKind
from muses.losses.matryoshka import ScheduleKind
from muses.pooling import PoolingMode

TaskName = Literal["hierarchy", "stsb", "scifact", "ict", "rationale", "siblings"]
HeadName = Literal["token", "sentence", "document", "context", "branch"]
DevMetric = Literal[
    "stsb",
    "scifact-document",
    "scifact-sentence",
    "scifact-evidence",
    "ict-document",
    "ict-sentence",
    "wikipedia-sentence",
    "hierarchy",
    "scifact-hierarchy",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MoESettings(_Strict):
    """Mixture-of-Experts feed-forward settings (see :class:`muses.scratch.moe.MoEConfig`)."""

    n_experts: int = Field(4, ge=1)
    top_k: Literal[1, 2] = Field(2, description="1: Switch (raw gate); 2: GShard/ST-MoE (gates renormalised)")
    capacity_factor_train: float | None = Field(1.25, gt=0, description="null: no token is ever dropped")
    capacity_factor_eval: float | None = Field(2.0, gt=0)
    balance_weight: float = Field(1e-2, ge=0, description="load-balancing loss weight")
    z_loss_weight: float = Field(1e-3, ge=0, description="router z-loss weight")
    expert_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the experts' hidden activations")
    layers: list[int] | None = Field(None, description="the layers made MoE (null: all for upcycling)")

    @model_validator(mode="after")
    def _check_top_k(self) -> MoESettings:
        if self.top_k > self.n_experts:
            raise ValueError(
                f"top_k {self.top_k} is more than n_experts {self.n_experts}: raise n_experts or use top_k 1"
            )
        return self

    def moe_config(self) -> dict[str, Any]:
        """The :class:`~muses.scratch.moe.MoEConfig` fields, as a dict."""
        return self.model_dump(exclude={"layers"})


class ScratchSettings(_Strict):
    """A from-scratch encoder (:class:`muses.scratch.model.ScratchConfig`) and its WordPiece tokenizer, trained on
    the recipe's training texts."""

    vocab_size: int = Field(8000, ge=100)
    hidden_size: int = Field(256, ge=8)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    ffn_size: int = Field(1024, ge=8)
    max_position: int = Field(256, ge=16, description="longest input in tokens, specials included")
    dropout: float = Field(0.1, ge=0, lt=1)
    moe: MoESettings | None = Field(None, description="MoE feed-forward in moe.layers (e.g. [1, 3])")


class ModelConfig(_Strict):
    """The model to train: a base (see ``MultiScaleEncoder.from_base``) and its MuSES settings.

    ``scratch`` trains a from-scratch encoder instead of loading ``base``; ``upcycle`` turns the base's
    feed-forward layers into Mixture-of-Experts layers whose experts start as copies of them.
    """

    base: str = "default"
    dims: list[int] | None = None
    head_kind: HeadKind = "residual-mlp"
    sentence_pooling: PoolingMode | None = None
    document_pooling: PoolingMode | None = None
    context_head: HeadKind | None = Field(
        None,
        description="a separate head for sentences pooled in context (with its own pooling, context_pooling); "
        "standalone sentences and queries keep the sentence head. null: one sentence head for both",
    )
    context_pooling: PoolingMode | None = Field(None, description="the context head's pooling (default: sentence's)")
    sentence_branch: int = Field(
        0,
        ge=0,
        description="K > 0: sentences in context run through a copy of the transformer's top K layers, starting as "
        "the same weights, which trains at optim.lr (with train_heads: [branch] and freeze_base: true it trains "
        "alone, and documents, tokens, queries and standalone sentences keep the base's vectors); on a saved model "
        "without one, a fresh branch is added under its heads. 0: no branch",
    )
    train_heads: list[HeadName] | None = Field(
        None,
        description="the heads that train, each with its pooling (token, sentence, document, context), and the "
        "sentence branch (branch); the others stay as they start. null: every head",
    )
    freeze_base: bool = False
    fresh_heads: bool = Field(
        False,
        description="when `base` is a saved MuSES model: train fresh heads and poolings (head_kind, sentence_pooling, "
        "document_pooling, dims, context_head, context_pooling, sentence_branch) on its transformer instead of "
        "loading its own; identity heads and mean pooling start the same vectors",
    )
    keep_branch: bool = Field(
        False,
        description="with fresh_heads: keep the saved model's trained sentence branch instead of a fresh copy of its "
        "top layers (sentence_branch must be its K), so a later stage trains new heads over the branch it learned",
    )
    freeze_embeddings: bool = Field(
        True, description="keep the word-piece embedding table frozen (half the parameters; cheaper steps, less drift)"
    )
    adapter: AdapterConfig | None = Field(
        None,
        description="train only a LoRA adapter (base and heads frozen; optim.lr is the adapter's learning rate); "
        "the best checkpoint is saved as an adapter folder",
    )
    scratch: ScratchSettings | None = Field(None, description="train a from-scratch encoder, not `base`")
    upcycle: MoESettings | None = Field(None, description="upcycle the base's feed-forward layers into experts")

    @model_validator(mode="after")
    def _check_kind(self) -> ModelConfig:
        if self.context_head is None and (self.context_pooling is not None or "context" in (self.train_heads or [])):
            raise ValueError("model.context_pooling and train_heads [context] need model.context_head, e.g. identity")
        if not self.sentence_branch and "branch" in (self.train_heads or []):
            raise ValueError("model.train_heads [branch] needs model.sentence_branch, e.g. 2")
        if self.keep_branch and not (self.fresh_heads and self.sentence_branch):
            raise ValueError(
                "model.keep_branch keeps a saved model's sentence branch under fresh heads: set model.fresh_heads: "
                "true and model.sentence_branch to the saved model's K, or drop model.keep_branch"
            )
        if self.sentence_branch and (self.upcycle or self.scratch or self.adapter):
            raise ValueError(
                "model.sentence_branch copies a pretrained encoder's top layers: it cannot be combined with "
                "model.upcycle, model.scratch or model.adapter; set model.sentence_branch: 0 or drop the other"
            )
        if self.scratch is not None:
            if self.upcycle is not None or self.adapter is not None:
                raise ValueError("model.scratch cannot be combined with model.upcycle or model.adapter")
            if self.freeze_embeddings or self.freeze_base:
                raise ValueError(
                    "a from-scratch model must train all its weights: set model.freeze_embeddings: false and "
                    "model.freeze_base: false"
                )
            moe = self.scratch.moe
            if moe is not None and not moe.layers:
                raise ValueError("model.scratch.moe.layers: list the layers to make MoE, e.g. [1, 3]")
            if self.fresh_heads:
                raise ValueError("model.fresh_heads is for a saved MuSES base; a from-scratch model's heads are new")
        return self


class DataConfig(_Strict):
    """Training data sources. Dev data for model selection never comes from a test split."""

    wikipedia_articles: int = Field(2000, ge=0, description="training articles (train side of the seeded split)")
    wikipedia_topics: list[str] | None = Field(
        None, description="only articles of these topics (e.g. a domain adapter's); null: every topic"
    )
    ict: bool = Field(
        False,
        description="inverse-cloze pairs from the training articles for the 'ict' task: a held-out sentence -> "
        "its article without it",
    )
    stsb: bool = True
    scifact: bool = True
    scifact_rationales: bool = Field(
        False,
        description="SciFact train-fit claims -> their rationale sentences, in context, for the 'rationale' task "
        "(the other sentences of the abstract are the hard negatives)",
    )
    scifact_claims_without_evidence: bool = Field(
        False,
        description="rationale task: also the train-fit claims without rationale evidence, one item per abstract a "
        "claim cites, which must rank first among the batch's abstracts by max-sim over their in-context sentences "
        "(no sentence is gold, so of the task's losses only loss.rationale_maxsim_weight, which must be positive, "
        "trains on them). With dev_scifact_rationale_fold the fold's claims without evidence are held out as well, "
        "and dev_scifact_unused_claims, which it then needs, adds only those to dev; without a fold it is refused "
        "beside dev_scifact_unused_claims, whose claims it would train on",
    )
    max_rationale_tokens: int = Field(
        256, ge=16, description="rationale task: abstracts are cut to this many tokens (gold sentences cut off drop)"
    )
    max_doc_tokens: int = Field(254, ge=16, description="documents are cut to this many tokens for training")
    max_pair_tokens: int = Field(
        192, ge=8, description="texts of supervised pairs (SciFact abstracts) are cut to this many tokens"
    )
    dev_stsb_pairs: int = Field(1500, ge=0)
    dev_wikipedia_articles: int = Field(0, ge=0, description="held-out articles for dev hierarchy consistency")
    dev_scifact_claims: int | None = Field(None, ge=1, description="use only the first N SciFact dev claims")
    dev_scifact_distractors: int | None = Field(
        500, ge=0, description="distractor abstracts beside the SciFact dev claims' cited ones; null: no SciFact dev"
    )
    dev_wikipedia_ict: bool = Field(
        False,
        description="also score held-out Wikipedia inverse-cloze retrieval (a second dev collection, outside "
        "SciFact): each dev_wikipedia_articles article's held-out sentence -> the article without it, among all of "
        "them; nDCG@10 of document vectors and sentence max-sim (dev metrics ict-document, ict-sentence)",
    )
    dev_wikipedia_sentences: bool = Field(
        False,
        description="also score picking a sentence in context from part of it, outside SciFact: half of a held-out "
        "sentence of each dev_wikipedia_articles article (a seeded run of its words) -> that sentence among every "
        "sentence of those articles, pooled in context; MRR@100 at the full dim and 64 (dev metric "
        "wikipedia-sentence)",
    )
    dev_scifact_evidence: bool = Field(
        False,
        description="also select on SciFact dev claims -> their rationale sentences (MRR@100 among all sentences of "
        "the SciFact dev pool, in context; at the full dim and 64); needs dev_scifact_distractors",
    )
    dev_scifact_hierarchy: bool = Field(
        False,
        description="also read hierarchy consistency over the SciFact dev pool: the share of its sentences, pooled in "
        "context, whose own abstract beats every other abstract of the pool (at the full dim and 64; dev metric "
        "scifact-hierarchy, kept per sentence, so interpolate_confidence can bound it); needs dev_scifact_evidence",
    )
    dev_scifact_unused_claims: bool = Field(
        False,
        description="add to the SciFact dev claims (scifact-document, scifact-sentence) the train-fit claims without "
        "rationale evidence, and the abstracts they cite: no task trains on them while the 'scifact' task is off (the "
        "rationale task reads only claims with evidence), so they are held out too; 247 beside the 151 dev claims, "
        "whose pool and evidence set stay as they were. Refused beside a positive task_weights.scifact in this "
        "stage or an earlier stage of the same command; a model.base trained elsewhere is the caller's to know",
    )

    dev_scifact_rationale_fold: tuple[int, int] | None = Field(
        None,
        description="[i, k]: hold out fold i of k (a stable hash of the claim text) of the train-fit claims with "
        "rationale evidence: the rationale task does not read them, and they join the SciFact dev claims "
        "(scifact-document, scifact-sentence, with the abstracts they cite) and the dev evidence set. k runs, one "
        "per fold, judge a recipe on every claim with evidence that its run did not train on "
        "(benchmarks/rationale_folds.py pools their readings). Needs dev_scifact_distractors; refused beside a "
        "positive task_weights.scifact, which trains on every train-fit claim",
    )
    dev_scifact_kind_weights: bool = Field(
        False,
        description="weigh the SciFact dev claims (scifact-document, scifact-sentence) so that claims with rationale "
        "evidence and claims without weigh what they do in SciFact's train split (62% and 38%), each claim of a kind "
        "alike; with dev_scifact_unused_claims, which adds only claims without, the grown pool then has SciFact's own "
        "mix; needs dev_scifact_distractors",
    )


class LossConfig(_Strict):
    """Loss weights and settings."""

    hierarchy_weight: float = Field(1.0, ge=0)
    temperature: float = Field(0.05, gt=0)
    alpha: float = Field(0.5, ge=0, le=1, description="weight of token->sentence vs sentence->document")
    tokens_per_batch: int = Field(256, ge=1, description="tokens sampled per batch for token->sentence InfoNCE")
    same_doc_negatives: bool = True
    cosent_weight: float = Field(1.0, ge=0)
    mnrl_weight: float = Field(1.0, ge=0)
    rationale_weight: float = Field(1.0, ge=0, description="weight of the rationale task's ranking loss")
    rationale_candidates: Literal["batch", "document"] = Field(
        "batch",
        description="rationale task: a claim ranks every sentence of the batch's abstracts (batch) or only those of "
        "its own abstract (document: only the hard negatives, the space between abstracts is left alone)",
    )
    rationale_maxsim_weight: float = Field(
        0.0,
        ge=0,
        description="rationale task: also rank the batch's abstracts by max-sim over their in-context sentences, the "
        "claim's own first (as sentence max-sim retrieval ranks documents), at this weight beside the ranking loss",
    )
    rationale_retain_documents: bool = Field(
        False,
        description="rationale task: also distil each abstract's document vector (from the same pass) to the base "
        "model's, so the document scale stays where the ranking loss would move it from",
    )
    siblings_weight: float = Field(
        1.0, ge=0, description="weight of the siblings task's ranking loss (a sentence alone <-> in context)"
    )
    siblings_direction: Literal["retrieval", "identify"] = Field(
        "retrieval",
        description="siblings task: each standalone (teacher) vector ranks the batch's in-context sentences, as a "
        "query ranks sentences at search time (retrieval), or each in-context sentence ranks the standalone vectors "
        "(identify: round 6's direction; it leaves the search direction free to get worse)",
    )
    siblings_query_words: float = Field(
        1.0,
        gt=0,
        le=1,
        description="siblings task: the fraction of a sentence's words (a seeded contiguous window, at least 4) "
        "whose standalone vector is its query; 1 keeps the whole sentence",
    )
    retention: Literal["cosine", "mse", "kl", "none"] = "cosine"
    retention_weight: float = Field(1.0, ge=0)
    retention_task_weights: dict[TaskName, float] = Field(
        {}, description="per-task multiplier of retention_weight (missing task: 1.0)"
    )
    retention_dims: list[Annotated[int, Field(ge=1)]] = Field(
        [],
        description="Matryoshka prefix dims where retention also applies (each adds the same term on the first d "
        "coordinates): the full-dim term alone leaves a small prefix free to drift",
    )
    retain_sentences: bool = Field(
        False, description="hierarchy task: also distil in-context sentence vectors to the base model's"
    )
    retain_standalone_sentences: bool = Field(
        False,
        description="hierarchy task: also encode the batch's sentences alone and distil those vectors to the base "
        "model's standalone ones (what STS-B scores; an extra forward pass of short texts per step)",
    )
    matryoshka: ScheduleKind | Literal["all"] = "curriculum"
    consistency_weight: float = Field(0.1, ge=0)


class OptimConfig(_Strict):
    """AdamW with linear warmup and decay."""

    lr: float = Field(2e-5, gt=0)
    head_lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    grad_clip: float = Field(1.0, gt=0)
    grad_accum: int = Field(1, ge=1)
    amp: bool = Field(True, description="bf16 autocast on CUDA; ignored on CPU")


class TrainConfig(_Strict):
    """A whole training recipe."""

    name: str = "default"
    seed: int = 0
    steps: int = Field(300, ge=1)
    docs_per_batch: int = Field(16, ge=2)
    pairs_per_batch: int = Field(32, ge=2)
    task_weights: dict[TaskName, float] = {
        "hierarchy": 1.0,
        "stsb": 1.0,
        "scifact": 1.0,
    }
    eval_every: int = Field(50, ge=1)
    dev_weights: dict[DevMetric, float] | None = Field(
        None,
        description="weights of the dev metrics in the score that selects the best checkpoint, per task (every dim "
        "of a task alike; a task not named weighs 0); null: the plain mean of every dev metric",
    )
    eval_unweighted: bool = Field(
        False,
        description="at every evaluation also compute the dev metrics dev_weights gives no weight (their curves in "
        "history.jsonl, at their cost); the mixes of interpolate are always scored on every dev metric",
    )
    patience: int = Field(4, ge=1, description="evaluations without improvement before stopping")
    eval_at_start: bool = Field(True, description="log the dev metrics of the untrained model as step 0")
    interpolate: list[float] = Field(
        default_factory=list,
        description="after training, mix the best weights with the starting ones (WiSE-FT: alpha * best + (1 - "
        "alpha) * start) at each alpha in [0, 1) listed; the mix with the best dev score, if it beats the best "
        "checkpoint, becomes the best model (0: the starting model itself); full fine-tuning only",
    )
    interpolate_weights: dict[DevMetric, float] | None = Field(
        None,
        description="the dev weights that choose among the checkpoint and its mixes (as dev_weights; null: "
        "dev_weights), e.g. STS-B selects the checkpoint while STS-B and SciFact choose how much of it to keep",
    )
    interpolate_tolerance: dict[DevMetric, float] | None = Field(
        None,
        description="how far each named dev metric (at every dim) may fall below the starting model's (alpha 0, "
        "which interpolate must list) for a mix or the checkpoint to be kept at all; the best-scoring of those "
        "within it is kept, e.g. {scifact-document: 0.002} keeps STS-B gains only while retrieval holds",
    )
    interpolate_references: list[str] = Field(
        default_factory=list,
        description="more models (a name or folder, as model.base) whose dev metrics the checkpoint and every mix "
        "must also stay within interpolate_tolerance of, e.g. [default]: a later stage answers to the untrained base "
        "as well as to its start, so the stages' tolerances do not add up",
    )
    interpolate_confidence: float | None = Field(
        None,
        gt=0.5,
        lt=1.0,
        description="hold interpolate_tolerance to a bound instead of the difference itself: a mix or the checkpoint "
        "misses on a retrieval dev metric when the lower one-sided bound at this confidence (e.g. 0.9; a paired BCa "
        "bootstrap over the dev queries, with their weights) of its difference to the starting model, or to a "
        "reference, is below -tolerance. STS-B and hierarchy keep the difference itself; null: the difference itself. "
        "A bound refuses more than the difference does: with few dev queries even the checkpoint may be refused, and "
        "then the starting model (alpha 0) is kept",
    )
    interpolate_keep: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="keep this mix of interpolate (which must list it; 1.0: the checkpoint) whatever this run's dev "
        "says: a mix chosen over k runs that each held out one fold of the claims (benchmarks/rationale_folds.py), for "
        "the run that then trains on every claim and has too few dev claims left to choose. The mixes are still read "
        "and the record still lists their scores, misses and bounds, and what this run's dev would keep. A fold run "
        "(data.dev_scifact_rationale_fold) may keep one too: an earlier stage of a recipe judged over folds keeps its "
        "recipe's mix, and its readings still go to the pool",
    )
    checkpoint_every: int = Field(50, ge=1)
    output_dir: str = "runs/default"
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        bad = {k: v for k, v in self.loss.retention_task_weights.items() if v < 0}
        if bad:
            raise ValueError(f"loss.retention_task_weights: weights must be >= 0, got {bad}")
        if self.model.scratch is not None and self.loss.retention != "none":
            raise ValueError("a from-scratch model has no base model to retain: set loss.retention: none")
        if self.task_weights.get("siblings", 0) > 0 and self.loss.retention == "none":
            raise ValueError(
                "the siblings task's targets are the base model's standalone vectors: set loss.retention (e.g. "
                "cosine, with retention_task_weights at 0 to train without it) or give siblings weight 0"
            )
        for name, weights in (("dev_weights", self.dev_weights), ("interpolate_weights", self.interpolate_weights)):
            if weights is not None and not any(w > 0 for w in weights.values()):
                raise ValueError(f"{name}: at least one dev metric needs a positive weight (or null: the default)")
            if weights is not None and any(not (math.isfinite(w) and w >= 0) for w in weights.values()):
                raise ValueError(f"{name}: weights must be finite and >= 0, got {weights}")
        if self.interpolate_weights is not None and not self.interpolate:
            raise ValueError("interpolate_weights chooses among the mixes of interpolate: list some alphas too")
        if self.interpolate_references and self.interpolate_tolerance is None:
            raise ValueError(
                "interpolate_references are held to interpolate_tolerance: set it too (e.g. {scifact-sentence: 0.005})"
            )
        if self.interpolate_confidence is not None and self.interpolate_tolerance is None:
            raise ValueError(
                "interpolate_confidence bounds the differences that interpolate_tolerance limits: set it too "
                "(e.g. {scifact-sentence: 0.005})"
            )
        if self.data.dev_scifact_kind_weights and self.data.dev_scifact_distractors is None:
            raise ValueError(
                "data.dev_scifact_kind_weights weighs the SciFact dev claims: set data.dev_scifact_distractors "
                "(e.g. 500)"
            )
        if self.interpolate_tolerance is not None:
            if 0.0 not in self.interpolate:
                raise ValueError(
                    "interpolate_tolerance is measured from the starting model: list alpha 0.0 in interpolate"
                )
            if any(not (math.isfinite(t) and t >= 0) for t in self.interpolate_tolerance.values()):
                raise ValueError(
                    f"interpolate_tolerance: tolerances must be finite and >= 0, got {self.interpolate_tolerance}"
                )
        if self.data.dev_wikipedia_ict and not self.data.dev_wikipedia_articles:
            raise ValueError(
                "data.dev_wikipedia_ict needs held-out articles: set data.dev_wikipedia_articles, e.g. 1000"
            )
        if self.data.dev_wikipedia_sentences and not self.data.dev_wikipedia_articles:
            raise ValueError(
                "data.dev_wikipedia_sentences needs held-out articles: set data.dev_wikipedia_articles, e.g. 1000"
            )
        if self.data.dev_scifact_evidence and self.data.dev_scifact_distractors is None:
            raise ValueError("data.dev_scifact_evidence needs the SciFact dev pool: set data.dev_scifact_distractors")
        if self.data.dev_scifact_hierarchy and not self.data.dev_scifact_evidence:
            raise ValueError(
                "data.dev_scifact_hierarchy reads the SciFact evidence pool: set data.dev_scifact_evidence"
            )
        if (fold := self.data.dev_scifact_rationale_fold) is not None and not (fold[1] >= 2 and 0 <= fold[0] < fold[1]):
            raise ValueError(
                f"data.dev_scifact_rationale_fold is [i, k], fold i of k with 0 <= i < k and k >= 2; got {list(fold)}"
            )
        if self.data.scifact_claims_without_evidence:
            if not (
                self.data.scifact_rationales
                and self.task_weights.get("rationale", 0) > 0
                and self.loss.rationale_maxsim_weight > 0
            ):
                raise ValueError(
                    "data.scifact_claims_without_evidence trains the rationale task's max-sim term on them: set "
                    "data.scifact_rationales, a positive task_weights.rationale and a positive "
                    "loss.rationale_maxsim_weight, or drop the option"
                )
            if (self.data.dev_scifact_rationale_fold is None) == self.data.dev_scifact_unused_claims:
                raise ValueError(
                    "data.scifact_claims_without_evidence trains on the claims without evidence that "
                    "data.dev_scifact_unused_claims reads on dev: set data.dev_scifact_unused_claims and "
                    "data.dev_scifact_rationale_fold together (a fold of them held out and read on dev), or neither"
                )
        for option in ("dev_scifact_unused_claims", "dev_scifact_rationale_fold"):  # SciFact train claims on dev
            if not getattr(self.data, option):
                continue
            if self.data.dev_scifact_distractors is None:
                raise ValueError(
                    f"data.{option} needs the SciFact dev pool: set data.dev_scifact_distractors (e.g. 500)"
                )
            if self.task_weights.get("scifact", 0) > 0:
                raise ValueError(
                    f"data.{option} holds out claims the 'scifact' task trains on: set task_weights.scifact to 0 or "
                    f"drop data.{option}"
                )
        if not any(w > 0 for w in self.task_weights.values()):
            raise ValueError("task_weights: at least one task needs a positive weight")
        if self.interpolate_keep is not None and self.interpolate_keep not in [*self.interpolate, 1.0]:
            raise ValueError(
                f"interpolate_keep must be one of the mixes of interpolate (or 1.0, the checkpoint): list "
                f"{self.interpolate_keep} there too (now {self.interpolate})"
            )
        if any(not 0.0 <= a < 1.0 for a in self.interpolate):
            raise ValueError(f"interpolate: each alpha must be in [0, 1) (1 is the checkpoint), got {self.interpolate}")
        if self.interpolate and (self.model.adapter is not None or self.model.scratch is not None):
            raise ValueError("interpolate mixes fine-tuned and base weights: not for an adapter or a scratch model")
        return self


STAGES = "stages"  # the one key of a stage list: recipes trained one after another


def read_stage_list(path: str | os.PathLike[str]) -> list[Path] | None:
    """The recipes a stage list names, in order, or None when ``path`` is one recipe.

    A stage list is a YAML file holding only ``stages: [a.yaml, b.yaml, ...]`` (paths relative to the file); ``muses
    train -c`` trains them one after another, as if each were given with its own ``-c``.

    Raises:
        ConfigError: an unreadable file, a stage list with other settings, an empty one, an entry that is not a path
            to an existing recipe, or a stage list inside another.
    """
    p = Path(path)
    if not _is_file(p):
        raise ConfigError(f"config file {p} does not exist.")
    raw = _stage_list(p)
    if raw is None:
        return None
    others = sorted(str(k) for k in raw if k != STAGES)
    if others:
        raise ConfigError(f"{p}: a stage list holds only 'stages'; move {others[:3]} into one of its recipes.")
    entries = raw[STAGES]
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{p}: 'stages' must be a non-empty list of recipe paths, got {entries!r}.")
    stages = []
    for entry in entries:
        if not isinstance(entry, str) or not entry.strip() or not entry.isprintable():
            raise ConfigError(f"{p}: each stage must be a path to a recipe, got {entry!r}.")
        stage = p.parent / entry
        if not _is_file(stage):
            raise ConfigError(f"{p}: stage {entry} does not exist (paths are relative to {p.parent}).")
        if _stage_list(stage) is not None:
            raise ConfigError(f"{p}: stage {entry} is itself a stage list; list its recipes here instead.")
        stages.append(stage)
    return stages


def _stage_list(p: Path) -> dict[Any, Any] | None:
    """The YAML mapping in file ``p`` if it is a stage list (has ``stages``), else None (unreadable files too:
    :func:`load_config` names their problem)."""
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return raw if isinstance(raw, dict) and STAGES in raw else None


def _is_file(p: Path) -> bool:
    """Whether ``p`` is a readable file; False for a name the system refuses (too long, ...)."""
    try:
        return p.is_file()
    except OSError:
        return False


def _read_yaml(p: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe's settings, with ``extends: other.yaml`` (relative to the file) merged underneath."""
    if not _is_file(p):
        raise ConfigError(f"config file {p} does not exist.")
    if p.resolve() in seen:
        raise ConfigError(f"{p}: 'extends' loops back to itself.")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start}); save the recipe as UTF-8.") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot be read ({e.strerror}).") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of settings, got {type(raw).__name__}.")
    if STAGES in raw:
        raise ConfigError(
            f"{p} is a list of stages, not one recipe (a recipe cannot extend it): train it with `muses train -c "
            f"{p}`, or give it to `muses ablation` as one arm."
        )
    parent = raw.pop("extends", None)
    replace = _replaced_keys(p, raw)
    if parent is None:
        if replace:
            raise ConfigError(f"{p}: 'replace' is for a recipe that extends another; add 'extends:' or drop it.")
        return raw
    if not isinstance(parent, str) or not parent.isprintable():
        raise ConfigError(f"{p}: 'extends' must be a path to another recipe, got {parent!r}.")
    merged = _merge(_read_yaml(p.parent / parent, (*seen, p.resolve())), raw)
    for key in replace:  # the child's mapping, whole: the parent's other keys are dropped
        *parents, leaf = key.split(".")
        node, mine = merged, raw
        for part in parents:
            node, mine = node[part], mine[part]
        node[leaf] = mine[leaf]
    return merged


def _replaced_keys(p: Path, raw: dict[str, Any]) -> list[str]:
    """``replace: [dev_weights, loss.retention_task_weights]``: dotted keys of the recipe's own settings that
    replace the parent's instead of merging with them (popped from ``raw``)."""
    keys = raw.pop("replace", None)
    if keys is None:
        return []
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ConfigError(f"{p}: 'replace' must be a list of setting names, e.g. [dev_weights], got {keys!r}.")
    for key in keys:
        node: Any = raw
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"{p}: 'replace' names {key}, which this recipe does not set; set it or drop it.")
            node = node[part]
    return keys


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(path: str | os.PathLike[str], overrides: dict[str, object] | None = None) -> TrainConfig:
    """Read and validate a YAML recipe; ``overrides`` are dotted keys (``{"optim.lr": 1e-5}``).

    A recipe may start with ``extends: other.yaml``: its settings are laid over the other's (mappings merge key
    by key), so an ablation states only what it changes; ``replace: [dev_weights]`` lists (dotted) mappings the
    recipe gives whole instead.

    Raises:
        ConfigError: naming the file, each bad field and what was expected.
    """
    p = Path(path)
    raw = _read_yaml(p)
    for key, value in (overrides or {}).items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{p}: invalid config: {validation_problems(e.errors())}") from None
