"""Benchmark sentence splitters for MuSES: speed and quality, with character spans into the original text.

Splitters compared (all must give ``(start, end)`` character spans into the unchanged input text):

* ``blingfire``: ``blingfire.text_to_sentences_and_offsets`` (offsets returned by the library);
* ``pysbd``: ``pysbd.Segmenter(language="en", clean=False, char_span=True)`` (spans returned by the library);
* ``sentencex``: ``sentencex.segment("en", text)``; it returns strings only, so spans are derived here by
  locating each sentence in the text sequentially (``str.find`` from the end of the previous one).

Quality is measured on SciFact's original corpus, whose abstracts come as lists of sentences. The text of a
document is its sentences, each ``.strip()``-ped, joined with one space; the gold boundaries are the character
offsets where each sentence starts. A predicted sentence start matches a gold start if they are equal after
skipping whitespace forward from the predicted start. Reported per splitter (micro-averaged over documents):

* boundary precision, recall and F1 over all sentence starts (offset 0 included, as defined above), and the
  same F1 over internal boundaries only (offset 0 left out, since every splitter gets it for free);
* exact-sentence accuracy: the fraction of gold sentences reproduced exactly as one predicted span (both
  compared after stripping surrounding whitespace);
* throughput in characters/second: best of 3 timed runs (``time.perf_counter``) over the same texts, with the
  splitters interleaved within each run; offset derivation is included in the timing;
* span validity: spans that break ``0 <= start < end <= len(text)``, overlap or go backwards are counted, and
  so are sentences whose reported text differs from ``text[start:end]`` (ignoring whitespace) and documents in
  which some non-whitespace character is in no span (dropped text).

A few SQuAD v1.1 dev paragraphs (no gold segmentation) are used for a second throughput figure and for the
average number of sentences per paragraph.

Usage::

    python benchmarks/sentence_splitters.py [--data-dir DIR] [--n-docs 500] [--n-squad 300] [--json PATH]

``--data-dir`` defaults to ``$MUSES_DATA_DIR``, else ``../shared/data`` relative to the repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import blingfire
import pysbd
import sentencex

Span = tuple[int, int]
# A splitter returns the spans and, for the fidelity check, the sentence strings it reported (or None).
SplitResult = tuple[list[Span], list[str] | None]
Splitter = Callable[[str], SplitResult]

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV_VAR = "MUSES_DATA_DIR"
SEED = 0
N_TIMING_RUNS = 3


# --- splitters


def split_blingfire(text: str) -> SplitResult:
    """Split with blingfire; the library returns character offsets (sentences joined by newlines)."""
    joined, offsets = blingfire.text_to_sentences_and_offsets(text)
    sentences = joined.split("\n") if offsets else []
    return [(int(s), int(e)) for s, e in offsets], sentences


def make_pysbd() -> Splitter:
    """Return a pysbd splitter; the segmenter is built once, as an application would."""
    segmenter = pysbd.Segmenter(language="en", clean=False, char_span=True)

    def split_pysbd(text: str) -> SplitResult:
        spans = segmenter.segment(text)
        return [(s.start, s.end) for s in spans], [s.sent for s in spans]

    return split_pysbd


class SentencexSplitter:
    """sentencex plus sequential offset recovery; counts sentences that cannot be found in the text."""

    def __init__(self) -> None:
        self.not_found = 0

    def __call__(self, text: str) -> SplitResult:
        spans: list[Span] = []
        sentences: list[str] = []
        cursor = 0
        for sentence in sentencex.segment("en", text):
            start = text.find(sentence, cursor)
            end = start + len(sentence)
            if start < 0:  # fall back to the stripped sentence (whitespace may have been normalised)
                core = sentence.strip()
                start = text.find(core, cursor) if core else -1
                end = start + len(core)
            if start < 0:
                self.not_found += 1
                continue
            spans.append((start, end))
            sentences.append(text[start:end])
            cursor = end
        return spans, sentences


# --- data


@dataclass
class GoldDoc:
    """One SciFact abstract: its joined text and the character offsets where each gold sentence starts."""

    doc_id: int
    text: str
    starts: list[int]
    spans: list[Span]


def default_data_dir() -> Path:
    """``$MUSES_DATA_DIR`` if set, else ``../shared/data`` relative to the repository root."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else (REPO_ROOT.parent / "shared" / "data")


def load_scifact(data_dir: Path, n_docs: int, seed: int = SEED) -> list[GoldDoc]:
    """Load a fixed random sample of SciFact abstracts with their gold sentence spans."""
    path = data_dir / "scifact" / "original" / "corpus.jsonl"
    docs: list[GoldDoc] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            record = json.loads(line)
            sentences = [s.strip() for s in record["abstract"]]
            sentences = [s for s in sentences if s]
            if not sentences:
                continue
            starts: list[int] = []
            spans: list[Span] = []
            pos = 0
            for sentence in sentences:
                starts.append(pos)
                spans.append((pos, pos + len(sentence)))
                pos += len(sentence) + 1
            text = " ".join(sentences)
            assert all(text[s:e] == sent for (s, e), sent in zip(spans, sentences, strict=True))
            docs.append(GoldDoc(int(record["doc_id"]), text, starts, spans))
    rng = random.Random(seed)
    return rng.sample(docs, min(n_docs, len(docs)))


