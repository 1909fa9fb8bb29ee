"""A from-scratch transformer encoder in one file, whose feed-forward layers can be Mixture-of-Experts.

nanoGPT-style and bidirectional: token + learned position embeddings, ``num_layers`` pre-LayerNorm blocks
(``x = x + attn(LN(x))``, ``x = x + ffn(LN(x))``) and a final LayerNorm. The feed-forward of the layers listed in
``ScratchConfig.moe_layers`` is a :class:`~muses.scratch.moe.MoEFeedForward`; the others are dense.

The model is a Hugging Face ``PreTrainedModel`` registered with ``AutoConfig`` / ``AutoModel`` as ``muses-scratch``
when this module is imported, so a saved folder loads with ``AutoModel.from_pretrained`` and with
sentence-transformers' ``Transformer`` module, hence with ``MultiScaleEncoder.from_base`` / ``load``::

    tok = train_tokenizer(texts, vocab_size=8000)                  # muses.scratch.tokenizer
    config = ScratchConfig(vocab_size=len(tok), moe_layers=[1, 3], moe={"n_experts": 8, "top_k": 2})
    path = build_scratch_base(config, tok, "models/scratch-moe")  # [Transformer, Pooling(mean)], safetensors
    enc = MultiScaleEncoder.from_base(str(path))

MoE layers add an auxiliary (load-balancing and router z-) loss. It is returned as ``ScratchEncoderOutput.aux_loss``;
as sentence-transformers keeps only ``last_hidden_state``, training forwards also queue it on the encoder, and a
training loop adds ``pop_aux_loss(model)`` to its loss at each step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers import initialization as init
from transformers.utils import ModelOutput

from muses.errors import InputError
from muses.scratch.moe import MoEConfig, MoEFeedForward

MODEL_TYPE = "muses-scratch"
ST_POOLING_MODES = ("mean", "max", "cls")  # the sentence-transformers poolings MuSES can take over


# ---------------------------------------------------------------------------------------------------- config
class ScratchConfig(PreTrainedConfig):
    """Hyper-parameters of a :class:`ScratchEncoder`.

    A Hugging Face config class rather than a bare dataclass: in transformers 5 ``PreTrainedConfig`` subclasses *are*
    (keyword-only) dataclasses, and being one is what lets the model save to ``config.json`` and load back through
    ``AutoConfig`` / ``AutoModel`` / sentence-transformers like any hub model. All values are JSON-serialisable.

    Attributes:
        vocab_size: rows of the token embedding; at least the tokenizer's ``len(tokenizer)``.
        hidden_size: model width ``H``; a multiple of ``num_heads``.
        num_layers: transformer blocks (also readable as ``num_hidden_layers``).
        num_heads: attention heads per block (``num_attention_heads``); each has ``H / num_heads`` dims.
        ffn_size: inner width ``F`` of a dense feed-forward, and of each expert of a MoE one (``intermediate_size``).
        max_position: learned positions, hence the longest input in tokens (``max_position_embeddings``); keep the
            tokenizer's ``model_max_length`` at most this.
        dropout: dropout after the embeddings, on attention weights, inside the feed-forward and on the attention
            output; 0 disables it. Inactive in eval mode.
        layer_norm_eps: epsilon of every LayerNorm.
        initializer_range: std of the normal init of linear and embedding weights (biases start at 0, LayerNorms
            at weight 1, bias 0).
        pad_token_id: the tokenizer's padding id; its embedding row stays zero. Padding is read from
            ``attention_mask``, not from this id.
        moe_layers: indices (0-based) of the blocks whose feed-forward is Mixture-of-Experts, e.g. ``[1, 3]`` for
            every other layer of four; empty for a dense model.
        moe: the MoE settings as a plain dict of :class:`~muses.scratch.moe.MoEConfig` fields (``n_experts``,
            ``top_k``, capacity factors, loss weights...); required when ``moe_layers`` is non-empty, ignored
            otherwise. Missing keys are filled with MoEConfig's defaults and the complete dict is what is saved, so
            a saved model keeps its settings. A ``MoEConfig`` object is accepted and stored as a dict.

    Raises:
        InputError: for a value out of range; the message names the field and the fix.
    """

    model_type = MODEL_TYPE
    attribute_map: ClassVar[dict[str, str]] = {
        "num_hidden_layers": "num_layers",
        "num_attention_heads": "num_heads",
        "intermediate_size": "ffn_size",
        "max_position_embeddings": "max_position",
    }

    vocab_size: int = 8000
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    ffn_size: int = 1024
    max_position: int = 256
    dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int | None = 0
    moe_layers: list[int] = field(default_factory=list)
    moe: dict[str, Any] | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        if isinstance(self.moe, MoEConfig):
            self.moe = self.moe.to_dict()
        self.moe_layers = [int(i) for i in self.moe_layers]
        super().__post_init__(**kwargs)
        self.check()

    def check(self) -> None:
        """Raise :class:`InputError` naming the first invalid field and how to fix it."""
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "ffn_size", "max_position"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"ScratchConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if self.hidden_size % self.num_heads:
            raise InputError(
                f"ScratchConfig.hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads}); "
                f"pick e.g. num_heads={_divisor_near(self.hidden_size, self.num_heads)}."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"ScratchConfig.dropout must be in [0, 1), got {self.dropout}.")
        if self.layer_norm_eps <= 0 or self.initializer_range <= 0:
            raise InputError("ScratchConfig.layer_norm_eps and initializer_range must be > 0.")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise InputError(
                f"ScratchConfig.pad_token_id ({self.pad_token_id}) must be a vocabulary id in [0, {self.vocab_size}); "
                "use the tokenizer's pad_token_id."
            )
        bad = [i for i in self.moe_layers if not 0 <= i < self.num_layers]
        if bad:
            raise InputError(
                f"ScratchConfig.moe_layers {bad} are out of range for num_layers={self.num_layers}; "
                f"use indices in [0, {self.num_layers - 1}], e.g. {list(range(1, self.num_layers, 2))}."
            )
        if len(set(self.moe_layers)) != len(self.moe_layers):
            raise InputError(f"ScratchConfig.moe_layers {self.moe_layers} lists a layer twice; list each once.")
        if self.moe_layers and self.moe is None:
            raise InputError(
                f"ScratchConfig.moe_layers={self.moe_layers} needs MoE settings: pass moe={{'n_experts': 8, "
                "'top_k': 2} (any MoEConfig fields), or moe_layers=[] for a dense model."
            )
        if self.moe is not None:
            self.moe = self.moe_config().to_dict()  # validated, and complete: later default changes cannot alter it

    def moe_config(self) -> MoEConfig:
        """The ``moe`` dict as a :class:`MoEConfig` (its defaults when ``moe`` is None)."""
        try:
            return MoEConfig.from_dict(self.moe or {})
        except (TypeError, ValueError) as e:  # InputError is a ValueError
            raise InputError(f"ScratchConfig.moe {self.moe} is not valid MoE settings: {e}") from e


def _divisor_near(n: int, k: int) -> int:
    """The divisor of ``n`` closest to ``k`` (for error messages)."""
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(d - k), d))


# ---------------------------------------------------------------------------------------------------- modules
class SelfAttention(nn.Module):
    """Bidirectional multi-head self-attention through ``F.scaled_dot_product_attention``."""

    def __init__(self, config: ScratchConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, L, H]``, ``attn_mask`` ``[B, 1, 1, L]`` bool (True: key may be attended) -> ``[B, L, H]``."""
        b, length, h = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.num_heads, h // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(  # q, k, v: [B, heads, L, H / heads]
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(b, length, h)))


