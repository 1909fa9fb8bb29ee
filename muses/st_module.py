"""The MuSES head bank as a sentence-transformers module.

A saved MuSES model is a plain sentence-transformers folder: ``[Transformer, MultiScaleHeads]``. This module holds
every MuSES parameter: the sentence and document poolings, the token, sentence and document heads, and optionally a
separate pooling and head for sentences in context and a *sentence branch* (a copy of the transformer's top layers
that only sentences in context run through; :meth:`MultiScaleHeads.attach_branch`). Inside a ``SentenceTransformer``
it produces the sentence scale (standalone sentence, full dim, L2-normalised), so

    SentenceTransformer(path, trust_remote_code=True)

gives MuSES sentence embeddings to any sentence-transformers code (``truncate_dim=64`` for a Matryoshka prefix).
sentence-transformers >= 6 asks for ``trust_remote_code=True`` before it imports any module class outside its own
package, even from a local folder; the weights themselves are safetensors and are never unpickled.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file, save_model
from sentence_transformers.base.modules import Module
from torch import nn

from muses.errors import ModelError
from muses.heads import DEFAULT_DIMS, HeadKind, ProjectionHead, check_dims
from muses.pooling import Pooling, PoolingMode
from muses.types import SCALES

WEIGHTS_NAME = "model.safetensors"


class MultiScaleHeads(Module):
    """Poolings and per-scale heads over a transformer's token states.

    Args:
        hidden: width ``H`` of the transformer's token states.
        embed_dim: width ``D`` of the output embeddings (default ``H``).
        dims: Matryoshka dims, strictly increasing and ending at ``D``.
        sentence_pooling: pooling of a sentence's tokens (in context or standalone).
        document_pooling: pooling of a document's tokens (specials included, as sentence-transformers does).
        head_kind: kind of every scale's head (see :class:`muses.heads.ProjectionHead`).
        head_hidden: hidden width of residual-MLP heads (default ``D``).
        query_prompt: text prepended to queries by ``encode_queries`` (e.g. ``"query: "`` for e5 models).
        normalize: whether the sentence embedding is L2-normalised inside sentence-transformers pipelines.
        context_head: kind of a separate head for sentences pooled in context (``context``), with its own pooling
            ``context_pooling`` (default: ``sentence_pooling``); None: in-context sentences share the sentence head.
            With it, standalone sentences and queries keep the sentence head while in-context sentences learn apart.
        sentence_branch: ``K > 0``: sentences in context are pooled from a copy of the transformer's top ``K`` layers
            run over the document's states below them (the document pass forks there), so they can train while
            documents, tokens, queries and standalone sentences keep the transformer's own layers. The copy is made,
            or its saved weights loaded into it, by :meth:`attach_branch`, which needs the transformer
            (:class:`~muses.encoder.MultiScaleEncoder` calls it); until then :attr:`branch` is None.
    """

    config_keys: list[str] = [  # noqa: RUF012 - sentence-transformers' class attribute
        "hidden",
        "embed_dim",
        "dims",
        "sentence_pooling",
        "document_pooling",
        "head_kind",
        "head_hidden",
        "query_prompt",
        "normalize",
        "context_head",
        "context_pooling",
        "sentence_branch",
    ]

    def __init__(
        self,
        hidden: int,
        embed_dim: int | None = None,
        dims: list[int] | tuple[int, ...] | None = None,
        sentence_pooling: PoolingMode = "mean",
        document_pooling: PoolingMode = "mean",
        head_kind: HeadKind = "residual-mlp",
        head_hidden: int | None = None,
        query_prompt: str = "",
        normalize: bool = True,
        context_head: HeadKind | None = None,
        context_pooling: PoolingMode | None = None,
        sentence_branch: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(sentence_branch, bool) or not isinstance(sentence_branch, int) or sentence_branch < 0:
            raise ModelError(f"sentence_branch is a number of layers (0: none), got {sentence_branch!r}.")
        self.hidden = hidden
        self.embed_dim = embed_dim or hidden
        self.dims = list(
            check_dims(dims or [d for d in DEFAULT_DIMS if d < self.embed_dim] + [self.embed_dim], self.embed_dim)
        )
        self.sentence_pooling: PoolingMode = sentence_pooling
        self.document_pooling: PoolingMode = document_pooling
        self.head_kind: HeadKind = head_kind
        self.head_hidden = head_hidden
        self.query_prompt = query_prompt
        self.normalize = normalize
        self.pool_sentence = Pooling(sentence_pooling, hidden)
        self.pool_document = Pooling(document_pooling, hidden)
        in_dims = {
            "token": hidden,
            "sentence": self.pool_sentence.out_dim,
            "document": self.pool_document.out_dim,
        }
        self.heads = nn.ModuleDict(
            {s: ProjectionHead(in_dims[s], self.embed_dim, head_kind, head_hidden) for s in SCALES}
        )
        self.context_head: HeadKind | None = context_head
        self.context_pooling: PoolingMode | None = None
        self.pool_context: Pooling | None = None
        if context_head is not None:
            self.context_pooling = context_pooling or sentence_pooling
            self.pool_context = Pooling(self.context_pooling, hidden)
            self.heads["context"] = ProjectionHead(self.pool_context.out_dim, self.embed_dim, context_head, head_hidden)
        self.sentence_branch = sentence_branch
        self.branch: nn.ModuleList | None = None
        self._saved_branch: dict[str, torch.Tensor] = {}  # loaded weights, until attach_branch

    def attach_branch(self, top_layers: nn.ModuleList) -> None:
        """Make :attr:`branch` a copy of ``top_layers`` (the transformer's top ``sentence_branch`` layers), then load
        the branch's saved weights into it when this module was loaded from a folder. Does nothing without a branch
        or once attached.

        Raises:
            ModelError: ``top_layers`` are not ``sentence_branch`` layers, or the saved weights do not fit them.
        """
        if not self.sentence_branch or self.branch is not None:
            return
        if len(top_layers) != self.sentence_branch:
            raise ModelError(f"the sentence branch copies {self.sentence_branch} layers, got {len(top_layers)}.")
        branch = nn.ModuleList(copy.deepcopy(layer) for layer in top_layers)
        if self._saved_branch:
            saved = {k.removeprefix("branch."): v for k, v in self._saved_branch.items()}
            _load_exactly(
                branch,
                saved,
                "the saved sentence branch does not fit this transformer's layers",
                "was it saved with another base model?",
            )
        branch.requires_grad_(True)  # the copied layers may come from a frozen transformer
        self.branch = branch
        self._saved_branch = {}

    def drop_branch(self) -> None:
        """Remove the sentence branch and any saved weights waiting for it: :meth:`save` then writes heads without
        one, and sentences in context come from the transformer's own top layers."""
        self.branch = None
        self.sentence_branch = 0
        self._saved_branch = {}

    def in_context_sentences(self, states: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
        """Sentences pooled in context: ``states`` ``[L, H]`` and token ``spans`` ``[S, 2]`` -> ``[S, D]``, through
        the context head when there is one, else the sentence head."""
        if self.pool_context is not None:
            return self.heads["context"](self.pool_context.pool_spans(states, spans))
        return self.heads["sentence"](self.pool_sentence.pool_spans(states, spans))

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Standalone sentence embedding: ``token_embeddings`` ``[B, L, H]`` -> ``sentence_embedding`` ``[B, D]``."""
        pooled = self.pool_sentence(features["token_embeddings"], features["attention_mask"])
        emb = self.heads["sentence"](pooled)
        features["sentence_embedding"] = F.normalize(emb, dim=-1) if self.normalize else emb
        return features

    def get_embedding_dimension(self) -> int:
        """The full embedding size ``D``."""
        return self.embed_dim

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``output_path``."""
        os.makedirs(output_path, exist_ok=True)
        self.save_config(output_path)
        if self._saved_branch:  # loaded without its transformer: keep the branch's weights as they were read
            state = {k: v.contiguous() for k, v in self.state_dict().items()}
            save_file({**state, **self._saved_branch}, os.path.join(output_path, WEIGHTS_NAME))
            return
        save_model(self, os.path.join(output_path, WEIGHTS_NAME))

    @classmethod
    def load(  # type: ignore[override]
        cls, model_name_or_path: str, subfolder: str = "", **kwargs: Any
    ) -> MultiScaleHeads:
        """Load from a local folder: JSON config plus safetensors weights (never a pickle)."""
        folder = os.path.join(model_name_or_path, subfolder)
        config_path = os.path.join(folder, cls.config_file_name)
        weights = os.path.join(folder, WEIGHTS_NAME)
        if not (os.path.isfile(config_path) and os.path.isfile(weights)):
            raise ModelError(
                f"{folder} is not a MuSES head folder: it needs {cls.config_file_name} and {WEIGHTS_NAME}."
            )
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
        unknown = set(config) - set(cls.config_keys)
        if unknown:
            raise ModelError(f"{config_path}: unknown keys {sorted(unknown)}; was it written by a newer MuSES?")
        module = cls(**config)
        state = load_file(weights, device="cpu")
        branch = {k: v for k, v in state.items() if k.startswith("branch.")}
        if bool(branch) != bool(module.sentence_branch):
            raise ModelError(
                f"{weights}: the sentence branch's weights do not match sentence_branch in {config_path}: save the "
                "model again with MuSES, or set sentence_branch to match."
            )
        rest = {k: v for k, v in state.items() if k not in branch}
        _load_exactly(module, rest, f"{weights} does not fit its config", "was it written by another MuSES version?")
        module._saved_branch = branch
        return module


def _load_exactly(module: nn.Module, state: dict[str, torch.Tensor], problem: str, hint: str) -> None:
    """``module.load_state_dict(state)``, strict, with a ModelError that says ``problem``, two keys and ``hint``."""
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ModelError(
            f"{problem} (missing {result.missing_keys[:2]}, unexpected {result.unexpected_keys[:2]}): {hint}"
        )
