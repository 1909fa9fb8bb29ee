"""Sentence vectors in *local* context: the document pass forks below its top layers.

``context="local:K"`` runs the transformer over the whole document up to its top ``K`` layers, as every other
scale does; those top ``K`` layers then run a second time over each sentence alone (its token states at that depth,
between the document's own leading and trailing special tokens), and the sentence is pooled from that. A sentence
has read its document for the first ``N - K`` layers and only itself for the last ``K``: it keeps the document's
topic without taking on its siblings' wording (``K`` is at least 1; no layer run again is ``context="document"``).
The extra work is ``K`` of the ``N`` layers again over every sentence token, each attending within its sentence;
``muses bench encode`` measures the whole cost (``docs/benchmarks.md``). Documents, tokens and queries are those of
the document pass, unchanged.

The layers are called one by one, so only encoders whose layers take ``(hidden_states, attention_mask)`` are
supported (BERT and its relatives: :data:`LOCAL_MODEL_TYPES`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from muses.errors import InputError, ModelError

LOCAL_LAYERS = 2  # ``context="local"``; chosen on dev (docs/results.md, round 27)
LOCAL_MODEL_TYPES = frozenset({"bert", "roberta", "xlm-roberta", "camembert", "electra"})
_LOCAL = re.compile(r"local:([0-9]{1,3})")


@dataclass(frozen=True)
class SentenceContext:
    """How sentence vectors see their document: ``kind`` ``document`` (in context), ``sentence`` (standalone,
    a pass of their own) or ``local`` (the top ``layers`` layers per sentence)."""

    kind: str
    layers: int = 0

    def __str__(self) -> str:
        return f"local:{self.layers}" if self.kind == "local" else self.kind


def parse_context(context: object) -> SentenceContext:
    """``"document"``, ``"sentence"``, ``"local"`` (:data:`LOCAL_LAYERS`) or ``"local:K"`` (``K >= 1``).

    Raises:
        InputError: anything else.
    """
    if context in ("document", "sentence"):
        return SentenceContext(str(context))
    if context == "local":
        return SentenceContext("local", LOCAL_LAYERS)
    m = _LOCAL.fullmatch(context) if isinstance(context, str) else None
    if m is None or int(m.group(1)) < 1:
        raise InputError(
            f"context must be 'document', 'sentence', 'local' or 'local:K' with K >= 1 top layers, got {context!r}."
        )
    return SentenceContext("local", int(m.group(1)))


def encoder_layers(model: Any, wanted: int, what: str = "") -> nn.ModuleList:
    """The transformer layers of a Hugging Face encoder (``model.encoder.layer``), checked to number at least
    ``wanted`` (``what`` names the feature in the errors; default: ``context 'local:K'``).

    Raises:
        ModelError: an encoder of another family; InputError: ``wanted`` above its layer count.
    """
    kind = getattr(getattr(model, "config", None), "model_type", None)
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    feature = what or "context 'local'"
    instead = "use a model without one" if what else "use context 'document' or 'sentence'"
    if kind not in LOCAL_MODEL_TYPES or not isinstance(layers, nn.ModuleList):
        raise ModelError(
            f"{feature} runs the top layers of BERT-style encoders ({', '.join(sorted(LOCAL_MODEL_TYPES))}); "
            f"this base is {kind!r}: {instead}."
        )
    if wanted > len(layers):
        asks = what or f"context 'local:{wanted}'"
        raise InputError(f"{asks} asks for {wanted} top layers; this model has {len(layers)}: ask for at most that.")
    return layers


def run_top_layers(
    model: Any, layers: int, sequences: Sequence[torch.Tensor], batch_size: int = 64
) -> list[torch.Tensor]:
    """Run the top ``layers`` layers of ``model`` over each of ``sequences`` on its own: ``[n_i, H]`` states at that
    depth -> ``[n_i, H]`` output states, padded and batched ``batch_size`` at a time."""
    top = encoder_layers(model, layers)[-layers:]
    out: list[torch.Tensor] = []
    for b in range(0, len(sequences), batch_size):
        part = sequences[b : b + batch_size]
        width = max(len(s) for s in part)
        x = part[0].new_zeros((len(part), width, part[0].shape[-1]))
        mask = torch.zeros((len(part), width), dtype=torch.long, device=x.device)
        for i, s in enumerate(part):
            x[i, : len(s)] = s
            mask[i, : len(s)] = 1
        x = run_layers(model.config, top, x, mask)
        out += [x[i, : len(s)] for i, s in enumerate(part)]
    return out


@contextmanager
def layer_inputs(layers: nn.ModuleList, at: Iterable[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Inside the block, a forward pass keeps the ``[B, L, H]`` states that go into each layer ``layers[i]``, ``i`` in
    ``at`` (``0``: the embeddings' output), in the dict it yields, by index; and no other layer's (a pass with
    ``output_hidden_states`` keeps every layer's). Gradients flow through the kept states as through the pass. Only
    this thread's passes are kept: another thread may run the same layers meanwhile (the service encodes queries
    while a document batch is added)."""
    kept: dict[int, torch.Tensor] = {}
    owner = threading.get_ident()

    def keep(i: int) -> Any:
        def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if threading.get_ident() == owner:
                kept[i] = args[0] if args else kwargs["hidden_states"]

        return hook

    handles = [layers[i].register_forward_pre_hook(keep(i), with_kwargs=True) for i in set(at)]
    try:
        yield kept
    finally:
        for h in handles:
            h.remove()


def run_layers(config: Any, layers: Iterable[nn.Module], x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Run BERT-style ``layers`` in turn over padded states ``x`` ``[B, L, H]`` with the ``[B, L]`` attention
    ``mask`` (1: a token, 0: padding) -> ``[B, L, H]``; ``config`` is the encoder's Hugging Face config."""
    from transformers.masking_utils import create_bidirectional_mask

    attention = create_bidirectional_mask(config=config, inputs_embeds=x, attention_mask=mask)
    for layer in layers:
        y = layer(x, attention)
        x = y[0] if isinstance(y, tuple) else y
    return x


def local_sentence_states(
    model: Any, layers: int, prefix: torch.Tensor, content: torch.Tensor, suffix: torch.Tensor, spans: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sentence's states after the top ``layers`` layers run over it alone.

    Args:
        prefix, content, suffix: a document's states at the depth below those layers, ``[p, H]``, ``[T, H]``,
            ``[q, H]``.
        spans: ``[S, 2]`` token ranges of its non-empty sentences in ``content``.

    Returns:
        ``states`` ``[sum of (p + n_i + q), H]`` (one sequence per sentence, concatenated) and ``spans`` ``[S, 2]``:
        where each sentence's own tokens lie in ``states``, for a pooling over spans.
    """
    seqs = [torch.cat([prefix, content[int(a) : int(b)], suffix]) for a, b in spans.tolist()]
    outs = run_top_layers(model, layers, seqs)
    starts = torch.tensor([0] + [len(o) for o in outs[:-1]], device=content.device).cumsum(0) + len(prefix)
    lengths = (spans[:, 1] - spans[:, 0]).to(content.device)
    return torch.cat(outs), torch.stack([starts, starts + lengths], dim=1)