class FeedForward(nn.Module):
    """Dense feed-forward: Linear ``H -> F``, GELU, dropout, Linear ``F -> H``."""

    def __init__(self, config: ScratchConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.ffn_size)
        self.down = nn.Linear(config.ffn_size, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, L, H]`` -> ``[B, L, H]``."""
        return self.down(self.dropout(F.gelu(self.up(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(LN(x))``, then ``x + ffn(LN(x))`` (dense or MoE)."""

    def __init__(self, config: ScratchConfig, moe: bool) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = SelfAttention(config)
        self.ln_ffn = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn: FeedForward | MoEFeedForward = (
            MoEFeedForward(config.hidden_size, config.ffn_size, config.moe_config()) if moe else FeedForward(config)
        )

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x`` ``[B, L, H]``, ``attn_mask`` ``[B, 1, 1, L]``, ``mask`` ``[B, L]`` bool of real tokens.

        Returns the new ``[B, L, H]`` states and the block's weighted MoE aux loss (a scalar; None when dense).
        """
        x = x + self.attn(self.ln_attn(x), attn_mask)
        h = self.ln_ffn(x)
        if isinstance(self.ffn, MoEFeedForward):
            out = self.ffn(h, mask)
            return x + out.output, self.ffn.aux_loss(out)
        return x + self.ffn(h), None


@dataclass
class ScratchEncoderOutput(ModelOutput):
    """Output of :class:`ScratchEncoder`.

    Attributes:
        last_hidden_state: ``[B, L, H]`` final (LayerNormed) token states; what sentence-transformers reads.
        aux_loss: scalar weighted MoE auxiliary loss summed over the MoE layers; None for a dense model.
    """

    last_hidden_state: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None


class ScratchEncoder(PreTrainedModel):
    """The from-scratch encoder: embeddings, ``num_layers`` pre-LN blocks (dense or MoE FFN), final LayerNorm.

    Weights start as normal(0, ``initializer_range``) for linears (experts included) and embeddings, zero biases,
    LayerNorm 1/0 (the ``PreTrainedModel._init_weights`` defaults, applied by ``post_init``); MoE routers get
    normal(0, ``router_init_std``).

    Attributes:
        pending_aux_losses: MoE aux losses of training forwards (grad enabled, ``training`` mode) not yet taken by
            :func:`pop_aux_loss`. Pop them every step: each holds its autograd graph.
    """

    config_class = ScratchConfig
    config: ScratchConfig
    base_model_prefix = "scratch"
    main_input_name = "input_ids"

    def __init__(self, config: ScratchConfig) -> None:
        super().__init__(config)
        h = config.hidden_size
        self.token_embeddings = nn.Embedding(config.vocab_size, h, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position, h)
        self.dropout = nn.Dropout(config.dropout)
        moe = set(config.moe_layers)
        self.blocks = nn.ModuleList([Block(config, i in moe) for i in range(config.num_layers)])
        self.ln_final = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.pending_aux_losses: list[torch.Tensor] = []
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        for block in self.blocks:  # a MoE router keeps its own std (MoE layers own no direct parameter to hook)
            if isinstance(block.ffn, MoEFeedForward) and module is block.ffn.router:
                init.normal_(block.ffn.router.weight, mean=0.0, std=block.ffn.config.router_init_std)
                return
        super()._init_weights(module)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.token_embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        assert isinstance(value, nn.Embedding)
        self.token_embeddings = value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> ScratchEncoderOutput:
        """Contextual token states of a right-padded batch.

        Args:
            input_ids: ``[B, L]`` token ids, ``L <= max_position``.
            attention_mask: ``[B, L]`` 1 for real tokens, 0 for padding (default: all real). Padding must be on
                the right: positions count from the first column.
            token_type_ids: accepted for BERT-style tokenizers and ignored (there are no segment embeddings).
            **kwargs: other Hugging Face / sentence-transformers arguments (``return_dict``...), ignored.

        Returns:
            :class:`ScratchEncoderOutput` with ``last_hidden_state`` ``[B, L, H]`` and the MoE ``aux_loss``.
        """
        b, length = input_ids.shape
        if length > self.config.max_position:
            raise InputError(
                f"input of {length} tokens is longer than max_position={self.config.max_position}; truncate it "
                "(tokenizer model_max_length) or build the model with a larger max_position."
            )
        mask = (
            torch.ones(b, length, dtype=torch.bool, device=input_ids.device)
            if attention_mask is None
            else attention_mask.bool()
        )
        # A row without any real token would attend to nothing (NaN): let it attend to everything instead.
        attn_mask = (mask | ~mask.any(dim=1, keepdim=True))[:, None, None, :]
        positions = torch.arange(length, device=input_ids.device)
        x = self.dropout(self.token_embeddings(input_ids) + self.position_embeddings(positions)[None])
        aux: torch.Tensor | None = None
        for block in self.blocks:
            x, block_aux = block(x, attn_mask, mask)
            if block_aux is not None:
                aux = block_aux if aux is None else aux + block_aux
        x = self.ln_final(x)
        if aux is not None and self.training and torch.is_grad_enabled():
            self.pending_aux_losses.append(aux)
        return ScratchEncoderOutput(last_hidden_state=x, aux_loss=aux)


# ---------------------------------------------------------------------------------------------------- helpers
def pop_aux_loss(module: nn.Module) -> torch.Tensor | None:
    """Pop the pending MoE aux losses of every submodule of ``module`` that queues them: summed over the queues
    (MoE layers), averaged over the forwards each queued, so that a batch encoded in several chunks weighs as one.

    Works on anything that contains a :class:`ScratchEncoder` (a ``SentenceTransformer``, a ``MultiScaleEncoder``)
    or any module with a ``pending_aux_losses`` list. Returns a scalar to add to the training loss, or None when
    nothing is pending (a dense model, eval mode, or already popped).
    """
    total: torch.Tensor | None = None
    for m in module.modules():
        pending = getattr(m, "pending_aux_losses", None)
        if isinstance(pending, list) and pending:
            s = torch.stack([p.reshape(()) for p in pending]).mean()
            total = s if total is None else total + s.to(total.device)
            pending.clear()
    return total


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts of ``model``, total and active per token, to compare dense and MoE models.

    Active parameters count, in each :class:`MoEFeedForward`, the router and only ``top_k`` of the ``n_experts``
    experts (those a token is routed to); every other parameter is active.

    Returns:
        ``total``, ``active``, ``embedding`` (the token and position embeddings of every :class:`ScratchEncoder`),
        ``total_non_embedding`` and ``active_non_embedding``; ``moe_experts`` (all expert parameters) and
        ``moe_router`` (all router parameters).
    """
    total = sum(p.numel() for p in model.parameters())
    embedding = sum(
        m.token_embeddings.weight.numel() + m.position_embeddings.weight.numel()
        for m in model.modules()
        if isinstance(m, ScratchEncoder)
    )
    experts = router = inactive = 0
    for m in model.modules():
        if isinstance(m, MoEFeedForward):
            r = m.router.weight.numel()
            e = sum(p.numel() for p in m.experts.parameters())
            experts += e
            router += r
            inactive += e * (m.config.n_experts - m.config.top_k) // m.config.n_experts
    return {
        "total": total,
        "active": total - inactive,
        "embedding": embedding,
        "total_non_embedding": total - embedding,
        "active_non_embedding": total - inactive - embedding,
        "moe_experts": experts,
        "moe_router": router,
    }


