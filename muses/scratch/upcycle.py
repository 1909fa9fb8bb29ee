"""MoE upcycling of a pretrained BERT-style encoder (e.g. all-MiniLM-L6-v2).

Sparse upcycling (Komatsuzaki et al., 2022, "Sparse Upcycling: Training Mixture-of-Experts from Dense
Checkpoints"): each chosen layer's feed-forward block (``intermediate.dense -> gelu -> output.dense``) becomes a
:class:`~muses.scratch.moe.MoEFeedForward` whose experts all start as copies of it. With top-2 gates renormalised
to sum 1 and a capacity that drops nothing, every token's output is then ``g1 * FFN(x) + g2 * FFN(x) = FFN(x)``:
the upcycled model gives the dense model's outputs at initialisation, and fine-tuning lets the experts diverge.

The upcycled model is a Hugging Face model of its own type (``muses-moe-bert``, registered with the Auto classes on
import), so it saves and loads like every MuSES base model::

    >>> enc = MultiScaleEncoder.from_base()
    >>> upcycle_encoder(enc, MoEConfig(n_experts=4, top_k=2))
    >>> enc.save("runs/upcycled")   # config.json says model_type "muses-moe-bert"

In BERT's layer the feed-forward output goes through dropout and ``LayerNorm(ffn + attention_output)``; the MoE
replaces the two dense projections only, so that residual and LayerNorm stay as they were.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, BertConfig, BertModel

from muses.errors import InputError, ModelError
from muses.scratch.moe import MoEConfig, MoEFeedForward

MODEL_TYPE = "muses-moe-bert"


class MoEBertConfig(BertConfig):
    """A BERT config plus the MoE settings: ``moe`` (a :class:`MoEConfig` as a dict) and ``moe_layers``."""

    model_type = MODEL_TYPE

    def __init__(self, moe: dict[str, Any] | None = None, moe_layers: list[int] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.moe = moe or MoEConfig().to_dict()
        self.moe_layers = list(moe_layers) if moe_layers is not None else []


class MoEIntermediate(nn.Module):
    """Stands in for ``BertIntermediate``: the whole MoE feed-forward, ``[B, L, H] -> [B, L, H]``.

    The layer's ``output.dense`` becomes the identity, so ``BertOutput`` applies only dropout, the residual and
    LayerNorm to this output. The auxiliary loss of each training forward is kept in ``pending_aux_losses``
    (sentence-transformers passes only the token states on), for the trainer to collect.
    """

    def __init__(self, moe: MoEFeedForward) -> None:
        super().__init__()
        self.moe = moe
        self.mask: Tensor | None = None  # [B, L] bool of real tokens, set by MoEBertModel.forward
        self.pending_aux_losses: list[Tensor] = []

    def forward(self, hidden_states: Tensor) -> Tensor:
        mask = self.mask if self.mask is not None and self.mask.shape == hidden_states.shape[:-1] else None
        out = self.moe(hidden_states, mask)
        if self.training and torch.is_grad_enabled():
            self.pending_aux_losses.append(self.moe.aux_loss(out))
        return out.output


class MoEBertModel(BertModel):
    """``BertModel`` whose layers in ``config.moe_layers`` have a Mixture-of-Experts feed-forward block."""

    config_class = MoEBertConfig

    def __init__(self, config: MoEBertConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        moe = MoEConfig.from_dict(config.moe)
        n_layers = len(self.encoder.layer)
        bad = [i for i in config.moe_layers if not 0 <= i < n_layers]
        if bad:
            raise InputError(f"moe_layers {bad} out of range: the model has layers 0..{n_layers - 1}.")
        for i in config.moe_layers:
            layer: Any = self.encoder.layer[i]
            layer.intermediate = MoEIntermediate(MoEFeedForward(config.hidden_size, config.intermediate_size, moe))
            layer.output.dense = nn.Identity()

    def moe_blocks(self) -> list[MoEIntermediate]:
        """The MoE blocks, in layer order."""
        return [m for m in self.modules() if isinstance(m, MoEIntermediate)]

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None, **kwargs: Any) -> Any:
        """BERT's forward; the attention mask also tells the MoE blocks which tokens are padding."""
        blocks = self.moe_blocks()
        mask = attention_mask.bool() if attention_mask is not None else None
        for block in blocks:
            block.mask = mask
        try:
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        finally:
            for block in blocks:
                block.mask = None


def _register() -> None:
    try:
        AutoConfig.register(MODEL_TYPE, MoEBertConfig)
        AutoModel.register(MoEBertConfig, MoEBertModel)
    except ValueError:  # already registered (module reloaded)
        pass


_register()


def upcycle_bert(model: BertModel, moe: MoEConfig, layers: Sequence[int] | None = None) -> MoEBertModel:
    """A :class:`MoEBertModel` whose chosen layers' experts are copies of ``model``'s feed-forward blocks.

    Args:
        model: a pretrained ``BertModel`` (not modified).
        moe: the MoE settings; with ``top_k=2`` and an eval capacity that cannot drop (``capacity_factor_eval``
            None, or >= ``n_experts / top_k``) the result equals ``model`` in eval mode.
        layers: the layers to upcycle (default: all).
    """
    if type(model).__name__ != "BertModel" or not isinstance(model, BertModel):
        raise ModelError(
            f"upcycling supports BERT-style encoders (BertModel, e.g. all-MiniLM-L6-v2); got {type(model).__name__}."
        )
    n_layers = len(model.encoder.layer)
    chosen = list(range(n_layers)) if layers is None else sorted(set(layers))
    cfg = MoEBertConfig(moe=moe.to_dict(), moe_layers=chosen, **model.config.to_dict())
    new = MoEBertModel(cfg, add_pooling_layer=model.pooler is not None)
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    ffn_keys = {k for i in chosen for k in (f"encoder.layer.{i}.intermediate.dense", f"encoder.layer.{i}.output.dense")}
    if unexpected and any(k.rsplit(".", 1)[0] not in ffn_keys for k in unexpected):
        raise ModelError(f"upcycling found weights it does not know: {unexpected[:5]}")
    for i in chosen:
        old: Any = model.encoder.layer[i]
        layer: Any = new.encoder.layer[i]
        layer.intermediate = MoEIntermediate(MoEFeedForward.from_dense(old.intermediate.dense, old.output.dense, moe))
    left = [k for k in missing if ".intermediate.moe." not in k]
    if left:
        raise ModelError(f"upcycling left weights uninitialised: {left[:5]}")
    cast(nn.Module, new).to(next(model.parameters()).device)
    new.train(model.training)
    return new


def upcycle_encoder(encoder: Any, moe: MoEConfig, layers: Sequence[int] | None = None) -> None:
    """Upcycle a :class:`~muses.encoder.MultiScaleEncoder`'s transformer in place (see :func:`upcycle_bert`)."""
    transformer = encoder.transformer
    transformer.model = upcycle_bert(transformer.auto_model, moe, layers)
