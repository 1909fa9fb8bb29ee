"""The virtualenv that `make` builds holds exactly the locked versions, and pip finds nothing broken."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock.txt"
STAMP = Path(sys.prefix) / ".installed-muses"  # written by the Makefile once it installed from the lock


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_versions(text: str) -> dict[str, str]:
    """``{canonical name: version}`` of every ``name==version`` line of a pip-compile lock."""
    pins = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)", line)
        if m:
            pins[_canonical(m.group(1))] = m.group(2)
    return pins


def test_lock_parses_and_pins_the_tested_stack() -> None:
    pins = locked_versions(LOCK.read_text(encoding="utf-8"))
    for name in ("transformers", "peft", "sentence-transformers", "faiss-cpu", "fastapi", "pytest", "hypothesis"):
        assert name in pins, f"{name} is not in {LOCK}"
    assert "torch" not in pins  # installed first by the Makefile from TORCH_SPEC (CPU or CUDA build)
    assert locked_versions("foo-Bar==1.2.3 \\\n    # via x\n#  baz==2\n") == {"foo-bar": "1.2.3"}


@pytest.mark.skipif(not STAMP.exists(), reason=f"not the Makefile's virtualenv (no {STAMP}); `make test` checks it")
def test_virtualenv_matches_the_lock() -> None:
    wrong = {}
    for name, version in locked_versions(LOCK.read_text(encoding="utf-8")).items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "missing"
        if installed != version:
            wrong[name] = f"locked {version}, installed {installed}"
    assert not wrong, f"the virtualenv does not match {LOCK} (rerun `make install` after `rm -rf .venv`): {wrong}"


@pytest.mark.skipif(not STAMP.exists(), reason=f"not the Makefile's virtualenv (no {STAMP}); `make test` checks it")
def test_pip_check_is_clean() -> None:
    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