def load_squad_contexts(data_dir: Path, n_contexts: int) -> list[str]:
    """Return the first ``n_contexts`` paragraph contexts of SQuAD v1.1 dev (in file order)."""
    path = data_dir / "squad" / "dev-v1.1.reconstructed.json"
    with path.open(encoding="utf-8") as f:
        data = json.load(f)
    contexts = [p["context"] for article in data["data"] for p in article["paragraphs"]]
    return contexts[:n_contexts]


# --- metrics


@dataclass
class SpanChecks:
    """Counts of span problems over a set of texts."""

    invalid_range: int = 0  # not 0 <= start < end <= len(text)
    overlap_or_order: int = 0  # start < end of the previous span
    text_mismatch: int = 0  # reported sentence != text[start:end], ignoring whitespace
    docs_with_dropped_text: int = 0  # some non-whitespace character lies in no span
    dropped_chars: int = 0

    @property
    def violations(self) -> int:
        """Span-validity violations: bad ranges plus overlapping / out-of-order spans."""
        return self.invalid_range + self.overlap_or_order


def _squash(s: str) -> str:
    return "".join(s.split())


def check_spans(text: str, spans: Sequence[Span], sentences: Sequence[str] | None, checks: SpanChecks) -> None:
    """Update ``checks`` with the problems found in one document's spans."""
    prev_end = 0
    covered = [False] * len(text)
    for i, (start, end) in enumerate(spans):
        if not (0 <= start < end <= len(text)):
            checks.invalid_range += 1
        if start < prev_end:
            checks.overlap_or_order += 1
        prev_end = max(prev_end, end)
        for j in range(max(start, 0), min(end, len(text))):
            covered[j] = True
        if sentences is not None and i < len(sentences) and _squash(sentences[i]) != _squash(text[start:end]):
            checks.text_mismatch += 1
    if sentences is not None and len(sentences) != len(spans):
        checks.text_mismatch += abs(len(sentences) - len(spans))
    dropped = sum(1 for ch, cov in zip(text, covered, strict=True) if not cov and not ch.isspace())
    if dropped:
        checks.docs_with_dropped_text += 1
        checks.dropped_chars += dropped


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def _strip_span(text: str, span: Span) -> Span:
    start, end = span
    start = _skip_ws(text, max(start, 0))
    end = min(end, len(text))
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


@dataclass
class Counts:
    """Raw counts for boundary and exact-sentence scores."""

    tp: int = 0
    n_pred: int = 0
    n_gold: int = 0
    tp_internal: int = 0
    n_pred_internal: int = 0
    n_gold_internal: int = 0
    exact: int = 0

    def add(self, doc: GoldDoc, spans: Sequence[Span]) -> None:
        """Score one document's predicted spans against its gold."""
        pred_starts = {_skip_ws(doc.text, max(s, 0)) for s, _ in spans}
        pred_starts.discard(len(doc.text))  # a start that is only trailing whitespace is not a sentence
        gold_starts = set(doc.starts)
        hits = pred_starts & gold_starts
        self.tp += len(hits)
        self.n_pred += len(pred_starts)
        self.n_gold += len(gold_starts)
        self.tp_internal += len(hits - {0})
        self.n_pred_internal += len(pred_starts - {0})
        self.n_gold_internal += len(gold_starts - {0})
        pred_spans = {_strip_span(doc.text, sp) for sp in spans}
        self.exact += sum(1 for sp in doc.spans if sp in pred_spans)


def prf(tp: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    """Precision, recall and F1 from counts (0.0 where undefined)."""
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


@dataclass
class Result:
    """All numbers for one splitter."""

    splitter: str
    precision: float
    recall: float
    f1: float
    f1_internal: float
    exact_sentence_acc: float
    scifact_chars_per_s: float
    squad_chars_per_s: float
    scifact_sents_per_doc: float
    squad_sents_per_para: float
    span_violations: int
    checks: dict[str, int] = field(default_factory=dict)


def time_best_of(splitters: dict[str, Splitter], texts: Sequence[str], runs: int) -> dict[str, float]:
    """Best wall time (s) of ``runs`` passes of each splitter over ``texts``; splitters interleaved."""
    best = {name: float("inf") for name in splitters}
    for _ in range(runs):
        for name, split in splitters.items():
            t0 = time.perf_counter()
            for text in texts:
                split(text)
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def run(data_dir: Path, n_docs: int, n_squad: int) -> tuple[list[Result], dict[str, object]]:
    """Run the benchmark; return per-splitter results and run metadata."""
    docs = load_scifact(data_dir, n_docs)
    contexts = load_squad_contexts(data_dir, n_squad)
    sentencex_splitter = SentencexSplitter()
    splitters: dict[str, Splitter] = {
        "blingfire": split_blingfire,
        "pysbd": make_pysbd(),
        "sentencex": sentencex_splitter,
    }

    # Quality and span checks (one untimed pass).
    results: list[Result] = []
    for name, split in splitters.items():
        counts = Counts()
        checks = SpanChecks()
        n_sci_sents = 0
        sentencex_splitter.not_found = 0
        for doc in docs:
            spans, sentences = split(doc.text)
            check_spans(doc.text, spans, sentences, checks)
            counts.add(doc, spans)
            n_sci_sents += len(spans)
        n_squad_sents = 0
        for context in contexts:
            spans, sentences = split(context)
            check_spans(context, spans, sentences, checks)
            n_squad_sents += len(spans)
        p, r, f = prf(counts.tp, counts.n_pred, counts.n_gold)
        _, _, f_int = prf(counts.tp_internal, counts.n_pred_internal, counts.n_gold_internal)
        check_dict = asdict(checks)
        if name == "sentencex":
            check_dict["sentences_not_found_in_text"] = sentencex_splitter.not_found
        results.append(
            Result(
                splitter=name,
                precision=p,
                recall=r,
                f1=f,
                f1_internal=f_int,
                exact_sentence_acc=counts.exact / counts.n_gold if counts.n_gold else 0.0,
                scifact_chars_per_s=0.0,
                squad_chars_per_s=0.0,
                scifact_sents_per_doc=n_sci_sents / len(docs),
                squad_sents_per_para=n_squad_sents / len(contexts) if contexts else 0.0,
                span_violations=checks.violations,
                checks=check_dict,
            )
        )

    # Throughput (best of N runs over the same texts, all splitters in this process).
    sci_texts = [d.text for d in docs]
    sci_chars = sum(len(t) for t in sci_texts)
    squad_chars = sum(len(t) for t in contexts)
    sci_best = time_best_of(splitters, sci_texts, N_TIMING_RUNS)
    squad_best = time_best_of(splitters, contexts, N_TIMING_RUNS)
    for res in results:
        res.scifact_chars_per_s = sci_chars / sci_best[res.splitter]
        res.squad_chars_per_s = squad_chars / squad_best[res.splitter] if contexts else 0.0

    meta: dict[str, object] = {
        "data_dir": str(data_dir),
        "scifact_docs": len(docs),
        "scifact_gold_sentences": sum(len(d.starts) for d in docs),
        "scifact_chars": sci_chars,
        "squad_paragraphs": len(contexts),
        "squad_chars": squad_chars,
        "seed": SEED,
        "timing_runs": N_TIMING_RUNS,
        "python": platform.python_version(),
        "versions": {
            "blingfire": _version("blingfire"),
            "pysbd": _version("pysbd"),
            "sentencex": _version("sentencex"),
        },
    }
    return results, meta


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def markdown_table(results: Sequence[Result]) -> str:
    """Render the results as a markdown table."""
    header = (
        "| splitter | boundary P | boundary R | boundary F1 | F1 (internal) | exact sent. acc "
        "| SciFact chars/s | SQuAD chars/s | sents/abstract | sents/SQuAD para | span violations |"
    )
    sep = "|" + "---|" * 11
    rows = [header, sep]
    for r in results:
        rows.append(
            f"| {r.splitter} | {r.precision:.3f} | {r.recall:.3f} | {r.f1:.3f} | {r.f1_internal:.3f} "
            f"| {r.exact_sentence_acc:.3f} | {r.scifact_chars_per_s:,.0f} | {r.squad_chars_per_s:,.0f} "
            f"| {r.scifact_sents_per_doc:.2f} | {r.squad_sents_per_para:.2f} | {r.span_violations} |"
        )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--data-dir", type=Path, default=None, help=f"data root (default: ${ENV_VAR} or ../shared/data)"
    )
    parser.add_argument("--n-docs", type=int, default=500, help="SciFact abstracts to sample (seed 0)")
    parser.add_argument("--n-squad", type=int, default=300, help="first N SQuAD dev paragraphs (speed only)")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers as JSON to this path")
    args = parser.parse_args(argv)

    data_dir: Path = args.data_dir if args.data_dir is not None else default_data_dir()
    if not data_dir.is_dir():
        print(f"data directory {data_dir} not found; pass --data-dir or set {ENV_VAR}", file=sys.stderr)
        return 2

    results, meta = run(data_dir, args.n_docs, args.n_squad)
    print(
        f"SciFact: {meta['scifact_docs']} abstracts, {meta['scifact_gold_sentences']} gold sentences, "
        f"{meta['scifact_chars']:,} chars; SQuAD: {meta['squad_paragraphs']} paragraphs, "
        f"{meta['squad_chars']:,} chars; best of {N_TIMING_RUNS} runs\n"
    )
    print(markdown_table(results))
    print()
    for r in results:
        print(f"{r.splitter} span checks: {r.checks}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"meta": meta, "results": [asdict(r) for r in results]}
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
