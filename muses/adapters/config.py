"""Settings of a LoRA domain adapter (validated by pydantic; turned into a PEFT ``LoraConfig``)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from peft import LoraConfig

# Every linear layer of a BERT-style encoder block; "output.dense" also matches "attention.output.dense" (PEFT
# matches a name or a dotted suffix of it). The pooler's "dense" is left out: sentence-transformers never uses it.
DEFAULT_TARGETS: tuple[str, ...] = ("query", "key", "value", "output.dense", "intermediate.dense")
KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
RESERVED_KEYS = ("base",)


def check_key(key: str) -> str:
    """An adapter key names a domain or task: letters, digits, ``_.-`` (it is also a folder and a PEFT name).

    Raises:
        ValueError: for a key that is empty, too long, has other characters, or is reserved (``"base"``).
    """
    if not KEY_PATTERN.match(key):
        raise ValueError(
            f"adapter key {key!r} is not usable: use 1-64 letters, digits, '_' or '-' (no dots, no spaces), "
            "e.g. 'wiki-people' or 'scifact'."
        )
    if key in RESERVED_KEYS:
        raise ValueError(f"adapter key {key!r} is reserved for the base model (no adapter); choose another key.")
    return key


class AdapterConfig(BaseModel):
    """A LoRA adapter on the transformer of a MuSES encoder (heads and poolings are shared and stay frozen).

    The adapter adds ``B @ A * alpha / rank`` to each targeted linear layer (``A``: ``[rank, in]``, ``B``:
    ``[out, rank]``, ``B`` starts at zero so a fresh adapter is the base model).
    """

    model_config = ConfigDict(extra="forbid")

    key: str | None = Field(None, description="domain / task key of the adapter (default: the recipe's name)")
    rank: int = Field(8, ge=1, le=256, description="LoRA rank r")
    alpha: int = Field(16, ge=1, description="LoRA alpha (the update is scaled by alpha / rank)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input while training")
    target_modules: list[str] = Field(
        list(DEFAULT_TARGETS), min_length=1, description="linear layers to adapt (names or dotted name suffixes)"
    )

    @field_validator("key")
    @classmethod
    def _key(cls, v: str | None) -> str | None:
        return None if v is None else check_key(v)

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        bad = [t for t in v if not t.strip()]
        if bad:
            raise ValueError("target_modules has an empty name; list layer names such as 'query' or 'value'.")
        return v

    def to_peft(self) -> LoraConfig:
        """The PEFT ``LoraConfig`` of these settings (B initialised to zero: PEFT's default)."""
        from muses.extras import require

        require("peft", "adapters")  # one line naming muses[adapters] when PEFT is missing
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            bias="none",
        )