def build_scratch_base(
    config: ScratchConfig,
    tokenizer: PreTrainedTokenizerBase,
    path: str | os.PathLike[str],
    pooling: str = "mean",
    seed: int = 0,
) -> Path:
    """Write a freshly initialised (seeded) :class:`ScratchEncoder` and ``tokenizer`` as a sentence-transformers
    folder ``[Transformer, Pooling]`` (safetensors) at ``path``; ``MultiScaleEncoder.from_base(str(path))`` wraps it.

    Args:
        config: the model's hyper-parameters; ``vocab_size`` must cover the tokenizer and ``pad_token_id`` match it.
        tokenizer: a fast tokenizer (e.g. from :func:`muses.scratch.tokenizer.train_tokenizer`).
        path: the output folder (created; existing model files in it are overwritten).
        pooling: the sentence-transformers pooling, ``mean``, ``max`` or ``cls``.
        seed: seed of the weight init; the global RNG state is restored afterwards.

    Returns:
        ``Path(path)``.
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    if pooling not in ST_POOLING_MODES:
        raise InputError(f"pooling {pooling!r} is unknown; use one of {', '.join(ST_POOLING_MODES)}.")
    if not getattr(tokenizer, "is_fast", False):
        raise InputError("build_scratch_base needs a fast tokenizer (offset mappings); use train_tokenizer().")
    if len(tokenizer) > config.vocab_size:
        raise InputError(
            f"the tokenizer has {len(tokenizer)} tokens but config.vocab_size is {config.vocab_size}; "
            f"set vocab_size={len(tokenizer)}."
        )
    if tokenizer.pad_token_id != config.pad_token_id:
        raise InputError(
            f"the tokenizer pads with id {tokenizer.pad_token_id} but config.pad_token_id is {config.pad_token_id}; "
            f"set pad_token_id={tokenizer.pad_token_id}."
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ScratchEncoder(config)
    out = Path(path)
    with TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        transformer = Transformer(tmp, max_seq_length=min(int(tokenizer.model_max_length), config.max_position))
        pool = Pooling(transformer.get_embedding_dimension(), pooling_mode=pooling)
        SentenceTransformer(modules=[transformer, pool], device="cpu").save(str(out), safe_serialization=True)
    return out


def register_auto_classes() -> None:
    """Register :class:`ScratchConfig` / :class:`ScratchEncoder` with ``AutoConfig`` / ``AutoModel`` (idempotent)."""
    AutoConfig.register(MODEL_TYPE, ScratchConfig, exist_ok=True)
    AutoModel.register(ScratchConfig, ScratchEncoder, exist_ok=True)


register_auto_classes()
