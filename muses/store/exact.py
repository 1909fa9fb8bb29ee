"""The full-dim copy of one scale's stored vectors, by document row: what the store rescores with, without SQLite.

An ANN index holds a small Matryoshka prefix (or PQ codes), so the store rescores its candidates, and scores token
MaxSim, on the stored vectors. Reading them back from SQLite costs one B-tree row per vector, tens of thousands per
fusion query at scale (docs/benchmarks.md). :class:`ExactVectors` keeps the same vectors, in the same dtype
(float32, or the store's int8 tokens: equal to SQLite's bytes), in arrays:

- a saved base, ``[N, D]``, memory-mapped from the index snapshot (:meth:`save` / :meth:`load`), so opening a
  store reads no vectors and a search touches only the pages of its candidates;
- the chunks added since (one per commit applied), in memory until the next snapshot;
- a directory by document row: which array holds the row's vectors, where they start and how many there are.
  Removing a document clears its entry; its vectors stay in the array until the next snapshot writes the live ones.

A vector's position inside its document is the ordinal in its :func:`~muses.store.vectors.make_ids` id (a
sentence's position, a token vector's order), so ids map to array rows without a lookup table.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from muses.store.db import to_int8

GROW = 1.5


class ExactVectors:
    """One scale's vectors ``[n, D]`` grouped by document row, stored as ``dtype`` (``float32`` or ``int8``).

    Args:
        dim: ``D``.
        dtype: ``float32``, or ``int8`` (each vector scaled by ``127 / max|x|``, as SQLite stores int8 tokens).
    """

    def __init__(self, dim: int, dtype: str = "float32") -> None:
        self.dim = dim
        self.dtype = np.dtype(dtype)
        self.arrays: list[np.ndarray] = []
        self._array = np.full(0, -1, dtype=np.int32)  # [R] which array holds document row r (-1: none)
        self._start = np.zeros(0, dtype=np.int64)  # [R] its first vector's row in that array
        self._count = np.zeros(0, dtype=np.int64)  # [R] how many vectors it has
        self.live_vectors = 0

    def __len__(self) -> int:
        """Vectors of the documents present (removed ones excluded)."""
        return self.live_vectors

    def _reserve(self, rows: int) -> None:
        """Room in the directory for document rows below ``rows``."""
        if rows <= len(self._array):
            return
        size = max(rows, int(len(self._array) * GROW) + 1024)
        old = len(self._array)
        self._array = np.concatenate([self._array, np.full(size - old, -1, dtype=np.int32)])
        self._start = np.concatenate([self._start, np.zeros(size - old, dtype=np.int64)])
        self._count = np.concatenate([self._count, np.zeros(size - old, dtype=np.int64)])

    def _convert(self, vectors: np.ndarray) -> np.ndarray:
        x = np.asarray(vectors).reshape(-1, self.dim)
        return to_int8(x) if self.dtype == np.int8 else np.ascontiguousarray(x, dtype=self.dtype)

    def add(self, docs: np.ndarray, vectors: np.ndarray) -> None:
        """Add the ``[n, D]`` vectors of ``[n]`` document rows (each document's vectors together, in their order)."""
        docs = np.asarray(docs, dtype=np.int64)
        if not len(docs):
            return
        if np.any(np.diff(docs) < 0):  # checked before anything changes
            raise ValueError("vectors must come grouped by document row, in increasing row order")
        present, first, counts = np.unique(docs, return_index=True, return_counts=True)
        self._reserve(int(present[-1]) + 1)
        self.remove(present)  # a row is added once; re-adding one replaces it
        self.arrays.append(self._convert(vectors))
        self._array[present] = len(self.arrays) - 1
        self._start[present] = first
        self._count[present] = counts
        self.live_vectors += len(docs)

    def remove(self, rows: Sequence[int] | np.ndarray) -> None:
        """Forget the documents ``rows`` (absent ones are ignored)."""
        rows = np.asarray(rows, dtype=np.int64)
        rows = rows[(rows >= 0) & (rows < len(self._array))]
        rows = rows[self._array[rows] >= 0]
        self.live_vectors -= int(self._count[rows].sum())
        self._array[rows] = -1
        self._count[rows] = 0

    def present(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """``[n]`` bool: which document ``rows`` are held."""
        return self._per_row(self._array, rows, -1) >= 0

    def counts(self, rows: np.ndarray) -> np.ndarray:
        """``[n]`` vectors held for each of the document ``rows`` (0 when absent)."""
        return self._per_row(self._count, rows, 0)

    @staticmethod
    def _per_row(table: np.ndarray, rows: Sequence[int] | np.ndarray, missing: int) -> np.ndarray:
        """``[n]`` entries of a per-row ``table`` at ``rows``, ``missing`` for rows outside it."""
        rows = np.asarray(rows, dtype=np.int64)
        inside = (rows >= 0) & (rows < len(table))
        out = np.full(len(rows), missing, dtype=np.int64)
        out[inside] = table[rows[inside]]
        return out

    def documents(self, rows: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every vector of the document ``rows`` (sorted, unique; absent ones skipped), in row order:
        ``([n] document row, [n] ordinal inside the document, [n, D] vectors in the stored dtype)``."""
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        rows = rows[self.present(rows)]
        counts = self._count[rows]
        doc = np.repeat(rows, counts)
        ordinal = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        return doc, ordinal, self._take(doc, ordinal)

    def take(self, docs: np.ndarray, ordinals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The vectors at ``[n]`` (document row, ordinal) pairs: ``([n] bool found, [m, D] the found ones' vectors,
        in the given order)``; a pair is not found when its document is absent or has fewer vectors."""
        docs = np.asarray(docs, dtype=np.int64)
        ordinals = np.asarray(ordinals, dtype=np.int64)
        found = (ordinals >= 0) & (ordinals < self.counts(docs))
        return found, self._take(docs[found], ordinals[found])

    def _take(self, docs: np.ndarray, ordinals: np.ndarray) -> np.ndarray:
        """``[n, D]`` the vectors at present (document row, ordinal) pairs."""
        out = np.empty((len(docs), self.dim), dtype=self.dtype)
        if not len(docs):
            return out
        array = self._array[docs]
        pos = self._start[docs] + ordinals
        for a in np.unique(array):
            sel = array == a
            out[sel] = self.arrays[a][pos[sel]]
        return out

    def save(self, file: Path) -> None:
        """Write the present documents' vectors to ``file`` (``.npy``, ``[N, D]``, streamed in row order) and their
        rows and counts to ``file`` with suffix ``.rows.npy`` (``[M, 2]``)."""
        rows = np.flatnonzero(self._array >= 0)
        counts = self._count[rows]
        np.save(_rows_file(file), np.stack([rows, counts], axis=1))
        total = int(counts.sum())
        out = np.lib.format.open_memmap(file, mode="w+", dtype=self.dtype, shape=(total, self.dim))
        at = 0
        for i in range(0, len(rows), 20000):
            _, _, x = self.documents(rows[i : i + 20000])
            out[at : at + len(x)] = x
            at += len(x)
        out.flush()
        del out

    @classmethod
    def load(cls, file: Path, dim: int, dtype: str) -> ExactVectors:
        """The vectors :meth:`save` wrote, memory-mapped (read-only; later adds go to new in-memory chunks).

        Raises:
            ValueError: the files do not match (shape or dtype), or are damaged.
            OSError: a file is missing.
        """
        table = np.load(_rows_file(file))
        base = np.load(file, mmap_mode="r")
        out = cls(dim, dtype)
        if base.dtype != out.dtype or base.ndim != 2 or base.shape[1] != dim:
            raise ValueError(f"{file}: {base.dtype} {base.shape}, expected {out.dtype} [N, {dim}]")
        if table.ndim != 2 or table.shape[1] != 2 or int(table[:, 1].sum()) != len(base):
            raise ValueError(f"{_rows_file(file)} does not describe {file}")
        rows, counts = table[:, 0].astype(np.int64), table[:, 1].astype(np.int64)
        out.arrays.append(base)
        if len(rows):
            out._reserve(int(rows.max()) + 1)
            out._array[rows] = 0
            out._start[rows] = np.cumsum(counts) - counts
            out._count[rows] = counts
        out.live_vectors = len(base)
        return out

    def nbytes(self) -> int:
        """Bytes of the arrays (a memory-mapped base counts whole, though only the pages read are in memory)."""
        return int(sum(a.nbytes for a in self.arrays) + self._array.nbytes + self._start.nbytes + self._count.nbytes)


def _rows_file(file: Path) -> Path:
    return file.with_suffix(".rows.npy")
