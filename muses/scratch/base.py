"""A from-scratch base model folder for training: a tokenizer trained on the recipe's texts and a fresh encoder."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from muses.scratch.model import ScratchConfig, build_scratch_base
from muses.scratch.tokenizer import train_tokenizer

STAMP = "muses_scratch.json"


def scratch_base(spec: dict[str, Any], texts: Sequence[str], folder: Path, seed: int) -> Path:
    """Write (or reuse) a fresh sentence-transformers folder for a from-scratch encoder.

    Args:
        spec: :class:`muses.training.config.ScratchSettings` as a dict (sizes, ``moe`` with its ``layers``).
        texts: the training texts the WordPiece tokenizer is trained on.
        folder: where to write; a folder made from the same spec, seed and texts is reused as it is, so a
            resumed run starts from the very model its checkpoint was trained from.
        seed: seeds the weights' initialisation.
    Returns:
        ``folder``, loadable with ``MultiScaleEncoder.from_base``.
    """
    digest = hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()
    stamp = {"spec": spec, "seed": seed, "texts": len(texts), "sha256": digest}
    if (folder / STAMP).is_file() and json.loads((folder / STAMP).read_text(encoding="utf-8")) == stamp:
        return folder
    tokenizer = train_tokenizer(texts, vocab_size=spec["vocab_size"], max_length=spec["max_position"])
    moe = spec.get("moe")
    config = ScratchConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec["hidden_size"],
        num_layers=spec["num_layers"],
        num_heads=spec["num_heads"],
        ffn_size=spec["ffn_size"],
        max_position=spec["max_position"],
        dropout=spec["dropout"],
        pad_token_id=tokenizer.pad_token_id,
        moe_layers=list(moe["layers"]) if moe else [],
        moe={k: v for k, v in moe.items() if k != "layers"} if moe else None,
    )
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    build_scratch_base(config, tokenizer, tmp, seed=seed)
    (tmp / STAMP).write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder
