"""Few-shot warm-up of a new domain adapter: at most 10 steps on a handful of examples.

The adapter starts from zero (PEFT's default init, ``B = 0``: the base model) or from another adapter's weights
(e.g. the nearest domain's, as :class:`~muses.adapters.cache.AdapterCache` picks it), and trains with the project's
losses on every example at each step:

- documents (strings with at least two documents): :class:`~muses.losses.HierarchicalInfoNCE`, token -> sentence
  and sentence -> document, in context, at the full dim;
- pairs ``(query, positive)``: :class:`~muses.losses.MultipleNegativesRanking` on standalone vectors.

Only the new adapter's LoRA weights change; the base and the heads are untouched. Dropout stays off (the model is
kept in eval mode), so a warm-up is deterministic for a seed.

:func:`warm_up_domain` is the whole job for a new domain: warm up, compute its routing centroid, save the folder.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from muses.adapters.config import AdapterConfig
from muses.adapters.lora import attach_adapter, save_adapter, set_adapter_weights
from muses.adapters.router import centroid
from muses.errors import InputError
from muses.losses import HierarchicalInfoNCE, MultipleNegativesRanking

if TYPE_CHECKING:
    from muses.encoder import MultiScaleEncoder

MAX_WARMUP_STEPS = 10
Example = str | tuple[str, str]


@dataclass
class WarmupResult:
    """What a warm-up did: its key, steps, the loss before each step, seconds, and where it started from."""

    key: str
    steps: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    init_from: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _loss(encoder: MultiScaleEncoder, examples: Sequence[Example], hier: HierarchicalInfoNCE) -> torch.Tensor:
    if isinstance(examples[0], str):
        from muses.text import as_documents

        docs = as_documents([str(e) for e in examples], encoder.splitter)
        states = encoder.token_states([d.text for d in docs])
        tok, tok_sent, sent, sent_doc, doc_vecs = [], [], [], [], []
        n_sent = 0
        for i, (doc, st) in enumerate(zip(docs, states, strict=True)):
            v = encoder.document_vectors(doc, st)
            ids = v["token_sentence_ids"].to(v["token"].device)
            tok.append(v["token"])
            tok_sent.append(torch.where(ids >= 0, ids + n_sent, ids))
            sent.append(v["sentence"])
            sent_doc.append(torch.full((len(v["sentence"]),), i, dtype=torch.long))
            doc_vecs.append(v["document"])
            n_sent += len(v["sentence"])
        out = hier(torch.cat(tok), torch.cat(tok_sent), torch.cat(sent), torch.cat(sent_doc), torch.stack(doc_vecs))
        return out["loss"]
    pairs = [(str(e[0]), str(e[1])) for e in examples]
    texts = [a for a, _ in pairs] + [b for _, b in pairs]
    emb = encoder.standalone_vectors(encoder.token_states(texts, branch=False))
    return MultipleNegativesRanking()(emb[: len(pairs)], emb[len(pairs) :])


def check_examples(examples: Sequence[Example]) -> str:
    """``"documents"`` or ``"pairs"``; raises :class:`InputError` for a mix, fewer than 2, or empty texts."""
    if isinstance(examples, str) or len(examples) < 2:
        raise InputError("a warm-up needs a list of at least 2 examples (documents, or (query, positive) pairs).")
    kinds = {isinstance(e, str) for e in examples}
    if len(kinds) > 1:
        raise InputError("warm-up examples must be all documents (strings) or all (query, positive) pairs.")
    if kinds == {True}:
        if any(not str(e).strip() for e in examples):
            raise InputError("a warm-up document is empty; pass texts with some words.")
        return "documents"
    if any(not (isinstance(e, tuple | list) and len(e) == 2 and all(str(x).strip() for x in e)) for e in examples):
        raise InputError("a warm-up pair must be two non-empty texts: (query, positive).")
    return "pairs"


def example_texts(examples: Sequence[Example]) -> list[str]:
    """The texts of the examples (checked): the documents, or both sides of every pair."""
    if check_examples(examples) == "documents":
        return [str(e) for e in examples]
    return [str(t) for e in examples for t in e]


def warm_up_adapter(
    encoder: MultiScaleEncoder,
    key: str,
    examples: Sequence[Example],
    config: AdapterConfig | None = None,
    init: tuple[Any, dict[str, torch.Tensor]] | None = None,
    init_from: str | None = None,
    steps: int = MAX_WARMUP_STEPS,
    lr: float = 1e-3,
    seed: int = 0,
) -> WarmupResult:
    """Attach a new adapter ``key`` and train it for ``steps`` (<= 10) steps on ``examples``; it is left attached,
    active and frozen, with the encoder in eval mode.

    Args:
        config: adapter settings for a start from zero (default :class:`AdapterConfig`).
        init: ``(peft_config, PEFT state dict)`` of the adapter to start from (its rank and targets are used);
            None: from zero.
        init_from: the key of ``init``'s adapter, recorded in the result.
        steps: optimisation steps, 1 to 10, each on all examples.
        lr: AdamW learning rate of the LoRA weights.
    """
    if not 1 <= steps <= MAX_WARMUP_STEPS:
        raise InputError(f"a warm-up takes 1 to {MAX_WARMUP_STEPS} steps, got {steps}.")
    check_examples(examples)
    t0 = time.perf_counter()
    hier = HierarchicalInfoNCE()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_config = init[0] if init is not None else (config or AdapterConfig()).to_peft()
        params = attach_adapter(encoder, key, peft_config, trainable=True)
    if init is not None:
        set_adapter_weights(encoder, key, init[1])
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    result = WarmupResult(key=key, steps=steps, init_from=init_from)
    with encoder.evaluating():  # no dropout: a few steps on a handful of examples
        try:
            for _ in range(steps):
                loss = _loss(encoder, examples, hier)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                result.losses.append(float(loss.detach()))
        finally:
            for p in params:
                p.requires_grad_(False)
                p.grad = None
    result.seconds = time.perf_counter() - t0
    return result


def warm_up_domain(
    encoder: MultiScaleEncoder,
    key: str,
    slot: str,
    examples: Sequence[Example],
    folder: str | os.PathLike[str],
    fingerprint: str,
    config: AdapterConfig | None = None,
    init: tuple[Any, dict[str, torch.Tensor]] | None = None,
    init_from: str | None = None,
    steps: int = MAX_WARMUP_STEPS,
    lr: float = 1e-3,
    seed: int = 0,
) -> tuple[WarmupResult, np.ndarray]:
    """:func:`warm_up_adapter` into the adapter named ``slot``, then save it as ``key`` in ``folder`` with its routing
    centroid (:func:`~muses.adapters.router.centroid` of the examples' texts) and the warm-up's record.

    Returns the result (its ``key`` set) and the ``[H]`` centroid. The adapter stays attached as ``slot``, active.
    """
    result = warm_up_adapter(
        encoder, slot, examples, config, init=init, init_from=init_from, steps=steps, lr=lr, seed=seed
    )
    result.key = key
    texts = example_texts(examples)
    domain_centroid = centroid(encoder, texts)
    save_adapter(
        encoder,
        key,
        folder,
        centroid=domain_centroid,
        n_texts=len(texts),
        info={"warm_up": result.to_json()},
        fingerprint=fingerprint,
        attached_as=slot,
    )
    return result, domain_centroid
