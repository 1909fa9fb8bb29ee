"""Encode throughput: MuSES's single pass against sentence-transformers encoding documents and sentences apart.

Both sides embed the same SciFact abstracts and the same sentences (MuSES's segmentation), in the same process,
alternating, best of ``repeats``. Speed is reported as a ratio, which stays meaningful on a noisy shared machine.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from typing import Any

import torch

from muses.data.beir import load_beir
from muses.encoder import MultiScaleEncoder
from muses.text import make_document


def _best_time(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_encode(
    encoder: MultiScaleEncoder,
    data_dir: str | os.PathLike[str] | None = None,
    n_docs: int = 300,
    repeats: int = 3,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Time MuSES (documents + sentences, and + tokens, one pass) against sentence-transformers (two passes).

    Returns a dict with the corpus size, the seconds of each side and the speed-up ratios.
    """
    corpus = load_beir("scifact", split="test", data_dir=data_dir).corpus
    ids = sorted(corpus)[:n_docs]
    texts = [(corpus[i]["title"] + ". " + corpus[i]["text"]).strip() for i in ids]
    docs = [make_document(t, id=i) for t, i in zip(texts, ids, strict=True)]
    sentences = [s for d in docs for s in d.sentence_texts()]
    st = encoder.as_sentence_transformer()

    def muses_ds() -> None:
        encoder.encode_documents(docs, scales=("document", "sentence"), batch_size=batch_size, show_progress_bar=False)

    def muses_dst() -> None:
        encoder.encode_documents(
            docs, scales=("document", "sentence", "token"), batch_size=batch_size, show_progress_bar=False
        )

    def st_two_pass() -> None:
        st.encode(texts, batch_size=batch_size, show_progress_bar=False)
        st.encode(sentences, batch_size=batch_size, show_progress_bar=False)

    muses_ds()  # warm-up
    st_two_pass()
    t_ds, t_dst, t_st = 0.0, 0.0, 0.0
    t_st = _best_time(st_two_pass, repeats)
    t_ds = _best_time(muses_ds, repeats)
    t_dst = _best_time(muses_dst, repeats)
    n_tokens = sum(len(x) for x in encoder.tokenizer(texts, add_special_tokens=False)["input_ids"])
    return {
        "n_docs": len(docs),
        "n_sentences": len(sentences),
        "n_doc_tokens": n_tokens,
        "docs_over_window": sum(
            len(x) > encoder.window for x in encoder.tokenizer(texts, add_special_tokens=False)["input_ids"]
        ),
        "seconds_st_docs_then_sentences": t_st,
        "seconds_muses_docs_sentences": t_ds,
        "seconds_muses_docs_sentences_tokens": t_dst,
        "speedup_docs_sentences": t_st / t_ds,
        "speedup_docs_sentences_tokens": t_st / t_dst,
        "batch_size": batch_size,
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        "device": str(encoder.device),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }
