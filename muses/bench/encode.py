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

    Two sentence-transformers baselines: as configured (``max_seq_length`` 256 for all-MiniLM-L6-v2, so long
    abstracts are truncated and their tail is never embedded) and with ``max_seq_length`` raised to cover whole
    documents (up to the model's position limit). MuSES always embeds the whole text.

    Returns a dict with the corpus size, the seconds of each side and the speed-up ratios.
    """
    corpus = load_beir("scifact", split="test", data_dir=data_dir).corpus
    ids = sorted(corpus)[:n_docs]
    texts = [(corpus[i]["title"] + ". " + corpus[i]["text"]).strip() for i in ids]
    docs = [make_document(t, id=i) for t, i in zip(texts, ids, strict=True)]
    sentences = [s for d in docs for s in d.sentence_texts()]
    st = encoder.as_sentence_transformer()
    tokenized = encoder.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]

    def muses_pass(scales: tuple[str, ...]) -> Callable[[], object]:
        return lambda: encoder.encode_documents(docs, scales=scales, batch_size=batch_size, show_progress_bar=False)

    def st_two_pass() -> None:
        st.encode(texts, batch_size=batch_size, show_progress_bar=False)
        st.encode(sentences, batch_size=batch_size, show_progress_bar=False)

    def st_two_pass_whole_docs() -> None:
        configured = st.max_seq_length
        st.max_seq_length = min(max(len(t) for t in tokenized) + 2, encoder.tokenizer.model_max_length)
        try:
            st_two_pass()
        finally:
            st.max_seq_length = configured

    sides = {
        "st_docs_then_sentences": st_two_pass,
        "st_whole_docs_then_sentences": st_two_pass_whole_docs,
        "muses_docs_sentences": muses_pass(("document", "sentence")),
        "muses_docs_sentences_tokens": muses_pass(("document", "sentence", "token")),
    }
    for fn in sides.values():  # warm-up
        fn()
    seconds = {name: 0.0 for name in sides}
    for _ in range(repeats):  # interleaved, so that machine noise hits every side alike; best of `repeats`
        for name, fn in sides.items():
            seconds[name] = min(seconds[name] or float("inf"), _best_time(fn, 1))
    baseline = seconds["st_docs_then_sentences"]
    whole = seconds["st_whole_docs_then_sentences"]
    return {
        "n_docs": len(docs),
        "n_sentences": len(sentences),
        "n_doc_tokens": sum(len(t) for t in tokenized),
        "docs_over_st_max_seq_length": sum(len(t) + 2 > (st.max_seq_length or 0) for t in tokenized),
        "seconds": seconds,
        "speedup_vs_st": {k: baseline / v for k, v in seconds.items() if k.startswith("muses")},
        "speedup_vs_st_whole_docs": {k: whole / v for k, v in seconds.items() if k.startswith("muses")},
        "batch_size": batch_size,
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        "device": str(encoder.device),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }
